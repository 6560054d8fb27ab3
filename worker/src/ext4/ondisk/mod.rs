//! On-disk structures: one file per structure, each with its parser and
//! tests. Offsets follow Documentation/filesystems/ext4/ in the Linux tree.

pub(crate) mod acl;
pub(crate) mod bitmap;
pub(crate) mod dir_entry;
pub(crate) mod extent;
pub(crate) mod group_desc;
pub(crate) mod htree;
pub(crate) mod indirect;
pub(crate) mod inode;
pub(crate) mod journal;
pub(crate) mod mmp;
pub(crate) mod orphan;
pub(crate) mod superblock;
pub(crate) mod xattr;
