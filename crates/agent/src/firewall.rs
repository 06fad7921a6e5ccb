//! Masquerade for traffic leaving the cluster, in the plugin's nftables table `inet weft`.
//!
//! The plugin (crates/plugin/src/firewall.rs) owns the shape of the table: a NAT postrouting
//! chain with one rule per family, `ip saddr @masq4 ip daddr != @pods4 masquerade comment
//! "weft masquerade"` (and the `ip6`/`6` twin). The agent keeps the very same table, chain,
//! sets and rules (created when missing, so a flushed ruleset comes back within a reconcile)
//! and only adds elements:
//! - `pods4`/`pods6`: every pool of every network in the store (all cluster pod subnets), so
//!   pod-to-pod traffic across nodes and networks is never NATed;
//! - `masq4`/`masq6`: the agent's network's pools when its config says `masquerade: true`.
//!
//! It never deletes elements: the plugin adds its own, and a subnet that is in a set but no
//! longer in the store does no harm to pods that no longer exist.

use std::collections::BTreeSet;

use ipnet::IpNet;
use weft_ipam::NetworkRecord;

pub const RULE_COMMENT: &str = "weft masquerade";

/// What the table must contain (besides its fixed shape).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Wanted {
    pub pods: BTreeSet<IpNet>,
    pub masq: BTreeSet<IpNet>,
}

/// Pure: the sets' wanted elements from every network record.
pub fn wanted(networks: &[NetworkRecord], network: &str, masquerade: bool) -> Wanted {
    let mut w = Wanted::default();
    for n in networks {
        for p in &n.spec.pools {
            w.pods.insert(p.subnet.trunc());
            if masquerade && n.spec.name == network {
                w.masq.insert(p.subnet.trunc());
            }
        }
    }
    w
}

/// What the table holds now, parsed from `nft -j list table inet weft`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Have {
    pub table: bool,
    /// Rules with our comment in chain postrouting.
    pub rules: usize,
    pub sets: BTreeSet<String>,
    pub pods: BTreeSet<IpNet>,
    pub masq: BTreeSet<IpNet>,
}

pub fn parse(table: Option<&serde_json::Value>) -> Have {
    let mut h = Have::default();
    let Some(t) = table else {
        return h;
    };
    h.table = true;
    for item in t["nftables"].as_array().into_iter().flatten() {
        if item["rule"]["chain"] == "postrouting" && item["rule"]["comment"] == RULE_COMMENT {
            h.rules += 1;
        }
        let Some(name) = item["set"]["name"].as_str() else {
            continue;
        };
        h.sets.insert(name.to_string());
        let into = if name.starts_with("pods") {
            &mut h.pods
        } else if name.starts_with("masq") {
            &mut h.masq
        } else {
            continue;
        };
        for e in item["set"]["elem"].as_array().into_iter().flatten() {
            let net = if let Some(p) = e.get("prefix") {
                format!("{}/{}", p["addr"].as_str().unwrap_or_default(), p["len"])
                    .parse::<IpNet>()
                    .ok()
            } else if let Some(s) = e.as_str() {
                s.parse::<std::net::IpAddr>().ok().map(IpNet::from)
            } else {
                None
            };
            if let Some(n) = net {
                into.insert(n);
            }
        }
    }
    h
}

fn set_of(prefix: &str, n: &IpNet) -> String {
    format!("{prefix}{}", if n.addr().is_ipv4() { 4 } else { 6 })
}

/// Pure: the nft script that brings `have` to `want` (None when nothing is missing). The
/// shape is the plugin's: `add` of an existing table, chain or set is a no-op.
pub fn script(have: &Have, want: &Wanted) -> Option<String> {
    let shape_ok = have.table
        && have.rules >= 2
        && ["pods4", "pods6", "masq4", "masq6"]
            .iter()
            .all(|s| have.sets.contains(*s));
    let pods: Vec<&IpNet> = want.pods.difference(&have.pods).collect();
    let masq: Vec<&IpNet> = want.masq.difference(&have.masq).collect();
    if shape_ok && pods.is_empty() && masq.is_empty() {
        return None;
    }
    let mut s = String::from(
        "add table inet weft\n\
         add chain inet weft postrouting { type nat hook postrouting priority srcnat; policy accept; }\n\
         add set inet weft pods4 { type ipv4_addr; flags interval; }\n\
         add set inet weft pods6 { type ipv6_addr; flags interval; }\n\
         add set inet weft masq4 { type ipv4_addr; flags interval; }\n\
         add set inet weft masq6 { type ipv6_addr; flags interval; }\n",
    );
    if have.rules < 2 {
        if have.rules > 0 {
            // One of the two is gone: start the chain over rather than duplicate the other.
            s.push_str("flush chain inet weft postrouting\n");
        }
        s.push_str(&format!(
            "add rule inet weft postrouting ip saddr @masq4 ip daddr != @pods4 masquerade comment \"{RULE_COMMENT}\"\n\
             add rule inet weft postrouting ip6 saddr @masq6 ip6 daddr != @pods6 masquerade comment \"{RULE_COMMENT}\"\n"
        ));
    }
    for n in pods {
        s.push_str(&format!(
            "add element inet weft {} {{ {n} }}\n",
            set_of("pods", n)
        ));
    }
    for n in masq {
        s.push_str(&format!(
            "add element inet weft {} {{ {n} }}\n",
            set_of("masq", n)
        ));
    }
    Some(s)
}

/// Reads the table in this namespace and adds what is missing; a description of what was
/// done, None when nothing was.
pub fn ensure(want: &Wanted) -> Result<Option<String>, weft_dataplane::Error> {
    let table = weft_dataplane::nft::list_table_json("inet", "weft")?;
    let have = parse(table.as_ref());
    let Some(s) = script(&have, want) else {
        return Ok(None);
    };
    let what = if !have.table || have.rules < 2 {
        "nftables table inet weft with its masquerade rules".to_string()
    } else {
        "nftables elements of table inet weft".to_string()
    };
    match weft_dataplane::nft::apply(&s) {
        Ok(()) => Ok(Some(what)),
        Err(e) => {
            // An element overlapping one the plugin added makes the whole batch fail: add the
            // shape, then the elements one by one, tolerating the overlaps.
            let mut lines = s.lines().filter(|l| !l.starts_with("add element"));
            let shape: String = lines.by_ref().map(|l| format!("{l}\n")).collect();
            weft_dataplane::nft::apply(&shape).map_err(|_| e)?;
            for l in s.lines().filter(|l| l.starts_with("add element")) {
                if let Err(e) = weft_dataplane::nft::apply(l) {
                    crate::log!("nftables: {l}: {e}");
                }
            }
            Ok(Some(what))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_ipam::{NetworkSpec, PoolSpec};

    fn rec(name: &str, subnets: &[&str]) -> NetworkRecord {
        let pools = subnets
            .iter()
            .map(|s| PoolSpec {
                subnet: s.parse().unwrap(),
                range_start: None,
                range_end: None,
                exclude: vec![],
                gateway: None,
            })
            .collect();
        NetworkRecord {
            schema: 1,
            spec: NetworkSpec::new(name, pools),
            created_at: 0,
        }
    }

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn every_networks_pools_are_pods_and_only_ours_masquerade() {
        let nets = [
            rec("cluster", &["198.18.0.0/24", "fd00:18::/64"]),
            rec("other", &["198.19.0.0/24"]),
        ];
        let w = wanted(&nets, "cluster", true);
        assert_eq!(
            w.pods,
            BTreeSet::from([
                net("198.18.0.0/24"),
                net("198.19.0.0/24"),
                net("fd00:18::/64")
            ])
        );
        assert_eq!(
            w.masq,
            BTreeSet::from([net("198.18.0.0/24"), net("fd00:18::/64")])
        );
        assert!(wanted(&nets, "cluster", false).masq.is_empty());
    }

    #[test]
    fn script_recreates_a_flushed_table_and_is_quiet_when_complete() {
        let w = wanted(&[rec("cluster", &["198.18.0.0/24"])], "cluster", true);
        let s = script(&parse(None), &w).unwrap();
        assert_eq!(s.matches("masquerade comment").count(), 2);
        assert!(s.contains("ip saddr @masq4 ip daddr != @pods4 masquerade"));
        assert!(s.contains("add element inet weft pods4 { 198.18.0.0/24 }"));
        assert!(s.contains("add element inet weft masq4 { 198.18.0.0/24 }"));
        assert!(!s.contains("flush"));

        let table = serde_json::json!({"nftables": [
            {"table": {"family": "inet", "name": "weft"}},
            {"set": {"name": "pods4", "elem": [{"prefix": {"addr": "198.18.0.0", "len": 24}}]}},
            {"set": {"name": "pods6"}},
            {"set": {"name": "masq4", "elem": [{"prefix": {"addr": "198.18.0.0", "len": 24}}]}},
            {"set": {"name": "masq6"}},
            {"rule": {"chain": "postrouting", "comment": "weft masquerade"}},
            {"rule": {"chain": "postrouting", "comment": "weft masquerade"}},
        ]});
        let have = parse(Some(&table));
        assert_eq!(have.rules, 2);
        assert_eq!(script(&have, &w), None);

        // The plugin's table without the cluster's other pools: only elements are added.
        let w2 = wanted(
            &[
                rec("cluster", &["198.18.0.0/24"]),
                rec("b", &["198.19.0.0/24"]),
            ],
            "cluster",
            false,
        );
        let s = script(&have, &w2).unwrap();
        assert!(!s.contains("add rule"));
        assert!(s.contains("add element inet weft pods4 { 198.19.0.0/24 }"));
        assert!(!s.contains("add element inet weft masq4"));
    }
}
