use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::sched::{CloneFlags, setns};

use crate::{Error, Netlink, Result};

const THREAD_NETNS: &str = "/proc/thread-self/ns/net";

/// An open network namespace (a file descriptor on its nsfs inode).
#[derive(Debug)]
pub struct Netns {
    fd: OwnedFd,
    path: PathBuf,
}

impl Netns {
    /// Opens the namespace at `path` (for example `/var/run/netns/x` or `/proc/<pid>/ns/net`).
    /// A missing path gives an error whose `errno()` is `ENOENT`.
    pub fn open(path: &Path) -> Result<Netns> {
        let file =
            File::open(path).map_err(|e| Error::io(format!("open netns {}", path.display()), e))?;
        Ok(Netns {
            fd: file.into(),
            path: path.to_path_buf(),
        })
    }

    /// The network namespace of the calling thread.
    pub fn current() -> Result<Netns> {
        Netns::open(Path::new(THREAD_NETNS))
    }

    /// Wraps an already open namespace descriptor; `path` is only used in error messages.
    pub fn from_fd(fd: OwnedFd, path: impl Into<PathBuf>) -> Netns {
        Netns {
            fd,
            path: path.into(),
        }
    }

    /// The path this namespace was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The namespace's cookie (`SO_NETNS_COOKIE`): unique per namespace for the whole boot and
    /// never reused, unlike inode numbers. Costs two `setns` and a socket.
    pub fn cookie(&self) -> Result<u64> {
        Netlink::in_netns(self)?.netns_cookie()
    }

    /// Runs `f` with the calling thread inside this namespace, then moves the thread back, also
    /// when `f` panics. Only the calling thread moves; processes it spawns inherit the namespace.
    pub fn run_in<T>(&self, f: impl FnOnce() -> T) -> Result<T> {
        let original = Netns::current()?;
        self.enter()?;
        let mut guard = Restore {
            original: Some(original),
        };
        let out = f();
        guard.restore()?;
        Ok(out)
    }

    /// The descriptor, for `IFLA_NET_NS_FD` and the like.
    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    fn enter(&self) -> Result<()> {
        setns(&self.fd, CloneFlags::CLONE_NEWNET)
            .map_err(|e| Error::nix(format!("enter netns {}", self.path.display()), e))
    }
}

impl AsFd for Netns {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Moves the thread back to its original namespace when dropped (the panic path).
struct Restore {
    original: Option<Netns>,
}

impl Restore {
    fn restore(&mut self) -> Result<()> {
        match self.original.take() {
            Some(ns) => ns.enter(),
            None => Ok(()),
        }
    }
}

impl Drop for Restore {
    fn drop(&mut self) {
        if let Err(e) = self.restore() {
            // A thread left in the wrong namespace would silently change the wrong network.
            eprintln!("weft-dataplane: cannot return to the original netns: {e}; aborting");
            std::process::abort();
        }
    }
}
