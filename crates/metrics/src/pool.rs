//! Pool occupancy read from the store at scrape time: per network, address family and node
//! (the node a block has affinity to), and per network and family in total.
//!
//! Every usable address of a pool (inside its range, not excluded, not the gateway) is in
//! exactly one state: `used` (held by an attachment), `reserved` (held by a fixed-IP
//! reservation or an address pool while no pod uses it), `cooling` (released less than the
//! network's cooldown ago) or `free`. A node's `size` counts the usable addresses of the blocks
//! it has claimed; a network's `size` counts every usable address of its pools, claimed or not.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use weft_ipam::fixed::is_pseudo_owner;
use weft_ipam::{Allocation, BlockRecord, NetworkRecord, NetworkSpec, PoolSpec};
use weft_store::{Store, StoreError};

/// The `family` label: `ipv4` or `ipv6`.
pub fn family_label(family: u8) -> &'static str {
    if family == 4 { "ipv4" } else { "ipv6" }
}

/// Addresses of one kind of pool slice (a node's blocks, or a whole network).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Occupancy {
    pub size: u128,
    pub used: u128,
    pub reserved: u128,
    pub cooling: u128,
    /// Blocks (claimed ones for a node and for a network).
    pub blocks: u128,
}

impl Occupancy {
    pub fn free(&self) -> u128 {
        self.size
            .saturating_sub(self.used)
            .saturating_sub(self.reserved)
            .saturating_sub(self.cooling)
    }
}

/// One network and family in total.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetworkOccupancy {
    pub all: Occupancy,
    /// How many blocks the pools are cut into (claimed or not).
    pub blocks_total: u128,
}

/// What the store holds, counted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// (network, family, node) -> the node's blocks. Node `""`: blocks without a node.
    pub nodes: BTreeMap<(String, u8, String), Occupancy>,
    /// (network, family) -> the network's pools.
    pub networks: BTreeMap<(String, u8), NetworkOccupancy>,
    /// (network, node) -> allocation records (attachments and fixed-IP holders) on that node.
    pub attachments: BTreeMap<(String, String), u128>,
}

fn decode<T: serde::de::DeserializeOwned>(kv: &weft_store::KeyValue) -> Result<T, StoreError> {
    serde_json::from_slice(&kv.value).map_err(|e| StoreError::Decode {
        key: kv.key.clone(),
        msg: e.to_string(),
    })
}

impl Snapshot {
    /// Reads networks, blocks and allocation records and counts them as of `now` (unix
    /// seconds; cooling depends on it).
    pub fn read(store: &dyn Store, now: u64) -> Result<Snapshot, StoreError> {
        Snapshot::read_with(store, now, true)
    }

    /// As [`Snapshot::read`] without the allocation records (one per pod in the cluster, too
    /// many for every node to list on every scrape): `attachments` stays empty.
    pub fn read_pools(store: &dyn Store, now: u64) -> Result<Snapshot, StoreError> {
        Snapshot::read_with(store, now, false)
    }

    fn read_with(store: &dyn Store, now: u64, handles: bool) -> Result<Snapshot, StoreError> {
        let mut networks = Vec::new();
        for kv in store.list(&weft_ipam::networks_prefix())? {
            networks.push(decode::<NetworkRecord>(&kv)?);
        }
        let mut blocks = Vec::new();
        let mut allocations = Vec::new();
        for n in &networks {
            let name = &n.spec.name;
            for kv in store.list(&weft_ipam::blocks_prefix(name))? {
                blocks.push((name.clone(), decode::<BlockRecord>(&kv)?));
            }
            if handles {
                for kv in store.list(&weft_ipam::handles_prefix(name))? {
                    allocations.push(decode::<Allocation>(&kv)?);
                }
            }
        }
        let specs: Vec<NetworkSpec> = networks.into_iter().map(|n| n.spec).collect();
        Ok(Snapshot::compute(&specs, &blocks, &allocations, now))
    }

    /// The counting, without I/O.
    pub fn compute(
        networks: &[NetworkSpec],
        blocks: &[(String, BlockRecord)],
        allocations: &[Allocation],
        now: u64,
    ) -> Snapshot {
        let mut out = Snapshot::default();
        for spec in networks {
            for pool in &spec.pools {
                let family = pool.family();
                let bp = spec.block_prefix(family).max(pool.subnet.prefix_len());
                let e = out.networks.entry((spec.name.clone(), family)).or_default();
                e.all.size = e.all.size.saturating_add(pool_size(pool));
                e.blocks_total = e
                    .blocks_total
                    .saturating_add(1u128 << (bp - pool.subnet.prefix_len()).min(127));
            }
        }
        for (network, block) in blocks {
            let Some(spec) = networks.iter().find(|s| &s.name == network) else {
                continue;
            };
            let family = if block.cidr.addr().is_ipv4() { 4 } else { 6 };
            let usable: Vec<u32> = spec
                .pools
                .iter()
                .find(|p| p.family() == family && p.subnet.contains(&block.cidr.network()))
                .map(|p| p.usable_in(&block.cidr))
                .unwrap_or_default();
            let mut o = Occupancy {
                size: usable.len() as u128,
                blocks: 1,
                ..Default::default()
            };
            for owner in block.allocations.values() {
                if is_pseudo_owner(owner) {
                    o.reserved += 1;
                } else {
                    o.used += 1;
                }
            }
            o.cooling = block
                .cooling
                .keys()
                .filter(|off| !block.allocations.contains_key(off) && usable.contains(off))
                .filter(|off| {
                    block
                        .cooling_until(**off, spec.cooldown_seconds)
                        .is_some_and(|t| t > now)
                })
                .count() as u128;
            let node = block.node.clone().unwrap_or_default();
            add(
                out.nodes
                    .entry((network.clone(), family, node))
                    .or_default(),
                &o,
                true,
            );
            add(
                &mut out
                    .networks
                    .entry((network.clone(), family))
                    .or_default()
                    .all,
                &o,
                false,
            );
        }
        for a in allocations {
            *out.attachments
                .entry((a.network.clone(), a.node.clone()))
                .or_default() += 1;
        }
        out
    }
}

fn add(into: &mut Occupancy, o: &Occupancy, with_size: bool) {
    if with_size {
        into.size += o.size;
    }
    into.used += o.used;
    into.reserved += o.reserved;
    into.cooling += o.cooling;
    into.blocks += o.blocks;
}

fn to_u128(a: IpAddr) -> u128 {
    match a {
        IpAddr::V4(v) => u32::from(v) as u128,
        IpAddr::V6(v) => u128::from(v),
    }
}

/// Usable addresses of a pool: its range, less exclusions and the gateway. Computed from
/// intervals, so a /64 costs no more than a /24.
pub fn pool_size(pool: &PoolSpec) -> u128 {
    let (first, last) = pool.range();
    let (f, l) = (to_u128(first), to_u128(last));
    if l < f {
        return 0;
    }
    let v4 = pool.subnet.addr().is_ipv4();
    let mut excluded: Vec<(u128, u128)> = pool
        .exclude
        .iter()
        .filter(|x| x.addr().is_ipv4() == v4)
        .map(|x: &IpNet| (to_u128(x.network()).max(f), to_u128(x.broadcast()).min(l)))
        .filter(|(a, b)| a <= b)
        .collect();
    excluded.sort();
    let mut merged: Vec<(u128, u128)> = Vec::new();
    for (a, b) in excluded {
        match merged.last_mut() {
            Some((_, e)) if a <= e.saturating_add(1) => *e = (*e).max(b),
            _ => merged.push((a, b)),
        }
    }
    // l - f + 1 cannot overflow: f is at least the subnet's first address plus one.
    let mut n = (l - f).saturating_add(1);
    for (a, b) in &merged {
        n -= b - a + 1;
    }
    if let Some(g) = pool.gateway.filter(|g| g.is_ipv4() == v4) {
        let g = to_u128(g);
        if g >= f && g <= l && !merged.iter().any(|(a, b)| g >= *a && g <= *b) {
            n -= 1;
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(subnet: &str) -> PoolSpec {
        PoolSpec {
            subnet: subnet.parse().unwrap(),
            range_start: None,
            range_end: None,
            exclude: vec![],
            gateway: None,
        }
    }

    /// The interval arithmetic agrees with enumerating `usable_in` over every block.
    #[test]
    fn pool_size_matches_enumeration() {
        let mut cases = vec![pool("198.18.0.0/24"), pool("fd00:18::/120")];
        let mut p = pool("198.18.0.0/23");
        p.range_start = Some("198.18.0.10".parse().unwrap());
        p.range_end = Some("198.18.1.200".parse().unwrap());
        p.exclude = vec![
            "198.18.0.64/30".parse().unwrap(),
            "198.18.0.66/31".parse().unwrap(),
            "198.18.1.0/24".parse().unwrap(),
            "198.18.1.0/25".parse().unwrap(),
        ];
        p.gateway = Some("198.18.0.1".parse().unwrap()); // outside the range: no effect
        cases.push(p);
        let mut p = pool("198.18.0.0/24");
        p.gateway = Some("198.18.0.1".parse().unwrap());
        p.exclude = vec!["198.18.0.128/25".parse().unwrap()];
        cases.push(p);
        let mut p = pool("198.18.0.0/24");
        p.gateway = Some("198.18.0.130".parse().unwrap()); // inside an exclusion: counted once
        p.exclude = vec!["198.18.0.128/25".parse().unwrap()];
        cases.push(p);
        for p in &cases {
            let bp = if p.family() == 4 { 26 } else { 122 };
            let enumerated: usize = weft_ipam::block_cidrs(p, bp)
                .map(|b| p.usable_in(&b).len())
                .sum();
            assert_eq!(pool_size(p), enumerated as u128, "{p:?}");
        }
        assert_eq!(pool_size(&pool("198.18.0.0/24")), 254);
        assert_eq!(pool_size(&pool("fd00:18::/64")), (1u128 << 64) - 1);
    }

    #[test]
    fn states_partition_a_nodes_blocks() {
        let spec = NetworkSpec::new("n", vec![pool("198.18.0.0/24"), pool("fd00:18::/64")]);
        let mut b1 = BlockRecord::new("198.18.0.0/26".parse().unwrap(), Some("a"));
        b1.assign(1, "c1:eth0");
        b1.assign(2, "c2:eth0");
        b1.assign(3, "reserved:prod/db/0");
        b1.release(4, 1000); // cooling until 1030
        b1.release(5, 900); // cooled down
        let mut b2 = BlockRecord::new("198.18.0.64/26".parse().unwrap(), Some("b"));
        b2.assign(0, "c3:eth0");
        let b3 = BlockRecord::new("198.18.0.192/26".parse().unwrap(), None);
        let mut b6 = BlockRecord::new("fd00:18::/122".parse().unwrap(), Some("a"));
        b6.assign(1, "c1:eth0");
        let blocks: Vec<(String, BlockRecord)> = [b1, b2, b3, b6]
            .into_iter()
            .map(|b| ("n".to_string(), b))
            .collect();
        let alloc = |handle: &str, node: &str| Allocation {
            schema: 1,
            network: "n".into(),
            handle: handle.into(),
            addresses: vec![],
            container_id: handle.into(),
            ifname: "eth0".into(),
            node: node.into(),
            pod: None,
            fixed: None,
            created_at: 0,
            host_interface: None,
            netns: None,
        };
        let allocs = vec![alloc("c1", "a"), alloc("c2", "a"), alloc("c3", "b")];
        let s = Snapshot::compute(&[spec], &blocks, &allocs, 1010);
        let a4 = s.nodes[&("n".into(), 4, "a".into())];
        assert_eq!(
            a4,
            Occupancy {
                size: 63,
                used: 2,
                reserved: 1,
                cooling: 1,
                blocks: 1
            }
        );
        assert_eq!(a4.free(), 59);
        let b4 = s.nodes[&("n".into(), 4, "b".into())];
        assert_eq!((b4.size, b4.used, b4.free()), (64, 1, 63));
        let none = s.nodes[&("n".into(), 4, String::new())];
        assert_eq!((none.size, none.free()), (63, 63));
        let a6 = s.nodes[&("n".into(), 6, "a".into())];
        assert_eq!((a6.size, a6.used, a6.free()), (63, 1, 62));
        let n4 = s.networks[&("n".into(), 4)];
        assert_eq!(n4.all.size, 254);
        assert_eq!(
            (n4.all.used, n4.all.reserved, n4.all.cooling, n4.all.blocks),
            (3, 1, 1, 3)
        );
        assert_eq!(n4.all.free(), 254 - 5);
        assert_eq!(n4.blocks_total, 4);
        let n6 = s.networks[&("n".into(), 6)];
        assert_eq!(n6.blocks_total, 1 << 58);
        assert_eq!(n6.all.free(), (1u128 << 64) - 2);
        assert_eq!(s.attachments[&("n".into(), "a".into())], 2);
        assert_eq!(s.attachments[&("n".into(), "b".into())], 1);
        // After the cooldown the cooling address is free again.
        let later = Snapshot::compute(
            &[NetworkSpec::new(
                "n",
                vec![pool("198.18.0.0/24"), pool("fd00:18::/64")],
            )],
            &blocks,
            &allocs,
            1031,
        );
        assert_eq!(later.nodes[&("n".into(), 4, "a".into())].cooling, 0);
    }
}
