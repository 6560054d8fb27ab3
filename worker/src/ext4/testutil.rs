//! Test fixtures: build ext4 images with mkfs.ext4 -d and load them into a
//! MemDevice.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use super::{Ext4, OpenOptions};
use crate::io::MemDevice;
pub(crate) use crate::test_skip::skip;

/// A scratch directory removed on drop.
pub(crate) struct Scratch(pub(crate) PathBuf);

impl Scratch {
    pub(crate) fn new(tag: &str) -> Scratch {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p =
            std::env::temp_dir().join(format!("safemount-ext4-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Scratch(p)
    }
    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Whether mkfs.ext4 is available; skips (see [`skip`]) if not.
pub(crate) fn have_mkfs() -> bool {
    let ok = Command::new("mkfs.ext4").arg("-V").output().is_ok();
    if !ok {
        skip("mkfs.ext4 not found (apt-get install e2fsprogs)");
    }
    ok
}

/// Loop-mounts `img` at `mnt` with the kernel (`mount ARGS img mnt`).
/// Returns false, after a skip line, only when this process is not root; a
/// mount the kernel refuses fails the test, since that means the image is
/// wrong (or loop devices are missing, which CI must not hide either).
#[track_caller]
pub(crate) fn kernel_mount(img: &Path, mnt: &Path, args: &[&str]) -> bool {
    if !crate::test_skip::require_root("the kernel comparison (loop mount)") {
        return false;
    }
    let out = Command::new("mount")
        .args(args)
        .arg(img)
        .arg(mnt)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the kernel refused to mount {} ({args:?}): {}{}",
        img.display(),
        String::from_utf8_lossy(&out.stderr),
        dmesg_tail()
    );
    true
}

/// The last lines of the kernel log (why a mount was refused).
fn dmesg_tail() -> String {
    Command::new("dmesg")
        .output()
        .map(|o| {
            let s = String::from_utf8_lossy(&o.stdout).into_owned();
            let lines: Vec<&str> = s.lines().collect();
            let from = lines.len().saturating_sub(5);
            format!("\nkernel log:\n{}", lines[from..].join("\n"))
        })
        .unwrap_or_default()
}

/// Runs mkfs.ext4 `-q -F [args] -d src image size_kib` and returns the image path.
pub(crate) fn mkfs(scratch: &Scratch, src: &Path, args: &[&str], size_kib: u64) -> PathBuf {
    let img = scratch.path().join("fs.img");
    let _ = std::fs::remove_file(&img);
    let out = Command::new("mkfs.ext4")
        .args(["-q", "-F"])
        .args(args)
        .arg("-d")
        .arg(src)
        .arg(&img)
        .arg(format!("{size_kib}k"))
        .env("MKE2FS_CONFIG", "/etc/mke2fs.conf")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mkfs.ext4 {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    img
}

/// Runs `debugfs -w -R cmd image`.
pub(crate) fn debugfs(img: &Path, cmd: &str) {
    let out = Command::new("debugfs")
        .args(["-w", "-R", cmd])
        .arg(img)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "debugfs {cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `debugfs -R cmd image` and returns stdout.
pub(crate) fn debugfs_out(img: &Path, cmd: &str) -> String {
    let out = Command::new("debugfs")
        .args(["-R", cmd])
        .arg(img)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub(crate) fn open_image(img: &Path) -> super::Result<Ext4> {
    let data = std::fs::read(img).unwrap();
    Ext4::open(
        Arc::new(MemDevice::new(data)),
        OpenOptions { read_only: true },
    )
}

/// Inode number of `name` in the image (via debugfs stat).
pub(crate) fn ino_of(img: &Path, name: &str) -> u32 {
    let out = debugfs_out(img, &format!("stat {name}"));
    let line = out.lines().next().unwrap_or("");
    // "Inode: 12   Type: regular ..."
    line.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no inode for {name}: {out}"))
}

/// Deterministic pseudo-random bytes.
pub(crate) fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Copies the image of a filesystem the kernel has mounted, as a disk
/// pulled at one instant would hold it: a copy reads the file from start to
/// end while the kernel's commit and checkpoint threads may write, so one
/// copy can mix blocks from before and after a write (a state no crash
/// produces, on which two correct replays may differ). Copies until two in
/// a row are identical.
pub(crate) fn snapshot_copy(from: &Path, to: &Path) {
    let mut again = to.as_os_str().to_owned();
    again.push(".again");
    let again = std::path::PathBuf::from(again);
    std::fs::copy(from, to).unwrap();
    for _ in 0..50 {
        std::fs::copy(from, &again).unwrap();
        let same = std::fs::read(to).unwrap() == std::fs::read(&again).unwrap();
        std::fs::rename(&again, to).unwrap();
        if same {
            return;
        }
    }
    panic!(
        "{}: the kernel kept writing while it was copied",
        from.display()
    );
}

/// The entries of the shared hostile-image corpus (`../shared/corpus`),
/// or None after saying it is absent (optional data: never a failure).
pub(crate) fn corpus_entries() -> Option<std::fs::ReadDir> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpus/e2fsprogs");
    match std::fs::read_dir(&dir) {
        Ok(rd) => Some(rd),
        Err(_) => {
            crate::test_skip::absent_data(&format!("no corpus at {}", dir.display()));
            None
        }
    }
}
