//! Key sets: a JWKS document parsed into the keys this server will verify with, and the choice
//! of the one key a token may be checked against.
//!
//! Pure: no I/O. Only RSA ≥ 2048 bits, EC P-256/P-384 and Ed25519 signature keys are kept; `oct`
//! keys, `use: enc` keys, keys of unknown type or malformed keys are skipped (and reported so the
//! fetcher can log them), and so are known-weak keys: Ed25519 points of small order and RSA moduli
//! with the ROCA fingerprint. A token's `alg` must fit the key's type and the key's own `alg`.

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::signature::{ParsedPublicKey, VerificationAlgorithm};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::Value;

/// Bounds that keep a hostile or broken JWKS from costing more than a normal one.
const MAX_KEYS: usize = 100;
const MIN_RSA_BITS: usize = 2048;
/// aws-lc's RSA verification algorithms accept 2048..=8192-bit moduli.
const MAX_RSA_BITS: usize = 8192;

/// The kind of a usable key; it decides which algorithms may use it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Rsa,
    P256,
    P384,
    Ed25519,
}

impl KeyKind {
    /// Whether a token signed with `alg` can be verified by a key of this kind.
    pub fn fits(self, alg: Algorithm) -> bool {
        use Algorithm::*;
        matches!(
            (self, alg),
            (KeyKind::Rsa, RS256 | RS384 | RS512 | PS256 | PS384 | PS512)
                | (KeyKind::P256, ES256)
                | (KeyKind::P384, ES384)
                | (KeyKind::Ed25519, EdDSA)
        )
    }
}

/// One verification key.
#[derive(Clone)]
pub struct Key {
    pub kid: Option<Box<str>>,
    pub kind: KeyKind,
    /// The key's own `alg`, when the JWK names one.
    pub alg: Option<Algorithm>,
    /// The same key as jsonwebtoken sees it (kept for the comparison micro-benchmark).
    pub decoding: DecodingKey,
    /// The key parsed once per algorithm it may verify (aws-lc), so a check pays for the
    /// signature and nothing else.
    verifiers: Vec<(Algorithm, ParsedPublicKey)>,
    /// Stable identity of this key's material (kind + public bytes), so verdicts cached under a
    /// key can be dropped when that key leaves the set.
    pub fingerprint: u64,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("kid", &self.kid)
            .field("kind", &self.kind)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

impl Key {
    pub fn usable_for(&self, alg: Algorithm) -> bool {
        self.kind.fits(alg) && self.alg.is_none_or(|a| a == alg)
    }

    /// Check a JWS signature (raw bytes, not base64) over `message` with this key and `alg`.
    pub fn verify(&self, alg: Algorithm, message: &[u8], signature: &[u8]) -> bool {
        self.verifiers
            .iter()
            .find(|(a, _)| *a == alg)
            .is_some_and(|(_, key)| key.verify_sig(message, signature).is_ok())
    }
}

/// aws-lc's verification algorithm for a JWS `alg` (RFC 7518 §3: ECDSA signatures are the fixed
/// r‖s form).
fn verification_algorithm(alg: Algorithm) -> Option<&'static dyn VerificationAlgorithm> {
    use Algorithm::*;
    use aws_lc_rs::signature as sig;
    Some(match alg {
        RS256 => &sig::RSA_PKCS1_2048_8192_SHA256,
        RS384 => &sig::RSA_PKCS1_2048_8192_SHA384,
        RS512 => &sig::RSA_PKCS1_2048_8192_SHA512,
        PS256 => &sig::RSA_PSS_2048_8192_SHA256,
        PS384 => &sig::RSA_PSS_2048_8192_SHA384,
        PS512 => &sig::RSA_PSS_2048_8192_SHA512,
        ES256 => &sig::ECDSA_P256_SHA256_FIXED,
        ES384 => &sig::ECDSA_P384_SHA384_FIXED,
        EdDSA => &sig::ED25519,
        _ => return None,
    })
}

/// Parse `public` (SPKI DER for RSA, the point for EC, the raw key for Ed25519) for every
/// algorithm this key may verify: its own `alg`, or all that fit its kind.
fn verifiers(
    kind: KeyKind,
    alg: Option<Algorithm>,
    public: &[u8],
) -> Result<Vec<(Algorithm, ParsedPublicKey)>, String> {
    use Algorithm::*;
    let candidates = [
        RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA,
    ];
    let mut out = Vec::new();
    for a in candidates
        .into_iter()
        .filter(|a| kind.fits(*a) && alg.is_none_or(|k| k == *a))
    {
        let Some(v) = verification_algorithm(a) else {
            continue;
        };
        let parsed = ParsedPublicKey::new(v, public)
            .map_err(|_| format!("{kind:?} public key does not parse"))?;
        out.push((a, parsed));
    }
    Ok(out)
}

/// The usable keys of one issuer.
#[derive(Debug, Clone, Default)]
pub struct KeySet {
    keys: Vec<Key>,
}

/// The outcome of looking for the key a token names.
#[derive(Debug)]
pub enum Selection<'k> {
    Found(&'k Key),
    /// The token's `kid` is not in the set: the set may be out of date.
    UnknownKid,
    /// The key exists but cannot verify this `alg` (type or its own `alg` differs).
    AlgMismatch,
    /// No `kid` and not exactly one key usable for the `alg`.
    Ambiguous,
}

impl KeySet {
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn keys(&self) -> &[Key] {
        &self.keys
    }

    /// Whether the key with this fingerprint is still in the set.
    pub fn has_fingerprint(&self, fingerprint: u64) -> bool {
        self.keys.iter().any(|k| k.fingerprint == fingerprint)
    }

    pub fn select(&self, kid: Option<&str>, alg: Algorithm) -> Selection<'_> {
        match kid {
            Some(kid) => {
                let mut named = self
                    .keys
                    .iter()
                    .filter(|k| k.kid.as_deref() == Some(kid))
                    .peekable();
                if named.peek().is_none() {
                    return Selection::UnknownKid;
                }
                named
                    .find(|k| k.usable_for(alg))
                    .map_or(Selection::AlgMismatch, Selection::Found)
            }
            None => {
                let mut usable = self.keys.iter().filter(|k| k.usable_for(alg));
                match (usable.next(), usable.next()) {
                    (Some(key), None) => Selection::Found(key),
                    _ => Selection::Ambiguous,
                }
            }
        }
    }

    /// Parse a JWKS document. Unusable keys are skipped and described in the second value;
    /// a document that is not a JWKS at all is an error.
    pub fn from_jwks(body: &[u8]) -> Result<(KeySet, Vec<String>), String> {
        let doc: Value =
            serde_json::from_slice(body).map_err(|e| format!("JWKS is not JSON: {e}"))?;
        let Some(list) = doc.get("keys").and_then(Value::as_array) else {
            return Err("JWKS has no \"keys\" array".to_owned());
        };
        let mut keys = Vec::new();
        let mut skipped = Vec::new();
        for (i, jwk) in list.iter().enumerate() {
            if keys.len() == MAX_KEYS {
                skipped.push(format!(
                    "keys[{i}..]: more than {MAX_KEYS} keys, the rest ignored"
                ));
                break;
            }
            match parse_jwk(jwk) {
                Ok(key) => keys.push(key),
                Err(why) => skipped.push(format!("keys[{i}]: {why}")),
            }
        }
        Ok((KeySet { keys }, skipped))
    }
}

fn parse_jwk(jwk: &Value) -> Result<Key, String> {
    let field = |name: &str| -> Result<Option<&str>, String> {
        match jwk.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(_) => Err(format!("\"{name}\" is not a string")),
        }
    };
    let required = |name: &str| -> Result<&str, String> {
        field(name)?.ok_or_else(|| format!("missing \"{name}\""))
    };
    if let Some(usage) = field("use")?
        && usage != "sig"
    {
        return Err(format!("use {usage:?} is not sig"));
    }
    if let Some(ops) = jwk.get("key_ops") {
        let verifies = ops
            .as_array()
            .is_some_and(|ops| ops.iter().any(|op| op.as_str() == Some("verify")));
        if !verifies {
            return Err("key_ops does not include verify".to_owned());
        }
    }
    let alg = match field("alg")? {
        None => None,
        Some(name) => Some(
            algorithm_from_name(name)
                .ok_or_else(|| format!("alg {name:?} is not a supported signature algorithm"))?,
        ),
    };
    let kid = field("kid")?.map(Into::into);
    let kty = required("kty")?;
    let (kind, decoding, material, public) = match kty {
        "RSA" => {
            let n = b64(required("n")?, "n")?;
            let e = b64(required("e")?, "e")?;
            let n_trim = trim_zeros(&n);
            // An empty or all-zero modulus has no first byte: 0 bits, not an underflow.
            let bits = n_trim
                .first()
                .map_or(0, |b| n_trim.len() * 8 - b.leading_zeros() as usize);
            if !(MIN_RSA_BITS..=MAX_RSA_BITS).contains(&bits) {
                return Err(format!(
                    "RSA key of {bits} bits (need {MIN_RSA_BITS}..={MAX_RSA_BITS})"
                ));
            }
            if has_roca_fingerprint(n_trim) {
                return Err(
                    "RSA modulus has the ROCA fingerprint (CVE-2017-15361): its private key can be recovered"
                        .to_owned(),
                );
            }
            let e_trim = trim_zeros(&e);
            if e_trim.is_empty() || e_trim.len() > 8 || e_trim[e_trim.len() - 1] & 1 == 0 {
                return Err("RSA exponent is not a small odd number".to_owned());
            }
            let material = [n_trim, e_trim].concat();
            let spki = aws_lc_rs::rsa::PublicKeyComponents {
                n: n_trim,
                e: e_trim,
            }
            .as_der()
            .map_err(|_| "RSA components do not form a public key".to_owned())?;
            (
                KeyKind::Rsa,
                DecodingKey::from_rsa_raw_components(n_trim, e_trim),
                material,
                spki.as_ref().to_vec(),
            )
        }
        "EC" => {
            let (kind, len) = match required("crv")? {
                "P-256" => (KeyKind::P256, 32),
                "P-384" => (KeyKind::P384, 48),
                other => return Err(format!("EC curve {other:?} is not supported")),
            };
            let x = b64(required("x")?, "x")?;
            let y = b64(required("y")?, "y")?;
            if x.len() != len || y.len() != len {
                return Err("EC coordinates have the wrong length".to_owned());
            }
            let mut point = Vec::with_capacity(1 + 2 * len);
            point.push(0x04);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            (kind, DecodingKey::from_ec_der(&point), point.clone(), point)
        }
        "OKP" => {
            let crv = required("crv")?;
            if crv != "Ed25519" {
                return Err(format!("OKP curve {crv:?} is not supported"));
            }
            let x = b64(required("x")?, "x")?;
            if x.len() != 32 {
                return Err("Ed25519 key is not 32 bytes".to_owned());
            }
            if is_small_order_ed25519(&x) {
                return Err(
                    "Ed25519 key is a point of small order: signatures with it prove nothing"
                        .to_owned(),
                );
            }
            (KeyKind::Ed25519, DecodingKey::from_ed_der(&x), x.clone(), x)
        }
        "oct" => return Err("symmetric (oct) keys are never used".to_owned()),
        other => return Err(format!("key type {other:?} is not supported")),
    };
    if let Some(alg) = alg
        && !kind.fits(alg)
    {
        return Err(format!("alg {alg:?} does not fit a {kind:?} key"));
    }
    // Parsing also validates: an EC point off its curve or a broken RSA key is refused here.
    let verifiers = verifiers(kind, alg, &public).map_err(|e| {
        if matches!(kind, KeyKind::P256 | KeyKind::P384) {
            "EC point is not on the curve".to_owned()
        } else {
            e
        }
    })?;
    Ok(Key {
        kid,
        kind,
        alg,
        decoding,
        verifiers,
        fingerprint: fingerprint(kind, &material),
    })
}

/// The y coordinates (little-endian, sign bit clear) of every encoding of a point of small order
/// on edwards25519. The 8-torsion has 8 points, with y in {0, 1, -1, y8, -y8}; an encoded y is
/// any 255-bit value, so the non-canonical encodings p (= 0) and p + 1 (= 1) decode to them too
/// (y + p fits in 255 bits only for y < 19). With either sign bit that is all 14 encodings,
/// including the "negative zero" x of the identity and of the order-2 point. Such a key verifies
/// forged signatures (the identity with R = identity, S = 0 verifies any message), so it is never
/// used. Derived by decompressing each candidate and checking 8·P = identity; the list matches
/// libsodium's blocklist.
const SMALL_ORDER_Y: [[u8; 32]; 7] = [
    // y = 0: the two points of order 4
    [
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00,
    ],
    // y = 1: the identity (order 1)
    [
        0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00,
    ],
    // y = -1 = p - 1: the point of order 2
    [
        0xec, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0x7f,
    ],
    // y8: two points of order 8
    [
        0x26, 0xe8, 0x95, 0x8f, 0xc2, 0xb2, 0x27, 0xb0, 0x45, 0xc3, 0xf4, 0x89, 0xf2, 0xef, 0x98,
        0xf0, 0xd5, 0xdf, 0xac, 0x05, 0xd3, 0xc6, 0x33, 0x39, 0xb1, 0x38, 0x02, 0x88, 0x6d, 0x53,
        0xfc, 0x05,
    ],
    // -y8 = p - y8: the other two points of order 8
    [
        0xc7, 0x17, 0x6a, 0x70, 0x3d, 0x4d, 0xd8, 0x4f, 0xba, 0x3c, 0x0b, 0x76, 0x0d, 0x10, 0x67,
        0x0f, 0x2a, 0x20, 0x53, 0xfa, 0x2c, 0x39, 0xcc, 0xc6, 0x4e, 0xc7, 0xfd, 0x77, 0x92, 0xac,
        0x03, 0x7a,
    ],
    // y = p: a non-canonical 0
    [
        0xed, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0x7f,
    ],
    // y = p + 1: a non-canonical 1
    [
        0xee, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0x7f,
    ],
];

/// Whether a 32-byte Ed25519 public key encodes a point of small order (either sign bit).
fn is_small_order_ed25519(x: &[u8]) -> bool {
    let Ok(mut y) = <[u8; 32]>::try_from(x) else {
        return false;
    };
    y[31] &= 0x7f;
    SMALL_ORDER_Y.contains(&y)
}

/// The primes of the published ROCA fingerprint (Nemec et al., "The Return of Coppersmith's
/// Attack", CCS 2017, and its detect tool): Infineon's RSALib made primes p = k·M + (65537^a mod M),
/// so their product N, modulo each of these primes r, lies in the subgroup generated by 65537.
const ROCA_PRIMES: [u32; 38] = [
    3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53, 59, 61, 67, 71, 73, 79, 83, 89, 97,
    101, 103, 107, 109, 113, 127, 131, 137, 139, 149, 151, 157, 163, 167,
];

/// The ROCA (CVE-2017-15361) fingerprint test on a big-endian modulus. A modulus not made by the
/// vulnerable library passes all 38 residue checks with probability about 2^-154.
fn has_roca_fingerprint(n: &[u8]) -> bool {
    ROCA_PRIMES.iter().all(|&r| {
        // acc < r ≤ 167, so acc·256 + 255 stays far below u32::MAX.
        let residue = n
            .iter()
            .fold(0u32, |acc, &b| ((acc << 8) | u32::from(b)) % r);
        in_subgroup_of_65537(residue, r)
    })
}

/// Whether `residue` is a power of 65537 modulo the prime `r` (at most r - 1 steps, r ≤ 167).
fn in_subgroup_of_65537(residue: u32, r: u32) -> bool {
    let g = 65537 % r;
    let mut x = 1;
    for _ in 0..r {
        if x == residue {
            return true;
        }
        x = x * g % r;
        if x == 1 {
            break;
        }
    }
    false
}

fn b64(s: &str, name: &str) -> Result<Vec<u8>, String> {
    URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|_| format!("\"{name}\" is not base64url"))
}

fn trim_zeros(b: &[u8]) -> &[u8] {
    let start = b.iter().position(|&x| x != 0).unwrap_or(b.len());
    &b[start..]
}

/// FNV-1a over kind and key material: a stable, cheap identity (not a security boundary; the
/// key material itself is what verifies).
fn fingerprint(kind: KeyKind, material: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in std::iter::once(kind as u8).chain(material.iter().copied()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// `RS256` → `Algorithm::RS256`, for the asymmetric algorithms only.
pub fn algorithm_from_name(name: &str) -> Option<Algorithm> {
    use Algorithm::*;
    Some(match name {
        "RS256" => RS256,
        "RS384" => RS384,
        "RS512" => RS512,
        "PS256" => PS256,
        "PS384" => PS384,
        "PS512" => PS512,
        "ES256" => ES256,
        "ES384" => ES384,
        "EdDSA" => EdDSA,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::signer::SigningKey;
    use serde_json::json;

    fn set(keys: Vec<Value>) -> (KeySet, Vec<String>) {
        KeySet::from_jwks(json!({ "keys": keys }).to_string().as_bytes()).unwrap()
    }

    #[test]
    fn keeps_supported_keys_and_skips_the_rest() {
        let rsa = SigningKey::generate(Algorithm::RS256, "r1");
        let ec = SigningKey::generate(Algorithm::ES256, "e1");
        let ed = SigningKey::generate(Algorithm::EdDSA, "d1");
        let mut enc = ec.jwk();
        enc["use"] = json!("enc");
        enc["kid"] = json!("enc");
        let (ks, skipped) = set(vec![
            rsa.jwk(),
            ec.jwk(),
            ed.jwk(),
            json!({"kty": "oct", "k": "c2VjcmV0", "kid": "h"}),
            enc,
            json!({"kty": "RSA", "kid": "small", "n": URL_SAFE_NO_PAD.encode([0xffu8; 128]), "e": "AQAB"}),
            json!({"kty": "EC", "crv": "P-521", "x": "AA", "y": "AA"}),
            json!({"kty": "EC", "crv": "P-256", "x": URL_SAFE_NO_PAD.encode([1u8; 32]), "y": URL_SAFE_NO_PAD.encode([2u8; 32])}),
            json!({"kty": "OKP", "crv": "X25519", "x": URL_SAFE_NO_PAD.encode([1u8; 32])}),
            json!({"kty": "WAT"}),
            json!("not an object"),
        ]);
        assert_eq!(ks.len(), 3, "{skipped:?}");
        assert_eq!(skipped.len(), 8, "{skipped:?}");
        assert!(
            skipped.iter().any(|s| s.contains("1024 bits")),
            "{skipped:?}"
        );
        assert!(
            skipped.iter().any(|s| s.contains("not on the curve")),
            "{skipped:?}"
        );
    }

    #[test]
    fn not_a_jwks_is_an_error() {
        assert!(KeySet::from_jwks(b"<html>").is_err());
        assert!(KeySet::from_jwks(b"{}").is_err());
        assert!(KeySet::from_jwks(b"{\"keys\": {}}").is_err());
    }

    #[test]
    fn selection_binds_alg_to_key_type_and_key_alg() {
        let rsa = SigningKey::generate(Algorithm::RS256, "r1");
        let ec = SigningKey::generate(Algorithm::ES256, "e1");
        let (ks, _) = set(vec![rsa.jwk(), ec.jwk()]);
        assert!(matches!(
            ks.select(Some("r1"), Algorithm::RS256),
            Selection::Found(_)
        ));
        // The key names RS256 for itself: PS256 with the same RSA key is refused.
        assert!(matches!(
            ks.select(Some("r1"), Algorithm::PS256),
            Selection::AlgMismatch
        ));
        assert!(matches!(
            ks.select(Some("r1"), Algorithm::ES256),
            Selection::AlgMismatch
        ));
        assert!(matches!(
            ks.select(Some("e1"), Algorithm::ES384),
            Selection::AlgMismatch
        ));
        assert!(matches!(
            ks.select(Some("zz"), Algorithm::ES256),
            Selection::UnknownKid
        ));
        // No kid: exactly one usable key for the alg.
        assert!(
            matches!(ks.select(None, Algorithm::ES256), Selection::Found(k) if k.kind == KeyKind::P256)
        );
        assert!(matches!(
            ks.select(None, Algorithm::EdDSA),
            Selection::Ambiguous
        ));
        let ec2 = SigningKey::generate(Algorithm::ES256, "e2");
        let (ks2, _) = set(vec![ec.jwk(), ec2.jwk()]);
        assert!(matches!(
            ks2.select(None, Algorithm::ES256),
            Selection::Ambiguous
        ));
    }

    #[test]
    fn fingerprints_differ_per_key_and_are_stable() {
        let a = SigningKey::generate(Algorithm::ES256, "a");
        let b = SigningKey::generate(Algorithm::ES256, "a");
        let (s1, _) = set(vec![a.jwk()]);
        let (s2, _) = set(vec![a.jwk(), b.jwk()]);
        assert_eq!(s1.keys()[0].fingerprint, s2.keys()[0].fingerprint);
        assert_ne!(s2.keys()[0].fingerprint, s2.keys()[1].fingerprint);
    }
    #[test]
    fn an_empty_or_all_zero_rsa_modulus_is_refused_not_a_panic() {
        for n in ["", "AAAA"] {
            let (ks, skipped) = set(vec![json!({"kty": "RSA", "kid": "z", "n": n, "e": "AQAB"})]);
            assert!(ks.is_empty());
            assert!(skipped[0].contains("0 bits"), "{skipped:?}");
        }
    }

    /// Every encoding of a point of small order on edwards25519: the y coordinates 0, 1, -1, ±y8
    /// (order 8) and the non-canonical p and p + 1, each with either sign bit.
    fn small_order_encodings() -> Vec<[u8; 32]> {
        SMALL_ORDER_Y
            .iter()
            .flat_map(|y| {
                let mut signed = *y;
                signed[31] |= 0x80;
                [*y, signed]
            })
            .collect()
    }

    #[test]
    fn ed25519_keys_of_small_order_are_ignored_in_every_encoding() {
        let encodings = small_order_encodings();
        assert_eq!(encodings.len(), 14);
        let jwks: Vec<Value> = encodings
            .iter()
            .enumerate()
            .map(|(i, x)| json!({"kty": "OKP", "crv": "Ed25519", "kid": format!("w{i}"), "x": URL_SAFE_NO_PAD.encode(x)}))
            .collect();
        let (ks, skipped) = set(jwks);
        assert!(ks.is_empty(), "{:?}", ks.keys());
        assert_eq!(skipped.len(), 14, "{skipped:?}");
        assert!(
            skipped.iter().all(|s| s.contains("small order")),
            "{skipped:?}"
        );
        // Ordinary keys are kept.
        for i in 0..20 {
            let ed = SigningKey::generate(Algorithm::EdDSA, &format!("d{i}"));
            assert_eq!(set(vec![ed.jwk()]).0.len(), 1);
        }
    }

    #[test]
    fn ed25519_small_order_key_would_verify_a_forgery() {
        // Why the check matters: with the identity as public key, R = identity and S = 0 verify
        // any message, so anyone could mint tokens "signed" by it.
        let identity = SMALL_ORDER_Y[1];
        let parsed = ParsedPublicKey::new(&aws_lc_rs::signature::ED25519, identity).unwrap();
        let mut sig = [0u8; 64];
        sig[0] = 1;
        assert!(parsed.verify_sig(b"any message", &sig).is_ok());
    }

    /// A real 2048-bit RSA key whose primes have the Infineon (ROCA) form; see
    /// tests/vectors/gen_roca_key.py.
    fn roca_modulus() -> Vec<u8> {
        let pem = include_str!("../../tests/vectors/roca_rsa2048.pem");
        let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        let der = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        let kp = aws_lc_rs::rsa::KeyPair::from_pkcs8(&der).unwrap();
        use aws_lc_rs::signature::KeyPair;
        kp.public_key()
            .modulus()
            .big_endian_without_leading_zero()
            .to_vec()
    }

    #[test]
    fn rsa_moduli_with_the_roca_fingerprint_are_ignored() {
        let n = roca_modulus();
        assert_eq!(n.len(), 256);
        assert!(has_roca_fingerprint(&n));
        let (ks, skipped) = set(vec![
            json!({"kty": "RSA", "kid": "roca", "n": URL_SAFE_NO_PAD.encode(&n), "e": "AQAB"}),
        ]);
        assert!(ks.is_empty());
        assert!(skipped[0].contains("ROCA"), "{skipped:?}");
        // Ordinary keys are not flagged (a random modulus passes with probability about 2^-154).
        for i in 0..8 {
            let rsa = SigningKey::generate(Algorithm::RS256, &format!("r{i}"));
            let n = URL_SAFE_NO_PAD
                .decode(rsa.jwk()["n"].as_str().unwrap())
                .unwrap();
            assert!(!has_roca_fingerprint(&n));
            assert_eq!(set(vec![rsa.jwk()]).0.len(), 1);
        }
    }

    #[test]
    fn roca_fingerprint_residue_test_matches_the_published_masks() {
        // detect.py of the ROCA authors keeps, per prime, a bit mask of the residues in the
        // subgroup generated by 65537; the first ones are 6, 30, 126, 1026, 5658.
        let masks: Vec<u64> = ROCA_PRIMES[..5]
            .iter()
            .map(|&p| {
                (0..p)
                    .filter(|&r| in_subgroup_of_65537(r, p))
                    .map(|r| 1u64 << r)
                    .sum()
            })
            .collect();
        assert_eq!(masks, [6, 30, 126, 1026, 5658]);
    }
}
