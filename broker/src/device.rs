//! The mount source: a block device the broker opens, or an fd the client
//! opened itself. Either way the result is validated with fstat before a
//! worker sees it. The broker never opens a user-named image path with
//! root's rights; image locking is a later issue.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, fcntl, open};
use nix::sys::stat::{Mode, SFlag, fstat};
use safemount_proto::ErrorKind;

use crate::sanitize;

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("cannot resolve {path}: {error}")]
    Resolve { path: String, error: std::io::Error },
    #[error("{0} is not under /dev")]
    NotUnderDev(String),
    #[error("{0} is not a block device")]
    NotBlockDevice(String),
    #[error("{0} is in use (mounted, or opened exclusively by another program)")]
    Busy(String),
    #[error("cannot open {path}: {errno}")]
    Open { path: String, errno: Errno },
    #[error("cannot inspect {name}: {errno}")]
    Stat { name: String, errno: Errno },
    #[error("{0} is neither a regular file nor a block device")]
    BadFdType(String),
    #[error("{0} was opened without read access")]
    NotReadable(String),
    #[error("{0} was opened read-only but a read-write mount was asked for")]
    NotWritable(String),
}

impl DeviceError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Resolve { error, .. } if error.kind() == std::io::ErrorKind::NotFound => {
                ErrorKind::NotFound
            }
            Self::Busy(_) => ErrorKind::Busy,
            Self::Open { errno, .. } if *errno == Errno::ENOENT => ErrorKind::NotFound,
            Self::Open { .. } | Self::Stat { .. } => ErrorKind::Internal,
            _ => ErrorKind::InvalidRequest,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    BlockDevice,
    RegularFile,
}

/// A validated source, ready to hand to a worker.
#[derive(Debug)]
pub struct Source {
    pub fd: OwnedFd,
    /// Sanitized name for logs, `list` and mount(2)'s source argument.
    pub name: String,
    /// True if the source can only be mounted read-only (asked, or the
    /// device is write-protected).
    pub read_only: bool,
    pub kind: SourceKind,
}

nix::ioctl_read_bad!(
    /// BLKROGET: is the block device read-only?
    blkroget,
    0x125e,
    libc::c_int
);

/// Whether the block device behind `fd` is read-only (BLKROGET).
fn device_is_read_only(fd: BorrowedFd<'_>) -> Result<bool, Errno> {
    let mut ro: libc::c_int = 0;
    // SAFETY: BLKROGET writes one int through the pointer, which points to
    // a live local of that type.
    unsafe { blkroget(fd.as_raw_fd(), &mut ro) }?;
    Ok(ro != 0)
}

/// Opens the block device at `path` (resolved first: device paths are
/// often symlinks such as /dev/disk/by-label/X) with O_EXCL, read-only if
/// `read_only` or if the device is write-protected.
pub fn open_device(path: &Path, read_only: bool) -> Result<Source, DeviceError> {
    let shown = |p: &Path| sanitize::display(p.as_os_str().as_encoded_bytes());
    let real: PathBuf = path.canonicalize().map_err(|error| DeviceError::Resolve {
        path: shown(path),
        error,
    })?;
    if !real.starts_with("/dev/") {
        return Err(DeviceError::NotUnderDev(shown(&real)));
    }
    let name = shown(&real);
    // Check the type before opening: opening some character devices has
    // side effects (a watchdog starts ticking, a tape rewinds).
    let st = nix::sys::stat::lstat(&real).map_err(|errno| DeviceError::Stat {
        name: name.clone(),
        errno,
    })?;
    if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFBLK {
        return Err(DeviceError::NotBlockDevice(name));
    }
    let open_with = |access: OFlag| {
        open(
            &real,
            access | OFlag::O_EXCL | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
            Mode::empty(),
        )
    };
    let map_open = |errno: Errno| match errno {
        Errno::EBUSY => DeviceError::Busy(name.clone()),
        errno => DeviceError::Open {
            path: name.clone(),
            errno,
        },
    };
    let (fd, mut ro) = if read_only {
        (open_with(OFlag::O_RDONLY).map_err(map_open)?, true)
    } else {
        match open_with(OFlag::O_RDWR) {
            Ok(fd) => (fd, false),
            // A write-protected device refuses O_RDWR; mount it read-only.
            Err(Errno::EACCES | Errno::EROFS) => {
                (open_with(OFlag::O_RDONLY).map_err(map_open)?, true)
            }
            Err(e) => return Err(map_open(e)),
        }
    };
    let st = fstat(&fd).map_err(|errno| DeviceError::Stat {
        name: name.clone(),
        errno,
    })?;
    if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFBLK {
        return Err(DeviceError::NotBlockDevice(name));
    }
    if !ro {
        ro = device_is_read_only(fd.as_fd()).map_err(|errno| DeviceError::Stat {
            name: name.clone(),
            errno,
        })?;
    }
    if ro && !read_only {
        tracing::warn!(device = %name, "device is write-protected, mounting read-only");
    }
    Ok(Source {
        fd,
        name,
        read_only: ro,
        kind: SourceKind::BlockDevice,
    })
}

/// Validates an fd the client opened and passed: a regular file or block
/// device, opened with the access the mount needs.
pub fn accept_fd(fd: OwnedFd, display_name: &str, read_only: bool) -> Result<Source, DeviceError> {
    let name = sanitize::display(display_name.as_bytes());
    let name = if name.is_empty() {
        "image".to_owned()
    } else {
        name
    };
    let st = fstat(&fd).map_err(|errno| DeviceError::Stat {
        name: name.clone(),
        errno,
    })?;
    let kind = match SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT {
        SFlag::S_IFREG => SourceKind::RegularFile,
        SFlag::S_IFBLK => SourceKind::BlockDevice,
        _ => return Err(DeviceError::BadFdType(name)),
    };
    let flags = fcntl(&fd, FcntlArg::F_GETFL).map_err(|errno| DeviceError::Stat {
        name: name.clone(),
        errno,
    })?;
    let flags = OFlag::from_bits_retain(flags);
    if flags.contains(OFlag::O_PATH) {
        return Err(DeviceError::NotReadable(name));
    }
    let access = flags & OFlag::O_ACCMODE;
    if access == OFlag::O_WRONLY {
        return Err(DeviceError::NotReadable(name));
    }
    if !read_only && access != OFlag::O_RDWR {
        return Err(DeviceError::NotWritable(name));
    }
    let mut ro = read_only;
    if kind == SourceKind::BlockDevice && !ro {
        ro = device_is_read_only(fd.as_fd()).map_err(|errno| DeviceError::Stat {
            name: name.clone(),
            errno,
        })?;
        if ro {
            tracing::warn!(device = %name, "device is write-protected, mounting read-only");
        }
    }
    Ok(Source {
        fd,
        name,
        read_only: ro,
        kind,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::OwnedFd;

    fn temp_file(tag: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("safemount-dev-{tag}-{}", std::process::id()));
        std::fs::write(&p, vec![0u8; 4096]).unwrap();
        p
    }

    fn open_as(p: &Path, flags: OFlag) -> OwnedFd {
        open(p, flags | OFlag::O_CLOEXEC, Mode::empty()).unwrap()
    }

    #[test]
    fn fd_access_modes() {
        let p = temp_file("modes");
        let ro = accept_fd(open_as(&p, OFlag::O_RDONLY), "a.img", true).unwrap();
        assert!(ro.read_only);
        assert_eq!(ro.kind, SourceKind::RegularFile);
        assert!(matches!(
            accept_fd(open_as(&p, OFlag::O_RDONLY), "a.img", false),
            Err(DeviceError::NotWritable(_))
        ));
        assert!(matches!(
            accept_fd(open_as(&p, OFlag::O_WRONLY), "a.img", true),
            Err(DeviceError::NotReadable(_))
        ));
        assert!(matches!(
            accept_fd(open_as(&p, OFlag::O_PATH), "a.img", true),
            Err(DeviceError::NotReadable(_))
        ));
        let rw = accept_fd(open_as(&p, OFlag::O_RDWR), "a\nb.img", false).unwrap();
        assert!(!rw.read_only);
        assert_eq!(rw.name, "ab.img");
        std::fs::remove_file(&p).unwrap();
    }

    #[test]
    fn fd_must_be_file_or_block_device() {
        let dir = open_as(&std::env::temp_dir(), OFlag::O_RDONLY | OFlag::O_DIRECTORY);
        assert!(matches!(
            accept_fd(dir, "d", true),
            Err(DeviceError::BadFdType(_))
        ));
        let (a, _b) = nix::unistd::pipe().unwrap();
        assert!(matches!(
            accept_fd(a, "p", true),
            Err(DeviceError::BadFdType(_))
        ));
    }

    #[test]
    fn device_path_checks() {
        let p = temp_file("notdev");
        assert!(matches!(
            open_device(&p, true),
            Err(DeviceError::NotUnderDev(_))
        ));
        std::fs::remove_file(&p).unwrap();
        assert!(matches!(
            open_device(Path::new("/dev/null"), true),
            Err(DeviceError::NotBlockDevice(_))
        ));
        let e = open_device(Path::new("/dev/safemount-nonexistent"), true).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound);
    }
}
