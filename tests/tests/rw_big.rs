//! Large read-write workloads through a safemount rw mount, each ending
//! with `e2fsck -fn` clean and the kernel's ext4 seeing the same tree:
//! 100,000 files in one directory (htree growth), a 6 GiB sparse file, a
//! directory tree 200 levels deep, xattrs of every size class (compared
//! errno for errno with the kernel), and filling the filesystem to ENOSPC
//! then recovering by deleting.
//!
//! `SAFEMOUNT_BIG_FILES` overrides the 100,000 (with `SAFEMOUNT_TEST_ALLOW_WEAK=1`).

#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed setup step must fail the test, with its error"
)]

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use safemount_tests::broker::Broker;
use safemount_tests::image::fsck_clean;
use safemount_tests::kernel::KernelMount;
use safemount_tests::ops;
use safemount_tests::snapshot::{self, Against, WalkOpts, assert_same};
use safemount_tests::util::{TempDir, errno_name, require_root};

static SERIAL: Mutex<()> = Mutex::new(());

const GIB: u64 = 1 << 30;

/// A safemount rw mount of a fresh image; `finish` unmounts, checks
/// `e2fsck -fn` and returns a kernel view of the image.
struct Rw {
    tmp: TempDir,
    img: PathBuf,
    mnt: PathBuf,
    broker: Broker,
}

impl Rw {
    fn new(tag: &str, mkfs_args: &[&str], size: u64) -> Rw {
        let tmp = TempDir::new(tag).unwrap();
        let img = tmp.join("fs.img");
        ops::make_empty_image(&img, mkfs_args, size).unwrap();
        let mnt = tmp.join("mnt");
        fs::create_dir(&mnt).unwrap();
        let broker = Broker::start().unwrap();
        let rw = Rw {
            tmp,
            img,
            mnt,
            broker,
        };
        rw.mount();
        rw
    }

    fn mount(&self) {
        // noatime: the walk that takes the live snapshot stats, then reads
        // or lists, every entry; under relatime (as on the kernel's ext4)
        // that moves atimes after the walk recorded them.
        if let Err(e) = self.broker.mount(&self.img, &self.mnt, "rw,noatime") {
            panic!(
                "safemount rw mount failed: {e}\nlog:\n{}",
                self.broker.log_tail(30)
            );
        }
    }

    fn unmount(&self) {
        if let Err(e) = self.broker.unmount(&self.mnt) {
            panic!("unmount failed: {e}\nlog:\n{}", self.broker.log_tail(30));
        }
    }

    fn p(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    /// Unmounts, checks the image clean, mounts it with the kernel (ro).
    fn finish(&self) -> KernelMount {
        self.finish_with(&WalkOpts::default())
    }

    fn finish_with(&self, walk: &WalkOpts) -> KernelMount {
        let live = snapshot::snapshot(&self.mnt, walk);
        self.unmount();
        if let Err(e) = fsck_clean(&self.img) {
            panic!("image not clean after unmount: {e:#}");
        }
        let kmnt = self.tmp.join("kernel");
        fs::create_dir_all(&kmnt).unwrap();
        let k = KernelMount::mount(&self.img, &kmnt).unwrap();
        let ksnap = snapshot::snapshot(&kmnt, walk);
        assert_same(&ksnap, &live, Against::Kernel, "kernel view vs. the mount");
        k
    }
}

/// 100,000, or `SAFEMOUNT_BIG_FILES` (a knob: refused unless
/// `SAFEMOUNT_TEST_ALLOW_WEAK=1`); printed either way.
fn file_count() -> usize {
    let knob = safemount_tests::skip::knob("SAFEMOUNT_BIG_FILES").map(|v| {
        v.parse()
            .unwrap_or_else(|_| panic!("SAFEMOUNT_BIG_FILES={v:?} is not a number"))
    });
    let n = knob.unwrap_or(100_000);
    safemount_tests::skip::print_settings(
        "rw_big",
        &[("SAFEMOUNT_BIG_FILES", n.to_string(), knob.is_some())],
    );
    n
}

#[test]
fn hundred_thousand_files_in_one_directory() {
    if !require_root() {
        return;
    }
    let _s = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let n = file_count();
    let rw = Rw::new("rwbig-files", &["-N", "140000"], GIB);
    let dir = rw.p("big");
    fs::create_dir(&dir).unwrap();
    let t0 = std::time::Instant::now();
    for i in 0..n {
        File::create(dir.join(format!("file-{i:06}-with-a-longer-name")))
            .unwrap_or_else(|e| panic!("create #{i}: {e}"));
    }
    println!("{n} creates in {:?}", t0.elapsed());
    // Every name is found by lookup (htree) and by readdir.
    for i in (0..n).step_by(997) {
        assert!(
            dir.join(format!("file-{i:06}-with-a-longer-name"))
                .symlink_metadata()
                .is_ok(),
            "lookup of #{i} failed"
        );
    }
    assert_eq!(fs::read_dir(&dir).unwrap().count(), n);
    // Remove every third, so the htree also shrinks leaves.
    for i in (0..n).step_by(3) {
        fs::remove_file(dir.join(format!("file-{i:06}-with-a-longer-name"))).unwrap();
    }
    let left = n - n.div_ceil(3);
    assert_eq!(fs::read_dir(&dir).unwrap().count(), left);
    let k = rw.finish();
    let kdir = k.mountpoint().join("big");
    assert_eq!(fs::read_dir(&kdir).unwrap().count(), left);
    assert!(
        kdir.join("file-000001-with-a-longer-name").exists()
            && !kdir.join("file-000003-with-a-longer-name").exists()
    );
    k.unmount().unwrap();
}

#[test]
fn six_gib_sparse_file() {
    if !require_root() {
        return;
    }
    let _s = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let rw = Rw::new("rwbig-sparse", &[], 256 << 20);
    let path = rw.p("sparse");
    let end = 6 * GIB;
    let head = vec![0xa5u8; 4096];
    let tail = vec![0x5au8; 4096];
    {
        let f = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&path)
            .unwrap();
        f.write_all_at(&tail, end - 4096).unwrap();
        f.write_all_at(&head, 0).unwrap();
        f.sync_all().unwrap();
    }
    let check = |p: &Path| {
        let f = File::open(p).unwrap();
        let md = f.metadata().unwrap();
        assert_eq!(md.len(), end, "size");
        assert!(
            std::os::unix::fs::MetadataExt::blocks(&md) < 1024,
            "{} blocks allocated for 8 KiB of data",
            std::os::unix::fs::MetadataExt::blocks(&md)
        );
        let map = snapshot::seek_map(&f, end).unwrap();
        assert_eq!(map, vec![(0, 4096), (end - 4096, end)], "data map");
        let mut b = vec![0u8; 4096];
        f.read_exact_at(&mut b, end - 4096).unwrap();
        assert_eq!(b, tail);
        f.read_exact_at(&mut b, 0).unwrap();
        assert_eq!(b, head);
        f.read_exact_at(&mut b, 3 * GIB).unwrap();
        assert!(b.iter().all(|&x| x == 0), "hole reads zeros");
    };
    check(&path);
    // Contents are checked by `check`; digesting 6 GiB of holes twice
    // would only cost time.
    let k = rw.finish_with(&WalkOpts {
        read_contents: false,
        ..WalkOpts::default()
    });
    check(&k.mountpoint().join("sparse"));
    k.unmount().unwrap();
}

#[test]
fn directory_tree_200_deep() {
    if !require_root() {
        return;
    }
    let _s = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let rw = Rw::new("rwbig-deep", &[], 64 << 20);
    let mut rel = String::from("deep");
    fs::create_dir(rw.p(&rel)).unwrap();
    for level in 1..200 {
        rel.push_str(&format!("/d{level}"));
        fs::create_dir(rw.p(&rel)).unwrap();
    }
    fs::write(rw.p(&format!("{rel}/bottom")), b"at the bottom\n").unwrap();
    // Moving the whole tree under one of its own directories must fail.
    let err = fs::rename(rw.p("deep"), rw.p(&format!("{rel}/loop"))).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EINVAL));
    fs::rename(rw.p("deep"), rw.p("moved")).unwrap();
    let k = rw.finish();
    let bottom = k
        .mountpoint()
        .join(rel.replacen("deep", "moved", 1))
        .join("bottom");
    assert_eq!(fs::read(bottom).unwrap(), b"at the bottom\n");
    k.unmount().unwrap();
}

fn setxattr(p: &Path, name: &str, value: &[u8]) -> Result<(), String> {
    let c = CString::new(p.as_os_str().as_bytes()).unwrap();
    let n = CString::new(name).unwrap();
    // SAFETY: both strings are NUL-terminated; value is a valid slice.
    let rc = unsafe {
        libc::lsetxattr(
            c.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(errno_name(
            std::io::Error::last_os_error().raw_os_error().unwrap_or(-1),
        ))
    }
}

/// Every size class of xattr value (in the inode, in a block, too big for
/// a block: ENOSPC or an ea_inode, over 64 KiB: E2BIG), on safemount and
/// on the kernel, errno for errno, then the same values on disk.
fn xattr_sizes(tag: &str, mkfs_args: &[&str]) {
    let rw = Rw::new(tag, mkfs_args, 64 << 20);
    let tmp = TempDir::new(&format!("{tag}-k")).unwrap();
    let kimg = tmp.join("k.img");
    ops::make_empty_image(&kimg, mkfs_args, 64 << 20).unwrap();
    let kmnt = tmp.join("mnt");
    fs::create_dir(&kmnt).unwrap();
    let kernel = KernelMount::mount_rw(&kimg, &kmnt, "").unwrap();
    let sizes = [
        0usize, 1, 16, 60, 100, 200, 400, 1000, 2000, 3000, 4000, 4050, 4096, 5000, 16384, 65536,
        65537,
    ];
    let mut results = Vec::new();
    for (i, &size) in sizes.iter().enumerate() {
        let value: Vec<u8> = (0..size).map(|j| (j * 7 + i) as u8).collect();
        // One file per size (each alone in its inode) and one file that
        // accumulates them all.
        for root in [&rw.mnt, &kmnt] {
            fs::write(root.join(format!("f{size}")), b"x").unwrap();
            if i == 0 {
                fs::write(root.join("all"), b"x").unwrap();
            }
        }
        for (file, name) in [
            (format!("f{size}"), "user.v".to_owned()),
            ("all".to_owned(), format!("user.v{size}")),
        ] {
            let a = setxattr(&rw.mnt.join(&file), &name, &value);
            let b = setxattr(&kmnt.join(&file), &name, &value);
            assert_eq!(
                a, b,
                "setxattr {name} of {size} bytes on {file}: safemount vs kernel"
            );
            results.push(format!("{file}:{name}:{a:?}"));
        }
    }
    println!("[{tag}] {}", results.join(" "));
    let theirs = snapshot::snapshot(&kmnt, &WalkOpts::default());
    kernel.unmount().unwrap();
    let k = rw.finish();
    let ours = snapshot::snapshot(k.mountpoint(), &WalkOpts::default());
    k.unmount().unwrap();
    let d: Vec<String> = snapshot::diff(&theirs, &ours, Against::Kernel)
        .into_iter()
        // Times and inode numbers differ between the two trees by nature;
        // xattrs, entries present on one side only and blocks must not.
        .filter(|l| {
            l.contains("xattrs")
                || l.contains("missing")
                || l.contains("unexpected entry")
                || l.contains("walk truncated")
                || l.contains("blocks")
        })
        .collect();
    assert!(
        d.is_empty(),
        "[{tag}] xattrs on disk differ from the kernel's:\n  {}",
        d.join("\n  ")
    );
}

#[test]
fn xattrs_of_every_size_class() {
    if !require_root() {
        return;
    }
    let _s = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    // 64 MiB images would get 1 KiB blocks from mke2fs.conf ("small").
    xattr_sizes("rwbig-xattr", &["-b", "4096"]);
    xattr_sizes("rwbig-xattr-1k", &["-b", "1024"]);
    xattr_sizes("rwbig-xattr-eainode", &["-b", "4096", "-O", "ea_inode"]);
}

#[test]
fn fill_to_enospc_and_recover() {
    if !require_root() {
        return;
    }
    let _s = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let rw = Rw::new("rwbig-enospc", &[], 64 << 20);
    let before = snapshot::statvfs(&rw.mnt).unwrap();
    let chunk = vec![0x33u8; 1 << 20];
    let mut files = 0;
    let mut written = 0u64;
    let mut hit = None;
    'outer: for i in 0..1000 {
        let mut f = match File::create(rw.p(&format!("fill{i}"))) {
            Ok(f) => f,
            Err(e) => {
                hit = e.raw_os_error();
                break;
            }
        };
        files += 1;
        for _ in 0..4 {
            match f.write(&chunk) {
                Ok(n) => written += n as u64,
                Err(e) => {
                    hit = e.raw_os_error();
                    break 'outer;
                }
            }
        }
        if let Err(e) = f.sync_all() {
            hit = e.raw_os_error();
            break;
        }
    }
    assert_eq!(hit, Some(libc::ENOSPC), "filling stopped with ENOSPC");
    println!("ENOSPC after {files} files, {} MiB", written >> 20);
    // Still usable: small metadata operations either work or fail with
    // ENOSPC, nothing else.
    if let Err(e) = fs::create_dir(rw.p("after-full")) {
        assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "mkdir on a full fs");
    }
    let full = snapshot::statvfs(&rw.mnt).unwrap();
    assert!(full.bavail < before.bavail / 20, "bavail {full:?}");
    // Consistent while full.
    rw.unmount();
    fsck_clean(&rw.img).unwrap();
    rw.mount();
    // Recover: delete everything, space comes back.
    for i in 0..files {
        fs::remove_file(rw.p(&format!("fill{i}"))).unwrap();
    }
    let _ = fs::remove_dir(rw.p("after-full"));
    // A deleted file's space returns when the kernel's FORGET for it is
    // served (the worker frees an unlinked inode once the kernel drops its
    // last reference). FORGET has no reply and may be handled by another
    // worker thread just after unlink(2) returned, so give it a moment.
    let mut after = snapshot::statvfs(&rw.mnt).unwrap();
    for _ in 0..50 {
        if (after.bfree, after.ffree) == (before.bfree, before.ffree) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        after = snapshot::statvfs(&rw.mnt).unwrap();
    }
    assert_eq!(
        (after.bfree, after.ffree),
        (before.bfree, before.ffree),
        "free blocks and inodes back to the empty filesystem's"
    );
    let mut f = File::create(rw.p("again")).unwrap();
    f.write_all(&chunk).unwrap();
    f.sync_all().unwrap();
    drop(f);
    let ours = snapshot::statvfs(&rw.mnt).unwrap();
    let k = rw.finish();
    let theirs = snapshot::statvfs(k.mountpoint()).unwrap();
    let mut buf = Vec::new();
    File::open(k.mountpoint().join("again"))
        .unwrap()
        .read_to_end(&mut buf)
        .unwrap();
    assert_eq!(buf, chunk);
    k.unmount().unwrap();
    assert_eq!(ours, theirs, "statfs: safemount vs kernel after remount");
}
