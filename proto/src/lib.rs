//! The wire protocol between safemount's three programs.
//!
//! Every message is one serde value encoded with bincode 2 (with a size
//! limit) and sent as exactly one SOCK_SEQPACKET packet, optionally with
//! file descriptors attached via SCM_RIGHTS. See [`wire`] for the framing and
//! [`messages`] for what is said.

pub mod messages;
pub mod wire;

pub use messages::*;
pub use wire::{ProtoError, recv, recv_upto, send, split_to_fit};

/// Bumped whenever a message type changes shape.
pub const PROTOCOL_VERSION: u32 = 7;

/// Upper bound on one encoded message, and so on one packet.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// Upper bound on the fds one message may carry.
pub const MAX_FDS: usize = 4;

/// The largest FUSE read or write the worker serves (its max_write and
/// max_readahead), and the read-ahead window the broker gives a mount:
/// agreed here so the two never drift apart.
pub const FUSE_MAX_IO: u32 = 1 << 20;

/// The dirty page caps a worker low on space may ask the broker for
/// (`WorkerReply::Health::dirty_cap`), and the broker keeps to: what a
/// mount may hold written but not yet written back, in bytes.
pub const DIRTY_CAP_MIN: u64 = 2 << 20;
pub const DIRTY_CAP_MAX: u64 = 32 << 20;
