//! Quota (the quota and project features): usage kept exact in the quota
//! files on every transaction, and limits enforced when the mount asks
//! for them.
//!
//! The accounting rule lives in one place (`charge`): what an inode is
//! charged, the kernel's way (dquot_alloc_*/dquot_free_*/dquot_transfer
//! added up) and e2fsck's way (pass 1 recounts it): its i_blocks as bytes
//! and one inode, plus one inode per xattr value stored in an EA inode it
//! references (ext4_xattr_inode_alloc_quota; the value's space is already
//! in the parent's i_blocks). Reserved inodes other than the root, the
//! quota files and EA inodes themselves are not charged.
//!
//! A transaction does not charge as it goes: at commit, for every inode
//! it changed, allocated or freed, the charge before (committed state)
//! and after (the transaction's state) are compared, and the difference
//! goes into the quota files in the same transaction (`apply`), so a crash
//! keeps usage and inodes consistent. Enforcement (`limits`) checks the
//! same charges before an operation that would raise them.

#![deny(clippy::arithmetic_side_effects)]

pub(crate) mod charge;
pub(crate) mod limits;
pub(crate) mod tree;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use super::ondisk::quota::{DiskDquot, QT_BLOCK_SIZE, QuotaType};
use super::ondisk::superblock as sbf;
use super::txn::Txn;
use super::{Ext4, Ino, Result};
use tree::QuotaFile;

/// One id's limits, in setquota's units: blocks in KiB (1 KiB quota
/// blocks), inodes; 0 is no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QuotaLimits {
    pub block_soft_kib: u64,
    pub block_hard_kib: u64,
    pub inode_soft: u64,
    pub inode_hard: u64,
}

/// A signed change of one id's usage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Delta {
    pub(crate) space: i64,
    pub(crate) inodes: i64,
}

/// Usage changes by (type, id).
pub(crate) type Deltas = BTreeMap<(QuotaType, u32), Delta>;

impl Ext4 {
    /// The quota files this filesystem keeps: (type, inode), the project
    /// file only with the project feature.
    pub(crate) fn quota_files(&self) -> Vec<(QuotaType, Ino)> {
        let sb = self.sb();
        if !sb.has_ro_compat(sbf::RO_COMPAT_QUOTA) {
            return Vec::new();
        }
        let mut v = Vec::new();
        for (t, ino) in [
            (QuotaType::User, sb.s_usr_quota_inum),
            (QuotaType::Group, sb.s_grp_quota_inum),
            (QuotaType::Project, sb.s_prj_quota_inum),
        ] {
            if ino == 0 || (t == QuotaType::Project && !sb.has_ro_compat(sbf::RO_COMPAT_PROJECT)) {
                continue;
            }
            v.push((t, ino));
        }
        v
    }

    /// Whether `ino` is one of the quota files.
    pub(crate) fn is_quota_inode(&self, ino: Ino) -> bool {
        let sb = self.sb();
        ino != 0
            && (ino == sb.s_usr_quota_inum
                || ino == sb.s_grp_quota_inum
                || ino == sb.s_prj_quota_inum)
    }

    /// Reads every quota file through: the mount-time check. Err names
    /// the file and the problem.
    pub(crate) fn check_quota_files(&self) -> Result<()> {
        let files = self.quota_files();
        if files.is_empty() {
            return Ok(());
        }
        let mut txn = self.begin()?;
        for (t, ino) in files {
            let f = QuotaFile::open(&mut txn, t, ino)?;
            f.all_entries(&mut txn)?;
        }
        Ok(())
    }

    /// Sets `id`'s limits in the quota file of `qtype` (Q_SETQUOTA,
    /// dquot_set_dqblk): a grace time starts if usage is already past a
    /// new soft limit, and ends if it is not. For tools and tests: quotactl
    /// cannot reach a FUSE mount.
    pub fn set_quota_limits(&self, qtype: QuotaType, id: u32, l: QuotaLimits) -> Result<()> {
        let ino = self.quota_file(qtype)?;
        let mut txn = self.begin()?;
        let mut f = QuotaFile::open(&mut txn, qtype, ino)?;
        let at = f.find(&mut txn, id)?;
        let mut dq = match at {
            Some(at) => f.get(&mut txn, at)?,
            None => DiskDquot {
                id,
                ..Default::default()
            },
        };
        dq.bsoftlimit = l.block_soft_kib;
        dq.bhardlimit = l.block_hard_kib;
        dq.isoftlimit = l.inode_soft;
        dq.ihardlimit = l.inode_hard;
        let now = u64::try_from(self.now().secs).unwrap_or(0);
        let bsoft = dq.bsoftlimit.saturating_mul(QT_BLOCK_SIZE as u64);
        if dq.bsoftlimit == 0 || dq.curspace <= bsoft {
            dq.btime = 0;
        } else if dq.btime == 0 {
            dq.btime = now.saturating_add(u64::from(f.info.dqi_bgrace));
        }
        if dq.isoftlimit == 0 || dq.curinodes <= dq.isoftlimit {
            dq.itime = 0;
        } else if dq.itime == 0 {
            dq.itime = now.saturating_add(u64::from(f.info.dqi_igrace));
        }
        match at {
            Some(_) if dq.is_empty() => f.remove(&mut txn, id)?,
            Some(at) => f.put(&mut txn, at, &dq)?,
            None if dq.is_empty() => {}
            None => {
                let at = f.insert(&mut txn, id)?;
                f.put(&mut txn, at, &dq)?;
            }
        }
        f.finish(&mut txn)?;
        txn.commit()
    }

    /// Sets the grace times of `qtype` in seconds (Q_SETINFO).
    pub fn set_quota_grace(
        &self,
        qtype: QuotaType,
        block_secs: u32,
        inode_secs: u32,
    ) -> Result<()> {
        let ino = self.quota_file(qtype)?;
        let mut txn = self.begin()?;
        let mut f = QuotaFile::open(&mut txn, qtype, ino)?;
        f.info.dqi_bgrace = block_secs;
        f.info.dqi_igrace = inode_secs;
        f.set_info_dirty();
        f.finish(&mut txn)?;
        txn.commit()
    }

    /// The inode of the quota file of `qtype`.
    fn quota_file(&self, qtype: QuotaType) -> Result<Ino> {
        self.quota_files()
            .into_iter()
            .find(|(t, _)| *t == qtype)
            .map(|(_, ino)| ino)
            .ok_or_else(|| {
                super::Error::Unsupported(format!("no {} quota file", qtype.name()).into())
            })
    }

    /// Every id's entry in the quota file of `qtype` (tests).
    #[cfg(test)]
    pub(crate) fn quota_entries(&self, qtype: QuotaType) -> Result<BTreeMap<u32, DiskDquot>> {
        let Some((_, ino)) = self.quota_files().into_iter().find(|(t, _)| *t == qtype) else {
            return Ok(BTreeMap::new());
        };
        let mut txn = self.begin()?;
        let f = QuotaFile::open(&mut txn, qtype, ino)?;
        f.all_entries(&mut txn)
    }
}

/// Adds signed `d` to `v`, clamping at 0 (the kernel's dquot_decr_*).
fn add_clamped(v: u64, d: i64) -> u64 {
    if d >= 0 {
        v.saturating_add(d.unsigned_abs())
    } else {
        v.saturating_sub(d.unsigned_abs())
    }
}

impl Txn<'_> {
    /// Charges this transaction's inode changes to the quota files (see
    /// the module documentation). Called by commit before the inodes are
    /// serialized.
    pub(crate) fn apply_quota(&mut self) -> Result<()> {
        let fs = self.fs();
        let files = fs.quota_files();
        if files.is_empty() {
            return Ok(());
        }
        let deltas = self.quota_deltas()?;
        if deltas.is_empty() {
            return Ok(());
        }
        self.check_limits(&deltas)?;
        let now = u64::try_from(fs.now().secs).unwrap_or(0);
        for (t, ino) in files {
            let mine: Vec<(u32, Delta)> = deltas
                .iter()
                .filter(|((dt, _), _)| *dt == t)
                .map(|((_, id), d)| (*id, *d))
                .collect();
            if mine.is_empty() {
                continue;
            }
            let mut f = QuotaFile::open(self, t, ino)?;
            let enforce = fs.quota_enforced(t);
            for (id, d) in mine {
                let at = f.find(self, id)?;
                let mut dq = match at {
                    Some(at) => f.get(self, at)?,
                    None => DiskDquot {
                        id,
                        ..Default::default()
                    },
                };
                apply_delta(&mut dq, d, enforce.then_some((&f.info, now)));
                match at {
                    Some(_) if dq.is_empty() => f.remove(self, id)?,
                    Some(at) => f.put(self, at, &dq)?,
                    None if dq.is_empty() => {}
                    None => {
                        let at = f.insert(self, id)?;
                        f.put(self, at, &dq)?;
                    }
                }
            }
            f.finish(self)?;
        }
        Ok(())
    }
}

/// Applies a usage change to an entry as the kernel's dquot code does:
/// usage clamped at 0; a grace time ends when usage falls to the soft
/// limit (dquot_decr_*) and starts when it rises past it while limits are
/// enforced (dquot_add_*, `grace` = (info, now)).
pub(crate) fn apply_delta(
    dq: &mut DiskDquot,
    d: Delta,
    grace: Option<(&super::ondisk::quota::QuotaInfo, u64)>,
) {
    dq.curspace = add_clamped(dq.curspace, d.space);
    dq.curinodes = add_clamped(dq.curinodes, d.inodes);
    let bsoft = dq.bsoftlimit.saturating_mul(QT_BLOCK_SIZE as u64);
    if d.space < 0 && dq.curspace <= bsoft {
        dq.btime = 0;
    }
    if d.inodes < 0 && dq.curinodes <= dq.isoftlimit {
        dq.itime = 0;
    }
    if let Some((info, now)) = grace {
        if d.space > 0 && dq.bsoftlimit != 0 && dq.curspace > bsoft && dq.btime == 0 {
            dq.btime = now.saturating_add(u64::from(info.dqi_bgrace));
        }
        if d.inodes > 0 && dq.isoftlimit != 0 && dq.curinodes > dq.isoftlimit && dq.itime == 0 {
            dq.itime = now.saturating_add(u64::from(info.dqi_igrace));
        }
    }
}
