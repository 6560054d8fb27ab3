//! Block group descriptors (`struct ext4_group_desc`, 32 or 64 bytes).
//! Layout: Documentation/filesystems/ext4/group_descr.rst.

use crate::ext4::checksum::{crc16, crc32c};
use crate::ext4::error::{Error, Result};
use crate::ext4::ondisk::superblock::{
    INCOMPAT_64BIT, MIN_DESC_SIZE, RO_COMPAT_GDT_CSUM, RO_COMPAT_METADATA_CSUM, Superblock,
};
use crate::ext4::util::{le16, le32, put_le16, put_le32};

/// Offset of `bg_checksum`.
const BG_CHECKSUM_OFFSET: usize = 0x1E;
/// First byte after `bg_checksum`.
const BG_CHECKSUM_END: usize = 0x20;

// bg_flags
pub(crate) const BG_INODE_UNINIT: u16 = 0x0001;
pub(crate) const BG_BLOCK_UNINIT: u16 = 0x0002;
#[cfg(test)]
pub(crate) const BG_INODE_ZEROED: u16 = 0x0004;

/// One group descriptor with lo/hi halves combined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GroupDesc {
    pub(crate) bg_block_bitmap: u64,
    pub(crate) bg_inode_bitmap: u64,
    pub(crate) bg_inode_table: u64,
    pub(crate) bg_free_blocks_count: u32,
    pub(crate) bg_free_inodes_count: u32,
    pub(crate) bg_used_dirs_count: u32,
    pub(crate) bg_flags: u16,
    pub(crate) bg_exclude_bitmap: u64,
    pub(crate) bg_block_bitmap_csum: u32,
    pub(crate) bg_inode_bitmap_csum: u32,
    pub(crate) bg_itable_unused: u32,
    pub(crate) bg_checksum: u16,
    /// Whether `bg_checksum` matched (always true without checksums).
    pub(crate) csum_ok: bool,
}

impl GroupDesc {
    /// Parses descriptor `group` from `b` (exactly `sb.s_desc_size` bytes,
    /// or 32 without 64bit). The checksum result is recorded in `csum_ok`;
    /// the caller decides (like the kernel, a read-only mount continues).
    pub(crate) fn parse(
        b: &[u8],
        group: u32,
        sb: &Superblock,
        csum_seed: u32,
    ) -> Result<GroupDesc> {
        let size = usize::from(sb.s_desc_size.max(MIN_DESC_SIZE));
        if b.len() < size {
            return Err(Error::corrupt(
                format!("group descriptor {group}: short"),
                0,
            ));
        }
        let is64 = sb.has_incompat(INCOMPAT_64BIT) && size >= 64;
        let hi32 = |off: usize| {
            if is64 {
                u64::from(le32(b, off)) << 32
            } else {
                0
            }
        };
        let hi16 = |off: usize| {
            if is64 {
                u32::from(le16(b, off)) << 16
            } else {
                0
            }
        };
        let bg_checksum = le16(b, BG_CHECKSUM_OFFSET);
        let csum_ok = match desc_csum(b.get(..size).unwrap_or(b), group, sb, csum_seed) {
            Some(c) => c == bg_checksum,
            None => true,
        };
        Ok(GroupDesc {
            bg_block_bitmap: u64::from(le32(b, 0x0)) | hi32(0x20),
            bg_inode_bitmap: u64::from(le32(b, 0x4)) | hi32(0x24),
            bg_inode_table: u64::from(le32(b, 0x8)) | hi32(0x28),
            bg_free_blocks_count: u32::from(le16(b, 0xC)) | hi16(0x2C),
            bg_free_inodes_count: u32::from(le16(b, 0xE)) | hi16(0x2E),
            bg_used_dirs_count: u32::from(le16(b, 0x10)) | hi16(0x30),
            bg_flags: le16(b, 0x12),
            bg_exclude_bitmap: u64::from(le32(b, 0x14)) | hi32(0x34),
            bg_block_bitmap_csum: u32::from(le16(b, 0x18)) | hi16(0x38),
            bg_inode_bitmap_csum: u32::from(le16(b, 0x1A)) | hi16(0x3A),
            bg_itable_unused: u32::from(le16(b, 0x1C)) | hi16(0x32),
            bg_checksum,
            csum_ok,
        })
    }
}

impl GroupDesc {
    /// Serializes descriptor `group` into `out` (its `s_desc_size` on-disk
    /// bytes, previous contents kept for reserved fields) and sets
    /// `bg_checksum` (metadata_csum or gdt_csum). High halves are written
    /// only with 64bit and 64-byte descriptors, as the kernel does.
    pub(crate) fn write(&self, out: &mut [u8], group: u32, sb: &Superblock, csum_seed: u32) {
        let size = usize::from(sb.s_desc_size.max(MIN_DESC_SIZE)).min(out.len());
        let b = out;
        let is64 = sb.has_incompat(INCOMPAT_64BIT) && size >= 64;
        let lo32 = |v: u64| (v & 0xFFFF_FFFF) as u32;
        let lo16 = |v: u32| (v & 0xFFFF) as u16;
        put_le32(b, 0x0, lo32(self.bg_block_bitmap));
        put_le32(b, 0x4, lo32(self.bg_inode_bitmap));
        put_le32(b, 0x8, lo32(self.bg_inode_table));
        put_le16(b, 0xC, lo16(self.bg_free_blocks_count));
        put_le16(b, 0xE, lo16(self.bg_free_inodes_count));
        put_le16(b, 0x10, lo16(self.bg_used_dirs_count));
        put_le16(b, 0x12, self.bg_flags);
        put_le32(b, 0x14, lo32(self.bg_exclude_bitmap));
        put_le16(b, 0x18, lo16(self.bg_block_bitmap_csum));
        put_le16(b, 0x1A, lo16(self.bg_inode_bitmap_csum));
        put_le16(b, 0x1C, lo16(self.bg_itable_unused));
        if is64 {
            put_le32(b, 0x20, (self.bg_block_bitmap >> 32) as u32);
            put_le32(b, 0x24, (self.bg_inode_bitmap >> 32) as u32);
            put_le32(b, 0x28, (self.bg_inode_table >> 32) as u32);
            put_le16(b, 0x2C, (self.bg_free_blocks_count >> 16) as u16);
            put_le16(b, 0x2E, (self.bg_free_inodes_count >> 16) as u16);
            put_le16(b, 0x30, (self.bg_used_dirs_count >> 16) as u16);
            put_le16(b, 0x32, (self.bg_itable_unused >> 16) as u16);
            put_le32(b, 0x34, (self.bg_exclude_bitmap >> 32) as u32);
            put_le16(b, 0x38, (self.bg_block_bitmap_csum >> 16) as u16);
            put_le16(b, 0x3A, (self.bg_inode_bitmap_csum >> 16) as u16);
        }
        let c = b
            .get(..size)
            .and_then(|d| desc_csum(d, group, sb, csum_seed))
            .unwrap_or(self.bg_checksum);
        put_le16(b, BG_CHECKSUM_OFFSET, c);
    }
}

/// The descriptor checksum the kernel's ext4_group_desc_csum computes, or
/// None when the filesystem has neither metadata_csum nor gdt_csum.
pub(crate) fn desc_csum(b: &[u8], group: u32, sb: &Superblock, csum_seed: u32) -> Option<u16> {
    let head = b.get(..BG_CHECKSUM_OFFSET)?;
    let tail = b.get(BG_CHECKSUM_END..).unwrap_or(&[]);
    if sb.has_ro_compat(RO_COMPAT_METADATA_CSUM) {
        let mut c = crc32c(csum_seed, &group.to_le_bytes());
        c = crc32c(c, head);
        c = crc32c(c, &[0, 0]);
        c = crc32c(c, tail);
        return Some((c & 0xFFFF) as u16);
    }
    if sb.has_ro_compat(RO_COMPAT_GDT_CSUM) {
        let mut c = crc16(!0, &sb.s_uuid);
        c = crc16(c, &group.to_le_bytes());
        c = crc16(c, head);
        if sb.has_incompat(INCOMPAT_64BIT) {
            c = crc16(c, tail);
        }
        return Some(c);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ext4::ondisk::superblock::tests as sbt;

    fn sb(ro_compat: u32) -> Superblock {
        let mut b = sbt::sample();
        b[0x64..0x68].copy_from_slice(&ro_compat.to_le_bytes());
        sbt::fix_csum(&mut b);
        Superblock::parse(&b, 1 << 30).unwrap()
    }

    fn desc(sb: &Superblock, seed: u32) -> Vec<u8> {
        let mut d = vec![0u8; 64];
        d[0..4].copy_from_slice(&100u32.to_le_bytes());
        d[4..8].copy_from_slice(&101u32.to_le_bytes());
        d[8..12].copy_from_slice(&102u32.to_le_bytes());
        d[0x28..0x2C].copy_from_slice(&1u32.to_le_bytes());
        d[0xC..0xE].copy_from_slice(&7u16.to_le_bytes());
        let c = desc_csum(&d, 3, sb, seed).unwrap();
        d[0x1E..0x20].copy_from_slice(&c.to_le_bytes());
        d
    }

    #[test]
    fn metadata_csum_desc() {
        let sb = sb(RO_COMPAT_METADATA_CSUM);
        let d = desc(&sb, 0x1234);
        let g = GroupDesc::parse(&d, 3, &sb, 0x1234).unwrap();
        assert!(g.csum_ok);
        assert_eq!(g.bg_inode_table, (1u64 << 32) | 102);
        assert_eq!(g.bg_free_blocks_count, 7);
        // Wrong group number or a flipped byte fails the checksum.
        assert!(!GroupDesc::parse(&d, 4, &sb, 0x1234).unwrap().csum_ok);
        let mut bad = d.clone();
        bad[0x10] ^= 1;
        assert!(!GroupDesc::parse(&bad, 3, &sb, 0x1234).unwrap().csum_ok);
        assert!(GroupDesc::parse(&d[..40], 3, &sb, 0x1234).is_err());
    }

    #[test]
    fn gdt_csum_desc() {
        let sb = sb(RO_COMPAT_GDT_CSUM);
        let d = desc(&sb, 0);
        assert!(GroupDesc::parse(&d, 3, &sb, 0).unwrap().csum_ok);
        let mut bad = d.clone();
        bad[0x30] ^= 1; // in the 64-bit tail, which gdt_csum covers with 64bit
        assert!(!GroupDesc::parse(&bad, 3, &sb, 0).unwrap().csum_ok);
    }

    /// parse(write(x)) == x with a fresh checksum, for both checksum kinds
    /// and 32-byte descriptors.
    #[test]
    fn write_round_trip() {
        for ro in [RO_COMPAT_METADATA_CSUM, RO_COMPAT_GDT_CSUM] {
            let sb = sb(ro);
            let d = desc(&sb, 0x1234);
            let g = GroupDesc::parse(&d, 3, &sb, 0x1234).unwrap();
            let mut out = d.clone();
            g.write(&mut out, 3, &sb, 0x1234);
            assert_eq!(out, d, "ro_compat {ro:#x}");
            let mut g2 = g.clone();
            g2.bg_free_blocks_count = 0x1_2345;
            g2.bg_free_inodes_count = 0x2_0001;
            g2.bg_used_dirs_count = 9;
            g2.bg_itable_unused = 0x3_0000;
            g2.bg_flags = BG_INODE_ZEROED;
            g2.bg_block_bitmap_csum = 0xdead_beef;
            g2.bg_inode_bitmap_csum = 0x1234_5678;
            g2.write(&mut out, 3, &sb, 0x1234);
            let back = GroupDesc::parse(&out, 3, &sb, 0x1234).unwrap();
            assert!(back.csum_ok);
            g2.bg_checksum = back.bg_checksum;
            assert_eq!(back, g2);
        }
        // Without checksums the stored bg_checksum is written unchanged.
        let sb = sb(0);
        let mut g = GroupDesc::parse(&[0u8; 64], 0, &sb, 0).unwrap();
        g.bg_checksum = 0xBEEF;
        g.bg_free_inodes_count = 5;
        let mut out = vec![0u8; 64];
        g.write(&mut out, 0, &sb, 0);
        assert_eq!(GroupDesc::parse(&out, 0, &sb, 0).unwrap(), g);
    }

    #[test]
    fn no_csum_feature() {
        let sb = sb(0);
        let d = vec![0u8; 64];
        assert!(GroupDesc::parse(&d, 0, &sb, 0).unwrap().csum_ok);
    }
}
