//! Reading /proc: mounts, processes, their status and fds.

use std::fs;
use std::path::{Path, PathBuf};

/// One line of /proc/self/mountinfo, the fields the tests need.
#[derive(Clone, Debug)]
pub struct MountLine {
    pub major_minor: String,
    pub mount_point: PathBuf,
    pub fs_type: String,
    pub source: String,
    pub options: String,
}

fn unescape(s: &str) -> String {
    // mountinfo escapes space, tab, newline and backslash as \ooo.
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && let Some(Ok(v)) = s.get(i + 1..i + 4).map(|o| u8::from_str_radix(o, 8))
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// All mounts visible to this process.
pub fn mounts() -> Vec<MountLine> {
    let Ok(text) = fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let mut v = Vec::new();
    for line in text.lines() {
        let (pre, post) = match line.split_once(" - ") {
            Some(x) => x,
            None => continue,
        };
        let f: Vec<&str> = pre.split(' ').collect();
        let g: Vec<&str> = post.split(' ').collect();
        if f.len() < 6 || g.len() < 3 {
            continue;
        }
        v.push(MountLine {
            major_minor: f[2].to_owned(),
            mount_point: PathBuf::from(unescape(f[4])),
            options: f[5].to_owned(),
            fs_type: g[0].to_owned(),
            source: unescape(g[1]),
        });
    }
    v
}

pub fn mount_points() -> Vec<PathBuf> {
    mounts().into_iter().map(|m| m.mount_point).collect()
}

/// The mount (if any) whose mount point is `p`, compared as the mount
/// table writes it: `p` with its directory resolved (a symlinked TMPDIR
/// would otherwise make every "gone" check pass). The last component is
/// not resolved: a dead FUSE mount cannot be stat'ed.
pub fn mount_at(p: &Path) -> Option<MountLine> {
    let p = canonical(p);
    mounts().into_iter().rev().find(|m| m.mount_point == p)
}

/// `p` with its parent directory canonicalized (the last component as is).
pub fn canonical(p: &Path) -> PathBuf {
    match (p.parent(), p.file_name()) {
        (Some(d), Some(n)) => d
            .canonicalize()
            .map_or_else(|_| p.to_owned(), |d| d.join(n)),
        _ => p.to_owned(),
    }
}

pub fn is_mounted(p: &Path) -> bool {
    mount_at(p).is_some()
}

/// Aborts the FUSE connection of the mount at `p` (unblocks any hung
/// request). Returns whether an abort file was written.
pub fn abort_fuse(p: &Path) -> bool {
    let Some(m) = mount_at(p) else { return false };
    if !m.fs_type.starts_with("fuse") {
        return false;
    }
    let Some((_, minor)) = m.major_minor.split_once(':') else {
        return false;
    };
    fs::write(format!("/sys/fs/fuse/connections/{minor}/abort"), "1").is_ok()
}

pub fn pid_alive(pid: i32) -> bool {
    // A zombie still has /proc/PID; treat it as dead.
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => stat_state(&s) != Some('Z'),
        Err(_) => false,
    }
}

/// The one-letter state (R, S, D, T, t, Z...) of thread `tid` of `pid`.
pub fn task_state(pid: i32, tid: i32) -> Option<char> {
    stat_state(&fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).ok()?)
}

fn stat_after_comm(s: &str) -> Option<&str> {
    let end = s.rfind(')')?;
    s.get(end + 2..)
}

fn stat_state(s: &str) -> Option<char> {
    stat_after_comm(s)?.chars().next()
}

/// Parent pid of `pid`.
pub fn ppid(pid: i32) -> Option<i32> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat_after_comm(&s)?.split(' ').nth(1)?.parse().ok()
}

/// Command line of `pid`, NUL-separated args joined with spaces.
pub fn cmdline(pid: i32) -> String {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|&c| c == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

/// Live (non-zombie) children of `parent` whose comm or cmdline mentions
/// `needle`.
pub fn children_matching(parent: i32, needle: &str) -> Vec<i32> {
    let Ok(rd) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut v = Vec::new();
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if ppid(pid) != Some(parent) || !pid_alive(pid) {
            continue;
        }
        let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        // comm is truncated to 15 bytes ("safemount-worke").
        let short: String = needle.chars().take(15).collect();
        if comm.trim_end() == short || cmdline(pid).contains(needle) {
            v.push(pid);
        }
    }
    v
}

/// `Key:\tvalue` lines of /proc/PID/status.
pub fn status(pid: i32) -> std::io::Result<Vec<(String, String)>> {
    let s = fs::read_to_string(format!("/proc/{pid}/status"))?;
    Ok(s.lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect())
}

/// Open fds of `pid`: (fd number, readlink target).
pub fn fds(pid: i32) -> std::io::Result<Vec<(i32, String)>> {
    let mut v = Vec::new();
    for e in fs::read_dir(format!("/proc/{pid}/fd"))? {
        let e = e?;
        let Some(n) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let t = fs::read_link(e.path())
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_else(|err| format!("<{err}>"));
        v.push((n, t));
    }
    v.sort();
    Ok(v)
}
