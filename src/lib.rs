//! citadel-authz: an external authorization server for Envoy (gRPC `ext_authz` v3) and for
//! forward-auth gateways (nginx `auth_request`, Caddy `forward_auth`, Traefik `ForwardAuth`…).
//!
//! Every request must carry `Authorization: Bearer <JWT>`; the token is verified against its
//! issuer's JWKS (cached per Cache-Control, refreshed in the background, kept while the issuer is
//! down), the request is matched against a route policy, and the answer is allow with
//! `x-user-id` / `x-tenant-id` / `x-user-roles` for the upstream, or a denial with the right
//! status. See `SPEC.md` (§ numbers in comments) and the README.
//!
//! Layout: a pure core — [`config`] (YAML → validated config), [`policy`] (rules, canonical
//! paths), [`token`] (JWT → identity), [`keys`] (JWKS → key set), [`decision`] (outcomes and their
//! wire form) — joined by [`authorizer`]; I/O at the edges — [`jwks`] (fetching), [`introspection`]
//! (RFC 7662, opaque tokens and revocation), [`grpc`] and
//! [`http`] (adapters), [`server`] (listeners, lifecycle), [`conn`] (connection bounds), [`dev`]
//! (the demo issuer).

pub mod authorizer;
pub mod cache;
pub mod client;
pub mod config;
pub mod conn;
pub mod decision;
pub mod dev;
pub mod dev_opaque;
pub mod grpc;
pub mod http;
pub mod introspection;
pub mod jwks;
pub mod keys;
pub mod lint;
pub mod metrics;
pub mod policy;
pub mod probe;
pub mod reload;
pub mod server;
pub mod signer;
pub mod telemetry;
pub mod tls;
pub mod token;

pub use authorizer::{AuthHeader, Authorizer, CheckInput};
pub use config::{Config, ConfigError};
pub use decision::Decision;
pub use server::{InitError, Listeners, Options, Running, start};
