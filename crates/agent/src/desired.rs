//! The desired kernel state towards the other nodes, from the store's node and block records.
//! A pure function: no I/O, unit-tested without root.
//!
//! For each other node serving the network and each block with that node's affinity:
//! - host-gw: `<block> via <peer underlay ip>` (the peer must be on our underlay subnet);
//! - VXLAN: an FDB entry `<peer VTEP MAC> -> <peer underlay ip>`, a permanent neighbour
//!   `<peer VTEP ip> -> <peer VTEP MAC>` and `<block> via <peer VTEP ip> dev <vxlan> onlink`;
//! - hybrid: host-gw for peers on our underlay subnet, VXLAN for the others.
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
use weft_ipam::BlockRecord;

use crate::config::Mode;
use crate::node::NodeRecord;

/// This node, as the computation needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Local {
    pub name: String,
    pub underlay_ip: IpAddr,
    pub underlay_subnet: IpNet,
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

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Desired {
    /// Remote block -> next hop.
    pub routes: BTreeMap<IpNet, Via>,
    /// Peer VTEP MAC -> peer underlay address (FDB entries on the VXLAN device).
    pub fdb: BTreeMap<[u8; 6], IpAddr>,
    /// Peer VTEP address -> peer VTEP MAC (permanent neighbours on the VXLAN device).
    pub neighbours: BTreeMap<IpAddr, [u8; 6]>,
    /// Why a peer or block was left out, for the log.
    pub skipped: Vec<String>,
}

/// The desired state of `local` in `network`, given every node record and every block of the
/// network.
pub fn compute(
    local: &Local,
    network: &str,
    nodes: &[NodeRecord],
    blocks: &[BlockRecord],
) -> Desired {
    let mut d = Desired::default();
    let mut via_of: BTreeMap<&str, Via> = BTreeMap::new();
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
        let via = if use_vxlan {
            let (Some(mac), Some(vtep)) = (peer.vtep_mac_bytes(), peer.vtep_ip) else {
                d.skipped.push(format!(
                    "node {}: no valid VTEP MAC and address in its record (does it run vxlan?)",
                    peer.name
                ));
                continue;
            };
            if !peer.underlay_ip.is_ipv4() || !vtep.is_ipv4() {
                d.skipped.push(format!(
                    "node {}: only IPv4 VTEPs are supported so far",
                    peer.name
                ));
                continue;
            }
            if d.fdb.contains_key(&mac) || d.neighbours.contains_key(&vtep) {
                d.skipped.push(format!(
                    "node {}: VTEP MAC {} or address {vtep} is another node's too",
                    peer.name,
                    crate::node::mac_string(&mac)
                ));
                continue;
            }
            d.fdb.insert(mac, peer.underlay_ip);
            d.neighbours.insert(vtep, mac);
            Via::Vxlan(vtep)
        } else {
            Via::Underlay(peer.underlay_ip)
        };
        via_of.insert(peer.name.as_str(), via);
    }
    for b in blocks {
        let Some(owner) = b.node.as_deref() else {
            continue;
        };
        let Some(via) = via_of.get(owner) else {
            continue;
        };
        let hop = match via {
            Via::Underlay(a) | Via::Vxlan(a) => a,
        };
        if b.cidr.addr().is_ipv4() != hop.is_ipv4() {
            d.skipped.push(format!(
                "block {} of node {owner}: next hop {hop} is of the other address family",
                b.cidr
            ));
            continue;
        }
        d.routes.insert(b.cidr.trunc(), *via);
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
        let d = compute(&local(Mode::HostGw), "c", &nodes, &blocks);
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
        let d = compute(&local(Mode::Vxlan), "c", &nodes, &blocks);
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
        let d = compute(&local(Mode::Hybrid), "c", &nodes, &blocks);
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
        let d = compute(&local(Mode::Vxlan), "c", &nodes, &blocks);
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
        let d = compute(&local(Mode::Vxlan), "c", &nodes, &blocks);
        // n2 only; n3 lacks a VTEP, n4 duplicates n2's MAC, n5 serves another network.
        assert_eq!(
            d.routes,
            BTreeMap::from([(net("198.18.0.64/26"), Via::Vxlan(ip("198.51.100.3")))])
        );
        assert_eq!(d.skipped.len(), 3, "{:?}", d.skipped);
    }
}
