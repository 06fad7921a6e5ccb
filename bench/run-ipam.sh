#!/usr/bin/env bash
# Builds `weft-ipam` as installed (scripts/build-plugins.sh: release, static) and `weft-bench`,
# then runs the cluster-IPAM benchmarks, each writing its section of BENCHMARKS.md:
#   bench/run-ipam.sh                       both, with their defaults
#   bench/run-ipam.sh ipam-latency [ARGS]   ADD/DEL latency: weft-ipam on etcd / embedded, host-local
#   bench/run-ipam.sh churn [ARGS]          1000 pods on 10 nodes against one etcd
# ARGS go to weft-bench (`--help` lists them). Needs /usr/bin/etcd (Debian etcd-server) and
# /usr/lib/cni/host-local (containernetworking-plugins); root is not needed. The bench starts
# its own etcd on free loopback ports, and kills it (by PID) and removes its temp dir on exit,
# error and Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
bench="$CARGO_TARGET_DIR/release/weft-bench"
case "${1:-all}" in
    ipam-latency | churn | all) ;;
    *)
        echo "usage: bench/run-ipam.sh [ipam-latency|churn [ARGS]]" >&2
        exit 2
        ;;
esac
scripts/build-plugins.sh
cargo build --release -p weft-bench
if [ "${1:-all}" = all ]; then
    "$bench" ipam-latency
    exec "$bench" churn
fi
exec "$bench" "$@"
