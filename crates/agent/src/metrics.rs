//! weftd's metrics: the plugin's timing reports in, an HTTP endpoint out.
//!
//! With `--metrics-listen ADDR`, [`start`] binds two things before the first reconcile pass:
//! - the report socket (`--report-socket`, default `/run/weft/weftd-<node>.sock`): a unix
//!   datagram socket the `weft` plugin sends one report to after each CNI verb (protocol in
//!   `weft_metrics::report`); one thread reads it and counts;
//! - a TCP listener serving `GET /metrics` (OpenMetrics text, see `docs/metrics.md`): one
//!   accepting thread and one short-lived thread per connection, at most [`MAX_CONNECTIONS`] at
//!   once (more get 503 at once), each with 5 s read and write timeouts and an 8 KiB request
//!   limit; every request gets one response and the connection is closed. Nothing a client
//!   sends can block or stop the agent: the main loop never waits on these threads.
//!
//! The agent's main loop calls [`Metrics::reconciled`] after each pass. Without
//! `--metrics-listen` nothing is bound and the hooks do nothing.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use weft_metrics::NodeMetrics;
use weft_metrics::report::MAX_DATAGRAM;
use weft_store::Store;

use crate::agent::spawn_named;
use crate::config::Config;
use crate::{AgentError, Result, log};

/// Scrapes served at once; more are answered 503 without a thread.
pub const MAX_CONNECTIONS: usize = 8;
/// The longest request head read.
pub const MAX_REQUEST: usize = 8 * 1024;
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// The running metrics (or nothing, when they are off). Dropping it removes the report socket
/// it bound (unless another weftd has replaced it since).
pub struct Metrics {
    inner: Option<Arc<NodeMetrics>>,
    socket: Option<(PathBuf, u64, u64)>,
    /// Where the HTTP endpoint listens (the bound address, so port 0 resolves).
    pub addr: Option<SocketAddr>,
}

impl Metrics {
    pub fn off() -> Metrics {
        Metrics {
            inner: None,
            socket: None,
            addr: None,
        }
    }

    /// Counts one reconcile pass: `Some((added, deleted))` when it succeeded.
    pub fn reconciled(&self, took: Duration, outcome: Option<(usize, usize)>) {
        if let Some(m) = &self.inner {
            m.reconciled(took, outcome);
        }
    }

    pub fn node_metrics(&self) -> Option<&Arc<NodeMetrics>> {
        self.inner.as_ref()
    }
}

impl Drop for Metrics {
    fn drop(&mut self) {
        if let Some((path, dev, ino)) = &self.socket
            && let Ok(m) = std::fs::symlink_metadata(path)
            && m.dev() == *dev
            && m.ino() == *ino
        {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Binds the report socket and the HTTP listener and starts their threads (see the module
/// docs); [`Metrics::off`] when `cfg.metrics_listen` is not set.
pub fn start(cfg: &Config, store: Arc<dyn Store>) -> Result<Metrics> {
    let Some(listen) = cfg.metrics_listen else {
        return Ok(Metrics::off());
    };
    let metrics = Arc::new(NodeMetrics::new(&cfg.node));
    let (sock, id) = bind_report_socket(&cfg.report_socket)?;
    let listener = TcpListener::bind(listen).map_err(|e| AgentError::Io {
        what: format!(
            "listen on metricsListen {listen} (choose a free address and port, e.g. --metrics-listen 0.0.0.0:9587)"
        ),
        source: e,
    })?;
    let addr = listener.local_addr().ok();
    let m = metrics.clone();
    spawn_named("reports", move || read_reports(sock, &m))?;
    let m = metrics.clone();
    spawn_named("metrics-http", move || serve(listener, m, store))?;
    log!(
        "metrics on http://{}/metrics; plugin reports on {}",
        addr.unwrap_or(listen),
        cfg.report_socket.display()
    );
    Ok(Metrics {
        inner: Some(metrics),
        socket: Some((cfg.report_socket.clone(), id.0, id.1)),
        addr,
    })
}

/// Binds `path`, replacing a stale socket left by an earlier weftd; anything else at that path
/// is an error. Returns the socket and the (device, inode) of its file.
fn bind_report_socket(path: &Path) -> Result<(UnixDatagram, (u64, u64))> {
    let io = |what: String| move |e| AgentError::Io { what, source: e };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io(format!(
            "create the directory of reportSocket {}",
            path.display()
        )))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            std::fs::remove_file(path).map_err(io(format!(
                "remove the stale report socket {}",
                path.display()
            )))?;
        }
        Ok(_) => {
            return Err(AgentError::Invalid {
                field: "reportSocket",
                msg: format!(
                    "{} exists and is not a socket; remove it or choose another path",
                    path.display()
                ),
            });
        }
        Err(_) => {}
    }
    let sock = UnixDatagram::bind(path).map_err(io(format!(
        "bind reportSocket {} (--report-socket)",
        path.display()
    )))?;
    // Only root (the plugin runs as root) may send reports.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(io(format!("chmod {}", path.display())))?;
    let m = std::fs::symlink_metadata(path).map_err(io(format!("stat {}", path.display())))?;
    Ok((sock, (m.dev(), m.ino())))
}

fn read_reports(sock: UnixDatagram, metrics: &NodeMetrics) {
    let mut buf = vec![0u8; MAX_DATAGRAM + 1];
    let mut logged_reject = false;
    let mut logged_error = false;
    loop {
        match sock.recv(&mut buf) {
            Ok(n) => {
                if let Err(e) = metrics.datagram(&buf[..n])
                    && !logged_reject
                {
                    log!("plugin report rejected (further ones are only counted): {e}");
                    logged_reject = true;
                }
            }
            Err(e) => {
                if !logged_error {
                    log!("reading plugin reports: {e}");
                    logged_error = true;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// Decrements the connection count when a connection's thread ends, however it ends.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn serve(listener: TcpListener, metrics: Arc<NodeMetrics>, store: Arc<dyn Store>) {
    let active = Arc::new(AtomicUsize::new(0));
    let mut logged = false;
    for conn in listener.incoming() {
        let mut stream = match conn {
            Ok(s) => s,
            Err(e) => {
                // Out of descriptors and the like: wait a little rather than spin.
                if !logged {
                    log!("metrics: accept: {e}");
                    logged = true;
                }
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        if active.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            active.fetch_sub(1, Ordering::SeqCst);
            // Read the request head first (briefly): closing a socket with unread data sends a
            // reset, and the client would lose the 503 to "connection reset by peer".
            let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
            let _ = stream.set_write_timeout(Some(Duration::from_millis(100)));
            let _ = read_request(&mut stream);
            let _ = respond(
                &mut stream,
                503,
                "text/plain",
                b"too many scrapes at once\n",
            );
            continue;
        }
        let slot = Slot(active.clone());
        let (m, s) = (metrics.clone(), store.clone());
        let spawned = std::thread::Builder::new()
            .name("metrics-conn".into())
            .spawn(move || {
                let _slot = slot;
                handle(stream, &m, s.as_ref());
            });
        if let Err(e) = spawned
            && !logged
        {
            log!("metrics: cannot start a connection thread: {e}");
            logged = true;
        }
    }
}

/// What a request asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Request {
    Metrics { head: bool },
    NotFound,
    MethodNotAllowed,
    Bad,
    TooLarge,
}

/// Reads a request head (up to the blank line) and classifies it.
pub fn read_request(stream: &mut impl Read) -> Request {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        if buf.len() > MAX_REQUEST {
            return Request::TooLarge;
        }
        if buf.windows(4).any(|w| w == b"\r\n\r\n") || buf.windows(2).any(|w| w == b"\n\n") {
            break;
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return Request::Bad,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let Ok(text) = std::str::from_utf8(&buf) else {
        return Request::Bad;
    };
    let line = text.lines().next().unwrap_or_default();
    let parts: Vec<&str> = line.split(' ').collect();
    let [method, target, version] = parts[..] else {
        return Request::Bad;
    };
    if !version.starts_with("HTTP/1.") || !target.starts_with('/') {
        return Request::Bad;
    }
    let path = target.split('?').next().unwrap_or_default();
    match (method, path) {
        ("GET", "/metrics") => Request::Metrics { head: false },
        ("HEAD", "/metrics") => Request::Metrics { head: true },
        (_, "/metrics") => Request::MethodNotAllowed,
        _ => Request::NotFound,
    }
}

fn handle(mut stream: TcpStream, metrics: &NodeMetrics, store: &dyn Store) {
    let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
    let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
    let _ = match read_request(&mut stream) {
        Request::Metrics { head } => {
            let body = metrics.render(store);
            if head {
                respond_head(&mut stream, body.len())
            } else {
                respond(
                    &mut stream,
                    200,
                    weft_metrics::CONTENT_TYPE,
                    body.as_bytes(),
                )
            }
        }
        Request::NotFound => respond(&mut stream, 404, "text/plain", b"not found: try /metrics\n"),
        Request::MethodNotAllowed => respond(
            &mut stream,
            405,
            "text/plain",
            b"method not allowed: use GET\n",
        ),
        Request::TooLarge => respond(&mut stream, 431, "text/plain", b"request too large\n"),
        Request::Bad => respond(&mut stream, 400, "text/plain", b"bad request\n"),
    };
    let _ = stream.shutdown(std::net::Shutdown::Both);
}

fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        _ => "Service Unavailable",
    }
}

fn respond(stream: &mut TcpStream, code: u16, ctype: &str, body: &[u8]) -> std::io::Result<()> {
    let allow = if code == 405 {
        "Allow: GET, HEAD\r\n"
    } else {
        ""
    };
    let head = format!(
        "HTTP/1.1 {code} {}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n{allow}Connection: close\r\n\r\n",
        reason(code),
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    stream.flush()
}

fn respond_head(stream: &mut TcpStream, len: usize) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: {}\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n",
        weft_metrics::CONTENT_TYPE
    );
    stream.write_all(head.as_bytes())?;
    stream.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_classified() {
        let r = |s: &str| read_request(&mut s.as_bytes());
        assert_eq!(
            r("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Request::Metrics { head: false }
        );
        assert_eq!(
            r("GET /metrics?x=1 HTTP/1.0\r\n\r\n"),
            Request::Metrics { head: false }
        );
        assert_eq!(
            r("HEAD /metrics HTTP/1.1\r\n\r\n"),
            Request::Metrics { head: true }
        );
        assert_eq!(
            r("POST /metrics HTTP/1.1\r\n\r\n"),
            Request::MethodNotAllowed
        );
        assert_eq!(r("GET / HTTP/1.1\r\n\r\n"), Request::NotFound);
        assert_eq!(r("GET /metrics\r\n\r\n"), Request::Bad);
        assert_eq!(r("\u{1}\u{2}\r\n\r\n"), Request::Bad);
        assert_eq!(r("GET /metrics HTTP/1.1\r\n"), Request::Bad); // closed before the end
        let long = format!("GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(9000));
        assert_eq!(r(&long), Request::TooLarge);
    }

    #[test]
    fn report_socket_replaces_only_a_stale_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/weftd-n.sock");
        let (_a, id_a) = bind_report_socket(&path).unwrap();
        // A second bind replaces the first socket's file (a weftd restarted after a crash).
        let (b, id_b) = bind_report_socket(&path).unwrap();
        assert_ne!(id_a, id_b);
        let tx = UnixDatagram::unbound().unwrap();
        tx.send_to(b"x", &path).unwrap();
        let mut buf = [0u8; 8];
        assert_eq!(b.recv(&mut buf).unwrap(), 1);
        // A regular file is never removed.
        let file = dir.path().join("file");
        std::fs::write(&file, "keep").unwrap();
        let e = bind_report_socket(&file).err().unwrap();
        assert!(e.to_string().contains("not a socket"), "{e}");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep");
    }
}
