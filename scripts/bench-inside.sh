#!/usr/bin/env bash
# Files inside disk images: reading out of ext4 inside a backup point through restorefs' own
# reader (`vda/p1/…`) versus loop-mounting the same served partition (`vda/p1.raw`), for a
# 256 MiB file and a tree of 10,000 small files, plain and lz4 chains; listing a 10,000-entry
# folder cold (fresh mount) and warm; the daemon's peak RSS. Not a test; figures go to the
# closing note / README. Needs root (FUSE, loop mounts); the page cache is not dropped (a
# shared machine): the backup file is read into it first, so that both ways find it there;
# "cold" means a fresh restorefs mount (its cache and the kernel's FUSE caches empty).
#
#   scripts/bench-inside.sh            # BENCH_DIR (default /var/tmp/restorefs-bench-inside)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/bench-lib.sh
dir=${BENCH_DIR:-/var/tmp/restorefs-bench-inside}
cargo build --release -q
cargo build --release -q --example raw_stream
bin=$PWD/target/release/restorefs

if [ ! -f "$dir/src/big.bin" ]; then
    rm -rf "$dir"
    mkdir -p "$dir/src/small"
    head -c $((256 << 20)) /dev/urandom > "$dir/src/big.bin"
    for d in $(seq -w 0 99); do
        mkdir "$dir/src/small/d$d"
        for f in $(seq -w 0 99); do head -c 3000 /dev/urandom > "$dir/src/small/d$d/f$f"; done
    done
fi
if [ ! -f "$dir/lz4/vm/vda.full.data" ]; then
    mkdir -p "$dir/plain/vm" "$dir/lz4/vm"
    rm -f "$dir/disk.img"
    truncate -s 1G "$dir/disk.img"
    sgdisk -n 1:2048:0 -t 1:8300 "$dir/disk.img" >/dev/null
    truncate -s $(((1 << 30) - (2048 + 33) * 512)) "$dir/p1.fs"
    mkfs.ext4 -q -F -d "$dir/src" "$dir/p1.fs"
    dd if="$dir/p1.fs" of="$dir/disk.img" bs=1M seek=1 conv=notrunc,sparse status=none
    mnt=$(mktemp -d)
    mount -o loop,offset=$((2048 * 512)) "$dir/disk.img" "$mnt"
    mkdir "$mnt/many"
    (cd "$mnt/many" && seq -w 0 9999 | sed 's/^/f/' | xargs touch)
    umount "$mnt"
    rmdir "$mnt"
    target/release/examples/raw_stream "$dir/disk.img" "$dir/plain/vm/vda.full.data" vda
    target/release/examples/raw_stream "$dir/disk.img" "$dir/lz4/vm/vda.full.data" vda lz4
    rm -f "$dir/p1.fs" "$dir/disk.img"
fi

tmp=$(mktemp -d /var/tmp/restorefs-bench-inside-run.XXXXXX)
cleanup() {
    umount "$tmp/loop" 2>/dev/null || true
    for m in "$tmp"/mnt-*; do [ -e "$m" ] && { "$bin" umount "$m" 2>/dev/null || true; }; done
    rm -rf "$tmp"
}
trap cleanup EXIT

# Runs "$@" and prints its wall time in ms.
timed() { local t; t=$(now); "$@" >/dev/null; ms_since "$t"; }

for kind in plain lz4; do
    m="$tmp/mnt-$kind"
    mkdir -p "$m" "$tmp/loop"
    # Both ways read the same backup file: have it in the page cache for both.
    cat "$dir/$kind/vm/vda.full.data" > /dev/null
    "$bin" mount --daemon "$dir/$kind" "$m" >/dev/null
    pid=$(pgrep -n -f "restorefs mount --daemon $dir/$kind $m" || true)
    p=$m/vm/latest/vda
    cold=$(timed ls -f "$p/p1/many")
    warm=$(timed ls -f "$p/p1/many")
    # Reading only (tar to a pipe opens and reads every file): writing 10,000 files on this
    # machine's disk would measure its disk, the same for both ways.
    big_in=$(timed cat "$p/p1/big.bin")
    small_in=$(timed sh -c "tar -C '$p/p1' -cf - small | cat")
    mount -o loop,ro,noload "$p/p1.raw" "$tmp/loop"
    big_loop=$(timed cat "$tmp/loop/big.bin")
    small_loop=$(timed sh -c "tar -C '$tmp/loop' -cf - small | cat")
    umount "$tmp/loop"
    cmp "$p/p1/big.bin" "$dir/src/big.bin"
    diff -r "$p/p1/small" "$dir/src/small"
    rss=$( [ -n "$pid" ] && peak_rss "$pid" || echo "?")
    "$bin" umount "$m"
    echo "== $kind chain (1 GiB disk, GPT, ext4)"
    echo "read 256 MiB file:        vda/p1/ ${big_in} ms   loop on p1.raw ${big_loop} ms"
    echo "read 10,000 small files:  vda/p1/ ${small_in} ms   loop on p1.raw ${small_loop} ms"
    echo "list 10,000 entries: cold ${cold} ms   warm ${warm} ms"
    echo "peak RSS:            ${rss} KiB"
done
