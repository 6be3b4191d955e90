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
    key: citadel_authz::signer::SigningKey,
    partner_key: citadel_authz::signer::SigningKey,
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
    let (iam_c, partner_c) = (iam.clone(), partner.clone());
    eventually(Duration::from_secs(10), "both JWKS fetched", || {
        let (a, b) = (iam_c.fetches(), partner_c.fetches());
        async move { (a > 0 && b > 0).then_some(()) }
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

fn key_rs() -> citadel_authz::signer::SigningKey {
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
            citadel_authz::client::check_request("GET", "/api/orders/1", &[]);
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
