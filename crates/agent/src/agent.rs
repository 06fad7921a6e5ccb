//! The weftd process: registration, watch threads, heartbeat, signals and the reconcile loop.
//!
//! Threads: one per watched prefix (nodes, the network's blocks and handles, networks) forwarding "something changed"
//! to the main loop; one heartbeat keeping the node's lease alive; one waiting for SIGTERM or
//! SIGINT (blocked in every other thread). The main loop reconciles at start, after every
//! burst of store events, and at least every `resync` period.
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

enum Msg {
    Changed,
    Shutdown(Signal),
}

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
    let mut rec = Reconciler::new(cfg.clone(), underlay)?;
    // The VTEP exists before any other node is told about it.
    rec.ensure_device()?;
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

    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel::<Msg>();
    spawn_signal_thread(signals, tx.clone())?;
    spawn_heartbeat(reg.clone(), cfg.lease_ttl_seconds, stop.clone())?;
    for prefix in [
        nodes_prefix(),
        weft_ipam::blocks_prefix(&cfg.network),
        weft_ipam::handles_prefix(&cfg.network),
        weft_ipam::networks_prefix(),
    ] {
        spawn_watch(store.clone(), prefix, tx.clone(), stop.clone())?;
    }
    drop(tx);

    let pass = |rec: &mut Reconciler| {
        let t = Instant::now();
        match rec.reconcile(store.as_ref()) {
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
    };
    pass(&mut rec);
    let signal = loop {
        match rx.recv_timeout(cfg.resync) {
            Ok(Msg::Shutdown(s)) => break Some(s),
            Ok(Msg::Changed) => {
                // Let a burst of events land, then take them all in one pass.
                std::thread::sleep(Duration::from_millis(20));
                let mut shutdown = None;
                while let Ok(m) = rx.try_recv() {
                    if let Msg::Shutdown(s) = m {
                        shutdown = Some(s);
                    }
                }
                if shutdown.is_some() {
                    break shutdown;
                }
                pass(&mut rec);
            }
            Err(RecvTimeoutError::Timeout) => pass(&mut rec),
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

fn spawn_named(name: &str, f: impl FnOnce() + Send + 'static) -> Result<()> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .map(|_| ())
        .map_err(|e| AgentError::Io {
            what: format!("start thread {name}"),
            source: e,
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
