//! Addresses, routes and pipelined batches, checked with `ip -j`.

mod common;

use std::net::IpAddr;

use common::{TestNs, has_flag};
use ipnet::IpNet;
use serde_json::Value;
use weft_dataplane::{Error, Netlink, Route};

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A veth pair inside `ns`; returns the index of `name` (up).
fn up_veth(ns: &TestNs, nl: &mut Netlink, name: &str) -> u32 {
    let peer = format!("{name}p");
    ns.ip(&["link", "add", name, "type", "veth", "peer", "name", &peer]);
    ns.ip(&["link", "set", &peer, "up"]);
    let index = nl.link_by_name(name).unwrap().unwrap().index;
    nl.set_up(index).unwrap();
    index
}

fn addr_info(ns: &TestNs, dev: &str) -> Vec<Value> {
    let j = ns.ip_json(&["addr", "show", "dev", dev]);
    j[0]["addr_info"].as_array().unwrap().clone()
}

fn find_route<'a>(routes: &'a Value, dst: &str) -> Option<&'a Value> {
    routes.as_array().unwrap().iter().find(|r| r["dst"] == dst)
}

#[test]
fn addresses_v4_and_v6_with_nodad() {
    let ns = TestNs::new("addr");
    let mut nl = ns.netlink();
    let idx = up_veth(&ns, &mut nl, "a0");

    nl.add_address(idx, net("198.18.1.2/24"), false).unwrap();
    nl.add_address(idx, net("fd00:1::2/64"), true).unwrap();
    // Idempotent: adding again is fine.
    nl.add_address(idx, net("198.18.1.2/24"), false).unwrap();
    nl.add_address(idx, net("fd00:1::2/64"), true).unwrap();

    let info = addr_info(&ns, "a0");
    let v4 = info
        .iter()
        .find(|a| a["local"] == "198.18.1.2")
        .expect("v4 address");
    assert_eq!(v4["prefixlen"], 24);
    assert_eq!(v4["broadcast"], "198.18.1.255");
    let v6 = info
        .iter()
        .find(|a| a["local"] == "fd00:1::2")
        .expect("v6 address");
    assert_eq!(v6["prefixlen"], 64);
    assert_eq!(v6["nodad"], true, "{v6}");
    assert!(
        v6.get("tentative").is_none(),
        "nodad address must not be tentative: {v6}"
    );

    let mine = nl.addresses(Some(idx)).unwrap();
    assert!(mine.iter().all(|a| a.index == idx));
    assert!(mine.iter().any(|a| a.net == net("198.18.1.2/24")));
    assert!(mine.iter().any(|a| a.net == net("fd00:1::2/64")));
    let all = nl.addresses(None).unwrap();
    assert!(all.iter().any(|a| a.net == net("127.0.0.1/8")) || all.len() > mine.len());

    nl.delete_address(idx, net("198.18.1.2/24")).unwrap();
    nl.delete_address(idx, net("fd00:1::2/64")).unwrap();
    let info = addr_info(&ns, "a0");
    assert!(!info.iter().any(|a| a["local"] == "198.18.1.2"));
    assert!(!info.iter().any(|a| a["local"] == "fd00:1::2"));
    let err = nl.delete_address(idx, net("198.18.1.2/24")).unwrap_err();
    assert_eq!(err.errno(), Some(libc::EADDRNOTAVAIL), "{err}");
    assert!(err.to_string().contains("198.18.1.2/24"), "{err}");
}

#[test]
fn routes_scope_link_gateway_onlink_host_and_default() {
    let ns = TestNs::new("rt");
    let mut nl = ns.netlink();
    let idx = up_veth(&ns, &mut nl, "r0");
    nl.add_address(idx, net("198.18.1.2/24"), false).unwrap();
    nl.add_address(idx, net("fd00:1::2/64"), true).unwrap();

    let scope_link = Route {
        oif: Some(idx),
        scope_link: true,
        ..Route::new(net("198.18.5.0/24"))
    };
    let via = Route {
        gateway: Some(ip("198.18.1.1")),
        ..Route::new(net("198.18.6.0/24"))
    };
    let host4 = Route {
        oif: Some(idx),
        scope_link: true,
        ..Route::new(net("198.18.7.7/32"))
    };
    let default4 = Route {
        gateway: Some(ip("198.19.255.1")),
        oif: Some(idx),
        onlink: true,
        ..Route::new(net("0.0.0.0/0"))
    };
    let via6 = Route {
        gateway: Some(ip("fd00:1::1")),
        metric: Some(100),
        ..Route::new(net("fd00:5::/64"))
    };
    let host6 = Route {
        oif: Some(idx),
        ..Route::new(net("fd00:7::7/128"))
    };
    let default6 = Route {
        gateway: Some(ip("fe80::1")),
        oif: Some(idx),
        ..Route::new(net("::/0"))
    };
    let all = [scope_link, via, host4, default4, via6, host6, default6];
    for r in &all {
        nl.add_route(r).unwrap();
    }
    // NLM_F_REPLACE: adding the same routes again succeeds.
    for r in &all {
        nl.add_route(r).unwrap();
    }

    let v4 = ns.ip_json(&["route", "show"]);
    let r = find_route(&v4, "198.18.5.0/24").expect("scope link route");
    assert_eq!(r["scope"], "link");
    assert_eq!(r["dev"], "r0");
    assert_eq!(r["protocol"], "87", "{r}");
    let r = find_route(&v4, "198.18.6.0/24").expect("gateway route");
    assert_eq!(r["gateway"], "198.18.1.1");
    let r = find_route(&v4, "198.18.7.7").expect("/32 host route");
    assert_eq!(r["scope"], "link");
    let r = find_route(&v4, "default").expect("v4 default");
    assert_eq!(r["gateway"], "198.19.255.1");
    assert!(has_flag(r, "onlink"), "{r}");

    let v6 = ns.ip_json(&["-6", "route", "show"]);
    let r = find_route(&v6, "fd00:5::/64").expect("v6 gateway route");
    assert_eq!(r["gateway"], "fd00:1::1");
    assert_eq!(r["metric"], 100);
    let r = find_route(&v6, "fd00:7::7").expect("/128 host route");
    assert_eq!(r["dev"], "r0");
    let r = find_route(&v6, "default").expect("v6 default");
    assert_eq!(r["gateway"], "fe80::1");
    assert_eq!(r["dev"], "r0");

    let mine4 = nl.routes(false).unwrap();
    let d4 = mine4.iter().find(|r| r.dst == net("0.0.0.0/0")).unwrap();
    assert!(d4.onlink);
    assert_eq!(d4.oif, Some(idx));
    assert_eq!(d4.gateway, Some(ip("198.19.255.1")));
    let sl = mine4
        .iter()
        .find(|r| r.dst == net("198.18.5.0/24"))
        .unwrap();
    assert!(sl.scope_link);
    assert_eq!(sl.table, 254);
    let mine6 = nl.routes(true).unwrap();
    let d6 = mine6.iter().find(|r| r.dst == net("::/0")).unwrap();
    assert_eq!(d6.gateway, Some(ip("fe80::1")));
    assert_eq!(d6.metric, Some(1024));
    assert!(mine6.iter().any(|r| r.dst == net("fd00:7::7/128")));

    for r in &all {
        nl.delete_route(r).unwrap();
    }
    let v4 = ns.ip_json(&["route", "show"]);
    let v6 = ns.ip_json(&["-6", "route", "show"]);
    for dst in ["198.18.5.0/24", "198.18.6.0/24", "198.18.7.7", "default"] {
        assert!(find_route(&v4, dst).is_none(), "{dst} still there: {v4}");
    }
    for dst in ["fd00:5::/64", "fd00:7::7", "default"] {
        assert!(find_route(&v6, dst).is_none(), "{dst} still there: {v6}");
    }
    assert!(nl.delete_route(&via).unwrap_err().is_not_found());

    let mixed = Route {
        gateway: Some(ip("fd00::1")),
        ..Route::new(net("198.18.9.0/24"))
    };
    assert!(matches!(nl.add_route(&mixed), Err(Error::Invalid(_))));
}

#[test]
fn batch_sets_up_addresses_and_routes_in_one_go() {
    let ns = TestNs::new("bat");
    let mut nl = ns.netlink();
    ns.ip(&["link", "add", "b0", "type", "veth", "peer", "name", "b0p"]);
    ns.ip(&["link", "set", "b0p", "up"]);
    let idx = nl.link_by_name("b0").unwrap().unwrap().index;
    let lo = nl.link_by_name("lo").unwrap().unwrap().index;

    nl.batch()
        .set_up(lo)
        .set_up(idx)
        .add_address(idx, net("198.18.2.2/24"), false)
        .add_address(idx, net("fd00:2::2/64"), true)
        .add_route(&Route {
            oif: Some(idx),
            scope_link: true,
            ..Route::new(net("198.18.0.1/32"))
        })
        .add_route(&Route {
            gateway: Some(ip("198.18.0.1")),
            oif: Some(idx),
            ..Route::new(net("0.0.0.0/0"))
        })
        .add_route(&Route {
            gateway: Some(ip("fe80::1")),
            oif: Some(idx),
            ..Route::new(net("::/0"))
        })
        .commit()
        .unwrap();

    let link = nl.link_by_index(idx).unwrap().unwrap();
    assert!(link.up);
    assert!(nl.link_by_index(lo).unwrap().unwrap().up);
    let info = addr_info(&ns, "b0");
    assert!(info.iter().any(|a| a["local"] == "198.18.2.2"));
    assert!(info.iter().any(|a| a["local"] == "fd00:2::2"));
    let v4 = ns.ip_json(&["route", "show"]);
    assert_eq!(find_route(&v4, "default").unwrap()["gateway"], "198.18.0.1");
    assert_eq!(find_route(&v4, "198.18.0.1").unwrap()["scope"], "link");
    let v6 = ns.ip_json(&["-6", "route", "show"]);
    assert_eq!(find_route(&v6, "default").unwrap()["gateway"], "fe80::1");

    // Empty batch: nothing to do.
    nl.batch().commit().unwrap();
}

#[test]
fn batch_error_names_the_failing_step() {
    let ns = TestNs::new("bae");
    let mut nl = ns.netlink();
    ns.ip(&["link", "add", "e0", "type", "veth", "peer", "name", "e0p"]);
    let idx = nl.link_by_name("e0").unwrap().unwrap().index;

    // Step 3 fails: the gateway is on no connected network and the route is not onlink.
    let err = nl
        .batch()
        .set_up(idx)
        .add_address(idx, net("198.18.3.2/24"), false)
        .add_route(&Route {
            gateway: Some(ip("198.19.9.9")),
            oif: Some(idx),
            ..Route::new(net("198.18.30.0/24"))
        })
        .add_address(idx, net("fd00:3::2/64"), true)
        .commit()
        .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("step 3 of 4"), "{text}");
    assert!(text.contains("198.18.30.0/24 via 198.19.9.9"), "{text}");
    assert_eq!(err.errno(), Some(libc::ENETUNREACH), "{text}");
    println!("batch error reads: {text}");

    // The kernel ran the other steps: it does not stop at a failure.
    let info = addr_info(&ns, "e0");
    assert!(info.iter().any(|a| a["local"] == "198.18.3.2"));
    assert!(info.iter().any(|a| a["local"] == "fd00:3::2"));

    // The socket is still in step after an error.
    assert_eq!(nl.link_by_index(idx).unwrap().unwrap().name, "e0");

    // An error on a nonexistent link: the first failing step wins.
    let err = nl
        .batch()
        .set_up(999_999)
        .add_address(999_998, net("198.18.4.2/24"), false)
        .commit()
        .unwrap_err();
    assert!(err.to_string().contains("step 1 of 2"), "{err}");
    assert!(err.is_not_found(), "{err}");
}
