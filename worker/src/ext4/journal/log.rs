//! The jbd2 log writer: commits transactions to the journal and
//! checkpoints them, as the kernel's fs/jbd2/{commit,checkpoint,journal,
//! revoke}.c do for an internal journal (ordered mode, no async commit,
//! no fast commit).
//!
//! # API and contract
//! - [`Log::open`] (read-write mount start, after replay: the journal must
//!   be empty): sets the journal features the way the kernel does on a
//!   read-write mount (REVOKE; 64BIT when the filesystem is 64bit; CSUM_V3
//!   when it has metadata_csum, otherwise no checksum feature; never
//!   ASYNC_COMMIT or FAST_COMMIT), writes the journal superblock once with
//!   the log starting at s_first (jbd2's journal_reset), and flushes.
//!   **The caller** sets needs_recovery in the ext4 superblock and writes
//!   it before the first commit (the commit's flush makes it durable), and
//!   clears it only after [`Log::finish`] returned.
//! - [`Log::commit`]`(blocks, freed) -> Seq`: revoke blocks (for the live
//!   copies of blocks freed since the last commit), descriptor
//!   blocks with their tags and the (escaped) copies, a flush, the commit
//!   block, a flush. When it returns, the transaction is durable. Ordered
//!   mode: file data the caller wrote before calling is durable before the
//!   commit block (the first flush covers the whole device).
//!   If the log lacks room, commit checkpoints first (never deadlocks:
//!   a checkpoint needs no log space). A transaction larger than the log
//!   is refused with `NoSpace`; callers commit at [`Log::max_transaction`]
//!   (a quarter of the log) and can size a commit with [`Log::blocks_needed`].
//! - In-place writes: the caller may write a block in place only with the
//!   contents of a *committed* transaction (the kernel's rule: metadata of
//!   an uncommitted transaction never reaches its home location), and
//!   reports it with [`Log::mark_in_place`]`(block, seq)` so the
//!   checkpoint need not write it again. It must not write in place while
//!   `commit` or `checkpoint` run (they may write the same blocks): the
//!   caller's write-back gate serializes them.
//! - [`Log::checkpoint`]: every logged block not yet in place is written
//!   from its newest logged copy (read back from the journal), a flush,
//!   then the journal superblock's tail (s_start, s_sequence) moves to the
//!   head, a flush. Only then may the log reuse the space.
//! - [`Log::finish`] (clean unmount): a final checkpoint, s_start = 0, a
//!   flush. The log accepts nothing afterwards.
//!
//! Locking: all state sits behind one mutex (the "journal" lock, last in
//! the engine's lock order); every method takes `&self` and holds it for
//! the whole call, I/O included, so commits and checkpoints serialize.
//! A failed write aborts the log (like jbd2_journal_abort): every later
//! call fails, and the journal is left for replay at the next mount.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Mutex, MutexGuard};

use super::Journal;
use crate::ext4::ondisk::journal::commit::CommitBlock;
use crate::ext4::ondisk::journal::descriptor::{
    DescriptorBlock, JBD2_FLAG_ESCAPE, JBD2_FLAG_LAST_TAG, JBD2_FLAG_SAME_UUID, Tag,
};
use crate::ext4::ondisk::journal::revoke::RevokeBlock;
use crate::ext4::ondisk::journal::{
    Format, JBD2_CRC32C_CHKSUM, JBD2_FEATURE_COMPAT_CHECKSUM, JBD2_FEATURE_INCOMPAT_64BIT,
    JBD2_FEATURE_INCOMPAT_ASYNC_COMMIT, JBD2_FEATURE_INCOMPAT_CSUM_V2,
    JBD2_FEATURE_INCOMPAT_CSUM_V3, JBD2_FEATURE_INCOMPAT_FAST_COMMIT, JBD2_FEATURE_INCOMPAT_REVOKE,
    JBD2_MAGIC_NUMBER, JBD2_SUPERBLOCK_V2, JournalSuperblock, data_csum,
};
use crate::ext4::ondisk::superblock::{self as sbf, Superblock};
use crate::ext4::{Error, Result};

/// A transaction ID (jbd2's tid_t).
pub(crate) type Seq = u32;

/// Where the newest committed copy of a filesystem block sits.
#[derive(Debug, Clone, Copy)]
struct Copy {
    /// The transaction that logged it.
    seq: Seq,
    /// The filesystem block holding the copy in the journal.
    pblk: u64,
    escaped: bool,
    /// The caller wrote this copy's contents in place (not yet flushed).
    in_place: bool,
}

/// A committed transaction not yet checkpointed.
#[derive(Debug, Clone, Copy)]
struct Live {
    seq: Seq,
}

struct State {
    jsb: JournalSuperblock,
    fmt: Format,
    /// Journal block 0 as on disk (bytes the superblock does not model).
    jsb_raw: Vec<u8>,
    /// Next journal block to write.
    head: u32,
    /// Journal blocks in use by live transactions (from the tail to head).
    used: u32,
    next_seq: Seq,
    live: Vec<Live>,
    /// Filesystem block -> its newest live copy (the checkpoint set).
    copies: BTreeMap<u64, Copy>,
    /// Aborted by an I/O error, or finished.
    closed: Option<&'static str>,
}

/// The journal log of a read-write mount. See the module documentation.
pub(crate) struct Log {
    j: Journal,
    /// The log area `[first, last)` (fast commit is turned off, so the
    /// whole journal after s_first).
    first: u32,
    last: u32,
    state: Mutex<State>,
}

/// Statistics for tests.
#[cfg(test)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LogStats {
    pub(crate) head: u32,
    pub(crate) used: u32,
    pub(crate) live_transactions: usize,
    pub(crate) next_seq: Seq,
}

fn io(offset: u64) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Io { offset, source }
}

impl Log {
    /// Starts logging on `j` (a mapped journal whose replay is done) for
    /// the filesystem whose superblock is `fs`. Writes the journal
    /// superblock (features, s_start = s_first) and flushes.
    pub(crate) fn open(j: Journal, fs: &Superblock) -> Result<Log> {
        let mut jsb = j.jsb.clone();
        if jsb.h_blocktype != JBD2_SUPERBLOCK_V2 {
            return Err(Error::Incompatible(
                "journal: a version 1 journal superblock cannot carry revoke records; \
                 recreate the journal (tune2fs -O ^has_journal, then -j)"
                    .into(),
            ));
        }
        if jsb.s_start != 0 {
            return Err(Error::NeedsRecovery);
        }
        // The kernel's choices on a read-write mount
        // (ext4 set_journal_csum_feature_set, jbd2_journal_revoke, and the
        // 64bit check of ext4_fill_super).
        let mut incompat = jsb.s_feature_incompat | JBD2_FEATURE_INCOMPAT_REVOKE;
        incompat &= !(JBD2_FEATURE_INCOMPAT_ASYNC_COMMIT
            | JBD2_FEATURE_INCOMPAT_FAST_COMMIT
            | JBD2_FEATURE_INCOMPAT_CSUM_V2
            | JBD2_FEATURE_INCOMPAT_CSUM_V3);
        if fs.has_incompat(sbf::INCOMPAT_64BIT) {
            incompat |= JBD2_FEATURE_INCOMPAT_64BIT;
        }
        if fs.has_ro_compat(sbf::RO_COMPAT_METADATA_CSUM) {
            incompat |= JBD2_FEATURE_INCOMPAT_CSUM_V3;
            jsb.s_checksum_type = JBD2_CRC32C_CHKSUM;
        }
        if fs.s_blocks_count > u64::from(u32::MAX) && incompat & JBD2_FEATURE_INCOMPAT_64BIT == 0 {
            return Err(Error::Incompatible(
                "journal: blocks past 2^32 need a 64bit journal".into(),
            ));
        }
        jsb.s_feature_incompat = incompat;
        jsb.s_feature_compat &= !JBD2_FEATURE_COMPAT_CHECKSUM;
        let first = jsb.s_first;
        let last = jsb.s_maxlen;
        // At least one descriptor, one data block and one commit block.
        if last.saturating_sub(first) < 8 {
            return Err(Error::corrupt(
                format!(
                    "journal: a log of {} blocks is too small",
                    last.saturating_sub(first)
                ),
                0,
            ));
        }
        jsb.s_start = first;
        let next_seq = jsb.s_sequence;
        let fmt = jsb.format(j.block_size as usize);
        let mut jsb_raw = j.read(0, jsb.s_maxlen)?;
        jsb.write(&mut jsb_raw);
        let log = Log {
            first,
            last,
            state: Mutex::new(State {
                jsb,
                fmt,
                jsb_raw,
                head: first,
                used: 0,
                next_seq,
                live: Vec::new(),
                copies: BTreeMap::new(),
                closed: None,
            }),
            j,
        };
        {
            let mut st = log.lock();
            log.write_jsb(&mut st)?;
        }
        Ok(log)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Blocks of the log area.
    fn log_len(&self) -> u32 {
        self.last.saturating_sub(self.first)
    }

    /// The largest transaction a caller should build: a quarter of the
    /// log, in journal blocks (compare with [`Log::blocks_needed`]).
    pub(crate) fn max_transaction(&self) -> u32 {
        self.log_len() / 4
    }

    /// Journal blocks a commit of `nblocks` blocks and `nrevokes` revoke
    /// records uses (an upper bound: revokes of blocks no live transaction
    /// logged are dropped).
    #[cfg(test)]
    pub(crate) fn blocks_needed(&self, nblocks: usize, nrevokes: usize) -> u64 {
        let fmt = self.lock().fmt;
        blocks_needed(&fmt, nblocks, nrevokes)
    }

    /// Journal blocks free before the log would have to checkpoint.
    #[cfg(test)]
    pub(crate) fn space_left(&self) -> u32 {
        let st = self.lock();
        self.free(&st)
    }

    /// Free blocks; one block always stays unused so a full log never
    /// looks empty.
    fn free(&self, st: &State) -> u32 {
        self.log_len().saturating_sub(st.used).saturating_sub(1)
    }

    #[cfg(test)]
    pub(crate) fn stats(&self) -> LogStats {
        let st = self.lock();
        LogStats {
            head: st.head,
            used: st.used,
            live_transactions: st.live.len(),
            next_seq: st.next_seq,
        }
    }

    /// The next journal block after `b`, wrapping at the end of the log.
    fn next_block(&self, b: u32) -> u32 {
        let n = b.saturating_add(1);
        if n >= self.last { self.first } else { n }
    }

    fn bs(&self) -> u64 {
        self.j.block_size
    }

    /// Writes journal block `lblk`.
    fn write_journal_block(&self, lblk: u32, data: &[u8]) -> Result<()> {
        let pblk = self
            .j
            .pblk(lblk)
            .ok_or_else(|| Error::corrupt(format!("journal: block {lblk} is unmapped"), 0))?;
        let off = pblk.saturating_mul(self.bs());
        self.j.dev.write_at(data, off).map_err(io(off))
    }

    fn flush(&self) -> Result<()> {
        self.j.dev.flush().map_err(io(0))
    }

    /// Writes the journal superblock as `st.jsb` says, then flushes (the
    /// kernel writes it with REQ_FUA).
    fn write_jsb(&self, st: &mut State) -> Result<()> {
        let State { jsb, jsb_raw, .. } = st;
        jsb.write(jsb_raw);
        self.write_journal_block(0, jsb_raw)?;
        self.flush()
    }

    /// Marks the log unusable after a failed write.
    fn abort(st: &mut State, e: Error) -> Error {
        tracing::error!("journal: aborted: {e}");
        st.closed = Some("the journal was aborted by an I/O error");
        e
    }

    fn check_open(st: &State) -> Result<()> {
        match st.closed {
            Some(why) => Err(Error::Unsupported(why.into())),
            None => Ok(()),
        }
    }

    /// Commits one transaction: `blocks` (filesystem block, its new
    /// contents, one whole block each, no block twice) are logged; `freed`
    /// (`[first, end)` ranges) are blocks freed since the last commit: a
    /// live copy of one of them is revoked, so replay never writes it over
    /// what the block holds next (file data, say). A block both freed and
    /// logged here is logged: its revoke is cancelled, as
    /// jbd2_journal_cancel_revoke does. Returns the transaction's sequence
    /// once its commit block is durable.
    pub(crate) fn commit(&self, blocks: &[(u64, &[u8])], freed: &[(u64, u64)]) -> Result<Seq> {
        let mut st = self.lock();
        Self::check_open(&st)?;
        let bs = self.bs();
        let mut seen = BTreeSet::new();
        for &(b, data) in blocks {
            if data.len() as u64 != bs {
                return Err(Error::Invalid("journal: a logged block must be one block"));
            }
            if b >= self.j.fs_blocks || self.j.contains_fs_block(b) {
                return Err(Error::Invalid(
                    "journal: logged block outside the filesystem or inside the journal",
                ));
            }
            if !st.fmt.is64 && b > u64::from(u32::MAX) {
                return Err(Error::Invalid("journal: block needs a 64bit journal"));
            }
            if !seen.insert(b) {
                return Err(Error::Invalid("journal: a block is logged twice"));
            }
        }
        // Revoke only what a live transaction logged: older copies are
        // checkpointed and past the tail, so replay never sees them.
        let revokes: Vec<u64> = freed
            .iter()
            .flat_map(|&(first, end)| st.copies.range(first..end.max(first)).map(|(b, _)| *b))
            .filter(|b| !seen.contains(b))
            .collect::<BTreeSet<u64>>()
            .into_iter()
            .collect();
        let need = blocks_needed(&st.fmt, blocks.len(), revokes.len());
        if need > u64::from(self.log_len().saturating_sub(1)) {
            return Err(Error::NoSpace);
        }
        if need > u64::from(self.free(&st)) {
            self.checkpoint_locked(&mut st)?;
        }
        match self.write_transaction(&mut st, blocks, &revokes) {
            Ok(seq) => Ok(seq),
            Err(e) => Err(Self::abort(&mut st, e)),
        }
    }

    fn write_transaction(
        &self,
        st: &mut State,
        blocks: &[(u64, &[u8])],
        revokes: &[u64],
    ) -> Result<Seq> {
        let fmt = st.fmt;
        let bs = self.bs() as usize;
        let seq = st.next_seq;
        let start_used = st.used;
        let mut pos = st.head;
        let mut written = 0u32;
        let mut buf = vec![0u8; bs];
        let mut put = |this: &Self, pos: &mut u32, data: &[u8]| -> Result<u32> {
            let at = *pos;
            this.write_journal_block(at, data)?;
            *pos = this.next_block(at);
            written = written.saturating_add(1);
            Ok(at)
        };
        // Revoke records first, as jbd2_journal_commit_transaction does.
        for chunk in revokes.chunks(RevokeBlock::capacity(&fmt).max(1)) {
            RevokeBlock {
                sequence: seq,
                records: chunk.to_vec(),
            }
            .write(&fmt, &mut buf);
            put(self, &mut pos, &buf)?;
        }
        let per_desc = tags_per_descriptor(&fmt);
        let mut new_copies = Vec::with_capacity(blocks.len());
        for chunk in blocks.chunks(per_desc.max(1)) {
            let mut copies: Vec<(Vec<u8>, bool)> = Vec::with_capacity(chunk.len());
            let mut tags = Vec::with_capacity(chunk.len());
            for (i, &(b, data)) in chunk.iter().enumerate() {
                let escaped = data.get(..4) == Some(&JBD2_MAGIC_NUMBER.to_be_bytes()[..]);
                let mut copy = data.to_vec();
                if escaped && let Some(m) = copy.get_mut(..4) {
                    m.fill(0);
                }
                let mut flags = if i == 0 { 0 } else { JBD2_FLAG_SAME_UUID };
                if escaped {
                    flags |= JBD2_FLAG_ESCAPE;
                }
                if i.saturating_add(1) == chunk.len() {
                    flags |= JBD2_FLAG_LAST_TAG;
                }
                tags.push(Tag {
                    blocknr: b,
                    flags,
                    checksum: if fmt.has_csum_v2or3() {
                        data_csum(&fmt, seq, &copy)
                    } else {
                        0
                    },
                    uuid: (i == 0).then_some(st.jsb.s_uuid),
                });
                copies.push((copy, escaped));
            }
            DescriptorBlock {
                sequence: seq,
                tags,
            }
            .write(&fmt, &mut buf);
            put(self, &mut pos, &buf)?;
            for (&(b, _), (copy, escaped)) in chunk.iter().zip(&copies) {
                let at = put(self, &mut pos, copy)?;
                let pblk = self.j.pblk(at).unwrap_or(0);
                new_copies.push((b, pblk, *escaped));
            }
        }
        // Ordered mode: everything before the commit block is durable
        // first (the kernel's REQ_PREFLUSH on the commit block).
        self.flush()?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        CommitBlock {
            sequence: seq,
            h_chksum_type: 0,
            h_chksum_size: 0,
            h_chksum: [0; 8],
            h_commit_sec: now.as_secs(),
            h_commit_nsec: now.subsec_nanos(),
        }
        .write(&fmt, &mut buf);
        put(self, &mut pos, &buf)?;
        // The kernel's REQ_FUA on the commit block.
        self.flush()?;
        for &b in revokes {
            st.copies.remove(&b);
        }
        for (b, pblk, escaped) in new_copies {
            st.copies.insert(
                b,
                Copy {
                    seq,
                    pblk,
                    escaped,
                    in_place: false,
                },
            );
        }
        st.head = pos;
        st.used = start_used.saturating_add(written);
        st.live.push(Live { seq });
        st.next_seq = seq.wrapping_add(1);
        Ok(seq)
    }

    /// The caller wrote the contents of transaction `seq` (or a later
    /// one) of each block in place. Blocks logged again by a later
    /// transaction since stay to be checkpointed.
    pub(crate) fn mark_in_place(&self, blocks: &[(u64, Seq)]) {
        let mut st = self.lock();
        for &(b, seq) in blocks {
            if let Some(c) = st.copies.get_mut(&b)
                && (seq.wrapping_sub(c.seq) as i32) >= 0
            {
                c.in_place = true;
            }
        }
    }

    /// Writes every live block in place, flushes, and moves the tail to the
    /// head (journal superblock written and flushed).
    pub(crate) fn checkpoint(&self) -> Result<()> {
        let mut st = self.lock();
        Self::check_open(&st)?;
        self.checkpoint_locked(&mut st)
    }

    fn checkpoint_locked(&self, st: &mut State) -> Result<()> {
        if st.live.is_empty() {
            return Ok(());
        }
        match self.checkpoint_io(st) {
            Ok(()) => Ok(()),
            Err(e) => Err(Self::abort(st, e)),
        }
    }

    fn checkpoint_io(&self, st: &mut State) -> Result<()> {
        let bs = self.bs();
        let mut buf = vec![0u8; bs as usize];
        for (&b, c) in &st.copies {
            if c.in_place {
                continue;
            }
            let src = c.pblk.saturating_mul(bs);
            self.j.dev.read_at(&mut buf, src).map_err(io(src))?;
            if c.escaped
                && let Some(m) = buf.get_mut(..4)
            {
                m.copy_from_slice(&JBD2_MAGIC_NUMBER.to_be_bytes());
            }
            let dst = b.saturating_mul(bs);
            self.j.dev.write_at(&buf, dst).map_err(io(dst))?;
        }
        // In-place blocks durable before the tail passes their copies
        // (jbd2_cleanup_journal_tail's flush).
        self.flush()?;
        tracing::debug!(
            "journal: checkpointed transactions {:?}..={:?} ({} blocks)",
            st.live.first().map(|l| l.seq),
            st.live.last().map(|l| l.seq),
            st.copies.len()
        );
        st.copies.clear();
        st.live.clear();
        st.used = 0;
        st.jsb.s_start = st.head;
        st.jsb.s_sequence = st.next_seq;
        self.write_jsb(st)
    }

    /// Clean unmount: a final checkpoint, then an empty journal (s_start 0,
    /// s_sequence the next transaction), flushed. The caller then clears
    /// needs_recovery. The log accepts nothing afterwards.
    pub(crate) fn finish(&self) -> Result<()> {
        let mut st = self.lock();
        Self::check_open(&st)?;
        self.checkpoint_locked(&mut st)?;
        st.jsb.s_start = 0;
        st.jsb.s_sequence = st.next_seq;
        let r = self.write_jsb(&mut st);
        st.closed = Some("the journal is closed (unmounted)");
        r
    }
}

/// Tags (data blocks) one descriptor block holds.
fn tags_per_descriptor(fmt: &Format) -> usize {
    let room = fmt.block_size.saturating_sub(fmt.tail_size());
    let mut n = 1usize;
    while DescriptorBlock::space_for(fmt, n.saturating_add(1)) <= room {
        n = n.saturating_add(1);
    }
    n
}

/// Journal blocks a transaction of `nblocks` logged blocks and `nrevokes`
/// revoke records takes: revoke blocks, descriptor blocks, the copies and
/// the commit block.
fn blocks_needed(fmt: &Format, nblocks: usize, nrevokes: usize) -> u64 {
    let per_desc = tags_per_descriptor(fmt).max(1);
    let per_revoke = RevokeBlock::capacity(fmt).max(1);
    let n = nblocks as u64;
    n.saturating_add(n.div_ceil(per_desc as u64))
        .saturating_add((nrevokes as u64).div_ceil(per_revoke as u64))
        .saturating_add(1)
}

#[cfg(test)]
mod unit_tests {
    use super::*;
    use crate::ext4::ondisk::journal::Csum;

    fn fmt(csum: Csum, is64: bool, bs: usize) -> Format {
        Format {
            block_size: bs,
            is64,
            csum,
            checksum_v1: false,
            async_commit: false,
            seed: 1,
        }
    }

    #[test]
    fn descriptor_capacity_matches_the_layout() {
        // 1 KiB, csum v3: 12 header + 16 uuid + 16 per tag + 4 tail.
        assert_eq!(tags_per_descriptor(&fmt(Csum::V3, true, 1024)), 62);
        // 4 KiB, no checksums, 32-bit: 12 + 16 + 8 per tag.
        assert_eq!(tags_per_descriptor(&fmt(Csum::None, false, 4096)), 508);
        let f = fmt(Csum::V3, true, 1024);
        assert_eq!(blocks_needed(&f, 0, 0), 1);
        assert_eq!(blocks_needed(&f, 62, 0), 64);
        assert_eq!(blocks_needed(&f, 63, 1), 63 + 2 + 1 + 1);
    }
}
