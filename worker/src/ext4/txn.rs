//! Metadata transactions: every change to metadata goes through a [`Txn`]
//! (begin, get blocks and inodes for write, allocate, commit), so a journal
//! can later log exactly the set of blocks a transaction changed without
//! touching the callers.
//!
//! # Lock order
//! 1. per-inode locks, lower inode number first (reserved: none exist
//!    today, because every mutation, data writes included, runs inside
//!    one transaction and so under the transaction lock; readers never
//!    block);
//! 2. the transaction lock (`RwState::txn_lock`, one per filesystem: the
//!    "journal" lock), taken by [`Ext4::begin`] and held until the `Txn`
//!    commits or drops;
//! 3. the allocator state (`RwState::gdt` write lock, `RwState::sb` mutex),
//!    taken briefly inside a transaction or by `flush`/`shutdown`.
//!
//! Readers never take the transaction lock: they read the block and inode
//! caches, which a commit updates only after the device writes succeeded.
//!
//! # What a transaction holds
//! Copies of every block it changed (`block_mut`, `block_new`, bitmaps,
//! descriptor blocks, inode table blocks), the inodes it changed, the group
//! descriptors it changed and its counter deltas. Nothing reaches the disk
//! or the caches before `commit`; dropping a `Txn` discards everything,
//! allocations included (they are edits of the bitmap copies).
//!
//! # Write-back
//! `commit` does not write to the device: it moves the dirty blocks
//! ([`Txn::dirty_blocks`] is the set a journal would log) into the
//! filesystem's write-back set and the block cache, and marks the
//! superblock dirty. The write-back set is authoritative for reads the
//! cache misses (`Ext4::read_block`, `Ext4::read_blocks_direct`) until the
//! blocks are on the device. [`Ext4::writeback`] writes it in block order,
//! adjacent blocks coalesced, then the superblock; it runs on fsync and
//! fsyncdir (`Ext4::flush`), at unmount (`shutdown`), when the set exceeds
//! [`WRITEBACK_LIMIT`] at commit, and from the FUSE adapter's periodic
//! flusher (like the kernel's dirty_writeback interval). File data is
//! written directly by `write_data`, so data always reaches the device
//! before the metadata pointing at it. Without a journal, a crash loses
//! the metadata of the last few seconds (e2fsck then repairs the
//! filesystem); every fsync'd byte and its metadata are on the device.
//!
//! Lock order for write-back: the transaction lock (when a commit flushes)
//! -> `RwState::flush_gate` (write for a flush, read for a data write) ->
//! the superblock mutex -> `RwState::wb` (held briefly, never across I/O).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use super::journal::Journal;
use super::journal::log::Log;
use super::ondisk::group_desc::GroupDesc;
use super::ondisk::superblock::{self as sbf, Superblock};
use super::{Error, Ext4, Ino, Inode, Result, Timestamp};

/// Write-side state of a mounted filesystem.
pub(crate) struct RwState {
    /// The one transaction lock.
    txn_lock: Mutex<()>,
    /// Live group descriptors (counters, flags, bitmap checksums). Empty on
    /// a read-only mount (the descriptors as opened are then current).
    pub(super) gdt: RwLock<Vec<GroupDesc>>,
    /// Live superblock.
    pub(super) sb: Mutex<LiveSb>,
    /// Set when a write failed or metadata was found corrupt on a write
    /// path: the mount turns read-only (errors=remount-ro).
    pub(super) read_only: AtomicBool,
    /// Whether an error was seen (the superblock is then left not-clean).
    pub(super) errors: AtomicBool,
    /// Next inode generation.
    generation: AtomicU32,
    /// Unlinked inodes (links_count 0) still open through FUSE: readable
    /// and writable by number until `release_inode` (W4's adapter).
    pub(super) held_orphans: Mutex<BTreeSet<Ino>>,
    /// Bytes written to the device since the mount (s_kbytes_written).
    written: AtomicU64,
    /// Committed metadata blocks not yet on the device.
    pub(super) wb: Mutex<WriteBack>,
    /// Held for writing while a write-back writes to the device, for
    /// reading by `write_data`: a flush never writes a snapshot of a freed
    /// metadata block over file data written after it was freed, and two
    /// flushes never reorder versions of a block.
    flush_gate: RwLock<()>,
    /// The journal's log on a journaled filesystem, from `start_rw` on.
    journal: std::sync::OnceLock<Log>,
}

/// A block number and its contents.
type BlockCopy = (u64, Arc<[u8]>);

/// Committed metadata not yet on the device (see the module docs).
#[derive(Default)]
pub(crate) struct WriteBack {
    pub(super) blocks: BTreeMap<u64, Arc<[u8]>>,
    /// Bytes held in `blocks`.
    bytes: usize,
    /// The live superblock changed since it was last written.
    sb_dirty: bool,
}

impl WriteBack {
    /// Drops every pending block in `[first, end)` (freed blocks, or
    /// blocks file data is about to overwrite).
    fn discard(&mut self, first: u64, end: u64) {
        let dead: Vec<u64> = self.blocks.range(first..end).map(|(k, _)| *k).collect();
        for k in dead {
            if let Some(d) = self.blocks.remove(&k) {
                self.bytes = self.bytes.saturating_sub(d.len());
            }
        }
    }

    fn insert(&mut self, block: u64, data: Arc<[u8]>) {
        self.bytes = self.bytes.saturating_add(data.len());
        if let Some(old) = self.blocks.insert(block, data) {
            self.bytes = self.bytes.saturating_sub(old.len());
        }
    }
}

/// Dirty metadata held in memory before a commit writes it back itself
/// (the kernel's dirty_background bytes, in spirit).
pub(crate) const WRITEBACK_LIMIT: usize = 64 << 20;

/// The live superblock and its 1024 on-disk bytes (reserved areas kept).
pub(crate) struct LiveSb {
    pub(crate) sb: Superblock,
    raw: Vec<u8>,
    /// s_state when mounted, restored (plus error bits) on unmount.
    state_at_mount: u16,
    /// s_kbytes_written when mounted.
    kbytes_at_mount: u64,
}

impl RwState {
    pub(super) fn new(sb: &Superblock, raw: Vec<u8>) -> RwState {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos() ^ (d.as_secs() as u32))
            .unwrap_or(0);
        let hashed = {
            use std::hash::{BuildHasher, Hasher};
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u32(seed);
            h.finish() as u32
        };
        RwState {
            txn_lock: Mutex::new(()),
            gdt: RwLock::new(Vec::new()),
            sb: Mutex::new(LiveSb {
                sb: sb.clone(),
                raw,
                state_at_mount: sb.s_state,
                kbytes_at_mount: sb.s_kbytes_written,
            }),
            read_only: AtomicBool::new(false),
            errors: AtomicBool::new(false),
            generation: AtomicU32::new(hashed),
            held_orphans: Mutex::new(BTreeSet::new()),
            written: AtomicU64::new(0),
            wb: Mutex::new(WriteBack::default()),
            flush_gate: RwLock::new(()),
            journal: std::sync::OnceLock::new(),
        }
    }

    /// Sum of free clusters and free inodes over the live descriptors (or
    /// `opened` on a read-only mount).
    pub(super) fn free_counts(&self, opened: &[GroupDesc]) -> (u64, u64) {
        let gdt = self.gdt.read().unwrap_or_else(|e| e.into_inner());
        let list = if gdt.is_empty() { opened } else { &gdt[..] };
        list.iter().fold((0u64, 0u64), |(b, i), g| {
            (
                b.saturating_add(u64::from(g.bg_free_blocks_count)),
                i.saturating_add(u64::from(g.bg_free_inodes_count)),
            )
        })
    }

    pub(super) fn live_sb(&self) -> MutexGuard<'_, LiveSb> {
        self.sb.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn wb(&self) -> MutexGuard<'_, WriteBack> {
        self.wb.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Why a read-write mount is served read-only, or None when the write side
/// supports everything the filesystem uses.
pub(crate) fn rw_refusal(sb: &Superblock) -> Option<String> {
    use sbf::{FeatureKind, feature_names};
    let unknown = sb.s_feature_ro_compat & !sbf::RO_COMPAT_SUPPORTED;
    if unknown != 0 {
        return Some(format!(
            "unsupported ro_compat feature(s) {unknown:#x} ({})",
            feature_names(FeatureKind::RoCompat, unknown).join(", ")
        ));
    }
    if sb.has_compat(sbf::COMPAT_HAS_JOURNAL) && sb.s_journal_inum == 0 {
        return Some("the filesystem uses an external journal device".into());
    }
    // Features whose write side this engine does not implement: writing
    // without them would leave the filesystem inconsistent.
    let ro_compat_unwritable = [
        (
            sbf::RO_COMPAT_BIGALLOC,
            "bigalloc (cluster allocation is not implemented)",
        ),
        (
            sbf::RO_COMPAT_QUOTA,
            "quota (quota files would not be updated)",
        ),
        (
            sbf::RO_COMPAT_PROJECT,
            "project quota (quota files would not be updated)",
        ),
        (
            sbf::RO_COMPAT_VERITY,
            "verity (verity files are not protected from writes)",
        ),
    ];
    for (bit, why) in ro_compat_unwritable {
        if sb.has_ro_compat(bit) {
            return Some(format!("writing is not supported with {why}"));
        }
    }
    let incompat_unwritable = [
        (
            sbf::INCOMPAT_ENCRYPT,
            "encrypt (encrypted directories cannot be written without keys)",
        ),
        (
            sbf::INCOMPAT_CASEFOLD,
            "casefold (case-insensitive name hashing is not implemented)",
        ),
        (
            sbf::INCOMPAT_MMP,
            "mmp (the multi-mount protection update thread is not implemented)",
        ),
    ];
    for (bit, why) in incompat_unwritable {
        if sb.has_incompat(bit) {
            return Some(format!("writing is not supported with {why}"));
        }
    }
    if sb.has_compat(sbf::COMPAT_FAST_COMMIT) && sb.has_compat(sbf::COMPAT_HAS_JOURNAL) {
        // Harmless: with no journal writes there is nothing to fast-commit.
        tracing::debug!("fast_commit is on; this engine does not use it");
    }
    None
}

/// Current wall-clock time.
pub(crate) fn now() -> Timestamp {
    match std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => Timestamp {
            secs: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            nsecs: d.subsec_nanos(),
        },
        Err(e) => {
            let d = e.duration();
            Timestamp {
                secs: -i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
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

    /// Whether writes are refused (opened read-only, or turned read-only
    /// after an error).
    pub(crate) fn is_read_only(&self) -> bool {
        self.read_only || self.rw.read_only.load(Ordering::Acquire)
    }

    /// Current time, for inode timestamps.
    pub(crate) fn now(&self) -> Timestamp {
        now()
    }

    /// A new inode generation number.
    pub(crate) fn next_generation(&self) -> u32 {
        self.rw.generation.fetch_add(0x9E37_79B9, Ordering::Relaxed)
    }

    /// Writes file data straight to the device: `buf` at byte `skip` of
    /// block `block` (it may span following blocks). Not through the
    /// metadata cache; any cached copy of those blocks is dropped.
    pub(crate) fn write_data(&self, block: u64, skip: u64, buf: &[u8]) -> Result<()> {
        if self.is_read_only() {
            return Err(Error::ReadOnly);
        }
        let bs = u64::from(self.block_size);
        let len = buf.len() as u64;
        let end = skip.checked_add(len).map(|e| e.div_ceil(bs)).unwrap_or(0);
        if len == 0 {
            return Ok(());
        }
        if end == 0 || !self.blocks_valid(block, end) {
            return Err(Error::corrupt(
                format!("data write to blocks {block}+{end} outside the filesystem"),
                block,
            ));
        }
        let offset = block
            .checked_mul(bs)
            .and_then(|o| o.checked_add(skip))
            .ok_or_else(|| Error::corrupt(format!("block number {block} overflows"), block))?;
        // No flush may be writing a snapshot of these blocks (freed
        // metadata) while and after the data lands.
        let _gate = self.rw.flush_gate.read().unwrap_or_else(|e| e.into_inner());
        self.rw.wb().discard(block, block.saturating_add(end));
        if let Err(source) = self.dev.write_at(buf, offset) {
            self.write_failed("data write");
            return Err(Error::Io { offset, source });
        }
        self.rw.written.fetch_add(len, Ordering::Relaxed);
        for b in block..block.saturating_add(end) {
            self.blocks.remove(b);
        }
        Ok(())
    }

    /// fsync: writes back every committed metadata block and the
    /// superblock (counters), then flushes the device.
    pub(crate) fn flush(&self) -> Result<()> {
        if self.is_read_only() {
            return Ok(());
        }
        self.rw.wb().sb_dirty = false;
        self.write_back(true)?;
        self.dev
            .flush()
            .map_err(|source| Error::Io { offset: 0, source })
    }

    /// Periodic write-back (the FUSE adapter's flusher thread): writes the
    /// committed metadata blocks and, if it changed, the superblock,
    /// without a device flush. Nothing to do on a read-only mount.
    pub fn writeback(&self) -> Result<()> {
        if self.is_read_only() {
            return Ok(());
        }
        let dirty = std::mem::take(&mut self.rw.wb().sb_dirty);
        self.write_back(dirty)
    }

    /// Writes the write-back set and, with `with_sb`, the live superblock.
    /// On a journaled filesystem as one jbd2 transaction first (ordered
    /// mode: the commit's first flush makes the file data written so far
    /// durable before its commit block), then in place, then a checkpoint
    /// that empties the log: the log never holds a copy of a block older
    /// than the device's, so a freed metadata block reused for file data
    /// is never replayed over it (no revoke records are needed). Without a
    /// journal, in place as before.
    fn write_back(&self, with_sb: bool) -> Result<()> {
        let Some(log) = self.rw.journal.get() else {
            self.write_back_blocks(None)?;
            if with_sb {
                let mut live = self.rw.live_sb();
                self.write_super(&mut live)?;
            }
            return Ok(());
        };
        let sb_block = if with_sb {
            Some(self.superblock_block()?)
        } else {
            None
        };
        self.write_back_blocks(Some((log, sb_block)))
    }

    /// The block holding the superblock with the live superblock in it
    /// (s_wtime and s_kbytes_written brought up to date), to be logged.
    fn superblock_block(&self) -> Result<BlockCopy> {
        let bs = u64::from(self.block_size);
        let block = sbf::SUPERBLOCK_OFFSET / bs;
        let at = (sbf::SUPERBLOCK_OFFSET % bs) as usize;
        let mut data = vec![0u8; bs as usize];
        let offset = block * bs;
        self.dev
            .read_at(&mut data, offset)
            .map_err(|source| Error::Io { offset, source })?;
        let mut live = self.rw.live_sb();
        self.refresh_super(&mut live);
        if let Some(dst) = data.get_mut(at..at + live.raw.len()) {
            dst.copy_from_slice(&live.raw);
        }
        Ok((block, Arc::from(data)))
    }

    /// Bytes of committed metadata that trigger a write-back at commit:
    /// [`WRITEBACK_LIMIT`], or with a journal a quarter of the log (less
    /// room for descriptor blocks), as jbd2 commits at a quarter.
    fn writeback_limit(&self) -> usize {
        match self.rw.journal.get() {
            Some(log) => {
                let blocks = log.max_transaction() as usize;
                (blocks - blocks / 8)
                    .saturating_mul(self.block_size as usize)
                    .min(WRITEBACK_LIMIT)
            }
            None => WRITEBACK_LIMIT,
        }
    }

    /// Bytes of committed metadata not yet on the device.
    pub(crate) fn writeback_pending(&self) -> usize {
        self.rw.wb().bytes
    }

    /// Writes a snapshot of the write-back set in block order, adjacent
    /// blocks coalesced, then drops from the set every block no commit
    /// replaced meanwhile. A failed write turns the mount read-only; the
    /// blocks stay in the set (reads keep seeing them).
    ///
    /// With `journal` (the log and maybe the superblock's block), the
    /// snapshot is committed to the log first and checkpointed after.
    fn write_back_blocks(&self, journal: Option<(&Log, Option<BlockCopy>)>) -> Result<()> {
        let _gate = self
            .rw
            .flush_gate
            .write()
            .unwrap_or_else(|e| e.into_inner());
        let mut snapshot: Vec<(u64, Arc<[u8]>)> = self
            .rw
            .wb()
            .blocks
            .iter()
            .map(|(b, d)| (*b, d.clone()))
            .collect();
        let pending = snapshot.len();
        let mut log = None;
        if let Some((l, sb_block)) = journal {
            if let Some((b, data)) = sb_block {
                match snapshot.binary_search_by_key(&b, |(x, _)| *x) {
                    Ok(i) => snapshot[i] = (b, data),
                    Err(i) => snapshot.insert(i, (b, data)),
                }
            }
            log = Some(l);
        }
        if snapshot.is_empty() {
            return Ok(());
        }
        let mut seq = None;
        if let Some(l) = log {
            let blocks: Vec<(u64, &[u8])> = snapshot.iter().map(|(b, d)| (*b, &d[..])).collect();
            match l.commit(&blocks, &[]) {
                Ok(s) => seq = Some(s),
                Err(Error::NoSpace) => tracing::warn!(
                    "{} metadata blocks do not fit in the journal: written in place without it",
                    blocks.len()
                ),
                Err(e) => {
                    self.write_failed("journal commit");
                    return Err(e);
                }
            }
        }
        let bs = u64::from(self.block_size);
        let write = |start: u64, data: &[u8]| -> Result<()> {
            if data.is_empty() {
                return Ok(());
            }
            let offset = start.saturating_mul(bs);
            self.dev.write_at(data, offset).map_err(|source| {
                self.write_failed("metadata write");
                Error::Io { offset, source }
            })?;
            self.rw
                .written
                .fetch_add(data.len() as u64, Ordering::Relaxed);
            Ok(())
        };
        let mut run: Vec<u8> = Vec::new();
        let mut run_start = 0u64;
        let mut next = u64::MAX;
        for (b, data) in &snapshot {
            if *b != next || run.len() >= MAX_WRITE_RUN {
                write(run_start, &run)?;
                run.clear();
                run_start = *b;
            }
            run.extend_from_slice(data);
            next = b.saturating_add(1);
        }
        write(run_start, &run)?;
        if let (Some(l), Some(seq)) = (log, seq) {
            // The superblock's cached block is stale now.
            self.blocks
                .remove(sbf::SUPERBLOCK_OFFSET / u64::from(self.block_size));
            let in_place: Vec<(u64, u32)> = snapshot.iter().map(|(b, _)| (*b, seq)).collect();
            l.mark_in_place(&in_place);
            if let Err(e) = l.checkpoint() {
                self.write_failed("journal checkpoint");
                return Err(e);
            }
        }
        if pending == 0 {
            return Ok(());
        }
        let mut wb = self.rw.wb();
        for (b, data) in snapshot {
            if wb.blocks.get(&b).is_some_and(|d| Arc::ptr_eq(d, &data)) {
                wb.blocks.remove(&b);
                wb.bytes = wb.bytes.saturating_sub(data.len());
            }
        }
        Ok(())
    }

    /// The committed-but-unwritten copy of `block`, if any.
    pub(crate) fn writeback_block(&self, block: u64) -> Option<Arc<[u8]>> {
        self.rw.wb().blocks.get(&block).cloned()
    }

    /// Copies the committed-but-unwritten blocks overlapping the device
    /// range starting at byte `skip` of `block` into `buf` (data read
    /// straight from the device may be older than them).
    pub(crate) fn overlay_writeback(&self, block: u64, skip: u64, buf: &mut [u8]) {
        let bs = u64::from(self.block_size);
        let Some(start) = block.checked_mul(bs).and_then(|o| o.checked_add(skip)) else {
            return;
        };
        let Some(end) = start.checked_add(buf.len() as u64) else {
            return;
        };
        let wb = self.rw.wb();
        if wb.blocks.is_empty() {
            return;
        }
        for (b, data) in wb.blocks.range(start / bs..end.div_ceil(bs)) {
            let bstart = b.saturating_mul(bs);
            let bend = bstart.saturating_add(data.len() as u64);
            let (from, to) = (bstart.max(start), bend.min(end));
            if from >= to {
                continue;
            }
            let src = data.get((from - bstart) as usize..(to - bstart) as usize);
            let dst = buf.get_mut((from - start) as usize..(to - start) as usize);
            if let (Some(src), Some(dst)) = (src, dst) {
                dst.copy_from_slice(src);
            }
        }
    }

    /// Unmount: waits for the running transaction, marks the superblock
    /// clean (s_state as found at mount, plus ERROR_FS if an error was
    /// seen; ORPHAN_PRESENT cleared when the orphan file is empty), writes
    /// it with s_wtime and s_kbytes_written, flushes the device, and turns
    /// the mount read-only. A read-only mount does nothing.
    pub fn shutdown(&self) -> Result<()> {
        if self.read_only {
            return Ok(());
        }
        let _lock = self.rw.txn_lock.lock().unwrap_or_else(|e| e.into_inner());
        if self.rw.read_only.swap(true, Ordering::AcqRel) && !self.rw.errors.load(Ordering::Acquire)
        {
            // Already shut down.
            return Ok(());
        }
        let orphans_empty = self.orphan_file_empty().unwrap_or(false);
        {
            let mut live = self.rw.live_sb();
            let mut state = live.state_at_mount;
            if self.rw.errors.load(Ordering::Acquire) {
                state |= sbf::STATE_ERROR_FS;
            }
            live.sb.s_state = state;
            if orphans_empty && live.sb.s_last_orphan == 0 {
                live.sb.s_feature_ro_compat &= !sbf::RO_COMPAT_ORPHAN_PRESENT;
            }
        }
        self.rw.wb().sb_dirty = false;
        // The last transaction, with the clean superblock (still marked
        // needs_recovery while the log may hold it).
        if let Err(e) = self.write_back(true) {
            // write_failed marked the error; the superblock stays not-clean.
            tracing::error!("unmount: metadata write-back failed: {e}");
            return Err(e);
        }
        let mut live = self.rw.live_sb();
        if let Some(log) = self.rw.journal.get() {
            // Final checkpoint, empty log: no recovery needed any more.
            if let Err(e) = log.finish() {
                self.write_failed("journal finish");
                return Err(e);
            }
            live.sb.s_feature_incompat &= !sbf::INCOMPAT_RECOVER;
        }
        self.write_super(&mut live)?;
        drop(live);
        self.dev
            .flush()
            .map_err(|source| Error::Io { offset: 0, source })?;
        tracing::info!("filesystem marked clean and flushed");
        Ok(())
    }

    /// Read-write mount setup (ext4_setup_super): live descriptors and
    /// superblock counters recomputed from them, s_state without VALID_FS
    /// while mounted, s_mnt_count + 1, s_mtime, ORPHAN_PRESENT with the
    /// orphan file; orphans left by a crash make the mount read-only.
    pub(super) fn start_rw(&self) -> Result<()> {
        if self.is_read_only() {
            // Descriptor checksums failed while loading: nothing is written.
            return Ok(());
        }
        if let Some(why) = self.orphans_pending()? {
            tracing::warn!(
                "serving read-only: {why}; run e2fsck or mount with the kernel driver once"
            );
            self.rw.read_only.store(true, Ordering::Release);
            return Ok(());
        }
        *self.rw.gdt.write().unwrap_or_else(|e| e.into_inner()) = self.groups.clone();
        let (free_blocks, free_inodes) = self.rw.free_counts(&self.groups);
        let mut live = self.rw.live_sb();
        let state = live.sb.s_state;
        if state & sbf::STATE_VALID_FS == 0 {
            tracing::warn!("mounting a filesystem that was not cleanly unmounted; e2fsck advised");
        } else if state & sbf::STATE_ERROR_FS != 0 {
            tracing::warn!("mounting a filesystem with errors; e2fsck advised");
        }
        let s = &mut live.sb;
        s.s_free_blocks_count = free_blocks << self.sb.cluster_bits();
        s.s_free_inodes_count = u32::try_from(free_inodes).unwrap_or(u32::MAX);
        s.s_state &= !sbf::STATE_VALID_FS;
        if s.s_max_mnt_count == 0 {
            s.s_max_mnt_count = EXT4_DFL_MAX_MNT_COUNT;
        }
        s.s_mnt_count = s.s_mnt_count.wrapping_add(1);
        s.s_mtime = now().secs;
        if self.sb.has_compat(sbf::COMPAT_ORPHAN_FILE) {
            s.s_feature_ro_compat |= sbf::RO_COMPAT_ORPHAN_PRESENT;
        }
        let journaled = self.sb.has_compat(sbf::COMPAT_HAS_JOURNAL);
        if journaled {
            // Set for the whole read-write mount, as the kernel does; the
            // log is empty (replay ran at open), so a crash before the
            // first commit replays nothing.
            s.s_feature_incompat |= sbf::INCOMPAT_RECOVER;
        }
        let sb = s.clone();
        self.write_super(&mut live)?;
        drop(live);
        if journaled {
            let log = Log::open(Journal::load(self)?, &sb)?;
            tracing::info!(
                "journaling metadata (jbd2, {} blocks per transaction at most)",
                log.max_transaction()
            );
            let _ = self.rw.journal.set(log);
        }
        self.dev
            .flush()
            .map_err(|source| Error::Io { offset: 0, source })?;
        Ok(())
    }

    /// Writes the live superblock (ext4_commit_super): s_wtime now,
    /// s_kbytes_written updated, checksum recomputed. The cached copy of
    /// the block holding it is dropped.
    pub(super) fn write_super(&self, live: &mut LiveSb) -> Result<()> {
        self.refresh_super(live);
        let raw = &live.raw;
        if let Err(source) = self.dev.write_at(raw, sbf::SUPERBLOCK_OFFSET) {
            self.write_failed("superblock write");
            return Err(Error::Io {
                offset: sbf::SUPERBLOCK_OFFSET,
                source,
            });
        }
        self.blocks
            .remove(sbf::SUPERBLOCK_OFFSET / u64::from(self.block_size));
        Ok(())
    }

    /// Brings s_wtime and s_kbytes_written up to date and serializes the
    /// live superblock (checksum included) into its 1024 bytes.
    fn refresh_super(&self, live: &mut LiveSb) {
        let written = self.rw.written.load(Ordering::Relaxed);
        live.sb.s_wtime = now().secs;
        live.sb.s_kbytes_written = live.kbytes_at_mount.saturating_add(written >> 10);
        let LiveSb { sb, raw, .. } = live;
        sb.write(raw);
    }

    /// A device write failed: the mount turns read-only and the superblock
    /// will not be marked clean.
    pub(crate) fn write_failed(&self, what: &str) {
        tracing::error!("{what} failed: the filesystem is now read-only");
        self.rw.errors.store(true, Ordering::Release);
        self.rw.read_only.store(true, Ordering::Release);
    }

    /// Corruption found on a write path: read-only from now on
    /// (errors=remount-ro), logged once per call.
    pub(crate) fn corrupt_on_write(&self, e: &Error) {
        tracing::error!("{e}: the filesystem is now read-only");
        self.rw.errors.store(true, Ordering::Release);
        self.rw.read_only.store(true, Ordering::Release);
    }

    /// Block number and byte offset of inode `ino` in its inode table.
    pub(crate) fn inode_location(&self, ino: Ino) -> Result<(u64, usize)> {
        if ino == 0 || ino > self.sb.s_inodes_count {
            return Err(Error::corrupt(
                format!("inode number {ino} out of range"),
                0,
            ));
        }
        let ipg = self.sb.s_inodes_per_group;
        let group = (ino - 1) / ipg;
        let index = (ino - 1) % ipg;
        let gd = self.group(group)?;
        let isz = u64::from(self.sb.s_inode_size);
        let byte = u64::from(index) * isz;
        let bs = u64::from(self.block_size);
        let block = gd
            .bg_inode_table
            .checked_add(byte / bs)
            .ok_or_else(|| Error::corrupt(format!("inode {ino}: inode table overflows"), 0))?;
        Ok((block, (byte % bs) as usize))
    }
}

/// The kernel's EXT4_DFL_MAX_MNT_COUNT.
const EXT4_DFL_MAX_MNT_COUNT: i16 = 20;

/// Largest number of bytes one coalesced device write carries at commit.
const MAX_WRITE_RUN: usize = 1 << 20;

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
            Err(e) => {
                if matches!(e, Error::Corrupt { .. }) {
                    self.fs.corrupt_on_write(&e);
                }
                return Err(e);
            }
        }
        let fs = self.fs;
        // Into the write-back set and the caches; the device gets the
        // blocks at the next write-back (see the module documentation).
        let bs = fs.block_size as usize;
        let pending = {
            let mut wb = fs.rw.wb();
            for (b, len) in &self.freed {
                let end = b.saturating_add(u64::from(*len));
                wb.discard(*b, end);
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
        if pending > fs.writeback_limit() {
            fs.writeback()?;
        }
        Ok(())
    }

    /// Folds inodes, bitmap checksums and descriptors into the dirty
    /// blocks.
    fn prepare(&mut self) -> Result<()> {
        let fs = self.fs;
        let seed = fs.csum_seed;
        let metadata_csum = fs.has_metadata_csum();
        // Inodes into their table blocks.
        let inodes = std::mem::take(&mut self.inodes);
        let isz = usize::from(fs.sb.s_inode_size);
        for inode in inodes.values() {
            let (block, off) = fs.inode_location(inode.ino)?;
            let buf = self.block_mut(block)?;
            let slot = buf.get_mut(off..off + isz).ok_or_else(|| {
                Error::corrupt(format!("inode {}: beyond its block", inode.ino), block)
            })?;
            inode.write(slot, metadata_csum.then_some(seed));
        }
        // Keep the serialized raw bytes in the cached inodes.
        self.inodes = inodes;
        for inode in self.inodes.values_mut() {
            let (block, off) = fs.inode_location(inode.ino)?;
            if let Some(raw) = self.blocks.get(&block).and_then(|b| b.get(off..off + isz)) {
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
        let dpb = fs.sb.desc_per_block().max(1);
        let dsize = usize::from(fs.sb.s_desc_size.max(sbf::MIN_DESC_SIZE));
        let groups = std::mem::take(&mut self.groups);
        for (g, d) in &groups {
            let loc = fs.descriptor_loc(u64::from(g / dpb));
            let off = (g % dpb) as usize * dsize;
            let buf = self.block_mut(loc)?;
            let slot = buf
                .get_mut(off..off + dsize)
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

    use super::super::alloc::tests::{RwImage, assert_fsck_clean, dumpe2fs_field};
    use super::super::testutil::*;
    use super::super::{FileKind, ROOT_INO};
    use super::*;

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
        let mut txn = fs.begin().unwrap();
        txn.free_blocks(blk, 1).unwrap();
        txn.commit().unwrap();
        let mut txn = fs.begin().unwrap();
        let (again, _) = txn.alloc_blocks(blk, 1, false).unwrap();
        txn.commit().unwrap();
        assert_eq!(again, blk);
        fs.write_data(blk, 0, b"data").unwrap();
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
            super::super::OpenOptions { read_only: false },
        )
        .unwrap();
        assert!(fs.info().read_only);
        assert!(matches!(fs.begin(), Err(Error::ReadOnly)));
        fs.shutdown().unwrap();
    }

    /// Corruption on a write path turns the mount read-only: a double
    /// free is refused, the transaction changes nothing, and the
    /// superblock keeps the error state at unmount.
    #[test]
    fn double_free_goes_read_only() {
        if !have_mkfs() {
            return;
        }
        let im = RwImage::new("dfree", &["-b", "4096", "-g", "4096"]);
        let fs = im.open();
        let mut txn = fs.begin().unwrap();
        let ino = txn.alloc_inode(ROOT_INO, FileKind::RegularFile).unwrap();
        txn.free_inode(ino, false).unwrap();
        assert!(matches!(
            txn.free_inode(ino, false),
            Err(Error::Corrupt { .. })
        ));
        drop(txn);
        assert!(fs.is_read_only());
        assert!(matches!(fs.begin(), Err(Error::ReadOnly)));
        fs.shutdown().unwrap();
        let img = im.save();
        assert!(dumpe2fs_field(img, "Filesystem state").contains("with errors"));
    }
}
