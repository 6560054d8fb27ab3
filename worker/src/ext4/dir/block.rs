//! Directory editing: inserting and removing entries in a directory block
//! (or inline-data region), initializing new blocks, and the linear
//! directory's add path (the kernel's ext4_add_entry without the index;
//! the index lives in `dir::htree`).
//!
//! Buffer functions work on `buf[start..end]`, where `end` excludes a
//! leaf's checksum tail. They follow the kernel: a new entry goes into the
//! first record with room, either a deleted record (inode 0) or the slack
//! after a live entry's name (ext4_find_dest_de / ext4_insert_dentry); a
//! removed entry is merged into the previous record, or, first in its
//! block, keeps its record with inode 0 (ext4_generic_delete_entry), and
//! its bytes are wiped. Directories never shrink: an emptied block stays,
//! as in the kernel.

use crate::ext4::dir::hash::{dx_hash, effective_version};
use crate::ext4::dir::htree::DxKey;
use crate::ext4::error::{Error, Result};
use crate::ext4::ondisk::dir_entry::{
    DIRENT_TAIL_LEN, DirentFormat, DirentIter, DirentProblem, NewDirEntry, dir_rec_len,
    init_dirent_tail, set_dirent_csum, set_entry_file_type, set_entry_inode, set_rec_len,
    write_entry,
};
use crate::ext4::types::Ino;

/// Why a buffer edit failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EditError {
    /// The name is already there.
    Exists,
    /// A bad record at this offset.
    Corrupt(usize, DirentProblem),
}

/// A live entry found in a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Found {
    pub offset: usize,
    pub inode: Ino,
    pub file_type: u8,
}

fn region(buf: &[u8], end: usize) -> &[u8] {
    buf.get(..end.min(buf.len())).unwrap_or(&[])
}

/// Finds the live entry `name` in `buf[start..end]`.
pub(crate) fn find_in_buf(
    buf: &[u8],
    start: usize,
    end: usize,
    fmt: &DirentFormat,
    name: &[u8],
) -> Result<Option<Found>, EditError> {
    for e in DirentIter::new(region(buf, end), start, *fmt) {
        let e = e.map_err(|(o, p)| EditError::Corrupt(o, p))?;
        if e.is_live() && e.name == name {
            return Ok(Some(Found {
                offset: e.offset,
                inode: e.inode,
                file_type: e.file_type.unwrap_or(0),
            }));
        }
    }
    Ok(None)
}

/// Inserts `name` -> `ino` into the first record of `buf[start..end]`
/// with room. `Ok(None)`: no room. `Err(Exists)` if the name is met on the
/// way (the kernel's ext4_find_dest_de checks each entry it passes).
pub(crate) fn insert_in_buf(
    buf: &mut [u8],
    start: usize,
    end: usize,
    fmt: &DirentFormat,
    name: &[u8],
    ino: Ino,
    file_type: u8,
) -> Result<Option<usize>, EditError> {
    let need = dir_rec_len(name.len());
    let mut slot = None;
    for e in DirentIter::new(region(buf, end), start, *fmt) {
        let e = e.map_err(|(o, p)| EditError::Corrupt(o, p))?;
        if e.is_live() && e.name == name {
            return Err(EditError::Exists);
        }
        let used = if e.inode != 0 {
            dir_rec_len(e.name.len())
        } else {
            0
        };
        let rlen = e.rec_len.get();
        if rlen >= used.saturating_add(need) {
            slot = Some((e.offset, used, rlen));
            break;
        }
    }
    let Some((off, used, rlen)) = slot else {
        return Ok(None);
    };
    let at = if used > 0 {
        set_rec_len(buf, off, used, fmt.block_size);
        off.saturating_add(used)
    } else {
        off
    };
    let e = NewDirEntry {
        inode: ino,
        rec_len: rlen.saturating_sub(used),
        name,
        file_type,
    };
    if !write_entry(buf, at, &e, fmt) {
        return Err(EditError::Corrupt(at, DirentProblem::Truncated));
    }
    Ok(Some(at))
}

/// Removes the live entry `name` from `buf[start..end]`, returning what it
/// named. `Ok(None)`: not there.
pub(crate) fn remove_in_buf(
    buf: &mut [u8],
    start: usize,
    end: usize,
    fmt: &DirentFormat,
    name: &[u8],
) -> Result<Option<Found>, EditError> {
    let mut prev: Option<(usize, usize)> = None;
    let mut hit = None;
    for e in DirentIter::new(region(buf, end), start, *fmt) {
        let e = e.map_err(|(o, p)| EditError::Corrupt(o, p))?;
        if e.is_live() && e.name == name {
            hit = Some((
                Found {
                    offset: e.offset,
                    inode: e.inode,
                    file_type: e.file_type.unwrap_or(0),
                },
                e.rec_len.get(),
            ));
            break;
        }
        prev = Some((e.offset, e.rec_len.get()));
    }
    let Some((found, rlen)) = hit else {
        return Ok(None);
    };
    let off = found.offset;
    match prev {
        Some((poff, prlen)) => {
            set_rec_len(buf, poff, prlen.saturating_add(rlen), fmt.block_size);
            if let Some(b) = buf.get_mut(off..off.saturating_add(rlen)) {
                b.fill(0);
            }
        }
        None => {
            set_entry_inode(buf, off, 0);
            // Wipe everything after the record length.
            if let Some(b) = buf.get_mut(off.saturating_add(6)..off.saturating_add(rlen)) {
                b.fill(0);
            }
        }
    }
    Ok(Some(found))
}

/// Points the existing entry at `offset` to `ino` (ext4_setent).
pub(crate) fn set_in_buf(
    buf: &mut [u8],
    offset: usize,
    ino: Ino,
    file_type: u8,
    fmt: &DirentFormat,
) {
    set_entry_inode(buf, offset, ino);
    set_entry_file_type(buf, offset, file_type, fmt);
}

/// Whether `buf[start..end]` holds live entries other than "." and "..".
pub(crate) fn has_entries(
    buf: &[u8],
    start: usize,
    end: usize,
    fmt: &DirentFormat,
) -> Result<bool, EditError> {
    for e in DirentIter::new(region(buf, end), start, *fmt) {
        let e = e.map_err(|(o, p)| EditError::Corrupt(o, p))?;
        if e.is_live() && e.name != b"." && e.name != b".." {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The live entries of `buf[start..end]` as (name, inode, file_type).
pub(crate) fn live_entries(
    buf: &[u8],
    start: usize,
    end: usize,
    fmt: &DirentFormat,
) -> Result<Vec<(Vec<u8>, Ino, u8)>, EditError> {
    let mut out = Vec::new();
    for e in DirentIter::new(region(buf, end), start, *fmt) {
        let e = e.map_err(|(o, p)| EditError::Corrupt(o, p))?;
        if e.is_live() {
            out.push((e.name.to_vec(), e.inode, e.file_type.unwrap_or(0)));
        }
    }
    Ok(out)
}

/// Writes `entries` packed from `start`, the last one's record reaching
/// `end`; with no entries one empty record spans the region. Bytes after
/// each name are zeroed.
pub(crate) fn pack_entries(
    buf: &mut [u8],
    start: usize,
    end: usize,
    fmt: &DirentFormat,
    entries: &[(Vec<u8>, Ino, u8)],
) -> bool {
    let Some(r) = buf.get_mut(start..end) else {
        return false;
    };
    r.fill(0);
    if entries.is_empty() {
        let e = NewDirEntry {
            inode: 0,
            rec_len: end.saturating_sub(start),
            name: b"",
            file_type: 0,
        };
        return write_entry(buf, start, &e, fmt);
    }
    let mut pos = start;
    for (i, (name, ino, ft)) in entries.iter().enumerate() {
        let rec_len = if i.saturating_add(1) == entries.len() {
            end.saturating_sub(pos)
        } else {
            dir_rec_len(name.len())
        };
        let e = NewDirEntry {
            inode: *ino,
            rec_len,
            name,
            file_type: *ft,
        };
        if !write_entry(buf, pos, &e, fmt) {
            return false;
        }
        pos = pos.saturating_add(rec_len);
    }
    true
}

/// Static facts about one directory needed to edit its blocks.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DirCtx {
    pub fmt: DirentFormat,
    /// The directory inode's checksum seed with metadata_csum.
    pub csum_seed: Option<u32>,
    pub dir_index: bool,
    /// 2, or 3 with large_dir.
    pub max_levels: u8,
    pub def_hash_version: u8,
    pub s_flags: u32,
    pub hash_seed: [u32; 4],
}

impl DirCtx {
    pub(crate) fn bs(&self) -> usize {
        self.fmt.block_size as usize
    }

    /// End of the entry region of a leaf block (before the tail).
    pub(crate) fn leaf_end(&self) -> usize {
        if self.csum_seed.is_some() {
            self.bs().saturating_sub(DIRENT_TAIL_LEN)
        } else {
            self.bs()
        }
    }

    /// Sets a leaf block's tail and checksum (metadata_csum only).
    pub(crate) fn seal_leaf(&self, block: &mut [u8]) {
        if let Some(seed) = self.csum_seed {
            init_dirent_tail(block, self.fmt.block_size);
            set_dirent_csum(block, seed);
        }
    }

    /// The name hash for an htree root of `root_version`.
    pub(crate) fn hash(&self, root_version: u8, name: &[u8]) -> Option<u32> {
        let v = effective_version(root_version, self.s_flags)?;
        dx_hash(name, v, &self.hash_seed).map(|h| h.major)
    }
}

/// A directory's blocks, read and written by logical number. The engine
/// implements it over a transaction; tests over memory.
pub(crate) trait DirBlocks {
    /// Number of logical blocks (i_size / block size).
    fn nblocks(&self) -> u64;
    /// Current contents of logical block `lblk`.
    fn read(&mut self, lblk: u64) -> Result<Vec<u8>>;
    /// Stores logical block `lblk` (checksums already set).
    fn write(&mut self, lblk: u64, data: &[u8]) -> Result<()>;
    /// Allocates a new block at the end (i_size grows by a block) and
    /// returns its logical number; its contents are written by the caller.
    fn append(&mut self) -> Result<u64>;
    /// Whether the directory is (now) indexed.
    fn is_indexed(&self) -> bool;
    fn set_indexed(&mut self, on: bool);
    /// Number of the directory inode, for error messages.
    fn ino(&self) -> Ino;
    /// Physical block of logical block `lblk`, for error messages (0 when
    /// unknown).
    fn block_of(&mut self, lblk: u64) -> u64 {
        let _ = lblk;
        0
    }
}

/// An edit's failure in logical block `lblk` (physical block `at`).
pub(crate) fn edit_corrupt(ino: Ino, lblk: u64, at: u64, e: EditError) -> Error {
    match e {
        EditError::Exists => Error::Exists,
        EditError::Corrupt(off, p) => Error::corrupt(
            format!("directory {ino}: logical block {lblk}: offset {off}: {p}"),
            at,
        ),
    }
}

/// A new directory's first block: "." and ".." (ext4_init_dot_dotdot).
pub(crate) fn init_dir_block(ctx: &DirCtx, dir: Ino, parent: Ino) -> Vec<u8> {
    let mut b = vec![0u8; ctx.bs()];
    let end = ctx.leaf_end();
    let dt = crate::ext4::ondisk::dir_entry::EXT4_FT_DIR;
    pack_entries(
        &mut b,
        0,
        end,
        &ctx.fmt,
        &[(b".".to_vec(), dir, dt), (b"..".to_vec(), parent, dt)],
    );
    ctx.seal_leaf(&mut b);
    b
}

/// An empty leaf: one unused record over the whole entry region.
pub(crate) fn empty_leaf(ctx: &DirCtx) -> Vec<u8> {
    let mut b = vec![0u8; ctx.bs()];
    pack_entries(&mut b, 0, ctx.leaf_end(), &ctx.fmt, &[]);
    ctx.seal_leaf(&mut b);
    b
}

/// Adds `name` to a block directory (ext4_add_entry): through the index
/// when there is one, else into the first block with room; a one-block
/// directory that is full becomes indexed when dir_index is on
/// (make_indexed_dir), otherwise a block is appended.
pub(crate) fn add_entry(
    d: &mut dyn DirBlocks,
    ctx: &DirCtx,
    name: &[u8],
    ino: Ino,
    file_type: u8,
) -> Result<()> {
    if d.is_indexed() {
        return crate::ext4::dir::htree::dx_add_entry(d, ctx, name, ino, file_type);
    }
    let n = d.nblocks();
    for lblk in 0..n {
        let mut b = d.read(lblk)?;
        match insert_in_buf(&mut b, 0, ctx.leaf_end(), &ctx.fmt, name, ino, file_type) {
            Ok(Some(_)) => {
                ctx.seal_leaf(&mut b);
                return d.write(lblk, &b);
            }
            Ok(None) => {}
            Err(e) => return Err(edit_corrupt(d.ino(), lblk, d.block_of(lblk), e)),
        }
        if n == 1 && ctx.dir_index && ctx.hash(ctx.def_hash_version, name).is_some() {
            crate::ext4::dir::htree::make_indexed(d, ctx, &b)?;
            return crate::ext4::dir::htree::dx_add_entry(d, ctx, name, ino, file_type);
        }
    }
    let lblk = d.append()?;
    let mut b = empty_leaf(ctx);
    match insert_in_buf(&mut b, 0, ctx.leaf_end(), &ctx.fmt, name, ino, file_type) {
        Ok(Some(_)) => {
            ctx.seal_leaf(&mut b);
            d.write(lblk, &b)
        }
        Ok(None) => Err(Error::NoSpace),
        Err(e) => Err(edit_corrupt(d.ino(), lblk, d.block_of(lblk), e)),
    }
}

/// Whether logical block `lblk` with contents `b` is an htree index block
/// (no entries of its own).
fn is_index_block(d: &dyn DirBlocks, lblk: u64, b: &[u8]) -> bool {
    d.is_indexed() && (lblk == 0 || crate::ext4::ondisk::htree::is_index_node(b))
}

/// The logical blocks that may hold the name `key` leads to: the
/// hash-chosen leaves of an indexed directory, else every block, lazily
/// (the block count comes from the inode's size, which a hostile disk sets
/// to anything).
fn candidate_blocks(
    d: &mut dyn DirBlocks,
    ctx: &DirCtx,
    key: DxKey<'_>,
) -> Result<Box<dyn Iterator<Item = u64>>> {
    let dots = matches!(key, DxKey::Name(b"." | b".."));
    if d.is_indexed()
        && !dots
        && let Some(v) = crate::ext4::dir::htree::dx_leaves_for(d, ctx, key)?
    {
        return Ok(Box::new(v.into_iter()));
    }
    Ok(Box::new(0..d.nblocks()))
}

/// Where `name` is: (logical block, entry). Index blocks are skipped,
/// except block 0's "." and "..".
pub(crate) fn find_entry(
    d: &mut dyn DirBlocks,
    ctx: &DirCtx,
    name: &[u8],
) -> Result<Option<(u64, Found)>> {
    for lblk in candidate_blocks(d, ctx, DxKey::Name(name))? {
        let b = d.read(lblk)?;
        if is_index_block(d, lblk, &b) {
            // Only the root holds entries: "." at 0 and ".." at 12 (whose
            // record spans the index).
            let at = match name {
                b"." if lblk == 0 => 0,
                b".." if lblk == 0 => 12,
                _ => continue,
            };
            return Ok(Some((
                0,
                Found {
                    offset: at,
                    inode: crate::ext4::util::le32(&b, at),
                    file_type: b.get(at.saturating_add(7)).copied().unwrap_or(0),
                },
            )));
        }
        if let Some(f) = find_in_buf(&b, 0, ctx.leaf_end(), &ctx.fmt, name)
            .map_err(|e| edit_corrupt(d.ino(), lblk, d.block_of(lblk), e))?
        {
            return Ok(Some((lblk, f)));
        }
    }
    Ok(None)
}

/// The name of the first live entry `wanted` accepts, among the blocks
/// `hash` leads to in an indexed directory (every block otherwise): how a
/// long no-key name, which holds only part of its ciphertext, finds it.
pub(crate) fn find_name_by(
    d: &mut dyn DirBlocks,
    ctx: &DirCtx,
    hash: u32,
    wanted: &dyn Fn(&[u8]) -> bool,
) -> Result<Option<Vec<u8>>> {
    for lblk in candidate_blocks(d, ctx, DxKey::Hash(hash))? {
        let b = d.read(lblk)?;
        if is_index_block(d, lblk, &b) {
            continue;
        }
        let entries = live_entries(&b, 0, ctx.leaf_end(), &ctx.fmt)
            .map_err(|e| edit_corrupt(d.ino(), lblk, d.block_of(lblk), e))?;
        if let Some((name, _, _)) = entries.into_iter().find(|(n, _, _)| wanted(n)) {
            return Ok(Some(name));
        }
    }
    Ok(None)
}

/// Removes `name`; returns what it named.
pub(crate) fn remove_entry(d: &mut dyn DirBlocks, ctx: &DirCtx, name: &[u8]) -> Result<Found> {
    let (lblk, _) = find_entry(d, ctx, name)?.ok_or(Error::NotFound)?;
    let mut b = d.read(lblk)?;
    let f = remove_in_buf(&mut b, 0, ctx.leaf_end(), &ctx.fmt, name)
        .map_err(|e| edit_corrupt(d.ino(), lblk, d.block_of(lblk), e))?
        .ok_or(Error::NotFound)?;
    ctx.seal_leaf(&mut b);
    d.write(lblk, &b)?;
    Ok(f)
}

/// Repoints the existing entry `name` to `ino` (rename over a target, or
/// ".." of a moved directory).
pub(crate) fn set_entry(
    d: &mut dyn DirBlocks,
    ctx: &DirCtx,
    name: &[u8],
    ino: Ino,
    file_type: u8,
) -> Result<()> {
    let (lblk, f) = find_entry(d, ctx, name)?.ok_or(Error::NotFound)?;
    let mut b = d.read(lblk)?;
    set_in_buf(&mut b, f.offset, ino, file_type, &ctx.fmt);
    if lblk == 0 && d.is_indexed() {
        if let Some(seed) = ctx.csum_seed {
            crate::ext4::ondisk::htree::set_dx_csum(&mut b, seed);
        }
    } else {
        ctx.seal_leaf(&mut b);
    }
    d.write(lblk, &b)
}

/// Whether the directory holds anything besides "." and ".." (ext4's
/// empty_dir).
pub(crate) fn dir_has_entries(d: &mut dyn DirBlocks, ctx: &DirCtx) -> Result<bool> {
    for lblk in 0..d.nblocks() {
        let b = d.read(lblk)?;
        if is_index_block(d, lblk, &b) {
            continue;
        }
        if has_entries(&b, 0, ctx.leaf_end(), &ctx.fmt)
            .map_err(|e| edit_corrupt(d.ino(), lblk, d.block_of(lblk), e))?
        {
            return Ok(true);
        }
    }
    Ok(false)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::ext4::ondisk::dir_entry::{EXT4_FT_REG_FILE, verify_dirent_tail};

    pub(crate) fn fmt(bs: u32) -> DirentFormat {
        DirentFormat {
            filetype: true,
            block_size: bs,
            inodes_count: 1 << 20,
        }
    }

    /// A directory in memory.
    pub(crate) struct MemDir {
        pub blocks: Vec<Vec<u8>>,
        pub indexed: bool,
        pub bs: usize,
    }

    impl DirBlocks for MemDir {
        fn nblocks(&self) -> u64 {
            self.blocks.len() as u64
        }
        fn read(&mut self, lblk: u64) -> Result<Vec<u8>> {
            Ok(self.blocks[lblk as usize].clone())
        }
        fn write(&mut self, lblk: u64, data: &[u8]) -> Result<()> {
            self.blocks[lblk as usize] = data.to_vec();
            Ok(())
        }
        fn append(&mut self) -> Result<u64> {
            self.blocks.push(vec![0; self.bs]);
            Ok(self.blocks.len() as u64 - 1)
        }
        fn is_indexed(&self) -> bool {
            self.indexed
        }
        fn set_indexed(&mut self, on: bool) {
            self.indexed = on;
        }
        fn ino(&self) -> Ino {
            12
        }
    }

    pub(crate) fn ctx(bs: u32, csum: bool, dir_index: bool, large: bool) -> DirCtx {
        DirCtx {
            fmt: fmt(bs),
            csum_seed: csum.then_some(0x1234),
            dir_index,
            max_levels: if large { 3 } else { 2 },
            def_hash_version: 1,
            s_flags: 1,
            hash_seed: [1, 2, 3, 4],
        }
    }

    pub(crate) fn new_dir(c: &DirCtx) -> MemDir {
        MemDir {
            blocks: vec![init_dir_block(c, 12, 2)],
            indexed: false,
            bs: c.bs(),
        }
    }

    #[test]
    fn insert_remove_in_block() {
        let c = ctx(1024, true, false, false);
        let mut b = init_dir_block(&c, 12, 2);
        assert_eq!(verify_dirent_tail(&b, 1024, 0x1234), Ok(()));
        let end = c.leaf_end();
        let at = insert_in_buf(&mut b, 0, end, &c.fmt, b"a", 20, 1).unwrap();
        assert_eq!(at, Some(24));
        assert_eq!(
            insert_in_buf(&mut b, 0, end, &c.fmt, b"a", 21, 1),
            Err(EditError::Exists)
        );
        insert_in_buf(&mut b, 0, end, &c.fmt, b"bb", 21, 1).unwrap();
        insert_in_buf(&mut b, 0, end, &c.fmt, b"ccc", 22, 1).unwrap();
        let names = |b: &[u8]| -> Vec<Vec<u8>> {
            live_entries(b, 0, end, &c.fmt)
                .unwrap()
                .into_iter()
                .map(|x| x.0)
                .collect()
        };
        assert_eq!(names(&b).len(), 5);
        // Remove a middle one: merged into "a".
        let f = remove_in_buf(&mut b, 0, end, &c.fmt, b"bb")
            .unwrap()
            .unwrap();
        assert_eq!(f.inode, 21);
        assert_eq!(
            names(&b),
            vec![
                b".".to_vec(),
                b"..".to_vec(),
                b"a".to_vec(),
                b"ccc".to_vec()
            ]
        );
        // The freed slack is reused.
        assert_eq!(
            insert_in_buf(&mut b, 0, end, &c.fmt, b"dd", 23, 1).unwrap(),
            Some(36)
        );
        assert_eq!(remove_in_buf(&mut b, 0, end, &c.fmt, b"zz").unwrap(), None);
        // First entry of a region: inode 0, record kept.
        let mut e = empty_leaf(&c);
        insert_in_buf(&mut e, 0, end, &c.fmt, b"x", 5, 1).unwrap();
        insert_in_buf(&mut e, 0, end, &c.fmt, b"y", 6, 1).unwrap();
        remove_in_buf(&mut e, 0, end, &c.fmt, b"x")
            .unwrap()
            .unwrap();
        assert_eq!(crate::ext4::util::le32(&e, 0), 0);
        assert_eq!(crate::ext4::util::le16(&e, 4), 12);
        assert_eq!(names(&e), vec![b"y".to_vec()]);
        assert!(has_entries(&e, 0, end, &c.fmt).unwrap());
        assert!(!has_entries(&init_dir_block(&c, 12, 2), 0, end, &c.fmt).unwrap());
        // Fill a block: it ends up full, no overrun.
        let mut f = empty_leaf(&c);
        let mut n = 0;
        while insert_in_buf(&mut f, 0, end, &c.fmt, format!("n{n:05}").as_bytes(), 9, 1)
            .unwrap()
            .is_some()
        {
            n += 1;
        }
        assert_eq!(n, (end) / 16);
        c.seal_leaf(&mut f);
        assert_eq!(verify_dirent_tail(&f, 1024, 0x1234), Ok(()));
    }

    #[test]
    fn linear_directory_grows_by_blocks() {
        let c = ctx(1024, true, false, false);
        let mut d = new_dir(&c);
        for i in 0..500 {
            add_entry(
                &mut d,
                &c,
                format!("file-{i}").as_bytes(),
                100 + i,
                EXT4_FT_REG_FILE,
            )
            .unwrap();
        }
        assert!(!d.indexed);
        assert!(d.blocks.len() >= 8, "{}", d.blocks.len());
        assert!(matches!(
            add_entry(&mut d, &c, b"file-7", 1, 1),
            Err(Error::Exists)
        ));
        for i in (0..500).step_by(3) {
            let f = remove_entry(&mut d, &c, format!("file-{i}").as_bytes()).unwrap();
            assert_eq!(f.inode, 100 + i);
        }
        for i in 0..500 {
            let got = find_entry(&mut d, &c, format!("file-{i}").as_bytes()).unwrap();
            assert_eq!(got.is_some(), i % 3 != 0, "{i}");
        }
        for b in &d.blocks {
            assert_eq!(verify_dirent_tail(b, 1024, 0x1234), Ok(()));
        }
        assert!(dir_has_entries(&mut d, &c).unwrap());
    }

    /// Oracle (e2fsck, the kernel): a linear directory (no dir_index)
    /// grown through the engine to many blocks, thinned out and refilled
    /// (entries reuse freed space, records merge and split) is what
    /// e2fsck -fn finds clean and what the kernel lists and looks up.
    #[test]
    fn engine_linear_dir_checked_by_e2fsck_and_kernel() {
        use crate::ext4::ROOT_INO;
        use crate::ext4::testutil::have_mkfs;
        use crate::ext4::testutil::{RwImage, assert_fsck_clean};
        if !have_mkfs() {
            return;
        }
        let im = RwImage::new("linear-oracle", &["-b", "1024", "-O", "^dir_index"]);
        let fs = im.open();
        let d = fs.mkdir(ROOT_INO, b"lin", 0o755, 0, 0, 0).unwrap().ino;
        let name = |i: usize| format!("entry-{i:04}{}", "x".repeat(i % 37));
        let mut live = std::collections::BTreeSet::new();
        for i in 0..600 {
            fs.create(d, name(i).as_bytes(), 0o100644, 0, 0, 0, 0)
                .unwrap();
            live.insert(name(i));
        }
        for i in (0..600).filter(|i| i % 4 != 1) {
            if let Some(ino) = fs.unlink(d, name(i).as_bytes()).unwrap() {
                fs.release_inode(ino).unwrap();
            }
            live.remove(&name(i));
        }
        for i in 600..900 {
            fs.create(d, name(i).as_bytes(), 0o100644, 0, 0, 0, 0)
                .unwrap();
            live.insert(name(i));
        }
        fs.shutdown().unwrap();
        drop(fs);
        let img = im.save();
        assert_fsck_clean(img, "linear directory edits through the engine");
        let live: Vec<String> = live.into_iter().collect();
        let Some((listed, found)) = crate::ext4::testutil::kernel_listing(img, "lin", &live) else {
            return;
        };
        assert_eq!(
            listed, live,
            "the kernel's readdir of the engine's directory"
        );
        assert_eq!(found, live.len(), "the kernel's lookups");
    }
}
