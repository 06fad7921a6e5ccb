//! The node's report for `weftctl check`: what this node's kernel holds of Weft's objects,
//! published at `/weft/v1/reports/<node>` (type [`weft_check::NodeReport`], shared with
//! `check`), on the node's lease so it vanishes with the node.
//!
//! A thread of its own (with its own netlink sockets, in the process's namespace) reads the
//! kernel after every reconcile pass ([`Reporter::after_pass`]), when a repair order arrives,
//! and every [`COLLECT_PERIOD`]; it writes the report when its content changed, and at least
//! every [`weft_check::REPORT_REFRESH_SECONDS`] (so `check` can tell a live weftd from a stuck
//! one). Between reads it carries out the repair orders for this node ([`crate::repair`]).
//!
//! What it reads: links whose alias starts with `weft:` (host-side veths, shims); every
//! main-table route of protocol 87 (the plugin's pod routes and the agent's own); the FDB and
//! permanent neighbour entries of the VXLAN device; the sets of table `inet weft`.
//! Verified networks: the agent's own network is routed, so each of its attachments on this
//! node has a host-side veth and a missing veth proves an attachment gone (for allocation
//! records that do not say what they have). Pod namespaces: every allocation of this node, in
//! any network, whose record names its pod's network namespace is examined, and those whose
//! namespace is gone are listed ([`crate::liveness`]).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use weft_check::{
    NodeReport, REPORT_REFRESH_SECONDS, REPORT_SCHEMA, ReportedFdb, ReportedInterface,
    ReportedNeighbour, ReportedNft, ReportedRoute, report_key,
};
use weft_store::{Op, Store, Txn};

use crate::config::Config;
use crate::liveness::{NodeAllocations, examine};
use crate::node::{Registration, mac_string};
use crate::{Result, log};

/// How often the kernel is read when nothing else asks for it.
pub const COLLECT_PERIOD: Duration = Duration::from_secs(2);

/// Handle of the report thread, for the main loop.
#[derive(Clone)]
pub struct Reporter {
    poke: Sender<()>,
    passes: Arc<AtomicU64>,
    newest: Arc<AtomicU64>,
}

impl Reporter {
    /// Called after every reconcile pass with the time of the newest allocation of this node
    /// or release in its network: the report is read again and published if it changed, and
    /// once more in a later second than each new allocation (so `check` can tell an
    /// attachment that never came from one that is about to be listed) and each release (so
    /// `check` can call an interface whose address was released an orphan without waiting
    /// for the report's refresh).
    pub fn after_pass(&self, newest: u64) {
        self.newest.fetch_max(newest, Ordering::SeqCst);
        self.passes.fetch_add(1, Ordering::SeqCst);
        let _ = self.poke.send(());
    }
}

/// Starts the report thread and the watch on this node's repair orders. `resync` asks the
/// main loop for a reconcile pass.
pub fn spawn(
    store: Arc<dyn Store>,
    cfg: Config,
    reg: Arc<Registration>,
    resync: Box<dyn Fn() + Send>,
) -> Result<Reporter> {
    let (tx, rx) = mpsc::channel::<()>();
    let passes = Arc::new(AtomicU64::new(0));
    let newest = Arc::new(AtomicU64::new(0));
    let reporter = Reporter {
        poke: tx.clone(),
        passes: passes.clone(),
        newest: newest.clone(),
    };
    crate::repair::spawn_watch(store.clone(), &cfg.node, tx)?;
    let allocations = NodeAllocations::spawn(store.clone(), cfg.node.clone())?;
    let ctx = Context {
        allocations,
        store,
        cfg,
        reg,
        resync,
        passes,
        newest,
        last: Mutex::new(None),
    };
    std::thread::Builder::new()
        .name("report".into())
        .spawn(move || ctx.run(rx))
        .map_err(|e| crate::AgentError::Io {
            what: "start thread report".into(),
            source: e,
        })?;
    Ok(reporter)
}

pub(crate) struct Context {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) cfg: Config,
    reg: Arc<Registration>,
    pub(crate) resync: Box<dyn Fn() + Send>,
    pub(crate) passes: Arc<AtomicU64>,
    newest: Arc<AtomicU64>,
    /// This node's allocations with a recorded pod namespace.
    allocations: NodeAllocations,
    /// The last report published and its lease.
    last: Mutex<Option<(NodeReport, i64)>>,
}

impl Context {
    fn run(self, rx: Receiver<()>) {
        let mut quiet = false;
        loop {
            match rx.recv_timeout(COLLECT_PERIOD) {
                Ok(()) | Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            // A burst of pokes is one round.
            while rx.try_recv().is_ok() {}
            let done = match crate::repair::carry_out(&self) {
                Ok(done) => done,
                Err(e) => {
                    log!("repair orders: {}", crate::agent::chain(&e));
                    Vec::new()
                }
            };
            match self.publish(!done.is_empty()) {
                Ok(()) => {
                    quiet = false;
                    // An order goes once the report showing its effect is written.
                    for key in done {
                        if let Err(e) = self.store.commit(&Txn {
                            compares: vec![],
                            ops: vec![Op::Delete { key: key.clone() }],
                        }) {
                            log!("delete repair order {key}: {e}");
                        }
                    }
                }
                Err(e) => {
                    if !quiet {
                        log!("report: {}", crate::agent::chain(&e));
                        quiet = true;
                    }
                }
            }
        }
    }

    /// Reads the kernel and writes the report if it changed or is due.
    fn publish(&self, force: bool) -> Result<()> {
        let report = collect(&self.cfg, Some(&self.allocations))?;
        let lease = self.reg.lease();
        let newest = self.newest.load(Ordering::SeqCst);
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let due = match &*last {
            None => true,
            Some((r, l)) => {
                force
                    || *l != lease
                    || !r.same_content(&report)
                    || report.generated_at.saturating_sub(r.generated_at) >= REPORT_REFRESH_SECONDS
                    // Strictly after the newest allocation's or release's second.
                    || (r.generated_at <= newest && report.generated_at > newest)
            }
        };
        if !due {
            return Ok(());
        }
        let key = report_key(&self.cfg.node);
        let value = serde_json::to_vec(&report).map_err(|e| crate::AgentError::Record {
            key: key.clone(),
            msg: e.to_string(),
        })?;
        self.store
            .commit(&Txn {
                compares: vec![],
                ops: vec![Op::PutWithLease {
                    key: key.clone(),
                    value,
                    lease,
                }],
            })
            .map_err(|e| crate::AgentError::store(format!("write {key}"), e))?;
        *last = Some((report, lease));
        Ok(())
    }

    /// Waits (up to `d`) until a reconcile pass that started after now has finished: two
    /// passes end (the first may have been running already), or one when `d` runs out.
    pub(crate) fn wait_pass(&self, d: Duration) -> bool {
        let start = self.passes.load(Ordering::SeqCst);
        let end = Instant::now() + d;
        while Instant::now() < end {
            if self.passes.load(Ordering::SeqCst) >= start + 2 {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.passes.load(Ordering::SeqCst) > start
    }
}

/// Reads this node's kernel into a report; with `allocations` (once listed), also which pod
/// namespaces of this node's allocations are gone.
pub fn collect(cfg: &Config, allocations: Option<&NodeAllocations>) -> Result<NodeReport> {
    let mut nl = weft_dataplane::Netlink::new()?;
    let links = nl.links()?;
    let names: BTreeMap<u32, &str> = links.iter().map(|l| (l.index, l.name.as_str())).collect();
    let mut interfaces: Vec<ReportedInterface> = links
        .iter()
        .filter_map(|l| {
            let alias = l.alias.as_deref()?;
            alias.starts_with("weft:").then(|| ReportedInterface {
                name: l.name.clone(),
                kind: l.kind.clone(),
                alias: alias.to_string(),
            })
        })
        .collect();
    interfaces.sort();
    let mut routes: Vec<ReportedRoute> = Vec::new();
    for v6 in [false, true] {
        for r in nl.weft_routes(v6)? {
            routes.push(ReportedRoute {
                dst: r.dst,
                gateway: r.gateway,
                dev: r
                    .oif
                    .and_then(|i| names.get(&i).copied())
                    .unwrap_or_default()
                    .to_string(),
                onlink: r.onlink,
            });
        }
    }
    routes.sort();
    let vx = cfg
        .mode
        .uses_vxlan()
        .then(|| links.iter().find(|l| l.name == cfg.vxlan_device))
        .flatten();
    let (mut fdb, mut neighbours) = (Vec::new(), Vec::new());
    if let Some(vx) = vx {
        for e in nl.fdb_entries(vx.index)? {
            fdb.push(ReportedFdb {
                mac: mac_string(&e.mac),
                dst: e.dst,
            });
        }
        for v6 in [false, true] {
            for n in nl.neighbours(vx.index, v6)? {
                if n.permanent {
                    neighbours.push(ReportedNeighbour {
                        ip: n.ip,
                        mac: n.mac.map(|m| mac_string(&m)),
                    });
                }
            }
        }
    }
    fdb.sort();
    neighbours.sort();
    let nftables = match weft_dataplane::masquerade::read() {
        Ok(h) => Some(ReportedNft {
            table: h.table,
            rules: h.rules,
            pods: h.pods.into_iter().collect(),
            masq: h.masq.into_iter().collect(),
        }),
        Err(_) => None,
    };
    let (netns_examined, gone_netns) = match allocations.and_then(|a| a.snapshot()) {
        Some(held) => {
            let (n, gone) = examine(&held);
            (Some(n), gone)
        }
        None => (None, Vec::new()),
    };
    Ok(NodeReport {
        schema: REPORT_SCHEMA,
        node: cfg.node.clone(),
        generated_at: weft_ipam::now(),
        network: cfg.network.clone(),
        verified_networks: vec![cfg.network.clone()],
        interfaces,
        routes,
        vxlan_device: vx.map(|l| l.name.clone()),
        fdb,
        neighbours,
        nftables,
        netns_examined,
        gone_netns,
    })
}
