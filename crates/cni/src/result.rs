//! The ADD result and its conversion between spec versions.
//!
//! One in-memory shape ([`CniResult`]) serves every version; [`CniResult::to_json`] writes the
//! fields the asked version has and [`CniResult::from_json`] reads any supported version:
//!
//! | version | ips\[].version | route mtu/advmss/priority/table/scope | interface mtu/socketPath/pciID |
//! | --- | --- | --- | --- |
//! | 0.3.0, 0.3.1, 0.4.0 | "4" / "6" | – | – |
//! | 1.0.0 | – | – | – |
//! | 1.1.0 | – | yes | yes |

use std::net::IpAddr;

use ipnet::IpNet;
use serde_json::{Map, Value, json};

use crate::CURRENT_VERSION;
use crate::error::CniError;
use crate::version;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    /// Empty when unknown (omitted from JSON).
    pub mac: String,
    /// 1.1.0 only.
    pub mtu: Option<u32>,
    /// The netns path for interfaces inside the container; `None` for host interfaces.
    pub sandbox: Option<String>,
    /// 1.1.0 only.
    pub socket_path: Option<String>,
    /// 1.1.0 only.
    pub pci_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpConfig {
    /// Address and prefix length, e.g. 198.18.0.5/24 (host bits kept).
    pub address: IpNet,
    pub gateway: Option<IpAddr>,
    /// Index into [`CniResult::interfaces`]; IPAM plugins leave it out.
    pub interface: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub dst: IpNet,
    pub gw: Option<IpAddr>,
    /// 1.1.0 only, like the rest below.
    pub mtu: Option<u32>,
    pub advmss: Option<u32>,
    pub priority: Option<u32>,
    pub table: Option<u32>,
    pub scope: Option<u32>,
}

impl Route {
    /// A route with only destination and gateway.
    pub fn new(dst: IpNet, gw: Option<IpAddr>) -> Route {
        Route {
            dst,
            gw,
            mtu: None,
            advmss: None,
            priority: None,
            table: None,
            scope: None,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dns {
    pub nameservers: Vec<String>,
    pub domain: Option<String>,
    pub search: Vec<String>,
    pub options: Vec<String>,
}

impl Dns {
    pub fn is_empty(&self) -> bool {
        self.nameservers.is_empty()
            && self.domain.is_none()
            && self.search.is_empty()
            && self.options.is_empty()
    }

    /// `{"nameservers"?, "domain"?, "search"?, "options"?}`, empty parts left out.
    pub fn to_json(&self) -> Value {
        let mut o = Map::new();
        if !self.nameservers.is_empty() {
            o.insert("nameservers".into(), json!(self.nameservers));
        }
        if let Some(d) = &self.domain {
            o.insert("domain".into(), json!(d));
        }
        if !self.search.is_empty() {
            o.insert("search".into(), json!(self.search));
        }
        if !self.options.is_empty() {
            o.insert("options".into(), json!(self.options));
        }
        Value::Object(o)
    }

    /// Reads a DNS object; `at` names it in errors (e.g. "dns", "prevResult.dns").
    pub fn from_json(v: &Value, at: &str) -> Result<Dns, CniError> {
        let o = Fields::new(v, at)?;
        Ok(Dns {
            nameservers: o.str_list("nameservers")?,
            domain: o.opt_str("domain")?,
            search: o.str_list("search")?,
            options: o.str_list("options")?,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniResult {
    /// The version this result was read as; [`CniResult::to_json`] writes whatever it is asked.
    pub cni_version: String,
    pub interfaces: Vec<Interface>,
    pub ips: Vec<IpConfig>,
    pub routes: Vec<Route>,
    pub dns: Dns,
}

impl Default for CniResult {
    fn default() -> Self {
        CniResult {
            cni_version: CURRENT_VERSION.to_string(),
            interfaces: Vec::new(),
            ips: Vec::new(),
            routes: Vec::new(),
            dns: Dns::default(),
        }
    }
}

impl CniResult {
    /// The result as spec `version` writes it, with `cniVersion` set to `version`.
    ///
    /// Fields the version lacks are dropped. Fails with code 1 for an unsupported version, and
    /// with code 7 if an IP names an interface index that does not exist.
    pub fn to_json(&self, version: &str) -> Result<Value, CniError> {
        version::require_supported(version, "result")?;
        let legacy = version::compare(version, "1.0.0").is_lt();
        let v11 = version::at_least(version, "1.1.0");
        self.check_interface_indexes("result")?;

        let mut out = Map::new();
        out.insert("cniVersion".into(), json!(version));
        if !self.interfaces.is_empty() {
            let list = self
                .interfaces
                .iter()
                .map(|i| {
                    let mut o = Map::new();
                    o.insert("name".into(), json!(i.name));
                    if !i.mac.is_empty() {
                        o.insert("mac".into(), json!(i.mac));
                    }
                    if v11 {
                        put_opt(&mut o, "mtu", i.mtu.map(|m| json!(m)));
                    }
                    put_opt(&mut o, "sandbox", i.sandbox.as_ref().map(|s| json!(s)));
                    if v11 {
                        put_opt(
                            &mut o,
                            "socketPath",
                            i.socket_path.as_ref().map(|s| json!(s)),
                        );
                        put_opt(&mut o, "pciID", i.pci_id.as_ref().map(|s| json!(s)));
                    }
                    Value::Object(o)
                })
                .collect();
            out.insert("interfaces".into(), Value::Array(list));
        }
        if !self.ips.is_empty() {
            let list = self
                .ips
                .iter()
                .map(|ip| {
                    let mut o = Map::new();
                    if legacy {
                        let family = if ip.address.addr().is_ipv4() {
                            "4"
                        } else {
                            "6"
                        };
                        o.insert("version".into(), json!(family));
                    }
                    o.insert("address".into(), json!(ip.address.to_string()));
                    put_opt(&mut o, "gateway", ip.gateway.map(|g| json!(g.to_string())));
                    put_opt(&mut o, "interface", ip.interface.map(|i| json!(i)));
                    Value::Object(o)
                })
                .collect();
            out.insert("ips".into(), Value::Array(list));
        }
        if !self.routes.is_empty() {
            let list = self
                .routes
                .iter()
                .map(|r| {
                    let mut o = Map::new();
                    o.insert("dst".into(), json!(r.dst.to_string()));
                    put_opt(&mut o, "gw", r.gw.map(|g| json!(g.to_string())));
                    if v11 {
                        put_opt(&mut o, "mtu", r.mtu.map(|x| json!(x)));
                        put_opt(&mut o, "advmss", r.advmss.map(|x| json!(x)));
                        put_opt(&mut o, "priority", r.priority.map(|x| json!(x)));
                        put_opt(&mut o, "table", r.table.map(|x| json!(x)));
                        put_opt(&mut o, "scope", r.scope.map(|x| json!(x)));
                    }
                    Value::Object(o)
                })
                .collect();
            out.insert("routes".into(), Value::Array(list));
        }
        if !self.dns.is_empty() {
            out.insert("dns".into(), self.dns.to_json());
        }
        Ok(Value::Object(out))
    }

    /// Reads a result of any supported version (an ADD result, an IPAM result, a prevResult).
    ///
    /// A missing `cniVersion` is taken as the current version. Errors name the field: code 6 for
    /// wrong types and unparsable addresses, 1 for an unsupported version, 7 for an interface
    /// index out of range or an ip `version` that disagrees with its address.
    pub fn from_json(v: &Value) -> Result<CniResult, CniError> {
        Self::from_json_at(v, "result")
    }

    /// As [`CniResult::from_json`], naming the object `at` in errors (e.g. "prevResult").
    pub fn from_json_at(v: &Value, at: &str) -> Result<CniResult, CniError> {
        let top = Fields::new(v, at)?;
        let cni_version = top
            .opt_str("cniVersion")?
            .unwrap_or_else(|| CURRENT_VERSION.to_string());
        version::require_supported(&cni_version, at)?;

        let interfaces = top
            .objects("interfaces")?
            .into_iter()
            .map(|o| {
                Ok(Interface {
                    name: o.req_str("name")?,
                    mac: o.opt_str("mac")?.unwrap_or_default(),
                    mtu: o.opt_u32("mtu")?,
                    sandbox: o.opt_str("sandbox")?.filter(|s| !s.is_empty()),
                    socket_path: o.opt_str("socketPath")?.filter(|s| !s.is_empty()),
                    pci_id: o.opt_str("pciID")?.filter(|s| !s.is_empty()),
                })
            })
            .collect::<Result<Vec<_>, CniError>>()?;

        let ips = top
            .objects("ips")?
            .into_iter()
            .map(|o| {
                let address: IpNet = o.req_parsed("address", "an IP address in CIDR notation")?;
                if let Some(family) = o.opt_str("version")? {
                    let actual = if address.addr().is_ipv4() { "4" } else { "6" };
                    if family != actual {
                        return Err(CniError::invalid_config(format!(
                            "{}.version: \"{family}\" does not match address {address} (IPv{actual})",
                            o.path
                        )));
                    }
                }
                Ok(IpConfig {
                    address,
                    gateway: o.opt_parsed("gateway", "an IP address")?,
                    interface: o.opt_u32("interface")?.map(|i| i as usize),
                })
            })
            .collect::<Result<Vec<_>, CniError>>()?;

        let routes = top
            .objects("routes")?
            .into_iter()
            .map(|o| {
                Ok(Route {
                    dst: o.req_parsed("dst", "a destination in CIDR notation")?,
                    gw: o.opt_parsed("gw", "an IP address")?,
                    mtu: o.opt_u32("mtu")?,
                    advmss: o.opt_u32("advmss")?,
                    priority: o.opt_u32("priority")?,
                    table: o.opt_u32("table")?,
                    scope: o.opt_u32("scope")?,
                })
            })
            .collect::<Result<Vec<_>, CniError>>()?;

        let dns = match top.get("dns") {
            Some(d) => Dns::from_json(d, &format!("{at}.dns"))?,
            None => Dns::default(),
        };

        let result = CniResult {
            cni_version,
            interfaces,
            ips,
            routes,
            dns,
        };
        result.check_interface_indexes(at)?;
        Ok(result)
    }

    fn check_interface_indexes(&self, at: &str) -> Result<(), CniError> {
        for (n, ip) in self.ips.iter().enumerate() {
            if let Some(i) = ip.interface
                && i >= self.interfaces.len()
            {
                return Err(CniError::invalid_config(format!(
                    "{at}.ips[{n}].interface: index {i} for {} but there are only {} interfaces",
                    ip.address,
                    self.interfaces.len()
                )));
            }
        }
        Ok(())
    }
}

fn put_opt(o: &mut Map<String, Value>, key: &str, v: Option<Value>) {
    if let Some(v) = v {
        o.insert(key.to_string(), v);
    }
}

/// A JSON object being read, with its path for error messages. JSON `null` counts as absent.
pub(crate) struct Fields<'a> {
    map: &'a Map<String, Value>,
    pub(crate) path: String,
}

impl<'a> Fields<'a> {
    pub(crate) fn new(v: &'a Value, path: &str) -> Result<Fields<'a>, CniError> {
        match v {
            Value::Object(map) => Ok(Fields {
                map,
                path: path.to_string(),
            }),
            other => Err(CniError::decode(format!(
                "{path}: expected a JSON object, found {}",
                show(other)
            ))),
        }
    }

    pub(crate) fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    fn wrong(&self, key: &str, expected: &str, found: &Value) -> CniError {
        CniError::decode(format!(
            "{}.{key}: expected {expected}, found {}",
            self.path,
            show(found)
        ))
    }

    pub(crate) fn opt_str(&self, key: &str) -> Result<Option<String>, CniError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(self.wrong(key, "a string", other)),
        }
    }

    pub(crate) fn req_str(&self, key: &str) -> Result<String, CniError> {
        self.opt_str(key)?
            .ok_or_else(|| CniError::decode(format!("{}.{key}: missing", self.path)))
    }

    pub(crate) fn opt_u32(&self, key: &str) -> Result<Option<u32>, CniError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .map(Some)
                .ok_or_else(|| self.wrong(key, "a non-negative integer", v)),
        }
    }

    pub(crate) fn str_list(&self, key: &str) -> Result<Vec<String>, CniError> {
        match self.get(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, item)| match item {
                    Value::String(s) => Ok(s.clone()),
                    other => Err(self.wrong(&format!("{key}[{i}]"), "a string", other)),
                })
                .collect(),
            Some(other) => Err(self.wrong(key, "a list of strings", other)),
        }
    }

    pub(crate) fn objects(&self, key: &str) -> Result<Vec<Fields<'a>>, CniError> {
        match self.get(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, item)| Fields::new(item, &format!("{}.{key}[{i}]", self.path)))
                .collect(),
            Some(other) => Err(self.wrong(key, "a list of objects", other)),
        }
    }

    pub(crate) fn opt_parsed<T: std::str::FromStr>(
        &self,
        key: &str,
        what: &str,
    ) -> Result<Option<T>, CniError> {
        match self.opt_str(key)? {
            None => Ok(None),
            Some(s) => s.parse().map(Some).map_err(|_| {
                CniError::decode(format!("{}.{key}: \"{s}\" is not {what}", self.path))
            }),
        }
    }

    pub(crate) fn req_parsed<T: std::str::FromStr>(
        &self,
        key: &str,
        what: &str,
    ) -> Result<T, CniError> {
        self.opt_parsed(key, what)?.ok_or_else(|| {
            CniError::decode(format!("{}.{key}: missing; expected {what}", self.path))
        })
    }
}

/// A JSON value for an error message, cut short.
pub(crate) fn show(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 60 {
        format!("{}...", s.chars().take(60).collect::<String>())
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SUPPORTED_VERSIONS;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }
    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn full() -> CniResult {
        CniResult {
            cni_version: "1.1.0".into(),
            interfaces: vec![
                Interface {
                    name: "weft0".into(),
                    mac: "02:00:00:00:00:01".into(),
                    ..Default::default()
                },
                Interface {
                    name: "eth0".into(),
                    mac: "02:00:00:00:00:02".into(),
                    mtu: Some(1450),
                    sandbox: Some("/run/netns/blue".into()),
                    socket_path: Some("/run/vhost.sock".into()),
                    pci_id: Some("0000:00:1f.6".into()),
                },
            ],
            ips: vec![
                IpConfig {
                    address: net("198.18.0.5/24"),
                    gateway: Some(ip("198.18.0.1")),
                    interface: Some(1),
                },
                IpConfig {
                    address: net("fd00::5/64"),
                    gateway: None,
                    interface: Some(1),
                },
            ],
            routes: vec![
                Route::new(net("0.0.0.0/0"), Some(ip("198.18.0.1"))),
                Route {
                    dst: net("fd00:1::/48"),
                    gw: None,
                    mtu: Some(1400),
                    advmss: Some(1360),
                    priority: Some(10),
                    table: Some(100),
                    scope: Some(0),
                },
            ],
            dns: Dns {
                nameservers: vec!["198.18.0.53".into()],
                domain: Some("cluster.local".into()),
                search: vec!["svc.cluster.local".into()],
                options: vec!["ndots:5".into()],
            },
        }
    }

    /// What `full()` keeps when written as `v` and read back.
    fn expected_after(v: &str) -> CniResult {
        let mut r = full();
        r.cni_version = v.into();
        if v != "1.1.0" {
            for i in &mut r.interfaces {
                i.mtu = None;
                i.socket_path = None;
                i.pci_id = None;
            }
            for rt in &mut r.routes {
                *rt = Route::new(rt.dst, rt.gw);
            }
        }
        r
    }

    #[test]
    fn conversion_table() {
        // (version, ips carry "version", 1.1 fields present)
        let table = [
            ("0.3.0", true, false),
            ("0.3.1", true, false),
            ("0.4.0", true, false),
            ("1.0.0", false, false),
            ("1.1.0", false, true),
        ];
        assert_eq!(table.len(), SUPPORTED_VERSIONS.len());
        for (v, has_ip_version, has_11) in table {
            let j = full().to_json(v).unwrap();
            assert_eq!(j["cniVersion"], v);
            assert_eq!(j["ips"][0].get("version").is_some(), has_ip_version, "{v}");
            if has_ip_version {
                assert_eq!(j["ips"][0]["version"], "4");
                assert_eq!(j["ips"][1]["version"], "6");
            }
            assert_eq!(j["ips"][0]["address"], "198.18.0.5/24");
            assert_eq!(j["ips"][0]["gateway"], "198.18.0.1");
            assert_eq!(j["ips"][0]["interface"], 1);
            assert!(j["ips"][1].get("gateway").is_none());
            assert_eq!(
                j["routes"][0],
                json!({"dst": "0.0.0.0/0", "gw": "198.18.0.1"})
            );
            assert_eq!(j["interfaces"][1]["sandbox"], "/run/netns/blue");
            assert!(j["interfaces"][0].get("sandbox").is_none());
            for k in ["mtu", "advmss", "priority", "table", "scope"] {
                assert_eq!(j["routes"][1].get(k).is_some(), has_11, "{v} route {k}");
            }
            for k in ["mtu", "socketPath", "pciID"] {
                assert_eq!(
                    j["interfaces"][1].get(k).is_some(),
                    has_11,
                    "{v} interface {k}"
                );
            }
            assert_eq!(j["dns"]["options"], json!(["ndots:5"]));

            // Round trip as a prevResult of this version.
            let back = CniResult::from_json(&j).unwrap();
            assert_eq!(back, expected_after(v), "{v}");
            // And from this version on to every other.
            for w in SUPPORTED_VERSIONS {
                let again = CniResult::from_json(&back.to_json(w).unwrap()).unwrap();
                assert_eq!(again.ips, back.ips, "{v} -> {w}");
                assert_eq!(again.cni_version, *w);
            }
        }
    }

    #[test]
    fn empty_parts_are_omitted() {
        let r = CniResult {
            ips: vec![IpConfig {
                address: net("198.18.0.9/32"),
                gateway: None,
                interface: None,
            }],
            ..Default::default()
        };
        assert_eq!(
            r.to_json("1.0.0").unwrap(),
            json!({"cniVersion": "1.0.0", "ips": [{"address": "198.18.0.9/32"}]})
        );
        assert_eq!(
            r.to_json("0.3.1").unwrap(),
            json!({"cniVersion": "0.3.1", "ips": [{"version": "4", "address": "198.18.0.9/32"}]})
        );
    }

    #[test]
    fn spec_040_example_parses() {
        let j = json!({
            "cniVersion": "0.4.0",
            "ips": [{"version": "4", "address": "10.0.0.5/32", "interface": 2}],
            "interfaces": [
                {"name": "cni0", "mac": "00:11:22:33:44:55"},
                {"name": "veth3243", "mac": "55:44:33:22:11:11"},
                {"name": "eth0", "mac": "99:88:77:66:55:44", "sandbox": "/var/run/netns/blue"}
            ],
            "dns": {"nameservers": ["10.1.0.1"]}
        });
        let r = CniResult::from_json(&j).unwrap();
        assert_eq!(r.ips[0].interface, Some(2));
        assert_eq!(
            r.interfaces[2].sandbox.as_deref(),
            Some("/var/run/netns/blue")
        );
        assert_eq!(r.dns.nameservers, vec!["10.1.0.1"]);
        assert_eq!(r.to_json("0.4.0").unwrap(), j);
    }

    #[test]
    fn missing_version_and_nulls() {
        let r = CniResult::from_json(&json!({
            "ips": [{"address": "fd00::1/128", "gateway": null}],
            "dns": {}
        }))
        .unwrap();
        assert_eq!(r.cni_version, "1.1.0");
        assert_eq!(r.ips[0].gateway, None);
        assert!(r.dns.is_empty());
    }

    #[test]
    fn bad_results_name_the_field() {
        let cases = [
            (json!([]), 6, "result: expected a JSON object"),
            (json!({"cniVersion": "0.2.0"}), 1, "0.2.0"),
            (json!({"cniVersion": 1}), 6, "result.cniVersion"),
            (json!({"ips": {}}), 6, "result.ips"),
            (
                json!({"ips": [{"gateway": "198.18.0.1"}]}),
                6,
                "result.ips[0].address: missing",
            ),
            (
                json!({"ips": [{"address": "198.18.0.5/33"}]}),
                6,
                "result.ips[0].address: \"198.18.0.5/33\"",
            ),
            (
                json!({"ips": [{"address": "198.18.0.5/24", "gateway": "x"}]}),
                6,
                "result.ips[0].gateway: \"x\"",
            ),
            (
                json!({"ips": [{"address": "198.18.0.5/24", "interface": -1}]}),
                6,
                "result.ips[0].interface",
            ),
            (
                json!({"ips": [{"address": "198.18.0.5/24", "interface": 0}]}),
                7,
                "result.ips[0].interface: index 0",
            ),
            (
                json!({"ips": [{"address": "198.18.0.5/24", "version": "6"}]}),
                7,
                "result.ips[0].version",
            ),
            (
                json!({"interfaces": [{"mac": "x"}]}),
                6,
                "result.interfaces[0].name: missing",
            ),
            (
                json!({"interfaces": [{"name": "a", "mtu": "1500"}]}),
                6,
                "result.interfaces[0].mtu",
            ),
            (
                json!({"routes": [{"dst": "default"}]}),
                6,
                "result.routes[0].dst: \"default\"",
            ),
            (
                json!({"routes": [{"dst": "0.0.0.0/0", "table": 1.5}]}),
                6,
                "result.routes[0].table",
            ),
            (
                json!({"dns": {"nameservers": "198.18.0.53"}}),
                6,
                "result.dns.nameservers",
            ),
            (json!({"dns": {"search": [1]}}), 6, "result.dns.search[0]"),
        ];
        for (j, code, needle) in cases {
            let e = CniResult::from_json(&j).expect_err(&j.to_string());
            assert_eq!(e.code, code, "{j}: {}", e.msg);
            assert!(e.msg.contains(needle), "{j}: {:?} lacks {needle:?}", e.msg);
        }
    }

    #[test]
    fn to_json_refuses_bad_version_and_index() {
        assert_eq!(full().to_json("0.2.0").unwrap_err().code, 1);
        let mut r = full();
        r.ips[0].interface = Some(7);
        assert_eq!(r.to_json("1.1.0").unwrap_err().code, 7);
    }

    mod prop {
        use super::*;
        use proptest::prelude::*;
        use std::net::{Ipv4Addr, Ipv6Addr};

        fn any_net() -> impl Strategy<Value = IpNet> {
            prop_oneof![
                (any::<u32>(), 0u8..=32)
                    .prop_map(|(a, p)| IpNet::new(Ipv4Addr::from(a).into(), p).unwrap()),
                (any::<u128>(), 0u8..=128).prop_map(|(a, p)| IpNet::new(
                    Ipv6Addr::from(a).into(),
                    p
                )
                .unwrap()),
            ]
        }
        fn any_ip() -> impl Strategy<Value = IpAddr> {
            prop_oneof![
                any::<u32>().prop_map(|a| IpAddr::from(Ipv4Addr::from(a))),
                any::<u128>().prop_map(|a| IpAddr::from(Ipv6Addr::from(a))),
            ]
        }
        fn any_route() -> impl Strategy<Value = Route> {
            (
                any_net(),
                proptest::option::of(any_ip()),
                proptest::array::uniform5(proptest::option::of(any::<u32>())),
            )
                .prop_map(|(dst, gw, [mtu, advmss, priority, table, scope])| Route {
                    dst,
                    gw,
                    mtu,
                    advmss,
                    priority,
                    table,
                    scope,
                })
        }
        fn any_result() -> impl Strategy<Value = CniResult> {
            (
                0usize..3,
                proptest::collection::vec(
                    (any_net(), proptest::option::of(any_ip()), any::<usize>()),
                    0..4,
                ),
                proptest::collection::vec(any_route(), 0..4),
            )
                .prop_map(|(n_if, ips, routes)| CniResult {
                    interfaces: (0..n_if)
                        .map(|i| Interface {
                            name: format!("eth{i}"),
                            ..Default::default()
                        })
                        .collect(),
                    ips: ips
                        .into_iter()
                        .map(|(address, gateway, idx)| IpConfig {
                            address,
                            gateway,
                            interface: (n_if > 0).then(|| idx % n_if),
                        })
                        .collect(),
                    routes,
                    ..Default::default()
                })
        }

        proptest! {
            #[test]
            fn round_trip_keeps_addresses_and_routes(r in any_result()) {
                for v in SUPPORTED_VERSIONS {
                    let back = CniResult::from_json(&r.to_json(v).unwrap()).unwrap();
                    prop_assert_eq!(&back.ips, &r.ips);
                    prop_assert_eq!(back.routes.len(), r.routes.len());
                    for (a, b) in back.routes.iter().zip(&r.routes) {
                        prop_assert_eq!(a.dst, b.dst);
                        prop_assert_eq!(a.gw, b.gw);
                    }
                    if *v == "1.1.0" {
                        prop_assert_eq!(&back.routes, &r.routes);
                    }
                    prop_assert_eq!(back.interfaces.len(), r.interfaces.len());
                }
            }
        }
    }
}
