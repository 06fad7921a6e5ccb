#!/usr/bin/env python3
"""A probe, not part of Weft: a tc-ingress BPF fast path for routed pods, assembled by hand.

  bpf-fast-path.py to-pods DEV TABLE     on a node's uplink: an IPv4 packet whose destination
                                         has a route in TABLE (the pods' /32s, copied there) is
                                         handed straight to the pod (bpf_redirect_peer into the
                                         veth's pod end), skipping the node's IP stack
  bpf-fast-path.py from-pod DEV NET/LEN  on a pod's host-side veth: an IPv4 packet to NET/LEN
                                         (the cluster pool) goes straight out of the device the
                                         FIB names (bpf_redirect), skipping the node's IP stack

Both rewrite the MACs from the FIB lookup and decrement the TTL (checksum updated); anything
else (no neighbour yet, TTL 1, not IPv4, a local destination) goes through the stack. With
CT=1 (the default of bpf-fast-path.sh), TCP and UDP packets are first looked up in the node's
conntrack table (kfunc bpf_skb_ct_lookup, its BTF id read from /sys/kernel/btf/vmlinux): a
packet of a connection the node tracks, such as the reply of a Service DNAT, takes the stack,
so NAT in the node keeps working; other protocols always take the stack then. Without CT=1 a
Service DNAT on the client's node breaks (measured: connection timed out). The program is
loaded with bpf(BPF_PROG_LOAD) and attached with RTM_NEWTFILTER (clsact, direct action) in
the calling namespace. It bypasses nftables for pod-to-pod traffic: a measurement, not a
feature. Run by bench/probes/bpf-fast-path.sh.
"""
import ctypes, os, socket, struct, sys
libc = ctypes.CDLL(None, use_errno=True)
def I(code, dst=0, src=0, off=0, imm=0):
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)
MOVX, MOVK, ADDK, ANDK = 0xbf, 0xb7, 0x07, 0x57
LDXW, LDXH, LDXB = 0x61, 0x69, 0x71
STXW, STXH, STXB = 0x63, 0x6b, 0x73
STW, STB, STDW = 0x62, 0x72, 0x7a
JGTX, JNEK, JLEK, JLTK, JEQK = 0x2d, 0x55, 0xb5, 0xa5, 0x15
CALL, EXIT = 0x85, 0x95

def prog(kind, table=0, net=0, mask=0):
    p = []   # list of (insn bytes) or ("J", code, dst, src, label, imm)
    L = {}
    def e(*a, **k): p.append(I(*a, **k))
    def j(code, dst, label, src=0, imm=0): p.append(("J", code, dst, src, label, imm))
    def lab(n): L[n] = len(p)
    def parse():
        e(LDXW, 2, 6, 76); e(LDXW, 3, 6, 80); e(MOVX, 4, 2); e(ADDK, 4, 0, 0, 34)
        j(JGTX, 4, "pass", src=3)
    e(MOVX, 6, 1)
    parse()
    e(LDXH, 5, 2, 12); j(JNEK, 5, "pass", imm=0x0008)
    e(LDXB, 5, 2, 22); j(JLEK, 5, "pass", imm=1)
    if kind == "from-pod":
        e(LDXW, 5, 2, 30); e(ANDK, 5, 0, 0, mask); j(JNEK, 5, "pass", imm=net)
    if CT:
        e(LDXB, 5, 2, 14); j(JNEK, 5, "pass", imm=0x45)
        e(LDXB, 7, 2, 23)
        j(JEQK, 7, "l4", imm=6); j(JNEK, 7, "pass", imm=17)
        lab("l4")
        e(MOVX, 4, 2); e(ADDK, 4, 0, 0, 38); j(JGTX, 4, "pass", src=3)
        e(LDXW, 5, 2, 26); e(STXW, 10, 5, -80)
        e(LDXW, 5, 2, 30); e(STXW, 10, 5, -76)
        e(LDXW, 5, 2, 34); e(STXW, 10, 5, -72)
        e(STDW, 10, 0, -96, 0); e(STDW, 10, 0, -88, 0)
        e(STW, 10, 0, -96, -1)
        e(STXB, 10, 7, -88)
        e(MOVX, 1, 6); e(MOVX, 2, 10); e(ADDK, 2, 0, 0, -80); e(MOVK, 3, 0, 0, 12)
        e(MOVX, 4, 10); e(ADDK, 4, 0, 0, -96); e(MOVK, 5, 0, 0, OPTS_SZ)
        e(CALL, 0, 2, 0, CT_LOOKUP)
        j(JEQK, 0, "nocon", imm=0)
        e(MOVX, 1, 0); e(CALL, 0, 2, 0, CT_RELEASE)
        j(0x05, 0, "pass")
        lab("nocon")
        parse()
    for i in range(8): e(STDW, 10, 0, -64 + 8 * i, 0)
    e(STB, 10, 0, -64, 2)
    e(LDXW, 5, 6, 36); e(STXW, 10, 5, -56)
    e(LDXB, 5, 2, 15); e(STXB, 10, 5, -52)
    e(LDXW, 5, 2, 26); e(STXW, 10, 5, -48)
    e(LDXW, 5, 2, 30); e(STXW, 10, 5, -32)
    flags = 0
    if kind == "to-pods":
        e(STW, 10, 0, -16, table); flags = 1 | 8
    e(MOVX, 1, 6); e(MOVX, 2, 10); e(ADDK, 2, 0, 0, -64); e(MOVK, 3, 0, 0, 64); e(MOVK, 4, 0, 0, flags)
    e(CALL, 0, 0, 0, 69)
    j(JNEK, 0, "pass", imm=0)
    parse()
    for k in range(3):
        e(LDXH, 5, 10, -6 + 2 * k); e(STXH, 2, 5, 0 + 2 * k)
        e(LDXH, 5, 10, -12 + 2 * k); e(STXH, 2, 5, 6 + 2 * k)
    e(LDXH, 5, 2, 24); e(ADDK, 5, 0, 0, 1); j(JLTK, 5, "nocarry", imm=0xffff); e(ADDK, 5, 0, 0, 1)
    lab("nocarry"); e(STXH, 2, 5, 24)
    e(LDXB, 5, 2, 22); e(ADDK, 5, 0, 0, -1); e(STXB, 2, 5, 22)
    e(LDXW, 1, 10, -56); e(MOVK, 2, 0, 0, 0)
    e(CALL, 0, 0, 0, 155 if kind == "to-pods" else 23)
    e(EXIT)
    lab("pass"); e(MOVK, 0, 0, 0, 0); e(EXIT)
    out = b""
    for i, x in enumerate(p):
        if isinstance(x, tuple):
            _, code, dst, src, label, imm = x
            x = I(code, dst, src, L[label] - i - 1, imm)
        out += x
    return out

def btf_id(name):
    b = open("/sys/kernel/btf/vmlinux", "rb").read()
    magic, ver, flags, hdr_len, type_off, type_len, str_off, str_len = struct.unpack_from("<HBBIIIII", b, 0)
    t0, s0 = hdr_len + type_off, hdr_len + str_off
    off, tid = t0, 1
    extra = {1: lambda v: 4, 3: lambda v: 12, 4: lambda v: 12 * v, 5: lambda v: 12 * v, 6: lambda v: 8 * v,
             13: lambda v: 8 * v, 14: lambda v: 4, 15: lambda v: 12 * v, 17: lambda v: 4, 19: lambda v: 12 * v}
    while off < t0 + type_len:
        name_off, info, _ = struct.unpack_from("<III", b, off)
        kind, vlen = (info >> 24) & 0x1f, info & 0xffff
        if kind == 12:
            end = b.index(b"\0", s0 + name_off)
            if b[s0 + name_off:end] == name.encode():
                return tid
        off += 12 + extra.get(kind, lambda v: 0)(vlen)
        tid += 1
    sys.exit(f"no BTF FUNC {name}")

def load(code):
    n = len(code) // 8
    ins = ctypes.create_string_buffer(code, len(code))
    lic = ctypes.create_string_buffer(b"Dual MIT/GPL")
    log = ctypes.create_string_buffer(65536)
    attr = struct.pack("<IIQQIIQII16sII", 3, n, ctypes.addressof(ins), ctypes.addressof(lic), 1, 65536, ctypes.addressof(log), 0, 0, b"weft_fp", 0, 0)
    a = ctypes.create_string_buffer(attr, 128)
    fd = libc.syscall(321, 5, a, 128)
    if fd < 0:
        sys.exit(f"load: {os.strerror(ctypes.get_errno())}\n{log.value.decode()}")
    return fd

def nl(msgtype, flags, body):
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)
    s.send(struct.pack("IHHII", 16 + len(body), msgtype, 0x1 | 0x4 | flags, 1, 0) + body)
    err = struct.unpack("i", s.recv(4096)[16:20])[0]
    if err: sys.exit(f"netlink {msgtype}: {os.strerror(-err)}")

def attr(t, v):
    l = 4 + len(v); return struct.pack("HH", l, t) + v + b"\0" * ((4 - l % 4) % 4)

CT = os.environ.get("CT") == "1"
OPTS_SZ = int(os.environ.get("OPTS_SZ", "16"))
if CT:
    CT_LOOKUP, CT_RELEASE = btf_id("bpf_skb_ct_lookup"), btf_id("bpf_ct_release")
kind, dev = sys.argv[1], sys.argv[2]
if kind == "to-pods":
    code = prog(kind, table=int(sys.argv[3]))
else:
    netw, ln = sys.argv[3].split("/")
    m = (0xffffffff << (32 - int(ln))) & 0xffffffff
    netv = struct.unpack("<I", socket.inet_aton(netw))[0]
    maskv = struct.unpack("<I", struct.pack(">I", m))[0]
    signed = lambda v: struct.unpack("<i", struct.pack("<I", v))[0]  # imm is a signed 32-bit field
    code = prog(kind, net=signed(netv & maskv), mask=signed(maskv))
fd = load(code)
idx = socket.if_nametoindex(dev)
os.system(f"tc qdisc add dev {dev} clsact 2>/dev/null")
opts = attr(6, struct.pack("I", fd)) + attr(7, b"weft_fp\0") + attr(8, struct.pack("I", 1))
body = struct.pack("BxxxiIII", 0, idx, 0, 0xFFFFFFF2, (1 << 16) | 0x0300) + attr(1, b"bpf\0") + attr(2 | 0x8000, opts)
nl(44, 0x400 | 0x200, body)
print(f"{kind} on {dev}: attached")
