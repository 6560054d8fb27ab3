//! Mount options, mount(2) and umount2(2) for `fuse.safemount`.

use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::Path;

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};
use safemount_proto::ErrorKind;

use crate::sanitize;

/// The filesystem type every safemount mount has.
pub const FSTYPE: &str = "fuse.safemount";

/// What `-o` asked for.
///
/// Default (no `-o`, or neither `ro` nor `rw` given): read-only. The ext4
/// engine starts out read-only, so `rw` must be asked for explicitly; it is
/// passed through to the worker, which decides (and may answer that it will
/// only serve reads, in which case the mount is read-only too).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MountOptions {
    pub read_only: bool,
    /// Allow executing files (clears MS_NOEXEC).
    pub exec: bool,
}

impl Default for MountOptions {
    fn default() -> Self {
        Self {
            read_only: true,
            exec: false,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OptionsError {
    #[error("unknown mount option \"{0}\" (known: ro, rw, exec, noexec, defaults)")]
    Unknown(String),
}

impl OptionsError {
    pub fn kind(&self) -> ErrorKind {
        ErrorKind::InvalidRequest
    }
}

/// Parses a `-o` comma list. Known options: `ro`, `rw`, `exec`, `noexec`,
/// `defaults` (no effect). Later options win over earlier ones, as with
/// mount(8); empty items are ignored. Anything else is an error naming it.
pub fn parse_options(text: &str) -> Result<MountOptions, OptionsError> {
    let mut opts = MountOptions::default();
    for item in text.split(',') {
        match item.trim() {
            "" | "defaults" => {}
            "ro" => opts.read_only = true,
            "rw" => opts.read_only = false,
            "exec" => opts.exec = true,
            "noexec" => opts.exec = false,
            other => {
                let mut name = String::new();
                for c in sanitize::display(other.as_bytes()).chars() {
                    if name.len() + c.len_utf8() > 64 {
                        break;
                    }
                    name.push(c);
                }
                return Err(OptionsError::Unknown(name));
            }
        }
    }
    Ok(opts)
}

/// The mount(2) flags for `opts`: always nosuid and nodev; noexec unless
/// `exec`; read-only if `read_only`.
pub fn mount_flags(read_only: bool, exec: bool) -> MsFlags {
    let mut flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    if !exec {
        flags |= MsFlags::MS_NOEXEC;
    }
    if read_only {
        flags |= MsFlags::MS_RDONLY;
    }
    flags
}

/// The FUSE mount data string. `uid`/`gid` are the caller's: the kernel
/// gives them the files and, with `default_permissions`, enforces modes.
pub fn fuse_data(fuse_fd: i32, uid: u32, gid: u32) -> String {
    format!(
        "fd={fuse_fd},rootmode=40000,user_id={uid},group_id={gid},default_permissions,allow_other"
    )
}

/// Mounts `fuse.safemount` on the pinned directory `target` (an O_PATH fd),
/// through `/proc/self/fd/N` so a path swapped after validation cannot
/// redirect the mount.
pub fn mount_fuse(
    target: BorrowedFd<'_>,
    source: &str,
    fuse: BorrowedFd<'_>,
    flags: MsFlags,
    uid: u32,
    gid: u32,
) -> Result<(), Errno> {
    let target_path = format!("/proc/self/fd/{}", target.as_raw_fd());
    let data = fuse_data(fuse.as_raw_fd(), uid, gid);
    let source = sanitize::mount_source(source);
    nix::mount::mount(
        Some(source.as_str()),
        target_path.as_str(),
        Some(FSTYPE),
        flags,
        Some(data.as_str()),
    )
}

/// Plain unmount: fails with EBUSY while files are open on it.
pub fn unmount(path: &Path) -> Result<(), Errno> {
    nix::mount::umount2(path, MntFlags::UMOUNT_NOFOLLOW)
}

/// Lazy unmount after aborting the FUSE connection `fuse_dev` (the mount's
/// st_dev, whose minor names the connection in fusectl) so that nothing
/// blocks on a dead worker.
pub fn detach(path: &Path, fuse_dev: Option<(u32, u32)>) -> Result<(), Errno> {
    if let Some((_, minor)) = fuse_dev {
        abort_connection(minor);
    }
    nix::mount::umount2(path, MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW)
}

const FUSECTL: &str = "/sys/fs/fuse/connections";

/// Writes "1" to `/sys/fs/fuse/connections/<minor>/abort`: every pending
/// and future request on that connection fails with ENOTCONN instead of
/// waiting for a worker that will never answer. Best effort, logged.
pub fn abort_connection(minor: u32) {
    let path = format!("{FUSECTL}/{minor}/abort");
    if let Err(e) = std::fs::write(&path, b"1") {
        tracing::debug!(path, error = %e, "cannot abort FUSE connection");
    }
}

/// Makes sure fusectl is mounted so [`abort_connection`] can work. Best
/// effort: logs and carries on if it cannot.
pub fn ensure_fusectl() {
    let probe = Path::new(FUSECTL);
    if !probe.is_dir() {
        tracing::warn!("{FUSECTL} does not exist; hung FUSE connections cannot be aborted");
        return;
    }
    match crate::mountpoint::read_mountinfo() {
        Ok(entries) if entries.iter().any(|e| e.fstype == "fusectl") => return,
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot read /proc/self/mountinfo"),
    }
    if let Err(e) = nix::mount::mount(
        Some("fusectl"),
        FUSECTL,
        Some("fusectl"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    ) {
        tracing::warn!(error = %e, "cannot mount fusectl on {FUSECTL}; hung FUSE connections cannot be aborted");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_read_only_noexec() {
        let d = parse_options("").unwrap();
        assert_eq!(
            d,
            MountOptions {
                read_only: true,
                exec: false
            }
        );
        assert_eq!(parse_options("defaults").unwrap(), d);
    }

    #[test]
    fn ro_rw_exec() {
        assert!(parse_options("ro").unwrap().read_only);
        assert!(!parse_options("rw").unwrap().read_only);
        assert!(parse_options("rw,ro").unwrap().read_only);
        assert!(!parse_options("ro,rw").unwrap().read_only);
        assert!(parse_options("exec").unwrap().exec);
        assert!(!parse_options("exec,noexec").unwrap().exec);
        assert_eq!(
            parse_options(" rw , exec ,").unwrap(),
            MountOptions {
                read_only: false,
                exec: true
            }
        );
    }

    #[test]
    fn unknown_option_is_named() {
        let e = parse_options("ro,suid").unwrap_err();
        assert_eq!(e, OptionsError::Unknown("suid".into()));
        assert!(e.to_string().contains("\"suid\""));
        assert_eq!(e.kind(), ErrorKind::InvalidRequest);
        // Hostile option text is sanitized and capped.
        let e = parse_options(&format!("x\x1b{}", "y".repeat(500))).unwrap_err();
        let OptionsError::Unknown(name) = e;
        assert!(name.len() <= 64);
        assert!(!name.contains('\x1b'));
    }

    #[test]
    fn flags() {
        let ro = mount_flags(true, false);
        assert!(ro.contains(MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV));
        assert!(ro.contains(MsFlags::MS_NOEXEC));
        let rw_exec = mount_flags(false, true);
        assert!(!rw_exec.contains(MsFlags::MS_RDONLY));
        assert!(!rw_exec.contains(MsFlags::MS_NOEXEC));
        assert!(rw_exec.contains(MsFlags::MS_NOSUID | MsFlags::MS_NODEV));
    }

    #[test]
    fn data_string() {
        assert_eq!(
            fuse_data(7, 1000, 100),
            "fd=7,rootmode=40000,user_id=1000,group_id=100,default_permissions,allow_other"
        );
    }
}
