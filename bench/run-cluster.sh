#!/usr/bin/env bash
# Lab benchmarks on a 3-node lab of network namespaces running weftd, each writing its section
# of BENCHMARKS.md:
#   sudo bench/run-cluster.sh                      both, with their defaults
#   sudo bench/run-cluster.sh datapath [ARGS]      iperf3/ping pod to pod vs node to node
#   sudo bench/run-cluster.sh convergence [ARGS]   3 weftd + 500 simulated nodes: join time, RSS
# Builds the plugins as installed (scripts/build-plugins.sh), weftd and weft-bench (release).
# Needs root, /usr/bin/etcd, iperf3 and ping. Everything lives in namespaces wb<pid>-*, removed
# (and every process it started killed by PID) on exit, error and Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then
    echo "bench/run-cluster.sh: run as root (the bench creates network namespaces)" >&2
    exit 2
fi
case "${1:-all}" in
    datapath | convergence | all) ;;
    *)
        echo "usage: bench/run-cluster.sh [datapath|convergence [ARGS]]" >&2
        exit 2
        ;;
esac
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
bench="$CARGO_TARGET_DIR/release/weft-bench"
scripts/build-plugins.sh
cargo build --release -p weft-bench -p weft-agent
if [ "${1:-all}" = all ]; then
    "$bench" datapath
    exec "$bench" convergence
fi
exec "$bench" "$@"
