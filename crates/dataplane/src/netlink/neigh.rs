//! FDB entries of a device (`bridge fdb ... dev weft.vx self`) and its neighbour entries
//! (`ip neigh ... dev weft.vx`): dumps, replace and delete. Deleting an entry that is already
//! gone is success (see [`crate::GONE`]).

use std::net::IpAddr;

use netlink_packet_core::{NLM_F_CREATE, NLM_F_DUMP, NLM_F_REPLACE};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use super::{Netlink, Request, mac_string};
use crate::{GONE, Result};

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
    /// NUD_PERMANENT: set by hand (or by Weft), never expires.
    pub permanent: bool,
}

impl Netlink {
    /// Unicast FDB entries (NTF_SELF, with a remote) of device `ifindex`; the all-zero default
    /// entry is left out.
    pub fn fdb_entries(&mut self, ifindex: u32) -> Result<Vec<FdbEntry>> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = AddressFamily::Bridge;
        msg.header.ifindex = ifindex;
        let reply = self.request(Request::new(
            format!("list fdb entries of link index {ifindex}"),
            RouteNetlinkMessage::GetNeighbour(msg),
            NLM_F_DUMP,
        ))?;
        let mut out = Vec::new();
        for m in reply.msgs {
            let RouteNetlinkMessage::NewNeighbour(m) = m else {
                continue;
            };
            if m.header.ifindex != ifindex || !m.header.flags.contains(NeighbourFlags::Own) {
                continue;
            }
            let (mut mac, mut dst) = (None, None);
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
    pub fn neighbours(&mut self, ifindex: u32, v6: bool) -> Result<Vec<Neighbour>> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = if v6 {
            AddressFamily::Inet6
        } else {
            AddressFamily::Inet
        };
        // A strict neighbour dump takes the device as NDA_IFINDEX; the header's must be 0.
        msg.attributes.push(NeighbourAttribute::IfIndex(ifindex));
        let reply = self.request(Request::new(
            format!(
                "list ipv{} neighbours of link index {ifindex}",
                if v6 { 6 } else { 4 }
            ),
            RouteNetlinkMessage::GetNeighbour(msg),
            NLM_F_DUMP,
        ))?;
        let mut out = Vec::new();
        for m in reply.msgs {
            let RouteNetlinkMessage::NewNeighbour(m) = m else {
                continue;
            };
            if m.header.ifindex != ifindex {
                continue;
            }
            let (mut ip, mut mac) = (None, None);
            for a in &m.attributes {
                match a {
                    NeighbourAttribute::LinkLayerAddress(b) => mac = mac_of(b),
                    NeighbourAttribute::Destination(d) => ip = ip_of(d).or(ip),
                    _ => {}
                }
            }
            if let Some(ip) = ip {
                out.push(Neighbour {
                    ip,
                    mac,
                    permanent: m.header.state == NeighbourState::Permanent,
                });
            }
        }
        Ok(out)
    }

    /// As [`Batch::replace_fdb`](super::Batch::replace_fdb), on its own.
    pub fn replace_fdb(&mut self, ifindex: u32, e: &FdbEntry) -> Result<()> {
        self.request(replace_fdb_request(ifindex, e))?;
        Ok(())
    }

    /// As [`Batch::delete_fdb`](super::Batch::delete_fdb), on its own.
    pub fn delete_fdb(&mut self, ifindex: u32, e: &FdbEntry) -> Result<()> {
        self.request(delete_fdb_request(ifindex, e))?;
        Ok(())
    }

    /// As [`Batch::replace_neighbour`](super::Batch::replace_neighbour), on its own.
    pub fn replace_neighbour(&mut self, ifindex: u32, ip: IpAddr, mac: [u8; 6]) -> Result<()> {
        self.request(replace_neighbour_request(ifindex, ip, mac))?;
        Ok(())
    }

    /// As [`Batch::delete_neighbour`](super::Batch::delete_neighbour), on its own.
    pub fn delete_neighbour(&mut self, ifindex: u32, ip: IpAddr) -> Result<()> {
        self.request(delete_neighbour_request(ifindex, ip))?;
        Ok(())
    }
}

fn mac_of(b: &[u8]) -> Option<[u8; 6]> {
    <[u8; 6]>::try_from(b).ok()
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

fn address(ip: IpAddr) -> NeighbourAddress {
    match ip {
        IpAddr::V4(a) => NeighbourAddress::Inet(a),
        IpAddr::V6(a) => NeighbourAddress::Inet6(a),
    }
}

fn family(ip: IpAddr) -> AddressFamily {
    if ip.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
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
        .push(NeighbourAttribute::Destination(address(e.dst)));
    msg
}

/// `bridge fdb replace MAC dev IFINDEX dst DST self permanent`.
pub(crate) fn replace_fdb_request(ifindex: u32, e: &FdbEntry) -> Request {
    Request::new(
        format!(
            "add fdb entry {} dst {} on link index {ifindex}",
            mac_string(&e.mac),
            e.dst
        ),
        RouteNetlinkMessage::NewNeighbour(fdb_message(ifindex, e)),
        NLM_F_CREATE | NLM_F_REPLACE,
    )
}

/// `bridge fdb del MAC dev IFINDEX dst DST self`; already gone is success.
pub(crate) fn delete_fdb_request(ifindex: u32, e: &FdbEntry) -> Request {
    Request::new(
        format!(
            "delete fdb entry {} dst {} on link index {ifindex}",
            mac_string(&e.mac),
            e.dst
        ),
        RouteNetlinkMessage::DelNeighbour(fdb_message(ifindex, e)),
        0,
    )
    .tolerate(GONE)
}

/// `ip neigh replace IP lladdr MAC dev IFINDEX nud permanent`.
pub(crate) fn replace_neighbour_request(ifindex: u32, ip: IpAddr, mac: [u8; 6]) -> Request {
    let mut msg = NeighbourMessage::default();
    msg.header.family = family(ip);
    msg.header.ifindex = ifindex;
    msg.header.state = NeighbourState::Permanent;
    msg.attributes
        .push(NeighbourAttribute::Destination(address(ip)));
    msg.attributes
        .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
    Request::new(
        format!(
            "add neighbour {ip} lladdr {} on link index {ifindex}",
            mac_string(&mac)
        ),
        RouteNetlinkMessage::NewNeighbour(msg),
        NLM_F_CREATE | NLM_F_REPLACE,
    )
}

/// `ip neigh del IP dev IFINDEX`; already gone is success.
pub(crate) fn delete_neighbour_request(ifindex: u32, ip: IpAddr) -> Request {
    let mut msg = NeighbourMessage::default();
    msg.header.family = family(ip);
    msg.header.ifindex = ifindex;
    msg.attributes
        .push(NeighbourAttribute::Destination(address(ip)));
    Request::new(
        format!("delete neighbour {ip} on link index {ifindex}"),
        RouteNetlinkMessage::DelNeighbour(msg),
        0,
    )
    .tolerate(GONE)
}
