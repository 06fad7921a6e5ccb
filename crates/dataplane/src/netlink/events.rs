//! Kernel events that touch Weft's objects: an rtnetlink socket subscribed to the route (IPv4,
//! IPv6), neighbour and link multicast groups of the namespace it is opened in. It only says
//! "something of ours changed"; the reconcile that follows looks at the kernel by level.
//!
//! Ours: routes with protocol [`RTPROT_WEFT`] and a gateway (the agent's; see
//! [`Netlink::weft_routes`](super::Netlink::weft_routes)), FDB and neighbour entries on the VXLAN
//! device, the VXLAN device itself and the underlay link
//! (the kernel drops routes through a link that goes down without telling the route group).
//! A lost notification (the socket's buffer overflowed) counts as a change.

use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::link::{LinkAttribute, LinkMessage};
use netlink_packet_route::route::{RouteAttribute, RouteMessage, RouteProtocol};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

use super::{Messages, RTPROT_WEFT, recv};
use crate::{Error, Result};

/// rtnetlink multicast groups (`RTNLGRP_*` in linux/rtnetlink.h).
pub const RTNLGRP_LINK: u32 = 1;
pub const RTNLGRP_NEIGH: u32 = 3;
pub const RTNLGRP_IPV4_ROUTE: u32 = 7;
pub const RTNLGRP_IPV6_ROUTE: u32 = 11;

const RX_BUFFER: usize = 256 * 1024;
const SOCKET_BUFFER: usize = 4 * 1024 * 1024;

/// What the watcher considers Weft's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interest {
    /// The VXLAN device's name, when the mode uses one.
    pub vxlan_name: Option<String>,
    /// Its index as last seen (updated from link notifications: a recreated device has a new one).
    pub vxlan_index: Option<u32>,
    pub underlay_index: u32,
}

impl Interest {
    /// Whether `msg` touches one of Weft's objects; keeps the VXLAN device's index current.
    pub(crate) fn touches(&mut self, msg: &RouteNetlinkMessage) -> bool {
        match msg {
            RouteNetlinkMessage::NewRoute(r) | RouteNetlinkMessage::DelRoute(r) => {
                is_agent_route(r)
            }
            RouteNetlinkMessage::NewNeighbour(n) | RouteNetlinkMessage::DelNeighbour(n) => {
                self.vxlan_index == Some(n.header.ifindex)
            }
            RouteNetlinkMessage::NewLink(l) => {
                if self.is_vxlan_name(l) {
                    self.vxlan_index = Some(l.header.index);
                    return true;
                }
                self.is_ours(l.header.index)
            }
            RouteNetlinkMessage::DelLink(l) => {
                let ours = self.is_ours(l.header.index) || self.is_vxlan_name(l);
                if self.vxlan_index == Some(l.header.index) {
                    self.vxlan_index = None;
                }
                ours
            }
            _ => false,
        }
    }

    fn is_ours(&self, index: u32) -> bool {
        index == self.underlay_index || Some(index) == self.vxlan_index
    }

    fn is_vxlan_name(&self, l: &LinkMessage) -> bool {
        let Some(want) = &self.vxlan_name else {
            return false;
        };
        l.attributes
            .iter()
            .any(|a| matches!(a, LinkAttribute::IfName(n) if n == want))
    }
}

/// Protocol 87 with a gateway: the agent's routes (the plugin's pod routes have no gateway).
fn is_agent_route(r: &RouteMessage) -> bool {
    r.header.protocol == RouteProtocol::Other(RTPROT_WEFT)
        && r.attributes.iter().any(|a| {
            matches!(
                a,
                RouteAttribute::Gateway(_) | RouteAttribute::Via(_) | RouteAttribute::MultiPath(_)
            )
        })
}

/// A socket on the route, neighbour and link groups of the current namespace.
pub struct Watcher {
    socket: Socket,
    rx: Vec<u8>,
    pub interest: Interest,
}

impl Watcher {
    /// Subscribes to the route, neighbour and link groups of the calling thread's namespace.
    pub fn open(interest: Interest) -> Result<Watcher> {
        let mut socket =
            Socket::new(NETLINK_ROUTE).map_err(|e| Error::io("open rtnetlink event socket", e))?;
        socket
            .bind(&SocketAddr::new(0, 0))
            .map_err(|e| Error::io("bind rtnetlink event socket", e))?;
        // Best effort: a larger buffer loses fewer events under a burst; a lost one is seen.
        let _ = socket.set_rx_buf_sz(SOCKET_BUFFER);
        for g in [
            RTNLGRP_LINK,
            RTNLGRP_NEIGH,
            RTNLGRP_IPV4_ROUTE,
            RTNLGRP_IPV6_ROUTE,
        ] {
            socket
                .add_membership(g)
                .map_err(|e| Error::io(format!("join rtnetlink group {g}"), e))?;
        }
        Ok(Watcher {
            socket,
            rx: Vec::with_capacity(RX_BUFFER),
            interest,
        })
    }

    /// Waits for the next datagram; whether it touched Weft's objects (or events were lost).
    pub fn wait(&mut self) -> Result<bool> {
        let n = match recv(&self.socket, &mut self.rx) {
            Ok(n) => n.min(self.rx.len()),
            // The socket's buffer overflowed: events were lost, so assume ours among them.
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => return Ok(true),
            Err(e) => return Err(Error::io("receive rtnetlink events", e)),
        };
        let mut touched = false;
        for raw in Messages::new(&self.rx[..n]) {
            let Ok(raw) = raw else { break };
            // A message this crate cannot decode is not one of the kinds we look at.
            if let Ok(msg) = NetlinkMessage::<RouteNetlinkMessage>::deserialize(raw)
                && let NetlinkPayload::InnerMessage(inner) = msg.payload
            {
                // Every message is looked at: link messages keep the device's index current.
                touched |= self.interest.touches(&inner);
            }
        }
        Ok(touched)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_route::neighbour::NeighbourMessage;
    use netlink_packet_route::route::RouteAddress;

    fn interest() -> Interest {
        Interest {
            vxlan_name: Some("weft.vx".into()),
            vxlan_index: Some(7),
            underlay_index: 2,
        }
    }

    #[test]
    fn routes_of_the_agent_only() {
        let mut i = interest();
        let mut r = RouteMessage::default();
        r.header.protocol = RouteProtocol::Other(RTPROT_WEFT);
        // A pod route (no gateway) is the plugin's.
        assert!(!i.touches(&RouteNetlinkMessage::DelRoute(r.clone())));
        r.attributes
            .push(RouteAttribute::Gateway(RouteAddress::Inet(
                "198.51.100.3".parse().unwrap(),
            )));
        assert!(i.touches(&RouteNetlinkMessage::DelRoute(r.clone())));
        assert!(i.touches(&RouteNetlinkMessage::NewRoute(r.clone())));
        r.header.protocol = RouteProtocol::Boot;
        assert!(!i.touches(&RouteNetlinkMessage::DelRoute(r)));
    }

    #[test]
    fn neighbours_and_links() {
        let mut i = interest();
        let mut n = NeighbourMessage::default();
        n.header.ifindex = 7;
        assert!(i.touches(&RouteNetlinkMessage::DelNeighbour(n.clone())));
        n.header.ifindex = 3;
        assert!(!i.touches(&RouteNetlinkMessage::NewNeighbour(n.clone())));

        let mut l = LinkMessage::default();
        l.header.index = 9;
        assert!(!i.touches(&RouteNetlinkMessage::NewLink(l.clone())));
        l.header.index = 2;
        assert!(i.touches(&RouteNetlinkMessage::NewLink(l.clone())));
        // The device deleted, then recreated with a new index.
        l.header.index = 7;
        assert!(i.touches(&RouteNetlinkMessage::DelLink(l.clone())));
        assert_eq!(i.vxlan_index, None);
        l.header.index = 12;
        l.attributes.push(LinkAttribute::IfName("weft.vx".into()));
        assert!(i.touches(&RouteNetlinkMessage::NewLink(l)));
        assert_eq!(i.vxlan_index, Some(12));
        n.header.ifindex = 12;
        assert!(i.touches(&RouteNetlinkMessage::NewNeighbour(n)));
    }
}
