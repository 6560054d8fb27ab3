//! Sharing of identical xattr blocks, as ext4 does with its mbcache
//! (fs/ext4/xattr.c: ext4_xattr_block_set, ext4_xattr_block_cache_find,
//! ext4_xattr_block_cache_insert, ext4_xattr_release_block).
//!
//! The kernel shares only blocks its cache knows: those it wrote (a new
//! block, or one changed in place) or read for getxattr/listxattr since
//! the mount, keyed by h_hash. [`BlockIndex`] is that cache: bounded like
//! the kernel's (16384 entries, the least recently used go first), fed
//! the same way, and only a hint: a candidate is used only after its
//! block, read through the transaction, is an allocated, valid xattr
//! block with the same entries and room for one more reference
//! (EXT4_XATTR_REFCOUNT_MAX).
//!
//! Reads the kernel does not make do not feed the index: FUSE asks for
//! "security.capability" before every write (file_remove_privs, no
//! SB_NOSEC on a FUSE mount), the kernel's ext4 only until the VFS marks
//! the inode S_NOSEC (the first lookup that finds nothing on a file
//! without set-id bits; a set-id mode or the inode's eviction clears it),
//! which [`Ext4::nosec_lookup`] follows.
//!
//! Nor do POSIX ACL reads of an inode whose ACLs the VFS has cached
//! (get_inode_acl reads the disk once per inode lifetime; an inode created
//! or given an ACL in this mount has them cached from the start): see
//! [`Ext4::acl_cached_lookup`]. The engine's own ACL reads (inheritance,
//! chmod) are always cached ones.
//!
//! One removal is not the commit's: a set that finds no room in the
//! inode's own block leaves that block out of the index, as the kernel's
//! failed in-place edit leaves it out of its cache (until a read puts it
//! back).
//!
//! The index changes with the committed state: a transaction's inserts
//! wait in the transaction (dropped with it) and are applied at commit,
//! after every block the commit freed has left the index. A reader notes
//! the index's epoch before reading a block and its insert is dropped if
//! a commit came in between (the block may have been freed meanwhile).

use std::collections::{BTreeMap, HashMap};

use crate::ext4::attr::is_sxid;
use crate::ext4::error::Result;
use crate::ext4::ondisk::inode::Inode;
use crate::ext4::ondisk::xattr::{self, NewXattr};
use crate::ext4::types::Ino;
use crate::ext4::{Ext4, Txn};

/// The name the VFS looks up before a write (XATTR_NAME_CAPS).
const SECURITY_CAPABILITY: &[u8] = b"security.capability";

/// Most inodes kept marked S_NOSEC (past it, lookups feed the index).
const NOSEC_MAX: usize = 1 << 20;

/// EXT4_XATTR_REFCOUNT_MAX: the most inodes one block serves.
pub(crate) const REFCOUNT_MAX: u32 = 1024;

/// The kernel's cache size: mb_cache_create(10) allows 16 entries per
/// bucket, 1024 buckets.
const INDEX_MAX: usize = 16384;

/// Known xattr blocks by h_hash (see the module documentation).
#[derive(Default)]
pub(crate) struct BlockIndex {
    /// h_hash -> blocks, oldest insertion first.
    by_hash: HashMap<u32, Vec<u64>>,
    /// Block -> (its h_hash, its last use).
    by_block: BTreeMap<u64, (u32, u64)>,
    /// Last use -> block: eviction order.
    lru: BTreeMap<u64, u64>,
    clock: u64,
    /// Changes with every commit that touched the index.
    epoch: u64,
}

impl BlockIndex {
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch
    }

    fn tick(&mut self) -> u64 {
        self.clock = self.clock.wrapping_add(1);
        self.clock
    }

    /// Records block `blk` under `hash` (h_hash 0 is never shared, as in
    /// ext4_xattr_block_cache_find). A block already there under another
    /// hash (changed in place) moves; under the same one it stays where
    /// it is, as mb_cache_entry_create refuses a duplicate.
    pub(crate) fn insert(&mut self, hash: u32, blk: u64) {
        if hash == 0 {
            self.remove(blk);
            return;
        }
        if self.by_block.get(&blk).is_some_and(|e| e.0 == hash) {
            return;
        }
        self.remove(blk);
        while self.by_block.len() >= INDEX_MAX {
            let Some((_, old)) = self.lru.pop_first() else {
                break;
            };
            self.remove(old);
        }
        let now = self.tick();
        self.by_hash.entry(hash).or_default().push(blk);
        self.by_block.insert(blk, (hash, now));
        self.lru.insert(now, blk);
    }

    pub(crate) fn remove(&mut self, blk: u64) {
        let Some((hash, used)) = self.by_block.remove(&blk) else {
            return;
        };
        self.lru.remove(&used);
        if let Some(v) = self.by_hash.get_mut(&hash) {
            v.retain(|b| *b != blk);
            if v.is_empty() {
                self.by_hash.remove(&hash);
            }
        }
    }

    /// Drops every block in `[first, first + count)`.
    pub(crate) fn remove_range(&mut self, first: u64, count: u64) {
        let end = first.saturating_add(count);
        let dead: Vec<u64> = self.by_block.range(first..end).map(|(b, _)| *b).collect();
        for b in dead {
            self.remove(b);
        }
    }

    /// Removes `blk` now, moving the epoch (a reader's insert of it in
    /// flight is dropped).
    pub(crate) fn forget(&mut self, blk: u64) {
        self.remove(blk);
        self.epoch = self.epoch.wrapping_add(1);
    }

    /// A reuse (mb_cache_entry_touch): the block is evicted last.
    pub(crate) fn touch(&mut self, blk: u64) {
        let now = self.tick();
        if let Some(e) = self.by_block.get_mut(&blk) {
            self.lru.remove(&e.1);
            e.1 = now;
            self.lru.insert(now, blk);
        }
    }

    /// Blocks recorded under `hash`, newest first (the order of the
    /// kernel's hash chain).
    pub(crate) fn candidates(&self, hash: u32) -> Vec<u64> {
        self.by_hash
            .get(&hash)
            .map(|v| v.iter().rev().copied().collect())
            .unwrap_or_default()
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.by_block.len()
    }

    /// Applies a committed transaction: its freed ranges leave the
    /// index, then its inserts and reuses land.
    pub(crate) fn apply(&mut self, freed: &[(u64, u32)], edits: &[IndexEdit]) {
        if freed.is_empty() && edits.is_empty() {
            return;
        }
        for (b, n) in freed {
            self.remove_range(*b, u64::from(*n));
        }
        for e in edits {
            match *e {
                IndexEdit::Insert { hash, blk } => self.insert(hash, blk),
                IndexEdit::Touch { blk } => self.touch(blk),
            }
        }
        self.epoch = self.epoch.wrapping_add(1);
    }
}

/// A change to the index a transaction makes at its commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IndexEdit {
    Insert { hash: u32, blk: u64 },
    Touch { blk: u64 },
}

impl Ext4 {
    fn xattr_index(&self) -> std::sync::MutexGuard<'_, BlockIndex> {
        self.rw
            .xattr_index
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// The index's epoch, noted before reading a block for
    /// [`Ext4::xattr_index_note`].
    pub(crate) fn xattr_index_epoch(&self) -> u64 {
        self.xattr_index().epoch()
    }

    /// A reader saw xattr block `blk` with h_hash `hash` (getxattr and
    /// listxattr, as ext4_xattr_block_get and ext4_xattr_block_list feed
    /// the kernel's cache). Dropped if a commit came since `epoch`. A
    /// read-only mount keeps no index.
    pub(crate) fn xattr_index_note(&self, epoch: u64, hash: u32, blk: u64) {
        if self.is_read_only() {
            return;
        }
        let mut idx = self.xattr_index();
        if idx.epoch() == epoch {
            idx.insert(hash, blk);
        }
    }

    /// Whether a getxattr of `name` on `inode` is the VFS's
    /// "security.capability" check the kernel would skip (S_NOSEC): then
    /// its block read does not feed the index.
    pub(crate) fn nosec_lookup(&self, inode: &Inode, name: &[u8]) -> bool {
        name == SECURITY_CAPABILITY && self.rw.nosec.lock().is_ok_and(|s| s.contains(&inode.ino))
    }

    /// A "security.capability" lookup on `inode` found nothing: the VFS
    /// marks a file without set-id bits S_NOSEC (inode_has_no_xattr).
    pub(crate) fn nosec_note(&self, inode: &Inode, name: &[u8], found: bool) {
        if name != SECURITY_CAPABILITY || found || is_sxid(inode.mode) {
            return;
        }
        if let Ok(mut s) = self.rw.nosec.lock()
            && s.len() < NOSEC_MAX
        {
            s.insert(inode.ino);
        }
    }

    /// Whether a getxattr of the POSIX ACL `index` on `inode` is one the
    /// VFS answers from its cached ACLs (no disk read, nothing learnt);
    /// the first one since the inode was loaded reads and caches.
    pub(crate) fn acl_cached_lookup(&self, inode: &Inode, index: u8) -> bool {
        if index != xattr::INDEX_POSIX_ACL_ACCESS && index != xattr::INDEX_POSIX_ACL_DEFAULT {
            return false;
        }
        let Ok(mut s) = self.rw.acl_cached.lock() else {
            return false;
        };
        if s.contains(&inode.ino) {
            return true;
        }
        if s.len() < NOSEC_MAX {
            s.insert(inode.ino);
        }
        false
    }

    /// `ino`'s ACLs are in the VFS's cache from now on (a new inode, or
    /// an ACL set: set_cached_acl).
    pub(crate) fn acl_cached_note(&self, ino: Ino) {
        if let Ok(mut s) = self.rw.acl_cached.lock()
            && s.len() < NOSEC_MAX
        {
            s.insert(ino);
        }
    }

    /// The inode's mode changed (notify_change clears S_NOSEC for a
    /// set-id mode) or the inode left the kernel's cache.
    pub(crate) fn nosec_clear(&self, ino: Ino, mode: Option<u16>) {
        if mode.is_some_and(|m| !is_sxid(m)) {
            return;
        }
        if let Ok(mut s) = self.rw.nosec.lock() {
            s.remove(&ino);
        }
    }

    /// The inode left the kernel's cache: its VFS marks (S_NOSEC, cached
    /// ACLs) go with it.
    pub(crate) fn vfs_marks_clear(&self, ino: Ino) {
        self.nosec_clear(ino, None);
        if let Ok(mut s) = self.rw.acl_cached.lock() {
            s.remove(&ino);
        }
    }

    /// Block `blk` leaves the index at once, outside any transaction (a
    /// failed set takes it out, see `write`); a removal is always safe.
    pub(crate) fn xattr_index_forget(&self, blk: u64) {
        self.xattr_index().forget(blk);
    }

    /// How many blocks the index holds (tests and figures).
    #[cfg(test)]
    pub(crate) fn xattr_index_len(&self) -> usize {
        self.xattr_index().len()
    }

    /// An existing block holding exactly `entries` (sorted for a block)
    /// that can take one more reference, `exclude` aside
    /// (ext4_xattr_block_cache_find and the refcount check after it).
    pub(crate) fn xattr_share_find(
        &self,
        txn: &mut Txn<'_>,
        entries: &[NewXattr],
        exclude: Option<u64>,
    ) -> Result<Option<(u64, u32)>> {
        let hash = xattr::block_hash(entries.iter().map(xattr::entry_hash));
        if hash == 0 {
            return Ok(None);
        }
        // This transaction's own new blocks are the newest.
        let mut cands: Vec<u64> = txn
            .xattr_index_edits
            .iter()
            .rev()
            .filter_map(|e| match *e {
                IndexEdit::Insert { hash: h, blk } if h == hash => Some(blk),
                _ => None,
            })
            .collect();
        cands.extend(self.xattr_index().candidates(hash));
        let seed = self.has_metadata_csum().then(|| self.csum_seed());
        let limits = self.xattr_limits();
        for blk in cands {
            if Some(blk) == exclude || !self.blocks_valid(blk, 1) || !txn.block_in_use(blk)? {
                continue;
            }
            let data = txn.block(blk)?;
            // A stale or damaged candidate is no candidate.
            let Ok((h, parsed)) = xattr::parse_block(&data, blk, seed, &limits) else {
                continue;
            };
            if h.hash != hash || h.refcount >= REFCOUNT_MAX || h.refcount == 0 {
                continue;
            }
            let mut theirs = self.xw_owned(txn, &parsed)?;
            xattr::sort_for_block(&mut theirs);
            if theirs == entries {
                return Ok(Some((blk, h.refcount)));
            }
        }
        Ok(None)
    }
}

impl Txn<'_> {
    /// Block `blk` now holds an xattr block with h_hash `hash`
    /// (ext4_xattr_block_cache_insert), from this transaction's commit.
    pub(crate) fn xattr_index_insert(&mut self, hash: u32, blk: u64) {
        self.xattr_index_edits.push(IndexEdit::Insert { hash, blk });
    }

    pub(crate) fn xattr_index_touch(&mut self, blk: u64) {
        self.xattr_index_edits.push(IndexEdit::Touch { blk });
    }
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects, reason = "test code")]
mod tests {
    use super::*;
    use crate::ext4::testutil::{
        RwImage, assert_fsck_clean, have, have_mkfs, kernel_mounted, open_image,
    };
    use crate::ext4::types::{Ino, ROOT_INO, XattrFlags};
    use std::path::{Path, PathBuf};
    use std::process::Command;

    /// A step on named files, done alike on both sides.
    #[derive(Clone, Copy)]
    enum Op {
        Set(&'static str, &'static str, u8),
        Remove(&'static str, &'static str),
        Unlink(&'static str),
    }
    use Op::*;

    const FILES: &[&str] = &["f1", "f2", "f3", "f4", "f5"];

    /// Each step's expected effect on the kernel is in its comment.
    const OPS: &[Op] = &[
        Set("f1", "user.x", 1), // a new block
        Set("f2", "user.x", 1), // shared: refcount 2
        Set("f3", "user.x", 1), // shared: refcount 3
        Set("f2", "user.x", 2), // f2 gets a copy; 2 references left
        Set("f2", "user.x", 1), // f2's own block changed in place to a
        // copy of the shared one: f2 shares again, its block is freed
        Set("f4", "user.y", 3), // alone
        Set("f4", "user.x", 1), // alone, two entries
        Remove("f4", "user.y"), // identical to the shared one: joins it (4)
        Remove("f3", "user.x"), // f3 has no block; 3 references
        Unlink("f1"),           // 2 references (f2, f4)
        Set("f5", "user.z", 4), // alone
        Set("f3", "user.z", 4), // shares f5's block
    ];

    fn value(seed: u8) -> Vec<u8> {
        (0..300u32)
            .map(|i| (i as u8).wrapping_mul(7) ^ seed)
            .collect()
    }

    fn kernel_side(mnt: &Path) {
        for f in FILES {
            std::fs::write(mnt.join(f), b"").unwrap();
        }
        for op in OPS {
            let out = match *op {
                Set(f, n, v) => {
                    let hex: String = value(v).iter().map(|b| format!("{b:02x}")).collect();
                    Command::new("setfattr")
                        .args(["-n", n, "-v", &format!("0x{hex}")])
                        .arg(mnt.join(f))
                        .output()
                        .unwrap()
                }
                Remove(f, n) => Command::new("setfattr")
                    .args(["-x", n])
                    .arg(mnt.join(f))
                    .output()
                    .unwrap(),
                Unlink(f) => {
                    std::fs::remove_file(mnt.join(f)).unwrap();
                    continue;
                }
            };
            assert!(out.status.success(), "{out:?}");
        }
    }

    fn engine_side(fs: &Ext4) {
        let d = XattrFlags::default();
        let mut inos = std::collections::HashMap::new();
        for f in FILES {
            let ino = fs
                .create(ROOT_INO, f.as_bytes(), 0o100644, 0, 0, 0, 0)
                .unwrap()
                .ino;
            inos.insert(*f, ino);
        }
        for op in OPS {
            match *op {
                Set(f, n, v) => fs.setxattr(inos[f], n.as_bytes(), &value(v), d).unwrap(),
                Remove(f, n) => fs.removexattr(inos[f], n.as_bytes()).unwrap(),
                Unlink(f) => {
                    let gone = fs.unlink(ROOT_INO, f.as_bytes()).unwrap();
                    if let Some(i) = gone {
                        fs.release_inode(i).unwrap();
                    }
                }
            }
        }
    }

    /// A surviving file and its block: (which block, numbered in order of
    /// first holder; its refcount).
    type Holder = (String, Option<(usize, u32)>);

    /// The xattr block of the root's entry `name` (0: none).
    fn xattr_block_of(fs: &Ext4, name: &str) -> u64 {
        let ino = fs.lookup_ino(ROOT_INO, name.as_bytes()).unwrap();
        fs.inode(ino).unwrap().file_acl
    }

    /// Every surviving file's block, and the free blocks.
    fn layout(fs: &Ext4) -> (Vec<Holder>, u64) {
        let mut seen: Vec<u64> = Vec::new();
        let mut out = Vec::new();
        for f in FILES {
            let Ok(ino) = fs.lookup_ino(ROOT_INO, f.as_bytes()) else {
                continue;
            };
            let inode = fs.inode(ino as Ino).unwrap();
            let blk = inode.file_acl;
            let shared = (blk != 0).then(|| {
                let class = seen.iter().position(|b| *b == blk).unwrap_or_else(|| {
                    seen.push(blk);
                    seen.len() - 1
                });
                let data = fs.read_block(blk).unwrap();
                let seed = fs.has_metadata_csum().then(|| fs.csum_seed());
                let (h, _) = xattr::parse_block(&data, blk, seed, &fs.xattr_limits()).unwrap();
                (class, h.refcount)
            });
            out.push(((*f).to_owned(), shared));
        }
        (out, fs.statfs().unwrap().bfree)
    }

    /// One file's story, for `what_the_cache_knows_follows_the_kernel`.
    #[derive(Clone, Copy)]
    enum Act {
        /// Set user.b to `value(seed)`.
        Small(u8),
        /// A set too big for the block: ENOSPC.
        TooBig,
        /// A write (FUSE asks for security.capability first).
        Write,
    }

    /// Files and what happens to them; then `twin-<file>` sets the same
    /// user.b. The comment says whether the kernel shares it.
    const STORIES: &[(&str, &[Act])] = &[
        // A failed set takes the block out of the cache: not shared.
        ("failed", &[Act::Small(5), Act::TooBig]),
        // The first write's capability lookup puts it back: shared.
        ("failed_written", &[Act::Small(6), Act::TooBig, Act::Write]),
        // After a first write the inode is S_NOSEC: no lookup, not shared.
        (
            "written_failed_written",
            &[Act::Write, Act::Small(7), Act::TooBig, Act::Write],
        ),
    ];

    fn kernel_story(mnt: &Path) {
        for (f, acts) in STORIES {
            let p = mnt.join(f);
            std::fs::write(&p, b"").unwrap();
            for a in *acts {
                match *a {
                    Act::Small(v) => {
                        let hex: String = value(v).iter().map(|b| format!("{b:02x}")).collect();
                        let out = Command::new("setfattr")
                            .args(["-n", "user.b", "-v", &format!("0x{hex}")])
                            .arg(&p)
                            .output()
                            .unwrap();
                        assert!(out.status.success(), "{out:?}");
                    }
                    Act::TooBig => {
                        let hex = "7a".repeat(4000);
                        let out = Command::new("setfattr")
                            .args(["-n", "user.big", "-v", &format!("0x{hex}")])
                            .arg(&p)
                            .output()
                            .unwrap();
                        assert!(!out.status.success(), "ENOSPC expected: {out:?}");
                    }
                    Act::Write => {
                        use std::io::Write;
                        let mut fh = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
                        fh.write_all(b"x").unwrap();
                    }
                }
            }
            let twin = mnt.join(format!("twin-{f}"));
            std::fs::write(&twin, b"").unwrap();
            let Some(Act::Small(v)) = acts.iter().find(|a| matches!(a, Act::Small(_))) else {
                unreachable!()
            };
            let hex: String = value(*v).iter().map(|b| format!("{b:02x}")).collect();
            let out = Command::new("setfattr")
                .args(["-n", "user.b", "-v", &format!("0x{hex}")])
                .arg(&twin)
                .output()
                .unwrap();
            assert!(out.status.success(), "{out:?}");
        }
    }

    fn engine_story(fs: &Ext4) {
        let d = XattrFlags::default();
        for (f, acts) in STORIES {
            let ino = fs
                .create(ROOT_INO, f.as_bytes(), 0o100644, 0, 0, 0, 0)
                .unwrap()
                .ino;
            let mut size = 0;
            for a in *acts {
                match *a {
                    Act::Small(v) => fs.setxattr(ino, b"user.b", &value(v), d).unwrap(),
                    Act::TooBig => {
                        let e = fs.setxattr(ino, b"user.big", &[0x7a; 4000], d);
                        assert!(matches!(e, Err(crate::ext4::Error::NoSpace)), "{e:?}");
                    }
                    Act::Write => {
                        // What FUSE does before each write.
                        let _ = fs.getxattr(ino, b"security.capability");
                        fs.write(ino, size, b"x").unwrap();
                        size += 1;
                    }
                }
            }
            let twin = fs
                .create(
                    ROOT_INO,
                    format!("twin-{f}").as_bytes(),
                    0o100644,
                    0,
                    0,
                    0,
                    0,
                )
                .unwrap()
                .ino;
            let Some(Act::Small(v)) = acts.iter().find(|a| matches!(a, Act::Small(_))) else {
                unreachable!()
            };
            fs.setxattr(twin, b"user.b", &value(*v), d).unwrap();
        }
    }

    /// The same steps on twin images (4 KiB blocks, 128-byte inodes, so
    /// every attribute lives in the block): `kernel` through a kernel
    /// mount, `engine` through the engine. Returns the kernel's image
    /// (opened read-only) and the engine's, still mounted; `None` when no
    /// loop mount can be had.
    fn twins(
        tag: &str,
        kernel: fn(&Path),
        engine: fn(&Ext4),
    ) -> Option<(RwImage, PathBuf, RwImage, Ext4, Ext4)> {
        let args = ["-b", "4096", "-I", "128"];
        let k = RwImage::new(&format!("{tag}k"), &args);
        let mnt = k.img.with_extension("kmnt");
        {
            let _m = kernel_mounted(&k.img, &mnt, "loop")?;
            kernel(&mnt);
        }
        let kfs = open_image(&k.img).unwrap();
        let e = RwImage::new(&format!("{tag}e"), &args);
        let fs = e.open();
        engine(&fs);
        Some((k, mnt, e, kfs, fs))
    }

    /// Which blocks are candidates follows the kernel's cache: a failed
    /// set takes the inode's block out, a write's capability lookup puts
    /// it back only until the inode is S_NOSEC.
    #[test]
    fn what_the_cache_knows_follows_the_kernel() {
        if !have_mkfs() || !have(&["setfattr"]) {
            return;
        }
        let Some((_k, _mnt, e, kfs, fs)) = twins("cache", kernel_story, engine_story) else {
            return;
        };
        let shared = |fs: &Ext4| -> Vec<bool> {
            STORIES
                .iter()
                .map(|(f, _)| xattr_block_of(fs, f) == xattr_block_of(fs, &format!("twin-{f}")))
                .collect()
        };
        assert_eq!(shared(&kfs), vec![false, true, false], "the kernel");
        assert_eq!(shared(&fs), shared(&kfs), "engine vs kernel");
        assert_eq!(fs.statfs().unwrap().bfree, kfs.statfs().unwrap().bfree);
        fs.shutdown().unwrap();
        drop(fs);
        assert_fsck_clean(e.save(), "xattr sharing");
    }

    /// Identical xattr blocks are shared, copied, rejoined and released
    /// as the kernel's ext4 (with its mbcache) does: the same files share
    /// the same blocks with the same refcounts, the same free blocks;
    /// e2fsck finds the engine's image clean.
    #[test]
    fn shares_blocks_as_the_kernel_does() {
        if !have_mkfs() || !have(&["setfattr", "getfattr"]) {
            return;
        }
        let Some((k, mnt, e, kfs, fs)) = twins("share", kernel_side, engine_side) else {
            return;
        };
        let (mine, theirs) = (layout(&fs), layout(&kfs));
        assert_eq!(
            theirs.0,
            vec![
                ("f2".to_owned(), Some((0, 2))),
                ("f3".to_owned(), Some((1, 2))),
                ("f4".to_owned(), Some((0, 2))),
                ("f5".to_owned(), Some((1, 2))),
            ],
            "the kernel's sharing"
        );
        assert_eq!(mine, theirs, "engine vs kernel: sharing and free blocks");
        fs.shutdown().unwrap();
        drop(fs);
        assert_fsck_clean(e.save(), "xattr sharing");

        // After a remount the cache is empty: a block read by getxattr
        // (getfattr) is shared with the next identical set.
        {
            let Some(_m) = kernel_mounted(&k.img, &mnt, "loop") else {
                return;
            };
            let out = Command::new("getfattr")
                .args(["-d", "--absolute-names"])
                .arg(mnt.join("f5"))
                .output()
                .unwrap();
            assert!(out.status.success(), "{out:?}");
            std::fs::write(mnt.join("g"), b"").unwrap();
            let hex: String = value(4).iter().map(|b| format!("{b:02x}")).collect();
            let out = Command::new("setfattr")
                .args(["-n", "user.z", "-v", &format!("0x{hex}")])
                .arg(mnt.join("g"))
                .output()
                .unwrap();
            assert!(out.status.success(), "{out:?}");
        }
        let kfs = open_image(&k.img).unwrap();
        let fs = e.open();
        assert_eq!(fs.xattr_index_len(), 0);
        let f5 = fs.lookup_ino(ROOT_INO, b"f5").unwrap();
        fs.listxattr(f5).unwrap();
        assert_eq!(fs.xattr_index_len(), 1);
        let g = fs.create(ROOT_INO, b"g", 0o100644, 0, 0, 0, 0).unwrap().ino;
        fs.setxattr(g, b"user.z", &value(4), XattrFlags::default())
            .unwrap();
        assert_eq!(
            xattr_block_of(&kfs, "g"),
            xattr_block_of(&kfs, "f5"),
            "the kernel shares"
        );
        assert_eq!(
            xattr_block_of(&fs, "g"),
            xattr_block_of(&fs, "f5"),
            "the engine shares"
        );
        assert_eq!(fs.statfs().unwrap().bfree, kfs.statfs().unwrap().bfree);
        fs.shutdown().unwrap();
        drop(fs);
        assert_fsck_clean(e.save(), "xattr sharing");
    }

    #[test]
    fn index_orders_moves_and_evicts() {
        let mut i = BlockIndex::default();
        i.insert(7, 100);
        i.insert(7, 200);
        i.insert(9, 300);
        assert_eq!(i.candidates(7), vec![200, 100]);
        // Same hash again: no move (mb_cache_entry_create's EBUSY).
        i.insert(7, 100);
        assert_eq!(i.candidates(7), vec![200, 100]);
        // Changed in place: moves to its new hash.
        i.insert(9, 100);
        assert_eq!(i.candidates(7), vec![200]);
        assert_eq!(i.candidates(9), vec![100, 300]);
        // Hash 0 is never shared.
        i.insert(0, 300);
        assert_eq!(i.candidates(9), vec![100]);
        assert!(i.candidates(0).is_empty());
        i.remove_range(150, 100);
        assert!(i.candidates(7).is_empty());
        assert_eq!(i.len(), 1);
        // Full: the least recently used goes first; a touch saves one.
        let mut i = BlockIndex::default();
        for b in 0..INDEX_MAX as u64 {
            i.insert(1, b);
        }
        i.touch(0);
        i.insert(2, 1 << 40);
        assert_eq!(i.len(), INDEX_MAX);
        assert!(i.candidates(1).contains(&0));
        assert!(!i.candidates(1).contains(&1));
        assert_eq!(i.candidates(2), vec![1 << 40]);
    }

    #[test]
    fn commits_apply_frees_before_inserts_and_move_the_epoch() {
        let mut i = BlockIndex::default();
        i.insert(5, 10);
        let e = i.epoch();
        i.apply(&[], &[]);
        assert_eq!(i.epoch(), e, "an empty commit changes nothing");
        i.apply(
            &[(10, 1)],
            &[
                IndexEdit::Insert { hash: 6, blk: 10 },
                IndexEdit::Touch { blk: 10 },
            ],
        );
        assert_ne!(i.epoch(), e);
        assert!(i.candidates(5).is_empty());
        assert_eq!(i.candidates(6), vec![10]);
    }
}
