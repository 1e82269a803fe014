#!/usr/bin/env bash
# Core Lightning benchmark: a generated backup log (~50 MB snapshot, 100k transactions).
# Prints the time (wall and CPU: on a shared machine CPU tells the work done) to open the head
# and 20 random versions through restorefs, next to a one-transaction replay (the plugin's
# restore), and the peak RSS; then the same again in a new process with the checkpoints kept
# in the cache folder by the first (a second open of each version).
# Usage: scripts/bench-cln.sh [DIR] [TRANSACTIONS]
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-/tmp/restorefs-bench-cln}
txs=${2:-100000}
cargo build --release --example bench_cln
bin=target/release/examples/bench_cln
echo "== the plugin's way: replay everything in one transaction"
/usr/bin/time -f "peak RSS                     %M KiB" "$bin" "$dir" "$txs" baseline
echo "== restorefs (cache 256 MiB), no kept checkpoints"
rm -rf "$dir/cache"
/usr/bin/time -f "peak RSS                     %M KiB" "$bin" "$dir" "$txs"
echo "== restorefs again, a new process: the same versions from the kept checkpoints"
/usr/bin/time -f "peak RSS                     %M KiB" "$bin" "$dir" "$txs"
