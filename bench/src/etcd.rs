//! A throwaway single-member etcd on loopback for the cluster-IPAM benchmarks.
//!
//! As `weft_store::testing::EtcdServer` does, but returning errors instead of panicking (the
//! release profile aborts on panic, which would skip the cleanup): free loopback ports (never
//! 2379/2380), the data dir and log inside the caller's temp dir, started through
//! `setpriv --pdeathsig KILL` from the main thread so that it dies with this process even if
//! this process is killed. Its own process group, so a Ctrl-C in the terminal reaches this
//! program (which then stops and kills etcd by PID) rather than etcd mid-run.
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

const START_TIMEOUT: Duration = Duration::from_secs(15);

pub struct Etcd {
    child: Option<Child>,
    dir: PathBuf,
    port: u16,
}

/// Two distinct free loopback ports (both held while choosing).
fn free_ports() -> Result<(u16, u16)> {
    let a = TcpListener::bind("127.0.0.1:0").context("bind 127.0.0.1:0")?;
    let b = TcpListener::bind("127.0.0.1:0").context("bind 127.0.0.1:0")?;
    Ok((a.local_addr()?.port(), b.local_addr()?.port()))
}

/// `GET path` over HTTP/1.0 on the loopback port; the body, or None.
fn http_get(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(
        &SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(200),
    )
    .ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.split_once("\r\n\r\n").map(|(_, b)| b.to_string())
}

impl Etcd {
    /// Starts etcd with its data under `parent` and waits until it is healthy.
    pub fn start(parent: &Path) -> Result<Etcd> {
        let bin = std::env::var_os("WEFT_ETCD")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/usr/bin/etcd"));
        if !bin.exists() {
            bail!(
                "{} not found: install etcd-server (Debian) or set WEFT_ETCD",
                bin.display()
            );
        }
        let mut last = String::new();
        // A port found free may be taken before etcd binds it: try again on others.
        for attempt in 0..3 {
            crate::check_stop()?;
            let dir = parent.join(format!("etcd{attempt}"));
            std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
            let (port, peer_port) = free_ports()?;
            let mut e = Etcd {
                child: None,
                dir,
                port,
            };
            match e.launch(&bin, peer_port) {
                Ok(()) => return Ok(e),
                Err(err) => last = format!("{err:#}"),
            }
        }
        bail!("etcd did not start: {last}")
    }

    fn launch(&mut self, bin: &Path, peer_port: u16) -> Result<()> {
        let client = self.endpoint();
        let peer = format!("http://127.0.0.1:{peer_port}");
        let log_path = self.dir.join("etcd.log");
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("create {}", log_path.display()))?;
        let log2 = log.try_clone()?;
        let mut cmd = if Path::new("/usr/bin/setpriv").exists() {
            let mut c = Command::new("/usr/bin/setpriv");
            c.args(["--pdeathsig", "KILL", "--"]).arg(bin);
            c
        } else {
            Command::new(bin)
        };
        cmd.args([
            "--name=weft-bench".to_string(),
            format!("--data-dir={}", self.dir.join("data").display()),
            format!("--listen-client-urls={client}"),
            format!("--advertise-client-urls={client}"),
            format!("--listen-peer-urls={peer}"),
            format!("--initial-advertise-peer-urls={peer}"),
            format!("--initial-cluster=weft-bench={peer}"),
            "--initial-cluster-state=new".into(),
            "--log-level=warn".into(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log2))
        .process_group(0);
        self.child = Some(
            cmd.spawn()
                .with_context(|| format!("run {}", bin.display()))?,
        );
        let t = Instant::now();
        while t.elapsed() < START_TIMEOUT {
            crate::check_stop()?;
            if http_get(self.port, "/health").is_some_and(|b| b.contains("\"health\":\"true\"")) {
                return Ok(());
            }
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                self.child = None;
                bail!("etcd exited with {status}: {}", self.log_tail());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill();
        bail!(
            "etcd not healthy after {START_TIMEOUT:?}: {}",
            self.log_tail()
        )
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("etcd.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// The etcd process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The value of a Prometheus counter on etcd's `/metrics`, summed over the series whose
    /// labels contain every one of `labels` (e.g. `grpc_method="Txn"`).
    pub fn metric(&self, name: &str, labels: &[&str]) -> Option<f64> {
        let body = http_get(self.port, "/metrics")?;
        let mut sum = 0.0;
        let mut found = false;
        for line in body.lines() {
            let Some(rest) = line.strip_prefix(name) else {
                continue;
            };
            if !(rest.starts_with('{') || rest.starts_with(' ')) {
                continue;
            }
            if !labels.iter().all(|l| rest.contains(l)) {
                continue;
            }
            if let Some(v) = rest.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) {
                sum += v;
                found = true;
            }
        }
        found.then_some(sum)
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill(); // by PID: only the process this program started
            let _ = c.wait();
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
        if let Err(e) = std::fs::remove_dir_all(&self.dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            eprintln!("weft-bench: cannot remove {}: {e}", self.dir.display());
        }
    }
}
