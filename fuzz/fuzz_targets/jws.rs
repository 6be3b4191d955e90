#![no_main]
//! Fuzz target `jws`: the checks are in `citadel_authz::fuzzing::jws`, which the stable test
//! suite also runs over `fuzz/corpus/jws/`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| citadel_authz::fuzzing::jws(data));
