//! Feature flags of the superblock (`s_feature_compat`,
//! `s_feature_incompat`, `s_feature_ro_compat`), the sets this engine
//! supports, and their names as e2fsprogs prints them. Values:
//! Documentation/filesystems/ext4/super.rst and the kernel's fs/ext4/ext4.h.

// Compatible features.
pub(crate) const COMPAT_DIR_PREALLOC: u32 = 0x0001;
pub(crate) const COMPAT_IMAGIC_INODES: u32 = 0x0002;
pub(crate) const COMPAT_HAS_JOURNAL: u32 = 0x0004;
pub(crate) const COMPAT_EXT_ATTR: u32 = 0x0008;
pub(crate) const COMPAT_RESIZE_INODE: u32 = 0x0010;
pub(crate) const COMPAT_DIR_INDEX: u32 = 0x0020;
pub(crate) const COMPAT_LAZY_BG: u32 = 0x0040;
pub(crate) const COMPAT_EXCLUDE_INODE: u32 = 0x0080;
pub(crate) const COMPAT_EXCLUDE_BITMAP: u32 = 0x0100;
pub(crate) const COMPAT_SPARSE_SUPER2: u32 = 0x0200;
pub(crate) const COMPAT_FAST_COMMIT: u32 = 0x0400;
pub(crate) const COMPAT_STABLE_INODES: u32 = 0x0800;
pub(crate) const COMPAT_ORPHAN_FILE: u32 = 0x1000;

// Read-only compatible features.
pub(crate) const RO_COMPAT_SPARSE_SUPER: u32 = 0x0001;
pub(crate) const RO_COMPAT_LARGE_FILE: u32 = 0x0002;
pub(crate) const RO_COMPAT_BTREE_DIR: u32 = 0x0004;
pub(crate) const RO_COMPAT_HUGE_FILE: u32 = 0x0008;
pub(crate) const RO_COMPAT_GDT_CSUM: u32 = 0x0010;
pub(crate) const RO_COMPAT_DIR_NLINK: u32 = 0x0020;
pub(crate) const RO_COMPAT_EXTRA_ISIZE: u32 = 0x0040;
pub(crate) const RO_COMPAT_HAS_SNAPSHOT: u32 = 0x0080;
pub(crate) const RO_COMPAT_QUOTA: u32 = 0x0100;
pub(crate) const RO_COMPAT_BIGALLOC: u32 = 0x0200;
pub(crate) const RO_COMPAT_METADATA_CSUM: u32 = 0x0400;
pub(crate) const RO_COMPAT_REPLICA: u32 = 0x0800;
pub(crate) const RO_COMPAT_READONLY: u32 = 0x1000;
pub(crate) const RO_COMPAT_PROJECT: u32 = 0x2000;
pub(crate) const RO_COMPAT_SHARED_BLOCKS: u32 = 0x4000;
pub(crate) const RO_COMPAT_VERITY: u32 = 0x8000;
pub(crate) const RO_COMPAT_ORPHAN_PRESENT: u32 = 0x10000;

// Incompatible features.
pub(crate) const INCOMPAT_COMPRESSION: u32 = 0x0001;
pub(crate) const INCOMPAT_FILETYPE: u32 = 0x0002;
pub(crate) const INCOMPAT_RECOVER: u32 = 0x0004;
pub(crate) const INCOMPAT_JOURNAL_DEV: u32 = 0x0008;
pub(crate) const INCOMPAT_META_BG: u32 = 0x0010;
pub(crate) const INCOMPAT_EXTENTS: u32 = 0x0040;
pub(crate) const INCOMPAT_64BIT: u32 = 0x0080;
pub(crate) const INCOMPAT_MMP: u32 = 0x0100;
pub(crate) const INCOMPAT_FLEX_BG: u32 = 0x0200;
pub(crate) const INCOMPAT_EA_INODE: u32 = 0x0400;
pub(crate) const INCOMPAT_DIRDATA: u32 = 0x1000;
pub(crate) const INCOMPAT_CSUM_SEED: u32 = 0x2000;
pub(crate) const INCOMPAT_LARGEDIR: u32 = 0x4000;
pub(crate) const INCOMPAT_INLINE_DATA: u32 = 0x8000;
pub(crate) const INCOMPAT_ENCRYPT: u32 = 0x10000;
pub(crate) const INCOMPAT_CASEFOLD: u32 = 0x20000;

/// INCOMPAT features this engine can read (the kernel's
/// EXT4_FEATURE_INCOMPAT_SUPP). RECOVER is known but refused separately;
/// JOURNAL_DEV marks an external journal device, not a filesystem.
pub(crate) const INCOMPAT_SUPPORTED: u32 = INCOMPAT_FILETYPE
    | INCOMPAT_RECOVER
    | INCOMPAT_META_BG
    | INCOMPAT_EXTENTS
    | INCOMPAT_64BIT
    | INCOMPAT_MMP
    | INCOMPAT_FLEX_BG
    | INCOMPAT_EA_INODE
    | INCOMPAT_CSUM_SEED
    | INCOMPAT_LARGEDIR
    | INCOMPAT_INLINE_DATA
    | INCOMPAT_ENCRYPT
    | INCOMPAT_CASEFOLD;

/// RO_COMPAT features the kernel supports read-write
/// (EXT4_FEATURE_RO_COMPAT_SUPP). Any other bit allows read-only only.
pub(crate) const RO_COMPAT_SUPPORTED: u32 = RO_COMPAT_SPARSE_SUPER
    | RO_COMPAT_LARGE_FILE
    | RO_COMPAT_BTREE_DIR
    | RO_COMPAT_HUGE_FILE
    | RO_COMPAT_GDT_CSUM
    | RO_COMPAT_DIR_NLINK
    | RO_COMPAT_EXTRA_ISIZE
    | RO_COMPAT_QUOTA
    | RO_COMPAT_BIGALLOC
    | RO_COMPAT_METADATA_CSUM
    | RO_COMPAT_PROJECT
    | RO_COMPAT_VERITY
    | RO_COMPAT_ORPHAN_PRESENT;

/// Feature names as e2fsprogs (lib/e2p/feature.c) prints them.
const COMPAT_NAMES: &[(u32, &str)] = &[
    (COMPAT_DIR_PREALLOC, "dir_prealloc"),
    (COMPAT_IMAGIC_INODES, "imagic_inodes"),
    (COMPAT_HAS_JOURNAL, "has_journal"),
    (COMPAT_EXT_ATTR, "ext_attr"),
    (COMPAT_RESIZE_INODE, "resize_inode"),
    (COMPAT_DIR_INDEX, "dir_index"),
    (COMPAT_LAZY_BG, "lazy_bg"),
    (COMPAT_EXCLUDE_INODE, "exclude_inode"),
    (COMPAT_EXCLUDE_BITMAP, "snapshot_bitmap"),
    (COMPAT_SPARSE_SUPER2, "sparse_super2"),
    (COMPAT_FAST_COMMIT, "fast_commit"),
    (COMPAT_STABLE_INODES, "stable_inodes"),
    (COMPAT_ORPHAN_FILE, "orphan_file"),
];
const INCOMPAT_NAMES: &[(u32, &str)] = &[
    (INCOMPAT_COMPRESSION, "compression"),
    (INCOMPAT_FILETYPE, "filetype"),
    (INCOMPAT_RECOVER, "needs_recovery"),
    (INCOMPAT_JOURNAL_DEV, "journal_dev"),
    (INCOMPAT_META_BG, "meta_bg"),
    (INCOMPAT_EXTENTS, "extent"),
    (INCOMPAT_64BIT, "64bit"),
    (INCOMPAT_MMP, "mmp"),
    (INCOMPAT_FLEX_BG, "flex_bg"),
    (INCOMPAT_EA_INODE, "ea_inode"),
    (INCOMPAT_DIRDATA, "dirdata"),
    (INCOMPAT_CSUM_SEED, "metadata_csum_seed"),
    (INCOMPAT_LARGEDIR, "large_dir"),
    (INCOMPAT_INLINE_DATA, "inline_data"),
    (INCOMPAT_ENCRYPT, "encrypt"),
    (INCOMPAT_CASEFOLD, "casefold"),
];
const RO_COMPAT_NAMES: &[(u32, &str)] = &[
    (RO_COMPAT_SPARSE_SUPER, "sparse_super"),
    (RO_COMPAT_LARGE_FILE, "large_file"),
    (RO_COMPAT_BTREE_DIR, "btree_dir"),
    (RO_COMPAT_HUGE_FILE, "huge_file"),
    (RO_COMPAT_GDT_CSUM, "uninit_bg"),
    (RO_COMPAT_DIR_NLINK, "dir_nlink"),
    (RO_COMPAT_EXTRA_ISIZE, "extra_isize"),
    (RO_COMPAT_HAS_SNAPSHOT, "snapshot"),
    (RO_COMPAT_QUOTA, "quota"),
    (RO_COMPAT_BIGALLOC, "bigalloc"),
    (RO_COMPAT_METADATA_CSUM, "metadata_csum"),
    (RO_COMPAT_REPLICA, "replica"),
    (RO_COMPAT_READONLY, "read-only"),
    (RO_COMPAT_PROJECT, "project"),
    (RO_COMPAT_SHARED_BLOCKS, "shared_blocks"),
    (RO_COMPAT_VERITY, "verity"),
    (RO_COMPAT_ORPHAN_PRESENT, "orphan_present"),
];

/// Which feature word a bit belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FeatureKind {
    Compat,
    Incompat,
    RoCompat,
}

/// Names of the bits set in `bits` for feature word `kind`, unknown bits as
/// `FEATURE_C12` / `FEATURE_I12` / `FEATURE_R12` like e2fsprogs.
pub(crate) fn feature_names(kind: FeatureKind, bits: u32) -> Vec<String> {
    let (table, letter) = match kind {
        FeatureKind::Compat => (COMPAT_NAMES, 'C'),
        FeatureKind::Incompat => (INCOMPAT_NAMES, 'I'),
        FeatureKind::RoCompat => (RO_COMPAT_NAMES, 'R'),
    };
    (0..32u32)
        .filter(|i| bits & (1u32 << i) != 0)
        .map(|i| {
            let bit = 1u32 << i;
            table
                .iter()
                .find(|(b, _)| *b == bit)
                .map(|(_, n)| (*n).to_string())
                .unwrap_or_else(|| format!("FEATURE_{letter}{i}"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_feature_names() {
        assert_eq!(
            feature_names(FeatureKind::Incompat, 1 << 31),
            ["FEATURE_I31"]
        );
        assert_eq!(
            feature_names(FeatureKind::RoCompat, RO_COMPAT_GDT_CSUM),
            ["uninit_bg"]
        );
    }
}
