//! End to end: underlay mode. The `Lab` fixture's nodes share one L2 segment (198.51.100.0/24,
//! the store namespace's bridge holding .1, the pods' gateway); pods take addresses of that
//! segment through macvlan on a node's uplink, or through a veth into a bridge that holds the
//! uplink. Needs root.

mod common;

use std::path::Path;

use common::*;
use serde_json::{Value, json};

const NET: &str = "under";

/// The underlay network as node `i` configures it: the segment's subnet, a range that misses
/// the node addresses, gateway the store namespace (.1).
fn underlay_net(lab: &Lab, i: usize, underlay: Value) -> Value {
    let mut c = lab.net(i, NET, &[]);
    c["mode"] = json!("underlay");
    c.as_object_mut().unwrap().remove("bridge");
    c["underlay"] = underlay;
    c["ipam"]["pools"] = json!([{
        "subnet": format!("{UNDERLAY}.0/24"),
        "gateway": format!("{UNDERLAY}.1"),
        "rangeStart": format!("{UNDERLAY}.100"),
        "rangeEnd": format!("{UNDERLAY}.199"),
    }]);
    c
}

fn macvlan() -> Value {
    json!({"attach": "macvlan", "uplink": "uplink"})
}

/// Node `i`'s uplink moves into bridge `bru`, which takes over the node's address.
fn bridge_the_uplink(lab: &Lab, i: usize) {
    let ns = &lab.nodes[i].ns;
    let addr = format!("{UNDERLAY}.{}/24", i + 2);
    ns.ok(&["ip", "addr", "del", &addr, "dev", "uplink"]);
    ns.ok(&["ip", "link", "add", "bru", "type", "bridge"]);
    ns.ok(&["ip", "link", "set", "uplink", "master", "bru"]);
    ns.ok(&["ip", "addr", "add", &addr, "dev", "bru"]);
    ns.ok(&["ip", "link", "set", "bru", "up"]);
}

fn call<'a>(cmd: &'a str, cid: &'a str, pod: &'a Path) -> Call<'a> {
    let mut c = Call::new(cmd, cid);
    c.netns = Some(pod);
    c
}

fn with_prev(conf: &Value, prev: &Value) -> Value {
    let mut c = conf.clone();
    c["prevResult"] = prev.clone();
    c
}

fn node_ip(i: usize) -> String {
    format!("{UNDERLAY}.{}", i + 2)
}

fn routes_to(ns: &Netns, dst: &str) -> Vec<Value> {
    ns.ip_json(&["route", "show", dst])
        .as_array()
        .unwrap()
        .clone()
}

fn handles(lab: &Lab) -> Vec<String> {
    lab.records("handles")
        .into_keys()
        .filter(|k| k.contains(&format!("/{NET}/")))
        .collect()
}

fn pings(from: &Netns, to: &str) -> bool {
    ping_tries(from, to, 3)
}

#[test]
fn underlay_pods_reach_each_other_nodes_and_their_own_node() {
    let t0 = std::time::Instant::now();
    let lab = Lab::new(3);
    bridge_the_uplink(&lab, 2);
    let confs = [
        underlay_net(&lab, 0, macvlan()),
        underlay_net(&lab, 1, macvlan()),
        underlay_net(
            &lab,
            2,
            json!({"attach": "bridge", "uplink": "uplink", "bridge": "bru"}),
        ),
    ];
    let pods: Vec<Netns> = (0..3).map(|_| Netns::new("up")).collect();
    let cids = ["ul-0", "ul-1", "ul-2"];
    let mut results = Vec::new();
    let mut ips = Vec::new();
    for i in 0..3 {
        let r = cni(
            &lab.nodes[i].ns,
            &call("ADD", cids[i], &pods[i].path()),
            &confs[i],
        )
        .success();
        let ip = result_ip(&r, 4).unwrap();
        assert!(
            pods[i].addrs("eth0").contains(&format!("{ip}/24")),
            "pod {i}: {:?}",
            pods[i].addrs("eth0")
        );
        let def = routes_to(&pods[i], "default");
        assert_eq!(
            def[0]["gateway"].as_str(),
            Some(format!("{UNDERLAY}.1").as_str()),
            "pod {i} default route: {def:?}"
        );
        results.push(r);
        ips.push(ip);
    }
    // Macvlan pods: no host end; the node has a shim and a /32 through it.
    let kind = pods[0].ip_json(&["-d", "link", "show", "eth0"])[0]["linkinfo"]["info_kind"].clone();
    assert_eq!(kind, json!("macvlan"));
    let r = routes_to(&lab.nodes[0].ns, &ips[0]);
    assert!(
        r.iter()
            .any(|x| x["dev"].as_str().unwrap_or("").starts_with("wsh")),
        "node 0 route to its pod: {r:?}"
    );
    // Bridge attach: the host veth is in bru.
    let veths = weft_links(&lab.nodes[2].ns);
    assert_eq!(veths.len(), 1, "{veths:?}");

    // Pods across nodes, pods to the other nodes, pods to and from their own node.
    for i in 0..3 {
        for (j, ip_j) in ips.iter().enumerate() {
            if i != j {
                assert!(pings(&pods[i], ip_j), "pod {i} -> pod {j} ({ip_j})");
            }
            assert!(
                pings(&pods[i], &node_ip(j)),
                "pod {i} -> node {j} ({})",
                node_ip(j)
            );
        }
        assert!(
            pings(&lab.nodes[i].ns, &ips[i]),
            "node {i} -> its own pod {}",
            ips[i]
        );
        let other = (i + 1) % 3;
        assert!(
            pings(&lab.nodes[other].ns, &ips[i]),
            "node {other} -> pod {i} {}",
            ips[i]
        );
        assert!(
            pings(&pods[i], &format!("{UNDERLAY}.1")),
            "pod {i} -> gateway"
        );
    }

    // CHECK passes, then sees a removed shim route.
    for i in 0..3 {
        cni(
            &lab.nodes[i].ns,
            &call("CHECK", cids[i], &pods[i].path()),
            &with_prev(&confs[i], &results[i]),
        )
        .success();
    }
    let shim = r
        .iter()
        .find_map(|x| x["dev"].as_str())
        .unwrap()
        .to_string();
    lab.nodes[0]
        .ns
        .ok(&["ip", "route", "del", &ips[0], "dev", &shim]);
    let out = cni(
        &lab.nodes[0].ns,
        &call("CHECK", cids[0], &pods[0].path()),
        &with_prev(&confs[0], &results[0]),
    );
    assert_ne!(out.code, 0);
    assert!(
        out.stdout.contains("shim route") && out.stdout.contains(&ips[0]),
        "{}",
        out.stdout
    );

    // DEL leaves nothing: no pod interface, no shim route, no veth, no allocation.
    for i in 0..3 {
        cni(
            &lab.nodes[i].ns,
            &call("DEL", cids[i], &pods[i].path()),
            &with_prev(&confs[i], &results[i]),
        )
        .success();
        assert_eq!(pods[i].links(), vec!["lo".to_string()], "pod {i}");
        let r = routes_to(&lab.nodes[i].ns, &ips[i]);
        assert!(
            r.iter().all(|x| x["dst"].as_str() != Some(ips[i].as_str())),
            "node {i} still routes {}: {r:?}",
            ips[i]
        );
        // DEL again is fine.
        cni(
            &lab.nodes[i].ns,
            &call("DEL", cids[i], &pods[i].path()),
            &confs[i],
        )
        .success();
    }
    // Node 1's shim route went with DEL (node 0's was removed by hand above).
    let r1 = lab.nodes[1].ns.ok(&["ip", "route", "show", "proto", "87"]);
    assert!(r1.trim().is_empty(), "node 1 weft routes left: {r1}");
    assert!(weft_links(&lab.nodes[2].ns).is_empty());
    assert!(handles(&lab).is_empty(), "{:?}", handles(&lab));
    eprintln!("underlay connectivity: {:?}", t0.elapsed());
}

#[test]
fn underlay_macvlan_del_with_the_pod_gone_and_gc() {
    let lab = Lab::new(1);
    let conf = underlay_net(&lab, 0, macvlan());
    let node = &lab.nodes[0].ns;
    let pod = Netns::new("up");
    let r = cni(node, &call("ADD", "gone-1", &pod.path()), &conf).success();
    let ip = result_ip(&r, 4).unwrap();
    assert!(pings(node, &ip));
    let path = pod.path();
    drop(pod);
    // The netns is gone, the macvlan with it: DEL removes the shim route and the allocation.
    cni(node, &call("DEL", "gone-1", &path), &conf).success();
    let routes = node.ok(&["ip", "route", "show", "proto", "87"]);
    assert!(routes.trim().is_empty(), "{routes}");
    assert!(handles(&lab).is_empty());

    // GC: a pod whose DEL never ran loses its shim route and allocation; a valid one keeps them.
    let (p1, p2) = (Netns::new("up"), Netns::new("up"));
    let r1 = cni(node, &call("ADD", "gc-1", &p1.path()), &conf).success();
    let r2 = cni(node, &call("ADD", "gc-2", &p2.path()), &conf).success();
    let (ip1, ip2) = (result_ip(&r1, 4).unwrap(), result_ip(&r2, 4).unwrap());
    drop(p2);
    let mut gc = conf.clone();
    gc["cniVersion"] = json!("1.1.0");
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "gc-1", "ifname": "eth0"}]);
    let mut gcall = Call::new("GC", "");
    gcall.ifname = "";
    cni(node, &gcall, &gc).success();
    let routes = node.ok(&["ip", "route", "show", "proto", "87"]);
    assert!(routes.contains(&ip1), "{routes}");
    assert!(!routes.contains(&ip2), "{routes}");
    assert!(pings(node, &ip1));
    cni(node, &call("DEL", "gc-1", &p1.path()), &conf).success();
    assert!(handles(&lab).is_empty());

    // Control: without the shim the node cannot reach its own macvlan pod (its peers can).
    let mut no_shim = conf.clone();
    no_shim["underlay"]["shim"] = json!(false);
    let p3 = Netns::new("up");
    let r3 = cni(node, &call("ADD", "ns-1", &p3.path()), &no_shim).success();
    let ip3 = result_ip(&r3, 4).unwrap();
    assert!(pings(&p3, &format!("{UNDERLAY}.1")));
    assert!(
        !ping_tries(node, &ip3, 1),
        "node reached {ip3} without a shim"
    );
    cni(
        node,
        &call("CHECK", "ns-1", &p3.path()),
        &with_prev(&no_shim, &r3),
    )
    .success();
    cni(node, &call("DEL", "ns-1", &p3.path()), &no_shim).success();
    assert_eq!(p3.links(), vec!["lo".to_string()]);
    assert!(handles(&lab).is_empty());
}

#[test]
fn underlay_bad_input_changes_nothing() {
    let lab = Lab::new(2);
    bridge_the_uplink(&lab, 1);
    // Node 1 also has a bridge without the uplink.
    lab.nodes[1]
        .ns
        .ok(&["ip", "link", "add", "other", "type", "bridge"]);
    let cases: Vec<(usize, Value, &str, &str)> = vec![
        (
            0,
            json!({"attach": "macvlan", "uplink": "nosuch0"}),
            "underlay.uplink",
            "\"nosuch0\"",
        ),
        (
            0,
            json!({"attach": "ipvlan", "uplink": "uplink"}),
            "underlay.attach",
            "\"ipvlan\"",
        ),
        (
            1,
            json!({"attach": "bridge", "uplink": "uplink", "bridge": "nobr"}),
            "underlay.bridge",
            "\"nobr\"",
        ),
        (
            1,
            json!({"attach": "bridge", "uplink": "uplink", "bridge": "other"}),
            "underlay.bridge",
            "\"other\"",
        ),
        (
            1,
            json!({"attach": "bridge", "uplink": "nosuch1", "bridge": "bru"}),
            "underlay.uplink",
            "\"nosuch1\"",
        ),
        (
            1,
            json!({"attach": "macvlan", "uplink": "uplink"}),
            "underlay.uplink",
            "bridge port",
        ),
    ];
    let before: Vec<Vec<String>> = lab.nodes.iter().map(|n| n.ns.links()).collect();
    let routes_before: Vec<String> = lab
        .nodes
        .iter()
        .map(|n| n.ns.ok(&["ip", "route", "show"]))
        .collect();
    for (k, (i, underlay, field, value)) in cases.into_iter().enumerate() {
        let conf = underlay_net(&lab, i, underlay);
        let pod = Netns::new("up");
        let cid = format!("bad-{k}");
        let out = cni(&lab.nodes[i].ns, &call("ADD", &cid, &pod.path()), &conf);
        assert_ne!(out.code, 0, "case {k} succeeded");
        let j = out.json();
        assert_eq!(j["code"], json!(7), "case {k}: {}", out.stdout);
        let msg = j["msg"].as_str().unwrap();
        assert!(
            msg.contains(field) && msg.contains(value),
            "case {k}: {msg}"
        );
        assert_eq!(pod.links(), vec!["lo".to_string()], "case {k}");
    }
    for (i, n) in lab.nodes.iter().enumerate() {
        assert_eq!(n.ns.links(), before[i], "node {i} links changed");
        assert_eq!(n.ns.ok(&["ip", "route", "show"]), routes_before[i]);
    }
    assert!(handles(&lab).is_empty(), "{:?}", handles(&lab));
}

#[test]
fn underlay_fixed_ip_moves_to_another_node() {
    let lab = Lab::new(2);
    let confs = [
        underlay_net(&lab, 0, macvlan()),
        underlay_net(&lab, 1, macvlan()),
    ];
    let args = "WEFT_IDENTITY=prod/legacy-db;WEFT_POLICY=never";
    let pod1 = Netns::new("up");
    let path1 = pod1.path();
    let mut c = call("ADD", "fx-1", &path1);
    c.args = Some(args);
    let r = cni(&lab.nodes[0].ns, &c, &confs[0]).success();
    let ip = result_ip(&r, 4).unwrap();
    assert!(pings(&lab.nodes[1].ns, &ip));
    let mut d = call("DEL", "fx-1", &path1);
    d.args = Some(args);
    cni(&lab.nodes[0].ns, &d, &confs[0]).success();
    drop(pod1);

    // The workload comes back on node 1: same address, reachable from node 0 over the segment
    // (no route: node 0's shim route went with the DEL), and from node 1 through its shim.
    let pod2 = Netns::new("up");
    let path2 = pod2.path();
    let mut c = call("ADD", "fx-2", &path2);
    c.args = Some(args);
    let r2 = cni(&lab.nodes[1].ns, &c, &confs[1]).success();
    assert_eq!(result_ip(&r2, 4).unwrap(), ip);
    let r0 = routes_to(&lab.nodes[0].ns, &ip);
    assert!(
        r0.iter().all(|x| x["dst"].as_str() != Some(ip.as_str())),
        "{r0:?}"
    );
    assert!(pings(&lab.nodes[0].ns, &ip), "node 0 -> moved pod {ip}");
    assert!(pings(&lab.nodes[1].ns, &ip), "node 1 -> its pod {ip}");
    assert!(pings(&pod2, &node_ip(0)));
    let mut d = call("DEL", "fx-2", &path2);
    d.args = Some(args);
    cni(&lab.nodes[1].ns, &d, &confs[1]).success();
    assert_eq!(pod2.links(), vec!["lo".to_string()]);
}
