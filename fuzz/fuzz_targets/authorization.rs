#![no_main]
//! Fuzz target `authorization`: the checks are in `citadel_authz::fuzzing::authorization`, which the stable test
//! suite also runs over `fuzz/corpus/authorization/`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| citadel_authz::fuzzing::authorization(data));
