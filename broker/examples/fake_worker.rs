//! A stand-in worker for the broker's tests of failure paths: it speaks
//! the worker protocol on fd 3 but reads no filesystem and answers no FUSE
//! request. What it does depends on the Start message's `source_name`:
//!
//! - contains `refuse`: replies Refused with a hostile reason;
//! - contains `die-after-probe`: replies Probed, then SIGKILLs itself;
//! - contains `die-before-serving`: replies Probed, exits 3 on Serve;
//! - contains `hang-probe`: never answers Start;
//! - contains `slow-probe`: answers Start after 1 s (time for a client to
//!   hang up mid-mount);
//! - contains `hang-serve`: replies Probed, never answers Serve (so the
//!   mount exists but its FUSE INIT is never answered);
//! - contains `wait-N` (N = 1..9): first sends N `Waiting` messages of
//!   1 s each (a hostile reason), waiting 1 s after each, then goes on;
//! - contains `noisy`: first makes its stderr blocking and writes hostile
//!   lines to it (an escape sequence, a forged broker line, a very long
//!   line, a flood), then goes on as below;
//! - otherwise: replies Probed (with a hostile label), then Serving on
//!   Serve, and reads /dev/fuse until the mount goes away (the INIT
//!   request stays unanswered, so nothing may touch the mount), exit 0.

use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd};

use safemount_proto::{
    PROTOCOL_VERSION, ProbeReport, SandboxReport, WorkerReply, WorkerRequest, recv, send,
};

fn main() {
    // SAFETY: the broker puts our socket on fd 3 and nothing else owns it.
    let sock = unsafe { OwnedFd::from_raw_fd(3) };
    let code = run(sock.as_fd());
    std::process::exit(code);
}

fn run(sock: BorrowedFd<'_>) -> i32 {
    let Ok((
        WorkerRequest::Start {
            version,
            source_name,
            read_only,
            ..
        },
        _dev,
    )) = recv::<WorkerRequest>(sock, 1)
    else {
        eprintln!("fake_worker: bad Start");
        return 2;
    };
    if version != PROTOCOL_VERSION {
        return 2;
    }
    if source_name.contains("noisy") {
        use std::io::Write;
        // The broker hands workers a non-blocking stderr, so a worker
        // drops what does not fit; a hostile one can make it blocking
        // (the flag is on the pipe end it holds) and write every line.
        // The broker's own limits must hold against that.
        let blocking = nix::fcntl::fcntl(
            std::io::stderr(),
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::empty()),
        );
        if blocking.is_err() {
            return 2;
        }
        let mut err = std::io::stderr().lock();
        let _ = writeln!(
            err,
            "\x1b[31mred\x1b[0m\rINFO safemount_broker::server: FORGED mounted"
        );
        let _ = writeln!(err, "LONG{}", "x".repeat(100_000));
        for i in 0..5000 {
            let _ = writeln!(err, "flood {i}");
        }
        let _ = writeln!(err, "after the flood");
    }
    if let Some(n) = source_name
        .split("wait-")
        .nth(1)
        .and_then(|r| r.chars().next())
        .and_then(|c| c.to_digit(10))
    {
        for _ in 0..n {
            let msg = WorkerReply::Waiting {
                seconds: 1,
                reason: "multi-mount \u{1b}[31mprotection\nforged".into(),
            };
            if send(sock, &msg, &[]).is_err() {
                return 2;
            }
            std::thread::sleep(std::time::Duration::from_secs(1));
        }
    }
    if source_name.contains("hang-probe") {
        loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
    }
    if source_name.contains("slow-probe") {
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
    if source_name.contains("refuse") {
        let _ = send(
            sock,
            &WorkerReply::Refused {
                reason: "unsupported feature \u{1b}[31mevil\nsecond line".into(),
            },
            &[],
        );
        return 0;
    }
    let report = ProbeReport {
        label: b"lab\x1bel\n\xff".to_vec(),
        uuid: [7; 16],
        fs_type: "ext4".into(),
        features: vec!["extent".into()],
        read_only,
        sandbox: SandboxReport {
            landlock: "not enforced (fake worker)".into(),
            seccomp: false,
            namespaces: false,
        },
    };
    if send(sock, &WorkerReply::Probed(report), &[]).is_err() {
        return 2;
    }
    if source_name.contains("die-after-probe") {
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
        return 2;
    }
    let Ok((WorkerRequest::Serve, mut fds)) = recv::<WorkerRequest>(sock, 1) else {
        return 2;
    };
    if source_name.contains("die-before-serving") {
        return 3;
    }
    if source_name.contains("hang-serve") {
        loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
    }
    let Some(fuse) = fds.pop() else { return 2 };
    if send(sock, &WorkerReply::Serving, &[]).is_err() {
        return 2;
    }
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match nix::unistd::read(&fuse, &mut buf) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return 0,
        }
    }
}
