//! A stand-in for systemd as the broker's service manager: the
//! NOTIFY_SOCKET it listens on, the fd store it keeps (`FDSTORE=1` with
//! `FDNAME=`, `FDSTOREREMOVE=1`, and entries dropped once they poll
//! POLLHUP or POLLERR, as systemd does), and the store passed back to the
//! next broker as `LISTEN_FDS`/`LISTEN_FDNAMES`, with `LISTEN_PID` its pid.
//! Like systemd it reads notifications as they come (a thread): the
//! socket's queue holds only net.unix.max_dgram_qlen (10) datagrams, and a
//! manager that stopped reading would stall the broker's notifications.

use std::io::IoSliceMut;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use anyhow::{Context, Result};
use nix::errno::Errno;
use nix::fcntl::{FcntlArg, fcntl};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{
    AddressFamily, ControlMessageOwned, MsgFlags, SockFlag, SockType, UnixAddr, bind, recvmsg,
    socket,
};

/// The first fd a started service gets (SD_LISTEN_FDS_START).
const FIRST_FD: RawFd = 3;
/// Copies of the store are made at or above this, clear of 3.. in the
/// child.
const ABOVE: RawFd = 512;

pub struct ServiceManager {
    path: PathBuf,
    inbox: Arc<Inbox>,
    stop: Arc<AtomicBool>,
    reader: Option<JoinHandle<()>>,
}

/// The notify socket and the store its messages build.
struct Inbox {
    sock: OwnedFd,
    store: Mutex<Store>,
}

type Store = Vec<(String, OwnedFd)>;

impl ServiceManager {
    /// Listens on `dir/notify`.
    pub fn new(dir: &Path) -> Result<Self> {
        let path = dir.join("notify");
        let sock = socket(
            AddressFamily::Unix,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            None,
        )?;
        bind(sock.as_raw_fd(), &UnixAddr::new(&path)?)
            .with_context(|| format!("bind {}", path.display()))?;
        let inbox = Arc::new(Inbox {
            sock,
            store: Mutex::new(Vec::new()),
        });
        let stop = Arc::new(AtomicBool::new(false));
        let reader = {
            let (inbox, stop) = (inbox.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let mut fds = [PollFd::new(inbox.sock.as_fd(), PollFlags::POLLIN)];
                    if poll(&mut fds, PollTimeout::from(100u8)).is_ok_and(|n| n > 0) {
                        drop(inbox.drained());
                    }
                }
            })
        };
        Ok(Self {
            path,
            inbox,
            stop,
            reader: Some(reader),
        })
    }

    /// What the service gets as NOTIFY_SOCKET.
    pub fn notify_socket(&self) -> &Path {
        &self.path
    }

    /// The names in the store now: every waiting message applied, hung-up
    /// entries dropped.
    pub fn stored_names(&self) -> Result<Vec<String>> {
        let mut store = self.refreshed()?;
        store.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(store.iter().map(|(name, _)| name.clone()).collect())
    }

    /// `cmd` to run as systemd would start the service: the store on fds
    /// 3.., named, for the pid `cmd` execs as (through `sh`, which sets
    /// LISTEN_PID to its own pid and execs the program).
    pub fn start_command(&self, program: &Path) -> Result<Command> {
        let store = self.refreshed()?;
        let mut copies = Vec::with_capacity(store.len());
        for (_, fd) in store.iter() {
            let raw = fcntl(fd.as_fd(), FcntlArg::F_DUPFD_CLOEXEC(ABOVE))?;
            // SAFETY: F_DUPFD_CLOEXEC just returned this new fd; nothing
            // else owns it.
            copies.push(unsafe { OwnedFd::from_raw_fd(raw) });
        }
        let names: Vec<&str> = store.iter().map(|(name, _)| name.as_str()).collect();
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c")
            .arg("LISTEN_PID=$$ exec \"$0\" \"$@\"")
            .arg(program)
            .env("NOTIFY_SOCKET", &self.path);
        if !copies.is_empty() {
            cmd.env("LISTEN_FDS", copies.len().to_string())
                .env("LISTEN_FDNAMES", names.join(":"));
        }
        // SAFETY: between fork and exec the closure calls only dup2
        // (async-signal-safe) on fds it owns (the copies, all >= ABOVE, so
        // clear of the targets); they close when `cmd` is dropped.
        unsafe {
            cmd.pre_exec(move || {
                for (target, fd) in (FIRST_FD..).zip(copies.iter()) {
                    if libc::dup2(fd.as_raw_fd(), target) == -1 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        Ok(cmd)
    }

    fn refreshed(&self) -> Result<MutexGuard<'_, Store>> {
        let mut store = self.inbox.drained()?;
        store.retain(|(_, fd)| !hung_up(fd));
        Ok(store)
    }
}

impl Drop for ServiceManager {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

impl Inbox {
    /// The store with every waiting message applied.
    fn drained(&self) -> Result<MutexGuard<'_, Store>> {
        let mut store = self.store.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
        while let Some((text, fds)) = self.next_message()? {
            apply(&mut store, &text, fds);
        }
        Ok(store)
    }

    /// One waiting datagram: its text and the fds it carried.
    fn next_message(&self) -> Result<Option<(String, Vec<OwnedFd>)>> {
        let mut buf = [0u8; 4096];
        let mut iov = [IoSliceMut::new(&mut buf)];
        let mut space = nix::cmsg_space!([RawFd; 16]);
        let msg = match recvmsg::<()>(
            self.sock.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(msg) => msg,
            Err(Errno::EAGAIN) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let mut fds = Vec::new();
        for cmsg in msg.cmsgs()? {
            if let ControlMessageOwned::ScmRights(raws) = cmsg {
                // SAFETY: SCM_RIGHTS just installed these fds in this
                // process; nothing else owns them.
                fds.extend(raws.into_iter().map(|r| unsafe { OwnedFd::from_raw_fd(r) }));
            }
        }
        let len = msg.bytes;
        let text = String::from_utf8_lossy(buf.get(..len).unwrap_or(&[])).into_owned();
        Ok(Some((text, fds)))
    }
}

/// systemd's reading of one notification, for the fd store.
fn apply(store: &mut Store, text: &str, fds: Vec<OwnedFd>) {
    let field = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
    };
    let name = field("FDNAME").unwrap_or("stored").to_owned();
    if field("FDSTORE") == Some("1") {
        store.extend(fds.into_iter().map(|fd| (name.clone(), fd)));
    } else if field("FDSTOREREMOVE") == Some("1") {
        store.retain(|(n, _)| *n != name);
    }
}

fn hung_up(fd: &OwnedFd) -> bool {
    let mut fds = [PollFd::new(fd.as_fd(), PollFlags::empty())];
    poll(&mut fds, PollTimeout::ZERO).is_ok_and(|n| n > 0)
        && fds[0]
            .revents()
            .is_some_and(|r| r.intersects(PollFlags::POLLHUP | PollFlags::POLLERR))
}
