//! The worker's health report: while serving, a thread tells the broker
//! (on the socket it started with) whenever the mount's health changes:
//! the mount turned read-only, or the device or the engine met an error
//! (`safemount list` shows it), or free space fell below [`LOW_SPACE`] or
//! rose above it again. The thread holds no lock that serving needs and
//! ends when the broker's end of the socket is gone.
//!
//! Why free space: under the writeback cache the kernel takes write(2)
//! into its page cache and the worker sees the data only at write-back,
//! so on a filesystem about to fill, write(2) succeeded for as much as the
//! kernel lets a FUSE mount hold dirty (1% of its dirty threshold: 48 MiB
//! on a 24 GiB machine) past the last free block, and that data was lost
//! at write-back (reported at fsync and close). While space is low the
//! broker caps the mount's dirty pages at a few MiB, so that write(2)
//! fails (see `fuse::no_space`) close to where ext4's would.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use safemount_proto::{ProtoError, WorkerReply};

use crate::ext4::Ext4;
use crate::io::{FdDevice, Watched};

/// How often the health is looked at (a change reaches `safemount list`
/// within this).
const POLL: Duration = Duration::from_millis(500);

/// Free space below which the mount counts as low on space: more than a
/// FUSE mount's dirty page limit on any machine up to about 250 GiB of
/// memory, so that the cap is in place before the last free block.
const LOW_SPACE: u64 = 512 << 20;

/// How far above [`LOW_SPACE`] free space must rise before the mount no
/// longer counts as low (so that a file rewritten at the threshold does
/// not flip it at every poll).
const LOW_SPACE_MARGIN: u64 = 64 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
struct Health {
    read_only: bool,
    error: Option<String>,
    low_space: bool,
}

/// The health now; `was_low`: whether space was low at the last look.
fn now(fs: &Ext4, dev: &Watched<FdDevice>, served_read_only: bool, was_low: bool) -> Health {
    let read_only = served_read_only || fs.is_read_only();
    let threshold = if was_low {
        LOW_SPACE + LOW_SPACE_MARGIN
    } else {
        LOW_SPACE
    };
    Health {
        read_only,
        // The engine's reason names what failed; the device's first
        // failure is the news when the engine carried on (a bad sector
        // read fails one file and the rest serves).
        error: fs.fault().or_else(|| dev.first_error()).map(str::to_owned),
        low_space: !read_only && fs.bytes_available(false) < threshold,
    }
}

/// Starts the reporting thread; it owns the broker socket from now on.
pub fn start(sock: OwnedFd, fs: Arc<Ext4>, dev: Arc<Watched<FdDevice>>, served_read_only: bool) {
    let spawned = std::thread::Builder::new()
        .name("health".into())
        .spawn(move || {
            // The broker assumes plenty of space until told: a mount that
            // starts low says so at the first look, which is at once.
            let mut told = Health {
                low_space: false,
                ..now(&fs, &dev, served_read_only, false)
            };
            loop {
                let health = now(&fs, &dev, served_read_only, told.low_space);
                if health != told {
                    let msg = WorkerReply::Health {
                        read_only: health.read_only,
                        error: health.error.clone(),
                        low_space: health.low_space,
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
                std::thread::sleep(POLL);
            }
        });
    if let Err(e) = spawned {
        tracing::warn!("no health thread ({e}): `safemount list` will not show errors");
    }
}
