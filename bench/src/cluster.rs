//! What the cluster-IPAM benchmarks share: options, the `weft-ipam` config and call, the
//! store audit (duplicates, leftovers) and the section footer.
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Value, json};
use weft_ipam::{Allocation, BlockRecord, Ipam, NetworkSpec, PoolSpec, blocks_prefix};
use weft_store::Store;

/// Options every cluster-IPAM subcommand takes.
pub struct Common {
    pub weft_dir: PathBuf,
    pub ref_dir: PathBuf,
    pub out: PathBuf,
    pub write: bool,
    pub raw: Option<PathBuf>,
}

pub const COMMON_USAGE: &str = "[--weft-dir DIR ($CARGO_TARGET_DIR/release)] \
[--ref-dir DIR (/usr/lib/cni)] [--out FILE (BENCHMARKS.md)] [--no-write] [--raw CSV]";

impl Common {
    pub fn new() -> Common {
        Common {
            weft_dir: crate::release_dir(),
            ref_dir: PathBuf::from("/usr/lib/cni"),
            out: crate::workspace_root().join("BENCHMARKS.md"),
            write: true,
            raw: None,
        }
    }

    /// Takes `arg` (and its value from `val`) if it is a common option; false if not.
    pub fn take(&mut self, arg: &str, val: &mut dyn FnMut() -> Result<String>) -> Result<bool> {
        match arg {
            "--weft-dir" => self.weft_dir = val()?.into(),
            "--ref-dir" => self.ref_dir = val()?.into(),
            "--out" => self.out = val()?.into(),
            "--no-write" => self.write = false,
            "--raw" => self.raw = Some(val()?.into()),
            _ => return Ok(false),
        }
        Ok(true)
    }

    pub fn weft_ipam(&self) -> Result<PathBuf> {
        let bin = self.weft_dir.join("weft-ipam");
        if !bin.exists() {
            bail!(
                "{} not found: build it (scripts/build-plugins.sh, or bench/run-ipam.sh)",
                bin.display()
            );
        }
        Ok(bin)
    }
}

/// Parses `--name value` style arguments after the subcommand name.
pub fn parse(
    usage: &str,
    common: &mut Common,
    mut own: impl FnMut(&str, &mut dyn FnMut() -> Result<String>) -> Result<bool>,
) -> Result<()> {
    crate::parse_flags(std::env::args().skip(2), usage, |arg, val| {
        Ok(common.take(arg, val)? || own(arg, val)?)
    })
}

/// A temp dir for one run, removed on drop (also on error and Ctrl-C, which the run turns into
/// an error).
pub fn temp_dir() -> Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix("wb-ipam-")
        .tempdir()
        .context("create temp dir")
}

/// The network config a runtime hands an IPAM plugin (what `bridge` passes on to its IPAM):
/// `ipam` is the plugin's section.
pub fn net_conf(name: &str, ipam: Value) -> Value {
    json!({
        "cniVersion": "1.0.0", "name": name, "type": "bridge", "bridge": "wbignored0",
        "ipam": ipam,
    })
}

/// `weft-ipam`'s section; `etcd`: the store's endpoint, or None for the embedded store.
pub fn weft_ipam_section(subnet: &str, node: &str, data_dir: &Path, etcd: Option<&str>) -> Value {
    let mut v = json!({
        "type": "weft-ipam", "pools": [{"subnet": subnet}], "node": node, "dataDir": data_dir,
    });
    if let Some(ep) = etcd {
        v["store"] = json!({"type": "etcd", "endpoints": [ep]});
    }
    v
}

/// The spec `weft-ipam` derives from [`weft_ipam_section`] (defaults: /26 blocks, 30 s
/// cooldown, borrowing allowed).
pub fn spec(name: &str, subnet: &str) -> Result<NetworkSpec> {
    let pool: PoolSpec = serde_json::from_value(json!({ "subnet": subnet }))?;
    Ok(NetworkSpec::new(name, vec![pool]))
}

/// CNI_ARGS as kubelet (through containerd or CRI-O) sets them.
pub fn k8s_args(pod: &str, cid: &str) -> String {
    format!(
        "IgnoreUnknown=1;K8S_POD_NAMESPACE=bench;K8S_POD_NAME={pod};K8S_POD_INFRA_CONTAINER_ID={cid}"
    )
}

/// One ADD as a runtime does it; returns the time, the first address and the result (for the
/// DEL's prevResult).
pub fn plugin_add(
    bin: &Path,
    conf: &Value,
    cid: &str,
    cni_path: &str,
    args: &str,
) -> Result<(Duration, IpAddr, Value)> {
    let stdin = serde_json::to_vec(conf)?;
    let (dt, out) = crate::exec_plugin(
        bin,
        "ADD",
        cid,
        Path::new("/proc/self/ns/net"),
        cni_path,
        &stdin,
        Some(args),
    )?;
    let result: Value = serde_json::from_slice(&out)
        .with_context(|| format!("{} ADD printed no JSON result", bin.display()))?;
    let addr = result["ips"][0]["address"]
        .as_str()
        .and_then(|a| a.split('/').next())
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| anyhow!("{} ADD result has no address: {result}", bin.display()))?;
    Ok((dt, addr, result))
}

/// One DEL as libcni does it: the config with the ADD's result as prevResult.
pub fn plugin_del(
    bin: &Path,
    conf: &Value,
    prev: Option<&Value>,
    cid: &str,
    cni_path: &str,
    args: &str,
) -> Result<Duration> {
    let mut c = conf.clone();
    if let Some(p) = prev {
        c["prevResult"] = p.clone();
    }
    let stdin = serde_json::to_vec(&c)?;
    let (dt, _) = crate::exec_plugin(
        bin,
        "DEL",
        cid,
        Path::new("/proc/self/ns/net"),
        cni_path,
        &stdin,
        Some(args),
    )?;
    Ok(dt)
}

/// What the store says about one network, read in one consistent pass after the fact.
#[derive(Debug, Default)]
pub struct Audit {
    /// Handle records.
    pub handles: usize,
    /// Addresses in handle records, and how many distinct.
    pub handle_addrs: usize,
    pub distinct_handle_addrs: usize,
    /// Owner entries in block records (real attachments).
    pub block_entries: usize,
    /// Handle addresses whose block entry names another owner (or none), and block entries
    /// whose owner has no handle record holding that address.
    pub mismatches: usize,
    /// Blocks, and the nodes that claimed them.
    pub blocks: usize,
    pub nodes: usize,
}

impl Audit {
    pub fn read(store: &dyn Store, network: &str) -> Result<Audit> {
        let allocs: Vec<Allocation> = Ipam::new(store).allocations(network)?;
        let blocks: Vec<BlockRecord> = store
            .list(&blocks_prefix(network))?
            .into_iter()
            .map(|kv| serde_json::from_slice(&kv.value).context("decode block"))
            .collect::<Result<_>>()?;
        let mut owner_of: BTreeMap<IpAddr, &str> = BTreeMap::new();
        for b in &blocks {
            for (off, h) in &b.allocations {
                owner_of.insert(weft_ipam::ip_add(b.cidr.network(), *off as u128), h);
            }
        }
        let mut a = Audit {
            handles: allocs.len(),
            block_entries: owner_of.len(),
            blocks: blocks.len(),
            nodes: blocks
                .iter()
                .filter_map(|b| b.node.as_deref())
                .collect::<BTreeSet<_>>()
                .len(),
            ..Audit::default()
        };
        let mut seen: BTreeSet<IpAddr> = BTreeSet::new();
        let mut held: BTreeSet<(IpAddr, &str)> = BTreeSet::new();
        for al in &allocs {
            for net in &al.addresses {
                a.handle_addrs += 1;
                seen.insert(net.addr());
                held.insert((net.addr(), al.handle.as_str()));
                if owner_of.get(&net.addr()) != Some(&al.handle.as_str()) {
                    a.mismatches += 1;
                }
            }
        }
        a.distinct_handle_addrs = seen.len();
        a.mismatches += owner_of
            .iter()
            .filter(|(addr, h)| !held.contains(&(**addr, **h)))
            .count();
        Ok(a)
    }

    /// Every pod holds its own address and the store agrees: `pods` handles, `pods` distinct
    /// addresses, `pods` block entries, each naming the handle that holds it.
    pub fn all_held(&self, pods: usize) -> bool {
        self.handles == pods
            && self.handle_addrs == pods
            && self.distinct_handle_addrs == pods
            && self.block_entries == pods
            && self.mismatches == 0
    }

    pub fn empty(&self) -> bool {
        self.handles == 0 && self.block_entries == 0 && self.mismatches == 0
    }

    pub fn describe(&self) -> String {
        format!(
            "{} handle records holding {} addresses ({} distinct), {} block entries, {} mismatches, {} blocks claimed by {} nodes",
            self.handles,
            self.handle_addrs,
            self.distinct_handle_addrs,
            self.block_entries,
            self.mismatches,
            self.blocks,
            self.nodes
        )
    }
}

/// Addresses handed out more than once, from what the callers got back.
pub fn duplicates(got: &[IpAddr]) -> usize {
    got.len() - got.iter().collect::<BTreeSet<_>>().len()
}

pub fn etcd_version() -> String {
    let v = crate::sh("etcd", &["--version"]);
    v.lines()
        .next()
        .and_then(|l| l.split(':').nth(1))
        .map_or_else(|| "?".into(), |s| s.trim().to_string())
}

/// The footer: machine, load, date, commit, and the command.
pub fn footer(md: &mut String, load_start: &str, extra: &str, cmd: &str, how: &str) -> Result<()> {
    let m = crate::machine();
    writeln!(
        md,
        "\nMachine: kernel {}, {} CPUs, {}; 1-minute load average {load_start} at the start, {} at \
the end. Date: {}. Weft at commit {}{}; etcd {} (single member on 127.0.0.1, data dir on the \
temp dir's disk, default settings: fsync on){extra}.\n",
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
        etcd_version(),
    )?;
    writeln!(
        md,
        "Reproduce (from the workspace root; root is not needed): `{cmd}` ({how})."
    )?;
    Ok(())
}

/// Appends `rows` (already CSV lines) to the raw file, with a header.
pub fn write_raw(path: &Path, header: &str, rows: &str) -> Result<()> {
    std::fs::write(path, format!("{header}\n{rows}"))
        .with_context(|| format!("write {}", path.display()))
}

/// CPU time in seconds (USER_HZ is 100 on Linux): etcd's, this process's with its waited-for
/// children (the plugins), and the whole machine's busy time.
#[derive(Debug, Clone, Copy, Default)]
pub struct Cpu {
    pub etcd: f64,
    pub bench: f64,
    pub machine: f64,
}

fn proc_ticks(pid: &str, with_children: bool) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<f64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    // After the command: state is field 3, utime 14, stime 15, cutime 16, cstime 17.
    let own = f.get(11)? + f.get(12)?;
    Some(if with_children {
        own + f.get(13)? + f.get(14)?
    } else {
        own
    })
}

fn machine_ticks() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let f: Vec<f64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    // user nice system idle iowait irq softirq steal: busy is all but idle and iowait.
    Some(f.iter().take(8).sum::<f64>() - f.get(3)? - f.get(4)?)
}

impl Cpu {
    pub fn now(etcd_pid: Option<u32>) -> Cpu {
        let s = |t: Option<f64>| t.unwrap_or(f64::NAN) / 100.0;
        Cpu {
            etcd: s(etcd_pid.and_then(|p| proc_ticks(&p.to_string(), false))),
            bench: s(proc_ticks("self", true)),
            machine: s(machine_ticks()),
        }
    }

    pub fn since(&self, before: &Cpu) -> Cpu {
        Cpu {
            etcd: self.etcd - before.etcd,
            bench: self.bench - before.bench,
            machine: self.machine - before.machine,
        }
    }

    /// "etcd 1.2 s, bench 0.8 s, other 0.1 s of 2.0 s available (2 CPUs x 1.0 s)".
    pub fn describe(&self, wall: Duration) -> String {
        let ncpu = std::thread::available_parallelism().map_or(1, |n| n.get());
        let avail = ncpu as f64 * wall.as_secs_f64();
        format!(
            "etcd {:.2} s, this process and its plugins {:.2} s, everything else {:.2} s: {:.0}% of the {:.2} s the {ncpu} CPUs had",
            self.etcd,
            self.bench,
            (self.machine - self.etcd - self.bench).max(0.0),
            100.0 * self.machine / avail,
            avail
        )
    }
}
