//! Integration tests: one binary, one module per area. Everything runs for real on loopback.

mod support;

mod dev;
mod grpc;
mod jwks;
