//! What weftd publishes about its kernel ([`NodeReport`]), and the orders `repair` leaves for a
//! node's weftd ([`RepairOrder`]). Both sides (weftd writes reports and carries out orders;
//! `check` reads reports and writes orders) use these one definitions.
//!
//! Keys:
//! - `/weft/v1/reports/<node>`: the node's report, on the node's lease (it vanishes with the
//!   node). Rewritten when its content changes, and at least every [`REPORT_REFRESH_SECONDS`].
//! - `/weft/v1/gone/<node>`: [`GoneMarker`], written by `repair` when it first finds a node
//!   gone.
//! - `/weft/v1/repairs/<node>/<id>`: one order; weftd re-verifies it against the store and its
//!   kernel, carries it out, deletes the key and publishes its report again. The id is derived
//!   from the action, so writing the same order twice is one order.
use std::net::{IpAddr, Ipv6Addr};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use weft_ipam::KEY_ROOT;

pub const REPORT_SCHEMA: u32 = 1;
pub const ORDER_SCHEMA: u32 = 1;
/// weftd republishes an unchanged report at least this often.
pub const REPORT_REFRESH_SECONDS: u64 = 30;

pub fn reports_prefix() -> String {
    format!("{KEY_ROOT}/reports/")
}
pub fn report_key(node: &str) -> String {
    format!("{KEY_ROOT}/reports/{node}")
}
pub fn repairs_root() -> String {
    format!("{KEY_ROOT}/repairs/")
}
pub fn repairs_prefix(node: &str) -> String {
    format!("{KEY_ROOT}/repairs/{node}/")
}
pub fn repair_key(node: &str, id: &str) -> String {
    format!("{KEY_ROOT}/repairs/{node}/{id}")
}
pub fn gone_prefix() -> String {
    format!("{KEY_ROOT}/gone/")
}
pub fn gone_key(node: &str) -> String {
    format!("{KEY_ROOT}/gone/{node}")
}

/// `/weft/v1/gone/<node>`: when `repair` first found the node gone (no record, no report).
/// A gone node's allocations and blocks are released only once it has been gone for the grace
/// period (a weftd that crashed and comes back within it keeps its pods' addresses); the
/// marker is deleted when the node is back, and by the repair after which no finding names
/// the node any more (so a later absence of the same node starts its grace period afresh,
/// and a repair run after everything was repaired changes nothing).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GoneMarker {
    pub schema: u32,
    pub node: String,
    pub since: u64,
}

/// What a node's kernel holds of Weft's objects, as its weftd last saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeReport {
    pub schema: u32,
    pub node: String,
    /// When the kernel was read (unix seconds).
    pub generated_at: u64,
    /// The network the node's weftd serves (routed: every attachment has a host-side veth).
    pub network: String,
    /// Networks whose attachments on this node all have a host-side interface, so a missing
    /// interface means a gone attachment. Attachments of other networks (underlay macvlan
    /// pods have no host-side interface) are never judged from this report.
    pub verified_networks: Vec<String>,
    /// Links whose alias starts with `weft:` (host-side veths `weft:<net>:<cid>:<if>`, shims
    /// `weft:shim:<uplink>`).
    pub interfaces: Vec<ReportedInterface>,
    /// Main-table routes of protocol 87: the plugin's per-pod host routes (no gateway) and the
    /// agent's routes to other nodes (with a gateway).
    pub routes: Vec<ReportedRoute>,
    /// The VXLAN device, when the node runs one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vxlan_device: Option<String>,
    pub fdb: Vec<ReportedFdb>,
    /// Permanent neighbour entries on the VXLAN device.
    pub neighbours: Vec<ReportedNeighbour>,
    /// Table `inet weft` (None: it could not be read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nftables: Option<ReportedNft>,
    /// How many allocations of this node (every network) with a recorded network namespace
    /// were examined; None: none were (a weftd from before, or it has not read the
    /// allocations yet), so [`NodeReport::gone_netns`] says nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns_examined: Option<usize>,
    /// The examined allocations whose recorded network namespace is gone (the path is
    /// missing, or it is now another namespace). Only the gone ones are listed: an
    /// allocation made after the list was read (an ADD in progress) is simply not in it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gone_netns: Vec<GoneNetns>,
}

/// An allocation whose pod network namespace is gone, as a node's weftd found it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GoneNetns {
    pub network: String,
    pub handle: String,
    /// The allocation's `createdAt`: the verdict is about that record only.
    pub created_at: u64,
    /// What `stat` of the recorded path showed ("no such file", "namespace inode N, recorded M").
    pub why: String,
}

impl NodeReport {
    /// The report without its time stamp, to tell whether anything changed.
    pub fn same_content(&self, other: &NodeReport) -> bool {
        let mut a = self.clone();
        a.generated_at = other.generated_at;
        a == *other
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReportedInterface {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    pub alias: String,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReportedRoute {
    pub dst: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    /// The output device's name ("" when it has none).
    pub dev: String,
    #[serde(default)]
    pub onlink: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReportedFdb {
    pub mac: String,
    pub dst: IpAddr,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReportedNeighbour {
    pub ip: IpAddr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReportedNft {
    pub table: bool,
    /// Rules with Weft's masquerade comment.
    pub rules: usize,
    /// Elements of sets pods4/pods6.
    pub pods: Vec<IpNet>,
    /// Elements of sets masq4/masq6.
    pub masq: Vec<IpNet>,
}

/// An attachment named by a link alias `weft:<network>:<container>:<ifname>`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AliasRef {
    pub network: String,
    pub container_id: String,
    pub ifname: String,
}

impl AliasRef {
    /// The attachment an alias names; None for other aliases (a shim's `weft:shim:<uplink>`).
    pub fn parse(alias: &str) -> Option<AliasRef> {
        let rest = alias.strip_prefix("weft:")?;
        let (network, rest) = rest.split_once(':')?;
        let (container_id, ifname) = rest.rsplit_once(':')?;
        if network.is_empty() || container_id.is_empty() || ifname.is_empty() {
            return None;
        }
        Some(AliasRef {
            network: network.into(),
            container_id: container_id.into(),
            ifname: ifname.into(),
        })
    }
    pub fn handle(&self) -> String {
        weft_ipam::handle_id(&self.container_id, &self.ifname)
    }
}

/// What a node's weftd is asked to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "kebab-case")]
pub enum NodeAction {
    /// Delete link `name` if it still has `alias` and its attachment still has no allocation.
    #[serde(rename_all = "camelCase")]
    DeleteLink { name: String, alias: String },
    /// Delete a protocol-87 route (a pod host route whose address no allocation of this node
    /// holds any more, or an agent route to nothing in the store).
    #[serde(rename_all = "camelCase")]
    DeleteRoute {
        dst: IpNet,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        gateway: Option<IpAddr>,
        dev: String,
    },
    /// Delete an FDB entry of the VXLAN device that points at no registered node.
    #[serde(rename_all = "camelCase")]
    DeleteFdb { mac: String, dst: IpAddr },
    /// Delete a permanent neighbour of the VXLAN device that is no registered node's VTEP.
    #[serde(rename_all = "camelCase")]
    DeleteNeighbour { ip: IpAddr },
    /// Delete an element of a set of table `inet weft` that is no network's pool.
    #[serde(rename_all = "camelCase")]
    DeleteNftElement { set: String, element: IpNet },
    /// Reconcile now (missing routes come back).
    Resync,
}

impl NodeAction {
    /// A stable id: the same action gets the same key.
    pub fn id(&self) -> String {
        let text = serde_json::to_string(self).unwrap_or_default();
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in text.as_bytes() {
            h ^= *b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        format!("{h:016x}")
    }
}

/// An order under `/weft/v1/repairs/<node>/<id>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RepairOrder {
    pub schema: u32,
    pub id: String,
    pub node: String,
    #[serde(flatten)]
    pub action: NodeAction,
    /// Why (the finding's detail).
    pub reason: String,
    pub created_at: u64,
}

/// The node record as `check` needs it (weftd's `NodeRecord` has more).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeInfo {
    pub name: String,
    pub underlay_ip: IpAddr,
    #[serde(default)]
    pub underlay_ip6: Option<IpAddr>,
    #[serde(default)]
    pub vtep_mac: Option<String>,
    #[serde(default)]
    pub vtep_ip: Option<IpAddr>,
    #[serde(default)]
    pub networks: Vec<String>,
}

pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut out {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

/// The EUI-64 link-local address of a MAC (a peer VTEP's IPv6 next hop, see weftd's desired).
pub fn link_local_of(m: &[u8; 6]) -> IpAddr {
    IpAddr::V6(Ipv6Addr::new(
        0xfe80,
        0,
        0,
        0,
        u16::from_be_bytes([m[0] ^ 0x02, m[1]]),
        u16::from_be_bytes([m[2], 0xff]),
        u16::from_be_bytes([0xfe, m[3]]),
        u16::from_be_bytes([m[4], m[5]]),
    ))
}

impl NodeInfo {
    /// Every address another node's kernel may use as a next hop or neighbour for this node.
    pub fn hops(&self) -> Vec<IpAddr> {
        let mut v = vec![self.underlay_ip];
        v.extend(self.underlay_ip6);
        v.extend(self.vtep_ip);
        if let Some(m) = self.vtep_mac.as_deref().and_then(parse_mac) {
            v.push(link_local_of(&m));
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases() {
        let a = AliasRef::parse("weft:cluster:abc:def:eth0").unwrap();
        assert_eq!(
            (
                a.network.as_str(),
                a.container_id.as_str(),
                a.ifname.as_str()
            ),
            ("cluster", "abc:def", "eth0")
        );
        assert_eq!(a.handle(), "abc:def:eth0");
        assert_eq!(AliasRef::parse("weft:shim:uplink"), None);
        assert_eq!(AliasRef::parse("other"), None);
    }

    #[test]
    fn order_ids_are_stable() {
        let a = NodeAction::DeleteFdb {
            mac: "aa:bb:cc:dd:ee:ff".into(),
            dst: "198.51.100.9".parse().unwrap(),
        };
        assert_eq!(a.id(), a.clone().id());
        assert_ne!(a.id(), NodeAction::Resync.id());
        let o = RepairOrder {
            schema: 1,
            id: a.id(),
            node: "n".into(),
            action: a,
            reason: "r".into(),
            created_at: 1,
        };
        let back: RepairOrder = serde_json::from_str(&serde_json::to_string(&o).unwrap()).unwrap();
        assert_eq!(back, o);
    }
}
