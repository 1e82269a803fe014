#!/usr/bin/env bash
# Random 4 KiB reads (QD1, O_DIRECT) inside LZ4 frames, as a file system loop-mounted from an
# image does them (not a test): two builds side by side on bench.sh's lz4 chain, each a fresh
# daemon after `verify` of the chain into its own cache folder (where a build keeps LZ4 decoder
# checkpoints, if it does), and the plain chain with AFTER as the reference.
#
#   scripts/bench-lz4-random.sh BEFORE_BINARY [AFTER_BINARY]   # BENCH_DIR, FIO_SECONDS,
#                                       # CACHE_SIZE (64M), DROP_CACHES=0, ROUNDS (1)
#
# With ROUNDS=N, before, after and plain alternate N times (the verify and its cache folder
# from the first round kept), for a shared machine whose load changes.
#
# AFTER_BINARY defaults to this tree's release build. Needs root (FUSE, drop_caches) and fio.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/bench-lib.sh
before=$(realpath "$1")
[ -n "${2:-}" ] || cargo build --release -q
after=$(realpath "${2:-target/release/restorefs}")
dir=${BENCH_DIR:-/var/tmp/restorefs-bench}
install_missing fio
bench_chain "$dir"
bench_scratch lz4rand

measure() { # label binary source verify(0/1)
    local cache="$tmp/cache-$1" m="$tmp/mnt-$1" verify_ms=- kept
    mkdir -p "$m"
    if [ "$4" = 1 ] && [ ! -d "$cache" ]; then
        local t0; t0=$(now)
        "$2" verify "$3" --cache-dir "$cache" -q >/dev/null 2>>"$tmp/rfs.log" || true
        verify_ms=$(ms_since "$t0")
    fi
    kept=$({ find "$cache" -name '*.lz4cp' -printf '%s\n' 2>/dev/null || true; } |
        awk '{s += $1} END {print int(s / 1048576)}')
    drop_caches
    "$2" mount "$3" "$m" --cache-dir "$cache" --cache-size "${CACHE_SIZE:-64M}" 2>>"$tmp/rfs.log" &
    local pid=$!
    wait_first_read "$m/vm/latest/vda.raw"
    read -r _ iops < <(fio_run "$m/vm/latest/vda.raw" randread 4k 1 1)
    kill -TERM "$pid"
    wait "$pid" 2>/dev/null || true
    printf "| %-34s | %8s | %10s | %8s |\n" "$1" "$iops" "$verify_ms" "$kept"
}

# Without dropping caches, both chains' files are read into the page cache first, so that
# neither pays for the disk (the other chain's files may have been evicted since).
[ "${DROP_CACHES:-1}" = 1 ] || cat "$dir"/plain/vm/* "$dir"/lz4/vm/* >/dev/null
echo "| random 4 KiB QD1, fresh daemon | IOPS | verify (ms) | checkpoints (MiB) |"
echo "|---|---|---|---|"
measure "lz4, after (no verify)" "$after" "$dir/lz4" 0
for _ in $(seq "${ROUNDS:-1}"); do
    measure "lz4, before (after verify)" "$before" "$dir/lz4" 1
    measure "lz4, after (after verify)" "$after" "$dir/lz4" 1
    measure "plain, after" "$after" "$dir/plain" 0
done
