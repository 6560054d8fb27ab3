//! What an error met while serving does to the mount, as the kernel's
//! ext4_handle_error and the `errors=` mount option define it:
//!
//! - corruption (`Error::Corrupt`) is recorded in the superblock (error
//!   state, s_error_count, first and last error time, inode, block,
//!   function, code), then `errors=` decides: continue (the object that
//!   met it fails, the rest serves), remount-ro (every later write fails
//!   with EROFS, reads go on) or panic (the mount is aborted: the worker's
//!   abort hook exits, the broker cleans up);
//! - a failed device write or flush always turns the mount read-only and
//!   makes every later fsync fail (what was written may be lost);
//! - an MMP conflict (another node wrote the MMP block) fences the mount:
//!   nothing more is written, not even the error record or a clean
//!   superblock at unmount, since another node now owns the disk.
//!
//! [`Faults`] is shared with the MMP thread, which has no `Ext4`.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use super::ondisk::superblock as sbf;
use super::txn::now;
use super::{Error, Ext4, Ino};

/// The `errors=` behaviour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorBehaviour {
    Continue,
    RemountRo,
    Panic,
}

/// s_errors values (EXT4_ERRORS_*).
const EXT4_ERRORS_CONTINUE: u16 = 1;
const EXT4_ERRORS_PANIC: u16 = 3;

/// Error codes of s_first/last_error_errcode (EXT4_ERR_*).
pub(crate) const EXT4_ERR_EFSCORRUPTED: u8 = 5;

impl ErrorBehaviour {
    /// The superblock's default, read as the kernel reads it: continue and
    /// panic by name, anything else remount-ro.
    pub(crate) fn from_superblock(s_errors: u16) -> ErrorBehaviour {
        match s_errors {
            EXT4_ERRORS_CONTINUE => ErrorBehaviour::Continue,
            EXT4_ERRORS_PANIC => ErrorBehaviour::Panic,
            _ => ErrorBehaviour::RemountRo,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorBehaviour::Continue => "continue",
            ErrorBehaviour::RemountRo => "remount-ro",
            ErrorBehaviour::Panic => "panic",
        }
    }
}

/// Called once, with the reason, when errors=panic aborts the mount.
pub type AbortHook = Box<dyn Fn(&str) + Send + Sync>;

/// A mount's fault state.
pub(crate) struct Faults {
    behaviour: ErrorBehaviour,
    /// Writes are refused from now on.
    read_only: AtomicBool,
    /// An error was seen: the superblock is left marked with errors.
    errors: AtomicBool,
    /// A device write or flush failed: every later fsync fails with EIO.
    write_lost: AtomicBool,
    /// Another node owns the filesystem now: nothing more is written.
    fenced: AtomicBool,
    /// The first error, one line (`safemount list`).
    first: OnceLock<String>,
    abort: OnceLock<AbortHook>,
}

impl Faults {
    pub(crate) fn new(behaviour: ErrorBehaviour) -> Faults {
        Faults {
            behaviour,
            read_only: AtomicBool::new(false),
            errors: AtomicBool::new(false),
            write_lost: AtomicBool::new(false),
            fenced: AtomicBool::new(false),
            first: OnceLock::new(),
            abort: OnceLock::new(),
        }
    }

    pub(crate) fn behaviour(&self) -> ErrorBehaviour {
        self.behaviour
    }

    pub(crate) fn is_read_only(&self) -> bool {
        self.read_only.load(Ordering::Acquire)
    }

    /// Read-only without an error (a mount that starts read-only because
    /// it cannot be written safely; the reason was logged).
    pub(crate) fn set_read_only(&self) {
        self.read_only.store(true, Ordering::Release);
    }

    /// Read-only from now on; true if it already was.
    pub(crate) fn swap_read_only(&self) -> bool {
        self.read_only.swap(true, Ordering::AcqRel)
    }

    pub(crate) fn has_errors(&self) -> bool {
        self.errors.load(Ordering::Acquire)
    }

    pub(crate) fn write_lost(&self) -> bool {
        self.write_lost.load(Ordering::Acquire)
    }

    pub(crate) fn is_fenced(&self) -> bool {
        self.fenced.load(Ordering::Acquire)
    }

    pub(crate) fn first(&self) -> Option<&str> {
        self.first.get().map(String::as_str)
    }

    pub(crate) fn set_abort_hook(&self, hook: AbortHook) {
        let _ = self.abort.set(hook);
    }

    fn note(&self, why: &str) {
        let _ = self.first.set(why.to_owned());
        self.errors.store(true, Ordering::Release);
    }

    /// A device write or flush failed.
    pub(crate) fn write_failed(&self, why: String) {
        self.write_lost.store(true, Ordering::Release);
        self.turn_read_only(why);
    }

    /// Read-only from now on, with the error recorded.
    pub(crate) fn turn_read_only(&self, why: String) {
        tracing::error!("{why}: the filesystem is now read-only");
        self.note(&why);
        self.read_only.store(true, Ordering::Release);
    }

    /// An error under `errors=`: continue, turn read-only, or abort.
    pub(crate) fn error(&self, why: String) {
        match self.behaviour {
            ErrorBehaviour::Continue => {
                tracing::error!("{why} (errors=continue)");
                self.note(&why);
            }
            ErrorBehaviour::RemountRo => self.turn_read_only(why),
            ErrorBehaviour::Panic => self.panic(why),
        }
    }

    /// Another node wrote the MMP block: stop writing at once; errors=panic
    /// aborts the mount.
    pub(crate) fn fence(&self, why: String) {
        self.fenced.store(true, Ordering::Release);
        if self.behaviour == ErrorBehaviour::Panic {
            self.panic(why);
        } else {
            self.turn_read_only(why);
        }
    }

    fn panic(&self, why: String) {
        self.turn_read_only(format!("{why} (errors=panic)"));
        match self.abort.get() {
            Some(hook) => hook(&why),
            None => tracing::error!("errors=panic: no abort hook; serving read-only"),
        }
    }
}

/// A function name for the superblock's 32-byte error fields.
fn func_name(func: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (o, b) in out.iter_mut().zip(func.bytes().take(31)) {
        *o = b;
    }
    out
}

impl Ext4 {
    /// Corruption met by `func` on inode `ino` (ext4_error): recorded in
    /// the superblock, then what `errors=` says. Other errors are not
    /// filesystem errors and are ignored here.
    pub(crate) fn fs_error(&self, func: &str, ino: Ino, e: &Error) {
        let Error::Corrupt { block, .. } = e else {
            return;
        };
        self.record_error(func, ino, *block, EXT4_ERR_EFSCORRUPTED);
        self.rw.faults.error(format!("{func} of inode {ino}: {e}"));
    }

    /// save_error_info: the error fields of the live superblock, written
    /// at once on a read-write mount (never on a read-only or fenced one;
    /// the fields then go out with the next superblock write, if any).
    fn record_error(&self, func: &str, ino: Ino, block: u64, code: u8) {
        let mut live = self.rw.live_sb();
        let t = now().secs;
        let s = &mut live.sb;
        s.s_state |= sbf::STATE_ERROR_FS;
        s.s_error_count = s.s_error_count.saturating_add(1);
        // Ino is the on-disk u32: it goes into s_*_error_ino as it is.
        if s.s_first_error_time == 0 {
            s.s_first_error_time = t;
            s.s_first_error_ino = ino;
            s.s_first_error_block = block;
            s.s_first_error_func = func_name(func);
            s.s_first_error_line = 0;
            s.s_first_error_errcode = code;
        }
        s.s_last_error_time = t;
        s.s_last_error_ino = ino;
        s.s_last_error_block = block;
        s.s_last_error_func = func_name(func);
        s.s_last_error_line = 0;
        s.s_last_error_errcode = code;
        if self.read_only || self.rw.faults.is_fenced() || self.rw.faults.write_lost() {
            return;
        }
        // A failed write is handled (and logged) by write_super.
        let _ = self.write_super(&mut live);
    }

    /// Sets what errors=panic calls to abort the mount (the worker exits).
    pub fn set_abort_hook(&self, hook: AbortHook) {
        self.rw.faults.set_abort_hook(hook);
    }

    /// The errors= behaviour in force.
    pub fn error_behaviour(&self) -> ErrorBehaviour {
        self.rw.faults.behaviour()
    }
}
