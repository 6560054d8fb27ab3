//! Orphan inodes: unlinked-but-open files (and, later, truncates that
//! span transactions) are recorded so a crash does not leak their blocks.
//! With COMPAT_ORPHAN_FILE (e2fsprogs 1.47's default) a slot of the orphan
//! file holds the inode number; without it (or when the orphan file is
//! full, as the kernel falls back) the classic list runs from
//! s_last_orphan through each inode's i_dtime.
//!
//! Orphans left by a crash are not processed at mount: `start_rw` serves
//! such a filesystem read-only and says to run e2fsck (or mount it once
//! with the kernel), which frees them.

use super::ondisk::inode::inode_csum_seed;
use super::ondisk::orphan::OrphanBlock;
use super::ondisk::superblock as sbf;
use super::{Error, Ext4, FileKind, Ino, Result, Txn};

/// Largest orphan file this engine reads (the kernel's
/// EXT4_MAX_ORPHAN_FILE_BLOCKS is 512 blocks; be generous).
const MAX_ORPHAN_FILE_BLOCKS: u64 = 2048;

impl Ext4 {
    /// The orphan file's physical blocks and its checksum seed, or None
    /// without the feature.
    fn orphan_file_blocks(&self) -> Result<Option<(Vec<u64>, Option<u32>)>> {
        if !self.sb.has_compat(sbf::COMPAT_ORPHAN_FILE) {
            return Ok(None);
        }
        let ino = self.sb.s_orphan_file_inum;
        let inode = self.inode_any(ino)?;
        let bs = u64::from(self.block_size);
        let n = inode.size / bs;
        if n > MAX_ORPHAN_FILE_BLOCKS {
            return Err(Error::corrupt(
                format!("orphan file too big ({} bytes)", inode.size),
                0,
            ));
        }
        let mut out = Vec::with_capacity(n as usize);
        for lblk in 0..n {
            match self.map_block(&inode, lblk)? {
                super::file::Mapping::Mapped { pblk, uninit, .. } if !uninit => out.push(pblk),
                _ => {
                    return Err(Error::corrupt(
                        format!("orphan file has a hole at block {lblk}"),
                        0,
                    ));
                }
            }
        }
        let seed = self
            .has_metadata_csum()
            .then(|| inode_csum_seed(self.csum_seed, ino, inode.generation));
        Ok(Some((out, seed)))
    }

    /// Whether the orphan file (if any) has no entries.
    pub(super) fn orphan_file_empty(&self) -> Result<bool> {
        let Some((blocks, seed)) = self.orphan_file_blocks()? else {
            return Ok(true);
        };
        for pblk in blocks {
            let data = self.read_block(pblk)?;
            let blk = OrphanBlock::parse(&data, pblk, seed)?;
            if blk.entries.iter().any(|&e| e != 0) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Why orphans from an earlier mount block a read-write mount, if any.
    pub(super) fn orphans_pending(&self) -> Result<Option<String>> {
        let live = self.sb.s_last_orphan;
        if live != 0 {
            return Ok(Some(format!(
                "orphan inodes left by an unclean unmount (list head {live})"
            )));
        }
        match self.orphan_file_empty() {
            Ok(true) => Ok(None),
            Ok(false) => Ok(Some(
                "orphan inodes left by an unclean unmount (in the orphan file)".into(),
            )),
            Err(e) => Ok(Some(format!("the orphan file is unreadable: {e}"))),
        }
    }

    /// Frees an unlinked inode (links_count 0) at its last close, like the
    /// kernel's ext4_evict_inode: its blocks (`free_file_blocks`), its
    /// xattr block reference (`xattr_release`), its orphan entry, then the
    /// inode itself (i_dtime set, size 0, bitmap bit cleared), in one
    /// transaction that may use the reserved pool.
    pub(crate) fn release_inode(&self, ino: Ino) -> Result<()> {
        let mut txn = self.begin()?;
        let inode = txn.inode(ino)?;
        if inode.links_count != 0 {
            return Err(Error::Invalid("release of an inode that still has links"));
        }
        txn.use_reserved_pool();
        let was_dir = inode.kind == FileKind::Directory;
        txn.orphan_remove(ino)?;
        // orphan_remove may have changed i_dtime: read the txn's copy.
        let mut inode = txn.inode(ino)?;
        self.free_file_blocks(&mut txn, &mut inode)?;
        self.xattr_release(&mut txn, &mut inode)?;
        inode.dtime = u32::try_from(self.now().secs.max(0)).unwrap_or(u32::MAX);
        inode.size = 0;
        txn.put_inode(inode);
        txn.free_inode(ino, was_dir)?;
        txn.commit()?;
        if let Ok(mut h) = self.rw.held_orphans.lock() {
            h.remove(&ino);
        }
        Ok(())
    }
}

impl Txn<'_> {
    /// Records `ino` as an orphan: a free slot of the orphan file, else
    /// the s_last_orphan list (the inode's i_dtime links to the previous
    /// head).
    pub(crate) fn orphan_add(&mut self, ino: Ino) -> Result<()> {
        let fs = self.fs();
        if let Some((blocks, seed)) = fs.orphan_file_blocks()? {
            for pblk in blocks {
                let mut blk = OrphanBlock::parse(&self.block(pblk)?, pblk, seed)?;
                if blk.entries.contains(&ino) {
                    return Ok(());
                }
                if let Some(slot) = blk.entries.iter_mut().find(|e| **e == 0) {
                    *slot = ino;
                    blk.write(self.block_mut(pblk)?, pblk, seed);
                    return Ok(());
                }
            }
            tracing::debug!("orphan file full; using the orphan list for inode {ino}");
        }
        let head = self.sb_view().s_last_orphan;
        if head == ino {
            return Ok(());
        }
        let mut inode = self.inode(ino)?;
        inode.dtime = head;
        self.put_inode(inode);
        self.sb_mut().s_last_orphan = ino;
        Ok(())
    }

    /// Removes `ino` from the orphan file or list (nothing if absent).
    pub(crate) fn orphan_remove(&mut self, ino: Ino) -> Result<()> {
        let fs = self.fs();
        if let Some((blocks, seed)) = fs.orphan_file_blocks()? {
            for pblk in blocks {
                let mut blk = OrphanBlock::parse(&self.block(pblk)?, pblk, seed)?;
                if let Some(slot) = blk.entries.iter_mut().find(|e| **e == ino) {
                    *slot = 0;
                    blk.write(self.block_mut(pblk)?, pblk, seed);
                    return Ok(());
                }
            }
        }
        let head = self.sb_view().s_last_orphan;
        if head == 0 {
            return Ok(());
        }
        let mut inode = self.inode(ino)?;
        let next = inode.dtime;
        if head == ino {
            self.sb_mut().s_last_orphan = next;
            inode.dtime = 0;
            self.put_inode(inode);
            return Ok(());
        }
        // Walk the list for the predecessor; bounded by the inode count.
        let mut cur = head;
        for _ in 0..fs.sb.s_inodes_count {
            if cur == 0 {
                return Ok(());
            }
            let mut c = self.inode(cur)?;
            if c.dtime == ino {
                c.dtime = next;
                self.put_inode(c);
                inode.dtime = 0;
                self.put_inode(inode);
                return Ok(());
            }
            cur = c.dtime;
        }
        Err(Error::corrupt("orphan list loops", 0))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::Arc;

    use super::super::alloc::tests::{RwImage, assert_fsck_clean, dumpe2fs_field};
    use super::super::ondisk::inode::S_IFREG;
    use super::super::testutil::*;
    use super::super::{Ext4, OpenOptions, ROOT_INO};
    use super::*;
    use crate::io::BlockDevice;

    fn free(fs: &Ext4) -> (u64, u32) {
        let s = fs.rw.live_sb();
        (s.sb.s_free_blocks_count, s.sb.s_free_inodes_count)
    }

    /// Unlinked-but-open files: recorded in the orphan file (or the list
    /// without it), released at last close with every block and the
    /// inode freed; e2fsck clean, counters back where they were.
    #[test]
    fn unlink_then_release() {
        if !have_mkfs() {
            return;
        }
        for args in [
            &["-b", "4096", "-g", "4096", "-O", "orphan_file"][..],
            &["-b", "1024", "-O", "orphan_file,metadata_csum_seed"],
            &[
                "-b",
                "4096",
                "-g",
                "4096",
                "-O",
                "orphan_file,^metadata_csum",
            ],
            &["-b", "4096", "-g", "4096", "-O", "^orphan_file"],
            &["-t", "ext2", "-b", "1024"],
            &["-t", "ext3", "-O", "^metadata_csum"],
        ] {
            let im = RwImage::new("orphan", args);
            let fs = im.open();
            let has_file = fs.sb().has_compat(sbf::COMPAT_ORPHAN_FILE);
            let before = free(&fs);
            let mut inos = Vec::new();
            for k in 0..3u8 {
                let name = [b'f', b'0' + k];
                let a = fs
                    .create(ROOT_INO, &name, S_IFREG | 0o644, 0, 0, 0, 0)
                    .unwrap();
                fs.write(a.ino, 0, &pattern(70_000, u64::from(k))).unwrap();
                assert_eq!(fs.unlink(ROOT_INO, &name).unwrap(), Some(a.ino));
                inos.push(a.ino);
            }
            assert_eq!(
                has_file,
                args.iter().any(|a| a.starts_with("orphan_file")),
                "{args:?}"
            );
            if has_file {
                assert!(!fs.orphan_file_empty().unwrap(), "{args:?}");
                assert_eq!(fs.rw.live_sb().sb.s_last_orphan, 0);
            } else {
                // The list runs newest first through i_dtime.
                assert_eq!(fs.rw.live_sb().sb.s_last_orphan, inos[2], "{args:?}");
                assert_eq!(fs.inode_any(inos[2]).unwrap().dtime, inos[1]);
                assert_eq!(fs.inode_any(inos[1]).unwrap().dtime, inos[0]);
                assert_eq!(fs.inode_any(inos[0]).unwrap().dtime, 0);
            }
            // Release the middle one first (list: unlink from the middle).
            for &i in &[inos[1], inos[2], inos[0]] {
                fs.release_inode(i).unwrap();
            }
            assert!(fs.orphan_file_empty().unwrap());
            assert_eq!(fs.rw.live_sb().sb.s_last_orphan, 0);
            assert_eq!(free(&fs), before, "{args:?}: everything freed");
            assert!(matches!(fs.release_inode(ROOT_INO), Err(Error::Invalid(_))));
            fs.shutdown().unwrap();
            let img = im.save();
            assert_fsck_clean(img, &format!("unlink+release on {args:?}"));
            assert_eq!(dumpe2fs_field(img, "Filesystem state"), "clean");
        }
    }

    /// Orphans left behind (a crash, or a worker that never released):
    /// the next read-write open serves read-only and says why.
    #[test]
    fn pending_orphans_make_rw_read_only() {
        if !have_mkfs() {
            return;
        }
        for args in [
            &["-b", "4096", "-g", "4096", "-O", "orphan_file"][..],
            &["-b", "4096", "-O", "^orphan_file"],
        ] {
            let im = RwImage::new("orphan-left", args);
            let fs = im.open();
            let a = fs
                .create(ROOT_INO, b"x", S_IFREG | 0o600, 0, 0, 0, 0)
                .unwrap();
            fs.unlink(ROOT_INO, b"x").unwrap();
            // Simulate a crash after a periodic write-back: no release,
            // no shutdown.
            fs.writeback().unwrap();
            drop(fs);
            let fs2 = Ext4::open(
                Arc::new(crate::io::MemDevice::new(im.dev.contents())) as Arc<dyn BlockDevice>,
                OpenOptions { read_only: false },
            )
            .unwrap();
            assert!(fs2.info().read_only, "{args:?}");
            assert!(fs2.orphans_pending().unwrap().is_some());
            let _ = a;
        }
    }
}
