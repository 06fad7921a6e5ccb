//! The network configuration a plugin reads on stdin, and its `runtimeConfig` capabilities.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use serde_json::{Map, Value};

use crate::error::CniError;
pub use crate::result::Dns;
use crate::result::{CniResult, Fields, show};
use crate::version;

/// The key under which GC receives the attachments that are still in use.
pub const VALID_ATTACHMENTS_KEY: &str = "cni.dev/valid-attachments";

#[derive(Debug, Clone, PartialEq)]
pub struct NetConf {
    pub cni_version: String,
    pub name: String,
    /// `type`: the plugin binary's name.
    pub plugin_type: String,
    pub capabilities: BTreeMap<String, bool>,
    /// The `ipam` object, if any (always an object).
    pub ipam: Option<Value>,
    pub dns: Option<Dns>,
    pub args: Option<Value>,
    /// `runtimeConfig`; an empty object if absent.
    pub runtime_config: Value,
    /// `prevResult` as given; see [`NetConf::prev_result`] to read it.
    pub prev_result: Option<Value>,
    /// The whole config object, for plugin-specific fields.
    pub raw: Value,
}

/// One entry of `cni.dev/valid-attachments`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GcAttachment {
    pub container_id: String,
    pub ifname: String,
}

/// A requested address from the `ips` capability: `addr` with a prefix length if one was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestedIp {
    pub addr: IpAddr,
    pub prefix_len: Option<u8>,
}

impl RequestedIp {
    /// As a network, with `default_prefix` when none was given (e.g. the pool's).
    pub fn to_net(&self, default_prefix: u8) -> Result<IpNet, CniError> {
        let p = self.prefix_len.unwrap_or(default_prefix);
        IpNet::new(self.addr, p).map_err(|_| {
            CniError::invalid_config(format!(
                "runtimeConfig.ips: prefix length {p} is not valid for {}",
                self.addr
            ))
        })
    }
}

/// One entry of the `portMappings` capability.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortMapping {
    pub host_port: u16,
    pub container_port: u16,
    /// Lower-case: "tcp" (the default), "udp" or "sctp".
    pub protocol: String,
    pub host_ip: Option<IpAddr>,
}

fn name_is_valid(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

impl NetConf {
    /// Parses and validates the config on stdin.
    ///
    /// Code 6 for invalid JSON (with serde's line and column), 7 for a missing or wrong-typed
    /// `cniVersion`/`name`/`type`/known field or a bad network name, 1 for an unsupported version.
    pub fn parse(bytes: &[u8]) -> Result<NetConf, CniError> {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(CniError::decode(
                "network configuration on stdin is empty; the runtime must pass the network configuration JSON on stdin",
            ));
        }
        let raw: Value = serde_json::from_slice(bytes).map_err(|e| {
            CniError::decode(format!(
                "network configuration on stdin is not valid JSON: {e}"
            ))
        })?;
        let Value::Object(obj) = &raw else {
            return Err(CniError::invalid_config(format!(
                "network configuration must be a JSON object, found {}",
                show(&raw)
            )));
        };

        let required = |key: &str, what: &str| -> Result<String, CniError> {
            match obj.get(key) {
                Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
                None | Some(Value::Null) => Err(CniError::invalid_config(format!(
                    "network configuration lacks \"{key}\"; add \"{key}\": {what}"
                ))),
                Some(other) => Err(CniError::invalid_config(format!(
                    "network configuration field \"{key}\" must be a non-empty string ({what}), found {}",
                    show(other)
                ))),
            }
        };
        let cni_version = required("cniVersion", "the spec version, e.g. \"1.1.0\"")?;
        let name = required("name", "the network name")?;
        let plugin_type = required("type", "the plugin binary name")?;
        if !name_is_valid(&name) {
            return Err(CniError::invalid_config(format!(
                "network name \"{name}\" is not valid; it must start with a letter or digit and contain only letters, digits, '_', '.' and '-'"
            )));
        }
        version::require_supported(&cni_version, &format!("network \"{name}\":"))?;

        let at = format!("network \"{name}\"");
        let invalid = |key: &str, what: &str, found: &Value| {
            CniError::invalid_config(format!(
                "{at}: field \"{key}\" must be {what}, found {}",
                show(found)
            ))
        };
        let object_field = |key: &str| -> Result<Option<Value>, CniError> {
            match obj.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(v @ Value::Object(_)) => Ok(Some(v.clone())),
                Some(other) => Err(invalid(key, "an object", other)),
            }
        };

        let capabilities = match obj.get("capabilities") {
            None | Some(Value::Null) => BTreeMap::new(),
            Some(Value::Object(caps)) => caps
                .iter()
                .map(|(k, v)| match v {
                    Value::Bool(b) => Ok((k.clone(), *b)),
                    other => Err(invalid(
                        &format!("capabilities.{k}"),
                        "true or false",
                        other,
                    )),
                })
                .collect::<Result<_, _>>()?,
            Some(other) => Err(invalid("capabilities", "an object of booleans", other))?,
        };
        let dns = match obj.get("dns") {
            None | Some(Value::Null) => None,
            Some(v) => Some(
                Dns::from_json(v, &format!("{at}: dns"))
                    .map_err(|e| CniError::invalid_config(e.msg))?,
            ),
        };

        Ok(NetConf {
            cni_version,
            capabilities,
            ipam: object_field("ipam")?,
            dns,
            args: object_field("args")?,
            runtime_config: object_field("runtimeConfig")?
                .unwrap_or_else(|| Value::Object(Map::new())),
            prev_result: object_field("prevResult")?,
            name,
            plugin_type,
            raw,
        })
    }

    /// The `prevResult`, read as a result of any supported version. A `prevResult` without
    /// `cniVersion` is taken to be of the config's version.
    pub fn prev_result(&self) -> Result<Option<CniResult>, CniError> {
        let Some(prev) = &self.prev_result else {
            return Ok(None);
        };
        let mut prev = prev.clone();
        if let Value::Object(o) = &mut prev {
            o.entry("cniVersion")
                .or_insert_with(|| Value::String(self.cni_version.clone()));
        }
        CniResult::from_json_at(&prev, &format!("network \"{}\": prevResult", self.name)).map(Some)
    }

    /// The `ipam.type`, if an ipam section names one.
    pub fn ipam_type(&self) -> Option<&str> {
        self.ipam.as_ref()?.get("type")?.as_str()
    }

    /// A plugin-specific top-level field.
    pub fn field(&self, key: &str) -> Option<&Value> {
        self.raw.get(key).filter(|v| !v.is_null())
    }

    /// A `runtimeConfig` entry.
    pub fn runtime(&self, key: &str) -> Option<&Value> {
        self.runtime_config.get(key).filter(|v| !v.is_null())
    }

    /// GC's list of attachments that are still in use.
    ///
    /// Missing is an error, not an empty list: an empty list tells GC to release everything.
    pub fn valid_attachments(&self) -> Result<Vec<GcAttachment>, CniError> {
        let top = Fields::new(&self.raw, "network configuration")?;
        if top.get(VALID_ATTACHMENTS_KEY).is_none() {
            return Err(CniError::invalid_config(format!(
                "network \"{}\": GC config lacks \"{VALID_ATTACHMENTS_KEY}\"; refusing to collect garbage without the list of attachments in use",
                self.name
            )));
        }
        top.objects(VALID_ATTACHMENTS_KEY)
            .and_then(|list| {
                list.into_iter()
                    .map(|o| {
                        Ok(GcAttachment {
                            container_id: o.req_str("containerID")?,
                            ifname: o.req_str("ifname")?,
                        })
                    })
                    .collect()
            })
            .map_err(|e| CniError::invalid_config(e.msg))
    }

    /// The `ips` capability: requested addresses, "198.18.0.5/24" or "198.18.0.5".
    pub fn runtime_ips(&self) -> Result<Vec<RequestedIp>, CniError> {
        let Some(v) = self.runtime("ips") else {
            return Ok(Vec::new());
        };
        let Value::Array(items) = v else {
            return Err(CniError::invalid_config(format!(
                "network \"{}\": runtimeConfig.ips must be a list of addresses, found {}",
                self.name,
                show(v)
            )));
        };
        items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                let s = item.as_str().unwrap_or_default();
                if let Ok(n) = s.parse::<IpNet>() {
                    Ok(RequestedIp {
                        addr: n.addr(),
                        prefix_len: Some(n.prefix_len()),
                    })
                } else if let Ok(a) = s.parse::<IpAddr>() {
                    Ok(RequestedIp {
                        addr: a,
                        prefix_len: None,
                    })
                } else {
                    Err(CniError::invalid_config(format!(
                        "network \"{}\": runtimeConfig.ips[{i}] {} is not an IP address (e.g. \"198.18.0.5\" or \"198.18.0.5/24\")",
                        self.name,
                        show(item)
                    )))
                }
            })
            .collect()
    }

    /// The `mac` capability.
    pub fn runtime_mac(&self) -> Option<String> {
        self.runtime("mac")?.as_str().map(str::to_string)
    }

    /// The `portMappings` capability. Unlike the original sketch this returns a `Result`: a
    /// malformed mapping is reported, not silently dropped.
    pub fn runtime_port_mappings(&self) -> Result<Vec<PortMapping>, CniError> {
        let at = format!("network \"{}\": runtimeConfig", self.name);
        let top = Fields::new(&self.runtime_config, &at)?;
        let list = top
            .objects("portMappings")
            .map_err(|e| CniError::invalid_config(e.msg))?;
        list.into_iter()
            .map(|o| {
                let port = |key: &str| -> Result<u16, CniError> {
                    match o.opt_u32(key)? {
                        Some(p) if (1..=65535).contains(&p) => Ok(p as u16),
                        Some(p) => Err(CniError::invalid_config(format!(
                            "{}.{key}: {p} is not a port between 1 and 65535",
                            o.path
                        ))),
                        None => Err(CniError::invalid_config(format!(
                            "{}.{key}: missing",
                            o.path
                        ))),
                    }
                };
                let protocol = o
                    .opt_str("protocol")?
                    .filter(|p| !p.is_empty())
                    .unwrap_or_else(|| "tcp".into())
                    .to_ascii_lowercase();
                if !matches!(protocol.as_str(), "tcp" | "udp" | "sctp") {
                    return Err(CniError::invalid_config(format!(
                        "{}.protocol: \"{protocol}\" is not tcp, udp or sctp",
                        o.path
                    )));
                }
                let host_ip = match o.opt_str("hostIP")?.filter(|s| !s.is_empty()) {
                    None => None,
                    Some(s) => Some(s.parse::<IpAddr>().map_err(|_| {
                        CniError::invalid_config(format!(
                            "{}.hostIP: \"{s}\" is not an IP address",
                            o.path
                        ))
                    })?),
                };
                Ok(PortMapping {
                    host_port: port("hostPort")?,
                    container_port: port("containerPort")?,
                    protocol,
                    host_ip,
                })
            })
            .collect::<Result<_, CniError>>()
            .map_err(|e| CniError::invalid_config(e.msg))
    }

    /// The `bandwidth` capability, as given.
    pub fn runtime_bandwidth(&self) -> Option<Value> {
        self.runtime("bandwidth").cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<NetConf, CniError> {
        NetConf::parse(v.to_string().as_bytes())
    }

    #[test]
    fn parses_full_config() {
        let c = parse(json!({
            "cniVersion": "1.1.0",
            "name": "pods.v4_net-1",
            "type": "weft",
            "mode": "routed",
            "capabilities": {"ips": true, "portMappings": false},
            "ipam": {"type": "weft-ipam", "pool": "default"},
            "dns": {"nameservers": ["198.18.0.53"], "search": ["svc"]},
            "args": {"cni": {"ips": ["198.18.0.7"]}},
            "runtimeConfig": {
                "ips": ["198.18.0.5/24", "fd00::5"],
                "mac": "02:00:00:00:00:07",
                "portMappings": [
                    {"hostPort": 8080, "containerPort": 80, "protocol": "TCP"},
                    {"hostPort": 5353, "containerPort": 53, "protocol": "udp", "hostIP": "198.51.100.1"}
                ],
                "bandwidth": {"ingressRate": 1000}
            },
            "prevResult": {"cniVersion": "1.0.0", "ips": [{"address": "198.18.0.5/24"}]}
        }))
        .unwrap();
        assert_eq!(c.name, "pods.v4_net-1");
        assert_eq!(c.plugin_type, "weft");
        assert_eq!(c.capabilities.get("ips"), Some(&true));
        assert_eq!(c.ipam_type(), Some("weft-ipam"));
        assert_eq!(c.dns.as_ref().unwrap().search, vec!["svc"]);
        assert_eq!(c.field("mode"), Some(&json!("routed")));
        let ips = c.runtime_ips().unwrap();
        assert_eq!(ips[0].prefix_len, Some(24));
        assert_eq!(
            ips[1],
            RequestedIp {
                addr: "fd00::5".parse().unwrap(),
                prefix_len: None
            }
        );
        assert_eq!(ips[1].to_net(64).unwrap().to_string(), "fd00::5/64");
        assert_eq!(c.runtime_mac().as_deref(), Some("02:00:00:00:00:07"));
        let pm = c.runtime_port_mappings().unwrap();
        assert_eq!(pm[0].protocol, "tcp");
        assert_eq!(pm[1].host_ip, Some("198.51.100.1".parse().unwrap()));
        assert_eq!(c.runtime_bandwidth(), Some(json!({"ingressRate": 1000})));
        let prev = c.prev_result().unwrap().unwrap();
        assert_eq!(prev.cni_version, "1.0.0");
        assert_eq!(prev.ips[0].address.to_string(), "198.18.0.5/24");
    }

    #[test]
    fn minimal_config_defaults() {
        let c = parse(json!({"cniVersion": "0.3.1", "name": "n", "type": "weft"})).unwrap();
        assert_eq!(c.runtime_config, json!({}));
        assert!(c.capabilities.is_empty() && c.ipam.is_none() && c.dns.is_none());
        assert_eq!(c.prev_result().unwrap(), None);
        assert!(c.runtime_ips().unwrap().is_empty());
        assert!(c.runtime_port_mappings().unwrap().is_empty());
        assert_eq!(c.runtime_mac(), None);
    }

    #[test]
    fn prev_result_without_version_takes_config_version() {
        let c = parse(json!({"cniVersion": "0.4.0", "name": "n", "type": "weft",
            "prevResult": {"ips": [{"version": "4", "address": "198.18.0.5/24"}]}}))
        .unwrap();
        assert_eq!(c.prev_result().unwrap().unwrap().cni_version, "0.4.0");
        let c = parse(json!({"cniVersion": "0.4.0", "name": "n", "type": "weft",
            "prevResult": {"ips": [{"address": "bad"}]}}))
        .unwrap();
        let e = c.prev_result().unwrap_err();
        assert!(e.msg.contains("prevResult.ips[0].address"), "{}", e.msg);
    }

    #[test]
    fn config_error_table() {
        let base = || json!({"cniVersion": "1.1.0", "name": "net1", "type": "weft"});
        let with = |k: &str, v: Value| {
            let mut b = base();
            b[k] = v;
            b.to_string()
        };
        let without = |k: &str| {
            let mut b = base();
            b.as_object_mut().unwrap().remove(k);
            b.to_string()
        };
        let cases: Vec<(String, u32, &str)> = vec![
            ("".into(), 6, "empty"),
            ("{\"cniVersion\": ".into(), 6, "line 1 column"),
            ("{\n\"name\": x}".into(), 6, "line 2 column"),
            ("[1,2]".into(), 7, "JSON object"),
            ("\"net\"".into(), 7, "JSON object"),
            (without("cniVersion"), 7, "\"cniVersion\""),
            (without("name"), 7, "\"name\""),
            (without("type"), 7, "\"type\""),
            (with("cniVersion", json!(1.1)), 7, "\"cniVersion\""),
            (with("name", json!(["a"])), 7, "\"name\""),
            (with("type", json!("")), 7, "\"type\""),
            (
                with("cniVersion", json!("0.2.0")),
                1,
                "\"0.2.0\" is not supported; use one of 0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0",
            ),
            (with("cniVersion", json!("2.0.0")), 1, "2.0.0"),
            (with("name", json!("-net")), 7, "\"-net\""),
            (with("name", json!("net/1")), 7, "\"net/1\""),
            (with("name", json!("net 1")), 7, "\"net 1\""),
            (with("ipam", json!("host-local")), 7, "\"ipam\""),
            (with("runtimeConfig", json!([])), 7, "\"runtimeConfig\""),
            (with("prevResult", json!("x")), 7, "\"prevResult\""),
            (
                with("capabilities", json!({"ips": "yes"})),
                7,
                "capabilities.ips",
            ),
            (
                with("dns", json!({"nameservers": "x"})),
                7,
                "dns.nameservers",
            ),
        ];
        for (input, code, needle) in cases {
            let e = NetConf::parse(input.as_bytes()).expect_err(&input);
            assert_eq!(e.code, code, "{input}: {}", e.msg);
            assert!(
                e.msg.contains(needle),
                "{input}: {:?} lacks {needle:?}",
                e.msg
            );
        }
    }

    #[test]
    fn runtime_errors() {
        let conf = |rc: Value| {
            parse(json!({"cniVersion": "1.1.0", "name": "n", "type": "weft", "runtimeConfig": rc}))
                .unwrap()
        };
        let e = conf(json!({"ips": ["198.18.0.300"]}))
            .runtime_ips()
            .unwrap_err();
        assert!(e.code == 7 && e.msg.contains("198.18.0.300"), "{}", e.msg);
        assert!(conf(json!({"ips": "198.18.0.5"})).runtime_ips().is_err());
        for (pm, needle) in [
            (json!([{"hostPort": 0, "containerPort": 80}]), "hostPort: 0"),
            (json!([{"hostPort": 80}]), "containerPort: missing"),
            (
                json!([{"hostPort": 80, "containerPort": 70000}]),
                "containerPort: 70000",
            ),
            (
                json!([{"hostPort": 80, "containerPort": 80, "protocol": "icmp"}]),
                "icmp",
            ),
            (
                json!([{"hostPort": 80, "containerPort": 80, "hostIP": "nope"}]),
                "hostIP",
            ),
            (json!({}), "portMappings"),
        ] {
            let e = conf(json!({"portMappings": pm}))
                .runtime_port_mappings()
                .unwrap_err();
            assert_eq!(e.code, 7);
            assert!(e.msg.contains(needle), "{:?} lacks {needle}", e.msg);
        }
    }

    #[test]
    fn valid_attachments() {
        let c = parse(json!({"cniVersion": "1.1.0", "name": "n", "type": "weft",
            "cni.dev/valid-attachments": [{"containerID": "c1", "ifname": "eth0"}]}))
        .unwrap();
        assert_eq!(
            c.valid_attachments().unwrap(),
            vec![GcAttachment {
                container_id: "c1".into(),
                ifname: "eth0".into()
            }]
        );
        let c = parse(json!({"cniVersion": "1.1.0", "name": "n", "type": "weft",
            "cni.dev/valid-attachments": []}))
        .unwrap();
        assert!(c.valid_attachments().unwrap().is_empty());
        let c = parse(json!({"cniVersion": "1.1.0", "name": "n", "type": "weft"})).unwrap();
        assert_eq!(c.valid_attachments().unwrap_err().code, 7);
        let c = parse(json!({"cniVersion": "1.1.0", "name": "n", "type": "weft",
            "cni.dev/valid-attachments": [{"containerID": "c1"}]}))
        .unwrap();
        let e = c.valid_attachments().unwrap_err();
        assert!(e.code == 7 && e.msg.contains("ifname"), "{}", e.msg);
    }
}
