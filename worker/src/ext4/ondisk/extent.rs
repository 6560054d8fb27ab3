//! Extent tree nodes: a 12-byte header, then 12-byte index or leaf
//! entries, then (in tree blocks, not in the inode) a 4-byte checksum tail.
//! Layout: Documentation/filesystems/ext4/ifork.rst.

use crate::ext4::checksum::crc32c;
use crate::ext4::error::{Error, Result};
use crate::ext4::types::Ino;
use crate::ext4::util::{le16, le32};

pub(crate) const EXT4_EXT_MAGIC: u16 = 0xF30A;
pub(crate) const HEADER_SIZE: usize = 12;
pub(crate) const ENTRY_SIZE: usize = 12;
/// The kernel's EXT4_MAX_EXTENT_DEPTH.
pub(crate) const MAX_DEPTH: u16 = 5;
/// ee_len above this marks an unwritten (uninitialized) extent.
pub(crate) const EXT_INIT_MAX_LEN: u16 = 1 << 15;

/// One leaf entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Extent {
    /// First logical block covered.
    pub(crate) lblk: u32,
    /// Number of blocks (1..=32768).
    pub(crate) len: u16,
    /// First physical block.
    pub(crate) pblk: u64,
    /// Unwritten: reads as zeros.
    pub(crate) uninit: bool,
}

impl Extent {
    /// One past the last logical block (never overflows u32 after parse).
    #[expect(
        clippy::arithmetic_side_effects,
        reason = "a u32 plus a u16, widened to u64, cannot overflow"
    )]
    pub(crate) fn end(&self) -> u64 {
        u64::from(self.lblk) + u64::from(self.len)
    }
    pub(crate) fn contains(&self, lblk: u64) -> bool {
        lblk >= u64::from(self.lblk) && lblk < self.end()
    }
}

/// A parsed leaf and the logical range `[start, end)` it is responsible
/// for (from its parent index entries; `end` None: to the end of the file).
#[derive(Debug, Clone)]
pub(crate) struct LeafHint {
    pub(crate) extents: std::sync::Arc<[Extent]>,
    pub(crate) start: u64,
    pub(crate) end: Option<u64>,
}

impl LeafHint {
    /// If `lblk` is in this leaf's range: the extent containing it (if
    /// any) and the next mapped start after it.
    pub(crate) fn lookup(&self, lblk: u64) -> Option<(Option<Extent>, Option<u64>)> {
        if lblk < self.start || self.end.is_some_and(|e| lblk >= e) {
            return None;
        }
        // Extents are sorted and disjoint: binary search on the start.
        let idx = self.extents.partition_point(|e| u64::from(e.lblk) <= lblk);
        let found = idx
            .checked_sub(1)
            .and_then(|i| self.extents.get(i))
            .filter(|e| e.contains(lblk))
            .copied();
        let next = self
            .extents
            .get(idx)
            .map(|e| u64::from(e.lblk))
            .or(self.end);
        Some((found, next))
    }
}

/// One index entry: the subtree starting at logical block `lblk` lives in
/// physical block `leaf`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ExtentIndex {
    pub(crate) lblk: u32,
    pub(crate) leaf: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ExtentNode {
    Leaf(Vec<Extent>),
    Index(Vec<ExtentIndex>),
}

/// Where a node was read from, for checks and error messages.
#[derive(Debug, Clone, Copy)]
pub(crate) struct NodeCtx {
    pub(crate) ino: Ino,
    /// Physical block of the node, or None for the root in i_block.
    pub(crate) block: Option<u64>,
    /// Depth this node must have (the root's own eh_depth for the root).
    pub(crate) depth: u16,
    /// For non-root nodes: the parent index's logical block, which the first
    /// entry must equal (the kernel's ext4_valid_extent_entries).
    pub(crate) parent_lblk: Option<u32>,
    /// Valid physical block range `[first, end)` for data and tree blocks.
    pub(crate) first_block: u64,
    pub(crate) end_block: u64,
    /// Inode checksum seed when metadata_csum is on (non-root nodes only).
    pub(crate) csum_seed: Option<u32>,
}

fn bad(ctx: &NodeCtx, why: impl std::fmt::Display) -> Error {
    Error::corrupt(
        format!("inode {}: extent tree: {why}", ctx.ino),
        ctx.block.unwrap_or(0),
    )
}

/// Maximum entries a node of `len` bytes can hold.
pub(crate) fn max_entries(len: usize) -> usize {
    len.saturating_sub(HEADER_SIZE) / ENTRY_SIZE
}

/// Where the first `n` entries of a node end (the header, then `n`
/// 12-byte entries); `None` on overflow.
fn entries_end(n: usize) -> Option<usize> {
    n.checked_mul(ENTRY_SIZE)?.checked_add(HEADER_SIZE)
}

/// The header's depth field without validating anything else (used to
/// learn the tree depth from the root).
pub(crate) fn header_depth(b: &[u8]) -> u16 {
    le16(b, 6)
}

/// Parses and validates one node. `b` is the 60-byte i_block for the root
/// or the whole block for other nodes.
pub(crate) fn parse_node(b: &[u8], ctx: &NodeCtx) -> Result<ExtentNode> {
    if b.len() < HEADER_SIZE {
        return Err(bad(ctx, "node too short"));
    }
    let eh_magic = le16(b, 0);
    let eh_entries = le16(b, 2);
    let eh_max = le16(b, 4);
    let eh_depth = le16(b, 6);
    if eh_magic != EXT4_EXT_MAGIC {
        return Err(bad(ctx, format_args!("bad magic {eh_magic:#06x}")));
    }
    if eh_depth != ctx.depth {
        return Err(bad(
            ctx,
            format_args!("unexpected depth {eh_depth}, want {}", ctx.depth),
        ));
    }
    if eh_depth > MAX_DEPTH {
        return Err(bad(ctx, format_args!("depth {eh_depth} too large")));
    }
    let max = max_entries(b.len());
    if eh_max == 0 || usize::from(eh_max) > max {
        return Err(bad(ctx, format_args!("invalid eh_max {eh_max}")));
    }
    if eh_entries > eh_max {
        return Err(bad(
            ctx,
            format_args!("eh_entries {eh_entries} > eh_max {eh_max}"),
        ));
    }
    if eh_entries == 0 && eh_depth > 0 {
        return Err(bad(ctx, "empty index node"));
    }
    if let (Some(seed), Some(_)) = (ctx.csum_seed, ctx.block) {
        let no_room = || bad(ctx, "no room for checksum");
        let tail = entries_end(usize::from(eh_max)).ok_or_else(no_room)?;
        let covered = b.get(..tail).ok_or_else(no_room)?;
        let tail_bytes = b.get(tail..).unwrap_or(&[]);
        if tail_bytes.len() < TAIL_SIZE {
            return Err(no_room());
        }
        let stored = le32(tail_bytes, 0);
        let calc = crc32c(seed, covered);
        if stored != calc {
            return Err(bad(
                ctx,
                format_args!("checksum mismatch (stored {stored:#010x}, computed {calc:#010x})"),
            ));
        }
    }

    let entry = |i: usize| {
        entries_end(i)
            .and_then(|at| b.get(at..))
            .and_then(|e| e.get(..ENTRY_SIZE))
            .unwrap_or(&[])
    };
    let n = usize::from(eh_entries);
    if eh_depth == 0 {
        let mut out = Vec::with_capacity(n);
        let mut cur: u64 = 0;
        for i in 0..n {
            let e = entry(i);
            let ee_block = le32(e, 0);
            let ee_len = le16(e, 4);
            let pblk = u64::from(le32(e, 8)) | (u64::from(le16(e, 6)) << 32);
            // Above 32768 the length is biased by 32768 and marks unwritten.
            let (len, uninit) = match ee_len.checked_sub(EXT_INIT_MAX_LEN) {
                Some(biased) if biased > 0 => (biased, true),
                _ => (ee_len, false),
            };
            if let (0, Some(p)) = (i, ctx.parent_lblk)
                && p != ee_block
            {
                return Err(bad(
                    ctx,
                    format_args!("first extent {ee_block} != index {p}"),
                ));
            }
            let ext = Extent {
                lblk: ee_block,
                len,
                pblk,
                uninit,
            };
            if len == 0 || ext.end() > u64::from(u32::MAX) {
                return Err(bad(
                    ctx,
                    format_args!("invalid extent at logical block {ee_block} length {len}"),
                ));
            }
            if u64::from(ee_block) < cur {
                return Err(bad(
                    ctx,
                    format_args!("overlapping extent at logical block {ee_block}"),
                ));
            }
            let pend = pblk.checked_add(u64::from(len));
            if pblk < ctx.first_block || pend.is_none_or(|e| e > ctx.end_block) {
                return Err(bad(
                    ctx,
                    format_args!(
                        "extent at logical block {ee_block} maps outside the filesystem (block {pblk}, length {len})"
                    ),
                ));
            }
            cur = ext.end();
            out.push(ext);
        }
        Ok(ExtentNode::Leaf(out))
    } else {
        let mut out = Vec::with_capacity(n);
        let mut cur: u64 = 0;
        for i in 0..n {
            let e = entry(i);
            let ei_block = le32(e, 0);
            let leaf = u64::from(le32(e, 4)) | (u64::from(le16(e, 8)) << 32);
            if let (0, Some(p)) = (i, ctx.parent_lblk)
                && p != ei_block
            {
                return Err(bad(
                    ctx,
                    format_args!("first index {ei_block} != parent index {p}"),
                ));
            }
            if u64::from(ei_block) < cur {
                return Err(bad(
                    ctx,
                    format_args!("index entries out of order at logical block {ei_block}"),
                ));
            }
            if leaf < ctx.first_block || leaf >= ctx.end_block {
                return Err(bad(
                    ctx,
                    format_args!("index points outside the filesystem (block {leaf})"),
                ));
            }
            cur = u64::from(ei_block).saturating_add(1);
            out.push(ExtentIndex {
                lblk: ei_block,
                leaf,
            });
        }
        Ok(ExtentNode::Index(out))
    }
}

/// Bytes of the checksum tail after the entries of a tree block.
pub(crate) const TAIL_SIZE: usize = 4;

/// Entries the root node in i_block holds (the kernel's ext4_ext_space_root).
pub(crate) const ROOT_MAX_ENTRIES: usize = 4;

/// Entries a node of `len` bytes holds: 4 in i_block (60 bytes), else
/// (block size - header) / entry size, leaving room for the checksum tail.
pub(crate) fn node_capacity(len: usize, in_inode: bool) -> usize {
    if in_inode {
        ROOT_MAX_ENTRIES
    } else {
        max_entries(len.saturating_sub(TAIL_SIZE))
    }
}

/// Serializes one extent tree node into `out` (the 60-byte i_block for the
/// root, `in_inode` true; else a whole tree block). Sets eh_max to the
/// node's capacity, zeroes the unused entry slots and, for tree blocks
/// with `csum_seed` (the inode checksum seed under metadata_csum), stores
/// crc32c(seed, bytes before the tail) in the tail. Fails if the entries
/// do not fit.
pub(crate) fn write_node(
    out: &mut [u8],
    in_inode: bool,
    depth: u16,
    node: &ExtentNode,
    csum_seed: Option<u32>,
) -> Result<()> {
    let cap = node_capacity(out.len(), in_inode);
    let n = match node {
        ExtentNode::Leaf(e) => e.len(),
        ExtentNode::Index(i) => i.len(),
    };
    let too_big = || Error::Invalid("extent node entries exceed its capacity");
    let end = entries_end(cap)
        .filter(|&end| n <= cap && end <= out.len())
        .ok_or_else(too_big)?;
    if matches!(node, ExtentNode::Leaf(_)) != (depth == 0) {
        return Err(Error::Invalid("extent node kind does not match its depth"));
    }
    let eh_entries = u16::try_from(n).map_err(|_| too_big())?;
    let eh_max = u16::try_from(cap).map_err(|_| too_big())?;
    let area = out.get_mut(..end).ok_or_else(too_big)?;
    area.fill(0);
    put(area, 0, &EXT4_EXT_MAGIC.to_le_bytes());
    put(area, 2, &eh_entries.to_le_bytes());
    put(area, 4, &eh_max.to_le_bytes());
    put(area, 6, &depth.to_le_bytes());
    // `area` holds `cap` slots and n <= cap, so every entry has one.
    let slots = area
        .get_mut(HEADER_SIZE..)
        .unwrap_or(&mut [])
        .chunks_exact_mut(ENTRY_SIZE);
    match node {
        ExtentNode::Leaf(exts) => {
            for (e, slot) in exts.iter().zip(slots) {
                let bad_len = || Error::Invalid("extent length or start out of range");
                // An unwritten extent's length is stored biased by 32768,
                // so it holds at most 32767 blocks.
                let ee_len = if e.uninit {
                    e.len.checked_add(EXT_INIT_MAX_LEN).ok_or_else(bad_len)?
                } else {
                    e.len
                };
                if e.len == 0 || (!e.uninit && e.len > EXT_INIT_MAX_LEN) || e.pblk >> 48 != 0 {
                    return Err(bad_len());
                }
                put(slot, 0, &e.lblk.to_le_bytes());
                put(slot, 4, &ee_len.to_le_bytes());
                put(slot, 6, &((e.pblk >> 32) as u16).to_le_bytes());
                put(slot, 8, &(e.pblk as u32).to_le_bytes());
            }
        }
        ExtentNode::Index(idx) => {
            for (x, slot) in idx.iter().zip(slots) {
                if x.leaf >> 48 != 0 {
                    return Err(Error::Invalid("extent index block out of range"));
                }
                put(slot, 0, &x.lblk.to_le_bytes());
                put(slot, 4, &(x.leaf as u32).to_le_bytes());
                put(slot, 8, &((x.leaf >> 32) as u16).to_le_bytes());
            }
        }
    }
    if !in_inode && let Some(seed) = csum_seed {
        let c = crc32c(seed, out.get(..end).unwrap_or(&[]));
        if let Some(t) = out.get_mut(end..).and_then(|t| t.get_mut(..TAIL_SIZE)) {
            t.copy_from_slice(&c.to_le_bytes());
        }
    }
    Ok(())
}

/// An empty root leaf (depth 0, no entries) in i_block.
pub(crate) fn empty_root(i_block: &mut [u8]) -> Result<()> {
    write_node(i_block, true, 0, &ExtentNode::Leaf(Vec::new()), None)
}

fn put(out: &mut [u8], at: usize, bytes: &[u8]) {
    if let Some(d) = out.get_mut(at..).and_then(|d| d.get_mut(..bytes.len())) {
        d.copy_from_slice(bytes);
    }
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects)]
mod tests {
    use super::*;

    fn ctx(block: Option<u64>, depth: u16, seed: Option<u32>) -> NodeCtx {
        NodeCtx {
            ino: 12,
            block,
            depth,
            parent_lblk: None,
            first_block: 1,
            end_block: 1000,
            csum_seed: seed,
        }
    }

    fn node(len: usize, depth: u16, max: u16, entries: &[[u8; 12]]) -> Vec<u8> {
        let mut b = vec![0u8; len];
        b[0..2].copy_from_slice(&EXT4_EXT_MAGIC.to_le_bytes());
        b[2..4].copy_from_slice(&(entries.len() as u16).to_le_bytes());
        b[4..6].copy_from_slice(&max.to_le_bytes());
        b[6..8].copy_from_slice(&depth.to_le_bytes());
        for (i, e) in entries.iter().enumerate() {
            b[12 + 12 * i..24 + 12 * i].copy_from_slice(e);
        }
        b
    }

    fn leaf(lblk: u32, len: u16, pblk: u32) -> [u8; 12] {
        let mut e = [0u8; 12];
        e[0..4].copy_from_slice(&lblk.to_le_bytes());
        e[4..6].copy_from_slice(&len.to_le_bytes());
        e[8..12].copy_from_slice(&pblk.to_le_bytes());
        e
    }

    fn err(b: &[u8], c: &NodeCtx) -> String {
        parse_node(b, c).unwrap_err().to_string()
    }

    #[test]
    fn parses_root_leaf() {
        let b = node(
            60,
            0,
            4,
            &[leaf(0, 2, 10), leaf(5, EXT_INIT_MAX_LEN + 3, 20)],
        );
        let n = parse_node(&b, &ctx(None, 0, None)).unwrap();
        assert_eq!(
            n,
            ExtentNode::Leaf(vec![
                Extent {
                    lblk: 0,
                    len: 2,
                    pblk: 10,
                    uninit: false
                },
                Extent {
                    lblk: 5,
                    len: 3,
                    pblk: 20,
                    uninit: true
                },
            ])
        );
    }

    #[test]
    fn rejects_bad_nodes() {
        let c = ctx(None, 0, None);
        let good = node(60, 0, 4, &[leaf(0, 2, 10)]);
        let mut b = good.clone();
        b[0] ^= 1;
        assert!(err(&b, &c).contains("bad magic"));
        assert!(err(&node(60, 0, 5, &[]), &c).contains("invalid eh_max 5"));
        assert!(err(&node(60, 1, 4, &[leaf(0, 1, 10)]), &c).contains("unexpected depth 1"));
        let mut b = good.clone();
        b[2] = 5;
        assert!(err(&b, &c).contains("eh_entries 5 > eh_max 4"));
        assert!(err(&node(60, 0, 4, &[leaf(0, 0, 10)]), &c).contains("invalid extent"));
        assert!(
            err(&node(60, 0, 4, &[leaf(0, 4, 10), leaf(3, 1, 50)]), &c).contains("overlapping")
        );
        assert!(err(&node(60, 0, 4, &[leaf(0, 4, 998)]), &c).contains("outside the filesystem"));
        assert!(err(&node(60, 0, 4, &[leaf(u32::MAX, 1, 10)]), &c).contains("invalid extent"));
        assert!(err(&good[..8], &c).contains("too short"));
        let mut cd = ctx(None, 6, None);
        cd.depth = 6;
        assert!(err(&node(60, 6, 4, &[leaf(0, 1, 10)]), &cd).contains("too large"));
        assert!(err(&node(60, 1, 4, &[]), &ctx(None, 1, None)).contains("empty index"));
    }

    #[test]
    fn lengths_at_the_limits_give_exact_errors() {
        let mut c = ctx(Some(7), 0, None);
        c.end_block = 1 << 40;
        // Ends one block past the 32-bit logical space.
        match parse_node(&node(60, 0, 4, &[leaf(u32::MAX - 1, 2, 10)]), &c) {
            Err(Error::Corrupt { what, block }) => {
                assert_eq!(
                    what,
                    "inode 12: extent tree: invalid extent at logical block 4294967294 length 2"
                );
                assert_eq!(block, 7);
            }
            other => panic!("{other:?}"),
        }
        // A raw length of u16::MAX is an unwritten extent of 32767 blocks.
        assert_eq!(
            parse_node(&node(60, 0, 4, &[leaf(0, u16::MAX, 10)]), &c).unwrap(),
            ExtentNode::Leaf(vec![Extent {
                lblk: 0,
                len: 32767,
                pblk: 10,
                uninit: true
            }])
        );
        // An unwritten extent of 32768 blocks would not fit the biased field.
        let too_long = Extent {
            lblk: 0,
            len: EXT_INIT_MAX_LEN,
            pblk: 10,
            uninit: true,
        };
        let mut out = [0u8; 60];
        assert!(matches!(
            write_node(&mut out, true, 0, &ExtentNode::Leaf(vec![too_long]), None),
            Err(Error::Invalid("extent length or start out of range"))
        ));
    }

    #[test]
    fn index_and_parent_checks() {
        let mut c = ctx(Some(7), 1, None);
        let b = node(1024, 1, 84, &[leaf(0, 0, 30), leaf(100, 0, 31)]);
        // leaf() puts the physical block at bytes 8..12; an index keeps it
        // at 4..8, so build indices by hand.
        let idx = |lblk: u32, blk: u32| {
            let mut e = [0u8; 12];
            e[0..4].copy_from_slice(&lblk.to_le_bytes());
            e[4..8].copy_from_slice(&blk.to_le_bytes());
            e
        };
        let b2 = node(1024, 1, 84, &[idx(0, 30), idx(100, 31)]);
        let _ = b;
        assert_eq!(
            parse_node(&b2, &c).unwrap(),
            ExtentNode::Index(vec![
                ExtentIndex { lblk: 0, leaf: 30 },
                ExtentIndex {
                    lblk: 100,
                    leaf: 31
                }
            ])
        );
        let b3 = node(1024, 1, 84, &[idx(100, 31), idx(100, 32)]);
        assert!(err(&b3, &c).contains("out of order"));
        c.parent_lblk = Some(5);
        assert!(err(&b2, &c).contains("first index 0 != parent index 5"));
    }

    #[test]
    fn leaf_hint_lookup() {
        let e = |lblk, len| Extent {
            lblk,
            len,
            pblk: 100,
            uninit: false,
        };
        let h = LeafHint {
            extents: vec![e(10, 5), e(20, 1)].into(),
            start: 8,
            end: Some(30),
        };
        assert_eq!(h.lookup(7), None);
        assert_eq!(h.lookup(30), None);
        assert_eq!(h.lookup(8), Some((None, Some(10))));
        assert_eq!(h.lookup(12), Some((Some(e(10, 5)), Some(20))));
        assert_eq!(h.lookup(15), Some((None, Some(20))));
        assert_eq!(h.lookup(20), Some((Some(e(20, 1)), Some(30))));
        assert_eq!(h.lookup(25), Some((None, Some(30))));
        let root = LeafHint {
            extents: vec![].into(),
            start: 0,
            end: None,
        };
        assert_eq!(root.lookup(u64::from(u32::MAX)), Some((None, None)));
    }

    #[test]
    fn checksum_tail() {
        let seed = 0x5555;
        let mut b = node(1024, 0, 84, &[leaf(0, 1, 10)]);
        let tail = 12 + 12 * 84;
        let c = crc32c(seed, &b[..tail]);
        b[tail..tail + 4].copy_from_slice(&c.to_le_bytes());
        assert!(parse_node(&b, &ctx(Some(9), 0, Some(seed))).is_ok());
        b[20] ^= 1;
        let e = err(&b, &ctx(Some(9), 0, Some(seed)));
        assert!(
            e.contains("checksum mismatch") && e.contains("block 9"),
            "{e}"
        );
    }

    #[test]
    fn write_round_trips() {
        let seed = 0x1234_5678;
        let leaf = ExtentNode::Leaf(vec![
            Extent {
                lblk: 0,
                len: EXT_INIT_MAX_LEN,
                pblk: 100,
                uninit: false,
            },
            Extent {
                lblk: 40000,
                len: EXT_INIT_MAX_LEN - 1,
                pblk: (1 << 40) + 7,
                uninit: true,
            },
        ]);
        let mut c = ctx(Some(9), 0, Some(seed));
        c.end_block = 1 << 47;
        for bs in [1024usize, 4096, 65536] {
            let mut b = vec![0xAAu8; bs];
            write_node(&mut b, false, 0, &leaf, Some(seed)).unwrap();
            assert_eq!(parse_node(&b, &c).unwrap(), leaf);
            assert_eq!(usize::from(le16(&b, 4)), (bs - 16) / 12);
        }
        let idx = ExtentNode::Index(vec![
            ExtentIndex { lblk: 0, leaf: 50 },
            ExtentIndex {
                lblk: 9,
                leaf: (1 << 33) + 1,
            },
        ]);
        let mut root = [0u8; 60];
        write_node(&mut root, true, 2, &idx, None).unwrap();
        let mut rc = ctx(None, 2, None);
        rc.end_block = 1 << 47;
        assert_eq!(parse_node(&root, &rc).unwrap(), idx);
        assert_eq!(le16(&root, 4), 4);
        // Too many entries, or a kind that does not match the depth.
        let five = ExtentNode::Index(vec![ExtentIndex { lblk: 0, leaf: 5 }; 5]);
        assert!(write_node(&mut root, true, 1, &five, None).is_err());
        assert!(write_node(&mut root, true, 1, &leaf, None).is_err());
        let bad = ExtentNode::Leaf(vec![Extent {
            lblk: 0,
            len: EXT_INIT_MAX_LEN,
            pblk: 1,
            uninit: true,
        }]);
        assert!(write_node(&mut root, true, 0, &bad, None).is_err());
        empty_root(&mut root).unwrap();
        assert_eq!(
            parse_node(&root, &ctx(None, 0, None)).unwrap(),
            ExtentNode::Leaf(vec![])
        );
    }
}
