//! The ioctls a file manager, `lsattr` and `chattr` send: inode flags
//! (FS_IOC_GETFLAGS/SETFLAGS) and the extended attributes structure
//! (FS_IOC_FSGETXATTR/FSSETXATTR); and fs-verity's. The kernel asks for
//! these through FUSE with the sizes the command encodes; anything else is
//! ENOTTY, as for a filesystem without the ioctl.
//!
//! fs-verity through FUSE (fs/fuse/ioctl.c): FS_IOC_MEASURE_VERITY comes
//! with a buffer of 4 bytes plus the caller's digest_size
//! (fuse_setup_measure_verity) and is answered. FS_IOC_READ_VERITY_METADATA
//! cannot be carried: its argument points to a user buffer, and a restricted
//! FUSE ioctl moves only the 40 bytes the command encodes, so it is
//! EOPNOTSUPP, as is FS_IOC_ENABLE_VERITY (enabling is not implemented).

use crate::ext4::{FsXattr, VerityDigest};

/// _IOR('f', 1, long) and _IOW('f', 2, long); the kernel's FUSE client
/// moves an int (4 bytes) with them.
const FS_IOC_GETFLAGS: u32 = 0x8008_6601;
const FS_IOC_SETFLAGS: u32 = 0x4008_6602;
/// The 32-bit compat numbers (_IOR('f', 1, int)), same meaning.
const FS_IOC32_GETFLAGS: u32 = 0x8004_6601;
const FS_IOC32_SETFLAGS: u32 = 0x4004_6602;
/// _IOR('X', 31, struct fsxattr) and _IOW('X', 32, struct fsxattr).
const FS_IOC_FSGETXATTR: u32 = 0x801C_581F;
const FS_IOC_FSSETXATTR: u32 = 0x401C_5820;
/// _IOWR('f', 134, struct fsverity_digest).
const FS_IOC_MEASURE_VERITY: u32 = 0xC004_6686;
/// _IOW('f', 133, struct fsverity_enable_arg).
const FS_IOC_ENABLE_VERITY: u32 = 0x4080_6685;
/// _IOWR('f', 135, struct fsverity_read_metadata_arg).
const FS_IOC_READ_VERITY_METADATA: u32 = 0xC028_6687;
/// sizeof(struct fsxattr): xflags, extsize, nextents, projid, cowextsize,
/// 8 bytes of padding.
const FSXATTR_SIZE: usize = 28;

/// A decoded request.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Ioctl {
    GetFlags,
    SetFlags(u32),
    GetFsXattr,
    SetFsXattr(FsXattr),
    /// The caller's room for the digest (struct fsverity_digest's
    /// digest_size).
    MeasureVerity(u16),
    /// Enabling verity, or reading its metadata: not available here.
    VerityUnsupported,
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    let bytes: [u8; 2] = b.get(at..at.checked_add(2)?)?.try_into().ok()?;
    Some(u16::from_ne_bytes(bytes))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    let bytes: [u8; 4] = b.get(at..at.checked_add(4)?)?.try_into().ok()?;
    Some(u32::from_ne_bytes(bytes))
}

/// Decodes `cmd` with its input; None: not one of ours (ENOTTY), or its
/// input is short (EINVAL is then the caller's answer too: see `decode`).
pub(super) fn decode(cmd: u32, input: &[u8]) -> Result<Ioctl, DecodeError> {
    match cmd {
        FS_IOC_GETFLAGS | FS_IOC32_GETFLAGS => Ok(Ioctl::GetFlags),
        FS_IOC_SETFLAGS | FS_IOC32_SETFLAGS => u32_at(input, 0)
            .map(Ioctl::SetFlags)
            .ok_or(DecodeError::Short),
        FS_IOC_FSGETXATTR => Ok(Ioctl::GetFsXattr),
        FS_IOC_FSSETXATTR => match (u32_at(input, 0), u32_at(input, 12)) {
            (Some(xflags), Some(projid)) => Ok(Ioctl::SetFsXattr(FsXattr { xflags, projid })),
            _ => Err(DecodeError::Short),
        },
        FS_IOC_MEASURE_VERITY => u16_at(input, 2)
            .map(Ioctl::MeasureVerity)
            .ok_or(DecodeError::Short),
        FS_IOC_ENABLE_VERITY | FS_IOC_READ_VERITY_METADATA => Ok(Ioctl::VerityUnsupported),
        _ => Err(DecodeError::Unknown),
    }
}

#[derive(Debug, PartialEq, Eq)]
pub(super) enum DecodeError {
    /// Not an ioctl this filesystem has (ENOTTY).
    Unknown,
    /// Its argument is shorter than the command says (EINVAL).
    Short,
}

/// The reply data of FS_IOC_GETFLAGS.
pub(super) fn flags_reply(flags: u32) -> [u8; 4] {
    flags.to_ne_bytes()
}

/// The reply data of FS_IOC_FSGETXATTR.
pub(super) fn fsxattr_reply(fa: FsXattr) -> [u8; FSXATTR_SIZE] {
    let mut out = [0u8; FSXATTR_SIZE];
    out[..4].copy_from_slice(&fa.xflags.to_ne_bytes());
    out[12..16].copy_from_slice(&fa.projid.to_ne_bytes());
    out
}

/// The reply data of FS_IOC_MEASURE_VERITY (struct fsverity_digest);
/// None when the caller's `room` is too small (EOVERFLOW, as
/// fsverity_ioctl_measure answers).
pub(super) fn measure_reply(d: &VerityDigest, room: u16) -> Option<Vec<u8>> {
    let size = u16::try_from(d.digest.len()).ok()?;
    if size > room {
        return None;
    }
    let mut out = Vec::with_capacity(d.digest.len().saturating_add(4));
    out.extend_from_slice(&d.algorithm.to_ne_bytes());
    out.extend_from_slice(&size.to_ne_bytes());
    out.extend_from_slice(&d.digest);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_the_flag_ioctls() {
        assert_eq!(decode(FS_IOC_GETFLAGS, &[]), Ok(Ioctl::GetFlags));
        assert_eq!(
            decode(FS_IOC_SETFLAGS, &0x10u32.to_ne_bytes()),
            Ok(Ioctl::SetFlags(0x10))
        );
        assert_eq!(decode(FS_IOC_SETFLAGS, &[1, 2]), Err(DecodeError::Short));
        let fa = FsXattr {
            xflags: 0x8,
            projid: 42,
        };
        assert_eq!(
            decode(FS_IOC_FSSETXATTR, &fsxattr_reply(fa)),
            Ok(Ioctl::SetFsXattr(fa))
        );
        assert_eq!(decode(0x5401, &[]), Err(DecodeError::Unknown));
    }

    #[test]
    fn verity_ioctls() {
        // struct fsverity_digest as `fsverity measure` sends it: room for 64.
        let mut arg = vec![0u8; 4 + 64];
        arg[2..4].copy_from_slice(&64u16.to_ne_bytes());
        assert_eq!(
            decode(FS_IOC_MEASURE_VERITY, &arg),
            Ok(Ioctl::MeasureVerity(64))
        );
        assert_eq!(
            decode(FS_IOC_MEASURE_VERITY, &[0, 0]),
            Err(DecodeError::Short)
        );
        assert_eq!(
            decode(FS_IOC_ENABLE_VERITY, &[]),
            Ok(Ioctl::VerityUnsupported)
        );
        assert_eq!(
            decode(FS_IOC_READ_VERITY_METADATA, &[]),
            Ok(Ioctl::VerityUnsupported)
        );
        let d = VerityDigest {
            algorithm: 1,
            digest: vec![7; 32],
        };
        let r = measure_reply(&d, 64).unwrap();
        assert_eq!(&r[..4], &[1, 0, 32, 0]);
        assert_eq!(&r[4..], &[7; 32]);
        assert_eq!(measure_reply(&d, 31), None);
    }
}
