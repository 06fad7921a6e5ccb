//! IPAM behaviour on the embedded store: allocation, requests, cooldown, conflicts, GC, and the
//! invariants (no duplicate, every owner recorded) under concurrency and random operation mixes.
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use proptest::prelude::*;
use weft_ipam::{
    AllocateRequest, Allocation, BlockRecord, Ipam, IpamError, NetworkSpec, PoolSpec, block_key,
};
use weft_store::Store;
use weft_store::embedded::EmbeddedStore;

fn pool(s: &str) -> PoolSpec {
    PoolSpec {
        subnet: s.parse().unwrap(),
        range_start: None,
        range_end: None,
        exclude: vec![],
        gateway: None,
    }
}

fn req(cid: &str) -> AllocateRequest {
    AllocateRequest {
        container_id: cid.into(),
        ifname: "eth0".into(),
        node: "n1".into(),
        ..Default::default()
    }
}

fn store() -> (tempfile::TempDir, EmbeddedStore) {
    let dir = tempfile::tempdir().unwrap();
    let s = EmbeddedStore::open(dir.path()).unwrap();
    (dir, s)
}

fn addrs(a: &weft_ipam::Allocated) -> Vec<String> {
    a.addresses.iter().map(|x| x.address.to_string()).collect()
}

#[test]
fn allocates_first_usable_and_is_idempotent_per_handle() {
    let (_d, s) = store();
    let ipam = Ipam::new(&s);
    let mut p = pool("198.18.0.0/24");
    p.gateway = Some("198.18.0.1".parse().unwrap());
    let spec = NetworkSpec::new("n", vec![p]);
    let a = ipam.allocate(&spec, &req("c1")).unwrap();
    assert_eq!(addrs(&a), ["198.18.0.2/24"]);
    assert!(a.created);
    assert_eq!(a.addresses[0].gateway, Some("198.18.0.1".parse().unwrap()));
    let again = ipam.allocate(&spec, &req("c1")).unwrap();
    assert_eq!(addrs(&again), ["198.18.0.2/24"]);
    assert!(!again.created);
    let b = ipam.allocate(&spec, &req("c2")).unwrap();
    assert_eq!(addrs(&b), ["198.18.0.3/24"]);
    let rec = ipam.get("n", "c2", "eth0").unwrap().unwrap();
    assert_eq!(rec.node, "n1");
    assert_eq!(rec.addresses[0].to_string(), "198.18.0.3/24");
}

#[test]
fn dual_stack_gets_one_address_per_family() {
    let (_d, s) = store();
    let ipam = Ipam::new(&s);
    let spec = NetworkSpec::new("n", vec![pool("198.18.0.0/24"), pool("fd00:1::/64")]);
    let a = ipam.allocate(&spec, &req("c1")).unwrap();
    assert_eq!(addrs(&a), ["198.18.0.1/24", "fd00:1::1/64"]);
}

#[test]
fn requested_addresses_are_honoured_and_checked() {
    let (_d, s) = store();
    let ipam = Ipam::new(&s);
    let mut p = pool("198.18.0.0/24");
    p.range_start = Some("198.18.0.100".parse().unwrap());
    let spec = NetworkSpec::new("n", vec![p]);
    let mut r = req("c1");
    r.requested = vec!["198.18.0.150".parse().unwrap()];
    assert_eq!(
        addrs(&ipam.allocate(&spec, &r).unwrap()),
        ["198.18.0.150/24"]
    );
    let mut r2 = req("c2");
    r2.requested = vec!["198.18.0.150".parse().unwrap()];
    let e = ipam.allocate(&spec, &r2).unwrap_err();
    assert!(matches!(e, IpamError::InUse { .. }), "{e}");
    assert!(
        e.to_string().contains("198.18.0.150") && e.to_string().contains("c1:eth0"),
        "{e}"
    );
    r2.requested = vec!["198.18.0.50".parse().unwrap()];
    let e = ipam.allocate(&spec, &r2).unwrap_err();
    assert!(matches!(e, IpamError::OutsideRange { .. }), "{e}");
    r2.requested = vec!["10.9.9.9".parse().unwrap()];
    assert!(matches!(
        ipam.allocate(&spec, &r2).unwrap_err(),
        IpamError::OutsideRange { .. }
    ));
    // Nothing was written for the refused requests.
    assert!(ipam.get("n", "c2", "eth0").unwrap().is_none());
}

static NOW: AtomicU64 = AtomicU64::new(1000);
fn test_clock() -> u64 {
    NOW.load(Ordering::SeqCst)
}

#[test]
fn released_addresses_cool_down_before_reuse() {
    let (_d, s) = store();
    let ipam = Ipam::new(&s).with_clock(test_clock);
    let mut spec = NetworkSpec::new("n", vec![pool("198.18.0.0/30")]); // .1 and .2 usable
    spec.cooldown_seconds = 30;
    assert_eq!(
        addrs(&ipam.allocate(&spec, &req("a")).unwrap()),
        ["198.18.0.1/30"]
    );
    assert_eq!(
        addrs(&ipam.allocate(&spec, &req("b")).unwrap()),
        ["198.18.0.2/30"]
    );
    assert!(matches!(
        ipam.allocate(&spec, &req("c")).unwrap_err(),
        IpamError::Exhausted { .. }
    ));
    ipam.release("n", "a", "eth0").unwrap().unwrap();
    let e = ipam.allocate(&spec, &req("c")).unwrap_err();
    assert!(
        matches!(
            e,
            IpamError::Cooling {
                retry_after: 30,
                ..
            }
        ),
        "{e}"
    );
    // Its owner may take it back by name at once.
    let mut back = req("a2");
    back.requested = vec!["198.18.0.1".parse().unwrap()];
    assert_eq!(
        addrs(&ipam.allocate(&spec, &back).unwrap()),
        ["198.18.0.1/30"]
    );
    ipam.release("n", "a2", "eth0").unwrap().unwrap();
    NOW.fetch_add(31, Ordering::SeqCst);
    assert_eq!(
        addrs(&ipam.allocate(&spec, &req("c")).unwrap()),
        ["198.18.0.1/30"]
    );
    // Releasing twice is fine and frees nothing more.
    assert!(ipam.release("n", "zzz", "eth0").unwrap().is_none());
}

#[test]
fn conflicting_and_overlapping_networks_are_refused() {
    let (_d, s) = store();
    let ipam = Ipam::new(&s);
    ipam.ensure_network(&NetworkSpec::new("a", vec![pool("198.18.0.0/24")]))
        .unwrap();
    let e = ipam
        .ensure_network(&NetworkSpec::new("a", vec![pool("198.18.1.0/24")]))
        .unwrap_err();
    assert!(
        matches!(e, IpamError::Conflict { .. }) && e.to_string().contains("198.18.0.0/24"),
        "{e}"
    );
    let e = ipam
        .ensure_network(&NetworkSpec::new("b", vec![pool("198.18.0.0/16")]))
        .unwrap_err();
    assert!(matches!(e, IpamError::Overlap { .. }), "{e}");
    ipam.ensure_network(&NetworkSpec::new("b", vec![pool("198.18.1.0/24")]))
        .unwrap();
}

#[test]
fn invalid_specs_name_the_field() {
    let cases: Vec<(Vec<PoolSpec>, &str)> = vec![
        (vec![], "pools"),
        (vec![pool("198.18.0.5/24")], "did you mean 198.18.0.0/24"),
        (vec![pool("198.18.0.0/31")], "too small"),
        (
            vec![PoolSpec {
                gateway: Some("198.19.0.1".parse().unwrap()),
                ..pool("198.18.0.0/24")
            }],
            "pools[0].gateway",
        ),
        (
            vec![PoolSpec {
                range_start: Some("198.18.0.9".parse().unwrap()),
                range_end: Some("198.18.0.3".parse().unwrap()),
                ..pool("198.18.0.0/24")
            }],
            "rangeStart",
        ),
        (
            vec![pool("198.18.0.0/24"), pool("198.18.0.128/25")],
            "overlaps",
        ),
    ];
    for (pools, want) in cases {
        let e = NetworkSpec::new("n", pools).validate().unwrap_err();
        assert!(e.to_string().contains(want), "{e} should mention {want}");
    }
}

#[test]
fn gc_frees_only_attachments_missing_from_the_valid_list() {
    let (_d, s) = store();
    let ipam = Ipam::new(&s);
    let spec = NetworkSpec::new("n", vec![pool("198.18.0.0/24")]);
    for c in ["a", "b", "c"] {
        ipam.allocate(&spec, &req(c)).unwrap();
    }
    let mut other_node = req("d");
    other_node.node = "n2".into();
    ipam.allocate(&spec, &other_node).unwrap();
    let freed = ipam.gc("n", "n1", &[("b".into(), "eth0".into())]).unwrap();
    let freed: BTreeSet<_> = freed.iter().map(|a| a.container_id.clone()).collect();
    assert_eq!(freed, BTreeSet::from(["a".to_string(), "c".to_string()]));
    let left: BTreeSet<_> = ipam
        .allocations("n")
        .unwrap()
        .iter()
        .map(|a| a.container_id.clone())
        .collect();
    assert_eq!(left, BTreeSet::from(["b".to_string(), "d".to_string()]));
}

/// Every address in a block has a handle that lists it, and no address appears twice.
fn assert_consistent(s: &EmbeddedStore, network: &str) {
    let handles: Vec<Allocation> = s
        .list(&weft_ipam::handles_prefix(network))
        .unwrap()
        .iter()
        .map(|kv| serde_json::from_slice(&kv.value).unwrap())
        .collect();
    let mut owner: BTreeMap<IpAddr, String> = BTreeMap::new();
    for h in &handles {
        for a in &h.addresses {
            assert!(
                owner.insert(a.addr(), h.handle.clone()).is_none(),
                "duplicate {a}"
            );
        }
    }
    let mut in_blocks = 0;
    for kv in s.list(&weft_ipam::blocks_prefix(network)).unwrap() {
        let b: BlockRecord = serde_json::from_slice(&kv.value).unwrap();
        assert_eq!(kv.key, block_key(network, &b.cidr));
        for (off, h) in &b.allocations {
            if !weft_ipam::is_attachment(h) {
                continue;
            }
            let a = weft_ipam::ip_add(b.cidr.network(), *off as u128);
            assert_eq!(
                owner.get(&a),
                Some(h),
                "block entry {a} -> {h} has no matching handle"
            );
            in_blocks += 1;
        }
    }
    assert_eq!(
        in_blocks,
        owner.len(),
        "a handle lists an address its block does not"
    );
}

#[test]
fn concurrent_allocators_never_share_an_address() {
    let dir = tempfile::tempdir().unwrap();
    let spec = NetworkSpec::new("n", vec![pool("198.18.0.0/22"), pool("fd00:2::/64")]);
    std::thread::scope(|sc| {
        for t in 0..8 {
            let (dir, spec) = (dir.path(), &spec);
            sc.spawn(move || {
                // Each thread opens its own store, as separate plugin processes do.
                let s = EmbeddedStore::open(dir).unwrap();
                let ipam = Ipam::new(&s);
                for i in 0..25 {
                    ipam.allocate(spec, &req(&format!("t{t}-{i}"))).unwrap();
                    if i % 3 == 0 {
                        ipam.release("n", &format!("t{t}-{i}"), "eth0")
                            .unwrap()
                            .unwrap();
                    }
                }
            });
        }
    });
    let s = EmbeddedStore::open(dir.path()).unwrap();
    assert_consistent(&s, "n");
    assert_eq!(Ipam::new(&s).allocations("n").unwrap().len(), 8 * 16);
}

#[derive(Debug, Clone)]
enum OpKind {
    Alloc(u8),
    Request(u8, u8),
    Release(u8),
    Gc(Vec<u8>),
    Tick(u8),
}

fn op() -> impl Strategy<Value = OpKind> {
    prop_oneof![
        4 => (0u8..12).prop_map(OpKind::Alloc),
        2 => (0u8..12, 0u8..16).prop_map(|(c, a)| OpKind::Request(c, a)),
        3 => (0u8..12).prop_map(OpKind::Release),
        1 => proptest::collection::vec(0u8..12, 0..6).prop_map(OpKind::Gc),
        1 => (0u8..40).prop_map(OpKind::Tick),
    ]
}

static PNOW: AtomicU64 = AtomicU64::new(0);
fn prop_clock() -> u64 {
    PNOW.load(Ordering::SeqCst)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    /// Any mix of operations on a tiny pool keeps the store consistent, and the model agrees on
    /// who holds an address.
    #[test]
    fn random_operations_keep_the_invariants(ops in proptest::collection::vec(op(), 1..60)) {
        let (_d, s) = store();
        let ipam = Ipam::new(&s).with_clock(prop_clock);
        let mut spec = NetworkSpec::new("n", vec![pool("198.18.0.0/28")]);
        spec.block_prefix_v4 = 30;
        spec.cooldown_seconds = 10;
        let mut held: BTreeMap<u8, IpAddr> = BTreeMap::new();
        for op in ops {
            match op {
                OpKind::Alloc(c) => match ipam.allocate(&spec, &req(&format!("c{c}"))) {
                    Ok(a) => {
                        let ip = a.addresses[0].address.addr();
                        if let Some(prev) = held.insert(c, ip) { prop_assert_eq!(prev, ip); }
                    }
                    Err(IpamError::Exhausted { .. } | IpamError::Cooling { .. }) => prop_assert!(!held.contains_key(&c)),
                    Err(e) => panic!("{e}"),
                },
                OpKind::Request(c, a) => {
                    let mut r = req(&format!("c{c}"));
                    let ip: IpAddr = format!("198.18.0.{a}").parse().unwrap();
                    r.requested = vec![ip];
                    match ipam.allocate(&spec, &r) {
                        Ok(got) => { held.entry(c).or_insert(got.addresses[0].address.addr()); }
                        Err(IpamError::InUse { .. }) => prop_assert!(held.values().any(|v| *v == ip)),
                        Err(IpamError::OutsideRange { .. }) => prop_assert!(a == 0 || a == 15),
                        Err(e) => panic!("{e}"),
                    }
                }
                OpKind::Release(c) => {
                    let freed = ipam.release("n", &format!("c{c}"), "eth0").unwrap();
                    prop_assert_eq!(freed.is_some(), held.remove(&c).is_some());
                }
                OpKind::Gc(keep) => {
                    let valid: Vec<(String, String)> = keep.iter().map(|c| (format!("c{c}"), "eth0".to_string())).collect();
                    ipam.gc("n", "n1", &valid).unwrap();
                    held.retain(|c, _| keep.contains(c));
                }
                OpKind::Tick(t) => { PNOW.fetch_add(t as u64, Ordering::SeqCst); }
            }
            assert_consistent(&s, "n");
        }
    }
}

#[test]
fn a_full_node_borrows_from_another_nodes_block_unless_strict() {
    for strict in [false, true] {
        let (_d, s) = store();
        let ipam = Ipam::new(&s);
        // Two blocks: 198.18.0.0/30 (.1-.3: only the pool's network address is excluded) and
        // 198.18.0.4/30 (.4-.6: .7 is the pool's broadcast).
        let mut spec = NetworkSpec::new("n", vec![pool("198.18.0.0/29")]);
        spec.block_prefix_v4 = 30;
        spec.strict_affinity = strict;
        let on = |cid: &str, node: &str| AllocateRequest {
            node: node.into(),
            ..req(cid)
        };
        ipam.allocate(&spec, &on("a1", "node-a")).unwrap();
        ipam.allocate(&spec, &on("b1", "node-b")).unwrap();
        ipam.allocate(&spec, &on("a2", "node-a")).unwrap();
        ipam.allocate(&spec, &on("a3", "node-a")).unwrap(); // node-a's block is now full
        let got = ipam.allocate(&spec, &on("a4", "node-a"));
        if strict {
            assert!(matches!(got.unwrap_err(), IpamError::Exhausted { .. }));
        } else {
            let a = got.unwrap().addresses[0].address.addr();
            assert!(
                "198.18.0.4/30"
                    .parse::<ipnet::IpNet>()
                    .unwrap()
                    .contains(&a),
                "borrowed {a} from node-b's block"
            );
        }
    }
}
