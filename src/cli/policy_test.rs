//! `citadel-authz test --config FILE CASES.yaml`: a table of expected decisions run through the
//! offline decision engine of `explain`, like `opa test` for a policy.
//!
//! No network: each issuer's key set is replaced by the public half of a throwaway key made
//! here, and the test tokens are signed with it, carrying the issuer's `iss`, first audience and
//! first token type, so they pass exactly the checks a real token of that issuer would. The
//! membership store is replaced per case by the case's `memberships` (a memberships file's
//! `members` list); a case without them uses the configured memberships file, or none for
//! PostgreSQL. Introspection is not run (it would ask the IdP): an issuer's `introspection` is
//! ignored here, which the output says.
//!
//! Exit codes: 0 every case as expected, 1 any miss (a diff is printed for each), 2 the cases
//! file or config cannot be used (the field is named).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::cli::explain::{Offline, describe};
use crate::core::config::{
    Config, IssuerConfig, MembershipConfig, MembershipSource, parse_memberships,
};
use crate::core::keys::KeySet;
use crate::core::signer::SigningKey;
use crate::serve::admin::{self, pb};
use crate::sources::jwks::{IssuerKeys, http_client};

/// The cases file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CasesFile {
    /// Named identities a case can act as (`as: NAME`).
    #[serde(default)]
    pub personas: BTreeMap<String, Persona>,
    pub cases: Vec<Case>,
}

/// Who the test token is for. `user`, `tenant` and `roles` go to the claims the issuer's
/// `claims` mapping reads them from; `claims` are set as given on top.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Persona {
    pub issuer: Option<String>,
    pub user: Option<String>,
    pub tenant: Option<String>,
    #[serde(default)]
    pub roles: Vec<String>,
    #[serde(default)]
    pub claims: Map<String, Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    pub name: String,
    #[serde(default = "get")]
    pub method: String,
    pub path: String,
    /// A persona's name: the request carries a token for it.
    #[serde(rename = "as")]
    pub persona: Option<String>,
    /// Claims of the token, over the persona's (a `null` removes one, e.g. `exp`). With neither
    /// `as` nor `claims` the request has no token.
    pub claims: Option<Map<String, Value>>,
    /// Issuer name that signs the token (default: the persona's, else the first issuer).
    pub issuer: Option<String>,
    /// Extra request headers (an explicit `authorization` replaces the token).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Context extensions, as an Envoy route sends them (`citadel_rule: NAME`).
    #[serde(default)]
    pub context: BTreeMap<String, String>,
    /// The store's answer for this case: a memberships file's `members` list.
    pub memberships: Option<serde_yaml_ng::Value>,
    pub expect: Expect,
}

fn get() -> String {
    "GET".to_owned()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// HTTP status (200 allow; 400, 401, 403, 503).
    pub status: u32,
    /// The rule that decided; `""` for none. Not checked when absent.
    pub rule: Option<String>,
    /// The denial's `error` (`invalid_token`, `insufficient_scope`, `forbidden`, …).
    pub error: Option<String>,
    /// Answer headers: a value must match exactly; `null` must be absent.
    #[serde(default)]
    pub headers: BTreeMap<String, Option<String>>,
}

/// Why the cases cannot be run (exit 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadCases(pub String);

/// One case's result: empty `diff` when it went as expected.
#[derive(Debug)]
pub struct Outcome {
    pub name: String,
    pub diff: Vec<String>,
    pub trace: String,
}

/// Parse a cases file, naming the field of the first problem.
pub fn parse(text: &str, label: &str) -> Result<CasesFile, BadCases> {
    let de = serde_yaml_ng::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let msg = e.inner().to_string();
        // The YAML error often names the field itself already.
        if path == "." || msg.starts_with(&path) {
            BadCases(format!("{label}: {msg}"))
        } else {
            BadCases(format!("{label}: {path}: {msg}"))
        }
    })
}

/// The signing keys standing in for each issuer.
struct Signers {
    by_issuer: HashMap<String, (SigningKey, Arc<IssuerKeys>)>,
    client: reqwest::Client,
}

impl Signers {
    fn new(config: &Config) -> Result<Self, BadCases> {
        let client = http_client(&config.jwks).map_err(|e| BadCases(e.to_string()))?;
        let mut by_issuer = HashMap::new();
        for issuer in &config.issuers {
            use jsonwebtoken::Algorithm::{ES256, EdDSA};
            // The cheapest key the issuer accepts: RSA generation is slow.
            let alg = [ES256, EdDSA]
                .into_iter()
                .find(|a| issuer.algorithms.contains(a))
                .or_else(|| issuer.algorithms.first().copied())
                .unwrap_or(ES256);
            let key = SigningKey::try_generate(alg, &format!("citadel-test-{}", issuer.name))
                .map_err(|e| BadCases(e.to_string()))?;
            let jwks = json!({ "keys": [key.jwk()] }).to_string();
            let (set, _) = KeySet::from_jwks(jwks.as_bytes()).map_err(BadCases)?;
            let keys = IssuerKeys::preloaded(issuer, config.jwks.clone(), client.clone(), set);
            by_issuer.insert(issuer.name.clone(), (key, Arc::new(keys)));
        }
        Ok(Signers { by_issuer, client })
    }

    /// The stand-in key store of `issuer` (every configured issuer has one; any other gets an
    /// empty store, which nothing fetches into offline).
    fn keys(&self, issuer: &IssuerConfig, config: &Config) -> Arc<IssuerKeys> {
        match self.by_issuer.get(&issuer.name) {
            Some((_, keys)) => Arc::clone(keys),
            None => Arc::new(IssuerKeys::new(
                issuer,
                config.jwks.clone(),
                self.client.clone(),
                Arc::new(|_: &str, _: bool| {}),
            )),
        }
    }
}

fn set_path(claims: &mut Map<String, Value>, path: &[String], value: Value) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut at = claims;
    for p in parents {
        let next = at
            .entry(p.clone())
            .or_insert_with(|| Value::Object(Map::new()));
        if !next.is_object() {
            *next = Value::Object(Map::new());
        }
        let Value::Object(m) = next else { return };
        at = m;
    }
    at.insert(last.clone(), value);
}

/// The claims of a test token of `issuer` for `persona`, valid from `now` for five minutes.
fn claims_for(
    issuer: &IssuerConfig,
    persona: &Persona,
    extra: Option<&Map<String, Value>>,
    now: f64,
) -> Map<String, Value> {
    let now = now.floor() as i64;
    let mut claims = Map::new();
    claims.insert("iss".into(), json!(issuer.issuer));
    if let Some(aud) = issuer.audiences.first() {
        claims.insert("aud".into(), json!(aud));
    }
    claims.insert("iat".into(), json!(now));
    claims.insert("exp".into(), json!(now + 300));
    if let Some(u) = &persona.user {
        set_path(&mut claims, &issuer.claims.user_id, json!(u));
    }
    if let Some(t) = &persona.tenant {
        set_path(&mut claims, &issuer.claims.tenant_id, json!(t));
    }
    if !persona.roles.is_empty()
        && let Some(path) = issuer.claims.roles.first()
    {
        set_path(&mut claims, path, json!(persona.roles));
    }
    for (k, v) in persona.claims.iter().chain(extra.into_iter().flatten()) {
        if v.is_null() {
            claims.remove(k);
        } else {
            claims.insert(k.clone(), v.clone());
        }
    }
    claims
}

/// Run every case of `cases` against `config`. `Err` when a case cannot be run at all.
pub async fn run(config: &Config, cases: &CasesFile, now: f64) -> Result<Vec<Outcome>, BadCases> {
    let mut config = config.clone();
    for issuer in &mut config.issuers {
        issuer.introspection = None;
    }
    let signers = Signers::new(&config)?;
    let names: Vec<String> = config.issuers.iter().map(|i| i.name.clone()).collect();
    let mut out = Vec::with_capacity(cases.cases.len());
    for (n, case) in cases.cases.iter().enumerate() {
        let at = format!("cases[{n}]");
        let persona = match &case.persona {
            None => Persona::default(),
            Some(p) => cases
                .personas
                .get(p)
                .cloned()
                .ok_or_else(|| BadCases(format!("{at}.as: no persona {p:?} in personas")))?,
        };
        let issuer_name = case
            .issuer
            .as_ref()
            .or(persona.issuer.as_ref())
            .or(names.first());
        let mut request = pb::ExplainRequest {
            method: case.method.clone(),
            path: case.path.clone(),
            context_extensions: case.context.clone().into_iter().collect(),
            ..Default::default()
        };
        if case.persona.is_some() || case.claims.is_some() {
            let Some(name) = issuer_name else {
                return Err(BadCases(format!(
                    "{at}: a token needs an issuer, and the config has none"
                )));
            };
            let (Some(issuer), Some((key, _))) = (
                config.issuers.iter().find(|i| &i.name == name),
                signers.by_issuer.get(name),
            ) else {
                return Err(BadCases(format!(
                    "{at}.issuer: no issuer named {name:?} in the config"
                )));
            };
            let claims = claims_for(issuer, &persona, case.claims.as_ref(), now);
            let typ = issuer.token_types.first().map_or("JWT", String::as_str);
            let header = json!({ "alg": format!("{:?}", key.alg), "kid": key.kid, "typ": typ });
            let token = key.sign_raw(&header.to_string(), &Value::Object(claims).to_string());
            request
                .headers
                .insert("authorization".into(), format!("Bearer {token}"));
        }
        for (k, v) in &case.headers {
            request.headers.insert(k.to_ascii_lowercase(), v.clone());
        }
        let mut case_config = config.clone();
        if let Some(members) = &case.memberships {
            let text = serde_yaml_ng::to_string(&json!({ "members": members }))
                .map_err(|e| BadCases(format!("{at}.memberships: {e}")))?;
            let table =
                parse_memberships(&text, &format!("{at}.memberships"), &names).map_err(|e| {
                    BadCases(
                        e.issues
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join("; "),
                    )
                })?;
            let source = MembershipSource::File {
                path: PathBuf::from(format!("{at}.memberships")),
                table: Arc::new(table),
            };
            case_config.membership = Some(match &config.membership {
                Some(m) => MembershipConfig {
                    source,
                    ..m.clone()
                },
                None => MembershipConfig {
                    source,
                    issuers: Vec::new(),
                    cache_ttl: std::time::Duration::ZERO,
                    max_stale: std::time::Duration::ZERO,
                    capacity: 0,
                },
            });
        } else if let Some(m) = &config.membership
            && matches!(m.source, MembershipSource::Postgres(_))
        {
            case_config.membership = None;
        }
        let offline = Offline::new(case_config, |i| signers.keys(i, &config));
        let answer = admin::explain(&offline.runtime, &request, now).await;
        out.push(Outcome {
            name: case.name.clone(),
            diff: diff(&case.expect, &answer),
            trace: describe(&answer),
        });
    }
    Ok(out)
}

/// What differs between `want` and the answer, one line each.
fn diff(want: &Expect, got: &pb::ExplainResponse) -> Vec<String> {
    let mut out = Vec::new();
    if want.status != got.http_status {
        out.push(format!(
            "status: want {}, got {}",
            want.status, got.http_status
        ));
    }
    if let Some(rule) = &want.rule
        && *rule != got.rule
    {
        out.push(format!("rule: want {rule:?}, got {:?}", got.rule));
    }
    if let Some(error) = &want.error
        && *error != got.error
    {
        out.push(format!("error: want {error:?}, got {:?}", got.error));
    }
    for (name, value) in &want.headers {
        let have = got
            .headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v);
        match (value, have) {
            (Some(w), Some(h)) if w == h => {}
            (None, None) => {}
            (Some(w), Some(h)) => out.push(format!("header {name}: want {w:?}, got {h:?}")),
            (Some(w), None) => out.push(format!("header {name}: want {w:?}, got none")),
            (None, Some(h)) => out.push(format!("header {name}: want none, got {h:?}")),
        }
    }
    out
}

/// `citadel-authz test`: load both files, run, print; the exit code as the module says.
pub async fn main(config_path: &Path, cases_path: &Path, now: f64) -> (u8, String) {
    use std::fmt::Write;
    let config = match Config::load(config_path) {
        Ok(c) => c,
        Err(e) => {
            let mut out = format!("{}: invalid configuration:\n", config_path.display());
            for issue in &e.issues {
                let _ = writeln!(out, "  {issue}");
            }
            return (2, out);
        }
    };
    let text = match std::fs::read_to_string(cases_path) {
        Ok(t) => t,
        Err(e) => return (2, format!("cannot read {}: {e}\n", cases_path.display())),
    };
    let cases = match parse(&text, &cases_path.display().to_string()) {
        Ok(c) => c,
        Err(e) => return (2, format!("{e}\n")),
    };
    let outcomes = match run(&config, &cases, now).await {
        Ok(o) => o,
        Err(e) => return (2, format!("{}: {e}\n", cases_path.display())),
    };
    let mut out = String::new();
    if config.issuers.iter().any(|i| i.introspection.is_some()) {
        out.push_str(
            "note: introspection is not run offline; JWTs are judged on their own checks\n",
        );
    }
    let missed = outcomes.iter().filter(|o| !o.diff.is_empty()).count();
    for o in &outcomes {
        if o.diff.is_empty() {
            let _ = writeln!(out, "ok    {}", o.name);
        } else {
            let _ = writeln!(out, "MISS  {}", o.name);
            for d in &o.diff {
                let _ = writeln!(out, "      {d}");
            }
            for line in o.trace.lines() {
                let _ = writeln!(out, "      | {line}");
            }
        }
    }
    let _ = writeln!(
        out,
        "cases: {} as expected, {missed} missed",
        outcomes.len() - missed
    );
    (u8::from(missed > 0), out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issuer() -> IssuerConfig {
        let yaml = "issuers:\n  - name: iam\n    issuer: https://iam.example.com\n    jwks_uri: https://iam.example.com/jwks\n    audiences: [api, other]\n    claims: { user_id: sub, tenant_id: org.id, roles: [realm_access.roles, scope] }\npolicy:\n  rules:\n    - { name: me, paths: [/me] }\n";
        Config::from_yaml(yaml, Path::new(".")).unwrap().issuers[0].clone()
    }

    #[test]
    fn persona_values_go_where_the_issuer_reads_them_and_null_removes_a_claim() {
        let persona = Persona {
            user: Some("rita".into()),
            tenant: Some("acme".into()),
            roles: vec!["reader".into()],
            ..Persona::default()
        };
        let extra: Map<String, Value> =
            serde_json::from_value(json!({ "exp": null, "aud": "other" })).unwrap();
        let c = Value::Object(claims_for(&issuer(), &persona, Some(&extra), 1000.5));
        assert_eq!(c["iss"], "https://iam.example.com");
        assert_eq!(c["aud"], "other");
        assert_eq!(c["iat"], 1000);
        assert!(c.get("exp").is_none());
        assert_eq!(c["sub"], "rita");
        assert_eq!(c["org"]["id"], "acme");
        assert_eq!(c["realm_access"]["roles"], json!(["reader"]));
    }

    #[test]
    fn a_cases_file_names_the_field_of_its_problem() {
        let e = parse(
            "cases:\n  - name: x\n    path: /a\n    expect: {}\n",
            "t.yaml",
        )
        .unwrap_err();
        assert!(e.0.starts_with("t.yaml: cases[0].expect"), "{e}");
        assert!(e.0.contains("status"), "{e}");
        let e = parse("personas: {}\n", "t.yaml").unwrap_err();
        assert!(e.0.contains("cases"), "{e}");
    }
}
