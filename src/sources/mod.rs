//! Facts from outside, each source owning its fetch, cache, single flight and staleness: the
//! issuers' key sets ([`jwks`]), RFC 7662 introspection verdicts ([`introspection`]) and the
//! membership stores ([`membership`]).
//!
//! Sources import [`crate::core`] only. What the server wants to know about them (fetch and call
//! outcomes for metrics) it hands in as a callback or an observer, so no source depends on the
//! serving layer.

pub mod introspection;
pub mod jwks;
pub mod membership;
