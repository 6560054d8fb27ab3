//! What the three programs say to each other.
//!
//! Everything a worker sends is derived from a hostile disk: the broker
//! treats every string in [`WorkerReply`] as untrusted (length, charset).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Client -> broker. The caller's identity never travels in a message: the
/// broker takes it from SO_PEERCRED.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientRequest {
    /// First message on every connection.
    Hello {
        version: u32,
    },
    /// Mount a device or image. With [`MountSource::Fd`] the image fd is
    /// attached to this message.
    Mount {
        source: MountSource,
        /// None: the broker picks `/run/media/$USER/<label>`.
        mountpoint: Option<PathBuf>,
        /// The `-o` string exactly as the user gave it.
        options: String,
    },
    Unmount {
        mountpoint: PathBuf,
    },
    List,
    /// Like [`ClientRequest::Mount`], but for the user `uid` rather than
    /// the caller: the mount is owned by `uid`, its files belong to `uid`
    /// and an automatic mount point goes under `uid`'s `/run/media` dir.
    /// Only root may send it (`safemount-auto` mounting a newly plugged
    /// disk for the user of the active seat). A separate variant, appended
    /// last, so every older message keeps its encoding.
    MountFor {
        uid: u32,
        source: MountSource,
        mountpoint: Option<PathBuf>,
        options: String,
    },
    /// `safemount unmount --power-off`: unmount, then flush and power off
    /// the drive the mount's block device is on, refused (before anything
    /// is unmounted) while another partition of it is mounted or held.
    /// Appended last, like [`ClientRequest::MountFor`].
    UnmountPowerOff {
        mountpoint: PathBuf,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MountSource {
    /// A block device path, opened by the broker.
    Device(PathBuf),
    /// An image the client opened itself; the fd rides along. The name is
    /// only for display and logs, and only where the broker cannot confirm
    /// the file's own path.
    Fd { display_name: String },
}

/// Broker -> client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum BrokerReply {
    Hello {
        version: u32,
    },
    Mounted {
        mountpoint: PathBuf,
        label: String,
    },
    Unmounted,
    Mounts(Vec<MountInfo>),
    Error {
        kind: ErrorKind,
        message: String,
    },
    /// The answer to [`ClientRequest::UnmountPowerOff`]: unmounted and
    /// flushed; `powered_off` false when the drive has no way to be
    /// powered off (no USB or SCSI device to remove), so it was left in
    /// place. Appended last.
    PoweredOff {
        drive: String,
        powered_off: bool,
    },
    /// Before the answer to a mount: it waits `seconds` (multi-mount
    /// protection); `reason` is one line to show. More replies follow.
    Waiting {
        seconds: u32,
        reason: String,
    },
    /// Part of the answer to [`ClientRequest::List`] when it does not fit
    /// one message; more parts follow, and [`BrokerReply::Mounts`] holds
    /// the last. Appended last (protocol 6).
    MountsPart(Vec<MountInfo>),
}

/// Coarse error classes, so the client can pick an exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorKind {
    /// The request itself is malformed or names something invalid.
    InvalidRequest,
    NotAuthorized,
    /// Device or image busy, locked, or already mounted.
    Busy,
    /// The filesystem was refused (corrupt, unsupported feature, journal
    /// needs recovery, ...).
    Refused,
    NotFound,
    /// Anything else that went wrong inside the broker.
    Internal,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountInfo {
    /// Device path or image display name.
    pub source: String,
    pub mountpoint: PathBuf,
    pub owner_uid: u32,
    pub label: String,
    pub read_only: bool,
    pub state: MountState,
    pub worker_pid: i32,
    /// The first error the worker reported while serving (a device
    /// failure, a lost write, corruption met on a write path).
    pub error: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MountState {
    Starting,
    Mounted,
    Unmounting,
}

/// Broker -> worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WorkerRequest {
    /// First message; the device fd is attached. The worker sandboxes
    /// itself (dropping to `uid`/`gid`) before it reads the device.
    Start {
        version: u32,
        read_only: bool,
        /// `-o noload`: do not replay the journal (read-only only).
        noload: bool,
        uid: u32,
        gid: u32,
        /// Device path or image name, for log lines and the MMP block.
        source_name: String,
        /// `errors=`; None: the superblock's own behaviour.
        errors: Option<Errors>,
        /// Quota limits enforced (usrquota, grpquota, prjquota), by type.
        quota_limits: [bool; 3],
        /// Which reads move access times.
        atime: Atime,
        /// `nodiratime`: listing a directory leaves its atime alone.
        nodiratime: bool,
    },
    /// The filesystem is mounted; the `/dev/fuse` fd is attached.
    Serve,
}

/// The atime mount options: which reads move a file's access time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Atime {
    /// `noatime`: none.
    NoAtime,
    /// `relatime`, the kernel's default: the first read after a change,
    /// and a read a day after the last one.
    Relatime,
    /// `strictatime`: every read.
    StrictAtime,
}

/// `errors=`: what a filesystem error met while serving does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Errors {
    /// The object that met it fails; the rest serves.
    Continue,
    /// Every later write fails with EROFS; reads go on.
    RemountRo,
    /// The worker aborts the mount and exits.
    Panic,
}

impl Errors {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Continue => "continue",
            Self::RemountRo => "remount-ro",
            Self::Panic => "panic",
        }
    }
}

/// Worker -> broker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WorkerReply {
    /// The filesystem can be mounted as asked.
    Probed(ProbeReport),
    /// The filesystem cannot be mounted; `reason` is one line.
    Refused { reason: String },
    /// The FUSE INIT handshake is done; requests are being served.
    Serving,
    /// While serving, whenever it changes: whether the mount now serves
    /// reads only, the first error met (one line), and, while space is
    /// low, how much unwritten data the kernel may hold for the mount
    /// (bytes, between DIRTY_CAP_MIN and DIRTY_CAP_MAX; None: the
    /// kernel's own limit).
    Health {
        read_only: bool,
        error: Option<String>,
        dirty_cap: Option<u64>,
    },
    /// Before `Probed`: the worker waits `seconds` before it can answer
    /// (multi-mount protection); `reason` is one line for the user.
    Waiting { seconds: u32, reason: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeReport {
    /// Volume label, raw from the superblock (up to 16 bytes, any bytes).
    pub label: Vec<u8>,
    /// Filesystem UUID, raw.
    pub uuid: [u8; 16],
    /// "ext2", "ext3" or "ext4".
    pub fs_type: String,
    /// Feature names, for logs.
    pub features: Vec<String>,
    /// True if the worker will only serve reads (asked, or forced by an
    /// RO_COMPAT feature it cannot write).
    pub read_only: bool,
    /// What the sandbox managed to enforce.
    pub sandbox: SandboxReport,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxReport {
    /// "full", "partial" or "not enforced", with the Landlock ABI.
    pub landlock: String,
    pub seccomp: bool,
    pub namespaces: bool,
}
