//! See safemount_worker::fuzzing::parsers.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| safemount_worker::fuzzing::parsers(data));
