//! Pipelined requests: everything goes out in one `send`, then every ack is read.

use std::net::IpAddr;

use ipnet::IpNet;

use super::{FdbEntry, Netlink, Request, address, link, neigh, route};
use crate::{Error, Result};

/// Requests queued on a [`Netlink`] socket, sent together by [`Batch::commit`].
///
/// The kernel runs them in order and answers each; it does not stop at a failure, so requests
/// after a failing one still run. `commit` reports the first failure, named by its step.
/// Build it in one expression: `nl.batch().set_up(i).add_address(i, net, true).commit()?`.
pub struct Batch<'a> {
    nl: &'a mut Netlink,
    reqs: Vec<Request>,
    /// A request that could not even be built (for example a mixed-family route).
    invalid: Option<Error>,
}

impl<'a> Batch<'a> {
    pub(super) fn new(nl: &'a mut Netlink) -> Batch<'a> {
        Batch {
            nl,
            reqs: Vec::new(),
            invalid: None,
        }
    }

    /// Sets the link up.
    pub fn set_up(&mut self, index: u32) -> &mut Self {
        self.push(link::set_up_request(index, true))
    }

    /// Sets the link down.
    pub fn set_down(&mut self, index: u32) -> &mut Self {
        self.push(link::set_up_request(index, false))
    }

    /// Sets the link's MTU.
    pub fn set_mtu(&mut self, index: u32, mtu: u32) -> &mut Self {
        self.push(link::set_mtu_request(index, mtu))
    }

    /// Enslaves the link to `master`.
    pub fn set_master(&mut self, index: u32, master: u32) -> &mut Self {
        self.push(link::set_master_request(index, master))
    }

    /// Sets the link's alias.
    pub fn set_alias(&mut self, index: u32, alias: &str) -> &mut Self {
        self.push(link::set_alias_request(index, alias))
    }

    /// Deletes the link.
    pub fn delete_link(&mut self, index: u32) -> &mut Self {
        self.push(link::delete_link_request(index))
    }

    /// As [`Netlink::add_address`] (an existing address is success).
    pub fn add_address(&mut self, index: u32, net: IpNet, nodad: bool) -> &mut Self {
        self.push(address::add_address_request(index, net, nodad))
    }

    /// As [`Netlink::delete_address`].
    pub fn delete_address(&mut self, index: u32, net: IpNet) -> &mut Self {
        self.push(address::delete_address_request(index, net))
    }

    /// As [`Netlink::add_route`].
    pub fn add_route(&mut self, r: &route::Route) -> &mut Self {
        match route::add_route_request(r) {
            Ok(req) => self.push(req),
            Err(e) => self.fail(e),
        }
    }

    /// As [`Netlink::delete_route`].
    pub fn delete_route(&mut self, r: &route::Route) -> &mut Self {
        match route::delete_route_request(r) {
            Ok(req) => self.push(req),
            Err(e) => self.fail(e),
        }
    }

    /// As [`Batch::delete_route`], but a route already gone is success.
    pub fn delete_route_if_present(&mut self, r: &route::Route) -> &mut Self {
        match route::delete_route_if_present_request(r) {
            Ok(req) => self.push(req),
            Err(e) => self.fail(e),
        }
    }

    /// Adds or replaces a unicast FDB entry of device `ifindex` (NTF_SELF, permanent): frames
    /// to `e.mac` are sent to the VTEP at `e.dst` (`bridge fdb replace ... self permanent`).
    pub fn replace_fdb(&mut self, ifindex: u32, e: &FdbEntry) -> &mut Self {
        self.push(neigh::replace_fdb_request(ifindex, e))
    }

    /// Deletes that FDB entry; one already gone is success.
    pub fn delete_fdb(&mut self, ifindex: u32, e: &FdbEntry) -> &mut Self {
        self.push(neigh::delete_fdb_request(ifindex, e))
    }

    /// Adds or replaces a permanent neighbour entry `ip lladdr mac` on device `ifindex`.
    pub fn replace_neighbour(&mut self, ifindex: u32, ip: IpAddr, mac: [u8; 6]) -> &mut Self {
        self.push(neigh::replace_neighbour_request(ifindex, ip, mac))
    }

    /// Deletes the neighbour entry of `ip` on device `ifindex`; one already gone is success.
    pub fn delete_neighbour(&mut self, ifindex: u32, ip: IpAddr) -> &mut Self {
        self.push(neigh::delete_neighbour_request(ifindex, ip))
    }

    /// Number of queued requests.
    pub fn len(&self) -> usize {
        self.reqs.len()
    }

    /// True when nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.reqs.is_empty()
    }

    /// Sends every queued request at once and waits for all answers. The error names the first
    /// failing step ("step 3 of 6: add route ...") and keeps its errno. Nothing is sent when a
    /// request could not be built. The batch is empty afterwards.
    pub fn commit(&mut self) -> Result<()> {
        let reqs = std::mem::take(&mut self.reqs);
        if let Some(e) = self.invalid.take() {
            return Err(e);
        }
        if reqs.is_empty() {
            return Ok(());
        }
        self.nl.execute(reqs, true)?;
        Ok(())
    }

    fn push(&mut self, req: Request) -> &mut Self {
        self.reqs.push(req);
        self
    }

    fn fail(&mut self, e: Error) -> &mut Self {
        if self.invalid.is_none() {
            self.invalid = Some(e);
        }
        self
    }
}
