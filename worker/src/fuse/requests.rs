//! How many requests of each kind the kernel sent: counted as they arrive,
//! logged once at unmount ("FUSE requests: lookup=... create=..."), where
//! `bench/requests.sh` reads them to show what each file operation costs
//! in round trips. Counting before cutting: a request the kernel did not
//! need shows up here first.

use std::sync::atomic::{AtomicU64, Ordering};

/// The kinds of request the adapter serves, in the order the log lists
/// them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Op {
    Lookup,
    Forget,
    Getattr,
    Setattr,
    Readlink,
    Mknod,
    Mkdir,
    Unlink,
    Rmdir,
    Symlink,
    Rename,
    Link,
    Open,
    Read,
    Write,
    Statfs,
    Release,
    Fsync,
    Setxattr,
    Getxattr,
    Listxattr,
    Removexattr,
    Flush,
    Opendir,
    Readdir,
    Readdirplus,
    Releasedir,
    Fsyncdir,
    Access,
    Create,
    Ioctl,
    Fallocate,
    Lseek,
}

const ALL: [Op; 33] = [
    Op::Lookup,
    Op::Forget,
    Op::Getattr,
    Op::Setattr,
    Op::Readlink,
    Op::Mknod,
    Op::Mkdir,
    Op::Unlink,
    Op::Rmdir,
    Op::Symlink,
    Op::Rename,
    Op::Link,
    Op::Open,
    Op::Read,
    Op::Write,
    Op::Statfs,
    Op::Release,
    Op::Fsync,
    Op::Setxattr,
    Op::Getxattr,
    Op::Listxattr,
    Op::Removexattr,
    Op::Flush,
    Op::Opendir,
    Op::Readdir,
    Op::Readdirplus,
    Op::Releasedir,
    Op::Fsyncdir,
    Op::Access,
    Op::Create,
    Op::Ioctl,
    Op::Fallocate,
    Op::Lseek,
];

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Lookup => "lookup",
            Op::Forget => "forget",
            Op::Getattr => "getattr",
            Op::Setattr => "setattr",
            Op::Readlink => "readlink",
            Op::Mknod => "mknod",
            Op::Mkdir => "mkdir",
            Op::Unlink => "unlink",
            Op::Rmdir => "rmdir",
            Op::Symlink => "symlink",
            Op::Rename => "rename",
            Op::Link => "link",
            Op::Open => "open",
            Op::Read => "read",
            Op::Write => "write",
            Op::Statfs => "statfs",
            Op::Release => "release",
            Op::Fsync => "fsync",
            Op::Setxattr => "setxattr",
            Op::Getxattr => "getxattr",
            Op::Listxattr => "listxattr",
            Op::Removexattr => "removexattr",
            Op::Flush => "flush",
            Op::Opendir => "opendir",
            Op::Readdir => "readdir",
            Op::Readdirplus => "readdirplus",
            Op::Releasedir => "releasedir",
            Op::Fsyncdir => "fsyncdir",
            Op::Access => "access",
            Op::Create => "create",
            Op::Ioctl => "ioctl",
            Op::Fallocate => "fallocate",
            Op::Lseek => "lseek",
        }
    }
}

/// One counter per request kind.
pub(super) struct RequestCounts {
    counts: [AtomicU64; ALL.len()],
}

impl Default for RequestCounts {
    fn default() -> Self {
        RequestCounts {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl RequestCounts {
    pub(super) fn count(&self, r: Op) {
        if let Some(c) = self.counts.get(r as usize) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// "lookup=3 create=2 ...": the kinds that came, in a fixed order.
    pub(super) fn summary(&self) -> String {
        let parts: Vec<String> = ALL
            .iter()
            .zip(&self.counts)
            .map(|(r, c)| (r.name(), c.load(Ordering::Relaxed)))
            .filter(|(_, n)| *n > 0)
            .map(|(name, n)| format!("{name}={n}"))
            .collect();
        if parts.is_empty() {
            "none".into()
        } else {
            parts.join(" ")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_in_order() {
        let c = RequestCounts::default();
        assert_eq!(c.summary(), "none");
        c.count(Op::Create);
        c.count(Op::Lookup);
        c.count(Op::Lookup);
        c.count(Op::Lseek);
        assert_eq!(c.summary(), "lookup=2 create=1 lseek=1");
        // Every kind has its own slot, in ALL's order.
        for (i, r) in ALL.iter().enumerate() {
            assert_eq!(*r as usize, i, "{r:?}");
        }
    }
}
