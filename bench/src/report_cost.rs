//! `weft-bench report`: what the plugin's report to weftd (one non-blocking unix datagram per
//! verb, `weft_plugin::report::send`) costs the verb, with a listener that reads and with
//! nobody listening. Needs no root and no namespaces.
use std::fmt::Write as _;
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use weft_cni::config::NetConf;

const MARK_BEGIN: &str = "<!-- bench:report -->";
const MARK_END: &str = "<!-- /bench:report -->";
const USAGE: &str =
    "usage: weft-bench report [--sends N (20000)] [--out FILE (BENCHMARKS.md)] [--no-write]";

fn percentiles(mut t: Vec<Duration>) -> (f64, f64) {
    t.sort();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    (us(t[t.len() / 2]), us(t[t.len() * 99 / 100]))
}

pub fn main(args: &[String]) -> Result<()> {
    let (mut sends, mut out, mut write) = (
        20_000usize,
        crate::workspace_root().join("BENCHMARKS.md"),
        true,
    );
    crate::parse_flags(args.iter().cloned(), USAGE, |arg, val| {
        match arg {
            "--sends" => sends = val()?.parse().context("--sends")?,
            "--out" => out = val()?.into(),
            "--no-write" => write = false,
            _ => return Ok(false),
        }
        Ok(true)
    })?;
    let sends = sends.max(100);
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("weftd.sock");
    let conf = NetConf::parse(
        serde_json::json!({"cniVersion": "1.1.0", "name": "bench", "type": "weft",
            "reportSocket": path, "ipam": {"node": "node-1"}})
        .to_string()
        .as_bytes(),
    )?;
    let time = |n: usize| -> Vec<Duration> {
        (0..n)
            .map(|i| {
                let t = Instant::now();
                weft_plugin::report::send(&conf, if i % 2 == 0 { "ADD" } else { "DEL" }, t, 0);
                t.elapsed()
            })
            .collect()
    };
    let absent = percentiles(time(sends));
    // A listener that reads everything, as weftd does.
    let rx = UnixDatagram::bind(&path)?;
    rx.set_read_timeout(Some(Duration::from_millis(200)))?;
    let reader = std::thread::spawn(move || {
        let (mut buf, mut n) = ([0u8; 2048], 0usize);
        while rx.recv(&mut buf).is_ok() {
            n += 1;
        }
        n
    });
    let listening = percentiles(time(sends));
    let received = reader
        .join()
        .map_err(|_| anyhow::anyhow!("reader panicked"))?;
    crate::check_stop()?;

    let m = crate::machine();
    let mut md = String::new();
    writeln!(md, "{MARK_BEGIN}")?;
    writeln!(md, "## The plugin's report to weftd: cost per verb\n")?;
    writeln!(
        md,
        "`weft_plugin::report::send` (build the report, `socket`, `sendto` on a non-blocking unix datagram socket) timed {sends} times in a row in a release build, first with nobody listening, then with a thread reading as weftd does ({received} of {sends} datagrams read).\n"
    )?;
    writeln!(md, "| listener | p50 | p99 |\n| --- | ---: | ---: |")?;
    writeln!(
        md,
        "| none (weftd not running) | {:.1} µs | {:.1} µs |",
        absent.0, absent.1
    )?;
    writeln!(
        md,
        "| weftd reading | {:.1} µs | {:.1} µs |",
        listening.0, listening.1
    )?;
    writeln!(
        md,
        "\nMachine: kernel {}, {} CPUs, {}; load average {}. Date: {}. Weft at commit {}{}.\n\nReproduce: `cargo build --release -p weft-bench && target/release/weft-bench report --sends {sends}`.",
        m.kernel,
        m.nproc,
        m.cpu,
        crate::loadavg(),
        m.date,
        m.commit,
        if m.dirty {
            " (with uncommitted changes)"
        } else {
            ""
        },
    )?;
    writeln!(md, "{MARK_END}")?;
    print!("{md}");
    if write {
        crate::write_section(&out, &md, MARK_BEGIN, MARK_END)?;
    }
    Ok(())
}
