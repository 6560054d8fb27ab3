//! The ext4 superblock (`struct ext4_super_block`, 1024 bytes at byte 1024
//! of the device). Layout: Documentation/filesystems/ext4/super.rst.

use crate::ext4::checksum::crc32c;
use crate::ext4::error::{Error, Result};
use crate::ext4::ondisk::bytes_from_mut;
use crate::ext4::util::{le16, le32, le64, put, put_le16, put_le32, put_le64, take};

/// Byte offset of the primary superblock on the device.
pub(crate) const SUPERBLOCK_OFFSET: u64 = 1024;
/// Size of the on-disk superblock.
pub(crate) const SUPERBLOCK_SIZE: usize = 1024;
pub(crate) const EXT4_SUPER_MAGIC: u16 = 0xEF53;
/// Offset of `s_checksum`; the checksum covers the bytes before it.
const S_CHECKSUM_OFFSET: usize = 0x3FC;
pub(crate) const EXT4_CRC32C_CHKSUM: u8 = 1;

pub(crate) const GOOD_OLD_REV: u32 = 0;
pub(crate) const GOOD_OLD_INODE_SIZE: u16 = 128;
pub(crate) const GOOD_OLD_FIRST_INO: u32 = 11;
pub(crate) const MIN_BLOCK_LOG_SIZE: u32 = 10;
pub(crate) const MAX_BLOCK_LOG_SIZE: u32 = 16;
pub(crate) const MAX_CLUSTER_LOG_SIZE: u32 = 30;
pub(crate) const MIN_DESC_SIZE: u16 = 32;
pub(crate) const MIN_DESC_SIZE_64BIT: u16 = 64;
pub(crate) const MAX_DESC_SIZE: u16 = 1024;

// s_state
pub(crate) const STATE_VALID_FS: u16 = 0x0001;
pub(crate) const STATE_ERROR_FS: u16 = 0x0002;
#[expect(dead_code, reason = "on-disk format value the engine does not act on")]
pub(crate) const STATE_ORPHAN_FS: u16 = 0x0004;

// s_flags
#[expect(dead_code, reason = "on-disk format value the engine does not act on")]
pub(crate) const FLAGS_SIGNED_HASH: u32 = 0x0001;
#[expect(dead_code, reason = "on-disk format value the engine does not act on")]
pub(crate) const FLAGS_UNSIGNED_HASH: u32 = 0x0002;
#[expect(dead_code, reason = "on-disk format value the engine does not act on")]
pub(crate) const FLAGS_TEST_FILESYS: u32 = 0x0004;

// The feature flags and their names live in features.rs; re-exported here
// so `superblock::INCOMPAT_*` and friends keep working.
pub(crate) use crate::ext4::ondisk::features::*;

/// Every field of `struct ext4_super_block`, with the split lo/hi counts
/// combined (hi halves only where INCOMPAT_64BIT says they are valid).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Superblock {
    pub(crate) s_inodes_count: u32,
    pub(crate) s_blocks_count: u64,
    pub(crate) s_r_blocks_count: u64,
    pub(crate) s_free_blocks_count: u64,
    pub(crate) s_free_inodes_count: u32,
    pub(crate) s_first_data_block: u32,
    pub(crate) s_log_block_size: u32,
    pub(crate) s_log_cluster_size: u32,
    pub(crate) s_blocks_per_group: u32,
    pub(crate) s_clusters_per_group: u32,
    pub(crate) s_inodes_per_group: u32,
    pub(crate) s_mtime: i64,
    pub(crate) s_wtime: i64,
    pub(crate) s_mnt_count: u16,
    pub(crate) s_max_mnt_count: i16,
    pub(crate) s_magic: u16,
    pub(crate) s_state: u16,
    pub(crate) s_errors: u16,
    pub(crate) s_minor_rev_level: u16,
    pub(crate) s_lastcheck: i64,
    pub(crate) s_checkinterval: u32,
    pub(crate) s_creator_os: u32,
    pub(crate) s_rev_level: u32,
    pub(crate) s_def_resuid: u16,
    pub(crate) s_def_resgid: u16,
    pub(crate) s_first_ino: u32,
    pub(crate) s_inode_size: u16,
    pub(crate) s_block_group_nr: u16,
    pub(crate) s_feature_compat: u32,
    pub(crate) s_feature_incompat: u32,
    pub(crate) s_feature_ro_compat: u32,
    pub(crate) s_uuid: [u8; 16],
    pub(crate) s_volume_name: [u8; 16],
    pub(crate) s_last_mounted: [u8; 64],
    pub(crate) s_algorithm_usage_bitmap: u32,
    pub(crate) s_prealloc_blocks: u8,
    pub(crate) s_prealloc_dir_blocks: u8,
    pub(crate) s_reserved_gdt_blocks: u16,
    pub(crate) s_journal_uuid: [u8; 16],
    pub(crate) s_journal_inum: u32,
    pub(crate) s_journal_dev: u32,
    pub(crate) s_last_orphan: u32,
    pub(crate) s_hash_seed: [u32; 4],
    pub(crate) s_def_hash_version: u8,
    pub(crate) s_jnl_backup_type: u8,
    /// Group descriptor size: the on-disk field when 64bit, else 32.
    pub(crate) s_desc_size: u16,
    pub(crate) s_default_mount_opts: u32,
    pub(crate) s_first_meta_bg: u32,
    pub(crate) s_mkfs_time: i64,
    pub(crate) s_jnl_blocks: [u32; 17],
    pub(crate) s_min_extra_isize: u16,
    pub(crate) s_want_extra_isize: u16,
    pub(crate) s_flags: u32,
    pub(crate) s_raid_stride: u16,
    pub(crate) s_mmp_update_interval: u16,
    pub(crate) s_mmp_block: u64,
    pub(crate) s_raid_stripe_width: u32,
    pub(crate) s_log_groups_per_flex: u8,
    pub(crate) s_checksum_type: u8,
    pub(crate) s_encryption_level: u8,
    pub(crate) s_kbytes_written: u64,
    pub(crate) s_snapshot_inum: u32,
    pub(crate) s_snapshot_id: u32,
    pub(crate) s_snapshot_r_blocks_count: u64,
    pub(crate) s_snapshot_list: u32,
    pub(crate) s_error_count: u32,
    pub(crate) s_first_error_time: i64,
    pub(crate) s_first_error_ino: u32,
    pub(crate) s_first_error_block: u64,
    pub(crate) s_first_error_func: [u8; 32],
    pub(crate) s_first_error_line: u32,
    pub(crate) s_last_error_time: i64,
    pub(crate) s_last_error_ino: u32,
    pub(crate) s_last_error_line: u32,
    pub(crate) s_last_error_block: u64,
    pub(crate) s_last_error_func: [u8; 32],
    pub(crate) s_mount_opts: [u8; 64],
    pub(crate) s_usr_quota_inum: u32,
    pub(crate) s_grp_quota_inum: u32,
    pub(crate) s_overhead_clusters: u32,
    pub(crate) s_backup_bgs: [u32; 2],
    pub(crate) s_encrypt_algos: [u8; 4],
    pub(crate) s_encrypt_pw_salt: [u8; 16],
    pub(crate) s_lpf_ino: u32,
    pub(crate) s_prj_quota_inum: u32,
    pub(crate) s_checksum_seed: u32,
    pub(crate) s_first_error_errcode: u8,
    pub(crate) s_last_error_errcode: u8,
    pub(crate) s_encoding: u16,
    pub(crate) s_encoding_flags: u16,
    pub(crate) s_orphan_file_inum: u32,
    pub(crate) s_checksum: u32,
}

/// Combines a 32-bit on-disk time with its 8 high bits (`s_*_time_hi`).
fn time_hi(lo: u32, hi: u8) -> i64 {
    i64::from(lo) | (i64::from(hi) << 32)
}

fn u32_array<const N: usize>(b: &[u8], off: usize) -> [u32; N] {
    let mut out = [0u32; N];
    for (i, v) in out.iter_mut().enumerate() {
        *v = le32(b, off.saturating_add(i.saturating_mul(4)));
    }
    out
}

fn corrupt(why: impl Into<String>) -> Error {
    Error::corrupt(format!("superblock: {}", why.into()), 0)
}

/// `s_encoding`: the only encoding, UTF-8 with Unicode 12.1's tables.
pub(crate) const EXT4_ENC_UTF8_12_1: u16 = 1;
/// `s_encoding_flags`: names that are not valid UTF-8 are refused.
pub(crate) const EXT4_ENC_STRICT_MODE_FL: u16 = 0x1;

impl Superblock {
    /// Parses and validates the 1024 superblock bytes. `device_size` is the
    /// device's size in bytes (the block count must fit in it).
    pub(crate) fn parse(b: &[u8], device_size: u64) -> Result<Superblock> {
        if b.len() < SUPERBLOCK_SIZE {
            return Err(corrupt("short read"));
        }
        let s_magic = le16(b, 0x38);
        if s_magic != EXT4_SUPER_MAGIC {
            return Err(Error::Incompatible(format!(
                "not an ext2/3/4 filesystem (bad superblock magic {s_magic:#06x})"
            )));
        }
        let s_feature_compat = le32(b, 0x5C);
        let s_feature_incompat = le32(b, 0x60);
        let s_feature_ro_compat = le32(b, 0x64);
        let is64 = s_feature_incompat & INCOMPAT_64BIT != 0;
        let hi = |off: usize| {
            if is64 {
                u64::from(le32(b, off)) << 32
            } else {
                0
            }
        };

        let s_rev_level = le32(b, 0x4C);
        let (s_first_ino, s_inode_size) = if s_rev_level == GOOD_OLD_REV {
            (GOOD_OLD_FIRST_INO, GOOD_OLD_INODE_SIZE)
        } else {
            (le32(b, 0x54), le16(b, 0x58))
        };
        let sb = Superblock {
            s_inodes_count: le32(b, 0x0),
            s_blocks_count: u64::from(le32(b, 0x4)) | hi(0x150),
            s_r_blocks_count: u64::from(le32(b, 0x8)) | hi(0x154),
            s_free_blocks_count: u64::from(le32(b, 0xC)) | hi(0x158),
            s_free_inodes_count: le32(b, 0x10),
            s_first_data_block: le32(b, 0x14),
            s_log_block_size: le32(b, 0x18),
            s_log_cluster_size: le32(b, 0x1C),
            s_blocks_per_group: le32(b, 0x20),
            s_clusters_per_group: le32(b, 0x24),
            s_inodes_per_group: le32(b, 0x28),
            s_mtime: time_hi(le32(b, 0x2C), take::<1>(b, 0x275)[0]),
            s_wtime: time_hi(le32(b, 0x30), take::<1>(b, 0x274)[0]),
            s_mnt_count: le16(b, 0x34),
            s_max_mnt_count: le16(b, 0x36) as i16,
            s_magic,
            s_state: le16(b, 0x3A),
            s_errors: le16(b, 0x3C),
            s_minor_rev_level: le16(b, 0x3E),
            s_lastcheck: time_hi(le32(b, 0x40), take::<1>(b, 0x277)[0]),
            s_checkinterval: le32(b, 0x44),
            s_creator_os: le32(b, 0x48),
            s_rev_level,
            s_def_resuid: le16(b, 0x50),
            s_def_resgid: le16(b, 0x52),
            s_first_ino,
            s_inode_size,
            s_block_group_nr: le16(b, 0x5A),
            s_feature_compat,
            s_feature_incompat,
            s_feature_ro_compat,
            s_uuid: take(b, 0x68),
            s_volume_name: take(b, 0x78),
            s_last_mounted: take(b, 0x88),
            s_algorithm_usage_bitmap: le32(b, 0xC8),
            s_prealloc_blocks: take::<1>(b, 0xCC)[0],
            s_prealloc_dir_blocks: take::<1>(b, 0xCD)[0],
            s_reserved_gdt_blocks: le16(b, 0xCE),
            s_journal_uuid: take(b, 0xD0),
            s_journal_inum: le32(b, 0xE0),
            s_journal_dev: le32(b, 0xE4),
            s_last_orphan: le32(b, 0xE8),
            s_hash_seed: u32_array(b, 0xEC),
            s_def_hash_version: take::<1>(b, 0xFC)[0],
            s_jnl_backup_type: take::<1>(b, 0xFD)[0],
            s_desc_size: if is64 { le16(b, 0xFE) } else { MIN_DESC_SIZE },
            s_default_mount_opts: le32(b, 0x100),
            s_first_meta_bg: le32(b, 0x104),
            s_mkfs_time: time_hi(le32(b, 0x108), take::<1>(b, 0x276)[0]),
            s_jnl_blocks: u32_array(b, 0x10C),
            s_min_extra_isize: le16(b, 0x15C),
            s_want_extra_isize: le16(b, 0x15E),
            s_flags: le32(b, 0x160),
            s_raid_stride: le16(b, 0x164),
            s_mmp_update_interval: le16(b, 0x166),
            s_mmp_block: le64(b, 0x168),
            s_raid_stripe_width: le32(b, 0x170),
            s_log_groups_per_flex: take::<1>(b, 0x174)[0],
            s_checksum_type: take::<1>(b, 0x175)[0],
            s_encryption_level: take::<1>(b, 0x176)[0],
            s_kbytes_written: le64(b, 0x178),
            s_snapshot_inum: le32(b, 0x180),
            s_snapshot_id: le32(b, 0x184),
            s_snapshot_r_blocks_count: le64(b, 0x188),
            s_snapshot_list: le32(b, 0x190),
            s_error_count: le32(b, 0x194),
            s_first_error_time: time_hi(le32(b, 0x198), take::<1>(b, 0x278)[0]),
            s_first_error_ino: le32(b, 0x19C),
            s_first_error_block: le64(b, 0x1A0),
            s_first_error_func: take(b, 0x1A8),
            s_first_error_line: le32(b, 0x1C8),
            s_last_error_time: time_hi(le32(b, 0x1CC), take::<1>(b, 0x279)[0]),
            s_last_error_ino: le32(b, 0x1D0),
            s_last_error_line: le32(b, 0x1D4),
            s_last_error_block: le64(b, 0x1D8),
            s_last_error_func: take(b, 0x1E0),
            s_mount_opts: take(b, 0x200),
            s_usr_quota_inum: le32(b, 0x240),
            s_grp_quota_inum: le32(b, 0x244),
            s_overhead_clusters: le32(b, 0x248),
            s_backup_bgs: u32_array(b, 0x24C),
            s_encrypt_algos: take(b, 0x254),
            s_encrypt_pw_salt: take(b, 0x258),
            s_lpf_ino: le32(b, 0x268),
            s_prj_quota_inum: le32(b, 0x26C),
            s_checksum_seed: le32(b, 0x270),
            s_first_error_errcode: take::<1>(b, 0x27A)[0],
            s_last_error_errcode: take::<1>(b, 0x27B)[0],
            s_encoding: le16(b, 0x27C),
            s_encoding_flags: le16(b, 0x27E),
            s_orphan_file_inum: le32(b, 0x280),
            s_checksum: le32(b, S_CHECKSUM_OFFSET),
        };

        // Checksum first: with metadata_csum a bad checksum means every
        // other field is suspect.
        if sb.has_ro_compat(RO_COMPAT_METADATA_CSUM) {
            if sb.s_checksum_type != EXT4_CRC32C_CHKSUM {
                return Err(corrupt(format!(
                    "unknown checksum algorithm {}",
                    sb.s_checksum_type
                )));
            }
            let data = b
                .get(..S_CHECKSUM_OFFSET)
                .ok_or_else(|| corrupt("short read"))?;
            let calc = crc32c(!0, data);
            if calc != sb.s_checksum {
                return Err(corrupt(format!(
                    "checksum mismatch (stored {:#010x}, computed {calc:#010x})",
                    sb.s_checksum
                )));
            }
        }
        if sb.has_incompat(INCOMPAT_JOURNAL_DEV) {
            // Its geometry fields are not a filesystem's: say what it is.
            return Err(Error::Incompatible(
                "this is an external ext3/ext4 journal device, not a filesystem".into(),
            ));
        }
        if sb.has_incompat(INCOMPAT_CASEFOLD) && sb.s_encoding != EXT4_ENC_UTF8_12_1 {
            // The kernel's ext4_sb_read_encoding knows no other.
            return Err(Error::Incompatible(format!(
                "unknown casefold encoding {} (only {EXT4_ENC_UTF8_12_1}, utf8-12.1, exists)",
                sb.s_encoding
            )));
        }
        sb.check_geometry(device_size)?;
        Ok(sb)
    }

    /// Serializes into `out` (the 1024 on-disk superblock bytes, previous
    /// contents kept for reserved space) and sets `s_checksum` when
    /// metadata_csum is on. Fields that parse derives rather than reads
    /// (hi halves without 64bit, s_first_ino/s_inode_size on revision 0,
    /// s_desc_size without 64bit) are left as they were on disk.
    pub(crate) fn write(&self, out: &mut [u8]) {
        let b = out;
        let is64 = self.has_incompat(INCOMPAT_64BIT);
        let lo = |v: u64| (v & 0xFFFF_FFFF) as u32;
        let hi = |v: u64| (v >> 32) as u32;
        let tlo = |t: i64| t as u32;
        let thi = |t: i64| ((t >> 32) & 0xFF) as u8;
        put_le32(b, 0x0, self.s_inodes_count);
        put_le32(b, 0x4, lo(self.s_blocks_count));
        put_le32(b, 0x8, lo(self.s_r_blocks_count));
        put_le32(b, 0xC, lo(self.s_free_blocks_count));
        if is64 {
            put_le32(b, 0x150, hi(self.s_blocks_count));
            put_le32(b, 0x154, hi(self.s_r_blocks_count));
            put_le32(b, 0x158, hi(self.s_free_blocks_count));
        }
        put_le32(b, 0x10, self.s_free_inodes_count);
        put_le32(b, 0x14, self.s_first_data_block);
        put_le32(b, 0x18, self.s_log_block_size);
        put_le32(b, 0x1C, self.s_log_cluster_size);
        put_le32(b, 0x20, self.s_blocks_per_group);
        put_le32(b, 0x24, self.s_clusters_per_group);
        put_le32(b, 0x28, self.s_inodes_per_group);
        put_le32(b, 0x2C, tlo(self.s_mtime));
        put(b, 0x275, &[thi(self.s_mtime)]);
        put_le32(b, 0x30, tlo(self.s_wtime));
        put(b, 0x274, &[thi(self.s_wtime)]);
        put_le16(b, 0x34, self.s_mnt_count);
        put_le16(b, 0x36, self.s_max_mnt_count as u16);
        put_le16(b, 0x38, self.s_magic);
        put_le16(b, 0x3A, self.s_state);
        put_le16(b, 0x3C, self.s_errors);
        put_le16(b, 0x3E, self.s_minor_rev_level);
        put_le32(b, 0x40, tlo(self.s_lastcheck));
        put(b, 0x277, &[thi(self.s_lastcheck)]);
        put_le32(b, 0x44, self.s_checkinterval);
        put_le32(b, 0x48, self.s_creator_os);
        put_le32(b, 0x4C, self.s_rev_level);
        put_le16(b, 0x50, self.s_def_resuid);
        put_le16(b, 0x52, self.s_def_resgid);
        if self.s_rev_level != GOOD_OLD_REV {
            put_le32(b, 0x54, self.s_first_ino);
            put_le16(b, 0x58, self.s_inode_size);
        }
        put_le16(b, 0x5A, self.s_block_group_nr);
        put_le32(b, 0x5C, self.s_feature_compat);
        put_le32(b, 0x60, self.s_feature_incompat);
        put_le32(b, 0x64, self.s_feature_ro_compat);
        put(b, 0x68, &self.s_uuid);
        put(b, 0x78, &self.s_volume_name);
        put(b, 0x88, &self.s_last_mounted);
        put_le32(b, 0xC8, self.s_algorithm_usage_bitmap);
        put(
            b,
            0xCC,
            &[self.s_prealloc_blocks, self.s_prealloc_dir_blocks],
        );
        put_le16(b, 0xCE, self.s_reserved_gdt_blocks);
        put(b, 0xD0, &self.s_journal_uuid);
        put_le32(b, 0xE0, self.s_journal_inum);
        put_le32(b, 0xE4, self.s_journal_dev);
        put_le32(b, 0xE8, self.s_last_orphan);
        for (slot, v) in bytes_from_mut(b, 0xEC)
            .chunks_exact_mut(4)
            .zip(&self.s_hash_seed)
        {
            put_le32(slot, 0, *v);
        }
        put(b, 0xFC, &[self.s_def_hash_version, self.s_jnl_backup_type]);
        if is64 {
            put_le16(b, 0xFE, self.s_desc_size);
        }
        put_le32(b, 0x100, self.s_default_mount_opts);
        put_le32(b, 0x104, self.s_first_meta_bg);
        put_le32(b, 0x108, tlo(self.s_mkfs_time));
        put(b, 0x276, &[thi(self.s_mkfs_time)]);
        for (slot, v) in bytes_from_mut(b, 0x10C)
            .chunks_exact_mut(4)
            .zip(&self.s_jnl_blocks)
        {
            put_le32(slot, 0, *v);
        }
        put_le16(b, 0x15C, self.s_min_extra_isize);
        put_le16(b, 0x15E, self.s_want_extra_isize);
        put_le32(b, 0x160, self.s_flags);
        put_le16(b, 0x164, self.s_raid_stride);
        put_le16(b, 0x166, self.s_mmp_update_interval);
        put_le64(b, 0x168, self.s_mmp_block);
        put_le32(b, 0x170, self.s_raid_stripe_width);
        put(
            b,
            0x174,
            &[
                self.s_log_groups_per_flex,
                self.s_checksum_type,
                self.s_encryption_level,
            ],
        );
        put_le64(b, 0x178, self.s_kbytes_written);
        put_le32(b, 0x180, self.s_snapshot_inum);
        put_le32(b, 0x184, self.s_snapshot_id);
        put_le64(b, 0x188, self.s_snapshot_r_blocks_count);
        put_le32(b, 0x190, self.s_snapshot_list);
        put_le32(b, 0x194, self.s_error_count);
        put_le32(b, 0x198, tlo(self.s_first_error_time));
        put(b, 0x278, &[thi(self.s_first_error_time)]);
        put_le32(b, 0x19C, self.s_first_error_ino);
        put_le64(b, 0x1A0, self.s_first_error_block);
        put(b, 0x1A8, &self.s_first_error_func);
        put_le32(b, 0x1C8, self.s_first_error_line);
        put_le32(b, 0x1CC, tlo(self.s_last_error_time));
        put(b, 0x279, &[thi(self.s_last_error_time)]);
        put_le32(b, 0x1D0, self.s_last_error_ino);
        put_le32(b, 0x1D4, self.s_last_error_line);
        put_le64(b, 0x1D8, self.s_last_error_block);
        put(b, 0x1E0, &self.s_last_error_func);
        put(b, 0x200, &self.s_mount_opts);
        put_le32(b, 0x240, self.s_usr_quota_inum);
        put_le32(b, 0x244, self.s_grp_quota_inum);
        put_le32(b, 0x248, self.s_overhead_clusters);
        put_le32(b, 0x24C, self.s_backup_bgs[0]);
        put_le32(b, 0x250, self.s_backup_bgs[1]);
        put(b, 0x254, &self.s_encrypt_algos);
        put(b, 0x258, &self.s_encrypt_pw_salt);
        put_le32(b, 0x268, self.s_lpf_ino);
        put_le32(b, 0x26C, self.s_prj_quota_inum);
        put_le32(b, 0x270, self.s_checksum_seed);
        put(
            b,
            0x27A,
            &[self.s_first_error_errcode, self.s_last_error_errcode],
        );
        put_le16(b, 0x27C, self.s_encoding);
        put_le16(b, 0x27E, self.s_encoding_flags);
        put_le32(b, 0x280, self.s_orphan_file_inum);
        let csum = if self.has_ro_compat(RO_COMPAT_METADATA_CSUM) {
            b.get(..S_CHECKSUM_OFFSET).map(|d| crc32c(!0, d))
        } else {
            None
        };
        put_le32(b, S_CHECKSUM_OFFSET, csum.unwrap_or(self.s_checksum));
    }

    /// The kernel's ext4_fill_super geometry checks.
    fn check_geometry(&self, device_size: u64) -> Result<()> {
        if self.s_log_block_size > MAX_BLOCK_LOG_SIZE - MIN_BLOCK_LOG_SIZE {
            return Err(corrupt(format!(
                "invalid log block size {}",
                self.s_log_block_size
            )));
        }
        let block_size = self.block_size();
        if self.has_ro_compat(RO_COMPAT_BIGALLOC) {
            let Some(ratio_bits) = self.s_log_cluster_size.checked_sub(self.s_log_block_size)
            else {
                return Err(corrupt(format!(
                    "cluster size (log {}) smaller than block size (log {})",
                    self.s_log_cluster_size, self.s_log_block_size
                )));
            };
            if self.s_log_cluster_size > MAX_CLUSTER_LOG_SIZE - MIN_BLOCK_LOG_SIZE {
                return Err(corrupt(format!(
                    "invalid log cluster size {}",
                    self.s_log_cluster_size
                )));
            }
            if self.s_clusters_per_group == 0
                || self.s_clusters_per_group > block_size.saturating_mul(8)
            {
                return Err(corrupt(format!(
                    "invalid clusters per group {}",
                    self.s_clusters_per_group
                )));
            }
            if u64::from(self.s_blocks_per_group)
                != u64::from(self.s_clusters_per_group) << ratio_bits
            {
                return Err(corrupt(format!(
                    "blocks per group {} does not match clusters per group {}",
                    self.s_blocks_per_group, self.s_clusters_per_group
                )));
            }
        } else if self.s_log_cluster_size != self.s_log_block_size {
            return Err(corrupt(format!(
                "cluster size (log {}) differs from block size (log {}) without bigalloc",
                self.s_log_cluster_size, self.s_log_block_size
            )));
        } else if self.s_blocks_per_group == 0
            || self.s_blocks_per_group > block_size.saturating_mul(8)
        {
            return Err(corrupt(format!(
                "invalid blocks per group {}",
                self.s_blocks_per_group
            )));
        }
        if self.s_blocks_per_group < 8 {
            return Err(corrupt(format!(
                "invalid blocks per group {}",
                self.s_blocks_per_group
            )));
        }

        if self.s_rev_level != GOOD_OLD_REV {
            let isz = self.s_inode_size;
            if isz < GOOD_OLD_INODE_SIZE || !isz.is_power_of_two() || u32::from(isz) > block_size {
                return Err(corrupt(format!("unsupported inode size {isz}")));
            }
            if self.s_first_ino < GOOD_OLD_FIRST_INO {
                return Err(corrupt(format!("invalid first inode {}", self.s_first_ino)));
            }
            if let Some(max) = isz.checked_sub(GOOD_OLD_INODE_SIZE).filter(|&m| m > 0)
                && (self.s_want_extra_isize > max || self.s_min_extra_isize > max)
            {
                return Err(corrupt("extra inode size fields larger than the inode"));
            }
        }
        let inodes_per_block = block_size
            .checked_div(u32::from(self.s_inode_size))
            .ok_or_else(|| corrupt("inode size 0"))?;
        if self.s_inodes_per_group < inodes_per_block
            || self.s_inodes_per_group > block_size.saturating_mul(8)
        {
            return Err(corrupt(format!(
                "invalid inodes per group {}",
                self.s_inodes_per_group
            )));
        }
        if self.s_first_ino > self.s_inodes_count {
            return Err(corrupt(format!(
                "first inode {} beyond inode count {}",
                self.s_first_ino, self.s_inodes_count
            )));
        }

        if self.has_incompat(INCOMPAT_64BIT) {
            let d = self.s_desc_size;
            if !(MIN_DESC_SIZE_64BIT..=MAX_DESC_SIZE).contains(&d) || !d.is_power_of_two() {
                return Err(corrupt(format!("unsupported descriptor size {d}")));
            }
        }

        if u64::from(self.s_first_data_block) >= self.s_blocks_count {
            return Err(corrupt(format!(
                "first data block {} beyond block count {}",
                self.s_first_data_block, self.s_blocks_count
            )));
        }
        if self.s_first_data_block == 0
            && block_size == 1024
            && !self.has_ro_compat(RO_COMPAT_BIGALLOC)
        {
            return Err(corrupt("first data block is 0 with a 1k block size"));
        }
        if block_size > 1024 && self.s_first_data_block != 0 {
            return Err(corrupt(format!(
                "first data block {} with block size {block_size}",
                self.s_first_data_block
            )));
        }
        // block_size() is 1024 << log, never 0.
        let dev_blocks = device_size.checked_div(u64::from(block_size)).unwrap_or(0);
        if self.s_blocks_count > dev_blocks {
            return Err(corrupt(format!(
                "block count {} exceeds size of device ({dev_blocks} blocks)",
                self.s_blocks_count
            )));
        }
        let groups = self.groups_count();
        if groups.saturating_mul(u64::from(self.s_inodes_per_group))
            != u64::from(self.s_inodes_count)
        {
            return Err(corrupt(format!(
                "inode count {} is not groups {groups} x inodes per group {}",
                self.s_inodes_count, self.s_inodes_per_group
            )));
        }
        if self.has_incompat(INCOMPAT_META_BG) {
            let gdb = groups.div_ceil(u64::from(self.desc_per_block()));
            if u64::from(self.s_first_meta_bg) > gdb {
                return Err(corrupt(format!(
                    "first meta block group {} too large",
                    self.s_first_meta_bg
                )));
            }
        }
        if self.has_incompat(INCOMPAT_MMP)
            && (self.s_mmp_block <= u64::from(self.s_first_data_block)
                || self.s_mmp_block >= self.s_blocks_count)
        {
            return Err(corrupt(format!("invalid MMP block {}", self.s_mmp_block)));
        }
        Ok(())
    }

    pub(crate) fn has_compat(&self, bit: u32) -> bool {
        self.s_feature_compat & bit != 0
    }
    pub(crate) fn has_incompat(&self, bit: u32) -> bool {
        self.s_feature_incompat & bit != 0
    }
    pub(crate) fn has_ro_compat(&self, bit: u32) -> bool {
        self.s_feature_ro_compat & bit != 0
    }

    /// Casefolded directories refuse names that are not valid UTF-8
    /// (s_encoding_flags EXT4_ENC_STRICT_MODE_FL).
    pub(crate) fn strict_encoding(&self) -> bool {
        self.has_incompat(INCOMPAT_CASEFOLD) && self.s_encoding_flags & EXT4_ENC_STRICT_MODE_FL != 0
    }

    /// Block size in bytes (valid after parse: 1 KiB..64 KiB).
    pub(crate) fn block_size(&self) -> u32 {
        1024u32
            << self
                .s_log_block_size
                .min(MAX_BLOCK_LOG_SIZE - MIN_BLOCK_LOG_SIZE)
    }

    /// log2 of (cluster size / block size); 0 without bigalloc.
    pub(crate) fn cluster_bits(&self) -> u32 {
        if self.has_ro_compat(RO_COMPAT_BIGALLOC) {
            self.s_log_cluster_size
                .saturating_sub(self.s_log_block_size)
        } else {
            0
        }
    }

    /// Number of block groups.
    pub(crate) fn groups_count(&self) -> u64 {
        let data = self
            .s_blocks_count
            .saturating_sub(u64::from(self.s_first_data_block));
        data.div_ceil(u64::from(self.s_blocks_per_group.max(1)))
    }

    #[expect(
        clippy::arithmetic_side_effects,
        reason = "the divisor is at least MIN_DESC_SIZE (32), never 0"
    )]
    pub(crate) fn desc_per_block(&self) -> u32 {
        self.block_size() / u32::from(self.s_desc_size.max(MIN_DESC_SIZE))
    }

    /// Whether group `group` holds a superblock backup (ext4_bg_has_super).
    pub(crate) fn bg_has_super(&self, group: u64) -> bool {
        if group == 0 {
            return true;
        }
        if self.has_compat(COMPAT_SPARSE_SUPER2) {
            return group == u64::from(self.s_backup_bgs[0])
                || group == u64::from(self.s_backup_bgs[1]);
        }
        if group <= 1 || !self.has_ro_compat(RO_COMPAT_SPARSE_SUPER) {
            return true;
        }
        if group & 1 == 0 {
            return false;
        }
        is_power_of(group, 3) || is_power_of(group, 5) || is_power_of(group, 7)
    }

    /// Volume label without trailing NULs.
    pub(crate) fn label(&self) -> Vec<u8> {
        crate::ext4::util::until_nul(&self.s_volume_name).to_vec()
    }

    /// Feature names in dumpe2fs order (compat, incompat, ro_compat).
    pub(crate) fn feature_list(&self) -> Vec<String> {
        let mut v = feature_names(FeatureKind::Compat, self.s_feature_compat);
        v.extend(feature_names(
            FeatureKind::Incompat,
            self.s_feature_incompat,
        ));
        v.extend(feature_names(
            FeatureKind::RoCompat,
            self.s_feature_ro_compat,
        ));
        v
    }

    /// "ext4", "ext3" or "ext2", as blkid would classify the filesystem.
    pub(crate) fn fs_type(&self) -> &'static str {
        let ext4_incompat = INCOMPAT_EXTENTS
            | INCOMPAT_64BIT
            | INCOMPAT_FLEX_BG
            | INCOMPAT_MMP
            | INCOMPAT_EA_INODE
            | INCOMPAT_CSUM_SEED
            | INCOMPAT_LARGEDIR
            | INCOMPAT_INLINE_DATA
            | INCOMPAT_ENCRYPT
            | INCOMPAT_CASEFOLD
            | INCOMPAT_META_BG;
        let ext4_ro = RO_COMPAT_HUGE_FILE
            | RO_COMPAT_GDT_CSUM
            | RO_COMPAT_DIR_NLINK
            | RO_COMPAT_EXTRA_ISIZE
            | RO_COMPAT_BIGALLOC
            | RO_COMPAT_METADATA_CSUM
            | RO_COMPAT_QUOTA
            | RO_COMPAT_PROJECT
            | RO_COMPAT_VERITY
            | RO_COMPAT_ORPHAN_PRESENT;
        if self.s_feature_incompat & ext4_incompat != 0 || self.s_feature_ro_compat & ext4_ro != 0 {
            "ext4"
        } else if self.has_compat(COMPAT_HAS_JOURNAL) {
            "ext3"
        } else {
            "ext2"
        }
    }
}

fn is_power_of(mut n: u64, base: u64) -> bool {
    while n > 1 {
        if !n.is_multiple_of(base) {
            return false;
        }
        match n.checked_div(base) {
            Some(q) => n = q,
            None => return false,
        }
    }
    n == 1
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects)]
pub(crate) mod tests {
    use super::*;

    /// A minimal valid superblock: 4 KiB blocks, 2 groups, metadata_csum.
    pub(crate) fn sample() -> Vec<u8> {
        let mut b = vec![0u8; SUPERBLOCK_SIZE];
        let put32 =
            |b: &mut Vec<u8>, off: usize, v: u32| b[off..off + 4].copy_from_slice(&v.to_le_bytes());
        let put16 =
            |b: &mut Vec<u8>, off: usize, v: u16| b[off..off + 2].copy_from_slice(&v.to_le_bytes());
        put32(&mut b, 0x0, 2 * 2048); // inodes
        put32(&mut b, 0x4, 2 * 32768); // blocks
        put32(&mut b, 0x14, 0); // first data block
        put32(&mut b, 0x18, 2); // 4 KiB
        put32(&mut b, 0x1C, 2);
        put32(&mut b, 0x20, 32768);
        put32(&mut b, 0x24, 32768);
        put32(&mut b, 0x28, 2048);
        put16(&mut b, 0x38, EXT4_SUPER_MAGIC);
        put32(&mut b, 0x4C, 1);
        put32(&mut b, 0x54, 11);
        put16(&mut b, 0x58, 256);
        put32(&mut b, 0x5C, COMPAT_HAS_JOURNAL | COMPAT_DIR_INDEX);
        put32(
            &mut b,
            0x60,
            INCOMPAT_FILETYPE | INCOMPAT_EXTENTS | INCOMPAT_64BIT,
        );
        put32(
            &mut b,
            0x64,
            RO_COMPAT_METADATA_CSUM | RO_COMPAT_SPARSE_SUPER,
        );
        put16(&mut b, 0xFE, 64);
        b[0x175] = EXT4_CRC32C_CHKSUM;
        b[0x78..0x7d].copy_from_slice(b"label");
        fix_csum(&mut b);
        b
    }

    pub(crate) fn fix_csum(b: &mut [u8]) {
        let c = crc32c(!0, &b[..S_CHECKSUM_OFFSET]);
        b[S_CHECKSUM_OFFSET..S_CHECKSUM_OFFSET + 4].copy_from_slice(&c.to_le_bytes());
    }

    const DEV: u64 = 2 * 32768 * 4096;

    fn err_text(b: &[u8]) -> String {
        Superblock::parse(b, DEV).unwrap_err().to_string()
    }

    #[test]
    fn parses_sample() {
        let sb = Superblock::parse(&sample(), DEV).unwrap();
        assert_eq!(sb.block_size(), 4096);
        assert_eq!(sb.groups_count(), 2);
        assert_eq!(sb.label(), b"label");
        assert_eq!(sb.fs_type(), "ext4");
        assert_eq!(
            sb.feature_list(),
            [
                "has_journal",
                "dir_index",
                "filetype",
                "extent",
                "64bit",
                "sparse_super",
                "metadata_csum"
            ]
        );
    }

    #[test]
    fn bad_magic_is_incompatible() {
        let mut b = sample();
        b[0x38] ^= 1;
        assert!(matches!(
            Superblock::parse(&b, DEV),
            Err(Error::Incompatible(_))
        ));
    }

    #[test]
    fn casefold_encoding() {
        let mut b = sample();
        let incompat = le32(&b, 0x60) | INCOMPAT_CASEFOLD;
        b[0x60..0x64].copy_from_slice(&incompat.to_le_bytes());
        for (encoding, flags, strict) in [(1u16, 0u16, false), (1, 1, true)] {
            b[0x27C..0x27E].copy_from_slice(&encoding.to_le_bytes());
            b[0x27E..0x280].copy_from_slice(&flags.to_le_bytes());
            fix_csum(&mut b);
            let sb = Superblock::parse(&b, DEV).unwrap();
            assert_eq!(sb.strict_encoding(), strict);
        }
        b[0x27C..0x27E].copy_from_slice(&2u16.to_le_bytes());
        fix_csum(&mut b);
        assert!(
            err_text(&b).contains("unknown casefold encoding 2"),
            "{}",
            err_text(&b)
        );
    }

    #[test]
    fn bad_checksum() {
        let mut b = sample();
        b[0x100] ^= 1;
        assert!(
            err_text(&b).contains("checksum mismatch"),
            "{}",
            err_text(&b)
        );
    }

    #[test]
    fn geometry_checks() {
        let cases: &[(usize, u32, &str)] = &[
            (0x18, 7, "invalid log block size"),
            (0x1C, 3, "differs from block size"),
            (0x20, 0, "blocks per group"),
            (0x28, 1, "invalid inodes per group"),
            (0x0, 4095, "inode count"),
            (0x4, 3 * 32768, "exceeds size of device"),
            (0x14, 1, "first data block 1 with block size 4096"),
        ];
        for &(off, v, want) in cases {
            let mut b = sample();
            b[off..off + 4].copy_from_slice(&v.to_le_bytes());
            fix_csum(&mut b);
            let e = err_text(&b);
            assert!(e.contains(want), "offset {off:#x}: {e}");
        }
        let mut b = sample();
        b[0x58..0x5A].copy_from_slice(&200u16.to_le_bytes());
        fix_csum(&mut b);
        assert!(err_text(&b).contains("inode size 200"));
        let mut b = sample();
        b[0xFE..0x100].copy_from_slice(&48u16.to_le_bytes());
        fix_csum(&mut b);
        assert!(err_text(&b).contains("descriptor size 48"));
    }

    /// parse(write(x)) == x, and write(parse(bytes)) == bytes for a real
    /// superblock layout; changed fields get a fresh checksum.
    #[test]
    fn write_round_trip() {
        let raw = sample();
        let sb = Superblock::parse(&raw, DEV).unwrap();
        let mut out = raw.clone();
        sb.write(&mut out);
        assert_eq!(out, raw);
        let mut sb2 = sb.clone();
        sb2.s_free_blocks_count = (7u64 << 32) | 5;
        sb2.s_wtime = (3i64 << 32) | 1234;
        sb2.s_state = STATE_ERROR_FS;
        sb2.s_last_orphan = 77;
        sb2.s_kbytes_written = 1 << 40;
        sb2.write(&mut out);
        let back = Superblock::parse(&out, DEV).unwrap();
        assert_eq!(back.s_checksum, le32(&out, S_CHECKSUM_OFFSET));
        sb2.s_checksum = back.s_checksum;
        assert_eq!(back, sb2);
    }

    #[test]
    fn short_buffer() {
        assert!(err_text(&sample()[..512]).contains("short read"));
    }

    #[test]
    fn sparse_super_groups() {
        let sb = Superblock::parse(&sample(), DEV).unwrap();
        let with: Vec<u64> = (0..60).filter(|&g| sb.bg_has_super(g)).collect();
        assert_eq!(with, [0, 1, 3, 5, 7, 9, 25, 27, 49]);
    }
}
