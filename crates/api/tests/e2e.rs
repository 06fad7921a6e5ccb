//! Every resource of weft-api end to end: a real etcd, the real weft-api binary, nodes
//! registered the way weftd registers them (weft_agent::node::Registration, on a lease), and
//! allocations made through weft_ipam::Ipam as the CNI plugin makes them.
mod common;

use std::sync::Arc;

use common::*;
use serde_json::{Value, json};
use weft_agent::node::{NodeRecord, Registration, SCHEMA};
use weft_ipam::{
    AllocateRequest, Fixed, Identity, Ipam, NetworkSpec, PoolRequest, PoolSpec, ReleasePolicy,
};
use weft_store::Store;
use weft_store::testing::EtcdServer;

fn node_record(name: &str, ip: &str) -> NodeRecord {
    NodeRecord {
        schema: SCHEMA,
        name: name.into(),
        underlay_ip: ip.parse().unwrap(),
        underlay_subnet: "198.51.100.0/24".parse().unwrap(),
        underlay_ip6: None,
        vtep_mac: Some("0a:58:00:00:00:01".into()),
        vtep_ip: Some(ip.parse().unwrap()),
        vni: Some(4096),
        networks: vec!["cluster".into()],
        mode: "hybrid".into(),
    }
}

fn spec() -> NetworkSpec {
    let pool = |s: &str| PoolSpec {
        subnet: s.parse().unwrap(),
        range_start: None,
        range_end: None,
        exclude: vec![],
        gateway: None,
    };
    let mut s = NetworkSpec::new(
        "cluster",
        vec![pool("198.18.0.0/24"), pool("fd00:18::/120")],
    );
    s.cooldown_seconds = 0;
    s
}

fn pod(id: &str, node: &str, pod: &str, fixed: Option<Fixed>) -> AllocateRequest {
    AllocateRequest {
        container_id: id.into(),
        ifname: "eth0".into(),
        node: node.into(),
        requested: vec![],
        pod: Some(pod.into()),
        fixed,
        ..Default::default()
    }
}

fn v4(a: &weft_ipam::Allocated) -> String {
    a.addresses
        .iter()
        .find(|x| x.address.addr().is_ipv4())
        .unwrap()
        .address
        .addr()
        .to_string()
}

fn v6(a: &weft_ipam::Allocated) -> String {
    a.addresses
        .iter()
        .find(|x| x.address.addr().is_ipv6())
        .unwrap()
        .address
        .addr()
        .to_string()
}

#[test]
fn every_resource_end_to_end() {
    let mut etcd = EtcdServer::start();
    let store: Arc<dyn Store> = Arc::new(store(&etcd));
    let api = Api::start(&etcd, &[]);

    // Two nodes registered as weftd registers them.
    let reg1 =
        Registration::register(store.clone(), &node_record("node-1", "198.51.100.2"), 30).unwrap();
    let _reg2 =
        Registration::register(store.clone(), &node_record("node-2", "198.51.100.3"), 30).unwrap();

    // The network, through the API.
    let body = json!({"name": "cluster", "pools": [{"subnet": "198.18.0.0/24"}, {"subnet": "fd00:18::/120"}], "cooldownSeconds": 0});
    let (s, v) = api.send("POST", "/v1/networks", &body);
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["name"], "cluster");
    assert_eq!(v["usage"][0]["size"], 254);
    let (s, v) = api.send("POST", "/v1/networks", &body);
    assert_eq!(s, 409, "a second create: {v}");
    // An overlapping network is refused, naming both networks and both CIDRs.
    let (s, v) = api.send(
        "POST",
        "/v1/networks",
        &json!({"name": "other", "pools": [{"subnet": "198.18.0.0/16"}]}),
    );
    assert_eq!(s, 409, "{v}");
    let e = v["error"].as_str().unwrap();
    for word in ["other", "cluster", "198.18.0.0/16", "198.18.0.0/24"] {
        assert!(e.contains(word), "{e} names {word}");
    }
    assert_eq!(v["field"], "pools");
    // A bad field is named.
    let (s, v) = api.send(
        "POST",
        "/v1/networks",
        &json!({"name": "bad", "pools": [{"subnet": "198.20.0.0/24", "gateway": "198.21.0.1"}]}),
    );
    assert_eq!(s, 422, "{v}");
    assert_eq!(v["field"], "pools[0].gateway");
    let (s, v) = api.send(
        "POST",
        "/v1/networks",
        &json!({"name": "bad", "pools": [{"subnet": "not-a-cidr"}]}),
    );
    assert_eq!(s, 422, "{v}");
    assert_eq!(v["field"], "pools[0].subnet");
    let (s, v) = api.send(
        "POST",
        "/v1/networks",
        &json!({"name": "bad name", "pools": [{"subnet": "198.20.0.0/24"}]}),
    );
    assert_eq!(s, 422, "{v}");
    assert_eq!(v["field"], "name");

    // Fixed addresses ahead of their pods: a reservation and an address pool.
    let (s, v) = api.send(
        "POST",
        "/v1/networks/cluster/reservations",
        &json!({"key": "prod/db/0", "addresses": ["198.18.0.200"], "policy": "workload", "workload": "prod/db", "ordinal": 0}),
    );
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["addresses"][0], "198.18.0.200/24");
    let (s, v) = api.send(
        "POST",
        "/v1/networks/cluster/reservations",
        &json!({"key": "prod/db/1", "addresses": ["198.18.0.201"]}),
    );
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["policy"], "never");
    let (s, v) = api.send(
        "POST",
        "/v1/networks/cluster/reservations",
        &json!({"key": "prod/db/2", "addresses": ["198.18.0.201"]}),
    );
    assert_eq!(s, 409, "an address reserved twice: {v}");
    assert!(v["error"].as_str().unwrap().contains("prod/db/1"), "{v}");
    let (s, v) = api.send(
        "POST",
        "/v1/networks/cluster/reservations",
        &json!({"key": "x", "addresses": ["10.0.0.1"]}),
    );
    assert_eq!(s, 422, "{v}");
    assert_eq!(v["field"], "addresses");
    let (s, v) = api.send(
        "POST",
        "/v1/networks/cluster/reservations",
        &json!({"key": "x", "addresses": ["198.18.0.9"], "policy": "sometimes"}),
    );
    assert_eq!(s, 422, "{v}");
    assert_eq!(v["field"], "policy");
    let (s, v) = api.send(
        "POST",
        "/v1/networks/cluster/pools",
        &json!({"name": "web", "addresses": ["198.18.0.210", "198.18.0.211"]}),
    );
    assert_eq!(s, 201, "{v}");
    let (s, v) = api.send(
        "POST",
        "/v1/networks/cluster/pools",
        &json!({"name": "web2", "addresses": ["198.18.0.211"]}),
    );
    assert_eq!(s, 409, "{v}");

    // Pods, allocated as the plugin allocates.
    let ipam = Ipam::new(&*store);
    let spec = spec();
    let a = ipam
        .allocate(&spec, &pod("ctr-a", "node-1", "default/pod-a", None))
        .unwrap();
    let b = ipam
        .allocate(&spec, &pod("ctr-b", "node-2", "default/pod-b", None))
        .unwrap();
    let id = Identity {
        key: "prod/db/0".into(),
        policy: ReleasePolicy::Workload,
        workload: Some("prod/db".into()),
        ordinal: Some(0),
    };
    let db = ipam
        .allocate(
            &spec,
            &pod("ctr-db", "node-2", "prod/db-0", Some(Fixed::Identity(id))),
        )
        .unwrap();
    assert_eq!(v4(&db), "198.18.0.200");
    let web = ipam
        .allocate(
            &spec,
            &pod(
                "ctr-web",
                "node-1",
                "prod/web-1",
                Some(Fixed::Pool(PoolRequest {
                    name: "web".into(),
                    addresses: vec![],
                })),
            ),
        )
        .unwrap();
    let web_ip = v4(&web);
    let pool_free = if web_ip == "198.18.0.210" {
        "198.18.0.211"
    } else {
        "198.18.0.210"
    };

    // Lookups: who, which node, which container and pod, since when.
    let v = api.ok(&format!("/v1/ips/{}", v4(&a)));
    assert_eq!(v["state"], "allocated");
    assert_eq!(v["network"], "cluster");
    assert_eq!(v["node"], "node-1");
    assert_eq!(v["containerId"], "ctr-a");
    assert_eq!(v["ifname"], "eth0");
    assert_eq!(v["pod"], "default/pod-a");
    assert_eq!(v["handle"], "ctr-a:eth0");
    assert!(v["since"].as_u64().unwrap() > 1_700_000_000, "{v}");
    let v = api.ok(&format!("/v1/ips/{}", v6(&b)));
    assert_eq!(v["node"], "node-2");
    assert_eq!(v["pod"], "default/pod-b");
    let v = api.ok("/v1/ips/198.18.0.200");
    assert_eq!(v["state"], "allocated");
    assert_eq!(v["pod"], "prod/db-0");
    assert_eq!(v["fixed"]["kind"], "reservation");
    assert_eq!(v["fixed"]["name"], "prod/db/0");
    assert_eq!(v["fixed"]["policy"], "workload");
    assert_eq!(v["reservation"]["holder"], "ctr-db:eth0");
    let v = api.ok("/v1/ips/198.18.0.201");
    assert_eq!(v["state"], "reserved", "reserved but unused: {v}");
    assert_eq!(v["reservation"]["key"], "prod/db/1");
    let v = api.ok(&format!("/v1/ips/{web_ip}"));
    assert_eq!(v["pod"], "prod/web-1");
    assert_eq!(v["pool"], "web");
    let v = api.ok(&format!("/v1/ips/{pool_free}"));
    assert_eq!(v["state"], "pooled");
    assert_eq!(v["pool"], "web");
    let (s, v) = api.get("/v1/ips/198.18.0.150");
    assert_eq!(s, 404);
    assert!(v["error"].as_str().unwrap().contains("198.18.0.150"), "{v}");
    let (s, v) = api.get("/v1/ips/203.0.113.77");
    assert_eq!(s, 404);
    assert!(v["error"].as_str().unwrap().contains("no network"), "{v}");
    let (s, v) = api.get("/v1/ips/not-an-ip");
    assert_eq!(s, 400);
    assert_eq!(v["field"], "ip");

    // Usage per family and per node.
    let u = api.ok("/v1/networks/cluster/usage");
    let f4 = &u["families"][0];
    assert_eq!(f4["family"], 4);
    assert_eq!(f4["size"], 254);
    assert_eq!(f4["used"], 4, "{u}");
    assert_eq!(
        f4["reserved"], 2,
        "prod/db/1 and the pool's free address: {u}"
    );
    assert_eq!(f4["free"], 248, "{u}");
    let f6 = &u["families"][1];
    assert_eq!(f6["family"], 6);
    assert_eq!(f6["used"], 4, "{u}");
    let nodes = u["nodes"].as_array().unwrap();
    let n1 = nodes.iter().find(|n| n["node"] == "node-1").unwrap();
    assert_eq!(n1["used"], 4, "two dual-stack pods: {u}");
    assert!(!n1["blocks"].as_array().unwrap().is_empty());
    let n2 = nodes.iter().find(|n| n["node"] == "node-2").unwrap();
    assert_eq!(n2["used"], 4, "{u}");
    let nets = api.ok("/v1/networks");
    assert_eq!(nets.as_array().unwrap().len(), 1);
    assert_eq!(nets[0]["usage"][0]["used"], 4);

    // Allocations by pod, node, network.
    let all = api.ok("/v1/allocations");
    assert_eq!(all.as_array().unwrap().len(), 4, "{all}");
    let on1 = api.ok("/v1/allocations?node=node-1");
    let mut pods: Vec<&str> = on1
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["pod"].as_str().unwrap())
        .collect();
    pods.sort();
    assert_eq!(pods, ["default/pod-a", "prod/web-1"]);
    let one = api.ok("/v1/allocations?pod=default%2Fpod-b");
    assert_eq!(one.as_array().unwrap().len(), 1);
    assert_eq!(one[0]["containerId"], "ctr-b");
    assert_eq!(one[0]["addresses"].as_array().unwrap().len(), 2);
    let none = api.ok("/v1/allocations?network=cluster&node=node-9");
    assert!(none.as_array().unwrap().is_empty());

    // Reservations and pools listed and read.
    let rs = api.ok("/v1/networks/cluster/reservations");
    assert_eq!(rs.as_array().unwrap().len(), 2);
    let all_rs = api.ok("/v1/reservations");
    assert_eq!(all_rs.as_array().unwrap().len(), 2);
    let r = api.ok("/v1/networks/cluster/reservations/prod%2Fdb%2F0");
    assert_eq!(r["holder"], "ctr-db:eth0");
    assert_eq!(r["node"], "node-2");
    let (s, _) = api.get("/v1/networks/cluster/reservations/prod%2Fdb%2F9");
    assert_eq!(s, 404);
    let p = api.ok("/v1/networks/cluster/pools/web");
    assert_eq!(p["holders"][&web_ip], "ctr-web:eth0");
    assert_eq!(
        api.ok("/v1/networks/cluster/pools")
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // Nodes: registered by "weftd", with blocks and counts.
    let ns = api.ok("/v1/nodes");
    let n1 = ns
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == "node-1")
        .unwrap()
        .clone();
    assert_eq!(n1["registered"], true);
    assert_eq!(n1["underlayIp"], "198.51.100.2");
    assert_eq!(n1["mode"], "hybrid");
    assert_eq!(n1["allocations"], 2);
    assert_eq!(n1["addresses"], 4);
    assert!(!n1["blocks"].as_array().unwrap().is_empty(), "{n1}");
    let n2 = api.ok("/v1/nodes/node-2");
    assert_eq!(n2["allocations"], 2);
    assert_eq!(n2["record"]["vni"], 4096);
    let (s, _) = api.get("/v1/nodes/node-9");
    assert_eq!(s, 404);
    // weftd gone (its lease revoked): the node is still named by its blocks, not registered.
    reg1.revoke().unwrap();
    let n1 = api.ok("/v1/nodes/node-1");
    assert_eq!(n1["registered"], false);
    assert_eq!(n1["allocations"], 2);

    // Editing: cooldown may change; a pool with claimed blocks may not go; a new pool may come.
    let (s, v) = api.send(
        "PATCH",
        "/v1/networks/cluster",
        &json!({"cooldownSeconds": 5, "strictAffinity": true}),
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["cooldownSeconds"], 5);
    assert_eq!(v["strictAffinity"], true);
    let (s, v) = api.send(
        "PUT",
        "/v1/networks/cluster",
        &json!({"pools": [{"subnet": "fd00:18::/120"}], "cooldownSeconds": 0}),
    );
    assert_eq!(s, 409, "{v}");
    assert_eq!(v["field"], "pools[0]");
    let (s, v) = api.send(
        "PATCH",
        "/v1/networks/cluster",
        &json!({"blockPrefixV4": 28}),
    );
    assert_eq!(s, 409, "{v}");
    assert_eq!(v["field"], "blockPrefixV4");
    let (s, v) = api.send(
        "PUT",
        "/v1/networks/cluster",
        &json!({"name": "elsewhere", "pools": [{"subnet": "198.18.0.0/24"}]}),
    );
    assert_eq!(s, 422, "{v}");
    let (s, v) = api.send(
        "PUT",
        "/v1/networks/cluster",
        &json!({"pools": [{"subnet": "198.18.0.0/24"}, {"subnet": "fd00:18::/120"}], "cooldownSeconds": 0}),
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["strictAffinity"], false);
    // PUT creates a network that does not exist.
    let (s, v) = api.send(
        "PUT",
        "/v1/networks/spare",
        &json!({"pools": [{"subnet": "198.19.0.0/24"}]}),
    );
    assert_eq!(s, 201, "{v}");
    let (s, v) = api.delete("/v1/networks/spare");
    assert_eq!(s, 200, "{v}");
    let (s, _) = api.get("/v1/networks/spare");
    assert_eq!(s, 404);

    // Deleting a network with live addresses is refused.
    let (s, v) = api.delete("/v1/networks/cluster");
    assert_eq!(s, 409, "{v}");
    assert!(v["error"].as_str().unwrap().contains("4 live"), "{v}");

    // Releases.
    let (s, v) = api.delete("/v1/networks/cluster/reservations/prod%2Fdb%2F1");
    assert_eq!(s, 200, "{v}");
    let (s, _) = api.get("/v1/ips/198.18.0.201");
    assert_eq!(s, 404, "a released unused reservation frees its address");
    let (s, _) = api.delete("/v1/networks/cluster/reservations/prod%2Fdb%2F1");
    assert_eq!(s, 404);
    let (s, v) = api.delete("/v1/networks/cluster/reservations/prod%2Fdb%2F0");
    assert_eq!(s, 200, "{v}");
    let v = api.ok("/v1/ips/198.18.0.200");
    assert_eq!(v["pod"], "prod/db-0", "the pod keeps its address until DEL");
    assert!(v.get("fixed").is_none(), "{v}");
    let (s, v) = api.delete("/v1/networks/cluster/pools/web");
    assert_eq!(s, 200, "{v}");
    let (s, _) = api.get(&format!("/v1/ips/{pool_free}"));
    assert_eq!(s, 404);
    assert_eq!(api.ok(&format!("/v1/ips/{web_ip}"))["pod"], "prod/web-1");

    // Check and its repair plan; metrics.
    let c = api.ok("/v1/check?graceSeconds=0");
    assert!(c["findings"].is_array(), "{c}");
    let (s, v) = api.send("POST", "/v1/check/repair", &json!({"yes": false}));
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["applied"], false);
    assert!(v["outcomes"].as_array().unwrap().is_empty());
    let (s, v, ct) = api.call("GET", "/metrics", Some(READ), None);
    assert_eq!(s, 200, "{v}");
    assert!(ct.starts_with("application/openmetrics-text"), "{ct}");

    // Forced delete: every record of the network goes.
    let (s, v) = api.delete("/v1/networks/cluster?force=true");
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["allocations"], 4);
    for prefix in [
        "/weft/v1/networks/",
        "/weft/v1/handles/cluster/",
        "/weft/v1/blocks/cluster/",
        "/weft/v1/reservations/cluster/",
        "/weft/v1/pools/cluster/",
    ] {
        assert!(keys(&*store, prefix).is_empty(), "{prefix} left");
    }
    let (s, _) = api.delete("/v1/networks/cluster");
    assert_eq!(s, 404);

    // The store unreachable: 503 naming the store, never a crash; back when it is.
    let r = api.ok("/readyz");
    assert_eq!(r["status"], "ready");
    etcd.stop();
    let (s, v, _) = api.call("GET", "/readyz", None, None);
    assert_eq!(s, 503, "{v}");
    assert!(v["error"].as_str().unwrap().contains("etcd"), "{v}");
    let (s, v) = api.get("/v1/networks");
    assert_eq!(s, 503, "{v}");
    etcd.restart();
    let t = std::time::Instant::now();
    while api.get("/readyz").0 != 200 {
        assert!(t.elapsed().as_secs() < 20, "not ready after etcd came back");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert_eq!(api.get("/v1/networks").1, Value::Array(vec![]));
}
