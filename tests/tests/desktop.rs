//! The desktop: what a user without the `safemount` client does.
//!
//! * The owner of a mount unmounts it with plain `umount MOUNTPOINT` (what
//!   file managers run) or `fusermount3 -u`: util-linux and fusermount3
//!   allow that for a FUSE mount whose `user_id=` is the caller's uid.
//!   The broker notices the worker's exit, forgets the mount (`safemount
//!   list` no longer shows it) and removes the automatic mount point; the
//!   worker has flushed, so the image is clean for e2fsck and holds what
//!   the user wrote. Another user may not unmount it.
//!
//! Root only (loop devices, mounts, test users); skips otherwise.

#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed setup step must fail the test, with its error"
)]

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use safemount_tests::broker::Broker;
use safemount_tests::image::{debugfs, fsck_clean};
use safemount_tests::loopdev::LoopDevice;
use safemount_tests::user::TestUser;
use safemount_tests::util::{self, TempDir, run_ok, wait_until};
use safemount_tests::{procfs, skip};

fn text(out: &Output) -> String {
    format!(
        "{} stdout {:?} stderr {:?}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A 32 MiB ext4 image labelled `label` whose root directory belongs to
/// `user`, so the user can write to it once mounted.
fn user_image(dir: &TempDir, label: &str, user: &TestUser) -> PathBuf {
    let img = dir.join(format!("{label}.img"));
    std::fs::File::create(&img)
        .unwrap()
        .set_len(32 << 20)
        .unwrap();
    run_ok(
        "mkfs.ext4",
        [
            "-q".as_ref(),
            "-F".as_ref(),
            "-L".as_ref(),
            label.as_ref(),
            "-E".as_ref(),
            format!("root_owner={}:{}", user.uid, user.gid).as_ref(),
            img.as_os_str(),
        ] as [&std::ffi::OsStr; 7],
    )
    .unwrap();
    img
}

/// `safemount-auto --user UID -o OPTS DEVNAME`, as udev's unit runs it
/// (but for a fixed user instead of the seat's): the mount point.
fn automount(b: &Broker, dev: &LoopDevice, user: &TestUser, opts: &str) -> PathBuf {
    let auto = util::bin("safemount-auto").unwrap();
    let out = std::process::Command::new(&auto)
        .arg("--socket")
        .arg(b.socket())
        .args(["--user", &user.uid.to_string(), "-o", opts, &dev.name()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "safemount-auto: {}\n{}",
        text(&out),
        b.log_tail(20)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// The owner unmounts with `how` (a command taking the mount point last);
/// everything after is the broker's job.
fn owner_unmounts_with(how: &[&str], user_name: &str, label: &str) {
    if !skip::require_root("mounting a loop device for a test user") {
        return;
    }
    if !Path::new(how[0]).exists() {
        skip::skip(&format!(
            "{} is not installed (scripts/install-deps.sh)",
            how[0]
        ));
        return;
    }
    let user = TestUser::get(user_name).unwrap();
    let dir = TempDir::new(label).unwrap();
    let img = user_image(&dir, label, &user);
    let dev = LoopDevice::attach(&img, false).unwrap();
    let b = Broker::start().unwrap();

    let mnt = automount(&b, &dev, &user, "rw");
    assert_eq!(
        mnt,
        Path::new("/run/media").join(&user.name).join(label),
        "automatic mount point"
    );
    let entry = b.entry_for(&mnt).unwrap().expect("listed after mount");
    assert_eq!(entry.owner_uid, Some(u64::from(user.uid)));
    let worker = entry.worker_pid.unwrap();
    let file = mnt.join("from-the-user");
    let out = user
        .run(
            "sh",
            [
                "-c",
                &format!("printf 'written before umount\\n' > '{}'", file.display()),
            ],
        )
        .unwrap();
    assert!(out.status.success(), "user write: {}", text(&out));

    // Someone else may not unmount it.
    let other = user_nobody_umount(&mnt);
    assert!(
        !other.status.success(),
        "nobody unmounted it: {}",
        text(&other)
    );
    assert!(
        procfs::is_mounted(&mnt),
        "mount gone after a refused umount"
    );

    let mut args: Vec<&str> = how[1..].to_vec();
    let shown = mnt.display().to_string();
    args.push(&shown);
    let out = user.run(how[0], &args).unwrap();
    assert!(
        out.status.success(),
        "{how:?} as {}: {}",
        user.name,
        text(&out)
    );
    assert!(!procfs::is_mounted(&mnt), "still mounted after {how:?}");

    // The broker reaps the worker, forgets the mount, removes the dir.
    let forgotten = wait_until(util::SETTLE, || {
        b.entry_for(&mnt).is_ok_and(|e| e.is_none())
    });
    assert!(forgotten, "still listed after {how:?}:\n{}", b.log_tail(20));
    assert!(
        wait_until(Duration::from_secs(10), || !procfs::pid_alive(worker)),
        "worker {worker} still alive"
    );
    assert!(
        wait_until(Duration::from_secs(10), || !mnt.exists()),
        "automatic mount point {} not removed:\n{}",
        mnt.display(),
        b.log_tail(20)
    );
    assert!(
        b.log().contains("unmounted outside safemount"),
        "no log line for the owner's unmount:\n{}",
        b.log_tail(20)
    );
    // The worker flushed before exiting: the device is free again and the
    // filesystem is clean and holds the file.
    drop(b);
    drop(dev);
    fsck_clean(&img).unwrap();
    let cat = debugfs(&img, "cat /from-the-user").unwrap();
    assert_eq!(cat, "written before umount\n");
}

/// `umount MNT` as nobody (uid 65534), who does not own it.
fn user_nobody_umount(mnt: &Path) -> Output {
    std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg("/usr/bin/umount")
        .arg(mnt)
        .env("LC_ALL", "C")
        .output()
        .unwrap()
}

#[test]
fn owner_unmounts_with_plain_umount() {
    owner_unmounts_with(&["/usr/bin/umount"], "smtest-desk-um", "desk-umount");
}

#[test]
fn owner_unmounts_with_fusermount3() {
    owner_unmounts_with(
        &["/usr/bin/fusermount3", "-u"],
        "smtest-desk-fu",
        "desk-fusermount",
    );
}

/// `safemount unmount --power-off` of a loop device: the mount goes, the
/// worker flushes and exits, the drive's block device is opened O_EXCL and
/// fsync'd, and the loop device (which has no USB or SCSI device to
/// remove) is left in place with a note. An image file has no drive to
/// power off: refused, left mounted.
///
/// Not here, for want of hardware: this kernel parses no partition tables
/// (`losetup -P` makes no loopNpM) and has no scsi_debug, and the machine
/// has no USB. So the refusal while another partition of the drive is
/// mounted (by the kernel or by safemount) and the sysfs write that powers
/// a USB or SCSI drive off are covered by broker/src/poweroff.rs's unit
/// tests, on a fake sysfs tree and mount table.
#[test]
fn power_off_flushes_and_unmounts_a_loop_device() {
    if !skip::require_root("loop devices and mounts") {
        return;
    }
    let dir = TempDir::new("poweroff").unwrap();
    let img = dir.join("drive.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(32 << 20)
        .unwrap();
    run_ok(
        "mkfs.ext4",
        ["-q", "-F", "-L", "desk-drive", img.to_str().unwrap()],
    )
    .unwrap();
    let dev = LoopDevice::attach(&img, false).unwrap();
    let b = Broker::start().unwrap();
    let mnt = dir.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    b.mount(dev.path(), &mnt, "rw").unwrap();
    std::fs::write(mnt.join("before-power-off"), b"flushed\n").unwrap();

    let worker = b.worker_pid(&mnt).unwrap();
    let said = b.unmount_power_off(&mnt).unwrap();
    assert_eq!(
        said,
        format!(
            "{} is flushed but cannot be powered off (it is neither a USB nor a SCSI drive); it can be unplugged",
            dev.path().display()
        )
    );
    assert!(!procfs::is_mounted(&mnt));
    assert!(b.entry_for(&mnt).unwrap().is_none(), "still listed");
    assert!(!procfs::pid_alive(worker), "worker {worker} still alive");
    assert!(
        b.log().contains("drive flushed after unmount"),
        "{}",
        b.log_tail(20)
    );
    fsck_clean(dev.path()).unwrap();
    assert_eq!(
        debugfs(dev.path(), "cat /before-power-off").unwrap(),
        "flushed\n"
    );

    let image = safemount_tests::image::tiny_image(dir.path()).unwrap();
    let imnt = dir.join("image-mnt");
    std::fs::create_dir_all(&imnt).unwrap();
    b.mount(&image, &imnt, "ro").unwrap();
    let refused = b.unmount_power_off(&imnt).unwrap_err();
    assert!(
        refused.status.contains('3'),
        "not an invalid request (3): {refused}"
    );
    assert!(
        refused
            .stderr
            .contains("is not a block device: there is no drive to power off"),
        "{refused}"
    );
    assert!(procfs::is_mounted(&imnt));
    b.unmount(&imnt).unwrap();
}
