#!/usr/bin/env bash
# The whole test suite: unit tests, reference conformance, property tests, bad-input tests.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test "$@"
