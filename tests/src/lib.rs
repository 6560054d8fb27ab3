//! Helpers shared by the end-to-end tests: the broker fixture (the system
//! under test), the kernel oracle, tree and image builders, tree snapshots
//! and their comparison, /proc readers, and the freezes, stops and
//! debugger attaches a real machine inflicts on a process.
//!
//! Everything here runs as root against real mounts; tests call
//! [`util::require_root`] first and skip (with one line on stderr, or a
//! failure under `SAFEMOUNT_TEST_STRICT=1`: see [`skip`]) otherwise.

pub mod broker;
pub mod fscrypt;
pub mod image;
pub mod interrupt;
pub mod kernel;
pub mod loopdev;
pub mod mapping;
pub mod ops;
pub mod procfs;
pub mod service_manager;
pub mod skip;
pub mod snapshot;
pub mod tree;
pub mod user;
pub mod util;
