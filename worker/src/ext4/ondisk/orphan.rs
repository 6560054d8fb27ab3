//! Orphan file blocks (COMPAT_ORPHAN_FILE): an array of __le32 inode
//! numbers (0 = empty slot) and an 8-byte tail `ob_magic` 0x0b10ca04,
//! `ob_checksum`. The checksum (metadata_csum) is crc32c seeded with the
//! orphan file inode's checksum seed, over the block's physical number
//! (__le64) and then the entry array.
//! Layout: Documentation/filesystems/ext4/orphan.rst.

use crate::ext4::checksum::crc32c;
use crate::ext4::error::{Error, Result};
use crate::ext4::ondisk::{bytes_from, bytes_from_mut};
use crate::ext4::util::{le32, put_le32};

pub(crate) const ORPHAN_BLOCK_MAGIC: u32 = 0x0b10_ca04;
/// Size of `struct ext4_orphan_block_tail`.
pub(crate) const TAIL_SIZE: usize = 8;

/// Number of inode slots in an orphan block of `block_size` bytes.
pub(crate) fn slots(block_size: usize) -> usize {
    block_size.saturating_sub(TAIL_SIZE) / 4
}

/// Where the tail starts: just after the last whole slot (`slots * 4`).
fn tail_offset(block_size: usize) -> usize {
    block_size.saturating_sub(TAIL_SIZE) & !3
}

fn block_csum(seed: u32, pblk: u64, b: &[u8]) -> u32 {
    let c = crc32c(seed, &pblk.to_le_bytes());
    crc32c(c, b.get(..tail_offset(b.len())).unwrap_or(&[]))
}

/// One orphan file block, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OrphanBlock {
    /// Every slot, empty ones as 0.
    pub(crate) entries: Vec<u32>,
}

impl OrphanBlock {
    /// Parses the block read from physical block `pblk`; `csum_seed` is the
    /// orphan inode's checksum seed with metadata_csum, else None.
    pub(crate) fn parse(b: &[u8], pblk: u64, csum_seed: Option<u32>) -> Result<OrphanBlock> {
        let n = slots(b.len());
        if n == 0 {
            return Err(Error::corrupt("orphan file block: too small", pblk));
        }
        let tail = bytes_from(b, tail_offset(b.len()));
        let magic = le32(tail, 0);
        if magic != ORPHAN_BLOCK_MAGIC {
            return Err(Error::corrupt(
                format!("orphan file block: bad magic {magic:#x}"),
                pblk,
            ));
        }
        if let Some(seed) = csum_seed {
            let stored = le32(tail, 4);
            let calc = block_csum(seed, pblk, b);
            if stored != calc {
                return Err(Error::corrupt(
                    format!(
                        "orphan file block: checksum mismatch (stored {stored:#x}, computed {calc:#x})"
                    ),
                    pblk,
                ));
            }
        }
        let slots = b.get(..tail_offset(b.len())).unwrap_or(&[]);
        Ok(OrphanBlock {
            entries: slots.chunks_exact(4).map(|s| le32(s, 0)).collect(),
        })
    }

    /// Serializes into `out` (one block, to be written at `pblk`): the
    /// entries, the magic, and the checksum when `csum_seed` is given.
    pub(crate) fn write(&self, out: &mut [u8], pblk: u64, csum_seed: Option<u32>) {
        let tail = tail_offset(out.len());
        let slots = out.get_mut(..tail).unwrap_or(&mut []);
        for (i, slot) in slots.chunks_exact_mut(4).enumerate() {
            put_le32(slot, 0, self.entries.get(i).copied().unwrap_or(0));
        }
        put_le32(bytes_from_mut(out, tail), 0, ORPHAN_BLOCK_MAGIC);
        if let Some(seed) = csum_seed {
            let c = block_csum(seed, pblk, out);
            put_le32(bytes_from_mut(out, tail), 4, c);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_checks() {
        let mut ob = OrphanBlock {
            entries: vec![0; slots(1024)],
        };
        ob.entries[3] = 12;
        ob.entries[250] = 99;
        let mut b = vec![0u8; 1024];
        ob.write(&mut b, 77, Some(5));
        assert_eq!(OrphanBlock::parse(&b, 77, Some(5)).unwrap(), ob);
        assert!(OrphanBlock::parse(&b, 78, Some(5)).is_err(), "block number");
        assert!(OrphanBlock::parse(&b, 78, None).is_ok());
        let mut bad = b.clone();
        bad[12] ^= 1;
        let e = OrphanBlock::parse(&bad, 77, Some(5))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("checksum mismatch") && e.contains("block 77"),
            "{e}"
        );
        bad[1016] ^= 1;
        let e = OrphanBlock::parse(&bad, 77, None).unwrap_err().to_string();
        assert!(e.contains("bad magic"), "{e}");
        assert!(OrphanBlock::parse(&b[..4], 77, None).is_err());
    }
}
