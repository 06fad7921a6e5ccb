//! The operator's view, end to end: `weftctl check` / `check --repair` and the `/metrics`
//! endpoints, driven through the real `weft-api` against a real three-node lab.
//!
//! The lab: etcd and weft-api (admin and read tokens) in a "store" network namespace on an
//! underlay bridge (198.51.100.1), three "node" namespaces on it (198.51.100.2-4) each running
//! the real `weftd` (host-gw, 2 s lease, `--metrics-listen 127.0.0.1:9587` in the node's own
//! namespace, its report socket in the test's temp dir), pods that are network namespaces
//! attached by the real `weft` plugin (routed mode, IPAM on the lab's etcd), and the real
//! `weftctl` run inside the store namespace with the admin token.
//!
//! 1. Metrics after a script (6 ADDs and 2 DELs on node-1, 2 ADDs on node-2, 1 on node-3, one
//!    ADD into a missing netns on node-1): weft-api's `GET /metrics` answers 401 without a
//!    token and 200 with the read token; its pool gauges per node equal the allocation records
//!    in etcd; each weftd's `/metrics` has the exact verb counts and histogram counts, and its
//!    pool gauges and network totals agree with weft-api's.
//! 2. `weftctl check` on the healthy lab: exit 0, "No problems found", no findings in `-o json`.
//! 3. Four faults, each made for real, then: `check` exits 6 and names exactly it (table and
//!    `-o json`); `check --repair` (the plan) exits 6 and leaves the store as it was;
//!    `check --repair --yes` repairs it; `check` exits 0 again; another `--repair --yes` does
//!    nothing. (a) a pod's host veth deleted -> leak, the address then unknown to
//!    `weftctl get ip` (exit 3), and a pod whose veth goes right after its ADD is no leak
//!    within the grace period but one after it; (b) an allocation released in etcd while its veth stays ->
//!    orphan interface and route, deleted by node-2's weftd; (c) a second record of an address
//!    written into etcd -> duplicate, the copy removed; (d) node-3's weftd killed for good ->
//!    its block stale and its pod's allocation leaked: the first `--repair --yes` only marks
//!    the node gone (exit 6, both "skipped"), the one after the grace period releases both;
//!    (e) a reservation made with `weftctl reserve`, rewritten in etcd with an address outside
//!    the pool -> reservation-outside-pool, the reservation dropped and its address free.
//!    (A borrowed address without its route needs a paused agent: crates/agent/tests/check.rs.)
//!
//! Grace: `--grace-seconds 2`. An ADD takes milliseconds from its IPAM commit to its veth, a
//! node's report must also be newer than an allocation to judge it, and the gone node's lease
//! is 2 s: 2 s is the smallest grace that is still a real safety margin rather than 0.
//!
//! Needs root and the other packages' binaries in the same target dir: `cargo build -p
//! weft-plugin --bin weft -p weft-agent --bin weftd -p weft-cli --bin weftctl` (or `$WEFT_PLUGIN`,
//! `$WEFTD`, `$WEFTCTL`). Nothing is done in the root namespace but creating and deleting
//! namespaces; every process is killed by PID and every namespace deleted on drop.
mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{ADMIN, READ, text, weftctl_bin};
use serde_json::{Value, json};
use weft_dataplane::testing::TestNetns;
use weft_metrics::text::{Exposition, parse};
use weft_store::Store;
use weft_store::testing::EtcdServer;

const NET: &str = "cluster";
const POOL: &str = "198.18.0.0/24";
const GRACE: &str = "2";
const GRACE_SECONDS: u64 = 2;
const API_LISTEN: &str = "127.0.0.1:8750";
const METRICS_LISTEN: &str = "127.0.0.1:9587";

/// A network namespace (`wops<tag>-<pid>-<n>`, lo up), deleted on drop.
fn netns(tag: &str) -> TestNetns {
    TestNetns::new("wops", tag)
}

/// `prog` in the namespace `ns`, killed when the test process dies.
fn spawn(ns: &TestNetns, prog: &Path, args: &[&str], log: &Path) -> Proc {
    let child = ns
        .command_killed_with_test(prog)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(log).unwrap()))
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", prog.display()));
    Proc(child)
}

/// A child (nsenter and setpriv exec, so the PID is the program's), killed by PID and reaped
/// on drop.
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

type Job = Box<dyn FnOnce(&dyn Store) + Send>;

/// An etcd client on a thread in the store namespace (the only place etcd is reachable from).
struct Client {
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Client {
    fn new(ns: &Path, endpoint: String) -> Client {
        let ns = ns.to_path_buf();
        let (tx, rx) = mpsc::channel::<Job>();
        let thread = std::thread::spawn(move || {
            weft_dataplane::Netns::open(&ns)
                .expect("open the store netns")
                .run_in(|| {
                    let store =
                        weft_store::etcd::EtcdStore::connect(&[endpoint], Default::default())
                            .expect("etcd client");
                    while let Ok(job) = rx.recv() {
                        job(&store);
                    }
                })
                .expect("enter the store netns");
        });
        Client {
            jobs: Some(tx),
            thread: Some(thread),
        }
    }

    fn with<T: Send + 'static>(&self, f: impl FnOnce(&dyn Store) -> T + Send + 'static) -> T {
        let (tx, rx) = mpsc::channel();
        self.jobs
            .as_ref()
            .unwrap()
            .send(Box::new(move |s| {
                let _ = tx.send(f(s));
            }))
            .unwrap();
        rx.recv().expect("store job panicked")
    }

    fn get(&self, key: &str) -> Option<Vec<u8>> {
        let key = key.to_string();
        self.with(move |s| s.get(&key).unwrap().map(|kv| kv.value))
    }

    fn put(&self, key: &str, value: Vec<u8>) {
        let key = key.to_string();
        self.with(move |s| {
            s.commit(&weft_store::Txn {
                compares: vec![],
                ops: vec![weft_store::Op::Put { key, value }],
            })
            .unwrap()
        });
    }

    /// Every record under `/weft/v1/` except the nodes' reports, which their weftd rewrites
    /// on its own: what a repair may change.
    fn snapshot(&self) -> BTreeMap<String, String> {
        self.with(|s| {
            s.list(&format!("{}/", weft_ipam::KEY_ROOT))
                .unwrap()
                .into_iter()
                .filter(|kv| !kv.key.starts_with(&weft_check::report_key("")))
                .map(|kv| (kv.key, String::from_utf8_lossy(&kv.value).into_owned()))
                .collect()
        })
    }

    /// The allocation records of the network: handle -> (node, addresses without prefix).
    fn allocations(&self) -> BTreeMap<String, (String, Vec<String>)> {
        self.with(|s| {
            s.list(&weft_ipam::handles_prefix(NET))
                .unwrap()
                .into_iter()
                .map(|kv| {
                    let a: weft_ipam::Allocation = serde_json::from_slice(&kv.value).unwrap();
                    let addrs = a.addresses.iter().map(|x| x.addr().to_string()).collect();
                    (a.handle.clone(), (a.node.clone(), addrs))
                })
                .collect()
        })
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.jobs.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The lab (see the module docs). Field order is drop order: daemons first, the temp dir last.
struct Lab {
    weftd: Vec<Option<Proc>>,
    pods: Vec<TestNetns>,
    nodes: Vec<TestNetns>,
    _api: Proc,
    client: Client,
    etcd: EtcdServer,
    store: TestNetns,
    dir: tempfile::TempDir,
    weftd_bin: PathBuf,
    plugin_bin: PathBuf,
    weftctl_bin: PathBuf,
}

impl Lab {
    fn new() -> Lab {
        let uid = Command::new("id").arg("-u").output().unwrap();
        assert_eq!(
            String::from_utf8_lossy(&uid.stdout).trim(),
            "0",
            "this test needs root: it creates network namespaces (CI runs it as root)"
        );
        let weftd_bin = sibling("weftd", "WEFTD", "cargo build -p weft-agent --bin weftd");
        let plugin_bin = sibling(
            "weft",
            "WEFT_PLUGIN",
            "cargo build -p weft-plugin --bin weft",
        );
        let weftctl_bin = weftctl_bin();
        let dir = tempfile::Builder::new()
            .prefix("weft-api-ops-")
            .tempdir()
            .unwrap();
        let store = netns("s");
        store.ok(&["ip", "link", "add", "br0", "type", "bridge"]);
        store.ok(&["ip", "addr", "add", "198.51.100.1/24", "dev", "br0"]);
        store.ok(&["ip", "link", "set", "br0", "up"]);
        let mut nodes = Vec::new();
        for i in 0..3 {
            let ns = netns("n");
            let port = format!("n{i}");
            store.ok(&[
                "ip", "link", "add", &port, "type", "veth", "peer", "name", "uplink", "netns",
                &ns.name,
            ]);
            store.ok(&["ip", "link", "set", &port, "master", "br0", "up"]);
            let addr = format!("198.51.100.{}/24", i + 2);
            ns.ok(&["ip", "addr", "add", &addr, "dev", "uplink"]);
            ns.ok(&["ip", "link", "set", "uplink", "up"]);
            nodes.push(ns);
        }
        let etcd = EtcdServer::start_in(&store.path(), "198.51.100.1".parse().unwrap());
        std::fs::write(dir.path().join("admin"), format!("{ADMIN}\n")).unwrap();
        std::fs::write(dir.path().join("read"), format!("{READ}\n")).unwrap();
        let admin = dir.path().join("admin");
        let read = dir.path().join("read");
        let api = spawn(
            &store,
            Path::new(env!("CARGO_BIN_EXE_weft-api")),
            &[
                "--etcd",
                &etcd.endpoint(),
                "--listen",
                API_LISTEN,
                "--admin-token-file",
                admin.to_str().unwrap(),
                "--read-token-file",
                read.to_str().unwrap(),
            ],
            &dir.path().join("api.log"),
        );
        let client = Client::new(&store.path(), etcd.endpoint());
        Lab {
            weftd: vec![None, None, None],
            pods: Vec::new(),
            nodes,
            _api: api,
            client,
            etcd,
            store,
            dir,
            weftd_bin,
            plugin_bin,
            weftctl_bin,
        }
    }

    fn node(i: usize) -> String {
        format!("node-{}", i + 1)
    }

    fn report_socket(&self, i: usize) -> PathBuf {
        self.dir
            .path()
            .join(format!("report-{}.sock", Lab::node(i)))
    }

    fn start_weftd(&mut self, i: usize) {
        let sock = self.report_socket(i);
        let log = self.dir.path().join(format!("weftd-{}.log", Lab::node(i)));
        let p = spawn(
            &self.nodes[i],
            &self.weftd_bin,
            &[
                "--node",
                &Lab::node(i),
                "--underlay-interface",
                "uplink",
                "--etcd",
                &self.etcd.endpoint(),
                "--network",
                NET,
                "--mode",
                "host-gw",
                "--lease-ttl",
                "2",
                "--resync-millis",
                "500",
                "--metrics-listen",
                METRICS_LISTEN,
                "--report-socket",
                sock.to_str().unwrap(),
            ],
            &log,
        );
        self.weftd[i] = Some(p);
    }

    fn logs(&self) -> String {
        let mut s = format!(
            "--- weft-api:\n{}\n",
            std::fs::read_to_string(self.dir.path().join("api.log")).unwrap_or_default()
        );
        for i in 0..3 {
            let log = self.dir.path().join(format!("weftd-{}.log", Lab::node(i)));
            let state = match &self.weftd[i] {
                Some(p) => std::fs::read_to_string(format!("/proc/{}/stat", p.0.id())).map_or(
                    "exited".into(),
                    |st| {
                        format!(
                            "running, /proc stat {}",
                            st.split(' ').nth(2).unwrap_or("?")
                        )
                    },
                ),
                None => "stopped by the test".into(),
            };
            s.push_str(&format!(
                "--- weftd on {} ({state}):\n{}\n",
                Lab::node(i),
                std::fs::read_to_string(log).unwrap_or_default()
            ));
        }
        s
    }

    /// weftctl in the store namespace with the admin token (tables 200 columns wide, so no
    /// cell is cut).
    fn ctl(&self, args: &[&str]) -> Output {
        self.store
            .command(&self.weftctl_bin)
            .args(args)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("HOME", self.dir.path())
            .env("COLUMNS", "200")
            .env("WEFT_API_URL", format!("http://{API_LISTEN}"))
            .env("WEFT_TOKEN", ADMIN)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// weftctl with `-o json`: (exit code, the JSON it printed).
    fn ctl_json(&self, args: &[&str]) -> (i32, Value) {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        let o = self.ctl(&a);
        let v = serde_json::from_slice(&o.stdout)
            .unwrap_or_else(|e| panic!("weftctl {a:?}: not JSON ({e}): {}", text(&o)));
        (o.status.code().unwrap_or(-1), v)
    }

    /// Waits (up to `secs`) for `f`; panics with the logs.
    fn wait(&self, what: &str, secs: u64, mut f: impl FnMut() -> bool) {
        let t = Instant::now();
        while !f() {
            assert!(
                t.elapsed() < Duration::from_secs(secs),
                "{what}: not within {secs} s\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(150));
        }
    }

    fn conf(&self, i: usize) -> Value {
        json!({
            "cniVersion": "1.0.0",
            "name": NET,
            "type": "weft",
            "mode": "routed",
            "mtu": 1400,
            "reportSocket": self.report_socket(i),
            "ipam": {
                "pools": [{"subnet": POOL}],
                "cooldownSeconds": 0,
                "node": Lab::node(i),
                "dataDir": self.dir.path().join(format!("data-{}", Lab::node(i))),
                "store": {"type": "etcd", "endpoints": [self.etcd.endpoint()], "timeoutSeconds": 2},
            },
        })
    }

    /// The plugin run on node `i` as a runtime runs it: (succeeded, stdout as JSON).
    fn cni(&self, i: usize, cmd: &str, cid: &str, netns: &Path) -> (bool, Value) {
        let mut child = self.nodes[i]
            .command(&self.plugin_bin)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("CNI_COMMAND", cmd)
            .env("CNI_CONTAINERID", cid)
            .env("CNI_IFNAME", "eth0")
            .env("CNI_NETNS", netns)
            .env("CNI_PATH", "/usr/lib/cni")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the weft plugin");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(self.conf(i).to_string().as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let v = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        (out.status.success(), v)
    }

    /// A pod on node `i` (container `cid`): its namespace's index in `pods` and its address.
    fn add_pod(&mut self, i: usize, cid: &str) -> (usize, String) {
        let pod = netns("p");
        let (ok, r) = self.cni(i, "ADD", cid, &pod.path());
        assert!(ok, "ADD {cid} on {}: {r}\n{}", Lab::node(i), self.logs());
        let ip = r["ips"][0]["address"].as_str().unwrap();
        let ip = ip.split('/').next().unwrap().to_string();
        self.pods.push(pod);
        (self.pods.len() - 1, ip)
    }

    /// The host-side link of node `i` whose alias names container `cid`.
    fn veth_of(&self, i: usize, cid: &str) -> Option<String> {
        let out = self.nodes[i].ok(&["ip", "-j", "link", "show"]);
        let v: Value = serde_json::from_str(&out).unwrap();
        v.as_array()?.iter().find_map(|l| {
            let alias = l["ifalias"].as_str()?;
            alias
                .ends_with(&format!(":{cid}:eth0"))
                .then(|| l["ifname"].as_str().unwrap().to_string())
        })
    }

    /// weftd's `/metrics` in node `i`'s namespace, parsed strictly (None: no answer yet).
    fn scrape_weftd(&self, i: usize) -> Option<Exposition> {
        let resp = in_netns(&self.nodes[i].path(), || {
            let mut s = TcpStream::connect_timeout(
                &METRICS_LISTEN.parse().unwrap(),
                Duration::from_secs(2),
            )
            .ok()?;
            s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: weftd\r\n\r\n")
                .ok()?;
            let mut out = String::new();
            s.read_to_string(&mut out).ok()?;
            Some(out)
        })?;
        let (head, body) = resp.split_once("\r\n\r\n")?;
        assert!(head.starts_with("HTTP/1.1 200"), "{resp}");
        Some(parse(body).unwrap_or_else(|e| panic!("weftd's exposition: {e}\n{body}")))
    }

    /// `GET path` on weft-api over HTTP, from inside the store namespace: (status, content
    /// type, body).
    fn api_get(&self, path: &str, token: Option<&'static str>) -> (u16, String, String) {
        let url = format!("http://{API_LISTEN}{path}");
        in_netns(&self.store.path(), move || {
            let agent = common::agent(None);
            let mut req = agent.get(&url);
            if let Some(t) = token {
                req = req.header("Authorization", format!("Bearer {t}"));
            }
            let mut r = req.call().unwrap_or_else(|e| panic!("GET {url}: {e}"));
            let ct = r
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            let body = r.body_mut().read_to_string().unwrap_or_default();
            (r.status().as_u16(), ct, body)
        })
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
    }
}

/// The findings of a check report (or repair result) as sorted (kind, subject) pairs.
fn findings(v: &Value) -> Vec<(String, String)> {
    let mut f: Vec<(String, String)> = v["findings"]
        .as_array()
        .unwrap_or_else(|| panic!("no findings array: {v}"))
        .iter()
        .map(|f| {
            (
                f["kind"].as_str().unwrap().to_string(),
                f["subject"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    f.sort();
    f
}

fn want(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut w: Vec<(String, String)> = pairs
        .iter()
        .map(|(k, s)| (k.to_string(), s.to_string()))
        .collect();
    w.sort();
    w
}

/// Polls `weftctl check -o json` until its findings are exactly `w` (a node's report lags
/// its kernel by up to a collection period, a lease takes its TTL to expire); the report.
fn check_until(lab: &Lab, what: &str, w: &[(String, String)]) -> Value {
    let t = Instant::now();
    loop {
        let (code, v) = lab.ctl_json(&["check", "--grace-seconds", GRACE]);
        let f = findings(&v);
        if f == w {
            let expect = if w.is_empty() { 0 } else { 6 };
            assert_eq!(code, expect, "{what}: exit code of check with {f:?}");
            return v;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "{what}: check says {v:#}\nwanted {w:?}\nstore: {:?}\n{}",
            lab.client.snapshot().keys().collect::<Vec<_>>(),
            lab.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The fault is found and named, and the plan changes nothing.
fn found_and_planned(lab: &Lab, what: &str, w: &[(String, String)], node: &str) -> Value {
    let v = check_until(lab, what, w);
    for f in v["findings"].as_array().unwrap() {
        assert_eq!(f["network"], NET, "{what}: {f}");
        assert_eq!(f["node"], node, "{what}: {f}");
    }
    // The table: exit 6, a row per finding naming its kind, node and subject.
    let o = lab.ctl(&["check", "--grace-seconds", GRACE]);
    assert_eq!(o.status.code(), Some(6), "{what}: {}", text(&o));
    let table = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(table.starts_with("KIND"), "{what}: {table}");
    for (kind, subject) in w {
        assert!(
            table.lines().any(|l| l.starts_with(kind.as_str())
                && l.contains(subject.as_str())
                && l.contains(node)),
            "{what}: no row for {kind} {subject} on {node}:\n{table}"
        );
    }
    assert_eq!(table.lines().count(), 1 + w.len(), "{what}:\n{table}");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains(&format!("{} finding(s)", w.len())),
        "{what}: {}",
        text(&o)
    );

    // The plan: exit 6, the findings with their repairs, nothing applied, nothing changed.
    let before = lab.client.snapshot();
    let o = lab.ctl(&["check", "--repair", "--grace-seconds", GRACE]);
    assert_eq!(o.status.code(), Some(6), "{what}: plan: {}", text(&o));
    let plan = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        plan.contains("REPAIR") && plan.contains("This is the plan: run again with --yes"),
        "{what}: {plan}"
    );
    let (code, p) = lab.ctl_json(&["check", "--repair", "--grace-seconds", GRACE]);
    assert_eq!(code, 6, "{what}: plan -o json: {p}");
    assert_eq!(p["applied"], false, "{p}");
    assert_eq!(p["outcomes"], json!([]), "{p}");
    assert_eq!(findings(&p), w, "{what}: the plan's findings");
    assert!(
        p["findings"]
            .as_array()
            .unwrap()
            .iter()
            .all(|f| f["repair"].as_str().is_some_and(|r| !r.is_empty())),
        "{p}"
    );
    assert_eq!(
        lab.client.snapshot(),
        before,
        "{what}: the plan changed the store"
    );
    v
}

/// `check --repair --yes`, expecting every finding in `w` with outcome `status`; the result.
fn repair_yes(lab: &Lab, what: &str, w: &[(String, String)], status: &str) -> Value {
    let (code, v) = lab.ctl_json(&["check", "--repair", "--yes", "--grace-seconds", GRACE]);
    assert_eq!(v["applied"], true, "{what}: {v:#}");
    assert_eq!(findings(&v), w, "{what}: findings of the repair run: {v:#}");
    let mut got: Vec<(String, String, String)> = v["outcomes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            (
                o["finding"]["kind"].as_str().unwrap().to_string(),
                o["finding"]["subject"].as_str().unwrap().to_string(),
                o["status"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    got.sort();
    let expect: Vec<(String, String, String)> = w
        .iter()
        .map(|(k, s)| (k.clone(), s.clone(), status.to_string()))
        .collect();
    assert_eq!(got, expect, "{what}: outcomes {v:#}\n{}", lab.logs());
    let exit = if status == "done" { 0 } else { 6 };
    assert_eq!(code, exit, "{what}: exit of --repair --yes: {v:#}");
    v
}

/// After a repair: `check` is clean again (table and JSON), and a second `--repair --yes`
/// finds nothing and changes nothing.
fn clean_and_idempotent(lab: &Lab, what: &str) {
    let v = check_until(lab, &format!("{what}: after the repair"), &[]);
    assert_eq!(v["nodesWithoutReport"], json!([]), "{v}");
    let o = lab.ctl(&["check", "--grace-seconds", GRACE]);
    assert_eq!(o.status.code(), Some(0), "{what}: {}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).starts_with("No problems found"),
        "{what}: {}",
        text(&o)
    );
    let before = lab.client.snapshot();
    let o = lab.ctl(&["check", "--repair", "--yes", "--grace-seconds", GRACE]);
    assert_eq!(o.status.code(), Some(0), "{what}: {}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).starts_with("No problems found"),
        "{what}: second repair: {}",
        text(&o)
    );
    let after = lab.client.snapshot();
    assert_eq!(
        after, before,
        "{what}: a second --repair --yes changed the store"
    );
}

/// `weftctl get ip ADDR`: its exit code.
fn get_ip(lab: &Lab, addr: &str) -> Option<i32> {
    lab.ctl(&["get", "ip", addr]).status.code()
}

#[test]
fn check_repair_and_metrics_through_weftctl_and_weft_api() {
    let started = Instant::now();
    let mut lab = Lab::new();
    lab.wait("weft-api ready", 15, || {
        lab.ctl(&["get", "networks"]).status.success()
    });
    let manifest = lab.dir.path().join("net.yaml");
    std::fs::write(
        &manifest,
        format!(
            "kind: Network\nmetadata: {{name: {NET}}}\nspec: {{pools: [{{subnet: {POOL}}}], cooldownSeconds: 0}}\n"
        ),
    )
    .unwrap();
    let o = lab.ctl(&["create", "-f", manifest.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    for i in 0..3 {
        lab.start_weftd(i);
    }
    for i in 0..3 {
        lab.wait(&format!("weftd's /metrics on {}", Lab::node(i)), 15, || {
            lab.scrape_weftd(i).is_some()
        });
    }

    // ---- The script: ADDs (a, b, x1, x2, y1, y2 on node-1; c, d on node-2; e on node-3),
    // DELs of x1 and x2, one ADD into a missing netns on node-1.
    let mut ips = BTreeMap::new();
    for (i, cid) in [
        (0, "a"),
        (0, "b"),
        (0, "x1"),
        (0, "x2"),
        (0, "y1"),
        (0, "y2"),
        (1, "c"),
        (1, "d"),
        (2, "e"),
    ] {
        let (k, ip) = lab.add_pod(i, cid);
        ips.insert(cid, (i, k, ip));
    }
    for cid in ["x1", "x2"] {
        let (i, k, _) = ips[cid];
        let (ok, r) = lab.cni(i, "DEL", cid, &lab.pods[k].path());
        assert!(ok, "DEL {cid}: {r}");
    }
    let missing = PathBuf::from(format!("/run/netns/wops-missing-{}", std::process::id()));
    let (ok, err) = lab.cni(0, "ADD", "z", &missing);
    assert!(!ok, "ADD into a missing netns succeeded: {err}");
    let code = err["code"].as_u64().expect("a CNI error code").to_string();

    // ---- Metrics.
    let expected_reports = [9.0, 2.0, 1.0]; // node-1: 6 ADD + 2 DEL + 1 failed ADD
    for (i, n) in expected_reports.iter().enumerate() {
        lab.wait(
            &format!("{n} plugin reports on {}", Lab::node(i)),
            10,
            || {
                lab.scrape_weftd(i)
                    .is_some_and(|e| e.get("weft_plugin_reports_total", &[]) == Some(*n))
            },
        );
    }
    let (status, _, body) = lab.api_get("/metrics", None);
    assert_eq!(status, 401, "GET /metrics without a token: {body}");
    let (status, _, body) = lab.api_get("/metrics", Some("not-a-token-of-this-api-0000"));
    assert_eq!(status, 401, "GET /metrics with an unknown token: {body}");
    let (status, ct, body) = lab.api_get("/metrics", Some(READ));
    assert_eq!(status, 200, "GET /metrics with the read token: {body}");
    assert!(ct.starts_with("application/openmetrics-text"), "{ct}");
    let api = parse(&body).unwrap_or_else(|e| panic!("weft-api's exposition: {e}\n{body}"));

    let allocs = lab.client.allocations();
    assert_eq!(allocs.len(), 7, "{allocs:?}");
    let mut total_used = 0.0;
    for i in 0..3 {
        let node = Lab::node(i);
        let held: Vec<&(String, Vec<String>)> =
            allocs.values().filter(|(n, _)| *n == node).collect();
        let used = held.iter().map(|(_, a)| a.len()).sum::<usize>() as f64;
        total_used += used;
        let labels = [
            ("network", NET),
            ("family", "ipv4"),
            ("node", node.as_str()),
        ];
        assert_eq!(
            api.get("weft_pool_used_addresses", &labels),
            Some(used),
            "weft-api's used addresses of {node} against etcd's records\n{body}"
        );
        assert_eq!(
            api.get("weft_attachments", &[("network", NET), ("node", &node)]),
            Some(held.len() as f64),
            "weft-api's attachments of {node}\n{body}"
        );
        // weftd's view of its own node and of the network agrees with weft-api's.
        let w = lab.scrape_weftd(i).unwrap();
        for name in [
            "weft_pool_size_addresses",
            "weft_pool_used_addresses",
            "weft_pool_free_addresses",
            "weft_pool_blocks",
        ] {
            assert_eq!(
                w.get(name, &labels),
                api.get(name, &labels),
                "{name} of {node}: weftd against weft-api"
            );
        }
        let net = [("network", NET), ("family", "ipv4")];
        for name in [
            "weft_network_size_addresses",
            "weft_network_used_addresses",
            "weft_network_free_addresses",
            "weft_network_blocks",
        ] {
            assert_eq!(
                w.get(name, &net),
                api.get(name, &net),
                "{name}: weftd on {node} against weft-api"
            );
        }
        // What weftd counted the plugin allocate and release is what the store holds.
        let alloc = w
            .get("weft_ipam_allocated_addresses_total", &[("network", NET)])
            .unwrap_or(0.0);
        let rel = w
            .get("weft_ipam_released_addresses_total", &[("network", NET)])
            .unwrap_or(0.0);
        assert_eq!(alloc - rel, used, "allocated - released on {node}");
    }
    assert_eq!(
        api.get(
            "weft_network_used_addresses",
            &[("network", NET), ("family", "ipv4")]
        ),
        Some(total_used)
    );
    // The verbs, exactly, on node-1 (and the histogram counts with them); ADDs elsewhere.
    let w1 = lab.scrape_weftd(0).unwrap();
    let ops = |e: &Exposition, op: &str, result: &str, code: &str| {
        e.get(
            "weft_cni_operations_total",
            &[
                ("op", op),
                ("network", NET),
                ("result", result),
                ("code", code),
            ],
        )
    };
    let hist = |e: &Exposition, op: &str, result: &str| {
        e.get(
            "weft_cni_operation_duration_seconds_count",
            &[("op", op), ("network", NET), ("result", result)],
        )
    };
    assert_eq!(ops(&w1, "ADD", "ok", "0"), Some(6.0));
    assert_eq!(ops(&w1, "ADD", "error", &code), Some(1.0));
    assert_eq!(ops(&w1, "DEL", "ok", "0"), Some(2.0));
    assert_eq!(w1.sum("weft_cni_operations_total", &[]), 9.0);
    assert_eq!(hist(&w1, "ADD", "ok"), Some(6.0));
    assert_eq!(hist(&w1, "ADD", "error"), Some(1.0));
    assert_eq!(hist(&w1, "DEL", "ok"), Some(2.0));
    assert_eq!(
        w1.get("weft_ipam_allocated_addresses_total", &[("network", NET)]),
        Some(6.0)
    );
    assert_eq!(
        w1.get("weft_ipam_released_addresses_total", &[("network", NET)]),
        Some(2.0)
    );
    for (i, adds) in [(1, 2.0), (2, 1.0)] {
        let w = lab.scrape_weftd(i).unwrap();
        assert_eq!(ops(&w, "ADD", "ok", "0"), Some(adds), "{}", Lab::node(i));
        assert_eq!(hist(&w, "ADD", "ok"), Some(adds), "{}", Lab::node(i));
        assert_eq!(w.sum("weft_cni_operations_total", &[]), adds);
    }
    eprintln!("metrics checked after {:?}", started.elapsed());

    // ---- A healthy lab: every node reports, nothing is found. Judged only once every
    // allocation is older than the grace period and each node's report is newer than its
    // allocations (before that, "no problems" would be true of any lab).
    let newest = lab
        .client
        .with(|s| {
            s.list(&weft_ipam::handles_prefix(NET))
                .unwrap()
                .into_iter()
                .map(|kv| serde_json::from_slice::<weft_ipam::Allocation>(&kv.value).unwrap())
                .map(|a| a.created_at)
                .max()
        })
        .unwrap();
    lab.wait("reports newer than every allocation", 15, || {
        weft_ipam::now() >= newest + GRACE_SECONDS
            && (0..3).all(|i| {
                lab.client
                    .get(&weft_check::report_key(&Lab::node(i)))
                    .map(|v| serde_json::from_slice::<weft_check::NodeReport>(&v).unwrap())
                    .is_some_and(|r| r.generated_at > newest)
            })
    });
    let t = Instant::now();
    loop {
        let (code, v) = lab.ctl_json(&["check", "--grace-seconds", GRACE]);
        let nodes = v["nodes"].as_array().map_or(0, |n| n.len());
        if code == 0 && findings(&v).is_empty() && nodes == 3 {
            assert_eq!(v["allocations"], 7, "{v}");
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "a healthy lab: check says {v:#}\n{}",
            lab.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let o = lab.ctl(&["check", "--grace-seconds", GRACE]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "No problems found (7 allocations, 3 nodes compared).\n"
    );
    eprintln!("healthy after {:?}", started.elapsed());

    // ---- (a) pod a's host veth deleted by hand: a leak.
    let (_, _, ip_a) = ips["a"].clone();
    let veth = lab.veth_of(0, "a").expect("pod a's veth");
    lab.nodes[0].ok(&["ip", "link", "del", &veth]);
    assert_eq!(
        get_ip(&lab, &ip_a),
        Some(0),
        "before the repair {ip_a} is held"
    );
    let w = want(&[("leak", "a:eth0")]);
    found_and_planned(&lab, "deleted veth", &w, "node-1");
    repair_yes(&lab, "deleted veth", &w, "done");
    assert!(
        lab.client
            .get(&weft_ipam::handle_key(NET, "a:eth0"))
            .is_none(),
        "a's allocation is released"
    );
    let o = lab.ctl(&["get", "ip", &ip_a]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains(&ip_a),
        "{}",
        text(&o)
    );
    clean_and_idempotent(&lab, "deleted veth");
    // The grace period is real: a pod whose veth goes right after its ADD is no leak while
    // its allocation is younger than the grace period (60 s here, so the check always judges
    // it young, however loaded the machine), and is one once it is older (GRACE).
    let (_, ip_f) = lab.add_pod(0, "f");
    let veth = lab.veth_of(0, "f").expect("pod f's veth");
    lab.nodes[0].ok(&["ip", "link", "del", &veth]);
    let (code, young) = lab.ctl_json(&["check", "--grace-seconds", "60"]);
    assert_eq!(
        code, 0,
        "an allocation younger than the grace period called a leak: {young:#}"
    );
    assert_eq!(findings(&young), []);
    let w = want(&[("leak", "f:eth0")]);
    check_until(&lab, "veth deleted right after the ADD", &w);
    repair_yes(&lab, "veth deleted right after the ADD", &w, "done");
    assert_eq!(get_ip(&lab, &ip_f), Some(3));
    clean_and_idempotent(&lab, "veth deleted right after the ADD");
    eprintln!("(a) after {:?}", started.elapsed());

    // ---- (b) c's allocation released in the store while its veth stays: orphans on node-2.
    let (_, _, ip_c) = ips["c"].clone();
    let veth_c = lab.veth_of(1, "c").expect("pod c's veth");
    lab.client.with(|s| {
        weft_ipam::Ipam::new(s)
            .release(NET, "c", "eth0")
            .unwrap()
            .expect("c held an allocation")
    });
    let w = want(&[
        ("orphan", &format!("interface {veth_c}")),
        ("orphan", &format!("route {ip_c}/32 dev {veth_c}")),
    ]);
    found_and_planned(&lab, "released allocation", &w, "node-2");
    assert!(
        lab.veth_of(1, "c").is_some(),
        "the plan left the veth alone"
    );
    repair_yes(&lab, "released allocation", &w, "done");
    assert_eq!(lab.veth_of(1, "c"), None, "node-2's weftd deleted the veth");
    clean_and_idempotent(&lab, "released allocation");
    eprintln!("(b) after {:?}", started.elapsed());

    // ---- (c) a second record of d's address under another handle, written into etcd.
    let (_, _, ip_d) = ips["d"].clone();
    let mut copy: weft_ipam::Allocation = serde_json::from_slice(
        &lab.client
            .get(&weft_ipam::handle_key(NET, "d:eth0"))
            .expect("d's record"),
    )
    .unwrap();
    copy.container_id = "copy".into();
    copy.handle = "copy:eth0".into();
    lab.client.put(
        &weft_ipam::handle_key(NET, "copy:eth0"),
        serde_json::to_vec(&copy).unwrap(),
    );
    let w = want(&[("duplicate", &ip_d)]);
    found_and_planned(&lab, "duplicate", &w, "node-2");
    repair_yes(&lab, "duplicate", &w, "done");
    assert!(
        lab.client
            .get(&weft_ipam::handle_key(NET, "copy:eth0"))
            .is_none(),
        "the copy is gone"
    );
    let (code, who) = lab.ctl_json(&["get", "ip", &ip_d]);
    assert_eq!(code, 0, "{who}");
    assert_eq!(who["containerId"], "d", "the owner keeps {ip_d}: {who}");
    clean_and_idempotent(&lab, "duplicate");
    eprintln!("(c) after {:?}", started.elapsed());

    // ---- (d) node-3's weftd killed for good: its lease expires, its block is stale and its
    // pod's allocation leaked.
    let (_, _, ip_e) = ips["e"].clone();
    let block_e = lab.client.with(|s| {
        s.list(&weft_ipam::blocks_prefix(NET))
            .unwrap()
            .into_iter()
            .map(|kv| serde_json::from_slice::<weft_ipam::BlockRecord>(&kv.value).unwrap())
            .find(|b| b.node.as_deref() == Some("node-3"))
            .expect("node-3's block")
    });
    assert!(
        block_e
            .cidr
            .contains(&ip_e.parse::<std::net::IpAddr>().unwrap())
    );
    let cidr_e = block_e.cidr.to_string();
    lab.weftd[2].take();
    let w = want(&[("leak", "e:eth0"), ("stale-block", &cidr_e)]);
    found_and_planned(&lab, "gone node", &w, "node-3");
    // The first repair marks node-3 gone and releases nothing: it is gone for 0 s.
    let first = repair_yes(&lab, "gone node, first repair", &w, "skipped");
    let since = lab
        .client
        .get(&weft_check::gone_key("node-3"))
        .map(|v| {
            serde_json::from_slice::<weft_check::GoneMarker>(&v)
                .unwrap()
                .since
        })
        .unwrap_or_else(|| panic!("no gone marker for node-3 after {first:#}"));
    assert!(
        lab.client
            .get(&weft_ipam::handle_key(NET, "e:eth0"))
            .is_some(),
        "e's allocation is kept within the grace period"
    );
    while weft_ipam::now() < since + GRACE_SECONDS {
        std::thread::sleep(Duration::from_millis(100));
    }
    repair_yes(&lab, "gone node, after the grace period", &w, "done");
    assert!(
        lab.client
            .get(&weft_ipam::handle_key(NET, "e:eth0"))
            .is_none(),
        "e's allocation is released"
    );
    assert_eq!(get_ip(&lab, &ip_e), Some(3));
    let left = lab
        .client
        .get(&weft_ipam::block_key(NET, &block_e.cidr))
        .map(|v| serde_json::from_slice::<weft_ipam::BlockRecord>(&v).unwrap());
    assert!(
        left.is_none_or(|b| b.node.is_none()),
        "node-3's claim is dropped"
    );
    clean_and_idempotent(&lab, "gone node");
    eprintln!("(d) after {:?}", started.elapsed());

    // ---- (e) a reservation made through weftctl, then rewritten in etcd with a second
    // address outside every pool of the network.
    let o = lab.ctl(&["reserve", "prod/db/0", "198.18.0.250", "--network", NET]);
    assert_eq!(o.status.code(), Some(0), "reserve: {}", text(&o));
    let rkey = weft_ipam::fixed::reservation_key(NET, "prod/db/0");
    let mut r: weft_ipam::Reservation =
        serde_json::from_slice(&lab.client.get(&rkey).expect("the reservation")).unwrap();
    r.addresses.push("198.19.0.5/24".parse().unwrap());
    lab.client.put(&rkey, serde_json::to_vec(&r).unwrap());
    let w = want(&[("reservation-outside-pool", "prod/db/0")]);
    let v = check_until(&lab, "reservation outside its pool", &w);
    assert_eq!(v["findings"][0]["network"], NET, "{v}");
    let o = lab.ctl(&["check", "--grace-seconds", GRACE]);
    assert_eq!(o.status.code(), Some(6), "{}", text(&o));
    let table = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("reservation-outside-pool") && l.contains("prod/db/0")),
        "{table}"
    );
    let before = lab.client.snapshot();
    let o = lab.ctl(&["check", "--repair", "--grace-seconds", GRACE]);
    assert_eq!(o.status.code(), Some(6), "plan: {}", text(&o));
    assert_eq!(lab.client.snapshot(), before, "the plan changed the store");
    repair_yes(&lab, "reservation outside its pool", &w, "done");
    assert!(
        lab.client.get(&rkey).is_none(),
        "the reservation is dropped"
    );
    assert_eq!(
        get_ip(&lab, "198.18.0.250"),
        Some(3),
        "its address is free again"
    );
    clean_and_idempotent(&lab, "reservation outside its pool");
    eprintln!("(e) after {:?}", started.elapsed());

    // The pods nobody broke still hold their addresses.
    let allocs = lab.client.allocations();
    let left: Vec<&str> = allocs.keys().map(String::as_str).collect();
    assert_eq!(left, ["b:eth0", "d:eth0", "y1:eth0", "y2:eth0"]);
    eprintln!("total {:?}", started.elapsed());
}
