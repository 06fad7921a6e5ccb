//! Weft's nftables table `inet weft`: its one shape, what it holds, and the script that
//! completes it. The plugin (per network, on its first ADD) and weftd (every reconcile) both
//! go through here, so the two can never disagree on the table.
//!
//! Shape: a NAT postrouting chain with one rule per family,
//! `ip saddr @masq4 ip daddr != @pods4 masquerade comment "weft masquerade"` and the `ip6` twin;
//! sets `pods4`/`pods6` (every Weft pod subnet: destinations never NATed, so pods always see
//! each other's real addresses) and `masq4`/`masq6` (subnets whose traffic leaving the pods is
//! masqueraded). Callers only ever add elements.

use std::collections::BTreeSet;

use ipnet::IpNet;

use crate::{Result, nft};

pub const RULE_COMMENT: &str = "weft masquerade";
const SETS: [&str; 4] = ["pods4", "pods6", "masq4", "masq6"];

/// What the sets must contain.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Wanted {
    pub pods: BTreeSet<IpNet>,
    pub masq: BTreeSet<IpNet>,
}

/// What the table holds now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Have {
    pub table: bool,
    /// Rules with our comment in chain postrouting.
    pub rules: usize,
    pub sets: BTreeSet<String>,
    pub pods: BTreeSet<IpNet>,
    pub masq: BTreeSet<IpNet>,
}

impl Have {
    /// The table, chain, sets and both rules are there (elements aside).
    pub fn complete(&self) -> bool {
        self.table && self.rules >= 2 && SETS.iter().all(|s| self.sets.contains(*s))
    }
}

/// Parses `nft -j list table inet weft` (None: no table).
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

/// Reads the table in the calling thread's namespace.
pub fn read() -> Result<Have> {
    Ok(parse(nft::list_table_json("inet", "weft")?.as_ref()))
}

fn set_of(prefix: &str, n: &IpNet) -> String {
    format!("{prefix}{}", if n.addr().is_ipv4() { 4 } else { 6 })
}

/// The nft script that brings `have` to `want` (None when nothing is missing). `add` of an
/// existing table, chain or set is a no-op; a chain missing one rule is started over rather
/// than given a duplicate of the other.
pub fn script(have: &Have, want: &Wanted) -> Option<String> {
    let pods: Vec<&IpNet> = want.pods.difference(&have.pods).collect();
    let masq: Vec<&IpNet> = want.masq.difference(&have.masq).collect();
    if have.complete() && pods.is_empty() && masq.is_empty() {
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

/// What [`ensure`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// "table inet weft with its masquerade rules" or "elements of table inet weft".
    pub what: &'static str,
    /// Elements the kernel refused (each `add element` line with its error), for the log.
    pub skipped: Vec<String>,
}

/// Reads the table, asks `want` what it must hold given what it holds, and adds what is
/// missing; None when nothing was.
pub fn ensure(want: impl FnOnce(&Have) -> Wanted) -> Result<Option<Applied>> {
    let have = read()?;
    let want = want(&have);
    let Some(s) = script(&have, &want) else {
        return Ok(None);
    };
    let what = if have.complete() {
        "elements of table inet weft"
    } else {
        "table inet weft with its masquerade rules"
    };
    let mut skipped = Vec::new();
    if let Err(e) = nft::apply(&s) {
        // An element overlapping one already there fails the whole batch: add the shape, then
        // the elements one by one, keeping those the kernel takes.
        let shape: String = s
            .lines()
            .filter(|l| !l.starts_with("add element"))
            .map(|l| format!("{l}\n"))
            .collect();
        nft::apply(&shape).map_err(|_| e)?;
        for l in s.lines().filter(|l| l.starts_with("add element")) {
            if let Err(e) = nft::apply(l) {
                skipped.push(format!("{l}: {e}"));
            }
        }
    }
    Ok(Some(Applied { what, skipped }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn script_recreates_a_flushed_table_and_is_quiet_when_complete() {
        let w = Wanted {
            pods: BTreeSet::from([net("198.18.0.0/24")]),
            masq: BTreeSet::from([net("198.18.0.0/24")]),
        };
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
        assert!(have.complete());
        assert_eq!(script(&have, &w), None);

        // Another subnet to spare from NAT: only an element is added.
        let mut w2 = w.clone();
        w2.pods.insert(net("198.19.0.0/24"));
        let s = script(&have, &w2).unwrap();
        assert!(!s.contains("add rule"));
        assert!(s.contains("add element inet weft pods4 { 198.19.0.0/24 }"));

        // One rule gone: the chain starts over instead of duplicating the other.
        let mut one = have.clone();
        one.rules = 1;
        let s = script(&one, &w).unwrap();
        assert!(s.contains("flush chain inet weft postrouting"));
        assert_eq!(s.matches("masquerade comment").count(), 2);
    }
}
