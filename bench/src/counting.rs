//! A [`Store`] wrapper that counts and times the calls that reach the backend.
//!
//! It overrides nothing but the leaf calls, so transactions run exactly as on the wrapped
//! store: `transact_raw` is the trait's default (optimistic: snapshot `get`/`list`, one
//! `commit` comparing every key read, backoff and retry on conflict), which is also what
//! [`weft_store::etcd::EtcdStore`] uses. Each counted call is one etcd round trip.
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use weft_store::{KeyValue, Result, Store, Txn, Watcher};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub gets: u64,
    pub lists: u64,
    pub commits: u64,
    /// Commits refused because a compared key had changed (each one means a retry).
    pub conflicts: u64,
    pub get_ns: u64,
    pub list_ns: u64,
    pub commit_ns: u64,
}

impl Counts {
    pub fn round_trips(&self) -> u64 {
        self.gets + self.lists + self.commits
    }

    pub fn store_time(&self) -> Duration {
        Duration::from_nanos(self.get_ns + self.list_ns + self.commit_ns)
    }

    pub fn minus(&self, o: &Counts) -> Counts {
        Counts {
            gets: self.gets - o.gets,
            lists: self.lists - o.lists,
            commits: self.commits - o.commits,
            conflicts: self.conflicts - o.conflicts,
            get_ns: self.get_ns - o.get_ns,
            list_ns: self.list_ns - o.list_ns,
            commit_ns: self.commit_ns - o.commit_ns,
        }
    }

    pub fn plus(&self, o: &Counts) -> Counts {
        Counts {
            gets: self.gets + o.gets,
            lists: self.lists + o.lists,
            commits: self.commits + o.commits,
            conflicts: self.conflicts + o.conflicts,
            get_ns: self.get_ns + o.get_ns,
            list_ns: self.list_ns + o.list_ns,
            commit_ns: self.commit_ns + o.commit_ns,
        }
    }
}

pub struct Counting<S> {
    inner: S,
    gets: AtomicU64,
    lists: AtomicU64,
    commits: AtomicU64,
    conflicts: AtomicU64,
    get_ns: AtomicU64,
    list_ns: AtomicU64,
    commit_ns: AtomicU64,
}

fn since(t: Instant) -> u64 {
    t.elapsed().as_nanos() as u64
}

impl<S: Store> Counting<S> {
    pub fn new(inner: S) -> Self {
        Counting {
            inner,
            gets: AtomicU64::new(0),
            lists: AtomicU64::new(0),
            commits: AtomicU64::new(0),
            conflicts: AtomicU64::new(0),
            get_ns: AtomicU64::new(0),
            list_ns: AtomicU64::new(0),
            commit_ns: AtomicU64::new(0),
        }
    }

    /// The wrapped store (calls through it are not counted).
    pub fn inner(&self) -> &S {
        &self.inner
    }

    pub fn counts(&self) -> Counts {
        Counts {
            gets: self.gets.load(Relaxed),
            lists: self.lists.load(Relaxed),
            commits: self.commits.load(Relaxed),
            conflicts: self.conflicts.load(Relaxed),
            get_ns: self.get_ns.load(Relaxed),
            list_ns: self.list_ns.load(Relaxed),
            commit_ns: self.commit_ns.load(Relaxed),
        }
    }
}

impl<S: Store> Store for Counting<S> {
    fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        let t = Instant::now();
        let r = self.inner.get(key);
        self.get_ns.fetch_add(since(t), Relaxed);
        self.gets.fetch_add(1, Relaxed);
        r
    }

    fn list(&self, prefix: &str) -> Result<Vec<KeyValue>> {
        let t = Instant::now();
        let r = self.inner.list(prefix);
        self.list_ns.fetch_add(since(t), Relaxed);
        self.lists.fetch_add(1, Relaxed);
        r
    }

    fn commit(&self, txn: &Txn) -> Result<bool> {
        let t = Instant::now();
        let r = self.inner.commit(txn);
        self.commit_ns.fetch_add(since(t), Relaxed);
        self.commits.fetch_add(1, Relaxed);
        if matches!(r, Ok(false)) {
            self.conflicts.fetch_add(1, Relaxed);
        }
        r
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }

    fn revision(&self) -> Result<i64> {
        self.inner.revision()
    }

    fn grant_lease(&self, ttl_secs: i64) -> Result<i64> {
        self.inner.grant_lease(ttl_secs)
    }

    fn keep_alive(&self, lease: i64) -> Result<()> {
        self.inner.keep_alive(lease)
    }

    fn revoke_lease(&self, lease: i64) -> Result<()> {
        self.inner.revoke_lease(lease)
    }

    fn watch(&self, prefix: &str, from_revision: i64) -> Result<Box<dyn Watcher>> {
        self.inner.watch(prefix, from_revision)
    }
}
