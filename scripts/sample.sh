#!/usr/bin/env bash
# Mounts the bundled sample backups (tests/data) read-only at MOUNTPOINT
# (default /tmp/restorefs-sample), in the foreground: browse it from another terminal,
# Ctrl-C unmounts. Needs /dev/fuse (run as root, or have fuse3 installed).
set -euo pipefail
cd "$(dirname "$0")/.."
mp=${1:-/tmp/restorefs-sample}
mkdir -p "$mp"
cargo build --release --quiet
exec target/release/restorefs mount tests/data "$mp"
