//! Facts from outside, each source owning its fetch, cache, single flight and staleness: the
//! issuers' key sets ([`jwks`]) and the membership stores ([`membership`]).
//!
//! Sources import [`crate::core`] only. What the server wants to know about them (fetch outcomes
//! for metrics) it hands in as a callback, so no source depends on the serving layer.

pub mod jwks;
pub mod membership;
