//! The desired kernel state towards the other nodes, from the store's node and block records.
//! A pure function: no I/O, unit-tested without root.
//!
//! For each other node serving the network and each block with that node's affinity:
//! - host-gw: `<block> via <peer underlay ip>` (the peer must be on our underlay subnet);
//! - VXLAN: an FDB entry `<peer VTEP MAC> -> <peer underlay ip>`, a permanent neighbour
//!   `<peer VTEP ip> -> <peer VTEP MAC>` and `<block> via <peer VTEP ip> dev <vxlan> onlink`;
//! - hybrid: host-gw for peers on our underlay subnet, VXLAN for the others.
//!
//! IPv6 blocks (dual-stack): host-gw `<v6 block> via <peer underlay IPv6>` when both nodes have
//! a global IPv6 address on the same underlay segment (the record's `underlayIp6`); otherwise,
//! when this node runs a VXLAN device, through the IPv4 tunnel:
//! `<v6 block> via <peer VTEP link-local> dev <vxlan> onlink`, with a permanent neighbour
//! `<peer VTEP link-local> -> <peer VTEP MAC>` and the FDB entry of that MAC. The link-local
//! is the EUI-64 address of the peer's VTEP MAC ([`link_local_of`]), which the kernel gives the
//! peer's VXLAN device anyway: nothing to allocate or record. Pure host-gw without an IPv6
//! underlay leaves IPv6 blocks out (with a reason in the log).
//!
//! Borrowed addresses: an allocation whose handle's node is not its block's owner (a fixed IP
//! that moved, a requested or borrowed address) gets a host route (/32, /128) to the handle's
//! node on every node but that one, next to the block's route to its owner.
//!
//! The VTEP address: a node's VTEP address is its underlay address (the record's `vtepIp`, which
//! weftd fills in with it). It is only a next hop on the VXLAN device, resolved by the
//! permanent neighbour entry there, and never assigned to any device, so it can be any address
//! unique per node; the underlay address is unique by construction, needs no allocation and no
//! configured range, can never collide with a pod address (the pod blocks' first addresses can
//! be handed to pods in blocks that are not first in their pool), and it makes
//! `ip route`/`ip neigh` readable ("the route to node X's pods goes through the tunnel to X").
//! Neighbour entries are per device, so it does not disturb the underlay's own ARP entry for
//! the same address. Agents read the next hop from `vtepIp`, so a dedicated range can replace
//! this later without changing them.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use weft_ipam::{Allocation, BlockRecord};

use crate::config::Mode;
use crate::node::NodeRecord;

/// This node, as the computation needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Local {
    pub name: String,
    pub underlay_ip: IpAddr,
    pub underlay_subnet: IpNet,
    /// The node's global IPv6 address on the underlay link, with its prefix length, if it has
    /// one: IPv6 host-gw needs it on both ends.
    pub underlay_net6: Option<IpNet>,
    pub mode: Mode,
}

/// How one remote block is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Via {
    /// `via <peer underlay ip>` on the underlay link.
    Underlay(IpAddr),
    /// `via <peer VTEP ip> dev <vxlan device> onlink`.
    Vxlan(IpAddr),
}

impl Via {
    pub fn hop(&self) -> IpAddr {
        match self {
            Via::Underlay(a) | Via::Vxlan(a) => *a,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Desired {
    /// Remote block (or borrowed /32, /128) -> next hop.
    pub routes: BTreeMap<IpNet, Via>,
    /// Peer VTEP MAC -> peer underlay address (FDB entries on the VXLAN device).
    pub fdb: BTreeMap<[u8; 6], IpAddr>,
    /// Peer VTEP address (IPv4, and the IPv6 link-local of its MAC) -> peer VTEP MAC
    /// (permanent neighbours on the VXLAN device).
    pub neighbours: BTreeMap<IpAddr, [u8; 6]>,
    /// Why a peer or block was left out, for the log.
    pub skipped: Vec<String>,
}

/// The IPv6 link-local address (EUI-64) of a MAC: the address the kernel gives a device with
/// that MAC, so a peer's VXLAN device answers to it; Weft uses it as the peer's IPv6 VTEP
/// next hop.
pub use weft_check::model::link_local_of;

/// Per peer: the next hop of its IPv4 and of its IPv6 destinations.
#[derive(Debug, Clone, Copy, Default)]
struct Path {
    v4: Option<Via>,
    v6: Option<Via>,
    /// The peer's VTEP MAC and underlay address, when the tunnel may carry its traffic.
    tunnel: Option<([u8; 6], IpAddr)>,
}

/// The desired state of `local` in `network`, given every node record, every block of the
/// network and every handle (allocation) of the network.
pub fn compute(
    local: &Local,
    network: &str,
    nodes: &[NodeRecord],
    blocks: &[BlockRecord],
    handles: &[Allocation],
) -> Desired {
    let mut d = Desired::default();
    let mut path_of: BTreeMap<&str, Path> = BTreeMap::new();
    for peer in nodes {
        if peer.name == local.name || !peer.networks.iter().any(|n| n == network) {
            continue;
        }
        if peer.underlay_ip == local.underlay_ip {
            d.skipped.push(format!(
                "node {}: has our own underlay address {}",
                peer.name, peer.underlay_ip
            ));
            continue;
        }
        let same_segment = local.underlay_subnet.contains(&peer.underlay_ip);
        let use_vxlan = match local.mode {
            Mode::HostGw if !same_segment => {
                d.skipped.push(format!(
                    "node {}: underlay {} is outside our segment {} (host-gw cannot reach it)",
                    peer.name, peer.underlay_ip, local.underlay_subnet
                ));
                continue;
            }
            Mode::HostGw => false,
            Mode::Vxlan => true,
            Mode::Hybrid => !same_segment,
        };
        // IPv6 host-gw: both ends have an IPv6 address on the same underlay segment.
        let v6_underlay = match (local.underlay_net6, peer.underlay_ip6) {
            (Some(n), Some(p)) if n.trunc().contains(&p) && p != n.addr() => Some(p),
            _ => None,
        };
        let v6_needs_vxlan = !use_vxlan && v6_underlay.is_none();
        let mut tunnel = None;
        if use_vxlan || (v6_needs_vxlan && local.mode.uses_vxlan()) {
            match (peer.vtep_mac_bytes(), peer.vtep_ip) {
                (Some(mac), Some(vtep)) if peer.underlay_ip.is_ipv4() && vtep.is_ipv4() => {
                    if d.fdb.contains_key(&mac) || d.neighbours.contains_key(&vtep) {
                        d.skipped.push(format!(
                            "node {}: VTEP MAC {} or address {vtep} is another node's too",
                            peer.name,
                            crate::node::mac_string(&mac)
                        ));
                        continue;
                    }
                    tunnel = Some((mac, vtep));
                }
                (Some(_), Some(_)) => {
                    d.skipped.push(format!(
                        "node {}: only IPv4 VTEPs are supported so far",
                        peer.name
                    ));
                    continue;
                }
                _ if use_vxlan => {
                    d.skipped.push(format!(
                        "node {}: no valid VTEP MAC and address in its record (does it run vxlan?)",
                        peer.name
                    ));
                    continue;
                }
                _ => {}
            }
        }
        let mut path = Path::default();
        if let Some((mac, vtep)) = tunnel {
            if use_vxlan {
                d.fdb.insert(mac, peer.underlay_ip);
                d.neighbours.insert(vtep, mac);
                path.v4 = Some(Via::Vxlan(vtep));
            }
            path.tunnel = Some((mac, peer.underlay_ip));
        }
        if !use_vxlan {
            path.v4 = Some(Via::Underlay(peer.underlay_ip));
            path.v6 = v6_underlay.map(Via::Underlay);
        }
        path_of.insert(peer.name.as_str(), path);
    }
    // IPv6 through the tunnel: the FDB entry and the link-local neighbour only when a route
    // uses them.
    let via_for = |d: &mut Desired, owner: &str, dst: &IpNet| -> Option<Via> {
        let path = path_of.get(owner)?;
        let via = if dst.addr().is_ipv4() {
            path.v4
        } else if path.v6.is_some() {
            path.v6
        } else if let Some((mac, underlay)) = path.tunnel {
            let ll = link_local_of(&mac);
            d.fdb.insert(mac, underlay);
            d.neighbours.insert(ll, mac);
            Some(Via::Vxlan(ll))
        } else {
            None
        };
        if via.is_none() {
            let why = format!(
                "{dst} of node {owner}: no IPv{} path to that node",
                if dst.addr().is_ipv4() { 4 } else { 6 }
            );
            if !d.skipped.contains(&why) {
                d.skipped.push(why);
            }
        }
        via
    };
    let handle_of: BTreeMap<&str, &Allocation> =
        handles.iter().map(|a| (a.handle.as_str(), a)).collect();
    for b in blocks {
        let owner = b.node.as_deref();
        if let Some(owner) = owner
            && let Some(via) = via_for(&mut d, owner, &b.cidr)
        {
            d.routes.insert(b.cidr.trunc(), via);
        }
        // Borrowed addresses: an allocation held by a node other than the block's owner is
        // routed to its holder as a host route, on every node but the holder.
        for (off, handle) in &b.allocations {
            let Some(a) = handle_of.get(handle.as_str()) else {
                continue;
            };
            if Some(a.node.as_str()) == owner || a.node == local.name {
                continue;
            }
            let addr = weft_ipam::ip_add(b.cidr.network(), u128::from(*off));
            let host = IpNet::from(addr);
            if let Some(via) = via_for(&mut d, &a.node, &host) {
                d.routes.insert(host, via);
            }
        }
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, ip: &str, subnet: &str, mac: Option<&str>) -> NodeRecord {
        NodeRecord {
            schema: 1,
            name: name.into(),
            underlay_ip: ip.parse().unwrap(),
            underlay_subnet: subnet.parse().unwrap(),
            vtep_mac: mac.map(str::to_string),
            vtep_ip: mac.map(|_| ip.parse().unwrap()),
            underlay_ip6: None,
            vni: Some(1),
            networks: vec!["c".into()],
            mode: "hybrid".into(),
        }
    }

    fn block(cidr: &str, node: &str) -> BlockRecord {
        BlockRecord::new(cidr.parse().unwrap(), Some(node))
    }

    fn lab() -> (Vec<NodeRecord>, Vec<BlockRecord>) {
        let nodes = vec![
            node(
                "n1",
                "198.51.100.2",
                "198.51.100.0/24",
                Some("0a:00:00:00:00:01"),
            ),
            node(
                "n2",
                "198.51.100.3",
                "198.51.100.0/24",
                Some("0a:00:00:00:00:02"),
            ),
            node(
                "n3",
                "203.0.113.2",
                "203.0.113.0/24",
                Some("0a:00:00:00:00:03"),
            ),
        ];
        let blocks = vec![
            block("198.18.0.0/26", "n1"),
            block("198.18.0.64/26", "n2"),
            block("198.18.0.128/26", "n3"),
            block("198.18.0.192/26", "gone"),
            BlockRecord::new("198.18.1.0/26".parse().unwrap(), None),
        ];
        (nodes, blocks)
    }

    fn local(mode: Mode) -> Local {
        Local {
            name: "n1".into(),
            underlay_ip: "198.51.100.2".parse().unwrap(),
            underlay_subnet: "198.51.100.0/24".parse().unwrap(),
            underlay_net6: None,
            mode,
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }
    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn host_gw_routes_same_segment_peers_and_skips_the_rest() {
        let (nodes, blocks) = lab();
        let d = compute(&local(Mode::HostGw), "c", &nodes, &blocks, &[]);
        assert_eq!(
            d.routes,
            BTreeMap::from([(net("198.18.0.64/26"), Via::Underlay(ip("198.51.100.3")))])
        );
        assert!(d.fdb.is_empty() && d.neighbours.is_empty());
        assert_eq!(d.skipped.len(), 1, "{:?}", d.skipped);
        assert!(d.skipped[0].contains("n3"));
    }

    #[test]
    fn vxlan_routes_every_peer_through_the_tunnel() {
        let (nodes, blocks) = lab();
        let d = compute(&local(Mode::Vxlan), "c", &nodes, &blocks, &[]);
        assert_eq!(
            d.routes,
            BTreeMap::from([
                (net("198.18.0.64/26"), Via::Vxlan(ip("198.51.100.3"))),
                (net("198.18.0.128/26"), Via::Vxlan(ip("203.0.113.2"))),
            ])
        );
        assert_eq!(
            d.fdb,
            BTreeMap::from([
                ([10, 0, 0, 0, 0, 2], ip("198.51.100.3")),
                ([10, 0, 0, 0, 0, 3], ip("203.0.113.2")),
            ])
        );
        assert_eq!(d.neighbours.len(), 2);
        assert_eq!(d.neighbours[&ip("203.0.113.2")], [10, 0, 0, 0, 0, 3]);
        assert!(d.skipped.is_empty(), "{:?}", d.skipped);
    }

    #[test]
    fn hybrid_mixes_by_segment() {
        let (nodes, blocks) = lab();
        let d = compute(&local(Mode::Hybrid), "c", &nodes, &blocks, &[]);
        assert_eq!(
            d.routes,
            BTreeMap::from([
                (net("198.18.0.64/26"), Via::Underlay(ip("198.51.100.3"))),
                (net("198.18.0.128/26"), Via::Vxlan(ip("203.0.113.2"))),
            ])
        );
        assert_eq!(
            d.fdb,
            BTreeMap::from([([10, 0, 0, 0, 0, 3], ip("203.0.113.2"))])
        );
        assert_eq!(
            d.neighbours,
            BTreeMap::from([(ip("203.0.113.2"), [10, 0, 0, 0, 0, 3])])
        );
    }

    #[test]
    fn a_vanished_node_takes_everything_with_it() {
        let (mut nodes, blocks) = lab();
        nodes.retain(|n| n.name != "n3");
        let d = compute(&local(Mode::Vxlan), "c", &nodes, &blocks, &[]);
        assert_eq!(d.routes.len(), 1);
        assert_eq!(d.fdb.len(), 1);
        assert_eq!(d.neighbours.len(), 1);
    }

    #[test]
    fn bad_peers_are_skipped_with_a_reason() {
        let (mut nodes, mut blocks) = lab();
        nodes[2].vtep_mac = None; // n3 without a VTEP
        nodes.push(node(
            "n4",
            "198.51.100.4",
            "198.51.100.0/24",
            Some("0a:00:00:00:00:02"),
        ));
        nodes.push(NodeRecord {
            networks: vec!["other".into()],
            ..node("n5", "198.51.100.5", "198.51.100.0/24", None)
        });
        blocks.push(block("198.18.2.0/26", "n4"));
        blocks.push(block("198.18.3.0/26", "n5"));
        blocks.push(block("fd00::/122", "n2"));
        let d = compute(&local(Mode::Vxlan), "c", &nodes, &blocks, &[]);
        // n2 only (IPv4, and IPv6 through the tunnel to its link-local); n3 lacks a VTEP, n4
        // duplicates n2's MAC, n5 serves another network.
        assert_eq!(
            d.routes,
            BTreeMap::from([
                (net("198.18.0.64/26"), Via::Vxlan(ip("198.51.100.3"))),
                (
                    net("fd00::/122"),
                    Via::Vxlan(link_local_of(&[10, 0, 0, 0, 0, 2]))
                ),
            ])
        );
        assert_eq!(d.skipped.len(), 2, "{:?}", d.skipped);
    }

    fn handle(name: &str, node: &str, addr: &str) -> Allocation {
        Allocation {
            schema: 1,
            network: "c".into(),
            handle: name.into(),
            addresses: vec![addr.parse().unwrap()],
            container_id: name.into(),
            ifname: "eth0".into(),
            node: node.into(),
            pod: None,
            fixed: None,
            created_at: 0,
            host_interface: None,
            netns: None,
        }
    }

    #[test]
    fn borrowed_addresses_get_host_routes_to_their_holder_everywhere_else() {
        let (nodes, mut blocks) = lab();
        // 198.18.0.5 (offset 5 of n1's block) is held by n2; 198.18.0.70 of n2's block by n3;
        // 198.18.0.130 of n3's block by n1 (us: no route, the plugin's host route serves it);
        // 198.18.0.6 by n1 in n1's block (normal).
        blocks[0].assign(5, "moved");
        blocks[0].assign(6, "normal");
        blocks[1].assign(6, "borrowed");
        blocks[2].assign(2, "mine");
        blocks[0].assign(7, "reserved-only"); // no handle record: not routed
        let handles = vec![
            handle("moved", "n2", "198.18.0.5/26"),
            handle("normal", "n1", "198.18.0.6/26"),
            handle("borrowed", "n3", "198.18.0.70/26"),
            handle("mine", "n1", "198.18.0.130/26"),
        ];
        let d = compute(&local(Mode::Hybrid), "c", &nodes, &blocks, &handles);
        assert_eq!(
            d.routes,
            BTreeMap::from([
                (net("198.18.0.5/32"), Via::Underlay(ip("198.51.100.3"))),
                (net("198.18.0.64/26"), Via::Underlay(ip("198.51.100.3"))),
                (net("198.18.0.70/32"), Via::Vxlan(ip("203.0.113.2"))),
                (net("198.18.0.128/26"), Via::Vxlan(ip("203.0.113.2"))),
            ])
        );
        // Seen from n3, n1's moved address goes to n2 (both through the tunnel).
        let l3 = Local {
            name: "n3".into(),
            underlay_ip: ip("203.0.113.2"),
            underlay_subnet: net("203.0.113.0/24"),
            underlay_net6: None,
            mode: Mode::Hybrid,
        };
        let d = compute(&l3, "c", &nodes, &blocks, &handles);
        assert_eq!(
            d.routes[&net("198.18.0.5/32")],
            Via::Vxlan(ip("198.51.100.3"))
        );
        assert_eq!(
            d.routes[&net("198.18.0.0/26")],
            Via::Vxlan(ip("198.51.100.2"))
        );
        assert_eq!(
            d.routes[&net("198.18.0.130/32")],
            Via::Vxlan(ip("198.51.100.2"))
        );
        assert!(!d.routes.contains_key(&net("198.18.0.70/32")));
    }

    #[test]
    fn ipv6_blocks_go_host_gw_when_both_have_v6_underlay_else_through_the_tunnel() {
        let (mut nodes, mut blocks) = lab();
        nodes[1].underlay_ip6 = Some(ip("fd00:51::3"));
        nodes[2].underlay_ip6 = Some(ip("fd00:203::2"));
        blocks.push(block("fd00:18::/122", "n2"));
        blocks.push(block("fd00:18::40/122", "n3"));
        let mut l = local(Mode::Hybrid);
        l.underlay_net6 = Some(net("fd00:51::2/64"));
        let d = compute(&l, "c", &nodes, &blocks, &[]);
        assert_eq!(
            d.routes[&net("fd00:18::/122")],
            Via::Underlay(ip("fd00:51::3"))
        );
        let ll3 = link_local_of(&[10, 0, 0, 0, 0, 3]);
        assert_eq!(ll3, ip("fe80::800:ff:fe00:3"));
        assert_eq!(d.routes[&net("fd00:18::40/122")], Via::Vxlan(ll3));
        assert_eq!(d.neighbours[&ll3], [10, 0, 0, 0, 0, 3]);

        // Without a local IPv6 underlay, n2's IPv6 block goes through the tunnel although its
        // IPv4 block stays host-gw: n2 gets an FDB entry and a link-local neighbour only.
        l.underlay_net6 = None;
        let d = compute(&l, "c", &nodes, &blocks, &[]);
        let ll2 = link_local_of(&[10, 0, 0, 0, 0, 2]);
        assert_eq!(d.routes[&net("fd00:18::/122")], Via::Vxlan(ll2));
        assert_eq!(
            d.routes[&net("198.18.0.64/26")],
            Via::Underlay(ip("198.51.100.3"))
        );
        assert_eq!(d.fdb[&[10, 0, 0, 0, 0, 2]], ip("198.51.100.3"));
        assert!(!d.neighbours.contains_key(&ip("198.51.100.3")));
        assert!(d.neighbours.contains_key(&ll2));

        // Pure host-gw cannot carry IPv6 without an IPv6 underlay: left out with a reason.
        let mut l = local(Mode::HostGw);
        l.underlay_net6 = None;
        let d = compute(&l, "c", &nodes, &blocks, &[]);
        assert!(!d.routes.contains_key(&net("fd00:18::/122")));
        assert!(
            d.skipped.iter().any(|s| s.contains("fd00:18::/122")),
            "{:?}",
            d.skipped
        );
    }
}
