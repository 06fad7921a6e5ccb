//! Store conformance: one suite of behaviours every backend must show, written against
//! `&dyn Store` so the etcd backend can run the very same cases (`run_suite` with its own
//! connector), followed by the embedded backend's own cases (crash recovery from a journal left
//! by a killed commit, several `EmbeddedStore`s on one directory).
use std::fs;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use weft_store::embedded::EmbeddedStore;
use weft_store::{Compare, Op, Store, StoreError, Txn, transact};

/// Opens another client on one and the same store (each call a new connection/handle).
type Connector = Arc<dyn Fn() -> Box<dyn Store> + Send + Sync>;

mod suite {
    use super::*;

    pub type Case = (&'static str, fn(&Connector));

    /// Every backend-independent case, by name.
    pub const CASES: &[Case] = &[
        ("revisions_increase", revisions_increase),
        ("create_revision_kept", create_revision_kept),
        ("delete_then_recreate", delete_then_recreate),
        ("cas_conflict", cas_conflict),
        ("multi_key_commit_atomic", multi_key_commit_atomic),
        ("prefix_listing", prefix_listing),
        ("large_values", large_values),
        ("binary_values", binary_values),
        ("transact_sees_own_writes", transact_sees_own_writes),
        (
            "transact_error_writes_nothing",
            transact_error_writes_nothing,
        ),
        ("invalid_keys_refused", invalid_keys_refused),
        ("concurrent_increments", concurrent_increments),
        (
            "readers_never_see_half_a_commit",
            readers_never_see_half_a_commit,
        ),
    ];

    fn put(key: &str, value: &[u8]) -> Op {
        Op::Put {
            key: key.into(),
            value: value.to_vec(),
        }
    }

    fn del(key: &str) -> Op {
        Op::Delete { key: key.into() }
    }

    fn cmp(key: &str, mod_revision: i64) -> Compare {
        Compare {
            key: key.into(),
            mod_revision,
        }
    }

    fn commit(s: &dyn Store, compares: Vec<Compare>, ops: Vec<Op>) -> bool {
        s.commit(&Txn { compares, ops })
            .unwrap_or_else(|e| panic!("{}: commit failed: {e}", s.describe()))
    }

    fn value(s: &dyn Store, key: &str) -> Option<Vec<u8>> {
        s.get(key).unwrap().map(|kv| kv.value)
    }

    fn keys(s: &dyn Store, prefix: &str) -> Vec<String> {
        s.list(prefix)
            .unwrap()
            .into_iter()
            .map(|kv| kv.key)
            .collect()
    }

    pub fn revisions_increase(c: &Connector) {
        let s = c();
        let s = s.as_ref();
        assert!(s.get("/t/a").unwrap().is_none());
        let mut last = 0;
        for i in 0..5 {
            assert!(commit(
                s,
                vec![],
                vec![put("/t/a", format!("{i}").as_bytes())]
            ));
            let kv = s.get("/t/a").unwrap().unwrap();
            assert_eq!(kv.key, "/t/a");
            assert_eq!(kv.value, format!("{i}").as_bytes());
            assert!(
                kv.mod_revision > last,
                "mod_revision {} after {last}",
                kv.mod_revision
            );
            last = kv.mod_revision;
        }
        // Another key: a later revision still; the first key keeps its own.
        assert!(commit(s, vec![], vec![put("/t/b", b"x")]));
        let b = s.get("/t/b").unwrap().unwrap();
        assert!(b.mod_revision > last);
        assert_eq!(s.get("/t/a").unwrap().unwrap().mod_revision, last);
        // A delete is a revision too.
        assert!(commit(s, vec![], vec![del("/t/b")]));
        assert!(commit(s, vec![], vec![put("/t/c", b"x")]));
        assert!(s.get("/t/c").unwrap().unwrap().mod_revision > b.mod_revision);
        // A commit whose compares hold but has no ops is accepted.
        assert!(commit(s, vec![cmp("/t/a", last)], vec![]));
    }

    pub fn create_revision_kept(c: &Connector) {
        let s = c();
        let s = s.as_ref();
        assert!(commit(s, vec![], vec![put("/cr/k", b"1")]));
        let first = s.get("/cr/k").unwrap().unwrap();
        assert_eq!(first.create_revision, first.mod_revision);
        for v in [b"2", b"3"] {
            assert!(commit(s, vec![], vec![put("/cr/k", v)]));
        }
        let now = s.get("/cr/k").unwrap().unwrap();
        assert_eq!(now.value, b"3");
        assert_eq!(now.create_revision, first.create_revision);
        assert!(now.mod_revision > first.mod_revision);
        // Through transact as well.
        transact::<_, StoreError>(s, |tx| {
            tx.put("/cr/k", b"4".to_vec());
            Ok(())
        })
        .unwrap();
        let t = s.get("/cr/k").unwrap().unwrap();
        assert_eq!(t.create_revision, first.create_revision);
        assert!(t.mod_revision > now.mod_revision);
    }

    pub fn delete_then_recreate(c: &Connector) {
        let s = c();
        let s = s.as_ref();
        assert!(commit(s, vec![], vec![put("/dr/k", b"1")]));
        let first = s.get("/dr/k").unwrap().unwrap();
        assert!(commit(
            s,
            vec![cmp("/dr/k", first.mod_revision)],
            vec![del("/dr/k")]
        ));
        assert!(s.get("/dr/k").unwrap().is_none());
        assert!(keys(s, "/dr/").is_empty());
        // Deleting an absent key is no error.
        assert!(commit(s, vec![], vec![del("/dr/k")]));
        // Absent again: "create if absent" holds, and a new life gets a new create_revision.
        assert!(commit(s, vec![cmp("/dr/k", 0)], vec![put("/dr/k", b"2")]));
        let second = s.get("/dr/k").unwrap().unwrap();
        assert!(second.create_revision > first.create_revision);
        assert_eq!(second.create_revision, second.mod_revision);
    }

    pub fn cas_conflict(c: &Connector) {
        let s = c();
        let s = s.as_ref();
        // Create-if-absent succeeds once.
        assert!(commit(s, vec![cmp("/cas/k", 0)], vec![put("/cas/k", b"a")]));
        assert!(
            !commit(s, vec![cmp("/cas/k", 0)], vec![put("/cas/k", b"b")]),
            "compare 'absent' (0) must be refused when the key exists"
        );
        assert_eq!(value(s, "/cas/k").unwrap(), b"a");
        let r1 = s.get("/cas/k").unwrap().unwrap().mod_revision;
        // Current revision: accepted.
        assert!(commit(
            s,
            vec![cmp("/cas/k", r1)],
            vec![put("/cas/k", b"c")]
        ));
        // Now r1 is stale: refused, and nothing of the refused txn is written.
        assert!(!commit(
            s,
            vec![cmp("/cas/k", r1)],
            vec![put("/cas/k", b"d"), put("/cas/other", b"x")]
        ));
        assert_eq!(value(s, "/cas/k").unwrap(), b"c");
        assert!(s.get("/cas/other").unwrap().is_none());
        // A compare on a revision the key never had (from the future) is refused.
        let r2 = s.get("/cas/k").unwrap().unwrap().mod_revision;
        assert!(!commit(
            s,
            vec![cmp("/cas/k", r2 + 1000)],
            vec![del("/cas/k")]
        ));
        // A compare that an absent key does not meet (non-zero revision) is refused.
        assert!(!commit(
            s,
            vec![cmp("/cas/absent", r2)],
            vec![put("/cas/absent", b"x")]
        ));
        assert!(s.get("/cas/absent").unwrap().is_none());
        // Several compares: one false is enough to refuse.
        assert!(!commit(
            s,
            vec![cmp("/cas/k", r2), cmp("/cas/absent", 1)],
            vec![put("/cas/k", b"e")]
        ));
        assert_eq!(value(s, "/cas/k").unwrap(), b"c");
        assert!(commit(
            s,
            vec![cmp("/cas/k", r2), cmp("/cas/absent", 0)],
            vec![put("/cas/k", b"e")]
        ));
        assert_eq!(value(s, "/cas/k").unwrap(), b"e");
        // Two clients with the same stale view: exactly one wins.
        let other = c();
        let r3 = s.get("/cas/k").unwrap().unwrap().mod_revision;
        let a = commit(s, vec![cmp("/cas/k", r3)], vec![put("/cas/k", b"from-a")]);
        let b = commit(
            other.as_ref(),
            vec![cmp("/cas/k", r3)],
            vec![put("/cas/k", b"from-b")],
        );
        assert!(a && !b);
        assert_eq!(value(other.as_ref(), "/cas/k").unwrap(), b"from-a");
    }

    pub fn multi_key_commit_atomic(c: &Connector) {
        let s = c();
        let s = s.as_ref();
        assert!(commit(s, vec![], vec![put("/m/gone", b"0")]));
        assert!(commit(
            s,
            vec![cmp("/m/a", 0)],
            vec![
                put("/m/a", b"1"),
                put("/m/b", b"2"),
                put("/m/deep/c", b"3"),
                del("/m/gone"),
            ],
        ));
        let a = s.get("/m/a").unwrap().unwrap();
        let b = s.get("/m/b").unwrap().unwrap();
        let cc = s.get("/m/deep/c").unwrap().unwrap();
        assert_eq!(
            (a.value.as_slice(), b.value.as_slice(), cc.value.as_slice()),
            (&b"1"[..], &b"2"[..], &b"3"[..])
        );
        // One commit, one revision for all its keys.
        assert_eq!(a.mod_revision, b.mod_revision);
        assert_eq!(a.mod_revision, cc.mod_revision);
        assert!(s.get("/m/gone").unwrap().is_none());
        // A refused multi-key commit writes none of its keys and deletes nothing.
        assert!(!commit(
            s,
            vec![cmp("/m/a", 0)],
            vec![put("/m/x", b"x"), put("/m/b", b"changed"), del("/m/a")],
        ));
        assert!(s.get("/m/x").unwrap().is_none());
        assert_eq!(value(s, "/m/b").unwrap(), b"2");
        assert_eq!(value(s, "/m/a").unwrap(), b"1");
        // An invalid key anywhere in the commit: an error and nothing written.
        let r = s.commit(&Txn {
            compares: vec![],
            ops: vec![put("/m/y", b"y"), put("/m//bad", b"z")],
        });
        assert!(r.is_err(), "a commit holding an invalid key must fail");
        assert!(
            s.get("/m/y").unwrap().is_none(),
            "half of a failed commit landed"
        );
    }

    pub fn prefix_listing(c: &Connector) {
        let s = c();
        let s = s.as_ref();
        let all = [
            "/p/a/b",
            "/p/a/b/c",
            "/p/a/b/c/d",
            "/p/a/bc",
            "/p/a/b-",
            "/p/a/a",
            "/p/a/b/z",
            "/p/ab",
            "/p/b",
        ];
        // Written in scrambled order, one commit each, plus one multi-key commit.
        for k in ["/p/a/b/c", "/p/b", "/p/a/bc", "/p/a/b", "/p/ab"] {
            assert!(commit(s, vec![], vec![put(k, k.as_bytes())]));
        }
        assert!(commit(
            s,
            vec![],
            vec![
                put("/p/a/b/z", b"/p/a/b/z"),
                put("/p/a/a", b"/p/a/a"),
                put("/p/a/b-", b"/p/a/b-"),
                put("/p/a/b/c/d", b"/p/a/b/c/d"),
            ]
        ));
        let mut sorted: Vec<String> = all.iter().map(|k| k.to_string()).collect();
        sorted.sort();
        // The whole space, in byte order of the keys.
        assert_eq!(keys(s, "/p/"), sorted);
        assert_eq!(keys(s, "/"), sorted);
        for kv in s.list("/p/").unwrap() {
            assert_eq!(kv.value, kv.key.as_bytes(), "value of {}", kv.key);
            assert!(kv.create_revision > 0 && kv.mod_revision >= kv.create_revision);
        }
        // Under a "directory": the key itself and its siblings are not below it.
        assert_eq!(keys(s, "/p/a/b/"), ["/p/a/b/c", "/p/a/b/c/d", "/p/a/b/z"]);
        // A plain string prefix (etcd semantics): the key, keys below it, and longer names.
        assert_eq!(
            keys(s, "/p/a/b"),
            [
                "/p/a/b",
                "/p/a/b-",
                "/p/a/b/c",
                "/p/a/b/c/d",
                "/p/a/b/z",
                "/p/a/bc"
            ]
        );
        assert_eq!(keys(s, "/p/a/bc"), ["/p/a/bc"]);
        assert_eq!(keys(s, "/p/a/b/c"), ["/p/a/b/c", "/p/a/b/c/d"]);
        assert_eq!(keys(s, "/p/a/b/c/"), ["/p/a/b/c/d"]);
        assert_eq!(
            keys(s, "/p/a"),
            [
                "/p/a/a",
                "/p/a/b",
                "/p/a/b-",
                "/p/a/b/c",
                "/p/a/b/c/d",
                "/p/a/b/z",
                "/p/a/bc",
                "/p/ab"
            ]
        );
        // Nothing there.
        assert!(keys(s, "/p/a/b/c/d/").is_empty());
        assert!(keys(s, "/p/nothing").is_empty());
        assert!(keys(s, "/q/").is_empty());
        assert!(keys(s, "/p/a/bcd").is_empty());
        // Both a key and a longer key under it exist: get returns each, deleting one keeps the other.
        assert_eq!(value(s, "/p/a/b").unwrap(), b"/p/a/b");
        assert_eq!(value(s, "/p/a/b/c").unwrap(), b"/p/a/b/c");
        assert!(commit(s, vec![], vec![del("/p/a/b")]));
        assert!(s.get("/p/a/b").unwrap().is_none());
        assert_eq!(keys(s, "/p/a/b/"), ["/p/a/b/c", "/p/a/b/c/d", "/p/a/b/z"]);
        assert!(commit(
            s,
            vec![],
            vec![del("/p/a/b/c"), del("/p/a/b/c/d"), del("/p/a/b/z")]
        ));
        assert!(keys(s, "/p/a/b/").is_empty());
        assert_eq!(keys(s, "/p/a/b"), ["/p/a/b-", "/p/a/bc"]);
        // The key can come back after everything below it went.
        assert!(commit(
            s,
            vec![cmp("/p/a/b", 0)],
            vec![put("/p/a/b", b"again")]
        ));
        assert_eq!(keys(s, "/p/a/b"), ["/p/a/b", "/p/a/b-", "/p/a/bc"]);
        // Keys look like the ones the IPAM writes: ':' and '-' and dots in segments.
        let h = "/weft/v1/handles/net-1/abc.def_0:eth0";
        assert!(commit(s, vec![], vec![put(h, b"{}")]));
        assert_eq!(keys(s, "/weft/v1/handles/net-1/"), [h]);
        assert!(keys(s, "/weft/v1/handles/net-").len() == 1);
        assert!(keys(s, "/weft/v1/handles/net-10/").is_empty());
    }

    pub fn large_values(c: &Connector) {
        let s = c();
        let s = s.as_ref();
        // 1 MiB, every byte value, including newlines and NULs.
        let big: Vec<u8> = (0..(1usize << 20))
            .map(|i| (i * 7 + i / 251) as u8)
            .collect();
        assert!(commit(s, vec![], vec![put("/big/one", &big)]));
        let got = s.get("/big/one").unwrap().unwrap();
        assert_eq!(got.value.len(), big.len());
        assert!(got.value == big, "1 MiB value came back different");
        let listed = s.list("/big/").unwrap();
        assert_eq!(listed.len(), 1);
        assert!(listed[0].value == big);
        // Overwritten by a small value, then through transact.
        assert!(commit(s, vec![], vec![put("/big/one", b"small")]));
        assert_eq!(value(s, "/big/one").unwrap(), b"small");
        transact::<_, StoreError>(s, |tx| {
            tx.put("/big/two", big.clone());
            Ok(())
        })
        .unwrap();
        assert!(value(s, "/big/two").unwrap() == big);
    }

    pub fn binary_values(c: &Connector) {
        let s = c();
        let s = s.as_ref();
        for (i, v) in [
            &b""[..],
            b"\n",
            b"\n\n1 2\n",
            b"\0\xff\xfe",
            b"P v0 /x\nR 9\n",
        ]
        .iter()
        .enumerate()
        {
            let k = format!("/bin/{i}");
            assert!(commit(s, vec![], vec![put(&k, v)]));
            assert_eq!(value(s, &k).unwrap(), *v, "value {v:?}");
        }
        let kv = s.get("/bin/0").unwrap().unwrap();
        assert!(
            kv.value.is_empty() && kv.create_revision > 0,
            "an empty value is a present key"
        );
    }

    pub fn transact_sees_own_writes(c: &Connector) {
        let s = c();
        let s = s.as_ref();
        assert!(commit(
            s,
            vec![],
            vec![put("/tx/a", b"1"), put("/tx/b", b"2")]
        ));
        let seen = transact::<_, StoreError>(s, |tx| {
            assert_eq!(tx.get("/tx/a")?.unwrap(), b"1");
            tx.put("/tx/a", b"10".to_vec());
            tx.put("/tx/c", b"3".to_vec());
            tx.delete("/tx/b");
            let a = tx.get("/tx/a")?;
            let b = tx.get("/tx/b")?;
            let c = tx.get("/tx/c")?;
            let listed: Vec<(String, Vec<u8>)> = tx.list("/tx/")?;
            // Writes visible in the transaction, not yet outside it (a plain read of the store
            // may only see the commit once it is done).
            Ok((a, b, c, listed))
        })
        .unwrap();
        assert_eq!(seen.0.unwrap(), b"10");
        assert!(seen.1.is_none());
        assert_eq!(seen.2.unwrap(), b"3");
        assert_eq!(
            seen.3,
            vec![
                ("/tx/a".to_string(), b"10".to_vec()),
                ("/tx/c".to_string(), b"3".to_vec())
            ]
        );
        assert_eq!(value(s, "/tx/a").unwrap(), b"10");
        assert!(s.get("/tx/b").unwrap().is_none());
        assert_eq!(value(s, "/tx/c").unwrap(), b"3");
        // The whole transaction is one revision.
        let a = s.get("/tx/a").unwrap().unwrap();
        let cc = s.get("/tx/c").unwrap().unwrap();
        assert_eq!(a.mod_revision, cc.mod_revision);
        // JSON helpers round-trip.
        transact::<_, StoreError>(s, |tx| {
            tx.put_json("/tx/j", &serde_json::json!({"n": 1}));
            let back: serde_json::Value = tx.get_json("/tx/j")?.unwrap();
            assert_eq!(back["n"], 1);
            Ok(())
        })
        .unwrap();
        // A read-only transaction changes no revision.
        let before = s.get("/tx/j").unwrap().unwrap();
        transact::<_, StoreError>(s, |tx| tx.list("/tx/").map(|_| ())).unwrap();
        assert_eq!(s.get("/tx/j").unwrap().unwrap(), before);
        // A value that does not decode is an error that names the key.
        assert!(commit(s, vec![], vec![put("/tx/notjson", b"{nope")]));
        let err =
            transact::<_, StoreError>(s, |tx| tx.get_json::<serde_json::Value>("/tx/notjson"))
                .unwrap_err();
        assert!(err.to_string().contains("/tx/notjson"), "{err}");
    }

    #[derive(Debug)]
    struct MyError(&'static str);
    impl From<StoreError> for MyError {
        fn from(_: StoreError) -> Self {
            MyError("store")
        }
    }

    pub fn transact_error_writes_nothing(c: &Connector) {
        let s = c();
        let s = s.as_ref();
        assert!(commit(s, vec![], vec![put("/te/keep", b"1")]));
        let before = s.get("/te/keep").unwrap().unwrap();
        let r: Result<(), MyError> = transact(s, |tx| {
            tx.put("/te/new", b"x".to_vec());
            tx.put("/te/keep", b"2".to_vec());
            tx.delete("/te/keep");
            Err(MyError("caller gave up"))
        });
        // The caller's own error comes back, unchanged.
        assert_eq!(r.unwrap_err().0, "caller gave up");
        assert!(s.get("/te/new").unwrap().is_none());
        assert_eq!(s.get("/te/keep").unwrap().unwrap(), before);
        // The store still works afterwards.
        transact::<_, StoreError>(s, |tx| {
            tx.put("/te/new", b"y".to_vec());
            Ok(())
        })
        .unwrap();
        assert_eq!(value(s, "/te/new").unwrap(), b"y");
        // A panic in the closure does not wedge the store either.
        let s2 = c();
        let p = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _ = transact::<(), StoreError>(s2.as_ref(), |tx| {
                tx.put("/te/panic", b"x".to_vec());
                panic!("closure panics");
            });
        }));
        assert!(p.is_err());
        assert!(s.get("/te/panic").unwrap().is_none());
        transact::<_, StoreError>(s2.as_ref(), |tx| {
            tx.put("/te/after-panic", b"ok".to_vec());
            Ok(())
        })
        .unwrap();
        assert_eq!(value(s, "/te/after-panic").unwrap(), b"ok");
    }

    pub fn invalid_keys_refused(c: &Connector) {
        let s = c();
        let s = s.as_ref();
        let long = format!("/a/{}", "x".repeat(300));
        let bad = [
            "",
            "relative",
            "a/b",
            "/",
            "//a",
            "/a//b",
            "/a/",
            "/a/./b",
            "/a/../b",
            "/..",
            "/a/=b",
            "/a\0b",
            long.as_str(),
        ];
        for key in bad {
            let check = |what: &str, e: StoreError| {
                let msg = e.to_string();
                assert!(
                    matches!(e, StoreError::InvalidKey { .. }),
                    "{what} {key:?}: wrong error kind: {msg}"
                );
                assert!(
                    msg.contains(&format!("{key:?}")) || msg.contains(key),
                    "{what} {key:?}: the message does not name the key: {msg}"
                );
                assert!(
                    msg.len() > key.len() + 20,
                    "{what} {key:?}: message says why: {msg}"
                );
            };
            match s.commit(&Txn {
                compares: vec![],
                ops: vec![put(key, b"x")],
            }) {
                Err(e) => check("put", e),
                Ok(ok) => panic!("put {key:?} accepted ({ok})"),
            }
            match s.commit(&Txn {
                compares: vec![],
                ops: vec![del(key)],
            }) {
                Err(e) => check("delete", e),
                Ok(ok) => panic!("delete {key:?} accepted ({ok})"),
            }
            match s.get(key) {
                Err(e) => check("get", e),
                Ok(v) => panic!("get {key:?} accepted ({v:?})"),
            }
            let r = transact::<_, StoreError>(s, |tx| {
                tx.put(key, b"x".to_vec());
                Ok(())
            });
            match r {
                Err(e) => check("transact put", e),
                Ok(()) => panic!("transact put {key:?} accepted"),
            }
        }
        // A list prefix must be absolute.
        assert!(matches!(s.list("rel"), Err(StoreError::InvalidKey { .. })));
        // Nothing landed anywhere.
        assert!(keys(s, "/").is_empty(), "{:?}", keys(s, "/"));
    }

    pub fn concurrent_increments(c: &Connector) {
        const THREADS: usize = 8;
        const EACH: usize = 100;
        let key = "/conc/counter";
        let handles: Vec<_> = (0..THREADS)
            .map(|_| {
                let s = c();
                std::thread::spawn(move || {
                    for _ in 0..EACH {
                        transact::<_, StoreError>(s.as_ref(), |tx| {
                            let n: u64 = match tx.get(key)? {
                                Some(v) => String::from_utf8(v).unwrap().parse().unwrap(),
                                None => 0,
                            };
                            tx.put(key, (n + 1).to_string().into_bytes());
                            Ok(())
                        })
                        .unwrap();
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        let s = c();
        let kv = s.get(key).unwrap().unwrap();
        assert_eq!(kv.value, (THREADS * EACH).to_string().as_bytes());
        // Every increment was one revision: create + 799 updates.
        assert!(kv.mod_revision - kv.create_revision >= (THREADS * EACH - 1) as i64);
    }

    /// A multi-key commit is seen whole or not at all by plain readers, also while it is being
    /// written.
    pub fn readers_never_see_half_a_commit(c: &Connector) {
        let writer = c();
        let reader = c();
        let stop = Arc::new(AtomicBool::new(false));
        let ops = |i: u32| {
            (0..4)
                .map(|k| put(&format!("/half/k{k}"), i.to_string().as_bytes()))
                .collect::<Vec<_>>()
        };
        assert!(commit(writer.as_ref(), vec![], ops(0)));
        let stop2 = stop.clone();
        let w = std::thread::spawn(move || {
            for i in 1..300 {
                assert!(commit(writer.as_ref(), vec![], ops(i)));
            }
            stop2.store(true, Ordering::SeqCst);
        });
        let mut torn = Vec::new();
        let mut reads = 0;
        while !stop.load(Ordering::SeqCst) {
            let got = reader.list("/half/").unwrap();
            reads += 1;
            let vals: Vec<String> = got
                .iter()
                .map(|kv| String::from_utf8_lossy(&kv.value).into_owned())
                .collect();
            if got.len() != 4 || vals.iter().any(|v| v != &vals[0]) {
                torn.push(vals);
            }
        }
        w.join().unwrap();
        assert!(
            torn.is_empty(),
            "{} of {reads} lists saw half a commit, e.g. {:?}",
            torn.len(),
            &torn[..torn.len().min(3)]
        );
    }
}

/// Runs every case against the backend `new_store` makes: each call must give a connector to a
/// new, empty store.
pub fn run_suite(new_store: impl Fn() -> Connector) {
    let mut failed = Vec::new();
    for (name, case) in suite::CASES {
        let conn = new_store();
        let t = std::time::Instant::now();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| case(&conn)));
        eprintln!(
            "conformance {name}: {} in {:?}",
            if r.is_ok() { "ok" } else { "FAILED" },
            t.elapsed()
        );
        if r.is_err() {
            failed.push(*name);
        }
    }
    assert!(failed.is_empty(), "failed cases: {failed:?}");
}

// ---------------------------------------------------------------------------------------------
// The embedded backend.

/// Embedded stores kept alive by their temp dirs: a connector opens a new `EmbeddedStore` on the
/// same directory every time (like another plugin process would).
fn embedded_connector(dirs: &std::sync::Mutex<Vec<tempfile::TempDir>>) -> Connector {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().to_path_buf();
    dirs.lock().unwrap().push(d);
    Arc::new(move || Box::new(EmbeddedStore::open(&path).unwrap()) as Box<dyn Store>)
}

#[test]
fn embedded_conformance() {
    let dirs = std::sync::Mutex::new(Vec::new());
    run_suite(|| embedded_connector(&dirs));
}

fn open(dir: &Path) -> EmbeddedStore {
    EmbeddedStore::open(dir).unwrap()
}

fn put_all(s: &dyn Store, kvs: &[(&str, &str)]) {
    let ops = kvs
        .iter()
        .map(|(k, v)| Op::Put {
            key: k.to_string(),
            value: v.as_bytes().to_vec(),
        })
        .collect();
    assert!(
        s.commit(&Txn {
            compares: vec![],
            ops
        })
        .unwrap()
    );
}

fn val(s: &dyn Store, key: &str) -> Option<String> {
    s.get(key)
        .unwrap()
        .map(|kv| String::from_utf8(kv.value).unwrap())
}

/// Leaves the store as a commit killed right after its journal was renamed into place leaves
/// it: the journal holds every new value (`P key create len` + value, `D key`, `R rev`),
/// nothing is applied yet.
fn craft_killed_commit(dir: &Path, rev: i64, puts: &[(&str, &str, i64)], dels: &[&str]) {
    let mut journal = String::new();
    for (key, value, create) in puts {
        journal.push_str(&format!("P {key} {create} {}\n{value}\n", value.len()));
    }
    for key in dels {
        journal.push_str(&format!("D {key}\n"));
    }
    journal.push_str(&format!("R {rev}\n"));
    fs::write(dir.join("journal"), journal).unwrap();
}

#[test]
fn embedded_replays_a_killed_commit_on_the_next_transaction() {
    let d = tempfile::tempdir().unwrap();
    let s = open(d.path());
    put_all(&s, &[("/r/x", "old-x"), ("/r/y", "old-y"), ("/r/z", "z")]);
    let x = s.get("/r/x").unwrap().unwrap();
    let rev = s.revision().unwrap();
    assert_eq!(rev, x.mod_revision);
    drop(s);
    // Killed after the journal was renamed into place: update x, create /r/new/deep, delete y.
    craft_killed_commit(
        d.path(),
        rev + 1,
        &[
            ("/r/x", "new-x", x.create_revision),
            ("/r/new/deep", "n", rev + 1),
        ],
        &["/r/y"],
    );
    // A staged value that no journal names (from some other killed commit): must go.
    fs::write(d.path().join("tmp").join("v9"), "1 1\nstray").unwrap();

    // The next transaction, in a new process's store handle, replays first.
    let s = open(d.path());
    let seen = transact::<_, StoreError>(&s, |tx| {
        let x = tx.get("/r/x")?;
        let y = tx.get("/r/y")?;
        let n = tx.get("/r/new/deep")?;
        tx.put("/r/after", b"1".to_vec());
        Ok((x, y, n))
    })
    .unwrap();
    assert_eq!(
        seen.0.as_deref(),
        Some(&b"new-x"[..]),
        "the transaction saw the state before the replay"
    );
    assert!(seen.1.is_none());
    assert_eq!(seen.2.as_deref(), Some(&b"n"[..]));
    assert!(
        !d.path().join("journal").exists(),
        "journal not removed after replay"
    );
    let stray: Vec<_> = fs::read_dir(d.path().join("tmp")).unwrap().collect();
    assert!(stray.is_empty(), "tmp/ not emptied: {stray:?}");
    let x2 = s.get("/r/x").unwrap().unwrap();
    assert_eq!(x2.value, b"new-x");
    assert_eq!(x2.create_revision, x.create_revision);
    assert_eq!(x2.mod_revision, rev + 1);
    assert!(s.get("/r/y").unwrap().is_none());
    assert_eq!(val(&s, "/r/z").as_deref(), Some("z"));
    // The replayed commit took revision rev+1, the new one rev+2.
    assert_eq!(s.get("/r/after").unwrap().unwrap().mod_revision, rev + 2);
    assert_eq!(s.revision().unwrap(), rev + 2);
    let keys: Vec<String> = s
        .list("/r/")
        .unwrap()
        .into_iter()
        .map(|kv| kv.key)
        .collect();
    assert_eq!(keys, ["/r/after", "/r/new/deep", "/r/x", "/r/z"]);
}

#[test]
fn embedded_replays_a_half_applied_commit() {
    let d = tempfile::tempdir().unwrap();
    let s = open(d.path());
    put_all(&s, &[("/h/a", "a0"), ("/h/b", "b0"), ("/h/c", "c0")]);
    let rev = s.revision().unwrap();
    let create = s.get("/h/a").unwrap().unwrap().create_revision;
    drop(s);
    craft_killed_commit(
        d.path(),
        rev + 1,
        &[("/h/a", "a1", create), ("/h/b", "b1", create)],
        &["/h/c"],
    );
    // Killed half way through applying: a written, b torn mid-write (its new value over the
    // old one's bytes, not yet cut to length), c already deleted.
    fs::write(
        d.path().join("kv/h/=a"),
        format!("{create} {}\na1", rev + 1),
    )
    .unwrap();
    fs::write(d.path().join("kv/h/=b"), format!("{create} {}\nb", rev + 1)).unwrap();
    fs::remove_file(d.path().join("kv/h/=c")).unwrap();
    let s = open(d.path());
    // A plain commit (not only transact) replays too.
    assert!(
        s.commit(&Txn {
            compares: vec![Compare {
                key: "/h/b".into(),
                mod_revision: rev + 1
            }],
            ops: vec![Op::Put {
                key: "/h/d".into(),
                value: b"d".to_vec()
            }],
        })
        .unwrap(),
        "the compare must see b at the replayed revision"
    );
    assert_eq!(val(&s, "/h/a").as_deref(), Some("a1"));
    assert_eq!(val(&s, "/h/b").as_deref(), Some("b1"));
    assert!(val(&s, "/h/c").is_none());
    assert_eq!(s.get("/h/a").unwrap().unwrap().mod_revision, rev + 1);
    assert_eq!(s.revision().unwrap(), rev + 2);
    assert!(!d.path().join("journal").exists());
}

#[test]
fn embedded_drops_a_commit_killed_before_its_journal() {
    let d = tempfile::tempdir().unwrap();
    let s = open(d.path());
    put_all(&s, &[("/k/a", "a0")]);
    let rev = s.revision().unwrap();
    drop(s);
    // Killed while writing the journal: a half-written journal.new, no journal.
    fs::write(d.path().join("tmp/journal.new"), "P /k/a 1 2\na").unwrap();
    let s = open(d.path());
    transact::<_, StoreError>(&s, |tx| {
        tx.put("/k/b", b"b".to_vec());
        Ok(())
    })
    .unwrap();
    assert_eq!(val(&s, "/k/a").as_deref(), Some("a0"));
    assert_eq!(s.get("/k/b").unwrap().unwrap().mod_revision, rev + 1);
    assert_eq!(fs::read_dir(d.path().join("tmp")).unwrap().count(), 0);
}

#[test]
fn embedded_keys_with_spaces_refused() {
    // The journal is space-separated: a key with a space is refused up front, not replayed wrong.
    let d = tempfile::tempdir().unwrap();
    let s = open(d.path());
    let r = s.commit(&Txn {
        compares: vec![],
        ops: vec![Op::Put {
            key: "/sp/a b".into(),
            value: b"1".to_vec(),
        }],
    });
    let e = r.expect_err("a key with a space must be refused");
    assert!(e.to_string().contains("/sp/a b"), "{e}");
    assert!(s.list("/sp/").unwrap().is_empty());
    // The store keeps working.
    put_all(&s, &[("/sp/ok", "1")]);
    assert_eq!(val(&s, "/sp/ok").as_deref(), Some("1"));
}

#[test]
fn embedded_keys_with_newlines_refused() {
    // A key with a newline would break the line-based journal: it must be refused up front.
    let d = tempfile::tempdir().unwrap();
    let s = open(d.path());
    let r = s.commit(&Txn {
        compares: vec![],
        ops: vec![Op::Put {
            key: "/nl/a\nR 99".into(),
            value: b"x".to_vec(),
        }],
    });
    match r {
        Err(StoreError::InvalidKey { .. }) => {}
        other => panic!("a key holding a newline was not refused: {other:?}"),
    }
}

#[test]
fn embedded_corrupt_journal_is_reported() {
    let d = tempfile::tempdir().unwrap();
    let s = open(d.path());
    put_all(&s, &[("/cj/a", "a")]);
    drop(s);
    fs::write(d.path().join("journal"), "garbage line\n").unwrap();
    let s = open(d.path());
    let e = s
        .commit(&Txn {
            compares: vec![],
            ops: vec![],
        })
        .unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("journal") && msg.contains("garbage line"),
        "{msg}"
    );
    // Nothing was changed by a refused replay.
    assert_eq!(val(&s, "/cj/a").as_deref(), Some("a"));
}

#[test]
fn embedded_many_stores_one_dir_8_threads_increment() {
    // 8 threads, each with its own EmbeddedStore on the same directory (as separate plugin
    // processes would have), 100 increments each through transact.
    let d = tempfile::tempdir().unwrap();
    let path = d.path().to_path_buf();
    let t = std::time::Instant::now();
    let hs: Vec<_> = (0..8)
        .map(|_| {
            let path = path.clone();
            std::thread::spawn(move || {
                let s = EmbeddedStore::open(&path).unwrap();
                for _ in 0..100 {
                    transact::<_, StoreError>(&s, |tx| {
                        let n: u64 = tx
                            .get("/ctr")?
                            .map(|v| String::from_utf8(v).unwrap().parse().unwrap())
                            .unwrap_or(0);
                        tx.put("/ctr", (n + 1).to_string().into_bytes());
                        Ok(())
                    })
                    .unwrap();
                }
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    let s = open(&path);
    assert_eq!(val(&s, "/ctr").as_deref(), Some("800"));
    assert_eq!(s.revision().unwrap(), 800);
    eprintln!("800 increments in {:?}", t.elapsed());
}

#[test]
fn embedded_many_stores_one_dir_cas_counter() {
    // The same with raw compare-and-swap commits and retries: every successful CAS counts once.
    let d = tempfile::tempdir().unwrap();
    let path = d.path().to_path_buf();
    let hs: Vec<_> = (0..8)
        .map(|_| {
            let path = path.clone();
            std::thread::spawn(move || {
                let s = EmbeddedStore::open(&path).unwrap();
                let mut done = 0;
                while done < 50 {
                    let cur = s.get("/cas").unwrap();
                    let (n, rev) = cur.map_or((0u64, 0), |kv| {
                        (
                            String::from_utf8(kv.value).unwrap().parse().unwrap(),
                            kv.mod_revision,
                        )
                    });
                    let ok = s
                        .commit(&Txn {
                            compares: vec![Compare {
                                key: "/cas".into(),
                                mod_revision: rev,
                            }],
                            ops: vec![Op::Put {
                                key: "/cas".into(),
                                value: (n + 1).to_string().into_bytes(),
                            }],
                        })
                        .unwrap();
                    if ok {
                        done += 1;
                    }
                }
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    assert_eq!(val(&open(&path), "/cas").as_deref(), Some("400"));
}
