//! The client side: connect, greet, send one request, read the reply.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileTypeExt;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{OFlag, open};
use nix::sys::socket::{AddressFamily, SockFlag, SockType, UnixAddr, connect, socket};
use nix::sys::stat::Mode;
use safemount_proto::{
    BrokerReply, ClientRequest, ErrorKind, MountInfo, MountSource, PROTOCOL_VERSION, ProtoError,
};

/// Exit codes of `safemount`, one per failure class.
pub mod exit {
    /// Success.
    pub const OK: i32 = 0;
    /// The broker hit an internal error.
    pub const INTERNAL: i32 = 1;
    /// Bad command line (clap's own code).
    pub const USAGE: i32 = 2;
    /// The broker found the request invalid (bad option, not a directory...).
    pub const INVALID_REQUEST: i32 = 3;
    pub const NOT_AUTHORIZED: i32 = 4;
    /// Device, image or mount point busy or already mounted.
    pub const BUSY: i32 = 5;
    /// The filesystem was refused (corrupt, unsupported feature...).
    pub const REFUSED: i32 = 6;
    /// Source or mount point not found, or not mounted by safemount.
    pub const NOT_FOUND: i32 = 7;
    /// Cannot reach the broker, or it spoke nonsense.
    pub const NO_BROKER: i32 = 8;
    /// The client could not open or inspect the source itself.
    pub const LOCAL: i32 = 9;
}

/// The exit code for a broker error of `kind`.
pub fn exit_code(kind: ErrorKind) -> i32 {
    match kind {
        ErrorKind::InvalidRequest => exit::INVALID_REQUEST,
        ErrorKind::NotAuthorized => exit::NOT_AUTHORIZED,
        ErrorKind::Busy => exit::BUSY,
        ErrorKind::Refused => exit::REFUSED,
        ErrorKind::NotFound => exit::NOT_FOUND,
        ErrorKind::Internal => exit::INTERNAL,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to safemountd at {path}: {errno}")]
    Connect { path: String, errno: Errno },
    #[error("talking to safemountd: {0}")]
    Proto(#[from] ProtoError),
    #[error("unexpected reply from safemountd")]
    Unexpected,
    #[error("{message}")]
    Broker { kind: ErrorKind, message: String },
    #[error("{0} is neither a regular file nor a block device")]
    NotImage(String),
    #[error("{what} {path}: {error}")]
    Local {
        what: &'static str,
        path: String,
        error: std::io::Error,
    },
}

impl ClientError {
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::Connect { .. } | Self::Proto(_) | Self::Unexpected => exit::NO_BROKER,
            Self::Broker { kind, .. } => exit_code(*kind),
            Self::NotImage(_) => exit::INVALID_REQUEST,
            Self::Local { error, .. } if error.kind() == std::io::ErrorKind::NotFound => {
                exit::NOT_FOUND
            }
            Self::Local { .. } => exit::LOCAL,
        }
    }
}

/// A greeted connection to the broker.
#[derive(Debug)]
pub struct Connection {
    sock: OwnedFd,
}

impl Connection {
    pub fn connect(path: &Path) -> Result<Self, ClientError> {
        let err = |errno| ClientError::Connect {
            path: path.display().to_string(),
            errno,
        };
        let sock = socket(
            AddressFamily::Unix,
            SockType::SeqPacket,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .map_err(err)?;
        let addr = UnixAddr::new(path).map_err(err)?;
        connect(sock.as_raw_fd(), &addr).map_err(err)?;
        let conn = Self { sock };
        match conn.request(
            &ClientRequest::Hello {
                version: PROTOCOL_VERSION,
            },
            &[],
        )? {
            BrokerReply::Hello { .. } => Ok(conn),
            _ => Err(ClientError::Unexpected),
        }
    }

    /// Sends one request and returns the reply; a broker error becomes
    /// [`ClientError::Broker`]. Waits the broker announces are shown on
    /// stderr.
    pub fn request(
        &self,
        req: &ClientRequest,
        fds: &[BorrowedFd<'_>],
    ) -> Result<BrokerReply, ClientError> {
        safemount_proto::send(self.sock.as_fd(), req, fds)?;
        // A long list comes in parts, the last one as `Mounts`.
        let mut parts = Vec::new();
        let reply = loop {
            match safemount_proto::recv::<BrokerReply>(self.sock.as_fd(), 0)? {
                (BrokerReply::Waiting { seconds, reason }, _) => {
                    // A mount that must wait (multi-mount protection) says
                    // so; the answer follows.
                    eprintln!(
                        "safemount: {} (up to {seconds} s)",
                        crate::sanitize::display(reason.as_bytes())
                    );
                }
                (BrokerReply::MountsPart(part), _) => parts.extend(part),
                (BrokerReply::Mounts(last), _) => {
                    parts.extend(last);
                    break BrokerReply::Mounts(parts);
                }
                (reply, _) => break reply,
            }
        };
        match reply {
            BrokerReply::Error { kind, message } => Err(ClientError::Broker {
                kind,
                message: crate::sanitize::display(message.as_bytes()),
            }),
            other => Ok(other),
        }
    }

    /// `safemount mount`: a block device is named by path and opened by
    /// the broker; anything else is opened here, with the caller's rights,
    /// and passed as an fd. Without a mount point the broker picks
    /// `/run/media/$USER/<label>`. Returns the mount point and the label.
    pub fn mount(
        &self,
        source: &Path,
        mountpoint: Option<&Path>,
        options: &str,
    ) -> Result<(PathBuf, String), ClientError> {
        self.mount_as(None, source, mountpoint, options)
    }

    /// Like [`Connection::mount`], on behalf of user `for_uid` if given
    /// (the broker allows that to root only).
    pub fn mount_as(
        &self,
        for_uid: Option<u32>,
        source: &Path,
        mountpoint: Option<&Path>,
        options: &str,
    ) -> Result<(PathBuf, String), ClientError> {
        let local = |what, error| ClientError::Local {
            what,
            path: source.display().to_string(),
            error,
        };
        let meta = std::fs::metadata(source).map_err(|e| local("cannot access", e))?;
        if !meta.file_type().is_block_device() && !meta.is_file() {
            return Err(ClientError::NotImage(source.display().to_string()));
        }
        let read_only = wants_read_only(options);
        let mountpoint = match mountpoint {
            Some(m) => Some(absolute(m).map_err(|error| ClientError::Local {
                what: "cannot resolve",
                path: m.display().to_string(),
                error,
            })?),
            None => None,
        };
        let request = |source: MountSource| match for_uid {
            None => ClientRequest::Mount {
                source,
                mountpoint: mountpoint.clone(),
                options: options.to_owned(),
            },
            Some(uid) => ClientRequest::MountFor {
                uid,
                source,
                mountpoint: mountpoint.clone(),
                options: options.to_owned(),
            },
        };
        let reply = if meta.file_type().is_block_device() {
            let dev = source
                .canonicalize()
                .map_err(|e| local("cannot resolve", e))?;
            self.request(&request(MountSource::Device(dev)), &[])?
        } else {
            let access = if read_only {
                OFlag::O_RDONLY
            } else {
                OFlag::O_RDWR
            };
            // O_NONBLOCK so a FIFO swapped in after the stat above cannot
            // hang us; it is cleared again once fstat says regular file.
            let fd = open(
                source,
                access | OFlag::O_CLOEXEC | OFlag::O_NOCTTY | OFlag::O_NONBLOCK,
                Mode::empty(),
            )
            .map_err(|e| local("cannot open", std::io::Error::from(e)))?;
            let st = nix::sys::stat::fstat(&fd)
                .map_err(|e| local("cannot inspect", std::io::Error::from(e)))?;
            let fmt = nix::sys::stat::SFlag::from_bits_truncate(st.st_mode)
                & nix::sys::stat::SFlag::S_IFMT;
            if fmt != nix::sys::stat::SFlag::S_IFREG {
                return Err(ClientError::NotImage(source.display().to_string()));
            }
            nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_SETFL(OFlag::empty()))
                .map_err(|e| local("cannot set flags on", std::io::Error::from(e)))?;
            let display_name = source
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "image".to_owned());
            self.request(&request(MountSource::Fd { display_name }), &[fd.as_fd()])?
        };
        match reply {
            BrokerReply::Mounted { mountpoint, label } => Ok((mountpoint, label)),
            _ => Err(ClientError::Unexpected),
        }
    }

    /// Unmounts every mount whose source is `source` (as the broker
    /// records it: a device's canonical path or an image's path)
    /// that the caller may see; returns their mount points.
    /// With `power_off`, each is unmounted with [`Self::unmount_power_off`]
    /// (a device is mounted once, so that is one request).
    pub fn unmount_source(
        &self,
        source: &str,
        power_off: bool,
    ) -> Result<Vec<(PathBuf, Option<PoweredOff>)>, ClientError> {
        let mut done = Vec::new();
        for m in self.list()? {
            if m.source == source {
                let result = if power_off {
                    Some(self.power_off_at(m.mountpoint.clone())?)
                } else {
                    self.unmount_at(m.mountpoint.clone())?;
                    None
                };
                done.push((m.mountpoint, result));
            }
        }
        Ok(done)
    }

    pub fn unmount(&self, mountpoint: &Path) -> Result<(), ClientError> {
        self.unmount_at(mounted_path(mountpoint)?)
    }

    /// `safemount unmount --power-off`: unmounts, then flushes and powers
    /// off the drive (see [`ClientRequest::UnmountPowerOff`]).
    pub fn unmount_power_off(&self, mountpoint: &Path) -> Result<PoweredOff, ClientError> {
        self.power_off_at(mounted_path(mountpoint)?)
    }

    fn unmount_at(&self, mountpoint: PathBuf) -> Result<(), ClientError> {
        match self.request(&ClientRequest::Unmount { mountpoint }, &[])? {
            BrokerReply::Unmounted => Ok(()),
            _ => Err(ClientError::Unexpected),
        }
    }

    fn power_off_at(&self, mountpoint: PathBuf) -> Result<PoweredOff, ClientError> {
        match self.request(&ClientRequest::UnmountPowerOff { mountpoint }, &[])? {
            BrokerReply::PoweredOff { drive, powered_off } => Ok(PoweredOff {
                drive: crate::sanitize::display(drive.as_bytes()),
                powered_off,
            }),
            _ => Err(ClientError::Unexpected),
        }
    }

    pub fn list(&self) -> Result<Vec<MountInfo>, ClientError> {
        match self.request(&ClientRequest::List, &[])? {
            BrokerReply::Mounts(m) => Ok(m),
            _ => Err(ClientError::Unexpected),
        }
    }
}

/// What `unmount --power-off` did to the drive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoweredOff {
    /// `/dev/<disk>`.
    pub drive: String,
    /// False: the drive has no way to be powered off; it was flushed.
    pub powered_off: bool,
}

impl PoweredOff {
    /// One line for the user.
    pub fn describe(&self) -> String {
        if self.powered_off {
            format!("{} is powered off; it can be unplugged", self.drive)
        } else {
            format!(
                "{} is flushed but cannot be powered off (it is neither a USB nor a SCSI drive); it can be unplugged",
                self.drive
            )
        }
    }
}

/// A mount point as the broker recorded it (see [`absolute_no_follow`]).
fn mounted_path(mountpoint: &Path) -> Result<PathBuf, ClientError> {
    absolute_no_follow(mountpoint).map_err(|error| ClientError::Local {
        what: "cannot resolve",
        path: mountpoint.display().to_string(),
        error,
    })
}

/// The client's reading of `-o`, to open an image with the right access:
/// the last of `ro`/`rw` wins, read-only by default (the broker validates
/// the whole string).
pub fn wants_read_only(options: &str) -> bool {
    let mut ro = true;
    for item in options.split(',') {
        match item.trim() {
            "ro" => ro = true,
            "rw" => ro = false,
            _ => {}
        }
    }
    ro
}

/// The mount point as an absolute, resolved path (it is not mounted yet,
/// so resolving it cannot block).
fn absolute(path: &Path) -> std::io::Result<PathBuf> {
    path.canonicalize()
}

/// An absolute path for a mount point that is mounted: the parent is
/// resolved, the last component is not (resolving it would enter the
/// mounted filesystem).
fn absolute_no_follow(path: &Path) -> std::io::Result<PathBuf> {
    let joined = if path.is_absolute() {
        path.to_owned()
    } else {
        std::env::current_dir()?.join(path)
    };
    // Lexical clean-up first, so "mnt/" and "mnt/." name the mount point.
    let mut clean = PathBuf::new();
    for c in joined.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                clean.pop();
            }
            other => clean.push(other),
        }
    }
    match (clean.parent(), clean.file_name()) {
        (Some(parent), Some(name)) => Ok(parent.canonicalize()?.join(name)),
        _ => Ok(clean),
    }
}

/// Formats `list` output as a table.
pub fn format_table(mounts: &[MountInfo], owner_name: impl Fn(u32) -> String) -> String {
    let mut rows = vec![[
        "SOURCE".to_owned(),
        "MOUNTPOINT".to_owned(),
        "OWNER".to_owned(),
        "STATE".to_owned(),
        "PID".to_owned(),
        "ERROR".to_owned(),
    ]];
    for m in mounts {
        rows.push([
            crate::sanitize::display(m.source.as_bytes()),
            crate::sanitize::display(m.mountpoint.as_os_str().as_encoded_bytes()),
            owner_name(m.owner_uid),
            format!("{:?}{}", m.state, if m.read_only { " (ro)" } else { "" }).to_lowercase(),
            m.worker_pid.to_string(),
            m.error
                .as_deref()
                .map(|e| crate::sanitize::display(e.as_bytes()))
                .unwrap_or_default(),
        ]);
    }
    let mut widths = [0usize; 6];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in &rows {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(widths).enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}  "));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use safemount_proto::MountState;

    #[test]
    fn read_only_reading() {
        assert!(wants_read_only(""));
        assert!(wants_read_only("ro"));
        assert!(!wants_read_only("rw"));
        assert!(!wants_read_only("ro,exec,rw"));
    }

    #[test]
    fn exit_codes_are_distinct() {
        let kinds = [
            ErrorKind::InvalidRequest,
            ErrorKind::NotAuthorized,
            ErrorKind::Busy,
            ErrorKind::Refused,
            ErrorKind::NotFound,
            ErrorKind::Internal,
        ];
        let mut codes: Vec<i32> = kinds.iter().map(|k| exit_code(*k)).collect();
        codes.push(exit::NO_BROKER);
        codes.push(exit::USAGE);
        codes.push(exit::LOCAL);
        let n = codes.len();
        codes.sort();
        codes.dedup();
        assert_eq!(codes.len(), n);
        assert!(!codes.contains(&exit::OK));
    }

    #[test]
    fn table() {
        let m = MountInfo {
            source: "disk.img".into(),
            mountpoint: "/mnt/x".into(),
            owner_uid: 0,
            label: "L".into(),
            read_only: true,
            state: MountState::Mounted,
            worker_pid: 42,
            error: None,
        };
        let failed = MountInfo {
            mountpoint: "/mnt/y".into(),
            error: Some("device write at byte 4096 failed: I/O error\x1b[31m".into()),
            ..m.clone()
        };
        let t = format_table(&[m, failed], |_| "root".into());
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("SOURCE    MOUNTPOINT  OWNER  STATE"));
        assert!(lines[0].ends_with("PID  ERROR"));
        assert!(lines[1].contains("disk.img") && lines[1].contains("mounted (ro)"));
        assert!(lines[1].ends_with("42"));
        assert!(
            lines[2].ends_with("42   device write at byte 4096 failed: I/O error[31m"),
            "{}",
            lines[2]
        );
    }

    #[test]
    fn unmount_path_is_not_resolved_at_the_end() {
        let p = absolute_no_follow(Path::new("/tmp/./x/../y/")).unwrap();
        assert_eq!(p, Path::new("/tmp").canonicalize().unwrap().join("y"));
    }
}
