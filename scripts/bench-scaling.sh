#!/usr/bin/env bash
# Scaling of restorefs (not a test): index time and remount time against chain length and
# extent count, and cold random 4 KiB reads inside 32 MiB LZ4 frames.
#   scripts/bench-scaling.sh     # BENCH_DIR (default /var/tmp/restorefs-bench)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/bench-lib.sh
dir=${BENCH_DIR:-/var/tmp/restorefs-bench}/scaling
cargo build --release -q
cargo build --release -q --example gen_chain --example bench_index
bin=$PWD/target/release/restorefs
install_missing fio
mkdir -p "$dir"
tmp=$(mktemp -d /var/tmp/restorefs-scaling.XXXXXX)
trap 'for m in "$tmp"/mnt*; do "$bin" umount "$m" 2>/dev/null || true; done; jobs -p | xargs -r kill 2>/dev/null || true; rm -rf "$tmp"' EXIT

# Index time: `ls` with an empty cache folder (every stream parsed); the backup files are in
# the page cache (a first run warms it). Remount: mount with the kept index, until the folder
# lists and until the newest point's first 4 KiB is read.
measure() { # label source
    "$bin" ls "$2" --cache-dir "$tmp/warm" >/dev/null
    rm -rf "$tmp/cache"
    local t; t=$(now); "$bin" ls "$2" --cache-dir "$tmp/cache" >/dev/null; local index; index=$(ms_since "$t")
    local m="$tmp/mnt$RANDOM"; mkdir -p "$m"
    t=$(now)
    "$bin" mount "$2" "$m" --cache-dir "$tmp/cache" 2>/dev/null &
    local pid=$!
    until ls "$m/vm" >/dev/null 2>&1 && [ -n "$(ls "$m/vm")" ]; do :; done
    local ready; ready=$(ms_since "$t")
    wait_first_read "$m/vm/latest/vda.raw"
    local first; first=$(ms_since "$t")
    kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
    printf "| %-30s | %8s | %8s | %12s |\n" "$1" "$index" "$ready" "$first"
}

echo "| chain | index (ms) | remount ready (ms) | first 4 KiB (ms) |"
echo "|---|---|---|---|"
# Chain length: one 4 GiB chain with 128 small increments (0.1-0.5 % each), cut at N.
[ -f "$dir/long/plain/vm/vda.inc.virtnbdbackup.128.data" ] ||
    target/release/examples/gen_chain "$dir/long" 4096 128 0 1 5
for n in 1 8 32 128; do
    s="$tmp/len$n/vm"; mkdir -p "$s"
    ln -s "$dir/long/plain/vm/vda.full.data" "$s/"
    for k in $(seq "$n"); do ln -s "$dir/long/plain/vm/vda.inc.virtnbdbackup.$k.data" "$s/"; done
    measure "full + $n increments" "$tmp/len$n"
done
# Extent count: full + 4 incrementals of 512-byte frames.
for e in 1000 64000 1000000; do
    target/release/examples/bench_index "$dir/extents$e/vm" "$e" >/dev/null
    measure "$e extents" "$dir/extents$e"
done

# Cold random 4 KiB reads inside 32 MiB LZ4 frames (extents of up to 256 MiB, cut at 32 MiB).
[ -f "$dir/big/lz4/vm/vda.full.data" ] || target/release/examples/gen_chain "$dir/big" 4096 0 0 50 100 256
m="$tmp/mntlz4"; mkdir -p "$m"
"$bin" mount "$dir/big/lz4" "$m" --cache-dir "$tmp/cache" 2>/dev/null &
until [ -e "$m/vm/latest/vda.raw" ]; do :; done
drop_caches
fio --name=b --filename="$m/vm/latest/vda.raw" --rw=randread --bs=4k --direct=1 --numjobs=1 \
    --ioengine=psync --readonly --runtime=10 --output-format=json 2>/dev/null |
    python3 -c 'import json,sys; r=json.load(sys.stdin)["jobs"][0]["read"]; print("\ncold random 4 KiB reads in 32 MiB LZ4 frames: %d IOPS, mean latency %.1f ms" % (r["iops"], r["clat_ns"]["mean"]/1e6))'
