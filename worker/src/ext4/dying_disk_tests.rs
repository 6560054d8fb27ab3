//! A dying disk under the engine: unreadable blocks, writes that fail or
//! are cut short, a cache flush that fails, a disk pulled out (ENODEV), a
//! host filesystem that is full (ENOSPC). What cannot be read fails for
//! the one object that needs it; a failed write turns the mount read-only
//! and every later fsync fails (never a silent success); what reached the
//! disk is a state the journal recovers, e2fsck-clean after replay; and the
//! unmount ends without hanging.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::Arc;

use super::error::Error;
use super::testutil::{Scratch, debugfs_out, fsck_clean, mkfs, pattern};
use super::types::ROOT_INO;
use super::{Ext4, OpenOptions};
use crate::io::{BlockDevice, Watched};
use crate::testdev::{Call, Failing, Fault};

const MIB_KIB: u64 = 1024;

/// A journaled image holding `a` (40 KiB) and `b` (40 KiB).
fn image(sc: &Scratch) -> std::path::PathBuf {
    let src = sc.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("a"), pattern(40 << 10, 1)).unwrap();
    std::fs::write(src.join("b"), pattern(40 << 10, 2)).unwrap();
    mkfs(
        sc,
        &src,
        &["-b", "4096", "-O", "^metadata_csum_seed"],
        16 * MIB_KIB,
    )
}

/// Byte range of the blocks debugfs lists for `what` ("/a", "<8>").
fn byte_range(img: &Path, what: &str) -> std::ops::Range<u64> {
    let out = debugfs_out(img, &format!("blocks {what}"));
    let blocks: Vec<u64> = out
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    let (lo, hi) = (blocks.iter().min().unwrap(), blocks.iter().max().unwrap());
    lo * 4096..(hi + 1) * 4096
}

fn open_rw(dev: Arc<dyn BlockDevice>) -> Ext4 {
    Ext4::open(
        dev,
        OpenOptions {
            read_only: false,
            ..Default::default()
        },
    )
    .unwrap()
}

fn read_all(fs: &Ext4, name: &[u8]) -> super::Result<Vec<u8>> {
    let ino = fs.lookup(ROOT_INO, name)?.ino;
    let mut buf = vec![0u8; 128 << 10];
    let n = fs.read(ino, 0, &mut buf)?;
    buf.truncate(n);
    Ok(buf)
}

fn create_with(fs: &Ext4, name: &str, seed: u64, len: usize) -> super::Result<()> {
    let a = fs.create(ROOT_INO, name.as_bytes(), 0o100644, 0, 0, 0, 0)?;
    fs.write(a.ino, 0, &pattern(len, seed))?;
    Ok(())
}

/// The disk as it was left, mounted again once it works: the engine
/// replays its journal, the files fsync'd before the failure read back,
/// and after a clean unmount e2fsck finds nothing to fix.
fn recovered(sc: &Scratch, contents: Vec<u8>, expect: &[(&str, u64, usize)]) {
    let dev = Arc::new(Failing::new(contents));
    let fs = open_rw(dev.clone());
    for (name, seed, len) in expect {
        let got = read_all(&fs, name.as_bytes()).unwrap();
        assert!(got == pattern(*len, *seed), "{name} after recovery");
    }
    fs.shutdown().unwrap();
    drop(fs);
    let img = sc.path().join("after.img");
    std::fs::write(&img, dev.contents()).unwrap();
    fsck_clean(&img);
}

#[test]
fn an_unreadable_block_fails_only_its_file() {
    let sc = Scratch::new("dying-read");
    let img = image(&sc);
    let dev = Arc::new(Watched::new(Failing::new(std::fs::read(&img).unwrap())));
    let fs = Ext4::open(
        dev.clone(),
        OpenOptions {
            read_only: true,
            ..Default::default()
        },
    )
    .unwrap();
    dev.inner()
        .fail(Fault::new(Call::Read, byte_range(&img, "/a"), libc::EIO));
    match read_all(&fs, b"a") {
        Err(Error::Io { .. }) => {}
        other => panic!("read of a on a bad sector: {other:?}"),
    }
    assert!(read_all(&fs, b"b").unwrap() == pattern(40 << 10, 2));
    let first = dev.first_error().unwrap();
    assert!(first.starts_with("device read at byte"), "{first}");
    assert!(dev.error_count() >= 1);
}

#[test]
fn a_lost_write_fails_every_later_fsync_and_the_journal_recovers() {
    for (tag, errno, short) in [
        ("eio", libc::EIO, false),
        ("short", libc::EIO, true),
        ("enospc", libc::ENOSPC, false),
    ] {
        let sc = Scratch::new(&format!("dying-write-{tag}"));
        let img = image(&sc);
        let journal = byte_range(&img, "<8>");
        let dev = Arc::new(Failing::new(std::fs::read(&img).unwrap()));
        let fs = open_rw(dev.clone());
        create_with(&fs, "kept", 3, 70_000).unwrap();
        fs.flush().unwrap();

        // Its data is written at once; its metadata waits for the fsync.
        create_with(&fs, "late", 4, 9_000).unwrap();
        // The journal takes the commit; every write in place fails.
        for outside in [0..journal.start, journal.end..u64::MAX] {
            dev.fail(Fault {
                short,
                ..Fault::new(Call::Write, outside, errno)
            });
        }
        match fs.flush() {
            Err(Error::Io { source, .. }) => {
                assert_eq!(source.raw_os_error(), Some(errno), "{tag}")
            }
            other => panic!("{tag}: fsync with the disk failing: {other:?}"),
        }
        assert!(fs.fault().is_some_and(|f| f.contains("failed")), "{tag}");
        for _ in 0..2 {
            assert!(
                matches!(fs.flush(), Err(Error::WriteLost)),
                "{tag}: a later fsync must fail too"
            );
        }
        assert!(matches!(
            create_with(&fs, "refused", 5, 10),
            Err(Error::ReadOnly)
        ));
        let kept = read_all(&fs, b"kept").unwrap();
        assert!(kept == pattern(70_000, 3), "{tag}: kept still reads");
        // Unmount: the disk still fails; it ends, with an error.
        assert!(fs.shutdown().is_err(), "{tag}");
        drop(fs);
        // The commit reached the journal: after replay, `late` is there.
        recovered(
            &sc,
            dev.contents(),
            &[("kept", 3, 70_000), ("late", 4, 9_000)],
        );
    }
}

#[test]
fn a_failed_journal_write_loses_only_the_unsynced_transaction() {
    let sc = Scratch::new("dying-journal");
    let img = image(&sc);
    let dev = Arc::new(Failing::new(std::fs::read(&img).unwrap()));
    let fs = open_rw(dev.clone());
    create_with(&fs, "kept", 6, 20_000).unwrap();
    fs.flush().unwrap();
    dev.fail(Fault::everywhere(Call::Write, libc::EIO));
    create_with(&fs, "lost", 7, 20_000).ok();
    assert!(fs.flush().is_err());
    assert!(matches!(fs.flush(), Err(Error::WriteLost)));
    drop(fs);
    recovered(&sc, dev.contents(), &[("kept", 6, 20_000)]);
}

#[test]
fn a_failed_cache_flush_is_a_lost_write() {
    let sc = Scratch::new("dying-flush");
    let img = image(&sc);
    let dev = Arc::new(Failing::new(std::fs::read(&img).unwrap()));
    let fs = open_rw(dev.clone());
    create_with(&fs, "x", 8, 5_000).unwrap();
    dev.fail(Fault::everywhere(Call::Flush, libc::EIO));
    assert!(fs.flush().is_err());
    dev.heal();
    assert!(
        matches!(fs.flush(), Err(Error::WriteLost)),
        "durability is unknown after a failed flush"
    );
    assert!(fs.is_read_only());
}

#[test]
fn a_pulled_disk_fails_fast_and_unmounts() {
    let sc = Scratch::new("dying-pulled");
    let img = image(&sc);
    let dev = Arc::new(Watched::new(Failing::new(std::fs::read(&img).unwrap())));
    let fs = open_rw(dev.clone());
    create_with(&fs, "x", 9, 50_000).unwrap();
    for call in [Call::Read, Call::Write, Call::Flush] {
        dev.inner().fail(Fault::everywhere(call, libc::ENODEV));
    }
    // Cached metadata may still answer; nothing reads stale or hangs.
    let _ = fs.lookup(ROOT_INO, b"b");
    if let Ok(a) = read_all(&fs, b"a") {
        assert!(a == pattern(40 << 10, 1), "what a read returns is right");
    }
    assert!(fs.flush().is_err());
    assert!(fs.shutdown().is_err());
    let first = dev.first_error().unwrap();
    assert!(first.contains("No such device"), "{first}");
}
