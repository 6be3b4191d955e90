//! Criterion micro-benchmarks of the decision core (run by `bench/run.sh`, or
//! `cargo bench --bench core`; `BENCH_QUICK=1` shortens every measurement).
//!
//! - `verify/{ALG}/citadel`: uncached token verification as the server does it —
//!   `Unverified::parse` (split, base64, strict JSON) + `verify` (key choice, signature, claims)
//!   against a `KeySet` built from a JWKS;
//! - `verify/{ALG}/parse`: the parse step alone; `verify/{ALG}/jsonwebtoken`: the signature alone
//!   through `jsonwebtoken::crypto::verify` with the key set's `DecodingKey` (key parsed per call;
//!   the verifier's earlier path, kept for comparison);
//! - `verify/{ALG}/raw_parsed`: the floor — aws-lc-rs verifying the same signature bytes with a
//!   public key parsed once (`ParsedPublicKey`); `raw_unparsed`: the same with the key parsed on
//!   every call (`UnparsedPublicKey` / `RsaPublicKeyComponents`), which is what a verifier that
//!   keeps keys as bytes pays;
//! - `policy/{10,1000}_rules`: `canonicalize` + `Policy::find` + `authorize` for a request that
//!   matches the *last* rule (first-match order: the worst case for a linear scan).

use std::error::Error;
use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::signature::{self, ParsedPublicKey, UnparsedPublicKey, VerificationAlgorithm};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use citadel_authz::core::config::Config;
use citadel_authz::core::keys::KeySet;
use citadel_authz::core::policy::{authorize, canonicalize};
use citadel_authz::core::signer::SigningKey;
use citadel_authz::core::token::Unverified;
use criterion::Criterion;
use jsonwebtoken::Algorithm;
use serde_json::{Value, json};

const ISSUER: &str = "https://iam.bench.local";
const AUDIENCE: &str = "https://api.bench.local";
const MAX_TOKEN_BYTES: usize = 8192;

/// A config with one issuer and `n` rules, the last of which (`orders-read`) is the one hit.
fn config_with_rules(n: usize) -> Result<Config, Box<dyn Error>> {
    let mut yaml = format!(
        "issuers:\n  - name: bench\n    issuer: {ISSUER}\n    jwks_uri: http://127.0.0.1:1/jwks\n    \
         audiences: [{AUDIENCE}]\n    algorithms: [ES256, RS256, EdDSA]\npolicy:\n  rules:\n"
    );
    for i in 0..n.saturating_sub(1) {
        yaml.push_str(&format!(
            "    - name: svc{i}\n      paths: [\"/api/svc{i}/items/{{id}}/**\"]\n      \
             methods: [GET, POST]\n      roles_any: [svc{i}:read, admin]\n"
        ));
    }
    yaml.push_str(
        "    - name: orders-read\n      paths: [\"/api/orders/**\"]\n      methods: [GET, HEAD]\n      \
         roles_any: [reader, orders:write]\n",
    );
    Ok(Config::from_yaml(&yaml, Path::new("."))?)
}

fn jwk_bytes(jwk: &Value, name: &str) -> Result<Vec<u8>, Box<dyn Error>> {
    let s = jwk[name].as_str().ok_or("JWK member missing")?;
    Ok(URL_SAFE_NO_PAD.decode(s)?)
}

/// DER `RSAPublicKey ::= SEQUENCE { modulus INTEGER, publicExponent INTEGER }` (PKCS#1).
fn rsa_public_key_der(n: &[u8], e: &[u8]) -> Vec<u8> {
    fn len(out: &mut Vec<u8>, l: usize) {
        if l < 0x80 {
            out.push(l as u8);
        } else {
            let bytes: Vec<u8> = l
                .to_be_bytes()
                .into_iter()
                .skip_while(|b| *b == 0)
                .collect();
            out.push(0x80 | bytes.len() as u8);
            out.extend(bytes);
        }
    }
    fn integer(out: &mut Vec<u8>, v: &[u8]) {
        let pad = v.first().is_some_and(|b| b & 0x80 != 0);
        out.push(0x02);
        len(out, v.len() + usize::from(pad));
        if pad {
            out.push(0);
        }
        out.extend_from_slice(v);
    }
    let mut body = Vec::new();
    integer(&mut body, n);
    integer(&mut body, e);
    let mut der = vec![0x30];
    len(&mut der, body.len());
    der.extend(body);
    der
}

fn bench_verify(c: &mut Criterion) -> Result<(), Box<dyn Error>> {
    let config = config_with_rules(10)?;
    let rules = &config.issuers[0];
    let issuer_name: Arc<str> = Arc::from("bench");
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let algs = [
        (Algorithm::ES256, "ES256"),
        (Algorithm::RS256, "RS256"),
        (Algorithm::EdDSA, "EdDSA"),
    ];
    let mut group = c.benchmark_group("verify");
    for (alg, name) in algs {
        let key = SigningKey::try_generate(alg, &format!("bench-{name}"))?;
        let jwk = key.jwk();
        let token = key.mint(&json!({
            "iss": ISSUER, "aud": AUDIENCE, "sub": "user-1", "tenant_id": "acme",
            "roles": ["reader"], "iat": now, "exp": now + 3600,
        }));
        let (keys, skipped) = KeySet::from_jwks(json!({ "keys": [jwk] }).to_string().as_bytes())?;
        if keys.len() != 1 || !skipped.is_empty() {
            return Err(format!("{name}: JWK not accepted: {skipped:?}").into());
        }
        let t_now = now as f64;
        // Sanity: the token verifies before anything is timed.
        Unverified::parse(&token, MAX_TOKEN_BYTES)?.verify(&keys, rules, &issuer_name, t_now)?;

        let (signing_input, sig_b64) = token.rsplit_once('.').ok_or("no signature part")?;
        let sig = URL_SAFE_NO_PAD.decode(sig_b64)?;
        let msg = signing_input.as_bytes();
        let (raw_alg, public): (&'static dyn VerificationAlgorithm, Vec<u8>) = match alg {
            Algorithm::ES256 => {
                let mut point = vec![0x04];
                point.extend(jwk_bytes(&jwk, "x")?);
                point.extend(jwk_bytes(&jwk, "y")?);
                (&signature::ECDSA_P256_SHA256_FIXED, point)
            }
            Algorithm::RS256 => (
                &signature::RSA_PKCS1_2048_8192_SHA256,
                rsa_public_key_der(&jwk_bytes(&jwk, "n")?, &jwk_bytes(&jwk, "e")?),
            ),
            _ => (&signature::ED25519, jwk_bytes(&jwk, "x")?),
        };
        let parsed = ParsedPublicKey::new(raw_alg, &public)
            .map_err(|e| format!("{name}: ParsedPublicKey: {e:?}"))?;
        parsed
            .verify_sig(msg, &sig)
            .map_err(|_| format!("{name}: raw verification failed"))?;
        let decoding = &keys.keys()[0].decoding;

        group.bench_function(format!("{name}/citadel"), |b| {
            b.iter(|| {
                let parsed = Unverified::parse(black_box(&token), MAX_TOKEN_BYTES);
                parsed.and_then(|u| u.verify(&keys, rules, &issuer_name, t_now))
            })
        });
        group.bench_function(format!("{name}/parse"), |b| {
            b.iter(|| Unverified::parse(black_box(&token), MAX_TOKEN_BYTES).is_ok())
        });
        group.bench_function(format!("{name}/jsonwebtoken"), |b| {
            b.iter(|| jsonwebtoken::crypto::verify(black_box(sig_b64), msg, decoding, alg))
        });
        group.bench_function(format!("{name}/raw_parsed"), |b| {
            b.iter(|| parsed.verify_sig(black_box(msg), &sig).is_ok())
        });
        if alg == Algorithm::RS256 {
            let components = signature::RsaPublicKeyComponents {
                n: jwk_bytes(&jwk, "n")?,
                e: jwk_bytes(&jwk, "e")?,
            };
            group.bench_function(format!("{name}/raw_unparsed"), |b| {
                b.iter(|| {
                    components
                        .verify(&signature::RSA_PKCS1_2048_8192_SHA256, black_box(msg), &sig)
                        .is_ok()
                })
            });
        } else {
            let unparsed = UnparsedPublicKey::new(raw_alg, &public);
            group.bench_function(format!("{name}/raw_unparsed"), |b| {
                b.iter(|| unparsed.verify(black_box(msg), &sig).is_ok())
            });
        }
    }
    group.finish();
    Ok(())
}

fn bench_policy(c: &mut Criterion) -> Result<(), Box<dyn Error>> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let key = SigningKey::try_generate(Algorithm::EdDSA, "policy")?;
    let (keys, _) = KeySet::from_jwks(json!({ "keys": [key.jwk()] }).to_string().as_bytes())?;
    let token = key.mint(&json!({
        "iss": ISSUER, "aud": AUDIENCE, "sub": "user-1", "tenant_id": "acme",
        "roles": ["reader"], "exp": now + 3600,
    }));
    let mut group = c.benchmark_group("policy");
    for n in [10, 1000] {
        let config = config_with_rules(n)?;
        let identity = Unverified::parse(&token, MAX_TOKEN_BYTES)?.verify(
            &keys,
            &config.issuers[0],
            &Arc::from("bench"),
            now as f64,
        )?;
        let policy = &config.policy;
        // Sanity: the request matches the last rule and is allowed.
        let path = canonicalize("/api/orders/42")?;
        let m = policy.find("GET", &path).ok_or("no rule matched")?;
        if &*m.rule.name != "orders-read" || authorize(&m, &identity).is_err() {
            return Err("policy sanity check failed".into());
        }
        group.bench_function(format!("{n}_rules"), |b| {
            b.iter(|| {
                let Ok(path) = canonicalize(black_box("/api/orders/42")) else {
                    return false;
                };
                policy
                    .find(black_box("GET"), &path)
                    .is_some_and(|m| authorize(&m, &identity).is_ok())
            })
        });
    }
    group.finish();
    Ok(())
}

fn main() -> Result<(), Box<dyn Error>> {
    let quick = std::env::var_os("BENCH_QUICK").is_some();
    let (warm, measure) = if quick { (0.3, 0.7) } else { (1.0, 3.0) };
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs_f64(warm))
        .measurement_time(Duration::from_secs_f64(measure))
        .sample_size(if quick { 10 } else { 30 })
        .configure_from_args();
    bench_verify(&mut c)?;
    bench_policy(&mut c)?;
    c.final_summary();
    Ok(())
}
