//! Who is calling, and may they do what they ask.
//!
//! The caller's identity comes only from SO_PEERCRED, never from a message.
//! Root may do anything without asking. Everyone else is asked about at
//! polkitd ([`crate::polkit`]): `org.safemount.mount` for removable media,
//! `org.safemount.mount-system` for other block devices,
//! `org.safemount.mount-image` for an image the caller opened itself, and
//! `org.safemount.unmount-others` to unmount or list another user's mounts.
//! Without polkit only root may mount.

use std::os::fd::{AsFd, BorrowedFd};

use nix::errno::Errno;
use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
use nix::sys::stat::SFlag;
use safemount_proto::{ErrorKind, MountSource};

use crate::device::SysPaths;
use crate::polkit::{Action, Decision, Polkit};

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
    #[error("not authorized: polkit is not available")]
    PolkitUnavailable,
    #[error("not authorized: polkit denied {action} for uid {uid}")]
    Denied { action: &'static str, uid: u32 },
    #[error("not authorized: {0} was mounted by another user")]
    NotOwner(String),
    #[error("{0} changed while the caller was being authorized")]
    DeviceChanged(String),
}

impl AuthError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::DeviceChanged(_) => ErrorKind::Busy,
            _ => ErrorKind::NotAuthorized,
        }
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

/// Field 22 of /proc/PID/stat: the process's start time in clock ticks
/// since boot. Together with the pid it names one process: a recycled pid
/// has another start time. The command name (field 2) may hold spaces and
/// parentheses, so fields are counted after its last ')'.
pub fn process_start_time(pid: i32) -> std::io::Result<u64> {
    let stat = std::fs::read(format!("/proc/{pid}/stat"))?;
    parse_start_time(&stat).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("cannot parse /proc/{pid}/stat"),
        )
    })
}

fn parse_start_time(stat: &[u8]) -> Option<u64> {
    let close = stat.iter().rposition(|&b| b == b')')?;
    let rest = std::str::from_utf8(stat.get(close + 1..)?).ok()?;
    // After ")" the first field is field 3 (state); field 22 is the 20th.
    rest.split_ascii_whitespace().nth(19)?.parse().ok()
}

/// Decides requests: root always, everyone else through polkit.
#[derive(Debug, Default)]
pub struct Authorizer {
    polkit: Polkit,
}

impl Authorizer {
    pub fn new(polkit: Polkit) -> Self {
        Self { polkit }
    }

    /// May `caller` do `action`? Root: yes, without asking. polkit may
    /// ask the user for a password (through their authentication agent).
    pub fn check(&self, caller: &Caller, action: Action) -> Result<(), AuthError> {
        self.decide(caller, action, true)
    }

    fn decide(&self, caller: &Caller, action: Action, interactive: bool) -> Result<(), AuthError> {
        if caller.is_root() {
            return Ok(());
        }
        match self.polkit.check(caller, action, interactive) {
            Decision::Allowed => {
                tracing::info!(uid = caller.uid, action = action.id(), "polkit allowed");
                Ok(())
            }
            Decision::Denied => Err(AuthError::Denied {
                action: action.id(),
                uid: caller.uid,
            }),
            Decision::Unavailable(why) => {
                tracing::warn!(uid = caller.uid, action = action.id(), reason = %why, "polkit is not available");
                Err(AuthError::PolkitUnavailable)
            }
        }
    }

    /// The one who mounted may unmount; root and those polkit allows
    /// `org.safemount.unmount-others` may unmount anything. Asks polkit
    /// only when the caller is neither.
    pub fn unmount(&self, caller: &Caller, owner_uid: u32, what: &str) -> Result<(), AuthError> {
        if caller.is_root() || caller.uid == owner_uid {
            return Ok(());
        }
        match self.check(caller, Action::UnmountOthers) {
            Ok(()) => Ok(()),
            Err(AuthError::Denied { .. } | AuthError::PolkitUnavailable) => {
                Err(AuthError::NotOwner(what.to_owned()))
            }
            Err(e) => Err(e),
        }
    }

    /// Whether `list` shows `caller` every user's mounts (root, or polkit
    /// allows `org.safemount.unmount-others` without asking for a
    /// password: a listing never prompts) or only their own.
    pub fn sees_all(&self, caller: &Caller) -> bool {
        self.decide(caller, Action::UnmountOthers, false).is_ok()
    }
}

/// A block device's major:minor, as the authorization classified it; the
/// device the broker then opens must be the same one.
pub type Rdev = u64;

/// Which polkit action mounting `source` needs, and for a block device its
/// device number (to compare with what is actually opened). `image_fd` is
/// the fd an [`MountSource::Fd`] request carries.
pub fn mount_action(
    source: &MountSource,
    image_fd: Option<BorrowedFd<'_>>,
) -> (Action, Option<Rdev>) {
    let st = match (source, image_fd) {
        (MountSource::Device(path), _) => nix::sys::stat::stat(path.as_path()).ok(),
        (MountSource::Fd { .. }, Some(fd)) => nix::sys::stat::fstat(fd).ok(),
        (MountSource::Fd { .. }, None) => None,
    };
    let Some(st) = st else {
        // Unreadable: the open that follows fails with the real error; ask
        // for the strictest action meanwhile.
        return (Action::MountSystem, None);
    };
    let fmt = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT;
    if fmt == SFlag::S_IFBLK {
        let rdev = st.st_rdev;
        let (major, minor) = crate::device::split_dev(rdev);
        let removable = crate::device::DeviceInfo::lookup(&SysPaths::default(), major, minor)
            .is_some_and(|dev| crate::device::is_removable(&dev));
        let action = if removable {
            Action::Mount
        } else {
            Action::MountSystem
        };
        (action, Some(rdev))
    } else if matches!(source, MountSource::Fd { .. }) {
        (Action::MountImage, None)
    } else {
        // A device path that is not a block device is refused when opened.
        (Action::MountSystem, None)
    }
}

/// Checks that the block device the broker opened is the one the caller
/// was authorized for (a symlink may have been swapped in between).
pub fn same_device(
    fd: BorrowedFd<'_>,
    authorized: Option<Rdev>,
    name: &str,
) -> Result<(), AuthError> {
    let Some(rdev) = authorized else {
        return Ok(());
    };
    match nix::sys::stat::fstat(fd) {
        Ok(st)
            if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFBLK
                && st.st_rdev == rdev =>
        {
            Ok(())
        }
        _ => Err(AuthError::DeviceChanged(name.to_owned())),
    }
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

    fn no_polkit() -> Authorizer {
        Authorizer::new(Polkit::with_address(
            "unix:path=/nonexistent/safemount-test-bus",
            std::time::Duration::from_secs(5),
        ))
    }

    #[test]
    fn root_always_others_need_polkit() {
        let a = no_polkit();
        assert_eq!(a.check(&ROOT, Action::MountSystem), Ok(()));
        // Our pid claimed by uid 1000 (not our uid): the pid does not name
        // that caller's process, so it is denied before polkit is asked.
        // (polkit.rs tests the unavailable case with a consistent caller.)
        let me = Caller {
            pid: std::process::id() as i32,
            uid: nix::unistd::getuid().as_raw().wrapping_add(1000),
            ..USER
        };
        let e = a.check(&me, Action::Mount).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "not authorized: polkit denied org.safemount.mount for uid {}",
                me.uid
            )
        );
        assert_eq!(e.kind(), ErrorKind::NotAuthorized);
        assert_eq!(
            AuthError::PolkitUnavailable.to_string(),
            "not authorized: polkit is not available"
        );
    }

    #[test]
    fn unmount_owner_or_root() {
        let a = no_polkit();
        assert!(a.unmount(&ROOT, 1000, "/m").is_ok());
        assert!(a.unmount(&USER, 1000, "/m").is_ok());
        let e = a.unmount(&USER, 1001, "/m").unwrap_err();
        assert_eq!(
            e.to_string(),
            "not authorized: /m was mounted by another user"
        );
        assert!(a.sees_all(&ROOT));
        assert!(!a.sees_all(&USER));
    }

    #[test]
    fn stat_start_time() {
        let line =
            b"1234 (a) b) c) S 1 1234 1234 0 -1 4194560 100 0 0 0 5 3 0 0 20 0 1 0 987654 1000 100";
        assert_eq!(parse_start_time(line), Some(987654));
        assert_eq!(parse_start_time(b"1 (x) S 1"), None);
        assert_eq!(parse_start_time(b"no paren"), None);
        let own = process_start_time(std::process::id() as i32).unwrap();
        assert!(own > 0);
        assert!(process_start_time(-1).is_err());
    }

    #[test]
    fn actions_for_sources() {
        let img = std::env::temp_dir().join(format!("sm-auth-{}", std::process::id()));
        std::fs::write(&img, b"x").unwrap();
        let f = std::fs::File::open(&img).unwrap();
        let src = MountSource::Fd {
            display_name: "x".into(),
        };
        assert_eq!(
            mount_action(&src, Some(f.as_fd())),
            (Action::MountImage, None)
        );
        // A path to a regular file is no device: strictest action.
        assert_eq!(
            mount_action(&MountSource::Device(img.clone()), None),
            (Action::MountSystem, None)
        );
        std::fs::remove_file(&img).unwrap();
        assert!(same_device(f.as_fd(), None, "x").is_ok());
        assert!(matches!(
            same_device(f.as_fd(), Some(7), "x"),
            Err(AuthError::DeviceChanged(_))
        ));
        // A loop device (if any) is not removable.
        if let Ok(st) = nix::sys::stat::stat("/dev/loop0")
            && SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFBLK
        {
            let (action, rdev) = mount_action(&MountSource::Device("/dev/loop0".into()), None);
            assert_eq!((action, rdev), (Action::MountSystem, Some(st.st_rdev)));
        }
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
