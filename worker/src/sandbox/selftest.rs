//! `safemount-worker --sandbox-selftest WHAT --uid U --gid G`: a hidden,
//! test-only mode. It runs the complete sandbox exactly as the serving path
//! does (with its own `/dev/null` standing in for the device), then makes
//! one forbidden call. The integration tests (worker/tests/sandbox.rs)
//! assert that the process dies by SIGSYS, which proves the denial comes
//! from inside the real worker binary. All output goes to stderr: stdout is
//! closed by the sandbox.

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::process::ExitCode;
use std::time::Duration;

/// Every attempt the self-test knows; "status", "threads" and "device" are
/// the positive ones (they must succeed), the others must be denied.
pub const ATTEMPTS: &[&str] = &[
    "status",
    "threads",
    "device",
    "open",
    "socket",
    "execve",
    "kill",
    "ptrace",
    "mount",
    "fork",
    "mmap-exec",
    "setuid",
    "unshare",
    "panic",
];

/// Exit code when a forbidden call was *not* stopped.
const EXIT_NOT_DENIED: u8 = 3;
/// Exit code when the sandbox could not be entered.
const EXIT_SANDBOX_FAILED: u8 = 2;

fn report(what: &str, rc: libc::c_long) -> ExitCode {
    if rc < 0 {
        let errno = nix::errno::Errno::last();
        eprintln!("selftest {what}: denied errno={errno:?}");
        ExitCode::SUCCESS
    } else {
        eprintln!("selftest {what}: NOT DENIED (returned {rc})");
        ExitCode::from(EXIT_NOT_DENIED)
    }
}

/// Runs the self-test `what` as `uid`/`gid`.
pub fn run(what: &str, uid: u32, gid: u32) -> ExitCode {
    if !ATTEMPTS.contains(&what) {
        eprintln!(
            "selftest: unknown attempt {what:?}; known: {}",
            ATTEMPTS.join(" ")
        );
        return ExitCode::from(EXIT_SANDBOX_FAILED);
    }
    let device: OwnedFd = match File::open("/dev/null") {
        Ok(f) => f.into(),
        Err(e) => {
            eprintln!("selftest: cannot open /dev/null: {e}");
            return ExitCode::from(EXIT_SANDBOX_FAILED);
        }
    };
    let keep = [libc::STDERR_FILENO, device.as_raw_fd()];
    let report_ = match super::enter(&super::Config {
        uid,
        gid,
        keep_fds: &keep,
    }) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(EXIT_SANDBOX_FAILED);
        }
    };
    eprintln!(
        "selftest: sandbox entered: landlock {}, seccomp {}, namespaces {}",
        report_.landlock, report_.seccomp, report_.namespaces
    );
    eprintln!("selftest {what}: attempting");
    attempt(what, device)
}

fn attempt(what: &str, device: OwnedFd) -> ExitCode {
    match what {
        "status" => {
            eprintln!(
                "selftest status: ready pid={} env={}",
                std::process::id(),
                std::env::vars_os().count()
            );
            std::thread::sleep(Duration::from_secs(30));
            ExitCode::SUCCESS
        }
        "threads" => {
            let handles: Vec<_> = (0..4)
                .map(|i| {
                    std::thread::Builder::new()
                        .name(format!("selftest-{i}"))
                        .spawn(move || i * 2)
                })
                .collect();
            let mut sum = 0;
            for h in handles {
                match h.map(|h| h.join()) {
                    Ok(Ok(v)) => sum += v,
                    Ok(Err(_)) => {
                        eprintln!("selftest threads: a thread panicked");
                        return ExitCode::from(EXIT_NOT_DENIED);
                    }
                    Err(e) => {
                        eprintln!("selftest threads: spawn failed: {e}");
                        return ExitCode::from(EXIT_NOT_DENIED);
                    }
                }
            }
            eprintln!("selftest threads: ok sum={sum}");
            ExitCode::SUCCESS
        }
        "device" => {
            let file = File::from(device);
            let mut buf = [0u8; 16];
            match file.read_at(&mut buf, 0) {
                Ok(n) => {
                    eprintln!("selftest device: ok read {n} bytes");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("selftest device: read failed: {e}");
                    ExitCode::from(EXIT_NOT_DENIED)
                }
            }
        }
        "open" => {
            let path = c"/etc/passwd";
            // SAFETY: a valid NUL-terminated path; the call may only fail.
            let rc = unsafe { libc::openat(libc::AT_FDCWD, path.as_ptr(), libc::O_RDONLY) };
            report(what, libc::c_long::from(rc))
        }
        "socket" => {
            // SAFETY: plain integer arguments.
            let rc = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
            report(what, libc::c_long::from(rc))
        }
        "execve" => {
            let path = c"/bin/true";
            let argv = [path.as_ptr(), std::ptr::null()];
            let envp = [std::ptr::null()];
            // SAFETY: NUL-terminated path, NULL-terminated argv and envp that
            // outlive the call.
            let rc = unsafe { libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
            report(what, libc::c_long::from(rc))
        }
        "kill" => {
            // Signal 0 to the parent: harmless even if it were allowed.
            // SAFETY: plain integer arguments.
            let rc = unsafe { libc::kill(libc::getppid(), 0) };
            report(what, libc::c_long::from(rc))
        }
        "ptrace" => {
            // SAFETY: PTRACE_ATTACH takes a pid and ignores addr/data.
            let rc = unsafe {
                libc::ptrace(
                    libc::PTRACE_ATTACH,
                    libc::getppid(),
                    std::ptr::null_mut::<libc::c_void>(),
                    std::ptr::null_mut::<libc::c_void>(),
                )
            };
            report(what, rc)
        }
        "mount" => {
            // SAFETY: NUL-terminated strings, NULL data.
            let rc = unsafe {
                libc::mount(
                    c"none".as_ptr(),
                    c"/".as_ptr(),
                    c"tmpfs".as_ptr(),
                    0,
                    std::ptr::null(),
                )
            };
            report(what, libc::c_long::from(rc))
        }
        "fork" => {
            // SAFETY: the child (if any) only calls _exit.
            let rc = unsafe { libc::fork() };
            if rc == 0 {
                // SAFETY: _exit is async-signal-safe.
                unsafe { libc::_exit(0) };
            }
            report(what, libc::c_long::from(rc))
        }
        "mmap-exec" => {
            // SAFETY: an anonymous mapping; nothing is read or written through it.
            let p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    4096,
                    libc::PROT_READ | libc::PROT_EXEC,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            report(what, if p == libc::MAP_FAILED { -1 } else { 0 })
        }
        "setuid" => {
            // SAFETY: plain integer argument.
            let rc = unsafe { libc::setuid(0) };
            report(what, libc::c_long::from(rc))
        }
        "unshare" => {
            // SAFETY: plain integer argument.
            let rc = unsafe { libc::unshare(libc::CLONE_NEWUSER) };
            report(what, libc::c_long::from(rc))
        }
        "panic" => {
            // Must end in SIGABRT from the panic hook (abort's own syscalls
            // are allowed), not in SIGSYS.
            let joined = std::thread::Builder::new()
                .name("selftest-panic".into())
                .spawn(|| -> () { panic!("selftest panic") })
                .map(|h| h.join());
            eprintln!("selftest panic: NOT ABORTED ({:?})", joined.is_ok());
            ExitCode::from(EXIT_NOT_DENIED)
        }
        _ => {
            eprintln!("selftest: unknown attempt {what:?}");
            ExitCode::from(EXIT_SANDBOX_FAILED)
        }
    }
}
