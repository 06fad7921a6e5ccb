//! Times 2-key commits on the embedded store (the hot path of an IPAM allocation).
//! `cargo run --release -p weft-store --example commit_timing [DIR]` (DIR: a directory on the
//! file system to measure; default: a temp dir under /var/tmp).
use std::time::Instant;

use weft_store::embedded::EmbeddedStore;
use weft_store::{Compare, Op, Store, Txn};

fn main() {
    let base = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "/var/tmp".to_string());
    let dir = base + &format!("/weft-commit-timing-{}", std::process::id());
    let s = EmbeddedStore::open(&dir).expect("open store");
    let mut rounds = Vec::new();
    for round in 0..5 {
        let n = 2000;
        let mut times = Vec::with_capacity(n);
        let mut gets = Vec::with_capacity(n);
        for i in 0..n {
            let a = format!("/weft/v1/blocks/net/10.0.{}.0-26", i % 50);
            let b = format!("/weft/v1/handles/net/c{round}-{i}");
            let t = Instant::now();
            let rev = s.get(&a).expect("get").map_or(0, |kv| kv.mod_revision);
            gets.push(t.elapsed().as_secs_f64() * 1e6);
            let t = Instant::now();
            let ok = s
                .commit(&Txn {
                    compares: vec![Compare {
                        key: a.clone(),
                        mod_revision: rev,
                    }],
                    ops: vec![
                        Op::Put {
                            key: a,
                            value: vec![b'x'; 300],
                        },
                        Op::Put {
                            key: b,
                            value: vec![b'y'; 200],
                        },
                    ],
                })
                .expect("commit");
            times.push(t.elapsed().as_secs_f64() * 1e6);
            assert!(ok);
        }
        times.sort_by(|a, b| a.total_cmp(b));
        gets.sort_by(|a, b| a.total_cmp(b));
        rounds.push((times[n / 2], times[n * 95 / 100], gets[n / 2]));
    }
    for (i, (p50, p95, get)) in rounds.iter().enumerate() {
        println!("round {i}: 2-key commit p50 {p50:.1} us, p95 {p95:.1} us; get p50 {get:.1} us");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
