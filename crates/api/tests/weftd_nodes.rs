//! Nodes as real weftd processes register them: etcd and weft-api run in a "store" network
//! namespace on an underlay bridge, two "node" namespaces run weftd; weftctl (run inside the
//! store namespace) sees them registered with their underlay addresses, mode and the blocks
//! weftd claims at start, and sees a node's registration go when its weftd stops for good.
//!
//! Needs root (it creates network namespaces; nothing is done in the root namespace but
//! creating and deleting them) and the `weftd` binary next to this test's target dir
//! (`cargo build -p weft-agent --bin weftd`, done by `cargo test --workspace`) or at `$WEFTD`.
mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use common::{ADMIN, text, weftctl_bin};
use serde_json::Value;
use weft_dataplane::testing::TestNetns;
use weft_store::testing::EtcdServer;

/// A network namespace (`wapi<tag>-<pid>-<n>`, lo up), deleted on drop.
fn netns(tag: &str) -> TestNetns {
    TestNetns::new("wapi", tag)
}

/// A child killed (by PID) and reaped on drop.
struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn sibling(name: &str, env: &str, build: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env) {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap();
    let p = exe.parent().and_then(Path::parent).unwrap().join(name);
    assert!(
        p.exists(),
        "{} is missing: run `{build}` (same CARGO_TARGET_DIR) first, or set {env}",
        p.display()
    );
    p
}

#[test]
fn nodes_registered_by_real_weftd() {
    weft_dataplane::testing::require_root();
    let weftd = sibling("weftd", "WEFTD", "cargo build -p weft-agent --bin weftd");
    let weftctl = weftctl_bin();
    let dir = tempfile::tempdir().unwrap();

    // The underlay: a bridge in the store namespace, one veth per node.
    let store = netns("s");
    store.ok(&["ip", "link", "add", "br0", "type", "bridge"]);
    store.ok(&["ip", "addr", "add", "198.51.100.1/24", "dev", "br0"]);
    store.ok(&["ip", "link", "set", "br0", "up"]);
    let mut nodes = Vec::new();
    for i in 0..2 {
        let ns = netns("n");
        let port = format!("n{i}");
        store.ok(&[
            "ip", "link", "add", &port, "type", "veth", "peer", "name", "uplink", "netns", &ns.name,
        ]);
        store.ok(&["ip", "link", "set", &port, "master", "br0", "up"]);
        ns.ok(&[
            "ip",
            "addr",
            "add",
            &format!("198.51.100.{}/24", i + 2),
            "dev",
            "uplink",
        ]);
        ns.ok(&["ip", "link", "set", "uplink", "up"]);
        nodes.push(ns);
    }
    let etcd = EtcdServer::start_in(&store.path(), "198.51.100.1".parse().unwrap());
    let tokens = dir.path().join("admin");
    std::fs::write(&tokens, format!("{ADMIN}\n")).unwrap();
    let api_log = dir.path().join("api.log");
    let _api = Proc(
        store
            .command_killed_with_test(Path::new(env!("CARGO_BIN_EXE_weft-api")))
            .args(["--etcd", &etcd.endpoint(), "--listen", "127.0.0.1:8750"])
            .arg("--admin-token-file")
            .arg(&tokens)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(&api_log).unwrap()))
            .spawn()
            .unwrap(),
    );
    let ctl = |args: &[&str]| -> Output {
        store
            .command(&weftctl)
            .args(args)
            .env_clear()
            .env("HOME", dir.path())
            .env("WEFT_API_URL", "http://127.0.0.1:8750")
            .env("WEFT_TOKEN", ADMIN)
            .output()
            .unwrap()
    };
    let wait = |what: &str, secs: u64, mut f: Box<dyn FnMut() -> bool + '_>| {
        let t = Instant::now();
        while !f() {
            assert!(
                t.elapsed() < Duration::from_secs(secs),
                "{what} not within {secs} s\nweft-api: {}",
                std::fs::read_to_string(&api_log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    wait(
        "weft-api ready",
        15,
        Box::new(|| ctl(&["get", "networks"]).status.success()),
    );

    let manifest = dir.path().join("net.yaml");
    std::fs::write(
        &manifest,
        "kind: Network\nmetadata: {name: cluster}\nspec: {pools: [{subnet: 198.18.0.0/24}]}\n",
    )
    .unwrap();
    let o = ctl(&["create", "-f", manifest.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));

    let mut daemons = Vec::new();
    for (i, ns) in nodes.iter().enumerate() {
        let log = dir.path().join(format!("weftd-{i}.log"));
        daemons.push(Proc(
            ns.command_killed_with_test(&weftd)
                .args([
                    "--node",
                    &format!("node-{}", i + 1),
                    "--underlay-interface",
                    "uplink",
                ])
                .args(["--etcd", &etcd.endpoint(), "--network", "cluster"])
                .args([
                    "--mode",
                    "host-gw",
                    "--lease-ttl",
                    "2",
                    "--resync-millis",
                    "500",
                ])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
                .spawn()
                .unwrap(),
        ));
    }
    let nodes_json = || -> Value {
        let o = ctl(&["get", "nodes", "-o", "json"]);
        assert!(o.status.success(), "{}", text(&o));
        serde_json::from_slice(&o.stdout).unwrap()
    };
    let registered_with_blocks = |v: &Value, name: &str| {
        v.as_array().unwrap().iter().any(|n| {
            n["name"] == name
                && n["registered"] == true
                && n["blocks"].as_array().is_some_and(|b| !b.is_empty())
        })
    };
    wait(
        "both weftd registered with a claimed block",
        20,
        Box::new(|| {
            let v = nodes_json();
            registered_with_blocks(&v, "node-1") && registered_with_blocks(&v, "node-2")
        }),
    );
    let n1 = {
        let o = ctl(&["get", "node", "node-1", "-o", "json"]);
        assert!(o.status.success(), "{}", text(&o));
        serde_json::from_slice::<Value>(&o.stdout).unwrap()
    };
    assert_eq!(n1["underlayIp"], "198.51.100.2");
    assert_eq!(n1["underlaySubnet"], "198.51.100.0/24");
    assert_eq!(n1["mode"], "host-gw");
    assert_eq!(n1["networks"][0], "cluster");
    assert_eq!(n1["blocks"][0]["network"], "cluster");
    let cidr = n1["blocks"][0]["cidr"].as_str().unwrap().to_string();
    assert!(cidr.starts_with("198.18.0."), "{n1}");
    let o = ctl(&["get", "nodes"]);
    let table = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        table.contains("node-1") && table.contains("Registered"),
        "{table}"
    );
    let usage = ctl(&["describe", "network", "cluster"]);
    assert!(
        String::from_utf8_lossy(&usage.stdout).contains(&cidr),
        "{}",
        text(&usage)
    );

    // node-2's weftd stops for good: its record goes with its lease; its block still names it.
    daemons.pop();
    wait(
        "node-2's registration expiring",
        20,
        Box::new(|| {
            let v = nodes_json();
            v.as_array().unwrap().iter().any(|n| {
                n["name"] == "node-2"
                    && n["registered"] == false
                    && !n["blocks"].as_array().unwrap().is_empty()
            })
        }),
    );
    assert!(registered_with_blocks(&nodes_json(), "node-1"));
}
