//! SEEK_DATA and SEEK_HOLE see data still in the kernel's page cache.
//!
//! With the writeback cache a file's new data sits in the kernel's page
//! cache until write-back, and the kernel asks the worker (FUSE_LSEEK)
//! without writing the file back first. A hole-aware copy of a file still
//! open for writing, or still mapped, must nevertheless find all of its
//! data. The same steps run on the kernel's own ext4 (loop device), which
//! is the oracle for every answer.

#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed setup step must fail the test, with its error"
)]

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;

use safemount_tests::broker::Broker;
use safemount_tests::kernel::KernelMount;
use safemount_tests::mapping::SharedMap;
use safemount_tests::ops;
use safemount_tests::util::{TempDir, require_root};

const MIB: u64 = 1 << 20;

/// Blocks of a page, as the kernel's page cache counts data: with smaller
/// blocks ext4 counts a dirty page whole, and the worker only the blocks
/// a page write-back does not leave as holes.
const FOUR_K: &[&str] = &["-b", "4096"];

/// (offset asked from, SEEK_DATA or SEEK_HOLE, the answer or the errno).
type Answers = Vec<(u64, &'static str, Result<i64, i32>)>;

/// Every SEEK_DATA and SEEK_HOLE answer from each 4 KiB step of `f`, up
/// to `end`: the offset, or the errno.
fn seek_map(f: &File, end: u64) -> Answers {
    let mut answers = Vec::new();
    for at in (0..=end).step_by(4096) {
        for (whence, name) in [(libc::SEEK_DATA, "data"), (libc::SEEK_HOLE, "hole")] {
            let off = i64::try_from(at).unwrap();
            // SAFETY: lseek on an fd this function borrows; it only moves
            // the file's offset.
            let r = unsafe { libc::lseek(f.as_raw_fd(), off, whence) };
            let r = if r < 0 {
                Err(std::io::Error::last_os_error().raw_os_error().unwrap())
            } else {
                Ok(r)
            };
            answers.push((at, name, r));
        }
    }
    answers
}

fn open_rw(path: &Path) -> File {
    OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(path)
        .unwrap()
}

/// Two data runs with a hole between, written and still open.
fn written_not_closed(dir: &Path) -> Answers {
    let f = open_rw(&dir.join("open"));
    f.write_all_at(&[b'a'; 8192], 0).unwrap();
    f.write_all_at(&[b'b'; 8192], MIB).unwrap();
    seek_map(&f, MIB + 16384)
}

/// A file written and closed, then reopened and extended past a hole.
fn extended_after_close(dir: &Path) -> Answers {
    let path = dir.join("extended");
    open_rw(&path).write_all_at(&[b'c'; 4096], 0).unwrap();
    let f = OpenOptions::new()
        .write(true)
        .read(true)
        .open(&path)
        .unwrap();
    f.write_all_at(&[b'd'; 4096], 2 * MIB).unwrap();
    seek_map(&f, 2 * MIB + 8192)
}

/// A sparse file given its size by ftruncate, one page of it stored
/// through a shared mapping, unmapped and still open.
fn mapped_store(dir: &Path) -> Answers {
    let len = usize::try_from(MIB).unwrap();
    let f = open_rw(&dir.join("mapped"));
    f.set_len(MIB).unwrap();
    SharedMap::new(&f, len)
        .unwrap()
        .store(65536, b"hello")
        .unwrap();
    seek_map(&f, MIB)
}

fn all_cases(dir: &Path) -> Vec<(&'static str, Answers)> {
    vec![
        ("written, not closed", written_not_closed(dir)),
        ("extended after close", extended_after_close(dir)),
        ("stored through a mapping", mapped_store(dir)),
    ]
}

#[test]
fn seek_finds_data_still_in_the_page_cache() {
    if !require_root() {
        return;
    }
    let tmp = TempDir::new("seek").unwrap();

    let kimg = tmp.join("kernel.img");
    ops::make_empty_image(&kimg, FOUR_K, 64 << 20).unwrap();
    let kmnt = tmp.join("kmnt");
    std::fs::create_dir_all(&kmnt).unwrap();
    let k = KernelMount::mount_rw(&kimg, &kmnt, "").unwrap();
    let expected = all_cases(&kmnt);
    k.unmount().unwrap();

    let img = tmp.join("fs.img");
    ops::make_empty_image(&img, FOUR_K, 64 << 20).unwrap();
    let mnt = tmp.join("mnt");
    let broker = Broker::with_mount(&img, &mnt, "rw");
    let got = all_cases(&mnt);
    broker.unmount(&mnt).unwrap();

    let mut differ = Vec::new();
    for ((case, want), (_, have)) in expected.iter().zip(&got) {
        for (w, h) in want.iter().zip(have).filter(|(w, h)| w != h) {
            differ.push(format!(
                "  {case}: SEEK_{} from {}: kernel {:?}, safemount {:?}",
                w.1, w.0, w.2, h.2
            ));
        }
    }
    assert!(
        differ.is_empty(),
        "{} answers differ from the kernel's ext4:\n{}",
        differ.len(),
        differ.join("\n")
    );
}

/// Writers that seek after every write, in more threads than the worker
/// has FUSE threads: each seek waits for a write-back the FUSE threads
/// serve, and none may wait for another. Every answer is checked against
/// the pages each thread wrote.
#[test]
fn concurrent_seeks_while_writing() {
    if !require_root() {
        return;
    }
    const THREADS: usize = 8;
    const WRITES: u64 = 400;
    let tmp = TempDir::new("seek-many").unwrap();
    let img = tmp.join("fs.img");
    ops::make_empty_image(&img, FOUR_K, 256 << 20).unwrap();
    let mnt = tmp.join("mnt");
    let broker = Broker::with_mount(&img, &mnt, "rw");

    let (done, finished) = std::sync::mpsc::channel();
    for t in 0..THREADS {
        let path = mnt.join(format!("f{t}"));
        let done = done.clone();
        std::thread::spawn(move || {
            let f = open_rw(&path);
            let mut written = std::collections::BTreeSet::new();
            let mut wrong = Vec::new();
            let mut x = t as u64 + 1;
            for _ in 0..WRITES {
                // A page among 256, by a small LCG (no rand dependency).
                x = x
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                let page = (x >> 33) % 256;
                f.write_all_at(&[b'w'; 4096], page * 4096).unwrap();
                written.insert(page);
                let from = (x >> 20) % 256;
                let want = written.range(from..).next().map(|p| p * 4096);
                // SAFETY: lseek on the fd this thread owns.
                let got =
                    unsafe { libc::lseek(f.as_raw_fd(), (from * 4096) as i64, libc::SEEK_DATA) };
                let got = u64::try_from(got).ok();
                if got != want {
                    wrong.push(format!(
                        "f{t}: SEEK_DATA from page {from}: {got:?}, written {want:?}"
                    ));
                }
            }
            done.send(wrong).unwrap();
        });
    }
    let mut wrong = Vec::new();
    for _ in 0..THREADS {
        // A hang detector, not a speed check: a deadlocked seek never ends.
        match finished.recv_timeout(std::time::Duration::from_secs(120)) {
            Ok(w) => wrong.extend(w),
            Err(_) => panic!("seeking writers still running after 120 s: the worker hangs"),
        }
    }
    broker.unmount(&mnt).unwrap();
    assert!(
        wrong.is_empty(),
        "{} wrong answers:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    safemount_tests::image::fsck_clean(&img).unwrap();
}
