//! What this broker has mounted. In memory only in this issue; persisting
//! it under /run/safemount so a restarted broker can adopt its mounts is a
//! later issue.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use safemount_proto::{ErrorKind, MountInfo, MountState};

use crate::authorize::{self, AuthError, Caller};
use crate::supervise::WorkerHandle;

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
    #[error(transparent)]
    Auth(#[from] AuthError),
}

impl StateError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::MountpointTaken(_) | Self::InTransition(_) => ErrorKind::Busy,
            Self::NotMounted(_) => ErrorKind::NotFound,
            Self::ShuttingDown | Self::WorkerExited => ErrorKind::Internal,
            Self::Auth(e) => e.kind(),
        }
    }
}

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
    /// st_dev of the FUSE mount, once mounted.
    pub fuse_dev: Option<(u32, u32)>,
    /// The reaper saw the worker exit.
    pub worker_exited: bool,
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
        }
    }
}

/// What the reaper should do once a worker has exited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AfterExit {
    /// Setup is still running and its undo stack cleans up.
    SetupCleansUp,
    /// The entry is gone already.
    Nothing,
    /// Detach this mount (if still there) and remove the entry.
    Detach {
        mountpoint: PathBuf,
        fuse_dev: Option<(u32, u32)>,
        state: MountState,
        source: String,
    },
}

/// A mount whose unmount has begun.
#[derive(Debug)]
pub struct Unmounting {
    pub id: u64,
    pub worker: Option<Arc<WorkerHandle>>,
}

/// A mount to tear down at shutdown.
#[derive(Debug)]
pub struct Teardown {
    pub id: u64,
    pub mountpoint: PathBuf,
    pub fuse_dev: Option<(u32, u32)>,
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
}

fn shown(p: &Path) -> String {
    crate::sanitize::display(p.as_os_str().as_encoded_bytes())
}

impl State {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a mount being set up; fails if the mount point is taken.
    pub fn reserve(
        &self,
        source: String,
        mountpoint: PathBuf,
        owner_uid: u32,
        read_only: bool,
    ) -> Result<u64, StateError> {
        let mut inner = self.lock();
        if inner.shutting_down {
            return Err(StateError::ShuttingDown);
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
            fuse_dev: None,
            worker_exited: false,
        });
        Ok(id)
    }

    fn with_entry<R>(&self, id: u64, f: impl FnOnce(&mut Entry) -> R) -> Option<R> {
        let mut inner = self.lock();
        inner.entries.iter_mut().find(|e| e.id == id).map(f)
    }

    pub fn set_worker(&self, id: u64, worker: Arc<WorkerHandle>) {
        self.with_entry(id, |e| e.worker = Some(worker));
    }

    pub fn set_probed(&self, id: u64, label: String, read_only: bool) {
        self.with_entry(id, |e| {
            e.label = label;
            e.read_only = read_only;
        });
    }

    pub fn set_fuse_dev(&self, id: u64, dev: Option<(u32, u32)>) {
        self.with_entry(id, |e| e.fuse_dev = dev);
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
        Ok(())
    }

    pub fn remove(&self, id: u64) {
        self.lock().entries.retain(|e| e.id != id);
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
                    fuse_dev: e.fuse_dev,
                    state: e.state,
                    source: e.source.clone(),
                }
            }
        })
        .unwrap_or(AfterExit::Nothing)
    }

    /// Starts unmounting `path` for `caller`: Mounted -> Unmounting.
    pub fn begin_unmount(&self, path: &Path, caller: &Caller) -> Result<Unmounting, StateError> {
        let mut inner = self.lock();
        let entry = inner
            .entries
            .iter_mut()
            .find(|e| e.mountpoint == path)
            .ok_or_else(|| StateError::NotMounted(shown(path)))?;
        authorize::authorize_unmount(caller, entry.owner_uid, &shown(path))?;
        if entry.state != MountState::Mounted {
            return Err(StateError::InTransition(shown(path)));
        }
        entry.state = MountState::Unmounting;
        Ok(Unmounting {
            id: entry.id,
            worker: entry.worker.clone(),
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

    /// What `caller` may see.
    pub fn list(&self, caller: &Caller) -> Vec<MountInfo> {
        self.lock()
            .entries
            .iter()
            .filter(|e| authorize::may_see(caller, e.owner_uid))
            .map(Entry::info)
            .collect()
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
                fuse_dev: e.fuse_dev,
                state: e.state,
                worker: e.worker.clone(),
            })
            .collect()
    }

    pub fn is_empty(&self) -> bool {
        self.lock().entries.is_empty()
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
    fn lifecycle() {
        let s = State::new();
        let mp = PathBuf::from("/mnt/a");
        let id = s.reserve("img".into(), mp.clone(), 1000, true).unwrap();
        assert_eq!(
            s.reserve("img".into(), mp.clone(), 1000, true),
            Err(StateError::MountpointTaken("/mnt/a".into()))
        );
        // Not yet mounted: cannot unmount.
        assert!(matches!(
            s.begin_unmount(&mp, &ROOT),
            Err(StateError::InTransition(_))
        ));
        s.mark_mounted(id).unwrap();
        assert_eq!(s.list(&USER).len(), 1);
        assert_eq!(s.list(&Caller { uid: 1001, ..USER }).len(), 0);
        assert!(matches!(
            s.begin_unmount(&mp, &Caller { uid: 1001, ..USER }),
            Err(StateError::Auth(_))
        ));
        assert_eq!(s.begin_unmount(&mp, &USER).unwrap().id, id);
        assert_eq!(s.list(&ROOT)[0].state, MountState::Unmounting);
        s.abort_unmount(id);
        assert_eq!(s.list(&ROOT)[0].state, MountState::Mounted);
        assert!(matches!(s.worker_exited(id), AfterExit::Detach { .. }));
        s.remove(id);
        assert!(s.is_empty());
        assert_eq!(s.worker_exited(id), AfterExit::Nothing);
        assert!(matches!(
            s.begin_unmount(&mp, &ROOT),
            Err(StateError::NotMounted(_))
        ));
    }

    #[test]
    fn worker_death_during_setup_blocks_mark_mounted() {
        let s = State::new();
        let id = s.reserve("x".into(), "/m".into(), 0, true).unwrap();
        assert_eq!(s.worker_exited(id), AfterExit::SetupCleansUp);
        assert_eq!(s.mark_mounted(id), Err(StateError::WorkerExited));
    }

    #[test]
    fn shutdown_refuses_new_work() {
        let s = State::new();
        let id = s.reserve("x".into(), "/m".into(), 0, true).unwrap();
        assert_eq!(s.begin_shutdown().len(), 1);
        assert_eq!(s.mark_mounted(id), Err(StateError::ShuttingDown));
        assert_eq!(
            s.reserve("y".into(), "/n".into(), 0, true),
            Err(StateError::ShuttingDown)
        );
    }
}
