//! systemd integration: socket activation (`LISTEN_FDS`) and readiness
//! notification (`NOTIFY_SOCKET`, the sd_notify protocol).
//!
//! Both are a few lines of protocol, written here with nix rather than
//! pulling in a crate: socket activation is "fds 3.. are yours if
//! LISTEN_PID is your pid", and sd_notify is one datagram to a unix socket
//! (with fds attached, for the fd store). What matters is validating what
//! we were given: the passed socket must be the kind the broker serves
//! (AF_UNIX, SOCK_SEQPACKET, listening), or the broker refuses to start
//! rather than serve on something else. Besides the socket, systemd passes
//! back what the fd store kept ([`crate::fd_store`]), told apart by name.

use std::io::IoSlice;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, FdFlag, fcntl};
use nix::sys::socket::{
    AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType, SockaddrLike, SockaddrStorage,
    UnixAddr, getsockname, getsockopt, sendmsg, setsockopt, socket, sockopt,
};

/// The first fd systemd passes (SD_LISTEN_FDS_START).
pub const LISTEN_FDS_START: i32 = 3;

/// How long a notification may wait for room in the service manager's
/// socket queue. systemd reads it promptly; when it does not (it is busy,
/// or stopped), a mount's reply, which follows its `FDSTORE=1`, must not
/// wait with it.
const NOTIFY_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ActivationError {
    #[error("LISTEN_FDS is not a number: {0}")]
    BadCount(String),
    #[error("systemd passed {0} sockets; safemountd takes exactly 1")]
    Count(usize),
    #[error("systemd passed {0} fds, more than safemountd takes")]
    TooMany(u32),
    #[error("an fd systemd passed is unusable: {0}")]
    Inspect(Errno),
    #[error("the socket systemd passed is not an AF_UNIX socket")]
    NotUnix,
    #[error(
        "the socket systemd passed is not SOCK_SEQPACKET (use SocketMode/ListenSequentialPacket=)"
    )]
    NotSeqPacket,
    #[error("the socket systemd passed is not listening")]
    NotListening,
    #[error("NOTIFY_SOCKET is not a usable socket address: {0}")]
    NotifyAddress(String),
    #[error("cannot notify systemd: {0}")]
    Notify(Errno),
    #[error("systemd did not take a notification within {0:?}: its notify socket is full")]
    NotifyTimeout(Duration),
}

/// One fd systemd passed, with its name from `LISTEN_FDNAMES` (empty when
/// systemd gave none).
#[derive(Debug)]
pub struct PassedFd {
    pub name: String,
    pub fd: OwnedFd,
}

/// The most fds taken from systemd: the socket and the fd store (two per
/// mount, see [`crate::fd_store`]), well above the unit's
/// FileDescriptorStoreMax=4096.
const MAX_PASSED: u32 = 8192;

/// Every fd systemd passed, if `LISTEN_PID` is our pid and `LISTEN_FDS` is
/// set; each marked close-on-exec so no worker inherits it. Removes the
/// `LISTEN_*` variables so no child sees them (and a second call returns
/// nothing).
pub fn passed_fds() -> Result<Vec<PassedFd>, ActivationError> {
    let pid = std::env::var("LISTEN_PID").ok();
    let fds = std::env::var("LISTEN_FDS").ok();
    let names = std::env::var("LISTEN_FDNAMES").unwrap_or_default();
    let ours = pid
        .as_deref()
        .and_then(|p| p.trim().parse::<u32>().ok())
        .is_some_and(|p| p == std::process::id());
    if !ours {
        return Ok(Vec::new());
    }
    clear_listen_env();
    let Some(fds) = fds else {
        return Ok(Vec::new());
    };
    let count: u32 = fds
        .trim()
        .parse()
        .map_err(|_| ActivationError::BadCount(crate::sanitize::display(fds.as_bytes())))?;
    if count > MAX_PASSED {
        return Err(ActivationError::TooMany(count));
    }
    let mut names: Vec<&str> = names.split(':').collect();
    if names.len() != count as usize {
        // No names, or not one per fd: none is trusted.
        names = vec![""; count as usize];
    }
    let mut passed = Vec::with_capacity(names.len());
    for (raw, name) in (LISTEN_FDS_START..).zip(names) {
        // SAFETY: LISTEN_PID is our pid and LISTEN_FDS is `count`, so by
        // the socket activation protocol fds 3..3+count were opened for us
        // and nothing else in this process owns them; each is taken
        // exactly once (the variables are gone now).
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        fcntl(&fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).map_err(ActivationError::Inspect)?;
        passed.push(PassedFd {
            name: name.to_owned(),
            fd,
        });
    }
    Ok(passed)
}

/// The listening socket among `sockets` (what systemd passed besides the
/// fd store): none, or exactly one, and of the kind the broker serves.
pub fn listen_socket(mut sockets: Vec<PassedFd>) -> Result<Option<OwnedFd>, ActivationError> {
    match sockets.pop() {
        None => Ok(None),
        Some(socket) if sockets.is_empty() => {
            check_listener(borrow(&socket.fd))?;
            Ok(Some(socket.fd))
        }
        Some(_) => Err(ActivationError::Count(sockets.len() + 1)),
    }
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
    notify_with_fds(state, &[])
}

/// [`notify`] with `fds` attached (SCM_RIGHTS), as `FDSTORE=1` needs.
pub fn notify_with_fds(state: &str, fds: &[BorrowedFd<'_>]) -> Result<(), ActivationError> {
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
    send_notification(&addr, state, fds, NOTIFY_TIMEOUT)
}

/// One datagram `state`, with `fds`, to `addr`; an error if the socket's
/// queue stays full for `timeout`.
fn send_notification(
    addr: &UnixAddr,
    state: &str,
    fds: &[BorrowedFd<'_>],
    timeout: Duration,
) -> Result<(), ActivationError> {
    let sock = socket(
        AddressFamily::Unix,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(ActivationError::Notify)?;
    setsockopt(&sock, sockopt::SendTimeout, &crate::socket_timeout(timeout))
        .map_err(ActivationError::Notify)?;
    let raw: Vec<RawFd> = fds.iter().map(|fd| fd.as_raw_fd()).collect();
    let rights = [ControlMessage::ScmRights(&raw)];
    let cmsgs: &[ControlMessage<'_>] = if raw.is_empty() { &[] } else { &rights };
    match sendmsg(
        sock.as_raw_fd(),
        &[IoSlice::new(state.as_bytes())],
        cmsgs,
        MsgFlags::MSG_NOSIGNAL,
        Some(addr),
    ) {
        Ok(_) => Ok(()),
        Err(Errno::EAGAIN) => Err(ActivationError::NotifyTimeout(timeout)),
        Err(e) => Err(ActivationError::Notify(e)),
    }
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

    /// systemd passes the socket and the whole fd store: the unit's cap on
    /// the store must leave the socket room under [`MAX_PASSED`], or a full
    /// store would stop the next broker from starting.
    #[test]
    fn the_units_fd_store_fits_what_the_broker_takes() {
        let unit = include_str!("../../packaging/systemd/safemountd.service");
        let store_max: u32 = unit
            .lines()
            .find_map(|l| l.strip_prefix("FileDescriptorStoreMax="))
            .expect("the unit sets FileDescriptorStoreMax=")
            .trim()
            .parse()
            .unwrap();
        assert!(
            store_max < MAX_PASSED,
            "{store_max} + the socket > {MAX_PASSED}"
        );
    }

    /// A service manager that stops reading (its queue holds
    /// net.unix.max_dgram_qlen datagrams) makes a notification fail after
    /// the timeout instead of blocking its sender for good.
    #[test]
    fn a_full_notify_socket_times_out() {
        let manager = socket(
            AddressFamily::Unix,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .unwrap();
        let p = temp("notify");
        let addr = UnixAddr::new(&p).unwrap();
        bind(manager.as_raw_fd(), &addr).unwrap();
        let (r, _w) = nix::unistd::pipe().unwrap();
        let timeout = Duration::from_millis(200);
        let mut sent = 0;
        let failure = loop {
            let started = std::time::Instant::now();
            match send_notification(&addr, "FDSTORE=1", &[borrow(&r)], timeout) {
                Ok(()) => sent += 1,
                Err(e) => break (e, started.elapsed()),
            }
            assert!(sent < 100_000, "the queue never filled");
        };
        std::fs::remove_file(&p).unwrap();
        assert_eq!(failure.0, ActivationError::NotifyTimeout(timeout));
        assert!(failure.1 >= timeout, "failed after {:?}", failure.1);
        assert!(sent > 0);
    }
}
