//! Enforcement of quota limits (EDQUOT), as the kernel's dquot_add_space
//! and dquot_add_inodes decide it: only for the types the mount enforces
//! (usrquota, grpquota, prjquota), never for a caller with
//! CAP_SYS_RESOURCE (root: ignore_hardlimit), past the hard limit, or past
//! the soft limit once its grace time has run out. Crossing the soft
//! limit starts the grace time (`super::apply_delta`).
//!
//! Two checks: every transaction begun for a limited caller is checked at
//! commit (usage may not rise past a limit: creates, mkdir, xattrs,
//! chown/chgrp and project changes, which the kernel checks in
//! dquot_transfer); and a write or fallocate gets a block budget first
//! (`Txn::limit_blocks_for`), so that it writes what fits, then fails,
//! as the kernel's block-by-block reservation does.

use std::cell::Cell;

use super::charge::Charge;
use super::{Delta, Deltas};
use crate::ext4::ondisk::quota::{DiskDquot, QT_BLOCK_SIZE, QuotaType};
use crate::ext4::quota::tree::QuotaFile;
use crate::ext4::txn::Txn;
use crate::ext4::{Error, Ext4, Inode, Result};

thread_local! {
    /// Whether the request this thread serves is subject to limits (see
    /// [`CallerScope`]). Outside any scope: exempt (the engine's own work,
    /// tests).
    static LIMITED: Cell<bool> = const { Cell::new(false) };
}

/// While alive, transactions this thread begins are subject to quota
/// limits unless `uid` is 0 (the FUSE adapter opens one per request that
/// may allocate).
pub struct CallerScope {
    before: bool,
}

impl CallerScope {
    pub fn new(uid: u32) -> CallerScope {
        let before = LIMITED.with(|l| l.replace(uid != 0));
        CallerScope { before }
    }
}

impl Drop for CallerScope {
    fn drop(&mut self) {
        LIMITED.with(|l| l.set(self.before));
    }
}

/// Whether the current request is subject to limits.
pub(crate) fn caller_limited() -> bool {
    LIMITED.with(Cell::get)
}

impl Ext4 {
    /// Whether limits of `t` are enforced on this mount (the kernel:
    /// only with the usrquota / grpquota / prjquota mount option; usage is
    /// kept either way).
    pub(crate) fn quota_enforced(&self, t: QuotaType) -> bool {
        self.quota_enforce.get(t.index()).copied().unwrap_or(false)
    }

    /// Whether this mount enforces quota limits of any type (the FUSE
    /// adapter then writes through: see its capabilities).
    pub fn quota_limits_enforced(&self) -> bool {
        !self.is_read_only() && self.any_quota_enforced()
    }

    /// Whether any quota type is enforced.
    pub(crate) fn any_quota_enforced(&self) -> bool {
        self.quota_files()
            .iter()
            .any(|(t, _)| self.quota_enforced(*t))
    }
}

/// EDQUOT if raising `dq` by `d` passes a limit (dquot_add_inodes,
/// dquot_add_space; the caller is not exempt).
fn over_limit(dq: &DiskDquot, d: Delta, now: u64) -> bool {
    if d.inodes > 0 {
        let new = dq.curinodes.saturating_add(d.inodes.unsigned_abs());
        if dq.ihardlimit != 0 && new > dq.ihardlimit {
            return true;
        }
        if dq.isoftlimit != 0 && new > dq.isoftlimit && dq.itime != 0 && now >= dq.itime {
            return true;
        }
    }
    if d.space > 0 {
        let new = dq.curspace.saturating_add(d.space.unsigned_abs());
        let hard = dq.bhardlimit.saturating_mul(QT_BLOCK_SIZE as u64);
        let soft = dq.bsoftlimit.saturating_mul(QT_BLOCK_SIZE as u64);
        if hard != 0 && new > hard {
            return true;
        }
        if soft != 0 && new > soft && dq.btime != 0 && now >= dq.btime {
            return true;
        }
    }
    false
}

/// Bytes `dq` may still grow by before a limit refuses.
fn space_left(dq: &DiskDquot, now: u64) -> u64 {
    let mut left = u64::MAX;
    let hard = dq.bhardlimit.saturating_mul(QT_BLOCK_SIZE as u64);
    if hard != 0 {
        left = left.min(hard.saturating_sub(dq.curspace));
    }
    let soft = dq.bsoftlimit.saturating_mul(QT_BLOCK_SIZE as u64);
    if soft != 0 && dq.btime != 0 && now >= dq.btime {
        left = left.min(soft.saturating_sub(dq.curspace));
    }
    left
}

impl Txn<'_> {
    /// The entry of `id` in file `f` (an empty one if it has none).
    fn dquot_of(&mut self, f: &QuotaFile, id: u32) -> Result<DiskDquot> {
        Ok(match f.find(self, id)? {
            Some(at) => f.get(self, at)?,
            None => DiskDquot {
                id,
                ..Default::default()
            },
        })
    }

    /// This transaction's usage is charged but never refused: it finishes
    /// something already done (marking written data's blocks written may
    /// split an extent; the kernel's dquot_alloc_block_nofail).
    pub(crate) fn ignore_quota_limits(&mut self) {
        self.quota_limited = false;
    }

    /// Refuses (QuotaExceeded) usage rises past a limit of an enforced
    /// type; called by `apply_quota` before anything is written.
    pub(crate) fn check_limits(&mut self, deltas: &Deltas) -> Result<()> {
        if !self.quota_limited {
            return Ok(());
        }
        let fs = self.fs();
        let now = u64::try_from(fs.now().secs).unwrap_or(0);
        for (t, ino) in fs.quota_files() {
            if !fs.quota_enforced(t) {
                continue;
            }
            let f = QuotaFile::open(self, t, ino)?;
            for ((dt, id), d) in deltas {
                if *dt != t || (d.space <= 0 && d.inodes <= 0) {
                    continue;
                }
                let dq = self.dquot_of(&f, *id)?;
                if over_limit(&dq, *d, now) {
                    return Err(Error::QuotaExceeded);
                }
            }
        }
        Ok(())
    }

    /// Limits the blocks this transaction may allocate to what the quotas
    /// of `inode`'s owners still allow (a write or fallocate then stops
    /// short; `quota_hit` records that the budget, not the disk, ran out).
    pub(crate) fn limit_blocks_for(&mut self, inode: &Inode) -> Result<()> {
        if !self.quota_limited {
            return Ok(());
        }
        let fs = self.fs();
        let Some(c) = fs.charge_of(inode, &|b| self.block(b))? else {
            return Ok(());
        };
        let now = u64::try_from(fs.now().secs).unwrap_or(0);
        let mut left = u64::MAX;
        for (t, ino) in fs.quota_files() {
            if !fs.quota_enforced(t) {
                continue;
            }
            let f = QuotaFile::open(self, t, ino)?;
            let dq = self.dquot_of(&f, Charge::id(&c, t))?;
            left = left.min(space_left(&dq, now));
        }
        if left != u64::MAX {
            self.quota_budget = Some(left.checked_div(u64::from(fs.block_size())).unwrap_or(0));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_as_the_kernel_checks_them() {
        let dq = DiskDquot {
            curspace: 4096,
            bhardlimit: 8,
            bsoftlimit: 6,
            curinodes: 2,
            ihardlimit: 3,
            ..Default::default()
        };
        let sp = |space| Delta { space, inodes: 0 };
        assert!(!over_limit(&dq, sp(4096), 100), "up to the hard limit");
        assert!(over_limit(&dq, sp(4097), 100), "past the hard limit");
        assert!(!over_limit(
            &dq,
            Delta {
                space: 0,
                inodes: 1
            },
            100
        ));
        assert!(over_limit(
            &dq,
            Delta {
                space: 0,
                inodes: 2
            },
            100
        ));
        // Soft limit: allowed until the grace time has run out.
        let g = DiskDquot { btime: 50, ..dq };
        assert!(!over_limit(&g, sp(3000), 49));
        assert!(over_limit(&g, sp(3000), 50));
        assert_eq!(space_left(&dq, 100), 4096);
        assert_eq!(space_left(&g, 100), 6 * 1024 - 4096);
        assert_eq!(space_left(&DiskDquot::default(), 0), u64::MAX);
    }
}
