//! Weft's store: the only source of truth.
//!
//! One [`Store`] trait, shaped after etcd v3 (revisions, compare-and-swap transactions, prefix
//! lists), with backends:
//! - [`embedded::EmbeddedStore`]: one host, no daemon, safe across many processes (a file lock
//!   serialises writers; a redo journal makes multi-key commits atomic across crashes).
//!
//! Callers normally go through [`transact`]: the closure reads and writes through a [`Tx`]; the
//! embedded backend runs it under its lock, an optimistic backend runs it against a snapshot and
//! commits with a compare on every key it read, retrying on conflict. Either way the closure's
//! writes land all together or not at all.
#![forbid(unsafe_code)]

pub mod embedded;
mod tx;

pub use tx::{Tx, transact};

use std::path::PathBuf;

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
    Put { key: String, value: Vec<u8> },
    Delete { key: String },
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
}
