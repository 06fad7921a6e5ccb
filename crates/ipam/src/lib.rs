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
mod model;

pub use addr::{block_cidrs, ip_add, ip_offset};
pub use model::{Allocation, BlockRecord, NetworkRecord, NetworkSpec, PoolSpec};

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use ipnet::IpNet;
use weft_store::{Store, StoreError, Tx, transact};

pub const KEY_ROOT: &str = "/weft/v1";

pub fn network_key(network: &str) -> String {
    format!("{KEY_ROOT}/networks/{network}")
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
            let mut addresses = Vec::new();
            for family in spec.families() {
                let wanted: Vec<IpAddr> = req
                    .requested
                    .iter()
                    .copied()
                    .filter(|a| family_of(a) == family)
                    .collect();
                let address = match wanted.as_slice() {
                    [] => pick_free(tx, spec, &mut blocks, family, &req.node, &handle, now)?,
                    [addr] => take_requested(tx, spec, &mut blocks, *addr, &req.node, &handle)?,
                    many => {
                        return Err(IpamError::TooManyRequested {
                            network: spec.name.clone(),
                            family,
                            addrs: join(many),
                        });
                    }
                };
                addresses.push(address);
            }
            for (key, block) in &blocks {
                if block.dirty {
                    tx.put_json(key, &block.record);
                }
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
                created_at: now,
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
    /// Every network in the store.
    pub fn networks(&self) -> Result<Vec<NetworkRecord>> {
        transact(self.store, |tx| {
            Ok(tx
                .list_json::<NetworkRecord>(&format!("{KEY_ROOT}/networks/"))?
                .into_iter()
                .map(|(_, n)| n)
                .collect())
        })
    }

    pub fn allocations(&self, network: &str) -> Result<Vec<Allocation>> {
        transact(self.store, |tx| {
            Ok(tx
                .list_json::<Allocation>(&handles_prefix(network))?
                .into_iter()
                .map(|(_, a)| a)
                .collect())
        })
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
            for (_, other) in tx.list_json::<NetworkRecord>(&format!("{KEY_ROOT}/networks/"))? {
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
    dirty: bool,
}

fn load_blocks(tx: &mut Tx<'_>, network: &str) -> Result<Vec<(String, LoadedBlock)>> {
    Ok(tx
        .list_json::<BlockRecord>(&blocks_prefix(network))?
        .into_iter()
        .map(|(k, record)| {
            (
                k,
                LoadedBlock {
                    record,
                    dirty: false,
                },
            )
        })
        .collect())
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
                dirty: true,
            },
        ));
        blocks.len() - 1
    }))
}

fn take_requested(
    tx: &mut Tx<'_>,
    spec: &NetworkSpec,
    blocks: &mut Vec<(String, LoadedBlock)>,
    addr: IpAddr,
    node: &str,
    handle: &str,
) -> Result<Assigned> {
    let family = family_of(&addr);
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
    let cidr = block_cidrs(pool, spec.block_prefix(family))
        .find(|c| c.contains(&addr))
        .ok_or_else(outside)?;
    let off = ip_offset(cidr.network(), addr) as u32;
    if !pool.usable_in(&cidr).contains(&off) {
        return Err(outside());
    }
    let key = block_key(&spec.name, &cidr);
    let idx = match blocks.iter().position(|(k, _)| *k == key) {
        Some(i) => i,
        None => {
            tx.get(&key)?;
            blocks.push((
                key.clone(),
                LoadedBlock {
                    record: BlockRecord::new(cidr, Some(node)),
                    dirty: true,
                },
            ));
            blocks.len() - 1
        }
    };
    let block = &mut blocks[idx].1;
    if let Some(holder) = block.record.allocations.get(&off) {
        return Err(IpamError::InUse {
            network: spec.name.clone(),
            addr,
            holder: holder.clone(),
        });
    }
    block.record.assign(off, handle);
    block.dirty = true;
    Ok(Assigned {
        address: IpNet::new(addr, pool.subnet.prefix_len())
            .map_err(|e| IpamError::Store(StoreError::Unavailable(e.to_string())))?,
        gateway: pool.gateway,
    })
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
    let blocks = tx.list_json::<BlockRecord>(&blocks_prefix(network))?;
    for addr in &alloc.addresses {
        if let Some((key, mut block)) = blocks
            .iter()
            .find(|(_, b)| b.cidr.contains(&addr.addr()))
            .cloned()
        {
            let off = ip_offset(block.cidr.network(), addr.addr()) as u32;
            // Free only what this handle holds: never another owner's entry.
            if block.allocations.get(&off).map(String::as_str) == Some(handle) {
                block.release(off, now);
                tx.put_json(&key, &block);
            }
        }
    }
    tx.delete(&hkey);
    Ok(Some(alloc))
}
