//! Netlink operations the dataplane crate does not offer yet, on netlink-packet-route =0.34
//! in the same synchronous style as `weft_dataplane`'s client (one socket; requests sent
//! together in one `send`, answers matched by sequence number):
//! - [`vxlan`]: create or check the VXLAN device;
//! - [`neigh`]: FDB entries (AF_BRIDGE, NTF_SELF) and neighbour entries on a device;
//! - [`route`]: Weft's routes with their protocol (the dataplane's route dump drops it).
//! - [`events`]: notifications of changes to those objects.
//!
//! These belong in `weft-dataplane` eventually; they live here until it grows them.

pub mod events;
pub mod neigh;
pub mod route;
pub mod vxlan;

use std::io;

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_REQUEST, NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{Socket, protocols::NETLINK_ROUTE};

/// What failed in a kernel operation, naming the operation and its object.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// The kernel refused a request; `errno` is positive.
    #[error("{op}: {msg} (errno {errno})")]
    Netlink { op: String, errno: i32, msg: String },
    #[error("{op}: {source}")]
    Io {
        op: String,
        #[source]
        source: io::Error,
    },
    #[error("{op}: cannot decode the kernel's reply: {msg}")]
    Decode { op: String, msg: String },
    /// An object exists but is not what Weft needs (for example a non-VXLAN link of our name).
    #[error("{op}: {msg}")]
    Conflict { op: String, msg: String },
}

impl KernelError {
    pub fn errno(&self) -> Option<i32> {
        match self {
            KernelError::Netlink { errno, .. } => Some(*errno),
            KernelError::Io { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

pub type Result<T, E = KernelError> = std::result::Result<T, E>;

const RX_BUFFER: usize = 64 * 1024;

/// One request: what it is (for messages), the message, extra flags, errnos that count as
/// success.
pub struct Request {
    pub op: String,
    pub msg: RouteNetlinkMessage,
    pub flags: u16,
    pub tolerate: &'static [i32],
}

/// Errnos of deleting something that is already gone.
pub const GONE: &[i32] = &[libc::ENOENT, libc::ESRCH, libc::ENODEV, libc::EADDRNOTAVAIL];

/// A synchronous rtnetlink socket in the namespace it was created in.
pub struct Rtnl {
    socket: Socket,
    seq: u32,
    rx: Vec<u8>,
}

impl Rtnl {
    pub fn new() -> Result<Rtnl> {
        let io = |source| KernelError::Io {
            op: "open rtnetlink socket".into(),
            source,
        };
        let socket = Socket::new(NETLINK_ROUTE).map_err(io)?;
        socket
            .set_ext_ack(true)
            .and_then(|()| socket.set_netlink_get_strict_chk(true))
            .map_err(io)?;
        Ok(Rtnl {
            socket,
            seq: 0,
            rx: Vec::with_capacity(RX_BUFFER),
        })
    }

    /// Sends one request and returns the messages it got back (a dump's entries, an echo).
    pub fn request(&mut self, req: Request) -> Result<Vec<RouteNetlinkMessage>> {
        Ok(self.execute(vec![req])?.pop().unwrap_or_default())
    }

    /// Sends every request in one `send`, reads until each is answered, and returns each one's
    /// messages. The first failing request (in order) is the error; the kernel still runs the
    /// ones after it.
    pub fn execute(&mut self, reqs: Vec<Request>) -> Result<Vec<Vec<RouteNetlinkMessage>>> {
        if reqs.is_empty() {
            return Ok(Vec::new());
        }
        let first_seq = self.seq.wrapping_add(1);
        let mut tx = Vec::with_capacity(4096);
        for req in &reqs {
            self.seq = self.seq.wrapping_add(1);
            let mut header = NetlinkHeader::default();
            header.flags = NLM_F_REQUEST | NLM_F_ACK | req.flags;
            header.sequence_number = self.seq;
            let mut msg =
                NetlinkMessage::new(header, NetlinkPayload::InnerMessage(req.msg.clone()));
            msg.finalize();
            let start = tx.len();
            let len = msg.buffer_len();
            tx.resize(start + align4(len), 0);
            msg.serialize(&mut tx[start..start + len]);
        }
        let whole = if reqs.len() == 1 {
            reqs[0].op.clone()
        } else {
            format!("batch of {} starting with {}", reqs.len(), reqs[0].op)
        };
        let n = self.socket.send(&tx, 0).map_err(|source| KernelError::Io {
            op: format!("{whole}: send"),
            source,
        })?;
        if n != tx.len() {
            return Err(KernelError::Io {
                op: format!("{whole}: send"),
                source: io::Error::other(format!("short send: {n} of {} bytes", tx.len())),
            });
        }
        let mut out: Vec<Vec<RouteNetlinkMessage>> = vec![Vec::new(); reqs.len()];
        let mut done = vec![false; reqs.len()];
        let mut pending = reqs.len();
        let mut failure: Option<(usize, KernelError)> = None;
        while pending > 0 {
            self.rx.clear();
            let n = loop {
                match self.socket.recv(&mut self.rx, 0) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(source) => {
                        return Err(KernelError::Io {
                            op: format!("{whole}: receive"),
                            source,
                        });
                    }
                }
            };
            let n = n.min(self.rx.len());
            let mut offset = 0;
            while offset + 16 <= n {
                let buf = &self.rx[offset..n];
                let len = NetlinkBuffer::new_checked(buf)
                    .map_err(|e| KernelError::Decode {
                        op: whole.clone(),
                        msg: e.to_string(),
                    })?
                    .length() as usize;
                let raw = &buf[..len.min(buf.len())];
                offset += align4(len.max(16));
                let seq = u32::from_ne_bytes([raw[8], raw[9], raw[10], raw[11]]);
                let i = seq.wrapping_sub(first_seq) as usize;
                if i >= reqs.len() || done[i] {
                    continue;
                }
                let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(raw).map_err(|e| {
                    KernelError::Decode {
                        op: reqs[i].op.clone(),
                        msg: e.to_string(),
                    }
                })?;
                let errno = match msg.payload {
                    NetlinkPayload::InnerMessage(inner) => {
                        out[i].push(inner);
                        continue;
                    }
                    NetlinkPayload::Error(err) => -err.raw_code(),
                    NetlinkPayload::Done(d) => -d.code,
                    _ => continue,
                };
                done[i] = true;
                pending -= 1;
                if errno != 0
                    && !reqs[i].tolerate.contains(&errno)
                    && failure.as_ref().is_none_or(|(j, _)| i < *j)
                {
                    failure = Some((
                        i,
                        KernelError::Netlink {
                            op: reqs[i].op.clone(),
                            errno,
                            msg: io::Error::from_raw_os_error(errno).to_string(),
                        },
                    ));
                }
            }
        }
        match failure {
            Some((_, e)) => Err(e),
            None => Ok(out),
        }
    }
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}
