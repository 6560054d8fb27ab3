//! Who is calling, and may they do what they ask.
//!
//! The caller's identity comes only from SO_PEERCRED, never from a message.
//! In this issue only root may mount; polkit is a later issue.

use std::os::fd::AsFd;

use nix::errno::Errno;
use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
use safemount_proto::ErrorKind;

/// The peer of a connection, as the kernel recorded it at connect().
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    pub pid: i32,
}

impl Caller {
    pub fn is_root(&self) -> bool {
        self.uid == 0
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("not authorized: only root may mount (polkit support is not configured)")]
    MountNotRoot,
    #[error("not authorized: {0} was mounted by another user")]
    NotOwner(String),
}

impl AuthError {
    pub fn kind(&self) -> ErrorKind {
        ErrorKind::NotAuthorized
    }
}

/// Reads SO_PEERCRED from a connected socket.
pub fn peer(sock: &impl AsFd) -> Result<Caller, Errno> {
    let cred = getsockopt(sock, PeerCredentials)?;
    Ok(Caller {
        uid: cred.uid(),
        gid: cred.gid(),
        pid: cred.pid(),
    })
}

pub fn authorize_mount(caller: &Caller) -> Result<(), AuthError> {
    if caller.is_root() {
        Ok(())
    } else {
        Err(AuthError::MountNotRoot)
    }
}

/// The one who mounted may unmount; root may unmount anything.
pub fn authorize_unmount(caller: &Caller, owner_uid: u32, what: &str) -> Result<(), AuthError> {
    if caller.is_root() || caller.uid == owner_uid {
        Ok(())
    } else {
        Err(AuthError::NotOwner(what.to_owned()))
    }
}

/// Root sees every mount in `list`; others see their own.
pub fn may_see(caller: &Caller, owner_uid: u32) -> bool {
    caller.is_root() || caller.uid == owner_uid
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROOT: Caller = Caller {
        uid: 0,
        gid: 0,
        pid: 1,
    };
    const USER: Caller = Caller {
        uid: 1000,
        gid: 1000,
        pid: 2,
    };

    #[test]
    fn only_root_mounts() {
        assert_eq!(authorize_mount(&ROOT), Ok(()));
        let e = authorize_mount(&USER).unwrap_err();
        assert_eq!(
            e.to_string(),
            "not authorized: only root may mount (polkit support is not configured)"
        );
        assert_eq!(e.kind(), ErrorKind::NotAuthorized);
    }

    #[test]
    fn unmount_owner_or_root() {
        assert!(authorize_unmount(&ROOT, 1000, "/m").is_ok());
        assert!(authorize_unmount(&USER, 1000, "/m").is_ok());
        assert!(authorize_unmount(&USER, 1001, "/m").is_err());
        assert!(may_see(&USER, 1000) && !may_see(&USER, 0) && may_see(&ROOT, 5));
    }

    #[test]
    fn peer_credentials_of_socketpair() {
        use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
        let (a, _b) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .unwrap();
        let c = peer(&a).unwrap();
        assert_eq!(c.uid, nix::unistd::getuid().as_raw());
        assert_eq!(c.pid, std::process::id() as i32);
    }
}
