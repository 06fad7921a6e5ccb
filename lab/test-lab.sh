#!/bin/bash
# The lab's test (issue 4, "Done means" 5): runs the README's `lab/weft-lab demo` exactly, then
# with etcd and 4 nodes, and `up`/`status`/`leave 2`/`join 2`/`move-pod`/`down` (twice); asserts
# that every cell of every matrix is ok (routed pods IPv4 and IPv6, with host-gw and VXLAN paths
# in the demos; underlay pods; pods -> nodes; underlay pods -> routed pods through the router's
# static routes to every node block, IPv4 and IPv6, and back, with no NAT either way), that a
# node whose weftd stops leaves (its lease expires, every other node drops its routes and FDB
# entries) and comes back when it starts again, that the fixed-IP pod db-0 deleted on node1 and
# recreated on node2 keeps its addresses and every routed pod reaches it there (the agents' /32
# and /128), that each routed pod saw the other pods' own addresses (no NAT between pods),
# that the world saw each routed pod's node address (masquerade) and each underlay pod's own
# address, that weftctl (through the lab's weft-api) lists every node, says who holds a pod's
# address and finds no problem in `check`, that weftd's metrics count the node's ADDs, and that
# nothing is left behind: no wl-* namespace, the same root-namespace links, no
# process the lab started, no state file or temp dir. Needs root; run it from anywhere:
#
#   lab/test-lab.sh            (the lab builds $CARGO_TARGET_DIR/release/{weft,weftd,weft-api,weftctl})
set -euo pipefail
cd "$(dirname "$0")/.."

fail() { printf 'test-lab: FAIL: %b\n' "$*" >&2; exit 1; }

# The lab's namespaces are all called wl-*; other namespaces may come and go (parallel tests).
snapshot() {
    ip netns list | awk '{print $1}' | grep '^wl-' | sort || true
    echo ---
    ip -o link | awk -F': ' '{print $2}' | sed 's/@.*//' | sort
    echo ---
    ls -d /tmp/weft-lab-cluster.* /run/weft-lab-cluster.state 2>/dev/null || true
}

# The PIDs a run printed (weftd per node, etcd, weft-api) must all be gone.
check_gone() {
    local out=$1 pid
    for pid in $(grep -oE 'pid [0-9]+' "$out" | awk '{print $2}' | sort -u); do
        if [ -d "/proc/$pid" ]; then
            case $(readlink "/proc/$pid/exe" || true) in
            *weftd | *etcd | *weft-api) fail "process $pid ($(readlink "/proc/$pid/exe")) is still running" ;;
            esac
        fi
    done
}

# section OUT TITLE: the lines of OUT from the one starting with TITLE to the next empty line.
section() { awk -v t="$2" 'index($0, t) == 1 {on = 1} on && $0 == "" {exit} on' "$1"; }

# check_moves NAME OUT NODES PODS: 'leave 2' took node2's routes / FDB entries off every other
# node, 'join 2' brought them back and node2's pods answer again; 'move-pod' recreated db-0 on
# node2 with the address it had on node1, and every routed pod reached it there.
check_moves() {
    local name=$1 out=$2 nodes=$3 pods=$4 n
    n=$(section "$out" "node2 leaves:" | sed -n 's/^  before: \([0-9]*\) routes\/FDB entries towards node2$/\1/p')
    [ -n "$n" ] && [ "$n" -ge $((2 * (nodes - 1))) ] ||
        fail "$name: before 'leave 2' the other nodes did not route to node2's IPv4 and IPv6 blocks:\n$(cat "$out")"
    [ "$(section "$out" "node2 leaves:" | grep -cE '^  node[0-9]+: 0 towards node2$')" = $((nodes - 1)) ] ||
        fail "$name: after 'leave 2' some node still holds routes / FDB entries towards node2:\n$(cat "$out")"
    grep -qE '^  node2 left: every other node dropped its routes and FDB entries \([0-9.]+ s after weftd stopped\)$' "$out" ||
        fail "$name: node2 did not leave:\n$(cat "$out")"
    grep -qE '^  node2 joined: every other node routes to its blocks again \([0-9.]+ s after weftd started\)$' "$out" ||
        fail "$name: node2's routes did not come back:\n$(cat "$out")"
    [ "$(section "$out" "node2 joins again:" | grep -cE '^  node[0-9]+: [1-9][0-9]* towards node2$')" = $((nodes - 1)) ] ||
        fail "$name: after 'join 2' not every node routes to node2 again:\n$(cat "$out")"
    grep -qE "^  pods -> node2's pods: $((8 * (pods / 2 - 1))) of $((8 * (pods / 2 - 1))) answered$" "$out" ||
        fail "$name: node2's pods did not all answer after 'join 2':\n$(cat "$out")"
    local a b
    a=$(sed -n 's/^db-0 (CNI_ARGS .*, container db-0-1) added on node1: \(.*\)$/\1/p' "$out")
    b=$(sed -n 's/^  CNI ADD on node2 (container db-0-2): \(.*\)$/\1/p' "$out")
    [[ $a =~ ^198\.18\.[0-9.]+\ fd00:18::[0-9a-f:]+$ ]] && [ "$a" = "$b" ] ||
        fail "$name: db-0 had '$a' on node1 and '$b' on node2 (wanted the same IPv4 and IPv6):\n$(cat "$out")"
    grep -qE '^  db-0 kept its addresses: 198\.18\.[0-9.]+ fd00:18::[0-9a-f:]+$' "$out" ||
        fail "$name: db-0 did not keep its addresses moving to node2:\n$(cat "$out")"
    grep -qE "^  pods -> db-0 at node2: $((2 * pods)) of $((2 * pods)) answered$" "$out" ||
        fail "$name: not every routed pod reached db-0 at node2:\n$(cat "$out")"
    grep -qE '^  move-pod: db-0 moved from node1 to node2 with [0-9.]+ [0-9a-f:]+: ok$' "$out" ||
        fail "$name: move-pod did not finish ok:\n$(cat "$out")"
}

# check_run NAME OUT BEFORE PODS UPODS PATHS: every matrix all ok, the sources right, nothing
# failed, nothing left behind. PODS routed pods, UPODS underlay pods; PATHS "gw vx": the paths
# each routed matrix must show.
check_run() {
    local name=$1 out=$2 before=$3 pods=$4 upods=$5 paths=$6 m p fam n nodes=$(($4 / 2))
    for m in "routed IPv4" "routed IPv6" "underlay IPv4" "pods -> nodes" "underlay->routed IPv4" "routed->underlay IPv4"; do
        grep -qx "  $m matrix: all ok" "$out" || fail "$name: the $m matrix is not all ok:\n$(cat "$out")"
    done
    for m in "routed IPv4" "routed IPv6"; do
        for p in $paths; do
            section "$out" "$m matrix" | grep -q "ok($p)" || fail "$name: no $p path in the $m matrix:\n$(cat "$out")"
        done
    done
    [ "$(section "$out" "underlay IPv4 matrix" | grep -c '^  n[0-9]*-u1 ')" = "$upods" ] ||
        fail "$name: expected $upods underlay pods in the underlay matrix:\n$(cat "$out")"
    [ "$(section "$out" "Pods -> nodes" | grep -c '^  n[0-9]*-[pu][0-9] ')" = $((pods + upods)) ] ||
        fail "$name: expected $((pods + upods)) rows in the pods -> nodes matrix:\n$(cat "$out")"
    [ "$(section "$out" "Pods -> nodes" | grep -o 'ok(shim)' | wc -l)" = "$upods" ] ||
        fail "$name: not every underlay pod reached its own node through the shim:\n$(cat "$out")"
    # The router's static routes to the blocks (IPv4 + IPv6 per node); underlay <-> routed pods.
    grep -qxE "  router routes: $((2 * nodes)) to the pod blocks.*" "$out" ||
        fail "$name: the router has not $((2 * nodes)) routes to the pod blocks:\n$(cat "$out")"
    [ "$(section "$out" "underlay->routed IPv4 matrix" | grep -cE '^  n[0-9]+-u1 +(ok +){'"$pods"'}$')" = "$upods" ] ||
        fail "$name: not every underlay pod reached all $pods routed pods:\n$(cat "$out")"
    grep -qx '  underlay <-> routed sources: real (no NAT)' "$out" ||
        fail "$name: underlay <-> routed sources not the pods' own:\n$(cat "$out")"
    check_moves "$name" "$out" "$nodes" "$pods"
    grep -qx '  pod-to-pod sources: real (no NAT between pods)' "$out" ||
        fail "$name: pod-to-pod sources not the pods' own:\n$(cat "$out")"
    for fam in 4 6; do
        n=$(grep -cE "^  n[0-9]+-p[0-9] +IPv$fam: the other pods' own addresses" "$out" || true)
        [ "$n" = "$pods" ] || fail "$name: $n of $pods routed pods saw real IPv$fam sources:\n$(cat "$out")"
        n=$(grep -cE "^  n[0-9]+-p[0-9] +IPv$fam -> world: ok, world saw [0-9a-f:.]+ = node[0-9]+'s address \(masqueraded\)$" "$out" || true)
        [ "$n" = "$pods" ] || fail "$name: $n of $pods routed pods reached the world masqueraded over IPv$fam:\n$(cat "$out")"
    done
    n=$(grep -cE "^  n[0-9]+-u1 +IPv4 -> world: ok, world saw [0-9.]+ = the pod's own underlay address" "$out" || true)
    [ "$n" = "$upods" ] || fail "$name: $n of $upods underlay pods reached the world:\n$(cat "$out")"
    # The operator's view through weft-api and weftctl, and weftd's metrics.
    [ "$(section "$out" "weftctl get nodes:" | grep -cE '^  node[0-9]+ +Registered ')" = "$nodes" ] ||
        fail "$name: weftctl get nodes does not list $nodes registered nodes:\n$(cat "$out")"
    section "$out" "weftctl get ip " | grep -qE '^  198\.18\.[0-9.]+ +cluster +allocated +node1 ' ||
        fail "$name: weftctl get ip does not say who holds n1-p1's address:\n$(cat "$out")"
    grep -qE '^  No problems found \([0-9]+ allocations, '"$nodes"' nodes compared\)\.$' "$out" ||
        fail "$name: weftctl check is not clean over $nodes nodes:\n$(cat "$out")"
    grep -qE '^  weft_cni_operations_total\{op="ADD",network="cluster",result="ok",code="0"\} 2$' "$out" ||
        fail "$name: node1's weftd metrics do not count its 2 routed ADDs:\n$(cat "$out")"
    if grep -qE 'FAIL|UNEXPECTED|no reply|failed|\(\?\)|warning' "$out"; then fail "$name: something failed:\n$(cat "$out")"; fi
    grep -q 'weft-lab: down' "$out" || fail "$name: the lab was not taken down"
    check_gone "$out"
    diff <(echo "$before") <(snapshot) || fail "$name: something was left behind (diff above)"
    echo "test-lab: $name ok"
}

start=$(date +%s)
out=$(mktemp /tmp/test-lab-out.XXXXXX)
trap 'lab/weft-lab down >/dev/null 2>&1 || true; rm -f "$out"' EXIT

before=$(snapshot)
lab/weft-lab demo >"$out" 2>&1 || fail "demo exited $?:\n$(cat "$out")"
cat "$out"
check_run "demo (3 nodes, embedded store)" "$out" "$before" 6 2 "gw vx"

lab/weft-lab demo --nodes 4 --store etcd >"$out" 2>&1 || fail "demo --store etcd exited $?:\n$(cat "$out")"
check_run "demo (4 nodes, etcd)" "$out" "$before" 8 2 "gw vx"

{ lab/weft-lab up --nodes 2 && lab/weft-lab status && lab/weft-lab leave 2 && lab/weft-lab join 2 &&
    lab/weft-lab move-pod && lab/weft-lab down && lab/weft-lab down; } >"$out" 2>&1 ||
    fail "up/status/leave/join/move-pod/down exited $?:\n$(cat "$out")"
check_run "up/status/leave/join/move-pod/down/down (2 nodes)" "$out" "$before" 4 1 "vx"
echo "test-lab: all ok ($(($(date +%s) - start)) s)"
