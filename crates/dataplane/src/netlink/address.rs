//! IPv4 and IPv6 addresses on links.

use std::net::IpAddr;

use ipnet::IpNet;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL};
use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    address::{AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage},
};

use super::{Netlink, Request};
use crate::{Error, Result};

/// An address on a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Address {
    pub index: u32,
    pub net: IpNet,
}

impl Netlink {
    /// Adds `net` (address and prefix length) to the link. An address that is already there is
    /// success. IPv6 gets IFA_F_NODAD when `nodad` (usable at once, no duplicate detection);
    /// IPv4 gets the subnet's broadcast address for prefixes up to /30, as `ip addr add` does.
    pub fn add_address(&mut self, index: u32, net: IpNet, nodad: bool) -> Result<()> {
        self.request(add_address_request(index, net, nodad))?;
        Ok(())
    }

    /// Addresses of both families, of one link (`Some(index)`) or of all links.
    pub fn addresses(&mut self, index: Option<u32>) -> Result<Vec<Address>> {
        let mut msg = AddressMessage::default();
        // Strict checking lets the kernel filter by interface.
        msg.header.index = index.unwrap_or(0);
        let op = match index {
            Some(i) => format!("list addresses of link index {i}"),
            None => "list addresses".to_string(),
        };
        let reply = self.request(Request::new(
            op.clone(),
            RouteNetlinkMessage::GetAddress(msg),
            NLM_F_DUMP,
        ))?;
        let mut out = Vec::new();
        for m in reply.msgs {
            if let RouteNetlinkMessage::NewAddress(m) = m {
                if index.is_some_and(|i| i != m.header.index) {
                    continue;
                }
                out.push(parse_address(&op, &m)?);
            }
        }
        Ok(out)
    }

    /// Removes `net` from the link; errno EADDRNOTAVAIL when it is not there.
    pub fn delete_address(&mut self, index: u32, net: IpNet) -> Result<()> {
        self.request(delete_address_request(index, net))?;
        Ok(())
    }
}

fn address_message(index: u32, net: IpNet) -> AddressMessage {
    let mut msg = AddressMessage::default();
    msg.header.index = index;
    msg.header.prefix_len = net.prefix_len();
    let addr = net.addr();
    match addr {
        IpAddr::V4(_) => {
            msg.header.family = AddressFamily::Inet;
            msg.attributes.push(AddressAttribute::Local(addr));
            msg.attributes.push(AddressAttribute::Address(addr));
        }
        IpAddr::V6(_) => {
            msg.header.family = AddressFamily::Inet6;
            msg.attributes.push(AddressAttribute::Address(addr));
        }
    }
    msg
}

pub(crate) fn add_address_request(index: u32, net: IpNet, nodad: bool) -> Request {
    let mut msg = address_message(index, net);
    match net {
        IpNet::V4(v4) if v4.prefix_len() <= 30 => {
            msg.attributes
                .push(AddressAttribute::Broadcast(v4.broadcast()));
        }
        IpNet::V6(_) if nodad => {
            msg.header.flags = AddressHeaderFlags::Nodad;
            msg.attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        _ => {}
    }
    Request::new(
        format!("add address {net} to link index {index}"),
        RouteNetlinkMessage::NewAddress(msg),
        NLM_F_CREATE | NLM_F_EXCL,
    )
    .tolerate(&[libc::EEXIST])
}

pub(crate) fn delete_address_request(index: u32, net: IpNet) -> Request {
    Request::new(
        format!("delete address {net} from link index {index}"),
        RouteNetlinkMessage::DelAddress(address_message(index, net)),
        0,
    )
}

fn parse_address(op: &str, m: &AddressMessage) -> Result<Address> {
    // IFA_LOCAL is the interface's own address; IFA_ADDRESS is the peer on point-to-point links.
    let mut local = None;
    let mut address = None;
    for attr in &m.attributes {
        match attr {
            AddressAttribute::Local(a) => local = Some(*a),
            AddressAttribute::Address(a) => address = Some(*a),
            _ => {}
        }
    }
    let ip = local.or(address).ok_or_else(|| Error::Decode {
        op: op.to_string(),
        msg: format!(
            "address on link index {} has no IFA_ADDRESS",
            m.header.index
        ),
    })?;
    let net = IpNet::new(ip, m.header.prefix_len).map_err(|e| Error::Decode {
        op: op.to_string(),
        msg: format!("{ip}/{}: {e}", m.header.prefix_len),
    })?;
    Ok(Address {
        index: m.header.index,
        net,
    })
}
