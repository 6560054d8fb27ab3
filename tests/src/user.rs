//! A throwaway local user for tests that must act as someone other than
//! root (plain `umount`, `fusermount3 -u`): created with `useradd --system`
//! if absent and removed again on drop. Commands run as the user through
//! `setpriv` (real and effective ids, no supplementary groups).

use std::ffi::OsStr;
use std::process::{Command, Output, Stdio};

use anyhow::{Context, Result, bail};

pub struct TestUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    created: bool,
}

impl TestUser {
    /// The user `name` (at most 32 bytes, as useradd wants), created if
    /// missing.
    pub fn get(name: &str) -> Result<Self> {
        let lookup = || nix::unistd::User::from_name(name).context("getpwnam");
        let mut created = false;
        if lookup()?.is_none() {
            let out = Command::new("useradd")
                .args(["--system", "--no-create-home", "--home-dir", "/nonexistent"])
                .args(["--shell", "/usr/sbin/nologin", "--user-group", name])
                .stdin(Stdio::null())
                .output()
                .context("spawn useradd")?;
            // A parallel test may have created it in between: fine.
            if !out.status.success() && lookup()?.is_none() {
                bail!(
                    "useradd {name}: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            created = out.status.success();
        }
        let u = lookup()?.with_context(|| format!("user {name} vanished"))?;
        Ok(Self {
            name: name.to_owned(),
            uid: u.uid.as_raw(),
            gid: u.gid.as_raw(),
            created,
        })
    }

    /// `prog args...` as this user, to completion.
    pub fn run<I, S>(&self, prog: impl AsRef<OsStr>, args: I) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        crate::util::output_within(
            Command::new("setpriv")
                .arg(format!("--reuid={}", self.uid))
                .arg(format!("--regid={}", self.gid))
                .arg("--clear-groups")
                .arg("--")
                .arg(prog.as_ref())
                .args(args)
                .env_clear()
                .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
                .env("LC_ALL", "C")
                .stdin(Stdio::null()),
            crate::util::HUNG_AFTER,
        )
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        if self.created {
            let _ = Command::new("userdel").arg(&self.name).output();
            let _ = Command::new("groupdel").arg(&self.name).output();
        }
    }
}
