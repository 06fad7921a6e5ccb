//! The BPF fast path end to end, on by default: pods attached by the plugin without a
//! `fastPath` key, weftd started without a flag in host-gw mode. Pod-to-pod TCP across nodes
//! skips both nodes' IP stacks (their forwarding counters stay put), ICMP still takes the
//! stack, a `to_pods` program removed by hand from a node's uplink comes back within 5 s, and
//! weftd restarted with `--no-fast-path` removes it. In vxlan mode (weftd `--fast-path`, which
//! requires it) the programs encapsulate by themselves, also for pods attached before weftd
//! made the VXLAN device or made it again. Needs root and /usr/bin/etcd.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

/// IpForwDatagrams of the namespace.
fn forwarded(ns: &Netns) -> u64 {
    ns.forwarded(4)
}

/// Names of the tc programs on `dev`'s ingress (none without the device).
fn ingress_programs(ns: &Netns, dev: &str) -> Vec<String> {
    let handle = weft_dataplane::Netns::open(&ns.path()).unwrap();
    let mut nl = weft_dataplane::Netlink::in_netns(&handle).unwrap();
    match nl.link_by_name(dev).unwrap() {
        Some(link) => nl.ingress_programs(link.index).unwrap(),
        None => Vec::new(),
    }
}

/// A lab whose pods the plugin attaches with its defaults (the fast path; `mtu` if given).
fn fast_path_lab(tag: &str, mtu: Option<u32>) -> Lab {
    let mut lab = Lab::new(tag);
    if let Some(mtu) = mtu {
        lab.plugin_extra.insert("mtu".into(), Value::from(mtu));
    }
    lab
}

/// Sends 64 MB with iperf3 from pod 0 to `dst` (pod 1, which serves on `port`).
fn transfer_64m(lab: &Lab, dst: &str, port: &str) {
    let end = lab.pod(0).iperf_send(lab.pod(1), dst, port, "64M");
    let done = end["sum_sent"]["bytes"].as_u64();
    assert!(done >= Some(64 << 20), "transfer to {dst}: {done:?}");
}

/// Packets the device sent and received.
fn packets(ns: &Netns, dev: &str) -> u64 {
    let (rx, tx) = ns.link_packets(dev);
    rx + tx
}

#[test]
fn fast_path_carries_pod_traffic_and_is_put_back() {
    let mut lab = fast_path_lab("fp", None);
    lab.add_pod(0);
    lab.add_pod(1);
    for i in 0..2 {
        lab.start_weftd(i, "host-gw");
    }
    let dst = lab.pod_ip(1).to_string();
    assert!(
        lab.pod(0).ping(&dst, 50),
        "no ping to {dst}\n{}",
        lab.logs()
    );
    for i in 0..2 {
        let progs = ingress_programs(&lab.nodes[i].ns, "uplink");
        assert!(
            progs
                .iter()
                .any(|p| p == weft_dataplane::bpf::FastPath::TO_PODS),
            "node {i} uplink: {progs:?}\n{}",
            lab.logs()
        );
    }

    // 64 MB pod to pod: without the fast path each node forwards every one of its ~1,000
    // segments (and the ACKs back); with it, only what missed it (a neighbour not yet known).
    let before: Vec<u64> = (0..2).map(|i| forwarded(&lab.nodes[i].ns)).collect();
    transfer_64m(&lab, &dst, "5311");
    for (i, b) in before.iter().enumerate() {
        let n = forwarded(&lab.nodes[i].ns) - b;
        assert!(
            n < 100,
            "node {i} forwarded {n} datagrams during the transfer"
        );
    }
    // ICMP is not fast-pathed: the stack forwards it.
    let f = forwarded(&lab.nodes[1].ns);
    assert!(lab.pod(0).ping(&dst, 5));
    assert!(
        forwarded(&lab.nodes[1].ns) > f,
        "a ping was not forwarded by node 1's stack"
    );

    // Removed by hand: weftd puts it back (its log counts one more attach; it may be back
    // before this test could look, as weftd reacts to the netlink event).
    let attaches = || {
        let log = lab.nodes[0].weftd.as_ref().unwrap().log_text();
        log.matches("added fast path weft_to_pods").count()
    };
    let before = attaches();
    lab.nodes[0]
        .ns
        .ok(&["tc", "filter", "del", "dev", "uplink", "ingress"]);
    let back = wait_until(Duration::from_secs(5), || {
        attaches() > before
            && ingress_programs(&lab.nodes[0].ns, "uplink")
                .iter()
                .any(|p| p == weft_dataplane::bpf::FastPath::TO_PODS)
    });
    assert!(
        back.is_some(),
        "to_pods not back within 5 s\n{}",
        lab.logs()
    );

    // weftd restarted with --no-fast-path takes it away; traffic keeps flowing (the stack).
    assert!(lab.nodes[0].weftd.as_mut().unwrap().terminate());
    lab.start_weftd_with(0, "host-gw", &["--no-fast-path"]);
    let gone = wait_until(Duration::from_secs(5), || {
        ingress_programs(&lab.nodes[0].ns, "uplink").is_empty()
    });
    assert!(gone.is_some(), "to_pods still there\n{}", lab.logs());
    assert!(lab.pod(1).ping(lab.pod_ip(0), 5));
}

/// A 64 MB transfer from pod 0 to `dst` (pod 1) during which neither node's VXLAN device
/// carries nor its stack forwards more than 100 packets: the programs encapsulated and took
/// the VXLAN apart.
fn transfer_beside_the_vxlan_device(lab: &Lab, dst: &str, port: &str) {
    let before: Vec<(u64, u64)> = (0..2)
        .map(|i| {
            let ns = &lab.nodes[i].ns;
            (packets(ns, "weft.vx"), forwarded(ns))
        })
        .collect();
    transfer_64m(lab, dst, port);
    for (i, (vx, fwd)) in before.iter().enumerate() {
        let ns = &lab.nodes[i].ns;
        let (vx, fwd) = (packets(ns, "weft.vx") - vx, forwarded(ns) - fwd);
        assert!(
            vx < 100 && fwd < 100,
            "node {i}: the VXLAN device carried {vx} packets, the stack forwarded {fwd}\n{}",
            lab.logs()
        );
    }
}

#[test]
fn pods_fast_path_follows_the_vxlan_device() {
    // Pods first: the plugin finds no VXLAN device, so their `from_pod` cannot encapsulate.
    // weftd's first pass attaches it again for the device it made; and again after the device
    // is deleted by hand and made anew (another index, which old programs do not trust).
    let mut lab = fast_path_lab("fr", Some(1450));
    lab.add_pod(0);
    lab.add_pod(1);
    for i in 0..2 {
        lab.start_weftd_with(i, "vxlan", &["--fast-path"]);
    }
    let refreshes = |i: usize| {
        let log = lab.nodes[i].weftd.as_ref().unwrap().log_text();
        log.matches("fast path weft_from_pod refreshed on 1 pod link(s) for VXLAN device")
            .count()
    };
    let up = wait_until(Duration::from_secs(10), || {
        (0..2).all(|i| refreshes(i) == 1)
    });
    assert!(up.is_some(), "from_pod not refreshed\n{}", lab.logs());
    let dst = lab.pod_ip(1).to_string();
    assert!(
        lab.pod(0).ping(&dst, 50),
        "no ping to {dst}\n{}",
        lab.logs()
    );
    transfer_beside_the_vxlan_device(&lab, &dst, "5313");

    let vx_index = || {
        lab.nodes[0]
            .ns
            .ip_link("weft.vx")
            .map(|l| l["ifindex"].as_u64().unwrap())
    };
    let old = vx_index().unwrap();
    lab.nodes[0].ns.ok(&["ip", "link", "del", "weft.vx"]);
    let back = wait_until(Duration::from_secs(10), || {
        vx_index().is_some_and(|i| i != old) && refreshes(0) == 2
    });
    assert!(
        back.is_some(),
        "weft.vx or from_pod not back\n{}",
        lab.logs()
    );
    assert!(
        lab.pod(0).ping(&dst, 50),
        "no ping to {dst} after weft.vx came back\n{}",
        lab.logs()
    );
    transfer_beside_the_vxlan_device(&lab, &dst, "5314");
}

#[test]
fn vxlan_fast_path_encapsulates_without_the_vxlan_device() {
    // weftd first, so the VXLAN device is there when the plugin attaches the pods: `from_pod`
    // then encapsulates by itself (pods at 1450, the tunnel's MTU, as a vxlan network runs them).
    let mut lab = fast_path_lab("fv", Some(1450));
    for i in 0..2 {
        lab.start_weftd_with(i, "vxlan", &["--fast-path"]);
    }
    let up = wait_until(Duration::from_secs(10), || {
        (0..2).all(|i| {
            ingress_programs(&lab.nodes[i].ns, "weft.vx")
                .iter()
                .any(|p| p == weft_dataplane::bpf::FastPath::TO_PODS)
        })
    });
    assert!(up.is_some(), "no VXLAN device with to_pods\n{}", lab.logs());
    lab.add_pod(0);
    lab.add_pod(1);
    let dst = lab.pod_ip(1).to_string();
    assert!(
        lab.pod(0).ping(&dst, 50),
        "no ping to {dst}\n{}",
        lab.logs()
    );
    let route = lab.nodes[0].ns.ok(&["ip", "route", "get", &dst]);
    assert!(route.contains("dev weft.vx"), "{route}");

    transfer_beside_the_vxlan_device(&lab, &dst, "5312");
    // ICMP takes the device.
    let before = packets(&lab.nodes[1].ns, "weft.vx");
    assert!(lab.pod(0).ping(&dst, 5));
    assert!(packets(&lab.nodes[1].ns, "weft.vx") > before);
}
