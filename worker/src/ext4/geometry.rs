//! Where things are: block groups, descriptor blocks, inode tables and
//! inodes, from the superblock's geometry (one copy of each formula, as
//! in the kernel's ext4_group_first_block_no, ext4_bg_num_gdb,
//! descriptor_loc and __ext4_get_inode_loc).

use super::ondisk::group_desc::GroupDesc;
use super::ondisk::superblock as sbf;
use super::{Error, Ext4, Ino, Result};

impl Ext4 {
    /// Group descriptor `group`.
    pub(crate) fn group(&self, group: u32) -> Result<&GroupDesc> {
        self.groups
            .get(group as usize)
            .ok_or_else(|| Error::corrupt(format!("group {group} out of range"), 0))
    }

    /// Number of group-descriptor blocks in group `group` (ext4_bg_num_gdb).
    pub(super) fn bg_num_gdb(&self, group: u64) -> u64 {
        let dpb = u64::from(self.sb.desc_per_block().max(1));
        let metagroup = group.checked_div(dpb).unwrap_or(0);
        if self.sb.has_incompat(sbf::INCOMPAT_META_BG)
            && metagroup >= u64::from(self.sb.s_first_meta_bg)
        {
            let first = metagroup.saturating_mul(dpb);
            let last = first.saturating_add(dpb).saturating_sub(1);
            return u64::from(group == first || group == first.saturating_add(1) || group == last);
        }
        if !self.sb.bg_has_super(group) {
            return 0;
        }
        if self.sb.has_incompat(sbf::INCOMPAT_META_BG) {
            u64::from(self.sb.s_first_meta_bg)
        } else {
            self.sb.groups_count().div_ceil(dpb)
        }
    }

    /// Block number of the superblock: 1 with 1 KiB blocks, else 0.
    pub(super) fn superblock_blocknr(&self) -> u64 {
        u64::from(1024u32.checked_div(self.block_size).unwrap_or(0))
    }

    /// Block number of descriptor block `nr` (the kernel's descriptor_loc).
    pub(super) fn descriptor_loc(&self, nr: u64) -> u64 {
        let logical_sb_block = self.superblock_blocknr();
        if !self.sb.has_incompat(sbf::INCOMPAT_META_BG) || nr < u64::from(self.sb.s_first_meta_bg) {
            return logical_sb_block.saturating_add(nr).saturating_add(1);
        }
        let bg = u64::from(self.sb.desc_per_block()).saturating_mul(nr);
        let mut has_super = u64::from(self.sb.bg_has_super(bg));
        if self.block_size == 1024 && nr == 0 && self.sb.s_first_data_block == 0 {
            has_super = has_super.saturating_add(1);
        }
        has_super.saturating_add(self.group_first_block(bg))
    }

    /// Block and byte offset of group `g`'s descriptor.
    pub(super) fn descriptor_slot(&self, g: u32) -> (u64, usize) {
        let dpb = self.sb.desc_per_block().max(1);
        let dsize = usize::from(self.sb.s_desc_size.max(sbf::MIN_DESC_SIZE));
        let nr = g.checked_div(dpb).unwrap_or(0);
        let index = g.checked_rem(dpb).unwrap_or(0) as usize;
        (
            self.descriptor_loc(u64::from(nr)),
            index.saturating_mul(dsize),
        )
    }

    pub(super) fn group_first_block(&self, group: u64) -> u64 {
        group
            .saturating_mul(u64::from(self.sb.s_blocks_per_group))
            .saturating_add(u64::from(self.sb.s_first_data_block))
    }

    pub(super) fn itb_per_group(&self) -> u64 {
        u64::from(self.sb.s_inodes_per_group)
            .saturating_mul(u64::from(self.sb.s_inode_size))
            .div_ceil(u64::from(self.block_size))
    }

    /// Block number and byte offset of inode `ino` in its inode table.
    pub(crate) fn inode_location(&self, ino: Ino) -> Result<(u64, usize)> {
        if ino == 0 || ino > self.sb.s_inodes_count {
            return Err(Error::corrupt(
                format!("inode number {ino} out of range"),
                0,
            ));
        }
        let (group, index) = self.inode_group_index(ino)?;
        let gd = self.group(group)?;
        let isz = u64::from(self.sb.s_inode_size);
        let byte = u64::from(index).saturating_mul(isz);
        let bs = u64::from(self.block_size);
        let block = byte
            .checked_div(bs)
            .and_then(|b| gd.bg_inode_table.checked_add(b))
            .ok_or_else(|| {
                Error::corrupt(
                    format!("inode {ino}: inode table of group {group} overflows"),
                    gd.bg_inode_table,
                )
            })?;
        let off = usize::try_from(byte.checked_rem(bs).unwrap_or(0)).unwrap_or(usize::MAX);
        Ok((block, off))
    }

    /// The inode-table block holding inode `ino` (0 when out of range):
    /// where a fault in the inode itself, or in what it holds inline
    /// (i_block, in-inode xattrs), is reported.
    pub(crate) fn inode_block(&self, ino: Ino) -> u64 {
        self.inode_location(ino).map_or(0, |(block, _)| block)
    }

    /// Group of inode `ino` and its index in the group's bitmap and table.
    pub(crate) fn inode_group_index(&self, ino: Ino) -> Result<(u32, u32)> {
        let ipg = self.sb.s_inodes_per_group;
        ino.checked_sub(1)
            .and_then(|i| Some((i.checked_div(ipg)?, i.checked_rem(ipg)?)))
            .ok_or_else(|| Error::corrupt(format!("inode number {ino} out of range"), 0))
    }

    pub(crate) fn groups_count32(&self) -> u32 {
        u32::try_from(self.sb.groups_count()).unwrap_or(u32::MAX)
    }

    /// Group holding block `block` (which must be a data-area block).
    pub(crate) fn block_group(&self, block: u64) -> u32 {
        let rel = block.saturating_sub(u64::from(self.sb.s_first_data_block));
        u32::try_from(
            rel.checked_div(u64::from(self.sb.s_blocks_per_group))
                .unwrap_or(0),
        )
        .unwrap_or(u32::MAX)
    }

    /// Blocks in group `g` (the last group may be short).
    pub(crate) fn blocks_in_group(&self, g: u32) -> u64 {
        let first = self.group_first_block(u64::from(g));
        self.sb
            .s_blocks_count
            .saturating_sub(first)
            .min(u64::from(self.sb.s_blocks_per_group))
    }

    /// The first block metadata may point at (block 0 never holds any).
    pub(crate) fn first_data_block(&self) -> u64 {
        u64::from(self.sb.s_first_data_block).max(1)
    }
}
