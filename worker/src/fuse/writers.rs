//! Handles open for writing, per inode. Only they can leave dirty pages
//! in the kernel's page cache (a shared writable mapping holds its handle
//! until munmap), and the kernel writes those back before it releases the
//! last one. The handle number itself says which kind an open got, so
//! RELEASE tells them apart.

use std::collections::HashMap;
use std::sync::Mutex;

use fuser::FileHandle;

use crate::ext4::types::Ino;

/// The handle given to an open for reading only, and to one for writing.
pub(super) const READ_HANDLE: FileHandle = FileHandle(0);
pub(super) const WRITE_HANDLE: FileHandle = FileHandle(1);

#[derive(Default)]
pub(super) struct Writers {
    /// Open writable handles per inode; an inode without one is absent.
    open: Mutex<HashMap<Ino, u32>>,
}

impl Writers {
    /// The handle for an open (or create) for writing or not.
    pub(super) fn opened(&self, ino: Ino, writable: bool) -> FileHandle {
        if !writable {
            return READ_HANDLE;
        }
        if let Ok(mut open) = self.open.lock() {
            let n = open.entry(ino).or_default();
            *n = n.saturating_add(1);
        }
        WRITE_HANDLE
    }

    /// RELEASE of handle `fh` of `ino`.
    pub(super) fn released(&self, ino: Ino, fh: FileHandle) {
        if fh != WRITE_HANDLE {
            return;
        }
        if let Ok(mut open) = self.open.lock()
            && let Some(n) = open.get_mut(&ino)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&ino);
            }
        }
    }

    /// Whether `ino` may have dirty pages in the kernel's cache (also when
    /// the map is poisoned: the safe answer).
    pub(super) fn has_writer(&self, ino: Ino) -> bool {
        self.open
            .lock()
            .map_or(true, |open| open.contains_key(&ino))
    }

    /// Every inode with a writable handle open.
    pub(super) fn inodes(&self) -> Vec<Ino> {
        self.open
            .lock()
            .map(|open| open.keys().copied().collect())
            .unwrap_or_default()
    }
}
