//! The node agent's kernel objects, on the real kernel in throwaway namespaces: the VXLAN
//! device (created, kept, fixed in place, recreated, a foreign link refused), FDB and
//! neighbour entries (replace, dump, delete, delete again), Weft's routes by protocol, and the
//! event watcher telling Weft's objects from others. Checked with `ip -j` and `bridge -j`.

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::mpsc;
use std::time::Duration;

use common::{TestNs, has_flag};
use ipnet::IpNet;
use serde_json::Value;
use weft_dataplane::netlink::events::{Interest, Watcher};
use weft_dataplane::netlink::vxlan::{Ensured, vtep_mac};
use weft_dataplane::{Error, FdbEntry, Netlink, RTPROT_WEFT, Route, VxlanSpec};

const LOCAL: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

/// An underlay `ul0` (a veth, up, 198.51.100.2/24, mtu 1500); its index.
fn underlay(ns: &TestNs, nl: &mut Netlink) -> u32 {
    ns.ip(&[
        "link", "add", "ul0", "mtu", "1500", "type", "veth", "peer", "name", "ul0p",
    ]);
    ns.ip(&["link", "set", "ul0p", "up"]);
    ns.ip(&["link", "set", "ul0", "up"]);
    ns.ip(&["addr", "add", "198.51.100.2/24", "dev", "ul0"]);
    nl.link_by_name("ul0").unwrap().unwrap().index
}

fn spec(underlay_index: u32) -> VxlanSpec {
    VxlanSpec {
        name: "vx0".into(),
        vni: 42,
        local: LOCAL,
        port: 4789,
        underlay_index,
        mtu: 1450,
        mac: vtep_mac(LOCAL),
    }
}

fn vxlan_json(ns: &TestNs) -> Value {
    ns.ip_link("vx0").expect("vx0 exists")
}

#[test]
fn vxlan_device_created_kept_fixed_recreated() {
    let ns = TestNs::new("vx");
    let mut nl = ns.netlink();
    let ul = underlay(&ns, &mut nl);
    let want = spec(ul);

    let (index, what) = nl.ensure_vxlan(&want).unwrap();
    assert_eq!(what, Ensured::Created);
    let j = vxlan_json(&ns);
    assert_eq!(j["ifindex"], index);
    assert_eq!(j["mtu"], 1450);
    assert_eq!(j["address"], "0e:57:c6:33:64:02");
    assert!(has_flag(&j, "UP"), "{j}");
    let data = &j["linkinfo"]["info_data"];
    assert_eq!(j["linkinfo"]["info_kind"], "vxlan");
    assert_eq!(data["id"], 42);
    assert_eq!(data["local"], "198.51.100.2");
    assert_eq!(data["port"], 4789);
    assert_eq!(data["learning"], false, "{data}");
    assert_eq!(data["link"], "ul0");

    // The dataplane's own view of it.
    let link = nl.link_by_name("vx0").unwrap().unwrap();
    let info = link.vxlan.expect("vxlan info");
    assert_eq!(
        (info.vni, info.local, info.port, info.learning),
        (Some(42), Some(LOCAL), Some(4789), Some(false))
    );
    assert_eq!(nl.link_by_name("ul0").unwrap().unwrap().vxlan, None);

    assert_eq!(nl.ensure_vxlan(&want).unwrap(), (index, Ensured::Unchanged));

    // MTU and up state are fixed in place: same index.
    ns.ip(&["link", "set", "vx0", "down", "mtu", "1400"]);
    assert_eq!(nl.ensure_vxlan(&want).unwrap(), (index, Ensured::Fixed));
    let j = vxlan_json(&ns);
    assert_eq!(j["mtu"], 1450);
    assert!(has_flag(&j, "UP"), "{j}");

    // Another identity (VNI, learning) means a new device.
    ns.ip(&["link", "del", "vx0"]);
    ns.ip(&[
        "link",
        "add",
        "vx0",
        "type",
        "vxlan",
        "id",
        "43",
        "local",
        "198.51.100.2",
        "dstport",
        "4789",
        "dev",
        "ul0",
    ]);
    let (new_index, what) = nl.ensure_vxlan(&want).unwrap();
    assert_eq!(what, Ensured::Recreated);
    let j = vxlan_json(&ns);
    assert_eq!(j["ifindex"], new_index);
    assert_eq!(j["linkinfo"]["info_data"]["id"], 42);
    assert_eq!(j["linkinfo"]["info_data"]["learning"], false);
    assert_eq!(j["address"], "0e:57:c6:33:64:02");

    // A link of that name that is not VXLAN is refused and left alone.
    ns.ip(&["link", "add", "vx1", "type", "bridge"]);
    let other = VxlanSpec {
        name: "vx1".into(),
        ..want.clone()
    };
    let err = nl.ensure_vxlan(&other).unwrap_err();
    assert!(matches!(err, Error::Conflict { .. }), "{err}");
    assert!(err.to_string().contains("bridge"), "{err}");
    assert!(err.to_string().contains("vx1"), "{err}");
    assert_eq!(
        ns.ip_link("vx1").unwrap()["linkinfo"]["info_kind"],
        "bridge"
    );
}

#[test]
fn fdb_and_neighbour_entries() {
    let ns = TestNs::new("fdb");
    let mut nl = ns.netlink();
    let ul = underlay(&ns, &mut nl);
    let (vx, _) = nl.ensure_vxlan(&spec(ul)).unwrap();
    let mac = [0x0e, 0x57, 0xc6, 0x33, 0x64, 0x03];
    let e = FdbEntry {
        mac,
        dst: ip("198.51.100.3"),
    };

    nl.batch()
        .replace_fdb(vx, &e)
        .replace_neighbour(vx, ip("198.18.0.1"), mac)
        .replace_neighbour(vx, ip("fe80::c57:c6ff:fe33:6403"), mac)
        .commit()
        .unwrap();
    // Replacing again is harmless.
    nl.batch()
        .replace_fdb(vx, &e)
        .replace_neighbour(vx, ip("198.18.0.1"), mac)
        .commit()
        .unwrap();

    assert_eq!(nl.fdb_entries(vx).unwrap(), vec![e]);
    let fdb = common::run(
        "bridge",
        &["-n", &ns.name, "-j", "fdb", "show", "dev", "vx0"],
    );
    let fdb: Value = serde_json::from_str(&fdb).unwrap();
    let entry = fdb
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["mac"] == "0e:57:c6:33:64:03")
        .unwrap_or_else(|| panic!("no fdb entry in {fdb}"));
    assert_eq!(entry["dst"], "198.51.100.3");
    assert_eq!(entry["state"], "permanent");
    assert!(has_flag(entry, "self"), "{entry}");

    let v4 = nl.neighbours(vx, false).unwrap();
    assert_eq!(v4.len(), 1, "{v4:?}");
    assert_eq!(
        (v4[0].ip, v4[0].mac, v4[0].permanent),
        (ip("198.18.0.1"), Some(mac), true)
    );
    let v6 = nl.neighbours(vx, true).unwrap();
    assert!(
        v6.iter()
            .any(|n| n.ip == ip("fe80::c57:c6ff:fe33:6403") && n.mac == Some(mac) && n.permanent),
        "{v6:?}"
    );
    let j = ns.ip_json(&["neigh", "show", "dev", "vx0", "to", "198.18.0.1"]);
    assert_eq!(j[0]["lladdr"], "0e:57:c6:33:64:03");
    assert!(j[0]["state"].to_string().contains("PERMANENT"), "{j}");
    // Neither dump reports another device's entries.
    assert!(nl.fdb_entries(ul).unwrap().is_empty());
    assert!(nl.neighbours(ul, false).unwrap().is_empty());

    // A new remote for the MAC replaces the old one.
    let moved = FdbEntry {
        mac,
        dst: ip("198.51.100.4"),
    };
    nl.replace_fdb(vx, &moved).unwrap();
    assert_eq!(nl.fdb_entries(vx).unwrap(), vec![moved]);

    // Deleting, and deleting what is already gone, both succeed.
    for _ in 0..2 {
        nl.batch()
            .delete_fdb(vx, &moved)
            .delete_neighbour(vx, ip("198.18.0.1"))
            .delete_neighbour(vx, ip("fe80::c57:c6ff:fe33:6403"))
            .commit()
            .unwrap();
    }
    nl.delete_fdb(vx, &moved).unwrap();
    nl.delete_neighbour(vx, ip("198.18.0.1")).unwrap();
    assert!(nl.fdb_entries(vx).unwrap().is_empty());
    assert!(nl.neighbours(vx, false).unwrap().is_empty());
    assert!(
        ns.ip_json(&["neigh", "show", "dev", "vx0"])
            .as_array()
            .unwrap()
            .is_empty()
    );

    // A real failure still fails, naming the request.
    let err = nl
        .replace_neighbour(9999, ip("198.18.0.1"), mac)
        .unwrap_err();
    assert_eq!(err.errno(), Some(libc::ENODEV), "{err}");
    assert!(
        err.to_string().contains("add neighbour 198.18.0.1"),
        "{err}"
    );
}

#[test]
fn weft_routes_by_protocol() {
    let ns = TestNs::new("proto");
    let mut nl = ns.netlink();
    let ul = underlay(&ns, &mut nl);
    ns.ip(&["addr", "add", "fd00:51::2/64", "dev", "ul0", "nodad"]);

    let peer = Route {
        gateway: Some(ip("198.51.100.3")),
        oif: Some(ul),
        ..Route::new(net("198.18.0.64/26"))
    };
    let pod = Route {
        oif: Some(ul),
        scope_link: true,
        ..Route::new(net("198.18.0.5/32"))
    };
    let peer6 = Route {
        gateway: Some(ip("fd00:51::3")),
        oif: Some(ul),
        ..Route::new(net("fd00:18::40/122"))
    };
    nl.batch()
        .add_route(&peer)
        .add_route(&pod)
        .add_route(&peer6)
        .commit()
        .unwrap();
    // Someone else's routes, in the same table.
    ns.ip(&[
        "route",
        "add",
        "198.18.1.0/24",
        "via",
        "198.51.100.9",
        "proto",
        "static",
    ]);
    ns.ip(&[
        "route",
        "add",
        "fd00:19::/64",
        "via",
        "fd00:51::9",
        "proto",
        "static",
    ]);

    let mut v4 = nl.weft_routes(false).unwrap();
    v4.sort();
    assert_eq!(v4, vec![pod, peer], "only protocol {RTPROT_WEFT}");
    let v6 = nl.weft_routes(true).unwrap();
    assert_eq!(v6.len(), 1, "{v6:?}");
    assert_eq!(
        (v6[0].dst, v6[0].gateway, v6[0].oif, v6[0].metric),
        (peer6.dst, peer6.gateway, Some(ul), Some(1024))
    );
    // All routes still lists the others.
    assert!(
        nl.routes(false)
            .unwrap()
            .iter()
            .any(|r| r.dst == net("198.18.1.0/24"))
    );
    let shown = ns.ip_json(&["route", "show", "proto", "87"]);
    assert_eq!(shown.as_array().unwrap().len(), 2, "{shown}");

    // "If present": deleting twice succeeds; the strict delete reports the missing route.
    for _ in 0..2 {
        nl.batch()
            .delete_route_if_present(&peer)
            .delete_route_if_present(&peer6)
            .commit()
            .unwrap();
    }
    assert!(nl.delete_route(&peer).unwrap_err().is_gone());
    assert_eq!(nl.weft_routes(false).unwrap(), vec![pod]);
    assert!(nl.weft_routes(true).unwrap().is_empty());
}

/// The watcher in a thread: every `wait` result, in order.
fn watch(ns: &TestNs, interest: Interest) -> mpsc::Receiver<bool> {
    let mut w = ns
        .netns()
        .run_in(|| Watcher::open(interest))
        .unwrap()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    // The thread blocks in recv until the test process ends.
    std::thread::spawn(move || {
        while let Ok(touched) = w.wait() {
            if tx.send(touched).is_err() {
                return;
            }
        }
    });
    rx
}

/// Whether any datagram within `window` touched Weft's objects.
fn touched_within(rx: &mpsc::Receiver<bool>, window: Duration) -> bool {
    let deadline = std::time::Instant::now() + window;
    while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(true) => return true,
            Ok(false) => {}
            Err(_) => return false,
        }
    }
    false
}

#[test]
fn events_tell_weft_objects_from_others() {
    let ns = TestNs::new("ev");
    let mut nl = ns.netlink();
    let ul = underlay(&ns, &mut nl);
    let (vx, _) = nl.ensure_vxlan(&spec(ul)).unwrap();
    ns.ip(&[
        "link", "add", "other0", "type", "veth", "peer", "name", "other0p",
    ]);
    ns.ip(&["link", "set", "other0", "up"]);
    let rx = watch(
        &ns,
        Interest {
            vxlan_name: Some("vx0".into()),
            vxlan_index: Some(vx),
            underlay_index: ul,
        },
    );
    let quiet = Duration::from_millis(300);
    let soon = Duration::from_secs(2);

    // Not ours: another link, its neighbours, routes of another protocol, the plugin's pod
    // routes (protocol 87 without a gateway).
    ns.ip(&["link", "set", "other0", "mtu", "1400"]);
    ns.ip(&[
        "neigh",
        "add",
        "198.18.9.9",
        "lladdr",
        "02:00:00:00:00:09",
        "dev",
        "other0",
    ]);
    ns.ip(&[
        "route",
        "add",
        "198.18.1.0/24",
        "via",
        "198.51.100.9",
        "proto",
        "static",
    ]);
    let pod = Route {
        oif: Some(ul),
        scope_link: true,
        ..Route::new(net("198.18.0.5/32"))
    };
    nl.add_route(&pod).unwrap();
    assert!(!touched_within(&rx, quiet), "none of these is Weft's");

    // Ours: an agent route, an FDB entry on the device, the underlay link, the device itself.
    let peer = Route {
        gateway: Some(ip("198.51.100.3")),
        oif: Some(ul),
        ..Route::new(net("198.18.0.64/26"))
    };
    nl.add_route(&peer).unwrap();
    assert!(touched_within(&rx, soon), "agent route added");
    ns.ip(&["route", "del", "198.18.0.64/26"]);
    assert!(touched_within(&rx, soon), "agent route deleted");
    nl.replace_fdb(
        vx,
        &FdbEntry {
            mac: [0x0e, 0x57, 0, 0, 0, 3],
            dst: ip("198.51.100.3"),
        },
    )
    .unwrap();
    assert!(touched_within(&rx, soon), "fdb entry on the device");
    ns.ip(&["link", "set", "ul0", "mtu", "1480"]);
    assert!(touched_within(&rx, soon), "underlay changed");
    ns.ip(&["link", "del", "vx0"]);
    assert!(touched_within(&rx, soon), "device deleted");

    // The recreated device (a new index) is followed by name.
    let (vx2, _) = nl.ensure_vxlan(&spec(ul)).unwrap();
    assert_ne!(vx2, vx);
    assert!(touched_within(&rx, soon), "device created");
    while rx.recv_timeout(quiet).is_ok() {} // the rest of the burst
    nl.replace_neighbour(vx2, ip("198.18.0.1"), [0x0e, 0x57, 0, 0, 0, 3])
        .unwrap();
    assert!(touched_within(&rx, soon), "neighbour on the new device");
    while rx.recv_timeout(quiet).is_ok() {}
    ns.ip(&[
        "neigh",
        "add",
        "198.18.9.8",
        "lladdr",
        "02:00:00:00:00:08",
        "dev",
        "other0",
    ]);
    assert!(
        !touched_within(&rx, quiet),
        "other0's neighbour is still not ours"
    );
}
