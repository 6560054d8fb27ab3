//! Directory-index (htree) name hashes: the legacy hash, half-MD4 and TEA,
//! each in a "signed char" and an "unsigned char" variant, as described in
//! Documentation/filesystems/ext4/directory.rst ("Hash Tree Directories").
//!
//! The variant follows the superblock: `s_flags` EXT2_FLAGS_UNSIGNED_HASH
//! selects the unsigned variants, otherwise the signed ones (what x86, where
//! `char` is signed, has always written). The seed is `s_hash_seed`, or the
//! MD4 initial values when it is all zero.

/// `dx_root_info.hash_version` values (and `s_def_hash_version`).
pub(crate) const DX_HASH_LEGACY: u8 = 0;
pub(crate) const DX_HASH_HALF_MD4: u8 = 1;
pub(crate) const DX_HASH_TEA: u8 = 2;
pub(crate) const DX_HASH_LEGACY_UNSIGNED: u8 = 3;
pub(crate) const DX_HASH_HALF_MD4_UNSIGNED: u8 = 4;
pub(crate) const DX_HASH_TEA_UNSIGNED: u8 = 5;
/// Only used by casefolded + encrypted directories (hash stored in the
/// dirent); this engine refuses encrypted directories.
pub(crate) const DX_HASH_SIPHASH: u8 = 6;

/// `s_flags` bits.
#[cfg(test)]
pub(crate) const EXT2_FLAGS_SIGNED_HASH: u32 = 0x1;
pub(crate) const EXT2_FLAGS_UNSIGNED_HASH: u32 = 0x2;

/// The largest 32-bit hash; `hash == EOF << 1` is remapped, as the kernel
/// reserves it for "end of directory" in readdir cookies.
const HTREE_EOF_32BIT: u32 = 0x7fff_ffff;

const DEFAULT_SEED: [u32; 4] = [0x6745_2301, 0xefcd_ab89, 0x98ba_dcfe, 0x1032_5476];

/// A name's major and minor hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DxHash {
    pub major: u32,
    pub minor: u32,
}

/// The hash version an htree root's `hash_version` means on this
/// filesystem: the three base versions get the unsigned variant when
/// `s_flags` says so. `None` for versions this engine cannot compute.
pub(crate) fn effective_version(root_version: u8, s_flags: u32) -> Option<u8> {
    match root_version {
        DX_HASH_LEGACY | DX_HASH_HALF_MD4 | DX_HASH_TEA => {
            if s_flags & EXT2_FLAGS_UNSIGNED_HASH != 0 {
                Some(root_version.wrapping_add(3))
            } else {
                // Signed flag, or neither (the kernel then assumes the
                // platform's char signedness; x86's is signed).
                Some(root_version)
            }
        }
        DX_HASH_LEGACY_UNSIGNED | DX_HASH_HALF_MD4_UNSIGNED | DX_HASH_TEA_UNSIGNED => {
            Some(root_version)
        }
        _ => None,
    }
}

/// Hashes `name` with `version` (one of the six computed versions) and
/// `seed` (`s_hash_seed`). `None` for an unknown version.
pub(crate) fn dx_hash(name: &[u8], version: u8, seed: &[u32; 4]) -> Option<DxHash> {
    let mut buf = if seed.iter().any(|&s| s != 0) {
        *seed
    } else {
        DEFAULT_SEED
    };
    let (major, minor) = match version {
        DX_HASH_LEGACY => (legacy(name, true), 0),
        DX_HASH_LEGACY_UNSIGNED => (legacy(name, false), 0),
        DX_HASH_HALF_MD4 | DX_HASH_HALF_MD4_UNSIGNED => {
            let signed = version == DX_HASH_HALF_MD4;
            let mut input = [0u32; 8];
            for (i, chunk) in name.chunks(32).enumerate() {
                // The length word is the remaining length, not the chunk's.
                let remaining = name.len().saturating_sub(i.saturating_mul(32));
                str2hashbuf(chunk, remaining, &mut input, signed);
                half_md4_transform(&mut buf, &input);
            }
            (buf[1], buf[2])
        }
        DX_HASH_TEA | DX_HASH_TEA_UNSIGNED => {
            let signed = version == DX_HASH_TEA;
            let mut input = [0u32; 4];
            for (i, chunk) in name.chunks(16).enumerate() {
                let remaining = name.len().saturating_sub(i.saturating_mul(16));
                str2hashbuf(chunk, remaining, &mut input, signed);
                tea_transform(&mut buf, &input);
            }
            (buf[0], buf[1])
        }
        _ => return None,
    };
    let mut major = major & !1;
    if major == HTREE_EOF_32BIT << 1 {
        major = (HTREE_EOF_32BIT - 1) << 1;
    }
    Some(DxHash { major, minor })
}

fn char_value(c: u8, signed: bool) -> u32 {
    if signed {
        // Sign-extend as C's `(int)(signed char)c` does.
        i32::from(c as i8) as u32
    } else {
        u32::from(c)
    }
}

fn legacy(name: &[u8], signed: bool) -> u32 {
    let mut hash0: u32 = 0x12a3_fe2d;
    let mut hash1: u32 = 0x37ab_e8f9;
    for &c in name {
        let mut hash = hash1.wrapping_add(hash0 ^ char_value(c, signed).wrapping_mul(7_152_373));
        if hash & 0x8000_0000 != 0 {
            hash = hash.wrapping_sub(0x7fff_ffff);
        }
        hash1 = hash0;
        hash0 = hash;
    }
    hash0 << 1
}

/// Packs up to `out.len() * 4` bytes of `msg` into words, padding with a
/// word made of the low byte of `len` (the remaining name length).
fn str2hashbuf(msg: &[u8], len: usize, out: &mut [u32], signed: bool) {
    let len_byte = len as u32 & 0xff;
    let mut pad = len_byte | (len_byte << 8);
    pad |= pad << 16;
    let take = msg.len().min(out.len().saturating_mul(4));
    let mut val = pad;
    let mut filled = 0usize;
    for (i, &c) in msg.iter().take(take).enumerate() {
        if i % 4 == 0 {
            val = pad;
        }
        val = char_value(c, signed).wrapping_add(val << 8);
        if i % 4 == 3 {
            if let Some(slot) = out.get_mut(filled) {
                *slot = val;
            }
            filled = filled.saturating_add(1);
            val = pad;
        }
    }
    if let Some(slot) = out.get_mut(filled) {
        *slot = val;
        filled = filled.saturating_add(1);
    }
    for slot in out.iter_mut().skip(filled) {
        *slot = pad;
    }
}

fn tea_transform(buf: &mut [u32; 4], input: &[u32; 4]) {
    const DELTA: u32 = 0x9E37_79B9;
    let mut sum: u32 = 0;
    let (mut b0, mut b1) = (buf[0], buf[1]);
    let [a, b, c, d] = *input;
    for _ in 0..16 {
        sum = sum.wrapping_add(DELTA);
        b0 = b0.wrapping_add(
            (b1 << 4).wrapping_add(a) ^ b1.wrapping_add(sum) ^ (b1 >> 5).wrapping_add(b),
        );
        b1 = b1.wrapping_add(
            (b0 << 4).wrapping_add(c) ^ b0.wrapping_add(sum) ^ (b0 >> 5).wrapping_add(d),
        );
    }
    buf[0] = buf[0].wrapping_add(b0);
    buf[1] = buf[1].wrapping_add(b1);
}

/// The cut-down MD4 of the ext3 htree: three rounds of eight steps.
fn half_md4_transform(buf: &mut [u32; 4], x: &[u32; 8]) {
    const K2: u32 = 0x5A82_7999;
    const K3: u32 = 0x6ED9_EBA1;
    fn f(x: u32, y: u32, z: u32) -> u32 {
        z ^ (x & (y ^ z))
    }
    fn g(x: u32, y: u32, z: u32) -> u32 {
        (x & y).wrapping_add((x ^ y) & z)
    }
    fn h(x: u32, y: u32, z: u32) -> u32 {
        x ^ y ^ z
    }
    fn step(fun: fn(u32, u32, u32) -> u32, a: &mut u32, b: u32, c: u32, d: u32, x: u32, s: u32) {
        *a = a.wrapping_add(fun(b, c, d)).wrapping_add(x).rotate_left(s);
    }
    let (mut a, mut b, mut c, mut d) = (buf[0], buf[1], buf[2], buf[3]);

    // Round 1: (word, shift) in order, rotating a, d, c, b.
    for (i, &s) in [3u32, 7, 11, 19, 3, 7, 11, 19].iter().enumerate() {
        let w = x[i];
        match i % 4 {
            0 => step(f, &mut a, b, c, d, w, s),
            1 => step(f, &mut d, a, b, c, w, s),
            2 => step(f, &mut c, d, a, b, w, s),
            _ => step(f, &mut b, c, d, a, w, s),
        }
    }
    // Round 2.
    let r2: [(usize, u32); 8] = [
        (1, 3),
        (3, 5),
        (5, 9),
        (7, 13),
        (0, 3),
        (2, 5),
        (4, 9),
        (6, 13),
    ];
    for (i, &(wi, s)) in r2.iter().enumerate() {
        let w = x[wi].wrapping_add(K2);
        match i % 4 {
            0 => step(g, &mut a, b, c, d, w, s),
            1 => step(g, &mut d, a, b, c, w, s),
            2 => step(g, &mut c, d, a, b, w, s),
            _ => step(g, &mut b, c, d, a, w, s),
        }
    }
    // Round 3.
    let r3: [(usize, u32); 8] = [
        (3, 3),
        (7, 9),
        (2, 11),
        (6, 15),
        (1, 3),
        (5, 9),
        (0, 11),
        (4, 15),
    ];
    for (i, &(wi, s)) in r3.iter().enumerate() {
        let w = x[wi].wrapping_add(K3);
        match i % 4 {
            0 => step(h, &mut a, b, c, d, w, s),
            1 => step(h, &mut d, a, b, c, w, s),
            2 => step(h, &mut c, d, a, b, w, s),
            _ => step(h, &mut b, c, d, a, w, s),
        }
    }
    buf[0] = buf[0].wrapping_add(a);
    buf[1] = buf[1].wrapping_add(b);
    buf[2] = buf[2].wrapping_add(c);
    buf[3] = buf[3].wrapping_add(d);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// Asks e2fsprogs' debugfs for the hash (`dx_hash`), the reference
    /// implementation. `None` when debugfs is not installed.
    fn debugfs_hash(alg: &str, seed: &str, name: &str) -> Option<(u32, u32)> {
        let out = Command::new("debugfs")
            .arg("-R")
            .arg(format!("dx_hash -h {alg} -s {seed} {name}"))
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout);
        // "Hash of NAME is 0xa26e4a80 (minor 0x97e5b7f7)"
        let rest = text.rsplit(" is 0x").next()?;
        let (major, rest) = rest.split_once(' ')?;
        let minor = rest.trim().strip_prefix("(minor 0x")?.strip_suffix(')')?;
        Some((
            u32::from_str_radix(major, 16).ok()?,
            u32::from_str_radix(minor, 16).ok()?,
        ))
    }

    fn seed_words(uuid: &str) -> [u32; 4] {
        // debugfs parses the seed as a UUID and uses its bytes as four
        // little-endian words, as the superblock stores s_hash_seed.
        let hex: String = uuid.chars().filter(|c| *c != '-').collect();
        let bytes: Vec<u8> = (0..16)
            .map(|i| u8::from_str_radix(&hex[i * 2..i * 2 + 2], 16).unwrap())
            .collect();
        let mut w = [0u32; 4];
        for (i, word) in w.iter_mut().enumerate() {
            *word = u32::from_le_bytes(bytes[i * 4..i * 4 + 4].try_into().unwrap());
        }
        w
    }

    #[test]
    fn known_values() {
        // Values printed by debugfs 1.47.0 `dx_hash`.
        let seed = seed_words("01234567-89ab-cdef-0123-456789abcdef");
        let h = dx_hash(b"hello", DX_HASH_HALF_MD4, &seed).unwrap();
        assert_eq!((h.major, h.minor), (0xa26e4a80, 0x97e5b7f7));
    }

    #[test]
    fn matches_debugfs() {
        if debugfs_hash("half_md4", "01234567-89ab-cdef-0123-456789abcdef", "x").is_none() {
            crate::test_skip::skip("debugfs not installed");
            return;
        }
        let seeds = [
            "00000000-0000-0000-0000-000000000000",
            "01234567-89ab-cdef-0123-456789abcdef",
            "f00dface-dead-beef-1234-0123456789ab",
        ];
        let long = "n".repeat(255);
        let names: Vec<String> = vec![
            "a".into(),
            "hello".into(),
            "lost+found".into(),
            "exactly16bytes!!".into(),
            "thirty-two-bytes-long-name-xxxxx".into(),
            "thirty-three-bytes-long-name-xxxx".into(),
            "caf\u{e9}-\u{fc}ber-\u{65e5}\u{672c}".into(),
            "\u{ff}\u{fe}\u{80}".into(),
            long,
        ];
        let algs = [
            ("legacy", DX_HASH_LEGACY),
            ("half_md4", DX_HASH_HALF_MD4),
            ("tea", DX_HASH_TEA),
            // debugfs takes a number for versions it has no name for.
            ("3", DX_HASH_LEGACY_UNSIGNED),
            ("4", DX_HASH_HALF_MD4_UNSIGNED),
            ("5", DX_HASH_TEA_UNSIGNED),
        ];
        let mut checked = 0;
        for seed in seeds {
            for name in &names {
                for (alg, version) in algs {
                    let want = debugfs_hash(alg, seed, name)
                        .unwrap_or_else(|| panic!("debugfs dx_hash {alg} {name}"));
                    let got = dx_hash(name.as_bytes(), version, &seed_words(seed)).unwrap();
                    assert_eq!(
                        (got.major, got.minor),
                        want,
                        "{alg} seed {seed} name {name:?}"
                    );
                    checked += 1;
                }
            }
        }
        assert_eq!(checked, 3 * 9 * 6);
    }

    #[test]
    fn effective_versions() {
        assert_eq!(effective_version(1, EXT2_FLAGS_SIGNED_HASH), Some(1));
        assert_eq!(effective_version(1, EXT2_FLAGS_UNSIGNED_HASH), Some(4));
        assert_eq!(effective_version(2, 0), Some(2));
        assert_eq!(effective_version(5, 0), Some(5));
        assert_eq!(effective_version(DX_HASH_SIPHASH, 0), None);
        assert_eq!(effective_version(200, 0), None);
        assert!(dx_hash(b"x", 7, &[0; 4]).is_none());
    }
}
