//! The two checksums ext4 uses, with the kernel's semantics.

/// Raw CRC-32C (Castagnoli) as the kernel's `ext4_chksum`/`crc32c_le`
/// computes it: the seed is the running register and there is no final
/// inversion. `crc32c(!0, data)` is the superblock checksum.
pub(crate) fn crc32c(seed: u32, data: &[u8]) -> u32 {
    !crc32c::crc32c_append(!seed, data)
}

/// Reflected CRC-16 with polynomial 0x8005 (0xA001 reflected), no final
/// xor, seeded by the caller: the kernel's lib/crc16.c, which ext4's
/// `gdt_csum` (uninit_bg) descriptor checksum uses.
pub(crate) fn crc16(seed: u16, data: &[u8]) -> u16 {
    let mut crc = seed;
    for &byte in data {
        let idx = usize::from((crc ^ u16::from(byte)) & 0xff);
        crc = (crc >> 8) ^ CRC16_TABLE.get(idx).copied().unwrap_or(0);
    }
    crc
}

const CRC16_TABLE: [u16; 256] = {
    let mut table = [0u16; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u16;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0xA001
            } else {
                c >> 1
            };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_kernel_semantics() {
        // Standard CRC-32C check value: init !0, final inversion.
        assert_eq!(!crc32c(!0, b"123456789"), 0xE306_9283);
        // Chaining equals one pass.
        let a = crc32c(0x1234_5678, b"hello ");
        assert_eq!(crc32c(a, b"world"), crc32c(0x1234_5678, b"hello world"));
        assert_eq!(crc32c(7, b""), 7);
    }

    #[test]
    fn crc16_matches_arc() {
        // CRC-16/ARC check value (init 0, reflected, no xorout).
        assert_eq!(crc16(0, b"123456789"), 0xBB3D);
        let c = crc::Crc::<u16>::new(&crc::CRC_16_ARC);
        assert_eq!(crc16(0, b"ext4 group desc"), c.checksum(b"ext4 group desc"));
        let a = crc16(0xffff, b"ab");
        assert_eq!(crc16(a, b"cd"), crc16(0xffff, b"abcd"));
    }
}
