//! Masquerade in Weft's own nftables table, set up once per network and node namespace.
//!
//! Per-pod firewall work would cost a process spawn and a deleting transaction per pod. Instead
//! the table holds one rule per family that masquerades traffic from any Weft pod subnet to
//! anything outside them, and each network adds its subnets to the sets. A marker file records
//! which (boot, namespace) the network's subnets were loaded into, so later ADDs skip `nft`.
use std::fs;
use std::io::ErrorKind;
use std::path::Path;

use ipnet::IpNet;
use weft_cni::CniError;
use weft_dataplane::nft;

const TABLE: &str = "table inet weft";

fn boot_id() -> String {
    fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn io(what: &str, path: &Path, e: std::io::Error) -> CniError {
    CniError::io(format!("{what} {}: {e}", path.display()))
}

/// The script that creates the table, sets and rules when missing and adds `subnets`.
fn script(subnets: &[IpNet], with_rules: bool) -> String {
    let mut s = String::from(
        "add table inet weft\n\
         add chain inet weft postrouting { type nat hook postrouting priority srcnat; policy accept; }\n\
         add set inet weft pods4 { type ipv4_addr; flags interval; }\n\
         add set inet weft pods6 { type ipv6_addr; flags interval; }\n",
    );
    if with_rules {
        s.push_str("add rule inet weft postrouting ip saddr @pods4 ip daddr != @pods4 masquerade comment \"weft masquerade\"\n");
        s.push_str("add rule inet weft postrouting ip6 saddr @pods6 ip6 daddr != @pods6 masquerade comment \"weft masquerade\"\n");
    }
    for n in subnets {
        let set = if n.addr().is_ipv4() { "pods4" } else { "pods6" };
        s.push_str(&format!("add element inet weft {set} {{ {n} }}\n"));
    }
    s
}

/// True when Weft's postrouting chain already holds its masquerade rules.
fn has_rules(table: &serde_json::Value) -> bool {
    table["nftables"].as_array().is_some_and(|items| {
        items
            .iter()
            .filter(|i| {
                i["rule"]["chain"] == "postrouting" && i["rule"]["comment"] == "weft masquerade"
            })
            .count()
            >= 2
    })
}

/// The subnets in the table's sets, for CHECK.
pub fn masqueraded_subnets() -> Result<Vec<String>, CniError> {
    let table = nft::list_table_json("inet", "weft").map_err(|e| CniError::io(e.to_string()))?;
    let Some(table) = table else {
        return Ok(Vec::new());
    };
    if !has_rules(&table) {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for item in table["nftables"].as_array().into_iter().flatten() {
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

/// Makes sure `subnets` of `network` are masqueraded in the current namespace.
pub fn ensure_masquerade(
    data_dir: &Path,
    network: &str,
    subnets: &[IpNet],
    netns_cookie: u64,
) -> Result<(), CniError> {
    let dir = data_dir.join("firewall");
    let marker = dir.join(network);
    let list: Vec<String> = subnets.iter().map(|s| s.to_string()).collect();
    let want = format!("{} {} {}\n", boot_id(), netns_cookie, list.join(","));
    match fs::read_to_string(&marker) {
        Ok(have) if have == want => return Ok(()),
        Ok(_) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(io("cannot read", &marker, e)),
    }
    fs::create_dir_all(&dir).map_err(|e| io("cannot create", &dir, e))?;
    // Two ADDs of a new network at once must not both add the rules.
    let lock_path = dir.join("lock");
    let lock = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| io("cannot open", &lock_path, e))?;
    lock.lock().map_err(|e| io("cannot lock", &lock_path, e))?;
    let table =
        nft::list_table_json("inet", "weft").map_err(|e| CniError::io(format!("{TABLE}: {e}")))?;
    let with_rules = !table.as_ref().is_some_and(has_rules);
    nft::apply(&script(subnets, with_rules))
        .map_err(|e| CniError::io(format!("cannot set up masquerade in {TABLE}: {e}")))?;
    let tmp = dir.join(format!(".{network}.tmp"));
    fs::write(&tmp, want).map_err(|e| io("cannot write", &tmp, e))?;
    fs::rename(&tmp, &marker).map_err(|e| io("cannot write", &marker, e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_adds_rules_only_when_asked() {
        let s = script(
            &[
                "198.18.0.0/24".parse().unwrap(),
                "fd00:18::/64".parse().unwrap(),
            ],
            false,
        );
        assert!(!s.contains("masquerade"));
        assert!(s.contains("add element inet weft pods4 { 198.18.0.0/24 }"));
        assert!(s.contains("add element inet weft pods6 { fd00:18::/64 }"));
        assert_eq!(script(&[], true).matches("masquerade comment").count(), 2);
    }
}
