//! The mount source: a block device the broker opens, or an fd the client
//! opened itself. Either way the result is validated with fstat before a
//! worker sees it. The broker never opens a user-named image path with
//! root's rights; images are locked by [`crate::lock`].
//!
//! Device policy (block devices): a device is refused while it, or (for a
//! whole disk) one of its partitions, is mounted (any entry in
//! /proc/self/mountinfo with its device number) or held (a device-mapper,
//! md or other holder in sysfs, or another program's O_EXCL open), and the
//! disk holding `/` is refused with all its partitions (through
//! device-mapper slaves and loop backing files). Removable media are told
//! apart with sysfs's `removable` and udev's `ID_BUS=usb`, for the choice
//! of polkit action.

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
    #[error("{0}: device is in use (opened exclusively by another program)")]
    Busy(String),
    #[error("{device}: device is in use: {what} is mounted at {mountpoint}")]
    Mounted {
        device: String,
        what: String,
        mountpoint: String,
    },
    #[error("{device}: device is in use: {what} is held by {holder}")]
    Held {
        device: String,
        what: String,
        holder: String,
    },
    #[error("{0} holds the root filesystem; refusing to mount it or its partitions")]
    RootDisk(String),
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
            Self::Busy(_) | Self::Mounted { .. } | Self::Held { .. } | Self::RootDisk(_) => {
                ErrorKind::Busy
            }
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
    /// For a block device: where it sits in sysfs (for [`is_removable`]).
    pub device: Option<DeviceInfo>,
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

/// Where the kernel and udev describe block devices; tests point these
/// at a fake tree.
#[derive(Debug, Clone)]
pub struct SysPaths {
    /// `/sys`.
    pub sys: PathBuf,
    /// `/run/udev/data`.
    pub udev_data: PathBuf,
}

impl Default for SysPaths {
    fn default() -> Self {
        Self {
            sys: PathBuf::from("/sys"),
            udev_data: PathBuf::from("/run/udev/data"),
        }
    }
}

/// A block device as sysfs sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    pub major: u32,
    pub minor: u32,
    /// Kernel name (`sdb1`), sanitized.
    pub name: String,
    /// The device's sysfs directory (resolved).
    pub sysfs: PathBuf,
    /// The whole disk's sysfs directory (the same for a whole disk).
    pub disk_sysfs: PathBuf,
    pub is_partition: bool,
    /// The whole disk's device number.
    pub disk_dev: (u32, u32),
    /// Where udev's database lives (for [`is_removable`]).
    udev_data: PathBuf,
}

/// At most this many entries are read from one sysfs directory.
const MAX_SYSFS_ENTRIES: usize = 4096;
/// At most this many levels of slaves / loop backing files are followed.
const MAX_DEPTH: usize = 8;

fn read_trimmed(p: &Path) -> Option<String> {
    let text = std::fs::read(p).ok()?;
    let text = String::from_utf8_lossy(text.get(..4096).unwrap_or(&text)).into_owned();
    Some(text.trim().to_owned())
}

/// Parses sysfs's `MAJ:MIN`.
pub(crate) fn parse_dev(text: &str) -> Option<(u32, u32)> {
    let (a, b) = text.trim().split_once(':')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// (major, minor) of an st_dev / st_rdev.
pub fn split_dev(dev: u64) -> (u32, u32) {
    #[allow(
        clippy::useless_conversion,
        reason = "dev_t's width differs between targets"
    )]
    let dev = libc::dev_t::from(dev);
    (libc::major(dev), libc::minor(dev))
}

impl DeviceInfo {
    /// Looks up block device `major:minor` in sysfs.
    pub fn lookup(paths: &SysPaths, major: u32, minor: u32) -> Option<Self> {
        let link = paths.sys.join(format!("dev/block/{major}:{minor}"));
        let sysfs = link.canonicalize().ok()?;
        let is_partition = sysfs.join("partition").exists();
        let disk_sysfs = if is_partition {
            sysfs.parent()?.to_owned()
        } else {
            sysfs.clone()
        };
        let disk_dev = parse_dev(&read_trimmed(&disk_sysfs.join("dev"))?)?;
        let name = sanitize::display(sysfs.file_name()?.as_encoded_bytes());
        Some(Self {
            major,
            minor,
            name,
            sysfs,
            disk_sysfs,
            is_partition,
            disk_dev,
            udev_data: paths.udev_data.clone(),
        })
    }

    /// This device's number, and for a whole disk its partitions' too,
    /// each with its kernel name.
    pub(crate) fn with_partitions(&self) -> Vec<((u32, u32), String)> {
        let mut out = vec![((self.major, self.minor), self.name.clone())];
        if self.is_partition {
            return out;
        }
        let Ok(dir) = std::fs::read_dir(&self.sysfs) else {
            return out;
        };
        for entry in dir.take(MAX_SYSFS_ENTRIES).flatten() {
            let p = entry.path();
            if p.join("partition").exists()
                && let Some(dev) = read_trimmed(&p.join("dev")).as_deref().and_then(parse_dev)
            {
                out.push((dev, sanitize::display(entry.file_name().as_encoded_bytes())));
            }
        }
        out
    }

    /// sysfs directories of this device and (whole disk) its partitions.
    fn sysfs_dirs(&self) -> Vec<(PathBuf, String)> {
        let mut out = vec![(self.sysfs.clone(), self.name.clone())];
        if self.is_partition {
            return out;
        }
        if let Ok(dir) = std::fs::read_dir(&self.sysfs) {
            for entry in dir.take(MAX_SYSFS_ENTRIES).flatten() {
                if entry.path().join("partition").exists() {
                    out.push((
                        entry.path(),
                        sanitize::display(entry.file_name().as_encoded_bytes()),
                    ));
                }
            }
        }
        out
    }
}

/// Removable media: the disk's sysfs `removable` attribute is 1, or udev
/// says it sits on USB (`E:ID_BUS=usb`) or is an SD card
/// (`E:ID_DRIVE_FLASH_SD=1`). For the choice between polkit's
/// `org.safemount.mount` and `org.safemount.mount-system`.
pub fn is_removable(dev: &DeviceInfo) -> bool {
    if read_trimmed(&dev.disk_sysfs.join("removable")).as_deref() == Some("1") {
        return true;
    }
    let udev_says = |(major, minor): (u32, u32)| {
        let Ok(text) = std::fs::read(dev.udev_data.join(format!("b{major}:{minor}"))) else {
            return false;
        };
        text.get(..65536)
            .unwrap_or(&text)
            .split(|&b| b == b'\n')
            .any(|l| l == b"E:ID_BUS=usb" || l == b"E:ID_DRIVE_FLASH_SD=1")
    };
    udev_says((dev.major, dev.minor)) || udev_says(dev.disk_dev)
}

/// The whole disks under `/`: the disk of `/`'s st_dev (or of the block
/// device mountinfo names for `/`), and, recursively, the disks under a
/// device-mapper/md device (sysfs `slaves/`) or a loop device's backing
/// file.
pub fn root_disks(paths: &SysPaths) -> Vec<(u32, u32)> {
    let mut todo: Vec<((u32, u32), usize)> = Vec::new();
    if let Ok(st) = nix::sys::stat::stat("/") {
        #[allow(clippy::useless_conversion, reason = "dev_t width")]
        todo.push((split_dev(u64::from(st.st_dev)), 0));
    }
    if let Ok(entries) = crate::mountpoint::read_mountinfo()
        && let Some(root) = entries.iter().find(|e| e.mount_point == Path::new("/"))
    {
        todo.push((root.dev, 0));
        if root.source.starts_with("/dev/")
            && let Ok(st) = nix::sys::stat::stat(root.source.as_str())
            && SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFBLK
        {
            #[allow(clippy::useless_conversion, reason = "dev_t width")]
            todo.push((split_dev(u64::from(st.st_rdev)), 0));
        }
    }
    let mut disks = Vec::new();
    let mut seen = Vec::new();
    while let Some((dev, depth)) = todo.pop() {
        if seen.contains(&dev) || seen.len() > 256 {
            continue;
        }
        seen.push(dev);
        // Major 0: no block device (tmpfs, overlay, btrfs's anonymous dev).
        let Some(info) = (dev.0 != 0)
            .then(|| DeviceInfo::lookup(paths, dev.0, dev.1))
            .flatten()
        else {
            continue;
        };
        if !disks.contains(&info.disk_dev) {
            disks.push(info.disk_dev);
        }
        if depth >= MAX_DEPTH {
            continue;
        }
        for dir in [&info.sysfs, &info.disk_sysfs] {
            if let Ok(slaves) = std::fs::read_dir(dir.join("slaves")) {
                for s in slaves.take(MAX_SYSFS_ENTRIES).flatten() {
                    if let Some(d) = read_trimmed(&s.path().join("dev"))
                        .as_deref()
                        .and_then(parse_dev)
                    {
                        todo.push((d, depth + 1));
                    }
                }
            }
        }
        if let Some(backing) = read_trimmed(&info.disk_sysfs.join("loop/backing_file"))
            && let Ok(st) = nix::sys::stat::stat(backing.as_str())
        {
            #[allow(clippy::useless_conversion, reason = "dev_t width")]
            todo.push((split_dev(u64::from(st.st_dev)), depth + 1));
        }
    }
    disks
}

/// Refuses a device that is mounted, held, or under `/` (see the module
/// documentation). `shown` names it in errors.
pub fn check_available(paths: &SysPaths, dev: &DeviceInfo, shown: &str) -> Result<(), DeviceError> {
    let entries = crate::mountpoint::read_mountinfo().map_err(|error| DeviceError::Resolve {
        path: "/proc/self/mountinfo".to_owned(),
        error,
    })?;
    check_against(dev, shown, &entries, &root_disks(paths))
}

/// [`check_available`] against the given mount table and root disks.
pub(crate) fn check_against(
    dev: &DeviceInfo,
    shown: &str,
    mounts: &[crate::mountpoint::MountEntry],
    root_disks: &[(u32, u32)],
) -> Result<(), DeviceError> {
    if root_disks.contains(&dev.disk_dev) {
        return Err(DeviceError::RootDisk(shown.to_owned()));
    }
    let devs = dev.with_partitions();
    for e in mounts {
        if let Some((_, what)) = devs.iter().find(|(d, _)| *d == e.dev) {
            return Err(DeviceError::Mounted {
                device: shown.to_owned(),
                what: what.clone(),
                mountpoint: sanitize::display(e.mount_point.as_os_str().as_encoded_bytes()),
            });
        }
    }
    for (dir, what) in dev.sysfs_dirs() {
        if let Ok(holders) = std::fs::read_dir(dir.join("holders"))
            && let Some(h) = holders.take(MAX_SYSFS_ENTRIES).flatten().next()
        {
            return Err(DeviceError::Held {
                device: shown.to_owned(),
                what,
                holder: sanitize::display(h.file_name().as_encoded_bytes()),
            });
        }
    }
    Ok(())
}

/// Looks up and checks the block device behind `rdev`.
fn policy(rdev: u64, shown: &str) -> Result<Option<DeviceInfo>, DeviceError> {
    let paths = SysPaths::default();
    let (major, minor) = split_dev(rdev);
    let info = DeviceInfo::lookup(&paths, major, minor);
    match &info {
        Some(info) => check_available(&paths, info, shown)?,
        None => {
            // Not in sysfs (no /sys?): the root-disk check still works on
            // numbers alone, O_EXCL still guards the rest.
            tracing::warn!(device = shown, "block device not found in sysfs");
            if root_disks(&paths).contains(&(major, minor)) {
                return Err(DeviceError::RootDisk(shown.to_owned()));
            }
        }
    }
    Ok(info)
}

/// Opens the block device at `path` (resolved first: device paths are
/// often symlinks such as /dev/disk/by-label/X) with O_EXCL, read-only if
/// `read_only` or if the device is write-protected, after the policy
/// checks ([`check_available`]).
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
    #[allow(clippy::useless_conversion, reason = "dev_t width")]
    let rdev = u64::from(st.st_rdev);
    let info = policy(rdev, &name)?;
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
    #[allow(clippy::useless_conversion, reason = "dev_t width")]
    let same = u64::from(st.st_rdev) == rdev;
    if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFBLK || !same {
        // Swapped between the checks and the open.
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
        device: info,
    })
}

/// Validates an fd the client opened and passed: a regular file or block
/// device, opened with the access the mount needs. A block device goes
/// through the same policy checks as one the broker opens (but its
/// opener, not the broker, chose whether to open it O_EXCL).
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
    let name = match kind {
        SourceKind::RegularFile => image_path(fd.as_fd(), &st).unwrap_or(name),
        SourceKind::BlockDevice => name,
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
    let mut device = None;
    if kind == SourceKind::BlockDevice {
        #[allow(clippy::useless_conversion, reason = "dev_t width")]
        let rdev = u64::from(st.st_rdev);
        device = policy(rdev, &name)?;
    }
    if kind == SourceKind::BlockDevice && !ro {
        ro = device_is_read_only(fd.as_fd()).map_err(|errno| DeviceError::Stat {
            name: name.clone(),
            errno,
        })?;
        if ro {
            tracing::warn!(device = %name, "device is write-protected, mounting read-only");
        }
    }
    // A read-only mount never hands the worker a writable fd.
    let fd = if ro && access == OFlag::O_RDWR {
        reopen_read_only(&fd).map_err(|errno| DeviceError::Stat {
            name: name.clone(),
            errno,
        })?
    } else {
        fd
    };
    Ok(Source {
        fd,
        name,
        read_only: ro,
        kind,
        device,
    })
}

/// The absolute path of the image file `fd`, as the kernel has it, when
/// that path names this very file from the broker's root (same device and
/// inode): what mount(8) compares an fstab entry with (`mount -a` would
/// otherwise mount it again) and what findmnt and umount look up. The
/// client's name for it is kept when the kernel's path does not name it
/// from here (a client in another mount namespace, a file renamed or
/// deleted since it was opened), is longer than [`sanitize::MAX_BYTES`],
/// or holds characters a mount source cannot carry.
fn image_path(fd: BorrowedFd<'_>, st: &nix::sys::stat::FileStat) -> Option<String> {
    let link = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).ok()?;
    let text = link.to_str()?;
    // mount(2)'s source would turn whitespace and commas into `_`, and so
    // name another path, which a umount by source could then match.
    let unfit = |c: char| c.is_control() || c.is_whitespace() || c == ',';
    if !link.is_absolute() || text.len() > sanitize::MAX_BYTES || text.chars().any(unfit) {
        return None;
    }
    // lstat: a symlink swapped in for the last component is not the file.
    let here = nix::sys::stat::lstat(&link).ok()?;
    (here.st_dev == st.st_dev && here.st_ino == st.st_ino).then(|| text.to_owned())
}

/// The file `fd` names, opened again read-only through /proc/self/fd (the
/// magic link names the open file, not a path anyone can swap), checked
/// to be the same file.
fn reopen_read_only(fd: &OwnedFd) -> Result<OwnedFd, Errno> {
    let again = nix::fcntl::open(
        format!("/proc/self/fd/{}", fd.as_raw_fd()).as_str(),
        OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOCTTY,
        Mode::empty(),
    )?;
    let (a, b) = (fstat(fd)?, fstat(&again)?);
    if (a.st_dev, a.st_ino, a.st_rdev) != (b.st_dev, b.st_ino, b.st_rdev) {
        return Err(Errno::ESTALE);
    }
    Ok(again)
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
        let rw = accept_fd(open_as(&p, OFlag::O_RDWR), "a.img", false).unwrap();
        assert!(!rw.read_only);
        let access = |fd: &OwnedFd| {
            OFlag::from_bits_retain(fcntl(fd, FcntlArg::F_GETFL).unwrap()) & OFlag::O_ACCMODE
        };
        assert_eq!(access(&rw.fd), OFlag::O_RDWR);
        // Security review, low: a writable fd with -o ro reaches the worker
        // read-only, still naming the same file.
        let ro = accept_fd(open_as(&p, OFlag::O_RDWR), "a.img", true).unwrap();
        assert!(ro.read_only);
        assert_eq!(access(&ro.fd), OFlag::O_RDONLY);
        assert_eq!(fstat(&ro.fd).unwrap().st_ino, fstat(&rw.fd).unwrap().st_ino);
        assert!(nix::unistd::write(&ro.fd, b"x").is_err());
        std::fs::remove_file(&p).unwrap();
    }

    #[test]
    fn image_named_by_its_path_else_by_the_clients_name() {
        let p = temp_file("named");
        let named = accept_fd(open_as(&p, OFlag::O_RDONLY), "a.img", true).unwrap();
        assert_eq!(named.name, p.to_str().unwrap());
        // Deleted since it was opened: the kernel's path ("... (deleted)")
        // names nothing; the client's name, sanitized, stands in.
        let fd = open_as(&p, OFlag::O_RDONLY);
        std::fs::remove_file(&p).unwrap();
        let gone = accept_fd(fd, "a\nb.img", true).unwrap();
        assert_eq!(gone.name, "ab.img");
        // A path a mount source would change: the client's name.
        let spaced = std::env::temp_dir().join(format!("safemount dev {}", std::process::id()));
        std::fs::write(&spaced, [0u8; 512]).unwrap();
        let named = accept_fd(open_as(&spaced, OFlag::O_RDONLY), "a.img", true).unwrap();
        std::fs::remove_file(&spaced).unwrap();
        assert_eq!(named.name, "a.img");
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

    /// A fake /sys with disk `sdx` (8:16) and partitions sdx1 (8:17),
    /// sdx2 (8:18), and disk `vdz` (252:0), plus a udev data dir.
    fn fake_sys(tag: &str) -> (PathBuf, SysPaths) {
        let root = std::env::temp_dir().join(format!("safemount-sys-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let dev = root.join("sys/devices/pci/usb1/block/sdx");
        for (dir, num) in [
            (dev.clone(), "8:16"),
            (dev.join("sdx1"), "8:17"),
            (dev.join("sdx2"), "8:18"),
            (root.join("sys/devices/virtual/block/vdz"), "252:0"),
        ] {
            std::fs::create_dir_all(dir.join("holders")).unwrap();
            std::fs::write(dir.join("dev"), format!("{num}\n")).unwrap();
            if dir.file_name().unwrap().to_str().unwrap().len() == 4 {
                std::fs::write(dir.join("partition"), "1\n").unwrap();
            }
            std::fs::write(dir.join("removable"), "0\n").unwrap();
            let link = root.join("sys/dev/block").join(num);
            std::fs::create_dir_all(link.parent().unwrap()).unwrap();
            std::os::unix::fs::symlink(&dir, &link).unwrap();
        }
        std::fs::create_dir_all(root.join("udev")).unwrap();
        let paths = SysPaths {
            sys: root.join("sys"),
            udev_data: root.join("udev"),
        };
        (root, paths)
    }

    fn entry(dev: (u32, u32), at: &str) -> crate::mountpoint::MountEntry {
        crate::mountpoint::MountEntry {
            mount_id: 1,
            parent_id: 0,
            dev,
            mount_point: PathBuf::from(at),
            fstype: "ext4".into(),
            source: "/dev/x".into(),
        }
    }

    #[test]
    fn sysfs_lookup_and_removable() {
        let (root, paths) = fake_sys("rm");
        let part = DeviceInfo::lookup(&paths, 8, 17).unwrap();
        assert!(part.is_partition);
        assert_eq!(part.name, "sdx1");
        assert_eq!(part.disk_dev, (8, 16));
        let disk = DeviceInfo::lookup(&paths, 8, 16).unwrap();
        assert!(!disk.is_partition);
        assert_eq!(disk.with_partitions().len(), 3);
        assert!(DeviceInfo::lookup(&paths, 9, 9).is_none());
        assert!(!is_removable(&part));
        // udev's database for the disk says USB.
        std::fs::write(
            paths.udev_data.join("b8:16"),
            "S:disk/by-id/x\nE:ID_BUS=usb\n",
        )
        .unwrap();
        assert!(is_removable(&part) && is_removable(&disk));
        let vd = DeviceInfo::lookup(&paths, 252, 0).unwrap();
        assert!(!is_removable(&vd));
        // sysfs's removable attribute of the parent disk.
        std::fs::write(vd.disk_sysfs.join("removable"), "1\n").unwrap();
        assert!(is_removable(&vd));
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn in_use_rules() {
        let (root, paths) = fake_sys("use");
        let disk = DeviceInfo::lookup(&paths, 8, 16).unwrap();
        let p2 = DeviceInfo::lookup(&paths, 8, 18).unwrap();
        let other = DeviceInfo::lookup(&paths, 252, 0).unwrap();
        assert!(check_against(&disk, "/dev/sdx", &[], &[]).is_ok());
        // A mounted partition makes the whole disk busy, not its sibling.
        let mounts = [entry((8, 17), "/media/a")];
        let e = check_against(&disk, "/dev/sdx", &mounts, &[]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "/dev/sdx: device is in use: sdx1 is mounted at /media/a"
        );
        assert_eq!(e.kind(), ErrorKind::Busy);
        assert!(check_against(&p2, "/dev/sdx2", &mounts, &[]).is_ok());
        // The root disk, and every partition on it.
        for d in [&disk, &p2] {
            assert!(matches!(
                check_against(d, "x", &[], &[(8, 16)]),
                Err(DeviceError::RootDisk(_))
            ));
        }
        assert!(check_against(&other, "x", &[], &[(8, 16)]).is_ok());
        // A holder (device-mapper) on a partition.
        std::fs::create_dir_all(p2.sysfs.join("holders/dm-3")).unwrap();
        let e = check_against(&disk, "/dev/sdx", &[], &[]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "/dev/sdx: device is in use: sdx2 is held by dm-3"
        );
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn root_disk_is_found() {
        // Whatever / is on here, the function must not panic; if / is on
        // a block device, its disk is listed.
        let disks = root_disks(&SysPaths::default());
        let st = nix::sys::stat::stat("/").unwrap();
        #[allow(clippy::useless_conversion, reason = "dev_t width")]
        let (maj, _) = split_dev(u64::from(st.st_dev));
        if maj != 0 && Path::new("/sys/dev/block").exists() {
            assert!(!disks.is_empty());
        }
    }
}
