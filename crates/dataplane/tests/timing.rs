//! Micro-timing of the CNI ADD hot path, netlink against `ip` commands. Prints, asserts only
//! that the work was done. See the numbers with `cargo test --release --test timing -- --nocapture`.

mod common;

use std::time::{Duration, Instant};

use common::{TestNs, run};
use weft_dataplane::{Netlink, Netns, Route, VethSpec};

const ROUNDS: usize = 20;

fn pod_side(nl: &mut Netlink, i: usize) {
    let lo = nl.link_by_name("lo").unwrap().unwrap().index;
    let eth0 = nl.link_by_name("eth0").unwrap().unwrap().index;
    let gw = Route {
        oif: Some(eth0),
        scope_link: true,
        ..Route::new("198.18.0.1/32".parse().unwrap())
    };
    nl.batch()
        .set_up(lo)
        .set_up(eth0)
        .add_address(
            eth0,
            format!("198.18.1.{}/16", i + 2).parse().unwrap(),
            false,
        )
        .add_address(
            eth0,
            format!("fd00:18::{:x}/64", i + 2).parse().unwrap(),
            true,
        )
        .add_route(&gw)
        .add_route(&Route {
            gateway: Some("198.18.0.1".parse().unwrap()),
            oif: Some(eth0),
            ..Route::new("0.0.0.0/0".parse().unwrap())
        })
        .add_route(&Route {
            gateway: Some("fe80::1".parse().unwrap()),
            oif: Some(eth0),
            ..Route::new("::/0".parse().unwrap())
        })
        .commit()
        .unwrap();
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[test]
fn timing_netlink_vs_ip_commands() {
    let host = TestNs::new("th");
    let mut host_nl = host.netlink();
    let (br, _) = host_nl.ensure_bridge("weftbr0", None).unwrap();

    let (mut veth, mut batch, mut total) = (vec![], vec![], vec![]);
    for i in 0..ROUNDS {
        let pod = TestNs::new("tp");
        let t0 = Instant::now();
        let pod_ns = Netns::open(&pod.path()).unwrap();
        let host_name = format!("veth{i}");
        host_nl
            .create_veth(&VethSpec {
                host_name: &host_name,
                peer_name: "eth0",
                peer_ns: &pod_ns,
                mtu: Some(1500),
                master: Some(br.index),
                host_mac: None,
                peer_mac: None,
                gso_max_size: None,
            })
            .unwrap();
        let t1 = Instant::now();
        let mut pod_nl = Netlink::in_netns(&pod_ns).unwrap();
        pod_side(&mut pod_nl, i);
        let t2 = Instant::now();
        veth.push(t1 - t0);
        batch.push(t2 - t1);
        total.push(t2 - t0);
        let routes = pod.ip_json(&["route", "show", "default"]);
        assert_eq!(routes[0]["gateway"], "198.18.0.1");
    }

    let mut ip_total = vec![];
    for i in 0..ROUNDS {
        let pod = TestNs::new("tq");
        let host_name = format!("vip{i}");
        let t0 = Instant::now();
        let h = |args: &[&str]| {
            let mut a = vec!["-n", &host.name];
            a.extend_from_slice(args);
            run("ip", &a);
        };
        let p = |args: &[&str]| {
            let mut a = vec!["-n", &pod.name];
            a.extend_from_slice(args);
            run("ip", &a);
        };
        h(&[
            "link", "add", &host_name, "mtu", "1500", "master", "weftbr0", "up", "type", "veth",
            "peer", "name", "eth0", "mtu", "1500", "netns", &pod.name,
        ]);
        p(&["link", "set", "lo", "up"]);
        p(&["link", "set", "eth0", "up"]);
        p(&[
            "addr",
            "add",
            &format!("198.18.2.{}/16", i + 2),
            "dev",
            "eth0",
        ]);
        p(&[
            "addr",
            "add",
            &format!("fd00:19::{:x}/64", i + 2),
            "dev",
            "eth0",
            "nodad",
        ]);
        p(&[
            "route",
            "add",
            "198.18.0.1/32",
            "dev",
            "eth0",
            "scope",
            "link",
        ]);
        p(&[
            "route",
            "add",
            "default",
            "via",
            "198.18.0.1",
            "dev",
            "eth0",
        ]);
        p(&[
            "-6", "route", "add", "default", "via", "fe80::1", "dev", "eth0",
        ]);
        ip_total.push(t0.elapsed());
    }

    println!(
        "timing over {ROUNDS} pods (median): create_veth {:?}, pod batch (Netlink::in_netns + 2 \
         lookups + 7 requests) {:?}, total {:?}; same work with 8 `ip` commands {:?}",
        median(veth),
        median(batch),
        median(total),
        median(ip_total)
    );
}
