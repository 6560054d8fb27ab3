//! Metadata transactions: every change to metadata goes through a [`Txn`]
//! (begin, get blocks and inodes for write, allocate, commit), the handle
//! of jbd2: each commit joins the running transaction, the write-back set,
//! which `writeback` logs to the journal as one jbd2 transaction.
//!
//! # Lock order
//! 1. a per-inode content lock (`content_lock`), at most one: taken by a
//!    write, truncate, fallocate and the final release of a file, so that
//!    a write can put its data on the device between two transactions,
//!    holding no filesystem-wide lock meanwhile (see `file::write`);
//! 2. the transaction lock (`RwState::txn_lock`, one per filesystem: the
//!    "journal" lock), taken by [`Ext4::begin`] and held until the `Txn`
//!    commits or drops;
//! 3. the allocator state (`RwState::gdt` write lock, `RwState::sb` mutex),
//!    taken briefly inside a transaction or by `flush`/`shutdown`.
//!
//! Readers never take the transaction lock: they read the block and inode
//! caches, which a commit updates only after the device writes succeeded.
//! File reads, and writes while their data goes to the device, hold
//! `RwState::free_gate` shared, which a commit that frees blocks takes
//! exclusively while it publishes (after the transaction lock, before the
//! write-back set's lock); neither holds the transaction lock meanwhile.
//!
//! # What a transaction holds
//! Copies of every block it changed (`block_mut`, `block_new`, bitmaps,
//! descriptor blocks, inode table blocks), the inodes it changed, the group
//! descriptors it changed and its counter deltas. Nothing reaches the disk
//! or the caches before `commit`; dropping a `Txn` discards everything,
//! allocations included (they are edits of the bitmap copies). `commit`
//! hands the blocks to the write-back set (`writeback`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, MutexGuard};

use super::ondisk::group_desc::GroupDesc;
use super::ondisk::superblock::{self as sbf, Superblock};
use super::{Error, Ext4, Ino, Inode, Result, Timestamp};

/// Current wall-clock time, from the clock the kernel stamps files with
/// (CLOCK_REALTIME_COARSE: the last tick). The kernel sets a file's mtime
/// and ctime itself when it writes through its page cache; a finer clock
/// here would date a file's creation after its first write. (glibc reads
/// it from the vDSO; rustix would first ask prctl for the auxiliary
/// vector, which the sandbox refuses.)
pub(crate) fn now() -> Timestamp {
    match nix::time::clock_gettime(nix::time::ClockId::CLOCK_REALTIME_COARSE) {
        Ok(t) => Timestamp {
            secs: t.tv_sec(),
            nsecs: u32::try_from(t.tv_nsec()).unwrap_or(0),
        },
        Err(_) => fine_now(),
    }
}

/// CLOCK_REALTIME, should the coarse clock be missing.
fn fine_now() -> Timestamp {
    match std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => Timestamp {
            secs: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            nsecs: d.subsec_nanos(),
        },
        Err(e) => {
            let d = e.duration();
            Timestamp {
                secs: i64::try_from(d.as_secs()).map_or(-i64::MAX, |s| s.saturating_neg()),
                nsecs: 0,
            }
        }
    }
}

impl Ext4 {
    /// Starts a metadata transaction; Err(ReadOnly) on a read-only mount.
    /// One transaction at a time: this waits for the fs-wide transaction
    /// lock and holds it until the `Txn` commits or drops. Dropping without
    /// commit discards every change.
    pub(crate) fn begin(&self) -> Result<Txn<'_>> {
        if self.is_read_only() {
            return Err(Error::ReadOnly);
        }
        let lock = self.rw.txn_lock.lock().unwrap_or_else(|e| e.into_inner());
        // A transaction that failed while we waited may have turned the
        // mount read-only.
        if self.is_read_only() {
            return Err(Error::ReadOnly);
        }
        Ok(Txn {
            fs: self,
            _lock: lock,
            blocks: BTreeMap::new(),
            inodes: BTreeMap::new(),
            groups: BTreeMap::new(),
            block_bitmaps: BTreeSet::new(),
            inode_bitmaps: BTreeSet::new(),
            freed: Vec::new(),
            free_blocks_delta: 0,
            free_inodes_delta: 0,
            sb: None,
            use_reserved_pool: false,
            xattr_index_edits: Vec::new(),
            inode_life: BTreeMap::new(),
            quota_limited: super::quota::limits::caller_limited() && self.any_quota_enforced(),
            quota_budget: None,
            quota_hit: false,
        })
    }

    /// Keeps unlinked inode `ino` usable by number (getattr, read, write,
    /// setattr, xattrs) while it is open; `release_inode` ends that.
    pub fn hold_orphan(&self, ino: Ino) {
        if let Ok(mut h) = self.rw.held_orphans.lock() {
            h.insert(ino);
        }
    }

    /// Whether `ino` is an unlinked inode still held open.
    pub(crate) fn is_held_orphan(&self, ino: Ino) -> bool {
        self.rw.held_orphans.lock().is_ok_and(|h| h.contains(&ino))
    }

    /// Current time, for inode timestamps.
    pub(crate) fn now(&self) -> Timestamp {
        now()
    }

    /// A new inode generation number.
    pub(crate) fn next_generation(&self) -> u32 {
        self.rw.generation.fetch_add(0x9E37_79B9, Ordering::Relaxed)
    }
}

/// A metadata transaction. See the module documentation.
pub(crate) struct Txn<'fs> {
    fs: &'fs Ext4,
    _lock: MutexGuard<'fs, ()>,
    /// Changed blocks, by block number.
    pub(super) blocks: BTreeMap<u64, Vec<u8>>,
    /// Changed inodes.
    inodes: BTreeMap<Ino, Inode>,
    /// Changed group descriptors.
    pub(super) groups: BTreeMap<u32, GroupDesc>,
    /// Groups whose block / inode bitmap changed (checksums at commit).
    pub(super) block_bitmaps: BTreeSet<u32>,
    pub(super) inode_bitmaps: BTreeSet<u32>,
    /// Ranges freed (their cached copies are dropped at commit).
    pub(super) freed: Vec<(u64, u32)>,
    pub(super) free_blocks_delta: i64,
    pub(super) free_inodes_delta: i64,
    /// This transaction's copy of the superblock, when it changed
    /// something besides the free counters.
    sb: Option<Superblock>,
    /// Whether allocations may use the kernel's reserved pool
    /// (EXT4_MB_USE_RESERVED: metadata for truncate, punch, unlink).
    pub(super) use_reserved_pool: bool,
    /// Changes to the shared-xattr-block index, applied at commit (see
    /// `xattr::share`).
    pub(super) xattr_index_edits: Vec<super::xattr::share::IndexEdit>,
    /// Inodes this transaction allocated or freed: (allocated when it
    /// began, allocated now), for quota (see `quota::charge`).
    pub(crate) inode_life: BTreeMap<Ino, (bool, bool)>,
    /// Quota limits apply to this transaction (see `quota::limits`).
    pub(crate) quota_limited: bool,
    /// Blocks it may still allocate under the quota limits, if limited.
    pub(crate) quota_budget: Option<u64>,
    /// An allocation was refused for the budget (NoSpace then means
    /// EDQUOT).
    pub(crate) quota_hit: bool,
}

impl<'fs> Txn<'fs> {
    pub(crate) fn fs(&self) -> &'fs Ext4 {
        self.fs
    }

    /// Metadata block `block` for modification: its current contents (this
    /// transaction's copy if already changed). The caller recomputes the
    /// structure's checksum (dir block tail, extent tail, xattr block,
    /// htree tail) before commit.
    pub(crate) fn block_mut(&mut self, block: u64) -> Result<&mut [u8]> {
        use std::collections::btree_map::Entry;
        match self.blocks.entry(block) {
            Entry::Occupied(e) => Ok(e.into_mut().as_mut_slice()),
            Entry::Vacant(v) => {
                let data = self.fs.read_block(block)?;
                Ok(v.insert(data.to_vec()).as_mut_slice())
            }
        }
    }

    /// A freshly allocated metadata block, zero-filled, not read from disk.
    pub(crate) fn block_new(&mut self, block: u64) -> Result<&mut [u8]> {
        if !self.fs.blocks_valid(block, 1) {
            return Err(Error::corrupt(
                format!("new block {block} outside the filesystem"),
                block,
            ));
        }
        let bs = self.fs.block_size as usize;
        let b = self.blocks.entry(block).or_default();
        b.clear();
        b.resize(bs, 0);
        Ok(b.as_mut_slice())
    }

    /// This transaction's copy of block `block` if it changed it.
    pub(crate) fn block_if_dirty(&self, block: u64) -> Option<&[u8]> {
        self.blocks.get(&block).map(Vec::as_slice)
    }

    /// Current contents of `block`: this transaction's copy, else the
    /// cache/disk (read-only view).
    pub(crate) fn block(&self, block: u64) -> Result<Arc<[u8]>> {
        match self.blocks.get(&block) {
            Some(b) => Ok(Arc::from(b.as_slice())),
            None => self.fs.read_block(block),
        }
    }

    /// Inode `ino` as this transaction sees it (its copy if already
    /// touched), owned. Works for any allocated or special inode, links or
    /// not (release of unlinked inodes needs that).
    pub(crate) fn inode(&mut self, ino: Ino) -> Result<Inode> {
        if let Some(i) = self.inodes.get(&ino) {
            return Ok(i.clone());
        }
        Ok((*self.fs.inode_any(ino)?).clone())
    }

    /// Inode `ino` as this transaction sees it, borrowed view.
    pub(crate) fn inode_view(&self, ino: Ino) -> Result<Inode> {
        if let Some(i) = self.inodes.get(&ino) {
            return Ok(i.clone());
        }
        Ok((*self.fs.inode_any(ino)?).clone())
    }

    /// The inodes this transaction changed.
    pub(crate) fn dirty_inos(&self) -> impl Iterator<Item = Ino> + '_ {
        self.inodes.keys().copied()
    }

    /// Stores a modified (or new) inode; serialized with its checksum at
    /// commit.
    pub(crate) fn put_inode(&mut self, inode: Inode) {
        self.inodes.insert(inode.ino, inode);
    }

    /// This transaction's superblock copy, for changes other than the free
    /// counters (orphan list head, feature bits).
    pub(crate) fn sb_mut(&mut self) -> &mut Superblock {
        let fs = self.fs;
        self.sb.get_or_insert_with(|| fs.rw.live_sb().sb.clone())
    }

    /// The superblock as this transaction sees it.
    pub(crate) fn sb_view(&self) -> Superblock {
        match &self.sb {
            Some(s) => s.clone(),
            None => self.fs.rw.live_sb().sb.clone(),
        }
    }

    /// Sets an RO_COMPAT feature bit (e.g. LARGE_FILE, DIR_NLINK,
    /// HUGE_FILE when first needed, as the kernel does).
    pub(crate) fn set_ro_compat(&mut self, bit: u32) {
        if self.sb_view().s_feature_ro_compat & bit == 0 {
            self.sb_mut().s_feature_ro_compat |= bit;
        }
    }

    /// Lets this transaction's allocations use the kernel's reserved pool
    /// (the min(2%, 4096) clusters kept for metadata of truncate, punch
    /// hole and unlink; EXT4_MB_USE_RESERVED).
    pub(crate) fn use_reserved_pool(&mut self) {
        self.use_reserved_pool = true;
    }

    /// The dirty set as a journal would log it: (block, contents) in block
    /// order. Complete only inside `commit` (inodes, descriptors and
    /// bitmap checksums are folded in there).
    #[cfg(test)]
    pub(crate) fn dirty_blocks(&self) -> Vec<(u64, &[u8])> {
        self.blocks
            .iter()
            .map(|(b, d)| (*b, d.as_slice()))
            .collect()
    }

    /// Folds inodes, bitmap checksums and descriptors into the dirty
    /// blocks, moves them into the write-back set and the caches, and
    /// updates the live superblock and counters. Writes back at once when
    /// the write-back set exceeds [`WRITEBACK_LIMIT`]; a failed write turns
    /// the mount read-only.
    pub(crate) fn commit(mut self) -> Result<()> {
        match self.prepare() {
            Ok(()) => {}
            // Nothing was applied; the caller's errors= handling (the
            // FUSE adapter's `fail`) records corruption.
            Err(e) => return Err(e),
        }
        let fs = self.fs;
        // Into the write-back set and the caches; the device gets the
        // blocks at the next write-back (see the module documentation).
        let bs = fs.block_size as usize;
        // Readers that mapped the freed blocks finish first; later ones
        // see the inodes below, which no longer map them.
        let free_gate = (!self.freed.is_empty())
            .then(|| fs.rw.free_gate.write().unwrap_or_else(|e| e.into_inner()));
        // Freed blocks leave the shared-xattr index before this
        // transaction's new ones enter it.
        fs.rw
            .xattr_index
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .apply(&self.freed, &self.xattr_index_edits);
        let pending = {
            let mut wb = fs.rw.wb();
            for (b, len) in &self.freed {
                let end = b.saturating_add(u64::from(*len));
                wb.freed(*b, end);
                for x in *b..end {
                    fs.blocks.remove(x);
                }
            }
            for (b, data) in std::mem::take(&mut self.blocks) {
                let data: Arc<[u8]> = Arc::from(data);
                wb.insert(b, data.clone());
                fs.blocks.insert(b, data, bs);
            }
            wb.sb_dirty = true;
            wb.bytes
        };
        for (ino, inode) in std::mem::take(&mut self.inodes) {
            fs.inodes.insert(u64::from(ino), Arc::new(inode), 1);
        }
        {
            let mut gdt = fs.rw.gdt.write().unwrap_or_else(|e| e.into_inner());
            for (g, d) in std::mem::take(&mut self.groups) {
                if let Some(slot) = gdt.get_mut(g as usize) {
                    *slot = d;
                }
            }
        }
        let mut live = fs.rw.live_sb();
        let (fb, fi) = (live.sb.s_free_blocks_count, live.sb.s_free_inodes_count);
        if let Some(s) = self.sb.take() {
            live.sb = s;
        }
        let cbits = fs.sb.cluster_bits();
        live.sb.s_free_blocks_count = add_signed(fb, self.free_blocks_delta << cbits);
        live.sb.s_free_inodes_count =
            u32::try_from(add_signed(u64::from(fi), self.free_inodes_delta)).unwrap_or(u32::MAX);
        drop(live);
        drop(free_gate);
        if pending > fs.writeback_limit() {
            fs.writeback()?;
        }
        Ok(())
    }

    /// Folds inodes, bitmap checksums and descriptors into the dirty
    /// blocks.
    fn prepare(&mut self) -> Result<()> {
        let fs = self.fs;
        // Usage changes into the quota files, in this transaction (their
        // own growth is not the caller's: no budget).
        self.quota_budget = None;
        self.apply_quota()?;
        let seed = fs.csum_seed;
        let metadata_csum = fs.has_metadata_csum();
        // Inodes into their table blocks.
        let inodes = std::mem::take(&mut self.inodes);
        let isz = usize::from(fs.sb.s_inode_size);
        for inode in inodes.values() {
            let (block, off) = fs.inode_location(inode.ino)?;
            let buf = self.block_mut(block)?;
            let slot = buf.get_mut(off..off.saturating_add(isz)).ok_or_else(|| {
                Error::corrupt(format!("inode {}: beyond its block", inode.ino), block)
            })?;
            inode.write(slot, metadata_csum.then_some(seed));
        }
        // Keep the serialized raw bytes in the cached inodes.
        self.inodes = inodes;
        for inode in self.inodes.values_mut() {
            let (block, off) = fs.inode_location(inode.ino)?;
            if let Some(raw) = self
                .blocks
                .get(&block)
                .and_then(|b| b.get(off..off.saturating_add(isz)))
            {
                inode.raw = raw.into();
            }
        }
        // Bitmap checksums.
        if metadata_csum {
            let cpg = fs.sb.s_clusters_per_group as usize / 8;
            let ipg = fs.sb.s_inodes_per_group as usize / 8;
            for g in self.block_bitmaps.clone() {
                let bb = fs.group(g)?.bg_block_bitmap;
                let c = super::ondisk::bitmap::csum(
                    seed,
                    self.blocks.get(&bb).map_or(&[][..], Vec::as_slice),
                    cpg,
                );
                self.desc_mut(g)?.bg_block_bitmap_csum = c;
            }
            for g in self.inode_bitmaps.clone() {
                let ib = fs.group(g)?.bg_inode_bitmap;
                let c = super::ondisk::bitmap::csum(
                    seed,
                    self.blocks.get(&ib).map_or(&[][..], Vec::as_slice),
                    ipg,
                );
                self.desc_mut(g)?.bg_inode_bitmap_csum = c;
            }
        }
        // Descriptors into their blocks.
        let dsize = usize::from(fs.sb.s_desc_size.max(sbf::MIN_DESC_SIZE));
        let groups = std::mem::take(&mut self.groups);
        for (g, d) in &groups {
            let (loc, off) = fs.descriptor_slot(*g);
            let buf = self.block_mut(loc)?;
            let slot = buf
                .get_mut(off..off.saturating_add(dsize))
                .ok_or_else(|| Error::corrupt(format!("group descriptor {g}"), loc))?;
            d.write(slot, *g, &fs.sb, seed);
        }
        self.groups = groups;
        Ok(())
    }

    /// The group descriptor as this transaction sees it.
    pub(crate) fn desc(&self, g: u32) -> Result<GroupDesc> {
        if let Some(d) = self.groups.get(&g) {
            return Ok(d.clone());
        }
        let gdt = self.fs.rw.gdt.read().unwrap_or_else(|e| e.into_inner());
        gdt.get(g as usize)
            .cloned()
            .ok_or_else(|| Error::corrupt(format!("group {g} out of range"), 0))
    }

    /// This transaction's copy of group descriptor `g`, for changes.
    pub(crate) fn desc_mut(&mut self, g: u32) -> Result<&mut GroupDesc> {
        if !self.groups.contains_key(&g) {
            let d = {
                let gdt = self.fs.rw.gdt.read().unwrap_or_else(|e| e.into_inner());
                gdt.get(g as usize)
                    .cloned()
                    .ok_or_else(|| Error::corrupt(format!("group {g} out of range"), 0))?
            };
            self.groups.insert(g, d);
        }
        self.groups
            .get_mut(&g)
            .ok_or_else(|| Error::corrupt(format!("group {g} out of range"), 0))
    }
}

fn add_signed(v: u64, d: i64) -> u64 {
    if d >= 0 {
        v.saturating_add(d.unsigned_abs())
    } else {
        v.saturating_sub(d.unsigned_abs())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::super::testutil::*;
    use super::super::{FileKind, ROOT_INO};
    use super::*;
    use crate::ext4::testutil::{RwImage, assert_fsck_clean, dumpe2fs_field};

    /// While mounted read-write the superblock is not clean and the mount
    /// count went up; shutdown marks it clean with s_wtime and
    /// s_kbytes_written; ORPHAN_PRESENT is set while mounted with the
    /// orphan file and cleared at unmount.
    #[test]
    fn mount_state() {
        if !have_mkfs() {
            return;
        }
        let im = RwImage::new(
            "state",
            &[
                "-b",
                "4096",
                "-g",
                "4096",
                "-O",
                "orphan_file,metadata_csum_seed",
            ],
        );
        let mnt0: u32 = dumpe2fs_field(&im.img, "Mount count").parse().unwrap();
        let fs = im.open();
        let img = im.save().to_path_buf();
        assert_eq!(dumpe2fs_field(&img, "Filesystem state"), "not clean");
        let mnt1: u32 = dumpe2fs_field(&img, "Mount count").parse().unwrap();
        assert_eq!(mnt1, mnt0 + 1);
        assert!(dumpe2fs_field(&img, "Filesystem features").contains("orphan_present"));
        let mut txn = fs.begin().unwrap();
        let (b, n) = txn.alloc_blocks(0, 256, false).unwrap();
        txn.commit().unwrap();
        fs.write_data(b, 0, &vec![7u8; n as usize * 4096]).unwrap();
        let mut txn = fs.begin().unwrap();
        txn.free_blocks(b, n).unwrap();
        txn.commit().unwrap();
        fs.flush().unwrap();
        fs.shutdown().unwrap();
        fs.shutdown().unwrap(); // idempotent
        assert!(matches!(fs.begin(), Err(Error::ReadOnly)));
        assert!(matches!(fs.write_data(b, 0, &[1]), Err(Error::ReadOnly)));
        let img = im.save();
        assert_eq!(dumpe2fs_field(img, "Filesystem state"), "clean");
        assert!(!dumpe2fs_field(img, "Filesystem features").contains("orphan_present"));
        let kb: u64 = dumpe2fs_field(img, "Lifetime writes")
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap_or(0);
        assert!(kb > 0);
        assert_fsck_clean(img, "mount/unmount");
    }

    /// block_mut/block_new/inode/put_inode: changes are invisible to
    /// readers until commit, dropped with the transaction, and the caches
    /// see the new contents after commit.
    #[test]
    fn isolation_and_caches() {
        if !have_mkfs() {
            return;
        }
        let im = RwImage::new("iso", &["-b", "4096", "-g", "4096"]);
        let fs = im.open();
        let ino = ino_of(&im.img, "a");
        let orig = fs.inode(ino).unwrap();
        {
            let mut txn = fs.begin().unwrap();
            let mut i = txn.inode(ino).unwrap();
            i.uid = 4242;
            txn.put_inode(i);
            assert_eq!(txn.inode(ino).unwrap().uid, 4242, "txn sees its copy");
            assert_eq!(fs.inode(ino).unwrap().uid, orig.uid, "readers don't");
        }
        assert_eq!(fs.inode(ino).unwrap().uid, orig.uid, "dropped");
        let mut txn = fs.begin().unwrap();
        let mut i = txn.inode(ino).unwrap();
        i.uid = 4242;
        i.mtime = Timestamp {
            secs: 1_700_000_000,
            nsecs: 123_456_789,
        };
        txn.put_inode(i);
        let (blk, _) = txn.alloc_blocks(0, 1, false).unwrap();
        txn.block_new(blk).unwrap()[..4].copy_from_slice(b"abcd");
        assert_eq!(&txn.block(blk).unwrap()[..4], b"abcd");
        assert_eq!(
            txn.dirty_blocks().iter().filter(|(b, _)| *b == blk).count(),
            1
        );
        txn.commit().unwrap();
        let now = fs.inode(ino).unwrap();
        assert_eq!((now.uid, now.mtime.nsecs), (4242, 123_456_789));
        assert_eq!(&fs.read_block(blk).unwrap()[..4], b"abcd");
        // Free it again; it was "metadata" without an owner.
        let mut txn = fs.begin().unwrap();
        txn.free_blocks(blk, 1).unwrap();
        txn.commit().unwrap();
        fs.shutdown().unwrap();
        let img = im.save();
        assert_fsck_clean(img, "inode update");
        let st = debugfs_out(img, &format!("stat <{ino}>"));
        assert!(st.contains("User:  4242"), "{st}");
    }

    /// Write-back: a commit reaches the caches and the write-back set, not
    /// the device; reads that miss the cache see the write-back copy;
    /// `writeback` writes it; a freed metadata block reused for file data
    /// is never overwritten by its stale metadata; shutdown leaves a clean
    /// filesystem.
    #[test]
    fn write_back_set() {
        if !have_mkfs() {
            return;
        }
        let im = RwImage::new("wb", &["-b", "4096", "-g", "4096"]);
        let fs = im.open();
        let at = |blk: u64| {
            let d = im.dev.contents();
            d[blk as usize * 4096..blk as usize * 4096 + 4].to_vec()
        };
        let mut txn = fs.begin().unwrap();
        let (blk, _) = txn.alloc_blocks(0, 1, false).unwrap();
        txn.block_new(blk).unwrap()[..4].copy_from_slice(b"meta");
        txn.commit().unwrap();
        assert_eq!(at(blk), [0; 4], "not on the device before write-back");
        assert!(fs.writeback_pending() >= 4096);
        fs.blocks.remove(blk);
        assert_eq!(&fs.read_block(blk).unwrap()[..4], b"meta", "cache miss");
        let mut direct = [0u8; 8];
        fs.read_blocks_direct(blk, 0, &mut direct).unwrap();
        assert_eq!(&direct[..4], b"meta", "direct reads see it too");
        fs.writeback().unwrap();
        assert_eq!(at(blk), *b"meta");
        assert_eq!(fs.writeback_pending(), 0);
        // Dirty again, then freed and reused for data before any flush.
        let mut txn = fs.begin().unwrap();
        txn.block_mut(blk).unwrap()[..4].copy_from_slice(b"newm");
        txn.commit().unwrap();
        free_and_reuse_for_data(&fs, blk, b"data");
        fs.flush().unwrap();
        assert_eq!(at(blk), *b"data");
        let mut txn = fs.begin().unwrap();
        txn.free_blocks(blk, 1).unwrap();
        txn.commit().unwrap();
        fs.shutdown().unwrap();
        assert_eq!(fs.writeback_pending(), 0);
        assert_fsck_clean(im.save(), "write-back");
    }

    /// A bad group descriptor checksum: a read-write open serves the
    /// filesystem read-only and writes nothing.
    #[test]
    fn bad_descriptor_checksum_serves_read_only() {
        if !have_mkfs() {
            return;
        }
        let im = RwImage::new("badgd", &["-b", "4096", "-g", "4096"]);
        let mut d = im.dev.contents();
        d[4096 + 64 + 0x10] ^= 1; // group 1's used_dirs_count
        let fs = Ext4::open(
            std::sync::Arc::new(crate::io::MemDevice::new(d.clone())),
            super::super::OpenOptions {
                read_only: false,
                ..Default::default()
            },
        )
        .unwrap();
        assert!(fs.info().read_only);
        assert!(matches!(fs.begin(), Err(Error::ReadOnly)));
        fs.shutdown().unwrap();
    }

    /// Corruption on a write path: a double free is refused, the
    /// transaction changes nothing, and the error is recorded in the
    /// superblock (state, count, function) as errors= handling does.
    #[test]
    fn double_free_is_refused_and_recorded() {
        if !have_mkfs() {
            return;
        }
        let im = RwImage::new("dfree", &["-b", "4096", "-g", "4096"]);
        let fs = im.open();
        let mut txn = fs.begin().unwrap();
        let ino = txn.alloc_inode(ROOT_INO, FileKind::RegularFile).unwrap();
        txn.free_inode(ino, false).unwrap();
        let e = txn.free_inode(ino, false).unwrap_err();
        assert!(matches!(e, Error::Corrupt { .. }));
        drop(txn);
        // What the FUSE adapter does with it (errors=, here the
        // superblock's continue): recorded, and writing goes on.
        fs.fs_error("free_inode", ino, &e);
        assert!(!fs.is_read_only());
        fs.begin().unwrap();
        fs.shutdown().unwrap();
        let img = im.save();
        assert_eq!(dumpe2fs_field(img, "FS Error count"), "1");
        assert_eq!(dumpe2fs_field(img, "Last error function"), "free_inode");
        assert!(dumpe2fs_field(img, "Filesystem state").contains("with errors"));
    }
}
