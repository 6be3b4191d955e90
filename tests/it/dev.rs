//! The real binary: `dev` mode's printed tokens and commands, `check`, `check-config`, and a
//! clean exit on SIGTERM.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;

/// A running `citadel-authz dev` and what its banner printed.
struct Dev {
    guard: ChildGuard,
    grpc: SocketAddr,
    http: SocketAddr,
    banner: String,
}

/// Run `citadel-authz dev` on free ports; return the child and what the banner printed.
fn start_dev() -> (ChildGuard, SocketAddr, SocketAddr, String) {
    let dev = start_dev_with(&["dev", "--grpc", "127.0.0.1:0", "--http", "127.0.0.1:0"]);
    (dev.guard, dev.grpc, dev.http, dev.banner)
}

/// Run the binary with `args` (a `dev` command line) outside cargo, as a user runs it; wait for the
/// whole banner.
fn start_dev_with(args: &[&str]) -> Dev {
    let dir = tempfile::tempdir().unwrap().keep();
    let mut cmd = Command::new(authz_bin());
    cmd.args(args).env_remove("CARGO");
    // The banner is on stdout; read it as it comes, logs go to a file.
    cmd.stdout(Stdio::piped());
    let log = dir.join("dev.log");
    let err = std::fs::File::create(&log).unwrap();
    cmd.stderr(err).stdin(Stdio::null());
    let mut child = cmd.spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let guard = ChildGuard {
        child,
        name: "citadel-authz dev".into(),
        log,
    };
    let mut banner = String::new();
    let mut reader = BufReader::new(stdout);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !banner.contains("Ctrl-C stops the server") {
        assert!(Instant::now() < deadline, "no banner: {banner}");
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap() == 0 {
            panic!("dev exited early: {banner}\n{}", guard.log_text());
        }
        banner.push_str(&line);
    }
    let addr_after = |label: &str| -> SocketAddr {
        let line = banner
            .lines()
            .find(|l| l.trim_start().starts_with(label))
            .unwrap();
        let word = line
            .split_whitespace()
            .find(|w| w.contains("127.0.0.1:"))
            .unwrap();
        word.trim_start_matches("http://").parse().unwrap()
    };
    // Keep draining stdout so the child never writes into a closed pipe.
    std::thread::spawn(move || std::io::copy(&mut reader, &mut std::io::sink()));
    let grpc = addr_after("gRPC");
    let http = addr_after("HTTP");
    Dev {
        guard,
        grpc,
        http,
        banner,
    }
}

fn exported(banner: &str, name: &str) -> String {
    let prefix = format!("export {name}=");
    let line = banner
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with(&prefix))
        .unwrap();
    line[prefix.len()..]
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_mode_prints_working_tokens_and_a_tampered_one_is_denied() {
    let (mut guard, grpc, http, banner) = start_dev();
    let readyz = format!("http://{http}/readyz");
    eventually(Duration::from_secs(20), "dev ready", || async {
        (reqwest::get(&readyz).await.ok()?.status() == 200).then_some(())
    })
    .await;
    let reader = exported(&banner, "READER_TOKEN");
    let admin = exported(&banner, "ADMIN_TOKEN");
    let endpoints = banner
        .lines()
        .find(|l| l.trim_start().starts_with("HTTP"))
        .unwrap();
    for path in [
        "/healthz",
        "/readyz",
        "/metrics",
        "/api/iam/check-access",
        "/dev/token",
    ] {
        assert!(endpoints.contains(path), "{path} not listed: {endpoints}");
    }
    // Run directly (no CARGO in the environment): the banner names the binary, not cargo.
    assert!(!banner.contains("cargo run"), "{banner}");
    assert!(
        banner.contains(&format!("{} check --grpc", authz_bin().display())),
        "{banner}"
    );
    assert!(exported(&banner, "SERVICE_TOKEN").starts_with("eyJ"));

    // The printed `check` command, over gRPC.
    let check = |token: &str, path: &str| {
        Command::new(authz_bin())
            .args([
                "check",
                "--grpc",
                &grpc.to_string(),
                "--method",
                "GET",
                "--path",
                path,
                "--token",
                token,
            ])
            .output()
            .unwrap()
    };
    let out = check(&reader, "/api/orders/42");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("ALLOW") && text.contains("x-user-id: bob"),
        "{text}"
    );
    let mut tampered = reader.clone();
    let dot = tampered.find('.').unwrap();
    tampered.replace_range(
        dot + 1..dot + 2,
        if &reader[dot + 1..dot + 2] == "A" {
            "B"
        } else {
            "A"
        },
    );
    let out = check(&tampered, "/api/orders/42");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("DENY 401") && text.contains("invalid_token"),
        "{text}"
    );
    let out = check(&reader, "/api/admin/users");
    assert!(String::from_utf8_lossy(&out.stdout).contains("DENY 403"));

    // The printed curl commands, over HTTP forward-auth.
    let client = reqwest::Client::new();
    let fa = |uri: &str, token: Option<&str>| {
        let mut req = client
            .get(format!("http://{http}/api/iam/check-access"))
            .header("X-Forwarded-Method", "GET")
            .header("X-Forwarded-Uri", uri);
        if let Some(t) = token {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        req.send()
    };
    let resp = fa("/api/tenants/acme/files", Some(&reader)).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-user-id"], "bob");
    assert_eq!(resp.headers()["x-tenant-id"], "acme");
    assert_eq!(resp.headers()["x-user-roles"], "reader,member");
    assert_eq!(
        fa("/api/tenants/globex/files", Some(&admin))
            .await
            .unwrap()
            .status(),
        403
    );
    assert_eq!(fa("/api/orders/42", None).await.unwrap().status(), 401);

    // POST /dev/token mints a token the server accepts.
    let minted: serde_json::Value = client
        .post(format!("http://{http}/dev/token"))
        .body(r#"{"sub":"carol","tenant_id":"globex","roles":["member"]}"#)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .map(|t| serde_json::from_str(&t).unwrap())
        .unwrap();
    let carol = minted["access_token"].as_str().unwrap();
    let resp = fa("/api/tenants/globex/x", Some(carol)).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-user-id"], "carol");
    let bad = client
        .post(format!("http://{http}/dev/token"))
        .body(r#"{"roles": "admin"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);

    // SIGTERM: clean exit 0. Logs never contain a token.
    let status = guard
        .terminate(Duration::from_secs(15))
        .expect("exits after SIGTERM");
    assert!(status.success(), "{status:?}");
    let log = guard.log_text();
    assert!(
        !log.contains(&reader[reader.len() - 20..]),
        "a token appeared in the log"
    );
}

#[test]
fn check_config_prints_ok_or_every_problem_with_its_field() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.yaml");
    std::fs::write(
        &good,
        "issuers:\n  - issuer: https://iam.example.com\n    jwks_uri: https://iam.example.com/jwks\n    audiences: [api]\npolicy:\n  file: policy.yaml\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("policy.yaml"),
        "rules:\n  - name: t\n    paths: [/api/tenants/{tenant}/**]\n    tenant_param: tenant\n",
    )
    .unwrap();
    let out = Command::new(authz_bin())
        .args(["check-config", "--config"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok");

    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "issuers:\n  - issuer: https://iam.example.com\n    jwks_uri: http://iam.example.com/jwks\n    audiences: []\n    algorithms: [HS256]\npolicy:\n  file: bad-policy.yaml\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("bad-policy.yaml"),
        "rules:\n  - name: t\n    paths: [/x/{a}]\n    tenant_param: b\n",
    )
    .unwrap();
    let out = Command::new(authz_bin())
        .arg("check-config")
        .env("CITADEL_AUTHZ_CONFIG", &bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    for field in [
        "issuers[0].jwks_uri",
        "issuers[0].audiences",
        "issuers[0].algorithms[0]",
        "bad-policy.yaml: rules[0].tenant_param",
    ] {
        assert!(err.contains(field), "missing {field} in:\n{err}");
    }

    let unknown = dir.path().join("unknown.yaml");
    std::fs::write(&unknown, "issuers: []\nlisten: { grcp: 1 }\n").unwrap();
    let out = Command::new(authz_bin())
        .args(["check-config", "--config"])
        .arg(&unknown)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("listen.grcp"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_runs_from_a_config_file_and_exits_zero_on_sigterm() {
    let k = key(jsonwebtoken::Algorithm::ES256, "k1");
    let jwks = JwksServer::start(&[&k]).await;
    let dir = tempfile::tempdir().unwrap();
    let (grpc_port, http_port) = (free_port(), free_port());
    let yaml = config_yaml(&jwks, "  refresh_min: 1s")
        .replace("grpc: 127.0.0.1:0", &format!("grpc: 127.0.0.1:{grpc_port}"))
        .replace("http: 127.0.0.1:0", &format!("http: 127.0.0.1:{http_port}"));
    let cfg = dir.path().join("citadel-authz.yaml");
    std::fs::write(&cfg, format!("{yaml}decision_log: all\n")).unwrap();
    let mut cmd = Command::new(authz_bin());
    cmd.args(["--log-format", "json", "serve", "--config"])
        .arg(&cfg);
    let mut guard = ChildGuard::spawn("citadel-authz serve", cmd, dir.path().join("serve.log"));
    let readyz = format!("http://127.0.0.1:{http_port}/readyz");
    eventually(Duration::from_secs(20), "serve ready", || async {
        (reqwest::get(&readyz).await.ok()?.status() == 200).then_some(())
    })
    .await;
    let token = k.mint(&claims(&jwks.issuer(), "alice", "acme", &["reader"]));
    let req = citadel_authz::cli::client::check_request(
        "GET",
        "/api/orders/1",
        &[("authorization".into(), format!("Bearer {token}"))],
    );
    let resp = citadel_authz::cli::client::check(format!("http://127.0.0.1:{grpc_port}"), req)
        .await
        .unwrap();
    assert_eq!(status_of(&resp), 200);
    let denied = citadel_authz::cli::client::check_request(
        "GET",
        "/api/admin/x?secret=1",
        &[("authorization".into(), format!("Bearer {token}"))],
    );
    let resp = citadel_authz::cli::client::check(format!("http://127.0.0.1:{grpc_port}"), denied)
        .await
        .unwrap();
    assert_eq!(status_of(&resp), 403);
    let status = guard
        .terminate(Duration::from_secs(15))
        .expect("exits after SIGTERM");
    assert!(status.success(), "{status:?}");
    // JSON logs: every line parses.
    let log = guard.log_text();
    assert!(log.lines().count() > 0);
    let events: Vec<serde_json::Value> = log
        .lines()
        .map(|line| {
            serde_json::from_str::<serde_json::Value>(line)
                .unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
        })
        .collect();
    // One structured decision event per check (`decision_log: all` includes allows), under its
    // own target; the token and the query string never appear.
    let decisions: Vec<&serde_json::Value> = events
        .iter()
        .filter(|e| e["target"] == "citadel_authz::decision")
        .collect();
    assert_eq!(decisions.len(), 2, "{log}");
    assert_eq!(decisions[0]["outcome"], "allow");
    assert_eq!(decisions[0]["rule"], "orders-read");
    assert_eq!(decisions[0]["sub"], "alice");
    assert_eq!(decisions[0]["tenant"], "acme");
    assert_eq!(decisions[0]["issuer"], "iam");
    assert_eq!(decisions[0]["method"], "GET");
    assert_eq!(decisions[0]["path"], "/api/orders/1");
    assert!(decisions[0]["latency_us"].is_u64());
    assert_eq!(decisions[1]["outcome"], "insufficient_scope");
    assert_eq!(decisions[1]["rule"], "admin");
    assert_eq!(decisions[1]["path"], "/api/admin/x");
    assert!(!log.contains(&token[token.len() - 16..]) && !log.contains("secret=1"));
}

/// One example command of the banner: the shell text and what the banner says it answers.
struct Annotated {
    command: String,
    status: u16,
    /// `allow` or the body's `error`.
    error: String,
}

/// The `check …  # 403 insufficient_scope (rule x)` lines of a banner.
fn annotated_checks(banner: &str) -> Vec<Annotated> {
    banner
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("check ") && !l.starts_with("check()"))
        .map(|l| {
            let (command, note) = l.split_once(" # ").unwrap();
            let mut words = note.split_whitespace();
            Annotated {
                command: command.trim().to_owned(),
                status: words.next().unwrap().parse().unwrap(),
                error: words.next().unwrap().to_owned(),
            }
        })
        .collect()
}

/// Run banner lines in `sh` after the banner's own `export …` lines and `check()` function, as a
/// user pasting them would.
fn run_pasted(banner: &str, command: &str) -> String {
    let mut script: Vec<&str> = banner
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("export ") || l.starts_with("check() {"))
        .collect();
    script.push(command);
    let out = Command::new("sh")
        .arg("-c")
        .arg(script.join("\n"))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_with_a_config_prints_its_policy_and_the_answers_the_server_gives() {
    let k = key(jsonwebtoken::Algorithm::ES256, "k1");
    let jwks = JwksServer::start(&[&k]).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("citadel-authz.yaml");
    std::fs::write(
        &cfg,
        format!(
            "listen: {{ grpc: 127.0.0.1:0, http: 127.0.0.1:0 }}\nissuers:\n  - name: iam\n    issuer: {}\n    jwks_uri: {}\n    audiences: [api]\npolicy:\n  file: policy.yaml\n",
            jwks.issuer(),
            jwks.jwks_uri()
        ),
    )
    .unwrap();
    // Nothing like the built-in policy: other paths, a tenant parameter not called `tenant`, a
    // role no persona has, and a rule for another issuer (the old fixed banner promised
    // `insufficient_scope` where such a rule answers `forbidden`).
    std::fs::write(
        dir.path().join("policy.yaml"),
        r#"rules:
  - name: status
    paths: [/status, /version]
    public: true
  - name: docs-read
    paths: [/orgs/{org}/docs/{doc}]
    methods: [GET]
    tenant_param: org
    roles_any: [member, reader]
  - name: docs-write
    paths: [/orgs/{org}/docs/**]
    methods: [PUT, DELETE]
    tenant_param: org
    roles_all: [editor]
  - name: billing
    paths: [/billing/**]
    roles_any: ["orders:write"]
  - name: ops
    paths: [/ops/**]
    roles_all: [admin]
    issuers: [iam]
  - name: profile
    paths: [/me]
"#,
    )
    .unwrap();
    let cfg_arg = cfg.to_str().unwrap();
    let mut dev = start_dev_with(&["dev", "--config", cfg_arg]);
    let banner = dev.banner.clone();

    // The rules as written: name, methods, paths, requirement.
    for (name, methods, paths, requirement) in [
        ("status", "any", "/status /version", "public"),
        (
            "docs-read",
            "GET",
            "/orgs/{org}/docs/{doc}",
            "tenant_param: org; roles_any: member, reader",
        ),
        (
            "docs-write",
            "PUT,DELETE",
            "/orgs/{org}/docs/**",
            "tenant_param: org; roles_all: editor",
        ),
        ("billing", "any", "/billing/**", "roles_any: orders:write"),
        ("ops", "any", "/ops/**", "issuers: iam; roles_all: admin"),
        ("profile", "any", "/me", "any valid token"),
    ] {
        let line = banner
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("rule {name} not shown:\n{banner}"));
        let cells: Vec<&str> = line
            .split("  ")
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .collect();
        assert_eq!(cells, [name, methods, paths, requirement], "{line}");
    }
    assert!(banner.contains("policy.yaml (6 rules"), "{banner}");

    // Every annotated command, pasted into a shell, gets the answer the banner announces.
    let checks = annotated_checks(&banner);
    assert!(checks.len() >= 7, "{banner}");
    for c in &checks {
        let out = run_pasted(&banner, &c.command);
        let (body, status) = out.trim_end().rsplit_once(' ').unwrap_or(("", out.trim()));
        assert_eq!(status, c.status.to_string(), "{}: {out}", c.command);
        if c.error == "allow" {
            assert!(body.trim().is_empty(), "{}: {out}", c.command);
        } else {
            let body: serde_json::Value = serde_json::from_str(body).unwrap();
            assert_eq!(body["error"], c.error.as_str(), "{}", c.command);
        }
    }
    // The examples show each kind of answer this policy gives to the personas.
    let kinds: std::collections::HashSet<(u16, &str)> = checks
        .iter()
        .map(|c| (c.status, c.error.as_str()))
        .collect();
    for kind in [
        (200, "allow"),
        (401, "unauthorized"),
        (403, "insufficient_scope"),
        (403, "forbidden"),
    ] {
        assert!(kinds.contains(&kind), "no {kind:?} example:\n{banner}");
    }
    assert!(
        checks
            .iter()
            .any(|c| c.command.contains("/ops/42") && c.error == "forbidden"),
        "{banner}"
    );

    // The identity-header and gRPC lines work as printed too.
    let line = |prefix: &str| {
        banner
            .lines()
            .map(str::trim)
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix} line:\n{banner}"))
            .split_once("   # ")
            .unwrap()
    };
    let (command, _) = line("curl -si");
    let headers = run_pasted(&banner, command);
    assert!(
        headers.to_ascii_lowercase().contains("x-user-id: bob"),
        "{headers}"
    );
    let (command, note) = line(&format!("{} check", authz_bin().display()));
    let out = run_pasted(&banner, command);
    assert!(
        note.starts_with("ALLOW") && out.starts_with("ALLOW"),
        "{command}: {out}"
    );
    assert!(!banner.contains("cargo run"), "{banner}");

    let status = dev.guard.terminate(Duration::from_secs(15)).unwrap();
    assert!(status.success(), "{status:?}");
}

/// Run a command that should exit at once; never wait on it forever.
fn run_to_exit(mut cmd: Command) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("out.log");
    let mut guard = ChildGuard::spawn(
        "citadel-authz",
        std::mem::replace(&mut cmd, Command::new("true")),
        log,
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = guard.child.try_wait().unwrap() {
            return (status.code(), guard.log_text());
        }
        assert!(
            Instant::now() < deadline,
            "still running:\n{}",
            guard.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn dev_refuses_listener_flags_with_a_config_and_a_listener_loopback_cannot_reach() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.yaml");
    std::fs::write(
        &cfg,
        "listen: { grpc: 127.0.0.1:0, http: 127.0.0.1:0 }\nissuers:\n  - issuer: https://iam.example.com\n    jwks_uri: https://iam.example.com/jwks\n    audiences: [api]\n",
    )
    .unwrap();
    for flag in ["--grpc", "--http"] {
        let mut cmd = Command::new(authz_bin());
        cmd.args(["dev", "--config"])
            .arg(&cfg)
            .args([flag, "127.0.0.1:0"]);
        let (code, out) = run_to_exit(cmd);
        assert_eq!(code, Some(2), "{out}");
        assert!(out.contains(flag) && out.contains("--config"), "{out}");
    }
    // A specific non-loopback address: the dev issuer could not fetch its own JWKS from a
    // loopback-only endpoint. Refused before anything binds (the address need not exist here).
    let mut cmd = Command::new(authz_bin());
    cmd.args(["dev", "--grpc", "127.0.0.1:0", "--http", "203.0.113.7:9192"]);
    let (code, out) = run_to_exit(cmd);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("203.0.113.7:9192") && out.contains("loopback"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_token_mints_the_broken_tokens_a_user_wants_to_rehearse() {
    let (mut guard, _, http, _) = start_dev();
    let client = reqwest::Client::new();
    let mint = |body: &'static str| {
        let client = client.clone();
        async move {
            let resp = client
                .post(format!("http://{http}/dev/token"))
                .body(body)
                .send()
                .await
                .unwrap();
            let status = resp.status();
            let json: serde_json::Value =
                serde_json::from_str(&resp.text().await.unwrap()).unwrap();
            (status, json)
        }
    };
    let ask = |token: String| {
        let client = client.clone();
        async move {
            client
                .get(format!("http://{http}/api/iam/check-access"))
                .header("X-Forwarded-Method", "GET")
                .header("X-Forwarded-Uri", "/api/orders/1")
                .header("Authorization", format!("Bearer {token}"))
                .send()
                .await
                .unwrap()
        }
    };
    let cases: &[(&str, u16, &str)] = &[
        (r#"{"roles":["reader"]}"#, 200, ""),
        (r#"{"roles":["reader"],"expires_in":-120}"#, 401, "expired"),
        (r#"{"roles":["reader"],"exp":1000000000}"#, 401, "expired"),
        (r#"{"roles":["reader"],"aud":"someone-else"}"#, 401, "aud"),
        (
            r#"{"roles":["reader"],"aud":["someone-else","citadel-dev"]}"#,
            200,
            "",
        ),
        (r#"{"roles":["reader"],"typ":"id+jwt"}"#, 401, "typ"),
        (r#"{"roles":["reader"],"typ":null}"#, 401, "typ"),
        (r#"{"roles":["reader"],"typ":"at+jwt"}"#, 200, ""),
        (r#"{"roles":["reader"],"nbf":4000000000}"#, 401, "not"),
        (
            r#"{"roles":["reader"],"iss":"https://elsewhere.example"}"#,
            401,
            "issuer",
        ),
        (r#"{"roles":["reader"],"kid":"no-such-key"}"#, 401, "kid"),
        (r#"{"roles":["reader"],"kid":null}"#, 200, ""),
        (r#"{"claims":{"roles":"admin","exp":"soon"}}"#, 401, "exp"),
    ];
    for (body, want, reason) in cases {
        let (status, minted) = mint(body).await;
        assert_eq!(status, 200, "{body}: {minted}");
        let resp = ask(minted["access_token"].as_str().unwrap().to_owned()).await;
        assert_eq!(resp.status(), *want, "{body}");
        if *want == 401 {
            let www = resp.headers()["www-authenticate"]
                .to_str()
                .unwrap()
                .to_owned();
            assert!(www.contains("error=\"invalid_token\""), "{body}: {www}");
            let json: serde_json::Value =
                serde_json::from_str(&resp.text().await.unwrap()).unwrap();
            assert_eq!(json["error"], "invalid_token", "{body}");
            let reason_text = json["reason"].as_str().unwrap().to_ascii_lowercase();
            assert!(reason_text.contains(reason), "{body}: {reason_text}");
        }
    }
    // `claims` replaces any claim, and the identity follows it.
    let (_, minted) =
        mint(r#"{"sub":"carol","roles":["reader"],"claims":{"sub":"dora","tenant_id":"globex"}}"#)
            .await;
    let resp = ask(minted["access_token"].as_str().unwrap().to_owned()).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-user-id"], "dora");
    assert_eq!(resp.headers()["x-tenant-id"], "globex");
    let (_, minted) = mint(r#"{"expires_in":-120}"#).await;
    assert!(minted["expires_in"].as_i64().unwrap() <= -120, "{minted}");

    // Refused bodies: 400 naming the problem.
    let (status, json) = mint(r#"{"sub":"a","expiry":5}"#).await;
    assert_eq!(status, 400);
    assert_eq!(json["error"], "invalid_request");
    assert!(
        json["reason"].as_str().unwrap().contains("`expiry`"),
        "{json}"
    );
    let (status, json) = mint(r#"{"exp":5,"expires_in":5}"#).await;
    assert_eq!(status, 400);
    assert!(
        json["reason"].as_str().unwrap().contains("not both"),
        "{json}"
    );
    let (status, _) = mint(r#"{"aud":7}"#).await;
    assert_eq!(status, 400);
    assert!(guard.terminate(Duration::from_secs(15)).unwrap().success());
}

/// A non-loopback address of this machine, if it has one: the source address of a UDP socket
/// pointed at a public address (nothing is sent), else the first of `hostname -I`.
fn non_loopback_address() -> Option<std::net::IpAddr> {
    let usable = |ip: std::net::IpAddr| !ip.is_loopback() && !ip.is_unspecified() && ip.is_ipv4();
    let udp = std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| {
            s.connect("192.0.2.255:9")
                .or_else(|_| s.connect("8.8.8.8:53"))
                .map(|()| s)
        })
        .and_then(|s| s.local_addr())
        .ok()
        .map(|a| a.ip())
        .filter(|ip| usable(*ip));
    udp.or_else(|| {
        let out = Command::new("hostname").arg("-I").output().ok()?;
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter_map(|w| w.parse().ok())
            .find(|ip| usable(*ip))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_endpoints_answer_only_loopback_peers_whatever_the_listener_binds() {
    let Some(ip) = non_loopback_address() else {
        // The same check is proven on the handler with constructed peers:
        // dev::tests::dev_endpoints_answer_loopback_peers_only.
        eprintln!("no non-loopback address on this machine; see the unit test");
        return;
    };
    // Bound to every address: reachable from the network, as a container's config often is.
    let mut dev = start_dev_with(&["dev", "--grpc", "127.0.0.1:0", "--http", "0.0.0.0:0"]);
    let port = dev.http.port();
    let client = reqwest::Client::new();
    let local = format!("http://127.0.0.1:{port}");
    let outside = format!("http://{ip}:{port}");
    // The listener does answer on the outside address: the 403s below are the peer check.
    assert_eq!(
        reqwest::get(format!("{outside}/healthz"))
            .await
            .unwrap()
            .status(),
        200
    );
    for (base, want) in [(&local, 200), (&outside, 403)] {
        let minted = client
            .post(format!("{base}/dev/token"))
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(minted.status(), want, "{base}/dev/token");
        let text = minted.text().await.unwrap();
        assert_eq!(text.contains("access_token"), want == 200, "{text}");
        let keys = client.get(format!("{base}/dev/jwks")).send().await.unwrap();
        assert_eq!(keys.status(), want, "{base}/dev/jwks");
        // A forwarded header claiming loopback changes nothing.
        let spoofed = client
            .post(format!("{base}/dev/token"))
            .header("X-Forwarded-For", "127.0.0.1")
            .header("X-Real-IP", "127.0.0.1")
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(spoofed.status(), want, "{base}/dev/token spoofed");
    }
    // The server fetched its own JWKS over loopback: the dev issuer is ready.
    eventually(Duration::from_secs(20), "dev ready", || async {
        (reqwest::get(format!("{local}/readyz")).await.ok()?.status() == 200).then_some(())
    })
    .await;
    assert!(
        dev.guard
            .terminate(Duration::from_secs(15))
            .unwrap()
            .success()
    );
}

/// The built-in example shows the membership store: dana's token says tenant acme, the built-in
/// memberships make her admin in globex. The banner's command, pasted, gets what it promises.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_mode_demonstrates_a_cross_tenant_membership_from_the_store() {
    let (_guard, _grpc, http, banner) = start_dev();
    let readyz = format!("http://{http}/readyz");
    eventually(Duration::from_secs(20), "dev ready", || async {
        (reqwest::get(&readyz).await.ok()?.status() == 200).then_some(())
    })
    .await;
    assert!(
        banner.contains("# dana, tenant acme, roles member; membership store: globex: admin"),
        "{banner}"
    );
    let section = banner
        .split("Membership store — built-in memberships")
        .nth(1)
        .unwrap_or_else(|| panic!("no membership section: {banner}"));
    let line = section
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("check "))
        .unwrap();
    assert!(
        line.contains("/api/tenants/globex/")
            && line.contains("$CONSULTANT_TOKEN")
            && line.contains("# 200 allow"),
        "{line}"
    );
    assert!(
        section.contains("x-tenant-id: globex, x-user-roles: member,admin"),
        "{section}"
    );
    let command = line.split(" # ").next().unwrap();
    assert_eq!(
        run_pasted(&banner, command).trim().rsplit(' ').next(),
        Some("200")
    );

    let dana = exported(&banner, "CONSULTANT_TOKEN");
    let ask = |uri: &'static str| {
        reqwest::Client::new()
            .get(format!("http://{http}/api/iam/check-access"))
            .header("X-Forwarded-Method", "GET")
            .header("X-Forwarded-Uri", uri)
            .header("Authorization", format!("Bearer {dana}"))
            .send()
    };
    let resp = ask("/api/tenants/globex/reports").await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-tenant-id"], "globex");
    assert_eq!(resp.headers()["x-user-roles"], "member,admin");
    // Admin in globex only: the admin rule has no tenant parameter, so her token's tenant (acme)
    // is the request tenant, where the store gives her nothing.
    assert_eq!(ask("/api/admin/users").await.unwrap().status(), 403);
    let resp = ask("/api/tenants/acme/reports").await.unwrap();
    assert_eq!(resp.headers()["x-user-roles"], "member");
}

/// `POST /dev/token {"format": "opaque"}` mints an opaque token that the dev issuer introspects
/// at `/dev/introspect` through the ordinary RFC 7662 client: the README's opaque example, end
/// to end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_mode_mints_opaque_tokens_that_it_introspects() {
    let (_guard, _grpc, http, banner) = start_dev();
    assert!(banner.contains(r#""format":"opaque""#), "{banner}");
    let client = reqwest::Client::new();
    let mint = |body: &'static str| {
        client
            .post(format!("http://{http}/dev/token"))
            .body(body)
            .send()
    };
    let minted: serde_json::Value = serde_json::from_str(
        &mint(r#"{"format":"opaque","sub":"carol","tenant_id":"acme","roles":["reader"]}"#)
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    )
    .unwrap();
    let token = minted["access_token"].as_str().unwrap().to_owned();
    assert_eq!(token.matches('.').count(), 0, "opaque, not a JWT: {token}");
    let check = |token: String| {
        client
            .get(format!("http://{http}/api/iam/check-access"))
            .header("X-Forwarded-Method", "GET")
            .header("X-Forwarded-Uri", "/api/orders/7")
            .header("Authorization", format!("Bearer {token}"))
            .send()
    };
    let resp = check(token.clone()).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-user-id"], "carol");
    assert_eq!(resp.headers()["x-tenant-id"], "acme");
    assert_eq!(resp.headers()["x-user-roles"], "reader");
    // A made-up opaque token is not active: 401 invalid_token.
    let resp = check("not-a-real-token-0123456789".to_owned())
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let body: serde_json::Value = serde_json::from_str(&resp.text().await.unwrap()).unwrap();
    assert_eq!(body["error"], "invalid_token");
    assert!(
        body["reason"].as_str().unwrap().contains("not active"),
        "{body}"
    );
    // An expired one is refused too (its answer is `active: false`).
    let minted: serde_json::Value = serde_json::from_str(
        &mint(r#"{"format":"opaque","sub":"carol","expires_in":-5}"#)
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    )
    .unwrap();
    let expired = minted["access_token"].as_str().unwrap().to_owned();
    assert_eq!(check(expired).await.unwrap().status(), 401);
}
