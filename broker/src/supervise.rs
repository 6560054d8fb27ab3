//! Workers: who they run as, spawning one, talking to it, reaping it.
//!
//! Each worker gets a reaper thread at once. The reaper blocks in
//! `waitid(WNOWAIT)`, so the process stays a zombie (its pid cannot be
//! reused) while the broker cleans up after it; only then is it reaped,
//! under the handle's lock, which is also the lock [`WorkerHandle::kill`]
//! takes: a signal can never reach a recycled pid.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::Signal;
use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid, waitpid};
use nix::unistd::{Pid, pipe2};
use safemount_proto::{ErrorKind, ProbeReport, ProtoError, WorkerReply, WorkerRequest};

/// The user workers run as.
pub const WORKER_USER: &str = "safemount";

/// Used when the `safemount` user neither exists nor can be created: a
/// fixed high id that no real account should have.
pub const FALLBACK_ID: u32 = 2_147_483_646;

/// The fd number the worker finds its socket on.
pub const WORKER_SOCKET_FD: i32 = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerIdentity {
    pub uid: u32,
    pub gid: u32,
}

/// Resolves the `safemount` user, creating it as a system user if absent,
/// falling back to [`FALLBACK_ID`] (with a warning) if that fails.
pub fn resolve_worker_identity() -> WorkerIdentity {
    let lookup = || match nix::unistd::User::from_name(WORKER_USER) {
        Ok(Some(u)) => Some(WorkerIdentity {
            uid: u.uid.as_raw(),
            gid: u.gid.as_raw(),
        }),
        Ok(None) => None,
        Err(e) => {
            tracing::warn!(error = %e, "cannot look up user {WORKER_USER}");
            None
        }
    };
    if let Some(id) = lookup() {
        return id;
    }
    tracing::info!("creating system user {WORKER_USER}");
    let created = Command::new("useradd")
        .args([
            "--system",
            "--no-create-home",
            "--home-dir",
            "/nonexistent",
            "--shell",
            "/usr/sbin/nologin",
            "--user-group",
            WORKER_USER,
        ])
        .stdin(Stdio::null())
        .status();
    match created {
        Ok(status) if status.success() => {}
        Ok(status) => tracing::warn!(%status, "useradd {WORKER_USER} failed"),
        Err(e) => tracing::warn!(error = %e, "cannot run useradd"),
    }
    lookup().unwrap_or_else(|| {
        tracing::warn!(
            uid = FALLBACK_ID,
            "no user {WORKER_USER}: workers run as uid/gid {FALLBACK_ID}"
        );
        WorkerIdentity {
            uid: FALLBACK_ID,
            gid: FALLBACK_ID,
        }
    })
}

#[derive(Debug, thiserror::Error)]
pub enum SuperviseError {
    #[error("cannot create worker socket: {0}")]
    Socket(Errno),
    #[error("cannot create the worker's log pipe: {0}")]
    LogPipe(Errno),
    #[error("cannot start worker {path}: {error}")]
    Spawn { path: String, error: std::io::Error },
    #[error("cannot start reaper thread: {0}")]
    Thread(std::io::Error),
    #[error("worker died: {0}")]
    Died(String),
    #[error("worker did not answer within {0} s ({1})")]
    Timeout(u64, &'static str),
    #[error("worker protocol error: {0}")]
    Protocol(ProtoError),
    #[error("worker protocol error: expected {expected}, got {got}")]
    Unexpected {
        expected: &'static str,
        got: &'static str,
    },
    #[error("filesystem refused: {0}")]
    Refused(String),
}

impl SuperviseError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Refused(_) => ErrorKind::Refused,
            _ => ErrorKind::Internal,
        }
    }
}

/// Describes how a process ended, for logs and errors.
pub fn describe_exit(status: &WaitStatus) -> String {
    match status {
        WaitStatus::Exited(_, 0) => "exited normally".to_owned(),
        WaitStatus::Exited(_, code) => format!("exited with status {code}"),
        WaitStatus::Signaled(_, sig, core) => {
            let core = if *core { " (core dumped)" } else { "" };
            format!("killed by signal {}{core}", sig.as_str())
        }
        other => format!("{other:?}"),
    }
}

#[derive(Debug, Default)]
struct Reaped {
    /// Set once the process has been reaped: its pid is no longer ours.
    status: Option<WaitStatus>,
}

/// Shared between the reaper thread and everyone who may signal the worker.
#[derive(Debug)]
pub struct WorkerHandle {
    pid: Pid,
    reaped: Mutex<Reaped>,
    cv: Condvar,
    /// For a worker adopted after a broker restart (not our child): a
    /// pidfd, through which it is signalled (never a recycled pid).
    pidfd: Option<OwnedFd>,
}

impl WorkerHandle {
    /// A handle on `pid` that nothing reaps: a stand-in worker for tests
    /// of the records.
    #[cfg(test)]
    pub(crate) fn unwatched(pid: i32) -> Arc<Self> {
        Arc::new(Self {
            pid: Pid::from_raw(pid),
            reaped: Mutex::new(Reaped::default()),
            cv: Condvar::new(),
            pidfd: None,
        })
    }

    pub fn pid(&self) -> i32 {
        self.pid.as_raw()
    }

    fn lock(&self) -> MutexGuard<'_, Reaped> {
        self.reaped.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Signals the worker unless it has already been reaped.
    pub fn kill(&self, sig: Signal) {
        let guard = self.lock();
        if guard.status.is_some() {
            return;
        }
        let sent = match &self.pidfd {
            Some(pidfd) => crate::state::pidfd_send_signal(pidfd.as_fd(), sig),
            None => nix::sys::signal::kill(self.pid, sig),
        };
        if let Err(e) = sent {
            tracing::debug!(pid = self.pid.as_raw(), error = %e, "kill failed");
        }
    }

    /// A handle for a worker a previous broker started, watched through
    /// `pidfd` (see [`crate::state`]); [`Self::mark_gone`] records its end.
    pub fn adopted(pid: i32, pidfd: OwnedFd) -> Arc<Self> {
        Arc::new(Self {
            pid: Pid::from_raw(pid),
            reaped: Mutex::new(Reaped::default()),
            cv: Condvar::new(),
            pidfd: Some(pidfd),
        })
    }

    /// An adopted worker has exited (init reaps it, not us): wake waiters.
    pub fn mark_gone(&self, status: WaitStatus) {
        self.lock().status = Some(status);
        self.cv.notify_all();
    }

    /// The pidfd of an adopted worker.
    pub fn pidfd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        self.pidfd.as_ref().map(|f| f.as_fd())
    }

    /// How the worker ended, if it has been reaped.
    pub fn exit_status(&self) -> Option<WaitStatus> {
        self.lock().status
    }

    /// Waits until the worker has been reaped (and so its mount cleaned
    /// up), at most `timeout`.
    pub fn wait_reaped(&self, timeout: Duration) -> Option<WaitStatus> {
        let deadline = Instant::now() + timeout;
        let mut guard = self.lock();
        while guard.status.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            guard = match self.cv.wait_timeout(guard, left) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
        guard.status
    }

    /// SIGKILLs the worker and waits (bounded) for the reaper.
    pub fn kill_and_reap(&self, timeout: Duration) -> Option<WaitStatus> {
        self.kill(Signal::SIGKILL);
        let status = self.wait_reaped(timeout);
        if status.is_none() {
            tracing::error!(pid = self.pid.as_raw(), "worker not reaped after SIGKILL");
        }
        status
    }
}

/// What a serving worker reports whenever it changes (see the worker's
/// `health` module).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthReport {
    /// The mount now serves reads only.
    pub read_only: bool,
    /// The first error met, one line.
    pub error: Option<String>,
    /// While space is low, the dirty page cap the worker asks for (see
    /// [`crate::bdi::limit_dirty`]).
    pub dirty_cap: Option<u64>,
}

/// A running worker and the broker's end of its socket.
#[derive(Debug)]
pub struct Worker {
    pub handle: Arc<WorkerHandle>,
    sock: OwnedFd,
    /// A copy of the read end of the worker's log pipe (the relay thread
    /// reads the other), for systemd's fd store; none for an adopted
    /// worker.
    log: Option<OwnedFd>,
}

/// Starts the worker at `path`: empty environment, stdin/stdout on
/// /dev/null, stderr inherited, and one socket on fd 3; nothing else is
/// inherited (every fd the broker holds is close-on-exec). `on_exit` runs on
/// the reaper thread when the worker has exited, before it is reaped.
pub fn spawn(
    path: &Path,
    source: &str,
    on_exit: impl FnOnce(&WaitStatus) + Send + 'static,
) -> Result<Worker, SuperviseError> {
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(SuperviseError::Socket)?;
    let theirs_raw = theirs.as_raw_fd();
    // The worker's stderr never blocks it: a line that does not fit while
    // nobody reads (a broker restarting, a stalled journal) is dropped
    // rather than stalling the FUSE thread that logs it.
    let (log_reader, log_writer) = pipe2(OFlag::O_CLOEXEC).map_err(SuperviseError::LogPipe)?;
    fcntl(&log_writer, FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).map_err(SuperviseError::LogPipe)?;
    let mut cmd = Command::new(path);
    cmd.env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        // A pipe of its own: the broker relays it (worker_log).
        .stderr(Stdio::from(log_writer));
    // SAFETY: the closure runs in the forked child before exec and calls
    // only dup2 and fcntl, which are async-signal-safe; it touches no
    // memory but the copied integer `theirs_raw`.
    unsafe {
        cmd.pre_exec(move || {
            if theirs_raw == WORKER_SOCKET_FD {
                // dup2 onto itself keeps close-on-exec: clear it.
                if libc::fcntl(WORKER_SOCKET_FD, libc::F_SETFD, 0) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(theirs_raw, WORKER_SOCKET_FD) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(|error| SuperviseError::Spawn {
        path: crate::sanitize::display(path.as_os_str().as_encoded_bytes()),
        error,
    })?;
    // Only the worker holds the write end now (the relay sees EOF when it
    // exits).
    drop(cmd);
    drop(theirs);
    let pid = Pid::from_raw(child.id() as i32);
    let log_copy = log_reader.try_clone().ok();
    crate::worker_log::relay(std::fs::File::from(log_reader), pid.as_raw(), source);
    // std's Child does not wait or kill on drop; the reaper owns the pid.
    drop(child);
    let handle = Arc::new(WorkerHandle {
        pid,
        reaped: Mutex::new(Reaped::default()),
        cv: Condvar::new(),
        pidfd: None,
    });
    let reaper_handle = handle.clone();
    let spawned = std::thread::Builder::new()
        .name(format!("reap-{pid}"))
        .spawn(move || reap(&reaper_handle, on_exit));
    if let Err(e) = spawned {
        // No reaper: kill and reap here so no zombie or worker lingers.
        let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
        let _ = waitpid(pid, None);
        return Err(SuperviseError::Thread(e));
    }
    Ok(Worker {
        handle,
        sock: ours,
        log: log_copy,
    })
}

fn reap(handle: &WorkerHandle, on_exit: impl FnOnce(&WaitStatus)) {
    let pid = handle.pid;
    let status = loop {
        match waitid(Id::Pid(pid), WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT) {
            Ok(status) => break status,
            Err(Errno::EINTR) => continue,
            Err(e) => {
                tracing::error!(pid = pid.as_raw(), error = %e, "waitid failed");
                return;
            }
        }
    };
    on_exit(&status);
    let mut guard = handle.lock();
    let status = match waitpid(pid, None) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(pid = pid.as_raw(), error = %e, "waitpid failed");
            status
        }
    };
    guard.status = Some(status);
    drop(guard);
    handle.cv.notify_all();
}

/// A multi-mount protection claim waits at most twice (watch, confirm),
/// each at most 2 x 300 s + 1 s capped at 300 s + 60 s (the worker caps the
/// check interval at 300 s).
const MAX_WAITS: usize = 2;
const MAX_WAIT_SECS: u32 = 360;

impl Worker {
    /// A worker a previous broker started, with the broker's end of its
    /// socket as systemd's fd store kept it.
    pub fn adopted(handle: Arc<WorkerHandle>, sock: OwnedFd) -> Self {
        Self {
            handle,
            sock,
            log: None,
        }
    }

    pub fn pid(&self) -> i32 {
        self.handle.pid()
    }

    /// Hands this worker's log pipe and socket to systemd's fd store, so a
    /// broker restarted after a crash gets them back (see
    /// [`crate::fd_store`]).
    pub fn keep_channels(&self, id: u64) {
        if let Some(log) = &self.log {
            crate::fd_store::keep(id, self.pid(), log.as_fd(), self.sock.as_fd());
        }
    }

    /// Sends `Start` with the device fd and waits for the probe report.
    /// Each `Waiting` the worker sends first (multi-mount protection) goes
    /// to `on_wait` and extends the timeout by its length.
    pub fn start(
        &self,
        request: &WorkerRequest,
        device: std::os::fd::BorrowedFd<'_>,
        timeout: Duration,
        on_wait: &mut dyn FnMut(u32, &str),
    ) -> Result<ProbeReport, SuperviseError> {
        self.send(request, &[device])?;
        let mut waits = 0;
        let mut allowance = timeout;
        let reply = loop {
            match self.recv_reply(allowance, "probe")? {
                WorkerReply::Waiting { seconds, reason } if waits < MAX_WAITS => {
                    waits += 1;
                    let reason = crate::sanitize::display(reason.as_bytes());
                    tracing::info!(seconds, "worker waits: {reason}");
                    on_wait(seconds, &reason);
                    // The worker's wait, then the usual allowance.
                    let wait = u64::from(seconds.min(MAX_WAIT_SECS));
                    allowance = timeout.saturating_add(Duration::from_secs(wait));
                }
                other => break other,
            }
        };
        match reply {
            WorkerReply::Probed(report) => Ok(report),
            WorkerReply::Refused { reason } => Err(SuperviseError::Refused(
                crate::sanitize::display(reason.as_bytes()),
            )),
            WorkerReply::Serving => Err(SuperviseError::Unexpected {
                expected: "Probed",
                got: "Serving",
            }),
            WorkerReply::Health { .. } => Err(SuperviseError::Unexpected {
                expected: "Probed",
                got: "Health",
            }),
            WorkerReply::Waiting { .. } => Err(SuperviseError::Unexpected {
                expected: "Probed",
                got: "a third Waiting",
            }),
        }
    }

    /// Sends `Serve` with the /dev/fuse fd and waits until the worker
    /// serves (the FUSE INIT handshake is done).
    pub fn serve(
        &self,
        fuse: std::os::fd::BorrowedFd<'_>,
        timeout: Duration,
    ) -> Result<(), SuperviseError> {
        self.send(&WorkerRequest::Serve, &[fuse])?;
        match self.recv_reply(timeout, "serve")? {
            WorkerReply::Serving => Ok(()),
            WorkerReply::Refused { reason } => Err(SuperviseError::Refused(
                crate::sanitize::display(reason.as_bytes()),
            )),
            WorkerReply::Probed(_) => Err(SuperviseError::Unexpected {
                expected: "Serving",
                got: "Probed",
            }),
            WorkerReply::Health { .. } => Err(SuperviseError::Unexpected {
                expected: "Serving",
                got: "Health",
            }),
            WorkerReply::Waiting { .. } => Err(SuperviseError::Unexpected {
                expected: "Serving",
                got: "Waiting",
            }),
        }
    }

    /// Once the worker serves: a thread passes each health report to
    /// `on_health` until the worker closes its socket (it exited).
    /// Anything else the worker says is logged and ignored.
    pub fn watch_health(mut self, mut on_health: impl FnMut(HealthReport) + Send + 'static) {
        // Kept for the fd store only; the relay thread reads the pipe.
        self.log = None;
        let pid = self.pid();
        let spawned = std::thread::Builder::new()
            .name(format!("health-{pid}"))
            .spawn(move || {
                loop {
                    match safemount_proto::recv::<WorkerReply>(self.sock.as_fd(), 0) {
                        Ok((
                            WorkerReply::Health {
                                read_only,
                                error,
                                dirty_cap,
                            },
                            _,
                        )) => on_health(HealthReport {
                            read_only,
                            error,
                            dirty_cap,
                        }),
                        Ok((other, _)) => {
                            tracing::warn!(pid, "worker sent {other:?} while serving; ignored");
                        }
                        Err(ProtoError::Closed) => return,
                        Err(ProtoError::Io(Errno::EINTR)) => {}
                        Err(e) => {
                            tracing::warn!(pid, error = %e, "worker health channel failed");
                            return;
                        }
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(pid, error = %e, "no health thread: errors will not show in list");
        }
    }

    fn send(
        &self,
        msg: &WorkerRequest,
        fds: &[std::os::fd::BorrowedFd<'_>],
    ) -> Result<(), SuperviseError> {
        match safemount_proto::send(self.sock.as_fd(), msg, fds) {
            Ok(()) => Ok(()),
            Err(ProtoError::Closed) => Err(self.died()),
            Err(e) => Err(SuperviseError::Protocol(e)),
        }
    }

    fn recv_reply(
        &self,
        timeout: Duration,
        step: &'static str,
    ) -> Result<WorkerReply, SuperviseError> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(SuperviseError::Timeout(timeout.as_secs(), step));
            }
            let ms = i32::try_from(left.as_millis()).unwrap_or(i32::MAX);
            let mut fds = [PollFd::new(self.sock.as_fd(), PollFlags::POLLIN)];
            match poll(
                &mut fds,
                PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX),
            ) {
                Ok(0) | Err(Errno::EINTR) => continue,
                Ok(_) => break,
                Err(e) => return Err(SuperviseError::Protocol(ProtoError::Io(e))),
            }
        }
        // POLLIN or POLLHUP: a queued message is read before the hangup.
        match safemount_proto::recv::<WorkerReply>(self.sock.as_fd(), 0) {
            Ok((reply, _)) => Ok(reply),
            Err(ProtoError::Closed) => Err(self.died()),
            Err(e) => Err(SuperviseError::Protocol(e)),
        }
    }

    /// The socket closed: the worker is gone or going. Say how it ended.
    fn died(&self) -> SuperviseError {
        match self.handle.wait_reaped(Duration::from_secs(2)) {
            Some(status) => SuperviseError::Died(describe_exit(&status)),
            None => SuperviseError::Died("closed its socket".to_owned()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::sync::atomic::{AtomicBool, Ordering};

    fn script(name: &str, body: &str) -> std::path::PathBuf {
        let p = std::env::temp_dir().join(format!("safemount-sup-{name}-{}", std::process::id()));
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    /// Spawns, retrying ETXTBSY (another test thread may have forked while
    /// the script was open for writing).
    fn spawn_retry(p: &Path, on_exit: impl FnOnce(&WaitStatus) + Send + Clone + 'static) -> Worker {
        for _ in 0..50 {
            match spawn(p, "test", on_exit.clone()) {
                Err(SuperviseError::Spawn { error, .. })
                    if error.raw_os_error() == Some(libc::ETXTBSY) =>
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
                other => return other.unwrap(),
            }
        }
        panic!("ETXTBSY for 1 s");
    }

    #[test]
    fn worker_gets_socket_on_fd3_null_stdin_and_no_environment() {
        // Exit 0 only if fd 3 is a socket, stdin is /dev/null, stderr a
        // pipe that never blocks a write (O_NONBLOCK, 04000), fds 4..9
        // are closed and the environment (cargo sets CARGO_MANIFEST_DIR for
        // tests) is gone.
        let p = script(
            "fds",
            r#"[ -S /proc/$$/fd/3 ] || exit 11
[ "$(readlink /proc/$$/fd/0)" = /dev/null ] || exit 12
readlink /proc/$$/fd/2 | grep -q '^pipe:' || exit 15
flags=$(sed -n 's/^flags:[[:space:]]*//p' /proc/$$/fdinfo/2)
[ $((flags & 04000)) -ne 0 ] || exit 16
for n in 4 5 6 7 8 9; do [ -e /proc/$$/fd/$n ] && exit 13; done
[ -z "$HOME$USER$CARGO_MANIFEST_DIR" ] || exit 14
exit 0"#,
        );
        let seen = Arc::new(AtomicBool::new(false));
        let s2 = seen.clone();
        let w = spawn_retry(&p, move |_| s2.store(true, Ordering::SeqCst));
        let status = w.handle.wait_reaped(Duration::from_secs(10));
        std::fs::remove_file(&p).unwrap();
        assert_eq!(
            status.map(|s| describe_exit(&s)).as_deref(),
            Some("exited normally")
        );
        assert!(seen.load(Ordering::SeqCst), "on_exit ran before reaping");
    }

    #[test]
    fn death_is_described_and_kill_after_reap_is_harmless() {
        let p = script("sleep", "exec sleep 60");
        let w = spawn_retry(&p, |_| {});
        w.handle.kill(Signal::SIGKILL);
        let status = w.handle.wait_reaped(Duration::from_secs(10)).unwrap();
        std::fs::remove_file(&p).unwrap();
        assert_eq!(describe_exit(&status), "killed by signal SIGKILL");
        // Reaped: kill is a no-op now (never a recycled pid).
        w.handle.kill(Signal::SIGKILL);
        assert!(w.handle.exit_status().is_some());
    }

    #[test]
    fn a_worker_that_exits_reports_it_dead_on_start() {
        let p = script("exit", "exit 7");
        let w = spawn_retry(&p, |_| {});
        let dev = std::fs::File::open("/dev/null").unwrap();
        let err = w
            .start(
                &WorkerRequest::Serve,
                dev.as_fd(),
                Duration::from_secs(10),
                &mut |_, _| {},
            )
            .unwrap_err();
        std::fs::remove_file(&p).unwrap();
        // The send may race the exit; either way the error says it died.
        assert!(
            err.to_string() == "worker died: exited with status 7",
            "{err}"
        );
    }

    #[test]
    fn a_silent_worker_times_out() {
        let p = script("silent", "exec sleep 60");
        let w = spawn_retry(&p, |_| {});
        let dev = std::fs::File::open("/dev/null").unwrap();
        let err = w
            .start(
                &WorkerRequest::Serve,
                dev.as_fd(),
                Duration::from_millis(200),
                &mut |_, _| {},
            )
            .unwrap_err();
        w.handle.kill_and_reap(Duration::from_secs(10)).unwrap();
        std::fs::remove_file(&p).unwrap();
        assert!(matches!(err, SuperviseError::Timeout(0, "probe")), "{err}");
    }
}
