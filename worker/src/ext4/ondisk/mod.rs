//! On-disk structures: one file per structure, each with its parser and
//! tests. Offsets follow Documentation/filesystems/ext4/ in the Linux tree.

#![deny(clippy::arithmetic_side_effects)]

pub(crate) mod acl;
pub(crate) mod bitmap;
pub(crate) mod dir_entry;
pub(crate) mod extent;
pub(crate) mod features;
pub(crate) mod group_desc;
pub(crate) mod htree;
pub(crate) mod indirect;
pub(crate) mod inode;
pub(crate) mod journal;
pub(crate) mod mmp;
pub(crate) mod orphan;
pub(crate) mod quota;
pub(crate) mod superblock;
pub(crate) mod verity;
pub(crate) mod xattr;

/// The bytes of `b` from `off` on, empty if `off` is past the end: a
/// structure's fields are then read at their constant offsets inside it
/// (reads past the end give zero, see [`crate::ext4::util`]) with no
/// offset arithmetic on disk-derived positions.
pub(crate) fn bytes_from(b: &[u8], off: usize) -> &[u8] {
    b.get(off..).unwrap_or(&[])
}

/// The mutable counterpart of [`bytes_from`]: writes past the end are
/// dropped by the `put_*` helpers.
pub(crate) fn bytes_from_mut(b: &mut [u8], off: usize) -> &mut [u8] {
    b.get_mut(off..).unwrap_or(&mut [])
}
