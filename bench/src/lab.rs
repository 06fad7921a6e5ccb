//! A multi-node lab for the data-path and convergence benchmarks, entirely in network namespaces
//! this process makes (`wb<pid>-*`); adapted from crates/agent/tests/common (errors instead of
//! panics: the release profile aborts on panic, and every namespace and process must go on error).
//!
//! ```text
//!  segment A 198.51.100.0/24                       segment B 203.0.113.0/24
//!  [store: br0 .1, etcd]──[router .254 | .1]──[segment B: br1]──[node-3 .2]
//!     ├─[node-1 .2]
//!     └─[node-2 .3]
//! ```
//! Each node has its link to the segment as `uplink`. weftd runs per node (spawned through
//! `nsenter --net` and `setpriv --pdeathsig KILL`, killed by PID on drop); pods are namespaces
//! attached by the real `weft` plugin. Dropped in field order: weftd, pods, nodes, router, segment B, etcd,
//! store namespace.

use std::io::Write as _;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Value, json};

static SEQ: AtomicU32 = AtomicU32::new(0);

pub const SEG_A: &str = "198.51.100";
pub const SEG_B: &str = "203.0.113";

/// The prefix of every namespace this process makes.
pub fn prefix() -> String {
    format!("wb{}", std::process::id())
}

/// A network namespace deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Result<Netns> {
        let n = SEQ.fetch_add(1, Ordering::SeqCst);
        let name = format!("{}-{tag}{n}", prefix());
        run(&["ip", "netns", "add", &name])?;
        let ns = Netns { name };
        ns.ok(&["ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.name))
    }

    fn nsenter(&self) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.path().display())).arg("--");
        c
    }

    pub fn exec(&self, cmd: &[&str]) -> Result<Output> {
        self.nsenter()
            .args(cmd)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("nsenter {cmd:?}"))
    }

    pub fn ok(&self, cmd: &[&str]) -> Result<String> {
        let out = self.exec(cmd)?;
        if !out.status.success() {
            bail!(
                "in {}: {cmd:?} failed: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Starts `cmd` in this namespace in the background, killed with this process.
    pub fn spawn(&self, cmd: &[&str], stderr: Stdio) -> Result<Proc> {
        let child = self
            .nsenter()
            .args(["setpriv", "--pdeathsig", "KILL", "--"])
            .args(cmd)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("spawn {cmd:?} in {}", self.name))?;
        Ok(Proc { child })
    }

    /// Whether the agent's route (protocol 87) to `dst` exists.
    pub fn has_weft_route(&self, dst: &str) -> Result<bool> {
        let out = self.ok(&["ip", "-4", "route", "show", "exact", dst, "proto", "87"])?;
        Ok(!out.trim().is_empty())
    }

    /// Number of the agent's routes (protocol 87).
    pub fn weft_routes(&self) -> Result<usize> {
        let out = self.ok(&["ip", "-4", "route", "show", "proto", "87"])?;
        Ok(out.lines().filter(|l| !l.trim().is_empty()).count())
    }

    /// The MTU of `dev`.
    pub fn mtu(&self, dev: &str) -> Result<u64> {
        let v: Value = serde_json::from_str(&self.ok(&["ip", "-j", "link", "show", "dev", dev])?)?;
        v[0]["mtu"]
            .as_u64()
            .ok_or_else(|| anyhow!("no mtu for {dev} in {}", self.name))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stderr(Stdio::null())
            .status();
    }
}

/// A process this program started; SIGKILLed (by PID) and reaped on drop.
pub struct Proc {
    pub child: Child,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn run(cmd: &[&str]) -> Result<String> {
    let out = Command::new(cmd[0])
        .args(&cmd[1..])
        .output()
        .with_context(|| format!("{cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub struct Weftd {
    pub proc: Proc,
    pub log: PathBuf,
}

pub struct Node {
    pub name: String,
    pub ns: Netns,
}

/// The lab. Field order is drop order.
pub struct Lab {
    pub weftd: Vec<Option<Weftd>>,
    pub pods: Vec<Netns>,
    pub nodes: Vec<Node>,
    /// Kept for its drop, like `seg_b` (segment B's bridge).
    #[allow(dead_code)]
    pub router: Netns,
    #[allow(dead_code)]
    pub seg_b: Netns,
    /// Kept for its drop (killed by PID).
    #[allow(dead_code)]
    pub etcd: Proc,
    pub store: Netns,
    /// The tag it was made with ([`Lab::new`]), also its directory's and namespaces' mark.
    pub tag: String,
    pub dir: PathBuf,
    pub network: String,
    pub plugin: PathBuf,
    pub weftd_bin: PathBuf,
}

pub const ETCD_PORT: u16 = 23790;

impl Lab {
    /// Builds the underlay and etcd (no weftd, no pods yet); files go under `dir`.
    pub fn new(tag: &str, dir: &Path, bins: &Path) -> Result<Lab> {
        let dir = dir.join(tag);
        std::fs::create_dir_all(&dir)?;
        let plugin = bins.join("weft");
        let weftd_bin = bins.join("weftd");
        for b in [&plugin, &weftd_bin] {
            if !b.exists() {
                bail!(
                    "{} is missing: build it (scripts/build-plugins.sh; cargo build --release -p weft-agent)",
                    b.display()
                );
            }
        }
        let store = Netns::new(&format!("{tag}s"))?;
        store.ok(&["ip", "link", "add", "br0", "type", "bridge"])?;
        store.ok(&["ip", "addr", "add", &format!("{SEG_A}.1/24"), "dev", "br0"])?;
        store.ok(&["ip", "link", "set", "br0", "up"])?;
        let etcd = start_etcd(&store, &dir)?;
        let router = Netns::new(&format!("{tag}r"))?;
        router.ok(&["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
        store.ok(&[
            "ip",
            "link",
            "add",
            "rt",
            "type",
            "veth",
            "peer",
            "name",
            "ega",
            "netns",
            &router.name,
        ])?;
        store.ok(&["ip", "link", "set", "rt", "master", "br0", "up"])?;
        router.ok(&[
            "ip",
            "addr",
            "add",
            &format!("{SEG_A}.254/24"),
            "dev",
            "ega",
        ])?;
        router.ok(&["ip", "link", "set", "ega", "up"])?;
        // Segment B is a bridge in its own namespace with the router on a veth port, like segment
        // A (and like lab/weft-lab). Not a bridge inside the router: a Linux bridge device has
        // no `hw_enc_features`, so a router forwarding VXLAN out of a local bridge segments every
        // UDP-tunnel GSO packet in software and the receiving node gets 1450-byte datagrams
        // (measured: VXLAN through such a router 4.3 Gbit/s, through a veth port 13.4).
        let seg_b = Netns::new(&format!("{tag}b"))?;
        seg_b.ok(&["ip", "link", "add", "br1", "type", "bridge"])?;
        seg_b.ok(&["ip", "link", "set", "br1", "up"])?;
        seg_b.ok(&[
            "ip",
            "link",
            "add",
            "rb",
            "type",
            "veth",
            "peer",
            "name",
            "egb",
            "netns",
            &router.name,
        ])?;
        seg_b.ok(&["ip", "link", "set", "rb", "master", "br1", "up"])?;
        router.ok(&["ip", "addr", "add", &format!("{SEG_B}.1/24"), "dev", "egb"])?;
        router.ok(&["ip", "link", "set", "egb", "up"])?;
        store.ok(&[
            "ip",
            "route",
            "add",
            &format!("{SEG_B}.0/24"),
            "via",
            &format!("{SEG_A}.254"),
        ])?;
        let mut lab = Lab {
            weftd: Vec::new(),
            pods: Vec::new(),
            nodes: Vec::new(),
            router,
            seg_b,
            etcd,
            store,
            tag: tag.to_string(),
            dir,
            network: "cluster".into(),
            plugin,
            weftd_bin,
        };
        for (i, seg_host) in [
            format!("{SEG_A}.2"),
            format!("{SEG_A}.3"),
            format!("{SEG_B}.2"),
        ]
        .into_iter()
        .enumerate()
        {
            let ns = Netns::new(&format!("{tag}n"))?;
            let port = format!("n{i}");
            let (bridge_ns, br) = if i < 2 {
                (&lab.store, "br0")
            } else {
                (&lab.seg_b, "br1")
            };
            bridge_ns.ok(&[
                "ip", "link", "add", &port, "type", "veth", "peer", "name", "uplink", "netns",
                &ns.name,
            ])?;
            bridge_ns.ok(&["ip", "link", "set", &port, "master", br, "up"])?;
            ns.ok(&[
                "ip",
                "addr",
                "add",
                &format!("{seg_host}/24"),
                "dev",
                "uplink",
            ])?;
            ns.ok(&["ip", "link", "set", "uplink", "up"])?;
            let gw = if i < 2 {
                format!("{SEG_A}.254")
            } else {
                format!("{SEG_B}.1")
            };
            ns.ok(&["ip", "route", "add", "default", "via", &gw])?;
            lab.nodes.push(Node {
                name: format!("node-{}", i + 1),
                ns,
            });
            lab.weftd.push(None);
        }
        Ok(lab)
    }

    /// BIG TCP for IPv4 on every link of the underlay (the nodes' uplinks, both segment
    /// bridges and their ports, the router's links), as an operator sets it on a node's NIC with
    /// `ip link set DEV gso_ipv4_max_size N gro_ipv4_max_size N`; pods get it from the plugin's
    /// `bigTcp`. Call before weftd and pods.
    pub fn big_tcp(&self, size: u32) -> Result<()> {
        let nodes = self.nodes.iter().map(|n| &n.ns);
        for ns in [&self.store, &self.router, &self.seg_b]
            .into_iter()
            .chain(nodes)
        {
            let handle = weft_dataplane::Netns::open(&ns.path())?;
            let mut nl = weft_dataplane::Netlink::in_netns(&handle)?;
            for l in nl.links()? {
                if l.name != "lo" {
                    nl.set_gso_max_size(l.index, size)
                        .with_context(|| format!("{} in {}", l.name, ns.name))?;
                }
            }
        }
        Ok(())
    }

    /// The IPv4 GSO max size of `dev` in `ns`, as the kernel reports it.
    pub fn gso_ipv4(ns: &Netns, dev: &str) -> Result<u32> {
        let handle = weft_dataplane::Netns::open(&ns.path())?;
        let mut nl = weft_dataplane::Netlink::in_netns(&handle)?;
        let l = nl
            .link_by_name(dev)?
            .ok_or_else(|| anyhow!("no {dev} in {}", ns.name))?;
        Ok(l.gso_ipv4_max_size)
    }

    pub fn endpoint(&self) -> String {
        format!("http://{SEG_A}.1:{ETCD_PORT}")
    }

    /// Starts weftd on node `i` in `mode`.
    pub fn start_weftd(&mut self, i: usize, mode: &str) -> Result<()> {
        self.start_weftd_with(i, mode, &[])
    }

    /// Starts weftd on node `i` in `mode` with `extra` flags.
    pub fn start_weftd_with(&mut self, i: usize, mode: &str, extra: &[&str]) -> Result<()> {
        let node = &self.nodes[i];
        let log = self.dir.join(format!("weftd-{}.log", node.name));
        let f = std::fs::File::create(&log)?;
        let bin = self.weftd_bin.display().to_string();
        let ep = self.endpoint();
        let mut args = vec![
            bin.as_str(),
            "--node",
            &node.name,
            "--underlay-interface",
            "uplink",
            "--etcd",
            &ep,
            "--network",
            &self.network,
            "--mode",
            mode,
            "--vni",
            "4096",
            "--lease-ttl",
            "10",
        ];
        args.extend_from_slice(extra);
        let proc = node.ns.spawn(&args, Stdio::from(f))?;
        self.weftd[i] = Some(Weftd { proc, log });
        Ok(())
    }

    pub fn weftd_pid(&self, i: usize) -> Option<u32> {
        self.weftd[i].as_ref().map(|w| w.proc.pid())
    }

    pub fn logs(&self) -> String {
        let mut s = String::new();
        for (n, w) in self.nodes.iter().zip(&self.weftd) {
            if let Some(w) = w {
                let text = std::fs::read_to_string(&w.log).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(15).collect();
                s.push_str(&format!("--- weftd on {} (last lines):\n", n.name));
                for l in tail.into_iter().rev() {
                    s.push_str(l);
                    s.push('\n');
                }
            }
        }
        s
    }

    /// Attaches a pod to node `i` with the `weft` plugin and `conf` (its `name`, `type`, `cniVersion`
    /// and the IPAM's node/dataDir/store are filled in); its index in `pods` and first IPv4
    /// address.
    pub fn attach(&mut self, i: usize, id: &str, mut conf: Value) -> Result<(usize, String)> {
        let pod = Netns::new("p")?;
        let node = &self.nodes[i];
        let net = conf["name"].as_str().unwrap_or(&self.network).to_string();
        let data = self.dir.join(format!("data-{}-{net}", node.name));
        conf["cniVersion"] = json!("1.0.0");
        conf["name"] = json!(net);
        conf["type"] = json!("weft");
        let ipam = conf["ipam"]
            .as_object_mut()
            .ok_or_else(|| anyhow!("no ipam"))?;
        ipam.insert("node".into(), json!(node.name));
        ipam.insert("dataDir".into(), json!(data));
        ipam.insert(
            "store".into(),
            json!({"type": "etcd", "endpoints": [self.endpoint()], "timeoutSeconds": 5}),
        );
        let mut child = Command::new("nsenter")
            .arg(format!("--net={}", node.ns.path().display()))
            .arg("--")
            .arg(&self.plugin)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("CNI_COMMAND", "ADD")
            .env("CNI_CONTAINERID", id)
            .env("CNI_IFNAME", "eth0")
            .env("CNI_NETNS", pod.path())
            .env("CNI_PATH", "/usr/lib/cni")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("spawn the weft plugin")?;
        child
            .stdin
            .take()
            .ok_or_else(|| anyhow!("no stdin"))?
            .write_all(conf.to_string().as_bytes())?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "ADD {id} on {}: {} {}",
                node.name,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let r: Value = serde_json::from_slice(&out.stdout)?;
        let ip = r["ips"][0]["address"]
            .as_str()
            .and_then(|a| a.split('/').next())
            .ok_or_else(|| anyhow!("ADD {id}: no address in {r}"))?
            .to_string();
        self.pods.push(pod);
        Ok((self.pods.len() - 1, ip))
    }
}

/// etcd inside `ns`, listening on the namespace's segment-A address; waits until it answers.
fn start_etcd(ns: &Netns, dir: &Path) -> Result<Proc> {
    let bin = std::env::var("WEFT_ETCD").unwrap_or_else(|_| "/usr/bin/etcd".into());
    let client = format!("http://{SEG_A}.1:{ETCD_PORT}");
    let peer = format!("http://{SEG_A}.1:{}", ETCD_PORT + 10);
    let log = std::fs::File::create(dir.join("etcd.log"))?;
    let p = ns.spawn(
        &[
            &bin,
            "--name=wb",
            &format!("--data-dir={}", dir.join("etcd").display()),
            &format!("--listen-client-urls={client}"),
            &format!("--advertise-client-urls={client}"),
            &format!("--listen-peer-urls={peer}"),
            &format!("--initial-advertise-peer-urls={peer}"),
            &format!("--initial-cluster=wb={peer}"),
            "--initial-cluster-state=new",
            "--log-level=warn",
        ],
        Stdio::from(log),
    )?;
    let nsh = weft_dataplane::Netns::open(&ns.path()).context("open the store netns")?;
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(15) {
        crate::check_stop()?;
        let up = nsh
            .run_in(|| {
                TcpStream::connect_timeout(
                    &format!("{SEG_A}.1:{ETCD_PORT}").parse().unwrap(),
                    Duration::from_millis(200),
                )
                .is_ok()
            })
            .context("enter the store netns")?;
        if up {
            // Healthy shortly after it listens.
            std::thread::sleep(Duration::from_millis(300));
            return Ok(p);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!(
        "etcd did not listen within 15 s: {}",
        std::fs::read_to_string(dir.join("etcd.log")).unwrap_or_default()
    )
}

/// Polls `f` every `every` until it holds or `timeout` passes; how long it took.
pub fn wait_until(
    timeout: Duration,
    every: Duration,
    mut f: impl FnMut() -> Result<bool>,
) -> Result<Option<Duration>> {
    let t = Instant::now();
    loop {
        crate::check_stop()?;
        if f()? {
            return Ok(Some(t.elapsed()));
        }
        if t.elapsed() > timeout {
            return Ok(None);
        }
        std::thread::sleep(every);
    }
}

/// Deletes any `wb<pid>-*` namespace left (the sweep after everything was dropped).
pub fn sweep() {
    let mine: Vec<String> = std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with(&format!("{}-", prefix())))
        .collect();
    for n in mine {
        let _ = Command::new("ip").args(["netns", "del", &n]).status();
    }
}

/// The frame of a lab benchmark: needs root, runs `run` in a temp dir (with the load average at
/// the start), sweeps every namespace and process of the lab whatever happened, prints the
/// Markdown section and writes it into `out` between `marks` (when given).
pub fn bench_main(
    name: &str,
    out: Option<&Path>,
    marks: (&str, &str),
    run: impl FnOnce(&Path, &str) -> Result<String>,
) -> Result<()> {
    if self::run(&["id", "-u"])?.trim() != "0" {
        bail!("weft-bench {name} needs root (it creates network namespaces)");
    }
    let tmp = tempfile::Builder::new()
        .prefix(&format!("weft-bench-{name}-"))
        .tempdir()?;
    let load_start = crate::loadavg();
    let r = run(tmp.path(), &load_start);
    sweep();
    let md = r?;
    println!("{md}");
    if let Some(out) = out {
        crate::write_section(out, &md, marks.0, marks.1)?;
        eprintln!("weft-bench: wrote {}", out.display());
    }
    Ok(())
}
