//! What a failed request tells the kernel and the log: the errno, a log
//! line for each corrupt object (once), and the engine's `errors=`
//! handling. Shared by the FUSE threads and the seek thread.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use fuser::Errno;

use super::convert::errno;
use crate::ext4::Ext4;
use crate::ext4::error::Error;
use crate::ext4::types::Ino;

/// How many distinct corrupt objects are logged before logging stops
/// (a hostile image could otherwise flood the journal).
const MAX_CORRUPT_LOGGED: usize = 1024;

pub(super) struct Failures {
    fs: Arc<Ext4>,
    corrupt_logged: Mutex<HashSet<(String, u64)>>,
}

impl Failures {
    pub(super) fn new(fs: Arc<Ext4>) -> Self {
        Failures {
            fs,
            corrupt_logged: Mutex::new(HashSet::new()),
        }
    }

    /// Maps `err`, logging each corrupt object once and handing it to the
    /// engine's `errors=` handling.
    pub(super) fn fail(&self, op: &str, ino: Ino, err: &Error) -> Errno {
        match err {
            Error::Corrupt { what, block } => {
                let first = self.corrupt_logged.lock().is_ok_and(|mut seen| {
                    seen.len() < MAX_CORRUPT_LOGGED && seen.insert((what.to_string(), *block))
                });
                if first {
                    tracing::warn!("{op} of inode {ino}: {err}");
                    // errors=: recorded in the superblock once per
                    // corrupt object, then continue, read-only or abort.
                    self.fs.fs_error(op, ino, err);
                }
            }
            Error::Io { .. } => tracing::warn!("{op} of inode {ino}: {err}"),
            // fs-verity's "FILE CORRUPTED!": logged, not a filesystem error.
            Error::Verity(_) => tracing::warn!("{op}: {err}"),
            _ => {}
        }
        errno(err)
    }
}
