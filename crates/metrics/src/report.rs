//! The timing report the `weft` plugin sends its node's weftd after each CNI verb.
//!
//! One datagram per verb on a unix datagram socket, fire and forget: the plugin never waits for
//! weftd, never learns whether the report arrived, and never fails or slows its CNI operation
//! because of it (the socket is non-blocking; a missing weftd, a full queue or any other error
//! drops the report). The datagram is one JSON object, at most [`MAX_DATAGRAM`] bytes:
//!
//! ```json
//! {"v":1,"op":"ADD","network":"cluster","node":"node-1","code":0,"micros":8123,"addresses":2}
//! ```
//!
//! - `v`: protocol version, 1. weftd drops other versions (and counts them as rejected).
//! - `op`: the CNI verb, `ADD`, `DEL`, `CHECK`, `GC` or `STATUS`.
//! - `network`: the network configuration's `name`.
//! - `node`: the plugin's node name (`ipam.node`, default the hostname).
//! - `code`: 0 when the verb succeeded, else the CNI error code it returned.
//! - `micros`: how long the verb took inside the plugin, from the parsed configuration to the
//!   result (process start, reading stdin and printing the result are not included).
//! - `addresses`: addresses the verb allocated (ADD) or released (DEL) and left so; 0 for a
//!   failed verb and for an ADD that found its allocation already there (a retried ADD).
//!
//! Where: the socket path is per node, because one filesystem may hold several nodes (the lab
//! runs its nodes as network namespaces of one host): [`default_socket`] derives it from the
//! node name, `/run/weft/weftd-<node>.sock`; both sides can override it (the plugin's
//! `reportSocket` key, weftd's `--report-socket`).

use std::io;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The protocol version this crate writes and reads.
pub const VERSION: u32 = 1;
/// The largest datagram weftd reads; longer ones are rejected.
pub const MAX_DATAGRAM: usize = 1024;
/// Where weftd listens by default: `<RUN_DIR>/weftd-<node>.sock`.
pub const RUN_DIR: &str = "/run/weft";
/// The verbs a report may name (anything else is rejected, so labels stay bounded).
pub const OPS: &[&str] = &["ADD", "DEL", "CHECK", "GC", "STATUS"];

/// One CNI verb's outcome, as the plugin reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Report {
    pub v: u32,
    pub op: String,
    pub network: String,
    pub node: String,
    /// 0: success; otherwise the CNI error code.
    pub code: u32,
    pub micros: u64,
    pub addresses: u32,
}

/// Why a datagram was not taken as a report.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReportError {
    #[error("report is {0} bytes, more than {MAX_DATAGRAM}")]
    TooLong(usize),
    #[error("report is not the expected JSON object: {0}")]
    Decode(String),
    #[error("report has protocol version {0}, this weftd reads version {VERSION}")]
    Version(u32),
    #[error("report names op {0:?}, not one of ADD, DEL, CHECK, GC, STATUS")]
    Op(String),
    #[error("report names network {0:?}: a network name is 1 to 128 characters")]
    Network(String),
}

impl Report {
    /// The datagram's bytes.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Reads and checks one datagram.
    pub fn decode(buf: &[u8]) -> Result<Report, ReportError> {
        if buf.len() > MAX_DATAGRAM {
            return Err(ReportError::TooLong(buf.len()));
        }
        let r: Report =
            serde_json::from_slice(buf).map_err(|e| ReportError::Decode(e.to_string()))?;
        if r.v != VERSION {
            return Err(ReportError::Version(r.v));
        }
        if !OPS.contains(&r.op.as_str()) {
            return Err(ReportError::Op(r.op));
        }
        if r.network.is_empty() || r.network.len() > 128 {
            return Err(ReportError::Network(r.network));
        }
        Ok(r)
    }

    pub fn ok(&self) -> bool {
        self.code == 0
    }
}

/// weftd's report socket for `node`: `/run/weft/weftd-<node>.sock`.
pub fn default_socket(node: &str) -> PathBuf {
    Path::new(RUN_DIR).join(format!("weftd-{node}.sock"))
}

/// Sends `report` to `path` without blocking: an error means the report is lost, nothing else.
pub fn send(path: &Path, report: &Report) -> io::Result<()> {
    let sock = UnixDatagram::unbound()?;
    sock.set_nonblocking(true)?;
    sock.send_to(&report.encode(), path)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Report {
        Report {
            v: VERSION,
            op: "ADD".into(),
            network: "cluster".into(),
            node: "node-1".into(),
            code: 0,
            micros: 8123,
            addresses: 2,
        }
    }

    #[test]
    fn round_trip_and_wire_form() {
        let r = sample();
        let bytes = r.encode();
        assert_eq!(
            std::str::from_utf8(&bytes).unwrap(),
            r#"{"v":1,"op":"ADD","network":"cluster","node":"node-1","code":0,"micros":8123,"addresses":2}"#
        );
        assert_eq!(Report::decode(&bytes).unwrap(), r);
    }

    #[test]
    fn bad_datagrams_are_rejected() {
        assert!(matches!(
            Report::decode(b"{not json"),
            Err(ReportError::Decode(_))
        ));
        let mut r = sample();
        r.v = 2;
        assert_eq!(Report::decode(&r.encode()), Err(ReportError::Version(2)));
        let mut r = sample();
        r.op = "EXPLODE".into();
        assert!(matches!(
            Report::decode(&r.encode()),
            Err(ReportError::Op(_))
        ));
        let mut r = sample();
        r.network = "x".repeat(129);
        assert!(matches!(
            Report::decode(&r.encode()),
            Err(ReportError::Network(_))
        ));
        assert!(matches!(
            Report::decode(&vec![b' '; MAX_DATAGRAM + 1]),
            Err(ReportError::TooLong(_))
        ));
        let extra = br#"{"v":1,"op":"ADD","network":"n","node":"a","code":0,"micros":1,"addresses":0,"x":1}"#;
        assert!(matches!(Report::decode(extra), Err(ReportError::Decode(_))));
    }

    #[test]
    fn socket_path_is_per_node() {
        assert_eq!(
            default_socket("node-1"),
            PathBuf::from("/run/weft/weftd-node-1.sock")
        );
        assert_ne!(default_socket("node-1"), default_socket("node-2"));
    }

    #[test]
    fn send_delivers_and_never_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.sock");
        // Nobody listening: an error, at once.
        assert!(send(&path, &sample()).is_err());
        let rx = UnixDatagram::bind(&path).unwrap();
        send(&path, &sample()).unwrap();
        let mut buf = [0u8; MAX_DATAGRAM + 1];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(Report::decode(&buf[..n]).unwrap(), sample());
        // A receiver that never reads: the queue fills and send fails instead of blocking.
        let t = std::time::Instant::now();
        let mut failed = false;
        for _ in 0..10_000 {
            if send(&path, &sample()).is_err() {
                failed = true;
                break;
            }
        }
        assert!(
            failed,
            "10000 datagrams to a receiver that never reads all went through"
        );
        assert!(t.elapsed() < std::time::Duration::from_secs(2));
    }
}
