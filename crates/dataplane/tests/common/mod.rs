//! Throwaway network namespaces for the real-kernel tests. Every namespace is deleted on drop,
//! also when the test fails. Tests need root.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use serde_json::Value;
use weft_dataplane::{Netlink, Netns};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A named namespace (`ip netns add weftdp-<tag>-<pid>-<n>`), deleted on drop.
pub struct TestNs {
    pub name: String,
}

impl TestNs {
    pub fn new(tag: &str) -> TestNs {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("weftdp-{tag}-{}-{n}", std::process::id());
        run("ip", &["netns", "add", &name]);
        TestNs { name }
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/var/run/netns/{}", self.name))
    }

    pub fn netns(&self) -> Netns {
        Netns::open(&self.path()).expect("open test netns")
    }

    pub fn netlink(&self) -> Netlink {
        Netlink::in_netns(&self.netns()).expect("netlink socket in test netns")
    }

    /// `ip -n <ns> -j <args>` parsed as JSON.
    pub fn ip_json(&self, args: &[&str]) -> Value {
        let mut full = vec!["-n", &self.name, "-j"];
        full.extend_from_slice(args);
        let out = run("ip", &full);
        if out.trim().is_empty() {
            return Value::Array(vec![]);
        }
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("ip {full:?}: bad JSON {e}: {out}"))
    }

    /// `ip -n <ns> <args>`; panics on failure.
    pub fn ip(&self, args: &[&str]) {
        let mut full = vec!["-n", &self.name];
        full.extend_from_slice(args);
        run("ip", &full);
    }

    /// The one link called `name` in `ip -j link` output, if any.
    pub fn ip_link(&self, name: &str) -> Option<Value> {
        let links = self.ip_json(&["-d", "link", "show"]);
        links
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["ifname"] == name)
            .cloned()
    }
}

impl Drop for TestNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Runs a command and returns its stdout; panics with stderr when it fails.
pub fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("spawn {cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// True if `flags` (an `ip -j` flags array) contains `flag`.
pub fn has_flag(v: &Value, flag: &str) -> bool {
    v["flags"]
        .as_array()
        .is_some_and(|f| f.iter().any(|x| x == flag))
}
