//! The worker's seccomp policy: ONE table, [`POLICY`], of
//! `(syscall, argument condition, action, reason)`. Everything not in the
//! table kills the whole process (SECCOMP_RET_KILL_PROCESS, seen as SIGSYS).
//! Debug and release builds install the same filter.
//!
//! seccompiler gives a filter one match action, so the table is compiled
//! into two stacked filters: one that returns the table's errnos for the
//! "denied but harmless" entries and allows everything else, and the
//! allowlist proper (default: kill), in which those errno entries are
//! allowed. The kernel runs both and takes the more restrictive answer
//! (ERRNO beats ALLOW), so an errno entry yields its errno and anything
//! absent from the table still kills.
//!
//! Found by running the real worker (mount, `ls -R`, `cat`, `getfattr`,
//! unmount) under strace and under this filter; each reason says who makes
//! the call.

use std::collections::BTreeMap;

use seccompiler::{
    SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule,
    TargetArch,
};

use super::SandboxError;

/// What a matching call gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Allow,
    /// Fail with this errno instead of killing (harmless denials only).
    Errno(i32),
}

/// The value an argument is compared with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Value {
    Const(u64),
    /// The worker's own pid, known when the filter is built.
    OwnPid,
}

/// One argument check; all checks of an entry must hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Low 32 bits of argument `arg` equal `value`.
    Eq { arg: u8, value: Value },
    /// `arg & mask == value` on the low 32 bits.
    Masked { arg: u8, mask: u64, value: u64 },
}

#[derive(Debug, Clone, Copy)]
pub struct Entry {
    pub name: &'static str,
    pub nr: i64,
    pub checks: &'static [Check],
    pub action: Action,
    pub reason: &'static str,
}

const fn allow(
    name: &'static str,
    nr: i64,
    checks: &'static [Check],
    reason: &'static str,
) -> Entry {
    Entry {
        name,
        nr,
        checks,
        action: Action::Allow,
        reason,
    }
}

const fn eq(arg: u8, value: u64) -> Check {
    Check::Eq {
        arg,
        value: Value::Const(value),
    }
}

/// BLKGETSIZE64 = _IOR(0x12, 114, size_t) on 64-bit Linux (not in libc).
pub const BLKGETSIZE64: u64 = 0x8008_1272;
/// BLKSSZGET = _IO(0x12, 104).
pub const BLKSSZGET: u64 = 0x1268;

/// Threads only: every flag a pthread needs, and no namespace flag.
const CLONE_THREAD_REQUIRED: u64 = (libc::CLONE_VM
    | libc::CLONE_FS
    | libc::CLONE_FILES
    | libc::CLONE_SIGHAND
    | libc::CLONE_THREAD) as u64;
const CLONE_FORBIDDEN: u64 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWCGROUP
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET
    | libc::CLONE_VFORK) as u64;
const PROT_EXEC: u64 = libc::PROT_EXEC as u64;

/// The allowlist. Order does not matter; several entries for one syscall
/// mean "any of these".
pub const POLICY: &[Entry] = &[
    // I/O on the fds the worker holds.
    allow(
        "read",
        libc::SYS_read,
        &[],
        "fuser reads each request from /dev/fuse",
    ),
    allow("write", libc::SYS_write, &[], "log lines to stderr"),
    allow(
        "writev",
        libc::SYS_writev,
        &[],
        "fuser sends every FUSE reply with writev",
    ),
    allow(
        "pread64",
        libc::SYS_pread64,
        &[],
        "device reads (FdDevice::read_at)",
    ),
    allow(
        "pwrite64",
        libc::SYS_pwrite64,
        &[],
        "device writes (FdDevice::write_at)",
    ),
    allow(
        "lseek",
        libc::SYS_lseek,
        &[],
        "FdDevice::new learns the device size with SEEK_END",
    ),
    allow(
        "fsync",
        libc::SYS_fsync,
        &[],
        "BlockDevice::flush makes writes durable",
    ),
    allow(
        "fdatasync",
        libc::SYS_fdatasync,
        &[],
        "data-only flush of the device",
    ),
    allow(
        "fcntl",
        libc::SYS_fcntl,
        &[eq(1, libc::F_GETFL as u64)],
        "FdDevice::enable_direct_io reads the fd flags",
    ),
    allow(
        "fcntl",
        libc::SYS_fcntl,
        &[eq(1, libc::F_SETFL as u64)],
        "FdDevice::enable_direct_io sets O_DIRECT for MMP",
    ),
    allow(
        "fcntl",
        libc::SYS_fcntl,
        &[eq(1, libc::F_GETFD as u64)],
        "debug builds check an OwnedFd is open when dropping it",
    ),
    allow(
        "ioctl",
        libc::SYS_ioctl,
        &[eq(1, BLKGETSIZE64)],
        "block device size",
    ),
    allow(
        "ioctl",
        libc::SYS_ioctl,
        &[eq(1, BLKSSZGET)],
        "block device logical sector size",
    ),
    allow(
        "close",
        libc::SYS_close,
        &[],
        "dropping fds (the socket after Serving, fds received in error)",
    ),
    allow(
        "recvmsg",
        libc::SYS_recvmsg,
        &[],
        "broker messages and their fds (WorkerRequest::Serve)",
    ),
    allow(
        "sendmsg",
        libc::SYS_sendmsg,
        &[],
        "replies to the broker (Probed, Refused, Serving)",
    ),
    // Memory.
    allow(
        "mmap",
        libc::SYS_mmap,
        &[Check::Masked {
            arg: 2,
            mask: PROT_EXEC,
            value: 0,
        }],
        "allocator and thread stacks; never executable",
    ),
    allow(
        "mprotect",
        libc::SYS_mprotect,
        &[Check::Masked {
            arg: 2,
            mask: PROT_EXEC,
            value: 0,
        }],
        "thread stack guard pages, malloc arenas; never executable",
    ),
    allow("munmap", libc::SYS_munmap, &[], "allocator, thread stacks"),
    allow("mremap", libc::SYS_mremap, &[], "realloc of large buffers"),
    allow(
        "madvise",
        libc::SYS_madvise,
        &[],
        "glibc returns freed thread stacks and arena memory",
    ),
    allow("brk", libc::SYS_brk, &[], "malloc's main heap"),
    // Threads.
    allow(
        "clone",
        libc::SYS_clone,
        &[Check::Masked {
            arg: 0,
            mask: CLONE_THREAD_REQUIRED | CLONE_FORBIDDEN,
            value: CLONE_THREAD_REQUIRED,
        }],
        "threads only (fuser's session threads, the engine's MMP thread): CLONE_THREAD|VM|FS|FILES|SIGHAND set, no namespace or vfork flag",
    ),
    Entry {
        name: "clone3",
        nr: libc::SYS_clone3,
        checks: &[],
        action: Action::Errno(libc::ENOSYS),
        reason: "std spawns threads with clone3 first; its flags live in memory seccomp cannot read, so answer ENOSYS and glibc falls back to clone",
    },
    allow(
        "futex",
        libc::SYS_futex,
        &[],
        "mutexes, condvars, thread join",
    ),
    allow(
        "set_robust_list",
        libc::SYS_set_robust_list,
        &[],
        "glibc registers each new thread's robust futex list",
    ),
    allow(
        "rseq",
        libc::SYS_rseq,
        &[],
        "glibc registers restartable sequences for each new thread",
    ),
    allow(
        "sched_yield",
        libc::SYS_sched_yield,
        &[],
        "spin loops in locks",
    ),
    allow(
        "sched_getaffinity",
        libc::SYS_sched_getaffinity,
        &[],
        "glibc sizes malloc arenas by the CPUs the thread may run on",
    ),
    allow(
        "prctl",
        libc::SYS_prctl,
        &[eq(0, libc::PR_SET_NAME as u64)],
        "std names each spawned thread (fuser-N)",
    ),
    allow(
        "gettid",
        libc::SYS_gettid,
        &[],
        "abort() and logging find the current thread",
    ),
    allow(
        "getpid",
        libc::SYS_getpid,
        &[],
        "abort() signals its own process",
    ),
    allow(
        "geteuid",
        libc::SYS_geteuid,
        &[],
        "fuser's Session::from_fd records the session owner",
    ),
    allow(
        "tgkill",
        libc::SYS_tgkill,
        &[Check::Eq {
            arg: 0,
            value: Value::OwnPid,
        }],
        "abort() raises SIGABRT on itself; only the worker's own pid",
    ),
    allow("exit", libc::SYS_exit, &[], "a thread ends"),
    allow("exit_group", libc::SYS_exit_group, &[], "the worker ends"),
    // Signals.
    allow(
        "rt_sigaction",
        libc::SYS_rt_sigaction,
        &[],
        "std's stack-overflow handler; abort() resets SIGABRT",
    ),
    allow(
        "rt_sigprocmask",
        libc::SYS_rt_sigprocmask,
        &[],
        "pthread_create and abort() block signals",
    ),
    allow(
        "rt_sigreturn",
        libc::SYS_rt_sigreturn,
        &[],
        "returning from a signal handler",
    ),
    allow(
        "restart_syscall",
        libc::SYS_restart_syscall,
        &[],
        "the kernel itself makes a thread call it to resume a timed wait (futex with a timeout: condvar wait_timeout; clock_nanosleep) that a freeze, SIGSTOP/SIGCONT or a debugger's attach interrupted; it only resumes the interrupted call, whose own entry allowed it",
    ),
    allow(
        "sigaltstack",
        libc::SYS_sigaltstack,
        &[],
        "std installs and removes each thread's signal stack",
    ),
    // Time and randomness.
    allow(
        "clock_gettime",
        libc::SYS_clock_gettime,
        &[],
        "timestamps when the vDSO is unavailable",
    ),
    allow(
        "clock_nanosleep",
        libc::SYS_clock_nanosleep,
        &[],
        "thread::sleep (MMP interval)",
    ),
    allow("getrandom", libc::SYS_getrandom, &[], "std HashMap seeds"),
];

fn cmp(check: &Check, pid: u64) -> Result<SeccompCondition, SandboxError> {
    let (arg, op, value) = match *check {
        Check::Eq { arg, value } => (
            arg,
            SeccompCmpOp::Eq,
            match value {
                Value::Const(v) => v,
                Value::OwnPid => pid,
            },
        ),
        Check::Masked { arg, mask, value } => (arg, SeccompCmpOp::MaskedEq(mask), value),
    };
    // Dword: every value checked here is a 32-bit quantity (flags, commands,
    // pids), and the kernel ignores the upper half for these arguments.
    SeccompCondition::new(arg, SeccompCmpArgLen::Dword, op, value)
        .map_err(|e| SandboxError::SeccompBuild(e.to_string()))
}

fn rule(entry: &Entry, pid: u64) -> Result<Option<SeccompRule>, SandboxError> {
    if entry.checks.is_empty() {
        // seccompiler: an empty rule chain matches unconditionally.
        return Ok(None);
    }
    let conds = entry
        .checks
        .iter()
        .map(|c| cmp(c, pid))
        .collect::<Result<Vec<_>, _>>()?;
    SeccompRule::new(conds)
        .map(Some)
        .map_err(|e| SandboxError::SeccompBuild(e.to_string()))
}

/// Adds `entry` to `map`: an unconditional entry makes the syscall's chain
/// empty (match always), overriding conditional ones.
fn add(
    map: &mut BTreeMap<i64, Option<Vec<SeccompRule>>>,
    entry: &Entry,
    pid: u64,
) -> Result<(), SandboxError> {
    let r = rule(entry, pid)?;
    let slot = map.entry(entry.nr).or_insert_with(|| Some(Vec::new()));
    match (r, slot.as_mut()) {
        (None, _) => *slot = None,
        (Some(r), Some(rules)) => rules.push(r),
        (Some(_), None) => {}
    }
    Ok(())
}

fn finish(map: BTreeMap<i64, Option<Vec<SeccompRule>>>) -> BTreeMap<i64, Vec<SeccompRule>> {
    map.into_iter()
        .map(|(nr, rules)| (nr, rules.unwrap_or_default()))
        .collect()
}

fn arch() -> Result<TargetArch, SandboxError> {
    TargetArch::try_from(std::env::consts::ARCH)
        .map_err(|e| SandboxError::SeccompBuild(e.to_string()))
}

/// Compiles [`POLICY`] into BPF programs, in installation order: one errno
/// filter per distinct errno, then the allowlist.
pub fn compile(pid: u32) -> Result<Vec<seccompiler::BpfProgram>, SandboxError> {
    let pid = u64::from(pid);
    let build = |e: seccompiler::BackendError| SandboxError::SeccompBuild(e.to_string());
    let mut programs = Vec::new();

    let mut errnos: Vec<i32> = POLICY
        .iter()
        .filter_map(|e| match e.action {
            Action::Errno(n) => Some(n),
            Action::Allow => None,
        })
        .collect();
    errnos.sort_unstable();
    errnos.dedup();
    for errno in errnos {
        let mut map = BTreeMap::new();
        for e in POLICY.iter().filter(|e| e.action == Action::Errno(errno)) {
            add(&mut map, e, pid)?;
        }
        let errno = u32::try_from(errno)
            .map_err(|_| SandboxError::SeccompBuild(format!("bad errno {errno}")))?;
        let filter = SeccompFilter::new(
            finish(map),
            SeccompAction::Allow,
            SeccompAction::Errno(errno),
            arch()?,
        )
        .map_err(build)?;
        programs.push(filter.try_into().map_err(build)?);
    }

    // The allowlist: every entry, errno ones included (the errno filter
    // above gives them their errno).
    let mut map = BTreeMap::new();
    for e in POLICY {
        add(&mut map, e, pid)?;
    }
    let filter = SeccompFilter::new(
        finish(map),
        SeccompAction::KillProcess,
        SeccompAction::Allow,
        arch()?,
    )
    .map_err(build)?;
    programs.push(filter.try_into().map_err(build)?);
    Ok(programs)
}

/// Step 11: installs the policy on the (single) calling thread. TSYNC makes
/// the kernel refuse if any other thread existed with a different filter.
pub fn install() -> Result<(), SandboxError> {
    let programs = compile(std::process::id())?;
    for program in &programs {
        seccompiler::apply_filter_all_threads(program)
            .map_err(|e| SandboxError::SeccompInstall(e.to_string()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_entry_has_a_reason() {
        for e in POLICY {
            assert!(!e.reason.trim().is_empty(), "{} has no reason", e.name);
            assert!(!e.name.is_empty());
        }
    }

    #[test]
    fn forbidden_calls_are_absent() {
        for nr in [
            libc::SYS_openat,
            libc::SYS_execve,
            libc::SYS_execveat,
            libc::SYS_socket,
            libc::SYS_connect,
            libc::SYS_ptrace,
            libc::SYS_mount,
            libc::SYS_kill,
            libc::SYS_unshare,
            libc::SYS_setns,
            libc::SYS_pivot_root,
            libc::SYS_seccomp,
            libc::SYS_bpf,
            libc::SYS_process_vm_writev,
            libc::SYS_io_uring_setup,
            libc::SYS_userfaultfd,
        ] {
            assert!(
                POLICY.iter().all(|e| e.nr != nr),
                "syscall {nr} must not be in the policy"
            );
        }
    }

    #[test]
    fn exec_memory_and_fork_are_conditioned() {
        for name in [
            "mmap", "mprotect", "clone", "fcntl", "ioctl", "prctl", "tgkill",
        ] {
            assert!(
                POLICY
                    .iter()
                    .filter(|e| e.name == name)
                    .all(|e| !e.checks.is_empty()),
                "{name} must carry an argument condition"
            );
        }
    }

    #[test]
    fn compiles_for_this_arch() {
        let progs = compile(1234).expect("policy compiles");
        assert_eq!(
            progs.len(),
            2,
            "one errno filter (ENOSYS) and the allowlist"
        );
        assert!(progs.iter().all(|p| !p.is_empty()));
    }
}
