//! Weft's store: the only source of truth.
//!
//! One [`Store`] trait, shaped after etcd v3 (revisions, compare-and-swap transactions, prefix
//! lists), with backends:
//! - [`embedded::EmbeddedStore`]: one host, no daemon, safe across many processes (a file lock
//!   serialises writers; a redo journal makes multi-key commits atomic across crashes).
//! - [`etcd::EtcdStore`]: a cluster, over etcd v3 (a synchronous facade over etcd-client).
//!
//! Both have leases (keys that vanish when their lease expires or is revoked) and watches
//! (every change under a prefix, in revision order, resumable from a revision).
//!
//! With the `testing` feature, [`testing::EtcdServer`] starts a throwaway etcd for a test.
//!
//! Callers normally go through [`transact`]: the closure reads and writes through a [`Tx`]; the
//! embedded backend runs it under its lock, an optimistic backend runs it against a snapshot and
//! commits with a compare on every key it read, retrying on conflict. Either way the closure's
//! writes land all together or not at all.
#![forbid(unsafe_code)]

pub mod embedded;
pub mod etcd;
#[cfg(feature = "testing")]
pub mod testing;
mod tx;

pub use tx::{Tx, transact};

use std::path::PathBuf;
use std::time::Duration;

/// A key with its value and etcd-style revisions (`create_revision` is 0 for an absent key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Vec<u8>,
    pub create_revision: i64,
    pub mod_revision: i64,
}

/// A guard on a transaction: the key's mod revision must equal this one (0: the key is absent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compare {
    pub key: String,
    pub mod_revision: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Put {
        key: String,
        value: Vec<u8>,
    },
    /// A put that attaches the key to `lease`: the key goes when the lease expires or is
    /// revoked. A plain [`Op::Put`] on the key later detaches it again (etcd semantics).
    PutWithLease {
        key: String,
        value: Vec<u8>,
        lease: i64,
    },
    Delete {
        key: String,
    },
}

impl Op {
    pub fn key(&self) -> &str {
        match self {
            Op::Put { key, .. } | Op::PutWithLease { key, .. } | Op::Delete { key } => key,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EventKind {
    Put,
    Delete,
}

/// One change seen by a [`Watcher`]. For a put, `kv` is the key as written; for a delete, `kv`
/// holds the key and the revision of the delete as `mod_revision`, with an empty value and
/// `create_revision` 0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchEvent {
    pub kind: EventKind,
    pub kv: KeyValue,
}

/// A stream of [`WatchEvent`]s under a prefix, in revision order (the events of one commit share
/// its revision and come together, in no particular key order).
pub trait Watcher: Send {
    /// The next event, waiting at most `d`; `Ok(None)` when nothing came in time.
    /// [`StoreError::Compacted`] when the history this watcher needs is gone (it may come here
    /// rather than from [`Store::watch`]); [`StoreError::Unavailable`] when the store cannot be
    /// reached (the watcher tries again on the next call, from where it stopped).
    fn next_timeout(&mut self, d: Duration) -> Result<Option<WatchEvent>>;
}

/// All compares hold, then all ops apply, atomically.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Txn {
    pub compares: Vec<Compare>,
    pub ops: Vec<Op>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("store key {key:?} is corrupt: {msg}")]
    Corrupt { key: String, msg: String },
    #[error("store key {key:?} is not valid: {why}")]
    InvalidKey { key: String, why: &'static str },
    #[error("store value at {key:?} does not decode: {msg}")]
    Decode { key: String, msg: String },
    #[error("store is unavailable: {0}")]
    Unavailable(String),
    /// The revision asked for is no longer in the store's history; the payload is the oldest
    /// revision that still is (watch from it, or re-read the state and watch from now).
    #[error("store history before revision {0} is compacted")]
    Compacted(i64),
    /// The backend refused a request as invalid (too large, malformed): retrying will not help.
    #[error("store {endpoint} refused the request: {msg}")]
    Refused { endpoint: String, msg: String },
    #[error("store lease {0:#x} not found (expired or revoked)")]
    LeaseNotFound(i64),
    #[error("transaction kept conflicting after {0} attempts")]
    Conflict(u32),
    /// The transaction closure returned its own error; [`transact`] hands that error back.
    #[error("transaction aborted by its caller")]
    Aborted,
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

pub trait Store: Send + Sync {
    fn get(&self, key: &str) -> Result<Option<KeyValue>>;
    /// Every key that starts with `prefix`, in key order.
    fn list(&self, prefix: &str) -> Result<Vec<KeyValue>>;
    /// Applies `txn` if every compare holds; `Ok(false)` when one does not.
    fn commit(&self, txn: &Txn) -> Result<bool>;
    /// Runs `f` atomically (see [`transact`], which is the way to call this).
    fn transact_raw(&self, f: &mut dyn FnMut(&mut Tx<'_>) -> Result<()>) -> Result<()> {
        tx::optimistic(self, f)
    }
    /// A short name for messages ("embedded /var/lib/weft", "etcd http://...").
    fn describe(&self) -> String;
    /// The store's current revision (that of the last commit).
    fn revision(&self) -> Result<i64>;

    /// A new lease of about `ttl_secs` seconds (a backend may round it up: etcd 3.4 grants at
    /// least 2 s). Attach keys to it with [`Op::PutWithLease`] / [`Tx::put_with_lease`].
    fn grant_lease(&self, ttl_secs: i64) -> Result<i64>;
    /// Refreshes `lease` once to its full TTL; [`StoreError::LeaseNotFound`] when it is gone.
    fn keep_alive(&self, lease: i64) -> Result<()>;
    /// Ends `lease` now and deletes every key attached to it (one commit).
    fn revoke_lease(&self, lease: i64) -> Result<()>;

    /// Every change to keys starting with `prefix`, from `from_revision` on (inclusive; 0: from
    /// the next commit). A watcher made again from the last revision it delivered + 1 misses
    /// nothing and repeats nothing.
    fn watch(&self, prefix: &str, from_revision: i64) -> Result<Box<dyn Watcher>>;
}

/// The key rules every backend enforces, so that a key valid on one is valid on all: absolute,
/// '/'-separated, no empty, '.' or '..' segment, no segment starting with '=', at most 200 bytes
/// a segment, no whitespace or control characters.
pub(crate) fn validate_key(key: &str) -> Result<()> {
    let bad = |why| {
        Err(StoreError::InvalidKey {
            key: key.to_string(),
            why,
        })
    };
    let Some(rest) = key.strip_prefix('/') else {
        return bad("a key starts with '/'");
    };
    for seg in rest.split('/') {
        if seg.is_empty() {
            return bad("a key has no empty segment");
        }
        if seg == "." || seg == ".." {
            return bad("a key segment is not '.' or '..'");
        }
        if seg.starts_with('=') {
            return bad("a key segment does not start with '='");
        }
        if seg.len() > 200 {
            return bad("a key segment is at most 200 bytes");
        }
        // The embedded journal is line- and space-separated: such a key could forge its lines.
        if seg.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return bad("a key has no spaces or control characters");
        }
    }
    Ok(())
}

/// A list or watch prefix must be absolute.
pub(crate) fn validate_prefix(prefix: &str) -> Result<()> {
    if !prefix.starts_with('/') {
        return Err(StoreError::InvalidKey {
            key: prefix.to_string(),
            why: "a prefix starts with '/'",
        });
    }
    if prefix.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(StoreError::InvalidKey {
            key: prefix.to_string(),
            why: "a prefix has no spaces or control characters",
        });
    }
    Ok(())
}
