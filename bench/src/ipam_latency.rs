//! `weft-bench ipam-latency`: IPAM ADD and DEL latency, one pod at a time, variants alternating.
//!
//! `weft-ipam` on a throwaway etcd on loopback, `weft-ipam` on its embedded store, and the
//! reference `host-local`, each exec'd as a runtime execs an IPAM plugin (CNI_* variables,
//! kubelet's CNI_ARGS, the network config on stdin, the ADD result as prevResult on DEL), plus
//! two floors: the same IPAM calls in process over one reused `EtcdStore` (no exec, no
//! connection set-up), and the exec of `weft-ipam VERSION`. IPAM-only plugins do no kernel work
//! and never enter CNI_NETNS, so this runs in the current namespace with CNI_NETNS
//! /proc/self/ns/net. Everything it makes (temp dir, etcd) goes on exit, error and Ctrl-C.
use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;
use weft_ipam::{AllocateRequest, Ipam, NetworkSpec};
use weft_store::Store as _;
use weft_store::etcd::{EtcdOptions, EtcdStore};

use crate::cluster::{self, Audit, Common};
use crate::counting::{Counting, Counts};
use crate::etcd::Etcd;
use crate::{check_stop, ms, pct};

const MARK_BEGIN: &str = "<!-- bench:ipam-latency -->";
const MARK_END: &str = "<!-- /bench:ipam-latency -->";

struct Args {
    pods: usize,
    warmup: usize,
    common: Common,
}

fn usage() -> String {
    format!(
        "usage: weft-bench ipam-latency [--pods N (200)] [--warmup N (5)] {}
Measures IPAM ADD/DEL latency of weft-ipam (etcd store, embedded store) and the reference
host-local, alternating variants pod by pod, and writes the table into FILE between the
ipam-latency markers. Starts its own etcd on a free loopback port.",
        cluster::COMMON_USAGE
    )
}

enum Kind {
    Plugin {
        bin: std::path::PathBuf,
        conf: Value,
    },
    /// `Ipam::allocate` / `release` in this process over one `EtcdStore`.
    Library { spec: NetworkSpec },
    /// The same with a new `EtcdStore` (runtime, connection) for each call, as a plugin has.
    LibraryFresh { spec: NetworkSpec },
    /// `weft-ipam VERSION`, twice.
    Exec { bin: std::path::PathBuf },
}

struct Variant {
    key: &'static str,
    label: &'static str,
    kind: Kind,
    add: Vec<Duration>,
    del: Vec<Duration>,
}

pub fn main() -> i32 {
    let mut a = Args {
        pods: 200,
        warmup: 5,
        common: Common::new(),
    };
    let usage = usage();
    let parsed = cluster::parse(&usage, &mut a.common, |arg, val| {
        match arg {
            "--pods" => a.pods = val()?.parse().context("--pods")?,
            "--warmup" => a.warmup = val()?.parse().context("--warmup")?,
            _ => return Ok(false),
        }
        Ok(true)
    });
    if let Err(e) = parsed.and_then(|()| {
        if a.pods == 0 {
            bail!("--pods must be at least 1");
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

/// Temp dir and etcd live in here and are dropped (etcd killed, files removed) on return.
fn run(a: &Args) -> Result<String> {
    let weft_ipam = a.common.weft_ipam()?;
    let host_local = a.common.ref_dir.join("host-local");
    if !host_local.exists() {
        bail!(
            "{} not found: install containernetworking-plugins",
            host_local.display()
        );
    }
    let tmp = cluster::temp_dir()?;
    let etcd = Etcd::start(tmp.path())?;
    let ep = etcd.endpoint();
    eprintln!(
        "weft-bench: etcd at {ep} (pid dir {})",
        tmp.path().display()
    );
    let out = measure(a, tmp.path(), &etcd, &weft_ipam, &host_local);
    drop(etcd);
    if let Err(e) = tmp.close() {
        eprintln!("weft-bench: cannot remove the temp dir: {e}");
    }
    out
}

fn measure(
    a: &Args,
    tmp: &Path,
    etcd: &Etcd,
    weft_ipam: &Path,
    host_local: &Path,
) -> Result<String> {
    let ep = etcd.endpoint();
    let node = "wb-node";
    let lib_spec = cluster::spec("wbi-lib", "198.18.132.0/22")?;
    let v = |key, label, kind| Variant {
        key,
        label,
        kind,
        add: Vec::new(),
        del: Vec::new(),
    };
    let mut vs = vec![
        v(
            "a",
            "(a) `weft-ipam`, etcd store",
            Kind::Plugin {
                bin: weft_ipam.to_path_buf(),
                conf: cluster::net_conf(
                    "wbi-etcd",
                    cluster::weft_ipam_section("198.18.120.0/22", node, &tmp.join("a"), Some(&ep)),
                ),
            },
        ),
        v(
            "b",
            "(b) `weft-ipam`, embedded store",
            Kind::Plugin {
                bin: weft_ipam.to_path_buf(),
                conf: cluster::net_conf(
                    "wbi-emb",
                    cluster::weft_ipam_section("198.18.124.0/22", node, &tmp.join("b"), None),
                ),
            },
        ),
        v(
            "c",
            "(c) reference `host-local`",
            Kind::Plugin {
                bin: host_local.to_path_buf(),
                conf: cluster::net_conf(
                    "wbi-hl",
                    serde_json::json!({
                        "type": "host-local", "subnet": "198.18.128.0/22",
                        "dataDir": tmp.join("c"),
                    }),
                ),
            },
        ),
        v(
            "d",
            "(d) in process: `Ipam::allocate` / `release` over one `EtcdStore` (no exec, connection reused)",
            Kind::Library { spec: lib_spec },
        ),
        v(
            "e",
            "(e) in process as (d), but a new `EtcdStore` for each call (what each plugin process sets up)",
            Kind::LibraryFresh {
                spec: cluster::spec("wbi-fresh", "198.18.136.0/22")?,
            },
        ),
        v(
            "x",
            "exec of `weft-ipam VERSION` (no work)",
            Kind::Exec {
                bin: weft_ipam.to_path_buf(),
            },
        ),
    ];
    let cni_path = format!(
        "{}:{}",
        weft_ipam.parent().unwrap_or(Path::new(".")).display(),
        host_local.parent().unwrap_or(Path::new(".")).display()
    );
    let lib_store = Counting::new(EtcdStore::connect(
        std::slice::from_ref(&ep),
        EtcdOptions::default(),
    )?);
    lib_store.revision().context("first etcd call")?;
    let ipam = Ipam::new(&lib_store);
    let mut lib_counts = Counts::default();
    let (mut a_add_rt, mut a_del_rt) = (Vec::new(), Vec::new());

    let load_start = crate::loadavg();
    let rounds = a.warmup + a.pods;
    let n = vs.len();
    let mut leftover_errors = Vec::new();
    for r in 0..rounds {
        for k in 0..n {
            check_stop()?;
            let v = &mut vs[(r + k) % n];
            let cid = format!("wbi-{}-{r:05}", v.key);
            let pod = format!("pod-{}-{r}", v.key);
            let args = cluster::k8s_args(&pod, &cid);
            let (add, del) = match &v.kind {
                Kind::Plugin { bin, conf } => {
                    // Server-side request counts around (a)'s calls (outside the timed part).
                    let before = (v.key == "a").then(|| etcd_requests(etcd));
                    let (add, _, result) = cluster::plugin_add(bin, conf, &cid, &cni_path, &args)
                        .with_context(|| format!("{}, pod {r}", v.label))?;
                    let mid = (v.key == "a").then(|| etcd_requests(etcd));
                    let del = cluster::plugin_del(bin, conf, Some(&result), &cid, &cni_path, &args)
                        .with_context(|| format!("{}, pod {r}", v.label))?;
                    if let (Some(b), Some(m)) = (before, mid) {
                        let after = etcd_requests(etcd);
                        if let (Some(b), Some(m), Some(e)) = (b, m, after) {
                            a_add_rt.push(m - b);
                            a_del_rt.push(e - m);
                        }
                    }
                    (add, del)
                }
                Kind::Library { spec } => {
                    let req = AllocateRequest {
                        container_id: cid.clone(),
                        ifname: crate::IFNAME.into(),
                        node: node.into(),
                        pod: Some(format!("bench/{pod}")),
                        ..AllocateRequest::default()
                    };
                    let c0 = lib_store.counts();
                    let t0 = Instant::now();
                    ipam.allocate(spec, &req)
                        .with_context(|| format!("{}, pod {r}", v.label))?;
                    let add = t0.elapsed();
                    let t0 = Instant::now();
                    if ipam.release(&spec.name, &cid, crate::IFNAME)?.is_none() {
                        leftover_errors.push(format!("{cid}: release found nothing"));
                    }
                    let del = t0.elapsed();
                    if r >= a.warmup {
                        lib_counts = lib_counts.plus(&lib_store.counts().minus(&c0));
                    }
                    (add, del)
                }
                Kind::LibraryFresh { spec } => {
                    let req = AllocateRequest {
                        container_id: cid.clone(),
                        ifname: crate::IFNAME.into(),
                        node: node.into(),
                        pod: Some(format!("bench/{pod}")),
                        ..AllocateRequest::default()
                    };
                    let connect =
                        || EtcdStore::connect(std::slice::from_ref(&ep), EtcdOptions::default());
                    let t0 = Instant::now();
                    let store = connect()?;
                    Ipam::new(&store)
                        .allocate(spec, &req)
                        .with_context(|| format!("{}, pod {r}", v.label))?;
                    drop(store);
                    let add = t0.elapsed();
                    let t0 = Instant::now();
                    let store = connect()?;
                    if Ipam::new(&store)
                        .release(&spec.name, &cid, crate::IFNAME)?
                        .is_none()
                    {
                        leftover_errors.push(format!("{cid}: release found nothing"));
                    }
                    drop(store);
                    (add, t0.elapsed())
                }
                Kind::Exec { bin } => {
                    let stdin = br#"{"cniVersion": "1.0.0"}"#;
                    let ns = Path::new("/proc/self/ns/net");
                    let (first, _) = crate::exec_plugin(bin, "VERSION", &cid, ns, "", stdin, None)?;
                    let (second, _) =
                        crate::exec_plugin(bin, "VERSION", &cid, ns, "", stdin, None)?;
                    (first, second)
                }
            };
            if r >= a.warmup {
                v.add.push(add);
                v.del.push(del);
            }
        }
        if (r + 1) % 25 == 0 {
            eprintln!("weft-bench: {}/{rounds} rounds", r + 1);
        }
    }

    // Everything released?
    let mut checks = Vec::new();
    for (net, store_desc) in [
        ("wbi-etcd", "etcd"),
        ("wbi-lib", "etcd"),
        ("wbi-fresh", "etcd"),
    ] {
        let audit = Audit::read(&lib_store, net)?;
        checks.push(format!(
            "{net} ({store_desc}) after the run: {} — {}",
            audit.describe(),
            if audit.empty() {
                "all released"
            } else {
                "NOT all released"
            }
        ));
    }
    checks.extend(leftover_errors);
    for c in &checks {
        eprintln!("weft-bench: check: {c}");
    }

    if let Some(path) = &a.common.raw {
        let mut csv = String::new();
        for v in &vs {
            for (i, (ad, de)) in v.add.iter().zip(&v.del).enumerate() {
                writeln!(csv, "{},{i},{},{}", v.key, ad.as_micros(), de.as_micros())?;
            }
        }
        cluster::write_raw(path, "variant,sample,add_us,del_us", &csv)?;
    }
    let a_rt = |s: &[u64]| {
        if s.is_empty() {
            "?".to_string()
        } else {
            format!("{:.1}", s.iter().sum::<u64>() as f64 / s.len() as f64)
        }
    };
    let skip = a.warmup.min(a_add_rt.len());
    let rt_a = (a_rt(&a_add_rt[skip..]), a_rt(&a_del_rt[skip..]));
    report(a, &vs, &load_start, lib_counts, rt_a, &checks)
}

/// Requests etcd has served over gRPC (Range and Txn: what the IPAM uses), from its metrics.
fn etcd_requests(etcd: &Etcd) -> Option<u64> {
    let range = etcd.metric("grpc_server_handled_total", &["grpc_method=\"Range\""])?;
    let txn = etcd.metric("grpc_server_handled_total", &["grpc_method=\"Txn\""])?;
    Some((range + txn) as u64)
}

fn report(
    a: &Args,
    vs: &[Variant],
    load_start: &str,
    lib: Counts,
    rt_a: (String, String),
    checks: &[String],
) -> Result<String> {
    let get = |k: &str| vs.iter().find(|v| v.key == k).map(|v| (&v.add, &v.del));
    let p50a = |k: &str| get(k).map_or(f64::NAN, |(a, _)| ms(pct(a, 0.5)));
    let p50d = |k: &str| get(k).map_or(f64::NAN, |(_, d)| ms(pct(d, 0.5)));
    let pods = a.pods as f64;
    // Per pod in (d): ADD and DEL together (the wrapper counts both).
    let lib_rt = format!(
        "{:.1} per ADD+DEL ({:.1} reads, {:.1} commits)",
        lib.round_trips() as f64 / pods,
        (lib.gets + lib.lists) as f64 / pods,
        lib.commits as f64 / pods
    );

    let mut t = String::new();
    writeln!(
        t,
        "| variant | ADD p50 | ADD p95 | DEL p50 | DEL p95 | ADD p50 vs host-local | DEL p50 vs host-local | etcd requests per ADD / DEL |"
    )?;
    writeln!(t, "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |")?;
    for v in vs {
        let rel = |x: f64, y: f64| {
            if v.key == "c" || v.key == "x" {
                "–".to_string()
            } else {
                format!("{:.2}x", x / y)
            }
        };
        let rts = match v.key {
            "a" => format!("{} / {} (etcd's own count)", rt_a.0, rt_a.1),
            "d" => lib_rt.clone(),
            _ => "–".into(),
        };
        writeln!(
            t,
            "| {} | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms | {} | {} | {} |",
            v.label,
            p50a(v.key),
            ms(pct(&v.add, 0.95)),
            p50d(v.key),
            ms(pct(&v.del, 0.95)),
            rel(p50a(v.key), p50a("c")),
            rel(p50d(v.key), p50d("c")),
            rts
        )?;
    }
    let refver = crate::sh(
        "dpkg-query",
        &["-W", "-f", "${Version}", "containernetworking-plugins"],
    );
    let mut md = String::new();
    writeln!(md, "{MARK_BEGIN}")?;
    writeln!(
        md,
        "## Cluster IPAM: ADD and DEL latency, etcd against embedded and host-local\n"
    )?;
    writeln!(
        md,
        "{} pods per variant ({} warm-up pods each not counted), one pod of every variant per round, \
the order rotating each round, all in one run, one pod at a time (no concurrency). Each plugin \
time is wall clock around one execution as a runtime does it: fork/exec with CNI_* variables \
(CNI_ARGS as kubelet sets them: IgnoreUnknown, K8S_POD_NAMESPACE, K8S_POD_NAME, \
K8S_POD_INFRA_CONTAINER_ID) and the network config on stdin, read stdout, wait; DEL gets the ADD \
result as prevResult. IPAM-only plugins do no kernel work, so they run in the bench's namespace \
with CNI_NETNS=/proc/self/ns/net. One IPv4 /22 pool per variant, cniVersion 1.0.0. `weft-ipam` \
uses defaults (/26 blocks, 30 s cooldown, node `wb-node`); with etcd it opens a new etcd client \
per call, as a plugin process must, and takes its node-local lock. The reference is `host-local` \
(data dir in the temp dir). Row (d) is the same IPAM transactions in this process over one \
`EtcdStore` kept open: the store's share of (a); row (e) opens a new `EtcdStore` (its tokio \
runtime and connection) for each call and drops it after, as each plugin process does. The exec row is the process floor, timed twice \
per pod. \"etcd requests\": for (a), Range+Txn requests etcd counted (its \
`grpc_server_handled_total`) around each call; for (d), calls that reached the store.\n",
        a.pods, a.warmup
    )?;
    md.push_str(&t);
    writeln!(md, "\nChecks:\n")?;
    for c in checks {
        writeln!(md, "- {c}")?;
    }
    let cmd = if a.pods == 200 && a.warmup == 5 {
        "bench/run-ipam.sh ipam-latency".to_string()
    } else {
        format!(
            "bench/run-ipam.sh ipam-latency --pods {} --warmup {}",
            a.pods, a.warmup
        )
    };
    cluster::footer(
        &mut md,
        load_start,
        &format!("; reference plugins: Debian containernetworking-plugins {refver}"),
        &cmd,
        &format!(
            "builds `weft-ipam` as installed with `scripts/build-plugins.sh` (release, static) and `weft-bench`, then runs `weft-bench ipam-latency --pods {} --warmup {}`",
            a.pods, a.warmup
        ),
    )?;
    writeln!(md, "{MARK_END}")?;
    Ok(md)
}
