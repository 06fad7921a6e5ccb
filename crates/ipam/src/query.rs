//! Reads and admin writes for weft-api and weftctl: who holds an address, how full a network
//! is (per family and per node), address pools created ahead of their pods, a network edited,
//! a network deleted.
//!
//! Reads never write. The admin writes keep the invariants of the crate: an address's owner is
//! only ever changed in its block record, and addresses a pod holds stay with the pod until its
//! DEL.
use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use weft_store::{Op, Store, StoreError, Txn, transact};

use crate::addr::to_u128;
use crate::fixed::{pool_key, reservation_key};
use crate::{
    AddressPool, Allocation, BlockRecord, IpamError, KEY_ROOT, NetworkRecord, NetworkSpec,
    OwnerChange, PoolRequest, Reservation, Result, blocks_prefix, ensure_pool, handle_key,
    handles_prefix, load_blocks, model, network_key, networks_prefix, reservations_prefix,
    set_owners, write_blocks,
};

/// Prefix of a network's address pools: `/weft/v1/pools/<network>/`.
pub fn pools_prefix(network: &str) -> String {
    format!("{KEY_ROOT}/pools/{network}/")
}

/// Who or what holds one address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "state")]
pub enum Holder {
    /// A pod's attachment (its allocation record, when the record exists).
    Allocated {
        handle: String,
        allocation: Option<Allocation>,
    },
    /// Kept for a workload identity while no pod holds it.
    Reserved {
        key: String,
        reservation: Option<Reservation>,
    },
    /// A free address of an address pool (a Deployment's fixed addresses).
    Pooled { pool: String },
}

/// What [`lookup`] found for an address in one network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Lookup {
    pub network: String,
    pub address: IpAddr,
    pub block: IpNet,
    /// The node with affinity to the block (not necessarily the holder's node).
    pub block_node: Option<String>,
    /// `None` when nobody holds the address.
    pub holder: Option<Holder>,
    /// When it was released, if it was and nobody holds it now (it cools down from then).
    pub released_at: Option<u64>,
    /// Until when it cools down (unix seconds), if it still does.
    pub cooling_until: Option<u64>,
}

/// Looks `addr` up in every network whose pools contain it (or only in `network`).
/// An address no block holds yet comes back with no holder; an address in no pool is not in
/// the result at all.
pub fn lookup(store: &dyn Store, addr: IpAddr, network: Option<&str>) -> Result<Vec<Lookup>> {
    let now = crate::now();
    transact(store, |tx| {
        let mut out = Vec::new();
        for (_, rec) in tx.list_json::<NetworkRecord>(&networks_prefix())? {
            let spec = rec.spec;
            if network.is_some_and(|n| n != spec.name) {
                continue;
            }
            let Some(pool) = spec.pools.iter().find(|p| p.subnet.contains(&addr)) else {
                continue;
            };
            let bp = spec
                .block_prefix(pool.family())
                .max(pool.subnet.prefix_len());
            let block = IpNet::new(addr, bp)
                .map_err(|e| StoreError::Unavailable(e.to_string()))?
                .trunc();
            let off = (to_u128(addr) - to_u128(block.network())) as u32;
            let rec: Option<BlockRecord> = tx.get_json(&crate::block_key(&spec.name, &block))?;
            let mut found = Lookup {
                network: spec.name.clone(),
                address: addr,
                block,
                block_node: rec.as_ref().and_then(|b| b.node.clone()),
                holder: None,
                released_at: None,
                cooling_until: None,
            };
            if let Some(b) = rec {
                match b.allocations.get(&off) {
                    Some(owner) => {
                        found.holder = Some(if let Some(key) = owner.strip_prefix("reserved:") {
                            Holder::Reserved {
                                key: key.to_string(),
                                reservation: tx.get_json(&reservation_key(&spec.name, key))?,
                            }
                        } else if let Some(p) = owner.strip_prefix("pool:") {
                            Holder::Pooled {
                                pool: p.to_string(),
                            }
                        } else {
                            Holder::Allocated {
                                handle: owner.clone(),
                                allocation: tx.get_json(&handle_key(&spec.name, owner))?,
                            }
                        });
                    }
                    None => {
                        found.released_at = b.cooling.get(&off).copied();
                        found.cooling_until = b
                            .cooling_until(off, spec.cooldown_seconds)
                            .filter(|t| *t > now);
                    }
                }
            }
            out.push(found);
        }
        Ok(out)
    })
}

/// How full one address family of a network is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FamilyUsage {
    pub family: u8,
    /// Addresses pods may get (ranges minus gateway and exclusions).
    pub size: u128,
    /// Held by pods.
    pub used: u128,
    /// Kept by reservations or address pools while no pod holds them.
    pub reserved: u128,
    /// Released and still cooling down.
    pub cooling: u128,
    /// `size - used - reserved - cooling`.
    pub free: u128,
}

/// One node's share of a network.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeUsage {
    pub node: String,
    /// Blocks with affinity to the node.
    pub blocks: Vec<IpNet>,
    /// Addresses held by pods on the node (wherever their blocks are).
    pub used: u128,
    /// Addresses pods may get in the node's blocks.
    pub block_size: u128,
    /// Of those, held by anyone (any node's pods, reservations, pools).
    pub block_used: u128,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Usage {
    pub network: String,
    pub families: Vec<FamilyUsage>,
    pub nodes: Vec<NodeUsage>,
    /// Blocks claimed / blocks the pools are cut into.
    pub blocks_claimed: u64,
    pub blocks_total: u128,
}

/// How many addresses of `pool` pods may get.
pub fn pool_size(pool: &crate::PoolSpec) -> u128 {
    let (first, last) = pool.range();
    let (first, last) = (to_u128(first), to_u128(last));
    if last < first {
        return 0;
    }
    let mut n = last - first + 1;
    if let Some(g) = pool.gateway.map(to_u128)
        && (first..=last).contains(&g)
    {
        n -= 1;
    }
    for x in &pool.exclude {
        let (a, b) = (to_u128(x.network()), to_u128(x.broadcast()));
        let (lo, hi) = (a.max(first), b.min(last));
        if lo <= hi {
            let mut k = hi - lo + 1;
            if let Some(g) = pool.gateway.map(to_u128)
                && (lo..=hi).contains(&g)
            {
                k -= 1; // already taken off as the gateway
            }
            n = n.saturating_sub(k);
        }
    }
    n
}

/// Usage of `spec`'s network, from its blocks and (with `per_node`) its allocation records;
/// without `per_node`, `nodes` is empty and only the blocks are read.
pub fn usage(store: &dyn Store, spec: &NetworkSpec, per_node: bool) -> Result<Usage> {
    let now = crate::now();
    let (blocks, allocs) = transact(store, |tx| {
        let blocks = block_records(tx, &spec.name)?;
        let allocs: Vec<Allocation> = if per_node {
            tx.list_json::<Allocation>(&handles_prefix(&spec.name))?
                .into_iter()
                .map(|(_, a)| a)
                .collect()
        } else {
            Vec::new()
        };
        Ok::<_, IpamError>((blocks, allocs))
    })?;
    let mut out = Usage {
        network: spec.name.clone(),
        blocks_claimed: blocks.len() as u64,
        ..Default::default()
    };
    for family in spec.families() {
        let mut f = FamilyUsage {
            family,
            ..Default::default()
        };
        for pool in spec.pools.iter().filter(|p| p.family() == family) {
            f.size = f.size.saturating_add(pool_size(pool));
            let bp = spec.block_prefix(family).max(pool.subnet.prefix_len());
            out.blocks_total = out
                .blocks_total
                .saturating_add(1u128 << (bp - pool.subnet.prefix_len()).min(100));
            for b in blocks
                .iter()
                .filter(|b| pool.subnet.contains(&b.cidr.network()))
            {
                for owner in b.allocations.values() {
                    if crate::is_attachment(owner) {
                        f.used += 1;
                    } else {
                        f.reserved += 1;
                    }
                }
                f.cooling += b
                    .cooling
                    .keys()
                    .filter(|off| {
                        !b.allocations.contains_key(off)
                            && b.cooling_until(**off, spec.cooldown_seconds)
                                .is_some_and(|t| t > now)
                    })
                    .count() as u128;
            }
        }
        f.free = f
            .size
            .saturating_sub(f.used)
            .saturating_sub(f.reserved)
            .saturating_sub(f.cooling);
        out.families.push(f);
    }
    if !per_node {
        return Ok(out);
    }
    let mut nodes: BTreeMap<String, NodeUsage> = BTreeMap::new();
    for b in &blocks {
        let Some(node) = b.node.clone() else { continue };
        let n = nodes.entry(node.clone()).or_insert_with(|| NodeUsage {
            node,
            ..Default::default()
        });
        n.blocks.push(b.cidr);
        if let Some(pool) = spec
            .pools
            .iter()
            .find(|p| p.subnet.contains(&b.cidr.network()))
        {
            n.block_size += pool.usable_in(&b.cidr).len() as u128;
        }
        n.block_used += b.allocations.len() as u128;
    }
    for a in &allocs {
        let n = nodes.entry(a.node.clone()).or_insert_with(|| NodeUsage {
            node: a.node.clone(),
            ..Default::default()
        });
        n.used += a.addresses.len() as u128;
    }
    out.nodes = nodes.into_values().filter(|n| !n.node.is_empty()).collect();
    Ok(out)
}

/// Every block record of `network`.
pub fn blocks(store: &dyn Store, network: &str) -> Result<Vec<BlockRecord>> {
    transact(store, |tx| block_records(tx, network))
}

/// The block records of `network` as [`load_blocks`] reads them, without their revisions.
fn block_records(tx: &mut weft_store::Tx<'_>, network: &str) -> Result<Vec<BlockRecord>> {
    Ok(load_blocks(tx, network)?
        .into_iter()
        .map(|(_, b)| b.record)
        .collect())
}

/// Every allocation of `network`, read in one range (no transaction bookkeeping: a plain read
/// for listings).
pub fn allocations(store: &dyn Store, network: &str) -> Result<Vec<Allocation>> {
    decode_all(store, &handles_prefix(network))
}

fn decode_all<T: serde::de::DeserializeOwned>(store: &dyn Store, prefix: &str) -> Result<Vec<T>> {
    store
        .list(prefix)?
        .into_iter()
        .map(|kv| {
            serde_json::from_slice(&kv.value).map_err(|e| {
                IpamError::Store(StoreError::Decode {
                    key: kv.key.clone(),
                    msg: e.to_string(),
                })
            })
        })
        .collect()
}

/// Per node: how many attachments of `network` it has and how many addresses they hold
/// (decoding only those fields of each allocation record).
pub fn allocation_counts(store: &dyn Store, network: &str) -> Result<BTreeMap<String, (u64, u64)>> {
    #[derive(Deserialize)]
    struct Light {
        node: String,
        addresses: Vec<serde::de::IgnoredAny>,
    }
    let mut out: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for a in decode_all::<Light>(store, &handles_prefix(network))? {
        let e = out.entry(a.node).or_default();
        e.0 += 1;
        e.1 += a.addresses.len() as u64;
    }
    Ok(out)
}

/// The stored record of `network`, if any.
pub fn network(store: &dyn Store, network: &str) -> Result<Option<NetworkRecord>> {
    transact(store, |tx| Ok(tx.get_json(&network_key(network))?))
}

/// The reservation `key` of `network`, if any (one read, by its key).
pub fn reservation(store: &dyn Store, network: &str, key: &str) -> Result<Option<Reservation>> {
    transact(store, |tx| Ok(tx.get_json(&reservation_key(network, key))?))
}

/// Every address pool of `network`.
pub fn pools(store: &dyn Store, network: &str) -> Result<Vec<AddressPool>> {
    transact(store, |tx| {
        Ok(tx
            .list_json::<AddressPool>(&pools_prefix(network))?
            .into_iter()
            .map(|(_, p)| p)
            .collect())
    })
}

/// The first pool of another network that overlaps a pool of `spec`.
fn overlap(
    tx: &mut weft_store::Tx<'_>,
    spec: &NetworkSpec,
) -> Result<Option<(IpNet, String, IpNet)>> {
    for (_, other) in tx.list_json::<NetworkRecord>(&networks_prefix())? {
        if other.spec.name == spec.name {
            continue;
        }
        for pool in &spec.pools {
            for op in &other.spec.pools {
                if pool.subnet.contains(&op.subnet.network())
                    || op.subnet.contains(&pool.subnet.network())
                {
                    return Ok(Some((pool.subnet, other.spec.name.clone(), op.subnet)));
                }
            }
        }
    }
    Ok(None)
}

/// Why an edit of a network was refused.
#[derive(Debug, thiserror::Error)]
pub enum EditError {
    #[error("network {0:?} already exists; edit it with PUT/PATCH (weftctl apply) instead")]
    Exists(String),
    #[error("network {0:?} does not exist")]
    NotFound(String),
    #[error(
        "network {network:?}: {field} cannot change from {stored} to {given} while the network has claimed blocks ({blocks}); delete its allocations first, or create a new network"
    )]
    InUse {
        network: String,
        field: String,
        stored: String,
        given: String,
        blocks: String,
    },
    #[error(
        "network {network:?} has {allocations} live allocation(s) and {reservations} reservation(s)/pool(s); release them first, or delete with force"
    )]
    Live {
        network: String,
        allocations: usize,
        reservations: usize,
    },
    #[error(transparent)]
    Ipam(#[from] IpamError),
}

impl From<StoreError> for EditError {
    fn from(e: StoreError) -> Self {
        EditError::Ipam(IpamError::Store(e))
    }
}

/// Creates (`create`: refused when it exists) or replaces the network record. A replacement
/// may change `cooldownSeconds` and `strictAffinity` at any time, add pools, and drop or change
/// a pool only while no block inside it is claimed; block sizes only while none is.
/// Overlaps with other networks' pools are refused ([`IpamError::Overlap`]).
/// Returns the stored record and whether it was created.
pub fn put_network(
    store: &dyn Store,
    spec: &NetworkSpec,
    create: bool,
) -> Result<(NetworkRecord, bool), EditError> {
    spec.validate()?;
    let now = crate::now();
    transact(store, |tx| {
        let key = network_key(&spec.name);
        let stored: Option<NetworkRecord> = tx.get_json(&key)?;
        if create && stored.is_some() {
            return Err(EditError::Exists(spec.name.clone()));
        }
        if let Some((pool, other_network, other_pool)) = overlap(tx, spec)? {
            return Err(IpamError::Overlap {
                network: spec.name.clone(),
                pool,
                other_network,
                other_pool,
            }
            .into());
        }
        if let Some(old) = &stored {
            let blocks = block_records(tx, &spec.name)?;
            let shown = |bs: &mut dyn Iterator<Item = &BlockRecord>| {
                let v: Vec<String> = bs.map(|b| b.cidr.to_string()).take(4).collect();
                v.join(", ")
            };
            if !blocks.is_empty() {
                for (field, a, b) in [
                    (
                        "blockPrefixV4",
                        old.spec.block_prefix_v4,
                        spec.block_prefix_v4,
                    ),
                    (
                        "blockPrefixV6",
                        old.spec.block_prefix_v6,
                        spec.block_prefix_v6,
                    ),
                ] {
                    if a != b {
                        return Err(EditError::InUse {
                            network: spec.name.clone(),
                            field: field.into(),
                            stored: a.to_string(),
                            given: b.to_string(),
                            blocks: shown(&mut blocks.iter()),
                        });
                    }
                }
            }
            for (i, p) in old.spec.pools.iter().enumerate() {
                if spec.pools.contains(p) {
                    continue;
                }
                let mut inside = blocks
                    .iter()
                    .filter(|b| p.subnet.contains(&b.cidr.network()))
                    .peekable();
                if inside.peek().is_some() {
                    let given = spec
                        .pools
                        .iter()
                        .find(|q| q.subnet == p.subnet)
                        .map(|q| serde_json::to_string(q).unwrap_or_default())
                        .unwrap_or_else(|| "(removed)".into());
                    return Err(EditError::InUse {
                        network: spec.name.clone(),
                        field: format!("pools[{i}]"),
                        stored: serde_json::to_string(p).unwrap_or_default(),
                        given,
                        blocks: shown(&mut inside),
                    });
                }
            }
        }
        let rec = NetworkRecord {
            schema: model::SCHEMA,
            spec: spec.clone(),
            created_at: stored.as_ref().map_or(now, |s| s.created_at),
        };
        tx.put_json(&key, &rec);
        Ok((rec, stored.is_none()))
    })
}

/// What [`delete_network`] removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Deleted {
    pub allocations: usize,
    pub reservations: usize,
    pub pools: usize,
    pub blocks: usize,
}

/// etcd refuses transactions of more than 128 operations by default.
const DELETE_BATCH: usize = 100;

/// Deletes `network`: its record, blocks, and (only with `force`) its allocations,
/// reservations and address pools. Without `force`, a network with any of those is refused
/// ([`EditError::Live`]). A forced delete goes in batches (not atomic): a pod added on the
/// network meanwhile registers the network again from its CNI configuration.
pub fn delete_network(store: &dyn Store, network: &str, force: bool) -> Result<Deleted, EditError> {
    if !force {
        let done = transact(store, |tx| {
            if tx.get(&network_key(network))?.is_none() {
                return Err(EditError::NotFound(network.to_string()));
            }
            let allocations = tx.list(&handles_prefix(network))?.len();
            let reservations = tx.list(&reservations_prefix(network))?.len()
                + tx.list(&pools_prefix(network))?.len();
            if allocations + reservations > 0 {
                return Err(EditError::Live {
                    network: network.to_string(),
                    allocations,
                    reservations,
                });
            }
            let blocks = tx.list(&blocks_prefix(network))?;
            if blocks.len() + 1 > DELETE_BATCH {
                return Ok(None);
            }
            for (k, _) in &blocks {
                tx.delete(k);
            }
            tx.delete(&network_key(network));
            Ok(Some(Deleted {
                blocks: blocks.len(),
                ..Default::default()
            }))
        })?;
        if let Some(d) = done {
            return Ok(d);
        }
    } else if store.get(&network_key(network))?.is_none() {
        return Err(EditError::NotFound(network.to_string()));
    }
    // Record first (new ADDs on a stale config re-register it), then everything under it.
    let mut d = Deleted::default();
    delete_keys(store, vec![network_key(network)])?;
    for (prefix, count) in [
        (handles_prefix(network), &mut d.allocations),
        (reservations_prefix(network), &mut d.reservations),
        (pools_prefix(network), &mut d.pools),
        (blocks_prefix(network), &mut d.blocks),
    ] {
        let keys: Vec<String> = store.list(&prefix)?.into_iter().map(|kv| kv.key).collect();
        *count = keys.len();
        delete_keys(store, keys)?;
    }
    Ok(d)
}

fn delete_keys(store: &dyn Store, keys: Vec<String>) -> Result<(), StoreError> {
    for chunk in keys.chunks(DELETE_BATCH) {
        store.commit(&Txn {
            compares: vec![],
            ops: chunk
                .iter()
                .map(|k| Op::Delete { key: k.clone() })
                .collect(),
        })?;
    }
    Ok(())
}

/// Creates the address pool `name` of `network` from `addresses` (each taken in its block by
/// the pool's pseudo-owner). Refused when the pool exists, when an address is held, or when it
/// is outside the network's ranges.
pub fn create_pool(
    store: &dyn Store,
    network: &str,
    name: &str,
    addresses: &[IpAddr],
) -> Result<AddressPool, EditError> {
    crate::fixed::validate_name(network, "name", name)?;
    if addresses.is_empty() {
        return Err(IpamError::InvalidSpec {
            network: network.to_string(),
            field: "addresses".into(),
            value: "[]".into(),
            why: "an address pool needs at least one address".into(),
        }
        .into());
    }
    let now = crate::now();
    transact(store, |tx| {
        let Some(rec) = tx.get_json::<NetworkRecord>(&network_key(network))? else {
            return Err(EditError::NotFound(network.to_string()));
        };
        let key = pool_key(network, name);
        if let Some(existing) = tx.get_json::<AddressPool>(&key)? {
            return Err(IpamError::FixedConflict {
                network: network.to_string(),
                what: "address pool",
                name: name.to_string(),
                stored: crate::join(&existing.addresses),
                given: crate::join(addresses),
            }
            .into());
        }
        let mut blocks = load_blocks(tx, network)?;
        let req = PoolRequest {
            name: name.to_string(),
            addresses: addresses.to_vec(),
        };
        let pool = ensure_pool(tx, &rec.spec, &mut blocks, &req, "", now)?;
        write_blocks(tx, &blocks);
        tx.put_json(&key, &pool);
        Ok(pool)
    })
}

/// Releases the address pool `name`: its free addresses are freed (they cool down); addresses
/// pods hold stay with the pods until their DEL (which then frees them like any address).
/// `Ok(None)` when there is no such pool.
pub fn release_pool(store: &dyn Store, network: &str, name: &str) -> Result<Option<AddressPool>> {
    let now = crate::now();
    transact(store, |tx| {
        let key = pool_key(network, name);
        let Some(p) = tx.get_json::<AddressPool>(&key)? else {
            return Ok(None);
        };
        let owner = crate::fixed::pool_owner(name);
        let changes: Vec<OwnerChange<'_>> = p
            .addresses
            .iter()
            .map(|a| OwnerChange {
                addr: *a,
                expected: &owner,
                owner: None,
            })
            .collect();
        set_owners(tx, network, &changes, now)?;
        for h in p.holders.values() {
            let hkey = handle_key(network, h);
            if let Some(mut alloc) = tx.get_json::<Allocation>(&hkey)? {
                alloc.fixed = None;
                tx.put_json(&hkey, &alloc);
            }
        }
        tx.delete(&key);
        Ok(Some(p))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AllocateRequest, Ipam, PoolSpec};
    use weft_store::embedded::EmbeddedStore;

    fn pool(s: &str) -> PoolSpec {
        PoolSpec {
            subnet: s.parse().unwrap(),
            range_start: None,
            range_end: None,
            exclude: vec![],
            gateway: None,
        }
    }

    #[test]
    fn pool_size_counts_range_gateway_and_exclusions() {
        let mut p = pool("198.18.0.0/24");
        assert_eq!(pool_size(&p), 254);
        p.gateway = Some("198.18.0.1".parse().unwrap());
        assert_eq!(pool_size(&p), 253);
        p.exclude = vec!["198.18.0.0/28".parse().unwrap()];
        // .1-.15 excluded (the gateway among them, counted once).
        assert_eq!(pool_size(&p), 254 - 15);
        p.range_start = Some("198.18.0.100".parse().unwrap());
        p.range_end = Some("198.18.0.109".parse().unwrap());
        assert_eq!(pool_size(&p), 10);
    }

    #[test]
    fn edits_deletes_pools_and_lookups() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let mut spec = NetworkSpec::new("c", vec![pool("198.18.0.0/24")]);
        spec.cooldown_seconds = 0;
        let (_, created) = put_network(&store, &spec, true).unwrap();
        assert!(created);
        assert!(matches!(
            put_network(&store, &spec, true),
            Err(EditError::Exists(_))
        ));
        let other = NetworkSpec::new("d", vec![pool("198.18.0.128/25")]);
        assert!(matches!(
            put_network(&store, &other, true),
            Err(EditError::Ipam(IpamError::Overlap { .. }))
        ));
        let ipam = Ipam::new(&store);
        let got = ipam
            .allocate(
                &spec,
                &AllocateRequest {
                    container_id: "c1".into(),
                    ifname: "eth0".into(),
                    node: "n1".into(),
                    ..Default::default()
                },
            )
            .unwrap();
        let addr = got.addresses[0].address.addr();
        // A claimed pool cannot go; a new one can come; cooldown can change.
        let mut edit = spec.clone();
        edit.pools = vec![pool("198.18.1.0/24")];
        assert!(matches!(
            put_network(&store, &edit, false),
            Err(EditError::InUse { .. })
        ));
        edit.pools = vec![pool("198.18.0.0/24"), pool("198.18.1.0/24")];
        edit.cooldown_seconds = 9;
        put_network(&store, &edit, false).unwrap();
        let u = usage(&store, &edit, true).unwrap();
        assert_eq!(u.families[0].size, 508);
        assert_eq!(u.families[0].used, 1);
        assert_eq!(u.nodes[0].node, "n1");
        // Lookups.
        let l = lookup(&store, addr, None).unwrap();
        assert!(
            matches!(&l[0].holder, Some(Holder::Allocated { handle, .. }) if handle == "c1:eth0")
        );
        let p = create_pool(&store, "c", "web", &["198.18.0.200".parse().unwrap()]).unwrap();
        assert_eq!(p.addresses.len(), 1);
        let l = lookup(&store, "198.18.0.200".parse().unwrap(), Some("c")).unwrap();
        assert!(matches!(&l[0].holder, Some(Holder::Pooled { pool }) if pool == "web"));
        assert!(create_pool(&store, "c", "web2", &["198.18.0.200".parse().unwrap()]).is_err());
        // Deleting: refused while live, forced removes everything.
        assert!(matches!(
            delete_network(&store, "c", false),
            Err(EditError::Live {
                allocations: 1,
                reservations: 1,
                ..
            })
        ));
        assert!(release_pool(&store, "c", "web").unwrap().is_some());
        let l = lookup(&store, "198.18.0.200".parse().unwrap(), Some("c")).unwrap();
        assert!(l[0].holder.is_none());
        let d = delete_network(&store, "c", true).unwrap();
        assert_eq!(d.allocations, 1);
        assert!(store.list("/weft/v1/").unwrap().is_empty());
        assert!(matches!(
            delete_network(&store, "c", false),
            Err(EditError::NotFound(_))
        ));
    }

    #[test]
    fn an_address_deep_in_a_large_ipv6_pool_is_found_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let spec = NetworkSpec::new("v6", vec![pool("fd00::/16")]);
        put_network(&store, &spec, true).unwrap();
        let addr: IpAddr = "fd00:ffff:ffff:ffff::1".parse().unwrap();
        let t = std::time::Instant::now();
        let id = crate::Identity {
            key: "far/away/0".into(),
            policy: crate::ReleasePolicy::Never,
            workload: None,
            ordinal: None,
        };
        Ipam::new(&store).reserve(&spec, &id, &[addr]).unwrap();
        let l = lookup(&store, addr, None).unwrap();
        assert!(matches!(&l[0].holder, Some(Holder::Reserved { key, .. }) if key == "far/away/0"));
        assert_eq!(
            l[0].block,
            "fd00:ffff:ffff:ffff::/122".parse::<IpNet>().unwrap()
        );
        assert!(t.elapsed() < std::time::Duration::from_secs(5));
    }
}
