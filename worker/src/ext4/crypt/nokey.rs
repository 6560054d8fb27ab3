//! No-key names: how the kernel shows an encrypted directory's entries (and
//! an encrypted symlink's target) when the key is absent, and how it finds
//! an entry again from such a name (fs/crypto/fname.c).
//!
//! A no-key name is the unpadded base64url encoding of a variable-length
//! record: the entry's dirhash (major, minor; zeros where the kernel had
//! none to give), then the ciphertext name, of which a name longer than
//! 149 bytes keeps only the first 149 followed by the SHA-256 of the rest.
//! Every record fits NAME_MAX once encoded (189 bytes -> 252 characters).

use sha2::{Digest, Sha256};

/// Ciphertext bytes a no-key name carries whole.
const KEPT_BYTES: usize = 149;
const HASH_BYTES: usize = 8;
const SHA256_BYTES: usize = 32;
/// The record of an abbreviated (long) name: hash, kept bytes, digest.
const LONG_RECORD: usize = HASH_BYTES + KEPT_BYTES + SHA256_BYTES;
/// Shorter ciphertext than an AES block is not a valid encrypted name.
pub(crate) const MIN_CIPHERTEXT: usize = 16;

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// What a no-key name says about the entry it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NoKeyName {
    /// The dirhash the name was listed with (major, minor).
    pub hash: (u32, u32),
    pub ciphertext: Ciphertext,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Ciphertext {
    /// The whole on-disk name.
    Whole(Vec<u8>),
    /// Its first 149 bytes and the SHA-256 of the rest.
    Abbreviated {
        kept: [u8; KEPT_BYTES],
        rest_sha256: [u8; SHA256_BYTES],
    },
}

impl NoKeyName {
    /// Whether the on-disk name `disk` is the one this name names (the
    /// kernel's fscrypt_match_name: the hash takes no part in it).
    pub(crate) fn matches(&self, disk: &[u8]) -> bool {
        match &self.ciphertext {
            Ciphertext::Whole(name) => name == disk,
            Ciphertext::Abbreviated { kept, rest_sha256 } => {
                match disk.split_at_checked(KEPT_BYTES) {
                    Some((head, rest)) if !rest.is_empty() => {
                        head == kept && Sha256::digest(rest).as_slice() == rest_sha256
                    }
                    _ => false,
                }
            }
        }
    }
}

/// The no-key name of the on-disk name `disk` listed with `hash`.
/// `disk` must be at least [`MIN_CIPHERTEXT`] bytes (the caller checks:
/// the kernel refuses shorter names as corrupt).
pub(crate) fn encode(disk: &[u8], hash: (u32, u32)) -> Vec<u8> {
    let mut record = Vec::with_capacity(LONG_RECORD);
    record.extend_from_slice(&hash.0.to_le_bytes());
    record.extend_from_slice(&hash.1.to_le_bytes());
    match disk.split_at_checked(KEPT_BYTES) {
        Some((head, rest)) if !rest.is_empty() => {
            record.extend_from_slice(head);
            record.extend_from_slice(&Sha256::digest(rest));
        }
        _ => record.extend_from_slice(disk),
    }
    base64url_encode(&record)
}

/// Reads a name a user gave for an entry of a directory whose key is
/// absent. `None`: no entry can have that name (the kernel's ENOENT).
pub(crate) fn decode(name: &[u8]) -> Option<NoKeyName> {
    if name.len() > LONG_RECORD.div_ceil(3).saturating_mul(4) {
        return None;
    }
    let record = base64url_decode(name)?;
    let (hash, ciphertext) = record.split_at_checked(HASH_BYTES)?;
    let major = u32::from_le_bytes(hash.get(0..4)?.try_into().ok()?);
    let minor = u32::from_le_bytes(hash.get(4..8)?.try_into().ok()?);
    let ciphertext = if ciphertext.is_empty() {
        return None;
    } else if ciphertext.len() <= KEPT_BYTES {
        Ciphertext::Whole(ciphertext.to_vec())
    } else if record.len() == LONG_RECORD {
        let (kept, digest) = ciphertext.split_at(KEPT_BYTES);
        Ciphertext::Abbreviated {
            kept: kept.try_into().ok()?,
            rest_sha256: digest.try_into().ok()?,
        }
    } else {
        return None;
    };
    Some(NoKeyName {
        hash: (major, minor),
        ciphertext,
    })
}

/// Length of the no-key form of a `ciphertext_len`-byte name, without
/// computing it (an encrypted symlink's st_size is its target's length).
pub(crate) fn encoded_len(ciphertext_len: usize) -> usize {
    let record = if ciphertext_len > KEPT_BYTES {
        LONG_RECORD
    } else {
        HASH_BYTES.saturating_add(ciphertext_len)
    };
    record.saturating_mul(4).div_ceil(3)
}

/// RFC 4648 base64url without padding, three bytes to four characters.
fn base64url_encode(src: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(src.len().saturating_mul(4).div_ceil(3));
    for chunk in src.chunks(3) {
        let byte = |i: usize| u32::from(chunk.get(i).copied().unwrap_or(0));
        let group = (byte(0) << 16) | (byte(1) << 8) | byte(2);
        let sextets = [group >> 18, group >> 12, group >> 6, group];
        // n bytes make n + 1 characters; the last one's spare bits are 0.
        for s in sextets.iter().take(chunk.len().saturating_add(1)) {
            out.push(ALPHABET[(s & 0x3f) as usize]);
        }
    }
    out
}

/// The inverse of [`base64url_encode`], with the kernel's leniency (which
/// is why this is not the `base64` crate): a final character whose bits
/// make no whole byte is accepted when those bits are zero, so "...A"
/// decodes as "..." does. Any other character, '=' included, is refused,
/// and so are spare bits that are not zero.
fn base64url_decode(src: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(src.len().saturating_mul(3) / 4);
    for chunk in src.chunks(4) {
        let mut group = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            let v = ALPHABET.iter().position(|&a| a == c)? as u32;
            group |= v << [18, 12, 6, 0].get(i)?;
        }
        let [_, b0, b1, b2] = group.to_be_bytes();
        // 4 characters hold 3 bytes, 3 hold 2 (2 spare bits), 2 hold 1 (4
        // spare bits), 1 holds none (6 spare bits).
        let (bytes, spare): (&[u8], u32) = match chunk.len() {
            4 => (&[b0, b1, b2], 0),
            3 => (&[b0, b1], group & 0xc0),
            2 => (&[b0], group & 0xf000),
            _ => (&[], group),
        };
        if spare != 0 {
            return None;
        }
        out.extend_from_slice(bytes);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64url_matches_rfc4648() {
        // RFC 4648 section 10, with the URL alphabet and no padding.
        for (plain, enc) in [
            ("", ""),
            ("f", "Zg"),
            ("fo", "Zm8"),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg"),
            ("fooba", "Zm9vYmE"),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64url_encode(plain.as_bytes()), enc.as_bytes());
            assert_eq!(base64url_decode(enc.as_bytes()).unwrap(), plain.as_bytes());
        }
        assert_eq!(base64url_encode(&[0xfb, 0xff]), b"-_8");
        assert_eq!(base64url_decode(b"-_8").unwrap(), [0xfb, 0xff]);
    }

    #[test]
    fn decoding_refuses_what_the_kernel_refuses() {
        assert_eq!(base64url_decode(b"Zg=="), None, "padding");
        assert_eq!(base64url_decode(b"Zm+v"), None, "standard alphabet");
        assert_eq!(base64url_decode(b"Zh"), None, "non-zero spare bits");
        // The kernel's leniency: a zero sextet with no byte is ignored.
        assert_eq!(base64url_decode(b"Zm9vA").unwrap(), b"foo");
    }

    #[test]
    fn short_names_round_trip_whole() {
        let disk: Vec<u8> = (0u8..32).collect();
        let enc = encode(&disk, (0x1234_5678, 0x9abc_def0));
        assert_eq!(enc.len(), encoded_len(disk.len()));
        assert!(enc.len() <= 255);
        let n = decode(&enc).unwrap();
        assert_eq!(n.hash, (0x1234_5678, 0x9abc_def0));
        assert_eq!(n.ciphertext, Ciphertext::Whole(disk.clone()));
        assert!(n.matches(&disk));
        assert!(!n.matches(&disk[..31]));
    }

    #[test]
    fn long_names_are_abbreviated_and_matched_by_digest() {
        for len in [150usize, 200, 255] {
            let disk: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let enc = encode(&disk, (2, 0));
            assert_eq!(enc.len(), 252);
            assert_eq!(enc.len(), encoded_len(len));
            let n = decode(&enc).unwrap();
            assert!(matches!(n.ciphertext, Ciphertext::Abbreviated { .. }));
            assert!(n.matches(&disk));
            let mut other = disk.clone();
            *other.last_mut().unwrap() ^= 1;
            assert!(!n.matches(&other));
            assert!(!n.matches(&disk[..KEPT_BYTES]));
        }
        // 149 bytes is still whole: 157 bytes make 210 characters.
        assert_eq!(encoded_len(149), 210);
    }

    #[test]
    fn names_that_cannot_be_no_key_names() {
        assert_eq!(decode(b""), None);
        assert_eq!(decode(b"AAAAAAAAAAA"), None, "a hash and no name");
        assert_eq!(decode(b"hello world"), None, "space");
        assert_eq!(decode(&[b'A'; 253]), None, "longer than any no-key name");
        // Between the longest whole record and the abbreviated one.
        let odd = base64url_encode(&[1u8; HASH_BYTES + KEPT_BYTES + 5]);
        assert_eq!(decode(&odd), None);
    }
}
