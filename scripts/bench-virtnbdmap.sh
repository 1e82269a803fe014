#!/usr/bin/env bash
# restorefs against virtnbdmap (Debian's virtnbdbackup) on the chain of scripts/bench.sh
# (not a test; figures go to README.md under Performance).
#
#   scripts/bench-virtnbdmap.sh   # BENCH_DIR (default /var/tmp/restorefs-bench), made by bench.sh
#
# virtnbdmap serves a chain through nbdkit's python plugin and connects it with
# `qemu-nbd -c /dev/nbdX`; kernels without the nbd module (this one) cannot do that, so
# scripts/virtnbdmap-serve.py runs virtnbdmap's own code up to that point and nbdfuse reads the
# export instead, through FUSE like restorefs. Needs root; installs virtnbdbackup, nbdkit,
# its python plugin, nbdfuse, python3-libnbd and fio if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/bench-lib.sh
dir=${BENCH_DIR:-/var/tmp/restorefs-bench}
[ -f "$dir/plain/vm/vda.inc.virtnbdbackup.3.data" ] || { echo "run scripts/bench.sh first"; exit 1; }
install_missing virtnbdbackup nbdkit nbdkit-plugin-python nbdfuse python3-libnbd fio
cargo build --release -q
bin=$PWD/target/release/restorefs
py=/usr/bin/python3 # Debian's, which has virtnbdbackup's and libnbd's modules
s=$dir/plain/vm
chain=$s/vda.full.data,$s/vda.inc.virtnbdbackup.1.data,$s/vda.inc.virtnbdbackup.2.data,$s/vda.inc.virtnbdbackup.3.data

tmp=$(mktemp -d /var/tmp/restorefs-vmap.XXXXXX)
port=10811
cleanup() {
    umount "$tmp/nbd" 2>/dev/null || true
    [ -d "$tmp/rfs" ] && { "$bin" umount "$tmp/rfs" 2>/dev/null || true; }
    pkill -f "nbdkit.*-p $port" 2>/dev/null || true
    jobs -p | xargs -r kill 2>/dev/null || true
    rm -rf "$tmp"
}
trap cleanup EXIT
mkdir -p "$tmp/nbd" "$tmp/rfs" "$tmp/t"
# virtnbdmap's block map, nbdkit's log and pid file, and the cow overlay go to TMPDIR.
export TMPDIR=$tmp/t
fio_rand() { # file -> "IOPS errors"
    fio --name=b --filename="${1//:/\\:}" --rw=randread --bs=4k --direct=1 --numjobs=1 --ioengine=psync \
        --readonly --runtime=10 --time_based --continue_on_error=read --output-format=json \
        2>/dev/null | $py -c 'import json,sys; j=json.load(sys.stdin)["jobs"][0]; print(round(j["read"]["iops"]), j["total_err"])'
}
# Bytes read from the start before the first error, and whether they equal restorefs's export.
readable() { # file expected-image
    local n
    n=$(dd if="$1" of="$tmp/got" bs=1M iflag=fullblock 2>/dev/null; stat -c %s "$tmp/got")
    if cmp -s -n "$n" "$tmp/got" "$2"; then echo "$n same"; else echo "$n differ"; fi
    rm -f "$tmp/got"
}
# 2000 random 4 KiB blocks against the expected image: "right wrong EIO".
sample() { # file expected-image
    $py - "$1" "$2" <<'PY'
import os, random, sys
got, want = os.open(sys.argv[1], os.O_RDONLY), os.open(sys.argv[2], os.O_RDONLY)
blocks = os.fstat(want).st_size // 4096
random.seed(1)
n = {"right": 0, "wrong": 0, "eio": 0}
for _ in range(2000):
    off = random.randrange(blocks) * 4096
    try:
        n["right" if os.pread(got, 4096, off) == os.pread(want, 4096, off) else "wrong"] += 1
    except OSError:
        n["eio"] += 1
print(n["right"], n["wrong"], n["eio"])
PY
}

full=$("$bin" ls "$dir/plain" --json 2>/dev/null | $py -c 'import json,sys; print(json.load(sys.stdin)["sets"][0]["points"][0]["name"])')
size=$(stat -c %s "$dir/qcow-src/full.raw")
"$bin" export "$dir/plain" "vm/$full/vda.raw" -o "$tmp/full.raw" 2>/dev/null

echo "virtnbdmap $(dpkg-query -W -f '${Version}' virtnbdbackup), nbdkit $(dpkg-query -W -f '${Version}' nbdkit)"
echo "1. the newest point: full + 3 incrementals (virtnbdmap replays the increments first)"
t0=$(now)
if out=$($py scripts/virtnbdmap-serve.py "$port" "$chain" 2>"$tmp/serve.log"); then
    echo "   mapped in $(ms_since "$t0") ms (nbdkit pid $out)"
else
    echo "   FAILED after $(ms_since "$t0") ms: $(grep -m1 -o 'nbd_pwrite.*' "$tmp/serve.log" || tail -n1 "$tmp/serve.log")"
fi
pkill -f "nbdkit.*-p $port" 2>/dev/null || true
sleep 1

echo "2. the full backup alone (a point virtnbdmap can map without replaying)"
drop_caches
t0=$(now)
vpid=$($py scripts/virtnbdmap-serve.py "$port" "$s/vda.full.data" 2>"$tmp/serve.log")
nbdfuse -r "$tmp/nbd/img" "nbd://127.0.0.1:$port/sda" 2>>"$tmp/nbdfuse.log" &
fpid=$!
wait_first_read "$tmp/nbd/img"
v_first=$(ms_since "$t0")
read -r v_bytes v_same < <(readable "$tmp/nbd/img" "$tmp/full.raw")
read -r v_iops v_err < <(fio_rand "$tmp/nbd/img")
read -r v_right v_wrong v_eio < <(sample "$tmp/nbd/img" "$tmp/full.raw")
v_rss=$(( $(peak_rss "$vpid") + $(peak_rss "$fpid") ))
umount "$tmp/nbd"; kill "$vpid"; wait "$fpid" 2>/dev/null || true

drop_caches
t0=$(now)
"$bin" mount "$dir/plain" "$tmp/rfs" 2>>"$tmp/rfs.log" &
rpid=$!
img=$tmp/rfs/vm/$full/vda.raw
wait_first_read "$img"
r_first=$(ms_since "$t0")
read -r r_bytes r_same < <(readable "$img" "$tmp/full.raw")
read -r r_iops r_err < <(fio_rand "$img")
read -r r_right r_wrong r_eio < <(sample "$img" "$tmp/full.raw")
r_rss=$(peak_rss "$rpid")
"$bin" umount "$tmp/rfs"; wait "$rpid" 2>/dev/null || true

echo
echo "| full backup, $((size >> 20)) MiB | restorefs | virtnbdmap | ratio |"
echo "|---|---|---|---|"
echo "| start to first 4 KiB read (ms) | $r_first | $v_first | $($py -c "print(round($v_first/$r_first,2))") |"
echo "| sequential read from the start (bytes before the first error) | $r_bytes of $size, $r_same | $v_bytes of $size, $v_same | |"
echo "| random 4 KiB, direct, 1 job (IOPS) | $r_iops ($r_err errors) | $v_iops ($v_err errors) | $($py -c "print(round($r_iops/$v_iops,2))") |"
echo "| 2000 random 4 KiB blocks: right / wrong / EIO | $r_right / $r_wrong / $r_eio | $v_right / $v_wrong / $v_eio | |"
echo "| peak RSS (KiB) | $r_rss | $v_rss (nbdkit + nbdfuse) | |"
