//! The worker's lifecycle, driven by the broker over fd 3:
//!
//! 1. receive `Start` with the device fd; check the protocol version;
//! 2. enter the sandbox ([`crate::sandbox::enter`]);
//! 3. open the filesystem on the device; reply `Probed` (or `Refused`,
//!    then exit 1);
//! 4. receive `Serve` with the `/dev/fuse` fd the broker mounted; do the
//!    FUSE INIT handshake; reply `Serving`; hand the socket to the
//!    health thread ([`crate::health`]);
//! 5. serve with [`fuse_threads`] threads until the kernel ends the
//!    session (DESTROY on unmount, or ENODEV when the connection is
//!    aborted); exit 0.
//!
//! Every failure is one line on stderr (the broker's log) and, while the
//! socket is open, a `Refused { reason }` with the same line.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::process::ExitCode;
use std::sync::Arc;

use std::time::Duration;

use safemount_proto::{
    Atime, Errors, PROTOCOL_VERSION, ProbeReport, ProtoError, WorkerReply, WorkerRequest,
};

use crate::ext4::{AtimeUpdates, ErrorBehaviour, Ext4, MmpOptions, OpenOptions};
use crate::fuse::Adapter;
use crate::io::{FdDevice, Watched};
use crate::sandbox;

/// The broker's socket, by contract.
pub const BROKER_FD: i32 = 3;

/// FUSE request threads (all reading the one shared `/dev/fuse` fd): one
/// per CPU the worker may run on, at least 2 (a request waiting for the
/// device does not hold up cached ones) and at most 8 (mutations take the
/// one transaction lock: more threads only contend for it and for the
/// kernel's request queue). Read before the sandbox, which forbids
/// sched_getaffinity.
pub fn fuse_threads() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 8))
}

/// Why the worker stopped before serving; each is one log line.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("fd {BROKER_FD} is not an open socket (safemount-worker is started by safemountd)")]
    NoSocket,
    #[error("broker protocol: {0}")]
    Proto(#[from] ProtoError),
    #[error("broker sent {0} where {1} was expected")]
    Unexpected(&'static str, &'static str),
    #[error("protocol version mismatch: broker speaks {0}, worker speaks {PROTOCOL_VERSION}")]
    Version(u32),
    #[error(transparent)]
    Sandbox(#[from] sandbox::SandboxError),
    #[error("device: {0}")]
    Device(std::io::Error),
    #[error("{0}")]
    Filesystem(crate::ext4::error::Error),
    #[error("FUSE handshake failed: {0}")]
    Handshake(std::io::Error),
    #[error(
        "cannot set O_DIRECT on the device ({0}), which multi-mount protection needs on a block device: mount read-only"
    )]
    DirectIo(std::io::Error),
}

/// Exit code of a worker that aborted its mount (errors=panic).
pub const EXIT_ERRORS_PANIC: i32 = 4;

fn name(req: &WorkerRequest) -> &'static str {
    match req {
        WorkerRequest::Start { .. } => "Start",
        WorkerRequest::Serve => "Serve",
    }
}

/// Runs the whole lifecycle; the exit code of the worker.
pub fn run() -> ExitCode {
    let Some(sock) = sandbox::take_inherited_fd(BROKER_FD) else {
        tracing::error!("{}", ServeError::NoSocket);
        return ExitCode::FAILURE;
    };
    let serving = match start(sock.as_fd()) {
        Ok(Some(serving)) => serving,
        Ok(None) => return ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            // The socket may be gone already; a failed send changes nothing.
            let _ = safemount_proto::send(
                sock.as_fd(),
                &WorkerReply::Refused {
                    reason: e.to_string(),
                },
                &[],
            );
            return ExitCode::FAILURE;
        }
    };
    let Serving {
        session,
        fs,
        device,
        read_only,
    } = serving;
    crate::health::start(sock, fs, device, read_only);
    // 5. Until unmount: DESTROY or ENODEV end the session with Ok.
    match session.run() {
        Ok(()) => {
            tracing::info!("unmounted, exiting");
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!("FUSE session ended with an error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The two fds the broker sends, each checked for count by `recv`.
fn one_fd(mut fds: Vec<OwnedFd>) -> Result<OwnedFd, ServeError> {
    fds.pop().ok_or(ServeError::Proto(ProtoError::WrongFdCount {
        expected: 1,
        got: 0,
    }))
}

/// What step 4 leaves running.
struct Serving {
    session: fuser::Session<Adapter>,
    fs: Arc<Ext4>,
    device: Arc<Watched<FdDevice>>,
    /// Served read-only from the start.
    read_only: bool,
}

/// Steps 1 to 4; None if the broker cancelled before Serve.
fn start(sock: BorrowedFd<'_>) -> Result<Option<Serving>, ServeError> {
    // 1. Start.
    let (req, fds) = safemount_proto::recv::<WorkerRequest>(sock, 1)?;
    let WorkerRequest::Start {
        version,
        read_only,
        noload,
        uid,
        gid,
        source_name,
        errors,
        quota_limits,
        atime,
        nodiratime,
    } = req
    else {
        return Err(ServeError::Unexpected(name(&req), "Start"));
    };
    if version != PROTOCOL_VERSION {
        return Err(ServeError::Version(version));
    }
    let device = one_fd(fds)?;
    // Before the sandbox, which has no uname, fstat, BLKSSZGET or
    // sched_getaffinity: what multi-mount protection needs (this node's
    // name; O_DIRECT, aligned to the logical sector size, on a block
    // device), and the CPUs for the FUSE threads.
    let threads = fuse_threads();
    let node = nix::sys::utsname::uname()
        .map(|u| u.nodename().to_string_lossy().into_owned())
        .unwrap_or_default();
    let is_block_device =
        nix::sys::stat::fstat(&device).is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFBLK);
    let sector_size = is_block_device
        .then(|| rustix::fs::ioctl_blksszget(&device).ok())
        .flatten();

    // 2. Sandbox, before a single byte of the device is read.
    let keep = [libc::STDERR_FILENO, sock.as_raw_fd(), device.as_raw_fd()];
    let sandbox_report = sandbox::enter(&sandbox::Config {
        uid,
        gid,
        keep_fds: &keep,
    })?;
    tracing::info!(
        "{source_name:?}: sandboxed as {uid}:{gid}, landlock {}, seccomp on, namespaces on",
        sandbox_report.landlock
    );

    // 3. Probe.
    let device = Arc::new(Watched::new(
        FdDevice::new(device).map_err(ServeError::Device)?,
    ));
    if !read_only
        && is_block_device
        && crate::ext4::uses_mmp(&*device).map_err(ServeError::Filesystem)?
    {
        // The MMP block must reach other hosts at once, and it shares the
        // fd with everything else: all I/O goes direct from here on.
        device
            .inner()
            .enable_direct_io(sector_size)
            .map_err(ServeError::DirectIo)?;
        tracing::info!("{source_name:?}: multi-mount protection: direct I/O on");
    }
    let fs = open_telling_waits(
        sock,
        device.clone(),
        read_only,
        noload,
        errors,
        quota_limits,
        atime,
        nodiratime,
        node,
        &source_name,
    )?;
    let info = fs.info();
    let fs_read_only = info.read_only;
    tracing::info!(
        "{source_name:?}: {} {}, features: {}",
        info.fs_type,
        if fs_read_only {
            "read-only"
        } else {
            "read-write"
        },
        info.features.join(" ")
    );
    safemount_proto::send(
        sock,
        &WorkerReply::Probed(ProbeReport {
            label: info.label,
            uuid: info.uuid,
            fs_type: info.fs_type.to_owned(),
            features: info.features,
            read_only: fs_read_only,
            sandbox: sandbox_report,
        }),
        &[],
    )?;

    // 4. Serve.
    let (req, fds) = match safemount_proto::recv::<WorkerRequest>(sock, 1) {
        Ok(r) => r,
        Err(ProtoError::Closed) => {
            // The broker gave up on this mount (its own failure or the
            // user's choice): nothing was mounted, nothing to clean.
            tracing::info!("{source_name:?}: broker closed the connection before Serve");
            return Ok(None);
        }
        Err(e) => return Err(e.into()),
    };
    if !matches!(req, WorkerRequest::Serve) {
        return Err(ServeError::Unexpected(name(&req), "Serve"));
    }
    let fuse_fd = one_fd(fds)?;
    let mut config = fuser::Config::default();
    config.n_threads = Some(threads);
    // true would reopen /dev/fuse by path, which the sandbox forbids.
    config.clone_fd = false;
    config.acl = fuser::SessionACL::All;
    let fs = Arc::new(fs);
    fs.set_abort_hook(Box::new(|why| {
        tracing::error!("errors=panic: {why}; aborting the mount");
        std::process::exit(EXIT_ERRORS_PANIC);
    }));
    let adapter = Adapter::new(fs.clone(), fs_read_only);
    let notifier = adapter.notifier_slot();
    let session = fuser::Session::from_fd(adapter, fuse_fd, fuser::SessionACL::All, config)
        .map_err(ServeError::Handshake)?;
    let _ = notifier.set(session.notifier());
    safemount_proto::send(sock, &WorkerReply::Serving, &[])?;
    tracing::info!("{source_name:?}: serving with {threads} FUSE threads");
    Ok(Some(Serving {
        session,
        fs,
        device,
        read_only: fs_read_only,
    }))
}

/// Opens the filesystem; each wait of a multi-mount protection claim is
/// told to the broker (`Waiting`) by a helper thread while the open runs.
#[expect(
    clippy::too_many_arguments,
    reason = "the Start request's fields, passed on one by one to the open"
)]
fn open_telling_waits(
    sock: BorrowedFd<'_>,
    device: Arc<Watched<FdDevice>>,
    read_only: bool,
    noload: bool,
    errors: Option<Errors>,
    quota_limits: [bool; 3],
    atime: Atime,
    nodiratime: bool,
    node: String,
    source_name: &str,
) -> Result<Ext4, ServeError> {
    let (tx, rx) = std::sync::mpsc::channel::<(Duration, String)>();
    let opts = OpenOptions {
        read_only,
        errors: errors.map(|e| match e {
            Errors::Continue => ErrorBehaviour::Continue,
            Errors::RemountRo => ErrorBehaviour::RemountRo,
            Errors::Panic => ErrorBehaviour::Panic,
        }),
        quota_limits,
        atime: match atime {
            Atime::NoAtime => AtimeUpdates::Never,
            Atime::Relatime => AtimeUpdates::Relative,
            Atime::StrictAtime => AtimeUpdates::Always,
        },
        nodiratime,
        mmp: MmpOptions {
            node,
            device: source_name
                .rsplit('/')
                .next()
                .unwrap_or(source_name)
                .to_owned(),
            on_wait: Some(Arc::new(move |wait: Duration, why: &str| {
                let _ = tx.send((wait, why.to_owned()));
            })),
        },
    };
    std::thread::scope(|scope| {
        scope.spawn(move || {
            // Ends when the open drops the options (and the sender).
            for (wait, reason) in rx {
                let msg = WorkerReply::Waiting {
                    seconds: u32::try_from(wait.as_secs()).unwrap_or(u32::MAX),
                    reason,
                };
                if let Err(e) = safemount_proto::send(sock, &msg, &[]) {
                    tracing::warn!("cannot tell the broker about a wait: {e}");
                }
            }
        });
        if noload {
            Ext4::open_noload(device, opts)
        } else {
            Ext4::open(device, opts)
        }
        .map_err(ServeError::Filesystem)
    })
}
