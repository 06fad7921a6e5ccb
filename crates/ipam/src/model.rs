//! Records kept in the store, and the checks on a network's definition.
use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::IpamError;
use crate::addr::{ip_add, to_u128};

pub const SCHEMA: u32 = 1;

fn default_block_v4() -> u8 {
    26
}
fn default_block_v6() -> u8 {
    122
}
fn default_cooldown() -> u64 {
    30
}

/// One pool of a network: a subnet, optionally narrowed to a range, minus exclusions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PoolSpec {
    pub subnet: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range_start: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range_end: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<IpNet>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
}

impl PoolSpec {
    pub fn family(&self) -> u8 {
        if self.subnet.addr().is_ipv4() { 4 } else { 6 }
    }

    /// The first and last address pods may get (network and broadcast addresses excluded).
    pub fn range(&self) -> (IpAddr, IpAddr) {
        let first = self
            .range_start
            .unwrap_or_else(|| ip_add(self.subnet.network(), 1));
        let last = self.range_end.unwrap_or_else(|| match self.subnet {
            IpNet::V4(_) => ip_add(self.subnet.broadcast(), u128::MAX), // broadcast - 1
            IpNet::V6(_) => self.subnet.broadcast(),
        });
        (first, last)
    }

    pub fn describe_range(&self) -> String {
        let (a, b) = self.range();
        format!("{} ({a}-{b})", self.subnet)
    }

    /// Offsets inside `block` that may be handed out.
    pub fn usable_in(&self, block: &IpNet) -> Vec<u32> {
        let (first, last) = self.range();
        let (first, last) = (to_u128(first), to_u128(last));
        let base = to_u128(block.network());
        let size: u128 = 1u128 << (block.max_prefix_len() - block.prefix_len()).min(31);
        (0..size)
            .filter(|off| {
                let n = base + off;
                if n < first || n > last {
                    return false;
                }
                let a = ip_add(block.network(), *off);
                Some(a) != self.gateway && !self.exclude.iter().any(|x| x.contains(&a))
            })
            .map(|off| off as u32)
            .collect()
    }
}

/// A network as the IPAM sees it. The pools and block sizes are its identity: a configuration
/// that disagrees with the stored ones is refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkSpec {
    pub name: String,
    pub pools: Vec<PoolSpec>,
    #[serde(default = "default_block_v4")]
    pub block_prefix_v4: u8,
    #[serde(default = "default_block_v6")]
    pub block_prefix_v6: u8,
    #[serde(default = "default_cooldown")]
    pub cooldown_seconds: u64,
    #[serde(default)]
    pub strict_affinity: bool,
}

impl NetworkSpec {
    pub fn new(name: &str, pools: Vec<PoolSpec>) -> Self {
        NetworkSpec {
            name: name.to_string(),
            pools,
            block_prefix_v4: default_block_v4(),
            block_prefix_v6: default_block_v6(),
            cooldown_seconds: default_cooldown(),
            strict_affinity: false,
        }
    }

    pub fn block_prefix(&self, family: u8) -> u8 {
        if family == 4 {
            self.block_prefix_v4
        } else {
            self.block_prefix_v6
        }
    }

    /// The address families of the pools, in pool order.
    pub fn families(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for p in &self.pools {
            if !out.contains(&p.family()) {
                out.push(p.family());
            }
        }
        out
    }

    pub fn validate(&self) -> Result<(), IpamError> {
        let err = |field: String, value: String, why: &str| IpamError::InvalidSpec {
            network: self.name.clone(),
            field,
            value,
            why: why.to_string(),
        };
        if self.pools.is_empty() {
            return Err(err(
                "pools".into(),
                "[]".into(),
                "a network needs at least one pool, e.g. {\"subnet\": \"198.18.0.0/24\"}",
            ));
        }
        if !(20..=30).contains(&self.block_prefix_v4) {
            return Err(err(
                "blockPrefixV4".into(),
                self.block_prefix_v4.to_string(),
                "must be between 20 and 30",
            ));
        }
        if !(116..=126).contains(&self.block_prefix_v6) {
            return Err(err(
                "blockPrefixV6".into(),
                self.block_prefix_v6.to_string(),
                "must be between 116 and 126",
            ));
        }
        for (i, p) in self.pools.iter().enumerate() {
            let f = |name: &str| format!("pools[{i}].{name}");
            let max = if p.family() == 4 { 30 } else { 126 };
            if p.subnet.prefix_len() > max {
                return Err(err(
                    f("subnet"),
                    p.subnet.to_string(),
                    &format!("is too small for pods: use a prefix of /{max} or shorter"),
                ));
            }
            if p.subnet.network() != p.subnet.addr() {
                return Err(err(
                    f("subnet"),
                    p.subnet.to_string(),
                    &format!("has host bits set: did you mean {}?", p.subnet.trunc()),
                ));
            }
            let inside = |a: &IpAddr| p.subnet.contains(a);
            for (name, a) in [
                ("rangeStart", p.range_start),
                ("rangeEnd", p.range_end),
                ("gateway", p.gateway),
            ] {
                if let Some(a) = a
                    && !inside(&a)
                {
                    return Err(err(
                        f(name),
                        a.to_string(),
                        &format!("is outside the pool's subnet {}", p.subnet),
                    ));
                }
            }
            let (first, last) = p.range();
            if to_u128(first) > to_u128(last) {
                return Err(err(
                    f("rangeStart"),
                    first.to_string(),
                    &format!("comes after rangeEnd {last}"),
                ));
            }
            for x in &p.exclude {
                if !p.subnet.contains(&x.network()) {
                    return Err(err(
                        f("exclude"),
                        x.to_string(),
                        &format!("is outside the pool's subnet {}", p.subnet),
                    ));
                }
            }
            for (j, q) in self.pools.iter().enumerate().skip(i + 1) {
                if p.subnet.contains(&q.subnet.network()) || q.subnet.contains(&p.subnet.network())
                {
                    return Err(err(
                        format!("pools[{j}].subnet"),
                        q.subnet.to_string(),
                        &format!("overlaps pools[{i}].subnet {}", p.subnet),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Ok when `given` describes the same address space as this stored spec.
    pub fn check_same(&self, given: &NetworkSpec) -> Result<(), IpamError> {
        let show = |s: &NetworkSpec| {
            serde_json::json!({"pools": s.pools, "blockPrefixV4": s.block_prefix_v4, "blockPrefixV6": s.block_prefix_v6}).to_string()
        };
        if self.pools != given.pools
            || self.block_prefix_v4 != given.block_prefix_v4
            || self.block_prefix_v6 != given.block_prefix_v6
        {
            return Err(IpamError::Conflict {
                network: self.name.clone(),
                stored: show(self),
                given: show(given),
            });
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkRecord {
    pub schema: u32,
    pub spec: NetworkSpec,
    pub created_at: u64,
}

/// A block of a pool: who owns each address in it. The only place an owner is recorded.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BlockRecord {
    pub schema: u32,
    pub cidr: IpNet,
    /// The node with affinity to this block.
    pub node: Option<String>,
    /// Offset in the block -> handle.
    pub allocations: BTreeMap<u32, String>,
    /// Offset -> when it was released (unix seconds).
    #[serde(default)]
    pub cooling: BTreeMap<u32, u64>,
}

impl BlockRecord {
    pub fn new(cidr: IpNet, node: Option<&str>) -> Self {
        BlockRecord {
            schema: SCHEMA,
            cidr,
            node: node.map(str::to_string),
            allocations: BTreeMap::new(),
            cooling: BTreeMap::new(),
        }
    }

    pub fn is_free(&self, off: u32, now: u64, cooldown: u64) -> bool {
        !self.allocations.contains_key(&off)
            && self.cooling_until(off, cooldown).is_none_or(|t| t <= now)
    }

    pub fn cooling_until(&self, off: u32, cooldown: u64) -> Option<u64> {
        self.cooling.get(&off).map(|t| t.saturating_add(cooldown))
    }

    pub fn assign(&mut self, off: u32, handle: &str) {
        self.cooling.remove(&off);
        self.allocations.insert(off, handle.to_string());
    }

    pub fn release(&mut self, off: u32, now: u64) {
        self.allocations.remove(&off);
        self.cooling.insert(off, now);
    }
}

/// Who holds which addresses: one record per handle, written with the block entries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Allocation {
    pub schema: u32,
    pub network: String,
    pub handle: String,
    pub addresses: Vec<IpNet>,
    pub container_id: String,
    pub ifname: String,
    pub node: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// The reservation or address pool these addresses belong to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fixed: Option<crate::FixedRef>,
    pub created_at: u64,
    /// The host-side interface of a veth-based attachment (`weft` in routed, bridge and
    /// underlay-veth modes; none for macvlan or an IPAM-only ADD). Its link carries the alias
    /// `weft:<network>:<container>:<ifname>`. Recorded at ADD, for `check`'s liveness verdict.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_interface: Option<String>,
    /// The pod's network namespace as ADD saw it (every mode, and `weft-ipam`): the node's
    /// weftd reports an attachment whose namespace is gone. None in records made before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<NetnsRef>,
}

/// A network namespace's identity: the path the runtime gave (`CNI_NETNS`) and the inode and
/// device `stat` of it showed (nsfs). The path alone is not enough: a `/proc/<pid>/ns/net`
/// whose pid was reused, or a name re-created under `/run/netns`, shows another inode.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetnsRef {
    pub path: String,
    pub ino: u64,
    pub dev: u64,
    /// Inode and device of the directory holding `path` (e.g. `/run/netns`), so that a reader
    /// looking at another directory of that name (its own mount of `/run/netns`, say) knows it
    /// cannot judge a missing path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<(u64, u64)>,
}

impl NetnsRef {
    /// One `stat` of `path` (following the `/proc/<pid>/ns/net` link).
    pub fn stat(path: &std::path::Path) -> std::io::Result<NetnsRef> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path)?;
        let dir = path
            .parent()
            .and_then(|d| std::fs::metadata(d).ok())
            .map(|d| (d.ino(), d.dev()));
        Ok(NetnsRef {
            path: path.to_string_lossy().into_owned(),
            ino: m.ino(),
            dev: m.dev(),
            dir,
        })
    }
}

#[cfg(test)]
mod liveness_tests {
    use super::*;

    #[test]
    fn allocation_liveness_fields_are_optional() {
        // A record written before the fields existed still decodes, and writes back unchanged.
        let old = r#"{"schema":1,"network":"n","handle":"c:eth0","addresses":["198.18.0.1/24"],"containerId":"c","ifname":"eth0","node":"a","createdAt":5}"#;
        let a: Allocation = serde_json::from_str(old).unwrap();
        assert_eq!(
            (a.host_interface.as_deref(), a.netns.as_ref()),
            (None, None)
        );
        assert_eq!(serde_json::to_string(&a).unwrap(), old);
        let mut b = a.clone();
        b.host_interface = Some("w1234abcdef0123".into());
        b.netns = Some(NetnsRef::stat(std::path::Path::new("/proc/self/ns/net")).unwrap());
        let text = serde_json::to_string(&b).unwrap();
        assert!(
            text.contains(r#""hostInterface":"w1234abcdef0123""#),
            "{text}"
        );
        assert!(
            text.contains(r#""netns":{"path":"/proc/self/ns/net","ino":"#),
            "{text}"
        );
        assert_eq!(serde_json::from_str::<Allocation>(&text).unwrap(), b);
    }
}
