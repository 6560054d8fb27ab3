//! safemountd: the privileged broker. Logs to stderr (journald keeps it).
//!
//! Two ways to run:
//! - socket activated by systemd (`LISTEN_FDS`): serves the socket systemd
//!   passed, tells systemd READY=1 once set up and STOPPING=1 when it stops.
//! - foreground (`--socket PATH`, the default when not activated): binds
//!   the socket itself.
//!
//! Every mount is recorded under `--state-dir` (default /run/safemount). At
//! startup the broker adopts the mounts a previous broker left whose worker
//! still runs, and cleans the others.
//!
//! On SIGTERM or SIGINT:
//! - managed (socket activated, or run with NOTIFY_SOCKET set, or with
//!   `--keep-mounts`): mounts stay, served by their workers, and the next
//!   broker adopts them; only mounts still being set up are undone. The
//!   unit needs `KillMode=process` for the workers to survive a stop.
//! - otherwise (foreground): removes its socket, detaches every mount it
//!   made (aborting the FUSE connections), kills its workers and exits 0:
//!   nothing it mounted outlives it.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use nix::sys::signal::{SigSet, Signal};
use safemount_broker::{
    DEFAULT_SOCKET, DEFAULT_STATE_DIR, DEFAULT_WORKER, activation, cgroup, fd_store,
    limits::{self, Limits},
    mount, server, state, supervise,
};

const LONG_ABOUT: &str = "\
safemount's privileged broker: mounts ext2/3/4 through a sandboxed worker.

Socket activated by systemd (LISTEN_FDS), it serves the socket it was \
given and reports READY=1 and STOPPING=1 (NOTIFY_SOCKET); otherwise it \
binds --socket itself. Mounts are recorded under --state-dir; a restarted \
broker adopts the mounts whose worker still runs and cleans the others.

On SIGTERM/SIGINT: under systemd, or with --keep-mounts, finished mounts \
stay (served by their workers, adopted by the next broker; the unit needs \
KillMode=process) and only mounts still being set up are undone. In the \
foreground it detaches every mount, kills its workers and exits 0.";

#[derive(Debug, Parser)]
#[command(
    version,
    about = "safemount's privileged broker: mounts ext2/3/4 through a sandboxed worker",
    long_about = LONG_ABOUT
)]
struct Args {
    /// Socket to listen on (ignored when systemd passes one).
    #[arg(long, default_value = DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Where mount records are kept (they let a restarted broker adopt
    /// its mounts). Default: /run/safemount when socket activated, else
    /// the directory holding --socket (so test brokers with their own
    /// sockets never share records). One broker per directory.
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Leave mounts in place on SIGTERM/SIGINT for the next broker to
    /// adopt (the default under systemd; without it a foreground broker
    /// unmounts everything when it stops).
    #[arg(long)]
    keep_mounts: bool,
    /// Worker binary to spawn for each mount.
    #[arg(long, default_value = DEFAULT_WORKER)]
    worker: PathBuf,
    /// Seconds a worker may take to probe the filesystem, and again to
    /// start serving, before it is killed and the mount undone.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    worker_timeout: u64,
    /// Open connections one non-root user may have at once (root has
    /// places of its own).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=224))]
    max_connections_per_user: u64,
    /// Seconds from connecting to the first request other than Hello.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=600))]
    first_request_timeout: u64,
    /// Mounts one non-root user may have at once.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..=4096))]
    max_mounts_per_user: u64,
    /// Memory (bytes) each worker's own cgroup may use.
    #[arg(long, default_value_t = 1 << 30, value_parser = clap::value_parser!(u64).range((16 << 20)..))]
    worker_memory_max: u64,
    /// cgroup v2: a directory delegated to the broker (memory and pids
    /// controllers available, no processes in it) where each worker gets
    /// a cgroup of its own. With cgroup v1 the broker needs none.
    #[arg(long)]
    worker_cgroup: Option<PathBuf>,
    /// Tasks (threads) each worker's own cgroup may hold.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(8..=4096))]
    worker_tasks_max: u64,
}

fn main() {
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SAFEMOUNT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    if let Err(e) = run(Args::parse()) {
        tracing::error!("{e:#}");
        eprintln!("safemountd: {e:#}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    // Block the shutdown signals before any thread exists, so every thread
    // inherits the mask and only the signal thread receives them. (std
    // resets the mask in spawned workers.)
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGTERM);
    signals.add(Signal::SIGINT);
    signals.thread_block().context("cannot block signals")?;

    if !nix::unistd::geteuid().is_root() {
        tracing::warn!("not running as root: mounts will fail");
    }
    let identity = supervise::resolve_worker_identity();
    tracing::info!(
        uid = identity.uid,
        gid = identity.gid,
        "workers run as {}",
        supervise::WORKER_USER
    );
    match limits::raise_open_files() {
        Ok((before, after)) if before != after => {
            tracing::info!(before, after, "open files limit raised");
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot raise the open files limit"),
    }
    mount::ensure_fusectl();
    let (stored, sockets): (Vec<_>, Vec<_>) = activation::passed_fds()
        .context("socket activation")?
        .into_iter()
        .partition(fd_store::is_stored);
    let passed = activation::listen_socket(sockets).context("socket activation")?;
    let activated = passed.is_some();
    let keep_mounts = args.keep_mounts || activation::under_systemd(activated);
    let listener = match passed {
        Some(fd) => {
            tracing::info!("using the socket systemd passed");
            fd
        }
        None => server::bind_socket(&args.socket)?,
    };

    let state_dir = match (&args.state_dir, activated) {
        (Some(dir), _) => dir.clone(),
        (None, true) => PathBuf::from(DEFAULT_STATE_DIR),
        (None, false) => args
            .socket
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map_or_else(|| PathBuf::from("."), |p| p.to_owned()),
    };
    let state = state::State::with_dir(&state_dir)?;
    let restore_state = state.clone();
    let restored = state.restore(fd_store::Stored::new(stored), move |id, why| {
        server::worker_gone(&restore_state, id, why, false)
    })?;
    if restored.adopted + restored.cleaned > 0 {
        tracing::info!(
            adopted = restored.adopted,
            cleaned = restored.cleaned,
            "mounts left by a previous broker"
        );
    }
    let mut broker = server::Broker::new(
        state,
        args.worker.clone(),
        identity,
        std::time::Duration::from_secs(args.worker_timeout),
    );
    broker.limits = Limits {
        connections_per_user: usize::try_from(args.max_connections_per_user)?,
        first_request_within: std::time::Duration::from_secs(args.first_request_timeout),
        mounts_per_user: usize::try_from(args.max_mounts_per_user)?,
    };
    let worker_limits = cgroup::WorkerLimits {
        memory_max: args.worker_memory_max,
        tasks_max: args.worker_tasks_max,
    };
    broker.cgroups =
        match cgroup::WorkerCgroups::discover(worker_limits, args.worker_cgroup.as_deref()) {
            Ok(c) => {
                c.sweep();
                tracing::info!(
                    memory_max = worker_limits.memory_max,
                    tasks_max = worker_limits.tasks_max,
                    "each worker gets a cgroup of its own"
                );
                Some(c)
            }
            Err(e) => {
                tracing::warn!("workers get no cgroup of their own: {e}");
                None
            }
        };
    let broker = Arc::new(broker);
    tracing::info!(
        socket = %if activated { "(from systemd)".into() } else { args.socket.display().to_string() },
        worker = %args.worker.display(),
        state_dir = %state_dir.display(),
        keep_mounts,
        "listening"
    );

    let on_signal = broker.clone();
    let socket_path = (!activated).then(|| args.socket.clone());
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let sig = loop {
                match signals.wait() {
                    Ok(sig) => break sig,
                    Err(e) => tracing::error!(error = %e, "sigwait failed"),
                }
            };
            tracing::info!(signal = sig.as_str(), "stopping");
            activation::notify_logged("STOPPING=1");
            // A socket systemd made is systemd's to remove.
            if let Some(path) = &socket_path
                && let Err(e) = std::fs::remove_file(path)
            {
                tracing::warn!(error = %e, "cannot remove socket");
            }
            if keep_mounts {
                on_signal.shutdown_keeping_mounts();
            } else {
                on_signal.shutdown();
            }
            std::process::exit(0);
        })
        .context("cannot start signal thread")?;
    activation::notify_logged("READY=1");
    broker.serve(&listener);
    Ok(())
}
