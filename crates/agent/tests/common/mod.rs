//! A multi-node lab for weftd, entirely in network namespaces this process makes:
//!
//! ```text
//!  segment A 198.51.100.0/24                       segment B 203.0.113.0/24
//!  [store: br0 .1, etcd]──[router .254 | 203.0.113.1 br1]──[node-3 .2]
//!     ├─[node-1 .2]
//!     └─[node-2 .3]
//! ```
//! Each node runs `weftd` (spawned by PID through nsenter, SIGKILLed on drop and if the test
//! process dies) and has one pod attached by the real `weft` plugin in `routed` mode with its
//! IPAM on the lab's etcd. The plugin binary is the weft-plugin crate's: build it first with
//! `cargo build -p weft-plugin --bin weft` into the same target dir (it is looked up next to
//! this test's target dir, `target/debug/weft`, or at `$WEFT_PLUGIN`).
//!
//! Dropped in order: weftd processes, pods, nodes, router, etcd, the store namespace, the temp
//! dir. Nothing is done in the root namespace except creating and deleting namespaces.
#![allow(dead_code)]

use std::io::Write;
use std::net::IpAddr;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use serde_json::Value;
// Not every test binary uses every one.
#[allow(unused_imports)]
pub use weft_dataplane::testing::{TestNetns, require_root, run};

/// A network namespace (`wa<tag>-<pid>-<n>`, [`TestNetns`]) deleted on drop, with the lab's
/// probes.
pub struct Netns(TestNetns);

impl Netns {
    pub fn new(tag: &str) -> Netns {
        Netns(TestNetns::new("wa", tag))
    }

    /// One ping a second for up to `tries` seconds.
    pub fn ping(&self, addr: &str, tries: u32) -> bool {
        (0..tries).any(|_| {
            self.exec(&["ping", "-c", "1", "-W", "1", addr])
                .status
                .success()
        })
    }

    /// The agent's route to `dst` (protocol 87), if any: (gateway, dev, flags).
    pub fn weft_route(&self, dst: &IpNet) -> Option<(String, String, Vec<String>)> {
        let fam = if dst.addr().is_ipv4() { "-4" } else { "-6" };
        let v = self.ip_json(&[
            fam,
            "route",
            "show",
            "exact",
            &dst.to_string(),
            "proto",
            "87",
        ]);
        let r = v.as_array()?.first()?;
        Some((
            r["gateway"].as_str()?.to_string(),
            r["dev"].as_str()?.to_string(),
            r["flags"]
                .as_array()
                .map(|f| {
                    f.iter()
                        .filter_map(|x| x.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default(),
        ))
    }

    /// FDB entries of `dev` as (mac, dst).
    pub fn fdb(&self, dev: &str) -> Vec<(String, String)> {
        let out = self.ok(&["bridge", "-j", "fdb", "show", "dev", dev]);
        let v: Value = if out.trim().is_empty() {
            Value::Array(vec![])
        } else {
            serde_json::from_str(&out).unwrap()
        };
        v.as_array()
            .unwrap()
            .iter()
            .filter_map(|e| {
                Some((
                    e["mac"].as_str()?.to_string(),
                    e["dst"].as_str()?.to_string(),
                ))
            })
            .collect()
    }

    /// Permanent neighbours of `dev` as (ip, mac).
    pub fn neighbours(&self, dev: &str) -> Vec<(String, String)> {
        self.ip_json(&["neigh", "show", "dev", dev, "nud", "permanent"])
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|e| {
                Some((
                    e["dst"].as_str()?.to_string(),
                    e["lladdr"].as_str()?.to_string(),
                ))
            })
            .collect()
    }

    /// `ping -i 0.2` for `count` packets, in the background; see [`Pinger::received`].
    pub fn ping_background(&self, addr: &str, count: u32) -> Pinger {
        let child = self
            .command_killed_with_test("ping")
            .args(["-n", "-i", "0.2", "-W", "1", "-c", &count.to_string(), addr])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ping");
        Pinger { child: Some(child) }
    }

    /// Adds a table `ip t` (or `ip6 t`) counting incoming ICMP echo requests from `saddr`.
    pub fn count_echo_from(&self, saddr: &str) {
        let (fam, sel, icmp) = if saddr.contains(':') {
            ("ip6", "ip6 saddr", "icmpv6 type echo-request")
        } else {
            ("ip", "ip saddr", "icmp type echo-request")
        };
        let script = format!(
            "add table {fam} t\nadd chain {fam} t input {{ type filter hook input priority 0; }}\n\
             add rule {fam} t input {sel} {saddr} {icmp} counter comment \"from {saddr}\"\n"
        );
        let mut c = self
            .command("nft")
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        c.stdin
            .take()
            .unwrap()
            .write_all(script.as_bytes())
            .unwrap();
        assert!(c.wait().unwrap().success(), "nft in {}", self.name);
    }

    /// Packets counted by [`Netns::count_echo_from`] for `saddr`.
    pub fn echo_count(&self, saddr: &str) -> u64 {
        let out = self.ok(&["nft", "-j", "list", "ruleset"]);
        let v: Value = serde_json::from_str(&out).unwrap();
        let want = format!("from {saddr}");
        v["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|i| i["rule"]["comment"] == want.as_str())
            .flat_map(|i| i["rule"]["expr"].as_array().cloned().unwrap_or_default())
            .filter_map(|e| e["counter"]["packets"].as_u64())
            .sum()
    }

    /// Received packets of `dev` (0 when it does not exist).
    pub fn rx_packets(&self, dev: &str) -> u64 {
        let out = self.exec(&["ip", "-j", "-s", "link", "show", "dev", dev]);
        if !out.status.success() {
            return 0;
        }
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        v[0]["stats64"]["rx"]["packets"].as_u64().unwrap_or(0)
    }
}

impl Deref for Netns {
    type Target = TestNetns;
    fn deref(&self) -> &TestNetns {
        &self.0
    }
}

/// Polls `f` every 100 ms until it holds or `timeout` passes; how long it took.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let t = Instant::now();
    loop {
        if f() {
            return Some(t.elapsed());
        }
        if t.elapsed() > timeout {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Polls `f` every 5 ms until it holds or `timeout` passes; how long it took (for latencies
/// well under the 100 ms of [`wait_until`]).
pub fn wait_fast(timeout: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let t = Instant::now();
    loop {
        if f() {
            return Some(t.elapsed());
        }
        if t.elapsed() > timeout {
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The `weft` plugin binary (see the module docs).
pub fn plugin_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("WEFT_PLUGIN") {
        return PathBuf::from(p);
    }
    // <target>/debug/deps/<this test> -> <target>/debug/weft
    let exe = std::env::current_exe().expect("current_exe");
    let p = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("weft"))
        .expect("the test binary's target dir");
    assert!(
        p.exists(),
        "{} is missing: run `cargo build -p weft-plugin --bin weft` (same CARGO_TARGET_DIR) \
         before these tests, or set WEFT_PLUGIN",
        p.display()
    );
    p
}

/// A background ping; killed on drop.
pub struct Pinger {
    child: Option<Child>,
}

impl Pinger {
    /// Waits for the end; (transmitted, received) and the whole output.
    pub fn received(mut self) -> (u32, u32, String) {
        let out = self.child.take().unwrap().wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let line = text
            .lines()
            .find(|l| l.contains("transmitted"))
            .unwrap_or_default()
            .to_string();
        let num = |word: &str| -> u32 {
            line.split(',')
                .find(|p| p.contains(word))
                .and_then(|p| p.split_whitespace().next())
                .and_then(|n| n.parse().ok())
                .unwrap_or(0)
        };
        (num("transmitted"), num("received"), text)
    }
}

impl Drop for Pinger {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A running weftd; SIGKILLed and reaped on drop.
pub struct Weftd {
    pub child: Child,
    pub log: PathBuf,
}

impl Weftd {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// SIGTERM, then waits (up to 10 s) for a clean exit; true when it exited 0.
    pub fn terminate(&mut self) -> bool {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid()),
            nix::sys::signal::Signal::SIGTERM,
        );
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(st)) = self.child.try_wait() {
                return st.success();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Weftd {
    fn drop(&mut self) {
        self.kill();
    }
}

pub struct Node {
    pub name: String,
    pub ns: Netns,
    pub underlay_ip: String,
    pub weftd: Option<Weftd>,
    /// The pod (a namespace) and its address.
    pub pod: Option<(Netns, String)>,
}

/// The lab: see the module docs. Field order is drop order.
pub struct Lab {
    /// Extra pods (see [`Lab::add_pod_with`]).
    pub extra_pods: Vec<Netns>,
    pub nodes: Vec<Node>,
    /// Stands for the outside: behind the router, no route to any pod.
    pub world: Netns,
    pub router: Netns,
    pub etcd: weft_store::testing::EtcdServer,
    pub store: Netns,
    pub dir: tempfile::TempDir,
    pub network: String,
    /// The network's pools as the pods' IPAM config gives them (set before the first pod).
    pub pools: Vec<String>,
    /// Keys added to every pod's network config (set before the first pod), e.g. fastPath.
    pub plugin_extra: serde_json::Map<String, Value>,
}

pub const SEG_A: &str = "198.51.100";
pub const SEG_B: &str = "203.0.113";
pub const POOL: &str = "198.18.0.0/24";
pub const POOL6: &str = "fd00:18::/64";
/// The world namespace's address (outside every pod subnet), behind the router.
pub const WORLD: &str = "198.19.255.1";
/// IPv6 underlay prefix of segment A (added by [`Lab::add_v6_underlay`]).
pub const SEG_A6: &str = "fd00:51";

impl Lab {
    /// Builds the underlay and etcd (no weftd, no pods yet).
    pub fn new(tag: &str) -> Lab {
        require_root();
        let dir = tempfile::Builder::new()
            .prefix("weft-agent-lab-")
            .tempdir()
            .unwrap();
        let store = Netns::new(&format!("{tag}s"));
        store.ok(&["ip", "link", "add", "br0", "type", "bridge"]);
        store.ok(&["ip", "addr", "add", &format!("{SEG_A}.1/24"), "dev", "br0"]);
        store.ok(&["ip", "link", "set", "br0", "up"]);
        let router = Netns::new(&format!("{tag}r"));
        router.ok(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        // Router leg on segment A.
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
        ]);
        store.ok(&["ip", "link", "set", "rt", "master", "br0", "up"]);
        router.ok(&[
            "ip",
            "addr",
            "add",
            &format!("{SEG_A}.254/24"),
            "dev",
            "ega",
        ]);
        router.ok(&["ip", "link", "set", "ega", "up"]);
        // Segment B is a bridge in the router namespace.
        router.ok(&["ip", "link", "add", "br1", "type", "bridge"]);
        router.ok(&["ip", "addr", "add", &format!("{SEG_B}.1/24"), "dev", "br1"]);
        router.ok(&["ip", "link", "set", "br1", "up"]);
        store.ok(&[
            "ip",
            "route",
            "add",
            &format!("{SEG_B}.0/24"),
            "via",
            &format!("{SEG_A}.254"),
        ]);
        let mut nodes = Vec::new();
        for (i, (seg_host, bridge_ns)) in [
            (format!("{SEG_A}.2"), &store),
            (format!("{SEG_A}.3"), &store),
            (format!("{SEG_B}.2"), &router),
        ]
        .into_iter()
        .enumerate()
        {
            let ns = Netns::new(&format!("{tag}n"));
            let port = format!("n{i}");
            let br = if i < 2 { "br0" } else { "br1" };
            bridge_ns.ok(&[
                "ip", "link", "add", &port, "type", "veth", "peer", "name", "uplink", "netns",
                &ns.name,
            ]);
            bridge_ns.ok(&["ip", "link", "set", &port, "master", br, "up"]);
            ns.ok(&[
                "ip",
                "addr",
                "add",
                &format!("{seg_host}/24"),
                "dev",
                "uplink",
            ]);
            ns.ok(&["ip", "link", "set", "uplink", "up"]);
            let gw = if i < 2 {
                format!("{SEG_A}.254")
            } else {
                format!("{SEG_B}.1")
            };
            ns.ok(&["ip", "route", "add", "default", "via", &gw]);
            nodes.push(Node {
                name: format!("node-{}", i + 1),
                ns,
                underlay_ip: seg_host,
                weftd: None,
                pod: None,
            });
        }
        // The world: 198.19.255.0/24 behind the router; routes back to the underlays only.
        let world = Netns::new(&format!("{tag}w"));
        router.ok(&[
            "ip",
            "link",
            "add",
            "wo",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &world.name,
        ]);
        router.ok(&["ip", "addr", "add", "198.19.255.254/24", "dev", "wo"]);
        router.ok(&["ip", "link", "set", "wo", "up"]);
        world.ok(&["ip", "addr", "add", &format!("{WORLD}/24"), "dev", "eth0"]);
        world.ok(&["ip", "link", "set", "eth0", "up"]);
        for seg in [SEG_A, SEG_B] {
            world.ok(&[
                "ip",
                "route",
                "add",
                &format!("{seg}.0/24"),
                "via",
                "198.19.255.254",
            ]);
        }
        let ip: IpAddr = format!("{SEG_A}.1").parse().unwrap();
        let etcd = weft_store::testing::EtcdServer::start_in(&store.path(), ip);
        Lab {
            extra_pods: Vec::new(),
            nodes,
            world,
            router,
            etcd,
            store,
            dir,
            network: "cluster".into(),
            pools: vec![POOL.into()],
            plugin_extra: serde_json::Map::new(),
        }
    }

    /// Gives nodes 1 and 2 (segment A) IPv6 underlay addresses `fd00:51::2`, `::3` (no DAD).
    pub fn add_v6_underlay(&self) {
        for (i, host) in [(0, 2), (1, 3)] {
            self.nodes[i].ns.ok(&[
                "ip",
                "addr",
                "add",
                &format!("{SEG_A6}::{host}/64"),
                "dev",
                "uplink",
                "nodad",
            ]);
        }
    }

    /// Starts weftd on node `i` in `mode`.
    pub fn start_weftd(&mut self, i: usize, mode: &str) {
        self.start_weftd_with(i, mode, &[]);
    }

    /// Starts weftd on node `i` in `mode` with extra flags (`--resync-millis` replaces the
    /// lab's 500, `--lease-ttl` the lab's 2).
    pub fn start_weftd_with(&mut self, i: usize, mode: &str, extra: &[&str]) {
        let log = self
            .dir
            .path()
            .join(format!("weftd-{}-{mode}.log", self.nodes[i].name));
        let f = std::fs::File::create(&log).unwrap();
        let node = &self.nodes[i];
        let child = node
            .ns
            .command_killed_with_test(env!("CARGO_BIN_EXE_weftd"))
            .args(["--node", &node.name, "--underlay-interface", "uplink"])
            .args(["--etcd", &self.etcd.endpoint(), "--network", &self.network])
            .args(["--mode", mode, "--vni", "4096"])
            .args(if extra.contains(&"--lease-ttl") {
                &[][..]
            } else {
                &["--lease-ttl", "2"][..]
            })
            .args(if extra.contains(&"--resync-millis") {
                &[][..]
            } else {
                &["--resync-millis", "500"][..]
            })
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(f))
            .spawn()
            .unwrap_or_else(|e| panic!("spawn weftd on {}: {e}", node.name));
        self.nodes[i].weftd = Some(Weftd { child, log });
    }

    /// Attaches one pod to node `i` with the plugin in routed mode; returns its IPv4 address.
    pub fn add_pod(&mut self, i: usize) -> String {
        let id = format!("pod-{}", self.nodes[i].name);
        let (pod, ips) = self.attach(i, &id, None);
        let ip = ips[0].clone();
        self.nodes[i].pod = Some((pod, ip.clone()));
        ip
    }

    /// Attaches another pod to node `i` (container ID `id`, `CNI_ARGS` `args`); its index in
    /// `extra_pods` and its addresses.
    pub fn add_pod_with(&mut self, i: usize, id: &str, args: Option<&str>) -> (usize, Vec<String>) {
        let (pod, ips) = self.attach(i, id, args);
        self.extra_pods.push(pod);
        (self.extra_pods.len() - 1, ips)
    }

    /// The addresses of node `i`'s main pod, as the plugin's result listed them.
    pub fn pod_ips(&self, i: usize) -> Vec<String> {
        let pod = self.pod(i);
        let v = pod.ip_json(&["addr", "show", "dev", "eth0"]);
        v[0]["addr_info"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["scope"] == "global")
            .filter_map(|a| a["local"].as_str().map(str::to_string))
            .collect()
    }

    /// The `weft` plugin started as a runtime runs it, inside node `i`'s namespace: verb `cmd`
    /// for container `id` in the pod namespace at `netns` (CNI_IFNAME when `ifname` is given,
    /// CNI_ARGS when `args` is), `conf` written to its stdin and closed; stdout and stderr piped.
    #[allow(clippy::too_many_arguments)] // the runtime's inputs, one parameter each
    pub fn spawn_plugin(
        &self,
        i: usize,
        cmd: &str,
        id: &str,
        netns: &Path,
        ifname: Option<&str>,
        args: Option<&str>,
        conf: &str,
    ) -> Child {
        let mut c = self.nodes[i].ns.command(plugin_bin());
        c.env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("CNI_COMMAND", cmd)
            .env("CNI_CONTAINERID", id)
            .env("CNI_NETNS", netns)
            .env("CNI_PATH", "/usr/lib/cni")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(n) = ifname {
            c.env("CNI_IFNAME", n);
        }
        if let Some(a) = args {
            c.env("CNI_ARGS", a);
        }
        let mut child = c.spawn().expect("spawn the weft plugin");
        // A plugin killed early may have closed its stdin already: not an error here.
        let _ = child.stdin.take().unwrap().write_all(conf.as_bytes());
        child
    }

    fn attach(&self, i: usize, id: &str, args: Option<&str>) -> (Netns, Vec<String>) {
        let pod = Netns::new("p");
        let node = &self.nodes[i];
        let data = self.dir.path().join(format!("data-{}", node.name));
        let pools: Vec<Value> = self
            .pools
            .iter()
            .map(|p| serde_json::json!({"subnet": p}))
            .collect();
        let mut conf = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": self.network,
            "type": "weft",
            "mode": "routed",
            "mtu": 1400,
            "ipam": {
                "pools": pools,
                "cooldownSeconds": 0,
                "node": node.name,
                "dataDir": data,
                "store": {"type": "etcd", "endpoints": [self.etcd.endpoint()], "timeoutSeconds": 2},
            },
        });
        if let Some(obj) = conf.as_object_mut() {
            obj.extend(self.plugin_extra.clone());
        }
        let out = self
            .spawn_plugin(
                i,
                "ADD",
                id,
                &pod.path(),
                Some("eth0"),
                args,
                &conf.to_string(),
            )
            .wait_with_output()
            .unwrap();
        assert!(
            out.status.success(),
            "ADD on {}: {} {}",
            node.name,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let r: Value = serde_json::from_slice(&out.stdout).unwrap();
        let ips = r["ips"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| {
                x["address"]
                    .as_str()
                    .unwrap()
                    .split('/')
                    .next()
                    .unwrap()
                    .to_string()
            })
            .collect();
        (pod, ips)
    }

    pub fn pod_ip(&self, i: usize) -> &str {
        &self.nodes[i].pod.as_ref().expect("a pod").1
    }

    pub fn pod(&self, i: usize) -> &Netns {
        &self.nodes[i].pod.as_ref().expect("a pod").0
    }

    /// The /26 block holding node `i`'s pod.
    pub fn block(&self, i: usize) -> IpNet {
        let ip: IpAddr = self.pod_ip(i).parse().unwrap();
        IpNet::new(ip, 26).unwrap().trunc()
    }

    /// Waits until every node with a running weftd has a route to every other such node's
    /// block (all pods attached first).
    pub fn wait_converged(&self, timeout: Duration) -> Duration {
        let running: Vec<usize> = (0..self.nodes.len())
            .filter(|i| self.nodes[*i].weftd.is_some() && self.nodes[*i].pod.is_some())
            .collect();
        wait_until(timeout, || {
            running.iter().all(|&i| {
                running
                    .iter()
                    .filter(|&&j| j != i)
                    .all(|&j| self.nodes[i].ns.weft_route(&self.block(j)).is_some())
            })
        })
        .unwrap_or_else(|| panic!("not converged after {timeout:?}\n{}", self.logs()))
    }

    pub fn logs(&self) -> String {
        let mut s = String::new();
        for n in &self.nodes {
            if let Some(w) = &n.weftd {
                s.push_str(&format!("--- weftd on {}:\n{}\n", n.name, w.log_text()));
            }
        }
        s
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
        for n in &mut self.nodes {
            n.weftd.take();
            n.pod.take();
        }
        self.extra_pods.clear();
    }
}

impl Lab {
    /// Keys under `prefix` in etcd, read from a thread that enters the store namespace (the
    /// only place etcd is reachable from).
    pub fn etcd_keys(&self, prefix: &str) -> Vec<String> {
        self.etcd_list(prefix).into_iter().map(|(k, _)| k).collect()
    }

    /// Keys and values under `prefix` in etcd (see [`Lab::etcd_keys`]).
    pub fn etcd_list(&self, prefix: &str) -> Vec<(String, Vec<u8>)> {
        let (path, ep, prefix) = (self.store.path(), self.etcd.endpoint(), prefix.to_string());
        std::thread::spawn(move || {
            let ns = weft_dataplane::Netns::open(&path).expect("open the store netns");
            ns.run_in(|| {
                use weft_store::Store;
                let store = weft_store::etcd::EtcdStore::connect(
                    &[ep],
                    weft_store::etcd::EtcdOptions::default(),
                )
                .expect("etcd client");
                store
                    .list(&prefix)
                    .unwrap_or_else(|e| panic!("listing {prefix} in etcd: {e}"))
                    .into_iter()
                    .map(|kv| (kv.key, kv.value))
                    .collect::<Vec<_>>()
            })
            .expect("entering the store netns")
        })
        .join()
        .expect("etcd reader thread panicked")
    }
}

impl Netns {
    /// Links called `name` (empty or one).
    pub fn links_named(&self, name: &str) -> Vec<String> {
        self.ip_json(&["link", "show"])
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|l| l["ifname"].as_str().map(str::to_string))
            .filter(|n| n == name)
            .collect()
    }
}
