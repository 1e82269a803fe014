#!/usr/bin/env bash
# The daemon's inode table and RSS under many names (not a test; a measurement):
#  1. a Core Lightning log with NAMES versions (default 1,000,000), so one set folder lists that
#     many points: `find` over the mount, table size (statfs' file count) and peak RSS after;
#  2. a live set: versions appended for SECONDS (default 300) while the set is listed every
#     half second; the table size and RSS are sampled each 30 s.
# Usage: scripts/bench-inodes.sh [NAMES] [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bench-lib.sh
names=${1:-1000000}
live_secs=${2:-300}
work=$(mktemp -d /tmp/restorefs-bench-inodes.XXXXXX)
mnt=$work/mnt
mkdir -p "$work/src" "$work/live" "$mnt"
cleanup() {
    target/release/restorefs umount "$mnt" 2>/dev/null || true
    [ -n "${pid:-}" ] && kill "$pid" 2>/dev/null || true
    [ -n "${writer:-}" ] && kill "$writer" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
cargo build --release -q

# A log in the plugin's format (512-byte header; u32 length, u32 version, u8 type entries): a
# snapshot of a database holding only data_version, then one bump per version.
cat > "$work/gen.py" <<'EOF'
import os, sqlite3, struct, sys, time
path, first, last, mode = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
def bump(v):
    return ("UPDATE vars SET intval = intval + 1 WHERE name = 'data_version' AND intval = %d" % (v - 1)).encode()
def entry(v, kind, payload):
    return struct.pack(">IIB", len(payload), v, kind) + payload
def header(head, nxt, last_off, count):
    return (struct.pack(">IIQIQQ", 1, head, nxt, head - 1, last_off, count)).ljust(512, b"\0")
if mode == "new":
    db = path + ".snap"
    c = sqlite3.connect(db)
    c.executescript("CREATE TABLE vars (name TEXT PRIMARY KEY, intval INTEGER);"
                    "INSERT INTO vars VALUES ('data_version', 1);")
    c.close()
    body = bytearray(entry(1, 2, open(db, "rb").read()))
    os.remove(db)
    last_off, count = 512, 1
    for v in range(first, last + 1):
        last_off = 512 + len(body)
        body += entry(v, 1, bump(v))
        count += 1
    with open(path, "wb") as f:
        f.write(header(last, 512 + len(body), last_off, count))
        f.write(body)
else:
    # Live: append one version every 10 ms, rewriting the header like the plugin does.
    with open(path, "r+b") as f:
        _, head, nxt, _, last_off, count = struct.unpack(">IIQIQQ", f.read(36))
        v = head
        deadline = time.time() + float(mode)
        while time.time() < deadline:
            v += 1
            f.seek(nxt)
            e = entry(v, 1, bump(v))
            f.write(e)
            last_off, nxt, count = nxt, nxt + len(e), count + 1
            f.seek(0)
            f.write(header(v, nxt, last_off, count)[:36])
            f.flush()
            time.sleep(0.01)
EOF

echo "## 1. $names names in one folder"
t0=$(now)
python3 "$work/gen.py" "$work/src/node.bkp" 2 "$names" new
echo "generated $(du -h "$work/src/node.bkp" | cut -f1) log in $(ms_since "$t0") ms"
target/release/restorefs mount "$work/src" "$mnt" --cache-dir "$work/cache" 2>"$work/mount.log" &
pid=$!
until mountpoint -q "$mnt"; do sleep 0.05; done
echo "after mount: table $(stat -f -c %c "$mnt") inodes, RSS $(awk '/VmRSS/ {print $2}' /proc/$pid/status) KiB"
t0=$(now)
n=$(find "$mnt" -maxdepth 2 | wc -l)
echo "find -maxdepth 2: $n names in $(ms_since "$t0") ms"
echo "after find: table $(stat -f -c %c "$mnt") inodes, RSS $(awk '/VmRSS/ {print $2}' /proc/$pid/status) KiB, peak $(peak_rss $pid) KiB"
t0=$(now)
n=$(find "$mnt" -maxdepth 2 | wc -l)
echo "second find: $n names in $(ms_since "$t0") ms; table $(stat -f -c %c "$mnt") inodes, peak $(peak_rss $pid) KiB"
target/release/restorefs umount "$mnt"
wait "$pid" || true
pid=

echo "## 2. a live set growing for ${live_secs} s, listed every 0.5 s"
python3 "$work/gen.py" "$work/live/node.bkp" 2 100 new
target/release/restorefs mount "$work/live" "$mnt" --cache-dir "$work/cache" 2>"$work/mount.log" &
pid=$!
until mountpoint -q "$mnt"; do sleep 0.05; done
python3 "$work/gen.py" "$work/live/node.bkp" 0 0 "$live_secs" &
writer=$!
start=$(date +%s)
next=0
while kill -0 "$writer" 2>/dev/null; do
    ls "$mnt/node.bkp" > /dev/null
    el=$(( $(date +%s) - start ))
    if [ "$el" -ge "$next" ]; then
        echo "t=${el}s: $(ls "$mnt/node.bkp" | wc -l) points listed, table $(stat -f -c %c "$mnt") inodes, RSS $(awk '/VmRSS/ {print $2}' /proc/$pid/status) KiB"
        next=$(( next + 30 ))
    fi
    sleep 0.5
done
writer=
echo "end: $(ls "$mnt/node.bkp" | wc -l) points, table $(stat -f -c %c "$mnt") inodes, RSS $(awk '/VmRSS/ {print $2}' /proc/$pid/status) KiB, peak $(peak_rss $pid) KiB"
