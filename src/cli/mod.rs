//! Command-line tools beside `serve`: `check` (one CheckRequest as Envoy sends it, [`client`]),
//! `check-config --online` ([`probe`]), `explain` ([`explain`]: a decision step by step, from a
//! server's admin listener or offline) and `test` ([`policy_test`]: a table of expected decisions).

pub mod client;
pub mod explain;
pub mod policy_test;
pub mod probe;
