//! Bigalloc cluster rules, in one place (Documentation/filesystems/ext4,
//! "Bigalloc"; the kernel's EXT4_B2C/C2B/LBLK_COFF macros):
//!
//! - block bitmaps hold one bit per cluster, and every free count
//!   (descriptor and superblock) counts clusters;
//! - a logical cluster of a file maps to at most one physical cluster, at
//!   the same offset: logical block `l` lives at `start(P) + offset(l)`
//!   for the physical cluster P of `l`'s logical cluster, so a new block in
//!   a logical cluster that already has one reuses that physical cluster;
//! - a metadata block (extent index or leaf, xattr block) takes a whole
//!   cluster of its own;
//! - a physical cluster is freed only when no block of its logical cluster
//!   is still mapped;
//! - i_blocks charges whole clusters.
//!
//! Without bigalloc a cluster is a block (`bits` 0) and every rule reduces
//! to the block one, so the allocator and the extent code use this type on
//! every filesystem.

use super::Ext4;

/// Cluster geometry: log2 of blocks per cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Clusters {
    bits: u32,
}

/// Largest log2 cluster/block ratio: the kernel's limit on
/// s_log_cluster_size (EXT4_MAX_CLUSTER_LOG_SIZE - EXT4_MIN_BLOCK_LOG_SIZE,
/// 1 GiB clusters of 1 KiB blocks), which the superblock parser enforces.
const MAX_BITS: u32 = 20;

impl Clusters {
    pub(crate) fn new(bits: u32) -> Self {
        Clusters {
            bits: bits.min(MAX_BITS),
        }
    }

    /// Whether clusters are bigger than blocks.
    pub(crate) fn is_bigalloc(self) -> bool {
        self.bits > 0
    }

    /// Blocks per cluster.
    pub(crate) fn ratio(self) -> u64 {
        1u64 << self.bits
    }

    /// Cluster holding block (or logical block) `blk` (EXT4_B2C).
    pub(crate) fn of(self, blk: u64) -> u64 {
        blk >> self.bits
    }

    /// First block of cluster `c` (EXT4_C2B).
    pub(crate) fn start(self, c: u64) -> u64 {
        c.checked_shl(self.bits)
            .filter(|s| s >> self.bits == c)
            .unwrap_or(u64::MAX)
    }

    /// Offset of `blk` in its cluster (EXT4_LBLK_COFF / EXT4_PBLK_COFF).
    pub(crate) fn offset(self, blk: u64) -> u64 {
        blk & self.ratio().saturating_sub(1)
    }

    /// `blk` rounded down to its cluster's first block.
    pub(crate) fn floor(self, blk: u64) -> u64 {
        blk.saturating_sub(self.offset(blk))
    }

    /// Clusters needed for `n` blocks starting at a cluster boundary
    /// (EXT4_NUM_B2C).
    pub(crate) fn count(self, n: u64) -> u64 {
        n.div_ceil(self.ratio())
    }

    /// The logical cluster range `[start, end)` of the cluster holding
    /// logical block `lblk`.
    pub(crate) fn span(self, lblk: u64) -> (u64, u64) {
        let s = self.floor(lblk);
        (s, s.saturating_add(self.ratio()))
    }

    /// Whether a mapping of logical `lblk` to physical `pblk` keeps the
    /// same offset in the cluster (e2fsck's "violates cluster allocation
    /// rules" otherwise).
    pub(crate) fn aligned(self, lblk: u64, pblk: u64) -> bool {
        self.offset(lblk) == self.offset(pblk)
    }
}

impl Ext4 {
    pub(crate) fn clusters(&self) -> Clusters {
        Clusters::new(self.sb.cluster_bits())
    }

    /// i_blocks units (512-byte sectors) one cluster is charged: what a
    /// metadata block (extent node, xattr block) adds to i_blocks.
    pub(crate) fn cluster_sectors(&self) -> u64 {
        u64::from(self.block_size >> 9).saturating_mul(self.clusters().ratio())
    }

    /// Bits of group `g`'s block bitmap in use: its clusters (the last
    /// group may be short; num_clusters_in_group).
    pub(crate) fn clusters_in_group(&self, g: u32) -> u64 {
        self.clusters().count(self.blocks_in_group(g))
    }

    /// Group of block `blk` (a valid data-area block) and its bit in that
    /// group's block bitmap.
    pub(crate) fn cluster_bit(&self, blk: u64) -> (u32, usize) {
        let g = self.block_group(blk);
        let rel = blk.saturating_sub(self.group_first_block(u64::from(g)));
        (
            g,
            usize::try_from(self.clusters().of(rel)).unwrap_or(usize::MAX),
        )
    }

    /// First block of the cluster at bit `bit` of group `g`'s bitmap.
    pub(crate) fn cluster_first_block(&self, g: u32, bit: usize) -> u64 {
        self.group_first_block(u64::from(g))
            .saturating_add(self.clusters().start(bit as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::Clusters;

    #[test]
    fn arithmetic() {
        let c = Clusters::new(2);
        assert!(c.is_bigalloc());
        assert_eq!(c.ratio(), 4);
        assert_eq!((c.of(9), c.start(2), c.offset(9), c.floor(9)), (2, 8, 1, 8));
        assert_eq!(
            (c.count(0), c.count(1), c.count(4), c.count(5)),
            (0, 1, 1, 2)
        );
        assert_eq!(c.span(7), (4, 8));
        assert!(c.aligned(5, 101) && !c.aligned(5, 102));
        assert_eq!(c.start(u64::MAX), u64::MAX);
        let one = Clusters::new(0);
        assert!(!one.is_bigalloc());
        assert_eq!(
            (one.of(9), one.start(9), one.offset(9), one.count(3)),
            (9, 9, 0, 3)
        );
        assert_eq!(one.span(7), (7, 8));
        assert_eq!(Clusters::new(99).ratio(), 1 << 20);
    }
}
