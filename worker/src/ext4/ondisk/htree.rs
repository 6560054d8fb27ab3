//! Hash-tree directory index blocks: `dx_root` (block 0, behind fake "."
//! and ".." entries) and `dx_node` (interior blocks, behind one empty entry
//! spanning the block), each holding a `dx_countlimit` and sorted
//! `dx_entry {hash, block}` pairs, plus the metadata_csum `dx_tail`. See
//! Documentation/filesystems/ext4/directory.rst ("Hash Tree Directories").
//!
//! Checks follow the kernel's `dx_probe`: a known hash version, info_length
//! 8, no unknown flags, depth below the limit (2 levels, 3 with large_dir),
//! `limit` equal to what the block can hold, and `0 < count <= limit`. Any
//! failure is an [`DxProblem`], which the caller treats like the kernel's
//! ERR_BAD_DX_DIR (fall back to a linear scan), except checksum failures,
//! which are plain corruption.

use std::fmt;

use crate::ext4::checksum::crc32c;
use crate::ext4::ondisk::bytes_from;
use crate::ext4::ondisk::dir_entry::{DE_MIN_REC_LEN, rec_len_from_disk, rec_len_to_disk};
use crate::ext4::util::{le16, le32, put_le16, put_le32};

/// `dx_root` layout: "." (12 bytes), ".." (12 bytes), then `dx_root_info`.
const ROOT_INFO: usize = 24;
const RI_RESERVED_ZERO: usize = ROOT_INFO;
const RI_HASH_VERSION: usize = ROOT_INFO + 4;
const RI_INFO_LENGTH: usize = ROOT_INFO + 5;
const RI_INDIRECT_LEVELS: usize = ROOT_INFO + 6;
const RI_UNUSED_FLAGS: usize = ROOT_INFO + 7;
pub(crate) const DX_ROOT_INFO_LEN: u8 = 8;
/// The root's `dx_countlimit` (and first entry) offset.
pub(crate) const ROOT_ENTRIES: usize = 32;
/// A `dx_node`'s entries start after its 8-byte fake dirent.
pub(crate) const NODE_ENTRIES: usize = 8;
pub(crate) const DX_ENTRY_LEN: usize = 8;
pub(crate) const DX_TAIL_LEN: usize = 8;
/// `dx_get_block` masks off the top four bits (reserved for future use).
const DX_BLOCK_MASK: u32 = 0x0fff_ffff;
/// Bit 0 of a stored hash: the leaf continues a run of equal hashes.
pub(crate) const DX_HASH_CONTINUATION: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DxProblem {
    BadRootEntries,
    UnknownHashVersion(u8),
    BadInfoLength(u8),
    UnsupportedFlags(u8),
    TooDeep {
        levels: u8,
        max: u8,
    },
    BadLimit {
        limit: u16,
        expected: u16,
    },
    BadCount {
        count: u16,
        limit: u16,
    },
    NotAnIndexNode,
    NoSpaceForTail,
    BadChecksum {
        stored: u32,
        computed: u32,
    },
    Cycle(u32),
    /// A leaf reached through the index holds a bad entry (the kernel's
    /// search_dirblock failing inside ext4_dx_find_entry).
    BadLeafEntry(u32),
}

impl fmt::Display for DxProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DxProblem::BadRootEntries => write!(f, "htree root lacks its '.' and '..' entries"),
            DxProblem::UnknownHashVersion(v) => write!(f, "unrecognised htree hash version {v}"),
            DxProblem::BadInfoLength(l) => write!(f, "htree root info_length {l} != 8"),
            DxProblem::UnsupportedFlags(x) => write!(f, "unimplemented htree flags {x:#x}"),
            DxProblem::TooDeep { levels, max } => {
                write!(f, "htree depth {levels} exceeds supported {max}")
            }
            DxProblem::BadLimit { limit, expected } => {
                write!(f, "dx limit {limit} != expected {expected}")
            }
            DxProblem::BadCount { count, limit } => {
                write!(f, "dx count {count} not in 1..={limit}")
            }
            DxProblem::NotAnIndexNode => write!(f, "leaf block found instead of index block"),
            DxProblem::NoSpaceForTail => write!(f, "no space for htree checksum tail"),
            DxProblem::BadChecksum { stored, computed } => write!(
                f,
                "htree index checksum {stored:#010x} != computed {computed:#010x}"
            ),
            DxProblem::Cycle(b) => write!(f, "htree cycle through block {b}"),
            DxProblem::BadLeafEntry(b) => write!(f, "bad entry in htree leaf block {b}"),
        }
    }
}

/// Parsed `dx_root_info`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DxRootInfo {
    pub hash_version: u8,
    pub indirect_levels: u8,
}

/// One `dx_entry`. Entry 0's hash is implicitly 0 (its slot holds the
/// count and limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DxEntry {
    pub hash: u32,
    /// Logical block within the directory.
    pub block: u32,
}

/// The entries of one index block, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DxEntries {
    pub entries: Vec<DxEntry>,
}

/// `dx_root_limit`: entries that fit in the root block.
pub(crate) fn root_limit(block_size: usize, csum: bool) -> usize {
    let tail = if csum { DX_TAIL_LEN } else { 0 };
    block_size.saturating_sub(ROOT_ENTRIES).saturating_sub(tail) / DX_ENTRY_LEN
}

/// `dx_node_limit`: entries that fit in an interior block.
pub(crate) fn node_limit(block_size: usize, csum: bool) -> usize {
    let tail = if csum { DX_TAIL_LEN } else { 0 };
    block_size.saturating_sub(NODE_ENTRIES).saturating_sub(tail) / DX_ENTRY_LEN
}

/// Parses the root block's `dx_root_info` (and checks the fake "." and ".."
/// entries). `max_levels` is 2, or 3 with large_dir.
pub(crate) fn parse_root_info(block: &[u8], max_levels: u8) -> Result<DxRootInfo, DxProblem> {
    let bs = block.len() as u32;
    if block.len() < ROOT_ENTRIES + DX_ENTRY_LEN {
        return Err(DxProblem::BadRootEntries);
    }
    // "." with rec_len 12 at 0, ".." spanning the rest of the block at 12.
    let dot_ok = rec_len_from_disk(le16(block, 4), bs) == DE_MIN_REC_LEN
        && block.get(6) == Some(&1)
        && block.get(8) == Some(&b'.');
    let dotdot_ok = Some(rec_len_from_disk(le16(block, 16), bs))
        == block.len().checked_sub(DE_MIN_REC_LEN)
        && block.get(18) == Some(&2)
        && block.get(20..22) == Some(b"..");
    if !dot_ok || !dotdot_ok || le32(block, RI_RESERVED_ZERO) != 0 {
        return Err(DxProblem::BadRootEntries);
    }
    let hash_version = block.get(RI_HASH_VERSION).copied().unwrap_or(0);
    let info_length = block.get(RI_INFO_LENGTH).copied().unwrap_or(0);
    let indirect_levels = block.get(RI_INDIRECT_LEVELS).copied().unwrap_or(0);
    let unused_flags = block.get(RI_UNUSED_FLAGS).copied().unwrap_or(0);
    // Legacy, half-MD4, TEA (the unsigned variants are never stored; the
    // superblock flag selects them) and SipHash.
    if !matches!(hash_version, 0..=2 | 6) {
        return Err(DxProblem::UnknownHashVersion(hash_version));
    }
    if info_length != DX_ROOT_INFO_LEN {
        return Err(DxProblem::BadInfoLength(info_length));
    }
    if unused_flags & 1 != 0 {
        return Err(DxProblem::UnsupportedFlags(unused_flags));
    }
    if indirect_levels >= max_levels {
        return Err(DxProblem::TooDeep {
            levels: indirect_levels,
            max: max_levels,
        });
    }
    Ok(DxRootInfo {
        hash_version,
        indirect_levels,
    })
}

/// Is `block` (not logical block 0) shaped like an interior index node: one
/// empty entry (inode 0) spanning the whole block?
pub(crate) fn is_index_node(block: &[u8]) -> bool {
    le32(block, 0) == 0
        && rec_len_from_disk(le16(block, 4), block.len() as u32) == block.len()
        && block.get(6) == Some(&0)
}

/// Reads the `dx_countlimit` and entries at `at`, checking `limit` against
/// `expected_limit` and the count against the limit.
pub(crate) fn parse_entries(
    block: &[u8],
    at: usize,
    expected_limit: usize,
) -> Result<DxEntries, DxProblem> {
    let (limit, count) = count_limit(block, at);
    if usize::from(limit) != expected_limit {
        return Err(DxProblem::BadLimit {
            limit,
            expected: u16::try_from(expected_limit).unwrap_or(u16::MAX),
        });
    }
    if count == 0 || count > limit {
        return Err(DxProblem::BadCount { count, limit });
    }
    // limit fits the block by construction of expected_limit; a block too
    // short for `count` entries is reported as a bad count.
    let entries: Vec<DxEntry> = block
        .get(at..)
        .unwrap_or(&[])
        .chunks_exact(DX_ENTRY_LEN)
        .take(usize::from(count))
        .enumerate()
        .map(|(i, e)| DxEntry {
            hash: if i == 0 { 0 } else { le32(e, 0) },
            block: le32(e, 4) & DX_BLOCK_MASK,
        })
        .collect();
    if entries.len() != usize::from(count) {
        return Err(DxProblem::BadCount { count, limit });
    }
    Ok(DxEntries { entries })
}

impl DxEntries {
    /// The index of the last entry whose hash is <= `hash` (entry 0 covers
    /// everything below entry 1), as `dx_probe`'s binary search finds it.
    pub(crate) fn find(&self, hash: u32) -> usize {
        // partition_point: first entry (after 0) with hash > target.
        let rest = self.entries.get(1..).unwrap_or(&[]);
        rest.partition_point(|e| e.hash <= hash)
    }
}

/// Offset of the `dx_countlimit` in an index block, as `get_dx_countlimit`
/// finds it: 8 in a node, 32 in the root, `None` if neither shape fits.
pub(crate) fn count_offset(block: &[u8]) -> Option<usize> {
    let bs = block.len() as u32;
    let rlen = rec_len_from_disk(le16(block, 4), bs);
    if rlen == block.len() {
        return Some(NODE_ENTRIES);
    }
    if rlen == DE_MIN_REC_LEN {
        // The ".." entry's rec_len, after the 12-byte ".".
        let rlen2 = rec_len_from_disk(le16(block, 16), bs);
        if Some(rlen2) != block.len().checked_sub(DE_MIN_REC_LEN) {
            return None;
        }
        if le32(block, RI_RESERVED_ZERO) != 0
            || block.get(RI_INFO_LENGTH) != Some(&DX_ROOT_INFO_LEN)
        {
            return None;
        }
        return Some(ROOT_ENTRIES);
    }
    None
}

/// Verifies the `dx_tail` after `limit` entries: crc32c seeded with the
/// directory inode's seed over the block up to the last used entry, then
/// the tail's `dt_reserved`, then four zero bytes for `dt_checksum`.
pub(crate) fn verify_dx_tail(block: &[u8], inode_seed: u32) -> Result<(), DxProblem> {
    let at = count_offset(block).ok_or(DxProblem::NotAnIndexNode)?;
    let (limit, count) = count_limit(block, at);
    let tail = entries_end(at, limit)
        .filter(|&t| t.saturating_add(DX_TAIL_LEN) <= block.len())
        .ok_or(DxProblem::NoSpaceForTail)?;
    if count > limit {
        return Err(DxProblem::BadCount { count, limit });
    }
    // count <= limit, so the used entries end before the tail.
    let size = entries_end(at, count).unwrap_or(tail);
    let mut c = crc32c(inode_seed, block.get(..size).unwrap_or(&[]));
    let (reserved, checksum) = tail_fields(block, tail);
    c = crc32c(c, &reserved.to_le_bytes());
    // dt_checksum itself counts as zero.
    c = crc32c(c, &[0u8; 4]);
    let stored = checksum;
    if stored != c {
        return Err(DxProblem::BadChecksum {
            stored,
            computed: c,
        });
    }
    Ok(())
}

/// The `dx_countlimit` at `at`: (limit, count).
fn count_limit(block: &[u8], at: usize) -> (u16, u16) {
    let cl = bytes_from(block, at);
    (le16(cl, 0), le16(cl, 2))
}

/// Where `n` entries starting at `at` end, `None` on overflow.
fn entries_end(at: usize, n: u16) -> Option<usize> {
    usize::from(n)
        .checked_mul(DX_ENTRY_LEN)
        .and_then(|len| len.checked_add(at))
}

/// The `dx_tail` at `tail`: (`dt_reserved`, `dt_checksum`); zero past the end.
fn tail_fields(block: &[u8], tail: usize) -> (u32, u32) {
    let t = bytes_from(block, tail);
    (le32(t, 0), le32(t, 4))
}

/// Writes the `dx_root` header of logical block 0: "." (rec_len 12) naming
/// `dir`, ".." (the rest of the block) naming `parent`, and
/// `dx_root_info` (`hash_version`, `indirect_levels`). File types are
/// written as directories when `filetype` is on.
pub(crate) fn write_root_header(
    block: &mut [u8],
    dir: u32,
    parent: u32,
    hash_version: u8,
    indirect_levels: u8,
    filetype: bool,
) {
    let bs = block.len();
    let Some(head) = block.get_mut(..ROOT_ENTRIES) else {
        return;
    };
    head.fill(0);
    let ft = if filetype { 2 } else { 0 };
    head[0..4].copy_from_slice(&dir.to_le_bytes());
    head[4..6].copy_from_slice(&(DE_MIN_REC_LEN as u16).to_le_bytes());
    head[6] = 1;
    head[7] = ft;
    head[8] = b'.';
    head[12..16].copy_from_slice(&parent.to_le_bytes());
    let rest = rec_len_to_disk(bs.saturating_sub(DE_MIN_REC_LEN), bs as u32);
    head[16..18].copy_from_slice(&rest.to_le_bytes());
    head[18] = 2;
    head[19] = ft;
    head[20] = b'.';
    head[21] = b'.';
    head[RI_HASH_VERSION] = hash_version;
    head[RI_INFO_LENGTH] = DX_ROOT_INFO_LEN;
    head[RI_INDIRECT_LEVELS] = indirect_levels;
}

/// Sets `indirect_levels` in a root block.
pub(crate) fn set_indirect_levels(block: &mut [u8], levels: u8) {
    if let Some(b) = block.get_mut(RI_INDIRECT_LEVELS) {
        *b = levels;
    }
}

/// Writes an interior node's fake dirent (inode 0, one record spanning the
/// block).
pub(crate) fn init_node(block: &mut [u8]) {
    let bs = block.len();
    if let Some(head) = block.get_mut(..NODE_ENTRIES) {
        head.fill(0);
        head[4..6].copy_from_slice(&rec_len_to_disk(bs, bs as u32).to_le_bytes());
    }
}

/// Writes `dx_countlimit` and `entries` at `at` (entry 0's hash slot holds
/// limit and count). Returns false, writing nothing, if the entries exceed
/// `limit` or the block.
pub(crate) fn write_entries(
    block: &mut [u8],
    at: usize,
    limit: usize,
    entries: &[DxEntry],
) -> bool {
    let (Ok(limit16), Ok(count16)) = (u16::try_from(limit), u16::try_from(entries.len())) else {
        return false;
    };
    let end = entries_end(at, limit16);
    if entries.is_empty() || entries.len() > limit || end.is_none_or(|e| e > block.len()) {
        return false;
    }
    let Some(area) = block.get_mut(at..) else {
        return false;
    };
    for (i, (e, slot)) in entries
        .iter()
        .zip(area.chunks_exact_mut(DX_ENTRY_LEN))
        .enumerate()
    {
        if i == 0 {
            put_le16(slot, 0, limit16);
            put_le16(slot, 2, count16);
        } else {
            put_le32(slot, 0, e.hash);
        }
        put_le32(slot, 4, e.block);
    }
    true
}

/// Computes and stores the `dx_tail` checksum of an index block (root or
/// node), as [`verify_dx_tail`] checks it. Does nothing if the block has no
/// room for a tail (no metadata_csum layout).
pub(crate) fn set_dx_csum(block: &mut [u8], inode_seed: u32) {
    let Some(at) = count_offset(block) else {
        return;
    };
    let (limit, count) = count_limit(block, at);
    let count = count.min(limit);
    let Some(tail) =
        entries_end(at, limit).filter(|&t| t.saturating_add(DX_TAIL_LEN) <= block.len())
    else {
        return;
    };
    // count <= limit, so the used entries end before the tail.
    let size = entries_end(at, count).unwrap_or(tail);
    let mut c = crc32c(inode_seed, block.get(..size).unwrap_or(&[]));
    c = crc32c(c, &[0u8; 4]);
    c = crc32c(c, &[0u8; 4]);
    if let Some(t) = block.get_mut(tail..) {
        put_le32(t, 0, 0);
        put_le32(t, 4, c);
    }
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects)]
mod tests {
    use super::*;
    use crate::ext4::ondisk::dir_entry::tests::put;

    const BS: usize = 1024;

    fn root(csum: bool, count: u16, levels: u8) -> Vec<u8> {
        let mut b = Vec::new();
        put(&mut b, 2, b".", 2, 12);
        put(&mut b, 2, b"..", 2, BS - 12);
        b.truncate(24);
        b.extend_from_slice(&0u32.to_le_bytes());
        b.extend_from_slice(&[1, 8, levels, 0]);
        let limit = root_limit(BS, csum) as u16;
        b.extend_from_slice(&limit.to_le_bytes());
        b.extend_from_slice(&count.to_le_bytes());
        b.extend_from_slice(&1u32.to_le_bytes());
        for i in 1..count as u32 {
            b.extend_from_slice(&(i * 0x1000_0000).to_le_bytes());
            b.extend_from_slice(&(i + 1).to_le_bytes());
        }
        b.resize(BS, 0);
        if csum {
            let tail = ROOT_ENTRIES + usize::from(limit) * DX_ENTRY_LEN;
            let size = ROOT_ENTRIES + usize::from(count) * DX_ENTRY_LEN;
            let mut c = crc32c(77, &b[..size]);
            c = crc32c(c, &b[tail..tail + 4]);
            c = crc32c(c, &[0; 4]);
            b[tail + 4..tail + 8].copy_from_slice(&c.to_le_bytes());
        }
        b
    }

    #[test]
    fn good_root() {
        let b = root(true, 3, 0);
        let info = parse_root_info(&b, 2).unwrap();
        assert_eq!(
            info,
            DxRootInfo {
                hash_version: 1,
                indirect_levels: 0
            }
        );
        let e = parse_entries(&b, ROOT_ENTRIES, root_limit(BS, true)).unwrap();
        assert_eq!(e.entries.len(), 3);
        assert_eq!(
            e.entries[1],
            DxEntry {
                hash: 0x1000_0000,
                block: 2
            }
        );
        assert_eq!(e.find(0), 0);
        assert_eq!(e.find(0x0fff_ffff), 0);
        assert_eq!(e.find(0x1000_0000), 1);
        assert_eq!(e.find(0x2000_0001), 2);
        assert_eq!(e.find(u32::MAX), 2);
        assert_eq!(verify_dx_tail(&b, 77), Ok(()));
        assert_eq!(count_offset(&b), Some(ROOT_ENTRIES));
        assert!(!is_index_node(&b));
    }

    #[test]
    fn flipped_bytes_give_exact_errors() {
        let mut b = root(true, 3, 0);
        b[RI_HASH_VERSION] = 9;
        assert_eq!(
            parse_root_info(&b, 2),
            Err(DxProblem::UnknownHashVersion(9))
        );
        let mut b = root(true, 3, 0);
        b[RI_INFO_LENGTH] = 12;
        assert_eq!(parse_root_info(&b, 2), Err(DxProblem::BadInfoLength(12)));
        let mut b = root(true, 3, 0);
        b[RI_UNUSED_FLAGS] = 1;
        assert_eq!(parse_root_info(&b, 2), Err(DxProblem::UnsupportedFlags(1)));
        let b = root(true, 3, 2);
        assert_eq!(
            parse_root_info(&b, 2),
            Err(DxProblem::TooDeep { levels: 2, max: 2 })
        );
        assert!(parse_root_info(&b, 3).is_ok());
        let mut b = root(true, 3, 0);
        b[16] = 0; // ".." rec_len
        assert_eq!(parse_root_info(&b, 2), Err(DxProblem::BadRootEntries));
        // limit and count.
        let b = root(true, 3, 0);
        assert_eq!(
            parse_entries(&b, ROOT_ENTRIES, root_limit(BS, false)),
            Err(DxProblem::BadLimit {
                limit: 123,
                expected: 124
            })
        );
        let mut b = root(true, 3, 0);
        b[ROOT_ENTRIES + 2] = 0;
        assert_eq!(
            parse_entries(&b, ROOT_ENTRIES, root_limit(BS, true)),
            Err(DxProblem::BadCount {
                count: 0,
                limit: 123
            })
        );
        b[ROOT_ENTRIES + 2] = 200;
        assert_eq!(
            parse_entries(&b, ROOT_ENTRIES, root_limit(BS, true)),
            Err(DxProblem::BadCount {
                count: 200,
                limit: 123
            })
        );
        // checksum: flip a hash byte.
        let mut b = root(true, 3, 0);
        b[ROOT_ENTRIES + 8] ^= 0x40;
        assert!(matches!(
            verify_dx_tail(&b, 77),
            Err(DxProblem::BadChecksum { .. })
        ));
        // limit too large for a tail.
        let mut b = root(true, 3, 0);
        b[ROOT_ENTRIES..ROOT_ENTRIES + 2].copy_from_slice(&124u16.to_le_bytes());
        assert_eq!(verify_dx_tail(&b, 77), Err(DxProblem::NoSpaceForTail));
    }

    #[test]
    fn count_at_u16_max_gives_exact_errors() {
        // limit and count u16::MAX in a 4 KiB node: the entries, and the
        // tail after them, would run far past the block.
        let mut b = vec![0u8; 4096];
        init_node(&mut b);
        b[NODE_ENTRIES..NODE_ENTRIES + 2].copy_from_slice(&u16::MAX.to_le_bytes());
        b[NODE_ENTRIES + 2..NODE_ENTRIES + 4].copy_from_slice(&u16::MAX.to_le_bytes());
        assert_eq!(
            parse_entries(&b, NODE_ENTRIES, usize::from(u16::MAX)),
            Err(DxProblem::BadCount {
                count: u16::MAX,
                limit: u16::MAX
            })
        );
        assert_eq!(verify_dx_tail(&b, 0), Err(DxProblem::NoSpaceForTail));
    }

    #[test]
    fn node_shape() {
        let mut b = Vec::new();
        b.extend_from_slice(&0u32.to_le_bytes());
        b.extend_from_slice(&(BS as u16).to_le_bytes());
        b.extend_from_slice(&[0, 0]);
        let limit = node_limit(BS, false) as u16;
        b.extend_from_slice(&limit.to_le_bytes());
        b.extend_from_slice(&1u16.to_le_bytes());
        b.extend_from_slice(&0xf000_0005u32.to_le_bytes());
        b.resize(BS, 0);
        assert!(is_index_node(&b));
        assert_eq!(count_offset(&b), Some(NODE_ENTRIES));
        let e = parse_entries(&b, NODE_ENTRIES, node_limit(BS, false)).unwrap();
        // the top four bits of the block number are masked.
        assert_eq!(e.entries, vec![DxEntry { hash: 0, block: 5 }]);
    }

    #[test]
    fn write_round_trips() {
        for csum in [false, true] {
            for bs in [1024usize, 4096, 65536] {
                let mut b = vec![0x5Au8; bs];
                write_root_header(&mut b, 12, 2, 1, 1, true);
                let limit = root_limit(bs, csum);
                let entries: Vec<DxEntry> = (0..5u32)
                    .map(|i| DxEntry {
                        hash: if i == 0 { 0 } else { (i * 0x100) | (i & 1) },
                        block: i + 1,
                    })
                    .collect();
                assert!(write_entries(&mut b, ROOT_ENTRIES, limit, &entries));
                if csum {
                    set_dx_csum(&mut b, 33);
                    assert_eq!(verify_dx_tail(&b, 33), Ok(()));
                }
                assert_eq!(
                    parse_root_info(&b, 2),
                    Ok(DxRootInfo {
                        hash_version: 1,
                        indirect_levels: 1
                    })
                );
                assert_eq!(
                    parse_entries(&b, ROOT_ENTRIES, limit),
                    Ok(DxEntries {
                        entries: entries.clone()
                    })
                );
                let mut n = vec![0xA5u8; bs];
                init_node(&mut n);
                let nl = node_limit(bs, csum);
                assert!(write_entries(&mut n, NODE_ENTRIES, nl, &entries[..2]));
                if csum {
                    set_dx_csum(&mut n, 34);
                    assert_eq!(verify_dx_tail(&n, 34), Ok(()));
                }
                assert!(is_index_node(&n));
                assert_eq!(
                    parse_entries(&n, NODE_ENTRIES, nl).unwrap().entries,
                    entries[..2].to_vec()
                );
                // Too many entries for the limit: refused.
                assert!(!write_entries(&mut n, NODE_ENTRIES, 1, &entries[..2]));
                assert!(!write_entries(&mut n, NODE_ENTRIES, nl, &[]));
            }
        }
    }
}
