//! setattr: mode, owner, size (through the file writer's truncate),
//! atime/mtime/ctime with nanoseconds. ctime becomes now on every change
//! unless given. Setuid/setgid clearing: the caller says when
//! (`SetAttr::kill_suid_sgid`, from the FUSE layer's KILLPRIV_V2 rules);
//! which bits go is [`without_suid_sgid`].

use crate::ext4::Ext4;
use crate::ext4::error::{Error, Result};
use crate::ext4::ondisk::inode::{S_IFMT, S_ISGID, S_ISUID, S_IXGRP};
use crate::ext4::types::{Attr, FileKind, Ino, SetAttr, TimeSet};
use crate::ext4::{crypt, inode_flags};

impl Ext4 {
    pub fn setattr(&self, ino: Ino, set: SetAttr) -> Result<Attr> {
        // A truncate waits for the file's write in flight.
        let _content = set.size.map(|_| self.rw.content_locks.lock(ino));
        let mut txn = self.begin()?;
        let mut inode = txn.inode(ino)?;
        if inode.links_count == 0 && self.inode(ino).is_err() {
            return Err(Error::NotFound);
        }
        // notify_change and do_truncate: an immutable inode keeps
        // everything, an append-only one its size, mode, owner and
        // explicit times (utime to a given time; "now" is allowed).
        // Through FUSE one explicit time is let through: a regular file's
        // mtime alone, which is also how the kernel sends the mtime its
        // page cache kept after an append. The kernel never sends an
        // explicit atime, nor a directory's mtime, of its own.
        inode_flags::ensure_mutable(&inode)?;
        if inode_flags::is_append_only(&inode) {
            let given = |t: Option<TimeSet>| matches!(t, Some(TimeSet::At(_)));
            if given(set.atime) || (given(set.mtime) && inode.kind != FileKind::RegularFile) {
                return Err(Error::NotPermitted);
            }
        }
        if set.size.is_some() {
            // fsverity_prepare_setattr: a verity file keeps its size.
            inode_flags::ensure_content_mutable(&inode)?;
        }
        if set.size.is_some() || set.mode.is_some() || set.uid.is_some() || set.gid.is_some() {
            inode_flags::ensure_unpinned(&inode)?;
        }
        // fscrypt_prepare_setattr: a size change needs the key.
        if set.size.is_some() {
            crypt::require_key(&inode)?;
        }
        let now = self.now();
        let pick = |t: TimeSet| match t {
            TimeSet::Now => now,
            TimeSet::At(ts) => ts,
        };
        if let Some(size) = set.size {
            match inode.kind {
                FileKind::RegularFile => {}
                FileKind::Directory => return Err(Error::IsDir),
                _ => return Err(Error::Invalid("truncate of a special file")),
            }
            if size != inode.size {
                self.truncate_in(&mut txn, &mut inode, size)?;
                inode.mtime = now;
            }
        }
        if let Some(mode) = set.mode {
            inode.mode = (inode.mode & S_IFMT) | (mode & 0o7777);
            // ext4_setattr -> posix_acl_chmod: an access ACL follows.
            self.acl_chmod(&mut txn, &mut inode)?;
        }
        if let Some(uid) = set.uid {
            inode.uid = uid;
        }
        if let Some(gid) = set.gid {
            inode.gid = gid;
        }
        if set.kill_suid_sgid && inode.kind != FileKind::Directory {
            inode.mode = without_suid_sgid(inode.mode);
        }
        if let Some(t) = set.atime {
            inode.atime = pick(t);
        }
        if let Some(t) = set.mtime {
            inode.mtime = pick(t);
        }
        inode.ctime = set.ctime.map_or(now, pick);
        let attr = self.attr_of(&inode);
        let mode = inode.mode;
        txn.put_inode(inode);
        txn.commit()?;
        if set.mode.is_some() || set.kill_suid_sgid {
            self.nosec_clear(ino, Some(mode));
        }
        Ok(attr)
    }
}

/// is_sxid: set-user-ID, or set-group-ID with group execute (setgid
/// without group execute marks mandatory locking, not privilege).
pub(crate) fn is_sxid(mode: u16) -> bool {
    mode & S_ISUID != 0 || mode & (S_ISGID | S_IXGRP) == (S_ISGID | S_IXGRP)
}

/// `mode` without the bits [`is_sxid`] looks at: the VFS's
/// should_remove_suid and notify_change.
pub(crate) fn without_suid_sgid(mode: u16) -> u16 {
    let mut m = mode & !S_ISUID;
    if m & (S_ISGID | S_IXGRP) == (S_ISGID | S_IXGRP) {
        m &= !S_ISGID;
    }
    m
}
