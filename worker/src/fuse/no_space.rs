//! A full filesystem under the writeback cache.
//!
//! ext4 reserves blocks for a write at write(2) (delayed allocation), so
//! on a full filesystem write(2) itself fails with ENOSPC. Through FUSE the
//! kernel's page cache takes the write, and the worker sees it only at
//! write-back, whose failure the kernel reports at fsync and close: a
//! program writing onto a full disk saw every write(2) succeed, however
//! much it wrote. So once a page-cache write-back fails for lack of space,
//! the kernel is made to forget the attributes of every file open for
//! writing. Its next write(2) to one of them asks for them first (a
//! GETATTR carrying the writable handle: the kernel keeps a file's size
//! for the writeback cache and refreshes its mode before each write), and
//! that GETATTR fails with ENOSPC while the caller has less than 1 MiB
//! left (root counting the root-reserved blocks, as on ext4). A file
//! opened for writing meanwhile loses its cached attributes at once, so
//! that its first write(2) asks too. The failed write-back's data is lost
//! as before (fsync and close report it); what this saves is what the
//! program writes after it.

use std::sync::atomic::{AtomicBool, Ordering};

use crate::ext4::Ext4;

/// What a caller must be able to allocate for its write(2) to go to the
/// page cache again: the largest write the kernel sends. A failed
/// write-back can leave a few blocks it could not use (a new extent may
/// need a tree block as well), and those must not let every write in.
const ROOM: u64 = safemount_proto::FUSE_MAX_IO as u64;

#[derive(Default)]
pub(super) struct NoSpace {
    /// A page-cache write-back failed for lack of space, and space has not
    /// come free for every caller since.
    failed: AtomicBool,
}

impl NoSpace {
    /// A page-cache write-back failed with ENOSPC.
    pub(super) fn writeback_failed(&self) {
        self.failed.store(true, Ordering::Release);
    }

    /// Whether the filesystem counts as full (see the module comment).
    pub(super) fn is_full(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    /// Whether a write(2) through a writable handle is refused: a
    /// write-back failed for lack of space, and the caller (who may use
    /// the root-reserved blocks or not: `reserved_ok`) has less than
    /// [`ROOM`] left. Once every caller has that room again the
    /// filesystem no longer counts as full.
    pub(super) fn refuses_write(&self, fs: &Ext4, reserved_ok: bool) -> bool {
        if !self.is_full() {
            return false;
        }
        if fs.bytes_available(false) >= ROOM {
            self.failed.store(false, Ordering::Release);
            return false;
        }
        fs.bytes_available(reserved_ok) < ROOM
    }
}
