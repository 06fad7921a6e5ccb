//! Underlay mode: pods get addresses of the physical subnet.
//!
//! - `macvlan` attach: a macvlan (mode bridge) child of the uplink, created directly inside the
//!   pod's namespace, named CNI_IFNAME, with the alias `weft:<net>:<container>:<ifname>`. A
//!   node cannot reach its own macvlan children through the uplink, so (unless `shim` is false)
//!   the node gets one macvlan child of the uplink of its own, the shim (`wsh<hash of the
//!   uplink>`, up, no address, alias `weft:shim:<uplink>`), and a /32 (/128) route per pod
//!   through it; the kernel picks the node's uplink address as the source.
//! - `bridge` attach: a veth into the bridge that already holds the uplink (named and aliased
//!   as in bridge mode; see [`crate::attach`]). The node reaches the pod through the bridge's
//!   own address.
//!
//! The pod's default route goes via the pool's gateway when the pool has one (the physical
//! router); nothing is routed between nodes (the address is on the segment).
use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use serde_json::Value;
use weft_cni::result::{Interface, IpConfig, Route as ResultRoute};
use weft_cni::{CniEnv, CniError};
use weft_dataplane::{Link, Netlink, Netns, Route};

use crate::attach::{Attached, Attachment, kernel};
use crate::config::{Mode, check_keys, get_bool, get_str, invalid};
use crate::names;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attach {
    Macvlan,
    Bridge,
}

/// The `underlay` object of the network configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnderlayConfig {
    pub attach: Attach,
    /// The node's interface on the physical segment.
    pub uplink: String,
    /// Bridge attach: the bridge holding the uplink.
    pub bridge: Option<String>,
    /// Macvlan attach: route the node's traffic to its own pods through a host-side shim.
    pub shim: bool,
}

fn valid_ifname(s: &str) -> bool {
    !s.is_empty() && s.len() <= 15 && !s.contains(['/', ':', ' ']) && s != "." && s != ".."
}

/// Reads `underlay`: required in underlay mode, refused in the others.
pub fn parse(net: &str, mode: Mode, v: Option<&Value>) -> Result<Option<UnderlayConfig>, CniError> {
    let v = v.filter(|v| !v.is_null());
    if mode != Mode::Underlay {
        return match v {
            Some(v) => Err(invalid(
                net,
                "underlay",
                v,
                "is only for \"mode\": \"underlay\"; remove it or set the mode",
            )),
            None => Ok(None),
        };
    }
    let example = "must be an object like {\"attach\": \"macvlan\", \"uplink\": \"eth0\"}";
    let Some(v) = v else {
        return Err(invalid(net, "underlay", &Value::Null, example));
    };
    let obj = v
        .as_object()
        .ok_or_else(|| invalid(net, "underlay", v, example))?;
    check_keys(
        net,
        obj,
        "underlay.",
        &[&["attach", "uplink", "bridge", "shim"]],
    )?;
    let attach = match get_str(net, obj, "attach", "underlay.")? {
        None | Some("macvlan") => Attach::Macvlan,
        Some("bridge") => Attach::Bridge,
        Some(other) => {
            return Err(invalid(
                net,
                "underlay.attach",
                &Value::from(other),
                "is not an attachment: use \"macvlan\" or \"bridge\"",
            ));
        }
    };
    let name_field = |key: &str| -> Result<Option<String>, CniError> {
        match get_str(net, obj, key, "underlay.")? {
            None => Ok(None),
            Some(s) if valid_ifname(s) => Ok(Some(s.to_string())),
            Some(s) => Err(invalid(
                net,
                &format!("underlay.{key}"),
                &Value::from(s),
                "is not a valid interface name: use 1 to 15 characters without '/', ':' or spaces",
            )),
        }
    };
    let uplink = name_field("uplink")?.ok_or_else(|| {
        invalid(
            net,
            "underlay.uplink",
            &Value::Null,
            "is required: name the node's interface on the physical segment, like \"eth0\"",
        )
    })?;
    let bridge = name_field("bridge")?;
    match (attach, &bridge) {
        (Attach::Bridge, None) => {
            return Err(invalid(
                net,
                "underlay.bridge",
                &Value::Null,
                "is required with \"attach\": \"bridge\": name the bridge that holds the uplink",
            ));
        }
        (Attach::Macvlan, Some(b)) => {
            return Err(invalid(
                net,
                "underlay.bridge",
                &Value::from(b.as_str()),
                "is only for \"attach\": \"bridge\"; remove it or change underlay.attach",
            ));
        }
        _ => {}
    }
    let shim = match obj.get("shim") {
        None | Some(Value::Null) => true,
        Some(_) => get_bool(net, obj, "shim", "underlay.")?,
    };
    Ok(Some(UnderlayConfig {
        attach,
        uplink,
        bridge,
        shim,
    }))
}

/// The macvlan attach's configuration, if that is what `cfg` is.
pub fn macvlan(cfg: &crate::config::WeftConfig) -> Option<&UnderlayConfig> {
    cfg.underlay
        .as_ref()
        .filter(|u| u.attach == Attach::Macvlan)
}

/// The node's shim for `uplink`: `wsh` + 8 hex digits.
pub fn shim_name(uplink: &str) -> String {
    format!(
        "wsh{}{}",
        names::network_tag(uplink),
        names::network_tag(&format!("shim:{uplink}"))
    )
}

fn shim_alias(uplink: &str) -> String {
    format!("weft:shim:{uplink}")
}

fn bad_uplink(net: &str, u: &UnderlayConfig, why: &str) -> CniError {
    invalid(net, "underlay.uplink", &Value::from(u.uplink.as_str()), why)
}

/// Checks the node side before anything is allocated or made: the uplink exists; with bridge
/// attach, the bridge exists and holds it. Returns the uplink.
pub fn preflight(net: &str, u: &UnderlayConfig) -> Result<Link, CniError> {
    let mut node = Netlink::new().map_err(|e| kernel("node netlink", e))?;
    let uplink = node
        .link_by_name(&u.uplink)
        .map_err(|e| kernel("node links", e))?
        .ok_or_else(|| {
            bad_uplink(
                net,
                u,
                "is not an interface of this node: name the interface on the physical segment",
            )
        })?;
    match u.attach {
        Attach::Macvlan => {
            if uplink.master.is_some() {
                return Err(bad_uplink(
                    net,
                    u,
                    "is a bridge port, so it cannot carry macvlan children: use \"attach\": \"bridge\" with that bridge",
                ));
            }
        }
        Attach::Bridge => {
            let name = u.bridge.as_deref().unwrap_or_default();
            let bad_bridge = |why: &str| invalid(net, "underlay.bridge", &Value::from(name), why);
            let br = node
                .link_by_name(name)
                .map_err(|e| kernel("node links", e))?
                .ok_or_else(|| {
                    bad_bridge("is not an interface of this node: create the bridge and put the uplink in it")
                })?;
            if br.kind.as_deref() != Some("bridge") {
                return Err(bad_bridge("is not a bridge"));
            }
            if uplink.master != Some(br.index) {
                return Err(bad_bridge(&format!(
                    "does not hold the uplink {:?}: enslave it (ip link set {} master {name}) or name the bridge that does",
                    u.uplink, u.uplink
                )));
            }
        }
    }
    Ok(uplink)
}

/// The node's shim for the uplink: found, or made (once per uplink) and set up.
fn ensure_shim(node: &mut Netlink, uplink: &Link) -> Result<Link, CniError> {
    let name = shim_name(&uplink.name);
    let what = format!("shim {name} on {}", uplink.name);
    let found = node.link_by_name(&name).map_err(|e| kernel(&what, e))?;
    let shim = match found {
        Some(l) => l,
        None => {
            match node.create_macvlan(&name, uplink.index, None, None, None) {
                Ok(()) => {}
                Err(e) if e.is_exists() => {}
                Err(e) => return Err(kernel(&format!("cannot create {what}"), e)),
            }
            let l = node
                .link_by_name(&name)
                .map_err(|e| kernel(&what, e))?
                .ok_or_else(|| {
                    CniError::io(format!(
                        "{what}: created, then gone (deleted by something else?); retry the ADD"
                    ))
                })?;
            node.set_alias(l.index, &shim_alias(&uplink.name))
                .map_err(|e| kernel(&what, e))?;
            l
        }
    };
    if shim.kind.as_deref() != Some("macvlan") || shim.peer_index != Some(uplink.index) {
        return Err(CniError::io(format!(
            "{what}: a link of that name exists but is not a macvlan child of {}; remove it",
            uplink.name
        )));
    }
    if !shim.up {
        node.set_up(shim.index).map_err(|e| kernel(&what, e))?;
    }
    Ok(shim)
}

fn host_route(addr: IpAddr, shim: u32) -> Route {
    let mut r = Route::new(IpNet::from(addr));
    r.oif = Some(shim);
    r.scope_link = true;
    r
}

fn default_dst(a: &IpAddr) -> IpNet {
    if a.is_ipv4() {
        IpNet::V4(Default::default())
    } else {
        IpNet::V6(Default::default())
    }
}

/// How long a macvlan's "up" waits for a namesake of a deleted pod to go (see [`set_up_macvlan`]).
const MAC_IN_USE_WAIT: Duration = Duration::from_secs(2);

/// Sets the pod's macvlan up. The kernel refuses (EADDRINUSE) while another macvlan on the same
/// uplink has the same MAC, and a pod's MAC follows its address: when a pod is recreated with its
/// address (a fixed IP, or a reuse after the cooldown) right after its old network namespace was
/// deleted, the old macvlan lingers until the kernel's asynchronous namespace cleanup has run
/// (milliseconds, longer under load). So EADDRINUSE is retried for up to [`MAC_IN_USE_WAIT`];
/// a MAC held by a live interface still fails, naming the error.
fn set_up_macvlan(pod: &mut Netlink, index: u32) -> Result<(), weft_dataplane::Error> {
    let start = Instant::now();
    loop {
        match pod.set_up(index) {
            Err(e) if e.errno() == Some(libc::EADDRINUSE) && start.elapsed() < MAC_IN_USE_WAIT => {
                std::thread::sleep(Duration::from_millis(10));
            }
            r => return r,
        }
    }
}

/// Macvlan attach. On error, removes what it made (the pod's macvlan, the shim routes).
pub fn attach_macvlan(
    node: &mut Netlink,
    pod: &mut Netlink,
    a: &Attachment<'_>,
    u: &UnderlayConfig,
) -> Result<Attached, CniError> {
    let cfg = a.cfg;
    let uplink = preflight(&cfg.name, u)?;
    let pod_mac = a.pod_mac();
    let mtu = cfg.mtu.min(uplink.mtu);
    match node.create_macvlan(
        a.ifname,
        uplink.index,
        Some(a.pod_ns),
        Some(pod_mac),
        Some(mtu),
    ) {
        Ok(()) => {}
        Err(e) if e.is_exists() => return Err(crate::interface_exists(a.ifname)),
        Err(e) => {
            return Err(kernel(
                &format!("cannot create macvlan {} on {}", a.ifname, u.uplink),
                e,
            ));
        }
    }
    let mut shim_routes: Vec<Route> = Vec::new();
    let wired = (|| {
        let link = pod
            .link_by_name(a.ifname)
            .map_err(|e| kernel(&format!("{} in the pod", a.ifname), e))?
            .ok_or_else(|| {
                CniError::io(format!(
                    "{} did not appear in the pod's namespace (moved or deleted by something else during ADD?); retry the ADD",
                    a.ifname
                ))
            })?;
        set_up_macvlan(pod, link.index).map_err(|e| {
            kernel(
                &format!("set {} up in {}", a.ifname, a.pod_ns.path().display()),
                e,
            )
        })?;
        let mut pb = pod.batch();
        pb.set_alias(
            link.index,
            &names::host_alias(&cfg.name, a.container_id, a.ifname),
        );
        let mut routes = Vec::new();
        let mut ips = Vec::new();
        for p in a.addresses {
            pb.add_address(link.index, p.address, true);
            if let Some(gw) = p.gateway {
                let mut r = Route::new(default_dst(&gw));
                r.gateway = Some(gw);
                r.oif = Some(link.index);
                pb.add_route(&r);
                routes.push(ResultRoute::new(default_dst(&gw), Some(gw)));
            }
            ips.push(IpConfig {
                address: p.address,
                gateway: p.gateway,
                interface: Some(0),
            });
        }
        pb.commit().map_err(|e| {
            kernel(
                &format!("pod side of {} in {}", a.ifname, a.pod_ns.path().display()),
                e,
            )
        })?;
        if u.shim {
            let shim = ensure_shim(node, &uplink)?;
            let mut hb = node.batch();
            for p in a.addresses {
                let r = host_route(p.address.addr(), shim.index);
                hb.add_route(&r);
                shim_routes.push(r);
            }
            hb.commit()
                .map_err(|e| kernel(&format!("shim routes via {}", shim.name), e))?;
        }
        Ok(Attached {
            interfaces: vec![Interface {
                name: a.ifname.to_string(),
                mac: names::mac_string(&pod_mac),
                sandbox: Some(a.pod_ns.path().display().to_string()),
                ..Default::default()
            }],
            ips,
            routes,
        })
    })();
    if wired.is_err() {
        let _ = pod.delete_link_by_name(a.ifname);
        for r in &shim_routes {
            let _ = node.delete_route(r);
        }
    }
    wired
}

/// Deletes the shim routes to `addrs` that exist (one batch; none when there are none).
fn delete_shim_routes(
    node: &mut Netlink,
    u: &UnderlayConfig,
    keep: impl Fn(&IpNet) -> bool,
) -> Result<(), CniError> {
    let name = shim_name(&u.uplink);
    let Some(shim) = node
        .link_by_name(&name)
        .map_err(|e| kernel("node links", e))?
    else {
        return Ok(());
    };
    let mut gone = Vec::new();
    for v6 in [false, true] {
        for r in node.routes(v6).map_err(|e| kernel("node routes", e))? {
            let host = r.dst.prefix_len() == r.dst.max_prefix_len();
            if host && r.oif == Some(shim.index) && r.gateway.is_none() && !keep(&r.dst) {
                gone.push(r);
            }
        }
    }
    if gone.is_empty() {
        return Ok(());
    }
    let mut b = node.batch();
    for r in &gone {
        b.delete_route(r);
    }
    b.commit().map_err(|e| {
        CniError::try_again(format!("cannot delete shim routes via {name}: {e}; retry"))
    })
}

/// Macvlan DEL: the pod's macvlan (entering the pod if its namespace still exists; if not, the
/// macvlan went with it) and the shim routes to `known` and to the macvlan's addresses.
pub fn detach_macvlan(
    env: &CniEnv,
    cfg: &crate::config::WeftConfig,
    u: &UnderlayConfig,
    container_id: &str,
    ifname: &str,
    known: Vec<IpAddr>,
) -> Result<(), CniError> {
    let mut addrs: BTreeSet<IpAddr> = known.into_iter().collect();
    if let Some(path) = env.netns.as_deref()
        && let Ok(ns) = Netns::open(path)
    {
        let mut pod = Netlink::in_netns(&ns).map_err(|e| kernel("pod netns", e))?;
        let alias = names::host_alias(&cfg.name, container_id, ifname);
        if let Some(link) = pod
            .link_by_name(ifname)
            .map_err(|e| kernel("pod links", e))?
            .filter(|l| l.kind.as_deref() == Some("macvlan") && l.alias.as_deref() == Some(&alias))
        {
            if let Ok(have) = pod.addresses(Some(link.index)) {
                addrs.extend(have.iter().map(|a| a.net.addr()));
            }
            match pod.delete_link(link.index) {
                Ok(()) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => {
                    return Err(CniError::try_again(format!(
                        "cannot delete macvlan {ifname} in {}: {e}; retry DEL",
                        path.display()
                    )));
                }
            }
        }
    }
    if addrs.is_empty() {
        return Ok(());
    }
    let mut node = Netlink::new().map_err(|e| kernel("node netlink", e))?;
    delete_shim_routes(&mut node, u, |dst| !addrs.contains(&dst.addr()))
}

/// Macvlan CHECK, node side: the uplink and, with the shim, a route per pod address through it.
pub fn check_macvlan(
    cfg: &crate::config::WeftConfig,
    u: &UnderlayConfig,
    pod_link: &Link,
    ours: &[IpNet],
    drift: &dyn Fn(String) -> CniError,
) -> Result<(), CniError> {
    if pod_link.kind.as_deref() != Some("macvlan") {
        return Err(drift(format!(
            "interface {} is not a macvlan (it is {})",
            pod_link.name,
            pod_link
                .kind
                .as_deref()
                .unwrap_or("a device without a kind")
        )));
    }
    let mut node = Netlink::new().map_err(|e| kernel("node netlink", e))?;
    if node
        .link_by_name(&u.uplink)
        .map_err(|e| kernel("node links", e))?
        .is_none()
    {
        return Err(drift(format!("uplink {} is missing", u.uplink)));
    }
    if !u.shim {
        return Ok(());
    }
    let name = shim_name(&u.uplink);
    let shim = node
        .link_by_name(&name)
        .map_err(|e| kernel("node links", e))?
        .ok_or_else(|| drift(format!("shim {name} on {} is missing", u.uplink)))?;
    if !shim.up {
        return Err(drift(format!("shim {name} is down")));
    }
    for a in ours {
        let routes = node
            .routes(a.addr().is_ipv6())
            .map_err(|e| kernel("node routes", e))?;
        if !routes
            .iter()
            .any(|r| r.dst == IpNet::from(a.addr()) && r.oif == Some(shim.index))
        {
            return Err(drift(format!(
                "shim route {} dev {name} is missing (network \"{}\")",
                a.addr(),
                cfg.name
            )));
        }
    }
    Ok(())
}

/// Macvlan GC: shim routes into this network's pools whose address no attachment of this node
/// holds any more.
pub fn gc_shim_routes(
    u: &UnderlayConfig,
    pools: &[IpNet],
    keep: &BTreeSet<IpAddr>,
) -> Result<(), CniError> {
    let mut node = Netlink::new().map_err(|e| kernel("node netlink", e))?;
    delete_shim_routes(&mut node, u, |dst| {
        keep.contains(&dst.addr()) || !pools.iter().any(|p| p.contains(&dst.addr()))
    })
}
