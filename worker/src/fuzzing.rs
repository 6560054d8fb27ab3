//! Entry points for the coverage-guided fuzz targets in `fuzz/` (built
//! with `--cfg fuzzing` by cargo-fuzz) and for the regression test that
//! runs every input those targets ever crashed on. Each entry point takes
//! raw fuzzer bytes, must never panic, and bounds its own work.
//!
//! Images travel in a sparse form, so that the fuzzer's mutations land on
//! metadata and not on megabytes of zeros: a little-endian u32 image size
//! in KiB, then records of a u32 KiB index and up to 1024 bytes to place
//! there ([`image_from_sparse`], [`sparse_from_image`]).

use std::collections::HashSet;
use std::sync::Arc;

use crate::ext4::ondisk::journal::{Csum, Format};
use crate::ext4::ondisk::{
    acl, dir_entry, extent, group_desc, htree, inode, journal, mmp, orphan, superblock, verity,
    xattr,
};
use crate::ext4::types::{RenameFlags, SetAttr, XattrFlags};
use crate::ext4::{AtimeUpdates, Ext4, FallocMode, FileKind, Ino, OpenOptions, ROOT_INO, Whence};
use crate::io::MemDevice;

/// The largest image an input may describe: bounds memory per run.
const MAX_IMAGE_KIB: usize = 16 * 1024;
/// The smallest (mkfs.ext4 makes nothing smaller).
const MIN_IMAGE_KIB: usize = 64;
const KIB: usize = 1024;

/// The image a sparse input describes; None if it is too short to say.
pub fn image_from_sparse(data: &[u8]) -> Option<Vec<u8>> {
    let (size, mut rest) = data.split_first_chunk::<4>()?;
    let kib = (u32::from_le_bytes(*size) as usize).clamp(MIN_IMAGE_KIB, MAX_IMAGE_KIB);
    let mut img = vec![0u8; kib * KIB];
    while let Some((at, tail)) = rest.split_first_chunk::<4>() {
        let at = u32::from_le_bytes(*at) as usize % kib;
        let len = tail.len().min(KIB);
        let (chunk, next) = tail.split_at(len);
        if let Some(dst) = img.get_mut(at * KIB..at * KIB + len) {
            dst.copy_from_slice(chunk);
        }
        rest = next;
    }
    Some(img)
}

/// The sparse form of `img`: every KiB that is not all zeros.
pub fn sparse_from_image(img: &[u8]) -> Vec<u8> {
    let kib = u32::try_from(img.len().div_ceil(KIB)).unwrap_or(u32::MAX);
    let mut out = kib.to_le_bytes().to_vec();
    for (i, chunk) in img.chunks(KIB).enumerate() {
        if chunk.iter().any(|b| *b != 0) {
            out.extend_from_slice(&u32::try_from(i).unwrap_or(u32::MAX).to_le_bytes());
            out.extend_from_slice(chunk);
        }
    }
    out
}

/// Opens the image an input describes.
fn open(data: &[u8], read_only: bool) -> Option<(Arc<MemDevice>, Ext4)> {
    let dev = Arc::new(MemDevice::new(image_from_sparse(data)?));
    // A read-write MMP claim sleeps for seconds (its waits are the point):
    // such images are written only by the MMP tests.
    let read_only = read_only || crate::ext4::uses_mmp(&*dev).unwrap_or(false);
    let opts = OpenOptions {
        read_only,
        atime: AtimeUpdates::Relative,
        ..OpenOptions::default()
    };
    let fs = Ext4::open(dev.clone(), opts).ok()?;
    Some((dev, fs))
}

/// Target `mount_walk`: open read-only (replaying the journal in memory
/// when it needs recovery) and walk the whole tree.
pub fn mount_walk(data: &[u8]) {
    if let Some((_, fs)) = open(data, true) {
        walk(&fs);
    }
}

/// Target `replay`: open read-write, so a journal that needs recovery is
/// replayed onto the device; then walk what the replay left, unmount, and
/// open and walk the result again.
pub fn replay(data: &[u8]) {
    let Some((dev, fs)) = open(data, false) else {
        return;
    };
    walk(&fs);
    let _ = fs.shutdown();
    drop(fs);
    let again = Arc::new(MemDevice::new(dev.contents()));
    if let Ok(fs) = Ext4::open(
        again,
        OpenOptions {
            read_only: true,
            ..Default::default()
        },
    ) {
        walk(&fs);
    }
}

/// Target `rw_ops`: open read-write and run a fixed workload that touches
/// every kind of metadata (new and existing directories, files of several
/// sizes, access times, xattrs, links, renames, truncation, fallocate,
/// unlink), then fsync, unmount, and walk what was written.
pub fn rw_ops(data: &[u8]) {
    let Some((dev, fs)) = open(data, false) else {
        return;
    };
    workload(&fs);
    let _ = fs.flush();
    let _ = fs.shutdown();
    drop(fs);
    let again = Arc::new(MemDevice::new(dev.contents()));
    if let Ok(fs) = Ext4::open(
        again,
        OpenOptions {
            read_only: true,
            ..Default::default()
        },
    ) {
        walk(&fs);
    }
}

/// Target `parsers`: the first byte picks an on-disk parser, the rest is
/// its input (with a superblock first for the parsers that need one).
pub fn parsers(data: &[u8]) {
    let Some((&which, b)) = data.split_first() else {
        return;
    };
    let inodes_count = 1 << 16;
    match which % 17 {
        16 => verity_metadata(b),
        0 => {
            let _ = superblock::Superblock::parse(b, 1 << 40);
        }
        1 | 2 => {
            let (sb, rest) = b.split_at(b.len().min(1024));
            let Ok(sb) = superblock::Superblock::parse(sb, 1 << 40) else {
                return;
            };
            if which % 16 == 1 {
                let _ = inode::Inode::parse(rest, 12, &sb, 0x1234_5678, 100);
            } else {
                let _ = group_desc::GroupDesc::parse(rest, 0, &sb, 0x1234_5678);
            }
        }
        3 => {
            let fmt = dir_entry::DirentFormat {
                filetype: true,
                block_size: 4096,
                inodes_count,
            };
            for e in dir_entry::DirentIter::new(b, 0, fmt).take(4096) {
                let _ = e;
            }
            let _ = dir_entry::has_dirent_tail(b, 4096);
        }
        4 | 5 => {
            let ctx = extent::NodeCtx {
                ino: 12,
                block: (which % 16 == 5).then_some(100),
                depth: extent::header_depth(b),
                parent_lblk: None,
                first_block: 1,
                end_block: 1 << 20,
                csum_seed: (which % 16 == 5).then_some(0x1234_5678),
            };
            let _ = extent::parse_node(b, &ctx);
        }
        6 => {
            let _ = htree::parse_root_info(b, 3);
            for at in [0x20, 0x28] {
                let _ = htree::parse_entries(b, at, (b.len().saturating_sub(at)) / 8);
            }
        }
        7 | 8 => {
            let limits = xattr::XattrLimits {
                ea_inode_feature: which % 16 == 8,
                inodes_count,
            };
            let _ = xattr::parse_ibody(b, &limits);
            let _ = xattr::parse_block(b, 100, Some(0x1234_5678), &limits);
        }
        9 => {
            let _ = acl::parse(b);
            let _ = acl::from_xattr(b);
        }
        10 => {
            let _ = journal::Header::parse(b);
            let _ = journal::commit::CommitBlock::parse(b);
            if let Ok(jsb) = journal::superblock::JournalSuperblock::parse(b, 1) {
                let _ = jsb.format(4096);
            }
        }
        11 | 12 => {
            for csum in [Csum::None, Csum::V2, Csum::V3] {
                let fmt = Format {
                    block_size: b.len(),
                    is64: which % 16 == 12,
                    csum,
                    checksum_v1: false,
                    async_commit: false,
                    seed: 0x1234_5678,
                };
                let _ = journal::descriptor::DescriptorBlock::parse(b, &fmt);
                let _ = journal::revoke::RevokeBlock::parse(b, &fmt, 1);
            }
        }
        13 => {
            let _ = mmp::Mmp::parse(b, 100, Some(0x1234_5678));
            let _ = mmp::Mmp::parse(b, 100, None);
        }
        _ => {
            let _ = orphan::OrphanBlock::parse(b, 100, Some(0x1234_5678));
            let _ = orphan::OrphanBlock::parse(b, 100, None);
        }
    }
}

/// The fs-verity descriptor parser, the tree shape it gives, and the
/// descriptor's location from numbers in the input. The file size is the
/// descriptor's own data_size, so that a valid one gets past that check.
fn verity_metadata(b: &[u8]) {
    let le64 = |at: usize| {
        b.get(at..at.saturating_add(8))
            .and_then(|s| s.try_into().ok())
            .map_or(0, u64::from_le_bytes)
    };
    let i_size = le64(8);
    for fs_block in [1024, 4096, 65536] {
        if let Ok(desc) = verity::Descriptor::parse(b, 12, i_size, fs_block)
            && let Ok(geo) = verity::TreeGeometry::new(&desc, 12)
        {
            let _ = desc.digest_input();
            for level in 0..verity::MAX_LEVELS {
                for index in [0, 1, geo.data_blocks, u64::MAX] {
                    let _ = geo.hash_location(level, index);
                }
            }
        }
        let end = le64(16);
        if let Ok(pos) = verity::size_field_pos(12, end) {
            let _ = verity::descriptor_location(12, i_size, fs_block, pos, le64(24) as u32);
        }
    }
}

/// Work bounds of one walk.
const WALK_ENTRIES: usize = 20_000;
const WALK_DEPTH: u32 = 64;
const READ_PER_FILE: u64 = 4 << 20;

/// Walks the tree from the root as a file manager would: every directory
/// listed, every entry looked up and stat'd, files read, links read,
/// xattrs listed and read. Errors are answers; only a panic or a hang
/// is a finding.
pub fn walk(fs: &Ext4) {
    let _ = fs.statfs();
    let mut budget = WALK_ENTRIES;
    let mut seen = HashSet::new();
    let mut stack = vec![(ROOT_INO, 0u32)];
    let mut buf = vec![0u8; 64 << 10];
    while let Some((dir, depth)) = stack.pop() {
        if !seen.insert(dir) || depth > WALK_DEPTH {
            continue;
        }
        let mut names = Vec::new();
        let _ = fs.readdir(dir, 0, &mut |e| {
            names.push(e.name);
            names.len() < budget
        });
        for name in names {
            if budget == 0 {
                return;
            }
            budget -= 1;
            if name == b"." || name == b".." {
                continue;
            }
            let Ok(attr) = fs.lookup(dir, &name) else {
                continue;
            };
            visit(fs, attr.ino, attr.kind, &mut buf);
            if attr.kind == FileKind::Directory {
                stack.push((attr.ino, depth + 1));
            }
        }
    }
}

fn visit(fs: &Ext4, ino: Ino, kind: FileKind, buf: &mut [u8]) {
    let _ = fs.getattr(ino);
    if let Ok(names) = fs.listxattr(ino) {
        for name in names.iter().take(64) {
            let _ = fs.getxattr(ino, name);
        }
    }
    match kind {
        FileKind::RegularFile => {
            let mut off = 0u64;
            while off < READ_PER_FILE {
                match fs.read(ino, off, buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => off += n as u64,
                }
            }
            let _ = fs.seek(ino, 0, Whence::Data);
            let _ = fs.seek(ino, 0, Whence::Hole);
        }
        FileKind::Symlink => {
            let _ = fs.readlink(ino);
        }
        _ => {}
    }
}

/// The read-write workload of [`rw_ops`]; every error is an answer.
fn workload(fs: &Ext4) {
    let data = |n: usize| -> Vec<u8> { (0..n).map(|i| (i * 7 + n) as u8).collect() };
    // What the image already holds: the first entries of the root.
    let mut existing = Vec::new();
    let _ = fs.readdir(ROOT_INO, 0, &mut |e| {
        if e.name != b"." && e.name != b".." {
            existing.push((e.name, e.kind));
        }
        existing.len() < 16
    });
    let Ok(dir) = fs.mkdir(ROOT_INO, b"fz", 0o755, 0, 0, 0) else {
        return;
    };
    for (i, (name, kind)) in existing.iter().enumerate() {
        let Ok(attr) = fs.lookup(ROOT_INO, name) else {
            continue;
        };
        let _ = fs.accessed(attr.ino);
        match kind {
            FileKind::RegularFile => {
                let _ = fs.write(attr.ino, 0, &data(5000));
                let _ = fs.setattr(
                    attr.ino,
                    SetAttr {
                        size: Some(attr.size / 2),
                        ..SetAttr::default()
                    },
                );
                let _ = fs.setxattr(attr.ino, b"user.fz", &data(100), XattrFlags::default());
            }
            FileKind::Directory => {
                let _ = fs.create(attr.ino, b"fz-new", 0o100644, 0, 0, 0, 0);
                let _ = fs.rename(ROOT_INO, name, dir.ino, name, RenameFlags::default());
            }
            _ => {
                let _ = fs.unlink(ROOT_INO, name);
            }
        }
        if i % 3 == 2 {
            let _ = fs.unlink(ROOT_INO, name);
        }
    }
    for (i, size) in [0usize, 60, 5000, 70_000].into_iter().enumerate() {
        let name = format!("f{i}");
        let Ok(f) = fs.create(dir.ino, name.as_bytes(), 0o100644, 0, 0, 0, 0) else {
            continue;
        };
        let _ = fs.write(f.ino, 0, &data(size));
        let _ = fs.write(f.ino, 1 << 20, &data(100));
        let _ = fs.setxattr(f.ino, b"user.big", &data(3000), XattrFlags::default());
        let mode = FallocMode {
            keep_size: false,
            punch_hole: i == 2,
            zero_range: false,
        };
        let _ = fs.fallocate(
            f.ino,
            4096,
            8192,
            FallocMode {
                keep_size: mode.punch_hole,
                ..mode
            },
        );
        let _ = fs.link(f.ino, ROOT_INO, format!("l{i}").as_bytes());
    }
    let _ = fs.symlink(dir.ino, b"s", &data(300), 0, 0);
    let _ = fs.rename(dir.ino, b"f1", ROOT_INO, b"moved", RenameFlags::default());
    let _ = fs.unlink(dir.ino, b"f3");
    let _ = fs.mkdir(dir.ino, b"sub", 0o755, 0, 0, 0);
    let _ = fs.rmdir(dir.ino, b"sub");
    for i in 0..40 {
        let _ = fs.create(
            dir.ino,
            format!("many-{i:03}").as_bytes(),
            0o100644,
            0,
            0,
            0,
            0,
        );
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    /// fuzz/ in the repository.
    fn fuzz_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
    }

    /// A target's name (its folder under fuzz/seeds) and entry point.
    type Target = (&'static str, fn(&[u8]));

    /// Every committed seed and every input a fuzz target ever failed on
    /// (fuzz/seeds/TARGET, fuzz/regressions/TARGET) runs through its
    /// target without a panic.
    #[test]
    fn seeds_and_regressions_run_clean() {
        let targets: [Target; 4] = [
            ("parsers", super::parsers),
            ("mount_walk", super::mount_walk),
            ("rw_ops", super::rw_ops),
            ("replay", super::replay),
        ];
        let mut ran = 0;
        for (name, target) in targets {
            for kind in ["seeds", "regressions"] {
                let Ok(dir) = std::fs::read_dir(fuzz_dir().join(kind).join(name)) else {
                    continue;
                };
                for e in dir.flatten() {
                    let Ok(data) = std::fs::read(e.path()) else {
                        continue;
                    };
                    eprintln!("{name}: {}", e.path().display());
                    target(&data);
                    ran += 1;
                }
            }
        }
        assert!(ran > 0, "no seeds under {}", fuzz_dir().display());
    }

    #[test]
    fn sparse_round_trip() {
        let mut img = vec![0u8; 70 * 1024];
        img[1024 + 5] = 9;
        img[69 * 1024] = 1;
        let sparse = super::sparse_from_image(&img);
        assert_eq!(sparse.len(), 4 + 2 * (4 + 1024));
        assert_eq!(super::image_from_sparse(&sparse).unwrap(), img);
    }
}
