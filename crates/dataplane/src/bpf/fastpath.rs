//! The two tc-ingress programs of the fast path, assembled by hand (see the module docs of
//! [`crate::bpf`] for what they do).

use std::net::Ipv4Addr;

use ipnet::IpNet;

use super::asm::{Alu, Asm, Cond, Insn, R0, R1, R2, R3, R4, R5, R6, R7, R8, R9, R10, Size};
use super::btf::{CACHE, cached_kfunc_btf_ids, kfunc_btf_ids};
use super::{Program, SHARED_DIR, load_shared_in_boot};
use crate::{Error, Result};

// `struct __sk_buff` offsets (linux/bpf.h).
const SKB_LEN: i16 = 0;
const SKB_INGRESS_IFINDEX: i16 = 36;
const SKB_DATA: i16 = 76;
const SKB_DATA_END: i16 = 80;
// Helper ids (linux/bpf.h `__BPF_FUNC_MAPPER`).
const HELPER_REDIRECT: i32 = 23;
const HELPER_GET_HASH_RECALC: i32 = 34;
const HELPER_SKB_PULL_DATA: i32 = 39;
const HELPER_SKB_ADJUST_ROOM: i32 = 50;
const HELPER_FIB_LOOKUP: i32 = 69;
const HELPER_REDIRECT_PEER: i32 = 155;
const HELPER_CHECK_MTU: i32 = 163;
/// `BPF_MTU_CHK_SEGS`: a TSO/GSO packet is checked segment by segment.
const MTU_CHK_SEGS: i32 = 1;
// `bpf_fib_lookup` flags.
const FIB_LOOKUP_DIRECT: i32 = 1;
const FIB_LOOKUP_TBID: i32 = 8;
/// `BPF_FIB_LKUP_RET_SUCCESS`, and `BPF_FIB_LKUP_RET_FRAG_NEEDED` (route and neighbour found,
/// but the packet as it is now would not fit the device).
const FIB_RET_SUCCESS: i32 = 0;
const FIB_RET_FRAG_NEEDED: i32 = 8;
// `bpf_skb_adjust_room`: mode and flags.
const ADJ_ROOM_MAC: i32 = 1;
/// Keep the segment size: the pod's MTU already leaves room for the tunnel headers.
const ADJ_ROOM_FIXED_GSO: i32 = 1;
const ADJ_ROOM_ENCAP_L3_IPV4: i32 = 1 << 1;
const ADJ_ROOM_ENCAP_L4_UDP: i32 = 1 << 4;
const ADJ_ROOM_ENCAP_L2_ETH: i32 = 1 << 6;
/// `BPF_ADJ_ROOM_ENCAP_L2_SHIFT`: the inner L2 header's length goes in the flags' top byte.
const ADJ_ROOM_ENCAP_L2_SHIFT: i32 = 56;
/// `TC_ACT_UNSPEC`: no verdict; the next tc filter on the hook runs, and after the last one the
/// packet takes the stack. (`TC_ACT_OK` would end the hook and skip filters after Weft's.)
const TC_ACT_UNSPEC: i32 = -1;
/// `sizeof(struct bpf_ct_opts)` (Linux 6.x; NF_BPF_CT_OPTS_SZ).
const CT_OPTS_SIZE: i32 = 16;
/// `sizeof(tuple->ipv4)` in `struct bpf_sock_tuple`: addresses and ports.
const CT_TUPLE_V4_SIZE: i32 = 12;

// The stack frame: the MTU check's length, the inner MACs of an encapsulation, the conntrack
// opts and tuple, then `struct bpf_fib_lookup` (64 bytes).
const MTU_LEN: i16 = -140;
const INNER_MACS: i16 = -136;
const INNER_TOS: i16 = -124;
/// The ECN field of the IPv4 TOS byte, and its "congestion experienced" and ECT(0) values.
const ECN_MASK: i32 = 0x03;
const ECN_CE: i32 = 0x03;
const ECN_ECT0: i32 = 0x02;
const CT_OPTS: i16 = -120;
/// Room for the IPv6 member of `struct bpf_sock_tuple` (36 bytes).
const CT_TUPLE: i16 = -104;
const FIB: i16 = -64;
/// `mtu_result` (a union with `tot_len`): the device's MTU after a lookup without `tot_len`.
const FIB_MTU_RESULT: i16 = FIB + 6;
const FIB_IFINDEX: i16 = FIB + 8;
const FIB_TOS: i16 = FIB + 12;
const FIB_SRC: i16 = FIB + 16;
const FIB_DST: i16 = FIB + 32;
const FIB_TBID: i16 = FIB + 48;
const FIB_SMAC: i16 = FIB + 52;
const FIB_DMAC: i16 = FIB + 58;

// Ethernet and IPv4 header offsets in the packet.
const ETH_TYPE: i16 = 12;
const IP_VER_IHL: i16 = 14;
const IP_TOS: i16 = 15;
const IP_FRAG: i16 = 20;
const IP_TTL: i16 = 22;
const IP_PROTO: i16 = 23;
const IP_CSUM: i16 = 24;
const IP_SRC: i16 = 26;
const IP_DST: i16 = 30;
const L4_PORTS: i16 = 34;
/// Ethernet + IPv4 header without options.
const IPV4_END: i32 = 34;
/// ... plus the TCP or UDP ports.
const PORTS_END: i32 = 38;

/// What VXLAN over IPv4 puts before the inner IP header: IPv4 (20), UDP (8), VXLAN (8) and
/// the inner Ethernet header (14), the outer Ethernet header staying where it is.
const VXLAN_HLEN: i16 = 50;
/// Outer IPv4, UDP and VXLAN header offsets, and the inner Ethernet header's.
const UDP_SPORT: i16 = 34;
const UDP_DPORT: i16 = 36;
const UDP_LEN: i16 = 38;
const UDP_CSUM: i16 = 40;
const VXLAN_FLAGS: i16 = 42;
const VXLAN_VNI: i16 = 46;
const INNER_ETH: i16 = 50;
/// `VXLAN_HF_VNI`: the flags byte of a VXLAN header with a valid VNI and nothing else.
const VXLAN_FLAG_VNI: i32 = 0x08;

/// The node's VXLAN endpoint, for the fast path to encapsulate and decapsulate by itself
/// (VXLAN over IPv4, IPv4 pods) instead of handing the packet to the VXLAN device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vtep {
    /// The VXLAN device: `from_pod` encapsulates what the FIB routes through it.
    pub ifindex: u32,
    /// The node's underlay address: outer source of what it sends, outer destination of what
    /// it takes apart.
    pub local: Ipv4Addr,
    pub vni: u32,
    /// UDP destination port.
    pub port: u16,
}

/// Which program: where it sits and how it forwards.
enum Kind<'a> {
    /// A node's uplink or VXLAN device: look up `table` (the pods' routes), `bpf_redirect_peer`;
    /// with a VTEP, VXLAN packets to it for such a pod are taken apart first.
    ToPods { table: u32, vtep: Option<Vtep> },
    /// A pod's host-side veth: destinations in `pools`; a pod of this node (a route in
    /// `table`) by `bpf_redirect_peer`, others by the main FIB and `bpf_redirect`; with a VTEP,
    /// what the FIB sends to its device is encapsulated here and sent out of the underlay.
    FromPod {
        pools: &'a [IpNet],
        table: u32,
        vtep: Option<Vtep>,
    },
}

/// The fast-path programs. Each call assembles and loads a fresh program.
pub struct FastPath;

impl FastPath {
    /// Name of the program [`FastPath::to_pods`] loads (and of its tc filter).
    pub const TO_PODS: &'static str = "weft_to_pods";
    /// Name of the program [`FastPath::from_pod`] loads (and of its tc filter).
    pub const FROM_POD: &'static str = "weft_from_pod";

    /// For a node's uplink (or VXLAN device) ingress: a TCP or UDP IPv4 or IPv6 packet with TTL
    /// (hop limit) > 1, of a connection the node's conntrack does not track, whose destination
    /// has a route in `table` (the pods' /32 and /128 routes, copied there) goes straight into
    /// that pod (`bpf_redirect_peer` to the veth's pod end), MACs and TTL rewritten.
    ///
    /// With `vtep` (on the uplink of a node with a VXLAN device): a VXLAN packet to
    /// `vtep.local`, port and VNI, carrying such an IPv4 packet, is taken apart here
    /// (`bpf_skb_adjust_room`) and goes into the pod the same way, skipping the node's UDP
    /// socket, VXLAN device and forwarding. Anything else takes the stack as before.
    pub fn to_pods(table: u32, vtep: Option<&Vtep>) -> Result<Program> {
        let vtep = vtep.copied();
        build(Self::TO_PODS, Kind::ToPods { table, vtep })
    }

    /// For a pod's host-side veth ingress: a TCP or UDP packet with TTL (hop limit) > 1 to an
    /// address inside one of `pools` (IPv4, IPv6 or both), of a connection the node's conntrack
    /// does not track, leaves by the device the node's FIB names (`bpf_redirect`), MACs and TTL
    /// rewritten. A destination with a route in `table` (a fast-path pod of this node) goes
    /// straight into that pod instead (`bpf_redirect_peer`, as `to_pods` does), skipping its
    /// veth's transmit and backlog. A family without a pool always takes the stack.
    ///
    /// With `vtep`: an IPv4 packet the FIB sends to `vtep.ifindex` (the VXLAN device, with the
    /// peer's underlay address as gateway and its VTEP MAC as neighbour) is encapsulated here
    /// (outer IPv4 from `vtep.local`, UDP to `vtep.port` without checksum, VNI `vtep.vni`) and
    /// leaves by the underlay device the FIB names for the peer.
    ///
    /// A packet, or a segment of a TSO packet, bigger than the MTU of the device the FIB names
    /// (for VXLAN: the VXLAN device's, the underlay's less 50) takes the stack, which answers
    /// "fragmentation needed": nothing is fragmented, and a pod at the underlay's MTU learns
    /// the smaller one for destinations behind the tunnel.
    pub fn from_pod(pools: &[IpNet], table: u32, vtep: Option<&Vtep>) -> Result<Program> {
        if pools.is_empty() {
            return Err(Error::Invalid(format!(
                "BPF program {}: no pool given (the program would forward nothing)",
                Self::FROM_POD
            )));
        }
        let vtep = vtep.copied();
        let kind = Kind::FromPod { pools, table, vtep };
        build(Self::FROM_POD, kind)
    }
}

/// `r2 = data; r3 = data_end`; to `pass` unless `len` bytes are there.
fn packet(a: &mut Asm, len: i32) {
    packet_or(a, len, "pass");
}

/// `r2 = data; r3 = data_end`; to `short` unless `len` bytes are there.
fn packet_or(a: &mut Asm, len: i32, short: &str) {
    a.load(Size::W, R2, R6, SKB_DATA)
        .load(Size::W, R3, R6, SKB_DATA_END)
        .mov(R4, R2)
        .alu64_imm(Alu::Add, R4, len)
        .jump_reg(Cond::Gt, R4, R3, short);
}

/// Like [`packet_or`], but a packet whose first `len` bytes are not all in its linear part gets
/// them pulled in (`bpf_skb_pull_data`) first; to `short` only if the packet is shorter. Many NIC
/// drivers copy into the linear part only the headers the flow dissector finds, which for
/// VXLAN ends at the outer UDP header: without the pull, such packets would take the stack.
/// (The lab's veths keep whole headers linear, so the tests do not reach the pull.) Clobbers
/// r1 to r5.
fn packet_pulled_or(a: &mut Asm, len: i32, short: &str) -> Result<()> {
    // Named by where they start: unique in the program.
    let (pull, linear) = (format!("pull_{}", a.len()), format!("linear_{}", a.len()));
    packet_or(a, len, &pull);
    a.goto(&linear);
    a.label(&pull)?;
    a.mov(R1, R6)
        .alu64_imm(Alu::Mov, R2, len)
        .call_helper(HELPER_SKB_PULL_DATA)
        .jump_imm(Cond::Ne, R0, 0, short);
    packet_or(a, len, short);
    a.label(&linear)?;
    Ok(())
}

/// A 16-bit value as a 16-bit load of its network-order bytes sees it.
fn wire_u16(v: u16) -> i32 {
    u16::from_le_bytes(v.to_be_bytes()).into()
}

/// The VNI's three bytes (then the reserved one) as a 32-bit load sees them.
fn wire_vni(vni: u32) -> i32 {
    let b = vni.to_be_bytes();
    wire_u32([b[1], b[2], b[3], 0])
}

/// A value as a 32-bit load of its network-order bytes sees it (little-endian host).
fn wire_u32(octets: [u8; 4]) -> i32 {
    i32::from_le_bytes(octets)
}

/// The 4-byte words of a 16-byte address, as loads see them.
fn wire_words(octets: [u8; 16]) -> [i32; 4] {
    std::array::from_fn(|i| {
        wire_u32([
            octets[4 * i],
            octets[4 * i + 1],
            octets[4 * i + 2],
            octets[4 * i + 3],
        ])
    })
}

/// Copies `words` 4-byte words from the packet at `from` to the stack at `to`.
fn copy_words(a: &mut Asm, from: i16, to: i16, words: i16) {
    for i in 0..words {
        a.load(Size::W, R5, R2, from + 4 * i)
            .store(Size::W, R10, to + 4 * i, R5);
    }
}

/// One address family's header layout and numbers.
struct Family {
    af: i32,
    /// Fixed header end (Ethernet + IP), and with the ports.
    ip_end: i32,
    ports_end: i32,
    ttl: i16,
    proto: i16,
    src: i16,
    dst: i16,
    /// Address size in 4-byte words.
    words: i16,
    ports: i16,
    /// `sizeof` the tuple's member for this family in `struct bpf_sock_tuple`.
    tuple_size: i32,
}

const V4: Family = Family {
    af: libc::AF_INET,
    ip_end: IPV4_END,
    ports_end: PORTS_END,
    ttl: IP_TTL,
    proto: IP_PROTO,
    src: IP_SRC,
    dst: IP_DST,
    words: 1,
    ports: L4_PORTS,
    tuple_size: CT_TUPLE_V4_SIZE,
};

const V6: Family = Family {
    af: libc::AF_INET6,
    ip_end: 54,
    ports_end: 58,
    ttl: 21,   // hop limit
    proto: 20, // next header: an extension header takes the stack
    src: 22,
    dst: 38,
    words: 4,
    ports: 54,
    tuple_size: 36,
};

/// The conntrack kfuncs the programs call.
const KFUNCS: [&str; 2] = ["bpf_skb_ct_lookup", "bpf_ct_release"];

/// Assembles and loads `kind` as `name`, with the kfunc ids from the boot's cache file; if the
/// kernel refuses the program built with cached ids, once more with ids read from vmlinux
/// (a cache file that is wrong costs a retry, never the fast path).
/// The program is shared with every filter already using the same one ([`super::load_shared`]).
fn build(name: &str, kind: Kind) -> Result<Program> {
    let boot = crate::files::boot_id();
    let (kfuncs, cached) = cached_kfunc_btf_ids(KFUNCS, std::path::Path::new(CACHE), &boot)?;
    let dir = std::path::Path::new(SHARED_DIR);
    let load = |kfuncs| load_shared_in_boot(name, &assemble(&kind, kfuncs)?, dir, &boot);
    match load(kfuncs) {
        Err(_) if cached => load(kfunc_btf_ids(KFUNCS)?),
        r => r,
    }
}

fn assemble(kind: &Kind, kfuncs: [u32; 2]) -> Result<Vec<Insn>> {
    let mut a = Asm::new();
    a.mov(R6, R1);
    packet(&mut a, 14);
    a.load(Size::H, R5, R2, ETH_TYPE)
        .jump_imm(Cond::Eq, R5, 0x0008, "ipv4") // ETH_P_IP, big-endian
        .jump_imm(Cond::Eq, R5, 0xdd86, "ipv6") // ETH_P_IPV6, big-endian
        .goto("pass");
    a.label("ipv4")?;
    if let Kind::ToPods {
        vtep: Some(vtep), ..
    } = &kind
    {
        vxlan_in(&mut a, vtep)?;
        family(&mut a, &V4, kind, kfuncs, VXLAN_HLEN, "4vx")?;
        a.label("ipv4_plain")?;
    }
    family(&mut a, &V4, kind, kfuncs, 0, "4")?;
    a.label("ipv6")?;
    family(&mut a, &V6, kind, kfuncs, 0, "6")?;
    a.label("pass")?;
    a.alu64_imm(Alu::Mov, R0, TC_ACT_UNSPEC).exit();
    a.finish()
}

/// On the uplink, ahead of the plain IPv4 path: a VXLAN packet for this VTEP (outer IPv4
/// without options or fragmentation, UDP to its port and address, its VNI) carrying IPv4 goes
/// on to `ipv4_vx`; carrying anything else, to the stack (the VXLAN device takes it apart);
/// any other packet to `ipv4_plain`.
fn vxlan_in(a: &mut Asm, v: &Vtep) -> Result<()> {
    let plain = "ipv4_plain";
    // The outer headers through the UDP port are linear in any packet (drivers copy at least
    // what the flow dissector finds); only a packet to this VTEP gets the rest pulled in, so a
    // plain TCP packet (whose linear part is often just its headers, and shared with a clone
    // the sender keeps) is never copied here.
    packet_or(a, V4.ports_end, plain);
    whole_ipv4_or(a, 0, plain);
    a.load(Size::B, R5, R2, IP_PROTO)
        .jump_imm(Cond::Ne, R5, libc::IPPROTO_UDP, plain)
        .load(Size::W, R5, R2, IP_DST)
        .jump32_imm(Cond::Ne, R5, wire_u32(v.local.octets()), plain)
        .load(Size::H, R5, R2, UDP_DPORT)
        .jump_imm(Cond::Ne, R5, wire_u16(v.port), plain);
    // Through the inner ports, which the inner packet's path reads next.
    packet_pulled_or(a, V4.ports_end + i32::from(VXLAN_HLEN), plain)?;
    a.load(Size::B, R5, R2, VXLAN_FLAGS)
        .jump_imm(Cond::Ne, R5, VXLAN_FLAG_VNI, plain)
        .load(Size::W, R5, R2, VXLAN_VNI)
        .alu32_imm(Alu::And, R5, 0x00ff_ffff)
        .jump32_imm(Cond::Ne, R5, wire_vni(v.vni), plain)
        // Marked "congestion experienced" on the way: the device applies RFC 6040 (CE onto
        // the inner packet, or a drop if that is not ECN-capable).
        .load(Size::B, R5, R2, IP_TOS)
        .alu64_imm(Alu::And, R5, ECN_MASK)
        .jump_imm(Cond::Eq, R5, ECN_CE, "pass")
        .load(Size::H, R5, R2, INNER_ETH + ETH_TYPE)
        .jump_imm(Cond::Ne, R5, 0x0008, "pass");
    Ok(())
}

/// Jumps to `other` unless the IPv4 header at `shift` past the first 14 bytes has no options
/// (IHL 5) and is not a fragment: IP options would shift the ports, and a fragment's "ports" are
/// payload (fragments take the stack, which reassembles them).
fn whole_ipv4_or(a: &mut Asm, shift: i16, other: &str) {
    a.load(Size::B, R5, R2, IP_VER_IHL + shift)
        .jump_imm(Cond::Ne, R5, 0x45, other)
        .load(Size::H, R5, R2, IP_FRAG + shift)
        .alu64_imm(Alu::And, R5, 0xff3f) // htons(IP_MF | IP_OFFSET) as a little-endian load sees it
        .jump_imm(Cond::Ne, R5, 0, other);
}

/// The path of one address family, from the header checks to the redirect. `shift`: where
/// the IP header starts after the first 14 bytes (VXLAN_HLEN for the packet inside a VXLAN
/// packet, which is taken apart once the pod is known); `tag` makes its labels unique.
fn family(
    a: &mut Asm,
    f: &Family,
    kind: &Kind,
    [ct_lookup, ct_release]: [u32; 2],
    shift: i16,
    tag: &str,
) -> Result<()> {
    let label = |name: &str| format!("{name}_{tag}");
    let is_v4 = f.af == libc::AF_INET;
    let at = |off: i16| off + shift;
    let len = |end: i32| end + i32::from(shift);
    packet_pulled_or(a, len(f.ip_end), "pass")?;
    a.load(Size::B, R5, R2, at(f.ttl))
        .jump_imm(Cond::Le, R5, 1, "pass");
    if let Kind::FromPod { pools, .. } = kind {
        if !pools.iter().any(|p| matches!(p, IpNet::V4(_)) == is_v4) {
            // No pool of this family: the rest would be unreachable, which the verifier refuses.
            a.goto("pass");
            return Ok(());
        }
        for (i, pool) in pools.iter().enumerate() {
            let miss = label(&format!("pool{i}_miss"));
            let (net, mask) = match pool.trunc() {
                IpNet::V4(n) if is_v4 => (
                    vec![wire_u32(n.network().octets())],
                    vec![wire_u32(n.netmask().octets())],
                ),
                IpNet::V6(n) if !is_v4 => (
                    wire_words(n.network().octets()).to_vec(),
                    wire_words(n.netmask().octets()).to_vec(),
                ),
                _ => continue,
            };
            for (w, (net, mask)) in net.iter().zip(&mask).enumerate() {
                a.load(Size::W, R5, R2, at(f.dst) + 4 * w as i16)
                    .alu32_imm(Alu::And, R5, *mask)
                    .jump32_imm(Cond::Ne, R5, *net, &miss);
            }
            a.goto(&label("in_pool"));
            a.label(&miss)?;
        }
        a.goto("pass");
        a.label(&label("in_pool"))?;
    }

    // Conntrack: a packet of a connection the node tracks (a Service's DNAT, its reply, a
    // masqueraded flow) takes the stack, so NAT keeps working. IP options would shift the ports.
    if is_v4 {
        whole_ipv4_or(a, shift, "pass");
    }
    a.load(Size::B, R7, R2, at(f.proto))
        .jump_imm(Cond::Eq, R7, libc::IPPROTO_TCP, &label("l4"))
        .jump_imm(Cond::Ne, R7, libc::IPPROTO_UDP, "pass");
    a.label(&label("l4"))?;
    packet_pulled_or(a, len(f.ports_end), "pass")?;
    copy_words(a, at(f.src), CT_TUPLE, f.words);
    copy_words(a, at(f.dst), CT_TUPLE + 4 * f.words, f.words);
    copy_words(a, at(f.ports), CT_TUPLE + 8 * f.words, 1);
    a.store_imm(Size::DW, R10, CT_OPTS, 0)
        .store_imm(Size::DW, R10, CT_OPTS + 8, 0)
        .store_imm(Size::W, R10, CT_OPTS, -1) // netns_id: BPF_F_CURRENT_NETNS
        .store(Size::B, R10, CT_OPTS + 8, R7) // l4proto
        .mov(R1, R6)
        .mov(R2, R10)
        .alu64_imm(Alu::Add, R2, CT_TUPLE.into())
        .alu64_imm(Alu::Mov, R3, f.tuple_size)
        .mov(R4, R10)
        .alu64_imm(Alu::Add, R4, CT_OPTS.into())
        .alu64_imm(Alu::Mov, R5, CT_OPTS_SIZE)
        .call_kfunc(ct_lookup)
        .jump_imm(Cond::Eq, R0, 0, &label("untracked"))
        .mov(R1, R0)
        .call_kfunc(ct_release)
        .goto("pass");
    a.label(&label("untracked"))?;

    // FIB lookup (the calls above invalidated the packet pointers): `table` only, or, from a
    // pod, `table` first (a pod of this node: straight in), then the main FIB.
    let lookup = |a: &mut Asm, table: Option<u32>, miss: &str| {
        fib_params(a, f.af);
        packet(a, len(f.ip_end));
        if is_v4 {
            a.load(Size::B, R5, R2, at(IP_TOS))
                .store(Size::B, R10, FIB_TOS, R5);
        }
        copy_words(a, at(f.src), FIB_SRC, f.words);
        copy_words(a, at(f.dst), FIB_DST, f.words);
        let flags = match table {
            Some(t) => {
                a.store_imm(Size::W, R10, FIB_TBID, t as i32);
                FIB_LOOKUP_DIRECT | FIB_LOOKUP_TBID
            }
            None => 0,
        };
        fib_lookup_or(a, flags, shift, miss)
    };
    match kind {
        Kind::ToPods { table, .. } => lookup(a, Some(*table), "pass")?,
        Kind::FromPod { table, .. } => {
            let remote = label("remote");
            lookup(a, Some(*table), &remote)?;
            rewrite(a, f, HELPER_REDIRECT_PEER, &label("local_no_carry"))?;
            a.label(&remote)?;
            lookup(a, None, "pass")?;
            // A packet (or a TSO packet's segment) too big for the device the FIB names takes
            // the stack, which answers "fragmentation needed" (path MTU discovery): a pod with
            // the underlay's MTU learns the VXLAN device's smaller one per destination, and
            // nothing is fragmented.
            a.store_imm(Size::W, R10, MTU_LEN, 0)
                .mov(R1, R6)
                .load(Size::W, R2, R10, FIB_IFINDEX)
                .mov(R3, R10)
                .alu64_imm(Alu::Add, R3, MTU_LEN.into())
                .alu64_imm(Alu::Mov, R4, 0)
                .alu64_imm(Alu::Mov, R5, MTU_CHK_SEGS)
                .call_helper(HELPER_CHECK_MTU)
                .jump_imm(Cond::Ne, R0, 0, "pass");
        }
    }

    if shift > 0 {
        // The pod is local: take the outer headers off (the outer Ethernet header stays and is
        // rewritten below; IPv4 in IPv4, so its type is right).
        a.mov(R1, R6)
            .alu64_imm(Alu::Mov, R2, -i32::from(shift))
            .alu64_imm(Alu::Mov, R3, ADJ_ROOM_MAC)
            .alu64_imm(Alu::Mov, R4, ADJ_ROOM_FIXED_GSO)
            .call_helper(HELPER_SKB_ADJUST_ROOM)
            .jump_imm(Cond::Ne, R0, 0, "pass");
    }
    if let Kind::FromPod {
        vtep: Some(vtep), ..
    } = kind
        && is_v4
    {
        encapsulate(a, vtep, &label)?;
    }

    let helper = match kind {
        Kind::ToPods { .. } => HELPER_REDIRECT_PEER,
        Kind::FromPod { .. } => HELPER_REDIRECT,
    };
    rewrite(a, f, helper, &label("no_carry"))
}

/// Rewrite: MACs from the lookup, TTL - 1 (IPv4: checksum fixed as ip_decrease_ttl does), then
/// out by `helper` (a redirect) to the lookup's device.
fn rewrite(a: &mut Asm, f: &Family, helper: i32, no_carry: &str) -> Result<()> {
    packet(a, f.ip_end);
    copy_macs(a, 0);
    if f.af == libc::AF_INET {
        decrease_ttl_v4(a, 14, no_carry)?;
    } else {
        a.load(Size::B, R5, R2, f.ttl)
            .alu64_imm(Alu::Add, R5, -1)
            .store(Size::B, R2, f.ttl, R5);
    }
    a.load(Size::W, R1, R10, FIB_IFINDEX)
        .alu64_imm(Alu::Mov, R2, 0)
        .call_helper(helper)
        .exit();
    Ok(())
}

/// Zeroes `struct bpf_fib_lookup` and sets its family and input device (the packet's).
fn fib_params(a: &mut Asm, af: i32) {
    for i in 0..8 {
        a.store_imm(Size::DW, R10, FIB + 8 * i, 0);
    }
    a.store_imm(Size::B, R10, FIB, af)
        .load(Size::W, R5, R6, SKB_INGRESS_IFINDEX)
        .store(Size::W, R10, FIB_IFINDEX, R5);
}

/// `bpf_fib_lookup` with `flags`; to `pass` unless it found the route and the neighbour.
fn fib_lookup(a: &mut Asm, flags: i32) -> Result<()> {
    fib_lookup_or(a, flags, 0, "pass")
}

/// `bpf_fib_lookup` with `flags`; to `miss` unless it found the route and the neighbour.
///
/// `shrink`: the bytes the packet loses before it reaches the device (a VXLAN packet's outer
/// headers, taken off after the lookup). Without `tot_len` the helper checks the packet as it
/// is against the device's MTU, so every full-size VXLAN packet that was not GSO failed by those
/// bytes and took the stack (and the VXLAN device). With `shrink`, "fragmentation needed"
/// counts as found when the packet less `shrink` passes the kernel's own forwarding check
/// (MTU + Ethernet header + VLAN tag).
fn fib_lookup_or(a: &mut Asm, flags: i32, shrink: i16, miss: &str) -> Result<()> {
    a.mov(R1, R6)
        .mov(R2, R10)
        .alu64_imm(Alu::Add, R2, FIB.into())
        .alu64_imm(Alu::Mov, R3, 64)
        .alu64_imm(Alu::Mov, R4, flags)
        .call_helper(HELPER_FIB_LOOKUP);
    if shrink == 0 {
        a.jump_imm(Cond::Ne, R0, FIB_RET_SUCCESS, miss);
        return Ok(());
    }
    let found = format!("fib_found_{}", a.len());
    a.jump_imm(Cond::Eq, R0, FIB_RET_SUCCESS, &found)
        .jump_imm(Cond::Ne, R0, FIB_RET_FRAG_NEEDED, miss)
        .load(Size::H, R5, R10, FIB_MTU_RESULT)
        .alu64_imm(Alu::Add, R5, 14 + 4 + i32::from(shrink))
        .load(Size::W, R4, R6, SKB_LEN)
        .jump_reg(Cond::Gt, R4, R5, miss);
    a.label(&found)?;
    Ok(())
}

/// The lookup's destination and source MACs into the Ethernet header at `off` (r2: data).
fn copy_macs(a: &mut Asm, off: i16) {
    for k in 0..3 {
        a.load(Size::H, R5, R10, FIB_DMAC + 2 * k)
            .store(Size::H, R2, off + 2 * k, R5)
            .load(Size::H, R5, R10, FIB_SMAC + 2 * k)
            .store(Size::H, R2, off + 6 + 2 * k, R5);
    }
}

/// TTL - 1 of the IPv4 header at `ip` (r2: data), its checksum fixed as ip_decrease_ttl does.
fn decrease_ttl_v4(a: &mut Asm, ip: i16, no_carry: &str) -> Result<()> {
    let (ttl, csum) = (ip + IP_TTL - IP_VER_IHL, ip + IP_CSUM - IP_VER_IHL);
    a.load(Size::H, R5, R2, csum)
        .alu64_imm(Alu::Add, R5, 1) // htons(0x0100) as a little-endian load sees it
        .jump_imm(Cond::Lt, R5, 0xffff, no_carry)
        .alu64_imm(Alu::Add, R5, 1);
    a.label(no_carry)?;
    a.store(Size::H, R2, csum, R5)
        .load(Size::B, R5, R2, ttl)
        .alu64_imm(Alu::Add, R5, -1)
        .store(Size::B, R2, ttl, R5);
    Ok(())
}

/// `from_pod`, IPv4, after the FIB lookup: unless the route leads to the VXLAN device (then on
/// to the plain rewrite), VXLAN-encapsulate the packet to the route's gateway (the peer node's
/// underlay address) and send it out of the underlay device the FIB names for that peer.
fn encapsulate(a: &mut Asm, v: &Vtep, label: &dyn Fn(&str) -> String) -> Result<()> {
    let plain = label("plain");
    a.load(Size::W, R5, R10, FIB_IFINDEX)
        .jump32_imm(Cond::Ne, R5, v.ifindex as i32, &plain);
    // The inner TOS, for the outer ECN field (from the packet: the lookup's copy is gone, its
    // field now holds the route's metric).
    packet(a, IPV4_END);
    a.load(Size::B, R5, R2, IP_TOS)
        .store(Size::B, R10, INNER_TOS, R5);
    // Inner MACs: this node's VTEP MAC and the peer's (the gateway's neighbour entry), as
    // the lookup holds them (source first).
    for k in 0..6 {
        a.load(Size::H, R5, R10, FIB_SMAC + 2 * k)
            .store(Size::H, R10, INNER_MACS + 2 * k, R5);
    }
    // r9: the peer's underlay address; r8: the packet's length, which the outer IPv4 total
    // length must hold.
    let max_len = i32::from(u16::MAX) + 14 - i32::from(VXLAN_HLEN);
    a.load(Size::W, R9, R10, FIB_DST)
        .load(Size::W, R8, R6, SKB_LEN)
        .jump_imm(Cond::Gt, R8, max_len, "pass");
    // The underlay hop to the peer.
    fib_params(a, libc::AF_INET);
    a.store_imm(Size::W, R10, FIB_SRC, wire_u32(v.local.octets()))
        .store(Size::W, R10, FIB_DST, R9);
    fib_lookup(a, 0)?;
    // r7: the flow's hash, for the UDP source port (spreads flows over ECMP paths as the
    // kernel's VXLAN device does).
    a.mov(R1, R6)
        .call_helper(HELPER_GET_HASH_RECALC)
        .mov(R7, R0)
        .mov(R1, R6)
        .alu64_imm(Alu::Mov, R2, VXLAN_HLEN.into())
        .alu64_imm(Alu::Mov, R3, ADJ_ROOM_MAC)
        .alu64_imm(Alu::Mov, R4, 14)
        .alu64_imm(Alu::Lsh, R4, ADJ_ROOM_ENCAP_L2_SHIFT)
        .alu64_imm(
            Alu::Or,
            R4,
            ADJ_ROOM_FIXED_GSO
                | ADJ_ROOM_ENCAP_L3_IPV4
                | ADJ_ROOM_ENCAP_L4_UDP
                | ADJ_ROOM_ENCAP_L2_ETH,
        )
        .call_helper(HELPER_SKB_ADJUST_ROOM)
        .jump_imm(Cond::Ne, R0, 0, "pass");

    let inner_ip = INNER_ETH + 14;
    packet(a, i32::from(inner_ip) + 20);
    copy_macs(a, 0);
    for k in 0..3 {
        a.load(Size::H, R5, R10, INNER_MACS + 6 + 2 * k)
            .store(Size::H, R2, INNER_ETH + 2 * k, R5)
            .load(Size::H, R5, R10, INNER_MACS + 2 * k)
            .store(Size::H, R2, INNER_ETH + 6 + 2 * k, R5);
    }
    a.store_imm(Size::H, R2, INNER_ETH + ETH_TYPE, 0x0008);
    // Outer IPv4: no options, DF, TTL 64, UDP; total length r8 - 14 + 50 (r4 keeps it).
    a.store_imm(Size::H, R2, IP_VER_IHL, 0x0045)
        .mov(R5, R8)
        .alu64_imm(Alu::Add, R5, i32::from(VXLAN_HLEN) - 14)
        .mov(R4, R5)
        .to_be16(R5)
        .store(Size::H, R2, IP_VER_IHL + 2, R5)
        .store_imm(Size::W, R2, IP_VER_IHL + 4, wire_u32([0, 0, 0x40, 0])) // id 0, DF
        .store_imm(
            Size::H,
            R2,
            IP_TTL,
            wire_u16(0x4000 | libc::IPPROTO_UDP as u16),
        )
        .store_imm(Size::H, R2, IP_CSUM, 0)
        .store_imm(Size::W, R2, IP_SRC, wire_u32(v.local.octets()))
        .store(Size::W, R2, IP_DST, R9);
    // UDP: source port 0xc000 | hash bits, no checksum (RFC 7348 allows 0 over IPv4).
    a.alu64_imm(Alu::Or, R7, 0xc0)
        .store(Size::H, R2, UDP_SPORT, R7)
        .store_imm(Size::H, R2, UDP_DPORT, wire_u16(v.port))
        .alu64_imm(Alu::Sub, R4, 20)
        .to_be16(R4)
        .store(Size::H, R2, UDP_LEN, R4)
        .store_imm(Size::H, R2, UDP_CSUM, 0)
        .store_imm(Size::W, R2, VXLAN_FLAGS, VXLAN_FLAG_VNI)
        .store_imm(Size::W, R2, VXLAN_VNI, wire_vni(v.vni));
    // Outer ECN as RFC 6040 (and the kernel's tunnels) encapsulate: the inner ECN field, but
    // ECT(0) for CE. DSCP 0, as the kernel's VXLAN device sends by default.
    a.load(Size::B, R5, R10, INNER_TOS)
        .alu64_imm(Alu::And, R5, ECN_MASK)
        .jump_imm(Cond::Ne, R5, ECN_CE, &label("ecn"))
        .alu64_imm(Alu::Mov, R5, ECN_ECT0);
    a.label(&label("ecn"))?;
    a.store(Size::B, R2, IP_TOS, R5);
    // The outer header's checksum: one's complement sum of its ten 16-bit words.
    a.alu64_imm(Alu::Mov, R3, 0);
    for k in 0..10 {
        a.load(Size::H, R5, R2, IP_VER_IHL + 2 * k)
            .alu64_reg(Alu::Add, R3, R5);
    }
    for _ in 0..2 {
        a.mov(R5, R3)
            .alu64_imm(Alu::Rsh, R5, 16)
            .alu64_imm(Alu::And, R3, 0xffff)
            .alu64_reg(Alu::Add, R3, R5);
    }
    a.alu64_imm(Alu::Xor, R3, 0xffff)
        .store(Size::H, R2, IP_CSUM, R3);
    decrease_ttl_v4(a, inner_ip, &label("vx_no_carry"))?;
    a.load(Size::W, R1, R10, FIB_IFINDEX)
        .alu64_imm(Alu::Mov, R2, 0)
        .call_helper(HELPER_REDIRECT)
        .exit();
    a.label(&plain)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_order_of_a_pool() {
        // 10.244.0.0/16: the load sees bytes 0a f4 00 00 as 0x0000f40a.
        assert_eq!(wire_u32([10, 244, 0, 0]), 0x0000_f40a);
        assert_eq!(wire_u32([255, 255, 0, 0]), 0x0000_ffff);
        // A last octet of 128 or more is negative as an imm: JMP32 compares only 32 bits.
        assert_eq!(
            wire_u32([10, 0, 0, 128]),
            i32::from_le_bytes([10, 0, 0, 128])
        );
    }
}
