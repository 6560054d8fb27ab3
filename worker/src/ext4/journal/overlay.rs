//! The read-only replay: a [`BlockDevice`] that shows the device as it
//! would be after replay, without writing it. Every engine read (block
//! cache fills, direct data reads) goes through it; writes are refused.

use std::collections::BTreeMap;
use std::io;
use std::sync::Arc;

use super::replay::{Logged, Replay};
use crate::ext4::util::copy_overlap;
use crate::ext4::{Error, Result};
use crate::io::BlockDevice;

pub(crate) struct Overlay {
    inner: Arc<dyn BlockDevice>,
    bs: u64,
    blocks: BTreeMap<u64, Logged>,
}

impl Overlay {
    pub(crate) fn new(inner: Arc<dyn BlockDevice>, bs: u64, replay: &Replay) -> Overlay {
        Overlay {
            inner,
            bs,
            blocks: replay.blocks.clone(),
        }
    }

    /// Replaces `bytes.len()` bytes at `offset` in the overlay (not on the
    /// device): the blocks they touch become in-memory blocks.
    pub(crate) fn patch(&mut self, offset: u64, bytes: &[u8]) -> Result<()> {
        let end = offset
            .checked_add(bytes.len() as u64)
            .ok_or_else(|| Error::corrupt("overlay patch overflows", 0))?;
        let bs = self.bs;
        for block in offset.checked_div(bs).unwrap_or(0)..end.div_ceil(bs) {
            let mut data = vec![0u8; bs as usize];
            let start = block.saturating_mul(bs);
            self.read_at(&mut data, start).map_err(|source| Error::Io {
                offset: start,
                source,
            })?;
            copy_overlap(bytes, offset, &mut data, start);
            self.blocks.insert(block, Logged::Bytes(Arc::from(data)));
        }
        Ok(())
    }
}

impl BlockDevice for Overlay {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.inner.read_at(buf, offset)?;
        let end = offset
            .checked_add(buf.len() as u64)
            .ok_or_else(|| io::Error::other("offset overflow"))?;
        let bs = self.bs;
        let first = offset.checked_div(bs).unwrap_or(0);
        for (&block, src) in self.blocks.range(first..end.div_ceil(bs)) {
            let data = src
                .contents(&*self.inner, bs)
                .map_err(|e| io::Error::other(e.to_string()))?;
            copy_overlap(&data, block.saturating_mul(bs), buf, offset);
        }
        Ok(())
    }

    fn write_at(&self, _buf: &[u8], _offset: u64) -> io::Result<()> {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "read-only mount over a replayed journal: the device is never written",
        ))
    }

    fn flush(&self) -> io::Result<()> {
        Ok(())
    }

    fn size(&self) -> u64 {
        self.inner.size()
    }

    fn alignment(&self) -> usize {
        self.inner.alignment()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::io::MemDevice;

    #[test]
    fn overlays_journal_copies_and_patches() {
        let bs = 1024u64;
        let mut disk = vec![0u8; 8 * 1024];
        disk[5 * 1024..6 * 1024].fill(0x55); // the journal copy
        disk[5 * 1024..5 * 1024 + 4].fill(0); // escaped magic
        let dev: Arc<dyn BlockDevice> = Arc::new(MemDevice::new(disk.clone()));
        let mut blocks = BTreeMap::new();
        blocks.insert(
            2,
            Logged::Journal {
                pblk: 5,
                escaped: true,
            },
        );
        let replay = Replay {
            blocks,
            start_transaction: 1,
            end_transaction: 2,
            failed_commit: None,
            nr_replays: 1,
            nr_revokes: 0,
            nr_revoke_hits: 0,
            log_wrapped: false,
            pre_superblock: vec![],
        };
        let mut ov = Overlay::new(dev.clone(), bs, &replay);
        let mut buf = vec![0u8; 3000];
        ov.read_at(&mut buf, 1500).unwrap();
        // Block 2 starts at byte 2048 = buf[548].
        assert_eq!(&buf[548..552], &0xC03B_3998u32.to_be_bytes());
        assert!(buf[552..1572].iter().all(|&b| b == 0x55));
        assert!(buf[..548].iter().all(|&b| b == 0));
        assert!(buf[1572..].iter().all(|&b| b == 0));
        ov.patch(2040, &[9u8; 16]).unwrap();
        ov.read_at(&mut buf, 1500).unwrap();
        assert!(buf[540..556].iter().all(|&b| b == 9));
        assert!(buf[556..1572].iter().all(|&b| b == 0x55));
        assert!(ov.write_at(&[1], 0).is_err());
        assert_eq!(dev.size(), ov.size());
        // The device itself is untouched.
        let mut raw = vec![0u8; 8 * 1024];
        dev.read_at(&mut raw, 0).unwrap();
        assert_eq!(raw, disk);
    }
}
