//! Walk a mounted tree (never following symlinks) and record everything a
//! reader can observe; compare two such records.
//!
//! The walk never fails as a whole: each failing operation is recorded on
//! its entry as `op: ERRNO`, so hostile images can be walked with the same
//! code. Directory cycles, depth, entry count and a deadline are bounded.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{CString, OsStr};
use std::fs::{self, File};
use std::io::Seek;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::time::Instant;

use crate::util::{Digest, digest_reader, errno_name, io_errno};

/// Sorted (name, value) pairs.
pub type XattrList = Vec<(Vec<u8>, Vec<u8>)>;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Entry {
    pub kind: char,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub nlink: u64,
    pub blocks: u64,
    pub rdev: u64,
    pub ino: u64,
    pub atime: (i64, i64),
    pub mtime: (i64, i64),
    pub ctime: (i64, i64),
    pub content: Option<Digest>,
    /// Data segments from SEEK_DATA/SEEK_HOLE, (start, end).
    pub data_map: Option<Vec<(u64, u64)>>,
    pub target: Option<Vec<u8>>,
    /// Sorted (name, value).
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// For non-directories with several links: the smallest path of the
    /// inode's names seen in this walk.
    pub link_group: Option<String>,
    /// Failed operations, "op: ERRNO".
    pub errors: Vec<String>,
}

#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Relative path (lossy-escaped for display; "" is the root) -> entry.
    pub entries: BTreeMap<String, Entry>,
    /// The walk stopped early (deadline or entry limit).
    pub truncated: Option<String>,
}

#[derive(Clone, Debug)]
pub struct WalkOpts {
    pub read_contents: bool,
    pub seek_map: bool,
    pub max_entries: usize,
    pub max_depth: usize,
    pub deadline: Option<Instant>,
}

impl Default for WalkOpts {
    fn default() -> Self {
        Self {
            read_contents: true,
            seek_map: true,
            max_entries: 500_000,
            max_depth: 512,
            deadline: None,
        }
    }
}

/// Displayable key for a relative path; non-UTF-8 bytes as \xNN.
pub fn key(rel: &[u8]) -> String {
    let mut s = String::new();
    for chunk in rel.utf8_chunks() {
        s.push_str(chunk.valid());
        for b in chunk.invalid() {
            s.push_str(&format!("\\x{b:02x}"));
        }
    }
    s
}

fn err(e: &std::io::Error) -> String {
    errno_name(io_errno(e))
}

fn kind_of(ft: &fs::FileType) -> char {
    if ft.is_file() {
        'f'
    } else if ft.is_dir() {
        'd'
    } else if ft.is_symlink() {
        'l'
    } else if ft.is_char_device() {
        'c'
    } else if ft.is_block_device() {
        'b'
    } else if ft.is_fifo() {
        'p'
    } else if ft.is_socket() {
        's'
    } else {
        '?'
    }
}

fn cpath(p: &Path) -> Option<CString> {
    CString::new(p.as_os_str().as_bytes()).ok()
}

/// llistxattr + lgetxattr of every name, sorted. Errors as "op: ERRNO".
pub fn xattrs(p: &Path) -> Result<XattrList, String> {
    let c = cpath(p).ok_or("listxattr: NUL in path")?;
    let mut buf = vec![0u8; 65536];
    // SAFETY: `c` is NUL-terminated; `buf` is writable for its length.
    let n = unsafe { libc::llistxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return Err(format!(
            "listxattr: {}",
            err(&std::io::Error::last_os_error())
        ));
    }
    let n = n as usize;
    let mut out = Vec::new();
    for name in buf[..n.min(buf.len())]
        .split(|&b| b == 0)
        .filter(|s| !s.is_empty())
    {
        let Ok(cn) = CString::new(name) else { continue };
        let mut v = vec![0u8; 65536];
        // SAFETY: both strings are NUL-terminated; `v` is writable for its length.
        let m = unsafe { libc::lgetxattr(c.as_ptr(), cn.as_ptr(), v.as_mut_ptr().cast(), v.len()) };
        if m < 0 {
            return Err(format!(
                "getxattr {}: {}",
                String::from_utf8_lossy(name),
                err(&std::io::Error::last_os_error())
            ));
        }
        v.truncate(m as usize);
        out.push((name.to_vec(), v));
    }
    out.sort();
    Ok(out)
}

/// Data segments via SEEK_DATA / SEEK_HOLE (bounded).
pub fn seek_map(f: &File, size: u64) -> Result<Vec<(u64, u64)>, String> {
    let fd = f.as_raw_fd();
    let mut v = Vec::new();
    let mut off: i64 = 0;
    for _ in 0..100_000 {
        if off as u64 >= size {
            break;
        }
        // SAFETY: lseek on an fd we own; no memory is touched.
        let d = unsafe { libc::lseek(fd, off, libc::SEEK_DATA) };
        if d < 0 {
            let e = std::io::Error::last_os_error();
            if io_errno(&e) == libc::ENXIO {
                break;
            }
            return Err(format!("seek_data: {}", err(&e)));
        }
        // SAFETY: as above.
        let h = unsafe { libc::lseek(fd, d, libc::SEEK_HOLE) };
        if h < 0 {
            return Err(format!(
                "seek_hole: {}",
                err(&std::io::Error::last_os_error())
            ));
        }
        if h <= d {
            return Err(format!("seek_hole returned {h} <= data {d}"));
        }
        v.push((d as u64, h as u64));
        off = h;
    }
    Ok(v)
}

fn fill_stat(e: &mut Entry, md: &fs::Metadata) {
    e.kind = kind_of(&md.file_type());
    e.mode = md.mode() & 0o7777;
    e.uid = md.uid();
    e.gid = md.gid();
    e.size = md.size();
    e.nlink = md.nlink();
    e.blocks = md.blocks();
    e.rdev = md.rdev();
    e.ino = md.ino();
    e.atime = (md.atime(), md.atime_nsec());
    e.mtime = (md.mtime(), md.mtime_nsec());
    e.ctime = (md.ctime(), md.ctime_nsec());
}

/// Walks `root` and records every entry.
pub fn snapshot(root: &Path, opts: &WalkOpts) -> Snapshot {
    let mut snap = Snapshot::default();
    let mut ancestors: Vec<(u64, u64)> = Vec::new();
    let mut e = Entry::default();
    match fs::symlink_metadata(root) {
        Ok(md) => {
            fill_stat(&mut e, &md);
            if let Ok(x) = xattrs(root).map_err(|m| e.errors.push(m)) {
                e.xattrs = x;
            }
            snap.entries.insert(String::new(), e);
            ancestors.push((md.dev(), md.ino()));
            walk_dir(root, b"", opts, &mut snap, &mut ancestors);
        }
        Err(er) => {
            e.errors.push(format!("lstat: {}", err(&er)));
            snap.entries.insert(String::new(), e);
        }
    }
    // Link groups.
    let mut by_ino: HashMap<u64, Vec<String>> = HashMap::new();
    for (k, e) in &snap.entries {
        if e.kind != 'd' && e.nlink > 1 && e.errors.iter().all(|m| !m.starts_with("lstat")) {
            by_ino.entry(e.ino).or_default().push(k.clone());
        }
    }
    for names in by_ino.values() {
        if let Some(first) = names.iter().min() {
            for n in names {
                if let Some(e) = snap.entries.get_mut(n) {
                    e.link_group = Some(first.clone());
                }
            }
        }
    }
    snap
}

fn walk_dir(
    dir: &Path,
    rel: &[u8],
    opts: &WalkOpts,
    snap: &mut Snapshot,
    ancestors: &mut Vec<(u64, u64)>,
) {
    let dkey = key(rel);
    let rd = match fs::read_dir(dir) {
        Ok(r) => r,
        Err(er) => {
            if let Some(e) = snap.entries.get_mut(&dkey) {
                e.errors.push(format!("opendir: {}", err(&er)));
            }
            return;
        }
    };
    let mut names = Vec::new();
    for item in rd {
        match item {
            Ok(de) => names.push(de.file_name()),
            Err(er) => {
                if let Some(e) = snap.entries.get_mut(&dkey) {
                    e.errors.push(format!("readdir: {}", err(&er)));
                }
                break;
            }
        }
        if names.len() > opts.max_entries {
            break;
        }
    }
    // Duplicate names in one directory are a bug worth reporting.
    let mut sorted = names.clone();
    sorted.sort();
    let before = sorted.len();
    sorted.dedup();
    if sorted.len() != before
        && let Some(e) = snap.entries.get_mut(&dkey)
    {
        e.errors.push(format!(
            "readdir: {} duplicate names",
            before - sorted.len()
        ));
    }
    for name in sorted {
        if snap.entries.len() >= opts.max_entries {
            snap.truncated = Some(format!("more than {} entries", opts.max_entries));
            return;
        }
        if let Some(d) = opts.deadline
            && Instant::now() > d
        {
            snap.truncated = Some("deadline passed".into());
            return;
        }
        let mut crel = rel.to_vec();
        if !crel.is_empty() {
            crel.push(b'/');
        }
        crel.extend_from_slice(name.as_bytes());
        let path = dir.join(&name);
        let mut e = Entry::default();
        let md = match fs::symlink_metadata(&path) {
            Ok(md) => md,
            Err(er) => {
                e.errors.push(format!("lstat: {}", err(&er)));
                snap.entries.insert(key(&crel), e);
                continue;
            }
        };
        fill_stat(&mut e, &md);
        match xattrs(&path) {
            Ok(x) => e.xattrs = x,
            Err(m) => e.errors.push(m),
        }
        match e.kind {
            'f' => read_file(&path, &mut e, opts),
            'l' => match fs::read_link(&path) {
                Ok(t) => e.target = Some(t.as_os_str().as_bytes().to_vec()),
                Err(er) => e.errors.push(format!("readlink: {}", err(&er))),
            },
            _ => {}
        }
        let is_dir = e.kind == 'd';
        let id = (md.dev(), md.ino());
        let looped = is_dir && ancestors.contains(&id);
        if looped {
            e.errors.push("walk: directory loop".into());
        }
        snap.entries.insert(key(&crel), e);
        if is_dir && !looped {
            if ancestors.len() >= opts.max_depth {
                if let Some(e) = snap.entries.get_mut(&key(&crel)) {
                    e.errors.push("walk: too deep".into());
                }
                continue;
            }
            ancestors.push(id);
            walk_dir(&path, &crel, opts, snap, ancestors);
            ancestors.pop();
        }
    }
}

fn read_file(path: &Path, e: &mut Entry, opts: &WalkOpts) {
    if !opts.read_contents && !opts.seek_map {
        return;
    }
    let f = match File::open(path) {
        Ok(f) => f,
        Err(er) => {
            e.errors.push(format!("open: {}", err(&er)));
            return;
        }
    };
    if opts.seek_map {
        match seek_map(&f, e.size) {
            Ok(m) => e.data_map = Some(m),
            Err(m) => e.errors.push(m),
        }
    }
    if opts.read_contents {
        let mut f = f;
        if let Err(er) = f.seek(std::io::SeekFrom::Start(0)) {
            e.errors.push(format!("lseek: {}", err(&er)));
            return;
        }
        match digest_reader(&f) {
            Ok(d) => e.content = Some(d),
            Err(er) => e.errors.push(format!("read: {}", err(&er))),
        }
    }
}

/// What two snapshots are expected to agree on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Against {
    /// The source directory `mkfs -d` copied: no lost+found, whole-second
    /// mtimes, root attributes and directory sizes are the image's own,
    /// holes may differ (mkfs turns zero blocks into holes).
    Source,
    /// The kernel's mount of the same image: everything.
    Kernel,
}

fn fmt_x(x: &[(Vec<u8>, Vec<u8>)]) -> String {
    let v: Vec<String> = x
        .iter()
        .map(|(n, v)| {
            let vs = if v.len() > 24 {
                format!("<{} bytes>", v.len())
            } else {
                format!("{:?}", String::from_utf8_lossy(v))
            };
            format!("{}={}", String::from_utf8_lossy(n), vs)
        })
        .collect();
    format!("[{}]", v.join(", "))
}

/// Differences of `actual` from `expected`, one line each.
pub fn diff(expected: &Snapshot, actual: &Snapshot, against: Against) -> Vec<String> {
    let mut out = Vec::new();
    let skip =
        |k: &str| against == Against::Source && (k == "lost+found" || k.starts_with("lost+found/"));
    if let Some(t) = &expected.truncated {
        out.push(format!("expected walk truncated: {t}"));
    }
    if let Some(t) = &actual.truncated {
        out.push(format!("actual walk truncated: {t}"));
    }
    for (k, a) in &actual.entries {
        if !skip(k) && !expected.entries.contains_key(k) {
            out.push(format!("{k:?}: unexpected entry (kind {})", a.kind));
        }
    }
    for (k, x) in &expected.entries {
        if skip(k) {
            continue;
        }
        let Some(a) = actual.entries.get(k) else {
            out.push(format!("{k:?}: missing"));
            continue;
        };
        let mut d = Vec::new();
        macro_rules! cmp {
            ($f:ident) => {
                if x.$f != a.$f {
                    d.push(format!(
                        "{} expected {:?} got {:?}",
                        stringify!($f),
                        x.$f,
                        a.$f
                    ));
                }
            };
        }
        if x.errors != a.errors {
            d.push(format!("errors expected {:?} got {:?}", x.errors, a.errors));
        }
        cmp!(kind);
        let root = k.is_empty();
        if !(root && against == Against::Source) {
            cmp!(mode);
            cmp!(uid);
            cmp!(gid);
            cmp!(nlink);
        }
        if x.kind != 'd' || against == Against::Kernel {
            cmp!(size);
        }
        match against {
            Against::Source => {
                if !root && x.mtime.0 != a.mtime.0 {
                    d.push(format!(
                        "mtime seconds expected {} got {}",
                        x.mtime.0, a.mtime.0
                    ));
                }
            }
            Against::Kernel => {
                cmp!(atime);
                cmp!(mtime);
                cmp!(ctime);
                cmp!(blocks);
                cmp!(data_map);
            }
        }
        if x.kind == 'c' || x.kind == 'b' {
            cmp!(rdev);
        }
        if x.content != a.content {
            d.push(format!(
                "content expected {} got {}",
                x.content.map(|c| c.to_string()).unwrap_or("none".into()),
                a.content.map(|c| c.to_string()).unwrap_or("none".into())
            ));
        }
        if x.target != a.target {
            d.push(format!(
                "symlink target expected {:?} got {:?}",
                x.target.as_deref().map(String::from_utf8_lossy),
                a.target.as_deref().map(String::from_utf8_lossy)
            ));
        }
        if x.xattrs != a.xattrs {
            d.push(format!(
                "xattrs expected {} got {}",
                fmt_x(&x.xattrs),
                fmt_x(&a.xattrs)
            ));
        }
        cmp!(link_group);
        for m in d {
            out.push(format!("{k:?}: {m}"));
        }
    }
    out
}

/// Panics with the first differences, if any.
pub fn assert_same(expected: &Snapshot, actual: &Snapshot, against: Against, what: &str) {
    let d = diff(expected, actual, against);
    if !d.is_empty() {
        let limit = std::env::var("SAFEMOUNT_E2E_SHOW")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(25);
        let shown: Vec<&String> = d.iter().take(limit).collect();
        panic!(
            "{what}: {} differences ({} entries expected, {} seen); first ones:\n  {}",
            d.len(),
            expected.entries.len(),
            actual.entries.len(),
            shown
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join("\n  ")
        );
    }
}

/// The statvfs numbers that must match the kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FsStats {
    pub bsize: u64,
    pub frsize: u64,
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub namemax: u64,
}

pub fn statvfs(p: &Path) -> std::io::Result<FsStats> {
    let s = nix::sys::statvfs::statvfs(p).map_err(std::io::Error::from)?;
    Ok(FsStats {
        bsize: s.block_size() as u64,
        frsize: s.fragment_size() as u64,
        blocks: s.blocks() as u64,
        bfree: s.blocks_free() as u64,
        bavail: s.blocks_available() as u64,
        files: s.files() as u64,
        ffree: s.files_free() as u64,
        namemax: s.name_max() as u64,
    })
}

/// Error counts by errno name over a snapshot.
pub fn error_counts(s: &Snapshot) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for e in s.entries.values() {
        for er in &e.errors {
            let name = er.rsplit(": ").next().unwrap_or(er).to_owned();
            *m.entry(name).or_insert(0) += 1;
        }
    }
    m
}

/// Paths with errors, for reports.
pub fn errored(s: &Snapshot) -> Vec<(String, Vec<String>)> {
    s.entries
        .iter()
        .filter(|(_, e)| !e.errors.is_empty())
        .map(|(k, e)| (k.clone(), e.errors.clone()))
        .collect()
}

pub fn os(s: &str) -> &OsStr {
    OsStr::new(s)
}
