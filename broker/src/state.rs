//! What this broker has mounted, in memory and (with a state directory)
//! on disk, so a restarted broker can adopt its mounts.
//!
//! Each mount has a record `<state-dir>/mounts/<id>.json`, written
//! atomically (temp file + rename) whenever the mount changes and removed
//! when it is gone. It names the worker by pid *and* start time (field 22
//! of /proc/PID/stat), so a recycled pid is never mistaken for it, and the
//! mount by mount point, st_dev and mount id. At startup
//! [`State::restore`] reads every record: a mounted entry whose worker is
//! alive (same start time) and whose mount is still in
//! /proc/self/mountinfo is adopted; anything else is cleaned (worker
//! killed, FUSE connection aborted, mount detached, record removed). An
//! adopted worker is not our child: it is watched through a pidfd (poll
//! says readable when it exits) and cleaned up as for a child; init reaps
//! it.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use nix::errno::Errno;
use nix::sys::signal::Signal;
use safemount_proto::{ErrorKind, MountInfo, MountState};
use serde::{Deserialize, Serialize};

use crate::authorize::{AuthError, Caller};
use crate::fd_store::{Channels, Stored};
use crate::mounted::{MountRef, MountRefError};
use crate::supervise::{HealthReport, Worker, WorkerHandle};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StateError {
    #[error("{0} is already in use by another safemount mount")]
    MountpointTaken(String),
    #[error("{0} is not mounted by safemount")]
    NotMounted(String),
    #[error("{0} is still being set up or unmounted")]
    InTransition(String),
    #[error("the broker is shutting down")]
    ShuttingDown,
    #[error("worker exited during setup")]
    WorkerExited,
    #[error("uid {uid} already has {max} mounts, the most allowed")]
    TooManyMounts { uid: u32, max: usize },
    #[error(transparent)]
    Auth(#[from] AuthError),
}

impl StateError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::MountpointTaken(_) | Self::InTransition(_) | Self::TooManyMounts { .. } => {
                ErrorKind::Busy
            }
            Self::NotMounted(_) => ErrorKind::NotFound,
            Self::ShuttingDown | Self::WorkerExited => ErrorKind::Internal,
            Self::Auth(e) => e.kind(),
        }
    }
}

/// A mount's source block device (major, minor) and its mount point.
pub type DevMount = ((u32, u32), PathBuf);

/// One mount (or mount being set up).
#[derive(Debug)]
pub struct Entry {
    pub id: u64,
    pub source: String,
    pub mountpoint: PathBuf,
    pub owner_uid: u32,
    pub label: String,
    pub read_only: bool,
    pub state: MountState,
    pub worker: Option<Arc<WorkerHandle>>,
    /// The mount, once made: the only handle to unmount or detach it.
    pub mount: Option<Arc<MountRef>>,
    /// The identity of the mount being made, recorded before it is
    /// attached (a restarted broker finds it by this if setup never
    /// finished).
    pub pending_mount: Option<crate::mounted::MountOf>,
    /// The reaper saw the worker exit.
    pub worker_exited: bool,
    /// The worker's start time (field 22 of /proc/PID/stat).
    pub worker_start_time: u64,
    /// The first error the worker reported while serving (sanitized).
    pub error: Option<String>,
    /// For a block device source: its device number (for power-off).
    pub source_dev: Option<(u32, u32)>,
    /// For a locked image: its (st_dev, st_ino) (see lock::image_key).
    pub image: Option<(u64, u64)>,
}

impl Entry {
    fn info(&self) -> MountInfo {
        MountInfo {
            source: self.source.clone(),
            mountpoint: self.mountpoint.clone(),
            owner_uid: self.owner_uid,
            label: self.label.clone(),
            read_only: self.read_only,
            state: self.state,
            worker_pid: self.worker.as_ref().map_or(0, |w| w.pid()),
            error: self.error.clone(),
        }
    }
}

/// What the reaper should do once a worker has exited.
#[derive(Debug, Clone)]
pub enum AfterExit {
    /// Setup is still running and its undo stack cleans up.
    SetupCleansUp,
    /// The entry is gone already.
    Nothing,
    /// Detach this mount (if still there) and remove the entry.
    Detach {
        mountpoint: PathBuf,
        mount: Option<Arc<MountRef>>,
        state: MountState,
        source: String,
    },
}

/// A mount whose unmount has begun.
#[derive(Debug)]
pub struct Unmounting {
    pub id: u64,
    pub worker: Option<Arc<WorkerHandle>>,
    pub mount: Option<Arc<MountRef>>,
}

/// A mount to tear down at shutdown.
#[derive(Debug)]
pub struct Teardown {
    pub id: u64,
    pub mountpoint: PathBuf,
    pub mount: Option<Arc<MountRef>>,
    pub state: MountState,
    pub worker: Option<Arc<WorkerHandle>>,
}

#[derive(Debug, Default)]
struct Inner {
    entries: Vec<Entry>,
    next_id: u64,
    shutting_down: bool,
}

#[derive(Debug, Default)]
pub struct State {
    inner: Mutex<Inner>,
    /// `<state-dir>/mounts`, where records are kept; None: memory only.
    records: Option<PathBuf>,
    /// Held while a record is built and written, or removed: writers
    /// share its temp file, and a record built earlier must not land
    /// after (or without) a later change, or after the removal.
    record_writes: Mutex<()>,
    /// Exclusive lock on `<state-dir>/state.lock`, held while we live.
    _lock: Option<nix::fcntl::Flock<std::fs::File>>,
}

/// A mount as recorded on disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub id: u64,
    pub source: String,
    pub mountpoint: PathBuf,
    pub owner_uid: u32,
    pub label: String,
    pub read_only: bool,
    pub state: MountState,
    pub worker_pid: i32,
    pub worker_start_time: u64,
    /// st_dev of the FUSE mount (major, minor).
    pub fuse_dev: Option<(u32, u32)>,
    pub mount_id: Option<u64>,
    /// The mount's unique id (STATX_MNT_ID_UNIQUE): what identifies it.
    /// Records of older brokers have none (see `MountRef::find`).
    #[serde(default)]
    pub mount_unique_id: Option<u64>,
    /// A block device source's device number; older records have none.
    #[serde(default)]
    pub source_dev: Option<(u32, u32)>,
    /// The first error the worker reported (shown by `list` after a
    /// restart too); older records have none.
    #[serde(default)]
    pub error: Option<String>,
}

/// Records larger than this are not records.
const MAX_RECORD_BYTES: u64 = 64 * 1024;
/// At most this many records are read at startup.
const MAX_RECORDS: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create state directory {path}: {error}")]
    Dir { path: String, error: std::io::Error },
    #[error("another safemountd uses the state directory {0}")]
    Locked(String),
    #[error("cannot read state directory {path}: {error}")]
    Read { path: String, error: std::io::Error },
}

impl Entry {
    fn record(&self) -> Option<Record> {
        let worker = self.worker.as_ref()?;
        Some(Record {
            id: self.id,
            source: self.source.clone(),
            mountpoint: self.mountpoint.clone(),
            owner_uid: self.owner_uid,
            label: self.label.clone(),
            read_only: self.read_only,
            state: self.state,
            worker_pid: worker.pid(),
            worker_start_time: self.worker_start_time,
            fuse_dev: self
                .mount
                .as_ref()
                .map(|m| m.dev())
                .or(self.pending_mount.map(|p| p.dev)),
            mount_id: self
                .mount
                .as_ref()
                .map(|m| m.mount_id())
                .or(self.pending_mount.map(|p| p.mount_id)),
            mount_unique_id: self
                .mount
                .as_ref()
                .map(|m| m.unique_id())
                .or(self.pending_mount.map(|p| p.unique_id)),
            source_dev: self.source_dev,
            error: self.error.clone(),
        })
    }
}

fn shown(p: &Path) -> String {
    crate::sanitize::display(p.as_os_str().as_encoded_bytes())
}

impl State {
    /// State kept in memory only (unit tests, and brokers that clean up
    /// everything when they stop).
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// State recorded under `dir/mounts` (created 0700 if missing).
    pub fn with_dir(dir: &Path) -> Result<Arc<Self>, StoreError> {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        let records = dir.join("mounts");
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&records)
            .map_err(|error| StoreError::Dir {
                path: shown(&records),
                error,
            })?;
        // One broker per state directory: a second one would adopt the
        // first one's live mounts. The lock dies with the process.
        let lock_path = dir.join("state.lock");
        let lock = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
            .open(&lock_path)
            .map_err(|error| StoreError::Dir {
                path: shown(&lock_path),
                error,
            })?;
        let lock = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusiveNonblock)
            .map_err(|_| StoreError::Locked(shown(dir)))?;
        Ok(Arc::new(Self {
            inner: Mutex::default(),
            records: Some(records),
            record_writes: Mutex::default(),
            _lock: Some(lock),
        }))
    }

    fn record_path(&self, id: u64) -> Option<PathBuf> {
        self.records.as_ref().map(|d| d.join(format!("{id}.json")))
    }

    /// Writes entry `id`'s record (temp file + rename), if it has a worker.
    fn persist(&self, id: u64) {
        let Some(path) = self.record_path(id) else {
            return;
        };
        let _writing = self.writing_records();
        let Some(record) = self.with_entry(id, |e| e.record()).flatten() else {
            return;
        };
        if let Err(e) = write_atomic(&path, &record) {
            tracing::error!(error = %e, path = %path.display(), "cannot write mount record");
        }
    }

    fn unpersist(&self, id: u64) {
        let _writing = self.writing_records();
        if let Some(path) = self.record_path(id)
            && let Err(e) = std::fs::remove_file(&path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::error!(error = %e, path = %path.display(), "cannot remove mount record");
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// See `record_writes`; taken before the state lock, never after.
    fn writing_records(&self) -> MutexGuard<'_, ()> {
        self.record_writes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a mount being set up; fails if the mount point is taken
    /// or a non-root owner already has `max_per_owner` mounts.
    pub fn reserve(
        &self,
        source: String,
        mountpoint: PathBuf,
        owner_uid: u32,
        read_only: bool,
        max_per_owner: usize,
    ) -> Result<u64, StateError> {
        let mut inner = self.lock();
        if inner.shutting_down {
            return Err(StateError::ShuttingDown);
        }
        let owned = inner
            .entries
            .iter()
            .filter(|e| e.owner_uid == owner_uid)
            .count();
        if owner_uid != 0 && owned >= max_per_owner {
            return Err(StateError::TooManyMounts {
                uid: owner_uid,
                max: max_per_owner,
            });
        }
        if inner.entries.iter().any(|e| e.mountpoint == mountpoint) {
            return Err(StateError::MountpointTaken(shown(&mountpoint)));
        }
        inner.next_id += 1;
        let id = inner.next_id;
        inner.entries.push(Entry {
            id,
            source,
            mountpoint,
            owner_uid,
            label: String::new(),
            read_only,
            state: MountState::Starting,
            worker: None,
            mount: None,
            worker_exited: false,
            error: None,
            pending_mount: None,
            image: None,
            worker_start_time: 0,
            source_dev: None,
        });
        Ok(id)
    }

    fn with_entry<R>(&self, id: u64, f: impl FnOnce(&mut Entry) -> R) -> Option<R> {
        let mut inner = self.lock();
        inner.entries.iter_mut().find(|e| e.id == id).map(f)
    }

    pub fn set_worker(&self, id: u64, worker: Arc<WorkerHandle>) {
        // The worker is alive or a zombie (the reaper waits for cleanup
        // before reaping), so its /proc entry is there to read.
        let start = crate::authorize::process_start_time(worker.pid()).unwrap_or_else(|e| {
            tracing::warn!(pid = worker.pid(), error = %e, "cannot read the worker's start time");
            0
        });
        self.with_entry(id, |e| {
            e.worker = Some(worker);
            e.worker_start_time = start;
        });
        self.persist(id);
    }

    /// Sets the mount point of a mount being set up (an automatic one is
    /// known only once the worker has probed the label); fails if another
    /// mount has it.
    pub fn set_mountpoint(&self, id: u64, mountpoint: PathBuf) -> Result<(), StateError> {
        {
            let mut inner = self.lock();
            if inner
                .entries
                .iter()
                .any(|e| e.id != id && e.mountpoint == mountpoint)
            {
                return Err(StateError::MountpointTaken(shown(&mountpoint)));
            }
            if let Some(e) = inner.entries.iter_mut().find(|e| e.id == id) {
                e.mountpoint = mountpoint;
            }
        }
        self.persist(id);
        Ok(())
    }

    pub fn set_probed(&self, id: u64, label: String, read_only: bool) {
        self.with_entry(id, |e| {
            e.label = label;
            e.read_only = read_only;
        });
        self.persist(id);
    }

    /// What the health reports of mount `id` (device number `dev`) do:
    /// its record and `list` learn the read-only state and first error,
    /// and its dirty page limit follows its free space.
    pub fn health_handler(
        self: &Arc<Self>,
        id: u64,
        dev: (u32, u32),
    ) -> impl FnMut(HealthReport) + Send + 'static {
        let state = self.clone();
        // Unknown at first: a previous broker may have left it capped.
        let mut applied: Option<Option<u64>> = None;
        move |report| {
            state.set_health(id, report.read_only, report.error);
            let cap = report.dirty_cap;
            if applied == Some(cap) {
                return;
            }
            let was = applied.replace(cap).flatten();
            match (crate::bdi::limit_dirty(dev, cap), cap) {
                (Ok(()), Some(bytes)) => {
                    tracing::info!(
                        id,
                        cap_kib = bytes >> 10,
                        "low on space: dirty pages capped"
                    );
                }
                (Ok(()), None) if was.is_some() => {
                    tracing::info!(id, "space again: dirty pages uncapped");
                }
                (Ok(()), None) => {}
                (Err(e), _) => {
                    tracing::warn!(id, error = %e, "cannot change the mount's dirty page limit (max_bytes is Linux 6.2's): near full, write(2) may succeed past the last free block");
                }
            }
        }
    }

    /// A health report from the serving worker: it turned read-only, or
    /// met an error. The worker is untrusted: its words are sanitized
    /// (one line, bounded) before anyone sees them, and a mount never
    /// turns back from read-only on its word. The news is recorded before
    /// `list` can show it: the worker reports a change once, so a broker
    /// killed after showing it must leave it to the next one.
    pub fn set_health(&self, id: u64, read_only: bool, error: Option<String>) {
        let error = error.map(|e| crate::sanitize::display(e.as_bytes()));
        let apply = |read_only_now: &mut bool, error_now: &mut Option<String>| {
            let before = (*read_only_now, error_now.is_some());
            *read_only_now |= read_only;
            if error_now.is_none() {
                error_now.clone_from(&error);
            }
            before != (*read_only_now, error_now.is_some())
        };
        // Record first, then memory, both under the record lock: `list`
        // never shows an error a restarted broker would not.
        let _writing = self.writing_records();
        let news = self.with_entry(id, |e| {
            let mut record = e.record()?;
            apply(&mut record.read_only, &mut record.error).then_some(record)
        });
        if let (Some(Some(record)), Some(path)) = (news, self.record_path(id))
            && let Err(e) = write_atomic(&path, &record)
        {
            tracing::error!(error = %e, path = %path.display(), "cannot write mount record");
        }
        self.with_entry(id, |e| {
            let (was_read_only, had_error) = (e.read_only, e.error.is_some());
            if !apply(&mut e.read_only, &mut e.error) {
                return;
            }
            if e.read_only && !was_read_only {
                tracing::warn!(mountpoint = %e.mountpoint.display(), "mount turned read-only");
            }
            if let Some(msg) = e.error.as_ref().filter(|_| !had_error) {
                tracing::warn!(mountpoint = %e.mountpoint.display(), error = %msg, "worker reports an error");
            }
        });
    }

    /// The mount is made but not attached yet: its identity is recorded
    /// first, so a broker killed before the mount is known by its place
    /// leaves a record that still finds it.
    pub fn set_pending_mount(&self, id: u64, mount: crate::mounted::MountOf) {
        self.with_entry(id, |e| e.pending_mount = Some(mount));
        self.persist(id);
    }

    /// The mount exists: recorded with its identity.
    pub fn set_mounted(&self, id: u64, mount: Arc<MountRef>) {
        self.with_entry(id, |e| e.mount = Some(mount));
        self.persist(id);
    }

    /// Setup is done: Starting -> Mounted, unless the worker died or the
    /// broker is shutting down meanwhile (then setup must undo).
    pub fn mark_mounted(&self, id: u64) -> Result<(), StateError> {
        let mut inner = self.lock();
        if inner.shutting_down {
            return Err(StateError::ShuttingDown);
        }
        let entry = inner
            .entries
            .iter_mut()
            .find(|e| e.id == id)
            .ok_or(StateError::WorkerExited)?;
        if entry.worker_exited {
            return Err(StateError::WorkerExited);
        }
        entry.state = MountState::Mounted;
        drop(inner);
        self.persist(id);
        Ok(())
    }

    pub fn remove(&self, id: u64) {
        self.lock().entries.retain(|e| e.id != id);
        self.unpersist(id);
    }

    /// Called by the reaper when entry `id`'s worker has exited.
    pub fn worker_exited(&self, id: u64) -> AfterExit {
        self.with_entry(id, |e| {
            e.worker_exited = true;
            if e.state == MountState::Starting {
                AfterExit::SetupCleansUp
            } else {
                AfterExit::Detach {
                    mountpoint: e.mountpoint.clone(),
                    mount: e.mount.clone(),
                    state: e.state,
                    source: e.source.clone(),
                }
            }
        })
        .unwrap_or(AfterExit::Nothing)
    }

    /// Who owns the mount at `path`, if safemount made one there.
    pub fn owner_of(&self, path: &Path) -> Option<u32> {
        self.lock()
            .entries
            .iter()
            .find(|e| e.mountpoint == path)
            .map(|e| e.owner_uid)
    }

    /// Records the block device a mount is made from.
    pub fn set_source_dev(&self, id: u64, dev: (u32, u32)) {
        self.with_entry(id, |e| e.source_dev = Some(dev));
        self.persist(id);
    }

    /// Records the image a mount is made from.
    pub fn set_image(&self, id: u64, key: (u64, u64)) {
        self.with_entry(id, |e| e.image = Some(key));
    }

    /// The mounts of image `key` whose workers still run: each one's
    /// mount (once made) and worker.
    pub fn holders_of(&self, key: (u64, u64)) -> Vec<(Option<Arc<MountRef>>, Arc<WorkerHandle>)> {
        self.lock()
            .entries
            .iter()
            .filter(|e| e.image == Some(key) && !e.worker_exited)
            .filter_map(|e| Some((e.mount.clone(), e.worker.clone()?)))
            .collect()
    }

    /// The mount at `path`: its block device, if it has one, and every
    /// other mount's block device with its mount point (for power-off).
    pub fn source_devs(&self, path: &Path) -> (Option<(u32, u32)>, Vec<DevMount>) {
        let inner = self.lock();
        let this = inner
            .entries
            .iter()
            .find(|e| e.mountpoint == path)
            .and_then(|e| e.source_dev);
        let others = inner
            .entries
            .iter()
            .filter(|e| e.mountpoint != path)
            .filter_map(|e| e.source_dev.map(|d| (d, e.mountpoint.clone())))
            .collect();
        (this, others)
    }

    /// Starts unmounting `path` for `caller`: Mounted -> Unmounting.
    /// `others_allowed`: the caller may unmount other users' mounts (root,
    /// or polkit said so; decided beforehand, outside this lock).
    pub fn begin_unmount(
        &self,
        path: &Path,
        caller: &Caller,
        others_allowed: bool,
    ) -> Result<Unmounting, StateError> {
        let mut inner = self.lock();
        let entry = inner
            .entries
            .iter_mut()
            .find(|e| e.mountpoint == path)
            .ok_or_else(|| StateError::NotMounted(shown(path)))?;
        if !(others_allowed || caller.is_root() || caller.uid == entry.owner_uid) {
            return Err(AuthError::NotOwner(shown(path)).into());
        }
        if entry.state != MountState::Mounted {
            return Err(StateError::InTransition(shown(path)));
        }
        entry.state = MountState::Unmounting;
        Ok(Unmounting {
            id: entry.id,
            worker: entry.worker.clone(),
            mount: entry.mount.clone(),
        })
    }

    /// umount2 failed: Unmounting -> Mounted again.
    pub fn abort_unmount(&self, id: u64) {
        self.with_entry(id, |e| {
            if e.state == MountState::Unmounting {
                e.state = MountState::Mounted;
            }
        });
    }

    /// What `caller` may see: their own mounts, or every mount if
    /// `sees_all` (root, or polkit allows unmount-others).
    pub fn list(&self, caller: &Caller, sees_all: bool) -> Vec<MountInfo> {
        self.lock()
            .entries
            .iter()
            .filter(|e| sees_all || caller.is_root() || e.owner_uid == caller.uid)
            .map(Entry::info)
            .collect()
    }

    /// Whether any mount is owned by someone other than `uid`.
    pub fn has_others(&self, uid: u32) -> bool {
        self.lock().entries.iter().any(|e| e.owner_uid != uid)
    }

    /// Refuses new mounts from now on and returns every entry.
    pub fn begin_shutdown(&self) -> Vec<Teardown> {
        let mut inner = self.lock();
        inner.shutting_down = true;
        inner
            .entries
            .iter()
            .map(|e| Teardown {
                id: e.id,
                mountpoint: e.mountpoint.clone(),
                mount: e.mount.clone(),
                state: e.state,
                worker: e.worker.clone(),
            })
            .collect()
    }

    /// Mounts still being set up.
    pub fn starting_count(&self) -> usize {
        self.lock()
            .entries
            .iter()
            .filter(|e| e.state == MountState::Starting)
            .count()
    }

    pub fn is_empty(&self) -> bool {
        self.lock().entries.is_empty()
    }
}

/// Writes `record` to `path` atomically: a temp file beside it (0600),
/// fsync'd, then renamed over it.
fn write_atomic(path: &Path, record: &Record) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let json = serde_json::to_vec(record).map_err(std::io::Error::other)?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)?;
    f.write_all(&json)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)
}

fn read_record(path: &Path) -> Result<Record, String> {
    use std::io::Read;
    let f = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut bytes = Vec::new();
    f.take(MAX_RECORD_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| e.to_string())?;
    if bytes.len() as u64 > MAX_RECORD_BYTES {
        return Err("record too large".to_owned());
    }
    serde_json::from_slice(&bytes).map_err(|e| e.to_string())
}

/// pidfd_open(2): an fd that names process `pid` for as long as the fd
/// lives, child or not.
pub fn pidfd_open(pid: i32) -> Result<OwnedFd, Errno> {
    // SAFETY: pidfd_open takes a pid and flags (0) and returns a new fd or
    // -1; no pointers are involved.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(Errno::last());
    }
    let fd = i32::try_from(fd).map_err(|_| Errno::EBADF)?;
    // SAFETY: the kernel just returned this new fd; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// pidfd_send_signal(2): signals the process the pidfd names; never a
/// process that merely reuses its pid.
pub fn pidfd_send_signal(pidfd: BorrowedFd<'_>, sig: Signal) -> Result<(), Errno> {
    // SAFETY: arguments are an fd, a signal number, a null siginfo pointer
    // (allowed: the kernel fills in a default) and flags 0.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            sig as libc::c_int,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if r < 0 { Err(Errno::last()) } else { Ok(()) }
}

/// Blocks until the process behind `pidfd` has exited (the pidfd polls
/// readable; this works for processes that are not our children).
pub fn wait_pidfd(pidfd: BorrowedFd<'_>) -> Result<(), Errno> {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    loop {
        let mut fds = [PollFd::new(pidfd, PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(n) if n > 0 => return Ok(()),
            Ok(_) | Err(Errno::EINTR) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Called with (entry id, how the worker ended) when an adopted worker
/// exits.
type OnExit = Arc<dyn Fn(u64, &str) + Send + Sync>;

/// What [`State::restore`] did at startup.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Restored {
    pub adopted: usize,
    pub cleaned: usize,
}

/// A live worker matching a record: its pidfd, or why there is none.
fn live_worker(record: &Record) -> Result<OwnedFd, String> {
    if record.worker_pid <= 1 {
        return Err("no worker recorded".to_owned());
    }
    let pidfd = pidfd_open(record.worker_pid).map_err(|e| format!("worker gone ({e})"))?;
    // The pidfd was opened before the start time is read: if the start
    // time matches, the process behind the pid then was the worker, so the
    // pidfd names the worker.
    match crate::authorize::process_start_time(record.worker_pid) {
        Ok(t) if t == record.worker_start_time && t != 0 => {
            // A pidfd polls readable once its process has exited (a zombie
            // not yet reaped by init still has its /proc entry).
            use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
            let mut fds = [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, PollTimeout::ZERO) {
                Ok(0) => Ok(pidfd),
                _ => Err("worker gone (exited)".to_owned()),
            }
        }
        Ok(_) => Err("worker gone (pid reused)".to_owned()),
        Err(e) => Err(format!("worker gone ({e})")),
    }
}

impl State {
    /// Reads every record under the state directory: adopts live mounts
    /// (with their log and health channels, when systemd's fd store kept
    /// them: `stored`) and cleans dead ones. `on_exit(id, why)` runs on a
    /// watcher thread when an adopted worker exits (the server detaches its
    /// mount then).
    pub fn restore(
        self: &Arc<Self>,
        mut stored: Stored,
        on_exit: impl Fn(u64, &str) + Send + Sync + 'static,
    ) -> Result<Restored, StoreError> {
        let restored = self.restore_records(&mut stored, on_exit);
        stored.forget_rest();
        restored
    }

    fn restore_records(
        self: &Arc<Self>,
        stored: &mut Stored,
        on_exit: impl Fn(u64, &str) + Send + Sync + 'static,
    ) -> Result<Restored, StoreError> {
        let Some(dir) = self.records.clone() else {
            return Ok(Restored::default());
        };
        let read_err = |error| StoreError::Read {
            path: shown(&dir),
            error,
        };
        let mut files = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(read_err)?.take(MAX_RECORDS) {
            files.push(entry.map_err(read_err)?.path());
        }
        let on_exit = Arc::new(on_exit);
        let mut done = Restored::default();
        for path in files {
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
            let Some(name) = name else { continue };
            let Some(id) = name
                .strip_suffix(".json")
                .and_then(|n| n.parse::<u64>().ok())
            else {
                // Leftover temp files and anything else.
                tracing::info!(file = %crate::sanitize::display(name.as_bytes()), "removing stray file from the state directory");
                let _ = std::fs::remove_file(&path);
                continue;
            };
            let record = match read_record(&path) {
                Ok(r) if r.id == id => r,
                Ok(_) => {
                    tracing::warn!(id, "record names another id; removing it");
                    let _ = std::fs::remove_file(&path);
                    continue;
                }
                Err(e) => {
                    tracing::warn!(id, error = %crate::sanitize::display(e.as_bytes()), "unreadable mount record; removing it");
                    let _ = std::fs::remove_file(&path);
                    continue;
                }
            };
            // Found by its mount id and device, never by the recorded path.
            let mounted = match (record.mount_id, record.fuse_dev) {
                (Some(mount_id), Some(dev)) => {
                    let unique_id = record.mount_unique_id;
                    match MountRef::find(unique_id, mount_id, dev, crate::mount::FSTYPE) {
                        Ok(m) => Some(m),
                        Err(MountRefError::Gone) => None,
                        Err(e) => {
                            tracing::warn!(id, error = %e, "cannot reach a recorded mount");
                            None
                        }
                    }
                }
                _ => None,
            };
            let worker = live_worker(&record);
            match (worker, mounted) {
                (Ok(pidfd), Some(mount)) if record.state != MountState::Starting => {
                    let channels = stored.take(record.id, record.worker_pid);
                    self.adopt(record, pidfd, mount, channels, on_exit.clone());
                    done.adopted += 1;
                }
                (other, mounted) => {
                    let why = match &other {
                        Ok(_) if mounted.is_none() => "mount is gone".to_owned(),
                        Ok(_) => "setup never finished".to_owned(),
                        Err(e) => e.clone(),
                    };
                    if let Ok(pidfd) = other {
                        let _ = pidfd_send_signal(pidfd.as_fd(), Signal::SIGKILL);
                    }
                    if let Some(mount) = mounted
                        && let Err(e) = mount.detach()
                    {
                        tracing::error!(error = %e, mount = %mount, "cannot detach mount");
                    }
                    // An automatic mount point (/run/media/USER/x) goes too.
                    crate::mountpoint::remove_auto_dir(&record.mountpoint);
                    tracing::warn!(
                        id,
                        source = %crate::sanitize::display(record.source.as_bytes()),
                        mountpoint = %record.mountpoint.display(),
                        "cleaned a mount left by a previous broker: {why}"
                    );
                    let _ = std::fs::remove_file(&path);
                    done.cleaned += 1;
                }
            }
        }
        Ok(done)
    }

    /// Takes over a live mount from a previous broker.
    fn adopt(
        self: &Arc<Self>,
        record: Record,
        pidfd: OwnedFd,
        mount: MountRef,
        channels: Option<Channels>,
        on_exit: OnExit,
    ) {
        let id = record.id;
        let dev = mount.dev();
        let handle = WorkerHandle::adopted(record.worker_pid, pidfd);
        let source = crate::sanitize::display(record.source.as_bytes());
        {
            let mut inner = self.lock();
            inner.next_id = inner.next_id.max(id);
            inner.entries.push(Entry {
                id,
                source: source.clone(),
                mountpoint: record.mountpoint.clone(),
                owner_uid: record.owner_uid,
                label: crate::sanitize::display(record.label.as_bytes()),
                read_only: record.read_only,
                state: MountState::Mounted,
                worker: Some(handle.clone()),
                mount: Some(Arc::new(mount)),
                worker_exited: false,
                error: record
                    .error
                    .as_ref()
                    .map(|e| crate::sanitize::display(e.as_bytes())),
                pending_mount: None,
                worker_start_time: record.worker_start_time,
                source_dev: record.source_dev,
                // Its lock is the worker's OFD lock, not in this broker's
                // registry.
                image: None,
            });
        }
        let pid = record.worker_pid;
        match channels {
            Some(channels) => {
                crate::worker_log::relay(std::fs::File::from(channels.log), pid, &source);
                Worker::adopted(handle.clone(), channels.health)
                    .watch_health(self.health_handler(id, dev));
                tracing::info!(id, pid, mountpoint = %record.mountpoint.display(), "adopted a mount from a previous broker, with its log and health channels");
            }
            None => {
                tracing::info!(id, pid, mountpoint = %record.mountpoint.display(), "adopted a mount from a previous broker (its log and health reports are lost: no fd store)");
            }
        }
        let spawned = std::thread::Builder::new()
            .name(format!("watch-{pid}"))
            .spawn(move || {
                if let Some(fd) = handle.pidfd()
                    && let Err(e) = wait_pidfd(fd)
                {
                    tracing::error!(pid, error = %e, "cannot watch adopted worker");
                    return;
                }
                on_exit(id, "exited (adopted worker: status unknown)");
                handle.mark_gone(nix::sys::wait::WaitStatus::StillAlive);
            });
        if let Err(e) = spawned {
            tracing::error!(pid, error = %e, "cannot start a watcher for an adopted worker");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROOT: Caller = Caller {
        uid: 0,
        gid: 0,
        pid: 1,
    };
    const USER: Caller = Caller {
        uid: 1000,
        gid: 1000,
        pid: 2,
    };

    #[test]
    fn mounts_per_owner_are_capped_except_for_root() {
        let s = State::new();
        for n in 0..3 {
            s.reserve("i".into(), format!("/u{n}").into(), 1000, true, 3)
                .unwrap();
            s.reserve("i".into(), format!("/r{n}").into(), 0, true, 1)
                .unwrap();
        }
        assert_eq!(
            s.reserve("i".into(), "/u3".into(), 1000, true, 3),
            Err(StateError::TooManyMounts { uid: 1000, max: 3 })
        );
        assert!(s.reserve("i".into(), "/v".into(), 1001, true, 3).is_ok());
    }

    #[test]
    fn lifecycle() {
        let s = State::new();
        let mp = PathBuf::from("/mnt/a");
        let id = s.reserve("img".into(), mp.clone(), 1000, true, 8).unwrap();
        assert_eq!(
            s.reserve("img".into(), mp.clone(), 1000, true, 8),
            Err(StateError::MountpointTaken("/mnt/a".into()))
        );
        // Not yet mounted: cannot unmount.
        assert!(matches!(
            s.begin_unmount(&mp, &ROOT, true),
            Err(StateError::InTransition(_))
        ));
        s.mark_mounted(id).unwrap();
        assert_eq!(s.list(&USER, false).len(), 1);
        let other = Caller { uid: 1001, ..USER };
        assert_eq!(s.list(&other, false).len(), 0);
        assert_eq!(s.list(&other, true).len(), 1);
        assert_eq!(s.owner_of(&mp), Some(1000));
        assert!(s.has_others(1001) && !s.has_others(1000));
        assert!(matches!(
            s.begin_unmount(&mp, &other, false),
            Err(StateError::Auth(_))
        ));
        assert_eq!(s.begin_unmount(&mp, &USER, false).unwrap().id, id);
        assert_eq!(s.list(&ROOT, false)[0].state, MountState::Unmounting);
        s.abort_unmount(id);
        assert_eq!(s.list(&ROOT, false)[0].state, MountState::Mounted);
        assert_eq!(s.begin_unmount(&mp, &other, true).unwrap().id, id);
        s.abort_unmount(id);
        assert!(matches!(s.worker_exited(id), AfterExit::Detach { .. }));
        s.remove(id);
        assert!(s.is_empty());
        assert!(matches!(s.worker_exited(id), AfterExit::Nothing));
        assert!(matches!(
            s.begin_unmount(&mp, &ROOT, true),
            Err(StateError::NotMounted(_))
        ));
    }

    #[test]
    fn worker_death_during_setup_blocks_mark_mounted() {
        let s = State::new();
        let id = s.reserve("x".into(), "/m".into(), 0, true, 8).unwrap();
        assert!(matches!(s.worker_exited(id), AfterExit::SetupCleansUp));
        assert_eq!(s.mark_mounted(id), Err(StateError::WorkerExited));
    }

    #[test]
    fn shutdown_refuses_new_work() {
        let s = State::new();
        let id = s.reserve("x".into(), "/m".into(), 0, true, 8).unwrap();
        assert_eq!(s.begin_shutdown().len(), 1);
        assert_eq!(s.mark_mounted(id), Err(StateError::ShuttingDown));
        assert_eq!(
            s.reserve("y".into(), "/n".into(), 0, true, 8),
            Err(StateError::ShuttingDown)
        );
    }

    fn temp_dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("sm-state-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn sample(id: u64, pid: i32, start: u64) -> Record {
        Record {
            id,
            source: "disk.img".into(),
            mountpoint: format!("/nonexistent/sm-{id}").into(),
            owner_uid: 1000,
            label: "L".into(),
            read_only: true,
            state: MountState::Mounted,
            worker_pid: pid,
            worker_start_time: start,
            fuse_dev: Some((0, 4242)),
            mount_id: Some(99999),
            mount_unique_id: Some(1 << 40),
            source_dev: None,
            error: Some("write of block 7 failed: EIO".into()),
        }
    }

    #[test]
    fn records_round_trip_atomically() {
        let d = temp_dir("rt");
        let s = State::with_dir(&d).unwrap();
        let p = d.join("mounts/7.json");
        let r = sample(7, 123, 456);
        write_atomic(&p, &r).unwrap();
        assert_eq!(read_record(&p).unwrap(), r);
        assert!(!d.join("mounts/7.json.tmp").exists());
        // Oversized and garbage records are refused, not parsed.
        std::fs::write(&p, vec![b' '; MAX_RECORD_BYTES as usize + 1]).unwrap();
        assert!(read_record(&p).is_err());
        std::fs::write(&p, b"{not json").unwrap();
        assert!(read_record(&p).is_err());
        drop(s);
        std::fs::remove_dir_all(&d).unwrap();
    }

    /// Record writes racing a health report: every reading of the record
    /// after the report parses and holds its error (writers shared one
    /// temp file, and a record built before the report could land after
    /// it).
    #[test]
    fn a_reported_error_stays_in_the_record_under_concurrent_writes() {
        let d = temp_dir("health");
        let s = State::with_dir(&d).unwrap();
        let id = s.reserve("img".into(), "/m".into(), 0, false, 8).unwrap();
        s.set_worker(id, WorkerHandle::unwatched(std::process::id() as i32));
        s.mark_mounted(id).unwrap();
        let path = s.record_path(id).unwrap();
        let stop = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|scope| {
            for _ in 0..2 {
                scope.spawn(|| {
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        s.set_probed(id, "L".into(), false);
                    }
                });
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
            s.set_health(id, false, Some("write of block 7 failed: EIO".into()));
            for _ in 0..2000 {
                let record = read_record(&path);
                if record.as_ref().map(|r| r.error.is_some()) != Ok(true) {
                    stop.store(true, std::sync::atomic::Ordering::Relaxed);
                    panic!("record after the report: {record:?}");
                }
            }
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
        });
        drop(s);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn restore_cleans_dead_and_stray_records() {
        let d = temp_dir("restore");
        let s = State::with_dir(&d).unwrap();
        let m = d.join("mounts");
        // A worker that is gone, one whose pid was reused (our own pid
        // with a wrong start time), garbage, a stray temp file.
        write_atomic(&m.join("1.json"), &sample(1, i32::MAX, 5)).unwrap();
        let me = std::process::id() as i32;
        write_atomic(&m.join("2.json"), &sample(2, me, 1)).unwrap();
        std::fs::write(m.join("3.json"), b"garbage").unwrap();
        std::fs::write(m.join("4.json.tmp"), b"x").unwrap();
        write_atomic(&m.join("6.json"), &sample(5, me, 1)).unwrap();
        let done = s.restore(Stored::default(), |_, _| {}).unwrap();
        assert_eq!(
            done,
            Restored {
                adopted: 0,
                cleaned: 2
            }
        );
        assert_eq!(std::fs::read_dir(&m).unwrap().count(), 0);
        assert!(s.is_empty());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn live_worker_needs_matching_start_time() {
        let me = std::process::id() as i32;
        let start = crate::authorize::process_start_time(me).unwrap();
        assert!(live_worker(&sample(1, me, start)).is_ok());
        assert!(live_worker(&sample(1, me, start + 1)).is_err());
        assert!(live_worker(&sample(1, 0, 0)).is_err());
        assert!(live_worker(&sample(1, 1, 0)).is_err());
    }

    #[test]
    fn pidfd_watch_sees_a_non_waited_exit() {
        let child = std::process::Command::new("sleep")
            .arg("0.2")
            .spawn()
            .unwrap();
        let fd = pidfd_open(child.id() as i32).unwrap();
        let t = std::time::Instant::now();
        wait_pidfd(fd.as_fd()).unwrap();
        assert!(t.elapsed() < std::time::Duration::from_secs(5));
        // Signalling an exited (zombie) process through its pidfd is fine;
        // after reaping, the pidfd still names only that process.
        let mut child = child;
        child.wait().unwrap();
        assert_eq!(
            pidfd_send_signal(fd.as_fd(), Signal::SIGKILL),
            Err(Errno::ESRCH)
        );
    }
}
