//! Bridges, veth pairs, master, hairpin, alias, deletion: in fresh namespaces, checked with `ip -j`.

mod common;

use common::{TestNs, has_flag};
use weft_dataplane::{Error, VethSpec};

#[test]
fn bridge_is_created_once_then_found() {
    let ns = TestNs::new("br");
    let mut nl = ns.netlink();

    let (br, created) = nl.ensure_bridge("weftbr0", Some(1400)).unwrap();
    assert!(created);
    assert_eq!(br.name, "weftbr0");
    assert_eq!(br.kind.as_deref(), Some("bridge"));
    assert!(br.up);
    assert_eq!(br.mtu, 1400);

    let (again, created) = nl.ensure_bridge("weftbr0", Some(1400)).unwrap();
    assert!(!created);
    assert_eq!(again.index, br.index);

    let j = ns.ip_link("weftbr0").expect("bridge in ip link");
    assert_eq!(j["linkinfo"]["info_kind"], "bridge");
    assert_eq!(j["mtu"], 1400);
    assert!(has_flag(&j, "UP"), "{j}");

    // A link of that name that is not a bridge is an error, not silently reused.
    ns.ip(&[
        "link", "add", "notbr", "type", "veth", "peer", "name", "notbr-p",
    ]);
    let err = nl.ensure_bridge("notbr", None).unwrap_err();
    assert!(matches!(err, Error::Conflict { .. }), "{err}");
    assert!(err.to_string().contains("notbr"), "{err}");

    let err = nl.ensure_bridge("this-name-is-too-long", None).unwrap_err();
    assert!(matches!(err, Error::Invalid(_)), "{err}");
}

#[test]
fn veth_with_peer_in_other_netns_and_master_in_one_call() {
    let host = TestNs::new("vh");
    let pod = TestNs::new("vp");
    let mut nl = host.netlink();
    let (br, _) = nl.ensure_bridge("weftbr0", None).unwrap();
    let pod_ns = pod.netns();
    let host_mac = [0x02, 0x57, 0, 0, 0, 1];
    let peer_mac = [0x02, 0x57, 0, 0, 0, 2];

    nl.create_veth(&VethSpec {
        host_name: "veth-host0",
        peer_name: "eth0",
        peer_ns: &pod_ns,
        mtu: Some(1450),
        master: Some(br.index),
        host_mac: Some(host_mac),
        peer_mac: Some(peer_mac),
        gso_max_size: None,
    })
    .unwrap();

    let h = host.ip_link("veth-host0").expect("host end in host netns");
    assert_eq!(h["master"], "weftbr0");
    assert!(has_flag(&h, "UP"), "{h}");
    assert_eq!(h["mtu"], 1450);
    assert_eq!(h["address"], "02:57:00:00:00:01");
    assert_eq!(h["linkinfo"]["info_kind"], "veth");
    assert!(
        host.ip_link("eth0").is_none(),
        "peer must not be in the host netns"
    );

    let p = pod.ip_link("eth0").expect("peer in pod netns");
    assert_eq!(p["mtu"], 1450);
    assert_eq!(p["address"], "02:57:00:00:00:02");
    assert!(!has_flag(&p, "UP"), "peer starts down: {p}");

    let link = nl.link_by_name("veth-host0").unwrap().unwrap();
    assert_eq!(link.master, Some(br.index));
    assert_eq!(link.kind.as_deref(), Some("veth"));
    assert_eq!(link.mac, Some(host_mac));
    assert_eq!(link.mtu, 1450);
    assert!(link.up);
    assert!(link.peer_netns_id.is_some(), "{link:?}");
    assert_eq!(nl.link_by_index(link.index).unwrap().unwrap(), link);
    assert!(nl.links().unwrap().iter().any(|l| l.name == "veth-host0"));

    // Same host name again: EEXIST, nothing new in the pod.
    let err = nl
        .create_veth(&VethSpec {
            host_name: "veth-host0",
            peer_name: "eth1",
            peer_ns: &pod_ns,
            mtu: None,
            master: None,
            host_mac: None,
            peer_mac: None,
            gso_max_size: None,
        })
        .unwrap_err();
    assert_eq!(err.errno(), Some(libc::EEXIST), "{err}");
    assert!(err.is_exists());
    assert!(err.to_string().contains("veth-host0"), "{err}");
    assert!(pod.ip_link("eth1").is_none());
}

#[test]
fn delete_link_removes_both_ends() {
    let host = TestNs::new("dh");
    let pod = TestNs::new("dp");
    let mut nl = host.netlink();
    let pod_ns = pod.netns();
    nl.create_veth(&VethSpec {
        host_name: "vdel0",
        peer_name: "eth0",
        peer_ns: &pod_ns,
        mtu: None,
        master: None,
        host_mac: None,
        peer_mac: None,
        gso_max_size: None,
    })
    .unwrap();
    let link = nl.link_by_name("vdel0").unwrap().unwrap();
    assert!(pod.ip_link("eth0").is_some());

    nl.delete_link(link.index).unwrap();
    assert!(nl.link_by_name("vdel0").unwrap().is_none());
    assert!(host.ip_link("vdel0").is_none());
    assert!(
        pod.ip_link("eth0").is_none(),
        "peer must go with its host end"
    );

    let err = nl.delete_link(link.index).unwrap_err();
    assert_eq!(err.errno(), Some(libc::ENODEV), "{err}");
    assert!(err.is_not_found());
    assert!(!nl.delete_link_by_name("vdel0").unwrap());

    host.ip(&[
        "link", "add", "vdel1", "type", "veth", "peer", "name", "vdel1p",
    ]);
    assert!(nl.delete_link_by_name("vdel1").unwrap());
    assert!(host.ip_link("vdel1").is_none());
    assert!(host.ip_link("vdel1p").is_none());
}

#[test]
fn hairpin_alias_master_and_up_read_back() {
    let ns = TestNs::new("hp");
    let mut nl = ns.netlink();
    let (br, _) = nl.ensure_bridge("weftbr0", None).unwrap();
    ns.ip(&[
        "link", "add", "port0", "type", "veth", "peer", "name", "port0p",
    ]);
    let port = nl.link_by_name("port0").unwrap().unwrap();
    assert!(!port.up);
    assert_eq!(port.master, None);

    nl.set_master(port.index, br.index).unwrap();
    nl.set_up(port.index).unwrap();
    nl.set_alias(port.index, "pod default/web-1").unwrap();
    let port = nl.link_by_index(port.index).unwrap().unwrap();
    assert_eq!(port.master, Some(br.index));
    assert!(port.up);
    assert_eq!(port.alias.as_deref(), Some("pod default/web-1"));
    assert_eq!(ns.ip_link("port0").unwrap()["ifalias"], "pod default/web-1");

    assert!(!nl.hairpin(port.index).unwrap());
    nl.set_hairpin(port.index, true).unwrap();
    assert!(nl.hairpin(port.index).unwrap());
    let j = ns.ip_link("port0").unwrap();
    assert_eq!(j["linkinfo"]["info_slave_data"]["hairpin"], true, "{j}");
    nl.set_hairpin(port.index, false).unwrap();
    assert!(!nl.hairpin(port.index).unwrap());
    let j = ns.ip_link("port0").unwrap();
    assert_eq!(j["linkinfo"]["info_slave_data"]["hairpin"], false, "{j}");

    nl.set_mtu(port.index, 1300).unwrap();
    nl.set_down(port.index).unwrap();
    let port = nl.link_by_index(port.index).unwrap().unwrap();
    assert_eq!(port.mtu, 1300);
    assert!(!port.up);

    // Hairpin on a link with no bridge fails and says which link.
    let other = nl.link_by_name("port0p").unwrap().unwrap();
    let err = nl.set_hairpin(other.index, true).unwrap_err();
    assert!(err.errno().is_some(), "{err}");
    assert!(err.to_string().contains(&other.index.to_string()), "{err}");
}

#[test]
fn big_tcp_sizes_on_both_veth_ends_and_on_an_existing_link() {
    let host = TestNs::new("bh");
    let pod = TestNs::new("bp");
    let mut nl = host.netlink();
    let pod_ns = pod.netns();
    let size = 196_608;
    nl.create_veth(&VethSpec {
        host_name: "big-host0",
        peer_name: "eth0",
        peer_ns: &pod_ns,
        mtu: None,
        master: None,
        host_mac: None,
        peer_mac: None,
        gso_max_size: Some(size),
    })
    .unwrap();
    // IPv4 only: the IPv6 pair stays at 64 KiB (iproute2 6.1 shows only that pair).
    for (ns, name) in [(&host, "big-host0"), (&pod, "eth0")] {
        let j = ns.ip_link(name).expect("link in ip link");
        assert_eq!(j["gso_max_size"], 65_536, "{name}: {j}");
        assert_eq!(j["gro_max_size"], 65_536, "{name}: {j}");
        let link = ns.netlink().link_by_name(name).unwrap().unwrap();
        assert_eq!(
            (link.gso_max_size, link.gso_ipv4_max_size),
            (65_536, size),
            "{name}"
        );
    }

    // An existing link, and back to the default.
    host.ip(&["link", "add", "up0", "type", "veth", "peer", "name", "up0p"]);
    let up0 = nl.link_by_name("up0").unwrap().unwrap();
    assert_eq!(up0.gso_ipv4_max_size, 65_536);
    nl.set_gso_max_size(up0.index, size).unwrap();
    let l = nl.link_by_name("up0").unwrap().unwrap();
    assert_eq!((l.gso_max_size, l.gso_ipv4_max_size), (65_536, size));
    nl.set_gso_max_size(up0.index, 65_536).unwrap();
    let l = nl.link_by_name("up0").unwrap().unwrap();
    assert_eq!(l.gso_ipv4_max_size, 65_536);

    // Above the device's TSO limit the kernel refuses, and the error names the link.
    let err = nl.set_gso_max_size(up0.index, 10_000_000).unwrap_err();
    assert!(err.to_string().contains(&up0.index.to_string()), "{err}");
}

#[test]
fn links_of_kind_are_that_kind_only() {
    let ns = TestNs::new("kind");
    ns.ip(&["link", "set", "lo", "up"]);
    ns.ip(&["link", "add", "kbr0", "type", "bridge"]);
    ns.ip(&["link", "add", "kva", "type", "veth", "peer", "name", "kvb"]);
    ns.ip(&[
        "link", "add", "kvx", "type", "vxlan", "id", "42", "dstport", "4789",
    ]);
    let mut nl = ns.netlink();
    let names = |links: Vec<weft_dataplane::Link>| {
        let mut n: Vec<String> = links.into_iter().map(|l| l.name).collect();
        n.sort();
        n
    };
    assert_eq!(names(nl.links_of_kind("vxlan").unwrap()), ["kvx"]);
    assert_eq!(names(nl.links_of_kind("veth").unwrap()), ["kva", "kvb"]);
    assert_eq!(names(nl.links_of_kind("bridge").unwrap()), ["kbr0"]);
    // A kind the kernel does not know is not filtered there: none come back all the same.
    assert!(nl.links_of_kind("weftnosuch").unwrap().is_empty());
    // Every link, lo included, without a kind.
    assert_eq!(
        names(nl.links().unwrap()),
        ["kbr0", "kva", "kvb", "kvx", "lo"]
    );
}
