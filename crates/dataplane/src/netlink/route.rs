//! Routes in the main (or any numbered) table.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_DUMP, NLM_F_REPLACE};
use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    route::{
        RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol,
        RouteScope, RouteType,
    },
};

use super::{Netlink, Request};
use crate::{Error, GONE, Result};

/// Protocol number (`rtm_protocol`) of every route Weft adds: 0x57, 'W'. Unassigned in
/// iproute2's rt_protos; lets the agent find and reconcile its own routes (`ip route show proto
/// 87`) without touching anyone else's.
pub const RTPROT_WEFT: u8 = 0x57;

const RT_TABLE_MAIN: u32 = 254;

/// A unicast route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Route {
    /// Destination; `0.0.0.0/0` or `::/0` for a default route.
    pub dst: IpNet,
    pub gateway: Option<IpAddr>,
    /// Outgoing link index.
    pub oif: Option<u32>,
    /// Scope link: the destination is directly reachable on `oif` (no gateway).
    pub scope_link: bool,
    /// Routing table; 254 is main.
    pub table: u32,
    /// Priority; the kernel uses 1024 for IPv6 routes added without one.
    pub metric: Option<u32>,
    /// RTNH_F_ONLINK: use the gateway even if no address on `oif` covers it.
    pub onlink: bool,
}

impl Route {
    /// A route in the main table with nothing but a destination; set the other fields as needed.
    pub fn new(dst: IpNet) -> Route {
        Route {
            dst,
            gateway: None,
            oif: None,
            scope_link: false,
            table: RT_TABLE_MAIN,
            metric: None,
            onlink: false,
        }
    }

    /// Describes the route like `ip route`, for error messages.
    pub fn describe(&self) -> String {
        let mut s = self.dst.to_string();
        if let Some(gw) = self.gateway {
            s.push_str(&format!(" via {gw}"));
        }
        if let Some(oif) = self.oif {
            s.push_str(&format!(" dev index {oif}"));
        }
        if self.scope_link {
            s.push_str(" scope link");
        }
        if self.onlink {
            s.push_str(" onlink");
        }
        if let Some(m) = self.metric {
            s.push_str(&format!(" metric {m}"));
        }
        if self.table != RT_TABLE_MAIN {
            s.push_str(&format!(" table {}", self.table));
        }
        s
    }
}

impl Netlink {
    /// Adds or replaces the route (NLM_F_CREATE | NLM_F_REPLACE, so repeating it is harmless),
    /// with protocol [`RTPROT_WEFT`].
    pub fn add_route(&mut self, r: &Route) -> Result<()> {
        self.request(add_route_request(r)?)?;
        Ok(())
    }

    /// Unicast routes of the main table, IPv4 or IPv6.
    pub fn routes(&mut self, v6: bool) -> Result<Vec<Route>> {
        self.main_routes(v6, None)
    }

    /// Unicast routes of the main table with protocol [`RTPROT_WEFT`] (`ip route show proto
    /// 87`), IPv4 or IPv6: the plugin's pod routes (no gateway) and the agent's routes to other
    /// nodes (always with a gateway).
    pub fn weft_routes(&mut self, v6: bool) -> Result<Vec<Route>> {
        self.main_routes(v6, Some(RTPROT_WEFT))
    }

    fn main_routes(&mut self, v6: bool, protocol: Option<u8>) -> Result<Vec<Route>> {
        let mut msg = RouteMessage::default();
        msg.header.address_family = if v6 {
            AddressFamily::Inet6
        } else {
            AddressFamily::Inet
        };
        // Strict checking makes the kernel dump only this table (and protocol); both are
        // checked again below all the same.
        msg.header.table = RouteHeader::RT_TABLE_MAIN;
        let mut op = format!("list ipv{} routes", if v6 { 6 } else { 4 });
        if let Some(p) = protocol {
            msg.header.protocol = RouteProtocol::Other(p);
            op.push_str(&format!(" of protocol {p}"));
        }
        let reply = self.request(Request::new(
            op.clone(),
            RouteNetlinkMessage::GetRoute(msg),
            NLM_F_DUMP,
        ))?;
        let mut out = Vec::new();
        for m in reply.msgs {
            if let RouteNetlinkMessage::NewRoute(m) = m
                && protocol.is_none_or(|p| m.header.protocol == RouteProtocol::Other(p))
                && let Some(r) = parse_route(&op, &m)?
                && r.table == RT_TABLE_MAIN
            {
                out.push(r);
            }
        }
        Ok(out)
    }

    /// Deletes the route matching `r`'s destination, table, metric, gateway and oif (any
    /// protocol, any scope). A missing route gives errno ESRCH (ENOENT for IPv6).
    pub fn delete_route(&mut self, r: &Route) -> Result<()> {
        self.request(delete_route_request(r)?)?;
        Ok(())
    }
}

fn route_message(r: &Route) -> Result<RouteMessage> {
    let family_v6 = matches!(r.dst, IpNet::V6(_));
    if let Some(gw) = r.gateway
        && gw.is_ipv6() != family_v6
    {
        return Err(Error::Invalid(format!(
            "route {}: gateway {gw} is not of the destination's address family",
            r.describe()
        )));
    }
    let mut msg = RouteMessage::default();
    let h = &mut msg.header;
    h.address_family = if family_v6 {
        AddressFamily::Inet6
    } else {
        AddressFamily::Inet
    };
    h.destination_prefix_length = r.dst.prefix_len();
    if let Ok(t) = u8::try_from(r.table) {
        h.table = t;
    } else {
        h.table = RouteHeader::RT_TABLE_UNSPEC;
    }
    if r.dst.prefix_len() > 0 {
        msg.attributes
            .push(RouteAttribute::Destination(RouteAddress::from(
                r.dst.network(),
            )));
    }
    if let Some(gw) = r.gateway {
        msg.attributes
            .push(RouteAttribute::Gateway(RouteAddress::from(gw)));
    }
    if let Some(oif) = r.oif {
        msg.attributes.push(RouteAttribute::Oif(oif));
    }
    if let Some(m) = r.metric {
        msg.attributes.push(RouteAttribute::Priority(m));
    }
    if r.table > 255 {
        msg.attributes.push(RouteAttribute::Table(r.table));
    }
    Ok(msg)
}

pub(crate) fn add_route_request(r: &Route) -> Result<Request> {
    let mut msg = route_message(r)?;
    msg.header.protocol = RouteProtocol::Other(RTPROT_WEFT);
    msg.header.kind = RouteType::Unicast;
    msg.header.scope = if r.scope_link {
        RouteScope::Link
    } else {
        RouteScope::Universe
    };
    if r.onlink {
        msg.header.flags = RouteFlags::Onlink;
    }
    Ok(Request::new(
        format!("add route {}", r.describe()),
        RouteNetlinkMessage::NewRoute(msg),
        NLM_F_CREATE | NLM_F_REPLACE,
    ))
}

/// As [`delete_route_request`], but a route already gone is success.
pub(crate) fn delete_route_if_present_request(r: &Route) -> Result<Request> {
    Ok(delete_route_request(r)?.tolerate(GONE))
}

pub(crate) fn delete_route_request(r: &Route) -> Result<Request> {
    let mut msg = route_message(r)?;
    // As `ip route del`: scope NOWHERE and protocol/type unspec match any route of that key.
    msg.header.scope = RouteScope::NoWhere;
    Ok(Request::new(
        format!("delete route {}", r.describe()),
        RouteNetlinkMessage::DelRoute(msg),
        0,
    ))
}

fn parse_route(op: &str, m: &RouteMessage) -> Result<Option<Route>> {
    let h = &m.header;
    if h.kind != RouteType::Unicast || h.flags.contains(RouteFlags::Cloned) {
        return Ok(None);
    }
    let unspecified = match h.address_family {
        AddressFamily::Inet => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        AddressFamily::Inet6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        _ => return Ok(None),
    };
    let mut dst = unspecified;
    let mut route = Route::new(IpNet::from(unspecified));
    route.table = u32::from(h.table);
    route.scope_link = h.scope == RouteScope::Link;
    route.onlink = h.flags.contains(RouteFlags::Onlink);
    for attr in &m.attributes {
        match attr {
            RouteAttribute::Destination(a) => {
                if let Some(ip) = route_ip(a) {
                    dst = ip;
                }
            }
            RouteAttribute::Gateway(a) => route.gateway = route_ip(a),
            RouteAttribute::Oif(i) => route.oif = Some(*i),
            RouteAttribute::Priority(p) => route.metric = Some(*p),
            RouteAttribute::Table(t) => route.table = *t,
            _ => {}
        }
    }
    route.dst = IpNet::new(dst, h.destination_prefix_length).map_err(|e| Error::Decode {
        op: op.to_string(),
        msg: format!("{dst}/{}: {e}", h.destination_prefix_length),
    })?;
    Ok(Some(route))
}

fn route_ip(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}
