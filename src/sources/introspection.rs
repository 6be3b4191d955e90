//! RFC 7662 token introspection (SPEC §9): the source of verdicts for opaque tokens and, with
//! `tokens: all`, of revocation for JWTs.
//!
//! One [`Introspector`] per introspecting issuer, kept with its answer cache across reloads that
//! leave that issuer's settings unchanged (see `Runtime::new`). The call follows the JWKS client's rules:
//! rustls, no redirects (a redirect could lead to an unchecked URL or replay the client
//! credentials elsewhere), a whole-call timeout, an answer of at most 64 KiB. Concurrent checks
//! of one token share one call (single flight, in a spawned task, so a cancelled request never
//! cancels a call others wait on), and answers are cached under a keyed hash of the token, never
//! the token: an active one at most `cache_ttl` and never past its `exp`, an inactive (or refused)
//! one for `negative_ttl`. A failed call is not cached: the next check asks again.
//!
//! What an answer means is decided by pure code: [`judge`] (is it a well-formed RFC 7662
//! answer?) and [`crate::core::token::identity_from_introspection`] (the same claim checks as a JWT's).
//! The token and the client secret never appear in a log line, an error or a metric.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::Value;
use tokio::sync::watch;

use crate::core::config::{ClientAuth, IntrospectionConfig, IssuerConfig, fetch_url_allowed};
use crate::core::identity::Identity;
use crate::core::redact::redact_url;
use crate::core::token::{TokenError, identity_from_introspection};
use crate::core::token_hash::{TokenHash, keyed_hash, random_key};

/// Told of every call's outcome and every cache lookup: how the server counts them
/// (`/metrics`) without this source depending on the serving layer.
pub trait Observer: Send + Sync {
    /// One call; `outcome` is `active`, `inactive` or `error`.
    fn call(&self, issuer: &str, outcome: &'static str);
    fn cache(&self, issuer: &str, hit: bool);
}

/// Counts nothing (`check-config --online`, tests).
impl Observer for () {
    fn call(&self, _: &str, _: &'static str) {}
    fn cache(&self, _: &str, _: bool) {}
}

/// Largest introspection answer read (SPEC §9); a larger one is a failed call.
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// Largest discovery document read when the endpoint comes from discovery.
const MAX_DISCOVERY_BYTES: usize = 1 << 20;
/// Introspection calls in flight at once (distinct tokens). Beyond it a check is 503 rather than
/// one more open connection: a flood of made-up opaque tokens cannot hold unbounded sockets and
/// tasks, nor turn this server into an amplifier against the IdP.
pub const MAX_IN_FLIGHT: usize = 512;
/// `Retry-After` on a failed introspection. An IdP outage has no predictable end, and no
/// configured value describes one; a few seconds keeps clients from hammering.
pub const RETRY_AFTER_SECS: u64 = 5;

/// What a well-formed answer said.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// `active: true`, with the verdict of the claim checks on the answer (the identity for an
    /// opaque token; a JWT's identity comes from the JWT itself).
    Active(Result<Arc<Identity>, TokenError>),
    /// `active: false`.
    Inactive,
}

/// Why no well-formed answer came (a 503). The text goes to the client as the denial's reason,
/// so it names neither token nor secret nor the endpoint URL (the log line has the URL,
/// redacted).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Failure(pub Arc<str>);

impl Failure {
    fn new(message: impl Into<String>) -> Self {
        Failure(Arc::from(message.into()))
    }
}

type CallResult = Result<Arc<Answer>, Failure>;

struct Entry {
    answer: Arc<Answer>,
    /// Wall-clock deadline, seconds since the epoch.
    valid_until: f64,
}

/// Introspection for one issuer.
pub struct Introspector {
    issuer_name: Arc<str>,
    rules: IssuerConfig,
    config: IntrospectionConfig,
    /// `Err` only if the TLS backend could not start; every call then fails (503).
    client: Result<reqwest::Client, String>,
    /// The endpoint in use: configured, or found by discovery on first use (a failed discovery
    /// is retried on the next call).
    endpoint: tokio::sync::OnceCell<String>,
    /// `None`: caching and single flight off (capacity 0, or no random hash key).
    cache: Option<quick_cache::sync::Cache<TokenHash, Arc<Entry>>>,
    key: Option<(u64, u64)>,
    inflight: Mutex<HashMap<TokenHash, watch::Receiver<Option<CallResult>>>>,
    /// [`MAX_IN_FLIGHT`] (a field so that a test can make it small).
    max_in_flight: usize,
    observer: Arc<dyn Observer>,
}

impl std::fmt::Debug for Introspector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Introspector")
            .field("issuer", &self.issuer_name)
            .finish_non_exhaustive()
    }
}

/// The HTTP client for introspection and its discovery: as for JWKS (rustls, no redirects), with
/// the introspection timeout.
fn http_client(timeout: Duration) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("citadel-authz/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| format!("cannot build the introspection HTTP client: {e}"))
}

impl Introspector {
    /// `None` when the issuer has no `introspection`. `capacity` bounds the answer cache (the
    /// token cache's capacity; 0 = no cache).
    pub fn new(issuer: &IssuerConfig, capacity: u64, observer: Arc<dyn Observer>) -> Option<Self> {
        let config = issuer.introspection.clone()?;
        let key = random_key();
        let cache = (capacity > 0 && key.is_some()).then(|| {
            quick_cache::sync::Cache::new(usize::try_from(capacity).unwrap_or(usize::MAX))
        });
        let endpoint = match &config.endpoint {
            Some(url) => tokio::sync::OnceCell::new_with(Some(url.clone())),
            None => tokio::sync::OnceCell::new(),
        };
        Some(Introspector {
            issuer_name: Arc::from(issuer.name.as_str()),
            client: http_client(config.timeout),
            rules: issuer.clone(),
            config,
            endpoint,
            cache,
            key,
            inflight: Mutex::new(HashMap::new()),
            max_in_flight: MAX_IN_FLIGHT,
            observer,
        })
    }

    pub fn config(&self) -> &IntrospectionConfig {
        &self.config
    }

    pub fn issuer_name(&self) -> &Arc<str> {
        &self.issuer_name
    }

    /// The answer for `token` at wall-clock `now`: cached, joined, or asked for.
    pub async fn introspect(
        self: &Arc<Self>,
        token: &str,
        now: f64,
    ) -> Result<Arc<Answer>, Failure> {
        let Some(key) = self.key else {
            // No hash key: no cache and no single flight, but still an answer.
            return self.call_and_count(token, now).await;
        };
        let hash = keyed_hash(key, token);
        if let Some(cache) = &self.cache {
            let hit = match cache.get(&hash) {
                Some(e) if now < e.valid_until => Some(Arc::clone(&e.answer)),
                Some(_) => {
                    cache.remove(&hash);
                    None
                }
                None => None,
            };
            self.observer.cache(&self.issuer_name, hit.is_some());
            if let Some(answer) = hit {
                return Ok(answer);
            }
        }
        let rx = {
            let mut inflight = self.lock();
            match inflight.get(&hash) {
                Some(rx) => rx.clone(),
                None if inflight.len() >= self.max_in_flight => {
                    return Err(Failure::new(format!(
                        "more than {} introspection calls in flight",
                        self.max_in_flight
                    )));
                }
                None => {
                    let (tx, rx) = watch::channel(None);
                    inflight.insert(hash, rx.clone());
                    let guard = CallGuard {
                        intro: Arc::clone(self),
                        hash,
                        tx: Some(tx),
                    };
                    let token = token.to_owned();
                    tokio::spawn(async move {
                        let result = guard.intro.call_and_count(&token, now).await;
                        guard.complete(result, now);
                    });
                    rx
                }
            }
        };
        wait(rx).await
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<TokenHash, watch::Receiver<Option<CallResult>>>> {
        // The map holds no invariant a panic could break halfway.
        self.inflight.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Cache a fresh answer (SPEC §9 lifetimes), free the single-flight slot, answer waiters.
    fn finish(
        &self,
        hash: TokenHash,
        result: CallResult,
        now: f64,
        tx: &watch::Sender<Option<CallResult>>,
    ) {
        if let (Some(cache), Ok(answer)) = (&self.cache, &result) {
            let valid_until = match &**answer {
                Answer::Active(Ok(identity)) => {
                    (now + self.config.cache_ttl.as_secs_f64()).min(identity.expires_at)
                }
                Answer::Active(Err(_)) | Answer::Inactive => {
                    now + self.config.negative_ttl.as_secs_f64()
                }
            };
            if valid_until > now {
                cache.insert(
                    hash,
                    Arc::new(Entry {
                        answer: Arc::clone(answer),
                        valid_until,
                    }),
                );
            }
        }
        self.lock().remove(&hash);
        let _ = tx.send(Some(result));
    }

    async fn call_and_count(&self, token: &str, now: f64) -> CallResult {
        let result = self.call(token, now).await;
        let outcome = match &result {
            Ok(a) if matches!(**a, Answer::Inactive) => "inactive",
            Ok(_) => "active",
            Err(_) => "error",
        };
        self.observer.call(&self.issuer_name, outcome);
        if let Err(e) = &result {
            let endpoint = self.endpoint.get().map(|u| redact_url(u));
            tracing::warn!(issuer = %self.issuer_name, endpoint, error = %e, "introspection failed");
        }
        result
    }

    /// One introspection call: endpoint, POST, bounded answer, then the pure judgement.
    async fn call(&self, token: &str, now: f64) -> CallResult {
        let client = self.client.as_ref().map_err(|e| Failure::new(e.clone()))?;
        let endpoint = self
            .endpoint
            .get_or_try_init(|| self.discover(client))
            .await?;
        let (body, basic) = self.request_body(token);
        let mut request = client
            .post(endpoint.as_str())
            .header(reqwest::header::ACCEPT, "application/json")
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            );
        if let Some(basic) = basic {
            request = request.header(reqwest::header::AUTHORIZATION, basic);
        }
        let resp = request
            .body(body)
            .send()
            .await
            .map_err(|e| self.transport_failure(e))?;
        if resp.status() != reqwest::StatusCode::OK {
            return Err(Failure::new(format!(
                "the endpoint answered status {}",
                resp.status().as_u16()
            )));
        }
        let body = read_capped(resp, MAX_ANSWER_BYTES)
            .await
            .map_err(|e| match e {
                Capped::TooLarge => Failure::new(format!(
                    "the answer is larger than {MAX_ANSWER_BYTES} bytes"
                )),
                Capped::Transport(e) => self.transport_failure(e),
            })?;
        judge(&body, &self.rules, &self.issuer_name, now)
            .map(Arc::new)
            .map_err(Failure::new)
    }

    /// The form body (`token=…&token_type_hint=access_token`, plus the client credentials for
    /// `client_secret_post`) and the `Authorization` value for `client_secret_basic`.
    fn request_body(&self, token: &str) -> (String, Option<String>) {
        let mut form = url::form_urlencoded::Serializer::new(String::new());
        form.append_pair("token", token)
            .append_pair("token_type_hint", "access_token");
        let secret = self.config.client_secret.expose();
        let basic = match self.config.auth_method {
            ClientAuth::ClientSecretPost => {
                form.append_pair("client_id", &self.config.client_id)
                    .append_pair("client_secret", secret);
                None
            }
            ClientAuth::ClientSecretBasic => {
                // RFC 6749 §2.3.1: id and secret are form-encoded before the Basic encoding.
                let enc = |s: &str| {
                    url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>()
                };
                let pair = format!("{}:{}", enc(&self.config.client_id), enc(secret));
                Some(format!("Basic {}", STANDARD.encode(pair)))
            }
        };
        (form.finish(), basic)
    }

    fn transport_failure(&self, e: reqwest::Error) -> Failure {
        if e.is_timeout() {
            return Failure::new(format!(
                "no answer within {}",
                humantime::format_duration(self.config.timeout)
            ));
        }
        // `without_url`: the endpoint is not the client's business (the log line names it). The
        // chain says what failed (`tcp connect error: Connection refused`), not only "error
        // sending request".
        let e = e.without_url();
        let mut text = String::from("cannot reach the endpoint");
        let mut src: Option<&dyn std::error::Error> = Some(&e);
        while let Some(inner) = src {
            let part = inner.to_string();
            if !text.ends_with(&part) {
                text.push_str(": ");
                text.push_str(&part);
            }
            src = inner.source();
        }
        Failure::new(text)
    }

    /// The `introspection_endpoint` of the issuer's discovery document (its `issuer` must be
    /// ours, its endpoint must pass the URL rules of §5).
    async fn discover(&self, client: &reqwest::Client) -> Result<String, Failure> {
        let url = format!(
            "{}/.well-known/openid-configuration",
            self.rules.issuer.trim_end_matches('/')
        );
        let fail = |m: String| Failure::new(format!("discovery: {m}"));
        fetch_url_allowed(&url, self.rules.allow_http).map_err(|_| fail("URL refused".into()))?;
        let resp = client
            .get(&url)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| fail(e.without_url().to_string()))?;
        if resp.status() != reqwest::StatusCode::OK {
            return Err(fail(format!("status {}", resp.status().as_u16())));
        }
        let body = read_capped(resp, MAX_DISCOVERY_BYTES)
            .await
            .map_err(|e| match e {
                Capped::TooLarge => fail(format!("larger than {MAX_DISCOVERY_BYTES} bytes")),
                Capped::Transport(e) => fail(e.without_url().to_string()),
            })?;
        let doc: Value = serde_json::from_slice(&body).map_err(|_| fail("not JSON".into()))?;
        if doc.get("issuer").and_then(Value::as_str) != Some(self.rules.issuer.as_str()) {
            return Err(fail(
                "the document's issuer is not the configured issuer".into(),
            ));
        }
        let endpoint = doc
            .get("introspection_endpoint")
            .and_then(Value::as_str)
            .ok_or_else(|| fail("no introspection_endpoint".into()))?;
        fetch_url_allowed(endpoint, self.rules.allow_http).map_err(|_| {
            fail("introspection_endpoint refused (https unless loopback or allow_http)".into())
        })?;
        Ok(endpoint.to_owned())
    }
}

/// Ends a call's single flight whatever happens to its task: with its result, or (the task
/// panicked or the runtime dropped it) with a failure, so waiters never hang and the next check
/// starts a new call instead of joining a dead one.
struct CallGuard {
    intro: Arc<Introspector>,
    hash: TokenHash,
    tx: Option<watch::Sender<Option<CallResult>>>,
}

impl CallGuard {
    fn complete(mut self, result: CallResult, now: f64) {
        if let Some(tx) = self.tx.take() {
            self.intro.finish(self.hash, result, now, &tx);
        }
    }
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        if let Some(tx) = self.tx.take() {
            self.intro.lock().remove(&self.hash);
            let _ = tx.send(Some(Err(Failure::new(
                "the introspection call ended without a result",
            ))));
        }
    }
}

async fn wait(mut rx: watch::Receiver<Option<CallResult>>) -> CallResult {
    match rx.wait_for(Option::is_some).await {
        Ok(v) => v.clone().unwrap_or_else(|| {
            Err(Failure::new(
                "the introspection call ended without a result",
            ))
        }),
        Err(_) => Err(Failure::new(
            "the introspection call ended without a result",
        )),
    }
}

enum Capped {
    TooLarge,
    Transport(reqwest::Error),
}

/// The body, at most `cap` bytes (a larger declared or actual length is refused before or while
/// reading: a 10 MB answer costs at most `cap` bytes of memory).
async fn read_capped(mut resp: reqwest::Response, cap: usize) -> Result<Vec<u8>, Capped> {
    if resp.content_length().is_some_and(|n| n > cap as u64) {
        return Err(Capped::TooLarge);
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(Capped::Transport)? {
        if body.len().saturating_add(chunk.len()) > cap {
            return Err(Capped::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// What an answer body means (SPEC §9), at wall-clock `now`. `Err` (a 503) for anything that is
/// not a well-formed RFC 7662 answer: not a JSON object (or one with a duplicate member), no
/// `active`, or an `active` that is not a JSON boolean (`"true"` is not `true`). Pure.
pub fn judge(
    body: &[u8],
    rules: &IssuerConfig,
    issuer_name: &Arc<str>,
    now: f64,
) -> Result<Answer, &'static str> {
    let answer = crate::core::token::json_object(body).map_err(|e| match e {
        TokenError::DuplicateMember => "the answer has a duplicate JSON member",
        _ => "the answer is not a JSON object",
    })?;
    match answer.get("active") {
        Some(Value::Bool(false)) => Ok(Answer::Inactive),
        Some(Value::Bool(true)) => Ok(Answer::Active(
            identity_from_introspection(&answer, rules, issuer_name, now).map(Arc::new),
        )),
        Some(_) => Err("`active` is not a JSON boolean"),
        None => Err("the answer has no `active` member"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::config::{ClaimPaths, IntrospectTokens, JwksSource, Secret};

    const NOW: f64 = 1_800_000_000.0;

    fn rules() -> IssuerConfig {
        IssuerConfig {
            name: "iam".into(),
            issuer: "https://iam.example.com".into(),
            source: JwksSource::Discovery,
            allow_http: false,
            audiences: vec!["api".into()],
            algorithms: vec![],
            leeway: Duration::from_secs(30),
            token_types: vec![],
            claims: ClaimPaths {
                user_id: vec!["client_id".into()],
                tenant_id: vec!["tenant_id".into()],
                roles: vec![vec!["roles".into()], vec!["scope".into()]],
            },
            introspection: Some(IntrospectionConfig {
                endpoint: Some("https://iam.example.com/introspect".into()),
                client_id: "citadel".into(),
                client_secret: Secret::new("s"),
                auth_method: ClientAuth::ClientSecretBasic,
                tokens: IntrospectTokens::Opaque,
                cache_ttl: Duration::from_secs(60),
                negative_ttl: Duration::from_secs(10),
                timeout: Duration::from_secs(2),
            }),
        }
    }

    fn j(body: &str) -> Result<Answer, &'static str> {
        judge(body.as_bytes(), &rules(), &Arc::from("iam"), NOW)
    }

    fn active_err(body: &str) -> TokenError {
        match j(body) {
            Ok(Answer::Active(Err(e))) => e,
            other => panic!("{body}: {other:?}"),
        }
    }

    #[test]
    fn well_formed_answers() {
        assert_eq!(j(r#"{"active": false}"#), Ok(Answer::Inactive));
        // An inactive answer need carry nothing else (RFC 7662 §2.2), whatever else it has.
        assert_eq!(
            j(r#"{"active": false, "aud": "elsewhere"}"#),
            Ok(Answer::Inactive)
        );
        let Ok(Answer::Active(Ok(id))) = j(
            r#"{"active": true, "iss": "https://iam.example.com", "aud": ["x", "api"], "client_id": "svc",
                "tenant_id": "acme", "roles": ["reader"], "scope": "api write", "exp": 1800000100, "nbf": 1800000010}"#,
        ) else {
            panic!()
        };
        assert_eq!(id.user_id.as_deref(), Some("svc"));
        assert_eq!(id.tenant_id.as_deref(), Some("acme"));
        assert_eq!(id.roles_header().as_deref(), Some("reader,api,write"));
        assert_eq!(id.expires_at, 1_800_000_100.0);
        // iss and exp are optional in an answer; aud is not.
        let Ok(Answer::Active(Ok(id))) = j(r#"{"active": true, "aud": "api"}"#) else {
            panic!()
        };
        assert_eq!(id.expires_at, f64::INFINITY);
        assert_eq!(id.user_id, None);
    }

    #[test]
    fn malformed_answers_are_failures_not_verdicts() {
        for (body, why) in [
            (r#"{"active": "true"}"#, "`active` is not a JSON boolean"),
            (r#"{"active": 1}"#, "`active` is not a JSON boolean"),
            (r#"{"active": null}"#, "`active` is not a JSON boolean"),
            (r#"{"aud": "api"}"#, "the answer has no `active` member"),
            ("active=true", "the answer is not a JSON object"),
            ("[true]", "the answer is not a JSON object"),
            ("", "the answer is not a JSON object"),
            (r#"{"active": true} x"#, "the answer is not a JSON object"),
            (
                r#"{"active": false, "active": true}"#,
                "the answer has a duplicate JSON member",
            ),
        ] {
            assert_eq!(j(body), Err(why), "{body}");
        }
    }

    #[test]
    fn claim_checks_on_an_active_answer_are_the_jwt_ones() {
        use TokenError::*;
        assert!(matches!(
            active_err(r#"{"active": true, "aud": "other"}"#),
            Audience(_)
        ));
        assert_eq!(active_err(r#"{"active": true}"#), MissingClaim("aud"));
        assert!(matches!(
            active_err(r#"{"active": true, "aud": "api", "iss": "https://evil.example.com"}"#),
            Issuer(_)
        ));
        assert!(matches!(
            active_err(r#"{"active": true, "aud": "api", "iss": 7}"#),
            Issuer(_)
        ));
        // exp in the past beyond leeway; within leeway it passes.
        assert_eq!(
            active_err(r#"{"active": true, "aud": "api", "exp": 1799999960}"#),
            Expired
        );
        assert!(matches!(
            j(r#"{"active": true, "aud": "api", "exp": 1799999980}"#),
            Ok(Answer::Active(Ok(_)))
        ));
        assert_eq!(
            active_err(r#"{"active": true, "aud": "api", "nbf": 1800000031}"#),
            NotYetValid
        );
        assert_eq!(
            active_err(r#"{"active": true, "aud": "api", "exp": "soon"}"#),
            ClaimType("exp")
        );
        assert_eq!(
            active_err(r#"{"active": true, "aud": "api", "client_id": "a,b"}"#),
            UnsafeClaim("user_id")
        );
        assert_eq!(
            active_err(r#"{"active": true, "aud": "api", "scope": "a\"b"}"#),
            UnsafeClaim("roles")
        );
    }

    /// A loopback server that accepts connections and never answers.
    async fn silent_endpoint() -> (tokio::net::TcpListener, String) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/introspect", l.local_addr().unwrap());
        (l, url)
    }

    #[tokio::test]
    async fn calls_in_flight_are_bounded_and_a_joined_call_is_not_counted_twice() {
        let (listener, url) = silent_endpoint().await;
        let held = tokio::spawn(async move {
            let mut conns = Vec::new();
            while let Ok((c, _)) = listener.accept().await {
                conns.push(c);
            }
        });
        let mut r = rules();
        if let Some(i) = r.introspection.as_mut() {
            i.endpoint = Some(url);
            i.timeout = Duration::from_millis(400);
        }
        let mut intro = Introspector::new(&r, 10, Arc::new(())).unwrap();
        intro.max_in_flight = 2;
        let intro = Arc::new(intro);
        let a = tokio::spawn({
            let i = Arc::clone(&intro);
            async move { i.introspect("token-a", NOW).await }
        });
        let b = tokio::spawn({
            let i = Arc::clone(&intro);
            async move { i.introspect("token-b", NOW).await }
        });
        // Let both calls start (each registers its slot, then waits on the silent server).
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(intro.lock().len(), 2);
        let c = intro.introspect("token-c", NOW).await;
        assert_eq!(
            c,
            Err(Failure::new("more than 2 introspection calls in flight"))
        );
        // The same token as a call in flight joins it instead of being refused.
        let joined = intro.introspect("token-a", NOW).await;
        let timeout = Err(Failure::new("no answer within 400ms"));
        assert_eq!(joined, timeout);
        assert_eq!(a.await.unwrap(), timeout);
        assert_eq!(b.await.unwrap(), timeout);
        // The slots are free again, and failures were not cached.
        assert!(intro.lock().is_empty());
        assert_eq!(intro.cache.as_ref().map(|c| c.len()), Some(0));
        held.abort();
    }

    proptest::proptest! {
        #[test]
        fn judge_never_panics(body in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            let _ = judge(&body, &rules(), &Arc::from("iam"), NOW);
        }
    }
}
