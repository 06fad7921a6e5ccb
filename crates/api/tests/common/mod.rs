//! Test support: a real etcd, the real `weft-api` binary on a loopback port (killed by PID on
//! drop), an HTTP client, and the real `weftctl` binary.
//!
//! `weftctl` is another package's binary: it is looked up next to this test's target dir
//! (`target/debug/weftctl`, built by `cargo test --workspace` or `cargo build -p weft-cli`) or
//! at `$WEFTCTL`.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use weft_store::Store;
use weft_store::etcd::{EtcdOptions, EtcdStore};
use weft_store::testing::EtcdServer;

pub const ADMIN: &str = "admin-token-for-tests-0123456789";
pub const READ: &str = "read-token-for-tests-0123456789";

pub struct Api {
    pub child: Child,
    pub url: String,
    pub dir: tempfile::TempDir,
    pub log: PathBuf,
    pub agent: ureq::Agent,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn agent(ca: Option<&Path>) -> ureq::Agent {
    let mut cfg = ureq::Agent::config_builder()
        .http_status_as_error(false)
        // A fresh connection per request: the server closes a connection whose request body
        // it answered without reading (401, 413, 415...), and a reused one would then fail.
        .max_idle_connections(0)
        .timeout_global(Some(Duration::from_secs(30)));
    if let Some(ca) = ca {
        let pem = std::fs::read(ca).unwrap();
        let certs: Vec<_> = ureq::tls::parse_pem(&pem)
            .filter_map(|i| match i {
                Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                _ => None,
            })
            .collect();
        cfg = cfg.tls_config(
            ureq::tls::TlsConfig::builder()
                .root_certs(ureq::tls::RootCerts::Specific(Arc::new(certs)))
                .build(),
        );
    }
    cfg.build().into()
}

impl Api {
    /// weft-api on `etcd` with the test tokens (and `extra` flags).
    pub fn start(etcd: &EtcdServer, extra: &[&str]) -> Api {
        Self::start_with(&["--etcd", &etcd.endpoint()], extra, "http", None)
    }

    pub fn start_with(store: &[&str], extra: &[&str], scheme: &str, ca: Option<&Path>) -> Api {
        let mut last = String::new();
        // A port found free may be taken before weft-api binds it: try again.
        for _ in 0..3 {
            let dir = tempfile::Builder::new()
                .prefix("weft-api-test-")
                .tempdir()
                .unwrap();
            std::fs::write(dir.path().join("admin"), format!("# admins\n{ADMIN}\n")).unwrap();
            std::fs::write(dir.path().join("read"), format!("{READ}\n")).unwrap();
            let log = dir.path().join("api.log");
            let port = free_port();
            let f = std::fs::File::create(&log).unwrap();
            let child = Command::new(env!("CARGO_BIN_EXE_weft-api"))
                .args(store)
                .args(["--listen", &format!("127.0.0.1:{port}")])
                .arg("--admin-token-file")
                .arg(dir.path().join("admin"))
                .arg("--read-token-file")
                .arg(dir.path().join("read"))
                .args(extra)
                .env_remove("WEFT_API_ADMIN_TOKENS")
                .env_remove("WEFT_API_READ_TOKENS")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::from(f))
                .spawn()
                .expect("spawn weft-api");
            let mut api = Api {
                child,
                url: format!("{scheme}://127.0.0.1:{port}"),
                dir,
                log,
                agent: agent(ca),
            };
            let t = Instant::now();
            while t.elapsed() < Duration::from_secs(15) {
                if let Ok(Some(_)) = api.child.try_wait() {
                    break;
                }
                if api.get_as("/healthz", None).0 == 200 {
                    return api;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            last = format!(
                "{}\nlast answer: {:?}",
                api.log_text(),
                api.get_as("/healthz", None)
            );
            if !last.contains("in use") {
                break;
            }
        }
        panic!("weft-api did not start:\n{last}");
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// (status, JSON body or the text as a JSON string, content type).
    pub fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<(&str, &[u8])>,
    ) -> (u16, Value, String) {
        let url = format!("{}{path}", self.url);
        let mut req = ureq::http::Request::builder().method(method).uri(&url);
        if let Some(t) = token {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        let res = match body {
            Some((ct, bytes)) => {
                if !ct.is_empty() {
                    req = req.header("Content-Type", ct);
                }
                self.agent.run(req.body(bytes.to_vec()).unwrap())
            }
            None => self.agent.run(req.body(()).unwrap()),
        };
        let mut resp = match res {
            Ok(r) => r,
            Err(e) => panic!("{method} {url}: {e}\nweft-api log:\n{}", self.log_text()),
        };
        let status = resp.status().as_u16();
        let ct = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let text = resp
            .body_mut()
            .with_config()
            .limit(1 << 30)
            .read_to_string()
            .unwrap_or_default();
        let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, v, ct)
    }

    pub fn get_as(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        let url = format!("{}{path}", self.url);
        let mut req = self.agent.get(&url);
        if let Some(t) = token {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        match req.call() {
            Ok(mut r) => {
                let s = r.status().as_u16();
                let text = r
                    .body_mut()
                    .with_config()
                    .limit(1 << 30)
                    .read_to_string()
                    .unwrap_or_default();
                (
                    s,
                    serde_json::from_str(&text).unwrap_or(Value::String(text)),
                )
            }
            Err(e) => (0, Value::String(e.to_string())),
        }
    }

    pub fn get(&self, path: &str) -> (u16, Value) {
        let (s, v, _) = self.call("GET", path, Some(ADMIN), None);
        (s, v)
    }

    /// GET as admin, asserting 200.
    pub fn ok(&self, path: &str) -> Value {
        let (s, v) = self.get(path);
        assert_eq!(s, 200, "GET {path}: {v}");
        v
    }

    pub fn send(&self, method: &str, path: &str, body: &Value) -> (u16, Value) {
        let bytes = serde_json::to_vec(body).unwrap();
        let (s, v, _) = self.call(
            method,
            path,
            Some(ADMIN),
            Some(("application/json", &bytes)),
        );
        (s, v)
    }

    pub fn delete(&self, path: &str) -> (u16, Value) {
        let (s, v, _) = self.call("DELETE", path, Some(ADMIN), None);
        (s, v)
    }

    /// Runs weftctl against this API with the admin token (override with `env`).
    pub fn weftctl(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut c = Command::new(weftctl_bin());
        c.args(args)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("HOME", self.dir.path())
            .env("WEFT_API_URL", &self.url)
            .env("WEFT_TOKEN", ADMIN);
        for (k, v) in env {
            c.env(k, v);
        }
        c.stdin(Stdio::null()).output().expect("run weftctl")
    }
}

impl Drop for Api {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- weft-api log:\n{}", self.log_text());
        }
    }
}

pub fn weftctl_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("WEFTCTL") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current_exe");
    let p = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("weftctl"))
        .expect("the test binary's target dir");
    assert!(
        p.exists(),
        "{} is missing: run `cargo build -p weft-cli` (same CARGO_TARGET_DIR) before these \
         tests, or set WEFTCTL",
        p.display()
    );
    p
}

pub fn store(etcd: &EtcdServer) -> EtcdStore {
    EtcdStore::connect(&[etcd.endpoint()], EtcdOptions::default()).expect("etcd client")
}

pub fn keys(store: &dyn Store, prefix: &str) -> Vec<String> {
    store
        .list(prefix)
        .unwrap()
        .into_iter()
        .map(|kv| kv.key)
        .collect()
}

pub fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}
