//! The worker's health report: while serving, a thread tells the broker
//! (on the socket it started with) whenever the mount's health changes:
//! the mount turned read-only, or the device or the engine met an error.
//! `safemount list` shows it. The thread holds no lock that serving needs
//! and ends when the broker's end of the socket is gone.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use safemount_proto::{ProtoError, WorkerReply};

use crate::ext4::Ext4;
use crate::io::{FdDevice, Watched};

/// How often the health is looked at (a change reaches `safemount list`
/// within this).
const POLL: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, PartialEq, Eq)]
struct Health {
    read_only: bool,
    error: Option<String>,
}

fn now(fs: &Ext4, dev: &Watched<FdDevice>, served_read_only: bool) -> Health {
    Health {
        read_only: served_read_only || fs.is_read_only(),
        // The engine's reason names what failed; the device's first
        // failure is the news when the engine carried on (a bad sector
        // read fails one file and the rest serves).
        error: fs.fault().or_else(|| dev.first_error()).map(str::to_owned),
    }
}

/// Starts the reporting thread; it owns the broker socket from now on.
pub fn start(sock: OwnedFd, fs: Arc<Ext4>, dev: Arc<Watched<FdDevice>>, served_read_only: bool) {
    let spawned = std::thread::Builder::new()
        .name("health".into())
        .spawn(move || {
            let mut told = now(&fs, &dev, served_read_only);
            loop {
                std::thread::sleep(POLL);
                let health = now(&fs, &dev, served_read_only);
                if health == told {
                    continue;
                }
                let msg = WorkerReply::Health {
                    read_only: health.read_only,
                    error: health.error.clone(),
                };
                match safemount_proto::send(sock.as_fd(), &msg, &[]) {
                    Ok(()) => told = health,
                    Err(ProtoError::Closed) => return,
                    Err(e) => {
                        tracing::warn!("cannot report health to the broker: {e}");
                        return;
                    }
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!("no health thread ({e}): `safemount list` will not show errors");
    }
}
