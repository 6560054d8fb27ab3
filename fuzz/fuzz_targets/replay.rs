//! See safemount_worker::fuzzing::replay.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| safemount_worker::fuzzing::replay(data));
