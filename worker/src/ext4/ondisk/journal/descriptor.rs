//! Descriptor blocks: a header, then one tag per data block that follows
//! in the log, each naming the filesystem block the data belongs to.
//! Tags are `journal_block_tag3_t` with csum v3, else
//! `journal_block_tag_t` (8 to 14 bytes, see [`Format::tag_bytes`]); a
//! tag without SAME_UUID is followed by a 16-byte UUID. The block ends at
//! the tag with LAST_TAG, or where no further tag fits (before the block
//! tail with csum v2/v3).

use super::{Csum, Format, HEADER_SIZE, Header, JBD2_DESCRIPTOR_BLOCK, tail_csum_set};
use crate::ext4::util::{be32, put, put_be32, take};

/// t_flags bits.
/// The logged block started with the jbd2 magic, which was zeroed.
pub(crate) const JBD2_FLAG_ESCAPE: u32 = 1;
/// The tag has no UUID after it (same as the previous tag's).
pub(crate) const JBD2_FLAG_SAME_UUID: u32 = 2;
/// Block deleted by this transaction (unused by jbd2).
#[expect(dead_code, reason = "on-disk format value the engine does not act on")]
pub(crate) const JBD2_FLAG_DELETED: u32 = 4;
/// Last tag of the descriptor block.
pub(crate) const JBD2_FLAG_LAST_TAG: u32 = 8;

const UUID_SIZE: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Tag {
    /// The filesystem block (t_blocknr, plus t_blocknr_high with 64bit).
    pub(crate) blocknr: u64,
    pub(crate) flags: u32,
    /// t_checksum (16 bits with v2, 32 with v3, 0 without checksums).
    pub(crate) checksum: u32,
    /// The UUID after the tag, when SAME_UUID is clear.
    pub(crate) uuid: Option<[u8; 16]>,
}

impl Tag {
    pub(crate) fn escaped(&self) -> bool {
        self.flags & JBD2_FLAG_ESCAPE != 0
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DescriptorBlock {
    pub(crate) sequence: u32,
    pub(crate) tags: Vec<Tag>,
}

impl DescriptorBlock {
    /// The tags of descriptor block `b` as the kernel's recovery walks them
    /// (count_tags and the replay loop): at least one tag when one fits;
    /// never more than fit in the block. Header and tail are the caller's.
    pub(crate) fn parse(b: &[u8], fmt: &Format) -> DescriptorBlock {
        let sequence = be32(b, 8);
        let tag_bytes = fmt.tag_bytes();
        let end = fmt.block_size.min(b.len()).saturating_sub(fmt.tail_size());
        let mut tags = Vec::new();
        let mut off = HEADER_SIZE;
        while off.checked_add(tag_bytes).is_some_and(|e| e <= end) {
            let t = b.get(off..).unwrap_or(&[]);
            // The low 16 bits of t_flags sit at bytes 6..8 in both formats
            // (the kernel reads them with be16_to_cpu for both).
            let flags = u32::from(u16::from_be_bytes(take(t, 6)));
            let low = u64::from(be32(t, 0));
            let high = if fmt.is64 { u64::from(be32(t, 8)) } else { 0 };
            let checksum = match fmt.csum {
                Csum::V3 => be32(t, 12),
                Csum::V2 => u32::from(u16::from_be_bytes(take(t, 4))),
                Csum::None => 0,
            };
            off = off.saturating_add(tag_bytes);
            let uuid = if flags & JBD2_FLAG_SAME_UUID == 0 {
                let u = take(b, off);
                off = off.saturating_add(UUID_SIZE);
                Some(u)
            } else {
                None
            };
            tags.push(Tag {
                blocknr: low | (high << 32),
                flags,
                checksum,
                uuid,
            });
            if flags & JBD2_FLAG_LAST_TAG != 0 {
                break;
            }
        }
        DescriptorBlock { sequence, tags }
    }

    /// Bytes `n` tags take (the first with a UUID, the rest SAME_UUID),
    /// for a writer deciding how many tags fit.
    pub(crate) fn space_for(fmt: &Format, n: usize) -> usize {
        HEADER_SIZE
            .saturating_add(fmt.tag_bytes().saturating_mul(n))
            .saturating_add(if n > 0 { UUID_SIZE } else { 0 })
    }

    /// Serializes the block (header, tags as given, zeros after) into
    /// `out` (a whole journal block) and sets the tail checksum.
    pub(crate) fn write(&self, fmt: &Format, out: &mut [u8]) {
        out.fill(0);
        Header {
            h_blocktype: JBD2_DESCRIPTOR_BLOCK,
            h_sequence: self.sequence,
        }
        .write(out);
        let mut off = HEADER_SIZE;
        for t in &self.tags {
            let mut raw = [0u8; 16];
            put_be32(&mut raw, 0, t.blocknr as u32);
            if fmt.is64 {
                put_be32(&mut raw, 8, (t.blocknr >> 32) as u32);
            }
            match fmt.csum {
                Csum::V3 => {
                    put_be32(&mut raw, 4, t.flags);
                    put_be32(&mut raw, 12, t.checksum);
                }
                Csum::V2 => {
                    put(&mut raw, 4, &(t.checksum as u16).to_be_bytes());
                    put(&mut raw, 6, &(t.flags as u16).to_be_bytes());
                }
                Csum::None => put(&mut raw, 6, &(t.flags as u16).to_be_bytes()),
            }
            put(out, off, raw.get(..fmt.tag_bytes()).unwrap_or(&raw));
            off = off.saturating_add(fmt.tag_bytes());
            if t.flags & JBD2_FLAG_SAME_UUID == 0 {
                put(out, off, &t.uuid.unwrap_or_default());
                off = off.saturating_add(UUID_SIZE);
            }
        }
        tail_csum_set(fmt, out);
    }
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects)]
mod tests {
    use super::super::tests::fmt;
    use super::super::{Header, tail_csum_verify};
    use super::*;

    fn tags(n: u64, is64: bool) -> Vec<Tag> {
        (0..n)
            .map(|i| Tag {
                blocknr: if is64 { (i << 33) | 5 } else { 100 + i },
                flags: (if i == 0 { 0 } else { JBD2_FLAG_SAME_UUID })
                    | (if i == 2 { JBD2_FLAG_ESCAPE } else { 0 })
                    | (if i == n - 1 { JBD2_FLAG_LAST_TAG } else { 0 }),
                checksum: 0,
                uuid: (i == 0).then_some([0xAB; 16]),
            })
            .collect()
    }

    #[test]
    fn round_trip_every_format() {
        for csum in [Csum::None, Csum::V2, Csum::V3] {
            for is64 in [false, true] {
                let f = fmt(csum, is64);
                let mut t = tags(5, is64);
                for (i, tag) in t.iter_mut().enumerate() {
                    tag.checksum = match csum {
                        Csum::None => 0,
                        Csum::V2 => 0xBEEF - i as u32,
                        Csum::V3 => 0xDEAD_BEEF - i as u32,
                    };
                }
                let d = DescriptorBlock {
                    sequence: 42,
                    tags: t,
                };
                let mut b = vec![0u8; 1024];
                d.write(&f, &mut b);
                assert_eq!(
                    Header::parse(&b).unwrap().h_blocktype,
                    JBD2_DESCRIPTOR_BLOCK
                );
                assert!(tail_csum_verify(&f, &b));
                assert_eq!(DescriptorBlock::parse(&b, &f), d, "{csum:?} {is64}");
                assert!(d.tags[2].escaped());
            }
        }
    }

    #[test]
    fn without_last_tag_stops_where_the_block_ends() {
        let f = fmt(Csum::V3, true);
        let mut b = vec![0u8; 1024];
        DescriptorBlock {
            sequence: 1,
            tags: vec![],
        }
        .write(&f, &mut b);
        // All-zero tags: each without SAME_UUID, so 16 + 16 bytes each.
        let d = DescriptorBlock::parse(&b, &f);
        assert_eq!(d.tags.len(), (1024 - 12 - 4) / 32 + 1);
        // A short buffer never reads past its end.
        assert!(DescriptorBlock::parse(&b[..20], &f).tags.is_empty());
    }

    #[test]
    fn space_for_counts_one_uuid() {
        let f = fmt(Csum::V3, true);
        assert_eq!(DescriptorBlock::space_for(&f, 2), 12 + 32 + 16);
    }
}
