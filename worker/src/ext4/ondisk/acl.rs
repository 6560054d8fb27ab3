//! POSIX ACLs as ext4 stores them (`ext4_acl_header` version 1, then short
//! `{tag, perm}` entries for USER_OBJ, GROUP_OBJ, MASK and OTHER and long
//! `{tag, perm, id}` entries for USER and GROUP), converted to the generic
//! `posix_acl_xattr` format the getxattr(2) interface returns (version 2,
//! every entry `{u16 tag, u16 perm, u32 id}`, id 0xFFFFFFFF for the short
//! kinds), as the kernel's `ext4_acl_from_disk` + `posix_acl_to_xattr` do.

use std::fmt;

use crate::ext4::ondisk::bytes_from;
use crate::ext4::util::{le16, le32};

pub(crate) const EXT4_ACL_VERSION: u32 = 1;
pub(crate) const POSIX_ACL_XATTR_VERSION: u32 = 2;
const HEADER_LEN: usize = 4;
const SHORT_LEN: usize = 4;
const LONG_LEN: usize = 8;
pub(crate) const ACL_UNDEFINED_ID: u32 = 0xFFFF_FFFF;

pub(crate) const ACL_USER_OBJ: u16 = 0x01;
pub(crate) const ACL_USER: u16 = 0x02;
pub(crate) const ACL_GROUP_OBJ: u16 = 0x04;
pub(crate) const ACL_GROUP: u16 = 0x08;
pub(crate) const ACL_MASK: u16 = 0x10;
pub(crate) const ACL_OTHER: u16 = 0x20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AclProblem {
    TooShort(usize),
    BadVersion(u32),
    BadSize(usize),
    BadTag { entry: usize, tag: u16 },
    TrailingBytes,
}

impl fmt::Display for AclProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AclProblem::TooShort(n) => write!(f, "ACL of {n} bytes has no header"),
            AclProblem::BadVersion(v) => write!(f, "ACL version {v} != 1"),
            AclProblem::BadSize(n) => write!(f, "ACL size {n} matches no entry count"),
            AclProblem::BadTag { entry, tag } => write!(f, "ACL entry {entry}: bad tag {tag:#x}"),
            AclProblem::TrailingBytes => write!(f, "ACL entries do not fill the value"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AclEntry {
    pub tag: u16,
    pub perm: u16,
    /// uid or gid for ACL_USER / ACL_GROUP, else ACL_UNDEFINED_ID.
    pub id: u32,
}

/// `ext4_acl_count`: how many entries a value of `size` bytes holds, or
/// `None` if no mix of at most four short and any long entries fits.
fn acl_count(size: usize) -> Option<usize> {
    let size = size.checked_sub(HEADER_LEN)?;
    match size.checked_sub(4 * SHORT_LEN) {
        None => (size % SHORT_LEN == 0).then_some(size / SHORT_LEN),
        Some(s) if s % LONG_LEN == 0 => (s / LONG_LEN).checked_add(4),
        Some(_) => None,
    }
}

/// Parses an ext4 on-disk ACL. An empty list is valid (the kernel treats
/// it as "no ACL").
pub(crate) fn parse(value: &[u8]) -> Result<Vec<AclEntry>, AclProblem> {
    if value.len() < HEADER_LEN {
        return Err(AclProblem::TooShort(value.len()));
    }
    let version = le32(value, 0);
    if version != EXT4_ACL_VERSION {
        return Err(AclProblem::BadVersion(version));
    }
    let count = acl_count(value.len()).ok_or(AclProblem::BadSize(value.len()))?;
    let mut pos = HEADER_LEN;
    let mut out = Vec::with_capacity(count);
    for entry in 0..count {
        let end_of = |len: usize| {
            pos.checked_add(len)
                .filter(|&end| end <= value.len())
                .ok_or(AclProblem::TrailingBytes)
        };
        let short_end = end_of(SHORT_LEN)?;
        let ent = bytes_from(value, pos);
        let tag = le16(ent, 0);
        let perm = le16(ent, 2);
        match tag {
            ACL_USER_OBJ | ACL_GROUP_OBJ | ACL_MASK | ACL_OTHER => {
                out.push(AclEntry {
                    tag,
                    perm,
                    id: ACL_UNDEFINED_ID,
                });
                pos = short_end;
            }
            ACL_USER | ACL_GROUP => {
                let long_end = end_of(LONG_LEN)?;
                out.push(AclEntry {
                    tag,
                    perm,
                    id: le32(ent, 4),
                });
                pos = long_end;
            }
            _ => return Err(AclProblem::BadTag { entry, tag }),
        }
    }
    if pos != value.len() {
        return Err(AclProblem::TrailingBytes);
    }
    Ok(out)
}

/// Bytes `n` long entries and a header take (a capacity hint).
fn xattr_capacity(n: usize) -> usize {
    n.saturating_mul(LONG_LEN).saturating_add(HEADER_LEN)
}

/// Encodes entries in the `posix_acl_xattr` format (what getxattr returns).
pub(crate) fn to_xattr(entries: &[AclEntry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(xattr_capacity(entries.len()));
    out.extend_from_slice(&POSIX_ACL_XATTR_VERSION.to_le_bytes());
    for e in entries {
        out.extend_from_slice(&e.tag.to_le_bytes());
        out.extend_from_slice(&e.perm.to_le_bytes());
        out.extend_from_slice(&e.id.to_le_bytes());
    }
    out
}

/// Parses the generic `posix_acl_xattr` format setxattr(2) passes (version
/// 2, `{u16 tag, u16 perm, u32 id}` entries), as `posix_acl_from_xattr`
/// does: the ids of the short kinds are ignored, unknown tags refused.
pub(crate) fn from_xattr(value: &[u8]) -> Result<Vec<AclEntry>, AclProblem> {
    if value.len() < HEADER_LEN {
        return Err(AclProblem::TooShort(value.len()));
    }
    let version = le32(value, 0);
    if version != POSIX_ACL_XATTR_VERSION {
        return Err(AclProblem::BadVersion(version));
    }
    let body = value.get(HEADER_LEN..).unwrap_or(&[]);
    if !body.len().is_multiple_of(LONG_LEN) {
        return Err(AclProblem::BadSize(value.len()));
    }
    let mut out = Vec::with_capacity(body.len() / LONG_LEN);
    for (entry, ent) in body.chunks_exact(LONG_LEN).enumerate() {
        let tag = le16(ent, 0);
        let perm = le16(ent, 2);
        let id = match tag {
            ACL_USER_OBJ | ACL_GROUP_OBJ | ACL_MASK | ACL_OTHER => ACL_UNDEFINED_ID,
            ACL_USER | ACL_GROUP => le32(ent, 4),
            _ => return Err(AclProblem::BadTag { entry, tag }),
        };
        out.push(AclEntry { tag, perm, id });
    }
    Ok(out)
}

/// Serializes entries in ext4's on-disk format (`ext4_acl_to_disk`):
/// version 1 header, short entries for USER_OBJ, GROUP_OBJ, MASK and
/// OTHER, long ones with the id for USER and GROUP.
pub(crate) fn to_disk(entries: &[AclEntry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(xattr_capacity(entries.len()));
    out.extend_from_slice(&EXT4_ACL_VERSION.to_le_bytes());
    for e in entries {
        out.extend_from_slice(&e.tag.to_le_bytes());
        out.extend_from_slice(&e.perm.to_le_bytes());
        if matches!(e.tag, ACL_USER | ACL_GROUP) {
            out.extend_from_slice(&e.id.to_le_bytes());
        }
    }
    out
}

/// Whether `entries` form a valid access/default ACL as
/// `posix_acl_valid` checks it: exactly one USER_OBJ, GROUP_OBJ and
/// OTHER, a MASK when there are named entries, permissions within rwx,
/// in tag order.
#[cfg(test)]
#[allow(clippy::arithmetic_side_effects)]
pub(crate) fn is_valid(entries: &[AclEntry]) -> bool {
    let mut last = 0u16;
    let (mut uo, mut go, mut other, mut mask, mut named) = (0, 0, 0, 0, 0);
    for e in entries {
        if e.perm & !7 != 0 || e.tag < last {
            return false;
        }
        if e.tag == last && !matches!(e.tag, ACL_USER | ACL_GROUP) {
            return false;
        }
        last = e.tag;
        match e.tag {
            ACL_USER_OBJ => uo += 1,
            ACL_GROUP_OBJ => go += 1,
            ACL_OTHER => other += 1,
            ACL_MASK => mask += 1,
            _ => named += 1,
        }
    }
    uo == 1 && go == 1 && other == 1 && (named == 0 || mask == 1)
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects)]
mod tests {
    use super::*;

    fn disk() -> Vec<u8> {
        let mut v = EXT4_ACL_VERSION.to_le_bytes().to_vec();
        for (tag, perm, id) in [
            (ACL_USER_OBJ, 6u16, None),
            (ACL_USER, 4, Some(1000u32)),
            (ACL_GROUP_OBJ, 4, None),
            (ACL_GROUP, 5, Some(100)),
            (ACL_MASK, 7, None),
            (ACL_OTHER, 0, None),
        ] {
            v.extend_from_slice(&tag.to_le_bytes());
            v.extend_from_slice(&perm.to_le_bytes());
            if let Some(id) = id {
                v.extend_from_slice(&id.to_le_bytes());
            }
        }
        v
    }

    #[test]
    fn converts_to_xattr_format() {
        let e = parse(&disk()).unwrap();
        assert_eq!(e.len(), 6);
        assert_eq!(
            e[1],
            AclEntry {
                tag: ACL_USER,
                perm: 4,
                id: 1000
            }
        );
        let x = to_xattr(&e);
        assert_eq!(x.len(), 4 + 6 * 8);
        assert_eq!(&x[0..4], &2u32.to_le_bytes());
        // USER_OBJ rw-, undefined id
        assert_eq!(&x[4..12], &[1, 0, 6, 0, 0xff, 0xff, 0xff, 0xff]);
        // USER 1000 r--
        assert_eq!(&x[12..20], &[2, 0, 4, 0, 0xe8, 0x03, 0, 0]);
        // header only: no entries
        assert_eq!(parse(&1u32.to_le_bytes()), Ok(vec![]));
    }

    #[test]
    fn flipped_bytes_give_exact_errors() {
        let mut v = disk();
        v[0] = 2;
        assert_eq!(parse(&v), Err(AclProblem::BadVersion(2)));
        let mut v = disk();
        v[4] = 0x40;
        assert_eq!(
            parse(&v),
            Err(AclProblem::BadTag {
                entry: 0,
                tag: 0x40
            })
        );
        // USER_OBJ turned into USER: the long entry eats the next entry's
        // tag, and the id 1000 is read as a tag.
        let mut v = disk();
        v[4] = 0x02;
        assert_eq!(
            parse(&v),
            Err(AclProblem::BadTag {
                entry: 1,
                tag: 1000
            })
        );
        // OTHER turned into GROUP at the very end: runs out of bytes.
        let mut v = disk();
        let n = v.len();
        v[n - 4] = 0x08;
        assert_eq!(parse(&v), Err(AclProblem::TrailingBytes));
        assert_eq!(parse(&disk()[..7]), Err(AclProblem::BadSize(7)));
        assert_eq!(parse(&disk()[..3]), Err(AclProblem::TooShort(3)));
        assert_eq!(
            parse(&disk()[..disk().len() - 4]),
            Err(AclProblem::BadSize(32))
        );
    }

    #[test]
    fn disk_and_xattr_round_trip() {
        let e = parse(&disk()).unwrap();
        assert_eq!(to_disk(&e), disk());
        assert_eq!(parse(&to_disk(&e)).unwrap(), e);
        assert_eq!(from_xattr(&to_xattr(&e)).unwrap(), e);
        assert!(is_valid(&e));
        // Short kinds' ids are ignored on input.
        let mut x = to_xattr(&e);
        x[8..12].copy_from_slice(&5u32.to_le_bytes());
        assert_eq!(from_xattr(&x).unwrap(), e);
        x[0] = 1;
        assert_eq!(from_xattr(&x), Err(AclProblem::BadVersion(1)));
        assert_eq!(
            from_xattr(&to_xattr(&e)[..10]),
            Err(AclProblem::BadSize(10))
        );
        // No MASK with a named entry: invalid.
        let no_mask: Vec<_> = e.iter().copied().filter(|a| a.tag != ACL_MASK).collect();
        assert!(!is_valid(&no_mask));
        assert!(from_xattr(&2u32.to_le_bytes()).unwrap().is_empty());
    }
}
