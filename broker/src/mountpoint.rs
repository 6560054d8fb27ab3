//! The mount point: validated, pinned with an O_PATH fd, and looked up in
//! /proc/self/mountinfo.
//!
//! In this issue the client names the mount point; creating one under
//! `/run/media/$USER` is a later issue.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{OFlag, open};
use nix::sys::stat::Mode;
use safemount_proto::ErrorKind;

#[derive(Debug, thiserror::Error)]
pub enum MountpointError {
    #[error("mount point must be an absolute path: {0}")]
    NotAbsolute(String),
    #[error("mount point {0} does not exist")]
    NotFound(String),
    #[error("mount point {0} is not a directory")]
    NotDirectory(String),
    #[error("mount point {0} is a symbolic link")]
    Symlink(String),
    #[error("{0} is already a mount point")]
    AlreadyMounted(String),
    #[error("cannot open mount point {path}: {errno}")]
    Open { path: String, errno: Errno },
    #[error("cannot resolve mount point: {0}")]
    Resolve(std::io::Error),
    #[error("cannot read /proc/self/mountinfo: {0}")]
    Mountinfo(std::io::Error),
}

impl MountpointError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::NotAbsolute(_) | Self::NotDirectory(_) | Self::Symlink(_) => {
                ErrorKind::InvalidRequest
            }
            Self::NotFound(_) => ErrorKind::NotFound,
            Self::AlreadyMounted(_) => ErrorKind::Busy,
            Self::Open { .. } | Self::Resolve(_) | Self::Mountinfo(_) => ErrorKind::Internal,
        }
    }
}

/// Whom a mount belongs to: the kernel gives them the files, and an
/// automatic mount point goes under their `/run/media` directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

/// A directory held by an O_PATH fd, with the path the kernel resolved it to.
#[derive(Debug)]
pub struct PinnedDir {
    fd: OwnedFd,
    path: PathBuf,
}

impl PinnedDir {
    /// The kernel's path for the directory (from `/proc/self/fd/N`).
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Opens `path` O_PATH|O_DIRECTORY|O_NOFOLLOW and checks it is a directory
/// that is not already a mount point.
pub fn pin(path: &Path) -> Result<PinnedDir, MountpointError> {
    let shown = || crate::sanitize::display(path.as_os_str().as_encoded_bytes());
    if !path.is_absolute() {
        return Err(MountpointError::NotAbsolute(shown()));
    }
    let fd = open(
        path,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|errno| match errno {
        Errno::ENOENT => MountpointError::NotFound(shown()),
        Errno::ENOTDIR => {
            // O_NOFOLLOW|O_PATH on a symlink opens the link itself, and
            // O_DIRECTORY then says ENOTDIR: tell the two apart.
            if path.is_symlink() {
                MountpointError::Symlink(shown())
            } else {
                MountpointError::NotDirectory(shown())
            }
        }
        Errno::ELOOP => MountpointError::Symlink(shown()),
        errno => MountpointError::Open {
            path: shown(),
            errno,
        },
    })?;
    let real = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .map_err(MountpointError::Resolve)?;
    let entries = read_mountinfo().map_err(MountpointError::Mountinfo)?;
    if entries.iter().any(|e| e.mount_point == real) {
        return Err(MountpointError::AlreadyMounted(crate::sanitize::display(
            real.as_os_str().as_encoded_bytes(),
        )));
    }
    Ok(PinnedDir { fd, path: real })
}

/// One line of /proc/self/mountinfo, the fields safemount needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    pub mount_id: u64,
    /// st_dev of the mounted filesystem (major, minor).
    pub dev: (u32, u32),
    pub mount_point: PathBuf,
    pub fstype: String,
    pub source: String,
}

pub fn read_mountinfo() -> std::io::Result<Vec<MountEntry>> {
    let text = std::fs::read("/proc/self/mountinfo")?;
    Ok(parse_mountinfo(&text))
}

/// Finds the safemount mount at `path` (with st_dev `dev`, if known).
pub fn find_mount(path: &Path, dev: Option<(u32, u32)>) -> std::io::Result<Option<MountEntry>> {
    Ok(read_mountinfo()?.into_iter().rev().find(|e| {
        e.mount_point == path && e.fstype == crate::mount::FSTYPE && dev.is_none_or(|d| d == e.dev)
    }))
}

/// Parses mountinfo text; lines that do not parse are skipped.
pub fn parse_mountinfo(text: &[u8]) -> Vec<MountEntry> {
    text.split(|&b| b == b'\n').filter_map(parse_line).collect()
}

fn parse_line(line: &[u8]) -> Option<MountEntry> {
    use std::os::unix::ffi::OsStringExt;
    // 36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue
    let mut fields = line.split(|&b| b == b' ');
    let mount_id = std::str::from_utf8(fields.next()?).ok()?.parse().ok()?;
    let _parent = fields.next()?;
    let dev = std::str::from_utf8(fields.next()?).ok()?;
    let (major, minor) = dev.split_once(':')?;
    let dev = (major.parse().ok()?, minor.parse().ok()?);
    let _root = fields.next()?;
    let mount_point = unescape(fields.next()?);
    let _options = fields.next()?;
    // Optional fields up to the "-" separator.
    for f in fields.by_ref() {
        if f == b"-" {
            break;
        }
    }
    let fstype = String::from_utf8(unescape(fields.next()?)).ok()?;
    let source = String::from_utf8_lossy(&unescape(fields.next()?)).into_owned();
    Some(MountEntry {
        mount_id,
        dev,
        mount_point: PathBuf::from(std::ffi::OsString::from_vec(mount_point)),
        fstype,
        source,
    })
}

/// Undoes the kernel's `\ooo` octal escapes (space, tab, newline, backslash).
fn unescape(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while let Some(&b) = field.get(i) {
        if b == b'\\'
            && let Some(oct) = field.get(i + 1..i + 4)
            && oct.iter().all(|d| (b'0'..=b'7').contains(d))
        {
            let v = oct
                .iter()
                .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
            if let Ok(v) = u8::try_from(v) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lines() {
        let text =
            b"36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue\n\
100 30 0:57 / /tmp/my\\040dir rw,nosuid,nodev,noexec - fuse.safemount disk.img ro,user_id=0\n\
garbage line\n";
        let e = parse_mountinfo(text);
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].mount_id, 36);
        assert_eq!(e[0].dev, (98, 0));
        assert_eq!(e[0].mount_point, Path::new("/mnt2"));
        assert_eq!(e[0].fstype, "ext3");
        assert_eq!(e[1].mount_point, Path::new("/tmp/my dir"));
        assert_eq!(e[1].fstype, "fuse.safemount");
        assert_eq!(e[1].source, "disk.img");
        assert_eq!(e[1].dev, (0, 57));
    }

    #[test]
    fn unescape_edge_cases() {
        assert_eq!(unescape(b"a\\134b"), b"a\\b");
        assert_eq!(unescape(b"a\\"), b"a\\");
        assert_eq!(unescape(b"a\\12"), b"a\\12");
        assert_eq!(unescape(b"\\011\\012"), b"\t\n");
        assert_eq!(unescape(b"\\777"), b"\\777");
    }

    #[test]
    fn pin_rejects_bad_paths() {
        assert!(matches!(
            pin(Path::new("relative")),
            Err(MountpointError::NotAbsolute(_))
        ));
        assert!(matches!(
            pin(Path::new("/nonexistent/safemount-test")),
            Err(MountpointError::NotFound(_))
        ));
        let file = std::env::temp_dir().join(format!("safemount-mp-{}", std::process::id()));
        std::fs::write(&file, b"x").unwrap();
        let r = pin(&file);
        std::fs::remove_file(&file).unwrap();
        assert!(matches!(r, Err(MountpointError::NotDirectory(_))), "{r:?}");
        // "/" is always a mount point.
        assert!(matches!(
            pin(Path::new("/")),
            Err(MountpointError::AlreadyMounted(_))
        ));
    }

    #[test]
    fn pin_accepts_a_plain_directory() {
        let dir = std::env::temp_dir().join(format!("safemount-mpd-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let canonical = dir.canonicalize().unwrap();
        let pinned = pin(&dir);
        std::fs::remove_dir(&dir).unwrap();
        assert_eq!(pinned.unwrap().path(), canonical);
    }
}
