//! Configuration: raw serde structs (`deny_unknown_fields`, humantime durations) turned by
//! [`Config::from_raw`] into a validated, compiled [`Config`].
//!
//! Every problem found is collected with the path of the field it concerns (`issuers[0].audiences`,
//! `policy.yaml: rules[2].tenant_param`) so that `check-config` can print them all at once. Nothing
//! here binds a port or fetches a URL: a config that passes is safe to start from.

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use jsonwebtoken::Algorithm;
use serde::Deserialize;

use crate::policy::{Policy, RawRule};

/// One problem in a config or policy file, with the path of the field it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    /// `issuers[0].audiences`, or `policy.yaml: rules[2].tenant_param` for a policy file.
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Every problem found while loading a configuration.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigError {
    pub issues: Vec<ConfigIssue>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, issue) in self.issues.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{issue}")?;
        }
        Ok(())
    }
}

impl ConfigError {
    fn one(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            issues: vec![ConfigIssue {
                path: path.into(),
                message: message.into(),
            }],
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Raw form: exactly what the YAML says.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    listen: Option<RawListen>,
    #[serde(default)]
    realm: Option<String>,
    #[serde(default)]
    issuers: Vec<RawIssuer>,
    #[serde(default)]
    jwks: RawJwks,
    #[serde(default)]
    headers: RawHeaders,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    forward_auth: RawForwardAuth,
    #[serde(default)]
    token_cache: RawTokenCache,
    #[serde(default)]
    decision_log: Option<DecisionLog>,
    #[serde(default, with = "humantime_serde")]
    shutdown_grace: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    shutdown_delay: Option<Duration>,
    #[serde(default)]
    policy: Option<RawPolicyRef>,
}

/// Which decisions are logged (target `citadel_authz::decision`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum DecisionLog {
    /// Denials only (allows are usually too many).
    Denials,
    /// Every decision.
    All,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTokenCache {
    #[serde(default)]
    capacity: Option<u64>,
    #[serde(default, with = "humantime_serde")]
    max_ttl: Option<Duration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListen {
    #[serde(default)]
    grpc: Option<String>,
    #[serde(default)]
    http: Option<String>,
    /// File mode of the gRPC unix socket, as an octal string (`"0660"`).
    #[serde(default)]
    grpc_socket_mode: Option<String>,
    #[serde(default)]
    grpc_tls: Option<RawTls>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: PathBuf,
    key: PathBuf,
    #[serde(default)]
    client_ca: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIssuer {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    issuer: Option<String>,
    #[serde(default)]
    jwks_uri: Option<String>,
    #[serde(default)]
    discovery: bool,
    #[serde(default)]
    allow_http: bool,
    #[serde(default)]
    audiences: Option<Vec<String>>,
    #[serde(default)]
    algorithms: Option<Vec<String>>,
    #[serde(default, with = "humantime_serde")]
    leeway: Option<Duration>,
    #[serde(default)]
    token_types: Vec<String>,
    #[serde(default)]
    claims: RawClaims,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClaims {
    #[serde(default)]
    user_id: Option<String>,
    #[serde(default)]
    tenant_id: Option<String>,
    #[serde(default)]
    roles: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJwks {
    #[serde(default, with = "humantime_serde")]
    refresh_min: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    refresh_max: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    max_stale: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    fetch_timeout: Option<Duration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHeaders {
    #[serde(default)]
    user_id: Option<String>,
    #[serde(default)]
    tenant_id: Option<String>,
    #[serde(default)]
    roles: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    #[serde(default)]
    max_token_bytes: Option<usize>,
    #[serde(default, with = "humantime_serde")]
    header_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    idle_timeout: Option<Duration>,
    #[serde(default)]
    max_connections: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawForwardAuth {
    #[serde(default)]
    trusted_proxies: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicyRef {
    #[serde(default)]
    file: Option<PathBuf>,
    #[serde(default)]
    rules: Option<Vec<RawRule>>,
}

/// A policy file: `rules:` and nothing else.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPolicyFile {
    pub(crate) rules: Vec<RawRule>,
}

// ---------------------------------------------------------------------------------------------
// Validated form.

/// Where the gRPC listener binds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GrpcListen {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl fmt::Display for GrpcListen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GrpcListen::Tcp(addr) => write!(f, "{addr}"),
            GrpcListen::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listen {
    pub grpc: GrpcListen,
    /// `None`: no HTTP listener (no forward-auth, health or metrics over HTTP).
    pub http: Option<SocketAddr>,
    /// Mode of the gRPC unix socket file; `None` keeps the process umask.
    pub grpc_socket_mode: Option<u32>,
    /// TLS (and with `client_ca`, mTLS) on the gRPC listener; files resolved against the config's
    /// directory.
    pub grpc_tls: Option<TlsFiles>,
}

/// Certificate files for the gRPC listener (PEM).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// CA bundle client certificates must chain to; `None` = no client certificate asked.
    pub client_ca: Option<PathBuf>,
}

/// Where an issuer's key set comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksSource {
    Uri(String),
    /// `{issuer}/.well-known/openid-configuration` names the `jwks_uri`.
    Discovery,
}

/// What a token must look like to be accepted from one issuer, and where its claims are.
#[derive(Debug, Clone, PartialEq)]
pub struct IssuerConfig {
    pub name: String,
    pub issuer: String,
    pub source: JwksSource,
    pub allow_http: bool,
    pub audiences: Vec<String>,
    pub algorithms: Vec<Algorithm>,
    pub leeway: Duration,
    /// Lower-cased, `application/` prefix removed; empty = any.
    pub token_types: Vec<String>,
    pub claims: ClaimPaths,
}

/// Dotted paths into the token payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimPaths {
    pub user_id: Vec<String>,
    pub tenant_id: Vec<String>,
    pub roles: Vec<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwksTiming {
    pub refresh_min: Duration,
    pub refresh_max: Duration,
    pub max_stale: Duration,
    pub fetch_timeout: Duration,
}

/// Verified-token cache settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenCacheConfig {
    pub capacity: u64,
    pub max_ttl: Duration,
}

/// Names of the identity headers sent upstream (lower case).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderNames {
    pub user_id: String,
    pub tenant_id: String,
    pub roles: String,
}

/// Bounds on what one client can hold on a listener (SPEC §6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Request headers must arrive within this long of the connection (or previous request).
    pub header_timeout: Duration,
    /// A keep-alive connection with no request in flight is closed after this long.
    pub idle_timeout: Duration,
    /// Connections each listener holds at once; more are refused.
    pub max_connections: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(60),
            max_connections: 4096,
        }
    }
}

/// The validated configuration. Built only by [`Config::load`] / [`Config::from_yaml`].
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: Listen,
    pub realm: String,
    pub issuers: Vec<IssuerConfig>,
    pub jwks: JwksTiming,
    pub headers: HeaderNames,
    pub max_token_bytes: usize,
    /// `limits.header_timeout`, `limits.idle_timeout`, `limits.max_connections`.
    pub connections: ConnectionLimits,
    pub trusted_proxies: Vec<IpNet>,
    /// Verified-token cache: entries (0 = off) and the longest an entry lives.
    pub token_cache: TokenCacheConfig,
    /// `decision_log: all` logs allows too (at info); default denials only.
    pub decision_log_allows: bool,
    /// How long in-flight checks may take to finish after SIGTERM.
    pub shutdown_grace: Duration,
    /// Time between turning not-ready and closing the listeners (lets load balancers notice).
    pub shutdown_delay: Duration,
    pub policy: Policy,
    /// The policy file, when the policy is not inline (watched for reload).
    pub policy_file: Option<PathBuf>,
}

pub const DEFAULT_GRPC: &str = "127.0.0.1:9191";
pub const DEFAULT_HTTP: &str = "127.0.0.1:9192";

/// The asymmetric algorithms this server verifies. `none` and HS* are never accepted.
pub const SUPPORTED_ALGORITHMS: [Algorithm; 9] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

const MAX_LEEWAY: Duration = Duration::from_secs(3600);

impl Config {
    /// Read and validate a config file (and the policy file it names).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::one("", format!("cannot read {}: {e}", path.display())))?;
        let base = path.parent().unwrap_or_else(|| Path::new("."));
        Self::from_yaml(&text, base)
    }

    /// Validate a config given as text; a relative policy file is resolved against `base_dir`.
    pub fn from_yaml(text: &str, base_dir: &Path) -> Result<Self, ConfigError> {
        let raw: RawConfig = parse_yaml(text, "")?;
        Self::from_raw(raw, base_dir)
    }

    fn from_raw(raw: RawConfig, base_dir: &Path) -> Result<Self, ConfigError> {
        let mut issues = Issues::default();

        let listen = validate_listen(raw.listen, base_dir, &mut issues);
        let realm = raw.realm.unwrap_or_else(|| "citadel".to_owned());
        if realm.is_empty()
            || !realm
                .bytes()
                .all(|b| (0x20..0x7f).contains(&b) && b != b'"')
        {
            issues.push(
                "realm",
                "must be non-empty printable ASCII without a double quote",
            );
        }

        if raw.issuers.is_empty() {
            issues.push("issuers", "at least one issuer is required");
        }
        let mut issuers = Vec::with_capacity(raw.issuers.len());
        let mut names = HashSet::new();
        let mut iss_values = HashSet::new();
        for (i, raw_issuer) in raw.issuers.into_iter().enumerate() {
            let at = format!("issuers[{i}]");
            if let Some(issuer) = validate_issuer(raw_issuer, i, &at, &mut issues) {
                if !names.insert(issuer.name.clone()) {
                    issues.push(
                        format!("{at}.name"),
                        format!("duplicate issuer name {:?}", issuer.name),
                    );
                }
                if !iss_values.insert(issuer.issuer.clone()) {
                    issues.push(format!("{at}.issuer"), "duplicate issuer URL");
                }
                issuers.push(issuer);
            }
        }

        let jwks = validate_jwks(raw.jwks, &mut issues);
        let headers = validate_headers(raw.headers, &mut issues);

        let max_token_bytes = raw.limits.max_token_bytes.unwrap_or(8192);
        if !(256..=65536).contains(&max_token_bytes) {
            issues.push("limits.max_token_bytes", "must be between 256 and 65536");
        }
        let defaults = ConnectionLimits::default();
        let connections = ConnectionLimits {
            header_timeout: raw.limits.header_timeout.unwrap_or(defaults.header_timeout),
            idle_timeout: raw.limits.idle_timeout.unwrap_or(defaults.idle_timeout),
            max_connections: raw
                .limits
                .max_connections
                .unwrap_or(defaults.max_connections),
        };
        if !(Duration::from_millis(100)..=Duration::from_secs(300))
            .contains(&connections.header_timeout)
        {
            issues.push("limits.header_timeout", "must be between 100ms and 5m");
        }
        if !(Duration::from_millis(100)..=Duration::from_secs(3600))
            .contains(&connections.idle_timeout)
        {
            issues.push("limits.idle_timeout", "must be between 100ms and 1h");
        }
        if !(1..=1_000_000).contains(&connections.max_connections) {
            issues.push("limits.max_connections", "must be between 1 and 1000000");
        }

        let mut trusted_proxies = Vec::new();
        let proxies = raw
            .forward_auth
            .trusted_proxies
            .unwrap_or_else(|| vec!["127.0.0.0/8".to_owned(), "::1/128".to_owned()]);
        for (i, cidr) in proxies.iter().enumerate() {
            match parse_cidr(cidr) {
                Some(net) => trusted_proxies.push(net),
                None => issues.push(
                    format!("forward_auth.trusted_proxies[{i}]"),
                    format!("{cidr:?} is not a CIDR (e.g. 10.0.0.0/8) or IP address"),
                ),
            }
        }

        let token_cache = TokenCacheConfig {
            capacity: raw.token_cache.capacity.unwrap_or(100_000),
            max_ttl: raw.token_cache.max_ttl.unwrap_or(Duration::from_secs(300)),
        };
        if token_cache.capacity > 10_000_000 {
            issues.push("token_cache.capacity", "must be at most 10000000");
        }
        if token_cache.max_ttl.is_zero() && token_cache.capacity > 0 {
            issues.push(
                "token_cache.max_ttl",
                "must be greater than 0 (set capacity: 0 to disable the cache)",
            );
        }

        let issuer_names: Vec<String> = issuers.iter().map(|i| i.name.clone()).collect();
        // SPEC §2: defaults exist for everything but the issuer essentials, so an omitted policy
        // is the empty one — no rule matches, every request is denied (403). `serve` warns.
        let (policy, policy_file) = match raw.policy {
            None
            | Some(RawPolicyRef {
                file: None,
                rules: None,
            }) => (Some(Policy::default()), None),
            Some(RawPolicyRef {
                file: Some(_),
                rules: Some(_),
            }) => {
                issues.push("policy", "give either `file` or `rules`, not both");
                (None, None)
            }
            Some(RawPolicyRef {
                file: None,
                rules: Some(rules),
            }) => {
                let policy = match Policy::compile(rules, &issuer_names) {
                    Ok(p) => Some(p),
                    Err(errs) => {
                        issues.extend_prefixed("policy.", errs);
                        None
                    }
                };
                (policy, None)
            }
            Some(RawPolicyRef {
                file: Some(file),
                rules: None,
            }) => {
                let path = base_dir.join(&file);
                let policy = match load_policy_file(&path, &issuer_names) {
                    Ok(p) => Some(p),
                    Err(e) => {
                        issues.0.extend(e.issues);
                        None
                    }
                };
                (policy, Some(path))
            }
        };

        match (issues.0.is_empty(), policy) {
            (true, Some(policy)) => Ok(Config {
                listen,
                realm,
                issuers,
                jwks,
                headers,
                max_token_bytes,
                connections,
                trusted_proxies,
                token_cache,
                decision_log_allows: raw.decision_log == Some(DecisionLog::All),
                shutdown_grace: raw.shutdown_grace.unwrap_or(Duration::from_secs(10)),
                shutdown_delay: raw.shutdown_delay.unwrap_or(Duration::ZERO),
                policy,
                policy_file,
            }),
            _ => Err(ConfigError { issues: issues.0 }),
        }
    }
}

/// Read and compile a policy file; problems are reported as `FILE: rules[2].field`.
pub fn load_policy_file(path: &Path, issuer_names: &[String]) -> Result<Policy, ConfigError> {
    let label = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string());
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigError::one(
            "policy.file",
            format!("cannot read {}: {e}", path.display()),
        )
    })?;
    let raw: RawPolicyFile = parse_yaml(&text, &format!("{label}: "))?;
    Policy::compile(raw.rules, issuer_names).map_err(|errs| {
        let mut issues = Issues::default();
        issues.extend_prefixed(&format!("{label}: "), errs);
        ConfigError { issues: issues.0 }
    })
}

/// Parse YAML into `T`, reporting the failing field's path (`issuers[0].leeway`).
pub(crate) fn parse_yaml<T: serde::de::DeserializeOwned>(
    text: &str,
    prefix: &str,
) -> Result<T, ConfigError> {
    let text = shield_path_params(text);
    let de = serde_yaml_ng::Deserializer::from_str(&text);
    serde_path_to_error::deserialize(de).map_err(|err| {
        let path = err.path().to_string();
        let path = if path == "." { String::new() } else { path };
        let inner = err.into_inner().to_string();
        ConfigError::one(format!("{prefix}{path}"), inner)
    })
}

/// Stand-ins for `{` and `}` of a path parameter while YAML is parsed (Unicode private use).
pub(crate) const PARAM_OPEN: char = '\u{E000}';
pub(crate) const PARAM_CLOSE: char = '\u{E001}';

/// SPEC §3 writes `paths: [/api/tenants/{tenant}/**]`; strict YAML reads `{` inside a flow list as
/// the start of a mapping and refuses it. So that the documented form works as written, a
/// `{name}` right after a `/` is swapped for private-use stand-ins before parsing and swapped
/// back when patterns compile ([`crate::policy`]).
fn shield_path_params(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.contains("/{") {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("/{") {
        out.push_str(&rest[..=i]);
        let after = &rest[i + 2..];
        let name_len = after
            .bytes()
            .take_while(|b| b.is_ascii_alphanumeric() || *b == b'_')
            .count();
        if name_len > 0 && after.as_bytes().get(name_len) == Some(&b'}') {
            out.push(PARAM_OPEN);
            out.push_str(&after[..name_len]);
            out.push(PARAM_CLOSE);
            rest = &after[name_len + 1..];
        } else {
            out.push('{');
            rest = after;
        }
    }
    out.push_str(rest);
    std::borrow::Cow::Owned(out)
}

#[derive(Default)]
struct Issues(Vec<ConfigIssue>);

impl Issues {
    fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(ConfigIssue {
            path: path.into(),
            message: message.into(),
        });
    }

    fn extend_prefixed(&mut self, prefix: &str, errs: Vec<ConfigIssue>) {
        for e in errs {
            self.push(format!("{prefix}{}", e.path), e.message);
        }
    }
}

fn validate_listen(raw: Option<RawListen>, base_dir: &Path, issues: &mut Issues) -> Listen {
    // `listen` omitted: both listeners on their defaults. `listen` given without `http`: no HTTP.
    let (grpc, http, mode, tls) = match raw {
        None => (None, Some(DEFAULT_HTTP.to_owned()), None, None),
        Some(l) => (l.grpc, l.http, l.grpc_socket_mode, l.grpc_tls),
    };
    let grpc_tls = tls.map(|t| TlsFiles {
        cert: base_dir.join(t.cert),
        key: base_dir.join(t.key),
        client_ca: t.client_ca.map(|c| base_dir.join(c)),
    });
    // Certificates are parsed here too, so `check-config` catches a bad PEM or a key that does
    // not match its certificate, not only `serve`.
    if let Some(t) = &grpc_tls
        && let Err(e) = crate::tls::check(t)
    {
        let field = match &e {
            crate::tls::TlsError::Read { field, .. }
            | crate::tls::TlsError::Invalid { field, .. } => {
                format!("listen.grpc_tls.{field}")
            }
            crate::tls::TlsError::Unsupported(_) => "listen.grpc_tls".to_owned(),
        };
        let message = e.to_string();
        let message = message
            .strip_prefix(&format!("{field}: "))
            .unwrap_or(&message)
            .to_owned();
        issues.push(field, message);
    }
    let grpc = grpc.unwrap_or_else(|| DEFAULT_GRPC.to_owned());
    let grpc = if let Some(path) = grpc.strip_prefix("unix:") {
        if path.is_empty() {
            issues.push("listen.grpc", "unix: needs a socket path");
        }
        GrpcListen::Unix(PathBuf::from(path))
    } else {
        match grpc.parse::<SocketAddr>() {
            Ok(addr) => GrpcListen::Tcp(addr),
            Err(_) => {
                issues.push(
                    "listen.grpc",
                    format!("{grpc:?} is neither host:port (an IP address) nor unix:/path"),
                );
                GrpcListen::Tcp(SocketAddr::from(([127, 0, 0, 1], 9191)))
            }
        }
    };
    let http = http.and_then(|h| match h.parse::<SocketAddr>() {
        Ok(addr) => Some(addr),
        Err(_) => {
            issues.push("listen.http", format!("{h:?} is not an IP host:port"));
            None
        }
    });
    let grpc_socket_mode =
        mode.and_then(
            |m| match u32::from_str_radix(m.trim_start_matches("0o"), 8) {
                Ok(v) if v <= 0o777 => Some(v),
                _ => {
                    issues.push(
                        "listen.grpc_socket_mode",
                        format!("{m:?} is not an octal file mode like \"0660\""),
                    );
                    None
                }
            },
        );
    if grpc_tls.is_some() && matches!(grpc, GrpcListen::Unix(_)) {
        issues.push(
            "listen.grpc_tls",
            "TLS is not offered on a unix: listener (its file mode is the access control); use a TCP address",
        );
    }
    if grpc_socket_mode.is_some() && !matches!(grpc, GrpcListen::Unix(_)) {
        issues.push(
            "listen.grpc_socket_mode",
            "only applies to a unix: gRPC listener",
        );
    }
    Listen {
        grpc,
        http,
        grpc_socket_mode,
        grpc_tls,
    }
}

fn validate_issuer(
    raw: RawIssuer,
    index: usize,
    at: &str,
    issues: &mut Issues,
) -> Option<IssuerConfig> {
    let before = issues.0.len();

    let issuer = match raw.issuer {
        Some(s) if !s.is_empty() => s,
        _ => {
            issues.push(
                format!("{at}.issuer"),
                "required (the exact `iss` of its tokens)",
            );
            String::new()
        }
    };
    let name = raw.name.unwrap_or_else(|| format!("issuer{index}"));
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        issues.push(
            format!("{at}.name"),
            "must be non-empty and use only [A-Za-z0-9._-]",
        );
    }

    let source = match (raw.jwks_uri, raw.discovery) {
        (Some(uri), _) => {
            check_fetch_url(&uri, raw.allow_http, &format!("{at}.jwks_uri"), issues);
            JwksSource::Uri(uri)
        }
        (None, true) => {
            check_fetch_url(&issuer, raw.allow_http, &format!("{at}.issuer"), issues);
            JwksSource::Discovery
        }
        (None, false) => {
            issues.push(
                format!("{at}.jwks_uri"),
                "required unless `discovery: true`",
            );
            JwksSource::Discovery
        }
    };

    let audiences = raw.audiences.unwrap_or_default();
    if audiences.is_empty() || audiences.iter().any(String::is_empty) {
        issues.push(
            format!("{at}.audiences"),
            "required: one or more non-empty audiences the token's `aud` must contain",
        );
    }

    let algorithms = match raw.algorithms {
        None => SUPPORTED_ALGORITHMS.to_vec(),
        Some(list) => {
            if list.is_empty() {
                issues.push(format!("{at}.algorithms"), "must not be empty");
            }
            let mut algs = Vec::new();
            for (j, name) in list.iter().enumerate() {
                match parse_algorithm(name) {
                    Ok(alg) => algs.push(alg),
                    Err(msg) => issues.push(format!("{at}.algorithms[{j}]"), msg),
                }
            }
            algs
        }
    };

    let leeway = raw.leeway.unwrap_or(Duration::from_secs(30));
    if leeway > MAX_LEEWAY {
        issues.push(format!("{at}.leeway"), "must be at most 1h");
    }

    let mut token_types = Vec::new();
    for (j, t) in raw.token_types.iter().enumerate() {
        if t.is_empty() || !t.bytes().all(|b| b.is_ascii_graphic()) {
            issues.push(
                format!("{at}.token_types[{j}]"),
                "must be a non-empty media type like at+jwt",
            );
        }
        token_types.push(normalize_typ(t));
    }

    let claims = ClaimPaths {
        user_id: claim_path(
            raw.claims.user_id.as_deref().unwrap_or("sub"),
            &format!("{at}.claims.user_id"),
            issues,
        ),
        tenant_id: claim_path(
            raw.claims.tenant_id.as_deref().unwrap_or("tenant_id"),
            &format!("{at}.claims.tenant_id"),
            issues,
        ),
        roles: {
            let list = raw.claims.roles.unwrap_or_else(|| vec!["roles".to_owned()]);
            if list.is_empty() {
                issues.push(
                    format!("{at}.claims.roles"),
                    "must name at least one claim path",
                );
            }
            list.iter()
                .enumerate()
                .map(|(j, p)| claim_path(p, &format!("{at}.claims.roles[{j}]"), issues))
                .collect()
        },
    };

    (issues.0.len() == before).then_some(IssuerConfig {
        name,
        issuer,
        source,
        allow_http: raw.allow_http,
        audiences,
        algorithms,
        leeway,
        token_types,
        claims,
    })
}

fn claim_path(path: &str, at: &str, issues: &mut Issues) -> Vec<String> {
    let parts: Vec<String> = path.split('.').map(str::to_owned).collect();
    if parts.iter().any(String::is_empty) {
        issues.push(
            at,
            format!("{path:?} is not a dotted claim path like realm_access.roles"),
        );
    }
    parts
}

/// `typ` values compare case-insensitively with any `application/` prefix ignored (RFC 8725 §3.11).
pub fn normalize_typ(typ: &str) -> String {
    let lower = typ.to_ascii_lowercase();
    match lower.strip_prefix("application/") {
        Some(rest) => rest.to_owned(),
        None => lower,
    }
}

fn parse_algorithm(name: &str) -> Result<Algorithm, String> {
    let alg = match name {
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "EdDSA" => Algorithm::EdDSA,
        n if n.eq_ignore_ascii_case("none") || n.to_ascii_uppercase().starts_with("HS") => {
            return Err(format!(
                "{n:?} is refused: only asymmetric algorithms are accepted (symmetric or unsigned tokens could be forged by anyone holding the secret)"
            ));
        }
        n => {
            return Err(format!(
                "{n:?} is not supported; use RS256/384/512, PS256/384/512, ES256/384 or EdDSA"
            ));
        }
    };
    Ok(alg)
}

/// A JWKS or discovery URL must be https, or http on a loopback host, or http with `allow_http`.
fn check_fetch_url(url: &str, allow_http: bool, at: &str, issues: &mut Issues) {
    if let Err(msg) = fetch_url_allowed(url, allow_http) {
        issues.push(at, msg);
    }
}

/// The rule for JWKS and discovery URLs, shared by `check-config` and the fetcher (a discovered
/// `jwks_uri` is checked at fetch time).
pub fn fetch_url_allowed(url: &str, allow_http: bool) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    match parsed.scheme() {
        "https" => Ok(()),
        "http" if allow_http || is_loopback_host(&parsed) => Ok(()),
        "http" => Err(format!(
            "{url:?} uses http:// on a non-loopback host; use https:// or set allow_http: true"
        )),
        other => Err(format!("{url:?}: scheme {other:?} is not http(s)")),
    }
}

fn is_loopback_host(url: &reqwest::Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

fn validate_jwks(raw: RawJwks, issues: &mut Issues) -> JwksTiming {
    let t = JwksTiming {
        refresh_min: raw.refresh_min.unwrap_or(Duration::from_secs(30)),
        refresh_max: raw.refresh_max.unwrap_or(Duration::from_secs(3600)),
        max_stale: raw.max_stale.unwrap_or(Duration::from_secs(24 * 3600)),
        fetch_timeout: raw.fetch_timeout.unwrap_or(Duration::from_secs(2)),
    };
    if t.refresh_min.is_zero() {
        issues.push("jwks.refresh_min", "must be greater than 0");
    }
    if t.refresh_max < t.refresh_min {
        issues.push("jwks.refresh_max", "must be at least jwks.refresh_min");
    }
    if t.fetch_timeout.is_zero() {
        issues.push("jwks.fetch_timeout", "must be greater than 0");
    }
    t
}

fn validate_headers(raw: RawHeaders, issues: &mut Issues) -> HeaderNames {
    let names = HeaderNames {
        user_id: raw
            .user_id
            .unwrap_or_else(|| "x-user-id".to_owned())
            .to_ascii_lowercase(),
        tenant_id: raw
            .tenant_id
            .unwrap_or_else(|| "x-tenant-id".to_owned())
            .to_ascii_lowercase(),
        roles: raw
            .roles
            .unwrap_or_else(|| "x-user-roles".to_owned())
            .to_ascii_lowercase(),
    };
    for (field, value) in [
        ("headers.user_id", &names.user_id),
        ("headers.tenant_id", &names.tenant_id),
        ("headers.roles", &names.roles),
    ] {
        let token_chars = !value.is_empty()
            && value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !token_chars {
            issues.push(
                field,
                format!("{value:?} is not a header name of letters, digits and '-'"),
            );
        } else if matches!(
            value.as_str(),
            "authorization"
                | "host"
                | "content-length"
                | "content-type"
                | "connection"
                | "transfer-encoding"
                | "te"
                | "upgrade"
        ) {
            issues.push(field, format!("{value:?} is reserved"));
        }
    }
    if names.user_id == names.tenant_id
        || names.user_id == names.roles
        || names.tenant_id == names.roles
    {
        issues.push("headers", "the three header names must differ");
    }
    names
}

fn parse_cidr(s: &str) -> Option<IpNet> {
    s.parse::<IpNet>()
        .ok()
        .or_else(|| s.parse::<std::net::IpAddr>().ok().map(IpNet::from))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
issuers:
  - name: iam
    issuer: https://iam.example.com
    jwks_uri: https://iam.example.com/jwks
    audiences: [https://api.example.com]
policy:
  rules:
    - name: me
      paths: [/api/me]
"#;

    fn load(text: &str) -> Result<Config, ConfigError> {
        Config::from_yaml(text, Path::new("."))
    }

    fn paths(err: ConfigError) -> Vec<String> {
        err.issues.into_iter().map(|i| i.path).collect()
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = load(BASE).unwrap();
        assert_eq!(
            c.listen.grpc,
            GrpcListen::Tcp("127.0.0.1:9191".parse().unwrap())
        );
        assert_eq!(c.listen.http, Some("127.0.0.1:9192".parse().unwrap()));
        assert_eq!(c.realm, "citadel");
        assert_eq!(c.jwks.refresh_min, Duration::from_secs(30));
        assert_eq!(c.jwks.max_stale, Duration::from_secs(86400));
        assert_eq!(c.headers.roles, "x-user-roles");
        assert_eq!(c.max_token_bytes, 8192);
        assert_eq!(c.issuers[0].leeway, Duration::from_secs(30));
        assert_eq!(c.issuers[0].claims.roles, vec![vec!["roles".to_owned()]]);
        assert_eq!(c.trusted_proxies.len(), 2);
    }

    #[test]
    fn unknown_key_names_its_path() {
        let text = BASE.replace("    audiences:", "    audience: x\n    audiences:");
        let err = load(&text).unwrap_err();
        assert_eq!(paths(err.clone()), vec!["issuers[0].audience"]);
        assert!(
            err.to_string().contains("unknown field `audience`"),
            "{err}"
        );
    }

    #[test]
    fn bad_duration_names_its_path() {
        let text = BASE.replace("    audiences:", "    leeway: soon\n    audiences:");
        assert_eq!(paths(load(&text).unwrap_err()), vec!["issuers[0].leeway"]);
    }

    #[test]
    fn every_semantic_problem_is_reported_with_its_field() {
        let text = r#"
listen: { grpc: "nonsense" }
issuers:
  - issuer: https://a.example.com
    jwks_uri: http://a.example.com/jwks
    audiences: []
    algorithms: [HS256, none, ES256, XX1]
  - name: b
    issuer: https://b.example.com
    audiences: [x]
jwks: { refresh_min: 10m, refresh_max: 1m }
headers: { user_id: "x_user id" }
forward_auth: { trusted_proxies: [10.0.0.0/8, "not-a-cidr"] }
policy:
  rules:
    - name: t
      paths: [/api/{tenant}]
      tenant_param: org
    - name: t
      paths: [/x]
      issuers: [nobody]
"#;
        let got = paths(load(text).unwrap_err());
        for want in [
            "listen.grpc",
            "issuers[0].jwks_uri",
            "issuers[0].audiences",
            "issuers[0].algorithms[0]",
            "issuers[0].algorithms[1]",
            "issuers[0].algorithms[3]",
            "issuers[1].jwks_uri",
            "jwks.refresh_max",
            "headers.user_id",
            "forward_auth.trusted_proxies[1]",
        ] {
            assert!(got.contains(&want.to_owned()), "missing {want} in {got:?}");
        }
    }

    #[test]
    fn policy_errors_are_prefixed_inline() {
        let text = BASE.replace(
            "      paths: [/api/me]",
            "      paths: [/api/me]\n      tenant_param: t",
        );
        assert_eq!(
            paths(load(&text).unwrap_err()),
            vec!["policy.rules[0].tenant_param"]
        );
    }

    #[test]
    fn policy_file_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("policy.yaml"),
            "rules:\n  - name: a\n    paths: [/a]\n  - name: b\n    paths: [/b/{x}]\n    tenant_param: y\n",
        )
        .unwrap();
        let text = BASE.replace(
            "policy:\n  rules:\n    - name: me\n      paths: [/api/me]\n",
            "policy:\n  file: policy.yaml\n",
        );
        let err = Config::from_yaml(&text, dir.path()).unwrap_err();
        assert_eq!(paths(err), vec!["policy.yaml: rules[1].tenant_param"]);
    }

    #[test]
    fn policy_file_parse_errors_name_the_file_and_field() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("p.yaml"),
            "rules:\n  - name: a\n    paths: [/a]\n    roles: [x]\n",
        )
        .unwrap();
        let text = BASE.replace(
            "policy:\n  rules:\n    - name: me\n      paths: [/api/me]\n",
            "policy:\n  file: p.yaml\n",
        );
        let err = Config::from_yaml(&text, dir.path()).unwrap_err();
        assert_eq!(paths(err), vec!["p.yaml: rules[0].roles"]);
    }

    #[test]
    fn loopback_http_is_allowed_and_remote_http_needs_allow_http() {
        assert!(fetch_url_allowed("http://127.0.0.1:8080/jwks", false).is_ok());
        assert!(fetch_url_allowed("http://localhost/jwks", false).is_ok());
        assert!(fetch_url_allowed("http://[::1]/jwks", false).is_ok());
        assert!(fetch_url_allowed("http://iam.internal/jwks", false).is_err());
        assert!(fetch_url_allowed("http://iam.internal/jwks", true).is_ok());
        assert!(fetch_url_allowed("ftp://iam.internal/jwks", true).is_err());
        assert!(fetch_url_allowed("https://iam.example.com/jwks", false).is_ok());
    }

    #[test]
    fn unix_listener_and_socket_mode() {
        let text =
            format!("listen: {{ grpc: \"unix:/tmp/a.sock\", grpc_socket_mode: \"0660\" }}\n{BASE}");
        let c = load(&text).unwrap();
        assert_eq!(c.listen.grpc, GrpcListen::Unix("/tmp/a.sock".into()));
        assert_eq!(c.listen.grpc_socket_mode, Some(0o660));
        assert_eq!(c.listen.http, None, "listen given without http disables it");
    }

    #[test]
    fn path_params_in_flow_lists_parse_as_the_spec_writes_them() {
        let text = BASE.replace(
            "      paths: [/api/me]\n",
            "      paths: [/api/tenants/{tenant}/**, \"/q/{tenant}\", /x/{tenant}]\n      tenant_param: tenant\n    - name: block\n      paths:\n        - /b/{t}/c\n",
        );
        let c = load(&text).unwrap();
        assert_eq!(c.policy.len(), 2);
        let p = crate::policy::canonicalize("/api/tenants/acme/x").unwrap();
        assert_eq!(c.policy.find("GET", &p).unwrap().tenant, Some("acme"));
        assert_eq!(shield_path_params("a/{b c}/{}"), "a/{b c}/{}");
    }

    #[test]
    fn omitted_policy_is_the_empty_deny_all_policy() {
        let text = BASE.split("policy:").next().unwrap().to_owned();
        let c = load(&text).unwrap();
        assert!(c.policy.is_empty());
        let p = crate::policy::canonicalize("/api/me").unwrap();
        assert!(c.policy.find("GET", &p).is_none());
        let both = format!("{text}policy:\n  file: p.yaml\n  rules: []\n");
        assert_eq!(paths(load(&both).unwrap_err()), vec!["policy"]);
    }

    #[test]
    fn typ_normalization() {
        assert_eq!(normalize_typ("application/AT+JWT"), "at+jwt");
        assert_eq!(normalize_typ("JWT"), "jwt");
    }

    #[test]
    fn non_yaml_is_an_error_not_a_panic() {
        assert!(load("\u{0}\u{1}[[[").is_err());
        assert!(load("").is_err());
        assert!(load("- a\n- b").is_err());
    }
}
