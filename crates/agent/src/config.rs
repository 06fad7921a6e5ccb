//! weftd's configuration: a JSON file (`--config FILE`) and flags; a flag overrides the file.
//!
//! ```json
//! {
//!   "node": "node-1",
//!   "underlayInterface": "eth1",
//!   "store": {"type": "etcd", "endpoints": ["http://198.51.100.1:2379"]},
//!   "network": "cluster",
//!   "mode": "hybrid",
//!   "vni": 4096,
//!   "masquerade": true
//! }
//! ```
//! `underlayAddress` may stand for `underlayInterface` (the link holding that address is the
//! underlay). `store` may be `{"type": "embedded", "dataDir": "/var/lib/weft"}` (the plugin's
//! `dataDir`: the store is `<dataDir>/store`).
//!
//! Metrics (see [`crate::metrics`]): `"metricsListen": "198.51.100.2:9587"` (or
//! `--metrics-listen`) serves them over HTTP at `/metrics`; `"reportSocket"` (or
//! `--report-socket`) is where the plugin's timing reports arrive, default
//! `/run/weft/weftd-<node>.sock` (what the plugin derives from its `ipam.node`).

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{AgentError, Result};

/// How packets reach the pods of other nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
pub enum Mode {
    /// A route to each peer's blocks via the peer's underlay address (one L2 segment).
    #[serde(rename = "host-gw")]
    #[value(name = "host-gw")]
    HostGw,
    /// Every peer through the VXLAN device.
    #[serde(rename = "vxlan")]
    #[value(name = "vxlan")]
    Vxlan,
    /// host-gw to peers on our underlay subnet, VXLAN to the rest.
    #[serde(rename = "hybrid")]
    #[value(name = "hybrid")]
    Hybrid,
}

impl Mode {
    pub fn uses_vxlan(self) -> bool {
        !matches!(self, Mode::HostGw)
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::HostGw => "host-gw",
            Mode::Vxlan => "vxlan",
            Mode::Hybrid => "hybrid",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase", deny_unknown_fields)]
pub enum StoreConfig {
    /// `<dataDir>/store` on this host.
    #[serde(rename = "embedded", rename_all = "camelCase")]
    Embedded { data_dir: PathBuf },
    #[serde(rename = "etcd", rename_all = "camelCase")]
    Etcd {
        endpoints: Vec<String>,
        #[serde(default)]
        timeout_seconds: Option<u64>,
        #[serde(default)]
        prefix: Option<String>,
    },
}

fn default_vni() -> u32 {
    4096
}
fn default_port() -> u16 {
    4789
}
fn default_device() -> String {
    "weft.vx".into()
}
fn default_ttl() -> i64 {
    10
}
fn default_resync() -> u64 {
    1000
}

/// The file as written (every field optional, so flags can fill in).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FileConfig {
    pub node: Option<String>,
    pub underlay_interface: Option<String>,
    pub underlay_address: Option<IpAddr>,
    pub store: Option<StoreConfig>,
    pub network: Option<String>,
    pub mode: Option<Mode>,
    pub vni: Option<u32>,
    pub vxlan_port: Option<u16>,
    pub vxlan_device: Option<String>,
    pub lease_ttl_seconds: Option<i64>,
    pub resync_millis: Option<u64>,
    /// Masquerade traffic from the network's pods to destinations outside every cluster pod
    /// subnet.
    pub masquerade: Option<bool>,
    /// Serve metrics over HTTP on this address (`GET /metrics`).
    pub metrics_listen: Option<SocketAddr>,
    /// Where the plugin's timing reports arrive.
    pub report_socket: Option<PathBuf>,
    /// The BPF fast path's `to_pods` program on the underlay link and the VXLAN device (for
    /// pods attached with the plugin's `fastPath`, its default in routed mode). Default: on
    /// where the kernel takes the program; true: required; false: off.
    pub fast_path: Option<bool>,
}

/// Command-line flags of `weftd`.
#[derive(Debug, Clone, Default, clap::Parser)]
#[command(name = "weftd", about = "Weft's node agent", version)]
pub struct Flags {
    /// A JSON config file; flags override its fields.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// This node's name (its key under /weft/v1/nodes/ and the IPAM's `ipam.node`).
    #[arg(long)]
    pub node: Option<String>,
    /// The underlay link (its first IPv4 address is the node's underlay address).
    #[arg(long)]
    pub underlay_interface: Option<String>,
    /// The node's underlay address (the link holding it is the underlay).
    #[arg(long)]
    pub underlay_address: Option<IpAddr>,
    /// The embedded store of this data dir (`<dir>/store`).
    #[arg(long, conflicts_with = "etcd")]
    pub data_dir: Option<PathBuf>,
    /// etcd endpoints (comma-separated URLs).
    #[arg(long, value_delimiter = ',')]
    pub etcd: Vec<String>,
    /// The cluster network whose blocks are routed.
    #[arg(long)]
    pub network: Option<String>,
    #[arg(long, value_enum)]
    pub mode: Option<Mode>,
    /// VXLAN network identifier.
    #[arg(long)]
    pub vni: Option<u32>,
    /// VXLAN UDP port.
    #[arg(long)]
    pub vxlan_port: Option<u16>,
    /// Lease TTL of the node record, seconds.
    #[arg(long)]
    pub lease_ttl: Option<i64>,
    /// Period of the timer-driven reconcile, milliseconds.
    #[arg(long)]
    pub resync_millis: Option<u64>,
    /// Masquerade traffic from the network's pods leaving the cluster (see `firewall`).
    #[arg(long)]
    pub masquerade: bool,
    /// Serve metrics (OpenMetrics text) over HTTP at `/metrics` on this address, e.g.
    /// 0.0.0.0:9587. Off when not given.
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,
    /// The unix datagram socket the plugin's timing reports arrive on (with --metrics-listen);
    /// default /run/weft/weftd-<node>.sock.
    #[arg(long, value_name = "PATH")]
    pub report_socket: Option<PathBuf>,
    /// Require the BPF fast path: `to_pods` on the underlay link and the VXLAN device, so
    /// packets for the node's fast-path pods skip the node's IP stack (see docs/datapath.md).
    /// Without this flag it is on wherever the kernel takes the program; with it, a kernel
    /// that refuses the program fails every reconcile pass (logged; routes, FDB entries and
    /// masquerade are still applied) instead.
    #[arg(long, conflicts_with = "no_fast_path")]
    pub fast_path: bool,
    /// No BPF fast path on this node: every pod packet takes the node's IP stack (pods attached
    /// with the fast path then still send past it; set the network's `"fastPath": false` too).
    #[arg(long)]
    pub no_fast_path: bool,
}

/// The effective configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub node: String,
    pub underlay_interface: Option<String>,
    pub underlay_address: Option<IpAddr>,
    pub store: StoreConfig,
    pub network: String,
    pub mode: Mode,
    pub vni: u32,
    pub vxlan_port: u16,
    pub vxlan_device: String,
    pub lease_ttl_seconds: i64,
    pub resync: Duration,
    pub masquerade: bool,
    pub metrics_listen: Option<SocketAddr>,
    pub report_socket: PathBuf,
    /// The fast path's `to_pods` is attached (when the kernel takes it).
    pub fast_path: bool,
    /// Asked for by name: a kernel that refuses the program is an error, not a log line.
    pub fast_path_required: bool,
}

impl Config {
    /// Reads `flags.config` (if given) and lays the flags over it.
    pub fn load(flags: &Flags) -> Result<Config> {
        let file = match &flags.config {
            Some(p) => read_file(p)?,
            None => FileConfig::default(),
        };
        Config::merge(file, flags)
    }

    pub fn merge(file: FileConfig, f: &Flags) -> Result<Config> {
        let store = if let Some(dir) = &f.data_dir {
            Some(StoreConfig::Embedded {
                data_dir: dir.clone(),
            })
        } else if !f.etcd.is_empty() {
            Some(StoreConfig::Etcd {
                endpoints: f.etcd.clone(),
                timeout_seconds: None,
                prefix: None,
            })
        } else {
            file.store
        };
        let missing = |field: &'static str| AgentError::Invalid {
            field,
            msg: "is required (in the config file or as a flag)".into(),
        };
        let node = f
            .node
            .clone()
            .or(file.node)
            .ok_or_else(|| missing("node"))?;
        let cfg = Config {
            report_socket: f
                .report_socket
                .clone()
                .or(file.report_socket)
                .unwrap_or_else(|| weft_metrics::report::default_socket(&node)),
            metrics_listen: f.metrics_listen.or(file.metrics_listen),
            node,
            underlay_interface: f.underlay_interface.clone().or(file.underlay_interface),
            underlay_address: f.underlay_address.or(file.underlay_address),
            store: store.ok_or_else(|| missing("store"))?,
            network: f
                .network
                .clone()
                .or(file.network)
                .ok_or_else(|| missing("network"))?,
            mode: f.mode.or(file.mode).unwrap_or(Mode::Hybrid),
            vni: f.vni.or(file.vni).unwrap_or_else(default_vni),
            vxlan_port: f
                .vxlan_port
                .or(file.vxlan_port)
                .unwrap_or_else(default_port),
            vxlan_device: file.vxlan_device.unwrap_or_else(default_device),
            lease_ttl_seconds: f
                .lease_ttl
                .or(file.lease_ttl_seconds)
                .unwrap_or_else(default_ttl),
            resync: Duration::from_millis(
                f.resync_millis
                    .or(file.resync_millis)
                    .unwrap_or_else(default_resync),
            ),
            masquerade: f.masquerade || file.masquerade.unwrap_or(false),
            fast_path: !f.no_fast_path && (f.fast_path || file.fast_path.unwrap_or(true)),
            fast_path_required: !f.no_fast_path && (f.fast_path || file.fast_path == Some(true)),
        };
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<()> {
        let bad = |field, msg: &str| {
            Err(AgentError::Invalid {
                field,
                msg: msg.to_string(),
            })
        };
        if self.node.is_empty()
            || self
                .node
                .chars()
                .any(|c| c == '/' || c.is_whitespace() || c.is_control())
        {
            return bad("node", "must be a non-empty name without '/' or spaces");
        }
        if self.network.is_empty() || self.network.contains('/') {
            return bad("network", "must be a non-empty name without '/'");
        }
        if self.underlay_interface.is_none() && self.underlay_address.is_none() {
            return bad(
                "underlayInterface",
                "give the underlay interface or the underlay address",
            );
        }
        if self.vni == 0 || self.vni >= 1 << 24 {
            return bad("vni", "must be in 1..16777215");
        }
        if self.vxlan_device.is_empty() || self.vxlan_device.len() > 15 {
            return bad("vxlanDevice", "must be 1 to 15 bytes");
        }
        if !(2..=3600).contains(&self.lease_ttl_seconds) {
            return bad("leaseTtlSeconds", "must be in 2..3600");
        }
        if self.resync < Duration::from_millis(100) {
            return bad("resyncMillis", "must be at least 100");
        }
        if !self.report_socket.is_absolute() {
            return bad(
                "reportSocket",
                "must be an absolute path (the plugin's reportSocket names the same one)",
            );
        }
        if let StoreConfig::Etcd { endpoints, .. } = &self.store
            && endpoints.is_empty()
        {
            return bad("store.endpoints", "needs at least one etcd endpoint");
        }
        Ok(())
    }
}

fn read_file(path: &Path) -> Result<FileConfig> {
    let text = std::fs::read_to_string(path).map_err(|e| AgentError::Config {
        path: path.to_path_buf(),
        msg: e.to_string(),
    })?;
    serde_json::from_str(&text).map_err(|e| AgentError::Config {
        path: path.to_path_buf(),
        msg: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn flags_override_the_file() {
        let file: FileConfig = serde_json::from_str(
            r#"{"node":"n1","underlayInterface":"eth1","network":"c","mode":"vxlan",
                "store":{"type":"etcd","endpoints":["http://198.51.100.1:2379"]}}"#,
        )
        .unwrap();
        let flags = Flags::parse_from(["weftd", "--mode", "host-gw", "--vni", "7"]);
        let cfg = Config::merge(file, &flags).unwrap();
        assert_eq!(cfg.mode, Mode::HostGw);
        assert_eq!(cfg.vni, 7);
        assert_eq!(cfg.node, "n1");
        assert_eq!(cfg.vxlan_device, "weft.vx");
        assert_eq!(cfg.lease_ttl_seconds, 10);
        assert_eq!(cfg.metrics_listen, None);
        assert_eq!(cfg.report_socket, PathBuf::from("/run/weft/weftd-n1.sock"));
        let flags = Flags::parse_from([
            "weftd",
            "--metrics-listen",
            "127.0.0.1:9587",
            "--report-socket",
            "/tmp/r.sock",
        ]);
        let file: FileConfig = serde_json::from_str(
            r#"{"node":"n1","underlayInterface":"eth1","network":"c","metricsListen":"0.0.0.0:1",
                "store":{"type":"embedded","dataDir":"/tmp/d"}}"#,
        )
        .unwrap();
        let cfg = Config::merge(file, &flags).unwrap();
        assert_eq!(cfg.metrics_listen, Some("127.0.0.1:9587".parse().unwrap()));
        assert_eq!(cfg.report_socket, PathBuf::from("/tmp/r.sock"));
    }

    #[test]
    fn fast_path_is_on_unless_turned_off_and_required_only_by_name() {
        let file = |extra: &str| -> FileConfig {
            serde_json::from_str(&format!(
                r#"{{"node":"n1","underlayInterface":"eth1","network":"c",{extra}
                    "store":{{"type":"embedded","dataDir":"/tmp/d"}}}}"#
            ))
            .unwrap()
        };
        let fp = |extra: &str, flags: &[&str]| {
            let mut argv = vec!["weftd"];
            argv.extend_from_slice(flags);
            let cfg = Config::merge(file(extra), &Flags::parse_from(argv)).unwrap();
            (cfg.fast_path, cfg.fast_path_required)
        };
        assert_eq!(fp("", &[]), (true, false));
        assert_eq!(fp("", &["--fast-path"]), (true, true));
        assert_eq!(fp("", &["--no-fast-path"]), (false, false));
        assert_eq!(fp(r#""fastPath":true,"#, &[]), (true, true));
        assert_eq!(fp(r#""fastPath":false,"#, &[]), (false, false));
        assert_eq!(fp(r#""fastPath":false,"#, &["--fast-path"]), (true, true));
        assert_eq!(
            fp(r#""fastPath":true,"#, &["--no-fast-path"]),
            (false, false)
        );
        assert!(Flags::try_parse_from(["weftd", "--fast-path", "--no-fast-path"]).is_err());
    }

    #[test]
    fn missing_and_bad_fields_are_named() {
        let flags = Flags::parse_from(["weftd", "--node", "n1", "--data-dir", "/tmp/x"]);
        let e = Config::merge(FileConfig::default(), &flags).unwrap_err();
        assert!(e.to_string().contains("network"), "{e}");
        let flags = Flags::parse_from([
            "weftd",
            "--node",
            "a/b",
            "--data-dir",
            "/tmp/x",
            "--network",
            "c",
            "--underlay-interface",
            "eth0",
        ]);
        let e = Config::merge(FileConfig::default(), &flags).unwrap_err();
        assert!(e.to_string().contains("node"), "{e}");
    }
}
