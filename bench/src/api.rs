//! `weft-bench api`: weft-api under many concurrent clients on loopback.
//!
//! A throwaway etcd gets a network with `--allocations` pods spread over `--nodes` nodes
//! (allocated through the IPAM library, as the plugin does, before timing); the release
//! `weft-api` binary serves it; `--clients` threads, each with its own keep-alive HTTP
//! connection and the read token, send a mix of lookups and lists for `--seconds` (after a
//! warm-up): 85% `GET /v1/ips/{a held address}` (200), 5% `GET /v1/ips/{a free address}` (404,
//! the expected answer), 5% `GET /v1/networks`, 3% `GET /v1/allocations?node=N` and 2%
//! `GET /v1/nodes/N` (both read every allocation of the network). Then the same clients send
//! only lookups of held addresses for up to 10 s, for comparison. An error is a failed request
//! or any other status. Writes the tables between the `bench:api` markers of BENCHMARKS.md.
use std::net::{IpAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use weft_ipam::{AllocateRequest, Ipam, NetworkSpec, PoolSpec};
use weft_store::etcd::{EtcdOptions, EtcdStore};

use crate::etcd::Etcd;

const MARK_BEGIN: &str = "<!-- bench:api -->";
const MARK_END: &str = "<!-- /bench:api -->";
const TOKEN: &str = "bench-read-token-0123456789abcdef";
const NETWORK: &str = "bench";

struct Args {
    clients: usize,
    seconds: u64,
    warmup: u64,
    allocations: usize,
    nodes: usize,
    api_bin: PathBuf,
    out: PathBuf,
    write: bool,
}

const USAGE: &str = "usage: weft-bench api [--clients N (200)] [--seconds S (30)] [--warmup S (3)]
  [--allocations N (10000)] [--nodes N (20)] [--api-bin PATH (target/release/weft-api)]
  [--out FILE (BENCHMARKS.md)] [--no-write]
Starts etcd on loopback, allocates N pods through the IPAM library, starts weft-api on it, and
drives it with CLIENTS concurrent keep-alive clients for S seconds (lookups and lists); writes
the table into FILE between the api markers.";

fn parse() -> Result<Args> {
    let mut a = Args {
        clients: 200,
        seconds: 30,
        warmup: 3,
        allocations: 10_000,
        nodes: 20,
        api_bin: crate::release_dir().join("weft-api"),
        out: crate::workspace_root().join("BENCHMARKS.md"),
        write: true,
    };
    crate::parse_flags(std::env::args().skip(2), USAGE, |arg, val| {
        match arg {
            "--clients" => a.clients = val()?.parse().context("--clients")?,
            "--seconds" => a.seconds = val()?.parse().context("--seconds")?,
            "--warmup" => a.warmup = val()?.parse().context("--warmup")?,
            "--allocations" => a.allocations = val()?.parse().context("--allocations")?,
            "--nodes" => a.nodes = val()?.parse().context("--nodes")?,
            "--api-bin" => a.api_bin = PathBuf::from(val()?),
            "--out" => a.out = PathBuf::from(val()?),
            "--no-write" => a.write = false,
            _ => return Ok(false),
        }
        Ok(true)
    })?;
    if a.clients == 0 || a.seconds == 0 || a.nodes == 0 || a.allocations < a.nodes {
        bail!("--clients, --seconds and --nodes are at least 1, --allocations at least --nodes");
    }
    if a.allocations > 60_000 {
        bail!("--allocations is at most 60000 (one /16 pool)");
    }
    Ok(a)
}

pub fn main() -> i32 {
    let a = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("weft-bench: {e:#}");
            return 2;
        }
    };
    match run(&a) {
        Ok(md) => {
            println!("{md}");
            if a.write {
                if let Err(e) = crate::write_section(&a.out, &md, MARK_BEGIN, MARK_END) {
                    eprintln!("weft-bench: {e:#}");
                    return 1;
                }
                eprintln!("weft-bench: wrote {}", a.out.display());
            }
            0
        }
        Err(e) => {
            eprintln!("weft-bench: {e:#}");
            1
        }
    }
}

fn spec() -> NetworkSpec {
    let mut s = NetworkSpec::new(
        NETWORK,
        vec![PoolSpec {
            subnet: "198.18.0.0/16".parse().expect("a CIDR"),
            range_start: None,
            range_end: None,
            exclude: vec![],
            gateway: None,
        }],
    );
    s.cooldown_seconds = 0;
    s
}

/// Allocates `n` pods over `nodes` nodes, 8 threads; their addresses.
fn seed(endpoint: &str, n: usize, nodes: usize) -> Result<Vec<IpAddr>> {
    let spec = spec();
    let store = EtcdStore::connect(&[endpoint.to_string()], EtcdOptions::default())?;
    Ipam::new(&store).ensure_network(&spec)?;
    let out = Arc::new(Mutex::new(Vec::with_capacity(n)));
    let threads = 8.min(n);
    let mut hs = Vec::new();
    for t in 0..threads {
        let (endpoint, spec, out) = (endpoint.to_string(), spec.clone(), out.clone());
        hs.push(std::thread::spawn(move || -> Result<()> {
            let store = EtcdStore::connect(&[endpoint], EtcdOptions::default())?;
            let ipam = Ipam::new(&store);
            for i in (t..n).step_by(threads) {
                if crate::STOP.load(Ordering::Relaxed) {
                    bail!("stopped");
                }
                let got = ipam.allocate(
                    &spec,
                    &AllocateRequest {
                        container_id: format!("{i:064x}"),
                        ifname: "eth0".into(),
                        node: format!("node-{}", i % nodes),
                        requested: vec![],
                        pod: Some(format!("bench/pod-{i}")),
                        fixed: None,
                        ..Default::default()
                    },
                )?;
                let ip = got.addresses[0].address.addr();
                out.lock().unwrap_or_else(|p| p.into_inner()).push(ip);
            }
            Ok(())
        }));
    }
    for h in hs {
        h.join()
            .map_err(|_| anyhow::anyhow!("a seeding thread panicked"))??;
    }
    let v = std::mem::take(&mut *out.lock().unwrap_or_else(|p| p.into_inner()));
    Ok(v)
}

struct Server {
    child: Child,
    url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_api(bin: &Path, endpoint: &str, dir: &Path) -> Result<Server> {
    if !bin.exists() {
        bail!(
            "{} not found: cargo build --release -p weft-api (or --api-bin)",
            bin.display()
        );
    }
    let tokens = dir.join("read-tokens");
    std::fs::write(&tokens, format!("{TOKEN}\n"))?;
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let log = std::fs::File::create(dir.join("weft-api.log"))?;
    let child = Command::new("setpriv")
        .args(["--pdeathsig", "KILL", "--"])
        .arg(bin)
        .args(["--etcd", endpoint, "--listen", &format!("127.0.0.1:{port}")])
        .arg("--read-token-file")
        .arg(&tokens)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()
        .with_context(|| format!("spawn {}", bin.display()))?;
    let s = Server {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    let agent = agent();
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(15) {
        if let Ok(r) = agent.get(format!("{}/readyz", s.url)).call()
            && r.status().as_u16() == 200
        {
            return Ok(s);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!(
        "weft-api did not become ready: {}",
        std::fs::read_to_string(dir.join("weft-api.log")).unwrap_or_default()
    )
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    LookupHeld,
    LookupFree,
    Networks,
    AllocationsOfNode,
    Node,
}

const OPS: [(Op, &str, &str); 5] = [
    (
        Op::LookupHeld,
        "lookup, held address",
        "GET /v1/ips/{ip} → 200",
    ),
    (
        Op::LookupFree,
        "lookup, free address",
        "GET /v1/ips/{ip} → 404",
    ),
    (Op::Networks, "list networks", "GET /v1/networks"),
    (
        Op::AllocationsOfNode,
        "list a node's allocations",
        "GET /v1/allocations?node=N",
    ),
    (Op::Node, "one node", "GET /v1/nodes/N"),
];

fn pick(r: u64) -> Op {
    match r % 100 {
        0..=84 => Op::LookupHeld,
        85..=89 => Op::LookupFree,
        90..=94 => Op::Networks,
        95..=97 => Op::AllocationsOfNode,
        _ => Op::Node,
    }
}

#[derive(Default)]
struct Samples {
    lat: Vec<Vec<Duration>>,
    errors: u64,
    first_error: Option<String>,
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i.min(v.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// Runs the clients for `seconds` (after the warm-up); their samples and the measured time.
fn drive(
    a: &Args,
    server: &Server,
    held: &Arc<Vec<IpAddr>>,
    free: &Arc<Vec<IpAddr>>,
    lookups_only: bool,
    seconds: u64,
) -> Result<(Samples, Duration)> {
    let measuring = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicBool::new(false));
    let requests = Arc::new(AtomicU64::new(0));
    let mut hs = Vec::new();
    for c in 0..a.clients {
        let (held, free, measuring, done, requests) = (
            held.clone(),
            free.clone(),
            measuring.clone(),
            done.clone(),
            requests.clone(),
        );
        let (url, nodes) = (server.url.clone(), a.nodes);
        hs.push(std::thread::spawn(move || {
            let agent = agent();
            let mut s = Samples {
                lat: vec![Vec::new(); OPS.len()],
                ..Default::default()
            };
            let mut rng = weft_rng(c as u64 + 1);
            while !done.load(Ordering::Relaxed) && !crate::STOP.load(Ordering::Relaxed) {
                let op = if lookups_only {
                    Op::LookupHeld
                } else {
                    pick(rng())
                };
                let r = rng() as usize;
                let (path, want) = match op {
                    Op::LookupHeld => (format!("/v1/ips/{}", held[r % held.len()]), 200),
                    Op::LookupFree => (format!("/v1/ips/{}", free[r % free.len()]), 404),
                    Op::Networks => ("/v1/networks".to_string(), 200),
                    Op::AllocationsOfNode => {
                        (format!("/v1/allocations?node=node-{}", r % nodes), 200)
                    }
                    Op::Node => (format!("/v1/nodes/node-{}", r % nodes), 200),
                };
                let t = Instant::now();
                let res = agent
                    .get(format!("{url}{path}"))
                    .header("Authorization", format!("Bearer {TOKEN}"))
                    .call();
                let outcome = match res {
                    Ok(mut resp) => {
                        let st = resp.status().as_u16();
                        let body = resp.body_mut().with_config().limit(1 << 30).read_to_vec();
                        match body {
                            Ok(_) if st == want => Ok(()),
                            Ok(b) => Err(format!(
                                "GET {path}: {st} {}",
                                String::from_utf8_lossy(&b[..b.len().min(200)])
                            )),
                            Err(e) => Err(format!("GET {path}: reading: {e}")),
                        }
                    }
                    Err(e) => Err(format!("GET {path}: {e}")),
                };
                let d = t.elapsed();
                if measuring.load(Ordering::Relaxed) && !done.load(Ordering::Relaxed) {
                    requests.fetch_add(1, Ordering::Relaxed);
                    let i = OPS.iter().position(|(o, _, _)| *o == op).unwrap_or(0);
                    s.lat[i].push(d);
                    if let Err(e) = outcome {
                        s.errors += 1;
                        s.first_error.get_or_insert(e);
                    }
                }
            }
            s
        }));
    }
    eprintln!(
        "weft-bench api: {} clients, {} s warm-up, {seconds} s measured{}",
        a.clients,
        a.warmup,
        if lookups_only { ", lookups only" } else { "" }
    );
    std::thread::sleep(Duration::from_secs(a.warmup));
    measuring.store(true, Ordering::Relaxed);
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(seconds) {
        if crate::STOP.load(Ordering::Relaxed) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    done.store(true, Ordering::Relaxed);
    let elapsed = t0.elapsed();
    let mut all = Samples {
        lat: vec![Vec::new(); OPS.len()],
        ..Default::default()
    };
    for h in hs {
        let s = h
            .join()
            .map_err(|_| anyhow::anyhow!("a client thread panicked"))?;
        for (i, l) in s.lat.into_iter().enumerate() {
            all.lat[i].extend(l);
        }
        all.errors += s.errors;
        if all.first_error.is_none() {
            all.first_error = s.first_error;
        }
    }
    if crate::STOP.load(Ordering::Relaxed) {
        bail!("stopped");
    }
    Ok((all, elapsed))
}

fn run(a: &Args) -> Result<String> {
    let tmp = tempfile::Builder::new()
        .prefix("weft-bench-api-")
        .tempdir()?;
    let etcd = Etcd::start(tmp.path())?;
    eprintln!(
        "weft-bench api: allocating {} pods on {} nodes",
        a.allocations, a.nodes
    );
    let t = Instant::now();
    let held = Arc::new(seed(&etcd.endpoint(), a.allocations, a.nodes)?);
    eprintln!(
        "weft-bench api: seeded in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let server = start_api(&a.api_bin, &etcd.endpoint(), tmp.path())?;
    // Free addresses: the pool's last /24 is never reached with at most 60000 pods.
    let free: Vec<IpAddr> = (1..250)
        .map(|i| format!("198.18.255.{i}").parse().expect("an address"))
        .collect();
    let free = Arc::new(free);
    let load_start = crate::loadavg();
    let (mut all, elapsed) = drive(a, &server, &held, &free, false, a.seconds)?;
    let lookups_seconds = a.seconds.min(10);
    let (only, only_elapsed) = drive(a, &server, &held, &free, true, lookups_seconds)?;
    let alive = server.child.id();
    drop(server);
    drop(etcd);
    let total: usize = all.lat.iter().map(Vec::len).sum();
    let mut every: Vec<Duration> = all.lat.iter().flatten().copied().collect();
    let secs = elapsed.as_secs_f64();
    let m = crate::machine();
    let mut md = String::new();
    use std::fmt::Write as _;
    let _ = writeln!(
        md,
        "{MARK_BEGIN}\n## weft-api under {} concurrent clients\n",
        a.clients
    );
    let _ = writeln!(
        md,
        "A real etcd on loopback holds one network (198.18.0.0/16, /26 blocks) with {} pods on {} nodes, \
allocated through the IPAM library before timing. The release `weft-api` (pid {alive}) serves it on loopback; \
{} client threads on the same machine, each with its own keep-alive connection and the read token, send \
requests back to back for {} s after a {} s warm-up. The mix: 85% lookups of held addresses, 5% lookups of \
free addresses (404 is the expected answer), 5% network lists, 3% a node's allocations and 2% one node \
(those two read every allocation of the network, {} records, from etcd on each request). An error is a \
failed request or any other status. Latency is the client's wall clock, request sent to body read; \
client, server and etcd share the machine's {} CPUs.\n",
        a.allocations, a.nodes, a.clients, a.seconds, a.warmup, a.allocations, m.nproc
    );
    let _ = writeln!(
        md,
        "| request | count | requests/s | p50 | p99 | max | errors |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for (i, (_, name, what)) in OPS.iter().enumerate() {
        let v = &mut all.lat[i];
        let n = v.len();
        let max = v.iter().max().copied().unwrap_or_default();
        let _ = writeln!(
            md,
            "| {name} (`{what}`) | {n} | {:.0} | {} | {} | {} | – |",
            n as f64 / secs,
            ms(pct(v, 0.5)),
            ms(pct(v, 0.99)),
            ms(max)
        );
    }
    let max = every.iter().max().copied().unwrap_or_default();
    let _ = writeln!(
        md,
        "| **all** | {total} | **{:.0}** | {} | **{}** | {} | **{}** |\n",
        total as f64 / secs,
        ms(pct(&mut every, 0.5)),
        ms(pct(&mut every, 0.99)),
        ms(max),
        all.errors
    );
    if let Some(e) = &all.first_error {
        let _ = writeln!(md, "First error: `{e}`\n");
    }
    // The same clients, lookups of held addresses only (no list competing for the machine).
    let mut lk: Vec<Duration> = only.lat.iter().flatten().copied().collect();
    let lmax = lk.iter().max().copied().unwrap_or_default();
    let _ = writeln!(
        md,
        "For comparison, the same {} clients sending only lookups of held addresses for {} s:\n\n\
| request | count | requests/s | p50 | p99 | max | errors |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: |\n\
| lookups only | {} | {:.0} | {} | {} | {} | {} |\n",
        a.clients,
        only_elapsed.as_secs(),
        lk.len(),
        lk.len() as f64 / only_elapsed.as_secs_f64(),
        ms(pct(&mut lk, 0.5)),
        ms(pct(&mut lk, 0.99)),
        ms(lmax),
        only.errors
    );
    if let Some(e) = &only.first_error {
        let _ = writeln!(md, "First error (lookups only): `{e}`\n");
    }
    let _ = writeln!(
        md,
        "Reproduce: `bench/run-api.sh` (or `cargo build --release -p weft-api -p weft-bench && target/release/weft-bench api --clients {} --seconds {}`). \
Machine: {} CPUs ({}), kernel {}, load average {load_start} at start; {}, commit {}{}.\n{MARK_END}",
        a.clients,
        a.seconds,
        m.nproc,
        m.cpu,
        m.kernel,
        m.date,
        m.commit,
        if m.dirty {
            " (uncommitted changes)"
        } else {
            ""
        }
    );
    Ok(md)
}

/// A small xorshift generator per client thread.
fn weft_rng(seed: u64) -> impl FnMut() -> u64 {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    move || {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}
