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
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use jsonwebtoken::Algorithm;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_yaml_ng::{Mapping, Value};

use crate::core::identity::{is_safe_id, is_safe_role};
use crate::core::policy::{Policy, RawRule};
use crate::core::tenancy::{ANY_TENANT, MembershipTable, Memberships, Row};
pub use crate::core::tls_files::TlsFiles;
pub use crate::core::yaml::ConfigIssue;
use crate::core::yaml::shield_path_params;

/// Every problem found while loading a configuration.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigError {
    pub issues: Vec<ConfigIssue>,
    /// Warnings found on the way (see [`Config::warnings`]); not part of the message.
    pub warnings: Vec<ConfigIssue>,
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
            warnings: Vec::new(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Raw form: exactly what the YAML says, read field by field (see [`Fields`]).

#[derive(Debug, Default)]
struct RawConfig {
    listen: Option<RawListen>,
    realm: Option<String>,
    /// Issuers that could be read, each with its index in the YAML list (kept for field paths).
    issuers: Vec<(usize, RawIssuer)>,
    /// Entries in the YAML `issuers` list, readable or not.
    issuers_listed: usize,
    jwks: RawJwks,
    headers: RawHeaders,
    limits: RawLimits,
    forward_auth: RawForwardAuth,
    token_cache: RawTokenCache,
    decision_log: Option<DecisionLog>,
    shutdown_grace: Option<Duration>,
    shutdown_delay: Option<Duration>,
    policy: Option<RawPolicyRef>,
    membership: Option<RawMembership>,
    telemetry: Option<RawTelemetry>,
}

/// `telemetry` as written: OpenTelemetry span export.
#[derive(Debug, Default)]
struct RawTelemetry {
    otlp_endpoint: Option<String>,
    service_name: Option<String>,
    sampling_ratio: Option<f64>,
    parent_based: Option<bool>,
    export_timeout: Option<Duration>,
}

#[derive(Debug, Default)]
struct RawMembership {
    file: Option<String>,
    postgres: Option<RawPostgres>,
    issuers: Option<Vec<(String, Option<String>)>>,
    cache_ttl: Option<Duration>,
    max_stale: Option<Duration>,
    capacity: Option<u64>,
}

#[derive(Debug, Default)]
struct RawPostgres {
    url_env: Option<String>,
    url: Option<String>,
    query: Option<String>,
    notify_channel: Option<String>,
    pool_size: Option<u64>,
    connect_timeout: Option<Duration>,
    ca_file: Option<String>,
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

#[derive(Debug, Default)]
struct RawTokenCache {
    capacity: Option<u64>,
    max_ttl: Option<Duration>,
}

#[derive(Debug, Default)]
struct RawListen {
    grpc: Option<String>,
    http: Option<String>,
    /// File mode of the gRPC unix socket, as an octal string (`"0660"`).
    grpc_socket_mode: Option<String>,
    grpc_tls: Option<RawTls>,
    /// The admin API listener (issue 12): host:port or unix:/path.
    admin: Option<String>,
    admin_allow_remote: bool,
}

#[derive(Debug)]
struct RawTls {
    cert: PathBuf,
    key: PathBuf,
    client_ca: Option<PathBuf>,
}

#[derive(Debug, Default)]
struct RawIssuer {
    name: Option<String>,
    issuer: Option<String>,
    jwks_uri: Option<String>,
    discovery: bool,
    allow_http: bool,
    audiences: Option<Vec<String>>,
    algorithms: Option<Vec<String>>,
    leeway: Option<Duration>,
    token_types: Vec<String>,
    claims: RawClaims,
    introspection: Option<RawIntrospection>,
}

/// `issuers[*].introspection` as written (SPEC §9).
#[derive(Debug, Default)]
struct RawIntrospection {
    endpoint: Option<String>,
    client_id: Option<String>,
    client_secret_env: Option<String>,
    client_secret_file: Option<PathBuf>,
    auth_method: Option<ClientAuth>,
    tokens: Option<IntrospectTokens>,
    cache_ttl: Option<Duration>,
    negative_ttl: Option<Duration>,
    timeout: Option<Duration>,
}

#[derive(Debug, Default)]
struct RawClaims {
    user_id: Option<String>,
    tenant_id: Option<String>,
    roles: Option<Vec<String>>,
}

#[derive(Debug, Default)]
struct RawJwks {
    refresh_min: Option<Duration>,
    refresh_max: Option<Duration>,
    max_stale: Option<Duration>,
    fetch_timeout: Option<Duration>,
}

#[derive(Debug, Default)]
struct RawHeaders {
    user_id: Option<String>,
    tenant_id: Option<String>,
    roles: Option<String>,
}

#[derive(Debug, Default)]
struct RawLimits {
    max_token_bytes: Option<usize>,
    header_timeout: Option<Duration>,
    idle_timeout: Option<Duration>,
    max_connections: Option<usize>,
}

#[derive(Debug, Default)]
struct RawForwardAuth {
    trusted_proxies: Option<Vec<String>>,
}

#[derive(Debug, Default)]
struct RawPolicyRef {
    file: Option<PathBuf>,
    rules: Option<RawRules>,
}

/// Rules that could be read, each with its index in the YAML list, so that problems found when
/// compiling still name the rule as the file numbers it.
#[derive(Debug, Default)]
struct RawRules(Vec<(usize, RawRule)>);

/// One YAML mapping, read field by field.
///
/// Each field is deserialized on its own (with `serde_path_to_error` inside it), so one run
/// reports every unknown key, wrong type and bad duration of a file, not only the first one
/// serde meets. A key that no reader asked for is unknown: [`Fields::finish`] reports it. So a
/// section is added by asking for it (`root.get::<RawThing>("thing", issues)` or a reader of its
/// own), nothing else.
struct Fields<'v> {
    at: String,
    map: Option<&'v Mapping>,
    asked: Vec<&'static str>,
}

impl<'v> Fields<'v> {
    /// `value` found at `at`; anything but a mapping (or null, read as empty) is reported.
    fn new(value: &'v Value, at: &str, issues: &mut Issues) -> Self {
        let map = match value {
            Value::Mapping(m) => Some(m),
            Value::Null => None,
            other => {
                issues.push(
                    at,
                    format!("invalid type: {}, expected a mapping", kind(other)),
                );
                None
            }
        };
        Fields {
            at: at.to_owned(),
            map,
            asked: Vec::new(),
        }
    }

    fn path(&self, key: &str) -> String {
        if self.at.is_empty() || self.at.ends_with(": ") {
            format!("{}{key}", self.at)
        } else {
            format!("{}.{key}", self.at)
        }
    }

    /// The value of `key`; `None` when absent or null (null means "use the default").
    fn value(&mut self, key: &'static str) -> Option<&'v Value> {
        self.asked.push(key);
        match self.map?.get(key)? {
            Value::Null => None,
            v => Some(v),
        }
    }

    /// Whether a required `key` is absent (or null) from a mapping that is there.
    fn missing(&self, key: &str) -> bool {
        self.map
            .is_some_and(|m| m.get(key).is_none_or(Value::is_null))
    }

    /// Any serde type, for fields without a reader of their own (numbers, booleans, enums).
    fn get<T: DeserializeOwned>(&mut self, key: &'static str, issues: &mut Issues) -> Option<T> {
        let at = self.path(key);
        let v = self.value(key)?;
        match serde_path_to_error::deserialize::<_, T>(v) {
            Ok(t) => Some(t),
            Err(err) => {
                let sub = err.path().to_string();
                let path = match sub.as_str() {
                    "." => at,
                    s if s.starts_with('[') => format!("{at}{s}"),
                    s => format!("{at}.{s}"),
                };
                issues.push(path, err.into_inner().to_string());
                None
            }
        }
    }

    fn bool(&mut self, key: &'static str, issues: &mut Issues) -> bool {
        self.get(key, issues).unwrap_or_default()
    }

    /// A string. A plain scalar YAML reads as a number or boolean (`name: 2024`) is taken as
    /// written, as serde's typed parsing did before every field was read on its own.
    fn string(&mut self, key: &'static str, issues: &mut Issues) -> Option<String> {
        let at = self.path(key);
        let v = self.value(key)?;
        scalar_string(v, &at, issues)
    }

    fn strings(&mut self, key: &'static str, issues: &mut Issues) -> Option<Vec<String>> {
        let list = self.strings_at(key, issues)?;
        Some(list.into_iter().filter_map(|(_, s)| s).collect())
    }

    /// A list of strings, each element with its path and its value when it is a string.
    fn strings_at(
        &mut self,
        key: &'static str,
        issues: &mut Issues,
    ) -> Option<Vec<(String, Option<String>)>> {
        let list = self.list(key, issues)?;
        Some(
            list.into_iter()
                .map(|(at, v)| {
                    let s = scalar_string(v, &at, issues);
                    (at, s)
                })
                .collect(),
        )
    }

    fn duration(&mut self, key: &'static str, issues: &mut Issues) -> Option<Duration> {
        let at = self.path(key);
        let text = scalar_string(self.value(key)?, &at, issues)?;
        match humantime::parse_duration(&text) {
            Ok(d) => Some(d),
            Err(e) => {
                issues.push(
                    at,
                    format!("{text:?} is not a duration like 30s, 5m or 1h: {e}"),
                );
                None
            }
        }
    }

    /// A nested mapping; `None` when absent.
    fn section(&mut self, key: &'static str, issues: &mut Issues) -> Option<Fields<'v>> {
        let at = self.path(key);
        self.value(key).map(|v| Fields::new(v, &at, issues))
    }

    /// A list: each element with its path (`issuers[2]`).
    fn list(&mut self, key: &'static str, issues: &mut Issues) -> Option<Vec<(String, &'v Value)>> {
        let at = self.path(key);
        match self.value(key)? {
            Value::Sequence(items) => Some(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| (format!("{at}[{i}]"), v))
                    .collect(),
            ),
            other => {
                issues.push(
                    at,
                    format!("invalid type: {}, expected a list", kind(other)),
                );
                None
            }
        }
    }

    /// Report every key no reader asked for.
    fn finish(self, issues: &mut Issues) {
        let Some(map) = self.map else { return };
        let expected = self
            .asked
            .iter()
            .map(|k| format!("`{k}`"))
            .collect::<Vec<_>>()
            .join(", ");
        for key in map.keys() {
            match key.as_str() {
                Some(name) if self.asked.contains(&name) => {}
                Some(name) => issues.push(
                    self.path(name),
                    format!("unknown field `{name}`, expected one of {expected}"),
                ),
                None => issues.push(
                    self.at.clone(),
                    format!("{} is not a field name", kind(key)),
                ),
            }
        }
    }
}

fn scalar_string(v: &Value, at: &str, issues: &mut Issues) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        other => {
            issues.push(
                at,
                format!("invalid type: {}, expected a string", kind(other)),
            );
            None
        }
    }
}

/// How a value is named in a message (serde's wording: `string "x"`, `a list`).
fn kind(v: &Value) -> String {
    match v {
        Value::Null => "null".to_owned(),
        Value::Bool(b) => format!("boolean `{b}`"),
        Value::Number(n) => format!("number `{n}`"),
        Value::String(s) => format!("string {s:?}"),
        Value::Sequence(_) => "a list".to_owned(),
        Value::Mapping(_) => "a mapping".to_owned(),
        Value::Tagged(t) => format!("a value tagged {}", t.tag),
    }
}

/// Parse YAML text into a value: the one problem a syntax error allows, with its line and column.
fn parse_value(text: &str, label: &str) -> Result<Value, ConfigError> {
    let text = shield_path_params(text);
    serde_yaml_ng::from_str::<Value>(&text)
        .map_err(|e| ConfigError::one(label, format!("YAML syntax error: {e}")))
}

/// `None` when the document is not a mapping at all (reported): nothing else can be said then.
fn read_config(value: &Value, issues: &mut Issues) -> Option<RawConfig> {
    let before = issues.0.len();
    let mut root = Fields::new(value, "", issues);
    if issues.0.len() > before {
        return None;
    }
    let issuer_list = root.list("issuers", issues).unwrap_or_default();
    let raw = RawConfig {
        listen: root
            .section("listen", issues)
            .map(|f| read_listen(f, issues)),
        realm: root.string("realm", issues),
        issuers_listed: issuer_list.len(),
        issuers: issuer_list
            .into_iter()
            .enumerate()
            .filter_map(|(i, (at, v))| read_issuer(v, &at, issues).map(|r| (i, r)))
            .collect(),
        jwks: root
            .section("jwks", issues)
            .map(|f| read_jwks(f, issues))
            .unwrap_or_default(),
        headers: root
            .section("headers", issues)
            .map(|f| read_headers(f, issues))
            .unwrap_or_default(),
        limits: root
            .section("limits", issues)
            .map(|f| read_limits(f, issues))
            .unwrap_or_default(),
        forward_auth: root
            .section("forward_auth", issues)
            .map(|mut f| {
                let raw = RawForwardAuth {
                    trusted_proxies: f.strings("trusted_proxies", issues),
                };
                f.finish(issues);
                raw
            })
            .unwrap_or_default(),
        token_cache: root
            .section("token_cache", issues)
            .map(|mut f| {
                let raw = RawTokenCache {
                    capacity: f.get("capacity", issues),
                    max_ttl: f.duration("max_ttl", issues),
                };
                f.finish(issues);
                raw
            })
            .unwrap_or_default(),
        decision_log: root.get("decision_log", issues),
        shutdown_grace: root.duration("shutdown_grace", issues),
        shutdown_delay: root.duration("shutdown_delay", issues),
        policy: root.section("policy", issues).map(|mut f| {
            let raw = RawPolicyRef {
                file: f.string("file", issues).map(PathBuf::from),
                rules: f.list("rules", issues).map(|list| read_rules(list, issues)),
            };
            f.finish(issues);
            raw
        }),
        membership: root
            .section("membership", issues)
            .map(|f| read_membership(f, issues)),
        telemetry: root.section("telemetry", issues).map(|mut f| {
            let raw = RawTelemetry {
                otlp_endpoint: f.string("otlp_endpoint", issues),
                service_name: f.string("service_name", issues),
                sampling_ratio: f.get("sampling_ratio", issues),
                parent_based: f.get("parent_based", issues),
                export_timeout: f.duration("export_timeout", issues),
            };
            f.finish(issues);
            raw
        }),
    };
    root.finish(issues);
    Some(raw)
}

fn read_membership(mut f: Fields<'_>, issues: &mut Issues) -> RawMembership {
    let raw = RawMembership {
        file: f.string("file", issues),
        postgres: f.section("postgres", issues).map(|mut p| {
            let raw = RawPostgres {
                url_env: p.string("url_env", issues),
                url: p.string("url", issues),
                query: p.string("query", issues),
                notify_channel: p.string("notify_channel", issues),
                pool_size: p.get("pool_size", issues),
                connect_timeout: p.duration("connect_timeout", issues),
                ca_file: p.string("ca_file", issues),
            };
            p.finish(issues);
            raw
        }),
        issuers: f.strings_at("issuers", issues),
        cache_ttl: f.duration("cache_ttl", issues),
        max_stale: f.duration("max_stale", issues),
        capacity: f.get("capacity", issues),
    };
    f.finish(issues);
    raw
}

fn read_listen(mut f: Fields<'_>, issues: &mut Issues) -> RawListen {
    let raw = RawListen {
        grpc: f.string("grpc", issues),
        http: f.string("http", issues),
        grpc_socket_mode: f.string("grpc_socket_mode", issues),
        admin: f.string("admin", issues),
        admin_allow_remote: f.bool("admin_allow_remote", issues),
        grpc_tls: f.section("grpc_tls", issues).and_then(|mut t| {
            let cert = t.string("cert", issues);
            let key = t.string("key", issues);
            let client_ca = t.string("client_ca", issues).map(PathBuf::from);
            for field in ["cert", "key"] {
                if t.missing(field) {
                    issues.push(t.path(field), "required (a PEM file)");
                }
            }
            t.finish(issues);
            Some(RawTls {
                cert: PathBuf::from(cert?),
                key: PathBuf::from(key?),
                client_ca,
            })
        }),
    };
    f.finish(issues);
    raw
}

fn read_issuer(value: &Value, at: &str, issues: &mut Issues) -> Option<RawIssuer> {
    let mut f = Fields::new(value, at, issues);
    f.map?;
    let raw = RawIssuer {
        name: f.string("name", issues),
        issuer: f.string("issuer", issues),
        jwks_uri: f.string("jwks_uri", issues),
        discovery: f.bool("discovery", issues),
        allow_http: f.bool("allow_http", issues),
        audiences: f.strings("audiences", issues),
        algorithms: f.strings("algorithms", issues),
        leeway: f.duration("leeway", issues),
        token_types: f.strings("token_types", issues).unwrap_or_default(),
        claims: f
            .section("claims", issues)
            .map(|mut c| {
                let raw = RawClaims {
                    user_id: c.string("user_id", issues),
                    tenant_id: c.string("tenant_id", issues),
                    roles: c.strings("roles", issues),
                };
                c.finish(issues);
                raw
            })
            .unwrap_or_default(),
        introspection: f
            .section("introspection", issues)
            .map(|f| read_introspection(f, issues)),
    };
    f.finish(issues);
    Some(raw)
}

fn read_introspection(mut f: Fields<'_>, issues: &mut Issues) -> RawIntrospection {
    let raw = RawIntrospection {
        endpoint: f.string("endpoint", issues),
        client_id: f.string("client_id", issues),
        client_secret_env: f.string("client_secret_env", issues),
        client_secret_file: f.string("client_secret_file", issues).map(PathBuf::from),
        auth_method: f.get("auth_method", issues),
        tokens: f.get("tokens", issues),
        cache_ttl: f.duration("cache_ttl", issues),
        negative_ttl: f.duration("negative_ttl", issues),
        timeout: f.duration("timeout", issues),
    };
    f.finish(issues);
    raw
}

fn read_jwks(mut f: Fields<'_>, issues: &mut Issues) -> RawJwks {
    let raw = RawJwks {
        refresh_min: f.duration("refresh_min", issues),
        refresh_max: f.duration("refresh_max", issues),
        max_stale: f.duration("max_stale", issues),
        fetch_timeout: f.duration("fetch_timeout", issues),
    };
    f.finish(issues);
    raw
}

fn read_headers(mut f: Fields<'_>, issues: &mut Issues) -> RawHeaders {
    let raw = RawHeaders {
        user_id: f.string("user_id", issues),
        tenant_id: f.string("tenant_id", issues),
        roles: f.string("roles", issues),
    };
    f.finish(issues);
    raw
}

fn read_limits(mut f: Fields<'_>, issues: &mut Issues) -> RawLimits {
    let raw = RawLimits {
        max_token_bytes: f.get("max_token_bytes", issues),
        header_timeout: f.duration("header_timeout", issues),
        idle_timeout: f.duration("idle_timeout", issues),
        max_connections: f.get("max_connections", issues),
    };
    f.finish(issues);
    raw
}

fn read_rules(list: Vec<(String, &Value)>, issues: &mut Issues) -> RawRules {
    RawRules(
        list.into_iter()
            .enumerate()
            .filter_map(|(i, (at, v))| read_rule(v, &at, issues).map(|r| (i, r)))
            .collect(),
    )
}

/// One rule; `None` when its name or paths cannot be read (reported), since the policy compiler
/// needs both.
fn read_rule(value: &Value, at: &str, issues: &mut Issues) -> Option<RawRule> {
    let mut f = Fields::new(value, at, issues);
    f.map?;
    let name = f.string("name", issues);
    let paths = f
        .strings_at("paths", issues)
        .and_then(|list| list.into_iter().map(|(_, p)| p).collect::<Option<Vec<_>>>());
    for field in ["name", "paths"] {
        if f.missing(field) {
            issues.push(f.path(field), "required");
        }
    }
    let methods = f.strings_at("methods", issues).map(|list| {
        list.into_iter()
            .filter_map(|(path, m)| {
                let m = m?;
                if let Err(msg) = crate::core::lint::check_method(&m) {
                    issues.push(path, msg);
                }
                Some(m)
            })
            .collect()
    });
    let public = f.bool("public", issues);
    let roles_any = f.strings("roles_any", issues).unwrap_or_default();
    let roles_all = f.strings("roles_all", issues).unwrap_or_default();
    let tenant_param = f.string("tenant_param", issues);
    let issuers = f.strings("issuers", issues);
    f.finish(issues);
    Some(RawRule {
        name: name?,
        paths: paths?,
        methods,
        public,
        roles_any,
        roles_all,
        tenant_param,
        issuers,
    })
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
    /// The admin API (`Explain`, `Status`), when configured: loopback TCP or a unix socket unless
    /// `listen.admin_allow_remote` is true; never the ext_authz listener.
    pub admin: Option<GrpcListen>,
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
    /// RFC 7662 introspection (SPEC §9); at most one issuer has it.
    pub introspection: Option<IntrospectionConfig>,
}

/// How citadel-authz authenticates to the introspection endpoint (RFC 6749 §2.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    /// `Authorization: Basic` with the form-encoded id and secret.
    ClientSecretBasic,
    /// `client_id` and `client_secret` in the form body.
    ClientSecretPost,
}

/// Which tokens an issuer introspects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IntrospectTokens {
    /// Only Bearer values that are not JWTs.
    Opaque,
    /// Opaque tokens, and JWTs after their own checks (revocation).
    All,
}

/// A secret (a client secret, a database connection string): read at load, never printed. Debug and
/// Display show `<redacted>`, so the secret cannot reach a log line, an error or `check-config`
/// output through a formatted config.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(std::sync::Arc<str>);

impl Secret {
    pub fn new(value: &str) -> Self {
        Secret(std::sync::Arc::from(value))
    }

    /// The secret itself, for the one place that uses it (the introspection request, the
    /// database connection).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// `issuers[*].introspection`, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct IntrospectionConfig {
    /// `None`: read `introspection_endpoint` from the issuer's discovery document.
    pub endpoint: Option<String>,
    pub client_id: String,
    pub client_secret: Secret,
    pub auth_method: ClientAuth,
    pub tokens: IntrospectTokens,
    /// An active answer is reused at most this long (never past its `exp`); 0 = not reused.
    pub cache_ttl: Duration,
    /// An inactive (or refused) answer is reused this long; 0 = not reused.
    pub negative_ttl: Duration,
    /// The whole introspection call (connect, request, answer).
    pub timeout: Duration,
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
/// `telemetry`, validated: where and how spans are exported (OTLP over gRPC).
#[derive(Debug, Clone, PartialEq)]
pub struct TelemetryConfig {
    /// The collector's gRPC OTLP endpoint, `http://host:port`.
    pub otlp_endpoint: String,
    /// Resource attribute `service.name` (default `citadel-authz`).
    pub service_name: String,
    /// Share of new traces sampled, 0.0 to 1.0 (default 1.0).
    pub sampling_ratio: f64,
    /// Follow the incoming `traceparent`'s sampled flag when there is one (default true); the
    /// ratio then applies only to checks that start a trace.
    pub parent_based: bool,
    /// Longest one export call may take (default 10s).
    pub export_timeout: Duration,
}

/// `membership` (SPEC §8), validated.
#[derive(Debug, Clone, PartialEq)]
pub struct MembershipConfig {
    pub source: MembershipSource,
    /// Issuer names whose tokens are looked up; empty: every issuer.
    pub issuers: Vec<String>,
    /// A looked-up membership (also "none") is reused at most this long.
    pub cache_ttl: Duration,
    /// Store unreachable: a cached membership is used this long past its ttl.
    pub max_stale: Duration,
    /// Cached users at most (0: no cache).
    pub capacity: u64,
}

impl MembershipConfig {
    /// Whether tokens of the issuer named `issuer` are looked up.
    pub fn covers(&self, issuer: &str) -> bool {
        self.issuers.is_empty() || self.issuers.iter().any(|i| i == issuer)
    }

    /// The memberships file, when that is the source (watched for reload with the config).
    pub fn file(&self) -> Option<&Path> {
        match &self.source {
            MembershipSource::File { path, .. } => Some(path),
            MembershipSource::Postgres(_) => None,
        }
    }
}

/// Where memberships come from.
#[derive(Debug, Clone, PartialEq)]
pub enum MembershipSource {
    /// A YAML file, read with the config: a new version arrives as a new config.
    File {
        path: PathBuf,
        table: Arc<MembershipTable>,
    },
    Postgres(PostgresConfig),
}

/// `membership.postgres`.
#[derive(Debug, Clone, PartialEq)]
pub struct PostgresConfig {
    /// The connection string; it may hold a password, so it is never printed.
    pub url: Secret,
    /// Where the connection string came from, for messages (`membership.postgres.url_env
    /// (CITADEL_AUTHZ_DATABASE_URL)`), never the value.
    pub url_source: String,
    /// `$1` issuer name, `$2` user id → rows of (tenant, role).
    pub query: String,
    pub notify_channel: Option<String>,
    pub pool_size: usize,
    pub connect_timeout: Duration,
    /// CA certificates (PEM) the server's certificate must chain to with `sslmode=require`;
    /// `None`: the system's trusted CAs.
    pub ca_file: Option<PathBuf>,
}

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
    /// `membership` (SPEC §8): roles and tenants from a store as well as from the token.
    pub membership: Option<MembershipConfig>,
    /// `telemetry.otlp_endpoint` and its companions: one span per check, exported over OTLP.
    /// `None` (the default) means no exporter and no span is ever created.
    pub telemetry: Option<TelemetryConfig>,
    /// Things that are valid but probably not meant (a rule an earlier one shadows completely, a
    /// method that is not a standard HTTP method), with their field paths.
    pub warnings: Vec<ConfigIssue>,
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

const MS: Duration = Duration::from_millis(1);
const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86400);

/// `value` (default when absent) if within `range`, else a problem naming the field and the range.
/// Every duration is bounded so that no `Instant + Duration` built from config can overflow.
fn bounded(
    path: impl Into<String>,
    value: Option<Duration>,
    default: Duration,
    range: std::ops::RangeInclusive<Duration>,
    issues: &mut Issues,
) -> Duration {
    let Some(v) = value else { return default };
    if range.contains(&v) {
        return v;
    }
    issues.push(
        path,
        format!(
            "must be between {} and {} (got {})",
            humantime::format_duration(*range.start()),
            humantime::format_duration(*range.end()),
            humantime::format_duration(v)
        ),
    );
    default
}

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
        let value = parse_value(text, "")?;
        let mut issues = Issues::default();
        match read_config(&value, &mut issues) {
            Some(raw) => Self::from_raw(raw, base_dir, issues),
            None => Err(ConfigError {
                issues: issues.0,
                warnings: Vec::new(),
            }),
        }
    }

    /// Validate what could be read; `issues` already holds the problems found while reading, so
    /// the checks below run for every field that did parse and one run reports everything.
    fn from_raw(raw: RawConfig, base_dir: &Path, mut issues: Issues) -> Result<Self, ConfigError> {
        let mut warnings = Vec::new();
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

        if raw.issuers_listed == 0 {
            issues.push("issuers", "at least one issuer is required");
        }
        let mut issuers = Vec::with_capacity(raw.issuers.len());
        let mut names = HashSet::new();
        let mut iss_values = HashSet::new();
        let mut issuer_indices = Vec::with_capacity(raw.issuers.len());
        for (i, raw_issuer) in raw.issuers {
            let at = format!("issuers[{i}]");
            if let Some(issuer) = validate_issuer(raw_issuer, i, &at, base_dir, &mut issues) {
                if !names.insert(issuer.name.clone()) {
                    issues.push(
                        format!("{at}.name"),
                        format!("duplicate issuer name {:?}", issuer.name),
                    );
                }
                if !iss_values.insert(issuer.issuer.clone()) {
                    issues.push(format!("{at}.issuer"), "duplicate issuer URL");
                }
                issuer_indices.push(i);
                issuers.push(issuer);
            }
        }

        // SPEC §9: an opaque token names no issuer, so exactly one may introspect it.
        let introspecting: Vec<(usize, &IssuerConfig)> = issuer_indices
            .iter()
            .zip(&issuers)
            .filter(|(_, c)| c.introspection.is_some())
            .map(|(i, c)| (*i, c))
            .collect();
        if let [(first, a), rest @ ..] = introspecting.as_slice() {
            for (i, b) in rest {
                issues.push(
                    format!("issuers[{i}].introspection"),
                    format!(
                        "only one issuer may have introspection (opaque tokens name no issuer): issuers[{first}] ({}) and issuers[{i}] ({}) both do",
                        a.name, b.name
                    ),
                );
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
            header_timeout: bounded(
                "limits.header_timeout",
                raw.limits.header_timeout,
                defaults.header_timeout,
                MS * 100..=MINUTE * 5,
                &mut issues,
            ),
            idle_timeout: bounded(
                "limits.idle_timeout",
                raw.limits.idle_timeout,
                defaults.idle_timeout,
                MS * 100..=HOUR,
                &mut issues,
            ),
            max_connections: raw
                .limits
                .max_connections
                .unwrap_or(defaults.max_connections),
        };
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
            max_ttl: bounded(
                "token_cache.max_ttl",
                raw.token_cache.max_ttl,
                MINUTE * 5,
                Duration::ZERO..=DAY,
                &mut issues,
            ),
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
                let policy = compile_rules(rules, &issuer_names, "policy.", &mut issues).map(
                    |(policy, lints)| {
                        warnings.extend(lints);
                        policy
                    },
                );
                (policy, None)
            }
            Some(RawPolicyRef {
                file: Some(file),
                rules: None,
            }) => {
                let path = base_dir.join(&file);
                let policy = match read_policy_file(&path, &issuer_names) {
                    Ok((p, w)) => {
                        warnings.extend(w);
                        Some(p)
                    }
                    Err(e) => {
                        issues.0.extend(e.issues);
                        warnings.extend(e.warnings);
                        None
                    }
                };
                (policy, Some(path))
            }
        };
        let membership = raw
            .membership
            .and_then(|m| validate_membership(m, base_dir, &issuer_names, &mut issues));
        let telemetry = raw
            .telemetry
            .and_then(|t| validate_telemetry(t, &mut issues, &mut warnings));
        let shutdown_grace = bounded(
            "shutdown_grace",
            raw.shutdown_grace,
            Duration::from_secs(10),
            Duration::ZERO..=HOUR,
            &mut issues,
        );
        let shutdown_delay = bounded(
            "shutdown_delay",
            raw.shutdown_delay,
            Duration::ZERO,
            Duration::ZERO..=HOUR,
            &mut issues,
        );

        // A field that could not be read also fails the checks that need its value (`audiences:
        // oops` is then also "required"): its first problem says it.
        let mut seen = HashSet::new();
        issues.0.retain(|i| seen.insert(i.path.clone()));

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
                shutdown_grace,
                shutdown_delay,
                policy,
                policy_file,
                membership,
                telemetry,
                warnings,
            }),
            _ => Err(ConfigError {
                issues: issues.0,
                warnings,
            }),
        }
    }
}

/// Read and compile a policy file; problems are reported as `FILE: rules[2].field`.
pub fn load_policy_file(path: &Path, issuer_names: &[String]) -> Result<Policy, ConfigError> {
    read_policy_file(path, issuer_names).map(|(policy, _)| policy)
}

/// A policy file's compiled policy and its warnings.
fn read_policy_file(
    path: &Path,
    issuer_names: &[String],
) -> Result<(Policy, Vec<ConfigIssue>), ConfigError> {
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
    let value = parse_value(&text, &label)?;
    if !matches!(value, Value::Mapping(_) | Value::Null) {
        return Err(ConfigError::one(
            label,
            format!(
                "invalid type: {}, expected a mapping with `rules`",
                kind(&value)
            ),
        ));
    }
    let prefix = format!("{label}: ");
    let mut issues = Issues::default();
    let mut root = Fields::new(&value, &prefix, &mut issues);
    let rules = root
        .list("rules", &mut issues)
        .map(|list| read_rules(list, &mut issues));
    if rules.is_none() && issues.0.is_empty() {
        issues.push(format!("{prefix}rules"), "required: the list of rules");
    }
    root.finish(&mut issues);
    let compiled = rules.and_then(|r| compile_rules(r, issuer_names, &prefix, &mut issues));
    match (issues.0.is_empty(), compiled) {
        (true, Some(compiled)) => Ok(compiled),
        (_, compiled) => Err(ConfigError {
            issues: issues.0,
            warnings: compiled.map(|(_, w)| w).unwrap_or_default(),
        }),
    }
}

/// Compile the rules that could be read. Problems are named by the rule's index in the file
/// (the compiler numbers only the rules it was given) and a field the reader already reported is
/// not reported twice. Warnings (see [`crate::core::lint`]) come with the compiled policy.
fn compile_rules(
    rules: RawRules,
    issuer_names: &[String],
    prefix: &str,
    issues: &mut Issues,
) -> Option<(Policy, Vec<ConfigIssue>)> {
    let (index, raw): (Vec<usize>, Vec<RawRule>) = rules.0.into_iter().unzip();
    let warnings = crate::core::lint::policy_warnings(&index, &raw, prefix);
    match Policy::compile(raw, issuer_names) {
        Ok(policy) => Some((policy, warnings)),
        Err(errs) => {
            let reported: HashSet<String> = issues.0.iter().map(|i| i.path.clone()).collect();
            for e in errs {
                let path = format!("{prefix}{}", renumber_rule(&e.path, &index));
                if !reported.contains(&path) {
                    issues.push(path, e.message);
                }
            }
            None
        }
    }
}

/// `rules[k]…` of the k-th compiled rule → `rules[i]…` with i its index in the file.
fn renumber_rule(path: &str, index: &[usize]) -> String {
    if let Some(rest) = path.strip_prefix("rules[")
        && let Some((n, tail)) = rest.split_once(']')
        && let Some(i) = n.parse::<usize>().ok().and_then(|k| index.get(k))
    {
        return format!("rules[{i}]{tail}");
    }
    path.to_owned()
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
}

const POOL_SIZE_MAX: u64 = 64;

/// `telemetry`: an endpoint the exporter can use as it is, a ratio that is one, bounded timings.
/// Without `otlp_endpoint` tracing is off; other fields alone are then only a warning.
fn validate_telemetry(
    raw: RawTelemetry,
    issues: &mut Issues,
    warnings: &mut Vec<ConfigIssue>,
) -> Option<TelemetryConfig> {
    let export_timeout = bounded(
        "telemetry.export_timeout",
        raw.export_timeout,
        Duration::from_secs(10),
        MS..=MINUTE,
        issues,
    );
    let sampling_ratio = raw.sampling_ratio.unwrap_or(1.0);
    if !(0.0..=1.0).contains(&sampling_ratio) {
        issues.push(
            "telemetry.sampling_ratio",
            format!("must be between 0.0 and 1.0 (got {sampling_ratio})"),
        );
    }
    let service_name = raw
        .service_name
        .unwrap_or_else(|| "citadel-authz".to_owned());
    if service_name.is_empty()
        || service_name.len() > 255
        || !service_name.bytes().all(|b| b.is_ascii_graphic())
    {
        issues.push(
            "telemetry.service_name",
            "must be 1 to 255 visible ASCII characters",
        );
    }
    let Some(endpoint) = raw.otlp_endpoint else {
        warnings.push(ConfigIssue {
            path: "telemetry.otlp_endpoint".to_owned(),
            message: "not set: no spans are exported".to_owned(),
        });
        return None;
    };
    let at = "telemetry.otlp_endpoint";
    match url::Url::parse(&endpoint) {
        Err(e) => issues.push(at, format!("{endpoint:?} is not a URL: {e}")),
        // The exporter is built without TLS: an https endpoint would fail at the first export,
        // long after startup, so it is refused here.
        Ok(u) if u.scheme() != "http" => issues.push(
            at,
            "must be http://host:port (OTLP over plain gRPC; for TLS run a local collector)",
        ),
        Ok(u) if u.host_str().is_none_or(str::is_empty) => issues.push(at, "has no host"),
        // Credentials in the URL would end up in the exporter's error messages; the collector's
        // headers come from OTEL_EXPORTER_OTLP_HEADERS instead.
        Ok(u) if !u.username().is_empty() || u.password().is_some() => {
            issues.push(at, "must not carry credentials")
        }
        Ok(u) if u.path() != "/" || u.query().is_some() || u.fragment().is_some() => issues.push(
            at,
            "must be http://host:port without a path (gRPC OTLP has a fixed one)",
        ),
        Ok(_) => {}
    }
    Some(TelemetryConfig {
        otlp_endpoint: endpoint,
        service_name,
        sampling_ratio,
        parent_based: raw.parent_based.unwrap_or(true),
        export_timeout,
    })
}

/// `membership` (SPEC §8): exactly one source; issuer names that exist; bounded timings.
fn validate_membership(
    raw: RawMembership,
    base_dir: &Path,
    issuer_names: &[String],
    issues: &mut Issues,
) -> Option<MembershipConfig> {
    let mut issuers = Vec::new();
    for (at, name) in raw.issuers.unwrap_or_default() {
        let Some(name) = name else { continue };
        if !issuer_names.contains(&name) {
            issues.push(
                at,
                format!("{name:?} is not the name of a configured issuer"),
            );
        } else if !issuers.contains(&name) {
            issuers.push(name);
        }
    }
    let cache_ttl = bounded(
        "membership.cache_ttl",
        raw.cache_ttl,
        Duration::from_secs(30),
        Duration::ZERO..=DAY,
        issues,
    );
    let max_stale = bounded(
        "membership.max_stale",
        raw.max_stale,
        MINUTE * 5,
        Duration::ZERO..=DAY,
        issues,
    );
    let capacity = raw.capacity.unwrap_or(100_000);
    if capacity > 10_000_000 {
        issues.push("membership.capacity", "must be at most 10000000");
    }
    let source = match (raw.file, raw.postgres) {
        (Some(_), Some(_)) => {
            issues.push("membership", "give either `file` or `postgres`, not both");
            None
        }
        (None, None) => {
            issues.push(
                "membership",
                "a source is required: `file` (a memberships YAML file) or `postgres`",
            );
            None
        }
        (Some(file), None) => {
            let path = base_dir.join(file);
            match load_memberships_file(&path, issuer_names) {
                Ok(table) => Some(MembershipSource::File {
                    path,
                    table: Arc::new(table),
                }),
                Err(e) => {
                    issues.0.extend(e.issues);
                    None
                }
            }
        }
        (None, Some(pg)) => validate_postgres(pg, base_dir, issues).map(MembershipSource::Postgres),
    };
    Some(MembershipConfig {
        source: source?,
        issuers,
        cache_ttl,
        max_stale,
        capacity,
    })
}

fn validate_postgres(
    raw: RawPostgres,
    base_dir: &Path,
    issues: &mut Issues,
) -> Option<PostgresConfig> {
    let at = "membership.postgres";
    let url = match (raw.url_env, raw.url) {
        (Some(_), Some(_)) => {
            issues.push(at, "give either `url_env` or `url`, not both");
            None
        }
        (None, None) => {
            issues.push(
                at,
                "a connection string is required: `url_env` (the name of an environment variable holding it) or `url`",
            );
            None
        }
        (Some(name), None) => match std::env::var(&name) {
            Ok(v) if !v.trim().is_empty() => Some((v, format!("{at}.url_env ({name})"))),
            _ => {
                issues.push(
                    format!("{at}.url_env"),
                    format!("environment variable {name} is not set or empty"),
                );
                None
            }
        },
        (None, Some(v)) => Some((v, format!("{at}.url"))),
    };
    if let Some((value, source)) = &url
        && value.parse::<tokio_postgres::Config>().is_err()
    {
        // The parser's message may quote the value, which may hold a password: not shown.
        issues.push(
            source.split(' ').next().unwrap_or(at),
            "is not a PostgreSQL connection string (postgres://user:password@host:port/database, or key=value pairs); the value is not shown since it may hold a password",
        );
    }
    let query = raw.query.unwrap_or_default();
    if query.trim().is_empty() {
        issues.push(
            format!("{at}.query"),
            "required: a query taking $1 = issuer name and $2 = user id, returning (tenant, role) rows",
        );
    }
    if let Some(channel) = &raw.notify_channel {
        let ok = channel.len() <= 63
            && channel.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && channel
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !ok {
            issues.push(
                format!("{at}.notify_channel"),
                "must be a PostgreSQL identifier: letters, digits and `_`, not starting with a digit, at most 63 bytes",
            );
        }
    }
    let pool_size = raw.pool_size.unwrap_or(4);
    if !(1..=POOL_SIZE_MAX).contains(&pool_size) {
        issues.push(
            format!("{at}.pool_size"),
            format!("must be between 1 and {POOL_SIZE_MAX}"),
        );
    }
    let connect_timeout = bounded(
        format!("{at}.connect_timeout"),
        raw.connect_timeout,
        Duration::from_secs(2),
        MS * 100..=MINUTE,
        issues,
    );
    let ca_file = raw.ca_file.map(|f| base_dir.join(f));
    if let Some(path) = &ca_file
        && let Err(e) = crate::core::tls_files::ca_certificates(path)
    {
        issues.push(format!("{at}.ca_file"), e);
    }
    let (url, url_source) = url?;
    Some(PostgresConfig {
        url: Secret::new(&url),
        url_source,
        query,
        notify_channel: raw.notify_channel,
        pool_size: usize::try_from(pool_size).unwrap_or(1),
        connect_timeout,
        ca_file,
    })
}

/// Read and validate a memberships file (SPEC §8); problems are reported as
/// `FILE: members[2].tenants.acme[0]`. An entry's `issuer` must name a configured issuer.
pub fn load_memberships_file(
    path: &Path,
    issuer_names: &[String],
) -> Result<MembershipTable, ConfigError> {
    let label = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string());
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigError::one(
            "membership.file",
            format!("cannot read {}: {e}", path.display()),
        )
    })?;
    parse_memberships(&text, &label, issuer_names)
}

/// A memberships file given as text; `label` prefixes the field paths.
pub fn parse_memberships(
    text: &str,
    label: &str,
    issuer_names: &[String],
) -> Result<MembershipTable, ConfigError> {
    let value = serde_yaml_ng::from_str::<Value>(text)
        .map_err(|e| ConfigError::one(label, format!("YAML syntax error: {e}")))?;
    let prefix = format!("{label}: ");
    let mut issues = Issues::default();
    let mut root = Fields::new(&value, &prefix, &mut issues);
    let members = root.list("members", &mut issues);
    if members.is_none() && issues.0.is_empty() {
        issues.push(format!("{prefix}members"), "required: the list of members");
    }
    root.finish(&mut issues);
    let mut table = MembershipTable::default();
    for (at, v) in members.unwrap_or_default() {
        let mut f = Fields::new(v, &at, &mut issues);
        let subject = f.string("subject", &mut issues);
        let issuer = f.string("issuer", &mut issues);
        let tenants = f.section("tenants", &mut issues);
        let memberships = tenants.map(|t| read_tenants(t, &mut issues));
        if f.missing("subject") {
            issues.push(format!("{at}.subject"), "required: the token's user id");
        }
        if f.missing("tenants") {
            issues.push(
                format!("{at}.tenants"),
                "required: a mapping of tenant to its roles",
            );
        }
        f.finish(&mut issues);
        if let Some(s) = &subject
            && !is_safe_id(s)
        {
            issues.push(
                format!("{at}.subject"),
                "must be printable ASCII without `,` or surrounding spaces, at most 1024 bytes",
            );
        }
        if let Some(i) = &issuer
            && !issuer_names.contains(i)
        {
            issues.push(
                format!("{at}.issuer"),
                format!("{i:?} is not the name of a configured issuer"),
            );
        }
        if let (Some(subject), Some(memberships)) = (subject, memberships) {
            if table.contains(&subject, issuer.as_deref()) {
                issues.push(
                    at.clone(),
                    format!(
                        "a second entry for subject {subject:?}{}: merge them into one",
                        issuer
                            .as_deref()
                            .map(|i| format!(" and issuer {i:?}"))
                            .unwrap_or_default()
                    ),
                );
            }
            table.insert(&subject, issuer.as_deref(), memberships);
        }
    }
    if issues.0.is_empty() {
        Ok(table)
    } else {
        Err(ConfigError {
            issues: issues.0,
            warnings: Vec::new(),
        })
    }
}

/// `tenants:` — tenant → list of roles (an empty list or null: a member without roles).
fn read_tenants(f: Fields<'_>, issues: &mut Issues) -> Memberships {
    let mut rows = Vec::new();
    let Some(map) = f.map else {
        return Memberships::default();
    };
    for (key, value) in map {
        let Some(tenant) = key.as_str().map(str::to_owned).or_else(|| match key {
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        }) else {
            issues.push(f.at.clone(), format!("{} is not a tenant name", kind(key)));
            continue;
        };
        let at = f.path(&tenant);
        if tenant != ANY_TENANT && !is_safe_id(&tenant) {
            issues.push(
                at.clone(),
                "a tenant must be printable ASCII without `,` or surrounding spaces, at most 1024 bytes (or `*`)",
            );
            continue;
        }
        let roles: Vec<(String, &Value)> = match value {
            Value::Null => Vec::new(),
            Value::Sequence(items) => items
                .iter()
                .enumerate()
                .map(|(i, v)| (format!("{at}[{i}]"), v))
                .collect(),
            other => {
                issues.push(
                    at,
                    format!("invalid type: {}, expected a list of roles", kind(other)),
                );
                continue;
            }
        };
        if roles.is_empty() {
            rows.push(Row {
                tenant: tenant.as_str().into(),
                role: None,
            });
        }
        for (role_at, v) in roles {
            let Some(role) = scalar_string(v, &role_at, issues) else {
                continue;
            };
            if !is_safe_role(&role) {
                issues.push(
                    role_at,
                    "a role must be printable ASCII without spaces, `,`, `\"`, `;` or `\\`, at most 1024 bytes",
                );
                continue;
            }
            rows.push(Row {
                tenant: tenant.as_str().into(),
                role: Some(role.into()),
            });
        }
    }
    Memberships::new(rows)
}

fn validate_listen(raw: Option<RawListen>, base_dir: &Path, issues: &mut Issues) -> Listen {
    // `listen` omitted: both listeners on their defaults. `listen` given without `http`: no HTTP.
    let (grpc, http, mode, tls, admin, admin_allow_remote) = match raw {
        None => (None, Some(DEFAULT_HTTP.to_owned()), None, None, None, false),
        Some(l) => (
            l.grpc,
            l.http,
            l.grpc_socket_mode,
            l.grpc_tls,
            l.admin,
            l.admin_allow_remote,
        ),
    };
    let grpc_tls = tls.map(|t| TlsFiles {
        cert: base_dir.join(t.cert),
        key: base_dir.join(t.key),
        client_ca: t.client_ca.map(|c| base_dir.join(c)),
    });
    // Certificates are parsed here too, so `check-config` catches a bad PEM or a key that does
    // not match its certificate, not only `serve`.
    if let Some(t) = &grpc_tls
        && let Err(e) = crate::core::tls_files::check(t)
    {
        let field = match &e {
            crate::core::tls_files::TlsError::Read { field, .. }
            | crate::core::tls_files::TlsError::Invalid { field, .. } => {
                format!("listen.grpc_tls.{field}")
            }
            crate::core::tls_files::TlsError::Unsupported(_) => "listen.grpc_tls".to_owned(),
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
        match resolve_listen(&grpc) {
            Ok(addr) => GrpcListen::Tcp(addr),
            Err(msg) => {
                issues.push(
                    "listen.grpc",
                    format!("{msg} (give host:port or unix:/path)"),
                );
                GrpcListen::Tcp(SocketAddr::from(([127, 0, 0, 1], 9191)))
            }
        }
    };
    let http = http.and_then(|h| match resolve_listen(&h) {
        Ok(addr) => Some(addr),
        Err(msg) => {
            issues.push("listen.http", msg);
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
    let admin = admin.and_then(|a| validate_admin(&a, admin_allow_remote, &grpc, http, issues));
    Listen {
        grpc,
        http,
        grpc_socket_mode,
        grpc_tls,
        admin,
    }
}

/// `listen.admin`: the admin API explains any decision and shows the issuers, so by default it
/// is reachable from this host only — loopback TCP or a unix socket (its file mode, 0600, is the
/// access control) — and never shares a port with ext_authz or HTTP.
fn validate_admin(
    value: &str,
    allow_remote: bool,
    grpc: &GrpcListen,
    http: Option<SocketAddr>,
    issues: &mut Issues,
) -> Option<GrpcListen> {
    let admin = if let Some(path) = value.strip_prefix("unix:") {
        if path.is_empty() {
            issues.push("listen.admin", "unix: needs a socket path");
            return None;
        }
        GrpcListen::Unix(PathBuf::from(path))
    } else {
        match resolve_listen(value) {
            Ok(addr) => {
                if !addr.ip().is_loopback() && !allow_remote {
                    issues.push(
                        "listen.admin",
                        format!("{addr} is not a loopback address: the admin API explains every decision, so it listens on 127.0.0.1, [::1] or a unix: socket unless listen.admin_allow_remote: true"),
                    );
                }
                GrpcListen::Tcp(addr)
            }
            Err(msg) => {
                issues.push(
                    "listen.admin",
                    format!("{msg} (give host:port or unix:/path)"),
                );
                return None;
            }
        }
    };
    let clash = match (&admin, grpc) {
        (GrpcListen::Tcp(a), GrpcListen::Tcp(g)) => a.port() != 0 && a == g,
        (GrpcListen::Unix(a), GrpcListen::Unix(g)) => a == g,
        _ => false,
    } || matches!(&admin, GrpcListen::Tcp(a) if a.port() != 0 && Some(*a) == http);
    if clash {
        issues.push(
            "listen.admin",
            "must be its own listener, not the ext_authz (listen.grpc) or HTTP one",
        );
    }
    Some(admin)
}

/// A listener's `host:port`: an IP address, or a host name resolved now, so that a name that
/// does not resolve is a config error rather than a failure at bind time. A name with several
/// addresses binds its first IPv4 one (else its first): `localhost` commonly resolves to both
/// 127.0.0.1 and ::1, and clients and gateway samples dial 127.0.0.1.
fn resolve_listen(value: &str) -> Result<SocketAddr, String> {
    use std::net::ToSocketAddrs;
    if let Ok(addr) = value.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let Some((host, port)) = value.rsplit_once(':') else {
        return Err(format!("{value:?} is not host:port"));
    };
    let Ok(port) = port.parse::<u16>() else {
        return Err(format!(
            "{value:?}: the port must be a number from 0 to 65535"
        ));
    };
    if host.is_empty() {
        return Err(format!("{value:?} has no host"));
    }
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("{value:?}: cannot resolve host {host:?}: {e}"))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or_else(|| addrs.first())
        .copied()
        .ok_or_else(|| format!("{value:?}: host {host:?} resolves to no address"))
}

fn validate_issuer(
    raw: RawIssuer,
    index: usize,
    at: &str,
    base_dir: &Path,
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

    let leeway = bounded(
        format!("{at}.leeway"),
        raw.leeway,
        Duration::from_secs(30),
        Duration::ZERO..=HOUR,
        issues,
    );

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

    let introspection = raw.introspection.and_then(|r| {
        validate_introspection(
            r,
            raw.discovery,
            raw.allow_http,
            &format!("{at}.introspection"),
            base_dir,
            issues,
        )
    });

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
        introspection,
    })
}

/// `issuers[*].introspection`: the endpoint follows the JWKS URL rules (§5), the secret is read
/// now (a missing variable or file is a config error, not a 503 at the first opaque token), and
/// every duration is bounded.
fn validate_introspection(
    raw: RawIntrospection,
    discovery: bool,
    allow_http: bool,
    at: &str,
    base_dir: &Path,
    issues: &mut Issues,
) -> Option<IntrospectionConfig> {
    let before = issues.0.len();
    match &raw.endpoint {
        Some(url) => check_fetch_url(url, allow_http, &format!("{at}.endpoint"), issues),
        None if discovery => {}
        None => issues.push(
            format!("{at}.endpoint"),
            "required unless the issuer has `discovery: true` (introspection_endpoint)",
        ),
    }
    let client_id = match raw.client_id {
        Some(id) if !id.is_empty() => id,
        _ => {
            issues.push(format!("{at}.client_id"), "required");
            String::new()
        }
    };
    let secret = match (raw.client_secret_env, raw.client_secret_file) {
        (Some(_), Some(_)) => {
            issues.push(
                format!("{at}.client_secret_env"),
                "give either client_secret_env or client_secret_file, not both",
            );
            None
        }
        (None, None) => {
            issues.push(
                format!("{at}.client_secret_env"),
                "required: client_secret_env (an environment variable) or client_secret_file",
            );
            None
        }
        // The message names the variable or file, never its content.
        (Some(var), None) => match std::env::var(&var) {
            Ok(v) if !v.is_empty() => Some(Secret::new(&v)),
            Ok(_) => {
                issues.push(
                    format!("{at}.client_secret_env"),
                    format!("environment variable {var} is empty"),
                );
                None
            }
            Err(_) => {
                issues.push(
                    format!("{at}.client_secret_env"),
                    format!("environment variable {var} is not set (or not UTF-8)"),
                );
                None
            }
        },
        (None, Some(file)) => {
            let path = base_dir.join(&file);
            match std::fs::read_to_string(&path) {
                // A trailing newline is how editors and `echo` write files, not part of a secret.
                Ok(text) if !text.trim_end_matches(['\n', '\r']).is_empty() => {
                    Some(Secret::new(text.trim_end_matches(['\n', '\r'])))
                }
                Ok(_) => {
                    issues.push(
                        format!("{at}.client_secret_file"),
                        format!("{} is empty", path.display()),
                    );
                    None
                }
                Err(e) => {
                    issues.push(
                        format!("{at}.client_secret_file"),
                        format!("cannot read {}: {}", path.display(), e.kind()),
                    );
                    None
                }
            }
        }
    };
    let cache_ttl = bounded(
        format!("{at}.cache_ttl"),
        raw.cache_ttl,
        MINUTE,
        Duration::ZERO..=HOUR,
        issues,
    );
    let negative_ttl = bounded(
        format!("{at}.negative_ttl"),
        raw.negative_ttl,
        Duration::from_secs(10),
        Duration::ZERO..=HOUR,
        issues,
    );
    let timeout = bounded(
        format!("{at}.timeout"),
        raw.timeout,
        Duration::from_secs(2),
        MS * 10..=MINUTE,
        issues,
    );
    let config = IntrospectionConfig {
        endpoint: raw.endpoint,
        client_id,
        client_secret: secret?,
        auth_method: raw.auth_method.unwrap_or(ClientAuth::ClientSecretBasic),
        tokens: raw.tokens.unwrap_or(IntrospectTokens::Opaque),
        cache_ttl,
        negative_ttl,
        timeout,
    };
    (issues.0.len() == before).then_some(config)
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
    // Messages show the URL without the credentials it may carry (they reach logs and
    // check-config output).
    let shown = crate::core::redact::redact_url(url);
    let parsed = url::Url::parse(url).map_err(|e| format!("{shown:?} is not a URL: {e}"))?;
    match parsed.scheme() {
        "https" => Ok(()),
        "http" if allow_http || is_loopback_host(&parsed) => Ok(()),
        "http" => Err(format!(
            "{shown:?} uses http:// on a non-loopback host; use https:// or set allow_http: true"
        )),
        other => Err(format!("{shown:?}: scheme {other:?} is not http(s)")),
    }
}

fn is_loopback_host(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

fn validate_jwks(raw: RawJwks, issues: &mut Issues) -> JwksTiming {
    let before = issues.0.len();
    let t = JwksTiming {
        refresh_min: bounded(
            "jwks.refresh_min",
            raw.refresh_min,
            Duration::from_secs(30),
            MS..=DAY,
            issues,
        ),
        refresh_max: bounded(
            "jwks.refresh_max",
            raw.refresh_max,
            HOUR,
            MS..=DAY * 7,
            issues,
        ),
        max_stale: bounded(
            "jwks.max_stale",
            raw.max_stale,
            DAY,
            Duration::ZERO..=DAY * 30,
            issues,
        ),
        fetch_timeout: bounded(
            "jwks.fetch_timeout",
            raw.fetch_timeout,
            Duration::from_secs(2),
            MS..=MINUTE * 5,
            issues,
        ),
    };
    // Compared only when both are as written: a default standing in for a refused value would
    // make a second, misleading complaint.
    if issues.0.len() == before && t.refresh_max < t.refresh_min {
        issues.push(
            "jwks.refresh_max",
            format!(
                "must be at least jwks.refresh_min ({})",
                humantime::format_duration(t.refresh_min)
            ),
        );
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
    fn telemetry_is_off_by_default_and_validated_field_by_field() {
        assert_eq!(load(BASE).unwrap().telemetry, None);
        let with = |t: &str| load(&format!("{BASE}telemetry:\n{t}"));
        let t = with("  otlp_endpoint: http://127.0.0.1:4317\n")
            .unwrap()
            .telemetry
            .unwrap();
        assert_eq!(
            t,
            TelemetryConfig {
                otlp_endpoint: "http://127.0.0.1:4317".into(),
                service_name: "citadel-authz".into(),
                sampling_ratio: 1.0,
                parent_based: true,
                export_timeout: Duration::from_secs(10),
            }
        );
        // Other fields without an endpoint: off, with a warning naming the field.
        let c = with("  service_name: edge\n").unwrap();
        assert_eq!(c.telemetry, None);
        assert!(
            c.warnings
                .iter()
                .any(|w| w.path == "telemetry.otlp_endpoint"),
            "{:?}",
            c.warnings
        );
        let bad = [
            (
                "  otlp_endpoint: https://collector:4317\n",
                "telemetry.otlp_endpoint",
            ),
            (
                "  otlp_endpoint: 127.0.0.1:4317\n",
                "telemetry.otlp_endpoint",
            ),
            (
                "  otlp_endpoint: http://u:p@collector:4317\n",
                "telemetry.otlp_endpoint",
            ),
            (
                "  otlp_endpoint: http://collector:4317/v1/traces\n",
                "telemetry.otlp_endpoint",
            ),
            (
                "  otlp_endpoint: http://c:4317\n  sampling_ratio: 1.5\n",
                "telemetry.sampling_ratio",
            ),
            (
                "  otlp_endpoint: http://c:4317\n  sampling_ratio: .nan\n",
                "telemetry.sampling_ratio",
            ),
            (
                "  otlp_endpoint: http://c:4317\n  export_timeout: 0s\n",
                "telemetry.export_timeout",
            ),
            (
                "  otlp_endpoint: http://c:4317\n  service_name: \"a b\"\n",
                "telemetry.service_name",
            ),
            (
                "  otlp_endpoint: http://c:4317\n  parent_based: maybe\n",
                "telemetry.parent_based",
            ),
            (
                "  otlp_endpoint: http://c:4317\n  headers: {}\n",
                "telemetry.headers",
            ),
        ];
        for (text, field) in bad {
            assert_eq!(paths(with(text).unwrap_err()), vec![field], "{text}");
        }
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
    fn membership_section_problems_name_their_fields() {
        let with = |m: &str| format!("{BASE}membership:\n{m}");
        let p = |m: &str| paths(load(&with(m)).unwrap_err());
        assert_eq!(p("  issuers: [iam]\n"), vec!["membership"]);
        assert_eq!(
            p("  file: a.yaml\n  postgres: {url: postgres://x@localhost/db, query: SELECT 1}\n"),
            vec!["membership"]
        );
        assert_eq!(
            p(
                "  postgres:\n    url_env: CITADEL_TEST_SURELY_UNSET_VAR\n    query: q\n    notify_channel: 1bad\n    pool_size: 0\n  issuers: [nobody]\n  cache_ttl: 2d\n  capacity: 20000000\n"
            ),
            vec![
                "membership.issuers[0]",
                "membership.cache_ttl",
                "membership.capacity",
                "membership.postgres.url_env",
                "membership.postgres.notify_channel",
                "membership.postgres.pool_size",
            ]
        );
        assert_eq!(
            p("  postgres:\n    url: \"host=/tmp port=notaport password=hunter2\"\n"),
            vec!["membership.postgres.url", "membership.postgres.query"]
        );
        let err = load(&with(
            "  postgres:\n    url: \"host=/tmp port=notaport password=hunter2\"\n    query: q\n",
        ))
        .unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");

        let c = load(&with(
            "  postgres:\n    url: postgres://authz:hunter2@127.0.0.1:5432/policy\n    query: SELECT tenant, role FROM m WHERE issuer = $1 AND subject = $2\n",
        ))
        .unwrap();
        let m = c.membership.unwrap();
        assert_eq!(m.cache_ttl, Duration::from_secs(30));
        assert_eq!(m.max_stale, Duration::from_secs(300));
        assert!(
            m.covers("iam") && m.covers("other"),
            "empty issuers: every issuer"
        );
        let MembershipSource::Postgres(pg) = &m.source else {
            panic!("postgres source expected")
        };
        assert_eq!(pg.pool_size, 4);
        assert_eq!(pg.url_source, "membership.postgres.url");
        assert!(!format!("{m:?}").contains("hunter2"), "{m:?}");
    }

    #[test]
    fn a_database_ca_file_that_cannot_be_used_names_its_field() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("empty.pem"), "not a certificate\n").unwrap();
        for file in ["missing.pem", "empty.pem"] {
            let text = format!(
                "{BASE}membership:\n  postgres:\n    url: postgres://u@127.0.0.1/db\n    query: q\n    ca_file: {file}\n"
            );
            let err = Config::from_yaml(&text, dir.path()).unwrap_err();
            assert_eq!(paths(err), vec!["membership.postgres.ca_file"], "{file}");
        }
    }

    #[test]
    fn memberships_file_is_validated_whole_with_field_paths() {
        let names = ["iam".to_owned()];
        let err = parse_memberships(
            "members:\n  - subject: alice\n    tenants:\n      acme: [admin, \"a,b\"]\n      \"bad tenant \": [x]\n      globex: member\n  - subject: alice\n    tenants: {}\n  - subject: bob\n    issuer: partner\n    role: x\n    tenants: {}\n",
            "m.yaml",
            &names,
        )
        .unwrap_err();
        assert_eq!(
            paths(err),
            vec![
                "m.yaml: members[0].tenants.acme[1]",
                "m.yaml: members[0].tenants.bad tenant ",
                "m.yaml: members[0].tenants.globex",
                "m.yaml: members[1]",
                "m.yaml: members[2].role",
                "m.yaml: members[2].issuer",
            ]
        );
        let t = parse_memberships(
            "members:\n  - subject: alice\n    issuer: iam\n    tenants:\n      acme: [admin, member]\n      globex: []\n      \"*\": [support]\n",
            "m.yaml",
            &names,
        )
        .unwrap();
        let m = t.lookup("iam", "alice");
        assert!(m.is_member_of("globex") && m.is_member_of("anything"));
        assert_eq!(
            m.roles_for(Some("acme")).collect::<Vec<_>>(),
            ["admin", "member", "support"]
        );
        assert_eq!(t.lookup("other", "alice"), Memberships::default());
    }

    #[test]
    fn a_refused_jwks_url_is_named_without_its_credentials() {
        let text = BASE.replace(
            "https://iam.example.com/jwks",
            "http://user:hunter2@iam.example.com/jwks?api_key=s3cret",
        );
        let err = load(&text).unwrap_err().to_string();
        assert!(err.contains("http://iam.example.com/jwks"), "{err}");
        assert!(!err.contains("hunter2") && !err.contains("s3cret"), "{err}");
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
        let p = crate::core::policy::canonicalize("/api/tenants/acme/x").unwrap();
        assert_eq!(c.policy.find("GET", &p).unwrap().tenant, Some("acme"));
        assert_eq!(shield_path_params("a/{b c}/{}"), "a/{b c}/{}");
    }

    #[test]
    fn omitted_policy_is_the_empty_deny_all_policy() {
        let text = BASE.split("policy:").next().unwrap().to_owned();
        let c = load(&text).unwrap();
        assert!(c.policy.is_empty());
        let p = crate::core::policy::canonicalize("/api/me").unwrap();
        assert!(c.policy.find("GET", &p).is_none());
        let both = format!("{text}policy:\n  file: p.yaml\n  rules: []\n");
        assert_eq!(paths(load(&both).unwrap_err()), vec!["policy"]);
    }

    #[test]
    fn five_mistakes_in_five_fields_are_five_problems_in_one_run() {
        // An unknown key, a bad duration, a wrong type, an unknown key in a rule and a semantic
        // error: serde alone stops at the first of them.
        let text = r#"
realm: citadel
listne: { grpc: 127.0.0.1:9191 }
issuers:
  - name: iam
    issuer: https://iam.example.com
    jwks_uri: https://iam.example.com/jwks
    audiences: [https://api.example.com]
    leeway: soon
    discovery: maybe
jwks: { refresh_min: 10m, refresh_max: 1m }
policy:
  rules:
    - name: me
      paths: [/api/me]
      roles: [x]
"#;
        let got = paths(load(text).unwrap_err());
        assert_eq!(
            got,
            vec![
                "issuers[0].discovery",
                "issuers[0].leeway",
                "policy.rules[0].roles",
                "listne",
                "jwks.refresh_max",
            ],
        );
    }

    #[test]
    fn a_field_that_cannot_be_read_is_reported_once() {
        let text = BASE.replace("[https://api.example.com]", "oops");
        let err = load(&text).unwrap_err();
        assert_eq!(paths(err.clone()), vec!["issuers[0].audiences"]);
        assert!(err.to_string().contains("invalid type"), "{err}");
    }

    #[test]
    fn unknown_keys_at_every_level_are_all_reported() {
        let text = BASE
            .replace("issuers:", "extra: 1\nissuers:")
            .replace(
                "    audiences:",
                "    claims: { user: sub }\n    audience: x\n    audiences:",
            )
            .replace(
                "      paths: [/api/me]",
                "      paths: [/api/me]\n      role: x",
            );
        let got = paths(load(&text).unwrap_err());
        for want in [
            "extra",
            "issuers[0].claims.user",
            "issuers[0].audience",
            "policy.rules[0].role",
        ] {
            assert!(got.contains(&want.to_owned()), "missing {want} in {got:?}");
        }
        assert_eq!(got.len(), 4, "{got:?}");
    }

    #[test]
    fn an_unreadable_list_entry_keeps_the_others_numbered_as_written() {
        let text = r#"
issuers:
  - just a string
  - name: b
    issuer: https://b.example.com
    jwks_uri: https://b.example.com/jwks
    audiences: []
policy:
  rules:
    - name: a
      paths: 5
    - name: b
      paths: [/b/{x}]
      tenant_param: y
"#;
        let got = paths(load(text).unwrap_err());
        assert_eq!(
            got,
            vec![
                "issuers[0]",
                "policy.rules[0].paths",
                "issuers[1].audiences",
                "policy.rules[1].tenant_param",
            ]
        );
    }

    #[test]
    fn syntax_errors_say_where() {
        let err = load("issuers:\n  - name: [a\n").unwrap_err();
        assert_eq!(err.issues.len(), 1);
        assert!(err.to_string().contains("line"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("p.yaml"), "rules: [\n").unwrap();
        let text = BASE.replace(
            "policy:\n  rules:\n    - name: me\n      paths: [/api/me]\n",
            "policy:\n  file: p.yaml\n",
        );
        let err = Config::from_yaml(&text, dir.path()).unwrap_err();
        assert_eq!(paths(err.clone()), vec!["p.yaml"], "{err}");
        assert!(err.to_string().contains("column"), "{err}");
    }

    #[test]
    fn numbers_and_booleans_are_read_as_written_where_a_string_is_expected() {
        let text = BASE
            .replace("  - name: iam", "  - name: 2024")
            .replace("[https://api.example.com]", "[12345, true]");
        let c = load(&text).unwrap();
        assert_eq!(c.issuers[0].name, "2024");
        assert_eq!(c.issuers[0].audiences, vec!["12345", "true"]);
    }

    #[test]
    fn every_duration_is_bounded() {
        for (field, yaml) in [
            ("jwks.max_stale", "jwks: { max_stale: 1000000000y }"),
            ("jwks.refresh_min", "jwks: { refresh_min: 0s }"),
            ("jwks.refresh_max", "jwks: { refresh_max: 100y }"),
            ("jwks.fetch_timeout", "jwks: { fetch_timeout: 1d }"),
            (
                "token_cache.max_ttl",
                "token_cache: { max_ttl: 1000000000y }",
            ),
            ("shutdown_grace", "shutdown_grace: 1000000000y"),
            ("shutdown_delay", "shutdown_delay: 2h"),
            (
                "limits.header_timeout",
                "limits: { header_timeout: 1000000000y }",
            ),
            ("limits.idle_timeout", "limits: { idle_timeout: 10ms }"),
        ] {
            let err = load(&format!("{yaml}\n{BASE}")).unwrap_err();
            assert_eq!(paths(err.clone()), vec![field], "{yaml}: {err}");
            assert!(err.to_string().contains("must be between"), "{err}");
        }
        let text = BASE.replace("    audiences:", "    leeway: 1000000000y\n    audiences:");
        let err = load(&text).unwrap_err();
        assert_eq!(paths(err.clone()), vec!["issuers[0].leeway"]);
        assert!(err.to_string().contains("between 0s and 1h"), "{err}");
        // Larger than humantime can count is a bad duration, not a panic.
        let text = format!("jwks: {{ max_stale: 99999999999999999999y }}\n{BASE}");
        assert_eq!(paths(load(&text).unwrap_err()), vec!["jwks.max_stale"]);
        // The largest allowed values load.
        let text = format!(
            "jwks: {{ refresh_min: 1d, refresh_max: 7d, max_stale: 30d, fetch_timeout: 5m }}\n{BASE}"
        );
        assert_eq!(load(&text).unwrap().jwks.max_stale, DAY * 30);
    }

    #[test]
    fn listeners_accept_host_names() {
        let text = format!("listen: {{ grpc: \"localhost:9191\", http: \"localhost:0\" }}\n{BASE}");
        let c = load(&text).unwrap();
        assert_eq!(
            c.listen.grpc,
            GrpcListen::Tcp("127.0.0.1:9191".parse().unwrap())
        );
        assert_eq!(c.listen.http, Some("127.0.0.1:0".parse().unwrap()));
        let text = format!("listen: {{ grpc: \"[::1]:9191\" }}\n{BASE}");
        assert_eq!(
            load(&text).unwrap().listen.grpc,
            GrpcListen::Tcp("[::1]:9191".parse().unwrap())
        );
        for (yaml, field) in [
            (
                "listen: { grpc: \"no-such-host.invalid:9191\" }",
                "listen.grpc",
            ),
            (
                "listen: { http: \"no-such-host.invalid:80\" }",
                "listen.http",
            ),
            ("listen: { grpc: \"localhost\" }", "listen.grpc"),
            ("listen: { grpc: \"localhost:99999\" }", "listen.grpc"),
            ("listen: { http: \":80\" }", "listen.http"),
        ] {
            let err = load(&format!("{yaml}\n{BASE}")).unwrap_err();
            assert_eq!(paths(err.clone()), vec![field], "{yaml}: {err}");
        }
    }

    #[test]
    fn lower_case_methods_are_an_error_and_odd_ones_a_warning() {
        let text = BASE.replace(
            "      paths: [/api/me]",
            "      paths: [/api/me]\n      methods: [GET, get, PURGE]",
        );
        let err = load(&text).unwrap_err();
        assert_eq!(paths(err.clone()), vec!["policy.rules[0].methods[1]"]);
        assert!(err.to_string().contains("\"GET\""), "{err}");
        assert_eq!(err.warnings.len(), 1, "{:?}", err.warnings);
        assert_eq!(err.warnings[0].path, "policy.rules[0].methods[2]");
        // A method the compiler refuses too is reported once.
        let text = BASE.replace(
            "      paths: [/api/me]",
            "      paths: [/api/me]\n      methods: [\"GE T\"]",
        );
        assert_eq!(
            paths(load(&text).unwrap_err()),
            vec!["policy.rules[0].methods[0]"]
        );
    }

    #[test]
    fn warnings_come_with_a_valid_config() {
        let text = BASE.replace(
            "      paths: [/api/me]\n",
            "      paths: [/api/**]\n    - name: shadowed\n      paths: [/api/me]\n      methods: [GET]\n",
        );
        let c = load(&text).unwrap();
        let w: Vec<String> = c.warnings.iter().map(ToString::to_string).collect();
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].starts_with("policy.rules[1]: "), "{w:?}");
        assert!(w[0].contains("\"me\""), "{w:?}");
        assert!(load(BASE).unwrap().warnings.is_empty());
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

    /// BASE with an `introspection` section on its issuer (`body` indented under it).
    fn with_introspection(body: &str) -> String {
        let body: String = body.lines().map(|l| format!("      {l}\n")).collect();
        BASE.replace(
            "    audiences: [https://api.example.com]\n",
            &format!("    audiences: [https://api.example.com]\n    introspection:\n{body}"),
        )
    }

    #[test]
    fn introspection_is_validated_with_defaults_and_the_secret_is_never_printed() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("secret.txt"), "s3cr3t-value\n").unwrap();
        let text = with_introspection(
            "endpoint: https://iam.example.com/introspect\nclient_id: citadel\nclient_secret_file: secret.txt",
        );
        let c = Config::from_yaml(&text, dir.path()).unwrap();
        let i = c.issuers[0].introspection.as_ref().unwrap();
        assert_eq!(
            i.client_secret.expose(),
            "s3cr3t-value",
            "trailing newline dropped"
        );
        assert_eq!(i.auth_method, ClientAuth::ClientSecretBasic);
        assert_eq!(i.tokens, IntrospectTokens::Opaque);
        assert_eq!(
            (i.cache_ttl, i.negative_ttl, i.timeout),
            (MINUTE, Duration::from_secs(10), Duration::from_secs(2))
        );
        let printed = format!("{c:?} {}", i.client_secret);
        assert!(!printed.contains("s3cr3t"), "{printed}");
        assert!(printed.contains("<redacted>"), "{printed}");

        // An environment variable that every test run has.
        let text = with_introspection(
            "endpoint: https://iam.example.com/introspect\nclient_id: citadel\nclient_secret_env: PATH\nauth_method: client_secret_post\ntokens: all\ncache_ttl: 5s\nnegative_ttl: 0s\ntimeout: 300ms",
        );
        let c = load(&text).unwrap();
        let i = c.issuers[0].introspection.as_ref().unwrap();
        assert_eq!(i.auth_method, ClientAuth::ClientSecretPost);
        assert_eq!(i.tokens, IntrospectTokens::All);
        assert_eq!(i.negative_ttl, Duration::ZERO);
        assert_eq!(i.timeout, Duration::from_millis(300));
    }

    #[test]
    fn introspection_problems_name_their_fields() {
        let text = with_introspection(
            "endpoint: http://iam.example.com/introspect\nclient_secret_env: CITADEL_TEST_SURELY_UNSET_VARIABLE\nauth_method: client_secret_jwt\ntokens: some\ncache_ttl: 2h\ntimeout: 0s\nextra: 1",
        );
        let err = load(&text).unwrap_err();
        let msg = err.to_string();
        let mut got = paths(err);
        got.sort();
        let at = |f: &str| format!("issuers[0].introspection.{f}");
        let mut want = vec![
            at("auth_method"),
            at("tokens"),
            at("extra"),
            at("endpoint"),
            at("client_id"),
            at("client_secret_env"),
            at("cache_ttl"),
            at("timeout"),
        ];
        want.sort();
        assert_eq!(got, want, "{msg}");
        assert!(
            msg.contains("CITADEL_TEST_SURELY_UNSET_VARIABLE is not set"),
            "{msg}"
        );
        assert!(msg.contains("allow_http"), "{msg}");

        // No endpoint: only with discovery.
        let text = with_introspection("client_id: c\nclient_secret_env: PATH");
        assert_eq!(
            paths(load(&text).unwrap_err()),
            vec!["issuers[0].introspection.endpoint"]
        );
        let text = text.replace(
            "    jwks_uri: https://iam.example.com/jwks\n",
            "    discovery: true\n",
        );
        assert!(
            load(&text).unwrap().issuers[0]
                .introspection
                .as_ref()
                .unwrap()
                .endpoint
                .is_none()
        );

        // Both secret sources, and a secret file that is missing.
        let text = with_introspection(
            "endpoint: https://iam.example.com/i\nclient_id: c\nclient_secret_env: PATH\nclient_secret_file: s",
        );
        assert_eq!(
            paths(load(&text).unwrap_err()),
            vec!["issuers[0].introspection.client_secret_env"]
        );
        let text = with_introspection(
            "endpoint: https://iam.example.com/i\nclient_id: c\nclient_secret_file: /nonexistent/secret",
        );
        let err = load(&text).unwrap_err();
        assert_eq!(
            err.issues[0].path,
            "issuers[0].introspection.client_secret_file"
        );
        assert!(err.to_string().contains("/nonexistent/secret"), "{err}");
    }

    #[test]
    fn two_issuers_with_introspection_are_one_error_naming_both() {
        let issuer = |name: &str, host: &str| {
            format!(
                "  - name: {name}\n    issuer: https://{host}\n    jwks_uri: https://{host}/jwks\n    audiences: [api]\n    introspection:\n      endpoint: https://{host}/introspect\n      client_id: c\n      client_secret_env: PATH\n"
            )
        };
        let text = format!(
            "issuers:\n{}{}{}policy:\n  rules: []\n",
            issuer("a", "a.example.com"),
            "  - name: b\n    issuer: https://b.example.com\n    jwks_uri: https://b.example.com/jwks\n    audiences: [api]\n",
            issuer("c", "c.example.com"),
        );
        let err = load(&text).unwrap_err();
        assert_eq!(paths(err.clone()), vec!["issuers[2].introspection"]);
        let msg = err.to_string();
        assert!(
            msg.contains("issuers[0] (a)") && msg.contains("issuers[2] (c)"),
            "{msg}"
        );
    }
}
