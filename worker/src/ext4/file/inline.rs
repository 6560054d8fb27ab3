//! Inline data, write side: files whose content lives in i_block (60
//! bytes) and the in-inode "system.data" xattr. Content length is kept
//! equal to i_size, as the kernel keeps it. A write or size change past
//! what the inode can hold converts the file to a block-mapped one (one
//! block, extents when the filesystem has them), removing system.data's
//! value (the empty entry goes too, as after the kernel's conversion).

use super::extent::{self as ew};
use crate::ext4::ondisk::inode::{EXT4_EXTENTS_FL, EXT4_INLINE_DATA_FL, I_BLOCK_SIZE, Inode};
use crate::ext4::ondisk::superblock::{self as sbf, GOOD_OLD_INODE_SIZE};
use crate::ext4::ondisk::xattr::{
    self as ox, INDEX_SYSTEM, NewXattr, NewXattrValue, SYSTEM_DATA, XattrValue,
};
use crate::ext4::txn::Txn;
use crate::ext4::{Error, Ext4, Result};

impl Ext4 {
    /// The in-inode xattrs as owned entries, in their on-disk order.
    fn inline_ibody_entries(&self, inode: &Inode) -> Result<Vec<NewXattr>> {
        self.ibody_entries(inode)?
            .iter()
            .map(|e| {
                // The value hash the EA inode keeps (i_atime), not e_hash:
                // the serializer derives e_hash from it.
                let hash = match e.value {
                    XattrValue::EaInode { inum, .. } => self.ea_inode_value_hash(inum)?,
                    XattrValue::Inline(_) => 0,
                };
                Ok(NewXattr::from_entry(e, hash))
            })
            .collect()
    }

    /// Bytes of content an inline inode can hold: 60 plus the largest
    /// system.data value that fits next to its other in-inode xattrs.
    pub(crate) fn inline_capacity(&self, inode: &Inode) -> Result<u64> {
        let area = inode.inline_xattr_area().len();
        if inode.raw.len() <= usize::from(GOOD_OLD_INODE_SIZE) || area < 8 {
            return Ok(I_BLOCK_SIZE as u64);
        }
        let others: Vec<NewXattr> = self
            .inline_ibody_entries(inode)?
            .into_iter()
            .filter(|x| !(x.name_index == INDEX_SYSTEM && x.name == SYSTEM_DATA))
            .collect();
        // Header (4), the others, our entry, the table terminator.
        let used = ox::space_needed(&others)
            .saturating_add(ox::entry_len(SYSTEM_DATA.len()))
            .saturating_add(4);
        let free = area.saturating_sub(used) & !3;
        Ok((I_BLOCK_SIZE as u64).saturating_add(free as u64))
    }

    pub(crate) fn inline_write_fits(&self, inode: &Inode, offset: u64, len: u64) -> bool {
        let cap = self.inline_capacity(inode).unwrap_or(0);
        offset.checked_add(len).is_some_and(|e| e <= cap)
    }

    /// Stores `content` (length becomes the content size) in i_block and
    /// system.data.
    fn set_inline_content(&self, inode: &mut Inode, content: &[u8]) -> Result<()> {
        let (head, tail) = content.split_at(content.len().min(I_BLOCK_SIZE));
        inode.i_block.fill(0);
        inode.i_block[..head.len()].copy_from_slice(head);
        let mut entries = self.inline_ibody_entries(inode)?;
        let value = NewXattrValue::Inline(tail.to_vec());
        match entries
            .iter_mut()
            .find(|x| x.name_index == INDEX_SYSTEM && x.name == SYSTEM_DATA)
        {
            Some(x) => x.value = value,
            None => entries.insert(
                0,
                NewXattr {
                    name_index: INDEX_SYSTEM,
                    name: SYSTEM_DATA.to_vec(),
                    value,
                },
            ),
        }
        self.store_ibody(inode, &entries)
    }

    fn store_ibody(&self, inode: &mut Inode, entries: &[NewXattr]) -> Result<()> {
        let start = inode.ibody_start();
        let area = inode
            .raw
            .get_mut(start..)
            .ok_or(Error::Invalid("inode has no xattr area"))?;
        if !ox::write_ibody(area, entries) {
            return Err(Error::NoSpace);
        }
        Ok(())
    }

    /// Writes `data` at `offset` of an inline file (fits checked).
    pub(crate) fn inline_write(
        &self,
        _txn: &mut Txn<'_>,
        inode: &mut Inode,
        offset: u64,
        data: &[u8],
    ) -> Result<()> {
        let mut content = self.inline_data(inode)?;
        let end = usize::try_from(offset)
            .ok()
            .and_then(|o| o.checked_add(data.len()))
            .ok_or(Error::FileTooBig)?;
        // An inline file's size cannot pass what the inode holds; a bigger
        // one (a hostile disk) would have us allocate it here.
        if inode.size > self.inline_capacity(inode)? {
            return Err(Error::corrupt(
                format!(
                    "inline inode {} claims size {}, more than the inode can hold",
                    inode.ino, inode.size
                ),
                self.inode_block(inode.ino),
            ));
        }
        let size = usize::try_from(inode.size).unwrap_or(usize::MAX);
        content.resize(size.max(end).max(content.len()), 0);
        content
            .get_mut(end.saturating_sub(data.len())..end)
            .ok_or(Error::Invalid("inline write range"))?
            .copy_from_slice(data);
        self.set_inline_content(inode, &content)
    }

    /// Size change of an inline file: in place when it fits, else the file
    /// becomes block-mapped first.
    pub(crate) fn inline_truncate(
        &self,
        txn: &mut Txn<'_>,
        inode: &mut Inode,
        new_size: u64,
    ) -> Result<()> {
        if new_size <= self.inline_capacity(inode)? {
            let mut content = self.inline_data(inode)?;
            content.resize(usize::try_from(new_size).unwrap_or(0), 0);
            self.set_inline_content(inode, &content)?;
            inode.size = new_size;
            return Ok(());
        }
        self.inline_to_blocks(txn, inode, false)?;
        self.truncate_in(txn, inode, new_size)
    }

    /// Converts an inline file to a block-mapped one: content to a new
    /// block (if any), system.data removed, INLINE_DATA_FL cleared,
    /// EXTENTS_FL set on extent filesystems.
    pub(crate) fn inline_to_blocks(
        &self,
        txn: &mut Txn<'_>,
        inode: &mut Inode,
        reserved_ok: bool,
    ) -> Result<()> {
        let content = self.inline_data(inode)?;
        let entries: Vec<NewXattr> = self
            .inline_ibody_entries(inode)?
            .into_iter()
            .filter(|x| !(x.name_index == INDEX_SYSTEM && x.name == SYSTEM_DATA))
            .collect();
        self.store_ibody(inode, &entries)?;
        inode.flags &= !EXT4_INLINE_DATA_FL;
        inode.i_block.fill(0);
        if self.sb().has_incompat(sbf::INCOMPAT_EXTENTS) {
            inode.flags |= EXT4_EXTENTS_FL;
            ew::init_root(&mut inode.i_block)?;
        }
        if !content.is_empty() {
            let (runs, short) = self.map_alloc_runs(txn, inode, 0, 1, false, reserved_ok)?;
            let Some(r) = runs.first().filter(|_| !short) else {
                return Err(Error::NoSpace);
            };
            let mut block = vec![0u8; self.block_size() as usize];
            let n = content.len().min(block.len());
            block[..n].copy_from_slice(&content[..n]);
            self.write_data(r.pblk, 0, &block)?;
        }
        Ok(())
    }
}
