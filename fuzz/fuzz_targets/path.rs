#![no_main]
//! Fuzz target `path`: the checks are in `citadel_authz::fuzzing::path`, which the stable test
//! suite also runs over `fuzz/corpus/path/`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| citadel_authz::fuzzing::path(data));
