//! Directory lookup and listing: linear blocks, htree-indexed directories
//! (with the kernel's fallback to a linear scan when the index is bad) and
//! inline-data directories.
//!
//! readdir cookies are positions in the directory: for block directories
//! the byte offset just past an entry (`lblk * block_size + end`), for
//! inline directories 1 after ".", 2 after "..", then the byte offset just
//! past an entry in the inline buffer (i_block followed by the
//! "system.data" value). A cookie resumes at the first entry starting at or
//! after it, so cookies stay valid however the reply buffer splits a
//! listing. Entries come in on-disk order (htree directories are listed
//! block by block, not in hash order).
//!
//! Casefolded directories (see `casefold`): a name finds the entry with the
//! same bytes or the same fold, through the index by the hash of its fold;
//! with strict encoding a name that is not UTF-8 is refused. Encrypted
//! casefolded directories are refused.

pub(crate) mod block;
pub(crate) mod casefold;
pub(crate) mod hash;
pub(crate) mod htree;
pub(crate) mod inline;

use std::sync::Arc;

use crate::ext4::Ext4;
use crate::ext4::crypt::{self, nokey, nokey::Ciphertext};
use crate::ext4::dir::casefold::{DirName, hash_input};
use crate::ext4::dir::hash::{DX_HASH_SIPHASH, dx_hash, effective_version};
use crate::ext4::dir::htree::DxKey;
use crate::ext4::dir::inline::INLINE_DOTDOT_SIZE;
use crate::ext4::error::{Error, Result};
use crate::ext4::file::Mapping;
use crate::ext4::ondisk;
use crate::ext4::ondisk::dir_entry::{
    DirentFormat, DirentIter, DirentProblem, EXT4_NAME_LEN, RawDirEntry, kind_from_file_type,
    verify_dirent_tail,
};
use crate::ext4::ondisk::htree::{DxEntries, DxProblem, NODE_ENTRIES, ROOT_ENTRIES, is_index_node};
use crate::ext4::ondisk::inode::{
    EXT4_CASEFOLD_FL, EXT4_ENCRYPT_FL, EXT4_INDEX_FL, EXT4_INLINE_DATA_FL, I_BLOCK_SIZE, Inode,
    inode_csum_seed,
};
use crate::ext4::ondisk::superblock::{
    COMPAT_DIR_INDEX, INCOMPAT_CASEFOLD, INCOMPAT_FILETYPE, INCOMPAT_INLINE_DATA, INCOMPAT_LARGEDIR,
};
use crate::ext4::types::{Attr, DirEntry, FileKind, Ino};
use crate::ext4::util::le32;

/// Cookies of the synthesized "." and ".." of inline directories.
const INLINE_DOT_COOKIE: u64 = 1;
const INLINE_DOTDOT_COOKIE: u64 = 2;

/// Why an htree lookup could not use the index.
enum DxFail {
    /// The kernel's ERR_BAD_DX_DIR: scan linearly instead.
    Fallback(DxProblem),
    Err(Error),
}

impl From<Error> for DxFail {
    fn from(e: Error) -> Self {
        DxFail::Err(e)
    }
}

fn dir_corrupt(ino: Ino, what: impl std::fmt::Display, block: u64) -> Error {
    Error::corrupt(format!("directory {ino}: {what}"), block)
}

impl Ext4 {
    fn dirent_format(&self) -> DirentFormat {
        let sb = self.sb();
        DirentFormat {
            filetype: sb.has_incompat(INCOMPAT_FILETYPE),
            block_size: self.block_size(),
            inodes_count: sb.s_inodes_count,
        }
    }

    /// The directory inode, refusing what this engine cannot list.
    fn dir_inode(&self, ino: Ino) -> Result<Arc<Inode>> {
        let dir = self.inode(ino)?;
        if dir.kind != FileKind::Directory {
            return Err(Error::NotDir);
        }
        // The kernel never makes an encrypted directory inline (and lists
        // one unencoded if it meets it).
        if dir.has_flag(EXT4_ENCRYPT_FL) && dir.has_flag(EXT4_INLINE_DATA_FL) {
            return Err(Error::Unsupported("encrypted inline directory".into()));
        }
        // Their no-key names carry the keyed hash stored in each entry,
        // which this engine does not read.
        if dir.has_flag(EXT4_ENCRYPT_FL) && dir.has_flag(EXT4_CASEFOLD_FL) {
            return Err(Error::Unsupported("encrypted casefolded directory".into()));
        }
        Ok(dir)
    }

    fn is_inline(&self, inode: &Inode) -> Result<bool> {
        if !inode.has_flag(EXT4_INLINE_DATA_FL) {
            return Ok(false);
        }
        if !self.sb().has_incompat(INCOMPAT_INLINE_DATA) {
            return Err(Error::corrupt(
                format!(
                    "inode {}: inline data flag without the inline_data feature",
                    inode.ino
                ),
                0,
            ));
        }
        Ok(true)
    }

    /// Number of logical blocks the directory spans.
    fn dir_blocks(&self, dir: &Inode) -> u64 {
        dir.size_in_blocks(self.block_size())
    }

    /// Physical block behind logical block `lblk`, for error reports (0
    /// if unknown).
    fn dir_pblk(&self, dir: &Inode, lblk: u64) -> u64 {
        match self.map_block(dir, lblk) {
            Ok(Mapping::Mapped { pblk, .. }) => pblk,
            _ => 0,
        }
    }

    fn dir_block_corrupt(&self, dir: &Inode, lblk: u64, what: impl std::fmt::Display) -> Error {
        dir_corrupt(
            dir.ino,
            format!("logical block {lblk}: {what}"),
            self.dir_pblk(dir, lblk),
        )
    }

    /// The first mapped block at or after `lblk` and before `end`, as
    /// (logical block, data); holes are skipped a whole run at a time.
    fn next_dir_block(
        &self,
        dir: &Inode,
        mut lblk: u64,
        end: u64,
    ) -> Result<Option<(u64, Arc<[u8]>)>> {
        while lblk < end {
            match self.map_block(dir, lblk)? {
                Mapping::Hole { len } => lblk = lblk.saturating_add(len.max(1)),
                Mapping::Mapped { .. } => match self.read_file_block(dir, lblk)? {
                    Some(b) => return Ok(Some((lblk, b))),
                    None => lblk = lblk.saturating_add(1),
                },
            }
        }
        Ok(None)
    }

    /// Checks a leaf block of a block directory: the dirent tail checksum
    /// (index blocks of an htree directory carry a dx tail instead, checked
    /// by the index code).
    fn check_dir_leaf(&self, dir: &Inode, lblk: u64, block: &[u8], is_dx: bool) -> Result<()> {
        let index_block = is_dx && (lblk == 0 || is_index_node(block));
        if self.has_metadata_csum() && !index_block {
            let seed = inode_csum_seed(self.csum_seed(), dir.ino, dir.generation);
            verify_dirent_tail(block, self.block_size(), seed)
                .map_err(|p| self.dir_block_corrupt(dir, lblk, p))?;
        }
        Ok(())
    }

    /// Whether names in `dir` match and hash by their fold (its casefold
    /// flag, on a filesystem with the casefold feature).
    pub(crate) fn is_casefolded(&self, dir: &Inode) -> bool {
        dir.has_flag(EXT4_CASEFOLD_FL) && self.sb().has_incompat(INCOMPAT_CASEFOLD)
    }

    /// Whether `ino` is a casefolded directory (false if it cannot be read).
    pub fn is_casefolded_dir(&self, ino: Ino) -> bool {
        self.inode(ino).is_ok_and(|dir| self.is_casefolded(&dir))
    }

    /// With strict encoding a casefolded directory refuses, with EINVAL,
    /// every name that is not valid UTF-8: on creation
    /// (generic_ci_validate_strict_name) and on lookup (generic_ci_d_hash).
    pub(crate) fn check_name_encoding(&self, dir: &Inode, name: &[u8]) -> Result<()> {
        if self.is_casefolded(dir) && self.sb().strict_encoding() && !casefold::is_valid(name) {
            return Err(Error::Invalid(
                "name is not valid UTF-8 in a casefolded directory (strict encoding)",
            ));
        }
        Ok(())
    }

    fn is_dx(&self, dir: &Inode) -> bool {
        dir.has_flag(EXT4_INDEX_FL) && self.sb().has_compat(COMPAT_DIR_INDEX)
    }

    /// The kind of a directory entry: from its file_type when the
    /// filesystem records one, else from the inode.
    fn entry_kind(&self, e: &RawDirEntry<'_>) -> FileKind {
        if let Some(kind) = e.file_type.and_then(kind_from_file_type) {
            return kind;
        }
        match self.inode(e.inode) {
            Ok(i) => i.kind,
            Err(err) => {
                // readdir has no "unknown" kind; the entry is still listed
                // and a later lookup reports the inode's own error.
                tracing::warn!(ino = e.inode, %err, "cannot read inode for a directory entry's type");
                FileKind::RegularFile
            }
        }
    }

    pub fn lookup(&self, parent: Ino, name: &[u8]) -> Result<Attr> {
        let ino = self.lookup_ino(parent, name)?;
        self.getattr(ino)
    }

    /// The inode number `name` names in directory `parent`.
    pub(crate) fn lookup_ino(&self, parent: Ino, name: &[u8]) -> Result<Ino> {
        if name.len() > EXT4_NAME_LEN {
            return Err(Error::NameTooLong);
        }
        let dir = self.dir_inode(parent)?;
        if name.is_empty() || name.contains(&b'/') || name.contains(&0) {
            return Err(Error::NotFound);
        }
        self.check_name_encoding(&dir, name)?;
        if self.is_inline(&dir)? {
            return self.lookup_inline(&dir, name);
        }
        // "." and ".." sit in block 0, outside the index.
        let dots = name == b"." || name == b"..";
        if crypt::is_encrypted(&dir) && !dots {
            // Without the key, names are no-key names (fscrypt_setup_filename).
            let nk = nokey::decode(name).ok_or(Error::NotFound)?;
            return match &nk.ciphertext {
                Ciphertext::Whole(disk) => {
                    self.find_ino(&dir, Some(DxKey::Name(disk)), &|n| n == disk.as_slice())
                }
                Ciphertext::Abbreviated { .. } => {
                    self.find_ino(&dir, Some(DxKey::Hash(nk.hash.0)), &|n| nk.matches(n))
                }
            };
        }
        let key = (!dots).then_some(DxKey::Name(name));
        let wanted = DirName::new(name, self.is_casefolded(&dir));
        self.find_ino(&dir, key, &|n| wanted.matches(n))
    }

    /// The inode of the first live entry `wanted` accepts: through the
    /// hash index where `key` leads (if given and the directory has one),
    /// else by a linear scan.
    fn find_ino(
        &self,
        dir: &Inode,
        key: Option<DxKey<'_>>,
        wanted: &dyn Fn(&[u8]) -> bool,
    ) -> Result<Ino> {
        if let Some(key) = key
            && self.is_dx(dir)
        {
            match self.dx_lookup(dir, key, wanted) {
                Ok(Some(ino)) => return Ok(ino),
                Ok(None) => return Err(Error::NotFound),
                Err(DxFail::Err(e)) => return Err(e),
                Err(DxFail::Fallback(p)) => {
                    tracing::warn!(dir = dir.ino, problem = %p, "bad htree index, falling back to a linear scan");
                }
            }
        }
        self.linear_lookup(dir, wanted)?.ok_or(Error::NotFound)
    }

    fn linear_lookup(&self, dir: &Inode, wanted: &dyn Fn(&[u8]) -> bool) -> Result<Option<Ino>> {
        let is_dx = self.is_dx(dir);
        let fmt = self.dirent_format();
        let end = self.dir_blocks(dir);
        let mut next = 0;
        while let Some((lblk, block)) = self.next_dir_block(dir, next, end)? {
            next = lblk.saturating_add(1);
            self.check_dir_leaf(dir, lblk, &block, is_dx)?;
            if let Some(ino) = search_buf(&block, 0, &fmt, wanted).map_err(|(off, p)| {
                self.dir_block_corrupt(dir, lblk, format_args!("offset {off}: {p}"))
            })? {
                return Ok(Some(ino));
            }
        }
        Ok(None)
    }

    /// Reads and checks an htree index block (root or node) at `lblk`.
    fn dx_index_block(&self, dir: &Inode, lblk: u64) -> Result<Arc<[u8]>, DxFail> {
        let block = self.read_file_block(dir, lblk)?.ok_or_else(|| {
            DxFail::Err(dir_corrupt(
                dir.ino,
                format!("hole at htree index block {lblk}"),
                lblk,
            ))
        })?;
        if lblk != 0 && !is_index_node(&block) {
            return Err(DxFail::Err(self.dir_block_corrupt(
                dir,
                lblk,
                DxProblem::NotAnIndexNode,
            )));
        }
        if self.has_metadata_csum() {
            let seed = inode_csum_seed(self.csum_seed(), dir.ino, dir.generation);
            ondisk::htree::verify_dx_tail(&block, seed).map_err(|p| {
                DxFail::Err(dir_corrupt(
                    dir.ino,
                    format!("logical block {lblk}: {p}"),
                    lblk,
                ))
            })?;
        }
        Ok(block)
    }

    /// Looks a name up through the hash index (the kernel's dx_probe and
    /// ext4_dx_find_entry): the leaves `key` leads to, for an entry
    /// `wanted` accepts. `Ok(None)`: not in the directory.
    fn dx_lookup(
        &self,
        dir: &Inode,
        key: DxKey<'_>,
        wanted: &dyn Fn(&[u8]) -> bool,
    ) -> Result<Option<Ino>, DxFail> {
        let bs = self.block_size() as usize;
        let csum = self.has_metadata_csum();
        let sb = self.sb();
        let max_levels = if sb.has_incompat(INCOMPAT_LARGEDIR) {
            3
        } else {
            2
        };
        let root = self.dx_index_block(dir, 0)?;
        let info = ondisk::htree::parse_root_info(&root, max_levels).map_err(DxFail::Fallback)?;
        if info.hash_version == DX_HASH_SIPHASH {
            // Only valid in casefolded+encrypted directories.
            return Err(DxFail::Fallback(DxProblem::UnknownHashVersion(
                info.hash_version,
            )));
        }
        let version = effective_version(info.hash_version, sb.s_flags).ok_or(DxFail::Fallback(
            DxProblem::UnknownHashVersion(info.hash_version),
        ))?;
        let hash = match key {
            DxKey::Name(name) => {
                dx_hash(
                    &hash_input(self.is_casefolded(dir), name),
                    version,
                    &sb.s_hash_seed,
                )
                .ok_or(DxFail::Fallback(DxProblem::UnknownHashVersion(
                    info.hash_version,
                )))?
                .major
            }
            DxKey::Hash(h) => h,
        };
        let root_entries =
            ondisk::htree::parse_entries(&root, ROOT_ENTRIES, ondisk::htree::root_limit(bs, csum))
                .map_err(DxFail::Fallback)?;

        // The path from the root to the current leaf: entries of each level
        // and the chosen index at each.
        let mut path: Vec<(DxEntries, usize)> = Vec::with_capacity(4);
        let at = root_entries.find(hash);
        path.push((root_entries, at));
        let mut visited = vec![0u32];
        for _ in 0..info.indirect_levels {
            let blk = current_block(&path);
            if visited.contains(&blk) {
                return Err(DxFail::Fallback(DxProblem::Cycle(blk)));
            }
            visited.push(blk);
            let node = self.dx_index_block(dir, u64::from(blk))?;
            let entries = ondisk::htree::parse_entries(
                &node,
                NODE_ENTRIES,
                ondisk::htree::node_limit(bs, csum),
            )
            .map_err(DxFail::Fallback)?;
            let at = entries.find(hash);
            path.push((entries, at));
        }

        let fmt = self.dirent_format();
        // Each step moves to a later leaf; at most one step per directory
        // block.
        for _ in 0..=self.dir_blocks(dir) {
            let leaf = u64::from(current_block(&path));
            let block = self.read_file_block(dir, leaf)?.ok_or_else(|| {
                DxFail::Err(dir_corrupt(
                    dir.ino,
                    format!("hole at htree leaf {leaf}"),
                    leaf,
                ))
            })?;
            if csum {
                let seed = inode_csum_seed(self.csum_seed(), dir.ino, dir.generation);
                verify_dirent_tail(&block, self.block_size(), seed).map_err(|p| {
                    DxFail::Err(dir_corrupt(
                        dir.ino,
                        format!("logical block {leaf}: {p}"),
                        leaf,
                    ))
                })?;
            }
            match search_buf(&block, 0, &fmt, wanted) {
                Ok(Some(ino)) => return Ok(Some(ino)),
                Ok(None) => {}
                // search_dirblock's -1 becomes ERR_BAD_DX_DIR in the kernel.
                Err((_, p)) => {
                    tracing::warn!(dir = dir.ino, leaf, problem = %p, "bad entry in htree leaf");
                    return Err(DxFail::Fallback(DxProblem::BadLeafEntry(leaf as u32)));
                }
            }
            if !self.dx_next_leaf(dir, &mut path, hash, bs, csum)? {
                return Ok(None);
            }
        }
        Err(DxFail::Fallback(DxProblem::Cycle(current_block(&path))))
    }

    /// Advances `path` to the next leaf if it continues a run of names
    /// with the same hash (the kernel's ext4_htree_next_block). Returns
    /// false when the search is over.
    fn dx_next_leaf(
        &self,
        dir: &Inode,
        path: &mut [(DxEntries, usize)],
        hash: u32,
        bs: usize,
        csum: bool,
    ) -> Result<bool, DxFail> {
        // Find the deepest level with a next entry.
        let mut level = path.len();
        loop {
            let Some(l) = level.checked_sub(1) else {
                return Ok(false);
            };
            level = l;
            let Some((entries, at)) = path.get_mut(level) else {
                return Ok(false);
            };
            *at = at.saturating_add(1);
            if *at < entries.entries.len() {
                break;
            }
        }
        let next_hash = path
            .get(level)
            .and_then(|(e, at)| e.entries.get(*at))
            .map(|e| e.hash)
            .unwrap_or(0);
        if next_hash & !ondisk::htree::DX_HASH_CONTINUATION != hash {
            return Ok(false);
        }
        // Re-descend along the first entries below.
        for l in level.saturating_add(1)..path.len() {
            let blk = path.get(..l).map(current_block).unwrap_or(0);
            let node = self.dx_index_block(dir, u64::from(blk))?;
            let entries = ondisk::htree::parse_entries(
                &node,
                NODE_ENTRIES,
                ondisk::htree::node_limit(bs, csum),
            )
            .map_err(DxFail::Fallback)?;
            if let Some(slot) = path.get_mut(l) {
                *slot = (entries, 0);
            }
        }
        Ok(true)
    }

    fn lookup_inline(&self, dir: &Inode, name: &[u8]) -> Result<Ino> {
        let data = self.inline_data(dir)?;
        if name == b"." {
            return Ok(dir.ino);
        }
        let parent = le32(&data, 0);
        if name == b".." {
            return Ok(parent);
        }
        let fmt = self.dirent_format();
        let wanted = DirName::new(name, self.is_casefolded(dir));
        for (buf, start, base) in inline_regions(&data) {
            if let Some(ino) =
                search_buf(buf, start, &fmt, &|n| wanted.matches(n)).map_err(|(off, p)| {
                    dir_corrupt(
                        dir.ino,
                        format!("inline data offset {}: {p}", base.saturating_add(off)),
                        0,
                    )
                })?
            {
                return Ok(ino);
            }
        }
        Err(Error::NotFound)
    }

    pub fn readdir(
        &self,
        dir: Ino,
        offset: u64,
        sink: &mut dyn FnMut(DirEntry) -> bool,
    ) -> Result<()> {
        let dir = self.dir_inode(dir)?;
        if self.is_inline(&dir)? {
            return self.readdir_inline(&dir, offset, sink);
        }
        let bs = u64::from(self.block_size());
        let is_dx = self.is_dx(&dir);
        let fmt = self.dirent_format();
        let end = self.dir_blocks(&dir);
        let listing_hash = if crypt::is_encrypted(&dir) {
            Some(self.nokey_listing_hash(&dir)?)
        } else {
            None
        };
        let mut next = offset.checked_div(bs).unwrap_or(0);
        while let Some((lblk, block)) = self.next_dir_block(&dir, next, end)? {
            next = lblk.saturating_add(1);
            self.check_dir_leaf(&dir, lblk, &block, is_dx)?;
            let base = lblk.saturating_mul(bs);
            for e in DirentIter::new(&block, 0, fmt) {
                let e = e.map_err(|(off, p)| {
                    self.dir_block_corrupt(&dir, lblk, format_args!("offset {off}: {p}"))
                })?;
                let start = base.saturating_add(e.offset as u64);
                if start < offset || !e.is_live() {
                    continue;
                }
                let name = match listing_hash {
                    Some(version) if e.name != b"." && e.name != b".." => {
                        self.nokey_name(&dir, lblk, e.name, version)?
                    }
                    _ => e.name.to_vec(),
                };
                let entry = DirEntry {
                    ino: e.inode,
                    name,
                    kind: self.entry_kind(&e),
                    next_offset: base.saturating_add(e.end() as u64),
                };
                if !sink(entry) {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// How the kernel lists an encrypted directory's names without the
    /// key: its htree readdir (taken with dir_index when the directory is
    /// indexed or exactly one block) puts each name's dirhash into its
    /// no-key name, hashed with the index's hash version (the default
    /// one for a one-block directory); its linear readdir puts zeros.
    /// `Some(version)` for the first, `None` for the second.
    fn nokey_listing_hash(&self, dir: &Inode) -> Result<Option<u8>> {
        let sb = self.sb();
        if !sb.has_compat(COMPAT_DIR_INDEX) {
            return Ok(None);
        }
        let one_block = dir.size.checked_div(u64::from(self.block_size())) == Some(1);
        let version = if self.is_dx(dir) {
            let root = self.dx_index_block(dir, 0);
            let info = root.ok().and_then(|root| {
                let levels = if sb.has_incompat(INCOMPAT_LARGEDIR) {
                    3
                } else {
                    2
                };
                ondisk::htree::parse_root_info(&root, levels).ok()
            });
            // A bad index: the kernel falls back to its linear readdir.
            match info {
                Some(info) => info.hash_version,
                None => return Ok(None),
            }
        } else if one_block {
            sb.s_def_hash_version
        } else {
            return Ok(None);
        };
        Ok(effective_version(version, sb.s_flags))
    }

    /// The no-key name of the on-disk name `disk`, an entry of `dir`'s
    /// logical block `lblk`, listed with `version`'s dirhash (`None`: no
    /// hash).
    fn nokey_name(
        &self,
        dir: &Inode,
        lblk: u64,
        disk: &[u8],
        version: Option<u8>,
    ) -> Result<Vec<u8>> {
        if disk.len() < nokey::MIN_CIPHERTEXT {
            return Err(self.dir_block_corrupt(
                dir,
                lblk,
                format_args!("encrypted name of {} bytes", disk.len()),
            ));
        }
        let hash = version
            .and_then(|v| dx_hash(disk, v, &self.sb().s_hash_seed))
            .map_or((0, 0), |h| (h.major, h.minor));
        Ok(nokey::encode(disk, hash))
    }

    fn readdir_inline(
        &self,
        dir: &Inode,
        offset: u64,
        sink: &mut dyn FnMut(DirEntry) -> bool,
    ) -> Result<()> {
        let data = self.inline_data(dir)?;
        let parent = le32(&data, 0);
        if offset < INLINE_DOT_COOKIE
            && !sink(DirEntry {
                ino: dir.ino,
                name: b".".to_vec(),
                kind: FileKind::Directory,
                next_offset: INLINE_DOT_COOKIE,
            })
        {
            return Ok(());
        }
        if offset < INLINE_DOTDOT_COOKIE
            && !sink(DirEntry {
                ino: parent,
                name: b"..".to_vec(),
                kind: FileKind::Directory,
                next_offset: INLINE_DOTDOT_COOKIE,
            })
        {
            return Ok(());
        }
        let fmt = self.dirent_format();
        for (buf, start, base) in inline_regions(&data) {
            for e in DirentIter::new(buf, start, fmt) {
                let e = e.map_err(|(off, p)| {
                    dir_corrupt(
                        dir.ino,
                        format!("inline data offset {}: {p}", base.saturating_add(off)),
                        0,
                    )
                })?;
                let pos = base.saturating_add(e.offset) as u64;
                if pos < offset || !e.is_live() {
                    continue;
                }
                let entry = DirEntry {
                    ino: e.inode,
                    name: e.name.to_vec(),
                    kind: self.entry_kind(&e),
                    next_offset: base.saturating_add(e.end()) as u64,
                };
                if !sink(entry) {
                    return Ok(());
                }
            }
        }
        Ok(())
    }
}

/// The block number the deepest level of `path` points at.
fn current_block(path: &[(DxEntries, usize)]) -> u32 {
    path.last()
        .and_then(|(e, at)| e.entries.get(*at))
        .map(|e| e.block)
        .unwrap_or(0)
}

/// The two entry regions of an inline directory as (buffer, first entry
/// offset, position of the buffer in the inline data): i_block after the
/// parent inode, then the "system.data" value.
fn inline_regions(data: &[u8]) -> Vec<(&[u8], usize, usize)> {
    let split = data.len().min(I_BLOCK_SIZE);
    let (ibody, ext) = data.split_at(split);
    let mut out = Vec::with_capacity(2);
    if ibody.len() > INLINE_DOTDOT_SIZE {
        out.push((ibody, INLINE_DOTDOT_SIZE, 0));
    }
    if !ext.is_empty() {
        out.push((ext, 0, I_BLOCK_SIZE));
    }
    out
}

/// Searches one buffer's entries for one `wanted` accepts, checking every
/// entry on the way. Errors carry the failing entry's offset.
fn search_buf(
    buf: &[u8],
    start: usize,
    fmt: &DirentFormat,
    wanted: &dyn Fn(&[u8]) -> bool,
) -> std::result::Result<Option<Ino>, (usize, DirentProblem)> {
    for e in DirentIter::new(buf, start, *fmt) {
        let e = e?;
        if e.is_live() && wanted(e.name) {
            return Ok(Some(e.inode));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An htree lookup of the exact name `name`.
    fn dx_find(fs: &Ext4, dir: &Inode, name: &[u8]) -> Result<Option<Ino>, DxFail> {
        fs.dx_lookup(dir, DxKey::Name(name), &|n| n == name)
    }
    use crate::ext4::testutil::*;
    use std::collections::BTreeSet;
    use std::os::unix::ffi::OsStrExt;

    fn source_names(dir: &std::path::Path) -> BTreeSet<Vec<u8>> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().as_bytes().to_vec())
            .collect()
    }

    /// Names of assorted lengths, including 255 bytes and non-ASCII.
    fn name(i: usize) -> String {
        match i % 5 {
            0 => format!("f{i}"),
            1 => format!("file-number-{i:06}"),
            2 => format!("{i}-{}", "x".repeat(200 + i % 50)),
            3 => format!("caf\u{e9}-\u{65e5}\u{672c}-{i}"),
            _ => format!("{i:0>255}"),
        }
    }

    #[test]
    fn htree_directory_with_5000_entries() {
        if !have(&["mkfs.ext4", "e2fsck", "debugfs"]) {
            return;
        }
        let s = Scratch::new("htree5k");
        let big = s.file("src/big");
        std::fs::create_dir_all(&big).unwrap();
        for i in 0..5000 {
            std::fs::write(big.join(name(i)), b"").unwrap();
        }
        std::fs::create_dir(big.join("subdir")).unwrap();
        let img = s.file("img");
        mkfs_img(&s.file("src"), &img, &[], "64M", true);
        let fs = open_image(&img).unwrap();
        let dir = resolve(&fs, "big");
        let inode = fs.inode(dir).unwrap();
        assert!(
            inode.has_flag(EXT4_INDEX_FL),
            "e2fsck -D did not index the directory"
        );

        // Every name looks up through the index (and the index path is
        // the one taken: no fallback).
        for n in source_names(&big) {
            let ino = fs.lookup_ino(dir, &n).unwrap();
            assert!(matches!(dx_find(&fs, &inode, &n), Ok(Some(i)) if i == ino));
        }
        for i in 0..200 {
            let missing = format!("missing-{i}");
            assert!(matches!(
                fs.lookup_ino(dir, missing.as_bytes()),
                Err(Error::NotFound)
            ));
            assert!(matches!(dx_find(&fs, &inode, missing.as_bytes()), Ok(None)));
        }
        assert_eq!(fs.lookup(dir, b"subdir").unwrap().kind, FileKind::Directory);
        assert_eq!(fs.lookup_ino(dir, b".").unwrap(), dir);
        assert_eq!(fs.lookup_ino(dir, b"..").unwrap(), ROOT_INO_FOR_TESTS);
        assert!(matches!(
            fs.lookup_ino(dir, &[b'y'; 256]),
            Err(Error::NameTooLong)
        ));

        // readdir lists exactly the source names, once each.
        let listed = list(&fs, dir);
        assert_eq!(listed.len(), 5001);
        let set: BTreeSet<_> = listed.iter().cloned().collect();
        assert_eq!(set, source_names(&big));

        // A listing in pages of 7, resumed from the last cookie, is the
        // same listing.
        let mut paged = Vec::new();
        let mut cookie = 0;
        for _ in 0..10_000 {
            let mut got = 0;
            fs.readdir(dir, cookie, &mut |e| {
                if got == 7 {
                    return false;
                }
                got += 1;
                cookie = e.next_offset;
                paged.push(e.name);
                true
            })
            .unwrap();
            if got == 0 {
                break;
            }
        }
        let mut full = Vec::new();
        fs.readdir(dir, 0, &mut |e| {
            full.push(e.name);
            true
        })
        .unwrap();
        assert_eq!(paged, full);
        // Not a directory.
        let file = fs.lookup_ino(dir, name(1).as_bytes()).unwrap();
        assert!(matches!(fs.lookup_ino(file, b"x"), Err(Error::NotDir)));
        assert!(matches!(
            fs.readdir(file, 0, &mut |_| true),
            Err(Error::NotDir)
        ));
    }

    const ROOT_INO_FOR_TESTS: Ino = crate::ext4::ROOT_INO;

    /// Checks that `dir` has an htree of `levels` indirect levels and that
    /// every name resolves through the index and readdir lists them all.
    fn check_htree(fs: &Ext4, dir: Ino, levels: u8, names: &BTreeSet<Vec<u8>>, step: usize) {
        let inode = fs.inode(dir).unwrap();
        assert!(inode.has_flag(EXT4_INDEX_FL));
        let root = fs.read_file_block(&inode, 0).unwrap().unwrap();
        assert_eq!(root[30], levels, "indirect_levels");
        for n in names.iter().step_by(step) {
            let ino = fs.lookup_ino(dir, n).unwrap();
            assert!(matches!(dx_find(fs, &inode, n), Ok(Some(i)) if i == ino));
        }
        assert!(matches!(dx_find(fs, &inode, b"nope"), Ok(None)));
        let listed: BTreeSet<_> = list(fs, dir).into_iter().collect();
        assert_eq!(listed.len(), names.len());
        assert!(&listed == names);
    }

    #[test]
    fn two_level_htree_on_1k_blocks() {
        if !have(&["mkfs.ext4", "e2fsck", "debugfs"]) {
            return;
        }
        let s = Scratch::new("htree2");
        let big = s.file("src/big");
        std::fs::create_dir_all(&big).unwrap();
        // 250-byte names: three records per 1 KiB leaf, so 1,500 names need
        // more leaves than the root alone addresses (123).
        for i in 0..1500 {
            std::fs::write(big.join(format!("{i:06}-{}", "L".repeat(243))), b"").unwrap();
        }
        let img = s.file("img");
        mkfs_img(&s.file("src"), &img, &["-b", "1024"], "32M", true);
        let fs = open_image(&img).unwrap();
        check_htree(&fs, resolve(&fs, "big"), 1, &source_names(&big), 1);
    }

    /// A 3-level tree needs ~50,000 long names in one directory, which
    /// mkfs -d inserts in quadratic time; the kernel builds it in seconds,
    /// so this test loop-mounts the image (root only, skipped otherwise).
    #[test]
    fn three_level_htree_with_large_dir() {
        if !have(&["mkfs.ext4", "mount", "umount"]) {
            return;
        }
        let s = Scratch::new("htree3");
        std::fs::create_dir_all(s.file("src/big")).unwrap();
        let img = s.file("img");
        mkfs_img(
            &s.file("src"),
            &img,
            &["-b", "1024", "-O", "large_dir", "-N", "64"],
            "48M",
            false,
        );
        let mnt = s.file("mnt");
        std::fs::create_dir_all(&mnt).unwrap();
        if !crate::ext4::testutil::kernel_mount(&img, &mnt, &["-o", "loop"]) {
            return;
        }
        let n = |i: usize| format!("{i:06}-{}", "L".repeat(243));
        let made = (|| -> std::io::Result<()> {
            std::fs::write(mnt.join("target"), b"t")?;
            for i in 0..50_000 {
                std::fs::hard_link(mnt.join("target"), mnt.join("big").join(n(i)))?;
            }
            Ok(())
        })();
        assert!(crate::ext4::testutil::unmount(&mnt));
        made.unwrap();
        let fs = open_image(&img).unwrap();
        let names: BTreeSet<Vec<u8>> = (0..50_000).map(|i| n(i).into_bytes()).collect();
        let target = fs.lookup_ino(ROOT_INO_FOR_TESTS, b"target").unwrap();
        let dir = resolve(&fs, "big");
        assert_eq!(fs.lookup_ino(dir, n(49_999).as_bytes()).unwrap(), target);
        check_htree(&fs, dir, 2, &names, 7);
    }

    #[test]
    fn linear_directories_without_dir_index() {
        if !have(&["mkfs.ext4"]) {
            return;
        }
        let s = Scratch::new("linear");
        let d = s.file("src/d");
        std::fs::create_dir_all(&d).unwrap();
        for i in 0..600 {
            std::fs::write(d.join(name(i)), b"").unwrap();
        }
        for (args, tag) in [
            (&["-O", "^dir_index"][..], "nodx"),
            (&["-O", "^filetype"][..], "nofiletype"),
            (&["-t", "ext2", "-b", "1024"][..], "ext2"),
        ] {
            let img = s.file(tag);
            mkfs_img(&s.file("src"), &img, args, "32M", false);
            let fs = open_image(&img).unwrap();
            let dir = resolve(&fs, "d");
            for n in source_names(&d) {
                let attr = fs.lookup(dir, &n).unwrap();
                assert_eq!(attr.kind, FileKind::RegularFile, "{tag}");
            }
            let mut kinds = Vec::new();
            fs.readdir(ROOT_INO_FOR_TESTS, 0, &mut |e| {
                kinds.push((e.name, e.kind));
                true
            })
            .unwrap();
            assert!(
                kinds.contains(&(b"d".to_vec(), FileKind::Directory)),
                "{tag}"
            );
            assert!(
                kinds.contains(&(b"..".to_vec(), FileKind::Directory)),
                "{tag}"
            );
            let set: BTreeSet<_> = list(&fs, dir).into_iter().collect();
            assert_eq!(set, source_names(&d), "{tag}");
        }
    }

    #[test]
    fn corrupt_directory_block_affects_only_that_directory() {
        if !have(&["mkfs.ext4", "debugfs"]) {
            return;
        }
        let s = Scratch::new("corrupt");
        for d in ["victim", "other"] {
            std::fs::create_dir_all(s.file(&format!("src/{d}"))).unwrap();
            for i in 0..20 {
                std::fs::write(s.file(&format!("src/{d}/file{i}")), b"").unwrap();
            }
        }
        for (args, tag) in [(&[][..], "csum"), (&["-O", "^metadata_csum"][..], "nocsum")] {
            let img = s.file(tag);
            let mut a = vec!["-b", "4096"];
            a.extend_from_slice(args);
            mkfs_img(&s.file("src"), &img, &a, "16M", false);
            let blk = bmap(&img, "/victim", 0);
            // rec_len of "." (offset 4) becomes 6: not a multiple of 4.
            patch(&img, 4096, blk, 4, &[6, 0]);
            let fs = open_image(&img).unwrap();
            let victim = resolve(&fs, "victim");
            let err = fs.readdir(victim, 0, &mut |_| true).unwrap_err();
            assert!(matches!(err, Error::Corrupt { .. }), "{tag}: {err}");
            let err = fs.lookup_ino(victim, b"file3").unwrap_err();
            assert!(matches!(err, Error::Corrupt { .. }), "{tag}: {err}");
            if tag == "nocsum" {
                assert!(
                    err.to_string()
                        .contains("rec_len 6 is smaller than minimal"),
                    "{tag}: {err}"
                );
            }
            let other = resolve(&fs, "other");
            assert_eq!(list(&fs, other).len(), 20);
            assert!(fs.lookup_ino(other, b"file3").is_ok());
            assert_eq!(list(&fs, ROOT_INO_FOR_TESTS).len(), 3);
        }
    }

    #[test]
    fn bad_htree_index_falls_back_or_reports() {
        if !have(&["mkfs.ext4", "e2fsck", "debugfs"]) {
            return;
        }
        let s = Scratch::new("badhtree");
        let d = s.file("src/d");
        std::fs::create_dir_all(&d).unwrap();
        for i in 0..400 {
            std::fs::write(d.join(name(i)), b"").unwrap();
        }
        // Without checksums: an unknown hash version makes the kernel (and
        // us) scan linearly; every name still resolves.
        let img = s.file("nocsum");
        mkfs_img(
            &s.file("src"),
            &img,
            &["-b", "4096", "-O", "^metadata_csum"],
            "16M",
            true,
        );
        let root_blk = bmap(&img, "/d", 0);
        patch(&img, 4096, root_blk, 28, &[9]);
        let fs = open_image(&img).unwrap();
        let dir = resolve(&fs, "d");
        let inode = fs.inode(dir).unwrap();
        assert!(inode.has_flag(EXT4_INDEX_FL));
        assert!(matches!(
            dx_find(&fs, &inode, b"f0"),
            Err(DxFail::Fallback(DxProblem::UnknownHashVersion(9)))
        ));
        for n in source_names(&d) {
            fs.lookup_ino(dir, &n).unwrap();
        }
        assert_eq!(list(&fs, dir).len(), 400);

        // With checksums: a flipped byte in the index is a checksum error,
        // reported as corruption of that directory.
        let img = s.file("csum");
        mkfs_img(&s.file("src"), &img, &["-b", "4096"], "16M", true);
        let root_blk = bmap(&img, "/d", 0);
        let b = read_byte(&img, 4096, root_blk, 32 + 8);
        patch(&img, 4096, root_blk, 32 + 8, &[b ^ 0x10]);
        let fs = open_image(&img).unwrap();
        let dir = resolve(&fs, "d");
        let err = fs.lookup_ino(dir, b"f0").unwrap_err();
        assert!(err.to_string().contains("htree index checksum"), "{err}");
        assert!(fs.lookup_ino(ROOT_INO_FOR_TESTS, b"d").is_ok());
    }

    #[test]
    fn inline_data_directories() {
        if !have(&["mkfs.ext4", "debugfs"]) {
            return;
        }
        let s = Scratch::new("inline");
        for (d, n) in [("empty", 0), ("small", 2), ("spill", 6), ("blocks", 80)] {
            std::fs::create_dir_all(s.file(&format!("src/{d}"))).unwrap();
            for i in 0..n {
                std::fs::write(s.file(&format!("src/{d}/entry-{i}")), b"").unwrap();
            }
        }
        let img = s.file("img");
        mkfs_img(
            &s.file("src"),
            &img,
            &["-O", "inline_data", "-I", "512"],
            "16M",
            false,
        );
        let fs = open_image(&img).unwrap();
        let mut inline_seen = 0;
        for (d, n) in [
            ("empty", 0usize),
            ("small", 2),
            ("spill", 6),
            ("blocks", 80),
        ] {
            let dir = resolve(&fs, d);
            let inode = fs.inode(dir).unwrap();
            if inode.has_flag(EXT4_INLINE_DATA_FL) {
                inline_seen += 1;
            }
            let mut all = Vec::new();
            fs.readdir(dir, 0, &mut |e| {
                all.push((e.name, e.ino, e.next_offset));
                true
            })
            .unwrap();
            assert_eq!(all.len(), n + 2, "{d}");
            assert_eq!(all[0].0, b".");
            assert_eq!(all[0].1, dir);
            assert_eq!(all[1].0, b"..");
            assert_eq!(all[1].1, ROOT_INO_FOR_TESTS);
            // Resuming from each cookie gives the rest of the listing.
            for (k, (_, _, cookie)) in all.iter().enumerate() {
                let mut rest = Vec::new();
                fs.readdir(dir, *cookie, &mut |e| {
                    rest.push(e.name);
                    true
                })
                .unwrap();
                let want: Vec<_> = all[k + 1..].iter().map(|x| x.0.clone()).collect();
                assert_eq!(rest, want, "{d} from cookie {cookie}");
            }
            for i in 0..n {
                fs.lookup_ino(dir, format!("entry-{i}").as_bytes()).unwrap();
            }
            assert_eq!(fs.lookup_ino(dir, b"..").unwrap(), ROOT_INO_FOR_TESTS);
            assert!(matches!(
                fs.lookup_ino(dir, b"entry-999"),
                Err(Error::NotFound)
            ));
        }
        assert!(
            inline_seen >= 2,
            "mkfs made {inline_seen} inline directories"
        );
    }

    #[test]
    fn casefold_and_encrypted_directories() {
        if !have(&["mkfs.ext4", "debugfs"]) {
            return;
        }
        let s = Scratch::new("casefold");
        for d in ["cf", "enc"] {
            std::fs::create_dir_all(s.file(&format!("src/{d}"))).unwrap();
            std::fs::write(s.file(&format!("src/{d}/MixedCase.txt")), b"").unwrap();
            std::fs::write(s.file(&format!("src/{d}/caf\u{e9}")), b"").unwrap();
        }
        let img = s.file("img");
        mkfs_img(&s.file("src"), &img, &["-O", "casefold"], "16M", false);
        debugfs(&img, "set_inode_field /cf flags 0x40080000");
        debugfs(&img, "set_inode_field /enc flags 0x80800");
        let fs = open_image(&img).unwrap();
        let cf = resolve(&fs, "cf");
        let a = fs.lookup_ino(cf, b"MixedCase.txt").unwrap();
        assert_eq!(fs.lookup_ino(cf, b"mixedcase.TXT").unwrap(), a);
        fs.lookup_ino(cf, "caf\u{e9}".as_bytes()).unwrap();
        assert_eq!(list(&fs, cf).len(), 2);
        // A directory flagged encrypted whose names are plaintext: too
        // short for ciphertext, so listing it fails as corrupt (the
        // kernel's EUCLEAN); a name that is no no-key name finds nothing.
        let enc = resolve(&fs, "enc");
        let e = fs.readdir(enc, 0, &mut |_| true).unwrap_err();
        assert!(
            matches!(e, Error::Corrupt { .. }) && e.to_string().contains("encrypted name of"),
            "{e}"
        );
        assert!(matches!(fs.lookup_ino(enc, b"x"), Err(Error::NotFound)));
        assert_eq!(fs.lookup_ino(enc, b".").unwrap(), enc);
    }

    #[test]
    fn htree_next_leaf_follows_collision_runs() {
        if !have(&["mkfs.ext4"]) {
            return;
        }
        let s = Scratch::new("nextleaf");
        std::fs::create_dir_all(s.file("src")).unwrap();
        let img = s.file("img");
        mkfs_img(&s.file("src"), &img, &[], "8M", false);
        let fs = open_image(&img).unwrap();
        let root = fs.inode(ROOT_INO_FOR_TESTS).unwrap();
        let e = |hash, block| ondisk::htree::DxEntry { hash, block };
        let entries = DxEntries {
            entries: vec![e(0, 1), e(0x100 | 1, 2), e(0x100 | 1, 3), e(0x200, 4)],
        };
        let mut path = vec![(entries, 0)];
        // Leaf 1 ends a run of hash 0x100: leaves 2 and 3 continue it.
        assert!(matches!(
            fs.dx_next_leaf(&root, &mut path, 0x100, 1024, false),
            Ok(true)
        ));
        assert_eq!(current_block(&path), 2);
        assert!(matches!(
            fs.dx_next_leaf(&root, &mut path, 0x100, 1024, false),
            Ok(true)
        ));
        assert_eq!(current_block(&path), 3);
        // Leaf 4 starts another hash: the search ends.
        assert!(matches!(
            fs.dx_next_leaf(&root, &mut path, 0x100, 1024, false),
            Ok(false)
        ));
        // Past the last entry: ends too.
        path[0].1 = 3;
        assert!(matches!(
            fs.dx_next_leaf(&root, &mut path, 0x200, 1024, false),
            Ok(false)
        ));
    }

    /// Walks every image of the hostile corpus (../shared/corpus) through
    /// readdir, lookup, readlink and the xattr calls: each must return (an
    /// error is fine) without panicking or looping.
    #[test]
    fn hostile_corpus_walk() {
        let Some(entries) = crate::ext4::testutil::corpus_entries() else {
            return;
        };
        let mut images = 0;
        let mut opened = 0;
        let mut ops = 0u64;
        for e in entries {
            let path = e.unwrap().path();
            let Some(image) = corpus_image(&path) else {
                continue;
            };
            images += 1;
            let dev = crate::io::MemDevice::new(image);
            let Ok(fs) = Ext4::open(
                std::sync::Arc::new(dev),
                crate::ext4::OpenOptions {
                    read_only: true,
                    ..Default::default()
                },
            ) else {
                continue;
            };
            opened += 1;
            let mut queue = vec![ROOT_INO_FOR_TESTS];
            let mut seen = BTreeSet::new();
            while let Some(d) = queue.pop() {
                if !seen.insert(d) || seen.len() > 3000 {
                    continue;
                }
                let mut children = Vec::new();
                let _ = fs.readdir(d, 0, &mut |e| {
                    children.push(e);
                    children.len() < 5000
                });
                for c in children {
                    ops += 1;
                    if c.name == b"." || c.name == b".." {
                        continue;
                    }
                    let _ = fs.lookup(d, &c.name);
                    let _ = fs.readlink(c.ino);
                    if let Ok(names) = fs.listxattr(c.ino) {
                        for n in names {
                            let _ = fs.getxattr(c.ino, &n);
                        }
                    }
                    if c.kind == FileKind::Directory {
                        queue.push(c.ino);
                    }
                }
                let _ = fs.lookup_ino(d, b"no-such-name-in-this-directory");
            }
        }
        eprintln!("corpus: {images} images, {opened} opened, {ops} entries walked");
        assert!(images > 0);
    }
}
