//! File content, write side: write, truncate, fallocate and freeing a
//! file's blocks, for extent-mapped, indirect-mapped and inline files.
//!
//! Data goes straight to the device (`Ext4::write_data`) before the
//! transaction that maps it commits, so a crash never exposes a mapping to
//! stale blocks. Partial blocks: read-modify-write for written blocks,
//! zero-fill for new and unwritten ones (which become written). The bytes
//! of the last block past i_size are kept zero on disk (truncate zeroes
//! them), so growing a file reads zeros there, as with the kernel.
//!
//! Setuid/setgid clearing on write is asked by the FUSE layer (a flag on
//! the write, applied through `setattr`, see attr.rs); the page cache's
//! whole-page writes are trimmed in page_writeback.rs.

use super::Mapping;
use super::extent::{self as ew, Root, Run, TreeCtx, TreeStore};
use super::indirect::IndCtx;
use super::page_writeback::PAGE_SIZE;
use crate::ext4::inode_flags;
use crate::ext4::ondisk::inode::{EXT4_EXTENTS_FL, EXT4_INLINE_DATA_FL, Inode};
use crate::ext4::ondisk::superblock::{self as sbf};
use crate::ext4::txn::Txn;
use crate::ext4::{Error, Ext4, FileKind, Ino, Result, WriteAs};

/// fallocate(2) mode bits the engine understands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FallocMode {
    pub keep_size: bool,
    pub punch_hole: bool,
    pub zero_range: bool,
}

/// The kernel's MAX_LFS_FILESIZE on 64-bit.
const MAX_LFS_FILESIZE: u64 = i64::MAX as u64;

/// A transaction seen as extent-tree storage.
pub(crate) struct TxnStore<'t, 'fs> {
    pub(crate) txn: &'t mut Txn<'fs>,
    pub(crate) reserved_ok: bool,
}

impl TreeStore for TxnStore<'_, '_> {
    fn read_tree_block(&mut self, blk: u64) -> Result<Vec<u8>> {
        Ok(self.txn.block(blk)?.to_vec())
    }
    fn write_tree_block(&mut self, blk: u64, data: &[u8], fresh: bool) -> Result<()> {
        let b = if fresh {
            self.txn.block_new(blk)?
        } else {
            self.txn.block_mut(blk)?
        };
        if b.len() != data.len() {
            return Err(Error::Invalid("tree block size mismatch"));
        }
        b.copy_from_slice(data);
        Ok(())
    }
    fn alloc(&mut self, goal: u64, want: u32) -> Result<(u64, u32)> {
        self.txn.alloc_blocks(goal, want, self.reserved_ok)
    }
    fn free(&mut self, first: u64, count: u32) -> Result<()> {
        self.txn.free_blocks(first, count)
    }
}

/// ext4_max_bitmap_size: the largest indirect-mapped file, limited by the
/// triple-indirect tree and by i_blocks (data plus indirect blocks).
#[expect(
    clippy::arithmetic_side_effects,
    reason = "bits is a block size's log2 (10..=16): ppb^3 < 2^43, and the kernel's subtractions stay above 0"
)]
fn max_bitmap_size(bits: u32, huge: bool) -> u64 {
    let ppb: u64 = 1 << (bits - 2);
    let mut upper: u64 = if huge { (1 << 48) - 1 } else { (1 << 32) - 1 };
    upper >>= bits - 9;
    let mut res: u64 = 12 + ppb + ppb * ppb + ppb * ppb * ppb;
    let mut meta: u64 = 1 + 1 + ppb + 1 + ppb + ppb * ppb;
    if res + meta > upper {
        res = upper;
        upper -= 12;
        meta = 1;
        upper = upper.saturating_sub(ppb);
        if upper < ppb * ppb {
            meta += 1 + upper.div_ceil(ppb);
            res -= meta;
        } else {
            meta += 1 + ppb;
            upper -= ppb * ppb;
            meta += 1 + upper.div_ceil(ppb) + upper.div_ceil(ppb * ppb);
            res -= meta;
        }
    }
    (res << bits).min(MAX_LFS_FILESIZE)
}

/// ext4_max_size for extent-mapped files.
#[expect(
    clippy::arithmetic_side_effects,
    reason = "bits is a block size's log2 (10..=16): (2^32 - 1) << bits fits a u64"
)]
fn max_extent_size(bits: u32, huge: bool) -> u64 {
    let mut upper = MAX_LFS_FILESIZE;
    if !huge {
        upper = (((1u64 << 32) - 1) >> (bits - 9)) << bits;
    }
    (((1u64 << 32) - 1) << bits).min(upper)
}

impl Ext4 {
    fn block_bits(&self) -> u32 {
        self.block_size().trailing_zeros()
    }

    /// Largest size a file with this mapping may have (s_maxbytes or
    /// s_bitmap_maxbytes).
    pub(crate) fn max_file_size(&self, inode: &Inode) -> u64 {
        let huge = self.sb().has_ro_compat(sbf::RO_COMPAT_HUGE_FILE);
        if inode.has_flag(EXT4_EXTENTS_FL) {
            max_extent_size(self.block_bits(), huge)
        } else {
            max_bitmap_size(self.block_bits(), huge)
        }
    }

    /// Where a file's first data should go (ext4_inode_to_goal_block):
    /// its group, or with flex_bg of 4+ groups the group after the start
    /// of its flex group (regular files) where data blocks begin.
    pub(crate) fn data_goal(&self, ino: Ino, kind: FileKind) -> u64 {
        let ipg = u64::from(self.sb().s_inodes_per_group.max(1));
        let mut group = u64::from(ino.saturating_sub(1))
            .checked_div(ipg)
            .unwrap_or(0);
        let log_flex = u32::from(self.sb().s_log_groups_per_flex);
        if self.sb().has_incompat(sbf::INCOMPAT_FLEX_BG) && (2..32).contains(&log_flex) {
            group &= !((1u64 << log_flex).saturating_sub(1));
            if kind == FileKind::RegularFile {
                group = group.saturating_add(1);
            }
        }
        if group >= self.sb().groups_count() {
            group = 0;
        }
        self.group_first_block(group)
    }

    pub(crate) fn tree_ctx(&self, inode: &Inode) -> TreeCtx {
        TreeCtx {
            ino: inode.ino,
            inode_block: self.inode_block(inode.ino),
            block_size: self.block_size() as usize,
            csum_seed: self
                .has_metadata_csum()
                .then(|| self.inode_csum_seed(inode)),
            first_block: self.first_data_block(),
            end_block: self.sb().s_blocks_count,
            default_goal: self.data_goal(inode.ino, inode.kind),
            clusters: self.clusters(),
        }
    }

    /// Runs `edit` on extent file `inode`'s tree through `txn` (new tree
    /// blocks may use the root-reserved ones with `reserved_ok`), then
    /// drops the inode's cached leaf, which the edit may have changed.
    pub(crate) fn edit_extent_tree<T>(
        &self,
        txn: &mut Txn<'_>,
        inode: &mut Inode,
        reserved_ok: bool,
        edit: impl FnOnce(&mut TxnStore<'_, '_>, &TreeCtx, &mut Root<'_>) -> T,
    ) -> T {
        let ctx = self.tree_ctx(inode);
        let mut store = TxnStore { txn, reserved_ok };
        let mut root = Root {
            i_block: &mut inode.i_block,
            blocks: &mut inode.blocks,
        };
        let r = edit(&mut store, &ctx, &mut root);
        *inode
            .extent_hint
            .get_mut()
            .unwrap_or_else(|e| e.into_inner()) = None;
        r
    }

    /// Block maps (indirect blocks) know nothing of clusters: bigalloc
    /// requires extents (the kernel refuses bigalloc without them), so an
    /// indirect-mapped file there is corrupt for the write side.
    fn indirect_writable(&self, inode: &Inode) -> Result<()> {
        if self.clusters().is_bigalloc() {
            return Err(Error::corrupt(
                format!(
                    "inode {}: block-mapped file on a bigalloc filesystem",
                    inode.ino
                ),
                self.inode_block(inode.ino),
            ));
        }
        Ok(())
    }

    /// Maps [lblk, lblk+count) allocating where needed: runs in logical
    /// order covering a prefix of the range, and whether NoSpace cut it
    /// short. Extent files get extents (unwritten if asked); indirect files
    /// get data and indirect blocks (`unwritten` must be false).
    pub(crate) fn map_alloc_runs(
        &self,
        txn: &mut Txn<'_>,
        inode: &mut Inode,
        lblk: u64,
        count: u64,
        unwritten: bool,
        reserved_ok: bool,
    ) -> Result<(Vec<Run>, bool)> {
        if inode.has_flag(EXT4_INLINE_DATA_FL) {
            return Err(Error::Invalid("block mapping of an inline-data inode"));
        }
        if inode.has_flag(EXT4_EXTENTS_FL) {
            self.edit_extent_tree(txn, inode, reserved_ok, |store, ctx, root| {
                ew::map_alloc(store, ctx, root, lblk, count, unwritten)
            })
        } else {
            if unwritten {
                return Err(Error::Unsupported(
                    "unwritten blocks in an indirect-mapped file".into(),
                ));
            }
            self.indirect_writable(inode)?;
            let mut c = IndCtx {
                ino: inode.ino,
                default_goal: self.data_goal(inode.ino, inode.kind),
                i_block: &mut inode.i_block,
                blocks: &mut inode.blocks,
                reserved_ok,
            };
            self.ind_map_alloc(txn, &mut c, lblk, count)
        }
    }

    /// Maps [lblk, lblk+count) allocating where needed (writes, directory
    /// growth); returns (lblk, pblk, len) runs. NoSpace unless the whole
    /// range got mapped (the allocations made stay in the transaction; drop
    /// it to undo them).
    pub(crate) fn map_alloc(
        &self,
        txn: &mut Txn<'_>,
        inode: &mut Inode,
        lblk: u64,
        count: u32,
        unwritten: bool,
    ) -> Result<Vec<(u64, u64, u32)>> {
        let (runs, short) =
            self.map_alloc_runs(txn, inode, lblk, u64::from(count), unwritten, false)?;
        if short {
            return Err(Error::NoSpace);
        }
        Ok(runs.iter().map(|r| (r.lblk, r.pblk, r.len)).collect())
    }

    /// write(2): see [`Ext4::write_as`]; the caller may not use the
    /// root-reserved blocks.
    pub fn write(&self, ino: Ino, offset: u64, data: &[u8]) -> Result<usize> {
        self.write_as(ino, offset, data, WriteAs::default())
    }

    /// Writes `data` at `offset` of regular file `ino`, allocating as
    /// needed; grows i_size, sets mtime and ctime (unless `how` is a
    /// page-cache write-back). On a full filesystem it writes what fits
    /// and returns the short count (NoSpace if nothing fit).
    pub fn write_as(&self, ino: Ino, offset: u64, data: &[u8], how: WriteAs) -> Result<usize> {
        let _content = self.rw.content_locks.lock(ino);
        let mut txn = self.begin()?;
        let mut inode = txn.inode(ino)?;
        // A page-cache write-back comes from the kernel, long after the
        // write(2) of whoever wrote: the file's owner stands in for them.
        let reserved_ok = if how.page_cache {
            self.may_use_reserved(inode.uid, inode.gid)
        } else {
            how.reserved_ok
        };
        match inode.kind {
            FileKind::RegularFile => {}
            FileKind::Directory => return Err(Error::IsDir),
            _ => return Err(Error::Invalid("write to a non-regular file")),
        }
        inode_flags::ensure_content_mutable(&inode)?;
        // An append-only file takes any write that reaches it: its rule is
        // open's (no writing open without O_APPEND, `check_open`), and
        // ext4 lets an fd opened before chattr +a write anywhere.
        if data.is_empty() {
            return Ok(0);
        }
        let max = self.max_file_size(&inode);
        if offset >= max {
            return Err(Error::FileTooBig);
        }
        let len = (data.len() as u64).min(max.saturating_sub(offset));
        let data = data.get(..len as usize).unwrap_or(data);
        // ext4's write_begin: an inline file, or a new one that may take
        // inline data, keeps the write inline when it ends within what
        // the inode can hold; else it becomes a block file for good.
        let inline = inode.has_flag(EXT4_INLINE_DATA_FL);
        if inline || self.may_inline(ino) {
            let kept = self.without_page_padding(&inode, offset, data)?;
            let kept_len = kept.len() as u64;
            if self.inline_write_fits(&inode, offset, kept_len) {
                if !inline {
                    self.inline_create(&mut inode, offset.saturating_add(kept_len))?;
                }
                self.inline_write(&mut txn, &mut inode, offset, kept)?;
                self.touch_written(&mut txn, &mut inode, offset.saturating_add(kept_len), how);
                txn.put_inode(inode);
                txn.commit()?;
                return Ok(data.len());
            }
            if inline {
                self.inline_to_blocks(&mut txn, &mut inode, reserved_ok)?;
            }
            self.clear_may_inline(ino);
        }
        // Quota: the write stops where the owners' limits do.
        txn.limit_blocks_for(&inode)?;
        // Extent files take new blocks unwritten and write their data
        // between two transactions (see block_write.rs); block-mapped files
        // have no unwritten state and write it inside this one.
        let extents = inode.has_flag(EXT4_EXTENTS_FL);
        let (pieces, written) =
            match self.map_pieces(&mut txn, &mut inode, offset, data, extents, reserved_ok) {
                Err(Error::NoSpace) if txn.quota_hit => return Err(Error::QuotaExceeded),
                r => r?,
            };
        if !extents {
            self.write_pieces(&pieces, offset, data)?;
            self.touch_written(
                &mut txn,
                &mut inode,
                offset.saturating_add(written as u64),
                how,
            );
            txn.put_inode(inode);
            txn.commit()?;
            return Ok(written);
        }
        txn.put_inode(inode);
        txn.commit()?;
        {
            // No lock but the file's own: a commit that frees blocks
            // waits for this data to land, so none of these blocks can be
            // freed and handed to another file meanwhile.
            let _gate = self.rw.free_gate.read().unwrap_or_else(|e| e.into_inner());
            self.write_pieces(&pieces, offset, data)?;
        }
        let mut txn = self.begin()?;
        // Marking blocks written may split an extent: never refused for
        // space or quota once the data is on disk
        // (EXT4_GET_BLOCKS_METADATA_NOFAIL).
        txn.use_reserved_pool();
        txn.ignore_quota_limits();
        let mut inode = txn.inode(ino)?;
        if inode.links_count == 0 && !self.is_held_orphan(ino) {
            // Unlinked and freed meanwhile, which the FUSE layer never
            // lets happen to a file with writes in flight.
            return Err(Error::NotFound);
        }
        self.mark_written(&mut txn, &mut inode, &pieces)?;
        self.touch_written(
            &mut txn,
            &mut inode,
            offset.saturating_add(written as u64),
            how,
        );
        txn.put_inode(inode);
        txn.commit()?;
        Ok(written)
    }

    /// i_size grows to `end`; mtime = ctime = now, unless the kernel
    /// keeps them (a page-cache write-back).
    fn touch_written(&self, txn: &mut Txn<'_>, inode: &mut Inode, end: u64, how: WriteAs) {
        if end > inode.size {
            inode.size = end;
            if end > i32::MAX as u64 {
                txn.set_ro_compat(sbf::RO_COMPAT_LARGE_FILE);
            }
        }
        if !how.page_cache {
            let now = self.now();
            inode.mtime = now;
            inode.ctime = now;
        }
    }

    /// Zeroes file bytes [from, to) (inside one block) on disk if that
    /// block is mapped and written.
    fn zero_in_block(
        &self,
        txn: &mut Txn<'_>,
        inode: &mut Inode,
        from: u64,
        to: u64,
    ) -> Result<()> {
        let bs = u64::from(self.block_size());
        if from >= to {
            return Ok(());
        }
        let lblk = from.checked_div(bs).unwrap_or(0);
        let pblk = self.lookup_written(txn, inode, lblk)?;
        if let Some(p) = pblk {
            let zeros = vec![0u8; to.saturating_sub(from) as usize];
            self.write_data(p, from.checked_rem(bs).unwrap_or(0), &zeros)?;
        }
        Ok(())
    }

    /// Physical block of `lblk` if mapped and written (as this transaction
    /// sees the tree).
    pub(crate) fn lookup_written(
        &self,
        txn: &mut Txn<'_>,
        inode: &mut Inode,
        lblk: u64,
    ) -> Result<Option<u64>> {
        if inode.has_flag(EXT4_EXTENTS_FL) {
            if lblk >= ew::LBLK_LIMIT {
                return Ok(None);
            }
            let ctx = self.tree_ctx(inode);
            let mut store = TxnStore {
                txn,
                reserved_ok: false,
            };
            let path = ew::load_path(&mut store, &ctx, &inode.i_block, lblk)?;
            Ok(path.lookup(lblk).0.filter(|e| !e.uninit).map(|e| {
                e.pblk
                    .saturating_add(lblk.saturating_sub(u64::from(e.lblk)))
            }))
        } else {
            // Indirect maps change only inside this transaction's blocks:
            // walk them through the transaction.
            Ok(
                match self.map_indirect(inode, lblk, &mut |b| txn.block(b))? {
                    Mapping::Mapped { pblk, .. } => Some(pblk),
                    Mapping::Hole { .. } => None,
                },
            )
        }
    }

    /// Unmaps logical blocks [start, end) of a block-mapped file.
    fn remove_blocks(
        &self,
        txn: &mut Txn<'_>,
        inode: &mut Inode,
        start: u64,
        end: u64,
    ) -> Result<u64> {
        if inode.has_flag(EXT4_EXTENTS_FL) {
            // Freeing may need a split block: the kernel's reserved pool.
            txn.use_reserved_pool();
            self.edit_extent_tree(txn, inode, true, |store, ctx, root| {
                ew::remove_range(store, ctx, root, start, end)
            })
        } else {
            self.indirect_writable(inode)?;
            let mut c = IndCtx {
                ino: inode.ino,
                default_goal: 0,
                i_block: &mut inode.i_block,
                blocks: &mut inode.blocks,
                reserved_ok: true,
            };
            self.ind_remove_range(txn, &mut c, start, end)
        }
    }

    /// Whether the inode's i_block holds block pointers or an extent tree
    /// (not a fast symlink, device, or inline data).
    fn has_block_map(&self, inode: &Inode) -> bool {
        if inode.has_flag(EXT4_INLINE_DATA_FL) {
            return false;
        }
        match inode.kind {
            FileKind::RegularFile | FileKind::Directory => true,
            FileKind::Symlink => {
                // ext4_inode_is_fast_symlink: no blocks besides an xattr
                // block (charged as a whole cluster).
                let ea = if inode.file_acl != 0 {
                    self.cluster_sectors()
                } else {
                    0
                };
                inode.has_flag(EXT4_EXTENTS_FL) || inode.blocks > ea
            }
            _ => false,
        }
    }

    /// Sets the size of `inode` (setattr): shrinking frees every block
    /// past the new end (preallocated ones too) and zeroes the rest of the
    /// last partial block on disk; growing only sets the size (a hole).
    pub(crate) fn truncate_in(
        &self,
        txn: &mut Txn<'_>,
        inode: &mut Inode,
        new_size: u64,
    ) -> Result<()> {
        if new_size > self.max_file_size(inode) {
            return Err(Error::FileTooBig);
        }
        if inode.has_flag(EXT4_INLINE_DATA_FL) {
            return self.inline_truncate(txn, inode, new_size);
        }
        if !self.has_block_map(inode) {
            inode.size = new_size;
            return Ok(());
        }
        let bs = u64::from(self.block_size());
        if new_size <= inode.size {
            let keep = new_size.div_ceil(bs);
            self.remove_blocks(txn, inode, keep, u64::MAX)?;
            if !new_size.is_multiple_of(bs) {
                self.zero_in_block(txn, inode, new_size, keep.saturating_mul(bs))?;
            }
        }
        inode.size = new_size;
        if new_size > i32::MAX as u64 {
            txn.set_ro_compat(sbf::RO_COMPAT_LARGE_FILE);
        }
        Ok(())
    }

    /// Frees every block of the file (data, extent tree, indirect blocks),
    /// for unlink/release. The xattr block is not touched (xattr_release).
    pub(crate) fn free_file_blocks(&self, txn: &mut Txn<'_>, inode: &mut Inode) -> Result<()> {
        if !self.has_block_map(inode) {
            return Ok(());
        }
        self.remove_blocks(txn, inode, 0, u64::MAX)?;
        Ok(())
    }

    /// fallocate(2) with the kernel's checks and errors: default and
    /// KEEP_SIZE allocate unwritten extents; PUNCH_HOLE (with KEEP_SIZE)
    /// frees whole blocks and zeroes partial ones; ZERO_RANGE turns the
    /// range into unwritten extents and zeroes partial blocks. Only
    /// PUNCH_HOLE works on indirect-mapped files (EOPNOTSUPP otherwise).
    pub fn fallocate(&self, ino: Ino, offset: u64, len: u64, mode: FallocMode) -> Result<()> {
        self.fallocate_as(ino, offset, len, mode, false)
    }

    pub fn fallocate_as(
        &self,
        ino: Ino,
        offset: u64,
        len: u64,
        mode: FallocMode,
        reserved_ok: bool,
    ) -> Result<()> {
        // vfs_fallocate's checks.
        if len == 0 || i64::try_from(offset).is_err() || i64::try_from(len).is_err() {
            return Err(Error::Invalid("fallocate offset or length"));
        }
        if mode.punch_hole && mode.zero_range {
            return Err(Error::Unsupported("punch hole with zero range".into()));
        }
        if mode.punch_hole && !mode.keep_size {
            return Err(Error::Unsupported("punch hole without keep size".into()));
        }
        let _content = self.rw.content_locks.lock(ino);
        let mut txn = self.begin()?;
        let mut inode = txn.inode(ino)?;
        match inode.kind {
            FileKind::RegularFile => {}
            FileKind::Directory => return Err(Error::IsDir),
            _ => return Err(Error::Unsupported("fallocate on a special file".into())),
        }
        // vfs_fallocate: nothing on an immutable file; on an append-only
        // one only allocation (punching or zeroing would change data).
        inode_flags::ensure_content_mutable(&inode)?;
        if inode_flags::is_append_only(&inode) && (mode.punch_hole || mode.zero_range) {
            return Err(Error::NotPermitted);
        }
        let end = offset
            .checked_add(len)
            .filter(|&e| i64::try_from(e).is_ok())
            .ok_or(Error::FileTooBig)?;
        if end > self.max_file_size(&inode) {
            return Err(Error::FileTooBig);
        }
        // ext4_fallocate converts inline data first, and a file that may
        // still take some never will.
        txn.limit_blocks_for(&inode)?;
        if inode.has_flag(EXT4_INLINE_DATA_FL) {
            self.inline_to_blocks(&mut txn, &mut inode, reserved_ok)?;
        }
        self.clear_may_inline(ino);
        let extents = inode.has_flag(EXT4_EXTENTS_FL);
        let bs = u64::from(self.block_size());
        let now = self.now();
        if mode.punch_hole {
            // ext4_punch_hole: indirect files keep the last block of their
            // range; a hole reaching past i_size ends at the end of the
            // page holding i_size (even when that is past the asked end).
            let max_end = if extents {
                self.max_file_size(&inode)
            } else {
                self.max_file_size(&inode).saturating_sub(bs)
            };
            if offset >= inode.size || offset >= max_end {
                // Nothing to free, yet ext4_punch_hole (6.18) stamps the
                // times all the same.
                inode.mtime = now;
                inode.ctime = now;
                txn.put_inode(inode);
                return txn.commit();
            }
            let mut end = end;
            if end > inode.size {
                end = inode.size.div_ceil(PAGE_SIZE).saturating_mul(PAGE_SIZE);
            }
            let end = end.min(max_end);
            let first_full = offset.div_ceil(bs);
            let last_full = end.checked_div(bs).unwrap_or(0);
            if first_full > last_full {
                // Inside one block.
                self.zero_in_block(&mut txn, &mut inode, offset, end)?;
            } else {
                self.zero_in_block(&mut txn, &mut inode, offset, first_full.saturating_mul(bs))?;
                self.zero_in_block(&mut txn, &mut inode, last_full.saturating_mul(bs), end)?;
                if first_full < last_full {
                    self.remove_blocks(&mut txn, &mut inode, first_full, last_full)?;
                }
            }
            inode.mtime = now;
            inode.ctime = now;
            txn.put_inode(inode);
            return txn.commit();
        }
        if !extents {
            return Err(Error::Unsupported(
                "fallocate on an indirect-mapped file".into(),
            ));
        }
        let first = offset.checked_div(bs).unwrap_or(0);
        let last = end.div_ceil(bs);
        let (runs, short) = self.map_alloc_runs(
            &mut txn,
            &mut inode,
            first,
            last.saturating_sub(first),
            true,
            reserved_ok,
        )?;
        let mapped_end = runs
            .iter()
            .fold(first, |acc, r| acc.saturating_add(u64::from(r.len)));
        if mode.zero_range && !short {
            // Interior whole blocks become unwritten; partial edges are
            // zeroed on disk where written.
            let s = offset.div_ceil(bs);
            let e = end.checked_div(bs).unwrap_or(0);
            if s < e {
                self.edit_extent_tree(&mut txn, &mut inode, reserved_ok, |store, ctx, root| {
                    ew::set_state(store, ctx, root, s, e, true)
                })?;
            }
            if s > e {
                self.zero_in_block(&mut txn, &mut inode, offset, end)?;
            } else {
                self.zero_in_block(&mut txn, &mut inode, offset, s.saturating_mul(bs))?;
                self.zero_in_block(&mut txn, &mut inode, e.saturating_mul(bs), end)?;
            }
        }
        // ext4_do_fallocate stamps both, whatever it allocated.
        inode.mtime = now;
        inode.ctime = now;
        if !mode.keep_size {
            let new_end = end.min(mapped_end.saturating_mul(bs)).max(inode.size);
            if new_end > inode.size {
                inode.size = new_end;
                if new_end > i32::MAX as u64 {
                    txn.set_ro_compat(sbf::RO_COMPAT_LARGE_FILE);
                }
            }
        }
        let quota_hit = txn.quota_hit;
        txn.put_inode(inode);
        txn.commit()?;
        if short {
            return Err(if quota_hit {
                Error::QuotaExceeded
            } else {
                Error::NoSpace
            });
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::path::{Path, PathBuf};
    use std::process::Command;
    use std::sync::Arc;

    use super::*;
    use crate::ext4::OpenOptions;
    use crate::ext4::testutil::*;

    pub(crate) fn open_rw(img: &Path) -> Ext4 {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(img)
            .unwrap();
        let dev = crate::io::FdDevice::new(f.into()).unwrap();
        Ext4::open(
            Arc::new(dev),
            OpenOptions {
                read_only: false,
                ..Default::default()
            },
        )
        .unwrap()
    }

    /// What the kernel (loop, ro, noload) shows: per file its SEEK_DATA/
    /// SEEK_HOLE transitions (taken before any read: reading unwritten
    /// ranges puts uptodate pages in the cache, which iomap then reports
    /// as data) and its whole content when at most 64 MiB; plus the bytes
    /// of each probe (file index, offset, length). None if this process
    /// cannot mount.
    #[expect(clippy::type_complexity, reason = "test helper")]
    pub(crate) fn kernel_view(
        img: &Path,
        names: &[&str],
        probes: &[(usize, u64, usize)],
    ) -> Option<(Vec<(Option<Vec<u8>>, Vec<u64>)>, Vec<Vec<u8>>)> {
        use std::os::unix::fs::FileExt;
        let mnt = img.with_extension("mnt");
        let _ = std::fs::create_dir_all(&mnt);
        if !kernel_mount(img, &mnt, &["-t", "ext4", "-o", "loop,ro,noload"]) {
            return None;
        }
        let seeks: Vec<Vec<u64>> = names
            .iter()
            .map(|n| {
                let f = std::fs::File::open(mnt.join(n)).unwrap();
                let mut seeks = Vec::new();
                let mut off = 0i64;
                for i in 0..100_000 {
                    let whence = if i % 2 == 0 {
                        nix::unistd::Whence::SeekData
                    } else {
                        nix::unistd::Whence::SeekHole
                    };
                    let Ok(r) = nix::unistd::lseek(&f, off, whence) else {
                        break;
                    };
                    seeks.push(r as u64);
                    off = r;
                }
                seeks
            })
            .collect();
        let files = names
            .iter()
            .zip(seeks)
            .map(|(n, sk)| {
                let p = mnt.join(n);
                let small = std::fs::metadata(&p).unwrap().len() <= 64 << 20;
                (small.then(|| std::fs::read(&p).unwrap()), sk)
            })
            .collect();
        let probed = probes
            .iter()
            .map(|&(i, off, len)| {
                let f = std::fs::File::open(mnt.join(names[i])).unwrap();
                let mut b = vec![0u8; len];
                f.read_exact_at(&mut b, off).unwrap();
                b
            })
            .collect();
        crate::ext4::testutil::unmount(&mnt);
        Some((files, probed))
    }

    fn engine_seeks(fs: &Ext4, ino: Ino) -> Vec<u64> {
        let mut out = Vec::new();
        let mut off = 0u64;
        for i in 0..100_000 {
            let w = if i % 2 == 0 {
                crate::ext4::Whence::Data
            } else {
                crate::ext4::Whence::Hole
            };
            match fs.seek(ino, off, w) {
                Ok(r) => {
                    out.push(r);
                    off = r;
                }
                Err(_) => break,
            }
        }
        out
    }

    /// A file model: what the file must read as (`far`: one extra piece
    /// at a large offset, kept apart so sparse files stay small in memory).
    struct Model(Vec<u8>, Option<(u64, Vec<u8>)>);
    impl Model {
        fn size(&self) -> u64 {
            match &self.1 {
                Some((o, d)) => o + d.len() as u64,
                None => self.0.len() as u64,
            }
        }
        fn get(&self, off: u64, len: usize) -> Vec<u8> {
            (off..off + len as u64)
                .map(|p| match &self.1 {
                    Some((o, d)) if p >= *o => d[(p - o) as usize],
                    _ => self.0.get(p as usize).copied().unwrap_or(0),
                })
                .collect()
        }
        fn write(&mut self, off: u64, d: &[u8]) {
            let end = off as usize + d.len();
            if self.0.len() < end {
                self.0.resize(end, 0);
            }
            self.0[off as usize..end].copy_from_slice(d);
        }
        fn truncate(&mut self, n: u64) {
            self.0.resize(n as usize, 0);
        }
        fn zero(&mut self, off: u64, len: u64) {
            let s = (off as usize).min(self.0.len());
            let e = ((off + len) as usize).min(self.0.len());
            self.0[s..e].fill(0);
        }
    }

    fn truncate(fs: &Ext4, ino: Ino, size: u64) {
        let mut txn = fs.begin().unwrap();
        let mut inode = txn.inode(ino).unwrap();
        fs.truncate_in(&mut txn, &mut inode, size).unwrap();
        txn.put_inode(inode);
        txn.commit().unwrap();
    }

    fn read_all(fs: &Ext4, ino: Ino) -> Vec<u8> {
        let size = fs.getattr(ino).unwrap().size as usize;
        let mut buf = vec![0u8; size];
        let mut done = 0;
        while done < size {
            let n = fs.read(ino, done as u64, &mut buf[done..]).unwrap();
            assert!(n > 0);
            done += n;
        }
        buf
    }

    fn src_tree(sc: &Scratch) -> PathBuf {
        let src = sc.path().join("src");
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("seq"), b"").unwrap();
        std::fs::write(src.join("rnd"), pattern(70_000, 3)).unwrap();
        std::fs::write(src.join("frag"), b"").unwrap();
        std::fs::write(src.join("sparse"), b"x").unwrap();
        std::fs::write(src.join("falloc"), b"").unwrap();
        std::fs::write(src.join("small"), b"tiny file").unwrap();
        src
    }

    /// Writes, truncates, fallocates and punches through the engine on
    /// every mkfs variant; then e2fsck -fn is clean and the engine
    /// (reopened) and the kernel read exactly the model's bytes.
    #[test]
    fn content_ops_across_features() {
        if !have_mkfs() {
            return;
        }
        let variants: &[&[&str]] = &[
            &["-b", "4096"],
            &["-b", "4096", "-O", "^metadata_csum"],
            &["-b", "1024"],
            &["-t", "ext2", "-b", "4096"],
            &["-t", "ext3", "-b", "1024"],
            &["-b", "4096", "-O", "inline_data"],
            &["-b", "4096", "-O", "bigalloc", "-C", "16384"],
            &["-b", "1024", "-O", "bigalloc", "-C", "4096"],
        ];
        for args in variants {
            eprintln!("variant {args:?}");
            let t0 = std::time::Instant::now();
            let sc = Scratch::new("fwrite");
            let src = src_tree(&sc);
            let img = mkfs(&sc, &src, args, 64 * 1024);
            let names = ["seq", "rnd", "frag", "sparse", "falloc", "small"];
            let inos: Vec<Ino> = names.iter().map(|n| ino_of(&img, n)).collect();
            let mut models: Vec<Model> = vec![
                Model(vec![], None),
                Model(pattern(70_000, 3), None),
                Model(vec![], None),
                Model(b"x".to_vec(), None),
                Model(vec![], None),
                Model(b"tiny file".to_vec(), None),
            ];
            let ext2 = args.contains(&"ext2") || args.contains(&"ext3");
            let fs = open_rw(&img);
            let bs = u64::from(fs.block_size());
            // Sequential 20 MiB in 1 MiB chunks.
            let seq = pattern(20 << 20, 7);
            for (i, c) in seq.chunks(1 << 20).enumerate() {
                assert_eq!(fs.write(inos[0], (i << 20) as u64, c).unwrap(), c.len());
            }
            models[0].write(0, &seq);
            // Random overwrites and extensions.
            let mut x = 99u64;
            let mut rnd = |m: u64| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x % m
            };
            for i in 0..200 {
                let off = rnd(300_000);
                let len = 1 + rnd(if i % 10 == 0 { 70_000 } else { 5000 }) as usize;
                let d = pattern(len, i);
                assert_eq!(fs.write(inos[1], off, &d).unwrap(), len);
                models[1].write(off, &d);
            }
            truncate(&fs, inos[1], 123_457);
            models[1].truncate(123_457);
            truncate(&fs, inos[1], 200_000);
            models[1].truncate(200_000);
            // Every other block of a large range: many extents, depth 2
            // on 1 KiB blocks.
            for i in 0..1500u64 {
                let d = pattern(bs as usize, 1000 + i);
                fs.write(inos[2], 2 * i * bs, &d).unwrap();
                models[2].write(2 * i * bs, &d);
            }
            // Punch inside, then write into the middle of holes.
            fs.fallocate(
                inos[2],
                100 * bs + 17,
                300 * bs,
                FallocMode {
                    keep_size: true,
                    punch_hole: true,
                    zero_range: false,
                },
            )
            .unwrap();
            models[2].zero(100 * bs + 17, 300 * bs);
            let d = pattern(3 * bs as usize + 5, 5);
            fs.write(inos[2], 1001 * bs - 3, &d).unwrap();
            models[2].write(1001 * bs - 3, &d);
            // Sparse: far offset (6 GiB with extents; indirect files reach
            // that too with 4 KiB blocks).
            let far = if bs == 1024 && ext2 {
                3u64 << 30
            } else {
                6u64 << 30
            };
            fs.write(inos[3], far, b"far away").unwrap();
            models[3].1 = Some((far, b"far away".to_vec()));
            fs.write(inos[3], 40960, b"near").unwrap();
            models[3].write(40960, b"near");
            // fallocate modes.
            let fa = inos[4];
            let r = fs.fallocate(fa, 0, 1 << 20, FallocMode::default());
            if ext2 {
                assert!(matches!(r, Err(Error::Unsupported(_))), "{r:?}");
                fs.write(fa, 0, &pattern(1 << 20, 9)).unwrap();
                models[4].write(0, &pattern(1 << 20, 9));
            } else {
                r.unwrap();
                models[4].truncate(1 << 20);
                assert_eq!(fs.getattr(fa).unwrap().size, 1 << 20);
                fs.write(fa, 5000, &pattern(10_000, 9)).unwrap();
                models[4].write(5000, &pattern(10_000, 9));
                let keep = FallocMode {
                    keep_size: true,
                    ..Default::default()
                };
                fs.fallocate(fa, 1 << 20, 1 << 20, keep).unwrap();
                assert_eq!(fs.getattr(fa).unwrap().size, 1 << 20);
                let zr = FallocMode {
                    zero_range: true,
                    ..Default::default()
                };
                fs.write(fa, 200_000, &pattern(100_000, 11)).unwrap();
                models[4].write(200_000, &pattern(100_000, 11));
                fs.fallocate(fa, 210_001, 50_000, zr).unwrap();
                models[4].zero(210_001, 50_000);
                fs.fallocate(fa, (1 << 20) - 100, 5000, zr).unwrap();
                models[4].truncate((1 << 20) - 100 + 5000);
            }
            let e = fs.fallocate(
                fa,
                0,
                10,
                FallocMode {
                    punch_hole: true,
                    ..Default::default()
                },
            );
            assert!(matches!(e, Err(Error::Unsupported(_))));
            // The small file: within the inode when inline, then past it.
            fs.write(inos[5], 4, b" bigger file, still inline? maybe")
                .unwrap();
            models[5].write(4, b" bigger file, still inline? maybe");
            fs.write(inos[5], 150, &pattern(300, 1)).unwrap();
            models[5].write(150, &pattern(300, 1));
            for (k, &ino) in inos.iter().enumerate() {
                assert_eq!(fs.getattr(ino).unwrap().size, models[k].size());
                if models[k].1.is_none() {
                    assert!(read_all(&fs, ino) == models[k].0, "{args:?} {}", names[k]);
                }
            }
            eprintln!("  ops done in {:?}", t0.elapsed());
            fs.shutdown().unwrap();
            drop(fs);
            fsck_clean(&img);
            eprintln!("  fsck done in {:?}", t0.elapsed());
            let fs = open_image(&img).unwrap();
            for (k, &ino) in inos.iter().enumerate().filter(|(k, _)| *k != 3) {
                assert!(
                    read_all(&fs, ino) == models[k].0,
                    "{args:?} {} after reopen",
                    names[k]
                );
            }
            if !ext2 && bs == 1024 {
                let i = fs.inode(inos[2]).unwrap();
                assert_eq!(crate::ext4::ondisk::extent::header_depth(&i.i_block), 2);
            }
            let probes = [
                (3usize, 0u64, 1usize),
                (3, 40960, 4),
                (3, far - 4096, 4096 + 8),
                (3, 1 << 30, 100),
            ];
            if let Some((k, probed)) = kernel_view(&img, &names, &probes) {
                for (i, (data, seeks)) in k.iter().enumerate() {
                    if let Some(d) = data {
                        assert!(*d == models[i].0, "{args:?} kernel read {}", names[i]);
                    }
                    assert_eq!(
                        *seeks,
                        engine_seeks(&fs, inos[i]),
                        "{args:?} seeks in {}",
                        names[i]
                    );
                }
                for (&(i, off, len), kb) in probes.iter().zip(&probed) {
                    let mut eb = vec![0u8; len];
                    assert_eq!(fs.read(inos[i], off, &mut eb).unwrap(), len);
                    assert_eq!(*kb, eb, "{args:?} probe {off}");
                    assert_eq!(eb, models[i].get(off, len), "{args:?} probe {off}");
                }
            }
            eprintln!("  checked in {:?}", t0.elapsed());
        }
    }

    #[test]
    fn max_sizes_match_the_kernel() {
        // 4 KiB, huge_file: 16 TiB - 4 KiB for extents.
        assert_eq!(max_extent_size(12, true), ((1u64 << 32) - 1) << 12);
        // 1 KiB without huge_file: limited by 32-bit i_blocks.
        assert_eq!(max_extent_size(10, false), ((1u64 << 32) - 1) >> 1 << 10);
        // Indirect, 4 KiB: i_blocks (2^32 sectors) bounds it below the
        // 4 TiB the tree addresses.
        let m = max_bitmap_size(12, false);
        assert!(m < 2u64 << 40 && m > (2u64 << 40) - (8u64 << 30), "{m}");
        // 1 KiB: the tree (16 GiB + a bit) is the bound.
        assert_eq!(
            max_bitmap_size(10, true),
            (12 + 256 + 256 * 256 + 256 * 256 * 256) << 10
        );
    }

    /// Throughput of sequential 1 MiB writes and random 4 KiB overwrites
    /// through the engine API; prints MiB/s and ops/s (run it as
    /// bench/README.md says: `cargo test --release -p safemount-worker
    /// --lib ext4::file::write::tests::bench -- --ignored --nocapture`).
    /// Its correctness part (e2fsck clean) is covered by the write tests.
    #[test]
    #[ignore = "benchmark: writes 256 MiB into a 1 GiB image; prints MiB/s, checks nothing new"]
    fn bench_sequential_write() {
        if !have_mkfs() {
            return;
        }
        let sc = Scratch::new("fwbench");
        let src = sc.path().join("src");
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("f"), b"").unwrap();
        let img = mkfs(&sc, &src, &["-b", "4096"], 1024 * 1024);
        let ino = ino_of(&img, "f");
        let fs = open_rw(&img);
        let chunk = pattern(1 << 20, 1);
        let total = 256u64 << 20;
        let t = std::time::Instant::now();
        let mut off = 0u64;
        while off < total {
            fs.write(ino, off, &chunk).unwrap();
            off += chunk.len() as u64;
        }
        fs.shutdown().unwrap();
        let secs = t.elapsed().as_secs_f64();
        eprintln!(
            "sequential write: {} MiB in {secs:.2} s = {:.0} MiB/s",
            total >> 20,
            (total >> 20) as f64 / secs
        );
        // Random 4 KiB overwrites.
        let fs = open_rw(&img);
        let t = std::time::Instant::now();
        let mut x = 7u64;
        for _ in 0..10_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let off = (x % (total / 4096)) * 4096;
            fs.write(ino, off, &chunk[..4096]).unwrap();
        }
        fs.shutdown().unwrap();
        eprintln!(
            "random 4 KiB overwrites: {:.0} ops/s",
            10_000.0 / t.elapsed().as_secs_f64()
        );
        drop(fs);
        fsck_clean(&img);
    }

    /// Filling the filesystem: short writes then NoSpace, never a broken
    /// tree; freeing everything gives every block back.
    #[test]
    fn enospc_and_free() {
        if !have_mkfs() {
            return;
        }
        for args in [&["-b", "1024"][..], &["-t", "ext2", "-b", "1024"][..]] {
            let sc = Scratch::new("fwfull");
            let src = src_tree(&sc);
            let img = mkfs(&sc, &src, args, 8 * 1024);
            let ino = ino_of(&img, "seq");
            let frag = ino_of(&img, "frag");
            let fs = open_rw(&img);
            let free0 = fs.statfs().unwrap().bfree;
            let mut model = Model(vec![], None);
            // A fragmented neighbour first, so the big file's tree splits.
            for i in 0..400u64 {
                fs.write(frag, 2048 * i, &[1u8; 1024]).unwrap();
            }
            let chunk = pattern(300_000, 4);
            let mut off = 0u64;
            let mut saw_short = false;
            loop {
                match fs.write(ino, off, &chunk) {
                    Ok(n) => {
                        model.write(off, &chunk[..n]);
                        off += n as u64;
                        if n < chunk.len() {
                            saw_short = true;
                        }
                    }
                    Err(Error::NoSpace) => break,
                    Err(e) => panic!("{e}"),
                }
            }
            eprintln!("{args:?}: filled {off} bytes, short write seen: {saw_short}");
            assert!(saw_short || off.is_multiple_of(chunk.len() as u64));
            assert_eq!(fs.getattr(ino).unwrap().size, off);
            assert!(read_all(&fs, ino) == model.0);
            // Freeing the neighbour gives room again.
            let mut txn = fs.begin().unwrap();
            let mut inode = txn.inode(frag).unwrap();
            fs.free_file_blocks(&mut txn, &mut inode).unwrap();
            inode.size = 0;
            assert_eq!(inode.blocks, 0);
            txn.put_inode(inode);
            txn.commit().unwrap();
            assert_eq!(fs.write(ino, off, &chunk[..1000]).unwrap(), 1000);
            model.write(off, &chunk[..1000]);
            fs.shutdown().unwrap();
            drop(fs);
            fsck_clean(&img);
            if let Some((k, _)) = kernel_view(&img, &["seq"], &[]) {
                assert!(k[0].0.as_deref() == Some(&model.0[..]), "{args:?}");
            }
            let fs = open_rw(&img);
            truncate(&fs, ino, 0);
            assert_eq!(fs.getattr(ino).unwrap().blocks, 0);
            assert_eq!(fs.statfs().unwrap().bfree, free0);
            fs.shutdown().unwrap();
            drop(fs);
            fsck_clean(&img);
        }
    }

    /// Inline files: grow and shrink inside the inode, then outgrow it.
    #[test]
    fn inline_grow_shrink_convert() {
        if !have_mkfs() {
            return;
        }
        let sc = Scratch::new("fwinline");
        let src = src_tree(&sc);
        std::fs::write(src.join("other"), b"0123456789").unwrap();
        let img = mkfs(&sc, &src, &["-b", "4096", "-O", "inline_data"], 16 * 1024);
        let ino = ino_of(&img, "small");
        let other = ino_of(&img, "other");
        let fs = open_rw(&img);
        let inline = |fs: &Ext4, i: Ino| {
            fs.inode(i)
                .unwrap()
                .has_flag(crate::ext4::ondisk::inode::EXT4_INLINE_DATA_FL)
        };
        assert!(inline(&fs, ino));
        let mut m = Model(b"tiny file".to_vec(), None);
        let d = pattern(100, 8);
        fs.write(ino, 3, &d).unwrap();
        m.write(3, &d);
        assert!(inline(&fs, ino), "103 bytes fit in a 256-byte inode");
        truncate(&fs, ino, 30);
        m.truncate(30);
        // Cut to 30, the region keeps i_block only: growing to 60 stays
        // inline, as in the kernel (past 60 it would convert).
        truncate(&fs, ino, 60);
        m.truncate(60);
        assert!(inline(&fs, ino));
        assert!(read_all(&fs, ino) == m.0);
        // Outgrow by truncate on the other file, by write on this one.
        truncate(&fs, other, 5000);
        assert!(!inline(&fs, other));
        let d = pattern(6000, 9);
        fs.write(ino, 50, &d).unwrap();
        m.write(50, &d);
        assert!(!inline(&fs, ino));
        assert!(read_all(&fs, ino) == m.0);
        let mut o = b"0123456789".to_vec();
        o.resize(5000, 0);
        assert!(read_all(&fs, other) == o);
        fs.shutdown().unwrap();
        drop(fs);
        fsck_clean(&img);
        if let Some((k, _)) = kernel_view(&img, &["small", "other"], &[]) {
            assert!(k[0].0.as_deref() == Some(&m.0[..]));
            assert!(k[1].0.as_deref() == Some(&o[..]));
        }
    }

    /// A deep tree shrunk to one block keeps its depth (like the kernel);
    /// e2fsck accepts it. Then the file grows again through the old tree.
    #[test]
    fn deep_tree_shrinks_and_regrows() {
        if !have_mkfs() {
            return;
        }
        let sc = Scratch::new("fwdeep");
        let src = src_tree(&sc);
        let img = mkfs(&sc, &src, &["-b", "1024"], 16 * 1024);
        let ino = ino_of(&img, "frag");
        let fs = open_rw(&img);
        let mut m = Model(vec![], None);
        for i in 0..1200u64 {
            let d = pattern(1024, i);
            fs.write(ino, 2048 * i, &d).unwrap();
            m.write(2048 * i, &d);
        }
        assert_eq!(
            crate::ext4::ondisk::extent::header_depth(&fs.inode(ino).unwrap().i_block),
            2
        );
        truncate(&fs, ino, 1500);
        m.truncate(1500);
        let d = pattern(50_000, 77);
        fs.write(ino, 100_000, &d).unwrap();
        m.write(100_000, &d);
        assert!(read_all(&fs, ino) == m.0);
        fs.shutdown().unwrap();
        drop(fs);
        let out = Command::new("e2fsck")
            .arg("-fn")
            .arg(&img)
            .output()
            .unwrap();
        eprintln!("{}", String::from_utf8_lossy(&out.stdout));
        fsck_clean(&img);
        if let Some((k, _)) = kernel_view(&img, &["frag"], &[]) {
            assert!(k[0].0.as_deref() == Some(&m.0[..]));
        }
    }

    /// A damaged extent block or indirect pointer: writes, truncates and
    /// fallocate fail with Corrupt (no panic, nothing half-done).
    #[test]
    fn corrupt_maps_fail_cleanly() {
        if !have_mkfs() {
            return;
        }
        let sc = Scratch::new("fwbad");
        let src = src_tree(&sc);
        {
            use std::os::unix::fs::FileExt;
            let f = std::fs::File::create(src.join("frag")).unwrap();
            for i in 0..200u64 {
                f.write_all_at(&[1u8; 1024], i * 2048).unwrap();
            }
        }
        for (args, ext2) in [
            (&["-b", "1024"][..], false),
            (&["-t", "ext2", "-b", "1024"][..], true),
        ] {
            let img = mkfs(&sc, &src, args, 8 * 1024);
            let ino = ino_of(&img, "frag");
            let fs = open_image(&img).unwrap();
            let inode = fs.inode(ino).unwrap();
            // Extent files: the leaf block the root points at; indirect:
            // the single-indirect block.
            let victim = if ext2 {
                u64::from(crate::ext4::util::le32(&inode.i_block, 12 * 4))
            } else {
                u64::from(crate::ext4::util::le32(&inode.i_block, 16))
            };
            drop(fs);
            let mut data = std::fs::read(&img).unwrap();
            let at = (victim * 1024) as usize;
            if ext2 {
                data[at + 8..at + 12].copy_from_slice(&0x7fff_fff0u32.to_le_bytes());
            } else {
                data[at + 20] ^= 0x40;
            }
            std::fs::write(&img, &data).unwrap();
            let fs = open_rw(&img);
            let e = fs.write(ino, 14 * 1024, b"hello");
            assert!(matches!(e, Err(Error::Corrupt { .. })), "{args:?} {e:?}");
            if !ext2 {
                let e = fs.fallocate(ino, 0, 1 << 20, FallocMode::default());
                assert!(
                    matches!(e, Err(Error::Corrupt { .. }) | Err(Error::ReadOnly)),
                    "{e:?}"
                );
            }
            drop(fs);
        }
    }

    /// Differential: one seeded sequence of writes, truncates and
    /// fallocates applied through the engine and through the kernel (a loop
    /// mount of a copy of the same image); every result (errno included)
    /// and the final contents must agree, both images e2fsck-clean.
    /// Needs root; skipped otherwise.
    #[test]
    fn differential_against_kernel() {
        use nix::fcntl::FallocateFlags as F;
        use std::os::unix::fs::FileExt;
        if !have_mkfs() {
            return;
        }
        for args in [
            &["-b", "4096"][..],
            &["-b", "1024", "-O", "^metadata_csum"][..],
            &["-t", "ext3", "-b", "1024"][..],
        ] {
            let sc = Scratch::new("fwdiff");
            let src = src_tree(&sc);
            let img = mkfs(&sc, &src, args, 32 * 1024);
            let kimg = sc.path().join("kernel.img");
            std::fs::copy(&img, &kimg).unwrap();
            let kmnt = sc.path().join("kmnt");
            std::fs::create_dir_all(&kmnt).unwrap();
            if !kernel_mount(&kimg, &kmnt, &["-t", "ext4", "-o", "loop"]) {
                return;
            }
            let names = ["seq", "rnd", "frag", "falloc"];
            let inos: Vec<Ino> = names.iter().map(|n| ino_of(&img, n)).collect();
            let kf: Vec<std::fs::File> = names
                .iter()
                .map(|n| {
                    std::fs::OpenOptions::new()
                        .read(true)
                        .write(true)
                        .open(kmnt.join(n))
                        .unwrap()
                })
                .collect();
            let fs = open_rw(&img);
            let bs = u64::from(fs.block_size());
            let mut x = 0x5eed_u64 ^ bs;
            let mut rnd = |m: u64| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x % m.max(1)
            };
            let mut log = Vec::new();
            let mut oks = 0u32;
            for step in 0..1500u64 {
                let f = rnd(names.len() as u64) as usize;
                let off = match rnd(4) {
                    0 => rnd(64) * bs,
                    1 => rnd(2_000_000),
                    2 => rnd(64) * bs + rnd(bs),
                    _ => rnd(8 << 20),
                };
                let len = 1 + match rnd(3) {
                    0 => rnd(bs * 3),
                    1 => rnd(300_000),
                    _ => rnd(16) * bs,
                };
                let op = rnd(10);
                let (ours, theirs): (Result<()>, std::io::Result<()>) = match op {
                    0..=4 => {
                        let d = pattern(len as usize, step);
                        (
                            fs.write(inos[f], off, &d).map(|n| assert_eq!(n, d.len())),
                            kf[f].write_all_at(&d, off),
                        )
                    }
                    5 | 6 => {
                        let size = rnd(3_000_000);
                        let mut txn = fs.begin().unwrap();
                        let mut inode = txn.inode(inos[f]).unwrap();
                        let r = fs.truncate_in(&mut txn, &mut inode, size);
                        txn.put_inode(inode);
                        txn.commit().unwrap();
                        (r, kf[f].set_len(size))
                    }
                    _ => {
                        let (m, fl) = match rnd(4) {
                            0 => (FallocMode::default(), F::empty()),
                            1 => (
                                FallocMode {
                                    keep_size: true,
                                    ..Default::default()
                                },
                                F::FALLOC_FL_KEEP_SIZE,
                            ),
                            2 => (
                                FallocMode {
                                    keep_size: true,
                                    punch_hole: true,
                                    ..Default::default()
                                },
                                F::FALLOC_FL_KEEP_SIZE | F::FALLOC_FL_PUNCH_HOLE,
                            ),
                            _ => (
                                FallocMode {
                                    zero_range: true,
                                    ..Default::default()
                                },
                                F::FALLOC_FL_ZERO_RANGE,
                            ),
                        };
                        (
                            fs.fallocate(inos[f], off, len, m),
                            nix::fcntl::fallocate(&kf[f], fl, off as i64, len as i64)
                                .map_err(std::io::Error::from),
                        )
                    }
                };
                log.push(format!(
                    "{step}: op {op} file {} off {off} len {len}",
                    names[f]
                ));
                let o = ours.as_ref().err().map(|e| crate::fuse::errno(e).code());
                let t = theirs.as_ref().err().and_then(|e| e.raw_os_error());
                assert_eq!(o, t, "{args:?} {}: {ours:?} vs {theirs:?}", log.join("\n"));
                oks += u32::from(o.is_none());
                let ksize = kf[f].metadata().unwrap().len();
                assert_eq!(
                    fs.getattr(inos[f]).unwrap().size,
                    ksize,
                    "{args:?} {}",
                    log.join("\n")
                );
            }
            drop(kf);
            crate::ext4::testutil::unmount(&kmnt);
            fs.shutdown().unwrap();
            drop(fs);
            fsck_clean(&img);
            fsck_clean(&kimg);
            let ours = open_image(&img).unwrap();
            let theirs = open_image(&kimg).unwrap();
            let (mut same_seeks, mut diff_seeks) = (0, 0);
            for (i, n) in names.iter().enumerate() {
                let ki = ino_of(&kimg, n);
                assert!(
                    read_all(&ours, inos[i]) == read_all(&theirs, ki),
                    "{args:?} {n}"
                );
                if engine_seeks(&ours, inos[i]) == engine_seeks(&theirs, ki) {
                    same_seeks += 1;
                } else {
                    diff_seeks += 1;
                }
            }
            eprintln!(
                "{args:?}: {oks}/1500 operations succeeded on both; contents equal; seek maps equal for {same_seeks} files, differ for {diff_seeks}"
            );
        }
    }
    fn punch(fs: &Ext4, ino: Ino, off: u64, len: u64) {
        let m = FallocMode {
            keep_size: true,
            punch_hole: true,
            zero_range: false,
        };
        fs.fallocate(ino, off, len, m).unwrap();
    }

    /// Indirect blocks left empty by a truncate or by a punch that holds
    /// their start are freed as the kernel's ext4_find_shared does (seed
    /// 409806812754098739 of the ext3 differential test: 8 sectors left
    /// on a file the kernel had emptied); one holding only the punch's end
    /// stays.
    #[test]
    fn indirect_blocks_emptied_by_truncate_or_punch_are_freed() {
        if !have_mkfs() {
            return;
        }
        let sc = Scratch::new("indfree");
        let src = src_tree(&sc);
        let img = mkfs(&sc, &src, &["-t", "ext3", "-b", "4096"], 32 * 1024);
        let fs = open_rw(&img);
        let ino = ino_of(&img, "seq");
        let blocks = |fs: &Ext4| fs.getattr(ino).unwrap().blocks;
        // Blocks 205..=207 (single-indirect range), then a truncate to
        // block 55 of the same indirect block: nothing stays.
        fs.write(ino, 840_643, &pattern(9182, 1)).unwrap();
        assert_eq!(blocks(&fs), 4 * 8);
        truncate(&fs, ino, 222_821);
        assert_eq!(blocks(&fs), 0);
        // Double-indirect: data at 2000 and 3000 (two IND children);
        // truncating at 2500 frees the 3000 one's child but keeps the
        // rest; truncating at 1100 (inside the single-indirect range,
        // holes before) frees everything.
        fs.write(ino, 2000 * 4096, b"a").unwrap();
        fs.write(ino, 3000 * 4096, b"b").unwrap();
        assert_eq!(blocks(&fs), (2 + 1 + 2) * 8);
        truncate(&fs, ino, 2500 * 4096);
        assert_eq!(blocks(&fs), (1 + 1 + 1) * 8);
        truncate(&fs, ino, 1100 * 4096);
        assert_eq!(blocks(&fs), 0);
        // Punch: start inside the indirect block with holes before it,
        // end past it: freed. End inside another: kept though empty.
        fs.write(ino, 0, &pattern(1, 2)).unwrap();
        fs.write(ino, 100 * 4096, &pattern(4096, 3)).unwrap();
        fs.write(ino, 2000 * 4096, &pattern(4096, 4)).unwrap();
        assert_eq!(blocks(&fs), (1 + 2 + 3) * 8);
        punch(&fs, ino, 50 * 4096, 1000 * 4096);
        assert_eq!(blocks(&fs), (1 + 3) * 8);
        fs.write(ino, 100 * 4096, &pattern(4096, 3)).unwrap();
        punch(&fs, ino, 0, 101 * 4096);
        // The direct block and block 100 are gone; the IND block holds
        // the range's end: it stays, empty.
        assert_eq!(blocks(&fs), (1 + 3) * 8);
        fs.shutdown().unwrap();
        drop(fs);
        fsck_clean(&img);
    }
    /// A punch reaching past i_size ends at the end of the page holding
    /// i_size, even past the asked end (ext4_punch_hole; kernel 6.18 on
    /// 1 KiB blocks: size 1500, punch [0, 1600) frees blocks 0..=3,
    /// [0, 1500) keeps block 1). block1024 differential seed
    /// 16346306460693787083 op 1116: a block past the asked end stayed.
    #[test]
    fn punch_past_size_ends_at_the_page_of_size() {
        if !have_mkfs() {
            return;
        }
        let sc = Scratch::new("punchend");
        let src = src_tree(&sc);
        let img = mkfs(&sc, &src, &["-b", "1024"], 16 * 1024);
        let fs = open_rw(&img);
        let (a, c) = (ino_of(&img, "seq"), ino_of(&img, "frag"));
        let blocks = |ino: Ino| fs.getattr(ino).unwrap().blocks;
        let keep = FallocMode {
            keep_size: true,
            ..Default::default()
        };
        for ino in [a, c] {
            fs.write(ino, 0, &pattern(1500, 1)).unwrap();
        }
        fs.fallocate(c, 2048, 2048, keep).unwrap();
        fs.fallocate(c, 8192, 1024, keep).unwrap();
        assert_eq!(blocks(c), 10);
        punch(&fs, c, 0, 1600);
        assert_eq!(blocks(c), 2);
        punch(&fs, a, 0, 1500);
        assert_eq!(blocks(a), 2);
        let mut buf = vec![1u8; 1500];
        assert_eq!(fs.read(a, 0, &mut buf).unwrap(), 1500);
        assert!(buf.iter().all(|&b| b == 0));
        fs.shutdown().unwrap();
        drop(fs);
        fsck_clean(&img);
    }
    /// ext4_ext_try_to_merge_up: after an insertion, a depth-1 tree whose
    /// one leaf fits in the inode moves back into i_block; a removal alone
    /// keeps the leaf. Kernel 6.18, 4 KiB blocks: blocks 0,2,4,6,8 (48
    /// sectors), punch 6..9 (32: leaf kept), write block 10 (32: 4 data
    /// blocks, root at depth 0). inline_data differential seed
    /// 7841805380503437334: a one-extent file kept its leaf block.
    #[test]
    fn insertion_merges_a_small_leaf_back_into_the_inode() {
        if !have_mkfs() {
            return;
        }
        let sc = Scratch::new("mergeup");
        let src = src_tree(&sc);
        let img = mkfs(&sc, &src, &["-b", "4096"], 32 * 1024);
        let fs = open_rw(&img);
        let ino = ino_of(&img, "frag");
        let depth = |fs: &Ext4| {
            let mut txn = fs.begin().unwrap();
            let i = txn.inode(ino).unwrap();
            crate::ext4::ondisk::extent::header_depth(&i.i_block)
        };
        for b in [0u64, 2, 4, 6, 8] {
            fs.write(ino, b * 4096, &pattern(4096, b)).unwrap();
        }
        assert_eq!(fs.getattr(ino).unwrap().blocks, 48);
        assert_eq!(depth(&fs), 1);
        punch(&fs, ino, 6 * 4096, 3 * 4096);
        assert_eq!(fs.getattr(ino).unwrap().blocks, 32);
        assert_eq!(depth(&fs), 1);
        fs.write(ino, 10 * 4096, &pattern(4096, 10)).unwrap();
        assert_eq!(fs.getattr(ino).unwrap().blocks, 32);
        assert_eq!(depth(&fs), 0);
        fs.shutdown().unwrap();
        drop(fs);
        fsck_clean(&img);
        let fs = open_image(&img).unwrap();
        let mut b = vec![0u8; 4096];
        fs.read(ino, 10 * 4096, &mut b).unwrap();
        assert!(b == pattern(4096, 10));
    }
}
