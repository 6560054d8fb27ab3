//! The block part of a write: map, put the data on the device, mark the
//! blocks written.
//!
//! In an extent file the mapping takes new blocks as unwritten extents and
//! commits; the data then goes to the device holding only the file's
//! content lock and the free gate (shared), so reads, other files' writes
//! and metadata operations go on meanwhile; a second transaction marks the
//! blocks written and grows i_size. A crash in between leaves unwritten
//! blocks, which read as zeros: never stale data (ext4's dioread_nolock
//! does the same). Block-mapped files have no unwritten state: there the
//! data is written inside the mapping transaction, before it commits.

use std::ops::Range;

use super::extent::{self as ew, Run, RunKind};
use crate::ext4::ondisk::inode::{EXT4_EXTENTS_FL, Inode};
use crate::ext4::txn::Txn;
use crate::ext4::{Error, Ext4, Result};

/// A mapped piece of a write: file bytes [at, end) and the runs mapping
/// their blocks.
pub(super) struct MappedPiece {
    at: u64,
    end: u64,
    runs: Vec<Run>,
}

impl Ext4 {
    /// Maps the blocks `data` (to be written at `offset`) needs, allocating
    /// them (as unwritten extents with `unwritten`); skips what
    /// `pieces_to_write` leaves out. Returns the pieces and how many bytes
    /// of `data` they cover from its start, skipped blocks included (short
    /// when the filesystem filled up; NoSpace if nothing could be mapped).
    pub(super) fn map_pieces(
        &self,
        txn: &mut Txn<'_>,
        inode: &mut Inode,
        offset: u64,
        data: &[u8],
        unwritten: bool,
        reserved_ok: bool,
    ) -> Result<(Vec<MappedPiece>, usize)> {
        let mut mapped = Vec::new();
        for range in self.pieces_to_write(txn, inode, offset, data)? {
            let at = offset.saturating_add(range.start as u64);
            let piece = match self.map_piece(txn, inode, at, range.len(), unwritten, reserved_ok) {
                Ok(p) => p,
                // Full after an earlier piece: a short write.
                Err(Error::NoSpace) if range.start > 0 => return Ok((mapped, range.start)),
                Err(e) => return Err(e),
            };
            let short = piece.end < at.saturating_add(range.len() as u64);
            let covered = usize::try_from(piece.end.saturating_sub(offset)).unwrap_or(usize::MAX);
            mapped.push(piece);
            if short {
                return Ok((mapped, covered));
            }
        }
        Ok((mapped, data.len()))
    }

    /// Maps file bytes [at, at + len), allocating holes.
    #[expect(
        clippy::arithmetic_side_effects,
        reason = "at + len <= max_file_size < 2^63 (write_as), len > 0, bs > 0"
    )]
    fn map_piece(
        &self,
        txn: &mut Txn<'_>,
        inode: &mut Inode,
        at: u64,
        len: usize,
        unwritten: bool,
        reserved_ok: bool,
    ) -> Result<MappedPiece> {
        let bs = u64::from(self.block_size());
        let end = at + len as u64;
        let first = at / bs;
        let count = (end - 1) / bs - first + 1;
        let (runs, _short) =
            self.map_alloc_runs(txn, inode, first, count, unwritten, reserved_ok)?;
        let mapped: u64 = runs.iter().map(|r| u64::from(r.len)).sum();
        if mapped == 0 {
            return Err(Error::NoSpace);
        }
        Ok(MappedPiece {
            at,
            end: end.min((first + mapped) * bs),
            runs,
        })
    }

    /// Puts the pieces' bytes of `data` (written at `offset`) on the device.
    pub(super) fn write_pieces(
        &self,
        pieces: &[MappedPiece],
        offset: u64,
        data: &[u8],
    ) -> Result<()> {
        for p in pieces {
            let bytes = data_range(offset, p.at, p.end);
            let piece = bytes
                .and_then(|r| data.get(r))
                .ok_or(Error::Invalid("write range"))?;
            for r in &p.runs {
                self.write_run(r, p.at, p.end, piece)?;
            }
        }
        Ok(())
    }

    /// Marks the blocks the pieces wrote that were unwritten (new, or
    /// preallocated) as written.
    #[expect(
        clippy::arithmetic_side_effects,
        reason = "runs map blocks inside the request (< 2^32 + 2^32), bs > 0"
    )]
    pub(super) fn mark_written(
        &self,
        txn: &mut Txn<'_>,
        inode: &mut Inode,
        pieces: &[MappedPiece],
    ) -> Result<()> {
        if !inode.has_flag(EXT4_EXTENTS_FL) {
            return Ok(());
        }
        let bs = u64::from(self.block_size());
        self.edit_extent_tree(txn, inode, true, |store, ctx, root| {
            for p in pieces {
                for r in p.runs.iter().filter(|r| r.kind != RunKind::Written) {
                    let s = r.lblk;
                    let e = (r.lblk + u64::from(r.len)).min(p.end.div_ceil(bs));
                    ew::set_state(store, ctx, root, s, e, false)?;
                }
            }
            Ok(())
        })
    }

    /// Writes the part of file bytes [offset, end) (data = bytes from
    /// offset) that falls in run `r`: whole blocks as they are, partial
    /// ones read-modify-written (written blocks) or zero-filled (new and
    /// unwritten ones).
    #[expect(
        clippy::arithmetic_side_effects,
        reason = "offset <= pos < re <= end <= max_file_size < 2^63, bs > 0, and run r maps blocks inside the request (from the mapping, which checked them)"
    )]
    fn write_run(&self, r: &Run, offset: u64, end: u64, data: &[u8]) -> Result<()> {
        let bs = u64::from(self.block_size());
        let rs = (r.lblk * bs).max(offset);
        let re = ((r.lblk + u64::from(r.len)) * bs).min(end);
        let mut pos = rs;
        while pos < re {
            let pblk = r.pblk + (pos / bs - r.lblk);
            let inb = pos % bs;
            let src = |a: u64, b: u64| data.get((a - offset) as usize..(b - offset) as usize);
            if inb != 0 || re - pos < bs {
                let n = (bs - inb).min(re - pos);
                let mut buf = vec![0u8; bs as usize];
                if r.kind == RunKind::Written {
                    self.read_blocks_direct(pblk, 0, &mut buf)?;
                }
                let dst = buf
                    .get_mut(inb as usize..(inb + n) as usize)
                    .ok_or(Error::Invalid("write range"))?;
                dst.copy_from_slice(src(pos, pos + n).ok_or(Error::Invalid("write range"))?);
                self.write_data(pblk, 0, &buf)?;
                pos += n;
            } else {
                let nfull = (re - pos) / bs;
                let bytes = src(pos, pos + nfull * bs).ok_or(Error::Invalid("write range"))?;
                self.write_data(pblk, 0, bytes)?;
                pos += nfull * bs;
            }
        }
        Ok(())
    }
}

/// The indices into a write's data (written at `offset`) of file bytes
/// [at, end).
fn data_range(offset: u64, at: u64, end: u64) -> Option<Range<usize>> {
    let start = usize::try_from(at.checked_sub(offset)?).ok()?;
    let stop = usize::try_from(end.checked_sub(offset)?).ok()?;
    (start <= stop).then_some(start..stop)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::arithmetic_side_effects)]

    use std::sync::mpsc;
    use std::thread;
    use std::time::Duration;

    use crate::ext4::testutil::{assert_fsck_clean, have_mkfs, pausing_fs_with_a};
    use crate::ext4::types::ROOT_INO;

    const LEN: usize = 256 * 1024;

    /// While a write's data is stopped inside the device, the rest of the
    /// filesystem goes on: another thread creates a file, writes it,
    /// makes a directory and reads the first file, which still shows its
    /// old size (its new blocks are mapped unwritten). Once the data
    /// lands, the write completes; e2fsck is clean. With the data written
    /// under the transaction lock the other thread would wait: the test
    /// then fails on its timeout (a liveness check, not a speed one).
    #[test]
    fn data_reaches_the_device_with_no_filesystem_lock_held() {
        if !have_mkfs() {
            return;
        }
        let (_sc, img, dev, fs, a) = pausing_fs_with_a("write-nolock");

        // The first device write from now on is a's data (metadata waits
        // for write-back).
        dev.arm_write(0..u64::MAX);
        let writer = {
            let fs = fs.clone();
            thread::spawn(move || fs.write(a, 0, &[0xAA; LEN]).unwrap())
        };
        dev.wait_paused();
        let (tx, rx) = mpsc::channel();
        let other = {
            let fs = fs.clone();
            thread::spawn(move || {
                let b = fs.create(ROOT_INO, b"b", 0o100644, 0, 0, 0, 0).unwrap().ino;
                fs.write(b, 0, &[0xBB; LEN]).unwrap();
                fs.mkdir(ROOT_INO, b"c", 0o755, 0, 0, 0).unwrap();
                let mut buf = vec![0u8; LEN];
                let seen = fs.read(a, 0, &mut buf).unwrap();
                tx.send((fs.getattr(a).unwrap().size, seen)).unwrap();
            })
        };
        let got = rx.recv_timeout(Duration::from_secs(30));
        dev.release();
        assert_eq!(
            got.expect("the other thread waited for the paused data write"),
            (0, 0),
            "a showed its new size before its data landed"
        );
        assert_eq!(writer.join().unwrap(), LEN);
        other.join().unwrap();
        let mut buf = vec![0u8; LEN];
        assert_eq!(fs.read(a, 0, &mut buf).unwrap(), LEN);
        assert!(buf.iter().all(|&x| x == 0xAA));
        fs.shutdown().unwrap();
        std::fs::write(&img, dev.contents()).unwrap();
        assert_fsck_clean(&img, "a write whose data landed while others worked");
    }
}
