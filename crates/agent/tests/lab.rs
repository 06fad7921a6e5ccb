//! weftd end to end, on the real kernel, in a 3-node lab with two underlay segments (see
//! `common`): nodes 1 and 2 share 198.51.100.0/24, node 3 is on 203.0.113.0/24 behind a
//! router; etcd in a store namespace; one pod per node attached by the real `weft` plugin in
//! routed mode. Needs root and `cargo build -p weft-plugin --bin weft` first.
//!
//! - `host_gw_then_vxlan`: host-gw between nodes 1 and 2 (route via the peer's underlay
//!   address), a clean SIGTERM (record and kernel state kept; the peer drops its route once
//!   the lease expires), then VXLAN on all three
//!   (routes through weft.vx onlink, FDB entries, every pod pair pings, the receiver's VXLAN rx
//!   counter grows).
//! - `hybrid_repairs_and_forgets_a_node`: hybrid (host-gw inside segment A, VXLAN to node 3,
//!   checked by which device carries the traffic), a route, an FDB and a neighbour entry
//!   deleted by hand come back, and a node whose weftd is killed is forgotten by the others
//!   once its lease expires.
mod common;

use std::time::Duration;

use common::{Lab, POOL, POOL6, SEG_A, SEG_A6, SEG_B, WORLD, wait_until};
use ipnet::IpNet;

const VX: &str = "weft.vx";

fn ping_ok(lab: &Lab, from: usize, to: usize) {
    assert!(
        lab.pod(from).ping(lab.pod_ip(to), 5),
        "pod on {} cannot ping pod {} on {}\n{}",
        lab.nodes[from].name,
        lab.pod_ip(to),
        lab.nodes[to].name,
        lab.logs()
    );
}

#[test]
fn host_gw_then_vxlan() {
    let mut lab = Lab::new("a");
    for i in 0..3 {
        lab.add_pod(i);
    }

    // host-gw between the two nodes of segment A.
    lab.start_weftd(0, "host-gw");
    lab.start_weftd(1, "host-gw");
    let t = lab.wait_converged(Duration::from_secs(10));
    eprintln!("host-gw converged in {t:?}");
    let (gw, dev, _) = lab.nodes[0].ns.weft_route(&lab.block(1)).unwrap();
    assert_eq!(
        (gw.as_str(), dev.as_str()),
        (&*format!("{SEG_A}.3"), "uplink")
    );
    let (gw, dev, _) = lab.nodes[1].ns.weft_route(&lab.block(0)).unwrap();
    assert_eq!(
        (gw.as_str(), dev.as_str()),
        (&*format!("{SEG_A}.2"), "uplink")
    );
    ping_ok(&lab, 0, 1);
    ping_ok(&lab, 1, 0);
    assert!(
        lab.nodes[0].ns.links_named(VX).is_empty(),
        "host-gw made a VXLAN device"
    );

    // A clean stop of node-1's weftd touches nothing: its record stays on its lease and its
    // kernel state stays; once the lease (2 s) expires node-2 drops its route to node-1's pods.
    let w = lab.nodes[0].weftd.as_mut().unwrap();
    assert!(
        w.terminate(),
        "weftd did not exit cleanly:\n{}",
        w.log_text()
    );
    assert_eq!(lab.etcd_keys("/weft/v1/nodes/").len(), 2);
    assert!(lab.nodes[1].ns.weft_route(&lab.block(0)).is_some());
    let t = wait_until(Duration::from_secs(8), || {
        lab.nodes[1].ns.weft_route(&lab.block(0)).is_none()
    })
    .unwrap_or_else(|| panic!("node-2 kept its route to node-1\n{}", lab.logs()));
    eprintln!("node-2 dropped the stopped node-1 (lease expiry) in {t:?}");
    assert!(lab.nodes[0].ns.weft_route(&lab.block(1)).is_some());
    let w = lab.nodes[1].weftd.as_mut().unwrap();
    assert!(
        w.terminate(),
        "weftd did not exit cleanly:\n{}",
        w.log_text()
    );

    // VXLAN on all three nodes: the host-gw routes are replaced by routes through the tunnel.
    for i in 0..3 {
        lab.start_weftd(i, "vxlan");
    }
    let t = lab.wait_converged(Duration::from_secs(10));
    eprintln!("vxlan converged in {t:?}");
    let records = lab.etcd_keys("/weft/v1/nodes/");
    assert_eq!(records.len(), 3, "{records:?}");
    for (i, j) in [(0, 1), (0, 2), (2, 0), (1, 2)] {
        let peer = &lab.nodes[j].underlay_ip;
        let r = wait_until(Duration::from_secs(5), || {
            lab.nodes[i]
                .ns
                .weft_route(&lab.block(j))
                .is_some_and(|(gw, dev, _)| &gw == peer && dev == VX)
        });
        assert!(
            r.is_some(),
            "{}: route to {} not via {peer} dev {VX}: {:?}",
            lab.nodes[i].name,
            lab.block(j),
            lab.nodes[i].ns.weft_route(&lab.block(j))
        );
        let (_, _, flags) = lab.nodes[i].ns.weft_route(&lab.block(j)).unwrap();
        assert!(flags.iter().any(|f| f == "onlink"), "{flags:?}");
    }
    let fdb = lab.nodes[0].ns.fdb(VX);
    assert!(
        fdb.contains(&("0e:57:cb:00:71:02".into(), format!("{SEG_B}.2"))),
        "{fdb:?}"
    );
    assert_eq!(fdb.len(), 2, "{fdb:?}");
    let neigh = lab.nodes[0].ns.neighbours(VX);
    assert!(
        neigh.contains(&(format!("{SEG_B}.2"), "0e:57:cb:00:71:02".into())),
        "{neigh:?}"
    );
    let rx3 = lab.nodes[2].ns.rx_packets(VX);
    for i in 0..3 {
        for j in 0..3 {
            if i != j {
                ping_ok(&lab, i, j);
            }
        }
    }
    assert!(
        lab.nodes[2].ns.rx_packets(VX) > rx3,
        "node-3's {VX} received nothing"
    );
}

#[test]
fn hybrid_repairs_and_forgets_a_node() {
    let mut lab = Lab::new("b");
    for i in 0..3 {
        lab.add_pod(i);
    }
    for i in 0..3 {
        lab.start_weftd(i, "hybrid");
    }
    let t = lab.wait_converged(Duration::from_secs(10));
    eprintln!("hybrid converged in {t:?}");

    // Same segment: host-gw; across: VXLAN.
    let n1 = &lab.nodes[0].ns;
    let (gw, dev, _) = n1.weft_route(&lab.block(1)).unwrap();
    assert_eq!(
        (gw.as_str(), dev.as_str()),
        (&*format!("{SEG_A}.3"), "uplink")
    );
    let (gw, dev, flags) = n1.weft_route(&lab.block(2)).unwrap();
    assert_eq!((gw.as_str(), dev.as_str()), (&*format!("{SEG_B}.2"), VX));
    assert!(flags.iter().any(|f| f == "onlink"), "{flags:?}");
    assert_eq!(
        n1.fdb(VX),
        vec![("0e:57:cb:00:71:02".into(), format!("{SEG_B}.2"))]
    );

    // Which device carries the traffic: node-2's tunnel sees nothing of 1 -> 2, node-3's
    // tunnel receives 1 -> 3.
    let (rx2, rx3) = (
        lab.nodes[1].ns.rx_packets(VX),
        lab.nodes[2].ns.rx_packets(VX),
    );
    ping_ok(&lab, 0, 1);
    ping_ok(&lab, 1, 0);
    assert_eq!(
        lab.nodes[1].ns.rx_packets(VX),
        rx2,
        "1 -> 2 went through VXLAN"
    );
    ping_ok(&lab, 0, 2);
    ping_ok(&lab, 2, 1);
    assert!(
        lab.nodes[2].ns.rx_packets(VX) > rx3,
        "1 -> 3 did not arrive by VXLAN"
    );

    // Converged means quiet: timer passes (every 500 ms here) change nothing.
    let adds = |lab: &Lab| -> usize {
        lab.nodes
            .iter()
            .map(|n| {
                n.weftd
                    .as_ref()
                    .map_or(0, |w| w.log_text().matches("weftd: added").count())
            })
            .sum()
    };
    let before = adds(&lab);
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(
        adds(&lab),
        before,
        "reconcile is not idempotent\n{}",
        lab.logs()
    );

    // Deleted by hand, back within 5 s: a route, an FDB entry, a neighbour entry.
    let b3 = lab.block(2).to_string();
    n1.ok(&["ip", "route", "del", &b3]);
    let t = wait_until(Duration::from_secs(5), || {
        n1.weft_route(&lab.block(2)).is_some()
    })
    .unwrap_or_else(|| panic!("route {b3} did not come back\n{}", lab.logs()));
    eprintln!("deleted route back in {t:?}");
    let peer = format!("{SEG_B}.2");
    n1.ok(&[
        "bridge",
        "fdb",
        "del",
        "0e:57:cb:00:71:02",
        "dev",
        VX,
        "dst",
        &peer,
        "self",
    ]);
    let t = wait_until(Duration::from_secs(5), || n1.fdb(VX).len() == 1)
        .unwrap_or_else(|| panic!("fdb entry did not come back\n{}", lab.logs()));
    eprintln!("deleted fdb entry back in {t:?}");
    n1.ok(&["ip", "neigh", "del", &peer, "dev", VX]);
    let t = wait_until(Duration::from_secs(5), || n1.neighbours(VX).len() == 1)
        .unwrap_or_else(|| panic!("neighbour entry did not come back\n{}", lab.logs()));
    eprintln!("deleted neighbour back in {t:?}");
    ping_ok(&lab, 0, 2);

    // node-3's weftd dies: once its lease (2 s) expires, the others forget it.
    lab.nodes[2].weftd.as_mut().unwrap().kill();
    let t = wait_until(Duration::from_secs(10), || {
        lab.nodes[..2]
            .iter()
            .all(|n| n.ns.weft_route(&lab.block(2)).is_none())
            && lab.nodes[0].ns.fdb(VX).is_empty()
            && lab.nodes[0].ns.neighbours(VX).is_empty()
    })
    .unwrap_or_else(|| panic!("node-3 not forgotten\n{}", lab.logs()));
    eprintln!("dead node forgotten in {t:?}");
    assert_eq!(lab.etcd_keys("/weft/v1/nodes/").len(), 2);
    // The rest still works.
    assert!(lab.nodes[0].ns.weft_route(&lab.block(1)).is_some());
    ping_ok(&lab, 0, 1);
}

fn terminate(lab: &mut Lab, i: usize) {
    let w = lab.nodes[i].weftd.as_mut().unwrap();
    assert!(
        w.terminate(),
        "weftd did not exit cleanly:\n{}",
        w.log_text()
    );
}

/// Hybrid lab: weftd restarted under continuous ping, a borrowed address routed as a /32, and
/// masquerade towards the world (node-1 only) with real sources between pods.
#[test]
fn restart_borrowed_and_masquerade() {
    let mut lab = Lab::new("c");
    for i in 0..3 {
        lab.add_pod(i);
    }
    lab.start_weftd_with(0, "hybrid", &["--masquerade"]);
    lab.start_weftd(1, "hybrid");
    lab.start_weftd(2, "hybrid");
    let t = lab.wait_converged(Duration::from_secs(10));
    eprintln!("hybrid converged in {t:?}");

    // Restart node-1's weftd under ping (host-gw to node-2, VXLAN to node-3): at most one
    // lost ping; the old lease's expiry (2 s) later deletes nothing.
    let p12 = lab.pod(0).ping_background(lab.pod_ip(1), 30);
    let p31 = lab.pod(2).ping_background(lab.pod_ip(0), 30);
    std::thread::sleep(Duration::from_millis(1000));
    terminate(&mut lab, 0);
    lab.start_weftd_with(0, "hybrid", &["--masquerade"]);
    for (what, p) in [("1 -> 2", p12), ("3 -> 1", p31)] {
        let (tx, rx, out) = p.received();
        eprintln!("ping {what} across the restart: {rx}/{tx} replies");
        assert!(
            tx >= 25 && tx - rx <= 1,
            "ping {what}: {out}\n{}",
            lab.logs()
        );
    }
    assert_eq!(lab.etcd_keys("/weft/v1/nodes/").len(), 3);
    for j in 1..3 {
        assert!(
            lab.nodes[j].ns.weft_route(&lab.block(0)).is_some(),
            "{} lost its route to node-1 after the restart\n{}",
            lab.nodes[j].name,
            lab.logs()
        );
    }

    // A borrowed address: a pod on node-2 with an address of node-1's block.
    let b1 = lab.block(0);
    let moved = weft_ipam::ip_add(b1.network(), 20);
    let (k, ips) = lab.add_pod_with(1, "moved", Some(&format!("IP={moved}")));
    assert_eq!(ips[0], moved.to_string());
    let host = IpNet::from(moved);
    let seg_a3 = format!("{SEG_A}.3");
    let t = wait_until(Duration::from_secs(5), || {
        lab.nodes[0].ns.weft_route(&host) == Some((seg_a3.clone(), "uplink".into(), vec![]))
            && lab.nodes[2]
                .ns
                .weft_route(&host)
                .is_some_and(|(gw, dev, _)| gw == seg_a3 && dev == VX)
    })
    .unwrap_or_else(|| {
        panic!(
            "no /32 to {moved} via node-2: {:?} {:?}\n{}",
            lab.nodes[0].ns.weft_route(&host),
            lab.nodes[2].ns.weft_route(&host),
            lab.logs()
        )
    });
    eprintln!("borrowed {moved} routed in {t:?}");
    assert!(lab.nodes[1].ns.weft_route(&host).is_none());
    assert!(
        lab.nodes[2].ns.weft_route(&b1).is_some(),
        "block route gone"
    );
    let moved = moved.to_string();
    assert!(
        lab.pod(2).ping(&moved, 5),
        "node-3 pod -> {moved}\n{}",
        lab.logs()
    );
    assert!(
        lab.pod(0).ping(&moved, 5),
        "node-1 pod -> {moved}\n{}",
        lab.logs()
    );
    let _ = &lab.extra_pods[k];

    // Masquerade: node-1's pod reaches the world (which has no route to pods) as node-1.
    let world = &lab.world;
    let n1 = format!("{SEG_A}.2");
    world.count_echo_from(&n1);
    assert!(
        lab.pod(0).ping(WORLD, 5),
        "node-1 pod -> world\n{}",
        lab.logs()
    );
    assert!(
        world.echo_count(&n1) >= 1,
        "the world did not see node-1's address"
    );
    // node-2 does not masquerade (no --masquerade): its pod cannot get an answer.
    assert!(
        !lab.pod(1).ping(WORLD, 1),
        "node-2 pod reached the world un-NATed?"
    );
    // Between pods the real source stays (host-gw and VXLAN).
    let (p1, p3) = (lab.pod_ip(0).to_string(), lab.pod_ip(2).to_string());
    lab.pod(1).count_echo_from(&p1);
    lab.pod(0).count_echo_from(&p3);
    ping_ok(&lab, 0, 1);
    ping_ok(&lab, 2, 0);
    assert!(
        lab.pod(1).echo_count(&p1) >= 1,
        "node-2's pod did not see node-1's pod's address"
    );
    assert!(
        lab.pod(0).echo_count(&p3) >= 1,
        "node-1's pod did not see node-3's pod's address"
    );

    // A flushed ruleset comes back within 5 s.
    let ns1 = &lab.nodes[0].ns;
    ns1.ok(&["nft", "flush", "ruleset"]);
    let t = wait_until(Duration::from_secs(5), || {
        ns1.exec(&["nft", "list", "table", "inet", "weft"])
            .stdout
            .windows(15)
            .any(|w| w == b"weft masquerade")
    })
    .unwrap_or_else(|| panic!("masquerade not back\n{}", lab.logs()));
    eprintln!("flushed masquerade back in {t:?}");
    let sets = ns1.ok(&["nft", "list", "set", "inet", "weft", "pods4"]);
    assert!(sets.contains(POOL), "{sets}");
    assert!(lab.pod(0).ping(WORLD, 5), "node-1 pod -> world after flush");
}

/// Dual-stack pods: IPv6 blocks over host-gw (IPv6 underlay on segment A), then over VXLAN
/// (IPv6 inner routes via the peer VTEP's link-local over the IPv4 underlay).
#[test]
fn dual_stack_host_gw_then_vxlan() {
    let mut lab = Lab::new("d");
    lab.pools = vec![POOL.into(), POOL6.into()];
    lab.add_v6_underlay();
    for i in 0..3 {
        lab.add_pod(i);
    }
    let v6: Vec<String> = (0..3)
        .map(|i| {
            lab.pod_ips(i)
                .into_iter()
                .find(|a| a.contains(':'))
                .expect("an IPv6 address")
        })
        .collect();
    let block6 = |i: usize| IpNet::new(v6[i].parse().unwrap(), 122).unwrap().trunc();
    let ping6 = |lab: &Lab, from: usize, to: usize| {
        assert!(
            lab.pod(from).ping(&v6[to], 5),
            "pod on node-{} cannot ping {}\n{}",
            from + 1,
            v6[to],
            lab.logs()
        );
    };

    lab.start_weftd(0, "host-gw");
    lab.start_weftd(1, "host-gw");
    lab.wait_converged(Duration::from_secs(10));
    let want = (format!("{SEG_A6}::3"), "uplink".to_string());
    let t = wait_until(Duration::from_secs(5), || {
        lab.nodes[0]
            .ns
            .weft_route(&block6(1))
            .is_some_and(|(gw, dev, _)| (gw, dev) == want)
    })
    .unwrap_or_else(|| {
        panic!(
            "no IPv6 host-gw route: {:?}\n{}",
            lab.nodes[0].ns.weft_route(&block6(1)),
            lab.logs()
        )
    });
    eprintln!("IPv6 host-gw route in {t:?}");
    ping6(&lab, 0, 1);
    ping6(&lab, 1, 0);
    terminate(&mut lab, 0);
    terminate(&mut lab, 1);

    for i in 0..3 {
        lab.start_weftd(i, "vxlan");
    }
    let t = wait_until(Duration::from_secs(10), || {
        (0..3).all(|i| {
            (0..3).filter(|&j| j != i).all(|j| {
                lab.nodes[i]
                    .ns
                    .weft_route(&block6(j))
                    .is_some_and(|(gw, dev, _)| gw.starts_with("fe80:") && dev == VX)
            })
        })
    })
    .unwrap_or_else(|| panic!("IPv6 VXLAN routes missing\n{}", lab.logs()));
    eprintln!("IPv6 over VXLAN converged in {t:?}");
    let neigh = lab.nodes[0].ns.neighbours(VX);
    assert!(
        neigh
            .iter()
            .any(|(ip, mac)| ip.starts_with("fe80:") && mac == "0e:57:cb:00:71:02"),
        "{neigh:?}"
    );
    let rx3 = lab.nodes[2].ns.rx_packets(VX);
    for (i, j) in [(0, 2), (2, 1), (1, 0)] {
        ping6(&lab, i, j);
        ping_ok(&lab, i, j);
    }
    assert!(lab.nodes[2].ns.rx_packets(VX) > rx3);
}
