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
    bpf_fd(BPF_PROG_LOAD, attr)
}

/// `bpf(cmd, attr)` for a command that returns a new fd.
fn bpf_fd<T>(cmd: libc::c_int, attr: &T) -> io::Result<OwnedFd> {
    let rc = bpf(cmd, attr)?;
    let fd = libc::c_int::try_from(rc).map_err(|_| io::Error::other("bpf returned a bad fd"))?;
    // SAFETY: the kernel just returned this fd (a new program, or a new reference to one);
    // nothing else owns it.
    #[allow(unsafe_code)]
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `bpf(cmd, attr)` with `attr` a `union bpf_attr` prefix for `cmd`.
fn bpf<T>(cmd: libc::c_int, attr: &T) -> io::Result<libc::c_long> {
    // SAFETY: every caller passes a live, fully initialised `bpf_attr` prefix for `cmd` of the
    // size passed; the pointers in it (instructions, license, log or info buffer) point at
    // buffers the caller keeps alive for this call, with their true lengths.
    #[allow(unsafe_code)]
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *const T,
            std::mem::size_of::<T>(),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rc)
}

/// `BPF_PROG_GET_FD_BY_ID` and `BPF_OBJ_GET_INFO_BY_FD` (linux/bpf.h `enum bpf_cmd`).
const BPF_PROG_GET_FD_BY_ID: libc::c_int = 13;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_int = 15;
/// Where [`load_shared`] notes which program it loaded from which instructions.
pub const SHARED_DIR: &str = "/run/weft/progs";

/// The first 80 bytes of `struct bpf_prog_info`, up to and including `name`.
#[repr(C)]
#[derive(Default)]
struct ProgInfo {
    prog_type: u32,
    id: u32,
    tag: [u8; 8],
    jited_prog_len: u32,
    xlated_prog_len: u32,
    jited_prog_insns: u64,
    xlated_prog_insns: u64,
    load_time: u64,
    created_by_uid: u32,
    nr_map_ids: u32,
    map_ids: u64,
    name: [u8; 16],
}

#[repr(C)]
struct InfoByFdAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

impl Program {
    /// The kernel's id of the program (`bpftool prog show id N`).
    pub fn id(&self) -> Result<u32> {
        Ok(prog_info(self.fd.as_fd())?.id)
    }
}

fn prog_info(fd: BorrowedFd<'_>) -> Result<ProgInfo> {
    use std::os::fd::AsRawFd;
    let mut info = ProgInfo::default();
    let attr = InfoByFdAttr {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: std::mem::size_of::<ProgInfo>() as u32,
        info: &mut info as *mut ProgInfo as u64,
    };
    bpf(BPF_OBJ_GET_INFO_BY_FD, &attr)
        .map_err(|e| Error::io("bpf(BPF_OBJ_GET_INFO_BY_FD)".to_string(), e))?;
    Ok(info)
}

/// Like [`load`], but a program loaded earlier in this boot from exactly `name` and `insns`
/// that is still alive (attached somewhere) is reused instead of verified again: the verifier
/// costs each fast-path ADD a millisecond or two, and every pod of a network gets the same
/// program. `dir` (see [`SHARED_DIR`]) holds one small file per distinct program, named by a
/// hash of the name and instructions, with the boot id and the program's id; ids are not
/// reused within a boot. Anything amiss (no file, another boot, the program gone, another
/// name behind the id) means a fresh load, whose id is then written down (best effort).
pub fn load_shared(name: &str, insns: &[Insn], dir: &std::path::Path) -> Result<Program> {
    load_shared_in_boot(name, insns, dir, &crate::files::boot_id())
}

/// [`load_shared`] for a caller that has read the boot id already.
pub(crate) fn load_shared_in_boot(
    name: &str,
    insns: &[Insn],
    dir: &std::path::Path,
    boot: &str,
) -> Result<Program> {
    let key = insns
        .iter()
        .flat_map(Insn::encode)
        .chain(name.bytes())
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
        });
    let path = dir.join(format!("{name}-{key:016x}"));
    if let Some(prog) = reuse(name, insns.len(), boot, &path) {
        return Ok(prog);
    }
    let prog = load(name, insns)?;
    if !boot.is_empty()
        && let Ok(id) = prog.id()
    {
        let _ = crate::files::replace(&path, &format!("{boot} {id}\n"));
    }
    Ok(prog)
}

/// The program the file at `path` names, if written in boot `boot` and still loaded as `name`.
fn reuse(name: &str, insn_count: usize, boot: &str, path: &std::path::Path) -> Option<Program> {
    let text = std::fs::read_to_string(path).ok()?;
    let (file_boot, id) = text.trim().split_once(' ')?;
    if boot.is_empty() || file_boot != boot {
        return None;
    }
    let id: u32 = id.parse().ok()?;
    let mut attr = [0u32; 3]; // prog_id, next_id, open_flags
    attr[0] = id;
    let fd = bpf_fd(BPF_PROG_GET_FD_BY_ID, &attr).ok()?;
    let info = prog_info(fd.as_fd()).ok()?;
    let end = info.name.iter().position(|&b| b == 0).unwrap_or(16);
    (info.id == id && &info.name[..end] == name.as_bytes()).then(|| Program {
        name: name.to_string(),
        fd,
        insn_count,
    })
}
