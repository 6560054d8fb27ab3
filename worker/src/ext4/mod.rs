//! The ext4 engine: parses an ext2/3/4 filesystem from a [`BlockDevice`]
//! and answers the FUSE adapter's questions. No FUSE, no libc, no unsafe.
//!
//! Layers: `io` (device) → [`cache`] (metadata blocks, inodes) →
//! [`ondisk`] (one parser per structure) → `file` (block mapping and data
//! reads) and the directory/xattr modules → the public methods on [`Ext4`].
//! The kernel's ext4 driver is the oracle: what it shows for an image, this
//! engine shows.

#![forbid(unsafe_code)]
// Arithmetic on numbers read from disk is checked or saturating; the
// test build (fixtures, oracles) is exempt.
#![deny(clippy::arithmetic_side_effects)]
#![cfg_attr(test, allow(clippy::arithmetic_side_effects))]

pub mod error;
pub mod types;

pub(crate) mod alloc;
pub(crate) mod atime;
pub(crate) mod attr;
pub(crate) mod cache;
pub(crate) mod checksum;
pub(crate) mod cluster;
pub(crate) mod content_lock;
pub(crate) mod crypt;
pub(crate) mod dir;
pub(crate) mod fault;
pub(crate) mod file;
pub(crate) mod geometry;
pub(crate) mod inode_flags;
pub(crate) mod journal;
pub(crate) mod mmp;
pub(crate) mod mount;
pub(crate) mod namei;
pub(crate) mod ondisk;
pub(crate) mod orphan;
pub(crate) mod quota;
pub(crate) mod symlink;
pub(crate) mod txn;
pub(crate) mod util;
pub(crate) mod verity;
pub(crate) mod writeback;
pub(crate) mod xattr;

#[cfg(test)]
mod bigalloc_tests;
#[cfg(test)]
mod dying_disk_tests;
#[cfg(test)]
pub(crate) mod testutil;

use std::sync::Arc;

use crate::io::BlockDevice;

pub use atime::AtimeUpdates;
pub use error::{Error, Result};
pub use fault::{AbortHook, ErrorBehaviour};
pub use file::write::FallocMode;
pub use inode_flags::FsXattr;
pub use mmp::{MmpOptions, WaitHook};
pub use ondisk::quota::QuotaType;
pub use quota::QuotaLimits;
pub use types::{Attr, DirEntry, FileKind, Ino, ROOT_INO, StatFs, Timestamp, Whence, WriteAs};
pub use verity::VerityDigest;

use cache::{BlockCache, DEFAULT_BLOCK_CACHE_BYTES, DEFAULT_INODE_CACHE_ENTRIES, Lru};
use checksum::crc32c;
use ondisk::group_desc::GroupDesc;
pub(crate) use ondisk::inode::Inode;
use ondisk::superblock::{self as sbf, Superblock};
pub(crate) use txn::Txn;

/// How to open a filesystem.
#[derive(Debug, Clone, Default)]
pub struct OpenOptions {
    pub read_only: bool,
    /// `errors=`; None: the superblock's s_errors.
    pub errors: Option<ErrorBehaviour>,
    /// This node and device for multi-mount protection (read-write only).
    pub mmp: MmpOptions,
    /// Quota limits enforced, by type (user, group, project): the
    /// usrquota, grpquota and prjquota mount options. Usage is kept
    /// either way on a filesystem with the quota feature.
    pub quota_limits: [bool; 3],
    /// Which reads move access times (see `atime`).
    pub atime: AtimeUpdates,
    /// `nodiratime`: listings leave directories' atimes alone.
    pub nodiratime: bool,
}

/// What the worker reports to the broker about the filesystem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsInfo {
    /// Volume label, without trailing NULs (may be any bytes).
    pub label: Vec<u8>,
    pub uuid: [u8; 16],
    /// "ext2", "ext3" or "ext4".
    pub fs_type: &'static str,
    /// Feature names as dumpe2fs prints them.
    pub features: Vec<String>,
    /// Whether the engine serves this mount read-only.
    pub read_only: bool,
}

/// An open filesystem. Send + Sync; every method takes `&self`.
pub struct Ext4 {
    dev: Arc<dyn BlockDevice>,
    /// The superblock as opened: geometry and features. The live, written
    /// copy (counters, state, orphan list head) is in `rw`.
    sb: Superblock,
    /// Descriptors as opened: use for locations (bitmaps, inode table),
    /// which never change. Counters and flags live in `rw.gdt`.
    groups: Vec<GroupDesc>,
    block_size: u32,
    csum_seed: u32,
    /// Whether the mount was opened read-only (the write side may turn a
    /// read-write mount read-only later: see `is_read_only`).
    read_only: bool,
    /// Write-side state: transaction lock, live descriptors and superblock.
    rw: mount::RwState,
    blocks: BlockCache,
    inodes: Lru<Arc<Inode>>,
    /// Loaded fs-verity state by inode number.
    verity: Lru<Arc<verity::VerityFile>>,
    /// Overhead blocks for statfs (ext4_calculate_overhead), in clusters.
    overhead_clusters: u64,
    /// The claimed MMP block of a read-write MMP mount.
    mmp: Option<mmp::MmpGuard>,
    /// Metadata block ranges `[start, end)`, sorted and merged (see
    /// `alloc::build_system_zone`).
    system_zone: Vec<(u64, u64)>,
    /// Quota limits enforced, by type (see `OpenOptions::quota_limits`).
    quota_enforce: [bool; 3],
    /// See `OpenOptions::atime` and `OpenOptions::nodiratime`.
    atime: AtimeUpdates,
    nodiratime: bool,
}

/// How far `Ext4::open_stage` goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OpenStage {
    /// Only what reading the journal needs (needs_recovery allowed).
    Journal,
    /// The whole open; `unrecovered`: needs_recovery allowed (noload).
    Full { unrecovered: bool },
}

/// Maps a failed device access at byte `offset` to `Error::Io`.
fn io_err(offset: u64) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Io { offset, source }
}

/// The metadata checksum seed: s_checksum_seed with csum_seed, else
/// crc32c(~0, uuid).
pub(crate) fn checksum_seed(sb: &Superblock) -> u32 {
    if sb.has_incompat(sbf::INCOMPAT_CSUM_SEED) {
        sb.s_checksum_seed
    } else {
        crc32c(!0, &sb.s_uuid)
    }
}

/// Whether the filesystem on `dev` uses multi-mount protection (reads only
/// the superblock; MMP itself is not touched).
pub fn uses_mmp(dev: &dyn BlockDevice) -> Result<bool> {
    let sb = Superblock::parse(&read_superblock(dev)?, dev.size())?;
    Ok(sb.has_incompat(sbf::INCOMPAT_MMP))
}

/// The superblock's bytes as they are on the device.
pub(crate) fn read_superblock(dev: &dyn BlockDevice) -> Result<Vec<u8>> {
    let mut raw = vec![0u8; sbf::SUPERBLOCK_SIZE];
    dev.read_at(&mut raw, sbf::SUPERBLOCK_OFFSET)
        .map_err(io_err(sbf::SUPERBLOCK_OFFSET))?;
    Ok(raw)
}

impl Ext4 {
    /// Opens the filesystem on `dev`: superblock, feature policy, group
    /// descriptors, MMP, root inode. A read-write request is served
    /// read-write when the write-side policy allows it (`mount::rw_refusal`),
    /// else read-only with a log line saying why (see `info().read_only`);
    /// a read-write mount marks the superblock not-clean until `shutdown`.
    ///
    /// A journal that needs recovery is replayed first (`journal`): in
    /// memory on a read-only mount, in place on a read-write one; the
    /// result is then opened and checked as on a fresh open.
    pub fn open(dev: Arc<dyn BlockDevice>, opts: OpenOptions) -> Result<Ext4> {
        Self::open_full(dev, opts, true)
    }

    /// `-o noload`: like [`Ext4::open`] without journal replay, read-only
    /// only when the journal needs recovery (the unrecovered state shows).
    pub fn open_noload(dev: Arc<dyn BlockDevice>, opts: OpenOptions) -> Result<Ext4> {
        Self::open_full(dev, opts, false)
    }

    /// A read-write open of an MMP filesystem claims the MMP block first,
    /// before anything is written (the journal replay included).
    fn open_full(dev: Arc<dyn BlockDevice>, opts: OpenOptions, replay: bool) -> Result<Ext4> {
        let sb = Superblock::parse(&read_superblock(&*dev)?, dev.size())?;
        mount::check_features(&sb, true)?;
        let faults = Arc::new(fault::Faults::new(
            opts.errors
                .unwrap_or_else(|| ErrorBehaviour::from_superblock(sb.s_errors)),
        ));
        let mmp = if !opts.read_only
            && sb.has_incompat(sbf::INCOMPAT_MMP)
            && mount::rw_refusal(&sb).is_none()
        {
            let seed = sb
                .has_ro_compat(sbf::RO_COMPAT_METADATA_CSUM)
                .then(|| checksum_seed(&sb));
            Some(mmp::claim(&dev, &sb, seed, &opts.mmp, faults.clone())?)
        } else {
            None
        };
        // A failure from here on drops the claim: the clean sequence is
        // written back.
        let (dev, unrecovered) = journal::recover_at_open(dev, &opts, replay)?;
        let stage = OpenStage::Full { unrecovered };
        let mut fs = Self::open_stage(dev, opts, stage, faults, mmp.is_some())?;
        fs.mmp = mmp;
        Ok(fs)
    }

    /// Opens read-only as far as reading the journal needs: superblock,
    /// feature policy, group descriptors, MMP (no root check, no replay).
    pub(crate) fn open_for_journal(dev: Arc<dyn BlockDevice>) -> Result<Ext4> {
        let opts = OpenOptions {
            read_only: true,
            ..OpenOptions::default()
        };
        let faults = Arc::new(fault::Faults::new(ErrorBehaviour::RemountRo));
        Self::open_stage(dev, opts, OpenStage::Journal, faults, false)
    }

    /// `mmp_claimed`: a read-write open holds the MMP block (no read-only
    /// MMP check then).
    fn open_stage(
        dev: Arc<dyn BlockDevice>,
        opts: OpenOptions,
        stage: OpenStage,
        faults: Arc<fault::Faults>,
        mmp_claimed: bool,
    ) -> Result<Ext4> {
        let raw = read_superblock(&*dev)?;
        let sb = Superblock::parse(&raw, dev.size())?;
        mount::check_features(&sb, true)?;
        if sb.has_incompat(sbf::INCOMPAT_RECOVER)
            && stage == (OpenStage::Full { unrecovered: false })
        {
            // Replay cleared it; only a journal that changed under us gets here.
            return Err(Error::NeedsRecovery);
        }
        let mut read_only = opts.read_only || stage == OpenStage::Journal;
        if !read_only && let Some(why) = mount::rw_refusal(&sb) {
            tracing::warn!("serving read-only: {why}");
            read_only = true;
        }
        let block_size = sb.block_size();
        let csum_seed = checksum_seed(&sb);
        let rw = mount::RwState::new(&sb, raw, faults);
        let quota_enforce = opts.quota_limits;
        let mut fs = Ext4 {
            dev,
            sb,
            groups: Vec::new(),
            block_size,
            csum_seed,
            read_only,
            rw,
            blocks: Lru::new(DEFAULT_BLOCK_CACHE_BYTES),
            inodes: Lru::new(DEFAULT_INODE_CACHE_ENTRIES),
            verity: Lru::new(verity::VERITY_FILES_CACHED),
            overhead_clusters: 0,
            system_zone: Vec::new(),
            mmp: None,
            quota_enforce,
            atime: opts.atime,
            nodiratime: opts.nodiratime,
        };
        fs.groups = fs.load_group_descs()?;
        fs.system_zone = fs.build_system_zone();
        if fs.sb.has_incompat(sbf::INCOMPAT_MMP) && stage != OpenStage::Journal && !mmp_claimed {
            fs.check_mmp()?;
        }
        if stage == OpenStage::Journal {
            return Ok(fs);
        }
        let root = fs.inode(ROOT_INO).map_err(|e| match e {
            Error::NotFound => {
                Error::corrupt("root inode is unallocated", fs.inode_block(ROOT_INO))
            }
            e => e,
        })?;
        if root.kind != FileKind::Directory || root.blocks == 0 || root.size == 0 {
            return Err(Error::corrupt(
                "root inode is not a valid directory",
                fs.inode_block(ROOT_INO),
            ));
        }
        fs.overhead_clusters = fs.calculate_overhead();
        if !fs.read_only {
            fs.start_rw()?;
        }
        Ok(fs)
    }

    /// The parsed superblock.
    pub(crate) fn sb(&self) -> &Superblock {
        &self.sb
    }

    pub(crate) fn block_size(&self) -> u32 {
        self.block_size
    }

    /// The metadata checksum seed: s_checksum_seed with csum_seed, else
    /// crc32c(~0, uuid).
    pub(crate) fn csum_seed(&self) -> u32 {
        self.csum_seed
    }

    pub(crate) fn has_metadata_csum(&self) -> bool {
        self.sb.has_ro_compat(sbf::RO_COMPAT_METADATA_CSUM)
    }

    /// The inode checksum seed (inode number and generation folded in),
    /// used for extent blocks, directory blocks and xattr blocks of inodes.
    pub(crate) fn inode_csum_seed(&self, inode: &Inode) -> u32 {
        ondisk::inode::inode_csum_seed(self.csum_seed, inode.ino, inode.generation)
    }

    /// Whether `[block, block+count)` lies inside the filesystem's data
    /// area (past s_first_data_block, before s_blocks_count).
    pub(crate) fn blocks_valid(&self, block: u64, count: u64) -> bool {
        block >= self.first_data_block()
            && block
                .checked_add(count)
                .is_some_and(|e| e <= self.sb.s_blocks_count)
    }

    /// One filesystem block through the metadata cache.
    pub(crate) fn read_block(&self, block: u64) -> Result<Arc<[u8]>> {
        if block == 0 || block >= self.sb.s_blocks_count {
            return Err(Error::corrupt(
                format!("block number {block} outside the filesystem"),
                block,
            ));
        }
        if let Some(b) = self.blocks.get(block) {
            return Ok(b);
        }
        let ticket = self.blocks.fill_ticket();
        let bs = self.block_size as usize;
        if let Some(b) = self.writeback_block(block) {
            self.blocks.fill(block, b.clone(), bs, ticket);
            return Ok(b);
        }
        let offset = block
            .checked_mul(u64::from(self.block_size))
            .ok_or_else(|| Error::corrupt(format!("block number {block} overflows"), block))?;
        let mut buf = vec![0u8; bs];
        self.dev.read_at(&mut buf, offset).map_err(io_err(offset))?;
        let data: Arc<[u8]> = Arc::from(buf);
        self.blocks.fill(block, data.clone(), bs, ticket);
        Ok(data)
    }

    /// Reads `buf.len()` bytes of the device starting at block `block`,
    /// bypassing the cache (file data).
    pub(crate) fn read_blocks_direct(&self, block: u64, skip: u64, buf: &mut [u8]) -> Result<()> {
        let offset = block
            .checked_mul(u64::from(self.block_size))
            .and_then(|o| o.checked_add(skip))
            .ok_or_else(|| Error::corrupt(format!("block number {block} overflows"), block))?;
        self.dev.read_at(buf, offset).map_err(io_err(offset))?;
        self.overlay_writeback(block, skip, buf);
        Ok(())
    }

    /// Inode `ino`, parsed, checksum-verified and cached. 0 is NotFound;
    /// numbers past s_inodes_count and reserved inodes (below s_first_ino,
    /// except the root) are Corrupt; a deleted inode (no links) is NotFound.
    pub(crate) fn inode(&self, ino: Ino) -> Result<Arc<Inode>> {
        if ino == 0 {
            return Err(Error::NotFound);
        }
        if ino != ROOT_INO && ino < self.sb.s_first_ino {
            return Err(Error::corrupt(
                format!("reference to reserved inode {ino}"),
                0,
            ));
        }
        let inode = self.inode_any(ino)?;
        if inode.links_count == 0 && !self.is_held_orphan(ino) {
            return Err(Error::NotFound);
        }
        Ok(inode)
    }

    /// Like [`Ext4::inode`] but for special inodes too (journal, resize...)
    /// and without the link-count check.
    pub(crate) fn inode_any(&self, ino: Ino) -> Result<Arc<Inode>> {
        if ino == 0 || ino > self.sb.s_inodes_count {
            return Err(Error::corrupt(
                format!("inode number {ino} out of range"),
                0,
            ));
        }
        if let Some(i) = self.inodes.get(u64::from(ino)) {
            return Ok(i);
        }
        let ticket = self.inodes.fill_ticket();
        let (block, off) = self.inode_location(ino)?;
        let data = self.read_block(block)?;
        let isz = usize::from(self.sb.s_inode_size);
        let raw = off
            .checked_add(isz)
            .and_then(|end| data.get(off..end))
            .ok_or_else(|| Error::corrupt(format!("inode {ino}: beyond its block"), block))?;
        let inode = Inode::parse(raw, ino, &self.sb, self.csum_seed, block)?;
        if inode.file_acl != 0 && !self.blocks_valid(inode.file_acl, 1) {
            return Err(Error::corrupt(
                format!(
                    "inode {ino}: bad extended attribute block {}",
                    inode.file_acl
                ),
                block,
            ));
        }
        let inode = Arc::new(inode);
        self.inodes.fill(u64::from(ino), inode.clone(), 1, ticket);
        Ok(inode)
    }

    /// Summary for the broker.
    pub fn info(&self) -> FsInfo {
        FsInfo {
            label: self.sb.label(),
            uuid: self.sb.s_uuid,
            fs_type: self.sb.fs_type(),
            features: self.sb.feature_list(),
            read_only: self.is_read_only(),
        }
    }

    /// stat(2) for `ino`.
    pub fn getattr(&self, ino: Ino) -> Result<Attr> {
        Ok(self.attr_of(&*self.inode(ino)?))
    }

    /// stat(2) for the inode a file handle names (open_by_handle_at, NFS),
    /// as ext4_nfs_get_inode allows: the root or a number from
    /// s_first_ino on, in use, with links, and neither a special inode
    /// (journal, quota, orphan file) nor an xattr value's (ea_inode).
    /// Anything else is NotFound (ESTALE to the caller): a handle is
    /// input, never read as a filesystem error. (The caller compares the
    /// generation.)
    pub fn getattr_by_handle(&self, ino: Ino) -> Result<Attr> {
        let sb = &self.sb;
        let special = [
            sb.s_journal_inum,
            sb.s_usr_quota_inum,
            sb.s_grp_quota_inum,
            sb.s_prj_quota_inum,
            sb.s_orphan_file_inum,
        ];
        let numbered = ino == ROOT_INO || (ino >= sb.s_first_ino && ino <= sb.s_inodes_count);
        if !numbered || special.contains(&ino) || !self.inode_in_bitmap(ino)? {
            return Err(Error::NotFound);
        }
        let inode = self.inode(ino)?;
        if inode.has_flag(ondisk::inode::EXT4_EA_INODE_FL) {
            return Err(Error::NotFound);
        }
        Ok(self.attr_of(&inode))
    }

    /// What stat(2) shows for an inode: the one conversion from `Inode` to
    /// `Attr`, for getattr and for every operation that replies with one.
    pub(crate) fn attr_of(&self, i: &Inode) -> Attr {
        Attr {
            ino: i.ino,
            kind: i.kind,
            perm: i.perm(),
            nlink: u32::from(i.links_count),
            uid: i.uid,
            gid: i.gid,
            size: if i.kind == FileKind::Symlink && crypt::is_encrypted(i) {
                crypt::nokey_symlink_size(i.size)
            } else {
                i.size
            },
            // Like ext4_file_getattr: a regular file with inline data owns
            // no data blocks, but reports its size in sectors so tools do
            // not take it for a sparse file.
            blocks: if i.kind == FileKind::RegularFile
                && i.has_flag(ondisk::inode::EXT4_INLINE_DATA_FL)
            {
                i.blocks.saturating_add(i.size.div_ceil(512))
            } else {
                i.blocks
            },
            atime: i.atime,
            mtime: i.mtime,
            ctime: i.ctime,
            crtime: i.crtime,
            rdev: i.rdev(),
            generation: i.generation,
            blksize: self.block_size,
        }
    }

    /// Whether a caller may allocate the root-reserved blocks, by
    /// ext4_has_free_clusters' rule: root (CAP_SYS_RESOURCE), the
    /// superblock's reserved uid, or its reserved group when that is not
    /// root's (only the caller's primary group is known here).
    pub fn may_use_reserved(&self, uid: u32, gid: u32) -> bool {
        let resgid = u32::from(self.sb.s_def_resgid);
        uid == 0 || uid == u32::from(self.sb.s_def_resuid) || (resgid != 0 && gid == resgid)
    }

    /// statfs(2) as the kernel's ext4_statfs computes it.
    pub fn statfs(&self) -> Result<StatFs> {
        let cbits = self.sb.cluster_bits();
        let (free_clusters, free_inodes) = self.rw.free_counts(&self.groups);
        let c2b = |c: u64| c.checked_shl(cbits).unwrap_or(u64::MAX);
        let bfree = c2b(free_clusters);
        let reserved = self
            .sb
            .s_r_blocks_count
            .saturating_add(c2b(self.pool_clusters()));
        Ok(StatFs {
            bsize: self.block_size,
            frsize: self.block_size,
            blocks: self
                .sb
                .s_blocks_count
                .saturating_sub(c2b(self.overhead_clusters)),
            bfree,
            bavail: bfree.saturating_sub(reserved),
            files: u64::from(self.sb.s_inodes_count),
            ffree: free_inodes,
            namelen: 255,
        })
    }

    /// Reads and checks every group descriptor like ext4_check_descriptors:
    /// bitmaps and inode table inside their group (anywhere in the
    /// filesystem with flex_bg) or the mount fails; a bad descriptor
    /// checksum is logged and tolerated on a read-only mount (the kernel
    /// refuses it only read-write).
    fn load_group_descs(&self) -> Result<Vec<GroupDesc>> {
        let groups = self.sb.groups_count();
        let ngroups = u32::try_from(groups)
            .map_err(|_| Error::corrupt(format!("too many block groups ({groups})"), 0))?;
        let dsize = usize::from(self.sb.s_desc_size);
        let flex = self.sb.has_incompat(sbf::INCOMPAT_FLEX_BG);
        let sb_block = self.superblock_blocknr();
        let last_bg_block = sb_block.saturating_add(self.bg_num_gdb(0));
        let itb = self.itb_per_group();
        let mut out = Vec::with_capacity(ngroups as usize);
        let mut first_block = u64::from(self.sb.s_first_data_block);
        let mut bad_csums = 0u32;
        for g in 0..ngroups {
            let (loc, off) = self.descriptor_slot(g);
            let blk = self.read_block(loc)?;
            let raw = blk
                .get(off..off.saturating_add(dsize))
                .ok_or_else(|| Error::corrupt(format!("group descriptor {g}"), loc))?;
            let gd = GroupDesc::parse(raw, g, &self.sb, self.csum_seed)?;
            let bpg = u64::from(self.sb.s_blocks_per_group);
            let last_block = if g.saturating_add(1) == ngroups || flex {
                self.sb.s_blocks_count.saturating_sub(1)
            } else {
                first_block.saturating_add(bpg).saturating_sub(1)
            };
            let check = |what: &str, b: u64, len: u64| -> Result<()> {
                if b == sb_block || (b > sb_block && b <= last_bg_block) {
                    tracing::warn!(group = g, "{what} overlaps the superblock or descriptors");
                }
                if b < first_block || b.saturating_add(len.saturating_sub(1)) > last_block {
                    return Err(Error::corrupt(
                        format!("group descriptor {g}: {what} not in group (block {b})"),
                        loc,
                    ));
                }
                Ok(())
            };
            check("block bitmap", gd.bg_block_bitmap, 1)?;
            check("inode bitmap", gd.bg_inode_bitmap, 1)?;
            check("inode table", gd.bg_inode_table, itb)?;
            if !gd.csum_ok {
                bad_csums = bad_csums.saturating_add(1);
                tracing::warn!(
                    group = g,
                    "group descriptor checksum failed; continuing read-only"
                );
            }
            if !flex {
                first_block = first_block.saturating_add(bpg);
            }
            out.push(gd);
        }
        if bad_csums > 0 && !self.read_only {
            // The kernel refuses a read-write mount here; serving it
            // read-only is the friendlier equivalent (nothing is written).
            tracing::warn!(
                "serving read-only: {bad_csums} group descriptor checksum(s) failed; run e2fsck"
            );
            self.rw.faults.set_read_only();
        }
        Ok(out)
    }

    /// Multi-mount protection on a read-only mount: never writes the MMP
    /// block and never waits; refuses only while e2fsck holds it.
    fn check_mmp(&self) -> Result<()> {
        use ondisk::mmp::{Mmp, MmpState};
        let blk = self.sb.s_mmp_block;
        let seed = self.has_metadata_csum().then_some(self.csum_seed);
        let read = |fs: &Ext4| -> Result<Mmp> {
            let mut buf = vec![0u8; ondisk::mmp::MMP_SIZE.max(fs.block_size as usize)];
            fs.read_blocks_direct(blk, 0, &mut buf)?;
            Mmp::parse(&buf, blk, seed)
        };
        let m = read(self)?;
        match m.state() {
            MmpState::Clean => Ok(()),
            MmpState::Fsck => Err(Error::Incompatible(format!(
                "e2fsck is running on the filesystem (MMP: {})",
                m.holder()
            ))),
            // The kernel skips MMP entirely on read-only mounts: no claim,
            // no wait. A holder on another node may change the disk under
            // us; say so.
            MmpState::InUse(_) => {
                tracing::warn!(
                    holder = %m.holder(),
                    "MMP block says the filesystem is in use; serving it read-only"
                );
                Ok(())
            }
        }
    }

    /// ext4_calculate_overhead, in clusters.
    fn calculate_overhead(&self) -> u64 {
        let bigalloc = self.sb.has_ro_compat(sbf::RO_COMPAT_BIGALLOC);
        let stored = u64::from(self.sb.s_overhead_clusters);
        if bigalloc && stored != 0 && stored <= self.sb.s_blocks_count {
            return stored;
        }
        let cbits = self.sb.cluster_bits();
        let mut overhead = u64::from(self.sb.s_first_data_block) >> cbits;
        let ngroups = self.groups.len() as u64;
        for g in 0..ngroups {
            overhead = overhead.saturating_add(self.count_overhead(g));
        }
        if self.sb.has_compat(sbf::COMPAT_HAS_JOURNAL) && self.sb.s_journal_inum != 0 {
            match self.journal_blocks() {
                Ok(j) => {
                    let c = j.div_ceil(1u64 << cbits);
                    overhead = overhead.saturating_add(c);
                }
                Err(e) => tracing::warn!("can't get journal size: {e}"),
            }
        }
        overhead
    }

    /// Journal length in blocks: the journal inode's size, capped by the
    /// jbd2 superblock's s_maxlen (the kernel's j_total_len).
    fn journal_blocks(&self) -> Result<u64> {
        let ji = self.inode_any(self.sb.s_journal_inum)?;
        let by_size = ji.size.checked_div(u64::from(self.block_size)).unwrap_or(0);
        let mut buf = vec![0u8; self.block_size as usize];
        let n = self.read_data(&ji, 0, &mut buf)?;
        let jsb = ondisk::journal::JournalSuperblock::parse(buf.get(..n).unwrap_or(&[]), 0)?;
        Ok(by_size.min(u64::from(jsb.s_maxlen)))
    }

    /// Overhead clusters of one group (the kernel's count_overhead).
    fn count_overhead(&self, grp: u64) -> u64 {
        let has_super = u64::from(self.sb.bg_has_super(grp));
        if !self.sb.has_ro_compat(sbf::RO_COMPAT_BIGALLOC) {
            let resv = if has_super != 0 {
                u64::from(self.sb.s_reserved_gdt_blocks)
            } else {
                0
            };
            return [self.bg_num_gdb(grp), resv, self.itb_per_group(), 2]
                .into_iter()
                .fold(has_super, u64::saturating_add);
        }
        let cbits = self.sb.cluster_bits();
        let bpg = u64::from(self.sb.s_blocks_per_group);
        let cpg = u64::from(self.sb.s_clusters_per_group);
        let first = self.group_first_block(grp);
        let last = first.saturating_add(bpg.saturating_sub(1));
        let mut set = std::collections::HashSet::new();
        let mut count = 0u64;
        let itb = self.itb_per_group();
        for (i, gd) in self.groups.iter().enumerate() {
            for b in [gd.bg_block_bitmap, gd.bg_inode_bitmap] {
                if b >= first && b <= last {
                    set.insert(b.saturating_sub(first) >> cbits);
                    count = count.saturating_add(1);
                }
            }
            let t = gd.bg_inode_table;
            if t >= first && t.saturating_add(itb) <= last {
                for j in 0..itb {
                    set.insert(t.saturating_sub(first).saturating_add(j) >> cbits);
                    count = count.saturating_add(1);
                }
            }
            if i as u64 != grp {
                continue;
            }
            let mut s = 0u64;
            if self.sb.bg_has_super(grp) {
                set.insert(s);
                s = 1;
                count = count.saturating_add(1);
            }
            let mut j = self.bg_num_gdb(grp);
            j = j.min(bpg.saturating_sub(s));
            count = count.saturating_add(j);
            for _ in 0..j {
                set.insert(s >> cbits);
                s = s.saturating_add(1);
            }
        }
        if count == 0 {
            return 0;
        }
        set.iter().filter(|&&c| c < cpg).count() as u64
    }
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::testutil::*;
    use super::*;

    fn src_tree(sc: &Scratch) -> std::path::PathBuf {
        let src = sc.path().join("src");
        std::fs::create_dir_all(src.join("d")).unwrap();
        std::fs::write(src.join("a"), pattern(3_000_000, 5)).unwrap();
        std::fs::write(src.join("b"), pattern(50_000, 6)).unwrap();
        std::fs::write(src.join("d/c"), b"c").unwrap();
        src
    }

    /// statfs equals what the kernel reports for the same image (needs root
    /// and loop devices; skipped with a message otherwise).
    #[test]
    fn statfs_matches_kernel() {
        if !have_mkfs() {
            return;
        }
        let sc = Scratch::new("statfs");
        let src = src_tree(&sc);
        let mnt = sc.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        let variants: &[&[&str]] = &[
            &[],
            &["-b", "4096"],
            &["-O", "bigalloc", "-C", "16384"],
            &["-b", "4096", "-O", "bigalloc", "-C", "65536"],
            &["-t", "ext2"],
            &["-t", "ext3", "-b", "1024"],
            &["-O", "meta_bg,^resize_inode"],
            &["-O", "^64bit,^metadata_csum", "-I", "128"],
            &["-b", "4096", "-O", "sparse_super2"],
        ];
        for args in variants {
            let img = mkfs(&sc, &src, args, 64 * 1024);
            let fs = open_image(&img).unwrap();
            let st = fs.statfs().unwrap();
            let ours = format!(
                "{} {} {} {} {} {}",
                st.frsize, st.blocks, st.bfree, st.bavail, st.files, st.ffree
            );
            if !kernel_mount(&img, &mnt, &["-o", "loop,ro"]) {
                return;
            }
            let out = Command::new("stat")
                .args(["-f", "-c", "%S %b %f %a %c %d"])
                .arg(&mnt)
                .output()
                .unwrap();
            crate::ext4::testutil::unmount(&mnt);
            let kernel = String::from_utf8_lossy(&out.stdout).trim().to_string();
            assert_eq!(ours, kernel, "statfs for mkfs {args:?}");
            assert_eq!(st.namelen, 255);
            assert_eq!(st.bsize, fs.block_size());
        }
    }

    #[test]
    fn info_and_getattr() {
        if !have_mkfs() {
            return;
        }
        let sc = Scratch::new("info");
        let src = src_tree(&sc);
        let big_dev = Command::new("mknod")
            .arg(src.join("bdev"))
            .args(["b", "259", "70000"])
            .status()
            .is_ok_and(|s| s.success());
        let img = mkfs(
            &sc,
            &src,
            &[
                "-L",
                "MyLabel",
                "-U",
                "01234567-89ab-cdef-0123-456789abcdef",
            ],
            16 * 1024,
        );
        debugfs(&img, "mknod cdev c 4 7");
        debugfs(&img, "sif d/c mtime 0x5F000000");
        let fs = open_image(&img).unwrap();
        let info = fs.info();
        assert_eq!(info.label, b"MyLabel");
        assert_eq!(info.uuid[..4], [0x01, 0x23, 0x45, 0x67]);
        assert!(info.read_only);
        let dumpe2fs = Command::new("dumpe2fs")
            .arg("-h")
            .arg(&img)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&dumpe2fs.stdout);
        let feats = text
            .lines()
            .find_map(|l| l.strip_prefix("Filesystem features:"))
            .unwrap()
            .split_whitespace()
            .collect::<Vec<_>>();
        assert_eq!(info.features, feats);
        let a = fs.getattr(ino_of(&img, "a")).unwrap();
        assert_eq!(
            (a.size, a.kind, a.blksize),
            (3_000_000, FileKind::RegularFile, fs.block_size())
        );
        let stat = debugfs_out(&img, "stat a");
        let blockcount: u64 = stat
            .split("Blockcount: ")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .and_then(|s| s.parse().ok())
            .unwrap();
        assert_eq!(a.blocks, blockcount);
        let c = fs.getattr(ino_of(&img, "d/c")).unwrap();
        assert_eq!(c.mtime.secs, 0x5F00_0000);
        let dev = fs.getattr(ino_of(&img, "cdev")).unwrap();
        assert_eq!(dev.kind, FileKind::CharDevice);
        assert_eq!(dev.rdev, ondisk::inode::new_encode_dev(4, 7));
        if big_dev {
            let b = fs.getattr(ino_of(&img, "bdev")).unwrap();
            assert_eq!(b.kind, FileKind::BlockDevice);
            assert_eq!(b.rdev, ondisk::inode::new_encode_dev(259, 70000));
        } else {
            skip("mknod not permitted: the large device number check");
        }
        let root = fs.getattr(ROOT_INO).unwrap();
        assert_eq!(root.kind, FileKind::Directory);
        assert!(matches!(fs.getattr(0), Err(Error::NotFound)));
        assert!(matches!(fs.getattr(u32::MAX), Err(Error::Corrupt { .. })));
        assert!(
            matches!(fs.getattr(8), Err(Error::Corrupt { .. })),
            "journal inode is reserved"
        );
    }

    /// Corrupt one inode's checksum: that inode is Corrupt, the rest reads.
    #[test]
    fn bad_inode_checksum_affects_only_that_inode() {
        if !have_mkfs() {
            return;
        }
        let sc = Scratch::new("badino");
        let src = src_tree(&sc);
        let img = mkfs(&sc, &src, &[], 16 * 1024);
        let ino_b = ino_of(&img, "b");
        debugfs(&img, "sif b checksum 0x1234");
        let fs = open_image(&img).unwrap();
        let e = fs.getattr(ino_b).unwrap_err().to_string();
        assert!(
            e.contains(&format!("inode {ino_b}: checksum mismatch")),
            "{e}"
        );
        let mut buf = vec![0u8; 3_000_000];
        assert_eq!(fs.read(ino_of(&img, "a"), 0, &mut buf).unwrap(), 3_000_000);
        assert!(buf == pattern(3_000_000, 5));
    }

    /// Corrupt an extent tree block: reading that file fails cleanly.
    #[test]
    fn bad_extent_block() {
        if !have_mkfs() {
            return;
        }
        let sc = Scratch::new("badext");
        let src = sc.path().join("src");
        std::fs::create_dir(&src).unwrap();
        {
            use std::os::unix::fs::FileExt;
            let f = std::fs::File::create(src.join("frag")).unwrap();
            for i in 0..200u64 {
                f.write_all_at(&[1u8; 1024], i * 2048).unwrap();
            }
        }
        std::fs::write(src.join("ok"), b"fine").unwrap();
        let img = mkfs(&sc, &src, &["-b", "1024"], 8 * 1024);
        // The index in the inode points at the leaf block: find it.
        let ino = ino_of(&img, "frag");
        let mut data = std::fs::read(&img).unwrap();
        let fs = open_image(&img).unwrap();
        let inode = fs.inode(ino).unwrap();
        assert!(ondisk::extent::header_depth(&inode.i_block) >= 1);
        let leaf = u64::from(util::le32(&inode.i_block, 16));
        drop(fs);
        data[(leaf * 1024 + 20) as usize] ^= 0x40;
        let fs = Ext4::open(
            Arc::new(crate::io::MemDevice::new(data)),
            OpenOptions {
                read_only: true,
                ..Default::default()
            },
        )
        .unwrap();
        let mut buf = vec![0u8; 4096];
        let e = fs.read(ino, 0, &mut buf).unwrap_err().to_string();
        assert!(
            e.contains(&format!("inode {ino}: extent tree: checksum mismatch"))
                && e.contains(&format!("block {leaf}")),
            "{e}"
        );
        assert_eq!(fs.read(ino_of(&img, "ok"), 0, &mut buf).unwrap(), 4);
    }

    #[test]
    fn superblock_and_descriptor_damage() {
        if !have_mkfs() {
            return;
        }
        let sc = Scratch::new("badsb");
        let src = src_tree(&sc);
        let img = mkfs(&sc, &src, &["-b", "4096"], 16 * 1024);
        let good = std::fs::read(&img).unwrap();
        let open = |d: Vec<u8>| {
            Ext4::open(
                Arc::new(crate::io::MemDevice::new(d)),
                OpenOptions {
                    read_only: true,
                    ..Default::default()
                },
            )
        };
        // Superblock byte flip: checksum.
        let mut d = good.clone();
        d[1024 + 0x100] ^= 1;
        let e = open(d).err().unwrap().to_string();
        assert!(e.contains("superblock: checksum mismatch"), "{e}");
        // Group descriptor byte flip: tolerated read-only, like the kernel.
        let mut d = good.clone();
        d[4096 + 0x10] ^= 1;
        assert!(open(d).is_ok());
        // Inode table moved outside the filesystem: refused.
        let mut d = good.clone();
        d[4096 + 8..4096 + 12].copy_from_slice(&0x00FF_FFFFu32.to_le_bytes());
        let e = open(d).err().unwrap().to_string();
        assert!(e.contains("inode table not in group"), "{e}");
        // Truncated device.
        let e = open(good[..good.len() / 2].to_vec())
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("exceeds size of device"), "{e}");
    }

    #[test]
    fn feature_policy() {
        if !have_mkfs() {
            return;
        }
        let sc = Scratch::new("feat");
        let src = src_tree(&sc);
        let img = mkfs(&sc, &src, &["-O", "^metadata_csum"], 16 * 1024);
        let good = std::fs::read(&img).unwrap();
        let with = |off: usize, bits: u32, ro: bool| {
            let mut d = good.clone();
            let v = util::le32(&d, 1024 + off) | bits;
            d[1024 + off..1024 + off + 4].copy_from_slice(&v.to_le_bytes());
            Ext4::open(
                Arc::new(crate::io::MemDevice::new(d)),
                OpenOptions {
                    read_only: ro,
                    ..Default::default()
                },
            )
        };
        let e = with(0x60, 1 << 31, true).err().unwrap().to_string();
        assert_eq!(
            e,
            "unsupported incompat feature(s): 0x80000000 (FEATURE_I31)"
        );
        let e = with(0x60, sbf::INCOMPAT_DIRDATA, true)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("(dirdata)"), "{e}");
        // needs_recovery over an empty journal (s_start 0): nothing to
        // replay; the flag is cleared in the read-only overlay only.
        assert!(with(0x60, sbf::INCOMPAT_RECOVER, true).is_ok());
        assert!(with(0x60, sbf::INCOMPAT_JOURNAL_DEV, true).is_err());
        assert!(with(0x64, 1 << 30, true).is_ok());
        // Unknown RO_COMPAT: a read-write request is served read-only.
        let fs = with(0x64, 1 << 30, false).unwrap();
        assert!(fs.info().read_only && fs.is_read_only());
        assert!(matches!(fs.begin(), Err(Error::ReadOnly)));
        // Known features that used to force read-only: quota and
        // project are written.
        for bit in [sbf::RO_COMPAT_QUOTA, sbf::RO_COMPAT_PROJECT] {
            let mut sb = Superblock::parse(&good[1024..2048], good.len() as u64).unwrap();
            sb.s_feature_ro_compat |= bit;
            assert_eq!(mount::rw_refusal(&sb), None, "{bit:#x}");
        }
        // Bigalloc is written, but only with extents.
        let parsed = || Superblock::parse(&good[1024..2048], good.len() as u64).unwrap();
        let mut sb = parsed();
        sb.s_feature_ro_compat |= sbf::RO_COMPAT_BIGALLOC;
        sb.s_first_data_block = 1;
        assert!(mount::rw_refusal(&sb).is_some_and(|w| w.contains("bigalloc")));
        sb.s_first_data_block = 0;
        assert_eq!(mount::rw_refusal(&sb), None);
        sb.s_feature_incompat &= !sbf::INCOMPAT_EXTENTS;
        assert!(mount::rw_refusal(&sb).is_some_and(|w| w.contains("bigalloc")));
        // Plain ext4 without those: read-write.
        let fs = with(0x64, 0, false).unwrap();
        assert!(!fs.info().read_only);
    }

    #[test]
    fn mmp_clean_and_fsck() {
        if !have_mkfs() {
            return;
        }
        let sc = Scratch::new("mmp");
        let src = src_tree(&sc);
        let img = mkfs(&sc, &src, &["-O", "mmp"], 16 * 1024);
        let fs = open_image(&img).unwrap();
        let blk = fs.sb().s_mmp_block;
        let bs = u64::from(fs.block_size());
        drop(fs);
        let mut d = std::fs::read(&img).unwrap();
        let at = (blk * bs) as usize;
        d[at + 4..at + 8].copy_from_slice(&ondisk::mmp::EXT4_MMP_SEQ_FSCK.to_le_bytes());
        let seed = crc32c(!0, &d[1024 + 0x68..1024 + 0x78]);
        let seed = if util::le32(&d, 1024 + 0x60) & sbf::INCOMPAT_CSUM_SEED != 0 {
            util::le32(&d, 1024 + 0x270)
        } else {
            seed
        };
        let c = crc32c(seed, &d[at..at + 1020]);
        d[at + 1020..at + 1024].copy_from_slice(&c.to_le_bytes());
        let e = Ext4::open(
            Arc::new(crate::io::MemDevice::new(d)),
            OpenOptions {
                read_only: true,
                ..Default::default()
            },
        )
        .err()
        .unwrap()
        .to_string();
        assert!(e.contains("e2fsck is running"), "{e}");
    }

    #[test]
    fn ext4_is_send_sync() {
        fn check<T: Send + Sync>() {}
        check::<Ext4>();
    }
}

#[cfg(test)]
mod corpus {
    use std::time::{Duration, Instant};

    use super::*;

    /// Opens every image of ../shared/corpus and reads every inode by
    /// number (getattr, whole read, seeks): no panic, bounded time, errors
    /// only as Corrupt/Io/NotFound/... values.
    #[test]
    fn corpus_inode_scan() {
        let Some(entries) = super::testutil::corpus_entries() else {
            return;
        };
        let (mut opened, mut refused) = (0, 0);
        for e in entries.flatten() {
            let p = e.path();
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            let Some(image) = super::testutil::corpus_image(&p) else {
                continue;
            };
            let dev = Arc::new(crate::io::MemDevice::new(image));
            let fs = match Ext4::open(
                dev,
                OpenOptions {
                    read_only: true,
                    ..Default::default()
                },
            ) {
                Ok(fs) => fs,
                Err(e) => {
                    refused += 1;
                    eprintln!("{name}: refused: {e}");
                    continue;
                }
            };
            opened += 1;
            let _ = fs.statfs().unwrap();
            let start = Instant::now();
            let n = fs.sb().s_inodes_count.min(4096);
            let mut buf = vec![0u8; 1 << 20];
            for ino in 1..=n {
                if fs.getattr(ino).is_err() {
                    continue;
                }
                let mut off = 0u64;
                while let Ok(k) = fs.read(ino, off, &mut buf) {
                    if k == 0 || off > (64 << 20) {
                        break;
                    }
                    off += k as u64;
                }
                let _ = fs.seek(ino, 0, Whence::Data);
                let _ = fs.seek(ino, 0, Whence::Hole);
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "{name}: scan too slow"
            );
        }
        eprintln!("corpus: {opened} opened, {refused} refused");
    }
}
