//! The Debian package: runs `packaging/tests/install-test.sh`, which builds
//! the package from the binaries cargo just built (no rebuild), installs it
//! with `dpkg --root` into a fresh temporary directory, checks units,
//! polkit policy, man pages and a real socket-activated start of the
//! installed broker (as "nobody", on a socket in that directory), then
//! removes and purges it. It touches nothing on the host: no /usr, /etc,
//! /run or systemd state, and nothing in the repository (the package is
//! built in the temporary directory), so it runs beside the other tests.
//!
//! Also runs `packaging/tests/systemd-container-test.sh`: the automount
//! path (udev rule, safemount-auto@.service, socket-activated broker)
//! under a real systemd in a systemd-nspawn container.
//!
//! Skips (with a printed reason) only without root or without dpkg-deb, or
//! (the container test) without systemd-nspawn, udev or /dev/fuse.

#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed setup step must fail the test, with its error"
)]

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use safemount_tests::skip;

/// The install test normally takes about 10 s; this is its hard limit.
const TIMEOUT: Duration = Duration::from_secs(150);
/// The container test normally takes about 40 s.
const CONTAINER_TIMEOUT: Duration = Duration::from_secs(300);

/// Binaries the package is made of, under their cargo names.
const BINARIES: [&str; 5] = [
    "safemountd",
    "safemount",
    "safemount-worker",
    "mount_safemount",
    "safemount-auto",
];

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(tool).is_file()))
}

/// The profile directory this test binary was built into
/// (`<target>/<profile>/deps/packaging-<hash>` -> `<target>/<profile>`), if
/// every binary of the package is there: the package is then made of
/// exactly the binaries this `cargo test` built.
fn built_binaries() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?.parent()?;
    BINARIES
        .iter()
        .all(|b| dir.join(b).is_file())
        .then(|| dir.to_owned())
}

fn read_all(mut r: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// Runs `packaging/tests/SCRIPT` with bash in its own process group,
/// killed after `limit`; fails the test unless it exits 0 with a
/// "N passed, 0 failed" summary. A script that says `skip: why` on its
/// first line skips (see [`skip::skip`]).
fn run_script(script: &str, limit: Duration, with_binaries: bool) {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let script = repo.join("packaging/tests").join(script);
    let mut cmd = Command::new("bash");
    cmd.arg(&script)
        .current_dir(&repo)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so a timeout can stop everything it started.
        .process_group(0);
    match built_binaries() {
        Some(dir) if with_binaries => {
            cmd.env("SAFEMOUNT_RELEASE_DIR", &dir);
        }
        _ => println!(
            "note: not every package binary next to this test; build-deb.sh uses target/release and builds what is missing"
        ),
    }
    let started = Instant::now();
    let mut child = cmd.spawn().unwrap();
    let out = read_all(child.stdout.take().unwrap());
    let err = read_all(child.stderr.take().unwrap());
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if started.elapsed() > limit {
            let pgid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
            let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGTERM);
            std::thread::sleep(Duration::from_secs(5));
            let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let out = out.join().unwrap();
    let err = err.join().unwrap();
    let name = script.file_name().unwrap_or_default().to_string_lossy();
    if let Some(why) = out.lines().next().and_then(|l| l.strip_prefix("skip: ")) {
        skip::skip(&format!("{name}: {why}"));
        return;
    }
    let summary = out.lines().last().unwrap_or("").to_owned();
    match status {
        Some(s) if s.success() => {
            assert!(
                summary.ends_with(" 0 failed") && !out.contains("\nFAIL:"),
                "{name} exited 0 but its summary is {summary:?}\n--- stdout\n{out}\n--- stderr\n{err}"
            );
            println!(
                "{name}: {summary} in {:.1} s",
                started.elapsed().as_secs_f64()
            );
        }
        Some(s) => panic!(
            "{name} failed ({s}): {summary}\n--- failures\n{}\n--- stdout\n{out}\n--- stderr\n{err}",
            out.lines()
                .filter(|l| l.starts_with("FAIL"))
                .collect::<Vec<_>>()
                .join("\n")
        ),
        None => panic!(
            "{name} took more than {} s and was killed\n--- stdout\n{out}\n--- stderr\n{err}",
            limit.as_secs()
        ),
    }
}

#[test]
fn install_test_script_passes() {
    if !skip::require_root("the install test (dpkg --root install, broker run as nobody)") {
        return;
    }
    if !on_path("dpkg-deb") {
        skip::skip("dpkg-deb not found (apt-get install dpkg)");
        return;
    }
    run_script("install-test.sh", TIMEOUT, true);
}

/// The automount path for real: udev rule, safemount-auto@.service and the
/// socket-activated broker under systemd and systemd-udevd in a
/// systemd-nspawn container booted from an overlay over the host's root
/// (see the script for the two drop-ins it needs and why). About 40 s.
#[test]
fn automount_under_real_systemd_in_a_container() {
    if !skip::require_root("booting a systemd-nspawn container") {
        return;
    }
    if !on_path("dpkg-deb") {
        skip::skip("dpkg-deb not found (apt-get install dpkg)");
        return;
    }
    run_script("systemd-container-test.sh", CONTAINER_TIMEOUT, true);
}
