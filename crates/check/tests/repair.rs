//! Repairs on the embedded store (no kernel): a gone node's allocations and blocks are released
//! only once `repair` has known the node gone for the grace period, and repairs are safe to run
//! twice.
use weft_check::{CheckOptions, FindingKind, GoneMarker, check, gone_key, repair_waiting};
use weft_ipam::{AllocateRequest, Ipam, NetworkSpec, PoolSpec};
use weft_store::embedded::EmbeddedStore;
use weft_store::{Op, Store, Txn};

fn put(store: &dyn Store, key: &str, value: serde_json::Value) {
    assert!(
        store
            .commit(&Txn {
                compares: vec![],
                ops: vec![Op::Put {
                    key: key.into(),
                    value: serde_json::to_vec(&value).unwrap(),
                }],
            })
            .unwrap()
    );
}

#[test]
fn a_gone_nodes_addresses_wait_for_the_grace_period() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path().join("store")).unwrap();
    let spec = NetworkSpec::new(
        "net",
        vec![PoolSpec {
            subnet: "198.18.0.0/24".parse().unwrap(),
            range_start: None,
            range_end: None,
            exclude: vec![],
            gateway: None,
        }],
    );
    // An allocation made long ago on n1, whose weftd is gone; n2 is registered.
    Ipam::new(&store)
        .with_clock(|| 1000)
        .allocate(
            &spec,
            &AllocateRequest {
                container_id: "c1".into(),
                ifname: "eth0".into(),
                node: "n1".into(),
                ..Default::default()
            },
        )
        .unwrap();
    put(
        &store,
        &weft_ipam::node_key("n2"),
        serde_json::json!({"schema": 1, "name": "n2", "underlayIp": "198.51.100.3",
            "underlaySubnet": "198.51.100.0/24", "networks": ["net"], "mode": "host-gw"}),
    );
    let opts = CheckOptions { grace_seconds: 60 };
    let wait = std::time::Duration::from_millis(100);
    let r = check(&store, &opts).unwrap();
    let kinds: Vec<FindingKind> = r.findings.iter().map(|f| f.kind).collect();
    assert_eq!(
        kinds,
        vec![FindingKind::Leak, FindingKind::StaleBlock],
        "{r:?}"
    );

    // First repair: n1 is marked gone now; nothing is released yet.
    let out = repair_waiting(&store, &r.findings, &opts, wait).unwrap();
    assert_eq!(out.len(), 2, "one outcome per finding: {out:?}");
    assert!(out.iter().all(|o| o.status == "skipped"), "{out:?}");
    assert!(store.get(&gone_key("n1")).unwrap().is_some());
    assert!(
        Ipam::new(&store)
            .get("net", "c1", "eth0")
            .unwrap()
            .is_some()
    );

    // Gone for longer than the grace period: released, the block's claim dropped.
    let since = weft_ipam::now() - 120;
    put(
        &store,
        &gone_key("n1"),
        serde_json::to_value(GoneMarker {
            schema: 1,
            node: "n1".into(),
            since,
        })
        .unwrap(),
    );
    let r = check(&store, &opts).unwrap();
    let out = repair_waiting(&store, &r.findings, &opts, wait).unwrap();
    assert_eq!(out.len(), 2, "one outcome per finding: {out:?}");
    assert!(out.iter().all(|o| o.status == "done"), "{out:?}");
    assert!(
        Ipam::new(&store)
            .get("net", "c1", "eth0")
            .unwrap()
            .is_none()
    );
    let after = check(&store, &opts).unwrap();
    assert!(after.findings.is_empty(), "{after:?}");
    // Nothing names n1 any more: its marker went with the repair that released the rest.
    assert!(store.get(&gone_key("n1")).unwrap().is_none());

    // Twice is safe: the same findings again change nothing.
    let out = repair_waiting(&store, &r.findings, &opts, wait).unwrap();
    assert_eq!(out.len(), 2, "one outcome per finding: {out:?}");
    assert!(out.iter().all(|o| o.status == "skipped"), "{out:?}");
    assert!(store.get(&gone_key("n1")).unwrap().is_none());
}

#[test]
fn a_duplicate_record_loses_the_address_its_block_gives_to_another() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path().join("store")).unwrap();
    let spec = NetworkSpec::new(
        "net",
        vec![PoolSpec {
            subnet: "198.18.0.0/24".parse().unwrap(),
            range_start: None,
            range_end: None,
            exclude: vec![],
            gateway: None,
        }],
    );
    let ipam = Ipam::new(&store);
    for c in ["c1", "c2"] {
        ipam.allocate(
            &spec,
            &AllocateRequest {
                container_id: c.into(),
                ifname: "eth0".into(),
                node: "n1".into(),
                ..Default::default()
            },
        )
        .unwrap();
    }
    // c2's record also claims c1's address.
    let a1 = ipam.get("net", "c1", "eth0").unwrap().unwrap();
    let mut a2 = ipam.get("net", "c2", "eth0").unwrap().unwrap();
    a2.addresses.extend(a1.addresses.iter().copied());
    put(
        &store,
        &weft_ipam::handle_key("net", "c2:eth0"),
        serde_json::to_value(&a2).unwrap(),
    );
    let opts = CheckOptions { grace_seconds: 0 };
    let r = check(&store, &opts).unwrap();
    assert_eq!(r.findings.len(), 1, "{r:?}");
    assert_eq!(r.findings[0].kind, FindingKind::Duplicate);
    assert_eq!(r.findings[0].subject, a1.addresses[0].addr().to_string());
    let out = repair_waiting(&store, &r.findings, &opts, Default::default()).unwrap();
    assert_eq!(out[0].status, "done", "{out:?}");
    let a2 = ipam.get("net", "c2", "eth0").unwrap().unwrap();
    assert_eq!(a2.addresses.len(), 1, "c2 keeps its own address");
    assert_eq!(
        ipam.get("net", "c1", "eth0").unwrap().unwrap().addresses,
        a1.addresses
    );
    assert!(check(&store, &opts).unwrap().findings.is_empty());
}

#[test]
fn an_empty_block_overlapping_another_is_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path().join("store")).unwrap();
    let spec = NetworkSpec::new(
        "net",
        vec![PoolSpec {
            subnet: "198.18.0.0/24".parse().unwrap(),
            range_start: None,
            range_end: None,
            exclude: vec![],
            gateway: None,
        }],
    );
    Ipam::new(&store)
        .allocate(
            &spec,
            &AllocateRequest {
                container_id: "c1".into(),
                ifname: "eth0".into(),
                node: "n1".into(),
                ..Default::default()
            },
        )
        .unwrap();
    // A /27 record inside n1's /26, written by hand.
    let cidr: ipnet::IpNet = "198.18.0.32/27".parse().unwrap();
    put(
        &store,
        &weft_ipam::block_key("net", &cidr),
        serde_json::to_value(weft_ipam::BlockRecord::new(cidr, Some("n2"))).unwrap(),
    );
    let opts = CheckOptions { grace_seconds: 0 };
    let r = check(&store, &opts).unwrap();
    assert_eq!(r.findings.len(), 1, "{r:?}");
    assert_eq!(
        (r.findings[0].kind, r.findings[0].subject.as_str()),
        (FindingKind::Duplicate, "198.18.0.32/27")
    );
    let out = repair_waiting(&store, &r.findings, &opts, Default::default()).unwrap();
    assert_eq!(out[0].status, "done", "{out:?}");
    assert!(
        store
            .get(&weft_ipam::block_key("net", &cidr))
            .unwrap()
            .is_none()
    );
    assert!(check(&store, &opts).unwrap().findings.is_empty());
}

#[test]
fn a_reservation_in_an_excluded_range_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path().join("store")).unwrap();
    let spec = NetworkSpec::new(
        "net",
        vec![PoolSpec {
            subnet: "198.18.0.0/24".parse().unwrap(),
            range_start: None,
            range_end: None,
            exclude: vec!["198.18.0.240/28".parse().unwrap()],
            gateway: None,
        }],
    );
    let ipam = Ipam::new(&store).with_clock(|| 1000);
    ipam.ensure_network(&spec).unwrap();
    let id = weft_ipam::Identity {
        key: "db-0".into(),
        policy: weft_ipam::ReleasePolicy::Never,
        workload: None,
        ordinal: None,
    };
    let mut r = ipam
        .reserve(&spec, &id, &["198.18.0.10".parse().unwrap()])
        .unwrap();
    // Rewritten by hand with an address inside the pool's subnet but in its excluded range.
    r.addresses.push("198.18.0.245/24".parse().unwrap());
    let key = weft_ipam::fixed::reservation_key("net", "db-0");
    put(&store, &key, serde_json::to_value(&r).unwrap());

    let opts = CheckOptions { grace_seconds: 60 };
    let found = check(&store, &opts).unwrap();
    let kinds: Vec<(FindingKind, &str)> = found
        .findings
        .iter()
        .map(|f| (f.kind, f.subject.as_str()))
        .collect();
    assert_eq!(kinds, [(FindingKind::ReservationOutsidePool, "db-0")]);
    let out = repair_waiting(
        &store,
        &found.findings,
        &opts,
        std::time::Duration::from_millis(100),
    )
    .unwrap();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].status, "done", "{}", out[0].message);
    assert!(
        store.get(&key).unwrap().is_none(),
        "the reservation is dropped"
    );
    assert!(check(&store, &opts).unwrap().findings.is_empty());
}
