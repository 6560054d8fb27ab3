//! getxattr / listxattr over the in-inode region, the xattr block and
//! ea_inode values; POSIX ACLs converted to the generic xattr format; and
//! the inline-data bytes of an inode (i_block + "system.data").
//!
//! listxattr shows what the kernel's ext4 shows to a privileged caller:
//! user.*, trusted.*, security.*, gnu.* and the two POSIX ACL names, in
//! on-disk order (in-inode first, then the block). "system.data" (inline
//! data), richacl, lustre and the encryption context stay hidden. The
//! kernel hides trusted.* from callers without CAP_SYS_ADMIN; the engine
//! does not know the caller, so that filter belongs to the FUSE adapter.

use crate::ext4::Ext4;
use crate::ext4::error::{Error, Result};
use crate::ext4::ondisk::acl;
use crate::ext4::ondisk::inode::{EXT4_EA_INODE_FL, EXT4_INLINE_DATA_FL, I_BLOCK_SIZE, Inode};
use crate::ext4::ondisk::superblock::INCOMPAT_EA_INODE;
use crate::ext4::ondisk::xattr::{
    self, INDEX_POSIX_ACL_ACCESS, INDEX_POSIX_ACL_DEFAULT, INDEX_SYSTEM, XattrEntry, XattrLimits,
    XattrValue, index_is_listed, index_prefix, split_name,
};
use crate::ext4::types::Ino;

/// Longest attribute name (with prefix) the VFS accepts (XATTR_NAME_MAX).
const XATTR_NAME_MAX: usize = 255;

/// One attribute with its value location copied out of the block.
#[derive(Debug, Clone)]
struct OwnedXattr {
    index: u8,
    name: Vec<u8>,
    value: OwnedValue,
}

#[derive(Debug, Clone)]
enum OwnedValue {
    Bytes(Vec<u8>),
    EaInode { inum: u32, size: u32 },
}

impl OwnedXattr {
    fn from_entry(e: &XattrEntry<'_>) -> Self {
        OwnedXattr {
            index: e.name_index,
            name: e.name.to_vec(),
            value: match e.value {
                XattrValue::Inline(v) => OwnedValue::Bytes(v.to_vec()),
                XattrValue::EaInode { inum, size } => OwnedValue::EaInode { inum, size },
            },
        }
    }
}

impl Ext4 {
    fn xattr_limits(&self) -> XattrLimits {
        XattrLimits {
            ea_inode_feature: self.sb().has_incompat(INCOMPAT_EA_INODE),
            inodes_count: self.sb().s_inodes_count,
        }
    }

    /// The attributes stored inside the inode.
    fn ibody_xattrs(&self, inode: &Inode) -> Result<Vec<OwnedXattr>> {
        let entries =
            xattr::parse_ibody(inode.inline_xattr_area(), &self.xattr_limits()).map_err(|p| {
                Error::corrupt(format!("in-inode xattrs of inode {}: {p}", inode.ino), 0)
            })?;
        Ok(entries.iter().map(OwnedXattr::from_entry).collect())
    }

    /// The attributes in the inode's xattr block (none without one).
    fn block_xattrs(&self, inode: &Inode) -> Result<Vec<OwnedXattr>> {
        let blocknr = inode.file_acl;
        if blocknr == 0 {
            return Ok(Vec::new());
        }
        let block = self.read_block(blocknr)?;
        let seed = self.has_metadata_csum().then(|| self.csum_seed());
        let (_, entries) = xattr::parse_block(&block, blocknr, seed, &self.xattr_limits())
            .map_err(|p| {
                Error::corrupt(format!("xattr block of inode {}: {p}", inode.ino), blocknr)
            })?;
        Ok(entries.iter().map(OwnedXattr::from_entry).collect())
    }

    fn all_xattrs(&self, inode: &Inode) -> Result<Vec<OwnedXattr>> {
        let mut all = self.ibody_xattrs(inode)?;
        all.extend(self.block_xattrs(inode)?);
        Ok(all)
    }

    /// Reads a value stored in an ea_inode, checking the inode is one and
    /// holds exactly `size` bytes.
    fn ea_inode_value(&self, owner: Ino, inum: u32, size: u32) -> Result<Vec<u8>> {
        if inum == owner {
            return Err(Error::corrupt(
                format!("inode {owner}: xattr value stored in the inode itself"),
                0,
            ));
        }
        let ea = self.inode(inum)?;
        if !ea.has_flag(EXT4_EA_INODE_FL) {
            return Err(Error::corrupt(
                format!("inode {owner}: xattr value inode {inum} lacks EXT4_EA_INODE_FL"),
                0,
            ));
        }
        if ea.size != u64::from(size) {
            return Err(Error::corrupt(
                format!(
                    "inode {owner}: xattr value inode {inum} has size {} != entry size {size}",
                    ea.size
                ),
                0,
            ));
        }
        let mut buf = vec![0u8; size as usize];
        let n = self.read_data(&ea, 0, &mut buf)?;
        if n != buf.len() {
            return Err(Error::corrupt(
                format!("inode {owner}: xattr value inode {inum} short read ({n} of {size})"),
                0,
            ));
        }
        Ok(buf)
    }

    fn xattr_value(&self, owner: Ino, x: OwnedXattr) -> Result<Vec<u8>> {
        match x.value {
            OwnedValue::Bytes(v) => Ok(v),
            OwnedValue::EaInode { inum, size } => self.ea_inode_value(owner, inum, size),
        }
    }

    pub fn getxattr(&self, ino: Ino, name: &[u8]) -> Result<Vec<u8>> {
        if name.len() > XATTR_NAME_MAX {
            return Err(Error::NameTooLong);
        }
        let (index, suffix) = split_name(name)
            .ok_or_else(|| Error::Unsupported("extended attribute namespace".into()))?;
        let inode = self.inode(ino)?;
        let found = self
            .all_xattrs(&inode)?
            .into_iter()
            .find(|x| x.index == index && x.name == suffix)
            .ok_or(Error::NoAttribute)?;
        let value = self.xattr_value(ino, found)?;
        if index == INDEX_POSIX_ACL_ACCESS || index == INDEX_POSIX_ACL_DEFAULT {
            let entries = acl::parse(&value)
                .map_err(|p| Error::corrupt(format!("ACL of inode {ino}: {p}"), 0))?;
            if entries.is_empty() {
                return Err(Error::NoAttribute);
            }
            return Ok(acl::to_xattr(&entries));
        }
        Ok(value)
    }

    pub fn listxattr(&self, ino: Ino) -> Result<Vec<Vec<u8>>> {
        let inode = self.inode(ino)?;
        let mut names = Vec::new();
        for x in self.all_xattrs(&inode)? {
            if !index_is_listed(x.index) {
                continue;
            }
            let Some(prefix) = index_prefix(x.index) else {
                continue;
            };
            let mut full = prefix.to_vec();
            full.extend_from_slice(&x.name);
            names.push(full);
        }
        Ok(names)
    }

    /// The inline data of an inode with EXT4_INLINE_DATA_FL: the 60 bytes
    /// of i_block followed by the in-inode "system.data" value, cut to
    /// i_size.
    pub(crate) fn inline_data(&self, inode: &Inode) -> Result<Vec<u8>> {
        if !inode.has_flag(EXT4_INLINE_DATA_FL) {
            return Err(Error::Invalid("inode has no inline data"));
        }
        let system_data = self
            .ibody_xattrs(inode)?
            .into_iter()
            .find(|x| x.index == INDEX_SYSTEM && x.name == b"data")
            .ok_or_else(|| {
                Error::corrupt(
                    format!("inode {}: inline data without system.data", inode.ino),
                    0,
                )
            })?;
        let OwnedValue::Bytes(extra) = system_data.value else {
            return Err(Error::corrupt(
                format!("inode {}: system.data stored in an ea_inode", inode.ino),
                0,
            ));
        };
        let mut data = Vec::with_capacity(I_BLOCK_SIZE + extra.len());
        data.extend_from_slice(&inode.i_block);
        data.extend_from_slice(&extra);
        let len = usize::try_from(inode.size).unwrap_or(usize::MAX);
        data.truncate(len);
        Ok(data)
    }
}
