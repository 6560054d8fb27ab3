//! Indirect block maps (ext2/ext3 and non-extent ext4 files): i_block holds
//! 12 direct block numbers, then one single, one double and one triple
//! indirect block. Each indirect block is an array of little-endian u32
//! block numbers; 0 is a hole. Layout: Documentation/filesystems/ext4/ifork.rst.

pub(crate) const DIRECT_BLOCKS: u64 = 12;
pub(crate) const IND_BLOCK: usize = 12;
pub(crate) const DIND_BLOCK: usize = 13;
pub(crate) const TIND_BLOCK: usize = 14;

/// The path to logical block `lblk`: the i_block slot (0..15) and the
/// indexes inside each level of indirect blocks (0 to 3 of them). None if
/// `lblk` is beyond what a triple-indirect map can address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct IndirectPath {
    pub(crate) slot: usize,
    pub(crate) offsets: Vec<u64>,
}

/// Computes the path for `lblk` with `per_block` pointers per block.
pub(crate) fn path(lblk: u64, per_block: u64) -> Option<IndirectPath> {
    if per_block == 0 {
        return None;
    }
    if lblk < DIRECT_BLOCKS {
        return Some(IndirectPath {
            slot: usize::try_from(lblk).ok()?,
            offsets: vec![],
        });
    }
    // Each step below subtracts what the previous level addresses, which
    // the comparison before it shows to be at most `rest`; the divisors
    // are non-zero (per_block checked above), so no `?` here returns.
    let rest = lblk.checked_sub(DIRECT_BLOCKS)?;
    if rest < per_block {
        return Some(IndirectPath {
            slot: IND_BLOCK,
            offsets: vec![rest],
        });
    }
    let rest = rest.checked_sub(per_block)?;
    let p2 = per_block.checked_mul(per_block)?;
    if rest < p2 {
        return Some(IndirectPath {
            slot: DIND_BLOCK,
            offsets: vec![rest.checked_div(per_block)?, rest.checked_rem(per_block)?],
        });
    }
    let rest = rest.checked_sub(p2)?;
    let p3 = p2.checked_mul(per_block)?;
    if rest < p3 {
        return Some(IndirectPath {
            slot: TIND_BLOCK,
            offsets: vec![
                rest.checked_div(p2)?,
                rest.checked_div(per_block)?.checked_rem(per_block)?,
                rest.checked_rem(per_block)?,
            ],
        });
    }
    None
}

/// Block pointer `index` of a map table (i_block or an indirect block);
/// 0 (a hole) past the table's end.
pub(crate) fn ptr(table: &[u8], index: u64) -> u64 {
    usize::try_from(index)
        .ok()
        .and_then(|i| i.checked_mul(4))
        .map_or(0, |off| u64::from(crate::ext4::util::le32(table, off)))
}

/// Sets block pointer `index` of a map table; nothing past its end.
pub(crate) fn set_ptr(table: &mut [u8], index: u64, v: u32) {
    if let Some(off) = usize::try_from(index).ok().and_then(|i| i.checked_mul(4)) {
        crate::ext4::util::put_le32(table, off, v);
    }
}

/// Number of logical blocks addressable below one pointer at `level`
/// levels above the data (level 0: a data block).
pub(crate) fn span(level: usize, per_block: u64) -> u64 {
    let mut s: u64 = 1;
    for _ in 0..level {
        s = s.saturating_mul(per_block);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        let p = 256; // 1 KiB blocks
        assert_eq!(
            path(0, p).unwrap(),
            IndirectPath {
                slot: 0,
                offsets: vec![]
            }
        );
        assert_eq!(
            path(11, p).unwrap(),
            IndirectPath {
                slot: 11,
                offsets: vec![]
            }
        );
        assert_eq!(
            path(12, p).unwrap(),
            IndirectPath {
                slot: 12,
                offsets: vec![0]
            }
        );
        assert_eq!(
            path(12 + 255, p).unwrap(),
            IndirectPath {
                slot: 12,
                offsets: vec![255]
            }
        );
        assert_eq!(
            path(12 + 256, p).unwrap(),
            IndirectPath {
                slot: 13,
                offsets: vec![0, 0]
            }
        );
        assert_eq!(
            path(12 + 256 + 257, p).unwrap(),
            IndirectPath {
                slot: 13,
                offsets: vec![1, 1]
            }
        );
        let t = 12 + 256 + 256 * 256;
        assert_eq!(
            path(t, p).unwrap(),
            IndirectPath {
                slot: 14,
                offsets: vec![0, 0, 0]
            }
        );
        assert_eq!(
            path(t + 256 * 256 * 256 - 1, p).unwrap(),
            IndirectPath {
                slot: 14,
                offsets: vec![255, 255, 255]
            }
        );
        assert_eq!(path(t + 256 * 256 * 256, p), None);
        assert_eq!(path(0, 0), None);
        assert_eq!(span(2, p), 65536);
    }
}
