//! A mount the broker made, held by what identifies it, never by a path:
//! an O_PATH fd of the mount point's parent directory, the mount point's
//! name in it, the mount's unique id (statx STATX_MNT_ID_UNIQUE, never
//! reused while the system runs; the mountinfo id is recycled at once, as
//! is the anonymous st_dev) and the st_dev of the mounted filesystem (the
//! FUSE connection, whose minor names it in fusectl).
//!
//! Every unmount and detach (a request, the undo of a failed setup, a
//! worker's death, shutdown, adoption by a restarted broker) goes through
//! [`MountRef`]: the mount point is reached from the held parent without
//! following a symlink, and the mount found there must carry the recorded
//! unique mount id. A user who owns a directory above the mount point
//! can rename it and plant a symlink in its place; with a bare path and
//! `UMOUNT_NOFOLLOW` (which guards only the last component) root would
//! then unmount whatever the symlink leads to.
//!
//! Why the parent and not the mount itself: an fd inside the mount keeps
//! it busy, so a plain (non-lazy) umount2 must run with no such fd open.
//! A mount point cannot be renamed while something is mounted on it, so
//! its name in the held parent stays valid for the mount's lifetime.

use std::ffi::OsString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{OFlag, openat};
use nix::mount::MntFlags;
use nix::sys::stat::Mode;

use crate::mountpoint::{MountEntry, read_mountinfo};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MountRefError {
    /// The mount is no longer where it was: nothing is mounted on the
    /// mount point, or it was not found at all.
    #[error("the mount is gone")]
    Gone,
    /// Something else sits where the mount was: never touched.
    #[error("another mount (id {found}) is where mount {expected} was; left alone")]
    Replaced { expected: u64, found: u64 },
    /// The new mount is not the filesystem that was mounted.
    #[error("the mount found is {found}, not {expected}")]
    WrongType { expected: String, found: String },
    #[error("cannot reach the mount point: {0}")]
    Reach(Errno),
    #[error("cannot read /proc/self/mountinfo: {0}")]
    Proc(String),
    #[error("statx of the mount: {0} (unique mount ids need Linux 6.8)")]
    Statx(Errno),
}

/// See the module documentation.
#[derive(Debug)]
pub struct MountRef {
    /// O_PATH fd of the directory holding the mount point.
    parent: OwnedFd,
    /// The mount point's name in `parent`.
    leaf: OsString,
    /// STATX_MNT_ID_UNIQUE of the mount.
    unique_id: u64,
    /// The (recyclable) mount id of /proc/self/mountinfo: only to find
    /// the mount again after a broker restart.
    mount_id: u64,
    /// st_dev of the mounted filesystem (major, minor).
    dev: (u32, u32),
}

impl MountRef {
    /// Identifies the mount just made on the pinned directory `target`
    /// (an O_PATH fd of the directory as it was before the mount), which
    /// must be of type `fstype` and mounted on `target`'s own mount.
    pub fn after_mount(target: BorrowedFd<'_>, fstype: &str) -> Result<Self, MountRefError> {
        let parent = open_path(target, Path::new("..")).map_err(MountRefError::Reach)?;
        // The mount point's current name: it cannot change any more.
        let path = std::fs::read_link(format!("/proc/self/fd/{}", target.as_raw_fd()))
            .map_err(|e| MountRefError::Proc(e.to_string()))?;
        let leaf = path
            .file_name()
            .ok_or(MountRefError::Reach(Errno::ENOENT))?
            .to_owned();
        let under = mount_of(target)?;
        let root = open_path(parent.as_fd(), Path::new(&leaf)).map_err(MountRefError::Reach)?;
        let found = mount_of(root.as_fd())?;
        if found.unique_id == under.unique_id {
            return Err(MountRefError::Gone);
        }
        let entry = entry_by_id(found.mount_id)?.ok_or(MountRefError::Gone)?;
        if entry.fstype != fstype {
            return Err(MountRefError::WrongType {
                expected: fstype.to_owned(),
                found: crate::sanitize::display(entry.fstype.as_bytes()),
            });
        }
        if entry.parent_id != under.mount_id || entry.dev != found.dev {
            // Not mounted on `target` itself.
            return Err(MountRefError::Replaced {
                expected: under.mount_id,
                found: entry.parent_id,
            });
        }
        Ok(Self {
            parent,
            leaf,
            unique_id: found.unique_id,
            mount_id: found.mount_id,
            dev: found.dev,
        })
    }

    /// Finds a mount recorded by an earlier broker: the mount with this
    /// mountinfo id, device and type in /proc/self/mountinfo, its mount
    /// point's parent resolved with no symlink on the way
    /// ([`open_dir_no_symlinks`]), and the mount there must have
    /// `unique_id`.
    /// A record from a broker that kept no unique id (None) takes the
    /// mount found there by id, device and type.
    pub fn find(
        unique_id: Option<u64>,
        mount_id: u64,
        dev: (u32, u32),
        fstype: &str,
    ) -> Result<Self, MountRefError> {
        let entry = entry_by_id(mount_id)?
            .filter(|e| e.dev == dev && e.fstype == fstype)
            .ok_or(MountRefError::Gone)?;
        let (Some(parent_path), Some(leaf)) =
            (entry.mount_point.parent(), entry.mount_point.file_name())
        else {
            return Err(MountRefError::Reach(Errno::EINVAL));
        };
        let parent = open_dir_no_symlinks(parent_path).map_err(MountRefError::Reach)?;
        let unique_id = match unique_id {
            Some(id) => id,
            None => {
                let root =
                    open_path(parent.as_fd(), Path::new(leaf)).map_err(MountRefError::Reach)?;
                let found = mount_of(root.as_fd())?;
                if (found.mount_id, found.dev) != (mount_id, dev) {
                    return Err(MountRefError::Gone);
                }
                found.unique_id
            }
        };
        let found = Self {
            parent,
            leaf: leaf.to_owned(),
            unique_id,
            mount_id,
            dev,
        };
        drop(found.open_root()?);
        Ok(found)
    }

    pub fn unique_id(&self) -> u64 {
        self.unique_id
    }

    pub fn mount_id(&self) -> u64 {
        self.mount_id
    }

    pub fn dev(&self) -> (u32, u32) {
        self.dev
    }

    /// An O_PATH fd of the mount's root, reached from the parent without
    /// following a symlink, after checking it is the recorded mount.
    fn open_root(&self) -> Result<OwnedFd, MountRefError> {
        let root = match open_path(self.parent.as_fd(), Path::new(&self.leaf)) {
            Ok(fd) => fd,
            Err(Errno::ENOENT | Errno::ENOTDIR | Errno::ELOOP) => return Err(MountRefError::Gone),
            Err(errno) => return Err(MountRefError::Reach(errno)),
        };
        let found = mount_of(root.as_fd())?;
        if found.unique_id == self.unique_id {
            return Ok(root);
        }
        if found.unique_id == mount_of(self.parent.as_fd())?.unique_id {
            // Nothing is mounted on the mount point any more.
            return Err(MountRefError::Gone);
        }
        Err(MountRefError::Replaced {
            expected: self.mount_id,
            found: found.mount_id,
        })
    }

    /// Whether the mount is still where it was.
    pub fn is_mounted(&self) -> bool {
        self.open_root().is_ok()
    }

    /// Plain unmount (EBUSY while files are open on it): checked, then
    /// umount2 of `/proc/self/fd/<parent>/<name>` with UMOUNT_NOFOLLOW, so
    /// the walk starts at the held parent and the name is never a symlink.
    ///
    /// EBUSY is retried for a short while: a worker being spawned for
    /// another mount holds copies of every fd the broker's threads have
    /// open (this one's check included) from fork until its exec closes
    /// them, which on a loaded machine is long enough to be seen.
    pub fn unmount(&self) -> Result<(), UnmountError> {
        let mut path = PathBuf::from(format!("/proc/self/fd/{}", self.parent.as_raw_fd()));
        path.push(&self.leaf);
        let mut tries = 0;
        loop {
            drop(self.open_root()?);
            match nix::mount::umount2(&path, MntFlags::UMOUNT_NOFOLLOW) {
                Err(Errno::EBUSY) if tries < BUSY_RETRIES => {
                    tries += 1;
                    std::thread::sleep(BUSY_RETRY_WAIT);
                }
                r => return r.map_err(UnmountError::Umount),
            }
        }
    }

    /// Lazy unmount after aborting the FUSE connection, so that nothing
    /// blocks on a dead worker. The umount2 goes through an fd of the
    /// checked mount itself: no path is resolved after the check.
    pub fn detach(&self) -> Result<(), UnmountError> {
        let root = self.open_root()?;
        crate::mount::abort_connection(self.dev.1);
        let path = format!("/proc/self/fd/{}", root.as_raw_fd());
        // No UMOUNT_NOFOLLOW: the magic link is what names the mount.
        nix::mount::umount2(path.as_str(), MntFlags::MNT_DETACH).map_err(UnmountError::Umount)
    }
}

/// How often, and how far apart, an unmount that found the mount busy is
/// tried again (see `MountRef::unmount`): half a second in all.
const BUSY_RETRIES: u32 = 10;
const BUSY_RETRY_WAIT: std::time::Duration = std::time::Duration::from_millis(50);

/// Why an unmount or detach did not happen.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UnmountError {
    #[error(transparent)]
    Identity(#[from] MountRefError),
    #[error("umount2: {0}")]
    Umount(Errno),
}

fn open_path(dir: BorrowedFd<'_>, name: &Path) -> Result<OwnedFd, Errno> {
    openat(
        dir,
        name,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
}

/// Opens the directory at absolute `path` one component at a time, none of
/// them a symlink (what openat2's RESOLVE_NO_SYMLINKS does). Not openat2
/// itself: systemd's RestrictSUIDSGID= refuses it with ENOSYS (a seccomp
/// filter cannot read its flags), which made a broker restarted under the
/// unit drop every mount it should have adopted.
fn open_dir_no_symlinks(path: &Path) -> Result<OwnedFd, Errno> {
    let mut dir = open_path(nix::fcntl::AT_FDCWD, Path::new("/"))?;
    for component in path.components() {
        match component {
            Component::RootDir => {}
            Component::Normal(name) => dir = open_path(dir.as_fd(), Path::new(name))?,
            Component::CurDir | Component::ParentDir | Component::Prefix(_) => {
                return Err(Errno::EINVAL);
            }
        }
    }
    Ok(dir)
}

fn entry_by_id(mount_id: u64) -> Result<Option<MountEntry>, MountRefError> {
    Ok(read_mountinfo()
        .map_err(|e| MountRefError::Proc(e.to_string()))?
        .into_iter()
        .find(|e| e.mount_id == mount_id))
}

/// What identifies a mount, wherever it is attached (or before it is).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MountOf {
    /// STATX_MNT_ID_UNIQUE: never reused.
    pub unique_id: u64,
    /// The recyclable id of /proc/self/mountinfo.
    pub mount_id: u64,
    /// st_dev of the mounted filesystem (major, minor).
    pub dev: (u32, u32),
}

/// The identity of the mount `mount_fd` is the root of (a detached mount
/// from fsmount(2) included: it keeps its ids when attached).
pub fn identity(mount_fd: BorrowedFd<'_>) -> Result<MountOf, MountRefError> {
    mount_of(mount_fd)
}

/// statx(fd, "", AT_EMPTY_PATH | AT_STATX_DONT_SYNC) for the unique and
/// the mountinfo mount id and st_dev. Asking for no basic field with
/// DONT_SYNC keeps FUSE from sending GETATTR: a hung worker is never asked.
fn mount_of(fd: BorrowedFd<'_>) -> Result<MountOf, MountRefError> {
    let ask = |mask: libc::c_uint| -> Result<libc::statx, MountRefError> {
        // SAFETY: statx is plain data; all zeroes is a valid value.
        let mut stx: libc::statx = unsafe { std::mem::zeroed() };
        // SAFETY: a valid fd, a NUL-terminated empty path, and a pointer to
        // a statx buffer we own for the duration of the call.
        let r = unsafe {
            libc::statx(
                fd.as_raw_fd(),
                c"".as_ptr(),
                libc::AT_EMPTY_PATH | libc::AT_STATX_DONT_SYNC,
                mask,
                &mut stx,
            )
        };
        if r != 0 {
            return Err(MountRefError::Statx(Errno::last()));
        }
        if stx.stx_mask & mask != mask {
            return Err(MountRefError::Statx(Errno::EOPNOTSUPP));
        }
        Ok(stx)
    };
    let unique = ask(libc::STATX_MNT_ID_UNIQUE)?;
    let legacy = ask(libc::STATX_MNT_ID)?;
    Ok(MountOf {
        unique_id: unique.stx_mnt_id,
        mount_id: legacy.stx_mnt_id,
        dev: (legacy.stx_dev_major, legacy.stx_dev_minor),
    })
}

/// For log lines: the parent's current path and the name.
impl std::fmt::Display for MountRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parent = std::fs::read_link(format!("/proc/self/fd/{}", self.parent.as_raw_fd()))
            .unwrap_or_default();
        let shown = crate::sanitize::display(parent.join(&self.leaf).as_os_str().as_bytes());
        write!(f, "{shown} (mount id {})", self.mount_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scratch tree with tmpfs mounts, for root only.
    struct Tree(PathBuf);

    impl Tree {
        fn new(tag: &str) -> Option<Self> {
            if !crate::test_skip::require_root("mounting tmpfs") {
                return None;
            }
            let p = std::env::temp_dir()
                .canonicalize()
                .unwrap()
                .join(format!("safemount-mref-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).unwrap();
            Some(Self(p))
        }

        fn tmpfs(&self, rel: &str) -> PathBuf {
            let p = self.0.join(rel);
            std::fs::create_dir_all(&p).unwrap();
            nix::mount::mount(
                Some("tmpfs"),
                &p,
                Some("tmpfs"),
                nix::mount::MsFlags::empty(),
                None::<&str>,
            )
            .unwrap();
            p
        }
    }

    impl Drop for Tree {
        fn drop(&mut self) {
            for e in read_mountinfo().unwrap_or_default().iter().rev() {
                if e.mount_point.starts_with(&self.0) {
                    let _ = nix::mount::umount2(&e.mount_point, MntFlags::MNT_DETACH);
                }
            }
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn mounted_at(p: &Path) -> bool {
        read_mountinfo()
            .unwrap()
            .iter()
            .any(|e| e.mount_point == p && e.fstype == "tmpfs")
    }

    /// Mounts tmpfs on `rel` and identifies it as the broker does.
    fn ours(tree: &Tree, rel: &str) -> MountRef {
        let p = tree.0.join(rel);
        std::fs::create_dir_all(&p).unwrap();
        let pinned = nix::fcntl::open(
            &p,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .unwrap();
        tree.tmpfs(rel);
        MountRef::after_mount(pinned.as_fd(), "tmpfs").unwrap()
    }

    #[test]
    fn a_recorded_path_is_opened_with_no_symlink_on_the_way() {
        let base = std::env::temp_dir().join(format!("sm-nosym-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(base.join("a/b")).unwrap();
        std::os::unix::fs::symlink(base.join("a"), base.join("l")).unwrap();
        let opened = open_dir_no_symlinks(&base.join("a/b")).unwrap();
        let seen = std::fs::read_link(format!("/proc/self/fd/{}", opened.as_raw_fd())).unwrap();
        assert_eq!(seen, base.join("a/b"));
        assert_eq!(
            open_dir_no_symlinks(&base.join("l/b")).unwrap_err(),
            Errno::ENOTDIR
        );
        assert_eq!(
            open_dir_no_symlinks(&base.join("a/b/../b")).unwrap_err(),
            Errno::EINVAL
        );
        std::fs::remove_dir_all(&base).unwrap();
    }

    /// The attack of the security review: the owner of `x` (above the
    /// mount point `x/m`) renames it and plants `x -> victim`, where
    /// another mount sits at `victim/m`. Unmount and detach must act on
    /// the broker's own mount (now at `y/m`) and never on the victim.
    #[test]
    fn renamed_parent_and_planted_symlink_cannot_redirect() {
        let Some(tree) = Tree::new("swap") else {
            return;
        };
        for detach in [false, true] {
            let r = ours(&tree, "x/m");
            let victim = tree.tmpfs("victim/m");
            std::fs::rename(tree.0.join("x"), tree.0.join("y")).unwrap();
            std::os::unix::fs::symlink(tree.0.join("victim"), tree.0.join("x")).unwrap();
            assert!(r.is_mounted());
            if detach {
                r.detach().unwrap();
            } else {
                r.unmount().unwrap();
            }
            assert!(mounted_at(&victim), "the victim mount was unmounted");
            assert!(!mounted_at(&tree.0.join("y/m")), "our mount is still there");
            assert!(!r.is_mounted());
            assert_eq!(r.unmount(), Err(MountRefError::Gone.into()));
            nix::mount::umount2(&victim, MntFlags::empty()).unwrap();
            std::fs::remove_file(tree.0.join("x")).unwrap();
            std::fs::remove_dir_all(tree.0.join("y")).unwrap();
        }
    }

    /// Once the mount is gone, whatever is mounted there later is not
    /// ours: left alone, with the reason.
    #[test]
    fn a_later_mount_in_the_same_place_is_left_alone() {
        let Some(tree) = Tree::new("later") else {
            return;
        };
        let r = ours(&tree, "a/m");
        let p = tree.0.join("a/m");
        nix::mount::umount2(&p, MntFlags::empty()).unwrap();
        tree.tmpfs("a/m");
        assert!(matches!(r.unmount(), Err(UnmountError::Identity(_))));
        assert!(matches!(r.detach(), Err(UnmountError::Identity(_))));
        assert!(mounted_at(&p));
        // A mount stacked on top of ours hides it: not touched either.
        let r2 = ours(&tree, "b/m");
        tree.tmpfs("b/m");
        assert!(matches!(
            r2.unmount(),
            Err(UnmountError::Identity(MountRefError::Replaced { .. }))
        ));
        assert!(mounted_at(&tree.0.join("b/m")));
    }

    /// A restarted broker finds the mount by id, device and type.
    #[test]
    fn find_by_id_and_device() {
        let Some(tree) = Tree::new("find") else {
            return;
        };
        let r = ours(&tree, "p/m");
        let find = |unique, dev: (u32, u32), fstype| {
            MountRef::find(Some(unique), r.mount_id(), dev, fstype)
        };
        let again = find(r.unique_id(), r.dev(), "tmpfs").unwrap();
        assert_eq!(again.unique_id(), r.unique_id());
        let legacy = MountRef::find(None, r.mount_id(), r.dev(), "tmpfs").unwrap();
        assert_eq!(legacy.unique_id(), r.unique_id());
        let other_dev = (r.dev().0, r.dev().1 + 1);
        assert_eq!(
            find(r.unique_id(), other_dev, "tmpfs").unwrap_err(),
            MountRefError::Gone
        );
        assert_eq!(
            find(r.unique_id(), r.dev(), "fuse.safemount").unwrap_err(),
            MountRefError::Gone
        );
        assert!(matches!(
            find(r.unique_id() + 1, r.dev(), "tmpfs").unwrap_err(),
            MountRefError::Replaced { .. }
        ));
        again.unmount().unwrap();
        assert!(!r.is_mounted());
    }
}
