//! `check-config --online`: ask every issuer's IdP now, the way the server will at start
//! (discovery if configured, then the JWKS), and say what came back.
//!
//! Uses the server's own fetch code so that what passes here is what `serve` gets; one attempt
//! per issuer, no retries, bounded by `jwks.fetch_timeout`. An issuer with `introspection` also
//! gets one introspection call with a made-up token (SPEC §9 / issue 11): any well-formed RFC
//! 7662 answer — `active: false` is the expected one — is a success; the call is bounded by the
//! introspection `timeout`. A PostgreSQL membership store is connected to and its query prepared.

use std::sync::Arc;

use crate::core::config::{Config, JwksSource, MembershipSource};
use crate::sources::introspection::{Answer, Introspector};
use crate::sources::jwks::{IssuerKeys, http_client};
use crate::sources::membership;

/// What one issuer's IdP, or the membership store, answered.
#[derive(Debug, Clone)]
pub struct Probe {
    /// `issuers[0] (iam)`.
    pub label: String,
    /// `Ok("discovery ok, JWKS ok: 2 usable keys")` or what failed.
    pub result: Result<String, String>,
}

/// Fetch every issuer's key set once, in config order.
pub async fn issuers(config: &Config) -> Vec<Probe> {
    let client = http_client(&config.jwks);
    let mut out = Vec::with_capacity(config.issuers.len());
    for (i, issuer) in config.issuers.iter().enumerate() {
        let label = format!("issuers[{i}] ({})", issuer.name);
        let discovery = matches!(issuer.source, JwksSource::Discovery);
        let result = match &client {
            Err(e) => Err(e.to_string()),
            Ok(client) => {
                let keys = Arc::new(IssuerKeys::new(
                    issuer,
                    config.jwks.clone(),
                    client.clone(),
                    Arc::new(|_: &str, _: bool| {}),
                ));
                match keys.fetch().await {
                    // Such an issuer never becomes ready: as much a failure as no answer.
                    Ok(loaded) if loaded.keys.is_empty() => Err(format!(
                        "{}JWKS has no usable key (accepted: RSA >= 2048 bits, EC P-256/P-384, Ed25519; not `use: enc`)",
                        if discovery { "discovery ok, " } else { "" }
                    )),
                    Ok(loaded) => {
                        let n = loaded.keys.len();
                        Ok(format!(
                            "{}JWKS ok: {n} usable key{}",
                            if discovery { "discovery ok, " } else { "" },
                            if n == 1 { "" } else { "s" }
                        ))
                    }
                    Err(e) => Err(e.to_string()),
                }
            }
        };
        out.push(Probe {
            label: label.clone(),
            result,
        });
        if let Some(intro) = Introspector::new(issuer, 0, Arc::new(())) {
            out.push(Probe {
                label: format!("{label} introspection"),
                result: introspection(Arc::new(intro)).await,
            });
        }
    }
    out
}

/// The membership store (SPEC §8), when configured: PostgreSQL is connected to once and the query
/// prepared, as every store connection does (a query that does not prepare or returns other
/// columns keeps the server not ready); a file was validated with the config.
pub async fn membership(config: &Config) -> Option<Probe> {
    let m = config.membership.as_ref()?;
    let (label, result) = match &m.source {
        MembershipSource::File { path, table } => (
            "membership.file".to_owned(),
            Ok(format!(
                "{}: {} entries, validated with the config",
                path.display(),
                table.len()
            )),
        ),
        MembershipSource::Postgres(pg) => (
            format!("membership.postgres ({})", pg.url_source),
            membership::probe(pg).await,
        ),
    };
    Some(Probe { label, result })
}

/// One call with a token no IdP issued: the endpoint must answer as RFC 7662 says.
async fn introspection(intro: Arc<Introspector>) -> Result<String, String> {
    let mut nonce = [0u8; 12];
    // The token only has to be one the IdP never issued; a failed RNG leaves a fixed one.
    let _ = aws_lc_rs::rand::fill(&mut nonce);
    let token: String = nonce.iter().map(|b| format!("{b:02x}")).collect();
    let token = format!("citadel-authz-check-config-{token}");
    match intro.introspect(&token, crate::serve::authorizer::unix_now()).await {
        Ok(answer) => match *answer {
            Answer::Inactive => Ok("ok: answered active: false for a made-up token".to_owned()),
            Answer::Active(_) => Ok(
                "answered active: true for a made-up token (the endpoint answers, but check that it really judges tokens)"
                    .to_owned(),
            ),
        },
        Err(e) => Err(e.to_string()),
    }
}
