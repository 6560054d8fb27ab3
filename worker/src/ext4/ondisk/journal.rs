//! The jbd2 journal superblock (big-endian, first block of the journal).
//! The read-only engine needs only its length (for statfs overhead, like
//! the kernel's j_total_len) and whether it holds unreplayed transactions.
//! Layout: Documentation/filesystems/ext4/journal.rst.

use crate::ext4::error::{Error, Result};
use crate::ext4::util::be32;

pub(crate) const JBD2_MAGIC_NUMBER: u32 = 0xC03B_3998;
pub(crate) const JBD2_SUPERBLOCK_V1: u32 = 3;
pub(crate) const JBD2_SUPERBLOCK_V2: u32 = 4;
/// Bytes of the journal superblock this parser reads.
pub(crate) const JOURNAL_SB_SIZE: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct JournalSuperblock {
    pub(crate) h_blocktype: u32,
    pub(crate) s_blocksize: u32,
    /// Total blocks in the journal.
    pub(crate) s_maxlen: u32,
    pub(crate) s_first: u32,
    pub(crate) s_sequence: u32,
    /// Block of the first transaction to replay; 0 if the journal is empty.
    pub(crate) s_start: u32,
    pub(crate) s_errno: i32,
    pub(crate) s_feature_compat: u32,
    pub(crate) s_feature_incompat: u32,
    pub(crate) s_feature_ro_compat: u32,
}

impl JournalSuperblock {
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
        let feat = |off: usize| if v2 { be32(b, off) } else { 0 };
        let sb = JournalSuperblock {
            h_blocktype,
            s_blocksize: be32(b, 0xC),
            s_maxlen: be32(b, 0x10),
            s_first: be32(b, 0x14),
            s_sequence: be32(b, 0x18),
            s_start: be32(b, 0x1C),
            s_errno: be32(b, 0x20) as i32,
            s_feature_compat: feat(0x24),
            s_feature_incompat: feat(0x28),
            s_feature_ro_compat: feat(0x2C),
        };
        if sb.s_first == 0 || sb.s_first >= sb.s_maxlen {
            return Err(bad(format!(
                "invalid first block {} (length {})",
                sb.s_first, sb.s_maxlen
            )));
        }
        Ok(sb)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse() {
        let mut b = vec![0u8; 1024];
        b[0..4].copy_from_slice(&JBD2_MAGIC_NUMBER.to_be_bytes());
        b[4..8].copy_from_slice(&JBD2_SUPERBLOCK_V2.to_be_bytes());
        b[0xC..0x10].copy_from_slice(&4096u32.to_be_bytes());
        b[0x10..0x14].copy_from_slice(&1024u32.to_be_bytes());
        b[0x14..0x18].copy_from_slice(&1u32.to_be_bytes());
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
}
