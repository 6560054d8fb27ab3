//! The adapter's state: the engine, the kernel's open inodes, the
//! flusher's stop flag, the failure log, the files open for writing and
//! the channel that tells the kernel of changes it cannot see.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use fuser::{Errno, FileHandle, ReplyEmpty};

use super::convert::fuse_ino;
use super::failures::Failures;
use super::inodes::OpenState;
use super::no_space::NoSpace;
use super::requests::RequestCounts;
use super::seek::Seeks;
use super::write_queue::{PendingWrite, WriteQueues};
use super::writers::{WRITE_HANDLE, Writers};
use crate::ext4::Ext4;
use crate::ext4::error::Error;
use crate::ext4::ondisk::features::INCOMPAT_CASEFOLD;
use crate::ext4::types::{Ino, SetAttr, WriteAs};

/// Attribute and entry lifetime. Read-only: nothing changes under the
/// kernel's caches. Read-write: every change goes through this worker, by
/// a request of the kernel, which updates or invalidates its own caches
/// (and with the writeback cache trusts its own sizes and times): nothing
/// changes behind its back either, so the same long lifetime holds.
const TTL: Duration = Duration::from_secs(3600);

/// The fuser filesystem over the engine.
pub struct Adapter {
    pub(super) fs: Arc<Ext4>,
    pub(super) read_only: bool,
    pub(super) ttl: Duration,
    /// Errno mapping and the corrupt-object log, shared with the seek
    /// thread.
    pub(super) failures: Arc<Failures>,
    /// Inodes the kernel holds (lookups or open handles); entries are
    /// removed when both counts are zero. A B-tree: a million entries
    /// (a walk of a big tree) take ~30 MiB, with none of a hash table's
    /// doubling peaks.
    pub(super) open: Mutex<BTreeMap<Ino, OpenState>>,
    /// Tells the flusher thread to stop (set at destroy).
    pub(super) stop_flusher: Arc<AtomicBool>,
    /// Requests served, by kind (logged at unmount).
    pub(super) requests: RequestCounts,
    /// How long the kernel may remember that a name does not exist (zero:
    /// not at all). Every name is made through this mount, so the kernel
    /// sees each one appear; but in a casefolded directory "FOO" appearing
    /// also makes "foo" exist, which its dentry cache cannot know.
    pub(super) negative_ttl: Duration,
    /// OPENDIR/RELEASEDIR are declined (read-write mounts whose kernel
    /// takes FUSE_NO_OPENDIR_SUPPORT): a directory handle carries nothing
    /// here, and an open directory holds its inode through the kernel's
    /// lookup reference anyway.
    pub(super) skip_opendir: bool,
    /// Notifications to the kernel, set once the session exists (see
    /// `notifier_slot`); unset in tests without a kernel.
    pub(super) notifier: Arc<OnceLock<fuser::Notifier>>,
    /// The files being written and their queued writes.
    pub(super) writes: WriteQueues,
    /// Handles open for writing.
    pub(super) writers: Writers,
    /// The seek thread (SEEK_DATA/SEEK_HOLE after the kernel's write-back).
    pub(super) seeks: Seeks,
    /// write(2) on a full filesystem.
    pub(super) no_space: NoSpace,
}

impl Adapter {
    pub fn new(fs: impl Into<Arc<Ext4>>, read_only: bool) -> Self {
        let fs: Arc<Ext4> = fs.into();
        let casefold = fs.sb().has_incompat(INCOMPAT_CASEFOLD);
        Adapter {
            failures: Arc::new(Failures::new(Arc::clone(&fs))),
            negative_ttl: if casefold { Duration::ZERO } else { TTL },
            fs,
            read_only,
            ttl: TTL,
            writers: Writers::default(),
            seeks: Seeks::default(),
            no_space: NoSpace::default(),
            open: Mutex::new(BTreeMap::new()),
            stop_flusher: Arc::new(AtomicBool::new(false)),
            requests: RequestCounts::default(),
            skip_opendir: false,
            notifier: Arc::new(OnceLock::new()),
            writes: WriteQueues::default(),
        }
    }

    /// fsync and fsyncdir: data is written when its request completes, so
    /// both write the committed metadata back and flush the device.
    pub(super) fn sync(&self, op: &str, ino: Ino, reply: ReplyEmpty) {
        match self.fs.flush() {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(self.fail(op, ino, &e)),
        }
    }

    /// Where the session's notifier goes once the session is made (the
    /// session takes the adapter by value first).
    pub fn notifier_slot(&self) -> Arc<OnceLock<fuser::Notifier>> {
        self.notifier.clone()
    }

    /// Makes the kernel forget the attributes it caches for `ino`, for a
    /// change it cannot infer from the request and its reply. Best effort:
    /// a failure only leaves the cache as stale as it was.
    pub(super) fn forget_cached_attrs(&self, ino: Ino) {
        if let Some(n) = self.notifier.get()
            && let Err(e) = n.inval_inode(fuse_ino(ino), -1, 0)
        {
            tracing::debug!("invalidating inode {ino}'s attributes: {e}");
        }
    }

    /// `ino` was read through the mount: its access time follows the
    /// mount's atime rule (`Ext4::accessed`), and the kernel forgets the
    /// one it caches when it changed. Best effort, as touch_atime is: an
    /// access time that cannot be written fails no read.
    pub(super) fn note_access(&self, ino: Ino) {
        match self.fs.accessed(ino) {
            Ok(true) => self.forget_cached_attrs(ino),
            Ok(false) => {}
            Err(e) => tracing::debug!("access time of inode {ino}: {e}"),
        }
    }

    /// After an open for writing, on a full filesystem: the kernel forgets
    /// the file's attributes, so that its first write(2) asks (see
    /// `no_space`). Best effort: after a create the kernel may not have
    /// the inode yet, and the first failed write-back does it then.
    pub(super) fn refuse_writes_if_full(&self, ino: Ino, fh: FileHandle) {
        if fh == WRITE_HANDLE && self.no_space.is_full() {
            self.forget_cached_attrs(ino);
        }
    }

    /// A page-cache write-back failed for lack of space: every file open
    /// for writing asks before its next write(2) (see `no_space`).
    fn writeback_out_of_space(&self) {
        self.no_space.writeback_failed();
        for ino in self.writers.inodes() {
            self.forget_cached_attrs(ino);
        }
    }

    /// One WRITE: setuid/setgid cleared first when the kernel asks
    /// (HANDLE_KILLPRIV_V2: it checked the caller's CAP_FSETID and the
    /// mode), then the data, under the caller's quota limits. The caller
    /// may use the reserved blocks as on ext4; a page-cache write-back
    /// arrives as the kernel, and the engine goes by the file's owner.
    pub(super) fn serve_write(&self, ino: Ino, w: PendingWrite<'_>) {
        let _quota = crate::ext4::quota::limits::CallerScope::new(w.uid);
        if w.kill_suid_sgid {
            let kill = SetAttr {
                kill_suid_sgid: true,
                ..SetAttr::default()
            };
            if let Err(e) = self.fs.setattr(ino, kill) {
                return w.reply.error(self.fail("write", ino, &e));
            }
        }
        let how = WriteAs {
            reserved_ok: self.fs.may_use_reserved(w.uid, w.gid),
            page_cache: w.page_cache,
        };
        match self.fs.write_as(ino, w.offset, &w.data, how) {
            Ok(n) => w.reply.written(u32::try_from(n).unwrap_or(u32::MAX)),
            Err(e) => {
                if w.page_cache && matches!(e, Error::NoSpace) {
                    self.writeback_out_of_space();
                }
                w.reply.error(self.fail("write", ino, &e))
            }
        }
    }

    /// Maps `err` (see [`Failures::fail`]).
    pub(super) fn fail(&self, op: &str, ino: Ino, err: &Error) -> Errno {
        self.failures.fail(op, ino, err)
    }
}
