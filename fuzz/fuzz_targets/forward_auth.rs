#![no_main]
//! Fuzz target `forward_auth`: the checks are in `citadel_authz::fuzzing::forward_auth`, which the stable test
//! suite also runs over `fuzz/corpus/forward_auth/`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| citadel_authz::fuzzing::forward_auth(data));
