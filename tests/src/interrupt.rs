//! What real machines do to a running process from outside: freeze and
//! thaw its cgroup (system suspend, `systemctl freeze`), stop and continue
//! it (SIGSTOP/SIGCONT, a shell's ^Z), and attach a debugger to every
//! thread and detach again (strace -p). Each interrupts whatever call a
//! thread is blocked in, so the kernel restarts it when the task runs
//! again.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::util::wait_until;

/// Which cgroup freezer: v1's freezer controller (`freezer.state`) or v2's
/// core freezer (`cgroup.freeze`, what `systemctl freeze` and system
/// suspend use on a v2 system). A hybrid system has both, and a process is
/// in a cgroup of each at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FreezerKind {
    V1,
    V2,
}

/// A freezer cgroup made for one process, moved back out and removed on
/// drop.
pub struct Freezer {
    dir: PathBuf,
    /// Where the process goes back to on drop (its cgroup.procs file).
    home: PathBuf,
    pid: i32,
    kind: FreezerKind,
}

const V1_FREEZER: &str = "/sys/fs/cgroup/freezer";
/// Where the v2 hierarchy is mounted: the root on a v2-only system, the
/// `unified` directory on a hybrid one.
const V2_ROOTS: [&str; 2] = ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"];

impl FreezerKind {
    /// The kinds this machine has, v1 first.
    pub fn available() -> Vec<FreezerKind> {
        [FreezerKind::V1, FreezerKind::V2]
            .into_iter()
            .filter(|k| k.root().is_some())
            .collect()
    }

    fn root(self) -> Option<PathBuf> {
        match self {
            FreezerKind::V1 => Some(PathBuf::from(V1_FREEZER))
                .filter(|r| r.join("freezer.state").exists() || r.join("tasks").exists()),
            FreezerKind::V2 => V2_ROOTS
                .iter()
                .map(PathBuf::from)
                .find(|r| r.join("cgroup.controllers").exists()),
        }
    }
}

impl Freezer {
    /// Moves `pid` (the whole thread group) into a new cgroup of `kind`'s
    /// hierarchy.
    pub fn adopt(pid: i32, kind: FreezerKind) -> Result<Self> {
        let name = format!("safemount-test-freeze-{}-{pid}", std::process::id());
        let Some(root) = kind.root() else {
            bail!("no {kind:?} cgroup freezer on this machine");
        };
        let home = match kind {
            FreezerKind::V2 => {
                let own = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
                let rel = own
                    .lines()
                    .find_map(|l| l.strip_prefix("0::"))
                    .context("no v2 line in /proc/PID/cgroup")?;
                root.join(rel.trim_start_matches('/')).join("cgroup.procs")
            }
            FreezerKind::V1 => root.join("cgroup.procs"),
        };
        let dir = root.join(name);
        std::fs::create_dir(&dir).with_context(|| format!("mkdir {}", dir.display()))?;
        let f = Self {
            dir,
            home,
            pid,
            kind,
        };
        std::fs::write(f.dir.join("cgroup.procs"), pid.to_string())
            .with_context(|| format!("move {pid} into {}", f.dir.display()))?;
        Ok(f)
    }

    pub fn kind(&self) -> FreezerKind {
        self.kind
    }

    /// Freezes every task and waits until the kernel says they are frozen.
    pub fn freeze(&self) -> Result<()> {
        self.set(true)
    }

    pub fn thaw(&self) -> Result<()> {
        self.set(false)
    }

    fn set(&self, frozen: bool) -> Result<()> {
        let (file, value, state_file, want) = if self.kind == FreezerKind::V2 {
            (
                "cgroup.freeze",
                if frozen { "1" } else { "0" },
                "cgroup.events",
                if frozen { "frozen 1" } else { "frozen 0" },
            )
        } else {
            let v = if frozen { "FROZEN" } else { "THAWED" };
            ("freezer.state", v, "freezer.state", v)
        };
        std::fs::write(self.dir.join(file), value)
            .with_context(|| format!("write {value} to {}", self.dir.join(file).display()))?;
        let state = self.dir.join(state_file);
        let reached = wait_until(Duration::from_secs(10), || {
            std::fs::read_to_string(&state).is_ok_and(|s| s.lines().any(|l| l.trim() == want))
        });
        if !reached {
            bail!("{} never reached {want:?}", state.display());
        }
        Ok(())
    }
}

impl Drop for Freezer {
    fn drop(&mut self) {
        let _ = self.thaw();
        let _ = std::fs::write(&self.home, self.pid.to_string());
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// SIGSTOP, then waits until every thread of `pid` is stopped ("T" in
/// /proc/PID/task/TID/stat).
pub fn stop(pid: i32) -> Result<()> {
    kill(Pid::from_raw(pid), Signal::SIGSTOP)?;
    let all_stopped = wait_until(Duration::from_secs(10), || {
        threads(pid).is_ok_and(|tids| {
            tids.iter()
                .all(|t| crate::procfs::task_state(pid, *t) == Some('T'))
        })
    });
    if !all_stopped {
        bail!("worker {pid} did not stop within 10 s of SIGSTOP");
    }
    Ok(())
}

pub fn cont(pid: i32) -> Result<()> {
    kill(Pid::from_raw(pid), Signal::SIGCONT)?;
    Ok(())
}

/// Attaches to every thread of `pid` as a debugger does (PTRACE_SEIZE +
/// PTRACE_INTERRUPT: each thread leaves its blocking call and stops),
/// holds them for `hold`, then detaches. Must run on one thread from
/// start to end: ptrace ties the tracees to the calling thread.
pub fn ptrace_pause(pid: i32, hold: Duration) -> Result<()> {
    let tids = threads(pid)?;
    let mut seized = Vec::new();
    let mut failure = None;
    for tid in tids {
        // SAFETY: ptrace with integer arguments and null pointers; no memory
        // of ours is passed.
        let r = unsafe {
            libc::ptrace(
                libc::PTRACE_SEIZE,
                tid,
                std::ptr::null_mut::<libc::c_void>(),
                std::ptr::null_mut::<libc::c_void>(),
            )
        };
        if r != 0 {
            let e = std::io::Error::last_os_error();
            // A thread that ended meanwhile is not an error.
            if e.raw_os_error() != Some(libc::ESRCH) {
                failure = Some(anyhow::anyhow!("PTRACE_SEIZE {tid}: {e}"));
                break;
            }
            continue;
        }
        seized.push(tid);
        // SAFETY: as above.
        let r = unsafe {
            libc::ptrace(
                libc::PTRACE_INTERRUPT,
                tid,
                std::ptr::null_mut::<libc::c_void>(),
                std::ptr::null_mut::<libc::c_void>(),
            )
        };
        if r != 0 {
            failure = Some(anyhow::anyhow!(
                "PTRACE_INTERRUPT {tid}: {}",
                std::io::Error::last_os_error()
            ));
            break;
        }
        let mut status = 0;
        // SAFETY: waitpid writes the status into our local integer.
        let w = unsafe { libc::waitpid(tid, &mut status, libc::__WALL) };
        if w != tid {
            failure = Some(anyhow::anyhow!(
                "waitpid {tid} after PTRACE_INTERRUPT: {}",
                std::io::Error::last_os_error()
            ));
            break;
        }
    }
    if failure.is_none() {
        std::thread::sleep(hold);
    }
    for tid in seized {
        // SAFETY: as above; detaching delivers no signal (data 0).
        let r = unsafe {
            libc::ptrace(
                libc::PTRACE_DETACH,
                tid,
                std::ptr::null_mut::<libc::c_void>(),
                std::ptr::null_mut::<libc::c_void>(),
            )
        };
        if r != 0 && failure.is_none() {
            failure = Some(anyhow::anyhow!(
                "PTRACE_DETACH {tid}: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// The thread ids of `pid`.
pub fn threads(pid: i32) -> Result<Vec<i32>> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/task"))?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect())
}
