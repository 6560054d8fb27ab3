//! htree maintenance, after the kernel's fs/ext4/namei.c: converting a full
//! one-block directory to an indexed one (make_indexed_dir), adding a name
//! through the index (ext4_dx_add_entry): splitting a full leaf by hash
//! (do_split: entries sorted by hash, the upper half by size moved to a new
//! block, the index entry carrying the continuation bit when the split
//! falls inside a run of equal hashes), splitting a full index node, and
//! adding an index level when the root is full (up to 2 levels, 3 with
//! large_dir; beyond that ENOSPC like the kernel's "Directory index
//! full"). Every index block written gets its dx_tail checksum.

use crate::ext4::dir::block::{
    DirBlocks, DirCtx, edit_corrupt, empty_leaf, insert_in_buf, live_entries, pack_entries,
};
use crate::ext4::error::{Error, Result};
use crate::ext4::ondisk::dir_entry::DirentIter;
use crate::ext4::ondisk::htree::{
    self, DX_HASH_CONTINUATION, DxEntries, DxEntry, NODE_ENTRIES, ROOT_ENTRIES, init_node,
    is_index_node, node_limit, parse_entries, parse_root_info, root_limit, set_dx_csum,
    set_indirect_levels, write_entries, write_root_header,
};
use crate::ext4::types::Ino;
use crate::ext4::util::le32;

/// Bound on restarts of one insertion (each restart follows a split or a
/// new level, at most one per level plus the leaf).
const MAX_ROUNDS: usize = 8;

/// One index block on the path from the root to a leaf.
struct Frame {
    lblk: u64,
    /// Offset of its dx_countlimit (32 in the root, 8 in a node).
    at: usize,
    limit: usize,
    entries: Vec<DxEntry>,
    /// The entry followed.
    idx: usize,
    block: Vec<u8>,
}

impl Frame {
    fn target(&self) -> u64 {
        self.entries.get(self.idx).map_or(0, |e| u64::from(e.block))
    }

    fn is_full(&self) -> bool {
        self.entries.len() >= self.limit
    }

    /// Stores the entries and checksum, then writes the block.
    fn store(&mut self, d: &mut dyn DirBlocks, ctx: &DirCtx) -> Result<()> {
        if !write_entries(&mut self.block, self.at, self.limit, &self.entries) {
            return Err(Error::corrupt(
                format!("directory {}: htree block {} overfull", d.ino(), self.lblk),
                0,
            ));
        }
        if let Some(seed) = ctx.csum_seed {
            set_dx_csum(&mut self.block, seed);
        }
        d.write(self.lblk, &self.block)
    }
}

/// A fault in htree block `lblk` (physical block `at`).
fn dx_corrupt(ino: Ino, lblk: u64, at: u64, what: impl std::fmt::Display) -> Error {
    Error::corrupt(format!("directory {ino}: htree block {lblk}: {what}"), at)
}

/// A bad child pointer `blk` (to a `kind` block) in the last frame: the
/// fault is in that frame's block.
fn bad_pointer(d: &mut dyn DirBlocks, frames: &[Frame], kind: &str, blk: u64) -> Error {
    let parent = frames.last().map_or(0, |f| f.lblk);
    let at = d.block_of(parent);
    dx_corrupt(
        d.ino(),
        parent,
        at,
        format_args!("bad {kind} block number {blk}"),
    )
}

fn csum_on(ctx: &DirCtx) -> bool {
    ctx.csum_seed.is_some()
}

/// Reads the path for `name` (dx_probe). Returns the name's hash and the
/// frames, root first.
/// What an htree search is led by: a name, hashed with the root's hash
/// version, or a hash given outright (a long no-key name carries the hash
/// its entry was listed with, since its ciphertext is not all there).
#[derive(Debug, Clone, Copy)]
pub(crate) enum DxKey<'a> {
    Name(&'a [u8]),
    Hash(u32),
}

fn probe(d: &mut dyn DirBlocks, ctx: &DirCtx, key: DxKey<'_>) -> Result<(u32, Vec<Frame>)> {
    let ino = d.ino();
    let bs = ctx.bs();
    let root = d.read(0)?;
    let at = d.block_of(0);
    let info = parse_root_info(&root, ctx.max_levels).map_err(|p| dx_corrupt(ino, 0, at, p))?;
    if let Some(seed) = ctx.csum_seed {
        htree::verify_dx_tail(&root, seed).map_err(|p| dx_corrupt(ino, 0, at, p))?;
    }
    let hash = match key {
        DxKey::Name(name) => ctx.hash(info.hash_version, name).ok_or_else(|| {
            dx_corrupt(
                ino,
                0,
                at,
                format_args!("hash version {}", info.hash_version),
            )
        })?,
        DxKey::Hash(h) => h,
    };
    let limit = root_limit(bs, csum_on(ctx));
    let entries =
        parse_entries(&root, ROOT_ENTRIES, limit).map_err(|p| dx_corrupt(ino, 0, at, p))?;
    let mut frames = Vec::with_capacity(usize::from(info.indirect_levels) + 1);
    frames.push(Frame {
        lblk: 0,
        at: ROOT_ENTRIES,
        limit,
        idx: entries.find(hash),
        entries: entries.entries,
        block: root,
    });
    for _ in 0..info.indirect_levels {
        let blk = frames.last().map_or(0, Frame::target);
        if blk == 0 || blk >= d.nblocks() || frames.iter().any(|f| f.lblk == blk) {
            return Err(bad_pointer(d, &frames, "index", blk));
        }
        frames.push(read_node(d, ctx, blk, hash)?);
    }
    let leaf = frames.last().map_or(0, Frame::target);
    if leaf == 0 || leaf >= d.nblocks() {
        return Err(bad_pointer(d, &frames, "leaf", leaf));
    }
    Ok((hash, frames))
}

fn read_node(d: &mut dyn DirBlocks, ctx: &DirCtx, blk: u64, hash: u32) -> Result<Frame> {
    let ino = d.ino();
    let node = d.read(blk)?;
    let at = d.block_of(blk);
    if !is_index_node(&node) {
        return Err(dx_corrupt(ino, blk, at, "not an index node"));
    }
    if let Some(seed) = ctx.csum_seed {
        htree::verify_dx_tail(&node, seed).map_err(|p| dx_corrupt(ino, blk, at, p))?;
    }
    let limit = node_limit(ctx.bs(), csum_on(ctx));
    let entries: DxEntries =
        parse_entries(&node, NODE_ENTRIES, limit).map_err(|p| dx_corrupt(ino, blk, at, p))?;
    Ok(Frame {
        lblk: blk,
        at: NODE_ENTRIES,
        limit,
        idx: entries.find(hash),
        entries: entries.entries,
        block: node,
    })
}

/// The leaves that may hold the name `key` leads to: the one the index
/// points at and the ones continuing its hash run (ext4_htree_next_block).
/// `None` is never returned for a readable index; a bad index is an error.
pub(crate) fn dx_leaves_for(
    d: &mut dyn DirBlocks,
    ctx: &DirCtx,
    key: DxKey<'_>,
) -> Result<Option<Vec<u64>>> {
    let (hash, mut frames) = probe(d, ctx, key)?;
    let mut out = vec![frames.last().map_or(0, Frame::target)];
    let limit = d.nblocks();
    let total = frames.len();
    while (out.len() as u64) < limit {
        // Deepest level with a next entry.
        let Some(level) = frames
            .iter()
            .rposition(|f| f.idx.saturating_add(1) < f.entries.len())
        else {
            break;
        };
        let Some(f) = frames.get_mut(level) else {
            break;
        };
        f.idx = f.idx.saturating_add(1);
        let next_hash = f.entries.get(f.idx).map_or(0, |e| e.hash);
        if next_hash & !DX_HASH_CONTINUATION != hash {
            break;
        }
        frames.truncate(level.saturating_add(1));
        // Re-descend along first entries.
        while frames.len() < total {
            let blk = frames.last().map_or(0, Frame::target);
            if blk == 0 || blk >= limit {
                return Err(bad_pointer(d, &frames, "index", blk));
            }
            let mut n = read_node(d, ctx, blk, hash)?;
            n.idx = 0;
            frames.push(n);
        }
        out.push(frames.last().map_or(0, Frame::target));
    }
    Ok(Some(out))
}

/// Converts a one-block directory whose block 0 is `b0` to an indexed one:
/// its entries (but "." and "..") move to a new block 1, block 0 becomes
/// the root pointing at it.
pub(crate) fn make_indexed(d: &mut dyn DirBlocks, ctx: &DirCtx, b0: &[u8]) -> Result<()> {
    let ino = d.ino();
    let at = d.block_of(0);
    let all =
        live_entries(b0, 0, ctx.leaf_end(), &ctx.fmt).map_err(|e| edit_corrupt(ino, 0, at, e))?;
    let dot = le32(b0, 0);
    let dotdot = all
        .iter()
        .find(|e| e.0 == b"..")
        .map(|e| e.1)
        .ok_or_else(|| dx_corrupt(ino, 0, at, "no '..' entry"))?;
    let rest: Vec<_> = all
        .into_iter()
        .filter(|e| e.0 != b"." && e.0 != b"..")
        .collect();
    let l1 = d.append()?;
    let mut leaf = empty_leaf(ctx);
    if !pack_entries(&mut leaf, 0, ctx.leaf_end(), &ctx.fmt, &rest) {
        return Err(dx_corrupt(
            ino,
            l1,
            d.block_of(l1),
            "entries do not fit a leaf",
        ));
    }
    ctx.seal_leaf(&mut leaf);
    d.write(l1, &leaf)?;
    let mut root = vec![0u8; ctx.bs()];
    write_root_header(
        &mut root,
        dot,
        dotdot,
        ctx.def_hash_version,
        0,
        ctx.fmt.filetype,
    );
    let mut f = Frame {
        lblk: 0,
        at: ROOT_ENTRIES,
        limit: root_limit(ctx.bs(), csum_on(ctx)),
        entries: vec![DxEntry {
            hash: 0,
            block: u32::try_from(l1).map_err(|_| Error::NoSpace)?,
        }],
        idx: 0,
        block: root,
    };
    f.store(d, ctx)?;
    d.set_indexed(true);
    Ok(())
}

/// do_split: moves the upper half (by size, in hash order) of the live
/// entries of `old` into `new`. Returns the first moved hash and whether
/// it continues a run of equal hashes left in `old`.
fn split_leaf(
    ino: Ino,
    (lblk, at): (u64, u64),
    old: &mut [u8],
    new: &mut [u8],
    ctx: &DirCtx,
    hash_version: u8,
) -> Result<(u32, bool)> {
    let end = ctx.leaf_end();
    let mut map = Vec::new();
    for e in DirentIter::new(old.get(..end).unwrap_or(&[]), 0, ctx.fmt) {
        let e = e.map_err(|(o, p)| dx_corrupt(ino, lblk, at, format_args!("offset {o}: {p}")))?;
        if !e.is_live() {
            continue;
        }
        let h = ctx
            .hash(hash_version, e.name)
            .ok_or_else(|| dx_corrupt(ino, lblk, at, "unknown hash version"))?;
        map.push((
            h,
            e.offset,
            e.name.to_vec(),
            e.inode,
            e.file_type.unwrap_or(0),
            // dx_make_map sizes entries by their record length, slack
            // included: the split point follows it.
            e.rec_len.get(),
        ));
    }
    let count = map.len();
    if count < 2 {
        return Err(Error::NoSpace);
    }
    map.sort_by_key(|m| (m.0, m.1));
    let half = ctx.bs() / 2;
    let mut size = 0usize;
    let mut moved = 0usize;
    let mut broke_at = None;
    for i in (0..count).rev() {
        let s = map.get(i).map_or(0, |m| m.5);
        if size.saturating_add(s / 2) > half {
            broke_at = Some(i);
            break;
        }
        size = size.saturating_add(s);
        moved = moved.saturating_add(1);
    }
    let split = match broke_at {
        Some(i) if i > 0 => count.saturating_sub(moved),
        _ => count / 2,
    };
    let hash2 = map.get(split).map_or(0, |m| m.0);
    let continued = split
        .checked_sub(1)
        .is_some_and(|i| map.get(i).map(|m| m.0) == Some(hash2));
    let (keep, go) = map.split_at(split);
    let go: Vec<_> = go.iter().map(|m| (m.2.clone(), m.3, m.4)).collect();
    let mut keep: Vec<_> = keep.to_vec();
    keep.sort_by_key(|m| m.1);
    let keep: Vec<_> = keep.into_iter().map(|m| (m.2, m.3, m.4)).collect();
    if !pack_entries(new, 0, end, &ctx.fmt, &go) || !pack_entries(old, 0, end, &ctx.fmt, &keep) {
        return Err(dx_corrupt(ino, lblk, at, "split does not fit"));
    }
    Ok((hash2, continued))
}

/// Adds `name` through the index (ext4_dx_add_entry).
pub(crate) fn dx_add_entry(
    d: &mut dyn DirBlocks,
    ctx: &DirCtx,
    name: &[u8],
    ino: Ino,
    file_type: u8,
) -> Result<()> {
    let dir = d.ino();
    let end = ctx.leaf_end();
    for _ in 0..MAX_ROUNDS {
        let (hash, mut frames) = probe(d, ctx, DxKey::Name(name))?;
        let hash_version = frames
            .first()
            .and_then(|f| f.block.get(28).copied())
            .unwrap_or(0);
        let leaf_blk = frames.last().map_or(0, Frame::target);
        let mut leaf = d.read(leaf_blk)?;
        match insert_in_buf(&mut leaf, 0, end, &ctx.fmt, name, ino, file_type) {
            Ok(Some(_)) => {
                ctx.seal_leaf(&mut leaf);
                return d.write(leaf_blk, &leaf);
            }
            Ok(None) => {}
            Err(e) => return Err(edit_corrupt(dir, leaf_blk, d.block_of(leaf_blk), e)),
        }
        let last = frames.len().saturating_sub(1);
        if frames.get(last).is_some_and(Frame::is_full) {
            // The lowest level whose parent has room, or the root.
            let mut lvl = last;
            while let Some(up) = lvl.checked_sub(1)
                && frames.get(up).is_some_and(Frame::is_full)
            {
                lvl = up;
            }
            if lvl == 0 {
                if frames.len() >= usize::from(ctx.max_levels) {
                    tracing::warn!(dir, levels = frames.len(), "directory index full");
                    return Err(Error::NoSpace);
                }
                add_level(d, ctx, &mut frames)?;
            } else {
                split_node(d, ctx, &mut frames, lvl)?;
            }
            continue;
        }
        let new_blk = d.append()?;
        let new_blk32 = u32::try_from(new_blk).map_err(|_| Error::NoSpace)?;
        let mut new = vec![0u8; ctx.bs()];
        let (hash2, continued) = split_leaf(
            dir,
            (leaf_blk, d.block_of(leaf_blk)),
            &mut leaf,
            &mut new,
            ctx,
            hash_version,
        )?;
        if let Some(f) = frames.last_mut() {
            f.entries.insert(
                f.idx.saturating_add(1),
                DxEntry {
                    hash: hash2 | u32::from(continued),
                    block: new_blk32,
                },
            );
            f.store(d, ctx)?;
        }
        let target = if hash >= hash2 { &mut new } else { &mut leaf };
        let done = insert_in_buf(target, 0, end, &ctx.fmt, name, ino, file_type)
            .map_err(|e| edit_corrupt(dir, leaf_blk, d.block_of(leaf_blk), e))?
            .is_some();
        ctx.seal_leaf(&mut leaf);
        ctx.seal_leaf(&mut new);
        d.write(leaf_blk, &leaf)?;
        d.write(new_blk, &new)?;
        if done {
            return Ok(());
        }
    }
    Err(Error::NoSpace)
}

/// The root is full: its entries move to a new node, the root points at
/// it alone, and the tree gets one level deeper.
fn add_level(d: &mut dyn DirBlocks, ctx: &DirCtx, frames: &mut [Frame]) -> Result<()> {
    let Some(root) = frames.first_mut() else {
        return Ok(());
    };
    let blk = d.append()?;
    let mut node = Frame {
        lblk: blk,
        at: NODE_ENTRIES,
        limit: node_limit(ctx.bs(), csum_on(ctx)),
        entries: root.entries.clone(),
        idx: 0,
        block: vec![0u8; ctx.bs()],
    };
    init_node(&mut node.block);
    node.store(d, ctx)?;
    root.entries = vec![DxEntry {
        hash: 0,
        block: u32::try_from(blk).map_err(|_| Error::NoSpace)?,
    }];
    let levels = root.block.get(30).copied().unwrap_or(0).saturating_add(1);
    set_indirect_levels(&mut root.block, levels);
    root.store(d, ctx)
}

/// Splits the full node `frames[lvl]` (lvl >= 1) in two by count; the
/// parent gets the new half.
fn split_node(d: &mut dyn DirBlocks, ctx: &DirCtx, frames: &mut [Frame], lvl: usize) -> Result<()> {
    let blk = d.append()?;
    let blk32 = u32::try_from(blk).map_err(|_| Error::NoSpace)?;
    let Some(f) = frames.get_mut(lvl) else {
        return Ok(());
    };
    let icount1 = f.entries.len() / 2;
    let right = f.entries.split_off(icount1);
    let hash2 = right.first().map_or(0, |e| e.hash);
    f.store(d, ctx)?;
    let mut node = Frame {
        lblk: blk,
        at: NODE_ENTRIES,
        limit: f.limit,
        entries: right,
        idx: 0,
        block: vec![0u8; ctx.bs()],
    };
    init_node(&mut node.block);
    node.store(d, ctx)?;
    let Some(parent) = lvl.checked_sub(1).and_then(|up| frames.get_mut(up)) else {
        return Ok(());
    };
    parent.entries.insert(
        parent.idx.saturating_add(1),
        DxEntry {
            hash: hash2,
            block: blk32,
        },
    );
    parent.store(d, ctx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ext4::dir::block::tests::{ctx, new_dir};
    use crate::ext4::dir::block::{add_entry, find_entry, remove_entry};
    use crate::ext4::ondisk::dir_entry::verify_dirent_tail;
    use crate::ext4::ondisk::htree::verify_dx_tail;

    /// Walks the whole index checking every leaf's hashes lie in its
    /// range; returns (levels, leaf count, names).
    fn check(d: &mut crate::ext4::dir::block::tests::MemDir, c: &DirCtx) -> (u8, usize, usize) {
        let root = d.blocks[0].clone();
        let info = parse_root_info(&root, c.max_levels).unwrap();
        if let Some(s) = c.csum_seed {
            verify_dx_tail(&root, s).unwrap();
        }
        let e = parse_entries(
            &root,
            ROOT_ENTRIES,
            root_limit(c.bs(), c.csum_seed.is_some()),
        )
        .unwrap();
        let mut leaves = 0;
        let mut names = 0;
        #[expect(
            clippy::too_many_arguments,
            reason = "recursive test walker carrying its bounds and counters"
        )]
        fn walk(
            d: &crate::ext4::dir::block::tests::MemDir,
            c: &DirCtx,
            e: &[DxEntry],
            lo: u32,
            hi: u64,
            depth: u8,
            hv: u8,
            leaves: &mut usize,
            names: &mut usize,
        ) {
            for (i, x) in e.iter().enumerate() {
                let start = if i == 0 { lo } else { x.hash & !1 };
                let stop = e.get(i + 1).map_or(hi, |n| u64::from(n.hash & !1));
                let b = &d.blocks[x.block as usize];
                if depth > 0 {
                    if let Some(s) = c.csum_seed {
                        verify_dx_tail(b, s).unwrap();
                    }
                    let n =
                        parse_entries(b, NODE_ENTRIES, node_limit(c.bs(), c.csum_seed.is_some()))
                            .unwrap();
                    walk(d, c, &n.entries, start, stop, depth - 1, hv, leaves, names);
                } else {
                    *leaves += 1;
                    if let Some(s) = c.csum_seed {
                        verify_dirent_tail(b, c.bs() as u32, s).unwrap();
                    }
                    for (n, _, _) in live_entries(b, 0, c.leaf_end(), &c.fmt).unwrap() {
                        let h = c.hash(hv, &n).unwrap();
                        assert!(h >= start && u64::from(h) <= stop, "hash out of range");
                        *names += 1;
                    }
                }
            }
        }
        walk(
            d,
            c,
            &e.entries,
            0,
            u64::from(u32::MAX),
            info.indirect_levels,
            info.hash_version,
            &mut leaves,
            &mut names,
        );
        (info.indirect_levels, leaves, names)
    }

    #[test]
    fn grows_to_two_levels_with_20000_names() {
        for csum in [true, false] {
            let c = ctx(1024, csum, true, false);
            let mut d = new_dir(&c);
            let n = 20_000u32;
            for i in 0..n {
                add_entry(&mut d, &c, format!("name-{i:06}").as_bytes(), 100 + i, 1).unwrap();
                if i == 60 {
                    assert!(d.indexed, "one full block becomes indexed");
                }
            }
            let (levels, leaves, names) = check(&mut d, &c);
            assert_eq!(levels, 1);
            assert_eq!(names, n as usize);
            assert!(leaves > 500, "{leaves}");
            for i in (0..n).step_by(7) {
                let f = find_entry(&mut d, &c, format!("name-{i:06}").as_bytes())
                    .unwrap()
                    .unwrap();
                assert_eq!(f.1.inode, 100 + i);
            }
            assert!(matches!(
                add_entry(&mut d, &c, b"name-000005", 1, 1),
                Err(Error::Exists)
            ));
            for i in (0..n).step_by(2) {
                remove_entry(&mut d, &c, format!("name-{i:06}").as_bytes()).unwrap();
            }
            assert_eq!(check(&mut d, &c).2, n as usize / 2);
            assert_eq!(find_entry(&mut d, &c, b"..").unwrap().unwrap().1.inode, 2);
            assert_eq!(find_entry(&mut d, &c, b".").unwrap().unwrap().1.inode, 12);
        }
    }

    #[test]
    fn three_levels_need_large_dir() {
        let long = |i: u32| format!("{i:06}-{}", "L".repeat(240));
        let c = ctx(1024, true, true, true);
        let mut d = new_dir(&c);
        let mut i = 0;
        while check_levels(&d, &c) < 2 {
            add_entry(&mut d, &c, long(i).as_bytes(), 100 + i, 1).unwrap();
            i += 1;
            assert!(i < 60_000);
        }
        for _ in 0..500 {
            add_entry(&mut d, &c, long(i).as_bytes(), 100 + i, 1).unwrap();
            i += 1;
        }
        let (levels, _, names) = check(&mut d, &c);
        assert_eq!((levels, names), (2, i as usize));
        for k in (0..i).step_by(97) {
            assert!(
                find_entry(&mut d, &c, long(k).as_bytes())
                    .unwrap()
                    .is_some()
            );
        }
        // Without large_dir the same directory stops at two levels.
        let c2 = ctx(1024, true, true, false);
        let mut d2 = new_dir(&c2);
        let mut k = 0;
        let err = loop {
            if let Err(e) = add_entry(&mut d2, &c2, long(k).as_bytes(), 100 + k, 1) {
                break e;
            }
            k += 1;
            assert!(k < 60_000);
        };
        assert!(matches!(err, Error::NoSpace));
        assert_eq!(check(&mut d2, &c2).0, 1);
    }

    fn check_levels(d: &crate::ext4::dir::block::tests::MemDir, c: &DirCtx) -> u8 {
        if !d.indexed {
            return 0;
        }
        parse_root_info(&d.blocks[0], c.max_levels)
            .unwrap()
            .indirect_levels
    }

    /// Two names whose half_md4 hashes (seed [1, 2, 3, 4], the test
    /// context's) really collide: found by hashing c000000..c149999 with
    /// debugfs, checked below with the engine's hash and with debugfs.
    const COLLIDING: [&str; 2] = ["c001895", "c107877"];
    const COLLIDING_HASH: u32 = 0x5e96_403c;

    /// debugfs's own dx_hash of `name` with the test context's seed (the
    /// four seed words as a UUID's little-endian bytes); None without
    /// debugfs.
    fn debugfs_major(name: &str) -> Option<u32> {
        let out = std::process::Command::new("debugfs")
            .arg("-R")
            .arg(format!(
                "dx_hash -h half_md4 -s 01000000-0200-0000-0300-000004000000 {name}"
            ))
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let hex = text.rsplit(" is 0x").next()?.split(' ').next()?;
        u32::from_str_radix(hex, 16).ok()
    }

    #[test]
    fn colliding_names_collide() {
        let c = ctx(1024, false, true, false);
        for n in COLLIDING {
            assert_eq!(c.hash(1, n.as_bytes()), Some(COLLIDING_HASH), "{n}");
        }
        let Some(d) = debugfs_major(COLLIDING[0]) else {
            crate::test_skip::skip("debugfs not installed: the dx_hash oracle");
            return;
        };
        assert_eq!(d, COLLIDING_HASH, "debugfs dx_hash of {}", COLLIDING[0]);
        assert_eq!(debugfs_major(COLLIDING[1]), Some(COLLIDING_HASH));
    }

    /// A leaf split whose split point falls between two entries of the
    /// same hash: the new block's hash equals the last one kept, so the
    /// split must say "continued" (the index entry's low bit), and the two
    /// colliding names end up one on each side. Names of one length around
    /// a real collision (COLLIDING); the number of names above the
    /// collision is varied until the split point lands on it, which it
    /// must for some count.
    #[test]
    fn leaf_split_by_hash() {
        let c = ctx(1024, false, true, false);
        let hash = |n: &str| c.hash(1, n.as_bytes()).unwrap();
        let pool: Vec<String> = (200_000..200_400).map(|i| format!("c{i:06}")).collect();
        let below: Vec<&String> = pool.iter().filter(|n| hash(n) < COLLIDING_HASH).collect();
        let above: Vec<&String> = pool.iter().filter(|n| hash(n) > COLLIDING_HASH).collect();
        let mut landed = 0;
        for n_above in 1..=20usize {
            let n_below = 38 - n_above;
            let mut names: Vec<&str> = below[..n_below].iter().map(|s| s.as_str()).collect();
            names.extend(COLLIDING);
            names.extend(above[..n_above].iter().map(|s| s.as_str()));
            let mut old = empty_leaf(&c);
            for (i, n) in names.iter().enumerate() {
                insert_in_buf(
                    &mut old,
                    0,
                    c.leaf_end(),
                    &c.fmt,
                    n.as_bytes(),
                    10 + i as u32,
                    1,
                )
                .unwrap()
                .unwrap();
            }
            let mut new = vec![0u8; 1024];
            let (h2, cont) = split_leaf(12, (1, 0), &mut old, &mut new, &c, 1).unwrap();
            let left = live_entries(&old, 0, c.leaf_end(), &c.fmt).unwrap();
            let right = live_entries(&new, 0, c.leaf_end(), &c.fmt).unwrap();
            assert_eq!(left.len() + right.len(), 40);
            assert!(left.iter().all(|e| c.hash(1, &e.0).unwrap() <= h2));
            assert!(right.iter().all(|e| c.hash(1, &e.0).unwrap() >= h2));
            let max_left = left.iter().map(|e| c.hash(1, &e.0).unwrap()).max();
            assert_eq!(
                cont,
                max_left == Some(h2),
                "continued must be set exactly when the hash runs on across the split"
            );
            if cont {
                landed += 1;
                assert_eq!(h2, COLLIDING_HASH);
                let side = |n: &str| left.iter().any(|e| e.0 == n.as_bytes());
                assert_ne!(
                    side(COLLIDING[0]),
                    side(COLLIDING[1]),
                    "the colliding pair must straddle the split"
                );
            }
        }
        assert!(
            landed > 0,
            "no split point fell inside the collision: continued never exercised"
        );
    }

    /// Oracle (e2fsck, debugfs, the kernel): leaf splits and a second
    /// index level made through the engine on a real image (1 KiB blocks,
    /// 200-byte names: four entries a leaf, so 3,000 names need more
    /// leaves than the root can index), then every third name removed.
    /// e2fsck -fn checks every htree block (hash order, limits, counts),
    /// debugfs shows the second level, and the kernel lists exactly the
    /// names left and finds each by lookup (which walks the index).
    #[test]
    fn engine_htree_checked_by_e2fsck_and_kernel() {
        use crate::ext4::ROOT_INO;
        use crate::ext4::testutil::{RwImage, assert_fsck_clean};
        use crate::ext4::testutil::{debugfs_out, have_mkfs};
        if !have_mkfs() {
            return;
        }
        let im = RwImage::new("htree-oracle", &["-b", "1024", "-O", "dir_index"]);
        let fs = im.open();
        let d = fs.mkdir(ROOT_INO, b"big", 0o755, 0, 0, 0).unwrap().ino;
        let names: Vec<String> = (0..3000)
            .map(|i| format!("{i:05}-{}", "h".repeat(200)))
            .collect();
        for n in &names {
            fs.create(d, n.as_bytes(), 0o100644, 0, 0, 0, 0).unwrap();
        }
        for n in names.iter().step_by(3) {
            if let Some(ino) = fs.unlink(d, n.as_bytes()).unwrap() {
                fs.release_inode(ino).unwrap();
            }
        }
        fs.shutdown().unwrap();
        drop(fs);
        let img = im.save();
        assert_fsck_clean(img, "htree splits through the engine");
        let dump = debugfs_out(img, "htree_dump /big");
        assert!(
            dump.contains("Indirect levels: 1"),
            "debugfs does not see a two-level index:\n{}",
            dump.lines().take(12).collect::<Vec<_>>().join("\n")
        );
        let mut left: Vec<String> = names
            .iter()
            .enumerate()
            .filter(|(i, _)| i % 3 != 0)
            .map(|(_, n)| n.clone())
            .collect();
        left.sort();
        let Some((listed, found)) = crate::ext4::testutil::kernel_listing(img, "big", &left) else {
            return;
        };
        assert_eq!(listed, left, "the kernel's readdir of the engine's htree");
        assert_eq!(
            found,
            left.len(),
            "the kernel's lookups in the engine's htree"
        );
    }
}
