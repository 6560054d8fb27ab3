//! safemountd: the privileged broker. Runs in the foreground, logs to
//! stderr.
//!
//! On SIGTERM or SIGINT it removes its socket, detaches every mount it
//! made (aborting the FUSE connections), kills its workers and exits 0:
//! nothing it mounted outlives it. (Adopting mounts across a broker restart
//! is a later issue; until then leaving them behind would leave them
//! unsupervised.)

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use nix::sys::signal::{SigSet, Signal};
use safemount_broker::{DEFAULT_SOCKET, DEFAULT_WORKER, mount, server, state, supervise};

#[derive(Debug, Parser)]
#[command(
    version,
    about = "safemount's privileged broker: mounts ext2/3/4 through a sandboxed worker"
)]
struct Args {
    /// Socket to listen on.
    #[arg(long, default_value = DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Worker binary to spawn for each mount.
    #[arg(long, default_value = DEFAULT_WORKER)]
    worker: PathBuf,
    /// Seconds a worker may take to probe the filesystem, and again to
    /// start serving, before it is killed and the mount undone.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    worker_timeout: u64,
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
    mount::ensure_fusectl();
    let listener = server::bind_socket(&args.socket)?;
    tracing::info!(socket = %args.socket.display(), worker = %args.worker.display(), "listening");

    let broker = Arc::new(server::Broker::new(
        state::State::new(),
        args.worker,
        identity,
        std::time::Duration::from_secs(args.worker_timeout),
    ));
    let on_signal = broker.clone();
    let socket_path = args.socket.clone();
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
            if let Err(e) = std::fs::remove_file(&socket_path) {
                tracing::warn!(error = %e, "cannot remove socket");
            }
            on_signal.shutdown();
            std::process::exit(0);
        })
        .context("cannot start signal thread")?;
    broker.serve(&listener);
    Ok(())
}
