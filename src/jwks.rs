//! Key sets per issuer over HTTP: discovery, fetch, Cache-Control lifetime, background refresh,
//! unknown-`kid` refetch (single flight with a cooldown), stale-if-error up to `max_stale`.
//!
//! The hot path is [`IssuerKeys::current`]: one atomic load of an immutable snapshot, no lock.
//! Fetches run in spawned tasks; waiters subscribe to a `watch` channel, so no lock is ever held
//! across an `.await` and a cancelled request never cancels a fetch others wait on.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::config::{IssuerConfig, JwksSource, JwksTiming, fetch_url_allowed};
use crate::keys::KeySet;

/// Largest JWKS or discovery document read; a larger one is a failed fetch.
const MAX_DOCUMENT_BYTES: usize = 1 << 20;
/// First retry delay after a failed fetch; doubles up to `refresh_min`.
const FIRST_RETRY: Duration = Duration::from_millis(500);

/// One successfully fetched key set.
#[derive(Debug)]
pub struct Loaded {
    pub keys: KeySet,
    pub fetched_at: Instant,
    /// `fetched_at` + max-age clamped to [refresh_min, refresh_max].
    pub expires_at: Instant,
}

/// Why a fetch failed (logged and counted; never shown to clients).
#[derive(Debug, Clone, thiserror::Error)]
pub enum FetchError {
    #[error("discovery: {0}")]
    Discovery(String),
    #[error("refused URL: {0}")]
    Refused(String),
    #[error("GET {url}: {message}")]
    Http { url: String, message: String },
    #[error("{url}: {message}")]
    Document { url: String, message: String },
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
    state: Mutex<FetchState>,
    metrics: Arc<crate::metrics::Metrics>,
}

impl std::fmt::Debug for IssuerKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuerKeys")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

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
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Self {
        IssuerKeys {
            name: Arc::from(issuer.name.as_str()),
            issuer: issuer.issuer.clone(),
            source: issuer.source.clone(),
            allow_http: issuer.allow_http,
            timing,
            client,
            current: ArcSwapOption::empty(),
            state: Mutex::new(FetchState::default()),
            metrics,
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
        (Instant::now() < loaded.expires_at + self.timing.max_stale).then_some(loaded)
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
        wait(rx).await.unwrap_or_else(|| {
            Err(FetchError::Http {
                url: String::new(),
                message: "fetch task ended".into(),
            })
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FetchState> {
        // The state holds no invariant a panic could break halfway; keep going.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn start_fetch(self: &Arc<Self>, st: &mut FetchState) -> watch::Receiver<Option<FetchResult>> {
        let (tx, rx) = watch::channel(None);
        st.inflight = Some(rx.clone());
        let discovered = st.discovered.clone();
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let result = this.fetch_once(discovered).await;
            {
                let mut st = this.lock();
                st.inflight = None;
                st.last_ok = result.is_ok();
                match &result {
                    Ok((loaded, uri)) => {
                        this.current.store(Some(Arc::clone(loaded)));
                        st.discovered = uri.clone();
                    }
                    Err(_) => st.discovered = None,
                }
            }
            let result = result.map(|(loaded, _)| loaded);
            this.metrics.record_fetch(&this.name, result.is_ok());
            match &result {
                Ok(l) => {
                    tracing::info!(issuer = %this.name, keys = l.keys.len(), ttl_s = (l.expires_at - l.fetched_at).as_secs(), "JWKS fetched");
                }
                Err(e) => {
                    tracing::warn!(issuer = %this.name, error = %e, "JWKS fetch failed");
                }
            }
            let _ = tx.send(Some(result));
        });
        rx
    }

    async fn fetch_once(
        &self,
        discovered: Option<String>,
    ) -> Result<(Arc<Loaded>, Option<String>), FetchError> {
        let (url, remember) = match (&self.source, discovered) {
            (JwksSource::Uri(u), _) => (u.clone(), None),
            (JwksSource::Discovery, Some(u)) => (u.clone(), Some(u)),
            (JwksSource::Discovery, None) => {
                let u = self.discover().await?;
                (u.clone(), Some(u))
            }
        };
        fetch_url_allowed(&url, self.allow_http).map_err(FetchError::Refused)?;
        let (body, headers) = self.get(&url).await?;
        let (keys, skipped) = KeySet::from_jwks(&body).map_err(|message| FetchError::Document {
            url: url.clone(),
            message,
        })?;
        for why in skipped {
            tracing::debug!(issuer = %self.name, %why, "JWKS key ignored");
        }
        let max_age = headers
            .get(reqwest::header::CACHE_CONTROL)
            .and_then(|v| v.to_str().ok())
            .and_then(cache_max_age);
        let ttl = ttl_for(max_age, &self.timing);
        let fetched_at = Instant::now();
        Ok((
            Arc::new(Loaded {
                keys,
                fetched_at,
                expires_at: fetched_at + ttl,
            }),
            remember,
        ))
    }

    async fn discover(&self) -> Result<String, FetchError> {
        let url = format!(
            "{}/.well-known/openid-configuration",
            self.issuer.trim_end_matches('/')
        );
        fetch_url_allowed(&url, self.allow_http).map_err(FetchError::Refused)?;
        let (body, _) = self.get(&url).await?;
        let doc: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| FetchError::Discovery(format!("{url}: not JSON: {e}")))?;
        // OpenID Connect Discovery §4.3: the document's issuer must be the one we asked.
        if doc.get("issuer").and_then(|v| v.as_str()) != Some(self.issuer.as_str()) {
            return Err(FetchError::Discovery(format!(
                "{url}: issuer does not match {}",
                self.issuer
            )));
        }
        let jwks_uri = doc
            .get("jwks_uri")
            .and_then(|v| v.as_str())
            .ok_or_else(|| FetchError::Discovery(format!("{url}: no jwks_uri")))?;
        fetch_url_allowed(jwks_uri, self.allow_http)
            .map_err(|m| FetchError::Refused(format!("discovered jwks_uri {m}")))?;
        Ok(jwks_uri.to_owned())
    }

    async fn get(&self, url: &str) -> Result<(Vec<u8>, reqwest::header::HeaderMap), FetchError> {
        let err = |message: String| FetchError::Http {
            url: url.to_owned(),
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
            .map_err(|e| err(error_chain(&e)))?;
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
        while let Some(chunk) = resp.chunk().await.map_err(|e| err(error_chain(&e)))? {
            if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
                return Err(err(format!("larger than {MAX_DOCUMENT_BYTES} bytes")));
            }
            body.extend_from_slice(&chunk);
        }
        Ok((body, headers))
    }

    /// Keep the key set fresh until `stop` fires: refresh ahead of expiry, retry failures with
    /// backoff (first 500 ms, doubling, at most `refresh_min`).
    pub async fn refresh_loop(this: std::sync::Weak<Self>, mut stop: watch::Receiver<bool>) {
        let mut backoff = FIRST_RETRY;
        loop {
            // Held only while fetching: once no configuration uses this issuer (a reload removed
            // or replaced it), the loop ends at its next wake-up.
            let Some(me) = this.upgrade() else { return };
            let delay = match me.fetch().await {
                Ok(loaded) => {
                    backoff = FIRST_RETRY;
                    // Refresh at 90% of the lifetime so no check waits on an expired set.
                    (loaded.expires_at - loaded.fetched_at).mul_f64(0.9)
                }
                Err(_) => {
                    let d = backoff.min(me.timing.refresh_min);
                    backoff = (backoff * 2).min(me.timing.refresh_min);
                    d
                }
            };
            drop(me);
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
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
    max_age
        .unwrap_or(t.refresh_max)
        .clamp(t.refresh_min, t.refresh_max)
}

#[cfg(test)]
mod tests {
    use super::*;

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
