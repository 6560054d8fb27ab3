//! The randomized operation generator of the differential test: a seeded
//! stream of filesystem operations (every write operation a user can make,
//! plus read-backs), applied through ordinary system calls to a mounted
//! tree, each with a comparable [`Outcome`] (errno included).
//!
//! The generator keeps a model of which paths exist (updated from the
//! outcome on the system under test), so most operations hit existing
//! objects; the model may drift, which only makes an operation fail the
//! same way on both sides.
//!
//! Safety of the walk: symlink targets never start with `/` and never
//! contain `..`, so no path the operations follow can leave the mount.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::util::{Digest, Rng, errno_name};

/// FALLOC_FL_* bits (linux/falloc.h).
pub const FALLOC_KEEP_SIZE: i32 = 0x01;
pub const FALLOC_PUNCH_HOLE: i32 = 0x02;
pub const FALLOC_ZERO_RANGE: i32 = 0x10;

/// RENAME_* flags (linux/fs.h).
pub const RENAME_NOREPLACE: u32 = 1;
pub const RENAME_EXCHANGE: u32 = 2;
pub const RENAME_WHITEOUT: u32 = 4;

/// A timestamp argument of utimensat.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Time {
    Now,
    Omit,
    At(i64, i64),
}

/// One operation; paths are relative to the mount root.
#[derive(Clone, Debug)]
pub enum Op {
    Create {
        path: String,
        mode: u32,
    },
    Mknod {
        path: String,
        mode: u32,
        rdev: u64,
    },
    Mkdir {
        path: String,
        mode: u32,
    },
    Symlink {
        target: Vec<u8>,
        path: String,
    },
    Link {
        from: String,
        to: String,
    },
    Unlink {
        path: String,
    },
    Rmdir {
        path: String,
    },
    Rename {
        from: String,
        to: String,
        flags: u32,
    },
    Write {
        path: String,
        offset: u64,
        len: usize,
        seed: u64,
        append: bool,
    },
    Truncate {
        path: String,
        size: u64,
    },
    Fallocate {
        path: String,
        mode: i32,
        offset: u64,
        len: u64,
    },
    Chmod {
        path: String,
        mode: u32,
    },
    Chown {
        path: String,
        uid: u32,
        gid: u32,
    },
    Utimens {
        path: String,
        atime: Time,
        mtime: Time,
    },
    SetXattr {
        path: String,
        name: String,
        len: usize,
        seed: u64,
        flags: i32,
    },
    /// A raw value for a system.posix_acl_* name.
    SetAcl {
        path: String,
        name: String,
        value: Vec<u8>,
    },
    RemoveXattr {
        path: String,
        name: String,
    },
    Fsync {
        path: String,
    },
    /// Opens a file, unlinks it, writes and reads it back while it has no
    /// name, then closes it (orphan handling and release).
    OrphanWrite {
        path: String,
        len: usize,
        seed: u64,
    },
    Stat {
        path: String,
    },
    Read {
        path: String,
        offset: u64,
        len: usize,
    },
    ReadDir {
        path: String,
    },
    GetXattrs {
        path: String,
    },
    SeekMap {
        path: String,
    },
}

/// What an operation returned: a comparable summary, or the errno name.
pub type Outcome = std::result::Result<String, String>;

impl Op {
    /// The model paths this operation adds or removes on success.
    fn update(&self, m: &mut Model) {
        match self {
            Op::Create { path, .. } | Op::Mknod { path, .. } | Op::Symlink { path, .. } => {
                m.add_file(path)
            }
            Op::Link { to, .. } => m.add_file(to),
            Op::Mkdir { path, .. } => m.add_dir(path),
            Op::Unlink { path } | Op::OrphanWrite { path, .. } => m.remove(path),
            Op::Rmdir { path } => m.remove(path),
            Op::Rename { from, to, flags } => {
                if flags & RENAME_EXCHANGE != 0 {
                    m.exchange(from, to);
                } else {
                    m.remove(to);
                    m.move_prefix(from, to);
                    if flags & RENAME_WHITEOUT != 0 {
                        m.add_file(from);
                    }
                }
            }
            _ => {}
        }
    }
}

/// The generator's idea of which paths exist.
#[derive(Clone, Debug, Default)]
pub struct Model {
    /// Directories, "" being the root.
    pub dirs: Vec<String>,
    /// Everything that is not a directory.
    pub files: Vec<String>,
}

fn under(p: &str, prefix: &str) -> bool {
    p == prefix
        || (p.len() > prefix.len() && p.starts_with(prefix) && p.as_bytes()[prefix.len()] == b'/')
}

fn reprefix(p: &str, from: &str, to: &str) -> String {
    format!("{to}{}", &p[from.len()..])
}

impl Model {
    pub fn new() -> Self {
        Self {
            dirs: vec![String::new()],
            files: Vec::new(),
        }
    }
    fn add_file(&mut self, p: &str) {
        if !self.files.iter().any(|f| f == p) {
            self.files.push(p.to_owned());
        }
    }
    fn add_dir(&mut self, p: &str) {
        if !self.dirs.iter().any(|f| f == p) {
            self.dirs.push(p.to_owned());
        }
    }
    fn remove(&mut self, p: &str) {
        if p.is_empty() {
            return;
        }
        self.files.retain(|f| !under(f, p));
        self.dirs.retain(|f| !under(f, p));
    }
    fn move_prefix(&mut self, from: &str, to: &str) {
        for v in [&mut self.files, &mut self.dirs] {
            for f in v.iter_mut() {
                if under(f, from) {
                    *f = reprefix(f, from, to);
                }
            }
        }
    }
    fn exchange(&mut self, a: &str, b: &str) {
        for v in [&mut self.files, &mut self.dirs] {
            for f in v.iter_mut() {
                if under(f, a) {
                    *f = reprefix(f, a, b);
                } else if under(f, b) {
                    *f = reprefix(f, b, a);
                }
            }
        }
    }
    pub fn len(&self) -> usize {
        self.dirs.len() + self.files.len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Limits of the generator.
#[derive(Clone, Copy, Debug)]
pub struct GenOpts {
    /// Filesystem block size (symlink and xattr size classes follow it).
    pub block_size: u32,
    /// Largest file offset written or truncated to.
    pub max_offset: u64,
    /// Largest single write.
    pub max_write: usize,
    /// Keep the number of paths near this.
    pub max_paths: usize,
    /// Depth limit of new paths.
    pub max_depth: usize,
    /// A third of offsets and write lengths (truncations included) below
    /// 200 bytes: files small enough for inline data, and their growth
    /// past it. Off, the sequence is what it was before this knob.
    pub small_files: bool,
    /// Most xattr values set come from three common ones, so that many
    /// inodes hold identical attribute sets (shared xattr blocks). Off,
    /// the sequence is what it was before this knob.
    pub shared_xattrs: bool,
}

impl Default for GenOpts {
    fn default() -> Self {
        Self {
            block_size: 4096,
            max_offset: 64 << 20,
            max_write: 2 << 20,
            max_paths: 300,
            max_depth: 6,
            small_files: false,
            shared_xattrs: false,
        }
    }
}

/// A seeded operation generator.
pub struct Generator {
    rng: Rng,
    pub model: Model,
    opts: GenOpts,
}

const SHORT: &[u8] = b"abcdefgh";

impl Generator {
    pub fn new(seed: u64, opts: GenOpts) -> Self {
        Self {
            rng: Rng::new(seed),
            model: Model::new(),
            opts,
        }
    }

    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.rng.next_u64() % n }
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    fn pick<'a, T>(&mut self, v: &'a [T]) -> Option<&'a T> {
        if v.is_empty() {
            None
        } else {
            let i = self.below(v.len() as u64) as usize;
            v.get(i)
        }
    }

    fn name(&mut self) -> String {
        match self.below(100) {
            0..=2 => "N".repeat(255),
            3..=5 => "M".repeat(256),
            6..=10 => {
                let n = 10 + self.below(50) as usize;
                (0..n)
                    .map(|_| char::from(b'a' + self.below(26) as u8))
                    .collect()
            }
            _ => {
                let n = 1 + self.below(2) as usize;
                (0..n)
                    .map(|_| char::from(SHORT[self.below(SHORT.len() as u64) as usize]))
                    .collect()
            }
        }
    }

    fn dir(&mut self) -> String {
        let dirs = self.model.dirs.clone();
        self.pick(&dirs).cloned().unwrap_or_default()
    }

    fn depth(p: &str) -> usize {
        if p.is_empty() {
            0
        } else {
            p.matches('/').count() + 1
        }
    }

    /// A path that probably does not exist, in an existing directory.
    fn new_path(&mut self) -> String {
        let mut d = self.dir();
        for _ in 0..4 {
            if Self::depth(&d) < self.opts.max_depth {
                break;
            }
            d = self.dir();
        }
        let n = self.name();
        if d.is_empty() { n } else { format!("{d}/{n}") }
    }

    fn file(&mut self) -> String {
        let files = self.model.files.clone();
        match self.pick(&files) {
            Some(f) if !self.chance(8) => f.clone(),
            _ => self.new_path(),
        }
    }

    fn any(&mut self) -> String {
        if self.chance(35) {
            let d = self.dir();
            if !d.is_empty() || self.chance(20) {
                return d;
            }
        }
        self.file()
    }

    fn time(&mut self) -> Time {
        let ns = self.below(1_000_000_000) as i64;
        match self.below(10) {
            0 => Time::Now,
            1 => Time::Omit,
            2 => Time::At(-(self.below(2_000_000_000) as i64) - 1, ns),
            3 => Time::At(4_200_000_000 + self.below(5_000_000_000) as i64, ns),
            _ => Time::At(100_000_000 + self.below(800_000_000) as i64, ns),
        }
    }

    fn offset(&mut self) -> u64 {
        if self.opts.small_files && self.chance(33) {
            return self.below(200);
        }
        match self.below(10) {
            0 => self.below(self.opts.max_offset),
            1 => self.below(1 << 20),
            _ => self.below(256 << 10),
        }
    }

    fn write_len(&mut self) -> usize {
        if self.opts.small_files && self.chance(33) {
            return self.below(200) as usize;
        }
        match self.below(20) {
            0 => self.below(self.opts.max_write as u64) as usize,
            1 => 0,
            2..=4 => self.below(128 << 10) as usize,
            _ => self.below(10_000) as usize,
        }
    }

    fn xattr_name(&mut self) -> String {
        let n = [
            "user.a",
            "user.b",
            "user.c",
            "user.long_name_for_an_attribute_x",
            "trusted.t",
            "security.s",
        ];
        self.pick(&n).map(|s| (*s).to_owned()).unwrap_or_default()
    }

    /// One of three (length, seed) pairs: values many paths share.
    fn common_xattr_value(&mut self) -> (usize, u64) {
        let bs = self.opts.block_size as usize;
        match self.below(3) {
            0 => (8, 1),
            1 => (100, 2),
            _ => (bs / 4, 3),
        }
    }

    fn xattr_len(&mut self) -> usize {
        let bs = u64::from(self.opts.block_size);
        match self.below(12) {
            0 => 0,
            1..=4 => self.below(64) as usize,
            5..=6 => 64 + self.below(400) as usize,
            7 => (bs / 2 + self.below(bs / 2)) as usize,
            8 => (bs - 64 + self.below(128)) as usize,
            9 => (bs + self.below(8192)) as usize,
            10 => 65536,
            _ => 65537,
        }
    }

    fn acl(&mut self, dir_default: bool) -> Vec<u8> {
        // ACL_USER_OBJ 1, ACL_USER 2, ACL_GROUP_OBJ 4, ACL_GROUP 8,
        // ACL_MASK 0x10, ACL_OTHER 0x20; version 2 header.
        let mut v = 2u32.to_le_bytes().to_vec();
        let mut e = |tag: u16, perm: u16, id: u32| {
            v.extend_from_slice(&tag.to_le_bytes());
            v.extend_from_slice(&perm.to_le_bytes());
            v.extend_from_slice(&id.to_le_bytes());
        };
        let p = |g: &mut Self| g.below(8) as u16;
        let (a, b, c) = (p(self), p(self), p(self));
        let extended = dir_default || self.chance(60);
        e(1, a, u32::MAX);
        if extended {
            e(2, p(self), 1000 + self.below(3) as u32);
        }
        e(4, b, u32::MAX);
        if extended && self.chance(50) {
            e(8, p(self), 100);
        }
        if extended {
            e(0x10, p(self), u32::MAX);
        }
        e(0x20, c, u32::MAX);
        if self.chance(3) {
            // Malformed: truncated entry.
            v.pop();
        }
        v
    }

    fn symlink_target(&mut self) -> Vec<u8> {
        let bs = u64::from(self.opts.block_size);
        let len = match self.below(10) {
            0..=4 => 1 + self.below(59),
            5 => 59 + self.below(3),
            6 => 61 + self.below(200),
            7 => bs - 2 + self.below(4),
            8 => 500 + self.below(3595),
            _ => 4095 + self.below(3),
        } as usize;
        let mut t = Vec::with_capacity(len);
        for i in 0..len {
            t.push(if i % 9 == 8 && i + 1 < len {
                b'/'
            } else {
                SHORT[self.below(SHORT.len() as u64) as usize]
            });
        }
        t
    }

    /// The next operation.
    pub fn next_op(&mut self) -> Op {
        let crowded = self.model.len() > self.opts.max_paths;
        let roll = self.below(if crowded { 110 } else { 100 });
        match roll {
            0..=9 => Op::Create {
                path: self.new_path(),
                mode: self.below(0o10000) as u32,
            },
            10..=11 => {
                // Majors 240-254 are reserved for local/experimental use: no
                // real device, even if a node were ever opened.
                let major = 240 + self.below(15) as u32;
                let (kind, rdev) = match self.below(4) {
                    0 => (libc::S_IFIFO, 0),
                    1 => (libc::S_IFSOCK, 0),
                    2 => (
                        libc::S_IFCHR,
                        libc::makedev(major, self.below(1 << 20) as u32),
                    ),
                    _ => (libc::S_IFBLK, libc::makedev(major, self.below(256) as u32)),
                };
                Op::Mknod {
                    path: self.new_path(),
                    mode: kind | (self.below(0o1000) as u32),
                    rdev,
                }
            }
            12..=17 => Op::Mkdir {
                path: self.new_path(),
                mode: self.below(0o10000) as u32,
            },
            18..=20 => Op::Symlink {
                target: self.symlink_target(),
                path: self.new_path(),
            },
            21..=23 => Op::Link {
                from: self.any(),
                to: self.new_path(),
            },
            24..=27 => Op::Unlink { path: self.any() },
            28..=29 => Op::Rmdir { path: self.any() },
            30..=35 => {
                let from = self.any();
                let to = match self.below(10) {
                    0..=3 => self.new_path(),
                    4 if self.model.dirs.iter().any(|d| d == &from) && !from.is_empty() => {
                        let n = self.name();
                        format!("{from}/{n}")
                    }
                    _ => self.any(),
                };
                let flags = match self.below(10) {
                    0..=5 => 0,
                    6..=7 => RENAME_NOREPLACE,
                    8 => RENAME_EXCHANGE,
                    _ => RENAME_WHITEOUT,
                };
                Op::Rename { from, to, flags }
            }
            36..=51 => Op::Write {
                path: self.file(),
                offset: self.offset(),
                len: self.write_len(),
                seed: self.rng.next_u64(),
                append: self.chance(10),
            },
            52..=55 => Op::Truncate {
                path: self.file(),
                size: self.offset(),
            },
            56..=59 => {
                let mode = match self.below(7) {
                    0 => 0,
                    1 => FALLOC_KEEP_SIZE,
                    2 | 3 => FALLOC_PUNCH_HOLE | FALLOC_KEEP_SIZE,
                    4 => FALLOC_ZERO_RANGE,
                    5 => FALLOC_ZERO_RANGE | FALLOC_KEEP_SIZE,
                    _ => FALLOC_PUNCH_HOLE,
                };
                let len = match self.below(8) {
                    0 => 0,
                    1 => self.below(4 << 20),
                    _ => self.below(100_000),
                };
                Op::Fallocate {
                    path: self.file(),
                    mode,
                    offset: self.offset(),
                    len,
                }
            }
            60..=62 => Op::Chmod {
                path: self.any(),
                mode: self.below(0o10000) as u32,
            },
            63..=64 => {
                let ids = [0, 1, 2, 1000, 1001, 65534, 100_000];
                Op::Chown {
                    path: self.any(),
                    uid: self.pick(&ids).copied().unwrap_or(0),
                    gid: self.pick(&ids).copied().unwrap_or(0),
                }
            }
            65..=68 => Op::Utimens {
                path: self.any(),
                atime: self.time(),
                mtime: self.time(),
            },
            69..=74 => {
                let path = self.any();
                let name = self.xattr_name();
                let (len, seed) = if self.opts.shared_xattrs && self.chance(60) {
                    self.common_xattr_value()
                } else {
                    (self.xattr_len(), self.rng.next_u64())
                };
                Op::SetXattr {
                    path,
                    name,
                    len,
                    seed,
                    flags: match self.below(4) {
                        0 => libc::XATTR_CREATE,
                        1 => libc::XATTR_REPLACE,
                        _ => 0,
                    },
                }
            }
            75..=76 => {
                let default = self.chance(30);
                Op::SetAcl {
                    path: if default { self.dir() } else { self.any() },
                    name: if default {
                        "system.posix_acl_default".into()
                    } else {
                        "system.posix_acl_access".into()
                    },
                    value: self.acl(default),
                }
            }
            77..=79 => Op::RemoveXattr {
                path: self.any(),
                name: if self.chance(10) {
                    "system.posix_acl_access".into()
                } else {
                    self.xattr_name()
                },
            },
            80..=81 => Op::Fsync { path: self.any() },
            82 => Op::OrphanWrite {
                path: self.file(),
                len: self.write_len(),
                seed: self.rng.next_u64(),
            },
            83..=88 => Op::Stat { path: self.any() },
            89..=92 => Op::Read {
                path: self.file(),
                offset: self.offset(),
                len: self.write_len(),
            },
            93..=94 => Op::ReadDir { path: self.dir() },
            95..=96 => Op::GetXattrs { path: self.any() },
            97..=99 => Op::SeekMap { path: self.file() },
            // Crowded: extra removals.
            100..=104 => Op::Unlink { path: self.file() },
            _ => Op::Rmdir { path: self.dir() },
        }
    }

    /// Tells the model the outcome of `op` on the system under test.
    pub fn observe(&mut self, op: &Op, outcome: &Outcome) {
        if outcome.is_ok() {
            op.update(&mut self.model);
        }
    }
}

/// A short description for failure messages (long names abbreviated).
pub fn describe(op: &Op) -> String {
    let s = format!("{op:?}");
    let s = s
        .replace(&"N".repeat(255), "N*255")
        .replace(&"M".repeat(256), "M*256");
    if s.len() > 400 {
        format!("{}...", &s[..400])
    } else {
        s
    }
}

fn cpath(root: &Path, rel: &str) -> CString {
    let p = if rel.is_empty() {
        root.to_path_buf()
    } else {
        root.join(rel)
    };
    // Our paths never hold NUL bytes.
    CString::new(p.as_os_str().as_bytes()).unwrap_or_default()
}

fn last_err() -> String {
    errno_name(std::io::Error::last_os_error().raw_os_error().unwrap_or(-1))
}

fn check(rc: libc::c_int) -> std::result::Result<(), String> {
    if rc < 0 { Err(last_err()) } else { Ok(()) }
}

/// An fd closed on drop.
struct Fd(libc::c_int);

impl Drop for Fd {
    fn drop(&mut self) {
        // SAFETY: closing an fd this struct owns.
        unsafe { libc::close(self.0) };
    }
}

fn open(root: &Path, rel: &str, flags: libc::c_int, mode: u32) -> std::result::Result<Fd, String> {
    let c = cpath(root, rel);
    // SAFETY: `c` is NUL-terminated and outlives the call.
    // O_NONBLOCK: a FIFO must not block the test (ENXIO without a reader).
    let fd = unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC | libc::O_NONBLOCK, mode) };
    if fd < 0 { Err(last_err()) } else { Ok(Fd(fd)) }
}

fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; len];
    Rng::new(seed).fill(&mut v);
    v
}

fn lstat(root: &Path, rel: &str) -> std::result::Result<libc::stat, String> {
    let c = cpath(root, rel);
    // SAFETY: an all-zero stat is a valid value of this plain C struct.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is NUL-terminated, `st` is writable.
    check(unsafe { libc::lstat(c.as_ptr(), &mut st) })?;
    Ok(st)
}

fn stat_summary(st: &libc::stat) -> String {
    let kind = st.st_mode & libc::S_IFMT;
    let rdev = if kind == libc::S_IFCHR || kind == libc::S_IFBLK {
        st.st_rdev
    } else {
        0
    };
    format!(
        "mode={:o} uid={} gid={} size={} nlink={} rdev={:x}",
        st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_nlink, rdev
    )
}

fn pwrite_all(fd: &Fd, buf: &[u8], offset: Option<u64>) -> std::result::Result<usize, String> {
    let mut done = 0usize;
    while done < buf.len() {
        let rest = &buf[done..];
        // SAFETY: `rest` is a valid readable slice for its length.
        let n = unsafe {
            match offset {
                Some(o) => libc::pwrite(
                    fd.0,
                    rest.as_ptr().cast(),
                    rest.len(),
                    (o + done as u64) as i64,
                ),
                None => libc::write(fd.0, rest.as_ptr().cast(), rest.len()),
            }
        };
        if n < 0 {
            let e = last_err();
            return if done == 0 { Err(e) } else { Ok(done) };
        }
        if n == 0 {
            break;
        }
        done += n as usize;
    }
    Ok(done)
}

fn pread_digest(fd: &Fd, offset: u64, len: usize) -> std::result::Result<String, String> {
    let mut buf = vec![0u8; len];
    let mut got = 0usize;
    while got < len {
        let rest = &mut buf[got..];
        // SAFETY: `rest` is a valid writable slice for its length.
        let n = unsafe {
            libc::pread(
                fd.0,
                rest.as_mut_ptr().cast(),
                rest.len(),
                (offset + got as u64) as i64,
            )
        };
        if n < 0 {
            return Err(last_err());
        }
        if n == 0 {
            break;
        }
        got += n as usize;
    }
    let mut d = Digest::new();
    d.update(&buf[..got]);
    Ok(d.to_string())
}

fn ts(t: Time) -> libc::timespec {
    match t {
        Time::Now => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_NOW,
        },
        Time::Omit => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        Time::At(s, ns) => libc::timespec {
            tv_sec: s,
            tv_nsec: ns,
        },
    }
}

/// Applies `op` under `root`.
pub fn apply(root: &Path, op: &Op) -> Outcome {
    match op {
        Op::Create { path, mode } => {
            let fd = open(
                root,
                path,
                libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY,
                *mode,
            )?;
            drop(fd);
            Ok(stat_summary(&lstat(root, path)?))
        }
        Op::Mknod { path, mode, rdev } => {
            let c = cpath(root, path);
            // SAFETY: `c` is NUL-terminated.
            check(unsafe { libc::mknod(c.as_ptr(), *mode, *rdev) })?;
            Ok(stat_summary(&lstat(root, path)?))
        }
        Op::Mkdir { path, mode } => {
            let c = cpath(root, path);
            // SAFETY: `c` is NUL-terminated.
            check(unsafe { libc::mkdir(c.as_ptr(), *mode) })?;
            Ok(stat_summary(&lstat(root, path)?))
        }
        Op::Symlink { target, path } => {
            let c = cpath(root, path);
            let t = CString::new(target.clone()).unwrap_or_default();
            // SAFETY: both are NUL-terminated.
            check(unsafe { libc::symlink(t.as_ptr(), c.as_ptr()) })?;
            let st = lstat(root, path)?;
            let got = std::fs::read_link(root.join(path))
                .map_err(|e| errno_name(e.raw_os_error().unwrap_or(-1)))?;
            Ok(format!(
                "{} target_ok={}",
                stat_summary(&st),
                got.as_os_str().as_bytes() == target.as_slice()
            ))
        }
        Op::Link { from, to } => {
            let (a, b) = (cpath(root, from), cpath(root, to));
            // SAFETY: both are NUL-terminated.
            check(unsafe { libc::link(a.as_ptr(), b.as_ptr()) })?;
            Ok(stat_summary(&lstat(root, to)?))
        }
        Op::Unlink { path } => {
            let c = cpath(root, path);
            // SAFETY: `c` is NUL-terminated.
            check(unsafe { libc::unlink(c.as_ptr()) })?;
            Ok(String::new())
        }
        Op::Rmdir { path } => {
            let c = cpath(root, path);
            // SAFETY: `c` is NUL-terminated.
            check(unsafe { libc::rmdir(c.as_ptr()) })?;
            Ok(String::new())
        }
        Op::Rename { from, to, flags } => {
            let (a, b) = (cpath(root, from), cpath(root, to));
            // SAFETY: both are NUL-terminated.
            check(unsafe {
                libc::renameat2(
                    libc::AT_FDCWD,
                    a.as_ptr(),
                    libc::AT_FDCWD,
                    b.as_ptr(),
                    *flags,
                )
            })?;
            let after = lstat(root, to)
                .map(|s| stat_summary(&s))
                .unwrap_or_else(|e| e);
            let src = lstat(root, from)
                .map(|s| stat_summary(&s))
                .unwrap_or_else(|e| e);
            Ok(format!("to: {after}; from: {src}"))
        }
        Op::Write {
            path,
            offset,
            len,
            seed,
            append,
        } => {
            let flags =
                libc::O_WRONLY | libc::O_NOFOLLOW | if *append { libc::O_APPEND } else { 0 };
            let fd = open(root, path, flags, 0)?;
            let buf = data(*len, *seed);
            let n = pwrite_all(&fd, &buf, if *append { None } else { Some(*offset) })?;
            drop(fd);
            Ok(format!("wrote={n} {}", stat_summary(&lstat(root, path)?)))
        }
        Op::Truncate { path, size } => {
            let fd = open(root, path, libc::O_WRONLY | libc::O_NOFOLLOW, 0)?;
            // SAFETY: an fd we own.
            check(unsafe { libc::ftruncate(fd.0, *size as i64) })?;
            drop(fd);
            Ok(stat_summary(&lstat(root, path)?))
        }
        Op::Fallocate {
            path,
            mode,
            offset,
            len,
        } => {
            let fd = open(root, path, libc::O_WRONLY | libc::O_NOFOLLOW, 0)?;
            // SAFETY: an fd we own.
            check(unsafe { libc::fallocate(fd.0, *mode, *offset as i64, *len as i64) })?;
            drop(fd);
            Ok(stat_summary(&lstat(root, path)?))
        }
        Op::Chmod { path, mode } => {
            let c = cpath(root, path);
            // SAFETY: `c` is NUL-terminated.
            check(unsafe { libc::chmod(c.as_ptr(), *mode) })?;
            Ok(stat_summary(&lstat(root, path)?))
        }
        Op::Chown { path, uid, gid } => {
            let c = cpath(root, path);
            // SAFETY: `c` is NUL-terminated.
            check(unsafe { libc::lchown(c.as_ptr(), *uid, *gid) })?;
            Ok(stat_summary(&lstat(root, path)?))
        }
        Op::Utimens { path, atime, mtime } => {
            let c = cpath(root, path);
            let t = [ts(*atime), ts(*mtime)];
            // SAFETY: `c` is NUL-terminated, `t` holds two timespecs.
            check(unsafe {
                libc::utimensat(
                    libc::AT_FDCWD,
                    c.as_ptr(),
                    t.as_ptr(),
                    libc::AT_SYMLINK_NOFOLLOW,
                )
            })?;
            let st = lstat(root, path)?;
            let mut s = stat_summary(&st);
            if matches!(atime, Time::At(..)) {
                s += &format!(" atime={}.{:09}", st.st_atime, st.st_atime_nsec);
            }
            if matches!(mtime, Time::At(..)) {
                s += &format!(" mtime={}.{:09}", st.st_mtime, st.st_mtime_nsec);
            }
            Ok(s)
        }
        Op::SetXattr {
            path,
            name,
            len,
            seed,
            flags,
        } => {
            let value = data(*len, *seed);
            setxattr(root, path, name, &value, *flags)
        }
        Op::SetAcl { path, name, value } => setxattr(root, path, name, value, 0),
        Op::RemoveXattr { path, name } => {
            let c = cpath(root, path);
            let n = CString::new(name.as_str()).unwrap_or_default();
            // SAFETY: both are NUL-terminated.
            check(unsafe { libc::lremovexattr(c.as_ptr(), n.as_ptr()) })?;
            Ok(stat_summary(&lstat(root, path)?))
        }
        Op::Fsync { path } => {
            let fd = open(
                root,
                path,
                libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK,
                0,
            )?;
            // SAFETY: an fd we own.
            check(unsafe { libc::fsync(fd.0) })?;
            Ok(String::new())
        }
        Op::OrphanWrite { path, len, seed } => {
            let step = |what: &'static str| move |e: String| format!("{what}: {e}");
            let fd = open(root, path, libc::O_RDWR | libc::O_NOFOLLOW, 0)?;
            let c = cpath(root, path);
            // SAFETY: `c` is NUL-terminated.
            check(unsafe { libc::unlink(c.as_ptr()) }).map_err(step("unlink"))?;
            let buf = data(*len, *seed);
            let n = pwrite_all(&fd, &buf, Some(0)).map_err(step("write"))?;
            // SAFETY: an fd we own.
            check(unsafe { libc::fsync(fd.0) }).map_err(step("fsync"))?;
            let d = pread_digest(&fd, 0, *len + 10).map_err(step("read"))?;
            // SAFETY: an all-zero stat is a valid value; fstat of our fd.
            let mut st: libc::stat = unsafe { std::mem::zeroed() };
            // SAFETY: `st` is writable.
            check(unsafe { libc::fstat(fd.0, &mut st) }).map_err(step("fstat"))?;
            Ok(format!(
                "wrote={n} read={d} nlink={} size={}",
                st.st_nlink, st.st_size
            ))
        }
        Op::Stat { path } => Ok(stat_summary(&lstat(root, path)?)),
        Op::Read { path, offset, len } => {
            let fd = open(
                root,
                path,
                libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK,
                0,
            )?;
            pread_digest(&fd, *offset, *len)
        }
        Op::ReadDir { path } => {
            let p = if path.is_empty() {
                root.to_path_buf()
            } else {
                root.join(path)
            };
            let mut names: Vec<String> = std::fs::read_dir(&p)
                .map_err(|e| errno_name(e.raw_os_error().unwrap_or(-1)))?
                .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
                .collect::<std::io::Result<_>>()
                .map_err(|e| errno_name(e.raw_os_error().unwrap_or(-1)))?;
            names.sort();
            let names: Vec<String> = names
                .into_iter()
                .map(|n| {
                    if n.len() > 60 {
                        format!("{}..({})", &n[..8], n.len())
                    } else {
                        n
                    }
                })
                .collect();
            Ok(names.join(","))
        }
        Op::GetXattrs { path } => {
            let p = if path.is_empty() {
                root.to_path_buf()
            } else {
                root.join(path)
            };
            let x = crate::snapshot::xattrs(&p)?;
            Ok(x.iter()
                .map(|(n, v)| {
                    let mut d = Digest::new();
                    d.update(v);
                    format!("{}={}", String::from_utf8_lossy(n), d)
                })
                .collect::<Vec<_>>()
                .join(","))
        }
        Op::SeekMap { path } => {
            let fd = open(
                root,
                path,
                libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK,
                0,
            )?;
            // Written data first: a live kernel does not report delayed
            // allocations of indirect-mapped files as data.
            // SAFETY: an fd we own.
            check(unsafe { libc::fsync(fd.0) })?;
            // Then the (now clean) cached pages dropped: a live kernel
            // reports an unwritten extent as data where a cached page
            // covers it (page granularity, e.g. the tail of a page whose
            // first 1 KiB blocks were written); the extent map is the
            // defined answer, the one a fresh mount gives.
            // SAFETY: an fd we own; no memory is touched.
            let rc = unsafe { libc::posix_fadvise(fd.0, 0, 0, libc::POSIX_FADV_DONTNEED) };
            if rc != 0 {
                return Err(errno_name(rc));
            }
            let st = lstat(root, path)?;
            let mut v = Vec::new();
            let mut off: i64 = 0;
            for _ in 0..10_000 {
                if off >= st.st_size {
                    break;
                }
                // SAFETY: lseek on an fd we own.
                let d = unsafe { libc::lseek(fd.0, off, libc::SEEK_DATA) };
                if d < 0 {
                    let e = last_err();
                    if e == "ENXIO" {
                        break;
                    }
                    return Err(e);
                }
                // SAFETY: as above.
                let h = unsafe { libc::lseek(fd.0, d, libc::SEEK_HOLE) };
                if h < 0 {
                    return Err(last_err());
                }
                // The kernel's ext4 answers SEEK_HOLE past i_size for
                // inline-data files (i64::MAX); the hole starts at EOF.
                let h = h.min(st.st_size);
                v.push(format!("{d}-{h}"));
                if h <= d {
                    break;
                }
                off = h;
            }
            Ok(v.join(","))
        }
    }
}

fn setxattr(root: &Path, path: &str, name: &str, value: &[u8], flags: i32) -> Outcome {
    let c = cpath(root, path);
    let n = CString::new(name).unwrap_or_default();
    // SAFETY: both strings are NUL-terminated; `value` is a valid slice.
    check(unsafe {
        libc::lsetxattr(
            c.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            flags,
        )
    })?;
    let st = lstat(root, path)?;
    Ok(stat_summary(&st))
}

/// The fixed UUID (also the htree hash seed) of differential images, so
/// both images hash names identically.
pub const DIFF_UUID: &str = "5afe3017-0000-4000-8000-000000000001";

/// An empty image: `mkfs.ext4 -U DIFF_UUID -E hash_seed=DIFF_UUID` plus the
/// config's arguments.
pub fn make_empty_image(img: &Path, mkfs_args: &[&str], size: u64) -> Result<()> {
    let f = std::fs::File::create(img)?;
    f.set_len(size)?;
    drop(f);
    // mke2fs keeps only the last -E: the caller's extended options join
    // the hash seed in one.
    let mut seed = format!("hash_seed={DIFF_UUID}");
    let mut args = Vec::new();
    let mut it = mkfs_args.iter();
    while let Some(a) = it.next() {
        if *a == "-E" {
            if let Some(e) = it.next() {
                seed = format!("{seed},{e}");
            }
        } else {
            args.push(*a);
        }
    }
    let out = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-U", DIFF_UUID, "-E", &seed])
        .args(&args)
        .arg(img)
        .env("E2FSPROGS_FAKE_TIME", "1700000000")
        .output()
        .context("spawn mkfs.ext4")?;
    if !out.status.success() {
        bail!(
            "mkfs.ext4 {mkfs_args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}
