//! Logging setup and the per-decision log event.
//!
//! Decisions are logged under their own target (`citadel_authz::decision`) so they can be routed
//! or silenced with `RUST_LOG`; allows at `debug`, denials at `info`. Never the token.

use std::io::IsTerminal;
use std::time::Duration;

use tracing_subscriber::EnvFilter;

use crate::core::decision::Decision;

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

/// What ties a decision to the request around it (SPEC §10): the gateway's `x-request-id`
/// and the trace id of a W3C `traceparent`. Values that are not well formed are left out rather
/// than logged, since a client may send anything.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Correlation<'a> {
    pub request_id: Option<&'a str>,
    pub trace_id: Option<&'a str>,
}

/// Longest `x-request-id` that is logged (Envoy's are UUIDs, 36 bytes).
const MAX_REQUEST_ID: usize = 200;

impl<'a> Correlation<'a> {
    /// From the request's `x-request-id` and `traceparent` header values.
    pub fn from_headers(request_id: Option<&'a str>, traceparent: Option<&'a str>) -> Self {
        Correlation {
            request_id: request_id.filter(|id| {
                (1..=MAX_REQUEST_ID).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_graphic())
            }),
            trace_id: traceparent.and_then(trace_id),
        }
    }
}

/// The trace id of a W3C trace-context `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`): lower-case
/// hex, neither id all zeros, version `ff` invalid; a later version may append fields.
fn trace_id(traceparent: &str) -> Option<&str> {
    let hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let mut parts = traceparent.trim().split('-');
    let (version, trace, parent, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let rest_ok = if version == "00" {
        parts.next().is_none()
    } else {
        true
    };
    let ok = hex(version, 2)
        && version != "ff"
        && hex(trace, 32)
        && trace.bytes().any(|b| b != b'0')
        && hex(parent, 16)
        && parent.bytes().any(|b| b != b'0')
        && hex(flags, 2)
        && rest_ok;
    ok.then_some(trace)
}

/// One structured event per decision.
///
/// Every text field is recorded as a string value, allow and deny alike, so the text format
/// quotes and escapes each one the same way (a path or reason with spaces or quotes cannot
/// pass for another field) and the JSON format has a string; a field with no value (no rule
/// matched, no identity, no method) is left out rather than printed empty or as a debug form.
pub fn record_decision(
    protocol: Protocol,
    decision: &Decision,
    method: &str,
    path: &str,
    latency: Duration,
    log_allows: bool,
    correlation: Correlation<'_>,
) {
    let Correlation {
        request_id,
        trace_id,
    } = correlation;
    let outcome = decision.outcome().error_code();
    let latency_us = latency.as_micros() as u64;
    // The path is logged without its query string, which may carry secrets.
    let path = path.split(['?', '#']).next().unwrap_or("");
    let method = (!method.is_empty()).then_some(method);
    let path = (!path.is_empty()).then_some(path);
    match decision {
        Decision::Allow { rule, identity } if log_allows => {
            let identity = identity.as_deref();
            tracing::info!(
                target: "citadel_authz::decision",
                protocol = protocol.as_str(), outcome, rule = &**rule, method, path,
                issuer = identity.map(|i| &*i.issuer),
                sub = identity.and_then(|i| i.user_id.as_deref()),
                tenant = identity.and_then(|i| i.tenant_id.as_deref()),
                request_id, trace_id,
                latency_us,
                "allow"
            );
        }
        Decision::Allow { .. } => {}
        Decision::Deny { rule, denial } => {
            let reason = denial.log_reason();
            tracing::info!(
                target: "citadel_authz::decision",
                protocol = protocol.as_str(), outcome, rule = rule.as_deref(), method, path,
                reason = reason.as_str(), request_id, trace_id, latency_us,
                "deny"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::core::decision::Denial;
    use crate::core::identity::Identity;
    use crate::core::token::{Mismatch, TokenError};

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Buffer {
        type Writer = Buffer;
        fn make_writer(&'a self) -> Buffer {
            self.clone()
        }
    }

    fn decisions() -> Vec<Decision> {
        let identity = Identity {
            issuer: "iam".into(),
            user_id: Some("alice".into()),
            tenant_id: None,
            roles: Arc::new(["reader".into()]),
            expires_at: 0.0,
        };
        vec![
            Decision::Allow {
                rule: "orders-read".into(),
                identity: Some(Arc::new(identity)),
            },
            Decision::Allow {
                rule: "health".into(),
                identity: None,
            },
            Decision::Deny {
                rule: Some("orders-read".into()),
                denial: Denial::InvalidToken(TokenError::Issuer(Mismatch::new(
                    Some("https://iam.example.com/"),
                    "accepted: 'https://iam.example.com'".into(),
                ))),
            },
            Decision::deny(Denial::NoRule),
            Decision::deny(Denial::BadRequest("no HTTP attributes")),
        ]
    }

    fn log_lines(json: bool, method: &str) -> Vec<String> {
        let buffer = Buffer::default();
        let builder = tracing_subscriber::fmt()
            .with_writer(buffer.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO);
        let dispatch = if json {
            tracing::Dispatch::new(builder.json().flatten_event(true).finish())
        } else {
            tracing::Dispatch::new(builder.finish())
        };
        tracing::dispatcher::with_default(&dispatch, || {
            for d in decisions() {
                let path = if method.is_empty() {
                    ""
                } else {
                    "/api/orders/1?x=secret"
                };
                record_decision(
                    Protocol::Grpc,
                    &d,
                    method,
                    path,
                    Duration::from_micros(7),
                    true,
                    Correlation::default(),
                );
            }
        });
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        text.lines().map(str::to_owned).collect()
    }

    #[test]
    fn allow_and_deny_lines_quote_alike_and_omit_absent_fields() {
        let lines = log_lines(false, "GET");
        assert_eq!(lines.len(), 5, "{lines:#?}");
        let (allow, public, deny, no_rule) = (&lines[0], &lines[1], &lines[2], &lines[3]);
        for line in [allow, deny] {
            assert!(line.contains(r#"rule="orders-read""#), "{line}");
        }
        for line in &lines[..4] {
            assert!(line.contains(r#"method="GET""#), "{line}");
            assert!(line.contains(r#"path="/api/orders/1""#), "{line}");
            assert!(!line.contains("secret"), "{line}");
        }
        for line in &lines {
            assert!(!line.contains("Some(") && !line.contains("None"), "{line}");
        }
        assert!(
            allow.contains(r#"issuer="iam""#) && allow.contains(r#"sub="alice""#),
            "{allow}"
        );
        assert!(!allow.contains("tenant="), "{allow}");
        assert!(
            !public.contains("issuer=") && !public.contains("sub="),
            "{public}"
        );
        assert!(
            deny.contains(
                r#"reason="token issuer 'https://iam.example.com/' is not accepted; accepted: 'https://iam.example.com'""#
            ),
            "{deny}"
        );
        assert!(!no_rule.contains("rule="), "{no_rule}");
        let no_target = &log_lines(false, "")[4];
        assert!(
            !no_target.contains("method=") && !no_target.contains("path="),
            "{no_target}"
        );
    }

    #[test]
    fn json_lines_have_string_fields_and_no_nulls() {
        for line in log_lines(true, "GET") {
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            let obj = v.as_object().unwrap();
            for (k, field) in obj {
                assert!(!field.is_null(), "{k} in {line}");
            }
            for k in [
                "rule", "method", "path", "reason", "issuer", "sub", "outcome",
            ] {
                if let Some(field) = obj.get(k) {
                    assert!(field.is_string(), "{k} in {line}");
                }
            }
        }
    }

    #[test]
    fn correlation_takes_well_formed_ids_only() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let c = Correlation::from_headers(Some("6b1c7e3a-0d5e-4f0e-9d7a-1d2f3a4b5c6d"), Some(tp));
        assert_eq!(c.request_id, Some("6b1c7e3a-0d5e-4f0e-9d7a-1d2f3a4b5c6d"));
        assert_eq!(c.trace_id, Some("4bf92f3577b34da6a3ce929d0e0e4736"));
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "garbage",
        ] {
            assert_eq!(
                Correlation::from_headers(None, Some(bad)).trace_id,
                None,
                "{bad}"
            );
        }
        let future = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-more";
        assert!(
            Correlation::from_headers(None, Some(future))
                .trace_id
                .is_some()
        );
        for bad in ["", "has space", "x\u{7f}", &"a".repeat(201)] {
            assert_eq!(
                Correlation::from_headers(Some(bad), None).request_id,
                None,
                "{bad:?}"
            );
        }
    }
}
