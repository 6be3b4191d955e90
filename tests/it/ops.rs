//! Operating it: metrics after a known sequence, hot reload (file change, SIGHUP, invalid
//! versions refused, key sets kept, no check lost during a burst), graceful drain on SIGTERM.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use jsonwebtoken::Algorithm;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_a_known_sequence() {
    let k = key(Algorithm::ES256, "k1");
    let jwks = JwksServer::start(&[&k]).await;
    let server = InProcess::start(&config_yaml(&jwks, "  refresh_min: 30s")).await;
    server.wait_ready().await;
    let reader = k.mint(&claims(
        &jwks.issuer(),
        "alice-secret-sub",
        "acme",
        &["reader"],
    ));
    for _ in 0..3 {
        assert_eq!(
            status_of(&server.check_token("/api/orders/1", &reader).await),
            200
        );
    }
    assert_eq!(
        status_of(&server.check_token("/api/admin/x", &reader).await),
        403
    );
    assert_eq!(
        status_of(&server.check("GET", "/api/orders/1", &[]).await),
        401
    );
    assert_eq!(status_of(&server.check("GET", "/a//b", &[]).await), 400);
    assert_eq!(status_of(&server.check("GET", "/healthz", &[]).await), 200);

    let m = server.metrics().await;
    let d = "citadel_authz_decisions_total";
    assert_eq!(
        sample(&m, d, &[r#"outcome="allow""#, r#"rule="orders-read""#]),
        3.0,
        "{m}"
    );
    assert_eq!(
        sample(&m, d, &[r#"outcome="allow""#, r#"rule="health""#]),
        1.0
    );
    assert_eq!(
        sample(
            &m,
            d,
            &[r#"outcome="insufficient_scope""#, r#"rule="admin""#]
        ),
        1.0
    );
    assert_eq!(
        sample(
            &m,
            d,
            &[r#"outcome="unauthorized""#, r#"reason="no_credentials""#]
        ),
        1.0
    );
    assert_eq!(
        sample(&m, d, &[r#"outcome="invalid_request""#, r#"reason="path""#]),
        1.0
    );
    assert_eq!(sample(&m, d, &[r#"protocol="grpc""#]), 7.0);
    assert_eq!(
        sample(
            &m,
            "citadel_authz_check_duration_seconds_count",
            &[r#"protocol="grpc""#]
        ),
        7.0
    );
    // Every check took less than a second: the +Inf bucket equals the 1 s bucket.
    assert_eq!(
        sample(
            &m,
            "citadel_authz_check_duration_seconds_bucket",
            &[r#"le="1.0""#]
        ),
        7.0
    );
    assert_eq!(
        sample(
            &m,
            "citadel_authz_jwks_fetches_total",
            &[r#"issuer="iam""#, r#"outcome="ok""#]
        ),
        1.0
    );
    assert_eq!(
        sample(&m, "citadel_authz_jwks_keys", &[r#"issuer="iam""#]),
        1.0
    );
    assert!(
        sample(
            &m,
            "citadel_authz_jwks_key_set_age_seconds",
            &[r#"issuer="iam""#]
        ) < 60.0
    );
    // Four token checks: the first verifies, the next three hit the cache (403 too: policy is
    // evaluated per request, verification is cached).
    assert_eq!(
        sample(&m, "citadel_authz_token_cache_misses_total", &[]),
        1.0
    );
    assert_eq!(sample(&m, "citadel_authz_token_cache_hits_total", &[]), 3.0);
    assert_eq!(sample(&m, "citadel_authz_token_cache_entries", &[]), 1.0);
    assert_eq!(sample(&m, "citadel_authz_ready", &[]), 1.0);
    // Bounded labels: never a subject, token or path.
    assert!(
        !m.contains("alice-secret-sub") && !m.contains("eyJ") && !m.contains("/api/orders"),
        "{m}"
    );
    server.stop().await;
}

fn write_config(dir: &Path, jwks: &JwksServer, policy: &str) -> std::path::PathBuf {
    let cfg = dir.join("citadel-authz.yaml");
    std::fs::write(
        &cfg,
        format!(
            "listen: {{ grpc: 127.0.0.1:0, http: 127.0.0.1:0 }}\nissuers:\n  - name: iam\n    issuer: {}\n    jwks_uri: {}\n    audiences: [api]\njwks: {{ refresh_min: 30s }}\npolicy:\n  file: policy.yaml\n",
            jwks.issuer(),
            jwks.jwks_uri()
        ),
    )
    .unwrap();
    std::fs::write(dir.join("policy.yaml"), policy).unwrap();
    cfg
}

const OPEN: &str = "rules:\n  - name: me\n    paths: [/api/me]\n";
const ADMIN_ONLY: &str = "rules:\n  - name: me\n    paths: [/api/me]\n    roles_all: [admin]\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_change_applies_and_an_invalid_version_is_refused_whole() {
    let k = key(Algorithm::ES256, "k1");
    let jwks = JwksServer::start(&[&k]).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &jwks, OPEN);
    let server = InProcess::start_file(&cfg).await;
    server.wait_ready().await;
    let token = k.mint(&claims(&jwks.issuer(), "alice", "acme", &["reader"]));
    assert_eq!(status_of(&server.check_token("/api/me", &token).await), 200);
    let fetches = jwks.fetches();

    std::fs::write(dir.path().join("policy.yaml"), ADMIN_ONLY).unwrap();
    server.wait_status("/api/me", &token, 403).await;
    assert_eq!(
        jwks.fetches(),
        fetches,
        "an unchanged issuer keeps its key set across reloads"
    );

    // Invalid: an unknown field. Refused whole; the last good policy stays; counted.
    std::fs::write(
        dir.path().join("policy.yaml"),
        "rules:\n  - name: me\n    paths: [/api/me]\n    rolez: [x]\n",
    )
    .unwrap();
    let s = &server;
    eventually(Duration::from_secs(10), "failed reload counted", || async {
        (sample(
            &s.metrics().await,
            "citadel_authz_config_reloads_total",
            &[r#"outcome="error""#],
        ) >= 1.0)
            .then_some(())
    })
    .await;
    assert_eq!(status_of(&server.check_token("/api/me", &token).await), 403);
    server.wait_ready().await;
    assert_eq!(
        sample(
            &server.metrics().await,
            "citadel_authz_config_reloads_total",
            &[r#"outcome="ok""#]
        ),
        1.0
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_reloads_under_load_loses_no_check() {
    let k = key(Algorithm::ES256, "k1");
    let jwks = JwksServer::start(&[&k]).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &jwks, OPEN);
    let server = InProcess::start_file(&cfg).await;
    server.wait_ready().await;
    let token = k.mint(&claims(&jwks.issuer(), "alice", "acme", &["reader"]));
    let done = Arc::new(AtomicBool::new(false));
    let (ok, bad) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (done, ok, bad, token, grpc) = (
            done.clone(),
            ok.clone(),
            bad.clone(),
            token.clone(),
            server.grpc,
        );
        load.push(tokio::spawn(async move {
            let endpoint = format!("http://{grpc}");
            let mut client = envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient::connect(endpoint)
                .await
                .unwrap();
            while !done.load(Ordering::SeqCst) {
                let req = citadel_authz::cli::client::check_request("GET", "/api/me", &[("authorization".into(), format!("Bearer {token}"))]);
                match client.check(req).await {
                    Ok(r) if status_of(r.get_ref()) == 200 => ok.fetch_add(1, Ordering::SeqCst),
                    _ => bad.fetch_add(1, Ordering::SeqCst),
                };
            }
        }));
    }
    // Ten versions, all of which allow /api/me for any valid token (rule renamed each time).
    for i in 0..10 {
        std::fs::write(
            dir.path().join("policy.yaml"),
            format!("rules:\n  - name: me-{i}\n    paths: [/api/me]\n"),
        )
        .unwrap();
        let s = &server;
        eventually(Duration::from_secs(10), "version applied", || async move {
            let m = s.metrics().await;
            (sample(
                &m,
                "citadel_authz_decisions_total",
                &[&format!("rule=\"me-{i}\"")],
            ) > 0.0)
                .then_some(())
        })
        .await;
    }
    done.store(true, Ordering::SeqCst);
    for l in load {
        l.await.unwrap();
    }
    assert_eq!(
        bad.load(Ordering::SeqCst),
        0,
        "every check during the reload burst succeeded"
    );
    assert!(ok.load(Ordering::SeqCst) > 100);
    assert_eq!(
        sample(
            &server.metrics().await,
            "citadel_authz_config_reloads_total",
            &[r#"outcome="ok""#]
        ),
        10.0
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_reloads_on_sighup_logs_refusals_with_the_field_and_drains_on_sigterm() {
    let k = key(Algorithm::ES256, "k1");
    let jwks = JwksServer::start(&[&k]).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &jwks, OPEN);
    let (grpc_port, http_port) = (free_port(), free_port());
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("grpc: 127.0.0.1:0", &format!("grpc: 127.0.0.1:{grpc_port}"))
        .replace("http: 127.0.0.1:0", &format!("http: 127.0.0.1:{http_port}"));
    std::fs::write(&cfg, format!("{text}shutdown_delay: 1s\n")).unwrap();
    let mut cmd = Command::new(authz_bin());
    cmd.args(["serve", "--config"])
        .arg(&cfg)
        .env("RUST_LOG", "info");
    let mut guard = ChildGuard::spawn("citadel-authz serve", cmd, dir.path().join("serve.log"));
    let base = format!("http://127.0.0.1:{http_port}");
    eventually(Duration::from_secs(20), "ready", || async {
        (reqwest::get(format!("{base}/readyz")).await.ok()?.status() == 200).then_some(())
    })
    .await;
    let token = k.mint(&claims(&jwks.issuer(), "alice", "acme", &["reader"]));
    let check = || {
        let req = citadel_authz::cli::client::check_request(
            "GET",
            "/api/me",
            &[("authorization".into(), format!("Bearer {token}"))],
        );
        citadel_authz::cli::client::check(format!("http://127.0.0.1:{grpc_port}"), req)
    };
    assert_eq!(status_of(&check().await.unwrap()), 200);

    // An invalid policy, then SIGHUP: refused, logged with its field path.
    std::fs::write(
        dir.path().join("policy.yaml"),
        "rules:\n  - name: me\n    paths: [/api/me]\n    tenant_param: t\n",
    )
    .unwrap();
    Command::new("kill")
        .args(["-HUP", &guard.child.id().to_string()])
        .status()
        .unwrap();
    let g = &guard;
    eventually(Duration::from_secs(10), "refusal logged", || async move {
        g.log_text()
            .contains("policy.yaml: rules[0].tenant_param")
            .then_some(())
    })
    .await;
    assert_eq!(status_of(&check().await.unwrap()), 200);

    // SIGTERM: not ready at once, checks keep being answered during shutdown_delay, exit 0.
    Command::new("kill")
        .args(["-TERM", &guard.child.id().to_string()])
        .status()
        .unwrap();
    eventually(
        Duration::from_secs(5),
        "readyz 503 while draining",
        || async {
            (reqwest::get(format!("{base}/readyz")).await.ok()?.status() == 503).then_some(())
        },
    )
    .await;
    assert_eq!(
        status_of(&check().await.unwrap()),
        200,
        "still answering during the drain delay"
    );
    let status = guard.terminate(Duration::from_secs(15)).expect("exits");
    assert!(status.success(), "{status:?}");
}

/// The decision log (JSON, the real binary) explains a refused token value: the token's own value
/// and what the configuration accepts, quoted; allow and deny events carry the same string fields;
/// the token never appears.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decision_log_names_refused_values_with_what_is_accepted() {
    let k = key(Algorithm::ES256, "k1");
    let jwks = JwksServer::start(&[&k]).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &jwks, OPEN);
    let (grpc_port, http_port) = (free_port(), free_port());
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("grpc: 127.0.0.1:0", &format!("grpc: 127.0.0.1:{grpc_port}"))
        .replace("http: 127.0.0.1:0", &format!("http: 127.0.0.1:{http_port}"));
    std::fs::write(&cfg, format!("{text}decision_log: all\n")).unwrap();
    let mut cmd = Command::new(authz_bin());
    cmd.args(["--log-format", "json", "serve", "--config"])
        .arg(&cfg)
        .env("RUST_LOG", "info");
    let mut guard = ChildGuard::spawn("citadel-authz serve", cmd, dir.path().join("serve.log"));
    let base = format!("http://127.0.0.1:{http_port}");
    eventually(Duration::from_secs(20), "ready", || async {
        (reqwest::get(format!("{base}/readyz")).await.ok()?.status() == 200).then_some(())
    })
    .await;
    let iss = jwks.issuer();
    let good = k.mint(&claims(&iss, "alice", "acme", &["reader"]));
    let slash = k.mint(&claims(&format!("{iss}/"), "alice", "acme", &["reader"]));
    let mut aud = claims(&iss, "alice", "acme", &["reader"]);
    aud["aud"] = serde_json::json!("api/");
    let aud = k.mint(&aud);
    let kid = key(Algorithm::ES256, "k2").mint(&claims(&iss, "alice", "acme", &["reader"]));
    let mut tokens = Vec::new();
    for (token, status) in [(&good, 200), (&slash, 401), (&aud, 401), (&kid, 401)] {
        let req = citadel_authz::cli::client::check_request(
            "GET",
            "/api/me",
            &[("authorization".into(), format!("Bearer {token}"))],
        );
        let resp = citadel_authz::cli::client::check(format!("http://127.0.0.1:{grpc_port}"), req)
            .await
            .unwrap();
        assert_eq!(status_of(&resp), status);
        tokens.push(token.clone());
    }
    let status = guard.terminate(Duration::from_secs(15)).expect("exits");
    assert!(status.success(), "{status:?}");
    let log = guard.log_text();
    let decisions: Vec<serde_json::Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["target"] == "citadel_authz::decision")
        .collect();
    assert_eq!(decisions.len(), 4, "{log}");
    let reasons: Vec<&str> = decisions[1..]
        .iter()
        .map(|d| d["reason"].as_str().unwrap())
        .collect();
    assert_eq!(
        reasons,
        [
            format!("token issuer '{iss}/' is not accepted; accepted: '{iss}'").as_str(),
            "token audience 'api/' is not accepted; accepted: 'api'",
            "no key with the token's kid 'k2'; the issuer's key set has kids 'k1'",
        ],
        "{log}"
    );
    for d in &decisions {
        for field in ["rule", "method", "path", "outcome", "protocol"] {
            assert!(d[field].is_string(), "{field} in {d}");
        }
    }
    for token in &tokens {
        let (signing_input, signature) = token.rsplit_once('.').unwrap();
        assert!(
            !log.contains(signature) && !log.contains(signing_input),
            "a token in the log"
        );
    }
}

/// `serve` logs the config's warnings (what `check-config` prints as `warning:`), at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_logs_config_warnings_with_their_field() {
    let k = key(Algorithm::ES256, "k1");
    let jwks = JwksServer::start(&[&k]).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        &jwks,
        "rules:\n  - name: all\n    paths: [/api/**]\n  - name: never\n    paths: [/api/x]\n",
    );
    let http_port = free_port();
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("http: 127.0.0.1:0", &format!("http: 127.0.0.1:{http_port}"));
    std::fs::write(&cfg, text).unwrap();
    let mut cmd = Command::new(authz_bin());
    cmd.args(["--log-format", "json", "serve", "--config"])
        .arg(&cfg)
        .env("RUST_LOG", "info");
    let mut guard = ChildGuard::spawn("citadel-authz serve", cmd, dir.path().join("serve.log"));
    let ready = format!("http://127.0.0.1:{http_port}/readyz");
    eventually(Duration::from_secs(20), "ready", || async {
        (reqwest::get(&ready).await.ok()?.status() == 200).then_some(())
    })
    .await;
    guard.terminate(Duration::from_secs(15)).expect("exits");
    let log = guard.log_text();
    assert!(
        log.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .any(|e| e["message"] == "configuration warning"
                && e["field"].as_str().is_some_and(|f| f.contains("rules[1]"))),
        "{log}"
    );
}
