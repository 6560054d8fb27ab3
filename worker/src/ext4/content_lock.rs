//! Per-inode content locks: a write, truncate, fallocate or final release
//! of a file runs alone on that file, and a write holds no filesystem-wide
//! lock while its data goes to the device (see `file::write`: it maps in
//! one transaction, writes, then marks the blocks written in a second).
//! What the lock keeps apart: two read-modify-writes of one block, and a
//! truncate or punch freeing blocks a write mapped and has not finished.
//!
//! Striped: inode numbers share a fixed set of mutexes, so the table costs
//! nothing per inode and never grows with hostile input. An operation
//! takes at most one content lock, before the transaction lock (the lock
//! order in `txn`), so stripes shared by two inodes cannot deadlock; they
//! only make two unrelated files wait for each other now and then.

use std::sync::{Mutex, MutexGuard};

use super::Ino;

/// Number of stripes: a power of two, enough that 8 FUSE threads rarely
/// meet on one.
const STRIPES: usize = 64;

pub(crate) struct ContentLocks {
    stripes: [Mutex<()>; STRIPES],
}

impl Default for ContentLocks {
    fn default() -> Self {
        ContentLocks {
            stripes: std::array::from_fn(|_| Mutex::new(())),
        }
    }
}

impl ContentLocks {
    /// Waits for inode `ino`'s content lock.
    pub(crate) fn lock(&self, ino: Ino) -> MutexGuard<'_, ()> {
        let i = (ino as usize) % STRIPES;
        // i < STRIPES: the index cannot miss.
        self.stripes[i].lock().unwrap_or_else(|e| e.into_inner())
    }
}
