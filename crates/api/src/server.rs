//! Flags, the store, and serving: plain HTTP or TLS (rustls with the ring provider).
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use weft_store::Store;

use crate::auth::Tokens;

#[derive(Debug, Clone, Parser)]
#[command(
    name = "weft-api",
    about = "Weft's REST API server (stateless over the store)",
    version
)]
pub struct Flags {
    /// Address to listen on.
    #[arg(long, env = "WEFT_API_LISTEN", default_value = "127.0.0.1:8750")]
    pub listen: SocketAddr,
    /// etcd endpoints (http://host:port), comma-separated or repeated.
    #[arg(long, env = "WEFT_API_ETCD", value_delimiter = ',')]
    pub etcd: Vec<String>,
    /// Key prefix in etcd (as weftd's and the plugin's `store.prefix`).
    #[arg(long, env = "WEFT_API_ETCD_PREFIX")]
    pub etcd_prefix: Option<String>,
    /// Seconds before an etcd request gives up (the API then answers 503).
    #[arg(long, default_value_t = 5)]
    pub etcd_timeout_seconds: u64,
    /// The embedded store of one host instead of etcd: the plugin's `dataDir` (the store is
    /// `<DIR>/store`).
    #[arg(long, env = "WEFT_API_DATA_DIR", conflicts_with = "etcd")]
    pub data_dir: Option<PathBuf>,
    /// PEM certificate chain: serve HTTPS (with --tls-key).
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// File of admin tokens (one a line); may be repeated.
    #[arg(long)]
    pub admin_token_file: Vec<PathBuf>,
    /// File of read-only tokens (one a line); may be repeated.
    #[arg(long)]
    pub read_token_file: Vec<PathBuf>,
    /// Admin tokens, comma-separated (prefer a file: the environment of a process is visible
    /// to its user).
    #[arg(
        long = "admin-tokens",
        env = "WEFT_API_ADMIN_TOKENS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub admin_tokens: Vec<String>,
    /// Read-only tokens, comma-separated.
    #[arg(
        long = "read-tokens",
        env = "WEFT_API_READ_TOKENS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub read_tokens: Vec<String>,
    /// Serve without authentication (every caller is an admin). For a private loopback only.
    #[arg(long)]
    pub no_auth: bool,
    /// Largest request body accepted (413 above).
    #[arg(long, default_value_t = crate::DEFAULT_MAX_BODY)]
    pub max_body_bytes: usize,
    /// Threads doing store work (each request holds one while it talks to the store).
    #[arg(long, default_value_t = crate::pool::DEFAULT_THREADS)]
    pub store_threads: usize,
    /// Print the OpenAPI document and exit.
    #[arg(long)]
    pub print_openapi: bool,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StartError(pub String);

fn err(s: impl Into<String>) -> StartError {
    StartError(s.into())
}

impl Flags {
    pub fn tokens(&self) -> Result<Tokens, StartError> {
        let mut t = Tokens {
            disabled: self.no_auth,
            ..Default::default()
        };
        let clean = |v: &[String]| -> Vec<String> {
            v.iter()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect()
        };
        t.admin = clean(&self.admin_tokens);
        t.read = clean(&self.read_tokens);
        for (files, list) in [
            (&self.admin_token_file, &mut t.admin),
            (&self.read_token_file, &mut t.read),
        ] {
            for f in files {
                let text = std::fs::read_to_string(f)
                    .map_err(|e| err(format!("reading token file {}: {e}", f.display())))?;
                let got = Tokens::parse_file(&text);
                if got.is_empty() {
                    return Err(err(format!(
                        "token file {} holds no token (one a line)",
                        f.display()
                    )));
                }
                list.extend(got);
            }
        }
        if let Some(short) = t.admin.iter().chain(&t.read).find(|x| x.len() < 16) {
            return Err(err(format!(
                "a token of {} characters is too short to be secret: use 16 or more (e.g. `openssl rand -hex 32`)",
                short.len()
            )));
        }
        if !t.disabled && t.admin.is_empty() && t.read.is_empty() {
            return Err(err(
                "no tokens: give --admin-token-file / --read-token-file (or WEFT_API_ADMIN_TOKENS / WEFT_API_READ_TOKENS), or --no-auth for a private loopback",
            ));
        }
        Ok(t)
    }

    /// Opens the store (before any async runtime: the etcd client builds its own).
    pub fn open_store(&self) -> Result<Arc<dyn Store>, StartError> {
        if let Some(dir) = &self.data_dir {
            let d = dir.join("store");
            let s = weft_store::embedded::EmbeddedStore::open(&d)
                .map_err(|e| err(format!("opening the embedded store {}: {e}", d.display())))?;
            return Ok(Arc::new(s));
        }
        if self.etcd.is_empty() {
            return Err(err(
                "no store: give --etcd http://HOST:PORT (a cluster) or --data-dir DIR (the embedded store of one host)",
            ));
        }
        let opts = weft_store::etcd::EtcdOptions {
            request_timeout: Duration::from_secs(self.etcd_timeout_seconds.max(1)),
            prefix: self.etcd_prefix.clone(),
            ..Default::default()
        };
        let s = weft_store::etcd::EtcdStore::connect(&self.etcd, opts)
            .map_err(|e| err(format!("--etcd {}: {e}", self.etcd.join(","))))?;
        Ok(Arc::new(s))
    }
}

fn tls_config(cert: &PathBuf, key: &PathBuf) -> Result<rustls::ServerConfig, StartError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| err(format!("--tls-cert {}: {e}", cert.display())))?;
    if certs.is_empty() {
        return Err(err(format!(
            "--tls-cert {}: no PEM certificate in it",
            cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| err(format!("--tls-key {}: {e}", key.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| err(format!("TLS: {e}")))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| err(format!("--tls-cert/--tls-key do not fit: {e}")))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// Serves until SIGTERM or SIGINT.
pub fn run(flags: Flags) -> Result<(), StartError> {
    if flags.print_openapi {
        let store: Arc<dyn Store> = Arc::new(NoStore);
        let (_, api) = crate::app(store, Tokens::default(), flags.max_body_bytes);
        println!("{}", serde_json::to_string_pretty(&api).unwrap_or_default());
        return Ok(());
    }
    let tokens = flags.tokens()?;
    let tls = match (&flags.tls_cert, &flags.tls_key) {
        (Some(c), Some(k)) => Some(tls_config(c, k)?),
        _ => None,
    };
    let store = flags.open_store()?;
    crate::pool::init(flags.store_threads);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("weft-api")
        .build()
        .map_err(|e| err(format!("starting the runtime: {e}")))?;
    let describe = store.describe();
    let (router, _) = crate::app(store.clone(), tokens.clone(), flags.max_body_bytes);
    let res = rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(flags.listen)
            .await
            .map_err(|e| err(format!("--listen {}: {e}", flags.listen)))?;
        let local = listener
            .local_addr()
            .map_err(|e| err(format!("--listen {}: {e}", flags.listen)))?;
        eprintln!(
            "weft-api listening on {}://{local}, store {describe}, auth {}",
            if tls.is_some() { "https" } else { "http" },
            if tokens.disabled {
                "OFF (--no-auth)"
            } else {
                "bearer tokens"
            }
        );
        match tls {
            None => axum::serve(listener, router)
                .with_graceful_shutdown(shutdown_signal())
                .await
                .map_err(|e| err(format!("serving: {e}"))),
            Some(cfg) => serve_tls(listener, router, cfg).await,
        }
    });
    rt.shutdown_timeout(Duration::from_secs(5));
    drop(store);
    res
}

async fn serve_tls(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    cfg: rustls::ServerConfig,
) -> Result<(), StartError> {
    use hyper_util::rt::TokioIo;
    use hyper_util::service::TowerToHyperService;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let stop = shutdown_signal();
    tokio::pin!(stop);
    loop {
        let (tcp, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("weft-api: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut stop => return Ok(()),
        };
        let acceptor = acceptor.clone();
        let svc = TowerToHyperService::new(router.clone());
        tokio::spawn(async move {
            let hs = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await;
            let Ok(Ok(stream)) = hs else { return };
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// A store that is never reached (for --print-openapi).
struct NoStore;

fn no_store<T>() -> weft_store::Result<T> {
    Err(weft_store::StoreError::Unavailable("no store".into()))
}

impl Store for NoStore {
    fn get(&self, _: &str) -> weft_store::Result<Option<weft_store::KeyValue>> {
        no_store()
    }
    fn list(&self, _: &str) -> weft_store::Result<Vec<weft_store::KeyValue>> {
        no_store()
    }
    fn commit(&self, _: &weft_store::Txn) -> weft_store::Result<bool> {
        no_store()
    }
    fn describe(&self) -> String {
        "none".into()
    }
    fn revision(&self) -> weft_store::Result<i64> {
        no_store()
    }
    fn grant_lease(&self, _: i64) -> weft_store::Result<i64> {
        no_store()
    }
    fn keep_alive(&self, _: i64) -> weft_store::Result<()> {
        no_store()
    }
    fn revoke_lease(&self, _: i64) -> weft_store::Result<()> {
        no_store()
    }
    fn watch(&self, _: &str, _: i64) -> weft_store::Result<Box<dyn weft_store::Watcher>> {
        no_store()
    }
}
