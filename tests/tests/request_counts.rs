//! Round trips the kernel need not make, counted by the worker's own
//! request counters (logged at unmount):
//! - a stat walk of a directory (the whole listing read first, then every
//!   entry lstat()ed, as find, du, ls -l and file managers do) costs no
//!   LOOKUP, however many READDIRPLUS batches the listing takes;
//! - a file read again after it was written, through new opens, comes
//!   from the page cache: no READ, and what a later open reads is what the
//!   last write left (the kernel's ext4 agrees, after the unmount). (A
//!   truncate is left out: the kernel drops a file's whole page cache at
//!   one itself.)

#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed setup step must fail the test, with its error"
)]

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;

use safemount_tests::broker::{Broker, kernel_standin};
use safemount_tests::kernel::KernelMount;
use safemount_tests::util::{TempDir, pattern, require_root};
use safemount_tests::{image, ops};

/// Far more than one READDIRPLUS reply holds (a page or a few of entries
/// with their attributes).
const FILES: usize = 3000;

/// Root, and a real worker to count with (not the kernel stand-in).
fn counting() -> bool {
    if !require_root() {
        return false;
    }
    if kernel_standin() {
        eprintln!("skip: the kernel stand-in has no request counters");
        return false;
    }
    true
}

#[test]
fn stat_walk_of_a_large_directory_needs_no_lookups() {
    if !counting() {
        return;
    }
    let tmp = TempDir::new("listing").unwrap();
    let src = tmp.join("src");
    std::fs::create_dir_all(src.join("d")).unwrap();
    for i in 0..FILES {
        let name = format!("d/a-file-with-a-longish-name-{i:05}");
        std::fs::write(src.join(name), vec![7u8; i % 97]).unwrap();
    }
    let img = tmp.join("fs.img");
    let cfg = image::config("defaults").unwrap();
    image::make_image(&src, &img, cfg, 64 << 20, &[], false).unwrap();

    let mnt = tmp.join("mnt");
    let broker = Broker::with_mount(&img, &mnt, "ro");
    let names: Vec<_> = std::fs::read_dir(mnt.join("d"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), FILES);
    for n in &names {
        let got = std::fs::symlink_metadata(mnt.join("d").join(n)).unwrap();
        let want = std::fs::symlink_metadata(src.join("d").join(n)).unwrap();
        assert_eq!(got.size(), want.size(), "{n:?}");
    }
    broker.unmount(&mnt).unwrap();
    // The only name looked up is "d" itself.
    let lookups = broker.logged_request_count("lookup").unwrap();
    assert!(
        lookups <= 1,
        "{lookups} LOOKUPs for a stat walk of {FILES} listed entries: \
         the listing did not carry their attributes"
    );
    assert!(
        broker.logged_request_count("readdirplus").unwrap() > 1,
        "one batch held the whole listing: the test proves nothing"
    );
}

#[test]
fn reopened_files_are_read_from_the_page_cache() {
    if !counting() {
        return;
    }
    let tmp = TempDir::new("keepcache").unwrap();
    let img = tmp.join("fs.img");
    ops::make_empty_image(&img, &[], 64 << 20).unwrap();

    let mnt = tmp.join("mnt");
    let broker = Broker::with_mount(&img, &mnt, "rw");
    let path = mnt.join("f");
    let first = pattern(1, 4 << 20);
    std::fs::write(&path, &first).unwrap();
    std::fs::File::open(&path).unwrap().sync_all().unwrap();
    for _ in 0..3 {
        assert!(std::fs::read(&path).unwrap() == first, "reread");
    }
    // A change through another open: later opens see it, not stale pages.
    let patch = pattern(2, 100_000);
    {
        let mut f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.seek(SeekFrom::Start(1_000_000)).unwrap();
        f.write_all(&patch).unwrap();
    }
    let mut want = first.clone();
    want[1_000_000..1_100_000].copy_from_slice(&patch);
    let mut got = Vec::new();
    std::fs::File::open(&path)
        .unwrap()
        .read_to_end(&mut got)
        .unwrap();
    assert!(got == want, "a reopened file shows stale pages");
    broker.unmount(&mnt).unwrap();
    let reads = broker.logged_request_count("read").unwrap();
    assert_eq!(reads, 0, "the page cache was dropped at an open");

    let kmnt = tmp.join("kmnt");
    std::fs::create_dir_all(&kmnt).unwrap();
    let k = KernelMount::mount(&img, &kmnt).unwrap();
    assert!(
        std::fs::read(kmnt.join("f")).unwrap() == want,
        "the kernel reads other bytes"
    );
    k.unmount().unwrap();
}
