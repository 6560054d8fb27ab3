//! See safemount_worker::fuzzing::mount_walk.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| safemount_worker::fuzzing::mount_walk(data));
