//! Decoding any byte string as any message type returns a value or an
//! error, never panics, and never allocates past the size limit.

#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed unwrap is a failed test"
)]

use proptest::prelude::*;
use safemount_proto::wire::{decode, encode};
use safemount_proto::{
    BrokerReply, ClientRequest, MountInfo, ProbeReport, ProtoError, WorkerReply, WorkerRequest,
};

fn decode_all(bytes: &[u8]) {
    let _ = decode::<ClientRequest>(bytes);
    let _ = decode::<BrokerReply>(bytes);
    let _ = decode::<WorkerRequest>(bytes);
    let _ = decode::<WorkerReply>(bytes);
    let _ = decode::<ProbeReport>(bytes);
    let _ = decode::<MountInfo>(bytes);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn any_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        decode_all(&bytes);
    }

    /// A valid variant tag followed by noise goes deeper into the decoders.
    #[test]
    fn tag_then_noise(tag in 0u8..8, bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut b = vec![tag];
        b.extend(bytes);
        decode_all(&b);
    }

    /// Every valid message survives single-byte corruption without a panic,
    /// and an undamaged one round-trips.
    #[test]
    fn corrupted_valid_messages(
        label in proptest::collection::vec(any::<u8>(), 0..40),
        name in ".{0,40}",
        pos in any::<usize>(),
        val in any::<u8>(),
    ) {
        let reply = WorkerReply::Probed(ProbeReport {
            label,
            uuid: [1; 16],
            fs_type: name.clone(),
            features: vec![name.clone(), "x".into()],
            read_only: true,
            sandbox: safemount_proto::SandboxReport {
                landlock: name,
                seccomp: true,
                namespaces: false,
            },
        });
        let mut bytes = encode(&reply).unwrap();
        prop_assert_eq!(decode::<WorkerReply>(&bytes).unwrap(), reply);
        // Every proper prefix is an error (a truncated message).
        for cut in 0..bytes.len() {
            prop_assert!(decode::<WorkerReply>(&bytes[..cut]).is_err());
        }
        let i = pos % bytes.len();
        bytes[i] = val;
        decode_all(&bytes);
    }
}

#[test]
fn huge_length_prefix_is_an_error_not_an_allocation() {
    // BrokerReply::Mounts (variant 3) with a varint length of u64::MAX.
    let mut bytes = vec![3u8, 0xfd];
    bytes.extend(u64::MAX.to_le_bytes());
    assert!(matches!(
        decode::<BrokerReply>(&bytes),
        Err(ProtoError::Decode(_))
    ));
    // WorkerReply::Refused (variant 1) with a 2^40-byte string.
    let mut bytes = vec![1u8, 0xfd];
    bytes.extend((1u64 << 40).to_le_bytes());
    assert!(decode::<WorkerReply>(&bytes).is_err());
}

#[test]
fn trailing_bytes_are_an_error() {
    let mut bytes = encode(&ClientRequest::List).unwrap();
    bytes.push(0);
    assert!(matches!(
        decode::<ClientRequest>(&bytes),
        Err(ProtoError::Decode(m)) if m.contains("trailing")
    ));
}

#[test]
fn oversized_input_is_refused_before_decoding() {
    let bytes = vec![0u8; safemount_proto::MAX_MESSAGE_BYTES + 1];
    assert!(matches!(
        decode::<ClientRequest>(&bytes),
        Err(ProtoError::TooLarge(_))
    ));
    let huge = WorkerReply::Refused {
        reason: "x".repeat(safemount_proto::MAX_MESSAGE_BYTES + 10),
    };
    assert!(encode(&huge).is_err());
}
