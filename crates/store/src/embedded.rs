//! The embedded store: one host, no daemon, many processes.
//!
//! Layout under the store directory:
//! - `lock`: every operation holds an exclusive `flock` on it, so plugin processes that run at
//!   once take turns and a transaction never conflicts;
//! - `kv/`: one file per key; a key `/a/b/c` lives at `kv/a/b/=c` (the `=` keeps a key and a
//!   longer key below it from colliding), holding a header line `create_rev mod_rev [lease]` and
//!   the value;
//! - `rev`: the store revision, bumped by every commit that changes something;
//! - `journal`: a commit first writes a journal holding every new value (as `tmp/journal.new`,
//!   renamed into place, so it exists whole or not at all), then writes the values into `kv/`
//!   in place, appends its events to the history, then removes the journal. A process killed half
//!   way leaves the journal behind and the next operation replays it: a commit lands whole or not
//!   at all, and nobody sees half of one (reads take the lock too). Values are written without
//!   fsync unless asked (`sync`): a killed process loses nothing, a power cut may lose the last
//!   commits.
//! - `leases/<id>`: a lease: a fixed-width header `ttl_secs expiry_unix_ms`, rewritten in place
//!   by a keep-alive, then one line per key ever attached to it (appended by the commit that
//!   attaches it, inside the journal protocol). Every locked operation first ends the expired
//!   leases: the keys still attached to one (their file names the lease) are deleted by a normal
//!   commit, so watchers see the deletes, then the lease file goes.
//! - `history/<first_rev>`: the watch history, append-only segments of [`HISTORY_SEGMENT`]
//!   revisions each, named by their first revision (so a commit knows its segment without
//!   listing the directory). The journal records the segment's length before the commit, so a
//!   replay cuts a half-appended tail and appends the events again, byte for byte the same.
//!   When a new segment starts, segments older than [`HISTORY_KEEP`] revisions are deleted;
//!   `history/compacted` holds an explicit compaction floor ([`EmbeddedStore::compact`]).
//!   A watcher reads the segments, polling for appended records every 25 ms.
//!
//! Performance: the hot path never renames over an existing file and never opens an existing
//! file with `O_TRUNC`: on ext4 both make the kernel flush the file synchronously
//! (auto_da_alloc), about 1-1.5 ms each on these machines, where an in-place write or an append
//! costs microseconds.
use std::collections::{BTreeSet, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::tx::Reader;
use crate::{
    EventKind, KeyValue, Op, Result, Store, StoreError, Tx, Txn, WatchEvent, Watcher, validate_key,
    validate_prefix,
};

/// Revisions per history segment.
pub const HISTORY_SEGMENT: i64 = 5000;
/// At least this many of the last revisions (and so events: every revision has at least one)
/// stay in the history; older ones are compacted.
pub const HISTORY_KEEP: i64 = 10_000;
/// How often a watcher looks for new history.
const WATCH_POLL: Duration = Duration::from_millis(25);
/// `leases/<id>` header: `{ttl:020} {expiry_ms:020}\n`.
const LEASE_HEADER: usize = 42;

pub struct EmbeddedStore {
    dir: PathBuf,
    sync: bool,
    // Serialises threads of this process; the flock serialises processes.
    local: Mutex<()>,
}

fn io(path: &Path, source: std::io::Error) -> StoreError {
    StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The first revision of the history segment holding `rev`.
fn segment_of(rev: i64) -> i64 {
    (rev - 1).max(0) / HISTORY_SEGMENT * HISTORY_SEGMENT + 1
}

/// The history segments present, by first revision.
fn segments(hdir: &Path) -> Result<Vec<i64>> {
    let entries = match fs::read_dir(hdir) {
        Ok(e) => e,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(hdir, e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| io(hdir, e))?;
        if let Some(n) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i64>().ok())
        {
            out.push(n);
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// A random positive lease id (collisions are checked by the caller).
fn random_lease_id() -> i64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.write_u32(std::process::id());
    // Positive and below 2^53 (prints the same everywhere, also in JSON).
    ((h.finish() >> 11) as i64).max(1)
}

impl EmbeddedStore {
    /// Opens (creating if needed) the store in `dir`.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self> {
        let dir = dir.into();
        for sub in ["kv", "tmp", "leases", "history"] {
            let p = dir.join(sub);
            fs::create_dir_all(&p).map_err(|e| io(&p, e))?;
        }
        Ok(EmbeddedStore {
            dir,
            sync: false,
            local: Mutex::new(()),
        })
    }

    /// fsync every commit (survives power loss; costs a few ms per commit).
    pub fn with_sync(mut self, sync: bool) -> Self {
        self.sync = sync;
        self
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn key_path(&self, key: &str) -> PathBuf {
        let mut p = self.dir.join("kv");
        let segs: Vec<&str> = key[1..].split('/').collect();
        for s in &segs[..segs.len() - 1] {
            p.push(s);
        }
        p.push(format!("={}", segs[segs.len() - 1]));
        p
    }

    fn lease_path(&self, lease: i64) -> PathBuf {
        self.dir.join("leases").join(lease.to_string())
    }

    fn history_dir(&self) -> PathBuf {
        self.dir.join("history")
    }

    fn read_file(&self, key: &str) -> Result<Option<StoredValue>> {
        validate_key(key)?;
        let path = self.key_path(key);
        let data = match fs::read(&path) {
            Ok(d) => d,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(&path, e)),
        };
        decode_file(key, data).map(Some)
    }

    fn walk(&self, dir: &Path, key_prefix: &str, out: &mut Vec<KeyValue>) -> Result<()> {
        let entries = match fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io(dir, e)),
        };
        for entry in entries {
            let entry = entry.map_err(|e| io(dir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(leaf) = name.strip_prefix('=') {
                let key = format!("{key_prefix}/{leaf}");
                let data = match fs::read(entry.path()) {
                    Ok(d) => d,
                    // Deleted by a commit between readdir and read.
                    Err(e) if e.kind() == ErrorKind::NotFound => continue,
                    Err(e) => return Err(io(&entry.path(), e)),
                };
                let v = decode_file(&key, data)?;
                out.push(KeyValue {
                    key,
                    value: v.value,
                    create_revision: v.create,
                    mod_revision: v.modified,
                });
            } else {
                self.walk(&entry.path(), &format!("{key_prefix}/{name}"), out)?;
            }
        }
        Ok(())
    }

    fn list_files(&self, prefix: &str) -> Result<Vec<KeyValue>> {
        validate_prefix(prefix)?;
        // Walk the deepest directory every key under the prefix must sit in, then filter.
        let dir_part = &prefix[..prefix.rfind('/').unwrap_or(0)];
        let mut dir = self.dir.join("kv");
        for seg in dir_part.split('/').filter(|s| !s.is_empty()) {
            if seg == "." || seg == ".." {
                return Ok(Vec::new());
            }
            dir.push(seg);
        }
        let mut out = Vec::new();
        self.walk(&dir, dir_part, &mut out)?;
        out.retain(|kv| kv.key.starts_with(prefix));
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    fn read_rev(&self) -> Result<i64> {
        let path = self.dir.join("rev");
        match fs::read_to_string(&path) {
            Ok(s) => s.trim().parse().map_err(|_| StoreError::Corrupt {
                key: "rev".into(),
                msg: format!("{s:?} is not a number"),
            }),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(0),
            Err(e) => Err(io(&path, e)),
        }
    }

    /// Writes `data` as the whole content of `path`, in place when the file exists.
    ///
    /// Never `O_TRUNC` and never a rename over an existing file: on ext4 both make the kernel
    /// flush the file synchronously (auto_da_alloc), about 1-1.5 ms each on these machines,
    /// where an in-place write costs microseconds. The journal makes in-place writes safe.
    fn write_in_place(&self, path: &Path, data: &[u8]) -> Result<()> {
        let mut f = match OpenOptions::new().write(true).open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                let parent = path.parent().unwrap_or(&self.dir);
                fs::create_dir_all(parent).map_err(|e| io(parent, e))?;
                OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .open(path)
                    .map_err(|e| io(path, e))?
            }
            Err(e) => return Err(io(path, e)),
        };
        f.write_all(data).map_err(|e| io(path, e))?;
        f.set_len(data.len() as u64).map_err(|e| io(path, e))?;
        if self.sync {
            f.sync_all().map_err(|e| io(path, e))?;
        }
        Ok(())
    }

    /// Holds the process-local mutex and the cross-process flock; finishes any interrupted commit
    /// and ends expired leases.
    fn lock(&self) -> Result<(std::sync::MutexGuard<'_, ()>, File)> {
        let guard = self.local.lock().unwrap_or_else(|p| p.into_inner());
        let path = self.dir.join("lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| io(&path, e))?;
        file.lock().map_err(|e| io(&path, e))?;
        self.recover()?;
        self.expire_leases()?;
        Ok((guard, file))
    }

    /// Replays a journal left by a killed commit; drops a half-written one (never applied).
    fn recover(&self) -> Result<()> {
        let jpath = self.dir.join("journal");
        match fs::read(&jpath) {
            Ok(data) => {
                let j = decode_journal(&data)?;
                self.apply(&j.ops, j.rev, None, j.history_len)?;
                fs::remove_file(&jpath).map_err(|e| io(&jpath, e))?;
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(io(&jpath, e)),
        }
        let tmp = self.dir.join("tmp");
        for entry in fs::read_dir(&tmp).map_err(|e| io(&tmp, e))? {
            let entry = entry.map_err(|e| io(&tmp, e))?;
            let _ = fs::remove_file(entry.path());
        }
        Ok(())
    }

    /// `(ttl_secs, expiry_ms)` of a lease, `None` when it does not exist.
    fn read_lease_header(&self, lease: i64) -> Result<Option<(i64, i64)>> {
        let path = self.lease_path(lease);
        let mut f = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(&path, e)),
        };
        let mut head = [0u8; LEASE_HEADER];
        match f.read_exact(&mut head) {
            Ok(()) => {}
            // A grant killed between creating the file and writing its header: nobody got the
            // id, so the lease counts as expired (and the next sweep removes it).
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => return Ok(Some((0, 0))),
            Err(e) => return Err(io(&path, e)),
        }
        let text = String::from_utf8_lossy(&head);
        let mut it = text.trim_end().split(' ').map(str::parse::<i64>);
        match (it.next(), it.next()) {
            (Some(Ok(ttl)), Some(Ok(expiry))) => Ok(Some((ttl, expiry))),
            _ => Err(StoreError::Corrupt {
                key: format!("lease {lease}"),
                msg: format!("header {text:?} is not 'ttl expiry_ms'"),
            }),
        }
    }

    /// Ends every lease whose time is up; the caller holds the lock.
    fn expire_leases(&self) -> Result<()> {
        let ldir = self.dir.join("leases");
        let entries = match fs::read_dir(&ldir) {
            Ok(e) => e,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io(&ldir, e)),
        };
        let mut expired = Vec::new();
        let now = now_ms();
        for entry in entries {
            let entry = entry.map_err(|e| io(&ldir, e))?;
            let Some(id) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<i64>().ok())
            else {
                continue;
            };
            match self.read_lease_header(id)? {
                Some((_, expiry)) if expiry <= now => expired.push(id),
                _ => {}
            }
        }
        for id in expired {
            self.end_lease(id)?;
        }
        Ok(())
    }

    /// Deletes the keys still attached to `lease` (one commit), then the lease; the caller holds
    /// the lock. Safe to run again after a crash half way.
    fn end_lease(&self, lease: i64) -> Result<()> {
        let path = self.lease_path(lease);
        let data = match fs::read(&path) {
            Ok(d) => d,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return Err(StoreError::LeaseNotFound(lease));
            }
            Err(e) => return Err(io(&path, e)),
        };
        let listed: BTreeSet<&str> = data
            .get(LEASE_HEADER..)
            .unwrap_or_default()
            .split(|&b| b == b'\n')
            .filter_map(|l| std::str::from_utf8(l).ok())
            .filter(|l| !l.is_empty())
            .collect();
        let mut ops = Vec::new();
        for key in listed {
            // A key put again without this lease (or deleted and made again) is no longer its.
            if validate_key(key).is_ok() && self.read_file(key)?.is_some_and(|v| v.lease == lease) {
                ops.push(Op::Delete {
                    key: key.to_string(),
                });
            }
        }
        if !ops.is_empty() {
            self.commit_locked(&ops)?;
        }
        fs::remove_file(&path).map_err(|e| io(&path, e))
    }

    /// Applies journaled ops; safe to run again on a half-applied commit. `history` is the
    /// history segment already open for appending (normal path); `history_len` its length
    /// before this commit (a replay cuts the segment back to it first).
    fn apply(
        &self,
        ops: &[JournalOp],
        rev: i64,
        history: Option<File>,
        history_len: Option<u64>,
    ) -> Result<()> {
        for op in ops {
            match op {
                JournalOp::Put {
                    key,
                    create,
                    value,
                    lease,
                } => {
                    let mut data = if *lease == 0 {
                        format!("{create} {rev}\n")
                    } else {
                        format!("{create} {rev} {lease}\n")
                    }
                    .into_bytes();
                    data.extend_from_slice(value);
                    self.write_in_place(&self.key_path(key), &data)?;
                    if *lease != 0 {
                        let lpath = self.lease_path(*lease);
                        match OpenOptions::new().append(true).open(&lpath) {
                            Ok(mut f) => f
                                .write_all(format!("{key}\n").as_bytes())
                                .map_err(|e| io(&lpath, e))?,
                            // Checked before the journal was written; only a replay of a
                            // journal naming a lease that is gone can get here.
                            Err(e) if e.kind() == ErrorKind::NotFound => {}
                            Err(e) => return Err(io(&lpath, e)),
                        }
                    }
                }
                JournalOp::Delete { key } => {
                    let path = self.key_path(key);
                    match fs::remove_file(&path) {
                        Ok(()) => {}
                        Err(e) if e.kind() == ErrorKind::NotFound => {}
                        Err(e) => return Err(io(&path, e)),
                    }
                }
            }
        }
        let hpath = self.history_dir().join(segment_of(rev).to_string());
        let mut hist = match history {
            Some(f) => f,
            None => self.open_segment(&hpath)?,
        };
        if let Some(len) = history_len {
            let now = hist.metadata().map_err(|e| io(&hpath, e))?.len();
            if now > len {
                hist.set_len(len).map_err(|e| io(&hpath, e))?;
            }
        }
        hist.write_all(&encode_history(ops, rev))
            .map_err(|e| io(&hpath, e))?;
        if self.sync {
            hist.sync_all().map_err(|e| io(&hpath, e))?;
        }
        self.write_in_place(&self.dir.join("rev"), rev.to_string().as_bytes())
    }

    fn open_segment(&self, path: &Path) -> Result<File> {
        OpenOptions::new()
            .append(true)
            .create(true)
            .open(path)
            .map_err(|e| io(path, e))
    }

    /// Deletes history segments wholly older than the last [`HISTORY_KEEP`] revisions.
    fn trim_history(&self, rev: i64) -> Result<()> {
        let hdir = self.history_dir();
        for seg in segments(&hdir)? {
            if seg + HISTORY_SEGMENT <= rev - HISTORY_KEEP {
                let p = hdir.join(seg.to_string());
                match fs::remove_file(&p) {
                    Ok(()) => {}
                    Err(e) if e.kind() == ErrorKind::NotFound => {}
                    Err(e) => return Err(io(&p, e)),
                }
            }
        }
        Ok(())
    }

    /// Writes `ops` as one atomic commit; the caller holds the lock. Returns the commit's
    /// revision (the current one, unchanged, when the ops change nothing).
    fn commit_locked(&self, ops: &[Op]) -> Result<i64> {
        for op in ops {
            validate_key(op.key())?;
        }
        // Only the last op on a key counts (a commit built by hand may name a key twice).
        let mut seen = BTreeSet::new();
        let mut last: Vec<&Op> = Vec::with_capacity(ops.len());
        for op in ops.iter().rev() {
            if seen.insert(op.key()) {
                last.push(op);
            }
        }
        last.reverse();
        let cur = self.read_rev()?;
        let rev = cur + 1;
        let mut journal_ops = Vec::with_capacity(last.len());
        for op in last {
            match op {
                Op::Put { key, value } | Op::PutWithLease { key, value, .. } => {
                    let lease = match op {
                        Op::PutWithLease { lease, .. } => *lease,
                        _ => 0,
                    };
                    if lease != 0 && self.read_lease_header(lease)?.is_none() {
                        return Err(StoreError::LeaseNotFound(lease));
                    }
                    let create = self.read_file(key)?.map_or(rev, |v| v.create);
                    journal_ops.push(JournalOp::Put {
                        key: key.clone(),
                        create,
                        value: value.clone(),
                        lease,
                    });
                }
                // Deleting an absent key changes nothing and makes no event (as in etcd).
                Op::Delete { key } => {
                    if self.key_path(key).is_file() {
                        journal_ops.push(JournalOp::Delete { key: key.clone() });
                    }
                }
            }
        }
        if journal_ops.is_empty() {
            return Ok(cur);
        }
        let hpath = self.history_dir().join(segment_of(rev).to_string());
        let hist = self.open_segment(&hpath)?;
        let history_len = hist.metadata().map_err(|e| io(&hpath, e))?.len();
        // The journal appears whole (a new file renamed to a free name: cheap) or not at all.
        let staged = self.dir.join("tmp").join("journal.new");
        let mut f = File::create(&staged).map_err(|e| io(&staged, e))?;
        f.write_all(&encode_journal(&journal_ops, rev, history_len))
            .map_err(|e| io(&staged, e))?;
        if self.sync {
            f.sync_all().map_err(|e| io(&staged, e))?;
        }
        drop(f);
        let jpath = self.dir.join("journal");
        fs::rename(&staged, &jpath).map_err(|e| io(&jpath, e))?;
        self.apply(&journal_ops, rev, Some(hist), Some(history_len))?;
        fs::remove_file(&jpath).map_err(|e| io(&jpath, e))?;
        if history_len == 0 && rev == segment_of(rev) {
            self.trim_history(rev)?;
        }
        Ok(rev)
    }

    /// The oldest revision the history still holds (the current revision + 1 when it holds
    /// nothing); the caller holds the lock.
    fn history_floor(&self) -> Result<i64> {
        let hdir = self.history_dir();
        let cpath = hdir.join("compacted");
        let compacted = match fs::read_to_string(&cpath) {
            Ok(s) => s.trim().parse::<i64>().unwrap_or(0),
            Err(e) if e.kind() == ErrorKind::NotFound => 0,
            Err(e) => return Err(io(&cpath, e)),
        };
        let mut first = None;
        for seg in segments(&hdir)? {
            if let Some(rev) = first_history_rev(&hdir.join(seg.to_string()))? {
                first = Some(rev);
                break;
            }
        }
        let first = match first {
            Some(r) => r,
            None => self.read_rev()? + 1,
        };
        Ok(first.max(compacted))
    }

    /// Drops the watch history before `rev`: a watch from an older revision then fails with
    /// [`StoreError::Compacted`]. (The history also trims itself to the last [`HISTORY_KEEP`]
    /// revisions.)
    pub fn compact(&self, rev: i64) -> Result<()> {
        let (_g, _f) = self.lock()?;
        let rev = rev.min(self.read_rev()? + 1);
        let hdir = self.history_dir();
        self.write_in_place(&hdir.join("compacted"), rev.to_string().as_bytes())?;
        for seg in segments(&hdir)? {
            if seg + HISTORY_SEGMENT <= rev {
                let p = hdir.join(seg.to_string());
                let _ = fs::remove_file(&p);
            }
        }
        Ok(())
    }
}

/// A key file's content.
struct StoredValue {
    value: Vec<u8>,
    create: i64,
    modified: i64,
    lease: i64,
}

/// One journaled change, carrying the full new value.
enum JournalOp {
    Put {
        key: String,
        create: i64,
        value: Vec<u8>,
        lease: i64,
    },
    Delete {
        key: String,
    },
}

impl JournalOp {
    fn key(&self) -> &str {
        match self {
            JournalOp::Put { key, .. } | JournalOp::Delete { key } => key,
        }
    }
}

struct Journal {
    ops: Vec<JournalOp>,
    rev: i64,
    /// The history segment's length before the commit (absent in journals of older versions).
    history_len: Option<u64>,
}

/// `P <key> <create_rev> <len> [lease]\n<value>\n`, `D <key>\n`, `H <history_len>\n`, then
/// `R <rev>\n`.
fn encode_journal(ops: &[JournalOp], rev: i64, history_len: u64) -> Vec<u8> {
    let mut out = Vec::new();
    for op in ops {
        match op {
            JournalOp::Put {
                key,
                create,
                value,
                lease,
            } => {
                let line = if *lease == 0 {
                    format!("P {key} {create} {}\n", value.len())
                } else {
                    format!("P {key} {create} {} {lease}\n", value.len())
                };
                out.extend_from_slice(line.as_bytes());
                out.extend_from_slice(value);
                out.push(b'\n');
            }
            JournalOp::Delete { key } => out.extend_from_slice(format!("D {key}\n").as_bytes()),
        }
    }
    out.extend_from_slice(format!("H {history_len}\nR {rev}\n").as_bytes());
    out
}

fn decode_journal(data: &[u8]) -> Result<Journal> {
    let corrupt = |msg: String| StoreError::Corrupt {
        key: "journal".into(),
        msg,
    };
    let mut ops = Vec::new();
    let mut history_len = None;
    let mut pos = 0;
    while pos < data.len() {
        let nl = data[pos..]
            .iter()
            .position(|&b| b == b'\n')
            .map(|i| pos + i)
            .ok_or_else(|| corrupt("unterminated line".into()))?;
        let line = String::from_utf8_lossy(&data[pos..nl]).into_owned();
        pos = nl + 1;
        let parts: Vec<&str> = line.split(' ').collect();
        match parts.as_slice() {
            ["P", key, create, len, lease @ ..] if lease.len() <= 1 => {
                let lease = match lease.first() {
                    None => Ok(0),
                    Some(l) => l.parse::<i64>(),
                };
                let (Ok(create), Ok(len), Ok(lease)) =
                    (create.parse::<i64>(), len.parse::<usize>(), lease)
                else {
                    return Err(corrupt(format!("bad line {line:?}")));
                };
                if pos + len + 1 > data.len() || data[pos + len] != b'\n' {
                    return Err(corrupt(format!("value of {key} is cut short")));
                }
                ops.push(JournalOp::Put {
                    key: key.to_string(),
                    create,
                    value: data[pos..pos + len].to_vec(),
                    lease,
                });
                pos += len + 1;
            }
            ["D", key] => ops.push(JournalOp::Delete {
                key: key.to_string(),
            }),
            ["H", len] => {
                history_len = Some(
                    len.parse::<u64>()
                        .map_err(|_| corrupt(format!("bad line {line:?}")))?,
                );
            }
            ["R", r] if pos == data.len() => {
                let rev = r
                    .parse::<i64>()
                    .map_err(|_| corrupt(format!("bad line {line:?}")))?;
                for op in &ops {
                    validate_key(op.key())?;
                }
                return Ok(Journal {
                    ops,
                    rev,
                    history_len,
                });
            }
            _ => return Err(corrupt(format!("bad line {line:?}"))),
        }
    }
    Err(corrupt("no revision line".into()))
}

/// History records: `<rev> P <key> <create_rev> <len>\n<value>\n` and `<rev> D <key>\n`.
fn encode_history(ops: &[JournalOp], rev: i64) -> Vec<u8> {
    let mut out = Vec::new();
    for op in ops {
        match op {
            JournalOp::Put {
                key, create, value, ..
            } => {
                out.extend_from_slice(
                    format!("{rev} P {key} {create} {}\n", value.len()).as_bytes(),
                );
                out.extend_from_slice(value);
                out.push(b'\n');
            }
            JournalOp::Delete { key } => {
                out.extend_from_slice(format!("{rev} D {key}\n").as_bytes())
            }
        }
    }
    out
}

/// The revision of the first record of a history segment (`None`: no record, or no segment).
fn first_history_rev(path: &Path) -> Result<Option<i64>> {
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(path, e)),
    };
    // A record's header line is short (keys are bounded); its value need not be read.
    let mut head = Vec::new();
    (&mut f)
        .take(64 * 1024)
        .read_to_end(&mut head)
        .map_err(|e| io(path, e))?;
    let Some(nl) = head.iter().position(|&b| b == b'\n') else {
        return Ok(None);
    };
    let line = String::from_utf8_lossy(&head[..nl]);
    match line.split(' ').next().map(str::parse::<i64>) {
        Some(Ok(rev)) => Ok(Some(rev)),
        _ => Err(StoreError::Corrupt {
            key: path.display().to_string(),
            msg: format!("bad history line {line:?}"),
        }),
    }
}

/// Decodes the first record of `data`: `(rev, event, bytes used)`; `None` when `data` holds no
/// whole record yet (a commit may be appending it right now).
fn decode_history_record(data: &[u8], path: &Path) -> Result<Option<(i64, WatchEvent, usize)>> {
    let Some(nl) = data.iter().position(|&b| b == b'\n') else {
        return Ok(None);
    };
    let line = String::from_utf8_lossy(&data[..nl]);
    let corrupt = || StoreError::Corrupt {
        key: path.display().to_string(),
        msg: format!("bad history line {line:?}"),
    };
    let parts: Vec<&str> = line.split(' ').collect();
    match parts.as_slice() {
        [rev, "P", key, create, len] => {
            let (Ok(rev), Ok(create), Ok(len)) = (
                rev.parse::<i64>(),
                create.parse::<i64>(),
                len.parse::<usize>(),
            ) else {
                return Err(corrupt());
            };
            let start = nl + 1;
            if data.len() < start + len + 1 {
                return Ok(None);
            }
            if data[start + len] != b'\n' {
                return Err(corrupt());
            }
            let ev = WatchEvent {
                kind: EventKind::Put,
                kv: KeyValue {
                    key: key.to_string(),
                    value: data[start..start + len].to_vec(),
                    create_revision: create,
                    mod_revision: rev,
                },
            };
            Ok(Some((rev, ev, start + len + 1)))
        }
        [rev, "D", key] => {
            let rev = rev.parse::<i64>().map_err(|_| corrupt())?;
            let ev = WatchEvent {
                kind: EventKind::Delete,
                kv: KeyValue {
                    key: key.to_string(),
                    value: Vec::new(),
                    create_revision: 0,
                    mod_revision: rev,
                },
            };
            Ok(Some((rev, ev, nl + 1)))
        }
        _ => Err(corrupt()),
    }
}

fn decode_file(key: &str, data: Vec<u8>) -> Result<StoredValue> {
    let corrupt = |msg: &str| StoreError::Corrupt {
        key: key.to_string(),
        msg: msg.to_string(),
    };
    let nl = data
        .iter()
        .position(|&b| b == b'\n')
        .ok_or_else(|| corrupt("no header line"))?;
    let header = std::str::from_utf8(&data[..nl]).map_err(|_| corrupt("header is not text"))?;
    let mut it = header.split(' ').map(str::parse::<i64>);
    match (it.next(), it.next(), it.next(), it.next()) {
        (Some(Ok(create)), Some(Ok(modified)), lease, None) => {
            let lease = match lease {
                None => 0,
                Some(Ok(l)) => l,
                Some(Err(_)) => return Err(corrupt("lease in header is not a number")),
            };
            Ok(StoredValue {
                value: data[nl + 1..].to_vec(),
                create,
                modified,
                lease,
            })
        }
        _ => Err(corrupt("header is not 'create_rev mod_rev [lease]'")),
    }
}

struct LockedReader<'a>(&'a EmbeddedStore);

impl Reader for LockedReader<'_> {
    fn read(&self, key: &str) -> Result<Option<(Vec<u8>, i64)>> {
        Ok(self.0.read_file(key)?.map(|v| (v.value, v.modified)))
    }
    fn read_prefix(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>, i64)>> {
        Ok(self
            .0
            .list_files(prefix)?
            .into_iter()
            .map(|kv| (kv.key, kv.value, kv.mod_revision))
            .collect())
    }
}

impl Store for EmbeddedStore {
    fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        validate_key(key)?;
        // Under the lock: a commit writes values in place, so an unlocked read could see half
        // of one; and an expired lease's keys must be gone first.
        let (_g, _f) = self.lock()?;
        Ok(self.read_file(key)?.map(|v| KeyValue {
            key: key.to_string(),
            value: v.value,
            create_revision: v.create,
            mod_revision: v.modified,
        }))
    }

    fn list(&self, prefix: &str) -> Result<Vec<KeyValue>> {
        validate_prefix(prefix)?;
        let (_g, _f) = self.lock()?;
        self.list_files(prefix)
    }

    fn commit(&self, txn: &Txn) -> Result<bool> {
        let (_g, _f) = self.lock()?;
        for c in &txn.compares {
            let current = self.read_file(&c.key)?.map_or(0, |v| v.modified);
            if current != c.mod_revision {
                return Ok(false);
            }
        }
        if !txn.ops.is_empty() {
            self.commit_locked(&txn.ops)?;
        }
        Ok(true)
    }

    fn transact_raw(&self, f: &mut dyn FnMut(&mut Tx<'_>) -> Result<()>) -> Result<()> {
        let (_g, _f) = self.lock()?;
        let reader = LockedReader(self);
        let mut tx = Tx::new(&reader);
        f(&mut tx)?;
        if tx.has_writes() {
            let txn = tx.into_txn();
            self.commit_locked(&txn.ops)?;
        }
        Ok(())
    }

    fn describe(&self) -> String {
        format!("embedded store {}", self.dir.display())
    }

    fn revision(&self) -> Result<i64> {
        let (_g, _f) = self.lock()?;
        self.read_rev()
    }

    fn grant_lease(&self, ttl_secs: i64) -> Result<i64> {
        let ttl = ttl_secs.max(1);
        let (_g, _f) = self.lock()?;
        loop {
            let id = random_lease_id();
            let path = self.lease_path(id);
            let mut f = match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(io(&path, e)),
            };
            let header = format!("{ttl:020} {:020}\n", now_ms() + ttl * 1000);
            f.write_all(header.as_bytes()).map_err(|e| io(&path, e))?;
            if self.sync {
                f.sync_all().map_err(|e| io(&path, e))?;
            }
            return Ok(id);
        }
    }

    fn keep_alive(&self, lease: i64) -> Result<()> {
        let (_g, _f) = self.lock()?;
        let Some((ttl, _)) = self.read_lease_header(lease)? else {
            return Err(StoreError::LeaseNotFound(lease));
        };
        let path = self.lease_path(lease);
        let f = OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(|e| io(&path, e))?;
        // Same width as before, written over the header only: the key list after it stays.
        let header = format!("{ttl:020} {:020}\n", now_ms() + ttl * 1000);
        f.write_all_at(header.as_bytes(), 0)
            .map_err(|e| io(&path, e))?;
        Ok(())
    }

    fn revoke_lease(&self, lease: i64) -> Result<()> {
        let (_g, _f) = self.lock()?;
        self.end_lease(lease)
    }

    fn watch(&self, prefix: &str, from_revision: i64) -> Result<Box<dyn Watcher>> {
        validate_prefix(prefix)?;
        let (_g, _f) = self.lock()?;
        let from = if from_revision <= 0 {
            self.read_rev()? + 1
        } else {
            from_revision
        };
        let floor = self.history_floor()?;
        if from < floor {
            return Err(StoreError::Compacted(floor));
        }
        Ok(Box::new(EmbeddedWatcher {
            store_dir: self.dir.clone(),
            hdir: self.history_dir(),
            prefix: prefix.to_string(),
            from,
            seg: segment_of(from),
            file: None,
            buf: Vec::new(),
            queue: VecDeque::new(),
        }))
    }
}

/// Reads the history segments as commits append to them.
struct EmbeddedWatcher {
    store_dir: PathBuf,
    hdir: PathBuf,
    prefix: String,
    /// Events before this revision are skipped.
    from: i64,
    /// The segment being read.
    seg: i64,
    file: Option<File>,
    /// Bytes read from `file` that do not yet make a whole record.
    buf: Vec<u8>,
    queue: VecDeque<WatchEvent>,
}

impl EmbeddedWatcher {
    /// Reads what was appended to the current segment and queues its events.
    fn drain(&mut self) -> Result<()> {
        let path = self.hdir.join(self.seg.to_string());
        let Some(f) = self.file.as_mut() else {
            return Ok(());
        };
        f.read_to_end(&mut self.buf).map_err(|e| io(&path, e))?;
        let mut used = 0;
        while let Some((rev, ev, n)) = decode_history_record(&self.buf[used..], &path)? {
            used += n;
            if rev >= self.from && ev.kv.key.starts_with(&self.prefix) {
                self.queue.push_back(ev);
            }
        }
        self.buf.drain(..used);
        Ok(())
    }

    fn poll(&mut self) -> Result<()> {
        loop {
            if self.file.is_none() {
                let path = self.hdir.join(self.seg.to_string());
                match File::open(&path) {
                    Ok(f) => {
                        self.file = Some(f);
                        self.buf.clear();
                    }
                    Err(e) if e.kind() == ErrorKind::NotFound => {
                        // Trimmed away under us, or not written yet, or (a store older than its
                        // history) never written: look at what there is.
                        let present = segments(&self.hdir)?;
                        if present.first().is_some_and(|&first| first > self.seg) {
                            let s = EmbeddedStore::open(&self.store_dir)?;
                            let floor = {
                                let (_g, _f) = s.lock()?;
                                s.history_floor()?
                            };
                            if self.from < floor {
                                return Err(StoreError::Compacted(floor));
                            }
                        }
                        match present.iter().find(|&&s| s > self.seg) {
                            Some(&next) => {
                                self.seg = next;
                                continue;
                            }
                            None => return Ok(()),
                        }
                    }
                    Err(e) => return Err(io(&path, e)),
                }
            }
            self.drain()?;
            // A segment is final once the next one exists: read it to its end once more (the
            // last commit into it may have landed since), then move on.
            let next = self.seg + HISTORY_SEGMENT;
            if self.hdir.join(next.to_string()).exists() {
                self.drain()?;
                if !self.buf.is_empty() {
                    return Err(StoreError::Corrupt {
                        key: self.hdir.join(self.seg.to_string()).display().to_string(),
                        msg: "history segment ends in half a record".into(),
                    });
                }
                self.seg = next;
                self.file = None;
                continue;
            }
            return Ok(());
        }
    }
}

impl Watcher for EmbeddedWatcher {
    fn next_timeout(&mut self, d: Duration) -> Result<Option<WatchEvent>> {
        let deadline = Instant::now() + d;
        loop {
            if let Some(ev) = self.queue.pop_front() {
                return Ok(Some(ev));
            }
            self.poll()?;
            if !self.queue.is_empty() {
                continue;
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            std::thread::sleep(WATCH_POLL.min(deadline - now));
        }
    }
}
