//! Whole-image replay tests on kernel-made journals: an image is written
//! by the kernel through a loop mount (files fsync'd, so the journal holds
//! committed transactions whose blocks are not yet in place), copied while
//! still mounted, and the copy replayed three ways:
//! - e2fsprogs (`debugfs -w -R journal_run`): every byte outside the ext4
//!   superblock (whose timestamps debugfs updates) must equal ours after
//!   our read-write replay;
//! - the kernel (loop mount of another copy): the tree it shows must equal
//!   the tree the engine shows after a read-only (in-memory) replay;
//! - `e2fsck -fn` must find our read-write replay clean, and a read-only
//!   replay must leave the image file byte-for-byte unchanged.
//!
//! They need root, loop devices and e2fsprogs, and skip with a message
//! otherwise. Deterministic corruptions of a kernel-made journal follow.

#![allow(clippy::unwrap_used)]

use std::fs::File;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use super::replay::Logged;
use super::{Journal, recover_at_open};
use crate::ext4::ondisk::journal::descriptor::DescriptorBlock;
use crate::ext4::ondisk::journal::{Header, JBD2_DESCRIPTOR_BLOCK, JournalSuperblock};
use crate::ext4::testutil::{
    Scratch, can_loop_mount, engine_tree, kernel_tree, loop_mounted, pattern, run_output,
};
use crate::ext4::{Ext4, OpenOptions};
use crate::io::{BlockDevice, FdDevice, MemDevice};

fn copy(from: &Path, to: &Path) {
    run_output(
        "cp",
        &[
            "--sparse=always",
            from.to_str().unwrap(),
            to.to_str().unwrap(),
        ],
    );
}

fn write_synced(path: &Path, data: &[u8]) {
    let mut f = File::create(path).unwrap();
    f.write_all(data).unwrap();
    f.sync_all().unwrap();
}

fn fsync_dir(path: &Path) {
    File::open(path).unwrap().sync_all().unwrap();
}

/// Files, directories, symlinks, hard links, renames, a truncate.
fn mixed(m: &Path) {
    for d in 0..6 {
        let dir = m.join(format!("dir{d}"));
        std::fs::create_dir(&dir).unwrap();
        for f in 0..25u64 {
            let len = [0usize, 1, 1000, 5000, 70_000][(f % 5) as usize];
            write_synced(&dir.join(format!("f{f}")), &pattern(len, d * 100 + f));
        }
        std::os::unix::fs::symlink(format!("f{d}"), dir.join("link")).unwrap();
        std::fs::hard_link(dir.join("f1"), dir.join("hard")).unwrap();
        std::fs::rename(dir.join("f2"), dir.join("renamed")).unwrap();
        fsync_dir(&dir);
    }
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(m.join("dir0/f4"))
        .unwrap();
    f.set_len(100).unwrap();
    f.sync_all().unwrap();
    fsync_dir(m);
}

/// One create/delete round of [`churn`].
fn churn_round(m: &Path, r: u64) {
    let dir = m.join(format!("r{r}"));
    std::fs::create_dir(&dir).unwrap();
    for f in 0..40u64 {
        write_synced(
            &dir.join(format!("file-with-a-long-name-{f:04}")),
            &pattern(300, r * 1000 + f),
        );
    }
    // A fragmented file: many extents, so an extent index block.
    let frag = dir.join("frag");
    let fh = File::create(&frag).unwrap();
    for i in 0..40u64 {
        std::os::unix::fs::FileExt::write_at(&fh, &pattern(1024, i), i * 8192).unwrap();
    }
    fh.sync_all().unwrap();
    fsync_dir(&dir);
    if r > 0 {
        std::fs::remove_dir_all(m.join(format!("r{}", r - 1))).unwrap();
        fsync_dir(m);
    }
}

/// Create/delete cycles: directories with many entries and files with
/// extent blocks are created, fsync'd, then removed, so freed metadata
/// blocks get revoke records; `rounds` rounds (many wrap a small journal).
fn churn(m: &Path, rounds: u64) {
    for r in 0..rounds {
        churn_round(m, r);
    }
    write_synced(&m.join("last"), b"the end");
    fsync_dir(m);
}

/// mkfs.ext4 `args`, loop-mount with `opts`, run `work`, copy the image
/// while it is mounted. Returns the copy (needs_recovery set).
fn kernel_image(sc: &Scratch, name: &str, args: &[&str], opts: &str, work: fn(&Path)) -> PathBuf {
    let img = sc.path().join(format!("{name}.live"));
    let mut a = vec!["-q", "-F"];
    a.extend_from_slice(args);
    a.extend_from_slice(&[img.to_str().unwrap(), "64M"]);
    let out = Command::new("mkfs.ext4")
        .args(&a)
        .env("MKE2FS_CONFIG", "/etc/mke2fs.conf")
        .output()
        .unwrap();
    assert!(out.status.success(), "mkfs {args:?}: {out:?}");
    let copy_path = sc.path().join(format!("{name}.img"));
    {
        let lp = loop_mounted(&img, &sc.path().join(format!("{name}.mnt")), opts);
        work(&lp.mnt);
        crate::ext4::testutil::snapshot_copy(&img, &copy_path);
    }
    let _ = std::fs::remove_file(&img);
    copy_path
}

fn fd_device(img: &Path, write: bool) -> Arc<dyn BlockDevice> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(write)
        .open(img)
        .unwrap();
    Arc::new(FdDevice::new(OwnedFd::from(f)).unwrap())
}

fn sha256(img: &Path) -> String {
    String::from_utf8(run_output("sha256sum", &[img.to_str().unwrap()]).stdout).unwrap()
}

/// The journal of the image at `img`, loaded through the engine.
fn journal_of(img: &Path) -> (Arc<dyn BlockDevice>, Journal) {
    let dev = fd_device(img, false);
    let fs = Ext4::open_for_journal(dev.clone()).unwrap();
    let j = Journal::load(&fs).unwrap();
    (dev, j)
}

/// Every oracle on one kernel-made image. Returns (blocks replayed,
/// bytes debugfs's replay changed).
fn check_image(sc: &Scratch, img: &Path) -> (usize, usize) {
    let name = img.file_stem().unwrap().to_str().unwrap();
    let bs = {
        let (_, j) = journal_of(img);
        j.block_size
    };
    // Our replay, as a map, for the byte comparison below.
    let (jdev, j) = journal_of(img);
    let mut pre = vec![0u8; 1024];
    jdev.read_at(&mut pre, 1024).unwrap();
    let replay = super::replay::replay(&j, pre).unwrap();
    assert!(j.jsb.s_start != 0, "{name}: the copy has nothing to replay");
    // e2fsprogs' replay.
    let theirs = sc.path().join(format!("{name}.debugfs"));
    let debugfs_replayed = debugfs_journal_run(img, &theirs);
    // Our read-write replay (replay only, then the whole engine open).
    let ours = sc.path().join(format!("{name}.ours"));
    copy(img, &ours);
    let t = Instant::now();
    recover_at_open(
        fd_device(&ours, true),
        &OpenOptions {
            read_only: false,
            ..Default::default()
        },
        true,
    )
    .unwrap();
    let took = t.elapsed();
    let (a, b, orig) = (
        std::fs::read(&theirs).unwrap(),
        std::fs::read(&ours).unwrap(),
        std::fs::read(img).unwrap(),
    );
    assert_eq!(a.len(), b.len());
    let changed = a.iter().zip(&orig).filter(|(x, y)| x != y).count();
    // debugfs reads the group descriptors and bitmaps before replaying and
    // writes its in-memory copies back when it closes the filesystem: a
    // block of those the journal holds a newer copy of does not end up as
    // the journal logged it (seen when the kernel had not yet checkpointed
    // it). A replayed block where debugfs's result is not the journal's
    // copy is left out here; below, ours must hold the journal's copy of
    // every replayed block, and e2fsck must find ours clean.
    let block_of = |v: &[u8], blk: u64| v[(blk * bs) as usize..((blk + 1) * bs) as usize].to_vec();
    let reverted: Vec<u64> = if !debugfs_replayed {
        Vec::new()
    } else {
        replay
            .blocks
            .iter()
            .filter(|(blk, src)| {
                matches!(src, Logged::Journal { .. })
                    && src
                        .contents(&*jdev, bs)
                        .is_ok_and(|want| block_of(&a, **blk) != want)
            })
            .map(|(blk, _)| *blk)
            .collect()
    };
    if !reverted.is_empty() {
        eprintln!("{name}: debugfs wrote its pre-replay copies back over blocks {reverted:?}");
    }
    let compared = if debugfs_replayed { a.len() } else { 0 };
    for (i, (x, y)) in a.iter().zip(&b).enumerate().take(compared) {
        let blk = i as u64 / bs;
        if (1024..2048).contains(&i) || reverted.contains(&blk) || x == y {
            continue;
        }
        panic!("{name}: byte {i} (block {blk}) differs from debugfs's replay: {x} vs ours {y}");
    }
    // Every replayed block holds what the journal logged for it.
    for (&blk, src) in &replay.blocks {
        if blk * bs <= 1024 && 1024 < (blk + 1) * bs {
            continue;
        }
        let Logged::Journal { .. } = src else {
            panic!()
        };
        let want = src.contents(&*jdev, bs).unwrap();
        let at = (blk * bs) as usize;
        assert_eq!(&b[at..at + bs as usize], &want[..], "{name}: block {blk}");
    }
    let fsck = Command::new("e2fsck")
        .args(["-fn", ours.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        fsck.status.success(),
        "{name}: e2fsck -fn after our replay: {}",
        String::from_utf8_lossy(&fsck.stdout)
    );
    // Read-only replay: in memory, image unchanged; tree as the kernel's.
    let before = sha256(img);
    let fs = Ext4::open(
        fd_device(img, false),
        OpenOptions {
            read_only: true,
            ..Default::default()
        },
    )
    .unwrap();
    let tree = engine_tree(&fs);
    drop(fs);
    assert_eq!(
        sha256(img),
        before,
        "{name}: a read-only replay wrote the image"
    );
    let rw_tree = engine_tree(
        &Ext4::open(
            fd_device(&ours, false),
            OpenOptions {
                read_only: true,
                ..Default::default()
            },
        )
        .unwrap(),
    );
    assert_eq!(
        tree, rw_tree,
        "{name}: read-only and read-write replays differ"
    );
    let kcopy = sc.path().join(format!("{name}.kernel"));
    copy(img, &kcopy);
    let ktree = {
        let lp = loop_mounted(&kcopy, &sc.path().join(format!("{name}.kmnt")), "rw");
        kernel_tree(&lp.mnt).unwrap_or_else(|e| panic!("{name}: {e}"))
    };
    assert_eq!(tree, ktree, "{name}: tree differs from the kernel's replay");
    eprintln!(
        "{name}: transactions {}..{}{}, {} blocks replayed, {} revoke records ({} hits), \
         debugfs changed {changed} bytes, our replay {took:?}, {} paths",
        replay.start_transaction,
        replay.end_transaction,
        if replay.log_wrapped {
            " (log wraps)"
        } else {
            ""
        },
        replay.blocks.len(),
        replay.nr_revokes,
        replay.nr_revoke_hits,
        tree.len()
    );
    for p in [theirs, ours, kcopy] {
        let _ = std::fs::remove_file(p);
    }
    (replay.blocks.len(), changed)
}

/// `debugfs -w -R journal_run` on a copy of `img` at `theirs`; whether it
/// replayed (its copy's journal is then empty). It once left a copy
/// untouched under load in CI, exit status 0 (debugfs reports command
/// failures only in its output): it is run twice, and if it still has
/// not replayed, the byte comparison with it is skipped with its output
/// printed (the kernel and e2fsck oracles still apply).
fn debugfs_journal_run(img: &Path, theirs: &Path) -> bool {
    let mut said = String::new();
    for _ in 0..2 {
        copy(img, theirs);
        let out = run_output(
            "debugfs",
            &["-w", "-R", "journal_run", theirs.to_str().unwrap()],
        );
        if journal_of(theirs).1.jsb.s_start == 0 {
            return true;
        }
        said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    eprintln!(
        "{}: skipping the comparison with debugfs, which did not replay the journal: {}",
        img.display(),
        said.trim()
    );
    false
}

fn churn8(m: &Path) {
    churn(m, 8)
}

fn churn40(m: &Path) {
    churn(m, 40)
}

/// A 1024-block journal churned until a copy's live log crosses the end
/// of the journal (the log area wraps): the copy is checked like the rest.
#[test]
fn kernel_journal_whose_log_wraps() {
    if !can_loop_mount() {
        return;
    }
    let sc = Scratch::new("jwrap");
    let img = sc.path().join("wrap.live");
    run_output(
        "mkfs.ext4",
        &[
            "-q",
            "-F",
            "-b",
            "1024",
            "-J",
            "size=1",
            img.to_str().unwrap(),
            "64M",
        ],
    );
    let copy_path = sc.path().join("small_wrap.img");
    let mut wrapped_at = None;
    {
        let lp = loop_mounted(&img, &sc.path().join("wrap.mnt"), "rw");
        for r in 0..400 {
            churn_round(&lp.mnt, r);
            crate::ext4::testutil::snapshot_copy(&img, &copy_path);
            let (_, j) = journal_of(&copy_path);
            if j.jsb.s_start != 0 && super::replay::replay(&j, vec![]).unwrap().log_wrapped {
                wrapped_at = Some(r);
                break;
            }
        }
    }
    let r = wrapped_at.expect("no copy with a wrapping log in 400 rounds");
    eprintln!("log wraps after round {r}");
    let (n, _) = check_image(&sc, &copy_path);
    assert!(n > 0);
}

#[test]
fn kernel_journals_replay_like_e2fsck_and_the_kernel() {
    if !can_loop_mount() {
        return;
    }
    let sc = Scratch::new("jreplay");
    // (name, mkfs.ext4 options, mount options, workload)
    type Case<'a> = (&'a str, &'a [&'a str], &'a str, fn(&Path));
    let cases: &[Case] = &[
        ("csum3_mixed", &[], "rw", mixed),
        ("csum3_churn", &[], "rw", churn8),
        (
            "nocsum_32bit_churn",
            &["-O", "^metadata_csum,^64bit"],
            "rw",
            churn8,
        ),
        (
            "small_wrap_1k",
            &["-b", "1024", "-J", "size=1"],
            "rw",
            churn40,
        ),
        (
            "csum_v1",
            &["-O", "^metadata_csum"],
            "rw,journal_checksum",
            mixed,
        ),
        (
            "csum_v1_async",
            &["-O", "^metadata_csum"],
            "rw,data=writeback,journal_async_commit",
            churn8,
        ),
        (
            "ext3",
            &[
                "-T",
                "ext3",
                "-O",
                "^extent,^flex_bg,^huge_file,^dir_nlink,^extra_isize,^metadata_csum,^64bit",
            ],
            "rw",
            mixed,
        ),
    ];
    for (name, args, opts, work) in cases {
        let img = kernel_image(&sc, name, args, opts, *work);
        let (n, changed) = check_image(&sc, &img);
        assert!(n > 0, "{name}: nothing replayed");
        let _ = changed;
    }
}

/// Rewrites journal block `lblk` of `img` with `f` applied.
fn edit_journal_block(img: &Path, lblk: u32, f: impl FnOnce(&mut Vec<u8>)) {
    let mut f = Some(f);
    edit_journal_blocks(img, [lblk], |_, b| {
        if let Some(f) = f.take() {
            f(b)
        }
    });
}

/// Rewrites journal blocks `lblks` of `img` with `f` applied to each.
fn edit_journal_blocks(
    img: &Path,
    lblks: impl IntoIterator<Item = u32>,
    mut f: impl FnMut(u32, &mut Vec<u8>),
) {
    let (_, j) = journal_of(img);
    let file = std::fs::OpenOptions::new().write(true).open(img).unwrap();
    for lblk in lblks {
        let mut b = j.read(lblk, j.jsb.s_maxlen).unwrap();
        f(lblk, &mut b);
        let off = j.pblk(lblk).unwrap() * j.block_size;
        std::os::unix::fs::FileExt::write_all_at(&file, &b, off).unwrap();
    }
}

/// Journal blocks of `img`'s log that are descriptor blocks of the first
/// transaction, with their parsed tags.
fn first_descriptor(img: &Path) -> (u32, DescriptorBlock) {
    let (_, j) = journal_of(img);
    let b = j.read(j.jsb.s_start, j.jsb.s_maxlen).unwrap();
    assert_eq!(
        Header::parse(&b).unwrap().h_blocktype,
        JBD2_DESCRIPTOR_BLOCK
    );
    (j.jsb.s_start, DescriptorBlock::parse(&b, &j.fmt))
}

/// Opens a MemDevice copy of `img` read-only; the result as one line.
fn open_mem(img: &Path) -> Result<usize, String> {
    let data = std::fs::read(img).unwrap();
    match Ext4::open(
        Arc::new(MemDevice::new(data)),
        OpenOptions {
            read_only: true,
            ..Default::default()
        },
    ) {
        Ok(fs) => Ok(engine_tree(&fs).len()),
        Err(e) => {
            let s = e.to_string();
            assert!(!s.contains('\n'), "not one line: {s}");
            Err(s)
        }
    }
}

#[test]
fn corrupted_kernel_journals_are_refused_or_replayed() {
    if !can_loop_mount() {
        return;
    }
    let sc = Scratch::new("jcorrupt");
    let base = kernel_image(&sc, "base", &[], "rw", mixed);
    let nocsum = kernel_image(&sc, "nocsum", &["-O", "^metadata_csum"], "rw", churn8);
    let fresh = |from: &Path, name: &str| {
        let p = sc.path().join(name);
        copy(from, &p);
        p
    };
    let expect_err = |img: &Path, what: &str| {
        let e = open_mem(img).unwrap_err();
        assert!(e.contains(what), "wanted '{what}', got: {e}");
        eprintln!("refused as expected: {e}");
    };
    let mut checked = 0;

    // Bad magic of the journal superblock.
    let img = fresh(&base, "magic");
    edit_journal_block(&img, 0, |b| b[0] ^= 0xff);
    expect_err(&img, "journal superblock: bad magic");
    checked += 1;

    // Huge s_maxlen (checksum recomputed, so only the length is wrong).
    let img = fresh(&base, "maxlen");
    edit_journal_block(&img, 0, |b| {
        let mut jsb = JournalSuperblock::parse(b, 0).unwrap();
        jsb.s_maxlen = u32::MAX;
        jsb.write(b);
    });
    expect_err(&img, "claims 4294967295 blocks");
    checked += 1;

    // s_start past the log.
    let img = fresh(&base, "start");
    edit_journal_block(&img, 0, |b| {
        let mut jsb = JournalSuperblock::parse(b, 0).unwrap();
        jsb.s_start = jsb.s_maxlen + 1000;
        jsb.write(b);
    });
    expect_err(&img, "outside the log area");
    checked += 1;

    // A data block that fails its tag checksum.
    let img = fresh(&base, "datacsum");
    let (at, d) = first_descriptor(&img);
    assert!(!d.tags.is_empty());
    edit_journal_block(&img, at + 1, |b| b[100] ^= 1);
    expect_err(&img, "bad checksum of the copy of block");
    checked += 1;

    // Tags naming a block past the end, block 0 and the journal itself
    // (descriptor checksum recomputed, data checksums unaffected).
    let (_, j) = journal_of(&base);
    let journal_block = j.pblk(5).unwrap();
    let fs_blocks = j.fs_blocks;
    for (name, target, want) in [
        (
            "pastend",
            fs_blocks + 10,
            Some("past the end of the filesystem"),
        ),
        (
            "hugeblock",
            u64::MAX,
            Some("past the end of the filesystem"),
        ),
        (
            "intojournal",
            journal_block,
            Some("overwrite the journal itself"),
        ),
        ("block0", 0, None),
    ] {
        let img = fresh(&base, name);
        let (at, mut d) = first_descriptor(&img);
        let (_, j) = journal_of(&img);
        let fmt = j.fmt;
        d.tags[0].blocknr = target;
        edit_journal_block(&img, at, |b| d.write(&fmt, b));
        match want {
            Some(w) => expect_err(&img, w),
            // Block 0 holds the superblock on a 4 KiB filesystem: the
            // replayed copy of another block lands on it and the fresh
            // open after replay must refuse (or, if it happens to be
            // valid, mount) without panicking.
            None => eprintln!("block 0 target: {:?}", open_mem(&img)),
        }
        checked += 1;
    }

    // A wrapping sequence: every sequence in the (checksum-less) journal
    // shifted so the log crosses u32::MAX; the replay must be the same.
    let img = fresh(&nocsum, "wrapseq");
    let (_, j) = journal_of(&img);
    let delta = (u32::MAX - 1).wrapping_sub(j.jsb.s_sequence);
    edit_journal_blocks(&img, j.first..j.last, |_, b| {
        if let Some(h) = Header::parse(b) {
            Header {
                h_sequence: h.h_sequence.wrapping_add(delta),
                ..h
            }
            .write(b);
        }
    });
    edit_journal_block(&img, 0, |b| {
        let mut jsb = JournalSuperblock::parse(b, 0).unwrap();
        jsb.s_sequence = jsb.s_sequence.wrapping_add(delta);
        jsb.write(b);
    });
    let want = {
        let (_, j0) = journal_of(&nocsum);
        super::replay::replay(&j0, vec![]).unwrap()
    };
    let (_, jw) = journal_of(&img);
    let got = super::replay::replay(&jw, vec![]).unwrap();
    assert_eq!(got.blocks.len(), want.blocks.len());
    assert!(got.end_transaction.wrapping_sub(got.start_transaction) >= 2);
    assert_eq!(
        got.end_transaction.wrapping_sub(got.start_transaction),
        want.end_transaction.wrapping_sub(want.start_transaction)
    );
    assert!(got.end_transaction < got.start_transaction, "did not wrap");
    assert_eq!(open_mem(&img), open_mem(&nocsum));
    checked += 1;

    // A log that never ends: every block of the log a descriptor of the
    // current transaction with one tag (so the next block is its data).
    let img = fresh(&nocsum, "loop");
    let (_, j) = journal_of(&img);
    let fmt = j.fmt;
    let seq = j.jsb.s_sequence;
    edit_journal_block(&img, 0, |b| {
        let mut jsb = JournalSuperblock::parse(b, 0).unwrap();
        jsb.s_start = jsb.s_first;
        jsb.write(b);
    });
    edit_journal_blocks(&img, (j.first..j.last).step_by(2), |_, b| {
        {
            DescriptorBlock {
                sequence: seq,
                tags: vec![crate::ext4::ondisk::journal::descriptor::Tag {
                    blocknr: 5000,
                    flags: crate::ext4::ondisk::journal::descriptor::JBD2_FLAG_LAST_TAG,
                    checksum: 0,
                    uuid: Some([0; 16]),
                }],
            }
            .write(&fmt, b)
        }
    });
    let t = Instant::now();
    expect_err(&img, "runs past its own length");
    assert!(t.elapsed().as_secs() < 30);
    checked += 1;
    eprintln!("{checked} corruptions checked");
}

/// Every j_* image of the shared corpus replays (tree equal to e2fsck's
/// replay) or is refused with one line.
#[test]
fn corpus_journals() {
    let Some(rd) = crate::ext4::testutil::corpus_entries() else {
        return;
    };
    if !crate::ext4::testutil::have(&["e2fsck"]) {
        return;
    }
    let sc = Scratch::new("jcorpus");
    let mut names: Vec<_> = rd
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("j_") && (n.ends_with(".gz") || n.ends_with(".bz2")))
        })
        .collect();
    names.sort();
    let (mut replayed, mut refused, mut matched) = (0, 0, 0);
    for p in names {
        let fname = p.file_name().unwrap().to_str().unwrap().to_owned();
        let img = sc.path().join(fname.split('.').next().unwrap());
        let image = crate::ext4::testutil::corpus_image(&p).unwrap_or_default();
        std::fs::write(&img, &image).unwrap();
        let ours = open_mem(&img);
        let theirs = sc.path().join("e2fsck.img");
        std::fs::write(&theirs, &image).unwrap();
        let fsck = Command::new("e2fsck")
            .args(["-fy", theirs.to_str().unwrap()])
            .output()
            .unwrap();
        let fsck_ok = matches!(fsck.status.code(), Some(0 | 1));
        match &ours {
            Ok(n) => {
                replayed += 1;
                // After e2fsck's replay (and repairs) the tree should be
                // the one we show, when e2fsck repaired nothing else.
                if fsck_ok {
                    let data = std::fs::read(&theirs).unwrap();
                    if let Ok(fs) = Ext4::open(
                        Arc::new(MemDevice::new(data.clone())),
                        OpenOptions {
                            read_only: true,
                            ..Default::default()
                        },
                    ) {
                        let t = engine_tree(&fs);
                        let mine = engine_tree(
                            &Ext4::open(
                                Arc::new(MemDevice::new(std::fs::read(&img).unwrap())),
                                OpenOptions {
                                    read_only: true,
                                    ..Default::default()
                                },
                            )
                            .unwrap(),
                        );
                        if t == mine {
                            matched += 1;
                        } else {
                            eprintln!(
                                "{fname}: tree differs from e2fsck's repair ({} vs {} paths)",
                                mine.len(),
                                t.len()
                            );
                        }
                    }
                }
                eprintln!(
                    "{fname}: replayed, {n} paths; e2fsck exit {:?}",
                    fsck.status.code()
                );
            }
            Err(e) => {
                refused += 1;
                eprintln!(
                    "{fname}: refused: {e}; e2fsck exit {:?}",
                    fsck.status.code()
                );
            }
        }
    }
    eprintln!("corpus: {replayed} replayed ({matched} equal to e2fsck's tree), {refused} refused");
}
