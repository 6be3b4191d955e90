//! `citadel-authz explain`: why a request is allowed or denied, step by step — asked of a running
//! server's admin listener (`--admin`), or offline (`--config`): the config is loaded, each
//! issuer's JWKS fetched once, and the same decision core runs here, with no listener.
//!
//! Both ways print the one [`describe`] of an [`ExplainResponse`], so CI output and a live
//! server's answer read the same.

use std::sync::Arc;

use tokio::sync::watch;

use crate::cli::client;
use crate::core::config::{Config, IssuerConfig};
use crate::serve::admin::pb::admin_client::AdminClient;
use crate::serve::admin::pb::{ExplainRequest, ExplainResponse, StepResult};
use crate::serve::authorizer::Runtime;
use crate::serve::metrics::Metrics;
use crate::sources::jwks::{IssuerKeys, http_client};
use crate::sources::membership::Membership;

/// A runtime outside any server: no listener, no refresher, no reload. A PostgreSQL membership
/// store connects in the background until this is dropped.
pub struct Offline {
    pub runtime: Runtime,
    stop: watch::Sender<bool>,
}

impl Drop for Offline {
    fn drop(&mut self) {
        // Stop the store's background connection attempts with the runtime.
        let _ = self.stop.send(true);
    }
}

impl Offline {
    /// The runtime for `config`, with `keys_for` giving each issuer its key store.
    pub fn new(config: Config, keys_for: impl FnMut(&IssuerConfig) -> Arc<IssuerKeys>) -> Self {
        let (stop, stop_rx) = watch::channel(false);
        let membership = config
            .membership
            .as_ref()
            .map(|m| Arc::new(Membership::new(m, None, stop_rx)));
        let mut runtime = Runtime::new(config, Arc::new(Metrics::new()), keys_for, None);
        runtime.membership = membership;
        Offline { runtime, stop }
    }

    /// The runtime for `config` with every issuer's JWKS fetched once. A fetch that fails is
    /// reported in the second value (one line per issuer) and leaves that issuer without keys, so
    /// its tokens are explained as the server would answer them then (503).
    pub async fn fetched(config: Config) -> Result<(Self, Vec<String>), String> {
        let client = http_client(&config.jwks).map_err(|e| e.to_string())?;
        let timing = config.jwks.clone();
        let offline = Offline::new(config, |issuer| {
            Arc::new(IssuerKeys::new(
                issuer,
                timing.clone(),
                client.clone(),
                Arc::new(|_: &str, _: bool| {}),
            ))
        });
        let mut problems = Vec::new();
        for issuer in &offline.runtime.issuers {
            if let Err(e) = issuer.keys.fetch().await {
                problems.push(format!("issuer {}: JWKS fetch failed: {e}", issuer.name));
            }
        }
        if let Some(m) = &offline.runtime.membership {
            // A PostgreSQL store connects in the background: give it its first answer.
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
            while !m.is_ready() && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            if !m.is_ready() {
                problems.push("the membership store has not answered within 5s".to_owned());
            }
        }
        Ok((offline, problems))
    }
}

/// The request of `explain` and `check`: method, path, `Authorization: Bearer` from `token`,
/// extra `name: value` headers and `key=value` context extensions, each checked for its form.
pub fn request(
    method: &str,
    path: &str,
    token: Option<&str>,
    headers: &[String],
    context: &[String],
) -> Result<ExplainRequest, String> {
    let mut req = ExplainRequest {
        method: method.to_owned(),
        path: path.to_owned(),
        ..ExplainRequest::default()
    };
    let mut add = |k: &str, v: &str| {
        // Repeated headers are joined with `,`, as Envoy does.
        req.headers
            .entry(k.to_ascii_lowercase())
            .and_modify(|e| {
                e.push(',');
                e.push_str(v);
            })
            .or_insert_with(|| v.to_owned());
    };
    if let Some(t) = token {
        add("authorization", &format!("Bearer {t}"));
    }
    for h in headers {
        let Some((k, v)) = h.split_once(':') else {
            return Err(format!("--header {h:?} is not `name: value`"));
        };
        add(k.trim(), v.trim());
    }
    for c in context {
        let Some((k, v)) = c.split_once('=') else {
            return Err(format!("--context {c:?} is not `key=value`"));
        };
        req.context_extensions
            .insert(k.trim().to_owned(), v.trim().to_owned());
    }
    Ok(req)
}

/// Ask a running server's admin listener (`host:port` or `unix:/path`).
pub async fn ask(addr: &str, request: ExplainRequest) -> Result<ExplainResponse, String> {
    let channel = client::endpoint(addr)
        .map_err(|e| e.to_string())?
        .connect()
        .await
        .map_err(|e| format!("cannot connect to the admin listener {addr}: {}", chain(&e)))?;
    AdminClient::new(channel)
        .explain(request)
        .await
        .map(tonic::Response::into_inner)
        .map_err(|s| format!("Explain on {addr} failed: {}", chain(&s)))
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// The trace as a human reads it: one line per step, then the answer.
pub fn describe(r: &ExplainResponse) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    for s in &r.steps {
        let mark = match StepResult::try_from(s.result) {
            Ok(StepResult::Pass) => "ok  ",
            Ok(StepResult::Fail) => "FAIL",
            _ => "--  ",
        };
        let _ = writeln!(out, "  {mark} {:<22} {}", s.name, s.detail);
    }
    let rule = if r.rule.is_empty() { "(none)" } else { &r.rule };
    if r.allowed {
        let _ = writeln!(out, "ALLOW {} (rule {rule})", r.http_status);
    } else {
        let _ = writeln!(
            out,
            "DENY {} {} (rule {rule}, grpc code {}): {}",
            r.http_status, r.error, r.grpc_code, r.reason
        );
    }
    if let Some(i) = &r.identity {
        let _ = writeln!(
            out,
            "identity: issuer {}, user {}, tenant {}, roles [{}]",
            i.issuer,
            i.user_id.as_deref().unwrap_or("(none)"),
            i.tenant_id.as_deref().unwrap_or("(none)"),
            i.roles.join(", ")
        );
    }
    let mut headers: Vec<_> = r.headers.iter().collect();
    headers.sort();
    for (k, v) in headers {
        let _ = writeln!(out, "{k}: {v}");
    }
    out
}
