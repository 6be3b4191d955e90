//! JWT verification: a compact JWS turned into a verified [`Identity`], or a [`TokenError`].
//!
//! Pure: the key set, the issuer's rules and the current time are parameters; no I/O, no clock.
//! The token is parsed by hand (header and payload decoded strictly, duplicate JSON members
//! refused) so that every SPEC rule is explicit; the signature is checked by aws-lc against a key
//! parsed once when the JWKS was loaded ([`crate::core::keys::Key::verify`]). URLs named by the token (`jku`, `x5u`, `jwk`, `x5c`) are
//! ignored: keys only ever come from the configured JWKS.

use std::fmt;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::Algorithm;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use crate::core::config::{IssuerConfig, normalize_typ};
use crate::core::identity::{Identity, MAX_HEADER_VALUE, is_safe_id, is_safe_role};
use crate::core::keys::{Key, KeySet, Selection, algorithm_from_name};

/// Latest accepted time claim: 9999-12-31T23:59:59Z. Anything larger (or negative, or not a
/// finite number) is nonsense, not a far future.
const MAX_TIME: f64 = 253_402_300_799.0;
/// Longest part of a token's own value shown in a message; the rest is cut and marked `…`.
const MAX_QUOTED_CHARS: usize = 64;
/// Most values of a list shown in a message.
const MAX_QUOTED_ITEMS: usize = 4;

/// A value that came with the request (attacker-controlled) made safe for a message, a log line
/// and a header: in single quotes, `'` `"` `\` escaped with `\`, anything but printable ASCII as
/// `\u{..}`, cut after 64 characters and marked with `…` (never the result of an escape, so a
/// cut is told apart from a value that ends in dots).
pub fn quote(value: &str) -> String {
    use fmt::Write;
    let mut out = String::with_capacity(value.len().min(MAX_QUOTED_CHARS) + 3);
    out.push('\'');
    let mut chars = value.chars();
    for c in chars.by_ref().take(MAX_QUOTED_CHARS) {
        match c {
            '\'' | '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            ' '..='~' => out.push(c),
            c => {
                let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
            }
        }
    }
    if chars.next().is_some() {
        out.push('…');
    }
    out.push('\'');
    out
}

/// Several values, each quoted, at most four shown (`'a', 'b', … 3 more`); empty for none.
pub fn quote_list<'a>(values: impl IntoIterator<Item = &'a str>) -> String {
    let mut out = String::new();
    let mut more = 0usize;
    for (i, v) in values.into_iter().enumerate() {
        if i >= MAX_QUOTED_ITEMS {
            more += 1;
            continue;
        }
        if i > 0 {
            out.push_str(", ");
        }
        out.push_str(&quote(v));
    }
    if more > 0 {
        out.push_str(&format!(", … {more} more"));
    }
    out
}

/// [`quote_list`], or `none` for an empty list.
fn quote_list_or_none<'a>(values: impl IntoIterator<Item = &'a str>) -> String {
    let list = quote_list(values);
    if list.is_empty() {
        "none".to_owned()
    } else {
        list
    }
}

/// A token value that nothing configured matches: what the token says and what would have been
/// accepted, both quoted. The token's side is told to the client (it is what the client sent);
/// the accepted side only goes to the decision log, so a client does not learn the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    /// The token's value, quoted; `None` when the token has none (or not as a string).
    pub got: Option<String>,
    /// What the configuration accepts, as a phrase for the log (`accepted: 'a', 'b'`).
    pub accepted: String,
}

impl Mismatch {
    pub fn new(got: Option<&str>, accepted: String) -> Box<Self> {
        Box::new(Mismatch {
            got: got.map(quote),
            accepted,
        })
    }
}

fn mismatch_message(m: &Mismatch, what: &str, absent: &str) -> String {
    match &m.got {
        Some(got) => format!("{what} {got} is not accepted"),
        None => absent.to_owned(),
    }
}

/// Why a token is not accepted. Every variant is a 401 `invalid_token`, except that
/// [`TokenError::UnknownKid`] first asks the key store for a refetch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token is larger than {0} bytes")]
    TooLarge(usize),
    #[error("malformed Bearer value: {0}")]
    Bearer(&'static str),
    #[error("token is not a compact JWS: {0}")]
    Malformed(&'static str),
    #[error("token has a duplicate JSON member")]
    DuplicateMember,
    #[error("token header: {0}")]
    Header(&'static str),
    #[error("algorithm is not accepted")]
    Algorithm,
    #[error("token has critical header parameters this server does not understand")]
    Crit,
    #[error("{}", mismatch_message(.0, "token type (typ)", "token has no type (typ)"))]
    Type(Box<Mismatch>),
    #[error("{}", mismatch_message(.0, "token issuer", "token has no issuer (iss) string"))]
    Issuer(Box<Mismatch>),
    #[error("{}", match &.0.got { Some(kid) => format!("no key with the token's kid {kid}"), None => "no key for the token".to_owned() })]
    UnknownKid(Box<Mismatch>),
    #[error("token's algorithm does not match its key")]
    KeyMismatch,
    #[error("token has no kid and its issuer has several keys for its algorithm")]
    AmbiguousKey,
    #[error("signature is invalid")]
    Signature,
    #[error("token is expired")]
    Expired,
    #[error("token is not valid yet")]
    NotYetValid,
    #[error("token is issued in the future")]
    IssuedInFuture,
    #[error("claim {0} is missing")]
    MissingClaim(&'static str),
    #[error("claim {0} has the wrong type or range")]
    ClaimType(&'static str),
    #[error("{}", mismatch_message(.0, "token audience", "token audience is not accepted"))]
    Audience(Box<Mismatch>),
    #[error("claim {0} cannot be sent in a header")]
    UnsafeClaim(&'static str),
    /// The issuer's introspection endpoint answered `active: false` (revoked, expired, unknown).
    #[error("token is not active")]
    Inactive,
}

impl TokenError {
    /// What the configuration would have accepted, where that explains the refusal (for the
    /// decision log, not for the client).
    pub fn accepted(&self) -> Option<&str> {
        match self {
            TokenError::Type(m)
            | TokenError::Issuer(m)
            | TokenError::UnknownKid(m)
            | TokenError::Audience(m) => Some(&m.accepted),
            _ => None,
        }
    }
}

/// A token split and decoded, signature not yet checked.
pub struct Unverified<'t> {
    alg: Algorithm,
    kid: Option<String>,
    typ: Option<String>,
    claims: Map<String, Value>,
    signing_input: &'t str,
    signature: &'t str,
}

impl fmt::Debug for Unverified<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the token or its signature.
        f.debug_struct("Unverified")
            .field("alg", &self.alg)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl<'t> Unverified<'t> {
    /// Split and decode a compact JWS. Size is checked before anything else is decoded.
    pub fn parse(token: &'t str, max_bytes: usize) -> Result<Self, TokenError> {
        if token.len() > max_bytes {
            return Err(TokenError::TooLarge(max_bytes));
        }
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed("expected three dot-separated parts"));
        };
        if h.is_empty() || p.is_empty() || s.is_empty() {
            return Err(TokenError::Malformed("empty part"));
        }
        // Without short-circuit, so that the compiler vectorises it: this loop was a quarter of
        // the time of `parse` for an RS256 token (its signature alone is 342 characters).
        let b64url_or_dot =
            |b: u8| b.is_ascii_alphanumeric() | (b == b'-') | (b == b'_') | (b == b'.');
        if !token.bytes().fold(true, |ok, b| ok & b64url_or_dot(b)) {
            return Err(TokenError::Malformed("characters outside base64url"));
        }
        let header = decode_header(h)?;
        let claims = decode_object(p)?;

        let alg = match header.alg {
            Member::Str(name) => algorithm_from_name(&name).ok_or(TokenError::Algorithm)?,
            Member::Other => return Err(TokenError::Header("alg is not a string")),
            Member::Absent => return Err(TokenError::Header("alg is missing")),
        };
        let kid = header
            .kid
            .into_option()
            .map_err(|()| TokenError::Header("kid is not a string"))?;
        let typ = header
            .typ
            .into_option()
            .map_err(|()| TokenError::Header("typ is not a string"))?;
        // This server implements no JWS extension, so any `crit` (even an empty one, which RFC 7515
        // forbids) is a reason to refuse; `b64: false` (RFC 7797) would change what is signed.
        if header.crit || header.b64.is_some_and(|is_true| !is_true) {
            return Err(TokenError::Crit);
        }

        let dot = h.len() + 1 + p.len();
        Ok(Unverified {
            alg,
            kid,
            typ,
            claims,
            signing_input: &token[..dot],
            signature: s,
        })
    }

    /// The `iss` claim, used to choose the issuer before anything is verified.
    pub fn issuer(&self) -> Option<&str> {
        self.claims.get("iss").and_then(Value::as_str)
    }

    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    pub fn alg(&self) -> Algorithm {
        self.alg
    }

    /// Checks that need no key: algorithm allowlist and `typ`. Done before a key is looked up so a
    /// token that could never pass does not trigger a JWKS refetch.
    pub fn precheck(&self, rules: &IssuerConfig) -> Result<(), TokenError> {
        if !rules.algorithms.contains(&self.alg) {
            return Err(TokenError::Algorithm);
        }
        if !rules.token_types.is_empty() {
            let ok = self.typ.as_deref().is_some_and(|t| {
                rules
                    .token_types
                    .iter()
                    .any(|allowed| *allowed == normalize_typ(t))
            });
            if !ok {
                return Err(TokenError::Type(Mismatch::new(
                    self.typ.as_deref(),
                    format!(
                        "accepted: {}",
                        quote_list_or_none(rules.token_types.iter().map(String::as_str))
                    ),
                )));
            }
        }
        Ok(())
    }

    /// Choose the key, check the signature, then the claims. `now` is seconds since the epoch.
    pub fn verify(
        &self,
        keys: &KeySet,
        rules: &IssuerConfig,
        issuer_name: &Arc<str>,
        now: f64,
    ) -> Result<Identity, TokenError> {
        self.precheck(rules)?;
        let key = self.select_key(keys)?;
        self.verify_with(key, rules, issuer_name, now)
    }

    /// The one key this token may be verified with.
    pub fn select_key<'k>(&self, keys: &'k KeySet) -> Result<&'k Key, TokenError> {
        match keys.select(self.kid.as_deref(), self.alg) {
            Selection::Found(key) => Ok(key),
            Selection::UnknownKid => Err(TokenError::UnknownKid(Mismatch::new(
                self.kid.as_deref(),
                format!(
                    "the issuer's key set has kids {}",
                    quote_list_or_none(keys.keys().iter().filter_map(|k| k.kid.as_deref()))
                ),
            ))),
            Selection::AlgMismatch => Err(TokenError::KeyMismatch),
            Selection::Ambiguous => Err(TokenError::AmbiguousKey),
        }
    }

    /// Signature and claims against one chosen key.
    pub fn verify_with(
        &self,
        key: &Key,
        rules: &IssuerConfig,
        issuer_name: &Arc<str>,
        now: f64,
    ) -> Result<Identity, TokenError> {
        // Base64url without padding, canonical (no stray trailing bits), as RFC 7515 requires.
        let valid = URL_SAFE_NO_PAD
            .decode(self.signature)
            .is_ok_and(|sig| key.verify(self.alg, self.signing_input.as_bytes(), &sig));
        if !valid {
            return Err(TokenError::Signature);
        }
        check_claims(&self.claims, rules, issuer_name, now, Source::Jwt)
    }
}

/// Where a set of claims comes from: a signed JWT payload, or an RFC 7662 introspection answer
/// (whose `iss` and `exp` are optional, SPEC §9). Everything else — audience, types and ranges,
/// claim paths, header safety — is one code path for both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Jwt,
    Introspection,
}

/// The identity in an `active: true` introspection answer (SPEC §9): `exp` and `nbf` (if present)
/// with leeway, `iss` (if present) equal to the issuer, `aud` containing one of the audiences,
/// then the issuer's claim paths under the same header-safety rules as a JWT. `active` itself is
/// the caller's to check. An answer without `exp` has `expires_at` = infinity.
pub fn identity_from_introspection(
    answer: &Map<String, Value>,
    rules: &IssuerConfig,
    issuer_name: &Arc<str>,
    now: f64,
) -> Result<Identity, TokenError> {
    check_claims(answer, rules, issuer_name, now, Source::Introspection)
}

fn check_claims(
    claims: &Map<String, Value>,
    rules: &IssuerConfig,
    issuer_name: &Arc<str>,
    now: f64,
    source: Source,
) -> Result<Identity, TokenError> {
    let iss = claims.get("iss");
    let iss_ok = match (iss, source) {
        (None, Source::Introspection) => true,
        (iss, _) => iss.and_then(Value::as_str) == Some(rules.issuer.as_str()),
    };
    if !iss_ok {
        return Err(TokenError::Issuer(Mismatch::new(
            iss.and_then(Value::as_str),
            format!("accepted: {}", quote(&rules.issuer)),
        )));
    }
    let leeway = rules.leeway.as_secs_f64();
    let exp = match (time_claim(claims, "exp")?, source) {
        (Some(exp), _) => exp,
        (None, Source::Introspection) => f64::INFINITY,
        (None, Source::Jwt) => return Err(TokenError::MissingClaim("exp")),
    };
    if now >= exp + leeway {
        return Err(TokenError::Expired);
    }
    if let Some(nbf) = time_claim(claims, "nbf")?
        && now + leeway < nbf
    {
        return Err(TokenError::NotYetValid);
    }
    // §9 names exp and nbf for an answer; an answer's `iat` is when the IdP issued the token,
    // not a claim the token makes about itself, so only a JWT is held to it.
    if source == Source::Jwt
        && let Some(iat) = time_claim(claims, "iat")?
        && iat > now + leeway
    {
        return Err(TokenError::IssuedInFuture);
    }
    check_audience(claims.get("aud"), &rules.audiences)?;
    if claims.get("sub").is_some_and(|v| !v.is_string()) {
        return Err(TokenError::ClaimType("sub"));
    }

    let user_id = string_claim(claims, &rules.claims.user_id, "user_id")?;
    let tenant_id = string_claim(claims, &rules.claims.tenant_id, "tenant_id")?;
    let mut roles: Vec<Box<str>> = Vec::new();
    for path in &rules.claims.roles {
        let mut push = |role: &str| -> Result<(), TokenError> {
            if role.is_empty() {
                return Ok(());
            }
            // An upstream may split the roles header on `,` or on spaces, or parse it as a
            // structured field (quotes, `;` parameters, `\` escapes): any of those in one role
            // would show it other roles than the policy judged.
            if !is_safe_role(role) {
                return Err(TokenError::UnsafeClaim("roles"));
            }
            if !roles.iter().any(|r| &**r == role) {
                roles.push(role.into());
            }
            Ok(())
        };
        match lookup(claims, path).map_err(|()| TokenError::ClaimType("roles"))? {
            None => {}
            Some(Value::String(s)) => s.split(' ').try_for_each(&mut push)?,
            Some(Value::Array(list)) => {
                for v in list {
                    push(v.as_str().ok_or(TokenError::ClaimType("roles"))?)?;
                }
            }
            Some(_) => return Err(TokenError::ClaimType("roles")),
        }
    }
    let joined_len = roles.iter().map(|r| r.len() + 1).sum::<usize>();
    if joined_len > MAX_HEADER_VALUE + 1 {
        return Err(TokenError::UnsafeClaim("roles"));
    }
    Ok(Identity {
        issuer: Arc::clone(issuer_name),
        user_id,
        tenant_id: tenant_id.map(Arc::from),
        roles: roles.into(),
        expires_at: exp,
    })
}

fn time_claim(claims: &Map<String, Value>, name: &'static str) -> Result<Option<f64>, TokenError> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => match n.as_f64() {
            Some(t) if t.is_finite() && (0.0..=MAX_TIME).contains(&t) => Ok(Some(t)),
            _ => Err(TokenError::ClaimType(name)),
        },
        Some(_) => Err(TokenError::ClaimType(name)),
    }
}

fn check_audience(aud: Option<&Value>, accepted: &[String]) -> Result<(), TokenError> {
    let ok = |s: &str| accepted.iter().any(|a| a == s);
    let refused = |got: String| {
        TokenError::Audience(Box::new(Mismatch {
            got: Some(got),
            accepted: format!(
                "accepted: {}",
                quote_list_or_none(accepted.iter().map(String::as_str))
            ),
        }))
    };
    match aud {
        None => Err(TokenError::MissingClaim("aud")),
        Some(Value::String(s)) if ok(s) => Ok(()),
        Some(Value::String(s)) => Err(refused(quote(s))),
        Some(Value::Array(list)) => {
            let mut found = false;
            let mut strings = Vec::with_capacity(list.len());
            for v in list {
                let s = v.as_str().ok_or(TokenError::ClaimType("aud"))?;
                found |= ok(s);
                strings.push(s);
            }
            if found {
                Ok(())
            } else {
                Err(refused(format!("[{}]", quote_list(strings))))
            }
        }
        Some(_) => Err(TokenError::ClaimType("aud")),
    }
}

fn string_claim(
    claims: &Map<String, Value>,
    path: &[String],
    label: &'static str,
) -> Result<Option<Box<str>>, TokenError> {
    match lookup(claims, path).map_err(|()| TokenError::ClaimType(label))? {
        None => Ok(None),
        // A `,` would make one id look like a list of two to an upstream that splits the header.
        Some(Value::String(s)) if is_safe_id(s) => Ok(Some(s.as_str().into())),
        Some(Value::String(_)) => Err(TokenError::UnsafeClaim(label)),
        Some(_) => Err(TokenError::ClaimType(label)),
    }
}

/// Follow a dotted path; `Err` when an intermediate member is not an object.
fn lookup<'v>(claims: &'v Map<String, Value>, path: &[String]) -> Result<Option<&'v Value>, ()> {
    let Some((first, rest)) = path.split_first() else {
        return Ok(None);
    };
    let mut cur = match claims.get(first) {
        None => return Ok(None),
        Some(v) => v,
    };
    for part in rest {
        cur = match cur {
            Value::Object(m) => match m.get(part) {
                None => return Ok(None),
                Some(v) => v,
            },
            Value::Null => return Ok(None),
            _ => return Err(()),
        };
    }
    Ok(match cur {
        Value::Null => None,
        v => Some(v),
    })
}

fn decode_object(part: &str) -> Result<Map<String, Value>, TokenError> {
    json_object(&decode_part(part)?)
}

fn decode_header(part: &str) -> Result<Header, TokenError> {
    header_from_json(&decode_part(part)?)
}

fn header_from_json(bytes: &[u8]) -> Result<Header, TokenError> {
    strict_json(bytes, HeaderVisitor)?.ok_or(NOT_AN_OBJECT)
}

fn decode_part(part: &str) -> Result<Vec<u8>, TokenError> {
    URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| TokenError::Malformed("invalid base64url"))
}

const NOT_AN_OBJECT: TokenError = TokenError::Malformed("header or payload is not a JSON object");

/// A JSON object parsed as strictly as a token's header and payload: a duplicate member name
/// anywhere is refused (parsers disagree on which one wins — an introspection answer with two
/// `active` members must not be read as either).
pub fn json_object(bytes: &[u8]) -> Result<Map<String, Value>, TokenError> {
    match strict_json(bytes, StrictVisitor)? {
        Value::Object(m) => Ok(m),
        _ => Err(NOT_AN_OBJECT),
    }
}

/// One JSON document read by `visitor`, which refuses duplicate members; nothing may follow it.
fn strict_json<'de, V: Visitor<'de>>(bytes: &'de [u8], visitor: V) -> Result<V::Value, TokenError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = match de.deserialize_any(visitor) {
        Ok(v) => v,
        Err(e) if e.to_string().starts_with(DUPLICATE) => return Err(TokenError::DuplicateMember),
        Err(_) => return Err(TokenError::Malformed("invalid JSON")),
    };
    de.end()
        .map_err(|_| TokenError::Malformed("trailing data after JSON"))?;
    Ok(value)
}

/// A header member this server reads: absent, a string, or present as anything else.
#[derive(Debug, Default, PartialEq, Eq)]
enum Member {
    #[default]
    Absent,
    Str(String),
    Other,
}

impl From<Value> for Member {
    fn from(v: Value) -> Self {
        match v {
            Value::String(s) => Member::Str(s),
            _ => Member::Other,
        }
    }
}

impl Member {
    /// `Err` when present but not a string.
    fn into_option(self) -> Result<Option<String>, ()> {
        match self {
            Member::Absent => Ok(None),
            Member::Str(s) => Ok(Some(s)),
            Member::Other => Err(()),
        }
    }
}

/// The JOSE header members this server acts on, read straight from the JSON: building a
/// `serde_json::Map` for the header was most of `Unverified::parse` for an RS256 token. Every
/// other member is still parsed strictly (a duplicate name anywhere is refused) and dropped.
#[derive(Debug, Default, PartialEq, Eq)]
struct Header {
    alg: Member,
    kid: Member,
    typ: Member,
    /// `crit` is present, whatever its value.
    crit: bool,
    /// `b64` is present; `Some(true)` only for the JSON value `true`.
    b64: Option<bool>,
}

/// A header member's name; the names this server does not read are kept only to find duplicates.
enum Name {
    Alg,
    Kid,
    Typ,
    Crit,
    B64,
    Other(String),
}

impl<'de> de::Deserialize<'de> for Name {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct NameVisitor;
        impl Visitor<'_> for NameVisitor {
            type Value = Name;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a member name")
            }
            fn visit_str<E>(self, v: &str) -> Result<Name, E> {
                Ok(match v {
                    "alg" => Name::Alg,
                    "kid" => Name::Kid,
                    "typ" => Name::Typ,
                    "crit" => Name::Crit,
                    "b64" => Name::B64,
                    other => Name::Other(other.to_owned()),
                })
            }
        }
        d.deserialize_str(NameVisitor)
    }
}

impl<'de> de::Deserialize<'de> for Member {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // A string costs what it would cost anyway; any other value is parsed strictly and
        // dropped (rare: it is an error).
        Strict::deserialize(d).map(|Strict(v)| Member::from(v))
    }
}

/// Reads a header document: `Some` for an object, `None` for any other JSON value (parsed
/// strictly all the same, so that the error for a duplicate member does not depend on where it is).
struct HeaderVisitor;

impl<'de> Visitor<'de> for HeaderVisitor {
    type Value = Option<Header>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        StrictVisitor.visit_seq(seq).map(|_| None)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut header = Header::default();
        // Names of the members not read; a header has a handful, so a list beats a set.
        let mut others: Vec<String> = Vec::new();
        // Each value is read before its name is checked for a duplicate, as `StrictVisitor`
        // does, so a malformed document gets the same error from either.
        while let Some(name) = map.next_key::<Name>()? {
            let duplicate = match name {
                Name::Alg => {
                    std::mem::replace(&mut header.alg, map.next_value()?) != Member::Absent
                }
                Name::Kid => {
                    std::mem::replace(&mut header.kid, map.next_value()?) != Member::Absent
                }
                Name::Typ => {
                    std::mem::replace(&mut header.typ, map.next_value()?) != Member::Absent
                }
                Name::Crit => {
                    let Strict(_) = map.next_value()?;
                    std::mem::replace(&mut header.crit, true)
                }
                Name::B64 => {
                    let Strict(v) = map.next_value()?;
                    header.b64.replace(v == Value::Bool(true)).is_some()
                }
                Name::Other(name) => {
                    let Strict(_) = map.next_value()?;
                    let duplicate = others.contains(&name);
                    others.push(name);
                    duplicate
                }
            };
            if duplicate {
                return Err(de::Error::custom(DUPLICATE));
            }
        }
        Ok(Some(header))
    }
}

/// Checks the typed header reader against the plain one (a strict `serde_json::Map`, as
/// `Unverified::parse` once read a header): same members seen, same error. For the `jws` fuzz
/// target; `json` is the decoded header.
pub(crate) fn typed_header_agrees(json: &[u8]) -> Result<(), String> {
    let plain = json_object(json).map(|map| {
        let member = |name: &str| map.get(name).cloned().map_or(Member::Absent, Member::from);
        Header {
            alg: member("alg"),
            kid: member("kid"),
            typ: member("typ"),
            crit: map.contains_key("crit"),
            b64: map.get("b64").map(|v| v == &Value::Bool(true)),
        }
    });
    let typed = header_from_json(json);
    if typed == plain {
        Ok(())
    } else {
        Err(format!("typed {typed:?}, plain {plain:?}"))
    }
}

const DUPLICATE: &str = "duplicate member";

/// Builds a `serde_json::Value` like serde_json does, but refuses an object with two members of
/// the same name (RFC 7515 §4: such a JWS must be rejected; parsers disagree on which one wins).
struct StrictVisitor;

struct Strict(Value);

impl<'de> de::Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(Strict)
    }
}

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(Strict(v)) = seq.next_element()? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let Strict(v) = map.next_value()?;
            if out.insert(key, v).is_some() {
                return Err(de::Error::custom(DUPLICATE));
            }
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::config::{ClaimPaths, JwksSource};
    use crate::core::signer::SigningKey;
    use serde_json::json;
    use std::time::Duration;

    const NOW: f64 = 1_800_000_000.0;
    const ISS: &str = "https://iam.example.com";

    fn rules() -> IssuerConfig {
        IssuerConfig {
            name: "iam".into(),
            issuer: ISS.into(),
            source: JwksSource::Uri("https://iam.example.com/jwks".into()),
            allow_http: false,
            audiences: vec!["api".into(), "other".into()],
            algorithms: vec![
                Algorithm::RS256,
                Algorithm::ES256,
                Algorithm::EdDSA,
                Algorithm::PS256,
            ],
            leeway: Duration::from_secs(30),
            token_types: vec![],
            claims: ClaimPaths {
                user_id: vec!["sub".into()],
                tenant_id: vec!["tenant_id".into()],
                roles: vec![
                    vec!["roles".into()],
                    vec!["scope".into()],
                    vec!["realm_access".into(), "roles".into()],
                ],
            },
            introspection: None,
        }
    }

    fn claims() -> Value {
        json!({"iss": ISS, "aud": "api", "sub": "alice", "tenant_id": "acme", "roles": ["reader", "admin"], "exp": NOW + 300.0, "iat": NOW - 10.0})
    }

    struct Fixture {
        keys: Vec<SigningKey>,
        set: KeySet,
    }

    fn fixture() -> Fixture {
        let keys = vec![
            SigningKey::generate(Algorithm::ES256, "es"),
            SigningKey::generate(Algorithm::RS256, "rs"),
            SigningKey::generate(Algorithm::EdDSA, "ed"),
        ];
        let jwks = json!({"keys": keys.iter().map(SigningKey::jwk).collect::<Vec<_>>()});
        let (set, _) = KeySet::from_jwks(jwks.to_string().as_bytes()).unwrap();
        Fixture { keys, set }
    }

    fn check_with(f: &Fixture, token: &str, r: &IssuerConfig) -> Result<Identity, TokenError> {
        let u = Unverified::parse(token, 8192)?;
        u.verify(&f.set, r, &Arc::from("iam"), NOW)
    }

    fn check(f: &Fixture, token: &str) -> Result<Identity, TokenError> {
        check_with(f, token, &rules())
    }

    fn audience(got: &str) -> TokenError {
        TokenError::Audience(Box::new(Mismatch {
            got: Some(got.to_owned()),
            accepted: "accepted: 'api', 'other'".into(),
        }))
    }

    fn with(mut c: Value, key: &str, v: Value) -> Value {
        if v.is_null() {
            c.as_object_mut().unwrap().remove(key);
        } else {
            c[key] = v;
        }
        c
    }

    #[test]
    fn each_algorithm_verifies() {
        let f = fixture();
        for key in &f.keys {
            let id =
                check(&f, &key.mint(&claims())).unwrap_or_else(|e| panic!("{:?}: {e}", key.alg));
            assert_eq!(id.user_id.as_deref(), Some("alice"));
            assert_eq!(id.tenant_id.as_deref(), Some("acme"));
            assert_eq!(id.roles_header().as_deref(), Some("reader,admin"));
            assert_eq!(&*id.issuer, "iam");
        }
    }

    #[test]
    fn claim_rejections() {
        let f = fixture();
        let es = &f.keys[0];
        use TokenError::*;
        let cases: Vec<(&str, Value, TokenError)> = vec![
            ("expired", with(claims(), "exp", json!(NOW - 31.0)), Expired),
            (
                "exp exactly at leeway edge",
                with(claims(), "exp", json!(NOW - 30.0)),
                Expired,
            ),
            (
                "no exp",
                with(claims(), "exp", Value::Null),
                MissingClaim("exp"),
            ),
            (
                "exp as string",
                with(claims(), "exp", json!("1800000300")),
                ClaimType("exp"),
            ),
            (
                "exp 1e300",
                with(claims(), "exp", json!(1e300)),
                ClaimType("exp"),
            ),
            (
                "exp negative",
                with(claims(), "exp", json!(-1)),
                ClaimType("exp"),
            ),
            (
                "exp bool",
                with(claims(), "exp", json!(true)),
                ClaimType("exp"),
            ),
            (
                "nbf future",
                with(claims(), "nbf", json!(NOW + 31.0)),
                NotYetValid,
            ),
            (
                "nbf string",
                with(claims(), "nbf", json!("0")),
                ClaimType("nbf"),
            ),
            (
                "iat future",
                with(claims(), "iat", json!(NOW + 31.0)),
                IssuedInFuture,
            ),
            (
                "iat huge",
                with(claims(), "iat", json!(1e20)),
                ClaimType("iat"),
            ),
            (
                "wrong iss",
                with(claims(), "iss", json!("https://evil.example.com")),
                Issuer(Mismatch::new(
                    Some("https://evil.example.com"),
                    "accepted: 'https://iam.example.com'".into(),
                )),
            ),
            (
                "no aud",
                with(claims(), "aud", Value::Null),
                MissingClaim("aud"),
            ),
            (
                "wrong aud",
                with(claims(), "aud", json!("nope")),
                audience("'nope'"),
            ),
            (
                "aud array without ours",
                with(claims(), "aud", json!(["a", "b"])),
                audience("['a', 'b']"),
            ),
            (
                "aud empty array",
                with(claims(), "aud", json!([])),
                audience("[]"),
            ),
            (
                "aud number",
                with(claims(), "aud", json!(5)),
                ClaimType("aud"),
            ),
            (
                "aud array with number",
                with(claims(), "aud", json!(["api", 5])),
                ClaimType("aud"),
            ),
            (
                "sub number",
                with(claims(), "sub", json!(42)),
                ClaimType("sub"),
            ),
            (
                "tenant object",
                with(claims(), "tenant_id", json!({"a": 1})),
                ClaimType("tenant_id"),
            ),
            (
                "roles number",
                with(claims(), "roles", json!(7)),
                ClaimType("roles"),
            ),
            (
                "roles with number",
                with(claims(), "roles", json!(["a", 7])),
                ClaimType("roles"),
            ),
            (
                "role with comma",
                with(claims(), "roles", json!(["a,b"])),
                UnsafeClaim("roles"),
            ),
            (
                "role with a space (array element)",
                with(claims(), "roles", json!(["reader admin"])),
                UnsafeClaim("roles"),
            ),
            (
                "role with a quote",
                with(claims(), "roles", json!(["reader\"admin"])),
                UnsafeClaim("roles"),
            ),
            (
                "role with a semicolon",
                with(claims(), "roles", json!(["reader;q=1"])),
                UnsafeClaim("roles"),
            ),
            (
                "role with a backslash",
                with(claims(), "roles", json!(["reader\\admin"])),
                UnsafeClaim("roles"),
            ),
            (
                "role with a comma in a space-separated string",
                with(claims(), "scope", json!("read a,b")),
                UnsafeClaim("roles"),
            ),
            (
                "tenant with a comma",
                with(claims(), "tenant_id", json!("acme,globex")),
                UnsafeClaim("tenant_id"),
            ),
            (
                "sub with a comma",
                with(claims(), "sub", json!("alice,bob")),
                UnsafeClaim("user_id"),
            ),
            (
                "role with newline",
                with(claims(), "roles", json!(["a\nb"])),
                UnsafeClaim("roles"),
            ),
            (
                "sub with CRLF",
                with(claims(), "sub", json!("alice\r\nx-user-roles: admin")),
                UnsafeClaim("user_id"),
            ),
            (
                "sub non-ascii",
                with(claims(), "sub", json!("álice")),
                UnsafeClaim("user_id"),
            ),
            (
                "sub too long",
                with(claims(), "sub", json!("a".repeat(1025))),
                UnsafeClaim("user_id"),
            ),
            (
                "sub empty",
                with(claims(), "sub", json!("")),
                UnsafeClaim("user_id"),
            ),
            (
                "tenant leading space",
                with(claims(), "tenant_id", json!(" acme")),
                UnsafeClaim("tenant_id"),
            ),
            (
                "roles too long joined",
                with(
                    claims(),
                    "roles",
                    json!((0..120).map(|i| format!("role-{i:04}")).collect::<Vec<_>>()),
                ),
                UnsafeClaim("roles"),
            ),
            (
                "realm_access not object",
                with(claims(), "realm_access", json!("x")),
                ClaimType("roles"),
            ),
        ];
        for (name, c, want) in cases {
            assert_eq!(check(&f, &es.mint(&c)), Err(want), "{name}");
        }
    }

    #[test]
    fn list_characters_are_fine_where_no_list_is_split() {
        let f = fixture();
        // A space inside a user id or tenant id, and `;` `"` `\` there, are not list separators.
        let c = with(
            with(claims(), "sub", json!("alice smith;x=\"1\"")),
            "tenant_id",
            json!("acme corp"),
        );
        let id = check(&f, &f.keys[0].mint(&c)).unwrap();
        assert_eq!(id.user_id.as_deref(), Some("alice smith;x=\"1\""));
        assert_eq!(id.tenant_id.as_deref(), Some("acme corp"));
    }

    #[test]
    fn quoting_is_bounded_and_escapes_what_could_break_a_message() {
        assert_eq!(
            quote("https://iam.example.com/"),
            "'https://iam.example.com/'"
        );
        assert_eq!(quote(""), "''");
        assert_eq!(quote("a'b\"c\\d"), r#"'a\'b\"c\\d'"#);
        assert_eq!(quote("a\r\nb\u{7f}é"), r"'a\u{d}\u{a}b\u{7f}\u{e9}'");
        let long = "x".repeat(65);
        assert_eq!(quote(&long), format!("'{}…'", "x".repeat(64)));
        assert_eq!(quote(&"x".repeat(64)), format!("'{}'", "x".repeat(64)));
        // Bounded whatever the input: 64 characters, each at most a 10-byte escape.
        assert!(quote(&"\u{1}".repeat(10_000)).len() < 64 * 10 + 8);
        assert_eq!(quote_list(["a", "b"]), "'a', 'b'");
        assert_eq!(
            quote_list(["a", "b", "c", "d", "e", "f"]),
            "'a', 'b', 'c', 'd', … 2 more"
        );
        assert_eq!(quote_list([]), "");
    }

    #[test]
    fn refusals_name_the_token_value_and_the_log_detail_names_the_accepted_ones() {
        let f = fixture();
        let e = check(
            &f,
            &f.keys[0].mint(&with(claims(), "aud", json!(["web", "api/"]))),
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "token audience ['web', 'api/'] is not accepted"
        );
        assert_eq!(e.accepted(), Some("accepted: 'api', 'other'"));
        let e = check(
            &f,
            &f.keys[0].mint(&with(claims(), "iss", json!("https://iam.example.com/"))),
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "token issuer 'https://iam.example.com/' is not accepted"
        );
        assert_eq!(e.accepted(), Some("accepted: 'https://iam.example.com'"));
        let e = check(&f, &f.keys[0].mint(&with(claims(), "iss", json!(7)))).unwrap_err();
        assert_eq!(e.to_string(), "token has no issuer (iss) string");
        let p = claims().to_string();
        let e = check(
            &f,
            &f.keys[0].sign_raw(r#"{"alg":"ES256","kid":"k\u0000'2"}"#, &p),
        )
        .unwrap_err();
        assert_eq!(e.to_string(), r"no key with the token's kid 'k\u{0}\'2'");
        assert_eq!(TokenError::Expired.accepted(), None);
    }

    #[test]
    fn leeway_boundaries_accept() {
        let f = fixture();
        let es = &f.keys[0];
        for (name, c) in [
            (
                "exp within leeway",
                with(claims(), "exp", json!(NOW - 29.0)),
            ),
            (
                "nbf within leeway",
                with(claims(), "nbf", json!(NOW + 29.0)),
            ),
            (
                "iat within leeway",
                with(claims(), "iat", json!(NOW + 30.0)),
            ),
            ("fractional exp", with(claims(), "exp", json!(NOW + 0.5))),
            (
                "aud array with ours",
                with(claims(), "aud", json!(["x", "other"])),
            ),
            (
                "no sub, tenant or roles",
                json!({"iss": ISS, "aud": "api", "exp": NOW + 60.0}),
            ),
        ] {
            assert!(check(&f, &es.mint(&c)).is_ok(), "{name}");
        }
    }

    #[test]
    fn roles_from_several_paths_in_order_without_duplicates() {
        let f = fixture();
        let c = json!({"iss": ISS, "aud": "api", "exp": NOW + 60.0,
            "roles": ["b", "a"], "scope": "read  write a", "realm_access": {"roles": ["z", "b"]}});
        let id = check(&f, &f.keys[0].mint(&c)).unwrap();
        assert_eq!(id.roles_header().as_deref(), Some("b,a,read,write,z"));
        let empty = check(&f, &f.keys[0].mint(&with(c, "roles", json!([])))).unwrap();
        assert_eq!(empty.roles_header().as_deref(), Some("read,write,a,z,b"));
        let none = check(
            &f,
            &f.keys[0].mint(&with(
                with(with(claims(), "roles", Value::Null), "scope", Value::Null),
                "realm_access",
                Value::Null,
            )),
        )
        .unwrap();
        assert_eq!(none.roles_header(), None);
    }

    #[test]
    fn header_rejections() {
        let f = fixture();
        let es = &f.keys[0];
        let p = claims().to_string();
        use TokenError::*;
        let cases: Vec<(&str, String, TokenError)> = vec![
            (
                "alg none",
                es.sign_raw(r#"{"alg":"none","kid":"es"}"#, &p),
                Algorithm,
            ),
            (
                "alg HS256",
                es.sign_raw(r#"{"alg":"HS256","kid":"es"}"#, &p),
                Algorithm,
            ),
            (
                "alg not in allowlist",
                es.sign_raw(r#"{"alg":"ES384","kid":"es"}"#, &p),
                Algorithm,
            ),
            (
                "alg missing",
                es.sign_raw(r#"{"kid":"es"}"#, &p),
                Header("alg is missing"),
            ),
            (
                "alg number",
                es.sign_raw(r#"{"alg":1,"kid":"es"}"#, &p),
                Header("alg is not a string"),
            ),
            (
                "kid number",
                es.sign_raw(r#"{"alg":"ES256","kid":1}"#, &p),
                Header("kid is not a string"),
            ),
            (
                "crit",
                es.sign_raw(r#"{"alg":"ES256","kid":"es","crit":["exp"],"exp":1}"#, &p),
                Crit,
            ),
            (
                "crit empty",
                es.sign_raw(r#"{"alg":"ES256","kid":"es","crit":[]}"#, &p),
                Crit,
            ),
            (
                "b64 false",
                es.sign_raw(r#"{"alg":"ES256","kid":"es","b64":false}"#, &p),
                Crit,
            ),
            (
                "dup header",
                es.sign_raw(r#"{"alg":"ES256","kid":"es","kid":"rs"}"#, &p),
                DuplicateMember,
            ),
            (
                "dup payload",
                es.sign_raw(
                    r#"{"alg":"ES256","kid":"es"}"#,
                    &format!(r#"{{"sub":"a","sub":"b",{}"#, &p[1..]),
                ),
                DuplicateMember,
            ),
            (
                "dup nested",
                es.sign_raw(
                    r#"{"alg":"ES256","kid":"es"}"#,
                    &format!(r#"{{"x":{{"a":1,"a":2}},{}"#, &p[1..]),
                ),
                DuplicateMember,
            ),
            (
                "unknown kid",
                es.sign_raw(r#"{"alg":"ES256","kid":"gone"}"#, &p),
                UnknownKid(Mismatch::new(
                    Some("gone"),
                    "the issuer's key set has kids 'es', 'rs', 'ed'".into(),
                )),
            ),
            (
                "RS256 against EC key",
                es.sign_raw(r#"{"alg":"RS256","kid":"es"}"#, &p),
                KeyMismatch,
            ),
            (
                "PS256 against RS256-only key",
                f.keys[1].sign_raw(r#"{"alg":"PS256","kid":"rs"}"#, &p),
                KeyMismatch,
            ),
            (
                "signed by another key",
                SigningKey::generate(jsonwebtoken::Algorithm::ES256, "es")
                    .sign_raw(r#"{"alg":"ES256","kid":"es"}"#, &p),
                Signature,
            ),
            (
                "payload not object",
                es.sign_raw(r#"{"alg":"ES256","kid":"es"}"#, "[1]"),
                Malformed("header or payload is not a JSON object"),
            ),
            (
                "payload trailing",
                es.sign_raw(r#"{"alg":"ES256","kid":"es"}"#, &format!("{p} x")),
                Malformed("trailing data after JSON"),
            ),
            (
                "payload not json",
                es.sign_raw(r#"{"alg":"ES256","kid":"es"}"#, "nope"),
                Malformed("invalid JSON"),
            ),
        ];
        for (name, token, want) in cases {
            assert_eq!(check(&f, &token), Err(want), "{name}");
        }
    }

    /// The typed header reader sees what a strict JSON map of the header holds, and fails the
    /// same way, for the headers that exercise each of its branches.
    #[test]
    fn typed_header_matches_the_map() {
        let headers = [
            r#"{"alg":"RS256","kid":"k","typ":"JWT"}"#,
            r#"{"\u0061lg":"RS256","k\u0069d":"\u006b"}"#,
            r#"{"alg":"RS256","alg":"ES256"}"#,
            r#"{"alg":"RS256","alg":["}"#,
            r#"{"alg":"RS256","x":1,"x":2}"#,
            r#"{"alg":"RS256","x":1,"y":2,"z":{"a":[{"b":1,"b":2}]}}"#,
            r#"{"alg":"RS256","crit":null,"crit":[]}"#,
            r#"{"alg":1,"kid":null,"typ":{"a":1,"a":2}}"#,
            r#"{"alg":[1,{"a":1}],"kid":true,"typ":1.5e3}"#,
            r#"{"alg":"ES256","b64":true}"#,
            r#"{"alg":"ES256","b64":"true"}"#,
            r#"{"alg":"ES256","b64":false,"b64":true}"#,
            r#"{}"#,
            r#"[{"a":1,"a":2}]"#,
            r#"["alg"]"#,
            r#""alg""#,
            r#"1"#,
            r#"null"#,
            r#"{"alg":"RS256"} x"#,
            r#"{"alg":"RS256""#,
            "\u{feff}{}",
        ];
        for header in headers {
            assert_eq!(typed_header_agrees(header.as_bytes()), Ok(()), "{header}");
        }
        let part = |h: &str| URL_SAFE_NO_PAD.encode(h);
        assert_eq!(
            decode_header(&part(r#"{"alg":"RS256","x":1,"x":2}"#)),
            Err(TokenError::DuplicateMember)
        );
        assert_eq!(
            decode_header(&part("[]")),
            Err(TokenError::Malformed(
                "header or payload is not a JSON object"
            ))
        );
        assert_eq!(
            decode_header(&part(r#"{"\u0061lg":"RS256","jwk":{},"b64":false}"#)),
            Ok(Header {
                alg: Member::Str("RS256".into()),
                b64: Some(false),
                ..Header::default()
            })
        );
    }

    #[test]
    fn jku_and_embedded_jwk_are_ignored() {
        let f = fixture();
        let attacker = SigningKey::generate(Algorithm::ES256, "es");
        let header = json!({"alg": "ES256", "kid": "es", "jku": "http://127.0.0.1:1/evil", "jwk": attacker.jwk()});
        let token = attacker.sign_raw(&header.to_string(), &claims().to_string());
        assert_eq!(check(&f, &token), Err(TokenError::Signature));
    }

    #[test]
    fn tampering_is_detected() {
        let f = fixture();
        let token = f.keys[0].mint(&claims());
        let mut parts: Vec<&str> = token.split('.').collect();
        let forged =
            URL_SAFE_NO_PAD.encode(with(claims(), "roles", json!(["admin", "root"])).to_string());
        parts[1] = &forged;
        assert_eq!(check(&f, &parts.join(".")), Err(TokenError::Signature));
        // Flipping the signature's last character.
        let mut bad = token.clone();
        let last = bad.pop().unwrap();
        bad.push(if last == 'A' { 'B' } else { 'A' });
        assert_eq!(check(&f, &bad), Err(TokenError::Signature));
    }

    #[test]
    fn malformed_and_oversized() {
        let f = fixture();
        let token = f.keys[0].mint(&claims());
        use TokenError::*;
        let cases: Vec<(String, TokenError)> = vec![
            ("".into(), Malformed("expected three dot-separated parts")),
            (
                "a.b".into(),
                Malformed("expected three dot-separated parts"),
            ),
            (
                "a.b.c.d".into(),
                Malformed("expected three dot-separated parts"),
            ),
            (
                format!("{token}."),
                Malformed("expected three dot-separated parts"),
            ),
            ("..".into(), Malformed("empty part")),
            (
                token.replacen('.', ".=", 1),
                Malformed("characters outside base64url"),
            ),
            (
                format!("{token}=="),
                Malformed("characters outside base64url"),
            ),
            ("e30.e30.AAAA".into(), Header("alg is missing")),
            (
                "!!!.e30.AAAA".into(),
                Malformed("characters outside base64url"),
            ),
            ("eyJ.e30.AAAA".into(), Malformed("invalid base64url")),
            ("x".repeat(9000), TooLarge(8192)),
        ];
        for (token, want) in cases {
            assert_eq!(check(&f, &token).map(|_| ()), Err(want), "{token:.40}");
        }
    }

    #[test]
    fn typ_allowlist() {
        let f = fixture();
        let es = &f.keys[0];
        let mut r = rules();
        r.token_types = vec!["at+jwt".into()];
        let p = claims().to_string();
        let t = |typ: &str| {
            es.sign_raw(
                &format!(r#"{{"alg":"ES256","kid":"es","typ":"{typ}"}}"#),
                &p,
            )
        };
        assert!(check_with(&f, &t("at+jwt"), &r).is_ok());
        assert!(check_with(&f, &t("AT+JWT"), &r).is_ok());
        assert!(check_with(&f, &t("application/at+jwt"), &r).is_ok());
        let refused = |got| {
            Err(TokenError::Type(Mismatch::new(
                got,
                "accepted: 'at+jwt'".into(),
            )))
        };
        assert_eq!(check_with(&f, &t("JWT"), &r), refused(Some("JWT")));
        assert_eq!(
            check_with(&f, &es.sign_raw(r#"{"alg":"ES256","kid":"es"}"#, &p), &r),
            refused(None)
        );
        // Without an allowlist, any typ passes.
        assert!(check(&f, &t("whatever")).is_ok());
    }

    #[test]
    fn token_without_kid_needs_exactly_one_usable_key() {
        let f = fixture();
        let p = claims().to_string();
        assert!(check(&f, &f.keys[0].sign_raw(r#"{"alg":"ES256"}"#, &p)).is_ok());
        let two = [
            SigningKey::generate(Algorithm::ES256, "a"),
            SigningKey::generate(Algorithm::ES256, "b"),
        ];
        let (set, _) = KeySet::from_jwks(
            json!({"keys": [two[0].jwk(), two[1].jwk()]})
                .to_string()
                .as_bytes(),
        )
        .unwrap();
        let u_token = two[0].sign_raw(r#"{"alg":"ES256"}"#, &p);
        let u = Unverified::parse(&u_token, 8192).unwrap();
        assert_eq!(
            u.verify(&set, &rules(), &Arc::from("iam"), NOW),
            Err(TokenError::AmbiguousKey)
        );
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(s in "[A-Za-z0-9_.=-]{0,200}") {
            let _ = Unverified::parse(&s, 8192);
        }

        #[test]
        fn arbitrary_payload_never_panics_and_is_never_accepted_unsigned(payload in "\\PC{0,100}") {
            let f = fixture_light();
            let token = format!("{}.{}.AAAA", URL_SAFE_NO_PAD.encode(r#"{"alg":"ES256"}"#), URL_SAFE_NO_PAD.encode(&payload));
            if let Ok(u) = Unverified::parse(&token, 8192) {
                proptest::prop_assert!(u.verify(&f, &rules(), &Arc::from("iam"), NOW).is_err());
            }
        }
    }

    fn fixture_light() -> KeySet {
        let k = SigningKey::generate(Algorithm::ES256, "es");
        KeySet::from_jwks(json!({"keys": [k.jwk()]}).to_string().as_bytes())
            .unwrap()
            .0
    }
}
