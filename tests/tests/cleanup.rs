//! Nothing is left behind: a killed worker takes its mount with it at once
//! (no stale "Transport endpoint is not connected"), a failed mount leaves
//! neither mount nor worker, and a normal unmount reaps the worker.

#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed setup step must fail the test, with its error"
)]

use std::io::Write;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use safemount_tests::broker::{Broker, kernel_standin};
use safemount_tests::image;
use safemount_tests::procfs;
use safemount_tests::util::{Rng, SETTLE, TempDir, require_root, wait_until};

fn plain_dir(p: &std::path::Path) -> Result<(), String> {
    let md = std::fs::symlink_metadata(p).map_err(|e| format!("lstat {}: {e}", p.display()))?;
    if !md.is_dir() {
        return Err(format!("{} is no longer a directory", p.display()));
    }
    std::fs::read_dir(p).map_err(|e| format!("readdir {}: {e}", p.display()))?;
    if procfs::is_mounted(p) {
        return Err(format!("{} is still a mount point", p.display()));
    }
    Ok(())
}

#[test]
fn killed_worker_leaves_no_mount() {
    if !require_root() {
        return;
    }
    if kernel_standin() {
        safemount_tests::skip::skip("the kernel stand-in has no worker to kill");
        return;
    }
    let tmp = TempDir::new("kill").unwrap();
    let img = image::tiny_image(tmp.path()).unwrap();
    let broker = Broker::start().unwrap();
    let mnt = tmp.join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    broker
        .mount(&img, &mnt, "ro")
        .unwrap_or_else(|e| panic!("mount: {e}\n{}", broker.log_tail(20)));
    assert_eq!(
        std::fs::read(mnt.join("hello.txt")).unwrap(),
        b"hello from a tiny image\n"
    );
    let pid = broker.worker_pid(&mnt).unwrap();
    assert!(
        procfs::pid_alive(pid),
        "worker {pid} from list --json is not running"
    );

    // Seen mounted first: otherwise "gone" below proves nothing.
    assert!(
        procfs::is_mounted(&mnt),
        "{} not in the mount table",
        mnt.display()
    );
    let t = std::time::Instant::now();
    kill(Pid::from_raw(pid), Signal::SIGKILL).unwrap();
    let gone = wait_until(SETTLE, || !procfs::is_mounted(&mnt));
    let took = t.elapsed();
    assert!(
        gone,
        "mount at {} still present {SETTLE:?} after SIGKILL of worker {pid}; broker log:\n{}",
        mnt.display(),
        broker.log_tail(20)
    );
    // The mount point stays a plain, usable directory (we created it).
    if let Err(e) = plain_dir(&mnt) {
        panic!("after the worker died: {e}");
    }
    let unlisted = wait_until(SETTLE, || {
        broker.entry_for(&mnt).map(|e| e.is_none()).unwrap_or(false)
    });
    assert!(
        unlisted,
        "dead mount still in `list --json`: {:?}",
        broker.entry_for(&mnt)
    );
    assert!(
        broker.pid().is_some_and(procfs::pid_alive),
        "safemountd died when its worker was killed"
    );
    println!(
        "killed worker {pid}: mount gone after {:.0} ms",
        took.as_secs_f64() * 1000.0
    );

    // The broker still works afterwards.
    broker
        .mount(&img, &mnt, "ro")
        .unwrap_or_else(|e| panic!("remount after a killed worker: {e}"));
    broker.unmount(&mnt).unwrap();
}

#[test]
fn failed_mount_leaves_nothing() {
    if !require_root() {
        return;
    }
    let tmp = TempDir::new("badimg").unwrap();
    let img = tmp.join("random.img");
    let mut data = vec![0u8; 16 << 20];
    Rng::new(99).fill(&mut data);
    std::fs::File::create(&img)
        .unwrap()
        .write_all(&data)
        .unwrap();
    drop(data);
    let broker = Broker::start().unwrap();
    let mnt = tmp.join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let err = match broker.mount(&img, &mnt, "ro") {
        Ok(out) => panic!("random bytes mounted ({out})"),
        Err(e) => e,
    };
    let msg = err.stderr.trim();
    if !kernel_standin() {
        assert!(
            !msg.is_empty() && !msg.contains('\n'),
            "refusal must be one non-empty line: {msg:?}"
        );
    }
    assert!(
        !procfs::is_mounted(&mnt),
        "failed mount left a mount at {}",
        mnt.display()
    );
    if let Err(e) = plain_dir(&mnt) {
        panic!("after a failed mount: {e}");
    }
    if let Some(bpid) = broker.pid() {
        let mut left = Vec::new();
        let clean = wait_until(SETTLE, || {
            left = procfs::children_matching(bpid, "safemount-worker");
            left.is_empty()
        });
        assert!(
            clean,
            "safemount-worker processes left under broker {bpid} after a failed mount: {left:?}"
        );
        assert!(
            broker.list().unwrap().is_empty(),
            "failed mount is listed: {:?}",
            broker.list()
        );
    }
    println!("random image refused: {msg}");
}

#[test]
fn unmount_reaps_worker() {
    if !require_root() {
        return;
    }
    if kernel_standin() {
        safemount_tests::skip::skip("the kernel stand-in has no worker");
        return;
    }
    let tmp = TempDir::new("reap").unwrap();
    let img = image::tiny_image(tmp.path()).unwrap();
    let broker = Broker::start().unwrap();
    let mnt = tmp.join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    broker
        .mount(&img, &mnt, "ro")
        .unwrap_or_else(|e| panic!("mount: {e}\n{}", broker.log_tail(20)));
    let pid = broker.worker_pid(&mnt).unwrap();
    // A read-only mount refuses writes before they reach the worker.
    let e = std::fs::File::create(mnt.join("new-file")).expect_err("creating a file on a ro mount");
    assert_eq!(
        e.raw_os_error(),
        Some(libc::EROFS),
        "create on a ro mount: {e}"
    );
    let e = std::fs::OpenOptions::new()
        .write(true)
        .open(mnt.join("hello.txt"))
        .expect_err("opening for write on a ro mount");
    assert_eq!(
        e.raw_os_error(),
        Some(libc::EROFS),
        "open for write on a ro mount: {e}"
    );
    assert!(
        procfs::is_mounted(&mnt),
        "{} not in the mount table",
        mnt.display()
    );
    broker
        .unmount(&mnt)
        .unwrap_or_else(|e| panic!("unmount: {e}"));
    assert!(!procfs::is_mounted(&mnt), "still mounted after unmount");
    let reaped = wait_until(SETTLE, || !procfs::pid_alive(pid));
    assert!(
        reaped,
        "worker {pid} still running {SETTLE:?} after unmount"
    );
    let bpid = broker.pid().unwrap();
    assert!(
        procfs::children_matching(bpid, "safemount-worker").is_empty(),
        "worker processes left after unmount"
    );
    if let Err(e) = plain_dir(&mnt) {
        panic!("after unmount: {e}");
    }
}

/// The mount-table checks every "nothing left" assertion relies on see a
/// mount through a symlinked directory (a symlinked TMPDIR): a mount made
/// at REAL/mnt is found as LINK/mnt, and is gone after unmount.
#[test]
fn mount_checks_resolve_symlinked_dirs() {
    if !require_root() {
        return;
    }
    let tmp = TempDir::new("symlinked").unwrap();
    let img = image::tiny_image(tmp.path()).unwrap();
    let real = tmp.join("real");
    std::fs::create_dir(&real).unwrap();
    std::os::unix::fs::symlink(&real, tmp.join("link")).unwrap();
    let via_link = tmp.join("link/mnt");
    std::fs::create_dir(&via_link).unwrap();
    assert!(!procfs::is_mounted(&via_link));
    let k = safemount_tests::kernel::KernelMount::mount(&img, &via_link).unwrap();
    assert!(
        procfs::is_mounted(&via_link),
        "a mount at {} is not seen through the symlink {}",
        real.join("mnt").display(),
        via_link.display()
    );
    k.unmount().unwrap();
    assert!(!procfs::is_mounted(&via_link));
}
