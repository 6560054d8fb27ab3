//! A control group per worker, capping its memory and its tasks, so a
//! worker driven by a hostile disk cannot take the machine's memory or
//! fork-bomb it (its sandbox forbids fork, but threads count too).
//!
//! Where they go, `<base>/<pid>`:
//! - cgroup v1 (memory and pids hierarchies mounted under
//!   /sys/fs/cgroup/{memory,pids}): `<base>` is `safemount-workers` under
//!   the broker's own cgroup in each (v1 lets any cgroup have children);
//! - cgroup v2: `<base>` is a directory the administrator delegates with
//!   `--worker-cgroup` (v2 lets only leaves hold tasks, and a cgroup not
//!   delegated to the broker, such as its systemd service's, is not the
//!   broker's to split); the broker enables the memory and pids
//!   controllers for its children.
//!
//! Otherwise (no such controllers, or v2 without `--worker-cgroup`) the
//! broker logs why and workers run without a cgroup of their own, under
//! the limits of the broker's (the unit's MemoryMax= and TasksMax=).

use std::path::{Path, PathBuf};

/// Per-worker limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerLimits {
    /// Bytes of memory, page cache of its device included.
    pub memory_max: u64,
    /// Tasks (threads).
    pub tasks_max: u64,
}

impl Default for WorkerLimits {
    fn default() -> Self {
        Self {
            memory_max: 1 << 30,
            tasks_max: 64,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("no memory and pids cgroup controllers found")]
    NoControllers,
    #[error("cgroup v2 needs a delegated directory (--worker-cgroup)")]
    NotDelegated,
    #[error("{what} {path}: {error}")]
    Io {
        what: &'static str,
        path: String,
        error: std::io::Error,
    },
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> CgroupError {
    let path = path.display().to_string();
    move |error| CgroupError::Io { what, path, error }
}

/// One controller directory per hierarchy and the files that limit it.
#[derive(Debug, Clone)]
struct Hierarchy {
    /// `.../safemount-workers`
    base: PathBuf,
    /// (file, value) written in each worker's directory.
    limits: Vec<(&'static str, String)>,
}

/// Where workers' cgroups are made.
#[derive(Debug, Clone)]
pub struct WorkerCgroups {
    hierarchies: Vec<Hierarchy>,
}

/// The directory name under which workers' cgroups are made.
const WORKERS: &str = "safemount-workers";

/// The broker's cgroup path in the hierarchy whose controller list (the
/// second field of /proc/self/cgroup) contains `controller` ("" for v2).
fn own_path(proc_cgroup: &str, controller: &str) -> Option<String> {
    proc_cgroup.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (_, list, path) = (parts.next()?, parts.next()?, parts.next()?);
        let found = if controller.is_empty() {
            list.is_empty()
        } else {
            list.split(',').any(|c| c == controller)
        };
        found.then(|| path.trim_start_matches('/').to_owned())
    })
}

impl WorkerCgroups {
    /// Finds (and prepares) where worker cgroups go; see the module
    /// documentation. `delegated`: the v2 directory given by the
    /// administrator.
    pub fn discover(limits: WorkerLimits, delegated: Option<&Path>) -> Result<Self, CgroupError> {
        let root = Path::new("/sys/fs/cgroup");
        let proc_cgroup = std::fs::read_to_string("/proc/self/cgroup")
            .map_err(io("cannot read", Path::new("/proc/self/cgroup")))?;
        let memory = limits.memory_max.to_string();
        let tasks = limits.tasks_max.to_string();
        // v1: one hierarchy per controller.
        let v1 = [
            ("memory", "memory.limit_in_bytes", memory.clone()),
            ("pids", "pids.max", tasks.clone()),
        ];
        let mut hierarchies = Vec::new();
        for (controller, file, value) in v1 {
            let dir = root.join(controller);
            // A hierarchy mounted read-only (as in a systemd-nspawn
            // container) is not one the broker can split.
            let writable = nix::sys::statvfs::statvfs(&dir)
                .is_ok_and(|v| !v.flags().contains(nix::sys::statvfs::FsFlags::ST_RDONLY));
            if let Some(own) = own_path(&proc_cgroup, controller)
                && writable
                && dir.join(&own).join("cgroup.procs").exists()
            {
                hierarchies.push(Hierarchy {
                    base: dir.join(own).join(WORKERS),
                    limits: vec![(file, value)],
                });
            }
        }
        if hierarchies.len() == 2 && delegated.is_none() {
            for h in &hierarchies {
                make_dir(&h.base)?;
            }
            return Ok(Self { hierarchies });
        }
        // v2: only in a directory delegated to the broker.
        let Some(base) = delegated else {
            let v2 = root.join("cgroup.controllers").exists();
            return Err(if v2 {
                CgroupError::NotDelegated
            } else {
                CgroupError::NoControllers
            });
        };
        let controllers = std::fs::read_to_string(base.join("cgroup.controllers"))
            .map_err(io("cannot read", &base.join("cgroup.controllers")))?;
        let has = |c: &str| controllers.split_whitespace().any(|x| x == c);
        if !(has("memory") && has("pids")) {
            return Err(CgroupError::NoControllers);
        }
        write(&base.join("cgroup.subtree_control"), "+memory +pids")?;
        let base = base.to_owned();
        Ok(Self {
            hierarchies: vec![Hierarchy {
                base,
                limits: vec![("memory.max", memory), ("pids.max", tasks)],
            }],
        })
    }

    /// Puts worker `pid` (spawned, not yet started) in a cgroup of its own
    /// with the limits. Removed by [`WorkerCgroup`]'s drop.
    pub fn place(&self, pid: i32) -> Result<WorkerCgroup, CgroupError> {
        let mut made = WorkerCgroup { dirs: Vec::new() };
        for h in &self.hierarchies {
            let dir = h.base.join(pid.to_string());
            make_dir(&dir)?;
            made.dirs.push(dir.clone());
            for (file, value) in &h.limits {
                write(&dir.join(file), value)?;
            }
            let procs = dir.join("cgroup.procs");
            match std::fs::write(&procs, pid.to_string()) {
                Ok(()) => {}
                // Already exited: nothing to confine; the mount fails on
                // the worker's death at its next step.
                Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
                Err(e) => return Err(io("cannot write", &procs)(e)),
            }
        }
        Ok(made)
    }

    /// Removes the empty cgroups of workers that are gone (those of
    /// workers adopted from an earlier broker are left when they exit).
    pub fn sweep(&self) {
        for h in &self.hierarchies {
            let Ok(entries) = std::fs::read_dir(&h.base) else {
                continue;
            };
            for e in entries.flatten() {
                let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                    continue;
                };
                // A live pid's cgroup may be in the middle of being set
                // up (empty until the worker is moved in): leave it.
                if Path::new(&format!("/proc/{pid}")).exists() {
                    continue;
                }
                // Fails (EBUSY) while a task lives in it.
                let _ = std::fs::remove_dir(e.path());
            }
        }
    }
}

/// One worker's cgroup directories; removed on drop, once the worker has
/// exited.
#[derive(Debug)]
pub struct WorkerCgroup {
    dirs: Vec<PathBuf>,
}

impl WorkerCgroup {
    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }
}

impl Drop for WorkerCgroup {
    fn drop(&mut self) {
        for dir in &self.dirs {
            // An exiting task can keep the cgroup busy for a moment.
            for _ in 0..50 {
                match std::fs::remove_dir(dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                    Err(_) => std::thread::sleep(std::time::Duration::from_millis(20)),
                }
            }
        }
    }
}

fn make_dir(dir: &Path) -> Result<(), CgroupError> {
    match std::fs::create_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(io("cannot create", dir)(e)),
    }
}

fn write(file: &Path, value: &str) -> Result<(), CgroupError> {
    std::fs::write(file, value).map_err(io("cannot write", file))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_paths() {
        let text =
            "9:name=systemd:/\n8:pids:/a/b\n4:memory:/process_api/x\n0::/user.slice/s.scope\n";
        assert_eq!(own_path(text, "pids").as_deref(), Some("a/b"));
        assert_eq!(own_path(text, "memory").as_deref(), Some("process_api/x"));
        assert_eq!(own_path(text, "").as_deref(), Some("user.slice/s.scope"));
        assert_eq!(own_path(text, "cpu"), None);
        assert_eq!(
            own_path("3:cpu,cpuacct:/z\n", "cpuacct").as_deref(),
            Some("z")
        );
    }
}
