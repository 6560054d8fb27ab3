//! Name operations: create (regular files, devices, fifos, sockets),
//! mkdir, symlink, link, unlink, rmdir and rename (with NOREPLACE,
//! EXCHANGE and WHITEOUT), after the kernel's fs/ext4/namei.c. Each is
//! one transaction; errors come before any change (names are validated
//! first, targets looked up, then the edits made).
//!
//! Link counts follow ext4_inc_count / ext4_dec_count: an indexed
//! directory whose count would pass EXT4_LINK_MAX (or already did) shows
//! 1 with the dir_nlink feature; directories never drop below 2 through a
//! child's removal.
//!
//! Inline-data directories (see `dir::inline`): new directories on an
//! inline_data filesystem start inline, entries go inline until the
//! inode is full, then the directory becomes a block directory.

#[cfg(test)]
mod casefold_tests;
mod rename;

use std::borrow::Cow;
use std::collections::HashMap;

use crate::ext4::crypt::{self, nokey, nokey::Ciphertext};
use crate::ext4::dir::block::{self as dir_block, DirBlocks, DirCtx, Found, init_dir_block};
use crate::ext4::error::{Error, Result};
use crate::ext4::inode_flags;
use crate::ext4::ondisk::dir_entry::{DirentFormat, EXT4_NAME_LEN, file_type_of};
use crate::ext4::ondisk::inode::{
    EXT4_CASEFOLD_FL, EXT4_EXTENTS_FL, EXT4_INDEX_FL, I_BLOCK_SIZE, Inode, S_IFDIR, S_IFLNK,
    inherited_flags, kind_of_mode,
};
use crate::ext4::ondisk::superblock::{
    COMPAT_DIR_INDEX, INCOMPAT_FILETYPE, INCOMPAT_LARGEDIR, RO_COMPAT_DIR_NLINK,
};
use crate::ext4::types::{Attr, FileKind, Ino};
use crate::ext4::{Ext4, Txn};

/// EXT4_LINK_MAX.
pub(crate) const EXT4_LINK_MAX: u16 = 65000;

/// A directory's blocks seen through a transaction.
pub(crate) struct TxnDir<'a, 'fs> {
    fs: &'fs Ext4,
    txn: &'a mut Txn<'fs>,
    pub(crate) inode: &'a mut Inode,
    map: HashMap<u64, u64>,
}

impl<'a, 'fs> TxnDir<'a, 'fs> {
    pub(crate) fn new(txn: &'a mut Txn<'fs>, inode: &'a mut Inode) -> Self {
        TxnDir {
            fs: txn.fs(),
            txn,
            inode,
            map: HashMap::new(),
        }
    }

    /// The physical block of `lblk`, as this transaction sees the tree:
    /// an earlier edit in it (a new entry that grew the directory) may
    /// have moved the tree to blocks only the transaction holds yet.
    fn pblk(&mut self, lblk: u64) -> Result<u64> {
        if let Some(p) = self.map.get(&lblk) {
            return Ok(*p);
        }
        match self.fs.lookup_written(self.txn, self.inode, lblk)? {
            Some(pblk) => {
                self.map.insert(lblk, pblk);
                Ok(pblk)
            }
            None => Err(Error::corrupt(
                format!("directory {}: hole at logical block {lblk}", self.inode.ino),
                self.fs.inode_block(self.inode.ino),
            )),
        }
    }
}

impl DirBlocks for TxnDir<'_, '_> {
    fn nblocks(&self) -> u64 {
        self.inode.size_in_blocks(self.fs.block_size())
    }

    fn read(&mut self, lblk: u64) -> Result<Vec<u8>> {
        let p = self.pblk(lblk)?;
        Ok(self.txn.block(p)?.to_vec())
    }

    fn write(&mut self, lblk: u64, data: &[u8]) -> Result<()> {
        let p = self.pblk(lblk)?;
        let b = self.txn.block_mut(p)?;
        if b.len() != data.len() {
            return Err(Error::Invalid("directory block of the wrong size"));
        }
        b.copy_from_slice(data);
        Ok(())
    }

    fn append(&mut self) -> Result<u64> {
        // Map every existing block first: growing the tree may move its
        // leaves to blocks only this transaction has.
        let n = self.nblocks();
        for l in 0..n {
            self.pblk(l)?;
        }
        let runs = self.fs.map_alloc(self.txn, self.inode, n, 1, false)?;
        let pblk = runs
            .first()
            .filter(|r| r.0 == n && r.2 >= 1)
            .map(|r| r.1)
            .ok_or(Error::NoSpace)?;
        self.txn.block_new(pblk)?;
        self.map.insert(n, pblk);
        let bs = u64::from(self.fs.block_size());
        self.inode.size = n.saturating_add(1).saturating_mul(bs);
        Ok(n)
    }

    fn is_indexed(&self) -> bool {
        self.inode.has_flag(EXT4_INDEX_FL) && self.fs.sb().has_compat(COMPAT_DIR_INDEX)
    }

    fn set_indexed(&mut self, on: bool) {
        if on {
            self.inode.flags |= EXT4_INDEX_FL;
        } else {
            self.inode.flags &= !EXT4_INDEX_FL;
        }
    }

    fn ino(&self) -> Ino {
        self.inode.ino
    }
    fn block_of(&mut self, lblk: u64) -> u64 {
        self.pblk(lblk).unwrap_or(0)
    }
}

/// Checks a name for a new entry: not empty, no '/' or NUL, at most 255
/// bytes, not "." or "..".
pub(crate) fn check_new_name(name: &[u8]) -> Result<()> {
    if name.len() > EXT4_NAME_LEN {
        return Err(Error::NameTooLong);
    }
    if name.is_empty() {
        return Err(Error::NotFound);
    }
    if name.contains(&b'/') || name.contains(&0) {
        return Err(Error::Invalid("file name with '/' or NUL"));
    }
    if name == b"." || name == b".." {
        return Err(Error::Exists);
    }
    Ok(())
}

/// Kernel `new_decode_dev`: (major, minor) of a userspace dev_t.
fn decode_dev(dev: u32) -> (u32, u32) {
    ((dev & 0xfff00) >> 8, (dev & 0xff) | ((dev >> 12) & 0xfff00))
}

/// Stores a device number in i_block as ext4 does: the old 16-bit
/// encoding in i_block[0] when major and minor fit 8 bits, else the new
/// encoding in i_block[1].
fn set_rdev(i_block: &mut [u8; I_BLOCK_SIZE], rdev: u32) {
    i_block.fill(0);
    let (major, minor) = decode_dev(rdev);
    if major < 256 && minor < 256 {
        i_block[0..4].copy_from_slice(&((major << 8) | minor).to_le_bytes());
    } else {
        let new = (minor & 0xff) | (major << 8) | ((minor & !0xff) << 12);
        i_block[4..8].copy_from_slice(&new.to_le_bytes());
    }
}

impl Ext4 {
    pub(crate) fn dir_ctx(&self, dir: &Inode) -> DirCtx {
        let sb = self.sb();
        DirCtx {
            fmt: DirentFormat {
                filetype: sb.has_incompat(INCOMPAT_FILETYPE),
                block_size: self.block_size(),
                inodes_count: sb.s_inodes_count,
            },
            csum_seed: self.has_metadata_csum().then(|| self.inode_csum_seed(dir)),
            dir_index: sb.has_compat(COMPAT_DIR_INDEX),
            max_levels: if sb.has_incompat(INCOMPAT_LARGEDIR) {
                3
            } else {
                2
            },
            def_hash_version: sb.s_def_hash_version,
            s_flags: sb.s_flags,
            hash_seed: sb.s_hash_seed,
            casefold: self.is_casefolded(dir),
        }
    }

    /// A directory inode through the transaction (NotDir otherwise,
    /// NotFound once deleted), converted from inline data to a block
    /// directory if needed.
    fn txn_dir(&self, txn: &mut Txn<'_>, ino: Ino) -> Result<Inode> {
        let dir = txn.inode(ino)?;
        if dir.links_count == 0 {
            return Err(Error::NotFound);
        }
        if dir.kind != FileKind::Directory {
            return Err(Error::NotDir);
        }
        // Refuses an inline flag without the feature (corrupt).
        let inline = self.idir_is_inline(&dir)?;
        if crypt::is_encrypted(&dir) && (inline || dir.has_flag(EXT4_CASEFOLD_FL)) {
            return Err(Error::Unsupported(
                "encrypted inline or casefolded directory".into(),
            ));
        }
        Ok(dir)
    }

    /// The name as `dir` stores it. In an encrypted directory (whose key
    /// this engine never has) `name` is a no-key name: the on-disk name of
    /// the entry it names, or `None` if it names none (nothing can be
    /// created under it either: adding a name needs the key).
    pub(crate) fn stored_name<'n>(
        &self,
        txn: &mut Txn<'_>,
        dir: &mut Inode,
        name: &'n [u8],
    ) -> Result<Option<Cow<'n, [u8]>>> {
        self.check_name_encoding(dir, name)?;
        if !crypt::is_encrypted(dir) || name == b"." || name == b".." {
            return Ok(Some(Cow::Borrowed(name)));
        }
        let Some(nk) = nokey::decode(name) else {
            return Ok(None);
        };
        match &nk.ciphertext {
            Ciphertext::Whole(disk) => Ok(Some(Cow::Owned(disk.clone()))),
            Ciphertext::Abbreviated { .. } => {
                let ctx = self.dir_ctx(dir);
                let mut d = TxnDir::new(txn, dir);
                let found = dir_block::find_name_by(&mut d, &ctx, nk.hash.0, &|n| nk.matches(n))?;
                Ok(found.map(Cow::Owned))
            }
        }
    }

    /// Fails with Exists if `name` is taken in `dir` (in a casefolded
    /// directory: if an entry has its fold), with Invalid if `dir` may not
    /// hold it (not UTF-8 under strict encoding).
    fn ensure_free(&self, txn: &mut Txn<'_>, dir: &mut Inode, name: &[u8]) -> Result<()> {
        if let Some(stored) = self.stored_name(txn, dir, name)?
            && self.dir_find(txn, dir, &stored)?.is_some()
        {
            return Err(Error::Exists);
        }
        Ok(())
    }

    fn dir_find(
        &self,
        txn: &mut Txn<'_>,
        dir: &mut Inode,
        name: &[u8],
    ) -> Result<Option<(Ino, u8)>> {
        if self.idir_is_inline(dir)? {
            return self.idir_find(dir, name);
        }
        let ctx = self.dir_ctx(dir);
        let mut d = TxnDir::new(txn, dir);
        Ok(dir_block::find_entry(&mut d, &ctx, name)?.map(|(_, f)| (f.inode, f.file_type)))
    }

    fn dir_add(
        &self,
        txn: &mut Txn<'_>,
        dir: &mut Inode,
        name: &[u8],
        ino: Ino,
        kind: FileKind,
    ) -> Result<()> {
        // may_create: an immutable directory takes no new names; then
        // fscrypt_prepare_create/link: an encrypted one needs its key.
        inode_flags::ensure_mutable(dir)?;
        crypt::require_key(dir)?;
        if self.idir_is_inline(dir)? {
            if self.idir_add(txn, dir, name, ino, file_type_of(kind))? {
                return Ok(());
            }
            self.idir_convert(txn, dir)?;
        }
        let ctx = self.dir_ctx(dir);
        let mut d = TxnDir::new(txn, dir);
        dir_block::add_entry(&mut d, &ctx, name, ino, file_type_of(kind))
    }

    fn dir_remove(&self, txn: &mut Txn<'_>, dir: &mut Inode, name: &[u8]) -> Result<Found> {
        if self.idir_is_inline(dir)? {
            return self.idir_remove(txn, dir, name);
        }
        let ctx = self.dir_ctx(dir);
        let mut d = TxnDir::new(txn, dir);
        dir_block::remove_entry(&mut d, &ctx, name)
    }

    fn dir_set(
        &self,
        txn: &mut Txn<'_>,
        dir: &mut Inode,
        name: &[u8],
        ino: Ino,
        kind: FileKind,
    ) -> Result<()> {
        if self.idir_is_inline(dir)? {
            return self.idir_set(txn, dir, name, ino, file_type_of(kind));
        }
        let ctx = self.dir_ctx(dir);
        let mut d = TxnDir::new(txn, dir);
        dir_block::set_entry(&mut d, &ctx, name, ino, file_type_of(kind))
    }

    pub(crate) fn dir_is_empty(&self, txn: &mut Txn<'_>, dir: &mut Inode) -> Result<bool> {
        if self.idir_is_inline(dir)? {
            return Ok(!self.idir_has_entries(dir)?);
        }
        let ctx = self.dir_ctx(dir);
        let mut d = TxnDir::new(txn, dir);
        Ok(!dir_block::dir_has_entries(&mut d, &ctx)?)
    }

    fn is_dx_inode(&self, dir: &Inode) -> bool {
        dir.has_flag(EXT4_INDEX_FL) && self.sb().has_compat(COMPAT_DIR_INDEX)
    }

    /// EXT4_DIR_LINK_MAX: may `dir` get another subdirectory?
    fn dir_link_max(&self, dir: &Inode) -> bool {
        dir.links_count >= EXT4_LINK_MAX
            && !(self.sb().has_ro_compat(RO_COMPAT_DIR_NLINK) && self.is_dx_inode(dir))
    }

    /// ext4_inc_count.
    fn inc_count(&self, txn: &mut Txn<'_>, inode: &mut Inode) {
        inode.links_count = inode.links_count.saturating_add(1);
        if inode.kind == FileKind::Directory
            && self.is_dx_inode(inode)
            && (inode.links_count > EXT4_LINK_MAX || inode.links_count == 2)
        {
            inode.links_count = 1;
            txn.set_ro_compat(RO_COMPAT_DIR_NLINK);
        }
    }

    /// ext4_dec_count.
    fn dec_count(inode: &mut Inode) {
        if inode.kind != FileKind::Directory || inode.links_count > 2 {
            inode.links_count = inode.links_count.saturating_sub(1);
        }
    }

    /// Allocates and initializes a new inode of `mode` in `dir`.
    fn new_inode(
        &self,
        txn: &mut Txn<'_>,
        dir: &Inode,
        mode: u16,
        uid: u32,
        gid: u32,
    ) -> Result<Inode> {
        let kind = kind_of_mode(mode).ok_or(Error::Invalid("bad file type"))?;
        // inode_init_owner: a setgid directory gives its group to new
        // entries, and its setgid bit to new directories. (The VFS has
        // already stripped S_ISGID from files the caller may not have.)
        let (mode, gid) = if dir.mode & 0o2000 != 0 {
            let mode = if kind == FileKind::Directory {
                mode | 0o2000
            } else {
                mode
            };
            (mode, dir.gid)
        } else {
            (mode, gid)
        };
        let ino = txn.alloc_inode(dir.ino, kind)?;
        // posix_acl_create caches the new inode's ACLs (see xattr::share).
        self.acl_cached_note(ino);
        let now = self.now();
        let mut inode = Inode::new(self, ino, mode, uid, gid, now);
        inode.flags |= inherited_flags(dir.flags, mode);
        Ok(inode)
    }

    fn touch_dir(&self, dir: &mut Inode) {
        let now = self.now();
        dir.mtime = now;
        dir.ctime = now;
    }

    /// mknod/create: a regular file, device, fifo or socket.
    /// `mode` is the requested type and permissions before the umask:
    /// `umask` applies only when `parent` has no default ACL (see
    /// `acl::acl_init`).
    #[expect(
        clippy::too_many_arguments,
        reason = "mknod(2)'s arguments plus the caller's ids and umask"
    )]
    pub fn create(
        &self,
        parent: Ino,
        name: &[u8],
        mode: u16,
        rdev: u32,
        uid: u32,
        gid: u32,
        umask: u32,
    ) -> Result<Attr> {
        check_new_name(name)?;
        let kind = kind_of_mode(mode).ok_or(Error::Invalid("bad file type"))?;
        if matches!(kind, FileKind::Directory | FileKind::Symlink) {
            return Err(Error::Invalid("create of a directory or symlink"));
        }
        let mut txn = self.begin()?;
        let mut dir = self.txn_dir(&mut txn, parent)?;
        self.ensure_free(&mut txn, &mut dir, name)?;
        let mut inode = self.new_inode(&mut txn, &dir, mode, uid, gid)?;
        if matches!(kind, FileKind::CharDevice | FileKind::BlockDevice) {
            inode.flags &= !EXT4_EXTENTS_FL;
            set_rdev(&mut inode.i_block, rdev);
        }
        self.acl_init(&mut txn, &dir, &mut inode, umask)?;
        self.dir_add(&mut txn, &mut dir, name, inode.ino, kind)?;
        self.touch_dir(&mut dir);
        let attr = self.attr_of(&inode);
        let ino = inode.ino;
        txn.put_inode(inode);
        txn.put_inode(dir);
        txn.commit()?;
        if kind == FileKind::RegularFile {
            self.mark_may_inline(ino);
        }
        Ok(attr)
    }

    /// `perm` is the requested permissions before the umask (see
    /// `create`).
    pub fn mkdir(
        &self,
        parent: Ino,
        name: &[u8],
        perm: u16,
        uid: u32,
        gid: u32,
        umask: u32,
    ) -> Result<Attr> {
        check_new_name(name)?;
        let mut txn = self.begin()?;
        let mut dir = self.txn_dir(&mut txn, parent)?;
        if self.dir_link_max(&dir) {
            return Err(Error::TooManyLinks);
        }
        self.ensure_free(&mut txn, &mut dir, name)?;
        let mut inode = self.new_inode(&mut txn, &dir, S_IFDIR | (perm & 0o7777), uid, gid)?;
        inode.links_count = 2;
        self.acl_init(&mut txn, &dir, &mut inode, umask)?;
        if !self.idir_init(&mut inode, dir.ino)? {
            let ctx = self.dir_ctx(&inode);
            let block = init_dir_block(&ctx, inode.ino, dir.ino);
            let mut d = TxnDir::new(&mut txn, &mut inode);
            let l = d.append()?;
            d.write(l, &block)?;
        }
        self.dir_add(&mut txn, &mut dir, name, inode.ino, FileKind::Directory)?;
        self.inc_count(&mut txn, &mut dir);
        self.touch_dir(&mut dir);
        let attr = self.attr_of(&inode);
        txn.put_inode(inode);
        txn.put_inode(dir);
        txn.commit()?;
        Ok(attr)
    }

    pub fn symlink(
        &self,
        parent: Ino,
        name: &[u8],
        target: &[u8],
        uid: u32,
        gid: u32,
    ) -> Result<Attr> {
        check_new_name(name)?;
        let bs = self.block_size() as usize;
        if target.is_empty() {
            return Err(Error::NotFound);
        }
        if target.len().saturating_add(1) > bs {
            return Err(Error::NameTooLong);
        }
        if target.contains(&0) {
            return Err(Error::Invalid("symlink target with NUL"));
        }
        let mut txn = self.begin()?;
        let mut dir = self.txn_dir(&mut txn, parent)?;
        self.ensure_free(&mut txn, &mut dir, name)?;
        let mut inode = self.new_inode(&mut txn, &dir, S_IFLNK | 0o777, uid, gid)?;
        if target.len() < I_BLOCK_SIZE {
            // Fast symlink: the target in i_block, no extent header.
            inode.flags &= !EXT4_EXTENTS_FL;
            inode.i_block = [0; I_BLOCK_SIZE];
            inode.i_block[..target.len()].copy_from_slice(target);
        } else {
            let runs = self.map_alloc(&mut txn, &mut inode, 0, 1, false)?;
            let pblk = runs.first().map(|r| r.1).ok_or(Error::NoSpace)?;
            let b = txn.block_new(pblk)?;
            b[..target.len()].copy_from_slice(target);
        }
        inode.size = target.len() as u64;
        self.dir_add(&mut txn, &mut dir, name, inode.ino, FileKind::Symlink)?;
        self.touch_dir(&mut dir);
        let attr = self.attr_of(&inode);
        txn.put_inode(inode);
        txn.put_inode(dir);
        txn.commit()?;
        Ok(attr)
    }

    pub fn link(&self, ino: Ino, parent: Ino, name: &[u8]) -> Result<Attr> {
        check_new_name(name)?;
        let mut txn = self.begin()?;
        let mut dir = self.txn_dir(&mut txn, parent)?;
        let mut inode = txn.inode(ino)?;
        if inode.kind == FileKind::Directory {
            return Err(Error::NotPermitted);
        }
        if inode.links_count == 0 {
            return Err(Error::NotFound);
        }
        if inode.links_count >= EXT4_LINK_MAX {
            return Err(Error::TooManyLinks);
        }
        self.ensure_free(&mut txn, &mut dir, name)?;
        inode_flags::ensure_mutable(&dir)?;
        // vfs_link: an immutable or append-only inode gets no new name.
        inode_flags::ensure_unpinned(&inode)?;
        self.dir_add(&mut txn, &mut dir, name, ino, inode.kind)?;
        inode.links_count = inode.links_count.saturating_add(1);
        inode.ctime = self.now();
        self.touch_dir(&mut dir);
        let attr = self.attr_of(&inode);
        txn.put_inode(inode);
        txn.put_inode(dir);
        txn.commit()?;
        Ok(attr)
    }

    /// Removes `name` (not a directory). Returns the inode when its last
    /// link went: it is then on the orphan list, and the caller frees it
    /// with `release_inode` at its last close (or at once if not open).
    pub fn unlink(&self, parent: Ino, name: &[u8]) -> Result<Option<Ino>> {
        if name.len() > EXT4_NAME_LEN {
            return Err(Error::NameTooLong);
        }
        let mut txn = self.begin()?;
        let mut dir = self.txn_dir(&mut txn, parent)?;
        let name = self
            .stored_name(&mut txn, &mut dir, name)?
            .ok_or(Error::NotFound)?;
        let (ino, _) = self
            .dir_find(&mut txn, &mut dir, &name)?
            .ok_or(Error::NotFound)?;
        let mut inode = txn.inode(ino)?;
        inode_flags::ensure_removable(&dir, &inode)?;
        if inode.kind == FileKind::Directory {
            return Err(Error::IsDir);
        }
        self.dir_remove(&mut txn, &mut dir, &name)?;
        self.touch_dir(&mut dir);
        inode.links_count = inode.links_count.saturating_sub(1);
        inode.ctime = dir.ctime;
        let gone = inode.links_count == 0;
        txn.put_inode(inode);
        txn.put_inode(dir);
        if gone {
            txn.orphan_add(ino)?;
        }
        txn.commit()?;
        Ok(gone.then_some(ino))
    }

    /// Removes the empty directory `name`. Returns its inode, which is
    /// then on the orphan list with no links: the caller frees it with
    /// `release_inode` at its last close (or at once if not open), as
    /// after `unlink`.
    pub fn rmdir(&self, parent: Ino, name: &[u8]) -> Result<Option<Ino>> {
        if name.len() > EXT4_NAME_LEN {
            return Err(Error::NameTooLong);
        }
        if name == b"." {
            return Err(Error::Invalid("rmdir of '.'"));
        }
        if name == b".." {
            return Err(Error::NotEmpty);
        }
        let mut txn = self.begin()?;
        let mut dir = self.txn_dir(&mut txn, parent)?;
        let name = self
            .stored_name(&mut txn, &mut dir, name)?
            .ok_or(Error::NotFound)?;
        let (ino, _) = self
            .dir_find(&mut txn, &mut dir, &name)?
            .ok_or(Error::NotFound)?;
        let mut victim = txn.inode(ino)?;
        inode_flags::ensure_removable(&dir, &victim)?;
        if victim.kind != FileKind::Directory {
            return Err(Error::NotDir);
        }
        if !self.dir_is_empty(&mut txn, &mut victim)? {
            return Err(Error::NotEmpty);
        }
        self.dir_remove(&mut txn, &mut dir, &name)?;
        Self::dec_count(&mut dir);
        self.touch_dir(&mut dir);
        // Like ext4_rmdir: no links, size 0, on the orphan list until the
        // last close (a directory may still be open).
        victim.links_count = 0;
        victim.size = 0;
        victim.ctime = dir.ctime;
        txn.put_inode(victim);
        txn.put_inode(dir);
        txn.orphan_add(ino)?;
        txn.commit()?;
        Ok(Some(ino))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::ext4::testutil::{RwImage, fsck};
    use crate::ext4::testutil::{have_mkfs, with_kernel_mount};
    use crate::ext4::types::{ROOT_INO, RenameFlags, SetAttr, TimeSet, Timestamp, XattrFlags};

    fn exercise(fs: &Ext4, many: u32) {
        let root = ROOT_INO;
        let a = fs
            .create(root, b"file", 0o100644, 0, 1000, 1000, 0)
            .unwrap();
        assert!(matches!(
            fs.create(root, b"file", 0o100644, 0, 0, 0, 0),
            Err(Error::Exists)
        ));
        assert!(matches!(
            fs.create(root, &[b'x'; 256], 0o100644, 0, 0, 0, 0),
            Err(Error::NameTooLong)
        ));
        assert!(matches!(
            fs.create(root, b"a/b", 0o100644, 0, 0, 0, 0),
            Err(Error::Invalid(_))
        ));
        fs.create(root, b"cdev", 0o020600, (4 << 8) | 7, 0, 0, 0)
            .unwrap();
        let big = (259 << 8) | (70000 & 0xff) | ((70000 & !0xff) << 12);
        let b = fs.create(root, b"bdev", 0o060600, big, 0, 0, 0).unwrap();
        assert_eq!(fs.getattr(b.ino).unwrap().rdev, big);
        fs.create(root, b"fifo", 0o010644, 0, 0, 0, 0).unwrap();
        fs.create(root, b"sock", 0o140644, 0, 0, 0, 0).unwrap();
        let d = fs.mkdir(root, b"dir", 0o755, 0, 0, 0).unwrap();
        let mut deep = d.ino;
        for i in 0..200 {
            deep = fs
                .mkdir(deep, format!("l{i}").as_bytes(), 0o755, 0, 0, 0)
                .unwrap()
                .ino;
        }
        fs.symlink(d.ino, b"fast", b"target", 0, 0).unwrap();
        let long = vec![b'y'; 300];
        let s = fs.symlink(d.ino, b"slow", &long, 0, 0).unwrap();
        assert_eq!(fs.readlink(s.ino).unwrap(), long);
        assert_eq!(
            fs.readlink(fs.lookup_ino(d.ino, b"fast").unwrap()).unwrap(),
            b"target"
        );
        let l = fs.link(a.ino, d.ino, b"hard").unwrap();
        assert_eq!(l.nlink, 2);
        let big_dir = fs.mkdir(root, b"big", 0o755, 0, 0, 0).unwrap().ino;
        for i in 0..many {
            fs.create(
                big_dir,
                format!("entry-number-{i:06}").as_bytes(),
                0o100600,
                0,
                0,
                0,
                0,
            )
            .unwrap();
        }
        for i in (0..many).step_by(3) {
            assert!(
                fs.unlink(big_dir, format!("entry-number-{i:06}").as_bytes())
                    .unwrap()
                    .is_some_and(|ino| fs.release_inode(ino).is_ok())
            );
        }
        for i in 0..many {
            let r = fs.lookup_ino(big_dir, format!("entry-number-{i:06}").as_bytes());
            assert_eq!(r.is_ok(), i % 3 != 0, "{i}");
        }
        // rename: plain, over a file, into another dir, NOREPLACE, EXCHANGE,
        // WHITEOUT, dir into own subtree.
        fs.create(root, b"r1", 0o100644, 0, 0, 0, 0).unwrap();
        fs.create(root, b"r2", 0o100644, 0, 0, 0, 0).unwrap();
        let n = RenameFlags::default();
        let nr = RenameFlags {
            noreplace: true,
            ..n
        };
        assert!(matches!(
            fs.rename(root, b"r1", root, b"r2", nr),
            Err(Error::Exists)
        ));
        let gone = fs.rename(root, b"r1", root, b"r2", n).unwrap();
        fs.release_inode(gone.unwrap()).unwrap();
        fs.rename(root, b"r2", d.ino, b"moved", n).unwrap();
        fs.mkdir(root, b"x1", 0o755, 0, 0, 0).unwrap();
        let ex = RenameFlags {
            exchange: true,
            ..n
        };
        fs.rename(root, b"x1", d.ino, b"moved", ex).unwrap();
        assert_eq!(
            fs.getattr(fs.lookup_ino(root, b"x1").unwrap())
                .unwrap()
                .kind,
            FileKind::RegularFile
        );
        let x1dir = fs.lookup_ino(d.ino, b"moved").unwrap();
        assert_eq!(fs.lookup_ino(x1dir, b"..").unwrap(), d.ino);
        assert!(matches!(
            fs.rename(root, b"dir", deep, b"loop", n),
            Err(Error::Invalid(_))
        ));
        let wo = RenameFlags {
            whiteout: true,
            ..n
        };
        fs.rename(root, b"x1", root, b"x2", wo).unwrap();
        assert_eq!(
            fs.getattr(fs.lookup_ino(root, b"x1").unwrap())
                .unwrap()
                .kind,
            FileKind::CharDevice
        );
        fs.mkdir(root, b"e", 0o755, 0, 0, 0).unwrap();
        let over = fs.rename(d.ino, b"moved", root, b"e", n).unwrap();
        fs.release_inode(over.unwrap()).unwrap();
        assert!(matches!(fs.rmdir(root, b"dir"), Err(Error::NotEmpty)));
        let gone = fs.rmdir(root, b"e").unwrap().unwrap();
        // Held like an open directory: readable, empty, until released.
        fs.hold_orphan(gone);
        assert_eq!(fs.getattr(gone).unwrap().nlink, 0);
        let mut listed = 0;
        fs.readdir(gone, 0, &mut |_| {
            listed += 1;
            true
        })
        .unwrap();
        assert_eq!(listed, 0);
        assert!(matches!(
            fs.create(gone, b"late", 0o100644, 0, 0, 0, 0),
            Err(Error::NotFound)
        ));
        fs.release_inode(gone).unwrap();
        // xattrs: small (inode), 1 KiB (block), ACL.
        fs.setxattr(a.ino, b"user.small", b"v", XattrFlags::default())
            .unwrap();
        fs.setxattr(a.ino, b"user.kib", &[7u8; 700], XattrFlags::default())
            .unwrap();
        assert!(matches!(
            fs.setxattr(
                a.ino,
                b"user.small",
                b"w",
                XattrFlags {
                    create: true,
                    replace: false
                }
            ),
            Err(Error::Exists)
        ));
        assert!(matches!(
            fs.setxattr(
                a.ino,
                b"user.none",
                b"w",
                XattrFlags {
                    create: false,
                    replace: true
                }
            ),
            Err(Error::NoAttribute)
        ));
        assert_eq!(fs.getxattr(a.ino, b"user.kib").unwrap(), vec![7u8; 700]);
        let acl: Vec<u8> = [
            2u32.to_le_bytes().to_vec(),
            [1u16.to_le_bytes(), 6u16.to_le_bytes()].concat(),
            u32::MAX.to_le_bytes().to_vec(),
            [2u16.to_le_bytes(), 4u16.to_le_bytes()].concat(),
            1000u32.to_le_bytes().to_vec(),
            [4u16.to_le_bytes(), 4u16.to_le_bytes()].concat(),
            u32::MAX.to_le_bytes().to_vec(),
            [0x10u16.to_le_bytes(), 4u16.to_le_bytes()].concat(),
            u32::MAX.to_le_bytes().to_vec(),
            [0x20u16.to_le_bytes(), 0u16.to_le_bytes()].concat(),
            u32::MAX.to_le_bytes().to_vec(),
        ]
        .concat();
        fs.setxattr(
            a.ino,
            b"system.posix_acl_access",
            &acl,
            XattrFlags::default(),
        )
        .unwrap();
        assert_eq!(fs.getxattr(a.ino, b"system.posix_acl_access").unwrap(), acl);
        fs.removexattr(a.ino, b"user.small").unwrap();
        let t = Timestamp {
            secs: 1_234_567_890,
            nsecs: 123_456_789,
        };
        let at = fs
            .setattr(
                a.ino,
                SetAttr {
                    mode: Some(0o4755),
                    uid: Some(5),
                    mtime: Some(TimeSet::At(t)),
                    ..SetAttr::default()
                },
            )
            .unwrap();
        assert_eq!((at.perm, at.uid, at.mtime), (0o4755, 5, t));
    }

    /// Sorted names in a directory through the engine (without . and ..).
    fn engine_names(fs: &Ext4, dir: Ino) -> Vec<String> {
        let mut v = Vec::new();
        fs.readdir(dir, 0, &mut |e| {
            if e.name != b"." && e.name != b".." {
                v.push(String::from_utf8(e.name).unwrap());
            }
            true
        })
        .unwrap();
        v.sort();
        v
    }

    fn kernel_names(p: &std::path::Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(p)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    }

    fn is_inline(fs: &Ext4, ino: Ino) -> bool {
        fs.inode(ino)
            .unwrap()
            .has_flag(crate::ext4::ondisk::inode::EXT4_INLINE_DATA_FL)
    }

    #[test]
    fn inline_directories() {
        if !have_mkfs() {
            return;
        }
        let n = RenameFlags::default();
        for (tag, args) in [
            ("inl", &["-O", "inline_data"][..]),
            (
                "inl1k",
                &["-O", "inline_data", "-b", "1024", "-I", "512"][..],
            ),
            ("inlnocsum", &["-O", "inline_data,^metadata_csum"][..]),
            (
                "inlnoext",
                &["-O", "inline_data,^extent,^64bit", "-I", "1024"][..],
            ),
        ] {
            let im = RwImage::new(tag, args);
            let fs = im.open();
            let root = ROOT_INO;
            let big = fs.mkdir(root, b"big", 0o755, 0, 0, 0).unwrap();
            let inl = true;
            assert_eq!(is_inline(&fs, big.ino), inl, "{tag}");
            if inl {
                assert_eq!(big.size, 60, "{tag}");
                assert_eq!(big.blocks, 0, "{tag}");
            }
            // Grow: i_block, then system.data, then a block, then htree.
            let mut sizes = Vec::new();
            for i in 0..800u32 {
                fs.create(big.ino, format!("f{i}").as_bytes(), 0o100644, 0, 0, 0, 0)
                    .unwrap();
                let a = fs.getattr(big.ino).unwrap();
                if sizes.last() != Some(&a.size) {
                    sizes.push(a.size);
                }
                assert!(fs.lookup_ino(big.ino, format!("f{i}").as_bytes()).is_ok());
            }
            assert!(!is_inline(&fs, big.ino));
            if inl {
                assert_eq!(sizes[0], 60, "{tag}: {sizes:?}");
                assert!(sizes[1] > 60 && sizes[1] < 1024, "{tag}: {sizes:?}");
            }
            assert!(
                fs.inode(big.ino)
                    .unwrap()
                    .has_flag(crate::ext4::ondisk::inode::EXT4_INDEX_FL),
                "{tag}"
            );
            for i in (0..800u32).step_by(3) {
                let g = fs.unlink(big.ino, format!("f{i}").as_bytes()).unwrap();
                fs.release_inode(g.unwrap()).unwrap();
            }
            // Two small inline dirs, renames in, out and between them.
            let a = fs.mkdir(root, b"ia", 0o755, 0, 0, 0).unwrap().ino;
            let b = fs.mkdir(root, b"ib", 0o755, 0, 0, 0).unwrap().ino;
            for i in 0..3 {
                fs.create(a, format!("x{i}").as_bytes(), 0o100644, 0, 0, 0, 0)
                    .unwrap();
            }
            let sub = fs.mkdir(a, b"sub", 0o700, 0, 0, 0).unwrap().ino;
            fs.create(sub, b"deep", 0o100644, 0, 0, 0, 0).unwrap();
            assert_eq!(is_inline(&fs, a), inl);
            // Within an inline dir, over an existing name.
            let gone = fs.rename(a, b"x0", a, b"x1", n).unwrap();
            fs.release_inode(gone.unwrap()).unwrap();
            // Inline -> inline, a directory: '..' follows.
            fs.rename(a, b"sub", b, b"sub2", n).unwrap();
            assert_eq!(fs.lookup_ino(sub, b"..").unwrap(), b);
            assert_eq!(fs.getattr(a).unwrap().nlink, 2);
            assert_eq!(fs.getattr(b).unwrap().nlink, 3);
            // Inline dir -> block dir and back.
            fs.rename(b, b"sub2", big.ino, b"sub3", n).unwrap();
            assert_eq!(fs.lookup_ino(sub, b"..").unwrap(), big.ino);
            fs.rename(big.ino, b"f1", a, b"from-big", n).unwrap();
            fs.rename(a, b"x2", big.ino, b"from-a", n).unwrap();
            fs.rename(big.ino, b"sub3", a, b"sub", n).unwrap();
            assert_eq!(fs.lookup_ino(sub, b"..").unwrap(), a);
            // Exchange an inline dir and a file across inline dirs.
            fs.create(b, b"y", 0o100644, 0, 0, 0, 0).unwrap();
            let ex = RenameFlags {
                exchange: true,
                ..n
            };
            fs.rename(a, b"sub", b, b"y", ex).unwrap();
            assert_eq!(fs.lookup_ino(sub, b"..").unwrap(), b);
            // rmdir: non-empty inline fails, empty inline works.
            assert!(matches!(fs.rmdir(b, b"y"), Err(Error::NotEmpty)));
            if let Some(i) = fs.unlink(sub, b"deep").unwrap() {
                fs.release_inode(i).unwrap();
            }
            let y = fs.rmdir(b, b"y").unwrap().unwrap();
            fs.release_inode(y).unwrap();
            let e = fs.mkdir(b, b"empty", 0o755, 0, 0, 0).unwrap().ino;
            assert_eq!(is_inline(&fs, e), inl);
            assert!(matches!(fs.lookup_ino(b, b"y"), Err(Error::NotFound)));
            // Symlink and device in an inline dir.
            fs.symlink(a, b"ln", b"target", 0, 0).unwrap();
            fs.create(a, b"dev", 0o020644, 0x0105, 0, 0, 0).unwrap();
            let want: Vec<(String, Vec<String>)> =
                [("big", big.ino), ("ia", a), ("ib", b), ("ib/empty", e)]
                    .iter()
                    .map(|(p, i)| (p.to_string(), engine_names(&fs, *i)))
                    .collect();
            assert_eq!(want[1].1, ["dev", "from-big", "ln", "sub", "x1"], "{tag}");
            assert_eq!(want[2].1, ["empty"], "{tag}");
            assert_eq!(want[0].1.len(), 800 - 267 - 1 + 1, "{tag}");
            fs.shutdown().unwrap();
            drop(fs);
            let (code, out) = fsck(im.save());
            assert_eq!(code, 0, "{tag}: {out}");
            with_kernel_mount(&im.img, |m| {
                for (p, names) in &want {
                    assert_eq!(&kernel_names(&m.join(p)), names, "{tag}: {p}");
                }
            });
        }
    }

    /// The kernel's and the engine's inline directories grow alike: the
    /// same sizes, block counts and inline state after the same creates
    /// and removals.
    #[test]
    fn inline_dir_growth_matches_kernel() {
        if !have_mkfs() {
            return;
        }
        for args in [&[][..], &["-O", "inline_data"][..]] {
            growth_vs_kernel(args);
        }
    }

    fn growth_vs_kernel(args: &[&str]) {
        use crate::ext4::OpenOptions;
        use crate::io::{BlockDevice, MemDevice};
        use std::sync::Arc;
        // Same UUID and hash seed on both sides: same hashes, same splits.
        let mut args = args.to_vec();
        args.extend([
            "-U",
            "6f1c0d2e-8a4b-4c3d-9e5f-0a1b2c3d4e5f",
            "-E",
            "hash_seed=3b2a1908-7766-4554-8332-110099887766",
        ]);
        let args = &args[..];
        let counts = [1usize, 2, 3, 5, 8, 12, 40, 150, 1000, 3000];
        let name = |i: usize| format!("file-{i:03}");
        // Kernel side.
        let k = RwImage::new("inlk", args);
        let mnt = k.img.with_extension("rwmnt");
        std::fs::create_dir_all(&mnt).unwrap();
        if !crate::ext4::testutil::kernel_mount(&k.img, &mnt, &["-t", "ext4", "-o", "loop"]) {
            return;
        }
        for &n in &counts {
            let d = mnt.join(format!("d{n}"));
            std::fs::create_dir(&d).unwrap();
            for i in 0..n {
                std::fs::write(d.join(name(i)), b"").unwrap();
            }
            for i in (0..n).step_by(2) {
                std::fs::remove_file(d.join(name(i))).unwrap();
            }
            for i in n..n + n / 2 + 1 {
                std::fs::write(d.join(format!("again-{i}")), b"").unwrap();
            }
        }
        assert!(crate::ext4::testutil::unmount(&mnt));
        let kfs = Ext4::open(
            Arc::new(MemDevice::new(std::fs::read(&k.img).unwrap())) as Arc<dyn BlockDevice>,
            OpenOptions {
                read_only: true,
                ..Default::default()
            },
        )
        .unwrap();
        // Engine side.
        let e = RwImage::new("inle", args);
        let fs = e.open();
        for &n in &counts {
            let d = fs
                .mkdir(ROOT_INO, format!("d{n}").as_bytes(), 0o755, 0, 0, 0)
                .unwrap()
                .ino;
            for i in 0..n {
                fs.create(d, name(i).as_bytes(), 0o100644, 0, 0, 0, 0)
                    .unwrap();
            }
            for i in (0..n).step_by(2) {
                let g = fs.unlink(d, name(i).as_bytes()).unwrap().unwrap();
                fs.release_inode(g).unwrap();
            }
            for i in n..n + n / 2 + 1 {
                fs.create(d, format!("again-{i}").as_bytes(), 0o100644, 0, 0, 0, 0)
                    .unwrap();
            }
        }
        for &n in &counts {
            let dn = format!("d{n}");
            let kd = kfs
                .getattr(kfs.lookup_ino(ROOT_INO, dn.as_bytes()).unwrap())
                .unwrap();
            let ed = fs
                .getattr(fs.lookup_ino(ROOT_INO, dn.as_bytes()).unwrap())
                .unwrap();
            assert_eq!(
                (ed.size, ed.blocks, is_inline(&fs, ed.ino)),
                (kd.size, kd.blocks, is_inline(&kfs, kd.ino)),
                "{dn}"
            );
            assert_eq!(
                engine_names(&fs, ed.ino),
                engine_names(&kfs, kd.ino),
                "{dn}"
            );
        }
        fs.shutdown().unwrap();
        drop(fs);
        crate::ext4::testutil::assert_fsck_clean(e.save(), "directory growth");
    }

    #[test]
    fn names_and_attrs_fsck_clean() {
        if !have_mkfs() {
            return;
        }
        for (tag, args, many) in [
            ("def", &[][..], 3000u32),
            ("nocsum", &["-O", "^metadata_csum"][..], 500),
            ("1k", &["-b", "1024"][..], 3000),
            ("ext2", &["-t", "ext2"][..], 300),
            ("ext3", &["-t", "ext3", "-b", "1024"][..], 300),
            ("nodx", &["-O", "^dir_index"][..], 300),
        ] {
            let im = RwImage::new(tag, args);
            let fs = im.open();
            exercise(&fs, many);
            fs.shutdown().unwrap();
            drop(fs);
            let (code, out) = fsck(im.save());
            assert_eq!(code, 0, "{tag}: {out}");
        }
    }
}
