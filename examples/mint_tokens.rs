//! Benchmark fixture generator: fresh ES256, RS256 and EdDSA signing keys, their public JWKS, and
//! token files (one compact JWT per line) for `bench/run.sh`.
//!
//! ```text
//! cargo run --release --example mint_tokens -- DIR ISSUER AUDIENCE COUNT [BIG]
//! ```
//! writes `DIR/jwks.json`, `DIR/tokens-{ALG}-1.txt` (one token) and `DIR/tokens-{ALG}-{COUNT}.txt`
//! (COUNT distinct tokens: `sub` differs) for each algorithm, and with BIG also
//! `DIR/tokens-ES256-{BIG}.txt`. Every token carries `tenant_id: acme`, `roles: [reader]` and
//! expires 12 hours from now. Keys live only in this process: re-running replaces everything.

use std::error::Error;
use std::fs;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use citadel_authz::core::signer::SigningKey;
use jsonwebtoken::Algorithm;
use serde_json::json;

const ALGS: [(Algorithm, &str); 3] = [
    (Algorithm::ES256, "ES256"),
    (Algorithm::RS256, "RS256"),
    (Algorithm::EdDSA, "EdDSA"),
];

fn main() -> Result<(), Box<dyn Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [dir, issuer, audience, count, rest @ ..] = args.as_slice() else {
        return Err("usage: mint_tokens DIR ISSUER AUDIENCE COUNT [BIG]".into());
    };
    let dir = PathBuf::from(dir);
    let count: usize = count.parse()?;
    let big: Option<usize> = rest.first().map(|s| s.parse()).transpose()?;
    fs::create_dir_all(&dir)?;

    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let mut jwks = Vec::new();
    for (alg, name) in ALGS {
        let key = SigningKey::try_generate(alg, &format!("bench-{}", name.to_lowercase()))?;
        jwks.push(key.jwk());
        let mint = |i: usize| {
            key.mint(&json!({
                "iss": issuer, "aud": audience, "sub": format!("user-{i}"),
                "tenant_id": "acme", "roles": ["reader"],
                "iat": now, "exp": now + 12 * 3600,
            }))
        };
        write_tokens(&dir.join(format!("tokens-{name}-1.txt")), 1, mint)?;
        write_tokens(&dir.join(format!("tokens-{name}-{count}.txt")), count, mint)?;
        if let (Some(big), Algorithm::ES256) = (big, alg) {
            write_tokens(&dir.join(format!("tokens-{name}-{big}.txt")), big, mint)?;
        }
    }
    fs::write(dir.join("jwks.json"), json!({ "keys": jwks }).to_string())?;
    Ok(())
}

fn write_tokens(
    path: &Path,
    n: usize,
    mint: impl Fn(usize) -> String,
) -> Result<(), Box<dyn Error>> {
    let mut out = BufWriter::new(fs::File::create(path)?);
    for i in 0..n {
        writeln!(out, "{}", mint(i))?;
    }
    out.flush()?;
    Ok(())
}
