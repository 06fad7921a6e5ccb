#!/usr/bin/env bash
# Builds weft-api and weft-bench (release) and runs the API benchmark, which writes its section
# of BENCHMARKS.md (between <!-- bench:api --> and <!-- /bench:api -->):
#   bench/run-api.sh                       200 clients for 30 s over 10,000 allocations
#   bench/run-api.sh --clients 50 --seconds 10 --no-write
# Needs /usr/bin/etcd (Debian etcd-server); root is not needed. The bench starts its own etcd and
# weft-api on free loopback ports and kills them (by PID) on exit, error and Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
cargo build --release -p weft-api -p weft-bench
exec "$CARGO_TARGET_DIR/release/weft-bench" api "$@"
