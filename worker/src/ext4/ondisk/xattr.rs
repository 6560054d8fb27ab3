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
use crate::ext4::ondisk::{bytes_from, bytes_from_mut};
use crate::ext4::util::{le16, le32, put, put_le16, put_le32};

pub(crate) const EXT4_XATTR_MAGIC: u32 = 0xEA02_0000;
/// `ext4_xattr_header` size; the first block entry follows it.
pub(crate) const XATTR_BLOCK_HEADER_LEN: usize = 32;
const H_MAGIC: usize = 0;
const H_REFCOUNT: usize = 4;
const H_BLOCKS: usize = 8;
const H_HASH: usize = 12;
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
#[expect(dead_code, reason = "on-disk format value the engine does not act on")]
pub(crate) const INDEX_ENCRYPTION: u8 = 9;
pub(crate) const INDEX_HURD: u8 = 10;

/// The name (index INDEX_SYSTEM, "system." + this) of the xattr holding
/// the inline-data bytes past i_block (EXT4_XATTR_SYSTEM_DATA).
pub(crate) const SYSTEM_DATA: &[u8] = b"data";

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
        let ent = bytes_from(region, pos);
        let name_len = usize::from(ent.get(E_NAME_LEN).copied().unwrap_or(0));
        let next = pos
            .checked_add(entry_len(name_len))
            .ok_or(XattrProblem::NameOutOfBounds { entry: spans.len() })?;
        if next.saturating_add(4) > end {
            return Err(XattrProblem::NameOutOfBounds { entry: spans.len() });
        }
        let name = entry_name(ent, name_len)
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
        let ent = bytes_from(region, pos);
        let name_index = ent.get(E_NAME_INDEX).copied().unwrap_or(0);
        let offs = usize::from(le16(ent, E_VALUE_OFFS));
        let inum = le32(ent, E_VALUE_INUM);
        let size = le32(ent, E_VALUE_SIZE);
        let hash = le32(ent, E_HASH);
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
                .ok_or(XattrProblem::ValueOutOfBounds { entry: i })?;
            // Bytes from the value's start to the region's end.
            let room = end
                .checked_sub(start)
                .ok_or(XattrProblem::ValueOutOfBounds { entry: i })?;
            if start < table_end {
                return Err(XattrProblem::ValueOverlapsEntries { entry: i });
            }
            let size = size as usize;
            if value_len(size) > room {
                return Err(XattrProblem::ValueOutOfBounds { entry: i });
            }
            XattrValue::Inline(
                region
                    .get(start..)
                    .and_then(|v| v.get(..size))
                    .ok_or(XattrProblem::ValueOutOfBounds { entry: i })?,
            )
        };
        let name = entry_name(ent, name_len).unwrap_or(&[]);
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
    /// h_hash: the key of the kernel's block cache (`ext4_xattr_rehash`).
    pub hash: u32,
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
            hash: le32(block, H_HASH),
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

/// An attribute to serialize (owned), in the order it is to be stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NewXattr {
    pub name_index: u8,
    pub name: Vec<u8>,
    pub value: NewXattrValue,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum NewXattrValue {
    /// Stored in the region.
    Inline(Vec<u8>),
    /// Stored in ea_inode `inum`; `hash` is the crc32c of the value the
    /// kernel keeps in the ea_inode (its i_atime) and folds into e_hash.
    EaInode { inum: u32, size: u32, hash: u32 },
}

const NAME_HASH_SHIFT: u32 = 5;
const VALUE_HASH_SHIFT: u32 = 16;
const BLOCK_HASH_SHIFT: u32 = 16;
const XATTR_PAD: usize = 4;

/// `EXT4_XATTR_LEN`: an entry header plus its name, 4-aligned.
pub(crate) fn entry_len(name_len: usize) -> usize {
    value_len(XATTR_ENTRY_HEADER_LEN.saturating_add(name_len))
}

/// The `name_len` bytes of name after the entry header at the start of
/// `ent`, `None` if they run past its end.
fn entry_name(ent: &[u8], name_len: usize) -> Option<&[u8]> {
    ent.get(XATTR_ENTRY_HEADER_LEN..)?.get(..name_len)
}

/// `EXT4_XATTR_SIZE`: a value's size in the region, 4-aligned.
pub(crate) fn value_len(size: usize) -> usize {
    size.saturating_add(XATTR_PAD - 1) & !(XATTR_PAD - 1)
}

/// `ext4_xattr_hash_entry`: the name (bytes as unsigned char, as the
/// kernel hashes since 6.2) then the value as little-endian 32-bit words,
/// zero-padded.
pub(crate) fn hash_entry(name: &[u8], value: &[u8]) -> u32 {
    let mut hash: u32 = 0;
    for &c in name {
        hash = (hash << NAME_HASH_SHIFT) ^ (hash >> (32 - NAME_HASH_SHIFT)) ^ u32::from(c);
    }
    for chunk in value.chunks(4) {
        let mut w = [0u8; 4];
        w[..chunk.len()].copy_from_slice(chunk);
        hash =
            (hash << VALUE_HASH_SHIFT) ^ (hash >> (32 - VALUE_HASH_SHIFT)) ^ u32::from_le_bytes(w);
    }
    hash
}

/// The `e_hash` the kernel stores for `x`.
pub(crate) fn entry_hash(x: &NewXattr) -> u32 {
    match &x.value {
        NewXattrValue::Inline(v) => hash_entry(&x.name, v),
        NewXattrValue::EaInode { hash, .. } => hash_entry(&x.name, &hash.to_le_bytes()),
    }
}

/// `ext4_xattr_rehash`: the block's `h_hash` from its entries' hashes (0
/// if any entry hash is 0).
pub(crate) fn block_hash(entry_hashes: impl IntoIterator<Item = u32>) -> u32 {
    let mut hash: u32 = 0;
    for h in entry_hashes {
        if h == 0 {
            return 0;
        }
        hash = (hash << BLOCK_HASH_SHIFT) ^ (hash >> (32 - BLOCK_HASH_SHIFT)) ^ h;
    }
    hash
}

/// The kernel's order of entries in a block: by index, name length, name.
pub(crate) fn sort_for_block(entries: &mut [NewXattr]) {
    entries.sort_by(|a, b| {
        (a.name_index, a.name.len(), &a.name).cmp(&(b.name_index, b.name.len(), &b.name))
    });
}

/// Bytes `entries` need in a region whose entries start at `first`: the
/// entry table with its 4-byte terminator plus the padded in-region
/// values.
pub(crate) fn space_needed(entries: &[NewXattr]) -> usize {
    let mut n = 4usize;
    for e in entries {
        n = n.saturating_add(entry_len(e.name.len()));
        if let NewXattrValue::Inline(v) = &e.value {
            n = n.saturating_add(value_len(v.len()));
        }
    }
    n
}

/// Lays `entries` out in `region` (entries from `first`, values packed
/// down from the end, offsets counted from `value_base`) and zeroes every
/// other byte from `first` on. Returns false, leaving `region` untouched,
/// if they do not fit or a name or value is too long for the format.
fn write_entries(region: &mut [u8], first: usize, value_base: usize, entries: &[NewXattr]) -> bool {
    if first.saturating_add(space_needed(entries)) > region.len() {
        return false;
    }
    for e in entries {
        if e.name.len() > usize::from(u8::MAX) {
            return false;
        }
        if let NewXattrValue::Inline(v) = &e.value
            && (v.len() > region.len() || u32::try_from(v.len()).is_err())
        {
            return false;
        }
    }
    let Some(body) = region.get_mut(first..) else {
        return false;
    };
    body.fill(0);
    // The space check above bounds every offset below: entries grow up
    // from `first`, values down from the end, and they do not meet.
    let mut pos = first;
    let mut vend = region.len();
    for e in entries {
        let hash = entry_hash(e);
        let (offs, inum, size) = match &e.value {
            NewXattrValue::Inline(v) if v.is_empty() => (0usize, 0u32, 0u32),
            NewXattrValue::Inline(v) => {
                vend = vend.saturating_sub(value_len(v.len()));
                put(region, vend, v);
                (vend.saturating_sub(value_base), 0, v.len() as u32)
            }
            NewXattrValue::EaInode { inum, size, .. } => (0, *inum, *size),
        };
        let ent = bytes_from_mut(region, pos);
        put(ent, E_NAME_LEN, &[e.name.len() as u8]);
        put(ent, E_NAME_INDEX, &[e.name_index]);
        put_le16(ent, E_VALUE_OFFS, u16::try_from(offs).unwrap_or(0));
        put_le32(ent, E_VALUE_INUM, inum);
        put_le32(ent, E_VALUE_SIZE, size);
        put_le32(ent, E_HASH, hash);
        put(ent, XATTR_ENTRY_HEADER_LEN, &e.name);
        pos = pos.saturating_add(entry_len(e.name.len()));
    }
    true
}

/// Serializes the in-inode region (`area` from the ibody header to the
/// inode's end). No entries: the magic is cleared, as the kernel does.
pub(crate) fn write_ibody(area: &mut [u8], entries: &[NewXattr]) -> bool {
    if area.len() < XATTR_IBODY_HEADER_LEN {
        return entries.is_empty();
    }
    if !write_entries(
        area,
        XATTR_IBODY_HEADER_LEN,
        XATTR_IBODY_HEADER_LEN,
        entries,
    ) {
        return false;
    }
    let magic = if entries.is_empty() {
        0
    } else {
        EXT4_XATTR_MAGIC
    };
    area[..4].copy_from_slice(&magic.to_le_bytes());
    true
}

/// Serializes an xattr block: header (magic, `refcount`, h_blocks 1, the
/// rehashed h_hash, and with `csum_seed` the checksum over `blocknr`),
/// entries in the order given (sort them with [`sort_for_block`]).
pub(crate) fn write_block(
    block: &mut [u8],
    blocknr: u64,
    refcount: u32,
    entries: &[NewXattr],
    csum_seed: Option<u32>,
) -> bool {
    if block.len() < XATTR_BLOCK_HEADER_LEN + 4
        || !write_entries(block, XATTR_BLOCK_HEADER_LEN, 0, entries)
    {
        return false;
    }
    block[..XATTR_BLOCK_HEADER_LEN].fill(0);
    block[H_MAGIC..H_MAGIC + 4].copy_from_slice(&EXT4_XATTR_MAGIC.to_le_bytes());
    block[H_REFCOUNT..H_REFCOUNT + 4].copy_from_slice(&refcount.to_le_bytes());
    block[H_BLOCKS..H_BLOCKS + 4].copy_from_slice(&1u32.to_le_bytes());
    let h = block_hash(entries.iter().map(entry_hash));
    block[H_HASH..H_HASH + 4].copy_from_slice(&h.to_le_bytes());
    if let Some(seed) = csum_seed {
        let c = xattr_block_csum(block, blocknr, seed);
        block[H_CHECKSUM..H_CHECKSUM + 4].copy_from_slice(&c.to_le_bytes());
    }
    true
}

/// Rewrites only the refcount of an xattr block and its checksum.
pub(crate) fn set_block_refcount(
    block: &mut [u8],
    blocknr: u64,
    refcount: u32,
    csum_seed: Option<u32>,
) {
    if let Some(d) = block.get_mut(H_REFCOUNT..H_REFCOUNT + 4) {
        d.copy_from_slice(&refcount.to_le_bytes());
    }
    if let Some(seed) = csum_seed {
        let c = xattr_block_csum(block, blocknr, seed);
        if let Some(d) = block.get_mut(H_CHECKSUM..H_CHECKSUM + 4) {
            d.copy_from_slice(&c.to_le_bytes());
        }
    }
}

/// The block header's h_hash.
#[cfg(test)]
pub(crate) fn block_header_hash(block: &[u8]) -> u32 {
    le32(block, H_HASH)
}

impl NewXattr {
    /// The owned copy of a parsed entry (`ea_hash`: the ea_inode's value
    /// hash, for entries stored in one).
    pub(crate) fn from_entry(e: &XattrEntry<'_>, ea_hash: u32) -> NewXattr {
        NewXattr {
            name_index: e.name_index,
            name: e.name.to_vec(),
            value: match e.value {
                XattrValue::Inline(v) => NewXattrValue::Inline(v.to_vec()),
                XattrValue::EaInode { inum, size } => NewXattrValue::EaInode {
                    inum,
                    size,
                    hash: ea_hash,
                },
            },
        }
    }
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects)]
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

    fn owned(index: u8, name: &[u8], value: &[u8]) -> NewXattr {
        NewXattr {
            name_index: index,
            name: name.to_vec(),
            value: NewXattrValue::Inline(value.to_vec()),
        }
    }

    #[test]
    fn write_round_trips() {
        let ea = XattrLimits {
            ea_inode_feature: true,
            ..LIMITS
        };
        let mut entries = vec![
            owned(INDEX_USER, b"zz", &[1u8; 37]),
            owned(INDEX_SECURITY, b"selinux", b"ctx\0"),
            owned(INDEX_USER, b"a", b""),
            NewXattr {
                name_index: INDEX_TRUSTED,
                name: b"big".to_vec(),
                value: NewXattrValue::EaInode {
                    inum: 13,
                    size: 100_000,
                    hash: 0xdead_beef,
                },
            },
        ];
        sort_for_block(&mut entries);
        assert_eq!(entries[0].name, b"a");
        assert_eq!(entries[1].name, b"zz");
        let mut b = vec![0xCCu8; 1024];
        assert!(write_block(&mut b, 99, 3, &entries, Some(5)));
        let (h, parsed) = parse_block(&b, 99, Some(5), &ea).unwrap();
        assert_eq!(h.refcount, 3);
        let back: Vec<NewXattr> = parsed
            .iter()
            .map(|e| NewXattr::from_entry(e, 0xdead_beef))
            .collect();
        assert_eq!(back, entries);
        for (e, p) in entries.iter().zip(&parsed) {
            assert_eq!(p.hash, entry_hash(e));
        }
        assert_eq!(
            block_header_hash(&b),
            block_hash(parsed.iter().map(|e| e.hash))
        );
        set_block_refcount(&mut b, 99, 1, Some(5));
        assert_eq!(parse_block(&b, 99, Some(5), &ea).unwrap().0.refcount, 1);

        let mut area = vec![0xCCu8; 96];
        let ib = vec![
            owned(INDEX_SYSTEM, b"data", b""),
            owned(INDEX_USER, b"k", b"hello"),
        ];
        assert!(write_ibody(&mut area, &ib));
        let back: Vec<NewXattr> = parse_ibody(&area, &LIMITS)
            .unwrap()
            .iter()
            .map(|e| NewXattr::from_entry(e, 0))
            .collect();
        assert_eq!(back, ib);
        // Too big: refused and untouched.
        let before = area.clone();
        assert!(!write_ibody(
            &mut area,
            &[owned(INDEX_USER, b"k", &[0u8; 90])]
        ));
        assert_eq!(area, before);
        assert!(write_ibody(&mut area, &[]));
        assert_eq!(parse_ibody(&area, &LIMITS), Ok(vec![]));
        assert_eq!(le32(&area, 0), 0);
    }

    /// Values from e2fsprogs' tests: the hash of user.foo = "bar" style
    /// entries follows the kernel's shifts.
    #[test]
    fn kernel_hash_shape() {
        // name "a": hash = 'a'; value "\x01\0\0\0": (a << 16) ^ (a >> 16) ^ 1.
        assert_eq!(hash_entry(b"a", &[]), 0x61);
        assert_eq!(hash_entry(b"a", &[1]), (0x61 << 16) ^ 1);
        assert_eq!(hash_entry(b"ab", &[]), (0x61 << 5) ^ 0x62);
        assert_eq!(block_hash([1, 2]), (1 << 16) ^ 2);
        assert_eq!(block_hash([1, 0, 2]), 0);
    }
}
