//! systemd integration: socket activation (`LISTEN_FDS`) and readiness
//! notification (`NOTIFY_SOCKET`, the sd_notify protocol).
//!
//! Both are a few lines of protocol, written here with nix rather than
//! pulling in a crate: socket activation is "fd 3 is yours if LISTEN_PID is
//! your pid", and sd_notify is one datagram to a unix socket. What matters
//! is validating what we were given: the passed fd must be the kind of
//! socket the broker serves (AF_UNIX, SOCK_SEQPACKET, listening), or the
//! broker refuses to start rather than serve on something else.

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, FdFlag, fcntl};
use nix::sys::socket::{
    AddressFamily, MsgFlags, SockFlag, SockType, SockaddrLike, SockaddrStorage, UnixAddr,
    getsockname, getsockopt, sendto, socket, sockopt,
};

/// The first fd systemd passes (SD_LISTEN_FDS_START).
pub const LISTEN_FDS_START: i32 = 3;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ActivationError {
    #[error("LISTEN_FDS is not a number: {0}")]
    BadCount(String),
    #[error("systemd passed {0} sockets; safemountd takes exactly 1")]
    Count(u32),
    #[error("the socket systemd passed (fd 3) is unusable: {0}")]
    Inspect(Errno),
    #[error("the socket systemd passed (fd 3) is not an AF_UNIX socket")]
    NotUnix,
    #[error(
        "the socket systemd passed (fd 3) is not SOCK_SEQPACKET (use SocketMode/ListenSequentialPacket=)"
    )]
    NotSeqPacket,
    #[error("the socket systemd passed (fd 3) is not listening")]
    NotListening,
    #[error("NOTIFY_SOCKET is not a usable socket address: {0}")]
    NotifyAddress(String),
    #[error("cannot notify systemd: {0}")]
    Notify(Errno),
}

/// The listening socket systemd passed, if this process was socket
/// activated (`LISTEN_PID` is our pid and `LISTEN_FDS` is set). Removes the
/// `LISTEN_*` variables so no child sees them, and marks the fd
/// close-on-exec so no worker inherits it.
pub fn listen_socket() -> Result<Option<OwnedFd>, ActivationError> {
    let pid = std::env::var("LISTEN_PID").ok();
    let fds = std::env::var("LISTEN_FDS").ok();
    let ours = pid
        .as_deref()
        .and_then(|p| p.trim().parse::<u32>().ok())
        .is_some_and(|p| p == std::process::id());
    if !ours {
        return Ok(None);
    }
    clear_listen_env();
    let Some(fds) = fds else {
        return Ok(None);
    };
    let count: u32 = fds
        .trim()
        .parse()
        .map_err(|_| ActivationError::BadCount(crate::sanitize::display(fds.as_bytes())))?;
    match count {
        0 => return Ok(None),
        1 => {}
        n => return Err(ActivationError::Count(n)),
    }
    // SAFETY: LISTEN_PID is our pid and LISTEN_FDS is 1, so by the socket
    // activation protocol fd 3 was opened for us and nothing else in this
    // process owns it; we take ownership exactly once (the variables are
    // gone now, so a second call returns None).
    let fd = unsafe { OwnedFd::from_raw_fd(LISTEN_FDS_START) };
    check_listener(borrow(&fd))?;
    fcntl(&fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).map_err(ActivationError::Inspect)?;
    Ok(Some(fd))
}

fn borrow(fd: &OwnedFd) -> BorrowedFd<'_> {
    std::os::fd::AsFd::as_fd(fd)
}

fn clear_listen_env() {
    for var in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        // SAFETY: called from main before any other thread exists
        // (safemountd starts its threads after socket setup), so nothing
        // reads the environment concurrently.
        unsafe { std::env::remove_var(var) };
    }
}

/// Checks that `fd` is an AF_UNIX SOCK_SEQPACKET socket in listening state.
pub fn check_listener(fd: BorrowedFd<'_>) -> Result<(), ActivationError> {
    let addr: SockaddrStorage = getsockname(fd.as_raw_fd()).map_err(ActivationError::Inspect)?;
    if addr.family() != Some(AddressFamily::Unix) {
        return Err(ActivationError::NotUnix);
    }
    if getsockopt(&fd, sockopt::SockType).map_err(ActivationError::Inspect)? != SockType::SeqPacket
    {
        return Err(ActivationError::NotSeqPacket);
    }
    if !getsockopt(&fd, sockopt::AcceptConn).map_err(ActivationError::Inspect)? {
        return Err(ActivationError::NotListening);
    }
    Ok(())
}

/// Sends `state` (e.g. "READY=1") to the service manager if
/// `NOTIFY_SOCKET` is set; does nothing otherwise. An address starting
/// with '@' names an abstract socket.
pub fn notify(state: &str) -> Result<(), ActivationError> {
    let Some(target) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(());
    };
    let bytes = target.as_encoded_bytes();
    let addr = match bytes.split_first() {
        Some((b'@', name)) => UnixAddr::new_abstract(name),
        Some((b'/', _)) => UnixAddr::new(std::path::Path::new(&target)),
        _ => {
            return Err(ActivationError::NotifyAddress(crate::sanitize::display(
                bytes,
            )));
        }
    }
    .map_err(|_| ActivationError::NotifyAddress(crate::sanitize::display(bytes)))?;
    let sock = socket(
        AddressFamily::Unix,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(ActivationError::Notify)?;
    sendto(
        sock.as_raw_fd(),
        state.as_bytes(),
        &addr,
        MsgFlags::MSG_NOSIGNAL,
    )
    .map_err(ActivationError::Notify)?;
    Ok(())
}

/// [`notify`], logging instead of failing: a lost notification must not
/// stop the broker (systemd then reports a start timeout, which says why).
pub fn notify_logged(state: &str) {
    if let Err(e) = notify(state) {
        tracing::warn!(error = %e, state, "sd_notify failed");
    }
}

/// True if systemd started this process as a service that wants
/// notifications or passed it sockets: the broker then runs "managed"
/// (mounts outlive a broker stop and are adopted on restart).
pub fn under_systemd(activated: bool) -> bool {
    activated || std::env::var_os("NOTIFY_SOCKET").is_some()
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::socket::{Backlog, bind, listen};

    fn temp(tag: &str) -> std::path::PathBuf {
        let p = std::env::temp_dir().join(format!("sm-act-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_file(&p);
        p
    }

    #[test]
    fn listener_checks() {
        let seq = socket(
            AddressFamily::Unix,
            SockType::SeqPacket,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .unwrap();
        let p = temp("seq");
        bind(seq.as_raw_fd(), &UnixAddr::new(&p).unwrap()).unwrap();
        assert_eq!(
            check_listener(borrow(&seq)),
            Err(ActivationError::NotListening)
        );
        listen(&seq, Backlog::new(4).unwrap()).unwrap();
        assert_eq!(check_listener(borrow(&seq)), Ok(()));
        std::fs::remove_file(&p).unwrap();

        let stream = socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .unwrap();
        assert_eq!(
            check_listener(borrow(&stream)),
            Err(ActivationError::NotSeqPacket)
        );
        let inet = socket(
            AddressFamily::Inet,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .unwrap();
        assert_eq!(check_listener(borrow(&inet)), Err(ActivationError::NotUnix));
        let (r, _w) = nix::unistd::pipe().unwrap();
        assert_eq!(
            check_listener(borrow(&r)),
            Err(ActivationError::Inspect(Errno::ENOTSOCK))
        );
    }
}
