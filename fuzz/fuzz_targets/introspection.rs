#![no_main]
//! Fuzz target `introspection`: the checks are in `citadel_authz::fuzzing::introspection`, which the stable test
//! suite also runs over `fuzz/corpus/introspection/`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| citadel_authz::fuzzing::introspection(data));
