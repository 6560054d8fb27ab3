//! Extended attributes: the in-inode region (`ext4_xattr_ibody_header`,
//! just the magic, then entries whose value offsets count from the first
//! entry) and the xattr block (`ext4_xattr_header`, 32 bytes, then entries
//! whose value offsets count from the block start). See
//! Documentation/filesystems/ext4/attributes.rst.
//!
//! Checks follow the kernel's `check_xattrs`: the header magic (and
//! `h_blocks == 1` in a block), every entry's name inside the region and
//! free of NUL bytes, the entry list ending with four zero bytes inside the
//! region, each in-region value inside the region and after the entry
//! table, `e_value_inum` only with ea_inode, never the root inode, and with
//! a non-zero size, and sizes at most 16 MiB.

use std::fmt;

use crate::ext4::checksum::crc32c;
use crate::ext4::util::{le16, le32};

pub(crate) const EXT4_XATTR_MAGIC: u32 = 0xEA02_0000;
/// `ext4_xattr_header` size; the first block entry follows it.
pub(crate) const XATTR_BLOCK_HEADER_LEN: usize = 32;
const H_MAGIC: usize = 0;
const H_REFCOUNT: usize = 4;
const H_BLOCKS: usize = 8;
const H_CHECKSUM: usize = 16;
/// `ext4_xattr_ibody_header` size.
pub(crate) const XATTR_IBODY_HEADER_LEN: usize = 4;

/// Entry layout.
const E_NAME_LEN: usize = 0;
const E_NAME_INDEX: usize = 1;
const E_VALUE_OFFS: usize = 2;
const E_VALUE_INUM: usize = 4;
const E_VALUE_SIZE: usize = 8;
const E_HASH: usize = 12;
pub(crate) const XATTR_ENTRY_HEADER_LEN: usize = 16;
/// `EXT4_XATTR_SIZE_MAX`.
pub(crate) const XATTR_SIZE_MAX: u32 = 1 << 24;

/// Name indexes (`EXT4_XATTR_INDEX_*`).
pub(crate) const INDEX_USER: u8 = 1;
pub(crate) const INDEX_POSIX_ACL_ACCESS: u8 = 2;
pub(crate) const INDEX_POSIX_ACL_DEFAULT: u8 = 3;
pub(crate) const INDEX_TRUSTED: u8 = 4;
pub(crate) const INDEX_LUSTRE: u8 = 5;
pub(crate) const INDEX_SECURITY: u8 = 6;
pub(crate) const INDEX_SYSTEM: u8 = 7;
pub(crate) const INDEX_RICHACL: u8 = 8;
pub(crate) const INDEX_ENCRYPTION: u8 = 9;
pub(crate) const INDEX_HURD: u8 = 10;

/// The prefix of each name index, as the kernel's attributes.rst lists it.
/// Index 2 and 3 are whole names (their suffix is empty).
pub(crate) fn index_prefix(index: u8) -> Option<&'static [u8]> {
    Some(match index {
        INDEX_USER => b"user.",
        INDEX_POSIX_ACL_ACCESS => b"system.posix_acl_access",
        INDEX_POSIX_ACL_DEFAULT => b"system.posix_acl_default",
        INDEX_TRUSTED => b"trusted.",
        INDEX_LUSTRE => b"lustre.",
        INDEX_SECURITY => b"security.",
        INDEX_SYSTEM => b"system.",
        INDEX_RICHACL => b"system.richacl",
        INDEX_HURD => b"gnu.",
        _ => return None,
    })
}

/// Whether the kernel's listxattr shows names of this index (it has a
/// handler only for these: user, the two POSIX ACLs, trusted, security and
/// gnu). "system.data", richacl, lustre and the encryption context stay
/// hidden.
pub(crate) fn index_is_listed(index: u8) -> bool {
    matches!(
        index,
        INDEX_USER
            | INDEX_POSIX_ACL_ACCESS
            | INDEX_POSIX_ACL_DEFAULT
            | INDEX_TRUSTED
            | INDEX_SECURITY
            | INDEX_HURD
    )
}

/// Splits a full attribute name into (index, suffix) the way the kernel's
/// handlers do. `None` for names no ext4 handler serves.
pub(crate) fn split_name(name: &[u8]) -> Option<(u8, &[u8])> {
    if name == b"system.posix_acl_access" {
        return Some((INDEX_POSIX_ACL_ACCESS, b""));
    }
    if name == b"system.posix_acl_default" {
        return Some((INDEX_POSIX_ACL_DEFAULT, b""));
    }
    for (index, prefix) in [
        (INDEX_USER, &b"user."[..]),
        (INDEX_TRUSTED, b"trusted."),
        (INDEX_SECURITY, b"security."),
        (INDEX_HURD, b"gnu."),
    ] {
        if let Some(suffix) = name.strip_prefix(prefix) {
            return Some((index, suffix));
        }
    }
    None
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum XattrProblem {
    BadMagic(u32),
    BadBlocks(u32),
    RegionTooSmall,
    NameOutOfBounds { entry: usize },
    NulInName { entry: usize },
    EaInodeWithoutFeature { entry: usize },
    BadEaInode { entry: usize, inum: u32 },
    EaInodeZeroSize { entry: usize },
    ValueTooLarge { entry: usize, size: u32 },
    ValueOutOfBounds { entry: usize },
    ValueOverlapsEntries { entry: usize },
    BadChecksum { stored: u32, computed: u32 },
}

impl fmt::Display for XattrProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            XattrProblem::BadMagic(m) => write!(f, "bad xattr magic {m:#010x}"),
            XattrProblem::BadBlocks(b) => write!(f, "xattr block h_blocks {b} != 1"),
            XattrProblem::RegionTooSmall => write!(f, "in-inode xattr region too small"),
            XattrProblem::NameOutOfBounds { entry } => {
                write!(f, "xattr entry {entry}: name out of bounds")
            }
            XattrProblem::NulInName { entry } => write!(f, "xattr entry {entry}: bad name length"),
            XattrProblem::EaInodeWithoutFeature { entry } => {
                write!(
                    f,
                    "xattr entry {entry}: ea_inode value without the ea_inode feature"
                )
            }
            XattrProblem::BadEaInode { entry, inum } => {
                write!(f, "xattr entry {entry}: invalid ea_inode {inum}")
            }
            XattrProblem::EaInodeZeroSize { entry } => {
                write!(f, "xattr entry {entry}: ea_inode value of size 0")
            }
            XattrProblem::ValueTooLarge { entry, size } => {
                write!(f, "xattr entry {entry}: value size {size} too large")
            }
            XattrProblem::ValueOutOfBounds { entry } => {
                write!(f, "xattr entry {entry}: value out of bounds")
            }
            XattrProblem::ValueOverlapsEntries { entry } => {
                write!(f, "xattr entry {entry}: value overlaps the entry table")
            }
            XattrProblem::BadChecksum { stored, computed } => write!(
                f,
                "xattr block checksum {stored:#010x} != computed {computed:#010x}"
            ),
        }
    }
}

/// Where an attribute's value lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum XattrValue<'a> {
    /// Inside the region (block or inode), already bounds-checked.
    Inline(&'a [u8]),
    /// In the data of this ea_inode, `size` bytes.
    EaInode { inum: u32, size: u32 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct XattrEntry<'a> {
    pub name_index: u8,
    pub name: &'a [u8],
    pub value: XattrValue<'a>,
    pub hash: u32,
}

/// What the entry checks need from the superblock.
#[derive(Debug, Clone, Copy)]
pub(crate) struct XattrLimits {
    pub ea_inode_feature: bool,
    pub inodes_count: u32,
}

/// Parses the entry table of `region`, entries starting at `first`, value
/// offsets counted from `value_base`. Returns every entry, checked.
fn parse_entries<'a>(
    region: &'a [u8],
    first: usize,
    value_base: usize,
    limits: &XattrLimits,
) -> Result<Vec<XattrEntry<'a>>, XattrProblem> {
    let end = region.len();
    // Pass 1 (kernel: "Find the end of the names list"): every entry and
    // the terminating zero word lie inside the region. Each entry is at
    // least 16 bytes, so this takes at most end / 16 steps.
    let mut spans = Vec::new();
    let mut pos = first;
    loop {
        let word_end = pos.checked_add(4).ok_or(XattrProblem::RegionTooSmall)?;
        if word_end > end {
            return Err(XattrProblem::NameOutOfBounds { entry: spans.len() });
        }
        if le32(region, pos) == 0 {
            break;
        }
        let name_len = usize::from(region.get(pos + E_NAME_LEN).copied().unwrap_or(0));
        let next = pos
            .checked_add((XATTR_ENTRY_HEADER_LEN + name_len + 3) & !3)
            .ok_or(XattrProblem::NameOutOfBounds { entry: spans.len() })?;
        if next.saturating_add(4) > end {
            return Err(XattrProblem::NameOutOfBounds { entry: spans.len() });
        }
        let name = region
            .get(pos + XATTR_ENTRY_HEADER_LEN..pos + XATTR_ENTRY_HEADER_LEN + name_len)
            .ok_or(XattrProblem::NameOutOfBounds { entry: spans.len() })?;
        if name.contains(&0) {
            return Err(XattrProblem::NulInName { entry: spans.len() });
        }
        spans.push((pos, name_len));
        pos = next;
    }
    let table_end = pos.saturating_add(4);
    // Pass 2: values.
    let mut out = Vec::with_capacity(spans.len());
    for (i, (pos, name_len)) in spans.into_iter().enumerate() {
        let name_index = region.get(pos + E_NAME_INDEX).copied().unwrap_or(0);
        let offs = usize::from(le16(region, pos + E_VALUE_OFFS));
        let inum = le32(region, pos + E_VALUE_INUM);
        let size = le32(region, pos + E_VALUE_SIZE);
        let hash = le32(region, pos + E_HASH);
        if inum != 0 && !limits.ea_inode_feature {
            return Err(XattrProblem::EaInodeWithoutFeature { entry: i });
        }
        if inum != 0 && (inum == 2 || inum > limits.inodes_count || inum < 2) {
            return Err(XattrProblem::BadEaInode { entry: i, inum });
        }
        if inum != 0 && size == 0 {
            return Err(XattrProblem::EaInodeZeroSize { entry: i });
        }
        if size > XATTR_SIZE_MAX {
            return Err(XattrProblem::ValueTooLarge { entry: i, size });
        }
        let value = if inum != 0 {
            XattrValue::EaInode { inum, size }
        } else if size == 0 {
            XattrValue::Inline(&[])
        } else {
            let start = value_base
                .checked_add(offs)
                .filter(|&s| s <= end)
                .ok_or(XattrProblem::ValueOutOfBounds { entry: i })?;
            if start < table_end {
                return Err(XattrProblem::ValueOverlapsEntries { entry: i });
            }
            let size = size as usize;
            let padded = size.saturating_add(3) & !3;
            if padded > end - start {
                return Err(XattrProblem::ValueOutOfBounds { entry: i });
            }
            XattrValue::Inline(
                region
                    .get(start..start + size)
                    .ok_or(XattrProblem::ValueOutOfBounds { entry: i })?,
            )
        };
        let name = region
            .get(pos + XATTR_ENTRY_HEADER_LEN..pos + XATTR_ENTRY_HEADER_LEN + name_len)
            .unwrap_or(&[]);
        out.push(XattrEntry {
            name_index,
            name,
            value,
            hash,
        });
    }
    Ok(out)
}

/// Parses the in-inode xattr region: `area` starts at the ibody header
/// (inode offset 128 + i_extra_isize) and ends at the inode's end. A region
/// without the magic holds no attributes (`Ok(empty)`), as in the kernel.
pub(crate) fn parse_ibody<'a>(
    area: &'a [u8],
    limits: &XattrLimits,
) -> Result<Vec<XattrEntry<'a>>, XattrProblem> {
    if area.len() < XATTR_IBODY_HEADER_LEN || le32(area, 0) != EXT4_XATTR_MAGIC {
        return Ok(Vec::new());
    }
    if area.len() < XATTR_IBODY_HEADER_LEN + 4 {
        return Err(XattrProblem::RegionTooSmall);
    }
    parse_entries(area, XATTR_IBODY_HEADER_LEN, XATTR_IBODY_HEADER_LEN, limits)
}

/// The xattr block's header fields that matter when reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct XattrBlockHeader {
    pub refcount: u32,
}

/// Parses an xattr block (`block` is the whole block, `blocknr` its number
/// for the checksum). `inode_csum` is `Some(fs csum seed)` with
/// metadata_csum.
pub(crate) fn parse_block<'a>(
    block: &'a [u8],
    blocknr: u64,
    csum_seed: Option<u32>,
    limits: &XattrLimits,
) -> Result<(XattrBlockHeader, Vec<XattrEntry<'a>>), XattrProblem> {
    let magic = le32(block, H_MAGIC);
    if magic != EXT4_XATTR_MAGIC {
        return Err(XattrProblem::BadMagic(magic));
    }
    let blocks = le32(block, H_BLOCKS);
    if blocks != 1 {
        return Err(XattrProblem::BadBlocks(blocks));
    }
    if block.len() < XATTR_BLOCK_HEADER_LEN + 4 {
        return Err(XattrProblem::RegionTooSmall);
    }
    if let Some(seed) = csum_seed {
        let stored = le32(block, H_CHECKSUM);
        let computed = xattr_block_csum(block, blocknr, seed);
        if stored != computed {
            return Err(XattrProblem::BadChecksum { stored, computed });
        }
    }
    let entries = parse_entries(block, XATTR_BLOCK_HEADER_LEN, 0, limits)?;
    Ok((
        XattrBlockHeader {
            refcount: le32(block, H_REFCOUNT),
        },
        entries,
    ))
}

/// crc32c(fs seed, le64 block number, block with h_checksum as zero).
pub(crate) fn xattr_block_csum(block: &[u8], blocknr: u64, seed: u32) -> u32 {
    let mut c = crc32c(seed, &blocknr.to_le_bytes());
    c = crc32c(c, block.get(..H_CHECKSUM).unwrap_or(&[]));
    c = crc32c(c, &[0u8; 4]);
    crc32c(c, block.get(H_CHECKSUM + 4..).unwrap_or(&[]))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    const LIMITS: XattrLimits = XattrLimits {
        ea_inode_feature: false,
        inodes_count: 1000,
    };

    /// Builds a region: header bytes, entries (index, name, value), values
    /// packed at the end. `base` is where value offsets count from.
    pub(crate) fn build(
        header: &[u8],
        total: usize,
        base: usize,
        entries: &[(u8, &[u8], &[u8])],
    ) -> Vec<u8> {
        let mut b = header.to_vec();
        b.resize(total, 0);
        let mut pos = header.len();
        let mut vend = total;
        for (index, name, value) in entries {
            let padded = (value.len() + 3) & !3;
            vend -= padded;
            b[vend..vend + value.len()].copy_from_slice(value);
            b[pos] = name.len() as u8;
            b[pos + 1] = *index;
            let offs = if value.is_empty() { 0 } else { vend - base };
            b[pos + 2..pos + 4].copy_from_slice(&(offs as u16).to_le_bytes());
            b[pos + 8..pos + 12].copy_from_slice(&(value.len() as u32).to_le_bytes());
            b[pos + 16..pos + 16 + name.len()].copy_from_slice(name);
            pos += (16 + name.len() + 3) & !3;
        }
        b
    }

    fn ibody() -> Vec<u8> {
        build(
            &EXT4_XATTR_MAGIC.to_le_bytes(),
            96,
            4,
            &[(INDEX_USER, b"a", b"hello"), (INDEX_SYSTEM, b"data", b"")],
        )
    }

    fn block() -> Vec<u8> {
        let mut h = vec![0u8; 32];
        h[0..4].copy_from_slice(&EXT4_XATTR_MAGIC.to_le_bytes());
        h[4..8].copy_from_slice(&1u32.to_le_bytes());
        h[8..12].copy_from_slice(&1u32.to_le_bytes());
        let mut b = build(
            &h,
            1024,
            0,
            &[
                (INDEX_SECURITY, b"selinux", b"ctx"),
                (INDEX_USER, b"big", &[7u8; 500]),
            ],
        );
        let c = xattr_block_csum(&b, 99, 5);
        b[16..20].copy_from_slice(&c.to_le_bytes());
        b
    }

    #[test]
    fn parses_ibody_and_block() {
        let area = ibody();
        let e = parse_ibody(&area, &LIMITS).unwrap();
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].name, b"a");
        assert_eq!(e[0].value, XattrValue::Inline(b"hello"));
        assert_eq!(e[1].name_index, INDEX_SYSTEM);
        assert_eq!(e[1].value, XattrValue::Inline(b""));
        let b = block();
        let (h, e) = parse_block(&b, 99, Some(5), &LIMITS).unwrap();
        assert_eq!(h.refcount, 1);
        assert_eq!(e[0].value, XattrValue::Inline(b"ctx"));
        assert_eq!(e[1].value, XattrValue::Inline(&[7u8; 500][..]));
        // no magic: simply no attributes.
        assert_eq!(parse_ibody(&[0u8; 32], &LIMITS), Ok(vec![]));
    }

    #[test]
    fn flipped_bytes_give_exact_errors() {
        let b = block();
        assert!(matches!(
            parse_block(&b, 98, Some(5), &LIMITS),
            Err(XattrProblem::BadChecksum { .. })
        ));
        let mut b = block();
        b[0] ^= 1;
        assert_eq!(
            parse_block(&b, 99, None, &LIMITS),
            Err(XattrProblem::BadMagic(0xEA02_0001))
        );
        let mut b = block();
        b[8] = 2;
        assert_eq!(
            parse_block(&b, 99, None, &LIMITS),
            Err(XattrProblem::BadBlocks(2))
        );
        // value offset of entry 0 (at 32 + 2) past the end.
        let mut b = block();
        b[34..36].copy_from_slice(&1022u16.to_le_bytes());
        assert_eq!(
            parse_block(&b, 99, None, &LIMITS),
            Err(XattrProblem::ValueOutOfBounds { entry: 0 })
        );
        // value offset pointing into the entry table.
        b[34..36].copy_from_slice(&40u16.to_le_bytes());
        assert_eq!(
            parse_block(&b, 99, None, &LIMITS),
            Err(XattrProblem::ValueOverlapsEntries { entry: 0 })
        );
        // value size too big.
        let mut b = block();
        b[40..44].copy_from_slice(&(XATTR_SIZE_MAX + 1).to_le_bytes());
        assert_eq!(
            parse_block(&b, 99, None, &LIMITS),
            Err(XattrProblem::ValueTooLarge {
                entry: 0,
                size: XATTR_SIZE_MAX + 1
            })
        );
        // ea_inode without the feature, then with it but pointing at root.
        let mut b = block();
        b[36..40].copy_from_slice(&2u32.to_le_bytes());
        assert_eq!(
            parse_block(&b, 99, None, &LIMITS),
            Err(XattrProblem::EaInodeWithoutFeature { entry: 0 })
        );
        let ea = XattrLimits {
            ea_inode_feature: true,
            ..LIMITS
        };
        assert_eq!(
            parse_block(&b, 99, None, &ea),
            Err(XattrProblem::BadEaInode { entry: 0, inum: 2 })
        );
        b[36..40].copy_from_slice(&13u32.to_le_bytes());
        let e = parse_block(&b, 99, None, &ea).unwrap().1;
        assert_eq!(e[0].value, XattrValue::EaInode { inum: 13, size: 3 });
        // NUL inside a name.
        let mut area = ibody();
        area[4 + 16] = 0;
        assert_eq!(
            parse_ibody(&area, &LIMITS),
            Err(XattrProblem::NulInName { entry: 0 })
        );
        // name_len running past the region (no terminator fits).
        let mut area = ibody();
        area[4] = 200;
        assert_eq!(
            parse_ibody(&area, &LIMITS),
            Err(XattrProblem::NameOutOfBounds { entry: 0 })
        );
    }

    #[test]
    fn every_flip_is_handled() {
        let good = block();
        for i in 0..200 {
            for bit in [1u8, 0x10, 0x80] {
                let mut b = good.clone();
                b[i] ^= bit;
                let _ = parse_block(&b, 99, None, &LIMITS);
            }
        }
    }

    #[test]
    fn names() {
        assert_eq!(split_name(b"user.x"), Some((INDEX_USER, &b"x"[..])));
        assert_eq!(
            split_name(b"system.posix_acl_access"),
            Some((INDEX_POSIX_ACL_ACCESS, &b""[..]))
        );
        assert_eq!(
            split_name(b"security.selinux"),
            Some((INDEX_SECURITY, &b"selinux"[..]))
        );
        assert_eq!(split_name(b"system.data"), None);
        assert_eq!(split_name(b"os2.x"), None);
        assert!(!index_is_listed(INDEX_SYSTEM));
        assert!(index_is_listed(INDEX_TRUSTED));
    }
}
