//! Mount options and the making of `fuse.safemount` mounts.

use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;

use nix::errno::Errno;
use nix::mount::MsFlags;
use safemount_proto::ErrorKind;

use crate::lock::Locking;
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
    pub atime: Atime,
    /// `nodiratime`: listings leave directories' atimes alone.
    pub nodiratime: bool,
    /// `errors=`; None: the superblock's own error behaviour.
    pub errors: Option<Errors>,
    /// `locking=` for image files.
    pub locking: Locking,
    /// `noload`: mount without replaying the journal (read-only only).
    pub noload: bool,
    /// Quota limits enforced, by type (user, group, project): `usrquota`
    /// (or `quota`), `grpquota`, `prjquota`; `noquota` clears them. Usage
    /// is kept on a quota filesystem either way, as the kernel does.
    pub quota_limits: [bool; 3],
}

impl Default for MountOptions {
    fn default() -> Self {
        Self {
            read_only: true,
            exec: false,
            atime: Atime::Relatime,
            nodiratime: false,
            errors: None,
            locking: Locking::Auto,
            noload: false,
            quota_limits: [false; 3],
        }
    }
}

/// The atime options (the worker keeps access times: FUSE leaves them to
/// the server).
pub use safemount_proto::Atime;

/// `errors=`: what a filesystem error does (the worker acts on it).
pub use safemount_proto::Errors;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OptionsError {
    #[error(
        "unknown mount option \"{0}\" (known: ro, rw, exec, noexec, noatime, relatime, strictatime, nodiratime, diratime, lazytime, noload, usrquota, grpquota, prjquota, noquota, errors=, locking=, defaults)"
    )]
    Unknown(String),
    #[error("bad value for mount option \"{0}\"")]
    BadValue(String),
    #[error("mount option \"{0}\" takes no value")]
    UnexpectedValue(String),
    #[error("mount option \"{0}\" contains a control character")]
    ControlCharacter(String),
    #[error("mount options are too long ({0} bytes, at most 4096)")]
    TooLong(usize),
    #[error("mount option \"noload\" needs a read-only mount (add ro)")]
    NoloadNeedsReadOnly,
}

impl OptionsError {
    pub fn kind(&self) -> ErrorKind {
        ErrorKind::InvalidRequest
    }
}

/// Longest `-o` string accepted.
const MAX_OPTIONS_BYTES: usize = 4096;

/// An option's text for an error message: sanitized, at most 64 bytes.
fn named(text: &str) -> String {
    let mut name = String::new();
    for c in sanitize::display(text.as_bytes()).chars() {
        if name.len() + c.len_utf8() > 64 {
            break;
        }
        name.push(c);
    }
    name
}

/// Parses a `-o` comma list. Later options win over earlier ones, as with
/// mount(8); empty items are ignored.
///
/// - `ro`, `rw`, `exec`, `noexec` (the default), `noatime`, `relatime`
///   (the default), `strictatime`, `nodiratime`, `diratime`;
/// - `lazytime` and `nolazytime`, accepted and ignored: times are written
///   with the next journal commit either way, as without lazytime;
/// - `errors=continue|remount-ro|panic`, `locking=auto|on|off|posix`;
/// - `defaults`, and options mount(8) passes on from fstab that are for
///   mount(8) itself, accepted and ignored: `nofail`, `auto`, `noauto`,
///   `user`, `users`, `nouser`, `_netdev`, and `x-*` (with any value);
/// - `nosuid` and `nodev` are accepted (they are always in force);
///   `suid`, `dev` and anything else are refused, naming the option, as is
///   a value where none belongs, a bad value, and any control character
///   (newline, NUL...).
pub fn parse_options(text: &str) -> Result<MountOptions, OptionsError> {
    if text.len() > MAX_OPTIONS_BYTES {
        return Err(OptionsError::TooLong(text.len()));
    }
    let mut opts = MountOptions::default();
    for item in text.split(',') {
        let item = item.trim_matches(' ');
        if item.chars().any(char::is_control) {
            return Err(OptionsError::ControlCharacter(named(item)));
        }
        let (key, value) = match item.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (item, None),
        };
        if key.starts_with("x-") {
            continue;
        }
        match (key, value) {
            ("", None) => {}
            ("errors", Some(v)) => {
                opts.errors = Some(match v {
                    "continue" => Errors::Continue,
                    "remount-ro" => Errors::RemountRo,
                    "panic" => Errors::Panic,
                    _ => return Err(OptionsError::BadValue(named(item))),
                });
            }
            ("locking", Some(v)) => {
                opts.locking =
                    Locking::parse(v).ok_or_else(|| OptionsError::BadValue(named(item)))?;
            }
            ("errors" | "locking", None) => return Err(OptionsError::BadValue(named(item))),
            (
                "defaults" | "nofail" | "auto" | "noauto" | "user" | "users" | "nouser" | "_netdev"
                | "nosuid" | "nodev",
                None,
            ) => {}
            ("ro", None) => opts.read_only = true,
            ("rw", None) => opts.read_only = false,
            ("exec", None) => opts.exec = true,
            ("noexec", None) => opts.exec = false,
            ("noatime", None) => opts.atime = Atime::NoAtime,
            ("noload" | "norecovery", None) => opts.noload = true,
            ("relatime", None) => opts.atime = Atime::Relatime,
            ("strictatime", None) => opts.atime = Atime::StrictAtime,
            ("nodiratime", None) => opts.nodiratime = true,
            ("diratime", None) => opts.nodiratime = false,
            ("lazytime" | "nolazytime", None) => {}
            ("usrquota" | "quota", None) => opts.quota_limits[0] = true,
            ("grpquota", None) => opts.quota_limits[1] = true,
            ("prjquota", None) => opts.quota_limits[2] = true,
            ("noquota", None) => opts.quota_limits = [false; 3],
            (
                "defaults" | "nofail" | "auto" | "noauto" | "user" | "users" | "nouser" | "_netdev"
                | "nosuid" | "nodev" | "ro" | "rw" | "exec" | "noexec" | "noatime" | "relatime"
                | "strictatime" | "nodiratime" | "diratime" | "lazytime" | "nolazytime" | "noload"
                | "norecovery" | "usrquota" | "quota" | "grpquota" | "prjquota" | "noquota",
                Some(_),
            ) => return Err(OptionsError::UnexpectedValue(named(key))),
            _ => return Err(OptionsError::Unknown(named(item))),
        }
    }
    if opts.noload && !opts.read_only {
        return Err(OptionsError::NoloadNeedsReadOnly);
    }
    Ok(opts)
}

impl MountOptions {
    /// The mount(2) flags: always nosuid and nodev; noexec unless `exec`;
    /// read-only if `read_only` (the final decision, which may differ
    /// from `self.read_only`); the atime options as asked.
    pub fn flags(&self, read_only: bool) -> MsFlags {
        let mut flags = mount_flags(read_only, self.exec);
        flags |= match self.atime {
            Atime::NoAtime => MsFlags::MS_NOATIME,
            Atime::Relatime => MsFlags::MS_RELATIME,
            Atime::StrictAtime => MsFlags::MS_STRICTATIME,
        };
        if self.nodiratime {
            flags |= MsFlags::MS_NODIRATIME;
        }
        flags
    }
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

/// The FUSE mount parameters, as (key, value) for fsconfig(2); a `None`
/// value is a flag. `uid`/`gid` are the caller's: the kernel gives them the
/// files and, with `default_permissions`, enforces modes.
pub fn fuse_params(fuse_fd: i32, uid: u32, gid: u32) -> Vec<(&'static str, Option<String>)> {
    vec![
        ("subtype", Some(SUBTYPE.to_owned())),
        ("fd", Some(fuse_fd.to_string())),
        ("rootmode", Some("40000".to_owned())),
        ("user_id", Some(uid.to_string())),
        ("group_id", Some(gid.to_string())),
        ("default_permissions", None),
        ("allow_other", None),
    ]
}

/// The part of [`FSTYPE`] after "fuse.".
const SUBTYPE: &str = "safemount";

/// Makes a `fuse.safemount` mount that is not attached anywhere yet
/// (fsopen, fsconfig, fsmount): it exists only as the returned fd until
/// [`attach`], and dies with that fd. So the broker can record the mount's
/// identity before any path reaches it: a broker killed between the two
/// steps leaves either nothing or a mount its record names.
pub fn create_fuse(
    source: &str,
    fuse: BorrowedFd<'_>,
    flags: MsFlags,
    uid: u32,
    gid: u32,
) -> Result<OwnedFd, Errno> {
    use rustix::mount as m;
    let errno = |e: rustix::io::Errno| Errno::from_raw(e.raw_os_error());
    let fs = m::fsopen("fuse", m::FsOpenFlags::FSOPEN_CLOEXEC).map_err(errno)?;
    m::fsconfig_set_string(&fs, "source", sanitize::mount_source(source)).map_err(errno)?;
    for (key, value) in fuse_params(fuse.as_raw_fd(), uid, gid) {
        match value {
            Some(v) => m::fsconfig_set_string(&fs, key, v),
            None => m::fsconfig_set_flag(&fs, key),
        }
        .map_err(errno)?;
    }
    if flags.contains(MsFlags::MS_RDONLY) {
        m::fsconfig_set_flag(&fs, "ro").map_err(errno)?;
    }
    m::fsconfig_create(&fs).map_err(errno)?;
    m::fsmount(&fs, m::FsMountFlags::FSMOUNT_CLOEXEC, attr_flags(flags)).map_err(errno)
}

/// The per-mount attributes of `flags` (what mount(2) takes as MS_*).
fn attr_flags(flags: MsFlags) -> rustix::mount::MountAttrFlags {
    use rustix::mount::MountAttrFlags as A;
    [
        (MsFlags::MS_RDONLY, A::MOUNT_ATTR_RDONLY),
        (MsFlags::MS_NOSUID, A::MOUNT_ATTR_NOSUID),
        (MsFlags::MS_NODEV, A::MOUNT_ATTR_NODEV),
        (MsFlags::MS_NOEXEC, A::MOUNT_ATTR_NOEXEC),
        (MsFlags::MS_NOATIME, A::MOUNT_ATTR_NOATIME),
        (MsFlags::MS_RELATIME, A::MOUNT_ATTR_RELATIME),
        (MsFlags::MS_STRICTATIME, A::MOUNT_ATTR_STRICTATIME),
        (MsFlags::MS_NODIRATIME, A::MOUNT_ATTR_NODIRATIME),
    ]
    .into_iter()
    .filter(|(ms, _)| flags.contains(*ms))
    .fold(A::empty(), |acc, (_, attr)| acc | attr)
}

/// Attaches the detached mount `mount` on the pinned directory `target`
/// (an O_PATH fd): a path swapped after validation cannot redirect it.
pub fn attach(mount: BorrowedFd<'_>, target: BorrowedFd<'_>) -> Result<(), Errno> {
    use rustix::mount::MoveMountFlags as F;
    rustix::mount::move_mount(
        mount,
        "",
        target,
        "",
        F::MOVE_MOUNT_F_EMPTY_PATH | F::MOVE_MOUNT_T_EMPTY_PATH,
    )
    .map_err(|e| Errno::from_raw(e.raw_os_error()))
}

// Unmounting and detaching go through `mounted::MountRef`, never a path.

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
        assert_eq!(d, MountOptions::default());
        assert!(d.read_only && !d.exec);
        assert_eq!(d.locking, Locking::Auto);
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
        let o = parse_options(" rw , exec ,").unwrap();
        assert!(!o.read_only && o.exec);
    }

    #[test]
    fn quota_options() {
        assert_eq!(parse_options("rw").unwrap().quota_limits, [false; 3]);
        assert_eq!(
            parse_options("usrquota,prjquota").unwrap().quota_limits,
            [true, false, true]
        );
        assert_eq!(
            parse_options("quota,grpquota").unwrap().quota_limits,
            [true, true, false]
        );
        assert_eq!(
            parse_options("usrquota,grpquota,noquota")
                .unwrap()
                .quota_limits,
            [false; 3]
        );
        for bad in ["usrquota=1", "noquota=x", "jqfmt=vfsv1"] {
            assert!(parse_options(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn values() {
        let o = parse_options("errors=remount-ro,locking=posix,noatime").unwrap();
        assert_eq!(o.errors, Some(Errors::RemountRo));
        assert_eq!(o.locking, Locking::Posix);
        assert_eq!(o.atime, Atime::NoAtime);
        assert_eq!(parse_options("relatime").unwrap().atime, Atime::Relatime);
        assert_eq!(
            parse_options("errors=panic").unwrap().errors,
            Some(Errors::Panic)
        );
        assert_eq!(
            parse_options("locking=off,locking=on").unwrap().locking,
            Locking::On
        );
        for bad in [
            "errors=",
            "errors",
            "errors=x",
            "locking=yes",
            "errors=continue=1",
        ] {
            assert!(
                matches!(parse_options(bad), Err(OptionsError::BadValue(_))),
                "{bad}"
            );
        }
        assert_eq!(
            parse_options("ro=1").unwrap_err(),
            OptionsError::UnexpectedValue("ro".into())
        );
        assert_eq!(
            parse_options("nofail=yes").unwrap_err().to_string(),
            "mount option \"nofail\" takes no value"
        );
    }

    #[test]
    fn noload_is_read_only_only() {
        assert!(parse_options("ro,noload").unwrap().noload);
        assert!(parse_options("norecovery").unwrap().noload);
        assert_eq!(
            parse_options("rw,noload").unwrap_err(),
            OptionsError::NoloadNeedsReadOnly
        );
        assert_eq!(
            parse_options("noload=1").unwrap_err(),
            OptionsError::UnexpectedValue("noload".into())
        );
    }

    #[test]
    fn fstab_only_options_are_ignored() {
        let o = parse_options("ro,nofail,noauto,auto,user,users,_netdev,x-systemd.automount,x-gvfs-show,x-a=b,nosuid,nodev").unwrap();
        assert_eq!(o, MountOptions::default());
    }

    #[test]
    fn control_characters_and_length() {
        for bad in ["ro\n", "errors=continue\0", "x-foo\nrw", "\x1b"] {
            assert!(
                matches!(parse_options(bad), Err(OptionsError::ControlCharacter(_))),
                "{bad:?}"
            );
        }
        assert!(matches!(
            parse_options(&"ro,".repeat(2000)),
            Err(OptionsError::TooLong(6000))
        ));
    }

    #[test]
    fn unknown_option_is_named() {
        let e = parse_options("ro,suid").unwrap_err();
        assert_eq!(e, OptionsError::Unknown("suid".into()));
        assert!(e.to_string().contains("\"suid\""));
        assert_eq!(e.kind(), ErrorKind::InvalidRequest);
        for bad in ["dev", "loop", "uid=0", "user_id=0", "fd=3", "allow_other"] {
            assert!(
                matches!(parse_options(bad), Err(OptionsError::Unknown(_))),
                "{bad}"
            );
        }
        // Hostile option text is capped.
        let e = parse_options(&format!("x{}", "y".repeat(500))).unwrap_err();
        let OptionsError::Unknown(name) = e else {
            panic!("{e:?}")
        };
        assert!(name.len() <= 64);
    }

    #[test]
    fn atime_flags() {
        let o = parse_options("noatime").unwrap();
        assert!(
            o.flags(true)
                .contains(MsFlags::MS_NOATIME | MsFlags::MS_RDONLY)
        );
        let o = parse_options("relatime,rw").unwrap();
        assert!(o.flags(false).contains(MsFlags::MS_RELATIME));
        assert!(!o.flags(false).contains(MsFlags::MS_RDONLY));
        let o = parse_options("strictatime,nodiratime,lazytime").unwrap();
        assert_eq!((o.atime, o.nodiratime), (Atime::StrictAtime, true));
        assert!(
            o.flags(false)
                .contains(MsFlags::MS_STRICTATIME | MsFlags::MS_NODIRATIME)
        );
        assert!(!parse_options("nodiratime,diratime").unwrap().nodiratime);
        assert_eq!(parse_options("").unwrap().atime, Atime::Relatime);
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
    fn fuse_parameters() {
        let shown: Vec<String> = fuse_params(7, 1000, 100)
            .into_iter()
            .map(|(k, v)| v.map_or(k.to_owned(), |v| format!("{k}={v}")))
            .collect();
        assert_eq!(
            shown.join(","),
            "subtype=safemount,fd=7,rootmode=40000,user_id=1000,group_id=100,default_permissions,allow_other"
        );
        assert_eq!(format!("fuse.{SUBTYPE}"), FSTYPE);
    }

    #[test]
    fn attributes_follow_the_flags() {
        use rustix::mount::MountAttrFlags as A;
        let ro = attr_flags(mount_flags(true, false) | MsFlags::MS_NOATIME);
        assert_eq!(
            ro,
            A::MOUNT_ATTR_RDONLY
                | A::MOUNT_ATTR_NOSUID
                | A::MOUNT_ATTR_NODEV
                | A::MOUNT_ATTR_NOEXEC
                | A::MOUNT_ATTR_NOATIME
        );
        let rw_exec = attr_flags(mount_flags(false, true));
        assert_eq!(rw_exec, A::MOUNT_ATTR_NOSUID | A::MOUNT_ATTR_NODEV);
    }
}
