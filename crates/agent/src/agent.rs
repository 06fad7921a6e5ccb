//! The weftd process: registration, watch threads, heartbeat, signals and the reconcile loop.
//!
//! Threads: one per watched prefix (nodes, the network's blocks and handles, networks) forwarding "something changed"
//! to the main loop; one ("netlink") reading the kernel's route, neighbour and link
//! notifications and forwarding those that touch Weft's objects; one heartbeat keeping the node's lease alive; one waiting for SIGTERM or
//! SIGINT (blocked in every other thread); one ("report", see [`crate::report`]) publishing the
//! node's report for `weftctl check` after each pass and carrying out its repair orders. The main loop claims the node's blocks at start ([`claim_blocks`]),
//! reconciles at start, after every burst of store events (20 ms debounce) or kernel events
//! (50 ms), and at least every `resync` period.
//!
//! On SIGTERM/SIGINT the process exits and touches nothing: neither the kernel (routes, FDB,
//! neighbours, nftables stay) nor the lease (the node record stays until the lease expires). A
//! weftd started again within the lease TTL writes its record on a new lease (the put
//! re-attaches the key, so the old lease's expiry deletes nothing), finds its kernel state in
//! place and reconciles: peers see no change and traffic is not disturbed. A node whose weftd
//! does not come back disappears when its lease expires, and the others drop it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use nix::sys::signal::{SigSet, Signal};
use weft_store::{Store, StoreError};

use crate::config::{Config, StoreConfig};
use crate::node::{Registration, nodes_prefix};
use crate::reconcile::{Reconciler, find_underlay};
use crate::{AgentError, Result, log};
use weft_dataplane::netlink::events;

enum Msg {
    /// A store event.
    Changed,
    /// A kernel event touching Weft's objects.
    Kernel,
    Shutdown(Signal),
}

/// How long a burst of store events may take to land before the pass that takes them all.
const STORE_DEBOUNCE: Duration = Duration::from_millis(20);
/// The same for kernel events (a flush or a device deletion comes as many notifications; the
/// agent's own changes come back as notifications too and make one more, quiet, pass).
const KERNEL_DEBOUNCE: Duration = Duration::from_millis(50);

/// Opens the configured store.
pub fn open_store(cfg: &StoreConfig) -> Result<Arc<dyn Store>> {
    match cfg {
        StoreConfig::Embedded { data_dir } => {
            let dir = data_dir.join("store");
            let s = weft_store::embedded::EmbeddedStore::open(&dir)
                .map_err(|e| AgentError::store(format!("open {}", dir.display()), e))?;
            Ok(Arc::new(s))
        }
        StoreConfig::Etcd {
            endpoints,
            timeout_seconds,
            prefix,
        } => {
            let mut opts = weft_store::etcd::EtcdOptions::default();
            if let Some(t) = timeout_seconds {
                opts.request_timeout = Duration::from_secs(*t);
            }
            opts.prefix = prefix.clone();
            let s = weft_store::etcd::EtcdStore::connect(endpoints, opts).map_err(|e| {
                AgentError::store(format!("connect to etcd {}", endpoints.join(",")), e)
            })?;
            Ok(Arc::new(s))
        }
    }
}

/// Runs weftd until SIGTERM or SIGINT.
pub fn run(cfg: Config) -> Result<()> {
    // Blocked here, before any thread starts, so every thread inherits the mask and only the
    // signal thread receives them.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGTERM);
    signals.add(Signal::SIGINT);
    signals.thread_block().map_err(|e| AgentError::Io {
        what: "block SIGTERM and SIGINT".into(),
        source: e.into(),
    })?;

    let store = open_store(&cfg.store)?;
    if let Err(e) = weft_dataplane::sysctl::set("net/ipv4/ip_forward", "1") {
        log!("cannot enable IPv4 forwarding: {e}");
    }
    if let Err(e) = weft_dataplane::sysctl::set("net/ipv6/conf/all/forwarding", "1") {
        log!("cannot enable IPv6 forwarding: {e}");
    }
    let underlay = find_underlay(cfg.underlay_interface.as_deref(), cfg.underlay_address)?;
    log!(
        "node {} on underlay {} ({}, mtu {}), network {}, mode {}, store {}",
        cfg.node,
        underlay.ip,
        underlay.subnet,
        underlay.mtu,
        cfg.network,
        cfg.mode.as_str(),
        store.describe()
    );
    // Metrics first: scrapes and plugin reports work from the first pass on.
    let metrics = crate::metrics::start(&cfg, store.clone())?;
    let mut rec = Reconciler::new(cfg.clone(), underlay)?;
    // The VTEP exists before any other node is told about it.
    let vx_index = rec.ensure_device()?;
    // Subscribed before the first pass, so nothing that happens after it goes unseen.
    let kernel_events = events::Watcher::open(events::Interest {
        vxlan_name: rec.vxlan_spec().map(|s| s.name),
        vxlan_index: vx_index,
        underlay_index: underlay.index,
    })?;
    let reg = Arc::new(Registration::register(
        store.clone(),
        &rec.node_record(),
        cfg.lease_ttl_seconds,
    )?);
    log!(
        "registered {} on lease {:#x} (ttl {} s)",
        reg.key(),
        reg.lease(),
        cfg.lease_ttl_seconds
    );

    claim_blocks(store.as_ref(), &cfg.network, &cfg.node);

    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel::<Msg>();
    spawn_signal_thread(signals, tx.clone())?;
    spawn_kernel_watch(kernel_events, tx.clone())?;
    spawn_heartbeat(reg.clone(), cfg.lease_ttl_seconds, stop.clone())?;
    for prefix in [
        nodes_prefix(),
        weft_ipam::blocks_prefix(&cfg.network),
        weft_ipam::handles_prefix(&cfg.network),
        weft_ipam::networks_prefix(),
    ] {
        spawn_watch(store.clone(), prefix, tx.clone(), stop.clone())?;
    }
    let resync = tx.clone();
    let reporter = crate::report::spawn(
        store.clone(),
        cfg.clone(),
        reg.clone(),
        Box::new(move || {
            let _ = resync.send(Msg::Changed);
        }),
    )?;
    drop(tx);

    let pass = |rec: &mut Reconciler| {
        let t = Instant::now();
        let result = rec.reconcile(store.as_ref());
        let counts = result
            .as_ref()
            .ok()
            .map(|c| (c.added.len(), c.deleted.len()));
        metrics.reconciled(t.elapsed(), counts);
        match result {
            Ok(c) if c.is_empty() => {}
            Ok(c) => {
                for a in &c.added {
                    log!("added {a}");
                }
                for d in &c.deleted {
                    log!("deleted {d}");
                }
                log!("reconciled in {:?}", t.elapsed());
            }
            Err(e) => log!("reconcile failed: {}", chain(&e)),
        }
        reporter.after_pass(rec.newest_allocation_or_release());
    };
    pass(&mut rec);
    // The next timer pass, and the pass an event asked for (an event starts the debounce
    // window; later ones inside it join the same pass, so a stream of events cannot delay it).
    let mut timer = Instant::now() + cfg.resync;
    let mut due: Option<Instant> = None;
    let signal = loop {
        let now = Instant::now();
        let next = due.map_or(timer, |d| d.min(timer));
        if next <= now {
            pass(&mut rec);
            due = None;
            timer = Instant::now() + cfg.resync;
            continue;
        }
        match rx.recv_timeout(next - now) {
            Ok(Msg::Shutdown(s)) => break Some(s),
            Ok(Msg::Changed) => {
                due.get_or_insert(Instant::now() + STORE_DEBOUNCE);
            }
            Ok(Msg::Kernel) => {
                due.get_or_insert(Instant::now() + KERNEL_DEBOUNCE);
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break None,
        }
    };
    stop.store(true, Ordering::SeqCst);
    if let Some(s) = signal {
        log!(
            "{s}: exiting; kernel state and the lease of {} stay (it expires in {} s unless weftd \
             comes back)",
            reg.key(),
            cfg.lease_ttl_seconds
        );
    }
    Ok(())
}

/// `e` with its sources, ": "-separated.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

pub(crate) fn spawn_named(name: &str, f: impl FnOnce() + Send + 'static) -> Result<()> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .map(|_| ())
        .map_err(|e| AgentError::Io {
            what: format!("start thread {name}"),
            source: e,
        })
}

/// Claims a block per address family of the network's pools for this node if it holds none, so
/// peers route to the node before its first pod. Without a network record (no pod of the
/// network has been attached anywhere yet) there is nothing to claim from: the node's first pod
/// claims its block then. Failures are logged: the plugin claims a block when it needs one.
pub fn claim_blocks(store: &dyn Store, network: &str, node: &str) {
    let key = weft_ipam::network_key(network);
    let spec = match store.get(&key) {
        Ok(Some(kv)) => match serde_json::from_slice::<weft_ipam::NetworkRecord>(&kv.value) {
            Ok(r) => r.spec,
            Err(e) => {
                log!("not claiming blocks: network record {key} does not decode: {e}");
                return;
            }
        },
        Ok(None) => {
            log!("not claiming blocks: no network record {key} yet (the first pod will)");
            return;
        }
        Err(e) => {
            log!("not claiming blocks: read {key}: {e}");
            return;
        }
    };
    let ipam = weft_ipam::Ipam::new(store);
    for family in spec.families() {
        match ipam.claim_block(&spec, node, family) {
            Ok(Some(cidr)) => log!("claimed block {cidr} of network {network}"),
            Ok(None) => {}
            Err(e) => log!(
                "not claiming an IPv{family} block of network {network}: {}",
                chain(&e)
            ),
        }
    }
}

/// Forwards "a kernel object of ours changed" to the main loop. The thread lives as long as the
/// process (it blocks in `recv`; the process exits when the main loop ends).
fn spawn_kernel_watch(mut w: events::Watcher, tx: Sender<Msg>) -> Result<()> {
    spawn_named("netlink", move || {
        let mut quiet_errors = false;
        loop {
            match w.wait() {
                Ok(touched) => {
                    quiet_errors = false;
                    if touched && tx.send(Msg::Kernel).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    if !quiet_errors {
                        log!("kernel events: {e}");
                        quiet_errors = true;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    })
}

fn spawn_signal_thread(signals: SigSet, tx: Sender<Msg>) -> Result<()> {
    spawn_named("signals", move || {
        loop {
            match signals.wait() {
                Ok(s) => {
                    let _ = tx.send(Msg::Shutdown(s));
                    return;
                }
                Err(e) => {
                    log!("waiting for signals: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    })
}

fn sleep_unless(stop: &AtomicBool, d: Duration) {
    let end = Instant::now() + d;
    while !stop.load(Ordering::SeqCst) {
        let now = Instant::now();
        if now >= end {
            return;
        }
        std::thread::sleep((end - now).min(Duration::from_millis(100)));
    }
}

fn spawn_heartbeat(reg: Arc<Registration>, ttl: i64, stop: Arc<AtomicBool>) -> Result<()> {
    let period = Duration::from_millis((ttl.max(1) as u64) * 1000 / 3);
    spawn_named("heartbeat", move || {
        loop {
            sleep_unless(&stop, period);
            if stop.load(Ordering::SeqCst) {
                return;
            }
            if let Err(e) = reg.heartbeat() {
                log!("heartbeat: {}", chain(&e));
            }
        }
    })
}

fn spawn_watch(
    store: Arc<dyn Store>,
    prefix: String,
    tx: Sender<Msg>,
    stop: Arc<AtomicBool>,
) -> Result<()> {
    spawn_named("watch", move || {
        let mut watcher = None;
        let mut quiet_errors = false;
        while !stop.load(Ordering::SeqCst) {
            let w = match watcher.as_mut() {
                Some(w) => w,
                None => match store.watch(&prefix, 0) {
                    Ok(w) => {
                        quiet_errors = false;
                        // Whatever happened while not watching: look again.
                        if tx.send(Msg::Changed).is_err() {
                            return;
                        }
                        watcher.insert(w)
                    }
                    Err(e) => {
                        if !quiet_errors {
                            log!("watch {prefix}: {e}");
                            quiet_errors = true;
                        }
                        sleep_unless(&stop, Duration::from_millis(500));
                        continue;
                    }
                },
            };
            match w.next_timeout(Duration::from_millis(500)) {
                Ok(Some(_)) => {
                    quiet_errors = false;
                    if tx.send(Msg::Changed).is_err() {
                        return;
                    }
                }
                Ok(None) => {}
                Err(StoreError::Compacted(_)) => watcher = None,
                Err(e) => {
                    if !quiet_errors {
                        log!("watch {prefix}: {e}");
                        quiet_errors = true;
                    }
                    sleep_unless(&stop, Duration::from_millis(500));
                }
            }
        }
    })
}
