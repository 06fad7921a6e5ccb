#!/bin/bash
# The lab's test (issue 4, "Done means" 5): runs the README's `lab/weft-lab demo` exactly, then
# with etcd and 4 nodes, and `up`/`status`/`down` (twice); asserts that every pod-to-pod ping is
# ok and that nothing is left behind: no wl-* namespace, the same root-namespace links, no
# process the lab started, no state file or temp dir. Needs root; run it from anywhere:
#
#   lab/test-lab.sh            (uses $CARGO_TARGET_DIR/release/{weft,weftd}, built if missing)
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

# The PIDs a run printed (weftd per node, etcd) must all be gone.
check_gone() {
    local out=$1 pid
    for pid in $(grep -oE 'pid [0-9]+' "$out" | awk '{print $2}' | sort -u); do
        if [ -d "/proc/$pid" ]; then
            case $(readlink "/proc/$pid/exe" || true) in
            *weftd | *etcd) fail "process $pid ($(readlink "/proc/$pid/exe")) is still running" ;;
            esac
        fi
    done
}

# check_run NAME OUT BEFORE: the matrix was all ok, nothing failed, nothing left behind.
check_run() {
    local name=$1 out=$2 before=$3
    grep -q '^  matrix: all ok$' "$out" || fail "$name: the matrix is not all ok:\n$(cat "$out")"
    if grep -qE 'FAIL\(|FAILED|failed' "$out"; then fail "$name: a ping failed:\n$(cat "$out")"; fi
    grep -q 'weft-lab: down' "$out" || fail "$name: the lab was not taken down"
    check_gone "$out"
    diff <(echo "$before") <(snapshot) || fail "$name: something was left behind (diff above)"
    echo "test-lab: $name ok"
}

out=$(mktemp /tmp/test-lab-out.XXXXXX)
trap 'lab/weft-lab down >/dev/null 2>&1 || true; rm -f "$out"' EXIT

before=$(snapshot)
lab/weft-lab demo >"$out" 2>&1 || fail "demo exited $?:\n$(cat "$out")"
cat "$out"
check_run "demo (3 nodes, embedded store)" "$out" "$before"

lab/weft-lab demo --nodes 4 --store etcd >"$out" 2>&1 || fail "demo --store etcd exited $?:\n$(cat "$out")"
check_run "demo (4 nodes, etcd)" "$out" "$before"

{ lab/weft-lab up --nodes 2 && lab/weft-lab status && lab/weft-lab down && lab/weft-lab down; } >"$out" 2>&1 ||
    fail "up/status/down exited $?:\n$(cat "$out")"
check_run "up/status/down/down (2 nodes)" "$out" "$before"
echo "test-lab: all ok"
