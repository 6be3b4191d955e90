//! Integration tests: one binary, one module per area. Everything runs for real on loopback.

// Test code: a failed unwrap is a failed test, which is what we want.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod pg;
mod support;

mod admin;
mod cli;
mod dev;
mod envoy;
mod fuzz_replay;
mod gateways;
mod grpc;
mod introspection;
mod jwks;
mod layout;
mod limits;
mod membership;
mod membership_pg;
mod ops;
mod otel;
mod tls;
