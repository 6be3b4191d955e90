//! SPEC §4 through the real gRPC server: every row of the decision table, identity headers,
//! header-map requests, and gRPC health.

use envoy_types::ext_authz::v3::pb::{CheckRequest, HttpResponse};
use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use jsonwebtoken::Algorithm;
use serde_json::json;
use std::time::Duration;

use crate::support::*;

struct Setup {
    server: InProcess,
    iam: JwksServer,
    key: citadel_authz::core::signer::SigningKey,
    partner_key: citadel_authz::core::signer::SigningKey,
    partner: JwksServer,
}

/// Two issuers (`iam`, `partner`) and a third whose JWKS is unreachable (`down`).
async fn setup() -> Setup {
    let key = key(Algorithm::ES256, "iam-1");
    let partner_key = key_rs();
    let iam = JwksServer::start(&[&key]).await;
    let partner = JwksServer::start(&[&partner_key]).await;
    let down_port = free_port();
    let yaml = format!(
        r#"
listen: {{ grpc: 127.0.0.1:0, http: 127.0.0.1:0 }}
issuers:
  - name: iam
    issuer: {iam_iss}
    jwks_uri: {iam_uri}
    audiences: [api]
  - name: partner
    issuer: {p_iss}
    jwks_uri: {p_uri}
    audiences: [api]
  - name: down
    issuer: https://down.example.com
    jwks_uri: http://127.0.0.1:{down_port}/jwks
    audiences: [api]
jwks: {{ refresh_min: 30s, fetch_timeout: 500ms }}
policy:
{POLICY}
"#,
        iam_iss = iam.issuer(),
        iam_uri = iam.jwks_uri(),
        p_iss = partner.issuer(),
        p_uri = partner.jwks_uri(),
    );
    let server = InProcess::start(&yaml).await;
    // Wait for the key sets to be installed, not merely fetched: the JWKS server counts a fetch
    // before citadel-authz has parsed and installed the answer, and a check in between is a 503.
    eventually(Duration::from_secs(10), "both key sets installed", || {
        let metrics = server.metrics();
        async move {
            let m = metrics.await;
            let installed = |issuer: &str| {
                sample(
                    &m,
                    "citadel_authz_jwks_keys",
                    &[&format!(r#"issuer="{issuer}""#)],
                ) > 0.0
            };
            (installed("iam") && installed("partner")).then_some(())
        }
    })
    .await;
    Setup {
        server,
        iam,
        key,
        partner_key,
        partner,
    }
}

fn key_rs() -> citadel_authz::core::signer::SigningKey {
    key(Algorithm::RS256, "partner-1")
}

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_sets_identity_headers_and_removes_absent_ones() {
    let s = setup().await;
    let token = s.key.mint(&claims(
        &s.iam.issuer(),
        "alice",
        "acme",
        &["member", "reader", "member"],
    ));
    let resp = s
        .server
        .check_token("/api/tenants/acme/files?x=1", &token)
        .await;
    assert_eq!(status_of(&resp), 200);
    assert_eq!(resp.status.as_ref().unwrap().code, 0);
    assert_eq!(header_of(&resp, "x-user-id").as_deref(), Some("alice"));
    assert_eq!(header_of(&resp, "x-tenant-id").as_deref(), Some("acme"));
    assert_eq!(
        header_of(&resp, "x-user-roles").as_deref(),
        Some("member,reader")
    );
    let Some(HttpResponse::OkResponse(ok)) = &resp.http_response else {
        panic!()
    };
    // Overwrite, never append: a client's copy cannot survive.
    assert!(ok.headers.iter().all(|h| h.append_action == 2), "{ok:?}");
    assert!(ok.headers_to_remove.is_empty());

    // No tenant claim: x-tenant-id is removed, not set.
    let mut c = claims(&s.iam.issuer(), "bob", "x", &["reader"]);
    c.as_object_mut().unwrap().remove("tenant_id");
    let resp = s.server.check_token("/api/orders/1", &s.key.mint(&c)).await;
    assert_eq!(status_of(&resp), 200);
    let Some(HttpResponse::OkResponse(ok)) = &resp.http_response else {
        panic!()
    };
    assert_eq!(ok.headers_to_remove, vec!["x-tenant-id".to_owned()]);
    s.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_route_removes_identity_headers_even_with_a_bad_token() {
    let s = setup().await;
    for auth in [None, Some("Bearer garbage"), Some("Basic dXNlcg==")] {
        let headers: Vec<(&str, &str)> = auth.map(|a| ("authorization", a)).into_iter().collect();
        let resp = s.server.check("GET", "/healthz", &headers).await;
        assert_eq!(status_of(&resp), 200, "{auth:?}");
        let Some(HttpResponse::OkResponse(ok)) = &resp.http_response else {
            panic!()
        };
        assert!(ok.headers.is_empty());
        let mut removed = ok.headers_to_remove.clone();
        removed.sort();
        assert_eq!(removed, vec!["x-tenant-id", "x-user-id", "x-user-roles"]);
    }
    s.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decision_table() {
    let s = setup().await;
    let iss = s.iam.issuer();
    let good = s.key.mint(&claims(&iss, "alice", "acme", &["reader"]));
    let admin = s.key.mint(&claims(&iss, "root", "acme", &["admin"]));
    let partner_admin = s
        .partner_key
        .mint(&claims(&s.partner.issuer(), "p", "acme", &["admin"]));
    let expired = s
        .key
        .mint(&json!({"iss": iss, "aud": "api", "sub": "a", "exp": now() - 3600}));
    let wrong_aud = s
        .key
        .mint(&json!({"iss": iss, "aud": "nope", "sub": "a", "exp": now() + 60}));
    let stranger = key(Algorithm::ES256, "iam-1").mint(&claims(&iss, "alice", "acme", &["admin"]));
    let down = key(Algorithm::ES256, "d").mint(&claims(
        "https://down.example.com",
        "a",
        "acme",
        &["reader"],
    ));
    let mut tampered = good.clone();
    tampered.insert(good.find('.').unwrap() + 1, 'x');

    let realm = "Bearer realm=\"citadel\"";
    // (method, path, authorization, status, gRPC code, body error, www-authenticate prefix)
    type Case<'a> = (
        &'a str,
        &'a str,
        Option<String>,
        u16,
        i32,
        &'a str,
        Option<&'a str>,
    );
    let cases: Vec<Case> = vec![
        (
            "GET",
            "/api/orders/1",
            Some(bearer(&good)),
            200,
            0,
            "",
            None,
        ),
        (
            "GET",
            "/api/orders/1",
            None,
            401,
            16,
            "unauthorized",
            Some(realm),
        ),
        (
            "GET",
            "/api/orders/1",
            Some("Basic dXNlcjpwYXNz".into()),
            401,
            16,
            "unauthorized",
            Some(realm),
        ),
        (
            "GET",
            "/api/orders/1",
            Some("bearer".into()),
            401,
            16,
            "invalid_token",
            Some("Bearer realm=\"citadel\", error=\"invalid_token\", error_description="),
        ),
        (
            "GET",
            "/api/orders/1",
            Some(bearer(&expired)),
            401,
            16,
            "invalid_token",
            Some(
                "Bearer realm=\"citadel\", error=\"invalid_token\", error_description=\"token is expired\"",
            ),
        ),
        (
            "GET",
            "/api/orders/1",
            Some(bearer(&wrong_aud)),
            401,
            16,
            "invalid_token",
            Some("Bearer realm=\"citadel\", error=\"invalid_token\""),
        ),
        (
            "GET",
            "/api/orders/1",
            Some(bearer(&stranger)),
            401,
            16,
            "invalid_token",
            Some(
                "Bearer realm=\"citadel\", error=\"invalid_token\", error_description=\"signature is invalid\"",
            ),
        ),
        (
            "GET",
            "/api/orders/1",
            Some(bearer(&tampered)),
            401,
            16,
            "invalid_token",
            Some("Bearer realm=\"citadel\", error=\"invalid_token\""),
        ),
        (
            "GET",
            "/api/orders/1",
            Some(bearer(&"x".repeat(9000))),
            401,
            16,
            "invalid_token",
            Some("Bearer realm=\"citadel\", error=\"invalid_token\""),
        ),
        (
            "GET",
            "/api/admin/users",
            Some(bearer(&good)),
            403,
            7,
            "insufficient_scope",
            Some("Bearer realm=\"citadel\", error=\"insufficient_scope\""),
        ),
        (
            "GET",
            "/api/admin/users",
            Some(bearer(&admin)),
            200,
            0,
            "",
            None,
        ),
        (
            "GET",
            "/api/admin/users",
            Some(bearer(&partner_admin)),
            403,
            7,
            "forbidden",
            None,
        ),
        (
            "GET",
            "/api/tenants/globex/x",
            Some(bearer(&admin)),
            403,
            7,
            "forbidden",
            None,
        ),
        (
            "GET",
            "/nowhere",
            Some(bearer(&admin)),
            403,
            7,
            "forbidden",
            None,
        ),
        ("GET", "/nowhere", None, 403, 7, "forbidden", None),
        (
            "DELETE",
            "/api/orders/1",
            Some(bearer(&admin)),
            403,
            7,
            "forbidden",
            None,
        ),
        (
            "GET",
            "/api/orders/%2e%2e/admin",
            Some(bearer(&admin)),
            400,
            3,
            "invalid_request",
            None,
        ),
        (
            "GET",
            "/api//orders",
            Some(bearer(&admin)),
            400,
            3,
            "invalid_request",
            None,
        ),
        (
            "GET",
            "/api/orders%2F1",
            Some(bearer(&admin)),
            400,
            3,
            "invalid_request",
            None,
        ),
        (
            "GET",
            "/api/orders/1",
            Some(format!("{},{}", bearer(&good), bearer(&good))),
            400,
            3,
            "invalid_request",
            None,
        ),
        (
            "GET",
            "/api/orders/1",
            Some(bearer(&down)),
            503,
            14,
            "temporarily_unavailable",
            None,
        ),
    ];
    for (method, path, auth, status, code, error, www) in cases {
        let headers: Vec<(&str, &str)> = auth
            .as_deref()
            .map(|a| ("authorization", a))
            .into_iter()
            .collect();
        let resp = s.server.check(method, path, &headers).await;
        let what = format!("{method} {path} {:.30?}", auth);
        assert_eq!(status_of(&resp), status, "{what}: {resp:?}");
        assert_eq!(resp.status.as_ref().unwrap().code, code, "{what}");
        if status != 200 {
            let body = body_of(&resp);
            assert_eq!(body["error"], error, "{what}");
            let reason = body["reason"].as_str().unwrap();
            assert!(
                !reason.is_empty() && !reason.contains("eyJ"),
                "{what}: {reason}"
            );
            assert_eq!(
                header_of(&resp, "content-type").as_deref(),
                Some("application/json"),
                "{what}"
            );
        }
        let got = header_of(&resp, "www-authenticate");
        match www {
            Some(prefix) => assert!(
                got.as_deref().is_some_and(|g| g.starts_with(prefix)),
                "{what}: {got:?}"
            ),
            None => assert_eq!(got, None, "{what}"),
        }
        if status == 503 {
            assert!(
                header_of(&resp, "retry-after").is_some_and(|v| v.parse::<u64>().unwrap() >= 1),
                "{what}"
            );
        }
    }
    s.server.stop().await;
}

/// Envoy with `encode_raw_headers` sends `header_map` with one entry per header line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_map_requests_and_repeated_authorization() {
    let s = setup().await;
    let token = s
        .key
        .mint(&claims(&s.iam.issuer(), "alice", "acme", &["reader"]));
    let mut client = AuthorizationClient::connect(format!("http://{}", s.server.grpc))
        .await
        .unwrap();
    let request = |values: Vec<&str>| {
        let mut req: CheckRequest =
            citadel_authz::cli::client::check_request("GET", "/api/orders/1", &[]);
        let http = req
            .attributes
            .as_mut()
            .unwrap()
            .request
            .as_mut()
            .unwrap()
            .http
            .as_mut()
            .unwrap();
        http.header_map = Some(HeaderMap {
            headers: values
                .into_iter()
                .map(|v| HeaderValue {
                    key: "authorization".into(),
                    raw_value: v.as_bytes().to_vec(),
                    ..Default::default()
                })
                .chain(std::iter::once(HeaderValue {
                    key: ":path".into(),
                    raw_value: b"/api/orders/1".to_vec(),
                    ..Default::default()
                }))
                .collect(),
        });
        req
    };
    let one = client
        .check(request(vec![&bearer(&token)]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status_of(&one), 200);
    let two = client
        .check(request(vec![&bearer(&token), &bearer(&token)]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status_of(&two), 400);
    let none = client.check(request(vec![])).await.unwrap().into_inner();
    assert_eq!(status_of(&none), 401);
    // A CheckRequest without HTTP attributes is a malformed request, still answered with Ok.
    let empty = client
        .check(CheckRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status_of(&empty), 400);
    s.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_health_reports_serving_once_ready() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let k = key(Algorithm::ES256, "k");
    let jwks = JwksServer::start(&[&k]).await;
    jwks.set_mode(Mode::Fail);
    let server = InProcess::start(&config_yaml(&jwks, "  refresh_min: 200ms")).await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", server.grpc))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let health = HealthClient::new(channel);
    let status = |h: &mut HealthClient<tonic::transport::Channel>, svc: &str| {
        let mut h = h.clone();
        let svc = svc.to_owned();
        async move {
            h.check(HealthCheckRequest { service: svc })
                .await
                .map(|r| r.into_inner().status)
                .unwrap_or(-1)
        }
    };
    // Cold start with a failing JWKS: not serving, /readyz 503.
    eventually(Duration::from_secs(5), "NOT_SERVING", || {
        let mut h = health.clone();
        async move { (status(&mut h, "").await == ServingStatus::NotServing as i32).then_some(()) }
    })
    .await;
    let ready = reqwest::get(format!("http://{}/readyz", server.http))
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    assert!(ready.text().await.unwrap().contains("iam"));
    jwks.set_mode(Mode::Serve);
    eventually(Duration::from_secs(10), "SERVING", || {
        let mut h = health.clone();
        async move {
            let s = status(&mut h, "envoy.service.auth.v3.Authorization").await;
            (s == ServingStatus::Serving as i32).then_some(())
        }
    })
    .await;
    server.wait_ready().await;
    assert_eq!(
        reqwest::get(format!("http://{}/healthz", server.http))
            .await
            .unwrap()
            .status(),
        200
    );
    server.stop().await;
}

/// The policy of the issue's report: a method-specific rule before a broader one for the same
/// paths, and a public prefix.
const METHOD_POLICY: &str = r#"
  rules:
    - name: orders-delete
      paths: [/api/orders/**]
      methods: [DELETE]
      roles_all: [admin]
    - name: orders
      paths: [/api/orders/**]
      roles_any: [reader]
    - name: public
      paths: [/api/public/**, /files/**]
      public: true
"#;

async fn start_with_policy(
    policy: &str,
) -> (
    InProcess,
    JwksServer,
    citadel_authz::core::signer::SigningKey,
) {
    let key = key(Algorithm::ES256, "k1");
    let jwks = JwksServer::start(&[&key]).await;
    let yaml = format!(
        "listen: {{ grpc: 127.0.0.1:0, http: 127.0.0.1:0 }}\nissuers:\n  - name: iam\n    issuer: {}\n    jwks_uri: {}\n    audiences: [api]\npolicy:\n{policy}",
        jwks.issuer(),
        jwks.jwks_uri()
    );
    let server = InProcess::start(&yaml).await;
    server.wait_ready().await;
    (server, jwks, key)
}

/// A reader's `delete` once matched the method-less rule (allowed) while an upstream that
/// upper-cases methods ran a DELETE. Now every adapter refuses it before matching: 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_method_that_is_not_upper_case_is_refused_by_every_adapter() {
    let (server, jwks, key) = start_with_policy(METHOD_POLICY).await;
    let reader = key.mint(&claims(&jwks.issuer(), "bob", "acme", &["reader"]));
    let auth = bearer(&reader);
    let headers = [("authorization", auth.as_str())];

    // gRPC: the upper-case forms are judged; anything else is invalid_request.
    let resp = server.check("DELETE", "/api/orders/1", &headers).await;
    assert_eq!(status_of(&resp), 403, "{resp:?}");
    assert_eq!(
        status_of(&server.check("GET", "/api/orders/1", &headers).await),
        200
    );
    for method in ["delete", "Delete", "Get", "", "DE LETE", " DELETE"] {
        let resp = server.check(method, "/api/orders/1", &headers).await;
        assert_eq!(status_of(&resp), 400, "{method:?}: {resp:?}");
        assert_eq!(resp.status.as_ref().unwrap().code, 3, "{method:?}");
        assert_eq!(body_of(&resp)["error"], "invalid_request", "{method:?}");
    }
    // Also on a public route: the method is refused before any rule is looked at.
    assert_eq!(status_of(&server.check("get", "/files/a", &[]).await), 400);

    // Forward-auth, both header pairs and the path-prefix form.
    let http = reqwest::Client::new();
    let url = format!("http://{}/api/iam/check-access", server.http);
    for (m, u) in [
        ("X-Forwarded-Method", "X-Forwarded-Uri"),
        ("X-Original-Method", "X-Original-URI"),
    ] {
        for (method, status) in [("delete", 400), ("DELETE", 403), ("GET", 200)] {
            let r = http
                .get(&url)
                .header(m, method)
                .header(u, "/api/orders/1")
                .header("authorization", &auth)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status().as_u16(), status, "{m}: {method}");
        }
    }
    for (method, status) in [("delete", 400), ("DELETE", 403)] {
        let r = http
            .request(
                reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
                format!("{url}/api/orders/1"),
            )
            .header("authorization", &auth)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), status, "prefix form: {method}");
        if status == 400 {
            let body: serde_json::Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
            assert_eq!(body["error"], "invalid_request");
            assert_eq!(
                body["reason"],
                "method 'delete' is not an upper-case HTTP token"
            );
        }
    }
    server.stop().await;
}

/// `%252e%252e` is `%2e%2e` once decoded: a component that decodes again sees `..`. Refused with
/// 400 before matching (it used to match the public prefix); a lone `%25` is a literal `%`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_double_encoded_path_is_refused() {
    let (server, _jwks, _key) = start_with_policy(METHOD_POLICY).await;
    for path in [
        "/api/public/%252e%252e/admin",
        "/api/public/%25%32%65%25%32%65/admin",
        "/api/public/%2525",
        "/api/public/%252F",
    ] {
        let resp = server.check("GET", path, &[]).await;
        assert_eq!(status_of(&resp), 400, "{path}: {resp:?}");
        assert_eq!(body_of(&resp)["error"], "invalid_request", "{path}");
    }
    assert_eq!(
        status_of(&server.check("GET", "/files/100%25", &[]).await),
        200
    );
    server.stop().await;
}

/// Values an upstream could read as a list are refused, so it never sees other values than the
/// policy judged: 401 invalid_token naming the claim.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_values_that_would_read_as_lists_make_the_token_invalid() {
    let s = setup().await;
    let iss = s.iam.issuer();
    let mut cases = Vec::new();
    cases.push((
        "tenant_id",
        claims(&iss, "alice", "acme,globex", &["member"]),
    ));
    cases.push(("user_id", claims(&iss, "alice,root", "acme", &["member"])));
    for role in [
        "member admin",
        "member,admin",
        "member;admin",
        "member\"",
        "a\\b",
    ] {
        cases.push(("roles", claims(&iss, "alice", "acme", &[role])));
    }
    for (claim, c) in cases {
        let resp = s
            .server
            .check_token("/api/tenants/acme/x", &s.key.mint(&c))
            .await;
        assert_eq!(status_of(&resp), 401, "{c}: {resp:?}");
        assert_eq!(body_of(&resp)["error"], "invalid_token", "{c}");
        assert_eq!(
            body_of(&resp)["reason"],
            format!("claim {claim} cannot be sent in a header"),
            "{c}"
        );
    }
    // A space-separated roles string is split first: each role is clean.
    let mut c = claims(&iss, "alice", "acme", &[]);
    c["roles"] = json!("member admin");
    let resp = s
        .server
        .check_token("/api/tenants/acme/x", &s.key.mint(&c))
        .await;
    assert_eq!(status_of(&resp), 200, "{resp:?}");
    assert_eq!(
        header_of(&resp, "x-user-roles").as_deref(),
        Some("member,admin")
    );
    s.server.stop().await;
}

/// `Bearer<TAB>token` and friends are a malformed Bearer value (401 with `error="invalid_token"`),
/// over gRPC and forward-auth alike; only another scheme is "no credentials".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_with_other_whitespace_is_an_invalid_token_not_missing_credentials() {
    let s = setup().await;
    let token = s
        .key
        .mint(&claims(&s.iam.issuer(), "alice", "acme", &["reader"]));
    let invalid = "Bearer realm=\"citadel\", error=\"invalid_token\", error_description=\"malformed Bearer value";
    let http = reqwest::Client::new();
    let url = format!("http://{}/api/iam/check-access/api/orders/1", s.server.http);
    for value in [
        format!("Bearer\t{token}"),
        format!("bearer\t{token}"),
        format!("Bearer \t{token}"),
        "Bearer".to_owned(),
        "Bearer  ".to_owned(),
    ] {
        let resp = s
            .server
            .check("GET", "/api/orders/1", &[("authorization", &value)])
            .await;
        // Never the whole token in a failure message.
        let what = format!("{:?}", &value[..value.len().min(12)]);
        assert_eq!(status_of(&resp), 401, "{what}");
        let www = header_of(&resp, "www-authenticate").unwrap_or_default();
        assert!(www.starts_with(invalid), "{what}: {www}");
        let r = http
            .get(&url)
            .header("authorization", &value)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 401, "{what}");
        let www = r.headers()["www-authenticate"].to_str().unwrap().to_owned();
        assert!(www.starts_with(invalid), "forward-auth {what}: {www}");
    }
    for value in [format!("bEaReR {token}"), format!("Bearer   {token}  ")] {
        let resp = s
            .server
            .check("GET", "/api/orders/1", &[("authorization", &value)])
            .await;
        assert_eq!(status_of(&resp), 200, "{:?}", &value[..12]);
    }
    for value in ["Basic\tYTpi", "Token abc"] {
        let resp = s
            .server
            .check("GET", "/api/orders/1", &[("authorization", value)])
            .await;
        assert_eq!(status_of(&resp), 401, "{value}");
        assert_eq!(
            header_of(&resp, "www-authenticate").as_deref(),
            Some("Bearer realm=\"citadel\"")
        );
    }
    s.server.stop().await;
}

/// A refused iss, aud, typ or kid is named (quoted, bounded) in the client's reason, so the
/// classic trailing-slash mistake is visible; what the server accepts is not told to clients.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_name_the_tokens_own_value() {
    let s = setup().await;
    let iss = s.iam.issuer();
    let slash = s
        .key
        .mint(&claims(&format!("{iss}/"), "alice", "acme", &["reader"]));
    let mut aud = claims(&iss, "alice", "acme", &["reader"]);
    aud["aud"] = json!(["web", "api/"]);
    let other_kid =
        key(Algorithm::ES256, "rotated-2").mint(&claims(&iss, "alice", "acme", &["reader"]));
    let long_iss = format!("https://{}\".example.com", "x".repeat(100));
    let long = s.key.mint(&claims(&long_iss, "alice", "acme", &["reader"]));
    let cases = [
        (slash, format!("token issuer '{iss}/' is not accepted")),
        (
            s.key.mint(&aud),
            "token audience ['web', 'api/'] is not accepted".to_owned(),
        ),
        (
            other_kid,
            "no key with the token's kid 'rotated-2'".to_owned(),
        ),
        (
            long,
            format!("token issuer 'https://{}…' is not accepted", "x".repeat(56)),
        ),
    ];
    for (token, reason) in cases {
        let resp = s.server.check_token("/api/orders/1", &token).await;
        assert_eq!(status_of(&resp), 401, "{reason}");
        assert_eq!(body_of(&resp)["reason"], reason.as_str());
        let www = header_of(&resp, "www-authenticate").unwrap();
        let description = reason.replace('…', "...");
        assert!(
            www.ends_with(&format!("error_description=\"{description}\"")),
            "{www}"
        );
        assert!(!www.contains("accepted:"), "{www}");
    }
    s.server.stop().await;
}

/// Every issuer without a key set is named by /readyz, not only the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_names_every_unready_issuer() {
    let key = key(Algorithm::ES256, "k1");
    let jwks = JwksServer::start(&[&key]).await;
    let (down1, down2) = (free_port(), free_port());
    let yaml = format!(
        r#"
listen: {{ grpc: 127.0.0.1:0, http: 127.0.0.1:0 }}
issuers:
  - name: down-a
    issuer: https://a.example.com
    jwks_uri: http://127.0.0.1:{down1}/jwks
    audiences: [api]
  - name: iam
    issuer: {iss}
    jwks_uri: {uri}
    audiences: [api]
  - name: down-b
    issuer: https://b.example.com
    jwks_uri: http://127.0.0.1:{down2}/jwks
    audiences: [api]
jwks: {{ fetch_timeout: 500ms }}
policy:
{POLICY}
"#,
        iss = jwks.issuer(),
        uri = jwks.jwks_uri(),
    );
    let server = InProcess::start(&yaml).await;
    let token = key.mint(&claims(&jwks.issuer(), "alice", "acme", &["reader"]));
    server.wait_status("/api/orders/1", &token, 200).await;
    let r = reqwest::get(format!("http://{}/readyz", server.http))
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let body: serde_json::Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    assert_eq!(body["status"], "not_ready");
    assert_eq!(body["issuers"], json!(["down-a", "down-b"]), "{body}");
    assert_eq!(
        body["reason"], "issuers down-a, down-b have no usable key set yet",
        "{body}"
    );
    server.stop().await;
}
