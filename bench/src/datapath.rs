//! `weft-bench datapath`: pod-to-pod throughput (iperf3, 1 and 4 TCP streams) and ping RTT
//! across nodes for host-gw, VXLAN, hybrid and underlay, and on one node for routed against
//! bridge, each against node-to-node (the nodes' underlay addresses) measured in the same round.
//!
//! Seven labs ([`crate::lab`]) exist at once: a host-gw, a vxlan and a hybrid lab with Weft's
//! defaults (the BPF fast path), the same three modes on the kernel path alone (plugin
//! `"fastPath": false`, weftd --no-fast-path), and a kernel-path host-gw lab with BIG TCP for
//! IPv4 on every link (plugin key `bigTcp`), each with its own etcd; every round measures every
//! variant once, the order rotating each round.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::lab::{Lab, Netns, SEG_A, SEG_B, wait_until};
use weft_dataplane::counters;

const MARK_BEGIN: &str = "<!-- bench:datapath -->";
const MARK_END: &str = "<!-- /bench:datapath -->";
/// `--focus` writes its own section: it does not replace the full run.
const FOCUS_BEGIN: &str = "<!-- bench:datapath-focus -->";
const FOCUS_END: &str = "<!-- /bench:datapath-focus -->";
/// The labs and rows of `--focus`: the comparisons of the 0.95 goals, same-node routed (default)
/// against bridge, and the A/A control.
const FOCUS_LABS: [&str; 3] = ["hg", "fp", "yf"];
const FOCUS_ROWS: [&str; 9] = [
    "n2n-hg",
    "underlay",
    "same-bridge",
    "n2n-fp",
    "hg-fp",
    "n2n-fp-aa",
    "same-routed-fp",
    "n2n-yfA",
    "hyA-fp",
];
/// Resamplings of the rounds behind a ratio's 95 % interval.
const RESAMPLES: usize = 2000;
/// The IPv4 GSO/GRO max size of the BIG TCP lab: the plugin's `bigTcp` size.
const BIG_TCP: u32 = 196_608;

const USAGE: &str = "usage: weft-bench datapath [--runs N (3)] [--seconds S (3)] [--pings N (20)] \
[--bins DIR ($CARGO_TARGET_DIR/release)] [--out FILE (BENCHMARKS.md)] [--no-write] [--labs TAGS] \
[--focus]
Runs as root. Builds seven 3-node labs in namespaces wb<pid>-* and measures iperf3 and ping.
--labs hg,vx,hy,hb,fp,vf,yf builds only those labs (kernel path: host-gw, vxlan, hybrid, BIG TCP;
defaults: host-gw, vxlan, hybrid) and prints the section without writing it.
--focus measures only the rows of the 0.95 goals (host-gw, hybrid in a segment, underlay), their
bases, same-node routed (default) and bridge, and the A/A control, so that many rounds fit in a
run; it writes its own section.";

/// The labs, in the order they are built: kernel-path host-gw, vxlan, hybrid and BIG TCP, then the
/// defaults' host-gw, vxlan and hybrid.
const LAB_TAGS: [&str; 7] = ["hg", "vx", "hy", "hb", "fp", "vf", "yf"];

struct Args {
    runs: usize,
    seconds: u32,
    pings: u32,
    bins: std::path::PathBuf,
    out: std::path::PathBuf,
    write: bool,
    /// The labs to build ([`LAB_TAGS`]); all of them unless `--labs` names some.
    labs: Vec<String>,
    /// `--focus`: only [`FOCUS_ROWS`], in [`FOCUS_LABS`].
    focus: bool,
}

impl Args {
    /// Whether `--labs` left some labs out.
    fn partial(&self) -> bool {
        !self.focus && self.labs.len() < LAB_TAGS.len()
    }

    /// The section's markers in BENCHMARKS.md.
    fn marks(&self) -> (&'static str, &'static str) {
        if self.focus {
            (FOCUS_BEGIN, FOCUS_END)
        } else {
            (MARK_BEGIN, MARK_END)
        }
    }
}

#[derive(Clone, Copy)]
enum End {
    Node(usize),
    Pod(usize),
}

struct Variant {
    key: &'static str,
    label: String,
    lab: usize,
    from: End,
    to: End,
    dst: String,
    /// The node-to-node variant this one is compared with.
    base: Option<&'static str>,
    samples: Vec<Sample>,
}

#[derive(Clone, Copy, Debug)]
struct Sample {
    g1: f64,
    g4: f64,
    rtt: f64,
}

fn ns(labs: &[Lab], lab: usize, e: End) -> &Netns {
    match e {
        End::Node(i) => &labs[lab].nodes[i].ns,
        End::Pod(i) => &labs[lab].pods[i],
    }
}

fn iperf(client: &Netns, dst: &str, secs: u32, streams: u32) -> Result<f64> {
    let t = (secs + 12).to_string();
    let mut last = String::new();
    for _ in 0..20 {
        crate::check_stop()?;
        let out = client.exec(&[
            "timeout",
            &t,
            "iperf3",
            "-c",
            dst,
            "-p",
            "5201",
            "-t",
            &secs.to_string(),
            "-P",
            &streams.to_string(),
            "-J",
        ])?;
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        if let Some(bps) = v["end"]["sum_received"]["bits_per_second"].as_f64() {
            return Ok(bps / 1e9);
        }
        last = format!(
            "{} {}",
            v["error"].as_str().unwrap_or(""),
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("iperf3 to {dst} failed: {last}")
}

fn ping_rtt(client: &Netns, dst: &str, n: u32) -> Result<f64> {
    client.exec(&["ping", "-n", "-c", "1", "-W", "1", dst])?;
    let out = client.exec(&[
        "timeout",
        "30",
        "ping",
        "-n",
        "-c",
        &n.to_string(),
        "-i",
        "0.05",
        "-W",
        "1",
        dst,
    ])?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut t: Vec<f64> = text
        .lines()
        .filter_map(|l| l.split("time=").nth(1))
        .filter_map(|x| x.split_whitespace().next()?.parse().ok())
        .collect();
    if t.is_empty() {
        bail!("ping {dst}: no replies: {text}");
    }
    Ok(median(&mut t))
}

pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn measure(labs: &[Lab], v: &Variant, a: &Args) -> Result<Sample> {
    let server = ns(labs, v.lab, v.to);
    let client = ns(labs, v.lab, v.from);
    let _srv = server.spawn(&["iperf3", "-s", "-p", "5201"], std::process::Stdio::null())?;
    std::thread::sleep(Duration::from_millis(150));
    let g1 = iperf(client, &v.dst, a.seconds, 1)?;
    let g4 = iperf(client, &v.dst, a.seconds, 4)?;
    let rtt = ping_rtt(client, &v.dst, a.pings)?;
    Ok(Sample { g1, g4, rtt })
}

fn parse_args(args: &[String]) -> Result<Args> {
    let mut a = Args {
        runs: 3,
        seconds: 3,
        pings: 20,
        bins: crate::release_dir(),
        out: crate::workspace_root().join("BENCHMARKS.md"),
        write: true,
        labs: LAB_TAGS.iter().map(|t| t.to_string()).collect(),
        focus: false,
    };
    let mut named_labs = false;
    crate::parse_flags(args.iter().cloned(), USAGE, |arg, val| {
        match arg {
            "--runs" => a.runs = val()?.parse()?,
            "--seconds" => a.seconds = val()?.parse()?,
            "--pings" => a.pings = val()?.parse()?,
            "--bins" => a.bins = val()?.into(),
            "--out" => a.out = val()?.into(),
            "--no-write" => a.write = false,
            "--labs" => {
                a.labs = val()?.split(',').map(str::to_string).collect();
                if let Some(t) = a.labs.iter().find(|t| !LAB_TAGS.contains(&t.as_str())) {
                    bail!(
                        "--labs: unknown lab {t:?}; the labs are {}",
                        LAB_TAGS.join(",")
                    );
                }
                // Part of the comparison only: never over the full run's section.
                a.write = false;
                named_labs = true;
            }
            "--focus" => a.focus = true,
            _ => return Ok(false),
        }
        Ok(true)
    })?;
    if a.runs == 0 {
        bail!("--runs must be at least 1");
    }
    if a.focus {
        if named_labs {
            bail!(
                "--focus builds the labs {} itself; leave out --labs",
                FOCUS_LABS.join(",")
            );
        }
        a.labs = FOCUS_LABS.iter().map(|t| t.to_string()).collect();
    }
    Ok(a)
}

/// Routed mode without the fast path: the kernel path the default is compared with.
fn kernel_path(mut c: Value) -> Value {
    c["fastPath"] = json!(false);
    c
}

fn routed(mtu: Option<u32>) -> Value {
    let mut c = json!({"mode": "routed", "ipam": {"pools": [{"subnet": "198.18.0.0/24"}]}});
    if let Some(m) = mtu {
        c["mtu"] = json!(m);
    }
    c
}

/// Packets weft.vx sent and received, summed over the lab's nodes (/proc/net/dev).
fn vx_packets(lab: &Lab) -> Result<u64> {
    let mut sum = 0;
    for n in &lab.nodes {
        let dev = n.ns.ok(&["cat", "/proc/net/dev"])?;
        if let Some((rx, tx)) = counters::dev_packets(&dev, "weft.vx") {
            sum += rx + tx;
        }
    }
    Ok(sum)
}

/// IPv4 fragments created and reassembly requests, summed over every node of the labs.
fn frag_count(labs: &[Lab]) -> Result<u64> {
    let mut sum = 0;
    for l in labs {
        for n in &l.nodes {
            let snmp = n.ns.ok(&["cat", "/proc/net/snmp"])?;
            for name in ["FragCreates", "ReasmReqds"] {
                sum += counters::snmp_ip(&snmp, name).unwrap_or(0);
            }
        }
    }
    Ok(sum)
}

pub fn main(args: &[String]) -> Result<()> {
    let a = parse_args(args)?;
    let out = a.write.then_some(a.out.as_path());
    crate::lab::bench_main("datapath", out, a.marks(), |dir, load| run(&a, dir, load))
}

fn run(a: &Args, dir: &std::path::Path, load_start: &str) -> Result<String> {
    let mut labs: Vec<Lab> = Vec::new();
    let wanted = |tag: &str| a.labs.iter().any(|t| t == tag);
    let mut notes = Vec::new();
    let mut vs: Vec<Variant> = Vec::new();
    let v = |key, label: &str, lab, from, to, dst: String, base| Variant {
        key,
        label: label.to_string(),
        lab,
        from,
        to,
        dst,
        base,
        samples: Vec::new(),
    };
    let (a3, b2) = (format!("{SEG_A}.3"), format!("{SEG_B}.2"));
    // Node 1 to node 2 on segment A: the base of every lab (and, measured again, the A/A
    // control).
    let n2n = |key, label: &str, lab, base| {
        v(
            key,
            label,
            lab,
            End::Node(0),
            End::Node(1),
            a3.clone(),
            base,
        )
    };

    // Labs 0 to 3 take the kernel path only: weftd --no-fast-path, pods `"fastPath": false`.
    let no_fp = ["--no-fast-path"];
    // Lab 0: host-gw; also same-node routed/bridge and underlay pods.
    if wanted("hg") {
        let lab = labs.len();
        eprintln!("weft-bench: building the host-gw lab (kernel path)");
        let mut l = Lab::new("hg", dir, &a.bins)?;
        let (p0, _) = l.attach(0, "hg-a", kernel_path(routed(None)))?;
        let (p1, ip1) = l.attach(1, "hg-b", kernel_path(routed(None)))?;
        let (p2, ip2) = l.attach(0, "hg-c", kernel_path(routed(None)))?;
        let bcfg = json!({"name": "bnet", "mode": "bridge",
            "ipam": {"pools": [{"subnet": "198.19.0.0/24"}]}});
        let (b0, _) = l.attach(0, "br-a", bcfg.clone())?;
        let (b1, bip1) = l.attach(0, "br-b", bcfg)?;
        for i in 0..3 {
            l.start_weftd_with(i, "host-gw", &no_fp)?;
        }
        vs.push(n2n(
            "n2n-hg",
            "node to node, segment A (kernel-path host-gw lab)",
            lab,
            None,
        ));
        vs.push(v(
            "hg",
            "host-gw, kernel path: pod to pod across nodes (routed pods)",
            lab,
            End::Pod(p0),
            End::Pod(p1),
            ip1,
            Some("n2n-hg"),
        ));
        vs.push(v(
            "same-routed",
            "one node: routed pod to routed pod, kernel path",
            lab,
            End::Pod(p0),
            End::Pod(p2),
            ip2,
            Some("n2n-hg"),
        ));
        vs.push(v(
            "same-bridge",
            "one node: bridge pod to bridge pod",
            lab,
            End::Pod(b0),
            End::Pod(b1),
            bip1,
            Some("n2n-hg"),
        ));
        let ucfg = |_: ()| {
            json!({"name": "unet", "mode": "underlay",
                "underlay": {"attach": "macvlan", "uplink": "uplink"},
                "ipam": {"pools": [{"subnet": format!("{SEG_A}.0/24"),
                    "rangeStart": format!("{SEG_A}.100"), "rangeEnd": format!("{SEG_A}.199"),
                    "gateway": format!("{SEG_A}.254")}]}})
        };
        match l
            .attach(0, "ul-a", ucfg(()))
            .and_then(|u0| Ok((u0, l.attach(1, "ul-b", ucfg(()))?)))
        {
            Ok(((u0, _), (u1, uip1))) => {
                vs.push(v(
                    "underlay",
                    "underlay (macvlan): pod to pod across nodes",
                    lab,
                    End::Pod(u0),
                    End::Pod(u1),
                    uip1,
                    Some("n2n-hg"),
                ));
            }
            Err(e) => notes.push(format!(
                "Underlay mode (macvlan attach) could not be measured: the plugin refused the pod: {}",
                format!("{e:#}").lines().next().unwrap_or_default()
            )),
        }
        labs.push(l);
    }

    // Lab 1: VXLAN, pods at MTU 1450.
    if wanted("vx") {
        let lab = labs.len();
        eprintln!("weft-bench: building the vxlan lab (kernel path)");
        let mut l = Lab::new("vx", dir, &a.bins)?;
        let (q0, _) = l.attach(0, "vx-a", kernel_path(routed(Some(1450))))?;
        let (q1, qip1) = l.attach(1, "vx-b", kernel_path(routed(Some(1450))))?;
        for i in 0..3 {
            l.start_weftd_with(i, "vxlan", &no_fp)?;
        }
        vs.push(n2n(
            "n2n-vx",
            "node to node, segment A (kernel-path vxlan lab)",
            lab,
            None,
        ));
        vs.push(v(
            "vx",
            "VXLAN, kernel path: pod to pod across nodes, same segment",
            lab,
            End::Pod(q0),
            End::Pod(q1),
            qip1,
            Some("n2n-vx"),
        ));
        labs.push(l);
    }

    // Lab 2: hybrid, pods at the plugin's default MTU (the underlay's), as in the default
    // hybrid lab: full-size packets inside the segment; the node answers "fragmentation
    // needed" for the VXLAN path, which the pods then learn.
    if wanted("hy") {
        let lab = labs.len();
        eprintln!("weft-bench: building the hybrid lab (kernel path)");
        let mut l = Lab::new("hy", dir, &a.bins)?;
        let (h0, _) = l.attach(0, "hy-a", kernel_path(routed(None)))?;
        let (h1, hip1) = l.attach(1, "hy-b", kernel_path(routed(None)))?;
        let (h2, hip2) = l.attach(2, "hy-c", kernel_path(routed(None)))?;
        for i in 0..3 {
            l.start_weftd_with(i, "hybrid", &no_fp)?;
        }
        vs.push(n2n(
            "n2n-hyA",
            "node to node, segment A (kernel-path hybrid lab)",
            lab,
            None,
        ));
        vs.push(v(
            "hyA",
            "hybrid, kernel path, pods at MTU 1500, same segment (host-gw path)",
            lab,
            End::Pod(h0),
            End::Pod(h1),
            hip1,
            Some("n2n-hyA"),
        ));
        vs.push(v(
            "n2n-hyB",
            "node to node, across the router (kernel-path hybrid lab)",
            lab,
            End::Node(0),
            End::Node(2),
            b2.clone(),
            None,
        ));
        vs.push(v(
            "hyB",
            "hybrid, kernel path, pods at MTU 1500, across segments (VXLAN path, path MTU 1450 learnt, through the router)",
            lab,
            End::Pod(h0),
            End::Pod(h2),
            hip2,
            Some("n2n-hyB"),
        ));
        labs.push(l);
    }

    // Lab 3: host-gw again, with BIG TCP (IPv4) on every underlay link and the pods' veths.
    if wanted("hb") {
        let lab = labs.len();
        eprintln!("weft-bench: building the host-gw lab with BIG TCP");
        let mut l = Lab::new("hb", dir, &a.bins)?;
        l.big_tcp(BIG_TCP)?;
        let mut big = kernel_path(routed(None));
        big["bigTcp"] = json!(true);
        let (r0, _) = l.attach(0, "hb-a", big.clone())?;
        let (r1, rip1) = l.attach(1, "hb-b", big)?;
        for i in 0..3 {
            l.start_weftd_with(i, "host-gw", &no_fp)?;
        }
        vs.push(n2n(
            "n2n-big",
            "node to node, segment A, BIG TCP on the links (BIG TCP lab)",
            lab,
            None,
        ));
        vs.push(v(
            "hg-big",
            "host-gw, kernel path, with `\"bigTcp\": true`: pod to pod across nodes (BIG TCP lab)",
            lab,
            End::Pod(r0),
            End::Pod(r1),
            rip1,
            Some("n2n-big"),
        ));
        labs.push(l);
    }

    // Labs 4 to 6: Weft's defaults (the BPF fast path: no `fastPath` key, weftd without a
    // flag), host-gw, VXLAN and hybrid (VXLAN pods at MTU 1450, hybrid pods at the underlay's
    // 1500). weftd starts first, so the VXLAN device exists when the plugin attaches the pods
    // and `from_pod` encapsulates by itself from the first packet.
    for (tag, mode, mtu) in [
        ("fp", "host-gw", None),
        ("vf", "vxlan", Some(1450)),
        // Hybrid pods at the underlay's MTU: full-size packets inside the segment; the node
        // answers "fragmentation needed" for the VXLAN path, which the pods then learn.
        ("yf", "hybrid", None),
    ] {
        if !wanted(tag) {
            continue;
        }
        let lab = labs.len();
        eprintln!("weft-bench: building the {mode} lab with the defaults (BPF fast path)");
        let mut l = Lab::new(tag, dir, &a.bins)?;
        for i in 0..3 {
            l.start_weftd(i, mode)?;
        }
        if mode != "host-gw" {
            let nodes = &l.nodes;
            let ready = wait_until(Duration::from_secs(20), Duration::from_millis(200), || {
                Ok(nodes.iter().all(|n| {
                    n.ns.exec(&["ip", "link", "show", "weft.vx"])
                        .is_ok_and(|o| o.status.success())
                }))
            })?;
            if ready.is_none() {
                bail!(
                    "default {mode} lab: no weft.vx on every node after 20 s\n{}",
                    l.logs()
                );
            }
        }
        let fast = routed(mtu);
        let (f0, _) = l.attach(0, &format!("{tag}-a"), fast.clone())?;
        let (f1, fip1) = l.attach(1, &format!("{tag}-b"), fast.clone())?;
        let (base, key, label, base_label) = match mode {
            "host-gw" => (
                "n2n-fp",
                "hg-fp",
                "host-gw, default (BPF fast path): pod to pod across nodes",
                "node to node, segment A (default host-gw lab)",
            ),
            "vxlan" => (
                "n2n-vf",
                "vx-fp",
                "VXLAN, default (BPF fast path, encapsulated by the programs): pod to pod across nodes, same segment",
                "node to node, segment A (default vxlan lab)",
            ),
            _ => (
                "n2n-yfA",
                "hyA-fp",
                "hybrid, default (BPF fast path), pods at MTU 1500, same segment (host-gw path)",
                "node to node, segment A (default hybrid lab)",
            ),
        };
        vs.push(n2n(base, base_label, lab, None));
        vs.push(v(
            key,
            label,
            lab,
            End::Pod(f0),
            End::Pod(f1),
            fip1,
            Some(base),
        ));
        if mode == "host-gw" {
            // The method's own noise: the base path measured again as a variant of its own,
            // so a ratio's distance from 1 can be read against what no path difference gives.
            vs.push(n2n(
                "n2n-fp-aa",
                "A/A control: node to node again, segment A (default host-gw lab; the same path as its base)",
                lab,
                Some(base),
            ));
            let (f2, fip2) = l.attach(0, &format!("{tag}-c"), fast.clone())?;
            vs.push(v(
                "same-routed-fp",
                "one node: routed pod to routed pod, default (BPF fast path; default host-gw lab)",
                lab,
                End::Pod(f0),
                End::Pod(f2),
                fip2,
                Some(base),
            ));
        }
        if mode == "hybrid" {
            let (f2, fip2) = l.attach(2, &format!("{tag}-c"), fast)?;
            vs.push(v(
                "n2n-yfB",
                "node to node, across the router (default hybrid lab)",
                lab,
                End::Node(0),
                End::Node(2),
                b2.clone(),
                None,
            ));
            vs.push(v(
                "hyB-fp",
                "hybrid, default (BPF fast path), pods at MTU 1500, across segments (VXLAN path encapsulated by the programs, path MTU 1450 learnt, through the router)",
                lab,
                End::Pod(f0),
                End::Pod(f2),
                fip2,
                Some("n2n-yfB"),
            ));
        }
        labs.push(l);
    }

    if a.focus {
        vs.retain(|v| FOCUS_ROWS.contains(&v.key));
    }
    // Converged: every variant answers a ping; the paths are the expected ones.
    for v in &vs {
        let c = ns(&labs, v.lab, v.from);
        let ok = wait_until(Duration::from_secs(20), Duration::from_millis(200), || {
            Ok(c.exec(&["ping", "-n", "-c", "1", "-W", "1", &v.dst])?
                .status
                .success())
        })?;
        if ok.is_none() {
            bail!(
                "{}: no ping to {} after 20 s\n{}",
                v.label,
                v.dst,
                labs[v.lab].logs()
            );
        }
    }
    let route = |lab: usize, node: usize, dst: &str| -> Result<String> {
        Ok(labs[lab].nodes[node]
            .ns
            .ok(&["ip", "-4", "route", "get", dst])?
            .lines()
            .next()
            .unwrap_or_default()
            .trim()
            .to_string())
    };
    let mut paths = String::new();
    for v in vs
        .iter()
        .filter(|v| v.base.is_some() && !v.key.starts_with("same"))
    {
        if let End::Node(_) = v.from {
            continue;
        }
        if v.key != "underlay" {
            writeln!(
                paths,
                "- {}: node-1 `ip route get {}`: `{}`",
                v.key,
                v.dst,
                route(v.lab, 0, &v.dst)?
            )?;
        }
    }
    let built = |tag: &str| labs.iter().position(|l| l.tag == tag);
    let mut checks = String::new();
    for (tag, name) in [
        ("vx", "kernel-path vxlan"),
        ("hy", "kernel-path hybrid"),
        ("vf", "default vxlan"),
        ("yf", "default hybrid"),
    ] {
        let Some(lab) = built(tag) else { continue };
        let dev = labs[lab].nodes[0].ns.mtu("weft.vx")?;
        let up = labs[lab].nodes[0].ns.mtu("uplink")?;
        let pod = labs[lab].pods[0].mtu("eth0")?;
        writeln!(
            checks,
            "- {name} lab: underlay (`uplink`) MTU {up}, weft.vx MTU {dev} (set by weftd: underlay - 50), pod eth0 MTU {pod} ({})",
            if pod == dev {
                "plugin config `\"mtu\": 1450`"
            } else {
                "the plugin's default; the VXLAN path's 1450 is learnt from the node's \"fragmentation needed\""
            }
        )?;
    }
    if let Some(lab) = built("hb") {
        let (up, pod) = (
            Lab::gso_ipv4(&labs[lab].nodes[0].ns, "uplink")?,
            Lab::gso_ipv4(&labs[lab].pods[0], "eth0")?,
        );
        writeln!(
            checks,
            "- BIG TCP lab: IPv4 GSO max size {up} on node-1's `uplink` (set by the bench on every underlay link), {pod} on the pod's eth0 (set by the plugin, `bigTcp`); IPv6 stays at 65536; MTU 1500 everywhere"
        )?;
    }
    if let Some(lab) = built("hg").or(built("fp")) {
        let hgpod = labs[lab].pods[0].mtu("eth0")?;
        writeln!(
            checks,
            "- host-gw labs: pods at the plugin's default MTU ({hgpod}); no tunnel"
        )?;
    }

    let frag0 = frag_count(&labs)?;
    // Packets through weft.vx (sent and received, all nodes) in the VXLAN labs without and with
    // the fast path: with it, the programs encapsulate and take apart TCP themselves.
    let vx_labs: Vec<(usize, &str)> = [
        ("vx", "kernel-path vxlan"),
        ("vf", "default vxlan"),
        ("yf", "default hybrid"),
    ]
    .into_iter()
    .filter_map(|(tag, name)| Some((built(tag)?, name)))
    .collect();
    let vx0 = vx_labs
        .iter()
        .map(|(l, _)| vx_packets(&labs[*l]))
        .collect::<Result<Vec<_>>>()?;
    let n = vs.len();
    for round in 0..a.runs {
        for k in 0..n {
            crate::check_stop()?;
            // Rotated each round, and reversed every other round: a variant is measured after
            // its base in one round and before it in the next, so what the
            // measurement before leaves behind (the A/A control measured 1.09 and 1.11 at 4
            // streams with the base nearly always first) weighs on both alike.
            let idx = (k + round * 3) % n;
            let idx = if round % 2 == 1 { n - 1 - idx } else { idx };
            let t = Instant::now();
            let s = measure(&labs, &vs[idx], a)
                .with_context(|| format!("{} (round {})", vs[idx].label, round + 1))?;
            eprintln!(
                "weft-bench: round {} {:<12} 1 stream {:6.2} Gbit/s, 4 streams {:6.2} Gbit/s, rtt {:.3} ms ({:.1} s)",
                round + 1,
                vs[idx].key,
                s.g1,
                s.g4,
                s.rtt,
                t.elapsed().as_secs_f64()
            );
            vs[idx].samples.push(s);
        }
    }
    let frags = frag_count(&labs)? - frag0;
    for ((l, name), before) in vx_labs.iter().zip(vx0) {
        writeln!(
            checks,
            "- {name} lab: packets through the nodes' weft.vx devices during the measurements: {}",
            vx_packets(&labs[*l])? - before
        )?;
    }
    drop(labs);
    report(a, &vs, &notes, &paths, &checks, frags, load_start)
}

fn med(v: &Variant, f: fn(&Sample) -> f64) -> f64 {
    let mut x: Vec<f64> = v.samples.iter().map(f).collect();
    median(&mut x)
}

/// The 95 % interval of the ratio of medians `v / b`: a bootstrap over rounds. Each resampling
/// draws the run's rounds again with replacement, keeping a round's two rows together, and takes
/// the ratio of the two medians; the interval is the 2.5th to 97.5th percentile of
/// [`RESAMPLES`] of them. The generator (splitmix64) has a fixed seed, so the same figures give
/// the same interval.
fn interval(v: &Variant, b: &Variant, f: fn(&Sample) -> f64) -> (f64, f64) {
    let n = v.samples.len().min(b.samples.len());
    let mut seed: u64 = 0x5eed_0f3e;
    let mut next = move || {
        seed = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = seed;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let mut ratios: Vec<f64> = (0..RESAMPLES)
        .map(|_| {
            let (mut x, mut y) = (Vec::with_capacity(n), Vec::with_capacity(n));
            for _ in 0..n {
                let i = (next() % n as u64) as usize;
                x.push(f(&v.samples[i]));
                y.push(f(&b.samples[i]));
            }
            median(&mut x) / median(&mut y)
        })
        .collect();
    ratios.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| ratios[((RESAMPLES as f64 - 1.0) * q).round() as usize];
    (at(0.025), at(0.975))
}

/// What one measurement is and how a ratio is taken, for both sections.
fn measurement_text(a: &Args) -> String {
    format!(
        "a measurement is iperf3 TCP for {} s with 1 stream, then with 4 streams (`-P 4`, receiver's total), then {} pings 50 ms apart after one warm-up ping (median RTT). Ratios: a row's median over the median of its node-to-node row (same two nodes, same lab, same run) — for RTT, above 1 is slower.",
        a.seconds, a.pings
    )
}

/// How the goals' intervals are made and read, for both sections.
fn intervals_text() -> String {
    format!(
        "Each ratio of a goal and of the A/A control has a 95 % interval: a bootstrap over the rounds ({RESAMPLES} resamplings, a round's two rows kept together, fixed seed), the range where the ratio of medians would fall if the run were repeated on this machine. The verdict is the median's, as the goal is written; the interval says whether the run can tell the median from the line."
    )
}

fn report(
    a: &Args,
    vs: &[Variant],
    notes: &[String],
    paths: &str,
    checks: &str,
    frags: u64,
    load_start: &str,
) -> Result<String> {
    let get = |k: &str| vs.iter().find(|v| v.key == k);
    let g1 = |v: &Variant| med(v, |s| s.g1);
    let g4 = |v: &Variant| med(v, |s| s.g4);
    let rtt = |v: &Variant| med(v, |s| s.rtt);
    let mut t = String::new();
    writeln!(
        t,
        "| variant | 1 stream | ratio | 4 streams | ratio | ping RTT p50 | ratio | runs (1 stream, Gbit/s) |{}",
        if a.focus {
            " runs (4 streams, Gbit/s) |"
        } else {
            ""
        }
    )?;
    writeln!(
        t,
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |{}",
        if a.focus { " --- |" } else { "" }
    )?;
    for v in vs {
        let (r1, r4, rr) = match v.base.and_then(get) {
            Some(b) => (
                format!("{:.2}", g1(v) / g1(b)),
                format!("{:.2}", g4(v) / g4(b)),
                format!("{:.2}", rtt(v) / rtt(b)),
            ),
            None => ("1 (base)".into(), "1 (base)".into(), "1 (base)".into()),
        };
        let runs = |f: fn(&Sample) -> f64| -> String {
            let x: Vec<String> = v.samples.iter().map(|s| format!("{:.2}", f(s))).collect();
            x.join(", ")
        };
        let runs4 = if a.focus {
            format!(" {} |", runs(|s| s.g4))
        } else {
            String::new()
        };
        writeln!(
            t,
            "| {} | {:.2} Gbit/s | {r1} | {:.2} Gbit/s | {r4} | {:.3} ms | {rr} | {} |{runs4}",
            v.label,
            g1(v),
            g4(v),
            rtt(v),
            runs(|s| s.g1)
        )?;
    }
    let verdict = |ok: bool| if ok { "**met**" } else { "**missed**" };
    // The medians' ratios of `k` to `against` (its base unless named) at 1 and 4 streams, and
    // "1 stream 0.98 (95 % interval 0.94–1.02…), 4 streams …" to print them with their intervals.
    let with_intervals =
        |k: &str, against: Option<&str>, min: Option<f64>| -> Option<(f64, f64, String)> {
            let v = get(k)?;
            let b = get(against.or(v.base)?)?;
            let one = |name: &str, f: fn(&Sample) -> f64| {
                let r = med(v, f) / med(b, f);
                let (lo, hi) = interval(v, b, f);
                let side = match min {
                    Some(m) if lo >= m => ", above the line",
                    Some(m) if hi < m => ", below the line",
                    Some(_) => ", across the line",
                    None => "",
                };
                (
                    r,
                    format!("{name} {r:.2} (95 % interval {lo:.2}–{hi:.2}{side})"),
                )
            };
            let ((r1, t1), (r4, t4)) = (one("1 stream", |s| s.g1), one("4 streams", |s| s.g4));
            Some((r1, r4, format!("{t1}, {t4}")))
        };
    let mut goals = String::new();
    for (k, what, min) in [
        ("hg-fp", "host-gw (default)", 0.95),
        ("hyA-fp", "hybrid, same segment (host-gw; default)", 0.95),
        ("underlay", "underlay (macvlan)", 0.95),
        ("vx-fp", "VXLAN (default)", 0.75),
        ("hyB-fp", "hybrid, across segments (VXLAN; default)", 0.75),
        ("hg", "host-gw, kernel path", 0.95),
        (
            "hg-big",
            "host-gw, kernel path, BIG TCP (links and pods)",
            0.95,
        ),
        ("hyA", "hybrid, kernel path, same segment (host-gw)", 0.95),
        ("vx", "VXLAN, kernel path", 0.75),
        ("hyB", "hybrid, kernel path, across segments (VXLAN)", 0.75),
    ] {
        match with_intervals(k, None, Some(min)) {
            Some((r1, r4, text)) => writeln!(
                goals,
                "- {what} at least {min} of node-to-node: {text} — {}",
                verdict(r1 >= min && r4 >= min)
            )?,
            _ if a.focus => {}
            _ => writeln!(
                goals,
                "- {what} at least {min} of node-to-node: not measured"
            )?,
        }
    }
    if let Some((_, _, text)) = with_intervals("n2n-fp-aa", None, None) {
        writeln!(
            goals,
            "- method noise (A/A control, no goal): node to node against itself, measured as two variants: {text}"
        )?;
    }
    for (key, what) in [
        ("same-routed-fp", "same-node routed (default)"),
        ("same-routed", "same-node routed, kernel path"),
    ] {
        if let (Some(r), Some(b), Some((r1, r4, text))) = (
            get(key),
            get("same-bridge"),
            with_intervals(key, Some("same-bridge"), Some(1.0)),
        ) {
            writeln!(
                goals,
                "- {what} at least as fast as same-node bridge: 1 stream {:.2} vs {:.2} Gbit/s, 4 streams {:.2} vs {:.2}; routed over bridge: {text} — {}",
                g1(r),
                g1(b),
                g4(r),
                g4(b),
                verdict(r1 >= 1.0 && r4 >= 1.0)
            )?;
        }
    }
    let m = crate::machine();
    let mut cmd = if a.runs == 3 && a.seconds == 3 && a.pings == 20 {
        "sudo bench/run-cluster.sh datapath".to_string()
    } else {
        format!(
            "sudo bench/run-cluster.sh datapath --runs {} --seconds {} --pings {}",
            a.runs, a.seconds, a.pings
        )
    };
    if a.partial() {
        cmd = format!("{cmd} --labs {}", a.labs.join(","));
    }
    if a.focus {
        cmd = format!("{cmd} --focus");
    }
    let iperf_v = crate::sh("iperf3", &["--version"]);
    let mut md = String::new();
    let (begin, end) = a.marks();
    writeln!(md, "{begin}")?;
    if a.focus {
        writeln!(
            md,
            "## Lab data path, the goals near their lines alone: host-gw, hybrid in a segment, underlay, same-node routed against bridge\n"
        )?;
        writeln!(
            md,
            "The section above measures every variant; at its number of rounds a ratio moves by about ±0.1 from run to run (docs/datapath.md, \"How far the lab can see\"), too much to tell a 0.95 line, or same-node routed from bridge. This run (`--focus`) builds three of its labs the same way — the kernel-path host-gw lab (for underlay macvlan pods, same-node bridge pods and their node-to-node base), and the default host-gw and hybrid labs — and measures only the {} rows of those goals (the 0.95 goals with their bases, same-node routed pods with Weft's defaults and same-node bridge pods) and the A/A control, so that many more rounds fit in a run. Each row is measured {} times, once per round, the order rotating each round and reversed every other round; {} {}\n",
            FOCUS_ROWS.len(),
            a.runs,
            measurement_text(a),
            intervals_text()
        )?;
    } else {
        writeln!(md, "## Lab data path: pod to pod against node to node\n")?;
        writeln!(
            md,
            "Seven 3-node labs exist at once in network namespaces on one VM: a host-gw, a vxlan and a hybrid lab with Weft's defaults (the BPF fast path: pods without a `fastPath` key, weftd without a flag, weftd started before the pods are attached so that the programs encapsulate VXLAN themselves; docs/datapath.md), the same three modes on the kernel path alone (pods with `\"fastPath\": false`, weftd `--no-fast-path`), and a kernel-path host-gw lab with BIG TCP for IPv4 (GSO/GRO max size {BIG_TCP} on every underlay link, and pods with the plugin's `\"bigTcp\": true`), each with its own etcd: nodes 1 and 2 on segment A ({SEG_A}.0/24, a bridge), node 3 on segment B ({SEG_B}.0/24) behind a router namespace; links are veth pairs (MTU 1500). Pods are namespaces attached by the real `weft` plugin (routed mode unless said; IPAM on the lab's etcd). Each variant is measured {} times, once per round, all variants in every round, the order rotating each round and reversed every other round (a variant comes after its base in one round, before it in the next); {} Every figure is CPU-bound on the VM's shared cores (no link speed): quote ratios. The default host-gw lab measures node to node twice, as two variants (the A/A control): their ratio is what the method gives where the path does not differ. {}\n",
            a.runs,
            measurement_text(a),
            intervals_text()
        )?;
    }
    if a.partial() {
        writeln!(
            md,
            "This run built only the labs {} (`--labs`); rows and goals of the others are absent.\n",
            a.labs.join(", ")
        )?;
    }
    md.push_str(&t);
    writeln!(md, "\nGoals (medians):\n")?;
    md.push_str(&goals);
    writeln!(md, "\nChecks:\n")?;
    md.push_str(paths);
    md.push_str(checks);
    writeln!(
        md,
        "- IPv4 fragments created or reassembled on all nodes during the measurements: {frags}"
    )?;
    for n in notes {
        writeln!(md, "- {n}")?;
    }
    writeln!(
        md,
        "\nMachine: kernel {}, {} CPUs, {}; 1-minute load average {load_start} at the start, {} at the end. Date: {}. Weft at commit {}{}; {}; etcd {}.\n",
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
        iperf_v.lines().next().unwrap_or("iperf3"),
        crate::cluster::etcd_version()
    )?;
    writeln!(
        md,
        "Reproduce (as root, from the workspace root): `{cmd}` (builds the plugins with `scripts/build-plugins.sh`, weftd and `weft-bench` in release mode, then runs `weft-bench datapath`)."
    )?;
    writeln!(md, "{end}")?;
    Ok(md)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(g: &[f64]) -> Variant {
        Variant {
            key: "t",
            label: String::new(),
            lab: 0,
            from: End::Node(0),
            to: End::Node(1),
            dst: String::new(),
            base: None,
            samples: g
                .iter()
                .map(|&g| Sample {
                    g1: g,
                    g4: 2.0 * g,
                    rtt: 0.1,
                })
                .collect(),
        }
    }

    #[test]
    fn an_interval_holds_the_ratio_and_narrows_with_rounds() {
        // No spread: the interval is the ratio itself.
        let (lo, hi) = interval(&row(&[3.0; 9]), &row(&[2.0; 9]), |s| s.g1);
        assert_eq!((lo, hi), (1.5, 1.5));
        // Spread: the interval holds the ratio of medians, and nine times the rounds narrow it.
        let noisy: Vec<f64> = (0..9).map(|i| 10.0 + (i * 7 % 9) as f64).collect();
        let base: Vec<f64> = (0..9).map(|i| 10.0 + (i * 4 % 9) as f64).collect();
        let (v, b) = (row(&noisy), row(&base));
        let r = med(&v, |s| s.g4) / med(&b, |s| s.g4);
        let (lo, hi) = interval(&v, &b, |s| s.g4);
        assert!(lo < r && r < hi, "{lo} {r} {hi}");
        let many = |x: &[f64]| row(&x.repeat(9));
        let (lo9, hi9) = interval(&many(&noisy), &many(&base), |s| s.g4);
        assert!(hi9 - lo9 < (hi - lo) / 2.0, "{lo9}–{hi9} against {lo}–{hi}");
    }
}
