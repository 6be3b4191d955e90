#![no_main]
//! Fuzz target `jwks`: the checks are in `citadel_authz::fuzzing::jwks`, which the stable test
//! suite also runs over `fuzz/corpus/jwks/`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| citadel_authz::fuzzing::jwks(data));
