//! Framing: one bincode message per SOCK_SEQPACKET packet, fds via SCM_RIGHTS.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{MAX_FDS, MAX_MESSAGE_BYTES};

/// The kernel's SCM_MAX_FD: room for this many fds means the control data
/// of one packet can never be truncated, so every fd the kernel installs is
/// seen here and closed if unwanted.
const SCM_MAX_FD: usize = 253;

#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    #[error("peer closed the connection")]
    Closed,
    #[error("socket error: {0}")]
    Io(#[from] Errno),
    #[error("message too large ({0} bytes, limit {MAX_MESSAGE_BYTES})")]
    TooLarge(usize),
    #[error("message truncated")]
    Truncated,
    #[error("control data truncated")]
    ControlTruncated,
    #[error("expected {expected} file descriptor(s), got {got}")]
    WrongFdCount { expected: usize, got: usize },
    #[error("malformed message: {0}")]
    Decode(String),
    #[error("cannot encode message: {0}")]
    Encode(String),
    #[error("protocol version mismatch: peer speaks {peer}, we speak {ours}")]
    Version { peer: u32, ours: u32 },
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_MESSAGE_BYTES>()
}

/// Encodes a message to bytes (exposed for tests and fuzzing).
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, ProtoError> {
    let bytes = bincode::serde::encode_to_vec(msg, config())
        .map_err(|e| ProtoError::Encode(e.to_string()))?;
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(ProtoError::TooLarge(bytes.len()));
    }
    Ok(bytes)
}

/// Decodes one whole message; trailing bytes are an error. Never panics.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ProtoError> {
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(ProtoError::TooLarge(bytes.len()));
    }
    let (msg, used) = bincode::serde::decode_from_slice(bytes, config())
        .map_err(|e| ProtoError::Decode(e.to_string()))?;
    if used != bytes.len() {
        return Err(ProtoError::Decode(format!(
            "{} trailing bytes",
            bytes.len() - used
        )));
    }
    Ok(msg)
}

/// Splits `items` into runs that each travel as one message (a `Vec<T>`
/// in a reply): a run's encoded size plus what decoding it claims against
/// the same limit (bincode counts `size_of::<T>()` per element) stays
/// within [`MAX_MESSAGE_BYTES`]. No items make one empty run.
pub fn split_to_fit<T: Serialize>(items: Vec<T>) -> Result<Vec<Vec<T>>, ProtoError> {
    // Room for the reply's tag and the run's length.
    const BUDGET: usize = MAX_MESSAGE_BYTES - 64;
    let mut runs = Vec::new();
    let mut run = Vec::new();
    let mut used = 0;
    for item in items {
        let cost = encode(&item)?.len() + std::mem::size_of::<T>();
        if used + cost > BUDGET && !run.is_empty() {
            runs.push(std::mem::take(&mut run));
            used = 0;
        }
        used += cost;
        run.push(item);
    }
    runs.push(run);
    Ok(runs)
}

/// Sends `msg` as one packet with `fds` attached.
pub fn send<T: Serialize>(
    sock: BorrowedFd<'_>,
    msg: &T,
    fds: &[BorrowedFd<'_>],
) -> Result<(), ProtoError> {
    if fds.len() > MAX_FDS {
        return Err(ProtoError::WrongFdCount {
            expected: MAX_FDS,
            got: fds.len(),
        });
    }
    let bytes = encode(msg)?;
    let raw: Vec<RawFd> = fds.iter().map(|fd| fd.as_raw_fd()).collect();
    let cmsgs: Vec<ControlMessage<'_>> = if raw.is_empty() {
        Vec::new()
    } else {
        vec![ControlMessage::ScmRights(&raw)]
    };
    let iov = [IoSlice::new(&bytes)];
    loop {
        match sendmsg::<()>(sock.as_raw_fd(), &iov, &cmsgs, MsgFlags::MSG_NOSIGNAL, None) {
            Ok(n) if n == bytes.len() => return Ok(()),
            Ok(_) => return Err(ProtoError::Truncated),
            Err(Errno::EINTR) => continue,
            Err(Errno::EPIPE | Errno::ECONNRESET) => return Err(ProtoError::Closed),
            Err(e) => return Err(e.into()),
        }
    }
}

/// Receives one packet holding one message and exactly `expected_fds` fds.
/// Received fds are close-on-exec; any fd that arrives with an error is
/// closed before returning.
pub fn recv<T: DeserializeOwned>(
    sock: BorrowedFd<'_>,
    expected_fds: usize,
) -> Result<(T, Vec<OwnedFd>), ProtoError> {
    let (msg, fds) = recv_upto(sock, expected_fds)?;
    if fds.len() != expected_fds {
        return Err(ProtoError::WrongFdCount {
            expected: expected_fds,
            got: fds.len(),
        });
    }
    Ok((msg, fds))
}

/// Receives one packet holding one message and at most `max_fds` fds, for
/// a receiver that learns from the message how many fds belong to it (the
/// broker: only `Mount` with an image carries one). The caller must check
/// the count against the message. Received fds are close-on-exec; any fd
/// that arrives with an error is closed before returning.
pub fn recv_upto<T: DeserializeOwned>(
    sock: BorrowedFd<'_>,
    max_fds: usize,
) -> Result<(T, Vec<OwnedFd>), ProtoError> {
    // One byte more than the limit, so an oversized packet shows as MSG_TRUNC.
    let mut buf = vec![0u8; MAX_MESSAGE_BYTES + 1];
    let mut cmsg_space = nix::cmsg_space!([RawFd; SCM_MAX_FD]);
    let (len, flags, fds) = loop {
        let mut iov = [IoSliceMut::new(&mut buf)];
        match recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg_space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(msg) => {
                let mut fds = Vec::new();
                // `cmsgs()` fails only with MSG_CTRUNC, which the buffer
                // sized for SCM_MAX_FD rules out (see above).
                if let Ok(cmsgs) = msg.cmsgs() {
                    for cmsg in cmsgs {
                        if let ControlMessageOwned::ScmRights(raw) = cmsg {
                            for fd in raw {
                                // SAFETY: the kernel just installed this fd
                                // in our table for us; nothing else owns it.
                                fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
                            }
                        }
                    }
                }
                break (msg.bytes, msg.flags, fds);
            }
            Err(Errno::EINTR) => continue,
            Err(Errno::ECONNRESET) => return Err(ProtoError::Closed),
            Err(e) => return Err(e.into()),
        }
    };
    if flags.contains(MsgFlags::MSG_CTRUNC) {
        return Err(ProtoError::ControlTruncated);
    }
    if flags.contains(MsgFlags::MSG_TRUNC) || len > MAX_MESSAGE_BYTES {
        return Err(ProtoError::TooLarge(len));
    }
    if len == 0 && fds.is_empty() {
        return Err(ProtoError::Closed);
    }
    if fds.len() > max_fds {
        return Err(ProtoError::WrongFdCount {
            expected: max_fds,
            got: fds.len(),
        });
    }
    let msg = buf.get(..len).ok_or(ProtoError::TooLarge(len))?;
    let msg = decode(msg)?;
    Ok((msg, fds))
}
