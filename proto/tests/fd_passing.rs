//! Fd passing over SOCK_SEQPACKET: received fds are close-on-exec; wrong
//! fd counts, truncated and oversized packets are errors; and the fds that
//! arrived with an error are closed (checked in /proc/self/fd).
//!
//! The tests look at this process's whole fd table, so they take a lock to
//! run one at a time.

#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed unwrap is a failed test"
)]

use std::collections::BTreeSet;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Mutex;

use nix::fcntl::{FcntlArg, FdFlag, fcntl};
use nix::sys::socket::{AddressFamily, MsgFlags, SockFlag, SockType, socketpair};
use safemount_proto::wire::{encode, recv_upto};
use safemount_proto::{ClientRequest, ProtoError, WorkerReply, recv, send};

static FD_TABLE: Mutex<()> = Mutex::new(());

fn open_fds() -> BTreeSet<String> {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

fn pair() -> (OwnedFd, OwnedFd) {
    socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .unwrap()
}

/// Runs `f` and checks it leaves the fd table as it found it (the
/// directory listing itself uses one fd in both snapshots).
fn no_fd_leak(f: impl FnOnce()) {
    let before = open_fds();
    f();
    let after = open_fds();
    assert_eq!(before, after, "fds leaked or closed");
}

fn null() -> std::fs::File {
    std::fs::File::open("/dev/null").unwrap()
}

#[test]
fn received_fds_are_cloexec_and_usable() {
    let _g = FD_TABLE.lock().unwrap();
    let (a, b) = pair();
    let file = std::fs::File::open("/proc/self/exe").unwrap();
    no_fd_leak(|| {
        send(a.as_fd(), &ClientRequest::List, &[file.as_fd()]).unwrap();
        let (msg, fds) = recv::<ClientRequest>(b.as_fd(), 1).unwrap();
        assert_eq!(msg, ClientRequest::List);
        assert_eq!(fds.len(), 1);
        let flags = FdFlag::from_bits_retain(fcntl(&fds[0], FcntlArg::F_GETFD).unwrap());
        assert!(flags.contains(FdFlag::FD_CLOEXEC));
        let s1 = nix::sys::stat::fstat(&fds[0]).unwrap();
        let s2 = nix::sys::stat::fstat(&file).unwrap();
        assert_eq!((s1.st_dev, s1.st_ino), (s2.st_dev, s2.st_ino));
    });
}

#[test]
fn too_many_fds_are_an_error_and_closed() {
    let _g = FD_TABLE.lock().unwrap();
    let (a, b) = pair();
    let n = null();
    no_fd_leak(|| {
        send(
            a.as_fd(),
            &ClientRequest::List,
            &[n.as_fd(), n.as_fd(), n.as_fd()],
        )
        .unwrap();
        match recv::<ClientRequest>(b.as_fd(), 1) {
            Err(ProtoError::WrongFdCount {
                expected: 1,
                got: 3,
            }) => {}
            other => panic!("{other:?}"),
        }
    });
    no_fd_leak(|| {
        send(a.as_fd(), &ClientRequest::List, &[n.as_fd(), n.as_fd()]).unwrap();
        assert!(matches!(
            recv_upto::<ClientRequest>(b.as_fd(), 1),
            Err(ProtoError::WrongFdCount {
                expected: 1,
                got: 2
            })
        ));
    });
}

#[test]
fn too_few_fds_are_an_error() {
    let _g = FD_TABLE.lock().unwrap();
    let (a, b) = pair();
    no_fd_leak(|| {
        send(a.as_fd(), &ClientRequest::List, &[]).unwrap();
        assert!(matches!(
            recv::<ClientRequest>(b.as_fd(), 1),
            Err(ProtoError::WrongFdCount {
                expected: 1,
                got: 0
            })
        ));
    });
    // recv_upto accepts fewer.
    send(a.as_fd(), &ClientRequest::List, &[]).unwrap();
    let (_, fds) = recv_upto::<ClientRequest>(b.as_fd(), 1).unwrap();
    assert!(fds.is_empty());
}

#[test]
fn the_most_fds_the_kernel_passes_are_all_closed() {
    let _g = FD_TABLE.lock().unwrap();
    let (a, b) = pair();
    let n = null();
    // SCM_MAX_FD (253) copies in one message, sent with a raw sendmsg since
    // `send` caps at MAX_FDS.
    let raw = vec![n.as_raw_fd(); 253];
    no_fd_leak(|| {
        let cmsg = [nix::sys::socket::ControlMessage::ScmRights(&raw)];
        let bytes = encode(&ClientRequest::List).unwrap();
        let iov = [std::io::IoSlice::new(&bytes)];
        nix::sys::socket::sendmsg::<()>(a.as_raw_fd(), &iov, &cmsg, MsgFlags::empty(), None)
            .unwrap();
        assert!(matches!(
            recv::<ClientRequest>(b.as_fd(), 0),
            Err(ProtoError::WrongFdCount {
                expected: 0,
                got: 253
            })
        ));
    });
}

#[test]
fn garbage_with_an_fd_closes_the_fd() {
    let _g = FD_TABLE.lock().unwrap();
    let (a, b) = pair();
    let n = null();
    no_fd_leak(|| {
        let raw = [n.as_raw_fd()];
        let cmsg = [nix::sys::socket::ControlMessage::ScmRights(&raw)];
        let iov = [std::io::IoSlice::new(&[0xff, 0xff, 0xff])];
        nix::sys::socket::sendmsg::<()>(a.as_raw_fd(), &iov, &cmsg, MsgFlags::empty(), None)
            .unwrap();
        assert!(matches!(
            recv::<ClientRequest>(b.as_fd(), 1),
            Err(ProtoError::Decode(_))
        ));
    });
}

#[test]
fn truncated_message_is_an_error() {
    let _g = FD_TABLE.lock().unwrap();
    let (a, b) = pair();
    let n = null();
    let bytes = encode(&WorkerReply::Refused {
        reason: "a reason long enough to cut".into(),
    })
    .unwrap();
    no_fd_leak(|| {
        let raw = [n.as_raw_fd()];
        let cmsg = [nix::sys::socket::ControlMessage::ScmRights(&raw)];
        let iov = [std::io::IoSlice::new(&bytes[..bytes.len() - 5])];
        nix::sys::socket::sendmsg::<()>(a.as_raw_fd(), &iov, &cmsg, MsgFlags::empty(), None)
            .unwrap();
        assert!(matches!(
            recv::<WorkerReply>(b.as_fd(), 1),
            Err(ProtoError::Decode(_))
        ));
    });
}

#[test]
fn oversized_packet_is_an_error_and_its_fds_closed() {
    let _g = FD_TABLE.lock().unwrap();
    let (a, b) = pair();
    let n = null();
    no_fd_leak(|| {
        let big = vec![0u8; safemount_proto::MAX_MESSAGE_BYTES + 1000];
        let raw = [n.as_raw_fd()];
        let cmsg = [nix::sys::socket::ControlMessage::ScmRights(&raw)];
        let iov = [std::io::IoSlice::new(&big)];
        nix::sys::socket::sendmsg::<()>(a.as_raw_fd(), &iov, &cmsg, MsgFlags::empty(), None)
            .unwrap();
        assert!(matches!(
            recv::<ClientRequest>(b.as_fd(), 1),
            Err(ProtoError::TooLarge(_))
        ));
    });
    // The next packet is read whole: the oversized one did not leak into it.
    send(a.as_fd(), &ClientRequest::List, &[]).unwrap();
    let (msg, _) = recv::<ClientRequest>(b.as_fd(), 0).unwrap();
    assert_eq!(msg, ClientRequest::List);
}

#[test]
fn closed_peer_and_send_limits() {
    let _g = FD_TABLE.lock().unwrap();
    let (a, b) = pair();
    let n = null();
    let five = [n.as_fd(), n.as_fd(), n.as_fd(), n.as_fd(), n.as_fd()];
    assert!(matches!(
        send(a.as_fd(), &ClientRequest::List, &five),
        Err(ProtoError::WrongFdCount { .. })
    ));
    drop(a);
    assert!(matches!(
        recv::<ClientRequest>(b.as_fd(), 0),
        Err(ProtoError::Closed)
    ));
    let (c, d) = pair();
    drop(d);
    assert!(matches!(
        send(c.as_fd(), &ClientRequest::List, &[]),
        Err(ProtoError::Closed)
    ));
}
