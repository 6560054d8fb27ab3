//! fs-verity files (fs/verity/ over fs/ext4/verity.c): every block read
//! from a file with the verity flag is hashed and checked against its
//! Merkle tree, whose blocks are checked up to the root hash in the
//! descriptor; FS_IOC_MEASURE_VERITY's file digest.
//!
//! A block that does not match fails the read with EIO ([`Error::Verity`]),
//! as fsverity_verify_blocks does; like the kernel's, that is not a
//! filesystem error (no superblock record, no `errors=` action). Metadata
//! that cannot be found or parsed is `Corrupt`.
//!
//! Verified tree blocks are kept (their bytes, not a "verified" bit: a
//! hostile device may answer the same read differently), bounded per file
//! and in the number of files, so a sequential read hashes each tree block
//! once instead of walking to the root for every data block.

use std::sync::Arc;

use sha2::{Digest, Sha256, Sha512};

use super::cache::Lru;
use super::ondisk::inode::{EXT4_EXTENTS_FL, Inode};
use super::ondisk::verity::{
    self as layout, Descriptor, HashAlg, MAX_DIGEST_SIZE, MAX_LEVELS, TreeGeometry,
};
use super::{Error, Ext4, FileKind, Ino, Result, inode_flags};

/// Verified Merkle tree bytes kept per file.
const TREE_CACHE_BYTES: usize = 256 << 10;
/// Verity files whose descriptor and tree cache are kept.
pub(crate) const VERITY_FILES_CACHED: usize = 64;

/// A hash state with the salt already fed.
#[derive(Clone)]
enum Hasher {
    Sha256(Sha256),
    Sha512(Sha512),
}

/// One digest.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Hash {
    bytes: [u8; MAX_DIGEST_SIZE],
    len: usize,
}

impl Hash {
    fn as_slice(&self) -> &[u8] {
        self.bytes.get(..self.len).unwrap_or(&[])
    }
}

impl Hasher {
    /// fsverity_prepare_hash_state: a salt is zero-padded to a multiple
    /// of the hash's input block and hashed before every block.
    fn new(alg: HashAlg, salt: &[u8]) -> Self {
        let mut h = match alg {
            HashAlg::Sha256 => Hasher::Sha256(Sha256::new()),
            HashAlg::Sha512 => Hasher::Sha512(Sha512::new()),
        };
        if !salt.is_empty() {
            let mut padded = salt.to_vec();
            padded.resize(salt.len().next_multiple_of(alg.input_block_size()), 0);
            h.update(&padded);
        }
        h
    }

    fn update(&mut self, b: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(b),
            Hasher::Sha512(h) => h.update(b),
        }
    }

    /// The digest of `block`, zero-padded to `size` bytes (the part of a
    /// file's last block past i_size hashes as zeros).
    fn digest_padded(&self, block: &[u8], size: usize) -> Hash {
        const ZEROS: [u8; 4096] = [0; 4096];
        let mut h = self.clone();
        h.update(block);
        let mut pad = size.saturating_sub(block.len());
        while pad > 0 {
            let n = pad.min(ZEROS.len());
            h.update(ZEROS.get(..n).unwrap_or(&[]));
            pad = pad.saturating_sub(n);
        }
        h.digest(&[])
    }

    /// The digest of `block` after the salt.
    fn digest(&self, block: &[u8]) -> Hash {
        let mut out = Hash {
            bytes: [0; MAX_DIGEST_SIZE],
            len: 0,
        };
        let mut put = |d: &[u8]| {
            out.len = d.len().min(MAX_DIGEST_SIZE);
            if let (Some(dst), Some(src)) = (out.bytes.get_mut(..out.len), d.get(..out.len)) {
                dst.copy_from_slice(src);
            }
        };
        match self {
            Hasher::Sha256(h) => {
                let mut h = h.clone();
                h.update(block);
                put(&h.finalize());
            }
            Hasher::Sha512(h) => {
                let mut h = h.clone();
                h.update(block);
                put(&h.finalize());
            }
        }
        out
    }
}

/// What a verity file's reads need: its descriptor, tree shape and the
/// tree blocks verified so far.
pub(crate) struct VerityFile {
    /// The inode this was loaded for (a cached entry is only used for it).
    generation: u32,
    size: u64,
    desc: Descriptor,
    geo: TreeGeometry,
    /// Byte offset of the Merkle tree in the file.
    tree_pos: u64,
    hasher: Hasher,
    /// Verified tree blocks by their index in the tree.
    tree: Lru<Arc<[u8]>>,
}

/// FS_IOC_MEASURE_VERITY's answer: hash algorithm number and file digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerityDigest {
    pub algorithm: u16,
    pub digest: Vec<u8>,
}

impl Ext4 {
    /// The verity state of `inode`, loaded on first use (the kernel's
    /// ensure_verity_info); None for a file without the verity flag.
    pub(crate) fn verity_of(&self, inode: &Inode) -> Result<Option<Arc<VerityFile>>> {
        if !inode_flags::is_verity(inode) || inode.kind != FileKind::RegularFile {
            return Ok(None);
        }
        let key = u64::from(inode.ino);
        if let Some(v) = self.verity.get(key)
            && v.generation == inode.generation
            && v.size == inode.size
        {
            return Ok(Some(v));
        }
        let v = Arc::new(self.load_verity(inode)?);
        self.verity.insert(key, v.clone(), 1);
        Ok(Some(v))
    }

    /// Finds and parses the descriptor (ext4_get_verity_descriptor_location,
    /// fsverity_get_descriptor, fsverity_create_info).
    fn load_verity(&self, inode: &Inode) -> Result<VerityFile> {
        let ino = inode.ino;
        if !inode.has_flag(EXT4_EXTENTS_FL) {
            return Err(Error::corrupt(
                format!("inode {ino}: verity file does not use extents"),
                0,
            ));
        }
        let end = self
            .mapped_end(inode)?
            .ok_or_else(|| Error::corrupt(format!("inode {ino}: verity file has no extents"), 0))?;
        let size_pos = layout::size_field_pos(ino, end)?;
        let mut field = [0u8; 4];
        self.read_mapped(inode, size_pos, &mut field)?;
        let (pos, len) = layout::descriptor_location(
            ino,
            inode.size,
            self.block_size(),
            size_pos,
            u32::from_le_bytes(field),
        )?;
        // At most MAX_DESCRIPTOR_SIZE (checked above).
        let mut raw = vec![0u8; usize::try_from(len).unwrap_or(0)];
        self.read_mapped(inode, pos, &mut raw)?;
        let desc = Descriptor::parse(&raw, ino, inode.size, self.block_size())?;
        let geo = TreeGeometry::new(&desc, ino)?;
        let tree_pos = layout::metadata_pos(inode.size)
            .ok_or_else(|| Error::corrupt(format!("inode {ino}: verity file size"), 0))?;
        Ok(VerityFile {
            generation: inode.generation,
            size: inode.size,
            hasher: Hasher::new(desc.hash_alg, desc.salt()),
            desc,
            geo,
            tree_pos,
            tree: Lru::new(TREE_CACHE_BYTES),
        })
    }

    /// FS_IOC_MEASURE_VERITY: the hash of the descriptor with sig_size
    /// zeroed (fs/verity/measure.c). ENODATA for a file without verity.
    pub fn measure_verity(&self, ino: Ino) -> Result<VerityDigest> {
        let inode = self.inode(ino)?;
        let v = self.verity_of(&inode)?.ok_or(Error::NoAttribute)?;
        let digest = Hasher::new(v.desc.hash_alg, &[]).digest(&v.desc.digest_input());
        Ok(VerityDigest {
            algorithm: u16::from(v.desc.hash_alg.number()),
            digest: digest.as_slice().to_vec(),
        })
    }

    /// Loads the verity state at open (fsverity_file_open), so a file
    /// whose metadata is bad fails there.
    pub(crate) fn open_verity(&self, inode: &Inode) -> Result<()> {
        self.verity_of(inode).map(|_| ())
    }

    /// Fills `buf` (inside i_size) with the verity file's bytes at
    /// `offset`, every data block they touch verified against the tree.
    pub(crate) fn read_verified(&self, inode: &Inode, offset: u64, buf: &mut [u8]) -> Result<()> {
        let Some(v) = self.verity_of(inode)? else {
            return self.read_mapped(inode, offset, buf);
        };
        let bs = u64::from(v.geo.block_size);
        let bsz = usize::try_from(bs).unwrap_or(usize::MAX);
        let end = offset.saturating_add(buf.len() as u64);
        let first = offset.checked_div(bs).unwrap_or(0);
        let aligned = offset.checked_rem(bs) == Some(0)
            && (end.checked_rem(bs) == Some(0) || end == inode.size);
        if aligned {
            // The usual FUSE read (whole blocks, or up to EOF): verified
            // in place.
            self.read_mapped(inode, offset, buf)?;
            let mut level0 = None;
            for (index, block) in (first..).zip(buf.chunks(bsz)) {
                self.verify_data_block(inode, &v, index, block, &mut level0)?;
            }
            return Ok(());
        }
        let span_start = first.saturating_mul(bs);
        let span_end = end.div_ceil(bs).saturating_mul(bs);
        // buf.len() plus less than two blocks.
        let span_len = usize::try_from(span_end.saturating_sub(span_start)).unwrap_or(0);
        let mut span = vec![0u8; span_len];
        let data = usize::try_from(inode.size.saturating_sub(span_start))
            .unwrap_or(usize::MAX)
            .min(span_len);
        let span = span.get_mut(..data).unwrap_or(&mut []);
        self.read_mapped(inode, span_start, span)?;
        let mut level0 = None;
        for (index, block) in (first..).zip(span.chunks(bsz)) {
            self.verify_data_block(inode, &v, index, block, &mut level0)?;
        }
        let skip = usize::try_from(offset.saturating_sub(span_start)).unwrap_or(0);
        let src = span
            .get(skip..skip.saturating_add(buf.len()))
            .unwrap_or(&[]);
        if src.len() != buf.len() {
            return Err(Error::Invalid("verity read outside the file"));
        }
        buf.copy_from_slice(src);
        Ok(())
    }

    /// Checks data block `index` against level 0 of the tree (or the root
    /// hash, for a one-block file). `level0` keeps the verified level-0
    /// block the previous call used (neighbours share it) out of the cache.
    fn verify_data_block(
        &self,
        inode: &Inode,
        v: &VerityFile,
        index: u64,
        block: &[u8],
        level0: &mut Option<(u64, Arc<[u8]>)>,
    ) -> Result<()> {
        let ino = inode.ino;
        // A block shorter than a Merkle block is the file's last: the rest
        // hashes as zeros.
        let got = v
            .hasher
            .digest_padded(block, usize::try_from(v.geo.block_size).unwrap_or(0));
        let ok = if v.geo.levels == 0 {
            index == 0 && got.as_slice() == v.desc.root()
        } else {
            let (_, at) = location(v, ino, 0, index)?;
            let in_level = index.checked_div(v.geo.hashes_per_block).unwrap_or(0);
            let parent = match level0 {
                Some((i, b)) if *i == in_level => b.clone(),
                _ => {
                    let b = self.verified_tree_block(inode, v, 0, in_level)?;
                    *level0 = Some((in_level, b.clone()));
                    b
                }
            };
            parent.get(at..at.saturating_add(got.len)) == Some(got.as_slice())
        };
        if ok {
            Ok(())
        } else {
            Err(Error::Verity(format!(
                "inode {ino}: data block {index} ({} bytes at byte {}) does not match its fs-verity Merkle tree",
                v.geo.block_size,
                index.saturating_mul(u64::from(v.geo.block_size))
            )))
        }
    }

    /// Block `index` of tree level `level`, verified: read it and any
    /// unverified blocks above it, up to a verified one or the root hash,
    /// then check them from the top down.
    fn verified_tree_block(
        &self,
        inode: &Inode,
        v: &VerityFile,
        level: usize,
        index: u64,
    ) -> Result<Arc<[u8]>> {
        let ino = inode.ino;
        // (level, index in level, tree block, bytes), bottom first.
        let mut unverified: Vec<(usize, u64, u64, Arc<[u8]>)> = Vec::with_capacity(MAX_LEVELS);
        let mut anchor: Option<Arc<[u8]>> = None;
        let (mut lvl, mut idx) = (level, index);
        loop {
            let start = v.geo.level_start.get(lvl).copied().unwrap_or(0);
            let tb = start
                .checked_add(idx)
                .ok_or_else(|| tree_error(ino, "block index"))?;
            if let Some(b) = v.tree.get(tb) {
                if unverified.is_empty() {
                    return Ok(b);
                }
                anchor = Some(b);
                break;
            }
            unverified.push((lvl, idx, tb, self.read_tree_block(inode, v, tb)?));
            let up = lvl.saturating_add(1);
            if up >= v.geo.levels {
                break;
            }
            idx = idx.checked_div(v.geo.hashes_per_block).unwrap_or(0);
            lvl = up;
        }
        let mut parent = anchor;
        for (lvl, idx, tb, bytes) in unverified.into_iter().rev() {
            let got = v.hasher.digest(&bytes);
            let ok = match &parent {
                None => got.as_slice() == v.desc.root(),
                Some(p) => {
                    let (_, at) = location(v, ino, lvl.saturating_add(1), idx)?;
                    p.get(at..at.saturating_add(got.len)) == Some(got.as_slice())
                }
            };
            if !ok {
                return Err(Error::Verity(format!(
                    "inode {ino}: fs-verity Merkle tree block {tb} (level {lvl}) does not match {}",
                    if parent.is_some() {
                        "its parent"
                    } else {
                        "the root hash"
                    }
                )));
            }
            v.tree.insert(tb, bytes.clone(), bytes.len());
            parent = Some(bytes);
        }
        parent.ok_or_else(|| tree_error(ino, "empty path"))
    }

    fn read_tree_block(&self, inode: &Inode, v: &VerityFile, tb: u64) -> Result<Arc<[u8]>> {
        let ino = inode.ino;
        let bs = v.geo.block_size;
        let pos = tb
            .checked_mul(u64::from(bs))
            .and_then(|o| o.checked_add(v.tree_pos))
            .ok_or_else(|| tree_error(ino, "block offset"))?;
        let mut buf = vec![0u8; usize::try_from(bs).unwrap_or(0)];
        self.read_mapped(inode, pos, &mut buf)?;
        Ok(Arc::from(buf))
    }
}

/// Where the hash of block `index` of the level below `level` is.
fn location(v: &VerityFile, ino: Ino, level: usize, index: u64) -> Result<(u64, usize)> {
    v.geo
        .hash_location(level, index)
        .ok_or_else(|| tree_error(ino, "hash location"))
}

fn tree_error(ino: Ino, what: &str) -> Error {
    Error::corrupt(format!("inode {ino}: fs-verity Merkle tree {what}"), 0)
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::*;
    use crate::ext4::FallocMode;
    use crate::ext4::testutil::*;
    use crate::ext4::types::SetAttr;
    use crate::io::MemDevice;

    /// tests/verity/put-verity-file.sh: the one image builder for verity
    /// files, shared with the end-to-end tests.
    fn put_verity_file(img: &Path, name: &str, data: &Path, opts: &[&str]) -> String {
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/verity/put-verity-file.sh");
        let mut args = vec![img.to_str().unwrap(), name, data.to_str().unwrap()];
        args.extend_from_slice(opts);
        run(script.to_str().unwrap(), &args).trim().to_string()
    }

    /// One file of a test image: name, content, fsverity digest options.
    struct Spec {
        name: &'static str,
        data: Vec<u8>,
        opts: &'static [&'static str],
    }

    /// An empty filesystem of `fs_block` blocks holding `specs` as verity
    /// files, and each file's digest as `fsverity digest` prints it.
    fn image(sc: &Scratch, fs_block: u32, specs: &[Spec]) -> Option<(PathBuf, Vec<String>)> {
        if !have(&["mkfs.ext4", "debugfs", "fsverity"]) {
            return None;
        }
        let src = sc.file("src");
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("plain"), pattern(10_000, 5)).unwrap();
        let bs = fs_block.to_string();
        let img = mkfs(sc, &src, &["-b", &bs, "-O", "verity"], 32 * 1024);
        let digests = specs
            .iter()
            .map(|s| {
                let data = sc.file(&format!("{}.data", s.name));
                std::fs::write(&data, &s.data).unwrap();
                // Merkle blocks are at most the filesystem's block (as the
                // kernel requires) unless a test chooses.
                let own = format!("--block-size={}", fs_block.min(4096));
                let mut opts = s.opts.to_vec();
                if !opts.iter().any(|o| o.starts_with("--block-size")) {
                    opts.push(&own);
                }
                put_verity_file(&img, s.name, &data, &opts)
            })
            .collect();
        assert_fsck_clean(&img, "building the verity image");
        Some((img, digests))
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    fn read_all(fs: &Ext4, ino: Ino, len: usize) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; len + 100];
        let n = fs.read(ino, 0, &mut buf)?;
        buf.truncate(n);
        Ok(buf)
    }

    fn specs() -> Vec<Spec> {
        vec![
            Spec {
                name: "empty",
                data: vec![],
                opts: &[],
            },
            Spec {
                name: "one_byte",
                data: vec![0x5a],
                opts: &[],
            },
            Spec {
                name: "one_block",
                data: pattern(1024, 2),
                opts: &["--block-size=1024"],
            },
            Spec {
                name: "many_sha512_salt",
                data: pattern(300_001, 3),
                opts: &[
                    "--hash-alg=sha512",
                    "--salt=0011223344",
                    "--block-size=1024",
                ],
            },
            // 1 KiB blocks, SHA-512: 16 hashes per tree block, so 2 MiB
            // (2048 blocks) need three levels.
            Spec {
                name: "three_levels",
                data: pattern(2 << 20, 4),
                opts: &["--hash-alg=sha512", "--block-size=1024"],
            },
        ]
    }

    fn check_reads(fs_block: u32, mut extra: Vec<Spec>) {
        let sc = Scratch::new("verity");
        let mut all = specs();
        all.append(&mut extra);
        let Some((img, digests)) = image(&sc, fs_block, &all) else {
            return;
        };
        let fs = open_image(&img).unwrap();
        for (s, want) in all.iter().zip(&digests) {
            let ino = ino_of(&img, s.name);
            fs.check_open(ino, false, false, false).unwrap();
            let got = read_all(&fs, ino, s.data.len()).unwrap();
            assert!(got == s.data, "{fs_block} {}: content differs", s.name);
            // Odd-sized reads at odd offsets verify whole blocks around them.
            let mut pos = 0usize;
            let mut chunk = vec![0u8; 7777];
            while pos < s.data.len() {
                let n = fs.read(ino, pos as u64, &mut chunk).unwrap();
                assert!(
                    n > 0 && chunk[..n] == s.data[pos..pos + n],
                    "{} at {pos}",
                    s.name
                );
                pos += n;
            }
            // Verified tree blocks stay within the file's budget; the root
            // level (tree block 0) is among them once anything was read.
            let v = fs.verity_of(&fs.inode(ino).unwrap()).unwrap().unwrap();
            assert!(v.tree.used() <= TREE_CACHE_BYTES, "{}", s.name);
            if v.geo.levels > 0 {
                assert!(v.tree.get(0).is_some(), "{}: root block cached", s.name);
            }
            let d = fs.measure_verity(ino).unwrap();
            let alg = if d.algorithm == 1 { "sha256" } else { "sha512" };
            assert_eq!(&format!("{alg}:{}", hex(&d.digest)), want, "{}", s.name);
        }
        // A file without verity has no digest (ENODATA).
        assert!(matches!(
            fs.measure_verity(ino_of(&img, "plain")),
            Err(Error::NoAttribute)
        ));
    }

    #[test]
    fn reads_verify_4k_blocks() {
        check_reads(
            4096,
            vec![
                Spec {
                    name: "default_4k",
                    data: pattern(1 << 20, 6),
                    opts: &[],
                },
                // 4 KiB blocks, SHA-256: 128 hashes per tree block; 129
                // blocks and more take two levels.
                Spec {
                    name: "two_levels_4k",
                    data: pattern(129 * 4096 + 5, 7),
                    opts: &["--salt=ff"],
                },
            ],
        );
    }

    #[test]
    fn reads_verify_1k_blocks() {
        check_reads(1024, vec![]);
    }

    #[test]
    fn verity_flag_without_extents_is_corrupt() {
        // ext4_get_verity_descriptor_location: a verity file must use
        // extents. An indirect-mapped file given the flag fails its open
        // and its reads, never reads unverified.
        if !have(&["mkfs.ext4", "debugfs"]) {
            return;
        }
        let sc = Scratch::new("verity-indirect");
        let src = sc.file("src");
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("f"), pattern(10_000, 5)).unwrap();
        // (mkfs.ext4 will not make verity without extents; debugfs will.)
        let img = mkfs(&sc, &src, &["-O", "^extent,^64bit"], 8 * 1024);
        debugfs(&img, "feature verity");
        debugfs(&img, "sif f flags 0x100000");
        let fs = open_image(&img).unwrap();
        let ino = ino_of(&img, "f");
        let e = fs.check_open(ino, false, false, false).unwrap_err();
        assert!(
            e.to_string()
                .contains(&format!("inode {ino}: verity file does not use extents")),
            "{e}"
        );
        assert!(matches!(
            fs.read(ino, 0, &mut [0u8; 100]),
            Err(Error::Corrupt { .. })
        ));
    }

    #[test]
    fn tree_blocks_larger_than_fs_blocks_are_refused() {
        // fsverity_init_merkle_tree_params: a Merkle block may not exceed
        // the filesystem block (4 KiB tree blocks on a 1 KiB filesystem).
        let sc = Scratch::new("verity-big-tree");
        let spec = Spec {
            name: "f",
            data: pattern(5000, 1),
            opts: &["--block-size=4096"],
        };
        let Some((img, _)) = image(&sc, 1024, &[spec]) else {
            return;
        };
        let fs = open_image(&img).unwrap();
        let e = fs
            .check_open(ino_of(&img, "f"), false, false, false)
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("block size 2^12 outside 1024..=1024"),
            "{e}"
        );
    }

    /// The image, the file's inode, its data and the byte offset of its
    /// Merkle tree and descriptor in the image file, for corruption tests.
    struct Victim {
        _sc: Scratch,
        img: PathBuf,
        data: Vec<u8>,
    }

    fn victim(opts: &'static [&'static str]) -> Option<Victim> {
        let sc = Scratch::new("verity-bad");
        let data = pattern(200 * 4096 + 100, 9);
        let (img, _) = image(
            &sc,
            4096,
            &[Spec {
                name: "f",
                data: data.clone(),
                opts,
            }],
        )?;
        Some(Victim { _sc: sc, img, data })
    }

    /// Flips one bit of byte `off` of the file's logical block `lblk`.
    fn flip(v: &Victim, lblk: u64, off: u64) {
        let pblk = bmap(&v.img, "f", lblk);
        let b = read_byte(&v.img, 4096, pblk, off);
        patch(&v.img, 4096, pblk, off, &[b ^ 1]);
    }

    #[test]
    fn flipped_data_byte_fails_that_block_only() {
        let Some(v) = victim(&[]) else {
            return;
        };
        flip(&v, 57, 1000);
        let fs = open_image(&v.img).unwrap();
        let ino = ino_of(&v.img, "f");
        let mut buf = vec![0u8; 4096];
        let e = fs.read(ino, 57 * 4096 + 10, &mut buf[..10]).unwrap_err();
        assert!(matches!(e, Error::Verity(_)), "{e:?}");
        assert!(
            e.to_string()
                .contains(&format!("inode {ino}: data block 57")),
            "{e}"
        );
        // A read spanning it fails; the blocks around it read fine.
        assert!(matches!(
            fs.read(ino, 50 * 4096, &mut vec![0; 40960]),
            Err(Error::Verity(_))
        ));
        for b in [0u64, 56, 58, 199, 200] {
            let n = fs.read(ino, b * 4096, &mut buf).unwrap();
            let at = (b * 4096) as usize;
            assert!(buf[..n] == v.data[at..at + n], "block {b}");
        }
        // Not a filesystem error: nothing is recorded (the device is
        // read-only here, but the live superblock would say so).
        assert_eq!(fs.rw.live_sb().sb.s_error_count, 0);
    }

    #[test]
    fn flipped_tree_byte_fails() {
        let Some(v) = victim(&["--salt=01020304"]) else {
            return;
        };
        // 201 data blocks: tree block 0 is the root level, block 1 the
        // first of two level-0 blocks. Flip a hash in the second level-0
        // block (data blocks 128..200).
        let tree = metadata_lblk(v.data.len() as u64);
        flip(&v, tree + 2, 5);
        let fs = open_image(&v.img).unwrap();
        let ino = ino_of(&v.img, "f");
        let mut buf = vec![0u8; 4096];
        let e = fs.read(ino, 130 * 4096, &mut buf).unwrap_err();
        assert!(
            e.to_string()
                .contains("Merkle tree block 2 (level 0) does not match its parent"),
            "{e}"
        );
        assert!(fs.read(ino, 5 * 4096, &mut buf).is_ok());
        // The root level itself.
        flip(&v, tree, 0);
        let fs = open_image(&v.img).unwrap();
        let e = fs.read(ino, 5 * 4096, &mut buf).unwrap_err();
        assert!(
            e.to_string().contains("does not match the root hash"),
            "{e}"
        );
    }

    fn metadata_lblk(size: u64) -> u64 {
        layout::metadata_pos(size).unwrap() / 4096
    }

    #[test]
    fn hostile_descriptor_is_corrupt() {
        let Some(v) = victim(&[]) else {
            return;
        };
        let ino = ino_of(&v.img, "f");
        let tree_blocks = 3; // one root and two level-0 blocks
        let desc_lblk = metadata_lblk(v.data.len() as u64) + tree_blocks;
        let pdesc = bmap(&v.img, "f", desc_lblk);
        let good = std::fs::read(&v.img).unwrap();
        let cases: [(u64, &[u8], &str); 5] = [
            (4092, &[0xff, 0xff, 0xff, 0x7f], "limit 16384"),
            (4092, &[0x00, 0x40, 0, 0], "before the metadata"),
            (0, &[2], "unknown version 2"),
            (1, &[9], "unknown hash algorithm 9"),
            (8, &[1], "is not the file size"),
        ];
        for (off, bytes, want) in cases {
            std::fs::write(&v.img, &good).unwrap();
            patch(&v.img, 4096, pdesc, off, bytes);
            let fs = open_image(&v.img).unwrap();
            let e = fs.check_open(ino, false, false, false).unwrap_err();
            assert!(matches!(e, Error::Corrupt { .. }), "{want}: {e:?}");
            assert!(
                e.to_string().contains(&format!("inode {ino}")) && e.to_string().contains(want),
                "{e}"
            );
            assert!(fs.read(ino, 0, &mut [0u8; 10]).is_err());
        }
    }

    #[test]
    fn content_is_immutable_metadata_is_not() {
        let Some(v) = victim(&[]) else {
            return;
        };
        let dev = Arc::new(MemDevice::new(std::fs::read(&v.img).unwrap()));
        let fs = open_on(dev.clone(), false);
        assert!(!fs.is_read_only(), "a verity filesystem mounts read-write");
        let ino = ino_of(&v.img, "f");
        let eperm = |r: Result<()>| assert!(matches!(r, Err(Error::NotPermitted)), "{r:?}");
        eperm(fs.check_open(ino, true, false, false));
        eperm(fs.check_open(ino, false, false, true));
        eperm(fs.write(ino, 0, b"x").map(|_| ()));
        eperm(fs.write(ino, v.data.len() as u64, b"x").map(|_| ()));
        let size = |s| SetAttr {
            size: Some(s),
            ..Default::default()
        };
        eperm(fs.setattr(ino, size(0)).map(|_| ()));
        eperm(fs.setattr(ino, size(v.data.len() as u64)).map(|_| ()));
        eperm(fs.fallocate(ino, 0, 4096, FallocMode::default()));
        // Metadata changes as on the kernel: mode, xattrs, rename, and the
        // rest of the filesystem takes writes.
        fs.setattr(
            ino,
            SetAttr {
                mode: Some(0o600),
                ..Default::default()
            },
        )
        .unwrap();
        fs.setxattr(ino, b"user.k", b"v", Default::default())
            .unwrap();
        fs.rename(
            crate::ext4::ROOT_INO,
            b"f",
            crate::ext4::ROOT_INO,
            b"g",
            Default::default(),
        )
        .unwrap();
        let plain = fs.lookup(crate::ext4::ROOT_INO, b"plain").unwrap().ino;
        fs.write(plain, 0, &pattern(50_000, 1)).unwrap();
        let got = read_all(&fs, ino, v.data.len()).unwrap();
        assert!(got == v.data);
        fs.shutdown().unwrap();
        std::fs::write(&v.img, dev.contents()).unwrap();
        assert_fsck_clean(&v.img, "metadata changes beside a verity file");
    }
}

#[cfg(test)]
mod bench {
    use std::path::Path;
    use std::sync::Arc;
    use std::time::Instant;

    use crate::ext4::testutil::*;
    use crate::io::FdDevice;

    /// What verification costs the engine alone: the same 256 MiB read
    /// from a plain file and from a verity file (SHA-256, 4 KiB Merkle
    /// blocks) of one image, page cache warm, 128 KiB requests as FUSE
    /// sends them. Prints MiB/s (bench/README.md): cargo test -p
    /// safemount-worker --lib --release ext4::verity::bench -- --ignored --nocapture
    #[test]
    #[ignore = "benchmark: builds a 600 MiB image; prints MiB/s, checks nothing new"]
    fn verified_read_throughput() {
        if !have(&["mkfs.ext4", "debugfs", "fsverity"]) {
            return;
        }
        let sc = Scratch::new("verity-bench");
        let src = sc.file("src");
        std::fs::create_dir_all(&src).unwrap();
        let size = 256usize << 20;
        let data = pattern(size, 7);
        std::fs::write(src.join("plain"), &data).unwrap();
        let vdata = sc.file("vdata");
        std::fs::write(&vdata, &data).unwrap();
        let img = mkfs(&sc, &src, &["-O", "verity"], 600 * 1024);
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/verity/put-verity-file.sh");
        run(
            script.to_str().unwrap(),
            &[img.to_str().unwrap(), "verity", vdata.to_str().unwrap()],
        );
        let f = std::fs::File::open(&img).unwrap();
        let fs = open_on(Arc::new(FdDevice::new(f.into()).unwrap()), true);
        let mut buf = vec![0u8; 128 * 1024];
        for round in 0..3 {
            for name in ["plain", "verity"] {
                let ino = ino_of(&img, name);
                let t = Instant::now();
                let mut off = 0u64;
                loop {
                    let n = fs.read(ino, off, &mut buf).unwrap();
                    if n == 0 {
                        break;
                    }
                    off += n as u64;
                }
                assert_eq!(off, size as u64);
                eprintln!(
                    "round {round}: {name}: {:.0} MiB/s",
                    256.0 / t.elapsed().as_secs_f64()
                );
            }
        }
    }
}
