//! Test support (feature `testing`): throwaway network namespaces for tests that need root.
//!
//! ```no_run
//! # use weft_dataplane::testing::TestNetns;
//! let node = TestNetns::new("wt", "node"); // "wtnode-<pid>-<n>", lo up
//! node.ok(&["ip", "link", "add", "br0", "type", "bridge"]);
//! let links = node.ip_json(&["link", "show"]);
//! let mut nl = node.netlink(); // a netlink socket bound to the namespace
//! // ... dropped: `ip netns del`, also when the test panics.
//! ```
//!
//! Commands run inside through `nsenter --net=/run/netns/<name>` (nsenter keeps the caller's
//! mounts, unlike `ip netns exec`, and execs the program, so a child's PID is the program's).
//! Nothing is done in the root namespace except adding and deleting the namespace. Each test
//! crate passes its own name prefix, so a leftover namespace tells which crate made it.
use std::ffi::OsStr;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

use serde_json::Value;

use crate::{Netlink, Netns, counters};

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A named network namespace that exists for the life of this value.
pub struct TestNetns {
    /// `<prefix><tag>-<pid>-<n>`: unique per process and call.
    pub name: String,
}

impl TestNetns {
    /// A fresh namespace named `<prefix><tag>-<pid>-<n>`, with `lo` up.
    pub fn new(prefix: &str, tag: &str) -> TestNetns {
        let ns = TestNetns::new_bare(prefix, tag);
        ns.ok(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// Like [`TestNetns::new`] but left as `ip netns add` makes it (`lo` down).
    pub fn new_bare(prefix: &str, tag: &str) -> TestNetns {
        let n = SEQ.fetch_add(1, Ordering::SeqCst);
        let name = format!("{prefix}{tag}-{}-{n}", std::process::id());
        run(&["ip", "netns", "add", &name]);
        TestNetns { name }
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.name))
    }

    /// The namespace opened as a [`Netns`].
    pub fn netns(&self) -> Netns {
        Netns::open(&self.path()).expect("open test netns")
    }

    /// A netlink socket inside the namespace.
    pub fn netlink(&self) -> Netlink {
        Netlink::in_netns(&self.netns()).expect("netlink socket in test netns")
    }

    /// `prog` to run inside the namespace; the caller adds arguments, environment and stdio.
    pub fn command(&self, prog: impl AsRef<OsStr>) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.path().display()))
            .arg("--")
            .arg(prog);
        c
    }

    /// Like [`TestNetns::command`], but the program gets SIGKILL when the thread that spawned it
    /// ends (`setpriv --pdeathsig KILL`): for daemons that must not outlive a dying test.
    pub fn command_killed_with_test(&self, prog: impl AsRef<OsStr>) -> Command {
        let mut c = self.command("setpriv");
        c.args(["--pdeathsig", "KILL", "--"]).arg(prog);
        c
    }

    /// Runs `cmd` inside the namespace.
    pub fn exec(&self, cmd: &[&str]) -> Output {
        self.command(cmd[0])
            .args(&cmd[1..])
            .output()
            .unwrap_or_else(|e| panic!("nsenter {cmd:?}: {e}"))
    }

    /// Runs `cmd` inside the namespace; it must succeed. Its stdout.
    pub fn ok(&self, cmd: &[&str]) -> String {
        let out = self.exec(cmd);
        assert!(
            out.status.success(),
            "in {}: {cmd:?} failed ({}): {}{}",
            self.name,
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `ip ARGS` inside the namespace; it must succeed. Its stdout.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut cmd = vec!["ip"];
        cmd.extend_from_slice(args);
        self.ok(&cmd)
    }

    /// `ip -j ARGS` parsed (an empty array when `ip` prints nothing).
    pub fn ip_json(&self, args: &[&str]) -> Value {
        let mut cmd = vec!["ip", "-j"];
        cmd.extend_from_slice(args);
        let out = self.ok(&cmd);
        if out.trim().is_empty() {
            return Value::Array(vec![]);
        }
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{cmd:?}: bad JSON {e}: {out}"))
    }

    /// The link called `name` as `ip -j -d link show` describes it, if any.
    pub fn ip_link(&self, name: &str) -> Option<Value> {
        self.ip_json(&["-d", "link", "show"])
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["ifname"] == name)
            .cloned()
    }

    /// Names of the links in the namespace.
    pub fn links(&self) -> Vec<String> {
        self.ip_json(&["link", "show"])
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["ifname"].as_str().unwrap().to_string())
            .collect()
    }

    /// Addresses (with prefix) on `dev`, link-local IPv6 left out.
    pub fn addrs(&self, dev: &str) -> Vec<String> {
        let v = self.ip_json(&["addr", "show", "dev", dev]);
        let mut out = Vec::new();
        for l in v.as_array().unwrap() {
            for a in l["addr_info"].as_array().unwrap() {
                if a["scope"] != "link" {
                    out.push(format!(
                        "{}/{}",
                        a["local"].as_str().unwrap(),
                        a["prefixlen"]
                    ));
                }
            }
        }
        out
    }

    /// Packets `dev` received and sent: `(rx, tx)` from /proc/net/dev read inside the namespace.
    pub fn link_packets(&self, dev: &str) -> (u64, u64) {
        let text = self.ok(&["cat", "/proc/net/dev"]);
        counters::dev_packets(&text, dev)
            .unwrap_or_else(|| panic!("no {dev} in /proc/net/dev of {}: {text}", self.name))
    }

    /// The `Ip:` counter `name` of /proc/net/snmp inside the namespace (`ForwDatagrams`, ...).
    pub fn snmp_ip(&self, name: &str) -> u64 {
        let snmp = self.ok(&["cat", "/proc/net/snmp"]);
        counters::snmp_ip(&snmp, name).unwrap_or_else(|| panic!("no Ip: counter {name}: {snmp}"))
    }

    /// Datagrams the namespace's stack forwarded: IPv4 `ForwDatagrams` for `fam` 4, IPv6
    /// `Ip6OutForwDatagrams` (/proc/net/snmp6) for 6.
    pub fn forwarded(&self, fam: u8) -> u64 {
        if fam == 4 {
            return self.snmp_ip("ForwDatagrams");
        }
        let snmp6 = self.ok(&["cat", "/proc/net/snmp6"]);
        counters::snmp6(&snmp6, "Ip6OutForwDatagrams")
            .unwrap_or_else(|| panic!("no Ip6OutForwDatagrams: {snmp6}"))
    }

    /// Sends `bytes` (iperf3's `-n`, such as "64M") over TCP from this namespace to `dst` on
    /// `port`, where a one-shot iperf3 server is started in `server`. The client is tried again
    /// for 5 s while the server is not yet listening. Returns the `end` of the client's JSON
    /// report (`sum_sent.bytes`, `sum_sent.retransmits`, ...); panics unless the transfer ran.
    pub fn iperf_send(&self, server: &TestNetns, dst: &str, port: &str, bytes: &str) -> Value {
        let mut srv = server
            .command_killed_with_test("iperf3")
            .args(["-s", "-1", "-p", port])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn iperf3 server");
        let mut last = String::new();
        let mut end = None;
        for _ in 0..50 {
            let out = self.exec(&[
                "timeout",
                "60",
                "iperf3",
                "-c",
                dst,
                "-p",
                port,
                "-n",
                bytes,
                "-J",
                "--connect-timeout",
                "2000",
            ]);
            let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
            if v["end"]["sum_sent"]["bytes"].is_u64() {
                end = Some(v["end"].clone());
                break;
            }
            last = String::from_utf8_lossy(&out.stdout).into_owned();
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let _ = srv.kill();
        let _ = srv.wait();
        end.unwrap_or_else(|| {
            panic!(
                "iperf3 from {} to {dst}:{port} (server in {}) did not run: {last}",
                self.name, server.name
            )
        })
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Runs `cmd` (in the caller's namespace); it must succeed. Its stdout.
pub fn run(cmd: &[&str]) -> String {
    let out = Command::new(cmd[0])
        .args(&cmd[1..])
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Fails the test unless it runs as root (it needs to create network namespaces).
pub fn require_root() {
    assert_eq!(
        run(&["id", "-u"]).trim(),
        "0",
        "this test needs root: it creates network namespaces (CI runs it as root)"
    );
}
