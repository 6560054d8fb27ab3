//! Indirect block maps (ext2/ext3 files, ext4 files without EXTENTS_FL):
//! mapping a logical block (the one walker, read and write paths alike),
//! allocating data and indirect blocks along the 12 direct / single /
//! double / triple path, and freeing ranges (truncate, punch, release),
//! including indirect blocks whose whole subtree went away. Indirect
//! blocks carry no checksum.

use std::sync::Arc;

use super::Mapping;
use super::extent::{Run, RunKind, push_run};
use crate::ext4::ondisk::indirect::{self, DIRECT_BLOCKS};
use crate::ext4::ondisk::inode::{I_BLOCK_SIZE, Inode};
use crate::ext4::txn::Txn;
use crate::ext4::{Error, Ext4, Ino, Result};

/// Where one block pointer lives.
#[derive(Debug, Clone, Copy)]
enum Slot {
    /// i_block[index].
    Inode(usize),
    /// Entry `index` of indirect block `block`.
    Block { block: u64, index: usize },
}

/// The inode fields the map changes, plus what the walk needs.
pub(crate) struct IndCtx<'a> {
    pub(crate) ino: Ino,
    pub(crate) i_block: &'a mut [u8; I_BLOCK_SIZE],
    pub(crate) blocks: &'a mut u64,
    pub(crate) default_goal: u64,
    pub(crate) reserved_ok: bool,
}

fn get_ptr(txn: &Txn<'_>, ib: &[u8; I_BLOCK_SIZE], slot: Slot) -> Result<u64> {
    Ok(match slot {
        Slot::Inode(i) => indirect::ptr(ib, i as u64),
        Slot::Block { block, index } => indirect::ptr(&txn.block(block)?, index as u64),
    })
}

fn set_ptr(txn: &mut Txn<'_>, ib: &mut [u8; I_BLOCK_SIZE], slot: Slot, v: u64) -> Result<()> {
    let v = u32::try_from(v).map_err(|_| Error::Invalid("block number beyond 32 bits"))?;
    let (buf, at): (&mut [u8], usize) = match slot {
        Slot::Inode(i) => (&mut ib[..], i),
        Slot::Block { block, index } => (txn.block_mut(block)?, index),
    };
    indirect::set_ptr(buf, at as u64, v);
    Ok(())
}

impl Ext4 {
    /// The indirect-map walker (the one copy): maps `lblk` through the
    /// indirect blocks `read` returns (the cache, or a transaction's view).
    pub(crate) fn map_indirect(
        &self,
        inode: &Inode,
        lblk: u64,
        read: &mut dyn FnMut(u64) -> Result<Arc<[u8]>>,
    ) -> Result<Mapping> {
        let per_block = u64::from(self.block_size() / 4);
        let Some(path) = indirect::path(lblk, per_block) else {
            return Ok(Mapping::Hole { len: u64::MAX });
        };
        let bad =
            |what: String, blk: u64| Error::corrupt(format!("inode {}: {what}", inode.ino), blk);
        // The array holding the data pointer: i_block for direct blocks,
        // else the last indirect block on the path.
        let direct = path.offsets.is_empty();
        let mut table: Arc<[u8]> = Arc::from(&inode.i_block[..]);
        let mut table_blk = 0u64;
        let mut index = path.slot as u64;
        let levels = path.offsets.len();
        for (level, &off) in path.offsets.iter().enumerate() {
            let ptr = indirect::ptr(&table, index);
            if ptr == 0 {
                // The whole subtree under this pointer is a hole; skip to its
                // end (measured from lblk's position inside it).
                let below = indirect::span(levels.saturating_sub(level), per_block);
                let pos_in = lblk_pos(path.offsets.get(level..).unwrap_or(&[]), per_block);
                return Ok(Mapping::Hole {
                    len: below.saturating_sub(pos_in).max(1),
                });
            }
            if !self.blocks_valid(ptr, 1) {
                return Err(bad(
                    format!("indirect block {ptr} outside the filesystem"),
                    table_blk,
                ));
            }
            table = read(ptr)?;
            table_blk = ptr;
            index = off;
        }
        // Scan the data pointers from `index` for a contiguous run or hole.
        let end = if direct {
            indirect::DIRECT_BLOCKS
        } else {
            per_block
        };
        let first = indirect::ptr(&table, index);
        let mut len = 1u64;
        while index.saturating_add(len) < end {
            let p = indirect::ptr(&table, index.saturating_add(len));
            let contiguous = if first == 0 {
                p == 0
            } else {
                first.checked_add(len) == Some(p)
            };
            if !contiguous {
                break;
            }
            len = len.saturating_add(1);
        }
        if first == 0 {
            return Ok(Mapping::Hole { len });
        }
        if !self.blocks_valid(first, len) {
            return Err(bad(
                format!("data block {first} outside the filesystem"),
                table_blk,
            ));
        }
        Ok(Mapping::Mapped {
            pblk: first,
            len,
            uninit: false,
        })
    }

    fn ind_bad(&self, ino: Ino, ptr: u64, at: u64) -> Error {
        Error::corrupt(
            format!("inode {ino}: indirect map points outside the filesystem (block {ptr})"),
            at,
        )
    }

    /// Maps [lblk, lblk+count), allocating missing indirect and data
    /// blocks (new indirect blocks zero-filled). Returns the runs in order
    /// and whether NoSpace stopped it early.
    pub(crate) fn ind_map_alloc(
        &self,
        txn: &mut Txn<'_>,
        c: &mut IndCtx<'_>,
        lblk: u64,
        count: u64,
    ) -> Result<(Vec<Run>, bool)> {
        let per = u64::from(self.block_size() / 4);
        let spb = u64::from(self.block_size() / 512);
        let end = lblk.saturating_add(count);
        let mut runs: Vec<Run> = Vec::new();
        let mut cur = lblk;
        let mut last_pblk: Option<u64> = None;
        while cur < end {
            let path = indirect::path(cur, per).ok_or(Error::FileTooBig)?;
            // Walk (allocating) to the table holding the data pointer.
            let mut slot = Slot::Inode(path.slot);
            let mut parent_blk = 0u64;
            for &off in &path.offsets {
                let mut ptr = get_ptr(txn, c.i_block, slot)?;
                if ptr == 0 {
                    let goal = last_pblk.map_or(c.default_goal, |p| p.saturating_add(1));
                    let (b, _) = match txn.alloc_blocks(goal, 1, c.reserved_ok) {
                        Ok(r) => r,
                        Err(Error::NoSpace) => return Ok((runs, true)),
                        Err(e) => return Err(e),
                    };
                    txn.block_new(b)?;
                    set_ptr(txn, c.i_block, slot, b)?;
                    *c.blocks = c.blocks.saturating_add(spb);
                    last_pblk = Some(b);
                    ptr = b;
                } else if !self.blocks_valid(ptr, 1) {
                    return Err(self.ind_bad(c.ino, ptr, parent_blk));
                }
                parent_blk = ptr;
                slot = Slot::Block {
                    block: ptr,
                    index: off as usize,
                };
            }
            // Data pointers from `slot` to the end of its table.
            let (table_end, index) = match slot {
                Slot::Inode(i) => (DIRECT_BLOCKS as usize, i),
                Slot::Block { index, .. } => (per as usize, index),
            };
            let room = (table_end.saturating_sub(index) as u64).min(end.saturating_sub(cur));
            let ptr = get_ptr(txn, c.i_block, slot)?;
            if ptr != 0 {
                if !self.blocks_valid(ptr, 1) {
                    return Err(self.ind_bad(c.ino, ptr, parent_blk));
                }
                push_run(
                    &mut runs,
                    Run {
                        lblk: cur,
                        pblk: ptr,
                        len: 1,
                        kind: RunKind::Written,
                    },
                );
                last_pblk = Some(ptr);
                cur = cur.saturating_add(1);
                continue;
            }
            // Count the holes in a row, then allocate them in one go.
            let table: Vec<u8> = match slot {
                Slot::Inode(_) => c.i_block.to_vec(),
                Slot::Block { block, .. } => txn.block(block)?.to_vec(),
            };
            let mut holes = 1u64;
            while holes < room && indirect::ptr(&table, (index as u64).saturating_add(holes)) == 0 {
                holes = holes.saturating_add(1);
            }
            let goal = last_pblk.map_or(c.default_goal, |p| p.saturating_add(1));
            let want = u32::try_from(holes).unwrap_or(u32::MAX);
            let (first, got) = match txn.alloc_blocks(goal, want, c.reserved_ok) {
                Ok(r) => r,
                Err(Error::NoSpace) => return Ok((runs, true)),
                Err(e) => return Err(e),
            };
            for k in 0..u64::from(got) {
                set_ptr(
                    txn,
                    c.i_block,
                    with_index(slot, index.saturating_add(k as usize)),
                    first.saturating_add(k),
                )?;
            }
            *c.blocks = c.blocks.saturating_add(u64::from(got).saturating_mul(spb));
            push_run(
                &mut runs,
                Run {
                    lblk: cur,
                    pblk: first,
                    len: got,
                    kind: RunKind::New,
                },
            );
            last_pblk = Some(first.saturating_add(u64::from(got)).saturating_sub(1));
            cur = cur.saturating_add(u64::from(got));
        }
        Ok((runs, false))
    }

    /// Frees every data block in [start, end) and every indirect block
    /// whose whole range lies inside it. Returns the data blocks freed.
    pub(crate) fn ind_remove_range(
        &self,
        txn: &mut Txn<'_>,
        c: &mut IndCtx<'_>,
        start: u64,
        end: u64,
    ) -> Result<u64> {
        let per = u64::from(self.block_size() / 4);
        let mut f = Freer::default();
        for i in 0..DIRECT_BLOCKS as usize {
            let l = i as u64;
            if l >= start && l < end {
                let p = indirect::ptr(c.i_block, l);
                if p != 0 {
                    if !self.blocks_valid(p, 1) {
                        return Err(self.ind_bad(c.ino, p, 0));
                    }
                    f.data(p);
                    set_ptr(txn, c.i_block, Slot::Inode(i), 0)?;
                }
            }
        }
        let mut base = DIRECT_BLOCKS;
        for (level, slot) in [
            (1usize, indirect::IND_BLOCK),
            (2, indirect::DIND_BLOCK),
            (3, indirect::TIND_BLOCK),
        ] {
            let span = indirect::span(level, per);
            let p = indirect::ptr(c.i_block, slot as u64);
            if p != 0
                && base < end
                && base.saturating_add(span) > start
                && self.prune(txn, c.ino, p, level, base, start, end, &mut f)?
            {
                set_ptr(txn, c.i_block, Slot::Inode(slot), 0)?;
            }
            base = base.saturating_add(span);
        }
        let spb = u64::from(self.block_size() / 512);
        let total = f.data_count.saturating_add(f.meta_count);
        *c.blocks = c.blocks.saturating_sub(total.saturating_mul(spb));
        for (p, n) in f.runs {
            txn.free_blocks(p, n)?;
        }
        Ok(f.data_count)
    }

    /// Frees the part of the subtree under indirect block `ptr` (covering
    /// logical blocks from `base`, `level` levels above the data) that lies
    /// in [start, end). True when the whole subtree (and `ptr`) was freed:
    /// it lay inside the range, or it held the range's start, only holes
    /// before it, and the range ran past its end (left empty, as the
    /// kernel frees it).
    #[expect(clippy::too_many_arguments, reason = "recursive walk state")]
    fn prune(
        &self,
        txn: &mut Txn<'_>,
        ino: Ino,
        ptr: u64,
        level: usize,
        base: u64,
        start: u64,
        end: u64,
        f: &mut Freer,
    ) -> Result<bool> {
        if !self.blocks_valid(ptr, 1) {
            return Err(self.ind_bad(ino, ptr, 0));
        }
        let per = u64::from(self.block_size() / 4);
        let span = indirect::span(level, per);
        let child_span = indirect::span(level.saturating_sub(1), per);
        let whole = base >= start && base.saturating_add(span) <= end;
        let table = txn.block(ptr)?;
        let mut changed: Vec<usize> = Vec::new();
        for i in 0..per as usize {
            let cb = base.saturating_add((i as u64).saturating_mul(child_span));
            if cb >= end || cb.saturating_add(child_span) <= start {
                continue;
            }
            let p = indirect::ptr(&table, i as u64);
            if p == 0 {
                continue;
            }
            if level == 1 {
                if !self.blocks_valid(p, 1) {
                    return Err(self.ind_bad(ino, p, ptr));
                }
                f.data(p);
                changed.push(i);
            } else if self.prune(txn, ino, p, level.saturating_sub(1), cb, start, end, f)? {
                changed.push(i);
            }
        }
        if whole {
            f.meta(ptr);
            return Ok(true);
        }
        // The kernel (ext4_find_shared on the start of the range) detaches
        // an indirect block that holds the range's start when everything
        // before the start is a hole and the range runs past its end: it
        // would be left empty. A block holding the range's end, or both
        // ends, stays even when emptied.
        let holds_start = base < start;
        let runs_past = base.saturating_add(span) <= end;
        if holds_start && runs_past {
            let empty_after = (0..per as usize)
                .all(|i| changed.contains(&i) || indirect::ptr(&table, i as u64) == 0);
            if empty_after {
                f.meta(ptr);
                return Ok(true);
            }
        }
        if !changed.is_empty() {
            let b = txn.block_mut(ptr)?;
            for i in changed {
                indirect::set_ptr(b, i as u64, 0);
            }
        }
        Ok(false)
    }
}

fn with_index(slot: Slot, index: usize) -> Slot {
    match slot {
        Slot::Inode(_) => Slot::Inode(index),
        Slot::Block { block, .. } => Slot::Block { block, index },
    }
}

/// Collects blocks to free as contiguous runs.
#[derive(Default)]
struct Freer {
    runs: Vec<(u64, u32)>,
    data_count: u64,
    meta_count: u64,
}

impl Freer {
    fn add(&mut self, p: u64) {
        if let Some((s, n)) = self.runs.last_mut()
            && s.checked_add(u64::from(*n)) == Some(p)
            && let Some(more) = n.checked_add(1)
        {
            *n = more;
            return;
        }
        self.runs.push((p, 1));
    }
    fn data(&mut self, p: u64) {
        self.data_count = self.data_count.saturating_add(1);
        self.add(p);
    }
    fn meta(&mut self, p: u64) {
        self.meta_count = self.meta_count.saturating_add(1);
        self.add(p);
    }
}

/// Position of a block inside the subtree reached by `offsets` (the
/// remaining indexes below some pointer).
fn lblk_pos(offsets: &[u64], per_block: u64) -> u64 {
    offsets.iter().fold(0u64, |acc, &o| {
        acc.saturating_mul(per_block).saturating_add(o)
    })
}
