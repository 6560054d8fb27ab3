//! The accounting rule: what one inode is charged, and a transaction's
//! changes of charges (see the module documentation of `quota`).

use std::collections::BTreeSet;

use super::{Delta, Deltas};
use crate::ext4::ondisk::inode::EXT4_EA_INODE_FL;
use crate::ext4::ondisk::quota::QuotaType;
use crate::ext4::ondisk::superblock as sbf;
use crate::ext4::ondisk::xattr::{self, XattrValue};
use crate::ext4::txn::Txn;
use crate::ext4::{Error, Ext4, Ino, Inode, ROOT_INO, Result};

/// What an inode is charged: to its user, group and project, `space`
/// bytes and `inodes` inodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Charge {
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    pub(crate) projid: u32,
    pub(crate) space: u64,
    pub(crate) inodes: u64,
}

impl Charge {
    pub(crate) fn id(&self, t: QuotaType) -> u32 {
        match t {
            QuotaType::User => self.uid,
            QuotaType::Group => self.gid,
            QuotaType::Project => self.projid,
        }
    }
}

impl Ext4 {
    /// Whether quota counts inode `ino` at all (e2fsck pass 1: the root
    /// and non-reserved inodes, not the project quota file, not EA
    /// inodes; the kernel marks quota files and EA inodes S_NOQUOTA).
    pub(crate) fn quota_counts(&self, inode: &Inode) -> bool {
        let ino = inode.ino;
        (ino == ROOT_INO || ino >= self.sb().s_first_ino)
            && !self.is_quota_inode(ino)
            && !inode.has_flag(EXT4_EA_INODE_FL)
    }

    /// The charge of `inode`, or None if quota does not count it.
    /// `xattr_block` is the contents of its xattr block as of the same
    /// state (needed only with ea_inode, for the values it references).
    pub(crate) fn charge_of(
        &self,
        inode: &Inode,
        xattr_block: &dyn Fn(u64) -> Result<std::sync::Arc<[u8]>>,
    ) -> Result<Option<Charge>> {
        if !self.quota_counts(inode) {
            return Ok(None);
        }
        let mut inodes = 1u64;
        if self.sb().has_incompat(sbf::INCOMPAT_EA_INODE) {
            let in_ea = |v: &XattrValue<'_>| matches!(v, XattrValue::EaInode { .. });
            let n = self
                .ibody_entries(inode)?
                .iter()
                .filter(|e| in_ea(&e.value))
                .count();
            inodes = inodes.saturating_add(n as u64);
            if inode.file_acl != 0 {
                let b = xattr_block(inode.file_acl)?;
                // The checksum is the writer's business; the entries are
                // checked all the same.
                let (_, entries) =
                    xattr::parse_block(&b, inode.file_acl, None, &self.xattr_limits()).map_err(
                        |p| {
                            Error::corrupt(
                                format!("xattr block of inode {}: {p}", inode.ino),
                                inode.file_acl,
                            )
                        },
                    )?;
                let n = entries.iter().filter(|e| in_ea(&e.value)).count();
                inodes = inodes.saturating_add(n as u64);
            }
        }
        let projid = if self.sb().has_ro_compat(sbf::RO_COMPAT_PROJECT) {
            inode.projid
        } else {
            0
        };
        Ok(Some(Charge {
            uid: inode.uid,
            gid: inode.gid,
            projid,
            space: inode.blocks.saturating_mul(512),
            inodes,
        }))
    }

    /// The committed charge of inode `ino`.
    pub(crate) fn committed_charge(&self, ino: Ino) -> Result<Option<Charge>> {
        let inode = self.inode_any(ino)?;
        self.charge_of(&inode, &|b| self.read_block(b))
    }
}

/// Adds `sign` times `c` to `deltas`.
pub(crate) fn add_charge(deltas: &mut Deltas, c: &Charge, sign: i64, types: &[QuotaType]) {
    let space = i64::try_from(c.space)
        .unwrap_or(i64::MAX)
        .saturating_mul(sign);
    let inodes = i64::try_from(c.inodes)
        .unwrap_or(i64::MAX)
        .saturating_mul(sign);
    for t in types {
        let d = deltas.entry((*t, c.id(*t))).or_default();
        d.space = d.space.saturating_add(space);
        d.inodes = d.inodes.saturating_add(inodes);
    }
}

impl Txn<'_> {
    /// The charge of `ino` as this transaction leaves it.
    pub(crate) fn current_charge(&self, ino: Ino) -> Result<Option<Charge>> {
        let fs = self.fs();
        let inode = self.inode_view(ino)?;
        fs.charge_of(&inode, &|b| self.block(b))
    }

    /// The usage changes this transaction makes, by (type, id), zero
    /// ones left out.
    pub(crate) fn quota_deltas(&self) -> Result<Deltas> {
        let fs = self.fs();
        let types: Vec<QuotaType> = fs.quota_files().into_iter().map(|(t, _)| t).collect();
        let mut deltas = Deltas::new();
        let touched: BTreeSet<Ino> = self
            .dirty_inos()
            .chain(self.inode_life.keys().copied())
            .collect();
        for ino in touched {
            let (was, is) = self.inode_life.get(&ino).copied().unwrap_or((true, true));
            if was && let Some(c) = fs.committed_charge(ino)? {
                add_charge(&mut deltas, &c, -1, &types);
            }
            if is && let Some(c) = self.current_charge(ino)? {
                add_charge(&mut deltas, &c, 1, &types);
            }
        }
        deltas.retain(|_, d| *d != Delta::default());
        Ok(deltas)
    }
}
