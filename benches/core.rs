//! Criterion micro-benchmarks (filled in by the benchmark suite).
fn main() {}
