//! Logging setup and the per-decision log event.
//!
//! Decisions are logged under their own target (`citadel_authz::decision`) so they can be routed
//! or silenced with `RUST_LOG`; allows at `debug`, denials at `info`. Never the token.

use std::io::IsTerminal;
use std::time::Duration;

use tracing_subscriber::EnvFilter;

use crate::decision::Decision;

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable (colours on a terminal).
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Install the global subscriber; level from `RUST_LOG` (default `info`).
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second init (tests) is harmless: keep the first subscriber.
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
    };
}

/// Which adapter answered.
#[derive(Debug, Clone, Copy)]
pub enum Protocol {
    Grpc,
    Http,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Grpc => "grpc",
            Protocol::Http => "http",
        }
    }
}

/// One structured event per decision.
pub fn record_decision(
    protocol: Protocol,
    decision: &Decision,
    method: &str,
    path: &str,
    latency: Duration,
    log_allows: bool,
) {
    let outcome = decision.outcome().error_code();
    let latency_us = latency.as_micros() as u64;
    // The path is logged without its query string, which may carry secrets.
    let path = path.split(['?', '#']).next().unwrap_or("");
    match decision {
        Decision::Allow { rule, identity } if log_allows => tracing::info!(
            target: "citadel_authz::decision",
            protocol = protocol.as_str(), outcome, rule = %rule, method, path,
            issuer = identity.as_ref().map(|i| &*i.issuer),
            sub = identity.as_ref().and_then(|i| i.user_id.as_deref()),
            tenant = identity.as_ref().and_then(|i| i.tenant_id.as_deref()),
            latency_us,
            "allow"
        ),
        Decision::Allow { .. } => {}
        Decision::Deny { rule, denial } => tracing::info!(
            target: "citadel_authz::decision",
            protocol = protocol.as_str(), outcome, rule = rule.as_deref(), method, path,
            reason = %denial, latency_us,
            "deny"
        ),
    }
}
