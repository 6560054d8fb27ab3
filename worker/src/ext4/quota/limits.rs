//! Enforcement of quota limits (EDQUOT), as the kernel's dquot_add_space
//! and dquot_add_inodes decide it.

use crate::ext4::Ext4;
use crate::ext4::ondisk::quota::QuotaType;

impl Ext4 {
    /// Whether limits of `t` are enforced on this mount (the kernel:
    /// only with the usrquota / grpquota / prjquota mount option; usage is
    /// kept either way).
    pub(crate) fn quota_enforced(&self, t: QuotaType) -> bool {
        self.quota_enforce.get(t.index()).copied().unwrap_or(false)
    }
}
