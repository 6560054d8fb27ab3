//! SEEK_DATA and SEEK_HOLE (FUSE_LSEEK) on a read-write mount.
//!
//! With the writeback cache a file's new data sits in the kernel's page
//! cache until write-back, and the kernel asks without writing the file
//! back first: data still only in its cache would show as holes, and a
//! hole-aware copy of a file being written (`cp`, `qemu-img convert`, a
//! backup tool) would skip it. So while a file has a handle open for
//! writing (see [`super::writers`]), the answer waits for the kernel's
//! write-back of the file from the offset on: a reverse invalidation of
//! those pages makes the kernel launder each dirty page (a WRITE) before
//! it drops it.
//!
//! The invalidation waits for WRITEs that the FUSE threads serve, so it
//! runs on a thread of its own: a FUSE thread waiting for it could leave,
//! with every FUSE thread in an lseek at once, nobody to serve them.

use std::sync::mpsc::{Sender, channel};
use std::sync::{Arc, OnceLock};

use fuser::{Errno, ReplyLseek};

use super::convert::fuse_ino;
use super::failures::Failures;
use crate::ext4::Ext4;
use crate::ext4::types::{Ino, Whence};

/// One SEEK_DATA or SEEK_HOLE to answer.
pub(super) struct Seek {
    pub(super) ino: Ino,
    pub(super) offset: u64,
    pub(super) whence: Whence,
    pub(super) reply: ReplyLseek,
}

/// The seek thread's queue.
#[derive(Default)]
pub(super) struct Seeks {
    /// Set at `init` on mounts with the writeback cache.
    queue: OnceLock<Sender<Seek>>,
}

impl Seeks {
    /// Starts the seek thread (writeback-cache mounts, at `init`).
    pub(super) fn start(
        &self,
        fs: Arc<Ext4>,
        failures: Arc<Failures>,
        notifier: Arc<OnceLock<fuser::Notifier>>,
    ) {
        let (tx, rx) = channel::<Seek>();
        let spawned = std::thread::Builder::new()
            .name("seek".into())
            .spawn(move || {
                // Ends when the adapter, and with it the sender, is gone.
                for seek in rx {
                    if let Some(n) = notifier.get() {
                        write_back_from(n, seek.ino, seek.offset);
                    }
                    answer(&fs, &failures, seek);
                }
            });
        match spawned {
            Ok(_) => {
                let _ = self.queue.set(tx);
            }
            Err(e) => tracing::warn!(
                "no seek thread ({e}): SEEK_DATA/SEEK_HOLE see a file being written as last written back"
            ),
        }
    }

    /// Answers `seek`: on the seek thread, after the kernel's write-back,
    /// when the file has a writable handle open (`written`); at once
    /// otherwise.
    pub(super) fn serve(&self, written: bool, fs: &Ext4, failures: &Failures, seek: Seek) {
        let seek = match self.queue.get() {
            Some(queue) if written => match queue.send(seek) {
                Ok(()) => return,
                Err(unsent) => unsent.0,
            },
            _ => seek,
        };
        answer(fs, failures, seek);
    }
}

/// Makes the kernel write back its dirty pages of `ino` from `offset` on
/// (and drop them, clean ones too: they are read again on demand).
fn write_back_from(notifier: &fuser::Notifier, ino: Ino, offset: u64) {
    let Ok(offset) = i64::try_from(offset) else {
        return;
    };
    if let Err(e) = notifier.inval_inode(fuse_ino(ino), offset, 0) {
        tracing::debug!("writing back inode {ino} before a seek: {e}");
    }
}

fn answer(fs: &Ext4, failures: &Failures, seek: Seek) {
    let Seek {
        ino,
        offset,
        whence,
        reply,
    } = seek;
    match fs.seek(ino, offset, whence) {
        Ok(pos) => match i64::try_from(pos) {
            Ok(pos) => reply.offset(pos),
            Err(_) => reply.error(Errno::ENXIO),
        },
        Err(e) => reply.error(failures.fail("lseek", ino, &e)),
    }
}
