//! Reconcile by level: desired state from the store, actual state from the kernel (only the
//! agent's own objects), then one pipelined batch that adds what is missing and deletes what is
//! extra.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

use ipnet::IpNet;
use weft_ipam::{Allocation, BlockRecord, NetworkRecord};
use weft_store::Store;

use crate::config::Config;
use crate::desired::{self, Desired, Local, Via};
use crate::firewall;
use weft_dataplane::netlink::vxlan::{self, Ensured};
use weft_dataplane::{FdbEntry, Netlink, Route, VxlanSpec};

use crate::node::{self, NodeRecord};
use crate::{AgentError, Result, log};

/// VXLAN over IPv4 costs 50 bytes (outer IPv4 20, UDP 8, VXLAN 8, inner Ethernet 14).
pub const VXLAN_OVERHEAD: u32 = 50;

/// The node's underlay link and address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Underlay {
    pub index: u32,
    pub mtu: u32,
    pub ip: Ipv4Addr,
    /// The address with its prefix length, truncated: the L2 segment.
    pub subnet: IpNet,
    /// The link's first global IPv6 address with its prefix length, if any.
    pub net6: Option<IpNet>,
}

/// Finds the underlay from the interface name or the address (IPv4 only so far).
pub fn find_underlay(iface: Option<&str>, address: Option<IpAddr>) -> Result<Underlay> {
    let mut nl = weft_dataplane::Netlink::new()?;
    let link = match (iface, address) {
        (Some(name), _) => nl
            .link_by_name(name)?
            .ok_or_else(|| AgentError::Underlay(format!("no link called {name:?}")))?,
        (None, Some(a)) => {
            let found = nl
                .addresses(None)?
                .into_iter()
                .find(|x| x.net.addr() == a)
                .ok_or_else(|| AgentError::Underlay(format!("no link has the address {a}")))?;
            nl.link_by_index(found.index)?.ok_or_else(|| {
                AgentError::Underlay(format!("link index {} of {a} vanished", found.index))
            })?
        }
        (None, None) => {
            return Err(AgentError::Underlay(
                "give the underlay interface or address".into(),
            ));
        }
    };
    let addrs = nl.addresses(Some(link.index))?;
    let net = addrs
        .iter()
        .map(|a| a.net)
        .find(|n| match address {
            Some(a) => n.addr() == a,
            None => n.addr().is_ipv4(),
        })
        .ok_or_else(|| {
            AgentError::Underlay(format!(
                "link {:?} has no {}",
                link.name,
                match address {
                    Some(a) => format!("address {a}"),
                    None => "IPv4 address".into(),
                }
            ))
        })?;
    let IpAddr::V4(ip) = net.addr() else {
        return Err(AgentError::Underlay(format!(
            "underlay address {} is IPv6: only an IPv4 underlay is supported so far",
            net.addr()
        )));
    };
    let net6 = addrs.iter().map(|a| a.net).find(|n| match n.addr() {
        IpAddr::V6(a) => !a.is_loopback() && (a.segments()[0] & 0xffc0) != 0xfe80,
        IpAddr::V4(_) => false,
    });
    Ok(Underlay {
        index: link.index,
        mtu: link.mtu,
        ip,
        subnet: net.trunc(),
        net6,
    })
}

/// Values of `kvs` decoded as `T`; a record that does not decode is logged and skipped.
fn parse_all<T: serde::de::DeserializeOwned>(kvs: Vec<weft_store::KeyValue>) -> Vec<T> {
    kvs.into_iter()
        .filter_map(|kv| match serde_json::from_slice(&kv.value) {
            Ok(v) => Some(v),
            Err(e) => {
                log!("skipping store record {}: {e}", kv.key);
                None
            }
        })
        .collect()
}

/// What one reconcile did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    pub added: Vec<String>,
    pub deleted: Vec<String>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.deleted.is_empty()
    }
}

pub struct Reconciler {
    cfg: Config,
    underlay: Underlay,
    nl: Netlink,
    local: Local,
    last_skipped: Vec<String>,
    last_firewall_error: Option<String>,
    newest_local: u64,
    /// The fast path's `to_pods` program, loaded on first use (with `fast_path`).
    to_pods: Option<weft_dataplane::bpf::Program>,
    /// This kernel refused `to_pods` (fast path not required): the node runs without it.
    fast_path_refused: bool,
    /// The VXLAN device index the pods' `from_pod` programs were last refreshed for.
    from_pod_vx: Option<u32>,
}

/// The store records a pass reads.
#[derive(Debug, Clone, Default)]
pub struct StoreView {
    pub nodes: Vec<NodeRecord>,
    pub blocks: Vec<BlockRecord>,
    pub handles: Vec<Allocation>,
    pub networks: Vec<NetworkRecord>,
}

impl Reconciler {
    pub fn new(cfg: Config, underlay: Underlay) -> Result<Reconciler> {
        let local = Local {
            name: cfg.node.clone(),
            underlay_ip: underlay.ip.into(),
            underlay_subnet: underlay.subnet,
            underlay_net6: underlay.net6,
            mode: cfg.mode,
        };
        Ok(Reconciler {
            cfg,
            underlay,
            nl: Netlink::new()?,
            local,
            last_skipped: Vec::new(),
            last_firewall_error: None,
            newest_local: 0,
            to_pods: None,
            fast_path_refused: false,
            from_pod_vx: None,
        })
    }

    /// When the newest allocation of this node or the newest release anywhere in our network
    /// happened, as of the last pass (unix seconds; 0: none): the report is published again
    /// after it (see [`crate::report`]).
    pub fn newest_allocation_or_release(&self) -> u64 {
        self.newest_local
    }

    /// The VXLAN device Weft wants, when the mode uses one.
    pub fn vxlan_spec(&self) -> Option<VxlanSpec> {
        self.cfg.mode.uses_vxlan().then(|| VxlanSpec {
            name: self.cfg.vxlan_device.clone(),
            vni: self.cfg.vni,
            local: self.underlay.ip,
            port: self.cfg.vxlan_port,
            underlay_index: self.underlay.index,
            mtu: self.underlay.mtu.saturating_sub(VXLAN_OVERHEAD),
            mac: vxlan::vtep_mac(self.underlay.ip),
        })
    }

    /// The record this node registers.
    pub fn node_record(&self) -> NodeRecord {
        let spec = self.vxlan_spec();
        NodeRecord {
            schema: node::SCHEMA,
            name: self.cfg.node.clone(),
            underlay_ip: self.underlay.ip.into(),
            underlay_subnet: self.underlay.subnet,
            underlay_ip6: self.underlay.net6.map(|n| n.addr()),
            vtep_mac: spec.as_ref().map(|s| node::mac_string(&s.mac)),
            vtep_ip: spec.as_ref().map(|_| self.underlay.ip.into()),
            vni: spec.as_ref().map(|s| s.vni),
            networks: vec![self.cfg.network.clone()],
            mode: self.cfg.mode.as_str().into(),
        }
    }

    /// Creates or repairs the VXLAN device; its index (None in host-gw mode).
    pub fn ensure_device(&mut self) -> Result<Option<u32>> {
        let Some(spec) = self.vxlan_spec() else {
            return Ok(None);
        };
        let (index, what) = self.nl.ensure_vxlan(&spec)?;
        match what {
            Ensured::Unchanged => {}
            Ensured::Created => log!(
                "created {} (vni {}, local {}, port {}, mtu {})",
                spec.name,
                spec.vni,
                spec.local,
                spec.port,
                spec.mtu
            ),
            Ensured::Recreated => log!("recreated {}: it was not as configured", spec.name),
            Ensured::Fixed => log!("set {} up with mtu {}", spec.name, spec.mtu),
        }
        Ok(Some(index))
    }

    /// Node records, and the blocks and handles of our network, and every network record;
    /// records that do not decode are logged and skipped.
    pub fn read_store(&self, store: &dyn Store) -> Result<StoreView> {
        let list = |p: String| {
            store
                .list(&p)
                .map_err(|e| AgentError::store(format!("list {p}"), e))
        };
        Ok(StoreView {
            nodes: parse_all(list(node::nodes_prefix())?),
            blocks: parse_all(list(weft_ipam::blocks_prefix(&self.cfg.network))?),
            handles: parse_all(list(weft_ipam::handles_prefix(&self.cfg.network))?),
            networks: parse_all(list(weft_ipam::networks_prefix())?),
        })
    }

    /// The desired routing state from the store as read.
    pub fn desired(&mut self, view: &StoreView) -> Desired {
        let d = desired::compute(
            &self.local,
            &self.cfg.network,
            &view.nodes,
            &view.blocks,
            &view.handles,
        );
        if d.skipped != self.last_skipped {
            for s in &d.skipped {
                log!("left out: {s}");
            }
            self.last_skipped = d.skipped.clone();
        }
        d
    }

    /// One full pass: device, desired state, kernel state, the difference applied, then the
    /// nftables table.
    pub fn reconcile(&mut self, store: &dyn Store) -> Result<Changes> {
        let vx = self.ensure_device()?;
        let view = self.read_store(store)?;
        let newest_allocation = view
            .handles
            .iter()
            .filter(|a| a.node == self.cfg.node)
            .map(|a| a.created_at)
            .max()
            .unwrap_or(0);
        // A release too: `check` calls an interface or route whose address was released an
        // orphan only from a report made after the release, and with the kernel unchanged
        // the report would otherwise not be written again for REPORT_REFRESH_SECONDS. Any
        // block of the network (an address held here may be borrowed from another's).
        let newest_release = view
            .blocks
            .iter()
            .flat_map(|b| b.cooling.values())
            .copied()
            .max()
            .unwrap_or(0);
        self.newest_local = newest_allocation.max(newest_release);
        let d = self.desired(&view);
        let mut changes = self.apply(&d, vx)?;
        // A fast path that fails (a required one the kernel refuses, a netlink error) fails the
        // pass, but only after the firewall below: masquerade is kept up either way.
        let mut fast_path_error = None;
        if self.cfg.fast_path && !self.fast_path_refused {
            match self.fast_path_pass(&view, vx) {
                Ok(added) => changes.added.extend(added),
                Err(e) => fast_path_error = Some(e),
            }
        } else if !self.cfg.fast_path {
            changes.deleted.extend(self.remove_fast_path(vx)?);
        }
        let want = firewall::wanted(&view.networks, &self.cfg.network, self.cfg.masquerade);
        match firewall::ensure(&want) {
            Ok(Some(what)) => changes.added.push(what),
            Ok(None) => self.last_firewall_error = None,
            Err(e) => {
                let msg = e.to_string();
                if self.last_firewall_error.as_ref() != Some(&msg) {
                    log!("nftables: {msg}");
                    self.last_firewall_error = Some(msg.clone());
                }
                if self.cfg.masquerade && fast_path_error.is_none() {
                    return Err(e.into());
                }
            }
        }
        match fast_path_error {
            Some(e) => Err(e),
            None => Ok(changes),
        }
    }

    /// The fast path's part of a pass: [`Self::ensure_fast_path`], then the pods' `from_pod`
    /// refreshed when the VXLAN device's index changed (only a VXLAN device, in vxlan and hybrid
    /// modes, is baked into the pods' programs).
    fn fast_path_pass(&mut self, view: &StoreView, vx: Option<u32>) -> Result<Vec<String>> {
        let mut added = self.ensure_fast_path(vx)?;
        if let Some(index) = vx
            && self.to_pods.is_some()
            && self.from_pod_vx != Some(index)
        {
            added.extend(self.refresh_pods_fast_path(view, index)?);
            self.from_pod_vx = Some(index);
        }
        Ok(added)
    }

    /// The fast path's `to_pods` on the underlay link and the VXLAN device: attached where
    /// missing (also when something removed it). Pods opt in with the plugin's `fastPath`,
    /// which puts their /32 in [`weft_dataplane::bpf::POD_TABLE`], the only table it looks in.
    fn ensure_fast_path(&mut self, vx: Option<u32>) -> Result<Vec<String>> {
        if self.to_pods.is_none() {
            // With VXLAN, the program also takes apart what peers send to this VTEP for a
            // local pod.
            let vtep = self.vtep(vx);
            match weft_dataplane::bpf::FastPath::to_pods(
                weft_dataplane::bpf::POD_TABLE,
                vtep.as_ref(),
            ) {
                Ok(prog) => self.to_pods = Some(prog),
                Err(e) if !self.cfg.fast_path_required => {
                    log!(
                        "fast path off: this kernel refused its program ({e}); pod traffic takes \
                         the IP stack (it needs Linux 6.x with BTF and conntrack)"
                    );
                    self.fast_path_refused = true;
                    return Ok(Vec::new());
                }
                Err(e) => {
                    return Err(AgentError::Invalid {
                        field: "fastPath",
                        msg: format!(
                            "required (--fast-path or \"fastPath\": true), but this kernel \
                             refused its program ({e}); it needs Linux 6.x with BTF and \
                             conntrack: drop the flag to fall back to the IP stack"
                        ),
                    });
                }
            }
        }
        let Some(prog) = self.to_pods.as_ref() else {
            return Ok(Vec::new());
        };
        let mut added = Vec::new();
        for index in [Some(self.underlay.index), vx].into_iter().flatten() {
            if !self
                .nl
                .ingress_programs(index)?
                .iter()
                .any(|n| n == prog.name())
            {
                self.nl.attach_ingress(index, prog)?;
                added.push(format!("fast path {} on link {index}", prog.name()));
            }
        }
        Ok(added)
    }

    /// The `from_pod` of this network's fast-path pods (host veths with the plugin's alias
    /// `weft:<network>:...` and a `from_pod` filter), attached again for VXLAN device `vx`.
    /// The plugin bakes the device's index into each pod's program (so that a device made again
    /// with another VNI or port is never encapsulated for wrongly); a pod attached before the
    /// device existed, or before weftd made it again, would otherwise leave every packet to the
    /// device until the pod is added again. Run on the first pass and whenever the index
    /// changes; the tc filter is replaced in place, so traffic does not stop.
    fn refresh_pods_fast_path(&mut self, view: &StoreView, vx: u32) -> Result<Vec<String>> {
        use weft_dataplane::bpf::{FastPath, POD_TABLE};
        let pools: Vec<IpNet> = view
            .networks
            .iter()
            .filter(|n| n.spec.name == self.cfg.network)
            .flat_map(|n| n.spec.pools.iter().map(|p| p.subnet))
            .collect();
        if pools.is_empty() {
            return Ok(Vec::new());
        }
        let prefix = format!("weft:{}:", self.cfg.network);
        let mut pods = Vec::new();
        for link in self.nl.links_of_kind("veth")? {
            let ours = link
                .alias
                .as_deref()
                .is_some_and(|a| a.starts_with(&prefix));
            if ours
                && self
                    .nl
                    .ingress_programs(link.index)?
                    .iter()
                    .any(|n| n == FastPath::FROM_POD)
            {
                pods.push(link);
            }
        }
        if pods.is_empty() {
            return Ok(Vec::new());
        }
        let prog = FastPath::from_pod(&pools, POD_TABLE, self.vtep(Some(vx)).as_ref())?;
        for pod in &pods {
            self.nl.attach_ingress(pod.index, &prog)?;
        }
        let refreshed: Vec<&str> = pods.iter().map(|l| l.name.as_str()).collect();
        Ok(vec![format!(
            "fast path {} refreshed on {} pod link(s) for VXLAN device {vx} ({})",
            FastPath::FROM_POD,
            refreshed.len(),
            refreshed.join(", ")
        )])
    }

    /// This node's VXLAN endpoint as the fast-path programs take it: device `vx` (None in
    /// host-gw mode or without a device).
    fn vtep(&self, vx: Option<u32>) -> Option<weft_dataplane::bpf::Vtep> {
        self.vxlan_spec()
            .zip(vx)
            .map(|(s, ifindex)| weft_dataplane::bpf::Vtep {
                ifindex,
                local: s.local,
                vni: s.vni,
                port: s.port,
            })
    }

    /// Without `fast_path`: a `to_pods` left by an earlier weftd started with it goes.
    fn remove_fast_path(&mut self, vx: Option<u32>) -> Result<Vec<String>> {
        let name = weft_dataplane::bpf::FastPath::TO_PODS;
        let mut removed = Vec::new();
        for index in [Some(self.underlay.index), vx].into_iter().flatten() {
            if self.nl.ingress_programs(index)?.iter().any(|n| n == name) {
                self.nl.detach_ingress(index, name)?;
                removed.push(format!("fast path {name} on link {index}"));
            }
        }
        Ok(removed)
    }

    fn apply(&mut self, d: &Desired, vx: Option<u32>) -> Result<Changes> {
        let mut changes = Changes::default();

        // Routes: the agent's are those of protocol 87 with a gateway (the plugin's pod routes
        // have none), compared on destination, gateway, device and onlink.
        let want: BTreeSet<Route> = d
            .routes
            .iter()
            .filter_map(|(dst, via)| match *via {
                Via::Underlay(gw) => Some(peer_route(*dst, gw, self.underlay.index, false)),
                Via::Vxlan(gw) => vx.map(|oif| peer_route(*dst, gw, oif, true)),
            })
            .collect();
        let mut have: BTreeSet<Route> = BTreeSet::new();
        for v6 in [false, true] {
            for r in self.nl.weft_routes(v6)? {
                if let (Some(gw), Some(oif)) = (r.gateway, r.oif) {
                    have.insert(peer_route(r.dst, gw, oif, r.onlink));
                }
            }
        }
        let replaced: BTreeSet<IpNet> = want.difference(&have).map(|r| r.dst).collect();
        let route_adds: Vec<&Route> = want.difference(&have).collect();
        let route_dels: Vec<&Route> = have
            .difference(&want)
            .filter(|r| !replaced.contains(&r.dst)) // the add replaces it
            .collect();
        for r in &route_adds {
            changes.added.push(format!("route {}", r.describe()));
        }
        for r in &route_dels {
            changes.deleted.push(format!("route {}", r.describe()));
        }

        // FDB and neighbour entries on the VXLAN device.
        let (mut fdb_adds, mut fdb_dels) = (Vec::new(), Vec::new());
        let (mut neigh_adds, mut neigh_dels) = (Vec::new(), Vec::new());
        if let Some(vx) = vx {
            let fdb_have: BTreeSet<FdbEntry> = self.nl.fdb_entries(vx)?.into_iter().collect();
            let fdb_want: BTreeSet<FdbEntry> = d
                .fdb
                .iter()
                .map(|(mac, dst)| FdbEntry {
                    mac: *mac,
                    dst: *dst,
                })
                .collect();
            for e in fdb_want.difference(&fdb_have) {
                changes
                    .added
                    .push(format!("fdb {} dst {}", node::mac_string(&e.mac), e.dst));
                fdb_adds.push(*e);
            }
            for e in fdb_have.difference(&fdb_want) {
                if d.fdb.contains_key(&e.mac) {
                    continue; // replaced by the add
                }
                changes
                    .deleted
                    .push(format!("fdb {} dst {}", node::mac_string(&e.mac), e.dst));
                fdb_dels.push(*e);
            }
            let mut neigh_have: BTreeMap<IpAddr, Option<[u8; 6]>> = BTreeMap::new();
            for v6 in [false, true] {
                for n in self.nl.neighbours(vx, v6)? {
                    if n.permanent {
                        neigh_have.insert(n.ip, n.mac);
                    }
                }
            }
            for (ip, mac) in &d.neighbours {
                if neigh_have.get(ip) != Some(&Some(*mac)) {
                    changes
                        .added
                        .push(format!("neighbour {ip} lladdr {}", node::mac_string(mac)));
                    neigh_adds.push((*ip, *mac));
                }
            }
            for ip in neigh_have.keys() {
                if !d.neighbours.contains_key(ip) {
                    changes.deleted.push(format!("neighbour {ip}"));
                    neigh_dels.push(*ip);
                }
            }
        }

        // One batch: tunnel entries before the routes that use them, then the deletions.
        let mut b = self.nl.batch();
        if let Some(vx) = vx {
            for e in &fdb_adds {
                b.replace_fdb(vx, e);
            }
            for (ip, mac) in &neigh_adds {
                b.replace_neighbour(vx, *ip, *mac);
            }
        }
        for r in &route_adds {
            b.add_route(r);
        }
        for r in &route_dels {
            b.delete_route_if_present(r);
        }
        if let Some(vx) = vx {
            for e in &fdb_dels {
                b.delete_fdb(vx, e);
            }
            for ip in &neigh_dels {
                b.delete_neighbour(vx, *ip);
            }
        }
        b.commit()?;
        Ok(changes)
    }
}

/// `<dst> via <gateway> dev <oif> [onlink]` in the main table, as the agent adds it (protocol 87)
/// and as it compares it with the kernel's (any metric: IPv6 routes come back with 1024).
fn peer_route(dst: IpNet, gateway: IpAddr, oif: u32, onlink: bool) -> Route {
    let mut r = Route::new(dst);
    r.gateway = Some(gateway);
    r.oif = Some(oif);
    r.onlink = onlink;
    r
}
