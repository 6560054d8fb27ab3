//! Reads never see another file's bytes: one file truncated or punched
//! out and rewritten over and over, others allocating (and freeing) blocks
//! beside it, and readers that bypass the page cache (O_DIRECT), so that
//! every read reaches the worker while blocks change hands. Every byte a reader sees
//! must be the first file's (or zero); then e2fsck is clean.
//!
//! `SAFEMOUNT_READ_RACE_SECS` makes the run longer than the CI smoke test
//! (by hand; shorter values are ignored).

#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed setup step must fail the test, with its error"
)]

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use safemount_tests::broker::Broker;
use safemount_tests::image::fsck_clean;
use safemount_tests::ops;
use safemount_tests::util::{TempDir, require_root};

const MIB: usize = 1 << 20;
const OURS: u8 = 0xAA;
const THEIRS: u8 = 0xBB;
const SMOKE_SECS: u64 = 8;

fn run_secs() -> u64 {
    std::env::var("SAFEMOUNT_READ_RACE_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(SMOKE_SECS)
        .max(SMOKE_SECS)
}

/// Drops `f`'s clean cached pages, so the next read asks the worker.
fn drop_cache(f: &File) {
    // SAFETY: posix_fadvise takes a valid fd and touches no memory of ours.
    let r = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(r, 0, "posix_fadvise: errno {r}");
}

/// Truncates `path` to nothing (creating it), fills it with `byte` and
/// fsyncs it: the worker frees its blocks, then allocates new ones.
fn refill(path: &Path, byte: u8) {
    let mut f = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(path)
        .unwrap();
    f.write_all(&vec![byte; MIB]).unwrap();
    f.sync_all().unwrap();
}

/// Punches out all of `path` (its size stays, so readers keep asking the
/// worker for every byte), fills it again with `byte` and fsyncs it.
fn punch_and_refill(path: &Path, byte: u8) {
    let f = OpenOptions::new().write(true).open(path).unwrap();
    let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
    // SAFETY: fallocate takes a valid fd and touches no memory of ours.
    let r = unsafe { libc::fallocate(f.as_raw_fd(), mode, 0, MIB as libc::off_t) };
    assert_eq!(r, 0, "punch: {}", std::io::Error::last_os_error());
    f.sync_all().unwrap();
    f.write_all_at(&vec![byte; MIB], 0).unwrap();
    f.sync_all().unwrap();
}

/// Runs `round` until `stop`; returns how many rounds ran.
fn until(stop: &AtomicBool, mut round: impl FnMut(u64)) -> u64 {
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        round(n);
        n += 1;
    }
    n
}

#[test]
fn reads_never_see_reused_blocks() {
    if !require_root() {
        return;
    }
    let tmp = TempDir::new("read-race").unwrap();
    let img = tmp.join("fs.img");
    // Small, so freed blocks are found again soon.
    ops::make_empty_image(&img, &[], 64 << 20).unwrap();
    let mnt = tmp.join("mnt");
    fs::create_dir(&mnt).unwrap();
    let broker = Broker::start().unwrap();
    broker.mount(&img, &mnt, "rw").unwrap();
    let ours = mnt.join("ours");
    fs::write(&ours, vec![OURS; MIB]).unwrap();

    let stop = AtomicBool::new(false);
    // Reads that returned bytes (a read of the emptied file returns none).
    let reads = AtomicU64::new(0);
    let bytes = AtomicU64::new(0);
    let foreign = AtomicU64::new(0);
    let (rewrites, allocations) = std::thread::scope(|s| {
        // Mostly punches: the size stays, so reads reach the worker.
        let truncator = s.spawn(|| {
            until(&stop, |i| match i % 4 {
                0 => refill(&ours, OURS),
                _ => punch_and_refill(&ours, OURS),
            })
        });
        // Files that take the freed blocks, written and deleted in turn.
        let allocator = s.spawn(|| {
            until(&stop, |i| {
                let theirs = mnt.join(format!("theirs{}", i % 4));
                refill(&theirs, THEIRS);
                if i % 4 == 3 {
                    for k in 0..4 {
                        fs::remove_file(mnt.join(format!("theirs{k}"))).unwrap();
                    }
                }
            })
        });
        // One reader bypasses the page cache, one drops it before each
        // read (the kernel then reads ahead through it).
        for direct in [true, false] {
            let (ours, stop) = (&ours, &stop);
            let (reads, bytes, foreign) = (&reads, &bytes, &foreign);
            s.spawn(move || {
                let flags = if direct { libc::O_DIRECT } else { 0 };
                let f = OpenOptions::new()
                    .read(true)
                    .custom_flags(flags)
                    .open(ours)
                    .unwrap();
                let mut space = vec![0u8; MIB + 4096];
                let skew = space.as_ptr().align_offset(4096);
                let buf = &mut space[skew..skew + MIB];
                while !stop.load(Ordering::Relaxed) {
                    if !direct {
                        drop_cache(&f);
                    }
                    let n = f.read_at(buf, 0).unwrap();
                    let bad = buf[..n].iter().filter(|&&b| b != OURS && b != 0).count();
                    foreign.fetch_add(bad as u64, Ordering::Relaxed);
                    reads.fetch_add(u64::from(n > 0), Ordering::Relaxed);
                    bytes.fetch_add(n as u64, Ordering::Relaxed);
                }
            });
        }
        let deadline = Instant::now() + Duration::from_secs(run_secs());
        while Instant::now() < deadline && foreign.load(Ordering::Relaxed) == 0 {
            std::thread::sleep(Duration::from_millis(100));
        }
        stop.store(true, Ordering::Relaxed);
        (truncator.join().unwrap(), allocator.join().unwrap())
    });
    let reads = reads.load(Ordering::Relaxed);
    let mib = bytes.load(Ordering::Relaxed) >> 20;
    eprintln!(
        "read race: {reads} reads ({mib} MiB), {rewrites} truncate+rewrites, {allocations} allocations"
    );
    assert_eq!(
        foreign.load(Ordering::Relaxed),
        0,
        "readers saw bytes that were not the file's"
    );
    assert!(
        reads > 0 && rewrites > 0 && allocations > 0,
        "the loops ran"
    );
    broker.unmount(&mnt).unwrap();
    if let Err(e) = fsck_clean(&img) {
        panic!("image not clean after the race: {e:#}");
    }
}
