//! The agent's routes: main table, protocol [`weft_dataplane::RTPROT_WEFT`] (87), always with a
//! gateway. The plugin's per-pod host routes carry protocol 87 too but never a gateway, so
//! "protocol 87 with a gateway" is exactly the set the agent owns.

use std::net::IpAddr;

use ipnet::IpNet;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_DUMP, NLM_F_REPLACE};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol, RouteScope,
    RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use weft_dataplane::RTPROT_WEFT;

use super::{GONE, Request, Result, Rtnl};

/// `<dst> via <gateway> dev <oif> [onlink] proto 87`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PeerRoute {
    pub dst: IpNet,
    pub gateway: IpAddr,
    pub oif: u32,
    pub onlink: bool,
}

impl PeerRoute {
    pub fn describe(&self) -> String {
        format!(
            "{} via {} dev index {}{}",
            self.dst,
            self.gateway,
            self.oif,
            if self.onlink { " onlink" } else { "" }
        )
    }
}

fn addr(ip: IpAddr) -> RouteAddress {
    match ip {
        IpAddr::V4(a) => RouteAddress::Inet(a),
        IpAddr::V6(a) => RouteAddress::Inet6(a),
    }
}

fn ip_of(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

/// Every route of the main table with protocol 87 and a gateway (IPv4 or IPv6).
pub fn agent_routes(nl: &mut Rtnl, v6: bool) -> Result<Vec<PeerRoute>> {
    let mut msg = RouteMessage::default();
    msg.header.address_family = if v6 {
        AddressFamily::Inet6
    } else {
        AddressFamily::Inet
    };
    msg.header.table = RouteHeader::RT_TABLE_MAIN;
    let msgs = nl.request(Request {
        op: format!("list ipv{} routes", if v6 { 6 } else { 4 }),
        msg: RouteNetlinkMessage::GetRoute(msg),
        flags: NLM_F_DUMP,
        tolerate: &[],
    })?;
    let mut out = Vec::new();
    for m in msgs {
        let RouteNetlinkMessage::NewRoute(m) = m else {
            continue;
        };
        let h = &m.header;
        if h.protocol != RouteProtocol::Other(RTPROT_WEFT)
            || h.kind != RouteType::Unicast
            || h.table != RouteHeader::RT_TABLE_MAIN
        {
            continue;
        }
        let (mut dst, mut gw, mut oif) = (None, None, None);
        for a in &m.attributes {
            match a {
                RouteAttribute::Destination(a) => dst = ip_of(a),
                RouteAttribute::Gateway(a) => gw = ip_of(a),
                RouteAttribute::Oif(i) => oif = Some(*i),
                _ => {}
            }
        }
        let unspec: IpAddr = if v6 {
            std::net::Ipv6Addr::UNSPECIFIED.into()
        } else {
            std::net::Ipv4Addr::UNSPECIFIED.into()
        };
        let (Some(gateway), Some(oif)) = (gw, oif) else {
            continue;
        };
        let Ok(dst) = IpNet::new(dst.unwrap_or(unspec), h.destination_prefix_length) else {
            continue;
        };
        out.push(PeerRoute {
            dst,
            gateway,
            oif,
            onlink: h.flags.contains(RouteFlags::Onlink),
        });
    }
    Ok(out)
}

fn message(r: &PeerRoute) -> RouteMessage {
    let mut msg = RouteMessage::default();
    let h = &mut msg.header;
    h.address_family = if r.dst.addr().is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    h.destination_prefix_length = r.dst.prefix_len();
    h.table = RouteHeader::RT_TABLE_MAIN;
    if r.dst.prefix_len() > 0 {
        msg.attributes
            .push(RouteAttribute::Destination(addr(r.dst.network())));
    }
    msg.attributes
        .push(RouteAttribute::Gateway(addr(r.gateway)));
    msg.attributes.push(RouteAttribute::Oif(r.oif));
    msg
}

/// `ip route replace DST via GW dev OIF [onlink] proto 87`.
pub fn add(r: &PeerRoute) -> Request {
    let mut msg = message(r);
    msg.header.protocol = RouteProtocol::Other(RTPROT_WEFT);
    msg.header.kind = RouteType::Unicast;
    msg.header.scope = RouteScope::Universe;
    if r.onlink {
        msg.header.flags = RouteFlags::Onlink;
    }
    Request {
        op: format!("add route {}", r.describe()),
        msg: RouteNetlinkMessage::NewRoute(msg),
        flags: NLM_F_CREATE | NLM_F_REPLACE,
        tolerate: &[],
    }
}

/// `ip route del DST via GW dev OIF`.
pub fn delete(r: &PeerRoute) -> Request {
    let mut msg = message(r);
    msg.header.scope = RouteScope::NoWhere;
    Request {
        op: format!("delete route {}", r.describe()),
        msg: RouteNetlinkMessage::DelRoute(msg),
        flags: 0,
        tolerate: GONE,
    }
}
