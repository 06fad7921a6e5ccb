//! The embedded store: one host, no daemon, many processes.
//!
//! Layout under the store directory:
//! - `lock`: every transaction holds an exclusive `flock` on it, so plugin processes that run at
//!   once take turns and a transaction never conflicts;
//! - `kv/`: one file per key; a key `/a/b/c` lives at `kv/a/b/=c` (the `=` keeps a key and a
//!   longer key below it from colliding), holding a header line `create_rev mod_rev` and the value;
//! - `rev`: the store revision, bumped by every commit;
//! - `journal`: a commit first writes a journal holding every new value (as `tmp/journal.new`,
//!   renamed into place, so it exists whole or not at all), then writes the values into `kv/`
//!   in place, then removes the journal. A process killed half way leaves the journal behind and
//!   the next transaction, or read, replays it: a commit lands whole or not at all, and nobody
//!   sees half of one (reads take the lock too). Values are written without fsync unless asked
//!   (`sync`): a killed process loses nothing, a power cut may lose the last commits.
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::tx::Reader;
use crate::{KeyValue, Op, Result, Store, StoreError, Tx, Txn};

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

fn validate_key(key: &str) -> Result<()> {
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
        // The journal is line- and space-separated: such a key could forge journal lines.
        if seg.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return bad("a key has no spaces or control characters");
        }
    }
    Ok(())
}

impl EmbeddedStore {
    /// Opens (creating if needed) the store in `dir`.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self> {
        let dir = dir.into();
        for sub in ["kv", "tmp"] {
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

    fn read_file(&self, key: &str) -> Result<Option<(Vec<u8>, i64, i64)>> {
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
                let (value, create_revision, mod_revision) = decode_file(&key, data)?;
                out.push(KeyValue {
                    key,
                    value,
                    create_revision,
                    mod_revision,
                });
            } else {
                self.walk(&entry.path(), &format!("{key_prefix}/{name}"), out)?;
            }
        }
        Ok(())
    }

    fn list_files(&self, prefix: &str) -> Result<Vec<KeyValue>> {
        if !prefix.starts_with('/') {
            return Err(StoreError::InvalidKey {
                key: prefix.to_string(),
                why: "a prefix starts with '/'",
            });
        }
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

    /// Holds the process-local mutex and the cross-process flock; finishes any interrupted commit.
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
        Ok((guard, file))
    }

    /// Replays a journal left by a killed commit; drops a half-written one (never applied).
    fn recover(&self) -> Result<()> {
        let jpath = self.dir.join("journal");
        match fs::read(&jpath) {
            Ok(data) => {
                let (ops, rev) = decode_journal(&data)?;
                self.apply(&ops, rev)?;
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

    /// Applies journaled ops; safe to run again on a half-applied commit.
    fn apply(&self, ops: &[JournalOp], rev: i64) -> Result<()> {
        for op in ops {
            match op {
                JournalOp::Put { key, create, value } => {
                    let mut data = format!("{create} {rev}\n").into_bytes();
                    data.extend_from_slice(value);
                    self.write_in_place(&self.key_path(key), &data)?;
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
        self.write_in_place(&self.dir.join("rev"), rev.to_string().as_bytes())
    }

    /// Writes `ops` as one atomic commit; the caller holds the lock.
    fn commit_locked(&self, ops: &[Op]) -> Result<i64> {
        for op in ops {
            match op {
                Op::Put { key, .. } | Op::Delete { key } => validate_key(key)?,
            }
        }
        let rev = self.read_rev()? + 1;
        let mut journal_ops = Vec::with_capacity(ops.len());
        for op in ops {
            journal_ops.push(match op {
                Op::Put { key, value } => {
                    let create = self.read_file(key)?.map_or(rev, |(_, c, _)| c);
                    JournalOp::Put {
                        key: key.clone(),
                        create,
                        value: value.clone(),
                    }
                }
                Op::Delete { key } => JournalOp::Delete { key: key.clone() },
            });
        }
        // The journal appears whole (a new file renamed to a free name: cheap) or not at all.
        let staged = self.dir.join("tmp").join("journal.new");
        let mut f = File::create(&staged).map_err(|e| io(&staged, e))?;
        f.write_all(&encode_journal(&journal_ops, rev))
            .map_err(|e| io(&staged, e))?;
        if self.sync {
            f.sync_all().map_err(|e| io(&staged, e))?;
        }
        drop(f);
        let jpath = self.dir.join("journal");
        fs::rename(&staged, &jpath).map_err(|e| io(&jpath, e))?;
        self.apply(&journal_ops, rev)?;
        fs::remove_file(&jpath).map_err(|e| io(&jpath, e))?;
        Ok(rev)
    }

    /// The current store revision.
    pub fn revision(&self) -> Result<i64> {
        let (_g, _f) = self.lock()?;
        self.read_rev()
    }
}

/// One journaled change, carrying the full new value.
enum JournalOp {
    Put {
        key: String,
        create: i64,
        value: Vec<u8>,
    },
    Delete {
        key: String,
    },
}

/// `P <key> <create_rev> <len>\n<value>\n`, `D <key>\n`, then `R <rev>\n`.
fn encode_journal(ops: &[JournalOp], rev: i64) -> Vec<u8> {
    let mut out = Vec::new();
    for op in ops {
        match op {
            JournalOp::Put { key, create, value } => {
                out.extend_from_slice(format!("P {key} {create} {}\n", value.len()).as_bytes());
                out.extend_from_slice(value);
                out.push(b'\n');
            }
            JournalOp::Delete { key } => out.extend_from_slice(format!("D {key}\n").as_bytes()),
        }
    }
    out.extend_from_slice(format!("R {rev}\n").as_bytes());
    out
}

fn decode_journal(data: &[u8]) -> Result<(Vec<JournalOp>, i64)> {
    let corrupt = |msg: String| StoreError::Corrupt {
        key: "journal".into(),
        msg,
    };
    let mut ops = Vec::new();
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
            ["P", key, create, len] => {
                let (Ok(create), Ok(len)) = (create.parse::<i64>(), len.parse::<usize>()) else {
                    return Err(corrupt(format!("bad line {line:?}")));
                };
                if pos + len + 1 > data.len() || data[pos + len] != b'\n' {
                    return Err(corrupt(format!("value of {key} is cut short")));
                }
                ops.push(JournalOp::Put {
                    key: key.to_string(),
                    create,
                    value: data[pos..pos + len].to_vec(),
                });
                pos += len + 1;
            }
            ["D", key] => ops.push(JournalOp::Delete {
                key: key.to_string(),
            }),
            ["R", r] if pos == data.len() => {
                let rev = r
                    .parse::<i64>()
                    .map_err(|_| corrupt(format!("bad line {line:?}")))?;
                for op in &ops {
                    match op {
                        JournalOp::Put { key, .. } | JournalOp::Delete { key } => {
                            validate_key(key)?
                        }
                    }
                }
                return Ok((ops, rev));
            }
            _ => return Err(corrupt(format!("bad line {line:?}"))),
        }
    }
    Err(corrupt("no revision line".into()))
}

fn decode_file(key: &str, data: Vec<u8>) -> Result<(Vec<u8>, i64, i64)> {
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
    match (it.next(), it.next()) {
        (Some(Ok(c)), Some(Ok(m))) => Ok((data[nl + 1..].to_vec(), c, m)),
        _ => Err(corrupt("header is not 'create_rev mod_rev'")),
    }
}

struct LockedReader<'a>(&'a EmbeddedStore);

impl Reader for LockedReader<'_> {
    fn read(&self, key: &str) -> Result<Option<(Vec<u8>, i64)>> {
        Ok(self.0.read_file(key)?.map(|(v, _, m)| (v, m)))
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
        Ok(self
            .read_file(key)?
            .map(|(value, create_revision, mod_revision)| KeyValue {
                key: key.to_string(),
                value,
                create_revision,
                mod_revision,
            }))
    }

    fn list(&self, prefix: &str) -> Result<Vec<KeyValue>> {
        let (_g, _f) = self.lock()?;
        self.list_files(prefix)
    }

    fn commit(&self, txn: &Txn) -> Result<bool> {
        let (_g, _f) = self.lock()?;
        for c in &txn.compares {
            let current = self.read_file(&c.key)?.map_or(0, |(_, _, m)| m);
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
}
