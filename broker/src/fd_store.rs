//! systemd's fd store (`FDSTORE=1`): what keeps a serving worker's log
//! pipe and health socket across a broker restart.
//!
//! Both lead to this broker only: the worker holds the other ends, and
//! nothing can reconnect to a pipe or a socket pair once the last reader
//! is gone. So under systemd the broker hands a copy of its two ends to
//! the service manager once a worker serves, each named after the mount
//! and the worker. systemd passes them back to the next broker
//! (`LISTEN_FDS`, `LISTEN_FDNAMES`), which reattaches them to the mounts
//! it adopts: the worker's log lines and health reports, also those sent
//! while no broker ran, reach it. systemd drops an entry by itself once
//! the worker has exited (its ends then poll POLLHUP); the broker removes
//! the ones no adopted mount takes. The unit allows the entries
//! (FileDescriptorStoreMax=). Without a service manager nothing is kept,
//! and an adopted worker's log and reports end with the old broker.

use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use nix::sys::socket::{SockType, getsockopt, sockopt};
use nix::sys::stat::{SFlag, fstat};

use crate::activation::{self, PassedFd};

/// Names of stored fds start with this; the listening socket's does not.
const PREFIX: &str = "worker-";

fn name(id: u64, pid: i32, channel: &str) -> String {
    format!("{PREFIX}{id}-{pid}-{channel}")
}

/// Whether `fd` is one the fd store kept (rather than the socket).
pub fn is_stored(fd: &PassedFd) -> bool {
    fd.name.starts_with(PREFIX)
}

/// Hands the broker's ends of worker `pid`'s channels (mount `id`) to the
/// service manager, if there is one. A failure costs only the channels
/// after a restart, so it is logged, not returned.
pub fn keep(id: u64, pid: i32, log: BorrowedFd<'_>, health: BorrowedFd<'_>) {
    for (channel, fd) in [("log", log), ("health", health)] {
        let state = format!("FDSTORE=1\nFDNAME={}", name(id, pid, channel));
        if let Err(e) = activation::notify_with_fds(&state, &[fd]) {
            // One without the other is of no use, and a second try would
            // wait as long again.
            tracing::warn!(id, pid, error = %e, "cannot keep the worker's {channel} channel in systemd's fd store");
            return;
        }
    }
}

/// A worker's log pipe (read end) and health socket, as systemd kept them.
#[derive(Debug)]
pub struct Channels {
    pub log: OwnedFd,
    pub health: OwnedFd,
}

/// What systemd passed back from the store, until adopted.
#[derive(Debug, Default)]
pub struct Stored {
    fds: HashMap<String, OwnedFd>,
}

impl Stored {
    pub fn new(passed: Vec<PassedFd>) -> Self {
        Self {
            fds: passed.into_iter().map(|p| (p.name, p.fd)).collect(),
        }
    }

    /// Takes the channels kept for worker `pid` of mount `id`, when both
    /// came back and each is what it should be (a pipe, a seqpacket
    /// socket).
    pub fn take(&mut self, id: u64, pid: i32) -> Option<Channels> {
        let log = self.fds.remove(&name(id, pid, "log"));
        let health = self.fds.remove(&name(id, pid, "health"));
        let (log, health) = (log?, health?);
        let log_ok = fstat(log.as_fd()).is_ok_and(|st| {
            SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFIFO
        });
        let health_ok = getsockopt(&health, sockopt::SockType) == Ok(SockType::SeqPacket);
        if !(log_ok && health_ok) {
            tracing::warn!(
                id,
                pid,
                "systemd's fd store passed back something else than the worker's channels; ignored"
            );
            return None;
        }
        Some(Channels { log, health })
    }

    /// Closes what no adopted mount took, and has systemd drop it too.
    pub fn forget_rest(self) {
        for name in self.fds.into_keys() {
            activation::notify_logged(&format!("FDSTOREREMOVE=1\nFDNAME={name}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn passed(name: &str, fd: OwnedFd) -> PassedFd {
        PassedFd {
            name: name.to_owned(),
            fd,
        }
    }

    #[test]
    fn channels_are_taken_by_mount_and_worker_and_checked() {
        use nix::sys::socket::{AddressFamily, SockFlag, socketpair};
        let pair = || {
            socketpair(
                AddressFamily::Unix,
                SockType::SeqPacket,
                None,
                SockFlag::SOCK_CLOEXEC,
            )
            .unwrap()
            .0
        };
        let pipe = || nix::unistd::pipe().unwrap().0;
        let mut stored = Stored::new(vec![
            passed("worker-7-100-log", pipe()),
            passed("worker-7-100-health", pair()),
            // Swapped: neither is taken.
            passed("worker-8-200-log", pair()),
            passed("worker-8-200-health", pipe()),
            // Half a pair.
            passed("worker-9-300-log", pipe()),
        ]);
        assert!(stored.take(7, 101).is_none(), "another worker's pid");
        assert!(stored.take(7, 100).is_some());
        assert!(stored.take(7, 100).is_none(), "taken once");
        assert!(stored.take(8, 200).is_none());
        assert!(stored.take(9, 300).is_none());
        assert!(stored.fds.is_empty());
        assert!(is_stored(&passed("worker-1-2-log", pipe())));
        assert!(!is_stored(&passed("safemountd.socket", pipe())));
    }
}
