//! The oracle: the kernel's own ext4 on a loop device. Read-only tests
//! mount `ro,noload` so the kernel never writes the image (no journal
//! replay); the differential tests mount a twin image read-write.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::util::run;

pub struct KernelMount {
    image: PathBuf,
    mnt: PathBuf,
    loopdev: String,
    mounted: bool,
}

impl KernelMount {
    /// The read-only oracle: a read-only loop device mounted `ro,noload`.
    pub fn mount(image: &Path, mnt: &Path) -> Result<Self> {
        Self::attach(image, mnt, true, "ro,noload")
    }

    /// The read-write oracle of the differential tests:
    /// `rw,noatime,nodev,nosuid` plus `extra` (comma-separated, may be
    /// empty), e.g. "nodelalloc". nodev: the random ops make device nodes.
    pub fn mount_rw(image: &Path, mnt: &Path, extra: &str) -> Result<Self> {
        let opts = if extra.is_empty() {
            "rw,noatime,nodev,nosuid".to_owned()
        } else {
            format!("rw,noatime,nodev,nosuid,{extra}")
        };
        Self::attach(image, mnt, false, &opts)
    }

    /// A read-write kernel mount with exactly `opts`.
    pub fn mount_rw_with(image: &Path, mnt: &Path, opts: &str) -> Result<Self> {
        Self::attach(image, mnt, false, opts)
    }

    fn attach(image: &Path, mnt: &Path, read_only: bool, opts: &str) -> Result<Self> {
        // Loop device setup races with other tests creating loops: retry.
        let mut last = String::new();
        let mut loopdev = None;
        for _ in 0..10 {
            let mut args: Vec<&std::ffi::OsStr> = Vec::new();
            if read_only {
                args.push("-r".as_ref());
            }
            args.extend(["-f".as_ref(), "--show".as_ref(), image.as_os_str()]);
            let out = run("losetup", args)?;
            if out.status.success() {
                loopdev = Some(String::from_utf8_lossy(&out.stdout).trim().to_owned());
                break;
            }
            last = String::from_utf8_lossy(&out.stderr).into_owned();
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let loopdev = loopdev.with_context(|| format!("losetup {}: {last}", image.display()))?;
        let mut me = Self {
            image: image.to_path_buf(),
            mnt: mnt.to_path_buf(),
            loopdev,
            mounted: false,
        };
        let out = run(
            "mount",
            [
                "-t".as_ref(),
                "ext4".as_ref(),
                "-o".as_ref(),
                opts.as_ref(),
                me.loopdev.as_ref(),
                mnt.as_os_str(),
            ],
        )?;
        if !out.status.success() {
            bail!(
                "kernel mount ({opts}) of {} failed: {}",
                image.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        me.mounted = true;
        Ok(me)
    }

    pub fn mountpoint(&self) -> &Path {
        &self.mnt
    }

    pub fn image(&self) -> &Path {
        &self.image
    }

    pub fn unmount(mut self) -> Result<()> {
        self.teardown()
    }

    fn teardown(&mut self) -> Result<()> {
        let mut err = None;
        if self.mounted {
            // "target is busy" can be a passing reference (a concurrent
            // test's walk of /tmp, a page-cache flush): retry a little.
            let mut out = run("umount", [&self.mnt])?;
            for _ in 0..20 {
                if out.status.success() || !String::from_utf8_lossy(&out.stderr).contains("busy") {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(250));
                out = run("umount", [&self.mnt])?;
            }
            if out.status.success() {
                self.mounted = false;
            } else {
                let _ = nix::mount::umount2(&self.mnt, nix::mount::MntFlags::MNT_DETACH);
                self.mounted = false;
                err = Some(String::from_utf8_lossy(&out.stderr).into_owned());
            }
        }
        if !self.loopdev.is_empty() {
            let _ = run("losetup", ["-d", &self.loopdev]);
            self.loopdev.clear();
        }
        match err {
            Some(e) => bail!("umount {}: {e}", self.mnt.display()),
            None => Ok(()),
        }
    }
}

impl Drop for KernelMount {
    fn drop(&mut self) {
        let _ = self.teardown();
    }
}
