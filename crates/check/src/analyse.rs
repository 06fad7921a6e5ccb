//! The comparison itself: a [`Snapshot`] of the store (one prefix list per record kind) in,
//! findings out. Pure, so it is unit-tested and benchmarked without a store.
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use ipnet::IpNet;
use serde::de::DeserializeOwned;
use weft_ipam::{
    AddressPool, Allocation, BlockRecord, KEY_ROOT, NetworkRecord, Reservation, ip_add, ip_offset,
};
use weft_store::Store;

use crate::model::{AliasRef, GoneNetns, NodeAction, NodeInfo, NodeReport, reports_prefix};
use crate::{CheckError, CheckOptions, CheckReport, Finding, FindingKind, RepairAction};

/// Everything `check` reads, decoded.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub networks: BTreeMap<String, NetworkRecord>,
    /// Network -> its blocks.
    pub blocks: BTreeMap<String, Vec<BlockRecord>>,
    /// Network -> handle -> allocation.
    pub handles: BTreeMap<String, BTreeMap<String, Allocation>>,
    /// Network -> reservations.
    pub reservations: BTreeMap<String, Vec<Reservation>>,
    /// Network -> address pools.
    pub pools: BTreeMap<String, Vec<AddressPool>>,
    pub nodes: BTreeMap<String, NodeInfo>,
    pub reports: BTreeMap<String, NodeReport>,
    /// Node -> since when `repair` knows it gone ([`crate::model::GoneMarker`]).
    pub gone: BTreeMap<String, u64>,
    /// Node -> keys of its pending repair orders.
    pub orders: BTreeMap<String, Vec<String>>,
    /// Keys that did not decode.
    pub undecodable: Vec<String>,
}

/// `/weft/v1/<kind>/<network>/...` -> network.
fn network_of(key: &str, kind: &str) -> Option<String> {
    let rest = key.strip_prefix(&format!("{KEY_ROOT}/{kind}/"))?;
    rest.split('/').next().map(str::to_string)
}

impl Snapshot {
    /// Nine prefix lists; nothing per key.
    pub fn load(store: &dyn Store) -> Result<Snapshot, CheckError> {
        let mut s = Snapshot::default();
        fn each<T: DeserializeOwned>(
            store: &dyn Store,
            prefix: &str,
            bad: &mut Vec<String>,
            mut f: impl FnMut(&str, T),
        ) -> Result<(), CheckError> {
            for kv in store.list(prefix)? {
                match serde_json::from_slice::<T>(&kv.value) {
                    Ok(v) => f(&kv.key, v),
                    Err(e) => bad.push(format!("{}: {e}", kv.key)),
                }
            }
            Ok(())
        }
        let mut bad = Vec::new();
        each(
            store,
            &weft_ipam::networks_prefix(),
            &mut bad,
            |_, r: NetworkRecord| {
                s.networks.insert(r.spec.name.clone(), r);
            },
        )?;
        each(
            store,
            &format!("{KEY_ROOT}/blocks/"),
            &mut bad,
            |k, b: BlockRecord| {
                if let Some(n) = network_of(k, "blocks") {
                    s.blocks.entry(n).or_default().push(b);
                }
            },
        )?;
        each(
            store,
            &format!("{KEY_ROOT}/handles/"),
            &mut bad,
            |k, a: Allocation| {
                if let Some(n) = network_of(k, "handles") {
                    let h = k.rsplit_once('/').map(|(_, h)| h).unwrap_or_default();
                    s.handles.entry(n).or_default().insert(h.to_string(), a);
                }
            },
        )?;
        each(
            store,
            &format!("{KEY_ROOT}/reservations/"),
            &mut bad,
            |k, r: Reservation| {
                if let Some(n) = network_of(k, "reservations") {
                    s.reservations.entry(n).or_default().push(r);
                }
            },
        )?;
        each(
            store,
            &format!("{KEY_ROOT}/pools/"),
            &mut bad,
            |k, p: AddressPool| {
                if let Some(n) = network_of(k, "pools") {
                    s.pools.entry(n).or_default().push(p);
                }
            },
        )?;
        each(
            store,
            &weft_ipam::nodes_prefix(),
            &mut bad,
            |_, n: NodeInfo| {
                s.nodes.insert(n.name.clone(), n);
            },
        )?;
        let mut newer = Vec::new();
        each(store, &reports_prefix(), &mut bad, |k, r: NodeReport| {
            if r.schema > crate::model::REPORT_SCHEMA {
                // A newer weftd: judge nothing from what this check may misread.
                newer.push(format!(
                    "{k}: schema {} is newer than this check's",
                    r.schema
                ));
            } else {
                s.reports.insert(r.node.clone(), r);
            }
        })?;
        bad.extend(newer);
        each(
            store,
            &crate::model::gone_prefix(),
            &mut bad,
            |_, g: crate::model::GoneMarker| {
                s.gone.insert(g.node, g.since);
            },
        )?;
        for kv in store.list(&crate::model::repairs_root())? {
            if let Some(node) = kv
                .key
                .strip_prefix(&crate::model::repairs_root())
                .and_then(|r| r.split('/').next())
            {
                s.orders.entry(node.to_string()).or_default().push(kv.key);
            }
        }
        s.undecodable = bad;
        Ok(s)
    }

    /// Whether `node` has neither a node record nor a report (gone, when any weftd runs).
    pub fn absent(&self, node: &str) -> bool {
        !self.nodes.contains_key(node) && !self.reports.contains_key(node)
    }

    /// The block of `network` holding `addr`.
    fn block_at(&self, index: &BlockIndex, network: &str, addr: IpAddr) -> Option<&BlockRecord> {
        let blocks = self.blocks.get(network)?;
        index
            .get(network)
            .and_then(|m| {
                m.iter().find_map(|(plen, by)| {
                    let key = IpNet::new(addr, *plen).ok()?.trunc();
                    by.get(&key).map(|i| &blocks[*i])
                })
            })
            .or_else(|| blocks.iter().find(|b| b.cidr.contains(&addr)))
    }
}

/// Network -> prefix length -> block cidr -> index in `Snapshot::blocks[network]`.
type BlockIndex = HashMap<String, Vec<(u8, HashMap<IpNet, usize>)>>;

fn index_blocks(s: &Snapshot) -> BlockIndex {
    let mut out: BlockIndex = HashMap::new();
    for (net, blocks) in &s.blocks {
        let per = out.entry(net.clone()).or_default();
        for (i, b) in blocks.iter().enumerate() {
            let plen = b.cidr.prefix_len();
            let slot = match per.iter().position(|(p, _)| *p == plen) {
                Some(j) => j,
                None => {
                    per.push((plen, HashMap::new()));
                    per.len() - 1
                }
            };
            per[slot].1.insert(b.cidr.trunc(), i);
        }
    }
    out
}

fn owner_at(b: &BlockRecord, addr: IpAddr) -> Option<&str> {
    let off = ip_offset(b.cidr.network(), addr) as u32;
    b.allocations.get(&off).map(String::as_str)
}

fn host(addr: IpAddr) -> IpNet {
    IpNet::from(addr)
}

/// The findings of one snapshot at time `now`.
pub fn analyse(s: &Snapshot, opts: &CheckOptions, now: u64) -> CheckReport {
    let mut out = CheckReport {
        nodes: s.reports.keys().cloned().collect(),
        nodes_without_report: s
            .nodes
            .keys()
            .filter(|n| !s.reports.contains_key(*n))
            .cloned()
            .collect(),
        ..Default::default()
    };
    for k in &s.undecodable {
        out.notes.push(format!("record does not decode: {k}"));
    }
    for (node, keys) in &s.orders {
        out.notes.push(format!(
            "{} repair order(s) pending for node {node}{}",
            keys.len(),
            if s.nodes.contains_key(node) {
                ""
            } else {
                " (gone: the next repair deletes them)"
            }
        ));
    }
    let agents = !s.nodes.is_empty();
    if !agents {
        out.notes.push(
            "no node is registered (no weftd runs): nodes are not judged gone, kernels not checked"
                .into(),
        );
    }
    let index = index_blocks(s);
    // Per report: the attachments its interfaces name.
    let live: HashMap<&str, std::collections::HashSet<(String, String)>> = s
        .reports
        .iter()
        .map(|(n, r)| {
            let set = r
                .interfaces
                .iter()
                .filter_map(|i| AliasRef::parse(&i.alias))
                .map(|a| {
                    let h = a.handle();
                    (a.network, h)
                })
                .collect();
            (n.as_str(), set)
        })
        .collect();
    let gone = |node: &str| agents && s.absent(node);
    let f = |kind,
             network: Option<&str>,
             node: Option<&str>,
             subject: String,
             detail: String,
             repair: String,
             action| Finding {
        kind,
        network: network.map(str::to_string),
        node: node.map(str::to_string),
        subject,
        detail,
        repair,
        action,
    };
    let mut findings = Vec::new();

    // Allocations: duplicates, leaks, missing routes.
    // Every address held by an attachment of a node: (address) -> node, for orphan routes.
    let mut held_on: HashMap<IpAddr, BTreeSet<&str>> = HashMap::new();
    for (net, handles) in &s.handles {
        for (handle, a) in handles {
            out.allocations += 1;
            let mut own = 0;
            for addr in &a.addresses {
                let ip = addr.addr();
                held_on.entry(ip).or_default().insert(a.node.as_str());
                let block = s.block_at(&index, net, ip);
                match block.and_then(|b| owner_at(b, ip)) {
                    Some(o) if o == handle => {
                        own += 1;
                        missing_route(s, &mut findings, net, a, ip, block, now, opts);
                    }
                    Some(other) => findings.push(f(
                        FindingKind::Duplicate,
                        Some(net),
                        Some(&a.node),
                        ip.to_string(),
                        format!(
                            "address {ip} is recorded for handle {handle} (node {}) but its block {} gives it to {other}",
                            a.node,
                            block.map(|b| b.cidr.to_string()).unwrap_or_default()
                        ),
                        format!("take {ip} out of the record of {handle} (deleting the record if it holds nothing else); {other} keeps it"),
                        Some(RepairAction::DropDuplicate {
                            network: net.clone(),
                            handle: handle.clone(),
                            address: ip,
                        }),
                    )),
                    None => {
                        own += 1;
                        out.notes.push(format!(
                            "network {net}: address {ip} of handle {handle} has no owner in its block"
                        ));
                    }
                }
            }
            if own == 0 && !a.addresses.is_empty() {
                continue; // a duplicate record: reported above, not a leak
            }
            if let Some(l) = leak(s, &live, net, handle, a, opts, now) {
                findings.push(f(
                    FindingKind::Leak,
                    Some(net),
                    Some(&a.node),
                    handle.clone(),
                    format!(
                        "{} ({}) {l}",
                        handle,
                        a.addresses
                            .iter()
                            .map(|x| x.addr().to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                    "release the allocation through the IPAM's DEL path (addresses cool down; a reservation or pool keeps its own)".into(),
                    Some(RepairAction::ReleaseHandle {
                        network: net.clone(),
                        handle: handle.clone(),
                        created_at: a.created_at,
                    }),
                ));
            }
        }
    }

    // Blocks: entries without an owner record; blocks of gone nodes.
    for (net, blocks) in &s.blocks {
        let handles = s.handles.get(net);
        let reservations: BTreeSet<String> = s
            .reservations
            .get(net)
            .into_iter()
            .flatten()
            .map(|r| weft_ipam::fixed::reserved_owner(&r.identity.key))
            .collect();
        let pools: BTreeSet<String> = s
            .pools
            .get(net)
            .into_iter()
            .flatten()
            .map(|p| weft_ipam::fixed::pool_owner(&p.name))
            .collect();
        // Overlapping block records: every address in both is recorded twice.
        let mut sorted: Vec<&BlockRecord> = blocks.iter().collect();
        sorted.sort_by_key(|b| (b.cidr.network(), b.cidr.prefix_len()));
        for w in sorted.windows(2) {
            let (a, b) = (w[0], w[1]);
            if !a.cidr.contains(&b.cidr.network()) {
                continue;
            }
            let empty = |x: &BlockRecord| x.allocations.is_empty() && x.cooling.is_empty();
            let (repair, action) = match (empty(a), empty(b)) {
                (_, true) | (true, _) => {
                    let gone = if empty(b) { b } else { a };
                    (
                        format!("delete the empty block record {}", gone.cidr),
                        Some(RepairAction::DeleteBlock {
                            network: net.clone(),
                            block: gone.cidr,
                        }),
                    )
                }
                _ => (
                    "none automatically: both hold addresses; release the pods of one of them, then run the repair again".to_string(),
                    None,
                ),
            };
            findings.push(f(
                FindingKind::Duplicate,
                Some(net),
                b.node.as_deref(),
                b.cidr.to_string(),
                format!(
                    "block records {} and {} overlap: addresses in both have two owner records",
                    a.cidr, b.cidr
                ),
                repair,
                action,
            ));
        }
        for b in blocks {
            let mut of_gone = 0;
            for (off, owner) in &b.allocations {
                let ip = ip_add(b.cidr.network(), u128::from(*off));
                let known = if weft_ipam::is_attachment(owner) {
                    handles
                        .and_then(|h| h.get(owner))
                        .inspect(|a| {
                            if b.node.as_deref().is_some_and(|n| n == a.node) {
                                of_gone += 1;
                            }
                        })
                        .is_some()
                } else {
                    reservations.contains(owner) || pools.contains(owner)
                };
                if !known {
                    findings.push(f(
                        FindingKind::Leak,
                        Some(net),
                        b.node.as_deref(),
                        ip.to_string(),
                        format!(
                            "address {ip} in block {} is owned by {owner}, which has no record",
                            b.cidr
                        ),
                        format!("free {ip} in its block (it cools down)"),
                        Some(RepairAction::FreeBlockEntry {
                            network: net.clone(),
                            block: b.cidr,
                            address: ip,
                            owner: owner.clone(),
                        }),
                    ));
                }
            }
            if let Some(n) = b.node.as_deref()
                && gone(n)
            {
                findings.push(f(
                    FindingKind::StaleBlock,
                    Some(net),
                    Some(n),
                    b.cidr.to_string(),
                    format!(
                        "block {} is claimed by node {n}, which is not registered and has no report (gone{}){}",
                        b.cidr,
                        gone_since(s, n, now),
                        if of_gone > 0 {
                            format!("; {of_gone} of its allocations belong to that node (listed as leaks)")
                        } else {
                            String::new()
                        }
                    ),
                    "after the gone node's allocations in it are released, drop the node's claim (delete the block when nothing is left in it)".into(),
                    Some(RepairAction::ReleaseBlock {
                        network: net.clone(),
                        block: b.cidr,
                        node: n.to_string(),
                    }),
                ));
            }
        }
    }

    // Reservations and address pools outside their network's pools.
    for (net, rs) in &s.reservations {
        let spec = s.networks.get(net).map(|r| &r.spec);
        for r in rs {
            let outside: Vec<IpAddr> = r
                .addresses
                .iter()
                .map(|a| a.addr())
                .filter(|a| !in_pools(spec, *a))
                .collect();
            if outside.is_empty() {
                continue;
            }
            let list = outside
                .iter()
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
                .join(", ");
            let (repair, action) = match &r.holder {
                None => (
                    "delete the reservation (its addresses inside the pools are freed)".to_string(),
                    Some(RepairAction::DropReservation {
                        network: net.clone(),
                        key: r.identity.key.clone(),
                    }),
                ),
                Some(h) => (
                    format!(
                        "none automatically: pod {h} holds it; delete that pod, then run the repair again"
                    ),
                    None,
                ),
            };
            findings.push(f(
                FindingKind::ReservationOutsidePool,
                Some(net),
                r.node.as_deref(),
                r.identity.key.clone(),
                format!(
                    "reservation {} holds {list}, outside every pool range of network {net}{}",
                    r.identity.key,
                    if spec.is_none() {
                        " (the network has no record)"
                    } else {
                        ""
                    }
                ),
                repair,
                action,
            ));
        }
    }
    for (net, ps) in &s.pools {
        let spec = s.networks.get(net).map(|r| &r.spec);
        for p in ps {
            let outside: Vec<String> = p
                .addresses
                .iter()
                .filter(|a| !in_pools(spec, **a))
                .map(|a| a.to_string())
                .collect();
            if !outside.is_empty() {
                findings.push(f(
                    FindingKind::ReservationOutsidePool,
                    Some(net),
                    None,
                    format!("pool:{}", p.name),
                    format!(
                        "address pool {} lists {}, outside every pool range of network {net}",
                        p.name,
                        outside.join(", ")
                    ),
                    "none automatically: fix the Deployment's fixedIPs and recreate the pool"
                        .into(),
                    None,
                ));
            }
        }
    }

    // Node kernels: orphans.
    let pool_subnets: BTreeSet<IpNet> = s
        .networks
        .values()
        .flat_map(|n| n.spec.pools.iter().map(|p| p.subnet.trunc()))
        .collect();
    let block_cidrs: HashMap<&str, BTreeSet<IpNet>> = s
        .blocks
        .iter()
        .map(|(n, bs)| (n.as_str(), bs.iter().map(|b| b.cidr.trunc()).collect()))
        .collect();
    for (name, r) in &s.reports {
        if !s.nodes.contains_key(name) {
            out.notes.push(format!(
                "report of {name} has no node record: not judged (the node is going away)"
            ));
            continue;
        }
        let node = Some(name.as_str());
        for i in &r.interfaces {
            let Some(a) = AliasRef::parse(&i.alias) else {
                continue;
            };
            let exists = s
                .handles
                .get(&a.network)
                .is_some_and(|h| h.contains_key(&a.handle()));
            // Released after the report was made (a DEL in progress, a report not yet
            // refreshed): not judged from this report.
            let released_since = !exists
                && r.routes.iter().any(|rt| {
                    rt.gateway.is_none()
                        && rt.dev == i.name
                        && released_after(s, &index, rt.dst.addr(), r.generated_at)
                });
            if !exists && !released_since {
                findings.push(f(
                    FindingKind::Orphan,
                    Some(&a.network),
                    node,
                    format!("interface {}", i.name),
                    format!(
                        "interface {} (alias {}) on {name} belongs to attachment {} of network {}, which has no allocation",
                        i.name, i.alias, a.handle(), a.network
                    ),
                    format!("weftd on {name} deletes {} (its routes go with it)", i.name),
                    Some(RepairAction::Node {
                        node: name.clone(),
                        order: NodeAction::DeleteLink {
                            name: i.name.clone(),
                            alias: i.alias.clone(),
                        },
                    }),
                ));
            }
        }
        for rt in &r.routes {
            let order = NodeAction::DeleteRoute {
                dst: rt.dst,
                gateway: rt.gateway,
                dev: rt.dev.clone(),
            };
            let why = match rt.gateway {
                None => {
                    let is_host = rt.dst.prefix_len() == rt.dst.max_prefix_len();
                    let held = held_on
                        .get(&rt.dst.addr())
                        .is_some_and(|n| n.contains(name.as_str()))
                        || released_after(s, &index, rt.dst.addr(), r.generated_at);
                    (is_host && !held).then(|| {
                        format!(
                            "pod route {} dev {} on {name}: no allocation of this node holds {}",
                            rt.dst,
                            rt.dev,
                            rt.dst.addr()
                        )
                    })
                }
                Some(gw) => {
                    let known_dst = block_cidrs
                        .get(r.network.as_str())
                        .is_some_and(|b| b.contains(&rt.dst.trunc()))
                        || (rt.dst.prefix_len() == rt.dst.max_prefix_len()
                            && held_on.contains_key(&rt.dst.addr()));
                    let known_gw = s
                        .nodes
                        .values()
                        .any(|n| n.name != *name && n.hops().contains(&gw));
                    if !known_dst {
                        Some(format!(
                            "route {} via {gw} on {name}: no block or allocated address of network {} is {}",
                            rt.dst, r.network, rt.dst
                        ))
                    } else if !known_gw {
                        Some(format!(
                            "route {} via {gw} on {name}: {gw} is no registered node's address",
                            rt.dst
                        ))
                    } else {
                        None
                    }
                }
            };
            if let Some(why) = why {
                findings.push(f(
                    FindingKind::Orphan,
                    Some(&r.network),
                    node,
                    format!(
                        "route {}{} dev {}",
                        rt.dst,
                        rt.gateway.map(|g| format!(" via {g}")).unwrap_or_default(),
                        rt.dev
                    ),
                    why,
                    format!("weftd on {name} deletes the route"),
                    Some(RepairAction::Node {
                        node: name.clone(),
                        order,
                    }),
                ));
            }
        }
        let peers: Vec<&NodeInfo> = s.nodes.values().filter(|n| n.name != *name).collect();
        for e in &r.fdb {
            let ok = peers.iter().any(|p| {
                p.vtep_mac.as_deref().map(str::to_ascii_lowercase)
                    == Some(e.mac.to_ascii_lowercase())
                    && p.underlay_ip == e.dst
            });
            if !ok {
                findings.push(f(
                    FindingKind::Orphan,
                    Some(&r.network),
                    node,
                    format!("fdb {} dst {}", e.mac, e.dst),
                    format!(
                        "FDB entry {} dst {} on {}'s VXLAN device points at no registered node",
                        e.mac, e.dst, name
                    ),
                    format!("weftd on {name} deletes the entry"),
                    Some(RepairAction::Node {
                        node: name.clone(),
                        order: NodeAction::DeleteFdb {
                            mac: e.mac.clone(),
                            dst: e.dst,
                        },
                    }),
                ));
            }
        }
        for n in &r.neighbours {
            let ok = peers.iter().any(|p| {
                p.vtep_ip == Some(n.ip)
                    || p.vtep_mac
                        .as_deref()
                        .and_then(crate::model::parse_mac)
                        .map(|m| crate::model::link_local_of(&m))
                        == Some(n.ip)
            });
            if !ok {
                findings.push(f(
                    FindingKind::Orphan,
                    Some(&r.network),
                    node,
                    format!("neighbour {}", n.ip),
                    format!(
                        "permanent neighbour {} on {}'s VXLAN device is no registered node's VTEP",
                        n.ip, name
                    ),
                    format!("weftd on {name} deletes the entry"),
                    Some(RepairAction::Node {
                        node: name.clone(),
                        order: NodeAction::DeleteNeighbour { ip: n.ip },
                    }),
                ));
            }
        }
        if let Some(t) = &r.nftables {
            for (sets, elems) in [(["pods4", "pods6"], &t.pods), (["masq4", "masq6"], &t.masq)] {
                for e in elems {
                    if pool_subnets.contains(&e.trunc()) {
                        continue;
                    }
                    let set = if e.addr().is_ipv4() { sets[0] } else { sets[1] };
                    findings.push(f(
                        FindingKind::Orphan,
                        None,
                        node,
                        format!("nft inet weft {set} {e}"),
                        format!(
                            "element {e} of set {set} in table inet weft on {name} is no network's pool"
                        ),
                        format!("weftd on {name} deletes the element"),
                        Some(RepairAction::Node {
                            node: name.clone(),
                            order: NodeAction::DeleteNftElement {
                                set: set.into(),
                                element: *e,
                            },
                        }),
                    ));
                }
            }
        }
    }
    findings.sort_by(|a, b| {
        (a.kind as u8, &a.network, &a.node, &a.subject).cmp(&(
            b.kind as u8,
            &b.network,
            &b.node,
            &b.subject,
        ))
    });
    out.findings = findings;
    out
}

/// How long `repair` has known `node` gone, for messages.
fn gone_since(s: &Snapshot, node: &str, now: u64) -> String {
    match s.gone.get(node) {
        Some(t) => format!(" for {} s", now.saturating_sub(*t)),
        None => {
            "; a repair marks it now and releases once it has been gone for the grace period".into()
        }
    }
}

/// True when `addr` was released (it is cooling in its block) at or after `t`.
fn released_after(s: &Snapshot, index: &BlockIndex, addr: IpAddr, t: u64) -> bool {
    s.blocks.keys().any(|net| {
        s.block_at(index, net, addr).is_some_and(|b| {
            b.cooling
                .get(&(ip_offset(b.cidr.network(), addr) as u32))
                .is_some_and(|at| *at >= t)
        })
    })
}

pub(crate) fn in_pools(spec: Option<&weft_ipam::NetworkSpec>, a: IpAddr) -> bool {
    spec.is_some_and(|spec| {
        spec.pools.iter().any(|p| {
            let (first, last) = p.range();
            p.subnet.contains(&a)
                && first <= a
                && a <= last
                && !p.exclude.iter().any(|x| x.contains(&a))
        })
    })
}

/// Why `a` is a leak, or None (live, too young, or not judgeable).
fn leak(
    s: &Snapshot,
    live: &HashMap<&str, std::collections::HashSet<(String, String)>>,
    net: &str,
    handle: &str,
    a: &Allocation,
    opts: &CheckOptions,
    now: u64,
) -> Option<String> {
    if now.saturating_sub(a.created_at) < opts.grace_seconds {
        return None;
    }
    let agents = !s.nodes.is_empty();
    match s.reports.get(&a.node) {
        None if agents && !s.nodes.contains_key(&a.node) => Some(format!(
            "is held on node {}, which is not registered and has no report (gone{})",
            a.node,
            gone_since(s, &a.node, now)
        )),
        None => None,
        Some(r) => {
            let listed = live
                .get(a.node.as_str())
                .is_some_and(|l| l.contains(&(net.to_string(), handle.to_string())));
            let ago = now.saturating_sub(r.generated_at);
            match gone_evidence(r, net, handle, a, listed)? {
                Evidence::Netns(g) => Some(format!(
                    "has lost its pod: network namespace {} is gone on node {} ({}; report of {ago} s ago)",
                    a.netns.as_ref().map_or("?", |n| n.path.as_str()),
                    a.node,
                    g.why
                )),
                Evidence::Interface => Some(format!(
                    "has no interface on node {} (its report of {ago} s ago lists none for {handle})",
                    a.node
                )),
            }
        }
    }
}

/// What proves an attachment gone.
enum Evidence<'r> {
    /// The node's weftd found its recorded network namespace gone.
    Netns(&'r GoneNetns),
    /// Its host-side interface is missing from a report made after the allocation.
    Interface,
}

/// Why `r` proves the attachment gone, if it does: its recorded network namespace is listed
/// gone (for this very record), or it has a host-side interface (recorded at ADD, or implied
/// by a verified network) that a report made after the allocation does not list. `listed`:
/// the report lists its interface.
fn gone_evidence<'r>(
    r: &'r NodeReport,
    net: &str,
    handle: &str,
    a: &Allocation,
    listed: bool,
) -> Option<Evidence<'r>> {
    if a.netns.is_some()
        && let Some(g) = r
            .gone_netns
            .iter()
            .find(|g| g.network == net && g.handle == handle && g.created_at == a.created_at)
    {
        return Some(Evidence::Netns(g));
    }
    let has_interface = a.host_interface.is_some() || r.verified_networks.iter().any(|n| n == net);
    (has_interface && r.generated_at > a.created_at && !listed).then_some(Evidence::Interface)
}

/// True when `r` proves the attachment gone (its recorded namespace listed gone, or its host
/// interface missing from a report made after it); for `repair`'s re-check.
pub fn attachment_gone(r: &NodeReport, net: &str, handle: &str, a: &Allocation) -> bool {
    let listed = r.interfaces.iter().any(|i| {
        AliasRef::parse(&i.alias).is_some_and(|x| x.network == net && x.handle() == handle)
    });
    gone_evidence(r, net, handle, a, listed).is_some()
}

/// A borrowed address (held on a node other than its block's owner) needs a host route on
/// every other node of the network that routes to the holder.
#[allow(clippy::too_many_arguments)]
fn missing_route(
    s: &Snapshot,
    findings: &mut Vec<Finding>,
    net: &str,
    a: &Allocation,
    ip: IpAddr,
    block: Option<&BlockRecord>,
    now: u64,
    opts: &CheckOptions,
) {
    let Some(b) = block else { return };
    if b.node.as_deref() == Some(a.node.as_str()) {
        return;
    }
    if now.saturating_sub(a.created_at) < opts.grace_seconds {
        return;
    }
    let Some(holder) = s.nodes.get(&a.node) else {
        return;
    };
    if !holder.networks.iter().any(|n| n == net) {
        return;
    }
    let hops = holder.hops();
    for (name, r) in &s.reports {
        if *name == a.node || r.network != net || !s.nodes.contains_key(name) {
            continue;
        }
        // Only where this node routes to the holder at all (same family).
        let reaches = r.routes.iter().any(|rt| {
            rt.gateway.is_some_and(|g| hops.contains(&g)) && rt.dst.addr().is_ipv4() == ip.is_ipv4()
        });
        if !reaches {
            continue;
        }
        let has = r
            .routes
            .iter()
            .any(|rt| rt.dst == host(ip) && rt.gateway.is_some_and(|g| hops.contains(&g)));
        if !has {
            findings.push(Finding {
                kind: FindingKind::MissingRoute,
                network: Some(net.to_string()),
                node: Some(name.clone()),
                subject: host(ip).to_string(),
                detail: format!(
                    "{ip} of {} is borrowed by node {} from block {} but node {name} has no route {} to it (its report is {} s old)",
                    a.handle,
                    a.node,
                    b.cidr,
                    host(ip),
                    now.saturating_sub(r.generated_at)
                ),
                repair: format!("weftd on {name} reconciles now (the route comes back)"),
                action: Some(RepairAction::Node {
                    node: name.clone(),
                    order: NodeAction::Resync,
                }),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ReportedFdb, ReportedInterface, ReportedNeighbour, ReportedRoute};

    const NET: &str = "n";

    fn node(name: &str, ip: &str, mac: &str) -> NodeInfo {
        NodeInfo {
            name: name.into(),
            underlay_ip: ip.parse().unwrap(),
            underlay_ip6: None,
            vtep_mac: Some(mac.into()),
            vtep_ip: Some(ip.parse().unwrap()),
            networks: vec![NET.into()],
        }
    }

    fn report(name: &str, at: u64) -> NodeReport {
        NodeReport {
            schema: 1,
            node: name.into(),
            generated_at: at,
            network: NET.into(),
            verified_networks: vec![NET.into()],
            interfaces: vec![],
            routes: vec![],
            vxlan_device: None,
            fdb: vec![],
            neighbours: vec![],
            nftables: None,
            netns_examined: None,
            gone_netns: vec![],
        }
    }

    /// Two nodes, a block each, one allocation "c1:eth0" on a1 (198.18.0.1) made at 100.
    fn snap() -> Snapshot {
        let mut s = Snapshot::default();
        let spec = weft_ipam::NetworkSpec::new(
            NET,
            vec![weft_ipam::PoolSpec {
                subnet: "198.18.0.0/24".parse().unwrap(),
                range_start: None,
                range_end: None,
                exclude: vec![],
                gateway: None,
            }],
        );
        s.networks.insert(
            NET.into(),
            NetworkRecord {
                schema: 1,
                spec,
                created_at: 0,
            },
        );
        let mut b1 = BlockRecord::new("198.18.0.0/26".parse().unwrap(), Some("a1"));
        b1.assign(1, "c1:eth0");
        let b2 = BlockRecord::new("198.18.0.64/26".parse().unwrap(), Some("a2"));
        s.blocks.insert(NET.into(), vec![b1, b2]);
        let a = Allocation {
            schema: 1,
            network: NET.into(),
            handle: "c1:eth0".into(),
            addresses: vec!["198.18.0.1/24".parse().unwrap()],
            container_id: "c1".into(),
            ifname: "eth0".into(),
            node: "a1".into(),
            pod: None,
            fixed: None,
            created_at: 100,
            host_interface: None,
            netns: None,
        };
        s.handles
            .entry(NET.into())
            .or_default()
            .insert("c1:eth0".into(), a);
        s.nodes
            .insert("a1".into(), node("a1", "198.51.100.2", "0e:00:00:00:00:01"));
        s.nodes
            .insert("a2".into(), node("a2", "198.51.100.3", "0e:00:00:00:00:02"));
        s
    }

    fn opts(grace: u64) -> CheckOptions {
        CheckOptions {
            grace_seconds: grace,
        }
    }

    fn kinds(r: &CheckReport) -> Vec<(FindingKind, String)> {
        r.findings
            .iter()
            .map(|f| (f.kind, f.subject.clone()))
            .collect()
    }

    #[test]
    fn no_report_no_kernel_verdict() {
        let r = analyse(&snap(), &opts(0), 1000);
        assert!(r.findings.is_empty(), "{:?}", r.findings);
        assert_eq!(r.nodes_without_report, vec!["a1", "a2"]);
    }

    #[test]
    fn leaks_only_when_old_enough_and_after_the_report() {
        let mut s = snap();
        s.reports.insert("a1".into(), report("a1", 200));
        let leak = vec![(FindingKind::Leak, "c1:eth0".to_string())];
        assert_eq!(kinds(&analyse(&s, &opts(0), 1000)), leak);
        // Inside the grace period: never a leak.
        assert!(analyse(&s, &opts(60), 150).findings.is_empty());
        // A report from before the allocation (or the same second) proves nothing.
        s.reports.get_mut("a1").unwrap().generated_at = 100;
        assert!(analyse(&s, &opts(0), 1000).findings.is_empty());
        // A network the node does not verify (underlay macvlan): not judged.
        let r = s.reports.get_mut("a1").unwrap();
        r.generated_at = 200;
        r.verified_networks.clear();
        assert!(analyse(&s, &opts(0), 1000).findings.is_empty());
        // Listed: live.
        let r = s.reports.get_mut("a1").unwrap();
        r.verified_networks = vec![NET.into()];
        r.interfaces.push(ReportedInterface {
            name: "wabc".into(),
            kind: Some("veth".into()),
            alias: "weft:n:c1:eth0".into(),
        });
        r.routes.push(ReportedRoute {
            dst: "198.18.0.1/32".parse().unwrap(),
            gateway: None,
            dev: "wabc".into(),
            onlink: false,
        });
        assert!(analyse(&s, &opts(0), 1000).findings.is_empty());
    }

    #[test]
    fn leaks_by_namespace_and_recorded_interface_on_any_network() {
        let mut s = snap();
        let mut r = report("a1", 200);
        r.verified_networks.clear(); // e.g. a bridge-mode or underlay network of the node
        s.reports.insert("a1".into(), r);
        let leak = vec![(FindingKind::Leak, "c1:eth0".to_string())];
        // An old record (no namespace, no interface recorded): not judged, as before.
        assert!(analyse(&s, &opts(0), 1000).findings.is_empty());
        let netns = weft_ipam::NetnsRef {
            path: "/run/netns/p1".into(),
            ino: 4026532000,
            dev: 4,
            dir: None,
        };
        s.handles
            .get_mut(NET)
            .unwrap()
            .get_mut("c1:eth0")
            .unwrap()
            .netns = Some(netns);
        // A namespace recorded, the report does not list it gone: live (macvlan, no interface).
        assert!(analyse(&s, &opts(0), 1000).findings.is_empty());
        let gone = |created_at| GoneNetns {
            network: NET.into(),
            handle: "c1:eth0".into(),
            created_at,
            why: "no such file".into(),
        };
        // Listed gone, but for another record of the same handle: not this one.
        s.reports.get_mut("a1").unwrap().gone_netns = vec![gone(99)];
        assert!(analyse(&s, &opts(0), 1000).findings.is_empty());
        s.reports.get_mut("a1").unwrap().gone_netns = vec![gone(100)];
        let r = analyse(&s, &opts(0), 1000);
        assert_eq!(kinds(&r), leak);
        assert!(
            r.findings[0]
                .detail
                .contains("network namespace /run/netns/p1 is gone"),
            "{}",
            r.findings[0].detail
        );
        assert!(attachment_gone(
            &s.reports["a1"],
            NET,
            "c1:eth0",
            &s.handles[NET]["c1:eth0"]
        ));
        // Inside the grace period: never a leak.
        assert!(analyse(&s, &opts(60), 150).findings.is_empty());
        // A recorded host interface: judged by it on a network the node does not verify.
        s.reports.get_mut("a1").unwrap().gone_netns.clear();
        let a = s.handles.get_mut(NET).unwrap().get_mut("c1:eth0").unwrap();
        a.host_interface = Some("wabc".into());
        let r = analyse(&s, &opts(0), 1000);
        assert_eq!(kinds(&r), leak);
        assert!(r.findings[0].detail.contains("has no interface"));
        s.reports
            .get_mut("a1")
            .unwrap()
            .interfaces
            .push(ReportedInterface {
                name: "wabc".into(),
                kind: Some("veth".into()),
                alias: "weft:n:c1:eth0".into(),
            });
        assert!(analyse(&s, &opts(0), 1000).findings.is_empty());
        assert!(!attachment_gone(
            &s.reports["a1"],
            NET,
            "c1:eth0",
            &s.handles[NET]["c1:eth0"]
        ));
    }

    #[test]
    fn gone_nodes_and_their_blocks() {
        let mut s = snap();
        s.nodes.remove("a1");
        assert_eq!(
            kinds(&analyse(&s, &opts(0), 1000)),
            vec![
                (FindingKind::Leak, "c1:eth0".to_string()),
                (FindingKind::StaleBlock, "198.18.0.0/26".to_string()),
            ]
        );
        // Without any registered node (no weftd runs), nobody is judged gone.
        s.nodes.clear();
        assert!(analyse(&s, &opts(0), 1000).findings.is_empty());
    }

    #[test]
    fn kernel_orphans() {
        let mut s = snap();
        let mut r = report("a2", 200);
        r.vxlan_device = Some("weft.vx".into());
        r.fdb = vec![
            ReportedFdb {
                mac: "0e:00:00:00:00:01".into(),
                dst: "198.51.100.2".parse().unwrap(),
            },
            ReportedFdb {
                mac: "0e:00:00:00:00:09".into(),
                dst: "198.51.100.9".parse().unwrap(),
            },
        ];
        r.neighbours = vec![
            ReportedNeighbour {
                ip: "198.51.100.2".parse().unwrap(),
                mac: Some("0e:00:00:00:00:01".into()),
            },
            ReportedNeighbour {
                ip: "198.51.100.9".parse().unwrap(),
                mac: None,
            },
        ];
        r.routes = vec![
            // To a1's block via a1: fine.
            ReportedRoute {
                dst: "198.18.0.0/26".parse().unwrap(),
                gateway: Some("198.51.100.2".parse().unwrap()),
                dev: "weft.vx".into(),
                onlink: true,
            },
            // To a block nobody has.
            ReportedRoute {
                dst: "198.18.0.128/26".parse().unwrap(),
                gateway: Some("198.51.100.2".parse().unwrap()),
                dev: "weft.vx".into(),
                onlink: true,
            },
            // Via a node that is not registered.
            ReportedRoute {
                dst: "198.18.0.0/26".parse().unwrap(),
                gateway: Some("198.51.100.9".parse().unwrap()),
                dev: "uplink".into(),
                onlink: false,
            },
        ];
        r.interfaces.push(ReportedInterface {
            name: "wdead".into(),
            kind: Some("veth".into()),
            alias: "weft:n:gone:eth0".into(),
        });
        s.reports.insert("a2".into(), r);
        let got = kinds(&analyse(&s, &opts(0), 1000));
        assert_eq!(
            got,
            vec![
                (
                    FindingKind::Orphan,
                    "fdb 0e:00:00:00:00:09 dst 198.51.100.9".to_string()
                ),
                (FindingKind::Orphan, "interface wdead".to_string()),
                (FindingKind::Orphan, "neighbour 198.51.100.9".to_string()),
                (
                    FindingKind::Orphan,
                    "route 198.18.0.0/26 via 198.51.100.9 dev uplink".to_string()
                ),
                (
                    FindingKind::Orphan,
                    "route 198.18.0.128/26 via 198.51.100.2 dev weft.vx".to_string()
                ),
            ]
        );
        assert!(
            analyse(&s, &opts(0), 1000)
                .findings
                .iter()
                .all(|f| matches!(f.action, Some(RepairAction::Node { .. })))
        );
    }

    #[test]
    fn borrowed_addresses_need_their_route() {
        let mut s = snap();
        // a1 holds 198.18.0.70 from a2's block.
        s.blocks.get_mut(NET).unwrap()[1].assign(6, "c2:eth0");
        let mut a = s.handles[NET]["c1:eth0"].clone();
        a.handle = "c2:eth0".into();
        a.container_id = "c2".into();
        a.addresses = vec!["198.18.0.70/24".parse().unwrap()];
        s.handles.get_mut(NET).unwrap().insert("c2:eth0".into(), a);
        let mut r = report("a2", 200);
        r.routes.push(ReportedRoute {
            dst: "198.18.0.0/26".parse().unwrap(),
            gateway: Some("198.51.100.2".parse().unwrap()),
            dev: "uplink".into(),
            onlink: false,
        });
        s.reports.insert("a2".into(), r);
        let got = analyse(&s, &opts(0), 1000);
        assert_eq!(
            kinds(&got),
            vec![(FindingKind::MissingRoute, "198.18.0.70/32".to_string())]
        );
        assert_eq!(got.findings[0].node.as_deref(), Some("a2"));
        s.reports.get_mut("a2").unwrap().routes.push(ReportedRoute {
            dst: "198.18.0.70/32".parse().unwrap(),
            gateway: Some("198.51.100.2".parse().unwrap()),
            dev: "uplink".into(),
            onlink: false,
        });
        assert!(analyse(&s, &opts(0), 1000).findings.is_empty());
    }
}
