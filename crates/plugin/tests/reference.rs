//! End to end: `weft-ipam` as the IPAM of the reference `bridge` and `macvlan` plugins
//! (/usr/lib/cni), which find it on CNI_PATH. Needs root.

mod common;

use std::net::IpAddr;

use common::*;
use ipnet::IpNet;
use serde_json::{Value, json};

fn call<'a>(verb: &'a str, bin: &'a str, cid: &'a str, pod: &'a std::path::Path) -> Call<'a> {
    let mut c = Call::new(verb, cid);
    c.bin = bin;
    c.netns = Some(pod);
    c
}

/// ADDs two pods with `conf` through reference plugin `bin`, checks addresses and reachability,
/// DELs them and checks the allocations are gone.
fn two_pods(node: &Node, conf: &Value) {
    let n = &node.ns;
    let bin = format!("{REFERENCE_PLUGINS}/{}", conf["type"].as_str().unwrap());
    let network = conf["name"].as_str().unwrap();
    let data = node.data_dir();
    let pool: IpNet = conf["ipam"]["pools"][0]["subnet"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let gateway: Option<IpAddr> = conf["ipam"]["pools"][0]["gateway"]
        .as_str()
        .map(|g| g.parse().unwrap());

    let pods = [Netns::new("ra"), Netns::new("rb")];
    let cids = ["ref-a", "ref-b"];
    let mut results = vec![];
    let mut addrs = vec![];
    for (pod, cid) in pods.iter().zip(cids) {
        let path = pod.path();
        let r = cni(n, &call("ADD", &bin, cid, &path), conf).success();
        let ip: IpNet = r["ips"][0]["address"]
            .as_str()
            .unwrap_or_else(|| panic!("no address: {r}"))
            .parse()
            .unwrap();
        assert!(pool.contains(&ip.addr()), "{ip} not from pool {pool}: {r}");
        assert_eq!(
            ip.prefix_len(),
            pool.prefix_len(),
            "weft-ipam gives the pool prefix: {r}"
        );
        if let Some(g) = gateway {
            assert_ne!(ip.addr(), g, "pod got the gateway address: {r}");
            assert_eq!(
                r["ips"][0]["gateway"]
                    .as_str()
                    .map(|x| x.parse::<IpAddr>().unwrap()),
                Some(g),
                "gateway in result: {r}"
            );
        }
        assert!(
            pod.addrs("eth0").contains(&ip.to_string()),
            "{ip} not on {cid}'s eth0"
        );
        assert!(
            handle_file(&data, network, cid, "eth0").exists(),
            "no allocation record for {cid}"
        );
        // weft-ipam records the pod's namespace (for check's liveness verdict), no interface.
        let rec =
            &store_records(&data, "handles")[&format!("/weft/v1/handles/{network}/{cid}:eth0")];
        let meta = std::fs::metadata(&path).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_eq!(
            (
                &rec["netns"]["path"],
                &rec["netns"]["ino"],
                &rec["netns"]["dev"]
            ),
            (&json!(path), &json!(meta.ino()), &json!(meta.dev())),
            "{rec}"
        );
        assert!(rec.get("hostInterface").is_none(), "{rec}");
        addrs.push(ip.addr());
        results.push(r);
    }
    assert_ne!(addrs[0], addrs[1], "two pods got the same address");
    assert!(
        ping_tries(&pods[0], &addrs[1].to_string(), 5),
        "pod a cannot ping pod b at {}",
        addrs[1]
    );
    assert!(
        ping_tries(&pods[1], &addrs[0].to_string(), 5),
        "pod b cannot ping pod a at {}",
        addrs[0]
    );

    for (i, (pod, cid)) in pods.iter().zip(cids).enumerate() {
        let path = pod.path();
        let mut c = conf.clone();
        c["prevResult"] = results[i].clone();
        cni(n, &call("DEL", &bin, cid, &path), &c).success();
        assert!(
            !handle_file(&data, network, cid, "eth0").exists(),
            "allocation of {cid} left after DEL"
        );
    }
    assert_eq!(
        handle_files(&data, network),
        Vec::<String>::new(),
        "allocations left after DEL"
    );
}

#[test]
fn reference_bridge_with_weft_ipam() {
    require_root();
    let node = Node::new("rbr");
    let mut conf = list_plugin(&example_list("reference-bridge-weft-ipam.conflist"), 0);
    conf["ipam"]["dataDir"] = json!(node.data_dir());
    two_pods(&node, &conf);
    let br = node.ns.addrs("cni-weft");
    assert!(
        br.contains(&"198.18.4.1/24".to_string()),
        "reference bridge did not take weft-ipam's gateway: {br:?}"
    );
}

#[test]
fn reference_macvlan_with_weft_ipam() {
    require_root();
    let node = Node::new("rmv");
    let n = &node.ns;
    // macvlan needs a parent link; there is no dummy module, so a veth pair inside the node.
    n.ok(&[
        "ip", "link", "add", "mvp0", "type", "veth", "peer", "name", "mvp1",
    ]);
    n.ok(&["ip", "link", "set", "mvp0", "up"]);
    n.ok(&["ip", "link", "set", "mvp1", "up"]);
    let conf = json!({
        "cniVersion": "1.0.0",
        "name": "ref-macvlan-weft-ipam",
        "type": "macvlan",
        "master": "mvp0",
        "mode": "bridge",
        "ipam": {
            "type": "weft-ipam",
            "pools": [{"subnet": "198.18.5.0/24", "gateway": "198.18.5.1"}],
            "dataDir": node.data_dir(),
        }
    });
    two_pods(&node, &conf);
}
