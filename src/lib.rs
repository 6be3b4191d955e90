//! citadel-authz: an external authorization server for Envoy (gRPC `ext_authz` v3) and for
//! forward-auth gateways (nginx `auth_request`, Caddy `forward_auth`, Traefik `ForwardAuth`…).
//!
//! Every request must carry `Authorization: Bearer <JWT>`; the token is verified against its
//! issuer's JWKS (cached per Cache-Control, refreshed in the background, kept while the issuer is
//! down), the request is matched against a route policy, and the answer is allow with
//! `x-user-id` / `x-tenant-id` / `x-user-roles` for the upstream, or a denial with the right
//! status. See `SPEC.md` (§ numbers in comments) and the README.
//!
//! Layout — the file list is the architecture, and a lower layer never imports an upper one:
//! - [`core`]: pure — config (YAML → validated), policy, token, keys, identity, membership
//!   semantics ([`core::tenancy`]), decision and its wire form. No network, no tokio, no clock.
//! - [`sources`]: facts from outside, each with its fetch, cache, single flight and staleness —
//!   [`sources::jwks`], [`sources::introspection`] (RFC 7662), [`sources::membership`] (file,
//!   PostgreSQL). Import `core` only.
//! - [`serve`]: the [`serve::authorizer`] joining core and sources per check, the gRPC and HTTP
//!   adapters, listeners and connection bounds, TLS, reload, metrics, decision log.
//! - [`dev`]: the demo issuer and personas; [`cli`]: `check` and `check-config --online`.

pub mod cli;
pub mod core;
pub mod dev;
#[doc(hidden)]
pub mod fuzzing;
pub mod serve;
pub mod sources;

pub use crate::core::config::{Config, ConfigError};
pub use crate::core::decision::Decision;
pub use crate::serve::authorizer::{AuthHeader, Authorizer, CheckInput};
pub use crate::serve::server::{InitError, Listeners, Options, Running, start};
