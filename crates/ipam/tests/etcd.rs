//! The IPAM library on a real etcd (started on a loopback port by the test), several "nodes" at
//! once, each with its own `EtcdStore` and node name:
//!
//! a) nodes allocating and releasing concurrently in a small pool (blocks claimed, borrowed and
//!    contended): never a duplicate, and the handle records and the block records agree;
//! b) CNI GC and the leak sweep running concurrently with ADD and DEL, with leaks made on
//!    purpose: no live address is ever freed, and every leak is freed in the end;
//! c) fixed addresses: a StatefulSet pod recreated on another node (policies workload, never,
//!    pod), a node that died before DEL, and a Deployment pool across a rollout.
//!
//! Seeded with a printed seed (`WEFT_SEED=<n>` repeats a run's choices; thread timing varies).
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use weft_ipam::{
    AllocateRequest, Allocation, BlockRecord, Fixed, Identity, Ipam, IpamError, LeakSweeper,
    NetworkSpec, PoolRequest, PoolSpec, ReleasePolicy, ip_add,
};
use weft_store::etcd::{EtcdOptions, EtcdStore};
use weft_store::testing::{EtcdServer, Rng, seed};
use weft_store::{Store, StoreError};

fn connect(etcd: &EtcdServer) -> EtcdStore {
    // Generous: a loaded 2-core CI machine must not turn slowness into failures here (the
    // 2-second bound itself is the store suite's `etcd_down_then_back`).
    let opts = EtcdOptions {
        request_timeout: std::time::Duration::from_secs(5),
        ..EtcdOptions::default()
    };
    EtcdStore::connect(&[etcd.endpoint()], opts).unwrap()
}

fn pool(subnet: &str) -> PoolSpec {
    PoolSpec {
        subnet: subnet.parse().unwrap(),
        range_start: None,
        range_end: None,
        exclude: vec![],
        gateway: None,
    }
}

/// A small dual-stack network cut into small blocks, so that nodes run out of their own blocks,
/// claim more, and borrow from each other's.
fn small_spec(name: &str, v4: &str) -> NetworkSpec {
    let mut s = NetworkSpec::new(name, vec![pool(v4), pool("fd00:18::/120")]);
    s.block_prefix_v4 = 29; // blocks of 8
    s.block_prefix_v6 = 124; // 16 blocks of 16
    s.cooldown_seconds = 0; // freed addresses are handed out again at once: the hardest case
    s
}

fn req(cid: &str, node: &str, fixed: Option<Fixed>) -> AllocateRequest {
    AllocateRequest {
        container_id: cid.into(),
        ifname: "eth0".into(),
        node: node.into(),
        fixed,
        ..Default::default()
    }
}

fn ips(a: &weft_ipam::Allocated) -> Vec<IpAddr> {
    a.addresses.iter().map(|x| x.address.addr()).collect()
}

/// Allocates, trying again on an optimistic-transaction conflict (what a runtime's retry does).
fn allocate_retrying(
    ipam: &Ipam<'_>,
    spec: &NetworkSpec,
    r: &AllocateRequest,
) -> weft_ipam::Result<weft_ipam::Allocated> {
    let mut tries = 0;
    loop {
        match ipam.allocate(spec, r) {
            Err(IpamError::Store(StoreError::Conflict(_))) if tries < 20 => tries += 1,
            other => return other,
        }
    }
}

fn release_retrying(
    ipam: &Ipam<'_>,
    net: &str,
    cid: &str,
) -> weft_ipam::Result<Option<Allocation>> {
    let mut tries = 0;
    loop {
        match ipam.release(net, cid, "eth0") {
            Err(IpamError::Store(StoreError::Conflict(_))) if tries < 20 => tries += 1,
            other => return other,
        }
    }
}

/// The network's records read in one etcd range request (one revision, so a consistent view
/// even while others write): handles by handle id, blocks by key.
struct Snapshot {
    handles: BTreeMap<String, Allocation>,
    blocks: BTreeMap<String, BlockRecord>,
}

impl Snapshot {
    fn read(store: &dyn Store, net: &str) -> Snapshot {
        let mut s = Snapshot {
            handles: BTreeMap::new(),
            blocks: BTreeMap::new(),
        };
        let hp = format!("/weft/v1/handles/{net}/");
        let bp = format!("/weft/v1/blocks/{net}/");
        for kv in store.list("/weft/v1/").unwrap() {
            if let Some(h) = kv.key.strip_prefix(&hp) {
                s.handles
                    .insert(h.to_string(), serde_json::from_slice(&kv.value).unwrap());
            } else if kv.key.starts_with(&bp) {
                s.blocks
                    .insert(kv.key.clone(), serde_json::from_slice(&kv.value).unwrap());
            }
        }
        s
    }

    /// (address, owner, block's node) for every block entry.
    fn owners(&self) -> Vec<(IpAddr, String, Option<String>)> {
        let mut out = Vec::new();
        for b in self.blocks.values() {
            for (off, h) in &b.allocations {
                out.push((
                    ip_add(b.cidr.network(), *off as u128),
                    h.clone(),
                    b.node.clone(),
                ));
            }
        }
        out
    }

    /// The store's own invariants: blocks do not overlap, no address has two owners, handle
    /// records and block entries agree both ways (pseudo-owners of reservations and pools have no
    /// handle record).
    fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        let cidrs: Vec<IpNet> = self.blocks.values().map(|b| b.cidr).collect();
        for (i, a) in cidrs.iter().enumerate() {
            for b in &cidrs[i + 1..] {
                if a.contains(&b.network()) || b.contains(&a.network()) {
                    p.push(format!("blocks {a} and {b} overlap"));
                }
            }
        }
        let mut by_addr: BTreeMap<IpAddr, String> = BTreeMap::new();
        for (h, a) in &self.handles {
            for n in &a.addresses {
                if let Some(other) = by_addr.insert(n.addr(), h.clone()) {
                    p.push(format!(
                        "address {} held by two handles: {other} and {h}",
                        n.addr()
                    ));
                }
            }
        }
        let owners = self.owners();
        let mut seen = BTreeMap::new();
        for (addr, h, _) in &owners {
            if let Some(o) = seen.insert(*addr, h.clone()) {
                p.push(format!("address {addr} has two block entries: {o} and {h}"));
            }
            let pseudo = h.starts_with("reserved:") || h.starts_with("pool:");
            if !pseudo && by_addr.get(addr) != Some(h) {
                p.push(format!(
                    "block entry {addr} -> {h}, but the handle records say {:?}",
                    by_addr.get(addr)
                ));
            }
        }
        for (addr, h) in &by_addr {
            if seen.get(addr) != Some(h) {
                p.push(format!(
                    "handle {h} holds {addr} but its block entry says {:?}",
                    seen.get(addr)
                ));
            }
        }
        p
    }
}

// ---------------------------------------------------------------------------------------------
// a) Concurrent nodes: no duplicate.

#[test]
fn nodes_allocating_and_releasing_concurrently_never_share_an_address() {
    const NODES: usize = 6;
    const OPS: usize = 120;
    // Per node: 6 x 4 = 24 of the 30 IPv4 addresses at most, in 4 blocks for 6 nodes: two
    // nodes at least have no block of their own and borrow every address they get.
    const HOLD: usize = 4;
    let seed = seed();
    eprintln!("seed {seed} (WEFT_SEED={seed} repeats the choices)");
    let etcd = Arc::new(EtcdServer::start());
    let net = "conc";
    let spec = Arc::new(small_spec(net, "198.18.0.0/27"));
    // Every address handed out and not yet given back -> its holder, across all nodes.
    let owners: Arc<Mutex<BTreeMap<IpAddr, String>>> = Arc::default();
    let t0 = Instant::now();
    let workers: Vec<_> = (0..NODES)
        .map(|n| {
            let (etcd, spec, owners) = (etcd.clone(), spec.clone(), owners.clone());
            std::thread::spawn(move || {
                let store = connect(&etcd);
                let ipam = Ipam::new(&store);
                let node = format!("node-{n}");
                let mut rng = Rng::new(seed ^ ((n as u64 + 1) << 32));
                let mut held: Vec<(String, Vec<IpAddr>)> = Vec::new();
                let mut problems = Vec::new();
                let (mut allocs, mut releases) = (0u32, 0u32);
                for i in 0..OPS {
                    if held.len() < HOLD && (held.is_empty() || rng.chance(60)) {
                        let cid = format!("n{n}-c{i}");
                        match allocate_retrying(&ipam, &spec, &req(&cid, &node, None)) {
                            Ok(a) => {
                                allocs += 1;
                                let got = ips(&a);
                                if got.len() != 2 {
                                    problems.push(format!("{cid} got {got:?}"));
                                }
                                let mut o = owners.lock().unwrap();
                                for x in &got {
                                    if let Some(other) = o.insert(*x, cid.clone()) {
                                        problems.push(format!(
                                            "DUPLICATE: {x} handed to {cid} while {other} holds it"
                                        ));
                                    }
                                }
                                drop(o);
                                held.push((cid, got));
                            }
                            Err(e) => problems.push(format!("allocate {cid}: {e}")),
                        }
                    } else {
                        let (cid, addrs) = held.swap_remove(rng.below(held.len() as u64) as usize);
                        {
                            // Forget the owner first: the address may be handed out again the
                            // moment the release commits.
                            let mut o = owners.lock().unwrap();
                            for x in &addrs {
                                o.remove(x);
                            }
                        }
                        match release_retrying(&ipam, &spec.name, &cid) {
                            Ok(Some(a)) => {
                                releases += 1;
                                let freed: Vec<IpAddr> =
                                    a.addresses.iter().map(|x| x.addr()).collect();
                                if freed != addrs {
                                    problems.push(format!(
                                        "release {cid} freed {freed:?}, it was given {addrs:?}"
                                    ));
                                }
                            }
                            Ok(None) => problems.push(format!("release {cid}: no record")),
                            Err(e) => problems.push(format!("release {cid}: {e}")),
                        }
                    }
                }
                (held, problems, allocs, releases)
            })
        })
        .collect();
    let mut held = BTreeMap::new();
    let mut problems = Vec::new();
    let (mut allocs, mut releases) = (0, 0);
    for w in workers {
        let (h, p, a, r) = w.join().expect("worker panicked");
        held.extend(h);
        problems.extend(p);
        allocs += a;
        releases += r;
    }
    let elapsed = t0.elapsed();
    let store = connect(&etcd);
    let snap = Snapshot::read(&store, net);
    problems.extend(snap.problems());
    // The store holds exactly what the workers hold.
    let want: BTreeMap<String, Vec<IpAddr>> = held
        .iter()
        .map(|(c, a)| (format!("{c}:eth0"), a.clone()))
        .collect();
    let have: BTreeMap<String, Vec<IpAddr>> = snap
        .handles
        .iter()
        .map(|(h, a)| (h.clone(), a.addresses.iter().map(|x| x.addr()).collect()))
        .collect();
    if want != have {
        problems.push(format!("store holds {have:?}, workers hold {want:?}"));
    }
    let borrowed = snap
        .owners()
        .iter()
        .filter(|(_, h, bn)| {
            snap.handles
                .get(h)
                .is_some_and(|a| Some(&a.node) != bn.as_ref())
        })
        .count();
    eprintln!(
        "{NODES} nodes: {allocs} allocations, {releases} releases in {elapsed:?}; {} blocks \
         claimed, {borrowed} live addresses borrowed from another node's block",
        snap.blocks.len()
    );
    // Release everything: nothing may be left.
    let ipam = Ipam::new(&store);
    for cid in held.keys() {
        if release_retrying(&ipam, net, cid).unwrap().is_none() {
            problems.push(format!("final release of {cid}: no record"));
        }
    }
    let snap = Snapshot::read(&store, net);
    if !snap.handles.is_empty() || !snap.owners().is_empty() {
        problems.push(format!(
            "after releasing everything: handles {:?}, block entries {:?}",
            snap.handles.keys().collect::<Vec<_>>(),
            snap.owners()
        ));
    }
    assert!(
        allocs as usize >= NODES * OPS / 3,
        "too few allocations: {allocs}"
    );
    assert!(
        problems.is_empty(),
        "seed {seed}: {} problems:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// b) GC and the leak sweep concurrently with ADD and DEL.

/// What one node's runtime knows about its attachments.
#[derive(Default)]
struct Runtime {
    /// ADD completed, no DEL started: container -> addresses.
    live: BTreeMap<String, Vec<IpAddr>>,
    /// ADD started, not finished (the runtime lists these as valid too).
    adding: BTreeSet<String>,
}

impl Runtime {
    fn knows(&self, cid: &str) -> bool {
        self.live.contains_key(cid) || self.adding.contains(cid)
    }
}

#[test]
fn gc_and_leak_sweep_concurrent_with_add_and_del_never_free_a_live_address() {
    const NODES: usize = 4;
    const OPS: usize = 90;
    const HOLD: usize = 6;
    /// Nodes below this get CNI GC; all get the leak sweep (so the others' leaks are freed by
    /// the sweep alone).
    const GC_NODES: usize = 2;
    let seed = seed();
    eprintln!("seed {seed} (WEFT_SEED={seed} repeats the choices)");
    let etcd = Arc::new(EtcdServer::start());
    let net = "sweep";
    let spec = Arc::new(small_spec(net, "198.18.0.0/26")); // 62 IPv4 addresses, 8 blocks
    let runtimes: Arc<Vec<Mutex<Runtime>>> =
        Arc::new((0..NODES).map(|_| Mutex::default()).collect());
    let abandoned: Arc<Mutex<Vec<(usize, String)>>> = Arc::default();
    let problems: Arc<Mutex<Vec<String>>> = Arc::default();
    let done = Arc::new(AtomicBool::new(false));
    let (gc_freed, sweep_freed, checkpoints) = (
        Arc::new(AtomicU32::new(0)),
        Arc::new(AtomicU32::new(0)),
        Arc::new(AtomicU32::new(0)),
    );
    let t0 = Instant::now();

    // The node workers: ADD (sometimes abandoned: a leak), DEL.
    let workers: Vec<_> = (0..NODES)
        .map(|n| {
            let (etcd, spec, runtimes, abandoned, problems) = (
                etcd.clone(),
                spec.clone(),
                runtimes.clone(),
                abandoned.clone(),
                problems.clone(),
            );
            std::thread::spawn(move || {
                let store = connect(&etcd);
                let ipam = Ipam::new(&store);
                let node = format!("node-{n}");
                let rt = &runtimes[n];
                let mut rng = Rng::new(seed ^ ((n as u64 + 1) << 32));
                let mut adds = 0;
                for i in 0..OPS {
                    let nlive = rt.lock().unwrap().live.len();
                    if nlive < HOLD && (nlive == 0 || rng.chance(60)) {
                        let cid = format!("n{n}-c{i}");
                        rt.lock().unwrap().adding.insert(cid.clone());
                        let got = allocate_retrying(&ipam, &spec, &req(&cid, &node, None));
                        let mut r = rt.lock().unwrap();
                        r.adding.remove(&cid);
                        match got {
                            Ok(a) => {
                                adds += 1;
                                if rng.chance(15) {
                                    // The runtime loses it: no DEL will ever come.
                                    abandoned.lock().unwrap().push((n, cid));
                                } else {
                                    r.live.insert(cid, ips(&a));
                                }
                            }
                            Err(e) => problems.lock().unwrap().push(format!("ADD {cid}: {e}")),
                        }
                    } else {
                        let mut r = rt.lock().unwrap();
                        let Some(cid) =
                            r.live.keys().nth(rng.below(nlive as u64) as usize).cloned()
                        else {
                            continue;
                        };
                        // Still live: it must still own its addresses (nobody frees it while
                        // the lock keeps GC and the sweep's last check out).
                        let want = r.live[&cid].clone();
                        match ipam.get(net, &cid, "eth0") {
                            Ok(Some(a))
                                if a.addresses.iter().map(|x| x.addr()).collect::<Vec<_>>()
                                    == want => {}
                            other => problems.lock().unwrap().push(format!(
                                "LIVE {cid} lost its allocation before its DEL: {other:?}"
                            )),
                        }
                        r.live.remove(&cid);
                        drop(r);
                        // DEL: GC or the sweep may free it first now; either way it goes.
                        if let Err(e) = release_retrying(&ipam, net, &cid) {
                            problems.lock().unwrap().push(format!("DEL {cid}: {e}"));
                        }
                    }
                }
                adds
            })
        })
        .collect();

    // CNI GC, node by node: the runtime's list holds every live attachment and every ADD in
    // flight; the node's runtime lock is held from taking the list to the end of GC, so no ADD
    // starts unlisted meanwhile (as a runtime serialises GC with its own operations).
    let gc = {
        let (etcd, runtimes, problems, done, gc_freed) = (
            etcd.clone(),
            runtimes.clone(),
            problems.clone(),
            done.clone(),
            gc_freed.clone(),
        );
        std::thread::spawn(move || {
            let store = connect(&etcd);
            let ipam = Ipam::new(&store);
            let mut rounds = 0;
            while !done.load(Ordering::SeqCst) {
                for n in 0..GC_NODES {
                    let r = runtimes[n].lock().unwrap();
                    let valid: Vec<(String, String)> = r
                        .live
                        .keys()
                        .chain(r.adding.iter())
                        .map(|c| (c.clone(), "eth0".to_string()))
                        .collect();
                    match ipam.gc(net, &format!("node-{n}"), &valid) {
                        Ok(freed) => {
                            for a in freed {
                                if r.knows(&a.container_id) {
                                    problems.lock().unwrap().push(format!(
                                        "GC FREED LIVE {} ({:?})",
                                        a.container_id, a.addresses
                                    ));
                                }
                                gc_freed.fetch_add(1, Ordering::SeqCst);
                            }
                        }
                        Err(IpamError::Store(StoreError::Conflict(_))) => {}
                        Err(e) => problems.lock().unwrap().push(format!("GC: {e}")),
                    }
                }
                rounds += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
            rounds
        })
    };

    // The leak sweep, every node, small grace; is_live asks the node's runtime.
    let sweep = {
        let (etcd, runtimes, problems, done, sweep_freed) = (
            etcd.clone(),
            runtimes.clone(),
            problems.clone(),
            done.clone(),
            sweep_freed.clone(),
        );
        std::thread::spawn(move || {
            let store = connect(&etcd);
            let ipam = Ipam::new(&store);
            let mut sweepers: Vec<LeakSweeper> = (0..NODES).map(|_| LeakSweeper::new(1)).collect();
            let mut rounds = 0;
            while !done.load(Ordering::SeqCst) {
                for (n, sw) in sweepers.iter_mut().enumerate() {
                    let rt = &runtimes[n];
                    let is_live = |a: &Allocation| rt.lock().unwrap().knows(&a.container_id);
                    match sw.sweep(&ipam, net, &format!("node-{n}"), &is_live) {
                        Ok(freed) => {
                            let r = rt.lock().unwrap();
                            for a in freed {
                                if r.knows(&a.container_id) {
                                    problems.lock().unwrap().push(format!(
                                        "SWEEP FREED LIVE {} ({:?})",
                                        a.container_id, a.addresses
                                    ));
                                }
                                sweep_freed.fetch_add(1, Ordering::SeqCst);
                            }
                        }
                        Err(IpamError::Store(StoreError::Conflict(_))) => {}
                        Err(e) => problems.lock().unwrap().push(format!("sweep: {e}")),
                    }
                }
                rounds += 1;
                std::thread::sleep(Duration::from_millis(150));
            }
            rounds
        })
    };

    // Checkpoints: with every runtime locked (no ADD or DEL changes state, no GC runs, the
    // sweep cannot pass its last check), every live attachment owns its addresses.
    let checker = {
        let (etcd, runtimes, problems, done, checkpoints) = (
            etcd.clone(),
            runtimes.clone(),
            problems.clone(),
            done.clone(),
            checkpoints.clone(),
        );
        std::thread::spawn(move || {
            let store = connect(&etcd);
            while !done.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(200));
                let locked: Vec<_> = runtimes.iter().map(|r| r.lock().unwrap()).collect();
                let snap = Snapshot::read(&store, net);
                let mut p = snap.problems();
                for r in &locked {
                    for (cid, want) in &r.live {
                        let h = format!("{cid}:eth0");
                        let have: Option<Vec<IpAddr>> = snap
                            .handles
                            .get(&h)
                            .map(|a| a.addresses.iter().map(|x| x.addr()).collect());
                        if have.as_ref() != Some(want) {
                            p.push(format!(
                                "checkpoint: LIVE {cid} holds {have:?}, not {want:?}"
                            ));
                        }
                        for (addr, owner, _) in snap.owners() {
                            if want.contains(&addr) && owner != h {
                                p.push(format!(
                                    "checkpoint: LIVE {cid}'s {addr} is owned by {owner}"
                                ));
                            }
                        }
                    }
                }
                drop(locked);
                checkpoints.fetch_add(1, Ordering::SeqCst);
                problems.lock().unwrap().extend(p);
            }
        })
    };

    let mut adds = 0;
    for w in workers {
        adds += w.join().expect("worker panicked");
    }
    let work_time = t0.elapsed();
    // Leaks are freed eventually: GC on some nodes, the sweep on all (grace 1 s, two sightings).
    let store = connect(&etcd);
    let ipam = Ipam::new(&store);
    let leaked = abandoned.lock().unwrap().clone();
    let deadline = Instant::now() + Duration::from_secs(20);
    let remaining = |ipam: &Ipam<'_>| -> Vec<String> {
        leaked
            .iter()
            .filter(|(_, c)| ipam.get(net, c, "eth0").unwrap().is_some())
            .map(|(n, c)| format!("node-{n}/{c}"))
            .collect()
    };
    let mut left = remaining(&ipam);
    while !left.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        left = remaining(&ipam);
    }
    let leak_time = t0.elapsed() - work_time;
    done.store(true, Ordering::SeqCst);
    let gc_rounds = gc.join().unwrap();
    let sweep_rounds = sweep.join().unwrap();
    checker.join().unwrap();
    let mut problems = std::mem::take(&mut *problems.lock().unwrap());
    if !left.is_empty() {
        problems.push(format!("leaks never freed: {left:?}"));
    }
    // At the end the store holds exactly the live attachments.
    let snap = Snapshot::read(&store, net);
    problems.extend(snap.problems());
    let live: BTreeMap<String, Vec<IpAddr>> = runtimes
        .iter()
        .flat_map(|r| {
            r.lock()
                .unwrap()
                .live
                .iter()
                .map(|(c, a)| (format!("{c}:eth0"), a.clone()))
                .collect::<Vec<_>>()
        })
        .collect();
    let have: BTreeMap<String, Vec<IpAddr>> = snap
        .handles
        .iter()
        .map(|(h, a)| (h.clone(), a.addresses.iter().map(|x| x.addr()).collect()))
        .collect();
    if live != have {
        problems.push(format!(
            "at the end the store holds {have:?}, the live set is {live:?}"
        ));
    }
    let (g, s) = (
        gc_freed.load(Ordering::SeqCst),
        sweep_freed.load(Ordering::SeqCst),
    );
    eprintln!(
        "{adds} ADDs on {NODES} nodes in {work_time:?}, {} leaks made, all freed {leak_time:?} \
         later; GC freed {g} ({gc_rounds} rounds), the sweep freed {s} ({sweep_rounds} rounds); \
         {} checkpoints; {} live at the end",
        leaked.len(),
        checkpoints.load(Ordering::SeqCst),
        live.len()
    );
    let sweep_only = leaked.iter().filter(|(n, _)| *n >= GC_NODES).count();
    assert!(
        leaked.len() >= 4 && sweep_only >= 1,
        "seed {seed}: too few leaks made to test anything ({} of which {sweep_only} on sweep-only nodes)",
        leaked.len()
    );
    assert!(
        checkpoints.load(Ordering::SeqCst) >= 3,
        "too few checkpoints"
    );
    assert!(
        s as usize >= sweep_only,
        "the sweep freed {s}, fewer than the {sweep_only} leaks only it could free"
    );
    assert!(
        problems.is_empty(),
        "seed {seed}: {} problems:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// c) Fixed addresses on etcd, nodes with their own stores.

fn v4_spec(name: &str, subnet: &str) -> NetworkSpec {
    let mut s = NetworkSpec::new(name, vec![pool(subnet)]);
    s.cooldown_seconds = 0;
    s
}

fn sts(ordinal: u32, policy: ReleasePolicy) -> Fixed {
    Fixed::Identity(Identity {
        key: format!("prod/db/{ordinal}"),
        policy,
        workload: Some("prod/db".into()),
        ordinal: Some(ordinal),
    })
}

/// db-0 on node-1, deleted, recreated on node-2 (each node its own etcd client); node-2 has
/// pods of its own, so a fresh allocation there lands in node-2's block, not on db-0's address.
fn recreate(
    etcd: &EtcdServer,
    net: &str,
    subnet: &str,
    policy: ReleasePolicy,
) -> (Vec<IpAddr>, Vec<IpAddr>) {
    let (s1, s2) = (connect(etcd), connect(etcd));
    let (n1, n2) = (Ipam::new(&s1), Ipam::new(&s2));
    let spec = v4_spec(net, subnet);
    n2.allocate(&spec, &req("other-a", "node-2", None)).unwrap();
    let first = n1
        .allocate(&spec, &req("db-0-a", "node-1", Some(sts(0, policy))))
        .unwrap();
    n1.release(net, "db-0-a", "eth0").unwrap().unwrap();
    n2.allocate(&spec, &req("other-b", "node-2", None)).unwrap();
    let second = n2
        .allocate(&spec, &req("db-0-b", "node-2", Some(sts(0, policy))))
        .unwrap();
    let rec = n2.get(net, "db-0-b", "eth0").unwrap().unwrap();
    assert_eq!(rec.node, "node-2");
    let snap = Snapshot::read(&s1, net);
    assert!(snap.problems().is_empty(), "{:?}", snap.problems());
    (ips(&first), ips(&second))
}

#[test]
fn statefulset_pod_recreated_on_another_node_keeps_its_address_under_workload_and_never_only() {
    let etcd = EtcdServer::start();
    for (net, subnet, policy) in [
        ("wl", "198.18.0.0/24", ReleasePolicy::Workload),
        ("nv", "198.18.1.0/24", ReleasePolicy::Never),
    ] {
        let (a, b) = recreate(&etcd, net, subnet, policy);
        assert_eq!(a, b, "{policy:?}: db-0 changed address moving to node-2");
    }
    let (a, b) = recreate(&etcd, "pd", "198.18.2.0/24", ReleasePolicy::Pod);
    assert_ne!(a, b, "policy pod: the address must go with the pod");

    // workload: scaling below the ordinal releases it, and a new pod may then have it.
    let s = connect(&etcd);
    let ipam = Ipam::new(&s);
    assert_eq!(ipam.reservations("wl").unwrap().len(), 1);
    ipam.release("wl", "db-0-b", "eth0").unwrap().unwrap();
    let gone = ipam.release_workload("wl", "prod/db", Some(0)).unwrap();
    assert_eq!(gone.len(), 1);
    assert!(ipam.reservations("wl").unwrap().is_empty());
    let snap = Snapshot::read(&s, "wl");
    assert!(
        snap.owners()
            .iter()
            .all(|(_, h, _)| !h.starts_with("reserved:")),
        "{:?}",
        snap.owners()
    );
}

#[test]
fn the_same_identity_on_another_node_takes_over_when_the_first_node_died() {
    let etcd = EtcdServer::start();
    let (s1, s3) = (connect(&etcd), connect(&etcd));
    let (n1, n3) = (Ipam::new(&s1), Ipam::new(&s3));
    let spec = v4_spec("died", "198.18.0.0/24");
    let old = n1
        .allocate(
            &spec,
            &req("db-1-old", "node-1", Some(sts(1, ReleasePolicy::Workload))),
        )
        .unwrap();
    // node-1 dies: no DEL. The pod comes back on node-3.
    let new = n3
        .allocate(
            &spec,
            &req("db-1-new", "node-3", Some(sts(1, ReleasePolicy::Workload))),
        )
        .unwrap();
    assert_eq!(ips(&old), ips(&new));
    assert!(n3.get("died", "db-1-old", "eth0").unwrap().is_none());
    let snap = Snapshot::read(&s3, "died");
    assert!(snap.problems().is_empty(), "{:?}", snap.problems());
    assert!(
        snap.owners()
            .iter()
            .any(|(a, h, _)| *a == ips(&new)[0] && h == "db-1-new:eth0"),
        "{:?}",
        snap.owners()
    );
    // The dead node's GC (or sweep) later frees nothing of the new pod's.
    assert!(n1.gc("died", "node-1", &[]).unwrap().is_empty());
    let mut sw = LeakSweeper::new(0);
    for _ in 0..2 {
        assert!(
            sw.sweep(&n1, "died", "node-1", &|_| false)
                .unwrap()
                .is_empty()
        );
    }
    assert!(n3.get("died", "db-1-new", "eth0").unwrap().is_some());
}

#[test]
fn a_deployment_pool_hands_its_addresses_to_new_pods_across_a_rollout_on_etcd() {
    let etcd = EtcdServer::start();
    let stores: Vec<EtcdStore> = (0..3).map(|_| connect(&etcd)).collect();
    let nodes: Vec<Ipam<'_>> = stores.iter().map(|s| Ipam::new(s)).collect();
    let spec = v4_spec("dep", "198.18.0.0/24");
    let addrs: Vec<IpAddr> = ["198.18.0.50", "198.18.0.51", "198.18.0.52"]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect();
    let pool_set: BTreeSet<IpAddr> = addrs.iter().copied().collect();
    let web = || {
        Some(Fixed::Pool(PoolRequest {
            name: "web".into(),
            addresses: addrs.clone(),
        }))
    };
    let mut old = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let cid = format!("web-5d8f7-{i}");
        let a = node
            .allocate(&spec, &req(&cid, &format!("node-{i}"), web()))
            .unwrap();
        old.push((i, cid, ips(&a)));
    }
    let got: BTreeSet<IpAddr> = old.iter().flat_map(|(_, _, a)| a.clone()).collect();
    assert_eq!(got, pool_set, "the first ReplicaSet holds exactly the pool");
    // Ordinary pods never get a pool address, free or not.
    for (i, node) in nodes.iter().enumerate() {
        let a = node
            .allocate(
                &spec,
                &req(&format!("plain-{i}"), &format!("node-{i}"), None),
            )
            .unwrap();
        assert!(!pool_set.contains(&ips(&a)[0]), "{:?}", ips(&a));
    }
    let e = nodes[0]
        .allocate(&spec, &req("web-5d8f7-surge", "node-0", web()))
        .unwrap_err();
    assert!(matches!(e, IpamError::PoolExhausted { .. }), "{e}");
    // Rolling update: an old pod goes (from its node), a new one comes on another node.
    let mut new = BTreeSet::new();
    for (k, (i, cid, _)) in old.iter().enumerate() {
        nodes[*i].release("dep", cid, "eth0").unwrap().unwrap();
        let j = (i + 1) % 3;
        let a = nodes[j]
            .allocate(
                &spec,
                &req(&format!("web-77c9b-{k}"), &format!("node-{j}"), web()),
            )
            .unwrap();
        assert!(pool_set.contains(&ips(&a)[0]), "{:?}", ips(&a));
        assert!(new.insert(ips(&a)[0]), "{:?} handed twice", ips(&a));
    }
    assert_eq!(new, pool_set, "the new ReplicaSet holds exactly the pool");
    let p = nodes[0].pool("dep", "web").unwrap().unwrap();
    assert_eq!(p.holders.len(), 3, "{:?}", p.holders);
    let snap = Snapshot::read(&stores[0], "dep");
    assert!(snap.problems().is_empty(), "{:?}", snap.problems());
}
