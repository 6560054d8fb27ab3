//! The mtime and ctime a read-write mount shows are the ones left on disk.
//!
//! With the writeback cache the kernel keeps a regular file's mtime and
//! ctime itself (set at write(2) and at mmap stores, as ext4 does) and
//! sends them with a SETATTR; the page-cache write-back that carries the
//! data comes later and must leave them alone, or whichever of the two the
//! worker serves last decides the time on disk. Writes interleaved with
//! a chmod, and mmap stores, make the write-back come last; the kernel's
//! ext4 reads the image after the unmount.

#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed setup step must fail the test, with its error"
)]

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use safemount_tests::broker::Broker;
use safemount_tests::kernel::KernelMount;
use safemount_tests::mapping::SharedMap;
use safemount_tests::ops;
use safemount_tests::util::{TempDir, require_root};

/// (mtime, ctime) of every file in `dir`, in seconds and nanoseconds.
fn times(dir: &Path) -> BTreeMap<String, [i64; 4]> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().unwrap().is_file())
        .map(|e| {
            let m = e.metadata().unwrap();
            let name = e.file_name().into_string().unwrap();
            (name, [m.mtime(), m.mtime_nsec(), m.ctime(), m.ctime_nsec()])
        })
        .collect()
}

/// Writes, a chmod through the path, another small write, close.
fn write_chmod_write(path: &Path) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(path)
        .unwrap();
    f.write_all(&[b'x'; 50_000]).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
    f.write_all(&[b'z'; 10]).unwrap();
}

/// Stores through a shared mapping, a chmod, another store, munmap.
fn mmap_chmod_store(path: &Path) {
    const LEN: usize = 8192;
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    f.set_len(LEN as u64).unwrap();
    let map = SharedMap::new(&f, LEN).unwrap();
    map.store(0, b"hello").unwrap();
    map.sync().unwrap();
    f.set_permissions(std::fs::Permissions::from_mode(0o640))
        .unwrap();
    map.store(100, b"hello").unwrap();
}

#[test]
fn times_shown_are_times_on_disk() {
    if !require_root() {
        return;
    }
    let tmp = TempDir::new("times").unwrap();
    let img = tmp.join("fs.img");
    ops::make_empty_image(&img, &[], 64 << 20).unwrap();
    let mnt = tmp.join("mnt");
    let broker = Broker::with_mount(&img, &mnt, "rw");
    for i in 0..20 {
        write_chmod_write(&mnt.join(format!("w{i:02}")));
    }
    for i in 0..5 {
        mmap_chmod_store(&mnt.join(format!("m{i}")));
    }
    let shown = times(&mnt);
    broker.unmount(&mnt).unwrap();

    let kmnt = tmp.join("kmnt");
    std::fs::create_dir_all(&kmnt).unwrap();
    let k = KernelMount::mount(&img, &kmnt).unwrap();
    let on_disk = times(&kmnt);
    k.unmount().unwrap();
    assert_eq!(shown.len(), 25);
    let differ: Vec<_> = shown
        .iter()
        .filter(|(name, t)| on_disk.get(*name) != Some(t))
        .map(|(name, t)| format!("{name}: shown {t:?}, on disk {:?}", on_disk.get(name)))
        .collect();
    assert!(
        differ.is_empty(),
        "{} files' times on disk are not the ones the mount showed:\n{}",
        differ.len(),
        differ.join("\n")
    );
}
