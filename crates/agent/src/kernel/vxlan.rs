//! The node's VXLAN device: created when missing, recreated when its identity (VNI, local
//! address, port, learning, MAC) is not what Weft wants, MTU and up state corrected in place.

use std::net::Ipv4Addr;

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkExtentMask, LinkFlags, LinkInfo, LinkMessage,
};

use super::{GONE, KernelError, Request, Result, Rtnl};

/// What the VXLAN device must be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanSpec {
    pub name: String,
    pub vni: u32,
    pub local: Ipv4Addr,
    pub port: u16,
    /// The underlay link (IFLA_VXLAN_LINK).
    pub underlay_index: u32,
    pub mtu: u32,
    pub mac: [u8; 6],
}

/// The device as the kernel has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanLink {
    pub index: u32,
    pub mac: Option<[u8; 6]>,
    pub mtu: u32,
    pub up: bool,
    /// None when the link is not a VXLAN device.
    pub vni: Option<u32>,
    pub local: Option<Ipv4Addr>,
    pub port: Option<u16>,
    pub learning: Option<bool>,
    pub is_vxlan: bool,
}

/// The VTEP MAC Weft gives a node: locally administered, `0e:57` ('W') then the node's IPv4
/// underlay address, so it is unique per node and survives the device being recreated (the
/// node record never goes stale).
pub fn vtep_mac(underlay: Ipv4Addr) -> [u8; 6] {
    let o = underlay.octets();
    [0x0e, 0x57, o[0], o[1], o[2], o[3]]
}

/// What happened in [`ensure`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ensured {
    Unchanged,
    Created,
    Recreated,
    Fixed,
}

/// Makes the device match `spec`; returns its index and what was done.
pub fn ensure(nl: &mut Rtnl, spec: &VxlanSpec) -> Result<(u32, Ensured)> {
    let op = format!("ensure vxlan device {:?}", spec.name);
    let mut what = Ensured::Created;
    if let Some(link) = get(nl, &spec.name)? {
        if !link.is_vxlan {
            return Err(KernelError::Conflict {
                op,
                msg: "a link of that name exists and is not a VXLAN device".into(),
            });
        }
        let same = link.vni == Some(spec.vni)
            && link.local == Some(spec.local)
            && link.port == Some(spec.port)
            && link.learning == Some(false)
            && link.mac == Some(spec.mac);
        if same {
            if link.mtu == spec.mtu && link.up {
                return Ok((link.index, Ensured::Unchanged));
            }
            set_mtu_up(nl, link.index, spec.mtu)?;
            return Ok((link.index, Ensured::Fixed));
        }
        delete(nl, link.index, &spec.name)?;
        what = Ensured::Recreated;
    }
    create(nl, spec)?;
    let link = get(nl, &spec.name)?.ok_or_else(|| KernelError::Conflict {
        op,
        msg: "created, then not found".into(),
    })?;
    Ok((link.index, what))
}

/// The link called `name`, parsed as far as a VXLAN device goes; None when there is none.
pub fn get(nl: &mut Rtnl, name: &str) -> Result<Option<VxlanLink>> {
    let mut msg = LinkMessage::default();
    msg.attributes.push(LinkAttribute::IfName(name.to_string()));
    msg.attributes
        .push(LinkAttribute::ExtMask(vec![LinkExtentMask::SkipStats]));
    let op = format!("get link {name:?}");
    let msgs = match nl.request(Request {
        op: op.clone(),
        msg: RouteNetlinkMessage::GetLink(msg),
        flags: 0,
        tolerate: &[],
    }) {
        Ok(m) => m,
        Err(e) if matches!(e.errno(), Some(libc::ENODEV | libc::ENOENT)) => return Ok(None),
        Err(e) => return Err(e),
    };
    for m in msgs {
        if let RouteNetlinkMessage::NewLink(m) = m {
            return Ok(Some(parse(&m)));
        }
    }
    Ok(None)
}

fn parse(m: &LinkMessage) -> VxlanLink {
    let mut l = VxlanLink {
        index: m.header.index,
        mac: None,
        mtu: 0,
        up: m.header.flags.contains(LinkFlags::Up),
        vni: None,
        local: None,
        port: None,
        learning: None,
        is_vxlan: false,
    };
    for a in &m.attributes {
        match a {
            LinkAttribute::Address(b) if b.len() == 6 => {
                let mut mac = [0u8; 6];
                mac.copy_from_slice(b);
                l.mac = Some(mac);
            }
            LinkAttribute::Mtu(v) => l.mtu = *v,
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    match i {
                        LinkInfo::Kind(InfoKind::Vxlan) => l.is_vxlan = true,
                        LinkInfo::Data(InfoData::Vxlan(v)) => {
                            for x in v {
                                match x {
                                    InfoVxlan::Id(id) => l.vni = Some(*id),
                                    InfoVxlan::Local(a) => l.local = Some(*a),
                                    InfoVxlan::Port(p) => l.port = Some(*p),
                                    InfoVxlan::Learning(b) => l.learning = Some(*b),
                                    _ => {}
                                }
                            }
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    l
}

fn create(nl: &mut Rtnl, spec: &VxlanSpec) -> Result<()> {
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
    nl.request(Request {
        op: format!(
            "create vxlan device {:?} (vni {}, local {}, dstport {}, mtu {})",
            spec.name, spec.vni, spec.local, spec.port, spec.mtu
        ),
        msg: RouteNetlinkMessage::NewLink(msg),
        flags: NLM_F_CREATE | NLM_F_EXCL,
        tolerate: &[],
    })?;
    Ok(())
}

fn set_mtu_up(nl: &mut Rtnl, index: u32, mtu: u32) -> Result<()> {
    let mut msg = LinkMessage::default();
    msg.header.index = index;
    msg.header.flags = LinkFlags::Up;
    msg.header.change_mask = LinkFlags::Up;
    msg.attributes.push(LinkAttribute::Mtu(mtu));
    nl.request(Request {
        op: format!("set link index {index} up with mtu {mtu}"),
        msg: RouteNetlinkMessage::SetLink(msg),
        flags: 0,
        tolerate: &[],
    })?;
    Ok(())
}

fn delete(nl: &mut Rtnl, index: u32, name: &str) -> Result<()> {
    let mut msg = LinkMessage::default();
    msg.header.index = index;
    nl.request(Request {
        op: format!("delete link {name:?} (index {index})"),
        msg: RouteNetlinkMessage::DelLink(msg),
        flags: 0,
        tolerate: GONE,
    })?;
    Ok(())
}
