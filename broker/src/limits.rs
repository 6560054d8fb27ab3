//! What one local user may take of the broker: connections, mounts and the
//! time a connection may sit idle, so that no user can lock others out.
//!
//! Connections are counted per uid, after SO_PEERCRED and before anything
//! else: a user gets at most [`Limits::connections_per_user`], everyone
//! but root shares all but [`ROOT_RESERVED`] of [`MAX_CONNECTIONS`], and a
//! connection must send its first real request (Hello does not count)
//! within [`Limits::first_request_within`].
//!
//! The broker's own limit on open files is raised as far as it goes
//! ([`raise_open_files`]): it holds three fds per mount.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// Connections at once, everyone together.
pub const MAX_CONNECTIONS: usize = 256;
/// Of [`MAX_CONNECTIONS`], how many only root may use.
pub const ROOT_RESERVED: usize = 32;

/// The broker's per-user limits (safemountd's command line sets them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Open connections per non-root uid.
    pub connections_per_user: usize,
    /// Time from connecting to the first request other than Hello.
    pub first_request_within: Duration,
    /// Mounts (and mounts being set up) per non-root owner.
    pub mounts_per_user: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            connections_per_user: 16,
            first_request_within: Duration::from_secs(10),
            mounts_per_user: 32,
        }
    }
}

/// Why a connection was turned away: one line for the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("too many connections from uid {uid} (at most {max})")]
    PerUser { uid: u32, max: usize },
    #[error("too many connections to safemountd")]
    Full,
}

/// Open connections by uid.
#[derive(Debug, Default)]
pub struct Connections {
    by_uid: Mutex<HashMap<u32, usize>>,
}

impl Connections {
    /// Counts a new connection from `uid`, or says why it may not open.
    pub fn admit(&self, uid: u32, per_user: usize) -> Result<Slot<'_>, Refused> {
        let mut by_uid = self.by_uid.lock().unwrap_or_else(|p| p.into_inner());
        let total: usize = by_uid.values().sum();
        let mine = by_uid.get(&uid).copied().unwrap_or(0);
        if uid == 0 {
            if total >= MAX_CONNECTIONS {
                return Err(Refused::Full);
            }
        } else {
            if mine >= per_user {
                return Err(Refused::PerUser { uid, max: per_user });
            }
            if total >= MAX_CONNECTIONS - ROOT_RESERVED {
                return Err(Refused::Full);
            }
        }
        by_uid.insert(uid, mine + 1);
        Ok(Slot { table: self, uid })
    }

    /// Open connections of `uid`.
    pub fn of(&self, uid: u32) -> usize {
        let by_uid = self.by_uid.lock().unwrap_or_else(|p| p.into_inner());
        by_uid.get(&uid).copied().unwrap_or(0)
    }
}

/// One admitted connection; dropping it frees the place.
#[derive(Debug)]
pub struct Slot<'a> {
    table: &'a Connections,
    uid: u32,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let mut by_uid = self.table.by_uid.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = by_uid.get_mut(&self.uid) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                by_uid.remove(&self.uid);
            }
        }
    }
}

/// Raises the soft RLIMIT_NOFILE to the hard one: every mount costs the
/// broker three fds (its worker's socket and log pipe, and the mount
/// point's parent), so the usual soft 1,024 ended mounts at about 330 with
/// "cannot start worker: Too many open files". Nothing in the broker uses
/// select(2), the reason soft limits stay low. Returns (before, after).
pub fn raise_open_files() -> nix::Result<(u64, u64)> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    Ok((soft, hard))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_user_cap_and_root_reserve() {
        let c = Connections::default();
        let mut held = Vec::new();
        for _ in 0..4 {
            held.push(c.admit(1000, 4).unwrap());
        }
        assert_eq!(
            c.admit(1000, 4).unwrap_err(),
            Refused::PerUser { uid: 1000, max: 4 }
        );
        // Another user is not affected.
        held.push(c.admit(1001, 4).unwrap());
        // Many users fill the shared part; root still gets in.
        for uid in 2000..2000 + (MAX_CONNECTIONS - ROOT_RESERVED - 5) as u32 {
            held.push(c.admit(uid, 4).unwrap());
        }
        assert_eq!(c.admit(3000, 4).unwrap_err(), Refused::Full);
        for _ in 0..ROOT_RESERVED {
            held.push(c.admit(0, 4).unwrap());
        }
        assert_eq!(c.admit(0, 4).unwrap_err(), Refused::Full);
        // Closing frees the place.
        held.clear();
        assert_eq!(c.of(1000), 0);
        assert!(c.admit(1000, 4).is_ok());
    }
}
