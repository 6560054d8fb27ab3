//! jbd2 on-disk structures (all big-endian): the journal superblock, the
//! common block header, descriptor blocks and their tags, commit blocks,
//! revoke blocks and the block tail checksum. Layout:
//! Documentation/filesystems/ext4/journal.rst in the Linux tree.
//!
//! Each structure parses and writes; the replay (`ext4::journal`) reads
//! them and a journal writer will write them with the same code.

pub(crate) mod commit;
pub(crate) mod descriptor;
pub(crate) mod revoke;
pub(crate) mod superblock;

pub(crate) use superblock::JournalSuperblock;

use crate::ext4::checksum::crc32c;
use crate::ext4::util::{be32, put_be32};

pub(crate) const JBD2_MAGIC_NUMBER: u32 = 0xC03B_3998;

/// h_blocktype values.
pub(crate) const JBD2_DESCRIPTOR_BLOCK: u32 = 1;
pub(crate) const JBD2_COMMIT_BLOCK: u32 = 2;
pub(crate) const JBD2_SUPERBLOCK_V1: u32 = 3;
pub(crate) const JBD2_SUPERBLOCK_V2: u32 = 4;
pub(crate) const JBD2_REVOKE_BLOCK: u32 = 5;

/// s_feature_compat: the commit block carries a crc32_be of the
/// transaction's blocks (journal checksum v1).
pub(crate) const JBD2_FEATURE_COMPAT_CHECKSUM: u32 = 0x1;

pub(crate) const JBD2_FEATURE_INCOMPAT_REVOKE: u32 = 0x1;
pub(crate) const JBD2_FEATURE_INCOMPAT_64BIT: u32 = 0x2;
pub(crate) const JBD2_FEATURE_INCOMPAT_ASYNC_COMMIT: u32 = 0x4;
pub(crate) const JBD2_FEATURE_INCOMPAT_CSUM_V2: u32 = 0x8;
pub(crate) const JBD2_FEATURE_INCOMPAT_CSUM_V3: u32 = 0x10;
pub(crate) const JBD2_FEATURE_INCOMPAT_FAST_COMMIT: u32 = 0x20;

/// Features the kernel knows (JBD2_KNOWN_*_FEATURES); anything else
/// refuses the journal.
pub(crate) const JBD2_KNOWN_COMPAT: u32 = JBD2_FEATURE_COMPAT_CHECKSUM;
pub(crate) const JBD2_KNOWN_ROCOMPAT: u32 = 0;
pub(crate) const JBD2_KNOWN_INCOMPAT: u32 = JBD2_FEATURE_INCOMPAT_REVOKE
    | JBD2_FEATURE_INCOMPAT_64BIT
    | JBD2_FEATURE_INCOMPAT_ASYNC_COMMIT
    | JBD2_FEATURE_INCOMPAT_CSUM_V2
    | JBD2_FEATURE_INCOMPAT_CSUM_V3
    | JBD2_FEATURE_INCOMPAT_FAST_COMMIT;

/// Checksum types (s_checksum_type, h_chksum_type).
pub(crate) const JBD2_CRC32_CHKSUM: u8 = 1;
#[expect(dead_code, reason = "on-disk format value the engine does not act on")]
pub(crate) const JBD2_MD5_CHKSUM: u8 = 2;
#[expect(dead_code, reason = "on-disk format value the engine does not act on")]
pub(crate) const JBD2_SHA1_CHKSUM: u8 = 3;
pub(crate) const JBD2_CRC32C_CHKSUM: u8 = 4;
pub(crate) const JBD2_CRC32_CHKSUM_SIZE: u8 = 4;

/// Size of `journal_header_t`.
pub(crate) const HEADER_SIZE: usize = 12;
/// Size of `struct jbd2_journal_block_tail` (csum v2/v3).
pub(crate) const TAIL_SIZE: usize = 4;
/// Fast-commit blocks when s_num_fc_blks is 0 (JBD2_DEFAULT_FAST_COMMIT_BLOCKS).
pub(crate) const DEFAULT_FAST_COMMIT_BLOCKS: u32 = 256;

/// `journal_header_t`: the first 12 bytes of every journal metadata block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    pub(crate) h_blocktype: u32,
    pub(crate) h_sequence: u32,
}

impl Header {
    /// The header of `b`, or None when `b` does not start with the jbd2
    /// magic (for the log scan, that is the end of the log, not an error).
    pub(crate) fn parse(b: &[u8]) -> Option<Header> {
        if b.len() < HEADER_SIZE || be32(b, 0) != JBD2_MAGIC_NUMBER {
            return None;
        }
        Some(Header {
            h_blocktype: be32(b, 4),
            h_sequence: be32(b, 8),
        })
    }

    pub(crate) fn write(&self, out: &mut [u8]) {
        put_be32(out, 0, JBD2_MAGIC_NUMBER);
        put_be32(out, 4, self.h_blocktype);
        put_be32(out, 8, self.h_sequence);
    }
}

/// Which per-block checksums the journal carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Csum {
    /// None, or only compat CHECKSUM (a crc32_be in the commit block).
    None,
    /// CSUM_V2: 16-bit tag checksums.
    V2,
    /// CSUM_V3: 32-bit tag checksums in 16-byte tags.
    V3,
}

/// What a journal's features mean for the layout of its blocks, derived
/// once from the superblock ([`JournalSuperblock::format`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Format {
    pub(crate) block_size: usize,
    pub(crate) is64: bool,
    pub(crate) csum: Csum,
    /// compat CHECKSUM (v1 commit-block crc32_be).
    pub(crate) checksum_v1: bool,
    pub(crate) async_commit: bool,
    /// crc32c(~0, s_uuid): the seed of every v2/v3 checksum.
    pub(crate) seed: u32,
}

impl Format {
    pub(crate) fn has_csum_v2or3(&self) -> bool {
        self.csum != Csum::None
    }

    /// Bytes of one tag, not counting its UUID (the kernel's
    /// journal_tag_bytes: 16 with v3; else 12, +2 with v2, -4 without 64bit).
    pub(crate) fn tag_bytes(&self) -> usize {
        match (self.csum, self.is64) {
            (Csum::V3, _) => 16,
            (Csum::V2, true) => 14,
            (Csum::V2, false) => 10,
            (Csum::None, true) => 12,
            (Csum::None, false) => 8,
        }
    }

    /// Bytes at the end of a descriptor or revoke block reserved for the
    /// block tail checksum.
    pub(crate) fn tail_size(&self) -> usize {
        if self.has_csum_v2or3() { TAIL_SIZE } else { 0 }
    }
}

/// crc32c over `b` with the 4 bytes at `csum_off` taken as zero.
fn csum_with_hole(seed: u32, b: &[u8], csum_off: usize) -> u32 {
    let (Some(before), Some(after)) = (b.get(..csum_off), b.get(csum_off.saturating_add(4)..))
    else {
        return crc32c(seed, b);
    };
    let c = crc32c(seed, before);
    let c = crc32c(c, &[0; 4]);
    crc32c(c, after)
}

/// The block-tail checksum of a descriptor or revoke block (the kernel's
/// jbd2_descriptor_block_csum_verify): crc32c of the whole block with the
/// tail zeroed. Always true without csum v2/v3.
pub(crate) fn tail_csum_verify(fmt: &Format, b: &[u8]) -> bool {
    if !fmt.has_csum_v2or3() {
        return true;
    }
    let Some(off) = b.len().checked_sub(TAIL_SIZE) else {
        return false;
    };
    be32(b, off) == csum_with_hole(fmt.seed, b, off)
}

/// Sets the block-tail checksum (csum v2/v3 only).
pub(crate) fn tail_csum_set(fmt: &Format, b: &mut [u8]) {
    if !fmt.has_csum_v2or3() {
        return;
    }
    if let Some(off) = b.len().checked_sub(TAIL_SIZE) {
        let c = csum_with_hole(fmt.seed, b, off);
        put_be32(b, off, c);
    }
}

/// The checksum a tag carries for its data block (jbd2_block_tag_csum_*):
/// crc32c(seed, be32(sequence)) continued over the block as logged.
/// v2 tags keep the low 16 bits.
pub(crate) fn data_csum(fmt: &Format, sequence: u32, data: &[u8]) -> u32 {
    let c = crc32c(fmt.seed, &sequence.to_be_bytes());
    let c = crc32c(c, data);
    match fmt.csum {
        Csum::V2 => c & 0xFFFF,
        _ => c,
    }
}

/// The kernel's crc32_be (polynomial 0x04C11DB7, not reflected, no final
/// inversion), chained from `seed`: the compat CHECKSUM commit sum.
pub(crate) fn crc32_be(seed: u32, data: &[u8]) -> u32 {
    const ALG: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_MPEG_2);
    let mut d = ALG.digest_with_initial(seed);
    d.update(data);
    d.finalize()
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn fmt(csum: Csum, is64: bool) -> Format {
        Format {
            block_size: 1024,
            is64,
            csum,
            checksum_v1: false,
            async_commit: false,
            seed: crc32c(!0, &[7u8; 16]),
        }
    }

    #[test]
    fn header_round_trip() {
        let mut b = [0u8; 16];
        assert_eq!(Header::parse(&b), None);
        let h = Header {
            h_blocktype: JBD2_COMMIT_BLOCK,
            h_sequence: 0xdead_beef,
        };
        h.write(&mut b);
        assert_eq!(Header::parse(&b), Some(h));
        assert_eq!(Header::parse(&b[..11]), None);
    }

    #[test]
    fn tag_bytes_as_the_kernel() {
        assert_eq!(fmt(Csum::V3, false).tag_bytes(), 16);
        assert_eq!(fmt(Csum::V2, true).tag_bytes(), 14);
        assert_eq!(fmt(Csum::V2, false).tag_bytes(), 10);
        assert_eq!(fmt(Csum::None, true).tag_bytes(), 12);
        assert_eq!(fmt(Csum::None, false).tag_bytes(), 8);
    }

    #[test]
    fn tail_checksum() {
        let f = fmt(Csum::V3, true);
        let mut b = vec![0x5au8; 1024];
        assert!(!tail_csum_verify(&f, &b));
        tail_csum_set(&f, &mut b);
        assert!(tail_csum_verify(&f, &b));
        b[100] ^= 1;
        assert!(!tail_csum_verify(&f, &b));
        // Without v2/v3 there is nothing to check.
        assert!(tail_csum_verify(&fmt(Csum::None, true), &b));
    }

    #[test]
    fn crc32_be_is_the_kernels() {
        // crc32_be(~0, "123456789") is CRC-32/MPEG-2's check value.
        assert_eq!(crc32_be(!0, b"123456789"), 0x0376_E6E7);
        let a = crc32_be(!0, b"1234");
        assert_eq!(crc32_be(a, b"56789"), 0x0376_E6E7);
    }

    #[test]
    fn data_checksum_v2_is_16_bits() {
        let d = [1u8; 1024];
        let v3 = data_csum(&fmt(Csum::V3, true), 5, &d);
        assert_eq!(data_csum(&fmt(Csum::V2, true), 5, &d), v3 & 0xFFFF);
        assert_ne!(data_csum(&fmt(Csum::V3, true), 6, &d), v3);
    }
}
