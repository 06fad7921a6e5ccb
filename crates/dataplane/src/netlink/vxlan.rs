//! The node's VXLAN device: created when missing, recreated when its identity (VNI, local
//! address, port, learning, MAC) is not what Weft wants, MTU and up state corrected in place.

use std::net::Ipv4Addr;

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};

use super::{Netlink, Request};
use crate::{Error, Result};

/// What the VXLAN device must be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanSpec {
    pub name: String,
    pub vni: u32,
    pub local: Ipv4Addr,
    /// UDP destination port.
    pub port: u16,
    /// The underlay link (IFLA_VXLAN_LINK).
    pub underlay_index: u32,
    pub mtu: u32,
    pub mac: [u8; 6],
}

/// A VXLAN device's identity as the kernel reports it ([`crate::Link::vxlan`]); a field is None
/// when the kernel left its attribute out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VxlanInfo {
    pub vni: Option<u32>,
    pub local: Option<Ipv4Addr>,
    pub port: Option<u16>,
    pub learning: Option<bool>,
}

/// The VTEP MAC Weft gives a node: locally administered, `0e:57` ('W') then the node's IPv4
/// underlay address, so it is unique per node and survives the device being recreated (the
/// node record never goes stale).
pub fn vtep_mac(underlay: Ipv4Addr) -> [u8; 6] {
    let o = underlay.octets();
    [0x0e, 0x57, o[0], o[1], o[2], o[3]]
}

/// What [`Netlink::ensure_vxlan`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ensured {
    /// The device was as wanted.
    Unchanged,
    /// There was none; it was created.
    Created,
    /// Its identity differed; it was deleted and created again (with a new index).
    Recreated,
    /// Only its MTU or up state differed; both were set in place.
    Fixed,
}

impl Netlink {
    /// Makes the VXLAN device match `spec` (learning off, up); its index and what was done.
    /// A link of that name that is not a VXLAN device is a [`Error::Conflict`], left alone.
    pub fn ensure_vxlan(&mut self, spec: &VxlanSpec) -> Result<(u32, Ensured)> {
        let op = format!("ensure vxlan device {:?}", spec.name);
        let mut what = Ensured::Created;
        if let Some(link) = self.link_by_name(&spec.name)? {
            if link.kind.as_deref() != Some("vxlan") {
                return Err(Error::Conflict {
                    op,
                    msg: format!(
                        "link {:?} (index {}) exists and is a {} device, not VXLAN; delete or \
                         rename it, or configure another VXLAN device name",
                        link.name,
                        link.index,
                        link.kind.as_deref().unwrap_or("kindless")
                    ),
                });
            }
            let info = link.vxlan.unwrap_or_default();
            let same = info.vni == Some(spec.vni)
                && info.local == Some(spec.local)
                && info.port == Some(spec.port)
                && info.learning == Some(false)
                && link.mac == Some(spec.mac);
            if same {
                if link.mtu == spec.mtu && link.up {
                    return Ok((link.index, Ensured::Unchanged));
                }
                self.batch()
                    .set_mtu(link.index, spec.mtu)
                    .set_up(link.index)
                    .commit()?;
                return Ok((link.index, Ensured::Fixed));
            }
            match self.delete_link(link.index) {
                Err(e) if !e.is_gone() => return Err(e),
                _ => {}
            }
            what = Ensured::Recreated;
        }
        self.request(create_request(spec))?;
        let link = self
            .link_by_name(&spec.name)?
            .ok_or_else(|| Error::Conflict {
                op,
                msg: "created, then not found (deleted concurrently?)".into(),
            })?;
        Ok((link.index, what))
    }
}

fn create_request(spec: &VxlanSpec) -> Request {
    let mut msg = LinkMessage::default();
    msg.header.flags = LinkFlags::Up;
    msg.header.change_mask = LinkFlags::Up;
    msg.attributes
        .push(LinkAttribute::IfName(spec.name.to_string()));
    msg.attributes.push(LinkAttribute::Mtu(spec.mtu));
    msg.attributes
        .push(LinkAttribute::Address(spec.mac.to_vec()));
    msg.attributes.push(LinkAttribute::LinkInfo(vec![
        LinkInfo::Kind(InfoKind::Vxlan),
        LinkInfo::Data(InfoData::Vxlan(vec![
            InfoVxlan::Id(spec.vni),
            InfoVxlan::Local(spec.local),
            InfoVxlan::Link(spec.underlay_index),
            InfoVxlan::Port(spec.port),
            InfoVxlan::Learning(false),
        ])),
    ]));
    Request::new(
        format!(
            "create vxlan device {:?} (vni {}, local {}, dstport {}, mtu {})",
            spec.name, spec.vni, spec.local, spec.port, spec.mtu
        ),
        RouteNetlinkMessage::NewLink(msg),
        NLM_F_CREATE | NLM_F_EXCL,
    )
}

pub(super) fn parse_info(data: &[InfoVxlan]) -> VxlanInfo {
    let mut info = VxlanInfo::default();
    for x in data {
        match x {
            InfoVxlan::Id(id) => info.vni = Some(*id),
            InfoVxlan::Local(a) => info.local = Some(*a),
            InfoVxlan::Port(p) => info.port = Some(*p),
            InfoVxlan::Learning(b) => info.learning = Some(*b),
            _ => {}
        }
    }
    info
}
