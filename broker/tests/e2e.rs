//! End-to-end tests of safemountd and safemount: real mounts, so they need
//! root and /dev/fuse; without root each test prints why and returns.
//!
//! Failure paths use `examples/fake_worker.rs` (built by `cargo test` with
//! the other examples; `cargo build -p safemount-broker --examples` builds
//! it alone). The full path (mount, `ls`, unmount) uses the real worker,
//! built with `cargo build -p safemount-worker`.

#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed unwrap is a failed test"
)]

use std::io::Write;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::sys::socket::{AddressFamily, MsgFlags, SockFlag, SockType, UnixAddr, connect, socket};
use nix::unistd::Pid;
use safemount_proto::{
    BrokerReply, ClientRequest, ErrorKind, MountSource, PROTOCOL_VERSION, ProtoError, recv, send,
};

mod harness;

use harness::*;

macro_rules! require_root {
    () => {
        if !have_root_and_fuse() {
            return;
        }
    };
}

/// Mounted at `p`, comparing canonical paths.
fn is_mounted(p: &Path) -> bool {
    let p = p.canonicalize().unwrap_or(p.to_owned());
    safemount_mounts().contains(&p)
}

/// Nothing of this broker's is left: no safemount mount under `scratch`,
/// an empty list, no child processes.
fn assert_nothing_left(b: &Broker, scratch: &Scratch) {
    assert!(
        wait_until(Duration::from_secs(5), || children_of(b.pid()).is_empty()),
        "worker not reaped: children {:?}",
        children_of(b.pid())
    );
    assert!(
        !safemount_mounts().iter().any(|m| m.starts_with(&scratch.0)),
        "mount left behind"
    );
    assert!(b.list_json().is_empty(), "state left behind");
}

#[test]
fn fake_worker_mount_list_unmount() {
    require_root!();
    let Some(worker) = fake_worker() else { return };
    let s = Scratch::new("basic");
    let b = Broker::start(&s, &worker);
    let img = s.blank_image("disk.img");
    let mp = s.dir("mnt");
    let out = b.client(&[
        "mount",
        img.to_str().unwrap(),
        mp.to_str().unwrap(),
        "-o",
        "ro",
    ]);
    assert!(out.status.success(), "mount: {}\n{}", stderr(&out), b.log());
    assert_eq!(stdout(&out).trim(), mp.to_str().unwrap());
    assert!(is_mounted(&mp));
    let info = safemount_broker::mountpoint::find_mount(&mp, None)
        .unwrap()
        .unwrap();
    // The image's path, as the kernel has it for the client's fd.
    assert_eq!(info.source, img.to_str().unwrap());

    let list = b.list_json();
    assert_eq!(list.len(), 1);
    let pid = list[0]["worker_pid"].as_i64().unwrap() as u32;
    assert_eq!(children_of(b.pid()), vec![pid]);
    assert_eq!(list[0]["state"], "Mounted");
    assert_eq!(list[0]["read_only"], true);
    // The hostile label arrives sanitized: no control characters.
    let label = list[0]["label"].as_str().unwrap();
    assert_eq!(label, "label\u{fffd}");

    let table = b.client(&["list"]);
    assert!(stdout(&table).starts_with("SOURCE"));
    assert!(stdout(&table).contains(&pid.to_string()));

    // Another user neither sees nor may unmount root's mount.
    let as_nobody = |args: &[&str]| {
        Command::new("setpriv")
            .args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
            .arg(client_bin())
            .args(args)
            .env("SAFEMOUNT_SOCKET", &b.socket)
            .output()
            .unwrap()
    };
    let out = as_nobody(&["list", "--json"]);
    assert_eq!(stdout(&out).trim(), "[]", "{}", stderr(&out));
    let out = as_nobody(&["unmount", mp.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("mounted by another user"),
        "{}",
        stderr(&out)
    );
    assert!(is_mounted(&mp));

    // A second mount on the same mount point is refused as busy.
    let again = b.client(&["mount", img.to_str().unwrap(), mp.to_str().unwrap()]);
    assert_eq!(again.status.code(), Some(5), "{}", stderr(&again));

    let out = b.client(&["unmount", mp.to_str().unwrap()]);
    assert!(out.status.success(), "unmount: {}", stderr(&out));
    assert!(!is_mounted(&mp));
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "worker not reaped"
    );
    assert_nothing_left(&b, &s);

    let out = b.client(&["unmount", mp.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    assert!(stderr(&out).starts_with("safemount: "));
    assert!(stderr(&out).contains("is not mounted by safemount"));
}

#[test]
fn killed_worker_takes_its_mount_within_a_second() {
    require_root!();
    let Some(worker) = fake_worker() else { return };
    let s = Scratch::new("kill");
    let b = Broker::start(&s, &worker);
    let img = s.blank_image("disk.img");
    let mp = s.dir("mnt");
    let out = b.client(&["mount", img.to_str().unwrap(), mp.to_str().unwrap()]);
    assert!(out.status.success(), "mount: {}", stderr(&out));
    let pid = b.list_json()[0]["worker_pid"].as_i64().unwrap() as i32;
    // Seen mounted first: otherwise "gone" below proves nothing.
    assert!(is_mounted(&mp), "{} not in the mount table", mp.display());
    kill(Pid::from_raw(pid), Signal::SIGKILL).unwrap();
    assert!(
        wait_until(SETTLE, || !is_mounted(&mp)),
        "mount still there {SETTLE:?} after the worker died"
    );
    assert_nothing_left(&b, &s);
    assert!(b.log().contains("killed by signal SIGKILL"), "{}", b.log());
}

#[test]
fn setup_failures_undo_everything() {
    require_root!();
    let Some(worker) = fake_worker() else { return };
    let s = Scratch::new("fail");
    let b = Broker::start(&s, &worker);
    let mp = s.dir("mnt");
    let mps = mp.to_str().unwrap();

    let cases: [(&str, i32, &str); 3] = [
        ("refuse.img", 6, "filesystem refused: unsupported feature"),
        (
            "die-after-probe.img",
            1,
            "worker died: killed by signal SIGKILL",
        ),
        (
            "die-before-serving.img",
            1,
            "worker died: exited with status 3",
        ),
    ];
    for (name, code, message) in cases {
        let img = s.blank_image(name);
        let out = b.client(&["mount", img.to_str().unwrap(), mps]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(code), "{name}: {err}\n{}", b.log());
        assert!(err.starts_with("safemount: "), "{err}");
        assert!(err.contains(message), "{name}: {err}");
        assert_eq!(err.lines().count(), 1, "not one line: {err:?}");
        assert!(
            !err.contains('\u{1b}'),
            "control character passed through: {err:?}"
        );
        assert_nothing_left(&b, &s);
    }

    let img = s.blank_image("ok.img");
    let imgs = img.to_str().unwrap();
    // A mount point that is a file, a missing one, an unknown option.
    let file = s.blank_image("file");
    let out = b.client(&["mount", imgs, file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("is not a directory"));
    let out = b.client(&["mount", imgs, mps, "-o", "ro,bogus"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("unknown mount option \"bogus\""));
    let out = b.client(&["mount", imgs, s.path("nope").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    let out = b.client(&["mount", s.path("nope.img").to_str().unwrap(), mps]);
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    // A FIFO must not hang the client; a directory is no image either.
    let fifo = s.path("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
    for src in [fifo, s.dir("adir")] {
        let out = b.client(&["mount", src.to_str().unwrap(), mps]);
        assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
        assert!(stderr(&out).contains("neither a regular file nor a block device"));
    }
    // The client resolves a symlinked mount point itself, so this mounts on
    // the target (the broker's own O_NOFOLLOW check is tested with raw
    // requests in malformed_messages_...).
    let link = s.path("link");
    std::os::unix::fs::symlink(&mp, &link).unwrap();
    let out = b.client(&["mount", imgs, link.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), mps);
    assert!(b.client(&["unmount", mps]).status.success());
    assert_nothing_left(&b, &s);
}

#[test]
fn hung_workers_time_out_and_are_undone() {
    require_root!();
    let Some(worker) = fake_worker() else { return };
    let s = Scratch::new("hang");
    let b = Broker::start_with(&s, &worker, &["--worker-timeout", "1"]);
    let mp = s.dir("mnt");
    for (name, step) in [("hang-probe.img", "probe"), ("hang-serve.img", "serve")] {
        let img = s.blank_image(name);
        let t = Instant::now();
        let out = b.client(&["mount", img.to_str().unwrap(), mp.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        assert!(
            stderr(&out).contains(&format!("worker did not answer within 1 s ({step})")),
            "{}",
            stderr(&out)
        );
        assert!(t.elapsed() < Duration::from_secs(10));
        // hang-serve was mounted (INIT unanswered): the undo detached it
        // without blocking.
        assert_nothing_left(&b, &s);
    }
}

/// A worker that waits before its probe (multi-mount protection): each
/// announced wait reaches the client, sanitized, and extends the timeout;
/// a third one is a protocol error, so a worker cannot hold a mount
/// request open by announcing waits for ever.
#[test]
fn announced_waits_reach_the_client_and_are_bounded() {
    require_root!();
    let Some(worker) = fake_worker() else { return };
    let s = Scratch::new("waits");
    let b = Broker::start_with(&s, &worker, &["--worker-timeout", "1"]);
    let mp = s.dir("mnt");
    let img = s.blank_image("wait-2.img");
    let out = b.client(&["mount", img.to_str().unwrap(), mp.to_str().unwrap()]);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert_eq!(
        err.matches("safemount: multi-mount").count(),
        2,
        "two waits shown:\n{err}"
    );
    assert!(
        !err.contains('\u{1b}') && !err.contains("\nforged"),
        "{err:?}"
    );
    b.client(&["unmount", mp.to_str().unwrap()]);
    let img = s.blank_image("wait-3.img");
    let out = b.client(&["mount", img.to_str().unwrap(), mp.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("a third Waiting"), "{}", stderr(&out));
    assert_nothing_left(&b, &s);
}

#[test]
fn worker_that_exits_at_once() {
    require_root!();
    let s = Scratch::new("false");
    let b = Broker::start(&s, Path::new("/bin/false"));
    let img = s.blank_image("disk.img");
    let mp = s.dir("mnt");
    let out = b.client(&["mount", img.to_str().unwrap(), mp.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("worker died: exited with status 1"),
        "{}",
        stderr(&out)
    );
    assert_nothing_left(&b, &s);

    let s2 = Scratch::new("missing");
    let b2 = Broker::start(&s2, &s2.path("no-such-worker"));
    let out = b2.client(&["mount", img.to_str().unwrap(), mp.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("cannot start worker"),
        "{}",
        stderr(&out)
    );
    assert_nothing_left(&b2, &s2);
}

#[test]
fn non_root_is_not_authorized() {
    require_root!();
    let s = Scratch::new("nonroot");
    let b = Broker::start(&s, Path::new("/bin/false"));
    let img = s.blank_image("disk.img");
    let mp = s.dir("mnt");
    let out = Command::new("setpriv")
        .args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
        .arg(client_bin())
        .args(["mount", img.to_str().unwrap(), mp.to_str().unwrap()])
        .env("SAFEMOUNT_SOCKET", &b.socket)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    // No polkit on the test machine's system bus: "polkit is not
    // available"; with one, polkit's default for images outside a session
    // denies (broker/tests/polkit.rs tests both with a private polkitd).
    let err = stderr(&out);
    assert!(
        err.trim() == "safemount: not authorized: polkit is not available"
            || err.trim()
                == "safemount: not authorized: polkit denied org.safemount.mount-image for uid 65534",
        "{err}"
    );
    let out = Command::new("setpriv")
        .args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
        .arg(client_bin())
        .args(["list", "--json"])
        .env("SAFEMOUNT_SOCKET", &b.socket)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "[]");
    assert_nothing_left(&b, &s);
}

fn raw_connect(path: &Path) -> std::os::fd::OwnedFd {
    let sock = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .unwrap();
    connect(sock.as_raw_fd(), &UnixAddr::new(path).unwrap()).unwrap();
    sock
}

fn expect_error(sock: &std::os::fd::OwnedFd, kind: ErrorKind, contains: &str) {
    let (reply, _) = recv::<BrokerReply>(sock.as_fd(), 0).unwrap();
    match reply {
        BrokerReply::Error { kind: k, message } => {
            assert_eq!(k, kind, "{message}");
            assert!(message.contains(contains), "{message:?} lacks {contains:?}");
            assert!(!message.contains('\n'));
        }
        other => panic!("expected an error, got {other:?}"),
    }
}

fn hello(sock: &std::os::fd::OwnedFd) {
    send(
        sock.as_fd(),
        &ClientRequest::Hello {
            version: PROTOCOL_VERSION,
        },
        &[],
    )
    .unwrap();
    let (reply, _) = recv::<BrokerReply>(sock.as_fd(), 0).unwrap();
    assert_eq!(
        reply,
        BrokerReply::Hello {
            version: PROTOCOL_VERSION
        }
    );
}

#[test]
fn malformed_messages_get_errors_and_the_broker_keeps_serving() {
    require_root!();
    let s = Scratch::new("malformed");
    let b = Broker::start(&s, Path::new("/bin/false"));
    let fds_before = settled_fd_count(b.pid());

    // A second broker on the same socket refuses to steal it.
    let second = Command::new(env!("CARGO_BIN_EXE_safemountd"))
        .arg("--socket")
        .arg(&b.socket)
        .args(["--worker", "/bin/false"])
        .output()
        .unwrap();
    assert_eq!(second.status.code(), Some(1));
    assert!(
        stderr(&second).contains("another safemountd is listening"),
        "{}",
        stderr(&second)
    );

    // Garbage, then an oversized packet, then a proper Hello on the same
    // connection.
    let c = raw_connect(&b.socket);
    nix::sys::socket::send(c.as_raw_fd(), &[0xff; 10], MsgFlags::empty()).unwrap();
    expect_error(&c, ErrorKind::InvalidRequest, "malformed message");
    let big = vec![0u8; safemount_proto::MAX_MESSAGE_BYTES + 100];
    nix::sys::socket::send(c.as_raw_fd(), &big, MsgFlags::empty()).unwrap();
    expect_error(&c, ErrorKind::InvalidRequest, "too large");
    // Three fds where at most one may come.
    let f = std::fs::File::open("/dev/null").unwrap();
    send(
        c.as_fd(),
        &ClientRequest::Hello {
            version: PROTOCOL_VERSION,
        },
        &[f.as_fd(), f.as_fd(), f.as_fd()],
    )
    .unwrap();
    expect_error(&c, ErrorKind::InvalidRequest, "got 3");
    hello(&c);
    // Fd counts that do not match the request.
    let mount_dev = ClientRequest::Mount {
        source: MountSource::Device("/dev/null".into()),
        mountpoint: Some(s.dir("mnt")),
        options: String::new(),
    };
    send(c.as_fd(), &mount_dev, &[f.as_fd()]).unwrap();
    expect_error(&c, ErrorKind::InvalidRequest, "carries no file descriptor");
    let mount_fd = ClientRequest::Mount {
        source: MountSource::Fd {
            display_name: "x".into(),
        },
        mountpoint: Some(s.dir("mnt")),
        options: String::new(),
    };
    send(c.as_fd(), &mount_fd, &[]).unwrap();
    expect_error(&c, ErrorKind::InvalidRequest, "exactly 1 file descriptor");
    // A character device as "image".
    send(c.as_fd(), &mount_fd, &[f.as_fd()]).unwrap();
    expect_error(
        &c,
        ErrorKind::InvalidRequest,
        "neither a regular file nor a block device",
    );
    // A device path that is not a block device.
    send(c.as_fd(), &mount_dev, &[]).unwrap();
    expect_error(&c, ErrorKind::InvalidRequest, "not a block device");
    // A symlink as mount point (the broker pins with O_NOFOLLOW), and a
    // relative one.
    let link = s.path("link");
    std::os::unix::fs::symlink(s.dir("mnt"), &link).unwrap();
    let img = std::fs::File::open(s.blank_image("disk.img")).unwrap();
    for (mp, why) in [
        (link, "is a symbolic link"),
        ("mnt".into(), "absolute path"),
    ] {
        let req = ClientRequest::Mount {
            source: MountSource::Fd {
                display_name: "disk.img".into(),
            },
            mountpoint: Some(mp),
            options: String::new(),
        };
        send(c.as_fd(), &req, &[img.as_fd()]).unwrap();
        expect_error(&c, ErrorKind::InvalidRequest, why);
    }
    // No mount point: an automatic one would be made after the probe,
    // but this worker (/bin/false) dies first.
    let req = ClientRequest::Mount {
        source: MountSource::Fd {
            display_name: "disk.img".into(),
        },
        mountpoint: None,
        options: String::new(),
    };
    send(c.as_fd(), &req, &[img.as_fd()]).unwrap();
    expect_error(&c, ErrorKind::Internal, "worker died");
    drop(img);
    send(c.as_fd(), &ClientRequest::List, &[]).unwrap();
    let (reply, _) = recv::<BrokerReply>(c.as_fd(), 0).unwrap();
    assert_eq!(reply, BrokerReply::Mounts(vec![]));
    drop(c);

    // Wrong version: an error, then the connection is closed.
    let c = raw_connect(&b.socket);
    send(c.as_fd(), &ClientRequest::Hello { version: 999 }, &[]).unwrap();
    expect_error(&c, ErrorKind::InvalidRequest, "version mismatch");
    assert!(matches!(
        recv::<BrokerReply>(c.as_fd(), 0),
        Err(ProtoError::Closed)
    ));
    // No Hello first: an error, then closed.
    let c = raw_connect(&b.socket);
    send(c.as_fd(), &ClientRequest::List, &[]).unwrap();
    expect_error(&c, ErrorKind::InvalidRequest, "first message must be Hello");
    assert!(matches!(
        recv::<BrokerReply>(c.as_fd(), 0),
        Err(ProtoError::Closed)
    ));
    // A client that hangs up mid-conversation.
    let c = raw_connect(&b.socket);
    drop(c);

    // The broker still serves, and holds no fd it was sent.
    let c = raw_connect(&b.socket);
    hello(&c);
    drop(c);
    assert!(b.list_json().is_empty());
    assert!(
        wait_until(SETTLE, || fd_count(b.pid()) == fds_before),
        "broker fds: {} before, {} after",
        fds_before,
        fd_count(b.pid())
    );
}

#[test]
fn sigterm_detaches_mounts_and_kills_workers() {
    require_root!();
    let Some(worker) = fake_worker() else { return };
    let s = Scratch::new("term");
    let mut b = Broker::start(&s, &worker);
    let img = s.blank_image("disk.img");
    let mp = s.dir("mnt");
    let out = b.client(&["mount", img.to_str().unwrap(), mp.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let pid = b.list_json()[0]["worker_pid"].as_i64().unwrap();
    assert_eq!(b.stop(), Some(0));
    assert!(!is_mounted(&mp));
    assert!(!Path::new(&format!("/proc/{pid}")).exists());
    assert!(!b.socket.exists(), "socket not removed");

    // A stale socket (its broker was SIGKILLed) is replaced.
    drop(std::os::unix::net::UnixListener::bind(&b.socket).unwrap());
    assert!(b.socket.exists());
    let b2 = Broker::start(&s, &worker);
    assert!(b2.list_json().is_empty());
}

/// A loop device: the broker opens it itself (O_EXCL), a read-only device
/// gives a read-only mount even when rw is asked, and a second mount of the
/// same device is refused as busy.
#[test]
fn real_worker_block_device() {
    require_root!();
    let worker = bin_dir().join("safemount-worker");
    if !worker.exists() {
        skip(&format!("{} not built", worker.display()));
        return;
    }
    let s = Scratch::new("loop");
    let src = s.dir("src");
    std::fs::write(src.join("f"), b"on a loop device\n").unwrap();
    let img = s.path("ext4.img");
    let mkfs = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(&src)
        .arg(&img)
        .arg("8M")
        .output()
        .unwrap();
    assert!(mkfs.status.success(), "mkfs: {}", stderr(&mkfs));
    let losetup = Command::new("losetup")
        .args(["-f", "--show", "-r"])
        .arg(&img)
        .output()
        .unwrap();
    if !losetup.status.success() {
        skip(&format!("losetup failed: {}", stderr(&losetup)));
        return;
    }
    let dev = stdout(&losetup).trim().to_owned();
    struct Detach(String);
    impl Drop for Detach {
        fn drop(&mut self) {
            let _ = Command::new("losetup").args(["-d", &self.0]).status();
        }
    }
    let _detach = Detach(dev.clone());
    let b = Broker::start(&s, &worker);
    let mp = s.dir("mnt");
    let mp2 = s.dir("mnt2");
    let out = b.client(&["mount", &dev, mp.to_str().unwrap(), "-o", "rw"]);
    assert!(out.status.success(), "mount: {}\n{}", stderr(&out), b.log());
    let list = b.list_json();
    assert_eq!(list[0]["source"], dev.as_str());
    assert_eq!(
        list[0]["read_only"], true,
        "write-protected device mounted rw"
    );
    assert!(b.log().contains("write-protected"), "{}", b.log());
    assert_eq!(std::fs::read(mp.join("f")).unwrap(), b"on a loop device\n");
    let again = b.client(&["mount", &dev, mp2.to_str().unwrap()]);
    assert_eq!(again.status.code(), Some(5), "{}", stderr(&again));
    assert!(stderr(&again).contains("in use"), "{}", stderr(&again));
    let out = b.client(&["unmount", mp.to_str().unwrap()]);
    assert!(out.status.success(), "unmount: {}", stderr(&out));
    assert_nothing_left(&b, &s);
}

/// The real worker end to end: an image made by mkfs.ext4 -d, mounted,
/// listed, read with ls and cat, unmounted; then mounted again and its
/// worker SIGKILLed.
#[test]
fn real_worker_mount_read_unmount() {
    require_root!();
    let worker = bin_dir().join("safemount-worker");
    if !worker.exists() {
        skip(&format!(
            "{} not built (cargo build -p safemount-worker)",
            worker.display()
        ));
        return;
    }
    let s = Scratch::new("real");
    let src = s.dir("src");
    std::fs::write(src.join("hello.txt"), b"hello, world\n").unwrap();
    std::fs::create_dir(src.join("sub")).unwrap();
    std::fs::write(src.join("sub/inner"), vec![b'x'; 10000]).unwrap();
    let img = s.path("ext4.img");
    let mkfs = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "testlabel", "-d"])
        .arg(&src)
        .arg(&img)
        .arg("16M")
        .output()
        .unwrap();
    assert!(mkfs.status.success(), "mkfs: {}", stderr(&mkfs));
    let b = Broker::start(&s, &worker);
    let mp = s.dir("mnt");
    let out = b.client(&[
        "mount",
        img.to_str().unwrap(),
        mp.to_str().unwrap(),
        "-o",
        "ro",
    ]);
    assert!(out.status.success(), "mount: {}\n{}", stderr(&out), b.log());
    let list = b.list_json();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["label"], "testlabel");
    let pid = list[0]["worker_pid"].as_i64().unwrap();
    assert!(Path::new(&format!("/proc/{pid}")).exists());

    let ls = Command::new("ls").arg("-a").arg(&mp).output().unwrap();
    assert!(ls.status.success(), "ls: {}\n{}", stderr(&ls), b.log());
    let names = stdout(&ls);
    for n in ["hello.txt", "sub", "lost+found"] {
        assert!(names.lines().any(|l| l == n), "{n} missing from {names:?}");
    }
    assert_eq!(
        std::fs::read(mp.join("hello.txt")).unwrap(),
        b"hello, world\n"
    );
    assert_eq!(std::fs::read(mp.join("sub/inner")).unwrap().len(), 10000);
    // The broker widened the mount's read-ahead window after INIT.
    let dev = std::fs::metadata(&mp).unwrap().dev();
    let ra = format!(
        "/sys/class/bdi/{}:{}/read_ahead_kb",
        nix::sys::stat::major(dev),
        nix::sys::stat::minor(dev)
    );
    assert_eq!(std::fs::read_to_string(&ra).unwrap().trim(), "1024", "{ra}");

    // Busy while a file is open on it; fine once it is closed.
    let open_file = std::fs::File::open(mp.join("hello.txt")).unwrap();
    let out = b.client(&["unmount", mp.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert_eq!(stderr(&out).trim(), "safemount: target is busy");
    assert!(is_mounted(&mp));
    assert_eq!(b.list_json()[0]["state"], "Mounted");
    drop(open_file);

    let out = b.client(&["unmount", mp.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "unmount: {}\n{}",
        stderr(&out),
        b.log()
    );
    assert!(!is_mounted(&mp));
    assert!(!Path::new(&format!("/proc/{pid}")).exists());
    assert_nothing_left(&b, &s);
    assert!(
        b.log().contains("worker exited normally after unmount"),
        "{}",
        b.log()
    );

    // Again, and this time the worker is killed.
    let out = b.client(&["mount", img.to_str().unwrap(), mp.to_str().unwrap()]);
    assert!(out.status.success(), "mount: {}", stderr(&out));
    let pid = b.list_json()[0]["worker_pid"].as_i64().unwrap() as i32;
    assert!(is_mounted(&mp), "{} not in the mount table", mp.display());
    kill(Pid::from_raw(pid), Signal::SIGKILL).unwrap();
    assert!(
        wait_until(SETTLE, || !is_mounted(&mp)),
        "mount still there {SETTLE:?} after the worker died"
    );
    assert_nothing_left(&b, &s);
    // The mount point is usable again, not a dead endpoint.
    assert!(std::fs::read_dir(&mp).unwrap().next().is_none());
    let _ = std::io::stderr().flush();
}

/// A plain umount(8) returns before the worker has written the image clean
/// and exited; a mount of the same image right after it waits for that
/// worker instead of finding the image in use (as it was: 4 remounts in 5
/// were refused). A mount of an image that is still mounted is refused.
#[test]
fn mount_right_after_a_plain_umount() {
    require_root!();
    let worker = bin_dir().join("safemount-worker");
    if !worker.exists() {
        skip(&format!("{} not built", worker.display()));
        return;
    }
    let s = Scratch::new("remount");
    let img = s.path("ext4.img");
    let mkfs = Command::new("mkfs.ext4")
        .args(["-q", "-F"])
        .arg(&img)
        .arg("64M")
        .output()
        .unwrap();
    assert!(mkfs.status.success(), "mkfs: {}", stderr(&mkfs));
    let b = Broker::start(&s, &worker);
    let mp = s.dir("mnt");
    let mount = || {
        b.client(&[
            "mount",
            img.to_str().unwrap(),
            mp.to_str().unwrap(),
            "-o",
            "rw",
        ])
    };
    for round in 0..5u8 {
        let out = mount();
        assert!(
            out.status.success(),
            "round {round}: mount: {}\n{}",
            stderr(&out),
            b.log()
        );
        if round == 0 {
            let again = b.client(&[
                "mount",
                img.to_str().unwrap(),
                s.dir("other").to_str().unwrap(),
                "-o",
                "ro",
            ]);
            assert!(stderr(&again).contains("in use"), "{}", stderr(&again));
        }
        let name = format!("f{round}");
        std::fs::write(mp.join(&name), vec![round; 4 << 20]).unwrap();
        for r in 0..round {
            assert_eq!(
                std::fs::read(mp.join(format!("f{r}"))).unwrap(),
                vec![r; 4 << 20]
            );
        }
        let umount = Command::new("umount").arg(&mp).output().unwrap();
        assert!(umount.status.success(), "umount: {}", stderr(&umount));
    }
    assert_nothing_left(&b, &s);
    let fsck = Command::new("e2fsck")
        .args(["-fn"])
        .arg(&img)
        .output()
        .unwrap();
    assert!(fsck.status.success(), "e2fsck: {}", stdout(&fsck));
}

/// A tmpfs mounted at `p` (created), standing for someone else's mount.
fn victim_mount(p: &Path) {
    std::fs::create_dir_all(p).unwrap();
    nix::mount::mount(
        Some("tmpfs"),
        p,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .unwrap();
}

fn tmpfs_at(p: &Path) -> bool {
    safemount_broker::mountpoint::read_mountinfo()
        .unwrap()
        .iter()
        .any(|e| e.mount_point == p && e.fstype == "tmpfs")
}

/// Moves `dir` aside to `<dir>.moved` and plants `dir -> target`: what the
/// owner of a directory above a mount point can do.
fn swap_for_symlink(dir: &Path, target: &Path) -> std::path::PathBuf {
    let moved = dir.with_extension("moved");
    std::fs::rename(dir, &moved).unwrap();
    std::os::unix::fs::symlink(target, dir).unwrap();
    moved
}

/// Security review, high: the owner of `x` above the mount point `x/m`
/// renames `x` and plants `x -> victim` where another mount sits at
/// `victim/m`, then sends a raw Unmount for `x/m`. The broker unmounts its
/// own mount (now at `x.moved/m`), never the victim.
#[test]
fn unmount_request_cannot_be_redirected_by_a_planted_symlink() {
    require_root!();
    let Some(worker) = fake_worker() else { return };
    let s = Scratch::new("swap");
    let b = Broker::start(&s, &worker);
    let img = s.blank_image("disk.img");
    let root = s.0.canonicalize().unwrap();
    let mp = root.join("x/m");
    std::fs::create_dir_all(&mp).unwrap();
    let out = b.client(&["mount", img.to_str().unwrap(), mp.to_str().unwrap()]);
    assert!(out.status.success(), "mount: {}\n{}", stderr(&out), b.log());
    assert!(is_mounted(&mp));
    let victim = root.join("victim/m");
    victim_mount(&victim);
    let moved = swap_for_symlink(&root.join("x"), &root.join("victim"));

    let sock = raw_connect(&b.socket);
    hello(&sock);
    send(
        sock.as_fd(),
        &ClientRequest::Unmount {
            mountpoint: mp.clone(),
        },
        &[],
    )
    .unwrap();
    let (reply, _) = recv::<BrokerReply>(sock.as_fd(), 0).unwrap();
    let victim_survived = tmpfs_at(&victim);
    let _ = nix::mount::umount2(&victim, nix::mount::MntFlags::MNT_DETACH);
    assert!(victim_survived, "the broker unmounted the victim's mount");
    assert_eq!(reply, BrokerReply::Unmounted, "{}", b.log());
    assert!(
        !is_mounted(&moved.join("m")),
        "the broker's own mount is still there"
    );
    assert_nothing_left(&b, &s);
}

/// The same swap while a mount is being set up: the undo (here after the
/// worker never answers Serve) detaches the broker's own mount, not the
/// victim.
#[test]
fn setup_undo_cannot_be_redirected_by_a_planted_symlink() {
    require_root!();
    let Some(worker) = fake_worker() else { return };
    let s = Scratch::new("swap-undo");
    let b = Broker::start_with(&s, &worker, &["--worker-timeout", "3"]);
    let img = s.blank_image("hang-serve.img");
    let root = s.0.canonicalize().unwrap();
    let mp = root.join("x/m");
    std::fs::create_dir_all(&mp).unwrap();
    let victim = root.join("victim/m");
    victim_mount(&victim);
    let client = b.client_child(&["mount", img.to_str().unwrap(), mp.to_str().unwrap()]);
    assert!(
        wait_until(Duration::from_secs(30), || is_mounted(&mp)),
        "the mount never appeared: {}",
        b.log()
    );
    let moved = swap_for_symlink(&root.join("x"), &root.join("victim"));
    let out = client.wait_with_output().unwrap();
    let victim_survived = tmpfs_at(&victim);
    let _ = nix::mount::umount2(&victim, nix::mount::MntFlags::MNT_DETACH);
    assert!(victim_survived, "the undo detached the victim's mount");
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        !is_mounted(&moved.join("m")),
        "the broker's own mount is still there"
    );
    assert_nothing_left(&b, &s);
}

/// Opens `n` connections to `socket` as uid/gid 65534 and holds them:
/// prints how many the broker refused at once (it answers those with an
/// error), then, after `hold` seconds, how many it has closed since.
const HOLD_CONNECTIONS: &str = r#"
import os, select, socket, sys, time
path, n, hold = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
socks = []
for _ in range(n):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    s.connect(path)
    socks.append(s)
time.sleep(1.0)
refused = [s for s in socks if select.select([s], [], [], 0)[0]]
print("refused", len(refused), flush=True)
sys.stdin.readline()
time.sleep(hold)
held = [s for s in socks if s not in refused]
closed = 0
for s in held:
    if select.select([s], [], [], 0)[0] and s.recv(65536) == b"":
        closed += 1
print("closed", closed, "of", len(held), flush=True)
"#;

/// Security review, medium: one user's 300 idle connections lock nobody
/// else out. The user gets its cap, root's requests still work, and the
/// held connections are closed when no request comes in time.
#[test]
fn one_user_cannot_lock_others_out() {
    require_root!();
    let Some(worker) = fake_worker() else { return };
    let s = Scratch::new("conncap");
    let b = Broker::start_with(
        &s,
        &worker,
        &[
            "--max-connections-per-user",
            "8",
            "--first-request-timeout",
            "3",
        ],
    );
    let mut hog = Command::new("setpriv")
        .args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
        // Debian's python3 (install-deps), which any user may run.
        .args(["/usr/bin/python3", "-c", HOLD_CONNECTIONS])
        .arg(&b.socket)
        .args(["300", "5"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(hog.stdout.take().unwrap()));
    let refused = lines.next().unwrap().unwrap();
    assert_eq!(refused, "refused 292", "{}", b.log());
    // While they are held, root (and any other user) is served.
    let out = b.client(&["list", "--json"]);
    assert!(out.status.success(), "root locked out: {}", stderr(&out));
    let out = b.client_as(Some((4242, 4242)), &["list", "--json"]);
    assert!(
        out.status.success(),
        "another user locked out: {}",
        stderr(&out)
    );
    writeln!(hog.stdin.take().unwrap()).unwrap();
    let closed = lines.next().unwrap().unwrap();
    assert_eq!(closed, "closed 8 of 8", "{}", b.log());
    assert!(hog.wait().unwrap().success());
    assert!(
        b.log().contains("too many connections from uid 65534"),
        "{}",
        b.log()
    );
}

/// A connection that only ever says Hello is closed once the first
/// request is due: Hello does not keep it open.
#[test]
fn hello_does_not_keep_a_connection_open() {
    require_root!();
    let Some(worker) = fake_worker() else { return };
    let s = Scratch::new("hellos");
    let b = Broker::start_with(&s, &worker, &["--first-request-timeout", "2"]);
    let sock = raw_connect(&b.socket);
    let t = Instant::now();
    let closed_after = loop {
        let sent = send(
            sock.as_fd(),
            &ClientRequest::Hello {
                version: PROTOCOL_VERSION,
            },
            &[],
        );
        if sent.is_err() || recv::<BrokerReply>(sock.as_fd(), 0).is_err() {
            break t.elapsed();
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "Hellos kept the connection open"
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    assert!(
        closed_after >= Duration::from_millis(1900),
        "{closed_after:?}"
    );
    // A real request in time keeps the connection (the idle timeout applies).
    let sock = raw_connect(&b.socket);
    hello(&sock);
    send(sock.as_fd(), &ClientRequest::List, &[]).unwrap();
    let (reply, _) = recv::<BrokerReply>(sock.as_fd(), 0).unwrap();
    assert_eq!(reply, BrokerReply::Mounts(vec![]));
    std::thread::sleep(Duration::from_secs(3));
    send(sock.as_fd(), &ClientRequest::List, &[]).unwrap();
    let (reply, _) = recv::<BrokerReply>(sock.as_fd(), 0).unwrap();
    assert_eq!(reply, BrokerReply::Mounts(vec![]));
}

/// Security review, low: a worker cannot forge broker log lines. Its
/// stderr is relayed line by line, prefixed with the worker and the
/// mount's source, control characters stripped, long lines cut, floods
/// rate-limited.
#[test]
fn worker_stderr_is_relayed_not_inherited() {
    require_root!();
    let Some(worker) = fake_worker() else { return };
    let s = Scratch::new("noisy");
    let b = Broker::start(&s, &worker);
    let img = s.blank_image("noisy.img");
    let mp = s.dir("mnt");
    let out = b.client(&["mount", img.to_str().unwrap(), mp.to_str().unwrap()]);
    assert!(out.status.success(), "mount: {}\n{}", stderr(&out), b.log());
    let pid = b.list_json()[0]["worker_pid"].as_i64().unwrap();
    let prefix = format!("worker {pid} ({}): ", img.display());
    // Drops are reported with the next line a second later, or when the
    // worker closes its stderr (here: exits after the unmount).
    let out = b.client(&["unmount", mp.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        wait_until(Duration::from_secs(30), || b
            .log()
            .contains("log lines dropped")),
        "no drop report: {}",
        b.log()
    );
    let log = b.log();
    assert!(
        !log.contains('\x1b') && !log.contains('\r'),
        "control characters reached the log"
    );
    for line in log
        .lines()
        .filter(|l| l.contains("FORGED") || l.contains("LONG") || l.contains("flood"))
    {
        assert!(line.contains(&prefix), "unprefixed worker line: {line}");
    }
    let long = log
        .lines()
        .find(|l| l.contains("LONG"))
        .expect("long line logged");
    assert!(long.len() < 2048, "long line not cut: {} bytes", long.len());
    let floods = log.lines().filter(|l| l.contains("flood ")).count();
    assert!((100..=400).contains(&floods), "{floods} flood lines logged");
}

/// Security review, low: each worker runs in a cgroup of its own with
/// the memory and task limits given to the broker; the cgroup goes with it.
#[test]
fn each_worker_gets_a_limited_cgroup() {
    require_root!();
    let Some(worker) = fake_worker() else { return };
    let s = Scratch::new("cgroup");
    let b = Broker::start_with(
        &s,
        &worker,
        &[
            "--worker-memory-max",
            "268435456",
            "--worker-tasks-max",
            "32",
        ],
    );
    if let Some(why) = b
        .log()
        .lines()
        .find(|l| l.contains("workers get no cgroup"))
    {
        if why.contains("needs a delegated directory") {
            skip(&format!("cgroup v2 without a delegated directory: {why}"));
            return;
        }
        panic!("no worker cgroups: {why}");
    }
    let img = s.blank_image("disk.img");
    let mp = s.dir("mnt");
    let out = b.client(&["mount", img.to_str().unwrap(), mp.to_str().unwrap()]);
    assert!(out.status.success(), "mount: {}\n{}", stderr(&out), b.log());
    let pid = b.list_json()[0]["worker_pid"].as_i64().unwrap();
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let own = |controller: &str| -> Option<std::path::PathBuf> {
        cgroups.lines().find_map(|l| {
            let mut f = l.splitn(3, ':');
            let (_, list, path) = (f.next()?, f.next()?, f.next()?);
            let hit = if controller.is_empty() {
                list.is_empty()
            } else {
                list.split(',').any(|c| c == controller)
            };
            hit.then(|| std::path::PathBuf::from(path.trim_start_matches('/')))
        })
    };
    let leaf = format!("safemount-workers/{pid}");
    let read = |p: std::path::PathBuf| std::fs::read_to_string(&p).unwrap().trim().to_owned();
    let dirs: Vec<std::path::PathBuf> =
        if Path::new("/sys/fs/cgroup/memory/memory.limit_in_bytes").exists() {
            let mem = Path::new("/sys/fs/cgroup/memory").join(own("memory").unwrap());
            let pids = Path::new("/sys/fs/cgroup/pids").join(own("pids").unwrap());
            assert!(mem.ends_with(&leaf) && pids.ends_with(&leaf), "{cgroups}");
            assert_eq!(read(mem.join("memory.limit_in_bytes")), "268435456");
            assert_eq!(read(pids.join("pids.max")), "32");
            vec![mem, pids]
        } else {
            let dir = Path::new("/sys/fs/cgroup").join(own("").unwrap());
            assert!(dir.ends_with(&leaf), "{cgroups}");
            assert_eq!(read(dir.join("memory.max")), "268435456");
            assert_eq!(read(dir.join("pids.max")), "32");
            vec![dir]
        };
    let out = b.client(&["unmount", mp.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    for d in &dirs {
        assert!(
            wait_until(Duration::from_secs(10), || !d.exists()),
            "{} left behind",
            d.display()
        );
    }
}
