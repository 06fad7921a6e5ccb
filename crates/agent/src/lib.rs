//! weftd, Weft's node agent.
//!
//! It registers its node in the store (a record on a lease it keeps alive) and keeps the
//! kernel's routes (IPv4 and IPv6 blocks, borrowed /32 and /128), VXLAN FDB and neighbour
//! entries towards every other node, and the masquerade table, in step with the store, by
//! level: on start, on every store event under the nodes, blocks, handles and networks
//! prefixes, on every kernel notification touching its objects
//! ([`weft_dataplane::netlink::events`]), and on a
//! timer, it computes the desired state ([`desired::compute`], a pure
//! function), reads what the kernel has (only Weft's own objects) and adds what is missing and
//! deletes what is extra.
//!
//! Modules, one concern each:
//! - [`config`]: the configuration file and flags.
//! - [`node`]: the node record and its lease (registration, heartbeat).
//! - [`desired`]: desired state from node and block records (pure, unit-tested).
//! - [`firewall`]: the masquerade table `inet weft` shared with the plugin.
//! - [`reconcile`]: reads the kernel, diffs against the desired state, applies the difference.
//! - [`metrics`]: the metrics endpoint (`--metrics-listen`) and the plugin's timing reports.
//! - [`report`]: the node's report of its kernel for `weftctl check`; [`repair`]: the repair
//!   orders `check` leaves for this node; [`liveness`]: which of this node's allocations (every
//!   network) lost their pod network namespace, for the report.
//! - [`agent`]: the process: threads for the watches, the heartbeat and signals; the main loop.
#![deny(unsafe_code)]

pub mod agent;
pub mod config;
pub mod desired;
pub mod error;
pub mod firewall;
pub mod liveness;
pub mod metrics;
pub mod node;
pub mod reconcile;
pub mod repair;
pub mod report;

pub use error::{AgentError, Result};

/// Writes one line to stderr, prefixed with "weftd:".
#[macro_export]
macro_rules! log {
    ($($arg:tt)*) => {
        eprintln!("weftd: {}", format_args!($($arg)*))
    };
}
