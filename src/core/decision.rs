//! The outcome of a check and its one mapping to what a client sees: HTTP status, gRPC code,
//! `WWW-Authenticate`, `Retry-After` and the small JSON body (SPEC §4).
//!
//! Both adapters (gRPC ext_authz and HTTP forward-auth) render a [`Decision`] through these
//! functions; neither decides anything itself. Reasons are short and never contain the token.

use std::sync::Arc;

use crate::core::identity::Identity;
use crate::core::policy::{PathError, PolicyDenial};
use crate::core::token::TokenError;

/// What the server decided for one request.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    Allow {
        rule: Arc<str>,
        /// `None` on public routes: every identity header is removed, none set.
        identity: Option<Arc<Identity>>,
    },
    Deny {
        /// The matched rule, when the denial came after matching.
        rule: Option<Arc<str>>,
        denial: Denial,
    },
}

/// Why a request is denied.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Denial {
    #[error("no bearer token")]
    NoCredentials,
    #[error("{0}")]
    InvalidToken(TokenError),
    #[error("{0}")]
    Policy(PolicyDenial),
    #[error("no rule matches this request")]
    NoRule,
    /// Envoy's `context_extensions` named a rule the policy does not have (SPEC §10); holds the
    /// name already quoted.
    #[error("citadel_rule {0} names no rule of the policy")]
    UnknownRule(String),
    #[error("{0}")]
    BadPath(PathError),
    /// Holds the method already quoted for messages.
    #[error("method {0} is not an upper-case HTTP token")]
    BadMethod(String),
    #[error("several Authorization values")]
    SeveralAuthorizations,
    #[error("{0}")]
    BadRequest(&'static str),
    #[error("forwarded headers from an untrusted peer")]
    UntrustedPeer,
    #[error("signing keys of issuer {issuer} are not available")]
    KeysUnavailable {
        issuer: Arc<str>,
        retry_after_secs: u64,
    },
    /// The membership store could not answer and no usable cached entry exists (SPEC §8):
    /// never an allow on unverified roles, never a 403 because the store is down.
    #[error("membership store is unavailable")]
    MembershipUnavailable {
        /// Why, for the decision log only (no secrets; the client is not told).
        detail: String,
        retry_after_secs: u64,
    },
    /// The introspection endpoint gave no usable answer (SPEC §9: never an allow, never a 401
    /// that would hide an IdP outage). `cause` is short and names neither token nor secret.
    #[error("introspection failed: {cause}")]
    IntrospectionFailed {
        issuer: Arc<str>,
        cause: Arc<str>,
        retry_after_secs: u64,
    },
}

/// The families of denial in SPEC §4's table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Allow,
    BadRequest,
    Unauthenticated,
    InvalidToken,
    InsufficientScope,
    Forbidden,
    Unavailable,
}

/// gRPC `google.rpc.Code` values used in `CheckResponse.status`.
pub mod grpc_code {
    pub const OK: i32 = 0;
    pub const INVALID_ARGUMENT: i32 = 3;
    pub const PERMISSION_DENIED: i32 = 7;
    pub const UNAVAILABLE: i32 = 14;
    pub const UNAUTHENTICATED: i32 = 16;
}

impl Outcome {
    pub fn http_status(self) -> u16 {
        match self {
            Outcome::Allow => 200,
            Outcome::BadRequest => 400,
            Outcome::Unauthenticated | Outcome::InvalidToken => 401,
            Outcome::InsufficientScope | Outcome::Forbidden => 403,
            Outcome::Unavailable => 503,
        }
    }

    pub fn grpc_code(self) -> i32 {
        match self {
            Outcome::Allow => grpc_code::OK,
            Outcome::BadRequest => grpc_code::INVALID_ARGUMENT,
            Outcome::Unauthenticated | Outcome::InvalidToken => grpc_code::UNAUTHENTICATED,
            Outcome::InsufficientScope | Outcome::Forbidden => grpc_code::PERMISSION_DENIED,
            Outcome::Unavailable => grpc_code::UNAVAILABLE,
        }
    }

    /// The body's `error` value (and the metrics label).
    pub fn error_code(self) -> &'static str {
        match self {
            Outcome::Allow => "allow",
            Outcome::BadRequest => "invalid_request",
            Outcome::Unauthenticated => "unauthorized",
            Outcome::InvalidToken => "invalid_token",
            Outcome::InsufficientScope => "insufficient_scope",
            Outcome::Forbidden => "forbidden",
            Outcome::Unavailable => "temporarily_unavailable",
        }
    }
}

impl Denial {
    pub fn outcome(&self) -> Outcome {
        match self {
            Denial::NoCredentials => Outcome::Unauthenticated,
            Denial::InvalidToken(_) => Outcome::InvalidToken,
            Denial::Policy(PolicyDenial::InsufficientScope) => Outcome::InsufficientScope,
            Denial::Policy(_) | Denial::NoRule | Denial::UnknownRule(_) | Denial::UntrustedPeer => {
                Outcome::Forbidden
            }
            Denial::BadPath(_)
            | Denial::BadMethod(_)
            | Denial::SeveralAuthorizations
            | Denial::BadRequest(_) => Outcome::BadRequest,
            Denial::KeysUnavailable { .. }
            | Denial::MembershipUnavailable { .. }
            | Denial::IntrospectionFailed { .. } => Outcome::Unavailable,
        }
    }
}

impl Denial {
    /// A short, fixed code for metrics labels (bounded, unlike the reason text).
    pub fn reason_code(&self) -> &'static str {
        use crate::core::token::TokenError as T;
        match self {
            Denial::NoCredentials => "no_credentials",
            Denial::InvalidToken(e) => match e {
                T::TooLarge(_) => "too_large",
                T::Bearer(_) | T::Malformed(_) | T::Header(_) => "malformed",
                T::DuplicateMember => "duplicate_member",
                T::Algorithm | T::KeyMismatch | T::AmbiguousKey => "algorithm_or_key",
                T::Crit => "crit",
                T::Type(_) => "typ",
                T::Issuer(_) => "issuer",
                T::UnknownKid(_) => "unknown_kid",
                T::Signature => "signature",
                T::Expired => "expired",
                T::NotYetValid | T::IssuedInFuture => "not_yet_valid",
                T::MissingClaim(_) | T::ClaimType(_) | T::UnsafeClaim(_) => "claims",
                T::Audience(_) => "audience",
                T::Inactive => "inactive",
            },
            Denial::Policy(PolicyDenial::InsufficientScope) => "insufficient_scope",
            Denial::Policy(PolicyDenial::TenantMismatch) => "tenant",
            Denial::Policy(PolicyDenial::IssuerNotAllowed) => "issuer_not_allowed",
            Denial::NoRule => "no_rule",
            Denial::UnknownRule(_) => "unknown_rule",
            Denial::BadPath(_) => "path",
            Denial::BadMethod(_) => "method",
            Denial::SeveralAuthorizations => "several_authorizations",
            Denial::BadRequest(_) => "bad_request",
            Denial::UntrustedPeer => "untrusted_peer",
            Denial::KeysUnavailable { .. } => "keys_unavailable",
            Denial::MembershipUnavailable { .. } => "membership_unavailable",
            Denial::IntrospectionFailed { .. } => "introspection_failed",
        }
    }
}

impl Denial {
    /// The reason for the decision log: the client's reason, and where it explains a refused
    /// token value, what the configuration accepts (the classic trailing-slash `iss`). The client
    /// is told only what it sent itself.
    pub fn log_reason(&self) -> String {
        match self {
            Denial::InvalidToken(e) => match e.accepted() {
                Some(accepted) => format!("{e}; {accepted}"),
                None => e.to_string(),
            },
            Denial::MembershipUnavailable { detail, .. } => format!("{self}: {detail}"),
            d => d.to_string(),
        }
    }
}

impl Decision {
    pub fn outcome(&self) -> Outcome {
        match self {
            Decision::Allow { .. } => Outcome::Allow,
            Decision::Deny { denial, .. } => denial.outcome(),
        }
    }

    pub fn deny(denial: Denial) -> Self {
        Decision::Deny { rule: None, denial }
    }
}

/// A denial rendered for the wire, the same for gRPC and HTTP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DenialResponse {
    pub status: u16,
    pub grpc_code: i32,
    /// Header name (lower case) and value; includes `content-type`.
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
}

/// Render a denial (SPEC §4). `realm` comes from the config.
pub fn render_denial(denial: &Denial, realm: &str) -> DenialResponse {
    let outcome = denial.outcome();
    let reason = denial.to_string();
    let mut headers = vec![("content-type", "application/json".to_owned())];
    match outcome {
        Outcome::Unauthenticated => {
            headers.push(("www-authenticate", format!("Bearer realm=\"{realm}\"")));
        }
        Outcome::InvalidToken => headers.push((
            "www-authenticate",
            format!(
                "Bearer realm=\"{realm}\", error=\"invalid_token\", error_description=\"{}\"",
                quoted_safe(&reason)
            ),
        )),
        Outcome::InsufficientScope => headers.push((
            "www-authenticate",
            format!("Bearer realm=\"{realm}\", error=\"insufficient_scope\""),
        )),
        Outcome::Unavailable => {
            let secs = match denial {
                Denial::KeysUnavailable {
                    retry_after_secs, ..
                }
                | Denial::MembershipUnavailable {
                    retry_after_secs, ..
                }
                | Denial::IntrospectionFailed {
                    retry_after_secs, ..
                } => *retry_after_secs,
                _ => 5,
            };
            headers.push(("retry-after", secs.max(1).to_string()));
        }
        Outcome::Allow | Outcome::BadRequest | Outcome::Forbidden => {}
    }
    let body = serde_json::json!({ "error": outcome.error_code(), "reason": reason }).to_string();
    DenialResponse {
        status: outcome.http_status(),
        grpc_code: outcome.grpc_code(),
        headers,
        body,
    }
}

/// RFC 6750 error_description: printable ASCII except `"` and `\`. The `…` that marks a cut
/// value becomes `...`; anything else outside that set becomes `'`.
fn quoted_safe(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '…' => out.push_str("..."),
            '"' | '\\' => out.push('\''),
            ' '..='~' => out.push(c),
            _ => out.push('\''),
        }
    }
    out
}

/// The identity headers of an allowed request: values to set, names to remove (SPEC §4).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IdentityHeaders {
    pub set: Vec<(String, String)>,
    pub remove: Vec<String>,
}

/// Which identity headers an allowed request carries upstream and which are removed.
pub fn identity_headers(
    identity: Option<&Identity>,
    names: &crate::core::config::HeaderNames,
) -> IdentityHeaders {
    let mut out = IdentityHeaders::default();
    let mut put = |name: &str, value: Option<String>| match value {
        Some(v) => out.set.push((name.to_owned(), v)),
        None => out.remove.push(name.to_owned()),
    };
    put(
        &names.user_id,
        identity.and_then(|i| i.user_id.as_deref().map(str::to_owned)),
    );
    put(
        &names.tenant_id,
        identity.and_then(|i| i.tenant_id.as_deref().map(str::to_owned)),
    );
    put(&names.roles, identity.and_then(Identity::roles_header));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_of_spec_section_4() {
        let realm = "citadel";
        let cases: Vec<(Denial, u16, i32, Option<&str>, &str)> = vec![
            (
                Denial::NoCredentials,
                401,
                16,
                Some("Bearer realm=\"citadel\""),
                "unauthorized",
            ),
            (
                Denial::InvalidToken(TokenError::Expired),
                401,
                16,
                Some(
                    "Bearer realm=\"citadel\", error=\"invalid_token\", error_description=\"token is expired\"",
                ),
                "invalid_token",
            ),
            (
                Denial::Policy(PolicyDenial::InsufficientScope),
                403,
                7,
                Some("Bearer realm=\"citadel\", error=\"insufficient_scope\""),
                "insufficient_scope",
            ),
            (
                Denial::Policy(PolicyDenial::TenantMismatch),
                403,
                7,
                None,
                "forbidden",
            ),
            (
                Denial::Policy(PolicyDenial::IssuerNotAllowed),
                403,
                7,
                None,
                "forbidden",
            ),
            (Denial::NoRule, 403, 7, None, "forbidden"),
            (
                Denial::BadPath(PathError::DotSegment),
                400,
                3,
                None,
                "invalid_request",
            ),
            (
                Denial::BadMethod("'delete'".into()),
                400,
                3,
                None,
                "invalid_request",
            ),
            (
                Denial::SeveralAuthorizations,
                400,
                3,
                None,
                "invalid_request",
            ),
        ];
        for (denial, status, code, www, error) in cases {
            let r = render_denial(&denial, realm);
            assert_eq!(r.status, status, "{denial:?}");
            assert_eq!(r.grpc_code, code, "{denial:?}");
            let got = r
                .headers
                .iter()
                .find(|(n, _)| *n == "www-authenticate")
                .map(|(_, v)| v.as_str());
            assert_eq!(got, www, "{denial:?}");
            let body: serde_json::Value = serde_json::from_str(&r.body).unwrap();
            assert_eq!(body["error"], error);
            assert!(body["reason"].as_str().is_some_and(|s| !s.is_empty()));
            assert!(
                r.headers
                    .contains(&("content-type", "application/json".to_owned()))
            );
        }
        let r = render_denial(
            &Denial::KeysUnavailable {
                issuer: "iam".into(),
                retry_after_secs: 7,
            },
            realm,
        );
        assert_eq!((r.status, r.grpc_code), (503, 14));
        assert!(r.headers.contains(&("retry-after", "7".to_owned())));
        assert!(!r.headers.iter().any(|(n, _)| *n == "www-authenticate"));

        let down = Denial::MembershipUnavailable {
            detail: "connection refused".to_owned(),
            retry_after_secs: 1,
        };
        let r = render_denial(&down, realm);
        assert_eq!((r.status, r.grpc_code), (503, 14));
        assert!(r.headers.contains(&("retry-after", "1".to_owned())));
        assert!(r.body.contains("temporarily_unavailable"));
        // The cause is for the operator's log, not for the client.
        assert!(!r.body.contains("refused"));
        assert!(down.log_reason().contains("connection refused"));
    }

    #[test]
    fn introspection_denials_are_401_inactive_and_503_failed_with_retry_after() {
        let r = render_denial(&Denial::InvalidToken(TokenError::Inactive), "citadel");
        assert_eq!((r.status, r.grpc_code), (401, 16));
        let body: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(body["reason"], "token is not active");
        let failed = Denial::IntrospectionFailed {
            issuer: "iam".into(),
            cause: "the endpoint answered status 500".into(),
            retry_after_secs: 3,
        };
        let r = render_denial(&failed, "citadel");
        assert_eq!((r.status, r.grpc_code), (503, 14));
        assert!(r.headers.contains(&("retry-after", "3".to_owned())));
        let body: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(body["error"], "temporarily_unavailable");
        assert_eq!(
            failed.log_reason(),
            "introspection failed: the endpoint answered status 500"
        );
        assert_eq!(failed.reason_code(), "introspection_failed");
    }

    #[test]
    fn refused_values_reach_the_client_quoted_and_the_log_with_what_is_accepted() {
        use crate::core::token::Mismatch;
        let long = format!("https://iam.example.com/\"{}", "x".repeat(80));
        let denial = Denial::InvalidToken(TokenError::Issuer(Mismatch::new(
            Some(&long),
            "accepted: 'https://iam.example.com'".into(),
        )));
        let r = render_denial(&denial, "citadel");
        let body: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        let reason = body["reason"].as_str().unwrap();
        assert!(
            reason.starts_with("token issuer 'https://iam.example.com/\\\"xxx")
                && reason.ends_with("…' is not accepted"),
            "{reason}"
        );
        assert!(
            !reason.contains("accepted:"),
            "the client is not told the configuration"
        );
        let www = &r
            .headers
            .iter()
            .find(|(n, _)| *n == "www-authenticate")
            .unwrap()
            .1;
        let description = www.split("error_description=\"").nth(1).unwrap();
        let description = description.strip_suffix('"').unwrap();
        assert!(
            description
                .bytes()
                .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\'),
            "{www}"
        );
        assert!(description.ends_with("...' is not accepted"), "{www}");
        assert_eq!(
            denial.log_reason(),
            format!("{reason}; accepted: 'https://iam.example.com'")
        );
        assert_eq!(Denial::NoRule.log_reason(), "no rule matches this request");
        assert_eq!(
            Denial::BadMethod(crate::core::token::quote("delete")).to_string(),
            "method 'delete' is not an upper-case HTTP token"
        );
    }

    #[test]
    fn identity_headers_set_and_remove() {
        let names = crate::core::config::HeaderNames {
            user_id: "x-user-id".into(),
            tenant_id: "x-tenant-id".into(),
            roles: "x-user-roles".into(),
        };
        let id = Identity {
            issuer: "iam".into(),
            user_id: Some("alice".into()),
            tenant_id: None,
            roles: Arc::new(["a".into(), "b".into()]),
            expires_at: 0.0,
        };
        let h = identity_headers(Some(&id), &names);
        assert_eq!(
            h.set,
            vec![
                ("x-user-id".into(), "alice".into()),
                ("x-user-roles".into(), "a,b".into())
            ]
        );
        assert_eq!(h.remove, vec!["x-tenant-id".to_owned()]);
        let public = identity_headers(None, &names);
        assert!(public.set.is_empty());
        assert_eq!(public.remove.len(), 3);
    }
}
