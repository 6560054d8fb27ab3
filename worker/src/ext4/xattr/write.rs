//! setxattr / removexattr, after the kernel's ext4_xattr_set_handle: the
//! in-inode area is tried first, then the xattr block; a block shared by
//! several inodes (h_refcount > 1) is copied on write (the old one's
//! count drops), unless the new content is shared too; a block left
//! empty is released. Entries are laid out by
//! the serializers in `ondisk::xattr` (block entries sorted like the
//! kernel, e_hash and h_hash as ext4_xattr_hash_entry/ext4_xattr_rehash
//! compute them, values packed from the end, 4-byte aligned).
//!
//! POSIX ACLs arrive in the generic xattr format and are stored in ext4's
//! compact format; their rules (mode updates, removal of an ACL the mode
//! says all of, validity) are `acl.rs`'s.
//!
//! With ea_inode, large values live in EA inodes (see `xattr_set_in`);
//! without it a value that fits neither the inode nor the block gets
//! ENOSPC, as in the kernel. A new block content identical to a block
//! the sharing index knows is shared instead of written (see `share`).
//! Not implemented: sharing EA inodes with identical values (the
//! kernel's second mbcache); EA inodes shared by other writers are
//! handled.

use crate::ext4::checksum::crc32c;
use crate::ext4::error::{Error, Result};
use crate::ext4::inode_flags;
use crate::ext4::ondisk::inode::{EXT4_EA_INODE_FL, Inode, S_IFREG};
use crate::ext4::ondisk::xattr::{
    self, INDEX_POSIX_ACL_ACCESS, INDEX_POSIX_ACL_DEFAULT, NewXattr, NewXattrValue,
    XATTR_BLOCK_HEADER_LEN, XATTR_IBODY_HEADER_LEN, sort_for_block, space_needed, split_name,
};
use crate::ext4::types::{FileKind, Ino, Timestamp, XattrFlags};
use crate::ext4::xattr::XATTR_NAME_MAX;
use crate::ext4::xattr::acl::Caller;
use crate::ext4::{Ext4, Txn};

/// XATTR_SIZE_MAX: the VFS's largest value.
const XATTR_SIZE_MAX: usize = 65536;

fn xcorrupt(ino: Ino, what: impl std::fmt::Display, block: u64) -> Error {
    Error::corrupt(format!("xattrs of inode {ino}: {what}"), block)
}

impl Ext4 {
    /// The hash EA inode `inum` keeps for its value (i_atime), as
    /// committed (for callers outside a transaction's xattr edits).
    pub(crate) fn ea_inode_value_hash(&self, inum: u32) -> Result<u32> {
        Ok(self.inode(inum)?.atime.secs as u32)
    }

    /// The hash an ea_inode keeps for its value (in i_atime's seconds).
    fn xw_ea_hash(&self, txn: &mut Txn<'_>, inum: u32) -> Result<u32> {
        Ok(txn.inode(inum)?.atime.secs as u32)
    }

    pub(super) fn xw_owned(
        &self,
        txn: &mut Txn<'_>,
        parsed: &[xattr::XattrEntry<'_>],
    ) -> Result<Vec<NewXattr>> {
        let mut out = Vec::with_capacity(parsed.len());
        for e in parsed {
            let h = match e.value {
                xattr::XattrValue::EaInode { inum, .. } => self.xw_ea_hash(txn, inum)?,
                xattr::XattrValue::Inline(_) => 0,
            };
            out.push(NewXattr::from_entry(e, h));
        }
        Ok(out)
    }

    fn xw_ibody_entries(&self, txn: &mut Txn<'_>, inode: &Inode) -> Result<Vec<NewXattr>> {
        let parsed = self.ibody_entries(inode)?;
        self.xw_owned(txn, &parsed)
    }

    /// (refcount, entries) of the inode's xattr block.
    fn xw_block_entries(&self, txn: &mut Txn<'_>, inode: &Inode) -> Result<(u32, Vec<NewXattr>)> {
        if inode.file_acl == 0 {
            return Ok((0, Vec::new()));
        }
        let blk = inode.file_acl;
        if !self.blocks_valid(blk, 1) {
            return Err(xcorrupt(inode.ino, "bad block number", blk));
        }
        let data = txn.block(blk)?;
        let seed = self.has_metadata_csum().then(|| self.csum_seed());
        let (h, parsed) = xattr::parse_block(&data, blk, seed, &self.xattr_limits())
            .map_err(|p| xcorrupt(inode.ino, p, blk))?;
        let owned = self.xw_owned(txn, &parsed)?;
        Ok((h.refcount, owned))
    }

    /// Drops this inode's reference to its xattr block
    /// (ext4_xattr_release_block): the block is freed when it was the
    /// last (it leaves the sharing index at commit), else its refcount
    /// drops.
    fn xw_drop_xattr_block(
        &self,
        txn: &mut Txn<'_>,
        inode: &mut Inode,
        refcount: u32,
    ) -> Result<()> {
        let blk = inode.file_acl;
        if blk == 0 {
            return Ok(());
        }
        if refcount > 1 {
            let seed = self.has_metadata_csum().then(|| self.csum_seed());
            let b = txn.block_mut(blk)?;
            xattr::set_block_refcount(b, blk, refcount.saturating_sub(1), seed);
        } else {
            txn.free_blocks(blk, 1)?;
        }
        inode.file_acl = 0;
        inode.blocks = inode.blocks.saturating_sub(self.cluster_sectors());
        Ok(())
    }

    /// Stores `entries` as the inode's xattr block, as
    /// ext4_xattr_block_set does with the kernel's block cache: an
    /// identical block the index knows is shared (its refcount grows, see
    /// `share`); else a block the inode owns alone is changed in place;
    /// else a new block is written. The previous block, if another, is
    /// released. EA inode references follow the blocks: a new block takes
    /// one for each of its EA entries that it did not get from the block
    /// it replaces in place, and a freed block gives its own back.
    fn xw_store_xattr_block(
        &self,
        txn: &mut Txn<'_>,
        inode: &mut Inode,
        refcount: u32,
        mut entries: Vec<NewXattr>,
        created: Option<u32>,
    ) -> Result<()> {
        if entries.is_empty() {
            return self.xw_drop_xattr_block(txn, inode, refcount);
        }
        sort_for_block(&mut entries);
        let seed = self.has_metadata_csum().then(|| self.csum_seed());
        let old = inode.file_acl;
        // A block the inode owns alone leaves the cache before it changes
        // (mb_cache_entry_delete_or_get): it is no candidate for itself.
        let in_place = old != 0 && refcount <= 1;
        let exclude = in_place.then_some(old);
        if let Some((found, their_refs)) = self.xattr_share_find(txn, &entries, exclude)? {
            if found != old {
                let b = txn.block_mut(found)?;
                xattr::set_block_refcount(b, found, their_refs.saturating_add(1), seed);
                if in_place {
                    // The old block, freed, held references to the same
                    // EA inodes the shared one holds.
                    for x in &entries {
                        if let NewXattrValue::EaInode { inum, .. } = x.value {
                            self.xw_ea_ref(txn, inum, -1)?;
                        }
                    }
                }
                if old != 0 {
                    self.xw_drop_xattr_block(txn, inode, refcount)?;
                }
                inode.file_acl = found;
                inode.blocks = inode.blocks.saturating_add(self.cluster_sectors());
            }
            txn.xattr_index_touch(found);
            return Ok(());
        }
        let hash = xattr::block_hash(entries.iter().map(xattr::entry_hash));
        if in_place {
            let b = txn.block_mut(old)?;
            if !xattr::write_block(b, old, 1, &entries, seed) {
                return Err(Error::NoSpace);
            }
            txn.xattr_index_insert(hash, old);
            return Ok(());
        }
        let reserved_ok = inode.uid == 0;
        let goal = 0;
        let (blk, _) = txn.alloc_blocks(goal, 1, reserved_ok)?;
        let b = txn.block_new(blk)?;
        if !xattr::write_block(b, blk, 1, &entries, seed) {
            return Err(Error::NoSpace);
        }
        // A copy of a shared block: its EA entries are new references
        // (the old block keeps its own).
        for x in &entries {
            if let NewXattrValue::EaInode { inum, .. } = x.value
                && Some(inum) != created
                && old != 0
            {
                self.xw_ea_ref(txn, inum, 1)?;
            }
        }
        txn.xattr_index_insert(hash, blk);
        if old != 0 {
            self.xw_drop_xattr_block(txn, inode, refcount)?;
        }
        inode.file_acl = blk;
        inode.blocks = inode.blocks.saturating_add(self.cluster_sectors());
        Ok(())
    }

    /// EXT4_XATTR_MIN_LARGE_EA_SIZE: with ea_inode, values whose padded
    /// size passes this go to an EA inode at once.
    fn xw_min_large_ea(&self) -> usize {
        (self.block_size() as usize)
            .saturating_sub(xattr::entry_len(3))
            .saturating_sub(XATTR_BLOCK_HEADER_LEN)
            .saturating_sub(4)
    }

    /// What an EA value adds to the i_blocks (512-byte units) of each
    /// inode that references it: its size rounded up to whole clusters
    /// (ext4_xattr_inode_alloc_quota charges the parent; e2fsck counts
    /// it in the parent's i_blocks).
    fn xw_ea_charge(&self, size: u32) -> u64 {
        let sectors = self.cluster_sectors();
        u64::from(size)
            .div_ceil(sectors.saturating_mul(512).max(1))
            .saturating_mul(sectors)
    }

    /// An EA inode's reference count: i_ctime seconds (high 32 bits) and
    /// the raw i_version (low 32), as ext4_xattr_inode_get_ref reads it.
    fn xw_ea_get_ref(ea: &Inode) -> u64 {
        ((ea.ctime.secs as u64 & 0xFFFF_FFFF) << 32) | (ea.version & 0xFFFF_FFFF)
    }

    fn xw_ea_set_ref(ea: &mut Inode, r: u64) {
        ea.ctime.secs = (r >> 32) as i64;
        ea.version = (ea.version & !0xFFFF_FFFF) | (r & 0xFFFF_FFFF);
    }

    /// Creates an EA inode holding `value` (ext4_xattr_inode_create):
    /// a regular file owned like `owner`, EXT4_EA_INODE_FL, the value as
    /// its data, reference count 1, and the crc32c of the value (the
    /// filesystem checksum seed) in i_atime. Returns (inode, hash).
    fn xw_ea_create(&self, txn: &mut Txn<'_>, owner: &Inode, value: &[u8]) -> Result<(u32, u32)> {
        let size = u32::try_from(value.len()).map_err(|_| Error::TooBig)?;
        let ino = txn.alloc_inode(owner.ino, FileKind::RegularFile)?;
        let now = self.now();
        let mut ea = Inode::new(self, ino, S_IFREG | 0o600, owner.uid, owner.gid, now);
        ea.flags |= EXT4_EA_INODE_FL;
        let bs = self.block_size() as usize;
        let nblocks = value.len().div_ceil(bs.max(1));
        if nblocks > 0 {
            let count = u32::try_from(nblocks).map_err(|_| Error::TooBig)?;
            let runs = self.map_alloc(txn, &mut ea, 0, count, false)?;
            for (lblk, pblk, n) in runs {
                let from = usize::try_from(lblk)
                    .ok()
                    .and_then(|l| l.checked_mul(bs))
                    .ok_or(Error::TooBig)?;
                let to = from
                    .saturating_add((n as usize).saturating_mul(bs))
                    .min(value.len());
                let Some(part) = value.get(from..to) else {
                    continue;
                };
                // Whole blocks: the tail of the last one is zeroed.
                let mut buf = part.to_vec();
                buf.resize(part.len().div_ceil(bs).saturating_mul(bs), 0);
                self.write_data(pblk, 0, &buf)?;
            }
        }
        ea.size = u64::from(size);
        let hash = crc32c(self.csum_seed(), value);
        ea.atime = Timestamp {
            secs: i64::from(hash),
            nsecs: 0,
        };
        Self::xw_ea_set_ref(&mut ea, 1);
        ea.links_count = 1;
        txn.put_inode(ea);
        Ok((ino, hash))
    }

    /// Changes an EA inode's reference count by `delta` (+1 or -1),
    /// freeing it when no reference is left (ext4_xattr_inode_update_ref
    /// and the eviction that follows).
    fn xw_ea_ref(&self, txn: &mut Txn<'_>, inum: u32, delta: i64) -> Result<()> {
        let mut ea = txn.inode(inum)?;
        if !ea.has_flag(EXT4_EA_INODE_FL) || ea.links_count == 0 {
            return Err(Error::corrupt(
                format!("xattr value inode {inum} is not a live EA inode"),
                0,
            ));
        }
        let r = Self::xw_ea_get_ref(&ea);
        let Some(r) = r.checked_add_signed(delta) else {
            return Err(Error::corrupt(
                format!("EA inode {inum}: reference count underflow"),
                0,
            ));
        };
        Self::xw_ea_set_ref(&mut ea, r);
        if r > 0 {
            txn.put_inode(ea);
            return Ok(());
        }
        self.free_file_blocks(txn, &mut ea)?;
        ea.links_count = 0;
        ea.size = 0;
        ea.dtime = u32::try_from(self.now().secs.max(0)).unwrap_or(u32::MAX);
        txn.put_inode(ea);
        txn.free_inode(inum, false)
    }

    /// Sets (`Some`) or removes (`None`) one attribute in `inode`, in
    /// `txn`. The inode is changed in place; the caller stores it.
    ///
    /// Placement follows ext4_xattr_set_handle: the inode body first,
    /// then the block; with ea_inode, a value too big for both (or bigger
    /// than EXT4_XATTR_MIN_LARGE_EA_SIZE) goes to a new EA inode whose
    /// entry is placed the same way. EA inode references: one per entry,
    /// a shared block's entries counting once; a copied shared block takes
    /// a reference for each of its EA entries.
    pub(crate) fn xattr_set_in(
        &self,
        txn: &mut Txn<'_>,
        inode: &mut Inode,
        index: u8,
        suffix: &[u8],
        value: Option<&[u8]>,
        flags: XattrFlags,
    ) -> Result<()> {
        let mut ibody = self.xw_ibody_entries(txn, inode)?;
        let (refcount, mut block) = self.xw_block_entries(txn, inode)?;
        let same = |x: &NewXattr| x.name_index == index && x.name == suffix;
        let in_ibody = ibody.iter().position(same);
        let in_block = block.iter().position(same);
        let exists = in_ibody.is_some() || in_block.is_some();
        if flags.create && exists {
            return Err(Error::Exists);
        }
        if (flags.replace || value.is_none()) && !exists {
            return Err(Error::NoAttribute);
        }
        // ext4_xattr_set_handle (ext4_xattr_value_same): a value in the
        // block set again unchanged is left alone; nothing is written and
        // ctime stays.
        if let (None, Some(i), Some(v)) = (in_ibody, in_block, value)
            && block
                .get(i)
                .is_some_and(|x| matches!(&x.value, NewXattrValue::Inline(old) if old == v))
        {
            return Ok(());
        }
        // EA inodes whose reference goes with the old value, and the
        // charge for an EA value the inode no longer sees.
        let mut dropped = Vec::new();
        let mut uncharge = 0u64;
        let ibody_pos = in_ibody;
        if let Some(i) = in_ibody {
            let old = ibody.remove(i);
            if let NewXattrValue::EaInode { inum, size, .. } = old.value {
                dropped.push(inum);
                uncharge = self.xw_ea_charge(size);
            }
        }
        let block_had = in_block.is_some();
        if let Some(i) = in_block {
            let old = block.remove(i);
            if let NewXattrValue::EaInode { inum, size, .. } = old.value {
                uncharge = self.xw_ea_charge(size);
                // A shared block keeps its entry (and the reference).
                if refcount <= 1 {
                    dropped.push(inum);
                }
            }
        }
        let area_len = inode.raw.len().saturating_sub(inode.ibody_start());
        let has_ibody = area_len >= XATTR_IBODY_HEADER_LEN;
        let mut block_changed = block_had;
        let mut created = None;
        if let Some(v) = value {
            let ea_feature = self.xattr_limits().ea_inode_feature;
            let mut in_inode = ea_feature && xattr::value_len(v.len()) > self.xw_min_large_ea();
            let bs = self.block_size() as usize;
            // At most two rounds: in the inode's value area, then in an
            // EA inode.
            for _ in 0..2 {
                let new_value = if in_inode {
                    let (inum, hash) = self.xw_ea_create(txn, inode, v)?;
                    created = Some(inum);
                    NewXattrValue::EaInode {
                        inum,
                        size: u32::try_from(v.len()).map_err(|_| Error::TooBig)?,
                        hash,
                    }
                } else {
                    NewXattrValue::Inline(v.to_vec())
                };
                let new = NewXattr {
                    name_index: index,
                    name: suffix.to_vec(),
                    value: new_value,
                };
                let mut try_ibody = ibody.clone();
                match ibody_pos {
                    Some(p) if p <= try_ibody.len() => try_ibody.insert(p, new.clone()),
                    _ => try_ibody.push(new.clone()),
                }
                if has_ibody
                    && XATTR_IBODY_HEADER_LEN.saturating_add(space_needed(&try_ibody)) <= area_len
                {
                    ibody = try_ibody;
                    break;
                }
                block.push(new);
                // With ea_inode, an inline value may not push the block's
                // values below EXT4_XATTR_BLOCK_RESERVE (min(bs/8, 1024)
                // bytes kept for entries and names): it goes to an EA
                // inode instead (ext4_xattr_set_entry).
                let reserve_kept = !ea_feature
                    || in_inode
                    || v.is_empty()
                    || bs.saturating_sub(inline_values_len(&block)) >= (bs / 8).min(1024);
                if XATTR_BLOCK_HEADER_LEN.saturating_add(space_needed(&block)) <= bs && reserve_kept
                {
                    block_changed = true;
                    break;
                }
                block.pop();
                if in_inode || !ea_feature || v.is_empty() {
                    // ext4_xattr_block_set took the inode's own block out
                    // of its cache before finding no room: it stays out.
                    if refcount <= 1 && inode.file_acl != 0 {
                        self.xattr_index_forget(inode.file_acl);
                    }
                    return Err(Error::NoSpace);
                }
                in_inode = true;
            }
        }
        if has_ibody {
            let start = inode.ibody_start();
            let area = inode.raw.get_mut(start..).ok_or_else(|| {
                xcorrupt(inode.ino, "no in-inode area", self.inode_block(inode.ino))
            })?;
            if !xattr::write_ibody(area, &ibody) {
                return Err(Error::NoSpace);
            }
        }
        if block_changed {
            self.xw_store_xattr_block(txn, inode, refcount, block, created)?;
        }
        for inum in dropped {
            self.xw_ea_ref(txn, inum, -1)?;
        }
        if let Some(v) = value
            && created.is_some()
        {
            let size = u32::try_from(v.len()).map_err(|_| Error::TooBig)?;
            inode.blocks = inode.blocks.saturating_add(self.xw_ea_charge(size));
        }
        inode.blocks = inode.blocks.saturating_sub(uncharge);
        inode.ctime = self.now();
        Ok(())
    }

    /// Resolves a full attribute name. Returns (index, suffix, value to
    /// store or None to remove); POSIX ACL values are still in the
    /// generic format here (`acl::plan_set` converts them).
    fn xw_xattr_prepare(
        name: &[u8],
        value: Option<&[u8]>,
    ) -> Result<(u8, Vec<u8>, Option<Vec<u8>>)> {
        if name.len() > XATTR_NAME_MAX {
            return Err(Error::Range);
        }
        let (index, suffix) = split_name(name)
            .ok_or_else(|| Error::Unsupported("extended attribute namespace".into()))?;
        if suffix.is_empty() && index != INDEX_POSIX_ACL_ACCESS && index != INDEX_POSIX_ACL_DEFAULT
        {
            return Err(Error::Invalid("empty attribute name"));
        }
        let Some(v) = value else {
            return Ok((index, suffix.to_vec(), None));
        };
        if v.len() > XATTR_SIZE_MAX {
            return Err(Error::TooBig);
        }
        Ok((index, suffix.to_vec(), Some(v.to_vec())))
    }

    pub fn setxattr(&self, ino: Ino, name: &[u8], value: &[u8], flags: XattrFlags) -> Result<()> {
        self.setxattr_as(ino, name, value, flags, Caller::ROOT)
    }

    /// setxattr on behalf of `caller` (whose group decides whether an
    /// access ACL clears S_ISGID). POSIX ACLs follow `acl::plan_set`.
    pub fn setxattr_as(
        &self,
        ino: Ino,
        name: &[u8],
        value: &[u8],
        flags: XattrFlags,
        caller: Caller,
    ) -> Result<()> {
        let (index, suffix, mut stored) = Self::xw_xattr_prepare(name, Some(value))?;
        let mut txn = self.begin()?;
        let mut inode = txn.inode(ino)?;
        // xattr_permission: no xattr changes on immutable or append-only.
        inode_flags::ensure_unpinned(&inode)?;
        if inode.links_count == 0 && self.inode(ino).is_err() {
            return Err(Error::NotFound);
        }
        let is_acl = index == INDEX_POSIX_ACL_ACCESS || index == INDEX_POSIX_ACL_DEFAULT;
        if is_acl {
            // ext4_set_acl -> set_cached_acl (see `share`).
            self.acl_cached_note(ino);
        }
        let mut flags = flags;
        let mut mode_changed = false;
        if is_acl {
            let plan = crate::ext4::xattr::acl::plan_set(&inode, index, value, caller)?;
            flags = XattrFlags::default();
            stored = plan.value;
            mode_changed = plan.mode != inode.mode;
            inode.mode = plan.mode;
        }
        match self.xattr_set_in(
            &mut txn,
            &mut inode,
            index,
            &suffix,
            stored.as_deref(),
            flags,
        ) {
            // No ACL to remove: only the mode may have changed.
            Err(Error::NoAttribute) if is_acl && stored.is_none() => {
                if !mode_changed {
                    return Ok(());
                }
                inode.ctime = self.now();
            }
            r => r?,
        }
        if mode_changed {
            inode.ctime = self.now();
        }
        txn.put_inode(inode);
        txn.commit()
    }

    pub fn removexattr(&self, ino: Ino, name: &[u8]) -> Result<()> {
        let (index, suffix, _) = Self::xw_xattr_prepare(name, None)?;
        if index == INDEX_POSIX_ACL_ACCESS || index == INDEX_POSIX_ACL_DEFAULT {
            self.acl_cached_note(ino);
        }
        let mut txn = self.begin()?;
        let mut inode = txn.inode(ino)?;
        // xattr_permission: no xattr changes on immutable or append-only.
        inode_flags::ensure_unpinned(&inode)?;
        match self.xattr_set_in(
            &mut txn,
            &mut inode,
            index,
            &suffix,
            None,
            XattrFlags::default(),
        ) {
            // vfs_remove_acl -> ext4_set_acl(NULL): removing an ACL that
            // is not there succeeds.
            Err(Error::NoAttribute)
                if index == INDEX_POSIX_ACL_ACCESS || index == INDEX_POSIX_ACL_DEFAULT =>
            {
                return Ok(());
            }
            r => r?,
        }
        txn.put_inode(inode);
        txn.commit()
    }

    /// Drops an inode's xattrs for an inode being freed: the EA inodes
    /// its in-inode entries reference, and its xattr block reference (the
    /// block and its EA inode references go when it was the last).
    pub(crate) fn xattr_release(&self, txn: &mut Txn<'_>, inode: &mut Inode) -> Result<()> {
        let mut dropped = Vec::new();
        if self.xattr_limits().ea_inode_feature {
            for x in self.xw_ibody_entries(txn, inode)? {
                if let NewXattrValue::EaInode { inum, .. } = x.value {
                    dropped.push(inum);
                }
            }
        }
        if inode.file_acl != 0 {
            let (refcount, entries) = self.xw_block_entries(txn, inode)?;
            if refcount <= 1 {
                for x in entries {
                    if let NewXattrValue::EaInode { inum, .. } = x.value {
                        dropped.push(inum);
                    }
                }
            }
            self.xw_drop_xattr_block(txn, inode, refcount)?;
        }
        for inum in dropped {
            self.xw_ea_ref(txn, inum, -1)?;
        }
        Ok(())
    }
}

/// Bytes the inline values of `entries` take in a block (each padded).
fn inline_values_len(entries: &[NewXattr]) -> usize {
    entries
        .iter()
        .map(|e| match &e.value {
            NewXattrValue::Inline(v) => xattr::value_len(v.len()),
            NewXattrValue::EaInode { .. } => 0,
        })
        .fold(0usize, usize::saturating_add)
}

#[cfg(test)]
mod tests {
    use crate::ext4::Ext4;
    use crate::ext4::error::Error;
    use crate::ext4::ondisk::inode::EXT4_EA_INODE_FL;
    use crate::ext4::ondisk::xattr::{self, XattrValue};
    use crate::ext4::testutil::have_mkfs;
    use crate::ext4::testutil::with_kernel_mount;
    use crate::ext4::testutil::{RwImage, fsck};
    use crate::ext4::types::{Ino, ROOT_INO, XattrFlags};

    fn val(n: usize, seed: u8) -> Vec<u8> {
        (0..n)
            .map(|i| (i as u32).wrapping_mul(31).wrapping_add(u32::from(seed)) as u8)
            .collect()
    }

    /// The EA inodes `ino`'s entries reference.
    fn ea_inodes(fs: &Ext4, ino: Ino) -> Vec<u32> {
        let inode = fs.inode(ino).unwrap();
        let limits = fs.xattr_limits();
        let mut out = Vec::new();
        for e in xattr::parse_ibody(inode.inline_xattr_area(), &limits).unwrap() {
            if let XattrValue::EaInode { inum, .. } = e.value {
                out.push(inum);
            }
        }
        if inode.file_acl != 0 {
            let b = fs.read_block(inode.file_acl).unwrap();
            let seed = fs.has_metadata_csum().then(|| fs.csum_seed());
            let (_, es) = xattr::parse_block(&b, inode.file_acl, seed, &limits).unwrap();
            for e in es {
                if let XattrValue::EaInode { inum, .. } = e.value {
                    out.push(inum);
                }
            }
        }
        out
    }

    fn kernel_value(path: &std::path::Path, name: &str) -> Vec<u8> {
        let out = std::process::Command::new("getfattr")
            .args(["--absolute-names", "--only-values", "-n", name])
            .arg(path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "getfattr {name} {path:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    #[test]
    fn ea_inode_values() {
        if !have_mkfs() {
            return;
        }
        let d = XattrFlags::default();
        for (tag, args) in [
            ("ea", &["-O", "ea_inode"][..]),
            ("ea4k", &["-O", "ea_inode", "-b", "4096"][..]),
            (
                "eanocsum",
                &["-O", "ea_inode,^metadata_csum", "-b", "4096"][..],
            ),
            ("eainline", &["-O", "ea_inode,inline_data", "-I", "512"][..]),
        ] {
            let im = RwImage::new(tag, args);
            let fs = im.open();
            let f = fs.create(ROOT_INO, b"f", 0o100644, 0, 7, 8, 0).unwrap().ino;
            let v10 = val(10 * 1024, 1);
            let v60 = val(60 * 1024, 2);
            fs.setxattr(f, b"user.ten", &v10, d).unwrap();
            fs.setxattr(f, b"user.sixty", &v60, d).unwrap();
            fs.setxattr(f, b"user.small", b"s", d).unwrap();
            // An inline file (mkfs -d made "d/b" inline with inline_data)
            // written after it got an EA entry: the file writer rewrites
            // the in-inode area around that entry.
            let d_ino = fs.lookup_ino(ROOT_INO, b"d").unwrap();
            let b = fs.lookup_ino(d_ino, b"b").unwrap();
            let inline = fs
                .inode(b)
                .unwrap()
                .has_flag(crate::ext4::ondisk::inode::EXT4_INLINE_DATA_FL);
            assert_eq!(inline, tag == "eainline", "{tag}");
            fs.setxattr(b, b"user.ea", &v10, d).unwrap();
            fs.write(b, 1, b" world").unwrap();
            let eas = ea_inodes(&fs, f);
            assert_eq!(eas.len(), 2, "{tag}");
            for &e in &eas {
                let ea = fs.inode(e).unwrap();
                assert!(ea.has_flag(EXT4_EA_INODE_FL));
                assert_eq!((ea.uid, ea.gid, ea.links_count), (7, 8, 1));
            }
            assert_eq!(fs.getxattr(f, b"user.ten").unwrap(), v10);
            assert_eq!(fs.getxattr(f, b"user.sixty").unwrap(), v60);
            assert!(matches!(
                fs.setxattr(f, b"user.big", &val(65 * 1024, 3), d),
                Err(Error::TooBig)
            ));
            // Replace: big -> other big (old EA inode freed), big -> small.
            let v10b = val(10 * 1024 + 3, 4);
            fs.setxattr(f, b"user.ten", &v10b, d).unwrap();
            // The old EA inode is freed (reads as deleted).
            assert!(!ea_inodes(&fs, f).contains(&eas[0]), "{tag}");
            assert!(matches!(fs.inode(eas[0]), Err(Error::NotFound)), "{tag}");
            assert_eq!(fs.getxattr(f, b"user.ten").unwrap(), v10b);
            fs.setxattr(f, b"user.sixty", b"now small", d).unwrap();
            assert_eq!(ea_inodes(&fs, f).len(), 1, "{tag}");
            fs.setxattr(f, b"user.sixty", &v60, d).unwrap();
            // Remove one.
            fs.setxattr(f, b"user.gone", &val(5000, 5), d).unwrap();
            fs.removexattr(f, b"user.gone").unwrap();
            assert!(matches!(
                fs.getxattr(f, b"user.gone"),
                Err(Error::NoAttribute)
            ));
            // A file whose EA inodes go with it.
            let before = fs.statfs().unwrap();
            let g = fs.create(ROOT_INO, b"g", 0o100644, 0, 0, 0, 0).unwrap().ino;
            for i in 0..4u8 {
                fs.setxattr(g, format!("user.v{i}").as_bytes(), &val(9000, i), d)
                    .unwrap();
            }
            let g_eas = ea_inodes(&fs, g);
            assert_eq!(g_eas.len(), 4);
            let gone = fs.unlink(ROOT_INO, b"g").unwrap().unwrap();
            fs.release_inode(gone).unwrap();
            // Everything g had is free again.
            let after = fs.statfs().unwrap();
            assert_eq!(
                (after.bfree, after.ffree),
                (before.bfree, before.ffree),
                "{tag}"
            );
            let h = fs.create(ROOT_INO, b"h", 0o100644, 0, 0, 0, 0).unwrap().ino;
            fs.setxattr(h, b"user.keep", &val(3000, 9), d).unwrap();
            // 3000 bytes fit a 4 KiB xattr block, not a 1 KiB one.
            let bs = fs.block_size();
            assert_eq!(ea_inodes(&fs, h).len(), usize::from(bs == 1024), "{tag}");
            fs.shutdown().unwrap();
            drop(fs);
            let (code, out) = fsck(im.save());
            assert_eq!(code, 0, "{tag}: {out}");
            let want = [
                ("f", "user.ten", v10b.clone()),
                ("f", "user.sixty", v60.clone()),
                ("f", "user.small", b"s".to_vec()),
                ("h", "user.keep", val(3000, 9)),
            ];
            with_kernel_mount(&im.img, |m| {
                for (file, name, v) in &want {
                    assert!(
                        kernel_value(&m.join(file), name) == *v,
                        "{tag}: {file} {name}"
                    );
                }
                assert!(!m.join("g").exists());
                assert_eq!(std::fs::read(m.join("d/b")).unwrap(), b"b world");
                assert!(kernel_value(&m.join("d/b"), "user.ea") == v10, "{tag}");
            });
        }
    }
}
