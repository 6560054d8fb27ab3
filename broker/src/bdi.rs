//! A mount's backing device info (bdi) in sysfs, which the broker, root
//! and the maker of the mount, tunes for it: FUSE names a mount's bdi
//! after its device number, "major:minor".
//!
//! The read-ahead window. The kernel gives a FUSE mount's bdi the default
//! window of 128 KiB and, at INIT, keeps the smaller of that and what the
//! server asks, so sequential reads reach the worker as 128-256 KiB
//! requests, each a round trip, and the worker's device idles between
//! them. The broker widens the window to the largest request the worker
//! serves, once INIT is done. It matters most when the worker's reads are
//! direct (multi-mount protection): cold reads went from 0.58x to 1.09x of
//! the buffered mode; from an image file on a busy 2-core machine 514-685
//! MB/s became 1.1-1.3 GB/s, while on the idle machine the host's own
//! read-ahead kept up either way (1.3-1.5 GB/s).
//!
//! The dirty page limit. A FUSE mount may hold 1% of the kernel's dirty
//! threshold in written, not yet written back, pages (48 MiB on a 24 GiB
//! machine). ext4 reserves blocks at write(2); under the writeback cache
//! the worker sees the data only at write-back, so on a filesystem about
//! to fill write(2) went on succeeding for up to that much past the last
//! free block, and the data was lost at write-back (fsync and close
//! report it). While the worker reports low space it asks for a cap (a
//! sixteenth of the free space, within [`DIRTY_CAP_MIN`] and
//! [`DIRTY_CAP_MAX`], which the broker keeps to whatever it asks), and
//! write(2) fails close to where ext4's would: on a 64 MiB filesystem with
//! 50 MiB free, write(2) of 1 MiB chunks failed after 56 MiB instead of
//! 85 MiB.

use std::path::PathBuf;

use safemount_proto::{DIRTY_CAP_MAX, DIRTY_CAP_MIN};

/// The window, in KiB: the worker's max_readahead and largest READ.
pub const READ_AHEAD_KB: u32 = safemount_proto::FUSE_MAX_IO / 1024;

/// FUSE's own dirty limit, in percent of the dirty threshold
/// (fuse_bdi_init), which a mount gets back when space is no longer low.
const FUSE_MAX_RATIO: u32 = 1;

/// The sysfs file `attr` of the bdi of the mount with device number `dev`.
fn sysfs_file(dev: (u32, u32), attr: &str) -> PathBuf {
    PathBuf::from(format!("/sys/class/bdi/{}:{}/{attr}", dev.0, dev.1))
}

/// Sets the read-ahead window of the mount with device number `dev`.
pub fn widen_read_ahead(dev: (u32, u32)) -> std::io::Result<()> {
    std::fs::write(
        sysfs_file(dev, "read_ahead_kb"),
        format!("{READ_AHEAD_KB}\n"),
    )
}

/// Caps the dirty pages of the mount with device number `dev` at `cap`
/// bytes (kept within [`DIRTY_CAP_MIN`] and [`DIRTY_CAP_MAX`]: the worker
/// asks), or gives it FUSE's own limit back (None). (max_bytes is Linux
/// 6.2's; before it the write fails.)
pub fn limit_dirty(dev: (u32, u32), cap: Option<u64>) -> std::io::Result<()> {
    match cap {
        Some(bytes) => std::fs::write(
            sysfs_file(dev, "max_bytes"),
            format!("{}\n", bytes.clamp(DIRTY_CAP_MIN, DIRTY_CAP_MAX)),
        ),
        None => std::fs::write(sysfs_file(dev, "max_ratio"), format!("{FUSE_MAX_RATIO}\n")),
    }
}
