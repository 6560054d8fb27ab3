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
//! that GETATTR fails with ENOSPC as long as no space has come free since
//! the failure. A file opened for writing meanwhile loses its cached
//! attributes at once, so that its first write(2) asks too. The failed
//! write-back's data is lost as before (fsync and close report it); what
//! this saves is what the program writes after it.

use std::sync::Mutex;

use crate::ext4::Ext4;

#[derive(Default)]
pub(super) struct NoSpace {
    /// Free blocks just after the last write-back that failed for lack of
    /// space; `None` once space came free again.
    free_at_failure: Mutex<Option<u64>>,
}

impl NoSpace {
    /// A page-cache write-back failed with ENOSPC.
    pub(super) fn writeback_failed(&self, fs: &Ext4) {
        let free = free_blocks(fs);
        if let Ok(mut at) = self.free_at_failure.lock() {
            *at = Some(free);
        }
    }

    /// Whether a write-back failed for lack of space and no space was seen
    /// to come free since.
    pub(super) fn is_full(&self) -> bool {
        self.free_at_failure.lock().is_ok_and(|at| at.is_some())
    }

    /// Whether a write(2) through a writable handle is refused: the
    /// filesystem has not gained a block since a write-back failed for
    /// lack of space.
    pub(super) fn refuses_write(&self, fs: &Ext4) -> bool {
        let Ok(mut at) = self.free_at_failure.lock() else {
            return false;
        };
        let Some(free_then) = *at else {
            return false;
        };
        if free_blocks(fs) > free_then {
            *at = None;
            return false;
        }
        true
    }
}

fn free_blocks(fs: &Ext4) -> u64 {
    fs.statfs().map_or(0, |s| s.bfree)
}
