//! Signing keys and JWT minting for `dev` mode and for tests.
//!
//! Production never signs: this module exists so that the dev issuer and the test suites mint
//! real tokens with real keys (aws-lc-rs) instead of fixtures that could drift from the verifier.
//! `sign_raw` takes header and payload as raw JSON text so tests can craft hostile tokens
//! (duplicate members, odd types) that a serializer would refuse to produce.

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::Algorithm;
use serde_json::{Value, json};

enum Inner {
    Rsa(aws_lc_rs::rsa::KeyPair),
    Ecdsa(EcdsaKeyPair),
    Ed25519(Ed25519KeyPair),
}

/// A freshly generated private key with its `kid` and algorithm.
pub struct SigningKey {
    pub alg: Algorithm,
    pub kid: String,
    inner: Inner,
}

/// Key generation failed inside aws-lc (should not happen; reported rather than panicking).
#[derive(Debug, thiserror::Error)]
#[error("cannot generate a {0:?} signing key")]
pub struct KeyGenError(Algorithm);

impl SigningKey {
    /// Generate a key for `alg` (RS*/PS* → RSA 2048, ES256/ES384, EdDSA → Ed25519).
    pub fn try_generate(alg: Algorithm, kid: &str) -> Result<Self, KeyGenError> {
        use Algorithm::*;
        let err = |_| KeyGenError(alg);
        let inner = match alg {
            RS256 | RS384 | RS512 | PS256 | PS384 | PS512 => {
                Inner::Rsa(aws_lc_rs::rsa::KeyPair::generate(KeySize::Rsa2048).map_err(err)?)
            }
            ES256 => Inner::Ecdsa(
                EcdsaKeyPair::generate(&signature::ECDSA_P256_SHA256_FIXED_SIGNING).map_err(err)?,
            ),
            ES384 => Inner::Ecdsa(
                EcdsaKeyPair::generate(&signature::ECDSA_P384_SHA384_FIXED_SIGNING).map_err(err)?,
            ),
            EdDSA => Inner::Ed25519(Ed25519KeyPair::generate().map_err(err)?),
            _ => return Err(KeyGenError(alg)),
        };
        Ok(SigningKey {
            alg,
            kid: kid.to_owned(),
            inner,
        })
    }

    /// [`Self::try_generate`] for tests, where a failure should stop the test.
    #[cfg(test)]
    pub fn generate(alg: Algorithm, kid: &str) -> Self {
        Self::try_generate(alg, kid).unwrap()
    }

    /// The public JWK, with `kid`, `alg` and `use: sig`.
    pub fn jwk(&self) -> Value {
        let alg = format!("{:?}", self.alg);
        match &self.inner {
            Inner::Rsa(kp) => {
                let pk = kp.public_key();
                json!({
                    "kty": "RSA", "kid": self.kid, "alg": alg, "use": "sig",
                    "n": URL_SAFE_NO_PAD.encode(pk.modulus().big_endian_without_leading_zero()),
                    "e": URL_SAFE_NO_PAD.encode(pk.exponent().big_endian_without_leading_zero()),
                })
            }
            Inner::Ecdsa(kp) => {
                let point = kp.public_key().as_ref();
                let len = (point.len() - 1) / 2;
                let crv = if len == 32 { "P-256" } else { "P-384" };
                json!({
                    "kty": "EC", "crv": crv, "kid": self.kid, "alg": alg, "use": "sig",
                    "x": URL_SAFE_NO_PAD.encode(&point[1..1 + len]),
                    "y": URL_SAFE_NO_PAD.encode(&point[1 + len..]),
                })
            }
            Inner::Ed25519(kp) => json!({
                "kty": "OKP", "crv": "Ed25519", "kid": self.kid, "alg": alg, "use": "sig",
                "x": URL_SAFE_NO_PAD.encode(kp.public_key().as_ref()),
            }),
        }
    }

    /// Sign arbitrary header and payload JSON text (base64url-encoded here).
    pub fn sign_raw(&self, header_json: &str, payload_json: &str) -> String {
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header_json),
            URL_SAFE_NO_PAD.encode(payload_json)
        );
        let sig = self.signature(input.as_bytes());
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig))
    }

    /// Sign `claims` with a standard header (`alg`, `kid`, `typ: JWT`).
    pub fn mint(&self, claims: &Value) -> String {
        let header = json!({ "alg": format!("{:?}", self.alg), "kid": self.kid, "typ": "JWT" });
        self.sign_raw(&header.to_string(), &claims.to_string())
    }

    fn signature(&self, msg: &[u8]) -> Vec<u8> {
        use Algorithm::*;
        let rng = SystemRandom::new();
        // Signing with a key we generated ourselves cannot fail short of memory exhaustion; an
        // empty signature (which every verifier rejects) is the safe answer if it ever does.
        match &self.inner {
            Inner::Rsa(kp) => {
                let padding: &'static dyn signature::RsaEncoding = match self.alg {
                    RS384 => &signature::RSA_PKCS1_SHA384,
                    RS512 => &signature::RSA_PKCS1_SHA512,
                    PS256 => &signature::RSA_PSS_SHA256,
                    PS384 => &signature::RSA_PSS_SHA384,
                    PS512 => &signature::RSA_PSS_SHA512,
                    _ => &signature::RSA_PKCS1_SHA256,
                };
                let mut sig = vec![0; kp.public_modulus_len()];
                match kp.sign(padding, &rng, msg, &mut sig) {
                    Ok(()) => sig,
                    Err(_) => Vec::new(),
                }
            }
            Inner::Ecdsa(kp) => kp
                .sign(&rng, msg)
                .map(|s| s.as_ref().to_vec())
                .unwrap_or_default(),
            Inner::Ed25519(kp) => kp.sign(msg).as_ref().to_vec(),
        }
    }
}
