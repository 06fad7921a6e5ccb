//! `ipam.fixedIPs`: which pods get fixed addresses, from their identity.
//!
//! ```json
//! "fixedIPs": [
//!   {"namespace": "prod", "statefulSet": "db", "policy": "workload"},
//!   {"namespace": "*", "pod": "legacy", "policy": "never"},
//!   {"namespace": "prod", "deployment": "web", "pool": "web", "addresses": ["198.18.0.50", "198.18.0.51"]}
//! ]
//! ```
//! The pod's identity comes from `CNI_ARGS` `K8S_POD_NAMESPACE` and `K8S_POD_NAME` (kubelet;
//! podman sets both to the container name). A runtime can also name it outright with
//! `WEFT_IDENTITY=<key>` (and `WEFT_POLICY`), or ask for an address pool with `WEFT_POOL=<name>`.
use std::net::IpAddr;

use serde_json::Value;
use weft_cni::{CniEnv, CniError};
use weft_ipam::{Fixed, Identity, PoolRequest, ReleasePolicy};

#[derive(Debug, Clone, PartialEq)]
pub enum Match {
    StatefulSet(String),
    Pod(String),
    Deployment(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub namespace: String,
    pub matches: Match,
    pub policy: ReleasePolicy,
    pub pool: Option<String>,
    pub addresses: Vec<IpAddr>,
}

fn bad(net: &str, field: String, v: &Value, fix: &str) -> CniError {
    CniError::invalid_config(format!("network \"{net}\": {field} {v} {fix}"))
}

pub fn parse_rules(net: &str, v: Option<&Value>) -> Result<Vec<Rule>, CniError> {
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Ok(Vec::new());
    };
    let items = v
        .as_array()
        .ok_or_else(|| bad(net, "ipam.fixedIPs".into(), v, "must be a list of rules"))?;
    items
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let at = |k: &str| format!("ipam.fixedIPs[{i}].{k}");
            let obj = r.as_object().ok_or_else(|| bad(net, format!("ipam.fixedIPs[{i}]"), r, "must be an object"))?;
            for k in obj.keys() {
                if !["namespace", "statefulSet", "pod", "deployment", "policy", "pool", "addresses"].contains(&k.as_str()) {
                    return Err(bad(net, at(k), &obj[k], "is not a fixedIPs key: use namespace, statefulSet, pod, deployment, policy, pool, addresses"));
                }
            }
            let s = |k: &str| -> Result<Option<String>, CniError> {
                match obj.get(k) {
                    None | Some(Value::Null) => Ok(None),
                    Some(Value::String(s)) if !s.is_empty() => Ok(Some(s.clone())),
                    Some(v) => Err(bad(net, at(k), v, "must be a non-empty string")),
                }
            };
            let namespace = s("namespace")?.unwrap_or_else(|| "*".into());
            let matches = match (s("statefulSet")?, s("pod")?, s("deployment")?) {
                (Some(n), None, None) => Match::StatefulSet(n),
                (None, Some(n), None) => Match::Pod(n),
                (None, None, Some(n)) => Match::Deployment(n),
                _ => return Err(bad(net, format!("ipam.fixedIPs[{i}]"), r, "needs exactly one of statefulSet, pod, deployment")),
            };
            let policy = match obj.get("policy") {
                None | Some(Value::Null) => ReleasePolicy::Pod,
                Some(v) => v
                    .as_str()
                    .ok_or_else(|| bad(net, at("policy"), v, "must be \"pod\", \"workload\" or \"never\""))?
                    .parse()
                    .map_err(|e: String| bad(net, at("policy"), v, &format!("is not valid: {e}")))?,
            };
            let addresses = match obj.get("addresses") {
                None | Some(Value::Null) => Vec::new(),
                Some(Value::Array(a)) => a
                    .iter()
                    .enumerate()
                    .map(|(j, x)| x.as_str().and_then(|s| s.parse().ok()).ok_or_else(|| bad(net, at(&format!("addresses[{j}]")), x, "is not an IP address")))
                    .collect::<Result<_, _>>()?,
                Some(v) => return Err(bad(net, at("addresses"), v, "must be a list of IP addresses")),
            };
            if !matches!(matches, Match::Deployment(_)) && (obj.contains_key("pool") || !addresses.is_empty()) {
                return Err(bad(net, format!("ipam.fixedIPs[{i}]"), r, "pool and addresses go with deployment rules only"));
            }
            if matches!(matches, Match::Deployment(_)) && addresses.is_empty() {
                return Err(bad(net, at("addresses"), &Value::Null, "is required for a deployment rule: list the pool's addresses"));
            }
            Ok(Rule { namespace, matches, policy, pool: s("pool")?, addresses })
        })
        .collect()
}

/// `name` = `<prefix>-<suffix>` with `suffix` made of `parts` dash-separated non-empty parts.
fn suffix_of<'a>(name: &'a str, prefix: &str, parts: usize) -> Option<&'a str> {
    let rest = name.strip_prefix(prefix)?.strip_prefix('-')?;
    (rest.split('-').count() == parts && rest.split('-').all(|p| !p.is_empty())).then_some(rest)
}

/// What fixes the pod's addresses, if anything.
pub fn resolve(env: &CniEnv, rules: &[Rule]) -> Result<Option<Fixed>, CniError> {
    if let Some(key) = env.arg("WEFT_IDENTITY") {
        let policy = match env.arg("WEFT_POLICY") {
            None => ReleasePolicy::Pod,
            Some(p) => p
                .parse()
                .map_err(|e| CniError::invalid_env(format!("CNI_ARGS WEFT_POLICY={p}: {e}")))?,
        };
        return Ok(Some(Fixed::Identity(Identity {
            key: key.to_string(),
            policy,
            workload: None,
            ordinal: None,
        })));
    }
    if let Some(pool) = env.arg("WEFT_POOL") {
        return Ok(Some(Fixed::Pool(PoolRequest {
            name: pool.to_string(),
            addresses: Vec::new(),
        })));
    }
    let (Some(ns), Some(name)) = (env.arg("K8S_POD_NAMESPACE"), env.arg("K8S_POD_NAME")) else {
        return Ok(None);
    };
    for r in rules
        .iter()
        .filter(|r| r.namespace == "*" || r.namespace == ns)
    {
        match &r.matches {
            Match::StatefulSet(set) => {
                if let Some(ord) = suffix_of(name, set, 1).and_then(|o| o.parse::<u32>().ok()) {
                    return Ok(Some(Fixed::Identity(Identity {
                        key: format!("{ns}/{set}/{ord}"),
                        policy: r.policy,
                        workload: Some(format!("{ns}/{set}")),
                        ordinal: Some(ord),
                    })));
                }
            }
            Match::Pod(pod) if pod == name => {
                return Ok(Some(Fixed::Identity(Identity {
                    key: format!("{ns}/{pod}"),
                    policy: r.policy,
                    workload: None,
                    ordinal: None,
                })));
            }
            Match::Deployment(d) if suffix_of(name, d, 2).is_some() => {
                return Ok(Some(Fixed::Pool(PoolRequest {
                    name: r.pool.clone().unwrap_or_else(|| format!("{ns}.{d}")),
                    addresses: r.addresses.clone(),
                })));
            }
            _ => {}
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(args: &str) -> CniEnv {
        CniEnv::from_lookup(|k| match k {
            "CNI_COMMAND" => Some("ADD".into()),
            "CNI_CONTAINERID" => Some("c".into()),
            "CNI_NETNS" => Some("/run/netns/x".into()),
            "CNI_IFNAME" => Some("eth0".into()),
            "CNI_ARGS" => Some(args.into()),
            _ => None,
        })
        .unwrap()
    }

    fn rules() -> Vec<Rule> {
        parse_rules(
            "n",
            Some(&serde_json::json!([
                {"namespace": "prod", "statefulSet": "db", "policy": "workload"},
                {"pod": "legacy", "policy": "never"},
                {"namespace": "prod", "deployment": "web", "pool": "web", "addresses": ["198.18.0.50"]}
            ])),
        )
        .unwrap()
    }

    #[test]
    fn statefulset_ordinals_pods_and_deployments() {
        let r = rules();
        let id = |args: &str| match resolve(&env(args), &r).unwrap() {
            Some(Fixed::Identity(i)) => Some((i.key, i.policy, i.ordinal)),
            _ => None,
        };
        assert_eq!(
            id("K8S_POD_NAMESPACE=prod;K8S_POD_NAME=db-2"),
            Some(("prod/db/2".into(), ReleasePolicy::Workload, Some(2)))
        );
        assert_eq!(
            id("K8S_POD_NAMESPACE=dev;K8S_POD_NAME=db-2"),
            None,
            "other namespace"
        );
        assert_eq!(
            id("K8S_POD_NAMESPACE=prod;K8S_POD_NAME=db-x"),
            None,
            "not an ordinal"
        );
        assert_eq!(
            id("K8S_POD_NAMESPACE=any;K8S_POD_NAME=legacy"),
            Some(("any/legacy".into(), ReleasePolicy::Never, None))
        );
        assert_eq!(
            id("WEFT_IDENTITY=a/b;WEFT_POLICY=never"),
            Some(("a/b".into(), ReleasePolicy::Never, None))
        );
        match resolve(
            &env("K8S_POD_NAMESPACE=prod;K8S_POD_NAME=web-7d4b9c8f6-x2x9z"),
            &r,
        )
        .unwrap()
        {
            Some(Fixed::Pool(p)) => assert_eq!(p.name, "web"),
            other => panic!("{other:?}"),
        }
        assert!(
            resolve(&env("K8S_POD_NAMESPACE=prod;K8S_POD_NAME=web-x2x9z"), &r)
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn bad_rules_name_the_field_and_value() {
        for (v, want) in [
            (
                serde_json::json!([{"pod": "a", "policy": "sometimes"}]),
                "ipam.fixedIPs[0].policy \"sometimes\"",
            ),
            (
                serde_json::json!([{"pod": "a", "statefulSet": "b"}]),
                "exactly one",
            ),
            (
                serde_json::json!([{"deployment": "web"}]),
                "ipam.fixedIPs[0].addresses",
            ),
            (
                serde_json::json!([{"pod": "a", "colour": "red"}]),
                "ipam.fixedIPs[0].colour",
            ),
        ] {
            let e = parse_rules("n", Some(&v)).unwrap_err();
            assert!(e.msg.contains(want), "{} should contain {want}", e.msg);
        }
        assert!(
            resolve(&env("WEFT_IDENTITY=a;WEFT_POLICY=sometimes"), &[])
                .unwrap_err()
                .msg
                .contains("sometimes")
        );
    }
}
