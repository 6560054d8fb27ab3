//! File contents: logical-to-physical block mapping (extent trees and
//! indirect maps), data reads and SEEK_DATA/SEEK_HOLE.
//!
//! Data reads do not go through the block cache: each contiguous run of
//! mapped blocks becomes one device read straight into the caller's buffer.
//! The last extent found is remembered in the inode, so sequential reads do
//! not walk the tree again.

pub(crate) mod block_write;
pub(crate) mod extent;
pub(crate) mod indirect;
pub(crate) mod inline;
pub(crate) mod page_writeback;
pub(crate) mod write;

use std::sync::Arc;

use super::ondisk;
use super::ondisk::extent::{Extent, ExtentNode, LeafHint, NodeCtx};
use super::ondisk::inode::{EXT4_ENCRYPT_FL, EXT4_EXTENTS_FL, EXT4_INLINE_DATA_FL, Inode};
use super::{Error, Ext4, FileKind, Ino, Result, Whence, inode_flags};

/// How a run of logical blocks starting at the asked-for block is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mapping {
    /// `len` blocks at physical `pblk`; `uninit` ones read as zeros.
    Mapped { pblk: u64, len: u64, uninit: bool },
    /// `len` unmapped blocks (u64::MAX: no mapping after this point).
    Hole { len: u64 },
}

/// Most mapping runs one seek walks.
const SEEK_MAX_STEPS: u32 = 1 << 24;

impl Ext4 {
    /// Maps logical block `lblk` of `inode` (not inline) to a run.
    pub(crate) fn map_block(&self, inode: &Inode, lblk: u64) -> Result<Mapping> {
        if inode.has_flag(EXT4_EXTENTS_FL) {
            self.map_extent(inode, lblk)
        } else {
            self.map_indirect(inode, lblk, &mut |b| self.read_block(b))
        }
    }

    fn map_extent(&self, inode: &Inode, lblk: u64) -> Result<Mapping> {
        if lblk >= extent::LBLK_LIMIT {
            return Ok(Mapping::Hole { len: u64::MAX });
        }
        let (found, next) = self.find_extent(inode, lblk)?;
        Ok(match found {
            Some(e) => mapped(&e, lblk),
            None => Mapping::Hole {
                len: next.map_or(u64::MAX, |n| n.saturating_sub(lblk).max(1)),
            },
        })
    }

    /// The extent containing `lblk` if any, and the first logical block
    /// after `lblk` that may be mapped. Uses the inode's cached leaf when it
    /// covers `lblk`, else walks the tree and caches the leaf it reached.
    pub(crate) fn find_extent(
        &self,
        inode: &Inode,
        lblk: u64,
    ) -> Result<(Option<Extent>, Option<u64>)> {
        let cached = inode
            .extent_hint
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .and_then(|h| h.lookup(lblk));
        if let Some(r) = cached {
            return Ok(r);
        }
        let (r, leaf) = self.walk_extents(inode, lblk)?;
        if let Some(leaf) = leaf {
            *inode.extent_hint.lock().unwrap_or_else(|e| e.into_inner()) = Some(leaf);
        }
        Ok(r)
    }

    /// Walks the extent tree from the root for `lblk`.
    #[expect(clippy::type_complexity, reason = "private helper")]
    fn walk_extents(
        &self,
        inode: &Inode,
        lblk: u64,
    ) -> Result<((Option<Extent>, Option<u64>), Option<LeafHint>)> {
        let root = &inode.i_block[..];
        let depth = ondisk::extent::header_depth(root);
        if depth > ondisk::extent::MAX_DEPTH {
            return Err(Error::corrupt(
                format!("inode {}: extent tree depth {depth} too large", inode.ino),
                0,
            ));
        }
        let seed = self
            .has_metadata_csum()
            .then(|| self.inode_csum_seed(inode));
        let mut ctx = NodeCtx {
            ino: inode.ino,
            block: None,
            depth,
            parent_lblk: None,
            first_block: self.first_data_block(),
            end_block: self.sb().s_blocks_count,
            csum_seed: seed,
        };
        let mut holder: Arc<[u8]>;
        let mut node = ondisk::extent::parse_node(root, &ctx)?;
        let mut start: u64 = 0;
        let mut bound: Option<u64> = None;
        // Depth strictly decreases per level (parse_node checks it), so this
        // loop runs at most MAX_DEPTH + 1 times.
        for _ in 0..=ondisk::extent::MAX_DEPTH {
            match node {
                ExtentNode::Leaf(exts) => {
                    let leaf = LeafHint {
                        extents: Arc::from(exts),
                        start,
                        end: bound,
                    };
                    let r = leaf.lookup(lblk).unwrap_or((None, bound));
                    return Ok((r, Some(leaf)));
                }
                ExtentNode::Index(idx) => {
                    let pos = idx.iter().rposition(|i| u64::from(i.lblk) <= lblk);
                    let Some(pos) = pos else {
                        return Ok(((None, idx.first().map(|i| u64::from(i.lblk))), None));
                    };
                    if let Some(n) = idx.get(pos.saturating_add(1)) {
                        bound = Some(u64::from(n.lblk));
                    }
                    let Some(child) = idx.get(pos).copied() else {
                        return Err(Error::corrupt(
                            format!("inode {}: extent index", inode.ino),
                            ctx.block.unwrap_or_else(|| self.inode_block(inode.ino)),
                        ));
                    };
                    start = u64::from(child.lblk);
                    holder = self.read_block(child.leaf)?;
                    ctx.block = Some(child.leaf);
                    ctx.depth = ctx.depth.saturating_sub(1);
                    ctx.parent_lblk = Some(child.lblk);
                    node = ondisk::extent::parse_node(&holder, &ctx)?;
                }
            }
        }
        Err(Error::corrupt(
            format!("inode {}: extent tree too deep", inode.ino),
            self.inode_block(inode.ino),
        ))
    }

    /// Logical block `lblk` of a file or directory, through the block cache.
    /// None for a hole or an unwritten extent. For inline-data inodes, block
    /// 0 is the inline content zero-padded to the block size.
    pub(crate) fn read_file_block(&self, inode: &Inode, lblk: u64) -> Result<Option<Arc<[u8]>>> {
        if inode.has_flag(EXT4_INLINE_DATA_FL) {
            if lblk != 0 {
                return Ok(None);
            }
            let mut data = self.inline_content(inode)?;
            data.resize(self.block_size() as usize, 0);
            return Ok(Some(Arc::from(data)));
        }
        match self.map_block(inode, lblk)? {
            Mapping::Mapped {
                pblk,
                uninit: false,
                ..
            } => Ok(Some(self.read_block(pblk)?)),
            _ => Ok(None),
        }
    }

    /// Inline content of an inline-data inode (i_block plus the
    /// "system.data" xattr), from the xattr module.
    fn inline_content(&self, inode: &Inode) -> Result<Vec<u8>> {
        self.inline_data(inode)
    }

    /// Reads file content at `offset` into `buf`: any storage (extents,
    /// indirect, inline), holes and unwritten extents as zeros, bounded by
    /// i_size. Returns the number of bytes read (0 at or past EOF).
    pub(crate) fn read_data(&self, inode: &Inode, offset: u64, buf: &mut [u8]) -> Result<usize> {
        if offset >= inode.size || buf.is_empty() {
            return Ok(0);
        }
        let want = usize::try_from(inode.size.saturating_sub(offset).min(buf.len() as u64))
            .unwrap_or(buf.len());
        let buf = buf.get_mut(..want).unwrap_or(&mut []);
        if inode.has_flag(EXT4_ENCRYPT_FL) && inode.kind == FileKind::RegularFile {
            return Err(Error::NoKey);
        }
        if inode_flags::is_verity(inode) && inode.kind == FileKind::RegularFile {
            // Before the inline case: a verity file must use extents, and
            // fails (Corrupt) if it claims inline data.
            self.read_verified(inode, offset, buf)?;
            return Ok(buf.len());
        }
        if inode.has_flag(EXT4_INLINE_DATA_FL) {
            let data = self.inline_content(inode)?;
            let start = usize::try_from(offset).unwrap_or(usize::MAX);
            let src = data.get(start..).unwrap_or(&[]);
            let n = src.len().min(buf.len());
            buf.get_mut(..n)
                .unwrap_or(&mut [])
                .copy_from_slice(src.get(..n).unwrap_or(&[]));
            // Content shorter than i_size reads as zeros.
            buf.get_mut(n..).unwrap_or(&mut []).fill(0);
            return Ok(buf.len());
        }
        self.read_mapped(inode, offset, buf)?;
        Ok(buf.len())
    }

    /// Fills `buf` with the bytes of `inode` (extents or indirect map, not
    /// inline) from `offset` on, holes and unwritten extents as zeros,
    /// whatever i_size says (fs-verity metadata lies past it).
    pub(crate) fn read_mapped(&self, inode: &Inode, offset: u64, buf: &mut [u8]) -> Result<()> {
        let bs = u64::from(self.block_size());
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset.saturating_add(done as u64);
            let lblk = pos.checked_div(bs).unwrap_or(0);
            let in_block = pos.checked_rem(bs).unwrap_or(0);
            let map = self.map_block(inode, lblk)?;
            let run_blocks = match map {
                Mapping::Mapped { len, .. } | Mapping::Hole { len } => len,
            };
            let run_bytes = run_blocks.saturating_mul(bs).saturating_sub(in_block);
            let left = buf.len().saturating_sub(done);
            let n = usize::try_from(run_bytes.min(left as u64)).unwrap_or(left);
            let dst = buf.get_mut(done..done.saturating_add(n)).unwrap_or(&mut []);
            match map {
                Mapping::Mapped {
                    pblk,
                    uninit: false,
                    ..
                } => {
                    self.read_blocks_direct(pblk, in_block, dst)?;
                }
                _ => dst.fill(0),
            }
            if n == 0 {
                // Only at the end of the logical block range.
                buf.get_mut(done..).unwrap_or(&mut []).fill(0);
                break;
            }
            done = done.saturating_add(n);
        }
        Ok(())
    }

    /// The byte after the last block the extent tree maps (None: no
    /// extents), as ext4_find_extent(EXT_MAX_BLOCKS - 1) finds it.
    pub(crate) fn mapped_end(&self, inode: &Inode) -> Result<Option<u64>> {
        let (_, leaf) = self.walk_extents(inode, extent::LBLK_LIMIT.saturating_sub(2))?;
        let last = leaf.and_then(|l| l.extents.last().copied());
        Ok(last.map(|e| {
            u64::from(e.lblk)
                .saturating_add(u64::from(e.len))
                .saturating_mul(u64::from(self.block_size()))
        }))
    }

    /// read(2) on inode `ino`. The inode snapshot, its block map and the
    /// data reads all happen under the free gate's shared side, so a
    /// concurrent truncate, punch or unlink cannot free (and another file
    /// reuse) a block between its mapping and its read.
    pub fn read(&self, ino: Ino, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let _gate = self.rw.free_gate.read().unwrap_or_else(|e| e.into_inner());
        let inode = self.inode(ino)?;
        if inode.kind == FileKind::Directory {
            return Err(Error::IsDir);
        }
        self.read_data(&inode, offset, buf)
    }

    /// lseek(2) SEEK_DATA / SEEK_HOLE from the block maps. Unwritten extents
    /// count as holes (the kernel's on-disk answer). At or past EOF, or no
    /// data after `offset`: [`Error::Nxio`].
    pub fn seek(&self, ino: Ino, offset: u64, whence: Whence) -> Result<u64> {
        let inode = self.inode(ino)?;
        let size = inode.size;
        if offset >= size {
            return Err(Error::Nxio);
        }
        if inode.has_flag(EXT4_INLINE_DATA_FL) {
            return Ok(match whence {
                Whence::Data => offset,
                Whence::Hole => size,
            });
        }
        let bs = u64::from(self.block_size());
        let end_blk = size.div_ceil(bs);
        let mut lblk = offset.checked_div(bs).unwrap_or(0);
        // Each step skips a whole run; the cap stops a hostile map from
        // pinning a thread (2^24 runs is far beyond real fragmentation).
        let mut steps = 0u32;
        while lblk < end_blk {
            steps = steps.saturating_add(1);
            if steps > SEEK_MAX_STEPS {
                return Err(Error::corrupt(
                    format!("inode {ino}: too many block runs to seek through"),
                    0,
                ));
            }
            let map = self.map_block(&inode, lblk)?;
            let (is_data, len) = match map {
                Mapping::Mapped { len, uninit, .. } => (!uninit, len),
                Mapping::Hole { len } => (false, len),
            };
            let here = lblk.saturating_mul(bs).max(offset);
            match whence {
                Whence::Data if is_data => return Ok(here),
                Whence::Hole if !is_data => return Ok(here.min(size)),
                _ => {}
            }
            lblk = lblk.saturating_add(len.max(1));
        }
        match whence {
            Whence::Data => Err(Error::Nxio),
            Whence::Hole => Ok(size),
        }
    }
}

fn mapped(e: &Extent, lblk: u64) -> Mapping {
    let skip = lblk.saturating_sub(u64::from(e.lblk));
    Mapping::Mapped {
        pblk: e.pblk.saturating_add(skip),
        len: u64::from(e.len).saturating_sub(skip),
        uninit: e.uninit,
    }
}

#[cfg(test)]
mod read_race_tests;

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::ext4::testutil::*;
    use crate::ext4::util::le32;

    /// Files every image gets: (name, content, holes at) built in `src`.
    struct Tree {
        files: Vec<(String, Vec<u8>)>,
    }

    /// Writes a sparse file: `chunks` of (offset, bytes), final size `size`.
    fn sparse(path: &Path, size: u64, chunks: &[(u64, Vec<u8>)]) -> Vec<u8> {
        use std::os::unix::fs::FileExt;
        let f = std::fs::File::create(path).unwrap();
        f.set_len(size).unwrap();
        let mut expect = vec![0u8; size as usize];
        for (off, data) in chunks {
            f.write_all_at(data, *off).unwrap();
            expect[*off as usize..*off as usize + data.len()].copy_from_slice(data);
        }
        expect
    }

    fn build_tree(src: &Path, block: u64) -> Tree {
        let mut files = Vec::new();
        let mut add = |name: &str, data: Vec<u8>| {
            std::fs::write(src.join(name), &data).unwrap();
            files.push((name.to_string(), data));
        };
        add("empty", vec![]);
        add("small", b"hello, ext4\n".to_vec());
        add("big", pattern(3 * 1024 * 1024 + 123, 1));
        let s = sparse(
            &src.join("sparse"),
            5 * 1024 * 1024,
            &[
                (0, pattern(100, 2)),
                (2 * 1024 * 1024 + 7, pattern(9000, 3)),
            ],
        );
        files.push(("sparse".into(), s));
        // Data in every other block: one extent per data block, deep trees.
        let n = 2400u64;
        let chunks: Vec<(u64, Vec<u8>)> = (0..n)
            .map(|i| (2 * i * block, pattern(block as usize, 100 + i)))
            .collect();
        let s = sparse(&src.join("frag"), 2 * n * block - block, &chunks);
        files.push(("frag".into(), s));
        // Ends in a hole.
        let s = sparse(
            &src.join("tailhole"),
            1024 * 1024,
            &[(4096, pattern(10, 4))],
        );
        files.push(("tailhole".into(), s));
        Tree { files }
    }

    fn check_image(
        args: &[&str],
        block: u64,
        size_kib: u64,
    ) -> Option<(Ext4, std::path::PathBuf, Scratch)> {
        if !have_mkfs() {
            return None;
        }
        let sc = Scratch::new("img");
        let src = sc.path().join("src");
        std::fs::create_dir(&src).unwrap();
        let tree = build_tree(&src, block);
        let img = mkfs(&sc, &src, args, size_kib);
        let fs = open_image(&img).unwrap_or_else(|e| panic!("open {args:?}: {e}"));
        assert!(
            fs.groups.iter().all(|g| g.csum_ok),
            "{args:?}: descriptor checksums"
        );
        for (name, data) in &tree.files {
            let ino = ino_of(&img, name);
            let a = fs.getattr(ino).unwrap();
            assert_eq!(a.size, data.len() as u64, "{args:?} {name}");
            assert_eq!(a.kind, FileKind::RegularFile);
            // Whole read, then odd-sized sequential reads.
            let mut buf = vec![0xAAu8; data.len() + 100];
            let n = fs.read(ino, 0, &mut buf).unwrap();
            assert_eq!(n, data.len(), "{args:?} {name}");
            assert!(buf[..n] == data[..], "{args:?} {name}: content differs");
            let mut pos = 0usize;
            let mut chunk = vec![0u8; 77777];
            while pos < data.len() {
                let n = fs.read(ino, pos as u64, &mut chunk).unwrap();
                assert!(n > 0);
                assert!(chunk[..n] == data[pos..pos + n], "{args:?} {name} at {pos}");
                pos += n;
            }
            assert_eq!(fs.read(ino, data.len() as u64, &mut chunk).unwrap(), 0);
            // SEEK_DATA/SEEK_HOLE agree with a block-granular scan.
            check_seek(&fs, ino, data, fs.block_size() as u64, name);
        }
        Some((fs, img, sc))
    }

    /// Every data block holds non-zero bytes in these fixtures, so a block
    /// is data exactly when it has a non-zero byte.
    fn check_seek(fs: &Ext4, ino: Ino, data: &[u8], bs: u64, name: &str) {
        let size = data.len() as u64;
        if size == 0 {
            assert!(matches!(fs.seek(ino, 0, Whence::Data), Err(Error::Nxio)));
            return;
        }
        let is_data = |b: u64| {
            let s = (b * bs) as usize;
            let e = ((b + 1) * bs).min(size) as usize;
            data[s..e].iter().any(|&x| x != 0)
        };
        let nblocks = size.div_ceil(bs);
        for off in [0, 1, bs, 3 * bs + 5, size / 2, size - 1]
            .into_iter()
            .filter(|&o| o < size)
        {
            let b0 = off / bs;
            let want_data = (b0..nblocks)
                .find(|&b| is_data(b))
                .map(|b| (b * bs).max(off));
            let got = fs.seek(ino, off, Whence::Data);
            match want_data {
                Some(w) => assert_eq!(got.unwrap(), w, "{name} SEEK_DATA {off}"),
                None => assert!(
                    matches!(got, Err(Error::Nxio)),
                    "{name} SEEK_DATA {off}: {got:?}"
                ),
            }
            let want_hole = (b0..nblocks)
                .find(|&b| !is_data(b))
                .map_or(size, |b| (b * bs).max(off).min(size));
            assert_eq!(
                fs.seek(ino, off, Whence::Hole).unwrap(),
                want_hole,
                "{name} SEEK_HOLE {off}"
            );
        }
        assert!(matches!(fs.seek(ino, size, Whence::Hole), Err(Error::Nxio)));
    }

    #[test]
    fn ext4_default() {
        let Some((fs, img, _sc)) = check_image(&[], 4096, 64 * 1024) else {
            return;
        };
        // The fragmented file really has a multi-level tree.
        let ino = ino_of(&img, "frag");
        let inode = fs.inode(ino).unwrap();
        assert!(inode.has_flag(EXT4_EXTENTS_FL));
        assert!(ondisk::extent::header_depth(&inode.i_block) >= 1);
        assert_eq!(fs.info().fs_type, "ext4");
        assert!(fs.info().features.iter().any(|f| f == "metadata_csum"));
    }

    #[test]
    fn ext4_1k_deep_tree() {
        let Some((fs, img, _sc)) = check_image(&["-b", "1024"], 1024, 32 * 1024) else {
            return;
        };
        let inode = fs.inode(ino_of(&img, "frag")).unwrap();
        assert_eq!(
            ondisk::extent::header_depth(&inode.i_block),
            2,
            "2400 extents in 1k blocks need depth 2"
        );
    }

    #[test]
    fn ext4_no_csum_128_inodes_32bit() {
        check_image(
            &["-O", "^metadata_csum,^64bit", "-I", "128"],
            4096,
            64 * 1024,
        );
    }

    #[test]
    fn ext2_and_ext3_indirect() {
        for t in ["ext2", "ext3"] {
            let Some((fs, img, _sc)) = check_image(&["-t", t, "-b", "1024"], 1024, 32 * 1024)
            else {
                return;
            };
            let inode = fs.inode(ino_of(&img, "big")).unwrap();
            assert!(!inode.has_flag(EXT4_EXTENTS_FL));
            assert_eq!(fs.info().fs_type, t);
        }
    }

    #[test]
    fn triple_indirect() {
        if !have_mkfs() {
            return;
        }
        let sc = Scratch::new("tind");
        let src = sc.path().join("src");
        std::fs::create_dir(&src).unwrap();
        // 1 KiB blocks: triple indirect starts at block 12 + 256 + 65536.
        let off = (12 + 256 + 65536 + 1000) * 1024u64;
        let data = sparse(
            &src.join("f"),
            off + 5000,
            &[(5, pattern(10, 9)), (off, pattern(5000, 8))],
        );
        let img = mkfs(&sc, &src, &["-t", "ext2", "-b", "1024"], 8 * 1024);
        let fs = open_image(&img).unwrap();
        let ino = ino_of(&img, "f");
        let mut buf = vec![0u8; 5000];
        assert_eq!(fs.read(ino, off, &mut buf).unwrap(), 5000);
        assert!(buf[..] == data[off as usize..]);
        assert_eq!(fs.seek(ino, 1024, Whence::Data).unwrap(), off);
        assert_eq!(fs.seek(ino, 0, Whence::Hole).unwrap(), 1024);
        let mut all = vec![0u8; data.len()];
        assert_eq!(fs.read(ino, 0, &mut all).unwrap(), data.len());
        assert!(all == data);
    }

    #[test]
    fn bigalloc_meta_bg() {
        check_image(&["-O", "bigalloc", "-C", "16384"], 4096, 64 * 1024);
        check_image(&["-O", "meta_bg,^resize_inode"], 4096, 64 * 1024);
    }

    #[test]
    fn inline_data_small_files() {
        if !have_mkfs() {
            return;
        }
        let sc = Scratch::new("inline");
        let src = sc.path().join("src");
        std::fs::create_dir(&src).unwrap();
        std::fs::write(src.join("tiny"), b"tiny file").unwrap();
        std::fs::write(src.join("medium"), pattern(100, 77)).unwrap();
        let img = mkfs(&sc, &src, &["-O", "inline_data"], 8 * 1024);
        let fs = open_image(&img).unwrap();
        let ino = ino_of(&img, "tiny");
        assert!(fs.inode(ino).unwrap().has_flag(EXT4_INLINE_DATA_FL));
        let mut buf = [0u8; 64];
        assert_eq!(fs.read(ino, 0, &mut buf).unwrap(), 9);
        assert_eq!(&buf[..9], b"tiny file");
        assert_eq!(fs.read(ino, 5, &mut buf).unwrap(), 4);
        assert_eq!(&buf[..4], b"file");
        assert_eq!(fs.seek(ino, 2, Whence::Data).unwrap(), 2);
        assert_eq!(fs.seek(ino, 2, Whence::Hole).unwrap(), 9);
        // Past 60 bytes the content continues in the system.data xattr.
        let ino = ino_of(&img, "medium");
        assert!(fs.inode(ino).unwrap().has_flag(EXT4_INLINE_DATA_FL));
        let want = pattern(100, 77);
        let mut buf = [0u8; 200];
        assert_eq!(fs.read(ino, 0, &mut buf).unwrap(), 100);
        assert_eq!(&buf[..100], &want[..]);
        assert_eq!(fs.read(ino, 55, &mut buf).unwrap(), 45);
        assert_eq!(&buf[..45], &want[55..]);
    }

    #[test]
    fn directories_read_as_isdir_and_blocks() {
        let Some((fs, _img, _sc)) = check_image(&["-b", "4096"], 4096, 64 * 1024) else {
            return;
        };
        let mut buf = [0u8; 10];
        assert!(matches!(
            fs.read(crate::ext4::ROOT_INO, 0, &mut buf),
            Err(Error::IsDir)
        ));
        let root = fs.inode(crate::ext4::ROOT_INO).unwrap();
        let b = fs.read_file_block(&root, 0).unwrap().unwrap();
        // First entry of the root directory is "." pointing at inode 2.
        assert_eq!(le32(&b, 0), 2);
        assert_eq!(&b[8..9], b".");
        assert!(fs.read_file_block(&root, 1000).unwrap().is_none());
    }
}

#[cfg(test)]
mod bench {
    use std::sync::Arc;
    use std::time::Instant;

    use crate::ext4::testutil::*;
    use crate::io::FdDevice;

    /// Sequential read throughput through the engine vs. a plain read of
    /// the same bytes from the image file (page cache warm for both).
    /// Prints MiB/s for both (bench/README.md): cargo test -p
    /// safemount-worker --lib --release ext4::file::bench -- --ignored --nocapture
    #[test]
    #[ignore = "benchmark: builds a 1 GiB image; prints MiB/s, checks nothing new"]
    fn sequential_read_throughput() {
        if !have_mkfs() {
            return;
        }
        let sc = Scratch::new("bench");
        let src = sc.path().join("src");
        std::fs::create_dir(&src).unwrap();
        let size = 1usize << 30;
        std::fs::write(src.join("big"), pattern(size, 42)).unwrap();
        let img = mkfs(&sc, &src, &["-b", "4096"], 1200 * 1024);
        let ino = ino_of(&img, "big");
        let f = std::fs::File::open(&img).unwrap();
        let fs = open_on(Arc::new(FdDevice::new(f.into()).unwrap()), true);
        for req in [128 * 1024usize, 1024 * 1024] {
            let mut buf = vec![0u8; req];
            for round in 0..2 {
                let t = Instant::now();
                let mut off = 0u64;
                loop {
                    let n = fs.read(ino, off, &mut buf).unwrap();
                    if n == 0 {
                        break;
                    }
                    off += n as u64;
                }
                let engine = t.elapsed();
                assert_eq!(off, size as u64);
                let t = Instant::now();
                let raw = std::fs::File::open(src.join("big")).unwrap();
                let mut off = 0u64;
                use std::os::unix::fs::FileExt;
                loop {
                    let n = raw.read_at(&mut buf, off).unwrap();
                    if n == 0 {
                        break;
                    }
                    off += n as u64;
                }
                let plain = t.elapsed();
                eprintln!(
                    "req {req}: round {round}: engine {:.0} MiB/s, plain pread of the source {:.0} MiB/s",
                    1024.0 / engine.as_secs_f64(),
                    1024.0 / plain.as_secs_f64()
                );
            }
        }
    }
}
