//! What FUSE's page cache adds to a write, and how the engine keeps ext4's
//! allocation despite it.
//!
//! With the writeback cache the kernel writes back whole pages (up to
//! i_size), not the bytes write(2) was given: a small write arrives with
//! the rest of its page, which the kernel read from the file first, so
//! every byte that is not the caller's reads as it did before. Where that
//! rest is zeros read from a hole, ext4 (which saw only the small write)
//! allocated nothing; writing those zeros would allocate. Two places can
//! tell: an inline file (its region grows only as far as the write) and,
//! below page-sized blocks, whole blocks of the page that lie in holes.
//! Dropping zeros that read as zeros already changes no byte of the file.

use std::ops::Range;

use crate::ext4::ondisk::inode::{EXT4_INLINE_DATA_FL, Inode};
use crate::ext4::txn::Txn;
use crate::ext4::{Ext4, Result};

/// The kernel's page size, the unit FUSE writes back.
pub(crate) const PAGE_SIZE: u64 = 4096;

impl Ext4 {
    /// `data`, to be written at `offset` into a file that is or may become
    /// inline, without the zeros the kernel's page cache padded it with.
    /// After a truncate up, a small write at the start of the file arrives
    /// as a page of which all but those bytes are the file's own content,
    /// zeros past what the inline region holds. ext4 saw only the small
    /// write, kept the file inline if it fit
    /// (ext4_da_write_inline_data_begin) and grew the region only as far
    /// as the write. So a trailing run of zeros that lies past the region's
    /// stored bytes and within i_size is dropped. (Zeros written there on
    /// purpose are the one case this keeps inline where ext4 converts.)
    pub(crate) fn without_page_padding<'d>(
        &self,
        inode: &Inode,
        offset: u64,
        data: &'d [u8],
    ) -> Result<&'d [u8]> {
        let end = offset.saturating_add(data.len() as u64);
        if end > inode.size {
            return Ok(data);
        }
        let stored = if inode.has_flag(EXT4_INLINE_DATA_FL) {
            self.inline_region(inode)?.len() as u64
        } else {
            0
        };
        let nonzero = data
            .iter()
            .rposition(|&b| b != 0)
            .map_or(0, |i| i.saturating_add(1));
        let keep_end = offset.saturating_add(nonzero as u64).max(stored);
        if keep_end >= end {
            return Ok(data);
        }
        let keep = usize::try_from(keep_end.saturating_sub(offset)).unwrap_or(usize::MAX);
        Ok(data.get(..keep).unwrap_or(data))
    }

    /// The byte ranges of `data` (to be written at `offset` into a
    /// block-mapped file) that need writing: all of it, except below
    /// page-sized blocks every block of it that is all zeros and reads as
    /// zeros already (a hole or an unwritten extent). A 1 KiB write into a
    /// hole arrives as a 4 KiB page, and ext4 allocates one block, not
    /// four. The one case this differs from ext4: zeros written on purpose
    /// into a hole on such a filesystem stay a hole (reading the same
    /// bytes).
    pub(super) fn pieces_to_write(
        &self,
        txn: &mut Txn<'_>,
        inode: &mut Inode,
        offset: u64,
        data: &[u8],
    ) -> Result<Vec<Range<usize>>> {
        let bs = u64::from(self.block_size());
        if bs >= PAGE_SIZE {
            return Ok(std::iter::once(0..data.len()).collect());
        }
        // The write in block-sized pieces (the first and last may be
        // partial); `run` is where the pieces to write began.
        let mut pieces = Vec::new();
        let mut run: Option<usize> = None;
        let mut at = 0usize;
        while at < data.len() {
            let pos = offset.saturating_add(at as u64);
            let in_block = pos.checked_rem(bs).unwrap_or(0);
            let piece_len = usize::try_from(bs.saturating_sub(in_block)).unwrap_or(usize::MAX);
            let next = at.saturating_add(piece_len).min(data.len());
            let piece = data.get(at..next).unwrap_or_default();
            let skip = piece.iter().all(|&b| b == 0)
                && self
                    .lookup_written(txn, inode, pos.checked_div(bs).unwrap_or(0))?
                    .is_none();
            match (skip, run) {
                (true, Some(start)) => {
                    pieces.push(start..at);
                    run = None;
                }
                (false, None) => run = Some(at),
                _ => {}
            }
            at = next;
        }
        if let Some(start) = run {
            pieces.push(start..data.len());
        }
        Ok(pieces)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::arithmetic_side_effects)]

    use crate::ext4::file::write::FallocMode;
    use crate::ext4::testutil::{RwImage, assert_fsck_clean, have_mkfs, ino_of, pattern};
    use crate::ext4::{Ext4, Ino};

    fn read_all(fs: &Ext4, ino: Ino) -> Vec<u8> {
        let mut buf = vec![0u8; fs.getattr(ino).unwrap().size as usize];
        let n = fs.read(ino, 0, &mut buf).unwrap();
        assert_eq!(n, buf.len());
        buf
    }

    /// Below page-sized blocks, pages written back whole allocate only
    /// the blocks whose bytes are not zeros read from holes: a page
    /// holding 1 KiB of data takes one block; zeros over written blocks
    /// are written; zeros over an unwritten extent leave it unwritten;
    /// every byte reads as written; e2fsck is clean.
    #[test]
    fn page_padding_allocates_no_hole_blocks() {
        if !have_mkfs() {
            return;
        }
        let im = RwImage::new("padding", &["-b", "1024", "-O", "^inline_data"]);
        let fs = im.open();
        let ino = ino_of(&im.img, "d/b");
        let blocks = |fs: &Ext4| fs.getattr(ino).unwrap().blocks;
        let mut model = vec![0u8; 64 * 1024];
        model[0] = b'b';
        // The file grows to 64 KiB as a hole past its first block.
        fs.write(ino, 64 * 1024 - 1, &[0]).unwrap();
        let base = blocks(&fs);
        // A page at 8 KiB: 1 KiB of data in its second block, zeros
        // around it read from the hole.
        let mut page = vec![0u8; 4096];
        page[1024..2048].copy_from_slice(&pattern(1024, 7));
        assert_eq!(fs.write(ino, 8192, &page).unwrap(), 4096);
        model[8192..8192 + 4096].copy_from_slice(&page);
        assert_eq!(blocks(&fs), base + 2, "one 1 KiB block for the page");
        // The same page rewritten with its data zeroed: the written block
        // is zeroed on disk, stays allocated (as on ext4).
        assert_eq!(fs.write(ino, 8192, &[0u8; 4096]).unwrap(), 4096);
        model[8192 + 1024..8192 + 2048].fill(0);
        assert_eq!(blocks(&fs), base + 2);
        assert_eq!(read_all(&fs, ino), model);
        // Data in the first and last blocks of a page, with the page's
        // middle blocks holes: two blocks, in two pieces of one write.
        let mut page = vec![0u8; 4096];
        page[..10].copy_from_slice(b"first-blk!");
        page[4090..].copy_from_slice(b"last!!");
        fs.write(ino, 16384, &page).unwrap();
        model[16384..16384 + 4096].copy_from_slice(&page);
        assert_eq!(blocks(&fs), base + 2 + 4);
        // Zeros over an unwritten extent: it stays unwritten, takes no
        // more blocks, reads zeros; data beside it is written.
        fs.fallocate(
            ino,
            32768,
            4096,
            FallocMode {
                keep_size: true,
                ..Default::default()
            },
        )
        .unwrap();
        let after_falloc = blocks(&fs);
        // 4 blocks, and a leaf block: the fifth extent leaves the inode.
        assert_eq!(after_falloc, base + 2 + 4 + 8 + 2);
        let mut page = vec![0u8; 4096];
        page[3072..].copy_from_slice(&pattern(1024, 9));
        fs.write(ino, 32768, &page).unwrap();
        model[32768..32768 + 4096].copy_from_slice(&page);
        assert_eq!(blocks(&fs), after_falloc);
        // A write past i_size that ends in zeros still grows the file.
        fs.write(ino, 70 * 1024, &[0u8; 2048]).unwrap();
        model.resize(72 * 1024, 0);
        assert_eq!(fs.getattr(ino).unwrap().size, 72 * 1024);
        assert_eq!(blocks(&fs), after_falloc);
        assert_eq!(read_all(&fs, ino), model);
        fs.shutdown().unwrap();
        drop(fs);
        assert_fsck_clean(im.save(), "page writes into holes");
    }
}
