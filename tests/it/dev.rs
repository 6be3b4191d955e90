//! The real binary: `dev` mode's printed tokens and commands, `check`, `check-config`, and a
//! clean exit on SIGTERM.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;

/// Run `citadel-authz dev` on free ports; return the child and what the banner printed.
fn start_dev() -> (ChildGuard, SocketAddr, SocketAddr, String) {
    let dir = tempfile::tempdir().unwrap().keep();
    let mut cmd = Command::new(authz_bin());
    cmd.args(["dev", "--grpc", "127.0.0.1:0", "--http", "127.0.0.1:0"]);
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
    while !banner.contains("Mint your own") {
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
    (guard, grpc, http, banner)
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
    let req = citadel_authz::client::check_request(
        "GET",
        "/api/orders/1",
        &[("authorization".into(), format!("Bearer {token}"))],
    );
    let resp = citadel_authz::client::check(format!("http://127.0.0.1:{grpc_port}"), req)
        .await
        .unwrap();
    assert_eq!(status_of(&resp), 200);
    let denied = citadel_authz::client::check_request(
        "GET",
        "/api/admin/x?secret=1",
        &[("authorization".into(), format!("Bearer {token}"))],
    );
    let resp = citadel_authz::client::check(format!("http://127.0.0.1:{grpc_port}"), denied)
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
