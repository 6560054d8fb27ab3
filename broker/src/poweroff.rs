//! `safemount unmount --power-off`: after the unmount, flush the drive a
//! block-device mount came from and power it off, as `udisksctl
//! power-off` does. Before anything is unmounted, the drive is checked:
//! no other partition of it (nor the whole disk) may be mounted, by the
//! kernel or by safemount, or held (device-mapper, md), and it may not
//! hold `/`. After the unmount every block device of the drive is opened
//! `O_EXCL` (so no other program still uses it) and fsync'd (the page
//! cache written and the drive's write cache flushed), and then the drive
//! is removed from the system through sysfs: the USB device's `remove`
//! attribute (the port is switched off) or, for any other SCSI disk, the
//! SCSI device's `delete` (the sd driver syncs its cache and stops it).
//! A drive that has neither (an SD card in a built-in reader, a loop
//! device) is flushed and left in place: it is safe to pull.

use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{OFlag, open};
use nix::sys::stat::{Mode, SFlag, fstat};
use safemount_proto::ErrorKind;

use crate::device::{self, DeviceInfo, SysPaths, split_dev};
use crate::mountpoint::MountEntry;
use crate::sanitize;

/// At most this many sysfs levels are climbed looking for the USB device.
const MAX_SYSFS_DEPTH: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum PowerOffError {
    #[error("{0} is not a block device: there is no drive to power off")]
    NotADrive(String),
    #[error("cannot power off {drive}: {why}")]
    InUse { drive: String, why: String },
    #[error(
        "cannot power off {drive}: {part} is mounted by safemount at {mountpoint}; unmount it first"
    )]
    SafemountMounted {
        drive: String,
        part: String,
        mountpoint: String,
    },
    #[error("unmounted, but cannot flush {device}: {errno}")]
    Flush { device: String, errno: Errno },
    #[error("unmounted and flushed, but cannot power off {drive}: writing {attribute}: {error}")]
    Sysfs {
        drive: String,
        attribute: String,
        error: std::io::Error,
    },
}

impl PowerOffError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::NotADrive(_) => ErrorKind::InvalidRequest,
            Self::InUse { .. } | Self::SafemountMounted { .. } => ErrorKind::Busy,
            Self::Flush { errno, .. } if *errno == Errno::EBUSY => ErrorKind::Busy,
            Self::Flush { .. } | Self::Sysfs { .. } => ErrorKind::Internal,
        }
    }
}

/// How a drive leaves the system.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Method {
    /// Write `1` to the USB device's `remove` attribute.
    UsbRemove(PathBuf),
    /// Write `1` to the SCSI device's `delete` attribute.
    ScsiDelete(PathBuf),
    /// Neither: flush only.
    None,
}

/// The drive behind one block device.
#[derive(Debug, Clone)]
pub struct Drive {
    /// The whole disk.
    pub disk: DeviceInfo,
    /// The whole disk and its partitions: (device number, kernel name).
    pub parts: Vec<((u32, u32), String)>,
    pub method: Method,
}

impl Drive {
    /// `/dev/<disk>`, for messages.
    pub fn shown(&self) -> String {
        format!("/dev/{}", self.disk.name.replace('!', "/"))
    }
}

/// The drive holding block device `dev`, as sysfs (under `paths`) sees it.
pub fn drive_of(paths: &SysPaths, dev: (u32, u32), shown: &str) -> Result<Drive, PowerOffError> {
    let part = DeviceInfo::lookup(paths, dev.0, dev.1)
        .ok_or_else(|| PowerOffError::NotADrive(shown.to_owned()))?;
    let disk = DeviceInfo::lookup(paths, part.disk_dev.0, part.disk_dev.1)
        .ok_or_else(|| PowerOffError::NotADrive(shown.to_owned()))?;
    let parts = disk.with_partitions();
    let method = method_for(&disk.sysfs);
    Ok(Drive {
        disk,
        parts,
        method,
    })
}

/// The nearest USB device above the disk (`remove`), else the disk's SCSI
/// device (`delete`), else nothing.
pub fn method_for(disk_sysfs: &Path) -> Method {
    let mut dir = disk_sysfs.parent();
    for _ in 0..MAX_SYSFS_DEPTH {
        let Some(d) = dir else { break };
        let subsystem = std::fs::read_link(d.join("subsystem")).ok();
        let is_usb = subsystem
            .as_deref()
            .and_then(Path::file_name)
            .is_some_and(|n| n == "usb");
        if is_usb
            && std::fs::read_to_string(d.join("uevent"))
                .is_ok_and(|u| u.lines().any(|l| l == "DEVTYPE=usb_device"))
            && d.join("remove").exists()
        {
            return Method::UsbRemove(d.join("remove"));
        }
        dir = d.parent();
    }
    let delete = disk_sysfs.join("device/delete");
    if delete.exists() {
        return Method::ScsiDelete(delete);
    }
    Method::None
}

/// Refuses while the drive is mounted or held by anyone but the mount
/// being unmounted: kernel mounts (`mounts`, /proc/self/mountinfo), holders
/// and the system disk as [`device::check_available`] sees them, and
/// `others`, the other safemount mounts' source devices with their mount
/// points.
pub fn check_idle(
    paths: &SysPaths,
    drive: &Drive,
    mounts: &[MountEntry],
    others: &[crate::state::DevMount],
) -> Result<(), PowerOffError> {
    let shown = drive.shown();
    device::check_against(&drive.disk, &shown, mounts, &device::root_disks(paths)).map_err(
        |e| PowerOffError::InUse {
            drive: shown.clone(),
            why: e.to_string(),
        },
    )?;
    for (dev, mountpoint) in others {
        if let Some((_, part)) = drive.parts.iter().find(|(d, _)| d == dev) {
            return Err(PowerOffError::SafemountMounted {
                drive: shown,
                part: part.clone(),
                mountpoint: sanitize::display(mountpoint.as_os_str().as_encoded_bytes()),
            });
        }
    }
    Ok(())
}

/// Opens every block device of the drive `O_EXCL` (EBUSY: someone still
/// uses it) and fsyncs it: dirty pages written, the write cache flushed.
pub fn flush(drive: &Drive) -> Result<(), PowerOffError> {
    for (dev, name) in &drive.parts {
        let path = PathBuf::from(format!("/dev/{}", name.replace('!', "/")));
        let err = |errno| PowerOffError::Flush {
            device: path.display().to_string(),
            errno,
        };
        let fd = open(
            &path,
            OFlag::O_RDONLY | OFlag::O_EXCL | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
            Mode::empty(),
        )
        .map_err(err)?;
        let st = fstat(&fd).map_err(err)?;
        #[allow(clippy::useless_conversion, reason = "dev_t width")]
        let rdev = split_dev(u64::from(st.st_rdev));
        if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFBLK || rdev != *dev {
            // /dev/NAME is not the device sysfs named: do not trust it.
            return Err(err(Errno::ENODEV));
        }
        nix::unistd::fsync(&fd).map_err(err)?;
    }
    Ok(())
}

/// Removes the drive from the system (see [`Method`]); false if it has no
/// way to be powered off.
pub fn power_off(drive: &Drive) -> Result<bool, PowerOffError> {
    let attribute = match &drive.method {
        Method::UsbRemove(p) | Method::ScsiDelete(p) => p,
        Method::None => return Ok(false),
    };
    std::fs::write(attribute, "1").map_err(|error| PowerOffError::Sysfs {
        drive: drive.shown(),
        attribute: attribute.display().to_string(),
        error,
    })?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A fake sysfs: a disk `name` (8:16) with one partition (8:17) under
    /// `parent` (relative to devices/), registered in dev/block.
    fn fake(root: &Path, parent: &str, name: &str) -> SysPaths {
        let disk = root.join("devices").join(parent).join("block").join(name);
        let part = disk.join(format!("{name}1"));
        std::fs::create_dir_all(&part).unwrap();
        std::fs::write(disk.join("dev"), "8:16\n").unwrap();
        std::fs::write(part.join("dev"), "8:17\n").unwrap();
        std::fs::write(part.join("partition"), "1\n").unwrap();
        std::fs::create_dir_all(root.join("dev/block")).unwrap();
        symlink(&disk, root.join("dev/block/8:16")).unwrap();
        symlink(&part, root.join("dev/block/8:17")).unwrap();
        SysPaths {
            sys: root.to_owned(),
            udev_data: root.join("udev"),
        }
    }

    fn scratch(tag: &str) -> PathBuf {
        let p =
            std::env::temp_dir().join(format!("safemount-poweroff-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        p
    }

    #[test]
    fn usb_drive_is_removed_at_its_usb_device() {
        let root = scratch("usb");
        let usb = root.join("devices/pci0/usb2/2-1");
        let scsi = "pci0/usb2/2-1/2-1:1.0/host6/target6:0:0/6:0:0:0";
        let paths = fake(&root, scsi, "sdb");
        std::fs::create_dir_all(root.join("bus/usb")).unwrap();
        symlink(root.join("bus/usb"), usb.join("subsystem")).unwrap();
        std::fs::write(usb.join("uevent"), "MAJOR=189\nDEVTYPE=usb_device\n").unwrap();
        std::fs::write(usb.join("remove"), "").unwrap();
        // The interface is on the usb bus too, but is no usb_device.
        let intf = usb.join("2-1:1.0");
        symlink(root.join("bus/usb"), intf.join("subsystem")).unwrap();
        std::fs::write(intf.join("uevent"), "DEVTYPE=usb_interface\n").unwrap();
        std::fs::write(root.join("devices").join(scsi).join("delete"), "").unwrap();
        symlink(
            root.join("devices").join(scsi),
            root.join("devices").join(scsi).join("block/sdb/device"),
        )
        .unwrap();

        let drive = drive_of(&paths, (8, 17), "/dev/sdb1").unwrap();
        assert_eq!(drive.disk.name, "sdb");
        assert_eq!(drive.shown(), "/dev/sdb");
        let mut parts = drive.parts.clone();
        parts.sort();
        assert_eq!(
            parts,
            vec![((8, 16), "sdb".into()), ((8, 17), "sdb1".into())]
        );
        assert_eq!(drive.method, Method::UsbRemove(usb.join("remove")));
        assert!(power_off(&drive).unwrap());
        assert_eq!(std::fs::read_to_string(usb.join("remove")).unwrap(), "1");
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn scsi_disk_is_deleted_and_others_are_left_in_place() {
        let root = scratch("scsi");
        let scsi = "pci0/ata1/host0/target0:0:0/0:0:0:0";
        let paths = fake(&root, scsi, "sdc");
        let dev = root.join("devices").join(scsi);
        std::fs::write(dev.join("delete"), "").unwrap();
        symlink(&dev, dev.join("block/sdc/device")).unwrap();
        let drive = drive_of(&paths, (8, 16), "/dev/sdc").unwrap();
        assert_eq!(
            drive.method,
            Method::ScsiDelete(dev.join("block/sdc/device/delete"))
        );
        assert!(power_off(&drive).unwrap());
        assert_eq!(std::fs::read_to_string(dev.join("delete")).unwrap(), "1");

        let other = scratch("virtual");
        let paths = fake(&other, "virtual", "loop9");
        let drive = drive_of(&paths, (8, 17), "/dev/loop9p1").unwrap();
        assert_eq!(drive.method, Method::None);
        assert!(!power_off(&drive).unwrap());
        assert!(matches!(
            drive_of(&paths, (8, 99), "/dev/x"),
            Err(PowerOffError::NotADrive(_))
        ));
        let _ = std::fs::remove_dir_all(&root);
        let _ = std::fs::remove_dir_all(&other);
    }

    #[test]
    fn another_mounted_partition_refuses() {
        let root = scratch("busy");
        let paths = fake(&root, "virtual", "sdd");
        let drive = drive_of(&paths, (8, 17), "/dev/sdd1").unwrap();
        assert!(check_idle(&paths, &drive, &[], &[]).is_ok());
        // The kernel has the disk's partition mounted somewhere.
        let kernel = MountEntry {
            mount_id: 77,
            parent_id: 1,
            dev: (8, 17),
            mount_point: PathBuf::from("/mnt/other"),
            fstype: "ext4".into(),
            source: "/dev/sdd1".into(),
        };
        let e = check_idle(&paths, &drive, &[kernel], &[]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "cannot power off /dev/sdd: /dev/sdd: device is in use: sdd1 is mounted at /mnt/other"
        );
        assert_eq!(e.kind(), ErrorKind::Busy);
        // Another safemount mount of the drive.
        let e = check_idle(
            &paths,
            &drive,
            &[],
            &[((8, 17), PathBuf::from("/run/media/u/x"))],
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "cannot power off /dev/sdd: sdd1 is mounted by safemount at /run/media/u/x; unmount it first"
        );
        assert_eq!(e.kind(), ErrorKind::Busy);
        let _ = std::fs::remove_dir_all(&root);
    }
}
