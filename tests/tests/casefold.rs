//! Casefolded directories through a real read-write mount: `chattr +F`,
//! names found by any case variant, folded duplicates refused, renames and
//! unlinks by variants seen at once by every other variant (the kernel's
//! FUSE dentry cache compares bytes, so nothing stale may stay), then a
//! clean e2fsck. This kernel has no CONFIG_UNICODE, so e2fsprogs is the
//! oracle (the engine's tests compare every folded hash with debugfs).

#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed setup step must fail the test, with its error"
)]

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use safemount_tests::broker::{Broker, kernel_standin};
use safemount_tests::image::fsck_clean;
use safemount_tests::ops;
use safemount_tests::util::{TempDir, require_root};

fn chattr(args: &[&str], dir: &Path) -> i32 {
    Command::new("chattr")
        .args(args)
        .current_dir(dir)
        .status()
        .unwrap()
        .code()
        .unwrap_or(-1)
}

fn lsattr_has_f(path: &Path) -> bool {
    let out = Command::new("lsattr").arg("-d").arg(path).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .next()
        .is_some_and(|flags| flags.contains('F'))
}

fn errno<T>(r: std::io::Result<T>) -> Option<i32> {
    r.err().and_then(|e| e.raw_os_error())
}

#[test]
fn casefold_names_through_the_mount() {
    if !require_root() || kernel_standin() {
        return;
    }
    let tmp = TempDir::new("casefold").unwrap();
    let img = tmp.join("cf.img");
    ops::make_empty_image(&img, &["-O", "casefold"], 64 << 20).unwrap();
    let mnt = tmp.join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let broker = Broker::start().unwrap();
    broker.mount(&img, &mnt, "rw").unwrap();

    let cf = mnt.join("cf");
    std::fs::create_dir(&cf).unwrap();
    assert_eq!(chattr(&["+F", "cf"], &mnt), 0);
    assert!(lsattr_has_f(&cf));
    std::fs::create_dir(mnt.join("full")).unwrap();
    std::fs::write(mnt.join("full/x"), b"x").unwrap();
    assert_ne!(chattr(&["+F", "full"], &mnt), 0, "+F on a non-empty dir");
    assert!(!lsattr_has_f(&mnt.join("full")));

    std::fs::write(cf.join("Straße"), b"s").unwrap();
    std::fs::write(cf.join("MiXeD"), b"m").unwrap();
    let ino = |p: &str| std::fs::metadata(cf.join(p)).map(|m| m.ino());
    let strasse = ino("Straße").unwrap();
    for v in ["STRASSE", "strasse", "STRAẞE", "straße"] {
        assert_eq!(ino(v).unwrap(), strasse, "{v}");
    }
    assert_eq!(ino("mixed").unwrap(), ino("MiXeD").unwrap());
    // A name looked up before it exists is found once another case of it
    // is created.
    assert_eq!(errno(ino("NEW")), Some(libc::ENOENT));
    std::fs::write(cf.join("new"), b"n").unwrap();
    assert_eq!(ino("NEW").unwrap(), ino("new").unwrap());
    // A folded duplicate is the same file: O_EXCL fails, mkdir fails.
    let excl = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(cf.join("MIXED"));
    assert_eq!(errno(excl), Some(libc::EEXIST));
    assert_eq!(
        errno(std::fs::create_dir(cf.join("nEw"))),
        Some(libc::EEXIST)
    );
    // Rename and unlink by other cases: every case sees it at once.
    std::fs::rename(cf.join("mixed"), cf.join("Other")).unwrap();
    assert_eq!(errno(ino("MiXeD")), Some(libc::ENOENT));
    assert_eq!(errno(ino("MIXED")), Some(libc::ENOENT));
    assert!(ino("OTHER").is_ok());
    std::fs::remove_file(cf.join("STRASSE")).unwrap();
    for v in ["Straße", "strasse", "STRASSE"] {
        assert_eq!(errno(ino(v)), Some(libc::ENOENT), "{v}");
    }
    // Names are listed as stored.
    let mut names: Vec<String> = std::fs::read_dir(&cf)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["Other", "new"]);
    // Subdirectories inherit +F; a non-empty one cannot drop it.
    std::fs::create_dir(cf.join("Sub")).unwrap();
    assert!(lsattr_has_f(&cf.join("SUB")));
    assert_ne!(chattr(&["-F", "cf"], &mnt), 0, "-F on a non-empty dir");
    assert_eq!(chattr(&["-F", "cf/sub"], &mnt), 0);
    assert!(!lsattr_has_f(&cf.join("Sub")));

    broker.unmount(&mnt).unwrap();
    fsck_clean(&img).unwrap();
}
