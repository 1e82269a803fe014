#!/usr/bin/env bash
# Index benchmark: a generated virtnbdbackup chain (full + 4 incs) with ~1 million extents.
# Prints index time, memory per extent and peak RSS. Usage: scripts/bench-index.sh [DIR] [EXTENTS]
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-/tmp/restorefs-bench-index/vm}
extents=${2:-1000000}
cargo build --release --example bench_index
/usr/bin/time -f "peak RSS                    %M KiB" target/release/examples/bench_index "$dir" "$extents"
