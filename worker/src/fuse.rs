//! The fuser adapter: decode a FUSE request, call ONE engine method, reply.
//! No filesystem logic lives here; the engine ([`crate::ext4`]) knows
//! nothing of FUSE.
//!
//! Inode numbers: FUSE's root (1) is ext4's root (2). Every other ext4
//! inode number is used unchanged, except ext4's inode 1 (the bad-blocks
//! inode, never reachable from a sane directory, but a hostile image may
//! name it), which becomes [`BAD_BLOCKS_FUSE_INO`] so that it cannot alias
//! the root. FUSE inode 2 is never handed out and is answered ESTALE.
//!
//! Lookup counts: the engine reads inodes by number and keeps no per-inode
//! state for the kernel, so `forget` has nothing to release.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    AccessFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, InitFlags, KernelConfig, LockOwner, OpenAccMode, OpenFlags, ReplyAttr, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyLseek, ReplyOpen, ReplyStatfs,
    ReplyXattr, Request,
};

use crate::ext4::Ext4;
use crate::ext4::error::Error;
use crate::ext4::types::{Attr, FileKind, Ino, ROOT_INO, Timestamp, Whence};

/// FUSE inode number standing for ext4 inode 1 (bad blocks): outside the
/// 32-bit ext4 range, so it aliases nothing.
pub const BAD_BLOCKS_FUSE_INO: u64 = 1 << 32 | 1;

/// Largest read served in one request. The kernel never asks for more than
/// max_pages pages (1 MiB, set in `init`); a larger request is clamped.
pub const MAX_READ: u32 = 1 << 20;

/// max_write and max_readahead asked of the kernel.
const MAX_IO: u32 = 1 << 20;

/// Attribute and entry lifetime on read-only mounts: nothing changes
/// under the kernel's caches, so they can live long.
const TTL_READ_ONLY: Duration = Duration::from_secs(3600);
/// On read-write mounts every change goes through this worker and the
/// kernel updates its caches itself; a short TTL bounds any mistake.
const TTL_READ_WRITE: Duration = Duration::from_secs(1);

/// How many distinct corrupt objects are logged before logging stops
/// (a hostile image could otherwise flood the journal).
const MAX_CORRUPT_LOGGED: usize = 1024;

/// The one engine-error to errno mapping.
pub fn errno(err: &Error) -> Errno {
    match err {
        Error::NotFound => Errno::ENOENT,
        Error::NotDir => Errno::ENOTDIR,
        Error::IsDir => Errno::EISDIR,
        Error::NotEmpty => Errno::ENOTEMPTY,
        Error::Exists => Errno::EEXIST,
        Error::NoSpace => Errno::ENOSPC,
        Error::FileTooBig => Errno::EFBIG,
        Error::NameTooLong => Errno::ENAMETOOLONG,
        Error::NoAttribute => Errno::ENODATA,
        Error::TooManyLinks => Errno::EMLINK,
        Error::NotPermitted => Errno::EPERM,
        Error::Range => Errno::ERANGE,
        Error::TooBig => Errno::E2BIG,
        Error::Invalid(_) => Errno::EINVAL,
        Error::ReadOnly => Errno::EROFS,
        Error::Unsupported(_) => Errno::EOPNOTSUPP,
        Error::Io { .. } => Errno::EIO,
        // Refused at open time; if it shows up later, the object cannot be
        // served: an I/O error is what the kernel driver would report.
        Error::Incompatible(_) => Errno::EIO,
        Error::Corrupt { .. } => Errno::from_i32(libc::EUCLEAN),
        Error::Nxio => Errno::ENXIO,
        Error::NeedsRecovery => Errno::EIO,
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

fn file_type(kind: FileKind) -> FileType {
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

/// The fuser filesystem over the engine.
pub struct Adapter {
    fs: Ext4,
    read_only: bool,
    ttl: Duration,
    corrupt_logged: Mutex<HashSet<(String, u64)>>,
}

impl Adapter {
    pub fn new(fs: Ext4, read_only: bool) -> Self {
        Adapter {
            fs,
            read_only,
            ttl: if read_only {
                TTL_READ_ONLY
            } else {
                TTL_READ_WRITE
            },
            corrupt_logged: Mutex::new(HashSet::new()),
        }
    }

    /// Maps `err`, logging each corrupt object once.
    fn fail(&self, op: &str, ino: Ino, err: &Error) -> Errno {
        match err {
            Error::Corrupt { what, block } => {
                let first = self.corrupt_logged.lock().is_ok_and(|mut seen| {
                    seen.len() < MAX_CORRUPT_LOGGED && seen.insert((what.to_string(), *block))
                });
                if first {
                    tracing::warn!("{op} of inode {ino}: corrupt {what} (block {block})");
                }
            }
            Error::Io { .. } => tracing::warn!("{op} of inode {ino}: {err}"),
            _ => {}
        }
        errno(err)
    }

    /// An attribute for a readdirplus entry whose inode cannot be read:
    /// shown with TTL 0, so the next access looks it up again and gets the
    /// real error.
    fn placeholder_attr(ino: Ino, kind: FileKind) -> FileAttr {
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
}

macro_rules! ino_or_reply {
    ($ino:expr, $reply:expr) => {
        match ext4_ino($ino) {
            Ok(i) => i,
            Err(e) => return $reply.error(e),
        }
    };
}

impl Filesystem for Adapter {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        if let Err(nearest) = config.set_max_readahead(MAX_IO) {
            let _ = config.set_max_readahead(nearest);
        }
        if let Err(nearest) = config.set_max_write(MAX_IO) {
            let _ = config.set_max_write(nearest);
        }
        // Each asked for separately: a kernel lacking one still gets the
        // others. Deliberately not requested: HANDLE_KILLPRIV_V2 and
        // SETXATTR_EXT (fuser 0.18.0 mishandles both), WRITEBACK_CACHE,
        // EXPORT_SUPPORT.
        let mut wanted = InitFlags::FUSE_ASYNC_READ
            | InitFlags::FUSE_BIG_WRITES
            | InitFlags::FUSE_MAX_PAGES
            | InitFlags::FUSE_PARALLEL_DIROPS
            | InitFlags::FUSE_DO_READDIRPLUS
            | InitFlags::FUSE_READDIRPLUS_AUTO;
        if self.read_only {
            // Symlink targets never change on a read-only mount.
            wanted |= InitFlags::FUSE_CACHE_SYMLINKS;
            // The kernel enforces POSIX ACLs (read with getxattr, which the
            // engine answers in the generic xattr format), as ext4 does.
            // Read-write mounts need the engine to apply default ACLs on
            // create first (with this flag the kernel stops applying umask).
            wanted |= InitFlags::FUSE_POSIX_ACL;
        }
        for flag in wanted.iter() {
            if config.add_capabilities(flag).is_err() {
                tracing::debug!("kernel lacks FUSE capability {flag:?}");
            }
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let parent = ino_or_reply!(parent, reply);
        match self.fs.lookup(parent, name.as_bytes()) {
            Ok(a) => reply.entry(&self.ttl, &file_attr(&a), Generation(a.generation.into())),
            Err(e) => reply.error(self.fail("lookup", parent, &e)),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let ino = ino_or_reply!(ino, reply);
        match self.fs.getattr(ino) {
            Ok(a) => reply.attr(&self.ttl, &file_attr(&a)),
            Err(e) => reply.error(self.fail("getattr", ino, &e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let ino = ino_or_reply!(ino, reply);
        match self.fs.readlink(ino) {
            Ok(target) => reply.data(&target),
            Err(e) => reply.error(self.fail("readlink", ino, &e)),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let ino = ino_or_reply!(ino, reply);
        let writes = flags.acc_mode() != OpenAccMode::O_RDONLY || flags.0 & libc::O_TRUNC != 0;
        if writes && self.read_only {
            return reply.error(Errno::EROFS);
        }
        let open_flags = if self.read_only {
            // The data never changes under us: keep the page cache.
            FopenFlags::FOPEN_KEEP_CACHE
        } else {
            FopenFlags::empty()
        };
        // The handle is unused (reads go by inode number); a getattr makes
        // a vanished or corrupt inode fail here rather than on first read.
        match self.fs.getattr(ino) {
            Ok(a) if a.kind == FileKind::Directory => reply.error(Errno::EISDIR),
            Ok(_) => reply.opened(FileHandle(0), open_flags),
            Err(e) => reply.error(self.fail("open", ino, &e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let ino = ino_or_reply!(ino, reply);
        let mut buf = vec![0u8; size.min(MAX_READ) as usize];
        match self.fs.read(ino, offset, &mut buf) {
            Ok(n) => reply.data(buf.get(..n).unwrap_or(&buf)),
            Err(e) => reply.error(self.fail("read", ino, &e)),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // close(2) of a descriptor: nothing is buffered per handle here.
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let ino = ino_or_reply!(ino, reply);
        let open_flags = if self.read_only {
            FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_CACHE_DIR
        } else {
            FopenFlags::empty()
        };
        match self.fs.getattr(ino) {
            Ok(a) if a.kind != FileKind::Directory => reply.error(Errno::ENOTDIR),
            Ok(_) => reply.opened(FileHandle(0), open_flags),
            Err(e) => reply.error(self.fail("opendir", ino, &e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let ino = ino_or_reply!(ino, reply);
        let result = self.fs.readdir(ino, offset, &mut |e| {
            // add() returns true when the entry did not fit (and was not
            // added): stop, the kernel resumes from the previous cookie.
            !reply.add(
                fuse_ino(e.ino),
                e.next_offset,
                file_type(e.kind),
                OsStr::from_bytes(&e.name),
            )
        });
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(self.fail("readdir", ino, &e)),
        }
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let dir = ino_or_reply!(ino, reply);
        let result = self.fs.readdir(dir, offset, &mut |e| {
            let (attr, ttl, generation) = match self.fs.getattr(e.ino) {
                Ok(a) => (file_attr(&a), self.ttl, a.generation),
                Err(err) => {
                    let _ = self.fail("readdirplus", e.ino, &err);
                    (Self::placeholder_attr(e.ino, e.kind), Duration::ZERO, 0)
                }
            };
            !reply.add(
                fuse_ino(e.ino),
                e.next_offset,
                OsStr::from_bytes(&e.name),
                &ttl,
                &attr,
                Generation(generation.into()),
            )
        });
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(self.fail("readdirplus", dir, &e)),
        }
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match self.fs.statfs() {
            Ok(s) => reply.statfs(
                s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen, s.frsize,
            ),
            Err(e) => reply.error(self.fail("statfs", ROOT_INO, &e)),
        }
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let ino = ino_or_reply!(ino, reply);
        match self.fs.getxattr(ino, name.as_bytes()) {
            Ok(value) => reply_xattr(reply, &value, size),
            Err(e) => reply.error(self.fail("getxattr", ino, &e)),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let ino = ino_or_reply!(ino, reply);
        match self.fs.listxattr(ino) {
            Ok(names) => {
                let mut list = Vec::new();
                for name in names {
                    list.extend_from_slice(&name);
                    list.push(0);
                }
                reply_xattr(reply, &list, size);
            }
            Err(e) => reply.error(self.fail("listxattr", ino, &e)),
        }
    }

    fn access(&self, req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        let ino = ino_or_reply!(ino, reply);
        match self.fs.getattr(ino) {
            Ok(_) if mask.contains(AccessFlags::W_OK) && self.read_only => {
                reply.error(Errno::EROFS)
            }
            Ok(a) if access_allowed(&a, req.uid(), req.gid(), mask) => reply.ok(),
            Ok(_) => reply.error(Errno::EACCES),
            Err(e) => reply.error(self.fail("access", ino, &e)),
        }
    }

    fn lseek(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        let ino = ino_or_reply!(ino, reply);
        // The kernel answers SEEK_SET/CUR/END itself; only SEEK_DATA and
        // SEEK_HOLE reach the filesystem.
        let whence = match whence {
            libc::SEEK_DATA => Whence::Data,
            libc::SEEK_HOLE => Whence::Hole,
            _ => return reply.error(Errno::EINVAL),
        };
        let Ok(offset) = u64::try_from(offset) else {
            return reply.error(Errno::ENXIO);
        };
        match self.fs.seek(ino, offset, whence) {
            Ok(pos) => match i64::try_from(pos) {
                Ok(pos) => reply.offset(pos),
                Err(_) => reply.error(Errno::ENXIO),
            },
            Err(e) => reply.error(self.fail("lseek", ino, &e)),
        }
    }
}

/// getxattr/listxattr reply: size 0 asks for the size; a too-small
/// buffer gets ERANGE.
fn reply_xattr(reply: ReplyXattr, value: &[u8], size: u32) {
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
