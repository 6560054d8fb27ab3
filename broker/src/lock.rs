//! Image locking, like QEMU's `locking=auto|on|off|posix`.
//!
//! QEMU expresses fine-grained permissions as locks on single bytes; the
//! simplest faithful version, used here, locks the whole file:
//!
//! - a read-write mount takes an exclusive (write) lock, a read-only mount
//!   a shared (read) lock. Two read-only mounts of one image coexist; a
//!   read-write mount conflicts with any other mount or lock holder, and
//!   with another program holding any fcntl lock on the file;
//! - `auto` (the default): open file description (OFD) locks, falling back
//!   to POSIX locks with a warning where the kernel has no OFD locks;
//!   `on`: OFD locks or refuse; `posix`: POSIX locks; `off`: no locking at
//!   all (the caller takes responsibility).
//!
//! Lifetime. An OFD lock belongs to the open file description, which the
//! worker shares (it got a copy of the same fd): the lock lives until the
//! last fd is closed, i.e. until the worker exits, whatever the broker
//! does with its own copy. A POSIX lock belongs to the broker process: it
//! is released when the broker closes *any* fd to that file. So in posix
//! mode the [`ImageLock`] keeps its own fd open for the life of the mount,
//! and re-takes the lock each time the broker closes another fd to the
//! same file ([`ImageLock::after_close`]); between the close and the
//! re-lock another process could briefly take a lock. That, and POSIX
//! locks never conflicting within one process, is why OFD is preferred.
//!
//! POSIX and OFD locks never conflict within the broker itself (the same
//! open file description passed twice, or POSIX locks of one process), so
//! the broker also keeps a registry of the images it has locked, keyed by
//! (st_dev, st_ino), with the same shared/exclusive rule.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Mutex;

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, fcntl};
use safemount_proto::ErrorKind;

/// `locking=` as given in the mount options.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Locking {
    /// OFD locks, POSIX locks (with a warning) where OFD is unsupported.
    #[default]
    Auto,
    /// OFD locks, refuse the mount if unsupported.
    On,
    /// No locking.
    Off,
    /// POSIX (per-process) locks.
    Posix,
}

impl Locking {
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "auto" => Some(Self::Auto),
            "on" => Some(Self::On),
            "off" => Some(Self::Off),
            "posix" => Some(Self::Posix),
            _ => None,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LockError {
    #[error("{0}: image is in use by another process")]
    InUse(String),
    #[error("{0}: image is in use by another process (another safemount mount)")]
    InUseByBroker(String),
    #[error("{0}: OFD locks are not supported here (locking=on); try locking=posix or locking=off")]
    OfdUnsupported(String),
    #[error("cannot lock {name}: {errno}")]
    Lock { name: String, errno: Errno },
}

impl LockError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::InUse(_) | Self::InUseByBroker(_) => ErrorKind::Busy,
            Self::OfdUnsupported(_) => ErrorKind::InvalidRequest,
            Self::Lock { .. } => ErrorKind::Internal,
        }
    }
}

/// Which kind of lock was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Held {
    Ofd,
    Posix,
    /// `locking=off`.
    Nothing,
}

#[derive(Debug)]
struct Registered {
    key: (u64, u64),
    shared: bool,
    token: u64,
    /// posix mode: the broker's own fd, kept open so the lock lives.
    posix_fd: Option<OwnedFd>,
}

#[derive(Debug)]
struct Registry {
    entries: Vec<Registered>,
    next_token: u64,
}

impl Registry {
    /// Re-takes the POSIX locks of every holder of `key` (closing any fd
    /// to a file drops all of this process's POSIX locks on it).
    fn relock_posix(&self, key: (u64, u64)) {
        for e in self.entries.iter().filter(|e| e.key == key) {
            if let Some(fd) = &e.posix_fd
                && let Err(errno) = set_lock(fd.as_fd(), e.shared, false)
            {
                tracing::warn!(%errno, "cannot re-take POSIX image lock");
            }
        }
    }
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    entries: Vec::new(),
    next_token: 0,
});

fn registry() -> std::sync::MutexGuard<'static, Registry> {
    REGISTRY.lock().unwrap_or_else(|p| p.into_inner())
}

/// A held image lock; dropping it releases the broker's share (the
/// registry entry, and in posix mode the broker's fd and so the lock).
#[derive(Debug)]
pub struct ImageLock {
    held: Held,
    /// Registry entry and file, unless `locking=off`.
    token: Option<(u64, (u64, u64))>,
}

impl ImageLock {
    pub fn held(&self) -> Held {
        self.held
    }

    /// posix mode: the broker just closed another fd to the locked file,
    /// which dropped its POSIX locks on it; take them again.
    pub fn after_close(&self) {
        if let (Held::Posix, Some((_, key))) = (self.held, self.token) {
            registry().relock_posix(key);
        }
    }
}

impl Drop for ImageLock {
    fn drop(&mut self) {
        if let Some((token, key)) = self.token {
            let mut reg = registry();
            let before = reg.entries.len();
            // Dropping the entry closes its posix fd (if any).
            reg.entries.retain(|e| e.token != token);
            if reg.entries.len() != before && self.held == Held::Posix {
                reg.relock_posix(key);
            }
        }
    }
}

/// Whole-file lock: shared (read) or exclusive (write); OFD or POSIX.
fn set_lock(fd: BorrowedFd<'_>, shared: bool, ofd: bool) -> Result<(), Errno> {
    let l_type = if shared { libc::F_RDLCK } else { libc::F_WRLCK };
    let flock = libc::flock {
        l_type: l_type as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: 0,
        l_len: 0,
        // Must be 0 for OFD locks.
        l_pid: 0,
    };
    let arg = if ofd {
        FcntlArg::F_OFD_SETLK(&flock)
    } else {
        FcntlArg::F_SETLK(&flock)
    };
    fcntl(fd, arg).map(drop)
}

/// The file behind `fd` as the lock registry knows it: (st_dev, st_ino).
pub fn image_key(fd: BorrowedFd<'_>) -> Result<(u64, u64), Errno> {
    let st = nix::sys::stat::fstat(fd)?;
    #[allow(
        clippy::useless_conversion,
        reason = "st_dev/st_ino widths differ between targets"
    )]
    Ok((u64::from(st.st_dev), u64::from(st.st_ino)))
}

/// Locks the image behind `fd` for a mount (`shared` for read-only).
/// Takes the fd: a refused fd is closed here, and the POSIX locks of the
/// broker's own holders of the same file (which that close drops) are
/// re-taken at once. On success the fd comes back; the broker must call
/// [`ImageLock::after_close`] after closing it in posix mode.
pub fn lock_image(
    fd: OwnedFd,
    name: &str,
    shared: bool,
    mode: Locking,
) -> Result<(OwnedFd, ImageLock), LockError> {
    if mode == Locking::Off {
        tracing::info!(image = name, "image locking is off");
        return Ok((
            fd,
            ImageLock {
                held: Held::Nothing,
                token: None,
            },
        ));
    }
    let key = image_key(fd.as_fd()).map_err(|errno| LockError::Lock {
        name: name.to_owned(),
        errno,
    })?;
    // Registry first, and under its lock throughout, so two requests
    // cannot both pass.
    let mut reg = registry();
    let fail = |reg: std::sync::MutexGuard<'_, Registry>, fd: OwnedFd, e: LockError| {
        drop(fd);
        reg.relock_posix(key);
        Err(e)
    };
    if reg
        .entries
        .iter()
        .any(|e| e.key == key && !(e.shared && shared))
    {
        return fail(reg, fd, LockError::InUseByBroker(name.to_owned()));
    }
    let lock_error = |errno| match errno {
        Errno::EAGAIN | Errno::EACCES => LockError::InUse(name.to_owned()),
        errno => LockError::Lock {
            name: name.to_owned(),
            errno,
        },
    };
    let held = match mode {
        Locking::Posix => Held::Posix,
        _ => match set_lock(fd.as_fd(), shared, true) {
            Ok(()) => Held::Ofd,
            Err(Errno::EINVAL) if mode == Locking::Auto => {
                tracing::warn!(
                    image = name,
                    "OFD locks unsupported; falling back to POSIX locks held by the broker"
                );
                Held::Posix
            }
            Err(Errno::EINVAL) => {
                return fail(reg, fd, LockError::OfdUnsupported(name.to_owned()));
            }
            Err(errno) => return fail(reg, fd, lock_error(errno)),
        },
    };
    let posix_fd = if held == Held::Posix {
        if let Err(errno) = set_lock(fd.as_fd(), shared, false) {
            return fail(reg, fd, lock_error(errno));
        }
        match fd.try_clone() {
            Ok(kept) => Some(kept),
            Err(e) => {
                let errno = e.raw_os_error().map_or(Errno::EIO, Errno::from_raw);
                return fail(reg, fd, lock_error(errno));
            }
        }
    } else {
        None
    };
    reg.next_token = reg.next_token.wrapping_add(1);
    let token = reg.next_token;
    reg.entries.push(Registered {
        key,
        shared,
        token,
        posix_fd,
    });
    Ok((
        fd,
        ImageLock {
            held,
            token: Some((token, key)),
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn image(tag: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("safemount-lock-{tag}-{}", std::process::id()));
        std::fs::write(&p, vec![0u8; 4096]).unwrap();
        p
    }

    fn open_rw(p: &PathBuf) -> OwnedFd {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(p)
            .unwrap()
            .into()
    }

    #[test]
    fn parse_modes() {
        assert_eq!(Locking::parse("auto"), Some(Locking::Auto));
        assert_eq!(Locking::parse("on"), Some(Locking::On));
        assert_eq!(Locking::parse("off"), Some(Locking::Off));
        assert_eq!(Locking::parse("posix"), Some(Locking::Posix));
        assert_eq!(Locking::parse("yes"), None);
        assert_eq!(Locking::default(), Locking::Auto);
    }

    #[test]
    fn readers_share_writers_exclude() {
        let p = image("share");
        let (_a, la) = lock_image(open_rw(&p), "i", true, Locking::Auto).unwrap();
        assert_eq!(la.held(), Held::Ofd);
        let (_b, lb) = lock_image(open_rw(&p), "i", true, Locking::On).unwrap();
        let e = lock_image(open_rw(&p), "i", false, Locking::Auto).unwrap_err();
        assert_eq!(e, LockError::InUseByBroker("i".into()));
        assert!(e.to_string().contains("in use by another process"));
        assert_eq!(e.kind(), ErrorKind::Busy);
        drop((la, lb));
        drop((_a, _b));
        let (_c, lc) = lock_image(open_rw(&p), "i", false, Locking::Auto).unwrap();
        assert!(lock_image(open_rw(&p), "i", true, Locking::Auto).is_err());
        drop(lc);
        std::fs::remove_file(&p).unwrap();
    }

    #[test]
    fn foreign_lock_conflicts_and_off_ignores_it() {
        let p = image("foreign");
        // Another open file description holding an OFD write lock: as
        // foreign as another process.
        let other = open_rw(&p);
        set_lock(other.as_fd(), false, true).unwrap();
        for mode in [Locking::Auto, Locking::On, Locking::Posix] {
            let e = lock_image(open_rw(&p), "x.img", true, mode).unwrap_err();
            assert_eq!(e, LockError::InUse("x.img".into()), "{mode:?}");
            assert_eq!(e.to_string(), "x.img: image is in use by another process");
        }
        let (_fd, l) = lock_image(open_rw(&p), "x.img", false, Locking::Off).unwrap();
        assert_eq!(l.held(), Held::Nothing);
        drop(other);
        std::fs::remove_file(&p).unwrap();
    }

    #[test]
    fn posix_lock_survives_closing_other_fds() {
        let p = image("posix");
        let (fd, l) = lock_image(open_rw(&p), "p", false, Locking::Posix).unwrap();
        assert_eq!(l.held(), Held::Posix);
        // A refused second request closes its fd, which drops every POSIX
        // lock of this process on the file; the lock must come back.
        assert!(lock_image(open_rw(&p), "p", false, Locking::Posix).is_err());
        drop(fd);
        l.after_close();
        let probe = open_rw(&p);
        assert_eq!(set_lock(probe.as_fd(), true, true), Err(Errno::EAGAIN));
        drop(l);
        set_lock(probe.as_fd(), false, true).unwrap();
        std::fs::remove_file(&p).unwrap();
    }
}
