//! Extent tree editing: the write side of `ondisk::extent`.
//!
//! Every edit works on one root-to-leaf path at a time: load the path for a
//! logical block, change the leaf's extents with one of the pure `leaf_*`
//! functions, then [`store_path`] writes the path back bottom-up, splitting
//! nodes that overflow (new blocks near the old one), freeing nodes that
//! became empty, fixing each parent's index key to its child's first entry
//! (the kernel's ext4_ext_correct_indexes; both the kernel and e2fsck check
//! it) and growing the tree by one level when the root in i_block
//! overflows. Blocks a split needs are allocated before anything is
//! changed, so a full filesystem leaves the tree as it was.
//!
//! The tree talks to storage through [`TreeStore`] (the transaction in the
//! engine, a map in the unit tests).

mod cluster;
mod leaf;
mod path;

use leaf::max_len;
pub(crate) use leaf::{leaf_insert, leaf_remove, leaf_set_state};
pub(crate) use path::{load_path, merge_up, store_path};

use crate::ext4::cluster::Clusters;
use crate::ext4::ondisk::extent::{self, EXT_INIT_MAX_LEN, Extent};
use crate::ext4::ondisk::inode::I_BLOCK_SIZE;
use crate::ext4::{Error, Ino, Result};

/// Longest initialized extent.
pub(crate) const MAX_INIT_LEN: u32 = EXT_INIT_MAX_LEN as u32;
/// Longest unwritten extent.
pub(crate) const MAX_UNINIT_LEN: u32 = EXT_INIT_MAX_LEN as u32 - 1;
/// First logical block extents cannot address.
pub(crate) const LBLK_LIMIT: u64 = 1 << 32;
/// Cap on the leaves one range operation visits (far beyond any real
/// file: 2^32 blocks in extents of one block need 12.6M leaves of 340).
const MAX_LEAF_VISITS: u64 = 1 << 25;

/// Where tree blocks come from and go to.
pub(crate) trait TreeStore {
    /// Current contents of a tree block (this transaction's copy if any).
    fn read_tree_block(&mut self, blk: u64) -> Result<Vec<u8>>;
    /// Writes a whole tree block (`fresh`: just allocated).
    fn write_tree_block(&mut self, blk: u64, data: &[u8], fresh: bool) -> Result<()>;
    /// Up to `want` contiguous blocks near `goal`: (first, count >= 1).
    fn alloc(&mut self, goal: u64, want: u32) -> Result<(u64, u32)>;
    fn free(&mut self, first: u64, count: u32) -> Result<()>;
}

/// What the tree code needs to know about the filesystem and inode.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TreeCtx {
    pub(crate) ino: Ino,
    /// The inode-table block holding the inode: where faults in the root
    /// (i_block) are reported.
    pub(crate) inode_block: u64,
    pub(crate) block_size: usize,
    /// Inode checksum seed under metadata_csum.
    pub(crate) csum_seed: Option<u32>,
    /// Valid physical blocks: [first_block, end_block).
    pub(crate) first_block: u64,
    pub(crate) end_block: u64,
    /// Goal for the first allocation when nothing is mapped to the left.
    pub(crate) default_goal: u64,
    /// Cluster geometry (bigalloc; blocks otherwise).
    pub(crate) clusters: Clusters,
}

impl TreeCtx {
    /// i_blocks units (512-byte sectors) of one cluster: what a tree
    /// block, or a data cluster, is charged.
    fn cluster_sectors(&self) -> u64 {
        ((self.block_size / 512) as u64).saturating_mul(self.clusters.ratio())
    }
}

/// The inode fields the tree changes.
pub(crate) struct Root<'a> {
    pub(crate) i_block: &'a mut [u8; I_BLOCK_SIZE],
    /// i_blocks in 512-byte units.
    pub(crate) blocks: &'a mut u64,
}

fn corrupt(ctx: &TreeCtx, why: impl std::fmt::Display, blk: u64) -> Error {
    Error::corrupt(format!("inode {}: extent tree: {why}", ctx.ino), blk)
}

// ---------------------------------------------------------------------
// Range operations over the whole tree.

/// How a mapped run came to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RunKind {
    /// Already mapped and written.
    Written,
    /// Already mapped, unwritten (reads as zeros).
    Unwritten,
    /// Allocated by this call (state as asked).
    New,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Run {
    pub(crate) lblk: u64,
    pub(crate) pblk: u64,
    pub(crate) len: u32,
    pub(crate) kind: RunKind,
}

/// Maps [lblk, lblk+count), allocating holes as extents (unwritten if
/// asked). Runs come back in logical order and cover a prefix of the
/// range; the bool is true when allocation stopped on NoSpace before the
/// end (the tree is consistent either way).
pub(crate) fn map_alloc(
    store: &mut dyn TreeStore,
    ctx: &TreeCtx,
    root: &mut Root<'_>,
    lblk: u64,
    count: u64,
    unwritten: bool,
) -> Result<(Vec<Run>, bool)> {
    let end = lblk
        .checked_add(count)
        .filter(|&e| e <= LBLK_LIMIT)
        .ok_or(Error::Invalid("block range beyond what extents address"))?;
    let mut runs: Vec<Run> = Vec::new();
    let mut cur = lblk;
    let mut steps = 0u64;
    while cur < end {
        steps = steps.saturating_add(1);
        if steps > MAX_LEAF_VISITS.saturating_mul(4) {
            return Err(corrupt(ctx, "too many steps mapping a range", 0));
        }
        let mut path = load_path(store, ctx, root.i_block, cur)?;
        let (found, next) = path.lookup(cur);
        if let Some(e) = found {
            let stop = e.end().min(end);
            let len = stop.saturating_sub(cur) as u32;
            push_run(
                &mut runs,
                Run {
                    lblk: cur,
                    pblk: e.pblk.saturating_add(cur.saturating_sub(u64::from(e.lblk))),
                    len,
                    kind: if e.uninit {
                        RunKind::Unwritten
                    } else {
                        RunKind::Written
                    },
                },
            );
            cur = stop;
            continue;
        }
        let hole_end = next.map_or(end, |n| n.min(end)).max(cur.saturating_add(1));
        let (pblk, len, new_clusters) =
            match cluster::place(store, ctx, root.i_block, cur, hole_end)? {
                // Bigalloc: the logical cluster already has its physical one.
                cluster::Place::Implied { pblk, len } => (pblk, len.min(max_len(unwritten)), None),
                cluster::Place::Fresh { end: alloc_end } => {
                    let goal = path
                        .left_of(cur)
                        .map(|e| e.pblk.saturating_add(cur.saturating_sub(u64::from(e.lblk))))
                        .filter(|&g| g < ctx.end_block)
                        .unwrap_or(ctx.default_goal);
                    let want = alloc_end
                        .saturating_sub(cur)
                        .min(u64::from(max_len(unwritten))) as u32;
                    // New clusters start at the offset `cur` has in its
                    // logical cluster (below the ratio, so this fits).
                    let off = ctx.clusters.offset(cur) as u32;
                    let (first, got) = match store.alloc(goal, want.saturating_add(off)) {
                        Ok(r) => r,
                        Err(Error::NoSpace) => return Ok((runs, true)),
                        Err(e) => return Err(e),
                    };
                    let len = got.saturating_sub(off).min(want);
                    if len == 0 {
                        store.free(first, got)?;
                        return Err(corrupt(ctx, "allocation shorter than a cluster", first));
                    }
                    // The clusters of [first, pblk + len) are this
                    // file's now (the allocator returns no more).
                    (
                        first.saturating_add(u64::from(off)),
                        len,
                        Some((
                            first,
                            got,
                            ctx.clusters.count(u64::from(off.saturating_add(len))),
                        )),
                    )
                }
            };
        path.leaf_mut()?.push_sorted(Extent {
            lblk: cur as u32,
            len: len as u16,
            pblk,
            uninit: unwritten,
        });
        match store_path(store, ctx, root, path) {
            Ok(()) => {}
            Err(Error::NoSpace) => {
                if let Some((first, got, _)) = new_clusters {
                    store.free(first, got)?;
                }
                return Ok((runs, true));
            }
            Err(e) => return Err(e),
        }
        merge_up(store, ctx, root)?;
        if let Some((_, _, clusters)) = new_clusters {
            *root.blocks = root
                .blocks
                .saturating_add(clusters.saturating_mul(ctx.cluster_sectors()));
        }
        push_run(
            &mut runs,
            Run {
                lblk: cur,
                pblk,
                len,
                kind: RunKind::New,
            },
        );
        cur = cur.saturating_add(u64::from(len));
    }
    Ok((runs, false))
}

/// Appends `r`, extending the last run when `r` continues it.
pub(crate) fn push_run(runs: &mut Vec<Run>, r: Run) {
    if let Some(last) = runs.last_mut()
        && last.kind == r.kind
        && last.lblk.checked_add(u64::from(last.len)) == Some(r.lblk)
        && last.pblk.checked_add(u64::from(last.len)) == Some(r.pblk)
        && let Some(len) = last.len.checked_add(r.len)
    {
        last.len = len;
        return;
    }
    runs.push(r);
}

trait PushSorted {
    fn push_sorted(&mut self, e: Extent);
}
impl PushSorted for Vec<Extent> {
    fn push_sorted(&mut self, e: Extent) {
        leaf_insert(self, e);
    }
}

/// Visits every leaf overlapping [start, end) and applies `edit` to its
/// part of the range. `edit` returns whether it changed the leaf.
fn for_each_leaf(
    store: &mut dyn TreeStore,
    ctx: &TreeCtx,
    root: &mut Root<'_>,
    start: u64,
    end: u64,
    mut edit: impl FnMut(&mut dyn TreeStore, &mut Vec<Extent>, u64, u64) -> Result<bool>,
) -> Result<()> {
    let mut cur = start;
    let mut visits = 0u64;
    while cur < end {
        visits = visits.saturating_add(1);
        if visits > MAX_LEAF_VISITS {
            return Err(corrupt(ctx, "too many leaves in one range operation", 0));
        }
        let mut path = load_path(store, ctx, root.i_block, cur)?;
        let stop = path.bound.map_or(end, |b| b.min(end));
        let mut exts = path.leaf().to_vec();
        let changed = edit(store, &mut exts, cur, stop)?;
        if changed {
            *path.leaf_mut()? = exts;
            store_path(store, ctx, root, path)?;
        }
        match stop {
            s if s > cur => cur = s,
            _ => break,
        }
    }
    Ok(())
}

/// Unmaps [start, end): frees the data clusters no block of the file
/// maps any more (and tree blocks that become empty), adjusting i_blocks.
/// Returns the number of data blocks unmapped.
pub(crate) fn remove_range(
    store: &mut dyn TreeStore,
    ctx: &TreeCtx,
    root: &mut Root<'_>,
    start: u64,
    end: u64,
) -> Result<u64> {
    let end = end.min(LBLK_LIMIT);
    let mut removed: Vec<Extent> = Vec::new();
    for_each_leaf(store, ctx, root, start, end, |_, exts, s, t| {
        let pieces = leaf_remove(exts, s, t);
        let changed = !pieces.is_empty();
        removed.extend(pieces);
        Ok(changed)
    })?;
    let unmapped = removed.iter().map(|e| u64::from(e.len)).sum();
    let freed = cluster::free_unmapped(store, ctx, root.i_block, &removed, start, end)?;
    *root.blocks = root
        .blocks
        .saturating_sub(freed.saturating_mul(ctx.cluster_sectors()));
    Ok(unmapped)
}

/// Marks [start, end) unwritten or written where mapped.
pub(crate) fn set_state(
    store: &mut dyn TreeStore,
    ctx: &TreeCtx,
    root: &mut Root<'_>,
    start: u64,
    end: u64,
    uninit: bool,
) -> Result<()> {
    let end = end.min(LBLK_LIMIT);
    for_each_leaf(store, ctx, root, start, end, |_, exts, s, t| {
        Ok(leaf_set_state(exts, s, t, uninit))
    })?;
    merge_up(store, ctx, root)
}

/// Every extent of the tree in order (tests and whole-file walks).
#[cfg(test)]
pub(crate) fn all_extents(
    store: &mut dyn TreeStore,
    ctx: &TreeCtx,
    i_block: &[u8; I_BLOCK_SIZE],
) -> Result<Vec<Extent>> {
    let mut out: Vec<Extent> = Vec::new();
    let mut cur = 0u64;
    let mut visits = 0u64;
    loop {
        visits = visits.saturating_add(1);
        if visits > MAX_LEAF_VISITS {
            return Err(corrupt(ctx, "too many leaves", 0));
        }
        let path = load_path(store, ctx, i_block, cur)?;
        out.extend(path.leaf().iter().filter(|e| e.end() > cur));
        match path.bound {
            Some(b) if b > cur => cur = b,
            _ => return Ok(out),
        }
    }
}

/// A fresh empty extent root for i_block.
pub(crate) fn init_root(i_block: &mut [u8; I_BLOCK_SIZE]) -> Result<()> {
    i_block.fill(0);
    extent::empty_root(&mut i_block[..])
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeSet, HashMap};

    use super::*;

    fn e(lblk: u32, len: u16, pblk: u64, uninit: bool) -> Extent {
        Extent {
            lblk,
            len,
            pblk,
            uninit,
        }
    }

    #[test]
    fn insert_merges() {
        let mut v = vec![e(0, 4, 100, false), e(10, 2, 200, false)];
        leaf_insert(&mut v, e(4, 2, 104, false));
        assert_eq!(v, vec![e(0, 6, 100, false), e(10, 2, 200, false)]);
        leaf_insert(&mut v, e(8, 2, 198, false));
        assert_eq!(v, vec![e(0, 6, 100, false), e(8, 4, 198, false)]);
        leaf_insert(&mut v, e(6, 2, 106, true));
        assert_eq!(v.len(), 3);
        leaf_insert(&mut v, e(20, 1, 5, false));
        assert_eq!(v.last(), Some(&e(20, 1, 5, false)));
        // Left and right merge into one.
        let mut v = vec![e(0, 2, 10, false), e(3, 2, 13, false)];
        leaf_insert(&mut v, e(2, 1, 12, false));
        assert_eq!(v, vec![e(0, 5, 10, false)]);
        // Length limits.
        let mut v = vec![e(0, 32768, 10, false)];
        leaf_insert(&mut v, e(32768, 1, 32778, false));
        assert_eq!(v.len(), 2);
        let mut v = vec![e(0, 32767, 10, true)];
        leaf_insert(&mut v, e(32767, 1, 32777, true));
        assert_eq!(v.len(), 2);
    }

    #[test]
    fn remove_trims_and_splits() {
        let mut v = vec![e(0, 10, 100, false), e(20, 5, 300, true)];
        let runs = |f: Vec<Extent>| f.iter().map(|e| (e.pblk, e.len)).collect::<Vec<_>>();
        let f = leaf_remove(&mut v, 3, 5);
        assert_eq!(runs(f), vec![(103, 2)]);
        assert_eq!(
            v,
            vec![
                e(0, 3, 100, false),
                e(5, 5, 105, false),
                e(20, 5, 300, true)
            ]
        );
        let f = leaf_remove(&mut v, 8, 22);
        assert_eq!(runs(f), vec![(108, 2), (300, 2)]);
        assert_eq!(
            v,
            vec![
                e(0, 3, 100, false),
                e(5, 3, 105, false),
                e(22, 3, 302, true)
            ]
        );
        assert_eq!(leaf_remove(&mut v, 0, u64::MAX).len(), 3);
        assert!(v.is_empty());
    }

    #[test]
    fn set_state_splits_and_merges() {
        let mut v = vec![e(0, 10, 100, true)];
        assert!(leaf_set_state(&mut v, 2, 4, false));
        assert_eq!(
            v,
            vec![e(0, 2, 100, true), e(2, 2, 102, false), e(4, 6, 104, true)]
        );
        assert!(leaf_set_state(&mut v, 4, 10, false));
        assert_eq!(v, vec![e(0, 2, 100, true), e(2, 8, 102, false)]);
        assert!(!leaf_set_state(&mut v, 2, 10, false));
        assert!(leaf_set_state(&mut v, 0, 2, false));
        assert_eq!(v, vec![e(0, 10, 100, false)]);
        assert!(leaf_set_state(&mut v, 0, 10, true));
        assert_eq!(v, vec![e(0, 10, 100, true)]);
    }

    /// A fake filesystem: blocks in a map, a bitmap as a set.
    pub(crate) struct MemStore {
        pub(crate) blocks: HashMap<u64, Vec<u8>>,
        pub(crate) used: BTreeSet<u64>,
        pub(crate) total: u64,
        /// Allocation hands out at most this many blocks per call.
        pub(crate) max_run: u32,
    }

    impl MemStore {
        pub(crate) fn new(_bs: usize, total: u64) -> Self {
            MemStore {
                blocks: HashMap::new(),
                used: BTreeSet::new(),
                total,
                max_run: u32::MAX,
            }
        }
    }

    impl TreeStore for MemStore {
        fn read_tree_block(&mut self, blk: u64) -> Result<Vec<u8>> {
            assert!(self.used.contains(&blk), "reading free block {blk}");
            Ok(self.blocks.get(&blk).cloned().unwrap())
        }
        fn write_tree_block(&mut self, blk: u64, data: &[u8], _fresh: bool) -> Result<()> {
            assert!(self.used.contains(&blk), "writing free block {blk}");
            self.blocks.insert(blk, data.to_vec());
            Ok(())
        }
        fn alloc(&mut self, goal: u64, want: u32) -> Result<(u64, u32)> {
            let want = want.min(self.max_run);
            let start = (goal.max(1)..self.total)
                .chain(1..goal.max(1))
                .find(|b| !self.used.contains(b))
                .ok_or(Error::NoSpace)?;
            let mut n = 0u32;
            while n < want && start + u64::from(n) < self.total {
                if !self.used.insert(start + u64::from(n)) {
                    break;
                }
                n += 1;
            }
            Ok((start, n))
        }
        fn free(&mut self, first: u64, count: u32) -> Result<()> {
            for b in first..first + u64::from(count) {
                assert!(self.used.remove(&b), "double free of {b}");
                self.blocks.remove(&b);
            }
            Ok(())
        }
    }

    fn ctx(bs: usize, total: u64) -> TreeCtx {
        TreeCtx {
            ino: 12,
            inode_block: 0,
            block_size: bs,
            csum_seed: Some(0xfeed),
            first_block: 1,
            end_block: total,
            default_goal: 1,
            clusters: Clusters::new(0),
        }
    }

    /// Checks the whole tree the way a reader would (parse_node verifies
    /// every header, key order, parent keys and checksums) and that
    /// i_blocks matches data plus tree blocks.
    fn check(st: &mut MemStore, c: &TreeCtx, ib: &[u8; 60], blocks: u64) -> Vec<Extent> {
        let all = all_extents(st, c, ib).unwrap();
        for w in all.windows(2) {
            assert!(w[0].end() <= u64::from(w[1].lblk), "{w:?}");
        }
        let data: u64 = all.iter().map(|e| u64::from(e.len)).sum();
        let tree = st.blocks.len() as u64;
        assert_eq!(blocks, (data + tree) * (c.block_size as u64 / 512));
        all
    }

    #[test]
    fn tree_grows_splits_and_shrinks() {
        let bs = 1024;
        let c = ctx(bs, 1 << 20);
        let mut st = MemStore::new(bs, 1 << 20);
        st.max_run = 1;
        let mut ib = [0u8; 60];
        init_root(&mut ib).unwrap();
        let mut blocks = 0u64;
        // Every other block: each is its own extent (the allocator hands
        // out neighbours, but logical gaps stop merges).
        let n = 84 * 84 + 500; // forces depth 2 with 1 KiB blocks
        for i in 0..n {
            let mut root = Root {
                i_block: &mut ib,
                blocks: &mut blocks,
            };
            let (runs, short) = map_alloc(&mut st, &c, &mut root, 2 * i, 1, false).unwrap();
            assert!(!short);
            assert_eq!(runs.len(), 1);
            assert_eq!(runs[0].kind, RunKind::New);
        }
        assert_eq!(extent::header_depth(&ib), 2);
        let all = check(&mut st, &c, &ib, blocks);
        assert_eq!(all.len() as u64, n);
        // Mapping again allocates nothing.
        let mut root = Root {
            i_block: &mut ib,
            blocks: &mut blocks,
        };
        let (runs, _) = map_alloc(&mut st, &c, &mut root, 0, 2 * n, false).unwrap();
        assert_eq!(
            runs.iter().filter(|r| r.kind == RunKind::New).count() as u64,
            n
        );
        let all = check(&mut st, &c, &ib, blocks);
        assert!(all.len() as u64 <= 2 * n);
        // Punch the middle, then inside extents, then convert states.
        let mut root = Root {
            i_block: &mut ib,
            blocks: &mut blocks,
        };
        remove_range(&mut st, &c, &mut root, 1000, 9000).unwrap();
        set_state(&mut st, &c, &mut root, 0, 500, true).unwrap();
        set_state(&mut st, &c, &mut root, 100, 200, false).unwrap();
        let all = check(&mut st, &c, &ib, blocks);
        assert!(all.iter().all(|e| !(1000..9000).contains(&e.lblk)));
        // Truncate to 10 blocks, then to nothing: all tree blocks go.
        let mut root = Root {
            i_block: &mut ib,
            blocks: &mut blocks,
        };
        remove_range(&mut st, &c, &mut root, 10, LBLK_LIMIT).unwrap();
        let all = check(&mut st, &c, &ib, blocks);
        assert!(all.iter().all(|e| e.end() <= 10));
        let mut root = Root {
            i_block: &mut ib,
            blocks: &mut blocks,
        };
        remove_range(&mut st, &c, &mut root, 0, LBLK_LIMIT).unwrap();
        assert_eq!(blocks, 0);
        assert!(st.used.is_empty() && st.blocks.is_empty());
        assert_eq!(extent::header_depth(&ib), 0);
    }

    #[test]
    fn random_ops_keep_tree_valid() {
        let bs = 1024;
        let c = ctx(bs, 1 << 18);
        let mut st = MemStore::new(bs, 1 << 18);
        st.max_run = 3;
        let mut ib = [0u8; 60];
        init_root(&mut ib).unwrap();
        let mut blocks = 0u64;
        // Reference: lblk -> (pblk, uninit).
        let mut model: std::collections::BTreeMap<u64, (u64, bool)> = Default::default();
        let mut x = 0x1234_5678_9abc_def1u64;
        let mut rnd = |m: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % m
        };
        for _ in 0..3000 {
            let op = rnd(10);
            let a = rnd(20000);
            let big = rnd(5) == 0;
            let len = 1 + rnd(if big { 400 } else { 6 });
            let mut root = Root {
                i_block: &mut ib,
                blocks: &mut blocks,
            };
            match op {
                0..=5 => {
                    let un = rnd(3) == 0;
                    let (runs, _) = map_alloc(&mut st, &c, &mut root, a, len, un).unwrap();
                    for r in runs {
                        for k in 0..u64::from(r.len) {
                            let want = match r.kind {
                                RunKind::New => (r.pblk + k, un),
                                RunKind::Written => (r.pblk + k, false),
                                RunKind::Unwritten => (r.pblk + k, true),
                            };
                            let prev = model.insert(r.lblk + k, want);
                            if r.kind == RunKind::New {
                                assert!(prev.is_none());
                            } else {
                                assert_eq!(prev, Some(want));
                            }
                        }
                    }
                }
                6 | 7 => {
                    remove_range(&mut st, &c, &mut root, a, a + len).unwrap();
                    for k in a..a + len {
                        model.remove(&k);
                    }
                }
                _ => {
                    let un = op == 8;
                    set_state(&mut st, &c, &mut root, a, a + len, un).unwrap();
                    for k in a..a + len {
                        if let Some(v) = model.get_mut(&k) {
                            v.1 = un;
                        }
                    }
                }
            }
        }
        let all = check(&mut st, &c, &ib, blocks);
        let mut flat = std::collections::BTreeMap::new();
        for e in &all {
            for k in 0..u64::from(e.len) {
                flat.insert(u64::from(e.lblk) + k, (e.pblk + k, e.uninit));
            }
        }
        assert_eq!(flat, model);
        // Every used block is data or tree.
        assert_eq!(
            st.used.len() as u64,
            model.len() as u64 + st.blocks.len() as u64
        );
    }

    #[test]
    fn nospace_leaves_tree_intact() {
        let bs = 1024;
        let c = ctx(bs, 300);
        let mut st = MemStore::new(bs, 300);
        st.max_run = 1;
        let mut ib = [0u8; 60];
        init_root(&mut ib).unwrap();
        let mut blocks = 0u64;
        let mut short_seen = false;
        for i in 0..400u64 {
            let mut root = Root {
                i_block: &mut ib,
                blocks: &mut blocks,
            };
            let (runs, short) = map_alloc(&mut st, &c, &mut root, 2 * i, 1, false).unwrap();
            if short {
                assert!(runs.is_empty());
                short_seen = true;
            }
        }
        assert!(short_seen);
        check(&mut st, &c, &ib, blocks);
        assert_eq!(st.used.len(), 299);
    }

    /// Oracle (e2fsck, debugfs, the kernel): an extent tree built through
    /// the engine on a real image (1 KiB blocks; 700 one-block extents
    /// written in a scrambled order, so leaves split and the tree grows a
    /// level; then the gaps between some of them filled, so extents
    /// merge). e2fsck -fn checks the tree, debugfs shows its depth, and
    /// the kernel reads exactly the bytes written, holes as zeros.
    #[test]
    fn engine_extent_tree_checked_by_e2fsck_and_kernel() {
        use crate::ext4::ROOT_INO;
        use crate::ext4::testutil::{RwImage, assert_fsck_clean};
        use crate::ext4::testutil::{debugfs_out, have_mkfs, pattern};
        if !have_mkfs() {
            return;
        }
        const BS: usize = 1024;
        let im = RwImage::new("extent-oracle", &["-b", "1024"]);
        let fs = im.open();
        let ino = fs
            .create(ROOT_INO, b"frag", 0o100644, 0, 0, 0, 0)
            .unwrap()
            .ino;
        let n = 700usize;
        let mut model = vec![0u8; 2 * n * BS];
        let mut order: Vec<usize> = (0..n).collect();
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for i in (1..n).rev() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            order.swap(i, (x % (i as u64 + 1)) as usize);
        }
        for (k, &i) in order.iter().enumerate() {
            let data = pattern(BS, k as u64 + 1);
            let off = 2 * i * BS;
            fs.write(ino, off as u64, &data).unwrap();
            model[off..off + BS].copy_from_slice(&data);
        }
        for i in (0..n - 1).filter(|i| i % 5 == 0) {
            let data = pattern(BS, 10_000 + i as u64);
            let off = (2 * i + 1) * BS;
            fs.write(ino, off as u64, &data).unwrap();
            model[off..off + BS].copy_from_slice(&data);
        }
        let len = (2 * (n - 1) + 1) * BS;
        model.truncate(len);
        fs.shutdown().unwrap();
        drop(fs);
        let img = im.save();
        assert_fsck_clean(img, "extent tree edits through the engine");
        let ex = debugfs_out(img, "ex /frag");
        assert!(
            ex.lines().any(|l| l.trim_start().starts_with("1/")),
            "debugfs shows no second tree level:\n{}",
            ex.lines().take(8).collect::<Vec<_>>().join("\n")
        );
        let Some(kernel) =
            crate::ext4::testutil::with_kernel_mount(img, |mnt: &std::path::Path| {
                std::fs::read(mnt.join("frag")).unwrap()
            })
        else {
            return;
        };
        assert_eq!(kernel.len(), model.len(), "size the kernel sees");
        assert!(
            kernel == model,
            "the kernel reads other bytes than the engine wrote"
        );
    }
}
