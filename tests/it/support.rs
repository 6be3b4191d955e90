//! Test harness: real things on port 0. A JWKS/discovery server with fetch counters and
//! switchable behaviour, an echo upstream, the server in-process or as the real binary, child
//! processes killed on drop, and polling with a deadline (never a bare sleep to wait for
//! readiness).

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use citadel_authz::core::signer::SigningKey;
use envoy_types::ext_authz::v3::pb::{CheckResponse, HttpResponse};
use jsonwebtoken::Algorithm;
use serde_json::{Value, json};

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Poll `f` until it returns `Some`, or panic with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// How the JWKS endpoint answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Serve,
    /// HTTP 500.
    Fail,
    /// Accept and never answer (tests fetch_timeout).
    Hang,
}

struct JwksInner {
    keys: Vec<Value>,
    max_age: Option<u64>,
    mode: Mode,
    /// `jwks_uri` announced by discovery (defaults to this server's /jwks).
    discovered_jwks_uri: Option<String>,
}

/// A real HTTP JWKS (and OIDC discovery) server on 127.0.0.1:0.
#[derive(Clone)]
pub struct JwksServer {
    pub addr: SocketAddr,
    inner: Arc<Mutex<JwksInner>>,
    fetches: Arc<AtomicU64>,
    discoveries: Arc<AtomicU64>,
}

impl JwksServer {
    pub async fn start(keys: &[&SigningKey]) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = JwksServer {
            addr,
            inner: Arc::new(Mutex::new(JwksInner {
                keys: keys.iter().map(|k| k.jwk()).collect(),
                max_age: Some(300),
                mode: Mode::Serve,
                discovered_jwks_uri: None,
            })),
            fetches: Arc::new(AtomicU64::new(0)),
            discoveries: Arc::new(AtomicU64::new(0)),
        };
        let app = Router::new()
            .route("/jwks", get(serve_jwks))
            .route("/.well-known/openid-configuration", get(serve_discovery))
            .with_state(server.clone());
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        server
    }

    /// The issuer URL this server plays (discovery lives under it).
    pub fn issuer(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn jwks_uri(&self) -> String {
        format!("http://{}/jwks", self.addr)
    }

    pub fn fetches(&self) -> u64 {
        self.fetches.load(Ordering::SeqCst)
    }

    pub fn discoveries(&self) -> u64 {
        self.discoveries.load(Ordering::SeqCst)
    }

    pub fn set_keys(&self, keys: &[&SigningKey]) {
        self.inner.lock().unwrap().keys = keys.iter().map(|k| k.jwk()).collect();
    }

    pub fn set_raw_keys(&self, keys: Vec<Value>) {
        self.inner.lock().unwrap().keys = keys;
    }

    pub fn set_max_age(&self, max_age: Option<u64>) {
        self.inner.lock().unwrap().max_age = max_age;
    }

    pub fn set_mode(&self, mode: Mode) {
        self.inner.lock().unwrap().mode = mode;
    }

    pub fn set_discovered_jwks_uri(&self, uri: &str) {
        self.inner.lock().unwrap().discovered_jwks_uri = Some(uri.to_owned());
    }
}

async fn serve_jwks(State(s): State<JwksServer>) -> Response {
    s.fetches.fetch_add(1, Ordering::SeqCst);
    let (mode, body, max_age) = {
        let i = s.inner.lock().unwrap();
        (i.mode, json!({ "keys": i.keys }).to_string(), i.max_age)
    };
    match mode {
        Mode::Fail => (StatusCode::INTERNAL_SERVER_ERROR, "boom").into_response(),
        Mode::Hang => {
            std::future::pending::<()>().await;
            unreachable!()
        }
        Mode::Serve => {
            let mut headers = HeaderMap::new();
            headers.insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
            if let Some(age) = max_age {
                headers.insert(
                    header::CACHE_CONTROL,
                    format!("public, max-age={age}").parse().unwrap(),
                );
            }
            (headers, body).into_response()
        }
    }
}

async fn serve_discovery(State(s): State<JwksServer>) -> Response {
    s.discoveries.fetch_add(1, Ordering::SeqCst);
    let uri = s
        .inner
        .lock()
        .unwrap()
        .discovered_jwks_uri
        .clone()
        .unwrap_or_else(|| s.jwks_uri());
    let body = json!({ "issuer": s.issuer(), "jwks_uri": uri });
    (
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// An upstream that answers every request with the request's method, path and headers as JSON
/// (`{"method": ..., "path": ..., "headers": [[name, value], ...]}`), so tests see exactly what a
/// gateway forwarded (repeated headers stay repeated).
pub struct EchoUpstream {
    pub addr: SocketAddr,
}

impl EchoUpstream {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new().fallback(echo);
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        EchoUpstream { addr }
    }
}

async fn echo(req: Request) -> Response {
    let headers: Vec<Value> = req
        .headers()
        .iter()
        .map(|(k, v)| json!([k.as_str(), String::from_utf8_lossy(v.as_bytes())]))
        .collect();
    let body = json!({
        "method": req.method().as_str(),
        "path": req.uri().path_and_query().map(|p| p.as_str()).unwrap_or(""),
        "headers": headers,
    });
    (
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// All values of header `name` in an echo response body.
pub fn echoed(body: &Value, name: &str) -> Vec<String> {
    body["headers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h[0].as_str().unwrap().eq_ignore_ascii_case(name))
        .map(|h| h[1].as_str().unwrap().to_owned())
        .collect()
}

/// Standard test claims for `issuer`.
pub fn claims(issuer: &str, sub: &str, tenant: &str, roles: &[&str]) -> Value {
    json!({
        "iss": issuer, "aud": "api", "sub": sub, "tenant_id": tenant, "roles": roles,
        "iat": now(), "exp": now() + 600,
    })
}

pub fn key(alg: Algorithm, kid: &str) -> SigningKey {
    SigningKey::try_generate(alg, kid).unwrap()
}

/// The policy used by most integration tests (SPEC §3's example plus a public health route).
pub const POLICY: &str = r#"
  rules:
    - name: health
      paths: [/healthz]
      methods: [GET]
      public: true
    - name: orders-read
      paths: [/api/orders/**]
      methods: [GET, HEAD]
      roles_any: [reader, "orders:write"]
    - name: tenant-data
      paths: [/api/tenants/{tenant}/**]
      tenant_param: tenant
      roles_any: [member, admin]
    - name: admin
      paths: [/api/admin/**]
      roles_all: [admin]
      issuers: [iam]
    - name: me
      paths: [/api/me]
"#;

/// A config for one issuer `iam` served by `jwks`, with `extra` YAML appended at top level.
pub fn config_yaml(jwks: &JwksServer, jwks_section: &str) -> String {
    format!(
        r#"
listen:
  grpc: 127.0.0.1:0
  http: 127.0.0.1:0
issuers:
  - name: iam
    issuer: {iss}
    jwks_uri: {uri}
    audiences: [api]
    algorithms: [ES256, RS256, EdDSA]
jwks:
{jwks_section}
policy:
{POLICY}
"#,
        iss = jwks.issuer(),
        uri = jwks.jwks_uri(),
    )
}

/// The sum of a metric's samples in `/metrics` text whose labels include every one of `labels`.
pub fn sample(metrics: &str, name: &str, labels: &[&str]) -> f64 {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter(|l| labels.iter().all(|lab| l.contains(lab)))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum()
}

/// citadel-authz running in this test process.
pub struct InProcess {
    pub running: Option<citadel_authz::Running>,
    pub grpc: SocketAddr,
    pub http: SocketAddr,
}

impl InProcess {
    pub async fn start(yaml: &str) -> Self {
        let config = citadel_authz::Config::from_yaml(yaml, Path::new("."))
            .unwrap_or_else(|e| panic!("config: {e}"));
        let listeners = citadel_authz::Listeners::bind(&config).await.unwrap();
        let running = citadel_authz::start(config, listeners, citadel_authz::Options::default())
            .await
            .unwrap();
        InProcess {
            grpc: running.grpc_addr.unwrap(),
            http: running.http_addr.unwrap(),
            running: Some(running),
        }
    }

    /// Start from a config file, watched for reload like `serve` does.
    pub async fn start_file(path: &Path) -> Self {
        let config = citadel_authz::Config::load(path).unwrap_or_else(|e| panic!("config: {e}"));
        let listeners = citadel_authz::Listeners::bind(&config).await.unwrap();
        let options = citadel_authz::Options {
            config_path: Some(path.to_owned()),
            ..Default::default()
        };
        let running = citadel_authz::start(config, listeners, options)
            .await
            .unwrap();
        InProcess {
            grpc: running.grpc_addr.unwrap(),
            http: running.http_addr.unwrap(),
            running: Some(running),
        }
    }

    pub async fn metrics(&self) -> String {
        reqwest::get(format!("http://{}/metrics", self.http))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub async fn wait_ready(&self) {
        let url = format!("http://{}/readyz", self.http);
        eventually(Duration::from_secs(10), "readyz 200", || async {
            let r = reqwest::get(&url).await.ok()?;
            (r.status() == 200).then_some(())
        })
        .await;
    }

    /// One gRPC Check, as Envoy sends it.
    pub async fn check(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> CheckResponse {
        let list: Vec<(String, String)> = headers
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        citadel_authz::cli::client::check(
            format!("http://{}", self.grpc),
            citadel_authz::cli::client::check_request(method, path, &list),
        )
        .await
        .unwrap()
    }

    pub async fn check_token(&self, path: &str, token: &str) -> CheckResponse {
        self.check(
            "GET",
            path,
            &[("authorization", &format!("Bearer {token}"))],
        )
        .await
    }

    /// Poll until a check of `path` with `token` gets `status` (10 s deadline).
    pub async fn wait_status(&self, path: &str, token: &str, status: u16) {
        eventually(
            Duration::from_secs(10),
            &format!("{status} for {path}"),
            || async { (status_of(&self.check_token(path, token).await) == status).then_some(()) },
        )
        .await;
    }

    pub async fn stop(mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await.unwrap();
        }
    }
}

/// The HTTP status a CheckResponse tells the gateway to send (200 for allow).
pub fn status_of(resp: &CheckResponse) -> u16 {
    match &resp.http_response {
        Some(HttpResponse::OkResponse(_)) => 200,
        Some(HttpResponse::DeniedResponse(d)) => d.status.as_ref().unwrap().code as u16,
        _ => panic!("no http_response in {resp:?}"),
    }
}

/// A header of a CheckResponse: set headers on allow, response headers on deny.
pub fn header_of(resp: &CheckResponse, name: &str) -> Option<String> {
    let list = match &resp.http_response {
        Some(HttpResponse::OkResponse(ok)) => &ok.headers,
        Some(HttpResponse::DeniedResponse(d)) => &d.headers,
        _ => return None,
    };
    list.iter()
        .filter_map(|h| h.header.as_ref())
        .find(|h| h.key.eq_ignore_ascii_case(name))
        .map(|h| h.value.clone())
}

/// Denial body as JSON.
pub fn body_of(resp: &CheckResponse) -> Value {
    match &resp.http_response {
        Some(HttpResponse::DeniedResponse(d)) => serde_json::from_str(&d.body).unwrap(),
        _ => Value::Null,
    }
}

/// A child process killed (and reaped) on drop, with its output going to a log file that is
/// printed if the test fails.
pub struct ChildGuard {
    pub child: Child,
    pub name: String,
    pub log: PathBuf,
}

impl ChildGuard {
    /// Spawn `cmd` with stdout+stderr into `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: PathBuf) -> Self {
        let out = std::fs::File::create(&log).unwrap();
        let err = out.try_clone().unwrap();
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        ChildGuard {
            child,
            name: name.to_owned(),
            log,
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Send SIGTERM and wait (bounded) for the exit status.
    pub fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        // SIGTERM first so a master process (nginx) takes its workers down with it; then SIGKILL.
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(self.child.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(3);
            while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "----- {} log ({}) -----\n{}",
                self.name,
                self.log.display(),
                self.log_text()
            );
        }
    }
}

/// The citadel-authz binary built for these tests.
pub fn authz_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_citadel-authz"))
}

/// A port free right now on 127.0.0.1 (for processes that cannot report a port-0 choice).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Wait until `addr` accepts TCP connections.
pub async fn wait_port(addr: SocketAddr, what: &str) {
    eventually(Duration::from_secs(20), what, || async {
        tokio::net::TcpStream::connect(addr).await.ok().map(|_| ())
    })
    .await;
}

/// The Envoy binary installed by `scripts/install-test-deps.sh` (`CITADEL_TEST_ENVOY` or
/// `.tools/bin/envoy`). Missing Envoy is a failure with a clear message, never a skip.
pub fn envoy_bin() -> PathBuf {
    let path = std::env::var_os("CITADEL_TEST_ENVOY")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools/bin/envoy"));
    assert!(
        path.exists(),
        "Envoy not found at {} — run ./scripts/install-test-deps.sh (the README's test command does)",
        path.display()
    );
    path
}

/// Envoy on `config`, one worker, no hot restart (so parallel tests do not share its domain socket).
pub fn envoy_command(config: &Path) -> Command {
    let mut cmd = Command::new(envoy_bin());
    cmd.arg("-c").arg(config).args([
        "--disable-hot-restart",
        "--concurrency",
        "1",
        "--log-level",
        "info",
    ]);
    cmd
}

/// Start Envoy on `config` (log beside it) and wait until its admin `/ready` on `admin_port`
/// answers 200; an Envoy that exits meanwhile fails the test with its log.
pub async fn start_envoy(config: &Path, admin_port: u16) -> ChildGuard {
    let log = config.with_extension("log");
    let mut guard = ChildGuard::spawn("envoy", envoy_command(config), log);
    let ready = format!("http://127.0.0.1:{admin_port}/ready");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(Some(status)) = guard.child.try_wait() {
            panic!("envoy exited ({status}):\n{}", guard.log_text());
        }
        if let Ok(r) = reqwest::get(&ready).await
            && r.status() == 200
        {
            return guard;
        }
        assert!(
            Instant::now() < deadline,
            "envoy not ready:\n{}",
            guard.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A file of the repository (sample configs are run from where users copy them).
pub fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// Read a sample config and substitute literal strings (ports, paths) — the only difference
/// between what users copy and what the tests run.
pub fn render_sample(rel: &str, substitutions: &[(&str, String)]) -> String {
    let mut text = std::fs::read_to_string(repo_file(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
    for (from, to) in substitutions {
        assert!(
            text.contains(from),
            "{rel} no longer contains {from:?}; update the test's substitutions"
        );
        text = text.replace(from, to);
    }
    text
}
