//! Inode flags as `lsattr` and `chattr` see them (FS_IOC_GETFLAGS and
//! SETFLAGS, FS_IOC_FSGETXATTR and FSSETXATTR), with ext4's rules, and
//! what the immutable and append-only flags forbid.
//!
//! On a local filesystem the VFS enforces immutable and append-only from
//! the inode's S_IMMUTABLE/S_APPEND; through FUSE the kernel does not know
//! them, so the engine refuses with EPERM what the VFS and ext4 refuse:
//! any change to an immutable inode (data, size, attributes, links, names
//! in it, xattrs); for an append-only one, writes below its end, truncation,
//! attribute changes, links and removal (an append-only directory takes new
//! names but loses none). What the kernel checks itself before asking
//! (owner, CAP_LINUX_IMMUTABLE for +i/+a) is not repeated here.
//!
//! A verity file's content is read-only, as fs/verity/open.c has it:
//! no open for writing, no truncation, no data write or fallocate (EPERM);
//! its metadata (mode, owner, times, names, links, xattrs) still changes.

use super::ondisk::inode::{
    EXT4_APPEND_FL, EXT4_CASEFOLD_FL, EXT4_COMPR_FL, EXT4_COMPRBLK_FL, EXT4_DAX_FL,
    EXT4_DIRSYNC_FL, EXT4_DIRTY_FL, EXT4_ENCRYPT_FL, EXT4_EXTENTS_FL, EXT4_IMMUTABLE_FL,
    EXT4_INDEX_FL, EXT4_INLINE_DATA_FL, EXT4_JOURNAL_DATA_FL, EXT4_NOATIME_FL, EXT4_NOCOMPR_FL,
    EXT4_NODUMP_FL, EXT4_NOTAIL_FL, EXT4_PROJINHERIT_FL, EXT4_SECRM_FL, EXT4_SYNC_FL,
    EXT4_TOPDIR_FL, EXT4_UNRM_FL, EXT4_VERITY_FL, Inode,
};
use super::ondisk::superblock as sbf;
use super::{Error, Ext4, FileKind, Ino, Result, crypt};

/// The formerly-EOFBLOCKS bit, still settable (EXT4_FL_USER_MODIFIABLE).
const EXT4_EOFBLOCKS_FL: u32 = 0x0040_0000;

/// EXT4_FL_USER_MODIFIABLE.
const USER_MODIFIABLE: u32 = EXT4_SECRM_FL
    | EXT4_UNRM_FL
    | EXT4_COMPR_FL
    | EXT4_SYNC_FL
    | EXT4_IMMUTABLE_FL
    | EXT4_APPEND_FL
    | EXT4_NODUMP_FL
    | EXT4_NOATIME_FL
    | EXT4_JOURNAL_DATA_FL
    | EXT4_NOTAIL_FL
    | EXT4_DIRSYNC_FL
    | EXT4_TOPDIR_FL
    | EXT4_EXTENTS_FL
    | EXT4_EOFBLOCKS_FL
    | EXT4_DAX_FL
    | EXT4_PROJINHERIT_FL
    | EXT4_CASEFOLD_FL;

/// EXT4_FL_USER_VISIBLE.
const USER_VISIBLE: u32 = USER_MODIFIABLE
    | EXT4_DIRTY_FL
    | EXT4_COMPRBLK_FL
    | EXT4_NOCOMPR_FL
    | EXT4_ENCRYPT_FL
    | EXT4_INDEX_FL
    | EXT4_VERITY_FL
    | EXT4_INLINE_DATA_FL;

/// The flags FS_IOC_FSGETXATTR shows, and their FS_XFLAG_* bits.
const XFLAGS: [(u32, u32); 7] = [
    (EXT4_SYNC_FL, 0x0000_0020),
    (EXT4_IMMUTABLE_FL, 0x0000_0008),
    (EXT4_APPEND_FL, 0x0000_0010),
    (EXT4_NODUMP_FL, 0x0000_0080),
    (EXT4_NOATIME_FL, 0x0000_0040),
    (EXT4_PROJINHERIT_FL, 0x0000_0200),
    (EXT4_DAX_FL, 0x0000_8000),
];

/// struct fsxattr, as far as ext4 fills it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FsXattr {
    pub xflags: u32,
    pub projid: u32,
}

pub(crate) fn is_immutable(inode: &Inode) -> bool {
    inode.flags & EXT4_IMMUTABLE_FL != 0
}

pub(crate) fn is_append_only(inode: &Inode) -> bool {
    inode.flags & EXT4_APPEND_FL != 0
}

/// `chattr +A`: reads leave the access time alone.
pub(crate) fn is_noatime(inode: &Inode) -> bool {
    inode.flags & EXT4_NOATIME_FL != 0
}

pub(crate) fn is_verity(inode: &Inode) -> bool {
    inode.flags & EXT4_VERITY_FL != 0
}

/// EPERM unless the content of `inode` may change: neither immutable nor
/// a verity file (fsverity_file_open, fsverity_prepare_setattr).
pub(crate) fn ensure_content_mutable(inode: &Inode) -> Result<()> {
    if is_verity(inode) {
        return Err(Error::NotPermitted);
    }
    ensure_mutable(inode)
}

/// EPERM unless `inode` may change at all (not immutable).
pub(crate) fn ensure_mutable(inode: &Inode) -> Result<()> {
    if is_immutable(inode) {
        return Err(Error::NotPermitted);
    }
    Ok(())
}

/// EPERM for an immutable or append-only inode: its attributes, size,
/// links and xattrs stay as they are.
pub(crate) fn ensure_unpinned(inode: &Inode) -> Result<()> {
    if is_immutable(inode) || is_append_only(inode) {
        return Err(Error::NotPermitted);
    }
    Ok(())
}

/// EPERM unless an entry may be removed from `dir` (may_delete): neither
/// the directory nor the inode the entry names is immutable or
/// append-only.
pub(crate) fn ensure_removable(dir: &Inode, victim: &Inode) -> Result<()> {
    ensure_unpinned(dir)?;
    ensure_unpinned(victim)
}

/// ext4_mask_flags: the flags that make sense for a kind of inode.
fn mask_for(kind: FileKind, flags: u32) -> u32 {
    match kind {
        FileKind::Directory => flags,
        FileKind::RegularFile => flags & !(EXT4_DIRSYNC_FL | EXT4_TOPDIR_FL | EXT4_CASEFOLD_FL),
        _ => flags & (EXT4_NODUMP_FL | EXT4_NOATIME_FL),
    }
}

fn to_xflags(flags: u32) -> u32 {
    XFLAGS
        .iter()
        .filter(|(f, _)| flags & f != 0)
        .fold(0, |x, (_, xf)| x | xf)
}

fn from_xflags(xflags: u32) -> u32 {
    XFLAGS
        .iter()
        .filter(|(_, xf)| xflags & xf != 0)
        .fold(0, |f, (fl, _)| f | fl)
}

impl Ext4 {
    /// may_open: an immutable or verity file opens for reading only; an
    /// append-only one for writing only with O_APPEND and never with
    /// O_TRUNC. Then ext4_file_open: an encrypted regular file needs its
    /// key, and a verity file's metadata is loaded, so bad metadata fails
    /// the open (fsverity_file_open).
    pub fn check_open(&self, ino: Ino, write: bool, append: bool, truncate: bool) -> Result<()> {
        let inode = self.inode(ino)?;
        if write || truncate {
            ensure_content_mutable(&inode)?;
        }
        if is_append_only(&inode) && (truncate || (write && !append)) {
            return Err(Error::NotPermitted);
        }
        // ext4_file_open's fscrypt_file_open, then fsverity_file_open.
        if inode.kind == FileKind::RegularFile {
            crypt::require_key(&inode)?;
        }
        self.open_verity(&inode)
    }

    /// A write(2) through a handle opened for writing, as ext4_write_checks
    /// checks it: EPERM once the file is immutable. (Append-only is a rule
    /// of open's: an fd opened before chattr +a writes anywhere.)
    pub fn check_write(&self, ino: Ino) -> Result<()> {
        ensure_mutable(&*self.inode(ino)?)
    }

    /// FS_IOC_GETFLAGS.
    pub fn get_flags(&self, ino: Ino) -> Result<u32> {
        Ok(self.inode(ino)?.flags & USER_VISIBLE)
    }

    /// FS_IOC_FSGETXATTR.
    pub fn get_fsxattr(&self, ino: Ino) -> Result<FsXattr> {
        let inode = self.inode(ino)?;
        let projid = if self.sb.has_ro_compat(sbf::RO_COMPAT_PROJECT) {
            inode.projid
        } else {
            0
        };
        Ok(FsXattr {
            xflags: to_xflags(inode.flags & USER_VISIBLE),
            projid,
        })
    }

    /// FS_IOC_SETFLAGS (ext4_fileattr_set with flags): unknown bits and
    /// bits that do not fit the inode's kind are EOPNOTSUPP, visible but
    /// unsettable bits are ignored; while immutable stays set nothing else
    /// may change; data journaling needs `privileged` (CAP_SYS_RESOURCE;
    /// the caller passes whether the request came from root). Changing
    /// the extents flag (a migration between block maps) is not supported.
    pub fn set_flags(&self, ino: Ino, flags: u32, privileged: bool) -> Result<()> {
        self.change_flags(ino, privileged, |_| Ok((flags, None)))
    }

    /// FS_IOC_FSSETXATTR: the flags FSGETXATTR shows, and the project id
    /// (which only a filesystem with the project feature has).
    pub fn set_fsxattr(&self, ino: Ino, fa: FsXattr, privileged: bool) -> Result<()> {
        let has_project = self.sb.has_ro_compat(sbf::RO_COMPAT_PROJECT);
        self.change_flags(ino, privileged, |old| {
            let keep = old & USER_VISIBLE & !from_xflags(u32::MAX);
            let projid = match (has_project, fa.projid) {
                (true, p) => Some(p),
                (false, 0) => None,
                (false, _) => {
                    return Err(Error::Unsupported(
                        "project ids need the project feature".into(),
                    ));
                }
            };
            Ok((keep | from_xflags(fa.xflags), projid))
        })
    }

    /// The common part of SETFLAGS and FSSETXATTR; `wanted` maps the old
    /// flags to the requested ones and maybe a project id.
    fn change_flags(
        &self,
        ino: Ino,
        privileged: bool,
        wanted: impl FnOnce(u32) -> Result<(u32, Option<u32>)>,
    ) -> Result<()> {
        let mut txn = self.begin()?;
        let mut inode = txn.inode(ino)?;
        let old = inode.flags;
        let (flags, projid) = wanted(old)?;
        if flags & !USER_VISIBLE != 0 {
            return Err(Error::Unsupported("unknown inode flags".into()));
        }
        let flags = flags & USER_MODIFIABLE;
        if mask_for(inode.kind, flags) != flags {
            return Err(Error::Unsupported(
                "inode flags that do not apply to this kind of file".into(),
            ));
        }
        let changed = (flags ^ old) & USER_MODIFIABLE;
        // ext4_ioctl_check_immutable: with immutable set and kept, only
        // immutable itself could change, and it does not.
        if old & EXT4_IMMUTABLE_FL != 0
            && flags & EXT4_IMMUTABLE_FL != 0
            && (changed != 0 || projid.is_some_and(|p| p != inode.projid))
        {
            return Err(Error::NotPermitted);
        }
        if changed & EXT4_JOURNAL_DATA_FL != 0 && !privileged {
            return Err(Error::NotPermitted);
        }
        if changed & EXT4_EXTENTS_FL != 0 {
            return Err(Error::Unsupported(
                "changing the extents flag (block map migration)".into(),
            ));
        }
        if changed & EXT4_CASEFOLD_FL != 0 {
            // ext4_ioctl_setflags: on a casefold filesystem, a directory,
            // while it is empty. (An encrypted casefolded directory is one
            // this engine refuses to serve: not made here either.)
            if !self.sb.has_incompat(sbf::INCOMPAT_CASEFOLD) {
                return Err(Error::Unsupported(
                    "the casefold flag needs the casefold feature".into(),
                ));
            }
            if inode.kind != FileKind::Directory {
                return Err(Error::NotDir);
            }
            if crypt::is_encrypted(&inode) {
                return Err(Error::Unsupported("encrypted casefolded directory".into()));
            }
            if !self.dir_is_empty(&mut txn, &mut inode)? {
                return Err(Error::NotEmpty);
            }
        }
        if changed & EXT4_DAX_FL != 0
            && flags & EXT4_DAX_FL != 0
            && (inode.flags & (EXT4_INLINE_DATA_FL | EXT4_VERITY_FL | EXT4_ENCRYPT_FL) != 0
                || flags & EXT4_JOURNAL_DATA_FL != 0)
        {
            // dax_compatible.
            return Err(Error::Unsupported("DAX with this file".into()));
        }
        inode.flags = (old & !USER_MODIFIABLE) | flags | (old & EXT4_EXTENTS_FL);
        if let Some(p) = projid {
            inode.projid = p;
        }
        inode.ctime = self.now();
        // ext4_ioctl_setflags sets ctime even when nothing changed.
        txn.put_inode(inode);
        txn.commit()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_match_the_kernel() {
        // The values of EXT4_FL_USER_MODIFIABLE and _VISIBLE in 6.x.
        assert_eq!(USER_MODIFIABLE, 0x624B_C0FF);
        assert_eq!(USER_VISIBLE, 0x725B_DFFF);
        assert_eq!(from_xflags(to_xflags(USER_VISIBLE)), 0x2200_00F8);
    }
}
