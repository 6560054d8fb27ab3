//! Quota files (QFMT_VFS_V1, "vfsv1"), as ext4 keeps them in its hidden
//! quota inodes. Layout (Linux fs/quota/quotaio_v2.h, quota_tree.h):
//! the file is a sequence of 1 KiB quota blocks; block 0 holds the header
//! (magic, version) and the info (grace times, block count, the heads of
//! the free-block and free-entry lists); block 1 is the root of a radix
//! tree of depth 4 over the id (one byte of the id per level, 256 le32
//! references per tree block); the last level points to data blocks: a
//! 16-byte header (list links, entry count) and 14 entries of 72 bytes
//! (`struct v2r1_disk_dqblk`).

use crate::ext4::util::{le16, le32, le64, put_le16, put_le32, put_le64};

/// Quota block size (QT_BLOCKSIZE_BITS = 10).
pub(crate) const QT_BLOCK_SIZE: usize = 1024;
pub(crate) const QT_BLOCK_BITS: u32 = 10;
/// The root tree block (QT_TREEOFF).
pub(crate) const QT_TREEOFF: u32 = 1;
/// Tree levels (QT_TREEDEPTH).
pub(crate) const QT_TREEDEPTH: usize = 4;
/// dqh_version of the v2r1 format (64-bit limits).
pub(crate) const V2_VERSION_R1: u32 = 1;
/// dqh_magic per quota type: user, group, project (V2_INITQMAGICS).
pub(crate) const MAGICS: [u32; 3] = [0xD9C0_1F11, 0xD9C0_1927, 0xD9C0_3F14];

// Header and info (block 0).
const DQH_MAGIC: usize = 0;
const DQH_VERSION: usize = 4;
const DQI_BGRACE: usize = 8;
const DQI_IGRACE: usize = 12;
const DQI_FLAGS: usize = 16;
const DQI_BLOCKS: usize = 20;
const DQI_FREE_BLK: usize = 24;
const DQI_FREE_ENTRY: usize = 28;

// Data block header (struct qt_disk_dqdbheader).
const DQDH_NEXT_FREE: usize = 0;
const DQDH_PREV_FREE: usize = 4;
const DQDH_ENTRIES: usize = 8;
pub(crate) const DATA_HEADER_LEN: usize = 16;

/// sizeof(struct v2r1_disk_dqblk).
pub(crate) const ENTRY_LEN: usize = 72;
/// Entries per data block: (1024 - 16) / 72.
pub(crate) const ENTRIES_PER_BLOCK: usize = (QT_BLOCK_SIZE - DATA_HEADER_LEN) / ENTRY_LEN;

// struct v2r1_disk_dqblk.
const DQB_ID: usize = 0;
const DQB_IHARDLIMIT: usize = 8;
const DQB_ISOFTLIMIT: usize = 16;
const DQB_CURINODES: usize = 24;
const DQB_BHARDLIMIT: usize = 32;
const DQB_BSOFTLIMIT: usize = 40;
const DQB_CURSPACE: usize = 48;
const DQB_BTIME: usize = 56;
const DQB_ITIME: usize = 64;

/// The three quota types, in the order of the superblock's inode fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum QuotaType {
    User,
    Group,
    Project,
}

impl QuotaType {
    pub(crate) fn index(self) -> usize {
        match self {
            QuotaType::User => 0,
            QuotaType::Group => 1,
            QuotaType::Project => 2,
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            QuotaType::User => "user",
            QuotaType::Group => "group",
            QuotaType::Project => "project",
        }
    }

    fn magic(self) -> u32 {
        MAGICS.get(self.index()).copied().unwrap_or(0)
    }
}

/// What is wrong with a quota file (the caller names the file and block).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum QuotaProblem {
    #[error("bad magic {0:#010x}")]
    BadMagic(u32),
    #[error("unsupported format version {0}")]
    BadVersion(u32),
    #[error("block count {0} too small")]
    TooFewBlocks(u32),
    #[error("reference to quota block {blk} outside the tree area (1..{blocks})")]
    BadReference { blk: u32, blocks: u32 },
    #[error("id {id} referenced by the tree but absent from data block {blk}")]
    MissingEntry { id: u32, blk: u32 },
    #[error("id {id} already in the tree")]
    AlreadyPresent { id: u32 },
    #[error("data block {blk} is on the free-entry list but full")]
    FullOnFreeList { blk: u32 },
    #[error("tree block {blk} referenced twice")]
    TreeCycle { blk: u32 },
    #[error("free list longer than the file")]
    FreeListLoop,
    #[error("quota block {0} is not mapped in the file")]
    Hole(u32),
    #[error("entry count of data block {blk} does not match its {used} used entries")]
    CountMismatch { blk: u32, used: usize },
}

/// Header and info of a quota file (block 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct QuotaInfo {
    pub(crate) dqi_bgrace: u32,
    pub(crate) dqi_igrace: u32,
    pub(crate) dqi_flags: u32,
    /// Quota blocks in the file.
    pub(crate) dqi_blocks: u32,
    /// First block of the free-block list (0: none).
    pub(crate) dqi_free_blk: u32,
    /// First data block with a free entry (0: none).
    pub(crate) dqi_free_entry: u32,
}

impl QuotaInfo {
    /// Parses block 0 of a quota file of type `qtype`.
    pub(crate) fn parse(b: &[u8], qtype: QuotaType) -> Result<QuotaInfo, QuotaProblem> {
        let magic = le32(b, DQH_MAGIC);
        if magic != qtype.magic() {
            return Err(QuotaProblem::BadMagic(magic));
        }
        let version = le32(b, DQH_VERSION);
        if version != V2_VERSION_R1 {
            return Err(QuotaProblem::BadVersion(version));
        }
        let i = QuotaInfo {
            dqi_bgrace: le32(b, DQI_BGRACE),
            dqi_igrace: le32(b, DQI_IGRACE),
            dqi_flags: le32(b, DQI_FLAGS),
            dqi_blocks: le32(b, DQI_BLOCKS),
            dqi_free_blk: le32(b, DQI_FREE_BLK),
            dqi_free_entry: le32(b, DQI_FREE_ENTRY),
        };
        // Header block and root tree block at least.
        if i.dqi_blocks <= QT_TREEOFF {
            return Err(QuotaProblem::TooFewBlocks(i.dqi_blocks));
        }
        for blk in [i.dqi_free_blk, i.dqi_free_entry] {
            if blk != 0 {
                i.check_ref(blk)?;
            }
        }
        Ok(i)
    }

    /// Writes the info (the header's magic and version stay).
    pub(crate) fn write(&self, b: &mut [u8]) {
        put_le32(b, DQI_BGRACE, self.dqi_bgrace);
        put_le32(b, DQI_IGRACE, self.dqi_igrace);
        put_le32(b, DQI_FLAGS, self.dqi_flags);
        put_le32(b, DQI_BLOCKS, self.dqi_blocks);
        put_le32(b, DQI_FREE_BLK, self.dqi_free_blk);
        put_le32(b, DQI_FREE_ENTRY, self.dqi_free_entry);
    }

    /// A reference to a tree or data block: past the root, inside the
    /// file (the kernel's check in find_tree_dqentry and friends).
    pub(crate) fn check_ref(&self, blk: u32) -> Result<u32, QuotaProblem> {
        if blk <= QT_TREEOFF || blk >= self.dqi_blocks {
            return Err(QuotaProblem::BadReference {
                blk,
                blocks: self.dqi_blocks,
            });
        }
        Ok(blk)
    }
}

/// The header of a data block (also used by free blocks for the list).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct DataHeader {
    pub(crate) next_free: u32,
    pub(crate) prev_free: u32,
    pub(crate) entries: u16,
}

impl DataHeader {
    pub(crate) fn parse(b: &[u8]) -> DataHeader {
        DataHeader {
            next_free: le32(b, DQDH_NEXT_FREE),
            prev_free: le32(b, DQDH_PREV_FREE),
            entries: le16(b, DQDH_ENTRIES),
        }
    }

    pub(crate) fn write(&self, b: &mut [u8]) {
        put_le32(b, DQDH_NEXT_FREE, self.next_free);
        put_le32(b, DQDH_PREV_FREE, self.prev_free);
        put_le16(b, DQDH_ENTRIES, self.entries);
    }
}

/// One id's limits and usage (`struct v2r1_disk_dqblk`). Block limits are
/// in 1 KiB quota blocks, space in bytes, times in seconds since the epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct DiskDquot {
    pub(crate) id: u32,
    pub(crate) ihardlimit: u64,
    pub(crate) isoftlimit: u64,
    pub(crate) curinodes: u64,
    pub(crate) bhardlimit: u64,
    pub(crate) bsoftlimit: u64,
    pub(crate) curspace: u64,
    pub(crate) btime: u64,
    pub(crate) itime: u64,
}

impl DiskDquot {
    /// Parses an entry. An all-zero entry is unused (see `is_unused`); a
    /// used entry that would be all zero is stored with itime 1, which
    /// reads back as 0 (v2r1_disk2memdqblk).
    pub(crate) fn parse(b: &[u8]) -> DiskDquot {
        let mut d = DiskDquot {
            id: le32(b, DQB_ID),
            ihardlimit: le64(b, DQB_IHARDLIMIT),
            isoftlimit: le64(b, DQB_ISOFTLIMIT),
            curinodes: le64(b, DQB_CURINODES),
            bhardlimit: le64(b, DQB_BHARDLIMIT),
            bsoftlimit: le64(b, DQB_BSOFTLIMIT),
            curspace: le64(b, DQB_CURSPACE),
            btime: le64(b, DQB_BTIME),
            itime: le64(b, DQB_ITIME),
        };
        let rest_zero = DiskDquot { itime: 0, ..d } == DiskDquot::default();
        if d.itime == 1 && rest_zero {
            d.itime = 0;
        }
        d
    }

    /// Writes the entry (72 bytes), escaping an all-zero one.
    pub(crate) fn write(&self, b: &mut [u8]) {
        let mut d = *self;
        if d == DiskDquot::default() {
            d.itime = 1;
        }
        if let Some(e) = b.get_mut(..ENTRY_LEN) {
            e.fill(0);
        }
        put_le32(b, DQB_ID, d.id);
        put_le64(b, DQB_IHARDLIMIT, d.ihardlimit);
        put_le64(b, DQB_ISOFTLIMIT, d.isoftlimit);
        put_le64(b, DQB_CURINODES, d.curinodes);
        put_le64(b, DQB_BHARDLIMIT, d.bhardlimit);
        put_le64(b, DQB_BSOFTLIMIT, d.bsoftlimit);
        put_le64(b, DQB_CURSPACE, d.curspace);
        put_le64(b, DQB_BTIME, d.btime);
        put_le64(b, DQB_ITIME, d.itime);
    }

    /// Whether the id has neither usage nor limits (the kernel then drops
    /// its entry: qtree_release_dquot of a DQ_FAKE dquot).
    pub(crate) fn is_empty(&self) -> bool {
        self.curinodes == 0
            && self.curspace == 0
            && self.ihardlimit == 0
            && self.isoftlimit == 0
            && self.bhardlimit == 0
            && self.bsoftlimit == 0
    }
}

/// Whether the entry bytes are all zero (qtree_entry_unused).
pub(crate) fn entry_unused(b: &[u8]) -> bool {
    b.iter().take(ENTRY_LEN).all(|&x| x == 0)
}

/// Byte offset of entry `slot` in its data block.
pub(crate) fn entry_offset(slot: usize) -> usize {
    DATA_HEADER_LEN.saturating_add(slot.saturating_mul(ENTRY_LEN))
}

/// The bytes of entry `slot` of a data block (empty past the end).
pub(crate) fn bytes_of_entry(b: &[u8], slot: usize) -> &[u8] {
    let off = entry_offset(slot);
    b.get(off..off.saturating_add(ENTRY_LEN)).unwrap_or(&[])
}

pub(crate) fn bytes_of_entry_mut(b: &mut [u8], slot: usize) -> &mut [u8] {
    let off = entry_offset(slot);
    b.get_mut(off..off.saturating_add(ENTRY_LEN))
        .unwrap_or(&mut [])
}

/// The reference slot for `id` in a tree block at `depth` (0 = root).
pub(crate) fn tree_index(id: u32, depth: usize) -> usize {
    let shift = QT_TREEDEPTH
        .saturating_sub(1)
        .saturating_sub(depth)
        .saturating_mul(8);
    ((id.checked_shr(shift as u32).unwrap_or(0)) & 0xFF) as usize
}

/// Reference `i` of a tree block.
pub(crate) fn tree_ref(b: &[u8], i: usize) -> u32 {
    le32(b, i.saturating_mul(4))
}

pub(crate) fn set_tree_ref(b: &mut [u8], i: usize, blk: u32) {
    put_le32(b, i.saturating_mul(4), blk);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn info_round_trip_and_checks() {
        let mut b = vec![0u8; QT_BLOCK_SIZE];
        put_le32(&mut b, 0, MAGICS[1]);
        put_le32(&mut b, 4, 1);
        let i = QuotaInfo {
            dqi_bgrace: 604800,
            dqi_igrace: 604800,
            dqi_flags: 0,
            dqi_blocks: 6,
            dqi_free_blk: 0,
            dqi_free_entry: 5,
        };
        i.write(&mut b);
        assert_eq!(QuotaInfo::parse(&b, QuotaType::Group).unwrap(), i);
        assert_eq!(
            QuotaInfo::parse(&b, QuotaType::User),
            Err(QuotaProblem::BadMagic(MAGICS[1]))
        );
        put_le32(&mut b, DQI_FREE_ENTRY, 6);
        assert!(matches!(
            QuotaInfo::parse(&b, QuotaType::Group),
            Err(QuotaProblem::BadReference { blk: 6, .. })
        ));
        put_le32(&mut b, DQI_FREE_ENTRY, 0);
        put_le32(&mut b, DQI_BLOCKS, 1);
        assert_eq!(
            QuotaInfo::parse(&b, QuotaType::Group),
            Err(QuotaProblem::TooFewBlocks(1))
        );
        put_le32(&mut b, DQI_BLOCKS, 6);
        put_le32(&mut b, 4, 0);
        assert_eq!(
            QuotaInfo::parse(&b, QuotaType::Group),
            Err(QuotaProblem::BadVersion(0))
        );
    }

    #[test]
    fn dquot_round_trip_and_zero_escape() {
        let d = DiskDquot {
            id: 1000,
            ihardlimit: 5,
            isoftlimit: 3,
            curinodes: 2,
            bhardlimit: 100,
            bsoftlimit: 50,
            curspace: 8192,
            btime: 7,
            itime: 9,
        };
        let mut b = vec![0u8; ENTRY_LEN];
        d.write(&mut b);
        assert_eq!(DiskDquot::parse(&b), d);
        let z = DiskDquot::default();
        z.write(&mut b);
        assert!(!entry_unused(&b), "a used all-zero entry stays visible");
        assert_eq!(DiskDquot::parse(&b), z);
        assert_eq!(ENTRIES_PER_BLOCK, 14);
    }

    #[test]
    fn tree_indexes() {
        let id = 0x0102_0304;
        assert_eq!(
            (0..4).map(|d| tree_index(id, d)).collect::<Vec<_>>(),
            [1, 2, 3, 4]
        );
    }
}
