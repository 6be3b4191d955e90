//! The committed fuzz corpus (`fuzz/corpus/<target>/`, minimised by `scripts/fuzz.sh`, with every
//! crash input the fuzzers ever found) replayed through the same checks the fuzz targets run
//! (`citadel_authz::fuzzing`), on stable Rust: a regression is caught by the README's test
//! command, not only by the next fuzzing session.

use citadel_authz::fuzzing::TARGETS;

use crate::support::repo_file;

#[test]
fn every_fuzz_target_has_a_corpus_and_every_input_passes_its_checks() {
    let mut failures = Vec::new();
    let mut replayed = 0;
    for (name, check) in TARGETS {
        let dir = repo_file("fuzz/corpus").join(name);
        let mut inputs: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        inputs.sort();
        assert!(!inputs.is_empty(), "no corpus for fuzz target {name}");
        assert!(
            repo_file("fuzz/fuzz_targets")
                .join(format!("{name}.rs"))
                .is_file(),
            "no fuzz target for {name}"
        );
        for input in inputs {
            let data = std::fs::read(&input).unwrap();
            replayed += 1;
            if let Err(panic) = std::panic::catch_unwind(|| check(&data)) {
                let why = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    .unwrap_or_default();
                failures.push(format!("{}: {why}", input.display()));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {replayed} inputs fail:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
