//! The admin API (`listen.admin`: Explain, Status), `citadel-authz explain` over it and offline,
//! and `citadel-authz test` with its exit codes. Real server, real JWKS server, real binary.

use std::process::Command;
use std::time::Duration;

use citadel_authz::serve::admin::pb::admin_client::AdminClient;
use citadel_authz::serve::admin::pb::{ExplainRequest, ExplainResponse, StatusRequest, StepResult};
use jsonwebtoken::Algorithm;
use serde_json::json;

use crate::support::{self, InProcess, JwksServer, authz_bin, claims, key, repo_file, status_of};

fn with_admin(yaml: &str) -> String {
    yaml.replacen(
        "  http: 127.0.0.1:0\n",
        "  http: 127.0.0.1:0\n  admin: 127.0.0.1:0\n",
        1,
    )
}

async fn admin(server: &InProcess) -> AdminClient<tonic::transport::Channel> {
    let addr = server.running.as_ref().unwrap().admin_addr.unwrap();
    AdminClient::connect(format!("http://{addr}"))
        .await
        .unwrap()
}

fn step<'a>(r: &'a ExplainResponse, name: &str) -> &'a citadel_authz::serve::admin::pb::Step {
    r.steps
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no step {name:?} in {:#?}", r.steps))
}

fn failed_step(r: &ExplainResponse) -> Option<&str> {
    r.steps
        .iter()
        .find(|s| s.result == StepResult::Fail as i32)
        .map(|s| s.name.as_str())
}

/// One request of each kind: (label, path, token, expected status, error, failing step).
type Kind = (
    &'static str,
    &'static str,
    Option<String>,
    u32,
    &'static str,
    Option<&'static str>,
);

fn kinds(iss: &str, k: &citadel_authz::core::signer::SigningKey) -> Vec<Kind> {
    let reader = k.mint(&claims(iss, "rita", "acme", &["reader"]));
    let member = k.mint(&claims(iss, "mia", "acme", &["member"]));
    let mut expired = claims(iss, "rita", "acme", &["reader"]);
    expired["exp"] = json!(1_000_000_000);
    let expired = k.mint(&expired);
    vec![
        (
            "allow",
            "/api/orders/1",
            Some(reader.clone()),
            200,
            "",
            None,
        ),
        (
            "no token",
            "/api/orders/1",
            None,
            401,
            "unauthorized",
            Some("bearer"),
        ),
        (
            "invalid",
            "/api/orders/1",
            Some(expired),
            401,
            "invalid_token",
            Some("signature and claims"),
        ),
        (
            "scope",
            "/api/admin/users",
            Some(reader.clone()),
            403,
            "insufficient_scope",
            Some("roles"),
        ),
        (
            "tenant",
            "/api/tenants/globex/x",
            Some(member),
            403,
            "forbidden",
            Some("tenant"),
        ),
        (
            "no rule",
            "/nothing",
            Some(reader.clone()),
            403,
            "forbidden",
            Some("rule"),
        ),
        (
            "bad path",
            "/api/orders/../admin",
            Some(reader),
            400,
            "invalid_request",
            Some("path"),
        ),
    ]
}

#[tokio::test]
async fn explain_over_grpc_matches_the_check_for_allow_each_denial_and_400() {
    let k = key(Algorithm::ES256, "k1");
    let jwks = JwksServer::start(&[&k]).await;
    let server = InProcess::start(&with_admin(&support::config_yaml(
        &jwks,
        "  refresh_min: 1s",
    )))
    .await;
    server.wait_ready().await;
    let mut client = admin(&server).await;
    for (label, path, token, status, error, failing) in kinds(&jwks.issuer(), &k) {
        let mut headers = std::collections::HashMap::new();
        if let Some(t) = &token {
            headers.insert("authorization".to_owned(), format!("Bearer {t}"));
        }
        let r = client
            .explain(ExplainRequest {
                method: "GET".into(),
                path: path.into(),
                headers,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.http_status, status, "{label}: {r:#?}");
        assert_eq!(r.error, error, "{label}");
        assert_eq!(failed_step(&r), failing, "{label}: {:#?}", r.steps);
        assert_eq!(r.allowed, status == 200, "{label}");
        // The same server's ext_authz answer agrees: one decision code path.
        let check = match &token {
            Some(t) => server.check_token(path, t).await,
            None => server.check("GET", path, &[]).await,
        };
        assert_eq!(
            u32::from(status_of(&check)),
            status,
            "{label}: ext_authz disagrees"
        );
        match label {
            "allow" => {
                assert_eq!(r.rule, "orders-read");
                let id = r.identity.as_ref().unwrap();
                assert_eq!(id.user_id.as_deref(), Some("rita"));
                assert_eq!(r.headers.get("x-user-id").map(String::as_str), Some("rita"));
                assert_eq!(step(&r, "keys").result, StepResult::Pass as i32);
                assert!(
                    step(&r, "keys").detail.contains("'k1'"),
                    "{:?}",
                    step(&r, "keys")
                );
                assert_eq!(step(&r, "roles").result, StepResult::Pass as i32);
                // No step shows the token.
                let token = token.as_deref().unwrap();
                assert!(r.steps.iter().all(|s| !s.detail.contains(token)));
            }
            "no token" => assert_eq!(
                r.headers.get("www-authenticate").map(String::as_str),
                Some("Bearer realm=\"citadel\"")
            ),
            "scope" => assert_eq!(r.rule, "admin"),
            "no rule" => assert_eq!(r.rule, ""),
            _ => {}
        }
    }
    // A named rule through context_extensions, and an unknown one.
    let admin_token = k.mint(&claims(&jwks.issuer(), "ada", "acme", &["admin"]));
    let mut req = ExplainRequest {
        method: "GET".into(),
        path: "/somewhere".into(),
        headers: [("authorization".to_owned(), format!("Bearer {admin_token}"))].into(),
        context_extensions: [("citadel_rule".to_owned(), "admin".to_owned())].into(),
    };
    let r = client.explain(req.clone()).await.unwrap().into_inner();
    assert!(r.allowed, "{r:#?}");
    assert!(step(&r, "rule").detail.contains("context_extensions"));
    req.context_extensions
        .insert("citadel_rule".into(), "nope".into());
    let r = client.explain(req).await.unwrap().into_inner();
    assert_eq!((r.http_status, failed_step(&r)), (403, Some("rule")));
    server.stop().await;
}

// Multi-threaded: the JWKS server must answer while this thread waits for the child process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_offline_prints_the_trace_and_exits_by_decision() {
    let k = key(Algorithm::ES256, "k1");
    let jwks = JwksServer::start(&[&k]).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.yaml");
    std::fs::write(&config, support::config_yaml(&jwks, "  refresh_min: 1s")).unwrap();
    let iss = jwks.issuer();
    for (label, path, token, status, error, failing) in kinds(&iss, &k) {
        let mut cmd = Command::new(authz_bin());
        cmd.args(["explain", "--config"])
            .arg(&config)
            .args(["--path", path]);
        if let Some(t) = &token {
            cmd.args(["--token", t]);
        }
        let out = cmd.output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(if status == 200 { 0 } else { 1 }),
            "{label}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        if status == 200 {
            assert!(
                stdout.contains("ALLOW 200 (rule orders-read)"),
                "{label}: {stdout}"
            );
            assert!(stdout.contains("x-user-id: rita"), "{stdout}");
        } else {
            assert!(
                stdout.contains(&format!("DENY {status} {error}")),
                "{label}: {stdout}"
            );
        }
        if let Some(f) = failing {
            assert!(stdout.contains(&format!("FAIL {f}")), "{label}: {stdout}");
        }
    }
    // Fetched once, no listener: the JWKS server saw exactly one fetch per run.
    assert_eq!(jwks.fetches(), 7);
}

#[tokio::test]
async fn status_shows_issuers_kids_and_a_key_rotation() {
    let k1 = key(Algorithm::ES256, "k1");
    let k2 = key(Algorithm::ES256, "k2");
    let jwks = JwksServer::start(&[&k1]).await;
    let server = InProcess::start(&with_admin(&support::config_yaml(
        &jwks,
        "  refresh_min: 1s",
    )))
    .await;
    server.wait_ready().await;
    let mut client = admin(&server).await;
    let s = client.status(StatusRequest {}).await.unwrap().into_inner();
    assert!(s.ready);
    assert_eq!(s.issuers.len(), 1);
    assert_eq!(s.issuers[0].name, "iam");
    assert_eq!(s.issuers[0].kids, vec!["k1".to_owned()]);
    assert!(s.issuers[0].key_set_age_seconds.is_some());
    assert!(s.membership.is_none());
    assert_eq!(s.config_version.len(), 16);
    let before = s.token_cache_entries;

    // The IdP rotates to k2; a token signed with it makes the server refetch.
    jwks.set_keys(&[&k2]);
    let token = k2.mint(&claims(&jwks.issuer(), "rita", "acme", &["reader"]));
    server.wait_status("/api/orders", &token, 200).await;
    let s = client.status(StatusRequest {}).await.unwrap().into_inner();
    assert_eq!(s.issuers[0].kids, vec!["k2".to_owned()], "{s:#?}");
    assert!(s.token_cache_entries > before, "{s:#?}");
    server.stop().await;
}

#[test]
fn admin_listener_is_loopback_or_unix_unless_remote_is_allowed() {
    let jwks_free = |listen: &str| {
        format!(
            "listen: {{ grpc: 127.0.0.1:9191, http: 127.0.0.1:9192, {listen} }}\nissuers:\n  - name: iam\n    issuer: https://iam.example.com\n    jwks_uri: https://iam.example.com/jwks\n    audiences: [api]\npolicy:\n  rules:\n    - {{ name: me, paths: [/me] }}\n"
        )
    };
    let load = |listen: &str| {
        citadel_authz::Config::from_yaml(&jwks_free(listen), std::path::Path::new("."))
    };
    let err = load("admin: 0.0.0.0:9300").unwrap_err();
    let issue = err
        .issues
        .iter()
        .find(|i| i.path == "listen.admin")
        .unwrap();
    assert!(issue.message.contains("not a loopback address"), "{issue}");
    assert!(issue.message.contains("admin_allow_remote"), "{issue}");
    assert!(load("admin: 0.0.0.0:9300, admin_allow_remote: true").is_ok());
    assert!(load("admin: 127.0.0.1:9300").is_ok());
    assert!(load("admin: \"[::1]:9300\"").is_ok());
    assert!(load("admin: unix:/tmp/citadel-admin.sock").is_ok());
    // Never the ext_authz listener.
    let err = load("admin: 127.0.0.1:9191").unwrap_err();
    assert!(err.issues.iter().any(|i| i.path == "listen.admin"), "{err}");
    // check-config refuses it too, before anything binds.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.yaml");
    std::fs::write(&file, jwks_free("admin: 0.0.0.0:9300")).unwrap();
    let out = Command::new(authz_bin())
        .args(["check-config", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("listen.admin"));
}

fn policy_test(cases: &std::path::Path) -> (Option<i32>, String) {
    let out = Command::new(authz_bin())
        .args(["test", "--config"])
        .arg(repo_file("envoy/citadel-authz.yaml"))
        .arg(cases)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

#[test]
fn the_shipped_policy_tests_pass_and_a_wrong_case_fails() {
    let shipped = repo_file("envoy/policy.test.yaml");
    let (code, out) = policy_test(&shipped);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains(" 0 missed"), "{out}");
    assert!(!out.contains("MISS"), "{out}");

    // A deliberately wrong expectation in a copy: exit 1 and a diff naming the case.
    let text = std::fs::read_to_string(&shipped).unwrap();
    let wrong = "expect: { status: 403, rule: admin, error: insufficient_scope }";
    assert!(
        text.contains(wrong),
        "envoy/policy.test.yaml changed; update this test"
    );
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("wrong.yaml");
    std::fs::write(
        &copy,
        text.replace(wrong, "expect: { status: 200, rule: admin }"),
    )
    .unwrap();
    let (code, out) = policy_test(&copy);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("MISS  admin area needs the admin role"),
        "{out}"
    );
    assert!(out.contains("status: want 200, got 403"), "{out}");
    assert!(out.contains("FAIL roles"), "{out}");
    assert!(out.contains(" 1 missed"), "{out}");
}

#[test]
fn policy_test_memberships_per_case_and_bad_files() {
    let dir = tempfile::tempdir().unwrap();
    let cases = dir.path().join("cases.yaml");
    // The store's answer decides the tenant: mia has no tenant claim.
    std::fs::write(
        &cases,
        r#"
personas:
  mia: { user: mia }
cases:
  - name: member through the store
    path: /api/tenants/acme/x
    as: mia
    memberships: [{ subject: mia, tenants: { acme: [member] } }]
    expect: { status: 200, rule: tenant-data, headers: { x-tenant-id: acme, x-user-roles: member } }
  - name: not a member of globex
    path: /api/tenants/globex/x
    as: mia
    memberships: [{ subject: mia, tenants: { acme: [member] } }]
    expect: { status: 403, error: forbidden }
  - name: without the store, no tenant
    path: /api/tenants/acme/x
    as: mia
    expect: { status: 403 }
"#,
    )
    .unwrap();
    let (code, out) = policy_test(&cases);
    assert_eq!(code, Some(0), "{out}");

    for (bad, field) in [
        (
            "cases:\n  - name: x\n    pth: /a\n    expect: { status: 200 }\n",
            "pth",
        ),
        (
            "cases:\n  - name: x\n    path: /a\n    expect: { status: many }\n",
            "cases[0].expect.status",
        ),
        (
            "cases:\n  - name: x\n    path: /a\n    as: ghost\n    expect: { status: 200 }\n",
            "cases[0].as",
        ),
        (
            "cases:\n  - name: x\n    path: /a\n    memberships: [{ tenants: {} }]\n    expect: { status: 200 }\n",
            "cases[0].memberships",
        ),
    ] {
        std::fs::write(&cases, bad).unwrap();
        let (code, out) = policy_test(&cases);
        assert_eq!(code, Some(2), "{bad}: {out}");
        assert!(out.contains(field), "{bad}: want {field:?} in {out}");
    }
}

// Multi-threaded: the server must answer while this thread waits for the child process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_cli_over_a_unix_admin_socket_and_the_config_version() {
    let k = key(Algorithm::ES256, "k1");
    let jwks = JwksServer::start(&[&k]).await;
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("admin.sock");
    let config = dir.path().join("config.yaml");
    let yaml = support::config_yaml(&jwks, "  refresh_min: 1s").replacen(
        "  http: 127.0.0.1:0\n",
        &format!("  http: 127.0.0.1:0\n  admin: unix:{}\n", socket.display()),
        1,
    );
    std::fs::write(&config, &yaml).unwrap();
    let server = InProcess::start_file(&config).await;
    server.wait_ready().await;
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the admin socket is the owner's only");
    }
    let addr = format!("unix:{}", socket.display());
    let token = k.mint(&claims(&jwks.issuer(), "rita", "acme", &["reader"]));
    let run = |args: &[&str]| {
        let out = Command::new(authz_bin())
            .args(["explain", "--admin", &addr])
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, out) = run(&["--path", "/api/orders", "--token", &token]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("ALLOW 200 (rule orders-read)"), "{out}");
    assert!(out.contains("ok   signature and claims"), "{out}");
    assert!(!out.contains(&token), "the trace never prints the token");
    let (code, out) = run(&[
        "--method",
        "DELETE",
        "--path",
        "/api/orders",
        "--token",
        &token,
    ]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("FAIL rule"), "{out}");

    // The config version follows the files: an edit of the config changes it.
    let socket_channel = citadel_authz::cli::client::endpoint(&addr)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = AdminClient::new(socket_channel);
    let v1 = client
        .status(StatusRequest {})
        .await
        .unwrap()
        .into_inner()
        .config_version;
    std::fs::write(&config, format!("{yaml}\n# edited\n")).unwrap();
    let c = &client;
    let v2 = support::eventually(
        Duration::from_secs(10),
        "a new version after reload",
        || async {
            let v = c
                .clone()
                .status(StatusRequest {})
                .await
                .ok()?
                .into_inner()
                .config_version;
            (v != v1).then_some(v)
        },
    )
    .await;
    // A refused reload keeps the configuration in force, and its version.
    std::fs::write(&config, format!("{yaml}\nnot_a_field: 1\n")).unwrap();
    let s = &server;
    support::eventually(
        Duration::from_secs(10),
        "the refused reload counted",
        || async {
            (support::sample(
                &s.metrics().await,
                "citadel_authz_config_reloads_total",
                &[r#"outcome="error""#],
            ) >= 1.0)
                .then_some(())
        },
    )
    .await;
    let v3 = client
        .status(StatusRequest {})
        .await
        .unwrap()
        .into_inner()
        .config_version;
    assert_eq!(v3, v2, "the version is that of the configuration in force");
    server.stop().await;
    assert!(!socket.exists(), "the socket file is removed on shutdown");
    // Unreachable admin listener: exit 2, the cause printed.
    let out = Command::new(authz_bin())
        .args(["explain", "--admin", "127.0.0.1:1", "--path", "/"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot connect"));
}
