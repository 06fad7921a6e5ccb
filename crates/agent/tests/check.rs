//! `weftctl check` end to end (weft-check's `check` and `repair` against the 3-node lab of
//! `common`: real etcd in a store namespace, real weftd per node publishing its report and
//! carrying out repair orders, pods attached by the real `weft` plugin). Each test makes one
//! kind of fault for real, shows that `check` reports exactly it, that `repair` fixes it and
//! that a second `check` is clean. Needs root and `cargo build -p weft-plugin --bin weft`.
//!
//! - `leak_from_a_deleted_veth_and_a_killed_add`: a pod's host veth deleted by hand, and a
//!   plugin SIGKILLed mid-ADD (random kill points, retried until the allocation is committed
//!   but no veth exists) -> leaks, released.
//! - `orphans_on_nodes`: an allocation released while its veth stays (interface and pod route
//!   orphaned), a protocol-87 pod route nobody owns, a set element in table inet weft that is
//!   no pool -> orphans, deleted by the nodes' weftd.
//! - `leak_from_a_deleted_netns_on_any_network`: on a node whose weftd routes another network,
//!   an underlay macvlan pod (no host-side interface) and a bridge-mode pod each lose their
//!   network namespace (deleted by hand, no DEL) -> leaks found by the namespace their records
//!   name, released; their live twins are never reported.
//! - `stale_blocks_of_a_gone_node`: a node's weftd killed for good (its lease expires) ->
//!   its block is stale and its pod's allocation a leak; released in that order.
//! - `missing_route_of_a_borrowed_address`: a node's weftd paused (SIGSTOP) while a pod on
//!   another node takes an address of its block -> the /32 is missing there; the order stays
//!   queued while it is paused and is carried out once it runs again.
mod common;

use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{Lab, Netns, POOL, wait_until};
use weft_check::{CheckOptions, CheckReport, Finding, FindingKind, check, repair_waiting};
use weft_store::Store;

type Job = Box<dyn FnOnce(&dyn Store) + Send>;

/// An etcd client living in the store namespace (the only place etcd is reachable from).
struct Client {
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Client {
    fn new(lab: &Lab) -> Client {
        let (path, ep) = (lab.store.path(), lab.etcd.endpoint());
        let (tx, rx) = mpsc::channel::<Job>();
        let thread = std::thread::spawn(move || {
            let ns = weft_dataplane::Netns::open(&path).expect("open the store netns");
            ns.run_in(|| {
                let store =
                    weft_store::etcd::EtcdStore::connect(&[ep], Default::default()).unwrap();
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

    fn check(&self) -> CheckReport {
        self.with(|s| check(s, &opts()).expect("check"))
    }

    fn repair(&self, f: Vec<Finding>, wait: u64) -> Vec<weft_check::RepairOutcome> {
        self.with(move |s| {
            repair_waiting(s, &f, &opts(), Duration::from_secs(wait)).expect("repair")
        })
    }

    fn get(&self, key: &str) -> Option<Vec<u8>> {
        let key = key.to_string();
        self.with(move |s| s.get(&key).unwrap().map(|kv| kv.value))
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

fn opts() -> CheckOptions {
    CheckOptions { grace_seconds: 0 }
}

fn show(r: &CheckReport) -> String {
    let mut s = format!("{} findings:\n", r.findings.len());
    for f in &r.findings {
        s.push_str(&format!(
            "  {:?} node={:?} subject={} : {}\n",
            f.kind, f.node, f.subject, f.detail
        ));
    }
    for n in &r.notes {
        s.push_str(&format!("  note: {n}\n"));
    }
    s
}

/// Polls `check` until `ok` holds for its findings (reports lag the kernel by up to a
/// collection period); the last report.
fn check_until(c: &Client, lab: &Lab, what: &str, ok: impl Fn(&[Finding]) -> bool) -> CheckReport {
    let t = Instant::now();
    loop {
        let r = c.check();
        if ok(&r.findings) {
            return r;
        }
        if t.elapsed() > Duration::from_secs(20) {
            panic!("{what}: check says\n{}\n{}", show(&r), lab.logs());
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn kinds(f: &[Finding]) -> Vec<(FindingKind, String)> {
    let mut v: Vec<_> = f.iter().map(|f| (f.kind, f.subject.clone())).collect();
    v.sort_by(|a, b| (a.0 as u8, &a.1).cmp(&(b.0 as u8, &b.1)));
    v
}

fn clean(c: &Client, lab: &Lab, when: &str) {
    check_until(c, lab, when, |f| f.is_empty());
}

/// Clean, and every node with a running weftd has published its report.
fn healthy(c: &Client, lab: &Lab) {
    let running: Vec<String> = lab
        .nodes
        .iter()
        .filter(|n| n.weftd.is_some())
        .map(|n| n.name.clone())
        .collect();
    let t = Instant::now();
    loop {
        let r = c.check();
        if r.findings.is_empty() && running.iter().all(|n| r.nodes.contains(n)) {
            return;
        }
        if t.elapsed() > Duration::from_secs(20) {
            panic!("a healthy lab: check says\n{}\n{}", show(&r), lab.logs());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn repair_all(c: &Client, lab: &Lab, r: &CheckReport) {
    let out = c.repair(r.findings.clone(), 15);
    for o in &out {
        assert_eq!(
            o.status,
            "done",
            "repair of {:?} {}: {}\n{}",
            o.finding.kind,
            o.finding.subject,
            o.message,
            lab.logs()
        );
    }
}

/// The host-side link of node `i` whose alias names container `cid`.
fn veth_of(lab: &Lab, i: usize, cid: &str) -> Option<String> {
    let v = lab.nodes[i].ns.ip_json(&["link", "show"]);
    v.as_array()?.iter().find_map(|l| {
        let alias = l["ifalias"].as_str()?;
        alias
            .ends_with(&format!(":{cid}:eth0"))
            .then(|| l["ifname"].as_str().unwrap().to_string())
    })
}

fn plugin_conf(lab: &Lab, i: usize) -> String {
    let node = &lab.nodes[i];
    serde_json::json!({
        "cniVersion": "1.0.0",
        "name": lab.network,
        "type": "weft",
        "mode": "routed",
        "mtu": 1400,
        "ipam": {
            "pools": [{"subnet": POOL}],
            "cooldownSeconds": 0,
            "node": node.name,
            "dataDir": lab.dir.path().join(format!("data-{}", node.name)),
            "store": {"type": "etcd", "endpoints": [lab.etcd.endpoint()], "timeoutSeconds": 2},
        },
    })
    .to_string()
}

/// Starts the plugin (ADD or DEL) for container `cid` in pod `pod` on node `i`.
fn plugin(lab: &Lab, i: usize, cmd: &str, cid: &str, pod: &Netns) -> std::process::Child {
    plugin_with(lab, i, cmd, cid, pod, &plugin_conf(lab, i))
}

/// [`plugin`] with configuration `conf`.
fn plugin_with(
    lab: &Lab,
    i: usize,
    cmd: &str,
    cid: &str,
    pod: &Netns,
    conf: &str,
) -> std::process::Child {
    lab.spawn_plugin(i, cmd, cid, &pod.path(), Some("eth0"), None, conf)
}

fn handle_key(cid: &str) -> String {
    weft_ipam::handle_key("cluster", &weft_ipam::handle_id(cid, "eth0"))
}

#[test]
fn leak_from_a_deleted_veth_and_a_killed_add() {
    let mut lab = Lab::new("k");
    lab.add_pod(0);
    lab.add_pod(1);
    lab.start_weftd(0, "hybrid");
    lab.start_weftd(1, "hybrid");
    lab.wait_converged(Duration::from_secs(10));
    let c = Client::new(&lab);
    healthy(&c, &lab);

    // 1. The pod's veth deleted by hand: the allocation leaks.
    let veth = veth_of(&lab, 0, "pod-node-1").expect("pod-node-1's veth");
    lab.nodes[0].ns.ok(&["ip", "link", "del", &veth]);
    // (Polled until the node's report shows the deletion; nothing else may show up.)
    let want = vec![(FindingKind::Leak, "pod-node-1:eth0".to_string())];
    let r = check_until(&c, &lab, "deleted veth", |f| kinds(f) == want);
    assert_eq!(r.findings[0].node.as_deref(), Some("node-1"));
    repair_all(&c, &lab, &r);
    assert!(c.get(&handle_key("pod-node-1")).is_none());
    clean(&c, &lab, "after releasing the leak");
    // A second repair of the same finding does nothing.
    let again = c.repair(r.findings.clone(), 1);
    assert_eq!(again[0].status, "skipped", "{}", again[0].message);

    // 2. A plugin SIGKILLed mid-ADD, at random points until it left an allocation and no veth.
    // The window (after the IPAM commit, before the veth) is a few ms wide: kill points are
    // drawn between the latest one that left nothing and the earliest one that left a veth.
    let seed = weft_store::testing::seed();
    eprintln!("kill points: WEFT_SEED={seed}");
    let mut rng = weft_store::testing::Rng::new(seed);
    let mut pods = Vec::new();
    let mut leaked = None;
    let (mut lo, mut hi) = (0u64, 150_000u64); // microseconds
    for n in 0..200 {
        let cid = format!("killed-{n}");
        let pod = Netns::new("kp");
        let mut child = plugin(&lab, 0, "ADD", &cid, &pod);
        let delay = lo + rng.below((hi - lo).max(1) + 1);
        std::thread::sleep(Duration::from_micros(delay));
        let _ = child.kill();
        let _ = child.wait();
        let has_handle = c.get(&handle_key(&cid)).is_some();
        let has_veth = veth_of(&lab, 0, &cid).is_some();
        eprintln!("try {n}: killed after {delay} us: allocation {has_handle}, veth {has_veth}");
        if has_handle && !has_veth {
            leaked = Some(cid);
            pods.push(pod);
            break;
        }
        // Narrow the range, loosening it a little each time (timing drifts with load).
        if !has_handle {
            lo = delay.min(hi);
        } else {
            hi = delay.max(lo);
        }
        lo = lo.saturating_sub(2_000);
        hi += 2_000;
        if has_handle || has_veth {
            let mut del = plugin(&lab, 0, "DEL", &cid, &pod);
            assert!(del.wait().unwrap().success(), "DEL of {cid}");
        }
        pods.push(pod);
    }
    let cid = leaked.expect("no kill point left an allocation without its veth in 200 tries");
    let want = vec![(FindingKind::Leak, format!("{cid}:eth0"))];
    let r = check_until(&c, &lab, "killed ADD", |f| kinds(f) == want);
    repair_all(&c, &lab, &r);
    assert!(c.get(&handle_key(&cid)).is_none());
    clean(&c, &lab, "after releasing the killed ADD's allocation");
}

#[test]
fn orphans_on_nodes() {
    let mut lab = Lab::new("o");
    lab.add_pod(0);
    lab.add_pod(1);
    lab.start_weftd(0, "vxlan");
    lab.start_weftd(1, "vxlan");
    lab.wait_converged(Duration::from_secs(10));
    let c = Client::new(&lab);
    healthy(&c, &lab);

    // The pod on node-2 loses its allocation (a GC that judged wrong, a DEL that never
    // reached the kernel) while its veth and host route stay.
    let veth = veth_of(&lab, 1, "pod-node-2").expect("pod-node-2's veth");
    let ip = lab.pod_ip(1).to_string();
    c.with(|s| {
        weft_ipam::Ipam::new(s)
            .release("cluster", "pod-node-2", "eth0")
            .unwrap()
            .expect("pod-node-2 held an allocation")
    });
    // A protocol-87 pod route to nothing on node-1, and a set element no pool explains.
    lab.nodes[0].ns.ok(&[
        "ip",
        "route",
        "add",
        "198.18.0.250/32",
        "dev",
        "uplink",
        "proto",
        "87",
        "scope",
        "link",
    ]);
    lab.nodes[0]
        .ns
        .ok(&["nft", "add element inet weft pods4 { 198.18.99.0/24 }"]);

    let want = vec![
        (FindingKind::Orphan, format!("interface {veth}")),
        (
            FindingKind::Orphan,
            "nft inet weft pods4 198.18.99.0/24".to_string(),
        ),
        (
            FindingKind::Orphan,
            "route 198.18.0.250/32 dev uplink".to_string(),
        ),
        (FindingKind::Orphan, format!("route {ip}/32 dev {veth}")),
    ];
    let mut want = want;
    want.sort_by(|a, b| (a.0 as u8, &a.1).cmp(&(b.0 as u8, &b.1)));
    let r = check_until(&c, &lab, "orphans", |f| kinds(f) == want);
    repair_all(&c, &lab, &r);
    assert!(
        veth_of(&lab, 1, "pod-node-2").is_none(),
        "the orphan veth is gone"
    );
    let routes = lab.nodes[0]
        .ns
        .ok(&["ip", "route", "show", "198.18.0.250/32"]);
    assert!(
        routes.trim().is_empty(),
        "orphan route still there: {routes}"
    );
    let set = lab.nodes[0].ns.ok(&["nft", "list set inet weft pods4"]);
    assert!(!set.contains("198.18.99.0/24"), "{set}");
    clean(&c, &lab, "after deleting the orphans");
    // Safe twice: the same orders again find nothing to do.
    let again = c.repair(r.findings.clone(), 1);
    assert!(again.iter().all(|o| o.status == "skipped"), "{again:?}");
}

#[test]
fn stale_blocks_of_a_gone_node() {
    let mut lab = Lab::new("g");
    lab.add_pod(0);
    lab.add_pod(2);
    for i in 0..3 {
        lab.start_weftd(i, "hybrid");
    }
    lab.wait_converged(Duration::from_secs(10));
    let c = Client::new(&lab);
    // node-2 has no pod: its weftd claimed a block at start.
    wait_until(Duration::from_secs(10), || {
        c.check().findings.is_empty()
            && c.with(|s| {
                s.list(&weft_ipam::blocks_prefix("cluster"))
                    .unwrap()
                    .into_iter()
                    .filter(|kv| String::from_utf8_lossy(&kv.value).contains("node-2"))
                    .count()
            }) == 1
    })
    .unwrap_or_else(|| panic!("node-2 claimed no block\n{}", show(&c.check())));
    healthy(&c, &lab);

    // node-3's weftd stops for good: its lease expires, its record and report go.
    lab.nodes[2].weftd.as_mut().unwrap().kill();
    let block3 = lab.block(2).to_string();
    let want = vec![
        (FindingKind::Leak, "pod-node-3:eth0".to_string()),
        (FindingKind::StaleBlock, block3.clone()),
    ];
    let r = check_until(&c, &lab, "gone node", |f| kinds(f) == want);
    repair_all(&c, &lab, &r);
    assert!(c.get(&handle_key("pod-node-3")).is_none());
    // The lab's pods cool down for 0 s: the emptied block is deleted; otherwise it would stay
    // without an owner until its addresses cooled down.
    if let Some(v) = c.get(&weft_ipam::block_key("cluster", &lab.block(2))) {
        let block: weft_ipam::BlockRecord = serde_json::from_slice(&v).unwrap();
        assert_eq!(block.node, None, "node-3's claim is dropped");
    }
    clean(&c, &lab, "after releasing the gone node's block");
}

#[test]
fn missing_route_of_a_borrowed_address() {
    let mut lab = Lab::new("m");
    lab.add_pod(0);
    lab.add_pod(1);
    lab.start_weftd(0, "host-gw");
    // A long lease: paused, node-2 stays registered.
    lab.start_weftd_with(1, "host-gw", &["--lease-ttl", "120"]);
    lab.wait_converged(Duration::from_secs(10));
    let c = Client::new(&lab);
    healthy(&c, &lab);

    let pid = nix::unistd::Pid::from_raw(lab.nodes[1].weftd.as_ref().unwrap().pid());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    // A pod on node-1 asks for an address of node-2's block: borrowed, needs a /32 on node-2.
    let block2 = lab.block(1);
    let addr = weft_ipam::ip_add(block2.network(), 20).to_string();
    let (_, ips) = lab.add_pod_with(0, "borrower", Some(&format!("IP={addr}")));
    assert_eq!(ips[0], addr);
    let want = vec![(FindingKind::MissingRoute, format!("{addr}/32"))];
    let r = check_until(&c, &lab, "paused agent", |f| kinds(f) == want);
    assert_eq!(r.findings[0].node.as_deref(), Some("node-2"));
    // Paused: the order waits.
    let out = c.repair(r.findings.clone(), 2);
    assert_eq!(out[0].status, "queued", "{}", out[0].message);
    let out = c.repair(r.findings.clone(), 1);
    assert_eq!(
        out[0].status, "queued",
        "the same order again: {}",
        out[0].message
    );
    assert_eq!(
        c.with(|s| s.list(&weft_check::repairs_prefix("node-2")).unwrap().len()),
        1,
        "one order however often it is written"
    );
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).unwrap();
    wait_until(Duration::from_secs(10), || {
        c.with(|s| {
            s.list(&weft_check::repairs_prefix("node-2"))
                .unwrap()
                .is_empty()
        })
    })
    .unwrap_or_else(|| panic!("node-2 did not carry out its order\n{}", lab.logs()));
    assert!(
        lab.nodes[1]
            .ns
            .weft_route(&format!("{addr}/32").parse().unwrap())
            .is_some()
    );
    clean(&c, &lab, "after node-2 came back");
}

#[test]
fn duplicate_record() {
    let mut lab = Lab::new("d");
    lab.add_pod(0);
    lab.add_pod(1);
    lab.start_weftd(0, "hybrid");
    lab.start_weftd(1, "hybrid");
    lab.wait_converged(Duration::from_secs(10));
    let c = Client::new(&lab);
    healthy(&c, &lab);

    // A second record of pod-node-1's address under another handle, written into etcd.
    let ip = lab.pod_ip(0).to_string();
    let mut a: weft_ipam::Allocation =
        serde_json::from_slice(&c.get(&handle_key("pod-node-1")).unwrap()).unwrap();
    a.container_id = "copy".into();
    a.handle = "copy:eth0".into();
    let value = serde_json::to_vec(&a).unwrap();
    c.with(move |s| {
        s.commit(&weft_store::Txn {
            compares: vec![],
            ops: vec![weft_store::Op::Put {
                key: handle_key("copy"),
                value,
            }],
        })
        .unwrap()
    });
    let want = vec![(FindingKind::Duplicate, ip.clone())];
    let r = check_until(&c, &lab, "duplicate", |f| kinds(f) == want);
    repair_all(&c, &lab, &r);
    assert!(c.get(&handle_key("copy")).is_none(), "the copy is gone");
    assert!(
        c.get(&handle_key("pod-node-1")).is_some(),
        "the owner stays"
    );
    clean(&c, &lab, "after removing the duplicate");
    assert!(lab.pod(1).ping(&ip, 5), "the owner's address still works");
}

#[test]
fn reservation_outside_its_pool() {
    let mut lab = Lab::new("r");
    lab.add_pod(0);
    lab.start_weftd(0, "hybrid");
    let c = Client::new(&lab);
    healthy(&c, &lab);

    // A reservation made properly (its address kept in its block), then rewritten in etcd
    // with a second address outside every pool.
    let key = c.with(|s| {
        let ipam = weft_ipam::Ipam::new(s);
        let spec = ipam.networks().unwrap()[0].spec.clone();
        let id = weft_ipam::Identity {
            key: "prod/db/0".into(),
            policy: weft_ipam::ReleasePolicy::Never,
            workload: Some("prod/db".into()),
            ordinal: Some(0),
        };
        let mut r = ipam
            .reserve(&spec, &id, &["198.18.0.200".parse().unwrap()])
            .unwrap();
        r.addresses.push("198.19.0.5/24".parse().unwrap());
        let key = weft_ipam::fixed::reservation_key("cluster", "prod/db/0");
        s.commit(&weft_store::Txn {
            compares: vec![],
            ops: vec![weft_store::Op::Put {
                key: key.clone(),
                value: serde_json::to_vec(&r).unwrap(),
            }],
        })
        .unwrap();
        key
    });
    let want = vec![(FindingKind::ReservationOutsidePool, "prod/db/0".to_string())];
    let r = check_until(&c, &lab, "reservation", |f| kinds(f) == want);
    repair_all(&c, &lab, &r);
    assert!(c.get(&key).is_none(), "the reservation is gone");
    // Its address inside the pool is free again (no block entry left to it).
    clean(&c, &lab, "after dropping the reservation");
    let held = c.with(|s| {
        s.list(&weft_ipam::blocks_prefix("cluster"))
            .unwrap()
            .into_iter()
            .any(|kv| String::from_utf8_lossy(&kv.value).contains("reserved:prod/db/0"))
    });
    assert!(
        !held,
        "198.18.0.200 is still kept for the dropped reservation"
    );
}

/// The allocation record of `cid` in `network`.
fn record(c: &Client, network: &str, cid: &str) -> Option<weft_ipam::Allocation> {
    let key = weft_ipam::handle_key(network, &weft_ipam::handle_id(cid, "eth0"));
    c.get(&key).map(|v| serde_json::from_slice(&v).unwrap())
}

/// ADD of `cid` into `pod` on node `i` with configuration `conf`, which must succeed.
fn add_with(lab: &Lab, i: usize, cid: &str, pod: &Netns, conf: &serde_json::Value) {
    let child = plugin_with(lab, i, "ADD", cid, pod, &conf.to_string());
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "ADD of {cid} failed");
}

#[test]
fn leak_from_a_deleted_netns_on_any_network() {
    let mut lab = Lab::new("n");
    lab.add_pod(0);
    lab.start_weftd(0, "hybrid");
    lab.wait_converged(Duration::from_secs(10));
    let c = Client::new(&lab);
    healthy(&c, &lab);
    let node = &lab.nodes[0];
    let ipam = |net: &str, pool: serde_json::Value| {
        serde_json::json!({
            "pools": [pool],
            "cooldownSeconds": 0,
            "node": node.name,
            "dataDir": lab.dir.path().join(format!("data-{net}-{}", node.name)),
            "store": {"type": "etcd", "endpoints": [lab.etcd.endpoint()], "timeoutSeconds": 2},
        })
    };
    // Underlay macvlan on node-1's uplink (segment A), and a bridge-mode network: neither is
    // the network node-1's weftd routes.
    let under = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "under",
        "type": "weft",
        "mode": "underlay",
        "underlay": {"attach": "macvlan", "uplink": "uplink"},
        "ipam": ipam("under", serde_json::json!({
            "subnet": format!("{}.0/24", common::SEG_A),
            "gateway": format!("{}.1", common::SEG_A),
            "rangeStart": format!("{}.100", common::SEG_A),
            "rangeEnd": format!("{}.199", common::SEG_A),
        })),
    });
    let bridged = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "bridged",
        "type": "weft",
        "mode": "bridge",
        "bridge": "b-bridged",
        "ipam": ipam("bridged", serde_json::json!({"subnet": "198.18.64.0/24"})),
    });
    let pods: Vec<Netns> = (0..4).map(|_| Netns::new("np")).collect();
    add_with(&lab, 0, "under-live", &pods[0], &under);
    add_with(&lab, 0, "under-lost", &pods[1], &under);
    add_with(&lab, 0, "bridged-live", &pods[2], &bridged);
    add_with(&lab, 0, "bridged-lost", &pods[3], &bridged);
    // What ADD recorded: the pod's namespace always, a host interface for the veth only.
    let u = record(&c, "under", "under-lost").expect("under-lost's record");
    let ns = u
        .netns
        .as_ref()
        .expect("the macvlan pod's namespace is recorded");
    assert_eq!(std::path::Path::new(&ns.path), pods[1].path());
    let meta = std::fs::metadata(pods[1].path()).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!((ns.ino, ns.dev), (meta.ino(), meta.dev()));
    assert_eq!(u.host_interface, None);
    let b = record(&c, "bridged", "bridged-lost").expect("bridged-lost's record");
    assert!(b.netns.is_some());
    let veth = veth_of(&lab, 0, "bridged-lost").expect("bridged-lost's veth");
    assert_eq!(b.host_interface.as_deref(), Some(veth.as_str()));
    // Four live pods on other networks: nothing to report.
    healthy(&c, &lab);

    // The two lost pods' namespaces are deleted by hand (a runtime that never ran DEL).
    for p in [&pods[1], &pods[3]] {
        common::run(&["ip", "netns", "del", &p.name]);
    }
    let want = vec![
        (FindingKind::Leak, "bridged-lost:eth0".to_string()),
        (FindingKind::Leak, "under-lost:eth0".to_string()),
    ];
    let r = check_until(&c, &lab, "deleted namespaces", |f| kinds(f) == want);
    for f in &r.findings {
        assert_eq!(f.node.as_deref(), Some("node-1"));
        let (net, pod) = if f.subject.starts_with("under") {
            ("under", &pods[1])
        } else {
            ("bridged", &pods[3])
        };
        assert_eq!(f.network.as_deref(), Some(net));
        let gone = format!("network namespace {} is gone", pod.path().display());
        assert!(f.detail.contains(&gone), "{}", f.detail);
    }
    repair_all(&c, &lab, &r);
    assert!(record(&c, "under", "under-lost").is_none());
    // The lost macvlan pod's /32 via the node's shim went with it (ordered by the same repair,
    // not left for the next check to call an orphan).
    let shim_route = ipnet::IpNet::from(u.addresses[0].addr());
    assert!(
        node.ns.weft_route(&shim_route).is_none(),
        "under-lost's shim route {shim_route} is still on node-1\n{}",
        lab.logs()
    );
    assert!(record(&c, "bridged", "bridged-lost").is_none());
    clean(&c, &lab, "after releasing the lost pods");
    // The live pods kept theirs, and are still never reported.
    assert!(record(&c, "under", "under-live").is_some());
    assert!(record(&c, "bridged", "bridged-live").is_some());
    std::thread::sleep(Duration::from_secs(3));
    let r = c.check();
    assert!(r.findings.is_empty(), "{}", show(&r));
}
