//! Inodes (`struct ext4_inode`, 128 bytes plus `i_extra_isize` and the
//! in-inode xattr area). Layout: Documentation/filesystems/ext4/inodes.rst.

use std::sync::Mutex;

use crate::ext4::checksum::crc32c;
use crate::ext4::error::{Error, Result};
use crate::ext4::ondisk::extent::LeafHint;
use crate::ext4::ondisk::superblock::{
    GOOD_OLD_INODE_SIZE, RO_COMPAT_HUGE_FILE, RO_COMPAT_METADATA_CSUM, Superblock,
};
use crate::ext4::types::{FileKind, Ino, Timestamp};
use crate::ext4::util::{le16, le32, put, put_le16, put_le32};

// i_mode file types.
pub(crate) const S_IFMT: u16 = 0o170000;
pub(crate) const S_IFSOCK: u16 = 0o140000;
pub(crate) const S_IFLNK: u16 = 0o120000;
pub(crate) const S_IFREG: u16 = 0o100000;
pub(crate) const S_IFBLK: u16 = 0o060000;
pub(crate) const S_IFDIR: u16 = 0o040000;
pub(crate) const S_IFCHR: u16 = 0o020000;
pub(crate) const S_IFIFO: u16 = 0o010000;
pub(crate) const S_ISUID: u16 = 0o4000;
pub(crate) const S_ISGID: u16 = 0o2000;
pub(crate) const S_IXGRP: u16 = 0o0010;

// i_flags (the kernel's EXT4_*_FL).
pub(crate) const EXT4_SECRM_FL: u32 = 0x0000_0001;
pub(crate) const EXT4_UNRM_FL: u32 = 0x0000_0002;
pub(crate) const EXT4_COMPR_FL: u32 = 0x0000_0004;
pub(crate) const EXT4_SYNC_FL: u32 = 0x0000_0008;
pub(crate) const EXT4_IMMUTABLE_FL: u32 = 0x0000_0010;
pub(crate) const EXT4_APPEND_FL: u32 = 0x0000_0020;
pub(crate) const EXT4_NODUMP_FL: u32 = 0x0000_0040;
pub(crate) const EXT4_NOATIME_FL: u32 = 0x0000_0080;
pub(crate) const EXT4_DIRTY_FL: u32 = 0x0000_0100;
pub(crate) const EXT4_COMPRBLK_FL: u32 = 0x0000_0200;
pub(crate) const EXT4_NOCOMPR_FL: u32 = 0x0000_0400;
pub(crate) const EXT4_ENCRYPT_FL: u32 = 0x0000_0800;
pub(crate) const EXT4_INDEX_FL: u32 = 0x0000_1000;
#[expect(dead_code, reason = "on-disk format value the engine does not act on")]
pub(crate) const EXT4_IMAGIC_FL: u32 = 0x0000_2000;
pub(crate) const EXT4_JOURNAL_DATA_FL: u32 = 0x0000_4000;
pub(crate) const EXT4_NOTAIL_FL: u32 = 0x0000_8000;
pub(crate) const EXT4_DIRSYNC_FL: u32 = 0x0001_0000;
pub(crate) const EXT4_TOPDIR_FL: u32 = 0x0002_0000;
pub(crate) const EXT4_HUGE_FILE_FL: u32 = 0x0004_0000;
pub(crate) const EXT4_EXTENTS_FL: u32 = 0x0008_0000;
pub(crate) const EXT4_VERITY_FL: u32 = 0x0010_0000;
pub(crate) const EXT4_EA_INODE_FL: u32 = 0x0020_0000;
pub(crate) const EXT4_DAX_FL: u32 = 0x0200_0000;
pub(crate) const EXT4_INLINE_DATA_FL: u32 = 0x1000_0000;
pub(crate) const EXT4_PROJINHERIT_FL: u32 = 0x2000_0000;
pub(crate) const EXT4_CASEFOLD_FL: u32 = 0x4000_0000;
#[expect(dead_code, reason = "on-disk format value the engine does not act on")]
pub(crate) const EXT4_RESERVED_FL: u32 = 0x8000_0000;

/// Size of `i_block`.
pub(crate) const I_BLOCK_SIZE: usize = 60;
const I_BLOCK_OFFSET: usize = 0x28;
const I_CHECKSUM_LO: usize = 0x7C;
const I_EXTRA_ISIZE: usize = 0x80;
const I_CHECKSUM_HI: usize = 0x82;

/// An inode, parsed and checked. Write side: change the pub(crate)
/// fields (and the in-inode xattr area inside `raw`), then
/// `Txn::put_inode`; [`Inode::write`] serializes them over `raw`.
#[derive(Debug)]
pub(crate) struct Inode {
    pub(crate) ino: Ino,
    pub(crate) mode: u16,
    pub(crate) kind: FileKind,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    pub(crate) size: u64,
    pub(crate) links_count: u16,
    pub(crate) flags: u32,
    pub(crate) i_block: [u8; I_BLOCK_SIZE],
    pub(crate) file_acl: u64,
    pub(crate) generation: u32,
    pub(crate) atime: Timestamp,
    pub(crate) ctime: Timestamp,
    pub(crate) mtime: Timestamp,
    pub(crate) crtime: Timestamp,
    pub(crate) dtime: u32,
    /// i_blocks in 512-byte units (huge_file honoured).
    pub(crate) blocks: u64,
    pub(crate) extra_isize: u16,
    pub(crate) version: u64,
    pub(crate) projid: u32,
    /// The whole on-disk inode (`s_inode_size` bytes).
    pub(crate) raw: Box<[u8]>,
    /// Last extent leaf used for this inode: sequential reads skip the
    /// tree walk.
    pub(crate) extent_hint: Mutex<Option<LeafHint>>,
}

fn corrupt(ino: Ino, block: u64, why: impl std::fmt::Display) -> Error {
    Error::corrupt(format!("inode {ino}: {why}"), block)
}

/// Whether a field ending at byte `end` lies within `128 + extra_isize`
/// (the kernel's EXT4_FITS_IN_INODE).
fn fits(raw_len: usize, extra_isize: u16, end: usize) -> bool {
    raw_len > usize::from(GOOD_OLD_INODE_SIZE) && end <= extra_end(extra_isize)
}

/// Whether the 4-byte field at `off` fits (see [`fits`]).
fn fits32(raw_len: usize, extra_isize: u16, off: usize) -> bool {
    off.checked_add(4)
        .is_some_and(|end| fits(raw_len, extra_isize, end))
}

/// Where the extra fields end: 128 + `i_extra_isize`.
#[expect(
    clippy::arithmetic_side_effects,
    reason = "128 plus a u16, widened to usize, cannot overflow"
)]
fn extra_end(extra_isize: u16) -> usize {
    usize::from(GOOD_OLD_INODE_SIZE) + usize::from(extra_isize)
}

/// ext4_decode_extra_time: 32-bit signed seconds, two epoch bits extending
/// them to 34 bits, 30 bits of nanoseconds.
#[expect(
    clippy::arithmetic_side_effects,
    reason = "an i32 plus at most 3 << 32 fits an i64"
)]
fn decode_time(base: u32, extra: Option<u32>) -> Timestamp {
    let mut secs = i64::from(base as i32);
    let mut nsecs = 0;
    if let Some(extra) = extra {
        secs += i64::from(extra & 3) << 32;
        nsecs = extra >> 2;
    }
    Timestamp { secs, nsecs }
}

/// The per-inode checksum seed: crc32c(crc32c(fs seed, ino), generation).
pub(crate) fn inode_csum_seed(csum_seed: u32, ino: Ino, generation: u32) -> u32 {
    crc32c(
        crc32c(csum_seed, &ino.to_le_bytes()),
        &generation.to_le_bytes(),
    )
}

/// The inode checksum as the kernel's ext4_inode_csum computes it (both
/// checksum fields read as zero). Returns (computed, stored) with the
/// computed value cut to 16 bits where the inode has no `i_checksum_hi`.
fn inode_csum(raw: &[u8], extra_isize: u16, seed: u32) -> (u32, u32) {
    let has_hi = fits(raw.len(), extra_isize, I_CHECKSUM_HI + 2);
    let mut c = crc32c(seed, raw.get(..I_CHECKSUM_LO).unwrap_or(&[]));
    c = crc32c(c, &[0, 0]);
    c = crc32c(
        c,
        raw.get(I_CHECKSUM_LO + 2..usize::from(GOOD_OLD_INODE_SIZE))
            .unwrap_or(&[]),
    );
    let mut stored = u32::from(le16(raw, I_CHECKSUM_LO));
    if raw.len() > usize::from(GOOD_OLD_INODE_SIZE) {
        c = crc32c(c, raw.get(I_EXTRA_ISIZE..I_CHECKSUM_HI).unwrap_or(&[]));
        if has_hi {
            c = crc32c(c, &[0, 0]);
            c = crc32c(c, raw.get(I_CHECKSUM_HI + 2..).unwrap_or(&[]));
        } else {
            c = crc32c(c, raw.get(I_CHECKSUM_HI..).unwrap_or(&[]));
        }
    }
    if has_hi {
        stored |= u32::from(le16(raw, I_CHECKSUM_HI)) << 16;
    } else {
        c &= 0xFFFF;
    }
    (c, stored)
}

/// Computes and stores the checksum of `raw` (test fixtures; the write
/// path will use it too).
pub(crate) fn set_inode_csum(raw: &mut [u8], ino: Ino, csum_seed: u32) {
    let generation = le32(raw, 0x64);
    let extra = if raw.len() > usize::from(GOOD_OLD_INODE_SIZE) {
        le16(raw, I_EXTRA_ISIZE)
    } else {
        0
    };
    let (c, _) = inode_csum(raw, extra, inode_csum_seed(csum_seed, ino, generation));
    if let Some(d) = raw.get_mut(I_CHECKSUM_LO..I_CHECKSUM_LO + 2) {
        d.copy_from_slice(&((c & 0xFFFF) as u16).to_le_bytes());
    }
    if fits(raw.len(), extra, I_CHECKSUM_HI + 2)
        && let Some(d) = raw.get_mut(I_CHECKSUM_HI..I_CHECKSUM_HI + 2)
    {
        d.copy_from_slice(&((c >> 16) as u16).to_le_bytes());
    }
}

impl Inode {
    /// Parses inode `ino` from its on-disk bytes (`sb.s_inode_size` long),
    /// read from `block`, verifying the checksum when metadata_csum is on.
    pub(crate) fn parse(
        raw: &[u8],
        ino: Ino,
        sb: &Superblock,
        csum_seed: u32,
        block: u64,
    ) -> Result<Inode> {
        let isize = usize::from(sb.s_inode_size);
        let raw = raw
            .get(..isize)
            .ok_or_else(|| corrupt(ino, block, "short read"))?;
        let big = isize > usize::from(GOOD_OLD_INODE_SIZE);
        let extra_isize = if big { le16(raw, I_EXTRA_ISIZE) } else { 0 };
        if big && (extra_end(extra_isize) > isize || extra_isize & 3 != 0) {
            return Err(corrupt(
                ino,
                block,
                format_args!("bad extra_isize {extra_isize}"),
            ));
        }
        let generation = le32(raw, 0x64);
        if sb.has_ro_compat(RO_COMPAT_METADATA_CSUM) {
            let (calc, stored) = inode_csum(
                raw,
                extra_isize,
                inode_csum_seed(csum_seed, ino, generation),
            );
            if calc != stored {
                return Err(corrupt(
                    ino,
                    block,
                    format_args!("checksum mismatch (stored {stored:#x}, computed {calc:#x})"),
                ));
            }
        }

        let mode = le16(raw, 0x0);
        let kind = match mode & S_IFMT {
            S_IFREG => FileKind::RegularFile,
            S_IFDIR => FileKind::Directory,
            S_IFLNK => FileKind::Symlink,
            S_IFCHR => FileKind::CharDevice,
            S_IFBLK => FileKind::BlockDevice,
            S_IFIFO => FileKind::Fifo,
            S_IFSOCK => FileKind::Socket,
            other => {
                return Err(corrupt(
                    ino,
                    block,
                    format_args!("bogus file type {other:#o}"),
                ));
            }
        };
        let size = u64::from(le32(raw, 0x4)) | (u64::from(le32(raw, 0x6C)) << 32);
        if i64::try_from(size).is_err() {
            return Err(corrupt(ino, block, format_args!("bad i_size {size}")));
        }
        let flags = le32(raw, 0x20);
        let blocks_lo = u64::from(le32(raw, 0x1C));
        let blocks = if sb.has_ro_compat(RO_COMPAT_HUGE_FILE) {
            let b = blocks_lo | (u64::from(le16(raw, 0x74)) << 32);
            if flags & EXT4_HUGE_FILE_FL != 0 {
                // In filesystem blocks: convert to 512-byte units.
                let shift = sb.s_log_block_size.saturating_add(1);
                b.checked_shl(shift)
                    .filter(|_| b.leading_zeros() >= shift)
                    .ok_or_else(|| {
                        corrupt(ino, block, format_args!("huge_file i_blocks {b} overflows"))
                    })?
            } else {
                b
            }
        } else {
            blocks_lo
        };
        let extra = |off: usize| fits32(isize, extra_isize, off).then(|| le32(raw, off));
        let crtime = match extra(0x90) {
            Some(base) => decode_time(base, extra(0x94)),
            None => Timestamp::default(),
        };
        let mut i_block = [0u8; I_BLOCK_SIZE];
        if let Some(src) = raw.get(I_BLOCK_OFFSET..I_BLOCK_OFFSET + I_BLOCK_SIZE) {
            i_block.copy_from_slice(src);
        }
        let version_hi = extra(0x98).map_or(0, u64::from);
        Ok(Inode {
            ino,
            mode,
            kind,
            uid: u32::from(le16(raw, 0x2)) | (u32::from(le16(raw, 0x78)) << 16),
            gid: u32::from(le16(raw, 0x18)) | (u32::from(le16(raw, 0x7A)) << 16),
            size,
            links_count: le16(raw, 0x1A),
            flags,
            i_block,
            file_acl: u64::from(le32(raw, 0x68)) | (u64::from(le16(raw, 0x76)) << 32),
            generation,
            atime: decode_time(le32(raw, 0x8), extra(0x8C)),
            ctime: decode_time(le32(raw, 0xC), extra(0x84)),
            mtime: decode_time(le32(raw, 0x10), extra(0x88)),
            crtime,
            dtime: le32(raw, 0x14),
            blocks,
            extra_isize,
            version: u64::from(le32(raw, 0x24)) | (version_hi << 32),
            projid: extra(0x9C).unwrap_or(0),
            raw: raw.into(),
            extent_hint: Mutex::new(None),
        })
    }

    /// The in-inode extended attribute region: from `128 + i_extra_isize`
    /// to the end of the on-disk inode. Empty for 128-byte inodes.
    /// Offset of the in-inode xattr area in the raw inode.
    pub(crate) fn ibody_start(&self) -> usize {
        extra_end(self.extra_isize)
    }

    pub(crate) fn inline_xattr_area(&self) -> &[u8] {
        if self.raw.len() <= usize::from(GOOD_OLD_INODE_SIZE) {
            return &[];
        }
        self.raw.get(extra_end(self.extra_isize)..).unwrap_or(&[])
    }

    pub(crate) fn has_flag(&self, fl: u32) -> bool {
        self.flags & fl != 0
    }

    /// Device number in the kernel's new (userspace dev_t, 32-bit) encoding,
    /// for character and block devices; 0 otherwise. ext4 keeps the old
    /// 16-bit encoding in i_block[0] or the new one in i_block[1].
    pub(crate) fn rdev(&self) -> u32 {
        if !matches!(self.kind, FileKind::CharDevice | FileKind::BlockDevice) {
            return 0;
        }
        let old = le32(&self.i_block, 0);
        if old != 0 {
            let major = (old >> 8) & 0xff;
            let minor = old & 0xff;
            return new_encode_dev(major, minor);
        }
        // Already the new encoding: minor low 8 bits, major 12 bits, minor
        // high 12 bits.
        le32(&self.i_block, 4)
    }

    /// Permission bits including setuid/setgid/sticky.
    pub(crate) fn perm(&self) -> u16 {
        self.mode & 0o7777
    }

    /// Logical block count covering `size` for a `block_size` filesystem.
    pub(crate) fn size_in_blocks(&self, block_size: u32) -> u64 {
        self.size.div_ceil(u64::from(block_size.max(1)))
    }
}

/// Size of the fixed part of `struct ext4_inode` past 128 bytes that this
/// engine knows (up to i_projid): the kernel's default i_extra_isize.
pub(crate) const EXT4_DEFAULT_EXTRA_ISIZE: u16 = 32;
/// Flags a new inode inherits from its directory (EXT4_FL_INHERITED).
pub(crate) const EXT4_FL_INHERITED: u32 = EXT4_SECRM_FL
    | EXT4_UNRM_FL
    | EXT4_COMPR_FL
    | EXT4_SYNC_FL
    | EXT4_NODUMP_FL
    | EXT4_NOATIME_FL
    | EXT4_NOCOMPR_FL
    | EXT4_JOURNAL_DATA_FL
    | EXT4_NOTAIL_FL
    | EXT4_DIRSYNC_FL
    | EXT4_CASEFOLD_FL
    | EXT4_DAX_FL
    | EXT4_PROJINHERIT_FL;
/// Of the inherited flags, those that only make sense on directories
/// (EXT4_DIRSYNC_FL | EXT4_TOPDIR_FL | EXT4_CASEFOLD_FL |
/// EXT4_PROJINHERIT_FL) and on regular files (EXT4_REG_FLMASK is the
/// complement of directory-only flags), as ext4_mask_flags applies them.
const EXT4_DIR_ONLY_FL: u32 =
    EXT4_DIRSYNC_FL | EXT4_TOPDIR_FL | EXT4_CASEFOLD_FL | EXT4_PROJINHERIT_FL;
const EXT4_OTHER_FLMASK: u32 = EXT4_NODUMP_FL | EXT4_NOATIME_FL;

/// The flags a new inode of `mode` gets from its parent directory's
/// `parent_flags` (ext4_new_inode: ext4_mask_flags(mode, dir flags &
/// EXT4_FL_INHERITED)). Callers OR this into `Inode::new`'s flags.
pub(crate) fn inherited_flags(parent_flags: u32, mode: u16) -> u32 {
    let f = parent_flags & EXT4_FL_INHERITED;
    match mode & S_IFMT {
        S_IFDIR => f,
        S_IFREG => f & !EXT4_DIR_ONLY_FL,
        _ => f & EXT4_OTHER_FLMASK,
    }
}

/// ext4_encode_extra_time: the low 32 bits of the seconds, and the extra
/// word (2 epoch bits, 30 bits of nanoseconds). Seconds outside what the
/// fields can hold are clamped, as the kernel clamps to s_time_min/max.
#[expect(
    clippy::arithmetic_side_effects,
    reason = "constants and seconds clamped to [i32::MIN, i32::MIN + 2^34), far inside i64"
)]
fn encode_time(t: Timestamp, extra: bool) -> (u32, u32) {
    if !extra {
        let secs = t.secs.clamp(i64::from(i32::MIN), i64::from(i32::MAX));
        return (secs as i32 as u32, 0);
    }
    let max = i64::from(i32::MIN) + (1i64 << 34) - 1;
    let secs = t.secs.clamp(i64::from(i32::MIN), max);
    let base = secs as i32;
    let epoch = (((secs - i64::from(base)) >> 32) & 3) as u32;
    (base as u32, epoch | (t.nsecs.min(999_999_999) << 2))
}

impl Clone for Inode {
    /// A copy with an empty extent-leaf hint (the copy may be changed; a
    /// hint describes the tree it was read from).
    fn clone(&self) -> Self {
        Inode {
            ino: self.ino,
            mode: self.mode,
            kind: self.kind,
            uid: self.uid,
            gid: self.gid,
            size: self.size,
            links_count: self.links_count,
            flags: self.flags,
            i_block: self.i_block,
            file_acl: self.file_acl,
            generation: self.generation,
            atime: self.atime,
            ctime: self.ctime,
            mtime: self.mtime,
            crtime: self.crtime,
            dtime: self.dtime,
            blocks: self.blocks,
            extra_isize: self.extra_isize,
            version: self.version,
            projid: self.projid,
            raw: self.raw.clone(),
            extent_hint: Mutex::new(None),
        }
    }
}

/// The file kind for an i_mode, None for a bogus type.
pub(crate) fn kind_of_mode(mode: u16) -> Option<FileKind> {
    Some(match mode & S_IFMT {
        S_IFREG => FileKind::RegularFile,
        S_IFDIR => FileKind::Directory,
        S_IFLNK => FileKind::Symlink,
        S_IFCHR => FileKind::CharDevice,
        S_IFBLK => FileKind::BlockDevice,
        S_IFIFO => FileKind::Fifo,
        S_IFSOCK => FileKind::Socket,
        _ => return None,
    })
}

impl Inode {
    /// A fresh inode `ino` with `mode` (type and permissions), owner, and
    /// every time set to `now`: links_count 1 (callers set 2 for
    /// directories), i_extra_isize as the kernel picks it (32, or
    /// s_want_extra_isize/s_min_extra_isize if larger and they fit), a new
    /// generation, and EXTENTS_FL with an empty extent root for regular
    /// files, directories and symlinks when the extent feature is on
    /// (callers clear it for fast symlinks and add INLINE_DATA_FL and the
    /// parent's [`inherited_flags`]). A bogus file type in `mode` is made a
    /// regular file.
    pub(crate) fn new(
        fs: &crate::ext4::Ext4,
        ino: Ino,
        mode: u16,
        uid: u32,
        gid: u32,
        now: Timestamp,
    ) -> Inode {
        use crate::ext4::ondisk::superblock::{INCOMPAT_EXTENTS, RO_COMPAT_EXTRA_ISIZE};
        let sb = fs.sb();
        let isize = usize::from(sb.s_inode_size.max(GOOD_OLD_INODE_SIZE));
        let (mode, kind) = match kind_of_mode(mode) {
            Some(k) => (mode, k),
            None => ((mode & !S_IFMT) | S_IFREG, FileKind::RegularFile),
        };
        let room = isize
            .checked_sub(usize::from(GOOD_OLD_INODE_SIZE))
            .filter(|&r| r > 0);
        let extra_isize = if let Some(room) = room {
            let room = room as u16;
            let mut want = EXT4_DEFAULT_EXTRA_ISIZE;
            if sb.has_ro_compat(RO_COMPAT_EXTRA_ISIZE) {
                want = want.max(sb.s_want_extra_isize).max(sb.s_min_extra_isize);
            }
            if want > room {
                want = EXT4_DEFAULT_EXTRA_ISIZE.min(room);
            }
            want & !3
        } else {
            0
        };
        let mut flags = 0;
        let mut i_block = [0u8; I_BLOCK_SIZE];
        if sb.has_incompat(INCOMPAT_EXTENTS)
            && matches!(
                kind,
                FileKind::RegularFile | FileKind::Directory | FileKind::Symlink
            )
        {
            flags |= EXT4_EXTENTS_FL;
            init_extent_root(&mut i_block);
        }
        let mut raw = vec![0u8; isize].into_boxed_slice();
        put_le16(&mut raw, I_EXTRA_ISIZE, extra_isize);
        Inode {
            ino,
            mode,
            kind,
            uid,
            gid,
            size: 0,
            links_count: 1,
            flags,
            i_block,
            file_acl: 0,
            generation: fs.next_generation(),
            atime: now,
            ctime: now,
            mtime: now,
            crtime: now,
            dtime: 0,
            blocks: 0,
            extra_isize,
            version: 0,
            projid: 0,
            raw,
            extent_hint: Mutex::new(None),
        }
    }

    /// Serializes the inode into `out` (its `s_inode_size` on-disk bytes):
    /// starts from `self.raw` (so unknown fields and the in-inode xattr
    /// area are kept; if `raw` has another length, `out`'s own contents
    /// are kept instead), writes every known field, and with
    /// `csum_seed: Some(fs seed)` (metadata_csum) sets the checksum.
    /// i_blocks is stored in 512-byte units in 48 bits (HUGE_FILE_FL
    /// cleared, as ext4_inode_blocks_set does while the count fits).
    pub(crate) fn write(&self, out: &mut [u8], csum_seed: Option<u32>) {
        if self.raw.len() == out.len() {
            out.copy_from_slice(&self.raw);
        }
        let b = out;
        let big = b.len() > usize::from(GOOD_OLD_INODE_SIZE);
        if big {
            put_le16(b, I_EXTRA_ISIZE, self.extra_isize);
        }
        let extra_isize = if big { self.extra_isize } else { 0 };
        let len = b.len();
        let fits_at = |off: usize| fits32(len, extra_isize, off);
        put_le16(b, 0x0, self.mode);
        put_le16(b, 0x2, (self.uid & 0xFFFF) as u16);
        put_le16(b, 0x78, (self.uid >> 16) as u16);
        put_le16(b, 0x18, (self.gid & 0xFFFF) as u16);
        put_le16(b, 0x7A, (self.gid >> 16) as u16);
        put_le32(b, 0x4, (self.size & 0xFFFF_FFFF) as u32);
        put_le32(b, 0x6C, (self.size >> 32) as u32);
        put_le16(b, 0x1A, self.links_count);
        let blocks = self.blocks.min((1u64 << 48) - 1);
        put_le32(b, 0x1C, (blocks & 0xFFFF_FFFF) as u32);
        put_le16(b, 0x74, (blocks >> 32) as u16);
        put_le32(b, 0x20, self.flags & !EXT4_HUGE_FILE_FL);
        put_le32(b, 0x24, (self.version & 0xFFFF_FFFF) as u32);
        put(b, I_BLOCK_OFFSET, &self.i_block);
        put_le32(b, 0x64, self.generation);
        put_le32(b, 0x68, (self.file_acl & 0xFFFF_FFFF) as u32);
        put_le16(b, 0x76, (self.file_acl >> 32) as u16);
        put_le32(b, 0x14, self.dtime);
        for (t, base, extra) in [
            (self.atime, 0x8, 0x8C),
            (self.ctime, 0xC, 0x84),
            (self.mtime, 0x10, 0x88),
        ] {
            let has_extra = fits_at(extra);
            let (lo, ex) = encode_time(t, has_extra);
            put_le32(b, base, lo);
            if has_extra {
                put_le32(b, extra, ex);
            }
        }
        if fits_at(0x90) {
            let has_extra = fits_at(0x94);
            let (lo, ex) = encode_time(self.crtime, has_extra);
            put_le32(b, 0x90, lo);
            if has_extra {
                put_le32(b, 0x94, ex);
            }
        }
        if fits_at(0x98) {
            put_le32(b, 0x98, (self.version >> 32) as u32);
        }
        if fits_at(0x9C) {
            put_le32(b, 0x9C, self.projid);
        }
        if let Some(seed) = csum_seed {
            set_inode_csum(b, self.ino, seed);
        }
    }
}

/// An empty extent tree root in `i_block` (ext4_ext_tree_init): magic,
/// no entries, room for 4, depth 0.
pub(crate) fn init_extent_root(i_block: &mut [u8; I_BLOCK_SIZE]) {
    i_block.fill(0);
    put_le16(i_block, 0, 0xF30A);
    put_le16(i_block, 2, 0);
    put_le16(i_block, 4, ((I_BLOCK_SIZE - 12) / 12) as u16);
    put_le16(i_block, 6, 0);
}

/// Linux `new_encode_dev`.
pub(crate) fn new_encode_dev(major: u32, minor: u32) -> u32 {
    (minor & 0xff) | ((major & 0xfff) << 8) | ((minor & !0xff) << 12)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ext4::ondisk::superblock::tests as sbt;

    fn sb() -> Superblock {
        Superblock::parse(&sbt::sample(), 1 << 30).unwrap()
    }

    fn sample(ino: Ino) -> Vec<u8> {
        let mut r = vec![0u8; 256];
        r[0..2].copy_from_slice(&(S_IFREG | 0o644).to_le_bytes());
        r[2..4].copy_from_slice(&1000u16.to_le_bytes());
        r[0x78..0x7A].copy_from_slice(&1u16.to_le_bytes()); // uid hi
        r[4..8].copy_from_slice(&5000u32.to_le_bytes());
        r[0x8..0xC].copy_from_slice(&(-5i32).to_le_bytes()); // atime
        r[0x8C..0x90].copy_from_slice(&((123u32 << 2) | 1).to_le_bytes());
        r[0x10..0x14].copy_from_slice(&1_700_000_000u32.to_le_bytes());
        r[0x88..0x8C].copy_from_slice(&(999u32 << 2).to_le_bytes());
        r[0x1A..0x1C].copy_from_slice(&1u16.to_le_bytes());
        r[0x1C..0x20].copy_from_slice(&16u32.to_le_bytes());
        r[0x64..0x68].copy_from_slice(&77u32.to_le_bytes());
        r[0x80..0x82].copy_from_slice(&32u16.to_le_bytes());
        r[0xA0] = 0xEE; // first byte of the in-inode xattr area
        set_inode_csum(&mut r, ino, 0xabcd);
        r
    }

    #[test]
    fn parses_fields() {
        let i = Inode::parse(&sample(12), 12, &sb(), 0xabcd, 5).unwrap();
        assert_eq!(i.kind, FileKind::RegularFile);
        assert_eq!(i.perm(), 0o644);
        assert_eq!(i.uid, 65536 + 1000);
        assert_eq!(i.size, 5000);
        assert_eq!(
            i.atime,
            Timestamp {
                secs: -5 + (1 << 32),
                nsecs: 123
            }
        );
        assert_eq!(
            i.mtime,
            Timestamp {
                secs: 1_700_000_000,
                nsecs: 999
            }
        );
        assert_eq!(i.blocks, 16);
        assert_eq!(i.generation, 77);
        assert_eq!(i.inline_xattr_area().len(), 256 - 160);
        assert_eq!(i.inline_xattr_area()[0], 0xEE);
        assert_eq!(i.rdev(), 0);
    }

    #[test]
    fn checksum_covers_ino_and_bytes() {
        let r = sample(12);
        let e = Inode::parse(&r, 13, &sb(), 0xabcd, 5)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("inode 13: checksum mismatch") && e.contains("block 5"),
            "{e}"
        );
        let mut r2 = r.clone();
        r2[0xF0] ^= 1;
        assert!(Inode::parse(&r2, 12, &sb(), 0xabcd, 5).is_err());
    }

    #[test]
    fn huge_file_blocks_that_overflow_are_corrupt() {
        // 48-bit i_blocks in filesystem blocks, with a block-size shift
        // that would push it past 64 bits (the superblock check keeps a
        // real one below 7).
        let mut s = sb();
        s.s_feature_ro_compat |= RO_COMPAT_HUGE_FILE;
        s.s_log_block_size = 20;
        let mut r = sample(12);
        r[0x1C..0x20].copy_from_slice(&u32::MAX.to_le_bytes());
        r[0x74..0x76].copy_from_slice(&u16::MAX.to_le_bytes());
        r[0x20..0x24].copy_from_slice(&EXT4_HUGE_FILE_FL.to_le_bytes());
        set_inode_csum(&mut r, 12, 0xabcd);
        match Inode::parse(&r, 12, &s, 0xabcd, 5) {
            Err(Error::Corrupt { what, block }) => {
                assert_eq!(
                    what,
                    "inode 12: huge_file i_blocks 281474976710655 overflows"
                );
                assert_eq!(block, 5);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_mode_and_extra_isize() {
        let mut r = sample(12);
        r[1] = 0xF0; // type 0o170000
        set_inode_csum(&mut r, 12, 0xabcd);
        let e = Inode::parse(&r, 12, &sb(), 0xabcd, 5)
            .unwrap_err()
            .to_string();
        assert!(e.contains("bogus file type"), "{e}");
        let mut r = sample(12);
        r[0x80..0x82].copy_from_slice(&130u16.to_le_bytes());
        let e = Inode::parse(&r, 12, &sb(), 0xabcd, 5)
            .unwrap_err()
            .to_string();
        assert!(e.contains("bad extra_isize 130"), "{e}");
        let mut r = sample(12);
        r[0x6F] = 0x80; // i_size_high sign bit
        set_inode_csum(&mut r, 12, 0xabcd);
        let e = Inode::parse(&r, 12, &sb(), 0xabcd, 5)
            .unwrap_err()
            .to_string();
        assert!(e.contains("bad i_size"), "{e}");
        assert!(Inode::parse(&r[..100], 12, &sb(), 0xabcd, 5).is_err());
    }

    fn same(a: &Inode, b: &Inode) {
        assert_eq!(format!("{a:?}"), format!("{b:?}"));
    }

    /// parse(write(x)) == x; changed fields survive with a fresh checksum.
    #[test]
    fn write_round_trip() {
        let r = sample(12);
        let i = Inode::parse(&r, 12, &sb(), 0xabcd, 5).unwrap();
        let mut out = vec![0u8; 256];
        i.write(&mut out, Some(0xabcd));
        assert_eq!(out, r);
        let mut j = i.clone();
        j.mode = S_IFDIR | 0o755;
        j.kind = FileKind::Directory;
        j.uid = 0x1234_5678;
        j.gid = 0x8765_4321;
        j.size = 0x1_0000_0001;
        j.links_count = 3;
        j.blocks = 0xFFFF_FFF8; // hi half needs huge_file, which sample() lacks
        j.file_acl = (2u64 << 32) | 9;
        j.atime = Timestamp { secs: -1, nsecs: 5 };
        j.mtime = Timestamp {
            secs: (1i64 << 33) + 7,
            nsecs: 999_999_999,
        };
        j.ctime = Timestamp { secs: 0, nsecs: 1 };
        j.crtime = Timestamp { secs: 42, nsecs: 0 };
        j.dtime = 11;
        j.version = (3u64 << 32) | 4;
        j.projid = 99;
        j.generation = 1234;
        j.write(&mut out, Some(0xabcd));
        let back = Inode::parse(&out, 12, &sb(), 0xabcd, 5).unwrap();
        j.raw = out.clone().into_boxed_slice();
        same(&back, &j);
        // 128-byte inodes: no extra fields, times clamped to 32 bits.
        let mut small = vec![0u8; 128];
        let mut k = j.clone();
        k.raw = vec![0u8; 128].into_boxed_slice();
        k.extra_isize = 0;
        k.write(&mut small, None);
        assert_eq!(le32(&small, 0x10), i32::MAX as u32);
        assert_eq!(le32(&small, 0x8), u32::MAX);
    }

    #[test]
    fn inherited() {
        let parent = EXT4_DIRSYNC_FL | EXT4_NOATIME_FL | EXT4_INDEX_FL | EXT4_EXTENTS_FL;
        assert_eq!(
            inherited_flags(parent, S_IFDIR),
            EXT4_DIRSYNC_FL | EXT4_NOATIME_FL
        );
        assert_eq!(inherited_flags(parent, S_IFREG), EXT4_NOATIME_FL);
        assert_eq!(inherited_flags(parent, S_IFLNK), EXT4_NOATIME_FL);
    }

    #[test]
    fn rdev_encodings() {
        let mut r = sample(12);
        r[0..2].copy_from_slice(&(S_IFCHR | 0o600).to_le_bytes());
        r[0x28..0x2C].copy_from_slice(&0x0103u32.to_le_bytes()); // old 1:3
        set_inode_csum(&mut r, 12, 0xabcd);
        let i = Inode::parse(&r, 12, &sb(), 0xabcd, 5).unwrap();
        assert_eq!(i.rdev(), new_encode_dev(1, 3));
        r[0x28..0x2C].copy_from_slice(&0u32.to_le_bytes());
        r[0x2C..0x30].copy_from_slice(&new_encode_dev(259, 70000).to_le_bytes());
        set_inode_csum(&mut r, 12, 0xabcd);
        let i = Inode::parse(&r, 12, &sb(), 0xabcd, 5).unwrap();
        assert_eq!(i.rdev(), new_encode_dev(259, 70000));
    }
}
