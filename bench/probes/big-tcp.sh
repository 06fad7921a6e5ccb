#!/usr/bin/env bash
# A probe, not a benchmark (its figures are not in BENCHMARKS.md): on a running lab
# (`lab/weft-lab up`), host-gw node1 -> node2 throughput, node to node against pod to pod
# (n1-p1 -> n2-p1), ROUNDS alternating 3 s iperf3 runs, first as the lab is, then with BIG TCP:
# GSO/GRO max size and their IPv4 variants set to SIZE on every link of that path (the nodes'
# uplinks, segment A's bridge and ports, both ends of the two pods' veths). Debian 12's iproute2
# cannot set the IPv4 variants, so a few lines of Python send the RTM_NEWLINK. Touches only the
# lab's namespaces; `lab/weft-lab down` removes it all.
#
#   bench/probes/big-tcp.sh (as root) [ROUNDS (6)] [SIZE (185000)]
set -euo pipefail
rounds=${1:-6} size=${2:-185000}
[ -e /run/netns/wl-n2-p1 ] || { echo "big-tcp: no lab (run lab/weft-lab up first)" >&2; exit 2; }
pod2=$(ip -n wl-n2-p1 -4 -o addr show dev eth0 | awk '{print $4}' | cut -d/ -f1)
node2=$(ip -n wl-node2 -4 -o addr show dev uplink | awk '{print $4}' | cut -d/ -f1)

gbits() { # SERVER_NS CLIENT_NS ADDR
    ip netns exec "$1" iperf3 -s -D -1 -p 5501 >/dev/null
    sleep 0.3
    ip netns exec "$2" iperf3 -c "$3" -t 3 -p 5501 -J | jq '.end.sum_received.bits_per_second / 1e9'
}
measure() {
    local i n p all=""
    for i in $(seq 1 "$rounds"); do
        n=$(gbits wl-node2 wl-node1 "$node2") p=$(gbits wl-n2-p1 wl-n1-p1 "$pod2")
        printf '  round %d: node to node %.2f Gbit/s, pod to pod %.2f Gbit/s\n' "$i" "$n" "$p"
        all="$all$n $p\n"
    done
    printf "$all" | awk '{n += $1; p += $2} END {printf "  mean: node %.2f, pod %.2f, ratio %.2f\n", n / NR, p / NR, p / n}'
}
big() { # NS DEV: IFLA_GSO_MAX_SIZE, IFLA_GRO_MAX_SIZE, IFLA_GSO_IPV4_MAX_SIZE, IFLA_GRO_IPV4_MAX_SIZE
    ip netns exec "$1" python3 - "$2" "$size" <<'PY'
import os, socket, struct, sys
name, size = sys.argv[1], int(sys.argv[2])
attrs = b"".join(struct.pack("HHI", 8, t, size) for t in (41, 58, 63, 64))
body = struct.pack("BxHiII", socket.AF_UNSPEC, 0, socket.if_nametoindex(name), 0, 0) + attrs
s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)
s.send(struct.pack("IHHII", 16 + len(body), 16, 0x1 | 0x4, 1, 0) + body)
err = struct.unpack("i", s.recv(4096)[16:20])[0]
sys.exit(f"{name}: {os.strerror(-err)}" if err else 0)
PY
}

echo "host-gw node1 -> node2, as the lab is:"
measure
for n in 1 2; do big "wl-node$n" uplink; done
big wl-sega br0
for l in $(ip -n wl-sega -o link show master br0 | awk -F': ' '{print $2}' | cut -d@ -f1); do big wl-sega "$l"; done
for p in n1-p1 n2-p1; do big "wl-$p" eth0; done
for n in 1 2; do
    for l in $(ip -n "wl-node$n" -o link show type veth | awk -F': ' '{print $2}' | cut -d@ -f1 | grep '^w'); do
        big "wl-node$n" "$l"
    done
done
echo "with BIG TCP ($size) on every link of the path:"
measure
