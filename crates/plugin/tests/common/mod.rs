//! Test harness: nodes and pods as network namespaces, and the plugin driven exactly as a
//! runtime drives it (CNI_* environment, config on stdin), from inside the node's namespace.
#![allow(dead_code)]

use std::io::Write;
use std::ops::Deref;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};

use serde_json::Value;
pub use weft_dataplane::testing::{TestNetns, run};

/// A network namespace (`wt<tag>-<pid>-<n>`, [`TestNetns`]) that exists for the life of this
/// value (deleted on drop, also on panic).
pub struct Netns(TestNetns);

impl Netns {
    /// `tag` says what it is for; the name is unique per process and call, and starts with "wt".
    pub fn new(tag: &str) -> Netns {
        Netns(TestNetns::new("wt", tag))
    }

    /// True when one ping from this namespace to `addr` is answered.
    pub fn ping(&self, addr: &str) -> bool {
        self.exec(&["ping", "-c", "1", "-W", "2", addr])
            .status
            .success()
    }
}

impl Deref for Netns {
    type Target = TestNetns;
    fn deref(&self) -> &TestNetns {
        &self.0
    }
}

/// Where the reference plugins live (Debian's containernetworking-plugins).
pub const REFERENCE_PLUGINS: &str = "/usr/lib/cni";

/// The directory holding this crate's built binaries (weft, weft-ipam).
pub fn bin_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_weft"))
        .parent()
        .unwrap()
        .to_path_buf()
}

pub fn cni_path() -> String {
    format!("{}:{}", bin_dir().display(), REFERENCE_PLUGINS)
}

/// A host: a namespace where the plugin runs, with its own embedded store directory.
pub struct Node {
    pub ns: Netns,
    pub data_dir: tempfile::TempDir,
}

impl Node {
    pub fn new(tag: &str) -> Node {
        Node {
            ns: Netns::new(tag),
            data_dir: tempfile::tempdir().unwrap(),
        }
    }
    pub fn data_dir(&self) -> String {
        self.data_dir.path().display().to_string()
    }
}

/// What a plugin run printed.
#[derive(Debug)]
pub struct PluginOutput {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl PluginOutput {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}): {:?} stderr {:?}",
                self.stdout, self.stderr
            )
        })
    }
    /// Asserts success and returns the parsed stdout (Null when empty).
    pub fn success(&self) -> Value {
        assert_eq!(
            self.code, 0,
            "plugin failed: stdout {} stderr {}",
            self.stdout, self.stderr
        );
        if self.stdout.trim().is_empty() {
            Value::Null
        } else {
            self.json()
        }
    }
}

/// One plugin invocation as a runtime makes it.
pub struct Call<'a> {
    pub bin: &'a str,
    pub command: &'a str,
    pub container_id: &'a str,
    pub netns: Option<&'a Path>,
    pub ifname: &'a str,
    pub args: Option<&'a str>,
    pub env: Vec<(&'a str, String)>,
}

impl<'a> Call<'a> {
    pub fn new(command: &'a str, container_id: &'a str) -> Call<'a> {
        Call {
            bin: "weft",
            command,
            container_id,
            netns: None,
            ifname: "eth0",
            args: None,
            env: vec![],
        }
    }
}

/// Runs the plugin binary inside `node`'s namespace with `config` on stdin.
pub fn cni(node: &Netns, call: &Call<'_>, config: &Value) -> PluginOutput {
    cni_raw(node, call, config.to_string().as_bytes())
}

pub fn cni_raw(node: &Netns, call: &Call<'_>, stdin: &[u8]) -> PluginOutput {
    let bin = if call.bin.starts_with('/') {
        PathBuf::from(call.bin)
    } else {
        bin_dir().join(call.bin)
    };
    let mut c = node.command(bin);
    c.env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("CNI_COMMAND", call.command);
    c.env("CNI_CONTAINERID", call.container_id)
        .env("CNI_IFNAME", call.ifname)
        .env("CNI_PATH", cni_path());
    if let Some(ns) = call.netns {
        c.env("CNI_NETNS", ns);
    }
    if let Some(a) = call.args {
        c.env("CNI_ARGS", a);
    }
    for (k, v) in &call.env {
        c.env(k, v);
    }
    c.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().expect("spawn plugin");
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    PluginOutput {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The pod's address of `family` (4 or 6) in an ADD result.
pub fn result_ip(result: &Value, family: u8) -> Option<String> {
    result["ips"].as_array()?.iter().find_map(|ip| {
        let a = ip["address"].as_str()?;
        let is_v6 = a.contains(':');
        (is_v6 == (family == 6)).then(|| a.split('/').next().unwrap().to_string())
    })
}

/// Host-side links whose name marks them as Weft's.
pub fn weft_links(node: &Netns) -> Vec<String> {
    node.links()
        .into_iter()
        .filter(|l| l.starts_with('w') && l.len() == 15)
        .collect()
}

// ---- Helpers for the end-to-end suites (modes, chain, reference, podman) ----

/// Panics with a clear message unless the test runs as root (it makes namespaces and links).
pub fn require_root() {
    let uid = run(&["id", "-u"]);
    assert_eq!(
        uid.trim(),
        "0",
        "this end-to-end test needs root: it creates network namespaces, links and firewall rules \
         (CI runs it as root; locally use sudo -E cargo test ...)"
    );
}

/// The repository's `examples/` directory.
pub fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples")
}

/// `examples/<file>` parsed.
pub fn example_list(file: &str) -> Value {
    let path = examples_dir().join(file);
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// Plugin `index` of a conflist as libcni hands it to the plugin: with the list's `name` and
/// `cniVersion` inserted.
pub fn list_plugin(list: &Value, index: usize) -> Value {
    let mut p = list["plugins"][index].clone();
    p["name"] = list["name"].clone();
    p["cniVersion"] = list["cniVersion"].clone();
    p
}

/// The allocation record file of one attachment in a Weft data dir.
pub fn handle_file(data_dir: &str, network: &str, container_id: &str, ifname: &str) -> PathBuf {
    Path::new(data_dir)
        .join("store/kv/weft/v1/handles")
        .join(network)
        .join(format!("={container_id}:{ifname}"))
}

/// Names of the allocation record files of `network` in a Weft data dir.
pub fn handle_files(data_dir: &str, network: &str) -> Vec<String> {
    let dir = Path::new(data_dir)
        .join("store/kv/weft/v1/handles")
        .join(network);
    match std::fs::read_dir(&dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => vec![],
    }
}

/// True when `ns` gets an answer from `addr` (one ping a second, for up to `tries` seconds; the
/// retries absorb IPv6 duplicate address detection and first ARP/ND).
pub fn ping_tries(ns: &Netns, addr: &str, tries: u32) -> bool {
    let fam = if addr.contains(':') { "-6" } else { "-4" };
    (0..tries).any(|_| {
        ns.exec(&["ping", fam, "-c", "1", "-W", "1", addr])
            .status
            .success()
    })
}

/// A background process started in a namespace; killed (by its PID) and reaped on drop.
pub struct Bg {
    pub child: std::process::Child,
    pub what: String,
}

impl Bg {
    /// Starts `cmd` inside `ns` (nsenter execs the command, so the PID is the command's).
    pub fn spawn(ns: &Netns, cmd: &[&str]) -> Bg {
        let child = ns
            .command(cmd[0])
            .args(&cmd[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {cmd:?} in {}: {e}", ns.name));
        Bg {
            child,
            what: format!("{cmd:?}"),
        }
    }
}

impl Drop for Bg {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Records under `/weft/v1/<kind>/` ("handles", "blocks", "networks", ...) of the embedded store in
/// `<data_dir>/store`, by store key, values parsed as JSON. Read in a store transaction, so a
/// commit that a killed plugin left half done is replayed first (as the next plugin run would).
pub fn store_records(data_dir: &str, kind: &str) -> std::collections::BTreeMap<String, Value> {
    let dir = Path::new(data_dir).join("store");
    if !dir.join("kv").exists() {
        return Default::default();
    }
    let store = weft_store::embedded::EmbeddedStore::open(&dir).unwrap();
    let prefix = format!("/weft/v1/{kind}/");
    let listed = weft_store::transact::<_, weft_store::StoreError>(&store, |tx| tx.list(&prefix))
        .unwrap_or_else(|e| panic!("reading {prefix} in {}: {e}", dir.display()));
    listed
        .into_iter()
        .map(|(k, v)| {
            let j = serde_json::from_slice(&v).unwrap_or_else(|e| {
                panic!("{k} is not JSON ({e}): {}", String::from_utf8_lossy(&v))
            });
            (k, j)
        })
        .collect()
}

/// Files below `<data_dir>/store/kv/weft/v1/<kind>/`, as paths relative to that directory.
pub fn store_files(data_dir: &str, kind: &str) -> Vec<String> {
    fn walk(dir: &Path, rel: &str, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let r = if rel.is_empty() {
                name.clone()
            } else {
                format!("{rel}/{name}")
            };
            if e.path().is_dir() {
                walk(&e.path(), &r, out);
            } else {
                out.push(r);
            }
        }
    }
    let mut out = Vec::new();
    walk(
        &Path::new(data_dir).join("store/kv/weft/v1").join(kind),
        "",
        &mut out,
    );
    out.sort();
    out
}

/// Link name -> alias (`ifalias`) for every link in the namespace that has one.
pub fn link_aliases(ns: &Netns) -> std::collections::BTreeMap<String, String> {
    ns.ip_json(&["-d", "link", "show"])
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| {
            Some((
                l["ifname"].as_str()?.to_string(),
                l["ifalias"].as_str()?.to_string(),
            ))
        })
        .collect()
}

// ---- The cluster lab: nodes on an underlay bridge, etcd in a store namespace ----

/// The underlay: the store namespace's bridge holds .1 (where etcd listens); node `i` is `.i+2`.
pub const UNDERLAY: &str = "198.51.100";

/// A multi-node lab for the etcd IPAM: a "store" namespace holding the underlay bridge
/// (198.51.100.1/24) and a real etcd listening on 198.51.100.1:2379, and node namespaces joined
/// to the bridge by a veth each (`uplink`, 198.51.100.<i+2>/24). The plugin runs inside a node
/// namespace, so it reaches etcd over the underlay as on a real cluster. Dropped in field
/// order: etcd (killed by PID, its directory removed), the nodes, the store namespace.
pub struct Lab {
    pub etcd: weft_store::testing::EtcdServer,
    pub nodes: Vec<Node>,
    pub store: Netns,
}

impl Lab {
    pub fn new(n_nodes: usize) -> Lab {
        require_root();
        let store = Netns::new("st");
        store.ok(&["ip", "link", "add", "br0", "type", "bridge"]);
        store.ok(&[
            "ip",
            "addr",
            "add",
            &format!("{UNDERLAY}.1/24"),
            "dev",
            "br0",
        ]);
        store.ok(&["ip", "link", "set", "br0", "up"]);
        let mut nodes = Vec::new();
        for i in 0..n_nodes {
            let node = Node::new("nd");
            let port = format!("u{i}");
            store.ok(&[
                "ip",
                "link",
                "add",
                &port,
                "type",
                "veth",
                "peer",
                "name",
                "uplink",
                "netns",
                &node.ns.name,
            ]);
            store.ok(&["ip", "link", "set", &port, "master", "br0", "up"]);
            node.ns.ok(&[
                "ip",
                "addr",
                "add",
                &format!("{UNDERLAY}.{}/24", i + 2),
                "dev",
                "uplink",
            ]);
            node.ns.ok(&["ip", "link", "set", "uplink", "up"]);
            nodes.push(node);
        }
        let ip: std::net::IpAddr = format!("{UNDERLAY}.1").parse().unwrap();
        let etcd = weft_store::testing::EtcdServer::start_in(&store.path(), ip);
        Lab { etcd, nodes, store }
    }

    /// The name node `i` has in the IPAM (`ipam.node`).
    pub fn node_name(i: usize) -> String {
        format!("node-{i}")
    }

    /// A bridge-mode network on etcd as node `i` configures it (its own node name and dataDir;
    /// cooldown 0). `pools`: subnets.
    pub fn net(&self, i: usize, name: &str, pools: &[&str]) -> Value {
        serde_json::json!({
            "cniVersion": "1.1.0",
            "name": name,
            "type": "weft",
            "mode": "bridge",
            "bridge": format!("b-{name}"),
            "ipam": {
                "pools": pools.iter().map(|p| serde_json::json!({"subnet": p})).collect::<Vec<_>>(),
                "cooldownSeconds": 0,
                "node": Lab::node_name(i),
                "dataDir": self.nodes[i].data_dir(),
                "store": {"type": "etcd", "endpoints": [self.etcd.endpoint()], "timeoutSeconds": 2},
            },
        })
    }

    /// Every key under `prefix` in etcd with its value, read in one range request (one
    /// revision) by a thread that enters the store namespace (the only place etcd is reachable
    /// from), through the store API.
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

    /// Records under `/weft/v1/<kind>/` by key, values parsed as JSON.
    pub fn records(&self, kind: &str) -> std::collections::BTreeMap<String, Value> {
        self.etcd_list(&format!("/weft/v1/{kind}/"))
            .into_iter()
            .map(|(k, v)| {
                let j = serde_json::from_slice(&v).unwrap_or_else(|e| {
                    panic!("{k} is not JSON ({e}): {}", String::from_utf8_lossy(&v))
                });
                (k, j)
            })
            .collect()
    }
}

// ---- Driving the plugin as separate processes (for concurrency and SIGKILL tests) ----

/// Starts `weft` in `node`'s namespace as a runtime would; the caller waits (or kills) it.
pub fn spawn(node: &Netns, command: &str, cid: &str, pod: Option<&Netns>, config: &Value) -> Child {
    let mut c = node.command(bin_dir().join("weft"));
    c.env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", cid)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", cni_path());
    if let Some(p) = pod {
        c.env("CNI_NETNS", p.path());
    }
    c.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().expect("spawn weft");
    let _ = child
        .stdin
        .take()
        .unwrap()
        .write_all(config.to_string().as_bytes());
    child
}

/// How a run ended.
#[derive(Debug)]
pub enum Outcome {
    Ok(Value),
    Failed(String),
    Killed,
}

pub fn finish(child: Child) -> Outcome {
    let out = child.wait_with_output().unwrap();
    if out.status.signal() == Some(libc::SIGKILL) {
        return Outcome::Killed;
    }
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        Outcome::Ok(if stdout.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&stdout).unwrap_or(Value::Null)
        })
    } else {
        Outcome::Failed(format!(
            "{:?}: stdout {} stderr {}",
            out.status,
            stdout.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

pub fn median(mut v: Vec<std::time::Duration>) -> std::time::Duration {
    v.sort();
    v[v.len() / 2]
}

/// The pod's addresses on eth0 (without prefix), none when it has no eth0.
pub fn eth0_addrs(pod: &Netns) -> Vec<String> {
    if !pod.links().iter().any(|l| l == "eth0") {
        return Vec::new();
    }
    pod.addrs("eth0")
        .into_iter()
        .map(|a| a.split('/').next().unwrap().to_string())
        .collect()
}
