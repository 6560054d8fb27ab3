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
//! Lookup and open counts (the FORGET contract): every reply that hands
//! the kernel an inode (lookup, create, mknod, mkdir, symlink, link, and
//! each readdirplus entry but `.` and `..`) adds one to its lookup count;
//! forget (and batch_forget, through fuser's default) takes the kernel's
//! count off (saturating). The adapter also counts open handles. An inode
//! whose last name goes away (unlink, rmdir, or rename over it) stays on
//! the orphan list, readable
//! and writable by number (`hold_orphan`), while the kernel still knows it
//! (lookup count) or has it open (handles): the kernel may still send
//! setattr, write or flush for it (e.g. cached times at syncfs). When both
//! counts reach zero (or at once, when neither was held) the engine frees
//! it (`release_inode`). At unmount (`destroy`) every such inode is freed
//! and the engine shuts down (everything written, superblock marked
//! clean); the kernel does not promise forgets at unmount.
//!
//! Write-back: the engine keeps committed metadata in memory. Besides
//! fsync, fsyncdir and unmount, a flusher thread started at `init` writes
//! it back every [`WRITEBACK_INTERVAL`] (the kernel's dirty_writeback
//! interval). syncfs(2) does not reach a FUSE server (the kernel sends
//! FUSE_SYNCFS to virtiofs only): fsync a file or directory for
//! durability.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    AccessFlags, BsdFileFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags,
    Generation, INodeNo, InitFlags, KernelConfig, LockOwner, OpenAccMode, OpenFlags, ReplyAttr,
    ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyLseek,
    ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};

use crate::ext4::Ext4;
use crate::ext4::error::Error;
use crate::ext4::file::write::FallocMode;
use crate::ext4::types::{
    Attr, FileKind, Ino, ROOT_INO, RenameFlags, SetAttr, TimeSet, Timestamp, Whence, XattrFlags,
};
use crate::ext4::xattr::acl::Caller;

/// FUSE inode number standing for ext4 inode 1 (bad blocks): outside the
/// 32-bit ext4 range, so it aliases nothing.
pub const BAD_BLOCKS_FUSE_INO: u64 = 1 << 32 | 1;

/// Largest read served in one request. The kernel never asks for more than
/// max_pages pages (1 MiB, set in `init`); a larger request is clamped.
pub const MAX_READ: u32 = 1 << 20;

/// The kernel's page size on the platforms served (x86-64, arm64 with 4K).
const PAGE_SIZE: u32 = 4096;

/// max_write and max_readahead asked of the kernel.
const MAX_IO: u32 = 1 << 20;

/// Attribute and entry lifetime. Read-only: nothing changes under the
/// kernel's caches. Read-write: every change goes through this worker, by
/// a request of the kernel, which updates or invalidates its own caches
/// (and with the writeback cache trusts its own sizes and times): nothing
/// changes behind its back either, so the same long lifetime holds.
const TTL: Duration = Duration::from_secs(3600);

/// How often the flusher thread writes committed metadata back.
const WRITEBACK_INTERVAL: Duration = Duration::from_secs(5);
/// How often the flusher thread checks whether the mount is ending.
const WRITEBACK_TICK: Duration = Duration::from_millis(200);

/// fallocate(2) mode bits (linux/falloc.h) the engine implements; any
/// other bit is EOPNOTSUPP, as on a kernel ext4 without that feature.
const FALLOC_FL_KEEP_SIZE: i32 = 0x01;
const FALLOC_FL_PUNCH_HOLE: i32 = 0x02;
const FALLOC_FL_ZERO_RANGE: i32 = 0x10;

/// setxattr(2) flags.
const XATTR_CREATE: i32 = 1;
const XATTR_REPLACE: i32 = 2;

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
        Error::AccessDenied => Errno::EACCES,
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

fn time_set(t: TimeOrNow) -> TimeSet {
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

/// Per-inode kernel references (see the module documentation).
#[derive(Debug, Default, Clone, Copy)]
struct OpenState {
    handles: u64,
    /// The kernel's lookup count (nlookup).
    lookups: u64,
    /// The last name is gone: free the inode when both counts are zero.
    unlinked: bool,
}

impl OpenState {
    fn idle(&self) -> bool {
        self.handles == 0 && self.lookups == 0
    }
}

/// The fuser filesystem over the engine.
pub struct Adapter {
    fs: Arc<Ext4>,
    read_only: bool,
    ttl: Duration,
    corrupt_logged: Mutex<HashSet<(String, u64)>>,
    /// Inodes the kernel holds (lookups or open handles); entries are
    /// removed when both counts are zero.
    open: Mutex<HashMap<Ino, OpenState>>,
    /// Tells the flusher thread to stop (set at destroy).
    stop_flusher: Arc<AtomicBool>,
}

impl Adapter {
    pub fn new(fs: Ext4, read_only: bool) -> Self {
        Adapter {
            fs: Arc::new(fs),
            read_only,
            ttl: TTL,
            corrupt_logged: Mutex::new(HashSet::new()),
            open: Mutex::new(HashMap::new()),
            stop_flusher: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Starts the periodic write-back thread (read-write mounts; after the
    /// sandbox, which is in force before the FUSE session starts).
    fn start_flusher(&self) {
        let fs = Arc::clone(&self.fs);
        let stop = Arc::clone(&self.stop_flusher);
        let spawned = std::thread::Builder::new()
            .name("writeback".into())
            .spawn(move || {
                let mut waited = Duration::ZERO;
                let mut failed = false;
                while !stop.load(Ordering::Acquire) {
                    std::thread::sleep(WRITEBACK_TICK);
                    waited = waited.saturating_add(WRITEBACK_TICK);
                    if waited < WRITEBACK_INTERVAL {
                        continue;
                    }
                    waited = Duration::ZERO;
                    if let Err(e) = fs.writeback() {
                        if !failed {
                            tracing::error!("periodic metadata write-back failed: {e}");
                        }
                        failed = true;
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(
                "no write-back thread ({e}): metadata reaches the device at fsync and unmount"
            );
        }
    }

    /// Replies to a request that hands the kernel a new reference to an
    /// inode (lookup, mknod, mkdir, symlink, link): the reply counts as one
    /// lookup, undone by a later FORGET.
    fn reply_entry(&self, reply: ReplyEntry, op: &str, ino: Ino, res: Result<Attr, Error>) {
        match res {
            Ok(a) => {
                self.looked_up(a.ino);
                reply.entry(&self.ttl, &file_attr(&a), Generation(a.generation.into()))
            }
            Err(e) => reply.error(self.fail(op, ino, &e)),
        }
    }

    /// The kernel got a reference to `ino` (an entry reply).
    fn looked_up(&self, ino: Ino) {
        if let Ok(mut open) = self.open.lock() {
            let st = open.entry(ino).or_default();
            st.lookups = st.lookups.saturating_add(1);
        }
    }

    /// The kernel dropped `n` references to `ino`: frees the inode if it
    /// was the last reference and its last name is gone.
    fn forgotten(&self, ino: Ino, n: u64) {
        let free = match self.open.lock() {
            Ok(mut open) => match open.get_mut(&ino) {
                Some(st) => {
                    st.lookups = st.lookups.saturating_sub(n);
                    let idle = st.idle();
                    let unlinked = st.unlinked;
                    if idle {
                        open.remove(&ino);
                    }
                    idle && unlinked
                }
                None => false,
            },
            Err(_) => false,
        };
        if free {
            self.free_inode(ino);
        }
    }

    /// A handle to `ino` was opened.
    fn opened(&self, ino: Ino) {
        if let Ok(mut open) = self.open.lock() {
            let st = open.entry(ino).or_default();
            st.handles = st.handles.saturating_add(1);
        }
    }

    /// A handle to `ino` was released: frees the inode if it was its last
    /// handle and its last name is gone.
    fn closed(&self, ino: Ino) {
        let free = match self.open.lock() {
            Ok(mut open) => match open.get_mut(&ino) {
                Some(st) => {
                    st.handles = st.handles.saturating_sub(1);
                    let done = st.idle();
                    let unlinked = st.unlinked;
                    if done {
                        open.remove(&ino);
                    }
                    done && unlinked
                }
                None => false,
            },
            Err(_) => false,
        };
        if free {
            self.free_inode(ino);
        }
    }

    /// The engine reports that `ino` lost its last name: free it now if
    /// the kernel holds no reference, else when the last one goes.
    fn unlinked(&self, ino: Ino) {
        let now = match self.open.lock() {
            Ok(mut open) => match open.get_mut(&ino) {
                Some(st) if !st.idle() => {
                    st.unlinked = true;
                    // Still readable and writable by number until the
                    // last release or forget.
                    self.fs.hold_orphan(ino);
                    false
                }
                _ => true,
            },
            // A poisoned map: leave the inode on the orphan list, where
            // the next mount (or e2fsck) frees it.
            Err(_) => false,
        };
        if now {
            self.free_inode(ino);
        }
    }

    fn free_inode(&self, ino: Ino) {
        if let Err(e) = self.fs.release_inode(ino) {
            // It stays on the orphan list: the next mount or e2fsck frees it.
            let _ = self.fail("release of unlinked inode", ino, &e);
            tracing::warn!("inode {ino}: freeing at last close failed: {e}");
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

/// Refuses a modifying request on a read-only mount.
macro_rules! writable_or_reply {
    ($self:expr, $reply:expr) => {
        if $self.read_only {
            return $reply.error(Errno::EROFS);
        }
    };
}

fn name_bytes(name: &OsStr) -> &[u8] {
    name.as_bytes()
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
        // SETXATTR_EXT (fuser 0.18.0 mishandles both), EXPORT_SUPPORT.
        let mut wanted = InitFlags::FUSE_ASYNC_READ
            | InitFlags::FUSE_BIG_WRITES
            | InitFlags::FUSE_MAX_PAGES
            | InitFlags::FUSE_PARALLEL_DIROPS
            | InitFlags::FUSE_DO_READDIRPLUS
            | InitFlags::FUSE_READDIRPLUS_AUTO;
        // The kernel enforces POSIX ACLs in its permission checks (reading
        // them with getxattr, which the engine answers in the generic xattr
        // format), as it does on ext4.
        wanted |= InitFlags::FUSE_POSIX_ACL;
        if self.read_only {
            // Symlink targets never change on a read-only mount.
            wanted |= InitFlags::FUSE_CACHE_SYMLINKS;
        } else {
            // With POSIX_ACL the kernel leaves the umask to the server
            // (DONT_MASK makes that explicit): the engine applies it only
            // where the parent has no default ACL, and does every ACL mode
            // update itself (see ext4::xattr::acl).
            wanted |= InitFlags::FUSE_DONT_MASK;
            // The kernel caches written pages and sends them in large
            // writes; it keeps i_size and mtime itself and tells us with
            // setattr.
            //
            // Not below page-sized blocks: the kernel writes cached pages
            // back whole, so a 1 KiB write into a hole would allocate the
            // page's other three blocks with zeros, where ext4 leaves
            // holes.
            if self.fs.block_size() >= PAGE_SIZE {
                wanted |= InitFlags::FUSE_WRITEBACK_CACHE;
            }
        }
        for flag in wanted.iter() {
            if config.add_capabilities(flag).is_err() {
                tracing::debug!("kernel lacks FUSE capability {flag:?}");
            }
        }
        if !self.read_only {
            self.start_flusher();
        }
        Ok(())
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        if let Ok(ino) = ext4_ino(ino) {
            self.forgotten(ino, nlookup);
        }
    }

    // batch_forget: fuser's default calls `forget` for each node (fuser
    // 0.18.0 does not export ForgetOne, so it cannot be overridden).

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let parent = ino_or_reply!(parent, reply);
        let res = self.fs.lookup(parent, name.as_bytes());
        self.reply_entry(reply, "lookup", parent, res);
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
            Ok(_) => {
                self.opened(ino);
                reply.opened(FileHandle(0), open_flags)
            }
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
        ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let ino = ino_or_reply!(ino, reply);
        // Answer first: nothing the kernel waits for depends on freeing.
        reply.ok();
        self.closed(ino);
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
            Ok(_) => {
                // Counted like files: an open directory removed by rmdir
                // is freed at its last releasedir.
                self.opened(ino);
                reply.opened(FileHandle(0), open_flags);
            }
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
            let full = reply.add(
                fuse_ino(e.ino),
                e.next_offset,
                OsStr::from_bytes(&e.name),
                &ttl,
                &attr,
                Generation(generation.into()),
            );
            // The kernel takes a lookup reference on every entry it
            // receives but `.` and `..` (fuse_direntplus_link).
            if !full && e.name != b"." && e.name != b".." {
                self.looked_up(e.ino);
            }
            !full
        });
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(self.fail("readdirplus", dir, &e)),
        }
    }

    fn releasedir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        let ino = ino_or_reply!(ino, reply);
        reply.ok();
        self.closed(ino);
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

    fn listxattr(&self, req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let ino = ino_or_reply!(ino, reply);
        match self.fs.listxattr(ino) {
            Ok(names) => {
                let mut list = Vec::new();
                // Like ext4_xattr_trusted_list: trusted.* names are shown
                // only to CAP_SYS_ADMIN, which over FUSE means root.
                let show_trusted = req.uid() == 0;
                for name in names {
                    if !show_trusted && name.starts_with(b"trusted.") {
                        continue;
                    }
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

    fn destroy(&mut self) {
        self.stop_flusher.store(true, Ordering::Release);
        if self.read_only {
            return;
        }
        // Unlinked inodes still open at unmount (a lazy unmount, or a
        // connection abort): free them now rather than leave orphans.
        let pending: Vec<Ino> = match self.open.lock() {
            Ok(mut open) => open
                .drain()
                .filter(|(_, st)| st.unlinked)
                .map(|(ino, _)| ino)
                .collect(),
            Err(_) => Vec::new(),
        };
        for ino in pending {
            self.free_inode(ino);
        }
        match self.fs.shutdown() {
            Ok(()) => tracing::info!("filesystem written and marked clean"),
            Err(e) => tracing::error!("unmount: could not write the filesystem clean: {e}"),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let ino = ino_or_reply!(ino, reply);
        writable_or_reply!(self, reply);
        let set = SetAttr {
            // The type bits are the inode's own; only permission bits change.
            mode: mode.map(|m| (m & 0o7777) as u16),
            uid,
            gid,
            size,
            atime: atime.map(time_set),
            mtime: mtime.map(time_set),
            ctime: ctime.map(|t| TimeSet::At(request_timestamp(t))),
        };
        match self.fs.setattr(ino, set) {
            Ok(a) => reply.attr(&self.ttl, &file_attr(&a)),
            Err(e) => reply.error(self.fail("setattr", ino, &e)),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let parent = ino_or_reply!(parent, reply);
        writable_or_reply!(self, reply);
        // With DONT_MASK the mode comes unmasked; the engine applies the
        // umask or the parent's default ACL.
        let Ok(mode) = u16::try_from(mode) else {
            return reply.error(Errno::EINVAL);
        };
        let res = self.fs.create(
            parent,
            name_bytes(name),
            mode,
            rdev,
            req.uid(),
            req.gid(),
            umask,
        );
        self.reply_entry(reply, "mknod", parent, res);
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let parent = ino_or_reply!(parent, reply);
        writable_or_reply!(self, reply);
        let Ok(mode) = u16::try_from(mode) else {
            return reply.error(Errno::EINVAL);
        };
        match self.fs.create(
            parent,
            name_bytes(name),
            mode,
            0,
            req.uid(),
            req.gid(),
            umask,
        ) {
            Ok(a) => {
                self.looked_up(a.ino);
                self.opened(a.ino);
                reply.created(
                    &self.ttl,
                    &file_attr(&a),
                    Generation(a.generation.into()),
                    FileHandle(0),
                    FopenFlags::empty(),
                )
            }
            Err(e) => reply.error(self.fail("create", parent, &e)),
        }
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let parent = ino_or_reply!(parent, reply);
        writable_or_reply!(self, reply);
        let perm = (mode & 0o7777) as u16;
        let res = self
            .fs
            .mkdir(parent, name_bytes(name), perm, req.uid(), req.gid(), umask);
        self.reply_entry(reply, "mkdir", parent, res);
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let parent = ino_or_reply!(parent, reply);
        writable_or_reply!(self, reply);
        let res = self.fs.symlink(
            parent,
            name_bytes(link_name),
            target.as_os_str().as_bytes(),
            req.uid(),
            req.gid(),
        );
        self.reply_entry(reply, "symlink", parent, res);
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let ino = ino_or_reply!(ino, reply);
        let newparent = ino_or_reply!(newparent, reply);
        writable_or_reply!(self, reply);
        let res = self.fs.link(ino, newparent, name_bytes(newname));
        self.reply_entry(reply, "link", ino, res);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let parent = ino_or_reply!(parent, reply);
        writable_or_reply!(self, reply);
        match self.fs.unlink(parent, name_bytes(name)) {
            Ok(gone) => {
                // Before the reply: the caller's next request on an open
                // handle must find the inode held.
                if let Some(ino) = gone {
                    self.unlinked(ino);
                }
                reply.ok();
            }
            Err(e) => reply.error(self.fail("unlink", parent, &e)),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let parent = ino_or_reply!(parent, reply);
        writable_or_reply!(self, reply);
        match self.fs.rmdir(parent, name_bytes(name)) {
            Ok(gone) => {
                reply.ok();
                if let Some(ino) = gone {
                    self.unlinked(ino);
                }
            }
            Err(e) => reply.error(self.fail("rmdir", parent, &e)),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: fuser::RenameFlags,
        reply: ReplyEmpty,
    ) {
        let parent = ino_or_reply!(parent, reply);
        let newparent = ino_or_reply!(newparent, reply);
        writable_or_reply!(self, reply);
        let known = fuser::RenameFlags::RENAME_NOREPLACE
            | fuser::RenameFlags::RENAME_EXCHANGE
            | fuser::RenameFlags::RENAME_WHITEOUT;
        if !known.contains(flags) {
            return reply.error(Errno::EINVAL);
        }
        let flags = RenameFlags {
            noreplace: flags.contains(fuser::RenameFlags::RENAME_NOREPLACE),
            exchange: flags.contains(fuser::RenameFlags::RENAME_EXCHANGE),
            whiteout: flags.contains(fuser::RenameFlags::RENAME_WHITEOUT),
        };
        match self.fs.rename(
            parent,
            name_bytes(name),
            newparent,
            name_bytes(newname),
            flags,
        ) {
            Ok(gone) => {
                // Before the reply: the caller's next request on an open
                // handle must find the inode held.
                if let Some(ino) = gone {
                    self.unlinked(ino);
                }
                reply.ok();
            }
            Err(e) => reply.error(self.fail("rename", parent, &e)),
        }
    }

    fn write(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let ino = ino_or_reply!(ino, reply);
        writable_or_reply!(self, reply);
        // Root may use the reserved blocks, as on ext4. Page-cache
        // writeback arrives as the kernel (uid 0): it was accepted by the
        // page cache already.
        match self.fs.write_as(ino, offset, data, req.uid() == 0) {
            Ok(n) => reply.written(u32::try_from(n).unwrap_or(u32::MAX)),
            Err(e) => reply.error(self.fail("write", ino, &e)),
        }
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let ino = ino_or_reply!(ino, reply);
        // Data is written when its request completes; fsync writes the
        // committed metadata back and flushes the device.
        match self.fs.flush() {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(self.fail("fsync", ino, &e)),
        }
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let ino = ino_or_reply!(ino, reply);
        match self.fs.flush() {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(self.fail("fsyncdir", ino, &e)),
        }
    }

    fn setxattr(
        &self,
        req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        position: u32,
        reply: ReplyEmpty,
    ) {
        let ino = ino_or_reply!(ino, reply);
        writable_or_reply!(self, reply);
        if position != 0 || flags & !(XATTR_CREATE | XATTR_REPLACE) != 0 {
            return reply.error(Errno::EINVAL);
        }
        let flags = XattrFlags {
            create: flags & XATTR_CREATE != 0,
            replace: flags & XATTR_REPLACE != 0,
        };
        // The caller's ids decide whether an access ACL clears S_ISGID
        // (the kernel's FUSE_SETXATTR_ACL_KILL_SGID needs SETXATTR_EXT).
        let caller = Caller {
            uid: req.uid(),
            gid: req.gid(),
        };
        match self
            .fs
            .setxattr_as(ino, name_bytes(name), value, flags, caller)
        {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(self.fail("setxattr", ino, &e)),
        }
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let ino = ino_or_reply!(ino, reply);
        writable_or_reply!(self, reply);
        match self.fs.removexattr(ino, name_bytes(name)) {
            Ok(()) => reply.ok(),
            // As on ext4 (ext4_set_acl with no ACL), removing an absent
            // POSIX ACL succeeds.
            Err(Error::NoAttribute) if name_bytes(name).starts_with(b"system.posix_acl_") => {
                reply.ok()
            }
            Err(e) => reply.error(self.fail("removexattr", ino, &e)),
        }
    }

    fn fallocate(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let ino = ino_or_reply!(ino, reply);
        writable_or_reply!(self, reply);
        let Some(mode) = falloc_mode(mode) else {
            return reply.error(Errno::EOPNOTSUPP);
        };
        match self
            .fs
            .fallocate_as(ino, offset, length, mode, req.uid() == 0)
        {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(self.fail("fallocate", ino, &e)),
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
