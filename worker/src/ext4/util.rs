//! Byte-order helpers. Every little-endian (and the journal's big-endian)
//! read of on-disk data goes through here. None of them panics: bytes past
//! the end of the slice read as zero. Parsers still check lengths first, so
//! a short buffer is reported as corruption rather than silently zero.

pub(crate) fn le16(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes(take::<2>(b, off))
}

pub(crate) fn le32(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(take::<4>(b, off))
}

pub(crate) fn le64(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(take::<8>(b, off))
}

/// Big-endian 32-bit read (jbd2 structures are big-endian).
pub(crate) fn be32(b: &[u8], off: usize) -> u32 {
    u32::from_be_bytes(take::<4>(b, off))
}

/// Little-endian writes: the serializers' counterpart of [`le16`] and
/// friends. Like the readers they never panic: bytes past the end of `b`
/// are silently dropped (serializers size their buffers first).
pub(crate) fn put_le16(b: &mut [u8], off: usize, v: u16) {
    put(b, off, &v.to_le_bytes());
}

pub(crate) fn put_le32(b: &mut [u8], off: usize, v: u32) {
    put(b, off, &v.to_le_bytes());
}

pub(crate) fn put_le64(b: &mut [u8], off: usize, v: u64) {
    put(b, off, &v.to_le_bytes());
}

/// Big-endian 32-bit write (jbd2 structures).
pub(crate) fn put_be32(b: &mut [u8], off: usize, v: u32) {
    put(b, off, &v.to_be_bytes());
}

/// Copies `src` to `b[off..]`, truncated at the end of `b`.
pub(crate) fn put(b: &mut [u8], off: usize, src: &[u8]) {
    if let Some(dst) = b.get_mut(off..) {
        let n = dst.len().min(src.len());
        if let (Some(d), Some(s)) = (dst.get_mut(..n), src.get(..n)) {
            d.copy_from_slice(s);
        }
    }
}

/// Copies the bytes two buffers of device bytes have in common: `src`
/// holds the bytes from device offset `src_at`, `dst` those from `dst_at`.
pub(crate) fn copy_overlap(src: &[u8], src_at: u64, dst: &mut [u8], dst_at: u64) {
    let from = src_at.max(dst_at);
    let to = src_at
        .saturating_add(src.len() as u64)
        .min(dst_at.saturating_add(dst.len() as u64));
    if from >= to {
        return;
    }
    let range = |at: u64| {
        let s = usize::try_from(from.saturating_sub(at)).unwrap_or(usize::MAX);
        s..s.saturating_add(usize::try_from(to.saturating_sub(from)).unwrap_or(0))
    };
    if let (Some(s), Some(d)) = (src.get(range(src_at)), dst.get_mut(range(dst_at))) {
        d.copy_from_slice(s);
    }
}

/// `N` bytes from `off`, zero-padded where the slice ends early.
pub(crate) fn take<const N: usize>(b: &[u8], off: usize) -> [u8; N] {
    let mut out = [0u8; N];
    if let Some(src) = b.get(off..) {
        let n = src.len().min(N);
        if let (Some(dst), Some(src)) = (out.get_mut(..n), src.get(..n)) {
            dst.copy_from_slice(src);
        }
    }
    out
}

/// The bytes of `b` up to (not including) the first NUL.
pub(crate) fn until_nul(b: &[u8]) -> &[u8] {
    match b.iter().position(|&c| c == 0) {
        Some(n) => b.get(..n).unwrap_or(b),
        None => b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_little_endian() {
        let b = [1u8, 2, 3, 4, 5, 6, 7, 8, 9];
        assert_eq!(le16(&b, 0), 0x0201);
        assert_eq!(le32(&b, 1), 0x0504_0302);
        assert_eq!(le64(&b, 1), 0x0908_0706_0504_0302);
        assert_eq!(be32(&b, 0), 0x0102_0304);
    }

    #[test]
    fn past_the_end_reads_zero() {
        let b = [0xffu8, 0xee];
        assert_eq!(le16(&b, 1), 0x00ee);
        assert_eq!(le32(&b, 2), 0);
        assert_eq!(le64(&b, usize::MAX), 0);
        assert_eq!(le32(&[], 0), 0);
    }

    #[test]
    fn writes_little_endian() {
        let mut b = [0u8; 9];
        put_le16(&mut b, 0, 0x0201);
        put_le32(&mut b, 2, 0x0605_0403);
        put_le64(&mut b, 6, u64::MAX); // truncated at the end
        assert_eq!(b, [1, 2, 3, 4, 5, 6, 0xff, 0xff, 0xff]);
        put_be32(&mut b, 0, 0x0a0b_0c0d);
        assert_eq!(be32(&b, 0), 0x0a0b_0c0d);
        put(&mut b, 100, &[1]); // past the end: nothing
    }

    #[test]
    fn nul_terminated() {
        assert_eq!(until_nul(b"abc\0def"), b"abc");
        assert_eq!(until_nul(b"abc"), b"abc");
        assert_eq!(until_nul(b"\0"), b"");
    }
}
