//! Prometheus metrics (OpenMetrics text at `/metrics`, via `prometheus-client`).
//!
//! Label values are bounded: outcome and reason come from fixed enums, rule and issuer names from
//! the configuration. Never a subject, token, path or kid. Counters are incremented where events
//! happen; gauges that describe state (key-set age, key count, cache size) are set at scrape time.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::authorizer::Authorizer;
use crate::decision::Decision;
use crate::telemetry::Protocol;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    protocol: &'static str,
    outcome: &'static str,
    reason: &'static str,
    rule: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProtocolLabels {
    protocol: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FetchLabels {
    issuer: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct IssuerLabels {
    issuer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

/// Every metric of the process.
pub struct Metrics {
    registry: Registry,
    decisions: Family<DecisionLabels, Counter>,
    latency: Family<ProtocolLabels, Histogram>,
    jwks_fetches: Family<FetchLabels, Counter>,
    key_set_age: Family<IssuerLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    keys: Family<IssuerLabels, Gauge>,
    cache_hits: Counter,
    cache_misses: Counter,
    cache_size: Gauge,
    reloads: Family<OutcomeLabels, Counter>,
    ready: Gauge,
    introspection_calls: Family<FetchLabels, Counter>,
    introspection_cache_hits: Family<IssuerLabels, Counter>,
    introspection_cache_misses: Family<IssuerLabels, Counter>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

/// Check latency buckets: 10 µs to 1 s, fine enough to see 10 µs–10 ms.
const LATENCY_BUCKETS: [f64; 16] = [
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0,
];

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("citadel_authz");
        let decisions = Family::<DecisionLabels, Counter>::default();
        registry.register(
            "decisions",
            "Decisions by protocol, outcome, reason and rule",
            decisions.clone(),
        );
        let latency = Family::<ProtocolLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(LATENCY_BUCKETS)
        });
        registry.register(
            "check_duration_seconds",
            "Time to decide one check",
            latency.clone(),
        );
        let jwks_fetches = Family::<FetchLabels, Counter>::default();
        registry.register(
            "jwks_fetches",
            "JWKS fetches by issuer and outcome",
            jwks_fetches.clone(),
        );
        let key_set_age = Family::default();
        registry.register(
            "jwks_key_set_age_seconds",
            "Seconds since the issuer's key set was last fetched successfully",
            key_set_age.clone(),
        );
        let keys = Family::default();
        registry.register(
            "jwks_keys",
            "Usable keys in the issuer's current key set",
            keys.clone(),
        );
        let cache_hits = Counter::default();
        registry.register(
            "token_cache_hits",
            "Verified-token cache hits",
            cache_hits.clone(),
        );
        let cache_misses = Counter::default();
        registry.register(
            "token_cache_misses",
            "Verified-token cache misses",
            cache_misses.clone(),
        );
        let cache_size = Gauge::default();
        registry.register(
            "token_cache_entries",
            "Entries in the verified-token cache",
            cache_size.clone(),
        );
        let reloads = Family::default();
        registry.register(
            "config_reloads",
            "Configuration reloads by outcome",
            reloads.clone(),
        );
        let ready = Gauge::default();
        registry.register(
            "ready",
            "1 when every issuer has a usable key set",
            ready.clone(),
        );
        // SPEC §9: calls by issuer and outcome (active, inactive, error), and cache use.
        let introspection_calls = Family::<FetchLabels, Counter>::default();
        registry.register(
            "introspection_calls",
            "Introspection calls by issuer and outcome (active, inactive, error)",
            introspection_calls.clone(),
        );
        let introspection_cache_hits = Family::<IssuerLabels, Counter>::default();
        registry.register(
            "introspection_cache_hits",
            "Introspection answers served from the cache",
            introspection_cache_hits.clone(),
        );
        let introspection_cache_misses = Family::<IssuerLabels, Counter>::default();
        registry.register(
            "introspection_cache_misses",
            "Introspection cache misses (a call was made or joined)",
            introspection_cache_misses.clone(),
        );
        Metrics {
            registry,
            introspection_calls,
            introspection_cache_hits,
            introspection_cache_misses,
            decisions,
            latency,
            jwks_fetches,
            key_set_age,
            keys,
            cache_hits,
            cache_misses,
            cache_size,
            reloads,
            ready,
        }
    }

    pub fn record_decision(&self, protocol: Protocol, decision: &Decision, latency: Duration) {
        let (outcome, reason, rule) = match decision {
            Decision::Allow { rule, .. } => ("allow", "allow", rule.to_string()),
            Decision::Deny { rule, denial } => (
                denial.outcome().error_code(),
                denial.reason_code(),
                rule.as_deref().unwrap_or("").to_owned(),
            ),
        };
        self.decisions
            .get_or_create(&DecisionLabels {
                protocol: protocol.as_str(),
                outcome,
                reason,
                rule,
            })
            .inc();
        self.latency
            .get_or_create(&ProtocolLabels {
                protocol: protocol.as_str(),
            })
            .observe(latency.as_secs_f64());
    }

    pub fn record_fetch(&self, issuer: &str, ok: bool) {
        self.jwks_fetches
            .get_or_create(&FetchLabels {
                issuer: issuer.to_owned(),
                outcome: if ok { "ok" } else { "error" },
            })
            .inc();
    }

    pub fn record_cache(&self, hit: bool) {
        if hit {
            self.cache_hits.inc();
        } else {
            self.cache_misses.inc();
        }
    }

    /// One introspection call; `outcome` is `active`, `inactive` or `error`.
    pub fn record_introspection(&self, issuer: &str, outcome: &'static str) {
        self.introspection_calls
            .get_or_create(&FetchLabels {
                issuer: issuer.to_owned(),
                outcome,
            })
            .inc();
    }

    pub fn record_introspection_cache(&self, issuer: &str, hit: bool) {
        let family = if hit {
            &self.introspection_cache_hits
        } else {
            &self.introspection_cache_misses
        };
        family
            .get_or_create(&IssuerLabels {
                issuer: issuer.to_owned(),
            })
            .inc();
    }

    pub fn record_reload(&self, ok: bool) {
        self.reloads
            .get_or_create(&OutcomeLabels {
                outcome: if ok { "ok" } else { "error" },
            })
            .inc();
    }

    /// Set the state gauges from the runtime in force and encode everything.
    pub fn render(&self, authorizer: &Authorizer) -> String {
        let rt = authorizer.runtime();
        self.key_set_age.clear();
        self.keys.clear();
        for issuer in &rt.issuers {
            let labels = IssuerLabels {
                issuer: issuer.name.to_string(),
            };
            if let Some(loaded) = issuer.keys.current() {
                self.key_set_age
                    .get_or_create(&labels)
                    .set(loaded.fetched_at.elapsed().as_secs_f64());
                self.keys
                    .get_or_create(&labels)
                    .set(loaded.keys.len() as i64);
            } else {
                self.keys.get_or_create(&labels).set(0);
            }
        }
        self.cache_size
            .set(i64::try_from(rt.cache.len()).unwrap_or(i64::MAX));
        self.ready.set(i64::from(authorizer.readiness().is_ok()));
        let mut out = String::new();
        // Encoding into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Shared handle.
pub type SharedMetrics = Arc<Metrics>;
