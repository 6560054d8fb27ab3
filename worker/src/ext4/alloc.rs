//! Block and inode allocators. Every allocation edits this transaction's
//! copy of a bitmap block and group descriptor, so dropping the `Txn`
//! undoes it; counters (descriptor and superblock) move by exact deltas.
//!
//! Blocks: goal-based. A run of `want` free blocks starting at the goal,
//! else the first run of `want` in the goal's group, else in the following
//! groups (skipping, by their free counts, groups that cannot hold it),
//! else the largest free run in the goal group, else in the following
//! groups. Reserved blocks (s_r_blocks_count) are only for `reserved_ok`
//! callers, and the kernel's reserved pool (min(2 %, 4096) clusters with
//! extents) only for transactions marked `use_reserved_pool`.
//!
//! With bigalloc the bitmaps, free counts and reserves are in clusters
//! (`cluster.rs`): allocation hands out whole clusters, returning the
//! first block of the first one, and freeing frees every cluster a range
//! touches.
//!
//! Inodes: files go to the first group of the parent's flex group (or the
//! parent's group) with a free inode, directories under the root to the
//! group with the most free inodes among those with at least the average
//! free blocks (Orlov's spreading, deterministic), other directories like
//! files. Groups still marked BLOCK_UNINIT / INODE_UNINIT get their bitmaps
//! built on first use exactly like ext4_init_block_bitmap /
//! ext4_init_inode_bitmap; bg_itable_unused follows ext4_new_inode.

use super::ondisk::bitmap;
use super::ondisk::group_desc::{BG_BLOCK_UNINIT, BG_INODE_UNINIT};
use super::ondisk::superblock as sbf;
use super::{Error, Ext4, FileKind, Ino, ROOT_INO, Result, Txn};

/// Group `i` steps after `start`, wrapping at `n` groups.
#[expect(
    clippy::arithmetic_side_effects,
    reason = "start < n and i < n: their sum fits a u64, and n > 0 when a group is visited"
)]
fn nth_group(start: u32, i: u32, n: u32) -> u32 {
    ((u64::from(start) + u64::from(i)) % u64::from(n.max(1))) as u32
}

/// EXT4_FLEX_SIZE_DIR_ALLOC_SCHEME: with flex groups at least this big,
/// regular files start in the second group of the flex group.
#[cfg(test)]
const FLEX_SIZE_DIR_ALLOC_SCHEME: u64 = 4;

impl Ext4 {
    /// The kernel's reserved pool (ext4_calculate_resv_clusters): with
    /// extents, min(2 %, 4096) clusters kept for metadata.
    pub(crate) fn pool_clusters(&self) -> u64 {
        if self.sb.has_incompat(sbf::INCOMPAT_EXTENTS) {
            (self.clusters().of(self.sb.s_blocks_count) / 50).min(4096)
        } else {
            0
        }
    }

    /// Free clusters kept from an allocation (ext4_has_free_clusters): the
    /// pool unless the transaction may use it, and the root-reserved
    /// blocks unless the caller may ([`Ext4::may_use_reserved`]).
    fn kept_clusters(&self, reserved_ok: bool, use_pool: bool) -> u64 {
        let pool = if use_pool { 0 } else { self.pool_clusters() };
        let root = if reserved_ok {
            0
        } else {
            self.clusters().of(self.sb.s_r_blocks_count)
        };
        pool.saturating_add(root)
    }

    /// Bytes a write may still allocate now, for a caller who may use the
    /// root-reserved blocks (`reserved_ok`) or not.
    pub fn bytes_available(&self, reserved_ok: bool) -> u64 {
        let c = self.clusters();
        let free = c.of(self.rw.live_sb().sb.s_free_blocks_count);
        let clusters = free.saturating_sub(self.kept_clusters(reserved_ok, false));
        let cluster_bytes = u64::from(self.block_size).checked_shl(self.sb.cluster_bits());
        clusters.saturating_mul(cluster_bytes.unwrap_or(u64::MAX))
    }
    /// Whether descriptors carry checksums (metadata_csum or gdt_csum):
    /// only then are the UNINIT flags and bg_itable_unused meaningful.
    pub(crate) fn has_group_desc_csum(&self) -> bool {
        self.sb.has_ro_compat(sbf::RO_COMPAT_METADATA_CSUM)
            || self.sb.has_ro_compat(sbf::RO_COMPAT_GDT_CSUM)
    }

    /// log2 of the flex group size, 0 without flex_bg.
    fn flex_bits(&self) -> u32 {
        if self.sb.has_incompat(sbf::INCOMPAT_FLEX_BG) {
            u32::from(self.sb.s_log_groups_per_flex).min(31)
        } else {
            0
        }
    }

    /// The goal block for new data of `inode` with no better hint
    /// (ext4_inode_to_goal_block): the first block of its group, or with
    /// flex groups of 4 or more, of its flex group (the second group of
    /// it for regular files).
    #[cfg(test)]
    pub(crate) fn inode_goal(&self, ino: Ino, kind: FileKind) -> u64 {
        let ipg = self.sb.s_inodes_per_group.max(1);
        let mut g = u64::from(ino.saturating_sub(1) / ipg);
        let flex = 1u64 << self.flex_bits();
        if flex >= FLEX_SIZE_DIR_ALLOC_SCHEME {
            g &= !(flex - 1);
            if kind == FileKind::RegularFile {
                g += 1;
            }
        }
        if g >= self.sb.groups_count() {
            g = 0;
        }
        self.group_first_block(g)
    }

    /// ext4_num_base_meta_blocks: superblock backup, descriptor blocks and
    /// reserved GDT blocks at the start of group `g`.
    pub(crate) fn base_meta_blocks(&self, g: u64) -> u64 {
        let has_super = u64::from(self.sb.bg_has_super(g));
        let meta_bg = self.sb.has_incompat(sbf::INCOMPAT_META_BG);
        let first_meta =
            u64::from(self.sb.s_first_meta_bg).saturating_mul(u64::from(self.sb.desc_per_block()));
        if !meta_bg || g < first_meta {
            if has_super == 0 {
                return 0;
            }
            let nometa = if meta_bg {
                u64::from(self.sb.s_first_meta_bg)
            } else {
                self.sb
                    .groups_count()
                    .div_ceil(u64::from(self.sb.desc_per_block().max(1)))
            };
            has_super
                .saturating_add(nometa)
                .saturating_add(u64::from(self.sb.s_reserved_gdt_blocks))
        } else {
            has_super.saturating_add(self.bg_num_gdb(g))
        }
    }

    /// A BLOCK_UNINIT group's block bitmap as ext4_init_block_bitmap builds
    /// it: superblock/descriptor area, the bitmaps and inode table of every
    /// group that lie in this group (with flex_bg they are another
    /// group's), and the padding past the group's last cluster. One bit
    /// per cluster: a cluster holding any of them is in use.
    fn init_block_bitmap(&self, g: u32) -> Vec<u8> {
        let bs = self.block_size as usize;
        let mut b = vec![0u8; bs];
        let c = self.clusters();
        let first = self.group_first_block(u64::from(g));
        let nblocks = self.blocks_in_group(g);
        let base = c.count(self.base_meta_blocks(u64::from(g)).min(nblocks));
        for i in 0..base {
            bitmap::set(&mut b, i as usize);
        }
        let end = first.saturating_add(nblocks);
        let itb = self.itb_per_group();
        let mut mark = |blk: u64, len: u64| {
            for x in blk..blk.saturating_add(len) {
                if x >= first && x < end {
                    bitmap::set(&mut b, c.of(x.saturating_sub(first)) as usize);
                }
            }
        };
        for gd in &self.groups {
            mark(gd.bg_block_bitmap, 1);
            mark(gd.bg_inode_bitmap, 1);
            mark(gd.bg_inode_table, itb);
        }
        bitmap::mark_end(&mut b, self.clusters_in_group(g) as usize);
        b
    }

    /// An INODE_UNINIT group's inode bitmap (ext4_init_inode_bitmap): all
    /// free, padding past s_inodes_per_group set.
    fn init_inode_bitmap(&self) -> Vec<u8> {
        let mut b = vec![0u8; self.block_size as usize];
        bitmap::mark_end(&mut b, self.sb.s_inodes_per_group as usize);
        b
    }

    /// The system zone (the kernel's ext4_setup_system_zone): every
    /// group's superblock/descriptor area, bitmaps and inode table, as
    /// sorted, merged `[start, end)` ranges. Built once at open.
    pub(crate) fn build_system_zone(&self) -> Vec<(u64, u64)> {
        let itb = self.itb_per_group();
        let first_data = u64::from(self.sb.s_first_data_block);
        // Everything up to and including s_first_data_block (boot block,
        // and the superblock with 1 KiB blocks).
        let mut zones: Vec<(u64, u64)> = vec![(0, first_data.saturating_add(1))];
        for g in 0..self.groups_count32() {
            let base = self.base_meta_blocks(u64::from(g));
            if base > 0 {
                let start = self.group_first_block(u64::from(g));
                zones.push((start, start.saturating_add(base)));
            }
        }
        for gd in &self.groups {
            for (s, l) in [
                (gd.bg_block_bitmap, 1),
                (gd.bg_inode_bitmap, 1),
                (gd.bg_inode_table, itb),
            ] {
                zones.push((s, s.saturating_add(l)));
            }
        }
        zones.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(zones.len());
        for (s, e) in zones {
            match merged.last_mut() {
                Some(last) if s <= last.1 => last.1 = last.1.max(e),
                _ => merged.push((s, e)),
            }
        }
        merged
    }

    /// Whether `[first, first+count)` overlaps the superblock/descriptor
    /// area, a bitmap or an inode table of any group (the kernel's system
    /// zone check on alloc and free): a binary search in the zone built at
    /// open.
    fn in_system_zone(&self, first: u64, count: u64) -> bool {
        let end = first.saturating_add(count);
        // The first range starting at or after `end` and every later one
        // cannot overlap; the one before it is the only candidate.
        let idx = self.system_zone.partition_point(|&(s, _)| s < end);
        idx.checked_sub(1)
            .and_then(|i| self.system_zone.get(i))
            .is_some_and(|&(_, e)| e > first)
    }
}

/// A free run found in a group's bitmap.
struct Found {
    group: u32,
    bit: usize,
    len: usize,
}

impl Txn<'_> {
    /// Runs `f` over group `g`'s block bitmap as this transaction sees it
    /// (its copy, the built bitmap of a BLOCK_UNINIT group, or the cached
    /// block, checksum-verified).
    fn with_block_bitmap<R>(&self, g: u32, f: impl FnOnce(&[u8]) -> R) -> Result<R> {
        let fs = self.fs();
        let bb = fs.group(g)?.bg_block_bitmap;
        if let Some(b) = self.block_if_dirty(bb) {
            return Ok(f(b));
        }
        let d = self.desc(g)?;
        if fs.has_group_desc_csum() && d.bg_flags & BG_BLOCK_UNINIT != 0 {
            return Ok(f(&fs.init_block_bitmap(g)));
        }
        let b = fs.read_block(bb)?;
        if fs.has_metadata_csum() {
            let n = fs.sb.s_clusters_per_group as usize / 8;
            let full = fs.sb.s_desc_size >= sbf::MIN_DESC_SIZE_64BIT;
            if !bitmap::csum_ok(fs.csum_seed, &b, n, d.bg_block_bitmap_csum, full) {
                return Err(Error::corrupt(
                    format!("block bitmap of group {g}: checksum mismatch"),
                    bb,
                ));
            }
        }
        Ok(f(&b))
    }

    /// Whether block `blk` (a valid data-area block) is allocated (its
    /// cluster is), as this transaction sees the bitmaps.
    pub(crate) fn block_in_use(&self, blk: u64) -> Result<bool> {
        let (g, bit) = self.fs().cluster_bit(blk);
        self.with_block_bitmap(g, |b| bitmap::test(b, bit))
    }

    fn with_inode_bitmap<R>(&self, g: u32, f: impl FnOnce(&[u8]) -> R) -> Result<R> {
        let fs = self.fs();
        let ib = fs.group(g)?.bg_inode_bitmap;
        if let Some(b) = self.block_if_dirty(ib) {
            return Ok(f(b));
        }
        let d = self.desc(g)?;
        if fs.has_group_desc_csum() && d.bg_flags & BG_INODE_UNINIT != 0 {
            return Ok(f(&fs.init_inode_bitmap()));
        }
        let b = fs.read_block(ib)?;
        if fs.has_metadata_csum() {
            let n = fs.sb.s_inodes_per_group as usize / 8;
            let full = fs.sb.s_desc_size >= sbf::MIN_DESC_SIZE_64BIT;
            if !bitmap::csum_ok(fs.csum_seed, &b, n, d.bg_inode_bitmap_csum, full) {
                return Err(Error::corrupt(
                    format!("inode bitmap of group {g}: checksum mismatch"),
                    ib,
                ));
            }
        }
        Ok(f(&b))
    }

    /// This transaction's copy of group `g`'s block bitmap, for changes; a
    /// BLOCK_UNINIT group is initialized (flag cleared, free count set from
    /// the built bitmap as ext4_free_clusters_after_init does).
    fn block_bitmap_mut(&mut self, g: u32) -> Result<&mut Vec<u8>> {
        let fs = self.fs();
        let bb = fs.group(g)?.bg_block_bitmap;
        if !self.blocks.contains_key(&bb) {
            let d = self.desc(g)?;
            let data = if fs.has_group_desc_csum() && d.bg_flags & BG_BLOCK_UNINIT != 0 {
                let b = fs.init_block_bitmap(g);
                let nbits = fs.clusters_in_group(g) as usize;
                let free = nbits.saturating_sub(bitmap::count_set(&b, nbits)) as u32;
                let dm = self.desc_mut(g)?;
                if dm.bg_free_blocks_count != free {
                    tracing::warn!(
                        group = g,
                        "BLOCK_UNINIT group had free count {}, bitmap says {free}",
                        dm.bg_free_blocks_count
                    );
                }
                let diff = i64::from(free).saturating_sub(i64::from(dm.bg_free_blocks_count));
                dm.bg_free_blocks_count = free;
                dm.bg_flags &= !BG_BLOCK_UNINIT;
                self.free_blocks_delta = self.free_blocks_delta.saturating_add(diff);
                b
            } else {
                self.with_block_bitmap(g, <[u8]>::to_vec)?
            };
            self.blocks.insert(bb, data);
        }
        self.block_bitmaps.insert(g);
        self.desc_mut(g)?;
        self.blocks
            .get_mut(&bb)
            .ok_or_else(|| Error::corrupt(format!("block bitmap of group {g}"), bb))
    }

    /// This transaction's copy of group `g`'s inode bitmap, for changes (an
    /// INODE_UNINIT group's is built; the caller clears the flag).
    fn inode_bitmap_mut(&mut self, g: u32) -> Result<&mut Vec<u8>> {
        let ib = self.fs().group(g)?.bg_inode_bitmap;
        if !self.blocks.contains_key(&ib) {
            let data = self.with_inode_bitmap(g, <[u8]>::to_vec)?;
            self.blocks.insert(ib, data);
        }
        self.inode_bitmaps.insert(g);
        self.desc_mut(g)?;
        self.blocks
            .get_mut(&ib)
            .ok_or_else(|| Error::corrupt(format!("inode bitmap of group {g}"), ib))
    }

    /// Clusters this caller may still allocate: free (live + this
    /// transaction) minus what is reserved from it (ext4_has_free_clusters:
    /// the superblock counts blocks, the transaction and reserves count
    /// clusters).
    fn clusters_available(&self, reserved_ok: bool) -> u64 {
        let fs = self.fs();
        let c = fs.clusters();
        let live = c.of(fs.rw.live_sb().sb.s_free_blocks_count);
        let free = if self.free_blocks_delta >= 0 {
            live.saturating_add(self.free_blocks_delta.unsigned_abs())
        } else {
            live.saturating_sub(self.free_blocks_delta.unsigned_abs())
        };
        free.saturating_sub(fs.kept_clusters(reserved_ok, self.use_reserved_pool))
    }

    /// Up to `want` contiguous blocks near `goal` (0 or out of range: from
    /// group 0). Returns `(first, count)` with `1 <= count <= want`.
    /// NoSpace when nothing may be allocated (`reserved_ok`: the caller
    /// may use the root-reserved blocks).
    ///
    /// With bigalloc whole clusters are taken: `first` is the first block
    /// of a cluster, and the clusters of `[first, first+count)` are this
    /// caller's (see `cluster.rs`; a metadata block asks for 1 and owns its
    /// cluster).
    pub(crate) fn alloc_blocks(
        &mut self,
        goal: u64,
        want: u32,
        reserved_ok: bool,
    ) -> Result<(u64, u32)> {
        if want == 0 {
            return Err(Error::Invalid("allocation of zero blocks"));
        }
        let mut want = want;
        if let Some(budget) = self.quota_budget {
            if budget == 0 {
                self.quota_hit = true;
                return Err(Error::NoSpace);
            }
            want = want.min(u32::try_from(budget).unwrap_or(u32::MAX));
        }
        let avail = self.clusters_available(reserved_ok);
        if avail == 0 {
            return Err(Error::NoSpace);
        }
        let fs = self.fs();
        let c = fs.clusters();
        let cpg = u64::from(fs.sb.s_clusters_per_group);
        let want_c = c.count(u64::from(want)).min(avail).min(cpg).max(1) as usize;
        let ngroups = fs.groups_count32();
        let (g0, start) = if fs.blocks_valid(goal, 1) {
            fs.cluster_bit(goal)
        } else {
            (0, 0)
        };
        let mut found: Option<Found> = None;
        // Pass 1: a full run of `want`.
        for i in 0..ngroups {
            let g = nth_group(g0, i, ngroups);
            if (self.desc(g)?.bg_free_blocks_count as usize) < want_c {
                continue;
            }
            let nbits = fs.clusters_in_group(g) as usize;
            let at = if i == 0 { start } else { 0 };
            let hit = self.with_block_bitmap(g, |b| {
                if bitmap::zero_run(b, at, nbits, want_c) == want_c {
                    return Some(at);
                }
                bitmap::find_run(b, at, nbits, want_c)
                    .or_else(|| bitmap::find_run(b, 0, at, want_c))
            })?;
            if let Some(bit) = hit {
                found = Some(Found {
                    group: g,
                    bit,
                    len: want_c,
                });
                break;
            }
        }
        // Pass 2: the largest run, goal group first.
        if found.is_none() {
            for i in 0..ngroups {
                let g = nth_group(g0, i, ngroups);
                if self.desc(g)?.bg_free_blocks_count == 0 {
                    continue;
                }
                let nbits = fs.clusters_in_group(g) as usize;
                if let Some((bit, len)) =
                    self.with_block_bitmap(g, |b| bitmap::largest_run(b, nbits, want_c))?
                    && len > 0
                {
                    found = Some(Found { group: g, bit, len });
                    break;
                }
            }
        }
        let Some(Found { group, bit, len }) = found else {
            // The counters said there was space but no bitmap has any.
            let e = Error::corrupt("free block counts disagree with the block bitmaps", 0);
            return Err(e);
        };
        let first = fs.cluster_first_block(group, bit);
        let span = c
            .start(len as u64)
            .min(fs.sb.s_blocks_count.saturating_sub(first));
        let count = span.min(u64::from(want));
        if !fs.blocks_valid(first, count.max(1)) || fs.in_system_zone(first, span.max(1)) {
            let e = Error::corrupt(
                format!("block bitmap of group {group} offers metadata blocks {first}+{span}"),
                fs.group(group)?.bg_block_bitmap,
            );
            return Err(e);
        }
        let b = self.block_bitmap_mut(group)?;
        for x in bit..bit.saturating_add(len) {
            bitmap::set(b, x);
        }
        let d = self.desc_mut(group)?;
        d.bg_free_blocks_count = d.bg_free_blocks_count.saturating_sub(len as u32);
        self.free_blocks_delta = self.free_blocks_delta.saturating_sub(len as i64);
        if let Some(budget) = self.quota_budget.as_mut() {
            // Whole clusters are charged (i_blocks counts them).
            *budget = budget.saturating_sub(c.start(len as u64));
        }
        Ok((first, count as u32))
    }

    /// Frees the clusters of `[first, first+count)` (may span groups; with
    /// bigalloc every cluster the range touches, so callers pass only
    /// clusters no longer used: see `cluster.rs`). Freeing a cluster that
    /// is already free, or metadata, is corruption.
    pub(crate) fn free_blocks(&mut self, first: u64, count: u32) -> Result<()> {
        let fs = self.fs();
        let c = fs.clusters();
        let count64 = u64::from(count);
        if count == 0 {
            return Ok(());
        }
        // Whole clusters, clipped to the filesystem: none may hold
        // metadata.
        let (asked, first) = (first, c.floor(first));
        let end = c
            .start(c.count(asked.saturating_add(count64)))
            .min(fs.sb.s_blocks_count);
        let span = end.saturating_sub(first);
        if !fs.blocks_valid(asked, count64) || fs.in_system_zone(first, span) {
            let e = Error::corrupt(
                format!("freeing blocks {asked}+{count}: outside the data area"),
                asked,
            );
            return Err(e);
        }
        let mut b = first;
        while b < end {
            let g = fs.block_group(b);
            let gfirst = fs.group_first_block(u64::from(g));
            let gend = gfirst.saturating_add(fs.blocks_in_group(g)).min(end);
            let (s, n) = (
                c.of(b.saturating_sub(gfirst)) as usize,
                c.count(gend.saturating_sub(b)) as usize,
            );
            let bm = self.block_bitmap_mut(g)?;
            if (s..s.saturating_add(n)).any(|x| !bitmap::test(bm, x)) {
                let e = Error::corrupt(
                    format!(
                        "freeing blocks {b}+{}: some are already free",
                        gend.saturating_sub(b)
                    ),
                    b,
                );
                return Err(e);
            }
            for x in s..s.saturating_add(n) {
                bitmap::clear(bm, x);
            }
            let d = self.desc_mut(g)?;
            d.bg_free_blocks_count = d.bg_free_blocks_count.saturating_add(n as u32);
            self.free_blocks_delta = self.free_blocks_delta.saturating_add(n as i64);
            if gend <= b {
                break;
            }
            b = gend;
        }
        // A freed block's pending metadata must not be written over what
        // it holds next (file data written before this commits).
        let dead: Vec<u64> = self.blocks.range(first..end).map(|(k, _)| *k).collect();
        for k in dead {
            if !self.is_bitmap_block(k) {
                self.blocks.remove(&k);
            }
        }
        let len = u32::try_from(end.saturating_sub(first)).unwrap_or(u32::MAX);
        self.freed.push((first, len));
        Ok(())
    }

    fn is_bitmap_block(&self, blk: u64) -> bool {
        self.fs()
            .groups
            .iter()
            .any(|g| g.bg_block_bitmap == blk || g.bg_inode_bitmap == blk)
    }

    /// Picks the group for a new inode (see the module documentation).
    fn inode_group(&self, parent: Ino, kind: FileKind) -> Result<Option<u32>> {
        let fs = self.fs();
        let ngroups = fs.groups_count32();
        let ipg = fs.sb.s_inodes_per_group.max(1);
        let pgroup =
            (parent.saturating_sub(1).checked_div(ipg).unwrap_or(0)).min(ngroups.saturating_sub(1));
        if kind == FileKind::Directory && parent == ROOT_INO {
            let mut total = 0u64;
            for g in 0..ngroups {
                total = total.saturating_add(u64::from(self.desc(g)?.bg_free_blocks_count));
            }
            let avg = total.checked_div(u64::from(ngroups)).unwrap_or(0);
            let mut best: Option<(u32, u32)> = None;
            for g in 0..ngroups {
                let d = self.desc(g)?;
                if d.bg_free_inodes_count > 0
                    && u64::from(d.bg_free_blocks_count) >= avg
                    && best.is_none_or(|(_, f)| d.bg_free_inodes_count > f)
                {
                    best = Some((g, d.bg_free_inodes_count));
                }
            }
            if let Some((g, _)) = best {
                return Ok(Some(g));
            }
        }
        let flex = 1u32 << fs.flex_bits();
        let start = if flex > 1 {
            pgroup & !(flex.saturating_sub(1))
        } else {
            pgroup
        };
        // First with free inodes and free blocks, then with free inodes.
        for need_blocks in [true, false] {
            for i in 0..ngroups {
                let g = nth_group(start, i, ngroups);
                let d = self.desc(g)?;
                if d.bg_free_inodes_count > 0 && (!need_blocks || d.bg_free_blocks_count > 0) {
                    return Ok(Some(g));
                }
            }
        }
        Ok(None)
    }

    /// A free inode number for a new inode of `kind` under `parent`; marks
    /// it used and updates free/dirs counters, INODE_UNINIT/BLOCK_UNINIT
    /// and bg_itable_unused like ext4_new_inode. The caller then
    /// `put_inode`s a fresh `Inode::new(..)`.
    pub(crate) fn alloc_inode(&mut self, parent: Ino, kind: FileKind) -> Result<Ino> {
        let fs = self.fs();
        let live_free = i64::from(fs.rw.live_sb().sb.s_free_inodes_count);
        if live_free.saturating_add(self.free_inodes_delta) <= 0 {
            return Err(Error::NoSpace);
        }
        let ipg = fs.sb.s_inodes_per_group;
        let ngroups = fs.groups_count32();
        let first_group = match self.inode_group(parent, kind)? {
            Some(g) => g,
            None => return Err(Error::NoSpace),
        };
        for i in 0..ngroups {
            let g = nth_group(first_group, i, ngroups);
            if self.desc(g)?.bg_free_inodes_count == 0 {
                continue;
            }
            let start = if g == 0 {
                fs.sb.s_first_ino.saturating_sub(1) as usize
            } else {
                0
            };
            let Some(bit) =
                self.with_inode_bitmap(g, |b| bitmap::find_zero(b, start, ipg as usize))?
            else {
                tracing::warn!(group = g, "free inode count says free, bitmap is full");
                continue;
            };
            let ino = g
                .checked_mul(ipg)
                .and_then(|x| x.checked_add(u32::try_from(bit).ok()?.checked_add(1)?))
                .ok_or_else(|| Error::corrupt("inode number overflows", 0))?;
            self.take_inode(g, bit, kind == FileKind::Directory)?;
            self.inode_life.entry(ino).or_insert((false, true)).1 = true;
            return Ok(ino);
        }
        Err(Error::NoSpace)
    }

    fn take_inode(&mut self, g: u32, bit: usize, dir: bool) -> Result<()> {
        let fs = self.fs();
        let ipg = fs.sb.s_inodes_per_group;
        let csum = fs.has_group_desc_csum();
        if csum && self.desc(g)?.bg_flags & BG_BLOCK_UNINIT != 0 {
            // The inode table now counts: initialize the block bitmap.
            self.block_bitmap_mut(g)?;
        }
        let b = self.inode_bitmap_mut(g)?;
        bitmap::set(b, bit);
        let d = self.desc_mut(g)?;
        if csum {
            let mut used = ipg.saturating_sub(d.bg_itable_unused);
            if d.bg_flags & BG_INODE_UNINIT != 0 {
                d.bg_flags &= !BG_INODE_UNINIT;
                used = 0;
            }
            let index = (bit as u32).saturating_add(1);
            if index > used {
                d.bg_itable_unused = ipg.saturating_sub(index);
            }
        }
        d.bg_free_inodes_count = d.bg_free_inodes_count.saturating_sub(1);
        if dir {
            d.bg_used_dirs_count = d.bg_used_dirs_count.saturating_add(1);
        }
        self.free_inodes_delta = self.free_inodes_delta.saturating_sub(1);
        Ok(())
    }

    /// Frees inode `ino` in its bitmap and counters (the inode's contents
    /// are the caller's: see `Ext4::release_inode`).
    pub(crate) fn free_inode(&mut self, ino: Ino, was_dir: bool) -> Result<()> {
        let fs = self.fs();
        if ino < fs.sb.s_first_ino || ino > fs.sb.s_inodes_count {
            let e = Error::corrupt(format!("freeing reserved or bad inode {ino}"), 0);
            return Err(e);
        }
        let (g, bit) = fs.inode_group_index(ino)?;
        let bit = bit as usize;
        let bitmap_block = fs.group(g)?.bg_inode_bitmap;
        let b = self.inode_bitmap_mut(g)?;
        if !bitmap::test(b, bit) {
            let e = Error::corrupt(format!("freeing inode {ino}: already free"), bitmap_block);
            return Err(e);
        }
        bitmap::clear(b, bit);
        let d = self.desc_mut(g)?;
        d.bg_free_inodes_count = d.bg_free_inodes_count.saturating_add(1);
        if was_dir {
            d.bg_used_dirs_count = d.bg_used_dirs_count.saturating_sub(1);
        }
        self.free_inodes_delta = self.free_inodes_delta.saturating_add(1);
        self.inode_life.entry(ino).or_insert((true, false)).1 = false;
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used)]

    use std::path::Path;
    use std::process::Command;

    use super::super::ondisk::inode::{EXT4_EXTENTS_FL, S_IFDIR, S_IFREG};
    use super::super::testutil::*;
    use super::super::util::{put_le16, put_le32};
    use super::super::{Ext4, FileKind, Inode, ROOT_INO};

    /// The mkfs variants every allocator test runs over (64 MiB images,
    /// small groups so there are several, some of them BLOCK_UNINIT).
    pub(crate) const VARIANTS: &[&[&str]] = &[
        &["-b", "4096", "-g", "4096"],
        &["-b", "4096", "-g", "4096", "-O", "^metadata_csum"],
        &["-t", "ext2", "-b", "4096", "-g", "4096"],
        &["-t", "ext3", "-b", "1024"],
        &["-b", "1024"],
        &["-b", "4096", "-g", "4096", "-O", "^flex_bg"],
        &["-b", "4096", "-g", "2048", "-O", "meta_bg,^resize_inode"],
        &[
            "-b",
            "4096",
            "-g",
            "4096",
            "-O",
            "^metadata_csum,^uninit_bg",
        ],
    ];

    fn free_counts(img: &Path) -> (u64, u64) {
        (
            dumpe2fs_field(img, "Free blocks").parse().unwrap(),
            dumpe2fs_field(img, "Free inodes").parse().unwrap(),
        )
    }

    fn live_free(fs: &Ext4) -> (u64, u64) {
        let s = fs.rw.live_sb();
        (
            s.sb.s_free_blocks_count,
            u64::from(s.sb.s_free_inodes_count),
        )
    }

    /// A regular file inode owning `[pblk, pblk+len)` as blocks 0.., with
    /// links_count 1 (debugfs `link` then names it without touching it).
    fn file_inode(fs: &Ext4, ino: u32, pblk: u64, len: u32) -> Inode {
        let mut i = Inode::new(fs, ino, S_IFREG | 0o644, 0, 0, fs.now());
        let bs = u64::from(fs.block_size());
        i.size = u64::from(len) * bs - 100;
        i.blocks = u64::from(len) * (bs / 512);
        if i.flags & EXT4_EXTENTS_FL != 0 {
            put_le16(&mut i.i_block, 2, 1);
            put_le32(&mut i.i_block, 12, 0);
            put_le16(&mut i.i_block, 16, len as u16);
            put_le16(&mut i.i_block, 18, (pblk >> 32) as u16);
            put_le32(&mut i.i_block, 20, pblk as u32);
        } else {
            assert!(len <= 12);
            for k in 0..len {
                put_le32(&mut i.i_block, 4 * k as usize, (pblk + u64::from(k)) as u32);
            }
        }
        i
    }

    /// Allocate and free blocks and inodes (also across groups and into
    /// BLOCK_UNINIT groups), drop a transaction, then create one real
    /// file: counters exact against dumpe2fs, e2fsck clean, data intact.
    #[test]
    fn alloc_free_round_trips() {
        if !have_mkfs() {
            return;
        }
        for args in VARIANTS {
            let im = RwImage::new("alloc", args);
            let (fb0, fi0) = free_counts(&im.img);
            let fs = im.open();
            assert_eq!(live_free(&fs), (fb0, fi0), "{args:?}: counters at mount");
            let ngroups = fs.sb().groups_count() as u32;
            let last_goal = fs.group_first_block(u64::from(ngroups - 1)) + 5;

            // Allocate, commit; free, commit.
            let mut got = Vec::new();
            let mut inos = Vec::new();
            let mut txn = fs.begin().unwrap();
            for (goal, want) in [(0, 1), (0, 17), (last_goal, 100), (last_goal, 3), (0, 5000)] {
                let (b, n) = txn.alloc_blocks(goal, want, false).unwrap();
                assert!(n >= 1 && n <= want, "{args:?}");
                got.push((b, n));
            }
            for k in 0..6 {
                let kind = if k % 3 == 0 {
                    FileKind::Directory
                } else {
                    FileKind::RegularFile
                };
                inos.push((txn.alloc_inode(ROOT_INO, kind).unwrap(), kind));
            }
            txn.commit().unwrap();
            let used: u64 = got.iter().map(|&(_, n)| u64::from(n)).sum();
            assert_eq!(live_free(&fs), (fb0 - used, fi0 - 6), "{args:?}");
            // Distinct, non-overlapping runs.
            let mut sorted = got.clone();
            sorted.sort();
            for w in sorted.windows(2) {
                assert!(
                    w[0].0 + u64::from(w[0].1) <= w[1].0,
                    "{args:?}: overlap {w:?}"
                );
            }
            let mut txn = fs.begin().unwrap();
            for &(b, n) in &got {
                txn.free_blocks(b, n).unwrap();
            }
            for &(ino, kind) in &inos {
                txn.free_inode(ino, kind == FileKind::Directory).unwrap();
            }
            // Double free is corruption, and would turn the mount
            // read-only: check it on a dropped transaction copy instead.
            txn.commit().unwrap();
            assert_eq!(live_free(&fs), (fb0, fi0), "{args:?}: after free");

            // A dropped transaction changes nothing.
            {
                let mut txn = fs.begin().unwrap();
                txn.alloc_blocks(0, 64, false).unwrap();
                txn.alloc_inode(ROOT_INO, FileKind::RegularFile).unwrap();
            }
            assert_eq!(live_free(&fs), (fb0, fi0), "{args:?}: after drop");

            // One real file with data.
            let want = if fs.sb().has_incompat(super::sbf::INCOMPAT_EXTENTS) {
                40
            } else {
                12
            };
            let mut txn = fs.begin().unwrap();
            let ino = txn.alloc_inode(ROOT_INO, FileKind::RegularFile).unwrap();
            let goal = fs.inode_goal(ino, FileKind::RegularFile);
            let (pblk, n) = txn.alloc_blocks(goal, want, false).unwrap();
            assert_eq!(n, want, "{args:?}: a fresh fs has a contiguous run");
            let data = pattern(n as usize * fs.block_size() as usize - 100, 9);
            fs.write_data(pblk, 0, &data).unwrap();
            txn.put_inode(file_inode(&fs, ino, pblk, n));
            txn.commit().unwrap();
            let mut back = vec![0u8; data.len()];
            assert_eq!(fs.read(ino, 0, &mut back).unwrap(), data.len());
            assert!(back == data, "{args:?}: read back");
            fs.shutdown().unwrap();
            assert!(fs.is_read_only());
            let img = im.save();
            assert_eq!(dumpe2fs_field(img, "Filesystem state"), "clean", "{args:?}");
            debugfs(img, &format!("link <{ino}> newfile"));
            assert_fsck_clean(img, &format!("allocations on {args:?}"));
            assert_eq!(
                free_counts(img),
                (fb0 - u64::from(n), fi0 - 1),
                "{args:?}: dumpe2fs counters"
            );
            let cat = Command::new("debugfs")
                .args(["-R", "cat newfile"])
                .arg(img)
                .output()
                .unwrap();
            assert!(cat.stdout == data, "{args:?}: debugfs cat");
            let mnt = dumpe2fs_field(img, "Mount count");
            assert_ne!(mnt, "0", "{args:?}: mount count incremented");
        }
    }

    /// Directories: used_dirs counts move both ways, and a directory
    /// allocation under the root spreads to a group with free inodes.
    #[test]
    fn dir_counts_and_itable_unused() {
        if !have_mkfs() {
            return;
        }
        let im = RwImage::new("dirs", VARIANTS[0]);
        let fs = im.open();
        let mut txn = fs.begin().unwrap();
        let before: Vec<_> = (0..fs.sb().groups_count() as u32)
            .map(|g| txn.desc(g).unwrap())
            .collect();
        let d = txn.alloc_inode(ROOT_INO, FileKind::Directory).unwrap();
        let g = (d - 1) / fs.sb().s_inodes_per_group;
        let after = txn.desc(g).unwrap();
        assert_eq!(
            after.bg_used_dirs_count,
            before[g as usize].bg_used_dirs_count + 1
        );
        assert_eq!(
            after.bg_free_inodes_count,
            before[g as usize].bg_free_inodes_count - 1
        );
        let idx = (d - 1) % fs.sb().s_inodes_per_group + 1;
        assert!(fs.sb().s_inodes_per_group - after.bg_itable_unused >= idx);
        assert_eq!(after.bg_flags & super::BG_INODE_UNINIT, 0);
        // Only the allocation is under test: free the inode again
        // (it has no "." and "..").
        txn.free_inode(d, true).unwrap();
        assert_eq!(
            txn.desc(g).unwrap().bg_used_dirs_count,
            before[g as usize].bg_used_dirs_count
        );
        txn.commit().unwrap();
        fs.shutdown().unwrap();
        assert_fsck_clean(im.save(), "dir alloc/free");
        let _ = S_IFDIR;
    }

    /// Filling the filesystem: non-root callers stop at the reserved
    /// blocks, root goes further, and nothing is corrupted.
    #[test]
    fn reserved_blocks_and_enospc() {
        if !have_mkfs() {
            return;
        }
        let im = RwImage::new("enospc", &["-b", "4096", "-g", "4096", "-m", "5"]);
        let fs = im.open();
        let r = fs.sb().s_r_blocks_count;
        assert!(r > 0);
        let mut txn = fs.begin().unwrap();
        let mut user = 0u64;
        loop {
            match txn.alloc_blocks(0, 4096, false) {
                Ok((_, n)) => user += u64::from(n),
                Err(super::Error::NoSpace) => break,
                Err(e) => panic!("{e}"),
            }
        }
        let mut root = 0u64;
        loop {
            match txn.alloc_blocks(0, 4096, true) {
                Ok((_, n)) => root += u64::from(n),
                Err(super::Error::NoSpace) => break,
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(root, r, "root gets exactly the reserved blocks");
        txn.use_reserved_pool();
        let mut pool = 0u64;
        while let Ok((_, n)) = txn.alloc_blocks(0, 4096, true) {
            pool += u64::from(n);
        }
        let resv = (fs.sb().s_blocks_count / 50).min(4096);
        assert_eq!(pool, resv);
        let (fb, _) = live_free(&fs);
        assert_eq!(user + root + pool, fb, "everything free was handed out");
        drop(txn);
        assert_eq!(live_free(&fs).0, fb);
        fs.shutdown().unwrap();
        assert_fsck_clean(im.save(), "ENOSPC run");
    }
}
