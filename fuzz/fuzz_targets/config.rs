#![no_main]
//! Fuzz target `config`: the checks are in `citadel_authz::fuzzing::config`, which the stable test
//! suite also runs over `fuzz/corpus/config/`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| citadel_authz::fuzzing::config(data));
