//! Metrics in the OpenMetrics text format (which Prometheus scrapes) for weftd and weft-api,
//! and the timing reports the `weft` plugin sends to its node's weftd.
//!
//! - [`render_api`]: weft-api's `GET /metrics`: pool occupancy of every network, family and
//!   node, read from the store at scrape time ([`pool::Snapshot`]).
//! - [`NodeMetrics`]: weftd's counters and histograms (CNI verbs from the plugin's
//!   [`report`]s, allocations and releases, reconcile passes) and its [`NodeMetrics::render`]:
//!   those plus the pool occupancy of its own node and the network totals.
//! - [`report`]: the plugin → weftd datagram protocol.
//! - [`text`]: a strict parser of the format, for tests.
//!
//! Encoding is prometheus-client's (OpenMetrics 1.0 text). Metric names are listed in
//! `docs/metrics.md`; the constants below are the families' names.

pub mod pool;
pub mod report;
pub mod text;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use weft_store::{Store, StoreError};

use crate::pool::{Snapshot, family_label};
use crate::report::{Report, ReportError};

/// The content type of every exposition this crate renders.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Label sets: (name, value) pairs in a fixed order.
pub type Labels = Vec<(&'static str, String)>;
type FloatGauge = Gauge<f64, AtomicU64>;

/// Bucket bounds (seconds) of the CNI verb latency histograms: exec'd plugins take 1 ms to a
/// few seconds (a store timeout).
pub const CNI_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Bucket bounds (seconds) of the reconcile duration histogram.
pub const RECONCILE_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];
/// weftd keeps series for at most this many networks named in reports; reports naming further
/// networks are counted as rejected (a bound on memory whatever sends datagrams).
pub const MAX_REPORTED_NETWORKS: usize = 256;

fn cni_histogram() -> Histogram {
    Histogram::new(CNI_BUCKETS.iter().copied())
}

/// weftd's metrics. Cheap to share (`Arc`); every method takes `&self`.
#[derive(Debug)]
pub struct NodeMetrics {
    node: String,
    ops: Family<Labels, Counter>,
    op_seconds: Family<Labels, Histogram, fn() -> Histogram>,
    allocated: Family<Labels, Counter>,
    released: Family<Labels, Counter>,
    reports: Counter,
    rejected: Counter,
    reconcile_runs: Counter,
    reconcile_errors: Counter,
    reconcile_seconds: Histogram,
    reconcile_changes: Family<Labels, Counter>,
    reconcile_last_success: FloatGauge,
    networks: Mutex<BTreeSet<String>>,
}

impl NodeMetrics {
    pub fn new(node: &str) -> NodeMetrics {
        NodeMetrics {
            node: node.to_string(),
            ops: Family::default(),
            op_seconds: Family::new_with_constructor(cni_histogram),
            allocated: Family::default(),
            released: Family::default(),
            reports: Counter::default(),
            rejected: Counter::default(),
            reconcile_runs: Counter::default(),
            reconcile_errors: Counter::default(),
            reconcile_seconds: Histogram::new(RECONCILE_BUCKETS.iter().copied()),
            reconcile_changes: Family::default(),
            reconcile_last_success: FloatGauge::default(),
            networks: Mutex::new(BTreeSet::new()),
        }
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    /// Takes one datagram from the plugin.
    pub fn datagram(&self, buf: &[u8]) -> Result<(), ReportError> {
        let r = Report::decode(buf).inspect_err(|_| {
            self.rejected.inc();
        })?;
        self.record(&r)
    }

    /// Counts one report: its verb by result, its latency, the addresses it allocated or
    /// released.
    pub fn record(&self, r: &Report) -> Result<(), ReportError> {
        {
            let mut nets = self.networks.lock().unwrap_or_else(|p| p.into_inner());
            if !nets.contains(&r.network) {
                if nets.len() >= MAX_REPORTED_NETWORKS {
                    self.rejected.inc();
                    return Err(ReportError::Network(r.network.clone()));
                }
                nets.insert(r.network.clone());
            }
        }
        self.reports.inc();
        let result = if r.ok() { "ok" } else { "error" };
        self.ops
            .get_or_create(&vec![
                ("op", r.op.clone()),
                ("network", r.network.clone()),
                ("result", result.to_string()),
                ("code", r.code.to_string()),
            ])
            .inc();
        self.op_seconds
            .get_or_create(&vec![
                ("op", r.op.clone()),
                ("network", r.network.clone()),
                ("result", result.to_string()),
            ])
            .observe(r.micros as f64 / 1e6);
        let net = vec![("network", r.network.clone())];
        // Touch both so a network's counters appear together, at 0, with its first report.
        let (alloc, rel) = (
            self.allocated.get_or_create_owned(&net),
            self.released.get_or_create_owned(&net),
        );
        if r.ok() && r.addresses > 0 {
            match r.op.as_str() {
                "ADD" => {
                    alloc.inc_by(r.addresses.into());
                }
                "DEL" => {
                    rel.inc_by(r.addresses.into());
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Counts one reconcile pass: `Some((added, deleted))` when it succeeded, `None` when it
    /// failed.
    pub fn reconciled(&self, took: Duration, outcome: Option<(usize, usize)>) {
        self.reconcile_runs.inc();
        self.reconcile_seconds.observe(took.as_secs_f64());
        match outcome {
            Some((added, deleted)) => {
                for (change, n) in [("added", added), ("deleted", deleted)] {
                    self.reconcile_changes
                        .get_or_create(&vec![("change", change.to_string())])
                        .inc_by(n as u64);
                }
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs_f64())
                    .unwrap_or_default();
                self.reconcile_last_success.set(now);
            }
            None => {
                self.reconcile_errors.inc();
            }
        }
    }

    /// The exposition: this node's counters and histograms, then the pool occupancy of this
    /// node and the network totals read from `store` now (blocks only, not the allocation
    /// records: no `weft_attachments`; `weft_store_up` 0 and no pool series when the store
    /// cannot be read).
    pub fn render(&self, store: &dyn Store) -> String {
        let mut reg = Registry::default();
        reg.register(
            "weft_cni_operations",
            "CNI verbs the weft plugin ran on this node, by verb, network, result and CNI error code (0: success)",
            self.ops.clone(),
        );
        reg.register_with_unit(
            "weft_cni_operation_duration",
            "How long the weft plugin's CNI verbs took on this node",
            Unit::Seconds,
            self.op_seconds.clone(),
        );
        reg.register(
            "weft_ipam_allocated_addresses",
            "Addresses allocated by successful ADDs on this node",
            self.allocated.clone(),
        );
        reg.register(
            "weft_ipam_released_addresses",
            "Addresses released by successful DELs on this node",
            self.released.clone(),
        );
        reg.register(
            "weft_plugin_reports",
            "Timing reports received from the weft plugin",
            self.reports.clone(),
        );
        reg.register(
            "weft_plugin_reports_rejected",
            "Datagrams on the report socket that were not valid reports",
            self.rejected.clone(),
        );
        reg.register(
            "weft_reconcile_runs",
            "Reconcile passes of weftd",
            self.reconcile_runs.clone(),
        );
        reg.register(
            "weft_reconcile_errors",
            "Reconcile passes that failed",
            self.reconcile_errors.clone(),
        );
        reg.register_with_unit(
            "weft_reconcile_duration",
            "How long reconcile passes took",
            Unit::Seconds,
            self.reconcile_seconds.clone(),
        );
        reg.register(
            "weft_reconcile_changes",
            "Kernel objects reconcile passes added or deleted",
            self.reconcile_changes.clone(),
        );
        reg.register(
            "weft_reconcile_last_success_timestamp_seconds",
            "When the last successful reconcile pass ended (unix seconds; 0: none yet)",
            self.reconcile_last_success.clone(),
        );
        let up = Gauge::<i64>::default();
        match Snapshot::read_pools(store, weft_ipam::now()) {
            Ok(s) => {
                up.set(1);
                register_pools(&mut reg, &s, Some(&self.node));
            }
            Err(_) => {
                up.set(0);
            }
        }
        reg.register(
            "weft_store_up",
            "1 when this scrape could read the pools from the store, else 0",
            up,
        );
        to_text(&reg)
    }
}

/// The body of weft-api's `GET /metrics` (content type [`CONTENT_TYPE`]): pool size, used,
/// reserved, cooling and free per network, family and node, and per network and family, read
/// from the store at scrape time.
pub fn render_api(store: &dyn Store) -> Result<String, StoreError> {
    let snap = Snapshot::read(store, weft_ipam::now())?;
    let mut reg = Registry::default();
    register_pools(&mut reg, &snap, None);
    Ok(to_text(&reg))
}

/// Encodes a registry as a complete exposition (ending with `# EOF`).
pub fn to_text(reg: &Registry) -> String {
    let mut s = String::new();
    // Writing to a String cannot fail.
    let _ = encode(&mut s, reg);
    s
}

/// Gauges computed for one scrape, written in sorted label order (prometheus-client's own
/// families write in hash order).
#[derive(Debug, Default)]
pub struct GaugeTable {
    families: Vec<(&'static str, &'static str, BTreeMap<Labels, u128>)>,
}

impl GaugeTable {
    /// Adds a family (in output order); `help` without its final period.
    pub fn family(&mut self, name: &'static str, help: &'static str) -> usize {
        self.families.push((name, help, BTreeMap::new()));
        self.families.len() - 1
    }

    pub fn set(&mut self, family: usize, labels: Labels, value: u128) {
        self.families[family].2.insert(labels, value);
    }
}

impl Collector for GaugeTable {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for (name, help, series) in &self.families {
            if series.is_empty() {
                continue;
            }
            let help = format!("{help}.");
            let mut family = encoder.encode_descriptor(name, &help, None, MetricType::Gauge)?;
            for (labels, v) in series {
                let mut m = family.encode_family(labels)?;
                match u64::try_from(*v) {
                    Ok(v) => m.encode_gauge(&v)?,
                    // Beyond u64 (IPv6 pools): a float, as precise as the format allows.
                    Err(_) => m.encode_gauge(&(*v as f64))?,
                }
            }
        }
        Ok(())
    }
}

/// Registers the pool gauges of `snap` on `reg`: per-node series for `node` only (or for every
/// node when `None`), network totals always.
pub fn register_pools(reg: &mut Registry, snap: &Snapshot, node: Option<&str>) {
    let mut t = GaugeTable::default();
    let per_node = [
        t.family(
            "weft_pool_size_addresses",
            "Usable addresses in the blocks a node has claimed",
        ),
        t.family(
            "weft_pool_used_addresses",
            "Addresses of a node's blocks held by attachments",
        ),
        t.family(
            "weft_pool_reserved_addresses",
            "Addresses of a node's blocks kept by fixed-IP reservations or address pools and not in use",
        ),
        t.family(
            "weft_pool_cooling_addresses",
            "Addresses of a node's blocks released less than the network's cooldown ago",
        ),
        t.family(
            "weft_pool_free_addresses",
            "Addresses of a node's blocks free to allocate now",
        ),
        t.family("weft_pool_blocks", "Blocks a node has claimed"),
    ];
    for ((network, family, n), o) in &snap.nodes {
        if node.is_some_and(|want| want != n) {
            continue;
        }
        let labels: Labels = vec![
            ("network", network.clone()),
            ("family", family_label(*family).to_string()),
            ("node", n.clone()),
        ];
        for (f, v) in
            per_node
                .iter()
                .zip([o.size, o.used, o.reserved, o.cooling, o.free(), o.blocks])
        {
            t.set(*f, labels.clone(), v);
        }
    }
    let per_net = [
        t.family(
            "weft_network_size_addresses",
            "Usable addresses in a network's pools (ranges less exclusions and gateways)",
        ),
        t.family(
            "weft_network_used_addresses",
            "Addresses of a network held by attachments",
        ),
        t.family(
            "weft_network_reserved_addresses",
            "Addresses of a network kept by reservations or address pools and not in use",
        ),
        t.family(
            "weft_network_cooling_addresses",
            "Addresses of a network cooling down after release",
        ),
        t.family(
            "weft_network_free_addresses",
            "Addresses of a network free to allocate now, in claimed and unclaimed blocks",
        ),
        t.family(
            "weft_network_blocks",
            "Blocks of a network claimed by nodes",
        ),
        t.family(
            "weft_network_blocks_capacity",
            "Blocks a network's pools are cut into, claimed or not",
        ),
    ];
    for ((network, family), o) in &snap.networks {
        let labels: Labels = vec![
            ("network", network.clone()),
            ("family", family_label(*family).to_string()),
        ];
        let a = &o.all;
        for (f, v) in per_net.iter().zip([
            a.size,
            a.used,
            a.reserved,
            a.cooling,
            a.free(),
            a.blocks,
            o.blocks_total,
        ]) {
            t.set(*f, labels.clone(), v);
        }
    }
    let attachments = t.family(
        "weft_attachments",
        "Allocation records (pods' attachments and fixed-IP holders) per network and node",
    );
    for ((network, n), count) in &snap.attachments {
        if node.is_some_and(|want| want != n) {
            continue;
        }
        t.set(
            attachments,
            vec![("network", network.clone()), ("node", n.clone())],
            *count,
        );
    }
    reg.register_collector(Box::new(t));
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_ipam::{AllocateRequest, Ipam, NetworkSpec, PoolSpec};
    use weft_store::embedded::EmbeddedStore;

    fn report(op: &str, code: u32, micros: u64, addresses: u32) -> Report {
        Report {
            v: report::VERSION,
            op: op.into(),
            network: "n1".into(),
            node: "a".into(),
            code,
            micros,
            addresses,
        }
    }

    fn store_with_pods() -> (tempfile::TempDir, EmbeddedStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path().join("store")).unwrap();
        let pool = |s: &str| PoolSpec {
            subnet: s.parse().unwrap(),
            range_start: None,
            range_end: None,
            exclude: vec![],
            gateway: None,
        };
        let spec = NetworkSpec::new("n1", vec![pool("198.18.0.0/24"), pool("fd00:18::/64")]);
        let ipam = Ipam::new(&store);
        for (c, node) in [("c1", "a"), ("c2", "a"), ("c3", "b")] {
            ipam.allocate(
                &spec,
                &AllocateRequest {
                    container_id: c.into(),
                    ifname: "eth0".into(),
                    node: node.into(),
                    requested: vec![],
                    pod: None,
                    fixed: None,
                    ..Default::default()
                },
            )
            .unwrap();
        }
        ipam.release("n1", "c2", "eth0").unwrap();
        (dir, store)
    }

    #[test]
    fn node_metrics_count_reports_and_passes() {
        let (_dir, store) = store_with_pods();
        let m = NodeMetrics::new("a");
        for r in [
            report("ADD", 0, 8_000, 2),
            report("ADD", 0, 12_000, 2),
            report("ADD", 7, 300, 0),
            report("DEL", 0, 20_000, 2),
            report("DEL", 0, 900, 0),
            report("CHECK", 103, 2_000, 0),
        ] {
            m.datagram(&r.encode()).unwrap();
        }
        assert!(m.datagram(b"garbage").is_err());
        m.reconciled(Duration::from_millis(3), Some((2, 1)));
        m.reconciled(Duration::from_millis(1), None);
        let text = m.render(&store);
        let e = text::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let ops = |op, result, code| {
            e.get(
                "weft_cni_operations_total",
                &[
                    ("op", op),
                    ("network", "n1"),
                    ("result", result),
                    ("code", code),
                ],
            )
        };
        assert_eq!(ops("ADD", "ok", "0"), Some(2.0));
        assert_eq!(ops("ADD", "error", "7"), Some(1.0));
        assert_eq!(ops("DEL", "ok", "0"), Some(2.0));
        assert_eq!(ops("CHECK", "error", "103"), Some(1.0));
        let h = |op, result, suffix: &str| {
            e.get(
                &format!("weft_cni_operation_duration_seconds_{suffix}"),
                &[("op", op), ("network", "n1"), ("result", result)],
            )
        };
        assert_eq!(h("ADD", "ok", "count"), Some(2.0));
        assert!((h("ADD", "ok", "sum").unwrap() - 0.020).abs() < 1e-9);
        assert_eq!(
            e.get(
                "weft_cni_operation_duration_seconds_bucket",
                &[
                    ("op", "ADD"),
                    ("network", "n1"),
                    ("result", "ok"),
                    ("le", "0.01")
                ]
            ),
            Some(1.0)
        );
        assert_eq!(
            e.get("weft_ipam_allocated_addresses_total", &[("network", "n1")]),
            Some(4.0)
        );
        assert_eq!(
            e.get("weft_ipam_released_addresses_total", &[("network", "n1")]),
            Some(2.0)
        );
        assert_eq!(e.get("weft_plugin_reports_total", &[]), Some(6.0));
        assert_eq!(e.get("weft_plugin_reports_rejected_total", &[]), Some(1.0));
        assert_eq!(e.get("weft_reconcile_runs_total", &[]), Some(2.0));
        assert_eq!(e.get("weft_reconcile_errors_total", &[]), Some(1.0));
        assert_eq!(
            e.get("weft_reconcile_duration_seconds_count", &[]),
            Some(2.0)
        );
        assert_eq!(
            e.get("weft_reconcile_changes_total", &[("change", "added")]),
            Some(2.0)
        );
        assert!(
            e.get("weft_reconcile_last_success_timestamp_seconds", &[])
                .unwrap()
                > 1e9
        );
        assert_eq!(e.get("weft_store_up", &[]), Some(1.0));
        // Pools: node a only, network totals for all.
        let pool =
            |name: &str, fam| e.get(name, &[("network", "n1"), ("family", fam), ("node", "a")]);
        assert_eq!(pool("weft_pool_size_addresses", "ipv4"), Some(63.0));
        assert_eq!(pool("weft_pool_used_addresses", "ipv4"), Some(1.0));
        assert_eq!(pool("weft_pool_cooling_addresses", "ipv4"), Some(1.0));
        assert_eq!(pool("weft_pool_free_addresses", "ipv4"), Some(61.0));
        assert_eq!(pool("weft_pool_used_addresses", "ipv6"), Some(1.0));
        assert_eq!(e.sum("weft_pool_size_addresses", &[("node", "b")]), 0.0);
        let net = |name: &str| e.get(name, &[("network", "n1"), ("family", "ipv4")]);
        assert_eq!(net("weft_network_size_addresses"), Some(254.0));
        assert_eq!(net("weft_network_used_addresses"), Some(2.0));
        assert_eq!(net("weft_network_free_addresses"), Some(251.0));
        assert_eq!(net("weft_network_blocks"), Some(2.0));
        assert_eq!(net("weft_network_blocks_capacity"), Some(4.0));
        // Allocation records are the API's to count, not every node's.
        assert!(e.family("weft_attachments").is_none());
    }

    #[test]
    fn api_renders_every_node() {
        let (_dir, store) = store_with_pods();
        let text = render_api(&store).unwrap();
        eprintln!("{text}");
        let e = text::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let used = |node| {
            e.get(
                "weft_pool_used_addresses",
                &[("network", "n1"), ("family", "ipv4"), ("node", node)],
            )
        };
        assert_eq!((used("a"), used("b")), (Some(1.0), Some(1.0)));
        assert_eq!(
            e.get(
                "weft_network_size_addresses",
                &[("network", "n1"), ("family", "ipv6")]
            ),
            Some(((1u128 << 64) - 1) as f64)
        );
        assert!(text.ends_with("# EOF\n"));
        let att = |node| e.get("weft_attachments", &[("network", "n1"), ("node", node)]);
        assert_eq!((att("a"), att("b")), (Some(1.0), Some(1.0)));
    }

    #[test]
    fn an_empty_store_renders_empty_families() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path().join("store")).unwrap();
        let text = render_api(&store).unwrap();
        let e = text::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        // Families without series are left out.
        assert_eq!(e.samples().count(), 0);
        assert_eq!(text, "# EOF\n");
    }
}
