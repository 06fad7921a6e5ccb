//! The plugin on a cluster store: a real etcd in a "store" namespace, nodes as namespaces joined
//! to it by an underlay bridge (see `common::Lab`), the `weft` binary run in each node's
//! namespace exactly as a runtime runs it.
//!
//! - Four nodes adding 25 pods each at once: all addresses distinct; DEL of all leaves nothing.
//! - SIGKILL at random instants during ADD and DEL, 240 trials on 4 concurrent nodes: no
//!   duplicate; after GC on each node with the runtime's valid list, no leak.
//! - A StatefulSet pod recreated on another node (policies workload, never, pod), a node that
//!   died without DEL, a Deployment pool across a rollout.
//! - etcd stopped or hung: ADD fails within 5 s with code 11 and leaves nothing; DEL fails with
//!   11 and works when etcd is back; STATUS says 50 while etcd is out of reach.
//! - Bad input: conflicting networks, a pool address outside the pools, two claims on one
//!   address, an unknown release policy, an exhausted pool: clear errors, nothing left behind.
//!
//! Seeded with a printed seed (`WEFT_SEED=<n>` repeats a run's choices; thread timing varies).
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Call, Lab, Netns, PluginOutput, cni, link_aliases, result_ip, weft_links};
use common::{Outcome, eth0_addrs, finish, median, spawn};
use serde_json::{Value, json};
use weft_store::testing::{Rng, seed};

/// One plugin run of `command` on node `i` for container `cid` with CNI_ARGS `args`.
fn run(
    lab: &Lab,
    i: usize,
    command: &str,
    cid: &str,
    pod: Option<&Netns>,
    args: Option<&str>,
    conf: &Value,
) -> PluginOutput {
    let path = pod.map(|p| p.path());
    let mut call = Call::new(command, cid);
    call.netns = path.as_deref();
    call.args = args;
    cni(&lab.nodes[i].ns, &call, conf)
}

/// The ADD's IPv4 address; panics with the plugin's output when the ADD failed.
fn add_v4(lab: &Lab, i: usize, cid: &str, pod: &Netns, args: Option<&str>, conf: &Value) -> String {
    let r = run(lab, i, "ADD", cid, Some(pod), args, conf).success();
    result_ip(&r, 4).unwrap_or_else(|| panic!("ADD {cid}: no IPv4 in {r}"))
}

fn del_ok(lab: &Lab, i: usize, cid: &str, pod: &Netns, conf: &Value) {
    run(lab, i, "DEL", cid, Some(pod), None, conf).success();
}

/// The error an expected failure printed: (code, msg).
fn error_of(out: &PluginOutput) -> (u64, String) {
    assert_ne!(out.code, 0, "expected a failure, got {}", out.stdout);
    let j = out.json();
    (
        j["code"].as_u64().unwrap_or(0),
        j["msg"].as_str().unwrap_or_default().to_string(),
    )
}

/// The store's records, read at one revision.
struct Snap {
    /// (network, handle) -> the allocation record.
    handles: BTreeMap<(String, String), Value>,
    /// (network, address, owner) from the block records.
    owners: Vec<(String, String, String)>,
}

impl Snap {
    fn read(lab: &Lab) -> Snap {
        let mut s = Snap {
            handles: BTreeMap::new(),
            owners: Vec::new(),
        };
        for (k, v) in lab.etcd_list("/weft/v1/") {
            let v: Value = serde_json::from_slice(&v).unwrap();
            let parts: Vec<&str> = k.splitn(6, '/').collect();
            match parts.as_slice() {
                ["", "weft", "v1", "handles", net, h] => {
                    s.handles.insert((net.to_string(), h.to_string()), v);
                }
                ["", "weft", "v1", "blocks", net, _] => {
                    let cidr: ipnet::IpNet = v["cidr"].as_str().unwrap().parse().unwrap();
                    for (off, h) in v["allocations"].as_object().into_iter().flatten() {
                        let off: u128 = off.parse().unwrap();
                        let a = weft_ipam::ip_add(cidr.network(), off);
                        s.owners.push((
                            net.to_string(),
                            a.to_string(),
                            h.as_str().unwrap().to_string(),
                        ));
                    }
                }
                _ => {}
            }
        }
        s
    }

    fn addresses(v: &Value) -> Vec<String> {
        v["addresses"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|a| a.as_str().unwrap().split('/').next().unwrap().to_string())
            .collect()
    }

    /// Handles of attachments (pseudo-owners of reservations and pools left out).
    fn attachment_owners(&self) -> Vec<&(String, String, String)> {
        self.owners
            .iter()
            .filter(|(_, _, h)| !h.starts_with("reserved:") && !h.starts_with("pool:"))
            .collect()
    }

    /// No address has two owners; handle records and block entries agree both ways.
    fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        let mut by_addr: BTreeMap<(String, String), String> = BTreeMap::new();
        for ((net, h), v) in &self.handles {
            for a in Snap::addresses(v) {
                if let Some(o) = by_addr.insert((net.clone(), a.clone()), h.clone()) {
                    p.push(format!("DUPLICATE: {net} {a} held by handles {o} and {h}"));
                }
            }
        }
        let mut in_blocks: BTreeMap<(String, String), String> = BTreeMap::new();
        for (net, a, h) in &self.owners {
            if let Some(o) = in_blocks.insert((net.clone(), a.clone()), h.clone()) {
                p.push(format!(
                    "DUPLICATE: {net} {a} has block entries {o} and {h}"
                ));
            }
        }
        for (net, a, h) in self.attachment_owners() {
            if by_addr.get(&(net.clone(), a.clone())) != Some(h) {
                p.push(format!(
                    "block entry {net} {a} -> {h} has no handle record holding it"
                ));
            }
        }
        for ((net, a), h) in &by_addr {
            if in_blocks.get(&(net.clone(), a.clone())) != Some(h) {
                p.push(format!(
                    "handle {h} holds {net} {a} but no block entry says so"
                ));
            }
        }
        p
    }
}

/// What a failed ADD of `cid` on node `i` must not leave: a pod interface, a host veth, an
/// allocation record.
fn leftovers(lab: &Lab, i: usize, net: &str, cid: &str, pod: &Netns) -> Vec<String> {
    let mut p = Vec::new();
    if pod.links() != ["lo"] {
        p.push(format!("pod of {cid} keeps {:?}", pod.links()));
    }
    let alias = format!("weft:{net}:{cid}:eth0");
    for (l, a) in link_aliases(&lab.nodes[i].ns) {
        if a == alias {
            p.push(format!("node-{i} keeps veth {l} of {cid}"));
        }
    }
    let key = format!("/weft/v1/handles/{net}/{cid}:eth0");
    if !lab.etcd_list(&key).is_empty() {
        p.push(format!("etcd keeps {key}"));
    }
    p
}

fn assert_nothing_left(lab: &Lab, i: usize, net: &str, cid: &str, pod: &Netns) {
    let p = leftovers(lab, i, net, cid, pod);
    assert!(p.is_empty(), "a failed ADD left things behind: {p:?}");
}

// ---------------------------------------------------------------------------------------------

#[test]
fn four_nodes_add_25_pods_each_at_once_all_distinct_and_del_leaves_nothing() {
    const NODES: usize = 4;
    const PODS: usize = 25;
    let lab = Lab::new(NODES);
    let net = "par";
    let confs: Vec<Value> = (0..NODES)
        .map(|i| lab.net(i, net, &["198.18.0.0/22", "fd00:18::/64"]))
        .collect();
    let pods: Vec<Vec<Netns>> = (0..NODES)
        .map(|_| (0..PODS).map(|_| Netns::new("pp")).collect())
        .collect();
    let cid = |i: usize, j: usize| format!("par-n{i}-p{j}");

    let t = Instant::now();
    let mut children = Vec::new();
    for (i, node_pods) in pods.iter().enumerate() {
        for (j, pod) in node_pods.iter().enumerate() {
            let c = spawn(&lab.nodes[i].ns, "ADD", &cid(i, j), Some(pod), &confs[i]);
            children.push((i, j, c));
        }
    }
    let outs: Vec<(usize, usize, Outcome)> = children
        .into_iter()
        .map(|(i, j, c)| (i, j, finish(c)))
        .collect();
    let add_time = t.elapsed();
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    for (i, j, o) in &outs {
        let Outcome::Ok(r) = o else {
            panic!("ADD {} failed: {o:?}", cid(*i, *j))
        };
        for fam in [4, 6] {
            let a =
                result_ip(r, fam).unwrap_or_else(|| panic!("{}: no IPv{fam} in {r}", cid(*i, *j)));
            assert!(
                eth0_addrs(&pods[*i][*j]).contains(&a),
                "{}: eth0 lacks {a}",
                cid(*i, *j)
            );
            if let Some(o) = seen.insert(a.clone(), cid(*i, *j)) {
                panic!("DUPLICATE: {a} given to {o} and {}", cid(*i, *j));
            }
        }
    }
    assert_eq!(seen.len(), 2 * NODES * PODS);
    let snap = Snap::read(&lab);
    assert!(snap.problems().is_empty(), "{:?}", snap.problems());
    assert_eq!(snap.handles.len(), NODES * PODS);
    for ((_, h), v) in &snap.handles {
        let i: usize = h[5..].split('-').next().unwrap().parse().unwrap();
        assert_eq!(v["node"], json!(Lab::node_name(i)), "{h}: {v}");
    }
    for (i, node) in lab.nodes.iter().enumerate() {
        assert_eq!(weft_links(&node.ns).len(), PODS, "node-{i}");
    }

    let t = Instant::now();
    let mut children = Vec::new();
    for (i, node_pods) in pods.iter().enumerate() {
        for (j, pod) in node_pods.iter().enumerate() {
            let c = spawn(&lab.nodes[i].ns, "DEL", &cid(i, j), Some(pod), &confs[i]);
            children.push((i, j, c));
        }
    }
    for (i, j, c) in children {
        let o = finish(c);
        assert!(matches!(o, Outcome::Ok(_)), "DEL {}: {o:?}", cid(i, j));
        assert_eq!(pods[i][j].links(), ["lo"]);
    }
    let del_time = t.elapsed();
    let snap = Snap::read(&lab);
    assert!(snap.handles.is_empty(), "{:?}", snap.handles.keys());
    assert!(snap.owners.is_empty(), "{:?}", snap.owners);
    for (i, node) in lab.nodes.iter().enumerate() {
        assert!(
            weft_links(&node.ns).is_empty(),
            "node-{i}: {:?}",
            weft_links(&node.ns)
        );
    }
    eprintln!(
        "{} concurrent ADDs on {NODES} nodes in {add_time:?}, DELs in {del_time:?}",
        NODES * PODS
    );
}

// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Fresh,
    /// The last ADD completed and no DEL was tried since: the runtime lists it as valid.
    Valid,
    /// A killed or failed ADD or DEL: not listed; GC must clean it.
    Dirty,
}

struct Slot {
    node: usize,
    pod: Arc<Netns>,
    cid: String,
    generation: u32,
    state: State,
    addrs: Vec<String>,
}

#[test]
fn sigkill_at_random_instants_on_four_nodes_then_gc_no_duplicate_no_leak() {
    const NODES: usize = 4;
    const WORKERS_PER_NODE: usize = 2;
    const TRIALS_PER_WORKER: usize = 50; // 400 in all
    const SLOTS_PER_WORKER: usize = 6;
    let seed = seed();
    eprintln!("sigkill seed {seed} (WEFT_SEED={seed} repeats the choices)");
    let t0 = Instant::now();
    let lab = Arc::new(Lab::new(NODES));
    let net = "kill";
    let confs: Arc<Vec<Value>> = Arc::new(
        (0..NODES)
            .map(|i| lab.net(i, net, &["198.18.0.0/22", "fd00:18::/64"]))
            .collect(),
    );

    // Calibrate on a quiet node: an undisturbed ADD and DEL.
    let (mut adds, mut dels) = (Vec::new(), Vec::new());
    for k in 0..5 {
        let pod = Netns::new("kc");
        let cid = format!("calib-{k}");
        let t = Instant::now();
        let o = finish(spawn(&lab.nodes[0].ns, "ADD", &cid, Some(&pod), &confs[0]));
        adds.push(t.elapsed());
        assert!(matches!(o, Outcome::Ok(_)), "calibration ADD: {o:?}");
        let t = Instant::now();
        let o = finish(spawn(&lab.nodes[0].ns, "DEL", &cid, Some(&pod), &confs[0]));
        dels.push(t.elapsed());
        assert!(matches!(o, Outcome::Ok(_)), "calibration DEL: {o:?}");
    }
    let (a, d) = (median(adds), median(dels));
    let max_add_us = (a.as_micros() as u64 * 2).max(2_000);
    let max_del_us = (d.as_micros() as u64 * 2).max(2_000);
    eprintln!("quiet ADD {a:?}, DEL {d:?}; kill delays up to {max_add_us} / {max_del_us} µs");

    let netns_lock = Arc::new(std::sync::Mutex::new(()));
    let workers: Vec<_> = (0..NODES * WORKERS_PER_NODE)
        .map(|w| {
            let (lab, confs, netns_lock) = (lab.clone(), confs.clone(), netns_lock.clone());
            let node = w % NODES;
            std::thread::spawn(move || {
                let mut rng = Rng::new(seed ^ ((w as u64 + 1) << 40));
                let new_pod = || {
                    let _g = netns_lock.lock().unwrap();
                    Arc::new(Netns::new("kp"))
                };
                let mut slots: Vec<Slot> = (0..SLOTS_PER_WORKER)
                    .map(|s| Slot {
                        node,
                        pod: new_pod(),
                        cid: format!("k{w}s{s}g0"),
                        generation: 0,
                        state: State::Fresh,
                        addrs: vec![],
                    })
                    .collect();
                let mut abandoned = Vec::new();
                let (mut trials, mut killed, mut completed) = (0u32, 0u32, 0u32);
                let mut unexpected = Vec::new();
                let mut rounds = 0;
                while (trials as usize) < TRIALS_PER_WORKER && rounds < 20 * TRIALS_PER_WORKER {
                    rounds += 1;
                    let si = rng.below(SLOTS_PER_WORKER as u64) as usize;
                    let slot = &mut slots[si];
                    if slot.state == State::Valid && !rng.chance(25) {
                        continue;
                    }
                    if slot.state == State::Dirty && rng.chance(50) {
                        // The runtime gives up on this sandbox: its leftovers are GC's job.
                        let generation = slot.generation + 1;
                        let replacement = Slot {
                            node,
                            pod: new_pod(),
                            cid: format!("k{w}s{si}g{generation}"),
                            generation,
                            state: State::Fresh,
                            addrs: vec![],
                        };
                        abandoned.push(std::mem::replace(slot, replacement));
                        continue;
                    }
                    let op = if slot.state == State::Fresh {
                        "ADD"
                    } else {
                        "DEL"
                    };
                    let max = if op == "ADD" { max_add_us } else { max_del_us };
                    let delay = Duration::from_micros(rng.below(max + 1));
                    let mut child = spawn(
                        &lab.nodes[node].ns,
                        op,
                        &slot.cid,
                        Some(&slot.pod),
                        &confs[node],
                    );
                    std::thread::sleep(delay);
                    let _ = child.kill(); // SIGKILL, by the PID of our own child
                    trials += 1;
                    match finish(child) {
                        Outcome::Killed => {
                            killed += 1;
                            slot.state = State::Dirty;
                        }
                        Outcome::Ok(result) => {
                            completed += 1;
                            if op == "ADD" {
                                slot.state = State::Valid;
                                slot.addrs = [4, 6]
                                    .iter()
                                    .filter_map(|f| result_ip(&result, *f))
                                    .collect();
                            } else {
                                if slot.pod.links() != ["lo"] {
                                    unexpected.push(format!(
                                        "DEL {} completed but the pod keeps {:?}",
                                        slot.cid,
                                        slot.pod.links()
                                    ));
                                }
                                slot.state = State::Fresh;
                                slot.generation += 1;
                                slot.cid = format!("k{w}s{si}g{}", slot.generation);
                                slot.addrs.clear();
                            }
                        }
                        Outcome::Failed(msg) => {
                            unexpected.push(format!("{op} {} failed unkilled: {msg}", slot.cid));
                            slot.state = State::Dirty;
                        }
                    }
                }
                slots.extend(abandoned);
                (slots, trials, killed, completed, unexpected)
            })
        })
        .collect();
    let mut slots = Vec::new();
    let (mut trials, mut killed, mut completed) = (0, 0, 0);
    let mut problems = Vec::new();
    for w in workers {
        let (s, t, k, c, u) = w.join().expect("worker panicked");
        slots.extend(s);
        trials += t;
        killed += k;
        completed += c;
        problems.extend(u);
    }
    let trial_time = t0.elapsed();
    eprintln!(
        "{trials} trials on {NODES} nodes in {trial_time:?}: {killed} killed, {completed} completed"
    );
    assert!(trials >= 200, "only {trials} trials");
    assert!(
        killed * 4 >= trials && completed * 10 >= trials,
        "kill timing is off: {killed} killed, {completed} completed of {trials}"
    );

    // 1. No duplicate: in the store, and on the pods.
    let snap = Snap::read(&lab);
    for p in snap.problems() {
        problems.push(format!("before GC: {p}"));
    }
    let mut on_pods: BTreeMap<String, String> = BTreeMap::new();
    for s in &slots {
        for a in eth0_addrs(&s.pod) {
            if let Some(o) = on_pods.insert(a.clone(), s.cid.clone()) {
                problems.push(format!("DUPLICATE: {a} on eth0 of {o} and {}", s.cid));
            }
        }
    }
    for s in slots.iter().filter(|s| s.state == State::Valid) {
        let have = eth0_addrs(&s.pod);
        if s.addrs.len() != 2 || s.addrs.iter().any(|a| !have.contains(a)) {
            problems.push(format!(
                "valid {} has {have:?}, its ADD gave {:?}",
                s.cid, s.addrs
            ));
        }
    }
    let valid: BTreeSet<String> = slots
        .iter()
        .filter(|s| s.state == State::Valid)
        .map(|s| s.cid.clone())
        .collect();
    let before = snap.handles.len();

    // 2. GC on each node with that node's valid attachments.
    let t = Instant::now();
    for i in 0..NODES {
        let list: Vec<Value> = slots
            .iter()
            .filter(|s| s.node == i && s.state == State::Valid)
            .map(|s| json!({"containerID": s.cid, "ifname": "eth0"}))
            .collect();
        let mut conf = confs[i].clone();
        conf["cni.dev/valid-attachments"] = Value::Array(list);
        match finish(spawn(&lab.nodes[i].ns, "GC", "gc", None, &conf)) {
            Outcome::Ok(_) => {}
            o => problems.push(format!("GC on node-{i}: {o:?}")),
        }
    }
    let gc_time = t.elapsed();

    // 3. After GC: exactly the valid attachments hold addresses, pods and veths.
    let snap = Snap::read(&lab);
    for p in snap.problems() {
        problems.push(format!("after GC: {p}"));
    }
    let held: BTreeMap<String, (String, Vec<String>)> = snap
        .handles
        .iter()
        .map(|((_, h), v)| {
            (
                h.trim_end_matches(":eth0").to_string(),
                (
                    v["node"].as_str().unwrap_or("").to_string(),
                    Snap::addresses(v),
                ),
            )
        })
        .collect();
    for s in &slots {
        match (valid.contains(&s.cid), held.get(&s.cid)) {
            (true, Some((node, a))) => {
                if *node != Lab::node_name(s.node) || *a != s.addrs {
                    problems.push(format!(
                        "valid {} on node-{}: store says {node} {a:?}, ADD gave {:?}",
                        s.cid, s.node, s.addrs
                    ));
                }
            }
            (true, None) => problems.push(format!("GC freed the valid {}", s.cid)),
            (false, Some(x)) => {
                problems.push(format!("LEAK: {} ({:?}) keeps {x:?}", s.cid, s.state))
            }
            (false, None) => {}
        }
        let have = eth0_addrs(&s.pod);
        if valid.contains(&s.cid) {
            if s.addrs.iter().any(|a| !have.contains(a)) {
                problems.push(format!("valid {} lost addresses in GC: {have:?}", s.cid));
            }
        } else if s.pod.links() != ["lo"] {
            problems.push(format!("LEAK: pod of {} keeps {:?}", s.cid, s.pod.links()));
        }
    }
    for h in held.keys() {
        if !slots.iter().any(|s| s.cid == *h) && !h.starts_with("calib-") {
            problems.push(format!("an allocation of nobody: {h}"));
        }
    }
    for (i, node) in lab.nodes.iter().enumerate() {
        let aliases = link_aliases(&node.ns);
        for l in weft_links(&node.ns) {
            let alias = aliases.get(&l).cloned().unwrap_or_default();
            let ok = alias
                .strip_prefix(&format!("weft:{net}:"))
                .and_then(|r| r.strip_suffix(":eth0"))
                .is_some_and(|c| {
                    slots
                        .iter()
                        .any(|s| s.cid == c && s.node == i && s.state == State::Valid)
                });
            if !ok {
                problems.push(format!("LEAK: node-{i} keeps veth {l} ({alias:?})"));
            }
        }
    }
    eprintln!(
        "{} valid; {before} allocations before GC, {} after; GC of 4 nodes in {gc_time:?}",
        valid.len(),
        snap.handles.len()
    );

    // 4. DEL every valid attachment: nothing may be left.
    for s in slots.iter().filter(|s| s.state == State::Valid) {
        match finish(spawn(
            &lab.nodes[s.node].ns,
            "DEL",
            &s.cid,
            Some(&s.pod),
            &confs[s.node],
        )) {
            Outcome::Ok(_) => {}
            o => problems.push(format!("final DEL {}: {o:?}", s.cid)),
        }
    }
    let snap = Snap::read(&lab);
    if !snap.handles.is_empty() || !snap.owners.is_empty() {
        problems.push(format!(
            "after the final DELs etcd keeps {:?} / {:?}",
            snap.handles.keys(),
            snap.owners
        ));
    }
    eprintln!("whole sigkill test {:?}", t0.elapsed());
    drop(slots);
    assert!(
        problems.is_empty(),
        "seed {seed}: {} problems:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------

const DB0: &str = "K8S_POD_NAMESPACE=prod;K8S_POD_NAME=db-0";

fn sts_net(lab: &Lab, i: usize, net: &str, subnet: &str, policy: &str) -> Value {
    let mut c = lab.net(i, net, &[subnet]);
    c["ipam"]["fixedIPs"] = json!([{"namespace": "prod", "statefulSet": "db", "policy": policy}]);
    c
}

#[test]
fn statefulset_pod_moves_nodes_keeping_its_address_under_workload_and_never_not_pod() {
    let lab = Lab::new(2);
    let mut addrs = BTreeMap::new();
    for (net, subnet, policy) in [
        ("sw", "198.18.0.0/24", "workload"),
        ("sn", "198.18.1.0/24", "never"),
        ("sp", "198.18.2.0/24", "pod"),
    ] {
        let (c1, c2) = (
            sts_net(&lab, 0, net, subnet, policy),
            sts_net(&lab, 1, net, subnet, policy),
        );
        let pods: Vec<Netns> = (0..4).map(|_| Netns::new("sp")).collect();
        // node-1 has pods of its own: a fresh allocation there comes from its own block.
        let other = add_v4(
            &lab,
            1,
            &format!("{net}-other-a"),
            &pods[0],
            Some("K8S_POD_NAMESPACE=prod;K8S_POD_NAME=api-0"),
            &c2,
        );
        let first = add_v4(&lab, 0, &format!("{net}-db0-a"), &pods[1], Some(DB0), &c1);
        del_ok(&lab, 0, &format!("{net}-db0-a"), &pods[1], &c1);
        let other2 = add_v4(&lab, 1, &format!("{net}-other-b"), &pods[2], None, &c2);
        assert_ne!(other2, first, "{policy}: a plain pod got db-0's address");
        let second = add_v4(&lab, 1, &format!("{net}-db0-b"), &pods[3], Some(DB0), &c2);
        assert!(eth0_addrs(&pods[3]).contains(&second));
        let rec = &lab.records("handles")[&format!("/weft/v1/handles/{net}/{net}-db0-b:eth0")];
        assert_eq!(rec["node"], json!("node-1"), "{rec}");
        eprintln!(
            "{policy}: db-0 had {first} on node-0, {second} on node-1 (others: {other}, {other2})"
        );
        addrs.insert(policy, (first, second));
        for (p, cid) in [(0, "other-a"), (2, "other-b"), (3, "db0-b")] {
            del_ok(&lab, 1, &format!("{net}-{cid}"), &pods[p], &c2);
        }
    }
    let (a, b) = &addrs["workload"];
    assert_eq!(a, b, "workload: db-0 changed address moving nodes");
    let (a, b) = &addrs["never"];
    assert_eq!(a, b, "never: db-0 changed address moving nodes");
    let (a, b) = &addrs["pod"];
    assert_ne!(a, b, "pod: the address must go with the pod");
    // Kept addresses stay owned by their reservation after the pods are gone; pod's is freed.
    let snap = Snap::read(&lab);
    let owners: BTreeSet<(String, String)> = snap
        .owners
        .iter()
        .map(|(n, _, h)| (n.clone(), h.clone()))
        .collect();
    assert!(
        owners.contains(&("sw".into(), "reserved:prod/db/0".into())),
        "{owners:?}"
    );
    assert!(
        owners.contains(&("sn".into(), "reserved:prod/db/0".into())),
        "{owners:?}"
    );
    assert!(
        !snap.owners.iter().any(|(n, _, _)| n == "sp"),
        "{:?}",
        snap.owners
    );
    assert!(snap.handles.is_empty(), "{:?}", snap.handles.keys());
}

#[test]
fn statefulset_pod_whose_node_died_comes_back_on_another_node_with_its_address() {
    let lab = Lab::new(2);
    let net = "sd";
    let (c1, c2) = (
        sts_net(&lab, 0, net, "198.18.3.0/24", "workload"),
        sts_net(&lab, 1, net, "198.18.3.0/24", "workload"),
    );
    let (p1, p2) = (Netns::new("sd"), Netns::new("sd"));
    let args = "K8S_POD_NAMESPACE=prod;K8S_POD_NAME=db-1";
    let a = add_v4(&lab, 0, "db1-on-node0", &p1, Some(args), &c1);
    // node-0 dies: no DEL. The StatefulSet controller recreates db-1 on node-1.
    let b = add_v4(&lab, 1, "db1-on-node1", &p2, Some(args), &c2);
    assert_eq!(a, b, "db-1 must keep its address on the new node");
    let handles = lab.records("handles");
    assert!(
        !handles.contains_key(&format!("/weft/v1/handles/{net}/db1-on-node0:eth0")),
        "node-0's allocation record is still there: {:?}",
        handles.keys()
    );
    let rec = &handles[&format!("/weft/v1/handles/{net}/db1-on-node1:eth0")];
    assert_eq!(rec["node"], json!("node-1"));
    let snap = Snap::read(&lab);
    assert!(snap.problems().is_empty(), "{:?}", snap.problems());
    // node-0 comes back and its runtime finally runs the DEL (or GC with nothing valid): that
    // must not take the address from the pod on node-1.
    del_ok(&lab, 0, "db1-on-node0", &p1, &c1);
    let mut gc = c1.clone();
    gc["cni.dev/valid-attachments"] = json!([]);
    run(&lab, 0, "GC", "gc", None, None, &gc).success();
    let snap = Snap::read(&lab);
    assert!(
        snap.owners
            .iter()
            .any(|(n, x, h)| n == net && *x == b && h == "db1-on-node1:eth0"),
        "{:?}",
        snap.owners
    );
    assert!(eth0_addrs(&p2).contains(&b));
}

#[test]
fn deployment_pool_hands_its_addresses_to_new_pods_across_a_rollout() {
    let lab = Lab::new(2);
    let net = "dp";
    let pool = ["198.18.4.50", "198.18.4.51", "198.18.4.52"];
    let confs: Vec<Value> = (0..2)
        .map(|i| {
            let mut c = lab.net(i, net, &["198.18.4.0/24"]);
            c["ipam"]["fixedIPs"] =
                json!([{"namespace": "prod", "deployment": "web", "pool": "web", "addresses": pool}]);
            c
        })
        .collect();
    let pool_set: BTreeSet<String> = pool.iter().map(|s| s.to_string()).collect();
    let web = |rs: &str, k: usize| format!("K8S_POD_NAMESPACE=prod;K8S_POD_NAME=web-{rs}-x{k}z9q");
    let mut old = Vec::new();
    for k in 0..3 {
        let pod = Netns::new("dp");
        let cid = format!("web-old-{k}");
        let a = add_v4(
            &lab,
            k % 2,
            &cid,
            &pod,
            Some(&web("5d8f7c9b4", k)),
            &confs[k % 2],
        );
        old.push((k % 2, cid, pod, a));
    }
    let got: BTreeSet<String> = old.iter().map(|o| o.3.clone()).collect();
    assert_eq!(got, pool_set, "the first ReplicaSet holds exactly the pool");
    // A plain pod never gets a pool address.
    let plain = Netns::new("dp");
    let a = add_v4(
        &lab,
        0,
        "plain",
        &plain,
        Some("K8S_POD_NAMESPACE=prod;K8S_POD_NAME=api-0"),
        &confs[0],
    );
    assert!(!pool_set.contains(&a), "plain pod got pool address {a}");
    // One pod beyond the pool's size: 101, nothing left.
    let surge = Netns::new("dp");
    let out = run(
        &lab,
        1,
        "ADD",
        "web-surge",
        Some(&surge),
        Some(&web("5d8f7c9b4", 9)),
        &confs[1],
    );
    let (code, msg) = error_of(&out);
    assert_eq!(code, 101, "{msg}");
    assert!(msg.contains("web"), "{msg}");
    assert_nothing_left(&lab, 1, net, "web-surge", &surge);
    // Rollout: an old pod goes, a new one comes (on the other node), one at a time.
    let mut new = Vec::new();
    for (k, (i, cid, pod, _)) in old.iter().enumerate() {
        del_ok(&lab, *i, cid, pod, &confs[*i]);
        let j = 1 - i;
        let pod = Netns::new("dp");
        let cid = format!("web-new-{k}");
        let a = add_v4(&lab, j, &cid, &pod, Some(&web("6c9d8e7f5", k)), &confs[j]);
        assert!(eth0_addrs(&pod).contains(&a));
        new.push((j, cid, pod, a));
    }
    let got: BTreeSet<String> = new.iter().map(|o| o.3.clone()).collect();
    assert_eq!(got, pool_set, "the new ReplicaSet holds exactly the pool");
    assert_eq!(new.len(), 3);
    let snap = Snap::read(&lab);
    assert!(snap.problems().is_empty(), "{:?}", snap.problems());
}

// ---------------------------------------------------------------------------------------------

#[test]
fn etcd_stopped_or_hung_add_fails_fast_with_11_del_retries_status_50_then_all_recovers() {
    let mut lab = Lab::new(1);
    let net = "down";
    let conf = lab.net(0, net, &["198.18.5.0/24"]);
    let pods: Vec<Netns> = (0..4).map(|_| Netns::new("dn")).collect();
    let a = add_v4(&lab, 0, "up-1", &pods[0], None, &conf);
    run(&lab, 0, "STATUS", "", None, None, &conf).success();

    lab.etcd.stop();
    // ADD: code 11 within 5 s, nothing left (checked once etcd is back).
    let t = Instant::now();
    let out = run(&lab, 0, "ADD", "down-2", Some(&pods[1]), None, &conf);
    let took = t.elapsed();
    let (code, msg) = error_of(&out);
    assert_eq!(code, 11, "ADD with etcd down: {msg}");
    assert!(
        took < Duration::from_secs(5),
        "ADD with etcd down took {took:?}"
    );
    assert!(
        msg.contains(&lab.etcd.endpoint()) || msg.contains("etcd"),
        "{msg}"
    );
    assert_eq!(pods[1].links(), ["lo"]);
    assert_eq!(weft_links(&lab.nodes[0].ns).len(), 1, "only up-1's veth");
    // STATUS: 50.
    let t = Instant::now();
    let (code, msg) = error_of(&run(&lab, 0, "STATUS", "", None, None, &conf));
    assert_eq!(code, 50, "STATUS with etcd down: {msg}");
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "STATUS took {:?}",
        t.elapsed()
    );
    // DEL: 11, so the runtime retries it.
    let t = Instant::now();
    let (code, msg) = error_of(&run(&lab, 0, "DEL", "up-1", Some(&pods[0]), None, &conf));
    assert_eq!(code, 11, "DEL with etcd down: {msg}");
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "DEL took {:?}",
        t.elapsed()
    );
    eprintln!("etcd down: ADD failed in {took:?}: {msg}");

    lab.etcd.restart();
    // No manual step: STATUS is ready, the retried DEL frees the address, ADD works.
    run(&lab, 0, "STATUS", "", None, None, &conf).success();
    assert!(
        lab.etcd_list(&format!("/weft/v1/handles/{net}/up-1:eth0"))
            .len()
            == 1,
        "the failed DEL lost up-1's allocation"
    );
    assert_nothing_left(&lab, 0, net, "down-2", &pods[1]);
    del_ok(&lab, 0, "up-1", &pods[0], &conf);
    let snap = Snap::read(&lab);
    assert!(snap.handles.is_empty(), "{:?}", snap.handles.keys());
    assert!(
        !snap.owners.iter().any(|(_, x, _)| *x == a),
        "{a} still owned after the retried DEL: {:?}",
        snap.owners
    );
    assert!(weft_links(&lab.nodes[0].ns).is_empty());
    let b = add_v4(&lab, 0, "down-2", &pods[1], None, &conf);
    assert!(eth0_addrs(&pods[1]).contains(&b));

    // Hung (SIGSTOP): ADD fails within 5 s with 11 too, STATUS 50.
    lab.etcd.pause();
    let t = Instant::now();
    let out = run(&lab, 0, "ADD", "hung-3", Some(&pods[2]), None, &conf);
    let took = t.elapsed();
    let st = run(&lab, 0, "STATUS", "", None, None, &conf);
    lab.etcd.resume();
    let (code, msg) = error_of(&out);
    assert_eq!(code, 11, "ADD with etcd hung: {msg}");
    assert!(
        took < Duration::from_secs(5),
        "ADD with etcd hung took {took:?}"
    );
    assert_eq!(error_of(&st).0, 50, "STATUS with etcd hung: {}", st.stdout);
    eprintln!("etcd hung: ADD failed in {took:?}: {msg}");
    std::thread::sleep(Duration::from_millis(300)); // let etcd drain what was queued
    assert_nothing_left(&lab, 0, net, "hung-3", &pods[2]);
    let c = add_v4(&lab, 0, "hung-3", &pods[2], None, &conf);
    assert_ne!(c, b);
    del_ok(&lab, 0, "hung-3", &pods[2], &conf);
    del_ok(&lab, 0, "down-2", &pods[1], &conf);
    let snap = Snap::read(&lab);
    assert!(
        snap.handles.is_empty() && snap.owners.is_empty(),
        "{:?}",
        snap.owners
    );
}

// ---------------------------------------------------------------------------------------------

#[test]
fn bad_input_on_etcd_is_a_clear_error_and_leaves_nothing() {
    let lab = Lab::new(2);
    let pod = || Netns::new("bi");

    // 1. Two nodes define one network name with different subnets.
    let c1 = lab.net(0, "bx", &["198.18.10.0/24"]);
    let c2 = lab.net(1, "bx", &["198.18.11.0/24"]);
    let p1 = pod();
    add_v4(&lab, 0, "bx-1", &p1, None, &c1);
    let p2 = pod();
    let (code, msg) = error_of(&run(&lab, 1, "ADD", "bx-2", Some(&p2), None, &c2));
    assert_eq!(code, 7, "{msg}");
    for want in ["\"bx\"", "198.18.10.0/24", "198.18.11.0/24"] {
        assert!(msg.contains(want), "conflict message lacks {want}: {msg}");
    }
    assert_nothing_left(&lab, 1, "bx", "bx-2", &p2);
    let stored = &lab.records("networks")["/weft/v1/networks/bx"];
    assert!(stored.to_string().contains("198.18.10.0/24"), "{stored}");
    assert!(!stored.to_string().contains("198.18.11.0/24"), "{stored}");
    del_ok(&lab, 0, "bx-1", &p1, &c1);

    // 2. A Deployment pool with an address outside the network's pools.
    let mut c = lab.net(0, "by", &["198.18.12.0/24"]);
    c["ipam"]["fixedIPs"] = json!([{"namespace": "prod", "deployment": "web", "pool": "web", "addresses": ["198.18.99.5"]}]);
    let p = pod();
    let web = "K8S_POD_NAMESPACE=prod;K8S_POD_NAME=web-5d8f7c9b4-x2x9z";
    let (code, msg) = error_of(&run(&lab, 0, "ADD", "by-1", Some(&p), Some(web), &c));
    assert_eq!(code, 7, "{msg}");
    assert!(
        msg.contains("198.18.99.5") && msg.contains("198.18.12.0/24"),
        "{msg}"
    );
    assert_nothing_left(&lab, 0, "by", "by-1", &p);
    assert!(
        lab.etcd_list("/weft/v1/pools/").is_empty(),
        "a pool was stored"
    );
    eprintln!("pool address outside: {msg}");

    // 3. Two claims on one address: pool vs pool, request vs reservation, pool vs reservation.
    let mut c = lab.net(0, "bz", &["198.18.13.0/24"]);
    c["ipam"]["fixedIPs"] = json!([
        {"namespace": "prod", "deployment": "web", "pool": "web", "addresses": ["198.18.13.50", "198.18.13.51"]},
        {"namespace": "prod", "deployment": "api", "pool": "api", "addresses": ["198.18.13.51", "198.18.13.52"]},
        {"namespace": "prod", "statefulSet": "db", "policy": "never"},
    ]);
    let pw = pod();
    add_v4(&lab, 0, "bz-web", &pw, Some(web), &c);
    let p = pod();
    let api = "K8S_POD_NAMESPACE=prod;K8S_POD_NAME=api-7f6d5c4b3-q8w7e";
    let (code, msg) = error_of(&run(&lab, 0, "ADD", "bz-api", Some(&p), Some(api), &c));
    assert_eq!(code, 100, "{msg}");
    assert!(msg.contains("198.18.13.51") && msg.contains("web"), "{msg}");
    assert_nothing_left(&lab, 0, "bz", "bz-api", &p);
    eprintln!("pool vs pool: {msg}");
    let pd = pod();
    let r = add_v4(&lab, 0, "bz-db0", &pd, Some(DB0), &c);
    del_ok(&lab, 0, "bz-db0", &pd, &c);
    let p = pod();
    let (code, msg) = error_of(&run(
        &lab,
        0,
        "ADD",
        "bz-ip",
        Some(&p),
        Some(&format!("IP={r}")),
        &c,
    ));
    assert_eq!(code, 100, "{msg}");
    assert!(msg.contains(&r) && msg.contains("prod/db/0"), "{msg}");
    assert_nothing_left(&lab, 0, "bz", "bz-ip", &p);
    eprintln!("request vs reservation: {msg}");
    let mut c3 = c.clone();
    c3["ipam"]["fixedIPs"] =
        json!([{"namespace": "prod", "deployment": "cache", "pool": "cache", "addresses": [r]}]);
    let p = pod();
    let cache = "K8S_POD_NAMESPACE=prod;K8S_POD_NAME=cache-5b6c7d8e9-a1b2c";
    let (code, msg) = error_of(&run(&lab, 0, "ADD", "bz-cache", Some(&p), Some(cache), &c3));
    assert_eq!(code, 100, "{msg}");
    assert!(msg.contains(&r) && msg.contains("prod/db/0"), "{msg}");
    assert_nothing_left(&lab, 0, "bz", "bz-cache", &p);
    assert!(
        lab.etcd_list("/weft/v1/pools/bz/cache").is_empty(),
        "pool cache was stored"
    );
    eprintln!("pool vs reservation: {msg}");
    del_ok(&lab, 0, "bz-web", &pw, &c);

    // 4. An unknown release policy.
    let mut c = lab.net(1, "bp", &["198.18.14.0/24"]);
    c["ipam"]["fixedIPs"] =
        json!([{"namespace": "prod", "statefulSet": "db", "policy": "forever"}]);
    let p = pod();
    let (code, msg) = error_of(&run(&lab, 1, "ADD", "bp-1", Some(&p), Some(DB0), &c));
    assert_eq!(code, 7, "{msg}");
    assert!(
        msg.contains("ipam.fixedIPs[0].policy") && msg.contains("\"forever\""),
        "{msg}"
    );
    assert_nothing_left(&lab, 1, "bp", "bp-1", &p);
    assert!(lab.etcd_list("/weft/v1/networks/bp").is_empty());

    // 5. An exhausted pool (three addresses), across both nodes.
    let confs: Vec<Value> = (0..2)
        .map(|i| {
            let mut c = lab.net(i, "bq", &["198.18.15.0/24"]);
            c["ipam"]["pools"][0]["rangeStart"] = json!("198.18.15.10");
            c["ipam"]["pools"][0]["rangeEnd"] = json!("198.18.15.12");
            c
        })
        .collect();
    let pods: Vec<Netns> = (0..4).map(|_| pod()).collect();
    let mut got = BTreeSet::new();
    for k in 0..3 {
        got.insert(add_v4(
            &lab,
            k % 2,
            &format!("bq-{k}"),
            &pods[k],
            None,
            &confs[k % 2],
        ));
    }
    assert_eq!(got.len(), 3);
    let (code, msg) = error_of(&run(
        &lab,
        1,
        "ADD",
        "bq-3",
        Some(&pods[3]),
        None,
        &confs[1],
    ));
    assert_eq!(code, 101, "{msg}");
    assert!(
        msg.contains("\"bq\"") && msg.contains("198.18.15.0/24"),
        "{msg}"
    );
    assert_nothing_left(&lab, 1, "bq", "bq-3", &pods[3]);
    eprintln!("exhausted: {msg}");
    for k in 0..3 {
        del_ok(&lab, k % 2, &format!("bq-{k}"), &pods[k], &confs[k % 2]);
    }
    let snap = Snap::read(&lab);
    assert!(snap.problems().is_empty(), "{:?}", snap.problems());
    assert!(snap.handles.is_empty(), "{:?}", snap.handles.keys());
}
