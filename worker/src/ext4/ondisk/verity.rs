//! fs-verity metadata as ext4 stores it past the end of a verity file
//! (`struct fsverity_descriptor`, its location, the Merkle tree's shape).
//! Layouts: Documentation/filesystems/fsverity.rst and fs/ext4/verity.c
//! (ext4_get_verity_descriptor_location), checks as fs/verity/open.c makes
//! them (validate_fsverity_descriptor, fsverity_init_merkle_tree_params).
//!
//! ext4 keeps, after i_size: the Merkle tree from the next 64 KiB boundary
//! on (its top level first, the level just above the data last), then the
//! descriptor from a filesystem-block boundary, and the descriptor's size as
//! an le32 in the last four bytes of the file's last mapped block.

use crate::ext4::error::{Error, Result};
use crate::ext4::types::Ino;
use crate::ext4::util::{le32, le64, put, put_le32, put_le64, take};

/// The Merkle tree starts at i_size rounded up to this (ext4_verity_metadata_pos).
pub(crate) const METADATA_ALIGN: u64 = 65536;
/// sizeof(struct fsverity_descriptor), without the signature after it.
pub(crate) const DESCRIPTOR_SIZE: usize = 256;
/// FS_VERITY_MAX_DESCRIPTOR_SIZE: descriptor plus signature.
pub(crate) const MAX_DESCRIPTOR_SIZE: u32 = 16384;
/// FS_VERITY_MAX_LEVELS.
pub(crate) const MAX_LEVELS: usize = 8;
/// FS_VERITY_MAX_DIGEST_SIZE.
pub(crate) const MAX_DIGEST_SIZE: usize = 64;
/// The smallest Merkle tree block (fsverity_init_merkle_tree_params).
const MIN_LOG_BLOCKSIZE: u8 = 10;
/// Room for the salt in the descriptor.
const SALT_ROOM: usize = 32;

/// Field offsets in struct fsverity_descriptor.
const OFF_VERSION: usize = 0;
const OFF_HASH_ALGORITHM: usize = 1;
const OFF_LOG_BLOCKSIZE: usize = 2;
const OFF_SALT_SIZE: usize = 3;
const OFF_SIG_SIZE: usize = 4;
const OFF_DATA_SIZE: usize = 8;
const OFF_ROOT_HASH: usize = 16;
const OFF_SALT: usize = 80;
const OFF_RESERVED: usize = 112;

/// FS_VERITY_HASH_ALG_*.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HashAlg {
    Sha256,
    Sha512,
}

impl HashAlg {
    fn from_number(n: u8) -> Option<HashAlg> {
        match n {
            1 => Some(HashAlg::Sha256),
            2 => Some(HashAlg::Sha512),
            _ => None,
        }
    }

    /// The FS_VERITY_HASH_ALG_* number (struct fsverity_digest's
    /// digest_algorithm).
    pub(crate) fn number(self) -> u8 {
        match self {
            HashAlg::Sha256 => 1,
            HashAlg::Sha512 => 2,
        }
    }

    pub(crate) fn digest_size(self) -> usize {
        match self {
            HashAlg::Sha256 => 32,
            HashAlg::Sha512 => 64,
        }
    }

    /// The hash's own input block: a salt is zero-padded to a multiple of
    /// it (fsverity_prepare_hash_state).
    pub(crate) fn input_block_size(self) -> usize {
        match self {
            HashAlg::Sha256 => 64,
            HashAlg::Sha512 => 128,
        }
    }
}

/// A validated fsverity_descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Descriptor {
    pub(crate) hash_alg: HashAlg,
    pub(crate) log_blocksize: u8,
    pub(crate) salt_size: u8,
    pub(crate) sig_size: u32,
    pub(crate) data_size: u64,
    pub(crate) root_hash: [u8; MAX_DIGEST_SIZE],
    pub(crate) salt: [u8; SALT_ROOM],
}

impl Descriptor {
    /// Parses the descriptor of inode `ino` (`b`: all `desc_size` bytes
    /// ext4 stores, signature included), checking it against the inode's
    /// size and the filesystem's block size as the kernel does at open.
    pub(crate) fn parse(b: &[u8], ino: Ino, i_size: u64, fs_block_size: u32) -> Result<Self> {
        let bad =
            |why: String| Error::corrupt(format!("inode {ino}: fs-verity descriptor: {why}"), 0);
        let Some(reserved) = b.get(OFF_RESERVED..DESCRIPTOR_SIZE) else {
            return Err(bad(format!("{} bytes, too short", b.len())));
        };
        let version = b.first().copied().unwrap_or(0);
        if version != 1 {
            return Err(bad(format!("unknown version {version}")));
        }
        if reserved.iter().any(|&x| x != 0) {
            return Err(bad("reserved bytes set".into()));
        }
        let alg = b.get(OFF_HASH_ALGORITHM).copied().unwrap_or(0);
        let hash_alg = HashAlg::from_number(alg)
            .ok_or_else(|| bad(format!("unknown hash algorithm {alg}")))?;
        let log_blocksize = b.get(OFF_LOG_BLOCKSIZE).copied().unwrap_or(0);
        let max_log = fs_block_size.checked_ilog2().unwrap_or(0);
        if log_blocksize < MIN_LOG_BLOCKSIZE || u32::from(log_blocksize) > max_log {
            return Err(bad(format!(
                "Merkle tree block size 2^{log_blocksize} outside 1024..={fs_block_size}"
            )));
        }
        let salt_size = b.get(OFF_SALT_SIZE).copied().unwrap_or(0);
        if usize::from(salt_size) > SALT_ROOM {
            return Err(bad(format!("salt size {salt_size} over {SALT_ROOM}")));
        }
        let data_size = le64(b, OFF_DATA_SIZE);
        if data_size != i_size {
            return Err(bad(format!(
                "data size {data_size} is not the file size {i_size}"
            )));
        }
        let sig_size = le32(b, OFF_SIG_SIZE);
        let room = b.len().saturating_sub(DESCRIPTOR_SIZE);
        if usize::try_from(sig_size).map_or(true, |s| s > room) {
            return Err(bad(format!(
                "signature of {sig_size} bytes overflows the descriptor"
            )));
        }
        let salt: [u8; SALT_ROOM] = take(b, OFF_SALT);
        Ok(Descriptor {
            hash_alg,
            log_blocksize,
            salt_size,
            sig_size,
            data_size,
            root_hash: take(b, OFF_ROOT_HASH),
            salt,
        })
    }

    /// The 256 descriptor bytes with sig_size zeroed: what the file digest
    /// (FS_IOC_MEASURE_VERITY) hashes (compute_file_digest).
    pub(crate) fn digest_input(&self) -> [u8; DESCRIPTOR_SIZE] {
        let mut out = [0u8; DESCRIPTOR_SIZE];
        self.write(&mut out);
        put_le32(&mut out, OFF_SIG_SIZE, 0);
        out
    }

    /// Serializes into the first [`DESCRIPTOR_SIZE`] bytes of `out`.
    pub(crate) fn write(&self, out: &mut [u8]) {
        put(out, OFF_VERSION, &[1]);
        put(out, OFF_HASH_ALGORITHM, &[self.hash_alg.number()]);
        put(out, OFF_LOG_BLOCKSIZE, &[self.log_blocksize]);
        put(out, OFF_SALT_SIZE, &[self.salt_size]);
        put_le32(out, OFF_SIG_SIZE, self.sig_size);
        put_le64(out, OFF_DATA_SIZE, self.data_size);
        put(out, OFF_ROOT_HASH, &self.root_hash);
        put(out, OFF_SALT, &self.salt);
        put(out, OFF_RESERVED, &[0u8; DESCRIPTOR_SIZE - OFF_RESERVED]);
    }

    /// The salt's bytes (empty for none).
    pub(crate) fn salt(&self) -> &[u8] {
        self.salt.get(..usize::from(self.salt_size)).unwrap_or(&[])
    }

    /// The root hash's bytes.
    pub(crate) fn root(&self) -> &[u8] {
        self.root_hash
            .get(..self.hash_alg.digest_size())
            .unwrap_or(&[])
    }
}

/// Where the Merkle tree of a file of `i_size` bytes starts
/// (ext4_verity_metadata_pos); None past u64.
pub(crate) fn metadata_pos(i_size: u64) -> Option<u64> {
    i_size.checked_next_multiple_of(METADATA_ALIGN)
}

/// Where the le32 descriptor size of inode `ino` is: the last four bytes
/// of its last mapped block, which ends at byte `end`.
pub(crate) fn size_field_pos(ino: Ino, end: u64) -> Result<u64> {
    end.checked_sub(4).ok_or_else(|| {
        Error::corrupt(
            format!("inode {ino}: fs-verity descriptor location: no room for the descriptor size"),
            0,
        )
    })
}

/// Where the descriptor of inode `ino` lies and how long it is, from the
/// le32 `size_field` read at `size_pos` (see [`size_field_pos`]):
/// ext4_get_verity_descriptor_location's checks, plus the kernel's size
/// limit (fsverity_get_descriptor) so nothing large is ever allocated.
pub(crate) fn descriptor_location(
    ino: Ino,
    i_size: u64,
    fs_block_size: u32,
    size_pos: u64,
    size_field: u32,
) -> Result<(u64, u32)> {
    let bad = |why: String| {
        Error::corrupt(
            format!("inode {ino}: fs-verity descriptor location: {why}"),
            0,
        )
    };
    if size_field > MAX_DESCRIPTOR_SIZE {
        return Err(bad(format!(
            "descriptor of {size_field} bytes (limit {MAX_DESCRIPTOR_SIZE})"
        )));
    }
    let start = size_pos.checked_sub(u64::from(size_field)).ok_or_else(|| {
        bad(format!(
            "descriptor of {size_field} bytes before byte {size_pos}"
        ))
    })?;
    let bs = u64::from(fs_block_size).max(1);
    let pos = start.saturating_sub(start.checked_rem(bs).unwrap_or(0));
    let meta = metadata_pos(i_size).ok_or_else(|| bad("file size too large".into()))?;
    if pos < meta {
        return Err(bad(format!(
            "descriptor at byte {pos}, before the metadata at {meta}"
        )));
    }
    Ok((pos, size_field))
}

/// The Merkle tree's shape (fsverity_init_merkle_tree_params).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TreeGeometry {
    /// Merkle tree block size, also the unit data is verified in.
    pub(crate) block_size: u32,
    pub(crate) digest_size: usize,
    pub(crate) hashes_per_block: u64,
    /// Number of levels above the data: 0 when the file has at most one
    /// block (the root hash is then that block's hash).
    pub(crate) levels: usize,
    /// First tree block of each level; level 0 is just above the data.
    pub(crate) level_start: [u64; MAX_LEVELS],
    /// Number of data blocks.
    pub(crate) data_blocks: u64,
}

impl TreeGeometry {
    pub(crate) fn new(desc: &Descriptor, ino: Ino) -> Result<Self> {
        let block_size = 1u32
            .checked_shl(u32::from(desc.log_blocksize))
            .ok_or_else(|| Error::corrupt(format!("inode {ino}: fs-verity block size"), 0))?;
        let digest_size = desc.hash_alg.digest_size();
        let hashes_per_block = u64::from(block_size)
            .checked_div(digest_size as u64)
            .unwrap_or(1)
            .max(2);
        let data_blocks = desc.data_size.div_ceil(u64::from(block_size));
        let mut per_level = [0u64; MAX_LEVELS];
        let mut levels = 0usize;
        let mut blocks = data_blocks;
        while blocks > 1 {
            let Some(slot) = per_level.get_mut(levels) else {
                return Err(Error::corrupt(
                    format!("inode {ino}: fs-verity Merkle tree over {MAX_LEVELS} levels"),
                    0,
                ));
            };
            blocks = blocks.div_ceil(hashes_per_block);
            *slot = blocks;
            levels = levels.saturating_add(1);
        }
        // The top level is stored first.
        let mut level_start = [0u64; MAX_LEVELS];
        let mut next = 0u64;
        for level in (0..levels).rev() {
            if let (Some(start), Some(n)) = (level_start.get_mut(level), per_level.get(level)) {
                *start = next;
                next = next.saturating_add(*n);
            }
        }
        Ok(TreeGeometry {
            block_size,
            digest_size,
            hashes_per_block,
            levels,
            level_start,
            data_blocks,
        })
    }

    /// Where the hash of block `index` of the level below `level` (the
    /// data, for level 0) is kept: the tree block, and the byte offset of
    /// the hash in it.
    pub(crate) fn hash_location(&self, level: usize, index: u64) -> Option<(u64, usize)> {
        let start = *self.level_start.get(level)?;
        let block = start.checked_add(index.checked_div(self.hashes_per_block)?)?;
        let slot = usize::try_from(index.checked_rem(self.hashes_per_block)?).ok()?;
        Some((block, slot.checked_mul(self.digest_size)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(data_size: u64) -> Descriptor {
        let mut root_hash = [0u8; MAX_DIGEST_SIZE];
        root_hash[..32].fill(0xAB);
        let mut salt = [0u8; SALT_ROOM];
        salt[..4].copy_from_slice(b"salt");
        Descriptor {
            hash_alg: HashAlg::Sha256,
            log_blocksize: 12,
            salt_size: 4,
            sig_size: 0,
            data_size,
            root_hash,
            salt,
        }
    }

    fn bytes(d: &Descriptor) -> Vec<u8> {
        let mut b = vec![0u8; DESCRIPTOR_SIZE];
        d.write(&mut b);
        b
    }

    #[test]
    fn round_trip() {
        let d = sample(12345);
        let b = bytes(&d);
        assert_eq!(Descriptor::parse(&b, 12, 12345, 4096).unwrap(), d);
        assert_eq!(d.salt(), b"salt");
        assert_eq!(d.root().len(), 32);
        // The digest input only differs in sig_size.
        let mut signed = sample(12345);
        signed.sig_size = 7;
        let mut b = bytes(&signed);
        b.extend_from_slice(&[9u8; 7]);
        assert_eq!(Descriptor::parse(&b, 12, 12345, 4096).unwrap(), signed);
        assert_eq!(signed.digest_input(), d.digest_input());
    }

    #[test]
    fn hostile_descriptors_are_corrupt() {
        let good = bytes(&sample(100));
        // (byte offset, value written there, what the error says).
        let cases: [(usize, u8, &str); 9] = [
            (0, 2, "unknown version 2"),
            (1, 3, "unknown hash algorithm 3"),
            (2, 9, "block size 2^9"),
            (2, 13, "block size 2^13"),
            (2, 255, "block size 2^255"),
            (3, 33, "salt size 33"),
            (8, 99, "not the file size 100"),
            (4, 1, "signature of 1 bytes"),
            (200, 1, "reserved bytes set"),
        ];
        let e = Descriptor::parse(&good[..200], 77, 100, 4096).unwrap_err();
        assert!(e.to_string().contains("inode 77") && e.to_string().contains("too short"));
        for (off, value, want) in cases {
            let mut b = good.clone();
            b[off] = value;
            let e = Descriptor::parse(&b, 77, 100, 4096).unwrap_err();
            let msg = e.to_string();
            assert!(matches!(e, Error::Corrupt { .. }), "{want}: {e:?}");
            assert!(
                msg.contains("inode 77") && msg.contains(want),
                "{want}: {msg}"
            );
        }
    }

    #[test]
    fn location_follows_ext4() {
        // 5000-byte file, 4 KiB blocks: tree at 65536; a 256-byte
        // descriptor in the block that ends at `end`.
        let end = 65536 + 3 * 4096;
        let pos = size_field_pos(5, end).unwrap();
        assert_eq!(
            descriptor_location(5, 5000, 4096, pos, 256).unwrap(),
            (65536 + 2 * 4096, 256)
        );
        let e = size_field_pos(5, 3).unwrap_err();
        assert!(e.to_string().contains("inode 5") && e.to_string().contains("no room"));
        for (pos, size, want) in [
            (pos, 20000u32, "limit 16384"),
            (96, 256, "before byte 96"),
            (65536 + 96, 256, "before the metadata"),
        ] {
            let e = descriptor_location(5, 5000, 4096, pos, size).unwrap_err();
            assert!(e.to_string().contains(want), "{e}");
            assert!(e.to_string().contains("inode 5"), "{e}");
        }
        assert!(descriptor_location(5, u64::MAX, 4096, u64::MAX, 256).is_err());
    }

    #[test]
    fn geometry_matches_the_kernel() {
        // Empty and one-block files have no tree: the root is the block's hash.
        for size in [0, 1, 4096] {
            let g = TreeGeometry::new(&sample(size), 1).unwrap();
            assert_eq!(g.levels, 0, "{size}");
        }
        // 4 KiB blocks, SHA-256: 128 hashes per tree block. 129 data
        // blocks need two level-0 blocks and one root block above.
        let g = TreeGeometry::new(&sample(129 * 4096), 1).unwrap();
        assert_eq!((g.levels, g.hashes_per_block), (2, 128));
        assert_eq!(&g.level_start[..2], &[1, 0]);
        assert_eq!(g.hash_location(0, 128), Some((2, 0)));
        assert_eq!(g.hash_location(0, 5), Some((1, 5 * 32)));
        assert_eq!(g.hash_location(1, 1), Some((0, 32)));
        // A size beyond eight levels (1 KiB blocks, SHA-512: 16 hashes
        // per block, 16^8 blocks) is refused, not looped over.
        let mut d = sample(u64::MAX);
        d.log_blocksize = 10;
        d.hash_alg = HashAlg::Sha512;
        let e = TreeGeometry::new(&d, 9).unwrap_err();
        assert!(e.to_string().contains("over 8 levels"), "{e}");
    }
}
