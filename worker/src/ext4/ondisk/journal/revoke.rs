//! Revoke blocks (`jbd2_journal_revoke_header_t`): a header, r_count (the
//! bytes in use, header included), then block numbers (4 bytes each, 8
//! with 64bit) that earlier transactions must not replay.

use super::{Format, HEADER_SIZE, Header, JBD2_REVOKE_BLOCK, tail_csum_set};
use crate::ext4::error::{Error, Result};
use crate::ext4::util::{be32, put_be32, take};

const R_COUNT: usize = 0xC;
/// Size of the revoke header (journal header + r_count).
pub(crate) const REVOKE_HEADER_SIZE: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RevokeBlock {
    pub(crate) sequence: u32,
    pub(crate) records: Vec<u64>,
}

impl RevokeBlock {
    /// Records of revoke block `b` (scan_revoke_records): r_count larger
    /// than the block (less its tail) is corrupt. `block` is the journal
    /// block, for errors.
    pub(crate) fn parse(b: &[u8], fmt: &Format, block: u64) -> Result<RevokeBlock> {
        let rcount = be32(b, R_COUNT) as usize;
        let room = fmt.block_size.min(b.len()).saturating_sub(fmt.tail_size());
        if rcount > room {
            return Err(Error::corrupt(
                format!("journal: revoke block r_count {rcount} exceeds the block"),
                block,
            ));
        }
        let len = if fmt.is64 { 8 } else { 4 };
        let mut records = Vec::new();
        let mut off = REVOKE_HEADER_SIZE;
        while off.saturating_add(len) <= rcount {
            records.push(if fmt.is64 {
                u64::from_be_bytes(take(b, off))
            } else {
                u64::from(be32(b, off))
            });
            off = off.saturating_add(len);
        }
        Ok(RevokeBlock {
            sequence: be32(b, 8),
            records,
        })
    }

    /// Records that fit in one revoke block.
    pub(crate) fn capacity(fmt: &Format) -> usize {
        let room = fmt
            .block_size
            .saturating_sub(fmt.tail_size())
            .saturating_sub(REVOKE_HEADER_SIZE);
        // Records are 8 bytes with 64-bit block numbers, else 4.
        if fmt.is64 { room / 8 } else { room / 4 }
    }

    /// Serializes into `out` (a whole journal block; the caller keeps the
    /// records within [`RevokeBlock::capacity`]) and sets the tail checksum.
    pub(crate) fn write(&self, fmt: &Format, out: &mut [u8]) {
        out.fill(0);
        Header {
            h_blocktype: JBD2_REVOKE_BLOCK,
            h_sequence: self.sequence,
        }
        .write(out);
        let len = if fmt.is64 { 8 } else { 4 };
        let mut off = REVOKE_HEADER_SIZE;
        for r in &self.records {
            if fmt.is64 {
                crate::ext4::util::put(out, off, &r.to_be_bytes());
            } else {
                put_be32(out, off, *r as u32);
            }
            off = off.saturating_add(len);
        }
        put_be32(out, R_COUNT, off as u32);
        tail_csum_set(fmt, out);
    }
}

// HEADER_SIZE is the journal header; the revoke header adds r_count.
const _: () = assert!(REVOKE_HEADER_SIZE == HEADER_SIZE + 4);

#[cfg(test)]
mod tests {
    use super::super::tests::fmt;
    use super::super::{Csum, tail_csum_verify};
    use super::*;

    #[test]
    fn round_trip_32_and_64() {
        for (csum, is64) in [(Csum::None, false), (Csum::V2, true), (Csum::V3, true)] {
            let f = fmt(csum, is64);
            let r = RevokeBlock {
                sequence: 12,
                records: if is64 {
                    vec![1, 1 << 40, 77]
                } else {
                    vec![1, 2, 0xFFFF_FFFF]
                },
            };
            let mut b = vec![0u8; 1024];
            r.write(&f, &mut b);
            assert!(tail_csum_verify(&f, &b));
            assert_eq!(RevokeBlock::parse(&b, &f, 0).unwrap(), r);
        }
    }

    #[test]
    fn rcount_past_the_block_is_corrupt() {
        let f = fmt(Csum::V3, true);
        let mut b = vec![0u8; 1024];
        RevokeBlock {
            sequence: 1,
            records: vec![],
        }
        .write(&f, &mut b);
        put_be32(&mut b, R_COUNT, 1021);
        let e = RevokeBlock::parse(&b, &f, 9).unwrap_err().to_string();
        assert!(e.contains("r_count 1021"), "{e}");
        put_be32(&mut b, R_COUNT, 1020);
        assert_eq!(RevokeBlock::parse(&b, &f, 9).unwrap().records.len(), 125);
        // r_count below the header: no records.
        put_be32(&mut b, R_COUNT, 3);
        assert!(RevokeBlock::parse(&b, &f, 9).unwrap().records.is_empty());
        assert_eq!(RevokeBlock::capacity(&f), 125);
    }
}
