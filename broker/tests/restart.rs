//! safemountd as a service: socket activation with sd_notify, and state
//! that survives a broker restart (adopt live mounts, clean dead ones).
//! Real mounts with the fake worker: they need root and /dev/fuse, and
//! `cargo build -p safemount-broker --examples`; without them each test
//! prints why and returns.

#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed unwrap is a failed test"
)]

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::sys::socket::{
    AddressFamily, Backlog, SockFlag, SockType, UnixAddr, bind, listen, recv, socket,
};
use nix::unistd::Pid;

mod harness;

use harness::*;

macro_rules! require_root {
    () => {
        if !have_root_and_fuse() {
            return;
        }
    };
}

/// A broker with `extra` arguments, logging to `log_name`, that does not
/// inherit NOTIFY_SOCKET.
fn start_broker(s: &Scratch, worker: &Path, extra: &[&str], log_name: &str) -> Broker {
    Broker::builder(s, worker)
        .args(extra)
        .env_remove("NOTIFY_SOCKET")
        .log_name(s, log_name)
        .start()
}

fn pid_alive(pid: i32) -> bool {
    // A zombie is dead for our purposes.
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(')')
            .is_some_and(|(_, r)| !r.trim_start().starts_with('Z'))
    })
}

fn mount(b: &Broker, img: &Path, mp: &Path) -> i32 {
    let out = b.client(&["mount", img.to_str().unwrap(), mp.to_str().unwrap()]);
    assert!(out.status.success(), "mount: {}\n{}", stderr(&out), b.log());
    let list = b.list_json();
    let entry = list
        .iter()
        .find(|e| e["mountpoint"] == mp.to_str().unwrap())
        .unwrap();
    entry["worker_pid"].as_i64().unwrap() as i32
}

#[test]
fn restarted_broker_adopts_live_mounts_and_cleans_dead_ones() {
    require_root!();
    let Some(worker) = fake_worker() else { return };
    let s = Scratch::new("adopt");
    let mut b1 = start_broker(&s, &worker, &[], "b1.log");
    let live_mp = s.dir("live");
    let dead_mp = s.dir("dead");
    let live_pid = mount(&b1, &s.blank_image("live.img"), &live_mp);
    let dead_pid = mount(&b1, &s.blank_image("dead.img"), &dead_mp);
    assert_eq!(s.records().len(), 2, "one record per mount");

    // Broker #1 dies without any cleanup; its workers keep serving.
    b1.signal_and_wait(Signal::SIGKILL).unwrap();
    assert!(is_mounted(&live_mp) && is_mounted(&dead_mp));
    assert!(pid_alive(live_pid) && pid_alive(dead_pid));
    // One worker dies while no broker watches: its mount is dead.
    kill(Pid::from_raw(dead_pid), Signal::SIGKILL).unwrap();
    assert!(wait_until(Duration::from_secs(5), || !pid_alive(dead_pid)));
    // And a record whose worker never existed as recorded (a pid with the
    // wrong start time) is stale too.
    let stale = serde_json::json!({
        "id": 9999, "source": "ghost.img",
        "mountpoint": s.path("ghost").to_str().unwrap(),
        "owner_uid": 0, "label": "", "read_only": true, "state": "Mounted",
        "worker_pid": std::process::id(), "worker_start_time": 1,
        "fuse_dev": null, "mount_id": null
    });
    std::fs::write(s.path("run/mounts/9999.json"), stale.to_string()).unwrap();

    let mut b2 = start_broker(&s, &worker, &[], "b2.log");
    let list = b2.list_json();
    assert_eq!(list.len(), 1, "{list:?}\n{}", b2.log());
    assert_eq!(list[0]["mountpoint"], live_mp.to_str().unwrap());
    assert_eq!(list[0]["worker_pid"].as_i64().unwrap() as i32, live_pid);
    assert_eq!(list[0]["state"], "Mounted");
    assert!(!is_mounted(&dead_mp), "dead mount not cleaned at startup");
    assert_eq!(s.records().len(), 1, "stale records not removed");
    assert!(b2.log().contains("adopted a mount"), "{}", b2.log());

    // The adopted worker is not broker #2's child, yet its death still
    // takes the mount (polled: a busy machine may take a while).
    assert!(is_mounted(&live_mp), "adopted mount not in the mount table");
    kill(Pid::from_raw(live_pid), Signal::SIGKILL).unwrap();
    assert!(
        wait_until(SETTLE, || !is_mounted(&live_mp)),
        "adopted mount still there {SETTLE:?} after its worker died\n{}",
        b2.log()
    );
    assert!(wait_until(SETTLE, || b2.list_json().is_empty()));
    assert!(s.records().is_empty());

    // A new mount after the restart gets a fresh id (no record clash).
    let again = mount(&b2, &s.blank_image("again.img"), &live_mp);
    assert!(again > 0);
    assert!(b2.signal_and_wait(Signal::SIGTERM).unwrap().success());
    // Foreground mode: SIGTERM cleans everything, records included.
    assert!(!is_mounted(&live_mp));
    assert!(s.records().is_empty());
}

#[test]
fn keep_mounts_survives_sigterm_and_adopted_mount_unmounts() {
    require_root!();
    let Some(worker) = fake_worker() else { return };
    let s = Scratch::new("keep");
    let mut b1 = start_broker(&s, &worker, &["--keep-mounts"], "b1.log");
    let mp = s.dir("mnt");
    let pid = mount(&b1, &s.blank_image("disk.img"), &mp);
    assert!(b1.signal_and_wait(Signal::SIGTERM).unwrap().success());
    assert!(is_mounted(&mp), "--keep-mounts must leave the mount");
    assert!(pid_alive(pid));
    assert_eq!(s.records().len(), 1);

    // A second broker on the same state directory is refused while the
    // first runs; after a restart the mount is adopted and unmounts
    // normally (the broker waits for the adopted worker through its pidfd).
    let b2 = start_broker(&s, &worker, &[], "b2.log");
    let clash = Command::new(env!("CARGO_BIN_EXE_safemountd"))
        .arg("--socket")
        .arg(s.path("run/other-socket"))
        .arg("--state-dir")
        .arg(s.path("run"))
        .arg("--worker")
        .arg(&worker)
        .output()
        .unwrap();
    assert!(!clash.status.success());
    assert!(
        stderr(&clash).contains("another safemountd uses the state directory"),
        "{}",
        stderr(&clash)
    );
    assert_eq!(b2.list_json().len(), 1);
    let out = b2.client(&["unmount", mp.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "unmount: {}\n{}",
        stderr(&out),
        b2.log()
    );
    assert!(!is_mounted(&mp));
    assert!(wait_until(SETTLE, || !pid_alive(pid)));
    assert!(wait_until(SETTLE, || b2.list_json().is_empty()));
    assert!(s.records().is_empty());
}

/// A listening SOCK_SEQPACKET socket at `path`.
fn listener(path: &Path) -> OwnedFd {
    let sock = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::empty(),
        None,
    )
    .unwrap();
    bind(sock.as_raw_fd(), &UnixAddr::new(path).unwrap()).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666)).unwrap();
    listen(&sock, Backlog::new(16).unwrap()).unwrap();
    sock
}

#[test]
fn socket_activation_and_notify() {
    require_root!();
    let Some(worker) = fake_worker() else { return };
    let s = Scratch::new("activate");
    s.dir("run");
    let sock_path = s.path("run/socket");
    let listen_fd = listener(&sock_path);
    let notify_path = s.path("notify");
    let notify = socket(
        AddressFamily::Unix,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .unwrap();
    bind(notify.as_raw_fd(), &UnixAddr::new(&notify_path).unwrap()).unwrap();
    nix::sys::socket::setsockopt(
        &notify,
        nix::sys::socket::sockopt::ReceiveTimeout,
        &nix::sys::time::TimeVal::new(10, 0),
    )
    .unwrap();

    // `sh` sets LISTEN_PID to its own pid and execs safemountd, which keeps
    // it: exactly what systemd does. fd 3 is the listening socket.
    let raw = listen_fd.as_raw_fd();
    let log = s.path("broker.log");
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg("LISTEN_PID=$$ LISTEN_FDS=1 exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_safemountd"))
        .arg("--worker")
        .arg(&worker)
        .arg("--state-dir")
        .arg(s.path("state"))
        .env("NOTIFY_SOCKET", &notify_path)
        .env("SAFEMOUNT_LOG", "debug")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    // SAFETY: only dup2 (async-signal-safe) on integers between fork and
    // exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(raw, 3) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().unwrap();
    drop(listen_fd);
    let mut b = Broker::from_child(child, sock_path.clone(), log.clone());

    let mut buf = [0u8; 256];
    let n = recv(
        notify.as_raw_fd(),
        &mut buf,
        nix::sys::socket::MsgFlags::empty(),
    )
    .unwrap_or_else(|e| panic!("no READY=1 within 10 s ({e}); log:\n{}", b.log()));
    assert_eq!(&buf[..n], b"READY=1");
    assert!(
        b.log().contains("using the socket systemd passed"),
        "{}",
        b.log()
    );

    // A mount through the passed socket.
    let mp = s.dir("mnt");
    let worker_pid = mount(&b, &s.blank_image("disk.img"), &mp);
    assert!(is_mounted(&mp));
    assert_eq!(
        std::fs::read_dir(s.path("state/mounts")).unwrap().count(),
        1
    );

    // Under activation SIGTERM says STOPPING=1 and keeps the mount (and
    // leaves systemd's socket alone).
    // The serving worker's log pipe and socket went to the fd store first.
    let pid = b.pid();
    kill(Pid::from_raw(pid as i32), Signal::SIGTERM).unwrap();
    let mut said = Vec::new();
    loop {
        let n = recv(
            notify.as_raw_fd(),
            &mut buf,
            nix::sys::socket::MsgFlags::empty(),
        )
        .unwrap_or_else(|e| panic!("no STOPPING=1 ({e}) after {said:?}"));
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        if text == "STOPPING=1" {
            break;
        }
        said.push(text);
    }
    assert_eq!(
        said,
        [
            format!("FDSTORE=1\nFDNAME=worker-1-{worker_pid}-log"),
            format!("FDSTORE=1\nFDNAME=worker-1-{worker_pid}-health")
        ]
    );
    assert!(b.signal_and_wait(Signal::SIGTERM).unwrap().success());
    assert!(
        is_mounted(&mp),
        "activated broker must keep mounts on SIGTERM"
    );
    assert!(
        sock_path.exists(),
        "the activated socket belongs to systemd"
    );

    // Clean up: a foreground broker on the same state dir adopts the mount
    // and unmounts it on SIGTERM.
    std::fs::remove_file(&sock_path).unwrap();
    let mut b2 = start_broker(
        &s,
        &worker,
        &["--state-dir", s.path("state").to_str().unwrap()],
        "b2.log",
    );
    assert_eq!(b2.list_json().len(), 1);
    assert!(b2.signal_and_wait(Signal::SIGTERM).unwrap().success());
    assert!(!is_mounted(&mp));
}

#[test]
fn a_wrong_passed_socket_is_refused() {
    require_root!();
    let Some(worker) = fake_worker() else { return };
    let s = Scratch::new("wrongfd");
    // A stream socket where a seqpacket one belongs.
    let sock = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::empty(),
        None,
    )
    .unwrap();
    let p = s.path("stream");
    bind(sock.as_raw_fd(), &UnixAddr::new(&p).unwrap()).unwrap();
    listen(&sock, Backlog::new(4).unwrap()).unwrap();
    let raw = sock.as_raw_fd();
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg("LISTEN_PID=$$ LISTEN_FDS=1 exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_safemountd"))
        .arg("--worker")
        .arg(&worker)
        .arg("--state-dir")
        .arg(s.path("state"));
    // SAFETY: only dup2 (async-signal-safe) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(raw, 3) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("is not SOCK_SEQPACKET"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_client_that_hangs_up_mid_mount_leaves_nothing() {
    use safemount_proto::{ClientRequest, MountSource, PROTOCOL_VERSION};
    use std::os::fd::AsFd;
    require_root!();
    let Some(worker) = fake_worker() else { return };
    let s = Scratch::new("hangup");
    let b = start_broker(&s, &worker, &[], "broker.log");
    let img = s.blank_image("slow-probe.img");
    let mp = s.dir("mnt");
    let sock = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .unwrap();
    nix::sys::socket::connect(sock.as_raw_fd(), &UnixAddr::new(&b.socket).unwrap()).unwrap();
    safemount_proto::send(
        sock.as_fd(),
        &ClientRequest::Hello {
            version: PROTOCOL_VERSION,
        },
        &[],
    )
    .unwrap();
    let _ = safemount_proto::recv::<safemount_proto::BrokerReply>(sock.as_fd(), 0).unwrap();
    let image = std::fs::File::open(&img).unwrap();
    safemount_proto::send(
        sock.as_fd(),
        &ClientRequest::Mount {
            source: MountSource::Fd {
                display_name: "slow-probe.img".into(),
            },
            mountpoint: Some(mp.clone()),
            options: String::new(),
        },
        &[image.as_fd()],
    )
    .unwrap();
    // Hang up while the worker probes.
    drop(sock);
    assert!(
        wait_until(Duration::from_secs(10), || b
            .log()
            .contains("the client disconnected during the mount")),
        "{}",
        b.log()
    );
    assert!(wait_until(Duration::from_secs(5), || b
        .list_json()
        .is_empty()));
    assert!(!is_mounted(&mp));
    assert!(s.records().is_empty());
    // And the broker keeps serving.
    mount(&b, &s.blank_image("disk.img"), &mp);
}
