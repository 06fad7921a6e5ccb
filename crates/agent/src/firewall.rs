//! Masquerade for traffic leaving the cluster, in the plugin's nftables table `inet weft`.
//!
//! The table's one shape lives in `weft_dataplane::masquerade`, shared with the plugin. The
//! agent re-creates it when missing (a flushed ruleset comes back within a reconcile) and only
//! adds elements:
//! - `pods4`/`pods6`: every pool of every network in the store (all cluster pod subnets), so
//!   pod-to-pod traffic across nodes and networks is never NATed;
//! - `masq4`/`masq6`: the agent's network's pools when its config says `masquerade: true`.
//!
//! It never deletes elements: the plugin adds its own, and a subnet that is in a set but no
//! longer in the store does no harm to pods that no longer exist.

use weft_ipam::NetworkRecord;

pub use weft_dataplane::masquerade::Wanted;

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

/// Makes the node's table hold `want` (see [`weft_dataplane::masquerade::ensure`]); a
/// description of what was added, None when nothing was.
pub fn ensure(want: &Wanted) -> Result<Option<String>, weft_dataplane::Error> {
    let applied = weft_dataplane::masquerade::ensure(|_| want.clone())?;
    Ok(applied.map(|a| {
        for l in &a.skipped {
            crate::log!("nftables: {l}");
        }
        format!("nftables {}", a.what)
    }))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use ipnet::IpNet;

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
}
