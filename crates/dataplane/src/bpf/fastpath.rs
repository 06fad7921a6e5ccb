//! The two tc-ingress programs of the fast path, assembled by hand (see the module docs of
//! [`crate::bpf`] for what they do).

use ipnet::IpNet;

use super::asm::{Alu, Asm, Cond, Insn, R0, R1, R2, R3, R4, R5, R6, R7, R10, Size};
use super::btf::kfunc_btf_ids;
use super::{Program, load};
use crate::{Error, Result};

// `struct __sk_buff` offsets (linux/bpf.h).
const SKB_INGRESS_IFINDEX: i16 = 36;
const SKB_DATA: i16 = 76;
const SKB_DATA_END: i16 = 80;
// Helper ids (linux/bpf.h `__BPF_FUNC_MAPPER`).
const HELPER_REDIRECT: i32 = 23;
const HELPER_FIB_LOOKUP: i32 = 69;
const HELPER_REDIRECT_PEER: i32 = 155;
// `bpf_fib_lookup` flags.
const FIB_LOOKUP_DIRECT: i32 = 1;
const FIB_LOOKUP_TBID: i32 = 8;
/// `TC_ACT_OK`: hand the packet to the stack.
const TC_ACT_OK: i32 = 0;
/// `sizeof(struct bpf_ct_opts)` (Linux 6.x; NF_BPF_CT_OPTS_SZ).
const CT_OPTS_SIZE: i32 = 16;
/// `sizeof(tuple->ipv4)` in `struct bpf_sock_tuple`: addresses and ports.
const CT_TUPLE_V4_SIZE: i32 = 12;

// The stack frame: the conntrack opts and tuple, then `struct bpf_fib_lookup` (64 bytes).
const CT_OPTS: i16 = -120;
/// Room for the IPv6 member of `struct bpf_sock_tuple` (36 bytes).
const CT_TUPLE: i16 = -104;
const FIB: i16 = -64;
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

/// Which program: where it sits and how it forwards.
enum Kind<'a> {
    /// A node's uplink or VXLAN device: look up `table` (the pods' routes), `bpf_redirect_peer`.
    ToPods { table: u32 },
    /// A pod's host-side veth: destinations in `pools`, main FIB, `bpf_redirect`.
    FromPod { pools: &'a [IpNet] },
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
    pub fn to_pods(table: u32) -> Result<Program> {
        load(Self::TO_PODS, &assemble(Kind::ToPods { table })?)
    }

    /// For a pod's host-side veth ingress: a TCP or UDP packet with TTL (hop limit) > 1 to an
    /// address inside one of `pools` (IPv4, IPv6 or both), of a connection the node's conntrack
    /// does not track, leaves by the device the node's FIB names (`bpf_redirect`), MACs and TTL
    /// rewritten. A family without a pool always takes the stack.
    pub fn from_pod(pools: &[IpNet]) -> Result<Program> {
        if pools.is_empty() {
            return Err(Error::Invalid(format!(
                "BPF program {}: no pool given (the program would forward nothing)",
                Self::FROM_POD
            )));
        }
        load(Self::FROM_POD, &assemble(Kind::FromPod { pools })?)
    }
}

/// `r2 = data; r3 = data_end`; to `pass` unless `len` bytes are there.
fn packet(a: &mut Asm, len: i32) {
    a.load(Size::W, R2, R6, SKB_DATA)
        .load(Size::W, R3, R6, SKB_DATA_END)
        .mov(R4, R2)
        .alu64_imm(Alu::Add, R4, len)
        .jump_reg(Cond::Gt, R4, R3, "pass");
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
    tag: &'static str,
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
    tag: "4",
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
    tag: "6",
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

fn assemble(kind: Kind) -> Result<Vec<Insn>> {
    let kfuncs = kfunc_btf_ids(["bpf_skb_ct_lookup", "bpf_ct_release"])?;
    let mut a = Asm::new();
    a.mov(R6, R1);
    packet(&mut a, 14);
    a.load(Size::H, R5, R2, ETH_TYPE)
        .jump_imm(Cond::Eq, R5, 0x0008, "ipv4") // ETH_P_IP, big-endian
        .jump_imm(Cond::Eq, R5, 0xdd86, "ipv6") // ETH_P_IPV6, big-endian
        .goto("pass");
    a.label("ipv4")?;
    family(&mut a, &V4, &kind, kfuncs)?;
    a.label("ipv6")?;
    family(&mut a, &V6, &kind, kfuncs)?;
    a.label("pass")?;
    a.alu64_imm(Alu::Mov, R0, TC_ACT_OK).exit();
    a.finish()
}

/// The path of one address family, from the header checks to the redirect.
fn family(a: &mut Asm, f: &Family, kind: &Kind, [ct_lookup, ct_release]: [u32; 2]) -> Result<()> {
    let label = |name: &str| format!("{name}_{}", f.tag);
    let is_v4 = f.af == libc::AF_INET;
    packet(a, f.ip_end);
    a.load(Size::B, R5, R2, f.ttl)
        .jump_imm(Cond::Le, R5, 1, "pass");
    if let Kind::FromPod { pools } = kind {
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
                a.load(Size::W, R5, R2, f.dst + 4 * w as i16)
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
        a.load(Size::B, R5, R2, IP_VER_IHL)
            .jump_imm(Cond::Ne, R5, 0x45, "pass")
            // A fragment's "ports" are payload: fragments take the stack, which reassembles them.
            .load(Size::H, R5, R2, IP_FRAG)
            .alu64_imm(Alu::And, R5, 0xff3f) // htons(IP_MF | IP_OFFSET) as a little-endian load sees it
            .jump_imm(Cond::Ne, R5, 0, "pass");
    }
    a.load(Size::B, R7, R2, f.proto)
        .jump_imm(Cond::Eq, R7, libc::IPPROTO_TCP, &label("l4"))
        .jump_imm(Cond::Ne, R7, libc::IPPROTO_UDP, "pass");
    a.label(&label("l4"))?;
    packet(a, f.ports_end);
    copy_words(a, f.src, CT_TUPLE, f.words);
    copy_words(a, f.dst, CT_TUPLE + 4 * f.words, f.words);
    copy_words(a, f.ports, CT_TUPLE + 8 * f.words, 1);
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

    // FIB lookup (the calls above invalidated the packet pointers).
    for i in 0..8 {
        a.store_imm(Size::DW, R10, FIB + 8 * i, 0);
    }
    a.store_imm(Size::B, R10, FIB, f.af)
        .load(Size::W, R5, R6, SKB_INGRESS_IFINDEX)
        .store(Size::W, R10, FIB_IFINDEX, R5);
    packet(a, f.ip_end);
    if is_v4 {
        a.load(Size::B, R5, R2, IP_TOS)
            .store(Size::B, R10, FIB_TOS, R5);
    }
    copy_words(a, f.src, FIB_SRC, f.words);
    copy_words(a, f.dst, FIB_DST, f.words);
    let flags = match kind {
        Kind::ToPods { table } => {
            a.store_imm(Size::W, R10, FIB_TBID, *table as i32);
            FIB_LOOKUP_DIRECT | FIB_LOOKUP_TBID
        }
        Kind::FromPod { .. } => 0,
    };
    a.mov(R1, R6)
        .mov(R2, R10)
        .alu64_imm(Alu::Add, R2, FIB.into())
        .alu64_imm(Alu::Mov, R3, 64)
        .alu64_imm(Alu::Mov, R4, flags)
        .call_helper(HELPER_FIB_LOOKUP)
        .jump_imm(Cond::Ne, R0, 0, "pass"); // BPF_FIB_LKUP_RET_SUCCESS only

    // Rewrite: MACs from the lookup, TTL - 1 (IPv4: checksum fixed as ip_decrease_ttl does).
    packet(a, f.ip_end);
    for k in 0..3 {
        a.load(Size::H, R5, R10, FIB_DMAC + 2 * k)
            .store(Size::H, R2, 2 * k, R5)
            .load(Size::H, R5, R10, FIB_SMAC + 2 * k)
            .store(Size::H, R2, 6 + 2 * k, R5);
    }
    if is_v4 {
        a.load(Size::H, R5, R2, IP_CSUM)
            .alu64_imm(Alu::Add, R5, 1) // htons(0x0100) as a little-endian load sees it
            .jump_imm(Cond::Lt, R5, 0xffff, "no_carry")
            .alu64_imm(Alu::Add, R5, 1);
        a.label("no_carry")?;
        a.store(Size::H, R2, IP_CSUM, R5);
    }
    a.load(Size::B, R5, R2, f.ttl)
        .alu64_imm(Alu::Add, R5, -1)
        .store(Size::B, R2, f.ttl, R5)
        .load(Size::W, R1, R10, FIB_IFINDEX)
        .alu64_imm(Alu::Mov, R2, 0)
        .call_helper(match kind {
            Kind::ToPods { .. } => HELPER_REDIRECT_PEER,
            Kind::FromPod { .. } => HELPER_REDIRECT,
        })
        .exit();
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
