//! SPEC §5 against a real HTTP JWKS server with fetch counters: cold start, Cache-Control
//! lifetime and background refresh, rotation, single flight and cooldown, stale-if-error,
//! max_stale, key removal, hangs, discovery.

use std::time::Duration;

use jsonwebtoken::Algorithm;

use crate::support::*;

async fn start(jwks: &JwksServer, timing: &str) -> InProcess {
    InProcess::start(&config_yaml(jwks, timing)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_start_is_not_ready_then_ready_and_other_issuers_keep_working() {
    let k = key(Algorithm::ES256, "k1");
    let jwks = JwksServer::start(&[&k]).await;
    jwks.set_mode(Mode::Fail);
    let server = start(&jwks, "  refresh_min: 200ms").await;
    let token = k.mint(&claims(&jwks.issuer(), "alice", "acme", &["reader"]));
    // Listening at once, not ready, and checks for the issuer are 503 (never a hang, never an allow).
    let readyz = reqwest::get(format!("http://{}/readyz", server.http))
        .await
        .unwrap();
    assert_eq!(readyz.status(), 503);
    assert_eq!(
        status_of(&server.check_token("/api/orders/1", &token).await),
        503
    );
    // Public routes need no keys.
    assert_eq!(status_of(&server.check("GET", "/healthz", &[]).await), 200);
    // Retries with backoff until the issuer answers.
    jwks.set_mode(Mode::Serve);
    server.wait_ready().await;
    assert_eq!(
        status_of(&server.check_token("/api/orders/1", &token).await),
        200
    );
    assert!(jwks.fetches() >= 2);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_age_drives_background_refresh() {
    let k = key(Algorithm::ES256, "k1");
    // Long max-age: one fetch, no more.
    let steady = JwksServer::start(&[&k]).await;
    steady.set_max_age(Some(3600));
    let a = start(&steady, "  refresh_min: 100ms").await;
    a.wait_ready().await;
    // Short max-age (1s, within [refresh_min, refresh_max]): refreshed again and again.
    let busy = JwksServer::start(&[&k]).await;
    busy.set_max_age(Some(1));
    let b = start(&busy, "  refresh_min: 100ms").await;
    b.wait_ready().await;
    let busy_c = busy.clone();
    eventually(
        Duration::from_secs(10),
        "three fetches at max-age=1",
        || {
            let n = busy_c.fetches();
            async move { (n >= 3).then_some(()) }
        },
    )
    .await;
    assert_eq!(
        steady.fetches(),
        1,
        "a set with a long max-age is not refetched"
    );
    // max-age below refresh_min is clamped up: max-age=0 with refresh_min 30s → no storm.
    let clamped = JwksServer::start(&[&k]).await;
    clamped.set_max_age(Some(0));
    let c = start(&clamped, "  refresh_min: 30s").await;
    c.wait_ready().await;
    let token = k.mint(&claims(&clamped.issuer(), "a", "acme", &["reader"]));
    for _ in 0..20 {
        assert_eq!(
            status_of(&c.check_token("/api/orders/1", &token).await),
            200
        );
    }
    assert_eq!(clamped.fetches(), 1);
    a.stop().await;
    b.stop().await;
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_unknown_kid_refetches_once_and_accepts_the_new_key() {
    let old = key(Algorithm::ES256, "old");
    let jwks = JwksServer::start(&[&old]).await;
    let server = start(&jwks, "  refresh_min: 100ms").await;
    server.wait_ready().await;
    assert_eq!(jwks.fetches(), 1);
    let new = key(Algorithm::EdDSA, "new");
    jwks.set_keys(&[&old, &new]);
    let token = new.mint(&claims(&jwks.issuer(), "alice", "acme", &["reader"]));
    assert_eq!(
        status_of(&server.check_token("/api/orders/1", &token).await),
        200
    );
    assert_eq!(jwks.fetches(), 2, "exactly one refetch for the new kid");
    // Known now: no further fetch.
    assert_eq!(
        status_of(&server.check_token("/api/orders/1", &token).await),
        200
    );
    assert_eq!(jwks.fetches(), 2);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_kid_storm_is_single_flight_with_cooldown() {
    let k = key(Algorithm::ES256, "k1");
    let jwks = JwksServer::start(&[&k]).await;
    let server = start(&jwks, "  refresh_min: 30s").await;
    server.wait_ready().await;
    let before = jwks.fetches();
    // 200 concurrent checks, each with a different unknown kid.
    let mut tasks = Vec::new();
    for i in 0..200 {
        let forger = key(Algorithm::ES256, &format!("unknown-{i}"));
        let token = forger.mint(&claims(&jwks.issuer(), "eve", "acme", &["admin"]));
        let grpc = server.grpc;
        tasks.push(tokio::spawn(async move {
            let req = citadel_authz::cli::client::check_request(
                "GET",
                "/api/orders/1",
                &[("authorization".into(), format!("Bearer {token}"))],
            );
            status_of(
                &citadel_authz::cli::client::check(format!("http://{grpc}"), req)
                    .await
                    .unwrap(),
            )
        }));
    }
    for t in tasks {
        assert_eq!(
            t.await.unwrap(),
            401,
            "unknown kid after a successful refetch is invalid_token"
        );
    }
    assert_eq!(
        jwks.fetches() - before,
        1,
        "at most one fetch per refresh_min per issuer"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_kid_while_refetch_fails_is_503_known_keys_keep_working() {
    let k = key(Algorithm::ES256, "k1");
    let jwks = JwksServer::start(&[&k]).await;
    jwks.set_max_age(Some(1));
    let server = start(
        &jwks,
        "  refresh_min: 200ms\n  refresh_max: 1s\n  max_stale: 1h",
    )
    .await;
    server.wait_ready().await;
    jwks.set_mode(Mode::Fail);
    let known = k.mint(&claims(&jwks.issuer(), "alice", "acme", &["reader"]));
    let unknown =
        key(Algorithm::ES256, "k2").mint(&claims(&jwks.issuer(), "alice", "acme", &["reader"]));
    let resp = server.check_token("/api/orders/1", &unknown).await;
    assert_eq!(status_of(&resp), 503);
    assert!(header_of(&resp, "retry-after").is_some());
    // Stale-if-error: well past the 1s lifetime, the last good set still verifies.
    let failures_before = jwks.fetches();
    let jwks_c = jwks.clone();
    eventually(
        Duration::from_secs(10),
        "background refresh failing repeatedly",
        || {
            let n = jwks_c.fetches();
            async move { (n >= failures_before + 3).then_some(()) }
        },
    )
    .await;
    assert_eq!(
        status_of(&server.check_token("/api/orders/1", &known).await),
        200
    );
    server.wait_ready().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_stale_checks_are_503_and_not_ready() {
    let k = key(Algorithm::ES256, "k1");
    let jwks = JwksServer::start(&[&k]).await;
    jwks.set_max_age(Some(1));
    let server = start(
        &jwks,
        "  refresh_min: 200ms\n  refresh_max: 1s\n  max_stale: 1s",
    )
    .await;
    server.wait_ready().await;
    let token = k.mint(&claims(&jwks.issuer(), "alice", "acme", &["reader"]));
    assert_eq!(
        status_of(&server.check_token("/api/orders/1", &token).await),
        200
    );
    jwks.set_mode(Mode::Fail);
    server.wait_status("/api/orders/1", &token, 503).await;
    let readyz = reqwest::get(format!("http://{}/readyz", server.http))
        .await
        .unwrap();
    assert_eq!(readyz.status(), 503);
    // The issuer recovers: keys come back without a restart.
    jwks.set_mode(Mode::Serve);
    server.wait_ready().await;
    assert_eq!(
        status_of(&server.check_token("/api/orders/1", &token).await),
        200
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_key_stops_being_accepted_after_the_refresh_that_removes_it() {
    let a = key(Algorithm::ES256, "a");
    let b = key(Algorithm::RS256, "b");
    let jwks = JwksServer::start(&[&a, &b]).await;
    jwks.set_max_age(Some(1));
    let server = start(&jwks, "  refresh_min: 200ms\n  refresh_max: 1s").await;
    server.wait_ready().await;
    let token_a = a.mint(&claims(&jwks.issuer(), "alice", "acme", &["reader"]));
    let token_b = b.mint(&claims(&jwks.issuer(), "bob", "acme", &["reader"]));
    assert_eq!(
        status_of(&server.check_token("/api/orders/1", &token_a).await),
        200
    );
    jwks.set_keys(&[&b]);
    server.wait_status("/api/orders/1", &token_a, 401).await;
    assert_eq!(
        status_of(&server.check_token("/api/orders/1", &token_b).await),
        200
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hanging_jwks_times_out_and_checks_do_not_hang() {
    let k = key(Algorithm::ES256, "k1");
    let jwks = JwksServer::start(&[&k]).await;
    jwks.set_mode(Mode::Hang);
    let server = start(&jwks, "  refresh_min: 200ms\n  fetch_timeout: 300ms").await;
    let token = k.mint(&claims(&jwks.issuer(), "alice", "acme", &["reader"]));
    let resp = tokio::time::timeout(
        Duration::from_secs(5),
        server.check_token("/api/orders/1", &token),
    )
    .await
    .expect("a check must not wait on a hanging JWKS");
    assert_eq!(status_of(&resp), 503);
    let jwks_c = jwks.clone();
    eventually(
        Duration::from_secs(10),
        "fetch retried after timeout",
        || {
            let n = jwks_c.fetches();
            async move { (n >= 2).then_some(()) }
        },
    )
    .await;
    jwks.set_mode(Mode::Serve);
    server.wait_ready().await;
    assert_eq!(
        status_of(&server.check_token("/api/orders/1", &token).await),
        200
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_finds_the_jwks_and_a_refused_discovered_url_is_not_fetched() {
    let k = key(Algorithm::EdDSA, "k1");
    let jwks = JwksServer::start(&[&k]).await;
    let yaml = |iss: &str| {
        format!(
            "listen: {{ grpc: 127.0.0.1:0, http: 127.0.0.1:0 }}\nissuers:\n  - name: iam\n    issuer: {iss}\n    discovery: true\n    audiences: [api]\njwks: {{ refresh_min: 200ms }}\npolicy:\n{POLICY}"
        )
    };
    let server = InProcess::start(&yaml(&jwks.issuer())).await;
    server.wait_ready().await;
    assert!(jwks.discoveries() >= 1);
    let token = k.mint(&claims(&jwks.issuer(), "alice", "acme", &["reader"]));
    assert_eq!(
        status_of(&server.check_token("/api/orders/1", &token).await),
        200
    );
    server.stop().await;

    // A discovered jwks_uri that breaks the URL rule is refused at fetch time: never fetched,
    // issuer not ready.
    let bad = JwksServer::start(&[&k]).await;
    bad.set_discovered_jwks_uri(&format!("ftp://{}/jwks", bad.addr));
    let server = InProcess::start(&yaml(&bad.issuer())).await;
    let bad_c = bad.clone();
    eventually(Duration::from_secs(5), "discovery retried", || {
        let n = bad_c.discoveries();
        async move { (n >= 2).then_some(()) }
    })
    .await;
    assert_eq!(bad.fetches(), 0);
    let readyz = reqwest::get(format!("http://{}/readyz", server.http))
        .await
        .unwrap();
    assert_eq!(readyz.status(), 503);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weak_symmetric_and_encryption_keys_are_ignored() {
    use base64::Engine;
    let good = key(Algorithm::ES256, "good");
    let jwks = JwksServer::start(&[]).await;
    let mut enc = key(Algorithm::ES256, "enc").jwk();
    enc["use"] = "enc".into();
    let weak_n = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([0xc5u8; 128]);
    jwks.set_raw_keys(vec![
        serde_json::json!({"kty": "oct", "kid": "hmac", "k": "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0"}),
        serde_json::json!({"kty": "RSA", "kid": "weak", "n": weak_n, "e": "AQAB"}),
        enc,
        good.jwk(),
    ]);
    let server = start(&jwks, "  refresh_min: 30s").await;
    server.wait_ready().await;
    let ok = good.mint(&claims(&jwks.issuer(), "a", "acme", &["reader"]));
    assert_eq!(
        status_of(&server.check_token("/api/orders/1", &ok).await),
        200
    );
    // An HS256 token "signed" with the oct key's secret is refused (alg allowlist + key type).
    let header = r#"{"alg":"HS256","kid":"hmac"}"#;
    let payload = claims(&jwks.issuer(), "a", "acme", &["admin"]).to_string();
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let forged = format!(
        "{}.{}.{}",
        b64.encode(header),
        b64.encode(&payload),
        b64.encode([0u8; 32])
    );
    let resp = server.check_token("/api/orders/1", &forged).await;
    assert_eq!(status_of(&resp), 401);
    assert_eq!(
        jwks.fetches(),
        1,
        "an alg that can never pass does not trigger a refetch"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_refresh_follows_a_set_installed_by_an_unknown_kid_refetch() {
    let a = key(Algorithm::ES256, "a");
    let b = key(Algorithm::ES256, "b");
    let jwks = JwksServer::start(&[&a]).await;
    // The first set lives long: the refresher's own fetch alone would wait ~2 minutes.
    jwks.set_max_age(Some(120));
    let server = start(&jwks, "  refresh_min: 200ms\n  refresh_max: 10m").await;
    server.wait_ready().await;
    let token_a = a.mint(&claims(&jwks.issuer(), "alice", "acme", &["reader"]));
    let token_b = b.mint(&claims(&jwks.issuer(), "bob", "acme", &["reader"]));
    // Rotation with a short max-age: the unknown-kid refetch installs a set that lives 1 s.
    jwks.set_keys(&[&a, &b]);
    jwks.set_max_age(Some(1));
    assert_eq!(
        status_of(&server.check_token("/api/orders/1", &token_b).await),
        200
    );
    assert_eq!(
        status_of(&server.check_token("/api/orders/1", &token_a).await),
        200
    );
    // Key a is removed at the IdP: refused within refresh_min + the latest max-age (1.2 s),
    // with slack for a loaded machine, far below the 2 minutes of the first set.
    jwks.set_keys(&[&b]);
    let removed = std::time::Instant::now();
    server.wait_status("/api/orders/1", &token_a, 401).await;
    assert!(
        removed.elapsed() < Duration::from_secs(5),
        "removed key accepted for {:?}",
        removed.elapsed()
    );
    assert_eq!(
        status_of(&server.check_token("/api/orders/1", &token_b).await),
        200
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_issuer_recovers_within_refresh_min_of_its_idp_coming_back() {
    let a = key(Algorithm::ES256, "a");
    let b = key(Algorithm::ES256, "b");
    let jwks = JwksServer::start(&[&a]).await;
    jwks.set_max_age(Some(120));
    // max_stale below refresh_max: a set installed with a short max-age goes stale long before
    // the refresher's first timer would fire.
    let server = start(
        &jwks,
        "  refresh_min: 300ms\n  refresh_max: 10m\n  max_stale: 500ms",
    )
    .await;
    server.wait_ready().await;
    jwks.set_keys(&[&a, &b]);
    jwks.set_max_age(Some(1));
    let token_b = b.mint(&claims(&jwks.issuer(), "bob", "acme", &["reader"]));
    assert_eq!(
        status_of(&server.check_token("/api/orders/1", &token_b).await),
        200
    );
    // The IdP goes down: past max-age + max_stale the issuer is unavailable.
    jwks.set_mode(Mode::Fail);
    server.wait_status("/api/orders/1", &token_b, 503).await;
    let failed = jwks.fetches();
    // While unavailable it keeps retrying (backoff at most refresh_min).
    let jwks_c = jwks.clone();
    eventually(Duration::from_secs(5), "retries while stale", || {
        let n = jwks_c.fetches();
        async move { (n >= failed + 2).then_some(()) }
    })
    .await;
    // The IdP comes back: ready again within about refresh_min.
    jwks.set_mode(Mode::Serve);
    let back = std::time::Instant::now();
    server.wait_ready().await;
    assert!(
        back.elapsed() < Duration::from_secs(3),
        "recovered only after {:?}",
        back.elapsed()
    );
    assert_eq!(
        status_of(&server.check_token("/api/orders/1", &token_b).await),
        200
    );
    server.stop().await;
}

/// The ROCA-form RSA key of tests/vectors (PKCS#8), for signing.
fn roca_key_pair() -> aws_lc_rs::rsa::KeyPair {
    use base64::Engine;
    let pem = include_str!("../vectors/roca_rsa2048.pem");
    let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    aws_lc_rs::rsa::KeyPair::from_pkcs8(&der).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_order_ed25519_and_roca_rsa_keys_are_ignored() {
    use aws_lc_rs::signature::KeyPair;
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let good = key(Algorithm::ES256, "good");
    let roca = roca_key_pair();
    let modulus = roca
        .public_key()
        .modulus()
        .big_endian_without_leading_zero()
        .to_vec();
    let mut identity = [0u8; 32];
    identity[0] = 1;
    let jwks = JwksServer::start(&[]).await;
    jwks.set_raw_keys(vec![
        serde_json::json!({"kty": "OKP", "crv": "Ed25519", "kid": "identity", "x": b64.encode(identity)}),
        serde_json::json!({"kty": "RSA", "kid": "roca", "n": b64.encode(&modulus), "e": "AQAB"}),
        good.jwk(),
    ]);
    let server = start(&jwks, "  refresh_min: 30s").await;
    server.wait_ready().await;
    let payload = claims(&jwks.issuer(), "eve", "acme", &["reader"]).to_string();
    // Against the identity point, R = identity and S = 0 "verify" any message.
    let header = r#"{"alg":"EdDSA","kid":"identity"}"#;
    let mut sig = [0u8; 64];
    sig[0] = 1;
    let forged = format!(
        "{}.{}.{}",
        b64.encode(header),
        b64.encode(&payload),
        b64.encode(sig)
    );
    assert_eq!(
        status_of(&server.check_token("/api/orders/1", &forged).await),
        401
    );
    // A token really signed with the ROCA key (whose private key an attacker can recover).
    let header = r#"{"alg":"RS256","kid":"roca"}"#;
    let input = format!("{}.{}", b64.encode(header), b64.encode(&payload));
    let mut sig = vec![0u8; roca.public_modulus_len()];
    roca.sign(
        &aws_lc_rs::signature::RSA_PKCS1_SHA256,
        &aws_lc_rs::rand::SystemRandom::new(),
        input.as_bytes(),
        &mut sig,
    )
    .unwrap();
    let roca_token = format!("{input}.{}", b64.encode(&sig));
    assert_eq!(
        status_of(&server.check_token("/api/orders/1", &roca_token).await),
        401
    );
    let ok = good.mint(&claims(&jwks.issuer(), "a", "acme", &["reader"]));
    assert_eq!(
        status_of(&server.check_token("/api/orders/1", &ok).await),
        200
    );
    server.stop().await;
}
