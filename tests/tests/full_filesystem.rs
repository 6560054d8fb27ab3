//! write(2) onto a full filesystem fails with ENOSPC.
//!
//! ext4 reserves blocks at write(2), so a full disk fails the write
//! itself. Under the FUSE writeback cache the kernel's page cache takes
//! every write and only the write-back fails; once it has, the worker makes
//! the next write(2) of every file open for writing fail (see the worker's
//! `fuse::no_space`) until space comes free. The kernel's ext4 then reads
//! the image after the unmount.

#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed setup step must fail the test, with its error"
)]

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use safemount_tests::broker::Broker;
use safemount_tests::kernel::KernelMount;
use safemount_tests::user::TestUser;
use safemount_tests::util::{TempDir, require_root, wait_until};
use safemount_tests::{image, ops, snapshot};

const MIB: usize = 1 << 20;
/// The filesystem's size (but the nearly-full test's); the write loops
/// on it write at most 4 times that.
const FS_MIB: usize = 64;

fn create(path: &Path) -> File {
    OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(path)
        .unwrap()
}

/// Writes 1 MiB chunks to `f` until write(2) fails, at most `limit`
/// bytes: the bytes written and the error, if one came.
fn write_until_error(f: &mut File, limit: usize) -> (usize, Option<std::io::Error>) {
    let chunk = vec![0x5au8; MIB];
    let mut written = 0;
    while written < limit {
        match f.write(&chunk) {
            Ok(n) => written += n,
            Err(e) => return (written, Some(e)),
        }
    }
    (written, None)
}

fn is_enospc(e: &std::io::Error) -> bool {
    e.kind() == ErrorKind::StorageFull
}

#[test]
fn write_fails_once_the_filesystem_is_full() {
    if !require_root() {
        return;
    }
    let tmp = TempDir::new("full").unwrap();
    let img = tmp.join("fs.img");
    ops::make_empty_image(&img, &["-b", "4096"], (FS_MIB * MIB) as u64).unwrap();
    let mnt = tmp.join("mnt");
    let broker = Broker::with_mount(&img, &mnt, "rw");

    // Open before the filesystem fills: its next write must fail too.
    let mut other = create(&mnt.join("other"));
    other.write_all(&[b'a'; 4096]).unwrap();
    other.sync_all().unwrap();

    let mut big = create(&mnt.join("big"));
    let (written, err) = write_until_error(&mut big, 4 * FS_MIB * MIB);
    let err = err.unwrap_or_else(|| {
        panic!(
            "every write(2) succeeded: {} MiB onto a {FS_MIB} MiB filesystem",
            written / MIB
        )
    });
    assert!(is_enospc(&err), "write(2) failed with {err}, not ENOSPC");
    println!("write(2) failed with ENOSPC after {} MiB", written / MIB);
    // What the page cache took and could not write back is reported.
    let closed = big.sync_all();
    assert!(closed.as_ref().is_err_and(is_enospc), "fsync: {closed:?}");
    drop(big);

    let refused = other.write(&[b'b'; 4096]);
    assert!(
        refused.as_ref().is_err_and(is_enospc),
        "write to another open file: {refused:?}"
    );

    // A file opened now fails as soon as its writes reach the worker.
    let mut late = create(&mnt.join("late"));
    let (_, err) = write_until_error(&mut late, 4 * FS_MIB * MIB);
    assert!(
        err.as_ref().is_some_and(is_enospc),
        "a file created while full: {err:?}"
    );
    drop(late);
    std::fs::remove_file(mnt.join("late")).unwrap();

    // Space comes free: writes go on. The worker frees an unlinked
    // file's blocks at the kernel's FORGET, which comes asynchronously.
    let full = snapshot::statvfs(&mnt).unwrap().bfree;
    std::fs::remove_file(mnt.join("big")).unwrap();
    let freed = (0..300).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(100));
        snapshot::statvfs(&mnt).unwrap().bfree > full
    });
    assert!(freed, "statfs shows no space freed 30 s after the unlink");
    other.write_all(&[b'c'; 4096]).unwrap();
    other.sync_all().unwrap();
    drop(other);
    broker.unmount(&mnt).unwrap();

    image::fsck_clean(&img).unwrap();
    let kmnt = tmp.join("kmnt");
    std::fs::create_dir_all(&kmnt).unwrap();
    let k = KernelMount::mount(&img, &kmnt).unwrap();
    let content = std::fs::read(kmnt.join("other")).unwrap();
    let names: Vec<_> = std::fs::read_dir(&kmnt)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    k.unmount().unwrap();
    let want: Vec<u8> = [[b'a'; 4096], [b'c'; 4096]].concat();
    assert!(
        content == want,
        "the kernel reads {} bytes of other, not a then c",
        content.len()
    );
    let mut names = names;
    names.sort();
    assert_eq!(names, ["lost+found", "other"]);
}

/// The dirty page limit of the mount at `mnt`, in bytes, from its bdi.
fn dirty_limit(mnt: &Path) -> u64 {
    let dev = std::fs::metadata(mnt).unwrap().dev();
    let (major, minor) = (nix::sys::stat::major(dev), nix::sys::stat::minor(dev));
    let text = std::fs::read_to_string(format!("/sys/class/bdi/{major}:{minor}/max_bytes"))
        .unwrap_or_else(|e| panic!("bdi {major}:{minor} max_bytes (Linux 6.2): {e}"));
    text.trim().parse().unwrap()
}

/// Free bytes on the mount at `mnt`, root's reserve included.
fn free_bytes(mnt: &Path) -> u64 {
    let s = snapshot::statvfs(mnt).unwrap();
    s.bfree * s.frsize
}

/// Under the writeback cache write(2) lands in the page cache, so on a
/// filesystem about to fill it went on succeeding for as much as the
/// kernel lets the mount hold dirty (48 MiB on a 24 GiB machine) past the
/// last free block. While space is low (under 512 MiB) the broker caps the
/// mount's dirty pages at a sixteenth of the free space (32 MiB down to
/// 2 MiB), and lifts the cap when space comes back.
#[test]
fn a_nearly_full_mount_holds_little_unwritten_data() {
    if !require_root() {
        return;
    }
    // 900 MiB written leaves about 70 MiB free: a 4 MiB cap.
    const CAP: u64 = 4 << 20;
    let tmp = TempDir::new("nearly-full").unwrap();
    let img = tmp.join("fs.img");
    ops::make_empty_image(&img, &["-b", "4096"], 1 << 30).unwrap();
    let mnt = tmp.join("mnt");
    let broker = Broker::with_mount(&img, &mnt, "rw");
    let fuse_limit = dirty_limit(&mnt);
    assert!(
        fuse_limit > 2 * CAP,
        "FUSE's own dirty limit is {fuse_limit} bytes here, too small to tell the cap from it"
    );
    let within = |limit: u64| wait_until(Duration::from_secs(10), || dirty_limit(&mnt) <= limit);

    let mut big = create(&mnt.join("big"));
    let chunk = vec![0x5au8; MIB];
    for _ in 0..900 {
        big.write_all(&chunk).unwrap();
    }
    big.sync_all().unwrap();
    drop(big);
    assert!(
        within(CAP),
        "{} MiB free, and the dirty limit is still {} bytes",
        free_bytes(&mnt) >> 20,
        dirty_limit(&mnt)
    );

    std::fs::remove_file(mnt.join("big")).unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || dirty_limit(&mnt) > 2 * CAP),
        "{} MiB free, and the dirty limit is still {} bytes",
        free_bytes(&mnt) >> 20,
        dirty_limit(&mnt)
    );

    // Filling it: write(2) fails within a few MiB of the free space.
    let free = free_bytes(&mnt) as usize;
    let mut fill = create(&mnt.join("fill"));
    let (written, err) = write_until_error(&mut fill, 4 << 30);
    assert!(err.as_ref().is_some_and(is_enospc), "write(2): {err:?}");
    drop(fill);
    let past = written.saturating_sub(free);
    println!(
        "write(2) took {} MiB with {} MiB free: {} MiB past the end",
        written / MIB,
        free / MIB,
        past / MIB
    );
    assert!(
        past <= 8 * MIB,
        "write(2) took {} MiB past the last free block ({} MiB free)",
        past / MIB,
        free / MIB
    );
    broker.unmount(&mnt).unwrap();
    image::fsck_clean(&img).unwrap();
}

/// A user fills the filesystem through `mnt`, then root writes: whether
/// the user's dd failed, and root's outcome.
fn user_fills_then_root_writes(mnt: &Path, user: &TestUser) -> (bool, Result<(), String>) {
    let dir = mnt.join("user");
    std::fs::create_dir(&dir).unwrap();
    std::os::unix::fs::chown(&dir, Some(user.uid), Some(user.gid)).unwrap();
    let target = format!("of={}", dir.join("fill").display());
    let count = format!("count={}", 4 * FS_MIB);
    let dd = user
        .run(
            "dd",
            ["if=/dev/zero", target.as_str(), "bs=1M", count.as_str()],
        )
        .unwrap();
    let mut root = create(&mnt.join("root"));
    let written = root
        .write_all(&vec![0x11u8; 4 * MIB])
        .and_then(|()| root.sync_all())
        .map_err(|e| e.to_string());
    (!dd.status.success(), written)
}

/// The root-reserved blocks (`mkfs -m`) stay root's: a user filling the
/// filesystem through the page cache (whose write-back comes as root) stops
/// at them, and root can still write, as on the kernel's ext4.
#[test]
fn users_leave_the_root_reserve() {
    if !require_root() {
        return;
    }
    let user = TestUser::get("safemount-full").unwrap();
    let tmp = TempDir::new("full-reserve").unwrap();
    let mkfs = ["-b", "4096", "-m", "20"];

    let kimg = tmp.join("kernel.img");
    ops::make_empty_image(&kimg, &mkfs, (FS_MIB * MIB) as u64).unwrap();
    let kmnt = tmp.join("kmnt");
    std::fs::create_dir_all(&kmnt).unwrap();
    let k = KernelMount::mount_rw(&kimg, &kmnt, "").unwrap();
    let kernel = user_fills_then_root_writes(&kmnt, &user);
    k.unmount().unwrap();

    let img = tmp.join("fs.img");
    ops::make_empty_image(&img, &mkfs, (FS_MIB * MIB) as u64).unwrap();
    let mnt = tmp.join("mnt");
    let broker = Broker::with_mount(&img, &mnt, "rw");
    let ours = user_fills_then_root_writes(&mnt, &user);
    broker.unmount(&mnt).unwrap();
    image::fsck_clean(&img).unwrap();

    assert_eq!(kernel, (true, Ok(())), "the kernel's ext4");
    assert_eq!(
        ours, kernel,
        "(user's dd failed, root's 4 MiB write and fsync)"
    );
}
