//! End to end: the `weft` binary driven as a runtime drives it, in bridge and routed mode, with
//! pods as network namespaces and the host side in a "node" namespace (see
//! docs/plugin-contract.md). Needs root.

mod common;

use std::net::IpAddr;

use common::*;
use ipnet::IpNet;
use serde_json::{Value, json};

const MTU: u64 = 1400;

/// One pool of the config under test.
#[derive(Clone, Debug)]
struct Pool {
    subnet: IpNet,
    gateway: IpAddr,
}

fn family(a: &IpAddr) -> u8 {
    if a.is_ipv4() { 4 } else { 6 }
}

/// The pools of a weft config, with the gateway the contract says defaults to the first address.
fn pools(conf: &Value) -> Vec<Pool> {
    conf["ipam"]["pools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let subnet: IpNet = p["subnet"].as_str().unwrap().parse().unwrap();
            let gateway = match p["gateway"].as_str() {
                Some(g) => g.parse().unwrap(),
                None => first_host(&subnet),
            };
            Pool { subnet, gateway }
        })
        .collect()
}

fn first_host(n: &IpNet) -> IpAddr {
    match n.network() {
        IpAddr::V4(a) => IpAddr::V4((u32::from(a) + 1).into()),
        IpAddr::V6(a) => IpAddr::V6((u128::from(a) + 1).into()),
    }
}

/// A weft plugin config from an example conflist, pointed at the node's data dir.
fn example_conf(file: &str, node: &Node) -> Value {
    let mut c = list_plugin(&example_list(file), 0);
    c["ipam"]["dataDir"] = json!(node.data_dir());
    c["ipam"]["node"] = json!("node-1");
    c["mtu"] = json!(MTU);
    c
}

/// The host-side link of an attachment, found by the alias the contract gives it.
fn host_link(node: &Netns, network: &str, cid: &str, ifname: &str) -> Option<Value> {
    let alias = format!("weft:{network}:{cid}:{ifname}");
    node.ip_json(&["-d", "link", "show"])
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["ifalias"].as_str() == Some(alias.as_str()))
        .cloned()
}

fn add_call<'a>(cid: &'a str, pod: &'a std::path::Path) -> Call<'a> {
    let mut c = Call::new("ADD", cid);
    c.netns = Some(pod);
    c
}

fn with_prev(conf: &Value, prev: &Value) -> Value {
    let mut c = conf.clone();
    c["prevResult"] = prev.clone();
    c
}

fn sysctl(ns: &Netns, key: &str) -> String {
    ns.ok(&["cat", &format!("/proc/sys/{key}")])
        .trim()
        .to_string()
}

/// Routes in `ns` for exactly `dst` (a /32 or /128).
fn routes_to(ns: &Netns, dst: &str) -> Vec<Value> {
    let fam = if dst.contains(':') { "-6" } else { "-4" };
    ns.ip_json(&[fam, "route", "show", dst])
        .as_array()
        .unwrap()
        .clone()
}

/// Asserts everything the contract says about one attachment after ADD; returns its addresses.
fn assert_attached(
    node: &Netns,
    pod: &Netns,
    conf: &Value,
    cid: &str,
    result: &Value,
) -> Vec<IpAddr> {
    let network = conf["name"].as_str().unwrap();
    let routed = conf["mode"].as_str() == Some("routed");
    let bridge = conf["bridge"].as_str().unwrap_or("weft0");
    let pools = pools(conf);
    let ctx = format!("{network} {cid}: result {result}");

    assert_eq!(result["cniVersion"], conf["cniVersion"], "{ctx}");
    let ips = result["ips"]
        .as_array()
        .unwrap_or_else(|| panic!("no ips: {ctx}"));
    assert_eq!(ips.len(), pools.len(), "one address per pool family: {ctx}");
    let host = host_link(node, network, cid, "eth0").unwrap_or_else(|| {
        panic!("no host link with alias weft:{network}:{cid}:eth0 in node: {ctx}")
    });
    let veth = host["ifname"].as_str().unwrap().to_string();
    assert!(
        veth.len() == 15
            && veth.starts_with('w')
            && veth[1..].chars().all(|c| c.is_ascii_hexdigit()),
        "host veth name {veth:?} is not w + 14 hex digits"
    );
    assert_eq!(host["mtu"], json!(MTU), "host veth MTU: {host}");
    // The host veth is listed without a sandbox (chained plugins such as bandwidth look for it).
    let listed: Vec<&str> = result["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i.get("sandbox").is_none())
        .filter_map(|i| i["name"].as_str())
        .collect();
    assert!(
        listed.contains(&veth.as_str()),
        "host veth {veth} not among the result's host-side interfaces: {ctx}"
    );

    let pod_link = pod.ip_json(&["link", "show", "dev", "eth0"]);
    assert_eq!(pod_link[0]["mtu"], json!(MTU), "pod eth0 MTU: {pod_link}");
    let pod_addrs = pod.addrs("eth0");
    let mut out = vec![];
    for ip in ips {
        let cidr: IpNet = ip["address"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap_or_else(|e| panic!("bad address ({e}): {ctx}"));
        let a = cidr.addr();
        let pool = pools
            .iter()
            .find(|p| p.subnet.contains(&a))
            .unwrap_or_else(|| panic!("{a} is in no pool: {ctx}"));
        if !routed {
            assert_ne!(a, pool.gateway, "pod was given the gateway address: {ctx}");
        }
        let (want_prefix, want_gw): (u8, IpAddr) = match (routed, family(&a)) {
            (false, _) => (pool.subnet.prefix_len(), pool.gateway),
            (true, 4) => (32, "169.254.1.1".parse().unwrap()),
            (true, _) => (128, "fe80::1".parse().unwrap()),
        };
        assert_eq!(cidr.prefix_len(), want_prefix, "prefix of {cidr}: {ctx}");
        assert_eq!(
            ip["gateway"].as_str().map(|g| g.parse::<IpAddr>().unwrap()),
            Some(want_gw),
            "gateway of {cidr}: {ctx}"
        );
        let idx = ip["interface"]
            .as_u64()
            .unwrap_or_else(|| panic!("ip {cidr} has no interface index: {ctx}"))
            as usize;
        let iface = &result["interfaces"][idx];
        assert_eq!(
            iface["name"], "eth0",
            "ips[].interface points at {iface}: {ctx}"
        );
        assert_eq!(
            iface["sandbox"].as_str(),
            Some(pod.path().to_str().unwrap()),
            "ips[].interface has no/other sandbox: {ctx}"
        );
        assert!(
            pod_addrs.contains(&cidr.to_string()),
            "{cidr} not on pod eth0 (has {pod_addrs:?})"
        );

        let fam = if family(&a) == 4 { "-4" } else { "-6" };
        let defaults = pod.ip_json(&[fam, "route", "show", "default"]);
        assert!(
            defaults.as_array().unwrap().iter().any(|r| r["gateway"]
                .as_str()
                .map(|g| g.parse::<IpAddr>().unwrap())
                == Some(want_gw)
                && r["dev"] == "eth0"),
            "pod {fam} default route via {want_gw} dev eth0 missing: {defaults}"
        );

        if routed {
            let host_dst = format!("{a}/{}", if family(&a) == 4 { 32 } else { 128 });
            let rs = routes_to(node, &host_dst);
            assert!(
                rs.iter().any(|r| r["dev"].as_str() == Some(veth.as_str())),
                "node has no route {host_dst} dev {veth}: {rs:?}"
            );
        }
        out.push(a);
    }

    if routed {
        assert_eq!(
            sysctl(node, "net/ipv4/ip_forward"),
            "1",
            "routed mode: node ip_forward"
        );
        if out.iter().any(|a| a.is_ipv6()) {
            assert_eq!(
                sysctl(node, "net/ipv6/conf/all/forwarding"),
                "1",
                "routed mode: node IPv6 forwarding"
            );
        }
    } else {
        assert_eq!(
            host["master"].as_str(),
            Some(bridge),
            "host veth {veth} master: {host}"
        );
        let br_addrs = node.addrs(bridge);
        for p in &pools {
            let want = format!("{}/{}", p.gateway, p.subnet.prefix_len());
            assert!(
                br_addrs.contains(&want),
                "bridge {bridge} lacks {want} (has {br_addrs:?})"
            );
        }
        let br = node.ip_json(&["link", "show", "dev", bridge]);
        assert_eq!(br[0]["mtu"], json!(MTU), "bridge MTU: {br}");
    }

    let data = conf["ipam"]["dataDir"].as_str().unwrap();
    assert!(
        handle_file(data, network, cid, "eth0").exists(),
        "no allocation record {}",
        handle_file(data, network, cid, "eth0").display()
    );
    out
}

/// The CNI error object a failed plugin printed, as one string (code, msg, details).
fn error_text(out: &PluginOutput) -> String {
    let j = out.json();
    format!(
        "code {} msg {} details {}",
        j["code"],
        j["msg"].as_str().unwrap_or(""),
        j["details"].as_str().unwrap_or("")
    )
}

/// The whole life of two pods (and a third whose namespace dies first) on one network.
fn lifecycle(mut conf: Value, node: &Node) {
    let network = conf["name"].as_str().unwrap().to_string();
    let data = node.data_dir();
    conf["ipam"]["dataDir"] = json!(data);
    let n = &node.ns;
    let pods = [Netns::new("pa"), Netns::new("pb")];
    let cids = ["ctr-a", "ctr-b"];

    let mut results = vec![];
    let mut addrs = vec![];
    for (pod, cid) in pods.iter().zip(cids) {
        let path = pod.path();
        let res = cni(n, &add_call(cid, &path), &conf).success();
        addrs.push(assert_attached(n, pod, &conf, cid, &res));
        results.push(res);
    }
    for (a, b) in addrs[0].iter().zip(&addrs[1]) {
        assert_ne!(a, b, "two pods got the same address");
    }

    // Pods reach each other over every family.
    for (from, to) in [(0, 1), (1, 0)] {
        for a in &addrs[to] {
            assert!(
                ping_tries(&pods[from], &a.to_string(), 5),
                "pod {from} cannot ping pod {to} at {a} ({network})"
            );
        }
    }

    // CHECK passes, then fails naming the address once the address is gone.
    for (i, (pod, cid)) in pods.iter().zip(cids).enumerate() {
        let path = pod.path();
        let mut call = add_call(cid, &path);
        call.command = "CHECK";
        cni(n, &call, &with_prev(&conf, &results[i])).success();
    }
    {
        let path = pods[0].path();
        let mut call = add_call(cids[0], &path);
        call.command = "CHECK";
        let victim = results[0]["ips"][0]["address"]
            .as_str()
            .unwrap()
            .to_string();
        pods[0].ok(&["ip", "addr", "del", &victim, "dev", "eth0"]);
        let out = cni(n, &call, &with_prev(&conf, &results[0]));
        assert_ne!(
            out.code, 0,
            "CHECK passed though {victim} was removed from the pod: {out:?}"
        );
        let text = error_text(&out);
        let bare = victim.split('/').next().unwrap();
        assert!(
            text.contains(bare),
            "CHECK error does not name the missing address {bare}: {text}"
        );
    }

    // DEL both (with the cached result, as libcni does), then again without it.
    for (i, (pod, cid)) in pods.iter().zip(cids).enumerate() {
        let path = pod.path();
        let mut call = add_call(cid, &path);
        call.command = "DEL";
        cni(n, &call, &with_prev(&conf, &results[i])).success();
        assert!(
            !handle_file(&data, &network, cid, "eth0").exists(),
            "allocation of {cid} still there after DEL"
        );
        assert!(
            pod.links().iter().all(|l| l != "eth0"),
            "pod {cid} still has eth0 after DEL"
        );
    }
    assert_eq!(
        weft_links(n),
        Vec::<String>::new(),
        "weft veths left in node after DEL"
    );
    for a in addrs.iter().flatten() {
        let dst = format!("{a}/{}", if a.is_ipv4() { 32 } else { 128 });
        assert_eq!(
            routes_to(n, &dst),
            Vec::<Value>::new(),
            "route to {dst} left after DEL"
        );
    }
    assert_eq!(
        handle_files(&data, &network),
        Vec::<String>::new(),
        "allocation records left after DEL"
    );
    {
        let path = pods[0].path();
        let mut call = add_call(cids[0], &path);
        call.command = "DEL";
        cni(n, &call, &conf).success();
    }

    // DEL after the pod's namespace is gone succeeds and frees the address.
    let pod = Netns::new("pc");
    let path = pod.path();
    let res = cni(n, &add_call("ctr-c", &path), &conf).success();
    assert_attached(n, &pod, &conf, "ctr-c", &res);
    drop(pod);
    assert!(!path.exists());
    let mut call = add_call("ctr-c", &path);
    call.command = "DEL";
    cni(n, &call, &with_prev(&conf, &res)).success();
    assert!(
        !handle_file(&data, &network, "ctr-c", "eth0").exists(),
        "allocation of ctr-c left after DEL with its netns gone"
    );
    let mut left = weft_links(n);
    for _ in 0..30 {
        if left.is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        left = weft_links(n);
    }
    assert_eq!(
        left,
        Vec::<String>::new(),
        "veth left after DEL of a pod whose netns is gone"
    );
}

#[test]
fn bridge_ipv4() {
    require_root();
    let node = Node::new("nb4");
    let conf = example_conf("bridge.conflist", &node);
    lifecycle(conf, &node);
}

#[test]
fn bridge_dualstack() {
    require_root();
    let node = Node::new("nbd");
    let conf = example_conf("dualstack.conflist", &node);
    assert_eq!(pools(&conf).len(), 2);
    lifecycle(conf, &node);
}

#[test]
fn bridge_ipv6_only() {
    require_root();
    let node = Node::new("nb6");
    let mut conf = example_conf("dualstack.conflist", &node);
    conf["ipam"]["pools"] = json!([{"subnet": "fd00:18:6::/64"}]);
    lifecycle(conf, &node);
}

#[test]
fn routed_ipv4() {
    require_root();
    let node = Node::new("nr4");
    let conf = example_conf("routed.conflist", &node);
    lifecycle(conf, &node);
}

#[test]
fn routed_dualstack() {
    require_root();
    let node = Node::new("nrd");
    let mut conf = example_conf("routed.conflist", &node);
    conf["ipam"]["pools"] = json!([{"subnet": "198.18.1.0/24"}, {"subnet": "fd00:18:1::/64"}]);
    lifecycle(conf, &node);
}

#[test]
fn routed_ipv6_only() {
    require_root();
    let node = Node::new("nr6");
    let mut conf = example_conf("routed.conflist", &node);
    conf["ipam"]["pools"] = json!([{"subnet": "fd00:18:7::/64"}]);
    lifecycle(conf, &node);
}

fn nft_table(node: &Netns) -> Vec<Value> {
    let out = node.ok(&["nft", "-j", "list", "table", "inet", "weft"]);
    let j: Value = serde_json::from_str(&out).unwrap();
    j["nftables"].as_array().unwrap().clone()
}

fn set_has_prefix(set: &Value, net: &IpNet) -> bool {
    let want = net.to_string();
    set["elem"].as_array().map(|es| {
        es.iter().any(|e| {
            let e = e.get("elem").map(|x| &x["val"]).unwrap_or(e);
            e.as_str() == Some(want.as_str())
                || (e["prefix"]["addr"].as_str() == Some(net.network().to_string().as_str())
                    && e["prefix"]["len"] == json!(net.prefix_len()))
        })
    }) == Some(true)
}

#[test]
fn masquerade() {
    require_root();
    let node = Node::new("nm");
    let n = &node.ns;
    let world = Netns::new("w");
    n.ok(&[
        "ip",
        "link",
        "add",
        "up0",
        "type",
        "veth",
        "peer",
        "name",
        "up1",
        "netns",
        &world.name,
    ]);
    n.ok(&["ip", "addr", "add", "203.0.113.1/24", "dev", "up0"]);
    n.ok(&["ip", "link", "set", "up0", "up"]);
    world.ok(&["ip", "addr", "add", "203.0.113.2/24", "dev", "up1"]);
    world.ok(&["ip", "link", "set", "up1", "up"]);
    // The world has no route back to any pod subnet: only masqueraded traffic gets answers.

    let mut masq = example_conf("bridge.conflist", &node);
    masq["masquerade"] = json!(true);
    let mut plain = example_conf("bridge.conflist", &node);
    plain["name"] = json!("weft-plain");
    plain["bridge"] = json!("weft9");
    plain["masquerade"] = json!(false);
    plain["ipam"]["pools"] = json!([{"subnet": "198.18.9.0/24"}]);

    let pa = Netns::new("pm");
    let pb = Netns::new("pp");
    let (path_a, path_b) = (pa.path(), pb.path());
    let ra = cni(n, &add_call("ctr-m", &path_a), &masq).success();
    let rb = cni(n, &add_call("ctr-p", &path_b), &plain).success();

    let table = nft_table(n);
    let dump = Value::Array(table.clone()).to_string();
    let pool: IpNet = "198.18.0.0/24".parse().unwrap();
    let pods4 = table
        .iter()
        .find_map(|o| o.get("set").filter(|s| s["name"] == "pods4"))
        .unwrap_or_else(|| panic!("no set pods4 in table inet weft: {dump}"));
    assert!(set_has_prefix(pods4, &pool), "pods4 lacks {pool}: {pods4}");
    assert!(
        table.iter().filter_map(|o| o.get("rule")).any(
            |r| r["chain"] == "postrouting" && r["expr"].to_string().contains("\"masquerade\"")
        ),
        "no masquerade rule in chain postrouting: {dump}"
    );
    assert_eq!(
        sysctl(n, "net/ipv4/ip_forward"),
        "1",
        "masquerade: node ip_forward"
    );

    assert!(
        ping_tries(&pa, "203.0.113.2", 3),
        "masqueraded pod {} cannot reach the world (so the world saw the pod's own address)",
        ra["ips"][0]["address"]
    );
    assert!(
        !pb.exec(&["ping", "-c", "2", "-W", "1", "203.0.113.2"])
            .status
            .success(),
        "pod {} of a network without masquerade got answers from a world that has no route back to it: it was masqueraded",
        rb["ips"][0]["address"]
    );

    for (cid, path, conf) in [("ctr-m", &path_a, &masq), ("ctr-p", &path_b, &plain)] {
        let mut call = add_call(cid, path);
        call.command = "DEL";
        cni(n, &call, conf).success();
    }
    assert_eq!(weft_links(n), Vec::<String>::new());
}

fn v11_conf(node: &Node) -> Value {
    let mut c = example_conf("bridge.conflist", node);
    c["cniVersion"] = json!("1.1.0");
    c
}

#[test]
fn status_and_gc() {
    require_root();
    let node = Node::new("ng");
    let n = &node.ns;
    let conf = v11_conf(&node);
    let network = conf["name"].as_str().unwrap().to_string();
    let data = node.data_dir();

    // libcni passes empty CNI_CONTAINERID/CNI_IFNAME/CNI_NETNS for STATUS and GC.
    let status = cni(n, &Call::new("STATUS", ""), &conf);
    assert_eq!(status.code, 0, "STATUS of a usable config: {status:?}");

    let pods = [Netns::new("ga"), Netns::new("gb")];
    let mut veths = vec![];
    for (pod, cid) in pods.iter().zip(["ctr-keep", "ctr-gone"]) {
        let path = pod.path();
        let r = cni(n, &add_call(cid, &path), &conf).success();
        assert_attached(n, pod, &conf, cid, &r);
        veths.push(
            host_link(n, &network, cid, "eth0").unwrap()["ifname"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }

    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "ctr-keep", "ifname": "eth0"}]);
    let mut call = Call::new("GC", "");
    call.ifname = "";
    cni(n, &call, &gc).success();

    assert!(
        handle_file(&data, &network, "ctr-keep", "eth0").exists(),
        "GC freed the listed attachment"
    );
    assert!(
        !handle_file(&data, &network, "ctr-gone", "eth0").exists(),
        "GC kept the allocation of an attachment not listed"
    );
    let links = n.links();
    assert!(
        links.contains(&veths[0]),
        "GC deleted the listed attachment's veth {}: {links:?}",
        veths[0]
    );
    assert!(
        !links.contains(&veths[1]),
        "GC kept the veth {} of an attachment not listed: {links:?}",
        veths[1]
    );

    let path = pods[0].path();
    let mut del = add_call("ctr-keep", &path);
    del.command = "DEL";
    cni(n, &del, &conf).success();
    assert_eq!(weft_links(n), Vec::<String>::new());
    assert_eq!(handle_files(&data, &network), Vec::<String>::new());
}

#[test]
fn version_and_old_results() {
    require_root();
    let node = Node::new("nv");
    let n = &node.ns;
    for bin in ["weft", "weft-ipam"] {
        let mut call = Call::new("VERSION", "");
        call.bin = bin;
        call.ifname = "";
        let v = cni_raw(n, &call, br#"{"cniVersion": "1.0.0"}"#).success();
        let got: Vec<&str> = v["supportedVersions"]
            .as_array()
            .unwrap_or_else(|| panic!("{bin} VERSION: {v}"))
            .iter()
            .filter_map(|x| x.as_str())
            .collect();
        for want in ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"] {
            assert!(got.contains(&want), "{bin} VERSION lacks {want}: {v}");
        }
    }

    let mut conf = example_conf("bridge.conflist", &node);
    conf["cniVersion"] = json!("0.3.1");
    let pod = Netns::new("po");
    let path = pod.path();
    let r = cni(n, &add_call("ctr-old", &path), &conf).success();
    assert_eq!(r["cniVersion"], "0.3.1", "result version: {r}");
    assert_eq!(
        r["ips"][0]["version"], "4",
        "0.3.1 result lacks ips[].version \"4\": {r}"
    );
    assert!(
        pod.addrs("eth0")
            .contains(&r["ips"][0]["address"].as_str().unwrap().to_string())
    );
    let mut del = add_call("ctr-old", &path);
    del.command = "DEL";
    cni(n, &del, &conf).success();
    assert_eq!(
        handle_files(&node.data_dir(), "weft-bridge"),
        Vec::<String>::new()
    );
}
