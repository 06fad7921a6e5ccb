//! weftctl drives every resource through the real weft-api on a real etcd: its `-o json` is
//! read back, its default tables fit 80 columns, its exit codes are the documented ones.
mod common;

use std::sync::Arc;

use common::*;
use serde_json::Value;
use weft_agent::node::{NodeRecord, Registration, SCHEMA};
use weft_ipam::{AllocateRequest, Ipam, NetworkSpec, PoolSpec};
use weft_store::Store;
use weft_store::testing::EtcdServer;

const MANIFEST: &str = r#"
apiVersion: weft/v1
kind: Network
metadata:
  name: cluster-with-a-rather-long-name
spec:
  pools:
    - subnet: 198.18.0.0/24
    - subnet: fd00:18::/120
  cooldownSeconds: 0
---
kind: Reservation
metadata:
  name: production-namespace/a-statefulset-with-a-long-name/0
spec:
  network: cluster-with-a-rather-long-name
  addresses: [198.18.0.200, "fd00:18::c8"]
  policy: workload
  workload: production-namespace/a-statefulset-with-a-long-name
  ordinal: 0
---
kind: AddressPool
metadata:
  name: web
spec:
  network: cluster-with-a-rather-long-name
  addresses: [198.18.0.210, 198.18.0.211]
"#;

const NET: &str = "cluster-with-a-rather-long-name";

fn ok(o: &std::process::Output) -> String {
    assert_eq!(o.status.code(), Some(0), "{}", text(o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn json_of(o: &std::process::Output) -> Value {
    serde_json::from_str(&ok(o)).unwrap_or_else(|e| panic!("{e}: {}", text(o)))
}

fn fits_80(out: &str, what: &str) {
    assert!(!out.trim().is_empty(), "{what}: empty");
    for l in out.lines() {
        assert!(
            l.chars().count() <= 80,
            "{what}: line of {} characters:\n{l}\n{out}",
            l.chars().count()
        );
    }
}

fn code(o: &std::process::Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

#[test]
fn weftctl_drives_every_resource() {
    let etcd = EtcdServer::start();
    let store: Arc<dyn Store> = Arc::new(store(&etcd));
    let api = Api::start(&etcd, &[]);
    let dir = api.dir.path().to_path_buf();
    let manifest = dir.join("m.yaml");
    std::fs::write(&manifest, MANIFEST).unwrap();
    let m = manifest.to_str().unwrap();

    // create, then create again (conflict), then apply (unchanged).
    let out = ok(&api.weftctl(&["create", "-f", m], &[]));
    assert!(out.contains(&format!("network/{NET} created")), "{out}");
    assert!(out.contains("pool/web created"), "{out}");
    let o = api.weftctl(&["create", "-f", m], &[]);
    assert_eq!(code(&o), 5, "{}", text(&o));
    let out = ok(&api.weftctl(&["apply", "-f", m], &[]));
    assert!(out.contains("unchanged"), "{out}");

    // Pods on two nodes registered as weftd registers them, allocated as the plugin does.
    let rec = |name: &str, ip: &str| NodeRecord {
        schema: SCHEMA,
        name: name.into(),
        underlay_ip: ip.parse().unwrap(),
        underlay_subnet: "198.51.100.0/24".parse().unwrap(),
        underlay_ip6: None,
        vtep_mac: None,
        vtep_ip: None,
        vni: None,
        networks: vec![NET.into()],
        mode: "host-gw".into(),
    };
    let _r1 = Registration::register(store.clone(), &rec("node-1", "198.51.100.2"), 30).unwrap();
    let _r2 = Registration::register(
        store.clone(),
        &rec(
            "a-node-with-an-unusually-long-hostname.example",
            "198.51.100.3",
        ),
        30,
    )
    .unwrap();
    let pool = |s: &str| PoolSpec {
        subnet: s.parse().unwrap(),
        range_start: None,
        range_end: None,
        exclude: vec![],
        gateway: None,
    };
    let mut spec = NetworkSpec::new(NET, vec![pool("198.18.0.0/24"), pool("fd00:18::/120")]);
    spec.cooldown_seconds = 0;
    let ipam = Ipam::new(&*store);
    let mut first = String::new();
    for i in 0..6 {
        let node = if i % 2 == 0 {
            "node-1"
        } else {
            "a-node-with-an-unusually-long-hostname.example"
        };
        let got = ipam
            .allocate(
                &spec,
                &AllocateRequest {
                    container_id: format!("{i:064x}"),
                    ifname: "eth0".into(),
                    node: node.into(),
                    requested: vec![],
                    pod: Some(format!(
                        "a-namespace-with-a-long-name/a-deployment-pod-name-{i}-7f9c6d8b5-x2x4z"
                    )),
                    fixed: None,
                    ..Default::default()
                },
            )
            .unwrap();
        if i == 0 {
            first = got.addresses[0].address.addr().to_string();
        }
    }

    // -o json, read back.
    let nets = json_of(&api.weftctl(&["get", "networks", "-o", "json"], &[]));
    assert_eq!(nets[0]["name"], NET);
    assert_eq!(nets[0]["usage"][0]["used"], 6);
    let one = json_of(&api.weftctl(&["get", "network", NET, "-o", "json"], &[]));
    assert_eq!(one["cooldownSeconds"], 0);
    let ips = json_of(&api.weftctl(&["get", "ips", "-o", "json"], &[]));
    assert_eq!(ips.as_array().unwrap().len(), 6);
    let on1 = json_of(&api.weftctl(&["get", "ips", "--node", "node-1", "-o", "json"], &[]));
    assert_eq!(on1.as_array().unwrap().len(), 3);
    let ip = json_of(&api.weftctl(&["get", "ip", &first, "-o", "json"], &[]));
    assert_eq!(ip["state"], "allocated");
    assert_eq!(ip["node"], "node-1");
    let nodes = json_of(&api.weftctl(&["get", "nodes", "-o", "json"], &[]));
    assert_eq!(nodes.as_array().unwrap().len(), 2);
    assert!(
        nodes
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["registered"] == true)
    );
    let res = json_of(&api.weftctl(&["get", "reservations", "-o", "json"], &[]));
    assert_eq!(res[0]["policy"], "workload");
    let pools = json_of(&api.weftctl(&["get", "pools", "--network", NET, "-o", "json"], &[]));
    assert_eq!(pools[0]["name"], "web");
    let allocs = json_of(&api.weftctl(
        &[
            "get",
            "allocations",
            "--pod",
            "a-namespace-with-a-long-name/a-deployment-pod-name-1-7f9c6d8b5-x2x4z",
            "-o",
            "json",
        ],
        &[],
    ));
    assert_eq!(allocs.as_array().unwrap().len(), 1);
    let yaml = ok(&api.weftctl(&["get", "networks", "-o", "yaml"], &[]));
    assert!(yaml.contains(&format!("name: {NET}")), "{yaml}");

    // Default tables fit 80 columns; wide ones carry more.
    for args in [
        vec!["get", "networks"],
        vec!["get", "ips"],
        vec!["get", "allocations"],
        vec!["get", "nodes"],
        vec!["get", "reservations"],
        vec!["get", "pools", "--network", NET],
        vec!["get", "ip", &first],
        vec!["describe", "network", NET],
        vec!["describe", "ip", &first],
        vec!["describe", "node", "node-1"],
        vec!["check"],
    ] {
        let out = ok(&api.weftctl(&args, &[]));
        fits_80(&out, &args.join(" "));
    }
    let t = ok(&api.weftctl(&["get", "ips"], &[]));
    assert!(t.starts_with("ADDRESS"), "{t}");
    assert_eq!(
        t.lines().count(),
        1 + 12,
        "dual-stack: a row per address\n{t}"
    );
    assert!(t.contains(&first), "{t}");
    let wide = ok(&api.weftctl(&["get", "ips", "-o", "wide"], &[]));
    assert!(
        wide.contains("CONTAINER") && wide.contains(&format!("{:064x}", 0)),
        "{wide}"
    );
    let d = ok(&api.weftctl(&["describe", "ip", &first], &[]));
    assert!(
        d.contains("node-1") && d.contains("a-deployment-pod-name-0"),
        "{d}"
    );
    // A narrower terminal is honoured.
    let narrow = ok(&api.weftctl(&["get", "ips"], &[("COLUMNS", "60")]));
    assert!(narrow.lines().all(|l| l.chars().count() <= 60), "{narrow}");

    // reserve / release.
    let out = ok(&api.weftctl(
        &["reserve", "ops/vip", "198.18.0.250", "--network", NET],
        &[],
    ));
    assert!(out.contains("198.18.0.250"), "{out}");
    let ip = json_of(&api.weftctl(&["get", "ip", "198.18.0.250", "-o", "json"], &[]));
    assert_eq!(ip["state"], "reserved");
    ok(&api.weftctl(&["release", "ops/vip", "--network", NET], &[]));
    let o = api.weftctl(&["get", "ip", "198.18.0.250"], &[]);
    assert_eq!(code(&o), 3, "not found after release: {}", text(&o));
    ok(&api.weftctl(&["release", "web", "--pool", "--network", NET], &[]));
    let o = api.weftctl(&["get", "pools", "--network", NET, "-o", "json"], &[]);
    assert_eq!(json_of(&o), Value::Array(vec![]));

    // apply edits the network.
    std::fs::write(
        &manifest,
        MANIFEST.replace("cooldownSeconds: 0", "cooldownSeconds: 7"),
    )
    .unwrap();
    ok(&api.weftctl(&["apply", "-f", m], &[]));
    let one = json_of(&api.weftctl(&["get", "network", NET, "-o", "json"], &[]));
    assert_eq!(one["cooldownSeconds"], 7);

    // check: exit 0 when nothing is found, 6 when findings remain (matches its JSON).
    let report = json_of(&api.weftctl(&["check", "-o", "json"], &[]));
    let o = api.weftctl(&["check"], &[]);
    let expect = if report["findings"].as_array().unwrap().is_empty() {
        0
    } else {
        6
    };
    assert_eq!(code(&o), expect, "{}", text(&o));
    let o = api.weftctl(&["check", "--repair"], &[]);
    assert_eq!(code(&o), expect, "{}", text(&o));

    // Exit codes.
    let o = api.weftctl(&["get", "network", "nope"], &[]);
    assert_eq!(code(&o), 3, "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("nope"));
    let o = api.weftctl(
        &["get", "networks"],
        &[("WEFT_TOKEN", "wrong-token-wrong-token")],
    );
    assert_eq!(code(&o), 4, "{}", text(&o));
    let o = api.weftctl(&["delete", "network", NET], &[("WEFT_TOKEN", READ)]);
    assert_eq!(code(&o), 4, "read token deleting: {}", text(&o));
    let o = api.weftctl(&["delete", "network", NET], &[]);
    assert_eq!(code(&o), 5, "live allocations: {}", text(&o));
    let o = api.weftctl(&["reserve", "x/y", "10.1.2.3", "--network", NET], &[]);
    assert_eq!(code(&o), 7, "outside the pools: {}", text(&o));
    let o = api.weftctl(&["get", "frobs"], &[]);
    assert_eq!(code(&o), 2, "{}", text(&o));
    std::fs::write(dir.join("bad.yaml"), "kind: Gadget\nmetadata: {name: x}\n").unwrap();
    let o = api.weftctl(
        &["create", "-f", dir.join("bad.yaml").to_str().unwrap()],
        &[],
    );
    assert_eq!(code(&o), 2, "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("Gadget"));
    let o = api.weftctl(
        &["get", "networks"],
        &[("WEFT_API_URL", "http://127.0.0.1:9")],
    );
    assert_eq!(code(&o), 1, "unreachable: {}", text(&o));

    // The config file instead of the environment.
    std::fs::create_dir_all(dir.join(".config/weft")).unwrap();
    std::fs::write(
        dir.join(".config/weft/weftctl.yaml"),
        format!("server: {}\ntoken: {ADMIN}\n", api.url),
    )
    .unwrap();
    let mut c = std::process::Command::new(weftctl_bin());
    let o = c
        .args(["get", "nodes", "-o", "json"])
        .env_clear()
        .env("HOME", &dir)
        .output()
        .unwrap();
    assert_eq!(json_of(&o).as_array().unwrap().len(), 2);

    // Completions.
    for sh in ["bash", "zsh", "fish"] {
        let out = ok(&api.weftctl(&["completion", sh], &[]));
        assert!(out.contains("weftctl") && out.contains("reserve"), "{sh}");
    }

    // Forced delete.
    let out = ok(&api.weftctl(&["delete", "network", NET, "--force"], &[]));
    assert!(out.contains("6 allocations"), "{out}");
    assert!(keys(&*store, "/weft/v1/handles/").is_empty());
    let nets = json_of(&api.weftctl(&["get", "networks", "-o", "json"], &[]));
    assert_eq!(nets, Value::Array(vec![]));
}
