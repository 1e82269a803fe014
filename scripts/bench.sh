#!/usr/bin/env bash
# restorefs against qemu-storage-daemon's FUSE export of the equivalent qcow2 chain, side by
# side on the same data (not a test; figures go to README.md under Performance).
#
#   scripts/bench.sh            # BENCH_DIR (default /var/tmp/restorefs-bench), RUNS (default 3)
#
# Needs root (FUSE, drop_caches); installs fio, qemu-img/qemu-io and qemu-storage-daemon if
# missing. Ends with scripts/bench-virtnbdmap.sh on the same chain.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/bench-lib.sh
dir=${BENCH_DIR:-/var/tmp/restorefs-bench}
runs=${RUNS:-3}
cargo build --release -q
bin=$PWD/target/release/restorefs
install_missing fio qemu-utils qemu-system-common

# --- the chain: 4 GiB, full + 3 incrementals, as streams (plain, lz4) and as qcow2 ---
bench_chain "$dir"
if [ ! -f "$dir/qcow/inc3.qcow2" ]; then
    mkdir -p "$dir/qcow"
    qemu-img convert -O qcow2 "$dir/qcow-src/full.raw" "$dir/qcow/base.qcow2"
    prev=base
    for k in 1 2 3; do
        qemu-img create -q -f qcow2 -b "$prev.qcow2" -F qcow2 "$dir/qcow/inc$k.qcow2"
        qemu-io -f qcow2 "$dir/qcow/inc$k.qcow2" < "$dir/qcow-src/inc$k.cmds" >/dev/null
        prev=inc$k
    done
fi

tmp=$(mktemp -d /var/tmp/restorefs-bench-run.XXXXXX)
cleanup() {
    for m in "$tmp"/mnt*; do [ -e "$m" ] && { "$bin" umount "$m" 2>/dev/null || true; }; done
    umount -l "$tmp/qsd.img" 2>/dev/null || true
    jobs -p | xargs -r kill 2>/dev/null || true
    rm -rf "$tmp"
}
trap cleanup EXIT

# --- both reconstruct the same newest image ---
echo "checking the newest point both ways..."
"$bin" export "$dir/plain" vm/latest/vda.raw -o "$tmp/rfs.raw" 2>/dev/null
"$bin" export "$dir/lz4" vm/latest/vda.raw -o "$tmp/lz4.raw" 2>/dev/null
qemu-img convert -O raw "$dir/qcow/inc3.qcow2" "$tmp/qcow.raw"
a=$(sha256sum < "$tmp/rfs.raw" | cut -c1-64)
b=$(sha256sum < "$tmp/lz4.raw" | cut -c1-64)
c=$(sha256sum < "$tmp/qcow.raw" | cut -c1-64)
rm -f "$tmp"/*.raw
if [ "$a" != "$c" ] || [ "$b" != "$c" ]; then
    echo "MISMATCH: streams $a, lz4 $b, qcow2 $c"
    exit 1
fi
echo "newest point sha256 $c (streams, lz4 streams and qcow2 agree)"

# Sequential runs read the backup files from the page cache: they measure the servers, not
# this machine's (shared, noisy) disk.
warm() { cat "$dir"/plain/vm/*.data "$dir"/lz4/vm/*.data "$dir"/qcow/*.qcow2 > /dev/null; }

# Starts a server; sets $pid and $file, and $first_ms: process start to the first 4 KiB read.
start_rfs() { # source
    local m="$tmp/mnt$RANDOM"
    mkdir -p "$m"
    local t0; t0=$(now)
    "$bin" mount "$1" "$m" --cache-size 256M 2>>"$tmp/rfs.log" &
    pid=$!
    file="$m/vm/latest/vda.raw"
    wait_first_read "$file"
    first_ms=$(ms_since "$t0")
}
start_qsd() {
    file="$tmp/qsd.img"
    : > "$file"
    local t0; t0=$(now)
    qemu-storage-daemon \
        --blockdev driver=file,node-name=f0,filename="$dir/qcow/inc3.qcow2",read-only=on \
        --blockdev driver=qcow2,node-name=d0,file=f0,read-only=on \
        --export type=fuse,id=e0,node-name=d0,mountpoint="$file",writable=off 2>>"$tmp/qsd.log" &
    pid=$!
    wait_first_read "$file"
    first_ms=$(ms_since "$t0")
}
stop() { # peak RSS (KiB) of $pid, then stop it
    hwm=$(peak_rss "$pid")
    if [ "$file" = "$tmp/qsd.img" ]; then kill "$pid"; else kill -TERM "$pid"; fi
    wait "$pid" 2>/dev/null || true
}

declare -A res
measure() { # name run start-function [source]
    local name=$1 run=$2 start=$3 src=${4:-}
    drop_caches; $start "$src"; res[$name,first,$run]=$first_ms
    warm; read -r bw _ < <(fio_run "$file" read 1M 0 1); res[$name,seq,$run]=$bw
    warm; read -r bw _ < <(fio_run "$file" read 1M 1 1); res[$name,seqd,$run]=$bw
    read -r _ io < <(fio_run "$file" randread 4k 1 1); res[$name,rand1,$run]=$io
    read -r _ io < <(fio_run "$file" randread 4k 1 4); res[$name,rand4,$run]=$io
    stop; res[$name,rss,$run]=$hwm
}
median() { # name metric
    for run in $(seq "$runs"); do echo "${res[$1,$2,$run]}"; done | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'
}

echo "measuring ($runs runs each, alternating)..."
for run in $(seq "$runs"); do
    measure restorefs "$run" start_rfs "$dir/plain"
    measure qsd "$run" start_qsd
    measure lz4 "$run" start_rfs "$dir/lz4"
done

row() { # label metric unit
    local r q l
    r=$(median restorefs "$2"); q=$(median qsd "$2"); l=$(median lz4 "$2")
    printf "| %-34s | %12s | %12s | %6s | %12s |\n" "$1 ($3)" "$r" "$q" "$(python3 -c "print(round($r/$q,2) if $q else '-')")" "$l"
}
echo
echo "| 4 GiB chain, full + 3 incs (median of $runs) | restorefs | qemu-storage-daemon | ratio | restorefs lz4 |"
echo "|---|---|---|---|---|"
row "sequential 1 MiB, buffered" seq "MiB/s"
row "sequential 1 MiB, direct" seqd "MiB/s"
row "random 4 KiB, direct, 1 job" rand1 "IOPS"
row "random 4 KiB, direct, 4 jobs" rand4 "IOPS"
row "start to first 4 KiB read" first "ms"
row "peak RSS" rss "KiB"

echo
BENCH_DIR="$dir" scripts/bench-virtnbdmap.sh
