#!/usr/bin/env bash
# Every test, on a fresh Debian machine, as root: installs the Debian
# packages the build and the tests need (scripts/install-deps.sh), then
# runs the whole suite strictly: every skip is a failure (CI has root,
# /dev/fuse, loop devices and every tool install-deps installed), and no
# knob may weaken the suite; then each fuzz target for a short smoke run.
# Extra arguments go to `cargo test` (and skip the fuzz smoke).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
unset SAFEMOUNT_TEST_ALLOW_WEAK
export SAFEMOUNT_TEST_STRICT=1
cargo test --release --workspace "$@"
# Every fuzz target briefly, as a smoke test (the long runs are by hand:
# README, "Fuzzing"); skipped when arguments narrow the run.
if [ $# -eq 0 ]; then
  scripts/fuzz.sh 20
fi
