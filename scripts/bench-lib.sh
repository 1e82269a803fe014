# shellcheck shell=bash
# Helpers shared by the benchmark scripts; sourced, not run.

now() { date +%s%N; }
ms_since() { echo $(( ($(now) - $1) / 1000000 )); }
# DROP_CACHES=0 keeps the page cache (a shared machine): "cold" figures are then warm.
drop_caches() { [ "${DROP_CACHES:-1}" = 0 ] || { sync; echo 3 > /proc/sys/vm/drop_caches; }; }
# Peak RSS (KiB) of a running process.
peak_rss() { awk '/VmHWM/ {print $2}' "/proc/$1/status"; }
# Returns once the first 4 KiB of a served file can be read.
wait_first_read() { until [ "$(head -c 4096 "$1" 2>/dev/null | wc -c)" = 4096 ]; do :; done; }
# Installs the Debian packages among the arguments that are missing.
install_missing() {
    local need=() p
    for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || need+=("$p"); done
    [ ${#need[@]} -eq 0 ] || { apt-get update -qq && apt-get install -y -qq "${need[@]}" >/dev/null; }
}
# fio, FIO_SECONDS (default 12) s: prints MiB/s and IOPS.
fio_run() { # file rw bs direct jobs
    fio --name=b --filename="$1" --rw="$2" --bs="$3" --direct="$4" --numjobs="$5" \
        --ioengine=psync --group_reporting --readonly --runtime="${FIO_SECONDS:-12}" --output-format=json 2>/dev/null |
        python3 -c 'import json,sys; r=json.load(sys.stdin)["jobs"][0]["read"]; print(round(r["bw_bytes"]/1048576,1), round(r["iops"]))'
}
# The 4 GiB benchmark chain (full + 3 incrementals, plain and lz4) in $1, generated when missing.
bench_chain() {
    [ -f "$1/plain/vm/vda.inc.virtnbdbackup.3.data" ] && [ -f "$1/lz4/vm/vda.inc.virtnbdbackup.3.data" ] && return
    cargo build --release -q --example gen_chain
    rm -rf "$1"
    target/release/examples/gen_chain "$1" 4096 3 1
}
# Makes $tmp, a scratch folder named after $1, whose mounts and background jobs go at exit.
bench_scratch() {
    tmp=$(mktemp -d "/var/tmp/restorefs-$1.XXXXXX")
    trap 'for m in "$tmp"/mnt*; do [ -e "$m" ] && { umount -l "$m" 2>/dev/null || true; }; done
          jobs -p | xargs -r kill 2>/dev/null || true
          rm -rf "$tmp"' EXIT
}
