//! Mount lifecycle and feature policy: which features a filesystem opens
//! with at all (`check_features`) and read-write (`rw_refusal`), the
//! write-side state of a mount (`RwState`, the live superblock), read-write
//! start (ext4_setup_super) and unmount, superblock writes, and turning the
//! mount read-only after an error.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use super::fault::Faults;
use super::journal::Journal;
use super::journal::log::Log;
use super::ondisk::group_desc::GroupDesc;
use super::ondisk::superblock::{self as sbf, Superblock};
use super::txn::now;
use super::writeback::WriteBack;
use super::{Error, Ext4, Ino, Result};

/// Write-side state of a mounted filesystem.
pub(crate) struct RwState {
    /// The one transaction lock.
    pub(super) txn_lock: Mutex<()>,
    /// Live group descriptors (counters, flags, bitmap checksums). Empty on
    /// a read-only mount (the descriptors as opened are then current).
    pub(super) gdt: RwLock<Vec<GroupDesc>>,
    /// Live superblock.
    pub(super) sb: Mutex<LiveSb>,
    /// Read-only after an error, errors=, lost writes, MMP fencing
    /// (shared with the MMP thread).
    pub(super) faults: Arc<Faults>,
    /// Next inode generation.
    pub(super) generation: AtomicU32,
    /// Unlinked inodes (links_count 0) still open through FUSE: readable
    /// and writable by number until `release_inode` (the FUSE adapter
    /// calls it at the last forget or release).
    pub(super) held_orphans: Mutex<BTreeSet<Ino>>,
    /// Regular files that may still take inline data (the kernel's
    /// EXT4_STATE_MAY_INLINE_DATA): see `file::inline`.
    pub(super) may_inline: Mutex<std::collections::HashSet<Ino>>,
    /// Xattr blocks that may be shared (the kernel's mbcache): see
    /// `xattr::share`.
    pub(super) xattr_index: Mutex<crate::ext4::xattr::share::BlockIndex>,
    /// Inodes the kernel would mark S_NOSEC: see `xattr::share`.
    pub(super) nosec: Mutex<std::collections::HashSet<Ino>>,
    /// Inodes whose POSIX ACLs the VFS has cached: see `xattr::share`.
    pub(super) acl_cached: Mutex<std::collections::HashSet<Ino>>,
    /// Bytes written to the device since the mount (s_kbytes_written).
    pub(super) written: AtomicU64,
    /// Committed metadata blocks not yet on the device.
    pub(super) wb: Mutex<WriteBack>,
    /// Held for writing while a write-back writes to the device, for
    /// reading by `write_data`: a flush never writes a snapshot of a freed
    /// metadata block over file data written after it was freed, and two
    /// flushes never reorder versions of a block.
    pub(super) flush_gate: RwLock<()>,
    /// The journal's log on a journaled filesystem, from `start_rw` on.
    pub(super) journal: std::sync::OnceLock<Log>,
    /// Held for reading by a file read from its inode snapshot to its last
    /// byte and by a write while its data goes to the device, for writing
    /// by a commit that frees blocks while it publishes: no block is read
    /// or written after it was freed, and perhaps handed to another file,
    /// by someone who mapped it before (see `Ext4::read`, `file::block_write`).
    pub(super) free_gate: RwLock<()>,
    /// Where each inode on the on-disk orphan list was linked from (its
    /// predecessor's number, 0 for the superblock's head), so that taking
    /// one off costs no walk of the list (the kernel keeps an in-memory
    /// list for the same reason). Hints only: each is checked against the
    /// inodes before it is used, and a stale one falls back to the walk.
    pub(crate) orphan_prev: Mutex<std::collections::HashMap<Ino, Ino>>,
    /// Per-inode content locks: see `content_lock`.
    pub(crate) content_locks: crate::ext4::content_lock::ContentLocks,
}

/// The live superblock and its 1024 on-disk bytes (reserved areas kept).
pub(crate) struct LiveSb {
    pub(crate) sb: Superblock,
    pub(super) raw: Vec<u8>,
    /// s_state when mounted, restored (plus error bits) on unmount.
    state_at_mount: u16,
    /// s_kbytes_written when mounted.
    kbytes_at_mount: u64,
}

impl RwState {
    pub(super) fn new(sb: &Superblock, raw: Vec<u8>, faults: Arc<Faults>) -> RwState {
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
            faults,
            generation: AtomicU32::new(hashed),
            held_orphans: Mutex::new(BTreeSet::new()),
            may_inline: Mutex::new(std::collections::HashSet::new()),
            xattr_index: Mutex::new(Default::default()),
            nosec: Mutex::new(std::collections::HashSet::new()),
            acl_cached: Mutex::new(std::collections::HashSet::new()),
            written: AtomicU64::new(0),
            wb: Mutex::new(WriteBack::default()),
            flush_gate: RwLock::new(()),
            journal: std::sync::OnceLock::new(),
            free_gate: RwLock::new(()),
            orphan_prev: Mutex::new(std::collections::HashMap::new()),
            content_locks: Default::default(),
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

/// The feature policy: unknown INCOMPAT refuses, naming the bits; an
/// external journal device is not a filesystem; unknown RO_COMPAT allows
/// read-only only. (needs_recovery: see `journal::recover_at_open`.)
pub(super) fn check_features(sb: &Superblock, read_only: bool) -> Result<()> {
    use sbf::{FeatureKind, feature_names};
    if sb.has_incompat(sbf::INCOMPAT_JOURNAL_DEV) {
        return Err(Error::Incompatible(
            "this is an external ext3/ext4 journal device, not a filesystem".into(),
        ));
    }
    let unknown = sb.s_feature_incompat & !sbf::INCOMPAT_SUPPORTED;
    if unknown != 0 {
        return Err(Error::Incompatible(format!(
            "unsupported incompat feature(s): {unknown:#x} ({})",
            feature_names(FeatureKind::Incompat, unknown).join(", ")
        )));
    }
    if !read_only {
        let unknown = sb.s_feature_ro_compat & !sbf::RO_COMPAT_SUPPORTED;
        if unknown != 0 {
            return Err(Error::Incompatible(format!(
                "unsupported ro_compat feature(s) {unknown:#x} ({}): mount read-only",
                feature_names(FeatureKind::RoCompat, unknown).join(", ")
            )));
        }
        if sb.has_compat(sbf::COMPAT_HAS_JOURNAL) && sb.s_journal_inum == 0 {
            return Err(Error::Incompatible(
                "the filesystem uses an external journal device: mount read-only".into(),
            ));
        }
    }
    Ok(())
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
    // Cluster allocation (cluster.rs) assumes what the kernel requires of
    // bigalloc: extents (ext4_fill_super refuses bigalloc without them),
    // and clusters aligned on block 0.
    if sb.has_ro_compat(sbf::RO_COMPAT_BIGALLOC)
        && (!sb.has_incompat(sbf::INCOMPAT_EXTENTS) || sb.s_first_data_block != 0)
    {
        return Some("writing is not supported with bigalloc without extents, or with a first data block other than 0".into());
    }
    if sb.has_compat(sbf::COMPAT_FAST_COMMIT) && sb.has_compat(sbf::COMPAT_HAS_JOURNAL) {
        // Harmless: with no journal writes there is nothing to fast-commit.
        tracing::debug!("fast_commit is on; this engine does not use it");
    }
    None
}

/// The kernel's EXT4_DFL_MAX_MNT_COUNT.
const EXT4_DFL_MAX_MNT_COUNT: i16 = 20;

impl Ext4 {
    /// Whether writes are refused (opened read-only, or turned read-only
    /// after an error).
    pub(crate) fn is_read_only(&self) -> bool {
        self.read_only || self.rw.faults.is_read_only()
    }

    /// Unmount: waits for the running transaction, marks the superblock
    /// clean (s_state as found at mount, plus ERROR_FS if an error was
    /// seen; ORPHAN_PRESENT cleared when the orphan file is empty), writes
    /// it with s_wtime and s_kbytes_written, flushes the device, and turns
    /// the mount read-only. A read-only mount does nothing. Then the MMP
    /// block, if claimed, gets the clean sequence (after the last write,
    /// and whatever the mount's state: a mount served read-only, or whose
    /// last writes failed, is over all the same, as the kernel's kmmpd
    /// has it; a fenced one writes nothing, see `mmp`).
    pub fn shutdown(&self) -> Result<()> {
        let result = self.shutdown_writes();
        self.release_mmp();
        result
    }

    /// Writes the clean sequence to the MMP block if this mount claimed it
    /// (stops the update thread; a fenced mount writes nothing). For a
    /// mount that is over without [`Ext4::shutdown`]: one served
    /// read-only from the start still holds the claim of its read-write
    /// open. Idempotent.
    pub fn release_mmp(&self) {
        if let Some(mmp) = &self.mmp {
            mmp.release();
        }
    }

    fn shutdown_writes(&self) -> Result<()> {
        if self.read_only {
            return Ok(());
        }
        let _lock = self.rw.txn_lock.lock().unwrap_or_else(|e| e.into_inner());
        let faults = &self.rw.faults;
        if faults.is_fenced() {
            // Another node owns the filesystem: not a byte more.
            return Ok(());
        }
        if faults.swap_read_only() && !faults.has_errors() {
            // Already shut down.
            return Ok(());
        }
        let orphans_empty = self.orphan_file_empty().unwrap_or(false);
        {
            let mut live = self.rw.live_sb();
            let mut state = live.state_at_mount;
            if faults.has_errors() || live.sb.s_state & sbf::STATE_ERROR_FS != 0 {
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
                self.write_failed("journal finish", &e);
                return Err(e);
            }
            live.sb.s_feature_incompat &= !sbf::INCOMPAT_RECOVER;
        }
        self.write_super(&mut live)?;
        drop(live);
        self.flush_device()?;
        tracing::info!("filesystem marked clean and flushed");
        Ok(())
    }

    /// Read-write mount setup (ext4_setup_super): live descriptors and
    /// superblock counters recomputed from them, s_state without VALID_FS
    /// while mounted, s_mnt_count + 1, s_mtime, ORPHAN_PRESENT with the
    /// orphan file; then orphans left by a crash are cleaned up
    /// (`cleanup_orphans`; a list that fails its checks serves read-only).
    pub(super) fn start_rw(&self) -> Result<()> {
        if self.is_read_only() {
            // Descriptor checksums failed while loading: nothing is written.
            return Ok(());
        }
        // Orphans an unclean unmount left, checked before anything is
        // written; cleaned up once the mount is started.
        let orphans = match self.pending_orphans() {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!(
                    "serving read-only: orphan inodes cannot be cleaned up: {e}; run e2fsck"
                );
                self.rw.faults.set_read_only();
                return Ok(());
            }
        };
        if !orphans.is_empty() && self.sb.s_state & sbf::STATE_ERROR_FS != 0 {
            // The kernel skips the cleanup on a filesystem with errors.
            tracing::warn!(
                "serving read-only: {} orphan inode(s) on a filesystem with errors; run e2fsck",
                orphans.len()
            );
            self.rw.faults.set_read_only();
            return Ok(());
        }
        // Quota files are read through before anything is written: one
        // that fails its checks cannot be kept exact (the kernel refuses
        // such a mount; this serves it read-only).
        if let Err(e) = self.check_quota_files() {
            tracing::warn!("serving read-only: the quota files cannot be updated: {e}; run e2fsck");
            self.rw.faults.set_read_only();
            return Ok(());
        }
        let journaled = self.sb.has_compat(sbf::COMPAT_HAS_JOURNAL);
        // Before needs_recovery is set below: a log the filesystem did not
        // ask to replay is marked empty on disk first, so that a crash
        // once the flag is set finds nothing stale to replay.
        let journal = if journaled {
            Some(Journal::load(self)?.skip_recovery()?)
        } else {
            None
        };
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
        if journaled {
            // Set for the whole read-write mount, as the kernel does; the
            // log is empty (replayed at open, or skipped above), so a
            // crash before the first commit replays nothing.
            s.s_feature_incompat |= sbf::INCOMPAT_RECOVER;
        }
        let sb = s.clone();
        self.write_super(&mut live)?;
        drop(live);
        if let Some(journal) = journal {
            let log = Log::open(journal, &sb)?;
            tracing::info!(
                "journaling metadata (jbd2, {} blocks per transaction at most)",
                log.max_transaction()
            );
            let _ = self.rw.journal.set(log);
        }
        self.dev
            .flush()
            .map_err(|source| Error::Io { offset: 0, source })?;
        if !orphans.is_empty() {
            let (freed, truncated) = self.cleanup_orphans(&orphans);
            tracing::info!("orphan cleanup: {freed} inode(s) freed, {truncated} truncated");
        }
        Ok(())
    }

    /// Writes the live superblock (ext4_commit_super): s_wtime now,
    /// s_kbytes_written updated, checksum recomputed. The cached copy of
    /// the block holding it is dropped.
    pub(super) fn write_super(&self, live: &mut LiveSb) -> Result<()> {
        self.refresh_super(live);
        let raw = &live.raw;
        if let Err(source) = self.dev.write_at(raw, sbf::SUPERBLOCK_OFFSET) {
            self.write_failed("superblock write", &source);
            return Err(Error::Io {
                offset: sbf::SUPERBLOCK_OFFSET,
                source,
            });
        }
        self.blocks.remove(self.superblock_blocknr());
        Ok(())
    }

    /// Brings s_wtime and s_kbytes_written up to date and serializes the
    /// live superblock (checksum included) into its 1024 bytes.
    pub(super) fn refresh_super(&self, live: &mut LiveSb) {
        let written = self.rw.written.load(Ordering::Relaxed);
        live.sb.s_wtime = now().secs;
        live.sb.s_kbytes_written = live.kbytes_at_mount.saturating_add(written >> 10);
        let LiveSb { sb, raw, .. } = live;
        sb.write(raw);
    }

    /// A device write or flush failed: the mount turns read-only, the
    /// superblock will not be marked clean, and every later fsync fails.
    pub(crate) fn write_failed(&self, what: &str, error: &dyn std::fmt::Display) {
        self.rw
            .faults
            .write_failed(format!("{what} failed: {error}"));
    }

    /// Why a read-write mount turned read-only while serving, or the first
    /// error it met (a failed device write, corruption, an MMP conflict).
    pub fn fault(&self) -> Option<&str> {
        self.rw.faults.first()
    }
}
