//! The verified-token cache: token → identity, so a token seen before skips signature and claim
//! checks. Policy is still evaluated on every request; only verification is cached.
//!
//! Bounded (`token_cache.capacity`; quick_cache's S3-FIFO, about 450 B per cached token against
//! moka's 770 B), keyed by a 128-bit SipHash-2-4 of the whole token under a random per-cache key
//! (a keyed PRF: no one can craft two tokens that share an entry, and the cache holds 16 bytes per
//! key, not the token; SHA-256 cost 2.4 µs per check on CPUs without SHA instructions). An entry's
//! deadline is the token's `exp` (+ leeway) capped at `token_cache.max_ttl` from insertion, checked
//! on every read (time is a parameter); expired entries are dropped when met or evicted. An entry
//! remembers the fingerprint of the key that verified it: when a refresh removes that key, the
//! entry is refused (and dropped) on its next use — a verdict never outlives its key.
//!
//! Cached identities share their tenant and role-set strings: thousands of users carry tenant
//! `acme` and roles `[reader]`, and one copy of each saves ~100 B per cached token (the RSS
//! budget is 64 MB at 100,000 tokens). The sets of shared values are bounded and start over
//! when full (values already shared stay valid: they are reference counted).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::core::identity::Identity;
pub use crate::core::token_hash::{TokenHash, keyed_hash, random_key};

/// A cached verification verdict.
#[derive(Debug)]
pub struct Verified {
    pub identity: Arc<Identity>,
    /// Index of the issuer in the runtime that verified it (a reload keeps the cache only when
    /// the issuer list is unchanged, so the index stays right).
    pub issuer_index: usize,
    pub key_fingerprint: u64,
    /// Wall-clock deadline: `exp` + leeway, seconds since the epoch.
    pub valid_until: f64,
}

/// The cache (hits and misses are counted by the caller, in `/metrics`).
pub struct TokenCache {
    inner: Option<quick_cache::sync::Cache<TokenHash, Arc<Verified>>>,
    max_ttl: Duration,
    /// SipHash key, random per cache.
    key: (u64, u64),
    shared: Mutex<Shared>,
}

/// Distinct tenants and role sets of the cached identities, each held once.
#[derive(Default)]
struct Shared {
    tenants: HashSet<Arc<str>>,
    role_sets: HashSet<Arc<[Box<str>]>>,
}

/// Distinct values kept per kind; beyond that the sets start over (an IdP with more distinct
/// tenants than this still works, its identities just share less).
const SHARED_MAX: usize = 4096;

impl Shared {
    /// `identity` with its tenant and roles replaced by the shared copies (the first identity to
    /// carry a value provides the copy). `None` when it already holds the shared ones.
    fn share(&mut self, identity: &Identity) -> Option<Identity> {
        if self.tenants.len() >= SHARED_MAX {
            self.tenants.clear();
        }
        if self.role_sets.len() >= SHARED_MAX {
            self.role_sets.clear();
        }
        let tenant_id = identity
            .tenant_id
            .as_ref()
            .map(|t| match self.tenants.get(&**t) {
                Some(shared) => Arc::clone(shared),
                None => {
                    self.tenants.insert(Arc::clone(t));
                    Arc::clone(t)
                }
            });
        let roles = match self.role_sets.get(&*identity.roles) {
            Some(shared) => Arc::clone(shared),
            None => {
                self.role_sets.insert(Arc::clone(&identity.roles));
                Arc::clone(&identity.roles)
            }
        };
        let same_tenant = match (&tenant_id, &identity.tenant_id) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => true,
        };
        if same_tenant && Arc::ptr_eq(&roles, &identity.roles) {
            return None;
        }
        Some(Identity {
            tenant_id,
            roles,
            ..identity.clone()
        })
    }
}

impl TokenCache {
    /// `capacity` 0 disables caching.
    pub fn new(capacity: u64, max_ttl: Duration) -> Self {
        // quick_cache (S3-FIFO) keeps little per entry: the memory budget is 64 MB at 100k tokens.
        let inner = (capacity > 0).then(|| {
            quick_cache::sync::Cache::new(usize::try_from(capacity).unwrap_or(usize::MAX))
        });
        // No random key: fail closed by disabling the cache.
        let (inner, key) = match random_key() {
            Some(key) => (inner, key),
            None => (None, (0, 0)),
        };
        TokenCache {
            max_ttl,
            inner,
            key,
            shared: Mutex::default(),
        }
    }

    pub fn enabled(&self) -> bool {
        self.inner.is_some()
    }

    pub fn hash(&self, token: &str) -> TokenHash {
        keyed_hash(self.key, token)
    }

    /// A live entry for this token, or `None`.
    pub fn get(&self, hash: &TokenHash, now: f64) -> Option<Arc<Verified>> {
        let inner = self.inner.as_ref()?;
        match inner.get(hash) {
            Some(v) if now < v.valid_until => Some(v),
            Some(_) => {
                inner.remove(hash);
                None
            }
            None => None,
        }
    }

    /// Forget one entry (its key left the set).
    pub fn remove(&self, hash: &TokenHash) {
        if let Some(inner) = &self.inner {
            inner.remove(hash);
        }
    }

    pub fn insert(
        &self,
        hash: TokenHash,
        identity: Arc<Identity>,
        issuer_index: usize,
        key_fingerprint: u64,
        valid_until: f64,
        now: f64,
    ) {
        let Some(inner) = &self.inner else { return };
        let left = valid_until - now;
        if left.is_nan() || left <= 0.0 {
            return;
        }
        // The entry's deadline: the token's exp (+ leeway), and at most max_ttl from now.
        let valid_until = valid_until.min(now + self.max_ttl.as_secs_f64());
        // A poisoned lock only means another insert panicked mid-way: the sets are still sets.
        let shared = self
            .shared
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .share(&identity);
        let identity = shared.map_or(identity, Arc::new);
        inner.insert(
            hash,
            Arc::new(Verified {
                identity,
                issuer_index,
                key_fingerprint,
                valid_until,
            }),
        );
    }

    /// Drop everything (configuration reloaded: issuers or their rules may have changed).
    pub fn clear(&self) {
        if let Some(inner) = &self.inner {
            inner.clear();
        }
    }

    /// Entries currently held (approximate, for metrics).
    pub fn len(&self) -> u64 {
        self.inner.as_ref().map_or(0, |c| c.len() as u64)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(sub: &str) -> Arc<Identity> {
        Arc::new(Identity {
            issuer: "iam".into(),
            user_id: Some(sub.into()),
            tenant_id: None,
            roles: Arc::new([]),
            expires_at: 0.0,
        })
    }

    #[test]
    fn hit_miss_and_expiry_by_exp() {
        let c = TokenCache::new(100, Duration::from_secs(300));
        let (a, b) = (c.hash("token-a"), c.hash("token-b"));
        assert_ne!(a, b);
        c.insert(a, identity("alice"), 0, 7, 1000.0, 900.0);
        assert_eq!(
            c.get(&a, 950.0).unwrap().identity.user_id.as_deref(),
            Some("alice")
        );
        assert!(c.get(&b, 950.0).is_none(), "no cross-token mix-up");
        assert!(c.get(&a, 1000.0).is_none(), "expired at exp + leeway");
        assert!(c.get(&a, 950.0).is_none(), "an expired entry is dropped");
        // Already expired: not stored.
        c.insert(b, identity("bob"), 0, 7, 10.0, 20.0);
        assert!(c.get(&b, 5.0).is_none());
    }

    #[test]
    fn capacity_is_bounded() {
        let c = TokenCache::new(50, Duration::from_secs(300));
        for i in 0..1000 {
            c.insert(c.hash(&format!("t{i}")), identity("x"), 0, 1, 1e9, 0.0);
        }
        assert!(c.len() <= 50, "{}", c.len());
    }

    #[test]
    fn max_ttl_caps_lifetime() {
        let c = TokenCache::new(10, Duration::from_millis(50));
        let h = c.hash("t");
        // A token valid for ages is still kept at most max_ttl (time is a parameter: no sleep).
        c.insert(h, identity("x"), 0, 1, 1e12, 1000.0);
        assert!(c.get(&h, 1000.04).is_some());
        assert!(c.get(&h, 1000.06).is_none(), "max_ttl reached");
    }

    #[test]
    fn keys_are_per_cache_and_cover_the_whole_token() {
        let (a, b) = (
            TokenCache::new(10, Duration::from_secs(1)),
            TokenCache::new(10, Duration::from_secs(1)),
        );
        assert_ne!(
            a.hash("same token"),
            b.hash("same token"),
            "random key per cache"
        );
        assert_eq!(a.hash("same token"), a.hash("same token"));
        assert_ne!(a.hash("eyJ.eyJ.sig1"), a.hash("eyJ.eyJ.sig2"));
    }

    #[test]
    fn cached_identities_share_tenant_and_roles() {
        let c = TokenCache::new(10, Duration::from_secs(300));
        let id = |sub: &str| {
            Arc::new(Identity {
                issuer: "iam".into(),
                user_id: Some(sub.into()),
                tenant_id: Some("acme".into()),
                roles: Arc::new(["reader".into(), "member".into()]),
                expires_at: 0.0,
            })
        };
        let (a, b) = (c.hash("a"), c.hash("b"));
        c.insert(a, id("alice"), 0, 1, 1e12, 0.0);
        c.insert(b, id("bob"), 0, 1, 1e12, 0.0);
        let (a, b) = (
            c.get(&a, 1.0).unwrap().identity.clone(),
            c.get(&b, 1.0).unwrap().identity.clone(),
        );
        assert!(Arc::ptr_eq(&a.roles, &b.roles), "one role list");
        assert!(Arc::ptr_eq(
            a.tenant_id.as_ref().unwrap(),
            b.tenant_id.as_ref().unwrap()
        ));
        // Sharing never changes a value.
        assert_eq!(
            (a.user_id.as_deref(), b.user_id.as_deref()),
            (Some("alice"), Some("bob"))
        );
        assert_eq!(
            &*b.roles,
            &["reader".into(), "member".into()] as &[Box<str>]
        );
        assert_eq!(b.tenant_id.as_deref(), Some("acme"));
    }

    #[test]
    fn shared_values_are_bounded() {
        let mut s = Shared::default();
        for i in 0..(SHARED_MAX * 3) {
            let id = Identity {
                issuer: "iam".into(),
                user_id: None,
                tenant_id: Some(format!("t{i}").into()),
                roles: Arc::new([format!("r{i}").into()]),
                expires_at: 0.0,
            };
            let _ = s.share(&id);
            assert!(s.tenants.len() <= SHARED_MAX && s.role_sets.len() <= SHARED_MAX);
        }
    }

    #[test]
    fn disabled_cache_stores_nothing() {
        let c = TokenCache::new(0, Duration::from_secs(300));
        let h = c.hash("t");
        c.insert(h, identity("x"), 0, 1, 1e12, 0.0);
        assert!(c.get(&h, 1.0).is_none());
        assert!(!c.enabled());
    }
}
