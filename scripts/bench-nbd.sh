#!/usr/bin/env bash
# restorefs serve --nbd against qemu-nbd --read-only serving the equivalent qcow2 chain, on a
# small generated chain (not a test; figures go to README.md under "Serve points over NBD").
#
#   scripts/bench-nbd.sh     # BENCH_NBD_DIR (default /var/tmp/restorefs-bench-nbd), SIZE_MIB (1024)
#
# For each server: time from start to the first 4 KiB read, a sequential copy of the newest
# point (nbdcopy, every byte, then skipping holes), and random 4 KiB reads (fio's nbd engine,
# 16 in flight). Backup files are read from the page cache: this measures the servers.
# Installs fio, qemu-utils and libnbd-bin if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/bench-lib.sh
dir=${BENCH_NBD_DIR:-/var/tmp/restorefs-bench-nbd}
size=${SIZE_MIB:-1024}
install_missing fio qemu-utils libnbd-bin
cargo build --release -q
cargo build --release -q --example gen_chain
bin=$PWD/target/release/restorefs

# --- the chain: full + 3 incrementals, as streams (plain, lz4) and as a qcow2 chain ---
if [ ! -f "$dir/qcow/inc3.qcow2" ]; then
    rm -rf "$dir"
    target/release/examples/gen_chain "$dir" "$size" 3 1
    mkdir -p "$dir/qcow"
    qemu-img convert -O qcow2 "$dir/qcow-src/full.raw" "$dir/qcow/base.qcow2"
    prev=base
    for k in 1 2 3; do
        qemu-img create -q -f qcow2 -b "$prev.qcow2" -F qcow2 "$dir/qcow/inc$k.qcow2"
        qemu-io -f qcow2 "$dir/qcow/inc$k.qcow2" < "$dir/qcow-src/inc$k.cmds" >/dev/null
        prev=inc$k
    done
fi

tmp=$(mktemp -d /var/tmp/restorefs-bench-nbd.XXXXXX)
pid=
cleanup() {
    [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
    rm -rf "$tmp"
}
trap cleanup EXIT
cat "$dir"/plain/vm/*.data "$dir"/lz4/vm/*.data "$dir"/qcow/*.qcow2 > /dev/null

# Starts a server on $sock (sets $pid, $uri and $first_ms: start to the first 4 KiB read).
start() { # name command...
    local name=$1; shift
    local t0; t0=$(now)
    "$@" 2>>"$tmp/$name.log" &
    pid=$!
    until qemu-io -r -f raw -c 'read 0 4k' "$uri" >/dev/null 2>&1; do
        kill -0 "$pid" 2>/dev/null || { cat "$tmp/$name.log"; exit 1; }
    done
    first_ms=$(ms_since "$t0")
}
stop() { kill "$pid"; wait "$pid" 2>/dev/null || true; pid=; }
copy_mibs() { # nbdcopy args... -> MiB/s
    local t0; t0=$(now)
    nbdcopy "$@" "$uri" null:
    echo "$size $(ms_since "$t0")" | awk '{printf "%.0f", $1 * 1000 / $2}'
}
rand_iops() {
    fio --name=r --ioengine=nbd --uri="$uri" --rw=randread --bs=4k --iodepth=16 \
        --runtime=8 --time_based --readonly --output-format=json 2>/dev/null |
        sed -n '/^{/,$p' | # the nbd engine prints a line before the JSON
        python3 -c 'import json,sys; print(round(json.load(sys.stdin)["jobs"][0]["read"]["iops"]))'
}
sha() { nbdcopy "$uri" - | sha256sum | cut -c1-16; }

printf '%-26s %10s %14s %14s %12s %s\n' server first-byte seq-all seq-sparse rand-4k sha256
bench() { # name
    printf '%-26s %8s ms %9s MiB/s %9s MiB/s %8s IOPS %s\n' "$1" "$first_ms" \
        "$(copy_mibs --no-extents)" "$(copy_mibs)" "$(rand_iops)" "$(sha)"
}
for kind in plain lz4; do
    sock=$tmp/rfs-$kind.sock
    uri="nbd+unix:///vm/latest/vda.raw?socket=$sock"
    start "rfs-$kind" "$bin" serve "$dir/$kind" --nbd "unix:$sock" --cache-size 256M \
        --cache-dir "$tmp/cache-$kind"
    bench "restorefs serve ($kind)"
    stop
done
sock=$tmp/qemu-nbd.sock
uri="nbd+unix:///vda?socket=$sock"
start qemu-nbd qemu-nbd --read-only --persistent --shared=0 -x vda -f qcow2 \
    --socket="$sock" "$dir/qcow/inc3.qcow2"
bench "qemu-nbd --read-only qcow2"
stop
