//! `weft-bench convergence`: 3 real nodes running weftd (VXLAN) plus N simulated node records,
//! each with one block, written into etcd; the time from a node joining (its block claimed and
//! its record written) until every real agent has its route in the kernel, and weftd's resident
//! memory with those peers.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use ipnet::IpNet;
use serde_json::json;
use weft_ipam::{AllocateRequest, Ipam, KEY_ROOT};
use weft_store::etcd::{EtcdOptions, EtcdStore};
use weft_store::{Op, Store, Txn};

use crate::lab::{Lab, wait_until};

const MARK_BEGIN: &str = "<!-- bench:convergence -->";
const MARK_END: &str = "<!-- /bench:convergence -->";
const POOL: &str = "198.18.0.0/16";

const USAGE: &str = "usage: weft-bench convergence [--peers N (500)] [--joins N (3)] \
[--bins DIR ($CARGO_TARGET_DIR/release)] [--out FILE (BENCHMARKS.md)] [--no-write]
Runs as root. A 3-node lab in namespaces wb<pid>-*, weftd in vxlan mode on each.";

struct Args {
    peers: usize,
    joins: usize,
    bins: std::path::PathBuf,
    out: std::path::PathBuf,
    write: bool,
}

fn parse_args(args: &[String]) -> Result<Args> {
    let mut a = Args {
        peers: 500,
        joins: 3,
        bins: crate::release_dir(),
        out: crate::workspace_root().join("BENCHMARKS.md"),
        write: true,
    };
    crate::parse_flags(args.iter().cloned(), USAGE, |arg, val| {
        match arg {
            "--peers" => a.peers = val()?.parse()?,
            "--joins" => a.joins = val()?.parse()?,
            "--bins" => a.bins = val()?.into(),
            "--out" => a.out = val()?.into(),
            "--no-write" => a.write = false,
            _ => return Ok(false),
        }
        Ok(true)
    })?;
    if a.joins == 0 || a.peers > 60000 {
        bail!("--joins must be at least 1, --peers at most 60000");
    }
    Ok(a)
}

pub fn main(args: &[String]) -> Result<()> {
    let a = parse_args(args)?;
    let out = a.write.then_some(a.out.as_path());
    crate::lab::bench_main("convergence", out, (MARK_BEGIN, MARK_END), |dir, load| {
        run(&a, dir, load)
    })
}

/// A simulated node: its record (no lease: it stays) and one address, which claims a block.
fn add_sim(store: &EtcdStore, spec: &weft_ipam::NetworkSpec, i: usize) -> Result<IpNet> {
    let name = format!("sim-{i}");
    let ip = format!("198.19.{}.{}", 10 + i / 200, 1 + i % 200);
    let got = Ipam::new(store).allocate(
        spec,
        &AllocateRequest {
            container_id: format!("sim-pod-{i}"),
            ifname: "eth0".into(),
            node: name.clone(),
            ..AllocateRequest::default()
        },
    )?;
    let addr = got
        .addresses
        .first()
        .ok_or_else(|| anyhow!("no address for {name}"))?
        .address;
    let block = IpNet::new(addr.addr(), 26)?.trunc();
    let rec = json!({
        "schema": 1, "name": name, "underlayIp": ip,
        "underlaySubnet": format!("198.19.{}.0/24", 10 + i / 200),
        "vtepMac": format!("0e:57:cc:{:02x}:{:02x}:{:02x}", (i >> 16) & 0xff, (i >> 8) & 0xff, i & 0xff),
        "vtepIp": ip, "vni": 4096, "networks": ["cluster"], "mode": "vxlan",
    });
    store.commit(&Txn {
        compares: vec![],
        ops: vec![Op::Put {
            key: format!("{KEY_ROOT}/nodes/{name}"),
            value: rec.to_string().into_bytes(),
        }],
    })?;
    Ok(block)
}

fn rss_kb(pid: u32) -> Result<(u64, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let f = |k: &str| {
        s.lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|x| x.parse().ok())
            .unwrap_or(0)
    };
    Ok((f("VmRSS:"), f("VmHWM:")))
}

struct Join {
    total: Duration,
    per_node: Vec<Duration>,
}

fn run(a: &Args, dir: &std::path::Path, load_start: &str) -> Result<String> {
    let mut lab = Lab::new("cv", dir, &a.bins)?;
    let pod = json!({"mode": "routed", "mtu": 1450, "ipam": {"pools": [{"subnet": POOL}]}});
    let mut blocks = Vec::new();
    for i in 0..3 {
        let (_, ip) = lab.attach(i, &format!("cv-{i}"), pod.clone())?;
        blocks.push(IpNet::new(ip.parse()?, 26)?.trunc());
    }
    for i in 0..3 {
        lab.start_weftd(i, "vxlan")?;
    }
    let t = wait_until(Duration::from_secs(20), Duration::from_millis(50), || {
        for i in 0..3 {
            for (j, b) in blocks.iter().enumerate() {
                if i != j && !lab.nodes[i].ns.has_weft_route(&b.to_string())? {
                    return Ok(false);
                }
            }
        }
        Ok(true)
    })?;
    let t3 = t.ok_or_else(|| anyhow!("3 real nodes not converged in 20 s\n{}", lab.logs()))?;
    std::thread::sleep(Duration::from_secs(1));
    let rss_idle: Vec<(u64, u64)> = (0..3)
        .map(|i| rss_kb(lab.weftd_pid(i).unwrap_or(0)))
        .collect::<Result<_>>()?;

    // The store client lives in a thread inside the store namespace (etcd listens there only).
    let spec = crate::cluster::spec("cluster", POOL)?;
    let store_ns = weft_dataplane::Netns::open(&lab.store.path())?;
    let ep = lab.endpoint();
    let (tx, rx) = std::sync::mpsc::channel::<(usize, std::sync::mpsc::Sender<Result<IpNet>>)>();
    let worker = std::thread::spawn(move || -> Result<()> {
        store_ns
            .run_in(|| -> Result<()> {
                let store = EtcdStore::connect(&[ep], EtcdOptions::default())?;
                for (i, reply) in rx {
                    let _ = reply.send(add_sim(&store, &spec, i));
                }
                Ok(())
            })
            .context("enter the store netns")?
    });
    let add = |i: usize| -> Result<IpNet> {
        let (rtx, rrx) = std::sync::mpsc::channel();
        tx.send((i, rtx))
            .map_err(|_| anyhow!("store thread gone"))?;
        rrx.recv().map_err(|_| anyhow!("store thread gone"))?
    };

    // N peers at once.
    eprintln!("weft-bench: writing {} simulated nodes", a.peers);
    let t0 = Instant::now();
    for i in 0..a.peers {
        crate::check_stop()?;
        add(i)?;
    }
    let written = t0.elapsed();
    let want = a.peers + 2;
    let bulk = wait_until(Duration::from_secs(120), Duration::from_millis(100), || {
        for n in &lab.nodes {
            if n.ns.weft_routes()? < want {
                return Ok(false);
            }
        }
        Ok(true)
    })?
    .map(|_| t0.elapsed());
    let bulk = bulk.ok_or_else(|| {
        anyhow!(
            "agents did not reach {want} routes in 120 s\n{}",
            lab.logs()
        )
    })?;
    std::thread::sleep(Duration::from_secs(2));

    // Joins: one more node each, measured until every real agent has its route.
    let mut joins = Vec::new();
    for k in 0..a.joins {
        crate::check_stop()?;
        let t = Instant::now();
        let block = add(a.peers + k)?;
        let b = block.to_string();
        let mut seen: Vec<Option<Duration>> = vec![None; 3];
        let done = wait_until(Duration::from_secs(30), Duration::from_millis(10), || {
            for (i, n) in lab.nodes.iter().enumerate() {
                if seen[i].is_none() && n.ns.has_weft_route(&b)? {
                    seen[i] = Some(t.elapsed());
                }
            }
            Ok(seen.iter().all(Option::is_some))
        })?;
        if done.is_none() {
            bail!("join {k}: route to {b} missing after 30 s\n{}", lab.logs());
        }
        let per_node: Vec<Duration> = seen.into_iter().flatten().collect();
        let total = per_node.iter().copied().max().unwrap_or_default();
        eprintln!("weft-bench: join {} ({b}): {:?} {per_node:?}", k + 1, total);
        joins.push(Join { total, per_node });
        std::thread::sleep(Duration::from_secs(2));
    }
    let rss: Vec<(u64, u64)> = (0..3)
        .map(|i| rss_kb(lab.weftd_pid(i).unwrap_or(0)))
        .collect::<Result<_>>()?;
    let routes: Vec<usize> = lab
        .nodes
        .iter()
        .map(|n| n.ns.weft_routes())
        .collect::<Result<_>>()?;
    let fdb: Vec<usize> = lab
        .nodes
        .iter()
        .map(|n| {
            Ok(n.ns
                .ok(&["bridge", "fdb", "show", "dev", "weft.vx"])?
                .lines()
                .count())
        })
        .collect::<Result<_>>()?;
    // CPU time weftd used so far (utime + stime), for where the cost is.
    let cpu: Vec<f64> = (0..3)
        .map(|i| {
            let s =
                std::fs::read_to_string(format!("/proc/{}/stat", lab.weftd_pid(i).unwrap_or(0)))
                    .unwrap_or_default();
            let f: Vec<f64> = s
                .rsplit_once(')')
                .map(|x| x.1)
                .unwrap_or("")
                .split_whitespace()
                .map(|x| x.parse().unwrap_or(0.0))
                .collect();
            (f.get(11).copied().unwrap_or(0.0) + f.get(12).copied().unwrap_or(0.0)) / 100.0
        })
        .collect();
    drop(tx);
    let _ = worker.join();
    drop(lab);

    let mut totals: Vec<f64> = joins.iter().map(|j| j.total.as_secs_f64()).collect();
    let med = crate::datapath::median(&mut totals);
    let max_rss = rss.iter().map(|r| r.0).max().unwrap_or(0);
    let mut md = String::new();
    writeln!(md, "{MARK_BEGIN}")?;
    writeln!(
        md,
        "## Convergence: 3 real nodes and {} simulated ones\n",
        a.peers
    )?;
    writeln!(
        md,
        "A 3-node lab (as in the data-path section: nodes 1 and 2 on segment A, node 3 behind a router on segment B, etcd 3.4 in the store namespace on segment A) with weftd in vxlan mode on every node (lease TTL 10 s, default resync) and one routed pod per node. Then {} simulated nodes are written into etcd from this process: for each, one address allocated through the IPAM library for that node name (which claims a /26 block for it) and a node record (no lease; VXLAN, its own underlay address and VTEP MAC). A join is one more simulated node written the same way; its time runs from just before the allocation to the moment the route to its block (protocol 87, via weft.vx onlink) is in the kernel of every real node, polled with `ip route show exact` every 10 ms in each node namespace. Resident memory is VmRSS (and its peak VmHWM) of each weftd from /proc/<pid>/status.\n",
        a.peers
    )?;
    writeln!(
        md,
        "| join | until all 3 agents have the route | node-1 | node-2 | node-3 |"
    )?;
    writeln!(md, "| --- | ---: | ---: | ---: | ---: |")?;
    for (k, j) in joins.iter().enumerate() {
        let p: Vec<String> = j
            .per_node
            .iter()
            .map(|d| format!("{:.0} ms", d.as_secs_f64() * 1000.0))
            .collect();
        writeln!(
            md,
            "| {} | {:.0} ms | {} |",
            k + 1,
            j.total.as_secs_f64() * 1000.0,
            p.join(" | ")
        )?;
    }
    writeln!(md, "| **median** | **{:.0} ms** | | | |", med * 1000.0)?;
    writeln!(
        md,
        "\n| weftd | VmRSS, 3 nodes only | VmRSS with {} peers | VmHWM (peak) | routes (proto 87) | FDB entries on weft.vx | CPU time over the run |",
        a.peers + a.joins + 2
    )?;
    writeln!(md, "| --- | ---: | ---: | ---: | ---: | ---: | ---: |")?;
    for i in 0..3 {
        writeln!(
            md,
            "| node-{} | {:.1} MB | {:.1} MB | {:.1} MB | {} | {} | {:.2} s |",
            i + 1,
            rss_idle[i].0 as f64 / 1024.0,
            rss[i].0 as f64 / 1024.0,
            rss[i].1 as f64 / 1024.0,
            routes[i],
            fdb[i],
            cpu[i]
        )?;
    }
    let verdict = |ok: bool| if ok { "**met**" } else { "**missed**" };
    writeln!(
        md,
        "\nOther times: the 3 real nodes converged {:.2} s after their weftd started; writing the {} simulated nodes took {:.2} s, and every agent had all {} routes {:.2} s after the first write.\n",
        t3.as_secs_f64(),
        a.peers,
        written.as_secs_f64(),
        want,
        bulk.as_secs_f64()
    )?;
    writeln!(md, "Goals:\n")?;
    writeln!(
        md,
        "- a joining node's routes on every agent in under 2 s: median {:.0} ms — {}",
        med * 1000.0,
        verdict(med < 2.0)
    )?;
    writeln!(
        md,
        "- weftd resident memory under 30 MB with {} peers: at most {:.1} MB (VmRSS) — {}",
        a.peers,
        max_rss as f64 / 1024.0,
        verdict((max_rss as f64) < 30.0 * 1024.0)
    )?;
    let m = crate::machine();
    let cmd = if a.peers == 500 && a.joins == 3 {
        "sudo bench/run-cluster.sh convergence".to_string()
    } else {
        format!(
            "sudo bench/run-cluster.sh convergence --peers {} --joins {}",
            a.peers, a.joins
        )
    };
    writeln!(
        md,
        "\nMachine: kernel {}, {} CPUs, {}; 1-minute load average {load_start} at the start, {} at the end. Date: {}. Weft at commit {}{}; etcd {}.\n",
        m.kernel,
        m.nproc,
        m.cpu,
        crate::loadavg(),
        m.date,
        m.commit,
        if m.dirty {
            " (with uncommitted changes)"
        } else {
            ""
        },
        crate::cluster::etcd_version()
    )?;
    writeln!(
        md,
        "Reproduce (as root, from the workspace root): `{cmd}` (builds the plugins with `scripts/build-plugins.sh`, weftd and `weft-bench` in release mode, then runs `weft-bench convergence`)."
    )?;
    writeln!(md, "{MARK_END}")?;
    Ok(md)
}
