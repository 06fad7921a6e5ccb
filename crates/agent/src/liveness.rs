//! Pod liveness for the node's report: which allocations held by this node (every network, not
//! only the one weftd routes) have lost their pod network namespace.
//!
//! Every ADD (`weft` in any mode, and `weft-ipam`) records the pod's namespace in its
//! allocation ([`weft_ipam::NetnsRef`]: the `CNI_NETNS` path and the inode and device `stat`
//! showed). A thread keeps this node's such allocations in memory ([`NodeAllocations`]: one
//! list of `/weft/v1/handles/`, then a watch on it, so the store is not read again for each
//! report); each report `stat`s every recorded path (microseconds each: 10,000 pods cost a few
//! milliseconds) and lists the gone ones ([`examine`]).
//!
//! Gone means proven gone; anything doubtful is "unknown" and never listed:
//! - the path shows another namespace (nsfs, same device, another inode): gone (a
//!   `/proc/<pid>/ns/net` whose pid was reused, a name re-created under `/run/netns`);
//! - no such path: gone, when weftd can see where it would be (the parent directory exists;
//!   for `/proc/<pid>/...`, weftd runs in the initial PID namespace, so a missing pid means an
//!   exited process and not one weftd cannot see);
//! - the path is there but is no namespace (a mount point whose namespace was unmounted, or a
//!   weftd in a container that does not see the host's mounts), or stat fails otherwise:
//!   unknown.
use std::collections::HashMap;
use std::io::ErrorKind;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use weft_check::GoneNetns;
use weft_ipam::{Allocation, KEY_ROOT, NetnsRef};
use weft_store::{EventKind, Store, StoreError};

use crate::log;

/// `PROC_PID_INIT_INO`: the inode of the initial PID namespace.
const INIT_PID_NS_INO: u64 = 0xEFFF_FFFC;

/// One allocation of this node with a recorded namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub network: String,
    pub handle: String,
    pub created_at: u64,
    pub netns: NetnsRef,
}

#[derive(Default)]
struct State {
    /// False until the first full list.
    ready: bool,
    /// Handle key -> allocation.
    held: HashMap<String, Held>,
}

/// This node's allocations with a recorded namespace, kept current by a watch.
#[derive(Clone, Default)]
pub struct NodeAllocations {
    state: Arc<Mutex<State>>,
}

fn handles_root() -> String {
    format!("{KEY_ROOT}/handles/")
}

impl NodeAllocations {
    /// Starts the thread that lists and watches `/weft/v1/handles/` for `node`'s allocations.
    pub fn spawn(store: Arc<dyn Store>, node: String) -> crate::Result<NodeAllocations> {
        let me = NodeAllocations::default();
        let state = me.state.clone();
        std::thread::Builder::new()
            .name("allocations".into())
            .spawn(move || follow(store.as_ref(), &node, &state))
            .map_err(|e| crate::AgentError::Io {
                what: "start thread allocations".into(),
                source: e,
            })?;
        Ok(me)
    }

    /// The allocations as last seen; None before the first list.
    pub fn snapshot(&self) -> Option<Vec<Held>> {
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.ready.then(|| s.held.values().cloned().collect())
    }
}

fn apply(held: &mut HashMap<String, Held>, node: &str, key: &str, value: Option<&[u8]>) {
    let a = value.and_then(|v| serde_json::from_slice::<Allocation>(v).ok());
    match a {
        Some(Allocation {
            node: n,
            netns: Some(netns),
            network,
            handle,
            created_at,
            ..
        }) if n == node => {
            held.insert(
                key.to_string(),
                Held {
                    network,
                    handle,
                    created_at,
                    netns,
                },
            );
        }
        _ => {
            held.remove(key);
        }
    }
}

fn follow(store: &dyn Store, node: &str, state: &Mutex<State>) {
    let prefix = handles_root();
    let mut quiet = false;
    loop {
        let listed = (|| -> Result<_, StoreError> {
            let rev = store.revision()?;
            let kvs = store.list(&prefix)?;
            let mut held = HashMap::new();
            for kv in &kvs {
                apply(&mut held, node, &kv.key, Some(&kv.value));
            }
            let w = store.watch(&prefix, rev + 1)?;
            Ok((held, w))
        })();
        let mut watcher = match listed {
            Ok((held, w)) => {
                let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
                s.held = held;
                s.ready = true;
                quiet = false;
                w
            }
            Err(e) => {
                if !quiet {
                    log!("allocations: list {prefix}: {e}");
                    quiet = true;
                }
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
        };
        loop {
            match watcher.next_timeout(Duration::from_secs(5)) {
                Ok(Some(ev)) => {
                    let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
                    let value = (ev.kind == EventKind::Put).then_some(ev.kv.value.as_slice());
                    apply(&mut s.held, node, &ev.kv.key, value);
                }
                Ok(None) => {}
                Err(StoreError::Compacted(_)) => break,
                Err(e) => {
                    if !quiet {
                        log!("allocations: watch {prefix}: {e}");
                        quiet = true;
                    }
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
        }
    }
}

/// What `stat` of a recorded namespace says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Alive,
    Gone(String),
    Unknown,
}

/// Whether weftd can tell a missing `/proc/<pid>` from one it cannot see.
pub fn in_initial_pid_namespace() -> bool {
    std::fs::metadata("/proc/self/ns/pid").is_ok_and(|m| m.ino() == INIT_PID_NS_INO)
}

/// The verdict on one recorded namespace (one `stat`; a second one of the parent directory
/// when the path is missing).
pub fn verdict(n: &NetnsRef, initial_pid_ns: bool) -> Verdict {
    let path = Path::new(&n.path);
    match std::fs::metadata(path) {
        Ok(m) if m.ino() == n.ino && m.dev() == n.dev => Verdict::Alive,
        Ok(m) if m.dev() == n.dev => Verdict::Gone(format!(
            "{} is now another namespace (inode {}, recorded {})",
            n.path,
            m.ino(),
            n.ino
        )),
        Ok(_) => Verdict::Unknown,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            // Gone only where weftd sees what the plugin saw: the initial PID namespace for a
            // /proc path, the very directory the plugin found the path in otherwise (not a
            // directory of the same name in another mount namespace, e.g. a container's own
            // /run/netns, where every pod would look gone).
            let visible = if n.path.starts_with("/proc/") {
                initial_pid_ns
            } else {
                n.dir.is_some_and(|(ino, dev)| {
                    path.parent()
                        .and_then(|d| std::fs::metadata(d).ok())
                        .is_some_and(|d| d.is_dir() && d.ino() == ino && d.dev() == dev)
                })
            };
            if visible {
                Verdict::Gone(format!("{} does not exist", n.path))
            } else {
                Verdict::Unknown
            }
        }
        Err(_) => Verdict::Unknown,
    }
}

/// How many of `held` were examined, and the gone ones (sorted).
pub fn examine(held: &[Held]) -> (usize, Vec<GoneNetns>) {
    let init = in_initial_pid_namespace();
    let mut gone: Vec<GoneNetns> = held
        .iter()
        .filter_map(|h| match verdict(&h.netns, init) {
            Verdict::Gone(why) => Some(GoneNetns {
                network: h.network.clone(),
                handle: h.handle.clone(),
                created_at: h.created_at,
                why,
            }),
            _ => None,
        })
        .collect();
    gone.sort();
    (held.len(), gone)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts() {
        let me = NetnsRef::stat(Path::new("/proc/self/ns/net")).unwrap();
        let init = in_initial_pid_namespace();
        assert_eq!(verdict(&me, init), Verdict::Alive);
        // Another inode on nsfs: another namespace.
        let other = NetnsRef {
            ino: me.ino + 1,
            ..me.clone()
        };
        assert!(matches!(verdict(&other, init), Verdict::Gone(_)));
        // A missing file in the directory the plugin saw: gone; in another directory of that
        // name (another inode: e.g. another mount of /run/netns) or one not recorded: unknown.
        let dir = std::env::temp_dir();
        let seen = {
            let m = std::fs::metadata(&dir).unwrap();
            (m.ino(), m.dev())
        };
        let missing = NetnsRef {
            path: dir
                .join(format!("weft-no-netns-{}", std::process::id()))
                .to_string_lossy()
                .into_owned(),
            dir: Some(seen),
            ..me.clone()
        };
        assert!(matches!(verdict(&missing, init), Verdict::Gone(_)));
        let elsewhere = NetnsRef {
            dir: Some((seen.0 + 1, seen.1)),
            ..missing.clone()
        };
        assert_eq!(verdict(&elsewhere, init), Verdict::Unknown);
        let unrecorded = NetnsRef {
            dir: None,
            ..missing.clone()
        };
        assert_eq!(verdict(&unrecorded, init), Verdict::Unknown);
        let hidden = NetnsRef {
            path: "/nonexistent-weft-dir/ns".into(),
            ..me.clone()
        };
        assert_eq!(verdict(&hidden, init), Verdict::Unknown);
        // A plain file where the namespace was: unknown (unmounted, or mounts not visible).
        let plain = NetnsRef {
            path: "/proc/self/status".into(),
            ..me.clone()
        };
        assert_eq!(verdict(&plain, init), Verdict::Unknown);
        // A /proc path of an exited pid: gone only from the initial PID namespace.
        let exited = NetnsRef {
            path: "/proc/999999999/ns/net".into(),
            ..me
        };
        assert!(matches!(verdict(&exited, true), Verdict::Gone(_)));
        assert_eq!(verdict(&exited, false), Verdict::Unknown);
    }
}
