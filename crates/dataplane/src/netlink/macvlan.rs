//! Macvlan links (mode bridge), for underlay pods and the node's shim.

use std::os::fd::AsRawFd;

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::{
    RouteNetlinkMessage,
    link::{
        InfoData, InfoKind, InfoMacVlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
        MacVlanMode,
    },
};

use super::{Netlink, Request};
use crate::{Netns, Result};

impl Netlink {
    /// Creates a macvlan (mode bridge) child of `parent` (an ifindex in this socket's netns)
    /// called `name`, in one RTM_NEWLINK: directly inside `netns` when given (down there), else
    /// here (up). Fails with errno EEXIST when `name` exists where it is created.
    pub fn create_macvlan(
        &mut self,
        name: &str,
        parent: u32,
        netns: Option<&Netns>,
        mac: Option<[u8; 6]>,
        mtu: Option<u32>,
    ) -> Result<()> {
        let mut msg = LinkMessage::default();
        if netns.is_none() {
            msg.header.flags = LinkFlags::Up;
            msg.header.change_mask = LinkFlags::Up;
        }
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        msg.attributes.push(LinkAttribute::Link(parent));
        if let Some(ns) = netns {
            msg.attributes
                .push(LinkAttribute::NetNsFd(ns.as_fd().as_raw_fd()));
        }
        if let Some(mtu) = mtu {
            msg.attributes.push(LinkAttribute::Mtu(mtu));
        }
        if let Some(mac) = mac {
            msg.attributes.push(LinkAttribute::Address(mac.to_vec()));
        }
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::MacVlan),
            LinkInfo::Data(InfoData::MacVlan(vec![InfoMacVlan::Mode(
                MacVlanMode::Bridge,
            )])),
        ]));
        let op = match netns {
            Some(ns) => format!(
                "create macvlan {name:?} on link index {parent} in netns {}",
                ns.path().display()
            ),
            None => format!("create macvlan {name:?} on link index {parent}"),
        };
        self.request(Request::new(
            op,
            RouteNetlinkMessage::NewLink(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        ))?;
        Ok(())
    }
}
