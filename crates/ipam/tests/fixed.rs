//! Fixed addresses: reservations by workload identity with their release policies, takeover
//! on another node, address pools across a rollout, admin reservations, and the leak sweep.
use std::net::IpAddr;

use weft_ipam::{
    AllocateRequest, Fixed, Identity, Ipam, IpamError, LeakSweeper, NetworkSpec, PoolRequest,
    PoolSpec, ReleasePolicy,
};
use weft_store::embedded::EmbeddedStore;

fn spec() -> NetworkSpec {
    let pool = |s: &str| PoolSpec {
        subnet: s.parse().unwrap(),
        range_start: None,
        range_end: None,
        exclude: vec![],
        gateway: None,
    };
    let mut s = NetworkSpec::new("n", vec![pool("198.18.0.0/24"), pool("fd00:7::/64")]);
    s.cooldown_seconds = 0;
    s
}

fn store() -> (tempfile::TempDir, EmbeddedStore) {
    let dir = tempfile::tempdir().unwrap();
    let s = EmbeddedStore::open(dir.path()).unwrap();
    (dir, s)
}

fn sts(ordinal: u32, policy: ReleasePolicy) -> Identity {
    Identity {
        key: format!("prod/db/{ordinal}"),
        policy,
        workload: Some("prod/db".into()),
        ordinal: Some(ordinal),
    }
}

fn req(cid: &str, node: &str, fixed: Option<Fixed>) -> AllocateRequest {
    AllocateRequest {
        container_id: cid.into(),
        ifname: "eth0".into(),
        node: node.into(),
        fixed,
        ..Default::default()
    }
}

fn ips(a: &weft_ipam::Allocated) -> Vec<IpAddr> {
    a.addresses.iter().map(|x| x.address.addr()).collect()
}

/// A StatefulSet pod deleted and recreated on another node.
fn recreate(policy: ReleasePolicy) -> (Vec<IpAddr>, Vec<IpAddr>) {
    let (_d, s) = store();
    let ipam = Ipam::new(&s);
    let spec = spec();
    // Some other pods first, so a fresh allocation would not land on the same address.
    let first = ipam
        .allocate(
            &spec,
            &req("db-0-a", "node-1", Some(Fixed::Identity(sts(0, policy)))),
        )
        .unwrap();
    ipam.release("n", "db-0-a", "eth0").unwrap().unwrap();
    ipam.allocate(&spec, &req("other", "node-2", None)).unwrap();
    let second = ipam
        .allocate(
            &spec,
            &req("db-0-b", "node-2", Some(Fixed::Identity(sts(0, policy)))),
        )
        .unwrap();
    (ips(&first), ips(&second))
}

#[test]
fn statefulset_pod_keeps_its_addresses_on_another_node_under_workload_and_never() {
    for policy in [ReleasePolicy::Workload, ReleasePolicy::Never] {
        let (a, b) = recreate(policy);
        assert_eq!(a, b, "{policy:?}");
    }
    let (a, b) = recreate(ReleasePolicy::Pod);
    assert_ne!(a, b, "policy pod releases with the pod");
}

#[test]
fn a_kept_reservation_is_never_handed_to_anyone_else() {
    let (_d, s) = store();
    let ipam = Ipam::new(&s);
    let mut small = spec();
    small.pools[0].subnet = "198.18.0.0/30".parse().unwrap(); // two usable addresses
    small.pools.truncate(1);
    let r = ipam
        .allocate(
            &small,
            &req(
                "db-0",
                "node-1",
                Some(Fixed::Identity(sts(0, ReleasePolicy::Never))),
            ),
        )
        .unwrap();
    ipam.release("n", "db-0", "eth0").unwrap();
    let other = ipam.allocate(&small, &req("x", "node-1", None)).unwrap();
    assert_ne!(ips(&other), ips(&r));
    let e = ipam
        .allocate(&small, &req("y", "node-1", None))
        .unwrap_err();
    assert!(matches!(e, IpamError::Exhausted { .. }), "{e}");
    let mut ask = req("z", "node-1", None);
    ask.requested = ips(&r);
    let e = ipam.allocate(&small, &ask).unwrap_err();
    assert!(
        matches!(e, IpamError::AlreadyReserved { .. }) && e.to_string().contains("prod/db/0"),
        "{e}"
    );
    // The admin releases it: now it can be had.
    ipam.release_reservation("n", "prod/db/0").unwrap().unwrap();
    assert_eq!(ips(&ipam.allocate(&small, &ask).unwrap()), ips(&r));
}

#[test]
fn the_same_identity_takes_over_from_a_pod_whose_node_died() {
    let (_d, s) = store();
    let ipam = Ipam::new(&s);
    let spec = spec();
    let id = Fixed::Identity(sts(1, ReleasePolicy::Workload));
    let old = ipam
        .allocate(&spec, &req("db-1-old", "node-1", Some(id.clone())))
        .unwrap();
    // node-1 dies: no DEL. The pod comes back on node-3.
    let new = ipam
        .allocate(&spec, &req("db-1-new", "node-3", Some(id)))
        .unwrap();
    assert_eq!(ips(&old), ips(&new));
    assert!(
        ipam.get("n", "db-1-old", "eth0").unwrap().is_none(),
        "the dead pod's record is gone"
    );
    let rec = ipam.get("n", "db-1-new", "eth0").unwrap().unwrap();
    assert_eq!(rec.node, "node-3");
    // GC on the dead node later frees nothing of the new pod's.
    assert!(ipam.gc("n", "node-1", &[]).unwrap().is_empty());
    assert!(ipam.get("n", "db-1-new", "eth0").unwrap().is_some());
}

#[test]
fn workload_scale_down_and_delete_release_reservations() {
    let (_d, s) = store();
    let ipam = Ipam::new(&s);
    let spec = spec();
    for o in 0..3 {
        ipam.allocate(
            &spec,
            &req(
                &format!("db-{o}"),
                "node-1",
                Some(Fixed::Identity(sts(o, ReleasePolicy::Workload))),
            ),
        )
        .unwrap();
        ipam.release("n", &format!("db-{o}"), "eth0").unwrap();
    }
    assert_eq!(ipam.reservations("n").unwrap().len(), 3);
    let gone = ipam.release_workload("n", "prod/db", Some(1)).unwrap();
    let mut keys: Vec<_> = gone.iter().map(|r| r.identity.key.clone()).collect();
    keys.sort();
    assert_eq!(keys, ["prod/db/1", "prod/db/2"]);
    assert_eq!(ipam.reservations("n").unwrap().len(), 1);
    ipam.release_workload("n", "prod/db", None).unwrap();
    assert!(ipam.reservations("n").unwrap().is_empty());
}

#[test]
fn a_deployment_pool_hands_its_addresses_to_new_pods_across_a_rollout() {
    let (_d, s) = store();
    let ipam = Ipam::new(&s);
    let spec = spec();
    let addrs: Vec<IpAddr> = ["198.18.0.50", "198.18.0.51", "fd00:7::50", "fd00:7::51"]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect();
    let pool = || {
        Some(Fixed::Pool(PoolRequest {
            name: "web".into(),
            addresses: addrs.clone(),
        }))
    };
    let v1: Vec<Vec<IpAddr>> = (0..2)
        .map(|i| {
            ips(&ipam
                .allocate(&spec, &req(&format!("web-v1-{i}"), "node-1", pool()))
                .unwrap())
        })
        .collect();
    let e = ipam
        .allocate(&spec, &req("web-surge", "node-2", pool()))
        .unwrap_err();
    assert!(matches!(e, IpamError::PoolExhausted { .. }), "{e}");
    // Rolling update: one old pod goes, one new comes, twice.
    let mut v2 = Vec::new();
    for i in 0..2 {
        ipam.release("n", &format!("web-v1-{i}"), "eth0")
            .unwrap()
            .unwrap();
        v2.push(ips(&ipam
            .allocate(&spec, &req(&format!("web-v2-{i}"), "node-2", pool()))
            .unwrap()));
    }
    let mut a: Vec<IpAddr> = v1.concat();
    let mut b: Vec<IpAddr> = v2.concat();
    a.sort();
    b.sort();
    assert_eq!(a, b, "the new pods got exactly the pool's addresses");
    // Nobody outside the pool gets them.
    let mut ask = req("intruder", "node-1", None);
    ask.requested = vec!["198.18.0.50".parse().unwrap()];
    assert!(matches!(
        ipam.allocate(&spec, &ask).unwrap_err(),
        IpamError::InUse { .. }
    ));
    // Other addresses for the same pool name are a conflict, not an overwrite.
    let other = Some(Fixed::Pool(PoolRequest {
        name: "web".into(),
        addresses: vec!["198.18.0.60".parse().unwrap()],
    }));
    assert!(matches!(
        ipam.allocate(&spec, &req("c", "node-1", other))
            .unwrap_err(),
        IpamError::FixedConflict { .. }
    ));
}

#[test]
fn admin_reservations_are_checked() {
    let (_d, s) = store();
    let ipam = Ipam::new(&s);
    let spec = spec();
    let id = |k: &str| Identity {
        key: k.into(),
        policy: ReleasePolicy::Never,
        workload: None,
        ordinal: None,
    };
    let a: IpAddr = "198.18.0.77".parse().unwrap();
    ipam.reserve(&spec, &id("legacy/app"), &[a]).unwrap();
    let e = ipam.reserve(&spec, &id("other/app"), &[a]).unwrap_err();
    assert!(
        matches!(e, IpamError::AlreadyReserved { .. }) && e.to_string().contains("legacy/app"),
        "{e}"
    );
    let e = ipam
        .reserve(&spec, &id("x/y"), &["10.1.2.3".parse().unwrap()])
        .unwrap_err();
    assert!(matches!(e, IpamError::OutsideRange { .. }), "{e}");
    let e = ipam.reserve(&spec, &id("bad key"), &[]).unwrap_err();
    assert!(e.to_string().contains("identity"), "{e}");
    assert!(
        "sometimes"
            .parse::<ReleasePolicy>()
            .unwrap_err()
            .contains("sometimes")
    );
    // The identity's pod gets the reserved address.
    let got = ipam
        .allocate(
            &spec,
            &req("legacy", "node-9", Some(Fixed::Identity(id("legacy/app")))),
        )
        .unwrap();
    assert_eq!(got.addresses[0].address.addr(), a);
}

#[test]
fn the_leak_sweep_frees_only_allocations_dead_twice_past_the_grace() {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NOW: AtomicU64 = AtomicU64::new(10_000);
    fn clock() -> u64 {
        NOW.load(Ordering::SeqCst)
    }
    let (_d, s) = store();
    let ipam = Ipam::new(&s).with_clock(clock);
    let spec = spec();
    for c in ["live", "dead"] {
        ipam.allocate(&spec, &req(c, "node-1", None)).unwrap();
    }
    let live = |a: &weft_ipam::Allocation| a.container_id == "live";
    let mut sweeper = LeakSweeper::new(60);
    assert!(
        sweeper
            .sweep(&ipam, "n", "node-1", &live)
            .unwrap()
            .is_empty(),
        "one sighting"
    );
    NOW.fetch_add(30, Ordering::SeqCst);
    assert!(
        sweeper
            .sweep(&ipam, "n", "node-1", &live)
            .unwrap()
            .is_empty(),
        "two sightings, too close together"
    );
    NOW.fetch_add(31, Ordering::SeqCst);
    let freed = sweeper.sweep(&ipam, "n", "node-1", &live).unwrap();
    assert_eq!(
        freed
            .iter()
            .map(|a| a.container_id.as_str())
            .collect::<Vec<_>>(),
        ["dead"]
    );
    assert!(ipam.get("n", "live", "eth0").unwrap().is_some());
    // The re-check just before release: a suspect that comes alive is kept.
    ipam.allocate(&spec, &req("flaky", "node-1", None)).unwrap();
    let mut s2 = LeakSweeper::new(0);
    s2.sweep(&ipam, "n", "node-1", &|a| a.container_id != "flaky")
        .unwrap();
    let calls = std::cell::Cell::new(0);
    let alive_on_recheck = |a: &weft_ipam::Allocation| {
        if a.container_id != "flaky" {
            return true;
        }
        calls.set(calls.get() + 1);
        calls.get() > 1 // dead on the sweep's look, alive on the re-check
    };
    assert!(
        s2.sweep(&ipam, "n", "node-1", &alive_on_recheck)
            .unwrap()
            .is_empty()
    );
    assert!(ipam.get("n", "flaky", "eth0").unwrap().is_some());
}
