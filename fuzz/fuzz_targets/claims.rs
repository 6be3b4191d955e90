#![no_main]
//! Fuzz target `claims`: the checks are in `citadel_authz::fuzzing::claims`, which the stable test
//! suite also runs over `fuzz/corpus/claims/`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| citadel_authz::fuzzing::claims(data));
