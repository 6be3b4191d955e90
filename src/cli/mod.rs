//! Command-line tools beside `serve`: `check` (one CheckRequest as Envoy sends it, [`client`]) and
//! `check-config --online` ([`probe`]).

pub mod client;
pub mod probe;
