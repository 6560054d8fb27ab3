//! A loop device over an image file, detached on drop: a real block
//! device for the tests that need one (automount, power-off).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::util::run;

pub struct LoopDevice {
    dev: PathBuf,
}

impl LoopDevice {
    /// `losetup -f --show [-P] IMAGE`; `partitions` scans its partition
    /// table (loopNpM devices). Retried: other tests create loops too.
    pub fn attach(image: &Path, partitions: bool) -> Result<Self> {
        let mut last = String::new();
        for _ in 0..10 {
            let mut args: Vec<&std::ffi::OsStr> = vec!["-f".as_ref(), "--show".as_ref()];
            if partitions {
                args.push("-P".as_ref());
            }
            args.push(image.as_os_str());
            let out = run("losetup", args)?;
            if out.status.success() {
                let dev = String::from_utf8_lossy(&out.stdout).trim().to_owned();
                return Ok(Self { dev: dev.into() });
            }
            last = String::from_utf8_lossy(&out.stderr).into_owned();
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        Err(anyhow::anyhow!("{last}")).with_context(|| format!("losetup {}", image.display()))
    }

    /// `/dev/loopN`.
    pub fn path(&self) -> &Path {
        &self.dev
    }

    /// `loopN`, the kernel name (what udev's %k gives).
    pub fn name(&self) -> String {
        self.dev
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    /// `/dev/loopNpM`.
    pub fn partition(&self, n: u32) -> PathBuf {
        PathBuf::from(format!("{}p{n}", self.dev.display()))
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = run("losetup", ["-d".as_ref(), self.dev.as_os_str()]);
    }
}
