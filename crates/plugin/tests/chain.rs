//! End to end: the conflist weft (bridge) -> reference portmap -> reference bandwidth
//! (examples/bridge-portmap-bandwidth.conflist), driven as libcni drives a list: ADD calls each
//! plugin in order with the previous plugin's result as `prevResult` and `runtimeConfig` only for
//! the capabilities a plugin declares; DEL goes in reverse order with the cached final result.
//! Needs root.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};

const NODE_ADDR: &str = "198.51.100.1";
const HOST_PORT: u16 = 18080;
const RATE: u64 = 10_000_000; // bits/s

fn list(node: &Node) -> Value {
    let mut l = example_list("bridge-portmap-bandwidth.conflist");
    l["plugins"][0]["ipam"]["dataDir"] = json!(node.data_dir());
    l
}

/// The binary of a plugin type: ours from the build, the others from the reference plugins.
fn plugin_bin(ty: &str) -> String {
    if ty == "weft" || ty == "weft-ipam" {
        ty.to_string()
    } else {
        format!("{REFERENCE_PLUGINS}/{ty}")
    }
}

/// The config libcni hands plugin `i`: list name and version, runtimeConfig for the plugin's
/// capabilities, prevResult.
fn plugin_conf(list: &Value, i: usize, runtime: &Value, prev: Option<&Value>) -> Value {
    let mut c = list_plugin(list, i);
    if let Some(caps) = c["capabilities"].as_object() {
        let mut rc = serde_json::Map::new();
        for (cap, on) in caps {
            if let (true, Some(v)) = (on == true, runtime.get(cap)) {
                rc.insert(cap.clone(), v.clone());
            }
        }
        if !rc.is_empty() {
            c["runtimeConfig"] = Value::Object(rc);
        }
    }
    if let Some(p) = prev {
        c["prevResult"] = p.clone();
    }
    c
}

fn chain(
    node: &Netns,
    list: &Value,
    verb: &str,
    cid: &str,
    pod: &std::path::Path,
    runtime: &Value,
    cached: Option<&Value>,
) -> Option<Value> {
    let n = list["plugins"].as_array().unwrap().len();
    let order: Vec<usize> = if verb == "DEL" {
        (0..n).rev().collect()
    } else {
        (0..n).collect()
    };
    let mut prev = cached.cloned();
    for i in order {
        let ty = list["plugins"][i]["type"].as_str().unwrap();
        let bin = plugin_bin(ty);
        let conf = plugin_conf(list, i, runtime, prev.as_ref());
        let mut call = Call::new(verb, cid);
        call.bin = &bin;
        call.netns = Some(pod);
        let out = cni(node, &call, &conf);
        assert_eq!(
            out.code, 0,
            "{verb} of plugin {i} ({ty}) failed: stdout {} stderr {}\nconfig {conf}",
            out.stdout, out.stderr
        );
        if verb == "ADD" {
            prev = Some(out.json());
        }
    }
    prev
}

/// Receiver's throughput in bit/s of a 2 s iperf3 run from `client` to the server at `addr`.
fn iperf(client: &Netns, addr: &str, reverse: bool) -> f64 {
    let mut cmd = vec![
        "timeout", "15", "iperf3", "-c", addr, "-p", "5201", "-t", "2", "-J",
    ];
    if reverse {
        cmd.push("-R");
    }
    let mut last = String::new();
    for _ in 0..10 {
        let out = client.exec(&cmd);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        // iperf3 can exit 0 with an error report instead of a measurement (a server still
        // busy with the previous run): count that as one more failed attempt.
        let measured = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|j| j["end"]["sum_received"]["bits_per_second"].as_f64());
        if out.status.success()
            && let Some(bps) = measured
        {
            return bps;
        }
        last = format!("{text} {}", String::from_utf8_lossy(&out.stderr));
        std::thread::sleep(Duration::from_millis(300)); // server not listening yet
    }
    panic!("iperf3 {cmd:?} from {} failed: {last}", client.name);
}

fn fetch(ns: &Netns, url: &str) -> Option<String> {
    let out = ns.exec(&["timeout", "3", "busybox", "wget", "-q", "-O", "-", url]);
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn weft_portmap_bandwidth() {
    require_root();
    let node = Node::new("nc");
    let n = &node.ns;
    // The node's own address, on a veth pair that stays inside the node.
    n.ok(&[
        "ip", "link", "add", "hp0", "type", "veth", "peer", "name", "hp1",
    ]);
    n.ok(&[
        "ip",
        "addr",
        "add",
        &format!("{NODE_ADDR}/24"),
        "dev",
        "hp0",
    ]);
    n.ok(&["ip", "link", "set", "hp0", "up"]);
    n.ok(&["ip", "link", "set", "hp1", "up"]);

    let list = list(&node);
    let network = list["name"].as_str().unwrap().to_string();
    let data = node.data_dir();

    // Pod 1: port 8080 mapped to the node's 18080, and shaped to RATE both ways.
    let limited = Netns::new("cl");
    let lpath = limited.path();
    let rt_limited = json!({
        "portMappings": [{"hostPort": HOST_PORT, "containerPort": 8080, "protocol": "tcp"}],
        "bandwidth": {"ingressRate": RATE, "ingressBurst": 1_000_000, "egressRate": RATE, "egressBurst": 1_000_000}
    });
    let res_l = chain(n, &list, "ADD", "ctr-lim", &lpath, &rt_limited, None).unwrap();
    assert_eq!(res_l["cniVersion"], "1.0.0", "final result: {res_l}");
    let addr_l = result_ip(&res_l, 4).unwrap_or_else(|| panic!("no IPv4 in {res_l}"));
    assert!(
        limited
            .addrs("eth0")
            .iter()
            .any(|a| a.starts_with(&format!("{addr_l}/")))
    );

    // Pod 2: same chain, no runtimeConfig: not shaped.
    let free = Netns::new("cf");
    let fpath = free.path();
    let rt_free = json!({});
    let res_f = chain(n, &list, "ADD", "ctr-free", &fpath, &rt_free, None).unwrap();
    let addr_f = result_ip(&res_f, 4).unwrap();
    assert_ne!(addr_l, addr_f);

    // Port mapping: a web server in pod 1 answers on the node's address and host port.
    let www = tempfile::tempdir().unwrap();
    std::fs::write(www.path().join("index.html"), "weft-portmap-ok\n").unwrap();
    let _httpd = Bg::spawn(
        &limited,
        &[
            "busybox",
            "httpd",
            "-f",
            "-p",
            "8080",
            "-h",
            www.path().to_str().unwrap(),
        ],
    );
    let url = format!("http://{NODE_ADDR}:{HOST_PORT}/index.html");
    let mut got = None;
    for _ in 0..20 {
        got = fetch(n, &url);
        if got.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(150));
    }
    assert_eq!(
        got.as_deref(),
        Some("weft-portmap-ok\n"),
        "{url} from the node did not reach pod 1's port 8080"
    );
    assert!(
        fetch(
            n,
            &format!("http://{NODE_ADDR}:{}/index.html", HOST_PORT + 1)
        )
        .is_none(),
        "an unmapped port answered"
    );

    // Bandwidth: pod 1 is held near RATE both ways, pod 2 is not.
    let _iperf = Bg::spawn(n, &["iperf3", "-s", "-B", NODE_ADDR, "-p", "5201"]);
    std::thread::sleep(Duration::from_millis(200));
    let free_up = iperf(&free, NODE_ADDR, false);
    let lim_up = iperf(&limited, NODE_ADDR, false);
    let lim_down = iperf(&limited, NODE_ADDR, true);
    eprintln!(
        "iperf3: unlimited pod->node {:.1} Mbit/s, limited pod->node {:.1}, node->pod {:.1}",
        free_up / 1e6,
        lim_up / 1e6,
        lim_down / 1e6
    );
    let limit = RATE as f64 * 1.5;
    assert!(
        lim_up < limit,
        "egress limit {RATE} bit/s not applied: pod->node {lim_up:.0} bit/s"
    );
    assert!(
        lim_down < limit,
        "ingress limit {RATE} bit/s not applied: node->pod {lim_down:.0} bit/s"
    );
    assert!(
        lim_up > 1e6 && lim_down > 1e6,
        "shaped pod barely passes traffic: {lim_up:.0} / {lim_down:.0} bit/s"
    );
    assert!(
        free_up > 5.0 * limit,
        "unshaped pod is not much faster than the limit: {free_up:.0} bit/s"
    );

    // DEL in reverse order with the cached result; everything goes.
    chain(
        n,
        &list,
        "DEL",
        "ctr-lim",
        &lpath,
        &rt_limited,
        Some(&res_l),
    );
    chain(n, &list, "DEL", "ctr-free", &fpath, &rt_free, Some(&res_f));
    assert_eq!(weft_links(n), Vec::<String>::new(), "weft veths left");
    let links = n.links();
    assert!(
        !links.iter().any(|l| l.starts_with("bwp")),
        "bandwidth ifb left: {links:?}"
    );
    let nat = n.ok(&["iptables", "-t", "nat", "-S"]);
    assert!(
        !nat.contains(&HOST_PORT.to_string()),
        "portmap DNAT left: {nat}"
    );
    assert_eq!(
        handle_files(&data, &network),
        Vec::<String>::new(),
        "allocations left after DEL"
    );
    assert!(
        fetch(n, &url).is_none(),
        "mapped port still answers after DEL"
    );
}
