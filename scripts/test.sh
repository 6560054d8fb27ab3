#!/usr/bin/env bash
# Every test, on a fresh Debian machine, as root: installs the Debian
# packages the build and the tests need (scripts/install-deps.sh), then
# runs the whole suite strictly: every skip is a failure (CI has root,
# /dev/fuse, loop devices and every tool install-deps installed), and no
# knob may weaken the suite. Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
unset SAFEMOUNT_TEST_ALLOW_WEAK
export SAFEMOUNT_TEST_STRICT=1
exec cargo test --release --workspace "$@"
