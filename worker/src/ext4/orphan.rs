//! Orphan inodes: unlinked-but-open files (and, later, truncates that
//! span transactions) are recorded so a crash does not leak their blocks.
//! With COMPAT_ORPHAN_FILE (e2fsprogs 1.47's default) a slot of the orphan
//! file holds the inode number; without it (or when the orphan file is
//! full, as the kernel falls back) the classic list runs from
//! s_last_orphan through each inode's i_dtime.
//!
//! Orphans left by a crash are processed at a read-write mount, as the
//! kernel's ext4_orphan_cleanup does: `pending_orphans` collects and
//! checks them before anything is written (a list that loops, a number
//! outside the valid range, a reserved or free inode: the mount is served
//! read-only instead), then `cleanup_orphans` frees each unlinked one
//! (`release_inode`) and truncates each linked one to its i_size (an
//! interrupted truncate), one transaction per inode. A read-only mount
//! leaves them as they are.

use std::collections::HashSet;

use super::ondisk::bitmap;
use super::ondisk::group_desc::BG_INODE_UNINIT;
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
        let n = inode.size.checked_div(bs).unwrap_or(0);
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

    /// Whether inode `ino` is marked in use in its group's inode bitmap
    /// (with the live descriptor once the read-write mount started).
    pub(crate) fn inode_in_bitmap(&self, ino: Ino) -> Result<bool> {
        let (g, bit) = self.inode_group_index(ino)?;
        let bit = bit as usize;
        let live = self
            .rw
            .gdt
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(g as usize)
            .cloned();
        let d = match live {
            Some(d) => d,
            None => self.group(g)?.clone(),
        };
        if self.has_group_desc_csum() && d.bg_flags & BG_INODE_UNINIT != 0 {
            return Ok(false);
        }
        let b = self.read_block(d.bg_inode_bitmap)?;
        if self.has_metadata_csum() {
            let n = self.sb.s_inodes_per_group as usize / 8;
            let full = self.sb.s_desc_size >= sbf::MIN_DESC_SIZE_64BIT;
            if !bitmap::csum_ok(self.csum_seed, &b, n, d.bg_inode_bitmap_csum, full) {
                return Err(Error::corrupt(
                    format!("inode bitmap of group {g}: checksum mismatch"),
                    d.bg_inode_bitmap,
                ));
            }
        }
        Ok(bitmap::test(&b, bit))
    }

    /// Checks that `ino` may be an orphan (ext4_orphan_get): a number in
    /// s_first_ino..=s_inodes_count, not the journal or the orphan file,
    /// in use in the inode bitmap, and readable. Returns its next pointer
    /// (i_dtime).
    fn check_orphan(&self, ino: Ino) -> Result<u32> {
        let max = self.sb.s_inodes_count;
        let first = self.sb.s_first_ino;
        if ino < first || ino > max {
            return Err(Error::corrupt(
                format!("bad orphan inode {ino} (valid: {first}..={max})"),
                0,
            ));
        }
        let special = [self.sb.s_journal_inum, self.sb.s_orphan_file_inum];
        if special.contains(&ino) {
            return Err(Error::corrupt(
                format!("bad orphan inode {ino} (a special inode)"),
                0,
            ));
        }
        if !self.inode_in_bitmap(ino)? {
            return Err(Error::corrupt(
                format!("bad orphan inode {ino} (not in use)"),
                0,
            ));
        }
        Ok(self.inode_any(ino)?.dtime)
    }

    /// The orphans an earlier mount left, checked, before anything is
    /// written: the classic list from s_last_orphan (head first), then the
    /// orphan file's entries. A list that loops, a number that appears
    /// twice, or a bad orphan inode (`check_orphan`) is Corrupt. The walk
    /// is bounded: every listed number is distinct and in range, so there
    /// are at most s_inodes_count of them.
    pub(super) fn pending_orphans(&self) -> Result<Vec<Ino>> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        let mut cur = self.rw.live_sb().sb.s_last_orphan;
        while cur != 0 {
            if !seen.insert(cur) {
                return Err(Error::corrupt(
                    format!("the orphan list loops (inode {cur} again)"),
                    0,
                ));
            }
            if out.len() >= self.sb.s_inodes_count as usize {
                return Err(Error::corrupt("the orphan list is too long", 0));
            }
            out.push(cur);
            cur = self.check_orphan(cur)?;
        }
        if let Some((blocks, seed)) = self.orphan_file_blocks()? {
            for pblk in blocks {
                let data = self.read_block(pblk)?;
                let blk = OrphanBlock::parse(&data, pblk, seed)?;
                for ino in blk.entries.into_iter().filter(|&e| e != 0) {
                    if !seen.insert(ino) {
                        return Err(Error::corrupt(
                            format!("orphan inode {ino} is recorded twice"),
                            pblk,
                        ));
                    }
                    self.check_orphan(ino)?;
                    out.push(ino);
                }
            }
        }
        Ok(out)
    }

    /// Processes the orphans `pending_orphans` found (ext4_orphan_cleanup,
    /// on a started read-write mount): links_count 0 frees the inode
    /// (`release_inode`), otherwise the inode was being truncated and loses
    /// every block past i_size (`truncate_orphan`); each leaves the list or
    /// the orphan file. An error stops the cleanup and turns the mount
    /// read-only (the superblock then records the error). Returns
    /// (freed, truncated).
    pub(super) fn cleanup_orphans(&self, orphans: &[Ino]) -> (usize, usize) {
        let (mut freed, mut truncated) = (0, 0);
        for &ino in orphans {
            let r = self.inode_any(ino).and_then(|inode| {
                if inode.links_count == 0 {
                    self.release_inode(ino)
                        .map(|()| freed = usize::saturating_add(freed, 1))
                } else {
                    self.truncate_orphan(ino)
                        .map(|()| truncated = usize::saturating_add(truncated, 1))
                }
            });
            if let Err(e) = r {
                // The fault's own block when it has one, else the inode's.
                let block = match &e {
                    Error::Corrupt { block, .. } if *block != 0 => *block,
                    _ => self.inode_block(ino),
                };
                let e =
                    Error::corrupt(format!("orphan cleanup stopped at inode {ino}: {e}"), block);
                self.fs_error("orphan cleanup", ino, &e);
                // Whatever errors= says: a list the cleanup could not finish
                // is not written past (stricter than the kernel).
                self.rw.faults.turn_read_only(e.to_string());
                break;
            }
        }
        (freed, truncated)
    }

    /// An orphan with links: a truncate that a crash interrupted
    /// (ext4_truncate from ext4_orphan_cleanup). Regular files,
    /// directories and symlinks lose the blocks past i_size; every kind
    /// leaves the orphan list or file.
    fn truncate_orphan(&self, ino: Ino) -> Result<()> {
        let mut txn = self.begin()?;
        txn.use_reserved_pool();
        txn.orphan_remove(ino)?;
        let mut inode = txn.inode(ino)?;
        if matches!(
            inode.kind,
            FileKind::RegularFile | FileKind::Directory | FileKind::Symlink
        ) {
            let size = inode.size;
            self.truncate_in(&mut txn, &mut inode, size)?;
        }
        txn.put_inode(inode);
        txn.commit()
    }

    /// Frees an unlinked inode (links_count 0) at its last close, like the
    /// kernel's ext4_evict_inode: its blocks (`free_file_blocks`), its
    /// xattr block reference (`xattr_release`), its orphan entry, then the
    /// inode itself (i_dtime set, size 0, bitmap bit cleared), in one
    /// transaction that may use the reserved pool.
    pub(crate) fn release_inode(&self, ino: Ino) -> Result<()> {
        let _content = self.rw.content_locks.lock(ino);
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
        self.evicted(ino);
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
        let mut prev = fs.rw.orphan_prev.lock().unwrap_or_else(|e| e.into_inner());
        prev.insert(ino, 0);
        if head != 0 {
            prev.insert(head, ino);
        }
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
            self.orphan_unlinked(ino, 0, next);
            return Ok(());
        }
        // The predecessor: the hint if it still links here, else a walk
        // of the list (bounded by the inode count) that notes the links
        // it passes.
        let hint = fs
            .rw
            .orphan_prev
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&ino)
            .copied()
            .filter(|&p| p != 0);
        if let Some(p) = hint {
            let mut c = self.inode(p)?;
            if c.dtime == ino {
                c.dtime = next;
                self.put_inode(c);
                inode.dtime = 0;
                self.put_inode(inode);
                self.orphan_unlinked(ino, p, next);
                return Ok(());
            }
        }
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
                self.orphan_unlinked(ino, cur, next);
                return Ok(());
            }
            if c.dtime != 0 {
                fs.rw
                    .orphan_prev
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(c.dtime, cur);
            }
            cur = c.dtime;
        }
        Err(Error::corrupt("orphan list loops", 0))
    }

    /// `ino` left the orphan list from between `prev` (0: the head) and
    /// `next` (0: the end): the hints follow.
    fn orphan_unlinked(&self, ino: Ino, prev: Ino, next: Ino) {
        let mut hints = self
            .fs()
            .rw
            .orphan_prev
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        hints.remove(&ino);
        if next != 0 {
            hints.insert(next, prev);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::Arc;

    use super::super::ondisk::inode::S_IFREG;
    use super::super::testutil::*;
    use super::super::{Ext4, ROOT_INO};
    use super::*;
    use crate::ext4::testutil::{RwImage, assert_fsck_clean, dumpe2fs_field};

    fn free(fs: &Ext4) -> (u64, u32) {
        let s = fs.rw.live_sb();
        (s.sb.s_free_blocks_count, s.sb.s_free_inodes_count)
    }

    /// Unlinked-but-open files: recorded in the orphan file (or the list
    /// without it), released at last close with every block and the
    /// inode freed; e2fsck clean, counters back where they were.
    /// The orphans on the list (no orphan file), head first.
    fn orphan_list(fs: &Ext4) -> Vec<Ino> {
        let mut out = Vec::new();
        let mut cur = fs.rw.live_sb().sb.s_last_orphan;
        while cur != 0 {
            out.push(cur);
            cur = fs.inode_any(cur).unwrap().dtime;
        }
        out
    }

    /// 120 orphans on the list (no orphan file), released in a scrambled
    /// order: each release takes its inode out from between the right
    /// neighbours (from the hints, checked, or a walk), the list holds
    /// exactly the rest after every step, and e2fsck is clean. A hint left
    /// by a transaction that was dropped fails its check and is not used.
    #[test]
    fn orphan_list_release_in_any_order() {
        if !have_mkfs() {
            return;
        }
        let im = RwImage::new(
            "orphans",
            &["-b", "4096", "-g", "4096", "-O", "^orphan_file"],
        );
        let fs = im.open();
        let mut live: Vec<Ino> = Vec::new();
        for k in 0..120u32 {
            let name = format!("o{k}");
            let a = fs
                .create(ROOT_INO, name.as_bytes(), S_IFREG | 0o644, 0, 0, 0, 0)
                .unwrap();
            assert_eq!(fs.unlink(ROOT_INO, name.as_bytes()).unwrap(), Some(a.ino));
            live.push(a.ino);
        }
        live.reverse();
        assert_eq!(orphan_list(&fs), live, "newest first");
        // Dropped transactions leave hints that no longer hold: `x` before
        // the head, and the 6th orphan's successor linked from the 5th.
        let x = fs
            .create(ROOT_INO, b"x", S_IFREG | 0o644, 0, 0, 0, 0)
            .unwrap()
            .ino;
        {
            let mut txn = fs.begin().unwrap();
            txn.orphan_add(x).unwrap();
        }
        {
            let mut txn = fs.begin().unwrap();
            txn.orphan_remove(live[5]).unwrap();
        }
        assert_eq!(orphan_list(&fs), live);
        // The 7th first: its hint names the 5th, which links the 6th.
        let mut order: Vec<Ino> = live.clone();
        order.sort_by_key(|i| (i.wrapping_mul(2_654_435_761)) % 1009);
        order.retain(|&i| i != live[6]);
        order.insert(0, live[6]);
        for ino in order {
            fs.release_inode(ino).unwrap();
            live.retain(|&i| i != ino);
            assert_eq!(orphan_list(&fs), live, "after releasing {ino}");
        }
        fs.shutdown().unwrap();
        drop(fs);
        assert_fsck_clean(im.save(), "orphans released in any order");
    }

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
    /// the next read-write open frees them; the counters come back to
    /// where they were before the file was created, e2fsck is clean.
    #[test]
    fn engine_orphans_cleaned_at_next_rw_open() {
        if !have_mkfs() {
            return;
        }
        for args in [
            &["-b", "4096", "-g", "4096", "-O", "orphan_file"][..],
            &["-b", "4096", "-O", "^orphan_file"],
            &["-t", "ext2", "-b", "1024"],
        ] {
            let im = RwImage::new("orphan-left", args);
            let fs = im.open();
            let before = free(&fs);
            let a = fs
                .create(ROOT_INO, b"x", S_IFREG | 0o600, 0, 0, 0, 0)
                .unwrap();
            fs.write(a.ino, 0, &pattern(90_000, 3)).unwrap();
            fs.unlink(ROOT_INO, b"x").unwrap();
            // A crash after a periodic write-back: no release, no shutdown.
            fs.writeback().unwrap();
            drop(fs);
            let dev2 = Arc::new(MemDevice::new(im.dev.contents()));
            let fs2 = open_on(dev2.clone(), false);
            assert!(!fs2.is_read_only(), "{args:?}");
            assert_eq!(free(&fs2), before, "{args:?}: the orphan was freed");
            assert!(fs2.pending_orphans().unwrap().is_empty());
            fs2.shutdown().unwrap();
            std::fs::write(&im.img, dev2.contents()).unwrap();
            assert_fsck_clean(&im.img, &format!("orphan cleanup on {args:?}"));
            assert!(!inode_used(&im.img, a.ino), "{args:?}");
        }
    }

    // ---- Images with orphans made by debugfs and by the kernel ----

    use std::path::{Path, PathBuf};
    use std::process::Command;

    use crate::ext4::testutil::fsck;
    use crate::io::MemDevice;

    fn run_ok(cmd: &str, args: &[&str]) -> String {
        let out = Command::new(cmd).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{cmd} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs every debugfs request in `cmds` on `img` (read-write).
    fn debugfs_w(img: &Path, cmds: &[String]) {
        let f = img.with_extension("cmds");
        std::fs::write(&f, cmds.join("\n") + "\n").unwrap();
        run_ok(
            "debugfs",
            &["-w", "-f", f.to_str().unwrap(), img.to_str().unwrap()],
        );
    }

    fn copy_img(from: &Path, tag: &str) -> PathBuf {
        let to = from.with_extension(tag);
        std::fs::copy(from, &to).unwrap();
        to
    }

    /// (free blocks, free inodes) as dumpe2fs reports them.
    fn dumpe2fs_free(img: &Path) -> (u64, u64) {
        (
            dumpe2fs_field(img, "Free blocks").parse().unwrap(),
            dumpe2fs_field(img, "Free inodes").parse().unwrap(),
        )
    }

    /// Opens `img` read-write with the engine on a copy in memory, runs
    /// `f`, shuts down, writes the result back. Returns whether the mount
    /// was served read-only.
    fn engine_rw(img: &Path, f: impl FnOnce(&Ext4)) -> bool {
        let dev = Arc::new(MemDevice::new(std::fs::read(img).unwrap()));
        let fs = open_on(dev.clone(), false);
        let ro = fs.is_read_only();
        f(&fs);
        fs.shutdown().unwrap();
        drop(fs);
        std::fs::write(img, dev.contents()).unwrap();
        ro
    }

    /// The engine's result against e2fsck's: `img` cleaned up by the
    /// engine must pass `e2fsck -fn` and have the free counts `e2fsck -fy`
    /// gives on `reference` (a copy of the same image before the cleanup).
    fn same_as_e2fsck(img: &Path, reference: &Path, what: &str) -> (u64, u64) {
        assert_fsck_clean(img, what);
        let out = Command::new("e2fsck")
            .arg("-fy")
            .arg(reference)
            .output()
            .unwrap();
        let code = out.status.code().unwrap_or(-1);
        assert!(code == 0 || code == 1, "{what}: e2fsck -fy exit {code}");
        assert_eq!(fsck(reference).0, 0, "{what}: e2fsck -fy did not fix it");
        let (ours, theirs) = (dumpe2fs_free(img), dumpe2fs_free(reference));
        assert_eq!(ours, theirs, "{what}: free (blocks, inodes) vs e2fsck -fy");
        ours
    }

    /// Whether debugfs says inode `ino` is in use.
    fn inode_used(img: &Path, ino: u32) -> bool {
        let out = debugfs_out(img, &format!("testi <{ino}>"));
        assert!(out.contains("use"), "testi: {out}");
        !out.contains("not in use")
    }

    /// The physical blocks of inode `ino` (debugfs blocks).
    fn blocks_of(img: &Path, ino: u32) -> Vec<u64> {
        debugfs_out(img, &format!("blocks <{ino}>"))
            .split_whitespace()
            .map(|w| w.parse().unwrap())
            .collect()
    }

    /// How many of `blocks` debugfs reports in use.
    fn blocks_used(img: &Path, blocks: &[u64]) -> usize {
        let f = img.with_extension("testb");
        let cmds: Vec<String> = blocks.iter().map(|b| format!("testb {b}")).collect();
        std::fs::write(&f, cmds.join("\n") + "\n").unwrap();
        let out = run_ok(
            "debugfs",
            &["-f", f.to_str().unwrap(), img.to_str().unwrap()],
        );
        out.lines().filter(|l| l.contains("marked in use")).count()
    }

    /// i_size and i_blocks (512-byte units) of inode `ino` (debugfs stat).
    fn size_and_sectors(img: &Path, ino: u32) -> (u64, u64) {
        let out = debugfs_out(img, &format!("stat <{ino}>"));
        let field = |key: &str| -> u64 {
            let at = out.find(key).unwrap_or_else(|| panic!("{key} in {out}"));
            out[at + key.len()..]
                .split_whitespace()
                .next()
                .unwrap()
                .parse()
                .unwrap()
        };
        (field("Size: "), field("Blockcount: "))
    }

    /// Puts `ino` into the first free slot of the orphan file of `img`.
    fn orphan_file_add(img: &Path, ino: u32) {
        let mut data = std::fs::read(img).unwrap();
        let (blocks, seed, bs) = {
            let fs = open_on(Arc::new(MemDevice::new(data.clone())), true);
            let (b, s) = fs.orphan_file_blocks().unwrap().unwrap();
            (b, s, fs.block_size() as usize)
        };
        let pblk = blocks[0];
        let at = pblk as usize * bs;
        let raw = &mut data[at..at + bs];
        let mut ob = OrphanBlock::parse(raw, pblk, seed).unwrap();
        *ob.entries.iter_mut().find(|e| **e == 0).unwrap() = ino;
        ob.write(raw, pblk, seed);
        std::fs::write(img, data).unwrap();
    }

    /// A source tree: `keep` (kept), `big` (300 KB, truncated by the
    /// orphan processing), `dead` (200 KB, unlinked orphan), `d/e`.
    fn orphan_src(sc: &Scratch) -> PathBuf {
        let src = sc.path().join("src");
        std::fs::create_dir_all(src.join("d")).unwrap();
        std::fs::write(src.join("keep"), pattern(10_000, 1)).unwrap();
        std::fs::write(src.join("big"), pattern(300_000, 2)).unwrap();
        std::fs::write(src.join("dead"), pattern(200_000, 3)).unwrap();
        std::fs::write(src.join("dead2"), pattern(50_000, 4)).unwrap();
        std::fs::write(src.join("d/e"), b"e").unwrap();
        src
    }

    /// Orphans written by debugfs as the kernel leaves them: an unlinked
    /// inode (links_count 0, no directory entry) and a linked one whose
    /// i_size was cut (an interrupted truncate), on the classic list
    /// (chained through i_dtime) and in the orphan file. The engine's
    /// read-write open frees / truncates them: e2fsck -fn clean, the same
    /// free counts as e2fsck -fy on a copy, the freed inode and blocks
    /// free, the truncated file down to its i_size blocks.
    #[test]
    fn debugfs_orphans_cleaned_like_e2fsck() {
        if !have_mkfs() {
            return;
        }
        for (args, use_file) in [
            (&["-b", "4096", "-O", "^orphan_file"][..], false),
            (&["-b", "1024", "-O", "^orphan_file,^metadata_csum"], false),
            (&["-t", "ext3", "-b", "4096"], false),
            (&["-b", "4096", "-O", "orphan_file"], true),
            (&["-b", "1024", "-O", "orphan_file"], true),
        ] {
            let what = format!("{args:?} orphan file {use_file}");
            let sc = Scratch::new("orphan-dbg");
            let src = orphan_src(&sc);
            let img = mkfs(&sc, &src, args, 8 * 1024);
            let bs: u64 = dumpe2fs_field(&img, "Block size").parse().unwrap();
            let (big, dead, dead2) = (
                ino_of(&img, "big"),
                ino_of(&img, "dead"),
                ino_of(&img, "dead2"),
            );
            let dead_blocks = blocks_of(&img, dead);
            let big_blocks = blocks_of(&img, big);
            assert!(dead_blocks.len() >= 49, "{what}: {}", dead_blocks.len());
            let mut cmds = vec![
                "unlink dead".to_string(),
                format!("sif <{dead}> links_count 0"),
                "unlink dead2".to_string(),
                format!("sif <{dead2}> links_count 0"),
                format!("sif <{big}> size 5000"),
            ];
            if use_file {
                debugfs_w(&img, &cmds);
                orphan_file_add(&img, dead);
                orphan_file_add(&img, big);
                // One on the classic list too (the kernel's fallback when
                // the orphan file is full).
                debugfs_w(&img, &[format!("ssv last_orphan {dead2}")]);
            } else {
                // List: dead2 -> big -> dead.
                cmds.extend([
                    format!("ssv last_orphan {dead2}"),
                    format!("sif <{dead2}> dtime {big}"),
                    format!("sif <{big}> dtime {dead}"),
                ]);
                debugfs_w(&img, &cmds);
            }
            let reference = copy_img(&img, "ref");
            // Read-only: served as is, nothing written.
            let bytes = std::fs::read(&img).unwrap();
            let ro = open_image(&img).unwrap();
            assert_eq!(ro.pending_orphans().unwrap().len(), 3, "{what}");
            assert_eq!(ro.lookup(ROOT_INO, b"big").unwrap().size, 5000);
            ro.shutdown().unwrap();
            assert_eq!(std::fs::read(&img).unwrap(), bytes, "{what}: ro wrote");

            let served_ro = engine_rw(&img, |fs| {
                assert!(fs.pending_orphans().unwrap().is_empty(), "{what}");
                assert_eq!(fs.rw.live_sb().sb.s_last_orphan, 0);
                assert!(fs.orphan_file_empty().unwrap());
            });
            assert!(!served_ro, "{what}");
            let (fb, fi) = same_as_e2fsck(&img, &reference, &what);
            assert!(
                !inode_used(&img, dead) && !inode_used(&img, dead2),
                "{what}"
            );
            assert_eq!(blocks_used(&img, &dead_blocks), 0, "{what}: dead's blocks");
            let keep = 5000u64.div_ceil(bs);
            assert_eq!(blocks_of(&img, big), big_blocks[..keep as usize], "{what}");
            // Its other blocks (data, and an indirect block on ext3) free.
            assert_eq!(blocks_used(&img, &big_blocks), keep as usize, "{what}");
            let (size, sectors) = size_and_sectors(&img, big);
            assert_eq!((size, sectors), (5000, keep * bs / 512), "{what}");
            assert_eq!(dumpe2fs_field(&img, "Filesystem state"), "clean", "{what}");
            eprintln!("{what}: free blocks {fb}, free inodes {fi}, as e2fsck -fy");
            // The result reads back (big's first 5000 bytes kept).
            let fs = open_image(&img).unwrap();
            let mut buf = vec![0u8; 5000];
            let a = fs.lookup(ROOT_INO, b"big").unwrap();
            fs.read(a.ino, 0, &mut buf).unwrap();
            assert_eq!(buf, pattern(300_000, 2)[..5000], "{what}");
        }
    }

    /// Hostile orphan lists: a loop, a number past s_inodes_count, a
    /// reserved inode, a free inode, a bad entry in the orphan file. The
    /// read-write open serves read-only (one warning line), writes
    /// nothing, and still serves the tree.
    #[test]
    fn hostile_orphan_lists_serve_read_only() {
        if !have_mkfs() {
            return;
        }
        let sc = Scratch::new("orphan-bad");
        let src = orphan_src(&sc);
        let clean = mkfs(&sc, &src, &["-b", "4096", "-O", "orphan_file"], 8 * 1024);
        let (big, dead) = (ino_of(&clean, "big"), ino_of(&clean, "dead"));
        let count: u32 = dumpe2fs_field(&clean, "Inode count").parse().unwrap();
        let unused = count - 1;
        let cases: Vec<(&str, Vec<String>, Option<u32>)> = vec![
            (
                "loop",
                vec![
                    format!("sif <{dead}> links_count 0"),
                    format!("ssv last_orphan {dead}"),
                    format!("sif <{dead}> dtime {big}"),
                    format!("sif <{big}> dtime {dead}"),
                ],
                None,
            ),
            (
                "self loop",
                vec![
                    format!("ssv last_orphan {big}"),
                    format!("sif <{big}> dtime {big}"),
                ],
                None,
            ),
            (
                "head out of range",
                vec![format!("ssv last_orphan {}", count + 5)],
                None,
            ),
            (
                "next out of range",
                vec![
                    format!("ssv last_orphan {big}"),
                    format!("sif <{big}> dtime 4294967295"),
                ],
                None,
            ),
            ("root", vec!["ssv last_orphan 2".into()], None),
            ("reserved", vec!["ssv last_orphan 7".into()], None),
            ("journal", vec!["ssv last_orphan 8".into()], None),
            (
                "free inode",
                vec![format!("ssv last_orphan {unused}")],
                None,
            ),
            ("file: out of range", vec![], Some(count + 1)),
            ("file: reserved", vec![], Some(1)),
            (
                "file: also on the list",
                vec![format!("ssv last_orphan {big}")],
                Some(big),
            ),
        ];
        for (what, cmds, file_entry) in cases {
            let img = copy_img(&clean, "bad");
            if !cmds.is_empty() {
                debugfs_w(&img, &cmds);
            }
            if let Some(e) = file_entry {
                orphan_file_add(&img, e);
            }
            let before = std::fs::read(&img).unwrap();
            let started = std::time::Instant::now();
            let dev = Arc::new(MemDevice::new(before.clone()));
            let fs = open_on(dev.clone(), false);
            assert!(fs.is_read_only(), "{what}");
            let e = fs.pending_orphans().unwrap_err();
            assert!(matches!(e, Error::Corrupt { .. }), "{what}: {e}");
            eprintln!("{what}: {e}");
            assert_eq!(fs.lookup(ROOT_INO, b"keep").unwrap().size, 10_000);
            assert!(fs.lookup(ROOT_INO, b"d").is_ok());
            fs.shutdown().unwrap();
            assert!(dev.contents() == before, "{what}: nothing written");
            assert!(started.elapsed().as_secs() < 10, "{what}");
        }
        // A valid list on a filesystem marked with errors: left to e2fsck
        // (the kernel skips the cleanup then), served read-only.
        let img = copy_img(&clean, "errors");
        debugfs_w(
            &img,
            &[format!("ssv last_orphan {big}"), "ssv state 3".into()],
        );
        let before = std::fs::read(&img).unwrap();
        let ro = engine_rw(&img, |fs| {
            assert_eq!(fs.pending_orphans().unwrap(), vec![big]);
        });
        assert!(ro, "errors");
        assert!(
            std::fs::read(&img).unwrap() == before,
            "errors: nothing written"
        );
        // An orphan whose extent tree is corrupt: the cleanup stops there,
        // the mount turns read-only, the error is recorded; no panic.
        let img = copy_img(&clean, "badtree");
        debugfs_w(
            &img,
            &[
                format!("ssv last_orphan {big}"),
                format!("sif <{big}> size 5000"),
                // The first extent's ee_start_lo: past the filesystem.
                format!("sif <{big}> block[5] 0x7ffffff0"),
            ],
        );
        let ro = engine_rw(&img, |fs| {
            // The checks passed; the truncate failed and left it listed.
            assert_eq!(fs.pending_orphans().unwrap(), vec![big], "badtree");
        });
        assert!(ro, "badtree: read-only after the failed cleanup");
        assert_ne!(
            dumpe2fs_field(&img, "Filesystem state"),
            "clean",
            "badtree: the error is recorded"
        );
    }

    /// path -> size and a hash of the contents ("dir" for directories).
    fn engine_tree(fs: &Ext4, ino: Ino, path: &str, out: &mut Vec<String>) {
        let mut entries = Vec::new();
        fs.readdir(ino, 0, &mut |e| {
            entries.push((e.name.clone(), e.ino));
            true
        })
        .unwrap();
        for (name, ino) in entries {
            if name == b"." || name == b".." || name == b"lost+found" {
                continue;
            }
            let p = format!("{path}/{}", String::from_utf8_lossy(&name));
            let a = fs.getattr(ino).unwrap();
            if a.kind == FileKind::Directory {
                out.push(format!("{p} dir"));
                engine_tree(fs, ino, &p, out);
            } else {
                let mut buf = vec![0u8; a.size as usize];
                fs.read(ino, 0, &mut buf).unwrap();
                out.push(format!("{p} {} {:x}", a.size, fnv(&buf)));
            }
        }
    }

    fn kernel_tree(dir: &Path, path: &str, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let name = e.file_name().to_string_lossy().into_owned();
            if name == "lost+found" {
                continue;
            }
            let p = format!("{path}/{name}");
            if e.file_type().unwrap().is_dir() {
                out.push(format!("{p} dir"));
                kernel_tree(&e.path(), &p, out);
            } else {
                let data = std::fs::read(e.path()).unwrap();
                out.push(format!("{p} {} {:x}", data.len(), fnv(&data)));
            }
        }
    }

    /// Orphans the kernel made: files unlinked while this process holds
    /// them open, synced, the image copied while still mounted (so
    /// needs_recovery is set; replay at open brings back the orphan list
    /// or orphan file entries). The engine's read-write open replays and
    /// cleans up: e2fsck -fn clean, free counts equal to e2fsck -fy's on
    /// another copy, the unlinked inodes free, and the kernel mounting the
    /// result sees the tree the engine sees.
    #[test]
    fn kernel_orphans_cleaned_like_e2fsck() {
        if !have_mkfs() || !Path::new("/dev/loop-control").exists() {
            return;
        }
        for args in [
            &["-b", "4096", "-O", "orphan_file"][..],
            &["-b", "4096", "-O", "^orphan_file"],
            &["-b", "1024", "-O", "^orphan_file,^metadata_csum"],
        ] {
            let what = format!("{args:?}");
            let sc = Scratch::new("orphan-kernel");
            let src = orphan_src(&sc);
            let live = mkfs(&sc, &src, args, 64 * 1024);
            let img = sc.path().join("copy.img");
            let mut gone = Vec::new();
            {
                let Some(m) = kernel_mounted(&live, &sc.path().join("mnt"), "rw") else {
                    return;
                };
                let mut held = Vec::new();
                for (k, len) in [(0u64, 300_000usize), (1, 5000), (2, 0)] {
                    let p = m.mnt.join(format!("gone{k}"));
                    std::fs::write(&p, pattern(len, 10 + k)).unwrap();
                    let f = std::fs::File::open(&p).unwrap();
                    use std::os::unix::fs::MetadataExt;
                    gone.push(u32::try_from(f.metadata().unwrap().ino()).unwrap());
                    std::fs::remove_file(&p).unwrap();
                    held.push(f);
                }
                std::fs::write(m.mnt.join("d/new"), pattern(20_000, 7)).unwrap();
                run_ok("sync", &[]);
                crate::ext4::testutil::snapshot_copy(&live, &img);
                drop(held);
            }
            let reference = copy_img(&img, "ref");
            // Read-only (replay in memory): the orphans are there, served.
            {
                let ro = open_image(&img).unwrap();
                let mut p = ro.pending_orphans().unwrap();
                p.sort_unstable();
                assert_eq!(p, gone, "{what}: the kernel's orphans");
            }
            assert!(!engine_rw(&img, |_| {}), "{what}");
            let (fb, fi) = same_as_e2fsck(&img, &reference, &what);
            for &g in &gone {
                assert!(!inode_used(&img, g), "{what}: inode {g} freed");
            }
            eprintln!(
                "{what}: orphans {gone:?} freed; free blocks {fb}, free inodes {fi}, as e2fsck -fy"
            );
            let mut ours = Vec::new();
            engine_tree(&open_image(&img).unwrap(), ROOT_INO, "", &mut ours);
            ours.sort();
            let mut theirs = Vec::new();
            {
                let m = kernel_mounted(&img, &sc.path().join("mnt2"), "ro").unwrap();
                kernel_tree(&m.mnt, "", &mut theirs);
            }
            theirs.sort();
            assert_eq!(ours, theirs, "{what}: the kernel sees the engine's tree");
            assert!(
                ours.iter().any(|l| l.starts_with("/d/new 20000")),
                "{ours:?}"
            );
            assert!(!ours.iter().any(|l| l.contains("gone")), "{ours:?}");
        }
    }
}
