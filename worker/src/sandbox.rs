//! The worker's sandbox: the steps of DESIGN.md ("The worker sandbox, in
//! this order") as one ordered function, [`enter`], one error variant per
//! step. This is the only module of the worker with `unsafe`.
//!
//! The order, and why:
//! 1. refuse to run with more than one thread (seccomp and Landlock below
//!    only bind the calling thread);
//! 2. close every fd but the ones the caller keeps, clear the environment;
//! 3. while still root: unshare mount, network, IPC, UTS and cgroup
//!    namespaces (the cgroup one after the broker has put the worker in
//!    its own cgroup, which it does before sending Start),
//!    make `/` private, mount an empty read-only tmpfs, `pivot_root` into it
//!    and detach the old root;
//! 4. `setrlimit`: no core dumps, few fds;
//! 5. drop the capability bounding set, the ambient and the inheritable
//!    sets. This needs CAP_SETPCAP, so it must come *before* the uid change,
//!    which empties the permitted and effective sets;
//! 6. `setgroups([])`, `setresgid`, `setresuid` to the dedicated user;
//! 7. clear the effective and permitted sets (already empty after step 6,
//!    done explicitly anyway) and verify that all five sets are empty;
//! 8. `PR_SET_DUMPABLE 0`, 9. `PR_SET_NO_NEW_PRIVS 1`;
//! 10. Landlock: every filesystem and network right handled, abstract unix
//!     sockets and signals scoped, no rule added (best effort: old kernels
//!     enforce less, and the report says what);
//! 11. seccomp: the allowlist of [`seccomp_policy`], killing the process on
//!     anything else.
//!
//! Only after [`enter`] returns may the caller read the device or start a
//! thread.

pub mod seccomp_policy;
pub mod selftest;

use std::os::fd::RawFd;

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;
use nix::sys::resource::Resource;
use nix::unistd::{Gid, Uid};
use safemount_proto::SandboxReport;

/// Where the empty root is mounted before `pivot_root`. `/proc` exists on
/// every system this runs on (step 1 reads it) and is a directory; the
/// mount only shadows it inside the worker's private mount namespace.
const NEW_ROOT: &str = "/proc";

/// Options of the empty root: as small as tmpfs allows, nothing can be
/// created in it anyway (it is mounted read-only).
const NEW_ROOT_OPTIONS: &str = "size=4096,nr_inodes=16,mode=0555";

/// RLIMIT_NOFILE: the worker holds stderr, the broker socket, the device and
/// `/dev/fuse`, plus Landlock's transient ruleset fd. 16 leaves room for
/// std internals without letting a bug hoard descriptors.
pub const MAX_FDS: u64 = 16;

/// Highest capability number probed when dropping the bounding set; the
/// kernel answers EINVAL past its last capability, so unknown future
/// capabilities are dropped too.
const MAX_CAP: u32 = 63;

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("sandbox: cannot count threads: {0}")]
    ThreadCount(String),
    #[error("sandbox: {0} threads running, the sandbox needs exactly one")]
    NotSingleThreaded(u64),
    #[error("sandbox: refusing to run as uid {uid} gid {gid} (root is not a sandbox user)")]
    RootIds { uid: u32, gid: u32 },
    #[error("sandbox: closing inherited fds failed: {0}")]
    CloseFds(Errno),
    #[error("sandbox: unshare(mount, net, ipc, uts, cgroup) failed: {0}")]
    Unshare(Errno),
    #[error("sandbox: making / private failed: {0}")]
    MakePrivate(Errno),
    #[error("sandbox: mounting the empty root on {NEW_ROOT} failed: {0}")]
    MountEmptyRoot(Errno),
    #[error("sandbox: pivot_root into the empty root failed: {0}")]
    PivotRoot(Errno),
    #[error("sandbox: detaching the old root failed: {0}")]
    DetachOldRoot(Errno),
    #[error("sandbox: setrlimit({0}) failed: {1}")]
    Rlimit(&'static str, Errno),
    #[error("sandbox: dropping the capability bounding set failed: {0}")]
    BoundingSet(Errno),
    #[error("sandbox: clearing the ambient and inheritable capabilities failed: {0}")]
    InheritableCaps(String),
    #[error("sandbox: setgroups([]) failed: {0}")]
    Setgroups(Errno),
    #[error("sandbox: setresgid({0}) failed: {1}")]
    Setresgid(u32, Errno),
    #[error("sandbox: setresuid({0}) failed: {1}")]
    Setresuid(u32, Errno),
    #[error("sandbox: clearing capabilities failed: {0}")]
    Capabilities(String),
    #[error("sandbox: PR_SET_DUMPABLE 0 failed: {0}")]
    Dumpable(Errno),
    #[error("sandbox: PR_SET_NO_NEW_PRIVS failed: {0}")]
    NoNewPrivs(Errno),
    #[error("sandbox: Landlock failed: {0}")]
    Landlock(String),
    #[error("sandbox: building the seccomp filter failed: {0}")]
    SeccompBuild(String),
    #[error("sandbox: installing the seccomp filter failed: {0}")]
    SeccompInstall(String),
}

/// What to keep and whom to become.
#[derive(Debug, Clone)]
pub struct Config<'a> {
    /// The unprivileged user and group the worker runs as (never 0).
    pub uid: u32,
    pub gid: u32,
    /// The only fds that survive step 2 (stderr, the broker socket, the
    /// device); every other fd is closed.
    pub keep_fds: &'a [RawFd],
}

/// Runs every step in order; returns what was enforced. Any error leaves
/// the process half-sandboxed: the caller must exit.
pub fn enter(config: &Config<'_>) -> Result<SandboxReport, SandboxError> {
    check_single_threaded()?;
    if config.uid == 0 || config.gid == 0 {
        return Err(SandboxError::RootIds {
            uid: config.uid,
            gid: config.gid,
        });
    }
    close_other_fds(config.keep_fds)?;
    clear_environment();
    enter_empty_root()?;
    set_rlimits()?;
    drop_bounding_and_inheritable_caps()?;
    switch_ids(config.uid, config.gid)?;
    clear_and_verify_caps()?;
    nix::sys::prctl::set_dumpable(false).map_err(SandboxError::Dumpable)?;
    nix::sys::prctl::set_no_new_privs().map_err(SandboxError::NoNewPrivs)?;
    let landlock = restrict_landlock()?;
    seccomp_policy::install()?;
    Ok(SandboxReport {
        landlock,
        seccomp: true,
        namespaces: true,
    })
}

/// Step 1. seccomp without TSYNC and Landlock bind only the calling thread,
/// so a second thread would escape both.
fn check_single_threaded() -> Result<(), SandboxError> {
    let status = std::fs::read_to_string("/proc/self/status")
        .map_err(|e| SandboxError::ThreadCount(e.to_string()))?;
    let threads = status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .ok_or_else(|| SandboxError::ThreadCount("no Threads: line".into()))?;
    if threads != 1 {
        return Err(SandboxError::NotSingleThreaded(threads));
    }
    Ok(())
}

/// Step 2a: closes every fd not in `keep` with close_range(2) over the gaps.
fn close_other_fds(keep: &[RawFd]) -> Result<(), SandboxError> {
    let mut keep: Vec<u32> = keep
        .iter()
        .filter_map(|&fd| u32::try_from(fd).ok())
        .collect();
    keep.sort_unstable();
    keep.dedup();
    let mut first: u32 = 0;
    for &k in &keep {
        if k > first {
            close_range(first, k - 1)?;
        }
        first = k.saturating_add(1);
    }
    close_range(first, u32::MAX)
}

fn close_range(first: u32, last: u32) -> Result<(), SandboxError> {
    // SAFETY: close_range only closes descriptors. At this point the process
    // is single-threaded (checked in step 1) and nothing in it owns an fd in
    // these ranges except objects that are never used again (std's stdin and
    // stdout handles write nothing: logs go to stderr, which is kept).
    let rc = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            libc::c_uint::from(first),
            libc::c_uint::from(last),
            0 as libc::c_uint,
        )
    };
    if rc != 0 {
        return Err(SandboxError::CloseFds(Errno::last()));
    }
    Ok(())
}

/// Step 2b.
fn clear_environment() {
    // SAFETY: clearenv is not thread-safe; the process is single-threaded
    // (step 1) and nothing holds a pointer into the environment.
    unsafe {
        libc::clearenv();
    }
}

/// Step 3: private namespaces and an empty, read-only root.
fn enter_empty_root() -> Result<(), SandboxError> {
    nix::sched::unshare(
        CloneFlags::CLONE_NEWNS
            | CloneFlags::CLONE_NEWNET
            | CloneFlags::CLONE_NEWIPC
            | CloneFlags::CLONE_NEWUTS
            | CloneFlags::CLONE_NEWCGROUP,
    )
    .map_err(SandboxError::Unshare)?;
    nix::mount::mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(SandboxError::MakePrivate)?;
    nix::mount::mount(
        Some("safemount-empty"),
        NEW_ROOT,
        Some("tmpfs"),
        MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some(NEW_ROOT_OPTIONS),
    )
    .map_err(SandboxError::MountEmptyRoot)?;
    nix::unistd::chdir(NEW_ROOT).map_err(SandboxError::PivotRoot)?;
    // pivot_root(".", "."): the old root ends up stacked on the new one and
    // is detached below; no directory inside the (read-only) new root needed.
    nix::unistd::pivot_root(".", ".").map_err(SandboxError::PivotRoot)?;
    nix::mount::umount2(".", MntFlags::MNT_DETACH).map_err(SandboxError::DetachOldRoot)?;
    nix::unistd::chdir("/").map_err(SandboxError::DetachOldRoot)?;
    Ok(())
}

/// Step 4. RLIMIT_NPROC is deliberately not set: it counts every process
/// and thread of the *real uid*, and all workers share one user, so any
/// small limit would make a worker fail to start its FUSE threads once a
/// few mounts exist. Forking is impossible anyway (seccomp allows clone only
/// with CLONE_THREAD).
fn set_rlimits() -> Result<(), SandboxError> {
    nix::sys::resource::setrlimit(Resource::RLIMIT_CORE, 0, 0)
        .map_err(|e| SandboxError::Rlimit("RLIMIT_CORE", e))?;
    nix::sys::resource::setrlimit(Resource::RLIMIT_NOFILE, MAX_FDS, MAX_FDS)
        .map_err(|e| SandboxError::Rlimit("RLIMIT_NOFILE", e))?;
    Ok(())
}

/// Step 5, still with CAP_SETPCAP.
fn drop_bounding_and_inheritable_caps() -> Result<(), SandboxError> {
    for cap in 0..=MAX_CAP {
        // SAFETY: PR_CAPBSET_DROP takes an integer and touches no memory.
        let rc = unsafe {
            libc::prctl(
                libc::PR_CAPBSET_DROP,
                libc::c_ulong::from(cap),
                0 as libc::c_ulong,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
            )
        };
        if rc != 0 {
            match Errno::last() {
                // Past the kernel's last capability.
                Errno::EINVAL => break,
                e => return Err(SandboxError::BoundingSet(e)),
            }
        }
    }
    caps::clear(None, caps::CapSet::Ambient)
        .map_err(|e| SandboxError::InheritableCaps(e.to_string()))?;
    caps::clear(None, caps::CapSet::Inheritable)
        .map_err(|e| SandboxError::InheritableCaps(e.to_string()))?;
    Ok(())
}

/// Step 6.
fn switch_ids(uid: u32, gid: u32) -> Result<(), SandboxError> {
    nix::unistd::setgroups(&[]).map_err(SandboxError::Setgroups)?;
    let g = Gid::from_raw(gid);
    nix::unistd::setresgid(g, g, g).map_err(|e| SandboxError::Setresgid(gid, e))?;
    let u = Uid::from_raw(uid);
    nix::unistd::setresuid(u, u, u).map_err(|e| SandboxError::Setresuid(uid, e))?;
    Ok(())
}

/// Step 7.
fn clear_and_verify_caps() -> Result<(), SandboxError> {
    use caps::CapSet;
    let err = |e: caps::errors::CapsError| SandboxError::Capabilities(e.to_string());
    caps::clear(None, CapSet::Effective).map_err(err)?;
    caps::clear(None, CapSet::Permitted).map_err(err)?;
    caps::clear(None, CapSet::Inheritable).map_err(err)?;
    for set in [
        CapSet::Effective,
        CapSet::Permitted,
        CapSet::Inheritable,
        CapSet::Ambient,
        CapSet::Bounding,
    ] {
        let left = caps::read(None, set).map_err(err)?;
        if !left.is_empty() {
            return Err(SandboxError::Capabilities(format!(
                "{set:?} set still holds {left:?}"
            )));
        }
    }
    // caps only knows the capabilities of its own release: check the
    // bounding set by number too.
    for cap in 0..=MAX_CAP {
        // SAFETY: PR_CAPBSET_READ takes an integer and touches no memory.
        let rc = unsafe {
            libc::prctl(
                libc::PR_CAPBSET_READ,
                libc::c_ulong::from(cap),
                0 as libc::c_ulong,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
            )
        };
        match rc {
            0 => {}
            1 => {
                return Err(SandboxError::Capabilities(format!(
                    "capability {cap} is still in the bounding set"
                )));
            }
            _ => break,
        }
    }
    Ok(())
}

/// Step 10: deny every filesystem and network access right this crate
/// knows (the crate clamps to what the kernel supports), scope abstract
/// unix sockets and signals, add no rule. Returns the report line.
fn restrict_landlock() -> Result<String, SandboxError> {
    use landlock::{
        ABI, Access, AccessFs, AccessNet, LandlockStatus, Ruleset, RulesetAttr, RulesetStatus,
        Scope,
    };
    let err = |e: landlock::RulesetError| SandboxError::Landlock(e.to_string());
    // The newest ABI this pinned crate knows; BestEffort (the default)
    // drops what the running kernel lacks.
    let abi = ABI::V9;
    let status = Ruleset::default()
        .handle_access(AccessFs::from_all(abi))
        .map_err(err)?
        .handle_access(AccessNet::from_all(abi))
        .map_err(err)?
        .scope(Scope::from_all(abi))
        .map_err(err)?
        .create()
        .map_err(err)?
        .restrict_self()
        .map_err(err)?;
    let level = match status.ruleset {
        RulesetStatus::FullyEnforced => "full",
        RulesetStatus::PartiallyEnforced => "partial",
        RulesetStatus::NotEnforced => "not enforced",
    };
    let abi = match status.landlock {
        LandlockStatus::Available {
            effective_abi,
            kernel_abi: Some(k),
        } => format!("ABI {} (kernel ABI {k})", effective_abi as i32),
        LandlockStatus::Available {
            effective_abi,
            kernel_abi: None,
        } => format!("ABI {}", effective_abi as i32),
        LandlockStatus::NotEnabled => "disabled in the kernel".to_owned(),
        LandlockStatus::NotImplemented => "not built into the kernel".to_owned(),
    };
    Ok(format!("{level} ({abi})"))
}

/// Takes ownership of an fd the process inherited at exec (the broker
/// socket, fd 3), after checking that it is open. Callable once per fd
/// number; later calls get None.
pub fn take_inherited_fd(fd: RawFd) -> Option<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    use std::sync::Mutex;
    static TAKEN: Mutex<Vec<RawFd>> = Mutex::new(Vec::new());
    let mut taken = TAKEN.lock().ok()?;
    if fd < 0 || taken.contains(&fd) {
        return None;
    }
    // SAFETY: F_GETFD only reads the descriptor's flags.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return None;
    }
    taken.push(fd);
    // SAFETY: `fd` is open (checked above), was inherited across exec, and
    // nothing else in this process owns it: std never touches fds above 2,
    // and `TAKEN` ensures it is wrapped only once.
    Some(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}
