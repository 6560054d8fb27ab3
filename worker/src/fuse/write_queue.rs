//! One file's writes are served one at a time, by whichever FUSE thread
//! got the first of them: a thread that gets another write of a file
//! already being written leaves it in that file's queue and goes back to
//! `/dev/fuse`, where other requests wait. The engine serializes one
//! file's writes anyway (its content lock); without the queue, the
//! kernel's writeback, which sends up to max_background WRITEs of one file
//! at once, parks every FUSE thread on that lock, and a stat or a create
//! of any other file waits behind them for as long as the disk takes to
//! write them all (seconds on a slow USB stick).

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use fuser::ReplyWrite;

use crate::ext4::types::Ino;

/// A WRITE request: where, what, who asked, and its reply (`R`: fuser's,
/// or a stand-in in tests).
pub(super) struct PendingWrite<'d, R = ReplyWrite> {
    pub(super) offset: u64,
    pub(super) data: Cow<'d, [u8]>,
    pub(super) uid: u32,
    pub(super) gid: u32,
    /// FUSE_WRITE_KILL_SUIDGID.
    pub(super) kill_suid_sgid: bool,
    /// FUSE_WRITE_CACHE: written back from the page cache.
    pub(super) page_cache: bool,
    pub(super) reply: R,
}

/// The files being written, each with the writes queued behind the one in
/// progress. Queued writes hold a copy of their data: at most
/// max_background of them (16) per mount.
pub(super) struct WriteQueues<R = ReplyWrite> {
    busy: Mutex<HashMap<Ino, VecDeque<PendingWrite<'static, R>>>>,
}

impl<R> Default for WriteQueues<R> {
    fn default() -> Self {
        WriteQueues {
            busy: Mutex::new(HashMap::new()),
        }
    }
}

impl<R> WriteQueues<R> {
    /// `w` back to be served now, the file marked busy; or None: queued
    /// behind the file's write in progress, whose thread serves it.
    pub(super) fn enter<'d>(
        &self,
        ino: Ino,
        w: PendingWrite<'d, R>,
    ) -> Option<PendingWrite<'d, R>> {
        let mut busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        match busy.get_mut(&ino) {
            Some(queue) => {
                queue.push_back(PendingWrite {
                    data: Cow::Owned(w.data.into_owned()),
                    ..w
                });
                None
            }
            None => {
                busy.insert(ino, VecDeque::new());
                Some(w)
            }
        }
    }

    /// The file's next queued write; None when there is none, and the
    /// file is no longer busy.
    pub(super) fn next(&self, ino: Ino) -> Option<PendingWrite<'static, R>> {
        let mut busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        let queue = busy.get_mut(&ino)?;
        let w = queue.pop_front();
        if w.is_none() {
            busy.remove(&ino);
        }
        w
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn write(offset: u64, data: &[u8]) -> PendingWrite<'_, u64> {
        PendingWrite {
            offset,
            data: Cow::Borrowed(data),
            uid: 1000,
            gid: 1000,
            kill_suid_sgid: false,
            page_cache: false,
            reply: offset,
        }
    }

    /// The first write of a file is served at once; later ones queue, in
    /// order, with their own copy of the data, until the queue runs dry
    /// and the file is free again. Other files are not held up.
    #[test]
    fn one_file_one_writer_in_order() {
        let q = WriteQueues::<u64>::default();
        let buf = vec![7u8; 8];
        let first = q.enter(12, write(0, &buf)).unwrap();
        assert!(matches!(first.data, Cow::Borrowed(_)));
        assert!(q.enter(12, write(4096, &buf)).is_none());
        assert!(q.enter(12, write(8192, &buf)).is_none());
        assert!(q.enter(13, write(0, &buf)).is_some(), "another file");
        let second = q.next(12).unwrap();
        assert_eq!((second.reply, second.data.as_ref()), (4096, &buf[..]));
        assert!(matches!(second.data, Cow::Owned(_)));
        assert_eq!(q.next(12).unwrap().reply, 8192);
        assert!(q.next(12).is_none());
        assert!(q.enter(12, write(0, &buf)).is_some(), "free again");
        assert!(q.next(12).is_none());
        assert!(q.next(13).is_none());
        assert!(q.busy.lock().unwrap().is_empty());
    }
}
