//! Metrics end to end, in the lab of `common` (needs root and `cargo build -p weft-plugin --bin
//! weft` first): weftd with `--metrics-listen` on two nodes, the real `weft` plugin run exactly
//! as a runtime runs it through a scripted sequence of ADDs, DELs and a CHECK (some failing on
//! purpose), then weftd's `/metrics` and `weft_metrics::render_api` on the lab's etcd are parsed
//! back (a strict OpenMetrics reader) and their values checked exactly.
//!
//! The plugin finds weftd's report socket by the default rule on both sides
//! (`/run/weft/weftd-<node>.sock`), so the nodes get names unique to this test process; weftd
//! removes its socket when it exits on SIGTERM, and the test removes it if weftd dies.
mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{Lab, POOL, POOL6, wait_until};
use serde_json::{Value, json};
use weft_metrics::text::{Exposition, parse};

const PORT: u16 = 9587;

/// Removes the report sockets if weftd could not (killed).
struct Sockets(Vec<PathBuf>);

impl Drop for Sockets {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_file(p);
        }
        // weftd made /run/weft if it was missing; remove it again if nothing else uses it
        // (remove_dir fails on a non-empty directory).
        if let Some(dir) = self.0.first().and_then(|p| p.parent()) {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// Runs `f` on a thread inside the network namespace at `ns`.
fn in_netns<T: Send + 'static>(ns: &Path, f: impl FnOnce() -> T + Send + 'static) -> T {
    let ns = ns.to_path_buf();
    std::thread::spawn(move || {
        weft_dataplane::Netns::open(&ns)
            .expect("open netns")
            .run_in(f)
            .expect("enter netns")
    })
    .join()
    .expect("netns thread panicked")
}

/// One HTTP exchange with weftd's endpoint in node namespace `ns`: (status, whole response).
fn http(ns: &Path, request: &'static [u8]) -> Option<(u16, String)> {
    in_netns(ns, move || {
        let mut s = TcpStream::connect_timeout(
            &format!("127.0.0.1:{PORT}").parse().unwrap(),
            Duration::from_secs(2),
        )
        .ok()?;
        s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        s.write_all(request).ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        let status = out.split(' ').nth(1)?.parse().ok()?;
        Some((status, out))
    })
}

fn scrape(ns: &Path) -> (String, Exposition) {
    let (status, resp) = http(ns, b"GET /metrics HTTP/1.1\r\nHost: weftd\r\n\r\n")
        .expect("weftd's metrics endpoint answers");
    assert_eq!(status, 200, "{resp}");
    let (head, body) = resp.split_once("\r\n\r\n").expect("a response head");
    assert!(
        head.contains("Content-Type: application/openmetrics-text; version=1.0.0"),
        "{head}"
    );
    let e = parse(body).unwrap_or_else(|e| panic!("weftd's exposition is not valid: {e}\n{body}"));
    (body.to_string(), e)
}

/// The plugin's network configuration for node `i` (as the lab's, dual-stack).
fn conf(lab: &Lab, i: usize) -> Value {
    let node = &lab.nodes[i];
    json!({
        "cniVersion": "1.0.0",
        "name": lab.network,
        "type": "weft",
        "mode": "routed",
        "mtu": 1400,
        "ipam": {
            "pools": [{"subnet": POOL}, {"subnet": POOL6}],
            "cooldownSeconds": 0,
            "node": node.name,
            "dataDir": lab.dir.path().join(format!("data-{}", node.name)),
            "store": {"type": "etcd", "endpoints": [lab.etcd.endpoint()], "timeoutSeconds": 2},
        },
    })
}

/// Runs the plugin on node `i` as a runtime would; (succeeded, stdout as JSON).
fn cni(
    lab: &Lab,
    i: usize,
    cmd: &str,
    id: &str,
    netns: &Path,
    ifname: Option<&str>,
    conf: &Value,
) -> (bool, Value) {
    let out = lab
        .spawn_plugin(i, cmd, id, netns, ifname, None, &conf.to_string())
        .wait_with_output()
        .unwrap();
    let v = if out.stdout.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "{cmd} {id}: stdout is not JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    };
    (out.status.success(), v)
}

/// Usable addresses of a lab block: /26 of 198.18.0.0/24 (not .0, not .255) or /122 of
/// fd00:18::/64 (not fd00:18::).
fn usable(block: &str) -> f64 {
    match block {
        "198.18.0.0/26" | "198.18.0.192/26" | "fd00:18::/122" => 63.0,
        _ => 64.0,
    }
}

#[test]
fn metrics_after_scripted_adds_and_dels() {
    let mut lab = Lab::new("m");
    let pid = std::process::id();
    for (i, n) in lab.nodes.iter_mut().enumerate() {
        n.name = format!("met{pid}-{}", i + 1);
    }
    let sockets = Sockets(
        lab.nodes
            .iter()
            .map(|n| weft_metrics::report::default_socket(&n.name))
            .collect(),
    );
    let listen = format!("127.0.0.1:{PORT}");
    for i in 0..2 {
        lab.start_weftd_with(i, "hybrid", &["--metrics-listen", &listen]);
    }
    let (ns_a, ns_b) = (lab.nodes[0].ns.path(), lab.nodes[1].ns.path());
    for ns in [&ns_a, &ns_b] {
        wait_until(Duration::from_secs(10), || {
            http(ns, b"GET /metrics HTTP/1.1\r\n\r\n").is_some_and(|(s, _)| s == 200)
        })
        .unwrap_or_else(|| panic!("no metrics endpoint within 10 s\n{}", lab.logs()));
    }
    for s in &sockets.0[..2] {
        assert!(s.exists(), "weftd did not bind {}", s.display());
    }

    // The script, on node A (index 0) unless said otherwise.
    let pods: Vec<common::Netns> = (0..4).map(|_| common::Netns::new("p")).collect();
    let good = conf(&lab, 0);
    let mut bad_mtu = good.clone();
    bad_mtu["mtu"] = json!(10);
    let t0 = Instant::now();
    let mut add_results = Vec::new();
    for (k, id) in ["a1", "a2", "a3"].iter().enumerate() {
        let (ok, r) = cni(&lab, 0, "ADD", id, &pods[k].path(), Some("eth0"), &good);
        assert!(ok, "ADD {id}: {r}");
        assert_eq!(r["ips"].as_array().unwrap().len(), 2, "{r}");
        add_results.push(r);
    }
    let gone = PathBuf::from(format!("/run/netns/met-gone-{pid}"));
    let expect_fail = |r: (bool, Value), code: u64, what: &str| {
        assert!(!r.0, "{what} succeeded: {}", r.1);
        assert_eq!(r.1["code"], code, "{what}: {}", r.1);
    };
    // No such pod namespace: 3. The pod already has eth0: 102. Invalid config: 7.
    expect_fail(
        cni(&lab, 0, "ADD", "a4", &gone, Some("eth0"), &good),
        3,
        "ADD into a missing netns",
    );
    expect_fail(
        cni(&lab, 0, "ADD", "a1", &pods[0].path(), Some("eth0"), &good),
        102,
        "ADD of an existing interface",
    );
    expect_fail(
        cni(
            &lab,
            0,
            "ADD",
            "a5",
            &pods[3].path(),
            Some("eth0"),
            &bad_mtu,
        ),
        7,
        "ADD with mtu 10",
    );
    // DEL, DEL again (idempotent, releases nothing), DEL with a bad config.
    for _ in 0..2 {
        let (ok, r) = cni(&lab, 0, "DEL", "a2", &pods[1].path(), Some("eth0"), &good);
        assert!(ok, "DEL a2: {r}");
    }
    expect_fail(
        cni(
            &lab,
            0,
            "DEL",
            "a3",
            &pods[2].path(),
            Some("eth0"),
            &bad_mtu,
        ),
        7,
        "DEL with mtu 10",
    );
    // Refused before any verb runs (no CNI_IFNAME): not reported, so not counted.
    expect_fail(
        cni(&lab, 0, "DEL", "a3", &pods[2].path(), None, &good),
        4,
        "DEL without CNI_IFNAME",
    );
    let mut check = good.clone();
    check["prevResult"] = add_results[0].clone();
    let (ok, r) = cni(
        &lab,
        0,
        "CHECK",
        "a1",
        &pods[0].path(),
        Some("eth0"),
        &check,
    );
    assert!(ok, "CHECK a1: {r}");
    let script_took = t0.elapsed().as_secs_f64();
    // Node B: one pod.
    let pod_b = common::Netns::new("p");
    let (ok, r) = cni(
        &lab,
        1,
        "ADD",
        "b1",
        &pod_b.path(),
        Some("eth0"),
        &conf(&lab, 1),
    );
    assert!(ok, "ADD b1: {r}");

    // Reports are datagrams: wait until all 10 of node A's have been counted.
    wait_until(Duration::from_secs(5), || {
        scrape(&ns_a).1.get("weft_plugin_reports_total", &[]) == Some(10.0)
    })
    .unwrap_or_else(|| {
        panic!(
            "10 reports not counted\n{}\n{}",
            scrape(&ns_a).0,
            lab.logs()
        )
    });
    let (text, e) = scrape(&ns_a);
    eprintln!("{text}");
    let net = lab.network.as_str();
    let ops = |op: &str, result: &str, code: &str| {
        e.get(
            "weft_cni_operations_total",
            &[
                ("op", op),
                ("network", net),
                ("result", result),
                ("code", code),
            ],
        )
        .unwrap_or(0.0)
    };
    assert_eq!(ops("ADD", "ok", "0"), 3.0);
    assert_eq!(ops("ADD", "error", "3"), 1.0);
    assert_eq!(ops("ADD", "error", "102"), 1.0);
    assert_eq!(ops("ADD", "error", "7"), 1.0);
    assert_eq!(ops("DEL", "ok", "0"), 2.0);
    assert_eq!(ops("DEL", "error", "7"), 1.0);
    assert_eq!(ops("DEL", "error", "4"), 0.0);
    assert_eq!(ops("CHECK", "ok", "0"), 1.0);
    assert_eq!(e.sum("weft_cni_operations_total", &[]), 10.0);
    let hist = |op: &str, result: &str, suffix: &str| {
        e.get(
            &format!("weft_cni_operation_duration_seconds_{suffix}"),
            &[("op", op), ("network", net), ("result", result)],
        )
        .unwrap_or(0.0)
    };
    for (op, result, n) in [
        ("ADD", "ok", 3.0),
        ("ADD", "error", 3.0),
        ("DEL", "ok", 2.0),
        ("DEL", "error", 1.0),
        ("CHECK", "ok", 1.0),
    ] {
        assert_eq!(hist(op, result, "count"), n, "{op} {result}");
        let le_inf = e
            .get(
                "weft_cni_operation_duration_seconds_bucket",
                &[
                    ("op", op),
                    ("network", net),
                    ("result", result),
                    ("le", "+Inf"),
                ],
            )
            .unwrap();
        assert_eq!(le_inf, n, "{op} {result} +Inf bucket");
    }
    let total: f64 = e.sum("weft_cni_operation_duration_seconds_sum", &[]);
    assert!(
        total > 0.0 && total < script_took,
        "the verbs took {total} s in all, inside a script of {script_took} s"
    );
    // A successful ADD takes more than 1 ms (netlink, etcd): its 1 ms bucket is empty.
    assert_eq!(
        e.get(
            "weft_cni_operation_duration_seconds_bucket",
            &[
                ("op", "ADD"),
                ("network", net),
                ("result", "ok"),
                ("le", "0.001")
            ]
        ),
        Some(0.0)
    );
    assert_eq!(
        e.get("weft_ipam_allocated_addresses_total", &[("network", net)]),
        Some(6.0)
    );
    assert_eq!(
        e.get("weft_ipam_released_addresses_total", &[("network", net)]),
        Some(2.0)
    );
    assert_eq!(e.get("weft_plugin_reports_rejected_total", &[]), Some(0.0));
    let runs = e.get("weft_reconcile_runs_total", &[]).unwrap();
    assert!(runs >= 1.0, "reconcile runs {runs}");
    assert_eq!(
        e.get("weft_reconcile_duration_seconds_count", &[]),
        Some(runs)
    );
    assert_eq!(e.get("weft_reconcile_errors_total", &[]), Some(0.0));
    assert!(
        e.get("weft_reconcile_last_success_timestamp_seconds", &[])
            .unwrap()
            > 1.6e9
    );
    assert_eq!(e.get("weft_store_up", &[]), Some(1.0));

    // Pools: the blocks each node holds, from etcd.
    let blocks: Vec<(String, String)> = lab
        .etcd_list(&weft_ipam::blocks_prefix(net))
        .into_iter()
        .map(|(_, v)| {
            let b: Value = serde_json::from_slice(&v).unwrap();
            (
                b["cidr"].as_str().unwrap().to_string(),
                b["node"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    let size_of = |node: &str, v6: bool| -> f64 {
        blocks
            .iter()
            .filter(|(c, n)| n == node && c.contains(':') == v6)
            .map(|(c, _)| usable(c))
            .sum()
    };
    let (a, b) = (lab.nodes[0].name.clone(), lab.nodes[1].name.clone());
    let pool = |e: &Exposition, name: &str, fam: &str, node: &str| {
        e.get(name, &[("network", net), ("family", fam), ("node", node)])
    };
    for (fam, v6) in [("ipv4", false), ("ipv6", true)] {
        let size = size_of(&a, v6);
        assert!(size >= 63.0, "node A holds no {fam} block: {blocks:?}");
        assert_eq!(pool(&e, "weft_pool_size_addresses", fam, &a), Some(size));
        assert_eq!(pool(&e, "weft_pool_used_addresses", fam, &a), Some(2.0));
        assert_eq!(pool(&e, "weft_pool_cooling_addresses", fam, &a), Some(0.0));
        assert_eq!(pool(&e, "weft_pool_reserved_addresses", fam, &a), Some(0.0));
        assert_eq!(
            pool(&e, "weft_pool_free_addresses", fam, &a),
            Some(size - 2.0)
        );
        // weftd shows its own node only.
        assert_eq!(pool(&e, "weft_pool_size_addresses", fam, &b), None);
        let total = |name: &str| e.get(name, &[("network", net), ("family", fam)]);
        assert_eq!(total("weft_network_used_addresses"), Some(3.0));
        let full = if v6 {
            ((1u128 << 64) - 1) as f64
        } else {
            254.0
        };
        assert_eq!(total("weft_network_size_addresses"), Some(full));
    }
    assert!(e.family("weft_attachments").is_none());

    // Node B's weftd counted only B's ADD.
    let (_, eb) = scrape(&ns_b);
    assert_eq!(eb.get("weft_plugin_reports_total", &[]), Some(1.0));
    assert_eq!(
        eb.get("weft_ipam_allocated_addresses_total", &[("network", net)]),
        Some(2.0)
    );

    // weft-api's rendering, on the same etcd: every node.
    let (store_ns, ep) = (lab.store.path(), lab.etcd.endpoint());
    let api_text = in_netns(&store_ns, move || {
        let store =
            weft_store::etcd::EtcdStore::connect(&[ep], weft_store::etcd::EtcdOptions::default())
                .expect("etcd client");
        weft_metrics::render_api(&store).expect("render_api")
    });
    let api = parse(&api_text).unwrap_or_else(|e| panic!("render_api: {e}\n{api_text}"));
    for (fam, v6) in [("ipv4", false), ("ipv6", true)] {
        for (node, used) in [(&a, 2.0), (&b, 1.0)] {
            let size = size_of(node, v6);
            assert_eq!(
                pool(&api, "weft_pool_used_addresses", fam, node),
                Some(used)
            );
            assert_eq!(
                pool(&api, "weft_pool_size_addresses", fam, node),
                Some(size)
            );
            assert_eq!(
                pool(&api, "weft_pool_free_addresses", fam, node),
                Some(size - used)
            );
            assert_eq!(
                api.get("weft_attachments", &[("network", net), ("node", node)]),
                Some(used)
            );
        }
        assert_eq!(
            api.get(
                "weft_network_free_addresses",
                &[("network", net), ("family", fam)]
            ),
            Some(if v6 {
                ((1u128 << 64) - 4) as f64
            } else {
                251.0
            })
        );
    }

    // The endpoint under abuse: bad requests get their status, a flood of idle connections
    // gets 503 beyond the limit, and the agent keeps reconciling throughout.
    for (req, status) in [
        (&b"POST /metrics HTTP/1.1\r\n\r\n"[..], 405),
        (b"GET /nope HTTP/1.1\r\n\r\n", 404),
        (b"\x16\x03\x01garbage\r\n\r\n", 400),
        (b"HEAD /metrics HTTP/1.1\r\n\r\n", 200),
    ] {
        let (s, resp) = http(&ns_a, req).expect("an answer");
        assert_eq!(s, status, "{resp}");
    }
    let runs_before = scrape(&ns_a)
        .1
        .get("weft_reconcile_runs_total", &[])
        .unwrap();
    let idle: Vec<TcpStream> = in_netns(&ns_a, || {
        (0..weft_agent::metrics::MAX_CONNECTIONS + 2)
            .map(|_| TcpStream::connect(format!("127.0.0.1:{PORT}")).unwrap())
            .collect()
    });
    std::thread::sleep(Duration::from_millis(200));
    let t = Instant::now();
    let (s, _) = http(&ns_a, b"GET /metrics HTTP/1.1\r\n\r\n").expect("an answer");
    assert_eq!(s, 503, "a scrape beyond the connection limit");
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "503 took {:?}",
        t.elapsed()
    );
    std::thread::sleep(Duration::from_millis(1200)); // the lab's resync is 500 ms
    drop(idle);
    wait_until(Duration::from_secs(3), || {
        http(&ns_a, b"GET /metrics HTTP/1.1\r\n\r\n").is_some_and(|(s, _)| s == 200)
    })
    .expect("scrapes work again once the idle connections close");
    let runs_after = scrape(&ns_a)
        .1
        .get("weft_reconcile_runs_total", &[])
        .unwrap();
    assert!(
        runs_after >= runs_before + 2.0,
        "reconcile passes went on: {runs_before} -> {runs_after}"
    );
    // Concurrent scrapes all succeed.
    let handles: Vec<_> = (0..6)
        .map(|_| {
            let ns = ns_a.clone();
            std::thread::spawn(move || scrape(&ns).1.get("weft_plugin_reports_total", &[]))
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap(), Some(10.0));
    }

    // weftd removes its report socket when it exits.
    for i in 0..2 {
        assert!(
            lab.nodes[i].weftd.as_mut().unwrap().terminate(),
            "weftd exit"
        );
        assert!(
            !sockets.0[i].exists(),
            "{} left behind",
            sockets.0[i].display()
        );
    }
    drop(pods);
}
