//! safemount-auto: mounts a newly plugged removable disk for the user of
//! the active seat, and unmounts it when it goes away. Run by
//! `safemount-auto@DEVNAME.service` (started by the udev rule), as root:
//!
//! - `safemount-auto DEVNAME` (ExecStart): finds the user of seat0's
//!   active session through logind (`loginctl`), then asks safemountd to
//!   mount `/dev/DEVNAME` on behalf of that user (`MountFor`, honoured for
//!   root only): the mount is theirs, under `/run/media/$USER/<label>`;
//! - `safemount-auto --stop DEVNAME` (ExecStop): unmounts every safemount
//!   mount of `/dev/DEVNAME`.
//!
//! `--user UID` skips logind (for a fixed user, and for tests without a
//! seat); `--seat` picks another seat.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, anyhow, bail};
use clap::Parser;
use safemount_broker::DEFAULT_SOCKET;
use safemount_broker::client::Connection;

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Mount a removable disk for the user of the active seat (run by udev/systemd)"
)]
struct Args {
    /// The broker's socket.
    #[arg(long, env = "SAFEMOUNT_SOCKET", default_value = DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Unmount instead of mount.
    #[arg(long)]
    stop: bool,
    /// With --stop: then flush the drive and power it off, as `safemount
    /// unmount --power-off` does (a drive already unplugged is only
    /// unmounted).
    #[arg(long, requires = "stop")]
    power_off: bool,
    /// Mount for this uid instead of asking logind.
    #[arg(long)]
    user: Option<u32>,
    /// The seat whose active session's user gets the mount.
    #[arg(long, default_value = "seat0")]
    seat: String,
    /// Mount options (see safemount(1)).
    #[arg(short = 'o', long = "options", default_value = "")]
    options: String,
    /// Kernel name of the device under /dev (`sdb1`), as udev's %k / the
    /// unit's %I gives it.
    devname: String,
}

fn main() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let args = Args::parse();
    if let Err(e) = run(&args) {
        let msg: String = format!("{e:#}")
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        eprintln!("safemount-auto: {msg}");
        std::process::exit(1);
    }
}

/// `/dev/DEVNAME`, refusing anything but a plain kernel device name.
fn device_path(devname: &str) -> anyhow::Result<PathBuf> {
    let name = devname.strip_prefix("/dev/").unwrap_or(devname);
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '!'));
    if !ok {
        bail!("{devname:?} is not a kernel device name");
    }
    // The kernel writes '/' in a device name (cciss/c0d0) as '!'.
    Ok(Path::new("/dev").join(name.replace('!', "/")))
}

/// One property of a logind object, via `loginctl show-* -p P --value`.
fn loginctl(what: &str, id: &str, property: &str) -> anyhow::Result<String> {
    let out = Command::new("loginctl")
        .args([what, id, "-p", property, "--value"])
        .output()
        .context("cannot run loginctl")?;
    if !out.status.success() {
        bail!(
            "loginctl {what} {id} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// The uid of the user of `seat`'s active session.
fn active_user(seat: &str) -> anyhow::Result<u32> {
    let session = loginctl("show-seat", seat, "ActiveSession")?;
    if session.is_empty() {
        bail!("no active session on {seat}: nobody to mount for");
    }
    let user = loginctl("show-session", &session, "User")?;
    user.parse()
        .map_err(|_| anyhow!("logind gave a bad uid {user:?} for session {session}"))
}

fn run(args: &Args) -> anyhow::Result<()> {
    let dev = device_path(&args.devname)?;
    let conn = Connection::connect(&args.socket)?;
    if args.stop {
        // An unplugged drive is gone from sysfs: nothing to power off.
        let power_off = args.power_off && dev.exists();
        let gone = conn.unmount_source(&dev.to_string_lossy(), power_off)?;
        if gone.is_empty() {
            tracing::info!(device = %dev.display(), "nothing mounted");
        }
        for (m, powered) in gone {
            tracing::info!(device = %dev.display(), mountpoint = %m.display(), "unmounted");
            if let Some(p) = powered {
                tracing::info!("{}", p.describe());
            }
        }
        return Ok(());
    }
    let uid = match args.user {
        Some(uid) => uid,
        None => active_user(&args.seat)?,
    };
    let (at, _) = conn.mount_as(Some(uid), &dev, None, &args.options)?;
    tracing::info!(device = %dev.display(), uid, mountpoint = %at.display(), "mounted");
    println!("{}", at.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names() {
        assert_eq!(device_path("sdb1").unwrap(), Path::new("/dev/sdb1"));
        assert_eq!(
            device_path("/dev/mmcblk0p1").unwrap(),
            Path::new("/dev/mmcblk0p1")
        );
        assert_eq!(
            device_path("cciss!c0d0").unwrap(),
            Path::new("/dev/cciss/c0d0")
        );
        for bad in ["", "../sda", "a/b", ".x", "sd a", "x\n"] {
            assert!(device_path(bad).is_err(), "{bad:?}");
        }
    }
}
