//! weftd reacting to the kernel and claiming blocks, in the 3-node lab of `common` (needs root
//! and `cargo build -p weft-plugin --bin weft` first).
//!
//! - `kernel_events_repair_at_once`: with the timer at 3 s, a route, an FDB entry, a neighbour
//!   entry and the whole VXLAN device deleted by hand come back in well under 500 ms: the
//!   netlink notification, not the timer, triggers the reconcile; a flushed nftables ruleset
//!   (no netlink notification) still comes back by the timer within 5 s.
//! - `blocks_claimed_at_start`: on a network whose record exists, weftd on nodes without pods
//!   claims a block for its node at start, and the peers route it before any pod exists; the
//!   node's first pod then gets an address of that block.
mod common;

use std::time::{Duration, Instant};

use common::{Lab, SEG_A, SEG_B, wait_fast, wait_until};
use ipnet::IpNet;

const VX: &str = "weft.vx";
/// The timer period in these tests: a repair faster than this came from an event.
const RESYNC: &str = "3000";
/// What "at once" means here.
const PROMPT: Duration = Duration::from_millis(500);

#[test]
fn kernel_events_repair_at_once() {
    let mut lab = Lab::new("e");
    for i in 0..3 {
        lab.add_pod(i);
    }
    lab.start_weftd_with(0, "hybrid", &["--resync-millis", RESYNC, "--masquerade"]);
    for i in 1..3 {
        lab.start_weftd_with(i, "hybrid", &["--resync-millis", RESYNC]);
    }
    let t = lab.wait_converged(Duration::from_secs(10));
    eprintln!("hybrid converged in {t:?}");
    let n1 = &lab.nodes[0].ns;
    let (b2, b3) = (lab.block(1), lab.block(2));
    let seg_a3 = format!("{SEG_A}.3");
    let peer = format!("{SEG_B}.2");
    let mac3 = "0e:57:cb:00:71:02";
    let host_gw_ok = |n: &common::Netns| {
        n.weft_route(&b2)
            .is_some_and(|(gw, dev, _)| gw == seg_a3 && dev == "uplink")
    };
    let vxlan_ok = |n: &common::Netns| {
        n.weft_route(&b3)
            .is_some_and(|(gw, dev, _)| gw == peer && dev == VX)
    };
    assert!(host_gw_ok(n1) && vxlan_ok(n1), "{}", lab.logs());
    // Let the first passes (and the quiet passes their own notifications cause) settle.
    std::thread::sleep(Duration::from_millis(300));

    // What no netlink notification reports, the timer still repairs (within 5 s).
    let t0 = Instant::now();
    n1.ok(&["nft", "flush", "ruleset"]);
    let t = wait_until(Duration::from_secs(5), || {
        n1.exec(&["nft", "list", "table", "inet", "weft"])
            .stdout
            .windows(15)
            .any(|w| w == b"weft masquerade")
    })
    .map(|_| t0.elapsed())
    .unwrap_or_else(|| panic!("masquerade not back within 5 s\n{}", lab.logs()));
    eprintln!("flushed nftables ruleset: repaired in {t:?} (timer {RESYNC} ms)");

    // Timed from just before the deleting command (nsenter and the tool take a few ms too).
    let mut latencies = Vec::new();
    let mut repair = |what: &str, del: &[&str], f: &dyn Fn() -> bool| {
        let t0 = Instant::now();
        n1.ok(del);
        let cmd = t0.elapsed();
        wait_fast(Duration::from_secs(5), f)
            .unwrap_or_else(|| panic!("{what}: not repaired within 5 s\n{}", lab.logs()));
        let t = t0.elapsed();
        eprintln!("{what}: repaired in {t:?} (the deleting command took {cmd:?})");
        latencies.push((what.to_string(), t));
    };

    let (b2s, b3s) = (b2.to_string(), b3.to_string());
    for _ in 0..3 {
        repair(
            "host-gw route deleted",
            &["ip", "route", "del", &b2s],
            &|| host_gw_ok(n1),
        );
        std::thread::sleep(Duration::from_millis(200));
        repair(
            "VXLAN route deleted",
            &["ip", "route", "del", &b3s],
            &|| vxlan_ok(n1),
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    repair(
        "FDB entry deleted",
        &[
            "bridge", "fdb", "del", mac3, "dev", VX, "dst", &peer, "self",
        ],
        &|| n1.fdb(VX).len() == 1,
    );
    repair(
        "neighbour entry deleted",
        &["ip", "neigh", "del", &peer, "dev", VX],
        &|| n1.neighbours(VX).len() == 1,
    );
    repair("VXLAN device deleted", &["ip", "link", "del", VX], &|| {
        !n1.links_named(VX).is_empty()
            && vxlan_ok(n1)
            && n1.fdb(VX) == vec![(mac3.to_string(), peer.clone())]
            && n1.neighbours(VX).len() == 1
    });
    eprintln!("repair latencies (timer {RESYNC} ms): {latencies:?}");
    for (what, t) in &latencies {
        assert!(
            *t < PROMPT,
            "{what}: repaired in {t:?}, not promptly (timer {RESYNC} ms)\n{}",
            lab.logs()
        );
    }
    assert!(lab.pod(0).ping(lab.pod_ip(2), 5), "{}", lab.logs());
    assert!(lab.pod(0).ping(lab.pod_ip(1), 5), "{}", lab.logs());

    // Converged means quiet: the agent's own changes do not make it chase its tail.
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
    // A pass logs its changes when it ends, and the last repair's pass (the VXLAN device made
    // again, then the fast path attached to it and refreshed on the pods) may still be running
    // when its device, FDB entry and neighbour are already there: wait until every agent's
    // log ends with a finished pass before counting.
    let finished = |lab: &Lab| {
        lab.nodes.iter().all(|n| {
            n.weftd.as_ref().is_none_or(|w| {
                w.log_text()
                    .lines()
                    .last()
                    .is_some_and(|l| l.starts_with("weftd: reconciled in"))
            })
        })
    };
    // Best effort: an agent still mid-pass after 5 s is caught by the quiet check below.
    let _ = wait_until(Duration::from_secs(5), || finished(&lab));
    let before = adds(&lab);
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(adds(&lab), before, "not quiet\n{}", lab.logs());
}

fn blocks_of(lab: &Lab, node: &str) -> Vec<IpNet> {
    lab.etcd_list(&weft_ipam::blocks_prefix(&lab.network))
        .into_iter()
        .filter_map(|(_, v)| serde_json::from_slice::<weft_ipam::BlockRecord>(&v).ok())
        .filter(|b| b.node.as_deref() == Some(node))
        .map(|b| b.cidr)
        .collect()
}

#[test]
fn blocks_claimed_at_start() {
    let mut lab = Lab::new("f");
    // The network record comes with the first pod anywhere: node-3's.
    lab.add_pod(2);
    assert!(
        !lab.etcd_keys(&weft_ipam::network_key(&lab.network))
            .is_empty(),
        "no network record"
    );
    assert!(blocks_of(&lab, "node-1").is_empty());
    for i in 0..3 {
        lab.start_weftd(i, "hybrid");
    }
    let mut claimed = Vec::new();
    for i in 0..2 {
        let name = lab.nodes[i].name.clone();
        let t = wait_until(Duration::from_secs(5), || blocks_of(&lab, &name).len() == 1)
            .unwrap_or_else(|| panic!("{name} claimed no block\n{}", lab.logs()));
        let b = blocks_of(&lab, &name)[0];
        eprintln!("{name} claimed {b} in {t:?}");
        claimed.push(b);
    }
    assert_ne!(claimed[0], claimed[1]);
    assert_eq!(blocks_of(&lab, "node-3"), vec![lab.block(2)]);
    // Every node routes the others' blocks, with no pod on nodes 1 and 2.
    let t = wait_until(Duration::from_secs(5), || {
        let all = [claimed[0], claimed[1], lab.block(2)];
        (0..3).all(|i| {
            all.iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .all(|(_, b)| lab.nodes[i].ns.weft_route(b).is_some())
        })
    })
    .unwrap_or_else(|| panic!("the claimed blocks are not routed\n{}", lab.logs()));
    eprintln!("claimed blocks routed everywhere in {t:?}");
    assert!(lab.nodes[0].pod.is_none() && lab.nodes[1].pod.is_none());

    // The first pod of node-1 lands in the block claimed for it, and is reachable at once.
    let ip = lab.add_pod(0);
    assert!(
        claimed[0].contains(&ip.parse::<std::net::IpAddr>().unwrap()),
        "{ip} not in {}",
        claimed[0]
    );
    assert_eq!(blocks_of(&lab, "node-1"), vec![claimed[0]]);
    assert!(lab.pod(2).ping(&ip, 5), "{}", lab.logs());

    // A restart claims nothing more.
    lab.nodes[0].weftd.as_mut().unwrap().kill();
    lab.start_weftd(0, "hybrid");
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(
        blocks_of(&lab, "node-1"),
        vec![claimed[0]],
        "{}",
        lab.logs()
    );
}
