//! The extent tree's side of the bigalloc rules (`ext4::cluster`): where
//! a new block of a file goes when its logical cluster is already partly
//! mapped (the kernel's get_implied_cluster_alloc and the cluster-rounded
//! overlap check of ext4_ext_check_overlap), and which physical clusters
//! removing blocks frees (the partial-cluster logic of ext4_ext_rm_leaf /
//! ext4_remove_blocks: a cluster is freed only when no block of its
//! logical cluster stays mapped). Without bigalloc both reduce to the
//! block rules: every hole is fresh, every removed block freed.

use std::collections::BTreeMap;

use super::{LBLK_LIMIT, MAX_LEAF_VISITS, TreeCtx, TreeStore, corrupt, load_path};
use crate::ext4::Result;
use crate::ext4::ondisk::extent::Extent;
use crate::ext4::ondisk::inode::I_BLOCK_SIZE;

/// Where the blocks of a hole starting at `cur` go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Place {
    /// Into the physical cluster the logical cluster already uses:
    /// `len` blocks at `pblk` (nothing to allocate, nothing to charge).
    Implied { pblk: u64, len: u32 },
    /// Into newly allocated clusters, for the blocks below `end` (the
    /// hole's end, cut back to a cluster boundary when the hole's last
    /// logical cluster is already partly mapped).
    Fresh { end: u64 },
}

/// How to map the hole `[cur, hole_end)` (`cur` unmapped).
pub(super) fn place(
    store: &mut dyn TreeStore,
    ctx: &TreeCtx,
    i_block: &[u8; I_BLOCK_SIZE],
    cur: u64,
    hole_end: u64,
) -> Result<Place> {
    let c = ctx.clusters;
    if !c.is_bigalloc() {
        return Ok(Place::Fresh { end: hole_end });
    }
    let (cs, ce) = c.span(cur);
    if let Some(first) = mapped_cluster(store, ctx, i_block, cs, ce)? {
        let pblk = first.saturating_add(c.offset(cur));
        if pblk < ctx.first_block || pblk >= ctx.end_block {
            return Err(corrupt(
                ctx,
                format_args!("logical block {cur} would map to block {pblk}"),
                ctx.inode_block,
            ));
        }
        let len = hole_end.min(ce).saturating_sub(cur);
        return Ok(Place::Implied {
            pblk,
            len: u32::try_from(len).unwrap_or(u32::MAX).max(1),
        });
    }
    // The hole's last cluster, when another cluster than cur's, may be
    // partly mapped further right: new clusters stop before it (the next
    // round maps it as implied).
    let (ls, le) = c.span(hole_end.saturating_sub(1));
    if ls > cur && mapped_cluster(store, ctx, i_block, ls, le)?.is_some() {
        return Ok(Place::Fresh { end: ls });
    }
    Ok(Place::Fresh { end: hole_end })
}

/// The physical cluster (its first block) that logical cluster
/// `[cs, ce)` uses, if any block of it is mapped; a mapping at another
/// offset in its cluster than its logical block is corruption.
fn mapped_cluster(
    store: &mut dyn TreeStore,
    ctx: &TreeCtx,
    i_block: &[u8; I_BLOCK_SIZE],
    cs: u64,
    ce: u64,
) -> Result<Option<u64>> {
    let c = ctx.clusters;
    let ce = ce.min(LBLK_LIMIT);
    let mut cur = cs;
    // The bound strictly grows, so this visits at most the leaves that
    // cover the cluster; the cap only guards against a bad tree.
    for _ in 0..MAX_LEAF_VISITS {
        if cur >= ce {
            break;
        }
        let path = load_path(store, ctx, i_block, cur)?;
        if let Some(e) = path
            .leaf()
            .iter()
            .find(|e| e.end() > cur && u64::from(e.lblk) < ce)
        {
            let l = u64::from(e.lblk).max(cur);
            let p = e.pblk.saturating_add(l.saturating_sub(u64::from(e.lblk)));
            if !c.aligned(l, p) {
                return Err(misaligned(ctx, l, p));
            }
            return Ok(Some(c.floor(p)));
        }
        match path.bound {
            Some(b) if b > cur => cur = b,
            _ => break,
        }
    }
    Ok(None)
}

fn misaligned(ctx: &TreeCtx, lblk: u64, pblk: u64) -> crate::ext4::Error {
    corrupt(
        ctx,
        format_args!(
            "logical block {lblk} maps to block {pblk}, at another offset in its cluster (violates cluster allocation rules)"
        ),
        ctx.inode_block,
    )
}

/// Frees the physical clusters of the `removed` pieces (just unmapped
/// from logical `[start, end)`) that no mapped block uses any more.
/// Returns how many clusters were freed (i_blocks drops by as many).
pub(super) fn free_unmapped(
    store: &mut dyn TreeStore,
    ctx: &TreeCtx,
    i_block: &[u8; I_BLOCK_SIZE],
    removed: &[Extent],
    start: u64,
    end: u64,
) -> Result<u64> {
    let c = ctx.clusters;
    let mut freed = 0u64;
    // Logical cluster -> physical cluster, for the clusters a piece covers
    // only in part: they may hold blocks of other pieces, or blocks still
    // mapped outside the range.
    let mut partial: BTreeMap<u64, u64> = BTreeMap::new();
    for e in removed {
        let (l, p, n) = (u64::from(e.lblk), e.pblk, u64::from(e.len));
        if n == 0 {
            continue;
        }
        if !c.aligned(l, p) {
            return Err(misaligned(ctx, l, p));
        }
        let le = l.saturating_add(n);
        let whole = |k: u64| c.start(k) >= l && c.start(k).saturating_add(c.ratio()) <= le;
        let (k0, k1) = (c.of(l), c.of(le.saturating_sub(1)));
        for k in [k0, k1] {
            if !whole(k) {
                let pk = c.of(p.saturating_add(c.start(k).max(l).saturating_sub(l)));
                if partial.insert(k, pk).is_some_and(|old| old != pk) {
                    return Err(corrupt(
                        ctx,
                        format_args!("logical cluster {k} maps to two physical clusters"),
                        ctx.inode_block,
                    ));
                }
            }
        }
        // The clusters this piece covers entirely go at once.
        let w0 = if whole(k0) { k0 } else { k0.saturating_add(1) };
        let w1 = if whole(k1) { k1.saturating_add(1) } else { k1 };
        if w0 < w1 {
            let first = p.saturating_add(c.start(w0).saturating_sub(l));
            let blocks = c.start(w1.saturating_sub(w0));
            store.free(first, u32::try_from(blocks).unwrap_or(u32::MAX))?;
            freed = freed.saturating_add(w1.saturating_sub(w0));
        }
    }
    for (k, pk) in partial {
        let (cs, ce) = (c.start(k), c.start(k).saturating_add(c.ratio()));
        let inside = cs >= start && ce <= end;
        if !inside && let Some(still) = mapped_cluster(store, ctx, i_block, cs, ce)? {
            if c.of(still) != pk {
                return Err(corrupt(
                    ctx,
                    format_args!("logical cluster {k} maps to two physical clusters"),
                    ctx.inode_block,
                ));
            }
            continue;
        }
        store.free(c.start(pk), 1)?;
        freed = freed.saturating_add(1);
    }
    Ok(freed)
}
