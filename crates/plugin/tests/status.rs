//! STATUS tells the runtime when an ADD cannot be served; hairpin is set on the bridge port.
mod common;

use common::*;
use serde_json::json;

#[test]
fn status_reports_an_exhausted_pool_with_code_50_and_hairpin_is_on_the_port() {
    require_root();
    let node = Node::new("st");
    let conf = json!({
        "cniVersion": "1.1.0", "name": "st", "type": "weft", "bridge": "wst0", "hairpin": true,
        "ipam": {"pools": [{"subnet": "198.18.40.0/30"}], "dataDir": node.data_dir(), "cooldownSeconds": 0}
    });
    let status = || cni(&node.ns, &Call::new("STATUS", "x"), &conf);
    assert_eq!(status().code, 0, "{:?}", status());

    // A /30 with the gateway on .1 leaves one address for pods.
    let pod = Netns::new("stp");
    let path = pod.path();
    let mut add = Call::new("ADD", "st1");
    add.netns = Some(&path);
    let r = cni(&node.ns, &add, &conf).success();
    let host = r["interfaces"][1]["name"].as_str().unwrap().to_string();
    let link = node.ns.ip_json(&["-d", "link", "show", "dev", &host]);
    assert_eq!(
        link[0]["linkinfo"]["info_slave_data"]["hairpin"], true,
        "{link}"
    );

    let out = status();
    assert_eq!(out.code, 1);
    let err = out.json();
    assert_eq!(err["code"], 50, "{err}");
    assert!(
        err["msg"]
            .as_str()
            .unwrap()
            .contains("no free IPv4 address"),
        "{err}"
    );

    let mut del = Call::new("DEL", "st1");
    del.netns = Some(&path);
    cni(&node.ns, &del, &conf).success();
    assert_eq!(status().code, 0, "ready again once the address is freed");
}

#[test]
fn routed_status_waits_for_this_nodes_agent_when_the_cluster_runs_agents() {
    use weft_store::Store;
    require_root();
    let node = Node::new("sa");
    let conf = json!({
        "cniVersion": "1.1.0", "name": "sa", "type": "weft", "mode": "routed",
        "ipam": {"pools": [{"subnet": "198.18.41.0/24"}], "dataDir": node.data_dir(), "node": "node-a"}
    });
    let status = || cni(&node.ns, &Call::new("STATUS", "x"), &conf);
    assert_eq!(
        status().code,
        0,
        "no agents anywhere: a lone routed node is ready"
    );
    let store =
        weft_store::embedded::EmbeddedStore::open(node.data_dir.path().join("store")).unwrap();
    let put = |name: &str| {
        let txn = weft_store::Txn {
            compares: vec![],
            ops: vec![weft_store::Op::Put {
                key: weft_ipam::node_key(name),
                value: b"{}".to_vec(),
            }],
        };
        assert!(store.commit(&txn).unwrap());
    };
    put("node-b");
    let out = status();
    let err = out.json();
    assert_eq!(err["code"], 50, "{err}");
    assert!(
        err["msg"]
            .as_str()
            .unwrap()
            .contains("weftd is not running on node \"node-a\""),
        "{err}"
    );
    put("node-a");
    assert_eq!(status().code, 0, "ready once this node's agent registered");
}
