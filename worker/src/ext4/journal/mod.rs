//! The jbd2 journal of an ext3/ext4 filesystem: replay at mount (this
//! file and `replay`), as the kernel's fs/jbd2/recovery.c and e2fsck's
//! recovery.c do it, and the log writer (`log`).
//!
//! - [`Journal::load`] maps the journal inode (every journal block to a
//!   filesystem block, checked against the filesystem) and checks the
//!   journal superblock.
//! - [`replay`] walks the log in three passes (scan, revoke, replay) and
//!   returns a [`Replay`]: filesystem block -> where its newest logged copy
//!   sits in the journal. Nothing is written while the log is read, so a
//!   corrupt journal is refused before any byte changes.
//! - Read-only mount: the replay becomes an [`overlay::Overlay`] device
//!   under the block cache; the device is never written.
//!   Read-write mount: [`Journal::write_back`] writes the blocks in place,
//!   flushes, marks the journal empty, clears needs_recovery, flushes.
//! - Writing: [`log::Log`] commits transactions to the log and
//!   checkpoints them (see its module for the contract). It is a
//!   self-contained component; the transaction path does not call it yet.
//!
//! Work is bounded by the journal's length: every pass reads at most
//! s_maxlen blocks, so a hostile log cannot loop.
//!
//! Lock order: replay runs inside `Ext4::open`, before the filesystem is
//! shared; it takes no lock.

#[cfg(test)]
mod crash_tests;
pub(crate) mod log;
#[cfg(test)]
mod log_tests;
pub(crate) mod overlay;
pub(crate) mod replay;
#[cfg(test)]
mod tests;

#[cfg(test)]
mod unit_tests {
    use super::*;

    #[test]
    fn journal_extents_merge_and_map() {
        let runs = [
            Run {
                lblk: 0,
                pblk: 100,
                len: 10,
            },
            Run {
                lblk: 10,
                pblk: 50,
                len: 5,
            },
            Run {
                lblk: 15,
                pblk: 105,
                len: 10,
            },
        ];
        assert_eq!(merged_extents(&runs), vec![(50, 55), (100, 115)]);
        assert_eq!(pblk_of(&runs, 0), Some(100));
        assert_eq!(pblk_of(&runs, 12), Some(52));
        assert_eq!(pblk_of(&runs, 24), Some(114));
        assert_eq!(pblk_of(&runs, 25), None);
    }
}

use std::sync::Arc;

pub(crate) use replay::Replay;

use super::ondisk::inode::{EXT4_INLINE_DATA_FL, Inode};
use super::ondisk::journal::{Format, JBD2_FEATURE_INCOMPAT_FAST_COMMIT, JournalSuperblock};
use super::ondisk::superblock::{self as sbf, Superblock};
use super::{Error, Ext4, FileKind, OpenOptions, Result, file::Mapping, read_superblock};
use crate::io::BlockDevice;

/// Bytes of the ext4 superblock the kernel keeps across replay
/// (EXT4_S_ERR_START..EXT4_S_ERR_END: s_error_count to s_mount_opts), so
/// errors recorded by the last mount survive an older journaled copy.
const SB_ERR_START: usize = 0x194;
const SB_ERR_END: usize = 0x200;

/// One run of the journal inode's mapping: journal blocks
/// `[lblk, lblk+len)` live at filesystem blocks `[pblk, pblk+len)`.
#[derive(Debug, Clone, Copy)]
struct Run {
    lblk: u32,
    pblk: u64,
    len: u32,
}

/// An internal journal, mapped and its superblock checked.
pub(crate) struct Journal {
    dev: Arc<dyn BlockDevice>,
    pub(crate) jsb: JournalSuperblock,
    pub(crate) fmt: Format,
    block_size: u64,
    runs: Vec<Run>,
    /// The filesystem blocks of the journal as sorted, merged `[start, end)`.
    extents: Vec<(u64, u64)>,
    /// The log area is `[first, last)` (fast-commit blocks follow it).
    pub(crate) first: u32,
    pub(crate) last: u32,
    /// Filesystem blocks (tags naming a block at or past it are corrupt).
    fs_blocks: u64,
}

fn corrupt(why: String, block: u64) -> Error {
    Error::corrupt(format!("journal: {why}"), block)
}

impl Journal {
    /// Maps the journal inode of `fs` and reads its superblock. `fs` is
    /// opened only as far as the journal needs (superblock, descriptors).
    pub(crate) fn load(fs: &Ext4) -> Result<Journal> {
        let sb = fs.sb();
        let ino = sb.s_journal_inum;
        let ji = fs.inode_any(ino)?;
        if ji.links_count == 0
            || ji.kind != FileKind::RegularFile
            || ji.has_flag(EXT4_INLINE_DATA_FL)
        {
            return Err(corrupt(
                format!("inode {ino} is not a valid journal"),
                fs.inode_block(ino),
            ));
        }
        let bs = u64::from(fs.block_size());
        // A journal is no larger than its filesystem; and only the blocks
        // the superblock claims are mapped, so a hostile size or block map
        // costs no more than the journal's own length.
        let nblocks = u32::try_from(ji.size.checked_div(bs).unwrap_or(0).min(sb.s_blocks_count))
            .unwrap_or(u32::MAX);
        let head = map_journal(fs, &ji, nblocks.min(1))?;
        let raw = read_mapped(&*fs.dev, &head, bs, 0, nblocks)?;
        let jsb = JournalSuperblock::parse(&raw, pblk_of(&head, 0).unwrap_or(0))?;
        if u64::from(jsb.s_blocksize) != bs {
            return Err(corrupt(
                format!(
                    "block size {} differs from the filesystem's {bs}",
                    jsb.s_blocksize
                ),
                0,
            ));
        }
        if jsb.s_maxlen > nblocks {
            return Err(corrupt(
                format!(
                    "superblock claims {} blocks but the journal inode has {nblocks}",
                    jsb.s_maxlen
                ),
                0,
            ));
        }
        let runs = map_journal(fs, &ji, jsb.s_maxlen)?;
        let last = jsb
            .s_maxlen
            .checked_sub(jsb.fast_commit_blocks())
            .filter(|&l| l > jsb.s_first)
            .ok_or_else(|| {
                corrupt(
                    format!(
                        "{} fast-commit blocks leave no log in {} blocks",
                        jsb.fast_commit_blocks(),
                        jsb.s_maxlen
                    ),
                    0,
                )
            })?;
        Ok(Journal {
            dev: fs.dev.clone(),
            fmt: jsb.format(bs as usize),
            first: jsb.s_first,
            last,
            jsb,
            block_size: bs,
            extents: merged_extents(&runs),
            runs,
            fs_blocks: sb.s_blocks_count,
        })
    }

    /// The filesystem block holding journal block `lblk`.
    fn pblk(&self, lblk: u32) -> Option<u64> {
        pblk_of(&self.runs, lblk)
    }

    /// Journal block `lblk` (below `limit`, the journal's length).
    fn read(&self, lblk: u32, limit: u32) -> Result<Vec<u8>> {
        read_mapped(&*self.dev, &self.runs, self.block_size, lblk, limit)
    }

    /// Whether filesystem block `b` holds part of the journal.
    fn contains_fs_block(&self, b: u64) -> bool {
        let i = self.extents.partition_point(|&(start, _)| start <= b);
        i.checked_sub(1)
            .and_then(|i| self.extents.get(i))
            .is_some_and(|&(_, end)| b < end)
    }

    /// A log the filesystem does not ask to replay (needs_recovery clear,
    /// s_start set: a crash between the two superblock writes of a
    /// mount, or a journal left by another tool) is not replayed, as the
    /// kernel does (jbd2_journal_wipe): the log is taken as empty, and new
    /// transactions are numbered past its valid ones, so that none of its
    /// stale transactions can pass for a later one at a replay.
    pub(crate) fn skip_recovery(mut self) -> Result<Journal> {
        if self.jsb.s_start == 0 {
            return Ok(self);
        }
        let end = replay::end_of_log(&self)?;
        tracing::warn!(
            "journal: the filesystem does not need recovery but its journal holds a log \
             (transactions {}..{}); not replayed, as the kernel does",
            self.jsb.s_sequence,
            end
        );
        self.jsb = self.write_empty_jsb(end.wrapping_add(1))?;
        self.dev
            .flush()
            .map_err(|source| Error::Io { offset: 0, source })?;
        Ok(self)
    }

    /// Writes the journal superblock marked empty (s_start 0, no error),
    /// the next transaction to be `next_seq`; returns what it wrote.
    fn write_empty_jsb(&self, next_seq: u32) -> Result<JournalSuperblock> {
        let mut jraw = self.read(0, self.jsb.s_maxlen)?;
        let mut jsb = self.jsb.clone();
        jsb.s_start = 0;
        jsb.s_sequence = next_seq;
        jsb.s_errno = 0;
        jsb.write(&mut jraw);
        let joff = self.pblk(0).unwrap_or(0).saturating_mul(self.block_size);
        self.dev.write_at(&jraw, joff).map_err(|source| Error::Io {
            offset: joff,
            source,
        })?;
        Ok(jsb)
    }

    /// Writes a replay in place, in the kernel's order: the replayed
    /// blocks, a flush, the journal superblock marked empty with the next
    /// sequence, the ext4 superblock without needs_recovery, a flush.
    pub(crate) fn write_back(&self, replay: &Replay) -> Result<()> {
        let bs = self.block_size;
        for (&block, src) in &replay.blocks {
            let data = src.contents(&*self.dev, bs)?;
            let offset = block.saturating_mul(bs);
            self.dev
                .write_at(&data, offset)
                .map_err(|source| Error::Io { offset, source })?;
        }
        self.dev
            .flush()
            .map_err(|source| Error::Io { offset: 0, source })?;
        let sb_bytes = self.recovered_superblock(&*self.dev, replay)?;
        self.write_empty_jsb(replay.end_transaction.wrapping_add(1))?;
        self.dev
            .write_at(&sb_bytes, sbf::SUPERBLOCK_OFFSET)
            .map_err(|source| Error::Io {
                offset: sbf::SUPERBLOCK_OFFSET,
                source,
            })?;
        self.dev
            .flush()
            .map_err(|source| Error::Io { offset: 0, source })
    }

    /// The ext4 superblock as it stands after the replay (read through
    /// `dev`, which already shows the replayed blocks), with the error
    /// fields of the pre-replay superblock kept, needs_recovery cleared,
    /// ERROR_FS set when the journal recorded an error, and its checksum
    /// recomputed.
    fn recovered_superblock(&self, dev: &dyn BlockDevice, replay: &Replay) -> Result<Vec<u8>> {
        let mut raw = read_superblock(dev)?;
        if let (Some(dst), Some(src)) = (
            raw.get_mut(SB_ERR_START..SB_ERR_END),
            replay.pre_superblock.get(SB_ERR_START..SB_ERR_END),
        ) {
            dst.copy_from_slice(src);
        }
        let mut sb = Superblock::parse(&raw, dev.size())
            .map_err(|e| corrupt(format!("the replayed superblock is invalid: {e}"), 0))?;
        sb.s_feature_incompat &= !sbf::INCOMPAT_RECOVER;
        if replay.failed_commit.is_some() {
            sb.s_state |= sbf::STATE_ERROR_FS;
        }
        if self.jsb.s_errno != 0 {
            tracing::warn!(
                errno = self.jsb.s_errno,
                "journal: filesystem error recorded from the previous mount"
            );
            sb.s_state |= sbf::STATE_ERROR_FS;
        }
        sb.write(&mut raw);
        Ok(raw)
    }
}

/// The filesystem block holding journal block `lblk`, per `runs`.
fn pblk_of(runs: &[Run], lblk: u32) -> Option<u64> {
    let i = runs.partition_point(|r| r.lblk <= lblk).checked_sub(1)?;
    let r = runs.get(i)?;
    let off = lblk.checked_sub(r.lblk)?;
    (off < r.len).then(|| r.pblk.saturating_add(u64::from(off)))
}

/// Journal block `lblk` (it must be below `limit`, the journal's length).
fn read_mapped(
    dev: &dyn BlockDevice,
    runs: &[Run],
    bs: u64,
    lblk: u32,
    limit: u32,
) -> Result<Vec<u8>> {
    let pblk = pblk_of(runs, lblk)
        .filter(|_| lblk < limit)
        .ok_or_else(|| corrupt(format!("block {lblk} is outside the journal"), 0))?;
    let mut buf = vec![0u8; bs as usize];
    let offset = pblk
        .checked_mul(bs)
        .ok_or_else(|| corrupt(format!("block {pblk} overflows"), pblk))?;
    dev.read_at(&mut buf, offset)
        .map_err(|source| Error::Io { offset, source })?;
    Ok(buf)
}

/// The filesystem blocks `runs` cover, as sorted, merged `[start, end)`.
fn merged_extents(runs: &[Run]) -> Vec<(u64, u64)> {
    let mut v: Vec<(u64, u64)> = runs
        .iter()
        .map(|r| (r.pblk, r.pblk.saturating_add(u64::from(r.len))))
        .collect();
    v.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(v.len());
    for (s, e) in v {
        match out.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out
}

/// The journal inode's blocks `[0, nblocks)` as runs, each checked to lie
/// inside the filesystem. A hole or an unwritten extent is corrupt.
fn map_journal(fs: &Ext4, ji: &Inode, nblocks: u32) -> Result<Vec<Run>> {
    let mut runs = Vec::new();
    let mut lblk = 0u32;
    while lblk < nblocks {
        match fs.map_block(ji, u64::from(lblk))? {
            Mapping::Mapped {
                pblk,
                len,
                uninit: false,
            } if len > 0 => {
                let len = u32::try_from(len)
                    .unwrap_or(u32::MAX)
                    .min(nblocks.saturating_sub(lblk));
                if !fs.blocks_valid(pblk, u64::from(len)) {
                    return Err(corrupt(
                        format!("blocks {lblk}.. map outside the filesystem ({pblk})"),
                        pblk,
                    ));
                }
                runs.push(Run { lblk, pblk, len });
                lblk = lblk.saturating_add(len);
            }
            _ => {
                return Err(corrupt(
                    format!("journal inode has a hole at block {lblk}"),
                    0,
                ));
            }
        }
    }
    Ok(runs)
}

/// What `Ext4::open` does before opening: if the superblock says the
/// journal needs recovery, replay it (unless `load` is false: `noload`).
/// Returns the device to open (an overlay on a read-only mount) and
/// whether the filesystem is still unrecovered (noload).
pub(crate) fn recover_at_open(
    dev: Arc<dyn BlockDevice>,
    opts: &OpenOptions,
    load: bool,
) -> Result<(Arc<dyn BlockDevice>, bool)> {
    let raw = read_superblock(&*dev)?;
    let sb = Superblock::parse(&raw, dev.size())?;
    if !sb.has_incompat(sbf::INCOMPAT_RECOVER) {
        return Ok((dev, false));
    }
    if !sb.has_compat(sbf::COMPAT_HAS_JOURNAL) {
        return Err(Error::Incompatible(
            "needs_recovery is set but the filesystem has no journal; run e2fsck".into(),
        ));
    }
    if sb.s_journal_inum == 0 || sb.has_incompat(sbf::INCOMPAT_JOURNAL_DEV) {
        return Err(Error::Incompatible(
            "the journal needs recovery but is on an external device (journal_dev), \
             which safemount does not replay; run e2fsck"
                .into(),
        ));
    }
    if !load {
        if !opts.read_only {
            return Err(Error::Incompatible(
                "noload: the journal needs recovery, so the mount must be read-only".into(),
            ));
        }
        tracing::warn!("noload: the journal is not replayed; the filesystem may look inconsistent");
        return Ok((dev, true));
    }
    let fs = Ext4::open_for_journal(dev.clone())?;
    let journal = Journal::load(&fs)?;
    drop(fs);
    if journal.jsb.s_start != 0 && journal.jsb.has_incompat(JBD2_FEATURE_INCOMPAT_FAST_COMMIT) {
        return Err(Error::Incompatible(
            "the journal needs recovery and uses fast_commit, which safemount does not \
             replay; run e2fsck"
                .into(),
        ));
    }
    let replay = replay::replay(&journal, raw)?;
    tracing::info!(
        "journal: replayed transactions {}..{} ({} blocks, {} revoked)",
        replay.start_transaction,
        replay.end_transaction,
        replay.nr_replays,
        replay.nr_revoke_hits
    );
    if opts.read_only {
        let mut ov = overlay::Overlay::new(dev, journal.block_size, &replay);
        let sb_bytes = journal.recovered_superblock(&ov, &replay)?;
        ov.patch(sbf::SUPERBLOCK_OFFSET, &sb_bytes)?;
        Ok((Arc::new(ov), false))
    } else {
        journal.write_back(&replay)?;
        Ok((dev, false))
    }
}
