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

use crate::core::decision::Decision;
use crate::serve::telemetry::Protocol;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    protocol: &'static str,
    outcome: &'static str,
    reason: &'static str,
    /// The rule's own shared name: a check clones the `Arc`, it does not format a label string.
    /// `None` (no rule matched) is exported as `rule=""`.
    rule: Option<Arc<str>>,
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
struct LookupLabels {
    source: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabels {
    source: &'static str,
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
    membership_lookups: Family<LookupLabels, Counter>,
    membership_available: Family<SourceLabels, Gauge>,
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
        let membership_lookups = Family::<LookupLabels, Counter>::default();
        registry.register(
            "membership_lookups",
            "Membership store lookups by source (file, postgres) and outcome (hit, miss, stale, error)",
            membership_lookups.clone(),
        );
        let membership_available = Family::<SourceLabels, Gauge>::default();
        registry.register(
            "membership_store_available",
            "1 when the membership store answers now, 0 when it cannot be reached",
            membership_available.clone(),
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
            "1 when ready: every issuer has a usable key set and the membership store (if any) has answered",
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
            membership_lookups,
            membership_available,
            ready,
        }
    }

    pub fn record_decision(&self, protocol: Protocol, decision: &Decision, latency: Duration) {
        let (outcome, reason, rule) = match decision {
            Decision::Allow { rule, .. } => ("allow", "allow", Some(Arc::clone(rule))),
            Decision::Deny { rule, denial } => (
                denial.outcome().error_code(),
                denial.reason_code(),
                rule.clone(),
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

    /// One membership lookup: `outcome` is hit, miss, stale or error.
    pub fn record_membership_lookup(&self, source: &'static str, outcome: &'static str) {
        self.membership_lookups
            .get_or_create(&LookupLabels { source, outcome })
            .inc();
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

    /// Set the state gauges from `state` and encode everything.
    pub fn render(&self, state: &Gauges) -> String {
        self.key_set_age.clear();
        self.keys.clear();
        for issuer in &state.issuers {
            let labels = IssuerLabels {
                issuer: issuer.name.to_string(),
            };
            match issuer.key_set {
                Some((age, count)) => {
                    self.key_set_age
                        .get_or_create(&labels)
                        .set(age.as_secs_f64());
                    self.keys
                        .get_or_create(&labels)
                        .set(i64::try_from(count).unwrap_or(i64::MAX));
                }
                None => {
                    self.keys.get_or_create(&labels).set(0);
                }
            }
        }
        self.cache_size
            .set(i64::try_from(state.token_cache_entries).unwrap_or(i64::MAX));
        self.ready.set(i64::from(state.ready));
        self.membership_available.clear();
        if let Some((source, available)) = state.membership {
            self.membership_available
                .get_or_create(&SourceLabels { source })
                .set(i64::from(available));
        }
        let mut out = String::new();
        // Encoding into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Introspection calls and cache lookups are counted here.
impl crate::sources::introspection::Observer for Metrics {
    fn call(&self, issuer: &str, outcome: &'static str) {
        self.record_introspection(issuer, outcome);
    }
    fn cache(&self, issuer: &str, hit: bool) {
        self.record_introspection_cache(issuer, hit);
    }
}

/// What the state gauges show, read from the runtime in force at scrape time by the caller (so
/// that this module depends on nothing above it).
#[derive(Debug, Clone, Default)]
pub struct Gauges {
    pub issuers: Vec<IssuerGauge>,
    pub token_cache_entries: u64,
    pub ready: bool,
    /// The membership store's source and whether it answers now.
    pub membership: Option<(&'static str, bool)>,
}

/// One issuer's key set: its age and number of usable keys; `None` before the first fetch.
#[derive(Debug, Clone)]
pub struct IssuerGauge {
    pub name: Arc<str>,
    pub key_set: Option<(Duration, usize)>,
}

/// Shared handle.
pub type SharedMetrics = Arc<Metrics>;
