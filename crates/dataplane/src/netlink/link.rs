//! Links: lookup, bridge and veth creation, flags, master, hairpin, alias, deletion.

use std::os::fd::AsRawFd;

use netlink_packet_core::{DefaultNla, NLM_F_CREATE, NLM_F_DUMP, NLM_F_ECHO, NLM_F_EXCL};
use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    link::{
        InfoBridgePort, InfoData, InfoKind, InfoPortData, InfoVeth, LinkAttribute, LinkExtentMask,
        LinkFlags, LinkInfo, LinkMessage, LinkProtoInfoBridge,
    },
};

use super::vxlan::{self, VxlanInfo};
use super::{Netlink, Request};
use crate::{Error, Netns, Result};

/// `IFLA_BRPORT_MODE`: the bridge port's hairpin switch (linux/if_link.h).
const IFLA_BRPORT_MODE: u16 = 4;
/// Longest interface name the kernel accepts (IFNAMSIZ - 1).
const MAX_NAME: usize = 15;

/// A network interface as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mac: Option<[u8; 6]>,
    pub mtu: u32,
    /// Index of the bridge (or other master) this link is enslaved to.
    pub master: Option<u32>,
    /// `IFLA_INFO_KIND`: "bridge", "veth", ...; None for devices without one (loopback, eth0).
    pub kind: Option<String>,
    /// Administratively up (IFF_UP).
    pub up: bool,
    pub alias: Option<String>,
    /// For a veth: the netns id (in this link's netns) of the namespace holding the peer.
    pub peer_netns_id: Option<i32>,
    /// `IFLA_LINK`: for a veth, the peer's ifindex (in the peer's namespace).
    pub peer_index: Option<u32>,
    /// For a VXLAN device: its identity (`IFLA_INFO_DATA`).
    pub vxlan: Option<VxlanInfo>,
    /// `IFLA_GSO_MAX_SIZE` and `IFLA_GSO_IPV4_MAX_SIZE`: the largest GSO packet the stack builds
    /// for this device (IPv6, IPv4); 0 when the kernel does not say. Above 65536 is BIG TCP.
    pub gso_max_size: u32,
    pub gso_ipv4_max_size: u32,
}

/// A veth pair to create with [`Netlink::create_veth`].
#[derive(Debug, Clone, Copy)]
pub struct VethSpec<'a> {
    /// Name of the end that stays in the socket's netns.
    pub host_name: &'a str,
    /// Name of the end created directly inside `peer_ns`.
    pub peer_name: &'a str,
    pub peer_ns: &'a Netns,
    /// MTU of both ends; the kernel default (1500) when None.
    pub mtu: Option<u32>,
    /// Bridge (or other master) for the host end.
    pub master: Option<u32>,
    pub host_mac: Option<[u8; 6]>,
    pub peer_mac: Option<[u8; 6]>,
    /// IPv4 GSO and GRO maximum sizes of both ends (BIG TCP, see [`big_tcp_attributes`]); the
    /// kernel default (65536) when None.
    pub gso_max_size: Option<u32>,
}

/// The attributes that let a link carry IPv4 GSO/GRO packets of up to `size` bytes: BIG TCP
/// when above 65536 (Linux 6.3 and later; an older kernel ignores them). The IPv6 pair stays at
/// 65536: with IPv6 BIG TCP on, a routed pod-to-pod transfer through the node fell to 25 Mbit/s
/// with 40,000 retransmissions (seen on 6.18; the cause was not traced). A tunnel cannot carry such packets either: the stack would segment them.
fn big_tcp_attributes(size: u32) -> [LinkAttribute; 4] {
    [
        LinkAttribute::GsoMaxSize(65536),
        LinkAttribute::GroMaxSize(65536),
        LinkAttribute::GsoIpv4MaxSize(size),
        LinkAttribute::GroIpv4MaxSize(size),
    ]
}

impl Netlink {
    /// The link called `name`, or None.
    pub fn link_by_name(&mut self, name: &str) -> Result<Option<Link>> {
        check_name(name)?;
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        msg.attributes
            .push(LinkAttribute::ExtMask(vec![LinkExtentMask::SkipStats]));
        self.get_link(format!("get link {name:?}"), msg)
    }

    /// The link with index `index`, or None.
    pub fn link_by_index(&mut self, index: u32) -> Result<Option<Link>> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.attributes
            .push(LinkAttribute::ExtMask(vec![LinkExtentMask::SkipStats]));
        self.get_link(format!("get link index {index}"), msg)
    }

    /// Every link in this socket's netns.
    pub fn links(&mut self) -> Result<Vec<Link>> {
        self.dump_links(None)
    }

    /// The links of one kind ("vxlan", "veth", ...). The kernel filters the dump, so a node
    /// with many pods answers with few messages; a kind the kernel does not know (its module
    /// not loaded) is not filtered there, so the kind is checked here as well.
    pub fn links_of_kind(&mut self, kind: &str) -> Result<Vec<Link>> {
        self.dump_links(Some(kind))
    }

    fn dump_links(&mut self, kind: Option<&str>) -> Result<Vec<Link>> {
        let mut msg = LinkMessage::default();
        msg.attributes
            .push(LinkAttribute::ExtMask(vec![LinkExtentMask::SkipStats]));
        if let Some(kind) = kind {
            msg.attributes
                .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(
                    InfoKind::from(kind),
                )]));
        }
        let op = match kind {
            Some(k) => format!("list {k} links"),
            None => "list links".to_string(),
        };
        let reply = self.request(Request::new(
            op.clone(),
            RouteNetlinkMessage::GetLink(msg),
            NLM_F_DUMP,
        ))?;
        let mut links = Vec::with_capacity(reply.msgs.len());
        for m in reply.msgs {
            if let RouteNetlinkMessage::NewLink(m) = m {
                let link = parse_link(&op, &m)?;
                if kind.is_none() || link.kind.as_deref() == kind {
                    links.push(link);
                }
            }
        }
        Ok(links)
    }

    /// Creates bridge `name` (up, with `mtu` if given) or returns the existing link of that name,
    /// which must be a bridge. The bool says whether it was created now.
    pub fn ensure_bridge(&mut self, name: &str, mtu: Option<u32>) -> Result<(Link, bool)> {
        check_name(name)?;
        let op = format!("ensure bridge {name:?}");
        if let Some(link) = self.link_by_name(name)? {
            return existing_bridge(&op, link);
        }
        let mut msg = LinkMessage::default();
        msg.header.flags = LinkFlags::Up;
        msg.header.change_mask = LinkFlags::Up;
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        if let Some(mtu) = mtu {
            msg.attributes.push(LinkAttribute::Mtu(mtu));
        }
        msg.attributes
            .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(
                InfoKind::Bridge,
            )]));
        // ECHO: the kernel answers with the new link, which saves a lookup.
        let reply = self.request(
            Request::new(
                format!("create bridge {name:?}"),
                RouteNetlinkMessage::NewLink(msg),
                NLM_F_CREATE | NLM_F_EXCL | NLM_F_ECHO,
            )
            .tolerate(&[libc::EEXIST]),
        )?;
        let created = reply.errno == 0;
        for m in &reply.msgs {
            if let RouteNetlinkMessage::NewLink(m) = m {
                let link = parse_link(&op, m)?;
                if link.name == name {
                    return Ok((link, created));
                }
            }
        }
        // Lost a creation race (EEXIST) or the kernel did not echo: look it up.
        match self.link_by_name(name)? {
            Some(link) if created => Ok((link, true)),
            Some(link) => existing_bridge(&op, link),
            None => Err(Error::Conflict {
                op,
                msg: "created, then not found (deleted concurrently?)".into(),
            }),
        }
    }

    /// Creates a veth pair in one RTM_NEWLINK: the host end (up, with master, MTU and MAC) in
    /// this socket's netns and the peer (down, same MTU) directly inside `spec.peer_ns`.
    /// Fails with errno EEXIST when `host_name` exists (or `peer_name` exists in `peer_ns`).
    /// Returns the host end as the kernel echoes it; its `peer_index` is the pod end's ifindex,
    /// so neither end needs a lookup afterwards.
    pub fn create_veth(&mut self, spec: &VethSpec) -> Result<Link> {
        check_name(spec.host_name)?;
        check_name(spec.peer_name)?;
        let mut peer = LinkMessage::default();
        peer.attributes
            .push(LinkAttribute::IfName(spec.peer_name.to_string()));
        peer.attributes
            .push(LinkAttribute::NetNsFd(spec.peer_ns.as_fd().as_raw_fd()));
        if let Some(mtu) = spec.mtu {
            peer.attributes.push(LinkAttribute::Mtu(mtu));
        }
        if let Some(mac) = spec.peer_mac {
            peer.attributes.push(LinkAttribute::Address(mac.to_vec()));
        }
        if let Some(size) = spec.gso_max_size {
            peer.attributes.extend(big_tcp_attributes(size));
        }

        let mut msg = LinkMessage::default();
        msg.header.flags = LinkFlags::Up;
        msg.header.change_mask = LinkFlags::Up;
        msg.attributes
            .push(LinkAttribute::IfName(spec.host_name.to_string()));
        if let Some(mtu) = spec.mtu {
            msg.attributes.push(LinkAttribute::Mtu(mtu));
        }
        if let Some(master) = spec.master {
            msg.attributes.push(LinkAttribute::Controller(master));
        }
        if let Some(mac) = spec.host_mac {
            msg.attributes.push(LinkAttribute::Address(mac.to_vec()));
        }
        if let Some(size) = spec.gso_max_size {
            msg.attributes.extend(big_tcp_attributes(size));
        }
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))),
        ]));
        let op = format!(
            "create veth {:?} with peer {:?} in netns {}",
            spec.host_name,
            spec.peer_name,
            spec.peer_ns.path().display()
        );
        let reply = self.request(Request::new(
            op.clone(),
            RouteNetlinkMessage::NewLink(msg),
            NLM_F_CREATE | NLM_F_EXCL | NLM_F_ECHO,
        ))?;
        for m in &reply.msgs {
            if let RouteNetlinkMessage::NewLink(m) = m {
                let link = parse_link(&op, m)?;
                if link.name == spec.host_name {
                    return Ok(link);
                }
            }
        }
        // A kernel that does not echo: look the new link up.
        self.link_by_name(spec.host_name)?
            .ok_or_else(|| Error::Conflict {
                op,
                msg: "created, then not found (deleted concurrently?)".into(),
            })
    }

    /// Sets the link administratively up.
    pub fn set_up(&mut self, index: u32) -> Result<()> {
        self.request(set_up_request(index, true))?;
        Ok(())
    }

    /// Sets the link administratively down.
    pub fn set_down(&mut self, index: u32) -> Result<()> {
        self.request(set_up_request(index, false))?;
        Ok(())
    }

    /// Enslaves the link to `master` (a bridge).
    pub fn set_master(&mut self, index: u32, master: u32) -> Result<()> {
        self.request(set_master_request(index, master))?;
        Ok(())
    }

    /// Sets the link's MTU.
    pub fn set_mtu(&mut self, index: u32, mtu: u32) -> Result<()> {
        self.request(set_mtu_request(index, mtu))?;
        Ok(())
    }

    /// Sets the IPv4 GSO and GRO maximum sizes of a link, and the IPv6 pair to 65536 (BIG TCP
    /// for IPv4 above 65536; see [`big_tcp_attributes`]). What an operator sets on a node's
    /// uplink with `ip link set DEV gso_ipv4_max_size N gro_ipv4_max_size N` (iproute2 6.3+).
    pub fn set_gso_max_size(&mut self, index: u32, size: u32) -> Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.attributes.extend(big_tcp_attributes(size));
        self.request(Request::new(
            format!("set GSO/GRO max size {size} on link index {index}"),
            RouteNetlinkMessage::SetLink(msg),
            0,
        ))?;
        Ok(())
    }

    /// Turns hairpin mode (IFLA_BRPORT_MODE) of a bridge port on or off, through an AF_BRIDGE
    /// RTM_SETLINK with a nested IFLA_PROTINFO, as `bridge link set hairpin` does.
    pub fn set_hairpin(&mut self, index: u32, on: bool) -> Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.interface_family = AddressFamily::Bridge;
        msg.header.index = index;
        msg.attributes.push(LinkAttribute::ProtoInfoBridge(vec![
            LinkProtoInfoBridge::Other(DefaultNla::new(IFLA_BRPORT_MODE, vec![u8::from(on)])),
        ]));
        self.request(Request::new(
            format!(
                "set hairpin {} on link index {index}",
                if on { "on" } else { "off" }
            ),
            RouteNetlinkMessage::SetLink(msg),
            0,
        ))?;
        Ok(())
    }

    /// Whether hairpin mode is on for this bridge port (false for a link with no bridge).
    pub fn hairpin(&mut self, index: u32) -> Result<bool> {
        let op = format!("get hairpin of link index {index}");
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.attributes
            .push(LinkAttribute::ExtMask(vec![LinkExtentMask::SkipStats]));
        let reply = self.request(Request::new(op, RouteNetlinkMessage::GetLink(msg), 0))?;
        for m in &reply.msgs {
            if let RouteNetlinkMessage::NewLink(m) = m {
                return Ok(port_hairpin(m).unwrap_or(false));
            }
        }
        Ok(false)
    }

    /// Sets the link's alias (IFLA_IFALIAS), a free-form label shown by `ip link`.
    pub fn set_alias(&mut self, index: u32, alias: &str) -> Result<()> {
        self.request(set_alias_request(index, alias))?;
        Ok(())
    }

    /// Deletes the link (both ends, for a veth). A missing link gives errno ENODEV.
    pub fn delete_link(&mut self, index: u32) -> Result<()> {
        self.request(delete_link_request(index))?;
        Ok(())
    }

    /// Deletes the link called `name`; Ok(false) when there is none.
    pub fn delete_link_by_name(&mut self, name: &str) -> Result<bool> {
        check_name(name)?;
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        let reply = self.request(
            Request::new(
                format!("delete link {name:?}"),
                RouteNetlinkMessage::DelLink(msg),
                0,
            )
            .tolerate(&[libc::ENODEV]),
        )?;
        Ok(reply.errno == 0)
    }

    fn get_link(&mut self, op: String, msg: LinkMessage) -> Result<Option<Link>> {
        let reply = self.request(
            Request::new(op.clone(), RouteNetlinkMessage::GetLink(msg), 0)
                .tolerate(&[libc::ENODEV]),
        )?;
        for m in &reply.msgs {
            if let RouteNetlinkMessage::NewLink(m) = m {
                return parse_link(&op, m).map(Some);
            }
        }
        Ok(None)
    }
}

pub(crate) fn set_up_request(index: u32, up: bool) -> Request {
    let mut msg = LinkMessage::default();
    msg.header.index = index;
    msg.header.flags = if up {
        LinkFlags::Up
    } else {
        LinkFlags::empty()
    };
    msg.header.change_mask = LinkFlags::Up;
    Request::new(
        format!("set link index {index} {}", if up { "up" } else { "down" }),
        RouteNetlinkMessage::SetLink(msg),
        0,
    )
}

pub(crate) fn set_mtu_request(index: u32, mtu: u32) -> Request {
    let mut msg = LinkMessage::default();
    msg.header.index = index;
    msg.attributes.push(LinkAttribute::Mtu(mtu));
    Request::new(
        format!("set mtu {mtu} on link index {index}"),
        RouteNetlinkMessage::SetLink(msg),
        0,
    )
}

pub(crate) fn set_master_request(index: u32, master: u32) -> Request {
    let mut msg = LinkMessage::default();
    msg.header.index = index;
    msg.attributes.push(LinkAttribute::Controller(master));
    Request::new(
        format!("set master of link index {index} to index {master}"),
        RouteNetlinkMessage::SetLink(msg),
        0,
    )
}

pub(crate) fn set_alias_request(index: u32, alias: &str) -> Request {
    let mut msg = LinkMessage::default();
    msg.header.index = index;
    msg.attributes
        .push(LinkAttribute::IfAlias(alias.to_string()));
    Request::new(
        format!("set alias {alias:?} on link index {index}"),
        RouteNetlinkMessage::SetLink(msg),
        0,
    )
}

pub(crate) fn delete_link_request(index: u32) -> Request {
    let mut msg = LinkMessage::default();
    msg.header.index = index;
    Request::new(
        format!("delete link index {index}"),
        RouteNetlinkMessage::DelLink(msg),
        0,
    )
}

fn check_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > MAX_NAME || name.contains(['/', ' ', '\0']) {
        return Err(Error::Invalid(format!(
            "link name {name:?} is not a valid interface name: 1 to {MAX_NAME} bytes, no '/', \
             space or NUL"
        )));
    }
    Ok(())
}

fn existing_bridge(op: &str, link: Link) -> Result<(Link, bool)> {
    if link.kind.as_deref() == Some("bridge") {
        Ok((link, false))
    } else {
        Err(Error::Conflict {
            op: op.to_string(),
            msg: format!(
                "link {:?} (index {}) exists but is a {} device, not a bridge; delete or \
                 rename it",
                link.name,
                link.index,
                link.kind.as_deref().unwrap_or("kindless")
            ),
        })
    }
}

fn port_hairpin(m: &LinkMessage) -> Option<bool> {
    m.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
            LinkInfo::PortData(InfoPortData::BridgePort(port)) => {
                port.iter().find_map(|p| match p {
                    InfoBridgePort::HairpinMode(on) => Some(*on),
                    _ => None,
                })
            }
            _ => None,
        }),
        _ => None,
    })
}

fn parse_link(op: &str, m: &LinkMessage) -> Result<Link> {
    let mut link = Link {
        index: m.header.index,
        name: String::new(),
        mac: None,
        mtu: 0,
        master: None,
        kind: None,
        up: m.header.flags.contains(LinkFlags::Up),
        alias: None,
        peer_netns_id: None,
        peer_index: None,
        vxlan: None,
        gso_max_size: 0,
        gso_ipv4_max_size: 0,
    };
    for attr in &m.attributes {
        match attr {
            LinkAttribute::IfName(n) => link.name = n.clone(),
            LinkAttribute::Address(a) => link.mac = <[u8; 6]>::try_from(a.as_slice()).ok(),
            LinkAttribute::Mtu(mtu) => link.mtu = *mtu,
            LinkAttribute::Controller(master) => link.master = Some(*master),
            LinkAttribute::IfAlias(a) => link.alias = Some(a.clone()),
            LinkAttribute::LinkNetNsId(id) => link.peer_netns_id = Some(*id),
            LinkAttribute::Link(idx) => link.peer_index = Some(*idx),
            LinkAttribute::GsoMaxSize(n) => link.gso_max_size = *n,
            LinkAttribute::GsoIpv4MaxSize(n) => link.gso_ipv4_max_size = *n,
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    match info {
                        LinkInfo::Kind(kind) => link.kind = Some(kind.to_string()),
                        LinkInfo::Data(InfoData::Vxlan(data)) => {
                            link.vxlan = Some(vxlan::parse_info(data));
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    if link.name.is_empty() {
        return Err(Error::Decode {
            op: op.to_string(),
            msg: format!("link index {} has no IFLA_IFNAME", link.index),
        });
    }
    Ok(link)
}
