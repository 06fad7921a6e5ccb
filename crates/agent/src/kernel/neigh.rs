//! FDB entries (`bridge fdb ... dev weft.vx self`) and neighbour entries (`ip neigh ... dev
//! weft.vx`) on one device: dumps and the requests to add (replace) or delete them.

use std::net::IpAddr;

use netlink_packet_core::{NLM_F_CREATE, NLM_F_DUMP, NLM_F_REPLACE};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use super::{GONE, Request, Result, Rtnl};

/// A unicast FDB entry of a VXLAN device: frames to `mac` go to the VTEP at `dst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FdbEntry {
    pub mac: [u8; 6],
    pub dst: IpAddr,
}

/// A neighbour entry of a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Neighbour {
    pub ip: IpAddr,
    pub mac: Option<[u8; 6]>,
    pub permanent: bool,
}

fn mac_of(b: &[u8]) -> Option<[u8; 6]> {
    (b.len() == 6).then(|| {
        let mut m = [0u8; 6];
        m.copy_from_slice(b);
        m
    })
}

fn ip_of(a: &NeighbourAddress) -> Option<IpAddr> {
    match a {
        NeighbourAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        NeighbourAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        // An AF_BRIDGE (FDB) message's NDA_DST comes undecoded: 4 or 16 bytes.
        NeighbourAddress::Other(b) => match b.len() {
            4 => <[u8; 4]>::try_from(&b[..]).ok().map(IpAddr::from),
            16 => <[u8; 16]>::try_from(&b[..]).ok().map(IpAddr::from),
            _ => None,
        },
        _ => None,
    }
}

fn family(ip: &IpAddr) -> AddressFamily {
    if ip.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}

/// Unicast FDB entries (NTF_SELF, with a remote) of device `ifindex`; the all-zero default
/// entry is left out.
pub fn fdb_entries(nl: &mut Rtnl, ifindex: u32) -> Result<Vec<FdbEntry>> {
    let mut msg = NeighbourMessage::default();
    msg.header.family = AddressFamily::Bridge;
    msg.header.ifindex = ifindex;
    let msgs = nl.request(Request {
        op: format!("list fdb entries of link index {ifindex}"),
        msg: RouteNetlinkMessage::GetNeighbour(msg),
        flags: NLM_F_DUMP,
        tolerate: &[],
    })?;
    let mut out = Vec::new();
    for m in msgs {
        let RouteNetlinkMessage::NewNeighbour(m) = m else {
            continue;
        };
        if m.header.ifindex != ifindex || !m.header.flags.contains(NeighbourFlags::Own) {
            continue;
        }
        let mut mac = None;
        let mut dst = None;
        for a in &m.attributes {
            match a {
                NeighbourAttribute::LinkLayerAddress(b) => mac = mac_of(b),
                NeighbourAttribute::Destination(d) => dst = ip_of(d),
                _ => {}
            }
        }
        if let (Some(mac), Some(dst)) = (mac, dst)
            && mac != [0; 6]
        {
            out.push(FdbEntry { mac, dst });
        }
    }
    Ok(out)
}

/// Neighbour entries (IPv4 or IPv6) of device `ifindex`.
pub fn neighbours(nl: &mut Rtnl, ifindex: u32, v6: bool) -> Result<Vec<Neighbour>> {
    let mut msg = NeighbourMessage::default();
    msg.header.family = if v6 {
        AddressFamily::Inet6
    } else {
        AddressFamily::Inet
    };
    // A strict neighbour dump takes the device as NDA_IFINDEX; the header's must be 0.
    msg.attributes.push(NeighbourAttribute::IfIndex(ifindex));
    let msgs = nl.request(Request {
        op: format!("list neighbours of link index {ifindex}"),
        msg: RouteNetlinkMessage::GetNeighbour(msg),
        flags: NLM_F_DUMP,
        tolerate: &[],
    })?;
    let mut out = Vec::new();
    for m in msgs {
        let RouteNetlinkMessage::NewNeighbour(m) = m else {
            continue;
        };
        if m.header.ifindex != ifindex {
            continue;
        }
        let mut n = Neighbour {
            ip: IpAddr::from([0u8, 0, 0, 0]),
            mac: None,
            permanent: m.header.state == NeighbourState::Permanent,
        };
        let mut have_ip = false;
        for a in &m.attributes {
            match a {
                NeighbourAttribute::LinkLayerAddress(b) => n.mac = mac_of(b),
                NeighbourAttribute::Destination(d) => {
                    if let Some(ip) = ip_of(d) {
                        n.ip = ip;
                        have_ip = true;
                    }
                }
                _ => {}
            }
        }
        if have_ip {
            out.push(n);
        }
    }
    Ok(out)
}

fn fdb_message(ifindex: u32, e: &FdbEntry) -> NeighbourMessage {
    let mut msg = NeighbourMessage::default();
    msg.header.family = AddressFamily::Bridge;
    msg.header.ifindex = ifindex;
    msg.header.flags = NeighbourFlags::Own;
    msg.header.state = NeighbourState::Permanent;
    msg.attributes
        .push(NeighbourAttribute::LinkLayerAddress(e.mac.to_vec()));
    msg.attributes
        .push(NeighbourAttribute::Destination(match e.dst {
            IpAddr::V4(a) => NeighbourAddress::Inet(a),
            IpAddr::V6(a) => NeighbourAddress::Inet6(a),
        }));
    msg
}

/// `bridge fdb replace MAC dev IFINDEX dst DST self permanent`.
pub fn fdb_add(ifindex: u32, e: &FdbEntry) -> Request {
    Request {
        op: format!(
            "add fdb entry {} dst {} on link index {ifindex}",
            crate::node::mac_string(&e.mac),
            e.dst
        ),
        msg: RouteNetlinkMessage::NewNeighbour(fdb_message(ifindex, e)),
        flags: NLM_F_CREATE | NLM_F_REPLACE,
        tolerate: &[],
    }
}

/// `bridge fdb del MAC dev IFINDEX dst DST self`.
pub fn fdb_delete(ifindex: u32, e: &FdbEntry) -> Request {
    Request {
        op: format!(
            "delete fdb entry {} dst {} on link index {ifindex}",
            crate::node::mac_string(&e.mac),
            e.dst
        ),
        msg: RouteNetlinkMessage::DelNeighbour(fdb_message(ifindex, e)),
        flags: 0,
        tolerate: GONE,
    }
}

/// `ip neigh replace IP lladdr MAC dev IFINDEX nud permanent`.
pub fn neighbour_add(ifindex: u32, ip: IpAddr, mac: [u8; 6]) -> Request {
    let mut msg = NeighbourMessage::default();
    msg.header.family = family(&ip);
    msg.header.ifindex = ifindex;
    msg.header.state = NeighbourState::Permanent;
    msg.attributes
        .push(NeighbourAttribute::Destination(match ip {
            IpAddr::V4(a) => NeighbourAddress::Inet(a),
            IpAddr::V6(a) => NeighbourAddress::Inet6(a),
        }));
    msg.attributes
        .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
    Request {
        op: format!(
            "add neighbour {ip} lladdr {} on link index {ifindex}",
            crate::node::mac_string(&mac)
        ),
        msg: RouteNetlinkMessage::NewNeighbour(msg),
        flags: NLM_F_CREATE | NLM_F_REPLACE,
        tolerate: &[],
    }
}

/// `ip neigh del IP dev IFINDEX`.
pub fn neighbour_delete(ifindex: u32, ip: IpAddr) -> Request {
    let mut msg = NeighbourMessage::default();
    msg.header.family = family(&ip);
    msg.header.ifindex = ifindex;
    msg.attributes
        .push(NeighbourAttribute::Destination(match ip {
            IpAddr::V4(a) => NeighbourAddress::Inet(a),
            IpAddr::V6(a) => NeighbourAddress::Inet6(a),
        }));
    Request {
        op: format!("delete neighbour {ip} on link index {ifindex}"),
        msg: RouteNetlinkMessage::DelNeighbour(msg),
        flags: 0,
        tolerate: GONE,
    }
}
