//! Nodes never contend: an allocation guards only the blocks it writes, so another node's
//! allocation in its own block, committed in between, does not make it retry.
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

use weft_ipam::{AllocateRequest, Ipam, NetworkSpec, PoolSpec};
use weft_store::embedded::EmbeddedStore;
use weft_store::{KeyValue, Result, Store, Txn, Watcher};

/// The embedded store driven through the optimistic path (like etcd), with a hook that runs
/// just before each commit and a count of commits refused.
type Hook<'a> = Box<dyn FnOnce() + Send + 'a>;

struct Interleaved<'a> {
    inner: &'a EmbeddedStore,
    before_commit: Mutex<Option<Hook<'a>>>,
    /// Runs before the first list of exactly this prefix.
    before_list: Mutex<Option<(&'static str, Hook<'a>)>>,
    refused: AtomicU32,
}

impl Store for Interleaved<'_> {
    fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        self.inner.get(key)
    }
    fn list(&self, prefix: &str) -> Result<Vec<KeyValue>> {
        let hook = {
            let mut slot = self.before_list.lock().unwrap();
            match slot.take() {
                Some((p, f)) if p == prefix => Some(f),
                other => {
                    *slot = other;
                    None
                }
            }
        };
        if let Some(f) = hook {
            f();
        }
        let got = self.inner.list(prefix);
        eprintln!(
            "LIST {prefix} -> {:?}",
            got.as_ref()
                .map(|v| v.iter().map(|kv| kv.key.clone()).collect::<Vec<_>>())
        );
        got
    }
    fn commit(&self, txn: &Txn) -> Result<bool> {
        if let Some(hook) = self.before_commit.lock().unwrap().take() {
            hook();
        }
        let ok = self.inner.commit(txn)?;
        if !ok {
            self.refused.fetch_add(1, Ordering::SeqCst);
        }
        Ok(ok)
    }
    fn describe(&self) -> String {
        "interleaved".into()
    }
    fn revision(&self) -> Result<i64> {
        self.inner.revision()
    }
    fn grant_lease(&self, ttl: i64) -> Result<i64> {
        self.inner.grant_lease(ttl)
    }
    fn keep_alive(&self, lease: i64) -> Result<()> {
        self.inner.keep_alive(lease)
    }
    fn revoke_lease(&self, lease: i64) -> Result<()> {
        self.inner.revoke_lease(lease)
    }
    fn watch(&self, prefix: &str, from: i64) -> Result<Box<dyn Watcher>> {
        self.inner.watch(prefix, from)
    }
}

fn req(cid: &str, node: &str) -> AllocateRequest {
    AllocateRequest {
        container_id: cid.into(),
        ifname: "eth0".into(),
        node: node.into(),
        ..Default::default()
    }
}

#[test]
fn another_nodes_allocation_in_its_own_block_does_not_conflict() {
    let dir = tempfile::tempdir().unwrap();
    let inner = EmbeddedStore::open(dir.path()).unwrap();
    let pool = PoolSpec {
        subnet: "198.18.0.0/24".parse().unwrap(),
        range_start: None,
        range_end: None,
        exclude: vec![],
        gateway: None,
    };
    let spec = NetworkSpec::new("n", vec![pool]);
    // Both nodes hold a block already.
    let plain = Ipam::new(&inner);
    plain.allocate(&spec, &req("a0", "node-a")).unwrap();
    plain.allocate(&spec, &req("b0", "node-b")).unwrap();

    let store = Interleaved {
        inner: &inner,
        before_commit: Mutex::new(None),
        before_list: Mutex::new(None),
        refused: AtomicU32::new(0),
    };
    let (spec2, inner2) = (spec.clone(), &inner);
    *store.before_commit.lock().unwrap() = Some(Box::new(move || {
        Ipam::new(inner2)
            .allocate(&spec2, &req("a1", "node-a"))
            .unwrap();
    }));
    let b1 = Ipam::new(&store)
        .allocate(&spec, &req("b1", "node-b"))
        .unwrap();
    assert_eq!(
        store.refused.load(Ordering::SeqCst),
        0,
        "node-b's commit conflicted with node-a's block"
    );
    let a1 = plain.get("n", "a1", "eth0").unwrap().unwrap();
    assert_ne!(a1.addresses[0].addr(), b1.addresses[0].address.addr());

    // Writers of the SAME block do conflict, and the retry still gives distinct addresses.
    let (spec3, inner3) = (spec.clone(), &inner);
    *store.before_commit.lock().unwrap() = Some(Box::new(move || {
        Ipam::new(inner3)
            .allocate(&spec3, &req("b2", "node-b"))
            .unwrap();
    }));
    let b3 = Ipam::new(&store)
        .allocate(&spec, &req("b3", "node-b"))
        .unwrap();
    assert_eq!(
        store.refused.load(Ordering::SeqCst),
        1,
        "a same-block race must be caught"
    );
    let b2 = plain.get("n", "b2", "eth0").unwrap().unwrap();
    assert_ne!(b2.addresses[0].addr(), b3.addresses[0].address.addr());
}

#[test]
fn two_nodes_registering_one_network_at_once_is_not_an_overlap() {
    let dir = tempfile::tempdir().unwrap();
    let inner = EmbeddedStore::open(dir.path()).unwrap();
    let pool = PoolSpec {
        subnet: "198.18.0.0/24".parse().unwrap(),
        range_start: None,
        range_end: None,
        exclude: vec![],
        gateway: None,
    };
    let spec = NetworkSpec::new("n", vec![pool]);
    // Node A registers the network between node B's read of the (absent) network key and B's
    // list of all networks: that list then holds the very network B is registering.
    let store = Interleaved {
        inner: &inner,
        before_commit: Mutex::new(None),
        before_list: Mutex::new(None),
        refused: AtomicU32::new(0),
    };
    let (spec2, inner2) = (spec.clone(), &inner);
    *store.before_list.lock().unwrap() = Some((
        "/weft/v1/networks/",
        Box::new(move || {
            Ipam::new(inner2)
                .allocate(&spec2, &req("a0", "node-a"))
                .unwrap();
        }),
    ));
    let got = Ipam::new(&store).allocate(&spec, &req("b0", "node-b"));
    assert!(got.is_ok(), "{:?}", got.err());
    assert_eq!(
        store.refused.load(Ordering::SeqCst),
        1,
        "the first attempt must fail its guard and retry"
    );
}
