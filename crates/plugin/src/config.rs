//! The weft and weft-ipam configurations: parsed from the CNI config, checked field by field,
//! with errors that name the field, the value and the fix.
use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::IpNet;
use serde_json::{Map, Value};
use weft_cni::CniError;
use weft_cni::config::NetConf;
use weft_cni::error::code;
use weft_cni::result::Route;
use weft_ipam::{NetworkSpec, PoolSpec};

pub const DEFAULT_BRIDGE: &str = "weft0";
pub const DEFAULT_MTU: u32 = 1500;
pub const DEFAULT_DATA_DIR: &str = "/var/lib/weft";
/// The IPv4 GSO/GRO maximum size `bigTcp` gives both veth ends (Cilium's BIG TCP size).
pub const BIG_TCP_SIZE: u32 = 196_608;

const STANDARD_KEYS: &[&str] = &[
    "cniVersion",
    "name",
    "type",
    "ipam",
    "dns",
    "capabilities",
    "runtimeConfig",
    "prevResult",
    "args",
];
const WEFT_KEYS: &[&str] = &[
    "mode",
    "bridge",
    "mtu",
    "masquerade",
    "hairpin",
    "underlay",
    "reportSocket",
    "bigTcp",
    "fastPath",
];
const IPAM_KEYS: &[&str] = &[
    "fixedIPs",
    "strictAffinity",
    "store",
    "type",
    "pools",
    "cooldownSeconds",
    "dataDir",
    "node",
    "routes",
    "blockPrefixV4",
    "blockPrefixV6",
];
const POOL_KEYS: &[&str] = &["subnet", "gateway", "rangeStart", "rangeEnd", "exclude"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Bridge,
    Routed,
    /// Pods on the physical subnet: see [`crate::underlay`].
    Underlay,
}

/// Where addresses come from.
#[derive(Debug, Clone)]
pub enum IpamSource {
    /// Weft's IPAM, in process, on the embedded store.
    Weft(IpamConfig),
    /// Another IPAM plugin, run as the CNI spec's delegation.
    Delegate(String),
}

#[derive(Debug, Clone)]
pub struct IpamConfig {
    pub store: StoreConfig,
    pub spec: NetworkSpec,
    pub fixed: Vec<crate::fixed_rules::Rule>,
    pub data_dir: PathBuf,
    pub node: String,
    pub routes: Vec<Route>,
}

#[derive(Debug, Clone)]
pub struct WeftConfig {
    pub name: String,
    pub mode: Mode,
    pub bridge: String,
    pub mtu: u32,
    pub masquerade: bool,
    pub hairpin: bool,
    /// Routed mode only: both veth ends take IPv4 GSO/GRO packets of [`BIG_TCP_SIZE`] (BIG TCP).
    pub big_tcp: bool,
    /// Routed mode only: the BPF fast path (see [`crate::attach::fast_path`]); the network's
    /// pools are where it sends packets without the node's IP stack. Empty: off. On by default
    /// in routed mode with Weft's IPAM; `"fastPath": false` turns it off.
    pub fast_path: Vec<IpNet>,
    /// `"fastPath": true` was given: a kernel that refuses the program fails the ADD. By
    /// default such a pod is attached without the fast path (the kernel's forwarding only).
    pub fast_path_required: bool,
    pub ipam: IpamSource,
    /// Set in underlay mode (and only then). With bridge attach, `bridge` above is its bridge.
    pub underlay: Option<crate::underlay::UnderlayConfig>,
}

pub(crate) fn invalid(net: &str, field: &str, value: &Value, fix: &str) -> CniError {
    CniError::invalid_config(format!("network \"{net}\": {field} {value} {fix}"))
}

pub(crate) fn check_keys(
    net: &str,
    obj: &Map<String, Value>,
    at: &str,
    allowed: &[&[&str]],
) -> Result<(), CniError> {
    for (k, v) in obj {
        let known = allowed.iter().any(|set| set.contains(&k.as_str()))
            || (at.is_empty() && k.starts_with("cni.dev/"));
        if !known {
            let all: Vec<&str> = allowed.iter().flat_map(|s| s.iter().copied()).collect();
            return Err(CniError::new(
                code::UNSUPPORTED_FIELD,
                format!(
                    "network \"{net}\": unknown key {at}{k} (value {v}); remove it or use one of: {}",
                    all.join(", ")
                ),
            ));
        }
    }
    Ok(())
}

pub(crate) fn get_bool(
    net: &str,
    obj: &Map<String, Value>,
    key: &str,
    at: &str,
) -> Result<bool, CniError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(v) => Err(invalid(
            net,
            &format!("{at}{key}"),
            v,
            "must be true or false",
        )),
    }
}

fn get_u64(
    net: &str,
    obj: &Map<String, Value>,
    key: &str,
    at: &str,
    range: (u64, u64),
) -> Result<Option<u64>, CniError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_u64() {
            Some(n) if n >= range.0 && n <= range.1 => Ok(Some(n)),
            _ => Err(invalid(
                net,
                &format!("{at}{key}"),
                v,
                &format!("must be a whole number from {} to {}", range.0, range.1),
            )),
        },
    }
}

pub(crate) fn get_str<'a>(
    net: &str,
    obj: &'a Map<String, Value>,
    key: &str,
    at: &str,
) -> Result<Option<&'a str>, CniError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(v) => Err(invalid(net, &format!("{at}{key}"), v, "must be a string")),
    }
}

fn parse_net(net: &str, field: &str, v: &Value) -> Result<IpNet, CniError> {
    v.as_str()
        .and_then(|s| s.parse::<IpNet>().ok())
        .ok_or_else(|| {
            invalid(
                net,
                field,
                v,
                "is not a valid CIDR: write it like \"198.18.0.0/24\" or \"fd00:18::/64\"",
            )
        })
}

fn parse_addr(net: &str, field: &str, v: &Value) -> Result<IpAddr, CniError> {
    v.as_str()
        .and_then(|s| s.parse::<IpAddr>().ok())
        .ok_or_else(|| {
            invalid(
                net,
                field,
                v,
                "is not a valid IP address: write it like \"198.18.0.1\" or \"fd00:18::1\"",
            )
        })
}

fn family_of(a: &IpAddr) -> u8 {
    if a.is_ipv4() { 4 } else { 6 }
}

fn parse_pool(net: &str, i: usize, v: &Value) -> Result<PoolSpec, CniError> {
    let at = format!("ipam.pools[{i}].");
    let obj = v.as_object().ok_or_else(|| {
        invalid(
            net,
            &format!("ipam.pools[{i}]"),
            v,
            "must be an object like {\"subnet\": \"198.18.0.0/24\"}",
        )
    })?;
    check_keys(net, obj, &at, &[POOL_KEYS])?;
    let subnet = parse_net(
        net,
        &format!("{at}subnet"),
        obj.get("subnet").unwrap_or(&Value::Null),
    )?;
    let fam = if subnet.addr().is_ipv4() { 4 } else { 6 };
    let addr_field = |key: &str| -> Result<Option<IpAddr>, CniError> {
        match obj.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => {
                let a = parse_addr(net, &format!("{at}{key}"), v)?;
                if family_of(&a) != fam {
                    return Err(invalid(
                        net,
                        &format!("{at}{key}"),
                        v,
                        &format!("is not of the same IP family as the subnet {subnet}"),
                    ));
                }
                Ok(Some(a))
            }
        }
    };
    let exclude = match obj.get("exclude") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(j, x)| parse_net(net, &format!("{at}exclude[{j}]"), x))
            .collect::<Result<_, _>>()?,
        Some(v) => {
            return Err(invalid(
                net,
                &format!("{at}exclude"),
                v,
                "must be a list of CIDRs",
            ));
        }
    };
    Ok(PoolSpec {
        subnet,
        gateway: addr_field("gateway")?,
        range_start: addr_field("rangeStart")?,
        range_end: addr_field("rangeEnd")?,
        exclude,
    })
}

pub(crate) fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

/// Reads the `ipam` object. `default_gateway`: put the subnet's first address as gateway when
/// none is given (bridge mode, where the gateway lives on the bridge).
pub fn parse_ipam(conf: &NetConf, default_gateway: bool) -> Result<IpamConfig, CniError> {
    let net = conf.name.as_str();
    let ipam = conf.ipam.as_ref().and_then(Value::as_object).ok_or_else(|| {
        CniError::invalid_config(format!(
            "network \"{net}\": the ipam section is missing; add \"ipam\": {{\"pools\": [{{\"subnet\": \"198.18.0.0/24\"}}]}}"
        ))
    })?;
    check_keys(net, ipam, "ipam.", &[IPAM_KEYS])?;
    let pools_v = ipam.get("pools").unwrap_or(&Value::Null);
    let items = pools_v.as_array().ok_or_else(|| {
        invalid(
            net,
            "ipam.pools",
            pools_v,
            "must be a list of pools like [{\"subnet\": \"198.18.0.0/24\"}]",
        )
    })?;
    let mut pools = items
        .iter()
        .enumerate()
        .map(|(i, p)| parse_pool(net, i, p))
        .collect::<Result<Vec<_>, _>>()?;
    if default_gateway {
        for p in &mut pools {
            if p.gateway.is_none() {
                p.gateway = Some(weft_ipam::ip_add(p.subnet.network(), 1));
            }
        }
    }
    let mut spec = NetworkSpec::new(net, pools);
    if let Some(c) = get_u64(net, ipam, "cooldownSeconds", "ipam.", (0, 86_400))? {
        spec.cooldown_seconds = c;
    }
    spec.strict_affinity = get_bool(net, ipam, "strictAffinity", "ipam.")?;
    if let Some(b) = get_u64(net, ipam, "blockPrefixV4", "ipam.", (20, 30))? {
        spec.block_prefix_v4 = b as u8;
    }
    if let Some(b) = get_u64(net, ipam, "blockPrefixV6", "ipam.", (116, 126))? {
        spec.block_prefix_v6 = b as u8;
    }
    spec.validate()
        .map_err(|e| CniError::invalid_config(format!("{e} (in ipam.pools)")))?;
    let data_dir =
        PathBuf::from(get_str(net, ipam, "dataDir", "ipam.")?.unwrap_or(DEFAULT_DATA_DIR));
    if !data_dir.is_absolute() {
        return Err(invalid(
            net,
            "ipam.dataDir",
            &Value::from(data_dir.display().to_string()),
            "must be an absolute path",
        ));
    }
    let node = match get_str(net, ipam, "node", "ipam.")? {
        Some(n) if !n.is_empty() && !n.contains('/') => n.to_string(),
        Some(n) => {
            return Err(invalid(
                net,
                "ipam.node",
                &Value::from(n),
                "must be a non-empty name without '/'",
            ));
        }
        None => hostname(),
    };
    let routes = match ipam.get("routes") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let dst = parse_net(
                    net,
                    &format!("ipam.routes[{i}].dst"),
                    r.get("dst").unwrap_or(&Value::Null),
                )?;
                let gw = match r.get("gw") {
                    None | Some(Value::Null) => None,
                    Some(g) => Some(parse_addr(net, &format!("ipam.routes[{i}].gw"), g)?),
                };
                Ok(Route::new(dst, gw))
            })
            .collect::<Result<_, CniError>>()?,
        Some(v) => {
            return Err(invalid(
                net,
                "ipam.routes",
                v,
                "must be a list like [{\"dst\": \"0.0.0.0/0\"}]",
            ));
        }
    };
    let fixed = crate::fixed_rules::parse_rules(net, ipam.get("fixedIPs"))?;
    for (i, rule) in fixed.iter().enumerate() {
        for (j, a) in rule.addresses.iter().enumerate() {
            if !spec.pools.iter().any(|p| p.subnet.contains(a)) {
                let pools: Vec<String> = spec.pools.iter().map(|p| p.subnet.to_string()).collect();
                return Err(invalid(
                    net,
                    &format!("ipam.fixedIPs[{i}].addresses[{j}]"),
                    &Value::from(a.to_string()),
                    &format!(
                        "is outside the network's pools ({}): a pool's addresses must come from them",
                        pools.join(", ")
                    ),
                ));
            }
        }
    }
    let store = parse_store(net, ipam.get("store"))?;
    Ok(IpamConfig {
        store,
        spec,
        fixed,
        data_dir,
        node,
        routes,
    })
}

/// Where the IPAM keeps its records.
#[derive(Debug, Clone, PartialEq)]
pub enum StoreConfig {
    /// `<dataDir>/store` on this host.
    Embedded,
    /// A cluster's etcd.
    Etcd {
        endpoints: Vec<String>,
        timeout: std::time::Duration,
        prefix: Option<String>,
    },
}

/// `ipam.store`: absent or `{"type": "embedded"}`, or
/// `{"type": "etcd", "endpoints": ["http://127.0.0.1:2379"], "timeoutSeconds": 2, "prefix": "/a"}`.
fn parse_store(net: &str, v: Option<&Value>) -> Result<StoreConfig, CniError> {
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Ok(StoreConfig::Embedded);
    };
    let obj = v.as_object().ok_or_else(|| invalid(net, "ipam.store", v, "must be an object like {\"type\": \"etcd\", \"endpoints\": [\"http://127.0.0.1:2379\"]}"))?;
    check_keys(
        net,
        obj,
        "ipam.store.",
        &[&["type", "endpoints", "timeoutSeconds", "prefix"]],
    )?;
    match get_str(net, obj, "type", "ipam.store.")? {
        None | Some("embedded") => Ok(StoreConfig::Embedded),
        Some("etcd") => {
            let ev = obj.get("endpoints").unwrap_or(&Value::Null);
            let endpoints: Vec<String> = ev
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|e| e.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            let well_formed = |e: &String| e.starts_with("http://") || e.starts_with("https://");
            if endpoints.is_empty()
                || !endpoints.iter().all(well_formed)
                || ev.as_array().map(Vec::len) != Some(endpoints.len())
            {
                return Err(invalid(
                    net,
                    "ipam.store.endpoints",
                    ev,
                    "must be a non-empty list of URLs like \"http://127.0.0.1:2379\"",
                ));
            }
            let secs = get_u64(net, obj, "timeoutSeconds", "ipam.store.", (1, 60))?.unwrap_or(2);
            let prefix = get_str(net, obj, "prefix", "ipam.store.")?.map(str::to_string);
            Ok(StoreConfig::Etcd {
                endpoints,
                timeout: std::time::Duration::from_secs(secs),
                prefix,
            })
        }
        Some(other) => Err(invalid(
            net,
            "ipam.store.type",
            &Value::from(other),
            "is not a store: use \"embedded\" or \"etcd\"",
        )),
    }
}

/// The IPAM-only plugin's configuration (`"ipam": {"type": "weft-ipam", ...}`).
pub fn parse_ipam_plugin(conf: &NetConf) -> Result<IpamConfig, CniError> {
    parse_ipam(conf, false)
}

impl WeftConfig {
    pub fn parse(conf: &NetConf) -> Result<WeftConfig, CniError> {
        let net = conf.name.as_str();
        let obj = conf
            .raw
            .as_object()
            .ok_or_else(|| CniError::decode("the network configuration is not a JSON object"))?;
        check_keys(net, obj, "", &[STANDARD_KEYS, WEFT_KEYS])?;
        crate::report::check_config(net, obj)?;
        let mode = match get_str(net, obj, "mode", "")? {
            None | Some("bridge") => Mode::Bridge,
            Some("routed") => Mode::Routed,
            Some("underlay") => Mode::Underlay,
            Some(other) => {
                return Err(invalid(
                    net,
                    "mode",
                    &Value::from(other),
                    "is not a mode: use \"bridge\", \"routed\" or \"underlay\"",
                ));
            }
        };
        let underlay = crate::underlay::parse(net, mode, obj.get("underlay"))?;
        let bridge = match underlay.as_ref().and_then(|u| u.bridge.clone()) {
            Some(b) => b,
            None => get_str(net, obj, "bridge", "")?
                .unwrap_or(DEFAULT_BRIDGE)
                .to_string(),
        };
        if bridge.is_empty()
            || bridge.len() > 15
            || bridge.contains(['/', ':', ' '])
            || bridge == "."
            || bridge == ".."
        {
            return Err(invalid(
                net,
                "bridge",
                &Value::from(bridge.as_str()),
                "is not a valid interface name: use 1 to 15 characters without '/', ':' or spaces",
            ));
        }
        let mtu = get_u64(net, obj, "mtu", "", (576, 65535))?.map_or(DEFAULT_MTU, |m| m as u32);
        let masquerade = get_bool(net, obj, "masquerade", "")?;
        let hairpin = get_bool(net, obj, "hairpin", "")?;
        let big_tcp = get_bool(net, obj, "bigTcp", "")?;
        if big_tcp && mode != Mode::Routed {
            return Err(invalid(
                net,
                "bigTcp",
                &Value::Bool(true),
                "is for routed mode (a veth pair per pod) only: remove it, or use \"mode\": \"routed\" (underlay macvlan pods take the uplink's GSO size, set it there)",
            ));
        }
        let ipam = match conf.ipam_type() {
            None | Some("weft-ipam") | Some("weft") => {
                IpamSource::Weft(parse_ipam(conf, mode == Mode::Bridge)?)
            }
            Some(other) => IpamSource::Delegate(other.to_string()),
        };
        let asked = match obj.get("fastPath") {
            None | Some(Value::Null) => None,
            Some(_) => Some(get_bool(net, obj, "fastPath", "")?),
        };
        let fast_path = match (asked, mode, &ipam) {
            (Some(false), _, _) => Vec::new(),
            (_, Mode::Routed, IpamSource::Weft(ic)) => {
                ic.spec.pools.iter().map(|p| p.subnet).collect()
            }
            (None, _, _) => Vec::new(),
            (Some(true), _, _) => {
                return Err(invalid(
                    net,
                    "fastPath",
                    &Value::Bool(true),
                    "is for routed mode with Weft's IPAM (it needs the network's pools): remove it, or use \"mode\": \"routed\" without another ipam.type",
                ));
            }
        };
        Ok(WeftConfig {
            name: net.to_string(),
            mode,
            bridge,
            mtu,
            masquerade,
            hairpin,
            big_tcp,
            fast_path,
            fast_path_required: asked == Some(true),
            ipam,
            underlay,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &str) -> Result<WeftConfig, CniError> {
        let conf = format!(
            r#"{{"cniVersion": "1.1.0", "name": "n", "type": "weft", {extra}
                "ipam": {{"pools": [{{"subnet": "198.18.0.0/24"}}], "dataDir": "/nonexistent"}}}}"#
        );
        WeftConfig::parse(&NetConf::parse(conf.as_bytes())?)
    }

    #[test]
    fn fast_path_is_on_by_default_in_routed_mode_only() {
        let pool: Vec<IpNet> = vec!["198.18.0.0/24".parse().unwrap()];
        let c = parse(r#""mode": "routed","#).unwrap();
        assert_eq!((c.fast_path, c.fast_path_required), (pool.clone(), false));
        let c = parse(r#""mode": "routed", "fastPath": true,"#).unwrap();
        assert_eq!((c.fast_path, c.fast_path_required), (pool, true));
        let c = parse(r#""mode": "routed", "fastPath": false,"#).unwrap();
        assert!(c.fast_path.is_empty());
        let c = parse(r#""mode": "bridge","#).unwrap();
        assert!(c.fast_path.is_empty());
        let e = parse(r#""mode": "bridge", "fastPath": true,"#).unwrap_err();
        assert!(e.to_string().contains("fastPath"), "{e}");
        let e = parse(r#""mode": "routed", "fastPath": "yes","#).unwrap_err();
        assert!(e.to_string().contains("fastPath"), "{e}");
    }
}
