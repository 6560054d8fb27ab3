//! The ioctls a file manager, `lsattr` and `chattr` send: inode flags
//! (FS_IOC_GETFLAGS/SETFLAGS) and the extended attributes structure
//! (FS_IOC_FSGETXATTR/FSSETXATTR). The kernel asks for these through FUSE
//! with the sizes the command encodes; anything else is ENOTTY, as for a
//! filesystem without the ioctl.

use crate::ext4::FsXattr;

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
}
