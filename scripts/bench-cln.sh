#!/usr/bin/env bash
# Core Lightning benchmark: a generated backup log (~50 MB snapshot, 100k transactions).
# Prints the time to open the head and 20 random versions through restorefs, next to a
# one-transaction replay (the plugin's restore), and the peak RSS.
# Usage: scripts/bench-cln.sh [DIR] [TRANSACTIONS]
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-/tmp/restorefs-bench-cln}
txs=${2:-100000}
cargo build --release --example bench_cln
bin=target/release/examples/bench_cln
echo "== the plugin's way: replay everything in one transaction"
/usr/bin/time -f "peak RSS                     %M KiB" "$bin" "$dir" "$txs" baseline
echo "== restorefs (cache 256 MiB)"
rm -rf "$dir/cache"
/usr/bin/time -f "peak RSS                     %M KiB" "$bin" "$dir" "$txs"
