//! rename(2) with NOREPLACE, EXCHANGE and WHITEOUT (ext4_rename,
//! ext4_cross_rename): all checks first, then the edits, one transaction.

use std::borrow::Cow;

use super::{check_new_name, set_rdev};
use crate::ext4::crypt;
use crate::ext4::error::{Error, Result};
use crate::ext4::file::Mapping;
use crate::ext4::inode_flags;
use crate::ext4::ondisk::dir_entry::EXT4_NAME_LEN;
use crate::ext4::ondisk::inode::{EXT4_EXTENTS_FL, EXT4_INLINE_DATA_FL, Inode, S_IFCHR};
use crate::ext4::types::{FileKind, Ino, ROOT_INO, RenameFlags};
use crate::ext4::{Ext4, Txn};

/// Bound on the ".." walk of the rename-into-own-subtree check.
const MAX_ANCESTRY: usize = 1 << 16;

impl Ext4 {
    /// Where a directory's '..' lives: its first block, or its inode when
    /// it is inline (or block 0 is not mapped).
    fn dotdot_block(&self, d: &Inode) -> u64 {
        match self.map_block(d, 0) {
            Ok(Mapping::Mapped { pblk, .. }) if !d.has_flag(EXT4_INLINE_DATA_FL) => pblk,
            _ => self.inode_block(d.ino),
        }
    }

    /// Whether `ancestor` is `dir` or one of its ancestors (".." walk).
    fn is_ancestor(&self, txn: &mut Txn<'_>, ancestor: Ino, mut dir: Ino) -> Result<bool> {
        for _ in 0..MAX_ANCESTRY {
            if dir == ancestor {
                return Ok(true);
            }
            if dir == ROOT_INO {
                return Ok(false);
            }
            let mut d = self.txn_dir(txn, dir)?;
            let (up, _) = self.dir_find(txn, &mut d, b"..")?.ok_or_else(|| {
                Error::corrupt(format!("directory {dir}: no '..'"), self.dotdot_block(&d))
            })?;
            if up == dir {
                return Ok(false);
            }
            dir = up;
        }
        Err(Error::corrupt("directory tree deeper than 65536 levels", 0))
    }

    pub fn rename(
        &self,
        parent: Ino,
        name: &[u8],
        newparent: Ino,
        newname: &[u8],
        flags: RenameFlags,
    ) -> Result<Option<Ino>> {
        if name.len() > EXT4_NAME_LEN {
            return Err(Error::NameTooLong);
        }
        check_new_name(newname).map_err(|e| match e {
            Error::Exists => Error::Invalid("rename to '.' or '..'"),
            e => e,
        })?;
        if name == b"." || name == b".." || name.is_empty() {
            return Err(Error::Invalid("rename of '.' or '..'"));
        }
        if flags.exchange && (flags.noreplace || flags.whiteout) {
            return Err(Error::Invalid("RENAME_EXCHANGE with other flags"));
        }
        let mut txn = self.begin()?;
        let same = parent == newparent;
        let mut old_dir = self.txn_dir(&mut txn, parent)?;
        let mut new_dir_own = if same {
            None
        } else {
            Some(self.txn_dir(&mut txn, newparent)?)
        };
        let stored = self
            .stored_name(&mut txn, &mut old_dir, name)?
            .ok_or(Error::NotFound)?;
        let name: &[u8] = &stored;
        let (src, _) = self
            .dir_find(&mut txn, &mut old_dir, name)?
            .ok_or(Error::NotFound)?;
        // A no-key name that names nothing: no target (and the key check
        // below refuses the rename).
        let (stored_new, tgt) = {
            let nd = new_dir_own.as_mut().unwrap_or(&mut old_dir);
            match self.stored_name(&mut txn, nd, newname)? {
                Some(stored) => {
                    let t = self.dir_find(&mut txn, nd, &stored)?.map(|t| t.0);
                    (stored, t)
                }
                None => (Cow::Borrowed(newname), None),
            }
        };
        let newname: &[u8] = &stored_new;
        if flags.noreplace && tgt.is_some() {
            return Err(Error::Exists);
        }
        if flags.exchange && tgt.is_none() {
            return Err(Error::NotFound);
        }
        if tgt == Some(src) {
            // Two names of one inode: nothing to do (POSIX).
            return Ok(None);
        }
        let mut src_inode = txn.inode(src)?;
        let src_dir = src_inode.kind == FileKind::Directory;
        let mut tgt_inode = match tgt {
            Some(t) => Some(txn.inode(t)?),
            None => None,
        };
        let tgt_dir = tgt_inode
            .as_ref()
            .is_some_and(|t| t.kind == FileKind::Directory);
        // may_delete of the source, and of the target or may_create in
        // the new directory: immutable and append-only names stay.
        inode_flags::ensure_removable(&old_dir, &src_inode)?;
        {
            let nd = new_dir_own.as_ref().unwrap_or(&old_dir);
            match &tgt_inode {
                Some(t) => inode_flags::ensure_removable(nd, t)?,
                None => inode_flags::ensure_mutable(nd)?,
            }
        }
        // fscrypt_prepare_rename: both directories' keys.
        crypt::require_key(&old_dir)?;
        if let Some(nd) = new_dir_own.as_ref() {
            crypt::require_key(nd)?;
        }
        if !same {
            if src_dir && self.is_ancestor(&mut txn, src, newparent)? {
                return Err(Error::Invalid("rename of a directory into itself"));
            }
            if flags.exchange && tgt_dir && self.is_ancestor(&mut txn, tgt.unwrap_or(0), parent)? {
                return Err(Error::Invalid("rename of a directory into itself"));
            }
        }
        let now = self.now();
        if flags.exchange {
            let Some(mut t) = tgt_inode else {
                return Err(Error::NotFound);
            };
            if let Some(nd) = new_dir_own.as_ref() {
                if src_dir && !tgt_dir && self.dir_link_max(nd) {
                    return Err(Error::TooManyLinks);
                }
                if tgt_dir && !src_dir && self.dir_link_max(&old_dir) {
                    return Err(Error::TooManyLinks);
                }
            }
            self.dir_set(&mut txn, &mut old_dir, name, t.ino, t.kind)?;
            {
                let nd = new_dir_own.as_mut().unwrap_or(&mut old_dir);
                self.dir_set(&mut txn, nd, newname, src, src_inode.kind)?;
            }
            if !same {
                if src_dir {
                    self.dir_set(
                        &mut txn,
                        &mut src_inode,
                        b"..",
                        newparent,
                        FileKind::Directory,
                    )?;
                }
                if tgt_dir {
                    self.dir_set(&mut txn, &mut t, b"..", parent, FileKind::Directory)?;
                }
                if let Some(nd) = new_dir_own.as_mut() {
                    if src_dir && !tgt_dir {
                        Self::dec_count(&mut old_dir);
                        self.inc_count(&mut txn, nd);
                    }
                    if tgt_dir && !src_dir {
                        Self::dec_count(nd);
                        self.inc_count(&mut txn, &mut old_dir);
                    }
                }
            }
            src_inode.ctime = now;
            t.ctime = now;
            old_dir.mtime = now;
            old_dir.ctime = now;
            if let Some(nd) = new_dir_own.as_mut() {
                nd.mtime = now;
                nd.ctime = now;
            }
            txn.put_inode(src_inode);
            txn.put_inode(t);
            txn.put_inode(old_dir);
            if let Some(nd) = new_dir_own {
                txn.put_inode(nd);
            }
            txn.commit()?;
            return Ok(None);
        }
        if tgt_inode.is_some() {
            if src_dir && !tgt_dir {
                return Err(Error::NotDir);
            }
            if !src_dir && tgt_dir {
                return Err(Error::IsDir);
            }
        }
        let refused = match tgt_inode.as_mut() {
            Some(t) => (tgt_dir && !self.dir_is_empty(&mut txn, t)?).then_some(Error::NotEmpty),
            None if src_dir && !same => {
                let nd = new_dir_own.as_mut().unwrap_or(&mut old_dir);
                self.dir_link_max(nd).then_some(Error::TooManyLinks)
            }
            None => None,
        };
        if let Some(e) = refused {
            if flags.whiteout {
                // ext4_rename has put the whiteout in place before these
                // checks; undoing it (ext4_resetent -> ext4_setent) stamps
                // the old directory.
                old_dir.mtime = now;
                old_dir.ctime = now;
                txn.put_inode(old_dir);
                txn.commit()?;
            }
            return Err(e);
        }
        // The whiteout is made first so a full inode table fails cleanly.
        let whiteout = if flags.whiteout {
            let mut w = self.new_inode(&mut txn, &old_dir, S_IFCHR, 0, 0)?;
            w.flags &= !EXT4_EXTENTS_FL;
            set_rdev(&mut w.i_block, 0);
            // __ext4_new_inode -> ext4_init_acl: a default ACL on the
            // directory gives the whiteout an access ACL too.
            self.acl_init(&mut txn, &old_dir, &mut w, 0)?;
            Some(w)
        } else {
            None
        };
        {
            let nd = new_dir_own.as_mut().unwrap_or(&mut old_dir);
            if tgt.is_some() {
                self.dir_set(&mut txn, nd, newname, src, src_inode.kind)?;
            } else {
                self.dir_add(&mut txn, nd, newname, src, src_inode.kind)?;
            }
        }
        match &whiteout {
            Some(w) => self.dir_set(&mut txn, &mut old_dir, name, w.ino, FileKind::CharDevice)?,
            None => {
                self.dir_remove(&mut txn, &mut old_dir, name)?;
            }
        }
        let mut released = None;
        if let Some(mut t) = tgt_inode {
            Self::dec_count(&mut t);
            t.ctime = now;
            if tgt_dir {
                t.links_count = 0;
                t.size = 0;
            }
            if t.links_count == 0 {
                released = Some(t.ino);
            }
            txn.put_inode(t);
        }
        if src_dir {
            if !same {
                self.dir_set(
                    &mut txn,
                    &mut src_inode,
                    b"..",
                    newparent,
                    FileKind::Directory,
                )?;
            }
            Self::dec_count(&mut old_dir);
            if tgt.is_none() {
                let nd = new_dir_own.as_mut().unwrap_or(&mut old_dir);
                self.inc_count(&mut txn, nd);
            }
        }
        src_inode.ctime = now;
        old_dir.mtime = now;
        old_dir.ctime = now;
        if let Some(nd) = new_dir_own.as_mut() {
            nd.mtime = now;
            nd.ctime = now;
        }
        txn.put_inode(src_inode);
        txn.put_inode(old_dir);
        if let Some(nd) = new_dir_own {
            txn.put_inode(nd);
        }
        if let Some(w) = whiteout {
            txn.put_inode(w);
        }
        if let Some(r) = released {
            txn.orphan_add(r)?;
        }
        txn.commit()?;
        Ok(released)
    }
}
