//! Crash consistency of the engine's journaled writes (issue 8, section 3),
//! on a power-loss device ([`PowerLoss`]).
//!
//! A seeded workload runs through the engine API on an mkfs.ext4-made
//! image opened read-write: create, write, fsync (`Ext4::flush`, what the
//! FUSE fsync and fsyncdir call), rename (files, empty directories, over
//! an existing name), unlink, hard links, truncate, fallocate (allocate,
//! keep size, punch hole, zero range), setxattr, mkdir/rmdir, bursts of
//! creates (large transactions: the quarter-journal commit), periodic
//! write-back (`Ext4::writeback`), and the unmount (`Ext4::shutdown`). A
//! model of every file's content and xattrs is kept and checked against the
//! engine at each fsync, where the file's name, inode, content and xattrs
//! are recorded, valid until the first later operation that touches that
//! name or inode starts.
//!
//! The device is then crashed at many distinct recorded operations (each
//! with its own seed for the subset and order of unflushed writes). After
//! each crash:
//! 1. safemount's read-write replay (`recover_at_open`, in place on a copy)
//!    gives an image `e2fsck -fn` finds clean, and the engine opens it;
//! 2. every fsync'd file whose record is valid at the crash point holds
//!    exactly its fsync'd content and xattrs under its fsync'd name;
//! 3. on a sample of points: `e2fsck -fy` of a copy of the raw crashed
//!    image (exit 0 or 1, then `-fn` clean) and the kernel's replay (loop
//!    mount read-write of another copy) show the same tree as safemount's
//!    replay; and a read-write safemount mount of the replayed image,
//!    unmounted at once, is still e2fsck-clean.
//!
//! Configurations: defaults, 1 KiB blocks with a 1 MiB journal, no
//! metadata_csum, no 64bit, ext3. About 100 crash points per configuration;
//! `SAFEMOUNT_LONG_CRASH=1` runs a longer workload crashed at >= 1,000
//! distinct points per configuration. For hunts by hand,
//! `SAFEMOUNT_CRASH_SEED=N` changes every configuration's workload and crash
//! seeds, and `SAFEMOUNT_CRASH_KERNEL_EVERY=K` compares the kernel's replay
//! at every Kth point (1: all). The kernel comparison needs root and loop
//! devices (skipped with a message otherwise); the rest needs e2fsprogs.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use super::recover_at_open;

use crate::ext4::ondisk::inode::S_IFREG;
use crate::ext4::testutil::{
    Scratch, e2fsck, engine_tree, have_mkfs, kernel_tree, loop_mounted, mkfs, open_on, pattern,
};
use crate::ext4::types::{RenameFlags, SetAttr, XattrFlags};
use crate::ext4::{Error, Ext4, FallocMode, Ino, OpenOptions, ROOT_INO};
use crate::io::{BlockDevice, MemDevice};
use crate::testdev::{PowerLoss, Rng};

fn long_run() -> bool {
    std::env::var_os("SAFEMOUNT_LONG_CRASH").is_some_and(|v| v == "1")
}

/// A number from the environment variable `name`, if set and valid.
fn env_number(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    match v.parse() {
        Ok(n) => Some(n),
        Err(_) => panic!("{name}={v}: not a number"),
    }
}

#[derive(Default, Clone)]
struct FileM {
    data: Vec<u8>,
    xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
}

/// A file as it was when fsync returned.
struct Rec {
    path: String,
    ino: Ino,
    file: FileM,
    /// Device operations issued when fsync returned: crash points from
    /// here on must show it.
    durable_at: usize,
    /// Device operations issued when the first later operation touching
    /// its name or inode started (crash points up to here must show it).
    valid_until: usize,
}

#[derive(Default, Debug)]
struct Stats {
    ops: usize,
    fsyncs: usize,
    /// Journal commits started inside an operation other than fsync,
    /// write-back or unmount (the write-back set reached its limit, or
    /// file data went to blocks freed since the last commit).
    limit_commits: usize,
    /// Times the log head wrapped to the start of the log.
    wraps: usize,
    commits: u32,
}

struct Work<'a> {
    fs: &'a Ext4,
    dev: &'a PowerLoss,
    rng: Rng,
    bs: usize,
    /// Directories files may be created in: the fixed top directories,
    /// then the removable subdirectories.
    top: Vec<(String, Ino)>,
    subdirs: BTreeMap<String, Ino>,
    names: BTreeMap<String, Ino>,
    files: BTreeMap<Ino, FileM>,
    recs: Vec<Rec>,
    n: u64,
    stats: Stats,
    last_head: u32,
}

fn split(path: &str) -> (&str, &str) {
    path.rsplit_once('/').unwrap_or(("", path))
}

/// The inode `path` names in `fs`.
fn resolve(fs: &Ext4, path: &str) -> Result<Ino, Error> {
    let mut ino = ROOT_INO;
    for c in path.split('/').filter(|c| !c.is_empty()) {
        ino = fs.lookup(ino, c.as_bytes())?.ino;
    }
    Ok(ino)
}

fn user_xattrs(fs: &Ext4, ino: Ino) -> Result<BTreeMap<Vec<u8>, Vec<u8>>, Error> {
    let mut out = BTreeMap::new();
    for name in fs.listxattr(ino)? {
        if name.starts_with(b"user.") {
            let v = fs.getxattr(ino, &name)?;
            out.insert(name, v);
        }
    }
    Ok(out)
}

fn read_all(fs: &Ext4, ino: Ino) -> Result<Vec<u8>, Error> {
    let size = fs.getattr(ino)?.size;
    let mut buf = vec![0u8; size as usize];
    let mut at = 0;
    while at < buf.len() {
        let n = fs.read(ino, at as u64, &mut buf[at..])?;
        if n == 0 {
            break;
        }
        at += n;
    }
    buf.truncate(at);
    Ok(buf)
}

impl Work<'_> {
    fn pick<T: Clone>(&mut self, v: &[T]) -> Option<T> {
        if v.is_empty() {
            None
        } else {
            Some(v[self.rng.below(v.len())].clone())
        }
    }

    fn dirs(&self) -> Vec<(String, Ino)> {
        let mut d = self.top.clone();
        d.extend(self.subdirs.iter().map(|(p, i)| (p.clone(), *i)));
        d
    }

    fn new_name(&mut self, prefix: &str) -> String {
        self.n += 1;
        // Some long names, so directory blocks fill and split.
        if self.rng.below(4) == 0 {
            format!("{prefix}{}-{}", self.n, "x".repeat(self.rng.below(120)))
        } else {
            format!("{prefix}{}", self.n)
        }
    }

    fn file_names(&self) -> Vec<String> {
        self.names.keys().cloned().collect()
    }

    /// Ends the validity of every record on `paths` or `inos` at `start`.
    fn touch(&mut self, start: usize, paths: &[&str], inos: &[Ino]) {
        for r in &mut self.recs {
            if r.valid_until == usize::MAX
                && (paths.contains(&r.path.as_str()) || inos.contains(&r.ino))
            {
                r.valid_until = start;
            }
        }
    }

    fn check_model(&self, ino: Ino, what: &str) {
        let m = &self.files[&ino];
        let got = read_all(self.fs, ino).unwrap();
        assert!(
            got == m.data,
            "{what}: engine content of inode {ino} ({} bytes) differs from the model ({} bytes)",
            got.len(),
            m.data.len()
        );
        assert_eq!(
            user_xattrs(self.fs, ino).unwrap(),
            m.xattrs,
            "{what}: xattrs"
        );
    }

    fn log_seq_head(&self) -> (u32, u32) {
        self.fs.log_stats().map_or((0, 0), |l| (l.next_seq, l.head))
    }

    /// One random operation.
    fn step(&mut self) {
        let start = self.dev.ops();
        let (seq0, _) = self.log_seq_head();
        let choice = self.rng.below(100);
        let mut journal_op = false;
        match choice {
            0..=9 => self.create(start),
            10..=29 => self.write(start),
            30..=41 => {
                self.fsync();
                journal_op = true;
            }
            42..=47 => self.rename(start),
            48..=52 => self.unlink(start),
            53..=56 => self.link(start),
            57..=61 => self.truncate(start),
            62..=67 => self.fallocate(start),
            68..=73 => self.setxattr(start),
            74..=78 => self.mkdir(),
            79..=81 => self.rmdir(),
            82..=83 => self.rename_dir(),
            84..=87 => {
                self.fs.writeback().unwrap();
                journal_op = true;
            }
            88..=89 => self.burst(),
            _ => self.write(start),
        }
        self.stats.ops += 1;
        let (seq1, head) = self.log_seq_head();
        if !journal_op && seq1 != seq0 {
            self.stats.limit_commits += 1;
        }
        if head < self.last_head {
            self.stats.wraps += 1;
        }
        self.last_head = head;
    }

    fn create(&mut self, start: usize) {
        let (dpath, dino) = self.pick(&self.dirs()).unwrap();
        let name = self.new_name("f");
        let path = format!("{dpath}/{name}");
        let a = self
            .fs
            .create(dino, name.as_bytes(), S_IFREG | 0o644, 0, 0, 0, 0o022)
            .unwrap();
        self.touch(start, &[&path], &[]);
        self.names.insert(path, a.ino);
        self.files.insert(a.ino, FileM::default());
    }

    /// Creates many files in one go (no fsync): a large write-back set.
    fn burst(&mut self) {
        let (dpath, dino) = self.pick(&self.top.clone()).unwrap();
        for _ in 0..24 {
            let name = self.new_name("b");
            let a = self
                .fs
                .create(dino, name.as_bytes(), S_IFREG | 0o600, 0, 0, 0, 0)
                .unwrap();
            self.names.insert(format!("{dpath}/{name}"), a.ino);
            self.files.insert(a.ino, FileM::default());
        }
    }

    /// A transaction-limit burst: a new directory of 240 files, each with
    /// an xattr too big for its inode (an xattr block each), so the
    /// write-back set crosses a quarter of the journal inside the burst
    /// (a commit from `Txn::commit`) and the log wraps.
    fn big_burst(&mut self) {
        let (tp, tino) = self.pick(&self.top.clone()).unwrap();
        let dname = self.new_name("big");
        let dino = self
            .fs
            .mkdir(tino, dname.as_bytes(), 0o755, 0, 0, 0)
            .unwrap()
            .ino;
        let dpath = format!("{tp}/{dname}");
        for i in 0..240 {
            let name = format!("g{i}");
            let a = self
                .fs
                .create(dino, name.as_bytes(), S_IFREG | 0o600, 0, 0, 0, 0)
                .unwrap();
            let value = pattern(self.bs / 3, self.rng.next());
            self.fs
                .setxattr(a.ino, b"user.big", &value, XattrFlags::default())
                .unwrap();
            let mut m = FileM::default();
            m.xattrs.insert(b"user.big".to_vec(), value);
            self.names.insert(format!("{dpath}/{name}"), a.ino);
            self.files.insert(a.ino, m);
        }
        self.subdirs.insert(dpath, dino);
    }

    fn write(&mut self, start: usize) {
        let Some(path) = self.pick(&self.file_names()) else {
            return self.create(start);
        };
        let ino = self.names[&path];
        let size = self.files[&ino].data.len();
        let off = match self.rng.below(3) {
            0 => size,
            _ => self.rng.below(24 << 10),
        };
        let max = if self.rng.below(4) == 0 {
            16 << 10
        } else {
            3000
        };
        let len = 1 + self.rng.below(max);
        let data = pattern(len, self.rng.next());
        let n = self.fs.write(ino, off as u64, &data).unwrap();
        assert_eq!(n, len);
        self.touch(start, &[], &[ino]);
        let m = self.files.get_mut(&ino).unwrap();
        if m.data.len() < off + len {
            m.data.resize(off + len, 0);
        }
        m.data[off..off + len].copy_from_slice(&data);
    }

    fn fsync(&mut self) {
        let Some(path) = self.pick(&self.file_names()) else {
            return;
        };
        let ino = self.names[&path];
        self.check_model(ino, &format!("fsync of {path}"));
        self.fs.flush().unwrap();
        self.stats.fsyncs += 1;
        self.recs.push(Rec {
            path,
            ino,
            file: self.files[&ino].clone(),
            durable_at: self.dev.ops(),
            valid_until: usize::MAX,
        });
    }

    /// What the FUSE adapter does when the last link of an inode nobody
    /// holds open went: frees it at once (it sat on the orphan list for
    /// one transaction).
    fn release(&self, gone: Option<Ino>) {
        if let Some(ino) = gone {
            self.fs.release_inode(ino).unwrap();
        }
    }

    /// Drops name `path` from the model (and its inode if that was its
    /// last name).
    fn drop_name(&mut self, path: &str) {
        let ino = self.names.remove(path).unwrap();
        if !self.names.values().any(|&i| i == ino) {
            self.files.remove(&ino);
        }
    }

    fn rename(&mut self, start: usize) {
        let Some(from) = self.pick(&self.file_names()) else {
            return;
        };
        let to = if self.rng.below(3) == 0 {
            // Over an existing file (maybe a link to the same inode).
            self.pick(&self.file_names()).unwrap()
        } else {
            let (dpath, _) = self.pick(&self.dirs()).unwrap();
            format!("{dpath}/{}", self.new_name("r"))
        };
        let (fp, fname) = split(&from);
        let (tp, tname) = split(&to);
        let (fdir, tdir) = (resolve(self.fs, fp).unwrap(), resolve(self.fs, tp).unwrap());
        let gone = self
            .fs
            .rename(
                fdir,
                fname.as_bytes(),
                tdir,
                tname.as_bytes(),
                RenameFlags::default(),
            )
            .unwrap();
        self.release(gone);
        self.touch(start, &[&from, &to], &[]);
        if from == to {
            return;
        }
        let ino = self.names[&from];
        if self.names.get(&to) == Some(&ino) {
            // rename(2) between two links of one inode does nothing.
            return;
        }
        if self.names.contains_key(&to) {
            self.drop_name(&to);
        }
        self.names.remove(&from);
        self.names.insert(to, ino);
    }

    fn unlink(&mut self, start: usize) {
        let Some(path) = self.pick(&self.file_names()) else {
            return;
        };
        let (dp, name) = split(&path);
        let dir = resolve(self.fs, dp).unwrap();
        let gone = self.fs.unlink(dir, name.as_bytes()).unwrap();
        self.release(gone);
        self.touch(start, &[&path], &[]);
        self.drop_name(&path);
    }

    fn link(&mut self, start: usize) {
        let Some(path) = self.pick(&self.file_names()) else {
            return;
        };
        let ino = self.names[&path];
        let (dpath, dino) = self.pick(&self.dirs()).unwrap();
        let name = self.new_name("l");
        let to = format!("{dpath}/{name}");
        self.fs.link(ino, dino, name.as_bytes()).unwrap();
        self.touch(start, &[&to], &[]);
        self.names.insert(to, ino);
    }

    fn truncate(&mut self, start: usize) {
        let Some(path) = self.pick(&self.file_names()) else {
            return;
        };
        let ino = self.names[&path];
        let size = self.rng.below(40 << 10);
        self.fs
            .setattr(
                ino,
                SetAttr {
                    size: Some(size as u64),
                    ..SetAttr::default()
                },
            )
            .unwrap();
        self.touch(start, &[], &[ino]);
        self.files.get_mut(&ino).unwrap().data.resize(size, 0);
    }

    fn fallocate(&mut self, start: usize) {
        let Some(path) = self.pick(&self.file_names()) else {
            return;
        };
        let ino = self.names[&path];
        let off = self.rng.below(32 << 10);
        let len = 1 + self.rng.below(20 << 10);
        let mode = match self.rng.below(5) {
            0 => FallocMode::default(),
            1 => FallocMode {
                keep_size: true,
                ..FallocMode::default()
            },
            2 => FallocMode {
                keep_size: true,
                punch_hole: true,
                ..FallocMode::default()
            },
            3 => FallocMode {
                zero_range: true,
                ..FallocMode::default()
            },
            _ => FallocMode {
                zero_range: true,
                keep_size: true,
                ..FallocMode::default()
            },
        };
        match self.fs.fallocate(ino, off as u64, len as u64, mode) {
            Ok(()) => {}
            // ext3 (no extents): the kernel refuses fallocate as well.
            Err(Error::Unsupported(_)) => return,
            Err(e) => panic!("fallocate {path} {off}+{len} {mode:?}: {e}"),
        }
        self.touch(start, &[], &[ino]);
        let m = self.files.get_mut(&ino).unwrap();
        let size = m.data.len();
        let end = off + len;
        if mode.punch_hole || mode.zero_range {
            let zend = end.min(size);
            if off < zend {
                m.data[off..zend].fill(0);
            }
        }
        if !mode.keep_size && end > size {
            m.data.resize(end, 0);
        }
    }

    fn setxattr(&mut self, start: usize) {
        let Some(path) = self.pick(&self.file_names()) else {
            return;
        };
        let ino = self.names[&path];
        let name = format!("user.k{}", self.rng.below(4)).into_bytes();
        let len = if self.rng.below(3) == 0 {
            // Too big for the inode: an xattr block.
            self.bs / 4 + self.rng.below(self.bs / 4)
        } else {
            self.rng.below(40)
        };
        let value = pattern(len, self.rng.next());
        // Keep the inode's xattrs well within one block: drop others first.
        let cost = |v: &[u8]| v.len() + 40;
        loop {
            let m = &self.files[&ino];
            let others: usize = m
                .xattrs
                .iter()
                .filter(|(k, _)| **k != name)
                .map(|(_, v)| cost(v))
                .sum();
            if others + cost(&value) <= self.bs / 2 + 64 {
                break;
            }
            let k = m.xattrs.keys().find(|k| **k != name).unwrap().clone();
            self.fs.removexattr(ino, &k).unwrap();
            self.files.get_mut(&ino).unwrap().xattrs.remove(&k);
        }
        self.fs
            .setxattr(ino, &name, &value, XattrFlags::default())
            .unwrap();
        self.touch(start, &[], &[ino]);
        self.files.get_mut(&ino).unwrap().xattrs.insert(name, value);
    }

    fn mkdir(&mut self) {
        let (dpath, dino) = self.pick(&self.top.clone()).unwrap();
        let name = self.new_name("s");
        let a = self
            .fs
            .mkdir(dino, name.as_bytes(), 0o755, 0, 0, 0o022)
            .unwrap();
        self.subdirs.insert(format!("{dpath}/{name}"), a.ino);
    }

    fn empty_subdirs(&self) -> Vec<String> {
        self.subdirs
            .keys()
            .filter(|d| {
                let pre = format!("{d}/");
                !self.names.keys().any(|n| n.starts_with(&pre))
            })
            .cloned()
            .collect()
    }

    fn rmdir(&mut self) {
        let Some(d) = self.pick(&self.empty_subdirs()) else {
            return;
        };
        let (dp, name) = split(&d);
        let parent = resolve(self.fs, dp).unwrap();
        let gone = self.fs.rmdir(parent, name.as_bytes()).unwrap();
        self.release(gone);
        self.subdirs.remove(&d);
    }

    fn rename_dir(&mut self) {
        let Some(d) = self.pick(&self.empty_subdirs()) else {
            return;
        };
        let (dp, name) = split(&d);
        let (tp, tino) = self.pick(&self.top.clone()).unwrap();
        let newname = self.new_name("s");
        let parent = resolve(self.fs, dp).unwrap();
        self.fs
            .rename(
                parent,
                name.as_bytes(),
                tino,
                newname.as_bytes(),
                RenameFlags::default(),
            )
            .unwrap();
        let ino = self.subdirs.remove(&d).unwrap();
        self.subdirs.insert(format!("{tp}/{newname}"), ino);
    }
}

/// One configuration's run: its figures.
#[derive(Debug, Default)]
struct Figures {
    device_ops: usize,
    points: usize,
    compared: usize,
    kernel_compared: usize,
    fsync_checks: usize,
    failures: Vec<String>,
}

fn mem(img: Vec<u8>) -> (Arc<MemDevice>, Arc<dyn BlockDevice>) {
    let m = Arc::new(MemDevice::new(img));
    let d: Arc<dyn BlockDevice> = m.clone();
    (m, d)
}

fn open_ro(img: Vec<u8>) -> Result<Ext4, Error> {
    Ext4::open(
        mem(img).1,
        OpenOptions {
            read_only: true,
            ..Default::default()
        },
    )
}

fn can_kernel() -> bool {
    nix::unistd::geteuid().is_root() && Path::new("/dev/loop-control").exists()
}

/// Checks one crash image; returns what failed.
fn check_point(
    sc: &Scratch,
    tag: &str,
    crashed: Vec<u8>,
    point: usize,
    recs: &[Rec],
    compare: bool,
    fig: &mut Figures,
) -> Result<(), String> {
    // 1. safemount's read-write replay, in place on a copy.
    let (m, d) = mem(crashed.clone());
    recover_at_open(
        d,
        &OpenOptions {
            read_only: false,
            ..Default::default()
        },
        true,
    )
    .map_err(|e| format!("our replay failed: {e}"))?;
    let ours = m.contents();
    let img = sc.path().join("ours.img");
    std::fs::write(&img, &ours).unwrap();
    let (code, out) = e2fsck(&["-fn"], &img);
    if code != 0 {
        return Err(format!("e2fsck -fn after our replay: exit {code}\n{out}"));
    }
    let fs = open_ro(ours.clone()).map_err(|e| format!("engine open after replay: {e}"))?;
    // 2. fsync'd files.
    for r in recs
        .iter()
        .filter(|r| r.durable_at <= point && point <= r.valid_until)
    {
        fig.fsync_checks += 1;
        let ino = resolve(&fs, &r.path)
            .map_err(|e| format!("fsync'd {} (inode {}): {e}", r.path, r.ino))?;
        if ino != r.ino {
            return Err(format!(
                "fsync'd {} names inode {ino}, not {}",
                r.path, r.ino
            ));
        }
        let data = read_all(&fs, ino).map_err(|e| format!("read {}: {e}", r.path))?;
        if data != r.file.data {
            let first = data
                .iter()
                .zip(&r.file.data)
                .position(|(a, b)| a != b)
                .unwrap_or(data.len().min(r.file.data.len()));
            return Err(format!(
                "fsync'd {}: {} bytes, expected {}; first difference at byte {first}",
                r.path,
                data.len(),
                r.file.data.len()
            ));
        }
        let x = user_xattrs(&fs, ino).map_err(|e| format!("xattrs {}: {e}", r.path))?;
        if x != r.file.xattrs {
            return Err(format!("fsync'd {}: xattrs differ", r.path));
        }
    }
    if !compare {
        return Ok(());
    }
    fig.compared += 1;
    let tree = engine_tree(&fs);
    drop(fs);
    // 3a. e2fsck's replay of the raw crashed image.
    let theirs = sc.path().join("e2fsck.img");
    std::fs::write(&theirs, &crashed).unwrap();
    let (code, out) = e2fsck(&["-fy"], &theirs);
    if code > 1 {
        return Err(format!(
            "e2fsck -fy of the crashed image: exit {code}\n{out}"
        ));
    }
    let (code, out) = e2fsck(&["-fn"], &theirs);
    if code != 0 {
        return Err(format!(
            "e2fsck -fn after e2fsck's replay: exit {code}\n{out}"
        ));
    }
    let ftree = engine_tree(
        &open_ro(std::fs::read(&theirs).unwrap())
            .map_err(|e| format!("engine open after e2fsck: {e}"))?,
    );
    if ftree != tree {
        return Err(format!(
            "tree after e2fsck's replay differs from ours:\n{}",
            tree_diff(&tree, &ftree)
        ));
    }
    // 3b. A read-write mount of our replay, unmounted at once.
    let (m, d) = mem(ours);
    let fs = Ext4::open(
        d,
        OpenOptions {
            read_only: false,
            ..Default::default()
        },
    )
    .map_err(|e| format!("read-write open after replay: {e}"))?;
    if fs.info().read_only {
        return Err("read-write open after replay served read-only".into());
    }
    fs.shutdown().map_err(|e| format!("unmount: {e}"))?;
    drop(fs);
    let remount = sc.path().join("remount.img");
    std::fs::write(&remount, m.contents()).unwrap();
    let (code, out) = e2fsck(&["-fn"], &remount);
    if code != 0 {
        return Err(format!(
            "e2fsck -fn after a safemount mount of the replay: exit {code}\n{out}"
        ));
    }
    // 3c. The kernel's replay.
    if can_kernel() {
        fig.kernel_compared += 1;
        let kimg = sc.path().join("kernel.img");
        std::fs::write(&kimg, &crashed).unwrap();
        // Without CONFIG_QFMT_V2 (this kernel) a quota filesystem mounts
        // read-only only; the kernel replays the journal all the same.
        let ro_compat = crashed
            .get(1024 + 0x64..1024 + 0x68)
            .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
        let opts = if ro_compat & 0x100 != 0 { "ro" } else { "rw" };
        let ktree = {
            let lp = loop_mounted(&kimg, &sc.path().join(format!("{tag}.kmnt")), opts);
            kernel_tree(&lp.mnt)?
        };
        if ktree != tree {
            return Err(format!(
                "tree after the kernel's replay differs from ours:\n{}",
                tree_diff(&tree, &ktree)
            ));
        }
    }
    Ok(())
}

fn tree_diff(a: &BTreeMap<String, String>, b: &BTreeMap<String, String>) -> String {
    let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .take(10)
        .map(|k| format!("  {k}: ours {:?}, theirs {:?}", a.get(k), b.get(k)))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Runs the workload on a fresh mkfs `args` image of `size_kib`, then
/// crashes it at `points` distinct points (all of them if fewer).
fn run_config(tag: &str, args: &[&str], size_kib: u64, seed: u64) -> Figures {
    let long = long_run();
    let (steps, points, mut compare_every) = if long {
        (1400, 1000, 20)
    } else {
        (220, 100, 25)
    };
    if let Some(k) = env_number("SAFEMOUNT_CRASH_KERNEL_EVERY") {
        compare_every = (k as usize).max(1);
    }
    let seed = seed.wrapping_add(env_number("SAFEMOUNT_CRASH_SEED").unwrap_or(0) << 8);
    let sc = Scratch::new(&format!("crash-{tag}"));
    let src = sc.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let img = mkfs(&sc, &src, args, size_kib);
    let base = std::fs::read(&img).unwrap();
    let dev = Arc::new(PowerLoss::new(base));
    let t = Instant::now();
    let fs = open_on(dev.clone(), false);
    assert!(!fs.info().read_only, "{tag}: opened read-only");
    assert!(fs.log_stats().is_some(), "{tag}: not journaling");
    let seq0 = fs.log_stats().map_or(0, |l| l.next_seq);
    let mut top = Vec::new();
    for d in 0..4 {
        let name = format!("d{d}");
        let a = fs.mkdir(ROOT_INO, name.as_bytes(), 0o755, 0, 0, 0).unwrap();
        top.push((name, a.ino));
    }
    let mut w = Work {
        fs: &fs,
        dev: &dev,
        rng: Rng::new(seed),
        bs: fs.block_size() as usize,
        top,
        subdirs: BTreeMap::new(),
        names: BTreeMap::new(),
        files: BTreeMap::new(),
        recs: Vec::new(),
        n: 0,
        stats: Stats::default(),
        last_head: 0,
    };
    let mut bursts = 0;
    for i in 0..steps {
        if i % 70 == 35 && bursts < 4 {
            let (seq0, _) = w.log_seq_head();
            w.big_burst();
            bursts += 1;
            let (seq1, head) = w.log_seq_head();
            w.stats.limit_commits += (seq1 - seq0) as usize;
            if head < w.last_head {
                w.stats.wraps += 1;
            }
            w.last_head = head;
        }
        w.step();
    }
    // A last fsync of everything, then the unmount.
    for ino in w.files.keys() {
        w.check_model(*ino, "end");
    }
    let start = dev.ops();
    fs.shutdown().unwrap();
    w.touch(start, &[], &[]);
    w.stats.commits = fs.log_stats().map_or(0, |l| l.next_seq) - seq0;
    let Work { recs, stats, .. } = w;
    drop(fs);
    let total = dev.ops();
    let workload_time = t.elapsed();
    // Distinct crash points: evenly spread plus seeded ones, and the end.
    let mut rng = Rng::new(seed ^ 0xC4A5);
    let mut chosen = BTreeSet::new();
    if points > total {
        chosen.extend(0..=total);
    } else {
        chosen.insert(total);
        for i in 0..points / 2 {
            chosen.insert(i * total / (points / 2));
        }
        while chosen.len() < points {
            chosen.insert(rng.below(total + 1));
        }
    }
    let mut fig = Figures {
        device_ops: total,
        points: chosen.len(),
        ..Figures::default()
    };
    let t = Instant::now();
    for (i, &p) in chosen.iter().enumerate() {
        let cseed = seed.wrapping_mul(31).wrapping_add(p as u64);
        let crashed = dev.crash_at(p, cseed);
        let compare = i % compare_every == compare_every / 2 || p == total;
        if let Err(why) = check_point(&sc, tag, crashed.clone(), p, &recs, compare, &mut fig) {
            let keep = std::env::temp_dir().join(format!("safemount-crash-{tag}-{p}-{cseed}.img"));
            if fig.failures.len() < 3 {
                std::fs::write(&keep, &crashed).unwrap();
            }
            fig.failures.push(format!(
                "{tag}: crash point {p}/{total} seed {cseed} (image {}): {why}",
                keep.display()
            ));
        }
    }
    eprintln!(
        "crash {tag}: workload {:?} ({} steps, {} fsyncs, {} journal commits, {} inside \
         other operations, log wrapped {} times, {} device ops); {} crash points ({} compared \
         with e2fsck, {} with the kernel), {} fsync'd-file checks in {:?}; {} failures",
        workload_time,
        stats.ops,
        stats.fsyncs,
        stats.commits,
        stats.limit_commits,
        stats.wraps,
        fig.device_ops,
        fig.points,
        fig.compared,
        fig.kernel_compared,
        fig.fsync_checks,
        t.elapsed(),
        fig.failures.len()
    );
    fig
}

fn crash_config(tag: &str, args: &[&str], size_kib: u64, seed: u64) {
    if !have_mkfs() {
        return;
    }
    let fig = run_config(tag, args, size_kib, seed);
    assert!(
        fig.failures.is_empty(),
        "{} of {} crash points failed:\n{}",
        fig.failures.len(),
        fig.points,
        fig.failures.join("\n")
    );
    assert!(fig.fsync_checks > 0, "{tag}: no fsync'd file was checked");
}

#[test]
fn crash_defaults() {
    crash_config("defaults", &[], 16 << 10, 1);
}

#[test]
fn crash_1k_blocks_small_journal() {
    crash_config("1k", &["-b", "1024", "-J", "size=1"], 16 << 10, 2);
}

#[test]
fn crash_no_metadata_csum() {
    crash_config("nocsum", &["-O", "^metadata_csum"], 16 << 10, 3);
}

#[test]
fn crash_no_64bit() {
    crash_config("no64", &["-O", "^64bit"], 16 << 10, 4);
}

/// Quota files are journaled with the inodes whose usage they count:
/// after any crash and replay, e2fsck finds usage exact.
#[test]
fn crash_quota() {
    crash_config(
        "quota",
        &[
            "-O",
            "quota,project",
            "-E",
            "quotatype=usrquota:grpquota:prjquota",
        ],
        16 << 10,
        6,
    );
}

#[test]
fn crash_ext3() {
    crash_config("ext3", &["-t", "ext3"], 16 << 10, 5);
}
