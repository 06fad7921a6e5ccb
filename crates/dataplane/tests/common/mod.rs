//! Throwaway network namespaces for the real-kernel tests ([`weft_dataplane::testing`]). Every
//! namespace is deleted on drop, also when the test fails. Tests need root.
#![allow(dead_code)]

use std::ops::Deref;

use serde_json::Value;
use weft_dataplane::testing::TestNetns;

/// A named namespace (`weftdp-<tag>-<pid>-<n>`, left with `lo` down), deleted on drop.
pub struct TestNs(TestNetns);

impl TestNs {
    pub fn new(tag: &str) -> TestNs {
        TestNs(TestNetns::new_bare("weftdp-", tag))
    }
}

impl Deref for TestNs {
    type Target = TestNetns;
    fn deref(&self) -> &TestNetns {
        &self.0
    }
}

/// Runs a command and returns its stdout; panics with stderr when it fails.
pub fn run(cmd: &str, args: &[&str]) -> String {
    let mut full = vec![cmd];
    full.extend_from_slice(args);
    weft_dataplane::testing::run(&full)
}

/// True if `flags` (an `ip -j` flags array) contains `flag`.
pub fn has_flag(v: &Value, flag: &str) -> bool {
    v["flags"]
        .as_array()
        .is_some_and(|f| f.iter().any(|x| x == flag))
}
