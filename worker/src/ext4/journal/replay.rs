//! The three recovery passes over the log, as jbd2 defines them:
//!
//! 1. scan: from s_start/s_sequence, follow descriptor, revoke and commit
//!    blocks while each carries the expected sequence; check commit
//!    checksums (v1 crc32_be of the transaction, v2/v3 crc32c of the commit
//!    block) and descriptor/revoke tail checksums. The first transaction
//!    that is incomplete or fails a check ends the log (`end_transaction`).
//!    A checksum failure after which commit times go backwards is stale
//!    data from an older use of the journal and simply ends the log; one
//!    in a transaction that still looks current is corruption.
//! 2. revoke: collect revoke records of the transactions before the end.
//! 3. replay: for every tag of those transactions, newest copy wins,
//!    unless revoked by the same or a later transaction; check the data
//!    block's tag checksum and that the block it names is a filesystem
//!    block outside the journal.
//!
//! Nothing is written here: the result is a map from filesystem block to
//! the journal block holding its contents.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::{Journal, corrupt};
use crate::ext4::ondisk::journal::commit::{self, CommitBlock};
use crate::ext4::ondisk::journal::descriptor::DescriptorBlock;
use crate::ext4::ondisk::journal::revoke::RevokeBlock;
use crate::ext4::ondisk::journal::{
    Header, JBD2_COMMIT_BLOCK, JBD2_CRC32_CHKSUM, JBD2_CRC32_CHKSUM_SIZE, JBD2_DESCRIPTOR_BLOCK,
    JBD2_MAGIC_NUMBER, JBD2_REVOKE_BLOCK, crc32_be, data_csum, tail_csum_verify,
};
use crate::ext4::{Error, Result};
use crate::io::BlockDevice;

/// Where the replayed contents of one filesystem block are.
#[derive(Debug, Clone)]
pub(crate) enum Logged {
    /// In the journal at filesystem block `pblk`; `escaped`: its first
    /// four bytes were the jbd2 magic, stored as zeros.
    Journal { pblk: u64, escaped: bool },
    /// In memory (a block patched after replay, e.g. the superblock).
    Bytes(Arc<[u8]>),
}

impl Logged {
    /// The block's replayed contents.
    pub(crate) fn contents(&self, dev: &dyn BlockDevice, bs: u64) -> Result<Vec<u8>> {
        match self {
            Logged::Bytes(b) => Ok(b.to_vec()),
            Logged::Journal { pblk, escaped } => {
                let offset = pblk.saturating_mul(bs);
                let mut buf = vec![0u8; bs as usize];
                dev.read_at(&mut buf, offset)
                    .map_err(|source| Error::Io { offset, source })?;
                if *escaped && let Some(m) = buf.get_mut(..4) {
                    m.copy_from_slice(&JBD2_MAGIC_NUMBER.to_be_bytes());
                }
                Ok(buf)
            }
        }
    }
}

/// The result of recovery.
#[derive(Debug)]
pub(crate) struct Replay {
    /// Filesystem block -> its newest unrevoked logged copy.
    pub(crate) blocks: BTreeMap<u64, Logged>,
    /// First transaction in the log (s_sequence).
    pub(crate) start_transaction: u32,
    /// First transaction not replayed; the journal restarts after it.
    pub(crate) end_transaction: u32,
    /// A transaction whose commit checksum failed (the log ended before it).
    pub(crate) failed_commit: Option<u32>,
    pub(crate) nr_replays: u64,
    #[cfg_attr(
        not(test),
        expect(dead_code, reason = "replay statistic read by tests")
    )]
    pub(crate) nr_revokes: u64,
    pub(crate) nr_revoke_hits: u64,
    /// Whether the replayed log crosses the end of the journal.
    #[cfg_attr(
        not(test),
        expect(dead_code, reason = "replay statistic read by tests")
    )]
    pub(crate) log_wrapped: bool,
    /// The ext4 superblock before replay (its error fields are kept).
    pub(crate) pre_superblock: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pass {
    Scan,
    Revoke,
    Replay,
}

/// `a >= b` for transaction IDs, which wrap (the kernel's tid_geq).
fn tid_geq(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) >= 0
}

/// State carried from one pass to the next.
#[derive(Default)]
struct State {
    end: Option<u32>,
    failed_commit: Option<u32>,
    /// Block -> newest transaction that revoked it.
    revoked: HashMap<u64, u32>,
    blocks: BTreeMap<u64, Logged>,
    nr_replays: u64,
    nr_revokes: u64,
    nr_revoke_hits: u64,
    /// First bad data-block checksum seen in the replay pass.
    bad_block: Option<Error>,
    log_wrapped: bool,
}

/// A position in the circular log, with the number of reads left: no
/// pass may read more blocks than the log holds (plus the one block that
/// ends it), whatever the journal claims.
struct Cursor<'a> {
    j: &'a Journal,
    next: u32,
    tid: u32,
    budget: u64,
    wrapped: bool,
}

impl<'a> Cursor<'a> {
    fn new(j: &'a Journal) -> Result<Cursor<'a>> {
        let start = j.jsb.s_start;
        if start < j.first || start >= j.last {
            return Err(corrupt(
                format!(
                    "log start {start} outside the log area [{}, {})",
                    j.first, j.last
                ),
                0,
            ));
        }
        Ok(Cursor {
            j,
            next: start,
            tid: j.jsb.s_sequence,
            budget: u64::from(j.last.saturating_sub(j.first)).saturating_add(1),
            wrapped: false,
        })
    }

    /// The journal block at the cursor; moves past it, wrapping at the end
    /// of the log area.
    fn advance(&mut self) -> Result<u32> {
        if self.budget == 0 {
            return Err(corrupt(
                format!(
                    "the log runs past its own length ({} blocks) in transaction {}",
                    self.j.last.saturating_sub(self.j.first),
                    self.tid
                ),
                0,
            ));
        }
        self.budget = self.budget.saturating_sub(1);
        let cur = self.next;
        self.next = cur.saturating_add(1);
        if self.next >= self.j.last {
            self.next = self.j.first;
            self.wrapped = true;
        }
        Ok(cur)
    }

    fn take(&mut self) -> Result<(u32, Vec<u8>)> {
        let lblk = self.advance()?;
        Ok((lblk, self.j.read(lblk, self.j.jsb.s_maxlen)?))
    }

    fn skip(&mut self, n: usize) -> Result<()> {
        for _ in 0..n {
            self.advance()?;
        }
        Ok(())
    }
}

/// Runs the three passes over `j`'s log. `pre_superblock`: the ext4
/// superblock as read before replay. A journal with s_start 0 is empty.
pub(crate) fn replay(j: &Journal, pre_superblock: Vec<u8>) -> Result<Replay> {
    let mut st = State::default();
    if j.jsb.s_start == 0 {
        st.end = Some(j.jsb.s_sequence);
    } else {
        for pass in [Pass::Scan, Pass::Revoke, Pass::Replay] {
            one_pass(j, pass, &mut st)?;
        }
    }
    if let Some(e) = st.bad_block {
        return Err(e);
    }
    if let Some(t) = st.failed_commit {
        tracing::warn!(
            "journal: transaction {t} has a bad commit checksum; replaying the transactions \
             before it and marking the filesystem as having errors"
        );
    }
    Ok(Replay {
        blocks: st.blocks,
        start_transaction: j.jsb.s_sequence,
        end_transaction: st.end.unwrap_or(j.jsb.s_sequence),
        failed_commit: st.failed_commit,
        nr_replays: st.nr_replays,
        nr_revokes: st.nr_revokes,
        nr_revoke_hits: st.nr_revoke_hits,
        log_wrapped: st.log_wrapped,
        pre_superblock,
    })
}

/// The first transaction ID after the log's valid ones (the scan pass
/// alone: what jbd2_journal_skip_recovery counts from).
pub(crate) fn end_of_log(j: &Journal) -> Result<u32> {
    if j.jsb.s_start == 0 {
        return Ok(j.jsb.s_sequence);
    }
    let mut st = State::default();
    one_pass(j, Pass::Scan, &mut st)?;
    Ok(st.end.unwrap_or(j.jsb.s_sequence))
}

fn one_pass(j: &Journal, pass: Pass, st: &mut State) -> Result<()> {
    let fmt = &j.fmt;
    let scan = pass == Pass::Scan;
    let mut cur = Cursor::new(j)?;
    // Running compat-CHECKSUM sum of the current transaction.
    let mut crc_sum = !0u32;
    // A descriptor or revoke block failed its checksum: the next commit
    // block decides whether that is stale data or corruption.
    let mut need_check_commit_time = false;
    let mut last_commit_time = 0u64;
    loop {
        if let Some(end) = st.end
            && !scan
            && tid_geq(cur.tid, end)
        {
            break;
        }
        let (lblk, b) = cur.take()?;
        let Some(h) = Header::parse(&b) else { break };
        if h.h_sequence != cur.tid {
            break;
        }
        match h.h_blocktype {
            JBD2_DESCRIPTOR_BLOCK => {
                if !tail_csum_verify(fmt, &b) {
                    if !scan {
                        return Err(corrupt(
                            format!(
                                "bad checksum of descriptor block {lblk} in transaction {}",
                                cur.tid
                            ),
                            0,
                        ));
                    }
                    need_check_commit_time = true;
                }
                let d = DescriptorBlock::parse(&b, fmt);
                match pass {
                    Pass::Scan
                        if fmt.checksum_v1 && !need_check_commit_time && st.end.is_none() =>
                    {
                        crc_sum = crc32_be(crc_sum, &b);
                        for _ in &d.tags {
                            let (_, data) = cur.take()?;
                            crc_sum = crc32_be(crc_sum, &data);
                        }
                    }
                    Pass::Scan | Pass::Revoke => cur.skip(d.tags.len())?,
                    Pass::Replay => replay_tags(j, &mut cur, &d, st)?,
                }
            }
            JBD2_COMMIT_BLOCK => {
                let c = CommitBlock::parse(&b);
                if need_check_commit_time {
                    if c.h_commit_sec >= last_commit_time {
                        return Err(corrupt(
                            format!(
                                "bad descriptor or revoke checksum in transaction {}",
                                cur.tid
                            ),
                            0,
                        ));
                    }
                    // Older than the transaction before: stale blocks of an
                    // earlier use of the journal. The log ends here.
                    break;
                }
                if scan {
                    let mut bad = false;
                    if fmt.checksum_v1 {
                        if st.end.is_some() {
                            st.failed_commit = st.end;
                            break;
                        }
                        let found = c.h_chksum[0];
                        let matches = found == crc_sum
                            && c.h_chksum_type == JBD2_CRC32_CHKSUM
                            && c.h_chksum_size == JBD2_CRC32_CHKSUM_SIZE;
                        let unused = c.h_chksum_type == 0 && c.h_chksum_size == 0 && found == 0;
                        if matches || unused {
                            crc_sum = !0;
                        } else {
                            bad = true;
                        }
                    }
                    if !bad && !commit::csum_verify(fmt, &b) {
                        bad = true;
                    }
                    if bad {
                        if c.h_commit_sec < last_commit_time {
                            break;
                        }
                        st.end = Some(cur.tid);
                        if !fmt.async_commit {
                            st.failed_commit = Some(cur.tid);
                            break;
                        }
                    }
                    last_commit_time = c.h_commit_sec;
                }
                cur.tid = cur.tid.wrapping_add(1);
            }
            JBD2_REVOKE_BLOCK => {
                if scan && !tail_csum_verify(fmt, &b) {
                    need_check_commit_time = true;
                }
                if pass == Pass::Revoke {
                    let r = RevokeBlock::parse(&b, fmt, u64::from(lblk))?;
                    for rec in r.records {
                        st.nr_revokes = st.nr_revokes.saturating_add(1);
                        let e = st.revoked.entry(rec).or_insert(cur.tid);
                        if !tid_geq(*e, cur.tid) {
                            *e = cur.tid;
                        }
                    }
                }
            }
            _ => break,
        }
    }
    if pass == Pass::Replay {
        st.log_wrapped = cur.wrapped;
    }
    if scan {
        st.end.get_or_insert(cur.tid);
    } else if st.end != Some(cur.tid) {
        return Err(corrupt(
            format!(
                "the {pass:?} pass ended at transaction {}, the scan at {:?}",
                cur.tid, st.end
            ),
            0,
        ));
    }
    Ok(())
}

/// The replay pass over one descriptor block's tags.
fn replay_tags(j: &Journal, cur: &mut Cursor, d: &DescriptorBlock, st: &mut State) -> Result<()> {
    let tid = cur.tid;
    for tag in &d.tags {
        let (lblk, data) = cur.take()?;
        let target = tag.blocknr;
        if st
            .revoked
            .get(&target)
            .is_some_and(|&rev| tid_geq(rev, tid))
        {
            st.nr_revoke_hits = st.nr_revoke_hits.saturating_add(1);
            continue;
        }
        if j.fmt.has_csum_v2or3() && data_csum(&j.fmt, tid, &data) != tag.checksum {
            if st.bad_block.is_none() {
                st.bad_block = Some(corrupt(
                    format!(
                        "bad checksum of the copy of block {target} in transaction {tid} \
                         (journal block {lblk})"
                    ),
                    0,
                ));
            }
            continue;
        }
        if target >= j.fs_blocks {
            return Err(corrupt(
                format!(
                    "transaction {tid} names block {target}, past the end of the filesystem \
                     ({} blocks)",
                    j.fs_blocks
                ),
                0,
            ));
        }
        if j.contains_fs_block(target) {
            return Err(corrupt(
                format!("transaction {tid} would overwrite the journal itself (block {target})"),
                0,
            ));
        }
        let pblk = j
            .pblk(lblk)
            .ok_or_else(|| corrupt(format!("block {lblk} is outside the journal"), 0))?;
        st.blocks.insert(
            target,
            Logged::Journal {
                pblk,
                escaped: tag.escaped(),
            },
        );
        st.nr_replays = st.nr_replays.saturating_add(1);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tid_comparison_wraps() {
        assert!(tid_geq(5, 5));
        assert!(tid_geq(6, 5));
        assert!(!tid_geq(4, 5));
        assert!(tid_geq(1, u32::MAX));
        assert!(!tid_geq(u32::MAX, 1));
    }
}
