//! A mount list longer than one message travels in runs that each fit:
//! every run encodes and decodes as a reply, and together they are the
//! list, in order.

#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed unwrap is a failed test"
)]

use safemount_proto::wire::{decode, encode};
use safemount_proto::{BrokerReply, MAX_MESSAGE_BYTES, MountInfo, MountState, split_to_fit};

fn info(i: usize, path_len: usize) -> MountInfo {
    MountInfo {
        source: format!("{i:0>255}"),
        mountpoint: format!("/{}/{i}", "m".repeat(path_len)).into(),
        owner_uid: 1000,
        label: "l".repeat(255),
        read_only: false,
        state: MountState::Mounted,
        worker_pid: 4242,
        error: Some("e".repeat(255)),
    }
}

fn round_trip(mounts: Vec<MountInfo>) -> usize {
    let runs = split_to_fit(mounts.clone()).unwrap();
    let mut back = Vec::new();
    for run in &runs {
        let bytes = encode(&BrokerReply::MountsPart(run.clone())).unwrap();
        assert!(bytes.len() <= MAX_MESSAGE_BYTES);
        match decode::<BrokerReply>(&bytes).unwrap() {
            BrokerReply::MountsPart(m) => back.extend(m),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(back, mounts);
    runs.len()
}

#[test]
fn long_lists_split_into_runs_that_fit() {
    // The largest entries the broker makes (paths up to PATH_MAX, the
    // other strings sanitized to 255 bytes).
    assert!(round_trip((0..1000).map(|i| info(i, 4000)).collect()) > 60);
    assert!(round_trip((0..1000).map(|i| info(i, 10)).collect()) > 1);
    assert_eq!(round_trip((0..3).map(|i| info(i, 10)).collect()), 1);
    assert_eq!(split_to_fit(Vec::<MountInfo>::new()).unwrap(), vec![vec![]]);
}
