//! The project's own deterministic corruptions of a small good image.
//! Superblock and group-descriptor damage must refuse the mount with one
//! line naming the problem; damage to one inode, extent block, directory
//! block or xattr block must break only that object: the rest of the tree
//! reads exactly as the source, the worker stays alive, and the image is
//! never written.

#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed setup step must fail the test, with its error"
)]

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use safemount_tests::broker::{Broker, kernel_standin};
use safemount_tests::image;
use safemount_tests::procfs;
use safemount_tests::snapshot::{self, Snapshot, WalkOpts};
use safemount_tests::tree::MIB;
use safemount_tests::tree::lsetxattr;
use safemount_tests::util::{Rng, TempDir, require_root, sha256_file, wait_until};

const BS: u64 = 4096;

/// The good tree: a few plain files, and one victim per kind of damage.
fn build_source(src: &Path) {
    let mut rng = Rng::new(7);
    std::fs::create_dir_all(src.join("good")).unwrap();
    for i in 0..10 {
        let mut b = vec![0u8; 1000 * (i + 1)];
        rng.fill(&mut b);
        std::fs::write(src.join("good").join(format!("file{i}")), b).unwrap();
    }
    std::fs::write(src.join("victim_inode"), b"inode checksum victim\n").unwrap();
    std::fs::write(src.join("victim_mode"), b"bad mode victim\n").unwrap();
    // Many extents: every other block written, so an extent leaf block.
    let f = std::fs::File::create(src.join("frag")).unwrap();
    let mut blk = vec![0u8; BS as usize];
    for i in 0..400u64 {
        rng.fill(&mut blk);
        f.write_all_at(&blk, i * 2 * BS).unwrap();
    }
    drop(f);
    std::fs::create_dir(src.join("dirvictim")).unwrap();
    for i in 0..300 {
        std::fs::write(
            src.join("dirvictim")
                .join(format!("entry-with-a-longish-name-{i:04}")),
            b"x",
        )
        .unwrap();
    }
    std::fs::write(src.join("xvictim"), b"xattr block victim\n").unwrap();
    let mut v = vec![0u8; 3000];
    rng.fill(&mut v);
    lsetxattr(&src.join("xvictim"), "user.big", &v).unwrap();
    std::fs::write(src.join("zz_after"), b"sorted after the victims\n").unwrap();
}

struct Fixture {
    tmp: TempDir,
    src: PathBuf,
    img: PathBuf,
}

fn fixture(tag: &str) -> Fixture {
    let tmp = TempDir::new(&format!("dmg-{tag}")).unwrap();
    let src = tmp.join("src");
    build_source(&src);
    let img = tmp.join("fs.img");
    make_image(&src, &img);
    Fixture { tmp, src, img }
}

/// A 64 MiB image of `src`: 4 KiB blocks, 256-byte inodes (the offsets
/// the tests poke assume both).
fn make_image(src: &Path, img: &Path) {
    let cfg = image::config("defaults").unwrap();
    image::make_image(src, img, cfg, 64 * MIB, &["-b", "4096", "-I", "256"], false).unwrap();
}

fn poke(img: &Path, off: u64, bytes: &[u8]) {
    let f = OpenOptions::new().write(true).open(img).unwrap();
    f.write_all_at(bytes, off).unwrap();
}

fn flip(img: &Path, off: u64) {
    let f = OpenOptions::new().read(true).write(true).open(img).unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, off).unwrap();
    b[0] ^= 0xff;
    f.write_all_at(&b, off).unwrap();
}

fn num_after(text: &str, tag: &str) -> u64 {
    let rest = text
        .split(tag)
        .nth(1)
        .unwrap_or_else(|| panic!("{tag:?} not in debugfs output:\n{text}"));
    let digits: String = rest
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric())
        .collect();
    if let Some(h) = digits.strip_prefix("0x") {
        u64::from_str_radix(h, 16).unwrap()
    } else {
        digits
            .parse()
            .unwrap_or_else(|_| panic!("no number after {tag:?} in:\n{text}"))
    }
}

/// Byte offset of an inode in the image (debugfs imap).
fn inode_offset(img: &Path, path: &str) -> u64 {
    let t = image::debugfs(img, &format!("imap {path}")).unwrap();
    num_after(&t, "located at block") * BS + num_after(&t, "offset")
}

fn expect_refused(f: &Fixture, what: &str, must_mention: &[&str]) {
    let sha = sha256_file(&f.img).unwrap();
    let broker = Broker::start().unwrap();
    let mnt = f.tmp.join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    match broker.mount(&f.img, &mnt, "ro") {
        Ok(out) => {
            let _ = broker.unmount(&mnt);
            panic!("[{what}] mount of a damaged image succeeded ({out}); it must be refused");
        }
        Err(e) => {
            let msg = e.stderr.trim();
            assert!(!msg.is_empty(), "[{what}] refusal printed nothing: {e}");
            assert!(
                !msg.contains('\n'),
                "[{what}] refusal is not one line: {msg:?}"
            );
            let low = msg.to_lowercase();
            assert!(
                must_mention.iter().any(|w| low.contains(w)),
                "[{what}] refusal {msg:?} does not name the problem (expected one of {must_mention:?})"
            );
            println!("[{what}] refused: {msg}");
        }
    }
    assert!(
        !procfs::is_mounted(&mnt),
        "[{what}] a refused mount left a mount behind"
    );
    assert_eq!(sha, sha256_file(&f.img).unwrap(), "[{what}] image changed");
}

/// Mounts, walks, and checks that errors hit only `damaged` paths (and
/// that each of `must_fail` did fail with EUCLEAN, EBADMSG or EIO).
fn expect_contained(f: &Fixture, what: &str, damaged: &[&str], must_fail: &[&str]) -> Snapshot {
    let sha = sha256_file(&f.img).unwrap();
    let source = snapshot::snapshot(
        &f.src,
        &WalkOpts {
            seek_map: false,
            ..WalkOpts::default()
        },
    );
    let broker = Broker::start().unwrap();
    let mnt = f.tmp.join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    if let Err(e) = broker.mount(&f.img, &mnt, "ro") {
        panic!(
            "[{what}] mount refused, but the damage is local to one object: {e}\nbroker log:\n{}",
            broker.log_tail(20)
        );
    }
    let opts = WalkOpts {
        seek_map: false,
        deadline: Some(std::time::Instant::now() + std::time::Duration::from_secs(60)),
        ..WalkOpts::default()
    };
    let seen = snapshot::snapshot(&mnt, &opts);
    let worker = if kernel_standin() {
        None
    } else {
        Some(broker.worker_pid(&mnt).unwrap())
    };
    if let Some(pid) = worker {
        assert!(
            procfs::pid_alive(pid),
            "[{what}] worker {pid} died during the walk; broker log:\n{}",
            broker.log_tail(20)
        );
    }
    broker
        .unmount(&mnt)
        .unwrap_or_else(|e| panic!("[{what}] unmount: {e}"));
    assert_eq!(sha, sha256_file(&f.img).unwrap(), "[{what}] image changed");

    let is_damaged = |k: &str| {
        damaged
            .iter()
            .any(|d| k == *d || k.starts_with(&format!("{d}/")))
    };
    let mut problems = Vec::new();
    for m in must_fail {
        match seen.entries.get(*m) {
            Some(e)
                if e.errors.iter().any(|er| {
                    er.ends_with("EUCLEAN") || er.ends_with("EBADMSG") || er.ends_with("EIO")
                }) => {}
            Some(e) => problems.push(format!(
                "{m}: expected an EUCLEAN/EBADMSG/EIO error, got errors {:?}",
                e.errors
            )),
            None => problems.push(format!(
                "{m}: not listed at all (expected it listed with an error)"
            )),
        }
    }
    let keep = |s: &Snapshot| {
        let mut c = s.clone();
        c.entries
            .retain(|k, _| !is_damaged(k) && k != "lost+found" && !k.starts_with("lost+found/"));
        c
    };
    let (src_rest, seen_rest) = (keep(&source), keep(&seen));
    for d in snapshot::diff(&src_rest, &seen_rest, snapshot::Against::Source) {
        problems.push(format!("undamaged object differs: {d}"));
    }
    if let Some(t) = &seen.truncated {
        problems.push(format!("walk truncated: {t}"));
    }
    assert!(
        problems.is_empty(),
        "[{what}] {} problems:\n  {}",
        problems.len(),
        problems.join("\n  ")
    );
    let errs: Vec<String> = snapshot::errored(&seen)
        .into_iter()
        .map(|(k, e)| format!("{k}: {e:?}"))
        .collect();
    println!("[{what}] contained; errors seen: {}", errs.join("; "));
    seen
}

#[test]
fn superblock_checksum() {
    if !require_root() {
        return;
    }
    let f = fixture("sbcsum");
    flip(&f.img, 1024 + 0x3fc); // s_checksum
    expect_refused(&f, "superblock checksum", &["superblock", "checksum"]);
}

#[test]
fn superblock_magic() {
    if !require_root() {
        return;
    }
    let f = fixture("sbmagic");
    flip(&f.img, 1024 + 0x38); // s_magic
    expect_refused(
        &f,
        "superblock magic",
        &["superblock", "magic", "ext2", "ext4", "not an ext"],
    );
}

#[test]
fn group_descriptor_inode_table() {
    if !require_root() {
        return;
    }
    let f = fixture("gdt");
    // Group 0's descriptor is at the start of block 1 (4 KiB blocks);
    // bg_inode_table_lo at +0x8: point it far outside the filesystem.
    poke(&f.img, BS + 0x8, &0xffff_fff0u32.to_le_bytes());
    expect_refused(&f, "group descriptor", &["group", "descriptor", "gdt"]);
}

#[test]
fn inode_checksum() {
    if !require_root() {
        return;
    }
    let f = fixture("icsum");
    let off = inode_offset(&f.img, "/victim_inode");
    flip(&f.img, off + 0x7c); // i_checksum_lo
    expect_contained(&f, "inode checksum", &["victim_inode"], &["victim_inode"]);
}

#[test]
fn inode_bad_mode() {
    if !require_root() {
        return;
    }
    let f = fixture("imode");
    // debugfs rewrites the checksum: the inode is valid but its type is not.
    image::debugfs_w(&f.img, "sif /victim_mode mode 0170644").unwrap();
    expect_contained(&f, "inode mode", &["victim_mode"], &["victim_mode"]);
}

#[test]
fn extent_leaf() {
    if !require_root() {
        return;
    }
    let f = fixture("extent");
    let st = image::debugfs(&f.img, "stat /frag").unwrap();
    let leaf = num_after(&st, "(ETB0):");
    poke(&f.img, leaf * BS, &[0, 0]); // eh_magic
    expect_contained(&f, "extent leaf", &["frag"], &["frag"]);
}

#[test]
fn directory_block() {
    if !require_root() {
        return;
    }
    let f = fixture("dirblk");
    let blocks = image::debugfs(&f.img, "blocks /dirvictim").unwrap();
    let list: Vec<u64> = blocks
        .split_whitespace()
        .filter_map(|b| b.parse().ok())
        .collect();
    assert!(
        list.len() >= 2,
        "dirvictim should span several blocks, has {list:?}"
    );
    // Second block: the first entry's rec_len (offset 4) becomes 0.
    poke(&f.img, list[1] * BS + 4, &[0, 0]);
    let seen = expect_contained(&f, "directory block", &["dirvictim"], &[]);
    // The damaged block must show: either readdir fails with an errno
    // (EUCLEAN/EBADMSG/EIO), or its entries are left out (what the kernel
    // does: it skips a block that fails its checks). Never all 300.
    let dir = seen.entries.get("dirvictim").expect("dirvictim listed");
    let children = seen
        .entries
        .keys()
        .filter(|k| k.starts_with("dirvictim/"))
        .count();
    let errored = dir
        .errors
        .iter()
        .any(|er| er.ends_with("EUCLEAN") || er.ends_with("EBADMSG") || er.ends_with("EIO"));
    assert!(
        errored || children < 300,
        "[directory block] a directory block with rec_len 0 went unnoticed: {children} of 300 entries, errors {:?}",
        dir.errors
    );
    println!(
        "[directory block] {children} of 300 entries listed, errors {:?}",
        dir.errors
    );
}

#[test]
fn xattr_block() {
    if !require_root() {
        return;
    }
    let f = fixture("xattr");
    let st = image::debugfs(&f.img, "stat /xvictim").unwrap();
    let blk = num_after(&st, "File ACL:");
    assert!(blk > 0, "xvictim has no xattr block:\n{st}");
    poke(&f.img, blk * BS, &[0xde, 0xad, 0xbe, 0xef]); // h_magic
    expect_contained(&f, "xattr block", &["xvictim"], &["xvictim"]);
}

/// `errors=` on a read-write mount of an image with one corrupt inode:
/// the corruption is recorded in the superblock (dumpe2fs shows the count
/// and the function), and then continue keeps writing, remount-ro refuses
/// writes with EROFS while reads go on, and panic ends the mount: the
/// worker exits, the broker detaches it and logs why.
#[test]
fn errors_option_acts_on_corruption() {
    if !require_root() || kernel_standin() {
        return;
    }
    let f = fixture("errors");
    let off = inode_offset(&f.img, "/victim_inode");
    flip(&f.img, off + 0x7c); // i_checksum_lo
    let broker = Broker::start().unwrap();
    for mode in ["continue", "remount-ro", "panic"] {
        let img = f.tmp.join(format!("{mode}.img"));
        std::fs::copy(&f.img, &img).unwrap();
        let mnt = f.tmp.join(format!("mnt-{mode}"));
        std::fs::create_dir(&mnt).unwrap();
        broker
            .mount(&img, &mnt, &format!("rw,errors={mode}"))
            .unwrap_or_else(|e| panic!("errors={mode}: mount: {e}"));
        let e = std::fs::metadata(mnt.join("victim_inode")).unwrap_err();
        // errors=panic: the worker exits before it answers.
        let expected: &[i32] = match mode {
            "panic" => &[libc::EUCLEAN, libc::ECONNABORTED, libc::ENOTCONN],
            _ => &[libc::EUCLEAN],
        };
        assert!(
            expected.contains(&e.raw_os_error().unwrap_or(0)),
            "errors={mode}: {e}"
        );
        let write = std::fs::write(mnt.join("after"), b"written after the error");
        match mode {
            "continue" => {
                write.unwrap();
                assert_eq!(std::fs::read(mnt.join("good/file0")).unwrap().len(), 1000);
                let entry = broker.entry_for(&mnt).unwrap().unwrap();
                assert_eq!(entry.read_only, Some(false), "{entry:?}");
            }
            "remount-ro" => {
                let e = write.unwrap_err();
                assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");
                assert_eq!(std::fs::read(mnt.join("good/file0")).unwrap().len(), 1000);
                let listed = wait_until(std::time::Duration::from_secs(5), || {
                    broker
                        .entry_for(&mnt)
                        .unwrap()
                        .is_some_and(|e| e.read_only == Some(true) && e.error.is_some())
                });
                assert!(listed, "list: {:?}", broker.entry_for(&mnt));
            }
            _ => {
                // The worker aborted the mount: it is gone from the list,
                // and the broker's log says why.
                let gone = wait_until(std::time::Duration::from_secs(10), || {
                    broker.entry_for(&mnt).unwrap().is_none()
                });
                assert!(gone, "still listed: {:?}", broker.entry_for(&mnt));
                let log = broker.log();
                assert!(log.contains("errors=panic"), "broker log:\n{log}");
            }
        }
        if mode != "panic" {
            broker.unmount(&mnt).unwrap();
        }
        let sb = image::debugfs(&img, "stats").unwrap();
        assert!(
            sb.contains("FS Error count:") && sb.contains("First error function:"),
            "errors={mode}: no error recorded:\n{sb}"
        );
        assert!(num_after(&sb, "FS Error count:") >= 1, "{sb}");
        if mode == "continue" {
            let after = image::debugfs(&img, "cat /after").unwrap();
            assert_eq!(after, "written after the error");
        }
    }
}

/// Sends SIGCONT to a stopped process when dropped (also when the test
/// fails half-way).
struct Stopped(i32);

impl Stopped {
    fn stop(pid: i32) -> Self {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGSTOP).unwrap();
        Stopped(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0),
            nix::sys::signal::SIGCONT,
        );
    }
}

/// A worker with much to log while nobody reads its log (the broker
/// stopped, as between a crash and systemd's restart of it, or a stalled
/// journal) drops lines rather than stall or die: its stderr is a
/// non-blocking pipe. 1,200 files with bad inode checksums make 1,024 log
/// lines (each corrupt object once, up to that many), over 64 KiB, what a
/// pipe holds. Before, the FUSE thread that logged the line that did not
/// fit blocked until the broker read again.
#[test]
fn a_worker_whose_log_nobody_reads_keeps_serving() {
    if !require_root() || kernel_standin() {
        return;
    }
    const FILES: u64 = 1200;
    let tmp = TempDir::new("dmg-log").unwrap();
    let src = tmp.join("src");
    std::fs::create_dir(&src).unwrap();
    for i in 0..FILES {
        std::fs::write(src.join(format!("f{i:04}")), b"x").unwrap();
    }
    let img = tmp.join("fs.img");
    make_image(&src, &img);
    // mkfs -d numbers the files' inodes 12.. (after lost+found, 11); one
    // group, so the inode table is contiguous from the root's (inode 2).
    let table = inode_offset(&img, "/") - 256;
    for ino in 12..12 + FILES {
        flip(&img, table + (ino - 1) * 256 + 0x7c); // i_checksum_lo
    }

    let mnt = tmp.join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let broker = Broker::start().unwrap();
    broker
        .mount(&img, &mnt, "ro")
        .unwrap_or_else(|e| panic!("mount: {e}\n{}", broker.log_tail(20)));
    let worker = broker.worker_pid(&mnt).unwrap();
    let stopped = Stopped::stop(broker.pid().unwrap());
    let (done, finished) = std::sync::mpsc::channel();
    let names: Vec<PathBuf> = (0..FILES).map(|i| mnt.join(format!("f{i:04}"))).collect();
    std::thread::spawn(move || {
        let failed = names
            .iter()
            .filter(|p| {
                std::fs::metadata(p).is_err_and(|e| e.raw_os_error() == Some(libc::EUCLEAN))
            })
            .count();
        let _ = done.send(failed);
    });
    let failed = finished.recv_timeout(std::time::Duration::from_secs(60));
    drop(stopped);
    let failed = failed.unwrap_or_else(|_| {
        panic!(
            "the worker stalled while nobody read its log\n{}",
            broker.log_tail(20)
        )
    });
    assert_eq!(failed as u64, FILES, "every damaged file fails alone");
    assert!(procfs::pid_alive(worker), "the worker died");
    // lost+found and the files.
    assert_eq!(std::fs::read_dir(&mnt).unwrap().count() as u64, FILES + 1);
    broker.unmount(&mnt).unwrap();
}
