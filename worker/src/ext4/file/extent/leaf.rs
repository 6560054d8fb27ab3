//! Pure edits of one leaf's extents: insert with merging, remove a range
//! (trimming and splitting extents), change a range's written state.

use super::{MAX_INIT_LEN, MAX_UNINIT_LEN};
use crate::ext4::ondisk::extent::Extent;

pub(super) fn max_len(uninit: bool) -> u32 {
    if uninit { MAX_UNINIT_LEN } else { MAX_INIT_LEN }
}

/// Whether `b` can be appended to `a` (adjacent logically and physically,
/// same state, combined length allowed).
pub(crate) fn can_merge(a: &Extent, b: &Extent) -> bool {
    a.end() == u64::from(b.lblk)
        && a.pblk.checked_add(u64::from(a.len)) == Some(b.pblk)
        && a.uninit == b.uninit
        && u32::from(a.len).saturating_add(u32::from(b.len)) <= max_len(a.uninit)
}

/// Inserts `new` (which overlaps no extent) in order, merging it with its
/// neighbours where possible.
pub(crate) fn leaf_insert(exts: &mut Vec<Extent>, new: Extent) {
    let pos = exts.partition_point(|e| e.lblk < new.lblk);
    if let Some(left) = pos.checked_sub(1).and_then(|i| exts.get_mut(i))
        && can_merge(left, &new)
    {
        left.len = left.len.saturating_add(new.len);
        let merged = *left;
        if let Some(right) = exts.get(pos).copied()
            && can_merge(&merged, &right)
        {
            if let Some(l) = pos.checked_sub(1).and_then(|i| exts.get_mut(i)) {
                l.len = l.len.saturating_add(right.len);
            }
            exts.remove(pos);
        }
        return;
    }
    if let Some(right) = exts.get_mut(pos)
        && can_merge(&new, right)
    {
        right.lblk = new.lblk;
        right.pblk = new.pblk;
        right.len = right.len.saturating_add(new.len);
        return;
    }
    exts.insert(pos, new);
}

/// Piece of `e` covering logical [start, end) (inside `e`).
fn piece(e: &Extent, start: u64, end: u64, uninit: bool) -> Extent {
    let skip = start.saturating_sub(u64::from(e.lblk));
    Extent {
        lblk: start as u32,
        len: end.saturating_sub(start) as u16,
        pblk: e.pblk.saturating_add(skip),
        uninit,
    }
}

/// Removes logical [start, end) from the leaf, trimming and splitting
/// extents. Returns the pieces no longer mapped.
pub(crate) fn leaf_remove(exts: &mut Vec<Extent>, start: u64, end: u64) -> Vec<Extent> {
    let mut freed = Vec::new();
    if start >= end {
        return freed;
    }
    let mut out = Vec::with_capacity(exts.len().saturating_add(1));
    for e in exts.iter() {
        let (s, t) = (u64::from(e.lblk).max(start), e.end().min(end));
        if s >= t {
            out.push(*e);
            continue;
        }
        freed.push(piece(e, s, t, e.uninit));
        if u64::from(e.lblk) < s {
            out.push(piece(e, u64::from(e.lblk), s, e.uninit));
        }
        if t < e.end() {
            out.push(piece(e, t, e.end(), e.uninit));
        }
    }
    *exts = out;
    freed
}

/// Marks logical [start, end) unwritten (`uninit`) or written, splitting
/// extents at the boundaries and merging neighbours afterwards. Returns
/// whether anything changed.
pub(crate) fn leaf_set_state(exts: &mut Vec<Extent>, start: u64, end: u64, uninit: bool) -> bool {
    if start >= end
        || !exts
            .iter()
            .any(|e| e.uninit != uninit && u64::from(e.lblk) < end && e.end() > start)
    {
        return false;
    }
    let mut out: Vec<Extent> = Vec::with_capacity(exts.len().saturating_add(2));
    for e in exts.iter() {
        let (s, t) = (u64::from(e.lblk).max(start), e.end().min(end));
        if s >= t || e.uninit == uninit {
            out.push(*e);
            continue;
        }
        if u64::from(e.lblk) < s {
            out.push(piece(e, u64::from(e.lblk), s, e.uninit));
        }
        out.push(piece(e, s, t, uninit));
        if t < e.end() {
            out.push(piece(e, t, e.end(), e.uninit));
        }
    }
    // Merge neighbours (a written piece next to a written extent...).
    let mut merged: Vec<Extent> = Vec::with_capacity(out.len());
    for e in out {
        match merged.last_mut() {
            Some(last) if can_merge(last, &e) => last.len = last.len.saturating_add(e.len),
            _ => merged.push(e),
        }
    }
    *exts = merged;
    true
}
