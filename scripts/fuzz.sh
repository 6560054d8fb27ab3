#!/usr/bin/env bash
# Runs the coverage-guided fuzz targets of fuzz/ (cargo fuzz, libFuzzer):
#   scripts/fuzz.sh [SECONDS] [TARGET...]
# each TARGET (default: all) for SECONDS (default 30: the smoke run the test
# command makes). Inputs: the committed seeds (fuzz/seeds/TARGET) and the
# growing corpus (fuzz/corpus/TARGET; `fuzz/make-seeds.sh --corpus` adds
# ../shared/corpus's images). A crash stops the run with the input saved in
# fuzz/artifacts/TARGET/; copy it to fuzz/regressions/TARGET/ with the fix,
# where a unit test replays it forever.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds=${1:-30}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(parsers proto mount_walk rw_ops replay)
# cargo-fuzz is a cargo subcommand from crates.io, pinned; it asks for
# nightly-only flags, which RUSTC_BOOTSTRAP lets the stable toolchain take.
if ! cargo fuzz --version 2>/dev/null | grep -q '0.13.2'; then
  cargo install cargo-fuzz --locked --version =0.13.2 --quiet
fi
export RUSTC_BOOTSTRAP=1
# No sanitizer: the engine is safe Rust; panics, overflows (debug
# assertions on) and timeouts are the findings.
flags=(-O -s none --debug-assertions)
cargo fuzz build "${flags[@]}" >/dev/null
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t"
  max_len=262144
  case "$t" in parsers|proto) max_len=8192 ;; esac
  echo "fuzz: $t for ${seconds}s"
  cargo fuzz run "${flags[@]}" "$t" "corpus/$t" "seeds/$t" -- \
    -max_total_time="$seconds" -max_len="$max_len" -timeout=20 \
    -rss_limit_mb=3072 -print_final_stats=1 2>&1 |
    grep -E '^(stat::number_of_executed_units|stat::peak_rss_mb|==|INFO: -max_total_time|SUMMARY|thread .* panicked|Test unit written)' || true
  # cargo fuzz's status is lost in the pipe: a crash leaves an artifact.
  if compgen -G "artifacts/$t/crash-*" >/dev/null || compgen -G "artifacts/$t/timeout-*" >/dev/null ||
     compgen -G "artifacts/$t/oom-*" >/dev/null; then
    echo "fuzz: $t found a failing input: fuzz/artifacts/$t/" >&2
    exit 1
  fi
done
