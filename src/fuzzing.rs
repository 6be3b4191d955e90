//! What the fuzz targets check (`fuzz/`, cargo-fuzz, nightly) and what a normal `cargo test`
//! replays over the committed corpus (`tests/it/fuzz_replay.rs`, stable): one function per
//! parser of outside input, taking arbitrary bytes, panicking only when an invariant breaks.
//!
//! Each checks more than "no panic": a canonical path is a fixed point of canonicalisation and
//! its refused variants are refused; an accepted token re-verifies to the same identity and
//! carries header-safe values; a bearer token is one word of the header; and so on. The
//! functions are part of the library (not of `fuzz/`) so that the stable test suite runs exactly
//! the checks the fuzzer ran.

// Panicking is how these functions report a broken invariant to the fuzzer and to the test.
#![allow(clippy::panic)]

use std::path::Path;
use std::sync::{Arc, OnceLock};

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use envoy_types::ext_authz::v3::pb::CheckRequest;
use prost::Message;

use crate::core::config::{Config, parse_memberships};
use crate::core::identity::{Identity, MAX_HEADER_VALUE, is_safe_id, is_safe_role};
use crate::core::keys::KeySet;
use crate::core::policy::canonicalize;
use crate::core::signer::SigningKey;
use crate::core::tenancy::ANY_TENANT;
use crate::core::token::{Unverified, typed_header_agrees};
use crate::serve::authorizer::{AuthHeader, bearer};
use crate::sources::introspection::{Answer, judge};

/// The checks of one fuzz target.
pub type Check = fn(&[u8]);

/// The fuzz targets, by name (the directories of `fuzz/corpus/`).
pub const TARGETS: [(&str, Check); 10] = [
    ("path", path),
    ("authorization", authorization),
    ("jws", jws),
    ("claims", claims),
    ("jwks", jwks),
    ("config", config),
    ("memberships", memberships),
    ("introspection", introspection),
    ("forward_auth", forward_auth),
    ("check_request", check_request),
];

/// A fixed wall clock: the same input always gets the same verdict.
const NOW: f64 = 1_800_000_000.0;

/// The config every target judges against: one issuer, SPEC §3's policy.
fn fixture() -> &'static Config {
    static CONFIG: OnceLock<Config> = OnceLock::new();
    CONFIG.get_or_init(|| {
        let yaml = r#"
issuers:
  - name: iam
    issuer: https://iam.example.com
    jwks_uri: https://iam.example.com/jwks
    audiences: [api]
    algorithms: [ES256]
    token_types: [at+jwt, jwt]
policy:
  rules:
    - name: health
      paths: [/healthz]
      methods: [GET]
      public: true
    - name: orders
      paths: [/api/orders/**]
      roles_any: [reader]
    - name: tenant-data
      paths: [/api/tenants/{tenant}/**]
      tenant_param: tenant
    - name: me
      paths: [/api/me]
"#;
        match Config::from_yaml(yaml, Path::new("/nonexistent")) {
            Ok(c) => c,
            Err(e) => panic!("the fuzz fixture config is invalid: {e}"),
        }
    })
}

/// The fixture issuer's signing key and its key set.
fn signer() -> &'static (SigningKey, KeySet) {
    static KEY: OnceLock<(SigningKey, KeySet)> = OnceLock::new();
    KEY.get_or_init(|| {
        let key = match SigningKey::try_generate(jsonwebtoken::Algorithm::ES256, "k1") {
            Ok(k) => k,
            Err(e) => panic!("cannot generate the fuzz key: {e}"),
        };
        let jwks = serde_json::json!({ "keys": [key.jwk()] }).to_string();
        let set = match KeySet::from_jwks(jwks.as_bytes()) {
            Ok((set, _)) => set,
            Err(e) => panic!("the fuzz key's JWKS does not load: {e}"),
        };
        (key, set)
    })
}

fn text(data: &[u8]) -> Option<&str> {
    std::str::from_utf8(data).ok()
}

/// Every value an allowed request would carry upstream is header-safe (SPEC §4, §7).
fn assert_header_safe(id: &Identity) {
    if let Some(u) = &id.user_id {
        assert!(is_safe_id(u), "unsafe user id {u:?}");
    }
    if let Some(t) = &id.tenant_id {
        assert!(is_safe_id(t), "unsafe tenant id {t:?}");
    }
    for r in id.roles.iter() {
        assert!(is_safe_role(r), "unsafe role {r:?}");
    }
    if let Some(joined) = id.roles_header() {
        assert!(joined.len() <= MAX_HEADER_VALUE, "roles header too long");
    }
}

/// Path canonicalisation and policy match: a canonical path is a fixed point; the same path with
/// a refused form added (an empty, `.` or `..` segment, an encoded `/`, double encoding) is
/// refused, so no variant of an allowed path can be judged as another path.
pub fn path(data: &[u8]) {
    let Some(target) = text(data) else { return };
    let Ok(canonical) = canonicalize(target) else {
        return;
    };
    let again = canonicalize(&canonical.to_path_string()).unwrap_or_else(|e| {
        panic!(
            "{target:?} → {:?} is refused: {e}",
            canonical.to_path_string()
        )
    });
    assert_eq!(again.segments(), canonical.segments(), "{target:?}");
    let policy = &fixture().policy;
    let rule = |p| {
        policy
            .find("GET", p)
            .map(|m| (m.rule.name.clone(), m.tenant.map(str::to_owned)))
    };
    assert_eq!(rule(&again), rule(&canonical), "{target:?}");
    let s = canonical.to_path_string();
    let s = s.trim_end_matches('/');
    for refused in [
        format!("{s}//x"),
        format!("{s}/./x"),
        format!("{s}/../x"),
        format!("{s}/%2e%2e/x"),
        format!("{s}/a%2Fb"),
        format!("{s}/a%252Fb"),
    ] {
        assert!(
            canonicalize(&refused).is_err(),
            "{refused:?} (from {target:?}) is accepted"
        );
    }
}

/// The Authorization header: a bearer token is one non-empty word of the header, never with a
/// space or a tab, and the scheme is Bearer in any case.
pub fn authorization(data: &[u8]) {
    let Some(value) = text(data) else { return };
    if let Ok(token) = bearer(AuthHeader::One(value)) {
        assert!(!token.is_empty(), "{value:?}");
        assert!(!token.contains([' ', '\t']), "{value:?}");
        assert!(value.contains(token), "{value:?}");
        let scheme = value.trim_matches([' ', '\t']).get(..6).unwrap_or("");
        assert!(scheme.eq_ignore_ascii_case("bearer"), "{value:?}");
    }
}

/// A compact JWS from outside: parsed within its size bound, without panicking, and never
/// verified by the fixture key (which signed nothing the fuzzer sees); its header is read the
/// same by the typed reader as by a strict JSON map, whether it comes as the token's first part
/// or as the input itself (so that the fuzzer explores JSON, not only base64url).
pub fn jws(data: &[u8]) {
    use base64::Engine;
    typed_header_agrees(data).unwrap_or_else(|e| panic!("{data:?} as a header: {e}"));
    let Some(token) = text(data) else { return };
    let first_part = token.split_once('.').map_or(token, |(h, _)| h);
    if let Ok(header) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(first_part) {
        typed_header_agrees(&header).unwrap_or_else(|e| panic!("{token:?}: {e}"));
    }
    let config = fixture();
    let Ok(unverified) = Unverified::parse(token, config.max_token_bytes) else {
        return;
    };
    let issuer = &config.issuers[0];
    let _ = unverified.issuer();
    if unverified.precheck(issuer).is_ok()
        && let Ok(key) = unverified.select_key(&signer().1)
    {
        let name: Arc<str> = Arc::from("iam");
        assert!(
            unverified.verify_with(key, issuer, &name, NOW).is_err(),
            "a token the fuzzer made up verified: {token:?}"
        );
    }
}

/// JSON claims, signed by the fixture issuer's key: whatever the payload, an accepted token has
/// header-safe identity values and verifies again to the same identity (no state, no
/// dependence on anything but the token and the time).
pub fn claims(data: &[u8]) {
    let Some(payload) = text(data) else { return };
    let (key, keys) = signer();
    let token = key.sign_raw(r#"{"alg":"ES256","kid":"k1","typ":"at+jwt"}"#, payload);
    let config = fixture();
    let issuer = &config.issuers[0];
    let name: Arc<str> = Arc::from("iam");
    let verify = || {
        let u = Unverified::parse(&token, usize::MAX)?;
        u.precheck(issuer)?;
        let key = u.select_key(keys)?;
        u.verify_with(key, issuer, &name, NOW)
    };
    if let Ok(identity) = verify() {
        assert_header_safe(&identity);
        assert_eq!(verify().ok(), Some(identity), "{payload:?}");
    }
}

/// A JWKS document: loads or is refused without panicking, and loads the same way twice.
pub fn jwks(data: &[u8]) {
    let first = KeySet::from_jwks(data).map(|(set, skipped)| (set.len(), skipped.len()));
    let second = KeySet::from_jwks(data).map(|(set, skipped)| (set.len(), skipped.len()));
    assert_eq!(first, second);
}

/// A config file: valid, or refused with at least one problem, each naming a field or the file.
/// (A `listen` section is skipped: it resolves host names, which a fuzzer must not send to DNS.)
pub fn config(data: &[u8]) {
    let Some(yaml) = text(data) else { return };
    if yaml.contains("listen") {
        return;
    }
    if let Err(e) = Config::from_yaml(yaml, Path::new("/nonexistent")) {
        assert!(!e.issues.is_empty(), "refused without a reason: {yaml:?}");
    }
}

/// A memberships file: refused with its problems, or every value it holds is header-safe.
pub fn memberships(data: &[u8]) {
    let Some(yaml) = text(data) else { return };
    match parse_memberships(yaml, "m.yaml", &["iam".to_owned()]) {
        Err(e) => assert!(!e.issues.is_empty(), "refused without a reason"),
        Ok(table) => {
            for user in ["alice", "bob", ""] {
                for row in table.lookup("iam", user).rows {
                    assert!(&*row.tenant == ANY_TENANT || is_safe_id(&row.tenant));
                    if let Some(role) = &row.role {
                        assert!(is_safe_role(role), "{role:?}");
                    }
                }
            }
        }
    }
}

/// An RFC 7662 answer: well formed or a failure (503), never a panic; an accepted identity is
/// header-safe; the same answer is judged the same way twice.
pub fn introspection(data: &[u8]) {
    let config = fixture();
    let issuer = &config.issuers[0];
    let name: Arc<str> = Arc::from("iam");
    let first = judge(data, issuer, &name, NOW);
    if let Ok(Answer::Active(Ok(identity))) = &first {
        assert_header_safe(identity);
    }
    assert_eq!(judge(data, issuer, &name, NOW), first);
}

/// Forward-auth header sets (`name: value` lines): the original method and target come from the
/// forwarded headers themselves, never from anywhere else.
pub fn forward_auth(data: &[u8]) {
    let Some(lines) = text(data) else { return };
    let mut headers = HeaderMap::new();
    for line in lines.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        if let (Ok(k), Ok(v)) = (
            HeaderName::try_from(k.trim()),
            HeaderValue::try_from(v.trim()),
        ) {
            headers.append(k, v);
        }
    }
    if let Ok((method, target)) = crate::serve::http::original_from_headers(&headers) {
        let values: Vec<&str> = headers.values().filter_map(|v| v.to_str().ok()).collect();
        assert!(
            values.contains(&method.as_str()),
            "{method:?} not from the headers"
        );
        assert!(
            values.contains(&target.as_str()),
            "{target:?} not from the headers"
        );
    }
}

/// A CheckRequest as Envoy would send it (protobuf bytes): translated into the decision's input
/// without panicking; what the decision sees is exactly what the request says.
pub fn check_request(data: &[u8]) {
    let Ok(req) = CheckRequest::decode(data) else {
        return;
    };
    let Some(input) = crate::serve::grpc::input_of(&req) else {
        return;
    };
    let http = req
        .attributes
        .as_ref()
        .and_then(|a| a.request.as_ref())
        .and_then(|r| r.http.as_ref());
    let Some(http) = http else {
        panic!("an input without HTTP attributes");
    };
    assert_eq!(input.method, http.method);
    assert_eq!(input.path, http.path);
}
