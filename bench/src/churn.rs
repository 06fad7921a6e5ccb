//! `weft-bench churn`: many pods on many simulated nodes against one etcd on loopback.
//!
//! 10 nodes (by default) each allocate their share of 1000 pods, one after another within a
//! node, all nodes at once; then, with every address held, the run audits the store (one
//! address per pod, no address twice, every block entry matching its handle); then every node
//! releases its pods and the run checks that nothing is left. Two ways:
//! (a) the IPAM library in this process, one thread per node, each with its own `EtcdStore`
//! (wrapped to count the calls that reach etcd);
//! (b) the `weft-ipam` binary exec'd as a runtime does it, one thread per node spawning the
//! node's plugin calls one at a time, each node with its own dataDir (the plugin's node-local
//! lock lives there) and node name.
//! Each part gets a fresh etcd. Everything this makes goes on exit, error and Ctrl-C.
use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Barrier;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;
use weft_ipam::{AllocateRequest, Ipam, NetworkSpec};
use weft_store::Store as _;
use weft_store::etcd::{EtcdOptions, EtcdStore};

use crate::cluster::{self, Audit, Common, Cpu};
use crate::counting::{Counting, Counts};
use crate::etcd::Etcd;
use crate::{STOP, ms, pct};

const MARK_BEGIN: &str = "<!-- bench:churn -->";
const MARK_END: &str = "<!-- /bench:churn -->";
/// A node gives up (and the run stops) after this many failed calls.
const MAX_NODE_FAILURES: usize = 10;

struct Args {
    nodes: usize,
    pods: usize,
    runs: usize,
    lib: bool,
    bin: bool,
    common: Common,
}

fn usage() -> String {
    format!(
        "usage: weft-bench churn [--nodes N (10)] [--pods N (1000, in all)] [--runs N (3)] [--only lib|bin] {}
Allocates and releases PODS pods across NODES simulated nodes against one etcd on loopback,
(a) through the IPAM library, one thread per node, (b) through the weft-ipam binary as a
runtime calls it; audits the store for duplicates while all are held and for leftovers after.
Each part runs RUNS times (alternating, each on a fresh etcd); goals are judged on medians.
Writes the table into FILE between the churn markers.",
        cluster::COMMON_USAGE
    )
}

pub fn main() -> i32 {
    let mut a = Args {
        nodes: 10,
        pods: 1000,
        runs: 3,
        lib: true,
        bin: true,
        common: Common::new(),
    };
    let usage = usage();
    let parsed = cluster::parse(&usage, &mut a.common, |arg, val| {
        match arg {
            "--nodes" => a.nodes = val()?.parse().context("--nodes")?,
            "--pods" => a.pods = val()?.parse().context("--pods")?,
            "--runs" => a.runs = val()?.parse().context("--runs")?,
            "--only" => match val()?.as_str() {
                "lib" => a.bin = false,
                "bin" => a.lib = false,
                other => bail!("--only lib or --only bin, not {other:?}"),
            },
            _ => return Ok(false),
        }
        Ok(true)
    });
    if let Err(e) = parsed.and_then(|()| {
        if a.runs == 0 {
            bail!("--runs must be at least 1");
        }
        if a.nodes == 0 || a.pods < a.nodes || !a.pods.is_multiple_of(a.nodes) {
            bail!("--pods must be a multiple of --nodes, both at least 1");
        }
        Ok(())
    }) {
        eprintln!("weft-bench: {e:#}");
        return 2;
    }
    match run(&a) {
        Ok(md) => {
            println!("{md}");
            if a.common.write {
                if let Err(e) = crate::write_section(&a.common.out, &md, MARK_BEGIN, MARK_END) {
                    eprintln!("weft-bench: {e:#}");
                    return 1;
                }
                eprintln!("weft-bench: wrote {}", a.common.out.display());
            }
            0
        }
        Err(e) => {
            eprintln!("weft-bench: {e:#}");
            1
        }
    }
}

/// One simulated node: allocates and releases its pods, one call at a time.
trait Node: Send {
    fn add(&mut self, pod: usize) -> Result<(Duration, IpAddr)>;
    fn del(&mut self, pod: usize) -> Result<Duration>;
}

#[derive(Default)]
struct NodeOut {
    add: Vec<Duration>,
    del: Vec<Duration>,
    addrs: Vec<IpAddr>,
    add_failed: usize,
    del_failed: usize,
    errors: Vec<String>,
}

/// etcd's own count of the gRPC requests the IPAM makes.
#[derive(Debug, Clone, Copy, Default)]
struct Requests {
    range: u64,
    txn: u64,
}

fn requests(etcd: &Etcd) -> Requests {
    let m = |method: &str| {
        etcd.metric(
            "grpc_server_handled_total",
            &[&format!("grpc_method=\"{method}\"")],
        )
        .unwrap_or(f64::NAN) as u64
    };
    Requests {
        range: m("Range"),
        txn: m("Txn"),
    }
}

struct Outcome {
    label: &'static str,
    /// 1, 2, ... of `--runs`.
    run: usize,
    nodes: usize,
    pods: usize,
    alloc: Duration,
    release: Duration,
    out: Vec<NodeOut>,
    held: Result<Audit>,
    after: Result<Audit>,
    add_req: Requests,
    del_req: Requests,
    /// CPU used during each phase.
    add_cpu: Cpu,
    del_cpu: Cpu,
    /// (a) only: what the store wrappers counted, per phase.
    add_counts: Option<Counts>,
    del_counts: Option<Counts>,
    /// (a) only: what this etcd and client do at most, see [`floor`].
    floor: Option<Floor>,
}

impl Outcome {
    fn part(&self) -> &'static str {
        if self.floor.is_some() || self.add_counts.is_some() {
            "a"
        } else {
            "b"
        }
    }
    fn adds(&self) -> Vec<Duration> {
        self.out
            .iter()
            .flat_map(|o| o.add.iter().copied())
            .collect()
    }
    fn dels(&self) -> Vec<Duration> {
        self.out
            .iter()
            .flat_map(|o| o.del.iter().copied())
            .collect()
    }
    fn addrs(&self) -> Vec<IpAddr> {
        self.out
            .iter()
            .flat_map(|o| o.addrs.iter().copied())
            .collect()
    }
    fn add_failed(&self) -> usize {
        self.out.iter().map(|o| o.add_failed).sum()
    }
    fn del_failed(&self) -> usize {
        self.out.iter().map(|o| o.del_failed).sum()
    }
    fn total(&self) -> Duration {
        self.alloc + self.release
    }
    fn held_ok(&self) -> bool {
        self.held.as_ref().is_ok_and(|h| h.all_held(self.pods))
            && cluster::duplicates(&self.addrs()) == 0
            && self.addrs().len() == self.pods
    }
    fn after_ok(&self) -> bool {
        self.after.as_ref().is_ok_and(Audit::empty) && self.del_failed() == 0
    }
}

/// Runs the nodes: all allocate, audit, all release, audit. The phases are timed from the
/// moment every node is ready to the moment the last one is done; the audits are not timed.
fn drive<N: Node>(
    label: &'static str,
    etcd: &Etcd,
    nodes: Vec<N>,
    per_node: usize,
    audit: &dyn Fn() -> Result<Audit>,
) -> Result<(Outcome, Vec<N>)> {
    let n = nodes.len();
    let barrier = Barrier::new(n + 1);
    let abort = AtomicBool::new(false);
    let stop = || abort.load(Ordering::Relaxed) || STOP.load(Ordering::Relaxed);
    std::thread::scope(|s| {
        let handles: Vec<_> = nodes
            .into_iter()
            .enumerate()
            .map(|(i, mut node)| {
                let (barrier, abort) = (&barrier, &abort);
                s.spawn(move || {
                    let mut out = NodeOut::default();
                    let fail = |out: &mut NodeOut, what: &str, e: anyhow::Error| {
                        if out.errors.len() < 3 {
                            out.errors.push(format!("node {i} {what}: {e:#}"));
                        }
                        if out.add_failed + out.del_failed >= MAX_NODE_FAILURES {
                            abort.store(true, Ordering::Relaxed);
                        }
                    };
                    barrier.wait(); // start
                    for j in 0..per_node {
                        if stop() {
                            break;
                        }
                        match node.add(j) {
                            Ok((d, ip)) => {
                                out.add.push(d);
                                out.addrs.push(ip);
                            }
                            Err(e) => {
                                out.add_failed += 1;
                                fail(&mut out, "ADD", e);
                            }
                        }
                    }
                    barrier.wait(); // all allocated
                    barrier.wait(); // audited: release
                    for j in 0..per_node {
                        if stop() {
                            break;
                        }
                        match node.del(j) {
                            Ok(d) => out.del.push(d),
                            Err(e) => {
                                out.del_failed += 1;
                                fail(&mut out, "DEL", e);
                            }
                        }
                    }
                    barrier.wait(); // all released
                    (node, out)
                })
            })
            .collect();
        let pid = etcd.pid();
        let r0 = requests(etcd);
        let c0 = Cpu::now(pid);
        barrier.wait();
        let t0 = Instant::now();
        barrier.wait();
        let alloc = t0.elapsed();
        let c1 = Cpu::now(pid);
        let r1 = requests(etcd);
        eprintln!("weft-bench: {label}: allocated in {alloc:.2?}, auditing");
        let held = audit();
        let r1b = requests(etcd);
        let c1b = Cpu::now(pid);
        barrier.wait();
        let t2 = Instant::now();
        barrier.wait();
        let release = t2.elapsed();
        let c2 = Cpu::now(pid);
        let r2 = requests(etcd);
        eprintln!("weft-bench: {label}: released in {release:.2?}, auditing");
        let after = audit();
        let mut nodes = Vec::new();
        let mut out = Vec::new();
        for h in handles {
            match h.join() {
                Ok((node, o)) => {
                    nodes.push(node);
                    out.push(o);
                }
                Err(_) => bail!("a node thread panicked"),
            }
        }
        if STOP.load(Ordering::Relaxed) {
            bail!("interrupted");
        }
        for o in &out {
            for e in &o.errors {
                eprintln!("weft-bench: {label}: {e}");
            }
        }
        if abort.load(Ordering::Relaxed) {
            bail!("{label}: stopped after a node failed {MAX_NODE_FAILURES} calls (see above)");
        }
        // The metric fetches and the audit itself talk to etcd too: not counted (the audit's
        // Range requests fall between r1 and r1b).
        let d = |a: Requests, b: Requests| Requests {
            range: b.range.saturating_sub(a.range),
            txn: b.txn.saturating_sub(a.txn),
        };
        Ok((
            Outcome {
                label,
                run: 0,
                nodes: n,
                pods: n * per_node,
                alloc,
                release,
                out,
                held,
                after,
                add_req: d(r0, r1),
                del_req: d(r1b, r2),
                add_cpu: c1.since(&c0),
                del_cpu: c2.since(&c1b),
                add_counts: None,
                del_counts: None,
                floor: None,
            },
            nodes,
        ))
    })
}

// ---- (a) the library ----

struct LibNode {
    store: Counting<EtcdStore>,
    spec: NetworkSpec,
    node: String,
    /// Store counts at the end of the ADD phase.
    mark: Counts,
}

impl LibNode {
    fn cid(&self, pod: usize) -> String {
        format!("lib-{}-p{pod:04}", self.node)
    }
}

impl Node for LibNode {
    fn add(&mut self, pod: usize) -> Result<(Duration, IpAddr)> {
        let req = AllocateRequest {
            container_id: self.cid(pod),
            ifname: crate::IFNAME.into(),
            node: self.node.clone(),
            pod: Some(format!("churn/{}-{pod}", self.node)),
            ..AllocateRequest::default()
        };
        let t0 = Instant::now();
        let got = Ipam::new(&self.store).allocate(&self.spec, &req)?;
        let dt = t0.elapsed();
        self.mark = self.store.counts();
        let addr = got
            .addresses
            .first()
            .map(|a| a.address.addr())
            .context("allocation without an address")?;
        Ok((dt, addr))
    }

    fn del(&mut self, pod: usize) -> Result<Duration> {
        let t0 = Instant::now();
        let released =
            Ipam::new(&self.store).release(&self.spec.name, &self.cid(pod), crate::IFNAME)?;
        let dt = t0.elapsed();
        if released.is_none() {
            bail!("release of {} found nothing", self.cid(pod));
        }
        Ok(dt)
    }
}

fn run_lib(a: &Args, tmp: &Path) -> Result<Outcome> {
    let etcd = Etcd::start(tmp)?;
    let ep = vec![etcd.endpoint()];
    eprintln!("weft-bench: (a) library, etcd at {}", ep[0]);
    let spec = cluster::spec("wbc-lib", "198.18.64.0/20")?;
    let admin = EtcdStore::connect(&ep, EtcdOptions::default())?;
    // The network exists before the pods come, as in a running cluster.
    Ipam::new(&admin).ensure_network(&spec)?;
    let mut nodes = Vec::new();
    for i in 0..a.nodes {
        let store = Counting::new(EtcdStore::connect(&ep, EtcdOptions::default())?);
        store.revision().context("first etcd call")?; // connected before timing
        nodes.push(LibNode {
            store,
            spec: spec.clone(),
            node: format!("node-{i:02}"),
            mark: Counts::default(),
        });
    }
    let fl = floor(&nodes)?;
    let base: Vec<Counts> = nodes.iter().map(|n| n.store.counts()).collect();
    let audit = || Audit::read(&admin, &spec.name);
    let (mut o, nodes) = drive("(a) library", &etcd, nodes, a.pods / a.nodes, &audit)?;
    let mut add = Counts::default();
    let mut del = Counts::default();
    for (n, b) in nodes.iter().zip(&base) {
        add = add.plus(&n.mark.minus(b));
        del = del.plus(&n.store.counts().minus(&n.mark));
    }
    o.add_counts = Some(add);
    o.del_counts = Some(del);
    o.floor = Some(fl);
    Ok(o)
}

/// What etcd and the client can do at most here, with the same threads and stores as (a).
#[derive(Debug, Clone, Copy)]
struct Floor {
    gets_s: f64,
    commits_s: f64,
}

const FLOOR_TIME: Duration = Duration::from_secs(1);

/// For [`FLOOR_TIME`] each, every node thread does `get` of one absent key in a loop, then
/// `commit` of an unconditional one-key put in a loop (under /bench-floor/, outside the IPAM's
/// keys, removed after). Not counted in the stores' counts used for the table.
fn floor(nodes: &[LibNode]) -> Result<Floor> {
    let rate = |commit: bool| -> Result<f64> {
        let barrier = Barrier::new(nodes.len());
        let done: Result<Vec<u64>> = std::thread::scope(|s| {
            let hs: Vec<_> = nodes
                .iter()
                .enumerate()
                .map(|(i, n)| {
                    let barrier = &barrier;
                    s.spawn(move || -> Result<u64> {
                        let key = format!("/bench-floor/{i}");
                        let txn = weft_store::Txn {
                            compares: Vec::new(),
                            ops: vec![weft_store::Op::Put {
                                key: key.clone(),
                                value: b"x".to_vec(),
                            }],
                        };
                        barrier.wait();
                        let t0 = Instant::now();
                        let mut k = 0u64;
                        while t0.elapsed() < FLOOR_TIME && !STOP.load(Ordering::Relaxed) {
                            if commit {
                                n.store.inner().commit(&txn)?;
                            } else {
                                n.store.inner().get(&key)?;
                            }
                            k += 1;
                        }
                        Ok(k)
                    })
                })
                .collect();
            hs.into_iter()
                .map(|h| {
                    h.join()
                        .map_err(|_| anyhow::anyhow!("a floor thread panicked"))?
                })
                .collect()
        });
        Ok(done?.iter().sum::<u64>() as f64 / FLOOR_TIME.as_secs_f64())
    };
    let gets_s = rate(false)?;
    let commits_s = rate(true)?;
    if let Some(n) = nodes.first() {
        let del = weft_store::Txn {
            compares: Vec::new(),
            ops: (0..nodes.len())
                .map(|i| weft_store::Op::Delete {
                    key: format!("/bench-floor/{i}"),
                })
                .collect(),
        };
        n.store.inner().commit(&del)?;
    }
    eprintln!("weft-bench: etcd floor: {gets_s:.0} gets/s, {commits_s:.0} commits/s");
    Ok(Floor { gets_s, commits_s })
}

// ---- (b) the binary ----

struct BinNode {
    bin: PathBuf,
    conf: Value,
    cni_path: String,
    node: String,
    results: Vec<Option<Value>>,
}

impl BinNode {
    fn cid(&self, pod: usize) -> String {
        format!("bin-{}-p{pod:04}", self.node)
    }
    fn args(&self, pod: usize) -> String {
        cluster::k8s_args(&format!("{}-{pod}", self.node), &self.cid(pod))
    }
}

impl Node for BinNode {
    fn add(&mut self, pod: usize) -> Result<(Duration, IpAddr)> {
        let (dt, addr, result) = cluster::plugin_add(
            &self.bin,
            &self.conf,
            &self.cid(pod),
            &self.cni_path,
            &self.args(pod),
        )?;
        self.results[pod] = Some(result);
        Ok((dt, addr))
    }

    fn del(&mut self, pod: usize) -> Result<Duration> {
        // A runtime sends DEL also after a failed ADD; then there is no prevResult.
        let prev = self.results[pod].take();
        cluster::plugin_del(
            &self.bin,
            &self.conf,
            prev.as_ref(),
            &self.cid(pod),
            &self.cni_path,
            &self.args(pod),
        )
    }
}

fn run_bin(a: &Args, tmp: &Path) -> Result<Outcome> {
    let bin = a.common.weft_ipam()?;
    let etcd = Etcd::start(tmp)?;
    let ep = etcd.endpoint();
    eprintln!("weft-bench: (b) weft-ipam binary, etcd at {ep}");
    let name = "wbc-bin";
    let subnet = "198.18.80.0/20";
    let per_node = a.pods / a.nodes;
    let cni_path = bin.parent().unwrap_or(Path::new(".")).display().to_string();
    let nodes: Vec<BinNode> = (0..a.nodes)
        .map(|i| {
            let node = format!("node-{i:02}");
            let conf = cluster::net_conf(
                name,
                cluster::weft_ipam_section(subnet, &node, &tmp.join("bin").join(&node), Some(&ep)),
            );
            BinNode {
                bin: bin.clone(),
                conf,
                cni_path: cni_path.clone(),
                node,
                results: vec![None; per_node],
            }
        })
        .collect();
    let admin = EtcdStore::connect(std::slice::from_ref(&ep), EtcdOptions::default())?;
    // The first ADD registers the network from its config (as the plugin does in a cluster
    // before the API exists); do it once before timing so the run measures steady churn.
    Ipam::new(&admin).ensure_network(&cluster::spec(name, subnet)?)?;
    let audit = || Audit::read(&admin, name);
    let (o, _) = drive("(b) weft-ipam binary", &etcd, nodes, per_node, &audit)?;
    Ok(o)
}

fn run(a: &Args) -> Result<String> {
    let tmp = cluster::temp_dir()?;
    let load_start = crate::loadavg();
    let result = (|| -> Result<Vec<Outcome>> {
        let mut outs = Vec::new();
        // Parts alternate run by run, so drift in the machine's load hits both alike.
        for r in 0..a.runs {
            if a.lib {
                let mut o = run_lib(a, &tmp.path().join(format!("lib{r}")))?;
                o.run = r + 1;
                outs.push(o);
            }
            if a.bin {
                let mut o = run_bin(a, &tmp.path().join(format!("bin{r}")))?;
                o.run = r + 1;
                outs.push(o);
            }
        }
        Ok(outs)
    })();
    if let Err(e) = tmp.close() {
        eprintln!("weft-bench: cannot remove the temp dir: {e}");
    }
    let outs = result?;
    if let Some(path) = &a.common.raw {
        let mut csv = String::new();
        for o in &outs {
            let part = format!("{}{}", o.part(), o.run);
            for (n, no) in o.out.iter().enumerate() {
                for (j, d) in no.add.iter().enumerate() {
                    let del = no
                        .del
                        .get(j)
                        .map_or(String::new(), |d| d.as_micros().to_string());
                    writeln!(csv, "{part},{n},{j},{},{del}", d.as_micros())?;
                }
            }
        }
        cluster::write_raw(path, "part,node,pod,add_us,del_us", &csv)?;
    }
    report(a, &outs, &load_start)
}

/// One table row: the numbers of one run.
#[derive(Debug, Clone, Copy, Default)]
struct Row {
    alloc: f64,
    release: f64,
    total: f64,
    allocs_s: f64,
    pods_s: f64,
    add50: f64,
    add99: f64,
    add_max: f64,
    del50: f64,
    del99: f64,
    add_range: f64,
    add_txn: f64,
    del_range: f64,
    del_txn: f64,
    dups: f64,
    left: f64,
    cpu_busy: f64,
    cpu_others: f64,
}

fn row(o: &Outcome) -> Row {
    let (adds, dels) = (o.adds(), o.dels());
    let p = |s: &[Duration], q: f64| {
        if s.is_empty() {
            f64::NAN
        } else {
            ms(pct(s, q))
        }
    };
    let per = |n: u64, of: usize| n as f64 / of.max(1) as f64;
    let ncpu = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let avail = ncpu * o.alloc.as_secs_f64();
    Row {
        alloc: o.alloc.as_secs_f64(),
        release: o.release.as_secs_f64(),
        total: o.total().as_secs_f64(),
        allocs_s: adds.len() as f64 / o.alloc.as_secs_f64(),
        pods_s: adds.len().min(dels.len()) as f64 / o.total().as_secs_f64(),
        add50: p(&adds, 0.5),
        add99: p(&adds, 0.99),
        add_max: p(&adds, 1.0),
        del50: p(&dels, 0.5),
        del99: p(&dels, 0.99),
        add_range: per(o.add_req.range, adds.len()),
        add_txn: per(o.add_req.txn, adds.len()),
        del_range: per(o.del_req.range, dels.len()),
        del_txn: per(o.del_req.txn, dels.len()),
        dups: cluster::duplicates(&o.addrs()) as f64,
        left: o
            .after
            .as_ref()
            .map_or(f64::NAN, |au| (au.handles + au.block_entries) as f64),
        cpu_busy: 100.0 * o.add_cpu.machine / avail,
        cpu_others: 100.0 * (o.add_cpu.machine - o.add_cpu.etcd - o.add_cpu.bench).max(0.0) / avail,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn median_row(rows: &[Row]) -> Row {
    let m = |f: fn(&Row) -> f64| median(rows.iter().map(f).collect());
    Row {
        alloc: m(|r| r.alloc),
        release: m(|r| r.release),
        total: m(|r| r.total),
        allocs_s: m(|r| r.allocs_s),
        pods_s: m(|r| r.pods_s),
        add50: m(|r| r.add50),
        add99: m(|r| r.add99),
        add_max: m(|r| r.add_max),
        del50: m(|r| r.del50),
        del99: m(|r| r.del99),
        add_range: m(|r| r.add_range),
        add_txn: m(|r| r.add_txn),
        del_range: m(|r| r.del_range),
        del_txn: m(|r| r.del_txn),
        dups: m(|r| r.dups),
        left: m(|r| r.left),
        cpu_busy: m(|r| r.cpu_busy),
        cpu_others: m(|r| r.cpu_others),
    }
}

fn write_row(t: &mut String, label: &str, r: &Row) -> Result<()> {
    writeln!(
        t,
        "| {label} | {:.2} s | {:.2} s | {:.2} s | {:.0} | {:.0} | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} + {:.1} | {:.1} + {:.1} | {:.0}% / {:.0}% | {} | {} |",
        r.alloc,
        r.release,
        r.total,
        r.allocs_s,
        r.pods_s,
        r.add50,
        r.add99,
        r.add_max,
        r.del50,
        r.del99,
        r.add_range,
        r.add_txn,
        r.del_range,
        r.del_txn,
        r.cpu_busy,
        r.cpu_others,
        r.dups,
        r.left
    )?;
    Ok(())
}

fn report(a: &Args, outs: &[Outcome], load_start: &str) -> Result<String> {
    let mut t = String::new();
    writeln!(
        t,
        "| run | allocate phase | release phase | total | allocations/s | pods/s (ADD+DEL) | ADD p50 | ADD p99 | ADD max | DEL p50 | DEL p99 | etcd requests per ADD (range + txn) | per DEL | CPU busy / by others, allocate phase | duplicates | left after release |"
    )?;
    writeln!(
        t,
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    )?;
    let mut checks = String::new();
    let mut goals = String::new();
    let mut breakdown = String::new();
    let verdict = |ok: bool| if ok { "**met**" } else { "**missed**" };
    let list = |v: &[f64], unit: &str, prec: usize| {
        v.iter()
            .map(|x| format!("{x:.prec$}{unit}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    for part in ["a", "b"] {
        let runs: Vec<&Outcome> = outs.iter().filter(|o| o.part() == part).collect();
        let Some(first) = runs.first() else { continue };
        let rows: Vec<Row> = runs.iter().map(|o| row(o)).collect();
        for (o, r) in runs.iter().zip(&rows) {
            write_row(&mut t, &format!("{}, run {}", o.label, o.run), r)?;
        }
        let med = median_row(&rows);
        if runs.len() > 1 {
            write_row(
                &mut t,
                &format!("**{}: median of {} runs**", first.label, runs.len()),
                &med,
            )?;
        }
        // Checks, one line per run.
        let mut all_held = true;
        let mut all_complete = true;
        for o in &runs {
            let (adds, dels) = (o.adds().len(), o.dels().len());
            all_held &= o.held_ok();
            all_complete &= adds == o.pods && dels == o.pods && o.after_ok();
            let desc = |r: &Result<Audit>| match r {
                Ok(h) => h.describe(),
                Err(e) => format!("audit failed: {e:#}"),
            };
            writeln!(
                checks,
                "- {} run {}: {adds}/{} ADDs succeeded ({} failed), {} addresses handed out, {} duplicates; the store with all held: {} — {}. {dels}/{} DELs succeeded; the store after: {} — {}.",
                o.label,
                o.run,
                o.pods,
                o.add_failed(),
                o.addrs().len(),
                cluster::duplicates(&o.addrs()),
                desc(&o.held),
                if o.held_ok() {
                    "**no duplicate, every pod its own address**"
                } else {
                    "**FAILED**"
                },
                o.pods,
                desc(&o.after),
                if o.after_ok() {
                    "**everything released**"
                } else {
                    "**NOT everything released**"
                }
            )?;
        }
        let each = |f: fn(&Row) -> f64| rows.iter().map(f).collect::<Vec<_>>();
        if part == "a" {
            writeln!(
                goals,
                "- (a) at least 1000 allocations/s: median {:.0}/s (runs: {}) — {}; zero duplicates, all released, in every run — {}",
                med.allocs_s,
                list(&each(|r| r.allocs_s), "", 0),
                verdict(med.allocs_s >= 1000.0 && all_complete),
                verdict(all_held && all_complete)
            )?;
        } else {
            writeln!(
                goals,
                "- (b) all {} pods allocated and released in under 20 s: median {:.2} s (runs: {}){} — {}; ADD p99 under 50 ms: median {:.1} ms (runs: {}) — {}; zero duplicates, all released, in every run — {}",
                first.pods,
                med.total,
                list(&each(|r| r.total), " s", 2),
                if all_complete {
                    ""
                } else {
                    " (not all succeeded)"
                },
                verdict(all_complete && med.total < 20.0),
                med.add99,
                list(&each(|r| r.add99), " ms", 1),
                verdict(med.add99 < 50.0),
                verdict(all_held && all_complete)
            )?;
        }
        // Where the time goes, over all runs.
        let adds: Vec<Duration> = runs.iter().flat_map(|o| o.adds()).collect();
        let dels: Vec<Duration> = runs.iter().flat_map(|o| o.dels()).collect();
        let n = adds.len().max(1) as f64;
        let nd = dels.len().max(1) as f64;
        let mean = adds.iter().sum::<Duration>().as_secs_f64() * 1000.0 / n;
        let mean_d = dels.iter().sum::<Duration>().as_secs_f64() * 1000.0 / nd;
        let sum = |f: fn(&Outcome) -> Option<Counts>| {
            runs.iter()
                .filter_map(|o| f(o))
                .fold(None, |acc: Option<Counts>, c| {
                    Some(acc.map_or(c, |a| a.plus(&c)))
                })
        };
        if let (Some(ac), Some(dc)) = (sum(|o| o.add_counts), sum(|o| o.del_counts)) {
            let store = ac.store_time().as_secs_f64() * 1000.0 / n;
            let store_d = dc.store_time().as_secs_f64() * 1000.0 / nd;
            writeln!(
                breakdown,
                "- {} ADD (all runs): {:.2} round trips ({:.2} get, {:.2} list, {:.2} commit), {:.3} refused commits (conflicts, each a retry); mean {mean:.1} ms, of which {store:.1} ms waiting on etcd ({:.1} get, {:.1} list, {:.1} commit) and {:.1} ms elsewhere (retry backoff, CPU). DEL: {:.2} round trips, {:.3} conflicts; mean {mean_d:.1} ms, of which {store_d:.1} ms waiting on etcd.",
                first.label,
                ac.round_trips() as f64 / n,
                ac.gets as f64 / n,
                ac.lists as f64 / n,
                ac.commits as f64 / n,
                ac.conflicts as f64 / n,
                ac.get_ns as f64 / 1e6 / n,
                ac.list_ns as f64 / 1e6 / n,
                ac.commit_ns as f64 / 1e6 / n,
                mean - store,
                dc.round_trips() as f64 / nd,
                dc.conflicts as f64 / nd,
            )?;
            let floors: Vec<Floor> = runs.iter().filter_map(|o| o.floor).collect();
            if !floors.is_empty() {
                let gets_s = median(floors.iter().map(|f| f.gets_s).collect());
                let commits_s = median(floors.iter().map(|f| f.commits_s).collect());
                let reads = (ac.gets + ac.lists) as f64 / n;
                let commits = ac.commits as f64 / n;
                writeln!(
                    breakdown,
                    "- {} ceiling: the same {} threads and stores doing nothing but one call in a loop reach {gets_s:.0} gets/s or {commits_s:.0} unconditional one-key commits/s (medians); at {reads:.2} reads and {commits:.2} commits per ADD that caps allocation near {:.0}/s on this machine.",
                    first.label,
                    first.nodes,
                    1.0 / (reads / gets_s + commits / commits_s)
                )?;
            }
        } else {
            let (range, txn) = runs.iter().fold((0u64, 0u64), |(r, t), o| {
                (r + o.add_req.range, t + o.add_req.txn)
            });
            writeln!(
                breakdown,
                "- {} ADD (all runs): {:.2} etcd requests ({:.2} range, {:.2} txn; txns beyond one per ADD are refused commits, i.e. retries), as etcd counted them; mean {mean:.1} ms. DEL: mean {mean_d:.1} ms.",
                first.label,
                (range + txn) as f64 / n,
                range as f64 / n,
                txn as f64 / n,
            )?;
        }
        for o in &runs {
            writeln!(
                breakdown,
                "- {} run {} CPU, allocate phase: {}; release phase: {}.",
                o.label,
                o.run,
                o.add_cpu.describe(o.alloc),
                o.del_cpu.describe(o.release)
            )?;
        }
    }
    for line in checks.lines() {
        eprintln!("weft-bench: check: {line}");
    }

    let mut md = String::new();
    writeln!(md, "{MARK_BEGIN}")?;
    writeln!(
        md,
        "## Cluster IPAM churn: {} pods on {} nodes against one etcd\n",
        a.pods, a.nodes
    )?;
    writeln!(
        md,
        "{} simulated nodes (distinct node names) run at once; each allocates its {} pods one after \
another, then — once every node is done and the store has been audited with all addresses held \
(not timed) — releases them one after another. A phase's time runs from the moment all nodes \
start to the moment the last one finishes; allocations/s is pods over the allocate phase, pods/s \
is pods over both phases. One network, one IPv4 /20 pool, /26 blocks (defaults), the network \
registered before timing. Each part runs {} times, the parts alternating, each run on a fresh \
etcd; goals are judged on the medians. (a): the IPAM library (`weft_ipam::Ipam` over \
`weft_store::etcd::EtcdStore`) in this process, one thread and one `EtcdStore` (connected before \
timing) per node; the stores are wrapped to count and time the calls that reach etcd. (b): the \
`weft-ipam` binary exec'd as a runtime does it (CNI_* variables, kubelet's CNI_ARGS, config on \
stdin, the ADD result as prevResult on DEL, CNI_NETNS /proc/self/ns/net: an IPAM-only plugin never \
enters it), one thread per node spawning that node's calls one at a time, each node with its own \
dataDir (its node-local lock) and `ipam.store` etcd; each call opens its own etcd client. \"etcd \
requests\" are etcd's own counts (`grpc_server_handled_total`, Range and Txn) over the phase, \
divided by the calls. \"CPU busy / by others\": the machine's busy CPU time over the allocate \
phase, of all CPUs, and the part of it used by processes other than etcd, this bench and its \
plugins (the machine is shared).\n",
        a.nodes,
        a.pods / a.nodes,
        a.runs
    )?;
    md.push_str(&t);
    writeln!(md, "\nChecks:\n")?;
    md.push_str(&checks);
    writeln!(md, "\nGoals:\n")?;
    md.push_str(&goals);
    writeln!(md, "\nWhere the time goes:\n")?;
    md.push_str(&breakdown);
    let only = match (a.lib, a.bin) {
        (true, false) => " --only lib",
        (false, true) => " --only bin",
        _ => "",
    };
    let cmd = if a.nodes == 10 && a.pods == 1000 && a.runs == 3 && only.is_empty() {
        "bench/run-ipam.sh churn".to_string()
    } else {
        format!(
            "bench/run-ipam.sh churn --nodes {} --pods {} --runs {}{only}",
            a.nodes, a.pods, a.runs
        )
    };
    cluster::footer(
        &mut md,
        load_start,
        "",
        &cmd,
        &format!(
            "builds `weft-ipam` as installed with `scripts/build-plugins.sh` (release, static) and `weft-bench`, then runs `weft-bench churn --nodes {} --pods {} --runs {}{only}`",
            a.nodes, a.pods, a.runs
        ),
    )?;
    writeln!(md, "{MARK_END}")?;
    Ok(md)
}
