//! fstab and automount (issue 3 part 8): `mount -t safemount`, an fstab
//! line through `mount --fstab` and `mount -a` (twice), `umount DIR` and
//! `umount IMAGE` without a helper, and
//! `safemount-auto` mounting for another user and unmounting by device.
//!
//! mount(8) finds its helper only at /sbin/mount.safemount (or
//! /usr/sbin): the test symlinks the built `mount_safemount` there for its
//! duration (refusing to replace an installed one) and removes it after.

#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed unwrap is a failed test"
)]

mod harness;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use harness::*;

const HELPER: &str = "/sbin/mount.safemount";

/// /sbin/mount.safemount -> the built helper, removed on drop.
struct InstalledHelper;

impl InstalledHelper {
    fn new() -> Option<Self> {
        if std::fs::symlink_metadata(HELPER).is_ok() {
            skip(&format!(
                "{HELPER} exists already (installed, or another test run's?); not replacing it"
            ));
            return None;
        }
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_mount_safemount"), HELPER).ok()?;
        Some(Self)
    }
}

impl Drop for InstalledHelper {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(HELPER);
    }
}

fn wait_gone(b: &Broker, mp: &Path) {
    assert!(
        wait_until(Duration::from_secs(5), || !is_mounted(mp)),
        "still mounted"
    );
    b.assert_idle();
}

#[test]
fn mount_t_safemount_fstab_and_umount() {
    if !have_root_and_fuse() {
        return;
    }
    let Some(worker) = real_worker() else { return };
    let s = Scratch::new("fstab");
    let b = Broker::start(&s, &worker);
    let img = s.ext4_image("disk.img", b"fstab");
    let mp = s.dir("mnt");
    let Some(_helper) = InstalledHelper::new() else {
        return;
    };
    let mount = |args: &[&str]| {
        Command::new("mount")
            .args(args)
            .env("SAFEMOUNT_SOCKET", &b.socket)
            .output()
            .unwrap()
    };
    let umount = || {
        let out = Command::new("umount").arg(&mp).output().unwrap();
        assert!(out.status.success(), "umount: {}", stderr(&out));
    };

    // mount -t safemount IMG DIR -o ro
    let out = mount(&[
        "-t",
        "safemount",
        img.to_str().unwrap(),
        mp.to_str().unwrap(),
        "-o",
        "ro,noatime",
    ]);
    assert!(out.status.success(), "mount: {}\n{}", stderr(&out), b.log());
    assert!(is_mounted(&mp));
    assert_eq!(std::fs::read(mp.join("hello.txt")).unwrap(), b"hello\n");
    let list = b.list_json();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["read_only"], true);
    // umount(8) with no helper: umount2, the worker exits, the broker
    // forgets the mount.
    umount();
    wait_gone(&b, &mp);

    // An fstab line with nofail, mounted by its directory.
    let fstab = s.path("fstab");
    std::fs::write(
        &fstab,
        format!(
            "# test\n{} {} safemount ro,nofail,x-test=1 0 0\n",
            img.display(),
            mp.display()
        ),
    )
    .unwrap();
    let out = mount(&["--fstab", fstab.to_str().unwrap(), mp.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "mount --fstab: {}\n{}",
        stderr(&out),
        b.log()
    );
    assert!(is_mounted(&mp));
    assert_eq!(std::fs::read(mp.join("hello.txt")).unwrap(), b"hello\n");
    umount();
    wait_gone(&b, &mp);

    // `mount -a`, twice: the mount's source is the image's path, so the
    // second finds the line mounted (with the file's name as the source
    // it mounted again, and failed: "already a mount point"). umount(8)
    // and findmnt find the mount by the image's path.
    for round in ["first", "second"] {
        let out = mount(&["-a", "-T", fstab.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "{round} mount -a: {}\n{}",
            stderr(&out),
            b.log()
        );
    }
    assert!(is_mounted(&mp));
    assert_eq!(b.list_json().len(), 1);
    let info = safemount_broker::mountpoint::find_mount(&mp, None)
        .unwrap()
        .unwrap();
    assert_eq!(info.source, img.to_str().unwrap());
    let out = Command::new("umount").arg(&img).output().unwrap();
    assert!(out.status.success(), "umount IMAGE: {}", stderr(&out));
    wait_gone(&b, &mp);

    // A refused mount: mount(8) reports the helper's failure (32).
    let out = mount(&[
        "-t",
        "safemount",
        img.to_str().unwrap(),
        mp.to_str().unwrap(),
        "-o",
        "frobnicate",
    ]);
    assert_eq!(out.status.code(), Some(32), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("unknown mount option \"frobnicate\""),
        "{}",
        stderr(&out)
    );
    b.assert_idle();
}

#[test]
fn safemount_auto_mounts_for_a_user_and_stops() {
    if !have_root_and_fuse() {
        return;
    }
    let Some(worker) = real_worker() else { return };
    let s = Scratch::new("auto");
    let b = Broker::start(&s, &worker);
    let tag = std::process::id() % 10000;
    let img = s.ext4_image("usb.img", format!("usb{tag}").as_bytes());
    let Some(lo) = Loop::new(&img, false) else {
        return;
    };
    let auto = PathBuf::from(env!("CARGO_BIN_EXE_safemount-auto"));

    let out = b.run(&auto, &["--user", "65534", &lo.name()]);
    assert!(
        out.status.success(),
        "safemount-auto: {}\n{}",
        stderr(&out),
        b.log()
    );
    let nobody = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(65534))
        .unwrap()
        .unwrap();
    let mp = Path::new("/run/media")
        .join(&nobody.name)
        .join(format!("usb{tag}"));
    assert_eq!(stdout(&out).trim(), mp.to_str().unwrap());
    assert!(is_mounted(&mp));
    let list = b.list_json();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["owner_uid"], 65534);
    assert_eq!(list[0]["source"], lo.0.to_str().unwrap());
    // The FUSE mount is the user's (user_id=65534).
    let info = safemount_broker::mountpoint::read_mountinfo()
        .unwrap()
        .into_iter()
        .find(|e| e.mount_point == mp)
        .unwrap();
    assert_eq!(info.fstype, "fuse.safemount");
    let opts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        opts.lines()
            .any(|l| l.contains(mp.to_str().unwrap()) && l.contains("user_id=65534")),
        "{opts}"
    );
    use std::os::unix::fs::MetadataExt;
    // The user's media directory: root-owned, group the user's, 0750.
    let parent = std::fs::metadata(mp.parent().unwrap()).unwrap();
    assert_eq!(parent.uid(), 0);
    assert_eq!(parent.mode() & 0o7777, 0o750);
    assert_eq!(parent.gid(), nobody.gid.as_raw());
    // The table names the owner.
    let table = stdout(&b.client(&["list"]));
    assert!(table.contains(&nobody.name), "{table}");

    // A non-root caller may not mount on behalf of someone.
    let out = Command::new("setpriv")
        .args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
        .arg(&auto)
        .args(["--user", "0", &lo.name()])
        .env("SAFEMOUNT_SOCKET", &b.socket)
        .output()
        .unwrap();
    // Refused by the broker's authorization (exit 1, "not authorized":
    // without polkit a non-root caller is refused before the on-behalf
    // check, with it by that check), not by any failure on the way there.
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).starts_with("safemount-auto: not authorized: "),
        "{}",
        stderr(&out)
    );

    // --stop unmounts by device and the mount point goes.
    let out = b.run(&auto, &["--stop", &lo.name()]);
    assert!(out.status.success(), "--stop: {}", stderr(&out));
    assert!(!is_mounted(&mp));
    assert!(!mp.exists(), "mount point left behind");
    b.assert_idle();
    // Nothing left to stop is fine.
    let out = b.run(&auto, &["--stop", &lo.name()]);
    assert!(out.status.success(), "{}", stderr(&out));
    // Bad device names are refused before anything happens.
    let out = b.run(&auto, &["--user", "65534", "../sda"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("not a kernel device name"),
        "{}",
        stderr(&out)
    );
}
