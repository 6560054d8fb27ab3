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
        let metagroup = group / dpb;
        if self.sb.has_incompat(sbf::INCOMPAT_META_BG)
            && metagroup >= u64::from(self.sb.s_first_meta_bg)
        {
            let first = metagroup * dpb;
            let last = first + dpb - 1;
            return u64::from(group == first || group == first + 1 || group == last);
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

    /// Block number of descriptor block `nr` (the kernel's descriptor_loc).
    pub(super) fn descriptor_loc(&self, nr: u64) -> u64 {
        let logical_sb_block = 1024 / u64::from(self.block_size);
        if !self.sb.has_incompat(sbf::INCOMPAT_META_BG) || nr < u64::from(self.sb.s_first_meta_bg) {
            return logical_sb_block + nr + 1;
        }
        let bg = u64::from(self.sb.desc_per_block()) * nr;
        let mut has_super = u64::from(self.sb.bg_has_super(bg));
        if self.block_size == 1024 && nr == 0 && self.sb.s_first_data_block == 0 {
            has_super += 1;
        }
        has_super + self.group_first_block(bg)
    }

    pub(super) fn group_first_block(&self, group: u64) -> u64 {
        group
            .saturating_mul(u64::from(self.sb.s_blocks_per_group))
            .saturating_add(u64::from(self.sb.s_first_data_block))
    }

    pub(super) fn itb_per_group(&self) -> u64 {
        (u64::from(self.sb.s_inodes_per_group) * u64::from(self.sb.s_inode_size))
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
        let ipg = self.sb.s_inodes_per_group;
        let group = (ino - 1) / ipg;
        let index = (ino - 1) % ipg;
        let gd = self.group(group)?;
        let isz = u64::from(self.sb.s_inode_size);
        let byte = u64::from(index) * isz;
        let bs = u64::from(self.block_size);
        let block = gd.bg_inode_table.checked_add(byte / bs).ok_or_else(|| {
            Error::corrupt(
                format!("inode {ino}: inode table of group {group} overflows"),
                gd.bg_inode_table,
            )
        })?;
        Ok((block, (byte % bs) as usize))
    }

    pub(crate) fn groups_count32(&self) -> u32 {
        u32::try_from(self.sb.groups_count()).unwrap_or(u32::MAX)
    }

    /// Group holding block `block` (which must be a data-area block).
    pub(crate) fn block_group(&self, block: u64) -> u32 {
        let rel = block.saturating_sub(u64::from(self.sb.s_first_data_block));
        u32::try_from(rel / u64::from(self.sb.s_blocks_per_group.max(1))).unwrap_or(u32::MAX)
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
