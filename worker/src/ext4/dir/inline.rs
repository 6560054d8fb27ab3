//! Inline-data directories, write side, after the kernel's
//! fs/ext4/inline.c. An inline directory keeps its parent's inode number
//! in the first 4 bytes of i_block, entries in the other 56 bytes, and
//! more entries in the value of the in-inode "system.data" xattr; "." and
//! ".." are implicit. i_size is 60 plus that value's length.
//!
//! - mkdir on an inline_data filesystem makes the new directory inline
//!   (ext4_try_create_inline_dir): parent, one empty record of 56 bytes,
//!   an empty "system.data"; when the inode has no room for that xattr the
//!   directory gets a block as usual.
//! - A new entry goes into i_block; when that is full and the xattr value
//!   is still empty, the value grows once to the largest size the in-inode
//!   xattr area allows (ext4_update_inline_dir) and the entry goes there.
//! - When neither has room, the directory becomes a one-block directory
//!   (ext4_convert_inline_data_nolock): ".", "..", the live entries, the
//!   checksum tail; the entry is then added the block way (which makes
//!   the directory indexed when that block fills).
//! - Removal frees the record like a block directory's (merged into the
//!   previous one, or inode 0 when first in its region). Inline
//!   directories never shrink or go back from blocks, as in the kernel.
//!
//! The bytes are read with `inline_data` and stored with the file writer's
//! `inline_write` (i_block plus the system.data value); the conversion
//! drops the inline state with its `inline_drop`.

use crate::ext4::dir::block::{
    DirBlocks, EditError, Found, find_in_buf, has_entries, insert_in_buf, live_entries,
    pack_entries, remove_in_buf, set_in_buf,
};
use crate::ext4::error::{Error, Result};
use crate::ext4::namei::TxnDir;
use crate::ext4::ondisk::dir_entry::{EXT4_FT_DIR, dir_rec_len};
use crate::ext4::ondisk::inode::{
    EXT4_ENCRYPT_FL, EXT4_EXTENTS_FL, EXT4_INLINE_DATA_FL, I_BLOCK_SIZE, Inode,
};
use crate::ext4::ondisk::superblock::{GOOD_OLD_INODE_SIZE, INCOMPAT_INLINE_DATA};
use crate::ext4::ondisk::xattr::{
    self as ox, INDEX_SYSTEM, NewXattr, NewXattrValue, SYSTEM_DATA, XATTR_IBODY_HEADER_LEN,
};
use crate::ext4::types::Ino;
use crate::ext4::util::le32;
use crate::ext4::{Ext4, Txn};

/// EXT4_INLINE_DOTDOT_SIZE: the parent's inode number in i_block.
pub(super) const INLINE_DOTDOT_SIZE: usize = 4;

/// An inline directory's two entry regions.
struct InlineDir {
    /// i_block: parent (4 bytes), then entries up to 60.
    ib: Vec<u8>,
    /// The "system.data" value: entries from 0 to its end (may be empty).
    ext: Vec<u8>,
}

impl InlineDir {
    fn parent(&self) -> Ino {
        le32(&self.ib, 0)
    }
}

/// Which region an entry is in.
#[derive(Clone, Copy)]
enum Region {
    IBlock,
    Xattr,
}

fn inline_corrupt(ino: Ino, r: Region, e: EditError) -> Error {
    match e {
        EditError::Exists => Error::Exists,
        EditError::Corrupt(off, p) => {
            let base = match r {
                Region::IBlock => 0,
                Region::Xattr => I_BLOCK_SIZE,
            };
            Error::corrupt(
                format!(
                    "directory {ino}: inline data offset {}: {p}",
                    base.saturating_add(off)
                ),
                0,
            )
        }
    }
}

impl Ext4 {
    fn idir_load(&self, dir: &Inode) -> Result<InlineDir> {
        let data = self.inline_data(dir)?;
        if data.len() < I_BLOCK_SIZE {
            return Err(Error::corrupt(
                format!(
                    "directory {}: inline size {} below {I_BLOCK_SIZE}",
                    dir.ino,
                    data.len()
                ),
                0,
            ));
        }
        let (ib, ext) = data.split_at(I_BLOCK_SIZE);
        Ok(InlineDir {
            ib: ib.to_vec(),
            ext: ext.to_vec(),
        })
    }

    fn idir_store(&self, txn: &mut Txn<'_>, dir: &mut Inode, d: &InlineDir) -> Result<()> {
        let mut content = Vec::with_capacity(d.ib.len().saturating_add(d.ext.len()));
        content.extend_from_slice(&d.ib);
        content.extend_from_slice(&d.ext);
        self.inline_write(txn, dir, 0, &content)?;
        dir.size = content.len() as u64;
        Ok(())
    }

    /// Whether `dir` is an inline directory this engine may change.
    pub(crate) fn idir_is_inline(&self, dir: &Inode) -> Result<bool> {
        if !dir.has_flag(EXT4_INLINE_DATA_FL) {
            return Ok(false);
        }
        if !self.sb().has_incompat(INCOMPAT_INLINE_DATA) {
            return Err(Error::corrupt(
                format!(
                    "inode {}: inline data flag without the inline_data feature",
                    dir.ino
                ),
                0,
            ));
        }
        Ok(true)
    }

    /// `name` in an inline directory: (inode, file type).
    pub(crate) fn idir_find(&self, dir: &Inode, name: &[u8]) -> Result<Option<(Ino, u8)>> {
        let d = self.idir_load(dir)?;
        match name {
            b"." => return Ok(Some((dir.ino, EXT4_FT_DIR))),
            b".." => return Ok(Some((d.parent(), EXT4_FT_DIR))),
            _ => {}
        }
        let ctx = self.dir_ctx(dir);
        let (fmt, dn) = (ctx.fmt, ctx.dir_name(name));
        let f = find_in_buf(&d.ib, INLINE_DOTDOT_SIZE, I_BLOCK_SIZE, &fmt, &dn)
            .map_err(|e| inline_corrupt(dir.ino, Region::IBlock, e))?;
        if let Some(f) = f {
            return Ok(Some((f.inode, f.file_type)));
        }
        if d.ext.is_empty() {
            return Ok(None);
        }
        let f = find_in_buf(&d.ext, 0, d.ext.len(), &fmt, &dn)
            .map_err(|e| inline_corrupt(dir.ino, Region::Xattr, e))?;
        Ok(f.map(|f| (f.inode, f.file_type)))
    }

    /// Adds an entry to an inline directory (ext4_try_add_inline_entry).
    /// `Ok(false)`: no room left inline; the caller converts.
    pub(crate) fn idir_add(
        &self,
        txn: &mut Txn<'_>,
        dir: &mut Inode,
        name: &[u8],
        ino: Ino,
        file_type: u8,
    ) -> Result<bool> {
        let mut d = self.idir_load(dir)?;
        let ctx = self.dir_ctx(dir);
        let (fmt, dn) = (ctx.fmt, ctx.dir_name(name));
        let at = insert_in_buf(
            &mut d.ib,
            INLINE_DOTDOT_SIZE,
            I_BLOCK_SIZE,
            &fmt,
            &dn,
            ino,
            file_type,
        )
        .map_err(|e| inline_corrupt(dir.ino, Region::IBlock, e))?;
        if at.is_some() {
            self.idir_store(txn, dir, &d)?;
            return Ok(true);
        }
        if d.ext.is_empty() {
            // ext4_update_inline_dir: grow system.data once to all the
            // in-inode room there is, as one empty record.
            let cap = usize::try_from(self.max_inline_size(dir)?).unwrap_or(0);
            let new = cap.saturating_sub(I_BLOCK_SIZE) & !3;
            if new <= dir_rec_len(1) {
                return Ok(false);
            }
            d.ext = vec![0u8; new];
            if !pack_entries(&mut d.ext, 0, new, &fmt, &[]) {
                return Ok(false);
            }
        }
        // Callers look the name up first; insert_in_buf also refuses a
        // duplicate in the records it passes.
        let end = d.ext.len();
        let at = insert_in_buf(&mut d.ext, 0, end, &fmt, &dn, ino, file_type)
            .map_err(|e| inline_corrupt(dir.ino, Region::Xattr, e))?;
        if at.is_none() {
            return Ok(false);
        }
        self.idir_store(txn, dir, &d)?;
        Ok(true)
    }

    /// Removes `name` from an inline directory (ext4_delete_inline_entry).
    pub(crate) fn idir_remove(
        &self,
        txn: &mut Txn<'_>,
        dir: &mut Inode,
        name: &[u8],
    ) -> Result<Found> {
        let mut d = self.idir_load(dir)?;
        let ctx = self.dir_ctx(dir);
        let (fmt, dn) = (ctx.fmt, ctx.dir_name(name));
        let mut f = remove_in_buf(&mut d.ib, INLINE_DOTDOT_SIZE, I_BLOCK_SIZE, &fmt, &dn)
            .map_err(|e| inline_corrupt(dir.ino, Region::IBlock, e))?;
        if f.is_none() && !d.ext.is_empty() {
            let end = d.ext.len();
            f = remove_in_buf(&mut d.ext, 0, end, &fmt, &dn)
                .map_err(|e| inline_corrupt(dir.ino, Region::Xattr, e))?;
        }
        let f = f.ok_or(Error::NotFound)?;
        self.idir_store(txn, dir, &d)?;
        Ok(f)
    }

    /// Repoints `name` (".." included: the parent in i_block) to `ino`.
    pub(crate) fn idir_set(
        &self,
        txn: &mut Txn<'_>,
        dir: &mut Inode,
        name: &[u8],
        ino: Ino,
        file_type: u8,
    ) -> Result<()> {
        let mut d = self.idir_load(dir)?;
        if name == b".." {
            d.ib.get_mut(..INLINE_DOTDOT_SIZE)
                .ok_or(Error::Invalid("short i_block"))?
                .copy_from_slice(&ino.to_le_bytes());
            return self.idir_store(txn, dir, &d);
        }
        let ctx = self.dir_ctx(dir);
        let (fmt, dn) = (ctx.fmt, ctx.dir_name(name));
        if let Some(f) = find_in_buf(&d.ib, INLINE_DOTDOT_SIZE, I_BLOCK_SIZE, &fmt, &dn)
            .map_err(|e| inline_corrupt(dir.ino, Region::IBlock, e))?
        {
            set_in_buf(&mut d.ib, f.offset, ino, file_type, &fmt);
            return self.idir_store(txn, dir, &d);
        }
        let f = if d.ext.is_empty() {
            None
        } else {
            find_in_buf(&d.ext, 0, d.ext.len(), &fmt, &dn)
                .map_err(|e| inline_corrupt(dir.ino, Region::Xattr, e))?
        };
        let f = f.ok_or(Error::NotFound)?;
        set_in_buf(&mut d.ext, f.offset, ino, file_type, &fmt);
        self.idir_store(txn, dir, &d)
    }

    /// Whether an inline directory has entries (empty_inline_dir).
    pub(crate) fn idir_has_entries(&self, dir: &Inode) -> Result<bool> {
        let d = self.idir_load(dir)?;
        let fmt = self.dir_ctx(dir).fmt;
        if has_entries(&d.ib, INLINE_DOTDOT_SIZE, I_BLOCK_SIZE, &fmt)
            .map_err(|e| inline_corrupt(dir.ino, Region::IBlock, e))?
        {
            return Ok(true);
        }
        if d.ext.is_empty() {
            return Ok(false);
        }
        has_entries(&d.ext, 0, d.ext.len(), &fmt)
            .map_err(|e| inline_corrupt(dir.ino, Region::Xattr, e))
    }

    /// Turns an inline directory into a one-block directory
    /// (ext4_convert_inline_data_nolock + ext4_finish_convert_inline_dir):
    /// ".", "..", then the live entries.
    pub(crate) fn idir_convert(&self, txn: &mut Txn<'_>, dir: &mut Inode) -> Result<()> {
        let d = self.idir_load(dir)?;
        let ctx = self.dir_ctx(dir);
        let fmt = ctx.fmt;
        let mut entries = vec![
            (b".".to_vec(), dir.ino, EXT4_FT_DIR),
            (b"..".to_vec(), d.parent(), EXT4_FT_DIR),
        ];
        entries.extend(
            live_entries(&d.ib, INLINE_DOTDOT_SIZE, I_BLOCK_SIZE, &fmt)
                .map_err(|e| inline_corrupt(dir.ino, Region::IBlock, e))?,
        );
        if !d.ext.is_empty() {
            entries.extend(
                live_entries(&d.ext, 0, d.ext.len(), &fmt)
                    .map_err(|e| inline_corrupt(dir.ino, Region::Xattr, e))?,
            );
        }
        let mut block = vec![0u8; ctx.bs()];
        let need: usize = entries.iter().map(|e| dir_rec_len(e.0.len())).sum();
        if need > ctx.leaf_end() || !pack_entries(&mut block, 0, ctx.leaf_end(), &fmt, &entries) {
            return Err(Error::corrupt(
                format!("directory {}: inline entries do not fit one block", dir.ino),
                0,
            ));
        }
        ctx.seal_leaf(&mut block);
        // Drop the inline state (system.data, the flag; an empty extent
        // root on extent filesystems); the block gets the entries.
        self.inline_drop(dir)?;
        dir.size = 0;
        let mut td = TxnDir::new(txn, dir);
        let l = td.append()?;
        td.write(l, &block)
    }

    /// Makes the fresh directory inode `inode` an empty inline directory
    /// of `parent` (ext4_try_create_inline_dir). `Ok(false)`: inline data
    /// is off or the inode has no room for "system.data"; nothing changed.
    pub(crate) fn idir_init(&self, inode: &mut Inode, parent: Ino) -> Result<bool> {
        if !self.sb().has_incompat(INCOMPAT_INLINE_DATA)
            || inode.has_flag(EXT4_ENCRYPT_FL)
            || inode.raw.len() <= usize::from(GOOD_OLD_INODE_SIZE)
        {
            return Ok(false);
        }
        let area = inode.inline_xattr_area();
        if area.len() < XATTR_IBODY_HEADER_LEN {
            return Ok(false);
        }
        let parsed = self.ibody_entries(inode)?;
        let mut entries: Vec<NewXattr> =
            parsed.iter().map(|e| NewXattr::from_entry(e, 0)).collect();
        if entries
            .iter()
            .any(|x| !matches!(x.value, NewXattrValue::Inline(_)))
        {
            return Ok(false);
        }
        // After the ACLs acl_init stored, as the kernel's ibody insertion.
        entries.push(NewXattr {
            name_index: INDEX_SYSTEM,
            name: SYSTEM_DATA.to_vec(),
            value: NewXattrValue::Inline(Vec::new()),
        });
        let start = usize::from(GOOD_OLD_INODE_SIZE).saturating_add(usize::from(inode.extra_isize));
        let Some(raw_area) = inode.raw.get_mut(start..) else {
            return Ok(false);
        };
        if XATTR_IBODY_HEADER_LEN.saturating_add(ox::space_needed(&entries)) > raw_area.len()
            || !ox::write_ibody(raw_area, &entries)
        {
            return Ok(false);
        }
        let fmt = self.dir_ctx(inode).fmt;
        let mut ib = [0u8; I_BLOCK_SIZE];
        ib[..INLINE_DOTDOT_SIZE].copy_from_slice(&parent.to_le_bytes());
        if !pack_entries(&mut ib, INLINE_DOTDOT_SIZE, I_BLOCK_SIZE, &fmt, &[]) {
            return Err(Error::Invalid("inline directory record"));
        }
        inode.i_block = ib;
        inode.flags &= !EXT4_EXTENTS_FL;
        inode.flags |= EXT4_INLINE_DATA_FL;
        inode.size = I_BLOCK_SIZE as u64;
        Ok(true)
    }
}
