//! The fuser adapter: decode a FUSE request, call ONE engine method, reply.
//! No filesystem logic lives here; the engine ([`crate::ext4`]) knows
//! nothing of FUSE.
//!
//! `convert` maps between the two worlds (errno, attributes, inode
//! numbers, times); `inodes` keeps the kernel's references to inodes
//! (lookup and open counts) and frees unlinked inodes when they go;
//! `writers` knows which files are open for writing, which is what the
//! two workarounds of the kernel's page cache need: `seek` (SEEK_DATA
//! after a forced write-back) and `no_space` (write(2) onto a full
//! filesystem).
//!
//! Write-back: the engine keeps committed metadata in memory. Besides
//! fsync, fsyncdir and unmount, a flusher thread started at `init` writes
//! it back every [`flusher::WRITEBACK_INTERVAL`] (the kernel's dirty_writeback
//! interval). syncfs(2) does not reach a FUSE server (the kernel sends
//! FUSE_SYNCFS to virtiofs only): fsync a file or directory for
//! durability.

mod adapter;
mod capabilities;
mod convert;
mod failures;
mod flusher;
mod inodes;
mod ioctl;
mod no_space;
mod requests;
mod seek;
mod write_queue;
mod writers;

use std::borrow::Cow;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use fuser::{
    AccessFlags, BsdFileFlags, Errno, FileHandle, Filesystem, FopenFlags, Generation, INodeNo,
    InitFlags, IoctlFlags, KernelConfig, LockOwner, OpenAccMode, OpenFlags, ReplyAttr, ReplyCreate,
    ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyIoctl, ReplyLseek,
    ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};

use crate::ext4::error::Error;
use crate::ext4::types::{
    FileKind, Ino, ROOT_INO, RenameFlags, SetAttr, TimeSet, Whence, XattrFlags,
};
use crate::ext4::xattr::acl::Caller;

pub use adapter::Adapter;
pub use convert::{
    BAD_BLOCKS_FUSE_INO, access_allowed, errno, ext4_ino, falloc_mode, file_attr, fuse_ino,
    request_timestamp,
};
use convert::{file_type, negative_entry_attr, placeholder_attr, reply_xattr, time_set};
use requests::Op;
use write_queue::PendingWrite;

/// What an open (or create) of a file asks of the kernel: keep the pages
/// it has cached. A file's data changes only through this mount, and the
/// kernel sees every change (writes go through its page cache, truncate
/// and fallocate drop the ranges they change); without the flag every
/// open threw the file's cached pages away, so each `cat` of a file read
/// all of it from the worker again.
const FILE_OPEN_FLAGS: FopenFlags = FopenFlags::FOPEN_KEEP_CACHE;

/// Largest read served in one request. The kernel never asks for more than
/// max_pages pages (1 MiB, set in `init`); a larger request is clamped.
pub const MAX_READ: u32 = 1 << 20;

/// max_write and max_readahead asked of the kernel.
const MAX_IO: u32 = safemount_proto::FUSE_MAX_IO;

/// Whether reading through a file opened with `flags` is an access that
/// moves the atime: opened for reading, without O_NOATIME. (A handle open
/// for writing only still reads: the kernel fills a page before a partial
/// write to it.)
fn reads_access(flags: OpenFlags) -> bool {
    flags.acc_mode() != OpenAccMode::O_WRONLY && flags.0 & libc::O_NOATIME == 0
}

/// setxattr(2) flags.
const XATTR_CREATE: i32 = 1;
const XATTR_REPLACE: i32 = 2;

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

/// Whether a SETATTR clears setuid/setgid (HANDLE_KILLPRIV_V2, where the
/// kernel leaves that to the server): every chown or chgrp (`owner`) of a
/// non-directory, which the engine tells apart, and a truncate (`size`) by
/// a caller without CAP_FSETID. The kernel marks both with
/// FATTR_KILL_SUIDGID, which fuser 0.18.0 does not pass on; so this is the
/// kernel's own rule, with CAP_FSETID read as uid 0 (a root without it
/// keeps the bits on truncate, a capable non-root loses them).
fn kills_suid_sgid(caller_uid: u32, owner: bool, size: bool) -> bool {
    owner || (size && caller_uid != 0)
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
        let wanted = capabilities::wanted(self.read_only, self.fs.quota_limits_enforced());
        for flag in wanted.iter() {
            if config.add_capabilities(flag).is_err() {
                tracing::debug!("kernel lacks FUSE capability {flag:?}");
            } else if flag == InitFlags::FUSE_NO_OPENDIR_SUPPORT {
                self.skip_opendir = true;
            } else if flag == InitFlags::FUSE_WRITEBACK_CACHE {
                self.seeks.start(
                    Arc::clone(&self.fs),
                    Arc::clone(&self.failures),
                    Arc::clone(&self.notifier),
                );
            }
        }
        if !self.read_only {
            flusher::start(Arc::clone(&self.fs), Arc::clone(&self.stop_flusher));
        }
        Ok(())
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.requests.count(Op::Forget);
        if let Ok(ino) = ext4_ino(ino) {
            self.forgotten(ino, nlookup);
        }
    }

    // batch_forget: fuser's default calls `forget` for each node (fuser
    // 0.18.0 does not export ForgetOne, so it cannot be overridden).

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        self.requests.count(Op::Lookup);
        let parent = ino_or_reply!(parent, reply);
        if name.as_bytes() == b"." {
            // EXPORT_SUPPORT: a file handle (open_by_handle_at, NFS) names
            // an inode the kernel no longer caches, and the kernel asks
            // for it by "." (path walks never send it). Any inode, not
            // only directories; the kernel checks the generation.
            let res = self.fs.getattr_by_handle(parent);
            return self.reply_entry(reply, "lookup", (parent, parent), res);
        }
        let res = self.fs.lookup(parent, name.as_bytes());
        if matches!(res, Err(Error::NotFound)) && !self.negative_ttl.is_zero() {
            return reply.entry(&self.negative_ttl, &negative_entry_attr(), Generation(0));
        }
        self.reply_entry(reply, "lookup", (parent, parent), res);
    }

    fn getattr(&self, req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        self.requests.count(Op::Getattr);
        let ino = ino_or_reply!(ino, reply);
        // A write(2) asking before it writes (stat(2) and fstat(2) never
        // carry a handle): the kernel does not know ext4's inode flags,
        // and chattr makes it forget the file's attributes, so a write
        // through an fd opened before chattr +i asks, and is refused as
        // ext4 refuses it; and on a full filesystem (see `no_space`).
        if fh == Some(writers::WRITE_HANDLE) {
            if let Err(e) = self.fs.check_write(ino) {
                return reply.error(self.fail("write", ino, &e));
            }
            let reserved_ok = self.fs.may_use_reserved(req.uid(), req.gid());
            if self.no_space.refuses_write(&self.fs, reserved_ok) {
                return reply.error(Errno::ENOSPC);
            }
        }
        match self.fs.getattr(ino) {
            Ok(a) => reply.attr(&self.ttl, &file_attr(&a)),
            Err(e) => reply.error(self.fail("getattr", ino, &e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        self.requests.count(Op::Readlink);
        let ino = ino_or_reply!(ino, reply);
        match self.fs.readlink(ino) {
            Ok(target) => {
                self.note_access(ino);
                reply.data(&target)
            }
            Err(e) => reply.error(self.fail("readlink", ino, &e)),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        self.requests.count(Op::Open);
        let ino = ino_or_reply!(ino, reply);
        let writes = flags.acc_mode() != OpenAccMode::O_RDONLY || flags.0 & libc::O_TRUNC != 0;
        if writes && self.read_only {
            return reply.error(Errno::EROFS);
        }
        // On a read-only mount writes are refused above; what remains (an
        // encrypted file's missing key, a verity file's metadata) applies
        // to reads too.
        if let Err(e) = self.fs.check_open(
            ino,
            writes,
            flags.0 & libc::O_APPEND != 0,
            flags.0 & libc::O_TRUNC != 0,
        ) {
            return reply.error(self.fail("open", ino, &e));
        }
        // The handle is unused (reads go by inode number); a getattr makes
        // a vanished or corrupt inode fail here rather than on first read.
        match self.fs.getattr(ino) {
            Ok(a) if a.kind == FileKind::Directory => reply.error(Errno::EISDIR),
            Ok(_) => {
                // Reads the kernel serves from its page cache never come
                // here, so an open for reading counts as the read.
                if reads_access(flags) {
                    self.note_access(ino);
                }
                self.opened(ino);
                let fh = self
                    .writers
                    .opened(ino, flags.acc_mode() != OpenAccMode::O_RDONLY);
                reply.opened(fh, FILE_OPEN_FLAGS);
                self.refuse_writes_if_full(ino, fh);
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
        flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        self.requests.count(Op::Read);
        let ino = ino_or_reply!(ino, reply);
        let mut buf = vec![0u8; size.min(MAX_READ) as usize];
        match self.fs.read(ino, offset, &mut buf) {
            Ok(n) => {
                if reads_access(flags) {
                    self.note_access(ino);
                }
                reply.data(buf.get(..n).unwrap_or(&buf))
            }
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
        self.requests.count(Op::Flush);
        // close(2) of a descriptor: nothing is buffered per handle here
        // (the kernel writes its dirty pages back and checks their errors
        // before it asks). ENOSYS tells it never to ask again on this
        // mount (fc->no_flush): one round trip less per close.
        reply.error(Errno::ENOSYS);
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.requests.count(Op::Release);
        let ino = ino_or_reply!(ino, reply);
        // Answer first: nothing the kernel waits for depends on freeing.
        reply.ok();
        self.writers.released(ino, fh);
        self.closed(ino);
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        self.requests.count(Op::Opendir);
        if self.skip_opendir {
            // The kernel stops sending OPENDIR and RELEASEDIR.
            return reply.error(Errno::ENOSYS);
        }
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
        self.requests.count(Op::Readdir);
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
            Ok(()) => {
                self.note_access(ino);
                reply.ok()
            }
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
        self.requests.count(Op::Readdirplus);
        let dir = ino_or_reply!(ino, reply);
        let entry_ttl = self.entry_ttl(dir);
        let result = self.fs.readdir(dir, offset, &mut |e| {
            let (attr, ttl, generation) = match self.fs.getattr(e.ino) {
                Ok(a) => (file_attr(&a), entry_ttl, a.generation),
                Err(err) => {
                    let _ = self.fail("readdirplus", e.ino, &err);
                    (placeholder_attr(e.ino, e.kind), Duration::ZERO, 0)
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
            Ok(()) => {
                self.note_access(dir);
                reply.ok()
            }
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
        self.requests.count(Op::Releasedir);
        let ino = ino_or_reply!(ino, reply);
        reply.ok();
        self.closed(ino);
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        self.requests.count(Op::Statfs);
        match self.fs.statfs() {
            Ok(s) => reply.statfs(
                s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen, s.frsize,
            ),
            Err(e) => reply.error(self.fail("statfs", ROOT_INO, &e)),
        }
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        self.requests.count(Op::Getxattr);
        let ino = ino_or_reply!(ino, reply);
        match self.fs.getxattr(ino, name.as_bytes()) {
            Ok(value) => reply_xattr(reply, &value, size),
            Err(e) => reply.error(self.fail("getxattr", ino, &e)),
        }
    }

    fn listxattr(&self, req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        self.requests.count(Op::Listxattr);
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
        self.requests.count(Op::Access);
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
        tracing::info!("FUSE requests: {}", self.requests.summary());
        if self.read_only {
            // Nothing to write; but a read-write open the engine serves
            // read-only (failed descriptor checksums) holds the MMP block.
            self.fs.release_mmp();
            return;
        }
        // Unlinked inodes still open at unmount (a lazy unmount, or a
        // connection abort): free them now rather than leave orphans.
        let pending: Vec<Ino> = match self.open.lock() {
            Ok(mut open) => std::mem::take(&mut *open)
                .into_iter()
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
        req: &Request,
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
        // Quota limits apply to this request unless root made it.
        let _quota = crate::ext4::quota::limits::CallerScope::new(req.uid());
        self.requests.count(Op::Setattr);
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
            kill_suid_sgid: kills_suid_sgid(
                req.uid(),
                uid.is_some() || gid.is_some(),
                size.is_some(),
            ),
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
        // Quota limits apply to this request unless root made it.
        let _quota = crate::ext4::quota::limits::CallerScope::new(req.uid());
        self.requests.count(Op::Mknod);
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
        self.reply_entry(reply, "mknod", (parent, parent), res);
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        // Quota limits apply to this request unless root made it.
        let _quota = crate::ext4::quota::limits::CallerScope::new(req.uid());
        self.requests.count(Op::Create);
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
                let fh = self
                    .writers
                    .opened(a.ino, flags & libc::O_ACCMODE != libc::O_RDONLY);
                reply.created(
                    &self.entry_ttl(parent),
                    &file_attr(&a),
                    Generation(a.generation.into()),
                    fh,
                    FILE_OPEN_FLAGS,
                );
                self.refuse_writes_if_full(a.ino, fh);
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
        // Quota limits apply to this request unless root made it.
        let _quota = crate::ext4::quota::limits::CallerScope::new(req.uid());
        self.requests.count(Op::Mkdir);
        let parent = ino_or_reply!(parent, reply);
        writable_or_reply!(self, reply);
        let perm = (mode & 0o7777) as u16;
        let res = self
            .fs
            .mkdir(parent, name_bytes(name), perm, req.uid(), req.gid(), umask);
        self.reply_entry(reply, "mkdir", (parent, parent), res);
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        // Quota limits apply to this request unless root made it.
        let _quota = crate::ext4::quota::limits::CallerScope::new(req.uid());
        self.requests.count(Op::Symlink);
        let parent = ino_or_reply!(parent, reply);
        writable_or_reply!(self, reply);
        let res = self.fs.symlink(
            parent,
            name_bytes(link_name),
            target.as_os_str().as_bytes(),
            req.uid(),
            req.gid(),
        );
        self.reply_entry(reply, "symlink", (parent, parent), res);
    }

    fn link(
        &self,
        req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        // Quota limits apply to this request unless root made it.
        let _quota = crate::ext4::quota::limits::CallerScope::new(req.uid());
        self.requests.count(Op::Link);
        let ino = ino_or_reply!(ino, reply);
        let newparent = ino_or_reply!(newparent, reply);
        writable_or_reply!(self, reply);
        let res = self.fs.link(ino, newparent, name_bytes(newname));
        self.reply_entry(reply, "link", (ino, newparent), res);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.requests.count(Op::Unlink);
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
        self.requests.count(Op::Rmdir);
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
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: fuser::RenameFlags,
        reply: ReplyEmpty,
    ) {
        // Quota limits apply to this request unless root made it.
        let _quota = crate::ext4::quota::limits::CallerScope::new(req.uid());
        self.requests.count(Op::Rename);
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
            Err(e) => {
                if flags.whiteout {
                    // ext4 puts the whiteout in place before its last
                    // checks and, when they refuse, restores the entry,
                    // which stamps the old directory's times; the kernel's
                    // FUSE client drops no attributes on an error.
                    self.forget_cached_attrs(parent);
                }
                reply.error(self.fail("rename", parent, &e))
            }
        }
    }

    fn write(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        self.requests.count(Op::Write);
        let ino = ino_or_reply!(ino, reply);
        writable_or_reply!(self, reply);
        let w = PendingWrite {
            offset,
            data: Cow::Borrowed(data),
            uid: req.uid(),
            gid: req.gid(),
            kill_suid_sgid: write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID),
            page_cache: write_flags.contains(WriteFlags::FUSE_WRITE_CACHE),
            reply,
        };
        // This thread serves the file's writes until none is queued;
        // or another thread is at it and serves this one too.
        if let Some(first) = self.writes.enter(ino, w) {
            self.serve_write(ino, first);
            while let Some(w) = self.writes.next(ino) {
                self.serve_write(ino, w);
            }
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
        self.requests.count(Op::Fsync);
        let ino = ino_or_reply!(ino, reply);
        self.sync("fsync", ino, reply);
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.requests.count(Op::Fsyncdir);
        let ino = ino_or_reply!(ino, reply);
        self.sync("fsyncdir", ino, reply);
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
        // Quota limits apply to this request unless root made it.
        let _quota = crate::ext4::quota::limits::CallerScope::new(req.uid());
        self.requests.count(Op::Setxattr);
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

    fn removexattr(&self, req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        // Quota limits apply to this request unless root made it (a
        // shared xattr block is copied before the change).
        let _quota = crate::ext4::quota::limits::CallerScope::new(req.uid());
        self.requests.count(Op::Removexattr);
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

    fn ioctl(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: IoctlFlags,
        cmd: u32,
        in_data: &[u8],
        _out_size: u32,
        reply: ReplyIoctl,
    ) {
        // Quota limits apply to this request unless root made it.
        let _quota = crate::ext4::quota::limits::CallerScope::new(req.uid());
        self.requests.count(Op::Ioctl);
        let ino = ino_or_reply!(ino, reply);
        let request = match ioctl::decode(cmd, in_data) {
            Ok(r) => r,
            Err(ioctl::DecodeError::Unknown) => return reply.error(Errno::ENOTTY),
            Err(ioctl::DecodeError::Short) => return reply.error(Errno::EINVAL),
        };
        // The kernel checked ownership and CAP_LINUX_IMMUTABLE; data
        // journaling also wants CAP_SYS_RESOURCE, taken here as root.
        let privileged = req.uid() == 0;
        // chattr changes the inode's flags and ctime, which the kernel
        // cannot infer from an ioctl's reply.
        let changes_inode = matches!(
            request,
            ioctl::Ioctl::SetFlags(_) | ioctl::Ioctl::SetFsXattr(_)
        );
        let result = match request {
            ioctl::Ioctl::GetFlags => self
                .fs
                .get_flags(ino)
                .map(|f| ioctl::flags_reply(f).to_vec()),
            ioctl::Ioctl::GetFsXattr => self
                .fs
                .get_fsxattr(ino)
                .map(|fa| ioctl::fsxattr_reply(fa).to_vec()),
            ioctl::Ioctl::SetFlags(flags) => {
                writable_or_reply!(self, reply);
                self.fs
                    .set_flags(ino, flags, privileged)
                    .map(|()| Vec::new())
            }
            ioctl::Ioctl::SetFsXattr(fa) => {
                writable_or_reply!(self, reply);
                self.fs
                    .set_fsxattr(ino, fa, privileged)
                    .map(|()| Vec::new())
            }
            ioctl::Ioctl::MeasureVerity(room) => match self.fs.measure_verity(ino) {
                Ok(d) => match ioctl::measure_reply(&d, room) {
                    Some(data) => Ok(data),
                    None => return reply.error(Errno::EOVERFLOW),
                },
                Err(e) => Err(e),
            },
            ioctl::Ioctl::VerityUnsupported => return reply.error(Errno::EOPNOTSUPP),
        };
        match result {
            Ok(data) => {
                if changes_inode {
                    self.forget_cached_attrs(ino);
                }
                reply.ioctl(0, &data)
            }
            Err(e) => reply.error(self.fail("ioctl", ino, &e)),
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
        // Quota limits apply to this request unless root made it.
        let _quota = crate::ext4::quota::limits::CallerScope::new(req.uid());
        self.requests.count(Op::Fallocate);
        let ino = ino_or_reply!(ino, reply);
        writable_or_reply!(self, reply);
        let Some(mode) = falloc_mode(mode) else {
            return reply.error(Errno::EOPNOTSUPP);
        };
        match self.fs.fallocate_as(
            ino,
            offset,
            length,
            mode,
            self.fs.may_use_reserved(req.uid(), req.gid()),
        ) {
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
        self.requests.count(Op::Lseek);
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
        let seek = seek::Seek {
            ino,
            offset,
            whence,
            reply,
        };
        let written = self.writers.has_writer(ino);
        self.seeks.serve(written, &self.fs, &self.failures, seek);
    }
}
