//! Dev mode's opaque tokens (issue 11): `POST /dev/token {"format": "opaque", …}` can mint an
//! opaque access token that the dev issuer introspects at the dev-only `POST /dev/introspect`, so
//! an opaque token can be shown end to end — through the ordinary introspection client
//! ([`crate::sources::introspection`]), nothing short-circuited.
//!
//! The store is in memory, bounded ([`MAX_TOKENS`]; expired tokens are dropped first) and lives as
//! long as the dev server. `/dev/introspect` answers loopback peers only (by the TCP peer, as the
//! other dev endpoints) and only to the dev issuer's own client, whose secret is random per run.
//!
//! Wiring (in `dev.rs`): `DevIssuer::issuer_config` sets `introspection:
//! Some(opaque.introspection_config(&issuer))`; `/dev/token` with `format: "opaque"` builds the same
//! claims as for a JWT and returns [`OpaqueTokens::mint`]'s token; the router merges
//! [`OpaqueTokens::routes`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::{Map, Value, json};

use crate::core::config::{ClientAuth, IntrospectTokens, IntrospectionConfig, Secret};

/// The dev issuer's introspection client.
pub const DEV_INTROSPECTION_CLIENT: &str = "citadel-authz-dev";
/// Opaque tokens held at once; beyond it (after dropping expired ones) minting is refused.
pub const MAX_TOKENS: usize = 10_000;

/// Why no opaque token was minted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpaqueError {
    #[error("claims need a numeric exp")]
    NoExp,
    #[error("{MAX_TOKENS} opaque tokens are live; wait for some to expire")]
    Full,
    #[error("the random number generator failed")]
    Random,
}

struct Entry {
    /// The claims the introspection answer carries (with `exp`).
    claims: Map<String, Value>,
    exp: i64,
}

/// The dev issuer's opaque tokens and its introspection endpoint.
pub struct OpaqueTokens {
    tokens: Mutex<HashMap<String, Entry>>,
    secret: Secret,
}

impl std::fmt::Debug for OpaqueTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpaqueTokens").finish_non_exhaustive()
    }
}

fn random_b64(bytes: usize) -> Option<String> {
    let mut buf = vec![0u8; bytes];
    aws_lc_rs::rand::fill(&mut buf).ok()?;
    Some(URL_SAFE_NO_PAD.encode(buf))
}

impl OpaqueTokens {
    /// `None` if no random client secret could be made.
    pub fn new() -> Option<Self> {
        Some(OpaqueTokens {
            tokens: Mutex::new(HashMap::new()),
            secret: Secret::new(&random_b64(32)?),
        })
    }

    /// The dev issuer's `introspection`: its own endpoint under the issuer URL (`…/dev`), its own
    /// client, short cache lifetimes so that a demo sees changes quickly.
    pub fn introspection_config(&self, issuer: &str) -> IntrospectionConfig {
        IntrospectionConfig {
            endpoint: Some(format!("{}/introspect", issuer.trim_end_matches('/'))),
            client_id: DEV_INTROSPECTION_CLIENT.to_owned(),
            client_secret: self.secret.clone(),
            auth_method: ClientAuth::ClientSecretBasic,
            tokens: IntrospectTokens::Opaque,
            cache_ttl: Duration::from_secs(5),
            negative_ttl: Duration::from_secs(5),
            timeout: Duration::from_secs(2),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        // The map holds no invariant a panic could break halfway.
        self.tokens.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A new opaque token (43 base64url characters, no `.`) standing for `claims`, which must
    /// carry a numeric `exp`.
    pub fn mint(&self, claims: Map<String, Value>, now: i64) -> Result<String, OpaqueError> {
        let exp = claims
            .get("exp")
            .and_then(Value::as_f64)
            .ok_or(OpaqueError::NoExp)? as i64;
        let token = random_b64(32).ok_or(OpaqueError::Random)?;
        let mut tokens = self.lock();
        if tokens.len() >= MAX_TOKENS {
            tokens.retain(|_, e| e.exp > now);
        }
        if tokens.len() >= MAX_TOKENS {
            return Err(OpaqueError::Full);
        }
        tokens.insert(token.clone(), Entry { claims, exp });
        Ok(token)
    }

    /// The RFC 7662 answer for `token` at `now`: its claims with `active: true` while it lives,
    /// else `{"active": false}`.
    pub fn answer(&self, token: &str, now: i64) -> Value {
        let tokens = self.lock();
        match tokens.get(token) {
            Some(e) if e.exp > now => {
                let mut body = e.claims.clone();
                body.insert("active".to_owned(), Value::Bool(true));
                body.insert("token_type".to_owned(), json!("Bearer"));
                Value::Object(body)
            }
            _ => json!({ "active": false }),
        }
    }

    /// Whether the request authenticates as the dev issuer's client (Basic or form), compared in
    /// constant time.
    fn authenticated(&self, headers: &HeaderMap, form: &HashMap<String, String>) -> bool {
        let basic = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Basic "))
            .and_then(|b| STANDARD.decode(b).ok())
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|pair| {
                let (id, secret) = pair.split_once(':')?;
                let dec = |s: &str| {
                    url::form_urlencoded::parse(format!("x={s}").as_bytes())
                        .next()
                        .map(|(_, v)| v.into_owned())
                };
                Some((dec(id)?, dec(secret)?))
            });
        let (id, secret) = match basic {
            Some(pair) => pair,
            None => match (form.get("client_id"), form.get("client_secret")) {
                (Some(id), Some(secret)) => (id.clone(), secret.clone()),
                _ => return false,
            },
        };
        id == DEV_INTROSPECTION_CLIENT
            && aws_lc_rs::constant_time::verify_slices_are_equal(
                secret.as_bytes(),
                self.secret.expose().as_bytes(),
            )
            .is_ok()
    }

    /// `POST /dev/introspect`.
    pub fn routes(self: Arc<Self>) -> Router {
        Router::new()
            .route("/dev/introspect", post(introspect))
            .with_state(self)
    }
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

async fn introspect(
    State(store): State<Arc<OpaqueTokens>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    // Loopback peers only, by the TCP peer (never a forwarded header), as every dev endpoint.
    if !peer.ip().to_canonical().is_loopback() {
        return json_response(
            StatusCode::FORBIDDEN,
            &json!({ "error": "forbidden", "reason": "dev endpoints answer loopback clients only" }),
        );
    }
    let form: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    if !store.authenticated(&headers, &form) {
        return json_response(
            StatusCode::UNAUTHORIZED,
            &json!({ "error": "invalid_client" }),
        );
    }
    let Some(token) = form.get("token") else {
        return json_response(
            StatusCode::BAD_REQUEST,
            &json!({ "error": "invalid_request", "error_description": "token is required" }),
        );
    };
    let now = crate::serve::authorizer::unix_now() as i64;
    json_response(StatusCode::OK, &store.answer(token, now))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::config::{ClaimPaths, IssuerConfig, JwksSource};
    use crate::sources::introspection::{Answer, Introspector};

    fn claims(iss: &str, exp: i64) -> Map<String, Value> {
        let Value::Object(m) = json!({"iss": iss, "aud": "citadel-dev", "sub": "carol",
            "tenant_id": "globex", "roles": ["member"], "exp": exp})
        else {
            unreachable!()
        };
        m
    }

    #[test]
    fn tokens_are_opaque_live_until_exp_and_bounded() {
        let store = OpaqueTokens::new().unwrap();
        let t = store.mint(claims("i", 1000), 900).unwrap();
        assert_eq!(t.len(), 43);
        assert!(!t.contains('.'));
        assert_eq!(store.answer(&t, 999)["active"], true);
        assert_eq!(store.answer(&t, 999)["sub"], "carol");
        assert_eq!(store.answer(&t, 1000), json!({"active": false}));
        assert_eq!(store.answer("unknown", 0), json!({"active": false}));
        let mut no_exp = claims("i", 0);
        no_exp.remove("exp");
        assert_eq!(store.mint(no_exp, 0), Err(OpaqueError::NoExp));
        for _ in 1..MAX_TOKENS {
            store.mint(claims("i", 2000), 900).unwrap();
        }
        assert_eq!(store.mint(claims("i", 2000), 900), Err(OpaqueError::Full));
        // Once tokens expire, their room is reused.
        assert!(store.mint(claims("i", 3000), 2500).is_ok());
        assert_eq!(store.lock().len(), 1);
        assert!(!format!("{store:?}").contains(store.secret.expose()));
    }

    #[tokio::test]
    async fn the_introspection_client_gets_the_identity_from_the_dev_endpoint() {
        let store = Arc::new(OpaqueTokens::new().unwrap());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Arc::clone(&store).routes();
        tokio::spawn(async move {
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .await
            .unwrap();
        });
        let issuer = format!("http://{addr}/dev");
        let rules = IssuerConfig {
            name: "dev".into(),
            issuer: issuer.clone(),
            source: JwksSource::Uri(format!("{issuer}/jwks")),
            allow_http: false,
            audiences: vec!["citadel-dev".into()],
            algorithms: vec![],
            leeway: Duration::from_secs(30),
            token_types: vec![],
            claims: ClaimPaths {
                user_id: vec!["sub".into()],
                tenant_id: vec!["tenant_id".into()],
                roles: vec![vec!["roles".into()]],
            },
            introspection: Some(store.introspection_config(&issuer)),
        };
        let now = crate::serve::authorizer::unix_now();
        let token = store
            .mint(claims(&issuer, now as i64 + 60), now as i64)
            .unwrap();
        let intro = Arc::new(Introspector::new(&rules, 10, Arc::new(())).unwrap());
        let Answer::Active(Ok(id)) = &*intro.introspect(&token, now).await.unwrap() else {
            panic!("not active")
        };
        assert_eq!(id.user_id.as_deref(), Some("carol"));
        assert_eq!(id.roles_header().as_deref(), Some("member"));
        assert_eq!(
            *intro.introspect("made-up", now).await.unwrap(),
            Answer::Inactive
        );

        // Another client, or no client, is refused (and that is a failed call: 503 upstream).
        let mut wrong = rules.clone();
        if let Some(i) = wrong.introspection.as_mut() {
            i.client_secret = Secret::new("guess");
        }
        let intro = Arc::new(Introspector::new(&wrong, 10, Arc::new(())).unwrap());
        let err = intro.introspect(&token, now).await.unwrap_err();
        assert_eq!(err.to_string(), "the endpoint answered status 401");
    }

    #[tokio::test]
    async fn non_loopback_peers_are_refused() {
        let store = Arc::new(OpaqueTokens::new().unwrap());
        let resp = introspect(
            State(store),
            ConnectInfo("192.0.2.2:5000".parse().unwrap()),
            HeaderMap::new(),
            axum::body::Bytes::from_static(b"token=x"),
        )
        .await;
        assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    }
}
