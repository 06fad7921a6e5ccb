//! The etcd v3 backend: a synchronous [`Store`] over etcd-client (async).
//!
//! [`EtcdStore`] owns a small tokio runtime (multi-thread, one worker) and blocks the calling
//! thread on each request, bounded by [`EtcdOptions::request_timeout`]. Call it from plain
//! threads (the CNI plugin, test threads, several threads at once); never from inside a tokio
//! runtime (an async caller wraps it in `spawn_blocking`): there it refuses with an error.
//!
//! When etcd is down, unreachable or slow, every call fails with [`StoreError::Unavailable`]
//! naming the endpoints, within the request timeout. The connection is made lazily and made
//! again after a failure, so the same `EtcdStore` works again once etcd is back.
//!
//! Mapping: `commit` is one etcd Txn (compares on `mod_revision`, which etcd reads as 0 for an
//! absent key; puts and deletes); `transact` is optimistic (snapshot reads, commit comparing
//! every key read, retry on conflict); `list` is a prefix range; leases and watches are etcd's.
use std::collections::{BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{
    Client, Compare as EtcdCompare, CompareOp, ConnectOptions, EventType, GetOptions, PutOptions,
    TxnOp, WatchOptions, WatchStream,
};

use crate::{
    EventKind, KeyValue, Op, Result, Store, StoreError, Txn, WatchEvent, Watcher, validate_key,
    validate_prefix,
};

/// Largest response this client accepts (a prefix list of many large values).
const MAX_RESPONSE: usize = 256 << 20;

#[derive(Debug, Clone)]
pub struct EtcdOptions {
    /// Bound on setting up a connection (TCP connect).
    pub connect_timeout: Duration,
    /// Bound on each call, connecting included: past it the call fails with
    /// [`StoreError::Unavailable`].
    pub request_timeout: Duration,
    /// Prepended to every key (for example `/cluster-a`), and taken off keys handed back: several
    /// stores share one etcd without seeing each other's keys. A valid key itself.
    pub prefix: Option<String>,
}

impl Default for EtcdOptions {
    fn default() -> Self {
        EtcdOptions {
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(2),
            prefix: None,
        }
    }
}

struct Inner {
    // Always `Some` until drop (taken there to shut down without blocking).
    rt: Option<tokio::runtime::Runtime>,
    endpoints: Vec<String>,
    opts: EtcdOptions,
    prefix: String,
    /// The client, made on first use and dropped after a transport failure or timeout.
    client: Mutex<Option<Client>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            // Never blocks, so dropping the store inside an async context is fine too.
            rt.shutdown_background();
        }
    }
}

pub struct EtcdStore {
    inner: Arc<Inner>,
}

/// What went wrong in one etcd call, before it becomes a [`StoreError`].
enum CallError {
    TimedOut,
    Etcd(etcd_client::Error),
    Store(StoreError),
}

impl From<etcd_client::Error> for CallError {
    fn from(e: etcd_client::Error) -> Self {
        CallError::Etcd(e)
    }
}

impl From<StoreError> for CallError {
    fn from(e: StoreError) -> Self {
        CallError::Store(e)
    }
}

type CallResult<T> = std::result::Result<T, CallError>;

impl Inner {
    fn endpoints_str(&self) -> String {
        self.endpoints.join(",")
    }

    fn rt(&self) -> Result<&tokio::runtime::Runtime> {
        if tokio::runtime::Handle::try_current().is_ok() {
            return Err(StoreError::Unavailable(format!(
                "etcd {}: the store was called from inside a tokio runtime; call it from a \
                 plain thread (spawn_blocking)",
                self.endpoints_str()
            )));
        }
        self.rt
            .as_ref()
            .ok_or_else(|| StoreError::Unavailable("etcd store is shut down".into()))
    }

    async fn client(&self) -> CallResult<Client> {
        if let Some(c) = self.lock_client().as_ref() {
            return Ok(c.clone());
        }
        let copts = ConnectOptions::new()
            .with_connect_timeout(self.opts.connect_timeout)
            .with_timeout(self.opts.request_timeout)
            .with_keep_alive(Duration::from_secs(5), self.opts.request_timeout);
        // No I/O yet: the channel connects on first request (and again after a failure).
        let c = Client::connect(&self.endpoints, Some(copts)).await?;
        *self.lock_client() = Some(c.clone());
        Ok(c)
    }

    fn lock_client(&self) -> std::sync::MutexGuard<'_, Option<Client>> {
        self.client.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Turns a failed call into a store error naming the endpoints and what was being done.
    fn error(&self, what: &str, e: CallError) -> StoreError {
        let eps = self.endpoints_str();
        let unavailable = |msg: String| {
            // Start over with a new connection next time.
            *self.lock_client() = None;
            StoreError::Unavailable(format!("etcd {eps}: {what}: {msg}"))
        };
        match e {
            CallError::Store(e) => e,
            CallError::TimedOut => {
                unavailable(format!("no answer within {:?}", self.opts.request_timeout))
            }
            CallError::Etcd(e) => {
                use etcd_client::Error as E;
                match e {
                    E::GRpcStatus(status) => {
                        let msg = status.message().to_string();
                        if msg.contains("lease not found") {
                            return StoreError::Refused {
                                endpoint: eps,
                                msg: format!("{what}: {msg}"),
                            };
                        }
                        // gRPC codes: CANCELLED 1, UNKNOWN 2 (also a dropped connection),
                        // DEADLINE_EXCEEDED 4, RESOURCE_EXHAUSTED 8 (etcd: too many
                        // requests), ABORTED 10, UNAVAILABLE 14 (down, no leader).
                        match status.code() as i32 {
                            1 | 2 | 4 | 8 | 10 | 14 => unavailable(msg),
                            _ => StoreError::Refused {
                                endpoint: eps,
                                msg: format!("{what}: {msg}"),
                            },
                        }
                    }
                    E::TransportError(_) | E::IoError(_) | E::WatchError(_) => {
                        unavailable(e.to_string())
                    }
                    E::LeaseKeepAliveError(_) => unavailable(e.to_string()),
                    other => StoreError::Refused {
                        endpoint: eps,
                        msg: format!("{what}: {other}"),
                    },
                }
            }
        }
    }

    /// Runs `f` on the runtime with a fresh client handle, bounded by the request timeout.
    fn call<T, F, Fut>(&self, what: impl FnOnce() -> String, f: F) -> Result<T>
    where
        F: FnOnce(Client) -> Fut,
        Fut: std::future::Future<Output = CallResult<T>>,
    {
        self.call_within(self.opts.request_timeout, what, f)
    }

    fn call_within<T, F, Fut>(
        &self,
        limit: Duration,
        what: impl FnOnce() -> String,
        f: F,
    ) -> Result<T>
    where
        F: FnOnce(Client) -> Fut,
        Fut: std::future::Future<Output = CallResult<T>>,
    {
        let rt = self.rt()?;
        let r = rt.block_on(async {
            match tokio::time::timeout(limit, async {
                let c = self.client().await?;
                f(c).await
            })
            .await
            {
                Ok(r) => r,
                Err(_) => Err(CallError::TimedOut),
            }
        });
        r.map_err(|e| self.error(&what(), e))
    }

    fn full(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// Our key for an etcd key (`None` for one outside the prefix or not UTF-8).
    fn strip(&self, key: &[u8]) -> Option<String> {
        let k = std::str::from_utf8(key).ok()?;
        k.strip_prefix(self.prefix.as_str()).map(str::to_string)
    }

    fn kv(&self, kv: &etcd_client::KeyValue) -> Option<KeyValue> {
        Some(KeyValue {
            key: self.strip(kv.key())?,
            value: kv.value().to_vec(),
            create_revision: kv.create_revision(),
            mod_revision: kv.mod_revision(),
        })
    }
}

impl EtcdStore {
    /// A store on the etcd cluster at `endpoints` (`http://host:port`). Does not contact etcd:
    /// the first call does (so a node can start before etcd is up); only bad arguments fail
    /// here.
    ///
    /// Must not be called from inside a tokio runtime (it builds one of its own).
    pub fn connect(endpoints: &[String], opts: EtcdOptions) -> Result<EtcdStore> {
        if endpoints.is_empty() {
            return Err(StoreError::Unavailable("etcd: no endpoints given".into()));
        }
        for ep in endpoints {
            if !(ep.starts_with("http://") || ep.starts_with("https://"))
                || ep.chars().any(char::is_whitespace)
            {
                return Err(StoreError::Refused {
                    endpoint: ep.clone(),
                    msg: "an etcd endpoint is a URL, http://host:port".into(),
                });
            }
        }
        let prefix = match &opts.prefix {
            None => String::new(),
            Some(p) => {
                validate_key(p)?;
                p.clone()
            }
        };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("weft-etcd")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Io {
                path: "tokio runtime".into(),
                source: e,
            })?;
        let inner = Arc::new(Inner {
            rt: Some(rt),
            endpoints: endpoints.to_vec(),
            opts,
            prefix,
            client: Mutex::new(None),
        });
        // Build the client now (no I/O), so argument errors show here.
        let rt = inner.rt()?;
        rt.block_on(inner.client())
            .map_err(|e| inner.error("connecting", e))?;
        Ok(EtcdStore { inner })
    }

    /// The endpoints, comma-separated.
    pub fn endpoints(&self) -> String {
        self.inner.endpoints_str()
    }

    /// Compacts etcd's history before `rev` (for the whole cluster, not only this prefix): a
    /// watch from an older revision then fails with [`StoreError::Compacted`].
    pub fn compact(&self, rev: i64) -> Result<()> {
        self.inner.call(
            || format!("compacting to revision {rev}"),
            |mut c| async move {
                c.compact(
                    rev,
                    Some(etcd_client::CompactionOptions::new().with_physical()),
                )
                .await?;
                Ok(())
            },
        )
    }
}

fn lease_error(inner: &Inner, lease: i64, e: StoreError) -> StoreError {
    match e {
        StoreError::Refused { msg, .. } if msg.contains("lease not found") => {
            StoreError::LeaseNotFound(lease)
        }
        e => {
            let _ = inner;
            e
        }
    }
}

impl Store for EtcdStore {
    fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        validate_key(key)?;
        let inner = &self.inner;
        let full = inner.full(key);
        let resp = inner.call(
            || format!("get {key}"),
            |c| async move {
                let mut kv = c.kv_client().max_decoding_message_size(MAX_RESPONSE);
                Ok(kv.get(full, None).await?)
            },
        )?;
        Ok(resp.kvs().first().and_then(|kv| inner.kv(kv)))
    }

    fn list(&self, prefix: &str) -> Result<Vec<KeyValue>> {
        validate_prefix(prefix)?;
        let inner = &self.inner;
        let full = inner.full(prefix);
        let resp = inner.call(
            || format!("list {prefix}"),
            |c| async move {
                let mut kv = c.kv_client().max_decoding_message_size(MAX_RESPONSE);
                Ok(kv.get(full, Some(GetOptions::new().with_prefix())).await?)
            },
        )?;
        // etcd sorts a range by key bytes, as the embedded store does.
        Ok(resp.kvs().iter().filter_map(|kv| inner.kv(kv)).collect())
    }

    fn commit(&self, txn: &Txn) -> Result<bool> {
        for c in &txn.compares {
            validate_key(&c.key)?;
        }
        for op in &txn.ops {
            validate_key(op.key())?;
        }
        let inner = &self.inner;
        let compares: Vec<EtcdCompare> = txn
            .compares
            .iter()
            .map(|c| {
                EtcdCompare::mod_revision(inner.full(&c.key), CompareOp::Equal, c.mod_revision)
            })
            .collect();
        // etcd refuses a key named twice in one txn: the last op on a key wins, as embedded.
        let mut seen = BTreeSet::new();
        let mut ops = Vec::with_capacity(txn.ops.len());
        let mut lease_used = 0;
        for op in txn.ops.iter().rev() {
            if !seen.insert(op.key()) {
                continue;
            }
            ops.push(match op {
                Op::Put { key, value } => TxnOp::put(inner.full(key), value.clone(), None),
                Op::PutWithLease { key, value, lease } => {
                    lease_used = *lease;
                    TxnOp::put(
                        inner.full(key),
                        value.clone(),
                        Some(PutOptions::new().with_lease(*lease)),
                    )
                }
                Op::Delete { key } => TxnOp::delete(inner.full(key), None),
            });
        }
        ops.reverse();
        let etxn = etcd_client::Txn::new().when(compares).and_then(ops);
        let first = txn.ops.first().map_or("", |op| op.key()).to_string();
        let n = txn.ops.len();
        let resp = inner
            .call(
                || format!("commit of {n} ops ({first} ...)"),
                |mut c| async move { Ok(c.txn(etxn).await?) },
            )
            .map_err(|e| lease_error(inner, lease_used, e))?;
        Ok(resp.succeeded())
    }

    fn describe(&self) -> String {
        match &self.inner.opts.prefix {
            None => format!("etcd {}", self.inner.endpoints_str()),
            Some(p) => format!("etcd {} prefix {p}", self.inner.endpoints_str()),
        }
    }

    fn revision(&self) -> Result<i64> {
        let inner = &self.inner;
        let probe = if inner.prefix.is_empty() {
            "/".to_string()
        } else {
            inner.prefix.clone()
        };
        let resp = inner.call(
            || "reading the revision".into(),
            |mut c| async move {
                Ok(c.get(probe, Some(GetOptions::new().with_keys_only()))
                    .await?)
            },
        )?;
        resp.header()
            .map(|h| h.revision())
            .ok_or_else(|| StoreError::Refused {
                endpoint: inner.endpoints_str(),
                msg: "a response without a header".into(),
            })
    }

    fn grant_lease(&self, ttl_secs: i64) -> Result<i64> {
        let resp = self.inner.call(
            || format!("granting a lease of {ttl_secs} s"),
            |mut c| async move { Ok(c.lease_grant(ttl_secs.max(1), None).await?) },
        )?;
        Ok(resp.id())
    }

    fn keep_alive(&self, lease: i64) -> Result<()> {
        let inner = &self.inner;
        inner
            .call(
                || format!("keeping lease {lease:#x} alive"),
                |mut c| async move {
                    match c.lease_keep_alive(lease).await {
                        Ok(_) => Ok(()),
                        Err(etcd_client::Error::LeaseKeepAliveError(m))
                            if m.contains("not found") =>
                        {
                            Err(CallError::Store(StoreError::LeaseNotFound(lease)))
                        }
                        Err(e) => Err(e.into()),
                    }
                },
            )
            .map_err(|e| lease_error(inner, lease, e))
    }

    fn revoke_lease(&self, lease: i64) -> Result<()> {
        let inner = &self.inner;
        inner
            .call(
                || format!("revoking lease {lease:#x}"),
                |mut c| async move {
                    c.lease_revoke(lease).await?;
                    Ok(())
                },
            )
            .map_err(|e| lease_error(inner, lease, e))
    }

    fn watch(&self, prefix: &str, from_revision: i64) -> Result<Box<dyn Watcher>> {
        validate_prefix(prefix)?;
        let from = if from_revision <= 0 {
            self.revision()? + 1
        } else {
            from_revision
        };
        let mut w = EtcdWatcher {
            inner: self.inner.clone(),
            prefix: prefix.to_string(),
            next_rev: from,
            stream: None,
            queue: VecDeque::new(),
        };
        w.open(self.inner.opts.request_timeout)?;
        Ok(Box::new(w))
    }
}

/// An etcd watch; made again from the next revision after a broken stream.
struct EtcdWatcher {
    inner: Arc<Inner>,
    prefix: String,
    /// The revision to start from when (re)creating the etcd watch.
    next_rev: i64,
    stream: Option<WatchStream>,
    queue: VecDeque<WatchEvent>,
}

impl EtcdWatcher {
    /// Creates the etcd watch and waits for etcd to confirm it.
    fn open(&mut self, limit: Duration) -> Result<()> {
        let full = self.inner.full(&self.prefix);
        let rev = self.next_rev;
        let prefix = self.prefix.clone();
        let stream = self.inner.call_within(
            limit,
            || format!("watching {prefix} from revision {rev}"),
            |mut c| async move {
                let opts = WatchOptions::new().with_prefix().with_start_revision(rev);
                let mut s = c.watch(full, Some(opts)).await?;
                match s.message().await? {
                    Some(r) if r.canceled() && r.compact_revision() > 0 => Err(CallError::Store(
                        StoreError::Compacted(r.compact_revision()),
                    )),
                    Some(r) if r.created() && !r.canceled() => Ok(s),
                    Some(r) => Err(CallError::Etcd(etcd_client::Error::WatchError(format!(
                        "watch not created: {}",
                        r.cancel_reason()
                    )))),
                    None => Err(CallError::Etcd(etcd_client::Error::WatchError(
                        "watch stream ended".into(),
                    ))),
                }
            },
        )?;
        self.stream = Some(stream);
        Ok(())
    }
}

impl Watcher for EtcdWatcher {
    fn next_timeout(&mut self, d: Duration) -> Result<Option<WatchEvent>> {
        let deadline = Instant::now() + d;
        loop {
            if let Some(ev) = self.queue.pop_front() {
                return Ok(Some(ev));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if self.stream.is_none() {
                // Reconnecting may take up to the request timeout, even for a short wait.
                self.open(self.inner.opts.request_timeout)?;
            }
            let inner = self.inner.clone();
            let Some(stream) = self.stream.as_mut() else {
                continue;
            };
            let rt = inner.rt()?;
            let got = rt.block_on(async { tokio::time::timeout(left, stream.message()).await });
            let resp = match got {
                Err(_) => return Ok(None),
                Ok(Ok(Some(r))) => r,
                Ok(Ok(None)) => {
                    self.stream = None;
                    return Err(inner.error(
                        &format!("watching {}", self.prefix),
                        CallError::Etcd(etcd_client::Error::WatchError(
                            "watch stream ended".into(),
                        )),
                    ));
                }
                Ok(Err(e)) => {
                    self.stream = None;
                    return Err(inner.error(&format!("watching {}", self.prefix), e.into()));
                }
            };
            if resp.canceled() {
                self.stream = None;
                if resp.compact_revision() > 0 {
                    return Err(StoreError::Compacted(resp.compact_revision()));
                }
                return Err(inner.error(
                    &format!("watching {}", self.prefix),
                    CallError::Etcd(etcd_client::Error::WatchError(format!(
                        "watch canceled: {}",
                        resp.cancel_reason()
                    ))),
                ));
            }
            for ev in resp.events() {
                let Some(kv) = ev.kv() else { continue };
                self.next_rev = self.next_rev.max(kv.mod_revision() + 1);
                let Some(mut ours) = inner.kv(kv) else {
                    continue;
                };
                let kind = match ev.event_type() {
                    EventType::Put => EventKind::Put,
                    EventType::Delete => {
                        ours.value.clear();
                        ours.create_revision = 0;
                        EventKind::Delete
                    }
                };
                self.queue.push_back(WatchEvent { kind, kv: ours });
            }
            if self.queue.is_empty() && Instant::now() >= deadline {
                return Ok(None);
            }
        }
    }
}
