//! The FUSE side of read-write mounts: the FORGET contract (an unlinked
//! inode the kernel still knows stays usable until it is forgotten, so
//! syncfs after deleting a just-written file succeeds) and the durability
//! promise of metadata write-back (every fsync'd byte survives a worker
//! killed with SIGKILL).

#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed setup step must fail the test, with its error"
)]

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use safemount_tests::broker::{Broker, kernel_standin};
use safemount_tests::image::fsck_clean;
use safemount_tests::kernel::KernelMount;
use safemount_tests::ops;
use safemount_tests::procfs;
use safemount_tests::util::{TempDir, pattern, require_root, run, run_ok, wait_until};

static SERIAL: Mutex<()> = Mutex::new(());

const MIB: u64 = 1 << 20;

/// syncfs(2) on the file system holding `p`.
fn syncfs(p: &Path) -> std::io::Result<()> {
    let f = File::open(p)?;
    // SAFETY: syncfs takes a valid open fd and touches no memory of ours.
    let r = unsafe { libc::syncfs(f.as_raw_fd()) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Writing files, deleting them at once (closed, and still open), then
/// syncfs: succeeds every time (the kernel flushes cached times of the
/// deleted inodes; the worker must still know them), the open one stays
/// readable, and after unmount the image is e2fsck clean with no inode
/// left behind.
#[test]
fn syncfs_after_unlink_of_written_files() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !require_root() {
        return;
    }
    let tmp = TempDir::new("rwfuse-syncfs").unwrap();
    let img = tmp.join("fs.img");
    ops::make_empty_image(&img, &[], 256 * MIB).unwrap();
    let mnt = tmp.join("mnt");
    fs::create_dir(&mnt).unwrap();
    let broker = Broker::start().unwrap();
    broker.mount(&img, &mnt, "rw").unwrap();
    let initial = fs::read_dir(&mnt).unwrap().count();

    for round in 0..20u64 {
        let p = mnt.join(format!("f{round}"));
        let data = pattern(round, 64 * 1024 + round as usize * 777);
        fs::write(&p, &data).unwrap();
        fs::remove_file(&p).unwrap();
        syncfs(&mnt).unwrap_or_else(|e| panic!("round {round}: syncfs after unlink: {e}"));
    }
    // Deleted while open: still readable, writable and syncable.
    let p = mnt.join("open");
    let data = pattern(99, 300_000);
    let mut f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&p)
        .unwrap();
    f.write_all(&data).unwrap();
    fs::remove_file(&p).unwrap();
    syncfs(&mnt).unwrap_or_else(|e| panic!("syncfs with an open deleted file: {e}"));
    f.write_all(b"tail").unwrap();
    f.sync_all().unwrap();
    let mut back = Vec::new();
    let mut r = File::open(format!("/proc/self/fd/{}", f.as_raw_fd())).unwrap();
    r.read_to_end(&mut back).unwrap();
    assert_eq!(back.len(), data.len() + 4);
    assert!(back.starts_with(&data) && back.ends_with(b"tail"));
    drop(r);
    drop(f);
    syncfs(&mnt).unwrap();
    // A directory with a deleted file, removed after lookups.
    fs::create_dir(mnt.join("d")).unwrap();
    fs::write(mnt.join("d/x"), b"x").unwrap();
    fs::remove_file(mnt.join("d/x")).unwrap();
    fs::remove_dir(mnt.join("d")).unwrap();
    syncfs(&mnt).unwrap();
    assert_eq!(fs::read_dir(&mnt).unwrap().count(), initial, "all gone");

    broker.unmount(&mnt).unwrap();
    if let Err(e) = fsck_clean(&img) {
        panic!("image not clean after unmount: {e:#}");
    }
    let out = run_ok("dumpe2fs", ["-h", img.to_str().unwrap()]).unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let free_inodes = |t: &str| {
        t.lines()
            .find_map(|l| l.strip_prefix("Free inodes:"))
            .map(|v| v.trim().to_string())
    };
    let fresh = tmp.join("fresh.img");
    ops::make_empty_image(&fresh, &[], 256 * MIB).unwrap();
    let out2 = run_ok("dumpe2fs", ["-h", fresh.to_str().unwrap()]).unwrap();
    let (ours, fresh) = (
        free_inodes(&text),
        free_inodes(&String::from_utf8_lossy(&out2.stdout)),
    );
    assert!(
        ours.is_some(),
        "no 'Free inodes:' line in dumpe2fs -h: {text}"
    );
    assert_eq!(ours, fresh, "every deleted inode was freed");
}

/// Write + fsync, more changes without fsync, then SIGKILL of the worker
/// (its writes already sit in the host's page cache: this tests clean-up
/// and the journal's consistency, not a power cut). Every committed
/// transaction is in the journal: e2fsck's own replay of a copy leaves a
/// filesystem with nothing to fix; safemount's read-write mount replays it
/// in place, shows every fsync'd byte, and after its unmount `e2fsck -fn`
/// is clean with no repair; the kernel reads the same bytes.
#[test]
fn fsynced_data_survives_a_killed_worker() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !require_root() {
        return;
    }
    if kernel_standin() {
        println!("kernel stand-in has no worker to kill");
        return;
    }
    let tmp = TempDir::new("rwfuse-crash").unwrap();
    let img = tmp.join("fs.img");
    ops::make_empty_image(&img, &[], 512 * MIB).unwrap();
    let mnt = tmp.join("mnt");
    fs::create_dir(&mnt).unwrap();
    let broker = Broker::start().unwrap();
    broker.mount(&img, &mnt, "rw").unwrap();

    // Durable: fsync'd files in a fsync'd directory.
    fs::create_dir(mnt.join("durable")).unwrap();
    let mut want = Vec::new();
    for i in 0..8u64 {
        let name = format!("durable/f{i}");
        let data = pattern(1000 + i, (i as usize + 1) * 700_001);
        let mut f = File::create(mnt.join(&name)).unwrap();
        f.write_all(&data).unwrap();
        f.sync_all().unwrap();
        want.push((name, data));
    }
    File::open(mnt.join("durable")).unwrap().sync_all().unwrap();
    // Not durable: changes after the last fsync.
    for i in 0..200 {
        fs::write(mnt.join(format!("late{i}")), b"late").unwrap();
    }
    fs::remove_file(mnt.join("durable/f0")).unwrap();
    fs::write(mnt.join("durable/f1"), b"overwritten, not fsync'd").unwrap();
    // f0 and f1 changed after their fsync: only f2.. are checked.
    want.drain(..2);

    let pid = broker.worker_pid(&mnt).unwrap();
    kill(Pid::from_raw(pid), Signal::SIGKILL).unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || !procfs::is_mounted(&mnt)),
        "mount still present after SIGKILL of the worker"
    );

    // e2fsck's replay of a copy: nothing else to fix.
    let copy = tmp.join("copy.img");
    fs::copy(&img, &copy).unwrap();
    let out = run("e2fsck", ["-fy", copy.to_str().unwrap()]).unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.code().is_some_and(|c| c <= 1) && !text.contains("Fix? yes"),
        "e2fsck's replay after SIGKILL needed repairs: exit {:?}\n{text}",
        out.status.code()
    );
    fsck_clean(&copy).unwrap();

    // safemount's own replay, in place, then a clean unmount.
    let mnt2 = tmp.join("mnt2");
    fs::create_dir(&mnt2).unwrap();
    broker.mount(&img, &mnt2, "rw").unwrap();
    for (name, data) in &want {
        let got = fs::read(mnt2.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(
            got == *data,
            "{name}: fsync'd contents differ after the replay"
        );
    }
    broker.unmount(&mnt2).unwrap();
    drop(broker);
    fsck_clean(&img).unwrap();
    let kmnt = tmp.join("kernel");
    fs::create_dir(&kmnt).unwrap();
    let k = KernelMount::mount(&img, &kmnt).unwrap();
    for (name, data) in &want {
        let got = fs::read(kmnt.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(
            got == *data,
            "{name}: fsync'd contents differ after the kill"
        );
    }
    k.unmount().unwrap();
}
