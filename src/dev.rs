//! `citadel-authz dev`: a zero-setup demo with an embedded development issuer.
//!
//! A fresh ES256 key is generated at start; its JWKS is served at `/dev/jwks` on the HTTP listener
//! and fetched from there by the ordinary JWKS machinery (nothing is short-circuited), and
//! `POST /dev/token` mints tokens. None of this exists under `serve`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use jsonwebtoken::Algorithm;
use serde::Deserialize;
use serde_json::json;

use crate::config::{ClaimPaths, IssuerConfig, JwksSource};
use crate::signer::{KeyGenError, SigningKey};

/// Audience of every dev token.
pub const DEV_AUDIENCE: &str = "citadel-dev";
/// Issuer name of the dev issuer (usable in a policy's `issuers:`).
pub const DEV_ISSUER_NAME: &str = "dev";
const TOKEN_LIFETIME: Duration = Duration::from_secs(3600);

/// The built-in example policy used when `dev` runs without `--config`.
pub const EXAMPLE_POLICY: &str = r#"rules:
  - name: health
    paths: [/healthz]
    methods: [GET]
    public: true
  - name: orders-read
    paths: [/api/orders/**]
    methods: [GET, HEAD]
    roles_any: [reader, "orders:write", admin]
  - name: orders-write
    paths: [/api/orders/**]
    methods: [POST, PUT, PATCH, DELETE]
    roles_any: ["orders:write", admin]
  - name: tenant-data
    paths: [/api/tenants/{tenant}/**]
    tenant_param: tenant
    roles_any: [member, admin]
  - name: admin
    paths: [/api/admin/**]
    roles_all: [admin]
  - name: me
    paths: [/api/me]
"#;

/// The development issuer: its key and where it lives.
pub struct DevIssuer {
    key: SigningKey,
    pub issuer: String,
}

impl DevIssuer {
    /// Generate a key; the issuer URL is derived from the HTTP listener's address.
    pub fn new(http: SocketAddr) -> Result<Self, KeyGenError> {
        Ok(DevIssuer {
            key: SigningKey::try_generate(Algorithm::ES256, "dev-1")?,
            issuer: format!("http://{}/dev", reachable(http)),
        })
    }

    /// The issuer's config: ES256 only, audience `citadel-dev`, JWKS from this server.
    pub fn issuer_config(&self) -> IssuerConfig {
        IssuerConfig {
            name: DEV_ISSUER_NAME.to_owned(),
            issuer: self.issuer.clone(),
            source: JwksSource::Uri(format!("{}/jwks", self.issuer)),
            allow_http: false,
            audiences: vec![DEV_AUDIENCE.to_owned()],
            algorithms: vec![Algorithm::ES256],
            leeway: Duration::from_secs(30),
            token_types: Vec::new(),
            claims: ClaimPaths {
                user_id: vec!["sub".into()],
                tenant_id: vec!["tenant_id".into()],
                roles: vec![vec!["roles".into()]],
            },
        }
    }

    /// A signed token for these claims, valid for one hour.
    pub fn mint(&self, sub: Option<&str>, tenant_id: Option<&str>, roles: &[String]) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut claims = json!({
            "iss": self.issuer,
            "aud": DEV_AUDIENCE,
            "iat": now,
            "exp": now + TOKEN_LIFETIME.as_secs(),
            "roles": roles,
        });
        if let Some(sub) = sub {
            claims["sub"] = json!(sub);
        }
        if let Some(t) = tenant_id {
            claims["tenant_id"] = json!(t);
        }
        self.key.mint(&claims)
    }

    /// `/dev/jwks` and `/dev/token`.
    pub fn routes(self: Arc<Self>) -> Router {
        Router::new()
            .route("/dev/jwks", get(jwks))
            .route("/dev/token", post(token))
            .with_state(self)
    }
}

/// An address this machine can connect to for a listener bound to `addr`.
fn reachable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), addr.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), addr.port())
        }
        _ => addr,
    }
}

async fn jwks(State(dev): State<Arc<DevIssuer>>) -> Response {
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        json!({ "keys": [dev.key.jwk()] }).to_string(),
    )
        .into_response()
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenRequest {
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    tenant_id: Option<String>,
    #[serde(default)]
    roles: Vec<String>,
}

async fn token(State(dev): State<Arc<DevIssuer>>, body: axum::body::Bytes) -> Response {
    let req: TokenRequest = if body.iter().all(u8::is_ascii_whitespace) {
        TokenRequest::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(r) => r,
            Err(e) => {
                return (
                    StatusCode::BAD_REQUEST,
                    [(header::CONTENT_TYPE, "application/json")],
                    json!({ "error": "invalid_request", "reason": format!("body: {e}") })
                        .to_string(),
                )
                    .into_response();
            }
        }
    };
    let token = dev.mint(req.sub.as_deref(), req.tenant_id.as_deref(), &req.roles);
    (
        [(header::CONTENT_TYPE, "application/json")],
        json!({ "access_token": token, "token_type": "Bearer", "expires_in": TOKEN_LIFETIME.as_secs() }).to_string(),
    )
        .into_response()
}

/// The text printed at start: personas with tokens and commands that show an allow and a deny.
pub fn banner(dev: &DevIssuer, grpc: Option<SocketAddr>, http: SocketAddr) -> String {
    let http = reachable(http);
    let admin = dev.mint(Some("alice"), Some("acme"), &["admin".into()]);
    let reader = dev.mint(
        Some("bob"),
        Some("acme"),
        &["reader".into(), "member".into()],
    );
    let service = dev.mint(Some("svc-billing"), None, &["orders:write".into()]);
    let grpc_line = grpc.map_or_else(String::new, |g| {
        format!("  gRPC ext_authz  {}\n", reachable(g))
    });
    let check = format!(
        "curl -s -o /dev/null -w '%{{http_code}}\\n' http://{http}/api/iam/check-access -H 'X-Forwarded-Method: GET'"
    );
    let grpc_try = grpc.map_or_else(String::new, |g| {
        format!(
            "\nThe same over gRPC, as Envoy asks it:\n  cargo run --release -q -- check --grpc {} --method GET --path /api/orders/42 --token \"$READER_TOKEN\"\n",
            reachable(g)
        )
    });
    format!(
        r#"
citadel-authz dev — development issuer {iss} (ES256 key generated at start; audience {DEV_AUDIENCE})
{grpc_line}  HTTP            http://{http}  (/healthz /readyz /api/iam/check-access /dev/jwks /dev/token)

Personas (tokens valid 1h) — paste these into your shell:
  export ADMIN_TOKEN={admin}      # alice, tenant acme, roles admin
  export READER_TOKEN={reader}      # bob, tenant acme, roles reader,member
  export SERVICE_TOKEN={service}      # svc-billing (client credentials), roles orders:write

Try it (forward-auth, the same decision Envoy gets over gRPC):
  {check} -H 'X-Forwarded-Uri: /api/orders/42' -H "Authorization: Bearer $READER_TOKEN"     # 200
  curl -si http://{http}/api/iam/check-access -H 'X-Forwarded-Method: GET' -H 'X-Forwarded-Uri: /api/tenants/acme/files' -H "Authorization: Bearer $READER_TOKEN" | grep -i '^x-'   # identity headers
  {check} -H 'X-Forwarded-Uri: /api/admin/users' -H "Authorization: Bearer $READER_TOKEN"   # 403 insufficient_scope
  {check} -H 'X-Forwarded-Uri: /api/tenants/globex/files' -H "Authorization: Bearer $ADMIN_TOKEN"   # 403 other tenant
  {check} -H 'X-Forwarded-Uri: /api/orders/42'   # 401 no token
{grpc_try}
Mint your own:
  curl -s http://{http}/dev/token -d '{{"sub":"carol","tenant_id":"globex","roles":["member"]}}'
"#,
        iss = dev.issuer,
    )
}
