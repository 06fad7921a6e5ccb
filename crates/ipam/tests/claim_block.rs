//! `Ipam::claim_block`: the node agent's claim of a block at start.
use weft_ipam::{AllocateRequest, BlockRecord, Ipam, IpamError, NetworkSpec, PoolSpec, block_key};
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

fn block(store: &dyn Store, spec: &NetworkSpec, cidr: &str) -> Option<BlockRecord> {
    store
        .get(&block_key(&spec.name, &cidr.parse().unwrap()))
        .unwrap()
        .map(|kv| serde_json::from_slice(&kv.value).unwrap())
}

#[test]
fn claims_one_block_per_family_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    let spec = NetworkSpec::new("net", vec![pool("10.9.0.0/25"), pool("fd00:9::/120")]);
    let ipam = Ipam::new(&store);
    ipam.ensure_network(&spec).unwrap();

    let b4 = ipam.claim_block(&spec, "n1", 4).unwrap();
    assert_eq!(b4, Some("10.9.0.0/26".parse().unwrap()));
    let b6 = ipam.claim_block(&spec, "n1", 6).unwrap();
    assert_eq!(b6, Some("fd00:9::/122".parse().unwrap()));
    let rec = block(&store, &spec, "10.9.0.0/26").expect("the block record");
    assert_eq!(rec.node.as_deref(), Some("n1"));
    assert!(rec.allocations.is_empty());
    assert_eq!(
        block(&store, &spec, "fd00:9::/122")
            .unwrap()
            .node
            .as_deref(),
        Some("n1")
    );

    // Already held: nothing more.
    assert_eq!(ipam.claim_block(&spec, "n1", 4).unwrap(), None);
    assert_eq!(ipam.claim_block(&spec, "n1", 6).unwrap(), None);

    // Another node gets the next block; a third finds none left.
    assert_eq!(
        ipam.claim_block(&spec, "n2", 4).unwrap(),
        Some("10.9.0.64/26".parse().unwrap())
    );
    assert!(matches!(
        ipam.claim_block(&spec, "n3", 4),
        Err(IpamError::Exhausted { family: 4, .. })
    ));

    // The first pod of n1 allocates in the block claimed for it.
    let a = ipam
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
    let got: Vec<String> = a.addresses.iter().map(|x| x.address.to_string()).collect();
    assert_eq!(got, vec!["10.9.0.1/25", "fd00:9::1/120"]);
}
