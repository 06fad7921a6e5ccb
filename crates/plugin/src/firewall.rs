//! Weft's nftables table: masquerade, set up once per network and node namespace.
//!
//! Per-pod firewall work would cost a process spawn and a deleting transaction per pod. Instead
//! the table holds one rule per family: traffic from a masquerading network's subnets (sets
//! `masq4`, `masq6`) to anything that is not a Weft pod subnet on this node (sets `pods4`,
//! `pods6`) is masqueraded. Every Weft network adds its subnets to `pods*` on its first ADD,
//! masquerading or not, so pods of two networks on one node always see each other's real
//! addresses. A marker file records which (boot, namespace) a network was loaded into, so
//! later ADDs skip `nft` entirely.
use std::collections::BTreeSet;
use std::fs;
use std::io::ErrorKind;
use std::path::Path;

use ipnet::IpNet;
use weft_cni::CniError;
use weft_dataplane::masquerade::{self, Wanted};

const TABLE: &str = "table inet weft";

fn io(what: &str, path: &Path, e: std::io::Error) -> CniError {
    CniError::io(format!("{what} {}: {e}", path.display()))
}

/// The subnets masqueraded by the table in this namespace (none unless it is complete), for
/// CHECK.
pub fn masqueraded() -> Result<BTreeSet<IpNet>, CniError> {
    let have = masquerade::read().map_err(|e| CniError::io(format!("{TABLE}: {e}")))?;
    Ok(if have.complete() {
        have.masq
    } else {
        BTreeSet::new()
    })
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
        weft_dataplane::files::boot_id(),
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
    let applied = masquerade::ensure(|have| {
        let mine: BTreeSet<IpNet> = fw.subnets.iter().map(IpNet::trunc).collect();
        let mut pods = mine.clone();
        if !have.complete() {
            pods.extend(all_pod_subnets().iter().map(IpNet::trunc));
        }
        let masq = if fw.masquerade { mine } else { BTreeSet::new() };
        Wanted { pods, masq }
    });
    match applied {
        Ok(applied) => {
            for l in applied.iter().flat_map(|a| &a.skipped) {
                eprintln!("weft: network \"{}\": {l}", fw.network);
            }
        }
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
    weft_dataplane::files::replace(&marker, &want).map_err(|e| io("cannot write", &marker, e))
}
