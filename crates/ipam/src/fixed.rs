//! Fixed addresses: reservations keyed by workload identity, and address pools for Deployments.
//!
//! An address a reservation or pool keeps while no pod holds it stays owned in its block, by
//! the pseudo-handle `reserved:<identity>` or `pool:<name>`, so the one-owner-per-address rule
//! of the block records covers fixed addresses too and nobody else can be handed one.
//!
//! Release policies of a reservation:
//! - `pod` (default): released with the pod, like any address (then it cools down);
//! - `workload`: kept while the workload exists; released by [`crate::Ipam::release_workload`]
//!   when it scales below the ordinal or is deleted;
//! - `never`: kept until an admin releases it ([`crate::Ipam::release_reservation`]).
//!
//! A pod whose identity has a reservation gets its addresses wherever it runs: on another node
//! the address stays in its block (borrowed, routed as a /32 by the agents), and if the
//! identity's previous pod never ran DEL (its node died) the new pod takes the address over.
use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::{IpamError, KEY_ROOT};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReleasePolicy {
    Pod,
    Workload,
    Never,
}

impl std::str::FromStr for ReleasePolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "pod" => Ok(ReleasePolicy::Pod),
            "workload" => Ok(ReleasePolicy::Workload),
            "never" => Ok(ReleasePolicy::Never),
            other => Err(format!(
                "release policy {other:?} is not one of \"pod\", \"workload\", \"never\""
            )),
        }
    }
}

/// Who a pod is, for a reservation: `key` like `prod/db/0`, its workload like `prod/db`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Identity {
    pub key: String,
    pub policy: ReleasePolicy,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ordinal: Option<u32>,
}

/// A pool request: take a free address of the named pool (created from `addresses` if new).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolRequest {
    pub name: String,
    pub addresses: Vec<IpAddr>,
}

/// What makes an allocation fixed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fixed {
    Identity(Identity),
    Pool(PoolRequest),
}

/// Recorded on the allocation: which reservation or pool its addresses belong to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum FixedRef {
    Reservation { key: String, policy: ReleasePolicy },
    Pool { name: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Reservation {
    pub schema: u32,
    pub network: String,
    pub identity: Identity,
    pub addresses: Vec<IpNet>,
    /// The handle holding the addresses now, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holder: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    pub created_at: u64,
    pub updated_at: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AddressPool {
    pub schema: u32,
    pub network: String,
    pub name: String,
    pub addresses: Vec<IpAddr>,
    /// Address -> the handle holding it.
    #[serde(default)]
    pub holders: BTreeMap<IpAddr, String>,
    pub created_at: u64,
}

pub fn reservation_key(network: &str, key: &str) -> String {
    format!("{KEY_ROOT}/reservations/{network}/{key}")
}
pub fn reservations_prefix(network: &str) -> String {
    format!("{KEY_ROOT}/reservations/{network}/")
}
pub fn pool_key(network: &str, name: &str) -> String {
    format!("{KEY_ROOT}/pools/{network}/{name}")
}

/// The pseudo-handle that owns a reserved address nobody holds.
pub fn reserved_owner(key: &str) -> String {
    format!("reserved:{key}")
}
/// The pseudo-handle that owns a free address of an address pool.
pub fn pool_owner(name: &str) -> String {
    format!("pool:{name}")
}
/// True for owners that are not attachments.
pub fn is_pseudo_owner(owner: &str) -> bool {
    owner.starts_with("reserved:") || owner.starts_with("pool:")
}

/// Identity keys and pool names: `/`-separated segments of letters, digits, `.`, `_`, `-`.
pub fn validate_name(network: &str, field: &str, name: &str) -> Result<(), IpamError> {
    let ok = !name.is_empty()
        && name.split('/').all(|seg| {
            !seg.is_empty()
                && seg != "."
                && seg != ".."
                && seg
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        });
    if ok {
        Ok(())
    } else {
        Err(IpamError::InvalidSpec {
            network: network.to_string(),
            field: field.to_string(),
            value: format!("{name:?}"),
            why: "use letters, digits, '.', '_', '-', with '/' between parts (e.g. prod/db/0)"
                .into(),
        })
    }
}
