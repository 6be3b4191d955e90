//! Adapters and process plumbing: the [`authorizer`] that joins the core and the sources per
//! check, the gRPC ext_authz and HTTP forward-auth adapters, listeners and their bounds, TLS,
//! hot reload, metrics, the decision log and OpenTelemetry spans ([`otel`]).
//!
//! Imports [`crate::core`] and [`crate::sources`]; nothing below imports this layer.

pub mod admin;
pub mod authorizer;
pub mod cache;
pub mod conn;
pub mod grpc;
pub mod http;
pub mod metrics;
pub mod otel;
pub mod reload;
pub mod server;
pub mod telemetry;
pub mod tls;
