//! Encrypted files and directories (the `encrypt` feature, fscrypt), which
//! this engine serves as the kernel does when their key is absent: it
//! never has keys (a worker that parses hostile disks holds no secrets).
//!
//! What works without the key, as in the kernel: an encrypted directory
//! lists its entries under no-key names (see [`nokey`]) and finds them
//! again by those names; its entries can be unlinked and removed; an
//! encrypted symlink reads as the no-key form of its ciphertext target;
//! stat, chmod, chown, times and xattrs work on every inode. What needs the
//! key fails with ENOKEY: opening an encrypted regular file, truncating it,
//! and adding a name to an encrypted directory (create, mkdir, mknod,
//! symlink, link, rename into or out of it).

pub(crate) mod nokey;

use crate::ext4::error::{Error, Result};
use crate::ext4::ondisk::inode::{EXT4_ENCRYPT_FL, Inode};

/// Bytes before an encrypted symlink's ciphertext target: its length
/// (le16), which the kernel keeps for historical reasons.
const SYMLINK_LEN_BYTES: usize = 2;

pub(crate) fn is_encrypted(inode: &Inode) -> bool {
    inode.has_flag(EXT4_ENCRYPT_FL)
}

/// The kernel's fscrypt_require_key, for an inode whose key this engine
/// never has.
pub(crate) fn require_key(inode: &Inode) -> Result<()> {
    if is_encrypted(inode) {
        return Err(Error::NoKey);
    }
    Ok(())
}

/// What readlink shows of an encrypted symlink whose stored body (i_block
/// or its data block, `max` bytes of room) is `body`: the no-key name of
/// its ciphertext target. `Err` names what is wrong with a bad body.
pub(crate) fn nokey_symlink_target(body: &[u8]) -> std::result::Result<Vec<u8>, String> {
    let len_bytes = body
        .get(..SYMLINK_LEN_BYTES)
        .ok_or("encrypted target shorter than its length field")?;
    let len = usize::from(u16::from_le_bytes([len_bytes[0], len_bytes[1]]));
    if len < nokey::MIN_CIPHERTEXT {
        return Err(format!("encrypted target of {len} bytes"));
    }
    let ciphertext = body
        .get(SYMLINK_LEN_BYTES..SYMLINK_LEN_BYTES.saturating_add(len))
        .ok_or_else(|| format!("encrypted target of {len} bytes does not fit"))?;
    Ok(nokey::encode(ciphertext, (0, 0)))
}

/// st_size of an encrypted symlink of `i_size` bytes: the length of what
/// readlink shows (the kernel's fscrypt_symlink_getattr), computed from
/// the sizes alone.
pub(crate) fn nokey_symlink_size(i_size: u64) -> u64 {
    let ciphertext = i_size.saturating_sub(SYMLINK_LEN_BYTES as u64);
    usize::try_from(ciphertext).map_or(i_size, |c| nokey::encoded_len(c) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlink_bodies() {
        let mut body = vec![20u8, 0];
        body.extend(1..=20u8);
        body.push(0);
        let t = nokey_symlink_target(&body).unwrap();
        assert_eq!(t.len() as u64, nokey_symlink_size(22));
        assert_eq!(nokey::decode(&t).unwrap().hash, (0, 0));
        assert!(nokey_symlink_target(&[5, 0, 1, 2, 3, 4, 5]).is_err());
        assert!(nokey_symlink_target(&[40, 0, 1, 2]).is_err());
        assert!(nokey_symlink_target(&[1]).is_err());
    }
}
