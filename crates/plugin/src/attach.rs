//! Wiring a pod: one veth pair, created with its pod end already inside the pod's namespace,
//! then the pod side (up, addresses, routes) in one pipelined netlink batch. Bridge mode puts
//! the host end in the node bridge; routed mode gives it a link-local gateway and a host route
//! per pod address.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use weft_cni::CniError;
use weft_cni::result::{Interface, IpConfig, Route as ResultRoute};
use weft_dataplane::bpf::Vtep;
use weft_dataplane::netlink::vxlan::vtep_mac;
use weft_dataplane::{Netlink, Netns, Route, VethSpec, sysctl};

use crate::config::{Mode, WeftConfig};
use crate::names;

/// The pod's gateways in routed mode, answered by the host-side veth.
pub const ROUTED_GW4: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
pub const ROUTED_GW6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);

pub fn kernel(what: &str, e: weft_dataplane::Error) -> CniError {
    CniError::io(format!("{what}: {e}"))
}

/// One address for the pod, with the gateway its default route goes through.
#[derive(Debug, Clone)]
pub struct PodAddress {
    pub address: IpNet,
    pub gateway: Option<IpAddr>,
}

pub struct Attachment<'a> {
    pub cfg: &'a WeftConfig,
    pub container_id: &'a str,
    pub ifname: &'a str,
    pub pod_ns: &'a Netns,
    pub addresses: &'a [PodAddress],
    pub mac: Option<[u8; 6]>,
}

impl Attachment<'_> {
    /// The runtime's `mac`, else derived from the pod's IPv4 address (see [`names::pod_mac`]).
    pub fn pod_mac(&self) -> [u8; 6] {
        let v4 = self
            .addresses
            .iter()
            .map(|p| p.address.addr())
            .find(IpAddr::is_ipv4);
        self.mac
            .unwrap_or_else(|| names::pod_mac(v4, &self.cfg.name, self.container_id, self.ifname))
    }
}

pub struct Attached {
    pub interfaces: Vec<Interface>,
    pub ips: Vec<IpConfig>,
    pub routes: Vec<ResultRoute>,
}

fn default_dst(a: &IpAddr) -> IpNet {
    if a.is_ipv4() {
        IpNet::V4(Default::default())
    } else {
        IpNet::V6(Default::default())
    }
}

pub fn enable_forwarding(v6: bool) -> Result<(), CniError> {
    sysctl::set("net/ipv4/ip_forward", "1")
        .map_err(|e| kernel("cannot enable IPv4 forwarding", e))?;
    if v6 {
        sysctl::set("net/ipv6/conf/all/forwarding", "1")
            .map_err(|e| kernel("cannot enable IPv6 forwarding", e))?;
    }
    Ok(())
}

/// `bigTcp` refused before any change where pod traffic may take a tunnel: a VXLAN device
/// cannot carry a GSO packet over 64 KiB, so the stack would segment each one in software
/// (measured on weftd's VXLAN path: 11 Gbit/s down to under 1).
pub fn big_tcp_preflight(cfg: &WeftConfig, node: &mut Netlink) -> Result<(), CniError> {
    if !cfg.big_tcp {
        return Ok(());
    }
    let vxlan = node
        .links_of_kind("vxlan")
        .map_err(|e| kernel("node VXLAN links", e))?;
    if let Some(vx) = vxlan.first() {
        return Err(CniError::invalid_config(format!(
            "network \"{}\": bigTcp true, but this node has VXLAN device {}: packets over 64 KiB cannot be encapsulated and would be cut up in software; use bigTcp only on nodes whose pods are routed without a tunnel (weftd --mode host-gw), or remove the key",
            cfg.name, vx.name
        )));
    }
    Ok(())
}

/// `fastPath`: the BPF fast path's `from_pod` for the host end's ingress, loaded before anything
/// is made (a refusal changes nothing). With weftd's `to_pods` on the node's uplink and the
/// pod's /32 and /128 in the pod table, TCP and UDP between pods of the network skip the nodes'
/// IP stacks, except packets of connections the node's conntrack tracks (Service or hostPort
/// NAT). None when the network has it off, and, unless the config asked for it by name, when
/// this kernel refuses the program (no BTF or conntrack kfuncs): the pod is then routed by the
/// kernel alone. See docs/datapath.md.
pub fn fast_path(
    node: &mut Netlink,
    cfg: &WeftConfig,
) -> Result<Option<weft_dataplane::bpf::Program>, CniError> {
    if cfg.fast_path.is_empty() {
        return Ok(None);
    }
    let vtep = weft_vtep(node)?;
    match weft_dataplane::bpf::FastPath::from_pod(
        &cfg.fast_path,
        weft_dataplane::bpf::POD_TABLE,
        vtep.as_ref(),
    ) {
        Ok(prog) => Ok(Some(prog)),
        Err(_) if !cfg.fast_path_required => Ok(None),
        Err(e) => Err(CniError::io(format!(
            "network \"{}\": fastPath: this kernel refused the fast path program ({e}); it needs Linux 6.x with BTF and conntrack, or set \"fastPath\": false",
            cfg.name
        ))),
    }
}

/// weftd's VXLAN device on this node (the one whose MAC is the VTEP MAC of its local address),
/// for `from_pod` to encapsulate by itself; None without one. (A pod whose MTU is above the
/// device's gets "fragmentation needed" from the node for what does not fit: `from_pod`
/// leaves such packets to the stack.) One filtered dump: only the node's VXLAN links.
fn weft_vtep(node: &mut Netlink) -> Result<Option<Vtep>, CniError> {
    let vxlan = node
        .links_of_kind("vxlan")
        .map_err(|e| kernel("node VXLAN links", e))?;
    Ok(vxlan.iter().find_map(|l| {
        let info = l.vxlan?;
        let local = info.local?;
        (l.mac == Some(vtep_mac(local))).then_some(Vtep {
            ifindex: l.index,
            local,
            vni: info.vni?,
            port: info.port?,
        })
    }))
}

/// Creates everything; on error the caller removes the host veth (which removes the pod end).
pub fn attach(
    node: &mut Netlink,
    pod: &mut Netlink,
    a: &Attachment<'_>,
) -> Result<Attached, CniError> {
    let cfg = a.cfg;
    let host_name = names::host_veth(&cfg.name, a.container_id, a.ifname);
    let pod_mac = a.pod_mac();
    let has_v6 = a.addresses.iter().any(|p| p.address.addr().is_ipv6());

    let bridge = match cfg.mode {
        Mode::Bridge => {
            let (br, _created) = node
                .ensure_bridge(&cfg.bridge, Some(cfg.mtu))
                .map_err(|e| kernel(&format!("bridge {}", cfg.bridge), e))?;
            let mut b = node.batch();
            if !br.up {
                b.set_up(br.index);
            }
            for p in a.addresses {
                if let Some(gw) = p.gateway {
                    let net = IpNet::new(gw, p.address.prefix_len())
                        .map_err(|e| CniError::invalid_config(e.to_string()))?;
                    b.add_address(br.index, net, true);
                }
            }
            b.commit()
                .map_err(|e| kernel(&format!("gateway addresses on bridge {}", cfg.bridge), e))?;
            Some(br)
        }
        Mode::Routed => {
            enable_forwarding(has_v6)?;
            None
        }
        // Bridge attach: the bridge exists and holds the uplink (checked before allocation);
        // the gateway is the segment's router, not the bridge.
        Mode::Underlay => Some(
            node.link_by_name(&cfg.bridge)
                .map_err(|e| kernel(&format!("bridge {}", cfg.bridge), e))?
                .ok_or_else(|| CniError::io(format!("bridge {} disappeared during ADD (removed by something else?); recreate it with the uplink in it, then retry", cfg.bridge)))?,
        ),
    };

    // Only routed mode has pools in `cfg.fast_path` (WeftConfig::parse).
    let from_pod = fast_path(node, cfg)?;

    let spec = VethSpec {
        host_name: &host_name,
        peer_name: a.ifname,
        peer_ns: a.pod_ns,
        mtu: Some(cfg.mtu),
        master: bridge.as_ref().map(|b| b.index),
        host_mac: None,
        peer_mac: Some(pod_mac),
        gso_max_size: cfg.big_tcp.then_some(crate::config::BIG_TCP_SIZE),
    };
    let create_err = |e| {
        kernel(
            &format!("cannot create veth {host_name} for {}", a.ifname),
            e,
        )
    };
    let host = match node.create_veth(&spec) {
        Ok(link) => link,
        Err(e) if e.is_exists() => {
            // The caller gets here only for a new allocation, so a host veth of this name was
            // left by a killed ADD of this same attachment: remove it and try again. If there
            // was none, the pod already has an interface named `ifname`.
            let stale = node
                .delete_link_by_name(&host_name)
                .map_err(|e| kernel(&format!("cannot remove stale veth {host_name}"), e))?;
            if !stale {
                return Err(crate::interface_exists(a.ifname));
            }
            match node.create_veth(&spec) {
                Ok(link) => link,
                Err(e) if e.is_exists() => return Err(crate::interface_exists(a.ifname)),
                Err(e) => return Err(create_err(e)),
            }
        }
        Err(e) => return Err(create_err(e)),
    };

    let mut hb = node.batch();
    hb.set_alias(
        host.index,
        &names::host_alias(&cfg.name, a.container_id, a.ifname),
    );
    if cfg.mode == Mode::Routed {
        for p in a.addresses {
            match p.address.addr() {
                IpAddr::V4(_) => {
                    hb.add_address(host.index, IpNet::from(IpAddr::from(ROUTED_GW4)), true)
                }
                IpAddr::V6(_) => hb.add_address(
                    host.index,
                    IpNet::V6(ipnet::Ipv6Net::new_assert(ROUTED_GW6, 64)),
                    true,
                ),
            };
            let mut r = Route::new(IpNet::from(p.address.addr()));
            r.oif = Some(host.index);
            r.scope_link = true;
            hb.add_route(&r);
            if from_pod.is_some() {
                r.table = weft_dataplane::bpf::POD_TABLE;
                hb.add_route(&r);
            }
        }
    }
    hb.commit()
        .map_err(|e| kernel(&format!("host side of {host_name}"), e))?;
    if let Some(prog) = &from_pod {
        node.attach_ingress(host.index, prog)
            .map_err(|e| kernel(&format!("fast path on {host_name}"), e))?;
    }
    if cfg.hairpin && cfg.mode == Mode::Bridge {
        node.set_hairpin(host.index, true)
            .map_err(|e| kernel(&format!("hairpin on {host_name}"), e))?;
    }

    // The echoed host end names its peer's ifindex: no lookup inside the pod.
    let pod_index = match host.peer_index {
        Some(i) => i,
        None => {
            pod.link_by_name(a.ifname)
                .map_err(|e| kernel(&format!("{} in the pod", a.ifname), e))?
                .ok_or_else(|| {
                    CniError::io(format!(
                        "{} did not appear in the pod's namespace (moved or deleted by something else during ADD?); retry the ADD",
                        a.ifname
                    ))
                })?
                .index
        }
    };
    let mut pb = pod.batch();
    pb.set_up(pod_index);
    let mut routes = Vec::new();
    let mut ips = Vec::new();
    let result_if = if bridge.is_some() { 2 } else { 1 };
    for p in a.addresses {
        let (addr, gw) = match cfg.mode {
            Mode::Bridge | Mode::Underlay => (p.address, p.gateway),
            Mode::Routed => {
                let host_net = IpNet::from(p.address.addr());
                let gw: IpAddr = if p.address.addr().is_ipv4() {
                    ROUTED_GW4.into()
                } else {
                    ROUTED_GW6.into()
                };
                if gw.is_ipv4() {
                    let mut link_route = Route::new(IpNet::from(gw));
                    link_route.oif = Some(pod_index);
                    link_route.scope_link = true;
                    pb.add_route(&link_route);
                }
                (host_net, Some(gw))
            }
        };
        pb.add_address(pod_index, addr, true);
        if let Some(gw) = gw {
            let mut r = Route::new(default_dst(&gw));
            r.gateway = Some(gw);
            r.oif = Some(pod_index);
            pb.add_route(&r);
            routes.push(ResultRoute::new(default_dst(&gw), Some(gw)));
        }
        ips.push(IpConfig {
            address: addr,
            gateway: gw,
            interface: Some(result_if),
        });
    }
    pb.commit().map_err(|e| {
        kernel(
            &format!("pod side of {} in {}", a.ifname, a.pod_ns.path().display()),
            e,
        )
    })?;

    let mut interfaces = Vec::new();
    if let Some(br) = &bridge {
        interfaces.push(Interface {
            name: br.name.clone(),
            mac: br.mac.map(|m| names::mac_string(&m)).unwrap_or_default(),
            ..Default::default()
        });
    }
    interfaces.push(Interface {
        name: host_name,
        mac: host.mac.map(|m| names::mac_string(&m)).unwrap_or_default(),
        ..Default::default()
    });
    interfaces.push(Interface {
        name: a.ifname.to_string(),
        mac: names::mac_string(&pod_mac),
        sandbox: Some(a.pod_ns.path().display().to_string()),
        ..Default::default()
    });
    Ok(Attached {
        interfaces,
        ips,
        routes,
    })
}
