//! `weft-bench`: CNI ADD and DEL latency of Weft against the reference plugins, side by side.
//!
//! One run, all variants alternating pod by pod (the order rotates every round), so load drift
//! hits every variant alike. Each plugin call is timed the way a runtime sees it: wall clock
//! around fork/exec with the CNI_* variables and the config on stdin, reading stdout, waiting.
//!
//! Everything happens inside network namespaces this program creates (`wb<pid>-*`): it enters
//! its node namespace once on the main thread, so every plugin it spawns runs there; the pod
//! namespaces are all created before the timed part and removed at the end, also on error and
//! on SIGINT/SIGTERM/SIGHUP.
//!
//! Subcommands for the cluster IPAM, against a throwaway etcd on loopback (no namespaces):
//! `weft-bench ipam-latency` ([`ipam_latency`]) and `weft-bench churn` ([`churn`]).
//!
//! Subcommands on a 3-node lab of namespaces running weftd (root; bench/run-cluster.sh):
//! `weft-bench datapath` ([`datapath`]) and `weft-bench convergence` ([`convergence`]).

mod api;
mod check;
mod churn;
mod cluster;
mod convergence;
mod counting;
mod datapath;
mod etcd;
mod ipam_latency;
mod lab;
mod report_cost;

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use nix::sched::{CloneFlags, setns};
use nix::sys::signal::{SigSet, Signal};
use serde_json::{Value, json};
use weft_dataplane::{Netlink, Netns, VethSpec};

const MARK_BEGIN: &str = "<!-- bench:cni-latency -->";
const MARK_END: &str = "<!-- /bench:cni-latency -->";
const IFNAME: &str = "eth0";

static STOP: AtomicBool = AtomicBool::new(false);

struct Args {
    pods: usize,
    warmup: usize,
    weft_dir: PathBuf,
    ref_dir: PathBuf,
    out: PathBuf,
    write: bool,
    raw: Option<PathBuf>,
}

const USAGE: &str = "usage: weft-bench [--pods N (200)] [--warmup N (5)] [--weft-dir DIR] \
[--ref-dir DIR (/usr/lib/cni)] [--out FILE (BENCHMARKS.md)] [--no-write] [--raw CSV]
Runs as root. Measures CNI ADD/DEL latency of Weft and the reference plugins, alternating
variants pod by pod, and writes the table into FILE between the cni-latency markers.
Cluster IPAM (etcd on loopback, no namespaces): `weft-bench ipam-latency --help`,
`weft-bench churn --help` (or bench/run-ipam.sh).";

/// `$CARGO_TARGET_DIR/release`, or the workspace's `target/release`: where the binaries under test are.
fn release_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
        .join("release")
}

/// Walks `--name value` arguments: `-h`/`--help` prints `usage` and exits 0; every other
/// argument goes to `own` with a getter for its value, and one `own` does not take (false) is an
/// error naming it. Every subcommand parses its options through this.
fn parse_flags(
    args: impl IntoIterator<Item = String>,
    usage: &str,
    mut own: impl FnMut(&str, &mut dyn FnMut() -> Result<String>) -> Result<bool>,
) -> Result<()> {
    let mut it = args.into_iter();
    while let Some(arg) = it.next() {
        if arg == "-h" || arg == "--help" {
            println!("{usage}");
            std::process::exit(0);
        }
        let mut val = || {
            it.next()
                .ok_or_else(|| anyhow!("{arg} needs a value\n{usage}"))
        };
        if !own(&arg, &mut val)? {
            bail!("unknown argument {arg:?}\n{usage}");
        }
    }
    Ok(())
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        pods: 200,
        warmup: 5,
        weft_dir: release_dir(),
        ref_dir: PathBuf::from("/usr/lib/cni"),
        out: workspace_root().join("BENCHMARKS.md"),
        write: true,
        raw: None,
    };
    parse_flags(std::env::args().skip(1), USAGE, |arg, val| {
        match arg {
            "--pods" => a.pods = val()?.parse().context("--pods")?,
            "--warmup" => a.warmup = val()?.parse().context("--warmup")?,
            "--weft-dir" => a.weft_dir = val()?.into(),
            "--ref-dir" => a.ref_dir = val()?.into(),
            "--out" => a.out = val()?.into(),
            "--no-write" => a.write = false,
            "--raw" => a.raw = Some(val()?.into()),
            _ => return Ok(false),
        }
        Ok(true)
    })?;
    if a.pods == 0 {
        bail!("--pods must be at least 1");
    }
    Ok(a)
}

/// What one variant does per pod.
enum Kind {
    /// A CNI plugin binary and its network config.
    Plugin {
        bin: PathBuf,
        cni_path: String,
        conf: Value,
    },
    /// The kernel's floor: create a veth pair with one end in the pod (ADD column) and delete it
    /// (DEL column), in process over one netlink socket in the node namespace.
    Veth,
    /// The process floor: `weft VERSION` (exec, no work) in both columns.
    Exec { bin: PathBuf },
}

struct Variant {
    key: &'static str,
    label: &'static str,
    kind: Kind,
    add: Vec<Duration>,
    del: Vec<Duration>,
}

/// Everything the run created, removed by [`Session::cleanup`].
struct Session {
    prefix: String,
    tmp: Option<tempfile::TempDir>,
    root_ns: Netns,
}

impl Session {
    fn ns_name(&self, what: &str) -> String {
        format!("{}-{what}", self.prefix)
    }

    fn ns_path(&self, what: &str) -> PathBuf {
        Path::new("/run/netns").join(self.ns_name(what))
    }

    /// Back to the original namespace, remove every `<prefix>-*` namespace and the temp dir.
    fn cleanup(&mut self) {
        if let Err(e) = setns(self.root_ns.as_fd(), CloneFlags::CLONE_NEWNET) {
            eprintln!("weft-bench: cannot return to the original netns: {e}");
        }
        let mine: Vec<String> = std::fs::read_dir("/run/netns")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n.starts_with(&format!("{}-", self.prefix)))
            .collect();
        if !mine.is_empty() {
            let script: String = mine.iter().map(|n| format!("netns del {n}\n")).collect();
            if let Err(e) = ip_batch(&script, true) {
                eprintln!("weft-bench: cleanup: {e:#}");
            }
        }
        if let Some(t) = self.tmp.take() {
            let p = t.path().to_path_buf();
            if let Err(e) = t.close() {
                eprintln!("weft-bench: cannot remove {}: {e}", p.display());
            }
        }
    }
}

/// Runs `ip -batch -` with `script` on stdin (in the calling thread's netns).
fn ip_batch(script: &str, force: bool) -> Result<()> {
    let mut cmd = Command::new("ip");
    if force {
        cmd.arg("-force");
    }
    let mut child = cmd
        .args(["-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("start ip")?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(script.as_bytes()).context("write to ip")?;
    }
    let out = child.wait_with_output().context("wait for ip")?;
    if !out.status.success() {
        bail!(
            "ip -batch failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// One plugin execution as a runtime does it; returns the wall time and stdout.
fn exec_plugin(
    bin: &Path,
    command: &str,
    container_id: &str,
    netns: &Path,
    cni_path: &str,
    stdin: &[u8],
    cni_args: Option<&str>,
) -> Result<(Duration, Vec<u8>)> {
    let t0 = Instant::now();
    let mut cmd = Command::new(bin);
    cmd.env_clear();
    if let Some(args) = cni_args {
        cmd.env("CNI_ARGS", args);
    }
    let mut child = cmd
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", container_id)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", IFNAME)
        .env("CNI_PATH", cni_path)
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("start {}", bin.display()))?;
    if let Some(mut s) = child.stdin.take() {
        s.write_all(stdin)
            .with_context(|| format!("write config to {}", bin.display()))?;
    }
    let out = child
        .wait_with_output()
        .with_context(|| format!("wait for {}", bin.display()))?;
    let dt = t0.elapsed();
    if !out.status.success() {
        bail!(
            "{} {command} {container_id} failed ({}): {} {}",
            bin.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok((dt, out.stdout))
}

fn variants(a: &Args, tmp: &Path) -> Vec<Variant> {
    let weft = a.weft_dir.join("weft");
    let weft_path = format!("{}:{}", a.weft_dir.display(), a.ref_dir.display());
    let ref_path = a.ref_dir.display().to_string();
    let weft_data = tmp.join("weft");
    let hl_data = tmp.join("host-local");
    let weft_conf = |name: &str, mode: &str, bridge: &str, masq: bool, subnet: &str| {
        json!({
            "cniVersion": "1.0.0", "name": name, "type": "weft", "mode": mode, "bridge": bridge,
            "masquerade": masq,
            "ipam": {"pools": [{"subnet": subnet}], "dataDir": weft_data, "node": "wb-node"}
        })
    };
    let ref_conf = |name: &str, bridge: &str, masq: bool, subnet: &str| {
        json!({
            "cniVersion": "1.0.0", "name": name, "type": "bridge", "bridge": bridge,
            "isGateway": true, "ipMasq": masq,
            "ipam": {"type": "host-local", "subnet": subnet, "dataDir": hl_data}
        })
    };
    let plugin = |bin: PathBuf, cni_path: &str, conf: Value| Kind::Plugin {
        bin,
        cni_path: cni_path.to_string(),
        conf,
    };
    let v = |key, label, kind| Variant {
        key,
        label,
        kind,
        add: Vec::new(),
        del: Vec::new(),
    };
    vec![
        v(
            "a",
            "(a) Weft bridge",
            plugin(
                weft.clone(),
                &weft_path,
                weft_conf("wb-a", "bridge", "wbw0", false, "198.18.100.0/22"),
            ),
        ),
        v(
            "b",
            "(b) reference bridge + host-local",
            plugin(
                a.ref_dir.join("bridge"),
                &ref_path,
                ref_conf("wb-b", "wbr0", false, "198.18.104.0/22"),
            ),
        ),
        v(
            "c",
            "(c) Weft bridge, masquerade",
            plugin(
                weft.clone(),
                &weft_path,
                weft_conf("wb-c", "bridge", "wbw1", true, "198.18.108.0/22"),
            ),
        ),
        v(
            "d",
            "(d) reference bridge + host-local, ipMasq",
            plugin(
                a.ref_dir.join("bridge"),
                &ref_path,
                ref_conf("wb-d", "wbr1", true, "198.18.112.0/22"),
            ),
        ),
        v(
            "e",
            "(e) Weft routed (default: the BPF fast path; each pod here is its network's only one, so every ADD verifies the program anew)",
            plugin(
                weft.clone(),
                &weft_path,
                weft_conf("wb-e", "routed", "wbw2", false, "198.18.116.0/22"),
            ),
        ),
        v(
            "f",
            "(f) Weft routed, `\"fastPath\": false`",
            plugin(weft, &weft_path, {
                let mut c = weft_conf("wb-f", "routed", "wbw3", false, "198.18.120.0/22");
                c["fastPath"] = serde_json::json!(false);
                c
            }),
        ),
        v("v", "veth pair create / delete (netlink)", Kind::Veth),
        v(
            "x",
            "exec of `weft VERSION` (no work)",
            Kind::Exec {
                bin: a.weft_dir.join("weft"),
            },
        ),
    ]
}

/// ADD then DEL of one pod; returns (add, del).
fn run_pod(v: &Variant, node: &mut Netlink, pod: &Path, cid: &str) -> Result<(Duration, Duration)> {
    match &v.kind {
        Kind::Plugin {
            bin,
            cni_path,
            conf,
        } => {
            let stdin = serde_json::to_vec(conf)?;
            let (add, out) = exec_plugin(bin, "ADD", cid, pod, cni_path, &stdin, None)?;
            let result: Value = serde_json::from_slice(&out)
                .with_context(|| format!("{} ADD printed no JSON result", v.label))?;
            // As libcni does: DEL gets the cached ADD result as prevResult.
            let mut del_conf = conf.clone();
            del_conf["prevResult"] = result;
            let stdin = serde_json::to_vec(&del_conf)?;
            let (del, _) = exec_plugin(bin, "DEL", cid, pod, cni_path, &stdin, None)?;
            Ok((add, del))
        }
        Kind::Veth => {
            let pod_ns = Netns::open(pod)?;
            let spec = VethSpec {
                host_name: "wbveth0",
                peer_name: IFNAME,
                peer_ns: &pod_ns,
                mtu: None,
                master: None,
                host_mac: None,
                peer_mac: None,
                gso_max_size: None,
            };
            let t0 = Instant::now();
            node.create_veth(&spec)?;
            let add = t0.elapsed();
            let link = node
                .link_by_name("wbveth0")?
                .ok_or_else(|| anyhow!("veth wbveth0 vanished"))?;
            let t0 = Instant::now();
            node.delete_link(link.index)?;
            Ok((add, t0.elapsed()))
        }
        Kind::Exec { bin } => {
            let stdin = br#"{"cniVersion": "1.0.0"}"#;
            let (first, _) = exec_plugin(bin, "VERSION", cid, pod, "", stdin, None)?;
            let (second, _) = exec_plugin(bin, "VERSION", cid, pod, "", stdin, None)?;
            Ok((first, second))
        }
    }
}

fn pct(samples: &[Duration], p: f64) -> Duration {
    let mut s = samples.to_vec();
    s.sort();
    let rank = ((p * s.len() as f64).ceil() as usize).clamp(1, s.len());
    s[rank - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn check_stop() -> Result<()> {
    if STOP.load(Ordering::Relaxed) {
        bail!("interrupted");
    }
    Ok(())
}

fn run(a: &Args, s: &Session) -> Result<String> {
    let tmp = s
        .tmp
        .as_ref()
        .map(|t| t.path().to_path_buf())
        .ok_or_else(|| anyhow!("no temp dir"))?;
    let mut vs = variants(a, &tmp);
    for v in &vs {
        if let Kind::Plugin { bin, .. } = &v.kind
            && !bin.exists()
        {
            bail!(
                "{} not found: build it (cargo build --release -p weft-plugin) or install containernetworking-plugins",
                bin.display()
            );
        }
    }
    let rounds = a.warmup + a.pods;

    // Namespaces: the node, then every pod of the run, before anything is timed.
    eprintln!(
        "weft-bench: creating {} namespaces ({}-*)",
        1 + rounds * vs.len(),
        s.prefix
    );
    let mut script = format!("netns add {}\n", s.ns_name("node"));
    for r in 0..rounds {
        for v in &vs {
            writeln!(script, "netns add {}", s.ns_name(&format!("{}{r}", v.key)))?;
        }
    }
    ip_batch(&script, false)?;
    // Let the kernel finish the work that new namespaces start (lo, addrconf) before timing.
    std::thread::sleep(Duration::from_secs(2));
    check_stop()?;

    // Enter the node namespace on this (the only spawning) thread: every child inherits it.
    let node_ns = Netns::open(&s.ns_path("node"))?;
    setns(node_ns.as_fd(), CloneFlags::CLONE_NEWNET).context("enter the node netns")?;
    let mut node = Netlink::new()?;
    if let Some(lo) = node.link_by_name("lo")? {
        node.set_up(lo.index)?;
    }

    let load_start = loadavg();
    let n = vs.len();
    for r in 0..rounds {
        for k in 0..n {
            check_stop()?;
            let v = &mut vs[(r + k) % n];
            let pod = s.ns_path(&format!("{}{r}", v.key));
            let cid = format!("wbench-{}-{r:05}", v.key);
            let (add, del) = run_pod(v, &mut node, &pod, &cid)
                .with_context(|| format!("{}, pod {r}", v.label))?;
            if r >= a.warmup {
                v.add.push(add);
                v.del.push(del);
            }
        }
        if (r + 1) % 25 == 0 {
            eprintln!("weft-bench: {}/{rounds} rounds", r + 1);
        }
    }
    if let Some(path) = &a.raw {
        let mut csv = String::from("variant,sample,add_us,del_us\n");
        for v in &vs {
            for (i, (ad, de)) in v.add.iter().zip(&v.del).enumerate() {
                writeln!(csv, "{},{i},{},{}", v.key, ad.as_micros(), de.as_micros())?;
            }
        }
        std::fs::write(path, csv).with_context(|| format!("write {}", path.display()))?;
    }
    report(a, &vs, &load_start)
}

/// The 1-minute load average, as /proc/loadavg says.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

fn sh(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "?".into())
}

/// The machine, the date and the commit, for a section's footer.
struct Machine {
    kernel: String,
    nproc: usize,
    cpu: String,
    date: String,
    commit: String,
    dirty: bool,
}

fn machine() -> Machine {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_else(|| "?".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".into());
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    let date = sh("date", &["-u", "+%Y-%m-%d %H:%M UTC"]);
    let root = workspace_root();
    let root_s = root.display().to_string();
    let commit = sh("git", &["-C", &root_s, "rev-parse", "--short", "HEAD"]);
    let dirty = !sh("git", &["-C", &root_s, "status", "--porcelain"]).is_empty();
    Machine {
        kernel,
        nproc,
        cpu,
        date,
        commit,
        dirty,
    }
}

fn report(a: &Args, vs: &[Variant], load_start: &str) -> Result<String> {
    let get = |k: &str| vs.iter().find(|v| v.key == k).unwrap();
    let p50a = |k: &str| ms(pct(&get(k).add, 0.5));
    let p50d = |k: &str| ms(pct(&get(k).del, 0.5));
    let floor = p50d("v");
    let ref_of = |k: &str| match k {
        "a" | "e" | "f" => Some("b"),
        "c" => Some("d"),
        _ => None,
    };

    let mut t = String::new();
    writeln!(
        t,
        "| variant | ADD p50 | ADD p95 | DEL p50 | DEL p95 | ADD p50 vs reference | DEL p50 vs reference | DEL p50 vs veth delete |"
    )?;
    writeln!(
        t,
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    )?;
    for v in vs {
        let (a50, d50) = (p50a(v.key), p50d(v.key));
        let (vs_ref_a, vs_ref_d) = match ref_of(v.key) {
            Some(r) => (
                format!("{:.2}x (of {})", a50 / p50a(r), r),
                format!("{:.2}x", d50 / p50d(r)),
            ),
            None => ("–".into(), "–".into()),
        };
        let vs_floor = match v.kind {
            Kind::Exec { .. } => "–".to_string(),
            _ => format!("{:.2}x", d50 / floor),
        };
        writeln!(
            t,
            "| {} | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms | {} | {} | {} |",
            v.label,
            a50,
            ms(pct(&v.add, 0.95)),
            d50,
            ms(pct(&v.del, 0.95)),
            vs_ref_a,
            vs_ref_d,
            vs_floor
        )?;
    }

    let verdict = |ok: bool| if ok { "**met**" } else { "**missed**" };
    let mut goals = String::new();
    for (w, r, what) in [
        ("a", "b", "without masquerade"),
        ("c", "d", "with masquerade"),
    ] {
        let ratio = p50a(w) / p50a(r);
        writeln!(
            goals,
            "- ADD p50 at most 1/4 of the reference's, {what}: {:.2}x ({w} vs {r}) — {}",
            ratio,
            verdict(ratio <= 0.25)
        )?;
    }
    for w in ["a", "c", "e"] {
        let ratio = p50d(w) / floor;
        writeln!(
            goals,
            "- DEL p50 at most 1.5x the bare veth delete, ({w}): {:.2}x — {}",
            ratio,
            verdict(ratio <= 1.5)
        )?;
    }

    let Machine {
        kernel,
        nproc,
        cpu,
        date,
        commit,
        dirty,
    } = machine();
    let refver = sh(
        "dpkg-query",
        &["-W", "-f", "${Version}", "containernetworking-plugins"],
    );
    let cmd = if a.pods == 200 && a.warmup == 5 {
        "sudo bench/run.sh".to_string()
    } else {
        format!("sudo bench/run.sh --pods {} --warmup {}", a.pods, a.warmup)
    };

    let mut md = String::new();
    writeln!(md, "{MARK_BEGIN}")?;
    writeln!(md, "## Single node: CNI ADD and DEL latency\n")?;
    writeln!(
        md,
        "{} pods per variant ({} warm-up pods each not counted), one pod of every variant per round, \
the order rotating each round, all in one run. Each time is wall clock around one plugin execution \
as a runtime does it (fork/exec with CNI_* variables and the config on stdin, read stdout, wait), \
from inside a node network namespace; pod namespaces exist before timing starts. DEL gets the ADD \
result as prevResult. IPv4 pools, cniVersion 1.0.0, interface eth0. Weft uses its embedded IPAM \
(one data dir in a temp dir for all Weft networks, default 30 s cooldown, /22 pools); the reference \
is `bridge` (isGateway) with `host-local` (data dir in a temp dir). The veth row is the kernel's \
floor: one RTM_NEWLINK creating a veth pair with its peer in the pod (ADD column) and one \
RTM_DELLINK deleting it (DEL column), in process over netlink, no exec. The exec row is the \
process floor: `weft VERSION` run the same way (it does no work), timed twice per pod.\n",
        a.pods, a.warmup
    )?;
    md.push_str(&t);
    writeln!(md, "\nGoals (p50):\n")?;
    md.push_str(&goals);
    writeln!(
        md,
        "\nMachine: kernel {kernel}, {nproc} CPUs, {cpu}; 1-minute load average {load_start} at the \
start, {} at the end. Date: {date}. Weft at commit {commit}{}; reference plugins: Debian \
containernetworking-plugins {refver}.\n",
        loadavg(),
        if dirty {
            " (with uncommitted changes)"
        } else {
            ""
        }
    )?;
    writeln!(
        md,
        "Reproduce (as root, from the workspace root): `{cmd}` \
(builds the plugins as installed with `scripts/build-plugins.sh` (release, static) and `weft-bench`, then runs \
`target/release/weft-bench --pods {} --warmup {}`).",
        a.pods, a.warmup
    )?;
    writeln!(md, "{MARK_END}")?;
    Ok(md)
}

/// Replaces the text between `begin` and `end` in `path` with `section` (which holds both
/// markers), or appends it when the markers are not there yet.
fn write_section(path: &Path, section: &str, begin: &str, end: &str) -> Result<()> {
    let old = match std::fs::read_to_string(path) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::from(
            "# Benchmarks\n\nProduced by the programs under `bench/`; each section says how to \
reproduce it. Compare ratios within one section, not absolute times across runs.\n\n",
        ),
        Err(e) => return Err(e).with_context(|| format!("read {}", path.display())),
    };
    let new = match (old.find(begin), old.find(end)) {
        (Some(b), Some(e)) if e > b => format!(
            "{}{}{}",
            &old[..b],
            section.trim_end(),
            &old[e + end.len()..]
        ),
        _ => format!("{}\n\n{section}", old.trim_end()),
    };
    let new = format!("{}\n", new.trim_end());
    std::fs::write(path, new).with_context(|| format!("write {}", path.display()))
}

/// Signals go to a waiting thread that sets STOP; the main loop (and the churn workers) check
/// it between steps. Children get an empty signal mask from std's spawn, so Ctrl-C still
/// reaches a plugin. Call before starting any other thread: threads inherit the mask.
fn catch_signals() {
    let mut sigs = SigSet::empty();
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        sigs.add(s);
    }
    if let Err(e) = sigs.thread_block() {
        eprintln!("weft-bench: cannot block signals: {e}");
        std::process::exit(1);
    }
    std::thread::spawn(move || {
        if let Ok(sig) = sigs.wait() {
            eprintln!("weft-bench: {sig}, stopping and cleaning up");
            STOP.store(true, Ordering::Relaxed);
        }
    });
}

/// Runs a lab subcommand with the arguments after its name; its exit code.
fn cli(f: fn(&[String]) -> Result<()>) -> i32 {
    let args: Vec<String> = std::env::args().skip(2).collect();
    match f(&args) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("weft-bench: {e:#}");
            1
        }
    }
}

fn main() {
    // Subcommands: the cluster-IPAM benchmarks (no namespaces, no root needed).
    let sub = std::env::args().nth(1);
    let sub_main: Option<fn() -> i32> = match sub.as_deref() {
        Some("ipam-latency") => Some(ipam_latency::main),
        Some("api") => Some(api::main),
        Some("churn") => Some(churn::main),
        Some("check") => Some(check::main),
        Some("datapath") => Some(|| cli(datapath::main)),
        Some("convergence") => Some(|| cli(convergence::main)),
        Some("report") => Some(|| cli(report_cost::main)),
        _ => None,
    };
    if let Some(f) = sub_main {
        catch_signals();
        // Each subcommand has dropped (killed, removed) everything it made when it returns.
        std::process::exit(f());
    }
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("weft-bench: {e:#}");
            std::process::exit(2);
        }
    };
    // /proc/self belongs to the effective user.
    let euid = std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m));
    if euid.ok() != Some(0) {
        eprintln!("weft-bench: must run as root (it creates network namespaces)");
        std::process::exit(2);
    }
    catch_signals();

    let mut session = match (|| -> Result<Session> {
        Ok(Session {
            prefix: format!("wb{}", std::process::id()),
            tmp: Some(
                tempfile::Builder::new()
                    .prefix("wb-bench-")
                    .tempdir()
                    .context("create temp dir")?,
            ),
            root_ns: Netns::current()?,
        })
    })() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("weft-bench: {e:#}");
            std::process::exit(1);
        }
    };
    let outcome = run(&args, &session);
    eprintln!("weft-bench: cleaning up");
    session.cleanup();
    match outcome {
        Ok(md) => {
            println!("{md}");
            if args.write {
                if let Err(e) = write_section(&args.out, &md, MARK_BEGIN, MARK_END) {
                    eprintln!("weft-bench: {e:#}");
                    std::process::exit(1);
                }
                eprintln!("weft-bench: wrote {}", args.out.display());
            }
        }
        Err(e) => {
            eprintln!("weft-bench: {e:#}");
            std::process::exit(1);
        }
    }
}
