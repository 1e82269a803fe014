#!/usr/bin/env bash
# Huge sources (not a test): a SOURCE of SETS small virtnbdbackup sets (hard links to the full
# backup of one test set, so it takes no room; one stream each, as a mapped stream holds a file
# descriptor) and a Core Lightning log of VERSIONS versions (one bump each).
# Prints, for each restorefs binary given (default: this checkout's release build):
#   - mount ready: from `mount` to the mount answering, with no kept indexes;
#   - first listing of one set, then a listing of SOURCE's top (which scans every folder);
#   - the log's newest version: mount and read it, no kept checkpoints, then again with them.
# Everything is warm: the backup files are in the page cache (this script never drops it, the
# machine is shared), so "cold" here means no kept indexes or checkpoints, not a cold disk.
# Usage: scripts/bench-sets.sh [SETS] [VERSIONS] [BIN...]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/bench-lib.sh
sets=${1:-10000}
versions=${2:-1000000}
shift $(( $# < 2 ? $# : 2 ))
cargo build --release -q
bins=("$@")
[ ${#bins[@]} -gt 0 ] || bins=("$PWD/target/release/restorefs")
dir=${BENCH_DIR:-/var/tmp/restorefs-bench}/sets
tmp=$(mktemp -d /var/tmp/restorefs-sets.XXXXXX)
trap 'for m in "$tmp"/mnt*; do fusermount3 -u "$m" 2>/dev/null || true; done; jobs -p | xargs -r kill 2>/dev/null || true; rm -rf "$tmp"' EXIT

if [ ! -f "$dir/many/vm$(printf %05d $((sets - 1)))/vda.full.data" ] || [ -f "$dir/many/vm00000/vda.inc.virtnbdbackup.0.data" ]; then
    rm -rf "$dir/many"
    python3 - "$PWD/tests/data/virtnbd/v1-misc" "$dir/many" "$sets" <<'EOF'
import os, sys
src, dst, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
for i in range(n):
    for root, dirs, files in os.walk(src):
        out = os.path.join(dst, "vm%05d" % i, os.path.relpath(root, src))
        os.makedirs(out, exist_ok=True)
        for f in files:
            if ".inc." not in f and "virtnbdbackup.1" not in f:
                os.link(os.path.join(root, f), os.path.join(out, f))
EOF
fi
if [ ! -f "$dir/log/node.bkp" ]; then
    mkdir -p "$dir/log"
    sed -n '/^cat > "\$work\/gen.py" <<.EOF.$/,/^EOF$/p' scripts/bench-inodes.sh | sed '1d;$d' > "$tmp/gen.py"
    python3 "$tmp/gen.py" "$dir/log/node.bkp" 2 "$versions" new
fi
newest=$(printf 'v%010d' "$versions")
# Warm the page cache: every backup file read once.
find "$dir/many" "$dir/log" -type f -print0 | xargs -0 cat > /dev/null

# Mounts $2 with binary $1 and cache folder $3 on a new mount point; sets $mnt, $pid, $t0.
start_mount() {
    mnt=$tmp/mnt$RANDOM
    mkdir -p "$mnt"
    t0=$(now)
    "$1" mount "$2" "$mnt" --cache-dir "$3" 2>>"$tmp/mount.log" &
    pid=$!
}
stop_mount() { "$bin" umount "$mnt" 2>/dev/null || kill "$pid"; wait "$pid" 2>/dev/null || true; }

echo "| binary | $sets sets: mount ready (ms) | first listing of one set (ms) | listing SOURCE (ms) | $versions-version log: newest read, no checkpoints (ms) | again, kept checkpoints (ms) |"
echo "|---|---|---|---|---|---|"
for bin in "${bins[@]}"; do
    start_mount "$bin" "$dir/many" "$tmp/cache-$RANDOM"
    until mountpoint -q "$mnt"; do
        kill -0 "$pid" 2>/dev/null || { tail -2 "$tmp/mount.log" >&2; exit 1; }
        sleep 0.01
    done
    ready=$(ms_since "$t0")
    t=$(now); ls "$mnt/vm$(printf %05d $((sets / 2)))" > /dev/null; one=$(ms_since "$t")
    t=$(now); n=$(ls "$mnt" | wc -l); all=$(ms_since "$t")
    [ "$n" = "$sets" ] || echo "warning: $n folders listed, $sets expected" >&2
    stop_mount
    cache=$tmp/cache-$RANDOM
    start_mount "$bin" "$dir/log" "$cache"
    wait_first_read "$mnt/node.bkp/$newest/lightningd.sqlite3"
    cold=$(ms_since "$t0")
    stop_mount
    start_mount "$bin" "$dir/log" "$cache"
    wait_first_read "$mnt/node.bkp/$newest/lightningd.sqlite3"
    kept=$(ms_since "$t0")
    stop_mount
    echo "| $bin | $ready | $one | $all | $cold | $kept |"
done
