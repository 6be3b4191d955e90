//! Key sets per issuer over HTTP: discovery, fetch, Cache-Control lifetime, background refresh,
//! unknown-`kid` refetch (single flight with a cooldown), stale-if-error up to `max_stale`.
//!
//! The hot path is [`IssuerKeys::current`]: one atomic load of an immutable snapshot, no lock.
//! Fetches run in spawned tasks; waiters subscribe to a `watch` channel, so no lock is ever held
//! across an `.await` and a cancelled request never cancels a fetch others wait on. A fetch task
//! that dies (a panic) still clears its single-flight slot and answers its waiters.
//!
//! The background refresh is scheduled from the key set in force, whoever installed it, so a set
//! from an unknown-`kid` refetch with a short max-age is refreshed in time; while fetches fail it
//! retries with a backoff of at most `refresh_min`. Timing never panics on large durations.
//!
//! URLs appear in logs and errors only through [`redact_url`]: no userinfo, no query.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::core::config::{IssuerConfig, JwksSource, JwksTiming, fetch_url_allowed};
use crate::core::keys::KeySet;
pub use crate::core::redact::redact_url;

/// Largest JWKS or discovery document read; a larger one is a failed fetch.
const MAX_DOCUMENT_BYTES: usize = 1 << 20;
/// First retry delay after a failed fetch; doubles up to `refresh_min`.
const FIRST_RETRY: Duration = Duration::from_millis(500);
/// Longest part of a discovery document's `issuer` quoted in an error.
const MAX_QUOTED_CHARS: usize = 200;

/// One successfully fetched key set.
#[derive(Debug)]
pub struct Loaded {
    pub keys: KeySet,
    pub fetched_at: Instant,
    /// Max-age clamped to [refresh_min, refresh_max]: how long the set is fresh. Kept as a
    /// duration (not `fetched_at + ttl`) so no configured value can overflow an `Instant`.
    pub ttl: Duration,
}

impl Loaded {
    /// Time since the fetch (zero if the clock reads earlier).
    pub fn age(&self) -> Duration {
        Instant::now().saturating_duration_since(self.fetched_at)
    }

    /// When the background refresh should fetch again: at 90% of the lifetime, so no check waits
    /// on an expired set. `None` when that is beyond what an `Instant` can hold (never).
    fn refresh_at(&self) -> Option<Instant> {
        self.fetched_at.checked_add(self.ttl - self.ttl / 10)
    }
}

/// Why a fetch failed (logged and counted; never shown to clients).
#[derive(Debug, Clone, thiserror::Error)]
pub enum FetchError {
    #[error("discovery: {0}")]
    Discovery(String),
    #[error("refused URL: {0}")]
    Refused(String),
    /// `url` is already redacted.
    #[error("GET {url}: {message}")]
    Http { url: String, message: String },
    /// `url` is already redacted.
    #[error("{url}: {message}")]
    Document { url: String, message: String },
    /// The fetch task ended without a result (it panicked).
    #[error("the fetch task ended without a result")]
    Aborted,
}

/// What an unknown-`kid` refetch produced.
#[derive(Debug)]
pub enum Refetch {
    /// A fetch completed (now or by a concurrent request); look again in this set.
    Fetched(Arc<Loaded>),
    /// The fetch failed: keys may exist that we cannot see.
    Failed,
    /// Within the cooldown: no fetch; `last_ok` says whether the last fetch succeeded.
    Cooldown { last_ok: bool },
}

type FetchResult = Result<Arc<Loaded>, FetchError>;

#[derive(Default)]
struct FetchState {
    inflight: Option<watch::Receiver<Option<FetchResult>>>,
    last_unknown_kid_fetch: Option<Instant>,
    last_ok: bool,
    /// Discovered `jwks_uri`, forgotten after a failed fetch so discovery runs again.
    discovered: Option<String>,
}

/// The key set of one issuer and the machinery that keeps it fresh.
pub struct IssuerKeys {
    pub name: Arc<str>,
    issuer: String,
    source: JwksSource,
    allow_http: bool,
    timing: JwksTiming,
    client: reqwest::Client,
    current: ArcSwapOption<Loaded>,
    /// Counts installed sets: the background refresh wakes on each one to follow the set in
    /// force. Dropped with `self`, which also ends the refresher.
    installed: watch::Sender<u64>,
    state: Mutex<FetchState>,
    on_fetch: OnFetch,
    /// Test hook: the next fetch task panics.
    #[cfg(test)]
    panic_next_fetch: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for IssuerKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuerKeys")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// Told of every fetch's outcome (issuer name, success): how the server counts fetches without
/// this source depending on its metrics.
pub type OnFetch = Arc<dyn Fn(&str, bool) + Send + Sync>;

/// Building the HTTP client failed (TLS backend could not start).
#[derive(Debug, thiserror::Error)]
#[error("cannot build the JWKS HTTP client: {0}")]
pub struct ClientError(String);

/// The HTTP client used for every JWKS and discovery fetch: rustls, a whole-request timeout, no
/// redirects (a redirect could lead from https to an unchecked http URL).
pub fn http_client(timing: &JwksTiming) -> Result<reqwest::Client, ClientError> {
    reqwest::Client::builder()
        .timeout(timing.fetch_timeout)
        .connect_timeout(timing.fetch_timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("citadel-authz/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| ClientError(e.to_string()))
}

impl IssuerKeys {
    pub fn new(
        issuer: &IssuerConfig,
        timing: JwksTiming,
        client: reqwest::Client,
        on_fetch: OnFetch,
    ) -> Self {
        IssuerKeys {
            name: Arc::from(issuer.name.as_str()),
            issuer: issuer.issuer.clone(),
            source: issuer.source.clone(),
            allow_http: issuer.allow_http,
            timing,
            client,
            current: ArcSwapOption::empty(),
            installed: watch::Sender::new(0),
            state: Mutex::new(FetchState::default()),
            on_fetch,
            #[cfg(test)]
            panic_next_fetch: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Whether this instance fetches from the same place with the same rules (reload keeps it).
    pub fn same_source(&self, issuer: &IssuerConfig, timing: &JwksTiming) -> bool {
        self.issuer == issuer.issuer
            && self.source == issuer.source
            && self.allow_http == issuer.allow_http
            && self.timing == *timing
    }

    /// The usable key set: loaded and not stale past `max_stale`. Lock-free.
    pub fn current(&self) -> Option<Arc<Loaded>> {
        let loaded = self.current.load_full()?;
        (loaded.age() < loaded.ttl.saturating_add(self.timing.max_stale)).then_some(loaded)
    }

    /// Ready: a usable, non-empty key set.
    pub fn is_ready(&self) -> bool {
        self.current().is_some_and(|l| !l.keys.is_empty())
    }

    /// Seconds a client should wait before retrying after a 503.
    pub fn retry_after_secs(&self) -> u64 {
        self.timing.refresh_min.as_secs().clamp(1, 60)
    }

    /// The token's `kid` is not in the set: refetch, at most once per `refresh_min`, shared by
    /// every concurrent caller.
    pub async fn refetch_for_unknown_kid(self: &Arc<Self>) -> Refetch {
        let rx = {
            let mut st = self.lock();
            match &st.inflight {
                Some(rx) => rx.clone(),
                None => {
                    let now = Instant::now();
                    if st
                        .last_unknown_kid_fetch
                        .is_some_and(|t| now.duration_since(t) < self.timing.refresh_min)
                    {
                        return Refetch::Cooldown {
                            last_ok: st.last_ok,
                        };
                    }
                    st.last_unknown_kid_fetch = Some(now);
                    self.start_fetch(&mut st)
                }
            }
        };
        match wait(rx).await {
            Some(Ok(loaded)) => Refetch::Fetched(loaded),
            _ => Refetch::Failed,
        }
    }

    /// Fetch now (joining a fetch already running). Used by the background refresher.
    pub async fn fetch(self: &Arc<Self>) -> FetchResult {
        let rx = {
            let mut st = self.lock();
            match &st.inflight {
                Some(rx) => rx.clone(),
                None => self.start_fetch(&mut st),
            }
        };
        wait(rx).await.unwrap_or(Err(FetchError::Aborted))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FetchState> {
        // The state holds no invariant a panic could break halfway; keep going.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn start_fetch(self: &Arc<Self>, st: &mut FetchState) -> watch::Receiver<Option<FetchResult>> {
        let (tx, rx) = watch::channel(None);
        st.inflight = Some(rx.clone());
        let discovered = st.discovered.clone();
        let guard = FetchGuard {
            keys: Arc::clone(self),
            tx: Some(tx),
        };
        tokio::spawn(async move {
            let result = guard.keys.fetch_once(discovered).await;
            guard.complete(result);
        });
        rx
    }

    /// Record a fetch's outcome, install a new set, free the single-flight slot and answer the
    /// waiters. Runs exactly once per fetch task, also when the task panicked.
    fn finish(
        &self,
        result: Result<(Arc<Loaded>, Option<String>), FetchError>,
        tx: &watch::Sender<Option<FetchResult>>,
    ) {
        {
            let mut st = self.lock();
            st.inflight = None;
            st.last_ok = result.is_ok();
            match &result {
                Ok((loaded, uri)) => {
                    self.current.store(Some(Arc::clone(loaded)));
                    st.discovered = uri.clone();
                }
                Err(_) => st.discovered = None,
            }
        }
        let result = result.map(|(loaded, _)| loaded);
        if result.is_ok() {
            self.installed.send_modify(|n| *n = n.wrapping_add(1));
        }
        (self.on_fetch)(&self.name, result.is_ok());
        match &result {
            Ok(l) => {
                tracing::info!(issuer = %self.name, keys = l.keys.len(), ttl_s = l.ttl.as_secs(), "JWKS fetched");
            }
            Err(e) => {
                tracing::warn!(issuer = %self.name, error = %e, "JWKS fetch failed");
            }
        }
        let _ = tx.send(Some(result));
    }

    #[cfg(test)]
    fn test_hook(&self) {
        if self
            .panic_next_fetch
            .swap(false, std::sync::atomic::Ordering::SeqCst)
        {
            panic!("injected panic in a JWKS fetch");
        }
    }

    #[cfg(not(test))]
    fn test_hook(&self) {}

    async fn fetch_once(
        &self,
        discovered: Option<String>,
    ) -> Result<(Arc<Loaded>, Option<String>), FetchError> {
        self.test_hook();
        let (url, remember) = match (&self.source, discovered) {
            (JwksSource::Uri(u), _) => (u.clone(), None),
            (JwksSource::Discovery, Some(u)) => (u.clone(), Some(u)),
            (JwksSource::Discovery, None) => {
                let u = self.discover().await?;
                (u.clone(), Some(u))
            }
        };
        check_url(&url, self.allow_http).map_err(FetchError::Refused)?;
        let (body, headers) = self.get(&url).await?;
        let (keys, skipped) = KeySet::from_jwks(&body).map_err(|message| FetchError::Document {
            url: redact_url(&url),
            message,
        })?;
        for why in skipped {
            tracing::debug!(issuer = %self.name, %why, "JWKS key ignored");
        }
        let max_age = headers
            .get(reqwest::header::CACHE_CONTROL)
            .and_then(|v| v.to_str().ok())
            .and_then(cache_max_age);
        Ok((
            Arc::new(Loaded {
                keys,
                fetched_at: Instant::now(),
                ttl: ttl_for(max_age, &self.timing),
            }),
            remember,
        ))
    }

    async fn discover(&self) -> Result<String, FetchError> {
        let url = format!(
            "{}/.well-known/openid-configuration",
            self.issuer.trim_end_matches('/')
        );
        check_url(&url, self.allow_http).map_err(FetchError::Refused)?;
        let (body, _) = self.get(&url).await?;
        let shown = redact_url(&url);
        let doc: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| FetchError::Discovery(format!("{shown}: not JSON: {e}")))?;
        // OpenID Connect Discovery §4.3: the document's issuer must be the one we asked. Both are
        // shown so a trailing `/` or a wrong host is seen at once; the document's value is the
        // IdP's, so it is quoted (escaped) and cut short.
        match doc.get("issuer") {
            Some(serde_json::Value::String(s)) if *s == self.issuer => {}
            found => {
                let found = match found {
                    Some(serde_json::Value::String(s)) => quoted_bounded(s),
                    None => "none".to_owned(),
                    Some(other) => format!("a JSON {}", json_type(other)),
                };
                return Err(FetchError::Discovery(format!(
                    "{shown}: the document's issuer {found} does not match the configured issuer {}",
                    quoted_bounded(&redact_url(&self.issuer))
                )));
            }
        }
        let jwks_uri = doc
            .get("jwks_uri")
            .and_then(|v| v.as_str())
            .ok_or_else(|| FetchError::Discovery(format!("{shown}: no jwks_uri")))?;
        check_url(jwks_uri, self.allow_http)
            .map_err(|m| FetchError::Refused(format!("discovered jwks_uri {m}")))?;
        Ok(jwks_uri.to_owned())
    }

    async fn get(&self, url: &str) -> Result<(Vec<u8>, reqwest::header::HeaderMap), FetchError> {
        let err = |message: String| FetchError::Http {
            url: redact_url(url),
            message,
        };
        let mut resp = self
            .client
            .get(url)
            .header(
                reqwest::header::ACCEPT,
                "application/json, application/jwk-set+json",
            )
            .send()
            .await
            .map_err(|e| err(error_chain(&e.without_url())))?;
        if resp.status() != reqwest::StatusCode::OK {
            return Err(err(format!("status {}", resp.status())));
        }
        if resp
            .content_length()
            .is_some_and(|n| n > MAX_DOCUMENT_BYTES as u64)
        {
            return Err(err(format!("larger than {MAX_DOCUMENT_BYTES} bytes")));
        }
        let headers = resp.headers().clone();
        let mut body = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| err(error_chain(&e.without_url())))?
        {
            if body.len().saturating_add(chunk.len()) > MAX_DOCUMENT_BYTES {
                return Err(err(format!("larger than {MAX_DOCUMENT_BYTES} bytes")));
            }
            body.extend_from_slice(&chunk);
        }
        Ok((body, headers))
    }

    /// Keep the key set fresh until `stop` fires. The next fetch is due at 90% of the lifetime of
    /// the set in force, recomputed whenever any fetch (also an unknown-`kid` refetch) installs a
    /// set; after a failed fetch it retries with backoff (first 500 ms, doubling, at most
    /// `refresh_min`) until one succeeds, so an issuer that is stale or was never loaded recovers
    /// within about `refresh_min` of its IdP coming back.
    pub async fn refresh_loop(this: std::sync::Weak<Self>, mut stop: watch::Receiver<bool>) {
        let Some(me) = this.upgrade() else { return };
        let mut installed = me.installed.subscribe();
        drop(me);
        let mut backoff = FIRST_RETRY;
        // `None`: no timer (a lifetime too long for an `Instant`); a new set still wakes us.
        let mut next = Some(Instant::now());
        loop {
            let due = async {
                match next {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            // Decide first, act after: nothing of `select!` (a `watch::Ref`) lives across the fetch.
            let installed_changed = tokio::select! {
                _ = due => None,
                changed = installed.changed() => Some(changed.is_ok()),
                _ = stop.wait_for(|s| *s) => return,
            };
            // Held only while fetching: once no configuration uses this issuer (a reload removed or
            // replaced it), the loop ends.
            let Some(me) = this.upgrade() else { return };
            match installed_changed {
                // The sender lives in `IssuerKeys`: an error means it is gone.
                Some(false) => return,
                // Another fetch installed a set: follow it.
                Some(true) => {
                    backoff = FIRST_RETRY;
                    next = me.current.load_full().and_then(|l| l.refresh_at());
                }
                None => {
                    let result = me.fetch().await;
                    // This fetch's own set (or a newer one) is in force now: no wake-up for it.
                    installed.borrow_and_update();
                    next = match (result, me.current.load_full()) {
                        (Ok(_), Some(loaded)) => {
                            backoff = FIRST_RETRY;
                            loaded.refresh_at()
                        }
                        _ => {
                            let delay = backoff.min(me.timing.refresh_min);
                            backoff = backoff.saturating_mul(2).min(me.timing.refresh_min);
                            Instant::now().checked_add(delay)
                        }
                    };
                }
            }
        }
    }
}

/// Ends a fetch task's single flight whatever happens to the task: on a normal end it carries
/// the result; dropped without one (the task panicked), it frees the slot and answers the
/// waiters with an error, so the next request starts a new fetch instead of joining a dead one.
struct FetchGuard {
    keys: Arc<IssuerKeys>,
    tx: Option<watch::Sender<Option<FetchResult>>>,
}

impl FetchGuard {
    fn complete(mut self, result: Result<(Arc<Loaded>, Option<String>), FetchError>) {
        if let Some(tx) = self.tx.take() {
            self.keys.finish(result, &tx);
        }
    }
}

impl Drop for FetchGuard {
    fn drop(&mut self) {
        if let Some(tx) = self.tx.take() {
            self.keys.finish(Err(FetchError::Aborted), &tx);
        }
    }
}

/// [`fetch_url_allowed`] with the URL in its message redacted.
fn check_url(url: &str, allow_http: bool) -> Result<(), String> {
    fetch_url_allowed(url, allow_http).map_err(|message| {
        let shown = redact_url(url);
        message
            .replace(&format!("{url:?}"), &format!("{shown:?}"))
            .replace(url, &shown)
    })
}

/// `s` as a JSON-style quoted string (control characters escaped), at most
/// [`MAX_QUOTED_CHARS`] characters of it.
fn quoted_bounded(s: &str) -> String {
    match s.char_indices().nth(MAX_QUOTED_CHARS) {
        Some((cut, _)) => format!("{:?}…", &s[..cut]),
        None => format!("{s:?}"),
    }
}

fn json_type(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "boolean",
        serde_json::Value::Number(_) => "number",
        serde_json::Value::String(_) => "string",
        serde_json::Value::Array(_) => "array",
        serde_json::Value::Object(_) => "object",
    }
}

async fn wait(mut rx: watch::Receiver<Option<FetchResult>>) -> Option<FetchResult> {
    rx.wait_for(Option::is_some)
        .await
        .ok()
        .and_then(|v| v.clone())
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

/// `max-age` from a Cache-Control value; `no-cache` / `no-store` count as 0 (then clamped up to
/// `refresh_min`).
pub fn cache_max_age(value: &str) -> Option<Duration> {
    let mut age = None;
    for directive in value.split(',') {
        let d = directive.trim();
        let lower = d.to_ascii_lowercase();
        if lower == "no-cache" || lower == "no-store" {
            return Some(Duration::ZERO);
        }
        if let Some(v) = lower.strip_prefix("max-age=") {
            age = v
                .trim_matches('"')
                .parse::<u64>()
                .ok()
                .map(Duration::from_secs);
        }
    }
    age
}

/// How long a fetched set is kept: max-age clamped to [refresh_min, refresh_max]; refresh_max
/// when the response has none.
pub fn ttl_for(max_age: Option<Duration>, t: &JwksTiming) -> Duration {
    // min-then-max rather than `clamp`, which panics if the bounds are ever inverted.
    max_age
        .unwrap_or(t.refresh_max)
        .min(t.refresh_max)
        .max(t.refresh_min)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A minimal HTTP/1.1 server on 127.0.0.1:0: `answer(path)` gives status and body; every
    /// response is JSON and closes the connection. Counts requests.
    async fn serve(
        answer: impl Fn(&str) -> (u16, String) + Send + Sync + 'static,
    ) -> (std::net::SocketAddr, Arc<AtomicU64>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&hits);
        let answer = Arc::new(answer);
        tokio::spawn(async move {
            loop {
                let Ok((mut conn, _)) = listener.accept().await else {
                    return;
                };
                counter.fetch_add(1, Ordering::SeqCst);
                let answer = Arc::clone(&answer);
                tokio::spawn(async move {
                    let mut req = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                        match conn.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => req.extend_from_slice(&buf[..n]),
                        }
                    }
                    let head = String::from_utf8_lossy(&req);
                    let path = head.split(' ').nth(1).unwrap_or("/").to_owned();
                    let (status, body) = answer(&path);
                    let resp = format!(
                        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = conn.write_all(resp.as_bytes()).await;
                });
            }
        });
        (addr, hits)
    }

    /// Key store for one issuer described by `issuer_yaml` (the fields after `name`).
    fn issuer_keys(issuer_yaml: &str, jwks_yaml: &str) -> Arc<IssuerKeys> {
        let yaml = format!(
            "issuers:\n  - name: iam\n{issuer_yaml}    audiences: [api]\njwks: {{ {jwks_yaml} }}\npolicy:\n  rules:\n    - name: me\n      paths: [/me]\n"
        );
        let config =
            crate::core::config::Config::from_yaml(&yaml, std::path::Path::new(".")).unwrap();
        Arc::new(IssuerKeys::new(
            &config.issuers[0],
            config.jwks.clone(),
            http_client(&config.jwks).unwrap(),
            Arc::new(|_: &str, _: bool| {}),
        ))
    }

    fn jwks_body() -> String {
        let k = crate::core::signer::SigningKey::generate(jsonwebtoken::Algorithm::ES256, "k1");
        serde_json::json!({ "keys": [k.jwk()] }).to_string()
    }

    #[tokio::test]
    async fn a_panicking_fetch_task_does_not_wedge_the_issuer() {
        let body = jwks_body();
        let (addr, hits) = serve(move |_| (200, body.clone())).await;
        let keys = issuer_keys(
            &format!("    issuer: http://{addr}\n    jwks_uri: http://{addr}/jwks\n"),
            "refresh_min: 10ms",
        );
        keys.panic_next_fetch.store(true, Ordering::SeqCst);
        // The waiters of the dead task get an answer, not a hang.
        let first = tokio::time::timeout(Duration::from_secs(5), keys.refetch_for_unknown_kid())
            .await
            .unwrap();
        assert!(matches!(first, Refetch::Failed), "{first:?}");
        assert_eq!(hits.load(Ordering::SeqCst), 0);
        // The single-flight slot was freed: the next request starts a real fetch.
        tokio::time::sleep(Duration::from_millis(20)).await; // past the 10 ms cooldown
        let second = tokio::time::timeout(Duration::from_secs(5), keys.refetch_for_unknown_kid())
            .await
            .unwrap();
        assert!(matches!(second, Refetch::Fetched(_)), "{second:?}");
        assert_eq!(hits.load(Ordering::SeqCst), 1);
        assert!(keys.is_ready());
    }

    /// Everything logged while the guard lives, as text (current-thread runtime: the spawned
    /// fetch tasks log on this thread).
    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Capture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Capture {
        fn text(&self) -> String {
            String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
        }
    }

    #[tokio::test]
    async fn failed_fetches_show_urls_without_userinfo_or_query() {
        let capture = Capture::default();
        let writer = capture.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        let (addr, _) = serve(|path| match path {
            p if p.starts_with("/missing") => (404, "{}".to_owned()),
            _ => (200, "<html>".to_owned()),
        })
        .await;
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let secret_urls = [
            format!("http://alice:hunter2@{closed}/jwks?api_key=s3cr3t"),
            format!("http://alice:hunter2@{addr}/missing?api_key=s3cr3t#frag"),
            format!("http://alice:hunter2@{addr}/html?api_key=s3cr3t"),
        ];
        let mut errors = Vec::new();
        for url in &secret_urls {
            let keys = issuer_keys(
                &format!("    issuer: http://{addr}\n    jwks_uri: {url}\n"),
                "refresh_min: 1s",
            );
            errors.push(keys.fetch().await.unwrap_err().to_string());
        }
        // Everything logged meanwhile (ours and the HTTP stack's debug lines) is free of them
        // too. Whether our WARN line is captured depends on tracing's per-callsite interest cache,
        // which a test on another thread may have filled first; its text is the Display of the error,
        // which is checked in any case.
        let logged = capture.text();
        for text in errors.iter().chain([&logged]) {
            for secret in ["alice", "hunter2", "api_key", "s3cr3t", "frag"] {
                assert!(!text.contains(secret), "{secret} in {text}");
            }
        }
        assert!(
            errors[0].contains(&format!("http://{closed}/jwks")),
            "{}",
            errors[0]
        );
        assert!(errors[1].contains("status 404"), "{}", errors[1]);
        assert!(errors[2].contains("not JSON"), "{}", errors[2]);
    }

    #[test]
    fn a_refused_url_is_reported_redacted() {
        let e = check_url("ftp://u:hunter2@iam.example.com/jwks?api_key=x", false).unwrap_err();
        assert!(e.contains("ftp://iam.example.com/jwks"), "{e}");
        assert!(!e.contains("hunter2") && !e.contains("api_key"), "{e}");
    }

    #[tokio::test]
    async fn a_discovery_issuer_mismatch_shows_both_issuers_quoted_and_bounded() {
        let long = format!("https://evil.example/\u{1b}[31m{}", "a".repeat(5000));
        let doc = serde_json::json!({ "issuer": long, "jwks_uri": "https://x/jwks" }).to_string();
        let (addr, _) = serve(move |_| (200, doc.clone())).await;
        let keys = issuer_keys(
            &format!("    issuer: http://{addr}\n    discovery: true\n"),
            "refresh_min: 1s",
        );
        let e = keys.fetch().await.unwrap_err().to_string();
        assert!(e.contains("\"https://evil.example/\\u{1b}[31maaa"), "{e}");
        assert!(
            e.contains(&format!("configured issuer \"http://{addr}\"")),
            "{e}"
        );
        assert!(e.len() < 600, "{} bytes", e.len());
        assert!(!e.contains('\u{1b}'));
    }

    #[test]
    fn huge_durations_never_overflow() {
        let t = JwksTiming {
            refresh_min: Duration::MAX,
            refresh_max: Duration::MAX,
            max_stale: Duration::MAX,
            fetch_timeout: Duration::from_secs(2),
        };
        assert_eq!(ttl_for(Some(Duration::from_secs(5)), &t), Duration::MAX);
        // Inverted bounds (refused by config validation) still do not panic.
        let inverted = JwksTiming {
            refresh_min: Duration::from_secs(60),
            refresh_max: Duration::from_secs(1),
            ..t.clone()
        };
        assert_eq!(ttl_for(None, &inverted), Duration::from_secs(60));
        let loaded = Loaded {
            keys: KeySet::default(),
            fetched_at: Instant::now(),
            ttl: Duration::MAX,
        };
        assert_eq!(loaded.refresh_at(), None);
        assert!(loaded.age() < loaded.ttl.saturating_add(t.max_stale));
    }

    #[test]
    fn cache_control_parsing() {
        assert_eq!(cache_max_age("max-age=300"), Some(Duration::from_secs(300)));
        assert_eq!(
            cache_max_age("public, Max-Age=60, must-revalidate"),
            Some(Duration::from_secs(60))
        );
        assert_eq!(cache_max_age("no-store"), Some(Duration::ZERO));
        assert_eq!(cache_max_age("public"), None);
        assert_eq!(cache_max_age("max-age=abc"), None);
    }

    #[test]
    fn ttl_is_clamped() {
        let t = JwksTiming {
            refresh_min: Duration::from_secs(30),
            refresh_max: Duration::from_secs(3600),
            max_stale: Duration::from_secs(86400),
            fetch_timeout: Duration::from_secs(2),
        };
        assert_eq!(
            ttl_for(Some(Duration::from_secs(5)), &t),
            Duration::from_secs(30)
        );
        assert_eq!(
            ttl_for(Some(Duration::from_secs(600)), &t),
            Duration::from_secs(600)
        );
        assert_eq!(
            ttl_for(Some(Duration::from_secs(86400)), &t),
            Duration::from_secs(3600)
        );
        assert_eq!(ttl_for(None, &t), Duration::from_secs(3600));
    }
}
