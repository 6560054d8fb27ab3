//! Test fixtures: build ext4 images with mkfs.ext4 -d and load them into a
//! MemDevice.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use super::types::{FileKind, Ino};
use super::{Ext4, OpenOptions, ROOT_INO};
use crate::io::{BlockDevice, MemDevice};
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
    /// `rel` inside the scratch directory.
    pub(crate) fn file(&self, rel: &str) -> PathBuf {
        self.0.join(rel)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Whether mkfs.ext4 is available; skips (see [`skip`]) if not.
pub(crate) fn have_mkfs() -> bool {
    have(&["mkfs.ext4"])
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

/// A kernel mount of an image, unmounted on drop; a loop device set up
/// by [`loop_mounted`] is detached then too.
pub(crate) struct KernelMount {
    pub(crate) mnt: PathBuf,
    loop_dev: Option<String>,
}

/// Unmounts `mnt`, retrying for a few seconds: "target is busy" is
/// usually another test thread's fork, whose child holds copies of this
/// process's fds (files on the mount among them) until its exec. Detached
/// lazily as a last resort (false then), so no mount outlives the test.
pub(crate) fn unmount(mnt: &Path) -> bool {
    let umount = |args: &[&str]| {
        Command::new("umount")
            .args(args)
            .arg(mnt)
            .output()
            .is_ok_and(|o| o.status.success())
    };
    for _ in 0..50 {
        if umount(&[]) {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    if !umount(&["-l"]) {
        eprintln!("cannot unmount {}", mnt.display());
    }
    false
}

impl Drop for KernelMount {
    fn drop(&mut self) {
        unmount(&self.mnt);
        if let Some(dev) = &self.loop_dev {
            let _ = Command::new("losetup").args(["-d", dev]).output();
        }
    }
}

/// Mounts `img` at `mnt` (created) through a loop device of its own
/// (`losetup -f`, then `mount -t ext4 -o OPTS DEV`): a test that mounts
/// the same image again and again does not meet the previous mount's
/// loop device still going away.
#[track_caller]
pub(crate) fn loop_mounted(img: &Path, mnt: &Path, opts: &str) -> KernelMount {
    std::fs::create_dir_all(mnt).unwrap();
    let dev = run("losetup", &["-f", "--show", img.to_str().unwrap()])
        .trim()
        .to_owned();
    let out = Command::new("mount")
        .args(["-t", "ext4", "-o", opts, &dev, mnt.to_str().unwrap()])
        .output()
        .unwrap();
    if !out.status.success() {
        let _ = Command::new("losetup").args(["-d", &dev]).output();
        panic!("mount: {}", String::from_utf8_lossy(&out.stderr));
    }
    KernelMount {
        mnt: mnt.to_owned(),
        loop_dev: Some(dev),
    }
}

/// Mounts `img` at `mnt` (created) with `mount -t ext4 -o OPTS`; None,
/// after a skip line, only when this process is not root.
#[track_caller]
pub(crate) fn kernel_mounted(img: &Path, mnt: &Path, opts: &str) -> Option<KernelMount> {
    std::fs::create_dir_all(mnt).unwrap();
    kernel_mount(img, mnt, &["-t", "ext4", "-o", opts]).then(|| KernelMount {
        mnt: mnt.to_owned(),
        loop_dev: None,
    })
}

/// Runs `f` on what the kernel shows of `img` (read-only, no journal
/// replay); None when this process is not root.
pub(crate) fn with_kernel_mount<T>(img: &Path, f: impl FnOnce(&Path) -> T) -> Option<T> {
    let m = kernel_mounted(img, &img.with_extension("kmnt"), "loop,ro,noload")?;
    Some(f(&m.mnt))
}

/// What the kernel shows of directory `dir` of `img`: its sorted names,
/// and how many of `names` it finds by lookup; None when not root.
pub(crate) fn kernel_listing(
    img: &Path,
    dir: &str,
    names: &[String],
) -> Option<(Vec<String>, usize)> {
    with_kernel_mount(img, |mnt| {
        let dir = mnt.join(dir);
        let mut listed: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        listed.sort();
        let found = names
            .iter()
            .filter(|n| std::fs::symlink_metadata(dir.join(n)).is_ok())
            .count();
        (listed, found)
    })
}

/// Whether kernel loop mounts and e2fsprogs can be used; skips (see
/// [`skip`]) if not.
pub(crate) fn can_loop_mount() -> bool {
    crate::test_skip::require_root("loop mounts") && have(&["mkfs.ext4", "debugfs"])
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

/// An empty 16 MiB filesystem of 4 KiB blocks on a [`Pausing`] device,
/// open read-write with an empty file "a": for tests that stop one device
/// access to open a race window. The image file is the scratch's.
pub(crate) fn pausing_fs_with_a(
    tag: &str,
) -> (
    Scratch,
    PathBuf,
    Arc<crate::testdev::Pausing>,
    Arc<Ext4>,
    Ino,
) {
    let sc = Scratch::new(tag);
    let src = sc.path().join("src");
    std::fs::create_dir(&src).unwrap();
    let img = mkfs(&sc, &src, &["-b", "4096"], 16 * 1024);
    let dev = Arc::new(crate::testdev::Pausing::new(std::fs::read(&img).unwrap()));
    let fs = Arc::new(open_on(dev.clone() as Arc<dyn BlockDevice>, false));
    let a = fs.create(ROOT_INO, b"a", 0o100644, 0, 0, 0, 0).unwrap().ino;
    (sc, img, dev, fs, a)
}

/// The engine on `dev`, read-only or read-write as asked (it may still
/// serve read-only: callers that care check `is_read_only`).
pub(crate) fn open_on(dev: Arc<dyn BlockDevice>, read_only: bool) -> Ext4 {
    Ext4::open(
        dev,
        OpenOptions {
            read_only,
            ..Default::default()
        },
    )
    .unwrap()
}

pub(crate) fn open_image(img: &Path) -> super::Result<Ext4> {
    let data = std::fs::read(img).unwrap();
    Ext4::open(
        Arc::new(MemDevice::new(data)),
        OpenOptions {
            read_only: true,
            ..Default::default()
        },
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

/// The image a corpus file holds (`.gz` or `.bz2`); None for other files
/// and for archives that do not decompress.
pub(crate) fn corpus_image(path: &Path) -> Option<Vec<u8>> {
    let name = path.file_name()?.to_str()?;
    let tool = if name.ends_with(".gz") {
        "gzip"
    } else if name.ends_with(".bz2") {
        "bzip2"
    } else {
        return None;
    };
    let out = Command::new(tool).arg("-dc").arg(path).output().unwrap();
    out.status.success().then_some(out.stdout)
}

/// Whether the e2fsprogs tools (and, if asked, attr/acl) are present.
pub(crate) fn have(tools: &[&str]) -> bool {
    let ok = tools.iter().all(|t| {
        Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {t}"))
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    });
    if !ok {
        skip(&format!("needs {tools:?} installed"));
    }
    ok
}

/// Runs `cmd args`, which must succeed; its output.
#[track_caller]
pub(crate) fn run_output(cmd: &str, args: &[&str]) -> std::process::Output {
    let out = Command::new(cmd).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs `cmd args`, which must succeed; its standard output.
#[track_caller]
pub(crate) fn run(cmd: &str, args: &[&str]) -> String {
    String::from_utf8_lossy(&run_output(cmd, args).stdout).into_owned()
}

/// mkfs.ext4 -q -F -d SRC [args] IMG SIZE, then e2fsck -fyD to build
/// htree indexes (mkfs -d writes linear directories only).
pub(crate) fn mkfs_img(src: &Path, img: &Path, args: &[&str], size: &str, index: bool) {
    let mut a = vec!["-q", "-F"];
    a.extend_from_slice(args);
    a.extend_from_slice(&["-d", src.to_str().unwrap(), img.to_str().unwrap(), size]);
    run("mkfs.ext4", &a);
    if index {
        // Exit 1 means "errors corrected" (the indexes it made).
        let st = Command::new("e2fsck")
            .args(["-fyD", img.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(st.status.code().unwrap_or(8) <= 1, "e2fsck -D: {st:?}");
    }
}

/// Physical block of logical block `lblk` of `path` in the image.
pub(crate) fn bmap(img: &Path, path: &str, lblk: u64) -> u64 {
    debugfs_out(img, &format!("bmap {path} {lblk}"))
        .trim()
        .parse()
        .unwrap()
}

/// Patches `bytes` at `block * bs + off` in the image file.
pub(crate) fn patch(img: &Path, bs: u64, block: u64, off: u64, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(img).unwrap();
    f.write_all_at(bytes, block * bs + off).unwrap();
}

pub(crate) fn read_byte(img: &Path, bs: u64, block: u64, off: u64) -> u8 {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(img).unwrap();
    let mut b = [0u8];
    f.read_exact_at(&mut b, block * bs + off).unwrap();
    b[0]
}

/// Resolves a '/'-separated path from the root with lookups.
pub(crate) fn resolve(fs: &Ext4, path: &str) -> Ino {
    let mut ino = ROOT_INO;
    for part in path.split('/').filter(|p| !p.is_empty()) {
        ino = fs
            .lookup_ino(ino, part.as_bytes())
            .unwrap_or_else(|e| panic!("lookup {part:?} in {path}: {e}"));
    }
    ino
}

/// readdir names, without "." and "..".
pub(crate) fn list(fs: &Ext4, dir: Ino) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    fs.readdir(dir, 0, &mut |e| {
        if e.name != b"." && e.name != b".." {
            out.push(e.name);
        }
        true
    })
    .unwrap();
    out
}

/// An image made by mkfs with a few files, opened read-write on a
/// MemDevice.
pub(crate) struct RwImage {
    pub(crate) _sc: Scratch,
    pub(crate) img: PathBuf,
    pub(crate) dev: Arc<MemDevice>,
}

impl RwImage {
    pub(crate) fn new(tag: &str, args: &[&str]) -> RwImage {
        let sc = Scratch::new(tag);
        let src = sc.path().join("src");
        std::fs::create_dir_all(src.join("d")).unwrap();
        std::fs::write(src.join("a"), pattern(200_000, 1)).unwrap();
        std::fs::write(src.join("d/b"), b"b").unwrap();
        let img = mkfs(&sc, &src, args, 64 * 1024);
        let dev = Arc::new(MemDevice::new(std::fs::read(&img).unwrap()));
        RwImage { _sc: sc, img, dev }
    }

    pub(crate) fn open(&self) -> Ext4 {
        let fs = Ext4::open(
            self.dev.clone() as Arc<dyn BlockDevice>,
            OpenOptions {
                read_only: false,
                ..Default::default()
            },
        )
        .unwrap();
        assert!(!fs.is_read_only(), "rw refused");
        fs
    }

    /// Writes the device contents back to the image file.
    pub(crate) fn save(&self) -> &Path {
        std::fs::write(&self.img, self.dev.contents()).unwrap();
        &self.img
    }
}

/// `e2fsck ARGS img`: exit status and output.
pub(crate) fn e2fsck(args: &[&str], img: &Path) -> (i32, String) {
    let out = Command::new("e2fsck").args(args).arg(img).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// `e2fsck -fn`: exit status and output.
pub(crate) fn fsck(img: &Path) -> (i32, String) {
    e2fsck(&["-fn"], img)
}

#[track_caller]
pub(crate) fn assert_fsck_clean(img: &Path, what: &str) {
    let (code, text) = fsck(img);
    assert_eq!(code, 0, "e2fsck -fn after {what}:\n{text}");
}

/// dumpe2fs -h field `name` (e.g. "Free blocks").
pub(crate) fn dumpe2fs_field(img: &Path, name: &str) -> String {
    let out = Command::new("dumpe2fs")
        .arg("-h")
        .arg(img)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .unwrap_or_else(|| panic!("no {name} in dumpe2fs -h"))
        .trim()
        .to_string()
}

/// `e2fsck -fn` finds nothing to fix in `img`.
#[track_caller]
pub(crate) fn fsck_clean(img: &Path) {
    assert_fsck_clean(img, &img.display().to_string());
}

/// The tree as the engine shows it: path -> kind, mode, links, size and
/// contents (or symlink target).
pub(crate) fn engine_tree(fs: &Ext4) -> BTreeMap<String, String> {
    fn walk(fs: &Ext4, ino: Ino, path: &str, out: &mut BTreeMap<String, String>) {
        if path.matches('/').count() > 32 {
            return;
        }
        let mut entries = Vec::new();
        if let Err(e) = fs.readdir(ino, 0, &mut |e| {
            entries.push(e);
            true
        }) {
            out.insert(format!("{path}/"), format!("error {e}"));
        }
        for e in entries {
            if e.name == b"." || e.name == b".." {
                continue;
            }
            let p = format!("{path}/{}", String::from_utf8_lossy(&e.name));
            let a = match fs.getattr(e.ino) {
                Ok(a) => a,
                Err(err) => {
                    out.insert(p, format!("error {err}"));
                    continue;
                }
            };
            let desc = match a.kind {
                FileKind::Directory => {
                    walk(fs, e.ino, &p, out);
                    format!("dir {:o} {}", a.perm, a.nlink)
                }
                FileKind::Symlink => {
                    let t = fs
                        .readlink(e.ino)
                        .unwrap_or_else(|e| e.to_string().into_bytes());
                    format!("link {}", String::from_utf8_lossy(&t))
                }
                _ => {
                    let mut buf = vec![0u8; a.size.min(1 << 26) as usize];
                    if let Err(err) = fs.read(e.ino, 0, &mut buf) {
                        buf = err.to_string().into_bytes();
                    }
                    format!(
                        "file {:o} {} {} {:016x}",
                        a.perm,
                        a.nlink,
                        a.size,
                        fnv(&buf)
                    )
                }
            };
            out.insert(p, desc);
        }
    }
    let mut out = BTreeMap::new();
    walk(fs, ROOT_INO, "", &mut out);
    out
}

/// The same description of a tree the kernel has mounted at `root`; `Err`
/// names the path the kernel could not read (a bad checksum, say), so a
/// caller can keep the image that made it fail.
pub(crate) fn kernel_tree(root: &Path) -> Result<BTreeMap<String, String>, String> {
    use std::os::unix::fs::MetadataExt;
    fn walk(dir: &Path, path: &str, out: &mut BTreeMap<String, String>) -> std::io::Result<()> {
        for e in std::fs::read_dir(dir)? {
            let e = e?;
            let p = format!("{path}/{}", e.file_name().to_string_lossy());
            let m = std::fs::symlink_metadata(e.path())?;
            let perm = m.mode() & 0o7777;
            let desc = if m.is_dir() {
                walk(&e.path(), &p, out)?;
                format!("dir {perm:o} {}", m.nlink())
            } else if m.is_symlink() {
                format!("link {}", std::fs::read_link(e.path())?.display())
            } else {
                let data = std::fs::read(e.path())?;
                format!(
                    "file {perm:o} {} {} {:016x}",
                    m.nlink(),
                    m.len(),
                    fnv(&data)
                )
            };
            out.insert(p, desc);
        }
        Ok(())
    }
    let mut out = BTreeMap::new();
    walk(root, "", &mut out).map_err(|e| format!("the kernel could not read the tree: {e}"))?;
    Ok(out)
}

/// FNV-1a of `b`: a content fingerprint for tree comparisons.
pub(crate) fn fnv(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &x| {
        (h ^ u64::from(x)).wrapping_mul(0x100_0000_01b3)
    })
}

/// Frees block `blk` in one transaction, takes it again in another (the
/// allocator must give back the same block) and writes `data` to it as
/// file data: a freed metadata block reused for data.
pub(crate) fn free_and_reuse_for_data(fs: &Ext4, blk: u64, data: &[u8]) {
    let mut txn = fs.begin().unwrap();
    txn.free_blocks(blk, 1).unwrap();
    txn.commit().unwrap();
    let mut txn = fs.begin().unwrap();
    let (again, _) = txn.alloc_blocks(blk, 1, false).unwrap();
    txn.commit().unwrap();
    assert_eq!(again, blk, "the allocator gave another block");
    fs.write_data(blk, 0, data).unwrap();
}
