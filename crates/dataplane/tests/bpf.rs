//! The BPF fast path on a real kernel: two nodes joined by a veth "uplink", one pod per node
//! (routed veth, /32 route on the node, default route via a link-local gateway), the pods'
//! routes copied into table 100, `to_pods` on each uplink and `from_pod` on each pod's veth.
//! What the fast path carried shows in the receiving node's `IpForwDatagrams`: the stack counts
//! every datagram it forwards, the programs count none.

mod common;

use std::process::Stdio;

use common::TestNs;
use weft_dataplane::Error;
use weft_dataplane::bpf::{FastPath, Vtep, asm, kfunc_btf_id, load, load_shared};

const TABLE: u32 = 100;
const POOL: &str = "10.244.0.0/16";
const POOL6: &str = "fd00:244::/32";
const VX: &str = "weft.vx";
const VNI: u32 = 4242;

struct Node {
    ns: TestNs,
    pod: TestNs,
    /// The node's uplink address.
    addr: String,
    pod_ip: String,
    pod_ip6: String,
    /// The pod's host-side veth.
    veth: String,
}

struct Cluster {
    nodes: [Node; 2],
}

impl Cluster {
    /// Two nodes, a pod on each, forwarding on, no programs yet; neighbours warmed by a ping.
    fn new() -> Cluster {
        let n1 = TestNs::new("n1");
        let n2 = TestNs::new("n2");
        n1.ip(&[
            "link", "add", "uplink", "type", "veth", "peer", "name", "uplink", "netns", &n2.name,
        ]);
        let mut nodes = Vec::new();
        for (i, ns) in [n1, n2].into_iter().enumerate() {
            let k = i + 1;
            let other = 3 - k;
            let addr = format!("10.99.0.{k}");
            let pod = TestNs::new(&format!("p{k}"));
            let pod_ip = format!("10.244.{k}.2");
            let veth = format!("wpod{k}");
            ns.ok(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
            ns.ip(&["link", "set", "lo", "up"]);
            ns.ip(&["addr", "add", &format!("{addr}/24"), "dev", "uplink"]);
            ns.ip(&["link", "set", "uplink", "up"]);
            ns.ip(&[
                "route",
                "add",
                &format!("10.244.{other}.0/24"),
                "via",
                &format!("10.99.0.{other}"),
            ]);
            ns.ip(&[
                "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &pod.name,
            ]);
            ns.ip(&["addr", "add", "169.254.1.1/32", "dev", &veth]);
            ns.ip(&["link", "set", &veth, "up"]);
            ns.ip(&["route", "add", &format!("{pod_ip}/32"), "dev", &veth]);
            // The pods' routes in TABLE, as the agent would copy them for `to_pods`.
            ns.ip(&[
                "route",
                "add",
                &format!("{pod_ip}/32"),
                "dev",
                &veth,
                "table",
                &TABLE.to_string(),
            ]);
            pod.ip(&["link", "set", "lo", "up"]);
            pod.ip(&["addr", "add", &format!("{pod_ip}/32"), "dev", "eth0"]);
            pod.ip(&["link", "set", "eth0", "up"]);
            pod.ip(&[
                "route",
                "add",
                "169.254.1.1",
                "dev",
                "eth0",
                "scope",
                "link",
            ]);
            pod.ip(&[
                "route",
                "add",
                "default",
                "via",
                "169.254.1.1",
                "dev",
                "eth0",
            ]);
            // IPv6: the same shape, the pod's gateway being fe80::1 on the host veth.
            let pod_ip6 = format!("fd00:244:{k}::2");
            ns.ok(&["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]);
            for cmd in [
                format!("addr add fd00::{k}/64 dev uplink nodad"),
                format!("route add fd00:244:{other}::/64 via fd00::{other}"),
                format!("addr add fe80::1/64 dev {veth} nodad"),
                format!("route add {pod_ip6}/128 dev {veth}"),
                format!("route add {pod_ip6}/128 dev {veth} table {TABLE}"),
            ] {
                ns.ip(&cmd.split_whitespace().collect::<Vec<_>>());
            }
            for cmd in [
                format!("addr add {pod_ip6}/128 dev eth0 nodad"),
                "route add default via fe80::1 dev eth0".to_string(),
            ] {
                pod.ip(&cmd.split_whitespace().collect::<Vec<_>>());
            }
            nodes.push(Node {
                ns,
                pod,
                addr,
                pod_ip,
                pod_ip6,
                veth,
            });
        }
        let nodes: [Node; 2] = nodes.try_into().ok().unwrap();
        let c = Cluster { nodes };
        c.ping(0, 1);
        c.ping(1, 0);
        for (from, to) in [(0, 1), (1, 0)] {
            let to = &c.nodes[to].pod_ip6;
            c.nodes[from].pod.ok(&["ping", "-c", "1", "-w", "5", to]);
        }
        c
    }

    /// `to_pods` on both uplinks, `from_pod` on both pods' veths.
    fn attach(&self) {
        let pools = [POOL.parse().unwrap(), POOL6.parse().unwrap()];
        for n in &self.nodes {
            let mut nl = n.ns.netlink();
            let up = nl.link_by_name("uplink").unwrap().unwrap();
            let veth = nl.link_by_name(&n.veth).unwrap().unwrap();
            nl.attach_ingress(up.index, &FastPath::to_pods(TABLE, None).unwrap())
                .unwrap();
            nl.attach_ingress(
                veth.index,
                &FastPath::from_pod(&pools, TABLE, None).unwrap(),
            )
            .unwrap();
            assert_eq!(nl.ingress_programs(up.index).unwrap(), [FastPath::TO_PODS]);
            assert_eq!(
                nl.ingress_programs(veth.index).unwrap(),
                [FastPath::FROM_POD]
            );
        }
    }

    /// IPv4 between the pods over VXLAN instead (as weftd's vxlan mode sets it up): a VXLAN
    /// device per node, the other pod's block via the other node's underlay address on it
    /// (onlink), that address's neighbour entry the peer's VTEP MAC, the FDB entry to the peer;
    /// the pods at MTU 1450. Each node's VTEP as the programs take it.
    fn vxlan(&self) -> [Vtep; 2] {
        let mac = |k: usize| format!("0e:57:0a:63:00:0{k}");
        let mut vteps = Vec::new();
        for (i, n) in self.nodes.iter().enumerate() {
            let (k, other) = (i + 1, 2 - i);
            for cmd in [
                format!(
                    "link add {VX} address {} type vxlan id {VNI} local {} dstport 4789 dev uplink nolearning",
                    mac(k),
                    n.addr
                ),
                format!("link set {VX} mtu 1450 up"),
                format!("route replace 10.244.{other}.0/24 via 10.99.0.{other} dev {VX} onlink"),
                format!(
                    "neigh replace 10.99.0.{other} lladdr {} dev {VX} nud permanent",
                    mac(other)
                ),
            ] {
                n.ns.ip(&cmd.split_whitespace().collect::<Vec<_>>());
            }
            n.ns.ok(&[
                "bridge",
                "fdb",
                "append",
                &mac(other),
                "dev",
                VX,
                "dst",
                &format!("10.99.0.{other}"),
            ]);
            // Both ends of the pod's veth, as the plugin sets them.
            n.pod.ip(&["link", "set", "eth0", "mtu", "1450"]);
            n.ns.ip(&["link", "set", &n.veth, "mtu", "1450"]);
            let vx = n.ns.netlink().link_by_name(VX).unwrap().unwrap();
            vteps.push(Vtep {
                ifindex: vx.index,
                local: n.addr.parse().unwrap(),
                vni: VNI,
                port: 4789,
            });
        }
        self.ping(0, 1);
        self.ping(1, 0);
        vteps.try_into().unwrap()
    }

    /// Pings from pod `from` to pod `to`; the reply's TTL.
    fn ping(&self, from: usize, to: usize) -> u32 {
        let out = self.nodes[from]
            .pod
            .ok(&["ping", "-c", "1", "-W", "2", &self.nodes[to].pod_ip]);
        let ttl = out
            .split("ttl=")
            .nth(1)
            .and_then(|s| s.split_whitespace().next());
        ttl.and_then(|t| t.parse().ok())
            .unwrap_or_else(|| panic!("no ttl in {out}"))
    }
}

/// `IpForwDatagrams` of the namespace.
fn forwarded(ns: &TestNs) -> u64 {
    ns.forwarded(4)
}

#[test]
fn kfunc_ids_come_from_vmlinux_btf() {
    let id = kfunc_btf_id("bpf_skb_ct_lookup").unwrap();
    assert!(id > 0);
    assert_ne!(id, kfunc_btf_id("bpf_ct_release").unwrap());
    let err = kfunc_btf_id("weft_no_such_kfunc").unwrap_err().to_string();
    assert!(err.contains("weft_no_such_kfunc"), "{err}");
}

#[test]
fn a_refused_program_carries_the_verifier_log() {
    // Reads r0 before anything set it.
    let mut a = asm::Asm::new();
    a.exit();
    let err = load("weft_bad", &a.finish().unwrap()).unwrap_err();
    assert!(matches!(err, Error::Bpf { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("weft_bad") && text.contains("R0 !read_ok"),
        "{text}"
    );
    let err = load("a_name_too_long_for_bpf", &[]).unwrap_err();
    assert!(matches!(err, Error::Invalid(_)), "{err}");
}

#[test]
fn identical_programs_are_shared_while_one_is_alive() {
    let dir = tempfile::tempdir().unwrap();
    let returning = |code: i32| {
        let mut a = asm::Asm::new();
        a.alu64_imm(asm::Alu::Mov, asm::R0, code).exit();
        a.finish().unwrap()
    };
    let a = load_shared("weft_share", &returning(-1), dir.path()).unwrap();
    let b = load_shared("weft_share", &returning(-1), dir.path()).unwrap();
    let id = a.id().unwrap();
    assert_eq!(
        b.id().unwrap(),
        id,
        "the same instructions were verified twice"
    );
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    let other = load_shared("weft_share", &returning(0), dir.path()).unwrap();
    assert_ne!(
        other.id().unwrap(),
        id,
        "other instructions got the same program"
    );
    let renamed = load_shared("weft_share2", &returning(-1), dir.path()).unwrap();
    assert_ne!(
        renamed.id().unwrap(),
        id,
        "another name got the same program"
    );

    // Once nothing holds it, the kernel frees it: the next load is a new program, noted again.
    // (A process another test forks holds copies of this one's fds until it execs, so the
    // program may outlive the drop by a moment; reusing it meanwhile is right.)
    drop((a, b));
    let fresh = (0..100).find_map(|_| {
        let c = load_shared("weft_share", &returning(-1), dir.path()).unwrap();
        if c.id().unwrap() != id {
            return Some(c);
        }
        drop(c);
        std::thread::sleep(std::time::Duration::from_millis(50));
        None
    });
    let c = fresh.expect("the dropped program was still shared 5 s later");
    let d = load_shared("weft_share", &returning(-1), dir.path()).unwrap();
    assert_eq!(d.id().unwrap(), c.id().unwrap());

    // A file that names nothing sensible costs a fresh load, never an error.
    for f in std::fs::read_dir(dir.path()).unwrap() {
        std::fs::write(f.unwrap().path(), "garbage").unwrap();
    }
    let e = load_shared("weft_share", &returning(-1), dir.path()).unwrap();
    assert_ne!(e.id().unwrap(), c.id().unwrap());
}

#[test]
fn programs_load_attach_once_and_detach() {
    let ns = TestNs::new("at");
    ns.ip(&["link", "add", "up0", "type", "veth", "peer", "name", "up1"]);
    let mut nl = ns.netlink();
    let link = nl.link_by_name("up0").unwrap().unwrap();
    assert!(nl.ingress_programs(link.index).unwrap().is_empty());

    let to_pods = FastPath::to_pods(TABLE, None).unwrap();
    let pools = [
        "10.244.0.0/16".parse().unwrap(),
        "10.0.0.128/25".parse().unwrap(),
    ];
    let from_pod = FastPath::from_pod(&pools, TABLE, None).unwrap();
    assert_eq!(to_pods.name(), "weft_to_pods");
    assert_eq!(from_pod.name(), "weft_from_pod");
    println!(
        "instructions: to_pods {}, from_pod (2 IPv4 pools, no IPv6 pool) {}",
        to_pods.insn_count(),
        from_pod.insn_count()
    );
    assert!(FastPath::from_pod(&[], TABLE, None).is_err());

    nl.attach_ingress(link.index, &to_pods).unwrap();
    nl.attach_ingress(link.index, &to_pods).unwrap();
    assert_eq!(
        nl.ingress_programs(link.index).unwrap(),
        [FastPath::TO_PODS]
    );
    // A freshly loaded program of the same name replaces the filter too.
    nl.attach_ingress(link.index, &FastPath::to_pods(TABLE, None).unwrap())
        .unwrap();
    assert_eq!(
        nl.ingress_programs(link.index).unwrap(),
        [FastPath::TO_PODS]
    );
    nl.attach_ingress(link.index, &from_pod).unwrap();
    let mut names = nl.ingress_programs(link.index).unwrap();
    names.sort();
    assert_eq!(names, [FastPath::FROM_POD, FastPath::TO_PODS]);
    // tc sees them as direct-action bpf filters.
    let tc = ns.ok(&["tc", "filter", "show", "dev", "up0", "ingress"]);
    assert_eq!(tc.matches("direct-action").count(), 2, "{tc}");

    assert!(nl.detach_ingress(link.index, FastPath::TO_PODS).unwrap());
    assert_eq!(
        nl.ingress_programs(link.index).unwrap(),
        [FastPath::FROM_POD]
    );
    assert!(!nl.detach_ingress(link.index, FastPath::TO_PODS).unwrap());
    assert!(nl.detach_ingress(link.index, FastPath::FROM_POD).unwrap());
    assert!(nl.ingress_programs(link.index).unwrap().is_empty());
}

#[test]
fn pod_to_pod_traffic_skips_the_receiving_nodes_stack() {
    let c = Cluster::new();
    let [n1, n2] = &c.nodes;

    // Without the programs, node2 forwards the transfer.
    let before = forwarded(&n2.ns);
    n1.pod.iperf_send(&n2.pod, &n2.pod_ip, "5201", "64M");
    let stack = forwarded(&n2.ns) - before;
    assert!(
        stack > 500,
        "node2 forwarded only {stack} datagrams without the programs"
    );

    c.attach();
    let before = forwarded(&n2.ns);
    n1.pod.iperf_send(&n2.pod, &n2.pod_ip, "5202", "64M");
    let fast = forwarded(&n2.ns) - before;
    println!("node2 forwarded {stack} datagrams without the programs, {fast} with them");
    assert!(
        fast <= 5,
        "node2 forwarded {fast} datagrams with the fast path on"
    );

    // ICMP takes the stack, which decrements the TTL once per node too; the programs give no
    // verdict on what they leave to it, so a tc filter after to_pods on node2's uplink (and
    // after from_pod on node1's pod veth) still sees the pings.
    // (u32 matching everything, mirroring a copy to a veth nobody listens on: this kernel has
    // neither matchall nor gact, and mirred's action keeps the count.)
    let after = |ns: &TestNs, dev: &str| {
        ns.ip(&[
            "link",
            "add",
            "seen",
            "type",
            "veth",
            "peer",
            "name",
            "seen-peer",
        ]);
        ns.ip(&["link", "set", "seen", "up"]);
        ns.ok(&[
            "tc", "filter", "add", "dev", dev, "ingress", "pref", "65000", "protocol", "ip", "u32",
            "match", "u32", "0", "0", "action", "mirred", "egress", "mirror", "dev", "seen",
        ]);
    };
    after(&n2.ns, "uplink");
    after(&n1.ns, &n1.veth);
    assert_eq!(c.ping(0, 1), 62);
    for (ns, dev) in [(&n2.ns, "uplink"), (&n1.ns, n1.veth.as_str())] {
        let seen = matchall_packets(ns, dev);
        assert!(
            seen >= 1,
            "the filter after Weft's on {dev} saw {seen} packets"
        );
    }
    // A UDP datagram takes the fast path: TTL 64 - 2, and node2 forwards nothing.
    let before = forwarded(&n2.ns);
    assert_eq!(udp_ttl(&n1.pod, &n2.pod, &n2.pod_ip, 1), 62);
    assert_eq!(
        forwarded(&n2.ns),
        before,
        "the UDP datagram took node2's stack"
    );
}

/// Packets counted by the filter at pref 65000 on `dev`'s ingress.
fn matchall_packets(ns: &TestNs, dev: &str) -> u64 {
    let out = ns.ok(&[
        "tc", "-s", "-j", "filter", "show", "dev", dev, "ingress", "pref", "65000",
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    v.as_array()
        .into_iter()
        .flatten()
        .flat_map(|f| {
            f["options"]["actions"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .filter_map(|a| a["stats"]["packets"].as_u64())
        .sum()
}

/// Sends a UDP datagram of `len` bytes from `from` to `addr` (in `to`); its TTL on arrival.
fn udp_ttl(from: &TestNs, to: &TestNs, addr: &str, len: usize) -> u32 {
    udp_received(from, to, addr, 0, 12, len) // IP_RECVTTL
}

/// Sends a UDP datagram from `from` to `addr` (in `to`) with TOS `tos`; its TOS on arrival.
fn udp_tos(from: &TestNs, to: &TestNs, addr: &str, tos: u8) -> u32 {
    udp_received(from, to, addr, tos, 13, 1) // IP_RECVTOS
}

/// Sends a UDP datagram (TTL 64, TOS `tos`, `len` bytes of payload) from `from` to `addr` (in
/// `to`); the value of the receiver's ancillary data for socket option `recv_opt`.
fn udp_received(from: &TestNs, to: &TestNs, addr: &str, tos: u8, recv_opt: i32, len: usize) -> u32 {
    let recv = format!(
        r#"
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IP, {recv_opt}, 1)
s.bind(("0.0.0.0", 5300))
s.settimeout(10)
print("ready", flush=True)
_, anc, _, _ = s.recvmsg(64, 64)
print(int.from_bytes(anc[0][2][:4], "little"), flush=True)
"#
    );
    let mut server = to
        .command_killed_with_test("python3")
        .args(["-c", &recv])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn python3");
    use std::io::{BufRead, BufReader};
    let mut lines = BufReader::new(server.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "ready");
    let send = format!(
        "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); \
         s.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, 64); \
         s.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, {tos}); s.sendto(b'x' * {len}, ('{addr}', 5300))"
    );
    from.ok(&["python3", "-c", &send]);
    let v = lines.next().unwrap().unwrap().trim().parse().unwrap();
    server.wait().unwrap();
    v
}

/// Packets counted by the first counter in nft chain `ip weft_ecn <chain>`.
fn nft_counted(ns: &TestNs, chain: &str) -> u64 {
    let out = ns.ok(&["nft", "list", "chain", "ip", "weft_ecn", chain]);
    out.split("counter packets ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no counter in {out}"))
}

#[test]
fn tracked_connections_and_other_destinations_take_the_stack() {
    let c = Cluster::new();
    let [n1, n2] = &c.nodes;
    c.attach();

    // A Service: DNAT in node1 from a VIP to pod2. The reply must be un-DNATed by node1, which
    // the conntrack check in `to_pods` on node1's uplink leaves to the stack.
    n1.ns.ok(&["nft", "add", "table", "ip", "weft_test"]);
    n1.ns.ok(&[
        "nft",
        "add",
        "chain",
        "ip",
        "weft_test",
        "pre",
        "{ type nat hook prerouting priority dstnat; policy accept; }",
    ]);
    let dnat = format!("{}:5999", n2.pod_ip);
    n1.ns.ok(&[
        "nft",
        "add",
        "rule",
        "ip",
        "weft_test",
        "pre",
        "ip",
        "daddr",
        "10.96.0.10",
        "tcp",
        "dport",
        "5999",
        "dnat",
        "to",
        &dnat,
    ]);
    let before = forwarded(&n1.ns);
    n1.pod.iperf_send(&n2.pod, "10.96.0.10", "5999", "16M");
    let tracked = forwarded(&n1.ns) - before;
    assert!(
        tracked > 100,
        "node1 forwarded only {tracked} datagrams of the Service's connection"
    );

    // Node2's own address is outside the pools: node1's stack forwards it.
    let before = forwarded(&n1.ns);
    n1.pod.iperf_send(&n2.ns, &n2.addr, "5203", "4M");
    let via_stack = forwarded(&n1.ns) - before;
    assert!(
        via_stack > 20,
        "node1 forwarded only {via_stack} datagrams to node2's address"
    );
}

#[test]
fn ipv6_pod_to_pod_traffic_skips_the_receiving_nodes_stack() {
    let c = Cluster::new();
    let [n1, n2] = &c.nodes;

    let before = n2.ns.forwarded(6);
    n1.pod.iperf_send(&n2.pod, &n2.pod_ip6, "5201", "16M");
    let stack = n2.ns.forwarded(6) - before;
    assert!(
        stack > 100,
        "node2 forwarded only {stack} IPv6 datagrams without the programs"
    );

    c.attach();
    let before = n2.ns.forwarded(6);
    n1.pod.iperf_send(&n2.pod, &n2.pod_ip6, "5202", "64M");
    let fast = n2.ns.forwarded(6) - before;
    println!("node2 forwarded {stack} IPv6 datagrams without the programs, {fast} with them");
    assert!(
        fast <= 5,
        "node2 forwarded {fast} IPv6 datagrams with the fast path on"
    );
    // ICMPv6 takes the stack: hop limit 64 - 2 all the same.
    let out = n1.pod.ok(&["ping", "-c", "1", "-W", "2", &n2.pod_ip6]);
    assert!(out.contains("ttl=62"), "{out}");
}

/// Packets the VXLAN device sent and received: `(tx, rx)`.
fn vx_packets(ns: &TestNs) -> (u64, u64) {
    let (rx, tx) = ns.link_packets(VX);
    (tx, rx)
}

#[test]
fn vxlan_is_encapsulated_and_taken_apart_by_the_programs_and_interworks_with_the_device() {
    let c = Cluster::new();
    let vteps = c.vxlan();
    let [n1, n2] = &c.nodes;
    let pools = [POOL.parse().unwrap()];
    let attach = |n: &Node, vtep: &Vtep, to_pods: bool| {
        let mut nl = n.ns.netlink();
        if to_pods {
            let up = nl.link_by_name("uplink").unwrap().unwrap();
            nl.attach_ingress(up.index, &FastPath::to_pods(TABLE, Some(vtep)).unwrap())
                .unwrap();
        } else {
            let veth = nl.link_by_name(&n.veth).unwrap().unwrap();
            let prog = FastPath::from_pod(&pools, TABLE, Some(vtep)).unwrap();
            nl.attach_ingress(veth.index, &prog).unwrap();
        }
    };
    let mut port = 5400;
    let mut send = |from: &Node, to: &Node| {
        port += 1;
        let p = port.to_string();
        from.pod.iperf_send(&to.pod, &to.pod_ip, &p, "32M");
    };

    // The device carries the transfer without the programs.
    let (tx1, _) = vx_packets(&n1.ns);
    let (_, rx2) = vx_packets(&n2.ns);
    send(n1, n2);
    assert!(
        vx_packets(&n1.ns).0 - tx1 > 100,
        "node1's VXLAN device sent nothing"
    );
    assert!(
        vx_packets(&n2.ns).1 - rx2 > 100,
        "node2's VXLAN device received nothing"
    );

    // Node1 encapsulates in `from_pod`: its device sends nothing, node2's device takes the
    // packets apart (so they are VXLAN as the kernel reads it).
    attach(n1, &vteps[0], false);
    let (tx1, _) = vx_packets(&n1.ns);
    let (_, rx2) = vx_packets(&n2.ns);
    send(n1, n2);
    let (sent, taken) = (vx_packets(&n1.ns).0 - tx1, vx_packets(&n2.ns).1 - rx2);
    println!(
        "encapsulated by from_pod: node1's device sent {sent}, node2's device received {taken}"
    );
    assert!(
        sent <= 5,
        "node1's VXLAN device sent {sent} packets with from_pod encapsulating"
    );
    assert!(
        taken > 100,
        "node2's VXLAN device received only {taken} packets"
    );
    // ECN goes to the outer header (RFC 6040): an ECT(0) datagram's VXLAN packet is ECT(0),
    // a CE one's too (CE itself is not copied out).
    for cmd in [
        "add table ip weft_ecn",
        "add chain ip weft_ecn pre { type filter hook prerouting priority -300; }",
        "add rule ip weft_ecn pre udp dport 4789 ip ecn ect0 counter",
    ] {
        n2.ns.ok(&["nft", cmd]);
    }
    assert_eq!(udp_tos(&n1.pod, &n2.pod, &n2.pod_ip, 0x02), 0x02);
    assert_eq!(udp_tos(&n1.pod, &n2.pod, &n2.pod_ip, 0x03), 0x03);
    assert_eq!(
        nft_counted(&n2.ns, "pre"),
        2,
        "outer headers not ECT(0) for an ECT(0) and a CE datagram: {}",
        n2.ns.ok(&["nft", "list", "table", "ip", "weft_ecn"])
    );

    // Node2 takes them apart in `to_pods`: its device sees none (its forwarding still
    // carries pod2's acknowledgements, which node2's device encapsulates).
    attach(n2, &vteps[1], true);
    let (_, rx2) = vx_packets(&n2.ns);
    send(n1, n2);
    let taken = vx_packets(&n2.ns).1 - rx2;
    println!("taken apart by to_pods: node2's device received {taken}");
    assert!(taken <= 5, "node2's VXLAN device received {taken} packets");

    // The other way round, all four programs: kernel-made VXLAN taken apart by node1's
    // `to_pods`, then nothing through either device.
    attach(n1, &vteps[0], true);
    let (_, rx1) = vx_packets(&n1.ns);
    send(n2, n1);
    let taken = vx_packets(&n1.ns).1 - rx1;
    assert!(
        taken <= 5,
        "node1's VXLAN device received {taken} packets from node2's device"
    );
    // Marked CE on the way (here by node2's own postrouting): node1's `to_pods` leaves it to
    // the device, which puts CE on the inner ECT(0) datagram.
    for cmd in [
        "add table ip weft_ecn",
        "add chain ip weft_ecn post { type filter hook postrouting priority 0; }",
        "add rule ip weft_ecn post udp dport 4789 ip ecn set ce counter",
    ] {
        n2.ns.ok(&["nft", cmd]);
    }
    let rx1 = vx_packets(&n1.ns).1;
    assert_eq!(udp_tos(&n2.pod, &n1.pod, &n1.pod_ip, 0x02), 0x03);
    assert_eq!(nft_counted(&n2.ns, "post"), 1);
    assert_eq!(
        vx_packets(&n1.ns).1,
        rx1 + 1,
        "the CE packet skipped node1's device"
    );
    n2.ns.ok(&["nft", "delete", "table", "ip", "weft_ecn"]);
    attach(n2, &vteps[1], false);
    let (before1, before2) = (vx_packets(&n1.ns), vx_packets(&n2.ns));
    let fwd = forwarded(&n1.ns) + forwarded(&n2.ns);
    send(n2, n1);
    send(n1, n2);
    let (after1, after2) = (vx_packets(&n1.ns), vx_packets(&n2.ns));
    let fwd = forwarded(&n1.ns) + forwarded(&n2.ns) - fwd;
    assert!(
        fwd <= 10,
        "the nodes forwarded {fwd} datagrams with all programs on"
    );
    let moved =
        after1.0 + after1.1 + after2.0 + after2.1 - before1.0 - before1.1 - before2.0 - before2.1;
    assert!(
        moved <= 10,
        "the VXLAN devices carried {moved} packets with all programs on"
    );

    // ICMP takes the devices and the stacks; a UDP datagram the programs: TTL 64 - 2 either way.
    // Also one that fills the pod's MTU: a single packet (no GSO) 50 bytes over the pod device's
    // MTU until taken apart, which the FIB lookup's MTU check must not count.
    assert_eq!(c.ping(0, 1), 62);
    let mtu = n2.pod.ip_link("eth0").unwrap()["mtu"].as_u64().unwrap() as usize;
    for len in [1, mtu - 28] {
        let before = vx_packets(&n2.ns);
        assert_eq!(udp_ttl(&n1.pod, &n2.pod, &n2.pod_ip, len), 62);
        assert_eq!(
            vx_packets(&n2.ns),
            before,
            "a UDP datagram of {len} bytes (pods at MTU {mtu}) took node2's VXLAN device"
        );
    }

    // Pods at the underlay's MTU (1500, the device's is 1450): `from_pod` leaves what does not
    // fit to the stack, node1 answers "fragmentation needed", pod1 learns 1450 for pod2, and
    // the transfer then goes by the programs; nothing is fragmented anywhere.
    for n in &c.nodes {
        n.pod.ip(&["link", "set", "eth0", "mtu", "1500"]);
        n.ns.ip(&["link", "set", &n.veth, "mtu", "1500"]);
    }
    let frags = |ns: &TestNs| ns.snmp_ip("FragCreates") + ns.snmp_ip("FragOKs");
    let frags0 = frags(&n1.ns) + frags(&n2.ns);
    let before = vx_packets(&n1.ns).0;
    send(n1, n2);
    let sent = vx_packets(&n1.ns).0 - before;
    println!("pods at MTU 1500: node1's VXLAN device sent {sent}");
    assert!(sent <= 10, "node1's VXLAN device sent {sent} packets");
    assert_eq!(
        frags(&n1.ns) + frags(&n2.ns),
        frags0,
        "the nodes fragmented"
    );
    let pmtu = n1.pod.ok(&["ip", "route", "get", &n2.pod_ip]);
    assert!(
        pmtu.contains("mtu 1450"),
        "pod1 did not learn the path MTU: {pmtu}"
    );
}
