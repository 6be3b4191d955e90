//! The pure decision core: configuration (raw YAML → validated), the policy (rules, canonical
//! paths), tokens (compact JWS → verified identity), key sets (JWKS → keys), membership semantics
//! and the decision with its wire form.
//!
//! No network, no tokio, no clock reads: time comes in as an argument and facts from outside
//! (key sets, store answers) come in as data. Loading a config reads the files it names (policy,
//! memberships, TLS material), so that one `check-config` run can report every problem of all of
//! them with its field path. Nothing here imports [`crate::sources`] or [`crate::serve`].

pub mod config;
pub mod decision;
pub mod identity;
pub mod keys;
pub mod lint;
pub mod policy;
pub mod redact;
pub mod signer;
pub mod tenancy;
pub mod tls_files;
pub mod token;
pub mod token_hash;
pub mod yaml;
