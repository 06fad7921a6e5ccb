//! `check`, Weft's fsck: compares the store with what every node's weftd reports its kernel
//! holds, lists what disagrees ([`Finding`]) and repairs it ([`repair`]), each repair safe to run
//! twice. Used by weft-api (`GET /v1/check`, `POST /v1/check/repair`).
//!
//! STUB: the interface the API is written against; the implementation lands separately.

use serde::{Deserialize, Serialize};
use weft_store::Store;

#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("{0}")]
    Store(#[from] weft_store::StoreError),
    #[error("{0}")]
    Other(String),
}

/// Options of one check run.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckOptions {
    /// An allocation younger than this is never called a leak (a pod may be mid-ADD).
    pub grace_seconds: u64,
}

impl Default for CheckOptions {
    fn default() -> Self {
        CheckOptions { grace_seconds: 60 }
    }
}

/// What kind of disagreement a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FindingKind {
    /// An allocation whose container is gone.
    Leak,
    /// An interface, route, FDB entry or rule on a node with no allocation or node behind it.
    Orphan,
    /// One address recorded twice.
    Duplicate,
    /// A block claimed by a node that is gone.
    StaleBlock,
    /// A borrowed or moved address without its route on some node.
    MissingRoute,
    /// A reservation whose address is outside its network's or pool's ranges.
    ReservationOutsidePool,
}

/// One disagreement, with the repair that would fix it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Finding {
    pub kind: FindingKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// What it is about: an address, a handle, an interface name, a block CIDR, a route.
    pub subject: String,
    /// What is wrong, in a sentence.
    pub detail: String,
    /// What `repair` would do, in a sentence.
    pub repair: String,
}

/// The result of a check.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckReport {
    pub findings: Vec<Finding>,
    /// Nodes whose reports were compared.
    pub nodes: Vec<String>,
    /// Nodes registered without a report (their kernel could not be checked).
    pub nodes_without_report: Vec<String>,
    /// Allocations examined.
    pub allocations: usize,
}

/// What a repair did with one finding.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RepairOutcome {
    pub finding: Finding,
    /// "done", "queued" (a node's weftd carries it out) or "skipped".
    pub status: String,
    pub message: String,
}

/// Runs the check over the store and the nodes' reports.
pub fn check(_store: &dyn Store, _opts: &CheckOptions) -> Result<CheckReport, CheckError> {
    Ok(CheckReport::default())
}

/// Repairs the given findings (re-verifying each against the store first).
pub fn repair(
    _store: &dyn Store,
    _findings: &[Finding],
    _opts: &CheckOptions,
) -> Result<Vec<RepairOutcome>, CheckError> {
    Ok(Vec::new())
}
