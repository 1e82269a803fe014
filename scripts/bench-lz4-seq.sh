#!/usr/bin/env bash
# Sequential throughput of an LZ4 chain against the same chain written plain (issue 15 target:
# lz4 >= 65 % of plain), through FUSE, backup files in the page cache (not a test).
#
#   scripts/bench-lz4-seq.sh [BINARY...]   # ROUNDS (default 3), FIO_SECONDS (default 6),
#                                          # BENCH_DIR, CACHE_SIZE (default 256M)
#
# Each round mounts plain then lz4 with each binary in turn (default: this tree's release
# build), so drift of this shared machine hits every side; prints the median of ROUNDS for fio
# sequential 1 MiB reads, buffered and direct, the lz4/plain ratio and peak RSS (VmHWM).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/bench-lib.sh
dir=${BENCH_DIR:-/var/tmp/restorefs-bench}
rounds=${ROUNDS:-3}
export FIO_SECONDS=${FIO_SECONDS:-6}
[ $# -gt 0 ] || { cargo build --release -q; set -- target/release/restorefs; }
bins=()
for b in "$@"; do bins+=("$(realpath "$b")"); done
install_missing fio
bench_chain "$dir"
bench_scratch lz4seq

declare -A res
measure() { # binary-number round source
    local m="$tmp/mnt$RANDOM" pid file
    mkdir -p "$m"
    "${bins[$1]}" mount "$dir/$3" "$m" --cache-size "${CACHE_SIZE:-256M}" \
        --cache-dir "$tmp/cache-$1-$3" 2>>"$tmp/rfs.log" &
    pid=$!
    file="$m/vm/latest/vda.raw"
    wait_first_read "$file"
    cat "$dir/$3"/vm/*.data > /dev/null
    read -r res[$1,$3,seq,$2] _ < <(fio_run "$file" read 1M 0 1)
    read -r res[$1,$3,seqd,$2] _ < <(fio_run "$file" read 1M 1 1)
    res[$1,$3,rss,$2]=$(peak_rss "$pid")
    kill -TERM "$pid"
    wait "$pid" 2>/dev/null || true
}
median() { # key prefix
    for r in $(seq "$rounds"); do echo "${res[$1,$r]}"; done | sort -g |
        awk '{a[NR]=$1} END {print a[int((NR+1)/2)] " (" a[1] "–" a[NR] ")"}'
}

echo "measuring ($rounds rounds, FIO_SECONDS=$FIO_SECONDS, plain and lz4 alternating)..."
for r in $(seq "$rounds"); do
    for i in "${!bins[@]}"; do
        measure "$i" "$r" plain
        measure "$i" "$r" lz4
    done
done

echo
echo "| binary | metric | plain | lz4 | lz4/plain (of medians) |"
echo "|---|---|---|---|---|"
for i in "${!bins[@]}"; do
    for metric in seq seqd; do
        p=$(median "$i,plain,$metric"); l=$(median "$i,lz4,$metric")
        label=$([ "$metric" = seq ] && echo "sequential 1 MiB buffered, MiB/s" || echo "sequential 1 MiB direct, MiB/s")
        echo "| ${bins[$i]##*/} | $label | $p | $l | $(python3 -c "print(round(${l%% *}/${p%% *}, 2))") |"
    done
    echo "| ${bins[$i]##*/} | peak RSS, KiB | $(median "$i,plain,rss") | $(median "$i,lz4,rss") | |"
done
