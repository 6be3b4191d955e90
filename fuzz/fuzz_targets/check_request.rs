#![no_main]
//! Fuzz target `check_request`: the checks are in `citadel_authz::fuzzing::check_request`, which the stable test
//! suite also runs over `fuzz/corpus/check_request/`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| citadel_authz::fuzzing::check_request(data));
