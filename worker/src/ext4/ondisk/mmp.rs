//! Multi-mount protection block (`struct mmp_struct`).
//! Layout: Documentation/filesystems/ext4/mmp.rst.

use crate::ext4::checksum::crc32c;
use crate::ext4::error::{Error, Result};
use crate::ext4::util::{le16, le32, le64, put, put_le16, put_le32, put_le64, take, until_nul};

pub(crate) const EXT4_MMP_MAGIC: u32 = 0x004D_4D50;
/// The filesystem is not in use.
pub(crate) const EXT4_MMP_SEQ_CLEAN: u32 = 0xFF4D_4D50;
/// e2fsck is running.
pub(crate) const EXT4_MMP_SEQ_FSCK: u32 = 0xE24D_4D50;
/// Largest sequence number a live node writes.
pub(crate) const EXT4_MMP_SEQ_MAX: u32 = 0xE24D_4D4F;
/// Offset of `mmp_checksum`; the checksum covers the bytes before it.
const MMP_CHECKSUM_OFFSET: usize = 1020;
pub(crate) const MMP_SIZE: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Mmp {
    pub(crate) mmp_magic: u32,
    pub(crate) mmp_seq: u32,
    pub(crate) mmp_time: u64,
    pub(crate) mmp_nodename: [u8; 64],
    pub(crate) mmp_bdevname: [u8; 32],
    pub(crate) mmp_check_interval: u16,
    pub(crate) mmp_checksum: u32,
}

/// What the sequence number says about other users.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MmpState {
    Clean,
    Fsck,
    /// A node may be using the filesystem (or crashed while using it).
    InUse(u32),
}

impl Mmp {
    /// Parses the MMP block read from `block`; `csum_seed` is Some when
    /// metadata_csum is on.
    pub(crate) fn parse(b: &[u8], block: u64, csum_seed: Option<u32>) -> Result<Mmp> {
        let bad = |why: String| Error::corrupt(format!("MMP block: {why}"), block);
        if b.len() < MMP_SIZE {
            return Err(bad("short read".into()));
        }
        let m = Mmp {
            mmp_magic: le32(b, 0),
            mmp_seq: le32(b, 4),
            mmp_time: le64(b, 8),
            mmp_nodename: take(b, 16),
            mmp_bdevname: take(b, 80),
            mmp_check_interval: le16(b, 112),
            mmp_checksum: le32(b, MMP_CHECKSUM_OFFSET),
        };
        if m.mmp_magic != EXT4_MMP_MAGIC {
            return Err(bad(format!("bad magic {:#010x}", m.mmp_magic)));
        }
        if let Some(seed) = csum_seed {
            let calc = crc32c(seed, b.get(..MMP_CHECKSUM_OFFSET).unwrap_or(&[]));
            if calc != m.mmp_checksum {
                return Err(bad(format!(
                    "checksum mismatch (stored {:#010x}, computed {calc:#010x})",
                    m.mmp_checksum
                )));
            }
        }
        Ok(m)
    }

    /// Serializes into the first [`MMP_SIZE`] bytes of `b` (the rest of
    /// the block is left as it is), with the checksum when `csum_seed` is
    /// Some.
    pub(crate) fn write(&self, b: &mut [u8], csum_seed: Option<u32>) {
        put_le32(b, 0, self.mmp_magic);
        put_le32(b, 4, self.mmp_seq);
        put_le64(b, 8, self.mmp_time);
        put(b, 16, &self.mmp_nodename);
        put(b, 80, &self.mmp_bdevname);
        put_le16(b, 112, self.mmp_check_interval);
        let csum = match csum_seed {
            Some(seed) => crc32c(seed, b.get(..MMP_CHECKSUM_OFFSET).unwrap_or(&[])),
            None => self.mmp_checksum,
        };
        put_le32(b, MMP_CHECKSUM_OFFSET, csum);
    }

    pub(crate) fn state(&self) -> MmpState {
        match self.mmp_seq {
            EXT4_MMP_SEQ_CLEAN => MmpState::Clean,
            EXT4_MMP_SEQ_FSCK => MmpState::Fsck,
            s => MmpState::InUse(s),
        }
    }

    /// "node NAME, device DEV" for messages (non-UTF-8 shown lossily).
    pub(crate) fn holder(&self) -> String {
        format!(
            "node {:?}, device {:?}",
            String::from_utf8_lossy(until_nul(&self.mmp_nodename)),
            String::from_utf8_lossy(until_nul(&self.mmp_bdevname))
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(seq: u32) -> Vec<u8> {
        let mut b = vec![0u8; 1024];
        b[0..4].copy_from_slice(&EXT4_MMP_MAGIC.to_le_bytes());
        b[4..8].copy_from_slice(&seq.to_le_bytes());
        b[16..20].copy_from_slice(b"host");
        b[80..83].copy_from_slice(b"sda");
        b[112..114].copy_from_slice(&5u16.to_le_bytes());
        let c = crc32c(9, &b[..1020]);
        b[1020..].copy_from_slice(&c.to_le_bytes());
        b
    }

    #[test]
    fn parse_and_state() {
        let m = Mmp::parse(&sample(EXT4_MMP_SEQ_CLEAN), 3, Some(9)).unwrap();
        assert_eq!(m.state(), MmpState::Clean);
        assert_eq!(m.holder(), "node \"host\", device \"sda\"");
        assert_eq!(
            Mmp::parse(&sample(EXT4_MMP_SEQ_FSCK), 3, Some(9))
                .unwrap()
                .state(),
            MmpState::Fsck
        );
        assert_eq!(
            Mmp::parse(&sample(42), 3, None).unwrap().state(),
            MmpState::InUse(42)
        );
    }

    #[test]
    fn write_round_trips() {
        let mut m = Mmp::parse(&sample(7), 3, Some(9)).unwrap();
        m.mmp_seq = 8;
        m.mmp_nodename = [b'n'; 64];
        let mut b = sample(7);
        m.write(&mut b, Some(9));
        assert_eq!(Mmp::parse(&b, 3, Some(9)).unwrap().mmp_seq, 8);
        assert_eq!(Mmp::parse(&b, 3, Some(9)).unwrap().mmp_nodename, [b'n'; 64]);
    }

    #[test]
    fn rejects_bad_blocks() {
        let mut b = sample(1);
        b[200] ^= 1;
        assert!(
            Mmp::parse(&b, 3, Some(9))
                .unwrap_err()
                .to_string()
                .contains("checksum mismatch")
        );
        assert!(Mmp::parse(&b, 3, None).is_ok());
        b[0] ^= 1;
        assert!(
            Mmp::parse(&b, 3, None)
                .unwrap_err()
                .to_string()
                .contains("bad magic")
        );
        assert!(Mmp::parse(&b[..100], 3, None).is_err());
    }
}
