//! Commit blocks (`struct commit_header`): the end of a transaction, with
//! its commit time and, depending on the journal's features, a checksum:
//! compat CHECKSUM puts a crc32_be of the transaction's blocks in
//! h_chksum[0] (type CRC32, size 4); csum v2/v3 puts a crc32c of the
//! commit block itself there.

use super::{Csum, Format, Header, JBD2_COMMIT_BLOCK, csum_with_hole};
use crate::ext4::ondisk::{bytes_from, bytes_from_mut};
use crate::ext4::util::{be32, put, put_be32, take};

const H_CHKSUM_TYPE: usize = 0xC;
const H_CHKSUM_SIZE: usize = 0xD;
const H_CHKSUM: usize = 0x10;
const H_COMMIT_SEC: usize = 0x30;
const H_COMMIT_NSEC: usize = 0x38;
/// JBD2_CHECKSUM_BYTES: u32 words in h_chksum.
const CHKSUM_WORDS: usize = 8;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CommitBlock {
    pub(crate) sequence: u32,
    pub(crate) h_chksum_type: u8,
    pub(crate) h_chksum_size: u8,
    pub(crate) h_chksum: [u32; CHKSUM_WORDS],
    pub(crate) h_commit_sec: u64,
    pub(crate) h_commit_nsec: u32,
}

impl CommitBlock {
    /// The fields of commit block `b` (a whole journal block).
    pub(crate) fn parse(b: &[u8]) -> CommitBlock {
        let mut h_chksum = [0u32; CHKSUM_WORDS];
        for (w, word) in h_chksum
            .iter_mut()
            .zip(bytes_from(b, H_CHKSUM).chunks_exact(4))
        {
            *w = be32(word, 0);
        }
        CommitBlock {
            sequence: be32(b, 8),
            h_chksum_type: b.get(H_CHKSUM_TYPE).copied().unwrap_or(0),
            h_chksum_size: b.get(H_CHKSUM_SIZE).copied().unwrap_or(0),
            h_chksum,
            h_commit_sec: u64::from_be_bytes(take(b, H_COMMIT_SEC)),
            h_commit_nsec: be32(b, H_COMMIT_NSEC),
        }
    }

    /// Serializes into `out` (a whole journal block, zeroed first); with
    /// csum v2/v3 sets h_chksum[0] to the block's crc32c.
    pub(crate) fn write(&self, fmt: &Format, out: &mut [u8]) {
        out.fill(0);
        Header {
            h_blocktype: JBD2_COMMIT_BLOCK,
            h_sequence: self.sequence,
        }
        .write(out);
        put(
            out,
            H_CHKSUM_TYPE,
            &[self.h_chksum_type, self.h_chksum_size],
        );
        for (word, w) in bytes_from_mut(out, H_CHKSUM)
            .chunks_exact_mut(4)
            .zip(&self.h_chksum)
        {
            put_be32(word, 0, *w);
        }
        put(out, H_COMMIT_SEC, &self.h_commit_sec.to_be_bytes());
        put_be32(out, H_COMMIT_NSEC, self.h_commit_nsec);
        if fmt.csum != Csum::None {
            let c = csum_with_hole(fmt.seed, out, H_CHKSUM);
            put_be32(out, H_CHKSUM, c);
        }
    }
}

/// The csum v2/v3 check of a commit block (jbd2_commit_block_csum_verify):
/// crc32c of the block with h_chksum[0] zeroed. True without v2/v3.
pub(crate) fn csum_verify(fmt: &Format, b: &[u8]) -> bool {
    if fmt.csum == Csum::None {
        return true;
    }
    be32(b, H_CHKSUM) == csum_with_hole(fmt.seed, b, H_CHKSUM)
}

#[cfg(test)]
mod tests {
    use super::super::tests::fmt;
    use super::super::{JBD2_CRC32_CHKSUM, JBD2_CRC32_CHKSUM_SIZE};
    use super::*;

    #[test]
    fn round_trip_and_checksum() {
        let f = fmt(Csum::V3, true);
        let c = CommitBlock {
            sequence: 9,
            h_chksum_type: 0,
            h_chksum_size: 0,
            h_chksum: [0; 8],
            h_commit_sec: 0x1_2345_6789,
            h_commit_nsec: 999,
        };
        let mut b = vec![0u8; 1024];
        c.write(&f, &mut b);
        assert!(csum_verify(&f, &b));
        let back = CommitBlock::parse(&b);
        assert_eq!(back.h_chksum[0], be32(&b, H_CHKSUM));
        assert_eq!(
            CommitBlock {
                h_chksum: [0; 8],
                ..back
            },
            c
        );
        b[0x40] ^= 1;
        assert!(!csum_verify(&f, &b));
        assert!(csum_verify(&fmt(Csum::None, true), &b));
    }

    #[test]
    fn v1_checksum_kept_as_given() {
        let f = fmt(Csum::None, false);
        let c = CommitBlock {
            sequence: 3,
            h_chksum_type: JBD2_CRC32_CHKSUM,
            h_chksum_size: JBD2_CRC32_CHKSUM_SIZE,
            h_chksum: [0x1234_5678, 0, 0, 0, 0, 0, 0, 0],
            h_commit_sec: 1,
            h_commit_nsec: 2,
        };
        let mut b = vec![0u8; 1024];
        c.write(&f, &mut b);
        assert_eq!(CommitBlock::parse(&b), c);
    }
}
