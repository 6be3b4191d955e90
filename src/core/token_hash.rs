//! Keyed hashes of tokens: what the verified-token cache and the introspection cache are keyed by,
//! so that no cache ever holds a token. A 128-bit SipHash-2-4 under a random per-process key: no
//! two tokens share an entry, and nobody outside can compute collisions.

/// Keyed 128-bit hash of a token.
pub type TokenHash = u128;

/// A SipHash key from aws-lc's CSPRNG; `None` if it failed (callers then cache nothing: a fixed
/// key would still separate tokens, but collisions would become computable). Shared by the
/// verified-token cache and the introspection cache.
pub fn random_key() -> Option<(u64, u64)> {
    let mut seed = [0u8; 16];
    aws_lc_rs::rand::fill(&mut seed).ok()?;
    let (k0, k1) = seed.split_at(8);
    Some((
        u64::from_le_bytes(k0.try_into().ok()?),
        u64::from_le_bytes(k1.try_into().ok()?),
    ))
}

/// 128-bit SipHash-2-4 of the whole token under `key`.
pub fn keyed_hash(key: (u64, u64), token: &str) -> TokenHash {
    use siphasher::sip128::Hasher128;
    use std::hash::Hasher;
    let mut h = siphasher::sip128::SipHasher24::new_with_keys(key.0, key.1);
    h.write(token.as_bytes());
    h.finish128().as_u128()
}
