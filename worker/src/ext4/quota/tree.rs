//! The quota file of one type inside a transaction: lookup, insertion and
//! removal of an id's entry in the radix tree, the free-block and
//! free-entry lists, and growth of the file, as fs/quota/quota_tree.c
//! does them. Quota blocks are journaled like metadata (ext4_quota_write
//! does the same), so they are read and changed through the transaction.
//!
//! Every reference read from the file is checked against the file's block
//! count before use; the tree has a fixed depth, and list walks are capped
//! by the block count, so a hostile file cannot make this loop.

use std::collections::BTreeMap;

use crate::ext4::file::Mapping;
use crate::ext4::ondisk::quota::{
    self as q, DataHeader, DiskDquot, ENTRIES_PER_BLOCK, ENTRY_LEN, QT_BLOCK_BITS, QT_BLOCK_SIZE,
    QT_TREEDEPTH, QT_TREEOFF, QuotaInfo, QuotaProblem, QuotaType,
};
use crate::ext4::txn::Txn;
use crate::ext4::{Error, Ino, Result};

/// A quota file opened in a transaction.
pub(crate) struct QuotaFile {
    pub(crate) qtype: QuotaType,
    pub(crate) ino: Ino,
    pub(crate) info: QuotaInfo,
    info_dirty: bool,
    /// Logical fs block -> physical block, for blocks mapped in this
    /// transaction (their extent tree edits are not committed yet).
    new_maps: BTreeMap<u64, u64>,
}

/// Where an id's entry lives: quota block and slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct EntryLoc {
    pub(crate) blk: u32,
    pub(crate) slot: usize,
}

impl QuotaFile {
    /// Opens the quota file of `qtype` in inode `ino`: reads and checks
    /// its header.
    pub(crate) fn open(txn: &mut Txn<'_>, qtype: QuotaType, ino: Ino) -> Result<QuotaFile> {
        let mut f = QuotaFile {
            qtype,
            ino,
            info: QuotaInfo {
                dqi_bgrace: 0,
                dqi_igrace: 0,
                dqi_flags: 0,
                dqi_blocks: 0,
                dqi_free_blk: 0,
                dqi_free_entry: 0,
            },
            info_dirty: false,
            new_maps: BTreeMap::new(),
        };
        let b0 = f.read(txn, 0)?;
        f.info = QuotaInfo::parse(&b0, qtype).map_err(|p| f.corrupt(txn, 0, p))?;
        let inode = txn.inode(ino)?;
        let have = inode.size >> QT_BLOCK_BITS;
        if u64::from(f.info.dqi_blocks) > have {
            return Err(f.corrupt(
                txn,
                0,
                QuotaProblem::BadReference {
                    blk: f.info.dqi_blocks,
                    blocks: u32::try_from(have).unwrap_or(u32::MAX),
                },
            ));
        }
        Ok(f)
    }

    /// Error::Corrupt naming this file, the quota block and the problem.
    pub(crate) fn corrupt(&self, txn: &Txn<'_>, blk: u32, p: QuotaProblem) -> Error {
        let at = self.locate(txn, blk).map(|(b, _)| b).unwrap_or(0);
        Error::corrupt(
            format!(
                "{} quota file (inode {}), quota block {blk}: {p}",
                self.qtype.name(),
                self.ino
            ),
            at,
        )
    }

    /// The physical block and byte offset holding quota block `blk`.
    fn locate(&self, txn: &Txn<'_>, blk: u32) -> Result<(u64, usize)> {
        let fs = txn.fs();
        let bs = u64::from(fs.block_size());
        let off = u64::from(blk) << QT_BLOCK_BITS;
        let lblk = off.checked_div(bs).unwrap_or(0);
        let inner = off.checked_rem(bs).unwrap_or(0) as usize;
        if let Some(p) = self.new_maps.get(&lblk) {
            return Ok((*p, inner));
        }
        // Blocks mapped before this transaction never move (the file only
        // grows): the committed inode maps them, with the committed tree.
        let inode = fs.inode_any(self.ino)?;
        match fs.map_block(&inode, lblk)? {
            Mapping::Mapped {
                pblk,
                uninit: false,
                ..
            } => Ok((pblk, inner)),
            _ => Err(Error::corrupt(
                format!(
                    "{} quota file (inode {}): {}",
                    self.qtype.name(),
                    self.ino,
                    QuotaProblem::Hole(blk)
                ),
                0,
            )),
        }
    }

    /// A copy of quota block `blk`.
    pub(crate) fn read(&self, txn: &mut Txn<'_>, blk: u32) -> Result<Vec<u8>> {
        let (p, off) = self.locate(txn, blk)?;
        let b = txn.block(p)?;
        b.get(off..off.saturating_add(QT_BLOCK_SIZE))
            .map(<[u8]>::to_vec)
            .ok_or_else(|| Error::corrupt("quota block beyond its fs block", p))
    }

    fn write(&self, txn: &mut Txn<'_>, blk: u32, data: &[u8]) -> Result<()> {
        let (p, off) = self.locate(txn, blk)?;
        let b = txn.block_mut(p)?;
        let dst = b
            .get_mut(off..off.saturating_add(QT_BLOCK_SIZE))
            .ok_or_else(|| Error::corrupt("quota block beyond its fs block", p))?;
        dst.copy_from_slice(data.get(..QT_BLOCK_SIZE).unwrap_or(&[0; QT_BLOCK_SIZE]));
        Ok(())
    }

    fn check(&self, txn: &Txn<'_>, blk: u32) -> Result<u32> {
        self.info
            .check_ref(blk)
            .map_err(|p| self.corrupt(txn, 0, p))
    }

    /// Marks the info changed (`finish` writes it).
    pub(crate) fn set_info_dirty(&mut self) {
        self.info_dirty = true;
    }

    /// Writes the info block if it changed.
    pub(crate) fn finish(&mut self, txn: &mut Txn<'_>) -> Result<()> {
        if self.info_dirty {
            let mut b0 = self.read(txn, 0)?;
            self.info.write(&mut b0);
            self.write(txn, 0, &b0)?;
            self.info_dirty = false;
        }
        Ok(())
    }

    /// Where `id`'s entry is, if it has one (find_tree_dqentry).
    pub(crate) fn find(&self, txn: &mut Txn<'_>, id: u32) -> Result<Option<EntryLoc>> {
        let mut blk = QT_TREEOFF;
        for depth in 0..QT_TREEDEPTH {
            let b = self.read(txn, blk)?;
            let r = q::tree_ref(&b, q::tree_index(id, depth));
            if r == 0 {
                return Ok(None);
            }
            blk = self.check(txn, r)?;
        }
        let b = self.read(txn, blk)?;
        for slot in 0..ENTRIES_PER_BLOCK {
            let e = q::bytes_of_entry(&b, slot);
            if !q::entry_unused(e) && DiskDquot::parse(e).id == id {
                return Ok(Some(EntryLoc { blk, slot }));
            }
        }
        Err(self.corrupt(txn, blk, QuotaProblem::MissingEntry { id, blk }))
    }

    pub(crate) fn get(&self, txn: &mut Txn<'_>, at: EntryLoc) -> Result<DiskDquot> {
        let b = self.read(txn, at.blk)?;
        Ok(DiskDquot::parse(q::bytes_of_entry(&b, at.slot)))
    }

    pub(crate) fn put(&self, txn: &mut Txn<'_>, at: EntryLoc, d: &DiskDquot) -> Result<()> {
        let mut b = self.read(txn, at.blk)?;
        d.write(q::bytes_of_entry_mut(&mut b, at.slot));
        self.write(txn, at.blk, &b)
    }

    /// A block for a new tree or data block: the head of the free-block
    /// list, else a new block at the end of the file (get_free_dqblk).
    /// Returned zero-filled in the file.
    fn alloc_block(&mut self, txn: &mut Txn<'_>) -> Result<u32> {
        let blk = if self.info.dqi_free_blk != 0 {
            let blk = self.check(txn, self.info.dqi_free_blk)?;
            let b = self.read(txn, blk)?;
            self.info.dqi_free_blk = DataHeader::parse(&b).next_free;
            blk
        } else {
            let blk = self.info.dqi_blocks;
            self.grow(txn, blk)?;
            self.info.dqi_blocks = blk
                .checked_add(1)
                .ok_or_else(|| self.corrupt(txn, 0, QuotaProblem::FreeListLoop))?;
            blk
        };
        self.info_dirty = true;
        self.write(txn, blk, &[0; QT_BLOCK_SIZE])?;
        Ok(blk)
    }

    /// Makes room for quota block `blk` at the end of the file: maps its
    /// fs block when it starts one (the kernel's quota writes may use the
    /// root-reserved blocks) and extends i_size.
    fn grow(&mut self, txn: &mut Txn<'_>, blk: u32) -> Result<()> {
        let fs = txn.fs();
        let bs = u64::from(fs.block_size()).max(1);
        let off = u64::from(blk) << QT_BLOCK_BITS;
        let lblk = off.checked_div(bs).unwrap_or(0);
        let mut inode = txn.inode(self.ino)?;
        let committed = fs.inode_any(self.ino)?;
        let mapped = self.new_maps.contains_key(&lblk)
            || matches!(
                fs.map_block(&committed, lblk)?,
                Mapping::Mapped { uninit: false, .. }
            );
        if !mapped {
            let (runs, short) = fs.map_alloc_runs(txn, &mut inode, lblk, 1, false, true)?;
            let run = runs.first().filter(|_| !short).ok_or(Error::NoSpace)?;
            txn.block_new(run.pblk)?;
            self.new_maps.insert(lblk, run.pblk);
        }
        let end = off.saturating_add(QT_BLOCK_SIZE as u64);
        if inode.size < end {
            inode.size = end;
        }
        txn.put_inode(inode);
        Ok(())
    }

    /// Puts `blk` at the head of the free-block list (put_free_dqblk).
    fn free_block(&mut self, txn: &mut Txn<'_>, blk: u32) -> Result<()> {
        let mut b = vec![0u8; QT_BLOCK_SIZE];
        DataHeader {
            next_free: self.info.dqi_free_blk,
            prev_free: 0,
            entries: 0,
        }
        .write(&mut b);
        self.write(txn, blk, &b)?;
        self.info.dqi_free_blk = blk;
        self.info_dirty = true;
        Ok(())
    }

    /// Unlinks data block `blk` (header `h`, contents `b`) from the
    /// free-entry list (remove_free_dqentry); writes `b`.
    fn unlink_free_entry(&mut self, txn: &mut Txn<'_>, blk: u32, b: &mut [u8]) -> Result<()> {
        let h = DataHeader::parse(b);
        if h.next_free != 0 {
            let n = self.check(txn, h.next_free)?;
            let mut nb = self.read(txn, n)?;
            let mut nh = DataHeader::parse(&nb);
            nh.prev_free = h.prev_free;
            nh.write(&mut nb);
            self.write(txn, n, &nb)?;
        }
        if h.prev_free != 0 {
            let p = self.check(txn, h.prev_free)?;
            let mut pb = self.read(txn, p)?;
            let mut ph = DataHeader::parse(&pb);
            ph.next_free = h.next_free;
            ph.write(&mut pb);
            self.write(txn, p, &pb)?;
        } else {
            self.info.dqi_free_entry = h.next_free;
            self.info_dirty = true;
        }
        DataHeader {
            next_free: 0,
            prev_free: 0,
            entries: h.entries,
        }
        .write(b);
        self.write(txn, blk, b)
    }

    /// Puts data block `blk` at the head of the free-entry list
    /// (insert_free_dqentry); writes `b`.
    fn link_free_entry(&mut self, txn: &mut Txn<'_>, blk: u32, b: &mut [u8]) -> Result<()> {
        let mut h = DataHeader::parse(b);
        h.next_free = self.info.dqi_free_entry;
        h.prev_free = 0;
        h.write(b);
        self.write(txn, blk, b)?;
        if self.info.dqi_free_entry != 0 {
            let n = self.check(txn, self.info.dqi_free_entry)?;
            let mut nb = self.read(txn, n)?;
            let mut nh = DataHeader::parse(&nb);
            nh.prev_free = blk;
            nh.write(&mut nb);
            self.write(txn, n, &nb)?;
        }
        self.info.dqi_free_entry = blk;
        self.info_dirty = true;
        Ok(())
    }

    /// A free entry for `id` (find_free_dqentry): in the first data block
    /// with room, else in a new data block.
    fn new_entry(&mut self, txn: &mut Txn<'_>, id: u32) -> Result<EntryLoc> {
        let (blk, mut b) = if self.info.dqi_free_entry != 0 {
            let blk = self.check(txn, self.info.dqi_free_entry)?;
            let b = self.read(txn, blk)?;
            (blk, b)
        } else {
            let blk = self.alloc_block(txn)?;
            let mut b = vec![0u8; QT_BLOCK_SIZE];
            // Now the only block with free entries.
            DataHeader::default().write(&mut b);
            self.info.dqi_free_entry = blk;
            self.info_dirty = true;
            self.write(txn, blk, &b)?;
            (blk, b)
        };
        let mut h = DataHeader::parse(&b);
        if usize::from(h.entries) >= ENTRIES_PER_BLOCK {
            return Err(self.corrupt(txn, blk, QuotaProblem::FullOnFreeList { blk }));
        }
        h.entries = h.entries.saturating_add(1);
        h.write(&mut b);
        let slot = (0..ENTRIES_PER_BLOCK)
            .find(|&s| q::entry_unused(q::bytes_of_entry(&b, s)))
            .ok_or_else(|| self.corrupt(txn, blk, QuotaProblem::FullOnFreeList { blk }))?;
        DiskDquot {
            id,
            ..Default::default()
        }
        .write(q::bytes_of_entry_mut(&mut b, slot));
        if usize::from(h.entries) == ENTRIES_PER_BLOCK {
            self.unlink_free_entry(txn, blk, &mut b)?;
        } else {
            self.write(txn, blk, &b)?;
        }
        Ok(EntryLoc { blk, slot })
    }

    /// Inserts an entry for `id` (not present) into the tree
    /// (do_insert_tree): missing tree blocks are made top-down, then the
    /// entry.
    pub(crate) fn insert(&mut self, txn: &mut Txn<'_>, id: u32) -> Result<EntryLoc> {
        let mut blk = QT_TREEOFF;
        for depth in 0..QT_TREEDEPTH {
            let mut b = self.read(txn, blk)?;
            let i = q::tree_index(id, depth);
            let r = q::tree_ref(&b, i);
            let last = depth.saturating_add(1) == QT_TREEDEPTH;
            if last {
                if r != 0 {
                    return Err(self.corrupt(txn, blk, QuotaProblem::AlreadyPresent { id }));
                }
                let at = self.new_entry(txn, id)?;
                // Read the tree block again: new_entry wrote other blocks
                // (and, in a corrupt file, maybe this one).
                let mut b = self.read(txn, blk)?;
                q::set_tree_ref(&mut b, i, at.blk);
                self.write(txn, blk, &b)?;
                return Ok(at);
            }
            let next = if r == 0 {
                let n = self.alloc_block(txn)?;
                q::set_tree_ref(&mut b, i, n);
                self.write(txn, blk, &b)?;
                n
            } else {
                self.check(txn, r)?
            };
            blk = next;
        }
        Err(self.corrupt(txn, blk, QuotaProblem::AlreadyPresent { id }))
    }

    /// Removes `id`'s entry (qtree_delete_dquot): frees emptied data and
    /// tree blocks (never the root).
    pub(crate) fn remove(&mut self, txn: &mut Txn<'_>, id: u32) -> Result<()> {
        // The path from the root: (tree block, slot) per level.
        let mut path = Vec::with_capacity(QT_TREEDEPTH);
        let mut blk = QT_TREEOFF;
        for depth in 0..QT_TREEDEPTH {
            let b = self.read(txn, blk)?;
            let i = q::tree_index(id, depth);
            let r = q::tree_ref(&b, i);
            if r == 0 {
                return Ok(());
            }
            path.push((blk, i));
            blk = self.check(txn, r)?;
        }
        // The data block.
        let mut b = self.read(txn, blk)?;
        let slot = (0..ENTRIES_PER_BLOCK)
            .find(|&s| {
                let e = q::bytes_of_entry(&b, s);
                !q::entry_unused(e) && DiskDquot::parse(e).id == id
            })
            .ok_or_else(|| self.corrupt(txn, blk, QuotaProblem::MissingEntry { id, blk }))?;
        let mut h = DataHeader::parse(&b);
        let was_full = usize::from(h.entries) == ENTRIES_PER_BLOCK;
        h.entries = h.entries.saturating_sub(1);
        h.write(&mut b);
        if let Some(e) = b
            .get_mut(q::entry_offset(slot)..)
            .and_then(|e| e.get_mut(..ENTRY_LEN))
        {
            e.fill(0);
        }
        let emptied = h.entries == 0;
        if emptied {
            if !was_full {
                self.unlink_free_entry(txn, blk, &mut b)?;
            }
            self.free_block(txn, blk)?;
        } else if was_full {
            self.link_free_entry(txn, blk, &mut b)?;
        } else {
            self.write(txn, blk, &b)?;
        }
        // The id's reference to its data block goes whatever is left in
        // that block (remove_tree); tree blocks left empty are freed,
        // bottom-up, and their references with them.
        let mut child_gone = true;
        for (tblk, i) in path.into_iter().rev() {
            if !child_gone {
                break;
            }
            let mut tb = self.read(txn, tblk)?;
            q::set_tree_ref(&mut tb, i, 0);
            if tblk != QT_TREEOFF && tb.iter().all(|&x| x == 0) {
                self.free_block(txn, tblk)?;
            } else {
                self.write(txn, tblk, &tb)?;
                child_gone = false;
            }
        }
        Ok(())
    }

    /// Every entry in the file, by id, checking the whole structure: tree
    /// references in bounds, no tree block reached twice, entry counts
    /// matching, each entry where its id's path leads. For the mount-time
    /// check and tests.
    pub(crate) fn all_entries(&self, txn: &mut Txn<'_>) -> Result<BTreeMap<u32, DiskDquot>> {
        let mut out = BTreeMap::new();
        let mut seen_tree = std::collections::BTreeSet::new();
        let mut seen_data = std::collections::BTreeSet::new();
        // (block, depth, id prefix)
        let mut stack = vec![(QT_TREEOFF, 0usize, 0u32)];
        while let Some((blk, depth, prefix)) = stack.pop() {
            let b = self.read(txn, blk)?;
            if depth == QT_TREEDEPTH {
                // The id this path spells has its entry here (no stale
                // reference: the kernel would fail that id's lookup).
                let present = (0..ENTRIES_PER_BLOCK).any(|s| {
                    let e = q::bytes_of_entry(&b, s);
                    !q::entry_unused(e) && DiskDquot::parse(e).id == prefix
                });
                if !present {
                    return Err(self.corrupt(
                        txn,
                        blk,
                        QuotaProblem::MissingEntry { id: prefix, blk },
                    ));
                }
                if !seen_data.insert(blk) {
                    continue;
                }
                let h = DataHeader::parse(&b);
                let mut used = 0usize;
                for slot in 0..ENTRIES_PER_BLOCK {
                    let e = q::bytes_of_entry(&b, slot);
                    if q::entry_unused(e) {
                        continue;
                    }
                    used = used.saturating_add(1);
                    let d = DiskDquot::parse(e);
                    if self.find(txn, d.id)? == Some(EntryLoc { blk, slot }) {
                        out.insert(d.id, d);
                    }
                }
                if used != usize::from(h.entries) {
                    return Err(self.corrupt(txn, blk, QuotaProblem::CountMismatch { blk, used }));
                }
                continue;
            }
            if !seen_tree.insert(blk) {
                return Err(self.corrupt(txn, blk, QuotaProblem::TreeCycle { blk }));
            }
            for i in 0..256usize {
                let r = q::tree_ref(&b, i);
                if r == 0 {
                    continue;
                }
                let r = self.check(txn, r)?;
                let shift =
                    (QT_TREEDEPTH.saturating_sub(1).saturating_sub(depth) as u32).saturating_mul(8);
                let id = prefix | (i as u32).checked_shl(shift).unwrap_or(0);
                stack.push((r, depth.saturating_add(1), id));
            }
        }
        // The free lists end within the file.
        for head in [self.info.dqi_free_blk, self.info.dqi_free_entry] {
            let mut at = head;
            let mut steps = 0u32;
            while at != 0 {
                steps = steps.saturating_add(1);
                if steps > self.info.dqi_blocks {
                    return Err(self.corrupt(txn, 0, QuotaProblem::FreeListLoop));
                }
                let blk = self.check(txn, at)?;
                at = DataHeader::parse(&self.read(txn, blk)?).next_free;
            }
        }
        Ok(out)
    }
}
