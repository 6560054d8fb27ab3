//! Every message a peer can send decodes to a value or a clean error: the
//! broker reads ClientRequest from any local user and WorkerReply from a
//! worker that parsed a hostile disk.
#![no_main]

use safemount_proto::wire::decode;
use safemount_proto::{BrokerReply, ClientRequest, WorkerReply, WorkerRequest};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = decode::<ClientRequest>(data);
    let _ = decode::<WorkerReply>(data);
    let _ = decode::<WorkerRequest>(data);
    let _ = decode::<BrokerReply>(data);
});
