//! The CNI protocol, spec 1.1.0 and the older versions still in use (0.3.0 to 1.0.0).
//!
//! Pure: nothing here touches the kernel, so all of it is unit-testable anywhere. A plugin's
//! `main` implements [`skel::Plugin`] and calls [`skel::run`]; everything between the runtime and
//! that trait (environment, stdin, version negotiation, result conversion, error output) is here.
//!
//! - [`env`](mod@env): the `CNI_*` environment variables, validated per command.
//! - [`config`]: the network configuration on stdin, and its `runtimeConfig` capabilities.
//! - [`result`]: the ADD result and its conversion between spec versions.
//! - [`error`]: the error object and the spec's well-known codes.
//! - [`version`]: supported versions and their ordering.
//! - [`skel`]: the dispatcher every plugin binary calls.
//! - [`delegate`]: running another plugin (IPAM delegation).

#![forbid(unsafe_code)]

pub mod config;
pub mod delegate;
pub mod env;
pub mod error;
pub mod result;
pub mod skel;
pub mod version;

pub use config::NetConf;
pub use env::{CniEnv, Command};
pub use error::CniError;
pub use result::CniResult;

/// The spec versions this crate reads and writes, oldest first.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// The newest supported spec version.
pub const CURRENT_VERSION: &str = "1.1.0";
