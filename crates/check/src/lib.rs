//! `check`, Weft's fsck: compares the store with what every node's weftd reports its kernel
//! holds, lists what disagrees ([`Finding`]) and repairs it ([`repair`]), each repair safe to run
//! twice. Used by weft-api (`GET /v1/check`, `POST /v1/check/repair`).
//!
//! How it works: [`check`] reads the store with one prefix list per record kind (networks,
//! nodes, blocks, handles, reservations, address pools, node reports, gone-node markers,
//! repair orders) and compares them ([`analyse()`]); it writes nothing and never asks a node
//! anything: each weftd publishes what its kernel holds ([`model::NodeReport`],
//! `/weft/v1/reports/<node>`, on the node's lease). [`repair`] loads the store again, keeps
//! only the findings that are still found, and repairs each: store-side in one transaction
//! that re-reads what it changes, node-side by writing an order
//! (`/weft/v1/repairs/<node>/<id>`) that the node's weftd re-verifies and carries out.
//!
//! Findings and repairs:
//! - leak: an allocation whose pod network namespace (recorded at ADD) its node's report
//!   lists gone, or whose host-side interface (recorded at ADD, or implied by a verified
//!   network) a report made after the allocation does not list, or whose node is gone; a block
//!   entry whose owner has no record. Repair: release through the IPAM's DEL path, re-checked
//!   in the transaction; free the block entry.
//! - orphan: a Weft interface, pod route, agent route, FDB or neighbour entry, or nftables set
//!   element on a node with no allocation, block, node or pool behind it. Repair: an order to
//!   the node's weftd, which re-verifies and deletes it.
//! - duplicate: an address in a handle record that its block gives to another handle; block
//!   records that overlap. Repair: take the address out of the record that does not own it;
//!   delete an overlapping block record that is empty.
//! - stale-block: a block claimed by a gone node (no record, no report). Repair: once that
//!   node's allocations in it are released, drop the claim (delete the block when empty).
//! - missing-route: a borrowed address without its /32 (/128) on a node that routes to the
//!   holder. Repair: an order to reconcile now.
//! - reservation-outside-pool: a reservation or address pool with an address outside its
//!   network's pool ranges. Repair: delete the reservation when no pod holds it.
//!
//! Safety: an allocation younger than the grace period is never a leak; a node without a
//! report gives no kernel-based verdict; an attachment is judged by what its record says it
//! has: every allocation made by `weft` or `weft-ipam` records its pod's network namespace
//! (path, inode, device), and the node's weftd lists those whose namespace is gone (the path
//! missing, or another namespace there: a reused pid); a veth-based attachment also records
//! its host interface, judged by its alias. Records made before these fields are judged by
//! interface only on the node's verified networks (those whose every attachment has a
//! host-side veth: the network its weftd routes), as before, so an old underlay macvlan pod
//! is never called a leak; a live pod's namespace is never listed gone; an interface
//! or route whose address was released after its report was made is not an orphan yet; a gone
//! node's addresses are released only once `repair` has known it gone for the grace period
//! (`/weft/v1/gone/<node>`).

pub mod analyse;
pub mod model;
mod repair;

pub use analyse::{Snapshot, analyse};
pub use model::*;
pub use repair::{repair, repair_waiting};

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

/// How long [`repair`] waits for nodes to carry out their orders before it says "queued"
/// ([`repair_waiting`] takes another bound).
pub const REPAIR_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

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
    /// The repair as data (what `repair` carries out); None: nothing safe to do automatically.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<RepairAction>,
}

impl Finding {
    /// Two findings about the same thing (for re-verification before a repair).
    pub fn same_subject(&self, other: &Finding) -> bool {
        self.kind == other.kind
            && self.network == other.network
            && self.node == other.node
            && self.subject == other.subject
    }
}

/// A repair, as data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum RepairAction {
    /// Release the allocation (the DEL path) if it is still the same one and still not live.
    #[serde(rename_all = "camelCase")]
    ReleaseHandle {
        network: String,
        handle: String,
        created_at: u64,
    },
    /// Free a block entry whose owner has no record.
    #[serde(rename_all = "camelCase")]
    FreeBlockEntry {
        network: String,
        block: ipnet::IpNet,
        address: std::net::IpAddr,
        owner: String,
    },
    /// Take `address` out of the handle's record (its block gives it to someone else).
    #[serde(rename_all = "camelCase")]
    DropDuplicate {
        network: String,
        handle: String,
        address: std::net::IpAddr,
    },
    /// Delete an empty block record that overlaps another block.
    #[serde(rename_all = "camelCase")]
    DeleteBlock {
        network: String,
        block: ipnet::IpNet,
    },
    /// Drop a gone node's affinity to a block (deleting the block when nothing is in it).
    #[serde(rename_all = "camelCase")]
    ReleaseBlock {
        network: String,
        block: ipnet::IpNet,
        node: String,
    },
    /// Delete a reservation outside its network's pools (none of its addresses is held).
    #[serde(rename_all = "camelCase")]
    DropReservation { network: String, key: String },
    /// An order for a node's weftd.
    #[serde(rename_all = "camelCase")]
    Node { node: String, order: NodeAction },
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
    /// Records that do not decode, reports not judged and why, and the like.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
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
pub fn check(store: &dyn Store, opts: &CheckOptions) -> Result<CheckReport, CheckError> {
    let snap = Snapshot::load(store)?;
    Ok(analyse(&snap, opts, weft_ipam::now()))
}
