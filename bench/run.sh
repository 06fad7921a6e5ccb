#!/bin/bash
# Single-node CNI latency benchmark: Weft vs the reference plugins, side by side in one run.
# Builds the plugins as installed (scripts/build-plugins.sh) and the bench in release mode, then runs the bench (as root), which writes
# its section of BENCHMARKS.md. Arguments go to weft-bench, e.g. `bench/run.sh --pods 200`.
# The bench removes its own namespaces (wb<pid>-*) on exit, error and Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then
    echo "bench/run.sh: run as root (the bench creates network namespaces)" >&2
    exit 2
fi
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
scripts/build-plugins.sh
cargo build --release -p weft-bench
exec "$CARGO_TARGET_DIR/release/weft-bench" "$@"
