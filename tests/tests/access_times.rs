//! Access times, as the kernel's ext4 keeps them under `relatime` (the
//! default), `noatime`, and `strictatime` with `nodiratime`. The same steps run on a kernel mount and on a
//! safemount mount of twin images; after each step, whether the step's
//! file moved its atime must agree. Then the image must be clean and
//! hold the atimes the mount showed.

#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed setup step must fail the test, with its error"
)]

use std::fs::{File, FileTimes, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime};

use safemount_tests::broker::Broker;
use safemount_tests::image::fsck_clean;
use safemount_tests::kernel::KernelMount;
use safemount_tests::ops;
use safemount_tests::util::{TempDir, require_root, step_differences};

/// Before each access, so that "now" is a later clock tick than the
/// change or access before it (the kernel's clock is coarse).
const TICK: Duration = Duration::from_millis(30);

fn atime(path: &Path) -> (i64, i64) {
    let m = std::fs::symlink_metadata(path).unwrap();
    (m.atime(), m.atime_nsec())
}

/// The files the steps read: "f", "n" (chattr +A), "d/x" and "l" -> "f".
fn make_files(root: &Path) {
    std::fs::write(root.join("f"), b"hello\n").unwrap();
    std::fs::write(root.join("n"), b"not timed\n").unwrap();
    let out = Command::new("chattr")
        .arg("+A")
        .arg(root.join("n"))
        .output()
        .unwrap();
    assert!(out.status.success(), "chattr +A: {out:?}");
    std::fs::create_dir(root.join("d")).unwrap();
    std::fs::write(root.join("d/x"), b"x").unwrap();
    std::os::unix::fs::symlink("f", root.join("l")).unwrap();
}

/// What a step does to its file first.
#[derive(Clone, Copy)]
enum Change {
    Append,
    AtimeAnHourAhead,
}

/// The read whose effect on the file's atime is recorded.
#[derive(Clone, Copy)]
enum Access {
    Read,
    ReadNoatime,
    List,
    Readlink,
}

const STEPS: [(&str, &str, Option<Change>, Access); 10] = [
    ("read f after it was written", "f", None, Access::Read),
    ("read f again", "f", None, Access::Read),
    ("read n (chattr +A)", "n", None, Access::Read),
    ("list d after a name was added", "d", None, Access::List),
    ("list d again", "d", None, Access::List),
    ("readlink l after it was made", "l", None, Access::Readlink),
    (
        "append to f, read it",
        "f",
        Some(Change::Append),
        Access::Read,
    ),
    (
        "append to f, read it with O_NOATIME",
        "f",
        Some(Change::Append),
        Access::ReadNoatime,
    ),
    ("read f without O_NOATIME", "f", None, Access::Read),
    (
        "set f's atime an hour ahead, read it",
        "f",
        Some(Change::AtimeAnHourAhead),
        Access::Read,
    ),
];

fn change(path: &Path, change: Change) {
    match change {
        Change::Append => {
            let mut f = OpenOptions::new().append(true).open(path).unwrap();
            f.write_all(b"more\n").unwrap();
        }
        Change::AtimeAnHourAhead => {
            let ahead = SystemTime::now() + Duration::from_secs(3600);
            File::open(path)
                .unwrap()
                .set_times(FileTimes::new().set_accessed(ahead))
                .unwrap();
        }
    }
}

fn access(path: &Path, access: Access) {
    match access {
        Access::Read => {
            File::open(path)
                .unwrap()
                .read_to_end(&mut Vec::new())
                .unwrap();
        }
        Access::ReadNoatime => {
            let mut file = OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOATIME)
                .open(path)
                .unwrap();
            file.read_to_end(&mut Vec::new()).unwrap();
        }
        Access::List => {
            let _ = std::fs::read_dir(path).unwrap().count();
        }
        Access::Readlink => {
            std::fs::read_link(path).unwrap();
        }
    }
}

/// One line per step: its name and whether its access moved the atime.
fn run_steps(root: &Path) -> Vec<String> {
    make_files(root);
    STEPS
        .iter()
        .map(|&(name, file, first, how)| {
            let path = root.join(file);
            if let Some(c) = first {
                change(&path, c);
            }
            std::thread::sleep(TICK);
            let before = atime(&path);
            access(&path, how);
            let moved = atime(&path) != before;
            format!("{name}: atime {}", if moved { "moved" } else { "kept" })
        })
        .collect()
}

/// The files whose atimes the mount shows and the disk must hold.
const SHOWN: [&str; 4] = ["f", "n", "d", "l"];

/// Runs the steps on the kernel's ext4 mounted with `kernel_opts` and on
/// safemount mounted with `safemount_opts`; returns the kernel's lines.
fn compare(tag: &str, kernel_opts: &str, safemount_opts: &str) -> Vec<String> {
    let tmp = TempDir::new(tag).unwrap();
    let kernel_img = tmp.join("kernel.img");
    let img = tmp.join("safemount.img");
    ops::make_empty_image(&kernel_img, &[], 32 << 20).unwrap();
    std::fs::copy(&kernel_img, &img).unwrap();

    let kmnt = tmp.join("kmnt");
    std::fs::create_dir_all(&kmnt).unwrap();
    let k = KernelMount::mount_rw_with(&kernel_img, &kmnt, kernel_opts).unwrap();
    let theirs = run_steps(&kmnt);
    k.unmount().unwrap();

    let mnt = tmp.join("mnt");
    let broker = Broker::with_mount(&img, &mnt, safemount_opts);
    let ours = run_steps(&mnt);
    let shown = SHOWN.map(|p| atime(&mnt.join(p)));
    broker.unmount(&mnt).unwrap();

    let diffs = step_differences(&ours, &theirs);
    assert!(diffs.is_empty(), "{tag}: {}", diffs.join("\n"));
    fsck_clean(&img).unwrap();
    let k = KernelMount::mount(&img, &kmnt).unwrap();
    let on_disk = SHOWN.map(|p| atime(&kmnt.join(p)));
    k.unmount().unwrap();
    assert_eq!(
        on_disk, shown,
        "{tag}: atimes on disk of {SHOWN:?} differ from those shown"
    );
    theirs
}

#[test]
fn relatime_moves_atimes_as_the_kernel_does() {
    if !require_root() {
        return;
    }
    let kernel = compare("relatime", "rw,relatime,nodev,nosuid", "rw");
    let moved: Vec<bool> = kernel.iter().map(|l| l.ends_with("moved")).collect();
    // The kernel's answers, so that a test where nothing moves cannot pass.
    assert_eq!(
        moved,
        [
            true, false, false, true, false, true, true, false, true, false
        ],
        "the kernel itself: {kernel:#?}"
    );
}

#[test]
fn noatime_keeps_atimes_as_the_kernel_does() {
    if !require_root() {
        return;
    }
    let kernel = compare("noatime", "rw,noatime,nodev,nosuid", "rw,noatime");
    assert!(kernel.iter().all(|l| l.ends_with("kept")), "{kernel:#?}");
}

#[test]
fn strictatime_and_nodiratime_move_atimes_as_the_kernel_does() {
    if !require_root() {
        return;
    }
    let kernel = compare(
        "strictatime",
        "rw,strictatime,nodiratime,nodev,nosuid",
        "rw,strictatime,nodiratime",
    );
    let moved: Vec<bool> = kernel.iter().map(|l| l.ends_with("moved")).collect();
    assert_eq!(
        moved,
        [
            true, true, false, false, false, true, true, false, true, true
        ],
        "the kernel itself: {kernel:#?}"
    );
}
