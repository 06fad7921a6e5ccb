//! The `weft` CNI plugin and the `weft-ipam` IPAM-only plugin.
//!
//! Each verb reads top to bottom as the spec's: validate everything first (bad input changes
//! nothing), then allocate, then wire; undo what this call made when a later step fails.
#![forbid(unsafe_code)]

pub mod attach;
pub mod config;
pub mod firewall;
pub mod fixed_rules;
pub mod ipam_plugin;
pub mod names;
pub mod report;
pub mod underlay;

use std::collections::BTreeSet;
use std::net::IpAddr;

use ipnet::IpNet;
use weft_cni::config::NetConf;
use weft_cni::error::code;
use weft_cni::result::Dns;
use weft_cni::skel::Plugin;
use weft_cni::{CniEnv, CniError, CniResult, Command, delegate};
use weft_dataplane::{Netlink, Netns};
use weft_ipam::{AllocateRequest, Allocated, Ipam, IpamError};
use weft_store::Store;
use weft_store::StoreError;
use weft_store::embedded::EmbeddedStore;
use weft_store::etcd::{EtcdOptions, EtcdStore};

use attach::{Attachment, PodAddress, kernel};
use config::{IpamConfig, IpamSource, Mode, StoreConfig, WeftConfig};

/// Weft's own codes (the spec leaves 100 and up to plugins).
pub mod codes {
    pub const ADDRESS_IN_USE: u32 = 100;
    pub const POOL_EXHAUSTED: u32 = 101;
    pub const INTERFACE_EXISTS: u32 = 102;
    pub const DRIFT: u32 = 103;
}

pub fn ipam_error(e: IpamError) -> CniError {
    let c = match &e {
        IpamError::InUse { .. }
        | IpamError::AlreadyReserved { .. }
        | IpamError::PoolAddressTaken { .. } => codes::ADDRESS_IN_USE,
        IpamError::Exhausted { .. } | IpamError::PoolExhausted { .. } => codes::POOL_EXHAUSTED,
        IpamError::Cooling { .. } => code::TRY_AGAIN_LATER,
        IpamError::Store(StoreError::Unavailable(_) | StoreError::Conflict(_)) => {
            code::TRY_AGAIN_LATER
        }
        IpamError::Store(_) => code::IO_FAILURE,
        _ => code::INVALID_CONFIG,
    };
    CniError::new(c, e.to_string())
}

pub fn open_store(ipam: &IpamConfig) -> Result<Box<dyn Store>, CniError> {
    match &ipam.store {
        StoreConfig::Embedded => {
            let dir = ipam.data_dir.join("store");
            let store = EmbeddedStore::open(&dir).map_err(|e| {
                CniError::io(format!(
                    "cannot open the IPAM store at {} (ipam.dataDir): {e}",
                    dir.display()
                ))
            })?;
            Ok(Box::new(store))
        }
        StoreConfig::Etcd {
            endpoints,
            timeout,
            prefix,
        } => {
            let opts = EtcdOptions {
                connect_timeout: *timeout,
                request_timeout: *timeout,
                prefix: prefix.clone(),
            };
            let store = EtcdStore::connect(endpoints, opts).map_err(|e| {
                CniError::try_again(format!(
                    "cannot reach etcd at {} (ipam.store.endpoints): {e}",
                    endpoints.join(",")
                ))
            })?;
            Ok(Box::new(store))
        }
    }
}

/// With a shared store, this node's plugin processes take turns on a local lock, so they never
/// contend with each other in the store (the embedded store serialises them by itself).
pub fn node_lock(ipam: &IpamConfig) -> Result<Option<std::fs::File>, CniError> {
    if ipam.store == StoreConfig::Embedded {
        return Ok(None);
    }
    let dir = &ipam.data_dir;
    std::fs::create_dir_all(dir).map_err(|e| {
        CniError::io(format!(
            "cannot create {} (ipam.dataDir): {e}",
            dir.display()
        ))
    })?;
    let path = dir.join(format!("node-{}.lock", ipam.spec.name));
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| CniError::io(format!("cannot open {}: {e}", path.display())))?;
    f.lock()
        .map_err(|e| CniError::io(format!("cannot lock {}: {e}", path.display())))?;
    Ok(Some(f))
}

/// Addresses asked for by name: the `ips` capability, `CNI_ARGS` IP=, and `args.cni.ips`.
pub fn requested_ips(env: &CniEnv, conf: &NetConf) -> Result<Vec<IpAddr>, CniError> {
    let mut out: Vec<IpAddr> = conf.runtime_ips()?.into_iter().map(|r| r.addr).collect();
    if let Some(v) = env.arg("IP") {
        for part in v.split(',').filter(|p| !p.is_empty()) {
            let a = part.split('/').next().unwrap_or(part);
            out.push(a.parse().map_err(|_| {
                CniError::invalid_env(format!("CNI_ARGS IP={v}: {part:?} is not an IP address; write IP=198.18.0.7 or IP=198.18.0.7,fd00::7"))
            })?);
        }
    }
    if let Some(ips) = conf
        .args
        .as_ref()
        .and_then(|a| a.get("cni"))
        .and_then(|c| c.get("ips"))
    {
        for (i, v) in ips.as_array().into_iter().flatten().enumerate() {
            let s = v.as_str().unwrap_or_default();
            let a = s.split('/').next().unwrap_or(s);
            out.push(a.parse().map_err(|_| {
                CniError::invalid_config(format!("args.cni.ips[{i}] {v} is not an IP address"))
            })?);
        }
    }
    let mut seen = BTreeSet::new();
    out.retain(|a| seen.insert(*a));
    Ok(out)
}

fn pod_identity(env: &CniEnv) -> Option<String> {
    match (env.arg("K8S_POD_NAMESPACE"), env.arg("K8S_POD_NAME")) {
        (Some(ns), Some(name)) => Some(format!("{ns}/{name}")),
        _ => None,
    }
}

/// Opens the pod's namespace; a path that does not exist is the spec's "container unknown".
pub fn open_pod_netns(env: &CniEnv) -> Result<Netns, CniError> {
    let path = env.require_netns()?;
    Netns::open(path).map_err(|e| {
        if e.is_not_found() {
            CniError::unknown_container(format!("CNI_NETNS {}: no such network namespace; the container is gone or the path is wrong", path.display()))
        } else {
            CniError::invalid_env(format!("CNI_NETNS {}: cannot open it as a network namespace: {e}", path.display()))
        }
    })
}

pub fn ipam_request(
    env: &CniEnv,
    conf: &NetConf,
    ipam: &IpamConfig,
) -> Result<AllocateRequest, CniError> {
    Ok(AllocateRequest {
        container_id: env.require_container_id()?.to_string(),
        ifname: env.require_ifname()?.to_string(),
        node: ipam.node.clone(),
        requested: requested_ips(env, conf)?,
        pod: pod_identity(env),
        fixed: fixed_rules::resolve(env, &ipam.fixed)?,
        host_interface: None,
        netns: pod_netns_ref(env),
    })
}

/// The pod's namespace identity for the allocation record (one `stat`; None when CNI_NETNS
/// is unset or cannot be read: the record then carries no namespace, and `check` judges the
/// attachment as it judges records made before these fields).
pub fn pod_netns_ref(env: &CniEnv) -> Option<weft_ipam::NetnsRef> {
    weft_ipam::NetnsRef::stat(env.netns.as_deref()?).ok()
}

fn dns_of(conf: &NetConf) -> Dns {
    conf.dns.clone().unwrap_or_default()
}

/// The ADD result: what an earlier plugin of the chain returned (if any), then what Weft made.
fn merge_prev(conf: &NetConf, a: attach::Attached) -> Result<CniResult, CniError> {
    let mut out = conf.prev_result()?.unwrap_or_default();
    let shift = out.interfaces.len();
    out.cni_version = conf.cni_version.clone();
    out.interfaces.extend(a.interfaces);
    out.ips.extend(a.ips.into_iter().map(|mut ip| {
        ip.interface = ip.interface.map(|i| i + shift);
        ip
    }));
    out.routes.extend(a.routes);
    if out.dns.is_empty() {
        out.dns = dns_of(conf);
    }
    Ok(out)
}

/// ADD into a pod that already has an interface of the requested name.
pub fn interface_exists(ifname: &str) -> CniError {
    CniError::new(
        codes::INTERFACE_EXISTS,
        format!(
            "CNI_IFNAME {ifname}: the pod already has an interface of that name; DEL the attachment first or choose another name"
        ),
    )
}

pub struct WeftPlugin;

impl WeftPlugin {
    /// Loads the network into Weft's nftables table (once per boot and node namespace).
    fn firewall(&self, cfg: &WeftConfig, node: &Netlink) -> Result<(), CniError> {
        let ipam = match &cfg.ipam {
            IpamSource::Weft(ipam) => ipam,
            IpamSource::Delegate(_) if cfg.masquerade => {
                return Err(CniError::invalid_config(format!(
                    "network \"{}\": masquerade needs Weft's own IPAM (it masquerades the pool subnets); remove ipam.type or masquerade",
                    cfg.name
                )));
            }
            IpamSource::Delegate(_) => return Ok(()),
        };
        let subnets: Vec<IpNet> = ipam.spec.pools.iter().map(|p| p.subnet).collect();
        if cfg.masquerade {
            attach::enable_forwarding(subnets.iter().any(|s| s.addr().is_ipv6()))?;
        }
        let netns_cookie = node.netns_cookie().map_err(|e| kernel("netns cookie", e))?;
        let fw = firewall::NetworkFirewall {
            data_dir: &ipam.data_dir,
            network: &cfg.name,
            subnets: &subnets,
            masquerade: cfg.masquerade,
            netns_cookie,
        };
        firewall::ensure(&fw, || all_pod_subnets(ipam))
    }
}

/// Every pool subnet of every network in the store.
fn all_pod_subnets(ipam: &IpamConfig) -> Vec<IpNet> {
    let Ok(store) = open_store(ipam) else {
        return Vec::new();
    };
    Ipam::new(&*store)
        .networks()
        .map(|nets| {
            nets.iter()
                .flat_map(|n| n.spec.pools.iter().map(|p| p.subnet))
                .collect()
        })
        .unwrap_or_default()
}

impl Plugin for WeftPlugin {
    fn add(&self, env: &CniEnv, conf: &NetConf) -> Result<CniResult, CniError> {
        let cfg = WeftConfig::parse(conf)?;
        let container_id = env.require_container_id()?;
        let ifname = env.require_ifname()?;
        let mac = match conf.runtime_mac() {
            Some(m) => Some(names::parse_mac(&m).ok_or_else(|| {
                CniError::invalid_config(format!(
                    "runtimeConfig.mac {m:?} is not a MAC address like 0a:58:c6:12:00:07"
                ))
            })?),
            None => None,
        };
        let pod_ns = open_pod_netns(env)?;
        let mut pod = Netlink::in_netns(&pod_ns).map_err(|e| kernel("pod netns", e))?;
        let pod_has_ifname = |pod: &mut Netlink| -> Result<(), CniError> {
            match pod
                .link_by_name(ifname)
                .map_err(|e| kernel("pod netns", e))?
            {
                Some(_) => Err(interface_exists(ifname)),
                None => Ok(()),
            }
        };
        // Before any change: a clash found later would leave a new bridge or rules behind.
        pod_has_ifname(&mut pod)?;
        if let Some(u) = &cfg.underlay {
            underlay::preflight(&cfg.name, u)?;
        }
        if cfg.big_tcp {
            let mut node = Netlink::new().map_err(|e| kernel("node netlink", e))?;
            attach::big_tcp_preflight(&cfg, &mut node)?;
        }

        // Addresses: Weft's IPAM in process, or a delegated IPAM plugin.
        let (addresses, release): (Vec<PodAddress>, Box<dyn Fn()>) = match &cfg.ipam {
            IpamSource::Weft(ipam_cfg) => {
                let mut req = ipam_request(env, conf, ipam_cfg)?;
                if underlay::macvlan(&cfg).is_none() {
                    req.host_interface = Some(names::host_veth(&cfg.name, container_id, ifname));
                }
                let _node = node_lock(ipam_cfg)?;
                let store = open_store(ipam_cfg)?;
                let Allocated { addresses, created } = Ipam::new(&*store)
                    .allocate(&ipam_cfg.spec, &req)
                    .map_err(ipam_error)?;
                report::note_addresses(if created { addresses.len() } else { 0 });
                let (net, cid, ifn, ipc) = (
                    cfg.name.clone(),
                    container_id.to_string(),
                    ifname.to_string(),
                    ipam_cfg.clone(),
                );
                let release: Box<dyn Fn()> = Box::new(move || {
                    if created && let Ok(store) = open_store(&ipc) {
                        let _ = Ipam::new(&*store).release(&net, &cid, &ifn);
                    }
                });
                (
                    addresses
                        .into_iter()
                        .map(|a| PodAddress {
                            address: a.address,
                            gateway: a.gateway,
                        })
                        .collect(),
                    release,
                )
            }
            IpamSource::Delegate(kind) => {
                let bytes = conf.raw.to_string().into_bytes();
                let r = delegate::exec(kind, Command::Add, env, &bytes)?.ok_or_else(|| {
                    CniError::io(format!("IPAM plugin {kind} printed no ADD result; check that ipam.type names an IPAM plugin and that its section is complete"))
                })?;
                let (kind, env2) = (kind.clone(), env.clone());
                let release: Box<dyn Fn()> = Box::new(move || {
                    let _ = delegate::exec(&kind, Command::Del, &env2, &bytes);
                });
                (
                    r.ips
                        .iter()
                        .map(|ip| PodAddress {
                            address: ip.address,
                            gateway: ip.gateway,
                        })
                        .collect(),
                    release,
                )
            }
        };
        if addresses.is_empty() {
            release();
            return Err(CniError::invalid_config(format!(
                "network \"{}\": the IPAM plugin returned no address; give its ipam section a subnet or range for at least one IP family",
                cfg.name
            )));
        }

        let mut node = Netlink::new().map_err(|e| kernel("node netlink", e))?;
        let wired = (|| {
            self.firewall(&cfg, &node)?;
            let a = Attachment {
                cfg: &cfg,
                container_id,
                ifname,
                pod_ns: &pod_ns,
                addresses: &addresses,
                mac,
            };
            match underlay::macvlan(&cfg) {
                Some(u) => underlay::attach_macvlan(&mut node, &mut pod, &a, u),
                None => attach::attach(&mut node, &mut pod, &a),
            }
        })();
        match wired {
            Ok(a) => Ok(merge_prev(conf, a)?),
            Err(e) => {
                if underlay::macvlan(&cfg).is_none() {
                    let _ = node.delete_link_by_name(&names::host_veth(
                        &cfg.name,
                        container_id,
                        ifname,
                    ));
                }
                release();
                Err(e)
            }
        }
    }

    fn del(&self, env: &CniEnv, conf: &NetConf) -> Result<(), CniError> {
        let cfg = WeftConfig::parse(conf)?;
        let container_id = env.require_container_id()?;
        let ifname = env.require_ifname()?;
        // The interface goes first: an address is never free while a pod may still hold it.
        // One deleting transaction: the pod end and the routes on the host end go with it.
        if let Some(u) = underlay::macvlan(&cfg) {
            // No host end: the pod's macvlan (if the pod is still there) and the shim routes.
            let mut known: Vec<IpAddr> = conf
                .prev_result()
                .ok()
                .flatten()
                .map(|r| r.ips.iter().map(|ip| ip.address.addr()).collect())
                .unwrap_or_default();
            if let IpamSource::Weft(ipam_cfg) = &cfg.ipam
                && let Ok(store) = open_store(ipam_cfg)
                && let Ok(Some(alloc)) = Ipam::new(&*store).get(&cfg.name, container_id, ifname)
            {
                known.extend(alloc.addresses.iter().map(|a| a.addr()));
            }
            underlay::detach_macvlan(env, &cfg, u, container_id, ifname, known)?;
        } else {
            let mut node = Netlink::new().map_err(|e| kernel("node netlink", e))?;
            let host = names::host_veth(&cfg.name, container_id, ifname);
            node.delete_link_by_name(&host).map_err(|e| {
                CniError::try_again(format!("cannot delete veth {host}: {e}; retry DEL"))
            })?;
        }
        match &cfg.ipam {
            IpamSource::Weft(ipam_cfg) => {
                let _node = node_lock(ipam_cfg)?;
                let store = open_store(ipam_cfg)?;
                let released = Ipam::new(&*store)
                    .release(&cfg.name, container_id, ifname)
                    .map_err(ipam_error)?;
                report::note_addresses(released.map_or(0, |a| a.addresses.len()));
            }
            IpamSource::Delegate(kind) => {
                delegate::exec(kind, Command::Del, env, conf.raw.to_string().as_bytes())?;
            }
        }
        Ok(())
    }

    fn check(&self, env: &CniEnv, conf: &NetConf) -> Result<(), CniError> {
        let cfg = WeftConfig::parse(conf)?;
        let container_id = env.require_container_id()?;
        let ifname = env.require_ifname()?;
        let prev = conf.prev_result()?.ok_or_else(|| {
            CniError::invalid_config(format!(
                "network \"{}\": CHECK needs prevResult (the result of the ADD)",
                cfg.name
            ))
        })?;
        let drift = |what: String| {
            CniError::new(
                codes::DRIFT,
                format!("network \"{}\", container {container_id}: {what}", cfg.name),
            )
        };
        let pod_ns = open_pod_netns(env)?;
        let mut pod = Netlink::in_netns(&pod_ns).map_err(|e| kernel("pod netns", e))?;
        let link = pod
            .link_by_name(ifname)
            .map_err(|e| kernel("pod netns", e))?
            .ok_or_else(|| {
                drift(format!(
                    "interface {ifname} is missing from {}",
                    pod_ns.path().display()
                ))
            })?;
        if !link.up {
            return Err(drift(format!("interface {ifname} is down")));
        }
        let pod_idx = prev
            .interfaces
            .iter()
            .position(|i| i.name == ifname && i.sandbox.is_some());
        let ours: Vec<IpNet> = prev
            .ips
            .iter()
            .filter(|ip| ip.interface.is_none() || ip.interface == pod_idx)
            .map(|ip| ip.address)
            .collect();
        let have: Vec<IpNet> = pod
            .addresses(Some(link.index))
            .map_err(|e| kernel("pod addresses", e))?
            .into_iter()
            .map(|a| a.net)
            .collect();
        for a in &ours {
            if !have.contains(a) {
                return Err(drift(format!(
                    "address {a} is missing from {ifname} (it has {})",
                    join(&have)
                )));
            }
        }
        for v6 in [false, true] {
            if !ours.iter().any(|a| a.addr().is_ipv6() == v6) {
                continue;
            }
            // Underlay pods have a default route only when the pool names a gateway.
            if cfg.mode == Mode::Underlay
                && !prev
                    .ips
                    .iter()
                    .any(|ip| ip.gateway.is_some_and(|g| g.is_ipv6() == v6))
            {
                continue;
            }
            let routes = pod.routes(v6).map_err(|e| kernel("pod routes", e))?;
            if !routes
                .iter()
                .any(|r| r.dst.prefix_len() == 0 && r.oif == Some(link.index))
            {
                return Err(drift(format!(
                    "the IPv{} default route via {ifname} is missing",
                    if v6 { 6 } else { 4 }
                )));
            }
        }
        if let Some(u) = underlay::macvlan(&cfg) {
            underlay::check_macvlan(&cfg, u, &link, &ours, &drift)?;
        }
        let mut node = Netlink::new().map_err(|e| kernel("node netlink", e))?;
        let host_name = names::host_veth(&cfg.name, container_id, ifname);
        let host = match underlay::macvlan(&cfg) {
            Some(_) => None,
            None => Some(
                node.link_by_name(&host_name)
                    .map_err(|e| kernel("node links", e))?
                    .ok_or_else(|| drift(format!("host veth {host_name} is missing")))?,
            ),
        };
        match (cfg.mode, host) {
            (_, None) => {}
            (Mode::Bridge | Mode::Underlay, Some(host)) => {
                let br = node
                    .link_by_name(&cfg.bridge)
                    .map_err(|e| kernel("node links", e))?;
                match br {
                    Some(br) if host.master == Some(br.index) => {}
                    Some(_) => {
                        return Err(drift(format!(
                            "host veth {host_name} is not in bridge {}",
                            cfg.bridge
                        )));
                    }
                    None => return Err(drift(format!("bridge {} is missing", cfg.bridge))),
                }
            }
            (Mode::Routed, Some(host)) => {
                // ADD attached the program wherever this kernel takes it (see attach::fast_path).
                if crate::attach::fast_path(&mut node, &cfg)?.is_some() {
                    let progs = node
                        .ingress_programs(host.index)
                        .map_err(|e| kernel("node tc filters", e))?;
                    if !progs
                        .iter()
                        .any(|p| p.as_str() == weft_dataplane::bpf::FastPath::FROM_POD)
                    {
                        return Err(drift(format!(
                            "fastPath: the fast path program is missing from {host_name}'s ingress (it has {})",
                            if progs.is_empty() {
                                "none".to_string()
                            } else {
                                progs.join(", ")
                            }
                        )));
                    }
                }
                if cfg.big_tcp {
                    for (end, l) in [(host_name.as_str(), &host), (ifname, &link)] {
                        let want = crate::config::BIG_TCP_SIZE;
                        if l.gso_ipv4_max_size < want {
                            return Err(drift(format!(
                                "bigTcp: {end} has IPv4 GSO max size {}, not {want}",
                                l.gso_ipv4_max_size
                            )));
                        }
                    }
                }
                for a in &ours {
                    let routes = node
                        .routes(a.addr().is_ipv6())
                        .map_err(|e| kernel("node routes", e))?;
                    if !routes
                        .iter()
                        .any(|r| r.dst == IpNet::from(a.addr()) && r.oif == Some(host.index))
                    {
                        return Err(drift(format!(
                            "host route {} dev {host_name} is missing",
                            a.addr()
                        )));
                    }
                }
            }
        }
        if let IpamSource::Weft(ipam_cfg) = &cfg.ipam {
            let store = open_store(ipam_cfg)?;
            let alloc = Ipam::new(&*store)
                .get(&cfg.name, container_id, ifname)
                .map_err(ipam_error)?;
            let alloc = alloc.ok_or_else(|| {
                drift(format!(
                    "no allocation is recorded for {container_id}:{ifname}"
                ))
            })?;
            for a in &ours {
                if !alloc.addresses.iter().any(|x| x.addr() == a.addr()) {
                    return Err(drift(format!(
                        "address {a} is not the one recorded ({})",
                        join(&alloc.addresses)
                    )));
                }
            }
            if cfg.masquerade {
                let have = firewall::masqueraded()?;
                for p in &ipam_cfg.spec.pools {
                    if !have.contains(&p.subnet.trunc()) {
                        return Err(drift(format!(
                            "subnet {} is not masqueraded in table inet weft",
                            p.subnet
                        )));
                    }
                }
            }
        }
        Ok(())
    }

    fn status(&self, conf: &NetConf) -> Result<(), CniError> {
        let cfg = WeftConfig::parse(conf)?;
        let IpamSource::Weft(ipam_cfg) = &cfg.ipam else {
            return Ok(());
        };
        ipam_plugin::status_of(ipam_cfg)?;
        if cfg.mode == Mode::Routed {
            agent_ready(ipam_cfg)?;
        }
        Ok(())
    }

    fn gc(&self, env: &CniEnv, conf: &NetConf) -> Result<(), CniError> {
        let cfg = WeftConfig::parse(conf)?;
        let valid = conf.valid_attachments()?;
        let keep: BTreeSet<String> = valid
            .iter()
            .map(|v| names::host_veth(&cfg.name, &v.container_id, &v.ifname))
            .collect();
        let prefix = format!("w{}", names::network_tag(&cfg.name));
        let alias_prefix = format!("weft:{}:", cfg.name);
        let mut node = Netlink::new().map_err(|e| kernel("node netlink", e))?;
        let mut errors = Vec::new();
        // Only veths, filtered by the kernel (`links_of_kind` checks the kind again).
        let stale: Vec<u32> = node
            .links_of_kind("veth")
            .map_err(|e| kernel("node links", e))?
            .into_iter()
            .filter(|l| l.name.len() == 15 && l.name.starts_with(&prefix))
            .filter(|l| {
                l.alias
                    .as_deref()
                    .is_none_or(|a| a.starts_with(&alias_prefix))
            })
            .filter(|l| !keep.contains(&l.name))
            .map(|l| l.index)
            .collect();
        for idx in stale {
            if let Err(e) = node.delete_link(idx)
                && !e.is_not_found()
            {
                errors.push(format!("veth index {idx}: {e}"));
            }
        }
        match &cfg.ipam {
            IpamSource::Weft(ipam_cfg) => {
                let _node = node_lock(ipam_cfg)?;
                let store = open_store(ipam_cfg)?;
                let pairs: Vec<(String, String)> = valid
                    .iter()
                    .map(|v| (v.container_id.clone(), v.ifname.clone()))
                    .collect();
                if let Err(e) = Ipam::new(&*store).gc(&cfg.name, &ipam_cfg.node, &pairs) {
                    errors.push(e.to_string());
                }
                if let Some(u) = underlay::macvlan(&cfg) {
                    let pools: Vec<IpNet> = ipam_cfg.spec.pools.iter().map(|p| p.subnet).collect();
                    match Ipam::new(&*store).allocations(&cfg.name) {
                        Ok(all) => {
                            let keep = all
                                .iter()
                                .filter(|a| a.node == ipam_cfg.node)
                                .flat_map(|a| a.addresses.iter().map(|n| n.addr()))
                                .collect();
                            if let Err(e) = underlay::gc_shim_routes(u, &pools, &keep) {
                                errors.push(e.to_string());
                            }
                        }
                        Err(e) => errors.push(e.to_string()),
                    }
                }
            }
            IpamSource::Delegate(kind) => {
                if let Err(e) =
                    delegate::exec(kind, Command::Gc, env, conf.raw.to_string().as_bytes())
                {
                    errors.push(e.to_string());
                }
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(CniError::io(format!(
                "GC of network \"{}\": {}",
                cfg.name,
                errors.join("; ")
            )))
        }
    }
}

/// Routed pods reach other nodes only through weftd: when the store holds node records (the
/// cluster runs agents), this node's own record must be among them.
fn agent_ready(ipam: &IpamConfig) -> Result<(), CniError> {
    let store = open_store(ipam).map_err(|e| CniError::not_available(e.msg))?;
    let nodes = store
        .list(&weft_ipam::nodes_prefix())
        .map_err(|e| CniError::not_available(format!("the store is not usable: {e}")))?;
    let mine = weft_ipam::node_key(&ipam.node);
    if nodes.is_empty() || nodes.iter().any(|kv| kv.key == mine) {
        return Ok(());
    }
    Err(CniError::not_available(format!(
        "weftd is not running on node {:?}: {} other node(s) are registered under {} but not this one; start weftd on this node (it routes this node's pods to the others)",
        ipam.node,
        nodes.len(),
        weft_ipam::nodes_prefix()
    )))
}

fn join<T: ToString>(items: &[T]) -> String {
    if items.is_empty() {
        return "none".into();
    }
    items
        .iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
