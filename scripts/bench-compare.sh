#!/usr/bin/env bash
# Two builds of restorefs side by side on bench.sh's chain (not a test): did a change make
# anything slower? Runs alternate before/after so that drift of this (shared, noisy) machine
# hits both; the spread of each side's runs is the noise to compare the difference with.
#
#   scripts/bench-compare.sh BEFORE_BINARY [AFTER_BINARY]   # RUNS (default 3), BENCH_DIR,
#                                                           # SOURCES (default "plain lz4"),
#                                                           # FIO_SECONDS, DROP_CACHES=0
#
# AFTER_BINARY defaults to this tree's release build. Needs root (FUSE, drop_caches) and fio.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/bench-lib.sh
before=$(realpath "$1")
dir=${BENCH_DIR:-/var/tmp/restorefs-bench}
runs=${RUNS:-3}
sources=${SOURCES:-plain lz4}
[ -n "${2:-}" ] || cargo build --release -q
after=$(realpath "${2:-target/release/restorefs}")
install_missing fio
bench_chain "$dir"
bench_scratch compare

warm() { cat "$dir"/plain/vm/*.data "$dir"/lz4/vm/*.data > /dev/null; }
start() { # binary source
    local m="$tmp/mnt$RANDOM"
    mkdir -p "$m"
    local t0; t0=$(now)
    "$1" mount "$2" "$m" --cache-size 256M 2>>"$tmp/rfs.log" &
    pid=$!
    file="$m/vm/latest/vda.raw"
    wait_first_read "$file"
    first_ms=$(ms_since "$t0")
}
stop() {
    hwm=$(peak_rss "$pid")
    kill -TERM "$pid"
    wait "$pid" 2>/dev/null || true
}

declare -A res
measure() { # name run binary source
    local name=$1 run=$2
    drop_caches; start "$3" "$4"; res[$name,first,$run]=$first_ms
    warm; read -r bw _ < <(fio_run "$file" read 1M 0 1); res[$name,seq,$run]=$bw
    warm; read -r bw _ < <(fio_run "$file" read 1M 1 1); res[$name,seqd,$run]=$bw
    read -r _ io < <(fio_run "$file" randread 4k 1 1); res[$name,rand1,$run]=$io
    read -r _ io < <(fio_run "$file" randread 4k 1 4); res[$name,rand4,$run]=$io
    stop; res[$name,rss,$run]=$hwm
}
stats() { # name metric: median min max
    for run in $(seq "$runs"); do echo "${res[$1,$2,$run]}"; done | sort -g |
        awk '{a[NR]=$1} END {print a[int((NR+1)/2)], a[1], a[NR]}'
}

echo "measuring ($runs runs each, alternating before/after)..."
for run in $(seq "$runs"); do
    for src in $sources; do
        measure "before-$src" "$run" "$before" "$dir/$src"
        measure "after-$src" "$run" "$after" "$dir/$src"
    done
done

row() { # label metric unit src
    read -r b bmin bmax < <(stats "before-$4" "$2")
    read -r a amin amax < <(stats "after-$4" "$2")
    printf "| %-40s | %10s (%s–%s) | %10s (%s–%s) | %6s |\n" "$1 ($3)" "$b" "$bmin" "$bmax" "$a" "$amin" "$amax" \
        "$(python3 -c "print(round($a/$b,2) if $b else '-')")"
}
for src in $sources; do
    echo
    echo "| 4 GiB chain, $src (median (min–max) of $runs) | before | after | after/before |"
    echo "|---|---|---|---|"
    row "sequential 1 MiB, buffered" seq "MiB/s" "$src"
    row "sequential 1 MiB, direct" seqd "MiB/s" "$src"
    row "random 4 KiB, direct, 1 job" rand1 "IOPS" "$src"
    row "random 4 KiB, direct, 4 jobs" rand4 "IOPS" "$src"
    row "start to first 4 KiB read" first "ms" "$src"
    row "peak RSS" rss "KiB" "$src"
done
