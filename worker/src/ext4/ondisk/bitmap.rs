//! Block and inode bitmaps: one block each per group, bit `i` for the
//! group's `i`-th cluster or inode. Checksums (metadata_csum) are
//! crc32c(fs seed, the first clusters_per_group/8 or inodes_per_group/8
//! bytes), kept in the group descriptor (bg_{block,inode}_bitmap_csum,
//! low 16 bits only with 32-byte descriptors).
//! Layout: Documentation/filesystems/ext4/bitmaps.rst and group_descr.rst.
//!
//! Bit indices are clamped to `b.len() * 8` before use, so the scans
//! below step through in-memory positions that cannot overflow; they use
//! saturating steps only so that no arithmetic can panic.

use crate::ext4::checksum::crc32c;

/// Whether bit `bit` is set; bits past the end read as set (in use), so a
/// short bitmap never offers space that is not there.
pub(crate) fn test(b: &[u8], bit: usize) -> bool {
    b.get(bit / 8)
        .is_none_or(|byte| byte & (1 << (bit % 8)) != 0)
}

pub(crate) fn set(b: &mut [u8], bit: usize) {
    if let Some(byte) = b.get_mut(bit / 8) {
        *byte |= 1 << (bit % 8);
    }
}

pub(crate) fn clear(b: &mut [u8], bit: usize) {
    if let Some(byte) = b.get_mut(bit / 8) {
        *byte &= !(1 << (bit % 8));
    }
}

/// Sets bits `[from, b.len()*8)`: the padding past the last cluster or
/// inode of a group (the kernel's ext4_mark_bitmap_end).
pub(crate) fn mark_end(b: &mut [u8], from: usize) {
    let end = b.len().saturating_mul(8);
    // Bits up to the next byte boundary one by one, then whole bytes.
    let first_byte = from.div_ceil(8);
    for i in from..first_byte.saturating_mul(8).min(end) {
        set(b, i);
    }
    if let Some(rest) = b.get_mut(first_byte..) {
        rest.fill(0xFF);
    }
}

/// The first clear bit in `[start, end)`.
pub(crate) fn find_zero(b: &[u8], start: usize, end: usize) -> Option<usize> {
    let end = end.min(b.len().saturating_mul(8));
    let mut i = start;
    while i < end {
        if i.is_multiple_of(8) && b.get(i / 8) == Some(&0xFF) {
            i = i.saturating_add(8);
            continue;
        }
        if !test(b, i) {
            return Some(i);
        }
        i = i.saturating_add(1);
    }
    None
}

/// Number of consecutive clear bits from `start`, at most `max`, before
/// `end`.
#[expect(
    clippy::arithmetic_side_effects,
    reason = "start <= i < end <= b.len() * 8: the steps and differences stay in range"
)]
pub(crate) fn zero_run(b: &[u8], start: usize, end: usize, max: usize) -> usize {
    let end = end.min(b.len().saturating_mul(8));
    let mut i = start;
    while i < end && i - start < max {
        if i.is_multiple_of(8) && i - start + 8 <= max && i + 8 <= end && b.get(i / 8) == Some(&0) {
            i += 8;
            continue;
        }
        if test(b, i) {
            break;
        }
        i += 1;
    }
    i - start
}

/// The first run of at least `want` clear bits in `[start, end)`:
/// `(first bit, want)`.
pub(crate) fn find_run(b: &[u8], start: usize, end: usize, want: usize) -> Option<usize> {
    let mut i = start;
    while let Some(z) = find_zero(b, i, end) {
        let n = zero_run(b, z, end, want);
        if n >= want {
            return Some(z);
        }
        // z + n <= end: the run stops at `end`.
        i = z.saturating_add(n);
    }
    None
}

/// The longest run of clear bits in `[0, end)` (first one on ties), capped
/// at `cap`: `(first bit, length)`.
pub(crate) fn largest_run(b: &[u8], end: usize, cap: usize) -> Option<(usize, usize)> {
    let mut best: Option<(usize, usize)> = None;
    let mut i = 0;
    while let Some(z) = find_zero(b, i, end) {
        let n = zero_run(b, z, end, usize::MAX);
        if best.is_none_or(|(_, l)| n > l) {
            best = Some((z, n.min(cap)));
            if n >= cap {
                break;
            }
        }
        i = z.saturating_add(n);
    }
    best
}

/// Number of set bits in `[0, nbits)`.
pub(crate) fn count_set(b: &[u8], nbits: usize) -> usize {
    let full = (nbits / 8).min(b.len());
    let whole: usize = b
        .get(..full)
        .unwrap_or(&[])
        .iter()
        .map(|x| x.count_ones() as usize)
        .sum();
    let partial = (full.saturating_mul(8)..nbits)
        .filter(|&i| test(b, i) && i / 8 < b.len())
        .count();
    whole.saturating_add(partial)
}

/// The bitmap checksum: crc32c(seed, first `nbytes` bytes). Callers pass
/// clusters_per_group/8 (block bitmap) or inodes_per_group/8 (inode
/// bitmap).
pub(crate) fn csum(seed: u32, b: &[u8], nbytes: usize) -> u32 {
    crc32c(seed, b.get(..nbytes.min(b.len())).unwrap_or(&[]))
}

/// Whether `stored` (from the descriptor) matches; only the low 16 bits
/// count when descriptors are 32 bytes (no `_hi` half on disk).
pub(crate) fn csum_ok(seed: u32, b: &[u8], nbytes: usize, stored: u32, full32: bool) -> bool {
    let c = csum(seed, b, nbytes);
    if full32 {
        c == stored
    } else {
        c & 0xFFFF == stored & 0xFFFF
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits() {
        let mut b = vec![0u8; 4];
        set(&mut b, 3);
        set(&mut b, 8);
        assert!(test(&b, 3) && test(&b, 8) && !test(&b, 4));
        assert!(test(&b, 1000), "past the end reads as used");
        clear(&mut b, 3);
        assert!(!test(&b, 3));
        set(&mut b, 1000); // ignored
        assert_eq!(count_set(&b, 32), 1);
        mark_end(&mut b, 13);
        assert_eq!(b, [0, 0xE1, 0xFF, 0xFF]);
        assert_eq!(count_set(&b, 32), 1 + 19);
    }

    #[test]
    fn runs() {
        let mut b = vec![0u8; 8];
        for i in [0, 1, 2, 10, 30, 31, 40] {
            set(&mut b, i);
        }
        assert_eq!(find_zero(&b, 0, 64), Some(3));
        assert_eq!(zero_run(&b, 3, 64, 100), 7);
        assert_eq!(zero_run(&b, 11, 64, 5), 5);
        assert_eq!(find_run(&b, 0, 64, 8), Some(11));
        assert_eq!(find_run(&b, 0, 64, 20), Some(41));
        assert_eq!(find_run(&b, 0, 64, 24), None);
        assert_eq!(find_run(&b, 0, 40, 10), Some(11));
        assert_eq!(largest_run(&b, 64, 100), Some((41, 23)));
        assert_eq!(largest_run(&b, 64, 4), Some((3, 4)));
        b.fill(0xFF);
        assert_eq!(find_zero(&b, 0, 64), None);
        assert_eq!(largest_run(&b, 64, 4), None);
    }

    #[test]
    fn checksums() {
        let b = vec![0x5Au8; 64];
        let c = csum(7, &b, 16);
        assert_eq!(c, crc32c(7, &b[..16]));
        assert!(csum_ok(7, &b, 16, c, true));
        assert!(csum_ok(7, &b, 16, c & 0xFFFF, false));
        assert!(!csum_ok(7, &b, 16, c ^ 1, false));
    }
}
