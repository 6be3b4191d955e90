//! The decision core shared by every adapter: a [`CheckInput`] in, a [`Decision`] out.
//!
//! Order (SPEC §3/§4): method and canonical path (400) → first matching rule (403 if none) → public rules
//! allow without looking at the token → bearer extraction (401/400) → issuer by exact `iss` →
//! key set (503 if unavailable) → signature and claims (401) — or, for an opaque token, RFC 7662
//! introspection (SPEC §9) — → the rule's issuers (403) → memberships from the store, when
//! configured (503 if it cannot answer; SPEC §8) → tenant and roles on the effective identity (403).
//! The only I/O is delegated: an unknown-`kid` refetch to [`crate::sources::jwks`], introspection
//! (opaque tokens, and JWTs of a `tokens: all` issuer after their own checks) to
//! [`crate::sources::introspection`], a membership lookup to [`crate::sources::membership`]; what a
//! lookup means is decided in [`crate::core::tenancy`]. The configuration in force is an immutable
//! snapshot: a check finishes on the version it started with.
//!
//! [`explain`] runs the same code with a [`Trace`] that records every step (the admin API and the
//! `explain` / `test` commands); [`check`] passes [`NoTrace`], whose step closures are never
//! called, so the hot path builds no step text and allocates nothing for it.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;

use crate::core::config::{Config, IntrospectTokens, IssuerConfig};
use crate::core::decision::{Decision, Denial};
use crate::core::identity::Identity;
use crate::core::policy::{self, canonicalize};
use crate::core::tenancy;
use crate::core::token::{Mismatch, TokenError, Unverified, quote, quote_list};
use crate::serve::cache::TokenCache;
use crate::serve::metrics::{Gauges, IssuerGauge, Metrics};
use crate::serve::telemetry::{self, Protocol};
use crate::sources::introspection::{Answer, Introspector, RETRY_AFTER_SECS};
use crate::sources::jwks::{IssuerKeys, Refetch};
use crate::sources::membership::Membership;

/// The `Authorization` header(s) of the original request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthHeader<'a> {
    Absent,
    One(&'a str),
    /// Repeated, or one value containing `,` (Envoy joins repeated headers with `,`).
    Several,
}

impl<'a> AuthHeader<'a> {
    /// Classify the values of the header as one adapter sees them.
    pub fn from_values(mut values: impl Iterator<Item = &'a str>) -> Self {
        match (values.next(), values.next()) {
            (None, _) => AuthHeader::Absent,
            (Some(v), None) if v.contains(',') => AuthHeader::Several,
            (Some(v), None) => AuthHeader::One(v),
            (Some(_), Some(_)) => AuthHeader::Several,
        }
    }
}

/// What every adapter extracts from its protocol.
#[derive(Debug, Clone, Copy)]
pub struct CheckInput<'a> {
    pub method: &'a str,
    /// Request target as received: path, possibly with `?query`.
    pub path: &'a str,
    pub authorization: AuthHeader<'a>,
    /// The rule the gateway chose (Envoy's `context_extensions` `citadel_rule`, SPEC §10): it
    /// decides instead of path matching. Only Envoy's own config can set it; forward-auth never
    /// does, since a client could set any header.
    pub rule: Option<&'a str>,
}

/// One issuer: its rules and its keys.
pub struct Issuer {
    pub config: IssuerConfig,
    pub name: Arc<str>,
    pub keys: Arc<IssuerKeys>,
    /// RFC 7662 introspection (SPEC §9), when configured; its answer cache lives as long as
    /// this runtime.
    pub introspection: Option<Arc<Introspector>>,
}

/// A configuration in force: compiled policy plus issuers with their key stores.
///
/// What a reload keeps (see [`Runtime::new`]): a verdict reached under the old configuration is
/// reused only where the new one would reach the same verdict. The policy is evaluated on every
/// check, so a policy-only change keeps both caches.
pub struct Runtime {
    pub config: Config,
    pub issuers: Vec<Issuer>,
    /// The verified-token cache: shared with the previous runtime when the issuers, the JWKS
    /// timing and the cache settings are all unchanged, else empty.
    pub cache: Arc<TokenCache>,
    pub metrics: Arc<Metrics>,
    /// The membership store, when `membership` is configured. Kept across reloads that do not
    /// change it (see [`crate::serve::reload`]), so its cache and connections survive.
    pub membership: Option<Arc<Membership>>,
}

impl Runtime {
    /// Pair each configured issuer with its key store (`keys_for` finds or creates one).
    ///
    /// `previous` (a reload) lends what the new configuration cannot tell apart from its own:
    /// the token cache (an entry names its issuer by index and its key by fingerprint, and a
    /// hit is still refused when the key has left the set), and each issuer's introspection
    /// answer cache when that issuer's settings are unchanged. Without this a valid reload
    /// during an IdP outage turned every cached opaque token into a 503 (SPEC §9: 503 "unless a
    /// cached answer for this token is still valid"), and every reload re-verified every token.
    pub fn new(
        config: Config,
        metrics: Arc<Metrics>,
        mut keys_for: impl FnMut(&IssuerConfig) -> Arc<IssuerKeys>,
        previous: Option<&Runtime>,
    ) -> Self {
        let capacity = config.token_cache.capacity;
        let issuers = config
            .issuers
            .iter()
            .map(|c| Issuer {
                config: c.clone(),
                name: Arc::from(c.name.as_str()),
                keys: keys_for(c),
                introspection: previous
                    .and_then(|p| p.same_introspection(c, capacity))
                    .or_else(|| {
                        Introspector::new(
                            c,
                            capacity,
                            Arc::clone(&metrics)
                                as Arc<dyn crate::sources::introspection::Observer>,
                        )
                        .map(Arc::new)
                    }),
            })
            .collect();
        let cache = match previous {
            Some(p) if p.same_verdicts(&config) => Arc::clone(&p.cache),
            _ => Arc::new(TokenCache::new(capacity, config.token_cache.max_ttl)),
        };
        Runtime {
            config,
            issuers,
            cache,
            metrics,
            membership: None,
        }
    }

    /// Whether a token verified under this runtime gets the same verdict under `config`: the
    /// same issuers in the same order (an entry holds its issuer's index), key sets fetched the
    /// same way, the same cache bounds and token size limit.
    fn same_verdicts(&self, config: &Config) -> bool {
        self.config.issuers == config.issuers
            && self.config.jwks == config.jwks
            && self.config.token_cache == config.token_cache
            && self.config.max_token_bytes == config.max_token_bytes
    }

    /// This runtime's introspection for an issuer configured exactly as `issuer` (an answer's
    /// identity is judged by the issuer's claim rules, so any change to them starts afresh).
    fn same_introspection(
        &self,
        issuer: &IssuerConfig,
        capacity: u64,
    ) -> Option<Arc<Introspector>> {
        if issuer.introspection.is_none() || self.config.token_cache.capacity != capacity {
            return None;
        }
        self.issuers
            .iter()
            .find(|i| i.config == *issuer)
            .and_then(|i| i.introspection.clone())
    }

    /// Ready when every issuer has a usable key set; otherwise every issuer that has none, so
    /// one look at `/readyz` shows all that need attention.
    pub fn readiness(&self) -> Result<(), NotReady> {
        let unready: Vec<Arc<str>> = self
            .issuers
            .iter()
            .filter(|i| !i.keys.is_ready())
            .map(|i| Arc::clone(&i.name))
            .collect();
        if !unready.is_empty() {
            return Err(NotReady::Issuers(unready));
        }
        match &self.membership {
            Some(m) if !m.is_ready() => Err(NotReady::Membership),
            _ => Ok(()),
        }
    }
}

/// Why the server is not ready.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotReady {
    #[error("shutting down")]
    Draining,
    /// The names of every issuer without a usable key set, in config order.
    #[error("{}", unready_issuers_message(.0))]
    Issuers(Vec<Arc<str>>),
    /// The membership store has not answered yet (SPEC §8).
    #[error("the membership store has not answered yet")]
    Membership,
}

fn unready_issuers_message(names: &[Arc<str>]) -> String {
    match names {
        [one] => format!("issuer {one} has no usable key set yet"),
        _ => format!("issuers {} have no usable key set yet", names.join(", ")),
    }
}

/// The authorizer: the configuration in force, swappable at run time.
pub struct Authorizer {
    runtime: ArcSwap<Runtime>,
    metrics: Arc<Metrics>,
    /// Set on shutdown: readiness and gRPC health report not serving while in-flight checks finish.
    draining: std::sync::atomic::AtomicBool,
    /// Span export (`telemetry.otlp_endpoint`); `None` when off, and then no span is created.
    tracing: Option<crate::serve::otel::Tracing>,
}

impl Authorizer {
    pub fn new(runtime: Runtime) -> Self {
        Authorizer {
            metrics: Arc::clone(&runtime.metrics),
            runtime: ArcSwap::from_pointee(runtime),
            draining: std::sync::atomic::AtomicBool::new(false),
            tracing: None,
        }
    }

    /// Export a span per check through `tracing` (for the life of the process: not reloadable).
    pub fn with_tracing(mut self, tracing: Option<crate::serve::otel::Tracing>) -> Self {
        self.tracing = tracing;
        self
    }

    /// The span pipeline, when `telemetry.otlp_endpoint` is set.
    pub fn tracing(&self) -> Option<&crate::serve::otel::Tracing> {
        self.tracing.as_ref()
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Start draining: not ready from now on.
    pub fn drain(&self) {
        self.draining
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Ready: not draining and every issuer has a usable key set.
    pub fn readiness(&self) -> Result<(), NotReady> {
        if self.draining.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(NotReady::Draining);
        }
        self.runtime().readiness()
    }

    /// The state `/metrics` shows, from the runtime in force.
    pub fn gauges(&self) -> Gauges {
        let rt = self.runtime();
        Gauges {
            issuers: rt
                .issuers
                .iter()
                .map(|i| IssuerGauge {
                    name: Arc::clone(&i.name),
                    key_set: i
                        .keys
                        .current()
                        .map(|k| (k.fetched_at.elapsed(), k.keys.len())),
                })
                .collect(),
            token_cache_entries: rt.cache.len(),
            ready: self.readiness().is_ok(),
            membership: rt
                .membership
                .as_ref()
                .map(|m| (m.source(), m.is_available())),
        }
    }

    /// Log and count one decision.
    pub fn record(
        &self,
        protocol: Protocol,
        decision: &Decision,
        method: &str,
        path: &str,
        latency: std::time::Duration,
        correlation: telemetry::Correlation<'_>,
    ) {
        let log_allows = self.runtime.load().config.decision_log_allows;
        telemetry::record_decision(
            protocol,
            decision,
            method,
            path,
            latency,
            log_allows,
            correlation,
        );
        self.metrics.record_decision(protocol, decision, latency);
    }

    /// The configuration in force (a snapshot; later swaps do not affect it).
    pub fn runtime(&self) -> Arc<Runtime> {
        self.runtime.load_full()
    }

    /// Swap in a new validated configuration.
    pub fn replace(&self, runtime: Runtime) {
        self.runtime.store(Arc::new(runtime));
    }

    /// Decide one request.
    pub async fn check(&self, input: &CheckInput<'_>) -> Decision {
        let rt = self.runtime.load_full();
        check(&rt, input, unix_now()).await
    }
}

/// Wall-clock seconds since the epoch (the only clock read on the check path).
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// How a step of the decision ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepResult {
    /// Passed; the decision goes on.
    Pass,
    /// Decided a denial.
    Fail,
    /// Not needed for this request (no store configured, a cache hit, …).
    Skip,
}

/// One step of a decision as [`explain`] reports it. `detail` is for a human and never holds
/// the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub name: &'static str,
    pub result: StepResult,
    pub detail: String,
}

/// Where the decision reports its steps. `detail` is a closure so that [`NoTrace`] never builds
/// the text.
pub trait Trace: Send {
    fn step(&mut self, name: &'static str, result: StepResult, detail: impl FnOnce() -> String);

    /// A step that decided `denial`: its text is the denial's reason.
    fn fail(&mut self, name: &'static str, denial: &Denial) {
        self.step(name, StepResult::Fail, || denial.log_reason());
    }
}

/// The trace of [`check`]: records nothing.
pub struct NoTrace;

impl Trace for NoTrace {
    #[inline(always)]
    fn step(&mut self, _: &'static str, _: StepResult, _: impl FnOnce() -> String) {}
}

impl Trace for Vec<Step> {
    fn step(&mut self, name: &'static str, result: StepResult, detail: impl FnOnce() -> String) {
        self.push(Step {
            name,
            result,
            detail: detail(),
        });
    }
}

/// Decide one request against one runtime at wall-clock time `now` (seconds since the epoch).
pub async fn check(rt: &Runtime, input: &CheckInput<'_>, now: f64) -> Decision {
    decide(rt, input, now, &mut NoTrace).await
}

/// [`check`], reporting every step of the decision in order.
pub async fn explain(rt: &Runtime, input: &CheckInput<'_>, now: f64) -> (Decision, Vec<Step>) {
    let mut steps = Vec::new();
    let decision = decide(rt, input, now, &mut steps).await;
    (decision, steps)
}

async fn decide<T: Trace>(rt: &Runtime, input: &CheckInput<'_>, now: f64, t: &mut T) -> Decision {
    use StepResult::{Pass, Skip};
    // Here, not in the adapters: every way in (gRPC, both forward-auth header pairs, the prefix
    // form) passes through this one check.
    if !policy::is_upper_case_method(input.method) {
        let denial = Denial::BadMethod(quote(input.method));
        t.fail("method", &denial);
        return Decision::deny(denial);
    }
    t.step("method", Pass, || quote(input.method));
    let path = match canonicalize(input.path) {
        Ok(p) => p,
        Err(e) => {
            let denial = Denial::BadPath(e);
            t.fail("path", &denial);
            return Decision::deny(denial);
        }
    };
    t.step("path", Pass, || {
        format!("{} canonical {}", quote(input.path), path.to_path_string())
    });
    let matched = match input.rule {
        None => rt.config.policy.find(input.method, &path),
        Some(name) => {
            let named = rt.config.policy.named(name, &path);
            if named.is_none() {
                // A misconfigured route: every request on it is refused until it is fixed.
                tracing::error!(rule = %quote(name), "Envoy's context_extensions citadel_rule names no rule of the policy; refusing (403)");
                let denial = Denial::UnknownRule(quote(name));
                t.fail("rule", &denial);
                return Decision::deny(denial);
            }
            named
        }
    };
    let Some(matched) = matched else {
        t.fail("rule", &Denial::NoRule);
        return Decision::deny(Denial::NoRule);
    };
    t.step("rule", Pass, || match input.rule {
        Some(_) => format!(
            "{} (named by context_extensions citadel_rule)",
            matched.rule.name
        ),
        None => format!(
            "{} (first rule matching the method and path)",
            matched.rule.name
        ),
    });
    let rule = Some(Arc::clone(&matched.rule.name));
    if matched.rule.public {
        t.step("public", Pass, || {
            "public rule: allowed without a token".to_owned()
        });
        return Decision::Allow {
            rule: Arc::clone(&matched.rule.name),
            identity: None,
        };
    }
    t.step("public", Skip, || {
        "not public: a valid token is required".to_owned()
    });
    let deny = |denial| Decision::Deny {
        rule: rule.clone(),
        denial,
    };
    let token = match bearer(input.authorization) {
        Ok(tok) => tok,
        Err(d) => {
            t.fail("bearer", &d);
            return deny(d);
        }
    };
    t.step("bearer", Pass, || {
        format!("Bearer token of {} bytes", token.len())
    });
    let identity = match verify(rt, token, now, t).await {
        Ok(id) => id,
        Err(d) => return deny(d),
    };
    let identity = match with_memberships(rt, &matched, identity, t).await {
        Ok(id) => id,
        Err(d) => {
            t.fail("membership", &d);
            return deny(d);
        }
    };
    let verdict = policy::authorize(&matched, &identity);
    trace_policy(t, &matched, &identity, verdict.as_ref().err());
    match verdict {
        Ok(()) => Decision::Allow {
            rule: Arc::clone(&matched.rule.name),
            identity: Some(identity),
        },
        Err(p) => deny(Denial::Policy(p)),
    }
}

/// The issuer, tenant and roles steps of [`policy::authorize`], which judges them in that order
/// and stops at the first that fails.
fn trace_policy<T: Trace>(
    t: &mut T,
    m: &policy::RuleMatch<'_, '_>,
    identity: &Identity,
    failed: Option<&policy::PolicyDenial>,
) {
    use policy::PolicyDenial::{InsufficientScope, IssuerNotAllowed, TenantMismatch};
    let source = m.rule.source();
    let stop = |at: u8| match failed {
        None => false,
        Some(IssuerNotAllowed) => at >= 1,
        Some(TenantMismatch) => at >= 2,
        Some(InsufficientScope) => at >= 3,
    };
    let result = |at: u8| match failed {
        Some(IssuerNotAllowed) if at == 0 => StepResult::Fail,
        Some(TenantMismatch) if at == 1 => StepResult::Fail,
        Some(InsufficientScope) if at == 2 => StepResult::Fail,
        _ => StepResult::Pass,
    };
    t.step("rule issuers", result(0), || match &source.issuers {
        None => format!("any issuer (token from {})", identity.issuer),
        Some(list) => format!(
            "token from {}; rule accepts {}",
            identity.issuer,
            list.join(", ")
        ),
    });
    if stop(1) {
        return;
    }
    match &source.tenant_param {
        None => t.step("tenant", StepResult::Skip, || {
            "rule has no tenant_param".to_owned()
        }),
        Some(param) => t.step("tenant", result(1), || {
            format!(
                "path {{{param}}} = {}; identity tenant = {}",
                m.tenant.map_or("(none)".to_owned(), quote),
                identity
                    .tenant_id
                    .as_deref()
                    .map_or("(none)".to_owned(), quote)
            )
        }),
    }
    if stop(2) {
        return;
    }
    t.step("roles", result(2), || {
        let mut want = Vec::new();
        if !source.roles_all.is_empty() {
            want.push(format!("all of [{}]", source.roles_all.join(", ")));
        }
        if !source.roles_any.is_empty() {
            want.push(format!("any of [{}]", source.roles_any.join(", ")));
        }
        let want = if want.is_empty() {
            "none".to_owned()
        } else {
            want.join(" and ")
        };
        format!(
            "rule requires {want}; identity has [{}]",
            identity.roles.join(", ")
        )
    });
}

/// The identity the rule is judged on: the token's, joined with the store's memberships when the
/// store covers this issuer (SPEC §8). A token without a user id has nothing to look up. A rule
/// that refuses the issuer is refused before any lookup, so no store outage turns it into a 503.
async fn with_memberships<T: Trace>(
    rt: &Runtime,
    matched: &policy::RuleMatch<'_, '_>,
    identity: Arc<Identity>,
    t: &mut T,
) -> Result<Arc<Identity>, Denial> {
    let skip =
        |t: &mut T, why: &'static str| t.step("membership", StepResult::Skip, || why.to_owned());
    let Some(store) = &rt.membership else {
        skip(t, "no membership store configured");
        return Ok(identity);
    };
    let Some(user) = identity.user_id.as_deref() else {
        skip(t, "the token has no user id to look up");
        return Ok(identity);
    };
    if !store.covers(&identity.issuer) {
        skip(t, "the store does not cover this issuer");
        return Ok(identity);
    }
    if !policy::issuer_allowed(matched.rule, &identity) {
        skip(t, "the rule refuses this issuer: no lookup");
        return Ok(identity);
    }
    match store.lookup(&identity.issuer, user).await {
        Ok(found) => {
            rt.metrics
                .record_membership_lookup(store.source(), found.outcome.label());
            // `tenant` is the rule's `tenant_param` segment; only such rules have one.
            let effective = tenancy::effective(&identity, &found.memberships, matched.tenant);
            t.step("membership", StepResult::Pass, || {
                format!(
                    "{} lookup for {} ({}): tenant {}, roles [{}]",
                    store.source(),
                    quote(user),
                    found.outcome.label(),
                    effective
                        .tenant_id
                        .as_deref()
                        .map_or("(none)".to_owned(), quote),
                    effective.roles.join(", ")
                )
            });
            Ok(Arc::new(effective))
        }
        Err(e) => {
            rt.metrics.record_membership_lookup(store.source(), "error");
            Err(Denial::MembershipUnavailable {
                detail: e.reason,
                retry_after_secs: e.retry_after_secs,
            })
        }
    }
}

/// The bearer token from the Authorization header (RFC 6750 §2.1: `Bearer 1*SP token`).
///
/// The scheme is the leading run of token characters, compared case-insensitively. Only a
/// missing header, an empty one, or another scheme (`Basic …`, `Bearerabc …`) is "no
/// credentials"; once the scheme is Bearer, anything but one or more spaces and one token
/// (`Bearer`, `Bearer<TAB>t`, `Bearer a b`) is a malformed Bearer value, so a client always
/// learns that its token was not understood.
pub fn bearer(header: AuthHeader<'_>) -> Result<&str, Denial> {
    let value = match header {
        AuthHeader::Absent => return Err(Denial::NoCredentials),
        AuthHeader::Several => return Err(Denial::SeveralAuthorizations),
        // Surrounding whitespace is not part of a header value (RFC 9110 §5.5).
        AuthHeader::One(v) => v.trim_matches([' ', '\t']),
    };
    let scheme_len = value
        .bytes()
        .position(|b| !policy::is_token_char(b))
        .unwrap_or(value.len());
    let (scheme, rest) = value.split_at(scheme_len);
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(Denial::NoCredentials);
    }
    let malformed = |why| Err(Denial::InvalidToken(TokenError::Bearer(why)));
    if rest.is_empty() {
        return malformed("no token after the scheme");
    }
    let Some(token) = rest.strip_prefix(' ') else {
        return malformed("the scheme must be followed by a space");
    };
    let token = token.trim_start_matches(' ');
    // A whole-token scan on every check: memchr2 compares 16 or 32 bytes at a time. Neither
    // `contains` over a char set nor a non-short-circuiting fold was vectorised by the compiler
    // (perf annotate: one byte per iteration, 2 % of a cached check's CPU).
    if memchr::memchr2(b' ', b'\t', token.as_bytes()).is_some() {
        return malformed("more than one token");
    }
    Ok(token)
}

fn unavailable(issuer: &Issuer) -> Denial {
    Denial::KeysUnavailable {
        issuer: Arc::clone(&issuer.name),
        retry_after_secs: issuer.keys.retry_after_secs(),
    }
}

/// SPEC §9: what an introspection answer means for a check. `jwt`: the identity of a JWT that
/// passed its own checks (then only `active` counts); `None`: an opaque token, whose identity is
/// the answer's.
async fn introspect(
    intro: &Arc<Introspector>,
    token: &str,
    jwt: Option<Arc<Identity>>,
    now: f64,
) -> Result<Arc<Identity>, Denial> {
    let answer = intro
        .introspect(token, now)
        .await
        .map_err(|f| Denial::IntrospectionFailed {
            issuer: Arc::clone(intro.issuer_name()),
            cause: f.0,
            retry_after_secs: RETRY_AFTER_SECS,
        })?;
    match (&*answer, jwt) {
        (Answer::Inactive, _) => Err(Denial::InvalidToken(TokenError::Inactive)),
        (Answer::Active(_), Some(identity)) => Ok(identity),
        (Answer::Active(Ok(identity)), None) => Ok(Arc::clone(identity)),
        (Answer::Active(Err(e)), None) => Err(Denial::InvalidToken(e.clone())),
    }
}

/// The introspection of an issuer with `tokens: all`, which every JWT of it also passes.
fn revocation_check(issuer: &Issuer) -> Option<&Arc<Introspector>> {
    issuer
        .introspection
        .as_ref()
        .filter(|i| i.config().tokens == IntrospectTokens::All)
}

async fn verify<T: Trace>(
    rt: &Runtime,
    token: &str,
    now: f64,
    t: &mut T,
) -> Result<Arc<Identity>, Denial> {
    use StepResult::{Pass, Skip};
    let invalid = Denial::InvalidToken;
    // Every denial of this function is one step's failure.
    let fail = |t: &mut T, name: &'static str, d: Denial| {
        t.fail(name, &d);
        Err(d)
    };
    if token.len() > rt.config.max_token_bytes {
        return fail(
            t,
            "token",
            invalid(TokenError::TooLarge(rt.config.max_token_bytes)),
        );
    }
    // SPEC §9: exactly two dots is a JWT; anything else is opaque and goes to the one issuer that
    // introspects (config allows at most one). With none, the JWT parser below refuses it (401).
    if token.bytes().filter(|b| *b == b'.').count() != 2
        && let Some(intro) = rt.issuers.iter().find_map(|i| i.introspection.as_ref())
    {
        t.step("token", Pass, || {
            format!(
                "opaque (not a JWT): introspected at {}",
                intro.issuer_name()
            )
        });
        return traced_introspect(intro, token, None, now, t).await;
    }
    let hash = rt.cache.enabled().then(|| rt.cache.hash(token));
    if let Some(hash) = &hash
        && let Some(hit) = {
            let hit = rt.cache.get(hash, now);
            rt.metrics.record_cache(hit.is_some());
            crate::serve::otel::note_cache(hit.is_some());
            hit
        }
    {
        let issuer = &rt.issuers[hit.issuer_index];
        // The cache never bypasses key availability (max_stale → 503) nor outlives its key.
        let Some(loaded) = issuer.keys.current() else {
            return fail(t, "keys", unavailable(issuer));
        };
        if loaded.keys.has_fingerprint(hit.key_fingerprint) {
            t.step("token cache", Pass, || {
                format!(
                    "hit: verified earlier for issuer {}, its key still in the set",
                    issuer.name
                )
            });
            // A cached verdict never outlives the introspection rules (§9 `tokens: all`): the
            // answer cache, with its own lifetimes, decides whether the JWT is still active.
            return match revocation_check(issuer) {
                Some(intro) => {
                    traced_introspect(intro, token, Some(Arc::clone(&hit.identity)), now, t).await
                }
                None => Ok(Arc::clone(&hit.identity)),
            };
        }
        rt.cache.remove(hash);
    }
    t.step("token cache", Skip, || match &hash {
        Some(_) => "miss: verifying".to_owned(),
        None => "disabled".to_owned(),
    });

    let unverified = match Unverified::parse(token, rt.config.max_token_bytes) {
        Ok(u) => u,
        Err(e) => return fail(t, "token", invalid(e)),
    };
    let Some((index, issuer)) = unverified.issuer().and_then(|iss| {
        rt.issuers
            .iter()
            .enumerate()
            .find(|(_, i)| i.config.issuer == iss)
    }) else {
        let denial = Denial::InvalidToken(TokenError::Issuer(Mismatch::new(
            unverified.issuer(),
            format!(
                "accepted: {}",
                quote_list(rt.issuers.iter().map(|i| i.config.issuer.as_str()))
            ),
        )));
        return fail(t, "issuer", denial);
    };
    t.step("issuer", Pass, || {
        format!(
            "iss {} is issuer {}",
            quote(&issuer.config.issuer),
            issuer.name
        )
    });
    if let Err(e) = unverified.precheck(&issuer.config) {
        return fail(t, "header", invalid(e));
    }
    let Some(mut loaded) = issuer.keys.current() else {
        return fail(t, "keys", unavailable(issuer));
    };
    let mut refetched = false;
    if let Err(unknown @ TokenError::UnknownKid(_)) = unverified.select_key(&loaded.keys) {
        refetched = true;
        loaded = match issuer.keys.refetch_for_unknown_kid().await {
            Refetch::Fetched(fresh) => fresh,
            Refetch::Cooldown { last_ok: true } => return fail(t, "keys", invalid(unknown)),
            Refetch::Failed | Refetch::Cooldown { last_ok: false } => {
                return fail(t, "keys", unavailable(issuer));
            }
        };
    }
    let key = match unverified.select_key(&loaded.keys) {
        Ok(k) => k,
        Err(e) => return fail(t, "keys", invalid(e)),
    };
    t.step("keys", Pass, || {
        format!(
            "key {} of {} in a set fetched {}s ago{}",
            key.kid.as_deref().map_or("(no kid)".to_owned(), quote),
            loaded.keys.len(),
            loaded.age().as_secs(),
            if refetched {
                " (refetched for an unknown kid)"
            } else {
                ""
            }
        )
    });
    let identity = match unverified.verify_with(key, &issuer.config, &issuer.name, now) {
        Ok(id) => Arc::new(id),
        Err(e) => return fail(t, "signature and claims", invalid(e)),
    };
    t.step("signature and claims", Pass, || {
        format!(
            "user {}, tenant {}, roles [{}], expires in {}s",
            identity
                .user_id
                .as_deref()
                .map_or("(none)".to_owned(), quote),
            identity
                .tenant_id
                .as_deref()
                .map_or("(none)".to_owned(), quote),
            identity.roles.join(", "),
            (identity.expires_at - now).round()
        )
    });
    let identity = match revocation_check(issuer) {
        Some(intro) => traced_introspect(intro, token, Some(identity), now, t).await?,
        None => identity,
    };
    if let Some(hash) = hash {
        let valid_until = identity.expires_at + issuer.config.leeway.as_secs_f64();
        rt.cache.insert(
            hash,
            Arc::clone(&identity),
            index,
            key.fingerprint,
            valid_until,
            now,
        );
    }
    Ok(identity)
}

/// [`introspect`] as one step.
async fn traced_introspect<T: Trace>(
    intro: &Arc<Introspector>,
    token: &str,
    jwt: Option<Arc<Identity>>,
    now: f64,
    t: &mut T,
) -> Result<Arc<Identity>, Denial> {
    let revocation = jwt.is_some();
    match introspect(intro, token, jwt, now).await {
        Ok(identity) => {
            t.step("introspection", StepResult::Pass, || {
                if revocation {
                    format!("{}: active (tokens: all)", intro.issuer_name())
                } else {
                    format!(
                        "{}: active; user {}, tenant {}, roles [{}]",
                        intro.issuer_name(),
                        identity
                            .user_id
                            .as_deref()
                            .map_or("(none)".to_owned(), quote),
                        identity
                            .tenant_id
                            .as_deref()
                            .map_or("(none)".to_owned(), quote),
                        identity.roles.join(", ")
                    )
                }
            });
            Ok(identity)
        }
        Err(d) => {
            t.fail("introspection", &d);
            Err(d)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorization_header_forms() {
        assert_eq!(AuthHeader::from_values([].into_iter()), AuthHeader::Absent);
        assert_eq!(
            AuthHeader::from_values(["Bearer a"].into_iter()),
            AuthHeader::One("Bearer a")
        );
        assert_eq!(
            AuthHeader::from_values(["Bearer a", "Bearer b"].into_iter()),
            AuthHeader::Several
        );
        assert_eq!(
            AuthHeader::from_values(["Bearer a,Bearer b"].into_iter()),
            AuthHeader::Several
        );
    }

    #[test]
    fn bearer_extraction() {
        fn t(v: &str) -> Result<&str, Denial> {
            bearer(AuthHeader::One(v))
        }
        assert_eq!(t("Bearer abc"), Ok("abc"));
        assert_eq!(t("bearer abc"), Ok("abc"));
        assert_eq!(t("BEARER   abc "), Ok("abc"));
        assert_eq!(t("Basic dXNlcjpwYXNz"), Err(Denial::NoCredentials));
        assert_eq!(t(""), Err(Denial::NoCredentials));
        assert_eq!(t("Bearerabc"), Err(Denial::NoCredentials));
        assert!(matches!(t("Bearer"), Err(Denial::InvalidToken(_))));
        assert!(matches!(t("Bearer a b"), Err(Denial::InvalidToken(_))));
    }

    #[test]
    fn bearer_whitespace_forms_are_malformed_bearer_values_not_other_schemes() {
        fn t(v: &str) -> Result<&str, Denial> {
            bearer(AuthHeader::One(v))
        }
        let malformed = |v: &str| matches!(t(v), Err(Denial::InvalidToken(TokenError::Bearer(_))));
        for v in [
            "Bearer\tabc",
            "bearer\tabc",
            "BEARER\t\tabc",
            "Bearer \tabc",
            "Bearer abc\tdef",
            "Bearer",
            "bearer",
            "Bearer  ",
            "Bearer\t",
            " Bearer \t ",
            "Bearer=abc",
            "Bearer:abc",
            "Bearer a b",
        ] {
            assert!(malformed(v), "{v:?}: {:?}", t(v));
        }
        assert_eq!(t("\tBearer abc\t"), Ok("abc"));
        for v in [
            "",
            " \t",
            "Basic\tdXNl",
            "Bearerabc def",
            "Bearer.x y",
            "Token abc",
        ] {
            assert_eq!(t(v), Err(Denial::NoCredentials), "{v:?}");
        }
        assert_eq!(bearer(AuthHeader::Absent), Err(Denial::NoCredentials));
        assert_eq!(
            bearer(AuthHeader::Several),
            Err(Denial::SeveralAuthorizations)
        );
    }
}
