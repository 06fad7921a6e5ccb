//! A pool of plain OS threads for store work. The store clients are synchronous, and the etcd
//! client refuses to run on a thread that belongs to a tokio runtime (tokio's own blocking
//! pool included), so handlers hand their store work to these threads and await the answer.
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};

type Job = Box<dyn FnOnce() + Send>;

pub struct Pool {
    tx: Mutex<mpsc::Sender<Job>>,
}

static POOL: OnceLock<Pool> = OnceLock::new();

/// Default number of store threads.
pub const DEFAULT_THREADS: usize = 64;

impl Pool {
    fn new(threads: usize) -> Pool {
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads.max(1) {
            let rx = rx.clone();
            let _ = std::thread::Builder::new()
                .name(format!("weft-api-store-{i}"))
                .spawn(move || {
                    loop {
                        let job = {
                            let guard = rx.lock().unwrap_or_else(|p| p.into_inner());
                            guard.recv()
                        };
                        match job {
                            Ok(job) => job(),
                            Err(_) => return,
                        }
                    }
                });
        }
        Pool { tx: Mutex::new(tx) }
    }
}

/// Sets the number of store threads (before the first request; later calls do nothing).
pub fn init(threads: usize) {
    let _ = POOL.set(Pool::new(threads));
}

/// Runs `f` on a store thread; `Err` with the panic message when it panicked.
pub async fn run<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, String> {
    let pool = POOL.get_or_init(|| Pool::new(DEFAULT_THREADS));
    let (tx, rx) = tokio::sync::oneshot::channel();
    let job: Job = Box::new(move || {
        let r = catch_unwind(AssertUnwindSafe(f)).map_err(|p| {
            p.downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "panic".into())
        });
        let _ = tx.send(r);
    });
    pool.tx
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .send(job)
        .map_err(|_| "the store threads are gone".to_string())?;
    rx.await
        .map_err(|_| "the store thread dropped the request".to_string())?
}
