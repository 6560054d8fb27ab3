//! The sandbox, proven from inside the real worker binary: each test runs
//! `safemount-worker --sandbox-selftest WHAT`, which enters the complete
//! sandbox and then makes one call. Forbidden calls must kill the process
//! with SIGSYS (seccomp's KILL_PROCESS) after the sandbox was entered.
//! Needs root (the sandbox unshares namespaces and changes uid); skipped
//! with a message otherwise.

use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Output, Stdio};

const WORKER: &str = env!("CARGO_BIN_EXE_safemount-worker");

/// Skips and test knobs, shared with every test crate (see the file).
#[path = "../../tests/src/skip.rs"]
mod skip;

fn is_root() -> bool {
    skip::require_root("the sandbox tests")
}

/// The `safemount` user if it exists, else nobody (65534).
fn sandbox_ids() -> (u32, u32) {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    for line in passwd.lines() {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() > 3
            && f[0] == "safemount"
            && let (Ok(u), Ok(g)) = (f[2].parse(), f[3].parse())
        {
            return (u, g);
        }
    }
    (65534, 65534)
}

fn selftest(what: &str) -> Output {
    let (uid, gid) = sandbox_ids();
    Command::new(WORKER)
        .args(["--sandbox-selftest", what])
        .args(["--uid", &uid.to_string(), "--gid", &gid.to_string()])
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .expect("run the worker")
}

fn assert_killed_by_seccomp(what: &str) {
    if !is_root() {
        return;
    }
    let out = selftest(what);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("sandbox entered")
            && stderr.contains(&format!("selftest {what}: attempting")),
        "{what}: the sandbox was not entered: {stderr}"
    );
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGSYS),
        "{what}: expected death by SIGSYS, got {:?}: {stderr}",
        out.status
    );
}

#[test]
fn open_is_killed() {
    assert_killed_by_seccomp("open");
}

#[test]
fn socket_is_killed() {
    assert_killed_by_seccomp("socket");
}

#[test]
fn execve_is_killed() {
    assert_killed_by_seccomp("execve");
}

#[test]
fn kill_is_killed() {
    assert_killed_by_seccomp("kill");
}

#[test]
fn ptrace_is_killed() {
    assert_killed_by_seccomp("ptrace");
}

#[test]
fn mount_is_killed() {
    assert_killed_by_seccomp("mount");
}

#[test]
fn fork_is_killed() {
    assert_killed_by_seccomp("fork");
}

#[test]
fn executable_memory_is_killed() {
    assert_killed_by_seccomp("mmap-exec");
}

#[test]
fn setuid_is_killed() {
    assert_killed_by_seccomp("setuid");
}

#[test]
fn unshare_is_killed() {
    assert_killed_by_seccomp("unshare");
}

#[test]
fn threads_work_inside_the_sandbox() {
    if !is_root() {
        return;
    }
    let out = selftest("threads");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}: {stderr}", out.status);
    assert!(stderr.contains("selftest threads: ok sum=12"), "{stderr}");
}

#[test]
fn device_reads_work_inside_the_sandbox() {
    if !is_root() {
        return;
    }
    let out = selftest("device");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}: {stderr}", out.status);
    assert!(stderr.contains("selftest device: ok"), "{stderr}");
}

/// A panic in any thread aborts the whole worker with SIGABRT: the abort
/// path itself passes the filter.
#[test]
fn a_panic_aborts_the_worker() {
    if !is_root() {
        return;
    }
    let out = selftest("panic");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("selftest panic"), "{stderr}");
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGABRT),
        "{:?}: {stderr}",
        out.status
    );
}

#[test]
fn root_ids_are_refused() {
    if !is_root() {
        return;
    }
    let out = Command::new(WORKER)
        .args(["--sandbox-selftest", "threads", "--uid", "0", "--gid", "0"])
        .stderr(Stdio::piped())
        .output()
        .expect("run the worker");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("refusing to run as uid 0"), "{stderr}");
}

fn status_field<'a>(status: &'a str, name: &str) -> &'a str {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no {name} in /proc status"))
}

/// Reads what /proc shows of a sandboxed worker while it sleeps.
#[test]
fn proc_shows_the_sandbox() {
    if !is_root() {
        return;
    }
    let (uid, gid) = sandbox_ids();
    let mut child = Command::new(WORKER)
        .args(["--sandbox-selftest", "status"])
        .args(["--uid", &uid.to_string(), "--gid", &gid.to_string()])
        .env("SECRET_FROM_PARENT", "leak")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the worker");
    let pid = child.id();
    let mut lines = BufReader::new(child.stderr.take().expect("stderr"));
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        if lines.read_line(&mut line).expect("read stderr") == 0 {
            let _ = child.kill();
            panic!("worker ended before it was ready: {seen}");
        }
        seen.push_str(&line);
        if line.contains("selftest status: ready") {
            break;
        }
    }
    let proc_dir = format!("/proc/{pid}");
    let status = std::fs::read_to_string(format!("{proc_dir}/status")).expect("status");
    let fds: Vec<String> = std::fs::read_dir(format!("{proc_dir}/fd"))
        .expect("fd dir")
        .map(|e| {
            e.expect("fd entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    let mountinfo = std::fs::read_to_string(format!("{proc_dir}/mountinfo")).expect("mountinfo");
    let limits = std::fs::read_to_string(format!("{proc_dir}/limits")).expect("limits");
    let netns = std::fs::read_link(format!("{proc_dir}/ns/net")).expect("netns");
    let our_netns = std::fs::read_link("/proc/self/ns/net").expect("our netns");
    let _ = child.kill();
    let _ = child.wait();

    let uid_s = uid.to_string();
    let gid_s = gid.to_string();
    assert_eq!(
        status_field(&status, "Uid:")
            .split_whitespace()
            .collect::<Vec<_>>(),
        [uid_s.as_str(); 4],
        "{status}"
    );
    assert_eq!(
        status_field(&status, "Gid:")
            .split_whitespace()
            .collect::<Vec<_>>(),
        [gid_s.as_str(); 4],
        "{status}"
    );
    assert_eq!(status_field(&status, "Groups:"), "", "{status}");
    for cap in ["CapInh:", "CapPrm:", "CapEff:", "CapBnd:", "CapAmb:"] {
        assert_eq!(
            status_field(&status, cap),
            "0000000000000000",
            "{cap} {status}"
        );
    }
    assert_eq!(status_field(&status, "NoNewPrivs:"), "1");
    assert_eq!(status_field(&status, "Seccomp:"), "2");
    // Only stderr and the stand-in device survive.
    let mut fds_sorted = fds.clone();
    fds_sorted.sort();
    assert_eq!(fds_sorted, ["2", "3"], "open fds: {fds:?}");
    // /proc/PID/environ still shows the original stack bytes; what counts
    // is what the process itself sees.
    assert!(seen.contains(" env=0"), "environment not cleared: {seen}");
    // One mount: the empty read-only tmpfs root.
    assert_eq!(mountinfo.lines().count(), 1, "{mountinfo}");
    assert!(mountinfo.contains(" / / ro,"), "{mountinfo}");
    assert!(mountinfo.contains(" - tmpfs "), "{mountinfo}");
    assert!(
        limits.lines().any(
            |l| l.starts_with("Max core file size") && l.split_whitespace().nth(4) == Some("0")
        ),
        "{limits}"
    );
    assert!(
        limits
            .lines()
            .any(|l| l.starts_with("Max open files") && l.split_whitespace().nth(3) == Some("16")),
        "{limits}"
    );
    assert_ne!(netns, our_netns, "network namespace not unshared");
    assert_landlock_enforced(&seen);
}

/// The Landlock ABI version the running kernel offers (0: none), from
/// `landlock_create_ruleset(NULL, 0, LANDLOCK_CREATE_RULESET_VERSION)`.
fn kernel_landlock_abi() -> i64 {
    // SAFETY: with a null attribute pointer, size 0 and the VERSION flag
    // the call only returns a number; it touches no memory.
    let v = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u8>(),
            0usize,
            1u32,
        )
    };
    v.max(0)
}

/// The newest Landlock ABI the worker asks for (landlock::ABI::V9 in
/// sandbox.rs): on a kernel at least that new, "full" is the only answer.
const NEWEST_REQUESTED_ABI: i64 = 9;

/// Where the kernel has Landlock, the worker's report must say it is in
/// force with every right this kernel knows: "full", or "partial" only
/// because the worker asks for rights of a newer ABI than the kernel's,
/// with the effective ABI equal to the kernel's.
fn assert_landlock_enforced(seen: &str) {
    let kernel = kernel_landlock_abi();
    let line = seen
        .lines()
        .find(|l| l.contains("sandbox entered: landlock "))
        .unwrap_or_else(|| panic!("no landlock report: {seen}"));
    let report = line
        .split("landlock ")
        .nth(1)
        .and_then(|r| r.split(", seccomp").next())
        .unwrap_or_default();
    eprintln!("kernel Landlock ABI {kernel}; worker reports: landlock {report}");
    if kernel == 0 {
        crate::skip::skip("this kernel has no Landlock: only the report is checked");
        return;
    }
    let effective: i64 = report
        .split("(ABI ")
        .nth(1)
        .and_then(|r| {
            r.chars()
                .take_while(char::is_ascii_digit)
                .collect::<String>()
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no effective ABI in {report:?}"));
    assert_eq!(
        effective,
        kernel.min(NEWEST_REQUESTED_ABI),
        "Landlock enforced at another ABI than the kernel's: {report}"
    );
    if kernel >= NEWEST_REQUESTED_ABI {
        assert!(report.starts_with("full"), "{report}");
    } else {
        assert!(
            report.starts_with("full") || report.starts_with("partial"),
            "Landlock not in force: {report}"
        );
    }
}
