//! Weft's kernel layer: network namespaces, links, addresses and routes over an in-process,
//! synchronous rtnetlink socket, plus sysctls and nftables.
//!
//! Why synchronous and in-process: a CNI ADD should take about 2 ms in total, and spawning `ip`
//! costs about as much on its own. Each call here is one netlink round trip (a `Batch` sends
//! several requests in one `send` and then reads every ack).
//!
//! Namespaces: open the pod's netns with [`Netns::open`], create a socket inside it with
//! [`Netlink::in_netns`] (the socket stays bound to that netns), and from then on work through two
//! sockets (host and pod) without switching the thread again. `setns` is per thread: never call
//! [`Netns::run_in`] on a pooled async worker.
//!
//! Routes Weft adds carry the protocol [`RTPROT_WEFT`], so the agent can tell them from others.
//!
//! The node agent's objects live here too: the VXLAN device ([`Netlink::ensure_vxlan`]), FDB and
//! neighbour entries ([`Netlink::fdb_entries`], [`Batch::replace_fdb`], ...), Weft's routes
//! ([`Netlink::weft_routes`]) and a watcher of kernel notifications ([`netlink::events`]).
//!
//! With the `testing` feature, [`testing::TestNetns`] is a throwaway network namespace for a test.
#![deny(unsafe_code)]

pub mod bpf;
pub mod counters;
mod error;
pub mod files;
pub mod masquerade;
pub mod netlink;
mod netns;
pub mod nft;
pub mod sysctl;
#[cfg(feature = "testing")]
pub mod testing;

pub use error::{Error, GONE, Result};
pub use netlink::{
    Address, Batch, FdbEntry, Link, Neighbour, Netlink, RTPROT_WEFT, Route, VethSpec, VxlanInfo,
    VxlanSpec, mac_string,
};
pub use netns::Netns;
