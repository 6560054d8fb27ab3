//! POSIX ACL semantics on a read-write mount, as the kernel's ext4 applies
//! them (fs/posix_acl.c with fs/ext4/acl.c). The on-disk and xattr formats
//! live in `ondisk::acl`; this module holds the rules:
//!
//! - setxattr of `system.posix_acl_access` (ext4_set_acl with
//!   posix_acl_update_mode): the mode's permission bits follow the ACL
//!   (group bits from the MASK entry when there is one), S_ISGID is
//!   cleared for a caller outside the owning group without CAP_FSETID,
//!   and an ACL that says no more than the mode is not stored (the
//!   attribute is removed). XATTR_CREATE / XATTR_REPLACE are ignored.
//! - `system.posix_acl_default` on a non-directory: EACCES (removing one
//!   succeeds). An empty value (or a header without entries) removes the
//!   ACL; a malformed or invalid one is EINVAL (posix_acl_from_xattr,
//!   posix_acl_valid), a wrong version EOPNOTSUPP.
//! - create, mknod, mkdir (ext4_init_acl with posix_acl_create): with a
//!   default ACL on the parent the requested mode is masked by that ACL
//!   and the umask is not applied; the masked copy becomes the new
//!   inode's access ACL unless the mode says all of it, and a new
//!   directory inherits the default ACL itself. Without one, the mode is
//!   masked by the umask. Symlinks take neither.
//! - chmod (ext4_setattr with posix_acl_chmod): an access ACL's USER_OBJ,
//!   MASK (GROUP_OBJ without a mask) and OTHER entries take the new bits.
//!
//! With FUSE_POSIX_ACL the kernel leaves every one of these mode and ACL
//! updates to the server (fs/fuse/acl.c: "userspace is responsible for
//! updating access permissions"), so the engine does them all.

use crate::ext4::Ext4;
use crate::ext4::Txn;
use crate::ext4::error::{Error, Result};
use crate::ext4::ondisk::acl::{
    self, ACL_GROUP, ACL_GROUP_OBJ, ACL_MASK, ACL_OTHER, ACL_UNDEFINED_ID, ACL_USER, ACL_USER_OBJ,
    AclEntry, AclProblem,
};
use crate::ext4::ondisk::inode::{Inode, S_ISGID};
use crate::ext4::ondisk::xattr::{INDEX_POSIX_ACL_ACCESS, INDEX_POSIX_ACL_DEFAULT};
use crate::ext4::types::{FileKind, Ino, XattrFlags};

/// The permission bits an ACL speaks for.
const PERM_BITS: u16 = 0o777;
/// ACL_READ | ACL_WRITE | ACL_EXECUTE.
const ACL_PERMS: u16 = 0o7;

pub(crate) const ACCESS_NAME: &[u8] = b"system.posix_acl_access";
pub(crate) const DEFAULT_NAME: &[u8] = b"system.posix_acl_default";

/// Who asks for an ACL change: the FUSE request's fsuid and fsgid. The
/// supplementary groups and capabilities are not in the request, so uid
/// 0 stands for CAP_FSETID and the fsgid alone for group membership.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
}

impl Caller {
    pub const ROOT: Caller = Caller { uid: 0, gid: 0 };

    /// in_group_or_capable(inode's group, CAP_FSETID), as far as the
    /// request tells.
    fn may_keep_sgid(&self, inode_gid: u32) -> bool {
        self.uid == 0 || self.gid == inode_gid
    }
}

/// Parses a value in the generic `posix_acl_xattr` format as setxattr(2)
/// passes it and checks it like posix_acl_from_xattr + posix_acl_valid.
/// `None`: no entries (the ACL is to be removed).
pub(crate) fn from_xattr_value(value: &[u8]) -> Result<Option<Vec<AclEntry>>> {
    if value.is_empty() {
        return Ok(None);
    }
    let entries = acl::from_xattr(value).map_err(|p| match p {
        AclProblem::BadVersion(_) => Error::Unsupported("POSIX ACL xattr version".into()),
        _ => Error::Invalid("malformed POSIX ACL"),
    })?;
    if entries.is_empty() {
        return Ok(None);
    }
    validate(&entries)?;
    Ok(Some(entries))
}

/// posix_acl_valid: USER_OBJ, USER*, GROUP_OBJ, GROUP*, MASK?, OTHER in
/// that order, permissions within rwx, a MASK whenever there is a named
/// entry, and named entries with a real id.
pub(crate) fn validate(entries: &[AclEntry]) -> Result<()> {
    #[derive(PartialEq)]
    enum State {
        UserObj,
        User,
        Group,
        Other,
        Done,
    }
    let bad = Err(Error::Invalid("invalid POSIX ACL"));
    let mut state = State::UserObj;
    let mut needs_mask = false;
    for e in entries {
        if e.perm & !ACL_PERMS != 0 {
            return bad;
        }
        state = match (e.tag, &state) {
            (ACL_USER_OBJ, State::UserObj) => State::User,
            (ACL_USER, State::User) | (ACL_GROUP, State::Group) => {
                if e.id == ACL_UNDEFINED_ID {
                    return bad;
                }
                needs_mask = true;
                state
            }
            (ACL_GROUP_OBJ, State::User) => State::Group,
            (ACL_MASK, State::Group) => State::Other,
            (ACL_OTHER, State::Other) => State::Done,
            (ACL_OTHER, State::Group) if !needs_mask => State::Done,
            _ => return bad,
        };
    }
    if state == State::Done { Ok(()) } else { bad }
}

/// posix_acl_equiv_mode: the permission bits the ACL gives the owner,
/// the group (the MASK when there is one) and others, and whether the
/// ACL says more than those bits (a named entry or a mask).
pub(crate) fn equiv_mode(entries: &[AclEntry]) -> (u16, bool) {
    let mut mode = 0u16;
    let mut extended = false;
    let mut mask = None;
    for e in entries {
        let p = e.perm & ACL_PERMS;
        match e.tag {
            ACL_USER_OBJ => mode |= p << 6,
            ACL_GROUP_OBJ => mode |= p << 3,
            ACL_OTHER => mode |= p,
            ACL_MASK => {
                mask = Some(p);
                extended = true;
            }
            _ => extended = true,
        }
    }
    if let Some(m) = mask {
        mode = (mode & !0o070) | (m << 3);
    }
    (mode, extended)
}

/// posix_acl_update_mode: the inode's new mode after `entries` becomes its
/// access ACL, and whether the ACL must be stored (false: the mode says
/// all of it and the attribute goes away).
pub(crate) fn update_mode(
    mode: u16,
    inode_gid: u32,
    entries: &[AclEntry],
    caller: Caller,
) -> (u16, bool) {
    let (bits, extended) = equiv_mode(entries);
    let mut mode = (mode & !PERM_BITS) | bits;
    if !caller.may_keep_sgid(inode_gid) {
        mode &= !S_ISGID;
    }
    (mode, extended)
}

/// posix_acl_create_masq: masks `entries` (a copy of the parent's default
/// ACL) by the requested `mode` and the mode by the ACL; returns whether
/// the result says more than the mode.
pub(crate) fn create_masq(entries: &mut [AclEntry], mode: &mut u16) -> bool {
    let mut m = *mode & PERM_BITS;
    let mut extended = false;
    let mut group_obj = None;
    let mut mask_obj = None;
    for (i, e) in entries.iter_mut().enumerate() {
        match e.tag {
            ACL_USER_OBJ => {
                e.perm &= (m >> 6) | !ACL_PERMS;
                m &= (e.perm << 6) | !0o700;
            }
            ACL_USER | ACL_GROUP => extended = true,
            ACL_GROUP_OBJ => group_obj = Some(i),
            ACL_OTHER => {
                e.perm &= m | !ACL_PERMS;
                m &= e.perm | !0o007;
            }
            ACL_MASK => {
                mask_obj = Some(i);
                extended = true;
            }
            _ => {}
        }
    }
    // The mask stands for the group class when there is one.
    if let Some(e) = mask_obj.or(group_obj).and_then(|i| entries.get_mut(i)) {
        e.perm &= (m >> 3) | !ACL_PERMS;
        m &= (e.perm << 3) | !0o070;
    }
    *mode = (*mode & !PERM_BITS) | (m & PERM_BITS);
    extended
}

/// __posix_acl_chmod: the owner, group class (MASK, else GROUP_OBJ) and
/// other entries take `mode`'s bits.
pub(crate) fn chmod(entries: &mut [AclEntry], mode: u16) {
    let has_mask = entries.iter().any(|e| e.tag == ACL_MASK);
    for e in entries.iter_mut() {
        match e.tag {
            ACL_USER_OBJ => e.perm = (mode >> 6) & ACL_PERMS,
            ACL_GROUP_OBJ if !has_mask => e.perm = (mode >> 3) & ACL_PERMS,
            ACL_MASK => e.perm = (mode >> 3) & ACL_PERMS,
            ACL_OTHER => e.perm = mode & ACL_PERMS,
            _ => {}
        }
    }
}

/// What a setxattr of a POSIX ACL stores and does to the mode.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct AclSet {
    /// The on-disk value to store, or None to remove the attribute.
    pub value: Option<Vec<u8>>,
    /// The inode's mode afterwards (type bits included).
    pub mode: u16,
}

/// ext4_set_acl for `inode`: `value` is the ACL in the generic xattr
/// format (empty: remove), `index` the attribute index of the access or
/// default ACL.
pub(crate) fn plan_set(inode: &Inode, index: u8, value: &[u8], caller: Caller) -> Result<AclSet> {
    let entries = from_xattr_value(value)?;
    let keep = AclSet {
        value: None,
        mode: inode.mode,
    };
    match index {
        INDEX_POSIX_ACL_DEFAULT if inode.kind != FileKind::Directory => match entries {
            Some(_) => Err(Error::AccessDenied),
            None => Ok(keep),
        },
        INDEX_POSIX_ACL_DEFAULT => Ok(AclSet {
            value: entries.map(|e| acl::to_disk(&e)),
            mode: inode.mode,
        }),
        INDEX_POSIX_ACL_ACCESS => {
            let Some(entries) = entries else {
                return Ok(keep);
            };
            let (mode, store) = update_mode(inode.mode, inode.gid, &entries, caller);
            Ok(AclSet {
                value: store.then(|| acl::to_disk(&entries)),
                mode,
            })
        }
        _ => Err(Error::Invalid("not a POSIX ACL attribute")),
    }
}

impl Ext4 {
    /// The ACL `name` of inode `ino` as committed, None without one.
    fn acl_get(&self, ino: Ino, name: &[u8]) -> Result<Option<Vec<AclEntry>>> {
        let value = match self.getxattr_from(ino, name, false) {
            Ok(v) => v,
            Err(Error::NoAttribute) => return Ok(None),
            Err(e) => return Err(e),
        };
        let entries = acl::from_xattr(&value)
            .map_err(|p| Error::corrupt(format!("ACL of inode {ino}: {p}"), 0))?;
        Ok((!entries.is_empty()).then_some(entries))
    }

    /// ext4_init_acl for the new inode `inode` in `dir` (neither changed
    /// in `txn` yet as far as their ACLs go): masks the mode by the
    /// parent's default ACL or, without one, by `umask`; stores the
    /// inherited ACLs. Symlinks keep their mode and take no ACL.
    pub(crate) fn acl_init(
        &self,
        txn: &mut Txn<'_>,
        dir: &Inode,
        inode: &mut Inode,
        umask: u32,
    ) -> Result<()> {
        if inode.kind == FileKind::Symlink {
            return Ok(());
        }
        let Some(default) = self.acl_get(dir.ino, DEFAULT_NAME)? else {
            // umask only holds permission bits (current_umask() & 0777).
            let umask = (umask & u32::from(PERM_BITS)) as u16;
            inode.mode &= !umask;
            return Ok(());
        };
        let mut access = default.clone();
        let mut mode = inode.mode;
        let extended = create_masq(&mut access, &mut mode);
        inode.mode = mode;
        let flags = XattrFlags::default();
        if inode.kind == FileKind::Directory {
            let v = acl::to_disk(&default);
            self.xattr_set_in(txn, inode, INDEX_POSIX_ACL_DEFAULT, b"", Some(&v), flags)?;
        }
        if extended {
            let v = acl::to_disk(&access);
            self.xattr_set_in(txn, inode, INDEX_POSIX_ACL_ACCESS, b"", Some(&v), flags)?;
        }
        Ok(())
    }

    /// posix_acl_chmod after `inode`'s mode changed in `txn`: rewrites its
    /// access ACL, if it has one, to the new mode.
    pub(crate) fn acl_chmod(&self, txn: &mut Txn<'_>, inode: &mut Inode) -> Result<()> {
        if inode.kind == FileKind::Symlink {
            return Ok(());
        }
        let Some(mut entries) = self.acl_get(inode.ino, ACCESS_NAME)? else {
            return Ok(());
        };
        chmod(&mut entries, inode.mode);
        // ext4_set_acl again: the mode already matches the ACL, so only
        // the value changes.
        let v = acl::to_disk(&entries);
        let flags = XattrFlags::default();
        self.xattr_set_in(txn, inode, INDEX_POSIX_ACL_ACCESS, b"", Some(&v), flags)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ext4::testutil::have_mkfs;
    use crate::ext4::testutil::with_kernel_mount;
    use crate::ext4::testutil::{RwImage, fsck};
    use crate::ext4::types::ROOT_INO;

    const U: u32 = ACL_UNDEFINED_ID;

    fn entries(list: &[(u16, u16, u32)]) -> Vec<AclEntry> {
        list.iter()
            .map(|&(tag, perm, id)| AclEntry { tag, perm, id })
            .collect()
    }

    /// A generic-format ACL from (tag, perm, id) triples.
    fn value(list: &[(u16, u16, u32)]) -> Vec<u8> {
        acl::to_xattr(&entries(list))
    }

    fn with(list: &[(u16, u16, u32)]) -> Vec<u8> {
        let mut v = 2u32.to_le_bytes().to_vec();
        for &(tag, perm, id) in list {
            v.extend_from_slice(&tag.to_le_bytes());
            v.extend_from_slice(&perm.to_le_bytes());
            v.extend_from_slice(&id.to_le_bytes());
        }
        v
    }

    #[test]
    fn validity_like_posix_acl_valid() {
        let base = [
            (ACL_USER_OBJ, 6, U),
            (ACL_GROUP_OBJ, 4, U),
            (ACL_OTHER, 4, U),
        ];
        assert!(validate(&entries(&base)).is_ok());
        let full = [
            (ACL_USER_OBJ, 7, U),
            (ACL_USER, 5, 1000),
            (ACL_USER, 5, 1000), // duplicates pass, as in the kernel
            (ACL_GROUP_OBJ, 5, U),
            (ACL_GROUP, 1, 100),
            (ACL_MASK, 7, U),
            (ACL_OTHER, 0, U),
        ];
        assert!(validate(&entries(&full)).is_ok());
        // A mask without named entries is fine.
        let masked = [
            (ACL_USER_OBJ, 7, U),
            (ACL_GROUP_OBJ, 5, U),
            (ACL_MASK, 1, U),
            (ACL_OTHER, 0, U),
        ];
        assert!(validate(&entries(&masked)).is_ok());
        let invalid: [&[(u16, u16, u32)]; 8] = [
            // No mask with a named user.
            &[
                (ACL_USER_OBJ, 7, U),
                (ACL_USER, 5, 1000),
                (ACL_GROUP_OBJ, 5, U),
                (ACL_OTHER, 0, U),
            ],
            // Out of order.
            &[
                (ACL_GROUP_OBJ, 4, U),
                (ACL_USER_OBJ, 6, U),
                (ACL_OTHER, 4, U),
            ],
            // Missing OTHER, missing GROUP_OBJ, two USER_OBJ.
            &[(ACL_USER_OBJ, 6, U), (ACL_GROUP_OBJ, 4, U)],
            &[(ACL_USER_OBJ, 6, U), (ACL_OTHER, 4, U)],
            &[
                (ACL_USER_OBJ, 6, U),
                (ACL_USER_OBJ, 6, U),
                (ACL_GROUP_OBJ, 4, U),
                (ACL_OTHER, 4, U),
            ],
            // Permission beyond rwx.
            &[
                (ACL_USER_OBJ, 8, U),
                (ACL_GROUP_OBJ, 4, U),
                (ACL_OTHER, 4, U),
            ],
            // A named user without an id.
            &[
                (ACL_USER_OBJ, 7, U),
                (ACL_USER, 5, U),
                (ACL_GROUP_OBJ, 5, U),
                (ACL_MASK, 7, U),
                (ACL_OTHER, 0, U),
            ],
            // Two masks.
            &[
                (ACL_USER_OBJ, 7, U),
                (ACL_GROUP_OBJ, 5, U),
                (ACL_MASK, 7, U),
                (ACL_MASK, 7, U),
                (ACL_OTHER, 0, U),
            ],
        ];
        for list in invalid {
            assert!(
                matches!(validate(&entries(list)), Err(Error::Invalid(_))),
                "{list:?}"
            );
            assert!(matches!(
                from_xattr_value(&with(list)),
                Err(Error::Invalid(_))
            ));
        }
        // Formats: empty and header-only remove, truncated EINVAL, wrong
        // version EOPNOTSUPP, unknown tag EINVAL.
        assert_eq!(from_xattr_value(&[]).unwrap(), None);
        assert_eq!(from_xattr_value(&2u32.to_le_bytes()).unwrap(), None);
        let mut v = value(&base);
        v.pop();
        assert!(matches!(from_xattr_value(&v), Err(Error::Invalid(_))));
        let mut v = value(&base);
        v[0] = 1;
        assert!(matches!(from_xattr_value(&v), Err(Error::Unsupported(_))));
        let v = with(&[(ACL_USER_OBJ, 6, U), (0x40, 4, U), (ACL_OTHER, 4, U)]);
        assert!(matches!(from_xattr_value(&v), Err(Error::Invalid(_))));
        // Short kinds' ids are ignored on input.
        let v = with(&[
            (ACL_USER_OBJ, 6, 5),
            (ACL_GROUP_OBJ, 4, 7),
            (ACL_OTHER, 4, 0),
        ]);
        assert_eq!(from_xattr_value(&v).unwrap(), Some(entries(&base)));
    }

    #[test]
    fn mode_follows_access_acl() {
        let base = entries(&[
            (ACL_USER_OBJ, 6, U),
            (ACL_GROUP_OBJ, 4, U),
            (ACL_OTHER, 0, U),
        ]);
        assert_eq!(equiv_mode(&base), (0o640, false));
        let ext = entries(&[
            (ACL_USER_OBJ, 7, U),
            (ACL_USER, 2, 1000),
            (ACL_GROUP_OBJ, 3, U),
            (ACL_MASK, 1, U),
            (ACL_OTHER, 2, U),
        ]);
        // Group bits from the mask, not GROUP_OBJ.
        assert_eq!(equiv_mode(&ext), (0o712, true));
        // A mask alone makes it extended.
        let masked = entries(&[
            (ACL_USER_OBJ, 7, U),
            (ACL_GROUP_OBJ, 7, U),
            (ACL_MASK, 5, U),
            (ACL_OTHER, 0, U),
        ]);
        assert_eq!(equiv_mode(&masked), (0o750, true));
        // Type and setuid/sticky bits stay; setgid goes for an outsider.
        let outsider = Caller { uid: 1000, gid: 5 };
        assert_eq!(
            update_mode(0o106_777, 7, &base, outsider),
            (0o104_640, false)
        );
        assert_eq!(
            update_mode(0o106_777, 5, &base, outsider),
            (0o106_640, false)
        );
        assert_eq!(
            update_mode(0o102_000, 7, &ext, Caller::ROOT),
            (0o102_712, true)
        );
    }

    #[test]
    fn inheritance_masks_both_ways() {
        let dflt = [
            (ACL_USER_OBJ, 7, U),
            (ACL_USER, 5, 1000),
            (ACL_GROUP_OBJ, 5, U),
            (ACL_MASK, 7, U),
            (ACL_OTHER, 4, U),
        ];
        let mut e = entries(&dflt);
        let mut mode = 0o100_666;
        assert!(create_masq(&mut e, &mut mode));
        // The mask (not GROUP_OBJ) is masked; named entries untouched.
        assert_eq!(mode, 0o100_664);
        assert_eq!(
            e,
            entries(&[
                (ACL_USER_OBJ, 6, U),
                (ACL_USER, 5, 1000),
                (ACL_GROUP_OBJ, 5, U),
                (ACL_MASK, 6, U),
                (ACL_OTHER, 4, U),
            ])
        );
        // Without a mask, GROUP_OBJ takes the group class; a minimal
        // default ACL yields no access ACL.
        let mut e = entries(&[
            (ACL_USER_OBJ, 6, U),
            (ACL_GROUP_OBJ, 7, U),
            (ACL_OTHER, 0, U),
        ]);
        let mut mode = 0o040_755;
        assert!(!create_masq(&mut e, &mut mode));
        assert_eq!(mode, 0o040_650);
        assert_eq!(
            e,
            entries(&[
                (ACL_USER_OBJ, 6, U),
                (ACL_GROUP_OBJ, 5, U),
                (ACL_OTHER, 0, U)
            ])
        );
        // chmod: owner, mask, other follow; GROUP_OBJ kept behind a mask.
        let mut e = entries(&dflt);
        chmod(&mut e, 0o640);
        assert_eq!(
            e,
            entries(&[
                (ACL_USER_OBJ, 6, U),
                (ACL_USER, 5, 1000),
                (ACL_GROUP_OBJ, 5, U),
                (ACL_MASK, 4, U),
                (ACL_OTHER, 0, U),
            ])
        );
        let mut e = entries(&[
            (ACL_USER_OBJ, 6, U),
            (ACL_GROUP_OBJ, 7, U),
            (ACL_OTHER, 0, U),
        ]);
        chmod(&mut e, 0o751);
        assert_eq!(equiv_mode(&e), (0o751, false));
    }

    fn kernel_value(path: &std::path::Path, name: &str) -> Option<Vec<u8>> {
        let out = std::process::Command::new("getfattr")
            .args(["--absolute-names", "--only-values", "-n", name])
            .arg(path)
            .output()
            .unwrap();
        out.status.success().then_some(out.stdout)
    }

    /// setxattr, create, mkdir, mknod and chmod through the engine on
    /// real images; the kernel then reads the same modes and ACLs and
    /// e2fsck finds nothing to fix.
    #[test]
    fn acls_on_images_match_ext4() {
        if !have_mkfs() {
            return;
        }
        let d = XattrFlags::default();
        for (tag, args) in [("acl", &[][..]), ("aclinl", &["-O", "inline_data"][..])] {
            let im = RwImage::new(tag, args);
            let fs = im.open();
            let f = fs
                .create(ROOT_INO, b"f", 0o102_644, 0, 1000, 1000, 0o022)
                .unwrap()
                .ino;
            assert_eq!(fs.getattr(f).unwrap().perm, 0o2644, "{tag}: umask");
            // Extended access ACL: stored, the mode follows (mask = group),
            // setgid cleared for a caller outside the group.
            let ext = value(&[
                (ACL_USER_OBJ, 7, U),
                (ACL_USER, 2, 1000),
                (ACL_GROUP_OBJ, 3, U),
                (ACL_MASK, 1, U),
                (ACL_OTHER, 2, U),
            ]);
            let outsider = Caller { uid: 1000, gid: 1 };
            fs.setxattr_as(f, ACCESS_NAME, &ext, d, outsider).unwrap();
            assert_eq!(fs.getattr(f).unwrap().perm, 0o712, "{tag}");
            assert_eq!(fs.getxattr(f, ACCESS_NAME).unwrap(), ext);
            // chmod rewrites the mask.
            let set = crate::ext4::types::SetAttr {
                mode: Some(0o754),
                ..Default::default()
            };
            fs.setattr(f, set).unwrap();
            let chmodded = value(&[
                (ACL_USER_OBJ, 7, U),
                (ACL_USER, 2, 1000),
                (ACL_GROUP_OBJ, 3, U),
                (ACL_MASK, 5, U),
                (ACL_OTHER, 4, U),
            ]);
            assert_eq!(fs.getxattr(f, ACCESS_NAME).unwrap(), chmodded, "{tag}");
            // An ACL the mode says all of: mode set, attribute removed.
            let base = value(&[
                (ACL_USER_OBJ, 6, U),
                (ACL_GROUP_OBJ, 4, U),
                (ACL_OTHER, 0, U),
            ]);
            fs.setxattr(f, ACCESS_NAME, &base, d).unwrap();
            assert_eq!(fs.getattr(f).unwrap().perm, 0o640, "{tag}");
            assert!(matches!(
                fs.getxattr(f, ACCESS_NAME),
                Err(Error::NoAttribute)
            ));
            fs.removexattr(f, ACCESS_NAME).unwrap();
            assert!(matches!(
                fs.setxattr(f, DEFAULT_NAME, &ext, d),
                Err(Error::AccessDenied)
            ));
            fs.setxattr(f, DEFAULT_NAME, &[], d).unwrap();
            let mut bad = ext.clone();
            bad.pop();
            assert!(matches!(
                fs.setxattr(f, ACCESS_NAME, &bad, d),
                Err(Error::Invalid(_))
            ));
            // Inheritance: the umask is ignored under a default ACL.
            let dir = fs.mkdir(ROOT_INO, b"dir", 0o755, 0, 0, 0o022).unwrap().ino;
            let dflt = value(&[
                (ACL_USER_OBJ, 7, U),
                (ACL_USER, 5, 1000),
                (ACL_GROUP_OBJ, 5, U),
                (ACL_MASK, 7, U),
                (ACL_OTHER, 4, U),
            ]);
            fs.setxattr(dir, DEFAULT_NAME, &dflt, d).unwrap();
            let g = fs.create(dir, b"g", 0o100_666, 0, 0, 0, 0o077).unwrap();
            assert_eq!(g.perm, 0o664, "{tag}");
            let want_g = value(&[
                (ACL_USER_OBJ, 6, U),
                (ACL_USER, 5, 1000),
                (ACL_GROUP_OBJ, 5, U),
                (ACL_MASK, 6, U),
                (ACL_OTHER, 4, U),
            ]);
            assert_eq!(fs.getxattr(g.ino, ACCESS_NAME).unwrap(), want_g);
            let sub = fs.mkdir(dir, b"sub", 0o1750, 0, 0, 0o077).unwrap();
            assert_eq!(sub.perm, 0o1750, "{tag}");
            assert_eq!(fs.getxattr(sub.ino, DEFAULT_NAME).unwrap(), dflt);
            let want_sub = value(&[
                (ACL_USER_OBJ, 7, U),
                (ACL_USER, 5, 1000),
                (ACL_GROUP_OBJ, 5, U),
                (ACL_MASK, 5, U),
                (ACL_OTHER, 0, U),
            ]);
            assert_eq!(fs.getxattr(sub.ino, ACCESS_NAME).unwrap(), want_sub);
            // A fifo inherits too; a symlink takes nothing.
            let p = fs.create(sub.ino, b"p", 0o010_640, 0, 0, 0, 0).unwrap();
            assert_eq!(p.perm, 0o640, "{tag}");
            let l = fs.symlink(sub.ino, b"l", b"p", 0, 0).unwrap();
            assert_eq!(l.perm, 0o777, "{tag}");
            assert!(fs.getxattr(l.ino, ACCESS_NAME).is_err());
            fs.shutdown().unwrap();
            drop(fs);
            let (code, out) = fsck(im.save());
            assert_eq!(code, 0, "{tag}: {out}");
            with_kernel_mount(&im.img, |m| {
                use std::os::unix::fs::PermissionsExt;
                let mode = |p: &str| {
                    std::fs::symlink_metadata(m.join(p))
                        .unwrap()
                        .permissions()
                        .mode()
                };
                assert_eq!(mode("f") & 0o7777, 0o640);
                assert_eq!(kernel_value(&m.join("f"), "system.posix_acl_access"), None);
                assert_eq!(mode("dir/g") & 0o7777, 0o664);
                assert_eq!(mode("dir/sub") & 0o7777, 0o1750);
                assert_eq!(mode("dir/sub/p") & 0o7777, 0o640);
                for (path, name, want) in [
                    ("dir/g", "system.posix_acl_access", &want_g),
                    ("dir/sub", "system.posix_acl_default", &dflt),
                    ("dir/sub", "system.posix_acl_access", &want_sub),
                    ("dir/sub/p", "system.posix_acl_default", &dflt),
                ] {
                    if path == "dir/sub/p" {
                        // Not a directory: no default ACL inherited.
                        assert_eq!(kernel_value(&m.join(path), name), None);
                        continue;
                    }
                    assert_eq!(
                        kernel_value(&m.join(path), name).as_ref(),
                        Some(want),
                        "{path} {name}"
                    );
                }
            });
        }
    }
}
