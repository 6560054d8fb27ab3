//! The engine's one error type. The FUSE adapter maps it to an errno
//! (`fuse::errno`); the engine itself knows nothing of libc.

use std::borrow::Cow;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no such file or directory")]
    NotFound,
    #[error("not a directory")]
    NotDir,
    #[error("is a directory")]
    IsDir,
    #[error("directory not empty")]
    NotEmpty,
    #[error("file exists")]
    Exists,
    #[error("no space left on device")]
    NoSpace,
    /// A write or size change past the largest file size (EFBIG).
    #[error("file too large")]
    FileTooBig,
    #[error("file name too long")]
    NameTooLong,
    #[error("no such extended attribute")]
    NoAttribute,
    #[error("too many links")]
    TooManyLinks,
    #[error("operation not permitted")]
    NotPermitted,
    /// EACCES: e.g. a default ACL on a non-directory.
    #[error("permission denied")]
    AccessDenied,
    /// ERANGE: an attribute name too long.
    #[error("result out of range")]
    Range,
    /// E2BIG: an attribute value too large.
    #[error("argument list too long")]
    TooBig,
    #[error("invalid argument: {0}")]
    Invalid(&'static str),
    #[error("read-only filesystem")]
    ReadOnly,
    /// ENOKEY: the operation needs an encryption key this engine never has.
    #[error("required key not available")]
    NoKey,
    /// EDQUOT: a quota limit refuses the allocation.
    #[error("disk quota exceeded")]
    QuotaExceeded,
    #[error("not supported: {0}")]
    Unsupported(Cow<'static, str>),
    #[error("I/O error at byte {offset}: {source}")]
    Io {
        offset: u64,
        #[source]
        source: std::io::Error,
    },
    /// Valid but not mountable by this engine (unknown INCOMPAT feature, ...).
    #[error("{0}")]
    Incompatible(String),
    /// Metadata failed a check. `what` names the structure (and inode, when
    /// there is one); `block` is where it was read from, 0 when the fault
    /// is not in one block (block 0 never holds metadata a check reads:
    /// it is the boot block, or the superblock's, which names itself).
    #[error("corrupt {what}{}", at_block(*.block))]
    Corrupt { what: Cow<'static, str>, block: u64 },
    /// A verity file's data or Merkle tree block does not match its
    /// hashes (EIO, as fs-verity answers; not a filesystem error).
    #[error("{0}")]
    Verity(String),
    /// lseek SEEK_DATA/SEEK_HOLE at or past the end of the file, or no
    /// data after the offset (ENXIO).
    #[error("no data or hole at or after the requested offset")]
    Nxio,
    /// fsync after a device write or flush failed (EIO).
    #[error(
        "an earlier write to the device failed; data written since the last successful sync may be lost"
    )]
    WriteLost,
    #[error(
        "the journal still needs recovery after replay (it changed while being replayed, or its log is not empty); mount read-only with -o noload to look"
    )]
    NeedsRecovery,
}

/// " (block N)", or nothing for block 0.
fn at_block(block: u64) -> String {
    if block == 0 {
        String::new()
    } else {
        format!(" (block {block})")
    }
}

impl Error {
    pub fn corrupt(what: impl Into<Cow<'static, str>>, block: u64) -> Self {
        Error::Corrupt {
            what: what.into(),
            block,
        }
    }
}
