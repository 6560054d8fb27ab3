//! safemount-worker: the sandboxed process that serves one mount.
//!
//! Layers, bottom up: [`io`] (the shared-fd IO manager), [`ext4`] (the
//! engine, no FUSE and no syscalls of its own), [`fuse`] (the fuser
//! adapter), and [`sandbox`] (the only module here with `unsafe`);
//! [`serve`] runs the lifecycle and [`health`] reports to the broker.

pub mod ext4;
pub mod fuse;
/// Entry points of the fuzz targets in fuzz/ (and their regression test).
#[cfg(any(fuzzing, test))]
pub mod fuzzing;
pub mod health;
pub mod io;
pub mod logging;
pub mod sandbox;
pub mod serve;
#[cfg(test)]
pub(crate) mod testdev;

/// Skips and test knobs, shared with every test crate (see the file).
#[cfg(test)]
#[path = "../../tests/src/skip.rs"]
pub(crate) mod test_skip;
