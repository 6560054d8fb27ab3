//! Inode flags against the kernel: the same `chattr` commands and the same
//! file operations on a read-write safemount mount and on the kernel's
//! ext4 (a twin image) must give the same `lsattr` output and the same
//! outcome (errno included): immutable files refuse every change,
//! append-only ones take appends only, an append-only directory takes new
//! names but loses none, an immutable one takes none. Afterwards both
//! images are clean for e2fsck and the kernel shows the same flags on
//! both.

#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed setup step must fail the test, with its error"
)]

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use safemount_tests::broker::{Broker, kernel_standin};
use safemount_tests::image::fsck_clean;
use safemount_tests::kernel::KernelMount;
use safemount_tests::mapping::SharedMap;
use safemount_tests::ops;
use safemount_tests::util::{TempDir, require_root, step_differences};

/// One step's outcome: Ok with output, or the errno / exit status.
fn outcome(r: std::io::Result<String>) -> String {
    match r {
        Ok(s) => format!("ok {s}"),
        Err(e) => format!(
            "err {}",
            e.raw_os_error().map_or(e.to_string(), |n| n.to_string())
        ),
    }
}

/// A step with no output: Ok, or its errno.
fn done<T>(r: std::io::Result<T>) -> String {
    outcome(r.map(|_| String::new()))
}

fn cmd(prog: &str, args: &[&str], root: &Path) -> String {
    let out = Command::new(prog)
        .args(args)
        .current_dir(root)
        .output()
        .unwrap();
    // lsattr and chattr name the file in their messages; the mount point
    // is not part of them (relative paths).
    format!(
        "{} {} {}",
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    )
}

/// The scenario; every step's outcome, in order.
fn scenario(root: &Path) -> Vec<String> {
    let p = |name: &str| root.join(name);
    let mut log = Vec::new();
    let mut step = |what: &str, r: String| log.push(format!("{what}: {r}"));
    for f in ["imm", "app", "misc", "plain", "held_imm", "held_app"] {
        std::fs::write(p(f), b"start\n").unwrap();
    }
    for d in ["imm_dir", "app_dir"] {
        std::fs::create_dir(p(d)).unwrap();
        std::fs::write(p(d).join("inside"), b"x").unwrap();
    }
    step("chattr +i", cmd("chattr", &["+i", "imm", "imm_dir"], root));
    step("chattr +a", cmd("chattr", &["+a", "app", "app_dir"], root));
    step(
        "chattr +dAS",
        cmd("chattr", &["+d", "+A", "+S", "misc"], root),
    );
    step("chattr +D on a file", cmd("chattr", &["+D", "plain"], root));
    step("chattr +T dir", cmd("chattr", &["+T", "app_dir"], root));
    // chattr moves a directory's ctime, and stat sees it at once. (A
    // regular file's ctime is the kernel's own with the writeback cache:
    // it stays as it was until the next mount.)
    std::fs::create_dir(p("flag_dir")).unwrap();
    let ctime = || {
        let m = std::fs::metadata(p("flag_dir")).unwrap();
        (m.ctime(), m.ctime_nsec())
    };
    let before = ctime();
    std::thread::sleep(std::time::Duration::from_millis(20));
    step("chattr +d dir", cmd("chattr", &["+d", "flag_dir"], root));
    step("chattr moved ctime", (ctime() != before).to_string());
    step(
        "lsattr",
        cmd(
            "lsattr",
            &["-d", "imm", "app", "misc", "plain", "imm_dir", "app_dir"],
            root,
        ),
    );
    // Immutable: nothing changes.
    step(
        "write imm",
        done(OpenOptions::new().write(true).open(p("imm"))),
    );
    step(
        "append imm",
        done(OpenOptions::new().append(true).open(p("imm"))),
    );
    step(
        "chmod imm",
        done(std::fs::set_permissions(
            p("imm"),
            std::fs::Permissions::from_mode(0o600),
        )),
    );
    step("touch imm", cmd("touch", &["imm"], root));
    step("rm imm", done(std::fs::remove_file(p("imm"))));
    step("mv imm", done(std::fs::rename(p("imm"), p("imm2"))));
    step("ln imm", done(std::fs::hard_link(p("imm"), p("imm_link"))));
    step(
        "setfattr imm",
        cmd("setfattr", &["-n", "user.x", "-v", "1", "imm"], root),
    );
    step("read imm", outcome(std::fs::read_to_string(p("imm"))));
    step(
        "create in imm_dir",
        done(std::fs::write(p("imm_dir/new"), b"y")),
    );
    step(
        "rm in imm_dir",
        done(std::fs::remove_file(p("imm_dir/inside"))),
    );
    step(
        "write in imm_dir",
        done(std::fs::write(p("imm_dir/inside"), b"z")),
    );
    // Append-only: appends only.
    step(
        "write app",
        done(OpenOptions::new().write(true).open(p("app"))),
    );
    step(
        "truncate app",
        done(OpenOptions::new().write(true).truncate(true).open(p("app"))),
    );
    step(
        "append app",
        done(
            OpenOptions::new()
                .append(true)
                .open(p("app"))
                .and_then(|mut f| f.write_all(b"more\n").and_then(|()| f.sync_all())),
        ),
    );
    step("read app", outcome(std::fs::read_to_string(p("app"))));
    step(
        "chmod app",
        done(std::fs::set_permissions(
            p("app"),
            std::fs::Permissions::from_mode(0o600),
        )),
    );
    step("rm app", done(std::fs::remove_file(p("app"))));
    // utime to a given time: refused; to now: allowed. (An explicit mtime
    // alone on an append-only file is allowed through FUSE: see
    // ext4::attr.)
    step("touch -d app", cmd("touch", &["-d", "@0", "app"], root));
    step(
        "touch -a -d app",
        cmd("touch", &["-a", "-d", "@0", "app"], root),
    );
    step(
        "touch -d app_dir",
        cmd("touch", &["-d", "@0", "app_dir"], root),
    );
    step(
        "touch -m -d app_dir",
        cmd("touch", &["-m", "-d", "@0", "app_dir"], root),
    );
    step("touch app", cmd("touch", &["app", "app_dir"], root));
    step(
        "setfattr app",
        cmd("setfattr", &["-n", "user.x", "-v", "1", "app"], root),
    );
    step(
        "create in app_dir",
        done(std::fs::write(p("app_dir/new"), b"y")),
    );
    step(
        "rm in app_dir",
        done(std::fs::remove_file(p("app_dir/new"))),
    );
    step(
        "mv out of app_dir",
        done(std::fs::rename(p("app_dir/inside"), p("moved"))),
    );
    // Other flags change nothing for writes.
    step(
        "write misc",
        done(std::fs::write(p("misc"), b"rewritten\n")),
    );
    // Writable fds opened before chattr: ext4 refuses their writes at
    // write(2). The FUSE kernel does not know ext4's flags, and its page
    // cache took them, to fail only at write-back.
    let rw = |name: &str| {
        OpenOptions::new()
            .read(true)
            .write(true)
            .open(p(name))
            .unwrap()
    };
    let (held_imm, held_app) = (rw("held_imm"), rw("held_app"));
    // Written before the chattr, still in the page cache: ext4 writes it
    // back all the same.
    step("write held imm early", done(held_imm.write_at(b"early", 1)));
    let map = SharedMap::new(&held_imm, 6).unwrap();
    map.store(0, b"M").unwrap();
    step("chattr +i held", cmd("chattr", &["+i", "held_imm"], root));
    drop(map);
    step("chattr +a held", cmd("chattr", &["+a", "held_app"], root));
    step("write held imm", done(held_imm.write_at(b"late", 0)));
    step("fsync held imm", done(held_imm.sync_all()));
    step("write held app", done(held_app.write_at(b"late", 0)));
    step("fsync held app", done(held_app.sync_all()));
    drop((held_imm, held_app));
    step(
        "read held",
        outcome(
            std::fs::read_to_string(p("held_imm"))
                .and_then(|a| std::fs::read_to_string(p("held_app")).map(|b| a + &b)),
        ),
    );
    step(
        "chattr -ia held",
        cmd("chattr", &["-i", "-a", "held_imm", "held_app"], root),
    );
    // chattr while immutable: only -i.
    step("chattr +d imm", cmd("chattr", &["+d", "imm"], root));
    step("chattr -i", cmd("chattr", &["-i", "imm", "imm_dir"], root));
    step("chattr -a", cmd("chattr", &["-a", "app", "app_dir"], root));
    step("rm imm after -i", done(std::fs::remove_file(p("imm"))));
    step(
        "truncate app after -a",
        done(OpenOptions::new().write(true).truncate(true).open(p("app"))),
    );
    step(
        "lsattr after",
        cmd(
            "lsattr",
            &["-d", "app", "misc", "plain", "imm_dir", "app_dir"],
            root,
        ),
    );
    // Keep some flags set for the on-disk comparison.
    step("chattr +i again", cmd("chattr", &["+i", "misc"], root));
    log
}

#[test]
fn chattr_lsattr_and_enforcement_match_the_kernel() {
    // 64 MiB: mke2fs picks 1 KiB blocks.
    match_the_kernel(&[]);
}

/// With page-sized blocks too: FUSE writes an append back as the whole
/// page holding the old end, which starts before it.
#[test]
fn chattr_lsattr_and_enforcement_match_the_kernel_4k_blocks() {
    match_the_kernel(&["-b", "4096"]);
}

fn match_the_kernel(mkfs_args: &[&str]) {
    if !require_root() || kernel_standin() {
        return;
    }
    let tmp = TempDir::new("iflags").unwrap();
    let (img_a, img_b) = (tmp.join("sut.img"), tmp.join("kernel.img"));
    ops::make_empty_image(&img_a, mkfs_args, 64 << 20).unwrap();
    ops::make_empty_image(&img_b, mkfs_args, 64 << 20).unwrap();
    let (mnt_a, mnt_b) = (tmp.join("sut"), tmp.join("kernel"));
    std::fs::create_dir(&mnt_a).unwrap();
    std::fs::create_dir(&mnt_b).unwrap();
    let broker = Broker::start().unwrap();
    broker.mount(&img_a, &mnt_a, "rw").unwrap();
    let kernel = KernelMount::mount_rw(&img_b, &mnt_b, "").unwrap();
    let ours = scenario(&mnt_a);
    let theirs = scenario(&mnt_b);
    let flags_ours = cmd("lsattr", &["-d", "misc", "app", "plain"], &mnt_a);
    broker.unmount(&mnt_a).unwrap();
    kernel.unmount().unwrap();
    let diffs = step_differences(&ours, &theirs);
    assert!(
        diffs.is_empty(),
        "{} steps differ:\n{}\n(all safemount steps:\n{})",
        diffs.len(),
        diffs.join("\n"),
        ours.join("\n")
    );
    // The scenario really exercised refusals (not all-ok on both sides).
    assert!(
        ours.iter().any(|l| l.starts_with("rm imm: err 1")),
        "{ours:?}"
    );
    assert!(
        ours.iter().any(|l| l.starts_with("append app: ok")),
        "{ours:?}"
    );
    fsck_clean(&img_a).unwrap();
    fsck_clean(&img_b).unwrap();
    // What safemount wrote is what the kernel reads back.
    let back = KernelMount::mount(&img_a, &mnt_a).unwrap();
    assert_eq!(
        cmd("lsattr", &["-d", "misc", "app", "plain"], &mnt_a),
        flags_ours
    );
    let appended = std::fs::read(mnt_a.join("app")).unwrap();
    back.unmount().unwrap();
    let theirs = KernelMount::mount(&img_b, &mnt_b).unwrap();
    assert_eq!(appended, std::fs::read(mnt_b.join("app")).unwrap());
    theirs.unmount().unwrap();
}
