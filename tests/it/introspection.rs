//! RFC 7662 token introspection (SPEC §9, issue 11) for real: opaque tokens and revocation from
//! the real OpenID provider (`tests/idp`, panva/oidc-provider with its `introspection` and
//! `revocation` features), a counting proxy of the test's own in front of it for single flight,
//! and an RFC 7662 server of the test's own for hostile answers (and for JWT revocation:
//! oidc-provider refuses to introspect structured tokens). Main allow/deny through real Envoy and
//! through forward-auth, with the real binary's log checked for tokens and secrets.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};

use crate::envoy::{Envoy, Idp, assert_denial, upstream_saw};
use crate::support::*;

// ---------------------------------------------------------------------------------------------
// The real IdP: opaque tokens, revocation.

/// An opaque access token from the IdP's client-credentials grant for the opaque resource
/// (client_secret_basic clients of `tests/idp/idp.mjs`).
async fn opaque_token(idp: &Idp, client: &str, secret: &str) -> String {
    let resp = reqwest::Client::new()
        .post(format!("{}/token", idp.issuer()))
        .basic_auth(client, Some(secret))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("grant_type=client_credentials&resource=urn%3Acitadel%3Aopaque")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = serde_json::from_str(&resp.text().await.unwrap()).unwrap();
    let token = body["access_token"].as_str().unwrap().to_owned();
    assert_ne!(
        token.matches('.').count(),
        2,
        "the IdP must issue an opaque token here: {token}"
    );
    token
}

/// RFC 7009 revocation at the IdP, by the client the token was issued to.
async fn revoke(idp: &Idp, token: &str, client: &str, secret: &str) {
    let resp = reqwest::Client::new()
        .post(format!("{}/token/revocation", idp.issuer()))
        .basic_auth(client, Some(secret))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{:?}", resp.text().await);
}

async fn start_idp(dir: &Path) -> Idp {
    Idp::start(0, &dir.join("keys.json"), dir.join("idp.log")).await
}

/// Config for one issuer `iam` played by `issuer` (discovery, so JWKS and, without `endpoint`,
/// the introspection endpoint come from the IdP) with `introspection` YAML under it.
fn config(issuer: &str, introspection: &str) -> String {
    let introspection: String = introspection
        .lines()
        .map(|l| format!("      {l}\n"))
        .collect();
    format!(
        r#"
listen: {{ grpc: 127.0.0.1:0, http: 127.0.0.1:0 }}
issuers:
  - name: iam
    issuer: {issuer}
    discovery: true
    audiences: [api]
    claims: {{ user_id: client_id, tenant_id: tenant_id, roles: [roles] }}
    introspection:
{introspection}
policy:
{POLICY}
"#
    )
}

/// A file holding `secret` (client_secret_file), kept for the test's lifetime.
fn secret_file(dir: &Path, secret: &str) -> String {
    let path = dir.join("introspection-secret");
    std::fs::write(&path, format!("{secret}\n")).unwrap();
    path.display().to_string()
}

/// The value of a metric line `name{labels…} value` whose labels contain every `want`.
fn metric(text: &str, name: &str, want: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && want.iter().all(|w| l.contains(w)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn assert_allowed(
    resp: &envoy_types::ext_authz::v3::pb::CheckResponse,
    user: &str,
    tenant: &str,
    roles: &str,
) {
    assert_eq!(status_of(resp), 200, "{resp:?}");
    assert_eq!(header_of(resp, "x-user-id").as_deref(), Some(user));
    assert_eq!(header_of(resp, "x-tenant-id").as_deref(), Some(tenant));
    assert_eq!(header_of(resp, "x-user-roles").as_deref(), Some(roles));
}

fn assert_inactive(resp: &envoy_types::ext_authz::v3::pb::CheckResponse) {
    assert_eq!(status_of(resp), 401, "{resp:?}");
    assert_eq!(body_of(resp)["error"], "invalid_token");
    assert_eq!(body_of(resp)["reason"], "token is not active");
    assert!(
        header_of(resp, "www-authenticate").is_some_and(|w| w.contains("error=\"invalid_token\"")),
        "{resp:?}"
    );
}

fn assert_unavailable(resp: &envoy_types::ext_authz::v3::pb::CheckResponse, cause: &str) {
    assert_eq!(status_of(resp), 503, "{resp:?}");
    assert_eq!(body_of(resp)["error"], "temporarily_unavailable");
    let reason = body_of(resp)["reason"].as_str().unwrap().to_owned();
    assert!(
        reason.starts_with("introspection failed: ") && reason.contains(cause),
        "{reason:?} should say {cause:?}"
    );
    assert!(header_of(resp, "retry-after").is_some(), "{resp:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn opaque_tokens_from_the_real_idp_are_allowed_and_revocation_is_seen_after_the_cache_ttl() {
    let dir = tempfile::tempdir().unwrap();
    let idp = start_idp(dir.path()).await;
    let cache_ttl = Duration::from_secs(2);
    let server = InProcess::start(&config(
        &idp.issuer(),
        &format!(
            "client_id: citadel-authz\nclient_secret_file: {}\ncache_ttl: 2s\nnegative_ttl: 30s",
            secret_file(dir.path(), "secret-citadel-authz")
        ),
    ))
    .await;
    server.wait_ready().await;

    let token = opaque_token(&idp, "svc-es256", "secret-es256").await;
    let first = Instant::now();
    // Identity from the answer through the claim paths; then the policy as for a JWT.
    let resp = server.check_token("/api/tenants/acme/files", &token).await;
    assert_allowed(&resp, "svc-es256", "acme", "reader,member");
    let resp = server.check_token("/api/orders/1", &token).await;
    assert_allowed(&resp, "svc-es256", "acme", "reader,member");
    let resp = server.check_token("/api/admin/users", &token).await;
    assert_eq!(status_of(&resp), 403, "{resp:?}");
    assert_eq!(body_of(&resp)["error"], "insufficient_scope");
    let m = server.metrics().await;
    assert_eq!(
        metric(
            &m,
            "citadel_authz_introspection_calls_total",
            &["issuer=\"iam\"", "outcome=\"active\""]
        ),
        1.0,
        "three checks, one call:\n{m}"
    );
    assert_eq!(
        metric(
            &m,
            "citadel_authz_introspection_cache_hits_total",
            &["issuer=\"iam\""]
        ),
        2.0,
        "{m}"
    );

    // Revoked at the IdP: the cached active answer is reused until cache_ttl, then refused.
    revoke(&idp, &token, "svc-es256", "secret-es256").await;
    assert_eq!(
        status_of(&server.check_token("/api/orders/1", &token).await),
        200
    );
    server.wait_status("/api/orders/1", &token, 401).await;
    // The answer was cached after `first`, so it could not expire before first + cache_ttl.
    assert!(
        first.elapsed() + Duration::from_millis(100) >= cache_ttl,
        "refused {:?} after the first check, before the cached answer's cache_ttl",
        first.elapsed()
    );
    let resp = server.check_token("/api/orders/1", &token).await;
    assert_inactive(&resp);
    // The inactive answer is cached for negative_ttl: repeated checks make no new call.
    let before = metric(
        &server.metrics().await,
        "citadel_authz_introspection_calls_total",
        &["outcome=\"inactive\""],
    );
    for _ in 0..5 {
        assert_inactive(&server.check_token("/api/orders/1", &token).await);
    }
    let after = metric(
        &server.metrics().await,
        "citadel_authz_introspection_calls_total",
        &["outcome=\"inactive\""],
    );
    assert_eq!((before, after), (1.0, 1.0));

    // An opaque value the IdP never issued: inactive, 401.
    assert_inactive(
        &server
            .check_token("/api/orders/1", "made-up-opaque-token")
            .await,
    );
    // JWTs of the issuer are untouched by `tokens: opaque` (never introspected).
    let jwt = idp.token("svc-es256").await;
    assert_eq!(
        status_of(&server.check_token("/api/orders/1", &jwt).await),
        200
    );
    let m = server.metrics().await;
    assert_eq!(
        metric(&m, "citadel_authz_introspection_calls_total", &[]),
        3.0,
        "active, inactive, made-up; no call for the JWT:\n{m}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn client_secret_post_authenticates_and_a_wrong_secret_is_a_503_not_a_401() {
    let dir = tempfile::tempdir().unwrap();
    let idp = start_idp(dir.path()).await;
    let server = InProcess::start(&config(
        &idp.issuer(),
        &format!(
            "client_id: citadel-authz-post\nclient_secret_file: {}\nauth_method: client_secret_post",
            secret_file(dir.path(), "secret-citadel-authz-post")
        ),
    ))
    .await;
    server.wait_ready().await;
    let token = opaque_token(&idp, "svc-eddsa", "secret-eddsa").await;
    let resp = server.check_token("/api/tenants/acme/files", &token).await;
    assert_allowed(&resp, "svc-eddsa", "acme", "admin,member");
    server.stop().await;

    // The IdP refuses our client (401 invalid_client): the server could not decide — 503, so an
    // IdP misconfiguration never passes for a wave of invalid tokens.
    let dir2 = tempfile::tempdir().unwrap();
    let server = InProcess::start(&config(
        &idp.issuer(),
        &format!(
            "client_id: citadel-authz\nclient_secret_file: {}",
            secret_file(dir2.path(), "not-the-secret")
        ),
    ))
    .await;
    server.wait_ready().await;
    let token = opaque_token(&idp, "svc-es256", "secret-es256").await;
    assert_unavailable(
        &server.check_token("/api/orders/1", &token).await,
        "status 401",
    );
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// A counting proxy in front of the IdP's introspection endpoint.

#[derive(Clone)]
struct CountingProxy {
    addr: SocketAddr,
    calls: Arc<AtomicU64>,
}

impl CountingProxy {
    /// Forwards `POST /introspect` to `upstream` (body and Authorization as sent), counting calls.
    /// Each answer is held back `delay`, so concurrent checks really overlap the call.
    async fn start(upstream: String, delay: Duration) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let calls = Arc::new(AtomicU64::new(0));
        let state = (upstream, Arc::clone(&calls), delay);
        let app = Router::new()
            .route(
                "/introspect",
                post(
                    |State((upstream, calls, delay)): State<(String, Arc<AtomicU64>, Duration)>,
                     headers: HeaderMap,
                     body: Bytes| async move {
                        calls.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(delay).await;
                        let mut req = reqwest::Client::new()
                            .post(&upstream)
                            .header("content-type", "application/x-www-form-urlencoded")
                            .body(body);
                        if let Some(auth) = headers.get(header::AUTHORIZATION) {
                            req = req.header("authorization", auth.to_str().unwrap());
                        }
                        let resp = req.send().await.unwrap();
                        let status = StatusCode::from_u16(resp.status().as_u16()).unwrap();
                        (
                            status,
                            [(header::CONTENT_TYPE, "application/json")],
                            resp.bytes().await.unwrap(),
                        )
                    },
                ),
            )
            .with_state(state);
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        CountingProxy { addr, calls }
    }

    fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_checks_of_a_token_share_one_introspection_call() {
    let dir = tempfile::tempdir().unwrap();
    let idp = start_idp(dir.path()).await;
    let proxy = CountingProxy::start(
        format!("{}/token/introspection", idp.issuer()),
        Duration::from_millis(500),
    )
    .await;
    let server = Arc::new(
        InProcess::start(&config(
            &idp.issuer(),
            &format!(
                "endpoint: http://{}/introspect\nclient_id: citadel-authz\nclient_secret_file: {}",
                proxy.addr,
                secret_file(dir.path(), "secret-citadel-authz")
            ),
        ))
        .await,
    );
    server.wait_ready().await;

    // 50 concurrent checks of one new token: one call.
    let token = opaque_token(&idp, "svc-es256", "secret-es256").await;
    let checks: Vec<_> = (0..50)
        .map(|_| {
            let (server, token) = (Arc::clone(&server), token.clone());
            tokio::spawn(async move {
                status_of(&server.check_token("/api/tenants/acme/files", &token).await)
            })
        })
        .collect();
    for c in checks {
        assert_eq!(c.await.unwrap(), 200);
    }
    assert_eq!(proxy.calls(), 1, "50 concurrent checks of one token");
    // Checks that found no cached answer either made the call or joined it: more than one means
    // they really overlapped the call (not merely arrived after it and hit the cache).
    let m = server.metrics().await;
    let misses = metric(&m, "citadel_authz_introspection_cache_misses_total", &[]);
    assert!(misses >= 2.0, "no check overlapped the call: {m}");

    // 10 distinct new tokens, 20 concurrent checks each, interleaved: 10 calls.
    let mut tokens = Vec::new();
    for i in 0..10 {
        let (c, s) = if i % 2 == 0 {
            ("svc-es256", "secret-es256")
        } else {
            ("svc-eddsa", "secret-eddsa")
        };
        tokens.push(opaque_token(&idp, c, s).await);
    }
    let checks: Vec<_> = (0..200)
        .map(|i| {
            let (server, token) = (Arc::clone(&server), tokens[i % 10].clone());
            tokio::spawn(async move {
                status_of(&server.check_token("/api/tenants/acme/files", &token).await)
            })
        })
        .collect();
    for c in checks {
        assert_eq!(c.await.unwrap(), 200);
    }
    assert_eq!(proxy.calls(), 11, "one call per distinct token");
    // And now all are cached.
    for t in &tokens {
        assert_eq!(
            status_of(&server.check_token("/api/tenants/acme/files", t).await),
            200
        );
    }
    assert_eq!(proxy.calls(), 11);
}

// ---------------------------------------------------------------------------------------------
// An RFC 7662 server of the test's own: answers as told, records what it was sent.

#[derive(Clone, Debug)]
enum Answer {
    Json(Value),
    Raw(&'static str),
    Status(u16),
    Hang,
    /// A 10 MB JSON body (a string member padded out), with a Content-Length.
    Huge,
    /// The same streamed in chunks, without a Content-Length.
    HugeChunked,
    /// Per token: tokens in the set are inactive, every other is active with `claims`.
    RevocationList(Value),
}

#[derive(Default)]
struct Seen {
    authorization: Option<String>,
    content_type: Option<String>,
    body: String,
}

#[derive(Clone)]
struct Hostile {
    addr: SocketAddr,
    answer: Arc<Mutex<Answer>>,
    revoked: Arc<Mutex<Vec<String>>>,
    last: Arc<Mutex<Seen>>,
    calls: Arc<AtomicU64>,
    /// The 10 MB body, built once so that answering it is instant (only its size is on trial).
    huge: Bytes,
}

impl Hostile {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let h = Hostile {
            addr: listener.local_addr().unwrap(),
            answer: Arc::new(Mutex::new(Answer::Json(json!({"active": false})))),
            revoked: Arc::default(),
            last: Arc::default(),
            calls: Arc::default(),
            huge: Bytes::from(format!(
                r#"{{"active": true, "aud": "api", "pad": "{}"}}"#,
                "x".repeat(10 * 1024 * 1024)
            )),
        };
        let app = Router::new()
            .route("/introspect", post(hostile_answer))
            .with_state(h.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        h
    }

    fn endpoint(&self) -> String {
        format!("http://{}/introspect", self.addr)
    }

    fn set(&self, answer: Answer) {
        *self.answer.lock().unwrap() = answer;
    }

    fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }
}

async fn hostile_answer(State(h): State<Hostile>, headers: HeaderMap, body: String) -> Response {
    h.calls.fetch_add(1, Ordering::SeqCst);
    let get = |n: header::HeaderName| headers.get(n).map(|v| v.to_str().unwrap().to_owned());
    *h.last.lock().unwrap() = Seen {
        authorization: get(header::AUTHORIZATION),
        content_type: get(header::CONTENT_TYPE),
        body: body.clone(),
    };
    let answer = h.answer.lock().unwrap().clone();
    let json =
        |v: Value| ([(header::CONTENT_TYPE, "application/json")], v.to_string()).into_response();
    match answer {
        Answer::Json(v) => json(v),
        Answer::Raw(text) => ([(header::CONTENT_TYPE, "application/json")], text).into_response(),
        Answer::Status(code) => (
            StatusCode::from_u16(code).unwrap(),
            json!({"active": true}).to_string(),
        )
            .into_response(),
        Answer::Hang => {
            std::future::pending::<()>().await;
            unreachable!()
        }
        Answer::Huge => {
            ([(header::CONTENT_TYPE, "application/json")], h.huge.clone()).into_response()
        }
        Answer::HugeChunked => {
            let chunks: Vec<Result<Bytes, std::io::Error>> = h
                .huge
                .chunks(64 * 1024)
                .map(|c| Ok(Bytes::copy_from_slice(c)))
                .collect();
            let body = axum::body::Body::from_stream(tokio_stream::iter(chunks));
            ([(header::CONTENT_TYPE, "application/json")], body).into_response()
        }
        Answer::RevocationList(claims) => {
            let token = url::form_urlencoded::parse(body.as_bytes())
                .find(|(k, _)| k == "token")
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default();
            if h.revoked.lock().unwrap().contains(&token) {
                json(json!({"active": false}))
            } else {
                json(claims)
            }
        }
    }
}

/// Config for an issuer played by `jwks` (JWKS only) whose introspection is `hostile`.
fn hostile_config(jwks: &JwksServer, hostile: &Hostile, extra: &str) -> String {
    format!(
        r#"
listen: {{ grpc: 127.0.0.1:0, http: 127.0.0.1:0 }}
issuers:
  - name: iam
    issuer: {iss}
    jwks_uri: {uri}
    audiences: [api]
    claims: {{ user_id: sub, tenant_id: tenant_id, roles: [roles, scope] }}
    introspection:
      endpoint: {endpoint}
      client_id: "citadel authz"
      client_secret_file: {secret}
      timeout: 1s
{extra}
policy:
{POLICY}
"#,
        iss = jwks.issuer(),
        uri = jwks.jwks_uri(),
        endpoint = hostile.endpoint(),
        secret = "SECRET_FILE",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_answers_get_the_status_section_9_says() {
    let dir = tempfile::tempdir().unwrap();
    let key = key(jsonwebtoken::Algorithm::ES256, "k1");
    let jwks = JwksServer::start(&[&key]).await;
    let hostile = Hostile::start().await;
    let secret = secret_file(dir.path(), "p@ss:w rd&=");
    // negative_ttl 0: every check of a refused token asks again, so each case is its own call.
    let yaml = hostile_config(
        &jwks,
        &hostile,
        "      cache_ttl: 60s\n      negative_ttl: 0s",
    )
    .replace("SECRET_FILE", &secret);
    let server = InProcess::start(&yaml).await;
    server.wait_ready().await;
    let iss = jwks.issuer();
    let good = json!({"active": true, "iss": iss, "aud": "api", "sub": "alice", "tenant_id": "acme",
        "scope": "reader member", "exp": now() + 600});

    // The request as RFC 7662 §2.1 and RFC 6749 §2.3.1 say.
    hostile.set(Answer::Json(good.clone()));
    let resp = server.check_token("/api/orders/1", "opaque-a+b/c=").await;
    assert_allowed(&resp, "alice", "acme", "reader,member");
    {
        let seen = hostile.last.lock().unwrap();
        assert_eq!(
            seen.content_type.as_deref(),
            Some("application/x-www-form-urlencoded")
        );
        let form: Vec<(String, String)> = url::form_urlencoded::parse(seen.body.as_bytes())
            .into_owned()
            .collect();
        assert_eq!(
            form,
            vec![
                ("token".to_owned(), "opaque-a+b/c=".to_owned()),
                ("token_type_hint".to_owned(), "access_token".to_owned())
            ]
        );
        let basic = seen
            .authorization
            .as_deref()
            .unwrap()
            .strip_prefix("Basic ")
            .unwrap();
        let pair = String::from_utf8(STANDARD.decode(basic).unwrap()).unwrap();
        // Both parts form-encoded before the Basic encoding.
        assert_eq!(pair, "citadel+authz:p%40ss%3Aw+rd%26%3D");
    }

    let with = |k: &str, v: Value| {
        let mut g = good.clone();
        g[k] = v;
        g
    };
    let cases: Vec<(&str, Answer, u16, &str)> = vec![
        (
            "active string",
            Answer::Json(json!({"active": "true", "aud": "api"})),
            503,
            "`active` is not a JSON boolean",
        ),
        (
            "active missing",
            Answer::Json(json!({"aud": "api", "sub": "alice"})),
            503,
            "no `active`",
        ),
        (
            "active null",
            Answer::Json(json!({"active": null})),
            503,
            "`active` is not a JSON boolean",
        ),
        (
            "not JSON",
            Answer::Raw("active=true"),
            503,
            "not a JSON object",
        ),
        (
            "JSON array",
            Answer::Raw("[{\"active\": true}]"),
            503,
            "not a JSON object",
        ),
        (
            "duplicate active",
            Answer::Raw(r#"{"active": false, "active": true, "aud": "api"}"#),
            503,
            "duplicate",
        ),
        ("500", Answer::Status(500), 503, "status 500"),
        ("302", Answer::Status(302), 503, "status 302"),
        ("201", Answer::Status(201), 503, "status 201"),
        ("10 MB body", Answer::Huge, 503, "larger than 65536 bytes"),
        (
            "10 MB chunked body",
            Answer::HugeChunked,
            503,
            "larger than 65536 bytes",
        ),
        (
            "hang past the timeout",
            Answer::Hang,
            503,
            "no answer within 1s",
        ),
        (
            "inactive",
            Answer::Json(json!({"active": false})),
            401,
            "token is not active",
        ),
        (
            "wrong aud",
            Answer::Json(with("aud", json!(["other", "web"]))),
            401,
            "token audience ['other', 'web'] is not accepted",
        ),
        (
            "aud missing",
            Answer::Json({
                let mut g = good.clone();
                g.as_object_mut().unwrap().remove("aud");
                g
            }),
            401,
            "claim aud is missing",
        ),
        (
            "wrong iss",
            Answer::Json(with("iss", json!("https://evil.example.com"))),
            401,
            "token issuer 'https://evil.example.com' is not accepted",
        ),
        (
            "exp in the past",
            Answer::Json(with("exp", json!(now() - 600))),
            401,
            "token is expired",
        ),
        (
            "nbf in the future",
            Answer::Json(with("nbf", json!(now() + 600))),
            401,
            "token is not valid yet",
        ),
        (
            "exp a string",
            Answer::Json(with("exp", json!("tomorrow"))),
            401,
            "claim exp has the wrong type or range",
        ),
        (
            "unsafe role",
            Answer::Json(with("scope", json!("reader admin,root"))),
            401,
            "claim roles cannot be sent in a header",
        ),
    ];
    for (i, (name, answer, status, reason)) in cases.into_iter().enumerate() {
        hostile.set(answer);
        let token = format!("opaque-case-{i}");
        let started = Instant::now();
        let resp = server.check_token("/api/orders/1", &token).await;
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{name}: took {:?}",
            started.elapsed()
        );
        assert_eq!(status_of(&resp), status, "{name}: {resp:?}");
        let got = body_of(&resp)["reason"].as_str().unwrap().to_owned();
        match status {
            503 => assert_unavailable(&resp, reason),
            _ => {
                assert_eq!(body_of(&resp)["error"], "invalid_token", "{name}");
                assert_eq!(got, reason, "{name}");
            }
        }
        assert!(!got.contains(&token), "{name}: the reason names the token");
    }

    // Never sent to the IdP: a value over limits.max_token_bytes (401 before anything else), and
    // a value with exactly two dots, which is a JWT and refused as one.
    hostile.set(Answer::Json(good.clone()));
    let calls = hostile.calls();
    let resp = server.check_token("/api/orders/1", &"o".repeat(9000)).await;
    assert_eq!(status_of(&resp), 401);
    assert_eq!(body_of(&resp)["reason"], "token is larger than 8192 bytes");
    let resp = server.check_token("/api/orders/1", "not.a.jwt").await;
    assert_eq!(status_of(&resp), 401);
    assert_eq!(body_of(&resp)["error"], "invalid_token");
    assert_eq!(hostile.calls(), calls);

    // Connection refused: 503.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_port = closed.local_addr().unwrap().port();
    drop(closed);
    let yaml_closed = yaml.replace(
        &hostile.endpoint(),
        &format!("http://127.0.0.1:{closed_port}/introspect"),
    );
    let refused = InProcess::start(&yaml_closed).await;
    refused.wait_ready().await;
    let resp = refused.check_token("/api/orders/1", "opaque-x").await;
    assert_unavailable(&resp, "cannot reach the endpoint");
    assert!(
        !body_of(&resp)["reason"]
            .as_str()
            .unwrap()
            .contains("127.0.0.1"),
        "the client is not told the endpoint: {resp:?}"
    );
    refused.stop().await;

    // A cached active answer still decides while the endpoint fails; a token without one is 503.
    hostile.set(Answer::Json(good.clone()));
    assert_eq!(
        status_of(&server.check_token("/api/orders/1", "opaque-cached").await),
        200
    );
    hostile.set(Answer::Status(500));
    let calls = hostile.calls();
    assert_eq!(
        status_of(&server.check_token("/api/orders/1", "opaque-cached").await),
        200
    );
    assert_eq!(hostile.calls(), calls, "served from the cache");
    assert_unavailable(
        &server.check_token("/api/orders/1", "opaque-uncached").await,
        "status 500",
    );
    // A failure is not cached: the IdP back, the same token is allowed at once.
    hostile.set(Answer::Json(good.clone()));
    assert_eq!(
        status_of(&server.check_token("/api/orders/1", "opaque-uncached").await),
        200
    );

    // An active answer is never reused past its exp (cache_ttl is 60s here).
    hostile.set(Answer::Json(with("exp", json!(now() + 2))));
    assert_eq!(
        status_of(&server.check_token("/api/orders/1", "opaque-short").await),
        200
    );
    hostile.set(Answer::Json(json!({"active": false})));
    // Within leeway of exp the cached answer would still pass the claim checks; past exp the
    // entry is gone and the IdP is asked again (here: inactive).
    server
        .wait_status("/api/orders/1", "opaque-short", 401)
        .await;

    let m = server.metrics().await;
    for outcome in ["active", "inactive", "error"] {
        assert!(
            metric(
                &m,
                "citadel_authz_introspection_calls_total",
                &[&format!("outcome=\"{outcome}\"")]
            ) > 0.0,
            "{outcome}:\n{m}"
        );
    }
    assert!(
        metric(
            &m,
            "citadel_authz_decisions_total",
            &["reason=\"introspection_failed\""]
        ) > 0.0,
        "{m}"
    );
    assert!(!m.contains("opaque-"), "a token in the metrics");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_revoked_jwt_is_refused_with_tokens_all_even_from_the_verified_token_cache() {
    let dir = tempfile::tempdir().unwrap();
    let idp = start_idp(dir.path()).await;
    let hostile = Hostile::start().await;
    // oidc-provider does not introspect JWTs (400 unsupported_token_type), so the revocation list
    // is the test's own RFC 7662 server; the JWTs and their keys are the real IdP's.
    hostile.set(Answer::RevocationList(
        json!({"active": true, "aud": "api"}),
    ));
    let yaml = config(
        &idp.issuer(),
        &format!(
            "endpoint: {}\nclient_id: citadel-authz\nclient_secret_file: {}\ntokens: all\ncache_ttl: 1s\nnegative_ttl: 30s",
            hostile.endpoint(),
            secret_file(dir.path(), "s")
        ),
    )
    .replace("claims: { user_id: client_id,", "claims: { user_id: sub,");
    let server = InProcess::start(&yaml).await;
    server.wait_ready().await;

    let jwt = idp.token("svc-es256").await;
    let other = idp.token("svc-eddsa").await;
    // Two checks: the second is a verified-token cache hit, and still consults introspection
    // (its answer cache here).
    assert_eq!(
        status_of(&server.check_token("/api/orders/1", &jwt).await),
        200
    );
    assert_eq!(
        status_of(&server.check_token("/api/orders/1", &jwt).await),
        200
    );
    assert_eq!(
        status_of(&server.check_token("/api/tenants/acme/x", &other).await),
        200
    );
    assert_eq!(hostile.calls(), 2, "one call per JWT");
    let m = server.metrics().await;
    assert!(
        metric(&m, "citadel_authz_token_cache_hits_total", &[]) >= 1.0,
        "{m}"
    );

    hostile.revoked.lock().unwrap().push(jwt.clone());
    let revoked_at = Instant::now();
    server.wait_status("/api/orders/1", &jwt, 401).await;
    assert!(revoked_at.elapsed() < Duration::from_secs(5));
    assert_inactive(&server.check_token("/api/orders/1", &jwt).await);
    assert_eq!(
        status_of(&server.check_token("/api/tenants/acme/x", &other).await),
        200
    );

    // A JWT that fails its own checks is refused before any introspection call.
    let calls = hostile.calls();
    let mut forged = other.clone();
    let last = forged.pop().unwrap();
    forged.push(if last == 'A' { 'B' } else { 'A' });
    let resp = server.check_token("/api/orders/1", &forged).await;
    assert_eq!(status_of(&resp), 401);
    assert_eq!(body_of(&resp)["reason"], "signature is invalid");
    assert_eq!(hostile.calls(), calls);

    // Opaque tokens still go to the same issuer.
    assert_eq!(
        status_of(
            &server
                .check_token("/api/me", "opaque-revocation-test")
                .await
        ),
        200
    );
    // Introspection down: a JWT without a cached answer is 503, not an allow on its signature.
    hostile.set(Answer::Status(503));
    let fresh = idp.token("svc-es256").await;
    assert_unavailable(
        &server.check_token("/api/orders/1", &fresh).await,
        "status 503",
    );
    server.stop().await;
}

/// Found by the soak (`bench/soak.sh`): a valid reload used to start both caches empty, so a
/// policy edit while the IdP hung turned every cached opaque token into a 503 (SPEC §9: 503
/// only when no cached answer is still valid) and made every cached JWT verify again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_policy_reload_keeps_cached_answers_and_verdicts_while_the_idp_hangs() {
    let dir = tempfile::tempdir().unwrap();
    let key = key(jsonwebtoken::Algorithm::ES256, "k1");
    let jwks = JwksServer::start(&[&key]).await;
    let hostile = Hostile::start().await;
    let secret = secret_file(dir.path(), "s");
    let yaml =
        hostile_config(&jwks, &hostile, "      cache_ttl: 60s").replace("SECRET_FILE", &secret);
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, &yaml).unwrap();
    let server = InProcess::start_file(&path).await;
    server.wait_ready().await;
    hostile.set(Answer::Json(
        json!({"active": true, "iss": jwks.issuer(), "aud": "api",
        "sub": "alice", "tenant_id": "acme", "scope": "reader", "exp": now() + 600}),
    ));
    let jwt = key.mint(&claims(&jwks.issuer(), "bob", "acme", &["reader"]));
    for token in ["opaque-cached", jwt.as_str()] {
        assert_eq!(
            status_of(&server.check_token("/api/orders/1", token).await),
            200
        );
    }
    assert_eq!(hostile.calls(), 1);

    // The IdP hangs; the policy changes (a new rule): the cached answer and verdict still serve.
    hostile.set(Answer::Hang);
    let reloads = |m: &str| sample(m, "citadel_authz_config_reloads_total", &["ok"]);
    let with_status = yaml.replace(
        "  rules:\n",
        "  rules:\n    - name: status\n      paths: [/status]\n      public: true\n",
    );
    let reloaded = |yaml: String| {
        let (server, path) = (&server, &path);
        async move {
            let before = reloads(&server.metrics().await);
            std::fs::write(path, yaml).unwrap();
            eventually(Duration::from_secs(10), "the reload", || async {
                (reloads(&server.metrics().await) > before).then_some(())
            })
            .await;
        }
    };
    reloaded(with_status.clone()).await;
    assert_eq!(status_of(&server.check("GET", "/status", &[]).await), 200);
    assert_allowed(
        &server.check_token("/api/orders/1", "opaque-cached").await,
        "alice",
        "acme",
        "reader",
    );
    assert_eq!(
        hostile.calls(),
        1,
        "the answer came from the cache kept over the reload"
    );
    let hits = |m: &str| sample(m, "citadel_authz_token_cache_hits_total", &[]);
    let misses = |m: &str| sample(m, "citadel_authz_token_cache_misses_total", &[]);
    let before = server.metrics().await;
    assert_allowed(
        &server.check_token("/api/orders/1", &jwt).await,
        "bob",
        "acme",
        "reader",
    );
    let after = server.metrics().await;
    assert_eq!(hits(&after), hits(&before) + 1.0, "{after}");
    assert_eq!(misses(&after), misses(&before), "{after}");

    // A change to the introspecting issuer itself starts both caches afresh: no verdict reached
    // under the old rules survives it.
    reloaded(with_status.replace("cache_ttl: 60s", "cache_ttl: 30s")).await;
    assert_unavailable(
        &server.check_token("/api/orders/1", "opaque-cached").await,
        "no answer within 1s",
    );
    let before = server.metrics().await;
    assert_eq!(
        status_of(&server.check_token("/api/orders/1", &jwt).await),
        200
    );
    let after = server.metrics().await;
    assert_eq!(misses(&after), misses(&before) + 1.0, "{after}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_an_introspecting_issuer_an_opaque_token_is_401_invalid_token() {
    let key = key(jsonwebtoken::Algorithm::ES256, "k1");
    let jwks = JwksServer::start(&[&key]).await;
    let server = InProcess::start(&config_yaml(&jwks, "  refresh_min: 1s")).await;
    server.wait_ready().await;
    let resp = server
        .check_token("/api/orders/1", "opaque-token-value")
        .await;
    assert_eq!(status_of(&resp), 401);
    assert_eq!(body_of(&resp)["error"], "invalid_token");
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// The real binary behind real Envoy and as forward-auth; its log checked for secrets.

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn through_envoy_and_forward_auth_and_no_token_or_secret_in_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let mut idp = start_idp(dir.path()).await;
    let (grpc_port, http_port) = (free_port(), free_port());
    let secret = "secret-citadel-authz-post";
    let yaml = config(
        &idp.issuer(),
        "client_id: citadel-authz-post\nclient_secret_env: CITADEL_TEST_INTROSPECTION_SECRET\nauth_method: client_secret_post\ncache_ttl: 1s\nnegative_ttl: 1s\ntimeout: 300ms",
    )
    .replace(
        "listen: { grpc: 127.0.0.1:0, http: 127.0.0.1:0 }",
        &format!("listen: {{ grpc: 127.0.0.1:{grpc_port}, http: 127.0.0.1:{http_port} }}\ndecision_log: all"),
    );
    let config_path = dir.path().join("citadel-authz.yaml");
    std::fs::write(&config_path, yaml).unwrap();
    let mut cmd = Command::new(authz_bin());
    cmd.arg("serve")
        .arg("--config")
        .arg(&config_path)
        .env("RUST_LOG", "debug")
        .env("CITADEL_TEST_INTROSPECTION_SECRET", secret);
    let authz = ChildGuard::spawn("citadel-authz", cmd, dir.path().join("authz.log"));
    let http: SocketAddr = format!("127.0.0.1:{http_port}").parse().unwrap();
    eventually(Duration::from_secs(30), "citadel-authz ready", || async {
        let r = reqwest::get(format!("http://{http}/readyz")).await.ok()?;
        (r.status() == 200).then_some(())
    })
    .await;
    let upstream = EchoUpstream::start().await;
    let envoy = Envoy::start(
        "envoy/envoy.yaml",
        vec![
            ("port_value: 9191", format!("port_value: {grpc_port}")),
            (
                "port_value: 8080",
                format!("port_value: {}", upstream.addr.port()),
            ),
        ],
    )
    .await;

    let token = opaque_token(&idp, "svc-es256", "secret-es256").await;
    let forward = opaque_token(&idp, "svc-eddsa", "secret-eddsa").await;
    let never_checked = opaque_token(&idp, "svc-es256", "secret-es256").await;
    let jwt = idp.token("svc-rs256").await;
    let bearer = format!("Bearer {token}");

    // Allowed through Envoy: identity from the answer at the upstream, the token untouched.
    let reply = envoy
        .get("/api/tenants/acme/files", &[("authorization", &bearer)])
        .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(upstream_saw(&reply, "x-user-id"), vec!["svc-es256"]);
    assert_eq!(upstream_saw(&reply, "x-tenant-id"), vec!["acme"]);
    assert_eq!(upstream_saw(&reply, "x-user-roles"), vec!["reader,member"]);
    assert_eq!(upstream_saw(&reply, "authorization"), vec![bearer.clone()]);
    // Smuggled identity headers are overwritten.
    let reply = envoy
        .get(
            "/api/orders/1",
            &[("authorization", &bearer), ("x-user-id", "admin")],
        )
        .await;
    assert_eq!(upstream_saw(&reply, "x-user-id"), vec!["svc-es256"]);
    let reply = envoy
        .get("/api/admin/users", &[("authorization", &bearer)])
        .await;
    assert_denial(
        &reply,
        403,
        Some("Bearer realm=\"citadel\", error=\"insufficient_scope\""),
        "insufficient_scope",
    );
    // A JWT of the same issuer still works beside it.
    let reply = envoy
        .get(
            "/api/orders/1",
            &[("authorization", &format!("Bearer {jwt}"))],
        )
        .await;
    assert_eq!(reply.status, 200, "{reply:?}");

    // Revoked: refused through Envoy once the cached answer is past cache_ttl.
    revoke(&idp, &token, "svc-es256", "secret-es256").await;
    let reply = eventually(Duration::from_secs(10), "401 through Envoy", || async {
        let r = envoy
            .get("/api/orders/1", &[("authorization", &bearer)])
            .await;
        (r.status == 401).then_some(r)
    })
    .await;
    assert_denial(
        &reply,
        401,
        Some("Bearer realm=\"citadel\", error=\"invalid_token\""),
        "invalid_token",
    );
    assert_eq!(reply.json()["reason"], "token is not active");

    // Forward-auth: the same decision with the identity as response headers.
    let fa = |token: String| {
        let url = format!("http://{http}/api/iam/check-access");
        async move {
            reqwest::Client::new()
                .post(url)
                .header("X-Forwarded-Method", "GET")
                .header("X-Forwarded-Uri", "/api/tenants/acme/files")
                .header("Authorization", format!("Bearer {token}"))
                .send()
                .await
                .unwrap()
        }
    };
    let r = fa(forward.clone()).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-user-id"], "svc-eddsa");
    assert_eq!(r.headers()["x-user-roles"], "admin,member");
    let r = fa(token.clone()).await;
    assert_eq!(r.status(), 401);
    assert!(
        r.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("invalid_token")
    );

    // The IdP goes away: a token without a cached answer is 503 (never an allow, never a 401
    // that would hide the outage), through forward-auth and through Envoy.
    idp.stop();
    let r = fa(never_checked.clone()).await;
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    let body: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    assert_eq!(body["error"], "temporarily_unavailable");
    let reply = envoy
        .get(
            "/api/orders/1",
            &[("authorization", &format!("Bearer {never_checked}"))],
        )
        .await;
    assert_denial(&reply, 503, None, "temporarily_unavailable");
    assert!(reply.header("retry-after").is_some(), "{reply:?}");

    // The captured log (debug, every decision): the decisions are there, no token or secret is.
    let mut authz = authz;
    authz.terminate(Duration::from_secs(10));
    let log = authz.log_text();
    assert!(log.contains("token is not active"), "{log}");
    assert!(log.contains("introspection failed"), "{log}");
    assert!(
        log.contains("svc-es256"),
        "allow decisions are logged: {log}"
    );
    for (what, value) in [
        ("opaque token", token.as_str()),
        ("opaque token", forward.as_str()),
        ("opaque token", never_checked.as_str()),
        ("client secret", secret),
    ] {
        assert!(!log.contains(value), "{what} in the log:\n{log}");
    }
    let signature = jwt.rsplit('.').next().unwrap();
    assert!(!log.contains(signature), "JWT signature in the log");
}

// ---------------------------------------------------------------------------------------------
// check-config --online.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_online_tries_one_introspection_call_and_never_prints_the_secret() {
    let dir = tempfile::tempdir().unwrap();
    let idp = start_idp(dir.path()).await;
    let run = |secret: &'static str| {
        let path = dir.path().join(format!("config-{secret}.yaml"));
        std::fs::write(
            &path,
            config(
                &idp.issuer(),
                "client_id: citadel-authz\nclient_secret_env: CITADEL_TEST_INTROSPECTION_SECRET",
            ),
        )
        .unwrap();
        async move {
            let out = tokio::task::spawn_blocking(move || {
                Command::new(authz_bin())
                    .args(["check-config", "--online", "--config"])
                    .arg(&path)
                    .env("CITADEL_TEST_INTROSPECTION_SECRET", secret)
                    .output()
                    .unwrap()
            })
            .await
            .unwrap();
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(!text.contains(secret), "the secret was printed: {text}");
            (out.status.code(), text)
        }
    };
    let (code, text) = run("secret-citadel-authz").await;
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("issuers[0] (iam) introspection: ok: answered active: false"),
        "{text}"
    );
    // The IdP refuses the client: the endpoint did not answer as RFC 7662 says.
    let (code, text) = run("wrong-secret-value").await;
    assert_eq!(code, Some(2), "{text}");
    assert!(
        text.contains("issuers[0] (iam) introspection: failed: the endpoint answered status 401"),
        "{text}"
    );
}
