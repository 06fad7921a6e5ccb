//! Weft IPAM: who holds which address, kept in the store.
//!
//! # Invariants
//! 1. No duplicate: an address belongs to at most one handle. An address's owner is written in
//!    exactly one place, its block record, and every allocation is one atomic transaction that
//!    re-reads that block; two allocations that race cannot both commit.
//! 2. No leak that cannot be found: every allocation has a handle record (network, container,
//!    interface, node, pod, time) written in the same transaction as the block entry, so an
//!    address in a block always has an owner to ask about, and GC finds what DEL never freed.
//! 3. No surprise reuse: a released address cools down (`cooldown_seconds`) before it is handed
//!    to a new owner, so stale conntrack entries, ARP caches and peers' rules never reach a
//!    newcomer. An owner asking for its own address by name may take it back at once.
//!
//! # Mechanism
//! A network has pools; pools are cut into blocks (default /26 and /122). A node claims a block
//! by creating its record (a compare on "absent"), and allocates inside its own blocks, so nodes
//! never contend. When the node's blocks are full it claims another; when the pool has no
//! unclaimed block left, it borrows a free address from another node's block.
//!
//! # Failure cases
//! - A plugin killed before commit: nothing was written. Killed after commit: the handle exists
//!   and DEL (or GC with the runtime's list of valid attachments) frees it.
//! - Two processes on one host: the embedded store serialises their transactions.
//! - A config that disagrees with the stored network: an error, never an overwrite.
#![forbid(unsafe_code)]

mod addr;
pub mod fixed;
mod model;
pub mod query;
pub mod sweep;

pub use addr::{block_cidrs, ip_add, ip_offset};
pub use fixed::{AddressPool, Fixed, FixedRef, Identity, PoolRequest, ReleasePolicy, Reservation};
pub use model::{Allocation, BlockRecord, NetnsRef, NetworkRecord, NetworkSpec, PoolSpec};
pub use sweep::LeakSweeper;

use fixed::{
    is_pseudo_owner, pool_key, pool_owner, reservation_key, reservations_prefix, reserved_owner,
    validate_name,
};

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use ipnet::IpNet;
use weft_store::{Store, StoreError, Tx, transact};

pub const KEY_ROOT: &str = "/weft/v1";

pub fn network_key(network: &str) -> String {
    format!("{KEY_ROOT}/networks/{network}")
}
/// Node records (written by weftd with a lease): `/weft/v1/nodes/<name>`.
pub fn nodes_prefix() -> String {
    format!("{KEY_ROOT}/nodes/")
}
pub fn node_key(name: &str) -> String {
    format!("{KEY_ROOT}/nodes/{name}")
}
pub fn networks_prefix() -> String {
    format!("{KEY_ROOT}/networks/")
}
pub fn blocks_prefix(network: &str) -> String {
    format!("{KEY_ROOT}/blocks/{network}/")
}
pub fn block_key(network: &str, cidr: &IpNet) -> String {
    format!(
        "{KEY_ROOT}/blocks/{network}/{}-{}",
        cidr.network(),
        cidr.prefix_len()
    )
}
pub fn handles_prefix(network: &str) -> String {
    format!("{KEY_ROOT}/handles/{network}/")
}
/// The handle of an ephemeral attachment: container ID and interface.
pub fn handle_id(container_id: &str, ifname: &str) -> String {
    format!("{container_id}:{ifname}")
}
pub fn handle_key(network: &str, handle: &str) -> String {
    format!("{KEY_ROOT}/handles/{network}/{handle}")
}

#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    #[error("network {network:?}: {field} {value}: {why}")]
    InvalidSpec {
        network: String,
        field: String,
        value: String,
        why: String,
    },
    #[error(
        "network {network:?} is stored with {stored} but this configuration says {given}; use the stored values, or remove the network's allocations and its record first"
    )]
    Conflict {
        network: String,
        stored: String,
        given: String,
    },
    #[error(
        "network {network:?}: pool {pool} overlaps pool {other_pool} of network {other_network:?}; give each network its own address space"
    )]
    Overlap {
        network: String,
        pool: IpNet,
        other_network: String,
        other_pool: IpNet,
    },
    #[error(
        "network {network:?}: requested address {addr} is outside every pool range ({pools}); ask for an address inside a pool"
    )]
    OutsideRange {
        network: String,
        addr: IpAddr,
        pools: String,
    },
    #[error(
        "network {network:?}: requested address {addr} is already in use by {holder}; ask for another address or release it first"
    )]
    InUse {
        network: String,
        addr: IpAddr,
        holder: String,
    },
    #[error("network {network:?}: more than one address requested for IPv{family}: {addrs}")]
    TooManyRequested {
        network: String,
        family: u8,
        addrs: String,
    },
    #[error(
        "network {network:?}: no free IPv{family} address left in {pools}; add a pool or release addresses"
    )]
    Exhausted {
        network: String,
        family: u8,
        pools: String,
    },
    #[error(
        "network {network:?}: every free IPv{family} address is cooling down after release; try again in {retry_after} s"
    )]
    Cooling {
        network: String,
        family: u8,
        retry_after: u64,
    },
    #[error(
        "network {network:?}: address {addr} is already reserved for {by}; release that reservation first (weftctl release) or reserve another address"
    )]
    AlreadyReserved {
        network: String,
        addr: IpAddr,
        by: String,
    },
    #[error(
        "network {network:?}: address pool {pool:?} cannot have {addr}: it is held by {holder}; give each pool and reservation its own addresses"
    )]
    PoolAddressTaken {
        network: String,
        pool: String,
        addr: IpAddr,
        holder: String,
    },
    #[error(
        "network {network:?}: address pool {pool:?} has no free IPv{family} address (all {size} are held); scale down, or add addresses to the pool"
    )]
    PoolExhausted {
        network: String,
        pool: String,
        family: u8,
        size: usize,
    },
    #[error(
        "network {network:?}: {what} {name:?} is stored with {stored} but this request says {given}; use the stored values or release it first"
    )]
    FixedConflict {
        network: String,
        what: &'static str,
        name: String,
        stored: String,
        given: String,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub type Result<T, E = IpamError> = std::result::Result<T, E>;

/// What an ADD asks of the IPAM.
#[derive(Debug, Clone, Default)]
pub struct AllocateRequest {
    pub container_id: String,
    pub ifname: String,
    pub node: String,
    /// Addresses asked for by name (the `ips` capability, CNI_ARGS IP=): at most one per family.
    pub requested: Vec<IpAddr>,
    /// Who the pod is ("namespace/name"), for records and lookups.
    pub pod: Option<String>,
    /// A reservation by workload identity, or an address pool, to take addresses from.
    pub fixed: Option<Fixed>,
    /// Recorded in the allocation, for liveness checks: see [`Allocation::host_interface`].
    pub host_interface: Option<String>,
    /// Recorded in the allocation, for liveness checks: see [`Allocation::netns`].
    pub netns: Option<NetnsRef>,
}

/// One address handed out, with its pool's prefix length and gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assigned {
    pub address: IpNet,
    pub gateway: Option<IpAddr>,
}

#[derive(Debug, Clone)]
pub struct Allocated {
    pub addresses: Vec<Assigned>,
    /// False when the handle already held these addresses (a repeated ADD).
    pub created: bool,
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub struct Ipam<'s> {
    store: &'s dyn Store,
    clock: fn() -> u64,
}

impl<'s> Ipam<'s> {
    pub fn new(store: &'s dyn Store) -> Self {
        Ipam { store, clock: now }
    }

    /// A clock for tests of cooldown.
    pub fn with_clock(mut self, clock: fn() -> u64) -> Self {
        self.clock = clock;
        self
    }

    pub fn store(&self) -> &'s dyn Store {
        self.store
    }

    /// Registers `spec` if the network is new; checks it against the stored record otherwise.
    pub fn ensure_network(&self, spec: &NetworkSpec) -> Result<()> {
        transact(self.store, |tx| ensure_network(tx, spec, (self.clock)()))
    }

    /// Gives the handle (container, interface) one address per family of the network's pools.
    /// Idempotent: the same handle gets back what it holds.
    pub fn allocate(&self, spec: &NetworkSpec, req: &AllocateRequest) -> Result<Allocated> {
        spec.validate()?;
        let now = (self.clock)();
        transact(self.store, |tx| {
            ensure_network(tx, spec, now)?;
            let handle = handle_id(&req.container_id, &req.ifname);
            let hkey = handle_key(&spec.name, &handle);
            if let Some(existing) = tx.get_json::<Allocation>(&hkey)? {
                return Ok(Allocated {
                    addresses: assigned_of(spec, &existing.addresses),
                    created: false,
                });
            }
            let mut blocks = load_blocks(tx, &spec.name)?;
            let mut reservation: Option<Reservation> = None;
            let mut pool: Option<AddressPool> = None;
            let mut fixed_ref = None;
            match &req.fixed {
                Some(Fixed::Identity(id)) => {
                    validate_name(&spec.name, "identity", &id.key)?;
                    reservation = tx.get_json(&reservation_key(&spec.name, &id.key))?;
                    if let Some(r) = &reservation {
                        // The identity's previous pod never ran DEL (its node died): take over.
                        if let Some(old) = r.holder.clone().filter(|h| *h != handle) {
                            hand_over(tx, spec, &mut blocks, &old, r, now)?;
                        }
                    }
                    let policy = reservation
                        .as_ref()
                        .map_or(id.policy, |r| r.identity.policy);
                    fixed_ref = Some(FixedRef::Reservation {
                        key: id.key.clone(),
                        policy,
                    });
                }
                Some(Fixed::Pool(p)) => {
                    validate_name(&spec.name, "pool", &p.name)?;
                    pool = Some(ensure_pool(tx, spec, &mut blocks, p, &req.node, now)?);
                    fixed_ref = Some(FixedRef::Pool {
                        name: p.name.clone(),
                    });
                }
                None => {}
            }
            let mut addresses = Vec::new();
            for family in spec.families() {
                let wanted: Vec<IpAddr> = req
                    .requested
                    .iter()
                    .copied()
                    .filter(|a| family_of(a) == family)
                    .collect();
                let reserved = reservation.as_ref().and_then(|r| {
                    r.addresses
                        .iter()
                        .find(|a| family_of(&a.addr()) == family)
                        .map(|a| (a.addr(), r))
                });
                let from_pool = pool
                    .as_ref()
                    .is_some_and(|p| p.addresses.iter().any(|a| family_of(a) == family));
                let address = if let Some((addr, r)) = reserved {
                    let owner = reserved_owner(&r.identity.key);
                    take_owned(
                        tx,
                        spec,
                        &mut blocks,
                        addr,
                        &req.node,
                        &handle,
                        Some(&owner),
                    )?
                } else if from_pool {
                    let p = pool
                        .as_mut()
                        .ok_or_else(|| StoreError::Unavailable("pool vanished".into()))?;
                    take_from_pool(tx, spec, &mut blocks, p, family, &req.node, &handle)?
                } else {
                    match wanted.as_slice() {
                        [] => pick_free(tx, spec, &mut blocks, family, &req.node, &handle, now)?,
                        [addr] => {
                            take_owned(tx, spec, &mut blocks, *addr, &req.node, &handle, None)?
                        }
                        many => {
                            return Err(IpamError::TooManyRequested {
                                network: spec.name.clone(),
                                family,
                                addrs: join(many),
                            });
                        }
                    }
                };
                addresses.push(address);
            }
            write_blocks(tx, &blocks);
            if let Some(Fixed::Identity(id)) = &req.fixed {
                let mut r = reservation.unwrap_or_else(|| Reservation {
                    schema: model::SCHEMA,
                    network: spec.name.clone(),
                    identity: id.clone(),
                    addresses: Vec::new(),
                    holder: None,
                    node: None,
                    created_at: now,
                    updated_at: now,
                });
                for a in &addresses {
                    if !r
                        .addresses
                        .iter()
                        .any(|x| family_of(&x.addr()) == family_of(&a.address.addr()))
                    {
                        r.addresses.push(a.address);
                    }
                }
                r.holder = Some(handle.clone());
                r.node = Some(req.node.clone());
                r.updated_at = now;
                tx.put_json(&reservation_key(&spec.name, &id.key), &r);
            }
            if let Some(p) = &pool {
                tx.put_json(&pool_key(&spec.name, &p.name), p);
            }
            let record = Allocation {
                schema: model::SCHEMA,
                network: spec.name.clone(),
                handle: handle.clone(),
                addresses: addresses.iter().map(|a| a.address).collect(),
                container_id: req.container_id.clone(),
                ifname: req.ifname.clone(),
                node: req.node.clone(),
                pod: req.pod.clone(),
                fixed: fixed_ref.clone(),
                created_at: now,
                host_interface: req.host_interface.clone(),
                netns: req.netns.clone(),
            };
            tx.put_json(&hkey, &record);
            Ok(Allocated {
                addresses,
                created: true,
            })
        })
    }

    pub fn get(
        &self,
        network: &str,
        container_id: &str,
        ifname: &str,
    ) -> Result<Option<Allocation>> {
        let key = handle_key(network, &handle_id(container_id, ifname));
        match self.store.get(&key)? {
            None => Ok(None),
            Some(kv) => serde_json::from_slice(&kv.value).map(Some).map_err(|e| {
                IpamError::Store(StoreError::Decode {
                    key,
                    msg: e.to_string(),
                })
            }),
        }
    }

    /// Frees what the handle holds; `Ok(None)` when it holds nothing (DEL is idempotent).
    pub fn release(
        &self,
        network: &str,
        container_id: &str,
        ifname: &str,
    ) -> Result<Option<Allocation>> {
        let now = (self.clock)();
        let handle = handle_id(container_id, ifname);
        transact(self.store, |tx| release_handle(tx, network, &handle, now))
    }

    /// Frees what `handle` holds, through the same path as DEL, when `verify` (asked inside the
    /// releasing transaction, with the record as read there) still says so. `Ok(None)` when
    /// the handle is gone or `verify` said no. Used by repairs that must re-check just before
    /// they free (weftctl check --repair).
    pub fn release_handle_if(
        &self,
        network: &str,
        handle: &str,
        verify: &mut dyn FnMut(&mut Tx<'_>, &Allocation) -> Result<bool>,
    ) -> Result<Option<Allocation>> {
        let now = (self.clock)();
        transact(self.store, |tx| {
            let Some(current) = tx.get_json::<Allocation>(&handle_key(network, handle))? else {
                return Ok(None);
            };
            if !verify(tx, &current)? {
                return Ok(None);
            }
            release_handle(tx, network, handle, now)
        })
    }

    /// CNI GC: frees every allocation of `node` on `network` whose (container, interface) is
    /// not in `valid`. Returns what it freed.
    pub fn gc(
        &self,
        network: &str,
        node: &str,
        valid: &[(String, String)],
    ) -> Result<Vec<Allocation>> {
        let keep: BTreeSet<String> = valid.iter().map(|(c, i)| handle_id(c, i)).collect();
        let now = (self.clock)();
        transact(self.store, |tx| {
            let mut freed = Vec::new();
            for (_, alloc) in tx.list_json::<Allocation>(&handles_prefix(network))? {
                if alloc.node == node
                    && !keep.contains(&alloc.handle)
                    && let Some(a) = release_handle(tx, network, &alloc.handle, now)?
                {
                    freed.push(a);
                }
            }
            Ok(freed)
        })
    }

    /// Every allocation on `network`.
    /// The values of every key under `prefix`, decoded.
    fn list_values<T: serde::de::DeserializeOwned>(&self, prefix: &str) -> Result<Vec<T>> {
        transact(self.store, |tx| {
            Ok(tx
                .list_json::<T>(prefix)?
                .into_iter()
                .map(|(_, v)| v)
                .collect())
        })
    }

    /// Every network in the store.
    pub fn networks(&self) -> Result<Vec<NetworkRecord>> {
        self.list_values(&networks_prefix())
    }

    pub fn allocations(&self, network: &str) -> Result<Vec<Allocation>> {
        self.list_values(&handles_prefix(network))
    }

    /// Roughly how many addresses per family `node` could still get right now (for STATUS):
    /// exact inside claimed blocks, a block's size for each unclaimed block.
    pub fn free_per_family(&self, spec: &NetworkSpec, node: &str) -> Result<Vec<(u8, u128)>> {
        let now = (self.clock)();
        let blocks = transact(self.store, |tx| load_blocks(tx, &spec.name))?;
        let mut out = Vec::new();
        for family in spec.families() {
            let mut free = 0u128;
            for pool in spec.pools.iter().filter(|p| p.family() == family) {
                let bp = spec.block_prefix(family).max(pool.subnet.prefix_len());
                let total_blocks = 1u128 << (bp - pool.subnet.prefix_len()).min(100);
                let mut claimed = 0u128;
                for (_, b) in blocks
                    .iter()
                    .filter(|(_, b)| pool.subnet.contains(&b.record.cidr.network()))
                {
                    claimed += 1;
                    if b.record.node.as_deref() == Some(node) || !spec.strict_affinity {
                        free += pool
                            .usable_in(&b.record.cidr)
                            .iter()
                            .filter(|o| b.record.is_free(**o, now, spec.cooldown_seconds))
                            .count() as u128;
                    }
                }
                let per_block = 1u128 << (pool.subnet.max_prefix_len() - bp).min(100);
                free = free.saturating_add(
                    total_blocks
                        .saturating_sub(claimed)
                        .saturating_mul(per_block),
                );
            }
            out.push((family, free));
        }
        Ok(out)
    }
}

fn join(addrs: &[IpAddr]) -> String {
    addrs
        .iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn family_of(a: &IpAddr) -> u8 {
    if a.is_ipv4() { 4 } else { 6 }
}

fn assigned_of(spec: &NetworkSpec, addrs: &[IpNet]) -> Vec<Assigned> {
    addrs
        .iter()
        .map(|a| Assigned {
            address: *a,
            gateway: spec
                .pools
                .iter()
                .find(|p| p.subnet.contains(&a.addr()))
                .and_then(|p| p.gateway),
        })
        .collect()
}

fn ensure_network(tx: &mut Tx<'_>, spec: &NetworkSpec, now: u64) -> Result<()> {
    let key = network_key(&spec.name);
    match tx.get_json::<NetworkRecord>(&key)? {
        Some(stored) => stored.spec.check_same(spec),
        None => {
            for (_, other) in tx.list_json::<NetworkRecord>(&networks_prefix())? {
                // On an optimistic store another node may have registered this same network
                // since the get above: not an overlap; the commit's guard on the absent key
                // fails and the retry compares the stored record instead.
                if other.spec.name == spec.name {
                    continue;
                }
                for pool in &spec.pools {
                    for op in &other.spec.pools {
                        if pool.subnet.contains(&op.subnet.network())
                            || op.subnet.contains(&pool.subnet.network())
                        {
                            return Err(IpamError::Overlap {
                                network: spec.name.clone(),
                                pool: pool.subnet,
                                other_network: other.spec.name.clone(),
                                other_pool: op.subnet,
                            });
                        }
                    }
                }
            }
            tx.put_json(
                &key,
                &NetworkRecord {
                    schema: model::SCHEMA,
                    spec: spec.clone(),
                    created_at: now,
                },
            );
            Ok(())
        }
    }
}

struct LoadedBlock {
    record: BlockRecord,
    /// The mod revision it was read at (0: new): guarded when the block is written.
    rev: i64,
    dirty: bool,
}

/// The network's blocks as they are now, unguarded: a transaction conflicts only on the blocks
/// it writes ([`write_blocks`]), never on another node's.
fn load_blocks(tx: &mut Tx<'_>, network: &str) -> Result<Vec<(String, LoadedBlock)>> {
    tx.list_unguarded(&blocks_prefix(network))?
        .into_iter()
        .map(|(key, value, rev)| {
            let record =
                serde_json::from_slice::<BlockRecord>(&value).map_err(|e| StoreError::Decode {
                    key: key.clone(),
                    msg: e.to_string(),
                })?;
            Ok((
                key,
                LoadedBlock {
                    record,
                    rev,
                    dirty: false,
                },
            ))
        })
        .collect()
}

/// Writes the blocks this transaction changed, each guarded at the revision it was read at.
fn write_blocks(tx: &mut Tx<'_>, blocks: &[(String, LoadedBlock)]) {
    for (key, block) in blocks.iter().filter(|(_, b)| b.dirty) {
        tx.guard(key, block.rev);
        tx.put_json(key, &block.record);
    }
}

fn pick_free(
    tx: &mut Tx<'_>,
    spec: &NetworkSpec,
    blocks: &mut Vec<(String, LoadedBlock)>,
    family: u8,
    node: &str,
    handle: &str,
    now: u64,
) -> Result<Assigned> {
    let mut soonest: Option<u64> = None;
    let pools: Vec<&PoolSpec> = spec.pools.iter().filter(|p| p.family() == family).collect();
    // 1. The node's own blocks, 2. a new block, 3. (unless strict) another node's block.
    for pass in 0..3 {
        if pass == 2 && spec.strict_affinity {
            break;
        }
        for pool in &pools {
            let candidates: Vec<usize> = if pass == 1 {
                match first_unclaimed(tx, spec, blocks, pool, node)? {
                    Some(i) => vec![i],
                    None => continue,
                }
            } else {
                (0..blocks.len())
                    .filter(|&i| {
                        let b = &blocks[i].1.record;
                        let mine = b.node.as_deref() == Some(node);
                        pool.subnet.contains(&b.cidr.network()) && (mine == (pass == 0))
                    })
                    .collect()
            };
            for idx in candidates {
                let block = &mut blocks[idx].1;
                let cidr = block.record.cidr;
                for off in pool.usable_in(&cidr) {
                    if block.record.is_free(off, now, spec.cooldown_seconds) {
                        block.record.assign(off, handle);
                        block.dirty = true;
                        let address = IpNet::new(
                            ip_add(cidr.network(), off as u128),
                            pool.subnet.prefix_len(),
                        )
                        .map_err(|e| IpamError::Store(StoreError::Unavailable(e.to_string())))?;
                        return Ok(Assigned {
                            address,
                            gateway: pool.gateway,
                        });
                    }
                    if let Some(t) = block.record.cooling_until(off, spec.cooldown_seconds)
                        && t > now
                        && !block.record.allocations.contains_key(&off)
                    {
                        soonest = Some(soonest.map_or(t, |s| s.min(t)));
                    }
                }
            }
        }
    }
    let pools_s = pools
        .iter()
        .map(|p| p.subnet.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    match soonest {
        Some(t) => Err(IpamError::Cooling {
            network: spec.name.clone(),
            family,
            retry_after: t - now,
        }),
        None => Err(IpamError::Exhausted {
            network: spec.name.clone(),
            family,
            pools: pools_s,
        }),
    }
}

/// Claims the pool's first block that nobody holds and that has a usable address.
fn first_unclaimed(
    tx: &mut Tx<'_>,
    spec: &NetworkSpec,
    blocks: &mut Vec<(String, LoadedBlock)>,
    pool: &PoolSpec,
    node: &str,
) -> Result<Option<usize>> {
    let claimed: BTreeSet<&str> = blocks.iter().map(|(k, _)| k.as_str()).collect();
    let mut found = None;
    for cidr in block_cidrs(pool, spec.block_prefix(pool.family())) {
        let key = block_key(&spec.name, &cidr);
        if claimed.contains(key.as_str()) || pool.usable_in(&cidr).is_empty() {
            continue;
        }
        // A list does not prove absence on every backend: read the key itself.
        if tx.get(&key)?.is_none() {
            found = Some((key, cidr));
            break;
        }
    }
    Ok(found.map(|(key, cidr)| {
        blocks.push((
            key,
            LoadedBlock {
                record: BlockRecord::new(cidr, Some(node)),
                rev: 0,
                dirty: true,
            },
        ));
        blocks.len() - 1
    }))
}

/// The loaded block holding `addr` (claimed for `node` if nobody has it yet), with its offset.
fn block_of<'p>(
    tx: &mut Tx<'_>,
    spec: &'p NetworkSpec,
    blocks: &mut Vec<(String, LoadedBlock)>,
    addr: IpAddr,
    node: &str,
) -> Result<(usize, u32, &'p PoolSpec)> {
    let outside = || IpamError::OutsideRange {
        network: spec.name.clone(),
        addr,
        pools: spec
            .pools
            .iter()
            .map(|p| p.describe_range())
            .collect::<Vec<_>>()
            .join(", "),
    };
    let pool = spec
        .pools
        .iter()
        .find(|p| p.subnet.contains(&addr))
        .ok_or_else(outside)?;
    // The block is the address truncated to the block size (the pool itself when smaller):
    // computed, not searched, so an address deep in a large IPv6 pool costs nothing.
    let bp = spec
        .block_prefix(family_of(&addr))
        .max(pool.subnet.prefix_len());
    let cidr = IpNet::new(addr, bp).map_err(|_| outside())?.trunc();
    let off = ip_offset(cidr.network(), addr) as u32;
    if !pool.usable_in(&cidr).contains(&off) {
        return Err(outside());
    }
    let key = block_key(&spec.name, &cidr);
    let idx = match blocks.iter().position(|(k, _)| *k == key) {
        Some(i) => i,
        None => {
            // A list does not prove absence on every backend: read the key itself.
            let record = match tx.get_json::<BlockRecord>(&key)? {
                Some(b) => b,
                None => BlockRecord::new(cidr, Some(node).filter(|n| !n.is_empty())),
            };
            blocks.push((
                key,
                LoadedBlock {
                    record,
                    // Guarded by the get above, at the revision it returned.
                    rev: 0,
                    dirty: true,
                },
            ));
            blocks.len() - 1
        }
    };
    Ok((idx, off, pool))
}

/// Gives `addr` to `handle` if it is free, already this handle's, or kept for it by `owner`
/// (a reservation's or pool's pseudo-handle). Another owner's address is an error naming it.
fn take_owned(
    tx: &mut Tx<'_>,
    spec: &NetworkSpec,
    blocks: &mut Vec<(String, LoadedBlock)>,
    addr: IpAddr,
    node: &str,
    handle: &str,
    owner: Option<&str>,
) -> Result<Assigned> {
    let (idx, off, pool) = block_of(tx, spec, blocks, addr, node)?;
    let block = &mut blocks[idx].1;
    match block.record.allocations.get(&off) {
        None => {}
        Some(h) if h == handle || Some(h.as_str()) == owner => {}
        Some(h) if h.starts_with("reserved:") => {
            return Err(IpamError::AlreadyReserved {
                network: spec.name.clone(),
                addr,
                by: h.trim_start_matches("reserved:").to_string(),
            });
        }
        Some(h) => {
            return Err(IpamError::InUse {
                network: spec.name.clone(),
                addr,
                holder: h.clone(),
            });
        }
    }
    block.record.assign(off, handle);
    block.dirty = true;
    Ok(Assigned {
        address: IpNet::new(addr, pool.subnet.prefix_len())
            .map_err(|e| IpamError::Store(StoreError::Unavailable(e.to_string())))?,
        gateway: pool.gateway,
    })
}

/// Loads the named address pool, creating it from the request's addresses when new.
fn ensure_pool(
    tx: &mut Tx<'_>,
    spec: &NetworkSpec,
    blocks: &mut Vec<(String, LoadedBlock)>,
    req: &PoolRequest,
    node: &str,
    now: u64,
) -> Result<AddressPool> {
    let key = pool_key(&spec.name, &req.name);
    let show = |a: &[IpAddr]| {
        a.iter()
            .map(|x| x.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    if let Some(p) = tx.get_json::<AddressPool>(&key)? {
        let mut want = req.addresses.clone();
        let mut have = p.addresses.clone();
        want.sort();
        have.sort();
        if !want.is_empty() && want != have {
            return Err(IpamError::FixedConflict {
                network: spec.name.clone(),
                what: "address pool",
                name: req.name.clone(),
                stored: show(&have),
                given: show(&want),
            });
        }
        return Ok(p);
    }
    if req.addresses.is_empty() {
        return Err(IpamError::InvalidSpec {
            network: spec.name.clone(),
            field: "pool".into(),
            value: format!("{:?}", req.name),
            why: "no such address pool; give its addresses to create it".into(),
        });
    }
    let owner = pool_owner(&req.name);
    for a in &req.addresses {
        let (idx, off, _) = block_of(tx, spec, blocks, *a, node)?;
        let block = &mut blocks[idx].1;
        match block.record.allocations.get(&off) {
            None => {
                block.record.assign(off, &owner);
                block.dirty = true;
            }
            Some(h) if *h == owner => {}
            Some(h) => {
                return Err(IpamError::PoolAddressTaken {
                    network: spec.name.clone(),
                    pool: req.name.clone(),
                    addr: *a,
                    holder: h.clone(),
                });
            }
        }
    }
    Ok(AddressPool {
        schema: model::SCHEMA,
        network: spec.name.clone(),
        name: req.name.clone(),
        addresses: req.addresses.clone(),
        holders: Default::default(),
        created_at: now,
    })
}

fn take_from_pool(
    tx: &mut Tx<'_>,
    spec: &NetworkSpec,
    blocks: &mut Vec<(String, LoadedBlock)>,
    pool: &mut AddressPool,
    family: u8,
    node: &str,
    handle: &str,
) -> Result<Assigned> {
    let owner = pool_owner(&pool.name);
    let candidates: Vec<IpAddr> = pool
        .addresses
        .iter()
        .copied()
        .filter(|a| family_of(a) == family)
        .collect();
    for a in &candidates {
        let (idx, off, _) = block_of(tx, spec, blocks, *a, node)?;
        if blocks[idx].1.record.allocations.get(&off) == Some(&owner) {
            let got = take_owned(tx, spec, blocks, *a, node, handle, Some(&owner))?;
            pool.holders.insert(*a, handle.to_string());
            return Ok(got);
        }
    }
    Err(IpamError::PoolExhausted {
        network: spec.name.clone(),
        pool: pool.name.clone(),
        family,
        size: candidates.len(),
    })
}

/// One change to a block entry: `addr`, held by `expected`, goes to `owner`, or is freed
/// (cooling) when `owner` is None. An entry held by anyone else is left alone.
struct OwnerChange<'a> {
    addr: IpAddr,
    expected: &'a str,
    owner: Option<&'a str>,
}

/// Applies `changes` with one read of the network's blocks and one write per block touched.
fn set_owners(tx: &mut Tx<'_>, network: &str, changes: &[OwnerChange<'_>], now: u64) -> Result<()> {
    let mut blocks = load_blocks(tx, network)?;
    for c in changes {
        if let Some((_, b)) = blocks
            .iter_mut()
            .find(|(_, b)| b.record.cidr.contains(&c.addr))
        {
            let off = ip_offset(b.record.cidr.network(), c.addr) as u32;
            if b.record.allocations.get(&off).map(String::as_str) == Some(c.expected) {
                match c.owner {
                    Some(o) => b.record.assign(off, o),
                    None => b.record.release(off, now),
                }
                b.dirty = true;
            }
        }
    }
    write_blocks(tx, &blocks);
    Ok(())
}

/// A new pod of the identity takes over from `old`, whose DEL never ran: the reservation's
/// addresses go back to the reservation (to be taken right after), the rest is freed.
fn hand_over(
    tx: &mut Tx<'_>,
    spec: &NetworkSpec,
    blocks: &mut [(String, LoadedBlock)],
    old: &str,
    r: &Reservation,
    now: u64,
) -> Result<()> {
    let hkey = handle_key(&spec.name, old);
    if let Some(alloc) = tx.get_json::<Allocation>(&hkey)? {
        let owner = reserved_owner(&r.identity.key);
        for a in &alloc.addresses {
            let keep = r.addresses.iter().any(|x| x.addr() == a.addr());
            for (_, b) in blocks.iter_mut() {
                if b.record.cidr.contains(&a.addr()) {
                    let off = ip_offset(b.record.cidr.network(), a.addr()) as u32;
                    if b.record.allocations.get(&off).map(String::as_str) == Some(old) {
                        if keep {
                            b.record.assign(off, &owner);
                        } else {
                            b.record.release(off, now);
                        }
                        b.dirty = true;
                    }
                }
            }
        }
        tx.delete(&hkey);
    }
    Ok(())
}

fn release_handle(
    tx: &mut Tx<'_>,
    network: &str,
    handle: &str,
    now: u64,
) -> Result<Option<Allocation>> {
    let hkey = handle_key(network, handle);
    let Some(alloc) = tx.get_json::<Allocation>(&hkey)? else {
        return Ok(None);
    };
    // Addresses a reservation or pool keeps go back to it; the rest is freed and cools down.
    let mut keep: Vec<(IpAddr, String)> = Vec::new();
    match &alloc.fixed {
        Some(FixedRef::Reservation { key, .. }) => {
            let rkey = reservation_key(network, key);
            if let Some(mut r) = tx.get_json::<Reservation>(&rkey)?
                && r.holder.as_deref() == Some(handle)
            {
                if r.identity.policy == ReleasePolicy::Pod {
                    tx.delete(&rkey);
                } else {
                    keep.extend(r.addresses.iter().map(|a| (a.addr(), reserved_owner(key))));
                    r.holder = None;
                    r.updated_at = now;
                    tx.put_json(&rkey, &r);
                }
            }
        }
        Some(FixedRef::Pool { name }) => {
            let pkey = pool_key(network, name);
            if let Some(mut p) = tx.get_json::<AddressPool>(&pkey)? {
                p.holders.retain(|_, h| h != handle);
                keep.extend(p.addresses.iter().map(|a| (*a, pool_owner(name))));
                tx.put_json(&pkey, &p);
            }
        }
        None => {}
    }
    let changes: Vec<OwnerChange<'_>> = alloc
        .addresses
        .iter()
        .map(|addr| OwnerChange {
            addr: addr.addr(),
            expected: handle,
            owner: keep
                .iter()
                .find(|(a, _)| *a == addr.addr())
                .map(|(_, o)| o.as_str()),
        })
        .collect();
    set_owners(tx, network, &changes, now)?;
    tx.delete(&hkey);
    Ok(Some(alloc))
}

/// Drops a reservation: addresses nobody holds are freed; a pod holding them keeps them until
/// its DEL, which then frees them like any address.
fn drop_reservation(tx: &mut Tx<'_>, network: &str, r: &Reservation, now: u64) -> Result<()> {
    match &r.holder {
        Some(h) => {
            let hkey = handle_key(network, h);
            if let Some(mut alloc) = tx.get_json::<Allocation>(&hkey)? {
                alloc.fixed = None;
                tx.put_json(&hkey, &alloc);
            }
        }
        None => {
            let owner = reserved_owner(&r.identity.key);
            let changes: Vec<OwnerChange<'_>> = r
                .addresses
                .iter()
                .map(|a| OwnerChange {
                    addr: a.addr(),
                    expected: &owner,
                    owner: None,
                })
                .collect();
            set_owners(tx, network, &changes, now)?;
        }
    }
    tx.delete(&reservation_key(network, &r.identity.key));
    Ok(())
}

impl Ipam<'_> {
    /// Makes sure `node` holds a block of the IPv`family` pools of `spec` (the node agent calls
    /// this at start, so routes to the node exist before its first pod): when it holds none,
    /// claims the first unclaimed block with a usable address, with affinity to `node`, by
    /// creating its record (a compare on "absent", the same record [`Ipam::allocate`] writes).
    /// The block claimed, or `None` when the node already held one of that family.
    /// [`IpamError::Exhausted`] when it holds none and none is left to claim.
    pub fn claim_block(&self, spec: &NetworkSpec, node: &str, family: u8) -> Result<Option<IpNet>> {
        spec.validate()?;
        transact(self.store, |tx| {
            let mut blocks = load_blocks(tx, &spec.name)?;
            let pools: Vec<&PoolSpec> =
                spec.pools.iter().filter(|p| p.family() == family).collect();
            let held = blocks.iter().any(|(_, b)| {
                b.record.node.as_deref() == Some(node)
                    && pools
                        .iter()
                        .any(|p| p.subnet.contains(&b.record.cidr.network()))
            });
            if held {
                return Ok(None);
            }
            for pool in &pools {
                if let Some(i) = first_unclaimed(tx, spec, &mut blocks, pool, node)? {
                    let cidr = blocks[i].1.record.cidr;
                    write_blocks(tx, &blocks);
                    return Ok(Some(cidr));
                }
            }
            Err(IpamError::Exhausted {
                network: spec.name.clone(),
                family,
                pools: pools
                    .iter()
                    .map(|p| p.subnet.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
        })
    }

    /// Reserves `addresses` for `identity` ahead of its pod (an admin's fixed IP).
    pub fn reserve(
        &self,
        spec: &NetworkSpec,
        identity: &Identity,
        addresses: &[IpAddr],
    ) -> Result<Reservation> {
        spec.validate()?;
        validate_name(&spec.name, "identity", &identity.key)?;
        let now = (self.clock)();
        transact(self.store, |tx| {
            ensure_network(tx, spec, now)?;
            let rkey = reservation_key(&spec.name, &identity.key);
            if let Some(existing) = tx.get_json::<Reservation>(&rkey)? {
                return Err(IpamError::FixedConflict {
                    network: spec.name.clone(),
                    what: "reservation",
                    name: identity.key.clone(),
                    stored: existing
                        .addresses
                        .iter()
                        .map(|a| a.to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                    given: join(addresses),
                });
            }
            let mut blocks = load_blocks(tx, &spec.name)?;
            let owner = reserved_owner(&identity.key);
            let mut nets = Vec::new();
            for family in [4u8, 6] {
                let of: Vec<IpAddr> = addresses
                    .iter()
                    .copied()
                    .filter(|a| family_of(a) == family)
                    .collect();
                if of.len() > 1 {
                    return Err(IpamError::TooManyRequested {
                        network: spec.name.clone(),
                        family,
                        addrs: join(&of),
                    });
                }
            }
            for a in addresses {
                // The node that claims a fresh block for a reservation: none in particular.
                let got = take_owned(tx, spec, &mut blocks, *a, "", &owner, None)?;
                nets.push(got.address);
            }
            write_blocks(tx, &blocks);
            let r = Reservation {
                schema: model::SCHEMA,
                network: spec.name.clone(),
                identity: identity.clone(),
                addresses: nets,
                holder: None,
                node: None,
                created_at: now,
                updated_at: now,
            };
            tx.put_json(&rkey, &r);
            Ok(r)
        })
    }

    pub fn reservations(&self, network: &str) -> Result<Vec<Reservation>> {
        self.list_values(&reservations_prefix(network))
    }

    pub fn pool(&self, network: &str, name: &str) -> Result<Option<AddressPool>> {
        transact(self.store, |tx| {
            Ok(tx.get_json::<AddressPool>(&pool_key(network, name))?)
        })
    }

    /// An admin releases a reservation (any policy). `Ok(None)` when there is none.
    pub fn release_reservation(&self, network: &str, key: &str) -> Result<Option<Reservation>> {
        let now = (self.clock)();
        transact(self.store, |tx| {
            let Some(r) = tx.get_json::<Reservation>(&reservation_key(network, key))? else {
                return Ok(None);
            };
            drop_reservation(tx, network, &r, now)?;
            Ok(Some(r))
        })
    }

    /// The workload scaled to `replicas` (None: deleted): its `workload`-policy reservations
    /// with an ordinal at or above that are released. Returns them.
    pub fn release_workload(
        &self,
        network: &str,
        workload: &str,
        replicas: Option<u32>,
    ) -> Result<Vec<Reservation>> {
        let now = (self.clock)();
        transact(self.store, |tx| {
            let mut out = Vec::new();
            for (_, r) in tx.list_json::<Reservation>(&reservations_prefix(network))? {
                let id = &r.identity;
                let gone = match (replicas, id.ordinal) {
                    (None, _) => true,
                    (Some(n), Some(o)) => o >= n,
                    (Some(_), None) => false,
                };
                if id.policy == ReleasePolicy::Workload
                    && id.workload.as_deref() == Some(workload)
                    && gone
                {
                    drop_reservation(tx, network, &r, now)?;
                    out.push(r);
                }
            }
            Ok(out)
        })
    }
}

/// Whether a block owner is a real attachment (not a reservation's or pool's placeholder).
pub fn is_attachment(owner: &str) -> bool {
    !is_pseudo_owner(owner)
}
