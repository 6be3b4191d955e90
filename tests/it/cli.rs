//! The command-line tools against real things: `check-config` (every problem in one run,
//! warnings, `--online` against real JWKS and discovery servers) and `check` (TCP, unix socket,
//! host names; exit 0 allow, 1 deny, 2 could not ask).

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use jsonwebtoken::Algorithm;

use crate::support::*;

/// Run the real binary off the async runtime (the server under test runs on it).
async fn run(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || Command::new(authz_bin()).args(args).output().unwrap())
        .await
        .unwrap()
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn check_config(path: &Path, online: bool) -> Output {
    let mut args = vec![
        "check-config".to_owned(),
        "--config".to_owned(),
        path.display().to_string(),
    ];
    if online {
        args.push("--online".to_owned());
    }
    run(args).await
}

#[tokio::test]
async fn check_config_reports_syntax_type_and_semantic_problems_in_one_run() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.yaml");
    std::fs::write(
        &cfg,
        r#"
listen: { grpc: "localhost:9191", grcp: x }
issuers:
  - name: iam
    issuer: https://iam.example.com
    jwks_uri: http://iam.example.com/jwks
    audiences: oops
    leeway: 1000000000y
jwks: { max_stale: soon }
shutdown_grace: 5s
token_cache: { capacity: many }
policy: { file: policy.yaml }
"#,
    )
    .unwrap();
    std::fs::write(
        dir.path().join("policy.yaml"),
        "rules:\n  - name: a\n    paths: [/a/{x}]\n    tenant_param: y\n  - name: b\n    paths: [/b]\n    methods: [get]\n    rolse: [x]\n",
    )
    .unwrap();
    let out = check_config(&cfg, false).await;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stdout}{stderr}");
    for want in [
        "listen.grcp: unknown field",
        "issuers[0].jwks_uri",
        "issuers[0].audiences: invalid type",
        "issuers[0].leeway: must be between 0s and 1h",
        "jwks.max_stale: \"soon\" is not a duration",
        "token_cache.capacity",
        "policy.yaml: rules[0].tenant_param",
        "policy.yaml: rules[1].methods[0]",
        "policy.yaml: rules[1].rolse: unknown field",
    ] {
        assert!(stderr.contains(want), "missing {want:?} in:\n{stderr}");
    }
    assert!(
        !stderr.contains("listen.grpc:"),
        "localhost is accepted:\n{stderr}"
    );
}

#[tokio::test]
async fn check_config_prints_warnings_and_still_passes() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.yaml");
    std::fs::write(
        &cfg,
        r#"
issuers:
  - name: iam
    issuer: https://iam.example.com
    jwks_uri: https://iam.example.com/jwks
    audiences: [api]
policy:
  rules:
    - name: api
      paths: [/api/**]
      methods: [GET, HEAD, PURGE]
    - name: orders
      paths: [/api/orders/{id}]
      methods: [GET]
    - name: writes
      paths: [/api/orders/{id}]
      methods: [POST]
"#,
    )
    .unwrap();
    let out = check_config(&cfg, false).await;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert_eq!(stdout.trim(), "ok");
    let warnings: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("warning: "))
        .collect();
    assert_eq!(warnings.len(), 2, "{stderr}");
    assert!(
        warnings[0].starts_with("warning: policy.rules[0].methods[2]: \"PURGE\""),
        "{stderr}"
    );
    assert!(
        warnings[1].starts_with("warning: policy.rules[1]: rule \"orders\" is never matched"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_online_fetches_every_issuer() {
    let (k1, k2, k3) = (
        key(Algorithm::ES256, "a"),
        key(Algorithm::ES256, "b"),
        key(Algorithm::EdDSA, "c"),
    );
    let stat = JwksServer::start(&[&k1, &k2]).await;
    let disc = JwksServer::start(&[&k3]).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.yaml");
    let write = |extra: &str| {
        std::fs::write(
            &cfg,
            format!(
                "issuers:\n  - name: iam\n    issuer: {}\n    jwks_uri: {}\n    audiences: [api]\n  - name: disc\n    issuer: {}\n    discovery: true\n    audiences: [api]\n{extra}jwks: {{ fetch_timeout: 2s }}\n",
                stat.issuer(),
                stat.jwks_uri(),
                disc.issuer()
            ),
        )
        .unwrap();
    };
    write("");
    let out = check_config(&cfg, true).await;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        vec![
            "issuers[0] (iam): JWKS ok: 2 usable keys",
            "issuers[1] (disc): discovery ok, JWKS ok: 1 usable key",
            "ok",
        ],
        "{stderr}"
    );
    assert_eq!(disc.discoveries(), 1);

    // Without --online nothing is fetched.
    let before = stat.fetches();
    assert_eq!(check_config(&cfg, false).await.status.code(), Some(0));
    assert_eq!(stat.fetches(), before);

    // A failing JWKS and an issuer nobody answers for: each reported, exit 2.
    disc.set_mode(Mode::Fail);
    let closed = free_port();
    write(&format!(
        "  - name: gone\n    issuer: http://127.0.0.1:{closed}\n    jwks_uri: http://127.0.0.1:{closed}/jwks\n    audiences: [api]\n"
    ));
    let out = check_config(&cfg, true).await;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stdout}{stderr}");
    assert!(stdout.contains("issuers[0] (iam): JWKS ok"), "{stdout}");
    assert!(!stdout.contains("\nok"), "{stdout}");
    assert!(stderr.contains("issuers[1] (disc): failed: "), "{stderr}");
    assert!(stderr.contains("500"), "{stderr}");
    assert!(stderr.contains("issuers[2] (gone): failed: "), "{stderr}");
    assert!(stderr.to_lowercase().contains("refused"), "{stderr}");

    // A JWKS without a usable key would leave the issuer never ready: a failure too.
    disc.set_mode(Mode::Serve);
    disc.set_raw_keys(vec![serde_json::json!({"kty": "oct", "k": "c2VjcmV0"})]);
    write("");
    let out = check_config(&cfg, true).await;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stdout}{stderr}");
    assert!(
        stderr.contains("issuers[1] (disc): failed: discovery ok, JWKS has no usable key"),
        "{stderr}"
    );
}

/// A server from `yaml` in this process, ready (keys loaded) when this returns.
async fn serve(yaml: &str) -> citadel_authz::Running {
    let config = citadel_authz::Config::from_yaml(yaml, Path::new(".")).unwrap();
    let listeners = citadel_authz::Listeners::bind(&config).await.unwrap();
    let running = citadel_authz::start(config, listeners, citadel_authz::Options::default())
        .await
        .unwrap();
    let url = format!("http://{}/readyz", running.http_addr.unwrap());
    eventually(Duration::from_secs(10), "readyz 200", || async {
        let r = reqwest::get(&url).await.ok()?;
        (r.status() == 200).then_some(())
    })
    .await;
    running
}

fn check_args(grpc: &str, path: &str, token: Option<&str>) -> Vec<String> {
    let mut args = vec![
        "check".to_owned(),
        "--grpc".to_owned(),
        grpc.to_owned(),
        "--path".to_owned(),
        path.to_owned(),
    ];
    if let Some(t) = token {
        args.extend(["--token".to_owned(), t.to_owned()]);
    }
    args
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reaches_a_unix_socket_and_exits_0_allow_1_deny_2_cannot_ask() {
    let k = key(Algorithm::ES256, "k1");
    let jwks = JwksServer::start(&[&k]).await;
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("authz.sock");
    let yaml = config_yaml(&jwks, "  refresh_min: 30s").replace(
        "grpc: 127.0.0.1:0",
        &format!("grpc: \"unix:{}\"", sock.display()),
    );
    let running = serve(&yaml).await;
    let grpc = format!("unix:{}", sock.display());
    let token = k.mint(&claims(&jwks.issuer(), "alice", "acme", &["reader"]));

    let out = run(check_args(&grpc, "/api/me", Some(&token))).await;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert!(stdout.starts_with("ALLOW"), "{stdout}");
    assert!(stdout.contains("x-user-id: alice"), "{stdout}");

    for (path, token, status) in [
        ("/api/me", None, "DENY 401"),
        ("/api/admin/x", Some(token.as_str()), "DENY 403"),
    ] {
        let out = run(check_args(&grpc, path, token)).await;
        let (stdout, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(1), "{path}: {stdout}{stderr}");
        assert!(stdout.starts_with(status), "{path}: {stdout}");
    }

    // --context tries a per-route rule as an Envoy route's check_settings would send it: /x is
    // no rule's path, the named rule decides; an unknown name is refused.
    let mut args = check_args(&grpc, "/x", Some(&token));
    args.extend([
        "--context".to_owned(),
        "citadel_rule=orders-read".to_owned(),
    ]);
    let out = run(args).await;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("x-user-id: alice"), "{stdout}");
    let mut args = check_args(&grpc, "/api/me", Some(&token));
    args.extend(["--context".to_owned(), "citadel_rule=nope".to_owned()]);
    let out = run(args).await;
    let (stdout, _) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.starts_with("DENY 403") && stdout.contains("citadel_rule"),
        "{stdout}"
    );
    let mut args = check_args(&grpc, "/api/me", Some(&token));
    args.extend(["--context".to_owned(), "no-equals".to_owned()]);
    assert_eq!(run(args).await.status.code(), Some(2));

    // Nobody listening: 2 (never 1, which a script would read as a denial), with the cause.
    let closed = format!("127.0.0.1:{}", free_port());
    let out = run(check_args(&closed, "/api/me", Some(&token))).await;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stdout}{stderr}");
    assert!(stderr.contains(&closed), "{stderr}");
    assert!(
        stderr.to_lowercase().contains("connection refused"),
        "{stderr}"
    );
    let missing = format!("unix:{}", dir.path().join("nobody.sock").display());
    let out = run(check_args(&missing, "/api/me", None)).await;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stdout}{stderr}");
    assert!(stderr.contains("nobody.sock"), "{stderr}");
    let out = run(check_args("unix:", "/api/me", None)).await;
    assert_eq!(out.status.code(), Some(2), "{:?}", text(&out));

    running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_and_check_accept_localhost() {
    let k = key(Algorithm::ES256, "k1");
    let jwks = JwksServer::start(&[&k]).await;
    let yaml = config_yaml(&jwks, "  refresh_min: 30s")
        .replace("grpc: 127.0.0.1:0", "grpc: localhost:0")
        .replace("http: 127.0.0.1:0", "http: localhost:0");
    let running = serve(&yaml).await;
    let grpc = running.grpc_addr.unwrap();
    assert!(grpc.ip().is_loopback(), "{grpc}");
    assert!(running.http_addr.unwrap().ip().is_loopback());
    let token = k.mint(&claims(&jwks.issuer(), "alice", "acme", &["reader"]));
    let out = run(check_args(
        &format!("localhost:{}", grpc.port()),
        "/api/orders/1",
        Some(&token),
    ))
    .await;
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
    running.shutdown().await.unwrap();
}
