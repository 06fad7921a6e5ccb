//! Weft's nftables table: masquerade, set up once per network and node namespace.
//!
//! Per-pod firewall work would cost a process spawn and a deleting transaction per pod. Instead
//! the table holds one rule per family: traffic from a masquerading network's subnets (sets
//! `masq4`, `masq6`) to anything that is not a Weft pod subnet on this node (sets `pods4`,
//! `pods6`) is masqueraded. Every Weft network adds its subnets to `pods*` on its first ADD,
//! masquerading or not, so pods of two networks on one node always see each other's real
//! addresses. A marker file records which (boot, namespace) a network was loaded into, so
//! later ADDs skip `nft` entirely.
use std::fs;
use std::io::ErrorKind;
use std::path::Path;

use ipnet::IpNet;
use weft_cni::CniError;
use weft_dataplane::nft;

const TABLE: &str = "table inet weft";
const RULE_COMMENT: &str = "weft masquerade";

fn boot_id() -> String {
    fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn io(what: &str, path: &Path, e: std::io::Error) -> CniError {
    CniError::io(format!("{what} {}: {e}", path.display()))
}

fn set_of(prefix: &str, n: &IpNet) -> String {
    format!("{prefix}{}", if n.addr().is_ipv4() { 4 } else { 6 })
}

/// The script that creates what is missing and adds the subnets. `pods`: every Weft pod subnet
/// known; `masq`: the subnets whose traffic leaving the pods is masqueraded.
fn script(pods: &[IpNet], masq: &[IpNet], with_rules: bool) -> String {
    let mut s = String::from(
        "add table inet weft\n\
         add chain inet weft postrouting { type nat hook postrouting priority srcnat; policy accept; }\n\
         add set inet weft pods4 { type ipv4_addr; flags interval; }\n\
         add set inet weft pods6 { type ipv6_addr; flags interval; }\n\
         add set inet weft masq4 { type ipv4_addr; flags interval; }\n\
         add set inet weft masq6 { type ipv6_addr; flags interval; }\n",
    );
    if with_rules {
        s.push_str(&format!(
            "add rule inet weft postrouting ip saddr @masq4 ip daddr != @pods4 masquerade comment \"{RULE_COMMENT}\"\n"
        ));
        s.push_str(&format!(
            "add rule inet weft postrouting ip6 saddr @masq6 ip6 daddr != @pods6 masquerade comment \"{RULE_COMMENT}\"\n"
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
    s
}

/// True when Weft's postrouting chain already holds its masquerade rules.
fn has_rules(table: &serde_json::Value) -> bool {
    table["nftables"].as_array().is_some_and(|items| {
        items
            .iter()
            .filter(|i| i["rule"]["chain"] == "postrouting" && i["rule"]["comment"] == RULE_COMMENT)
            .count()
            >= 2
    })
}

/// The subnets in the named sets (`pods` or `masq`), for CHECK.
pub fn subnets_in(sets: &str) -> Result<Vec<String>, CniError> {
    let table = nft::list_table_json("inet", "weft").map_err(|e| CniError::io(e.to_string()))?;
    let Some(table) = table else {
        return Ok(Vec::new());
    };
    if !has_rules(&table) {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for item in table["nftables"].as_array().into_iter().flatten() {
        let name = item["set"]["name"].as_str().unwrap_or_default();
        if !name.starts_with(sets) {
            continue;
        }
        for e in item["set"]["elem"].as_array().into_iter().flatten() {
            if let Some(p) = e.get("prefix") {
                out.push(format!(
                    "{}/{}",
                    p["addr"].as_str().unwrap_or_default(),
                    p["len"]
                ));
            } else if let Some(s) = e.as_str() {
                out.push(s.to_string());
            }
        }
    }
    Ok(out)
}

/// What one network asks of the table.
pub struct NetworkFirewall<'a> {
    pub data_dir: &'a Path,
    pub network: &'a str,
    pub subnets: &'a [IpNet],
    pub masquerade: bool,
    pub netns_cookie: u64,
}

/// Makes sure the network's subnets are in the table in the current namespace.
/// `all_pod_subnets` is asked only when the table's rules must be (re)created, so that every
/// known network's subnets are back in `pods*` after someone flushed the table.
pub fn ensure(
    fw: &NetworkFirewall<'_>,
    all_pod_subnets: impl FnOnce() -> Vec<IpNet>,
) -> Result<(), CniError> {
    let dir = fw.data_dir.join("firewall");
    let marker = dir.join(fw.network);
    let list: Vec<String> = fw.subnets.iter().map(|s| s.to_string()).collect();
    let want = format!(
        "{} {} {} masquerade={}\n",
        boot_id(),
        fw.netns_cookie,
        list.join(","),
        fw.masquerade
    );
    match fs::read_to_string(&marker) {
        Ok(have) if have == want => return Ok(()),
        Ok(_) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(io("cannot read", &marker, e)),
    }
    fs::create_dir_all(&dir).map_err(|e| io("cannot create", &dir, e))?;
    // Two ADDs of new networks at once must not both add the rules.
    let lock_path = dir.join("lock");
    let lock = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| io("cannot open", &lock_path, e))?;
    lock.lock().map_err(|e| io("cannot lock", &lock_path, e))?;
    let applied = nft::list_table_json("inet", "weft").and_then(|table| {
        let with_rules = !table.as_ref().is_some_and(has_rules);
        let mut pods = fw.subnets.to_vec();
        if with_rules {
            pods.extend(all_pod_subnets());
        }
        let masq: &[IpNet] = if fw.masquerade { fw.subnets } else { &[] };
        nft::apply(&script(&pods, masq, with_rules))
    });
    match applied {
        Ok(()) => {}
        Err(e) if fw.masquerade => {
            return Err(CniError::io(format!(
                "network \"{}\": cannot set up masquerade in {TABLE}: {e}",
                fw.network
            )));
        }
        // Without masquerade the table only keeps other networks' pods from being NATed
        // towards these; a node without nftables can still run the network.
        Err(e) => eprintln!(
            "weft: network \"{}\": could not add its subnets to {TABLE}: {e}",
            fw.network
        ),
    }
    let tmp = dir.join(format!(".{}.tmp", fw.network));
    fs::write(&tmp, want).map_err(|e| io("cannot write", &tmp, e))?;
    fs::rename(&tmp, &marker).map_err(|e| io("cannot write", &marker, e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_adds_rules_only_when_asked_and_sorts_sets() {
        let v4: IpNet = "198.18.0.0/24".parse().unwrap();
        let v6: IpNet = "fd00:18::/64".parse().unwrap();
        let s = script(&[v4, v6], &[], false);
        assert!(!s.contains("masquerade comment"));
        assert!(s.contains("add element inet weft pods4 { 198.18.0.0/24 }"));
        assert!(s.contains("add element inet weft pods6 { fd00:18::/64 }"));
        assert!(!s.contains("add element inet weft masq"));
        let s = script(&[v4], &[v4], true);
        assert_eq!(s.matches("masquerade comment").count(), 2);
        assert!(s.contains("ip saddr @masq4 ip daddr != @pods4 masquerade"));
        assert!(s.contains("add element inet weft masq4 { 198.18.0.0/24 }"));
    }
}
