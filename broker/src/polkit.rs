//! Asking polkitd whether a caller may do something, over the system
//! D-Bus (`org.freedesktop.PolicyKit1.Authority.CheckAuthorization`).
//!
//! The subject is a `unix-process` with the caller's pid (from
//! SO_PEERCRED), its start time (field 22 of /proc/PID/stat, so a recycled
//! pid is not mistaken for the caller) and its uid (from SO_PEERCRED, never
//! from polkit's own lookup). The broker's connection to the bus is made on
//! first use and remade after an error; the bus address is the usual
//! `DBUS_SYSTEM_BUS_ADDRESS` or the system default, which is how tests
//! point the broker at a private bus.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use zbus::zvariant::Value;

use crate::authorize::Caller;

/// The actions safemount asks about (packaging/polkit/org.safemount.policy).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Removable media.
    Mount,
    /// Any other block device.
    MountSystem,
    /// An image fd the caller opened itself.
    MountImage,
    /// Unmount or list another user's mounts.
    UnmountOthers,
}

impl Action {
    pub fn id(self) -> &'static str {
        match self {
            Self::Mount => "org.safemount.mount",
            Self::MountSystem => "org.safemount.mount-system",
            Self::MountImage => "org.safemount.mount-image",
            Self::UnmountOthers => "org.safemount.unmount-others",
        }
    }
}

/// polkit's answer, or why there is none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allowed,
    Denied,
    /// No system bus, polkitd not running and not activatable, or it
    /// answered with an error; the reason is for the log only.
    Unavailable(String),
}

const POLKIT_NAME: &str = "org.freedesktop.PolicyKit1";
const POLKIT_PATH: &str = "/org/freedesktop/PolicyKit1/Authority";
const POLKIT_INTERFACE: &str = "org.freedesktop.PolicyKit1.Authority";
/// CheckAuthorizationFlags.AllowUserInteraction: an authentication agent
/// in the caller's session may ask for a password.
const ALLOW_USER_INTERACTION: u32 = 1;
/// How long a check may take, including a password prompt.
const CHECK_TIMEOUT: Duration = Duration::from_secs(120);

/// A (lazily connected) polkit client.
pub struct Polkit {
    conn: Mutex<Option<zbus::blocking::Connection>>,
    /// A bus address instead of the system bus (tests).
    address: Option<String>,
    /// How long one check may take.
    timeout: Duration,
}

impl Default for Polkit {
    fn default() -> Self {
        Self {
            conn: Mutex::default(),
            address: None,
            timeout: CHECK_TIMEOUT,
        }
    }
}

impl std::fmt::Debug for Polkit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Polkit")
    }
}

/// The caller's start time, after checking that its pid still names a
/// process of the caller's uid: the client may have exited since it
/// connected and its pid gone to another user's process, whose session
/// polkit would then judge. The start time is read before and after the
/// uid, so both readings are of the same process; polkitd in turn checks
/// that pid and start time still match.
fn caller_start_time(caller: &Caller) -> Result<u64, String> {
    let before = crate::authorize::process_start_time(caller.pid)
        .map_err(|e| format!("cannot read the caller's start time: {e}"))?;
    let uid = real_uid(caller.pid).map_err(|e| format!("cannot read the caller's uid: {e}"))?;
    let after = crate::authorize::process_start_time(caller.pid)
        .map_err(|e| format!("cannot read the caller's start time: {e}"))?;
    if before != after || uid != caller.uid {
        return Err("the caller's pid now names another process".to_owned());
    }
    Ok(before)
}

/// The real uid of process `pid` (first number of the `Uid:` line of
/// /proc/PID/status).
fn real_uid(pid: i32) -> std::io::Result<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("no Uid line in /proc/{pid}/status"),
            )
        })
}

impl Polkit {
    pub fn new() -> Self {
        Self::default()
    }

    /// A client for the bus at `address` rather than the system bus, whose
    /// checks give up after `timeout` (tests).
    pub fn with_address(address: &str, timeout: Duration) -> Self {
        Self {
            conn: Mutex::default(),
            address: Some(address.to_owned()),
            timeout,
        }
    }

    fn connection(&self) -> Result<zbus::blocking::Connection, zbus::Error> {
        let mut guard = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = guard.as_ref() {
            return Ok(c.clone());
        }
        let builder = match &self.address {
            Some(a) => zbus::blocking::connection::Builder::address(a.as_str())?,
            None => zbus::blocking::connection::Builder::system()?,
        };
        let c = builder.method_timeout(self.timeout).build()?;
        *guard = Some(c.clone());
        Ok(c)
    }

    fn forget_connection(&self) {
        *self.conn.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Asks polkitd whether `caller` may do `action`; `interactive` lets an
    /// authentication agent ask for a password. One retry with a fresh
    /// connection if the first attempt fails (the bus or polkitd may have
    /// restarted since the connection was made).
    pub fn check(&self, caller: &Caller, action: Action, interactive: bool) -> Decision {
        let start = match caller_start_time(caller) {
            Ok(t) => t,
            // The caller is gone, or its pid now names someone else's
            // process: deny rather than ask about a stranger.
            Err(why) => {
                tracing::warn!(pid = caller.pid, uid = caller.uid, "{why}; denied");
                return Decision::Denied;
            }
        };
        let flags = if interactive {
            ALLOW_USER_INTERACTION
        } else {
            0
        };
        let mut last = String::new();
        for attempt in 0..2 {
            match self.ask(caller, start, action, flags) {
                Ok(true) => return Decision::Allowed,
                Ok(false) => return Decision::Denied,
                Err(e) => {
                    tracing::debug!(attempt, error = %e, "polkit check failed");
                    last = e.to_string();
                    self.forget_connection();
                }
            }
        }
        Decision::Unavailable(crate::sanitize::display(last.as_bytes()))
    }

    fn ask(
        &self,
        caller: &Caller,
        start_time: u64,
        action: Action,
        flags: u32,
    ) -> Result<bool, zbus::Error> {
        let conn = self.connection()?;
        let pid = u32::try_from(caller.pid)
            .map_err(|_| zbus::Error::Failure(format!("bad caller pid {}", caller.pid)))?;
        // polkit's unix-process subject: pid u, start-time t, uid i.
        let uid = i32::try_from(caller.uid)
            .map_err(|_| zbus::Error::Failure(format!("bad caller uid {}", caller.uid)))?;
        let mut subject_details: HashMap<&str, Value<'_>> = HashMap::new();
        subject_details.insert("pid", Value::U32(pid));
        subject_details.insert("start-time", Value::U64(start_time));
        subject_details.insert("uid", Value::I32(uid));
        let subject = ("unix-process", subject_details);
        let details: HashMap<&str, &str> = HashMap::new();
        let reply = conn.call_method(
            Some(POLKIT_NAME),
            POLKIT_PATH,
            Some(POLKIT_INTERFACE),
            "CheckAuthorization",
            &(subject, action.id(), details, flags, ""),
        )?;
        let (is_authorized, is_challenge, _details): (bool, bool, HashMap<String, String>) =
            reply.body().deserialize()?;
        if !is_authorized && is_challenge {
            tracing::info!(
                action = action.id(),
                uid = caller.uid,
                "polkit wants authentication but no agent answered"
            );
        }
        Ok(is_authorized)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn action_ids_match_the_policy_file() {
        let policy = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../packaging/polkit/org.safemount.policy"
        ));
        let Ok(policy) = policy else {
            crate::test_skip::skip("packaging/polkit/org.safemount.policy not found");
            return;
        };
        for a in [
            Action::Mount,
            Action::MountSystem,
            Action::MountImage,
            Action::UnmountOthers,
        ] {
            assert!(
                policy.contains(&format!("<action id=\"{}\">", a.id())),
                "{} missing from the policy",
                a.id()
            );
        }
    }

    #[test]
    fn no_bus_means_unavailable() {
        let p = Polkit::with_address(
            "unix:path=/nonexistent/safemount-test-bus",
            Duration::from_secs(5),
        );
        let me = Caller {
            uid: 1000,
            gid: 1000,
            pid: std::process::id() as i32,
        };
        let me = Caller {
            uid: nix::unistd::getuid().as_raw(),
            ..me
        };
        assert!(matches!(
            p.check(&me, Action::Mount, true),
            Decision::Unavailable(_)
        ));
        // Our pid with another uid: not the caller any more, denied.
        let stranger = Caller {
            uid: me.uid.wrapping_add(1),
            ..me
        };
        assert_eq!(p.check(&stranger, Action::Mount, true), Decision::Denied);
        // A caller that is gone is denied without asking.
        let gone = Caller {
            pid: i32::MAX,
            ..me
        };
        assert_eq!(p.check(&gone, Action::Mount, false), Decision::Denied);
    }
}
