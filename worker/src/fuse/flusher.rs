//! The write-back thread of a read-write mount: every
//! [`WRITEBACK_INTERVAL`] it commits the engine's write-back set (a jbd2
//! transaction on a journaled filesystem), as the kernel's commit interval
//! and dirty_writeback do.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::ext4::Ext4;

/// How often the flusher thread writes committed metadata back.
pub(super) const WRITEBACK_INTERVAL: Duration = Duration::from_secs(5);
/// How often the flusher thread checks whether the mount is ending.
const WRITEBACK_TICK: Duration = Duration::from_millis(200);

/// Starts the periodic write-back thread (read-write mounts; after the
/// sandbox, which is in force before the FUSE session starts) until `stop`.
pub(super) fn start(fs: Arc<Ext4>, stop: Arc<AtomicBool>) {
    let spawned = std::thread::Builder::new()
        .name("writeback".into())
        .spawn(move || {
            let mut waited = Duration::ZERO;
            let mut failed = false;
            while !stop.load(Ordering::Acquire) {
                std::thread::sleep(WRITEBACK_TICK);
                waited = waited.saturating_add(WRITEBACK_TICK);
                if waited < WRITEBACK_INTERVAL {
                    continue;
                }
                waited = Duration::ZERO;
                if let Err(e) = fs.writeback() {
                    if !failed {
                        tracing::error!("periodic metadata write-back failed: {e}");
                    }
                    failed = true;
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(
            "no write-back thread ({e}): metadata reaches the device at fsync and unmount"
        );
    }
}
