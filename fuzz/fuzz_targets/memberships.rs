#![no_main]
//! Fuzz target `memberships`: the checks are in `citadel_authz::fuzzing::memberships`, which the stable test
//! suite also runs over `fuzz/corpus/memberships/`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| citadel_authz::fuzzing::memberships(data));
