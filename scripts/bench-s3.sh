#!/usr/bin/env bash
# restorefs reading the benchmark chain from a local S3 server versus the same files on local
# disk (not a test; figures go to README.md under Performance).
#
#   scripts/bench-s3.sh     # SIZE_MIB (default 4096), SERVER=s3s|moto (default s3s),
#                           # BENCH_S3_DIR (default /var/tmp/restorefs-bench-s3-SIZE_MIB),
#                           # S3_FLAGS (extra mount flags for the bucket, e.g. --s3-block-size 8M)
#
# The chain (full + 3 incrementals, uncompressed streams, scripts/bench.sh's generator) is
# uploaded with boto3 to s3s-fs (a Rust S3 server, `cargo install`ed into target/s3s-fs on first
# use) or moto_server (Python, slow; the tests' server), both on 127.0.0.1. For the bucket and
# for the local folder: time from `mount` to the first 4 KiB of the newest image, sequential
# 1 MiB reads (MiB/s), random 4 KiB O_DIRECT reads, cold (fresh mount) and cached (the same
# offsets again), peak RSS; for the bucket also the requests and bytes fetched per GiB read (the
# S3 store's counters, which the daemon logs when it stops). The first mount only builds the
# index; reads are measured on remounts that find it kept. Backup files on local disk are read
# from the page cache (DROP_CACHES is never used: a shared machine). Needs root (FUSE), fio and
# the moto venv of scripts/test-tools.sh (for boto3).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/bench-lib.sh
size=${SIZE_MIB:-4096}
server=${SERVER:-s3s}
dir=${BENCH_S3_DIR:-/var/tmp/restorefs-bench-s3-$size}
venv=${RESTOREFS_MOTO_VENV:-/opt/restorefs-test/moto}
seconds=${FIO_SECONDS:-15}
install_missing fio
[ -x "$venv/bin/python" ] || { echo "no $venv: run scripts/test-tools.sh as root"; exit 1; }
cargo build --release -q
cargo build --release -q --example gen_chain
bin=$PWD/target/release/restorefs
if [ ! -f "$dir/plain/vm/vda.inc.virtnbdbackup.3.data" ]; then
    rm -rf "$dir"
    target/release/examples/gen_chain "$dir" "$size" 3 0
fi
rm -rf "$dir/lz4"

tmp=$(mktemp -d /var/tmp/restorefs-bench-s3.XXXXXX)
server_pid=
pid=
cleanup() {
    [ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
    for m in "$tmp"/mnt*; do [ -e "$m" ] && { "$bin" umount "$m" 2>/dev/null || true; }; done
    [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null
    rm -rf "$tmp"
}
trap cleanup EXIT

# --- the server, and the chain uploaded to it ---
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export AWS_ENDPOINT_URL=http://127.0.0.1:$port AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench-secret
export AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true
case $server in
    s3s)
        s3s=target/s3s-fs/bin/s3s-fs
        [ -x "$s3s" ] || cargo install -q s3s-fs --version 0.14.1 --features binary --locked --root target/s3s-fs
        mkdir -p "$tmp/s3root"
        "$s3s" --host 127.0.0.1 --port "$port" --access-key bench --secret-key bench-secret \
            "$tmp/s3root" 2>"$tmp/server.log" >&2 &
        ;;
    moto)
        "$venv/bin/moto_server" -H 127.0.0.1 -p "$port" 2>"$tmp/server.log" >&2 &
        ;;
    *) echo "SERVER=s3s or SERVER=moto"; exit 2 ;;
esac
server_pid=$!
until curl -s -o /dev/null "$AWS_ENDPOINT_URL/"; do
    kill -0 "$server_pid" 2>/dev/null || { cat "$tmp/server.log"; exit 1; }
    sleep 0.2
done
echo "uploading the $size MiB chain ($(du -sh "$dir/plain" | cut -f1) of streams) to $server..."
t0=$(now)
"$venv/bin/python" - "$dir/plain" <<'EOF'
import os, sys, boto3
s3 = boto3.client("s3")
s3.create_bucket(Bucket="bench")
root = sys.argv[1]
for folder, _, files in os.walk(root):
    for name in files:
        path = os.path.join(folder, name)
        s3.upload_file(path, "bench", "plain/" + os.path.relpath(path, root))
EOF
echo "uploaded in $(ms_since "$t0") ms"
needed=$(du -cb "$dir"/plain/vm/*.data | tail -1 | cut -f1)
cat "$dir"/plain/vm/*.data > /dev/null

# --- measurements ---
# Mounts $1 (sets $pid, $mnt, $file and $first_ms: mount start to the first 4 KiB read).
start() { # source [flags...]
    local src=$1; shift
    mnt="$tmp/mnt$RANDOM"
    mkdir -p "$mnt"
    local t0; t0=$(now)
    "$bin" -v mount "$src" "$mnt" --cache-size 1G --cache-dir "$tmp/cache-$name" "$@" 2>"$tmp/rfs.log" &
    pid=$!
    file="$mnt/vm/latest/vda.raw"
    until [ "$(head -c 4096 "$file" 2>/dev/null | wc -c)" = 4096 ]; do
        kill -0 "$pid" 2>/dev/null || { cat "$tmp/rfs.log"; exit 1; }
    done
    first_ms=$(ms_since "$t0")
}
stop() { # sets $rss (KiB), $counts (the S3 store's last logged counters)
    rss=$(peak_rss "$pid")
    kill -TERM "$pid"
    wait "$pid" 2>/dev/null || true
    pid=
    counts=$(grep -o '[0-9]* requests, [0-9]* bytes fetched' "$tmp/rfs.log" | tail -1 || true)
}
fio_json() { # rw bs direct extra... -> json
    local rw=$1 bs=$2 direct=$3; shift 3
    fio --name=b --filename="$file" --rw="$rw" --bs="$bs" --direct="$direct" --numjobs=1 \
        --ioengine=psync --readonly --randrepeat=1 --output-format=json "$@" 2>/dev/null
}
field() { python3 -c "import json,sys; r=json.load(sys.stdin)['jobs'][0]['read']; print($1)"; }

declare -A res
measure() { # name source [flags...]
    name=$1; shift
    # Session 1: the first mount builds the index (kept in --cache-dir); no reads but 4 KiB.
    start "$@"
    res[$name,first]=$first_ms
    stop
    res[$name,rss]=$rss
    echo "  first mount: first 4 KiB after $first_ms ms; ${counts:-no S3 counters}"
    start "$@"
    stop
    echo "  remount: first 4 KiB after $first_ms ms; ${counts:-no S3 counters}"
    # Session 2: a remount (its index kept), one sequential pass (bounded in time).
    start "$@"
    res[$name,refirst]=$first_ms
    local j; j=$(fio_json read 1M 0 --runtime="$seconds")
    res[$name,seq]=$(field 'round(r["bw_bytes"] / 1048576, 1)' <<<"$j")
    local read_bytes; read_bytes=$(field 'r["io_bytes"]' <<<"$j")
    stop
    [ "$rss" -gt "${res[$name,rss]}" ] && res[$name,rss]=$rss
    echo "  remount: first 4 KiB after $first_ms ms, sequential ${res[$name,seq]} MiB/s, $read_bytes bytes read; ${counts:-no S3 counters}"
    if [ -n "$counts" ]; then
        read -r reqs _ bytes _ <<<"$counts"
        res[$name,reqs]=$(python3 -c "print(round($reqs * 2**30 / $read_bytes))")
        res[$name,bytes]=$(python3 -c "print(round($bytes / $read_bytes, 3))")
        res[$name,streams]=$(python3 -c "print(round($bytes / $needed, 3))")
    fi
    # Session 3: a remount, random 4 KiB reads, then the same offsets again.
    start "$@"
    j=$(fio_json randread 4k 1 --runtime="$seconds")
    res[$name,cold]=$(field 'round(r["iops"])' <<<"$j")
    local ios; ios=$(field 'r["total_ios"]' <<<"$j")
    j=$(fio_json randread 4k 1 --number_ios="$ios")
    res[$name,cached]=$(field 'round(r["iops"])' <<<"$j")
    stop
    [ "$rss" -gt "${res[$name,rss]}" ] && res[$name,rss]=$rss
    echo "  remount: random cold ${res[$name,cold]} IOPS ($ios reads), cached ${res[$name,cached]} IOPS; ${counts:-no S3 counters}"
}

echo "measuring the local folder..."
measure local "$dir/plain"
echo "measuring s3://bench/plain on $server..."
# shellcheck disable=SC2086 # S3_FLAGS: extra flags, e.g. "--s3-block-size 16M --s3-prefetch 4"
measure s3 s3://bench/plain ${S3_FLAGS:-}

row() { # label metric unit
    printf "| %-44s | %12s | %12s |\n" "$1 ($3)" "${res[local,$2]:--}" "${res[s3,$2]:--}"
}
echo
echo "| $size MiB chain, full + 3 incs, newest point | local folder | s3 ($server) ${S3_FLAGS:-} |"
echo "|---|---|---|"
row "mount to first 4 KiB read, first mount" first "ms"
row "mount to first 4 KiB read, remount" refirst "ms"
row "sequential 1 MiB, buffered" seq "MiB/s"
row "random 4 KiB, direct, cold" cold "IOPS"
row "random 4 KiB, direct, cached" cached "IOPS"
row "requests per GiB read (sequential)" reqs "n"
row "bytes fetched / image bytes read (seq.)" bytes "ratio"
row "bytes fetched / chain's stream bytes (seq.)" streams "ratio"
row "peak RSS (--cache-size 1G)" rss "KiB"
echo
echo "(the chain's streams hold $needed bytes for a $((size << 20))-byte image)"
