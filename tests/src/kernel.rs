//! The oracle: the kernel's own ext4 on a read-only loop device, mounted
//! `ro,noload` so the kernel never writes the image (no journal replay).

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
    pub fn mount(image: &Path, mnt: &Path) -> Result<Self> {
        // Loop device setup races with other tests creating loops: retry.
        let mut last = String::new();
        let mut loopdev = None;
        for _ in 0..10 {
            let out = run(
                "losetup",
                [
                    "-r".as_ref(),
                    "-f".as_ref(),
                    "--show".as_ref(),
                    image.as_os_str(),
                ],
            )?;
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
                "ro,noload".as_ref(),
                me.loopdev.as_ref(),
                mnt.as_os_str(),
            ],
        )?;
        if !out.status.success() {
            bail!(
                "kernel mount of {} failed: {}",
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
            let out = run("umount", [&self.mnt])?;
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
