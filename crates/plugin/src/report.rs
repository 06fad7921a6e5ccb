//! Timing reports to the node's weftd: after each verb, one non-blocking datagram (see
//! `weft_metrics::report` for the protocol). Nothing here can fail or delay the verb beyond the
//! cost of one `socket` + `sendto` (tens of microseconds): every error drops the report.
//!
//! Where it goes: the config's `reportSocket` (an absolute path; `""` turns reports off), else
//! `/run/weft/weftd-<node>.sock` with the node of `ipam.node` (default the hostname), the
//! path weftd listens on by default for its `--node`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

use serde_json::Value;
use weft_cni::config::NetConf;
use weft_cni::skel::Plugin;
use weft_cni::{CniEnv, CniError, CniResult};
use weft_metrics::report::{self, Report};

/// Addresses the running verb allocated or released (set by the verb, read by [`Reporting`]).
static ADDRESSES: AtomicU32 = AtomicU32::new(0);

/// Called by a verb once it has allocated (ADD) or released (DEL) `n` addresses for good.
pub fn note_addresses(n: usize) {
    ADDRESSES.store(n.min(u32::MAX as usize) as u32, Ordering::Relaxed);
}

/// Checks the `reportSocket` key for [`crate::config::WeftConfig::parse`].
pub fn check_config(net: &str, obj: &serde_json::Map<String, Value>) -> Result<(), CniError> {
    match obj.get("reportSocket") {
        None | Some(Value::Null) => Ok(()),
        Some(Value::String(s)) if s.is_empty() || s.starts_with('/') => Ok(()),
        Some(v) => Err(crate::config::invalid(
            net,
            "reportSocket",
            v,
            "must be an absolute path to weftd's report socket, or \"\" to send no reports",
        )),
    }
}

/// Where this configuration's reports go (`None`: off) and the node name they carry. Reads
/// the raw JSON loosely, so a configuration the verb refuses still gets its failure reported.
pub fn target(conf: &NetConf) -> Option<(PathBuf, String)> {
    let node = conf
        .raw
        .get("ipam")
        .and_then(|i| i.get("node"))
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty() && !n.contains('/'))
        .map(str::to_string)
        .unwrap_or_else(crate::config::hostname);
    match conf.raw.get("reportSocket") {
        Some(Value::String(s)) if s.is_empty() => None,
        Some(Value::String(s)) => Some((PathBuf::from(s), node)),
        _ => Some((report::default_socket(&node), node)),
    }
}

/// Sends one report; errors are dropped.
pub fn send(conf: &NetConf, op: &str, started: Instant, code: u32) {
    let Some((path, node)) = target(conf) else {
        return;
    };
    let r = Report {
        v: report::VERSION,
        op: op.to_string(),
        network: conf.name.clone(),
        node,
        code,
        micros: started.elapsed().as_micros().min(u64::MAX as u128) as u64,
        addresses: if code == 0 {
            ADDRESSES.load(Ordering::Relaxed)
        } else {
            0
        },
    };
    let _ = report::send(&path, &r);
}

/// Wraps a plugin: times each verb and reports it.
pub struct Reporting<P>(pub P);

impl<P: Plugin> Reporting<P> {
    fn timed<T>(
        &self,
        conf: &NetConf,
        op: &str,
        f: impl FnOnce() -> Result<T, CniError>,
    ) -> Result<T, CniError> {
        ADDRESSES.store(0, Ordering::Relaxed);
        let t = Instant::now();
        let out = f();
        send(conf, op, t, out.as_ref().err().map_or(0, |e| e.code));
        out
    }
}

impl<P: Plugin> Plugin for Reporting<P> {
    fn add(&self, env: &CniEnv, conf: &NetConf) -> Result<CniResult, CniError> {
        self.timed(conf, "ADD", || self.0.add(env, conf))
    }
    fn del(&self, env: &CniEnv, conf: &NetConf) -> Result<(), CniError> {
        self.timed(conf, "DEL", || self.0.del(env, conf))
    }
    fn check(&self, env: &CniEnv, conf: &NetConf) -> Result<(), CniError> {
        self.timed(conf, "CHECK", || self.0.check(env, conf))
    }
    fn status(&self, conf: &NetConf) -> Result<(), CniError> {
        self.timed(conf, "STATUS", || self.0.status(conf))
    }
    fn gc(&self, env: &CniEnv, conf: &NetConf) -> Result<(), CniError> {
        self.timed(conf, "GC", || self.0.gc(env, conf))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixDatagram;
    use std::time::Duration;

    fn conf(extra: Value) -> NetConf {
        let mut v = serde_json::json!({"cniVersion": "1.0.0", "name": "net1", "type": "weft"});
        v.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        NetConf::parse(v.to_string().as_bytes()).unwrap()
    }

    #[test]
    fn socket_path_from_config_or_node() {
        let host = crate::config::hostname();
        assert_eq!(
            target(&conf(serde_json::json!({"reportSocket": "/tmp/x.sock"}))),
            Some((PathBuf::from("/tmp/x.sock"), host.clone()))
        );
        assert_eq!(target(&conf(serde_json::json!({"reportSocket": ""}))), None);
        assert_eq!(
            target(&conf(serde_json::json!({"ipam": {"node": "node-7"}}))),
            Some((
                PathBuf::from("/run/weft/weftd-node-7.sock"),
                "node-7".to_string()
            ))
        );
        assert_eq!(
            target(&conf(serde_json::json!({}))),
            Some((report::default_socket(&host), host))
        );
    }

    #[test]
    fn bad_report_socket_is_refused_by_name() {
        let obj = serde_json::json!({"reportSocket": "relative.sock"});
        let e = check_config("net1", obj.as_object().unwrap()).unwrap_err();
        assert!(e.msg.contains("reportSocket"), "{}", e.msg);
        let obj = serde_json::json!({"reportSocket": 7});
        assert!(check_config("net1", obj.as_object().unwrap()).is_err());
    }

    /// A report never holds the verb up: with nobody listening, and with weftd listening but
    /// not reading (far more datagrams than a unix socket queues, `net.unix.max_dgram_qlen`,
    /// default 512), every send returns; what was queued is whole. The 30 s bound is a hang
    /// guard, not a timing check (the cost is measured by `weft-bench report`).
    #[test]
    fn a_full_or_absent_listener_never_blocks_a_report() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.sock");
        let c = conf(serde_json::json!({"reportSocket": path}));
        let (done, finished) = std::sync::mpsc::channel();
        let sender = {
            let (c, path) = (c.clone(), path.clone());
            std::thread::spawn(move || {
                for _ in 0..200 {
                    send(&c, "ADD", Instant::now(), 0);
                }
                let rx = UnixDatagram::bind(&path).unwrap();
                for i in 0..3000 {
                    send(
                        &c,
                        if i % 2 == 0 { "ADD" } else { "DEL" },
                        Instant::now(),
                        1,
                    );
                }
                done.send(()).unwrap();
                rx
            })
        };
        finished
            .recv_timeout(Duration::from_secs(30))
            .expect("a report blocked");
        let rx = sender.join().unwrap();
        rx.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 2048];
        let mut n = 0;
        while let Ok(len) = rx.recv(&mut buf) {
            let r = Report::decode(&buf[..len]).unwrap();
            assert_eq!(r.network, "net1");
            n += 1;
        }
        assert!((1..3000).contains(&n), "{n} reports queued");
    }

    #[test]
    fn reporting_wraps_every_verb() {
        struct Fake;
        impl Plugin for Fake {
            fn add(&self, _: &CniEnv, _: &NetConf) -> Result<CniResult, CniError> {
                note_addresses(2);
                Ok(CniResult::default())
            }
            fn del(&self, _: &CniEnv, _: &NetConf) -> Result<(), CniError> {
                note_addresses(2);
                Err(CniError::try_again("busy"))
            }
            fn check(&self, _: &CniEnv, _: &NetConf) -> Result<(), CniError> {
                Ok(())
            }
            fn status(&self, _: &NetConf) -> Result<(), CniError> {
                Ok(())
            }
            fn gc(&self, _: &CniEnv, _: &NetConf) -> Result<(), CniError> {
                Ok(())
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.sock");
        let rx = UnixDatagram::bind(&path).unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        let c = conf(serde_json::json!({"reportSocket": path, "ipam": {"node": "n"}}));
        let env = CniEnv {
            command: weft_cni::Command::Add,
            container_id: Some("c".into()),
            netns: None,
            ifname: Some("eth0".into()),
            args: vec![],
            path: vec![],
        };
        let p = Reporting(Fake);
        p.add(&env, &c).unwrap();
        p.del(&env, &c).unwrap_err();
        p.check(&env, &c).unwrap();
        let mut buf = [0u8; 2048];
        let mut got = Vec::new();
        for _ in 0..3 {
            let n = rx.recv(&mut buf).unwrap();
            got.push(Report::decode(&buf[..n]).unwrap());
        }
        assert_eq!(
            got.iter()
                .map(|r| (r.op.as_str(), r.code, r.addresses, r.node.as_str()))
                .collect::<Vec<_>>(),
            vec![
                ("ADD", 0, 2, "n"),
                ("DEL", 11, 0, "n"),
                ("CHECK", 0, 0, "n")
            ]
        );
        assert!(got.iter().all(|r| r.network == "net1"));
    }
}
