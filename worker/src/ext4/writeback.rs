//! Write-back: committed metadata on its way to the device, and file data
//! writes.
//!
//! `commit` does not write to the device: it moves the dirty blocks
//! (`Txn::dirty_blocks`) into the filesystem's
//! write-back set and the block cache, and marks the superblock dirty. The
//! write-back set is authoritative for reads the cache misses
//! (`Ext4::read_block`, `Ext4::read_blocks_direct`) until the blocks are on
//! the device. A write-back runs on fsync and fsyncdir (`Ext4::flush`), at
//! unmount (`shutdown`), when the set exceeds [`Ext4::writeback_limit`] at
//! commit (a quarter of the journal, or [`WRITEBACK_LIMIT`]), and from the
//! FUSE adapter's periodic flusher (every 5 s, as jbd2's commit interval).
//!
//! With a journal, each write-back is one jbd2 transaction: the set and the
//! superblock's block are logged (the log's first flush makes the file data
//! written so far durable: ordered mode), the commit block is flushed, and
//! the blocks are written in place (coalesced, in block order) without a
//! flush of their own. The log is checkpointed (in-place blocks flushed,
//! its tail moved) only when it needs room and at unmount, as jbd2 does,
//! so an fsync costs the commit's two device flushes; a block freed while
//! a live transaction holds a copy of it is revoked by the next commit, so
//! replay never writes that copy over the block's next contents. A crash
//! at any point leaves either the old state or, after replay, the new one.
//! Without a journal the blocks are written in place only, and a crash
//! loses the metadata of the last few seconds (e2fsck then repairs the
//! filesystem). Either way file data is written directly by `write_data`,
//! before the metadata pointing at it, and every fsync'd byte and its
//! metadata are on the device when fsync returns.
//!
//! Lock order for write-back: the transaction lock (when a commit flushes)
//! -> `RwState::flush_gate` (write for a flush, read for a data write) ->
//! the superblock mutex -> `RwState::wb` (held briefly, never across I/O).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::journal::log::Log;
use super::ondisk::superblock as sbf;
use super::util::copy_overlap;
use super::{Error, Ext4, Result};

/// A block number and its contents.
type BlockCopy = (u64, Arc<[u8]>);

/// Committed metadata not yet on the device (see the module docs).
#[derive(Default)]
pub(crate) struct WriteBack {
    pub(super) blocks: BTreeMap<u64, Arc<[u8]>>,
    /// Bytes held in `blocks`.
    pub(super) bytes: usize,
    /// The live superblock changed since it was last written.
    pub(super) sb_dirty: bool,
    /// Blocks freed by committed transactions since the last write-back
    /// took its snapshot, as disjoint `[first, end)` ranges: until a
    /// journal commit makes the free durable, the device's metadata may
    /// still point at them, so file data must not be written there first
    /// (see `Ext4::write_data`).
    freed: BTreeMap<u64, u64>,
}

impl WriteBack {
    /// Drops every pending block in `[first, end)` (freed blocks, or
    /// blocks file data is about to overwrite).
    pub(super) fn discard(&mut self, first: u64, end: u64) {
        self.discard_pending(first, end);
    }

    /// Records `[first, end)` as freed by a committed transaction: its
    /// pending copies go, and the range is remembered (merged) until the
    /// next write-back.
    pub(super) fn freed(&mut self, first: u64, end: u64) {
        self.discard_pending(first, end);
        let (mut first, mut end) = (first, end);
        if let Some((&s, &e)) = self.freed.range(..=first).next_back()
            && e >= first
        {
            first = s;
            end = end.max(e);
            self.freed.remove(&s);
        }
        while let Some((&s, &e)) = self.freed.range(first..).next()
            && s <= end
        {
            end = end.max(e);
            self.freed.remove(&s);
        }
        self.freed.insert(first, end);
    }

    /// Whether any block of `[first, end)` was freed since the last
    /// write-back's snapshot (the ranges are disjoint: only the last one
    /// starting before `end` can overlap).
    fn was_freed(&self, first: u64, end: u64) -> bool {
        self.freed
            .range(..end)
            .next_back()
            .is_some_and(|(_, &e)| e > first)
    }

    fn discard_pending(&mut self, first: u64, end: u64) {
        let dead: Vec<u64> = self.blocks.range(first..end).map(|(k, _)| *k).collect();
        for k in dead {
            if let Some(d) = self.blocks.remove(&k) {
                self.bytes = self.bytes.saturating_sub(d.len());
            }
        }
    }

    pub(super) fn insert(&mut self, block: u64, data: Arc<[u8]>) {
        self.bytes = self.bytes.saturating_add(data.len());
        if let Some(old) = self.blocks.insert(block, data) {
            self.bytes = self.bytes.saturating_sub(old.len());
        }
    }
}

/// Dirty metadata held in memory before a commit writes it back itself
/// (the kernel's dirty_background bytes, in spirit).
pub(crate) const WRITEBACK_LIMIT: usize = 64 << 20;

/// Largest number of bytes one coalesced device write carries at commit.
const MAX_WRITE_RUN: usize = 1 << 20;

impl Ext4 {
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
        // A block freed by a transaction that is not durable yet may still
        // be metadata (an extent or indirect block) or another file's data
        // on the device: commit the free before overwriting it, as jbd2
        // keeps freed blocks unallocatable until their transaction commits.
        let freed = self.rw.wb().was_freed(block, block.saturating_add(end));
        if freed && self.rw.journal.get().is_some() {
            self.writeback()?;
        }
        // No flush may be writing a snapshot of these blocks (freed
        // metadata) while and after the data lands.
        let _gate = self.rw.flush_gate.read().unwrap_or_else(|e| e.into_inner());
        self.rw.wb().discard(block, block.saturating_add(end));
        if let Err(source) = self.dev.write_at(buf, offset) {
            self.write_failed("data write", &source);
            return Err(Error::Io { offset, source });
        }
        self.rw.written.fetch_add(len, Ordering::Relaxed);
        for b in block..block.saturating_add(end) {
            self.blocks.remove(b);
        }
        Ok(())
    }

    /// fsync: writes back every committed metadata block and the
    /// superblock (counters), then flushes the device. Once a device write
    /// or flush has failed, every fsync fails: what was written since the
    /// last good one may be lost.
    pub(crate) fn flush(&self) -> Result<()> {
        if self.rw.faults.write_lost() {
            return Err(Error::WriteLost);
        }
        if self.is_read_only() {
            return Ok(());
        }
        let changed = {
            let mut wb = self.rw.wb();
            std::mem::take(&mut wb.sb_dirty) || !wb.blocks.is_empty()
        };
        // A journal commit's flushes make everything durable. With nothing
        // committed since the last write-back, only file data written
        // since may need the device flush (the kernel's fsync of an inode
        // whose transaction has committed).
        if !changed || !self.write_back(true)? {
            self.flush_device()?;
        }
        Ok(())
    }

    /// The device's cache flush; a failure counts as a lost write.
    pub(super) fn flush_device(&self) -> Result<()> {
        self.dev.flush().map_err(|source| {
            self.write_failed("device flush", &source);
            Error::Io { offset: 0, source }
        })
    }

    /// Periodic write-back (the FUSE adapter's flusher thread): writes the
    /// committed metadata blocks and, if it changed, the superblock,
    /// without a device flush. Nothing to do on a read-only mount.
    pub fn writeback(&self) -> Result<()> {
        if self.is_read_only() {
            return Ok(());
        }
        let dirty = std::mem::take(&mut self.rw.wb().sb_dirty);
        self.write_back(dirty).map(drop)
    }

    /// Writes the write-back set and, with `with_sb`, the live superblock.
    /// On a journaled filesystem as one jbd2 transaction first (ordered
    /// mode: the commit's first flush makes the file data written so far
    /// durable before its commit block), then in place; without a journal,
    /// in place only. Returns whether a journal commit made everything
    /// written so far durable (else an fsync still needs a device flush).
    pub(super) fn write_back(&self, with_sb: bool) -> Result<bool> {
        let Some(log) = self.rw.journal.get() else {
            self.write_back_blocks(None)?;
            if with_sb {
                let mut live = self.rw.live_sb();
                self.write_super(&mut live)?;
            }
            return Ok(false);
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
        let block = self.superblock_blocknr();
        let mut data = vec![0u8; bs as usize];
        let offset = block.saturating_mul(bs);
        self.dev
            .read_at(&mut data, offset)
            .map_err(|source| Error::Io { offset, source })?;
        let mut live = self.rw.live_sb();
        self.refresh_super(&mut live);
        copy_overlap(&live.raw, sbf::SUPERBLOCK_OFFSET, &mut data, offset);
        Ok((block, Arc::from(data)))
    }

    /// Bytes of committed metadata that trigger a write-back at commit:
    /// [`WRITEBACK_LIMIT`], or with a journal a quarter of the log (less
    /// room for descriptor blocks), as jbd2 commits at a quarter.
    pub(super) fn writeback_limit(&self) -> usize {
        match self.rw.journal.get() {
            Some(log) => {
                let blocks = log.max_transaction() as usize;
                (blocks.saturating_sub(blocks / 8))
                    .saturating_mul(self.block_size as usize)
                    .min(WRITEBACK_LIMIT)
            }
            None => WRITEBACK_LIMIT,
        }
    }

    /// The journal log's statistics (None without a journal or before
    /// the read-write mount started it).
    #[cfg(test)]
    pub(crate) fn log_stats(&self) -> Option<super::journal::log::LogStats> {
        self.rw.journal.get().map(Log::stats)
    }

    /// Bytes of committed metadata not yet on the device.
    #[cfg(test)]
    pub(crate) fn writeback_pending(&self) -> usize {
        self.rw.wb().bytes
    }

    /// Writes a snapshot of the write-back set in block order, adjacent
    /// blocks coalesced, then drops from the set every block no commit
    /// replaced meanwhile. A failed write turns the mount read-only; the
    /// blocks stay in the set (reads keep seeing them).
    ///
    /// With `journal` (the log and maybe the superblock's block), the
    /// snapshot is committed to the log first, revoking the live copies of
    /// the blocks freed since the last snapshot; returns whether it was.
    fn write_back_blocks(&self, journal: Option<(&Log, Option<BlockCopy>)>) -> Result<bool> {
        let _gate = self
            .rw
            .flush_gate
            .write()
            .unwrap_or_else(|e| e.into_inner());
        let (mut snapshot, freed): (Vec<BlockCopy>, Vec<(u64, u64)>) = {
            let mut wb = self.rw.wb();
            let snapshot: Vec<BlockCopy> = wb.blocks.iter().map(|(b, d)| (*b, d.clone())).collect();
            // Every free committed so far is in this snapshot's bitmaps, and
            // its revokes go with it. (No snapshot, no free to forget.)
            let freed = if snapshot.is_empty() {
                Vec::new()
            } else {
                std::mem::take(&mut wb.freed).into_iter().collect()
            };
            (snapshot, freed)
        };
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
            return Ok(false);
        }
        let mut seq = None;
        if let Some(l) = log {
            let blocks: Vec<(u64, &[u8])> = snapshot.iter().map(|(b, d)| (*b, &d[..])).collect();
            match l.commit(&blocks, &freed) {
                Ok(s) => seq = Some(s),
                Err(Error::NoSpace) => {
                    tracing::warn!(
                        "{} metadata blocks do not fit in the journal: written in place without it",
                        blocks.len()
                    );
                    // No older logged copy may be replayed over them.
                    if let Err(e) = l.checkpoint() {
                        self.write_failed("journal checkpoint", &e);
                        return Err(e);
                    }
                }
                Err(e) => {
                    self.write_failed("journal commit", &e);
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
                self.write_failed("metadata write", &source);
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
            self.blocks.remove(self.superblock_blocknr());
            let in_place: Vec<(u64, u32)> = snapshot.iter().map(|(b, _)| (*b, seq)).collect();
            l.mark_in_place(&in_place);
        }
        let committed = seq.is_some();
        if pending == 0 {
            return Ok(committed);
        }
        let mut wb = self.rw.wb();
        for (b, data) in snapshot {
            if wb.blocks.get(&b).is_some_and(|d| Arc::ptr_eq(d, &data)) {
                wb.blocks.remove(&b);
                wb.bytes = wb.bytes.saturating_sub(data.len());
            }
        }
        Ok(committed)
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
        let first = start.checked_div(bs).unwrap_or(0);
        for (b, data) in wb.blocks.range(first..end.div_ceil(bs)) {
            copy_overlap(data, b.saturating_mul(bs), buf, start);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::arithmetic_side_effects)]

    use std::sync::Arc;

    use crate::ext4::testutil::{
        RwImage, can_loop_mount, e2fsck, free_and_reuse_for_data, have_mkfs, loop_mounted, open_on,
    };
    use crate::io::MemDevice;
    use crate::testdev::PowerLoss;

    const BS: usize = 4096;

    fn block_of(img: &[u8], b: u64) -> &[u8] {
        &img[b as usize * BS..][..4]
    }

    /// An fsync with nothing committed since the last one commits no
    /// transaction, but its device flush still makes the data written
    /// since durable (a power cut keeps it, whatever writes it drops).
    #[test]
    fn fsync_with_no_metadata_change_commits_nothing() {
        if !have_mkfs() {
            return;
        }
        let im = RwImage::new("idlefsync", &["-b", "4096", "-g", "4096"]);
        let dev = Arc::new(PowerLoss::new(im.dev.contents()));
        let fs = open_on(dev.clone(), false);
        let mut txn = fs.begin().unwrap();
        let (blk, _) = txn.alloc_blocks(0, 1, false).unwrap();
        txn.commit().unwrap();
        let seq = || fs.log_stats().unwrap().next_seq;
        fs.flush().unwrap();
        let after_first = seq();
        fs.write_data(blk, 0, b"data").unwrap();
        fs.flush().unwrap();
        fs.flush().unwrap();
        assert_eq!(seq(), after_first, "an idle fsync committed");
        for seed in 0..8 {
            assert_eq!(block_of(&dev.crash(seed), blk), b"data", "not flushed");
        }
        let mut txn = fs.begin().unwrap();
        txn.free_blocks(blk, 1).unwrap();
        txn.commit().unwrap();
        fs.flush().unwrap();
        assert_eq!(
            seq(),
            after_first.wrapping_add(1),
            "a change was not committed"
        );
    }

    /// An fsync leaves its transaction in the log (the commit's flushes
    /// make it durable; no checkpoint), and a block that a live
    /// transaction logged, then freed and reused for file data, is revoked
    /// by the next commit: after a power cut, our replay, e2fsck's and the
    /// kernel's keep the data, not the stale logged copy.
    #[test]
    fn freed_logged_block_reused_for_data_is_not_replayed_over_it() {
        if !have_mkfs() {
            return;
        }
        let im = RwImage::new("revoke", &["-b", "4096", "-g", "4096"]);
        let fs = im.open();
        let mut txn = fs.begin().unwrap();
        let (blk, _) = txn.alloc_blocks(0, 1, false).unwrap();
        txn.block_new(blk).unwrap()[..4].copy_from_slice(b"meta");
        txn.commit().unwrap();
        fs.flush().unwrap();
        let stats = fs.log_stats().expect("a journaled filesystem");
        assert_eq!(stats.live_transactions, 1, "fsync checkpointed");
        free_and_reuse_for_data(&fs, blk, b"data");
        fs.flush().unwrap();
        assert!(fs.log_stats().unwrap().live_transactions >= 2);
        // The power cut: the device as it is now, its log live.
        let crashed = im.dev.contents();
        assert_eq!(block_of(&crashed, blk), b"data");

        let dev = Arc::new(MemDevice::new(crashed.clone()));
        let ours = open_on(dev.clone(), false);
        drop(ours);
        assert_eq!(block_of(&dev.contents(), blk), b"data", "our replay");

        let img = im.img.with_extension("crashed");
        std::fs::write(&img, &crashed).unwrap();
        let (code, out) = e2fsck(&["-y", "-E", "journal_only"], &img);
        assert!(code <= 1, "e2fsck replay: {out}");
        assert_eq!(
            block_of(&std::fs::read(&img).unwrap(), blk),
            b"data",
            "e2fsck's replay"
        );

        if can_loop_mount() {
            std::fs::write(&img, &crashed).unwrap();
            drop(loop_mounted(&img, &im.img.with_extension("mnt"), "rw"));
            let after = std::fs::read(&img).unwrap();
            assert_eq!(block_of(&after, blk), b"data", "the kernel's replay");
        }
    }
}
