//! The JSON bodies of the API (camelCase), with their OpenAPI schemas. Built from the IPAM's
//! records; requests are decoded into these and checked before anything is written.
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use weft_ipam::query::{FamilyUsage, NodeUsage};
use weft_ipam::{Allocation, NetworkRecord, NetworkSpec, PoolSpec, Reservation};

/// Every error: what is wrong, and the request field it is about (when one is).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

// The OpenAPI schema of the IPAM's `PoolSpec`, which the API reads and writes as it is (the
// IPAM crate has no OpenAPI schemas): fields holding pools say `#[schema(value_type = Pool)]`.
// Its serde attributes are PoolSpec's, for the schema only.
/// One pool of a network: a subnet, optionally narrowed to a range, minus exclusions.
#[derive(ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(dead_code)]
pub struct Pool {
    #[schema(value_type = String, example = "198.18.0.0/16")]
    subnet: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    range_start: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    range_end: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(value_type = Vec<String>)]
    exclude: Vec<IpNet>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    gateway: Option<IpAddr>,
}

/// A network as written by a client (POST, PUT; PATCH takes any subset of these fields).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkInput {
    /// Letters, digits, '.', '_', '-'; at most 63. In PUT/PATCH it may be left out (the path
    /// names the network) but must match the path when given.
    #[serde(default)]
    pub name: Option<String>,
    #[schema(value_type = Vec<Pool>)]
    pub pools: Vec<PoolSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_prefix_v4: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_prefix_v6: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cooldown_seconds: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strict_affinity: Option<bool>,
}

impl NetworkInput {
    pub fn to_spec(&self, name: &str) -> NetworkSpec {
        let mut spec = NetworkSpec::new(name, self.pools.clone());
        if let Some(v) = self.block_prefix_v4 {
            spec.block_prefix_v4 = v;
        }
        if let Some(v) = self.block_prefix_v6 {
            spec.block_prefix_v6 = v;
        }
        if let Some(v) = self.cooldown_seconds {
            spec.cooldown_seconds = v;
        }
        if let Some(v) = self.strict_affinity {
            spec.strict_affinity = v;
        }
        spec
    }

    pub fn from_spec(spec: &NetworkSpec) -> Self {
        NetworkInput {
            name: Some(spec.name.clone()),
            pools: spec.pools.clone(),
            block_prefix_v4: Some(spec.block_prefix_v4),
            block_prefix_v6: Some(spec.block_prefix_v6),
            cooldown_seconds: Some(spec.cooldown_seconds),
            strict_affinity: Some(spec.strict_affinity),
        }
    }
}

/// Addresses of one family of a network. Counts above 2^64 are shown as 2^64 - 1.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FamilyCounts {
    pub family: u8,
    pub size: u64,
    pub used: u64,
    pub reserved: u64,
    pub cooling: u64,
    pub free: u64,
}

pub fn sat(n: u128) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

impl From<&FamilyUsage> for FamilyCounts {
    fn from(f: &FamilyUsage) -> Self {
        FamilyCounts {
            family: f.family,
            size: sat(f.size),
            used: sat(f.used),
            reserved: sat(f.reserved),
            cooling: sat(f.cooling),
            free: sat(f.free),
        }
    }
}

/// A stored network.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Network {
    pub name: String,
    #[schema(value_type = Vec<Pool>)]
    pub pools: Vec<PoolSpec>,
    pub block_prefix_v4: u8,
    pub block_prefix_v6: u8,
    pub cooldown_seconds: u64,
    pub strict_affinity: bool,
    /// Unix seconds.
    pub created_at: u64,
    /// Per address family (from the block records).
    pub usage: Vec<FamilyCounts>,
}

impl Network {
    pub fn new(rec: &NetworkRecord, usage: &[FamilyUsage]) -> Self {
        let s = &rec.spec;
        Network {
            name: s.name.clone(),
            pools: s.pools.clone(),
            block_prefix_v4: s.block_prefix_v4,
            block_prefix_v6: s.block_prefix_v6,
            cooldown_seconds: s.cooldown_seconds,
            strict_affinity: s.strict_affinity,
            created_at: rec.created_at,
            usage: usage.iter().map(FamilyCounts::from).collect(),
        }
    }
}

/// One node's share of a network.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeShare {
    pub node: String,
    /// Blocks with affinity to the node.
    #[schema(value_type = Vec<String>)]
    pub blocks: Vec<IpNet>,
    /// Addresses held by the node's pods (wherever their blocks are).
    pub used: u64,
    /// Addresses pods may get in the node's blocks, and how many of them are held.
    pub block_size: u64,
    pub block_used: u64,
}

impl From<&NodeUsage> for NodeShare {
    fn from(n: &NodeUsage) -> Self {
        NodeShare {
            node: n.node.clone(),
            blocks: n.blocks.clone(),
            used: sat(n.used),
            block_size: sat(n.block_size),
            block_used: sat(n.block_used),
        }
    }
}

/// `GET /v1/networks/{name}/usage`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NetworkUsage {
    pub network: String,
    pub families: Vec<FamilyCounts>,
    pub nodes: Vec<NodeShare>,
    pub blocks_claimed: u64,
    pub blocks_total: u64,
}

/// Which reservation or address pool an allocation's addresses belong to.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FixedInfo {
    /// "reservation" or "pool".
    pub kind: String,
    /// The reservation's identity key or the pool's name.
    pub name: String,
    /// The reservation's release policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
}

impl From<&weft_ipam::FixedRef> for FixedInfo {
    fn from(f: &weft_ipam::FixedRef) -> Self {
        match f {
            weft_ipam::FixedRef::Reservation { key, policy } => FixedInfo {
                kind: "reservation".into(),
                name: key.clone(),
                policy: Some(policy_str(*policy).into()),
            },
            weft_ipam::FixedRef::Pool { name } => FixedInfo {
                kind: "pool".into(),
                name: name.clone(),
                policy: None,
            },
        }
    }
}

pub fn policy_str(p: weft_ipam::ReleasePolicy) -> &'static str {
    match p {
        weft_ipam::ReleasePolicy::Pod => "pod",
        weft_ipam::ReleasePolicy::Workload => "workload",
        weft_ipam::ReleasePolicy::Never => "never",
    }
}

/// One attachment's addresses: who, where, since when.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AllocationView {
    pub network: String,
    /// `<containerId>:<ifname>`.
    pub handle: String,
    #[schema(value_type = Vec<String>)]
    pub addresses: Vec<IpNet>,
    pub container_id: String,
    pub ifname: String,
    pub node: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fixed: Option<FixedInfo>,
    /// Unix seconds.
    pub created_at: u64,
}

impl From<&Allocation> for AllocationView {
    fn from(a: &Allocation) -> Self {
        AllocationView {
            network: a.network.clone(),
            handle: a.handle.clone(),
            addresses: a.addresses.clone(),
            container_id: a.container_id.clone(),
            ifname: a.ifname.clone(),
            node: a.node.clone(),
            pod: a.pod.clone(),
            fixed: a.fixed.as_ref().map(FixedInfo::from),
            created_at: a.created_at,
        }
    }
}

/// A fixed-IP reservation keyed by workload identity.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReservationView {
    pub network: String,
    /// The identity key, e.g. `prod/db/0`.
    pub key: String,
    /// "pod", "workload" or "never".
    pub policy: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ordinal: Option<u32>,
    #[schema(value_type = Vec<String>)]
    pub addresses: Vec<IpNet>,
    /// The handle holding the addresses now (none: kept for the identity).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holder: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    pub created_at: u64,
    pub updated_at: u64,
}

impl From<&Reservation> for ReservationView {
    fn from(r: &Reservation) -> Self {
        ReservationView {
            network: r.network.clone(),
            key: r.identity.key.clone(),
            policy: policy_str(r.identity.policy).into(),
            workload: r.identity.workload.clone(),
            ordinal: r.identity.ordinal,
            addresses: r.addresses.clone(),
            holder: r.holder.clone(),
            node: r.node.clone(),
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

/// `POST /v1/networks/{name}/reservations`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReservationInput {
    /// The identity key: '/'-separated parts of letters, digits, '.', '_', '-'.
    pub key: String,
    /// At most one address per family.
    #[schema(value_type = Vec<String>)]
    pub addresses: Vec<IpAddr>,
    /// "pod", "workload" or "never" (default: "never": kept until released here).
    #[serde(default)]
    pub policy: Option<String>,
    #[serde(default)]
    pub workload: Option<String>,
    #[serde(default)]
    pub ordinal: Option<u32>,
}

/// An address pool (a Deployment's fixed addresses).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AddressPoolView {
    pub network: String,
    pub name: String,
    #[schema(value_type = Vec<String>)]
    pub addresses: Vec<IpAddr>,
    /// Address -> the handle holding it.
    #[schema(value_type = Object)]
    pub holders: std::collections::BTreeMap<IpAddr, String>,
    pub created_at: u64,
}

impl From<&weft_ipam::AddressPool> for AddressPoolView {
    fn from(p: &weft_ipam::AddressPool) -> Self {
        AddressPoolView {
            network: p.network.clone(),
            name: p.name.clone(),
            addresses: p.addresses.clone(),
            holders: p.holders.clone(),
            created_at: p.created_at,
        }
    }
}

/// `POST /v1/networks/{name}/pools`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AddressPoolInput {
    pub name: String,
    #[schema(value_type = Vec<String>)]
    pub addresses: Vec<IpAddr>,
}

/// `GET /v1/ips/{ip}`: who holds an address.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct IpInfo {
    #[schema(value_type = String)]
    pub address: IpAddr,
    pub network: String,
    /// "allocated" (a pod holds it), "reserved" (kept for an identity), "pooled" (a free
    /// address of an address pool).
    pub state: String,
    #[schema(value_type = String)]
    pub block: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_node: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handle: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ifname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// Unix seconds: when the holder got it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fixed: Option<FixedInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reservation: Option<ReservationView>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
}

/// A node's block of a network.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeBlock {
    pub network: String,
    #[schema(value_type = String)]
    pub cidr: IpNet,
    /// Entries held in the block (pods of any node, reservations, pools).
    pub used: u64,
    /// Addresses pods may get in it.
    pub size: u64,
}

/// A node: its registration (written by weftd on a lease), blocks and allocations.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeView {
    pub name: String,
    /// Whether weftd's record is in the store (false: only blocks or allocations name it).
    pub registered: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub underlay_ip: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub underlay_subnet: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    #[serde(default)]
    pub networks: Vec<String>,
    /// The node record as weftd wrote it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub record: Option<serde_json::Value>,
    pub blocks: Vec<NodeBlock>,
    /// Attachments on the node, and the addresses they hold.
    pub allocations: u64,
    pub addresses: u64,
}

#[derive(Debug, Clone, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AllocationQuery {
    /// Only this network.
    pub network: Option<String>,
    /// Only attachments on this node.
    pub node: Option<String>,
    /// Only this pod (`namespace/name`).
    pub pod: Option<String>,
}

#[derive(Debug, Clone, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct NetworkFilter {
    /// Only this network.
    pub network: Option<String>,
}

#[derive(Debug, Clone, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeleteQuery {
    /// Delete even with live allocations, reservations or pools (they are removed too).
    pub force: Option<bool>,
}

#[derive(Debug, Clone, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase")]
pub struct CheckQuery {
    /// An allocation younger than this is never called a leak (default 60).
    pub grace_seconds: Option<u64>,
}

/// `POST /v1/check/repair`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RepairInput {
    /// false: return the plan (the findings and what each repair would do); true: carry it out.
    pub yes: bool,
    #[serde(default)]
    pub grace_seconds: Option<u64>,
}

/// The plan, or what was done.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RepairResult {
    /// Whether the repairs were carried out.
    pub applied: bool,
    /// The findings (each with its `repair` text).
    #[schema(value_type = Vec<Object>)]
    pub findings: Vec<weft_check::Finding>,
    /// With `yes`: what each repair did.
    #[schema(value_type = Vec<Object>)]
    pub outcomes: Vec<weft_check::RepairOutcome>,
}

/// What `DELETE /v1/networks/{name}` removed.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeletedNetwork {
    pub network: String,
    pub allocations: usize,
    pub reservations: usize,
    pub pools: usize,
    pub blocks: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Health {
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<i64>,
}
