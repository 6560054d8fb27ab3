//! See safemount_worker::fuzzing::rw_ops.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| safemount_worker::fuzzing::rw_ops(data));
