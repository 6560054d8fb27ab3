//! safemount broker library: everything `safemountd` (the privileged
//! broker) and `safemount` (the client) do, behind thin binaries.
//!
//! Mount sequence (DESIGN.md "Mount, step by step"), one module per step:
//! [`server`] accepts a connection and reads the request, [`authorize`]
//! takes the caller from SO_PEERCRED and decides, [`device`] opens and
//! validates the source, [`supervise`] spawns the worker and talks to it,
//! [`mountpoint`] pins the target directory, [`mount`] builds options and
//! calls mount(2), [`state`] records what is mounted, and [`undo`] makes
//! every failure undo every earlier step in reverse.

pub mod activation;
pub mod authorize;
pub mod bdi;
pub mod cgroup;
pub mod client;
pub mod device;
pub mod fd_store;
pub mod limits;
pub mod lock;
pub mod mount;
pub mod mounted;
pub mod mountpoint;
pub mod polkit;
pub mod poweroff;
pub mod sanitize;
pub mod server;
pub mod state;
pub mod supervise;
pub mod undo;
pub mod worker_log;

/// Skips and test knobs, shared with every test crate (see the file).
#[cfg(test)]
#[path = "../../tests/src/skip.rs"]
pub(crate) mod test_skip;

/// Where `safemountd` listens unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/safemount/socket";

/// Where `safemountd` keeps its mount records unless told otherwise.
pub const DEFAULT_STATE_DIR: &str = "/run/safemount";

/// The worker binary `safemountd` spawns unless told otherwise.
pub const DEFAULT_WORKER: &str = "/usr/libexec/safemount/safemount-worker";

/// `wait` as a socket timeout (SO_RCVTIMEO, SO_SNDTIMEO): at least a
/// millisecond, since a zero timeout means "wait forever".
pub(crate) fn socket_timeout(wait: std::time::Duration) -> nix::sys::time::TimeVal {
    let micros = wait.as_micros().clamp(1000, i64::MAX as u128) as i64;
    nix::sys::time::TimeVal::new(micros / 1_000_000, micros % 1_000_000)
}
