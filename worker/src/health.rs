//! The worker's health report: while serving, a thread tells the broker
//! (on the socket it started with) whenever the mount's health changes:
//! the mount turned read-only, or the device or the engine met an error
//! (`safemount list` shows it), or free space fell low enough to change
//! the mount's dirty page cap ([`dirty_cap`]). The thread holds no lock
//! that serving needs and ends when the broker's end of the socket is
//! gone.
//!
//! Why free space: under the writeback cache the kernel takes write(2)
//! into its page cache and the worker sees the data only at write-back,
//! so on a filesystem about to fill, write(2) succeeded for as much as the
//! kernel lets a FUSE mount hold dirty (1% of its dirty threshold: 48 MiB
//! on a 24 GiB machine) past the last free block, and that data was lost
//! at write-back (reported at fsync and close). While space is low the
//! broker caps the mount's dirty pages at a sixteenth of the free space
//! (32 MiB down to 2 MiB), so that write(2) fails (see `fuse::no_space`)
//! close to where ext4's would, and writes slow down only near the end
//! (a 1 GiB write ran at about 670 MB/s under a 16 MiB cap and 210 MB/s
//! under 2 MiB, against 810 MB/s uncapped).

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use safemount_proto::{DIRTY_CAP_MAX, DIRTY_CAP_MIN, ProtoError, WorkerReply};

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
    dirty_cap: Option<u64>,
}

/// The dirty page cap for `free` bytes free: None while space is not low
/// (`was_low`: it was at the last look), else a sixteenth of it, a power
/// of two within the caps the broker grants.
fn dirty_cap(free: u64, was_low: bool) -> Option<u64> {
    let threshold = if was_low {
        LOW_SPACE + LOW_SPACE_MARGIN
    } else {
        LOW_SPACE
    };
    if free >= threshold {
        return None;
    }
    let share = (free / 16).max(1);
    let power = 1u64 << share.ilog2();
    Some(power.clamp(DIRTY_CAP_MIN, DIRTY_CAP_MAX))
}

/// The health now; `was_low`: whether space was low at the last look.
fn now(fs: &Ext4, dev: &Watched<FdDevice>, served_read_only: bool, was_low: bool) -> Health {
    let read_only = served_read_only || fs.is_read_only();
    Health {
        read_only,
        // The engine's reason names what failed; the device's first
        // failure is the news when the engine carried on (a bad sector
        // read fails one file and the rest serves).
        error: fs.fault().or_else(|| dev.first_error()).map(str::to_owned),
        dirty_cap: if read_only {
            None
        } else {
            dirty_cap(fs.bytes_available(false), was_low)
        },
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
                dirty_cap: None,
                ..now(&fs, &dev, served_read_only, false)
            };
            loop {
                let health = now(&fs, &dev, served_read_only, told.dirty_cap.is_some());
                if health != told {
                    let msg = WorkerReply::Health {
                        read_only: health.read_only,
                        error: health.error.clone(),
                        dirty_cap: health.dirty_cap,
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

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn the_cap_shrinks_with_the_free_space() {
        assert_eq!(dirty_cap(10 << 30, false), None);
        assert_eq!(dirty_cap(LOW_SPACE, false), None);
        assert_eq!(dirty_cap(LOW_SPACE - 1, false), Some(16 * MIB));
        assert_eq!(dirty_cap(300 * MIB, false), Some(16 * MIB));
        assert_eq!(dirty_cap(100 * MIB, false), Some(4 * MIB));
        assert_eq!(dirty_cap(40 * MIB, false), Some(2 * MIB));
        assert_eq!(dirty_cap(0, false), Some(DIRTY_CAP_MIN));
        // Once low, it stays low up to the margin.
        assert_eq!(dirty_cap(LOW_SPACE + MIB, true), Some(DIRTY_CAP_MAX));
        assert_eq!(dirty_cap(LOW_SPACE + LOW_SPACE_MARGIN, true), None);
    }
}
