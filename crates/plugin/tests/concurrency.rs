//! The plugin under concurrency and under SIGKILL at random instants.
//!
//! a) 50 ADDs at once into 50 pods of one node, then 50 DELs at once.
//! b) Hundreds of ADDs and DELs, several at a time, each killed with SIGKILL after a random delay
//!    (some land before, most during, some after the run), in a bridge and a routed network.
//!    Afterwards: no address has two owners (store and pods), and CNI GC with the runtime's list
//!    of valid attachments removes every leftover and keeps every valid attachment whole.
//!
//! Seeded with a printed seed (`WEFT_SEED=<n>` repeats a run's choices; thread timing still varies).
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Child;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Netns, Node, link_aliases, result_ip, store_records, weft_links};
use common::{Outcome, eth0_addrs, finish, median, spawn};
use serde_json::{Value, json};
use weft_store::testing::{Rng, seed};

fn bridge_net(data_dir: &str, name: &str, bridge: &str, v4: &str, v6: &str) -> Value {
    json!({
        "cniVersion": "1.1.0",
        "name": name,
        "type": "weft",
        "mode": "bridge",
        "bridge": bridge,
        "ipam": {
            "pools": [{"subnet": v4}, {"subnet": v6}],
            "cooldownSeconds": 0,
            "dataDir": data_dir,
            "node": "n1",
        },
    })
}

fn routed_net(data_dir: &str, name: &str, v4: &str, v6: &str) -> Value {
    json!({
        "cniVersion": "1.1.0",
        "name": name,
        "type": "weft",
        "mode": "routed",
        "ipam": {
            "pools": [{"subnet": v4}, {"subnet": v6}],
            "cooldownSeconds": 0,
            "dataDir": data_dir,
            "node": "n1",
        },
    })
}

/// `/weft/v1/handles/<net>/<handle>` -> addresses (without prefix).
fn handle_addresses(data_dir: &str) -> BTreeMap<String, Vec<String>> {
    store_records(data_dir, "handles")
        .into_iter()
        .map(|(k, v)| {
            let addrs = v["addresses"]
                .as_array()
                .unwrap_or_else(|| panic!("{k} has no addresses: {v}"))
                .iter()
                .map(|a| a.as_str().unwrap().split('/').next().unwrap().to_string())
                .collect();
            (k, addrs)
        })
        .collect()
}

/// (network, address) -> handle, from the block records (the one place an owner is written).
fn block_owners(data_dir: &str) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for (key, b) in store_records(data_dir, "blocks") {
        let net = key.split('/').nth(4).unwrap().to_string();
        let cidr: ipnet::IpNet = b["cidr"].as_str().unwrap().parse().unwrap();
        if let Some(a) = b["allocations"].as_object() {
            for (off, h) in a {
                let off: u128 = off.parse().unwrap();
                let addr = match cidr.network() {
                    std::net::IpAddr::V4(n) => {
                        std::net::IpAddr::V4((u32::from(n) + off as u32).into())
                    }
                    std::net::IpAddr::V6(n) => std::net::IpAddr::V6((u128::from(n) + off).into()),
                };
                out.push((
                    net.clone(),
                    addr.to_string(),
                    h.as_str().unwrap().to_string(),
                ));
            }
        }
    }
    out
}

/// Checks the store's own invariants: one owner per address, and the handle records and the block
/// entries agree both ways. Returns the problems found.
fn store_invariants(data_dir: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let handles = handle_addresses(data_dir);
    let mut owner: BTreeMap<(String, String), String> = BTreeMap::new();
    for (key, addrs) in &handles {
        let net = key.split('/').nth(4).unwrap().to_string();
        for a in addrs {
            if let Some(other) = owner.insert((net.clone(), a.clone()), key.clone()) {
                problems.push(format!(
                    "address {a} held by two handles: {other} and {key}"
                ));
            }
        }
    }
    let blocks = block_owners(data_dir);
    let mut in_blocks = BTreeSet::new();
    for (net, addr, h) in &blocks {
        in_blocks.insert((net.clone(), addr.clone(), h.clone()));
        let key = format!("/weft/v1/handles/{net}/{h}");
        if !handles.get(&key).is_some_and(|a| a.contains(addr)) {
            problems.push(format!(
                "block entry {net} {addr} -> {h} has no handle record holding it"
            ));
        }
    }
    for (key, addrs) in &handles {
        let mut parts = key.splitn(6, '/');
        let (net, h) = (parts.nth(4).unwrap(), parts.next().unwrap());
        for a in addrs {
            if !in_blocks.contains(&(net.to_string(), a.clone(), h.to_string())) {
                problems.push(format!("handle {key} holds {a} but no block entry says so"));
            }
        }
    }
    problems
}

#[test]
fn fifty_parallel_adds_then_fifty_parallel_dels() {
    let node = Node::new("cn");
    let dd = node.data_dir();
    let pods: Vec<Netns> = (0..50).map(|_| Netns::new("cp")).collect();
    let mut conf = bridge_net(&dd, "par", "wpar0", "198.18.0.0/24", "fd00:18::/64");
    conf["ipam"]["cooldownSeconds"] = json!(30);

    let t = Instant::now();
    let children: Vec<Child> = pods
        .iter()
        .enumerate()
        .map(|(i, p)| spawn(&node.ns, "ADD", &format!("par{i}"), Some(p), &conf))
        .collect();
    let outs: Vec<Outcome> = children.into_iter().map(finish).collect();
    let add_time = t.elapsed();
    let mut v4 = BTreeSet::new();
    let mut v6 = BTreeSet::new();
    for (i, o) in outs.iter().enumerate() {
        let Outcome::Ok(r) = o else {
            panic!("ADD par{i} failed: {o:?}")
        };
        let a4 = result_ip(r, 4).unwrap_or_else(|| panic!("par{i}: no IPv4 in {r}"));
        let a6 = result_ip(r, 6).unwrap_or_else(|| panic!("par{i}: no IPv6 in {r}"));
        assert!(a4.starts_with("198.18.0."), "{a4}");
        assert!(a6.starts_with("fd00:18::"), "{a6}");
        assert_ne!(a4, "198.18.0.1", "the gateway was given to par{i}");
        let on_pod = pods[i].addrs("eth0");
        assert!(
            on_pod.contains(&format!("{a4}/24")) && on_pod.contains(&format!("{a6}/64")),
            "par{i}: eth0 holds {on_pod:?}, the result said {a4} and {a6}"
        );
        assert!(v4.insert(a4.clone()), "IPv4 {a4} given twice");
        assert!(v6.insert(a6.clone()), "IPv6 {a6} given twice");
        let record = format!("{dd}/store/kv/weft/v1/handles/par/=par{i}:eth0");
        assert!(
            std::path::Path::new(&record).exists(),
            "no allocation record at {record}"
        );
    }
    assert_eq!((v4.len(), v6.len()), (50, 50));
    assert_eq!(weft_links(&node.ns).len(), 50);
    assert!(
        store_invariants(&dd).is_empty(),
        "{:?}",
        store_invariants(&dd)
    );
    assert_eq!(handle_addresses(&dd).len(), 50);

    let t = Instant::now();
    let children: Vec<Child> = pods
        .iter()
        .enumerate()
        .map(|(i, p)| spawn(&node.ns, "DEL", &format!("par{i}"), Some(p), &conf))
        .collect();
    let outs: Vec<Outcome> = children.into_iter().map(finish).collect();
    let del_time = t.elapsed();
    for (i, o) in outs.iter().enumerate() {
        assert!(matches!(o, Outcome::Ok(_)), "DEL par{i} failed: {o:?}");
        assert_eq!(pods[i].links(), ["lo"], "pod {i} keeps links after DEL");
    }
    assert!(
        weft_links(&node.ns).is_empty(),
        "{:?}",
        weft_links(&node.ns)
    );
    let left: Vec<String> = node
        .ns
        .links()
        .into_iter()
        .filter(|l| l != "lo" && l != "wpar0")
        .collect();
    assert!(left.is_empty(), "links left in the node: {left:?}");
    assert!(
        handle_addresses(&dd).is_empty(),
        "{:?}",
        handle_addresses(&dd)
    );
    assert!(block_owners(&dd).is_empty(), "{:?}", block_owners(&dd));
    eprintln!("50 parallel ADDs in {add_time:?}, 50 parallel DELs in {del_time:?}");
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Nothing attached (never added, or DEL completed).
    Fresh,
    /// The last ADD completed and no DEL was tried since: the runtime lists it as valid.
    Valid,
    /// A killed or failed ADD or DEL: the runtime does not list it; GC must clean it.
    Dirty,
}

struct Slot {
    pod: Arc<Netns>,
    net: usize,
    cid: String,
    generation: u32,
    state: State,
    /// Addresses of the last completed ADD.
    addrs: Vec<String>,
}

#[derive(Default)]
struct Stats {
    trials: u32,
    killed: u32,
    completed: u32,
    per_op: BTreeMap<String, (u32, u32)>,
    unexpected: Vec<String>,
}

struct Net {
    name: &'static str,
    config: Value,
    /// Kill delays are drawn from 0..=max for ADD and DEL (µs).
    max_add_us: u64,
    max_del_us: u64,
}

#[test]
fn sigkill_at_random_instants_then_gc() {
    const WORKERS: usize = 4;
    const TRIALS_PER_WORKER: usize = 100;
    const SLOTS_PER_WORKER: usize = 8;
    let seed = seed();
    eprintln!("sigkill test seed {seed} (WEFT_SEED={seed} repeats the choices)");
    let t0 = Instant::now();
    let node = Node::new("kn");
    let dd = node.data_dir();
    let mut nets = vec![
        Net {
            name: "kbr",
            config: bridge_net(&dd, "kbr", "wkb0", "198.18.0.0/23", "fd00:18::/64"),
            max_add_us: 0,
            max_del_us: 0,
        },
        Net {
            name: "krt",
            config: routed_net(&dd, "krt", "198.18.2.0/23", "fd00:19::/64"),
            max_add_us: 0,
            max_del_us: 0,
        },
    ];

    // Calibrate: how long an undisturbed ADD and DEL take here, per network.
    for net in &mut nets {
        let (mut adds, mut dels) = (Vec::new(), Vec::new());
        for i in 0..5 {
            let pod = Netns::new("kc");
            let cid = format!("calib-{}-{i}", net.name);
            let t = Instant::now();
            let o = finish(spawn(&node.ns, "ADD", &cid, Some(&pod), &net.config));
            adds.push(t.elapsed());
            assert!(matches!(o, Outcome::Ok(_)), "calibration ADD: {o:?}");
            let t = Instant::now();
            let o = finish(spawn(&node.ns, "DEL", &cid, Some(&pod), &net.config));
            dels.push(t.elapsed());
            assert!(matches!(o, Outcome::Ok(_)), "calibration DEL: {o:?}");
        }
        let (a, d) = (median(adds), median(dels));
        // Under WORKERS concurrent runs on 2 cores a run takes longer than alone: draw delays up
        // to 2x the quiet median, so most kills land mid-run and a share of runs complete.
        net.max_add_us = (a.as_micros() as u64 * 2).max(2_000);
        net.max_del_us = (d.as_micros() as u64 * 2).max(2_000);
        eprintln!(
            "{}: quiet ADD {a:?}, DEL {d:?}; kill delays up to {} / {} µs",
            net.name, net.max_add_us, net.max_del_us
        );
    }
    let nets = Arc::new(nets);
    let node = Arc::new(node);
    let abandoned: Arc<Mutex<Vec<Slot>>> = Arc::new(Mutex::new(Vec::new()));
    let netns_lock = Arc::new(Mutex::new(()));

    let workers: Vec<_> = (0..WORKERS)
        .map(|w| {
            let (nets, node, abandoned, netns_lock) = (
                nets.clone(),
                node.clone(),
                abandoned.clone(),
                netns_lock.clone(),
            );
            std::thread::spawn(move || {
                let mut rng = Rng::new(seed ^ ((w as u64 + 1) << 40));
                let new_pod = || {
                    let _g = netns_lock.lock().unwrap();
                    Arc::new(Netns::new("kp"))
                };
                let mut slots: Vec<Slot> = (0..SLOTS_PER_WORKER)
                    .map(|s| Slot {
                        pod: new_pod(),
                        net: (w + s) % 2,
                        cid: format!("k{w}s{s}g0"),
                        generation: 0,
                        state: State::Fresh,
                        addrs: vec![],
                    })
                    .collect();
                let mut stats = Stats::default();
                let mut rounds = 0;
                while (stats.trials as usize) < TRIALS_PER_WORKER && rounds < 20 * TRIALS_PER_WORKER
                {
                    rounds += 1;
                    let si = rng.below(SLOTS_PER_WORKER as u64) as usize;
                    let slot = &mut slots[si];
                    if slot.state == State::Valid && !rng.chance(35) {
                        // Pods live a while: keep a good number valid for GC to spare.
                        continue;
                    }
                    if slot.state == State::Dirty && rng.chance(50) {
                        // The runtime gives up on this sandbox: its leftovers are GC's job.
                        let generation = slot.generation + 1;
                        let replacement = Slot {
                            pod: new_pod(),
                            net: rng.below(2) as usize,
                            cid: format!("k{w}s{si}g{generation}"),
                            generation,
                            state: State::Fresh,
                            addrs: vec![],
                        };
                        abandoned
                            .lock()
                            .unwrap()
                            .push(std::mem::replace(slot, replacement));
                        continue;
                    }
                    let op = match slot.state {
                        State::Fresh => "ADD",
                        State::Valid | State::Dirty => "DEL",
                    };
                    let net = &nets[slot.net];
                    let max = if op == "ADD" {
                        net.max_add_us
                    } else {
                        net.max_del_us
                    };
                    let delay = Duration::from_micros(rng.below(max + 1));
                    let mut child = spawn(&node.ns, op, &slot.cid, Some(&slot.pod), &net.config);
                    std::thread::sleep(delay);
                    let _ = child.kill(); // SIGKILL, by the PID of our own child
                    let outcome = finish(child);
                    stats.trials += 1;
                    let e = stats
                        .per_op
                        .entry(format!("{} {op}", net.name))
                        .or_default();
                    match outcome {
                        Outcome::Killed => {
                            stats.killed += 1;
                            e.0 += 1;
                            slot.state = State::Dirty;
                        }
                        Outcome::Ok(result) => {
                            stats.completed += 1;
                            e.1 += 1;
                            if op == "ADD" {
                                slot.state = State::Valid;
                                slot.addrs = [4, 6]
                                    .iter()
                                    .filter_map(|f| result_ip(&result, *f))
                                    .collect();
                                if slot.addrs.len() != 2 {
                                    stats
                                        .unexpected
                                        .push(format!("ADD {} returned {result}", slot.cid));
                                }
                            } else {
                                let links = slot.pod.links();
                                if links != ["lo"] {
                                    stats.unexpected.push(format!(
                                        "DEL {} completed but the pod keeps {links:?}",
                                        slot.cid
                                    ));
                                }
                                slot.state = State::Fresh;
                                slot.generation += 1;
                                slot.cid = format!("k{w}s{si}g{}", slot.generation);
                                slot.addrs.clear();
                            }
                        }
                        Outcome::Failed(msg) => {
                            stats.unexpected.push(format!(
                                "{op} {} ({}) failed without being killed: {msg}",
                                slot.cid, net.name
                            ));
                            slot.state = State::Dirty;
                        }
                    }
                }
                (slots, stats)
            })
        })
        .collect();
    let mut slots = Vec::new();
    let mut stats = Stats::default();
    for w in workers {
        let (s, st) = w.join().expect("worker panicked");
        slots.extend(s);
        stats.trials += st.trials;
        stats.killed += st.killed;
        stats.completed += st.completed;
        for (k, (a, b)) in st.per_op {
            let e = stats.per_op.entry(k).or_default();
            e.0 += a;
            e.1 += b;
        }
        stats.unexpected.extend(st.unexpected);
    }
    slots.extend(std::mem::take(&mut *abandoned.lock().unwrap()));
    let trial_time = t0.elapsed();
    eprintln!(
        "{} trials in {trial_time:?}: {} killed, {} completed; killed/completed per op: {:?}",
        stats.trials, stats.killed, stats.completed, stats.per_op
    );
    let mut problems: Vec<String> = stats.unexpected.clone();
    assert!(stats.trials >= 200, "only {} trials", stats.trials);
    assert!(
        stats.killed * 4 >= stats.trials && stats.completed * 10 >= stats.trials,
        "kill timing is off: {} killed, {} completed of {}",
        stats.killed,
        stats.completed,
        stats.trials
    );

    // 1. No address has two owners: in the store, and on the pods' eth0.
    for p in store_invariants(&dd) {
        problems.push(format!("before GC: {p}"));
    }
    let mut on_pods: BTreeMap<String, String> = BTreeMap::new();
    for s in &slots {
        for a in eth0_addrs(&s.pod) {
            if let Some(other) = on_pods.insert(a.clone(), s.cid.clone()) {
                problems.push(format!(
                    "address {a} is on eth0 of two pods: {other} and {}",
                    s.cid
                ));
            }
        }
    }
    for s in slots.iter().filter(|s| s.state == State::Valid) {
        let have = eth0_addrs(&s.pod);
        for a in &s.addrs {
            if !have.contains(a) {
                problems.push(format!(
                    "valid {} lost {a} before GC (eth0 has {have:?})",
                    s.cid
                ));
            }
        }
    }

    // 2. GC per network with the attachments the runtime knows to be valid.
    let valid: BTreeSet<(String, String)> = slots
        .iter()
        .filter(|s| s.state == State::Valid)
        .map(|s| (nets[s.net].name.to_string(), s.cid.clone()))
        .collect();
    let dirty = slots.iter().filter(|s| s.state == State::Dirty).count();
    let leaked_allocs = handle_addresses(&dd).len().saturating_sub(valid.len());
    let leaked_links = node.ns.links().len().saturating_sub(valid.len() + 2);
    eprintln!(
        "{} valid attachments, {dirty} dirty (killed/failed) ones in {} pods; before GC about \
         {leaked_allocs} allocations and {leaked_links} links are leftovers for GC",
        valid.len(),
        slots.len()
    );
    let t = Instant::now();
    for net in nets.iter() {
        let list: Vec<Value> = valid
            .iter()
            .filter(|(n, _)| n == net.name)
            .map(|(_, c)| json!({"containerID": c, "ifname": "eth0"}))
            .collect();
        let mut conf = net.config.clone();
        conf["cni.dev/valid-attachments"] = Value::Array(list);
        match finish(spawn(&node.ns, "GC", "gc", None, &conf)) {
            Outcome::Ok(_) => {}
            o => problems.push(format!("GC {}: {o:?}", net.name)),
        }
    }
    let gc_time = t.elapsed();

    // 3. After GC: exactly the valid attachments hold addresses and host veths.
    for p in store_invariants(&dd) {
        problems.push(format!("after GC: {p}"));
    }
    let handles: BTreeSet<(String, String)> = handle_addresses(&dd)
        .keys()
        .map(|k| {
            let mut parts = k.splitn(6, '/');
            let net = parts.nth(4).unwrap().to_string();
            let h = parts.next().unwrap();
            (net, h.trim_end_matches(":eth0").to_string())
        })
        .collect();
    for extra in handles.difference(&valid) {
        problems.push(format!(
            "after GC an allocation remains for {extra:?}, not valid"
        ));
    }
    for lost in valid.difference(&handles) {
        problems.push(format!("GC freed the valid attachment {lost:?}"));
    }
    let aliases = link_aliases(&node.ns);
    let mut veth_of: BTreeMap<(String, String), String> = BTreeMap::new();
    for l in node.ns.links() {
        if l == "lo" || l == "wkb0" {
            continue;
        }
        let alias = aliases.get(&l).cloned().unwrap_or_default();
        let parts: Vec<&str> = alias.splitn(4, ':').collect();
        match parts.as_slice() {
            ["weft", net, cid, "eth0"] if valid.contains(&(net.to_string(), cid.to_string())) => {
                veth_of.insert((net.to_string(), cid.to_string()), l.clone());
            }
            _ => problems.push(format!(
                "after GC the node keeps link {l} (alias {alias:?}) of no valid attachment"
            )),
        }
    }
    for v in &valid {
        if !veth_of.contains_key(v) {
            problems.push(format!("valid attachment {v:?} has no host veth after GC"));
        }
    }
    for s in &slots {
        let key = (nets[s.net].name.to_string(), s.cid.clone());
        if valid.contains(&key) {
            let have = eth0_addrs(&s.pod);
            if s.addrs.iter().any(|a| !have.contains(a)) {
                problems.push(format!(
                    "valid {} lost addresses in GC: eth0 has {have:?}, ADD gave {:?}",
                    s.cid, s.addrs
                ));
            }
        } else if s.pod.links() != ["lo"] {
            problems.push(format!(
                "pod of {} ({:?}) keeps {:?} after GC",
                s.cid,
                s.state,
                s.pod.links()
            ));
        }
    }
    // Routed mode: every host route to a pod goes to a valid attachment's veth.
    let valid_veths: BTreeSet<&String> = veth_of.values().collect();
    for fam in ["-4", "-6"] {
        for r in node.ns.ip_json(&[fam, "route", "show"]).as_array().unwrap() {
            let dev = r["dev"].as_str().unwrap_or("");
            let dst = r["dst"].as_str().unwrap_or("");
            if dev.starts_with('w') && dev != "wkb0" && !valid_veths.contains(&dev.to_string()) {
                problems.push(format!("route {dst} dev {dev} of no valid attachment"));
            }
        }
    }

    // 4. DEL every valid attachment: nothing may be left.
    let t = Instant::now();
    for s in slots.iter().filter(|s| s.state == State::Valid) {
        match finish(spawn(
            &node.ns,
            "DEL",
            &s.cid,
            Some(&s.pod),
            &nets[s.net].config,
        )) {
            Outcome::Ok(_) => {}
            o => problems.push(format!("final DEL {}: {o:?}", s.cid)),
        }
    }
    let del_time = t.elapsed();
    if !handle_addresses(&dd).is_empty() || !block_owners(&dd).is_empty() {
        problems.push(format!(
            "after the final DELs the store keeps {:?} / {:?}",
            handle_addresses(&dd),
            block_owners(&dd)
        ));
    }
    let left = weft_links(&node.ns);
    if !left.is_empty() {
        problems.push(format!("after the final DELs the node keeps {left:?}"));
    }
    eprintln!(
        "GC in {gc_time:?}, final DELs in {del_time:?}, whole test {:?}",
        t0.elapsed()
    );
    drop(slots);
    assert!(
        problems.is_empty(),
        "seed {seed}: {} problems:\n{}",
        problems.len(),
        problems.join("\n")
    );
}
