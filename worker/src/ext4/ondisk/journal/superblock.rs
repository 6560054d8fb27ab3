//! The jbd2 journal superblock (`journal_superblock_t`, first block of the
//! journal), v1 and v2. The statfs overhead needs its length; replay needs
//! everything; a journal writer updates s_start/s_sequence/s_errno.

use super::{
    Csum, Format, JBD2_CRC32C_CHKSUM, JBD2_FEATURE_COMPAT_CHECKSUM, JBD2_FEATURE_INCOMPAT_64BIT,
    JBD2_FEATURE_INCOMPAT_ASYNC_COMMIT, JBD2_FEATURE_INCOMPAT_CSUM_V2,
    JBD2_FEATURE_INCOMPAT_CSUM_V3, JBD2_FEATURE_INCOMPAT_FAST_COMMIT, JBD2_KNOWN_COMPAT,
    JBD2_KNOWN_INCOMPAT, JBD2_KNOWN_ROCOMPAT, JBD2_MAGIC_NUMBER, JBD2_SUPERBLOCK_V1,
    JBD2_SUPERBLOCK_V2,
};
use crate::ext4::checksum::crc32c;
use crate::ext4::error::{Error, Result};
use crate::ext4::util::{be32, put, put_be32, take};

/// Bytes of the journal superblock (sizeof(journal_superblock_t)).
pub(crate) const JOURNAL_SB_SIZE: usize = 1024;

// Field offsets (journal.rst, "Super Block").
const S_BLOCKSIZE: usize = 0xC;
const S_MAXLEN: usize = 0x10;
const S_FIRST: usize = 0x14;
const S_SEQUENCE: usize = 0x18;
const S_START: usize = 0x1C;
const S_ERRNO: usize = 0x20;
const S_FEATURE_COMPAT: usize = 0x24;
const S_FEATURE_INCOMPAT: usize = 0x28;
const S_FEATURE_RO_COMPAT: usize = 0x2C;
const S_UUID: usize = 0x30;
const S_NR_USERS: usize = 0x40;
const S_DYNSUPER: usize = 0x44;
const S_MAX_TRANSACTION: usize = 0x48;
const S_MAX_TRANS_DATA: usize = 0x4C;
const S_CHECKSUM_TYPE: usize = 0x50;
const S_NUM_FC_BLKS: usize = 0x54;
const S_HEAD: usize = 0x58;
const S_CHECKSUM: usize = 0xFC;
const S_USERS: usize = 0x100;
const USERS_LEN: usize = 16 * 48;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct JournalSuperblock {
    pub(crate) h_blocktype: u32,
    pub(crate) h_sequence: u32,
    pub(crate) s_blocksize: u32,
    /// Total blocks in the journal.
    pub(crate) s_maxlen: u32,
    /// First block of log information.
    pub(crate) s_first: u32,
    /// First commit ID expected in the log.
    pub(crate) s_sequence: u32,
    /// Block of the first transaction to replay; 0 if the journal is empty.
    pub(crate) s_start: u32,
    pub(crate) s_errno: i32,
    // v2 only (zero on v1):
    pub(crate) s_feature_compat: u32,
    pub(crate) s_feature_incompat: u32,
    pub(crate) s_feature_ro_compat: u32,
    pub(crate) s_uuid: [u8; 16],
    pub(crate) s_nr_users: u32,
    pub(crate) s_dynsuper: u32,
    pub(crate) s_max_transaction: u32,
    pub(crate) s_max_trans_data: u32,
    pub(crate) s_checksum_type: u8,
    pub(crate) s_num_fc_blks: u32,
    pub(crate) s_head: u32,
    pub(crate) s_checksum: u32,
    pub(crate) s_users: Vec<u8>,
}

impl JournalSuperblock {
    /// Parses and checks the superblock as jbd2's journal_get_superblock
    /// does: magic, version, first block, features, checksum type and
    /// checksum. `block` is where it was read (for errors).
    pub(crate) fn parse(b: &[u8], block: u64) -> Result<JournalSuperblock> {
        let bad = |why: String| Error::corrupt(format!("journal superblock: {why}"), block);
        if b.len() < JOURNAL_SB_SIZE {
            return Err(bad("short read".into()));
        }
        let magic = be32(b, 0);
        if magic != JBD2_MAGIC_NUMBER {
            return Err(bad(format!("bad magic {magic:#010x}")));
        }
        let h_blocktype = be32(b, 4);
        if h_blocktype != JBD2_SUPERBLOCK_V1 && h_blocktype != JBD2_SUPERBLOCK_V2 {
            return Err(bad(format!("unknown block type {h_blocktype}")));
        }
        let v2 = h_blocktype == JBD2_SUPERBLOCK_V2;
        let v2_32 = |off: usize| if v2 { be32(b, off) } else { 0 };
        let sb = JournalSuperblock {
            h_blocktype,
            h_sequence: be32(b, 8),
            s_blocksize: be32(b, S_BLOCKSIZE),
            s_maxlen: be32(b, S_MAXLEN),
            s_first: be32(b, S_FIRST),
            s_sequence: be32(b, S_SEQUENCE),
            s_start: be32(b, S_START),
            s_errno: be32(b, S_ERRNO) as i32,
            s_feature_compat: v2_32(S_FEATURE_COMPAT),
            s_feature_incompat: v2_32(S_FEATURE_INCOMPAT),
            s_feature_ro_compat: v2_32(S_FEATURE_RO_COMPAT),
            s_uuid: take(b, S_UUID),
            s_nr_users: be32(b, S_NR_USERS),
            s_dynsuper: be32(b, S_DYNSUPER),
            s_max_transaction: be32(b, S_MAX_TRANSACTION),
            s_max_trans_data: be32(b, S_MAX_TRANS_DATA),
            s_checksum_type: b.get(S_CHECKSUM_TYPE).copied().unwrap_or(0),
            s_num_fc_blks: be32(b, S_NUM_FC_BLKS),
            s_head: be32(b, S_HEAD),
            s_checksum: be32(b, S_CHECKSUM),
            s_users: b.get(S_USERS..S_USERS + USERS_LEN).unwrap_or(&[]).to_vec(),
        };
        if sb.s_first == 0 || sb.s_first >= sb.s_maxlen {
            return Err(bad(format!(
                "invalid first block {} (length {})",
                sb.s_first, sb.s_maxlen
            )));
        }
        let unknown = (
            sb.s_feature_compat & !JBD2_KNOWN_COMPAT,
            sb.s_feature_incompat & !JBD2_KNOWN_INCOMPAT,
            sb.s_feature_ro_compat & !JBD2_KNOWN_ROCOMPAT,
        );
        if unknown != (0, 0, 0) {
            return Err(Error::Incompatible(format!(
                "journal: unknown features (compat {:#x}, incompat {:#x}, ro_compat {:#x})",
                unknown.0, unknown.1, unknown.2
            )));
        }
        let v2c = sb.has_incompat(JBD2_FEATURE_INCOMPAT_CSUM_V2);
        let v3c = sb.has_incompat(JBD2_FEATURE_INCOMPAT_CSUM_V3);
        if v2c && v3c {
            return Err(bad("both checksum v2 and v3 are set".into()));
        }
        if (v2c || v3c) && sb.s_feature_compat & JBD2_FEATURE_COMPAT_CHECKSUM != 0 {
            return Err(bad("both checksum v1 and v2/v3 are set".into()));
        }
        if v2c || v3c {
            if sb.s_checksum_type != JBD2_CRC32C_CHKSUM {
                return Err(bad(format!("unknown checksum type {}", sb.s_checksum_type)));
            }
            let want = superblock_csum(b);
            if sb.s_checksum != want {
                return Err(bad(format!(
                    "bad checksum {:#010x} (computed {want:#010x})",
                    sb.s_checksum
                )));
            }
        }
        Ok(sb)
    }

    /// Serializes into `out` (at least [`JOURNAL_SB_SIZE`] bytes; bytes it
    /// does not know are kept) and sets s_checksum with csum v2/v3.
    pub(crate) fn write(&self, out: &mut [u8]) {
        let b = out;
        put_be32(b, 0, JBD2_MAGIC_NUMBER);
        put_be32(b, 4, self.h_blocktype);
        put_be32(b, 8, self.h_sequence);
        put_be32(b, S_BLOCKSIZE, self.s_blocksize);
        put_be32(b, S_MAXLEN, self.s_maxlen);
        put_be32(b, S_FIRST, self.s_first);
        put_be32(b, S_SEQUENCE, self.s_sequence);
        put_be32(b, S_START, self.s_start);
        put_be32(b, S_ERRNO, self.s_errno as u32);
        if self.h_blocktype == JBD2_SUPERBLOCK_V2 {
            put_be32(b, S_FEATURE_COMPAT, self.s_feature_compat);
            put_be32(b, S_FEATURE_INCOMPAT, self.s_feature_incompat);
            put_be32(b, S_FEATURE_RO_COMPAT, self.s_feature_ro_compat);
        }
        put(b, S_UUID, &self.s_uuid);
        put_be32(b, S_NR_USERS, self.s_nr_users);
        put_be32(b, S_DYNSUPER, self.s_dynsuper);
        put_be32(b, S_MAX_TRANSACTION, self.s_max_transaction);
        put_be32(b, S_MAX_TRANS_DATA, self.s_max_trans_data);
        put(b, S_CHECKSUM_TYPE, &[self.s_checksum_type]);
        put_be32(b, S_NUM_FC_BLKS, self.s_num_fc_blks);
        put_be32(b, S_HEAD, self.s_head);
        put(b, S_USERS, &self.s_users);
        let csum = if self.format(0).has_csum_v2or3() {
            superblock_csum(b)
        } else {
            self.s_checksum
        };
        put_be32(b, S_CHECKSUM, csum);
    }

    pub(crate) fn has_incompat(&self, bit: u32) -> bool {
        self.s_feature_incompat & bit != 0
    }

    /// The block layout its features imply. `block_size` is the
    /// filesystem's (the caller checks s_blocksize against it).
    pub(crate) fn format(&self, block_size: usize) -> Format {
        let csum = if self.has_incompat(JBD2_FEATURE_INCOMPAT_CSUM_V3) {
            Csum::V3
        } else if self.has_incompat(JBD2_FEATURE_INCOMPAT_CSUM_V2) {
            Csum::V2
        } else {
            Csum::None
        };
        Format {
            block_size,
            is64: self.has_incompat(JBD2_FEATURE_INCOMPAT_64BIT),
            csum,
            checksum_v1: self.s_feature_compat & JBD2_FEATURE_COMPAT_CHECKSUM != 0,
            async_commit: self.has_incompat(JBD2_FEATURE_INCOMPAT_ASYNC_COMMIT),
            seed: crc32c(!0, &self.s_uuid),
        }
    }

    /// Blocks at the end of the journal reserved for fast commits (0
    /// without the feature).
    pub(crate) fn fast_commit_blocks(&self) -> u32 {
        if !self.has_incompat(JBD2_FEATURE_INCOMPAT_FAST_COMMIT) {
            0
        } else if self.s_num_fc_blks == 0 {
            super::DEFAULT_FAST_COMMIT_BLOCKS
        } else {
            self.s_num_fc_blks
        }
    }
}

/// crc32c(~0) over the 1024 superblock bytes with s_checksum zeroed.
fn superblock_csum(b: &[u8]) -> u32 {
    let sb = b.get(..JOURNAL_SB_SIZE).unwrap_or(b);
    super::csum_with_hole(!0, sb, S_CHECKSUM)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(v2: bool) -> Vec<u8> {
        let mut b = vec![0u8; 1024];
        b[0..4].copy_from_slice(&JBD2_MAGIC_NUMBER.to_be_bytes());
        let t = if v2 {
            JBD2_SUPERBLOCK_V2
        } else {
            JBD2_SUPERBLOCK_V1
        };
        b[4..8].copy_from_slice(&t.to_be_bytes());
        b[0xC..0x10].copy_from_slice(&4096u32.to_be_bytes());
        b[0x10..0x14].copy_from_slice(&1024u32.to_be_bytes());
        b[0x14..0x18].copy_from_slice(&1u32.to_be_bytes());
        b
    }

    #[test]
    fn parse() {
        let mut b = sample(true);
        let j = JournalSuperblock::parse(&b, 7).unwrap();
        assert_eq!((j.s_maxlen, j.s_first, j.s_start), (1024, 1, 0));
        b[0x14..0x18].copy_from_slice(&1024u32.to_be_bytes());
        assert!(
            JournalSuperblock::parse(&b, 7)
                .unwrap_err()
                .to_string()
                .contains("invalid first block")
        );
        b[0] = 0;
        assert!(
            JournalSuperblock::parse(&b, 7)
                .unwrap_err()
                .to_string()
                .contains("bad magic")
        );
        assert!(JournalSuperblock::parse(&b[..10], 7).is_err());
    }

    #[test]
    fn v1_has_no_features() {
        let mut b = sample(false);
        b[0x28..0x2C].copy_from_slice(&0xFFu32.to_be_bytes());
        let j = JournalSuperblock::parse(&b, 0).unwrap();
        assert_eq!(j.s_feature_incompat, 0);
        assert_eq!(j.format(4096).tag_bytes(), 8);
    }

    #[test]
    fn round_trip_with_checksum() {
        let b = sample(true);
        let mut j = JournalSuperblock::parse(&b, 0).unwrap();
        j.s_feature_incompat = JBD2_FEATURE_INCOMPAT_CSUM_V3
            | JBD2_FEATURE_INCOMPAT_64BIT
            | super::super::JBD2_FEATURE_INCOMPAT_REVOKE;
        j.s_checksum_type = JBD2_CRC32C_CHKSUM;
        j.s_uuid = [9; 16];
        j.s_sequence = 77;
        j.s_start = 1;
        j.s_errno = -5;
        j.s_users = vec![3; USERS_LEN];
        let mut out = vec![0u8; 1024];
        j.write(&mut out);
        let back = JournalSuperblock::parse(&out, 0).unwrap();
        j.s_checksum = back.s_checksum;
        assert_eq!(back, j);
        assert_eq!(back.format(4096).csum, Csum::V3);
        // A flipped byte fails the checksum.
        out[0x200] ^= 1;
        let e = JournalSuperblock::parse(&out, 0).unwrap_err().to_string();
        assert!(e.contains("bad checksum"), "{e}");
    }

    #[test]
    fn refuses_bad_feature_sets() {
        let mut b = sample(true);
        b[0x28..0x2C].copy_from_slice(&0x8000u32.to_be_bytes());
        let e = JournalSuperblock::parse(&b, 0).unwrap_err().to_string();
        assert!(e.contains("unknown features"), "{e}");
        b[0x28..0x2C].copy_from_slice(
            &(JBD2_FEATURE_INCOMPAT_CSUM_V2 | JBD2_FEATURE_INCOMPAT_CSUM_V3).to_be_bytes(),
        );
        let e = JournalSuperblock::parse(&b, 0).unwrap_err().to_string();
        assert!(e.contains("v2 and v3"), "{e}");
        b[0x28..0x2C].copy_from_slice(&JBD2_FEATURE_INCOMPAT_CSUM_V3.to_be_bytes());
        b[0x50] = 1;
        let e = JournalSuperblock::parse(&b, 0).unwrap_err().to_string();
        assert!(e.contains("checksum type"), "{e}");
    }

    #[test]
    fn fast_commit_area() {
        let b = sample(true);
        let mut j = JournalSuperblock::parse(&b, 0).unwrap();
        assert_eq!(j.fast_commit_blocks(), 0);
        j.s_feature_incompat = JBD2_FEATURE_INCOMPAT_FAST_COMMIT;
        assert_eq!(j.fast_commit_blocks(), 256);
        j.s_num_fc_blks = 10;
        assert_eq!(j.fast_commit_blocks(), 10);
    }
}
