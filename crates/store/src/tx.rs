use std::collections::BTreeMap;

use crate::{Compare, Op, Result, Store, StoreError, Txn};

/// Where a transaction reads from: the store under a lock, or a snapshot.
pub(crate) trait Reader {
    /// The value and mod revision of `key` (revision 0 when absent).
    fn read(&self, key: &str) -> Result<Option<(Vec<u8>, i64)>>;
    fn read_prefix(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>, i64)>>;
}

/// A transaction in progress: reads see the transaction's own writes.
pub struct Tx<'a> {
    reader: &'a dyn Reader,
    reads: BTreeMap<String, i64>,
    /// Per key: the new value and its lease (0: none), or `None` for a delete.
    writes: BTreeMap<String, Option<(Vec<u8>, i64)>>,
}

impl<'a> Tx<'a> {
    pub(crate) fn new(reader: &'a dyn Reader) -> Self {
        Tx {
            reader,
            reads: BTreeMap::new(),
            writes: BTreeMap::new(),
        }
    }

    pub fn get(&mut self, key: &str) -> Result<Option<Vec<u8>>> {
        if let Some(w) = self.writes.get(key) {
            return Ok(w.as_ref().map(|(v, _)| v.clone()));
        }
        let got = self.reader.read(key)?;
        // The first read of a key is what the transaction decided on: keep its revision.
        self.reads
            .entry(key.to_string())
            .or_insert(got.as_ref().map_or(0, |(_, rev)| *rev));
        Ok(got.map(|(v, _)| v))
    }

    /// Keys under `prefix` with their values, this transaction's writes included.
    /// On an optimistic backend a key created under the prefix by someone else after this read
    /// is not detected: never conclude "absent" from a list, `get` the key.
    pub fn list(&mut self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>> {
        let listed = self.list_unguarded(prefix)?;
        Ok(listed
            .into_iter()
            .map(|(k, v, rev)| {
                self.reads.entry(k.clone()).or_insert(rev);
                (k, v)
            })
            .collect())
    }

    /// Keys under `prefix` with values and mod revisions (0 for this transaction's own new
    /// keys), WITHOUT guarding them: the commit does not fail when one of them changes
    /// meanwhile. Call [`Tx::guard`] for those the transaction's decision depends on. This keeps
    /// unrelated writers (another node's allocations in its own blocks) from conflicting.
    pub fn list_unguarded(&mut self, prefix: &str) -> Result<Vec<(String, Vec<u8>, i64)>> {
        let mut out: BTreeMap<String, (Vec<u8>, i64)> = BTreeMap::new();
        for (k, v, rev) in self.reader.read_prefix(prefix)? {
            out.insert(k, (v, rev));
        }
        for (k, w) in self.writes.range(prefix.to_string()..) {
            if !k.starts_with(prefix) {
                break;
            }
            match w {
                Some((v, _)) => {
                    let rev = out.get(k).map_or(0, |(_, r)| *r);
                    out.insert(k.clone(), (v.clone(), rev));
                }
                None => {
                    out.remove(k);
                }
            }
        }
        Ok(out.into_iter().map(|(k, (v, r))| (k, v, r)).collect())
    }

    /// Makes the commit conditional on `key` still having `mod_revision` (0: still absent), as
    /// if it had been read with [`Tx::get`]. The first guard of a key wins.
    pub fn guard(&mut self, key: &str, mod_revision: i64) {
        self.reads.entry(key.to_string()).or_insert(mod_revision);
    }

    pub fn put(&mut self, key: &str, value: Vec<u8>) {
        self.writes.insert(key.to_string(), Some((value, 0)));
    }

    /// Puts `key` attached to `lease` (see [`crate::Op::PutWithLease`]).
    pub fn put_with_lease(&mut self, key: &str, value: Vec<u8>, lease: i64) {
        self.writes.insert(key.to_string(), Some((value, lease)));
    }

    pub fn delete(&mut self, key: &str) {
        self.writes.insert(key.to_string(), None);
    }

    pub fn get_json<T: serde::de::DeserializeOwned>(&mut self, key: &str) -> Result<Option<T>> {
        match self.get(key)? {
            None => Ok(None),
            Some(bytes) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|e| StoreError::Decode {
                        key: key.to_string(),
                        msg: e.to_string(),
                    })
            }
        }
    }

    pub fn list_json<T: serde::de::DeserializeOwned>(
        &mut self,
        prefix: &str,
    ) -> Result<Vec<(String, T)>> {
        self.list(prefix)?
            .into_iter()
            .map(|(k, v)| match serde_json::from_slice(&v) {
                Ok(t) => Ok((k, t)),
                Err(e) => Err(StoreError::Decode {
                    key: k,
                    msg: e.to_string(),
                }),
            })
            .collect()
    }

    pub fn put_json<T: serde::Serialize>(&mut self, key: &str, value: &T) {
        // Serialising plain data structs into a Vec cannot fail.
        let bytes = serde_json::to_vec(value).unwrap_or_default();
        self.put(key, bytes);
    }

    pub(crate) fn has_writes(&self) -> bool {
        !self.writes.is_empty()
    }

    pub(crate) fn into_txn(self) -> Txn {
        Txn {
            compares: self
                .reads
                .into_iter()
                .map(|(key, mod_revision)| Compare { key, mod_revision })
                .collect(),
            ops: self
                .writes
                .into_iter()
                .map(|(key, w)| match w {
                    Some((value, 0)) => Op::Put { key, value },
                    Some((value, lease)) => Op::PutWithLease { key, value, lease },
                    None => Op::Delete { key },
                })
                .collect(),
        }
    }
}

/// Runs `f` atomically against `store` and returns what it returned. The closure may run more
/// than once (optimistic backends retry on conflict), so it must not have side effects outside
/// the transaction.
pub fn transact<R, E: From<StoreError>>(
    store: &dyn Store,
    mut f: impl FnMut(&mut Tx<'_>) -> std::result::Result<R, E>,
) -> std::result::Result<R, E> {
    let mut out: Option<std::result::Result<R, E>> = None;
    let ran = store.transact_raw(&mut |tx| match f(tx) {
        Ok(v) => {
            out = Some(Ok(v));
            Ok(())
        }
        Err(e) => {
            out = Some(Err(e));
            Err(StoreError::Aborted)
        }
    });
    match (ran, out) {
        (Ok(()), Some(Ok(v))) => Ok(v),
        (Err(StoreError::Aborted), Some(Err(e))) => Err(e),
        (Err(e), _) => Err(e.into()),
        (Ok(()), _) => {
            Err(StoreError::Unavailable("transaction finished without running".into()).into())
        }
    }
}

const OPTIMISTIC_ATTEMPTS: u32 = 32;

/// A random pause before retry `attempt` (1, 2, ...): up to 1 ms doubling to 64 ms, so that
/// contenders that keep colliding drift apart.
fn backoff(attempt: u32) {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(attempt);
    let cap_us = 1000u64 << attempt.min(6);
    std::thread::sleep(std::time::Duration::from_micros(h.finish() % cap_us));
}

struct SnapshotReader<'a, S: ?Sized>(&'a S);

impl<S: Store + ?Sized> Reader for SnapshotReader<'_, S> {
    fn read(&self, key: &str) -> Result<Option<(Vec<u8>, i64)>> {
        Ok(self.0.get(key)?.map(|kv| (kv.value, kv.mod_revision)))
    }
    fn read_prefix(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>, i64)>> {
        Ok(self
            .0
            .list(prefix)?
            .into_iter()
            .map(|kv| (kv.key, kv.value, kv.mod_revision))
            .collect())
    }
}

/// Read, compute, commit with a compare on every key read; retry on conflict.
pub(crate) fn optimistic<S: Store + ?Sized>(
    store: &S,
    f: &mut dyn FnMut(&mut Tx<'_>) -> Result<()>,
) -> Result<()> {
    let reader = SnapshotReader(store);
    for attempt in 0..OPTIMISTIC_ATTEMPTS {
        if attempt > 0 {
            backoff(attempt);
        }
        let mut tx = Tx::new(&reader);
        f(&mut tx)?;
        if !tx.has_writes() {
            return Ok(());
        }
        if store.commit(&tx.into_txn())? {
            return Ok(());
        }
    }
    Err(StoreError::Conflict(OPTIMISTIC_ATTEMPTS))
}
