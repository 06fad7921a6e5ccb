//! `weft-bench check`: how long `weftctl check` (weft-check's `check`) takes over a store of
//! N allocations (default 10,000) on 3 nodes, on a throwaway etcd on loopback.
//!
//! The store is filled as a cluster would hold it: a network with one /17 pool and /26 blocks,
//! one handle record per allocation, each block claimed by one of the nodes (round robin) and
//! holding its allocations; node records; and each node's report as weftd publishes it (a
//! host-side veth with its alias and a /32 pod route per local allocation, routes to the other
//! nodes' blocks, FDB and neighbour entries of the VXLAN device, the nftables sets). Records
//! are written in batches straight into etcd (the IPAM's own path would only make the set-up
//! slower). Then `check` runs `--runs` times, each with a new etcd client (as `weft-api` or
//! `weftctl` would have for one request), timed whole and split into the store reads and the
//! comparison; it must find nothing (the data is consistent), and a second pass with a few
//! planted faults must find exactly those.
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use ipnet::IpNet;
use weft_check::{
    CheckOptions, NodeReport, ReportedFdb, ReportedInterface, ReportedNeighbour, ReportedNft,
    ReportedRoute, Snapshot, analyse, report_key,
};
use weft_ipam::{Allocation, BlockRecord, NetworkRecord, NetworkSpec, PoolSpec};
use weft_store::etcd::{EtcdOptions, EtcdStore};
use weft_store::{Op, Store, Txn};

use crate::cluster::{self, Common};
use crate::etcd::Etcd;
use crate::{check_stop, ms};

const MARK_BEGIN: &str = "<!-- bench:check -->";
const MARK_END: &str = "<!-- /bench:check -->";
const NETWORK: &str = "bench";

fn usage() -> String {
    format!(
        "usage: weft-bench check [--allocations N (10000)] [--nodes N (3)] [--runs N (5)] {}
Fills a throwaway etcd on loopback with N allocations on the nodes (with their reports) and
times weft-check's check over it; writes the table into FILE between the check markers.",
        cluster::COMMON_USAGE
    )
}

pub fn main() -> i32 {
    let (mut allocs, mut nodes, mut runs) = (10_000usize, 3usize, 5usize);
    let mut common = Common::new();
    let usage = usage();
    let parsed = cluster::parse(&usage, &mut common, |arg, val| {
        match arg {
            "--allocations" => allocs = val()?.parse().context("--allocations")?,
            "--nodes" => nodes = val()?.parse().context("--nodes")?,
            "--runs" => runs = val()?.parse().context("--runs")?,
            _ => return Ok(false),
        }
        Ok(true)
    });
    let r = parsed.and_then(|()| {
        if allocs == 0 || allocs > 30_000 || nodes < 2 || runs == 0 {
            bail!("--allocations 1..=30000, --nodes >= 2, --runs >= 1\n{usage}");
        }
        run(allocs, nodes, runs, &common)
    });
    match r {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("weft-bench check: {e:#}");
            1
        }
    }
}

fn node_name(i: usize) -> String {
    format!("wbc-node-{}", i + 1)
}

fn underlay(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(198, 51, 100, 10 + i as u8))
}

fn mac(i: usize) -> String {
    format!("0e:57:00:00:00:{:02x}", i + 1)
}

fn put_all(store: &dyn Store, kvs: Vec<(String, Vec<u8>)>) -> Result<()> {
    // etcd refuses more than 128 operations per transaction by default.
    for chunk in kvs.chunks(100) {
        check_stop()?;
        let txn = Txn {
            compares: vec![],
            ops: chunk
                .iter()
                .map(|(k, v)| Op::Put {
                    key: k.clone(),
                    value: v.clone(),
                })
                .collect(),
        };
        if !store.commit(&txn)? {
            bail!("a put-only transaction failed");
        }
    }
    Ok(())
}

/// Writes the cluster; returns the reports' total size in bytes.
fn fill(store: &dyn Store, allocs: usize, nodes: usize) -> Result<usize> {
    let now = weft_ipam::now() - 3600;
    let pool: IpNet = "198.18.0.0/17".parse()?;
    let spec = NetworkSpec::new(
        NETWORK,
        vec![PoolSpec {
            subnet: pool,
            range_start: None,
            range_end: None,
            exclude: vec![],
            gateway: None,
        }],
    );
    let mut kvs: Vec<(String, Vec<u8>)> = vec![(
        weft_ipam::network_key(NETWORK),
        serde_json::to_vec(&NetworkRecord {
            schema: 1,
            spec: spec.clone(),
            created_at: now,
        })?,
    )];
    let blocks_needed = allocs.div_ceil(62);
    let mut blocks: Vec<BlockRecord> = (0..blocks_needed)
        .map(|b| {
            let net = weft_ipam::ip_add(pool.network(), (b as u128) * 64);
            BlockRecord::new(IpNet::new(net, 26).unwrap(), Some(&node_name(b % nodes)))
        })
        .collect();
    let mut reports: Vec<NodeReport> = (0..nodes)
        .map(|i| NodeReport {
            schema: weft_check::REPORT_SCHEMA,
            node: node_name(i),
            generated_at: weft_ipam::now(),
            network: NETWORK.into(),
            verified_networks: vec![NETWORK.into()],
            interfaces: vec![],
            routes: vec![],
            vxlan_device: Some("weft.vx".into()),
            fdb: vec![],
            neighbours: vec![],
            nftables: Some(ReportedNft {
                table: true,
                rules: 2,
                pods: vec![pool],
                masq: vec![],
            }),
            netns_examined: None,
            gone_netns: vec![],
        })
        .collect();
    for n in 0..allocs {
        let (b, off) = (n / 62, (n % 62) as u32 + 1);
        let node = b % nodes;
        let addr = weft_ipam::ip_add(blocks[b].cidr.network(), u128::from(off));
        let cid = format!("wbc{n:08}");
        let handle = weft_ipam::handle_id(&cid, "eth0");
        blocks[b].assign(off, &handle);
        let a = Allocation {
            schema: 1,
            network: NETWORK.into(),
            handle: handle.clone(),
            addresses: vec![IpNet::new(addr, 17)?],
            container_id: cid.clone(),
            ifname: "eth0".into(),
            node: node_name(node),
            pod: Some(format!("default/pod-{n}")),
            fixed: None,
            created_at: now,
            host_interface: None,
            netns: None,
        };
        kvs.push((
            weft_ipam::handle_key(NETWORK, &handle),
            serde_json::to_vec(&a)?,
        ));
        let veth = format!("w{n:014x}");
        let r = &mut reports[node];
        r.interfaces.push(ReportedInterface {
            name: veth.clone(),
            kind: Some("veth".into()),
            alias: format!("weft:{NETWORK}:{cid}:eth0"),
        });
        r.routes.push(ReportedRoute {
            dst: IpNet::from(addr),
            gateway: None,
            dev: veth,
            onlink: false,
        });
    }
    for (b, block) in blocks.iter().enumerate() {
        let owner = b % nodes;
        for (i, r) in reports.iter_mut().enumerate() {
            if i != owner {
                r.routes.push(ReportedRoute {
                    dst: block.cidr,
                    gateway: Some(underlay(owner)),
                    dev: "weft.vx".into(),
                    onlink: true,
                });
            }
        }
        kvs.push((
            weft_ipam::block_key(NETWORK, &block.cidr),
            serde_json::to_vec(block)?,
        ));
    }
    for (i, r) in reports.iter_mut().enumerate() {
        for j in (0..nodes).filter(|j| *j != i) {
            r.fdb.push(ReportedFdb {
                mac: mac(j),
                dst: underlay(j),
            });
            r.neighbours.push(ReportedNeighbour {
                ip: underlay(j),
                mac: Some(mac(j)),
            });
        }
    }
    put_all(store, kvs)?;
    let mut size = 0;
    let mut kvs = Vec::new();
    for (i, r) in reports.iter().enumerate() {
        let node = serde_json::json!({
            "schema": 1, "name": node_name(i), "underlayIp": underlay(i),
            "underlaySubnet": "198.51.100.0/24", "vtepMac": mac(i), "vtepIp": underlay(i),
            "vni": 4096, "networks": [NETWORK], "mode": "vxlan",
        });
        kvs.push((
            weft_ipam::node_key(&node_name(i)),
            serde_json::to_vec(&node)?,
        ));
        let v = serde_json::to_vec(r)?;
        size += v.len();
        kvs.push((report_key(&node_name(i)), v));
    }
    put_all(store, kvs)?;
    Ok(size)
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn run(allocs: usize, nodes: usize, runs: usize, common: &Common) -> Result<()> {
    let tmp = cluster::temp_dir()?;
    let load_start = crate::loadavg();
    let etcd = Etcd::start(tmp.path())?;
    let ep = etcd.endpoint();
    let setup = Instant::now();
    let size = {
        let store = EtcdStore::connect(std::slice::from_ref(&ep), EtcdOptions::default())?;
        fill(&store, allocs, nodes)?
    };
    eprintln!(
        "weft-bench check: {allocs} allocations on {nodes} nodes written in {:?} (reports {} KiB)",
        setup.elapsed(),
        size / 1024
    );
    let opts = CheckOptions::default();
    let (mut whole, mut load, mut cmp) = (Vec::new(), Vec::new(), Vec::new());
    let mut examined = 0;
    for i in 0..runs {
        check_stop()?;
        let t = Instant::now();
        let store = EtcdStore::connect(std::slice::from_ref(&ep), EtcdOptions::default())?;
        let snap = Snapshot::load(&store)?;
        let loaded = t.elapsed();
        let report = analyse(&snap, &opts, weft_ipam::now());
        let total = t.elapsed();
        if !report.findings.is_empty() {
            bail!(
                "run {i}: a consistent store gave {} findings, first: {:?}",
                report.findings.len(),
                report.findings[0]
            );
        }
        examined = report.allocations;
        whole.push(total);
        load.push(loaded);
        cmp.push(total - loaded);
        eprintln!("run {i}: {total:?} (reads {loaded:?})");
    }
    // Plant faults: a veth gone from node 1's report (a leak), an orphan route on node 2.
    let store = EtcdStore::connect(std::slice::from_ref(&ep), EtcdOptions::default())?;
    let key = report_key(&node_name(0));
    let mut r: NodeReport =
        serde_json::from_slice(&store.get(&key)?.context("node 1's report")?.value)?;
    r.interfaces.remove(0);
    r.routes.push(ReportedRoute {
        dst: "198.18.127.250/32".parse()?,
        gateway: None,
        dev: "uplink".into(),
        onlink: false,
    });
    put_all(&store, vec![(key, serde_json::to_vec(&r)?)])?;
    let t = Instant::now();
    let faults = weft_check::check(&store, &opts)?;
    let faulty = t.elapsed();
    let kinds: Vec<String> = faults
        .findings
        .iter()
        .map(|f| format!("{:?} {}", f.kind, f.subject))
        .collect();
    if faults.findings.len() != 2 {
        bail!(
            "planted 2 faults, check found {}: {kinds:?}",
            faults.findings.len()
        );
    }
    drop(store);
    drop(etcd);

    let mut md = String::new();
    writeln!(md, "{MARK_BEGIN}")?;
    writeln!(
        md,
        "## `check` over {allocs} allocations on {nodes} nodes (etcd)\n\n\
`weft_check::check` as `weft-api` runs it for `GET /v1/check`: a new etcd client, nine prefix \
reads (networks, blocks, handles, reservations, address pools, nodes, reports, gone-node markers, repair orders), \
then the comparison. The store holds {examined} allocations in {} /26 blocks, each node's record and its \
report as weftd publishes it (a veth and a /32 pod route per local allocation, routes to the \
other nodes' blocks, FDB and neighbour entries, the nftables sets; {} KiB of reports in all). \
{runs} runs; the data is consistent (each run must find nothing), then two planted faults \
(a veth missing from a report, a pod route nobody owns) must be found: found {:?} in {:.0} ms.\n",
        allocs.div_ceil(62),
        size / 1024,
        kinds,
        ms(faulty)
    )?;
    writeln!(md, "| | median | min | max |")?;
    writeln!(md, "| --- | ---: | ---: | ---: |")?;
    for (name, v) in [
        ("whole check (connect, read, compare)", &mut whole),
        ("connect and store reads (decoded)", &mut load),
        ("comparison", &mut cmp),
    ] {
        let (min, max) = (*v.iter().min().unwrap(), *v.iter().max().unwrap());
        writeln!(
            md,
            "| {name} | {:.0} ms | {:.0} ms | {:.0} ms |",
            ms(median(v)),
            ms(min),
            ms(max)
        )?;
    }
    let target = Duration::from_secs(5);
    let m = median(&mut whole);
    writeln!(
        md,
        "\nTarget: under {} s; median {:.2} s ({}).",
        target.as_secs(),
        m.as_secs_f64(),
        if m < target { "met" } else { "NOT met" }
    )?;
    cluster::footer(
        &mut md,
        &load_start,
        "",
        &format!(
            "cargo build --release -p weft-bench && target/release/weft-bench check --allocations {allocs} --nodes {nodes} --runs {runs}"
        ),
        "builds weft-bench, starts its own etcd on a free loopback port",
    )?;
    writeln!(md, "{MARK_END}")?;
    print!("{md}");
    if common.write {
        crate::write_section(&common.out, &md, MARK_BEGIN, MARK_END)?;
        eprintln!("weft-bench check: wrote {}", common.out.display());
    }
    Ok(())
}
