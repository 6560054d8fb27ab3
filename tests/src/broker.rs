//! The system under test: a private `safemountd` per fixture, driven through
//! the `safemount` client exactly as a user would.
//!
//! `SAFEMOUNT_E2E_SUT=kernel` swaps the broker for the kernel's own ext4
//! (loop device, `ro,noload`). It exists only to validate this harness
//! against a known-good implementation; tests that need a worker process
//! fail under it.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::kernel::KernelMount;
use crate::service_manager::ServiceManager;
use crate::util::{self, TempDir, wait_until};

/// A failed client command: exit status and what it printed.
#[derive(Debug, Clone)]
pub struct CmdError {
    pub status: String,
    pub stdout: String,
    pub stderr: String,
}

impl std::fmt::Display for CmdError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (stderr: {:?}, stdout: {:?})",
            self.status, self.stderr, self.stdout
        )
    }
}

impl std::error::Error for CmdError {}

impl CmdError {
    fn from_output(out: &Output) -> Self {
        Self {
            status: out.status.to_string(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// One row of `safemount list --json`.
#[derive(Clone, Debug)]
pub struct ListEntry {
    pub source: String,
    pub mountpoint: PathBuf,
    pub owner_uid: Option<u64>,
    pub label: String,
    pub read_only: Option<bool>,
    pub state: String,
    pub worker_pid: Option<i32>,
    /// The first error the worker reported while serving.
    pub error: Option<String>,
    pub raw: serde_json::Value,
}

enum Mode {
    /// The daemon behind a lock, so a test can kill and restart it while
    /// other threads run client commands.
    Broker {
        child: Mutex<Child>,
        client: PathBuf,
        /// Set when the daemon runs as under systemd (see
        /// [`Broker::start_managed`]).
        manager: Option<ServiceManager>,
    },
    Kernel {
        mounts: Mutex<Vec<KernelMount>>,
    },
}

pub struct Broker {
    dir: TempDir,
    socket: PathBuf,
    mode: Mode,
}

/// Starts safemountd on `socket`, its state next to it in `dir`, logging
/// (appended) to `dir/safemountd.log`; started by `manager` as systemd
/// would, if given.
fn spawn_daemon(dir: &TempDir, socket: &Path, manager: Option<&ServiceManager>) -> Result<Child> {
    let daemon = util::bin("safemountd")?;
    let worker = util::bin("safemount-worker")?;
    let log = File::options()
        .create(true)
        .append(true)
        .open(dir.join("safemountd.log"))?;
    let mut cmd = match manager {
        Some(m) => m.start_command(&daemon)?,
        None => {
            let mut cmd = Command::new(&daemon);
            cmd.env_remove("NOTIFY_SOCKET");
            cmd
        }
    };
    cmd.arg("--socket")
        .arg(socket)
        .arg("--worker")
        .arg(&worker)
        // The variable safemountd reads (not RUST_LOG), fixed rather
        // than inherited: corpus.rs looks for "panicked" and "SIGSYS"
        // lines, which an ambient setting must not filter out.
        .env("SAFEMOUNT_LOG", "info")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("spawn {}", daemon.display()))
}

/// `SAFEMOUNT_E2E_SUT=kernel`: the kernel stands in for safemount (checks
/// the harness, tests nothing of safemount), so it is a knob that needs
/// `SAFEMOUNT_TEST_ALLOW_WEAK=1`.
pub fn kernel_standin() -> bool {
    match crate::skip::knob("SAFEMOUNT_E2E_SUT").as_deref() {
        None => false,
        Some("kernel") => true,
        Some(other) => panic!("SAFEMOUNT_E2E_SUT={other:?}: only \"kernel\" is known"),
    }
}

impl Broker {
    /// Starts a private broker on a socket in its own temp dir and waits
    /// until the socket answers.
    pub fn start() -> Result<Self> {
        Self::start_with(false)
    }

    /// [`Self::start`], the broker run as under systemd: it notifies a
    /// [`ServiceManager`], which keeps its fd store and passes it to the
    /// broker [`Self::kill_and_restart`] starts. Such a broker keeps its
    /// mounts when it stops: unmount them before dropping it.
    pub fn start_managed() -> Result<Self> {
        Self::start_with(true)
    }

    fn start_with(managed: bool) -> Result<Self> {
        let dir = TempDir::new("broker")?;
        let socket = dir.join("socket");
        if kernel_standin() {
            return Ok(Self {
                dir,
                socket,
                mode: Mode::Kernel {
                    mounts: Mutex::new(Vec::new()),
                },
            });
        }
        let client = util::bin("safemount")?;
        let manager = managed
            .then(|| ServiceManager::new(dir.path()))
            .transpose()?;
        let child = spawn_daemon(&dir, &socket, manager.as_ref())?;
        let b = Self {
            dir,
            socket,
            mode: Mode::Broker {
                child: Mutex::new(child),
                client,
                manager,
            },
        };
        b.wait_up()
    }

    /// SIGKILL, as a crash or the OOM killer would: no cleanup at all,
    /// the workers keep serving. Then a new broker on the same socket and
    /// state directory, which adopts what is alive (its log follows the
    /// first one's in the same file).
    /// Client commands may run meanwhile (they fail while no broker
    /// listens).
    pub fn kill_and_restart(&self) -> Result<()> {
        let Mode::Broker { child, manager, .. } = &self.mode else {
            bail!("the kernel stand-in has no broker to kill");
        };
        {
            let mut child = child.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
            child.kill()?;
            child.wait()?;
            let _ = fs::remove_file(&self.socket);
            *child = spawn_daemon(&self.dir, &self.socket, manager.as_ref())?;
        }
        self.wait_socket()
    }

    /// The names in the service manager's fd store (a managed broker
    /// only).
    pub fn stored_fds(&self) -> Result<Vec<String>> {
        match &self.mode {
            Mode::Broker {
                manager: Some(m), ..
            } => m.stored_names(),
            _ => bail!("not a managed broker"),
        }
    }

    /// Waits (at most 10 s) until the fd store is empty (a managed broker
    /// only).
    pub fn wait_fd_store_empty(&self) -> bool {
        wait_until(Duration::from_secs(10), || {
            self.stored_fds().is_ok_and(|names| names.is_empty())
        })
    }

    /// Waits (at most 10 s) until `mnt` is listed as served by worker
    /// `pid` (as after the adoption by a restarted broker).
    pub fn wait_listed_with(&self, mnt: &Path, pid: i32) -> bool {
        wait_until(Duration::from_secs(10), || {
            self.entry_for(mnt)
                .is_ok_and(|e| e.is_some_and(|e| e.worker_pid == Some(pid)))
        })
    }

    /// Waits until the socket answers.
    fn wait_up(self) -> Result<Self> {
        self.wait_socket()?;
        Ok(self)
    }

    fn wait_socket(&self) -> Result<()> {
        let b = self;
        let sock = b.socket.clone();
        let up = wait_until(Duration::from_secs(10), || sock.exists());
        if !up {
            let log = b.log();
            if let Mode::Broker { child, .. } = &b.mode
                && let Ok(mut child) = child.lock()
                && let Ok(Some(st)) = child.try_wait()
            {
                bail!("safemountd exited at start ({st}); log:\n{log}");
            }
            bail!(
                "safemountd socket {} did not appear in 10 s; log:\n{log}",
                b.socket.display()
            );
        }
        Ok(())
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Broker pid (None for the kernel stand-in).
    pub fn pid(&self) -> Option<i32> {
        match &self.mode {
            Mode::Broker { child, .. } => {
                child.lock().ok().and_then(|c| i32::try_from(c.id()).ok())
            }
            Mode::Kernel { .. } => None,
        }
    }

    /// What safemountd has logged so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("safemountd.log")).unwrap_or_default()
    }

    /// A new broker with `img` mounted on `mnt` (made) with `opts`;
    /// panics, with the broker's log, if that fails.
    pub fn with_mount(img: &Path, mnt: &Path, opts: &str) -> Self {
        let broker = Broker::start().expect("broker start");
        std::fs::create_dir_all(mnt).expect("mount point");
        if let Err(e) = broker.mount(img, mnt, opts) {
            panic!("mount failed: {e}\nbroker log:\n{}", broker.log_tail(20));
        }
        broker
    }

    /// Tail of the log, for assertion messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = self.log();
        let v: Vec<&str> = log.lines().collect();
        v[v.len().saturating_sub(lines)..].join("\n")
    }

    pub fn client(&self, args: &[&std::ffi::OsStr]) -> Result<Output> {
        let Mode::Broker { client, .. } = &self.mode else {
            bail!("no client in kernel mode")
        };
        util::output_within(
            Command::new(client)
                .arg("--socket")
                .arg(&self.socket)
                .args(args)
                .stdin(Stdio::null()),
            util::HUNG_AFTER,
        )
    }

    /// `safemount mount IMAGE MNT -o OPTS`. Ok(stdout) or the client's
    /// complaint.
    pub fn mount(
        &self,
        image: &Path,
        mnt: &Path,
        opts: &str,
    ) -> std::result::Result<String, CmdError> {
        let fail = |e: anyhow::Error| CmdError {
            status: "spawn failed".into(),
            stdout: String::new(),
            stderr: format!("{e:#}"),
        };
        match &self.mode {
            Mode::Kernel { mounts } => {
                let m = KernelMount::mount(image, mnt).map_err(fail)?;
                mounts
                    .lock()
                    .map_err(|_| fail(anyhow::anyhow!("poisoned")))?
                    .push(m);
                Ok(mnt.display().to_string())
            }
            Mode::Broker { .. } => {
                let out = self
                    .client(&[
                        "mount".as_ref(),
                        image.as_os_str(),
                        mnt.as_os_str(),
                        "-o".as_ref(),
                        opts.as_ref(),
                    ])
                    .map_err(fail)?;
                if out.status.success() {
                    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
                } else {
                    Err(CmdError::from_output(&out))
                }
            }
        }
    }

    pub fn unmount(&self, mnt: &Path) -> std::result::Result<(), CmdError> {
        let fail = |e: anyhow::Error| CmdError {
            status: "spawn failed".into(),
            stdout: String::new(),
            stderr: format!("{e:#}"),
        };
        match &self.mode {
            Mode::Kernel { mounts } => {
                let mut v = mounts
                    .lock()
                    .map_err(|_| fail(anyhow::anyhow!("poisoned")))?;
                if let Some(i) = v.iter().position(|m| m.mountpoint() == mnt) {
                    let m = v.remove(i);
                    m.unmount().map_err(fail)?;
                    Ok(())
                } else {
                    Err(fail(anyhow::anyhow!("not mounted: {}", mnt.display())))
                }
            }
            Mode::Broker { .. } => {
                let out = self
                    .client(&["unmount".as_ref(), mnt.as_os_str()])
                    .map_err(fail)?;
                if out.status.success() {
                    Ok(())
                } else {
                    Err(CmdError::from_output(&out))
                }
            }
        }
    }

    /// `safemount unmount --power-off MNT`: Ok(stdout) or the client's
    /// complaint (broker mode only).
    pub fn unmount_power_off(&self, mnt: &Path) -> std::result::Result<String, CmdError> {
        let out = self
            .client(&["unmount".as_ref(), "--power-off".as_ref(), mnt.as_os_str()])
            .map_err(|e| CmdError {
                status: "spawn failed".into(),
                stdout: String::new(),
                stderr: format!("{e:#}"),
            })?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        } else {
            Err(CmdError::from_output(&out))
        }
    }

    /// The worker's count of FUSE requests of kind `op` ("lookup",
    /// "read", ...) from the last "FUSE requests:" line in the log, which
    /// a worker writes at unmount: waits up to 20 s for it.
    pub fn logged_request_count(&self, op: &str) -> Result<u64> {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let log = self.log();
            if let Some(line) = log.lines().rev().find(|l| l.contains("FUSE requests:")) {
                let n = line
                    .split_whitespace()
                    .find_map(|kv| kv.strip_prefix(op)?.strip_prefix('='))
                    .map_or(Ok(0), str::parse)?;
                return Ok(n);
            }
            if std::time::Instant::now() > deadline {
                bail!(
                    "no request counts in the broker log:\n{}",
                    self.log_tail(20)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `safemount list --json`, parsed leniently (unknown fields kept in raw).
    pub fn list(&self) -> Result<Vec<ListEntry>> {
        if let Mode::Kernel { mounts } = &self.mode {
            let v = mounts.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
            return Ok(v
                .iter()
                .map(|m| ListEntry {
                    source: m.image().display().to_string(),
                    mountpoint: m.mountpoint().to_path_buf(),
                    owner_uid: Some(0),
                    label: String::new(),
                    read_only: Some(true),
                    state: "Mounted".into(),
                    worker_pid: None,
                    error: None,
                    raw: serde_json::Value::Null,
                })
                .collect());
        }
        let out = self.client(&["list".as_ref(), "--json".as_ref()])?;
        if !out.status.success() {
            bail!(
                "safemount list --json failed: {}",
                CmdError::from_output(&out)
            );
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).with_context(|| {
            format!(
                "list --json printed invalid JSON: {:?}",
                String::from_utf8_lossy(&out.stdout)
            )
        })?;
        let arr = v.as_array().context("list --json: not an array")?;
        Ok(arr
            .iter()
            .map(|o| ListEntry {
                source: o["source"].as_str().unwrap_or_default().to_owned(),
                mountpoint: PathBuf::from(o["mountpoint"].as_str().unwrap_or_default()),
                owner_uid: o["owner_uid"].as_u64(),
                label: o["label"].as_str().unwrap_or_default().to_owned(),
                read_only: o["read_only"].as_bool(),
                state: match &o["state"] {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                },
                worker_pid: o["worker_pid"].as_i64().and_then(|p| i32::try_from(p).ok()),
                error: o["error"].as_str().map(str::to_owned),
                raw: o.clone(),
            })
            .collect())
    }

    /// The list entry for `mnt`. Mount points are compared after
    /// canonicalizing both sides where possible.
    pub fn entry_for(&self, mnt: &Path) -> Result<Option<ListEntry>> {
        let want = fs::canonicalize(mnt).unwrap_or_else(|_| mnt.to_path_buf());
        Ok(self.list()?.into_iter().find(|e| {
            e.mountpoint == mnt
                || fs::canonicalize(&e.mountpoint).unwrap_or_else(|_| e.mountpoint.clone()) == want
        }))
    }

    /// Worker pid serving `mnt`, from `list --json`.
    pub fn worker_pid(&self, mnt: &Path) -> Result<i32> {
        let e = self
            .entry_for(mnt)?
            .with_context(|| format!("{} not in `list --json`", mnt.display()))?;
        e.worker_pid
            .with_context(|| format!("no worker_pid in list entry {}", e.raw))
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        // A managed broker keeps its mounts on SIGTERM (as under systemd):
        // unmount what it still lists, so no test leaves mounts behind.
        if matches!(
            &self.mode,
            Mode::Broker {
                manager: Some(_),
                ..
            }
        ) {
            for e in self.list().unwrap_or_default() {
                let _ = self.unmount(&e.mountpoint);
            }
        }
        match &mut self.mode {
            Mode::Broker { child, .. } => {
                let child = child.get_mut().unwrap_or_else(|e| e.into_inner());
                if let Ok(pid) = i32::try_from(child.id()) {
                    let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
                }
                let done = wait_until(Duration::from_secs(5), || {
                    matches!(child.try_wait(), Ok(Some(_)))
                });
                if !done {
                    let _ = child.kill();
                    let _ = child.wait();
                }
            }
            Mode::Kernel { mounts } => {
                if let Ok(v) = mounts.get_mut() {
                    for m in v.drain(..) {
                        let _ = m.unmount();
                    }
                }
            }
        }
    }
}
