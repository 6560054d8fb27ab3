//! Root-to-leaf paths: loading the path for a logical block, and
//! writing it back bottom-up (splits, index keys, growing and shrinking
//! the tree by a level).

use super::{Root, TreeCtx, TreeStore, corrupt};
use crate::ext4::ondisk::extent::{
    self, Extent, ExtentIndex, ExtentNode, NodeCtx, node_capacity, write_node,
};
use crate::ext4::ondisk::inode::I_BLOCK_SIZE;
use crate::ext4::{Error, Result};

struct Level {
    /// None for the root (i_block).
    block: Option<u64>,
    depth: u16,
    node: ExtentNode,
    /// Index levels: the child on the path.
    idx: usize,
    dirty: bool,
    /// Every ancestor chose its last child (splits then keep the left
    /// node full, good for appends).
    rightmost: bool,
}

impl Level {
    fn len(&self) -> usize {
        match &self.node {
            ExtentNode::Leaf(e) => e.len(),
            ExtentNode::Index(i) => i.len(),
        }
    }
    fn first(&self) -> Option<u32> {
        match &self.node {
            ExtentNode::Leaf(e) => e.first().map(|e| e.lblk),
            ExtentNode::Index(i) => i.first().map(|i| i.lblk),
        }
    }
}

/// One root-to-leaf path.
pub(crate) struct Path {
    levels: Vec<Level>,
    /// The leaf is responsible for logical blocks below this (None: to the
    /// end): the next index key of any ancestor.
    pub(crate) bound: Option<u64>,
}

impl Path {
    /// The leaf's extents (marking the leaf dirty).
    pub(crate) fn leaf_mut(&mut self) -> Result<&mut Vec<Extent>> {
        let l = self
            .levels
            .last_mut()
            .ok_or(Error::Invalid("empty extent path"))?;
        l.dirty = true;
        match &mut l.node {
            ExtentNode::Leaf(e) => Ok(e),
            // load_path only ends on a leaf.
            ExtentNode::Index(_) => Err(Error::Invalid("extent path ends on an index")),
        }
    }
    pub(crate) fn leaf(&self) -> &[Extent] {
        match self.levels.last().map(|l| &l.node) {
            Some(ExtentNode::Leaf(e)) => e,
            _ => &[],
        }
    }
    /// The extent containing `lblk`, and the next extent start after it
    /// within this leaf (else the leaf's bound).
    pub(crate) fn lookup(&self, lblk: u64) -> (Option<Extent>, Option<u64>) {
        let exts = self.leaf();
        let idx = exts.partition_point(|e| u64::from(e.lblk) <= lblk);
        let found = idx
            .checked_sub(1)
            .and_then(|i| exts.get(i))
            .filter(|e| e.contains(lblk))
            .copied();
        let next = exts.get(idx).map(|e| u64::from(e.lblk)).or(self.bound);
        (found, next)
    }
    /// The last extent starting at or before `lblk` (allocation goal).
    pub(crate) fn left_of(&self, lblk: u64) -> Option<Extent> {
        let exts = self.leaf();
        let idx = exts.partition_point(|e| u64::from(e.lblk) <= lblk);
        idx.checked_sub(1).and_then(|i| exts.get(i)).copied()
    }
}

/// Walks from the root to the leaf responsible for `lblk`.
pub(crate) fn load_path(
    store: &mut dyn TreeStore,
    ctx: &TreeCtx,
    i_block: &[u8; I_BLOCK_SIZE],
    lblk: u64,
) -> Result<Path> {
    let depth = extent::header_depth(i_block);
    if depth > extent::MAX_DEPTH {
        return Err(corrupt(
            ctx,
            format_args!("depth {depth} too large"),
            ctx.inode_block,
        ));
    }
    let mut nctx = NodeCtx {
        ino: ctx.ino,
        block: None,
        depth,
        parent_lblk: None,
        first_block: ctx.first_block,
        end_block: ctx.end_block,
        csum_seed: ctx.csum_seed,
    };
    let mut levels: Vec<Level> = Vec::with_capacity(usize::from(depth) + 1);
    let mut node = extent::parse_node(i_block, &nctx)?;
    let mut block = None;
    let mut bound: Option<u64> = None;
    let mut rightmost = true;
    // Depth strictly decreases per level (parse_node checks the depth).
    for _ in 0..=extent::MAX_DEPTH {
        let cur_depth = nctx.depth;
        match node {
            ExtentNode::Leaf(_) => {
                levels.push(Level {
                    block,
                    depth: cur_depth,
                    node,
                    idx: 0,
                    dirty: false,
                    rightmost,
                });
                return Ok(Path { levels, bound });
            }
            ExtentNode::Index(ref idx) => {
                let pos = idx
                    .iter()
                    .rposition(|i| u64::from(i.lblk) <= lblk)
                    .unwrap_or(0);
                let Some(child) = idx.get(pos).copied() else {
                    return Err(corrupt(
                        ctx,
                        "empty index node",
                        block.unwrap_or(ctx.inode_block),
                    ));
                };
                let next = pos.saturating_add(1);
                if let Some(n) = idx.get(next) {
                    let b = u64::from(n.lblk);
                    bound = Some(bound.map_or(b, |x| x.min(b)));
                }
                let last = next == idx.len();
                levels.push(Level {
                    block,
                    depth: cur_depth,
                    node,
                    idx: pos,
                    dirty: false,
                    rightmost,
                });
                rightmost &= last;
                let raw = store.read_tree_block(child.leaf)?;
                if raw.len() != ctx.block_size {
                    return Err(corrupt(ctx, "short tree block", child.leaf));
                }
                nctx.block = Some(child.leaf);
                nctx.depth = cur_depth.saturating_sub(1);
                nctx.parent_lblk = Some(child.lblk);
                node = extent::parse_node(&raw, &nctx)?;
                block = Some(child.leaf);
            }
        }
    }
    Err(corrupt(ctx, "tree too deep", ctx.inode_block))
}

/// What a child did, for its parent's index entry.
enum ChildChange {
    None,
    Removed,
    Updated { first: u32, extra: Vec<ExtentIndex> },
}

/// How to cut `n` entries into nodes of at most `cap`.
#[expect(
    clippy::arithmetic_side_effects,
    reason = "n > cap > 0 here, so k >= 2, cap * (k - 1) < n and k > 0"
)]
fn chunk_sizes(n: usize, cap: usize, rightmost: bool) -> Vec<usize> {
    if n <= cap || cap == 0 {
        return vec![n];
    }
    let k = n.div_ceil(cap);
    if rightmost {
        // Keep the left nodes full: appends then fill fresh nodes.
        let mut v = vec![cap; k - 1];
        v.push(n - cap * (k - 1));
        v
    } else {
        let base = n / k;
        let extra = n % k;
        (0..k).map(|i| base + usize::from(i < extra)).collect()
    }
}

fn split_node(node: ExtentNode, sizes: &[usize]) -> Vec<ExtentNode> {
    let mut out = Vec::with_capacity(sizes.len());
    match node {
        ExtentNode::Leaf(mut v) => {
            for &s in sizes.iter().rev().take(sizes.len().saturating_sub(1)) {
                let tail = v.split_off(v.len().saturating_sub(s));
                out.push(ExtentNode::Leaf(tail));
            }
            out.push(ExtentNode::Leaf(v));
        }
        ExtentNode::Index(mut v) => {
            for &s in sizes.iter().rev().take(sizes.len().saturating_sub(1)) {
                let tail = v.split_off(v.len().saturating_sub(s));
                out.push(ExtentNode::Index(tail));
            }
            out.push(ExtentNode::Index(v));
        }
    }
    out.reverse();
    out
}

fn first_of(node: &ExtentNode) -> u32 {
    match node {
        ExtentNode::Leaf(e) => e.first().map_or(0, |e| e.lblk),
        ExtentNode::Index(i) => i.first().map_or(0, |i| i.lblk),
    }
}

/// Writes the path back (see the module comment). On NoSpace for the
/// blocks a split needs, nothing has been changed.
pub(crate) fn store_path(
    store: &mut dyn TreeStore,
    ctx: &TreeCtx,
    root: &mut Root<'_>,
    mut path: Path,
) -> Result<()> {
    let n = path.levels.len();
    let block_cap = node_capacity(ctx.block_size, false);
    // Plan: how many new blocks the splits (and a root grow) need.
    let mut needed = 0usize;
    let mut extra = 0usize;
    for l in (0..n).rev() {
        let len = path.levels[l].len().saturating_add(extra);
        if l > 0 {
            let k = len.div_ceil(block_cap).saturating_sub(1);
            needed = needed.saturating_add(k);
            extra = k;
        } else if len > extent::ROOT_MAX_ENTRIES {
            needed = needed.saturating_add(1);
        }
    }
    let goal = path
        .levels
        .iter()
        .rev()
        .find_map(|l| l.block)
        .unwrap_or(ctx.default_goal);
    let mut fresh: Vec<u64> = Vec::with_capacity(needed);
    while fresh.len() < needed {
        // With bigalloc each tree block owns a cluster: one per call.
        let want = if ctx.clusters.is_bigalloc() {
            1
        } else {
            u32::try_from(needed.saturating_sub(fresh.len())).unwrap_or(u32::MAX)
        };
        match store.alloc(goal, want) {
            Ok((first, count)) => {
                fresh.extend((0..u64::from(count.min(want))).map(|i| first.saturating_add(i)));
            }
            Err(e) => {
                for &b in &fresh {
                    store.free(b, 1)?;
                }
                return Err(e);
            }
        }
    }
    let mut fresh = fresh.into_iter();
    let mut take = |ctx: &TreeCtx| {
        fresh
            .next()
            .ok_or_else(|| corrupt(ctx, "split planning miscounted", 0))
    };
    let bs = ctx.block_size;
    let mut change = ChildChange::None;
    for l in (0..n).rev() {
        let level = &mut path.levels[l];
        match std::mem::replace(&mut change, ChildChange::None) {
            ChildChange::None => {}
            ChildChange::Removed => {
                if let ExtentNode::Index(v) = &mut level.node
                    && level.idx < v.len()
                {
                    v.remove(level.idx);
                    level.dirty = true;
                }
            }
            ChildChange::Updated { first, extra } => {
                if let ExtentNode::Index(v) = &mut level.node {
                    if let Some(e) = v.get_mut(level.idx)
                        && e.lblk != first
                    {
                        e.lblk = first;
                        level.dirty = true;
                    }
                    if !extra.is_empty() {
                        let at = level.idx.saturating_add(1).min(v.len());
                        v.splice(at..at, extra);
                        level.dirty = true;
                    }
                }
            }
        }
        if l > 0 {
            let blk = level.block.unwrap_or(0);
            if level.len() == 0 {
                store.free(blk, 1)?;
                *root.blocks = root.blocks.saturating_sub(ctx.cluster_sectors());
                change = ChildChange::Removed;
                continue;
            }
            let before = level.first();
            if level.len() > block_cap {
                let node = std::mem::replace(&mut level.node, ExtentNode::Leaf(Vec::new()));
                let sizes = chunk_sizes(node_len(&node), block_cap, level.rightmost);
                let mut parts = split_node(node, &sizes).into_iter();
                let first_part = parts.next().unwrap_or(ExtentNode::Leaf(Vec::new()));
                let mut extra = Vec::new();
                for p in parts {
                    let nb = take(ctx)?;
                    let mut buf = vec![0u8; bs];
                    write_node(&mut buf, false, level.depth, &p, ctx.csum_seed)?;
                    store.write_tree_block(nb, &buf, true)?;
                    *root.blocks = root.blocks.saturating_add(ctx.cluster_sectors());
                    extra.push(ExtentIndex {
                        lblk: first_of(&p),
                        leaf: nb,
                    });
                }
                level.node = first_part;
                level.dirty = true;
                change = ChildChange::Updated {
                    first: first_of(&level.node),
                    extra,
                };
            } else {
                change = match (before, level.dirty) {
                    (Some(f), true) => ChildChange::Updated {
                        first: f,
                        extra: Vec::new(),
                    },
                    _ => ChildChange::None,
                };
            }
            if level.dirty {
                let mut buf = vec![0u8; bs];
                write_node(&mut buf, false, level.depth, &level.node, ctx.csum_seed)?;
                store.write_tree_block(blk, &buf, false)?;
            }
        } else {
            if !level.dirty {
                break;
            }
            if level.len() == 0 && level.depth > 0 {
                level.node = ExtentNode::Leaf(Vec::new());
                level.depth = 0;
            }
            if level.len() > extent::ROOT_MAX_ENTRIES {
                // Grow: the root's entries move to a new block, the root
                // becomes an index with one entry.
                let nb = take(ctx)?;
                let node = std::mem::replace(&mut level.node, ExtentNode::Leaf(Vec::new()));
                let mut buf = vec![0u8; bs];
                write_node(&mut buf, false, level.depth, &node, ctx.csum_seed)?;
                store.write_tree_block(nb, &buf, true)?;
                *root.blocks = root.blocks.saturating_add(ctx.cluster_sectors());
                level.node = ExtentNode::Index(vec![ExtentIndex {
                    lblk: first_of(&node),
                    leaf: nb,
                }]);
                level.depth = level.depth.saturating_add(1);
                if level.depth > extent::MAX_DEPTH {
                    return Err(corrupt(ctx, "tree would grow too deep", ctx.inode_block));
                }
            }
            // Keep eh_generation and anything else the kernel left in the
            // header: write_node rewrites header and entries only.
            write_node(&mut root.i_block[..], true, level.depth, &level.node, None)?;
        }
    }
    Ok(())
}

fn node_len(n: &ExtentNode) -> usize {
    match n {
        ExtentNode::Leaf(e) => e.len(),
        ExtentNode::Index(i) => i.len(),
    }
}

/// ext4_ext_try_to_merge_up, run by the kernel after every extent
/// insertion or conversion (not after removals): a depth-1 tree whose
/// only leaf fits in the inode goes back into i_block and the leaf block
/// is freed.
pub(crate) fn merge_up(
    store: &mut dyn TreeStore,
    ctx: &TreeCtx,
    root: &mut Root<'_>,
) -> Result<()> {
    if extent::header_depth(&root.i_block[..]) != 1 {
        return Ok(());
    }
    let path = load_path(store, ctx, root.i_block, 0)?;
    let [top, leaf] = path.levels.as_slice() else {
        return Ok(());
    };
    let (Some(blk), ExtentNode::Index(idx), ExtentNode::Leaf(exts)) =
        (leaf.block, &top.node, &leaf.node)
    else {
        return Ok(());
    };
    if idx.len() != 1 || exts.len() > extent::ROOT_MAX_ENTRIES {
        return Ok(());
    }
    let node = ExtentNode::Leaf(exts.clone());
    write_node(&mut root.i_block[..], true, 0, &node, None)?;
    store.free(blk, 1)?;
    *root.blocks = root.blocks.saturating_sub(ctx.cluster_sectors());
    Ok(())
}
