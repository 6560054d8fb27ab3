//! Small process, temp-dir and hashing helpers.

use std::ffi::OsStr;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::unistd::Pid;

/// True when the tests can mount for real. Otherwise skips (one line on
/// stderr; a failure under `SAFEMOUNT_TEST_STRICT=1`) and returns false.
#[track_caller]
pub fn require_root() -> bool {
    if !crate::skip::require_root("mounting for real") {
        return false;
    }
    if !Path::new("/dev/fuse").exists() {
        crate::skip::skip("no /dev/fuse");
        return false;
    }
    true
}

/// How long a test waits for something the system does on its own (a
/// killed worker's mount to vanish, a worker to be reaped): polled, so a
/// fast machine does not wait, and generous, so a busy 2-core machine
/// running other builds does not fail.
pub const SETTLE: Duration = Duration::from_secs(30);

/// A directory under /tmp that is removed (after detaching any mount left
/// inside it) on drop.
pub struct TempDir {
    path: PathBuf,
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

impl TempDir {
    pub fn new(tag: &str) -> Result<Self> {
        let n = TEMP_COUNTER.fetch_add(1, Ordering::SeqCst);
        let path = std::env::temp_dir().join(format!(
            "safemount-e2e-{}-{}-{}",
            tag,
            std::process::id(),
            n
        ));
        if path.exists() {
            detach_mounts_under(&path);
            let _ = fs::remove_dir_all(&path);
        }
        fs::create_dir_all(&path).with_context(|| format!("create {}", path.display()))?;
        Ok(Self { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn join(&self, p: impl AsRef<Path>) -> PathBuf {
        self.path.join(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os("SAFEMOUNT_E2E_KEEP").is_some() {
            eprintln!("keeping {}", self.path.display());
            return;
        }
        detach_mounts_under(&self.path);
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// Lazily unmounts every mount at or below `dir` (deepest first), so a
/// failed test never makes `remove_dir_all` walk into a mounted image.
pub fn detach_mounts_under(dir: &Path) {
    let mut found: Vec<PathBuf> = crate::procfs::mount_points()
        .into_iter()
        .filter(|m| m.starts_with(dir))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    for m in found {
        let _ = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// How long a command that talks to safemount may take before the test
/// calls it hung: far over any wait the broker announces, and a hang then
/// fails its test with a message instead of stalling the whole suite.
pub const HUNG_AFTER: Duration = Duration::from_secs(300);

/// `cmd` to completion, capturing its output, killed (SIGKILL) and an
/// error once it has run for `limit`.
pub fn output_within(cmd: &mut Command, limit: Duration) -> Result<Output> {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawn {:?}", cmd.get_program()))?;
    let pid = Pid::from_raw(i32::try_from(child.id())?);
    let (done, finished) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        let timed_out = matches!(
            finished.recv_timeout(limit),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout)
        );
        if timed_out {
            // The waiter has not signalled: the child is running, or was
            // reaped a moment ago (a pid reused within that moment would
            // be hit: a test harness can live with that).
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        }
        timed_out
    });
    let out = child.wait_with_output();
    drop(done);
    let timed_out = watchdog.join().unwrap_or(false);
    let out = out.with_context(|| format!("wait for {:?}", cmd.get_program()))?;
    if timed_out {
        bail!(
            "{:?} {:?} hung: killed after {limit:?} (stderr: {})",
            cmd.get_program(),
            cmd.get_args().collect::<Vec<_>>(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}

/// Runs a command to completion, capturing output; never inherits stdin.
pub fn run<I, S>(prog: &str, args: I) -> Result<Output>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let out = Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("spawn {prog}"))?;
    Ok(out)
}

/// Runs a command and fails (with its stderr) unless it exits 0.
pub fn run_ok<I, S>(prog: &str, args: I) -> Result<Output>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<std::ffi::OsString> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
    let out = run(prog, &args)?;
    if !out.status.success() {
        bail!(
            "{} {:?} failed ({}): {}{}",
            prog,
            args,
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}

/// sha256 of a file, via coreutils' sha256sum (no extra crate needed).
pub fn sha256_file(path: &Path) -> Result<String> {
    let out = run_ok("sha256sum", [path])?;
    let s = String::from_utf8_lossy(&out.stdout);
    s.split_whitespace()
        .next()
        .map(str::to_owned)
        .context("sha256sum printed nothing")
}

/// A content digest for comparing trees: two independent 64-bit FNV-1a style
/// lanes plus the length. Not cryptographic; the data is our own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Digest {
    pub len: u64,
    a: u64,
    b: u64,
}

impl Digest {
    pub fn new() -> Self {
        Self {
            len: 0,
            a: 0xcbf2_9ce4_8422_2325,
            b: 0x8422_2325_cbf2_9ce4,
        }
    }
    pub fn update(&mut self, data: &[u8]) {
        // Process 8 bytes at a time for speed; a byte-wise tail.
        let mut chunks = data.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            let v = u64::from_le_bytes(w);
            self.a = (self.a ^ v).wrapping_mul(0x0000_0100_0000_01b3);
            self.b = (self.b ^ v.rotate_left(29)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            self.b ^= self.b >> 31;
        }
        for &byte in chunks.remainder() {
            self.a = (self.a ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3);
            self.b = (self.b ^ u64::from(byte)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
        self.len += data.len() as u64;
    }
}

impl std::fmt::Display for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "len={} digest={:016x}{:016x}", self.len, self.a, self.b)
    }
}

/// Reads a whole file through a fixed buffer, returning its digest.
/// (Chunk boundaries are fixed, so digests are comparable.)
pub fn digest_reader(mut r: impl Read) -> std::io::Result<Digest> {
    let mut d = Digest::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut fill = 0usize;
    loop {
        let n = r.read(&mut buf[fill..])?;
        if n == 0 {
            break;
        }
        fill += n;
        if fill == buf.len() {
            d.update(&buf);
            fill = 0;
        }
    }
    d.update(&buf[..fill]);
    Ok(d)
}

/// Polls `cond` every 20 ms until it holds or `limit` passes.
pub fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if cond() {
            return true;
        }
        if start.elapsed() >= limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `len` deterministic pseudo-random bytes: file contents a test writes
/// and checks back.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    Rng::new(seed).fill(&mut v);
    v
}

/// Deterministic PRNG (splitmix64) for trees and corruptions.
#[derive(Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    pub fn fill(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
}

/// Name of an errno for reports ("EUCLEAN").
pub fn errno_name(e: i32) -> String {
    let s = nix::errno::Errno::from_raw(e);
    format!("{s:?}")
}

/// errno of an io::Error, or -1 if it carries none.
pub fn io_errno(e: &std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(-1)
}

/// Directory holding the built binaries (target/<profile>/): the parent of
/// the `deps` directory that holds this test executable.
pub fn bin_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("current_exe")?;
    let mut dir = exe.parent().context("exe has no parent")?.to_path_buf();
    if dir.file_name() == Some(OsStr::new("deps")) {
        dir = dir.parent().context("deps has no parent")?.to_path_buf();
    }
    Ok(dir)
}

/// Path of one built binary, checked to exist.
pub fn bin(name: &str) -> Result<PathBuf> {
    let p = bin_dir()?.join(name);
    if !p.is_file() {
        bail!(
            "{} not built: run `cargo build --workspace` (with the same profile) first",
            p.display()
        );
    }
    warn_if_stale(&p);
    Ok(p)
}

/// `cargo test -p safemount-tests` does not rebuild the other crates'
/// binaries: say so loudly when a binary is older than its sources.
fn warn_if_stale(binary: &Path) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    let mut first = false;
    ONCE.call_once(|| first = true);
    if !first {
        return;
    }
    let Ok(built) = fs::metadata(binary).and_then(|m| m.modified()) else {
        return;
    };
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut newest: Option<(std::time::SystemTime, PathBuf)> = None;
    let mut stack: Vec<PathBuf> = ["proto/src", "broker/src", "worker/src"]
        .iter()
        .map(|d| repo.join(d))
        .collect();
    let mut budget = 10_000;
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            budget -= 1;
            if budget == 0 {
                return;
            }
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(t) = e.metadata().and_then(|m| m.modified())
                && newest.as_ref().is_none_or(|(n, _)| t > *n)
            {
                newest = Some((t, p));
            }
        }
    }
    if let Some((t, src)) = newest
        && t > built
    {
        eprintln!(
            "warning: {} is older than {} (binaries may be stale): run `cargo build --workspace` with this profile, or `cargo test --workspace`",
            binary.display(),
            src.display()
        );
    }
}

/// Where two runs of one scenario (safemount's and the kernel's, one line
/// per step) disagree: each differing step as "safemount ... / kernel
/// ...", and a last line if one run has more steps.
pub fn step_differences(ours: &[String], theirs: &[String]) -> Vec<String> {
    let mut diffs: Vec<String> = ours
        .iter()
        .zip(theirs)
        .filter(|(a, b)| a != b)
        .map(|(a, b)| format!("safemount {a}\n     kernel {b}"))
        .collect();
    if ours.len() != theirs.len() {
        diffs.push(format!(
            "safemount ran {} steps, the kernel {}",
            ours.len(),
            theirs.len()
        ));
    }
    diffs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_within_returns_output_or_kills_a_hung_command() {
        let out = output_within(Command::new("echo").arg("hi"), HUNG_AFTER).unwrap();
        assert_eq!(out.stdout, b"hi\n");
        let started = Instant::now();
        let err =
            output_within(Command::new("sleep").arg("30"), Duration::from_millis(200)).unwrap_err();
        assert!(format!("{err}").contains("hung: killed after"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }
}
