//! Shared fixtures for the broker's integration tests (policy, load,
//! fstab, e2e, restart, polkit): a scratch directory, a running safemountd, ext4 images, and
//! the checks that nothing was left behind. Real mounts: root and
//! /dev/fuse are needed; without them each test prints why and returns.

#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Skips and test knobs, shared with every test crate (see the file).
#[path = "../../../tests/src/skip.rs"]
pub mod skip;

pub use skip::skip;

/// How long a test waits for something the system does on its own (a
/// killed worker's mount to vanish, a worker to be reaped): polled, so a
/// fast machine does not wait, and generous, so a busy 2-core machine
/// running other builds does not fail.
pub const SETTLE: Duration = Duration::from_secs(30);

#[track_caller]
pub fn have_root_and_fuse() -> bool {
    if !skip::require_root("mounting for real") {
        return false;
    }
    if !Path::new("/dev/fuse").exists() {
        skip("no /dev/fuse");
        return false;
    }
    true
}

pub fn bin_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_safemountd"))
        .parent()
        .expect("binary has a parent dir")
        .to_owned()
}

pub fn client_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_safemount"))
}

/// The real worker (`cargo build -p safemount-worker`), or None.
pub fn real_worker() -> Option<PathBuf> {
    let p = bin_dir().join("safemount-worker");
    if p.exists() {
        Some(p)
    } else {
        skip(&format!(
            "{} not built (cargo build -p safemount-worker)",
            p.display()
        ));
        None
    }
}

/// The fake worker (`cargo build -p safemount-broker --examples`), or None.
pub fn fake_worker() -> Option<PathBuf> {
    let p = bin_dir().join("examples/fake_worker");
    if p.exists() {
        Some(p)
    } else {
        skip(&format!(
            "{} not built (cargo build -p safemount-broker --examples)",
            p.display()
        ));
        None
    }
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A scratch directory (0755), removed on drop after detaching anything
/// still mounted inside.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(tag: &str) -> Self {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let p = std::env::temp_dir().join(format!("sm-g2-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        Self(p)
    }
    pub fn path(&self, rel: &str) -> PathBuf {
        self.0.join(rel)
    }
    pub fn dir(&self, rel: &str) -> PathBuf {
        let p = self.path(rel);
        std::fs::create_dir_all(&p).unwrap();
        p
    }
    /// A 4 MiB image of zeros (for the fake worker, which reads nothing).
    pub fn blank_image(&self, name: &str) -> PathBuf {
        let p = self.path(name);
        let f = std::fs::File::create(&p).unwrap();
        f.set_len(4 << 20).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        p
    }
    /// The broker's per-mount state records (`run/mounts/*`), if any.
    pub fn records(&self) -> Vec<PathBuf> {
        match std::fs::read_dir(self.path("run/mounts")) {
            Ok(d) => d.flatten().map(|e| e.path()).collect(),
            Err(_) => Vec::new(),
        }
    }
    /// An 8 MiB ext4 image with `label` (raw bytes) and one file,
    /// `hello.txt`.
    pub fn ext4_image(&self, name: &str, label: &[u8]) -> PathBuf {
        use std::os::unix::ffi::OsStrExt;
        let p = self.path(name);
        let content = self.dir(&format!("{name}.d"));
        std::fs::write(content.join("hello.txt"), b"hello\n").unwrap();
        let f = std::fs::File::create(&p).unwrap();
        f.set_len(8 << 20).unwrap();
        let out = Command::new("mkfs.ext4")
            .args(["-q", "-F", "-L"])
            .arg(std::ffi::OsStr::from_bytes(label))
            .arg("-d")
            .arg(&content)
            .arg(&p)
            .output()
            .unwrap();
        assert!(out.status.success(), "mkfs.ext4: {}", stderr(&out));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        p
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        for m in safemount_mounts() {
            if m.starts_with(&self.0) {
                let _ = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH);
            }
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Mount points of every `fuse.safemount` mount.
pub fn safemount_mounts() -> Vec<PathBuf> {
    safemount_broker::mountpoint::read_mountinfo()
        .unwrap()
        .into_iter()
        .filter(|e| e.fstype == "fuse.safemount")
        .map(|e| e.mount_point)
        .collect()
}

/// Whether a safemount mount sits at `p`, compared as the mount table
/// writes it: `p` with its directory resolved (a symlinked TMPDIR would
/// otherwise make every "gone" check pass). The last component is not
/// resolved: a dead FUSE mount cannot be stat'ed.
pub fn is_mounted(p: &Path) -> bool {
    let p = canonical(p);
    safemount_mounts().contains(&p)
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

/// Pids whose parent is `pid`.
pub fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(child) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let ppid: u32 = rest
            .split_whitespace()
            .nth(1)
            .unwrap_or("0")
            .parse()
            .unwrap_or(0);
        if ppid == pid {
            out.push(child);
        }
    }
    out
}

pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// The fd count once it has not changed for 300 ms.
pub fn settled_fd_count(pid: u32) -> usize {
    let mut last = fd_count(pid);
    let mut stable = 0;
    for _ in 0..100 {
        std::thread::sleep(Duration::from_millis(50));
        let now = fd_count(pid);
        if now == last {
            stable += 1;
            if stable >= 6 {
                break;
            }
        } else {
            stable = 0;
            last = now;
        }
    }
    last
}

pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A running safemountd (state under the scratch dir), stopped with
/// SIGTERM on drop.
pub struct Broker {
    child: Option<Child>,
    pub socket: PathBuf,
    log: PathBuf,
}

impl Broker {
    pub fn start(scratch: &Scratch, worker: &Path) -> Self {
        Self::builder(scratch, worker).start()
    }

    /// `start` with extra command-line arguments for safemountd.
    pub fn start_with(scratch: &Scratch, worker: &Path, extra: &[&str]) -> Self {
        Self::builder(scratch, worker).args(extra).start()
    }

    /// A broker with more options (arguments, environment, log name).
    pub fn builder(scratch: &Scratch, worker: &Path) -> BrokerBuilder {
        BrokerBuilder {
            socket: scratch.path("run/socket"),
            log: scratch.path("broker.log"),
            worker: worker.to_owned(),
            args: Vec::new(),
            env: Vec::new(),
            env_remove: Vec::new(),
            soft_open_files: None,
        }
    }

    /// Wraps a safemountd the test spawned itself (e.g. socket-activated).
    pub fn from_child(child: Child, socket: PathBuf, log: PathBuf) -> Self {
        Self {
            child: Some(child),
            socket,
            log,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.id())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn client(&self, args: &[&str]) -> Output {
        Command::new(client_bin())
            .args(args)
            .env("SAFEMOUNT_SOCKET", &self.socket)
            .output()
            .unwrap()
    }

    /// Runs the client as root (None) or, through setpriv, as (uid, gid)
    /// with no supplementary groups.
    pub fn client_as(&self, user: Option<(u32, u32)>, args: &[&str]) -> Output {
        let mut cmd = match user {
            None => Command::new(client_bin()),
            Some((uid, gid)) => {
                let mut c = Command::new("setpriv");
                c.args([
                    "--reuid",
                    &uid.to_string(),
                    "--regid",
                    &gid.to_string(),
                    "--clear-groups",
                ])
                .arg(client_bin());
                c
            }
        };
        cmd.args(args)
            .env("SAFEMOUNT_SOCKET", &self.socket)
            .output()
            .unwrap()
    }

    /// The client as root, started and left running (output piped).
    pub fn client_child(&self, args: &[&str]) -> Child {
        Command::new(client_bin())
            .args(args)
            .env("SAFEMOUNT_SOCKET", &self.socket)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// `list --json` as `user` (see `client_as`).
    pub fn list_json_as(&self, user: Option<(u32, u32)>) -> Vec<serde_json::Value> {
        let out = self.client_as(user, &["list", "--json"]);
        assert!(out.status.success(), "list: {}", stderr(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Runs `program` with the broker's socket in the environment.
    pub fn run(&self, program: &Path, args: &[&str]) -> Output {
        Command::new(program)
            .args(args)
            .env("SAFEMOUNT_SOCKET", &self.socket)
            .output()
            .unwrap()
    }

    pub fn list_json(&self) -> Vec<serde_json::Value> {
        let out = self.client(&["list", "--json"]);
        assert!(out.status.success(), "list failed: {out:?}");
        serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout).unwrap()
    }

    pub fn connect(&self) -> safemount_broker::client::Connection {
        safemount_broker::client::Connection::connect(&self.socket).unwrap()
    }

    /// Waits until the broker has no mounts and no worker children.
    pub fn assert_idle(&self) {
        assert!(
            wait_until(Duration::from_secs(10), || children_of(self.pid())
                .is_empty()),
            "worker not reaped: children {:?}\n{}",
            children_of(self.pid()),
            self.log()
        );
        assert!(
            wait_until(Duration::from_secs(5), || self.list_json().is_empty()),
            "state left behind: {:?}",
            self.list_json()
        );
    }

    /// Stops the broker with SIGTERM; returns its exit code.
    pub fn stop(&mut self) -> Option<i32> {
        self.signal_and_wait(Signal::SIGTERM)
            .and_then(|status| status.code())
    }

    /// Sends `sig` and waits up to 15 s for the broker to exit (then kills
    /// it and returns None).
    pub fn signal_and_wait(&mut self, sig: Signal) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        let _ = kill(Pid::from_raw(child.id() as i32), sig);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Options for a broker started by `Broker::builder`.
pub struct BrokerBuilder {
    socket: PathBuf,
    log: PathBuf,
    worker: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    env_remove: Vec<String>,
    soft_open_files: Option<u64>,
}

impl BrokerBuilder {
    /// Extra command-line arguments for safemountd.
    pub fn args(mut self, extra: &[&str]) -> Self {
        self.args.extend(extra.iter().map(|a| (*a).to_owned()));
        self
    }
    /// An environment variable for safemountd.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }
    /// An environment variable safemountd must not inherit.
    pub fn env_remove(mut self, key: &str) -> Self {
        self.env_remove.push(key.to_owned());
        self
    }
    /// safemountd starts with this soft RLIMIT_NOFILE (through prlimit).
    pub fn soft_open_files(mut self, n: u64) -> Self {
        self.soft_open_files = Some(n);
        self
    }
    /// The log file's name in the scratch dir (default `broker.log`).
    pub fn log_name(mut self, scratch: &Scratch, name: &str) -> Self {
        self.log = scratch.path(name);
        self
    }

    pub fn start(self) -> Broker {
        let Self {
            socket,
            log,
            worker,
            args,
            env,
            env_remove,
            soft_open_files,
        } = self;
        let daemon = env!("CARGO_BIN_EXE_safemountd");
        let mut cmd = match soft_open_files {
            Some(n) => {
                let mut c = Command::new("prlimit");
                c.arg(format!("--nofile={n}:")).arg("--").arg(daemon);
                c
            }
            None => Command::new(daemon),
        };
        cmd.arg("--socket")
            .arg(&socket)
            .arg("--worker")
            .arg(&worker);
        cmd.args(&args);
        // State records go beside the socket (safemountd's default).
        for (k, v) in &env {
            cmd.env(k, v);
        }
        cmd.env("SAFEMOUNT_LOG", "debug");
        for k in &env_remove {
            cmd.env_remove(k);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let b = Broker::from_child(child, socket, log);
        assert!(
            wait_until(Duration::from_secs(10), || b
                .client(&["list", "--json"])
                .status
                .success()),
            "broker does not answer on its socket; log:\n{}",
            b.log()
        );
        b
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A loop device over `image`, detached on drop.
pub struct Loop(pub PathBuf);

impl Loop {
    pub fn new(image: &Path, partscan: bool) -> Option<Self> {
        let mut cmd = Command::new("losetup");
        cmd.args(["--find", "--show"]);
        if partscan {
            cmd.arg("--partscan");
        }
        let out = cmd.arg(image).output().ok()?;
        if !out.status.success() {
            skip(&format!("losetup failed: {}", stderr(&out)));
            return None;
        }
        Some(Self(PathBuf::from(stdout(&out).trim())))
    }
    pub fn name(&self) -> String {
        self.0.file_name().unwrap().to_string_lossy().into_owned()
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        for _ in 0..50 {
            let ok = Command::new("losetup")
                .arg("-d")
                .arg(&self.0)
                .status()
                .map(|s| s.success());
            if ok.unwrap_or(false) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
