//! The mount point: validated, pinned with an O_PATH fd, and looked up in
//! /proc/self/mountinfo.
//!
//! Two kinds:
//! - one the caller names ([`pin_for`]): an existing, empty directory the
//!   caller owns (root may name any empty directory), pinned with
//!   O_PATH|O_NOFOLLOW so a path swapped later cannot redirect the mount;
//! - an automatic one ([`create_auto`]): `/run/media/$USER/<label>`, with
//!   the label sanitized by [`label_name`] and uniquified. `/run/media` is
//!   root's (0755) and `/run/media/$USER` root-owned too (0750, group the
//!   user's primary group), so the user can reach but never plant anything
//!   there; each level is created with mkdirat relative to an O_PATH fd of
//!   the level above and opened with O_NOFOLLOW. The leaf is removed again
//!   ([`CreatedDir`]) when the mount goes away.

use std::ffi::{OsStr, OsString};
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
    #[error("mount point {0} is not empty")]
    NotEmpty(String),
    #[error("mount point {0} is not owned by the caller")]
    NotOwner(String),
    #[error("{path} is not a safe parent for mount points ({why})")]
    UnsafeParent { path: String, why: &'static str },
    #[error("cannot create mount point under {path}: {errno}")]
    Create { path: String, errno: Errno },
    #[error("no free mount point name for \"{0}\"")]
    NoFreeName(String),
}

impl MountpointError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::NotAbsolute(_) | Self::NotDirectory(_) | Self::Symlink(_) => {
                ErrorKind::InvalidRequest
            }
            Self::NotFound(_) => ErrorKind::NotFound,
            Self::AlreadyMounted(_) | Self::NotEmpty(_) | Self::NoFreeName(_) => ErrorKind::Busy,
            Self::NotOwner(_) => ErrorKind::NotAuthorized,
            Self::Open { .. }
            | Self::Resolve(_)
            | Self::Mountinfo(_)
            | Self::UnsafeParent { .. }
            | Self::Create { .. } => ErrorKind::Internal,
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

/// Like [`pin`], and the directory must be empty and, unless `caller_uid`
/// is root, owned by `caller_uid`.
pub fn pin_for(path: &Path, caller_uid: u32) -> Result<PinnedDir, MountpointError> {
    let pinned = pin(path)?;
    let shown = || crate::sanitize::display(pinned.path.as_os_str().as_encoded_bytes());
    let st = nix::sys::stat::fstat(&pinned.fd).map_err(|errno| MountpointError::Open {
        path: shown(),
        errno,
    })?;
    if caller_uid != 0 && st.st_uid != caller_uid {
        return Err(MountpointError::NotOwner(shown()));
    }
    // Read the directory through the pinned fd, not the path.
    let dir = nix::fcntl::openat(
        &pinned.fd,
        ".",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|errno| MountpointError::Open {
        path: shown(),
        errno,
    })?;
    let mut dir = nix::dir::Dir::from_fd(dir).map_err(|errno| MountpointError::Open {
        path: shown(),
        errno,
    })?;
    for entry in dir.iter() {
        let entry = entry.map_err(|errno| MountpointError::Open {
            path: shown(),
            errno,
        })?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            return Err(MountpointError::NotEmpty(shown()));
        }
    }
    Ok(pinned)
}

/// Where automatic mount points go.
pub const MEDIA_ROOT: &str = "/run/media";

/// The filesystem UUID as text (8-4-4-4-12), or None if all zero.
pub fn format_uuid(uuid: &[u8; 16]) -> Option<String> {
    if uuid.iter().all(|&b| b == 0) {
        return None;
    }
    let hex: String = uuid.iter().map(|b| format!("{b:02x}")).collect();
    Some(format!(
        "{}-{}-{}-{}-{}",
        hex.get(0..8)?,
        hex.get(8..12)?,
        hex.get(12..16)?,
        hex.get(16..20)?,
        hex.get(20..32)?
    ))
}

/// A directory name from untrusted text: lossy UTF-8, no control
/// characters, `/` becomes `_`, no leading dots or spaces, no trailing
/// spaces, at most NAME_MAX (255) bytes cut on a character boundary.
/// May be empty.
fn clean_name(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    let mut out = String::new();
    for c in text.chars().filter(|c| !c.is_control()) {
        let c = if c == '/' { '_' } else { c };
        if out.len() + c.len_utf8() > crate::sanitize::MAX_BYTES {
            break;
        }
        out.push(c);
    }
    out.trim_start_matches(|c: char| c == '.' || c.is_whitespace())
        .trim_end()
        .to_owned()
}

/// The automatic mount point's name for a filesystem: its label, else
/// its UUID, else the source's last path component, else "disk"; always
/// a safe single path component (see `clean_name`).
pub fn label_name(label: &[u8], uuid: &[u8; 16], source_name: &str) -> String {
    let name = clean_name(label);
    if !name.is_empty() {
        return name;
    }
    if let Some(u) = format_uuid(uuid) {
        return u;
    }
    let last = source_name.rsplit('/').next().unwrap_or("");
    let name = clean_name(last.as_bytes());
    if name.is_empty() {
        "disk".to_owned()
    } else {
        name
    }
}

/// `base`, then `base (2)`, `base (3)`...: the `n`th candidate, cut so it
/// fits in NAME_MAX bytes.
fn candidate(base: &str, n: u32) -> String {
    let suffix = if n <= 1 {
        String::new()
    } else {
        format!(" ({n})")
    };
    let room = crate::sanitize::MAX_BYTES.saturating_sub(suffix.len());
    let mut cut = String::new();
    for c in base.chars() {
        if cut.len() + c.len_utf8() > room {
            break;
        }
        cut.push(c);
    }
    cut.push_str(&suffix);
    cut
}

/// How many names [`create_auto`] tries.
const MAX_CANDIDATES: u32 = 100;

/// A mount point directory the broker created; [`CreatedDir::remove`]
/// removes it again (only if empty: rmdir).
#[derive(Debug)]
pub struct CreatedDir {
    parent: OwnedFd,
    name: OsString,
    path: PathBuf,
}

impl CreatedDir {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// rmdir, relative to the pinned parent. Fails (EBUSY, ENOTEMPTY)
    /// while something is mounted on it or it is not empty.
    pub fn remove(&self) -> Result<(), Errno> {
        nix::unistd::unlinkat(
            &self.parent,
            self.name.as_os_str(),
            nix::unistd::UnlinkatFlags::RemoveDir,
        )
    }
}

fn open_dir_at(parent: BorrowedFd<'_>, name: &OsStr) -> Result<OwnedFd, Errno> {
    nix::fcntl::openat(
        parent,
        name,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
}

/// Creates (if needed) and opens `parent/name` as a root-owned directory
/// nobody else may write to. A new one gets `mode` and group `gid`.
fn secure_subdir(
    parent: BorrowedFd<'_>,
    parent_path: &Path,
    name: &OsStr,
    mode: u32,
    gid: u32,
) -> Result<OwnedFd, MountpointError> {
    let path = parent_path.join(name);
    let shown = || crate::sanitize::display(path.as_os_str().as_encoded_bytes());
    let created = match nix::sys::stat::mkdirat(parent, name, Mode::from_bits_truncate(0o700)) {
        Ok(()) => true,
        Err(Errno::EEXIST) => false,
        Err(errno) => {
            return Err(MountpointError::Create {
                path: shown(),
                errno,
            });
        }
    };
    let fd = open_dir_at(parent, name).map_err(|errno| match errno {
        Errno::ENOTDIR | Errno::ELOOP => MountpointError::UnsafeParent {
            path: shown(),
            why: "not a directory",
        },
        errno => MountpointError::Open {
            path: shown(),
            errno,
        },
    })?;
    // An existing root-owned directory of another group (its user was
    // deleted and made again with a new group id, say) would lock the user
    // out of their own mounts: it gets the right group too.
    let stale_group =
        !created && nix::sys::stat::fstat(&fd).is_ok_and(|st| st.st_uid == 0 && st.st_gid != gid);
    if stale_group {
        tracing::info!(path = %shown(), gid, "directory has another group; setting it");
    }
    if created || stale_group {
        // Set group and mode through /proc/self/fd (fchown/fchmod need a
        // real fd; the O_PATH fd names exactly the directory made above).
        let proc = format!("/proc/self/fd/{}", fd.as_raw_fd());
        let set = std::os::unix::fs::chown(&proc, Some(0), Some(gid)).and_then(|()| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&proc, std::fs::Permissions::from_mode(mode))
        });
        if let Err(e) = set {
            return Err(MountpointError::Create {
                path: shown(),
                errno: e.raw_os_error().map_or(Errno::EIO, Errno::from_raw),
            });
        }
    }
    let st = nix::sys::stat::fstat(&fd).map_err(|errno| MountpointError::Open {
        path: shown(),
        errno,
    })?;
    if st.st_uid != 0 {
        return Err(MountpointError::UnsafeParent {
            path: shown(),
            why: "not owned by root",
        });
    }
    if st.st_mode & 0o022 != 0 {
        return Err(MountpointError::UnsafeParent {
            path: shown(),
            why: "writable by group or others",
        });
    }
    Ok(fd)
}

/// A user's directory name under the media root: the user name if it is
/// a safe path component, else the uid.
fn user_dir_name(uid: u32) -> String {
    match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) {
        Ok(Some(u))
            if !u.name.is_empty()
                && u.name.len() <= crate::sanitize::MAX_BYTES
                && !u.name.starts_with('.')
                && !u.name.contains('/')
                && !u.name.chars().any(char::is_control) =>
        {
            u.name
        }
        _ => uid.to_string(),
    }
}

/// Creates `media_root/$USER/<name>` (uniquified) for `owner`, returning
/// it pinned plus the record to remove it again. `media_root`'s parent
/// must exist; `media_root` itself and the user's directory are created
/// as needed (see the module documentation).
pub fn create_auto(
    media_root: &Path,
    owner: Owner,
    name: &str,
) -> Result<(PinnedDir, CreatedDir), MountpointError> {
    let shown = |p: &Path| crate::sanitize::display(p.as_os_str().as_encoded_bytes());
    let (Some(top), Some(media_name)) = (media_root.parent(), media_root.file_name()) else {
        return Err(MountpointError::NotAbsolute(shown(media_root)));
    };
    if !media_root.is_absolute() {
        return Err(MountpointError::NotAbsolute(shown(media_root)));
    }
    let top_fd = open(
        top,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|errno| MountpointError::Open {
        path: shown(top),
        errno,
    })?;
    let media = secure_subdir(top_fd.as_fd(), top, media_name, 0o755, 0)?;
    let user = user_dir_name(owner.uid);
    let user_path = media_root.join(&user);
    let user_fd = secure_subdir(
        media.as_fd(),
        media_root,
        OsStr::new(&user),
        0o750,
        owner.gid,
    )?;
    let name = if name.is_empty() || name.contains('/') || name.starts_with('.') {
        "disk"
    } else {
        name
    };
    for n in 1..=MAX_CANDIDATES {
        let leaf = OsString::from(candidate(name, n));
        match nix::sys::stat::mkdirat(&user_fd, leaf.as_os_str(), Mode::from_bits_truncate(0o700)) {
            Ok(()) => {}
            Err(Errno::EEXIST) => continue,
            Err(errno) => {
                return Err(MountpointError::Create {
                    path: shown(&user_path),
                    errno,
                });
            }
        }
        let created = CreatedDir {
            parent: user_fd,
            path: user_path.join(&leaf),
            name: leaf,
        };
        let fd = match open_dir_at(created.parent.as_fd(), created.name.as_os_str()) {
            Ok(fd) => fd,
            Err(errno) => {
                let _ = created.remove();
                return Err(MountpointError::Open {
                    path: shown(&created.path),
                    errno,
                });
            }
        };
        // The kernel's name for it, as pin() records, so unmount requests
        // match it.
        let path = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
            .unwrap_or_else(|_| created.path.clone());
        let pinned = PinnedDir { fd, path };
        return Ok((pinned, created));
    }
    Err(MountpointError::NoFreeName(crate::sanitize::display(
        name.as_bytes(),
    )))
}

/// If `path` is an automatic mount point (`MEDIA_ROOT/<user>/<name>`),
/// removes it if it is empty and nothing is mounted on it: rmdir relative
/// to the user's directory, opened O_NOFOLLOW and checked root-owned and
/// not writable by others. Best effort, logged. Path-based on purpose, so
/// a mount adopted by a restarted broker is cleaned up the same way.
pub fn remove_auto_dir(path: &Path) {
    remove_auto_dir_in(Path::new(MEDIA_ROOT), path);
}

fn remove_auto_dir_in(media_root: &Path, path: &Path) {
    use std::path::Component;
    let Ok(rest) = path.strip_prefix(media_root) else {
        return;
    };
    let parts: Vec<&OsStr> = rest
        .components()
        .map_while(|c| match c {
            Component::Normal(n) => Some(n),
            _ => None,
        })
        .collect();
    let ([user, leaf], 2) = (parts.as_slice(), rest.components().count()) else {
        return;
    };
    let remove = || -> Result<(), Errno> {
        let media = open(
            media_root,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        let user_fd = open_dir_at(media.as_fd(), user)?;
        let st = nix::sys::stat::fstat(&user_fd)?;
        if st.st_uid != 0 || st.st_mode & 0o022 != 0 {
            return Err(Errno::EPERM);
        }
        nix::unistd::unlinkat(&user_fd, *leaf, nix::unistd::UnlinkatFlags::RemoveDir)
    };
    match remove() {
        Ok(()) => tracing::debug!(mountpoint = %path.display(), "mount point removed"),
        Err(Errno::ENOENT) => {}
        Err(errno) => {
            tracing::warn!(mountpoint = %path.display(), %errno, "cannot remove mount point")
        }
    }
}

/// One line of /proc/self/mountinfo, the fields safemount needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    pub mount_id: u64,
    /// The id of the mount this one is mounted on.
    pub parent_id: u64,
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
    let parent_id = std::str::from_utf8(fields.next()?).ok()?.parse().ok()?;
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
        parent_id,
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
        assert_eq!(e[0].parent_id, 35);
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

    #[test]
    fn label_names() {
        let u = [0u8; 16];
        assert_eq!(label_name(b"My Disk", &u, "x"), "My Disk");
        assert_eq!(label_name(b"../x", &u, "x"), "_x");
        assert_eq!(label_name(b"a/b", &u, "x"), "a_b");
        assert_eq!(label_name(b"a\nb\x1b", &u, "x"), "ab");
        assert_eq!(label_name(b"\xffz", &u, "x"), "\u{fffd}z");
        assert_eq!(label_name(b"...", &u, "/dev/sdb1"), "sdb1");
        assert_eq!(label_name(b" . x ", &u, "x"), "x");
        assert_eq!(label_name(b"", &u, ""), "disk");
        assert_eq!(label_name(b"", &u, "/dev/.."), "disk");
        let mut uuid = [0u8; 16];
        uuid[0] = 0xab;
        uuid[15] = 0x01;
        assert_eq!(
            label_name(b"\n", &uuid, "x"),
            "ab000000-0000-0000-0000-000000000001"
        );
        let long = "é".repeat(200);
        let n = label_name(long.as_bytes(), &u, "x");
        assert!(n.len() <= 255 && n.chars().all(|c| c == 'é'));
    }

    #[test]
    fn candidates_fit_name_max() {
        assert_eq!(candidate("a", 1), "a");
        assert_eq!(candidate("a", 2), "a (2)");
        let long = "é".repeat(200);
        let c = candidate(&long, 17);
        assert!(c.len() <= 255 && c.ends_with(" (17)"), "{c}");
    }

    #[test]
    fn pin_for_checks_owner_and_emptiness() {
        let dir = std::env::temp_dir().join(format!("safemount-pinfor-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let me = nix::unistd::getuid().as_raw();
        assert!(pin_for(&dir, me).is_ok());
        if me == 0 {
            // Root may name anyone's directory; others only their own.
            assert!(pin_for(&dir, 0).is_ok());
            assert!(matches!(
                pin_for(&dir, 4242),
                Err(MountpointError::NotOwner(_))
            ));
        }
        std::fs::write(dir.join(".hidden"), b"x").unwrap();
        assert!(matches!(
            pin_for(&dir, me),
            Err(MountpointError::NotEmpty(_))
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn create_auto_and_remove() {
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let top = std::env::temp_dir().join(format!("safemount-media-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&top);
        std::fs::create_dir_all(&top).unwrap();
        let media = top.join("media");
        let owner = Owner {
            uid: 65534,
            gid: 65534,
        };
        let (p1, c1) = create_auto(&media, owner, "Disk").unwrap();
        let (p2, c2) = create_auto(&media, owner, "Disk").unwrap();
        let user = p1.path().parent().unwrap().to_owned();
        assert_eq!(p1.path(), user.join("Disk"));
        assert_eq!(p2.path(), user.join("Disk (2)"));
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(&user).unwrap();
        assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (0, 65534, 0o750));
        let m = std::fs::metadata(&media).unwrap();
        assert_eq!((m.uid(), m.mode() & 0o7777), (0, 0o755));
        // Path-based removal, as after a broker restart.
        remove_auto_dir_in(&media, p2.path());
        assert!(!p2.path().exists());
        drop(c2);
        // Not empty: kept.
        std::fs::write(p1.path().join("f"), b"x").unwrap();
        assert_eq!(c1.remove(), Err(Errno::ENOTEMPTY));
        std::fs::remove_file(p1.path().join("f")).unwrap();
        c1.remove().unwrap();
        // Paths outside media/<user>/<leaf> are never touched.
        let keep = top.join("keep");
        std::fs::create_dir_all(&keep).unwrap();
        remove_auto_dir_in(&media, &keep);
        remove_auto_dir_in(&media, &user);
        assert!(keep.exists() && user.exists());
        // A group-writable user directory is refused.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&user, std::fs::Permissions::from_mode(0o770)).unwrap();
        assert!(matches!(
            create_auto(&media, owner, "Disk"),
            Err(MountpointError::UnsafeParent { .. })
        ));
        // A symlink in place of the user directory is refused.
        std::fs::remove_dir(&user).unwrap();
        std::os::unix::fs::symlink(&keep, &user).unwrap();
        assert!(create_auto(&media, owner, "Disk").is_err());
        assert_eq!(std::fs::read_dir(&keep).unwrap().count(), 0);
        std::fs::remove_dir_all(&top).unwrap();
    }
}
