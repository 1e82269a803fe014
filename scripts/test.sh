#!/usr/bin/env bash
# The whole test suite: unit tests, reference conformance, property tests, bad-input tests,
# FUSE mounts, the fixed-seed fuzz run; then the concurrent parts under the shuttle model
# checker (many thread schedules of the same code).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/test-tools.sh
cargo test "$@"
cargo test --features shuttle --lib shuttle_ "$@"
