//! The kernel's references to inodes.
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

use std::time::Duration;

use fuser::{Generation, ReplyEntry};

use super::{Adapter, file_attr};
use crate::ext4::error::Error;
use crate::ext4::types::{Attr, Ino};

/// Per-inode kernel references (see the module documentation). Kept
/// small: a walk of a million files leaves a million of them.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct OpenState {
    /// The kernel's lookup count (nlookup: 64 bits, as the kernel's).
    lookups: u64,
    /// Open handles (bounded by open files, far below 2^32).
    handles: u32,
    /// The last name is gone: free the inode when both counts are zero.
    pub(super) unlinked: bool,
}

impl OpenState {
    fn idle(&self) -> bool {
        self.handles == 0 && self.lookups == 0
    }
}

impl Adapter {
    /// Replies to a request that hands the kernel a new reference to an
    /// inode (lookup, mknod, mkdir, symlink, link) by a name in `dir`: the
    /// reply counts as one lookup, undone by a later FORGET.
    pub(super) fn reply_entry(
        &self,
        reply: ReplyEntry,
        op: &str,
        (ino, dir): (Ino, Ino),
        res: Result<Attr, Error>,
    ) {
        match res {
            Ok(a) => {
                self.looked_up(a.ino);
                let ttl = self.entry_ttl(dir);
                reply.entry(&ttl, &file_attr(&a), Generation(a.generation.into()))
            }
            Err(e) => reply.error(self.fail(op, ino, &e)),
        }
    }

    /// How long the kernel may keep a name of `dir` in its dentry cache.
    /// Not at all in a casefolded directory: the kernel's FUSE dentries
    /// compare names byte for byte, so a cached name would outlive an
    /// unlink or rename made through another case of it.
    pub(super) fn entry_ttl(&self, dir: Ino) -> Duration {
        if self.fs.is_casefolded_dir(dir) {
            Duration::ZERO
        } else {
            self.ttl
        }
    }

    /// The kernel got a reference to `ino` (an entry reply).
    pub(super) fn looked_up(&self, ino: Ino) {
        if let Ok(mut open) = self.open.lock() {
            let st = open.entry(ino).or_default();
            st.lookups = st.lookups.saturating_add(1);
        }
    }

    /// The kernel dropped `n` references to `ino`: frees the inode if it
    /// was the last reference and its last name is gone.
    pub(super) fn forgotten(&self, ino: Ino, n: u64) {
        let free = match self.open.lock() {
            Ok(mut open) => match open.get_mut(&ino) {
                Some(st) => {
                    st.lookups = st.lookups.saturating_sub(n);
                    let idle = st.idle();
                    let unlinked = st.unlinked;
                    if idle {
                        open.remove(&ino);
                        // The kernel evicted its inode: so does ext4's
                        // twin on the kernel side, with its state.
                        self.fs.evicted(ino);
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
    pub(super) fn opened(&self, ino: Ino) {
        if let Ok(mut open) = self.open.lock() {
            let st = open.entry(ino).or_default();
            st.handles = st.handles.saturating_add(1);
        }
    }

    /// A handle to `ino` was released: frees the inode if it was its last
    /// handle and its last name is gone.
    pub(super) fn closed(&self, ino: Ino) {
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
    pub(super) fn unlinked(&self, ino: Ino) {
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

    pub(super) fn free_inode(&self, ino: Ino) {
        if let Err(e) = self.fs.release_inode(ino) {
            // It stays on the orphan list: the next mount or e2fsck frees it.
            let _ = self.fail("release of unlinked inode", ino, &e);
            tracing::warn!("inode {ino}: freeing at last close failed: {e}");
        }
    }
}
