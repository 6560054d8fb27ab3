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
//! Setuid/setgid clearing on write (the kernel's file_remove_privs) is the
//! FUSE adapter's: it knows the caller and calls `setattr`.

use super::extent_write::{self as ew, Root, Run, RunKind, TreeCtx, TreeStore};
use super::indirect_write::IndCtx;
use super::ondisk::inode::{EXT4_EXTENTS_FL, EXT4_INLINE_DATA_FL, Inode};
use super::ondisk::superblock::{self as sbf};
use super::txn::Txn;
use super::{Error, Ext4, FileKind, Ino, Result};

/// fallocate(2) mode bits the engine understands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FallocMode {
    pub keep_size: bool,
    pub punch_hole: bool,
    pub zero_range: bool,
}

/// The kernel's MAX_LFS_FILESIZE on 64-bit.
const MAX_LFS_FILESIZE: u64 = i64::MAX as u64;
/// Page size the kernel rounds punch-hole ends to.
const PAGE_SIZE: u64 = 4096;

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
        let mut group = u64::from(ino.saturating_sub(1)) / ipg;
        let log_flex = u32::from(self.sb().s_log_groups_per_flex);
        if self.sb().has_incompat(sbf::INCOMPAT_FLEX_BG) && log_flex >= 2 && log_flex < 32 {
            group &= !((1u64 << log_flex) - 1);
            if kind == FileKind::RegularFile {
                group += 1;
            }
        }
        if group >= self.sb().groups_count() {
            group = 0;
        }
        group
            .saturating_mul(u64::from(self.sb().s_blocks_per_group))
            .saturating_add(u64::from(self.sb().s_first_data_block))
    }

    pub(crate) fn tree_ctx(&self, inode: &Inode) -> TreeCtx {
        TreeCtx {
            ino: inode.ino,
            block_size: self.block_size() as usize,
            csum_seed: self
                .has_metadata_csum()
                .then(|| self.inode_csum_seed(inode)),
            first_block: u64::from(self.sb().s_first_data_block).max(1),
            end_block: self.sb().s_blocks_count,
            default_goal: self.data_goal(inode.ino, inode.kind),
        }
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
            let ctx = self.tree_ctx(inode);
            let mut store = TxnStore { txn, reserved_ok };
            let mut root = Root {
                i_block: &mut inode.i_block,
                blocks: &mut inode.blocks,
            };
            let r = ew::map_alloc(&mut store, &ctx, &mut root, lblk, count, unwritten);
            *inode
                .extent_hint
                .get_mut()
                .unwrap_or_else(|e| e.into_inner()) = None;
            r
        } else {
            if unwritten {
                return Err(Error::Unsupported(
                    "unwritten blocks in an indirect-mapped file".into(),
                ));
            }
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
        self.write_as(ino, offset, data, false)
    }

    /// Writes `data` at `offset` of regular file `ino`, allocating as
    /// needed; grows i_size, sets mtime and ctime. On a full filesystem it
    /// writes what fits and returns the short count (NoSpace if nothing
    /// fit). `reserved_ok`: the caller may use root-reserved blocks (root,
    /// or s_resuid/s_resgid).
    pub fn write_as(&self, ino: Ino, offset: u64, data: &[u8], reserved_ok: bool) -> Result<usize> {
        let mut txn = self.begin()?;
        let mut inode = txn.inode(ino)?;
        match inode.kind {
            FileKind::RegularFile => {}
            FileKind::Directory => return Err(Error::IsDir),
            _ => return Err(Error::Invalid("write to a non-regular file")),
        }
        if data.is_empty() {
            return Ok(0);
        }
        let max = self.max_file_size(&inode);
        if offset >= max {
            return Err(Error::FileTooBig);
        }
        let len = (data.len() as u64).min(max - offset);
        let data = data.get(..len as usize).unwrap_or(data);
        if inode.has_flag(EXT4_INLINE_DATA_FL) {
            if self.inline_write_fits(&inode, offset, len) {
                self.inline_write(&mut txn, &mut inode, offset, data)?;
                self.touch_written(&mut txn, &mut inode, offset + len);
                txn.put_inode(inode);
                txn.commit()?;
                return Ok(data.len());
            }
            self.inline_to_blocks(&mut txn, &mut inode, reserved_ok)?;
        }
        let written = self.write_blocks(&mut txn, &mut inode, offset, data, reserved_ok)?;
        self.touch_written(&mut txn, &mut inode, offset + written as u64);
        txn.put_inode(inode);
        txn.commit()?;
        Ok(written)
    }

    /// i_size grows to `end`; mtime = ctime = now.
    fn touch_written(&self, txn: &mut Txn<'_>, inode: &mut Inode, end: u64) {
        if end > inode.size {
            inode.size = end;
            if end > i32::MAX as u64 {
                txn.set_ro_compat(sbf::RO_COMPAT_LARGE_FILE);
            }
        }
        let now = self.now();
        inode.mtime = now;
        inode.ctime = now;
    }

    /// The block part of a write: maps, writes data, converts unwritten
    /// extents. Returns the bytes written (a prefix of `data`).
    fn write_blocks(
        &self,
        txn: &mut Txn<'_>,
        inode: &mut Inode,
        offset: u64,
        data: &[u8],
        reserved_ok: bool,
    ) -> Result<usize> {
        let bs = u64::from(self.block_size());
        let end = offset + data.len() as u64;
        let first = offset / bs;
        let count = (end - 1) / bs - first + 1;
        let (runs, _short) = self.map_alloc_runs(txn, inode, first, count, false, reserved_ok)?;
        let mapped: u64 = runs.iter().map(|r| u64::from(r.len)).sum();
        if mapped == 0 {
            return Err(Error::NoSpace);
        }
        let end = end.min((first + mapped) * bs);
        for r in &runs {
            self.write_run(r, offset, end, data)?;
        }
        // Unwritten extents we wrote into are now data.
        if inode.has_flag(EXT4_EXTENTS_FL) && runs.iter().any(|r| r.kind == RunKind::Unwritten) {
            let ctx = self.tree_ctx(inode);
            let mut store = TxnStore { txn, reserved_ok };
            let mut root = Root {
                i_block: &mut inode.i_block,
                blocks: &mut inode.blocks,
            };
            for r in runs.iter().filter(|r| r.kind == RunKind::Unwritten) {
                let s = r.lblk;
                let e = (r.lblk + u64::from(r.len)).min(end.div_ceil(bs));
                ew::set_state(&mut store, &ctx, &mut root, s, e, false)?;
            }
            *inode
                .extent_hint
                .get_mut()
                .unwrap_or_else(|e| e.into_inner()) = None;
        }
        Ok((end - offset) as usize)
    }

    /// Writes the part of file bytes [offset, end) (data = bytes from
    /// offset) that falls in run `r`.
    fn write_run(&self, r: &Run, offset: u64, end: u64, data: &[u8]) -> Result<()> {
        let bs = u64::from(self.block_size());
        let rs = (r.lblk * bs).max(offset);
        let re = ((r.lblk + u64::from(r.len)) * bs).min(end);
        let mut pos = rs;
        while pos < re {
            let pblk = r.pblk + (pos / bs - r.lblk);
            let inb = pos % bs;
            let src = |a: u64, b: u64| data.get((a - offset) as usize..(b - offset) as usize);
            if inb != 0 || re - pos < bs {
                let n = (bs - inb).min(re - pos);
                let mut buf = vec![0u8; bs as usize];
                if r.kind == RunKind::Written {
                    self.read_blocks_direct(pblk, 0, &mut buf)?;
                }
                let dst = buf
                    .get_mut(inb as usize..(inb + n) as usize)
                    .ok_or(Error::Invalid("write range"))?;
                dst.copy_from_slice(src(pos, pos + n).ok_or(Error::Invalid("write range"))?);
                self.write_data(pblk, 0, &buf)?;
                pos += n;
            } else {
                let nfull = (re - pos) / bs;
                let bytes = src(pos, pos + nfull * bs).ok_or(Error::Invalid("write range"))?;
                self.write_data(pblk, 0, bytes)?;
                pos += nfull * bs;
            }
        }
        Ok(())
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
        let lblk = from / bs;
        let pblk = self.lookup_written(txn, inode, lblk)?;
        if let Some(p) = pblk {
            let zeros = vec![0u8; (to - from) as usize];
            self.write_data(p, from % bs, &zeros)?;
        }
        Ok(())
    }

    /// Physical block of `lblk` if mapped and written (as this transaction
    /// sees the tree).
    fn lookup_written(
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
            Ok(path
                .lookup(lblk)
                .0
                .filter(|e| !e.uninit)
                .map(|e| e.pblk + (lblk - u64::from(e.lblk))))
        } else {
            // Indirect maps change only inside this transaction's blocks:
            // walk them through the transaction.
            let per = u64::from(self.block_size() / 4);
            let Some(path) = super::ondisk::indirect::path(lblk, per) else {
                return Ok(None);
            };
            let mut ptr = u64::from(super::util::le32(&inode.i_block, path.slot * 4));
            for &off in &path.offsets {
                if ptr == 0 {
                    return Ok(None);
                }
                if !self.blocks_valid(ptr, 1) {
                    return Err(Error::corrupt(
                        format!(
                            "inode {}: indirect block {ptr} outside the filesystem",
                            inode.ino
                        ),
                        0,
                    ));
                }
                let t = txn.block(ptr)?;
                ptr = u64::from(super::util::le32(&t, off as usize * 4));
            }
            Ok((ptr != 0 && self.blocks_valid(ptr, 1)).then_some(ptr))
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
            let ctx = self.tree_ctx(inode);
            // Freeing may need a split block: the kernel's reserved pool.
            txn.use_reserved_pool();
            let mut store = TxnStore {
                txn,
                reserved_ok: true,
            };
            let mut root = Root {
                i_block: &mut inode.i_block,
                blocks: &mut inode.blocks,
            };
            let n = ew::remove_range(&mut store, &ctx, &mut root, start, end);
            *inode
                .extent_hint
                .get_mut()
                .unwrap_or_else(|e| e.into_inner()) = None;
            n
        } else {
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
                // ext4_inode_is_fast_symlink: no blocks besides an xattr block.
                let ea = if inode.file_acl != 0 {
                    u64::from(self.block_size() / 512)
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
            if new_size % bs != 0 {
                self.zero_in_block(txn, inode, new_size, keep * bs)?;
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
        let mut txn = self.begin()?;
        let mut inode = txn.inode(ino)?;
        match inode.kind {
            FileKind::RegularFile => {}
            FileKind::Directory => return Err(Error::IsDir),
            _ => return Err(Error::Unsupported("fallocate on a special file".into())),
        }
        let end = offset
            .checked_add(len)
            .filter(|&e| i64::try_from(e).is_ok())
            .ok_or(Error::FileTooBig)?;
        if end > self.max_file_size(&inode) {
            return Err(Error::FileTooBig);
        }
        if inode.has_flag(EXT4_INLINE_DATA_FL) {
            self.inline_to_blocks(&mut txn, &mut inode, reserved_ok)?;
        }
        let extents = inode.has_flag(EXT4_EXTENTS_FL);
        let bs = u64::from(self.block_size());
        let now = self.now();
        if mode.punch_hole {
            if offset >= inode.size {
                return Ok(());
            }
            let end = end.min(inode.size.div_ceil(PAGE_SIZE) * PAGE_SIZE);
            let first_full = offset.div_ceil(bs);
            let last_full = end / bs;
            if first_full > last_full {
                // Inside one block.
                self.zero_in_block(&mut txn, &mut inode, offset, end)?;
            } else {
                self.zero_in_block(&mut txn, &mut inode, offset, first_full * bs)?;
                self.zero_in_block(&mut txn, &mut inode, last_full * bs, end)?;
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
        let first = offset / bs;
        let last = end.div_ceil(bs);
        let (runs, short) =
            self.map_alloc_runs(&mut txn, &mut inode, first, last - first, true, reserved_ok)?;
        let mapped_end = first + runs.iter().map(|r| u64::from(r.len)).sum::<u64>();
        if mode.zero_range && !short {
            // Interior whole blocks become unwritten; partial edges are
            // zeroed on disk where written.
            let s = offset.div_ceil(bs);
            let e = end / bs;
            if s < e {
                let ctx = self.tree_ctx(&inode);
                let mut store = TxnStore {
                    txn: &mut txn,
                    reserved_ok,
                };
                let mut root = Root {
                    i_block: &mut inode.i_block,
                    blocks: &mut inode.blocks,
                };
                ew::set_state(&mut store, &ctx, &mut root, s, e, true)?;
                *inode
                    .extent_hint
                    .get_mut()
                    .unwrap_or_else(|e| e.into_inner()) = None;
            }
            if s > e {
                self.zero_in_block(&mut txn, &mut inode, offset, end)?;
            } else {
                self.zero_in_block(&mut txn, &mut inode, offset, s * bs)?;
                self.zero_in_block(&mut txn, &mut inode, e * bs, end)?;
            }
        }
        inode.ctime = now;
        if !mode.keep_size {
            let new_end = end.min(mapped_end * bs).max(inode.size);
            if new_end > inode.size {
                inode.size = new_end;
                inode.mtime = now;
                if new_end > i32::MAX as u64 {
                    txn.set_ro_compat(sbf::RO_COMPAT_LARGE_FILE);
                }
            }
        }
        if mode.zero_range {
            inode.mtime = now;
        }
        txn.put_inode(inode);
        txn.commit()?;
        if short {
            return Err(Error::NoSpace);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
