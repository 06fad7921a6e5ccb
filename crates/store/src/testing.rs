//! Test support (feature `testing`): a real etcd for one test.
//!
//! ```no_run
//! # use weft_store::testing::EtcdServer;
//! # use weft_store::etcd::{EtcdStore, EtcdOptions};
//! let etcd = EtcdServer::start();
//! let store = EtcdStore::connect(&[etcd.endpoint()], EtcdOptions::default()).unwrap();
//! // ... etcd.stop(); etcd.restart(); ... dropped: killed, its directory removed.
//! ```
//!
//! Runs `/usr/bin/etcd` (or `$WEFT_ETCD`) on free loopback ports with a temp data dir. The
//! process is killed by PID and its directory removed when the [`EtcdServer`] is dropped, also
//! when the test panics; if the test process itself dies, etcd gets SIGKILL from the kernel
//! (started through `setpriv --pdeathsig KILL` from a thread that lives as long as the process).
//!
//! [`EtcdServer::start_in`] runs etcd inside a network namespace the test made (through
//! `nsenter --net`), listening on an address of that namespace: for clients that themselves run
//! in other namespaces (a multi-node lab), where the root namespace's loopback is out of reach.
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long etcd may take to become healthy.
const START_TIMEOUT: Duration = Duration::from_secs(15);

pub struct EtcdServer {
    child: Option<Child>,
    dir: Option<tempfile::TempDir>,
    client_port: u16,
    peer_port: u16,
    /// The address etcd listens on (127.0.0.1 unless started with [`EtcdServer::start_in`]).
    host: IpAddr,
    /// The network namespace etcd runs in (`None`: the caller's own).
    netns: Option<PathBuf>,
}

type SpawnReply = mpsc::Sender<std::io::Result<Child>>;

/// Children are forked from one thread that never ends, so a parent-death signal tied to the
/// forking thread fires only when the whole test process goes.
fn spawner() -> &'static Mutex<mpsc::Sender<(Command, SpawnReply)>> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<(Command, SpawnReply)>>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<(Command, SpawnReply)>();
        std::thread::Builder::new()
            .name("weft-etcd-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("spawning the etcd spawner thread");
        Mutex::new(tx)
    })
}

fn spawn(cmd: Command) -> std::io::Result<Child> {
    let (tx, rx) = mpsc::channel();
    spawner()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .send((cmd, tx))
        .map_err(|_| std::io::Error::other("etcd spawner thread is gone"))?;
    rx.recv()
        .map_err(|_| std::io::Error::other("etcd spawner thread is gone"))?
}

/// Two distinct free ports (both held while choosing, so they differ).
fn free_ports() -> (u16, u16) {
    let bind = || TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0 for a free port");
    let (a, b) = (bind(), bind());
    let port = |l: &TcpListener| l.local_addr().map(|a| a.port()).expect("a bound port");
    (port(&a), port(&b))
}

fn etcd_binary() -> PathBuf {
    std::env::var_os("WEFT_ETCD")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/etcd"))
}

/// The URL of `host:port` (IPv6 addresses in brackets).
fn url(host: IpAddr, port: u16) -> String {
    match host {
        IpAddr::V4(a) => format!("http://{a}:{port}"),
        IpAddr::V6(a) => format!("http://[{a}]:{port}"),
    }
}

/// `GET /health` asked from inside `netns` (a short bash `/dev/tcp` exchange run by nsenter:
/// the test process itself stays in its own namespace).
fn healthy_in(netns: &Path, host: IpAddr, port: u16) -> bool {
    let script = format!(
        "exec 3<>/dev/tcp/{host}/{port} && printf 'GET /health HTTP/1.0\\r\\nHost: x\\r\\n\\r\\n' >&3 && cat <&3"
    );
    Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .args(["--", "timeout", "1", "bash", "-c", &script])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("\"health\":\"true\""))
}

/// `GET /health` on the client port: etcd answers `{"health":"true"}` once it has a leader.
fn healthy(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(200),
    ) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.contains("\"health\":\"true\"")
}

impl EtcdServer {
    /// Starts a single-member etcd and waits until it is healthy. Panics when it cannot (a test
    /// helper): the message holds the end of etcd's log.
    pub fn start() -> EtcdServer {
        let mut last = String::new();
        // A port found free may be taken by someone else before etcd binds it: try again.
        for _ in 0..3 {
            let dir = tempfile::Builder::new()
                .prefix("weft-etcd-")
                .tempdir()
                .expect("creating a temp dir for etcd");
            let (client_port, peer_port) = free_ports();
            let mut s = EtcdServer {
                child: None,
                dir: Some(dir),
                client_port,
                peer_port,
                host: IpAddr::V4(Ipv4Addr::LOCALHOST),
                netns: None,
            };
            match s.launch() {
                Ok(()) => return s,
                Err(e) => last = e,
            }
        }
        panic!("etcd did not start: {last}");
    }

    /// Starts a single-member etcd inside the network namespace at `netns` (for example
    /// `/run/netns/lab-store`), listening on `ip`, which must be an address of that namespace
    /// (client port 2379, peer port 2380: the namespace is the test's own, so they are free; one
    /// such etcd per namespace and address). Waits until it is healthy; panics when it cannot.
    /// [`EtcdServer::stop`], [`EtcdServer::restart`], [`EtcdServer::pause`] and
    /// [`EtcdServer::resume`] work as for [`EtcdServer::start`]; clients reach it only from
    /// namespaces routed to `ip`.
    pub fn start_in(netns: &Path, ip: IpAddr) -> EtcdServer {
        let dir = tempfile::Builder::new()
            .prefix("weft-etcd-")
            .tempdir()
            .expect("creating a temp dir for etcd");
        let mut s = EtcdServer {
            child: None,
            dir: Some(dir),
            client_port: 2379,
            peer_port: 2380,
            host: ip,
            netns: Some(netns.to_path_buf()),
        };
        if let Err(e) = s.launch() {
            panic!("etcd did not start in {}: {e}", netns.display());
        }
        s
    }

    /// The network namespace etcd runs in, when started with [`EtcdServer::start_in`].
    pub fn netns(&self) -> Option<&Path> {
        self.netns.as_deref()
    }

    fn is_healthy(&self) -> bool {
        match &self.netns {
            None => healthy(self.client_port),
            Some(ns) => healthy_in(ns, self.host, self.client_port),
        }
    }

    /// The temp dir holding etcd's data and its log (`etcd.log`); removed on drop.
    pub fn dir(&self) -> &Path {
        self.dir
            .as_ref()
            .map_or(Path::new("/nonexistent"), |d| d.path())
    }

    fn launch(&mut self) -> Result<(), String> {
        let name = "weft-test";
        let client = url(self.host, self.client_port);
        let peer = url(self.host, self.peer_port);
        let log_path = self.dir().join("etcd.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| format!("{}: {e}", log_path.display()))?;
        let log2 = log
            .try_clone()
            .map_err(|e| format!("{}: {e}", log_path.display()))?;
        let etcd = etcd_binary();
        let args: Vec<String> = vec![
            format!("--name={name}"),
            format!("--data-dir={}", self.dir().join("data").display()),
            format!("--listen-client-urls={client}"),
            format!("--advertise-client-urls={client}"),
            format!("--listen-peer-urls={peer}"),
            format!("--initial-advertise-peer-urls={peer}"),
            format!("--initial-cluster={name}={peer}"),
            "--initial-cluster-state=new".into(),
            "--log-level=warn".into(),
        ];
        // nsenter (for a namespace) and setpriv exec in turn: the child's PID is etcd's.
        let mut argv: Vec<std::ffi::OsString> = Vec::new();
        if let Some(ns) = &self.netns {
            argv.extend(["nsenter".into(), format!("--net={}", ns.display()).into()]);
            argv.push("--".into());
        }
        if Path::new("/usr/bin/setpriv").exists() {
            argv.extend([
                "/usr/bin/setpriv".into(),
                "--pdeathsig".into(),
                "KILL".into(),
                "--".into(),
            ]);
        }
        argv.push(etcd.clone().into_os_string());
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..]);
        cmd.args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2));
        let child = spawn(cmd).map_err(|e| format!("running {}: {e}", etcd.display()))?;
        self.child = Some(child);
        let t = Instant::now();
        while t.elapsed() < START_TIMEOUT {
            if self.is_healthy() {
                return Ok(());
            }
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                self.child = None;
                return Err(format!("etcd exited with {status}: {}", self.log_tail()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill();
        Err(format!(
            "etcd not healthy after {START_TIMEOUT:?}: {}",
            self.log_tail()
        ))
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir().join("etcd.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The client URL, `http://127.0.0.1:PORT` (or the address given to
    /// [`EtcdServer::start_in`]).
    pub fn endpoint(&self) -> String {
        url(self.host, self.client_port)
    }

    /// The etcd process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills etcd (SIGKILL), keeping its data and ports for [`EtcdServer::restart`].
    pub fn stop(&mut self) {
        self.kill();
    }

    /// Freezes etcd (SIGSTOP): it keeps its port open but answers nothing, as a hung or
    /// partitioned server would. [`EtcdServer::resume`] thaws it; drop kills it either way.
    pub fn pause(&self) {
        self.signal("STOP");
    }

    /// Thaws an etcd frozen by [`EtcdServer::pause`].
    pub fn resume(&self) {
        self.signal("CONT");
    }

    fn signal(&self, sig: &str) {
        if let Some(pid) = self.pid() {
            let ok = Command::new("kill")
                .arg(format!("-{sig}"))
                .arg(pid.to_string())
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "kill -{sig} {pid} failed");
        }
    }

    /// Starts etcd again on the same data dir and ports (stopping it first if it runs), and
    /// waits until it is healthy. Panics when it cannot.
    pub fn restart(&mut self) {
        self.kill();
        if let Err(e) = self.launch() {
            panic!("etcd did not restart: {e}");
        }
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.kill();
        // TempDir's own drop removes the directory.
        self.dir.take();
    }
}

/// xorshift64*: enough randomness for choosing, no dependency.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// The seed for a randomised test: `WEFT_SEED` if set (to repeat a run), else the clock.
pub fn seed() -> u64 {
    std::env::var("WEFT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        })
}
