//! setxattr / removexattr, after the kernel's ext4_xattr_set_handle: the
//! in-inode area is tried first, then the xattr block; a block shared by
//! several inodes (h_refcount > 1) is copied on write (the old one's
//! count drops); a block left empty is released. Entries are laid out by
//! the serializers in `ondisk::xattr` (block entries sorted like the
//! kernel, e_hash and h_hash as ext4_xattr_hash_entry/ext4_xattr_rehash
//! compute them, values packed from the end, 4-byte aligned).
//!
//! POSIX ACLs arrive in the generic xattr format and are stored in ext4's
//! compact format (an empty ACL removes the attribute). With FUSE the
//! kernel's VFS updates the mode bits for an access ACL and sends them as
//! a separate setattr, so the engine stores only the ACL.
//!
//! Not implemented: values in an ea_inode (values that fit neither the
//! inode nor the block get ENOSPC, as on a filesystem without ea_inode),
//! and sharing identical blocks between inodes (mbcache).

use crate::ext4::error::{Error, Result};
use crate::ext4::ondisk::acl;
use crate::ext4::ondisk::inode::Inode;
use crate::ext4::ondisk::superblock::GOOD_OLD_INODE_SIZE;
use crate::ext4::ondisk::xattr::{
    self, INDEX_POSIX_ACL_ACCESS, INDEX_POSIX_ACL_DEFAULT, NewXattr, NewXattrValue,
    XATTR_BLOCK_HEADER_LEN, XATTR_IBODY_HEADER_LEN, XattrLimits, sort_for_block, space_needed,
    split_name,
};
use crate::ext4::types::{Ino, XattrFlags};
use crate::ext4::{Ext4, Txn};

/// XATTR_NAME_MAX.
const XATTR_NAME_MAX: usize = 255;
/// XATTR_SIZE_MAX: the VFS's largest value.
const XATTR_SIZE_MAX: usize = 65536;

fn xcorrupt(ino: Ino, what: impl std::fmt::Display, block: u64) -> Error {
    Error::corrupt(format!("xattrs of inode {ino}: {what}"), block)
}

impl Ext4 {
    fn xw_xlimits(&self) -> XattrLimits {
        XattrLimits {
            ea_inode_feature: self
                .sb()
                .has_incompat(crate::ext4::ondisk::superblock::INCOMPAT_EA_INODE),
            inodes_count: self.sb().s_inodes_count,
        }
    }

    /// The hash an ea_inode keeps for its value (in i_atime's seconds).
    fn xw_ea_hash(&self, txn: &mut Txn<'_>, inum: u32) -> Result<u32> {
        Ok(txn.inode(inum)?.atime.secs as u32)
    }

    fn xw_owned(
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

    /// Offset of the in-inode xattr area in the raw inode.
    fn xw_ibody_start(inode: &Inode) -> usize {
        usize::from(GOOD_OLD_INODE_SIZE) + usize::from(inode.extra_isize)
    }

    fn xw_ibody_entries(&self, txn: &mut Txn<'_>, inode: &Inode) -> Result<Vec<NewXattr>> {
        let parsed = xattr::parse_ibody(inode.inline_xattr_area(), &self.xw_xlimits())
            .map_err(|p| xcorrupt(inode.ino, p, 0))?;
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
        let (h, parsed) = xattr::parse_block(&data, blk, seed, &self.xw_xlimits())
            .map_err(|p| xcorrupt(inode.ino, p, blk))?;
        let owned = self.xw_owned(txn, &parsed)?;
        Ok((h.refcount, owned))
    }

    fn xw_sectors_per_block(&self) -> u64 {
        u64::from(self.block_size() >> 9) << self.sb().cluster_bits().min(20)
    }

    /// Drops this inode's reference to its xattr block: the block is freed
    /// when it was the last, else its refcount drops.
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
            xattr::set_block_refcount(b, blk, refcount - 1, seed);
        } else {
            txn.free_blocks(blk, 1)?;
        }
        inode.file_acl = 0;
        inode.blocks = inode.blocks.saturating_sub(self.xw_sectors_per_block());
        Ok(())
    }

    /// Stores `entries` as the inode's block: in place when the inode owns
    /// its block alone, else in a new block.
    fn xw_store_xattr_block(
        &self,
        txn: &mut Txn<'_>,
        inode: &mut Inode,
        refcount: u32,
        mut entries: Vec<NewXattr>,
    ) -> Result<()> {
        if entries.is_empty() {
            return self.xw_drop_xattr_block(txn, inode, refcount);
        }
        sort_for_block(&mut entries);
        let seed = self.has_metadata_csum().then(|| self.csum_seed());
        if inode.file_acl != 0 && refcount <= 1 {
            let blk = inode.file_acl;
            let b = txn.block_mut(blk)?;
            if !xattr::write_block(b, blk, 1, &entries, seed) {
                return Err(Error::NoSpace);
            }
            return Ok(());
        }
        let reserved_ok = inode.uid == 0;
        let goal = 0;
        let (blk, _) = txn.alloc_blocks(goal, 1, reserved_ok)?;
        let b = txn.block_new(blk)?;
        if !xattr::write_block(b, blk, 1, &entries, seed) {
            return Err(Error::NoSpace);
        }
        if inode.file_acl != 0 {
            self.xw_drop_xattr_block(txn, inode, refcount)?;
        }
        inode.file_acl = blk;
        inode.blocks = inode.blocks.saturating_add(self.xw_sectors_per_block());
        Ok(())
    }

    /// Sets (`Some`) or removes (`None`) one attribute in `inode`, in
    /// `txn`. The inode is changed in place; the caller stores it.
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
        if let Some(EntryValue::EaInode) = in_ibody
            .and_then(|i| ibody.get(i))
            .or_else(|| in_block.and_then(|i| block.get(i)))
            .map(entry_kind)
        {
            return Err(Error::Unsupported(
                "changing an attribute stored in an ea_inode".into(),
            ));
        }
        let ibody_pos = in_ibody;
        if let Some(i) = in_ibody {
            ibody.remove(i);
        }
        let block_had = in_block.is_some();
        if let Some(i) = in_block {
            block.remove(i);
        }
        let area_len = inode.raw.len().saturating_sub(Self::xw_ibody_start(inode));
        let mut block_changed = block_had;
        if let Some(v) = value {
            let new = NewXattr {
                name_index: index,
                name: suffix.to_vec(),
                value: NewXattrValue::Inline(v.to_vec()),
            };
            let mut try_ibody = ibody.clone();
            match ibody_pos {
                Some(p) if p <= try_ibody.len() => try_ibody.insert(p, new.clone()),
                _ => try_ibody.push(new.clone()),
            }
            if area_len >= XATTR_IBODY_HEADER_LEN
                && XATTR_IBODY_HEADER_LEN + space_needed(&try_ibody) <= area_len
            {
                ibody = try_ibody;
            } else {
                block.push(new);
                let bs = self.block_size() as usize;
                if XATTR_BLOCK_HEADER_LEN + space_needed(&block) > bs {
                    return Err(Error::NoSpace);
                }
                block_changed = true;
            }
        }
        if area_len >= XATTR_IBODY_HEADER_LEN {
            let start = Self::xw_ibody_start(inode);
            let area = inode
                .raw
                .get_mut(start..)
                .ok_or_else(|| xcorrupt(inode.ino, "no in-inode area", 0))?;
            if !xattr::write_ibody(area, &ibody) {
                return Err(Error::NoSpace);
            }
        }
        if block_changed {
            self.xw_store_xattr_block(txn, inode, refcount, block)?;
        }
        inode.ctime = self.now();
        Ok(())
    }

    /// Resolves a full attribute name, converting ACL values to the disk
    /// format. Returns (index, suffix, value to store or None to remove).
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
        if index == INDEX_POSIX_ACL_ACCESS || index == INDEX_POSIX_ACL_DEFAULT {
            let entries = acl::from_xattr(v).map_err(|_| Error::Invalid("malformed ACL"))?;
            if entries.is_empty() {
                return Ok((index, suffix.to_vec(), None));
            }
            if !acl::is_valid(&entries) {
                return Err(Error::Invalid("invalid ACL"));
            }
            return Ok((index, suffix.to_vec(), Some(acl::to_disk(&entries))));
        }
        Ok((index, suffix.to_vec(), Some(v.to_vec())))
    }

    pub fn setxattr(&self, ino: Ino, name: &[u8], value: &[u8], flags: XattrFlags) -> Result<()> {
        let (index, suffix, value) = Self::xw_xattr_prepare(name, Some(value))?;
        let mut txn = self.begin()?;
        let mut inode = txn.inode(ino)?;
        if inode.links_count == 0 && self.inode(ino).is_err() {
            return Err(Error::NotFound);
        }
        match self.xattr_set_in(
            &mut txn,
            &mut inode,
            index,
            &suffix,
            value.as_deref(),
            flags,
        ) {
            // An empty ACL on a file without one: nothing to remove.
            Err(Error::NoAttribute) if value.is_none() && !flags.replace => return Ok(()),
            r => r?,
        }
        txn.put_inode(inode);
        txn.commit()
    }

    pub fn removexattr(&self, ino: Ino, name: &[u8]) -> Result<()> {
        let (index, suffix, _) = Self::xw_xattr_prepare(name, None)?;
        let mut txn = self.begin()?;
        let mut inode = txn.inode(ino)?;
        self.xattr_set_in(
            &mut txn,
            &mut inode,
            index,
            &suffix,
            None,
            XattrFlags::default(),
        )?;
        txn.put_inode(inode);
        txn.commit()
    }

    /// Drops an inode's xattr block reference (freeing the block when it
    /// was the last), for an inode being freed.
    pub(crate) fn xattr_release(&self, txn: &mut Txn<'_>, inode: &mut Inode) -> Result<()> {
        if inode.file_acl == 0 {
            return Ok(());
        }
        let (refcount, _) = self.xw_block_entries(txn, inode)?;
        self.xw_drop_xattr_block(txn, inode, refcount)
    }
}

enum EntryValue {
    Inline,
    EaInode,
}

fn entry_kind(x: &NewXattr) -> EntryValue {
    match x.value {
        NewXattrValue::Inline(_) => EntryValue::Inline,
        NewXattrValue::EaInode { .. } => EntryValue::EaInode,
    }
}
