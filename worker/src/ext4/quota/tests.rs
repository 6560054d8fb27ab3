//! Quota accounting against e2fsck (its pass 1 recounts every id's usage
//! and compares it with the quota files) and against a recount of our own
//! over the parsed quota trees.

#![allow(clippy::unwrap_used, clippy::arithmetic_side_effects)]

use std::collections::BTreeMap;

use super::charge::add_charge;
use super::{Delta, Deltas};
use crate::ext4::file::write::FallocMode;
use crate::ext4::inode_flags::FsXattr;
use crate::ext4::ondisk::quota::QuotaType;
use crate::ext4::testutil::*;
use crate::ext4::types::{SetAttr, XattrFlags};
use crate::ext4::{Ext4, Ino, ROOT_INO};

const QUOTA: &str = "-Equotatype=usrquota:grpquota:prjquota";

/// An image from `RwImage` with its quota files made right first:
/// mke2fs 1.47.0 -d leaves the copied files out of the usage it writes.
fn quota_image(tag: &str, args: &[&str]) -> RwImage {
    let im = RwImage::new(tag, args);
    let (code, out) = e2fsck(&["-fy"], &im.img);
    assert!(code <= 1, "e2fsck -fy: {out}");
    let dev = std::sync::Arc::new(crate::io::MemDevice::new(std::fs::read(&im.img).unwrap()));
    RwImage { dev, ..im }
}

/// Usage by (type, id) recounted from every in-use inode.
fn recount(fs: &Ext4) -> Deltas {
    let types: Vec<QuotaType> = fs.quota_files().into_iter().map(|(t, _)| t).collect();
    let mut d = Deltas::new();
    let first = fs.sb().s_first_ino;
    for ino in std::iter::once(ROOT_INO).chain(first..=fs.sb().s_inodes_count) {
        let Ok(inode) = fs.inode_any(ino) else {
            continue;
        };
        if inode.links_count == 0 {
            continue;
        }
        if let Some(c) = fs.committed_charge(ino).unwrap() {
            add_charge(&mut d, &c, 1, &types);
        }
    }
    d
}

/// The usage the quota files hold, as (type, id) -> (space, inodes).
fn stored(fs: &Ext4) -> Deltas {
    let mut d = Deltas::new();
    for (t, _) in fs.quota_files() {
        for (id, dq) in fs.quota_entries(t).unwrap() {
            if dq.curspace == 0 && dq.curinodes == 0 {
                continue;
            }
            d.insert(
                (t, id),
                Delta {
                    space: dq.curspace as i64,
                    inodes: dq.curinodes as i64,
                },
            );
        }
    }
    d
}

fn assert_usage_exact(fs: &Ext4, what: &str) {
    let want: BTreeMap<_, _> = recount(fs)
        .into_iter()
        .filter(|(_, v)| *v != Delta::default())
        .collect();
    assert_eq!(stored(fs), want, "quota usage after {what}");
}

/// Files, directories, links, xattrs and ownership changes of many ids;
/// usage is checked after each phase and by e2fsck at the end.
fn workload(args: &[&str], tag: &str, bs: u64) {
    if !have_mkfs() {
        return;
    }
    let im = quota_image(tag, args);
    let fs = im.open();
    assert!(!fs.quota_files().is_empty());
    assert_usage_exact(&fs, "mount");
    let ea_inode = args.iter().any(|a| a.contains("ea_inode"));
    let project = args.iter().any(|a| a.contains("project"));
    let mut files: Vec<(Ino, Vec<u8>)> = Vec::new();
    // Directories owned by several ids, files in them.
    let mut dirs = vec![ROOT_INO];
    for i in 0..6u32 {
        let name = format!("dir{i}");
        let a = fs
            .mkdir(
                ROOT_INO,
                name.as_bytes(),
                0o755,
                1000 + i % 3,
                2000 + i % 2,
                0o022,
            )
            .unwrap();
        dirs.push(a.ino);
    }
    assert_usage_exact(&fs, "mkdir");
    for i in 0..60u32 {
        let dir = dirs[i as usize % dirs.len()];
        let name = format!("f{i}");
        let a = fs
            .create(
                dir,
                name.as_bytes(),
                0o100644,
                0,
                1000 + i % 7,
                2000 + i % 5,
                0o022,
            )
            .unwrap();
        let len = (i as usize * 7919) % (bs as usize * 9) + 1;
        fs.write(a.ino, 0, &pattern(len, u64::from(i))).unwrap();
        if i % 4 == 0 {
            // Sparse extension far out (an extent block may follow).
            fs.write(a.ino, bs * (50 + u64::from(i)), b"tail").unwrap();
        }
        if i % 9 == 0 {
            // Many fragments: every other block, so the extent tree grows.
            for k in 0..12u64 {
                fs.write(a.ino, bs * (200 + 2 * k), b"x").unwrap();
            }
        }
        files.push((dir, name.into_bytes()));
        let _ = a;
    }
    assert_usage_exact(&fs, "create and write");
    let ino_of_file = |k: usize| fs.lookup(files[k].0, &files[k].1).unwrap().ino;
    // Truncate, punch, fallocate.
    for k in (0..files.len()).step_by(5) {
        let ino = ino_of_file(k);
        fs.setattr(
            ino,
            SetAttr {
                size: Some(bs + 10),
                ..Default::default()
            },
        )
        .unwrap();
    }
    for k in (1..files.len()).step_by(6) {
        let ino = ino_of_file(k);
        let mode = FallocMode {
            keep_size: true,
            punch_hole: true,
            zero_range: false,
        };
        let _ = fs.fallocate(ino, bs, bs * 3, mode);
        fs.fallocate(ino, bs * 20, bs * 4, FallocMode::default())
            .unwrap();
    }
    assert_usage_exact(&fs, "truncate, punch, fallocate");
    // chown, chgrp, project ids.
    for k in (2..files.len()).step_by(3) {
        let ino = ino_of_file(k);
        fs.setattr(
            ino,
            SetAttr {
                uid: Some(3000 + k as u32 % 4),
                ..Default::default()
            },
        )
        .unwrap();
    }
    for k in (0..files.len()).step_by(4) {
        let ino = ino_of_file(k);
        fs.setattr(
            ino,
            SetAttr {
                gid: Some(4000 + k as u32 % 3),
                ..Default::default()
            },
        )
        .unwrap();
        if project {
            fs.set_fsxattr(
                ino,
                FsXattr {
                    xflags: 0,
                    projid: 10 + k as u32 % 5,
                },
                true,
            )
            .unwrap();
        }
    }
    assert_usage_exact(&fs, "chown, chgrp, project");
    // Xattrs: small (in the inode), block-sized (xattr blocks, shared
    // when equal), and with ea_inode values larger than a block.
    for k in (0..files.len()).step_by(2) {
        let ino = ino_of_file(k);
        fs.setxattr(ino, b"user.small", b"v", XattrFlags::default())
            .unwrap();
        let big = vec![b'b' + (k % 3) as u8; bs as usize / 3];
        fs.setxattr(ino, b"user.big", &big, XattrFlags::default())
            .unwrap();
        if ea_inode && k % 4 == 0 {
            let huge = pattern(bs as usize * 2 + 17, k as u64);
            fs.setxattr(ino, b"user.huge", &huge, XattrFlags::default())
                .unwrap();
        }
    }
    assert_usage_exact(&fs, "setxattr");
    for k in (0..files.len()).step_by(8) {
        let ino = ino_of_file(k);
        fs.removexattr(ino, b"user.big").unwrap();
        if ea_inode && k % 4 == 0 {
            fs.removexattr(ino, b"user.huge").unwrap();
        }
    }
    // chown of files holding xattr blocks and EA values.
    for k in (0..files.len()).step_by(10) {
        let ino = ino_of_file(k);
        fs.setattr(
            ino,
            SetAttr {
                uid: Some(5000),
                gid: Some(5001),
                ..Default::default()
            },
        )
        .unwrap();
    }
    assert_usage_exact(&fs, "removexattr and chown");
    // Hard links, then unlinks (some files keep a link).
    for k in (0..files.len()).step_by(7) {
        let ino = ino_of_file(k);
        fs.link(ino, dirs[1], format!("l{k}").as_bytes()).unwrap();
    }
    for k in (0..files.len()).step_by(3) {
        let (dir, name) = &files[k];
        if let Some(ino) = fs.unlink(*dir, name).unwrap() {
            fs.release_inode(ino).unwrap();
        }
    }
    assert_usage_exact(&fs, "link and unlink");
    // A directory emptied and removed; symlinks.
    fs.mkdir(dirs[2], b"sub", 0o700, 7000, 7001, 0).unwrap();
    let sub = fs.lookup(dirs[2], b"sub").unwrap().ino;
    fs.create(sub, b"x", 0o100600, 0, 7000, 7001, 0).unwrap();
    fs.write(
        fs.lookup(sub, b"x").unwrap().ino,
        0,
        &pattern(3 * bs as usize, 9),
    )
    .unwrap();
    fs.symlink(sub, b"s", &[b'a'; 200], 7000, 7001).unwrap();
    assert_usage_exact(&fs, "sub");
    for n in [&b"x"[..], b"s"] {
        if let Some(ino) = fs.unlink(sub, n).unwrap() {
            fs.release_inode(ino).unwrap();
        }
    }
    if let Some(ino) = fs.rmdir(dirs[2], b"sub").unwrap() {
        fs.release_inode(ino).unwrap();
    }
    assert_usage_exact(&fs, "rmdir");
    // Every id of uid 7000 is gone again: its entries were removed.
    assert!(
        !fs.quota_entries(QuotaType::User)
            .unwrap()
            .contains_key(&7000)
    );
    fs.shutdown().unwrap();
    let img = im.save();
    assert_fsck_clean(img, tag);
    // And a fresh mount reads the same trees.
    let again = RwImage {
        _sc: Scratch::new(&format!("{tag}-again")),
        img: img.to_path_buf(),
        dev: std::sync::Arc::new(crate::io::MemDevice::new(std::fs::read(img).unwrap())),
    };
    let fs = again.open();
    assert_usage_exact(&fs, "remount");
    fs.shutdown().unwrap();
}

#[test]
fn usage_exact_4k() {
    workload(
        &["-b", "4096", "-O", "quota,project", QUOTA],
        "quota4k",
        4096,
    );
}

#[test]
fn usage_exact_1k() {
    workload(
        &["-b", "1024", "-O", "quota,project", QUOTA],
        "quota1k",
        1024,
    );
}

#[test]
fn usage_exact_ea_inode() {
    workload(
        &["-b", "4096", "-O", "quota,project,ea_inode", QUOTA],
        "quotaea",
        4096,
    );
}

/// Bigalloc: i_blocks and the usage charged count whole clusters, as
/// e2fsck's recount does.
#[test]
fn usage_exact_bigalloc() {
    workload(
        &[
            "-b",
            "4096",
            "-C",
            "16384",
            "-O",
            "quota,project,bigalloc",
            QUOTA,
        ],
        "quotabig",
        4096,
    );
}

/// Only user and group quota (the mkfs default for -O quota): no
/// project file.
#[test]
fn usage_exact_usr_grp_only() {
    workload(&["-b", "4096", "-O", "quota"], "quotaug", 4096);
}

/// Many ids: the tree grows new tree and data blocks (the file grows
/// past its first fs block), then shrinks again as ids disappear, with
/// the free-block and free-entry lists reused.
#[test]
fn many_ids_grow_and_shrink_the_tree() {
    if !have_mkfs() {
        return;
    }
    for bs in [1024u64, 4096] {
        let tag = format!("quotamany{bs}");
        let im = quota_image(
            &tag,
            &[
                "-b",
                &bs.to_string(),
                "-O",
                "quota,project",
                QUOTA,
                "-N",
                "2048",
            ],
        );
        let fs = im.open();
        let mut names = Vec::new();
        for i in 0..300u32 {
            // Ids spread over all four tree levels.
            let uid = i.wrapping_mul(0x0101_0107) % 0xFFFF_0000;
            let name = format!("u{i}");
            let a = fs
                .create(ROOT_INO, name.as_bytes(), 0o100644, 0, uid, i, 0)
                .unwrap();
            fs.write(a.ino, 0, b"data").unwrap();
            names.push(name);
        }
        assert_usage_exact(&fs, "300 ids");
        let inode = fs.inode_any(fs.sb().s_usr_quota_inum).unwrap();
        assert!(
            inode.size > bs * 2,
            "the user quota file grew: {}",
            inode.size
        );
        for (i, name) in names.iter().enumerate() {
            if i % 3 != 0 {
                let ino = fs.unlink(ROOT_INO, name.as_bytes()).unwrap().unwrap();
                fs.release_inode(ino).unwrap();
            }
        }
        assert_usage_exact(&fs, "200 ids gone");
        // Ids that went come back (their old paths must be gone).
        for i in (1..300u32).step_by(3) {
            let uid = i.wrapping_mul(0x0101_0107) % 0xFFFF_0000;
            let name = format!("w{i}");
            fs.create(ROOT_INO, name.as_bytes(), 0o100644, 0, uid, i, 0)
                .unwrap();
        }
        assert_usage_exact(&fs, "100 ids back");
        for i in 0..120u32 {
            let name = format!("v{i}");
            fs.create(
                ROOT_INO,
                name.as_bytes(),
                0o100644,
                0,
                0x7000_0000 + i,
                0,
                0,
            )
            .unwrap();
        }
        assert_usage_exact(&fs, "120 new ids");
        fs.shutdown().unwrap();
        assert_fsck_clean(im.save(), &tag);
    }
}

/// A quota file that fails its checks (hostile input): the mount serves
/// read-only, with nothing written, and the check names the problem.
#[test]
fn corrupt_quota_file_serves_read_only() {
    if !have_mkfs() {
        return;
    }
    let im = RwImage::new("quotabad", &["-b", "1024", "-O", "quota", QUOTA]);
    // 1 KiB blocks: quota block n is the file's block n. 0 header, 1 the
    // root, 2..4 the tree path of id 0, 5 its data block.
    let at = |n: u64| bmap(&im.img, "<3>", n) as usize * 1024;
    let le = |v: u32| v.to_le_bytes();
    // (what, [(byte offset in the image, new bytes)])
    type Patch = (usize, [u8; 4]);
    let cases: Vec<(&str, Vec<Patch>)> = vec![
        ("bad magic", vec![(at(0), le(0x1234))]),
        ("block count past the file", vec![(at(0) + 20, le(0xFFFF))]),
        ("reference to the root", vec![(at(1), le(1))]),
        ("reference past the file", vec![(at(1), le(9999))]),
        ("tree cycle", vec![(at(3), le(2))]),
        (
            "free-entry list loop",
            vec![(at(0) + 28, le(5)), (at(5), le(5))],
        ),
        ("entry count", vec![(at(5) + 8, le(3))]),
    ];
    for (what, patches) in cases {
        let mut d = im.dev.contents();
        for (off, bytes) in patches {
            d[off..off + 4].copy_from_slice(&bytes);
        }
        let dev = std::sync::Arc::new(crate::io::MemDevice::new(d.clone()));
        let fs = open_on(dev.clone(), false);
        assert!(
            fs.is_read_only(),
            "{what}: a corrupt quota file forces read-only"
        );
        assert!(matches!(fs.begin(), Err(crate::ext4::Error::ReadOnly)));
        fs.shutdown().unwrap();
        assert!(dev.contents() == d, "{what}: nothing was written");
    }
    // The untouched image mounts read-write.
    let fs = open_on(im.dev.clone(), false);
    assert!(!fs.is_read_only());
    fs.shutdown().unwrap();
}

/// A 4 KiB-block quota image opened with user and group limits enforced,
/// uid 1000's limits set to `limits`.
fn limited_image(tag: &str, limits: crate::ext4::QuotaLimits) -> (RwImage, Ext4) {
    let im = quota_image(tag, &["-b", "4096", "-O", "quota,project", QUOTA]);
    let fs = Ext4::open(
        im.dev.clone(),
        crate::ext4::OpenOptions {
            read_only: false,
            quota_limits: [true, true, false],
            ..Default::default()
        },
    )
    .unwrap();
    fs.set_quota_limits(QuotaType::User, 1000, limits).unwrap();
    (im, fs)
}

/// Limits enforced for a limited caller: the inode hard limit refuses a
/// create, a write stops short at the block hard limit then fails, root
/// is exempt; usage stays exact and e2fsck clean.
#[test]
fn limits_refuse_with_edquot() {
    use super::limits::CallerScope;
    use crate::ext4::Error;
    if !have_mkfs() {
        return;
    }
    // 40 KiB hard, 3 inodes hard for uid 1000.
    let l = crate::ext4::QuotaLimits {
        block_hard_kib: 40,
        inode_hard: 3,
        ..Default::default()
    };
    let (im, fs) = limited_image("quotalim", l);
    let _scope = CallerScope::new(1000);
    let mut inos = Vec::new();
    for i in 0..3 {
        let name = format!("q{i}");
        inos.push(
            fs.create(ROOT_INO, name.as_bytes(), 0o100644, 0, 1000, 1000, 0)
                .unwrap()
                .ino,
        );
    }
    let e = fs
        .create(ROOT_INO, b"q3", 0o100644, 0, 1000, 1000, 0)
        .unwrap_err();
    assert!(matches!(e, Error::QuotaExceeded), "{e:?}");
    assert!(fs.lookup(ROOT_INO, b"q3").is_err(), "nothing was created");
    // 10 blocks of 4 KiB fit; a 64 KiB write is cut to 40 KiB.
    let n = fs.write(inos[0], 0, &pattern(65536, 1)).unwrap();
    assert_eq!(n, 40960);
    let e = fs.write(inos[1], 0, b"x").unwrap_err();
    assert!(matches!(e, Error::QuotaExceeded), "{e:?}");
    // Rewriting allocated blocks needs no quota.
    assert_eq!(fs.write(inos[0], 0, b"again").unwrap(), 5);
    // Root is exempt.
    {
        let _root = CallerScope::new(0);
        assert_eq!(fs.write(inos[1], 0, &[1; 8192]).unwrap(), 8192);
    }
    assert_usage_exact(&fs, "limits");
    let u = fs.quota_entries(QuotaType::User).unwrap()[&1000];
    assert_eq!((u.curspace, u.curinodes), (49152, 3));
    drop(_scope);
    fs.shutdown().unwrap();
    assert_fsck_clean(im.save(), "limits");
}

/// A write into preallocated (unwritten) blocks takes no new data blocks,
/// but marking them written may split the extent and need a tree block:
/// that is never refused for quota once the data is on disk (the kernel's
/// dquot_alloc_block_nofail), even at the hard limit; usage stays exact.
#[test]
fn marking_written_is_never_refused_by_quota() {
    use super::limits::CallerScope;
    if !have_mkfs() {
        return;
    }
    let l = crate::ext4::QuotaLimits {
        block_hard_kib: 40,
        ..Default::default()
    };
    let (im, fs) = limited_image("quotaconv", l);
    let _scope = CallerScope::new(1000);
    let f = fs
        .create(ROOT_INO, b"pre", 0o100644, 0, 1000, 1000, 0)
        .unwrap()
        .ino;
    // All 10 blocks the limit allows, unwritten, in one extent.
    fs.fallocate(f, 0, 40960, FallocMode::default()).unwrap();
    // Written blocks at 2, 4 and 6: the fifth extent needs a leaf block.
    for b in [2u64, 4, 6] {
        assert_eq!(fs.write(f, b * 4096, &[0x5a; 4096]).unwrap(), 4096);
    }
    let mut buf = vec![0u8; 40960];
    assert_eq!(fs.read(f, 0, &mut buf).unwrap(), 40960);
    for b in 0..10usize {
        let want = if [2, 4, 6].contains(&b) { 0x5a } else { 0 };
        assert!(
            buf[b * 4096..(b + 1) * 4096].iter().all(|&x| x == want),
            "block {b}"
        );
    }
    let u = fs.quota_entries(QuotaType::User).unwrap()[&1000];
    assert_eq!(u.curspace, 11 * 4096, "ten data blocks and the leaf");
    assert_usage_exact(&fs, "conversion at the limit");
    drop(_scope);
    fs.shutdown().unwrap();
    assert_fsck_clean(im.save(), "conversion at the limit");
}
