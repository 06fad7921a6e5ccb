//! A small synchronous rtnetlink client: one socket, one sequence counter, requests serialized
//! back to back into one `send`, replies matched to requests by sequence number.
//!
//! Everything Weft does over rtnetlink goes through [`Netlink`] (and its [`Batch`]): links,
//! addresses, routes, the VXLAN device ([`vxlan`]), FDB and neighbour entries ([`neigh`]).
//! The one other socket is [`events::Watcher`], subscribed to change notifications; it shares
//! the datagram parsing here.

mod address;
mod batch;
pub mod events;
mod link;
mod macvlan;
pub mod neigh;
mod route;
mod tc;
pub mod vxlan;

use std::io;
use std::os::fd::AsRawFd;

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_REQUEST, NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{Socket, protocols::NETLINK_ROUTE};

use crate::{Error, Netns, Result};

pub use address::Address;
pub use batch::Batch;
pub use link::{Link, VethSpec};
pub use neigh::{FdbEntry, Neighbour};
pub use route::{RTPROT_WEFT, Route};
pub use vxlan::{VxlanInfo, VxlanSpec};

/// Big enough for any datagram the kernel sends: dumps are cut at 32 KiB per datagram.
const RX_BUFFER: usize = 64 * 1024;
/// `NLM_F_CAPPED` and `NLM_F_ACK_TLVS` in an error message's header (linux/netlink.h).
const NLM_F_CAPPED: u16 = 0x100;
const NLM_F_ACK_TLVS: u16 = 0x200;
/// `NLMSGERR_ATTR_MSG`: the extended ack's human-readable text.
const NLMSGERR_ATTR_MSG: u16 = 1;
/// `SO_NETNS_COOKIE` (asm-generic/socket.h; the same on x86_64 and arm64).
const SO_NETNS_COOKIE: libc::c_int = 71;

/// A synchronous rtnetlink socket, bound to the network namespace it was created in.
pub struct Netlink {
    socket: Socket,
    seq: u32,
    tx: Vec<u8>,
    rx: Vec<u8>,
}

/// One request of a transaction.
pub(crate) struct Request {
    /// Names the operation and its object, for error messages.
    op: String,
    msg: RouteNetlinkMessage,
    /// Extra `NLM_F_*` flags besides `NLM_F_REQUEST | NLM_F_ACK`.
    flags: u16,
    /// Errnos that count as success for this request (for example EEXIST for an idempotent add).
    tolerate: &'static [i32],
}

impl Request {
    pub(crate) fn new(op: String, msg: RouteNetlinkMessage, flags: u16) -> Request {
        Request {
            op,
            msg,
            flags,
            tolerate: &[],
        }
    }

    pub(crate) fn tolerate(mut self, errnos: &'static [i32]) -> Request {
        self.tolerate = errnos;
        self
    }
}

/// What the kernel answered to one request: messages it sent (dump entries, a GET's answer,
/// an echo) and the errno it ended with (0 on success, or one the request tolerates).
pub(crate) struct Reply {
    pub(crate) errno: i32,
    pub(crate) msgs: Vec<RouteNetlinkMessage>,
}

impl Netlink {
    /// A socket in the calling thread's current network namespace.
    pub fn new() -> Result<Netlink> {
        let socket =
            Socket::new(NETLINK_ROUTE).map_err(|e| Error::io("open rtnetlink socket", e))?;
        // Errors then carry the kernel's text ("Nexthop has invalid gateway") and a short copy
        // of the request; strict checking lets dumps filter by interface and table in the kernel.
        socket
            .set_ext_ack(true)
            .and_then(|()| socket.set_cap_ack(true))
            .and_then(|()| socket.set_netlink_get_strict_chk(true))
            .map_err(|e| Error::io("configure rtnetlink socket", e))?;
        Ok(Netlink {
            socket,
            seq: 0,
            tx: Vec::with_capacity(4096),
            rx: Vec::with_capacity(RX_BUFFER),
        })
    }

    /// A socket inside `ns`: switches this thread into `ns`, creates the socket and switches back.
    /// The socket keeps working in `ns` from any thread.
    pub fn in_netns(ns: &Netns) -> Result<Netlink> {
        ns.run_in(Netlink::new)?
    }

    /// The `SO_NETNS_COOKIE` of the namespace this socket lives in.
    pub fn netns_cookie(&self) -> Result<u64> {
        let mut cookie: u64 = 0;
        let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` (8) bytes into `cookie`, a live u64.
        #[allow(unsafe_code)]
        let rc = unsafe {
            libc::getsockopt(
                self.socket.as_raw_fd(),
                libc::SOL_SOCKET,
                SO_NETNS_COOKIE,
                (&mut cookie as *mut u64).cast(),
                &mut len,
            )
        };
        if rc != 0 {
            return Err(Error::io(
                "getsockopt SO_NETNS_COOKIE",
                io::Error::last_os_error(),
            ));
        }
        Ok(cookie)
    }

    /// Starts a pipelined batch: requests are sent together in one `send`, then all acks read.
    pub fn batch(&mut self) -> Batch<'_> {
        Batch::new(self)
    }

    /// Sends one request and waits for its answer.
    pub(crate) fn request(&mut self, req: Request) -> Result<Reply> {
        let mut replies = self.execute(vec![req], false)?;
        Ok(replies.pop().unwrap_or(Reply {
            errno: 0,
            msgs: Vec::new(),
        }))
    }

    /// Sends every request in one `send` and reads until each one is answered (an ack, an error
    /// or the end of its dump). The first failing request, in request order, is the error;
    /// with `numbered` its op is prefixed with its position ("step 2 of 5").
    pub(crate) fn execute(&mut self, reqs: Vec<Request>, numbered: bool) -> Result<Vec<Reply>> {
        let first_seq = self.seq.wrapping_add(1);
        self.tx.clear();
        for req in &reqs {
            self.seq = self.seq.wrapping_add(1);
            let mut header = NetlinkHeader::default();
            header.flags = NLM_F_REQUEST | NLM_F_ACK | req.flags;
            header.sequence_number = self.seq;
            let mut msg =
                NetlinkMessage::new(header, NetlinkPayload::InnerMessage(req.msg.clone()));
            msg.finalize();
            let start = self.tx.len();
            let len = msg.buffer_len();
            self.tx.resize(start + align4(len), 0);
            msg.serialize(&mut self.tx[start..start + len]);
        }
        let op_of = |i: usize| -> String {
            if numbered {
                format!("step {} of {}: {}", i + 1, reqs.len(), reqs[i].op)
            } else {
                reqs[i].op.clone()
            }
        };
        let whole = || match reqs.len() {
            1 => reqs[0].op.clone(),
            n => format!("batch of {n} requests starting with {}", reqs[0].op),
        };
        send_all(&self.socket, &self.tx).map_err(|e| Error::io(format!("{}: send", whole()), e))?;

        let mut replies: Vec<Option<Reply>> = (0..reqs.len()).map(|_| None).collect();
        let mut partial: Vec<Vec<RouteNetlinkMessage>> = vec![Vec::new(); reqs.len()];
        let mut failure: Option<(usize, Error)> = None;
        let mut pending = reqs.len();
        while pending > 0 {
            let n = recv(&self.socket, &mut self.rx)
                .map_err(|e| Error::io(format!("{}: receive", whole()), e))?;
            if n > self.rx.len() {
                return Err(Error::Decode {
                    op: whole(),
                    msg: format!("datagram of {n} bytes truncated to {}", self.rx.len()),
                });
            }
            for raw in Messages::new(&self.rx[..n]) {
                let raw = raw.map_err(|msg| Error::Decode { op: whole(), msg })?;
                let header_seq = u32::from_ne_bytes([raw[8], raw[9], raw[10], raw[11]]);
                let i = header_seq.wrapping_sub(first_seq) as usize;
                if i >= reqs.len() || replies[i].is_some() {
                    continue; // a late answer to an earlier, abandoned request
                }
                let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(raw).map_err(|e| {
                    Error::Decode {
                        op: op_of(i),
                        msg: e.to_string(),
                    }
                })?;
                let (errno, text) = match msg.payload {
                    NetlinkPayload::InnerMessage(inner) => {
                        partial[i].push(inner);
                        continue;
                    }
                    NetlinkPayload::Error(err) => {
                        (-err.raw_code(), ext_ack_text(msg.header.flags, &err.header))
                    }
                    NetlinkPayload::Done(done) => (-done.code, None),
                    _ => continue,
                };
                pending -= 1;
                let msgs = std::mem::take(&mut partial[i]);
                if errno != 0
                    && !reqs[i].tolerate.contains(&errno)
                    && failure.as_ref().is_none_or(|(j, _)| i < *j)
                {
                    failure = Some((i, netlink_error(op_of(i), errno, text)));
                }
                replies[i] = Some(Reply { errno, msgs });
            }
        }
        if let Some((_, e)) = failure {
            return Err(e);
        }
        Ok(replies.into_iter().flatten().collect())
    }
}

/// Receives one datagram into `rx` (cleared first), retrying on EINTR; its full length, which
/// is more than `rx.len()` when the kernel had to truncate it.
fn recv(socket: &Socket, rx: &mut Vec<u8>) -> io::Result<usize> {
    rx.clear();
    loop {
        match socket.recv(rx, 0) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// The netlink messages of one datagram, each as its raw bytes (header included). A message
/// whose header does not fit ends the iteration with an error.
struct Messages<'a> {
    buf: &'a [u8],
    offset: usize,
}

impl<'a> Messages<'a> {
    fn new(buf: &'a [u8]) -> Messages<'a> {
        Messages { buf, offset: 0 }
    }
}

impl<'a> Iterator for Messages<'a> {
    type Item = std::result::Result<&'a [u8], String>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.offset + 16 > self.buf.len() {
            return None;
        }
        let buf = &self.buf[self.offset..];
        match NetlinkBuffer::new_checked(buf) {
            Ok(b) => {
                let len = b.length() as usize;
                self.offset += align4(len.max(16));
                Some(Ok(&buf[..len]))
            }
            Err(e) => {
                self.offset = self.buf.len();
                Some(Err(e.to_string()))
            }
        }
    }
}

/// `aa:bb:cc:dd:ee:ff`, as `ip link` shows a MAC address.
pub fn mac_string(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn send_all(socket: &Socket, buf: &[u8]) -> io::Result<()> {
    loop {
        match socket.send(buf, 0) {
            Ok(n) if n == buf.len() => return Ok(()),
            Ok(n) => {
                return Err(io::Error::other(format!(
                    "short netlink send: {n} of {} bytes",
                    buf.len()
                )));
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

fn netlink_error(op: String, errno: i32, text: Option<String>) -> Error {
    let os = io::Error::from_raw_os_error(errno).to_string();
    let msg = match text {
        Some(t) if !t.is_empty() => format!("{t}: {os}"),
        _ => os,
    };
    Error::Netlink { op, errno, msg }
}

/// The extended ack's message, if the kernel attached one. `payload` follows the errno: the
/// original request's header (and body unless capped), then the TLVs.
fn ext_ack_text(flags: u16, payload: &[u8]) -> Option<String> {
    if flags & NLM_F_ACK_TLVS == 0 || payload.len() < 16 {
        return None;
    }
    let mut off = if flags & NLM_F_CAPPED != 0 {
        16
    } else {
        align4(u32::from_ne_bytes([payload[0], payload[1], payload[2], payload[3]]) as usize)
    };
    while off + 4 <= payload.len() {
        let len = u16::from_ne_bytes([payload[off], payload[off + 1]]) as usize;
        let kind = u16::from_ne_bytes([payload[off + 2], payload[off + 3]]) & 0x3fff;
        if len < 4 || off + len > payload.len() {
            break;
        }
        if kind == NLMSGERR_ATTR_MSG {
            let value = &payload[off + 4..off + len];
            let end = value.iter().position(|&b| b == 0).unwrap_or(value.len());
            return Some(String::from_utf8_lossy(&value[..end]).into_owned());
        }
        off += align4(len);
    }
    None
}
