//! Conversions between the engine and FUSE: the one errno mapping,
//! attributes, file types, times, fallocate modes and access checks.
//!
//! Inode numbers: FUSE's root (1) is ext4's root (2). Every other ext4
//! inode number is used unchanged, except ext4's inode 1 (the bad-blocks
//! inode, never reachable from a sane directory, but a hostile image may
//! name it), which becomes [`BAD_BLOCKS_FUSE_INO`] so that it cannot alias
//! the root. FUSE inode 2 is never handed out and is answered ESTALE.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{AccessFlags, Errno, FileAttr, FileType, INodeNo, ReplyXattr, TimeOrNow};

use crate::ext4::error::Error;
use crate::ext4::file::write::FallocMode;
use crate::ext4::types::{Attr, FileKind, Ino, ROOT_INO, TimeSet, Timestamp};

/// FUSE inode number standing for ext4 inode 1 (bad blocks): outside the
/// 32-bit ext4 range, so it aliases nothing.
pub const BAD_BLOCKS_FUSE_INO: u64 = 1 << 32 | 1;

/// fallocate(2) mode bits (linux/falloc.h) the engine implements; any
/// other bit is EOPNOTSUPP, as on a kernel ext4 without that feature.
const FALLOC_FL_KEEP_SIZE: i32 = 0x01;
const FALLOC_FL_PUNCH_HOLE: i32 = 0x02;
const FALLOC_FL_ZERO_RANGE: i32 = 0x10;

/// The one engine-error to errno mapping.
pub fn errno(err: &Error) -> Errno {
    match err {
        Error::NotFound => Errno::ENOENT,
        Error::NotDir => Errno::ENOTDIR,
        Error::IsDir => Errno::EISDIR,
        Error::NotEmpty => Errno::ENOTEMPTY,
        Error::Exists => Errno::EEXIST,
        Error::NoSpace => Errno::ENOSPC,
        Error::QuotaExceeded => Errno::EDQUOT,
        Error::FileTooBig => Errno::EFBIG,
        Error::NameTooLong => Errno::ENAMETOOLONG,
        Error::NoAttribute => Errno::ENODATA,
        Error::TooManyLinks => Errno::EMLINK,
        Error::NotPermitted => Errno::EPERM,
        Error::AccessDenied => Errno::EACCES,
        Error::Range => Errno::ERANGE,
        Error::TooBig => Errno::E2BIG,
        Error::Invalid(_) => Errno::EINVAL,
        Error::ReadOnly => Errno::EROFS,
        Error::NoKey => Errno::from_i32(libc::ENOKEY),
        Error::Unsupported(_) => Errno::EOPNOTSUPP,
        Error::Io { .. } => Errno::EIO,
        Error::Verity(_) => Errno::EIO,
        // Refused at open time; if it shows up later, the object cannot be
        // served: an I/O error is what the kernel driver would report.
        Error::Incompatible(_) => Errno::EIO,
        Error::Corrupt { .. } => Errno::from_i32(libc::EUCLEAN),
        Error::Nxio => Errno::ENXIO,
        Error::NeedsRecovery => Errno::EIO,
        Error::WriteLost => Errno::EIO,
    }
}

/// ext4 inode number -> FUSE inode number.
pub fn fuse_ino(ino: Ino) -> INodeNo {
    match ino {
        ROOT_INO => INodeNo::ROOT,
        1 => INodeNo(BAD_BLOCKS_FUSE_INO),
        n => INodeNo(u64::from(n)),
    }
}

/// FUSE inode number -> ext4 inode number; ESTALE for numbers never
/// handed out.
pub fn ext4_ino(ino: INodeNo) -> Result<Ino, Errno> {
    match ino.0 {
        1 => Ok(ROOT_INO),
        2 => Err(Errno::ESTALE),
        BAD_BLOCKS_FUSE_INO => Ok(1),
        n => Ino::try_from(n).map_err(|_| Errno::ESTALE),
    }
}

pub(super) fn file_type(kind: FileKind) -> FileType {
    match kind {
        FileKind::RegularFile => FileType::RegularFile,
        FileKind::Directory => FileType::Directory,
        FileKind::Symlink => FileType::Symlink,
        FileKind::CharDevice => FileType::CharDevice,
        FileKind::BlockDevice => FileType::BlockDevice,
        FileKind::Fifo => FileType::NamedPipe,
        FileKind::Socket => FileType::Socket,
    }
}

/// Engine timestamp -> SystemTime, clamped to what SystemTime can hold.
fn system_time(t: Timestamp) -> SystemTime {
    let nanos = Duration::from_nanos(u64::from(t.nsecs.min(999_999_999)));
    let moved = if t.secs >= 0 {
        UNIX_EPOCH.checked_add(Duration::from_secs(t.secs.unsigned_abs()))
    } else {
        UNIX_EPOCH.checked_sub(Duration::from_secs(t.secs.unsigned_abs()))
    };
    moved
        .and_then(|s| s.checked_add(nanos))
        .unwrap_or(UNIX_EPOCH)
}

/// A time in a SETATTR request -> engine timestamp. fuser 0.18.0 decodes
/// the kernel's (secs < 0, nsecs) as `UNIX_EPOCH - (-secs s + nsecs ns)`
/// (its own TODO), so before the epoch the duration's seconds and
/// nanoseconds are the kernel's fields as they were. Never panics.
pub fn request_timestamp(t: SystemTime) -> Timestamp {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => Timestamp {
            secs: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            nsecs: d.subsec_nanos(),
        },
        Err(e) => Timestamp {
            secs: i64::try_from(e.duration().as_secs()).map_or(i64::MIN, |s| -s),
            nsecs: e.duration().subsec_nanos(),
        },
    }
}

pub(super) fn time_set(t: TimeOrNow) -> TimeSet {
    match t {
        TimeOrNow::Now => TimeSet::Now,
        TimeOrNow::SpecificTime(t) => TimeSet::At(request_timestamp(t)),
    }
}

/// fallocate mode bits -> engine mode; None for bits it does not do.
pub fn falloc_mode(mode: i32) -> Option<FallocMode> {
    if mode & !(FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE) != 0 {
        return None;
    }
    Some(FallocMode {
        keep_size: mode & FALLOC_FL_KEEP_SIZE != 0,
        punch_hole: mode & FALLOC_FL_PUNCH_HOLE != 0,
        zero_range: mode & FALLOC_FL_ZERO_RANGE != 0,
    })
}

pub fn file_attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: fuse_ino(a.ino),
        size: a.size,
        blocks: a.blocks,
        atime: system_time(a.atime),
        mtime: system_time(a.mtime),
        ctime: system_time(a.ctime),
        crtime: system_time(a.crtime),
        kind: file_type(a.kind),
        perm: a.perm & 0o7777,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev,
        blksize: a.blksize,
        flags: 0,
    }
}

/// Answers access(2) from the mode bits for the caller's uid and primary
/// gid (FUSE does not pass supplementary groups). Root may read and write
/// anything and execute anything with at least one x bit.
pub fn access_allowed(attr: &Attr, uid: u32, gid: u32, mask: AccessFlags) -> bool {
    let want = mask.bits() & 0o7;
    if want == 0 {
        return true;
    }
    let perm = u32::from(attr.perm);
    if uid == 0 {
        let needs_x = want & libc::X_OK != 0;
        return !needs_x || perm & 0o111 != 0 || attr.kind == FileKind::Directory;
    }
    let class = if uid == attr.uid {
        perm >> 6
    } else if gid == attr.gid {
        perm >> 3
    } else {
        perm
    } & 0o7;
    let want = u32::try_from(want).unwrap_or(0o7);
    class & want == want
}

/// An attribute for a readdirplus entry whose inode cannot be read:
/// shown with TTL 0, so the next access looks it up again and gets the
/// real error.
pub(super) fn placeholder_attr(ino: Ino, kind: FileKind) -> FileAttr {
    file_attr(&Attr {
        ino,
        kind,
        perm: 0,
        nlink: 1,
        uid: 0,
        gid: 0,
        size: 0,
        blocks: 0,
        atime: Timestamp::default(),
        mtime: Timestamp::default(),
        ctime: Timestamp::default(),
        crtime: Timestamp::default(),
        rdev: 0,
        generation: 0,
        blksize: 4096,
    })
}

/// The entry reply for a name that does not exist: node id 0, which the
/// kernel keeps as a negative dentry for the entry timeout, so looking the
/// same missing name up again (a search path, a build's probes) costs no
/// round trip.
pub(super) fn negative_entry_attr() -> FileAttr {
    let mut a = placeholder_attr(ROOT_INO, FileKind::RegularFile);
    a.ino = INodeNo(0);
    a
}

/// getxattr/listxattr reply: size 0 asks for the size; a too-small
/// buffer gets ERANGE.
pub(super) fn reply_xattr(reply: ReplyXattr, value: &[u8], size: u32) {
    let Ok(len) = u32::try_from(value.len()) else {
        return reply.error(Errno::E2BIG);
    };
    if size == 0 {
        reply.size(len);
    } else if len > size {
        reply.error(Errno::ERANGE);
    } else {
        reply.data(value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(kind: FileKind, perm: u16, uid: u32, gid: u32) -> Attr {
        Attr {
            ino: 12,
            kind,
            perm,
            nlink: 1,
            uid,
            gid,
            size: 0,
            blocks: 0,
            atime: Timestamp::default(),
            mtime: Timestamp::default(),
            ctime: Timestamp::default(),
            crtime: Timestamp::default(),
            rdev: 0,
            generation: 0,
            blksize: 4096,
        }
    }

    #[test]
    fn inode_numbers_map_both_ways_without_aliasing() {
        assert_eq!(fuse_ino(ROOT_INO), INodeNo::ROOT);
        assert_eq!(ext4_ino(INodeNo::ROOT), Ok(ROOT_INO));
        assert_eq!(fuse_ino(1), INodeNo(BAD_BLOCKS_FUSE_INO));
        assert_eq!(ext4_ino(INodeNo(BAD_BLOCKS_FUSE_INO)), Ok(1));
        assert_eq!(ext4_ino(INodeNo(2)), Err(Errno::ESTALE));
        assert_eq!(ext4_ino(INodeNo(1 << 33)), Err(Errno::ESTALE));
        for n in [3, 11, 12, u32::MAX] {
            assert_eq!(ext4_ino(fuse_ino(n)), Ok(n));
        }
    }

    #[test]
    fn errno_mapping() {
        assert_eq!(errno(&Error::NotFound), Errno::ENOENT);
        assert_eq!(
            errno(&Error::corrupt("inode 12", 7)),
            Errno::from_i32(libc::EUCLEAN)
        );
        assert_eq!(errno(&Error::NoAttribute), Errno::ENODATA);
        assert_eq!(errno(&Error::ReadOnly), Errno::EROFS);
        assert_eq!(errno(&Error::NeedsRecovery), Errno::EIO);
        assert_eq!(errno(&Error::Nxio), Errno::ENXIO);
    }

    #[test]
    fn timestamps_convert_including_negative() {
        let t = system_time(Timestamp {
            secs: -1,
            nsecs: 500_000_000,
        });
        assert_eq!(
            UNIX_EPOCH.duration_since(t).expect("before epoch"),
            Duration::from_millis(500)
        );
        let t = system_time(Timestamp {
            secs: 1_700_000_000,
            nsecs: 42,
        });
        assert_eq!(
            t.duration_since(UNIX_EPOCH).expect("after epoch"),
            Duration::new(1_700_000_000, 42)
        );
        // Out-of-range nanoseconds are clamped, never panic.
        let _ = system_time(Timestamp {
            secs: i64::MIN,
            nsecs: u32::MAX,
        });
        let _ = system_time(Timestamp {
            secs: i64::MAX,
            nsecs: u32::MAX,
        });
    }

    #[test]
    fn request_times_undo_fusers_pre_epoch_decoding() {
        // What fuser 0.18.0 makes of the kernel's (-527968956, 605150818).
        let t = UNIX_EPOCH - Duration::new(527_968_956, 605_150_818);
        assert_eq!(
            request_timestamp(t),
            Timestamp {
                secs: -527_968_956,
                nsecs: 605_150_818
            }
        );
        let t = UNIX_EPOCH + Duration::new(1_700_000_000, 42);
        assert_eq!(
            request_timestamp(t),
            Timestamp {
                secs: 1_700_000_000,
                nsecs: 42
            }
        );
    }

    #[test]
    fn access_from_mode_bits() {
        let a = attr(FileKind::RegularFile, 0o640, 1000, 100);
        assert!(access_allowed(
            &a,
            1000,
            1,
            AccessFlags::R_OK | AccessFlags::W_OK
        ));
        assert!(!access_allowed(&a, 1000, 1, AccessFlags::X_OK));
        assert!(access_allowed(&a, 2000, 100, AccessFlags::R_OK));
        assert!(!access_allowed(&a, 2000, 100, AccessFlags::W_OK));
        assert!(!access_allowed(&a, 2000, 200, AccessFlags::R_OK));
        assert!(access_allowed(&a, 2000, 200, AccessFlags::F_OK));
        // Root: everything but exec without any x bit.
        assert!(access_allowed(
            &a,
            0,
            0,
            AccessFlags::R_OK | AccessFlags::W_OK
        ));
        assert!(!access_allowed(&a, 0, 0, AccessFlags::X_OK));
        let x = attr(FileKind::RegularFile, 0o001, 1000, 100);
        assert!(access_allowed(&x, 0, 0, AccessFlags::X_OK));
    }
}
