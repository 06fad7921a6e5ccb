use std::io;

/// Result of every fallible call in this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Errnos the kernel gives for deleting something that is already gone: a route (ESRCH for
/// IPv4, ENOENT for IPv6), a neighbour or FDB entry (ENOENT), a link (ENODEV), an address
/// (EADDRNOTAVAIL), a missing object in general (ENXIO). The "if present" deletions tolerate
/// exactly these.
pub const GONE: &[i32] = &[
    libc::ENOENT,
    libc::ESRCH,
    libc::ENODEV,
    libc::ENXIO,
    libc::EADDRNOTAVAIL,
];

/// What failed, on which object; netlink and OS errors keep their errno (see [`Error::errno`]).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The kernel refused a netlink request. `errno` is positive (`libc::EEXIST`, ...); `msg`
    /// holds the kernel's extended-ack text when it sent one, then the errno's description.
    #[error("{op}: {msg}")]
    Netlink { op: String, errno: i32, msg: String },
    /// A system call or file operation failed.
    #[error("{op}: {source}")]
    Io {
        op: String,
        #[source]
        source: io::Error,
    },
    /// The kernel's reply could not be decoded.
    #[error("{op}: cannot decode the kernel's reply: {msg}")]
    Decode { op: String, msg: String },
    /// `nft` ran but failed; `stderr` is what it printed.
    #[error("{op}: nft exited with {status}: {stderr}")]
    Nft {
        op: String,
        status: String,
        stderr: String,
    },
    /// An object exists but is not what was asked for (for example a link that is not a bridge).
    #[error("{op}: {msg}")]
    Conflict { op: String, msg: String },
    /// The kernel refused a BPF program; `log` is the verifier's explanation (empty when it gave
    /// none), `msg` the errno's description.
    #[error("{op}: {msg}; verifier log:\n{log}")]
    Bpf {
        op: String,
        errno: i32,
        msg: String,
        log: String,
    },
    /// A caller passed a value the kernel would reject (for example a link name over 15 bytes).
    #[error("{0}")]
    Invalid(String),
}

impl Error {
    /// The positive errno of a netlink or OS error, if it carries one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Netlink { errno, .. } | Error::Bpf { errno, .. } => Some(*errno),
            Error::Io { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }

    /// True when the object asked for does not exist (ENOENT, ENODEV, ESRCH, ENXIO).
    pub fn is_not_found(&self) -> bool {
        matches!(
            self.errno(),
            Some(libc::ENOENT | libc::ENODEV | libc::ESRCH | libc::ENXIO)
        )
    }

    /// True when a deletion failed because the object is already gone (one of [`GONE`]).
    pub fn is_gone(&self) -> bool {
        self.errno().is_some_and(|e| GONE.contains(&e))
    }

    /// True when the object to create already exists (EEXIST).
    pub fn is_exists(&self) -> bool {
        self.errno() == Some(libc::EEXIST)
    }

    pub(crate) fn io(op: impl Into<String>, source: io::Error) -> Error {
        Error::Io {
            op: op.into(),
            source,
        }
    }

    pub(crate) fn nix(op: impl Into<String>, errno: nix::errno::Errno) -> Error {
        Error::io(op, io::Error::from(errno))
    }
}
