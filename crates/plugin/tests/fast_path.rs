//! `fastPath` (routed mode, on by default there): the plugin attaches the BPF fast path's
//! `from_pod` to each pod's host veth and copies the pod's /32 into the pod table; TCP between
//! two pods of the node then skips the node's IP stack and the receiving pod's host veth; CHECK
//! sees the program removed; DEL leaves nothing; `"fastPath": false` attaches neither; other
//! modes and a delegated IPAM refuse `"fastPath": true` before anything is made. Needs root.

mod common;

use common::*;
use serde_json::{Value, json};
use weft_dataplane::Netlink;

/// The network config without a `fastPath` key (routed mode: the fast path, by default).
fn conf(node: &Node, mode: &str, pools: Value) -> Value {
    json!({
        "cniVersion": "1.1.0", "name": "fastnet", "type": "weft", "mode": mode,
        "ipam": {"pools": pools, "dataDir": node.data_dir(), "node": "node-1"},
    })
}

fn with_fast_path(mut c: Value, on: bool) -> Value {
    c["fastPath"] = json!(on);
    c
}

fn call<'a>(cmd: &'a str, cid: &'a str, path: &'a std::path::Path) -> Call<'a> {
    let mut c = Call::new(cmd, cid);
    c.netns = Some(path);
    c
}

fn host_veth(node: &Netns, cid: &str) -> String {
    let alias = format!("weft:fastnet:{cid}:eth0");
    link_aliases(node)
        .into_iter()
        .find(|(_, a)| *a == alias)
        .map(|(n, _)| n)
        .unwrap_or_else(|| panic!("no host veth with alias {alias}"))
}

fn programs(ns: &Netns, dev: &str) -> Vec<String> {
    let handle = weft_dataplane::Netns::open(&ns.path()).unwrap();
    let mut nl = Netlink::in_netns(&handle).unwrap();
    let index = nl.link_by_name(dev).unwrap().unwrap().index;
    nl.ingress_programs(index).unwrap()
}

#[test]
fn routed_pods_on_the_fast_path() {
    require_root();
    let node = Node::new("fp");
    let (pa, pb) = (Netns::new("fpa"), Netns::new("fpb"));
    let pools = json!([{"subnet": "198.18.41.0/24"}, {"subnet": "fd00:18:41::/64"}]);
    // Pod a by default, pod b by name: both on the fast path.
    let c = conf(&node, "routed", pools);
    let (path_a, path_b) = (pa.path(), pb.path());
    let ra = cni(&node.ns, &call("ADD", "fast-a", &path_a), &c).success();
    let cb = with_fast_path(c.clone(), true);
    let rb = cni(&node.ns, &call("ADD", "fast-b", &path_b), &cb).success();
    let (ha, hb) = (host_veth(&node.ns, "fast-a"), host_veth(&node.ns, "fast-b"));
    // Each host veth has the program; each pod address is in the pod table.
    for h in [&ha, &hb] {
        assert_eq!(
            programs(&node.ns, h),
            vec![weft_dataplane::bpf::FastPath::FROM_POD.to_string()],
            "{h}"
        );
    }
    let table = weft_dataplane::bpf::POD_TABLE.to_string();
    for fam in [4, 6] {
        let routes = node
            .ns
            .ok(&["ip", &format!("-{fam}"), "route", "show", "table", &table]);
        for r in [&ra, &rb] {
            let ip = result_ip(r, fam).unwrap();
            assert!(routes.contains(&ip), "{ip} not in table {table}: {routes}");
        }
    }

    // TCP over IPv4 and IPv6 between the two pods: the node forwards (next to) nothing, and
    // the data goes straight into pod b (`bpf_redirect_peer`), not out of its host veth.
    for fam in [4, 6] {
        let dst = result_ip(&rb, fam).unwrap();
        assert!(ping_tries(&pa, &dst, 5), "no ping to {dst}");
        let before = node.ns.forwarded(fam);
        let sent_by_hb = node.ns.link_packets(&hb).1;
        let end = pa.iperf_send(&pb, &dst, "5302", "64M");
        let sent = end["sum_sent"]["bytes"].as_u64();
        assert!(
            sent >= Some(64 << 20),
            "IPv{fam} transfer to {dst}: {sent:?}"
        );
        let n = node.ns.forwarded(fam) - before;
        assert!(
            n < 100,
            "the node forwarded {n} IPv{fam} datagrams of a 64 MB transfer"
        );
        let n = node.ns.link_packets(&hb).1 - sent_by_hb;
        assert!(
            n < 100,
            "pod b's host veth sent {n} packets of a 64 MB IPv{fam} transfer"
        );
    }

    // CHECK passes; with the program removed by hand it names the drift.
    let mut with_prev = c.clone();
    with_prev["prevResult"] = ra.clone();
    cni(&node.ns, &call("CHECK", "fast-a", &path_a), &with_prev).success();
    node.ns.ok(&["tc", "filter", "del", "dev", &ha, "ingress"]);
    let out = cni(&node.ns, &call("CHECK", "fast-a", &path_a), &with_prev);
    assert_ne!(out.code, 0, "CHECK passed without the program: {out:?}");
    let msg = out.json()["msg"].as_str().unwrap_or_default().to_string();
    assert!(msg.contains("fastPath") && msg.contains(&ha), "{msg}");

    // `"fastPath": false`: no program, nothing in the pod table, and CHECK passes without it.
    let pc = Netns::new("fpc");
    let path_c = pc.path();
    let off = with_fast_path(c.clone(), false);
    let rc = cni(&node.ns, &call("ADD", "slow-c", &path_c), &off).success();
    let hc = host_veth(&node.ns, "slow-c");
    assert!(programs(&node.ns, &hc).is_empty(), "{hc}");
    let ip = result_ip(&rc, 4).unwrap();
    let routes = node.ns.ok(&["ip", "-4", "route", "show", "table", &table]);
    assert!(!routes.contains(&ip), "{ip} in table {table}: {routes}");
    let mut off_prev = off.clone();
    off_prev["prevResult"] = rc.clone();
    cni(&node.ns, &call("CHECK", "slow-c", &path_c), &off_prev).success();

    for (cid, path, prev, cfg) in [
        ("fast-a", &path_a, &ra, &c),
        ("fast-b", &path_b, &rb, &cb),
        ("slow-c", &path_c, &rc, &off),
    ] {
        let mut d = cfg.clone();
        d["prevResult"] = prev.clone();
        cni(&node.ns, &call("DEL", cid, path), &d).success();
    }
    assert!(
        weft_links(&node.ns).is_empty(),
        "{:?}",
        weft_links(&node.ns)
    );
    for fam in ["-4", "-6"] {
        let left = node.ns.exec(&["ip", fam, "route", "show", "table", &table]);
        let left = String::from_utf8_lossy(&left.stdout).to_string();
        assert!(left.trim().is_empty(), "table {table} left: {left}");
    }
}

#[test]
fn fast_path_refused_where_it_cannot_work_changing_nothing() {
    require_root();
    let node = Node::new("fpr");
    let pod = Netns::new("fprp");
    let path = pod.path();
    let v4 = json!([{"subnet": "198.18.42.0/24"}]);
    let mut delegated = with_fast_path(conf(&node, "routed", v4.clone()), true);
    delegated["ipam"] = json!({"type": "host-local", "subnet": "198.18.42.0/24"});
    for (what, c) in [
        (
            "bridge mode",
            with_fast_path(conf(&node, "bridge", v4.clone()), true),
        ),
        ("a delegated IPAM", delegated),
    ] {
        let e = cni(&node.ns, &call("ADD", "r-1", &path), &c).json();
        assert_eq!(e["code"], 7, "{what}: {e}");
        assert!(
            e["msg"].as_str().unwrap().contains("fastPath"),
            "{what}: {e}"
        );
    }
    assert!(
        weft_links(&node.ns).is_empty(),
        "{:?}",
        weft_links(&node.ns)
    );
    assert_eq!(pod.links(), vec!["lo".to_string()]);
    assert!(handle_files(&node.data_dir(), "fastnet").is_empty());
}
