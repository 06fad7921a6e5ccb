//! A tc-ingress BPF fast path for routed pods: two small programs, assembled by hand (no BPF
//! toolchain), loaded with `bpf(BPF_PROG_LOAD)` and attached with [`Netlink::attach_ingress`].
//!
//! - [`FastPath::to_pods`], on a node's uplink or VXLAN device: a packet for a local pod (a
//!   route in the given table, where the pods' /32 and /128 routes are copied) is handed
//!   straight to the pod with `bpf_redirect_peer`, into the ingress of the veth's pod end.
//! - [`FastPath::from_pod`], on a pod's host-side veth: a packet to an address in one of the
//!   cluster pools leaves by the device the node's FIB names, with `bpf_redirect`.
//!
//! Both forward only a packet that is IPv4 without options and not a fragment, or IPv6 whose
//! next header is TCP or UDP (no extension header); that has TTL (hop limit) > 1, is TCP or
//! UDP, belongs to no connection the node's conntrack tracks (kfunc `bpf_skb_ct_lookup` finds
//! nothing), and whose FIB lookup succeeds with a resolved neighbour. They rewrite the MACs from
//! the lookup and decrement the TTL (IPv4 checksum updated as `ip_decrease_ttl` does; IPv6 has
//! none). Everything else returns `TC_ACT_UNSPEC` and takes the node's stack: ICMP and other
//! protocols, IPv4 options and fragments, IPv6 extension headers, the first packets before the
//! neighbour is known, and packets of tracked connections, which is what keeps a Service's
//! DNAT (and its reply's un-DNAT) and masquerading working. `TC_ACT_UNSPEC` gives no verdict,
//! so other tc filters on the same hook after Weft's still see those packets.
//!
//! VXLAN (with a [`Vtep`], VXLAN over IPv4, IPv4 pods): `from_pod` encapsulates by itself
//! what the FIB routes to the node's VXLAN device (`bpf_skb_adjust_room` with the tunnel flags,
//! so a TCP segmentation-offload packet stays one packet until a device segments it) and sends
//! it out of the underlay device the FIB names for the peer; `to_pods` on the uplink takes
//! apart a VXLAN packet to this node whose inner packet is for a local pod and hands that to
//! the pod. Neither the UDP socket, the VXLAN device nor the node's forwarding sees such
//! packets. IPv6 pods, and packets for other destinations, take the VXLAN device as before.
//!
//! What they bypass: the node's netfilter (nftables forward and postrouting hooks, and
//! prerouting for a connection it has not seen) for fast-pathed packets, the forwarding
//! counters (`IpForwDatagrams`) and the node's routing policy rules (the lookup is the main
//! table, or the given table directly). A network policy enforced with nftables in the node
//! would not see these packets. Note that a connection starts in the fast path only when the
//! node tracks none: with a conntrack that sees every forwarded packet, a flow whose first
//! packets took the stack (neighbour not yet resolved) stays on the stack until its entry
//! expires.
//!
//! Needs Linux 6.x with BTF (`/sys/kernel/btf/vmlinux`), the conntrack kfuncs (nf_conntrack
//! built in or loaded) and `bpf_redirect_peer` (5.10); loading needs CAP_BPF and CAP_NET_ADMIN.
//! A load the verifier refuses is an [`Error::Bpf`] carrying the verifier's log.
//!
//! [`Netlink::attach_ingress`]: crate::Netlink::attach_ingress

pub mod asm;
mod btf;
mod fastpath;

use std::io;
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd};

pub use btf::kfunc_btf_id;
pub use fastpath::{FastPath, Vtep};

use crate::{Error, Result};
use asm::Insn;

/// `BPF_PROG_LOAD` (linux/bpf.h `enum bpf_cmd`).
const BPF_PROG_LOAD: libc::c_int = 5;
/// `BPF_PROG_TYPE_SCHED_CLS`: a tc classifier (cls_bpf).
const PROG_TYPE_SCHED_CLS: u32 = 3;
/// Longest program name the kernel keeps (BPF_OBJ_NAME_LEN - 1).
pub const MAX_NAME: usize = 15;

/// The routing table `to_pods` looks in: the plugin copies each fast-path pod's /32 and /128
/// (via its host veth) into it, so only the node's own pods match.
pub const POD_TABLE: u32 = 87;
/// Verifier log buffer for a refused program: the log of a program this size fits easily.
const LOG_SIZE: usize = 1 << 20;
/// The kfuncs and `bpf_redirect_peer` are GPL-only.
const LICENSE: &[u8] = b"Dual MIT/GPL\0";

/// A loaded BPF program. The kernel frees it when the fd closes and no filter holds it.
#[derive(Debug)]
pub struct Program {
    name: String,
    fd: OwnedFd,
    insn_count: usize,
}

impl Program {
    /// The program's name, also the name of the tc filter that attaches it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Number of instructions loaded.
    pub fn insn_count(&self) -> usize {
        self.insn_count
    }
}

impl AsFd for Program {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// The first part of `union bpf_attr` for `BPF_PROG_LOAD`, up to `expected_attach_type`; the
/// kernel treats the fields it has and this struct lacks as zero.
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// Loads `insns` as a tc classifier called `name`. Loaded first without a log (a log costs
/// verifier time); when the kernel refuses, loaded again with `log_level` 1 so the error can
/// carry the verifier's explanation.
pub fn load(name: &str, insns: &[Insn]) -> Result<Program> {
    if name.is_empty()
        || name.len() > MAX_NAME
        || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    {
        return Err(Error::Invalid(format!(
            "BPF program name {name:?}: use 1 to {MAX_NAME} ASCII letters, digits or '_'"
        )));
    }
    let code: Vec<u8> = insns.iter().flat_map(Insn::encode).collect();
    let mut attr = ProgLoadAttr {
        prog_type: PROG_TYPE_SCHED_CLS,
        insn_cnt: insns.len() as u32,
        insns: code.as_ptr() as u64,
        license: LICENSE.as_ptr() as u64,
        ..ProgLoadAttr::default()
    };
    attr.prog_name[..name.len()].copy_from_slice(name.as_bytes());
    let fd = match prog_load(&attr) {
        Ok(fd) => fd,
        Err(_) => {
            let mut log = vec![0u8; LOG_SIZE];
            attr.log_level = 1;
            attr.log_size = LOG_SIZE as u32;
            attr.log_buf = log.as_mut_ptr() as u64;
            match prog_load(&attr) {
                Ok(fd) => fd, // refused once, then accepted: keep it
                Err(e) => {
                    let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
                    return Err(Error::Bpf {
                        op: format!("load BPF program {name} ({} instructions)", insns.len()),
                        errno: e.raw_os_error().unwrap_or(0),
                        msg: e.to_string(),
                        log: String::from_utf8_lossy(&log[..end]).trim_end().to_string(),
                    });
                }
            }
        }
    };
    Ok(Program {
        name: name.to_string(),
        fd,
        insn_count: insns.len(),
    })
}

/// `bpf(BPF_PROG_LOAD, attr)`: the new program's fd.
fn prog_load(attr: &ProgLoadAttr) -> io::Result<OwnedFd> {
    // SAFETY: `attr` is a live, fully initialised `bpf_attr` prefix of the size passed; the
    // pointers in it (instructions, license, log buffer) point at buffers the caller keeps
    // alive for this call, and the log's size is its length.
    #[allow(unsafe_code)]
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_LOAD,
            attr as *const ProgLoadAttr,
            std::mem::size_of::<ProgLoadAttr>(),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = libc::c_int::try_from(rc).map_err(|_| io::Error::other("bpf returned a bad fd"))?;
    // SAFETY: the kernel just returned this fd for a new program; nothing else owns it.
    #[allow(unsafe_code)]
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}
