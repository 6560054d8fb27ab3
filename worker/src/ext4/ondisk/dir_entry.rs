//! Linear directory entries: `ext4_dir_entry_2` (with the filetype feature)
//! and the old `ext4_dir_entry` (whose 16-bit name length the kernel reads
//! as 8 bits plus an ignored byte; the type then comes from the inode),
//! plus the metadata_csum dirent tail. See
//! Documentation/filesystems/ext4/directory.rst ("Linear (Classic)
//! Directories").
//!
//! Validation follows the kernel's `__ext4_check_dir_entry`: the record
//! length is at least 12, a multiple of 4, holds the name, stays inside the
//! buffer, and the inode number is at most `s_inodes_count`. A record
//! length is never zero after validation, so iteration always advances.

use std::fmt;
use std::num::NonZeroUsize;

use crate::ext4::checksum::crc32c;
use crate::ext4::ondisk::{bytes_from, bytes_from_mut};
use crate::ext4::types::FileKind;
use crate::ext4::util::{le16, le32, put, put_le16, put_le32};

/// Offsets inside an entry (directory.rst, "Linear (Classic) Directories").
const DE_INODE: usize = 0;
const DE_REC_LEN: usize = 4;
const DE_NAME_LEN: usize = 6;
const DE_FILE_TYPE: usize = 7;
/// Bytes before the name.
pub(crate) const DE_HEADER_LEN: usize = 8;
/// The smallest record: header plus a 1-byte name, rounded to 4.
pub(crate) const DE_MIN_REC_LEN: usize = 12;
pub(crate) const EXT4_NAME_LEN: usize = 255;

/// `ext4_dir_entry_tail`: a fake entry ending each leaf block when
/// metadata_csum is on.
pub(crate) const DIRENT_TAIL_LEN: usize = 12;
const DET_REC_LEN: usize = 4;
const DET_RESERVED_ZERO2: usize = 6;
const DET_RESERVED_FT: usize = 7;
const DET_CHECKSUM: usize = 8;
pub(crate) const EXT4_FT_DIR_CSUM: u8 = 0xDE;

/// `file_type` values.
#[expect(dead_code, reason = "on-disk format value the engine does not act on")]
pub(crate) const EXT4_FT_UNKNOWN: u8 = 0;
pub(crate) const EXT4_FT_REG_FILE: u8 = 1;
pub(crate) const EXT4_FT_DIR: u8 = 2;
pub(crate) const EXT4_FT_CHRDEV: u8 = 3;
pub(crate) const EXT4_FT_BLKDEV: u8 = 4;
pub(crate) const EXT4_FT_FIFO: u8 = 5;
pub(crate) const EXT4_FT_SOCK: u8 = 6;
pub(crate) const EXT4_FT_SYMLINK: u8 = 7;

/// `ext4_dir_rec_len`: header + name rounded up to 4 bytes.
pub(crate) fn dir_rec_len(name_len: usize) -> usize {
    DE_HEADER_LEN.saturating_add(name_len).saturating_add(3) & !3
}

/// `ext4_rec_len_from_disk`: with 64 KiB blocks a record of the whole block
/// does not fit 16 bits, so 0 and 65535 mean "the block" and the low two
/// bits carry bits 16-17. Smaller blocks store the length as is.
pub(crate) fn rec_len_from_disk(raw: u16, block_size: u32) -> usize {
    if block_size < 65536 {
        return usize::from(raw);
    }
    if raw == u16::MAX || raw == 0 {
        return block_size as usize;
    }
    let raw = usize::from(raw);
    (raw & 65532) | ((raw & 3) << 16)
}

/// Maps a dirent `file_type` to a kind; `None` for unknown (0) or invalid.
pub(crate) fn kind_from_file_type(ft: u8) -> Option<FileKind> {
    Some(match ft {
        EXT4_FT_REG_FILE => FileKind::RegularFile,
        EXT4_FT_DIR => FileKind::Directory,
        EXT4_FT_CHRDEV => FileKind::CharDevice,
        EXT4_FT_BLKDEV => FileKind::BlockDevice,
        EXT4_FT_FIFO => FileKind::Fifo,
        EXT4_FT_SOCK => FileKind::Socket,
        EXT4_FT_SYMLINK => FileKind::Symlink,
        _ => return None,
    })
}

/// Why an entry was rejected (the kernel's messages, shortened).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DirentProblem {
    /// Fewer than 8 header bytes left in the buffer.
    Truncated,
    RecLenTooSmall(usize),
    RecLenNotAligned(usize),
    RecLenTooSmallForName {
        rec_len: usize,
        name_len: usize,
    },
    Overrun {
        rec_len: usize,
    },
    InodeOutOfBounds(u32),
}

impl fmt::Display for DirentProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DirentProblem::Truncated => write!(f, "entry header truncated"),
            DirentProblem::RecLenTooSmall(r) => write!(f, "rec_len {r} is smaller than minimal"),
            DirentProblem::RecLenNotAligned(r) => write!(f, "rec_len {r} is not a multiple of 4"),
            DirentProblem::RecLenTooSmallForName { rec_len, name_len } => {
                write!(f, "rec_len {rec_len} is too small for name_len {name_len}")
            }
            DirentProblem::Overrun { rec_len } => {
                write!(f, "entry with rec_len {rec_len} overruns")
            }
            DirentProblem::InodeOutOfBounds(i) => write!(f, "inode {i} out of bounds"),
        }
    }
}

/// One validated entry, borrowing its name from the block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RawDirEntry<'a> {
    /// Offset of the entry inside the buffer it was parsed from.
    pub offset: usize,
    /// 0 for an unused (deleted) record.
    pub inode: u32,
    pub rec_len: NonZeroUsize,
    pub name: &'a [u8],
    /// The `file_type` byte; `None` without the filetype feature (the old
    /// format, whose name length is 16 bits).
    pub file_type: Option<u8>,
}

/// What the parser needs to know about the filesystem.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DirentFormat {
    pub filetype: bool,
    pub block_size: u32,
    pub inodes_count: u32,
}

impl<'a> RawDirEntry<'a> {
    /// Parses and checks the entry at `offset` in `buf` (a directory block,
    /// or an inline-data region, `buf.len()` being its size).
    pub(crate) fn parse(
        buf: &'a [u8],
        offset: usize,
        fmt: &DirentFormat,
    ) -> Result<Self, DirentProblem> {
        let header_end = offset
            .checked_add(DE_HEADER_LEN)
            .ok_or(DirentProblem::Truncated)?;
        if header_end > buf.len() {
            return Err(DirentProblem::Truncated);
        }
        let ent = bytes_from(buf, offset);
        let inode = le32(ent, DE_INODE);
        let rec_len = rec_len_from_disk(le16(ent, DE_REC_LEN), fmt.block_size);
        // The kernel reads every entry as ext4_dir_entry_2: an 8-bit
        // name_len, and the next byte is the file type with the filetype
        // feature and ignored without it (there it is the high byte of the
        // old 16-bit name_len, always 0 for a valid name, and 0xDE in a
        // checksum tail).
        let name_len = usize::from(ent.get(DE_NAME_LEN).copied().unwrap_or(0));
        let file_type = fmt
            .filetype
            .then(|| ent.get(DE_FILE_TYPE).copied().unwrap_or(0));
        if rec_len < DE_MIN_REC_LEN {
            return Err(DirentProblem::RecLenTooSmall(rec_len));
        }
        if rec_len & 3 != 0 {
            return Err(DirentProblem::RecLenNotAligned(rec_len));
        }
        if rec_len < dir_rec_len(name_len) {
            return Err(DirentProblem::RecLenTooSmallForName { rec_len, name_len });
        }
        // The header fits (checked above), so `ent` is the rest of `buf`.
        if rec_len > ent.len() {
            return Err(DirentProblem::Overrun { rec_len });
        }
        if inode > fmt.inodes_count {
            return Err(DirentProblem::InodeOutOfBounds(inode));
        }
        let name = ent
            .get(DE_HEADER_LEN..)
            .and_then(|n| n.get(..name_len))
            .ok_or(DirentProblem::Overrun { rec_len })?;
        let rec_len = NonZeroUsize::new(rec_len).ok_or(DirentProblem::RecLenTooSmall(0))?;
        Ok(RawDirEntry {
            offset,
            inode,
            rec_len,
            name,
            file_type,
        })
    }

    /// Offset just past this record.
    pub(crate) fn end(&self) -> usize {
        self.offset.saturating_add(self.rec_len.get())
    }

    /// A live entry: inode set and a non-empty name.
    pub(crate) fn is_live(&self) -> bool {
        self.inode != 0 && !self.name.is_empty()
    }
}

/// Iterates over the records of one buffer, starting at `start`. Stops after
/// the first error. Each step advances by a non-zero record length, so the
/// number of steps is at most `buf.len() / 12`.
pub(crate) struct DirentIter<'a> {
    buf: &'a [u8],
    pos: usize,
    fmt: DirentFormat,
    failed: bool,
}

impl<'a> DirentIter<'a> {
    pub(crate) fn new(buf: &'a [u8], start: usize, fmt: DirentFormat) -> Self {
        DirentIter {
            buf,
            pos: start,
            fmt,
            failed: false,
        }
    }
}

impl<'a> Iterator for DirentIter<'a> {
    type Item = Result<RawDirEntry<'a>, (usize, DirentProblem)>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.pos >= self.buf.len() {
            return None;
        }
        match RawDirEntry::parse(self.buf, self.pos, &self.fmt) {
            Ok(e) => {
                self.pos = e.end();
                Some(Ok(e))
            }
            Err(p) => {
                self.failed = true;
                Some(Err((self.pos, p)))
            }
        }
    }
}

/// Why a leaf block's checksum tail was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TailProblem {
    /// The block does not end with a well-formed tail ("No space for
    /// directory leaf checksum", e2fsck -D fixes it).
    Missing,
    BadChecksum {
        stored: u32,
        computed: u32,
    },
}

impl fmt::Display for TailProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TailProblem::Missing => write!(f, "no directory leaf checksum tail"),
            TailProblem::BadChecksum { stored, computed } => write!(
                f,
                "directory block checksum {stored:#010x} != computed {computed:#010x}"
            ),
        }
    }
}

/// Is there a well-formed `ext4_dir_entry_tail` at the end of `block`?
pub(crate) fn has_dirent_tail(block: &[u8], block_size: u32) -> bool {
    let Some(t) = block.len().checked_sub(DIRENT_TAIL_LEN) else {
        return false;
    };
    let tail = bytes_from(block, t);
    le32(tail, 0) == 0
        && rec_len_from_disk(le16(tail, DET_REC_LEN), block_size) == DIRENT_TAIL_LEN
        && tail.get(DET_RESERVED_ZERO2) == Some(&0)
        && tail.get(DET_RESERVED_FT) == Some(&EXT4_FT_DIR_CSUM)
}

/// Checks a leaf block's tail checksum: crc32c, seeded with the directory
/// inode's seed, over the block up to the tail.
pub(crate) fn verify_dirent_tail(
    block: &[u8],
    block_size: u32,
    inode_seed: u32,
) -> Result<(), TailProblem> {
    let Some(t) = block
        .len()
        .checked_sub(DIRENT_TAIL_LEN)
        .filter(|_| has_dirent_tail(block, block_size))
    else {
        return Err(TailProblem::Missing);
    };
    let stored = le32(bytes_from(block, t), DET_CHECKSUM);
    let computed = crc32c(inode_seed, block.get(..t).unwrap_or(&[]));
    if stored != computed {
        return Err(TailProblem::BadChecksum { stored, computed });
    }
    Ok(())
}

/// `ext4_rec_len_to_disk`: the inverse of [`rec_len_from_disk`]. With 64 KiB
/// blocks a record spanning the whole block is stored as 65535 and bits
/// 16-17 go into the low two bits.
pub(crate) fn rec_len_to_disk(len: usize, block_size: u32) -> u16 {
    if block_size < 65536 {
        return u16::try_from(len).unwrap_or(u16::MAX);
    }
    if len == block_size as usize {
        return u16::MAX;
    }
    ((len & 65532) | ((len >> 16) & 3)) as u16
}

/// The dirent `file_type` for a kind.
pub(crate) fn file_type_of(kind: FileKind) -> u8 {
    match kind {
        FileKind::RegularFile => EXT4_FT_REG_FILE,
        FileKind::Directory => EXT4_FT_DIR,
        FileKind::CharDevice => EXT4_FT_CHRDEV,
        FileKind::BlockDevice => EXT4_FT_BLKDEV,
        FileKind::Fifo => EXT4_FT_FIFO,
        FileKind::Socket => EXT4_FT_SOCK,
        FileKind::Symlink => EXT4_FT_SYMLINK,
    }
}

/// One entry to serialize.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct NewDirEntry<'a> {
    pub inode: u32,
    pub rec_len: usize,
    pub name: &'a [u8],
    /// Written only with the filetype feature (`fmt.filetype`); without it
    /// the byte is the high half of the old 16-bit name length, 0.
    pub file_type: u8,
}

/// Serializes `e` at `off` in `buf` (the `ext4_dir_entry_2` layout). The
/// name bytes after the header are written, the slack after the name is
/// left as it is. Returns false (writing nothing) when the record does
/// not fit `buf`, is not 4-aligned or is too short for the name.
pub(crate) fn write_entry(
    buf: &mut [u8],
    off: usize,
    e: &NewDirEntry<'_>,
    fmt: &DirentFormat,
) -> bool {
    let Ok(name_len) = u8::try_from(e.name.len()) else {
        return false;
    };
    if e.rec_len < dir_rec_len(e.name.len()) || e.rec_len & 3 != 0 {
        return false;
    }
    let Some(rec) = off
        .checked_add(e.rec_len)
        .and_then(|end| buf.get_mut(off..end))
    else {
        return false;
    };
    // rec_len >= dir_rec_len(name), so the header and name fit in `rec`.
    put_le32(rec, DE_INODE, e.inode);
    put_le16(rec, DE_REC_LEN, rec_len_to_disk(e.rec_len, fmt.block_size));
    put(rec, DE_NAME_LEN, &[name_len]);
    put(
        rec,
        DE_FILE_TYPE,
        &[if fmt.filetype { e.file_type } else { 0 }],
    );
    put(rec, DE_HEADER_LEN, e.name);
    true
}

/// Rewrites only the record length of the entry at `off`.
pub(crate) fn set_rec_len(buf: &mut [u8], off: usize, rec_len: usize, block_size: u32) {
    if let Some(ent) = buf.get_mut(off..) {
        put_le16(ent, DE_REC_LEN, rec_len_to_disk(rec_len, block_size));
    }
}

/// Rewrites only the inode number of the entry at `off`.
pub(crate) fn set_entry_inode(buf: &mut [u8], off: usize, inode: u32) {
    if let Some(ent) = buf.get_mut(off..) {
        put_le32(ent, DE_INODE, inode);
    }
}

/// Rewrites only the file type byte of the entry at `off` (filetype
/// feature only).
pub(crate) fn set_entry_file_type(buf: &mut [u8], off: usize, ft: u8, fmt: &DirentFormat) {
    if fmt.filetype
        && let Some(ent) = buf.get_mut(off..)
    {
        put(ent, DE_FILE_TYPE, &[ft]);
    }
}

/// Writes an empty `ext4_dir_entry_tail` at the end of `block`
/// (`ext4_initialize_dirent_tail`); the checksum is set by
/// [`set_dirent_csum`].
pub(crate) fn init_dirent_tail(block: &mut [u8], block_size: u32) {
    let Some(t) = block.len().checked_sub(DIRENT_TAIL_LEN) else {
        return;
    };
    if let Some(tail) = block.get_mut(t..) {
        tail.fill(0);
        put_le16(
            tail,
            DET_REC_LEN,
            rec_len_to_disk(DIRENT_TAIL_LEN, block_size),
        );
        put(tail, DET_RESERVED_FT, &[EXT4_FT_DIR_CSUM]);
    }
}

/// Computes and stores the leaf block checksum (the block must end with a
/// tail, see [`init_dirent_tail`]).
pub(crate) fn set_dirent_csum(block: &mut [u8], inode_seed: u32) {
    let Some(t) = block.len().checked_sub(DIRENT_TAIL_LEN) else {
        return;
    };
    let c = crc32c(inode_seed, block.get(..t).unwrap_or(&[]));
    put_le32(bytes_from_mut(block, t), DET_CHECKSUM, c);
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects)]
pub(crate) mod tests {
    use super::*;

    const FMT: DirentFormat = DirentFormat {
        filetype: true,
        block_size: 1024,
        inodes_count: 1000,
    };

    /// Appends an entry; `rec_len` 0 means "minimal".
    pub(crate) fn put(buf: &mut Vec<u8>, ino: u32, name: &[u8], ft: u8, rec_len: usize) {
        let rl = if rec_len == 0 {
            dir_rec_len(name.len())
        } else {
            rec_len
        };
        let start = buf.len();
        buf.extend_from_slice(&ino.to_le_bytes());
        buf.extend_from_slice(&(rl as u16).to_le_bytes());
        buf.push(name.len() as u8);
        buf.push(ft);
        buf.extend_from_slice(name);
        buf.resize(start + rl, 0);
    }

    fn block() -> Vec<u8> {
        let mut b = Vec::new();
        put(&mut b, 2, b".", EXT4_FT_DIR, 0);
        put(&mut b, 2, b"..", EXT4_FT_DIR, 0);
        put(&mut b, 11, b"lost+found", EXT4_FT_DIR, 0);
        let rest = 1024 - b.len() - DIRENT_TAIL_LEN;
        put(&mut b, 12, b"file", EXT4_FT_REG_FILE, rest);
        b.extend_from_slice(&0u32.to_le_bytes());
        b.extend_from_slice(&12u16.to_le_bytes());
        b.push(0);
        b.push(EXT4_FT_DIR_CSUM);
        let c = crc32c(0x1234, &b[..1024 - 12]);
        b.extend_from_slice(&c.to_le_bytes());
        b
    }

    fn names(b: &[u8], fmt: DirentFormat) -> Result<Vec<Vec<u8>>, (usize, DirentProblem)> {
        DirentIter::new(b, 0, fmt)
            .filter(|e| e.as_ref().map(|e| e.is_live()).unwrap_or(true))
            .map(|e| e.map(|e| e.name.to_vec()))
            .collect()
    }

    #[test]
    fn parses_good_block() {
        let b = block();
        let n = names(&b, FMT).unwrap();
        assert_eq!(
            n,
            vec![
                b".".to_vec(),
                b"..".to_vec(),
                b"lost+found".to_vec(),
                b"file".to_vec()
            ]
        );
        assert_eq!(verify_dirent_tail(&b, 1024, 0x1234), Ok(()));
        let e = RawDirEntry::parse(&b, 24, &FMT).unwrap();
        assert_eq!(e.inode, 11);
        assert_eq!(e.file_type, Some(EXT4_FT_DIR));
        assert_eq!(e.rec_len.get(), 20);
    }

    #[test]
    fn flipped_bytes_give_exact_errors() {
        // rec_len of "." (offset 4) set to 8.
        let mut b = block();
        b[4] = 8;
        assert_eq!(names(&b, FMT), Err((0, DirentProblem::RecLenTooSmall(8))));
        // rec_len 0 must not spin.
        b[4] = 0;
        assert_eq!(names(&b, FMT), Err((0, DirentProblem::RecLenTooSmall(0))));
        b[4] = 14;
        assert_eq!(
            names(&b, FMT),
            Err((0, DirentProblem::RecLenNotAligned(14)))
        );
        // name_len of lost+found (offset 24 + 6) set to 20 > rec_len 20 - 8.
        let mut b = block();
        b[30] = 20;
        assert_eq!(
            names(&b, FMT),
            Err((
                24,
                DirentProblem::RecLenTooSmallForName {
                    rec_len: 20,
                    name_len: 20
                }
            ))
        );
        // rec_len of "file" (offset 44) past the block end.
        let mut b = block();
        b[44 + 4..44 + 6].copy_from_slice(&2000u16.to_le_bytes());
        assert_eq!(
            names(&b, FMT),
            Err((44, DirentProblem::Overrun { rec_len: 2000 }))
        );
        // inode number beyond s_inodes_count.
        let mut b = block();
        b[44..48].copy_from_slice(&1001u32.to_le_bytes());
        assert_eq!(
            names(&b, FMT),
            Err((44, DirentProblem::InodeOutOfBounds(1001)))
        );
        // a flipped name byte breaks the checksum.
        let mut b = block();
        b[32] ^= 1;
        assert!(matches!(
            verify_dirent_tail(&b, 1024, 0x1234),
            Err(TailProblem::BadChecksum { .. })
        ));
        // and a flipped tail marker removes the tail.
        let mut b = block();
        b[1024 - 5] = 0;
        assert_eq!(
            verify_dirent_tail(&b, 1024, 0x1234),
            Err(TailProblem::Missing)
        );
        // a header cut short.
        assert_eq!(
            RawDirEntry::parse(&block()[..1020], 1016, &FMT),
            Err(DirentProblem::Truncated)
        );
    }

    #[test]
    fn old_format_ignores_the_type_byte() {
        let mut b = Vec::new();
        put(&mut b, 5, b"abc", 0, 16);
        let fmt = DirentFormat {
            filetype: false,
            ..FMT
        };
        let e = RawDirEntry::parse(&b, 0, &fmt).unwrap();
        assert_eq!(e.name, b"abc");
        assert_eq!(e.file_type, None);
        // The high byte of the old 16-bit name_len is ignored, as in the
        // kernel (a checksum tail has 0xDE there).
        b[7] = 0xDE;
        assert_eq!(RawDirEntry::parse(&b, 0, &fmt).unwrap().name, b"abc");
        // With the filetype feature it is the type.
        assert_eq!(
            RawDirEntry::parse(&b, 0, &FMT).unwrap().file_type,
            Some(0xDE)
        );
    }

    #[test]
    fn rec_len_64k() {
        assert_eq!(rec_len_from_disk(0, 65536), 65536);
        assert_eq!(rec_len_from_disk(u16::MAX, 65536), 65536);
        assert_eq!(rec_len_from_disk(12, 65536), 12);
        assert_eq!(rec_len_from_disk(0xfffc | 1, 65536), 0xfffc | 0x10000);
        assert_eq!(rec_len_from_disk(0, 4096), 0);
        assert_eq!(rec_len_from_disk(4096, 4096), 4096);
    }

    #[test]
    fn every_truncation_and_flip_is_handled() {
        // No input makes the parser panic or loop: flip each byte in turn.
        let good = block();
        for i in 0..good.len() {
            for bit in [0x01u8, 0x80] {
                let mut b = good.clone();
                b[i] ^= bit;
                let steps = DirentIter::new(&b, 0, FMT).count();
                assert!(steps <= 1024 / DE_MIN_REC_LEN);
            }
        }
    }

    #[test]
    fn write_round_trips() {
        for (filetype, bs) in [(true, 1024u32), (false, 4096), (true, 65536)] {
            let fmt = DirentFormat {
                filetype,
                block_size: bs,
                inodes_count: 1000,
            };
            let mut b = vec![0xAAu8; bs as usize];
            let e1 = NewDirEntry {
                inode: 7,
                rec_len: 20,
                name: b"hello",
                file_type: EXT4_FT_SYMLINK,
            };
            let rest = bs as usize - 20 - DIRENT_TAIL_LEN;
            let e2 = NewDirEntry {
                inode: 9,
                rec_len: rest,
                name: b"x",
                file_type: EXT4_FT_DIR,
            };
            assert!(write_entry(&mut b, 0, &e1, &fmt));
            assert!(write_entry(&mut b, 20, &e2, &fmt));
            init_dirent_tail(&mut b, bs);
            set_dirent_csum(&mut b, 0x55);
            assert_eq!(verify_dirent_tail(&b, bs, 0x55), Ok(()));
            let got: Vec<_> = DirentIter::new(&b[..bs as usize - DIRENT_TAIL_LEN], 0, fmt)
                .map(|e| e.unwrap())
                .map(|e| NewDirEntry {
                    inode: e.inode,
                    rec_len: e.rec_len.get(),
                    name: e.name,
                    file_type: e.file_type.unwrap_or(0),
                })
                .collect();
            let want = |e: NewDirEntry<'static>| NewDirEntry {
                file_type: if filetype { e.file_type } else { 0 },
                ..e
            };
            assert_eq!(got, vec![want(e1), want(e2)]);
            // Whole-block record in a 64 KiB block.
            let whole = NewDirEntry {
                inode: 0,
                rec_len: bs as usize,
                name: b"",
                file_type: 0,
            };
            assert!(write_entry(&mut b, 0, &whole, &fmt));
            assert_eq!(
                RawDirEntry::parse(&b, 0, &fmt).unwrap().rec_len.get(),
                bs as usize
            );
            // Refusals: misaligned, too short, past the end.
            assert!(!write_entry(
                &mut b,
                0,
                &NewDirEntry { rec_len: 14, ..e1 },
                &fmt
            ));
            assert!(!write_entry(
                &mut b,
                0,
                &NewDirEntry { rec_len: 12, ..e1 },
                &fmt
            ));
            assert!(!write_entry(&mut b, bs as usize - 8, &e1, &fmt));
        }
        for len in [12usize, 4096, 65532, 65536] {
            assert_eq!(rec_len_from_disk(rec_len_to_disk(len, 65536), 65536), len);
        }
    }
}
