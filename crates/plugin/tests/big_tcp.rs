//! `bigTcp` (routed mode): both veth ends take IPv4 GSO/GRO packets of 192 KiB (IPv6 stays at
//! 64 KiB);
//! CHECK sees a size put back; a TCP transfer between two such pods through the node works;
//! bridge mode and a node with a VXLAN device are refused before anything changes. Needs root.

mod common;

use common::*;
use serde_json::{Value, json};
use weft_dataplane::Netlink;

const SIZE: u64 = 196_608;

fn conf(node: &Node, mode: &str, big: bool) -> Value {
    json!({
        "cniVersion": "1.1.0", "name": "bignet", "type": "weft", "mode": mode, "bigTcp": big,
        "ipam": {"pools": [{"subnet": "198.18.40.0/24"}, {"subnet": "fd00:18:40::/64"}],
                 "dataDir": node.data_dir(), "node": "node-1"},
    })
}

fn call<'a>(cmd: &'a str, cid: &'a str, path: &'a std::path::Path) -> Call<'a> {
    let mut c = Call::new(cmd, cid);
    c.netns = Some(path);
    c
}

fn netlink(ns: &Netns) -> Netlink {
    Netlink::in_netns(&weft_dataplane::Netns::open(&ns.path()).unwrap()).unwrap()
}

/// (gso_max_size, gso_ipv4_max_size) of `dev` in `ns`, as the kernel reports them.
fn gso(ns: &Netns, dev: &str) -> (u64, u64) {
    let l = netlink(ns).link_by_name(dev).unwrap().unwrap();
    (l.gso_max_size.into(), l.gso_ipv4_max_size.into())
}

fn host_veth(node: &Netns, cid: &str) -> String {
    let alias = format!("weft:bignet:{cid}:eth0");
    link_aliases(node)
        .into_iter()
        .find(|(_, a)| *a == alias)
        .map(|(n, _)| n)
        .unwrap_or_else(|| panic!("no host veth with alias {alias}"))
}

#[test]
fn routed_pods_with_big_tcp() {
    require_root();
    let node = Node::new("bt");
    let (pa, pb) = (Netns::new("bta"), Netns::new("btb"));
    let c = conf(&node, "routed", true);
    let (path_a, path_b) = (pa.path(), pb.path());
    let ra = cni(&node.ns, &call("ADD", "big-a", &path_a), &c).success();
    let rb = cni(&node.ns, &call("ADD", "big-b", &path_b), &c).success();

    let (ha, hb) = (host_veth(&node.ns, "big-a"), host_veth(&node.ns, "big-b"));
    for (ns, dev) in [
        (&pa, "eth0"),
        (&pb, "eth0"),
        (&node.ns, &ha),
        (&node.ns, &hb),
    ] {
        assert_eq!(gso(ns, dev), (65_536, SIZE), "{dev} in {}", ns.name);
    }

    // A TCP transfer of 64 MB, pod to pod through the node, IPv4 then IPv6, arrives whole.
    for fam in [4, 6] {
        let dst = result_ip(&rb, fam).unwrap();
        let end = pa.iperf_send(&pb, &dst, "5301", "64M");
        // The run ends when the sender has written everything; TCP then needed (next to) no
        // retransmission. With IPv6 BIG TCP on through the node (it no longer is),
        // the same transfer took 21 s with 40,000 retransmissions.
        let rexmit = end["sum_sent"]["retransmits"].as_u64().unwrap_or(0);
        assert!(rexmit < 1000, "IPv{fam}: {rexmit} retransmissions: {end}");
        let sent = end["sum_sent"]["bytes"].as_u64();
        assert!(
            sent >= Some(64 << 20),
            "IPv{fam} transfer to {dst}: {sent:?}"
        );
    }

    // CHECK passes, then sees one end put back to 64 KiB.
    let mut with_prev = c.clone();
    with_prev["prevResult"] = ra.clone();
    cni(&node.ns, &call("CHECK", "big-a", &path_a), &with_prev).success();
    let mut nl = netlink(&node.ns);
    let idx = nl.link_by_name(&ha).unwrap().unwrap().index;
    nl.set_gso_max_size(idx, 65_536).unwrap();
    assert_eq!(
        gso(&node.ns, &ha),
        (65_536, 65_536),
        "{ha} after the change"
    );
    let out = cni(&node.ns, &call("CHECK", "big-a", &path_a), &with_prev);
    assert_ne!(out.code, 0, "CHECK passed with 64 KiB on {ha}: {out:?}");
    let msg = out.json()["msg"].as_str().unwrap_or_default().to_string();
    assert!(
        msg.contains("bigTcp") && msg.contains(&ha) && msg.contains("65536"),
        "{msg}"
    );

    for (cid, path, prev) in [("big-a", &path_a, &ra), ("big-b", &path_b, &rb)] {
        let mut d = c.clone();
        d["prevResult"] = prev.clone();
        cni(&node.ns, &call("DEL", cid, path), &d).success();
    }
    assert!(
        weft_links(&node.ns).is_empty(),
        "{:?}",
        weft_links(&node.ns)
    );
}

#[test]
fn big_tcp_refused_in_bridge_mode_and_on_a_vxlan_node_changing_nothing() {
    require_root();
    let node = Node::new("btr");
    let pod = Netns::new("btrp");
    let path = pod.path();

    let out = cni(
        &node.ns,
        &call("ADD", "br-1", &path),
        &conf(&node, "bridge", true),
    );
    let e = out.json();
    assert_eq!(e["code"], 7, "{e}");
    let msg = e["msg"].as_str().unwrap();
    assert!(msg.contains("bigTcp") && msg.contains("routed"), "{msg}");

    // A node whose pods may take a tunnel.
    node.ns.ok(&[
        "ip", "link", "add", "weft.vx", "type", "vxlan", "id", "4096", "dstport", "4789",
    ]);
    let out = cni(
        &node.ns,
        &call("ADD", "vx-1", &path),
        &conf(&node, "routed", true),
    );
    let e = out.json();
    assert_eq!(e["code"], 7, "{e}");
    let msg = e["msg"].as_str().unwrap();
    assert!(msg.contains("bigTcp") && msg.contains("weft.vx"), "{msg}");

    // Nothing was made: no interface anywhere, no address held (the next pod gets the first).
    assert!(
        weft_links(&node.ns).is_empty(),
        "{:?}",
        weft_links(&node.ns)
    );
    assert_eq!(pod.links(), vec!["lo".to_string()]);
    let r = cni(
        &node.ns,
        &call("ADD", "plain-1", &path),
        &conf(&node, "routed", false),
    )
    .success();
    assert_eq!(result_ip(&r, 4).as_deref(), Some("198.18.40.1"), "{r}");
    let mut d = conf(&node, "routed", false);
    d["prevResult"] = r;
    cni(&node.ns, &call("DEL", "plain-1", &path), &d).success();
}
