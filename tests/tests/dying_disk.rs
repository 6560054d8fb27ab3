//! A disk that stops taking writes while mounted read-write: the image's
//! host filesystem fills up. The failing write or fsync reports an error,
//! and so does every later fsync (never a silent success); the mount turns
//! read-only and `safemount list` says why; it still unmounts and its
//! worker exits; once the host has room again, the next mount recovers
//! from the journal, every byte fsync'd before the failure is there, and
//! e2fsck finds nothing to fix. The same report reaches a broker that
//! crashed and was restarted under systemd (the fd store).

#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed setup step must fail the test, with its error"
)]

use std::fs::{self, File, OpenOptions};
use std::io::{Error, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use safemount_tests::broker::{Broker, kernel_standin};
use safemount_tests::image::fsck_clean;
use safemount_tests::ops;
use safemount_tests::procfs;
use safemount_tests::util::{TempDir, pattern, require_root, run_ok, wait_until};

const MIB: u64 = 1 << 20;

/// Writes `data` to a new file and fsyncs it.
fn write_synced(p: &Path, data: &[u8]) -> std::io::Result<()> {
    let mut f = File::create(p)?;
    f.write_all(data)?;
    f.sync_all()
}

/// A tmpfs of `size` at `at`, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Self {
        fs::create_dir_all(at).unwrap();
        run_ok(
            "mount",
            [
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size}"),
                "tmpfs",
                at.to_str().unwrap(),
            ],
        )
        .unwrap();
        Tmpfs(at.to_owned())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = run_ok("umount", ["-l", self.0.to_str().unwrap()]);
    }
}

fn free_bytes(p: &Path) -> u64 {
    let st = nix::sys::statvfs::statvfs(p).unwrap();
    st.blocks_available() as u64 * st.fragment_size() as u64
}

/// A 128 MiB image on a 48 MiB tmpfs (its host), mounted read-write by
/// `broker` at `mnt`. Dropped in field order: the broker first.
struct OnSmallHost {
    broker: Broker,
    host: Tmpfs,
    img: PathBuf,
    mnt: PathBuf,
    _tmp: TempDir,
}

impl OnSmallHost {
    fn mount(tag: &str, broker: Broker) -> Self {
        let tmp = TempDir::new(tag).unwrap();
        let host = Tmpfs::mount(&tmp.join("host"), "48m");
        let img = host.0.join("fs.img");
        ops::make_empty_image(&img, &[], 128 * MIB).unwrap();
        let mnt = tmp.join("mnt");
        fs::create_dir(&mnt).unwrap();
        broker
            .mount(&img, &mnt, "rw")
            .unwrap_or_else(|e| panic!("mount: {e}\n{}", broker.log_tail(20)));
        Self {
            broker,
            host,
            img,
            mnt,
            _tmp: tmp,
        }
    }
}

/// Leaves the host at `host_dir` 2 MiB, then writes fsync'd 1 MiB files
/// into `mnt` until one fails. Returns the failure, the files fsync'd
/// before it, and the filler file (removing it gives the room back).
fn fill_host_until_a_write_fails(host_dir: &Path, mnt: &Path) -> (Error, Vec<u64>, PathBuf) {
    let room = free_bytes(host_dir);
    assert!(room > 8 * MIB, "the host tmpfs has only {room} bytes free");
    let filler = host_dir.join("filler");
    fs::write(&filler, vec![0u8; (room - 2 * MIB) as usize]).unwrap();
    let mut synced = Vec::new();
    for i in 0..32u64 {
        match write_synced(&mnt.join(format!("f{i}")), &pattern(100 + i, MIB as usize)) {
            Ok(()) => synced.push(i),
            Err(failed) => {
                assert!(
                    matches!(
                        failed.raw_os_error(),
                        Some(libc::EIO | libc::ENOSPC | libc::EROFS)
                    ),
                    "the failure says so: {failed}"
                );
                return (failed, synced, filler);
            }
        }
    }
    panic!("the host filesystem filled up and no write or fsync failed");
}

/// Waits until `safemount list` shows an error for `mnt`, read-only;
/// returns the error.
fn reported_error(broker: &Broker, mnt: &Path) -> String {
    let mut entry = None;
    let reported = wait_until(Duration::from_secs(10), || {
        entry = broker.entry_for(mnt).unwrap();
        entry.as_ref().is_some_and(|e| e.error.is_some())
    });
    assert!(
        reported,
        "list never showed the error: {entry:?}\n{}",
        broker.log_tail(20)
    );
    let entry = entry.unwrap();
    assert_eq!(entry.read_only, Some(true), "{entry:?}");
    entry.error.unwrap()
}

#[test]
fn a_full_host_filesystem_fails_writes_loudly_and_recovers() {
    if !require_root() {
        return;
    }
    if kernel_standin() {
        safemount_tests::skip::skip("the kernel stand-in has no worker to report errors");
        return;
    }
    let setup = OnSmallHost::mount("dying-disk", Broker::start().unwrap());
    let (broker, img, mnt) = (&setup.broker, &setup.img, &setup.mnt);
    let pid = broker.worker_pid(mnt).unwrap();
    write_synced(&mnt.join("kept"), &pattern(1, 3 << 20)).unwrap();

    let (failed, synced, filler) = fill_host_until_a_write_fails(&setup.host.0, mnt);

    // Every later fsync fails too, on any file.
    for _ in 0..2 {
        let f = OpenOptions::new()
            .write(true)
            .open(mnt.join("kept"))
            .unwrap();
        let e = f
            .sync_all()
            .expect_err("an fsync after a lost write must fail");
        assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    }
    assert!(
        fs::write(mnt.join("after"), b"x").is_err(),
        "the mount is read-only after a lost write"
    );
    assert!(
        fs::read(mnt.join("kept")).unwrap() == pattern(1, 3 << 20),
        "reads go on"
    );

    // The broker knows, and says so in `safemount list`.
    let error = reported_error(broker, mnt);
    eprintln!(
        "dying disk: {} files fsync'd, then: {failed}; list says: {error}",
        synced.len()
    );
    assert!(error.contains("failed"), "{error}");
    let out = broker.client(&["list".as_ref()]).unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("ERROR") && table.contains(&error), "{table}");

    // It still unmounts, and its worker exits.
    broker
        .unmount(mnt)
        .unwrap_or_else(|e| panic!("unmount of a failed mount: {e}\n{}", broker.log_tail(20)));
    assert!(
        wait_until(Duration::from_secs(10), || !procfs::pid_alive(pid)),
        "the worker is gone"
    );

    // Room again: the next mount recovers; fsync'd bytes are all there.
    fs::remove_file(&filler).unwrap();
    broker
        .mount(img, mnt, "rw")
        .unwrap_or_else(|e| panic!("mount after the failure: {e}\n{}", broker.log_tail(20)));
    assert!(fs::read(mnt.join("kept")).unwrap() == pattern(1, 3 << 20));
    for i in synced {
        let got = fs::read(mnt.join(format!("f{i}"))).unwrap();
        assert!(
            got == pattern(100 + i, MIB as usize),
            "f{i}, fsync'd before the failure"
        );
    }
    broker.unmount(mnt).unwrap();
    if let Err(e) = fsck_clean(img) {
        panic!("image not clean after recovery: {e:#}");
    }
}

/// A broker that crashes under systemd gets the worker's log pipe and
/// health socket back from systemd's fd store when it restarts: an error
/// the adopted worker meets afterwards still reaches `safemount list`, and
/// its log lines reach the new broker's log.
#[test]
fn an_adopted_worker_still_reports_through_the_fd_store() {
    if !require_root() {
        return;
    }
    if kernel_standin() {
        safemount_tests::skip::skip("the kernel stand-in has no broker to restart");
        return;
    }
    let setup = OnSmallHost::mount("dying-disk-adopted", Broker::start_managed().unwrap());
    let (broker, mnt) = (&setup.broker, &setup.mnt);
    let pid = broker.worker_pid(mnt).unwrap();
    let kept = broker.stored_fds().unwrap();
    assert_eq!(
        kept,
        [
            format!("worker-1-{pid}-health"),
            format!("worker-1-{pid}-log")
        ],
        "the broker keeps the worker's channels in systemd's fd store"
    );

    let before = broker.log().len();
    broker.kill_and_restart().unwrap();
    let since_restart = || broker.log().get(before..).unwrap_or_default().to_owned();
    assert!(
        broker.wait_listed_with(mnt, pid),
        "not adopted:\n{}",
        since_restart()
    );
    assert!(
        since_restart().contains("with its log and health channels"),
        "{}",
        since_restart()
    );

    let (failed, _, filler) = fill_host_until_a_write_fails(&setup.host.0, mnt);
    let error = reported_error(broker, mnt);
    eprintln!("adopted worker: {failed}; list says: {error}");
    let relayed = format!("worker {pid} (");
    assert!(
        wait_until(Duration::from_secs(10), || since_restart()
            .contains(&relayed)),
        "the adopted worker's log never reached the new broker:\n{}",
        since_restart()
    );

    // The worker reports a change once; the mount's record keeps it for
    // the broker after next.
    broker.kill_and_restart().unwrap();
    let mut entry = None;
    let listed = wait_until(Duration::from_secs(10), || {
        entry = broker.entry_for(mnt).ok().flatten();
        entry.is_some()
    });
    assert!(listed, "not adopted again:\n{}", broker.log_tail(20));
    let entry = entry.unwrap();
    assert_eq!(entry.error.as_deref(), Some(error.as_str()), "{entry:?}");
    assert_eq!(entry.read_only, Some(true), "{entry:?}");

    broker
        .unmount(mnt)
        .unwrap_or_else(|e| panic!("unmount: {e}\n{}", broker.log_tail(20)));
    assert!(
        wait_until(Duration::from_secs(10), || !procfs::pid_alive(pid)),
        "the worker is gone"
    );
    assert!(
        broker.wait_fd_store_empty(),
        "systemd drops the channels of an exited worker (both ends hang up): {:?}",
        broker.stored_fds()
    );
    fs::remove_file(&filler).unwrap();
}
