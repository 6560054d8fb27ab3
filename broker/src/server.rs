//! The broker's listening socket, its accept loop (one thread per
//! connection) and the requests: mount, unmount, list.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{OFlag, open};
use nix::sys::signal::Signal;
use nix::sys::socket::{
    AddressFamily, Backlog, SockFlag, SockType, UnixAddr, accept4, bind, listen, socket,
};
use nix::sys::stat::Mode;
use safemount_proto::{
    BrokerReply, ClientRequest, ErrorKind, MountSource, MountState, PROTOCOL_VERSION, ProtoError,
    WorkerRequest,
};

use crate::authorize::{self, Caller};
use crate::cgroup::WorkerCgroups;
use crate::device;
use crate::limits::{Connections, Limits};
use crate::lock;
use crate::mount;
use crate::mounted::{MountRef, MountRefError, UnmountError};
use crate::mountpoint;
use crate::sanitize;
use crate::state::{AfterExit, State};
use crate::supervise::{self, WorkerIdentity};
use crate::undo::Undo;

/// A request that failed: what the client is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub kind: ErrorKind,
    pub message: String,
}

impl Failure {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

macro_rules! failure_from {
    ($($t:ty),*) => {$(
        impl From<$t> for Failure {
            fn from(e: $t) -> Self {
                Self::new(e.kind(), e.to_string())
            }
        }
    )*};
}
failure_from!(
    mount::OptionsError,
    authorize::AuthError,
    device::DeviceError,
    mountpoint::MountpointError,
    supervise::SuperviseError,
    lock::LockError,
    crate::state::StateError,
    crate::poweroff::PowerOffError
);

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot create socket directory {path}: {error}")]
    Dir { path: String, error: std::io::Error },
    #[error("another safemountd is listening on {0}")]
    InUse(String),
    #[error("{0} exists and is not a socket; refusing to replace it")]
    NotASocket(String),
    #[error("cannot remove or replace socket {path}: {error}")]
    Unlink { path: String, error: std::io::Error },
    #[error("cannot set up socket {path}: {errno}")]
    Socket { path: String, errno: Errno },
    #[error("cannot set socket permissions on {path}: {error}")]
    Chmod { path: String, error: std::io::Error },
}

/// Numbers the placeholder mount points of automatic mounts in setup.
static PENDING: AtomicU64 = AtomicU64::new(1);

/// How long unmount waits for a worker to exit before SIGKILL.
const UNMOUNT_GRACE: Duration = Duration::from_secs(10);
/// How long to wait for the reaper after SIGKILL.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// Everything a connection thread needs.
#[derive(Debug)]
pub struct Broker {
    pub state: Arc<State>,
    pub worker_path: PathBuf,
    pub identity: WorkerIdentity,
    /// How long a worker may take to probe, and to start serving.
    pub worker_timeout: Duration,
    /// Open client connections (each has a thread), by uid.
    connections: Connections,
    /// What one user may take.
    pub limits: Limits,
    /// Where each worker gets a cgroup of its own (None: nowhere).
    pub cgroups: Option<WorkerCgroups>,
    /// Root, or polkit.
    pub authorizer: authorize::Authorizer,
}

/// A connection that sends nothing for this long after its first real
/// request is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Creates the parent directory (0755) if needed, replaces a stale socket,
/// binds a SOCK_SEQPACKET socket, makes it 0666 (anyone may connect;
/// authorization is per request) and listens.
pub fn bind_socket(path: &Path) -> Result<OwnedFd, ServerError> {
    let shown = sanitize::display(path.as_os_str().as_encoded_bytes());
    if let Some(parent) = path.parent()
        && !parent.as_os_str().is_empty()
        && !parent.exists()
    {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(parent)
            .map_err(|error| ServerError::Dir {
                path: sanitize::display(parent.as_os_str().as_encoded_bytes()),
                error,
            })?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if socket_is_live(path) {
                return Err(ServerError::InUse(shown));
            }
            std::fs::remove_file(path).map_err(|error| ServerError::Unlink {
                path: shown.clone(),
                error,
            })?;
        }
        Ok(_) => return Err(ServerError::NotASocket(shown)),
        Err(_) => {}
    }
    let sock_err = |errno| ServerError::Socket {
        path: shown.clone(),
        errno,
    };
    let sock = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(sock_err)?;
    // Bind under a temporary name and rename into place once listening, so
    // the socket appears only when connections are accepted.
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    let addr = UnixAddr::new(&tmp).map_err(sock_err)?;
    bind(sock.as_raw_fd(), &addr).map_err(sock_err)?;
    let placed = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o666))
        .map_err(|error| ServerError::Chmod {
            path: shown.clone(),
            error,
        })
        .and_then(|()| {
            listen(&sock, Backlog::new(64).unwrap_or(Backlog::MAXCONN)).map_err(sock_err)
        })
        .and_then(|()| {
            std::fs::rename(&tmp, path).map_err(|error| ServerError::Unlink {
                path: shown.clone(),
                error,
            })
        });
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(sock)
}

/// True if something accepts connections on the socket at `path`.
fn socket_is_live(path: &Path) -> bool {
    let Ok(sock) = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    ) else {
        return false;
    };
    let Ok(addr) = UnixAddr::new(path) else {
        return false;
    };
    nix::sys::socket::connect(sock.as_raw_fd(), &addr).is_ok()
}

impl Broker {
    pub fn new(
        state: Arc<State>,
        worker_path: PathBuf,
        identity: WorkerIdentity,
        worker_timeout: Duration,
    ) -> Self {
        Self {
            state,
            worker_path,
            identity,
            worker_timeout,
            connections: Connections::default(),
            limits: Limits::default(),
            cgroups: None,
            authorizer: authorize::Authorizer::default(),
        }
    }

    /// Accepts connections forever, one thread each.
    pub fn serve(self: &Arc<Self>, listener: &OwnedFd) {
        loop {
            let conn = match accept4(listener.as_raw_fd(), SockFlag::SOCK_CLOEXEC) {
                // SAFETY: accept4 just returned this new fd; we own it.
                Ok(fd) => unsafe { OwnedFd::from_raw_fd(fd) },
                Err(Errno::EINTR | Errno::ECONNABORTED) => continue,
                Err(e) => {
                    tracing::error!(error = %e, "accept failed");
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
            };
            let broker = self.clone();
            if let Err(e) = std::thread::Builder::new()
                .name("connection".into())
                .spawn(move || broker.connection(conn))
            {
                tracing::error!(error = %e, "cannot start connection thread");
            }
        }
    }

    /// Serves one client connection until it closes.
    pub fn connection(&self, conn: OwnedFd) {
        let caller = match authorize::peer(&conn) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read peer credentials; dropping connection");
                return;
            }
        };
        let span = tracing::info_span!("conn", uid = caller.uid, pid = caller.pid);
        let _enter = span.enter();
        let _slot = match self
            .connections
            .admit(caller.uid, self.limits.connections_per_user)
        {
            Ok(slot) => slot,
            Err(refused) => {
                tracing::warn!("refusing a connection: {refused}");
                reply_error(conn.as_fd(), ErrorKind::Busy, &refused.to_string());
                return;
            }
        };
        // Until the first real request only a short wait is allowed (a
        // Hello does not count); after it, the idle timeout.
        let first_request_by = Instant::now() + self.limits.first_request_within;
        let mut served = false;
        let mut greeted = false;
        loop {
            let wait = if served {
                IDLE_TIMEOUT
            } else {
                first_request_by.saturating_duration_since(Instant::now())
            };
            if wait.is_zero() || !set_receive_timeout(conn.as_fd(), wait) {
                tracing::info!("no request in time; connection closed");
                return;
            }
            let (request, fds) = match safemount_proto::recv_upto::<ClientRequest>(conn.as_fd(), 1)
            {
                Ok(r) => r,
                Err(ProtoError::Closed) => return,
                Err(ProtoError::Io(Errno::EAGAIN)) => {
                    tracing::info!("no request in time; connection closed");
                    return;
                }
                Err(ProtoError::Io(e)) => {
                    tracing::debug!(error = %e, "connection error");
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "bad message from client");
                    if reply_error(conn.as_fd(), ErrorKind::InvalidRequest, &e.to_string()) {
                        continue;
                    }
                    return;
                }
            };
            served |= !matches!(request, ClientRequest::Hello { .. });
            let reply = match request {
                ClientRequest::Hello { version } => {
                    if !fds.is_empty() {
                        error_reply(
                            ErrorKind::InvalidRequest,
                            "Hello carries no file descriptor",
                        )
                    } else if version != PROTOCOL_VERSION {
                        let _ = send_reply(
                            conn.as_fd(),
                            &error_reply(
                                ErrorKind::InvalidRequest,
                                &ProtoError::Version {
                                    peer: version,
                                    ours: PROTOCOL_VERSION,
                                }
                                .to_string(),
                            ),
                        );
                        return;
                    } else {
                        greeted = true;
                        BrokerReply::Hello {
                            version: PROTOCOL_VERSION,
                        }
                    }
                }
                _ if !greeted => {
                    let _ = send_reply(
                        conn.as_fd(),
                        &error_reply(ErrorKind::InvalidRequest, "the first message must be Hello"),
                    );
                    return;
                }
                ClientRequest::Mount {
                    source,
                    mountpoint,
                    options,
                } => match self.mount(
                    &caller,
                    None,
                    source,
                    mountpoint,
                    &options,
                    fds,
                    Some(conn.as_fd()),
                ) {
                    Ok(reply) => reply,
                    Err(f) => {
                        tracing::warn!(kind = ?f.kind, "mount failed: {}", f.message);
                        error_reply(f.kind, &f.message)
                    }
                },
                ClientRequest::MountFor {
                    uid,
                    source,
                    mountpoint,
                    options,
                } => match self.mount(
                    &caller,
                    Some(uid),
                    source,
                    mountpoint,
                    &options,
                    fds,
                    Some(conn.as_fd()),
                ) {
                    Ok(reply) => reply,
                    Err(f) => {
                        tracing::warn!(kind = ?f.kind, "mount for uid {uid} failed: {}", f.message);
                        error_reply(f.kind, &f.message)
                    }
                },
                ClientRequest::Unmount { mountpoint } => {
                    if !fds.is_empty() {
                        error_reply(
                            ErrorKind::InvalidRequest,
                            "Unmount carries no file descriptor",
                        )
                    } else {
                        match self.unmount(&caller, &mountpoint) {
                            Ok(()) => BrokerReply::Unmounted,
                            Err(f) => {
                                tracing::warn!(kind = ?f.kind, "unmount failed: {}", f.message);
                                error_reply(f.kind, &f.message)
                            }
                        }
                    }
                }
                ClientRequest::UnmountPowerOff { mountpoint } => {
                    if !fds.is_empty() {
                        error_reply(
                            ErrorKind::InvalidRequest,
                            "UnmountPowerOff carries no file descriptor",
                        )
                    } else {
                        match self.unmount_power_off(&caller, &mountpoint) {
                            Ok(reply) => reply,
                            Err(f) => {
                                tracing::warn!(kind = ?f.kind, "unmount and power off failed: {}", f.message);
                                error_reply(f.kind, &f.message)
                            }
                        }
                    }
                }
                ClientRequest::List => {
                    if !fds.is_empty() {
                        error_reply(ErrorKind::InvalidRequest, "List carries no file descriptor")
                    } else {
                        // Ask polkit only when there is something to hide.
                        let sees_all = caller.is_root()
                            || (self.state.has_others(caller.uid)
                                && self.authorizer.sees_all(&caller));
                        match self.list_in_parts(conn.as_fd(), &caller, sees_all) {
                            Some(reply) => reply,
                            None => return,
                        }
                    }
                }
            };
            if !send_reply(conn.as_fd(), &reply) {
                return;
            }
        }
    }

    /// Sends every part of the list but the last (each one message) and
    /// returns the reply that ends it. None if the client is gone.
    fn list_in_parts(
        &self,
        conn: BorrowedFd<'_>,
        caller: &Caller,
        sees_all: bool,
    ) -> Option<BrokerReply> {
        let mounts = self.state.list(caller, sees_all);
        let mut parts = match safemount_proto::split_to_fit(mounts) {
            Ok(parts) => parts,
            Err(e) => {
                tracing::error!(error = %e, "cannot encode the mount list");
                return Some(error_reply(
                    ErrorKind::Internal,
                    "cannot encode the mount list",
                ));
            }
        };
        let last = parts.pop().unwrap_or_default();
        for part in parts {
            if !send_reply(conn, &BrokerReply::MountsPart(part)) {
                return None;
            }
        }
        Some(BrokerReply::Mounts(last))
    }

    /// The mount sequence. Every step that changes something pushes its
    /// undo; any error returns early and the undo stack runs in reverse.
    /// `for_uid`: mount on behalf of that user (root callers only): the
    /// mount is owned by, and its files belong to, that user.
    #[expect(
        clippy::too_many_arguments,
        reason = "the parts of one request, each used once"
    )]
    pub fn mount(
        &self,
        caller: &Caller,
        for_uid: Option<u32>,
        source: MountSource,
        mountpoint: Option<PathBuf>,
        options: &str,
        mut fds: Vec<OwnedFd>,
        client: Option<BorrowedFd<'_>>,
    ) -> Result<BrokerReply, Failure> {
        // The fd count must match the message before anything else.
        let image_fd = match (&source, fds.len()) {
            (MountSource::Device(_), 0) => None,
            (MountSource::Fd { .. }, 1) => fds.pop(),
            (MountSource::Device(_), n) => {
                return Err(Failure::new(
                    ErrorKind::InvalidRequest,
                    format!("a device mount carries no file descriptor, got {n}"),
                ));
            }
            (MountSource::Fd { .. }, n) => {
                return Err(Failure::new(
                    ErrorKind::InvalidRequest,
                    format!("an image mount carries exactly 1 file descriptor, got {n}"),
                ));
            }
        };
        let (action, authorized_dev) =
            authorize::mount_action(&source, image_fd.as_ref().map(|f| f.as_fd()));
        self.authorizer.check(caller, action)?;
        let owner = owner_of(caller, for_uid)?;
        let opts = mount::parse_options(options)?;
        // A named mount point is pinned now; an automatic one is made once
        // the worker has reported the label.
        let named_target = match &mountpoint {
            Some(p) => Some(mountpoint::pin_for(p, caller.uid)?),
            None => None,
        };
        let broker_opened = matches!(source, MountSource::Device(_));
        let mut source = match (source, image_fd) {
            (MountSource::Device(path), _) => device::open_device(&path, opts.read_only)?,
            (MountSource::Fd { display_name }, Some(fd)) => {
                device::accept_fd(fd, &display_name, opts.read_only)?
            }
            (MountSource::Fd { .. }, None) => {
                return Err(Failure::new(ErrorKind::Internal, "image fd lost"));
            }
        };
        authorize::same_device(source.fd.as_fd(), authorized_dev, &source.name)?;
        let mut read_only = source.read_only;
        // Images (and block devices the client opened) are locked; a
        // device the broker opened has O_EXCL instead. The lock lives in
        // the reaper's closure: released once the worker is gone.
        let (image, image_lock) = if broker_opened {
            (None, None)
        } else {
            let key = lock::image_key(source.fd.as_fd()).ok();
            if let Some(key) = key {
                self.wait_for_unmounted_holders(key);
            }
            let (fd, l) = lock::lock_image(source.fd, &source.name, read_only, opts.locking)?;
            source.fd = fd;
            (key, Some(Arc::new(l)))
        };
        let shown_target = named_target.as_ref().map_or_else(
            || format!("{}/<automatic>", mountpoint::MEDIA_ROOT),
            |t| t.path().display().to_string(),
        );
        tracing::info!(
            source = %source.name,
            mountpoint = %shown_target,
            read_only,
            errors = opts.errors.map_or("default", |e| e.as_str()),
            "mount requested"
        );

        let mut undo = Undo::new();
        let reserved_path = match &named_target {
            Some(t) => t.path().to_owned(),
            // A placeholder no real mount point can equal, unique per
            // request, until the automatic mount point exists.
            None => PathBuf::from(format!(
                "{}/(pending {})",
                mountpoint::MEDIA_ROOT,
                PENDING.fetch_add(1, Ordering::SeqCst)
            )),
        };
        let id = self.state.reserve(
            source.name.clone(),
            reserved_path,
            owner.uid,
            read_only,
            self.limits.mounts_per_user,
        )?;
        let state = self.state.clone();
        undo.push("forget mount", move || state.remove(id));
        if let Some(dev) = &source.device {
            self.state.set_source_dev(id, (dev.major, dev.minor));
        }
        if let Some(key) = image {
            self.state.set_image(id, key);
        }

        let state = self.state.clone();
        let held = image_lock.clone();
        let cgroup = Arc::new(std::sync::Mutex::new(None));
        let worker_cgroup = cgroup.clone();
        let cgroups = self.cgroups.clone();
        let worker = supervise::spawn(&self.worker_path, &source.name, move |status| {
            // The worker is dead: nothing writes the image any more. Its
            // lock goes first, so that a mount waiting for this worker
            // (wait_for_unmounted_holders) never finds the entry gone
            // and the image still locked.
            drop(held);
            on_worker_exit(&state, id, status);
            // The worker has exited: its cgroup can go.
            drop(worker_cgroup.lock().map(|mut c| c.take()));
            if let Some(c) = cgroups {
                c.sweep();
            }
        })?;
        let handle = worker.handle.clone();
        undo.push("stop worker", move || {
            handle.kill_and_reap(KILL_WAIT);
        });
        if let Some(cgroups) = &self.cgroups {
            // Before the worker reads a byte: it is waiting for Start.
            let placed = cgroups.place(worker.pid()).map_err(|e| {
                Failure::new(
                    ErrorKind::Internal,
                    format!("cannot put the worker in its cgroup: {e}"),
                )
            })?;
            if let Ok(mut slot) = cgroup.lock() {
                *slot = Some(placed);
            }
        }
        self.state.set_worker(id, worker.handle.clone());
        tracing::info!(pid = worker.pid(), "worker started");

        let report = worker.start(
            &WorkerRequest::Start {
                version: PROTOCOL_VERSION,
                read_only,
                noload: opts.noload,
                uid: self.identity.uid,
                gid: self.identity.gid,
                source_name: source.name.clone(),
                errors: opts.errors,
                quota_limits: opts.quota_limits,
                atime: opts.atime,
                nodiratime: opts.nodiratime,
            },
            source.fd.as_fd(),
            self.worker_timeout,
            &mut |seconds, reason| {
                // The client shows it; a client that is gone is found out
                // after the probe.
                if let Some(c) = client {
                    let _ = send_reply(
                        c,
                        &BrokerReply::Waiting {
                            seconds,
                            reason: reason.to_owned(),
                        },
                    );
                }
            },
        )?;
        client_still_there(client)?;
        let label = sanitize::display(&report.label);
        let fs_type = sanitize::display(report.fs_type.as_bytes());
        let features: Vec<String> = report
            .features
            .iter()
            .take(64)
            .map(|f| sanitize::display(f.as_bytes()))
            .collect();
        tracing::info!(
            %label,
            %fs_type,
            features = %features.join(","),
            landlock = %sanitize::display(report.sandbox.landlock.as_bytes()),
            seccomp = report.sandbox.seccomp,
            namespaces = report.sandbox.namespaces,
            "worker probed the filesystem"
        );
        if !report.sandbox.seccomp || !report.sandbox.namespaces {
            tracing::warn!("worker sandbox is not fully enforced");
        }
        if report.read_only && !read_only {
            tracing::warn!("worker serves reads only; mounting read-only");
            read_only = true;
        }
        self.state.set_probed(id, label.clone(), read_only);
        let target = match named_target {
            Some(t) => t,
            None => {
                let name = mountpoint::label_name(&report.label, &report.uuid, &source.name);
                let (pinned, created) =
                    mountpoint::create_auto(Path::new(mountpoint::MEDIA_ROOT), owner, &name)?;
                let state = self.state.clone();
                undo.push("remove mount point", move || {
                    // The record first (see worker_gone); "forget mount"
                    // then finds nothing left to do.
                    state.remove(id);
                    if let Err(e) = created.remove() {
                        tracing::warn!(error = %e, mountpoint = %created.path().display(), "cannot remove mount point");
                    }
                });
                self.state.set_mountpoint(id, pinned.path().to_owned())?;
                pinned
            }
        };

        let fuse =
            open("/dev/fuse", OFlag::O_RDWR | OFlag::O_CLOEXEC, Mode::empty()).map_err(|e| {
                Failure::new(ErrorKind::Internal, format!("cannot open /dev/fuse: {e}"))
            })?;
        let detached = mount::create_fuse(
            &source.name,
            fuse.as_fd(),
            opts.flags(read_only),
            owner.uid,
            owner.gid,
        )
        .map_err(|e| Failure::new(ErrorKind::Internal, format!("mount failed: {e}")))?;
        let identity = crate::mounted::identity(detached.as_fd()).map_err(|e| {
            Failure::new(
                ErrorKind::Internal,
                format!("cannot identify the new mount: {e}"),
            )
        })?;
        self.state.set_pending_mount(id, identity);
        mount::attach(detached.as_fd(), target.fd())
            .map_err(|e| Failure::new(ErrorKind::Internal, format!("mount failed: {e}")))?;
        drop(detached);
        let mounted_at = target.path().to_owned();
        // From here on the mount is known by its identity, never by path.
        let mounted = MountRef::after_mount(target.fd(), mount::FSTYPE).map_err(|e| {
            tracing::error!(error = %e, mountpoint = %mounted_at.display(), "cannot identify the new mount; it is left to its (killed) worker");
            Failure::new(
                ErrorKind::Internal,
                format!("cannot identify the new mount: {e}"),
            )
        })?;
        let mounted = Arc::new(mounted);
        let dev = mounted.dev();
        self.state.set_mounted(id, mounted.clone());
        undo.push("detach mount", move || {
            if let Err(e) = mounted.detach() {
                tracing::error!(error = %e, mount = %mounted, "cannot detach mount");
            }
        });

        worker.serve(fuse.as_fd(), self.worker_timeout)?;
        // After INIT, which would narrow the window again.
        if let Err(e) = crate::bdi::widen_read_ahead(dev) {
            tracing::warn!(error = %e, "cannot widen the mount's read-ahead; sequential reads will be slower");
        }
        // The worker holds the device and /dev/fuse now; the broker keeps
        // no fd into the filesystem.
        drop(fuse);
        drop(source);
        drop(target);
        if let Some(l) = image_lock {
            // posix locking: closing the broker's copy dropped the lock.
            l.after_close();
        }
        client_still_there(client)?;
        self.state.mark_mounted(id)?;
        undo.commit();
        tracing::info!(mountpoint = %mounted_at.display(), pid = worker.pid(), "mounted");
        worker.keep_channels(id);
        worker.watch_health(self.state.health_handler(id, dev));
        Ok(BrokerReply::Mounted {
            mountpoint: mounted_at,
            label,
        })
    }

    /// Unmounts `path` (as recorded at mount time; never resolved through
    /// the filesystem, which would block on a hung worker).
    pub fn unmount(&self, caller: &Caller, path: &Path) -> Result<(), Failure> {
        let others_allowed = self.may_unmount_others(caller, path)?;
        self.unmount_checked(caller, path, others_allowed)
    }

    /// Whether `caller` unmounts another user's mount at `path` with
    /// polkit's permission (asked outside the state lock, and only then);
    /// an error if polkit says no.
    fn may_unmount_others(&self, caller: &Caller, path: &Path) -> Result<bool, Failure> {
        match self.state.owner_of(path) {
            Some(owner) if owner != caller.uid => {
                let shown = sanitize::display(path.as_os_str().as_encoded_bytes());
                self.authorizer.unmount(caller, owner, &shown)?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// `unmount --power-off`: the drive under the mount is checked first
    /// (no other partition mounted or held, not the system disk; a user
    /// may power off removable drives only), then the mount goes as for
    /// [`Self::unmount`], then the drive is flushed and powered off (see
    /// [`crate::poweroff`]).
    pub fn unmount_power_off(&self, caller: &Caller, path: &Path) -> Result<BrokerReply, Failure> {
        let shown = sanitize::display(path.as_os_str().as_encoded_bytes());
        if self.state.owner_of(path).is_none() {
            return Err(crate::state::StateError::NotMounted(shown).into());
        }
        let others_allowed = self.may_unmount_others(caller, path)?;
        let (dev, others) = self.state.source_devs(path);
        let dev = dev.ok_or_else(|| crate::poweroff::PowerOffError::NotADrive(shown.clone()))?;
        let paths = device::SysPaths::default();
        let drive = crate::poweroff::drive_of(&paths, dev, &shown)?;
        if !caller.is_root() && !device::is_removable(&drive.disk) {
            return Err(Failure::new(
                ErrorKind::NotAuthorized,
                format!(
                    "not authorized: only root may power off {}, which is not removable",
                    drive.shown()
                ),
            ));
        }
        let mounts = mountpoint::read_mountinfo().map_err(|e| {
            Failure::new(
                ErrorKind::Internal,
                format!("cannot read /proc/self/mountinfo: {e}"),
            )
        })?;
        crate::poweroff::check_idle(&paths, &drive, &mounts, &others)?;
        self.unmount_checked(caller, path, others_allowed)?;
        crate::poweroff::flush(&drive)?;
        let powered_off = crate::poweroff::power_off(&drive)?;
        tracing::info!(drive = %drive.shown(), powered_off, "drive flushed after unmount");
        Ok(BrokerReply::PoweredOff {
            drive: drive.shown(),
            powered_off,
        })
    }

    /// [`Self::unmount`] once authorized.
    fn unmount_checked(
        &self,
        caller: &Caller,
        path: &Path,
        others_allowed: bool,
    ) -> Result<(), Failure> {
        let crate::state::Unmounting { id, worker, mount } =
            self.state.begin_unmount(path, caller, others_allowed)?;
        let unmounted = match &mount {
            Some(m) => m.unmount(),
            None => Err(MountRefError::Gone.into()),
        };
        match unmounted {
            Ok(()) => {}
            // Already gone (someone unmounted it behind our back): go on
            // and stop the worker.
            Err(UnmountError::Identity(MountRefError::Gone)) => {
                tracing::warn!(mountpoint = %path.display(), "mount already gone");
            }
            Err(UnmountError::Umount(Errno::EBUSY)) => {
                self.state.abort_unmount(id);
                return Err(Failure::new(ErrorKind::Busy, "target is busy"));
            }
            Err(e) => {
                self.state.abort_unmount(id);
                return Err(Failure::new(
                    ErrorKind::Internal,
                    format!("cannot unmount {}: {e}", path.display()),
                ));
            }
        }
        if let Some(worker) = worker {
            if worker.wait_reaped(UNMOUNT_GRACE).is_none() {
                tracing::warn!(
                    pid = worker.pid(),
                    "worker did not exit after unmount; killing it"
                );
                worker.kill_and_reap(KILL_WAIT);
            }
        } else {
            self.state.remove(id);
        }
        tracing::info!(mountpoint = %path.display(), "unmounted");
        Ok(())
    }

    /// Waits (at most UNMOUNT_GRACE each) for the workers of image `key`
    /// whose mounts are gone. umount(8) returns once the kernel has
    /// detached a FUSE mount, before its worker has written the image
    /// clean and exited (the kernel does not wait for a FUSE server);
    /// until then the image is locked, and a mount of it right after the
    /// umount would be refused as in use. A holder still mounted, or
    /// still being set up, is in use: refused at once, as before.
    fn wait_for_unmounted_holders(&self, key: (u64, u64)) {
        for (mount, worker) in self.state.holders_of(key) {
            if mount.is_some_and(|m| !m.is_mounted()) {
                tracing::info!(
                    pid = worker.pid(),
                    "waiting for the image's last worker to finish"
                );
                if worker.wait_reaped(UNMOUNT_GRACE).is_none() {
                    tracing::warn!(
                        pid = worker.pid(),
                        "the image's last worker is still running"
                    );
                }
            }
        }
    }

    /// SIGTERM/SIGINT: refuse new mounts, detach every mount, kill every
    /// worker, wait (bounded) for them to be reaped.
    pub fn shutdown(&self) {
        let all = self.state.begin_shutdown();
        tracing::info!(mounts = all.len(), "shutting down: detaching every mount");
        for t in &all {
            if t.state != MountState::Starting
                && let Some(m) = &t.mount
                && let Err(e) = m.detach()
            {
                tracing::warn!(error = %e, mountpoint = %t.mountpoint.display(), "detach failed");
            }
            if let Some(w) = &t.worker {
                w.kill(Signal::SIGKILL);
            }
        }
        for t in &all {
            if let Some(w) = &t.worker {
                w.wait_reaped(KILL_WAIT);
            }
        }
        // Setups in flight undo themselves once their worker is gone; give
        // them a moment.
        for _ in 0..50 {
            if self.state.is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Whom a mount belongs to: the caller, or (root callers only) the user
/// `for_uid` with that user's primary group.
fn owner_of(caller: &Caller, for_uid: Option<u32>) -> Result<crate::mountpoint::Owner, Failure> {
    let Some(uid) = for_uid else {
        return Ok(crate::mountpoint::Owner {
            uid: caller.uid,
            gid: caller.gid,
        });
    };
    if !caller.is_root() {
        return Err(Failure::new(
            ErrorKind::NotAuthorized,
            "not authorized: only root may mount on behalf of another user",
        ));
    }
    match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) {
        Ok(Some(u)) => Ok(crate::mountpoint::Owner {
            uid,
            gid: u.gid.as_raw(),
        }),
        Ok(None) => Err(Failure::new(
            ErrorKind::NotFound,
            format!("no user with uid {uid}"),
        )),
        Err(e) => Err(Failure::new(
            ErrorKind::Internal,
            format!("cannot look up uid {uid}: {e}"),
        )),
    }
}

impl Broker {
    /// SIGTERM/SIGINT when mounts are to outlive the broker (under
    /// systemd): refuse new mounts, undo the mounts still being set up
    /// (their workers are killed, so each setup undoes itself), and leave
    /// every finished mount to its worker and its record, for the next
    /// broker to adopt.
    pub fn shutdown_keeping_mounts(&self) {
        let all = self.state.begin_shutdown();
        let starting: Vec<_> = all
            .iter()
            .filter(|t| t.state == MountState::Starting)
            .collect();
        tracing::info!(
            kept = all.len() - starting.len(),
            undone = starting.len(),
            "shutting down: keeping mounts for the next broker"
        );
        for t in &starting {
            if let Some(w) = &t.worker {
                w.kill(Signal::SIGKILL);
            }
        }
        for _ in 0..50 {
            if self.state.starting_count() == 0 {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Runs on a worker's reaper thread when the worker has exited: if the
/// mount is still there, abort its FUSE connection and detach it, then
/// forget it and log why.
fn on_worker_exit(state: &State, id: u64, status: &nix::sys::wait::WaitStatus) {
    let clean = matches!(status, nix::sys::wait::WaitStatus::Exited(_, 0));
    worker_gone(state, id, &supervise::describe_exit(status), clean);
}

/// What [`on_worker_exit`] does, for any worker (also one adopted from a
/// previous broker, whose exit status nobody can know): `why` says how it
/// ended, and `exited_cleanly` whether it exited with status 0 (unknown,
/// so false, for an adopted worker).
pub fn worker_gone(state: &State, id: u64, why: &str, exited_cleanly: bool) {
    match state.worker_exited(id) {
        AfterExit::SetupCleansUp => {
            tracing::info!(id, "worker {why} during setup");
        }
        AfterExit::Nothing => {}
        AfterExit::Detach {
            mountpoint,
            mount,
            state: mstate,
            source,
        } => {
            let detached = match &mount {
                Some(m) => m.detach(),
                None => Err(MountRefError::Gone.into()),
            };
            match detached {
                Ok(()) => {
                    tracing::warn!(%source, mountpoint = %mountpoint.display(), "worker {why}; mount detached");
                }
                Err(UnmountError::Identity(MountRefError::Gone))
                    if mstate == MountState::Unmounting =>
                {
                    tracing::info!(%source, mountpoint = %mountpoint.display(), "worker {why} after unmount");
                }
                // The owner ran `umount` or `fusermount3 -u` (util-linux
                // allows it for a FUSE mount whose user_id= is theirs; a
                // file manager's "unmount" does that): the kernel ended
                // the session, the worker flushed and exited. Clean up as
                // for `safemount unmount`.
                Err(UnmountError::Identity(MountRefError::Gone)) if exited_cleanly => {
                    tracing::info!(%source, mountpoint = %mountpoint.display(), "unmounted outside safemount (umount or fusermount3 -u); worker {why}");
                }
                Err(UnmountError::Identity(MountRefError::Gone)) => {
                    tracing::warn!(%source, mountpoint = %mountpoint.display(), "worker {why}; mount was already gone");
                }
                Err(e) => {
                    tracing::error!(error = %e, %source, mountpoint = %mountpoint.display(), "worker {why}; cannot detach mount");
                }
            }
            // Forget the record before the directory goes: once the
            // directory is gone, a new mount may create the same name, and
            // the record must not still claim it.
            state.remove(id);
            mountpoint::remove_auto_dir(&mountpoint);
        }
    }
}

/// SO_RCVTIMEO: a receive waiting longer fails with EAGAIN. False (and
/// logged) if it cannot be set: the connection is then closed.
fn set_receive_timeout(conn: BorrowedFd<'_>, wait: Duration) -> bool {
    let tv = crate::socket_timeout(wait);
    match nix::sys::socket::setsockopt(&conn, nix::sys::socket::sockopt::ReceiveTimeout, &tv) {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(error = %e, "cannot set connection timeout");
            false
        }
    }
}

/// An error reply: one line, no control characters.
fn error_reply(kind: ErrorKind, message: &str) -> BrokerReply {
    BrokerReply::Error {
        kind,
        message: sanitize::display(message.as_bytes()),
    }
}

/// Sends a reply; false if the client is gone.
fn send_reply(conn: BorrowedFd<'_>, reply: &BrokerReply) -> bool {
    match safemount_proto::send(conn, reply, &[]) {
        Ok(()) => true,
        Err(e) => {
            tracing::debug!(error = %e, "cannot send reply");
            false
        }
    }
}

fn reply_error(conn: BorrowedFd<'_>, kind: ErrorKind, message: &str) -> bool {
    send_reply(conn, &error_reply(kind, message))
}

/// Fails if the client has hung up: a mount nobody will hear about is
/// undone rather than left behind. Checked after the worker has probed and
/// just before the mount is committed.
fn client_still_there(client: Option<BorrowedFd<'_>>) -> Result<(), Failure> {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let Some(fd) = client else {
        return Ok(());
    };
    // No events asked for: POLLHUP and POLLERR are always reported, and a
    // unix SOCK_SEQPACKET socket whose peer closed says POLLHUP. (Asking
    // for POLLRDHUP would not help: nix drops revents it has no flag for.)
    let mut fds = [PollFd::new(fd, PollFlags::empty())];
    match poll(&mut fds, PollTimeout::ZERO) {
        Ok(n)
            if n > 0
                && fds[0]
                    .revents()
                    .is_some_and(|r| r.intersects(PollFlags::POLLHUP | PollFlags::POLLERR)) =>
        {
            Err(Failure::new(
                ErrorKind::Internal,
                "the client disconnected during the mount; undone",
            ))
        }
        _ => Ok(()),
    }
}
