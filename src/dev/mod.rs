//! `citadel-authz dev`: a zero-setup demo with an embedded development issuer.
//!
//! A fresh ES256 key is generated at start; its JWKS is served at `/dev/jwks` on the HTTP listener
//! and fetched from there by the ordinary JWKS machinery (nothing is short-circuited), and
//! `POST /dev/token` mints tokens, also the broken ones a user wants to rehearse (expired, wrong
//! audience, wrong `typ`…). Both answer loopback clients only, whatever address the listener is
//! bound to: a dev mode reachable from the network must not hand out tokens to it. None of this
//! exists under `serve`.
//!
//! The banner printed at start is derived from the policy actually loaded: its rules, and for each
//! example command the answer of the same decision core the server uses
//! ([`crate::serve::authorizer::check`]), so the annotations hold for any policy. Without `--config`, a
//! built-in memberships file ([`EXAMPLE_MEMBERSHIPS`]) shows the membership store (SPEC §8): a
//! persona whose token says tenant `acme` is also `admin` in `globex` because the store says so.

pub mod opaque;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{ConnectInfo, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use jsonwebtoken::Algorithm;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value, json};

use crate::core::config::{
    ClaimPaths, ConfigError, IssuerConfig, JwksSource, MembershipConfig, MembershipSource,
};
use crate::core::decision::{Decision, Outcome, identity_headers};
use crate::core::policy::Rule;
use crate::core::signer::{KeyGenError, SigningKey};
use crate::serve::authorizer::{self, AuthHeader, Authorizer, CheckInput, Runtime};

/// Audience of every dev token.
pub const DEV_AUDIENCE: &str = "citadel-dev";
/// Issuer name of the dev issuer (usable in a policy's `issuers:`).
pub const DEV_ISSUER_NAME: &str = "dev";
/// `typ` values the dev issuer accepts, so that a token with another `typ` can be rehearsed.
pub const DEV_TOKEN_TYPES: [&str; 2] = ["at+jwt", "jwt"];
const TOKEN_LIFETIME: Duration = Duration::from_secs(3600);
/// How long the banner waits for the server to load the dev issuer's own JWKS.
const KEYS_DEADLINE: Duration = Duration::from_secs(10);
/// Rules that get an example command; a longer policy is listed whole but sampled.
const MAX_RULE_EXAMPLES: usize = 8;
/// The tenant of the personas, and one they do not belong to.
const HOME_TENANT: &str = "acme";
const OTHER_TENANT: &str = "globex";
/// What stands in for a `{param}`, `*` or `**` segment in an example path.
const FILLER: &str = "42";

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

/// The built-in memberships used when `dev` runs without `--config`: dana's token says tenant
/// `acme`, the store also makes her `admin` in `globex`.
pub const EXAMPLE_MEMBERSHIPS: &str = r#"members:
  - subject: dana
    tenants:
      globex: [admin]
"#;

/// The membership store of the built-in example: [`EXAMPLE_MEMBERSHIPS`] as a memberships file
/// with the default cache settings (unused by a file, which is read into memory).
pub fn example_membership() -> Result<MembershipConfig, ConfigError> {
    let table =
        crate::core::config::parse_memberships(EXAMPLE_MEMBERSHIPS, "built-in memberships", &[])?;
    Ok(MembershipConfig {
        source: MembershipSource::File {
            path: "built-in memberships".into(),
            table: Arc::new(table),
        },
        issuers: Vec::new(),
        cache_ttl: Duration::from_secs(30),
        max_stale: Duration::from_secs(300),
        capacity: 100_000,
    })
}

/// A ready-made identity printed with a token at start.
#[derive(Debug, Clone, Copy)]
pub struct Persona {
    /// Shell variable the token is exported as.
    pub var: &'static str,
    pub sub: &'static str,
    pub tenant: Option<&'static str>,
    pub roles: &'static [&'static str],
    pub about: &'static str,
}

/// The personas, least privileged first: an example shows the first one the policy lets through.
pub const PERSONAS: [Persona; 4] = [
    Persona {
        var: "READER_TOKEN",
        sub: "bob",
        tenant: Some(HOME_TENANT),
        roles: &["reader", "member"],
        about: "",
    },
    Persona {
        var: "SERVICE_TOKEN",
        sub: "svc-billing",
        tenant: None,
        roles: &["orders:write"],
        about: " (client credentials)",
    },
    Persona {
        var: "ADMIN_TOKEN",
        sub: "alice",
        tenant: Some(HOME_TENANT),
        roles: &["admin"],
        about: "",
    },
    Persona {
        var: "CONSULTANT_TOKEN",
        sub: "dana",
        tenant: Some(HOME_TENANT),
        roles: &["member"],
        about: "",
    },
];

/// The development issuer: its key and where it lives.
pub struct DevIssuer {
    key: SigningKey,
    pub issuer: String,
    /// Opaque tokens it mints and introspects itself (`None` if no random client secret could
    /// be made: then only JWTs).
    opaque: Option<Arc<opaque::OpaqueTokens>>,
}

impl DevIssuer {
    /// Generate a key; the issuer URL is derived from the HTTP listener's address.
    pub fn new(http: SocketAddr) -> Result<Self, KeyGenError> {
        Ok(DevIssuer {
            key: SigningKey::try_generate(Algorithm::ES256, "dev-1")?,
            issuer: format!("http://{}/dev", reachable(http)),
            opaque: opaque::OpaqueTokens::new().map(Arc::new),
        })
    }

    /// The issuer's config: ES256 only, audience `citadel-dev`, `typ` at+jwt or JWT, JWKS from
    /// this server, opaque tokens introspected at this server's `/dev/introspect`.
    pub fn issuer_config(&self) -> IssuerConfig {
        IssuerConfig {
            name: DEV_ISSUER_NAME.to_owned(),
            issuer: self.issuer.clone(),
            source: JwksSource::Uri(format!("{}/jwks", self.issuer)),
            allow_http: false,
            audiences: vec![DEV_AUDIENCE.to_owned()],
            algorithms: vec![Algorithm::ES256],
            leeway: Duration::from_secs(30),
            token_types: DEV_TOKEN_TYPES.iter().map(|t| (*t).to_owned()).collect(),
            claims: ClaimPaths {
                user_id: vec!["sub".into()],
                tenant_id: vec!["tenant_id".into()],
                roles: vec![vec!["roles".into()]],
            },
            introspection: self
                .opaque
                .as_ref()
                .map(|o| o.introspection_config(&self.issuer)),
        }
    }

    /// A token as `req` asks, issued at `now` (seconds since the epoch): a signed JWT, or with
    /// `format: opaque` a random opaque token standing for the same claims.
    pub fn mint(&self, req: &TokenRequest, now: i64) -> Result<Minted, TokenRequestError> {
        let exp = match (req.exp, req.expires_in) {
            (Some(_), Some(_)) => return Err(TokenRequestError::ExpTwice),
            (Some(exp), None) => exp,
            (None, Some(secs)) => now
                .checked_add(secs)
                .ok_or(TokenRequestError::OutOfRange("expires_in"))?,
            (None, None) => now.saturating_add(TOKEN_LIFETIME.as_secs() as i64),
        };
        let mut claims = Map::new();
        claims.insert(
            "iss".into(),
            json!(req.iss.as_deref().unwrap_or(&self.issuer)),
        );
        let aud = match &req.aud {
            None => json!(DEV_AUDIENCE),
            Some(aud @ Value::String(_)) => aud.clone(),
            Some(Value::Array(list)) if list.iter().all(Value::is_string) => {
                Value::Array(list.clone())
            }
            Some(_) => return Err(TokenRequestError::Audience),
        };
        claims.insert("aud".into(), aud);
        claims.insert("iat".into(), json!(now));
        claims.insert("exp".into(), json!(exp));
        if let Some(nbf) = req.nbf {
            claims.insert("nbf".into(), json!(nbf));
        }
        if let Some(sub) = &req.sub {
            claims.insert("sub".into(), json!(sub));
        }
        if let Some(t) = &req.tenant_id {
            claims.insert("tenant_id".into(), json!(t));
        }
        claims.insert("roles".into(), json!(req.roles));
        // Last, so that any claim can be replaced by a value of any type (rehearsing a
        // `tenant_id` that is a number, an `exp` that is a string…).
        if let Some(extra) = &req.claims {
            claims.extend(extra.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        if req.format == Some(TokenFormat::Opaque) {
            let store = self.opaque.as_ref().ok_or(TokenRequestError::NoOpaque)?;
            let token = store
                .mint(claims, now)
                .map_err(|e| TokenRequestError::Opaque(e.to_string()))?;
            return Ok(Minted { token, exp });
        }
        let mut head = Map::new();
        head.insert("alg".into(), json!(format!("{:?}", self.key.alg)));
        match &req.kid {
            None => {
                head.insert("kid".into(), json!(self.key.kid));
            }
            Some(Some(kid)) => {
                head.insert("kid".into(), json!(kid));
            }
            Some(None) => {}
        }
        match &req.typ {
            None => {
                head.insert("typ".into(), json!("JWT"));
            }
            Some(Some(typ)) => {
                head.insert("typ".into(), json!(typ));
            }
            Some(None) => {}
        }
        let token = self.key.sign_raw(
            &Value::Object(head).to_string(),
            &Value::Object(claims).to_string(),
        );
        Ok(Minted { token, exp })
    }

    /// A persona's token, valid for an hour from `now`.
    pub fn mint_persona(&self, p: &Persona, now: i64) -> String {
        let req = TokenRequest {
            sub: Some(p.sub.to_owned()),
            tenant_id: p.tenant.map(str::to_owned),
            roles: p.roles.iter().map(|r| (*r).to_owned()).collect(),
            ..TokenRequest::default()
        };
        // Only an `exp`/`expires_in` conflict or a bad `aud` can fail, and a persona has neither.
        self.mint(&req, now).map(|m| m.token).unwrap_or_default()
    }

    /// `/dev/jwks`, `/dev/token` and `/dev/introspect`.
    pub fn routes(self: Arc<Self>) -> Router {
        let opaque = self.opaque.clone();
        let router = Router::new()
            .route("/dev/jwks", get(jwks))
            .route("/dev/token", post(token))
            .with_state(self);
        match opaque {
            Some(o) => router.merge(o.routes()),
            None => router,
        }
    }
}

/// A minted token and its `exp`.
#[derive(Debug)]
pub struct Minted {
    pub token: String,
    pub exp: i64,
}

/// The JSON body of `POST /dev/token`; every field is optional, unknown ones are refused.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    sub: Option<String>,
    tenant_id: Option<String>,
    #[serde(default)]
    roles: Vec<String>,
    /// Absolute expiry, seconds since the epoch (may be in the past).
    exp: Option<i64>,
    /// Expiry relative to now in seconds; negative for an already expired token.
    expires_in: Option<i64>,
    nbf: Option<i64>,
    /// A string or an array of strings.
    aud: Option<Value>,
    iss: Option<String>,
    /// Header `typ`: absent → `JWT`, `null` → no `typ` at all.
    #[serde(default, deserialize_with = "present")]
    typ: Option<Option<String>>,
    /// Header `kid`: absent → the dev key's, `null` → no `kid` at all.
    #[serde(default, deserialize_with = "present")]
    kid: Option<Option<String>>,
    /// Merged into the payload last.
    claims: Option<Map<String, Value>>,
    /// `jwt` (default) or `opaque`: a random token that the dev issuer introspects.
    format: Option<TokenFormat>,
}

/// What `/dev/token` mints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenFormat {
    Jwt,
    Opaque,
}

/// Tells a field given as `null` (`Some(None)`) from an absent one (`None`, via `default`).
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

/// Why `/dev/token` refused a body (400).
#[derive(Debug, thiserror::Error)]
pub enum TokenRequestError {
    #[error("body: {0}")]
    Json(String),
    #[error("give exp or expires_in, not both")]
    ExpTwice,
    #[error("{0} is out of range")]
    OutOfRange(&'static str),
    #[error("aud must be a string or an array of strings")]
    Audience,
    #[error("opaque tokens are not available (no random secret could be made)")]
    NoOpaque,
    #[error("opaque token: {0}")]
    Opaque(String),
}

impl TokenRequest {
    /// Parse a body; an empty one asks for the defaults.
    pub fn parse(body: &[u8]) -> Result<Self, TokenRequestError> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(TokenRequest::default());
        }
        serde_json::from_slice(body).map_err(|e| TokenRequestError::Json(e.to_string()))
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

/// Whether a listener bound to `addr` accepts loopback connections. Dev mode needs that: the
/// server fetches its own JWKS from `/dev/jwks`, which answers loopback clients only.
pub fn reachable_over_loopback(addr: SocketAddr) -> bool {
    addr.ip().is_loopback() || addr.ip().is_unspecified()
}

/// The dev endpoints answer loopback clients only. The TCP peer decides — never a forwarded
/// header, which any client can write.
/// `Some(403)` for any other peer.
fn refuse_non_loopback(peer: SocketAddr) -> Option<Response> {
    if peer.ip().to_canonical().is_loopback() {
        return None;
    }
    tracing::debug!(peer = %peer.ip(), "dev endpoint refused to a non-loopback client");
    Some(json_response(
        StatusCode::FORBIDDEN,
        &json!({ "error": "forbidden", "reason": "dev endpoints answer loopback clients only" }),
    ))
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

async fn jwks(
    State(dev): State<Arc<DevIssuer>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
) -> Response {
    if let Some(refused) = refuse_non_loopback(peer) {
        return refused;
    }
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        json!({ "keys": [dev.key.jwk()] }).to_string(),
    )
        .into_response()
}

async fn token(
    State(dev): State<Arc<DevIssuer>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: axum::body::Bytes,
) -> Response {
    if let Some(refused) = refuse_non_loopback(peer) {
        return refused;
    }
    let now = unix_secs();
    match TokenRequest::parse(&body).and_then(|req| dev.mint(&req, now)) {
        Ok(minted) => json_response(
            StatusCode::OK,
            &json!({
                "access_token": minted.token,
                "token_type": "Bearer",
                "expires_in": minted.exp.saturating_sub(now),
            }),
        ),
        Err(e) => json_response(
            StatusCode::BAD_REQUEST,
            &json!({ "error": "invalid_request", "reason": e.to_string() }),
        ),
    }
}

fn unix_secs() -> i64 {
    // Whole seconds, as tokens carry them; the wall clock is far from i64's limits.
    authorizer::unix_now() as i64
}

// ---------------------------------------------------------------------------------------------
// How to invoke this binary again.

/// The command that runs this binary the way the user just did: `cargo run … --` when run through
/// cargo, else the program path as typed (argv[0]).
pub fn invocation() -> String {
    let argv0 = std::env::args_os()
        .next()
        .map(|a| a.to_string_lossy().into_owned());
    let exe = std::env::current_exe().ok();
    invocation_from(
        argv0.as_deref(),
        std::env::var_os("CARGO").is_some(),
        exe.as_deref(),
    )
}

/// [`invocation`] on explicit inputs. `cargo run` sets `CARGO` for the program it runs; the
/// profile is the name of the directory the executable is in (`target/release`).
fn invocation_from(argv0: Option<&str>, via_cargo: bool, exe: Option<&Path>) -> String {
    if via_cargo {
        let profile = exe
            .and_then(Path::parent)
            .and_then(Path::file_name)
            .and_then(|n| n.to_str());
        return match profile {
            Some("debug") | None => "cargo run -q --".to_owned(),
            Some("release") => "cargo run --release -q --".to_owned(),
            Some(other) => format!("cargo run --profile {} -q --", shell_word(other)),
        };
    }
    match argv0 {
        Some(a) if !a.is_empty() => shell_word(a),
        _ => "citadel-authz".to_owned(),
    }
}

/// `s` as one shell word: as is when it is plain, else single-quoted.
fn shell_word(s: &str) -> String {
    let plain = s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"/._-+:@%=,".contains(&b));
    if plain && !s.is_empty() {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

// ---------------------------------------------------------------------------------------------
// The banner.

/// What the banner shows besides the policy in force.
pub struct BannerInput<'a> {
    pub dev: &'a DevIssuer,
    /// The bound HTTP listener.
    pub http: SocketAddr,
    /// The gRPC listener when `check --grpc` can reach it (TCP without TLS).
    pub grpc: Option<SocketAddr>,
    /// How to run this binary (see [`invocation`]).
    pub invocation: &'a str,
    /// Where the policy came from, e.g. `built-in example policy` or a file name.
    pub policy_from: &'a str,
}

/// Wait (bounded) until the server has loaded the dev issuer's JWKS, then render the banner with
/// the answers of the configuration in force.
pub async fn banner(input: &BannerInput<'_>, authorizer: &Authorizer) -> String {
    let deadline = Instant::now() + KEYS_DEADLINE;
    loop {
        let rt = authorizer.runtime();
        let ready = rt
            .issuers
            .iter()
            .find(|i| i.config.issuer == input.dev.issuer)
            .is_some_and(|i| i.keys.is_ready());
        if ready {
            break;
        }
        if Instant::now() >= deadline {
            tracing::warn!(
                "the dev issuer's JWKS did not load in time; the banner shows what the server answers now"
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rt = authorizer.runtime();
    let now = unix_secs();
    let tokens: Vec<String> = PERSONAS
        .iter()
        .map(|p| input.dev.mint_persona(p, now))
        .collect();
    let probes = probes(rt.config.policy.rules());
    let mut answers = Vec::with_capacity(probes.len());
    for probe in &probes {
        let mut row = Vec::with_capacity(PERSONAS.len() + 1);
        row.push(judge(&rt, input.http, probe, None).await);
        for t in &tokens {
            row.push(judge(&rt, input.http, probe, Some(t)).await);
        }
        answers.push(row);
    }
    let examples = choose(&probes, &answers);
    let stored = stored_memberships(&rt).await;
    let cross_tenant = cross_tenant_example(&probes, &answers);
    render(
        input,
        &rt,
        &Shown {
            tokens: &tokens,
            stored: &stored,
            probes: &probes,
            examples: &examples,
            cross_tenant: cross_tenant.as_ref(),
        },
    )
}

/// What the banner shows, besides the config in force.
struct Shown<'a> {
    tokens: &'a [String],
    /// Per persona, what the membership store lists (`None`: no store, or it lists nothing).
    stored: &'a [Option<String>],
    probes: &'a [Probe],
    examples: &'a [Example],
    /// A persona let into another tenant than its token's by the store.
    cross_tenant: Option<&'a Example>,
}

/// Per persona, the store's memberships as `globex: admin; *: support` (asked like a check would).
async fn stored_memberships(rt: &Runtime) -> Vec<Option<String>> {
    let mut out = Vec::with_capacity(PERSONAS.len());
    for p in &PERSONAS {
        let found = match &rt.membership {
            Some(store) if store.covers(DEV_ISSUER_NAME) => {
                store.lookup(DEV_ISSUER_NAME, p.sub).await.ok()
            }
            _ => None,
        };
        let text = found.filter(|f| !f.memberships.rows.is_empty()).map(|f| {
            let mut tenants: Vec<(String, Vec<String>)> = Vec::new();
            for row in &f.memberships.rows {
                let role = row.role.as_deref().map(str::to_owned);
                match tenants.iter_mut().find(|(t, _)| **t == *row.tenant) {
                    Some((_, roles)) => roles.extend(role),
                    None => tenants.push((row.tenant.to_string(), role.into_iter().collect())),
                }
            }
            tenants
                .iter()
                .map(|(t, roles)| format!("{t}: {}", roles.join(",")).trim_end().to_owned())
                .collect::<Vec<_>>()
                .join("; ")
        });
        out.push(text);
    }
    out
}

/// The first persona allowed on another tenant's route: only the store can let it in, since no
/// persona's token names that tenant.
fn cross_tenant_example(probes: &[Probe], answers: &[Vec<Answer>]) -> Option<Example> {
    probes
        .iter()
        .enumerate()
        .filter(|(_, p)| p.other_tenant)
        .find_map(|(i, _)| {
            let slot = (1..answers[i].len()).find(|&s| answers[i][s].outcome == Outcome::Allow)?;
            Some(Example {
                probe: i,
                persona: Some(slot - 1),
                answer: answers[i][slot].clone(),
            })
        })
}

/// One request an example makes: for a rule, a concrete path from its first pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Probe {
    method: String,
    path: String,
    /// This probe names a tenant the personas are not in.
    other_tenant: bool,
}

/// What the server answers to one probe with one token.
#[derive(Debug, Clone, PartialEq)]
struct Answer {
    outcome: Outcome,
    /// The rule that decided; `None` when none matched (or the peer is not trusted).
    rule: Option<Arc<str>>,
    /// On an allow with an identity: the identity headers set, `name: value, …`.
    headers: Option<String>,
}

/// An example command: a probe, whose token (`None`: none, else an index into [`PERSONAS`]), and
/// the answer.
#[derive(Debug, Clone, PartialEq)]
struct Example {
    probe: usize,
    persona: Option<usize>,
    answer: Answer,
}

/// Probes for the first rules: per rule its own path, and for a tenant rule also the path of
/// another tenant.
fn probes(rules: &[Rule]) -> Vec<Probe> {
    let mut out = Vec::new();
    for rule in rules.iter().take(MAX_RULE_EXAMPLES) {
        let src = rule.source();
        let Some(pattern) = src.paths.first() else {
            continue;
        };
        let method = src
            .methods
            .as_ref()
            .and_then(|m| m.first())
            .map_or_else(|| "GET".to_owned(), |m| m.to_ascii_uppercase());
        let tenant = src.tenant_param.as_deref();
        out.push(Probe {
            method: method.clone(),
            path: example_path(pattern, tenant, HOME_TENANT),
            other_tenant: false,
        });
        if tenant.is_some() {
            out.push(Probe {
                method,
                path: example_path(pattern, tenant, OTHER_TENANT),
                other_tenant: true,
            });
        }
    }
    out
}

/// Percent-encode everything but unreserved characters, so the path is also one plain shell word.
const PATH_SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// A concrete request path that `pattern` matches: the tenant parameter becomes `tenant`, any
/// other parameter or wildcard [`FILLER`].
fn example_path(pattern: &str, tenant_param: Option<&str>, tenant: &str) -> String {
    let mut out = String::new();
    for seg in pattern.split('/').filter(|s| !s.is_empty()) {
        out.push('/');
        let param = seg.strip_prefix('{').and_then(|s| s.strip_suffix('}'));
        match param {
            Some(name) if Some(name) == tenant_param => out.push_str(tenant),
            Some(_) => out.push_str(FILLER),
            None if seg == "*" || seg == "**" => out.push_str(FILLER),
            None => out.extend(utf8_percent_encode(seg, PATH_SEGMENT)),
        }
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

/// Whether forward-auth believes the printed commands: they come from the listener's reachable
/// address, and forward-auth refuses an untrusted peer before any decision.
fn trusts_banner_peer(rt: &Runtime, http: SocketAddr) -> bool {
    let peer = reachable(http).ip().to_canonical();
    rt.config.trusted_proxies.iter().any(|n| n.contains(&peer))
}

/// Ask the decision core, as forward-auth from the banner's curl would.
async fn judge(rt: &Runtime, http: SocketAddr, probe: &Probe, token: Option<&str>) -> Answer {
    if !trusts_banner_peer(rt, http) {
        return Answer {
            outcome: Outcome::Forbidden,
            rule: None,
            headers: None,
        };
    }
    let auth = token.map(|t| format!("Bearer {t}"));
    let input = CheckInput {
        method: &probe.method,
        path: &probe.path,
        authorization: auth.as_deref().map_or(AuthHeader::Absent, AuthHeader::One),
        rule: None,
    };
    let decision = authorizer::check(rt, &input, authorizer::unix_now()).await;
    let outcome = decision.outcome();
    let (rule, headers) = match decision {
        Decision::Allow { rule, identity } => {
            let headers = identity.map(|id| {
                identity_headers(Some(&id), &rt.config.headers)
                    .set
                    .iter()
                    .map(|(n, v)| format!("{n}: {v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            });
            (Some(rule), headers)
        }
        Decision::Deny { rule, .. } => (rule, None),
    };
    Answer {
        outcome,
        rule,
        headers,
    }
}

/// Pick the example commands from the answers (`answers[probe][0]` without a token,
/// `[probe][1 + i]` with persona i): per rule one that shows what passes, then one of each kind
/// of denial the policy can produce — missing role, other tenant, no token.
fn choose(probes: &[Probe], answers: &[Vec<Answer>]) -> Vec<Example> {
    let example = |probe: usize, slot: usize| Example {
        probe,
        persona: slot.checked_sub(1),
        answer: answers[probe][slot].clone(),
    };
    let allowed = |probe: usize, slot: usize| answers[probe][slot].outcome == Outcome::Allow;
    let personas = 1..answers.first().map_or(1, Vec::len);
    let mut out: Vec<Example> = Vec::new();
    // Per rule: without a token when that passes, else the first persona that passes, else the
    // first persona's denial (a rule no persona passes still shows why).
    let mut shown_allowed = Vec::new();
    for (i, _) in probes.iter().enumerate().filter(|(_, p)| !p.other_tenant) {
        let slot = if allowed(i, 0) {
            0
        } else {
            personas.clone().find(|&s| allowed(i, s)).unwrap_or(1)
        };
        if allowed(i, slot) && slot > 0 {
            shown_allowed.push((i, slot));
        }
        out.push(example(i, slot));
    }
    let mut denials = Vec::new();
    // A persona lacking a role, preferably on a route another persona was just shown passing.
    let scope = |i: usize| {
        personas
            .clone()
            .find(|&s| answers[i][s].outcome == Outcome::InsufficientScope)
            .map(|s| (i, s))
    };
    let lacking = shown_allowed
        .iter()
        .find_map(|&(i, _)| scope(i))
        .or_else(|| (0..probes.len()).find_map(scope));
    denials.extend(lacking);
    // The persona that passed its own tenant's route, on another tenant's.
    let other = probes.iter().enumerate().find_map(|(i, p)| {
        let home = i.checked_sub(1)?;
        let slot = shown_allowed
            .iter()
            .find(|(h, _)| *h == home)
            .map(|(_, s)| *s)?;
        p.other_tenant.then_some((i, slot))
    });
    denials.extend(other);
    // No token on the first route that needs one.
    let no_token = probes
        .iter()
        .enumerate()
        .find(|(i, p)| !p.other_tenant && !allowed(*i, 0))
        .map(|(i, _)| (i, 0));
    denials.extend(no_token);
    for (i, slot) in denials {
        let e = example(i, slot);
        if !out
            .iter()
            .any(|o| o.probe == e.probe && o.persona == e.persona)
        {
            out.push(e);
        }
    }
    out
}

/// `200 allow (rule orders-read)`, `403 insufficient_scope (rule admin)`.
fn annotation(answer: &Answer) -> String {
    let rule = match &answer.rule {
        Some(r) => format!("rule {r}"),
        None => "no rule".to_owned(),
    };
    format!(
        "{} {} ({rule})",
        answer.outcome.http_status(),
        answer.outcome.error_code()
    )
}

/// A rule's requirement in the policy file's own words.
fn requirement(rule: &Rule) -> String {
    let src = rule.source();
    if src.public {
        return "public".to_owned();
    }
    let mut parts = Vec::new();
    if let Some(issuers) = &src.issuers {
        parts.push(format!("issuers: {}", issuers.join(", ")));
    }
    if let Some(t) = &src.tenant_param {
        parts.push(format!("tenant_param: {t}"));
    }
    if !src.roles_all.is_empty() {
        parts.push(format!("roles_all: {}", src.roles_all.join(", ")));
    }
    if !src.roles_any.is_empty() {
        parts.push(format!("roles_any: {}", src.roles_any.join(", ")));
    }
    if parts.is_empty() {
        "any valid token".to_owned()
    } else {
        parts.join("; ")
    }
}

/// Lines padded into columns (the last column is not padded).
fn columns(rows: &[Vec<String>], indent: &str) -> String {
    let n = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..n)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = indent.to_owned();
        for (c, cell) in row.iter().enumerate() {
            if c + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}  ", w = widths[c]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn render(input: &BannerInput<'_>, rt: &Runtime, shown: &Shown<'_>) -> String {
    let Shown {
        tokens,
        probes,
        examples,
        ..
    } = *shown;
    let http = reachable(input.http);
    let mut out = String::new();
    out.push_str(&format!(
        "\ncitadel-authz dev — development issuer {} (issuer name {DEV_ISSUER_NAME}; ES256 key generated at start; audience {DEV_AUDIENCE})\n",
        input.dev.issuer
    ));
    let mut listeners = Vec::new();
    if let Some(g) = input.grpc {
        listeners.push(vec!["gRPC ext_authz".to_owned(), reachable(g).to_string()]);
    }
    listeners.push(vec![
        "HTTP".to_owned(),
        format!("http://{http}"),
        "/healthz /readyz /metrics /api/iam/check-access /dev/jwks /dev/token /dev/introspect"
            .to_owned(),
    ]);
    out.push_str(&columns(&listeners, "  "));
    out.push_str("  (the /dev/ endpoints answer loopback clients only)\n");

    // The policy, as written.
    let rules = rt.config.policy.rules();
    out.push_str(&format!(
        "\nPolicy — {} ({} rules; the first rule matching method and path decides; no match: 403 forbidden):\n",
        input.policy_from,
        rules.len()
    ));
    let rows: Vec<Vec<String>> = rules
        .iter()
        .map(|r| {
            let src = r.source();
            vec![
                src.name.clone(),
                src.methods
                    .as_ref()
                    .map_or_else(|| "any".to_owned(), |m| m.join(",")),
                src.paths.join(" "),
                requirement(r),
            ]
        })
        .collect();
    if rows.is_empty() {
        out.push_str("  (no rules: every request is denied)\n");
    }
    out.push_str(&columns(&rows, "  "));

    // Personas.
    out.push_str("\nPersonas (tokens valid 1h) — paste these into your shell:\n");
    let rows: Vec<Vec<String>> = PERSONAS
        .iter()
        .zip(tokens)
        .zip(shown.stored)
        .map(|((p, t), stored)| {
            let tenant = p
                .tenant
                .map_or_else(String::new, |t| format!(", tenant {t}"));
            let stored = stored
                .as_deref()
                .map_or_else(String::new, |s| format!("; membership store: {s}"));
            vec![
                format!("export {}={t}", p.var),
                format!(
                    "# {}{}{tenant}, roles {}{stored}",
                    p.sub,
                    p.about,
                    p.roles.join(",")
                ),
            ]
        })
        .collect();
    out.push_str(&columns(&rows, "  "));

    // Example commands with what this server answers.
    let url = format!("http://{http}/api/iam/check-access");
    out.push_str(
        "\nTry it — forward-auth, the same decision Envoy gets over gRPC (after # what this server answers):\n",
    );
    out.push_str(&format!(
        "  check() {{ curl -s -w ' %{{http_code}}\\n' {url} -H \"X-Forwarded-Method: $1\" -H \"X-Forwarded-Uri: $2\" -H \"Authorization:${{3:+ Bearer $3}}\"; }}\n"
    ));
    let token_arg = |persona: Option<usize>| {
        persona
            .and_then(|i| PERSONAS.get(i))
            .map_or_else(String::new, |p| format!("\"${}\"", p.var))
    };
    let rows: Vec<Vec<String>> = examples
        .iter()
        .map(|e| {
            let p = &probes[e.probe];
            vec![
                "check".to_owned(),
                p.method.clone(),
                p.path.clone(),
                token_arg(e.persona),
                format!("# {}", annotation(&e.answer)),
            ]
        })
        .collect();
    out.push_str(&columns(&rows, "  "));
    if !trusts_banner_peer(rt, input.http) {
        out.push_str(&format!(
            "  (forward_auth.trusted_proxies does not include {}: forward-auth refuses these before any rule)\n",
            http.ip()
        ));
    }
    if rules.len() > MAX_RULE_EXAMPLES {
        out.push_str(&format!(
            "  (examples for the first {MAX_RULE_EXAMPLES} rules of {})\n",
            rules.len()
        ));
    }
    let first_allowed = examples
        .iter()
        .find(|e| e.persona.is_some() && e.answer.outcome == Outcome::Allow);
    if let Some(e) = first_allowed {
        let p = &probes[e.probe];
        out.push_str(&format!(
            "  curl -si {url} -H 'X-Forwarded-Method: {}' -H 'X-Forwarded-Uri: {}' -H \"Authorization: Bearer {}\" | grep -i '^x-'   # identity headers\n",
            p.method,
            p.path,
            token_arg(e.persona).trim_matches('"'),
        ));
        if let Some(g) = input.grpc {
            out.push_str(&format!(
                "\nThe same over gRPC, as Envoy asks it:\n  {} check --grpc {} --method {} --path {} --token {}   # ALLOW ({})\n",
                input.invocation,
                reachable(g),
                p.method,
                p.path,
                token_arg(e.persona),
                e.answer.rule.as_deref().map_or_else(|| "no rule".to_owned(), |r| format!("rule {r}")),
            ));
        }
    }

    // The membership store, when there is one.
    if let Some(store) = &rt.membership {
        let from = rt
            .config
            .membership
            .as_ref()
            .and_then(|m| m.file())
            .map_or_else(|| store.source().to_owned(), |p| p.display().to_string());
        out.push_str(&format!(
            "\nMembership store — {from}: its roles and tenants join the token's (tenant_param rules pass for a tenant the store lists):\n"
        ));
        match shown.cross_tenant {
            Some(e) => {
                let p = &probes[e.probe];
                out.push_str(&columns(
                    &[vec![
                        "check".to_owned(),
                        p.method.clone(),
                        p.path.clone(),
                        token_arg(e.persona),
                        format!("# {}", annotation(&e.answer)),
                    ]],
                    "  ",
                ));
                if let Some(h) = &e.answer.headers {
                    out.push_str(&format!("  #   upstream gets {h}\n"));
                }
            }
            None => out.push_str("  (no persona is let into another tenant by the store)\n"),
        }
    }

    // Minting.
    out.push_str(&format!(
        "\nMint your own (POST /dev/token; every field optional):\n  curl -s http://{http}/dev/token -d '{{\"sub\":\"carol\",\"tenant_id\":\"{OTHER_TENANT}\",\"roles\":[\"member\"]}}'\n  curl -s http://{http}/dev/token -d '{{\"sub\":\"carol\",\"expires_in\":-120}}'   # already expired\n  curl -s http://{http}/dev/token -d '{{\"format\":\"opaque\",\"sub\":\"carol\",\"roles\":[\"reader\"]}}'   # an opaque token: introspected (RFC 7662) at /dev/introspect\n  fields: format (jwt or opaque), sub, tenant_id, roles; exp (unix time) or expires_in (seconds, negative: past); nbf; aud (string or array);\n          iss; typ and kid (header; null leaves it out); claims {{…}} (merged last, replaces any claim)\n"
    ));
    out.push_str("\nCtrl-C stops the server.\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev() -> Arc<DevIssuer> {
        Arc::new(DevIssuer::new("127.0.0.1:9192".parse().unwrap()).unwrap())
    }

    fn parts(token: &str) -> (Value, Value) {
        use base64::Engine;
        let mut it = token.split('.');
        let mut decode = || {
            let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(it.next().unwrap())
                .unwrap();
            serde_json::from_slice::<Value>(&raw).unwrap()
        };
        (decode(), decode())
    }

    async fn body(resp: Response) -> (StatusCode, Value) {
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        let value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap()
        };
        (status, value)
    }

    #[tokio::test]
    async fn dev_endpoints_answer_loopback_peers_only() {
        let dev = dev();
        for (peer, want) in [
            ("127.0.0.1:5000", StatusCode::OK),
            ("127.0.0.9:5000", StatusCode::OK),
            ("[::1]:5000", StatusCode::OK),
            ("[::ffff:127.0.0.1]:5000", StatusCode::OK),
            ("192.0.2.2:5000", StatusCode::FORBIDDEN),
            ("10.0.0.1:5000", StatusCode::FORBIDDEN),
            ("[::ffff:192.0.2.2]:5000", StatusCode::FORBIDDEN),
            ("[fd00::2]:5000", StatusCode::FORBIDDEN),
        ] {
            let peer: SocketAddr = peer.parse().unwrap();
            let minted = token(
                State(Arc::clone(&dev)),
                ConnectInfo(peer),
                axum::body::Bytes::from_static(b"{}"),
            )
            .await;
            let (status, json) = body(minted).await;
            assert_eq!(status, want, "/dev/token from {peer}");
            if want == StatusCode::OK {
                assert!(json["access_token"].as_str().is_some());
            } else {
                assert_eq!(json["error"], "forbidden");
            }
            let keys = jwks(State(Arc::clone(&dev)), ConnectInfo(peer)).await;
            assert_eq!(keys.status(), want, "/dev/jwks from {peer}");
        }
    }

    #[test]
    fn token_requests_shape_header_and_claims() {
        let dev = dev();
        let now = 1_700_000_000;
        let mint = |body: &str| {
            let req = TokenRequest::parse(body.as_bytes()).unwrap();
            let m = dev.mint(&req, now).unwrap();
            let (h, c) = parts(&m.token);
            (h, c, m.exp)
        };
        let (h, c, exp) = mint("");
        assert_eq!(
            (h["typ"].as_str(), h["kid"].as_str()),
            (Some("JWT"), Some("dev-1"))
        );
        assert_eq!(c["iss"], dev.issuer.as_str());
        assert_eq!(c["aud"], DEV_AUDIENCE);
        assert_eq!(exp, now + 3600);
        assert_eq!(c["exp"], now + 3600);
        assert_eq!(c["roles"], json!([]));
        assert!(c.get("sub").is_none() && c.get("nbf").is_none());

        let (_, c, exp) = mint(r#"{"expires_in": -120, "nbf": 1700000500}"#);
        assert_eq!((exp, c["exp"].as_i64()), (now - 120, Some(now - 120)));
        assert_eq!(c["nbf"], 1_700_000_500);
        let (_, c, _) = mint(r#"{"exp": 5}"#);
        assert_eq!(c["exp"], 5);
        let (_, c, _) = mint(r#"{"aud": ["a", "b"], "iss": "https://elsewhere"}"#);
        assert_eq!(c["aud"], json!(["a", "b"]));
        assert_eq!(c["iss"], "https://elsewhere");
        let (h, _, _) = mint(r#"{"typ": "id+jwt", "kid": "other"}"#);
        assert_eq!(
            (h["typ"].as_str(), h["kid"].as_str()),
            (Some("id+jwt"), Some("other"))
        );
        let (h, _, _) = mint(r#"{"typ": null, "kid": null}"#);
        assert!(h.get("typ").is_none() && h.get("kid").is_none());
        assert_eq!(h["alg"], "ES256");
        let (_, c, _) = mint(
            r#"{"sub": "carol", "tenant_id": "acme", "claims": {"tenant_id": 7, "scope": "a b"}}"#,
        );
        assert_eq!(
            (c["sub"].as_str(), &c["tenant_id"]),
            (Some("carol"), &json!(7))
        );
        assert_eq!(c["scope"], "a b");
    }

    #[test]
    fn token_requests_refused_name_the_problem() {
        let dev = dev();
        let err = |body: &str| {
            TokenRequest::parse(body.as_bytes())
                .and_then(|r| dev.mint(&r, 1_700_000_000))
                .unwrap_err()
                .to_string()
        };
        assert!(err(r#"{"sub": "a", "expiry": 5}"#).contains("`expiry`"));
        assert!(err(r#"{"roles": "admin"}"#).starts_with("body: "));
        assert_eq!(
            err(r#"{"exp": 5, "expires_in": 5}"#),
            "give exp or expires_in, not both"
        );
        assert_eq!(
            err(r#"{"aud": 5}"#),
            "aud must be a string or an array of strings"
        );
        assert_eq!(
            err(r#"{"aud": ["a", 5]}"#),
            "aud must be a string or an array of strings"
        );
        assert_eq!(
            err(r#"{"expires_in": 9223372036854775807}"#),
            "expires_in is out of range"
        );
        assert!(err(r#"{"typ": 5}"#).starts_with("body: "));
    }

    #[test]
    fn invocation_is_cargo_run_only_under_cargo() {
        let exe = |p: &str| Some(std::path::PathBuf::from(p));
        let release = exe("/src/target/release/citadel-authz");
        let debug = exe("/src/target/debug/citadel-authz");
        let custom = exe("/src/target/fast/citadel-authz");
        assert_eq!(
            invocation_from(
                Some("target/release/citadel-authz"),
                true,
                release.as_deref()
            ),
            "cargo run --release -q --"
        );
        assert_eq!(
            invocation_from(Some("target/debug/citadel-authz"), true, debug.as_deref()),
            "cargo run -q --"
        );
        assert_eq!(
            invocation_from(None, true, custom.as_deref()),
            "cargo run --profile fast -q --"
        );
        assert_eq!(
            invocation_from(
                Some("./target/release/citadel-authz"),
                false,
                release.as_deref()
            ),
            "./target/release/citadel-authz"
        );
        assert_eq!(
            invocation_from(
                Some("citadel-authz"),
                false,
                exe("/usr/bin/citadel-authz").as_deref()
            ),
            "citadel-authz"
        );
        assert_eq!(
            invocation_from(Some("/opt/my tools/citadel-authz"), false, None),
            "'/opt/my tools/citadel-authz'"
        );
        assert_eq!(invocation_from(None, false, None), "citadel-authz");
    }

    #[test]
    fn example_paths_fill_parameters() {
        let cases = [
            ("/api/orders/**", None, "/api/orders/42"),
            (
                "/api/tenants/{tenant}/**",
                Some("tenant"),
                "/api/tenants/acme/42",
            ),
            ("/t/{org}/docs/{doc}", Some("org"), "/t/acme/docs/42"),
            ("/files/*/meta", None, "/files/42/meta"),
            ("/", None, "/"),
            ("/**", None, "/42"),
            ("/a b/caf\u{e9}:x", None, "/a%20b/caf%C3%A9%3Ax"),
        ];
        for (pattern, param, want) in cases {
            assert_eq!(example_path(pattern, param, "acme"), want, "{pattern}");
            assert!(crate::core::policy::canonicalize(want).is_ok(), "{want}");
        }
    }

    fn policy(yaml: &str) -> crate::core::policy::Policy {
        #[derive(serde::Deserialize)]
        struct PolicyFile {
            rules: Vec<crate::core::policy::RawRule>,
        }
        let raw: PolicyFile = crate::core::yaml::parse_yaml(yaml, "").unwrap();
        crate::core::policy::Policy::compile(raw.rules, &["dev".to_owned(), "iam".to_owned()])
            .unwrap()
    }

    #[test]
    fn probes_come_from_each_rule_and_a_foreign_tenant() {
        let p = policy(EXAMPLE_POLICY);
        let got: Vec<(String, String, bool)> = probes(p.rules())
            .into_iter()
            .map(|p| (p.method, p.path, p.other_tenant))
            .collect();
        let want = [
            ("GET", "/healthz", false),
            ("GET", "/api/orders/42", false),
            ("POST", "/api/orders/42", false),
            ("GET", "/api/tenants/acme/42", false),
            ("GET", "/api/tenants/globex/42", true),
            ("GET", "/api/admin/42", false),
            ("GET", "/api/me", false),
        ];
        let want: Vec<(String, String, bool)> = want
            .iter()
            .map(|(m, p, o)| ((*m).to_owned(), (*p).to_owned(), *o))
            .collect();
        assert_eq!(got, want);
        let reqs: Vec<String> = p.rules().iter().map(requirement).collect();
        assert_eq!(
            reqs,
            [
                "public",
                "roles_any: reader, orders:write, admin",
                "roles_any: orders:write, admin",
                "tenant_param: tenant; roles_any: member, admin",
                "roles_all: admin",
                "any valid token",
            ]
        );
    }

    #[test]
    fn choose_shows_a_pass_per_rule_then_each_kind_of_denial() {
        let probe = |path: &str, other_tenant| Probe {
            method: "GET".into(),
            path: path.into(),
            other_tenant,
        };
        let probes = vec![
            probe("/pub", false),
            probe("/t/acme", false),
            probe("/t/globex", true),
            probe("/admin", false),
        ];
        let a = |outcome, rule: &str| Answer {
            outcome,
            rule: Some(rule.into()),
            headers: None,
        };
        use Outcome::*;
        // Slots: no token, READER, SERVICE, ADMIN.
        let answers = vec![
            vec![a(Allow, "pub"); 4],
            vec![
                a(Unauthenticated, "t"),
                a(Allow, "t"),
                a(InsufficientScope, "t"),
                a(Allow, "t"),
            ],
            vec![
                a(Unauthenticated, "t"),
                a(Forbidden, "t"),
                a(Forbidden, "t"),
                a(Forbidden, "t"),
            ],
            vec![
                a(Unauthenticated, "admin"),
                a(InsufficientScope, "admin"),
                a(InsufficientScope, "admin"),
                a(Allow, "admin"),
            ],
        ];
        let got: Vec<(usize, Option<usize>, Outcome)> = choose(&probes, &answers)
            .into_iter()
            .map(|e| (e.probe, e.persona, e.answer.outcome))
            .collect();
        assert_eq!(
            got,
            vec![
                (0, None, Allow),
                (1, Some(0), Allow),
                (3, Some(2), Allow),
                (1, Some(1), InsufficientScope),
                (2, Some(0), Forbidden),
                (1, None, Unauthenticated),
            ]
        );
    }

    #[test]
    fn columns_align_and_trim() {
        let rows = vec![
            vec!["a".to_owned(), "bbb".to_owned(), "x".to_owned()],
            vec!["aaaa".to_owned(), "b".to_owned(), String::new()],
        ];
        assert_eq!(columns(&rows, "  "), "  a     bbb  x\n  aaaa  b\n");
    }
}
