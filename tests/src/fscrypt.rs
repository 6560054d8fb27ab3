//! Making encrypted directories with the kernel's fscrypt (the `encrypt`
//! feature): add a raw key to a mounted filesystem and set a v2 policy on
//! an empty directory. Only the tests' kernel mounts hold keys; once that
//! mount is gone, the images hold encrypted names, symlinks and contents
//! that no one can read, which is what a plugged-in disk brings.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;

use anyhow::{Context, Result, bail};

/// _IOWR('f', 23, struct fscrypt_add_key_arg): 80 bytes.
const FS_IOC_ADD_ENCRYPTION_KEY: libc::c_ulong = 0xc050_6617;
/// _IOR('f', 19, struct fscrypt_policy_v1): takes v2 policies too.
const FS_IOC_SET_ENCRYPTION_POLICY: libc::c_ulong = 0x800c_6613;
const KEY_SPEC_TYPE_IDENTIFIER: u32 = 2;
const MODE_AES_256_XTS: u8 = 1;
const MODE_AES_256_CTS: u8 = 4;
/// Filename padding: 4 << flags (4, 8, 16 or 32 bytes).
pub const PAD_4: u8 = 0;
pub const PAD_32: u8 = 3;
const ADD_KEY_ARG_LEN: usize = 80;
const RAW_KEY_LEN: usize = 64;

fn ioctl(f: &File, req: libc::c_ulong, arg: &mut [u8], what: &str) -> Result<()> {
    // SAFETY: `arg` is a live, writable buffer as large as the structure
    // the request reads and writes (checked by the callers' lengths).
    let r = unsafe { libc::ioctl(f.as_raw_fd(), req, arg.as_mut_ptr()) };
    if r != 0 {
        bail!("{what}: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// Adds a 64-byte raw key to the filesystem mounted at `mnt`; returns its
/// identifier (what a v2 policy names).
pub fn add_key(mnt: &Path, raw: &[u8; RAW_KEY_LEN]) -> Result<[u8; 16]> {
    let f = File::open(mnt).with_context(|| format!("open {}", mnt.display()))?;
    let mut arg = vec![0u8; ADD_KEY_ARG_LEN + RAW_KEY_LEN];
    // key_spec.type, then (after 4 reserved bytes) the 32-byte union the
    // kernel fills with the identifier; raw_size at 40, key_id at 44.
    arg[0..4].copy_from_slice(&KEY_SPEC_TYPE_IDENTIFIER.to_ne_bytes());
    arg[40..44].copy_from_slice(&(RAW_KEY_LEN as u32).to_ne_bytes());
    arg[ADD_KEY_ARG_LEN..].copy_from_slice(raw);
    ioctl(
        &f,
        FS_IOC_ADD_ENCRYPTION_KEY,
        &mut arg,
        "FS_IOC_ADD_ENCRYPTION_KEY",
    )?;
    let mut id = [0u8; 16];
    id.copy_from_slice(&arg[8..24]);
    Ok(id)
}

/// Makes the empty directory `dir` encrypted with the key `id` (AES-256-XTS
/// contents, AES-256-CTS names, name padding `pad`).
pub fn set_policy(dir: &Path, id: &[u8; 16], pad: u8) -> Result<()> {
    let f = File::open(dir).with_context(|| format!("open {}", dir.display()))?;
    // struct fscrypt_policy_v2: version, modes, flags, 4 reserved bytes,
    // the key identifier.
    let mut policy = vec![2, MODE_AES_256_XTS, MODE_AES_256_CTS, pad, 0, 0, 0, 0];
    policy.extend_from_slice(id);
    ioctl(
        &f,
        FS_IOC_SET_ENCRYPTION_POLICY,
        &mut policy,
        "FS_IOC_SET_ENCRYPTION_POLICY",
    )
}
