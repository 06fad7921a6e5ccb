//! Weft's nftables table: a masquerading network never NATs traffic to another Weft network's
//! pods on the same node (regression: the lab saw bridge pods NATed towards routed pods).
mod common;

use common::*;
use serde_json::json;

fn conf(
    name: &str,
    mode: &str,
    v4: &str,
    v6: &str,
    masquerade: bool,
    data_dir: &str,
) -> serde_json::Value {
    json!({
        "cniVersion": "1.0.0", "name": name, "type": "weft", "mode": mode, "bridge": "wfw0",
        "masquerade": masquerade,
        "ipam": {"pools": [{"subnet": v4}, {"subnet": v6}], "dataDir": data_dir, "cooldownSeconds": 0}
    })
}

/// The reply destination of the node's conntrack entry for `src` -> `dst` (IPv4 ICMP).
fn reply_dst(node: &Netns, src: &str, dst: &str) -> Option<String> {
    let table = node.ok(&["cat", "/proc/net/nf_conntrack"]);
    table.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        let srcs: Vec<&str> = f.iter().filter_map(|x| x.strip_prefix("src=")).collect();
        let dsts: Vec<&str> = f.iter().filter_map(|x| x.strip_prefix("dst=")).collect();
        (srcs.first() == Some(&src) && dsts.first() == Some(&dst))
            .then(|| dsts.get(1).unwrap_or(&"").to_string())
    })
}

#[test]
fn masquerade_spares_pods_of_other_weft_networks() {
    require_root();
    let node = Node::new("fw");
    let dd = node.data_dir();
    let bridged = conf(
        "fw-bridge",
        "bridge",
        "198.18.30.0/24",
        "fd00:30::/64",
        true,
        &dd,
    );
    let routed = conf(
        "fw-routed",
        "routed",
        "198.18.31.0/24",
        "fd00:31::/64",
        false,
        &dd,
    );
    let (pa, pb) = (Netns::new("fwa"), Netns::new("fwb"));
    let add = |pod: &Netns, cid: &str, c: &serde_json::Value| {
        let mut call = Call::new("ADD", cid);
        let path = pod.path();
        call.netns = Some(&path);
        cni(&node.ns, &call, c).success()
    };
    let ra = add(&pa, "fwa", &bridged);
    let rb = add(&pb, "fwb", &routed);
    let (a4, b4) = (result_ip(&ra, 4).unwrap(), result_ip(&rb, 4).unwrap());
    let (a6, b6) = (result_ip(&ra, 6).unwrap(), result_ip(&rb, 6).unwrap());

    // Both networks' subnets are Weft pod subnets; only the bridge network masquerades.
    let rules = node.ns.ok(&["nft", "list", "table", "inet", "weft"]);
    let set = |name: &str| {
        rules
            .split(&format!("set {name} {{"))
            .nth(1)
            .unwrap_or("")
            .split('}')
            .next()
            .unwrap_or("")
            .to_string()
    };
    for s in ["198.18.30.0/24", "198.18.31.0/24"] {
        assert!(set("pods4").contains(s), "pods4 lacks {s}: {rules}");
    }
    for s in ["fd00:30::/64", "fd00:31::/64"] {
        assert!(set("pods6").contains(s), "pods6 lacks {s}: {rules}");
    }
    assert!(
        set("masq4").contains("198.18.30.0/24") && !set("masq4").contains("198.18.31.0/24"),
        "{rules}"
    );

    assert!(pa.ping(&b4), "bridge pod {a4} cannot reach routed pod {b4}");
    assert!(
        pa.exec(&["ping", "-6", "-c", "1", "-W", "2", &b6])
            .status
            .success(),
        "v6 {a6} -> {b6}"
    );
    // The routed pod answered the bridge pod's own address: no source NAT between pods.
    assert_eq!(
        reply_dst(&node.ns, &a4, &b4).as_deref(),
        Some(a4.as_str()),
        "{a4} -> {b4} was NATed"
    );

    for (pod, cid, c) in [(&pa, "fwa", &bridged), (&pb, "fwb", &routed)] {
        let mut call = Call::new("DEL", cid);
        let path = pod.path();
        call.netns = Some(&path);
        cni(&node.ns, &call, c).success();
    }
    assert!(weft_links(&node.ns).is_empty());
}
