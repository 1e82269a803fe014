#!/usr/bin/env bash
# Long fuzz run (release build): damaged and hostile copies of the sample backups of each format
# (tests/fuzzing). Prints executions per format and findings; failing inputs are saved outside
# the repository, each with a finding.txt that says how to replay it.
#
# Usage: scripts/fuzz.sh [-n ITERATIONS] [-t SECONDS] [-s SEED] [-o DIR] [-T TIMEOUT_S] [FORMAT...]
#   FORMAT: virtnbd, clightning, freezer, nbd, inside, fat, ntfs (default: all); -n and -t apply per format.
#   Default: 60 seconds per format, seed from the clock, findings in /tmp/restorefs-fuzz.
# Replay one case: target/release/examples/fuzz --replay FORMAT:SEED
set -euo pipefail
cd "$(dirname "$0")/.."
iterations=""
seconds=60
seed=$(date +%s)
out=/tmp/restorefs-fuzz
timeout=5
while getopts "n:t:s:o:T:" opt; do
    case $opt in
        n) iterations=$OPTARG; seconds="" ;;
        t) seconds=$OPTARG ;;
        s) seed=$OPTARG ;;
        o) out=$OPTARG ;;
        T) timeout=$OPTARG ;;
        *) sed -n '2,9p' "$0"; exit 2 ;;
    esac
done
shift $((OPTIND - 1))
formats=$(IFS=,; echo "${*:-virtnbd,clightning,freezer,nbd,inside,fat,ntfs}")
case "$(realpath -m "$out")/" in
    "$(pwd)"/*) echo "fuzz.sh: $out is inside the repository; pick a folder outside it" >&2; exit 2 ;;
esac
cargo build --release --example fuzz
args=(--formats "$formats" --seed "$seed" --timeout "$timeout" --out "$out")
[ -n "$iterations" ] && args+=(--iterations "$iterations")
[ -n "$seconds" ] && args+=(--seconds "$seconds")
echo "fuzz: formats $formats, seed $seed, findings saved in $out"
exec target/release/examples/fuzz "${args[@]}"
