#!/usr/bin/env bash
# A probe, not a benchmark (its figures are not in BENCHMARKS.md): on a running lab
# (`lab/weft-lab up`), how much of the host-gw gap between pod to pod (n1-p1 -> n2-p1) and node
# to node (node1 -> node2) is the nodes' IP stack. ROUNDS alternating 3 s iperf3 runs (1 and
# 4 streams), first as the lab is, then with bpf-fast-path.py on nodes 1 and 2: `to-pods` on
# the uplink (pod routes copied into table 100) and `from-pod` on every pod's host veth. Node 2's
# forwarding counter shows the fast path carried the traffic. CT=1 (default; CT=0 turns it off)
# makes the programs leave connections node2's conntrack tracks to the stack (see the .py). Then
# a Service: a DNAT in node1 (10.96.0.10:5999 -> n2-p1) must still carry a transfer, which
# needs the conntrack check (without it the reply skips node1's un-DNAT). Touches only the lab's
# namespaces; `lab/weft-lab down` removes it all (programs go with their devices).
#
#   bench/probes/bpf-fast-path.sh (as root) [ROUNDS (5)]
set -euo pipefail
rounds=${1:-5}
export CT=${CT:-1}
here=$(cd "$(dirname "$0")" && pwd)
[ -e /run/netns/wl-n2-p1 ] || { echo "bpf-fast-path: no lab (run lab/weft-lab up first)" >&2; exit 2; }
pod2=$(ip -n wl-n2-p1 -4 -o addr show dev eth0 | awk '{print $4}' | cut -d/ -f1)
node2=$(ip -n wl-node2 -4 -o addr show dev uplink | awk '{print $4}' | cut -d/ -f1)
pool=${POOL:-198.18.0.0/20} # the lab's cluster pool (lab/weft-lab POOL)

gbits() { # SERVER_NS CLIENT_NS ADDR [iperf3 args]
    local s=$1 c=$2 a=$3; shift 3
    ip netns exec "$s" iperf3 -s -D -1 -p 5502 >/dev/null
    sleep 0.3
    ip netns exec "$c" iperf3 -c "$a" -t 3 -p 5502 -J "$@" | jq '.end.sum_received.bits_per_second / 1e9'
}
measure() {
    local i n p n4 p4 all=""
    for i in $(seq 1 "$rounds"); do
        n=$(gbits wl-node2 wl-node1 "$node2") p=$(gbits wl-n2-p1 wl-n1-p1 "$pod2")
        n4=$(gbits wl-node2 wl-node1 "$node2" -P 4) p4=$(gbits wl-n2-p1 wl-n1-p1 "$pod2" -P 4)
        printf '  round %d: 1 stream node %.2f pod %.2f, 4 streams node %.2f pod %.2f Gbit/s\n' "$i" "$n" "$p" "$n4" "$p4"
        all="$all$n $p $n4 $p4\n"
    done
    printf "$all" | awk '{n += $1; p += $2; n4 += $3; p4 += $4} END {printf "  mean ratio pod/node: 1 stream %.2f, 4 streams %.2f\n", p / n, p4 / n4}'
}
forwarded() { ip netns exec wl-node2 awk '/^Ip: [0-9]/ {print $7}' /proc/net/snmp; }

echo "host-gw node1 -> node2, as the lab is:"
measure
for n in 1 2; do
    ns=wl-node$n
    ip -n "$ns" -4 route show | awk '$2 == "dev" && $3 ~ /^w/ {print $1, $3}' | while read -r dst dev; do
        ip -n "$ns" route replace "$dst" dev "$dev" table 100
    done
    ip netns exec "$ns" python3 "$here/bpf-fast-path.py" to-pods uplink 100
    for v in $(ip -n "$ns" -o link show type veth | awk -F': ' '{print $2}' | cut -d@ -f1 | grep '^w'); do
        ip netns exec "$ns" python3 "$here/bpf-fast-path.py" from-pod "$v" "$pool"
    done
done
f0=$(forwarded)
echo "with the BPF fast path on nodes 1 and 2 (pool $pool):"
measure
echo "  node2 forwarded $(($(forwarded) - f0)) datagrams meanwhile (the stack's share)"
ip netns exec wl-node1 nft -f - <<NFT
table ip fastpath_probe {
    chain pre {
        type nat hook prerouting priority dstnat; policy accept;
        ip daddr 10.96.0.10 tcp dport 5999 dnat to $pod2:5999
    }
}
NFT
ip netns exec wl-n2-p1 iperf3 -s -D -1 -p 5999 >/dev/null
sleep 0.3
svc=$(timeout 20 ip netns exec wl-n1-p1 iperf3 -c 10.96.0.10 -p 5999 -t 2 --connect-timeout 3000 -J |
    jq -r '"\((.end.sum_received.bits_per_second // 0) / 1e9 * 100 | round / 100) Gbit/s \(.error // "")"')
echo "  a Service (DNAT 10.96.0.10:5999 -> $pod2 in node1), CT=$CT: $svc"
ip netns exec wl-node1 nft delete table ip fastpath_probe
