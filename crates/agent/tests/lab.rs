//! weftd end to end, on the real kernel, in a 3-node lab with two underlay segments (see
//! `common`): nodes 1 and 2 share 198.51.100.0/24, node 3 is on 203.0.113.0/24 behind a
//! router; etcd in a store namespace; one pod per node attached by the real `weft` plugin in
//! routed mode. Needs root and `cargo build -p weft-plugin --bin weft` first.
//!
//! - `host_gw_then_vxlan`: host-gw between nodes 1 and 2 (route via the peer's underlay
//!   address), a clean SIGTERM (record gone at once, the peer drops its route, the stopped
//!   node's kernel state kept), then VXLAN on all three
//!   (routes through weft.vx onlink, FDB entries, every pod pair pings, the receiver's VXLAN rx
//!   counter grows).
//! - `hybrid_repairs_and_forgets_a_node`: hybrid (host-gw inside segment A, VXLAN to node 3,
//!   checked by which device carries the traffic), a route, an FDB and a neighbour entry
//!   deleted by hand come back, and a node whose weftd is killed is forgotten by the others
//!   once its lease expires.
mod common;

use std::time::Duration;

use common::{Lab, SEG_A, SEG_B, wait_until};

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

    // A clean stop of node-1's weftd revokes its lease: the record goes at once and node-2
    // drops its route to node-1's pods, while node-1's own kernel state stays (a restart does
    // not flush it).
    let w = lab.nodes[0].weftd.as_mut().unwrap();
    assert!(
        w.terminate(),
        "weftd did not exit cleanly:\n{}",
        w.log_text()
    );
    assert_eq!(lab.etcd_keys("/weft/v1/nodes/").len(), 1);
    let t = wait_until(Duration::from_secs(5), || {
        lab.nodes[1].ns.weft_route(&lab.block(0)).is_none()
    })
    .unwrap_or_else(|| panic!("node-2 kept its route to node-1\n{}", lab.logs()));
    eprintln!("node-2 dropped the cleanly stopped node-1 in {t:?}");
    assert!(lab.nodes[0].ns.weft_route(&lab.block(1)).is_some());
    let w = lab.nodes[1].weftd.as_mut().unwrap();
    assert!(
        w.terminate(),
        "weftd did not exit cleanly:\n{}",
        w.log_text()
    );
    assert!(lab.etcd_keys("/weft/v1/nodes/").is_empty());

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
