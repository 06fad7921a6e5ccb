//! Kernel parameters under /proc/sys. Network ones (`net/...`) belong to the network namespace
//! of the calling thread.

use std::fs;

use crate::{Error, Result};

/// Sets `/proc/sys/<path>` to `value`, writing only when the current value differs (a read is
/// cheaper than a write, and some writes have side effects).
pub fn set(path: &str, value: &str) -> Result<()> {
    if get(path)? == value.trim() {
        return Ok(());
    }
    fs::write(full_path(path), value)
        .map_err(|e| Error::io(format!("write sysctl {path} = {value:?}"), e))
}

/// The value of `/proc/sys/<path>`, trimmed (for example `get("net/ipv4/ip_forward")`).
pub fn get(path: &str) -> Result<String> {
    fs::read_to_string(full_path(path))
        .map(|s| s.trim().to_string())
        .map_err(|e| Error::io(format!("read sysctl {path}"), e))
}

fn full_path(path: &str) -> String {
    format!("/proc/sys/{}", path.trim_start_matches('/'))
}
