//! `weftctl`: a kubectl-like CLI over weft-api (it talks to the API only).
//!
//! The API address and token come from flags, then the environment (`WEFT_API_URL`,
//! `WEFT_TOKEN`, `WEFT_CA_CERT`), then the config file (`--config`, `WEFTCTL_CONFIG`, or
//! `~/.config/weft/weftctl.yaml`), then the default `http://127.0.0.1:8750`.
//!
//! Exit codes: 0 ok; 1 error (API unreachable, server error); 2 usage; 3 not found;
//! 4 unauthorized or forbidden; 5 conflict; 6 check found problems; 7 the API refused the input.
#![forbid(unsafe_code)]

mod table;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use serde::Deserialize;
use serde_json::{Value, json};

use table::{Table, age};

pub const EXIT_ERROR: u8 = 1;
pub const EXIT_USAGE: u8 = 2;
pub const EXIT_NOT_FOUND: u8 = 3;
pub const EXIT_AUTH: u8 = 4;
pub const EXIT_CONFLICT: u8 = 5;
pub const EXIT_FINDINGS: u8 = 6;
pub const EXIT_INVALID: u8 = 7;

const DEFAULT_URL: &str = "http://127.0.0.1:8750";

#[derive(Parser, Debug)]
#[command(
    name = "weftctl",
    version,
    about = "Weft's admin CLI over weft-api",
    after_help = "Exit codes: 0 ok, 1 error, 2 usage, 3 not found, 4 unauthorized/forbidden, \
5 conflict, 6 check found problems, 7 the API refused the input.\n\
Environment: WEFT_API_URL, WEFT_TOKEN, WEFT_CA_CERT, WEFTCTL_CONFIG."
)]
struct Cli {
    /// The API's URL (default http://127.0.0.1:8750).
    #[arg(long, global = true, env = "WEFT_API_URL")]
    server: Option<String>,
    /// Bearer token.
    #[arg(long, global = true, env = "WEFT_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// PEM CA certificate to trust for an https server.
    #[arg(long, global = true, env = "WEFT_CA_CERT")]
    ca_cert: Option<PathBuf>,
    /// Config file (YAML: server, token or tokenFile, caCert).
    #[arg(long, global = true, env = "WEFTCTL_CONFIG")]
    config: Option<PathBuf>,
    /// Seconds to wait for the API.
    #[arg(long, global = true, default_value_t = 30)]
    timeout: u64,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    /// Wider table with every column.
    Wide,
    Json,
    Yaml,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Kind {
    #[value(alias = "network", alias = "net")]
    Networks,
    /// One row per address (with a name: who holds that address).
    #[value(alias = "ip", alias = "addresses")]
    Ips,
    /// One row per attachment.
    #[value(alias = "allocation", alias = "alloc")]
    Allocations,
    #[value(alias = "node", alias = "no")]
    Nodes,
    #[value(alias = "reservation", alias = "res")]
    Reservations,
    /// Address pools (Deployments' fixed addresses).
    #[value(alias = "pool")]
    Pools,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum DescribeKind {
    #[value(alias = "networks", alias = "net")]
    Network,
    #[value(alias = "ips", alias = "address")]
    Ip,
    #[value(alias = "nodes", alias = "no")]
    Node,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum DeleteKind {
    #[value(alias = "networks", alias = "net")]
    Network,
    #[value(alias = "reservations", alias = "res")]
    Reservation,
    #[value(alias = "pools")]
    Pool,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// List resources (or show one by name).
    Get {
        kind: Kind,
        name: Option<String>,
        #[arg(short, long)]
        output: Option<Output>,
        /// Only this network.
        #[arg(long)]
        network: Option<String>,
        /// Only this node (ips, allocations).
        #[arg(long)]
        node: Option<String>,
        /// Only this pod, namespace/name (ips, allocations).
        #[arg(long)]
        pod: Option<String>,
    },
    /// Everything about one network, address or node.
    Describe {
        kind: DescribeKind,
        name: String,
        #[arg(short, long)]
        output: Option<Output>,
    },
    /// Create resources from a YAML or JSON manifest (kind: Network, Reservation, AddressPool).
    Create {
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
    },
    /// Create or update resources from a manifest.
    Apply {
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
    },
    /// Delete a network (refused with live addresses unless --force), reservation or pool.
    Delete {
        kind: DeleteKind,
        name: String,
        /// The network (reservations and pools).
        #[arg(long)]
        network: Option<String>,
        /// Delete a network with its allocations, reservations and pools.
        #[arg(long)]
        force: bool,
    },
    /// Reserve fixed addresses for a workload identity (e.g. prod/db/0).
    Reserve {
        key: String,
        #[arg(required = true)]
        addresses: Vec<String>,
        #[arg(long)]
        network: String,
        /// pod, workload or never.
        #[arg(long, default_value = "never")]
        policy: String,
        #[arg(long)]
        workload: Option<String>,
        #[arg(long)]
        ordinal: Option<u32>,
    },
    /// Release a reservation (or, with --pool, an address pool).
    Release {
        /// The reservation's key (or the pool's name with --pool).
        name: String,
        #[arg(long)]
        network: String,
        #[arg(long)]
        pool: bool,
    },
    /// Compare the store with the nodes; with --repair, plan the repairs (--yes carries them out).
    Check {
        #[arg(long)]
        repair: bool,
        #[arg(long, requires = "repair")]
        yes: bool,
        #[arg(long)]
        grace_seconds: Option<u64>,
        #[arg(short, long)]
        output: Option<Output>,
    },
    /// Shell completion script.
    Completion { shell: clap_complete::Shell },
}

/// A failure with its exit code.
struct Fail {
    code: u8,
    msg: String,
}

impl Fail {
    fn new(code: u8, msg: impl Into<String>) -> Fail {
        Fail {
            code,
            msg: msg.into(),
        }
    }
}

type Res<T> = Result<T, Fail>;

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct FileConfig {
    server: Option<String>,
    token: Option<String>,
    token_file: Option<PathBuf>,
    ca_cert: Option<PathBuf>,
}

struct Client {
    agent: ureq::Agent,
    base: String,
    token: Option<String>,
}

fn load_config(cli: &Cli) -> Res<FileConfig> {
    let (path, explicit) = match &cli.config {
        Some(p) => (p.clone(), true),
        None => match std::env::var_os("HOME") {
            Some(h) => (PathBuf::from(h).join(".config/weft/weftctl.yaml"), false),
            None => return Ok(FileConfig::default()),
        },
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if !explicit && e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(FileConfig::default());
        }
        Err(e) => {
            return Err(Fail::new(
                EXIT_USAGE,
                format!("config {}: {e}", path.display()),
            ));
        }
    };
    serde_yaml_ng::from_str(&text)
        .map_err(|e| Fail::new(EXIT_USAGE, format!("config {}: {e}", path.display())))
}

impl Client {
    fn new(cli: &Cli) -> Res<Client> {
        let file = load_config(cli)?;
        let base = cli
            .server
            .clone()
            .or(file.server.clone())
            .unwrap_or_else(|| DEFAULT_URL.to_string())
            .trim_end_matches('/')
            .to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(Fail::new(
                EXIT_USAGE,
                format!("--server {base:?}: give a URL, http://HOST:PORT or https://HOST:PORT"),
            ));
        }
        let token = match (&cli.token, &file.token, &file.token_file) {
            (Some(t), _, _) => Some(t.clone()),
            (None, Some(t), _) => Some(t.clone()),
            (None, None, Some(f)) => Some(
                std::fs::read_to_string(f)
                    .map_err(|e| Fail::new(EXIT_USAGE, format!("tokenFile {}: {e}", f.display())))?
                    .trim()
                    .to_string(),
            ),
            _ => None,
        };
        let mut cfg = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(cli.timeout.max(1))));
        if let Some(ca) = cli.ca_cert.clone().or(file.ca_cert.clone()) {
            let pem = std::fs::read(&ca)
                .map_err(|e| Fail::new(EXIT_USAGE, format!("--ca-cert {}: {e}", ca.display())))?;
            let certs: Vec<ureq::tls::Certificate<'static>> = ureq::tls::parse_pem(&pem)
                .filter_map(|i| match i {
                    Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                    _ => None,
                })
                .collect();
            if certs.is_empty() {
                return Err(Fail::new(
                    EXIT_USAGE,
                    format!("--ca-cert {}: no PEM certificate in it", ca.display()),
                ));
            }
            cfg = cfg.tls_config(
                ureq::tls::TlsConfig::builder()
                    .root_certs(ureq::tls::RootCerts::Specific(Arc::new(certs)))
                    .build(),
            );
        }
        Ok(Client {
            agent: cfg.build().into(),
            base,
            token,
        })
    }

    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Res<Value> {
        let url = format!("{}{path}", self.base);
        let req = ureq::http::Request::builder().method(method).uri(&url);
        let req = match &self.token {
            Some(t) => req.header("Authorization", format!("Bearer {t}")),
            None => req,
        };
        let sent = match body {
            Some(b) => {
                let bytes = serde_json::to_vec(b).unwrap_or_default();
                let req = req
                    .header("Content-Type", "application/json")
                    .body(bytes)
                    .map_err(|e| Fail::new(EXIT_USAGE, format!("{url}: {e}")))?;
                self.agent.run(req)
            }
            None => {
                let req = req
                    .body(())
                    .map_err(|e| Fail::new(EXIT_USAGE, format!("{url}: {e}")))?;
                self.agent.run(req)
            }
        };
        let mut resp = sent.map_err(|e| {
            Fail::new(
                EXIT_ERROR,
                format!("cannot reach weft-api at {}: {e}", self.base),
            )
        })?;
        let status = resp.status().as_u16();
        let text = resp
            .body_mut()
            .with_config()
            .limit(1 << 30)
            .read_to_string()
            .map_err(|e| {
                Fail::new(
                    EXIT_ERROR,
                    format!("{method} {url}: reading the answer: {e}"),
                )
            })?;
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::String(text.clone()));
        if (200..300).contains(&status) {
            return Ok(v);
        }
        let msg = v
            .get("error")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| text.trim().to_string());
        let code = match status {
            404 => EXIT_NOT_FOUND,
            401 | 403 => EXIT_AUTH,
            409 => EXIT_CONFLICT,
            400 | 413 | 415 | 422 => EXIT_INVALID,
            _ => EXIT_ERROR,
        };
        let hint = if status == 401 && self.token.is_none() {
            " (set WEFT_TOKEN or --token)"
        } else {
            ""
        };
        Err(Fail::new(code, format!("{msg}{hint} [HTTP {status}]")))
    }

    fn get(&self, path: &str) -> Res<Value> {
        self.call("GET", path, None)
    }
}

fn enc(s: &str) -> String {
    utf8_percent_encode(s, NON_ALPHANUMERIC).to_string()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn s(v: &Value, k: &str) -> String {
    match v.get(k) {
        Some(Value::String(x)) => x.clone(),
        Some(Value::Null) | None => "-".into(),
        Some(x) => x.to_string(),
    }
}

fn list(v: &Value, k: &str) -> String {
    match v.get(k).and_then(Value::as_array) {
        Some(a) if !a.is_empty() => a
            .iter()
            .map(|x| {
                x.as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| x.to_string())
            })
            .collect::<Vec<_>>()
            .join(","),
        _ => "-".into(),
    }
}

fn num(v: &Value, k: &str) -> u64 {
    v.get(k).and_then(Value::as_u64).unwrap_or(0)
}

fn items(v: &Value) -> Vec<Value> {
    match v {
        Value::Array(a) => a.clone(),
        other => vec![other.clone()],
    }
}

/// Default tables fit `COLUMNS` characters (80 when unset); `-o wide` is never cut.
fn table_width(output: Option<Output>) -> Option<usize> {
    if output == Some(Output::Wide) {
        return None;
    }
    let cols = std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.parse::<usize>().ok())
        .filter(|c| *c >= 40)
        .unwrap_or(80);
    Some(cols)
}

/// `-o json` or `-o yaml`: the API's answer as it is, no table.
fn structured(output: Option<Output>) -> bool {
    matches!(output, Some(Output::Json | Output::Yaml))
}

fn emit(v: &Value, output: Option<Output>, table: impl FnOnce(bool) -> Table) -> Res<()> {
    match output {
        Some(Output::Json) => {
            println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
        }
        Some(Output::Yaml) => {
            print!("{}", serde_yaml_ng::to_string(v).unwrap_or_default());
        }
        _ => {
            let wide = output == Some(Output::Wide);
            print!("{}", table(wide).render(table_width(output)));
        }
    }
    Ok(())
}

/// A count in at most 5 characters: 65531, 1.2M, 18E.
fn human(n: u64) -> String {
    if n < 100_000 {
        return n.to_string();
    }
    let units = ["k", "M", "G", "T", "P", "E"];
    let mut x = n as f64;
    let mut i = 0;
    while x >= 1000.0 && i < units.len() {
        x /= 1000.0;
        i += 1;
    }
    if x < 10.0 {
        format!("{x:.1}{}", units[i - 1])
    } else {
        format!("{x:.0}{}", units[i - 1])
    }
}

/// Per family (IPv4 first): size, used, reserved, cooling, free and held (used + reserved),
/// each as "v4/v6" text.
fn usage_of(n: &Value) -> [String; 6] {
    let fams = items(n.get("usage").unwrap_or(&Value::Null));
    let col = |k: &str| {
        fams.iter()
            .map(|f| human(num(f, k)))
            .collect::<Vec<_>>()
            .join("/")
    };
    [
        col("size"),
        col("used"),
        col("reserved"),
        col("cooling"),
        col("free"),
        fams.iter()
            .map(|f| human(num(f, "used").saturating_add(num(f, "reserved"))))
            .collect::<Vec<_>>()
            .join("/"),
    ]
}

fn pools_of(n: &Value) -> String {
    n.get("pools")
        .and_then(Value::as_array)
        .map(|ps| {
            ps.iter()
                .map(|p| s(p, "subnet"))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_else(|| "-".into())
}

fn networks_table(v: &Value, wide: bool) -> Table {
    let t = now();
    let mut tb = if wide {
        Table::new(vec![
            "NAME", "POOLS", "SIZE", "USED", "RESERVED", "COOLING", "FREE", "BLOCKS", "COOLDOWN",
            "STRICT", "AGE",
        ])
    } else {
        Table::new(vec!["NAME", "POOLS", "USED", "FREE", "AGE"]).shrink(&[0, 1])
    };
    for n in items(v) {
        let [size, used, res, cool, free, held] = usage_of(&n);
        let age_s = age(n.get("createdAt").and_then(Value::as_u64), t);
        if wide {
            tb.row(vec![
                s(&n, "name"),
                pools_of(&n),
                size,
                used,
                res,
                cool,
                free,
                format!(
                    "/{} /{}",
                    num(&n, "blockPrefixV4"),
                    num(&n, "blockPrefixV6")
                ),
                format!("{}s", num(&n, "cooldownSeconds")),
                s(&n, "strictAffinity"),
                age_s,
            ]);
        } else {
            tb.row(vec![s(&n, "name"), pools_of(&n), held, free, age_s]);
        }
    }
    tb
}

fn fixed_of(a: &Value) -> String {
    match a.get("fixed") {
        Some(f) if f.is_object() => format!("{}:{}", s(f, "kind"), s(f, "name")),
        _ => "-".into(),
    }
}

fn strip_len(a: &str) -> String {
    a.split('/').next().unwrap_or(a).to_string()
}

fn ips_table(v: &Value, wide: bool) -> Table {
    let t = now();
    let mut tb = if wide {
        Table::new(vec![
            "ADDRESS",
            "NETWORK",
            "NODE",
            "POD",
            "CONTAINER",
            "IF",
            "FIXED",
            "AGE",
        ])
    } else {
        Table::new(vec!["ADDRESS", "NETWORK", "NODE", "POD", "AGE"]).shrink(&[0, 1, 2, 3])
    };
    for a in items(v) {
        for addr in a
            .get("addresses")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
        {
            let addr = strip_len(addr.as_str().unwrap_or("-"));
            let age_s = age(a.get("createdAt").and_then(Value::as_u64), t);
            if wide {
                tb.row(vec![
                    addr,
                    s(&a, "network"),
                    s(&a, "node"),
                    s(&a, "pod"),
                    s(&a, "containerId"),
                    s(&a, "ifname"),
                    fixed_of(&a),
                    age_s,
                ]);
            } else {
                tb.row(vec![
                    addr,
                    s(&a, "network"),
                    s(&a, "node"),
                    s(&a, "pod"),
                    age_s,
                ]);
            }
        }
    }
    tb
}

/// The `addresses` of `v` without their prefix lengths, comma-separated.
fn addrs(v: &Value) -> String {
    v.get("addresses")
        .and_then(Value::as_array)
        .map(|x| {
            x.iter()
                .map(|y| strip_len(y.as_str().unwrap_or("-")))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

fn allocations_table(v: &Value, wide: bool) -> Table {
    let t = now();
    let mut tb = if wide {
        Table::new(vec![
            "NETWORK",
            "POD",
            "NODE",
            "ADDRESSES",
            "HANDLE",
            "FIXED",
            "AGE",
        ])
    } else {
        Table::new(vec!["NETWORK", "POD", "NODE", "ADDRESSES", "AGE"]).shrink(&[0, 1, 2, 3])
    };
    for a in items(v) {
        let age_s = age(a.get("createdAt").and_then(Value::as_u64), t);
        if wide {
            tb.row(vec![
                s(&a, "network"),
                s(&a, "pod"),
                s(&a, "node"),
                addrs(&a),
                s(&a, "handle"),
                fixed_of(&a),
                age_s,
            ]);
        } else {
            tb.row(vec![
                s(&a, "network"),
                s(&a, "pod"),
                s(&a, "node"),
                addrs(&a),
                age_s,
            ]);
        }
    }
    tb
}

fn nodes_table(v: &Value, wide: bool) -> Table {
    let mut tb = if wide {
        Table::new(vec![
            "NAME",
            "STATUS",
            "UNDERLAY",
            "SUBNET",
            "MODE",
            "NETWORKS",
            "BLOCKS",
            "PODS",
            "ADDRESSES",
        ])
    } else {
        Table::new(vec!["NAME", "STATUS", "UNDERLAY", "MODE", "BLOCKS", "PODS"]).shrink(&[0, 2])
    };
    for n in items(v) {
        let status = if n.get("registered").and_then(Value::as_bool) == Some(true) {
            "Registered"
        } else {
            "NotRegistered"
        };
        let blocks = n
            .get("blocks")
            .and_then(Value::as_array)
            .map_or(0, |b| b.len());
        if wide {
            tb.row(vec![
                s(&n, "name"),
                status.into(),
                s(&n, "underlayIp"),
                s(&n, "underlaySubnet"),
                s(&n, "mode"),
                list(&n, "networks"),
                blocks.to_string(),
                num(&n, "allocations").to_string(),
                num(&n, "addresses").to_string(),
            ]);
        } else {
            tb.row(vec![
                s(&n, "name"),
                status.into(),
                s(&n, "underlayIp"),
                s(&n, "mode"),
                blocks.to_string(),
                num(&n, "allocations").to_string(),
            ]);
        }
    }
    tb
}

fn reservations_table(v: &Value, wide: bool) -> Table {
    let t = now();
    let mut tb = if wide {
        Table::new(vec![
            "NETWORK",
            "KEY",
            "ADDRESSES",
            "POLICY",
            "WORKLOAD",
            "HOLDER",
            "NODE",
            "AGE",
        ])
    } else {
        Table::new(vec!["NETWORK", "KEY", "ADDRESSES", "POLICY", "NODE"]).shrink(&[0, 1, 2, 4])
    };
    for r in items(v) {
        if wide {
            tb.row(vec![
                s(&r, "network"),
                s(&r, "key"),
                addrs(&r),
                s(&r, "policy"),
                s(&r, "workload"),
                s(&r, "holder"),
                s(&r, "node"),
                age(r.get("createdAt").and_then(Value::as_u64), t),
            ]);
        } else {
            tb.row(vec![
                s(&r, "network"),
                s(&r, "key"),
                addrs(&r),
                s(&r, "policy"),
                s(&r, "node"),
            ]);
        }
    }
    tb
}

fn pools_table(v: &Value, _wide: bool) -> Table {
    let mut tb = Table::new(vec!["NETWORK", "NAME", "ADDRESSES", "HELD"]).shrink(&[0, 1, 2]);
    for p in items(v) {
        let held = p
            .get("holders")
            .and_then(Value::as_object)
            .map_or(0, |h| h.len());
        let n = p
            .get("addresses")
            .and_then(Value::as_array)
            .map_or(0, |a| a.len());
        tb.row(vec![
            s(&p, "network"),
            s(&p, "name"),
            list(&p, "addresses"),
            format!("{held}/{n}"),
        ]);
    }
    tb
}

fn findings_table(findings: &[Value], wide: bool, with_repair: bool) -> Table {
    let mut tb = if wide || with_repair {
        Table::new(vec![
            "KIND", "NETWORK", "NODE", "SUBJECT", "DETAIL", "REPAIR",
        ])
        .shrink(&[1, 2, 3, 4, 5])
    } else {
        Table::new(vec!["KIND", "NETWORK", "NODE", "SUBJECT", "DETAIL"]).shrink(&[1, 2, 3, 4])
    };
    for f in findings {
        let mut row = vec![
            s(f, "kind"),
            s(f, "network"),
            s(f, "node"),
            s(f, "subject"),
            s(f, "detail"),
        ];
        if wide || with_repair {
            row.push(s(f, "repair"));
        }
        tb.row(row);
    }
    tb
}

fn query(pairs: &[(&str, &Option<String>)]) -> String {
    let q: Vec<String> = pairs
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={}", enc(v))))
        .collect();
    if q.is_empty() {
        String::new()
    } else {
        format!("?{}", q.join("&"))
    }
}

fn need_network(network: &Option<String>, what: &str) -> Res<String> {
    network
        .clone()
        .ok_or_else(|| Fail::new(EXIT_USAGE, format!("{what} needs --network NAME")))
}

fn get(
    c: &Client,
    kind: Kind,
    name: Option<String>,
    output: Option<Output>,
    network: Option<String>,
    node: Option<String>,
    pod: Option<String>,
) -> Res<()> {
    match kind {
        Kind::Networks => {
            let v = match &name {
                Some(n) => c.get(&format!("/v1/networks/{}", enc(n)))?,
                None => c.get("/v1/networks")?,
            };
            emit(&v, output, |w| networks_table(&v, w))
        }
        Kind::Ips => {
            if let Some(ip) = name {
                let v = c.get(&format!(
                    "/v1/ips/{}{}",
                    enc(&ip),
                    query(&[("network", &network)])
                ))?;
                return emit(&v, output, |w| ip_table(&v, w));
            }
            let v = c.get(&format!(
                "/v1/allocations{}",
                query(&[("network", &network), ("node", &node), ("pod", &pod)])
            ))?;
            emit(&v, output, |w| ips_table(&v, w))
        }
        Kind::Allocations => {
            let v = c.get(&format!(
                "/v1/allocations{}",
                query(&[("network", &network), ("node", &node), ("pod", &pod)])
            ))?;
            emit(&v, output, |w| allocations_table(&v, w))
        }
        Kind::Nodes => {
            let v = match &name {
                Some(n) => c.get(&format!("/v1/nodes/{}", enc(n)))?,
                None => c.get("/v1/nodes")?,
            };
            emit(&v, output, |w| nodes_table(&v, w))
        }
        Kind::Reservations => {
            let v = match &name {
                Some(k) => {
                    let net = need_network(&network, "get reservation KEY")?;
                    c.get(&format!(
                        "/v1/networks/{}/reservations/{}",
                        enc(&net),
                        enc(k)
                    ))?
                }
                None => c.get(&format!(
                    "/v1/reservations{}",
                    query(&[("network", &network)])
                ))?,
            };
            emit(&v, output, |w| reservations_table(&v, w))
        }
        Kind::Pools => {
            let net = need_network(&network, "get pools")?;
            let v = match &name {
                Some(p) => c.get(&format!("/v1/networks/{}/pools/{}", enc(&net), enc(p)))?,
                None => c.get(&format!("/v1/networks/{}/pools", enc(&net)))?,
            };
            emit(&v, output, |w| pools_table(&v, w))
        }
    }
}

fn ip_table(v: &Value, _wide: bool) -> Table {
    let mut tb = Table::new(vec!["ADDRESS", "NETWORK", "STATE", "NODE", "POD", "HOLDER"])
        .shrink(&[1, 3, 4, 5]);
    let holder = match v.get("fixed") {
        Some(f) if v.get("containerId").is_none() => format!("{}:{}", s(f, "kind"), s(f, "name")),
        _ => s(v, "handle"),
    };
    tb.row(vec![
        s(v, "address"),
        s(v, "network"),
        s(v, "state"),
        s(v, "node"),
        s(v, "pod"),
        holder,
    ]);
    tb
}

/// "Key:  value" lines; a value too long for the terminal continues on the next lines,
/// indented, never cut (IDs must stay whole).
fn kv_lines(rows: &[(&str, String)]) -> String {
    let w = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 2;
    let max = table_width(None).unwrap_or(80);
    let room = max.saturating_sub(w).max(20);
    let mut out = String::new();
    for (k, v) in rows {
        let chars: Vec<char> = v
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        let mut first = true;
        for chunk in chars.chunks(room) {
            let text: String = chunk.iter().collect();
            if first {
                out.push_str(&format!("{k:<w$}{text}\n"));
                first = false;
            } else {
                out.push_str(&format!("{:<w$}{text}\n", ""));
            }
        }
        if chars.is_empty() {
            out.push_str(&format!("{k}\n"));
        }
    }
    out
}

fn when(t: Option<u64>) -> String {
    match t {
        Some(t) => format!("{} ({} ago)", utc(t), age(Some(t), now())),
        None => "-".into(),
    }
}

/// Unix seconds as an RFC 3339 UTC time (days to civil date: Howard Hinnant's algorithm).
fn utc(t: u64) -> String {
    let (days, secs) = ((t / 86_400) as i64, t % 86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

fn describe(c: &Client, kind: DescribeKind, name: &str, output: Option<Output>) -> Res<()> {
    match kind {
        DescribeKind::Network => {
            let n = c.get(&format!("/v1/networks/{}", enc(name)))?;
            let u = c.get(&format!("/v1/networks/{}/usage", enc(name)))?;
            let v = json!({"network": n, "usage": u});
            if structured(output) {
                return emit(&v, output, |_| Table::new(vec![]));
            }
            let mut out = kv_lines(&[
                ("Name:", s(&n, "name")),
                ("Pools:", pools_of(&n)),
                (
                    "Block sizes:",
                    format!(
                        "/{} (IPv4), /{} (IPv6)",
                        num(&n, "blockPrefixV4"),
                        num(&n, "blockPrefixV6")
                    ),
                ),
                ("Cooldown:", format!("{}s", num(&n, "cooldownSeconds"))),
                ("Strict affinity:", s(&n, "strictAffinity")),
                ("Created:", when(n.get("createdAt").and_then(Value::as_u64))),
                (
                    "Blocks:",
                    format!(
                        "{} of {} claimed",
                        num(&u, "blocksClaimed"),
                        num(&u, "blocksTotal")
                    ),
                ),
            ]);
            let mut fam = Table::new(vec![
                "FAMILY", "SIZE", "USED", "RESERVED", "COOLING", "FREE",
            ]);
            for f in items(u.get("families").unwrap_or(&Value::Null)) {
                fam.row(vec![
                    format!("IPv{}", num(&f, "family")),
                    num(&f, "size").to_string(),
                    num(&f, "used").to_string(),
                    num(&f, "reserved").to_string(),
                    num(&f, "cooling").to_string(),
                    num(&f, "free").to_string(),
                ]);
            }
            out.push_str("\nAddresses:\n");
            out.push_str(&fam.render(table_width(output)));
            let mut nodes =
                Table::new(vec!["NODE", "PODS' ADDRESSES", "BLOCKS", "BLOCK USE"]).shrink(&[0, 2]);
            for nd in items(u.get("nodes").unwrap_or(&Value::Null)) {
                nodes.row(vec![
                    s(&nd, "node"),
                    num(&nd, "used").to_string(),
                    list(&nd, "blocks"),
                    format!("{}/{}", num(&nd, "blockUsed"), num(&nd, "blockSize")),
                ]);
            }
            out.push_str("\nNodes:\n");
            out.push_str(&nodes.render(table_width(output)));
            print!("{out}");
            Ok(())
        }
        DescribeKind::Ip => {
            let v = c.get(&format!("/v1/ips/{}", enc(name)))?;
            if structured(output) {
                return emit(&v, output, |_| Table::new(vec![]));
            }
            let fixed = match v.get("fixed") {
                Some(f) if f.is_object() => {
                    let p = f
                        .get("policy")
                        .and_then(Value::as_str)
                        .map(|p| format!(" (release policy {p})"))
                        .unwrap_or_default();
                    format!("{} {}{p}", s(f, "kind"), s(f, "name"))
                }
                _ => "-".into(),
            };
            print!(
                "{}",
                kv_lines(&[
                    ("Address:", s(&v, "address")),
                    ("Network:", s(&v, "network")),
                    ("State:", s(&v, "state")),
                    ("Node:", s(&v, "node")),
                    ("Pod:", s(&v, "pod")),
                    ("Container:", s(&v, "containerId")),
                    ("Interface:", s(&v, "ifname")),
                    ("Handle:", s(&v, "handle")),
                    ("Since:", when(v.get("since").and_then(Value::as_u64))),
                    ("Fixed:", fixed),
                    (
                        "Block:",
                        format!("{} (node {})", s(&v, "block"), s(&v, "blockNode"))
                    ),
                ])
            );
            Ok(())
        }
        DescribeKind::Node => {
            let v = c.get(&format!("/v1/nodes/{}", enc(name)))?;
            if structured(output) {
                return emit(&v, output, |_| Table::new(vec![]));
            }
            let mut out = kv_lines(&[
                ("Name:", s(&v, "name")),
                ("Registered:", s(&v, "registered")),
                (
                    "Underlay:",
                    format!("{} ({})", s(&v, "underlayIp"), s(&v, "underlaySubnet")),
                ),
                ("Mode:", s(&v, "mode")),
                ("Networks:", list(&v, "networks")),
                ("Pods:", num(&v, "allocations").to_string()),
                ("Addresses:", num(&v, "addresses").to_string()),
            ]);
            let mut tb = Table::new(vec!["NETWORK", "BLOCK", "USED"]).shrink(&[0]);
            for b in items(v.get("blocks").unwrap_or(&Value::Null)) {
                tb.row(vec![
                    s(&b, "network"),
                    s(&b, "cidr"),
                    format!("{}/{}", num(&b, "used"), num(&b, "size")),
                ]);
            }
            out.push_str("\nBlocks:\n");
            out.push_str(&tb.render(table_width(output)));
            print!("{out}");
            Ok(())
        }
    }
}

/// One manifest document, as the API wants it.
enum Manifest {
    Network { name: String, body: Value },
    Reservation { network: String, body: Value },
    Pool { network: String, body: Value },
}

fn read_manifests(file: &Path) -> Res<Vec<Manifest>> {
    let text = if file == Path::new("-") {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(|e| Fail::new(EXIT_USAGE, format!("reading stdin: {e}")))?;
        s
    } else {
        std::fs::read_to_string(file)
            .map_err(|e| Fail::new(EXIT_USAGE, format!("{}: {e}", file.display())))?
    };
    let mut docs = Vec::new();
    // JSON is YAML too; a JSON array is a list of documents.
    for d in serde_yaml_ng::Deserializer::from_str(&text) {
        let v = Value::deserialize(d)
            .map_err(|e| Fail::new(EXIT_USAGE, format!("{}: {e}", file.display())))?;
        match v {
            Value::Null => {}
            Value::Array(a) => docs.extend(a),
            other => docs.push(other),
        }
    }
    let mut out = Vec::new();
    for (i, d) in docs.into_iter().enumerate() {
        let at = |field: &str, why: &str| {
            Fail::new(
                EXIT_USAGE,
                format!("{} document {}: {field}: {why}", file.display(), i + 1),
            )
        };
        let kind = d
            .get("kind")
            .and_then(Value::as_str)
            .ok_or_else(|| at("kind", "missing: Network, Reservation or AddressPool"))?
            .to_string();
        let name = d
            .pointer("/metadata/name")
            .or_else(|| d.get("name"))
            .and_then(Value::as_str)
            .ok_or_else(|| at("metadata.name", "missing: give the resource a name"))?
            .to_string();
        let mut spec = d.get("spec").cloned().unwrap_or_else(|| json!({}));
        let Some(obj) = spec.as_object_mut() else {
            return Err(at("spec", "must be a mapping"));
        };
        let network = obj
            .remove("network")
            .or_else(|| d.pointer("/metadata/network").cloned())
            .and_then(|n| n.as_str().map(str::to_string));
        match kind.as_str() {
            "Network" => {
                obj.insert("name".into(), json!(name));
                out.push(Manifest::Network { name, body: spec });
            }
            "Reservation" => {
                let network = network
                    .ok_or_else(|| at("spec.network", "missing: name the network it belongs to"))?;
                obj.insert("key".into(), json!(name));
                out.push(Manifest::Reservation {
                    network,
                    body: spec,
                });
            }
            "AddressPool" => {
                let network = network
                    .ok_or_else(|| at("spec.network", "missing: name the network it belongs to"))?;
                obj.insert("name".into(), json!(name));
                out.push(Manifest::Pool {
                    network,
                    body: spec,
                });
            }
            other => {
                return Err(at(
                    "kind",
                    &format!("{other:?} is not Network, Reservation or AddressPool"),
                ));
            }
        }
    }
    if out.is_empty() {
        return Err(Fail::new(
            EXIT_USAGE,
            format!("{}: no manifest in it", file.display()),
        ));
    }
    Ok(out)
}

fn create_or_apply(c: &Client, file: &Path, apply: bool) -> Res<()> {
    let mut first_err: Option<Fail> = None;
    for m in read_manifests(file)? {
        let r = match &m {
            Manifest::Network { name, body } => {
                if apply {
                    c.call("PUT", &format!("/v1/networks/{}", enc(name)), Some(body))
                        .map(|_| format!("network/{name} applied"))
                } else {
                    c.call("POST", "/v1/networks", Some(body))
                        .map(|_| format!("network/{name} created"))
                }
            }
            Manifest::Reservation { network, body } => apply_fixed(
                c,
                apply,
                network,
                body,
                Fixed {
                    collection: "reservations",
                    id_field: "key",
                    label: "reservation",
                    noun: "reservation",
                },
            ),
            Manifest::Pool { network, body } => apply_fixed(
                c,
                apply,
                network,
                body,
                Fixed {
                    collection: "pools",
                    id_field: "name",
                    label: "pool",
                    noun: "address pool",
                },
            ),
        };
        match r {
            Ok(line) => println!("{line}"),
            Err(e) => {
                eprintln!("error: {}", e.msg);
                first_err.get_or_insert(e);
            }
        }
    }
    match first_err {
        Some(e) => Err(Fail::new(e.code, String::new())),
        None => Ok(()),
    }
}

/// A reservation or an address pool, as [`apply_fixed`] names it.
struct Fixed {
    /// The API's collection under the network.
    collection: &'static str,
    /// The body field holding its name.
    id_field: &'static str,
    /// `<label>/<name>` in the output.
    label: &'static str,
    /// In errors.
    noun: &'static str,
}

/// Creates a reservation or an address pool; with `apply`, one that exists with the same
/// addresses is left alone and one with other addresses is a conflict.
fn apply_fixed(c: &Client, apply: bool, network: &str, body: &Value, f: Fixed) -> Res<String> {
    let name = s(body, f.id_field);
    let label = f.label;
    let path = format!("/v1/networks/{}/{}", enc(network), f.collection);
    match c.get(&format!("{path}/{}", enc(&name))) {
        Ok(existing) if apply => {
            if same_addresses(&existing, body) {
                Ok(format!("{label}/{name} unchanged"))
            } else {
                Err(Fail::new(
                    EXIT_CONFLICT,
                    format!(
                        "{} {name:?} exists with other addresses ({}): release it first",
                        f.noun,
                        list(&existing, "addresses")
                    ),
                ))
            }
        }
        _ => c
            .call("POST", &path, Some(body))
            .map(|_| format!("{label}/{name} created")),
    }
}

fn same_addresses(existing: &Value, body: &Value) -> bool {
    let norm = |v: &Value| {
        let mut a: Vec<String> = v
            .get("addresses")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .map(|x| strip_len(x.as_str().unwrap_or("")))
                    .collect()
            })
            .unwrap_or_default();
        a.sort();
        a
    };
    norm(existing) == norm(body)
}

fn check(
    c: &Client,
    repair: bool,
    yes: bool,
    grace: Option<u64>,
    output: Option<Output>,
) -> Res<()> {
    let v = if repair {
        let mut body = json!({"yes": yes});
        if let Some(g) = grace {
            body["graceSeconds"] = json!(g);
        }
        c.call("POST", "/v1/check/repair", Some(&body))?
    } else {
        c.get(&format!(
            "/v1/check{}",
            query(&[("graceSeconds", &grace.map(|g| g.to_string()))])
        ))?
    };
    let findings = items(v.get("findings").unwrap_or(&Value::Array(vec![])));
    if structured(output) {
        emit(&v, output, |_| Table::new(vec![]))?;
    } else if findings.is_empty() {
        let nodes = v
            .get("nodes")
            .and_then(Value::as_array)
            .map_or(0, |n| n.len());
        println!(
            "No problems found ({} allocations, {nodes} nodes compared).",
            num(&v, "allocations")
        );
    } else {
        let wide = output == Some(Output::Wide);
        print!(
            "{}",
            findings_table(&findings, wide, repair).render(table_width(output))
        );
        if repair && !yes {
            println!(
                "\n{} finding(s). This is the plan: run again with --yes to carry it out.",
                findings.len()
            );
        }
    }
    if !structured(output)
        && let Some(missing) = v.get("nodesWithoutReport").and_then(Value::as_array)
        && !missing.is_empty()
    {
        // A node without a report had no kernel-based verdicts: say which, wrapped, never cut.
        print!(
            "{}",
            kv_lines(&[(
                "Not checked (no report):",
                list(&v, "nodesWithoutReport").replace(',', ", ")
            )])
        );
    }
    if repair && yes {
        let outcomes = items(v.get("outcomes").unwrap_or(&Value::Array(vec![])));
        if !structured(output) && !outcomes.is_empty() {
            let mut tb = Table::new(vec!["STATUS", "KIND", "SUBJECT", "MESSAGE"]).shrink(&[2, 3]);
            for o in &outcomes {
                let f = o.get("finding").cloned().unwrap_or(Value::Null);
                tb.row(vec![
                    s(o, "status"),
                    s(&f, "kind"),
                    s(&f, "subject"),
                    s(o, "message"),
                ]);
            }
            print!("\n{}", tb.render(table_width(output)));
        }
        // Findings remain unless every one was repaired, or handed to its node's weftd.
        let all_done = outcomes.len() >= findings.len()
            && outcomes
                .iter()
                .all(|o| matches!(s(o, "status").as_str(), "done" | "queued"));
        if !findings.is_empty() && !all_done {
            return Err(Fail::new(
                EXIT_FINDINGS,
                "some findings were not repaired (see the table)",
            ));
        }
        return Ok(());
    }
    if findings.is_empty() {
        Ok(())
    } else {
        Err(Fail::new(
            EXIT_FINDINGS,
            format!("{} finding(s)", findings.len()),
        ))
    }
}

fn run(cli: Cli) -> Res<()> {
    if let Cmd::Completion { shell } = &cli.cmd {
        let mut cmd = Cli::command();
        clap_complete::generate(*shell, &mut cmd, "weftctl", &mut std::io::stdout());
        return Ok(());
    }
    let c = Client::new(&cli)?;
    match cli.cmd {
        Cmd::Get {
            kind,
            name,
            output,
            network,
            node,
            pod,
        } => get(&c, kind, name, output, network, node, pod),
        Cmd::Describe { kind, name, output } => describe(&c, kind, &name, output),
        Cmd::Create { file } => create_or_apply(&c, &file, false),
        Cmd::Apply { file } => create_or_apply(&c, &file, true),
        Cmd::Delete {
            kind,
            name,
            network,
            force,
        } => {
            let (path, what) = match kind {
                DeleteKind::Network => (
                    format!(
                        "/v1/networks/{}{}",
                        enc(&name),
                        if force { "?force=true" } else { "" }
                    ),
                    format!("network/{name}"),
                ),
                DeleteKind::Reservation => {
                    let net = need_network(&network, "delete reservation")?;
                    (
                        format!("/v1/networks/{}/reservations/{}", enc(&net), enc(&name)),
                        format!("reservation/{name}"),
                    )
                }
                DeleteKind::Pool => {
                    let net = need_network(&network, "delete pool")?;
                    (
                        format!("/v1/networks/{}/pools/{}", enc(&net), enc(&name)),
                        format!("pool/{name}"),
                    )
                }
            };
            let v = c.call("DELETE", &path, None)?;
            if kind == DeleteKind::Network {
                println!(
                    "{what} deleted ({} allocations, {} reservations, {} pools, {} blocks removed)",
                    num(&v, "allocations"),
                    num(&v, "reservations"),
                    num(&v, "pools"),
                    num(&v, "blocks")
                );
            } else {
                println!("{what} deleted");
            }
            Ok(())
        }
        Cmd::Reserve {
            key,
            addresses,
            network,
            policy,
            workload,
            ordinal,
        } => {
            let mut body = json!({"key": key, "addresses": addresses, "policy": policy});
            if let Some(w) = workload {
                body["workload"] = json!(w);
            }
            if let Some(o) = ordinal {
                body["ordinal"] = json!(o);
            }
            let v = c.call(
                "POST",
                &format!("/v1/networks/{}/reservations", enc(&network)),
                Some(&body),
            )?;
            println!("reservation/{key} created: {}", list(&v, "addresses"));
            Ok(())
        }
        Cmd::Release {
            name,
            network,
            pool,
        } => {
            let (coll, what) = if pool {
                ("pools", "pool")
            } else {
                ("reservations", "reservation")
            };
            let v = c.call(
                "DELETE",
                &format!("/v1/networks/{}/{coll}/{}", enc(&network), enc(&name)),
                None,
            )?;
            println!("{what}/{name} released: {}", list(&v, "addresses"));
            Ok(())
        }
        Cmd::Check {
            repair,
            yes,
            grace_seconds,
            output,
        } => check(&c, repair, yes, grace_seconds, output),
        Cmd::Completion { .. } => Ok(()),
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_USAGE } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            if !f.msg.is_empty() {
                eprintln!("error: {}", f.msg);
            }
            ExitCode::from(f.code)
        }
    }
}

#[cfg(test)]
mod time_tests {
    #[test]
    fn utc_formats_unix_seconds() {
        assert_eq!(super::utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(super::utc(1_795_272_260), "2026-11-21T14:44:20Z");
    }
}
