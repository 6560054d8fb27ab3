//! Skips and test knobs: the one helper every test crate uses (the engine's
//! unit tests, the worker's and broker's integration tests and the
//! end-to-end tests include this file with `#[path]`), so that one switch
//! governs them all.
//!
//! * [`skip`] is the only way a test gives up. It prints to stderr (which
//!   libtest does not capture, so CI logs show it), and with
//!   `SAFEMOUNT_TEST_STRICT=1` (set by `.ci/run`) it fails the test instead.
//! * [`knob`] reads a `SAFEMOUNT_E2E_*` / `SAFEMOUNT_DIFF_*` setting that can
//!   weaken or redirect a test; it refuses one unless
//!   `SAFEMOUNT_TEST_ALLOW_WEAK=1` says that is meant.
//!
//! Standard library only: the worker's engine includes it too.

#![allow(dead_code, reason = "each test crate uses a different subset")]

/// Set to `1`, every skip fails its test.
pub const STRICT_VAR: &str = "SAFEMOUNT_TEST_STRICT";
/// Set to `1`, tests accept the knobs that weaken or redirect them.
pub const ALLOW_WEAK_VAR: &str = "SAFEMOUNT_TEST_ALLOW_WEAK";

/// Whether skips are failures (`SAFEMOUNT_TEST_STRICT=1`).
pub fn strict() -> bool {
    std::env::var(STRICT_VAR).is_ok_and(|v| v == "1")
}

/// Gives up on (part of) a test: one line on stderr, or, in strict mode, a
/// panic that fails the test.
#[track_caller]
pub fn skip(why: &str) {
    if strict() {
        panic!("skip refused ({STRICT_VAR}=1): {why}");
    }
    eprintln!("SKIPPED: {why} ({STRICT_VAR}=1 would make this a failure)");
}

/// Gives up on a test whose input is optional data kept outside the
/// repository (the shared hostile-image corpus, `../shared/corpus`, which
/// a fresh clone does not have: the project's tests must pass without it).
/// One line on stderr, and never a failure, strict or not.
pub fn absent_data(why: &str) {
    eprintln!("SKIPPED (optional data absent, not a failure even with {STRICT_VAR}=1): {why}");
}

/// Whether this process runs with effective uid 0 (read from
/// /proc/self/status: no libc call, so the engine's `forbid(unsafe_code)`
/// holds).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

/// True when root; otherwise skips (see [`skip`]) and returns false.
#[track_caller]
pub fn require_root(what: &str) -> bool {
    if is_root() {
        true
    } else {
        skip(&format!("{what} needs root"));
        false
    }
}

/// Whether knobs that weaken the suite are allowed.
pub fn allow_weak() -> bool {
    std::env::var(ALLOW_WEAK_VAR).is_ok_and(|v| v == "1")
}

/// The value of a knob that can weaken or redirect a test, if set. Refused
/// (panics) unless `SAFEMOUNT_TEST_ALLOW_WEAK=1`.
#[track_caller]
pub fn knob(name: &str) -> Option<String> {
    let v = std::env::var(name).ok()?;
    if !allow_weak() {
        panic!(
            "{name}={v:?} would weaken or redirect this test; \
             set {ALLOW_WEAK_VAR}=1 to use it anyway"
        );
    }
    Some(v)
}

/// Prints a test's effective settings (one line on stderr), marking the ones
/// a knob changed.
pub fn print_settings(test: &str, settings: &[(&str, String, bool)]) {
    let parts: Vec<String> = settings
        .iter()
        .map(|(k, v, from_env)| {
            if *from_env {
                format!("{k}={v} (from the environment)")
            } else {
                format!("{k}={v}")
            }
        })
        .collect();
    eprintln!(
        "[{test}] settings: {}; strict={}",
        parts.join(", "),
        strict()
    );
}
