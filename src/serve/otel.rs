//! OpenTelemetry: with `telemetry.otlp_endpoint` set, each check is one span
//! (`citadel_authz.check`), a child of the caller's W3C `traceparent`, exported over OTLP/gRPC.
//!
//! The spans go through a [`tracing::Dispatch`] of their own (a registry with the
//! `tracing-opentelemetry` layer, filtered to this module's span target) rather than through the
//! global log subscriber: logging stays exactly as it is, a library user (or a test) running
//! several servers in one process gets one exporter each, and with tracing off nothing here
//! exists — no exporter, no dispatch, no span, and the adapters skip every call into this module.
//!
//! Attributes are the decision log's fields and no more (SPEC §10): never the token, never an
//! identity value (user, tenant, roles), the path without its query.

use std::cell::Cell;
use std::future::Future;
use std::time::Duration;

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{Status, TracerProvider as _};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;

use crate::core::config::TelemetryConfig;
use crate::core::decision::{Decision, Outcome};
use crate::serve::telemetry::{Correlation, Protocol};

/// The `tracing` target of check spans: the only one the span dispatch listens to.
const TARGET: &str = "citadel_authz::otel";

/// The span name, as collectors and trace views show it.
pub const SPAN_NAME: &str = "citadel_authz.check";

/// The exporter could not be built from a validated config.
#[derive(Debug, thiserror::Error)]
#[error("telemetry.otlp_endpoint: cannot build the OTLP exporter: {0}")]
pub struct OtelError(String);

/// The running span pipeline: a batch exporter to the collector and the dispatch spans use.
pub struct Tracing {
    provider: SdkTracerProvider,
    dispatch: tracing::Dispatch,
    propagator: TraceContextPropagator,
    export_timeout: Duration,
}

impl Tracing {
    /// Build the exporter (it connects lazily: a collector that is down costs nothing but the
    /// dropped batches and never delays a check). Must be called inside a Tokio runtime, which
    /// drives the gRPC connection.
    pub fn start(config: &TelemetryConfig) -> Result<Self, OtelError> {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(config.otlp_endpoint.clone())
            .with_timeout(config.export_timeout)
            .build()
            .map_err(|e| OtelError(e.to_string()))?;
        let ratio = Sampler::TraceIdRatioBased(config.sampling_ratio);
        let sampler = if config.parent_based {
            Sampler::ParentBased(Box::new(ratio))
        } else {
            ratio
        };
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_sampler(sampler)
            .with_resource(
                Resource::builder()
                    .with_service_name(config.service_name.clone())
                    .build(),
            )
            .build();
        let layer = tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("citadel-authz"))
            // Source locations, thread names and busy/idle times say nothing about a decision.
            .with_location(false)
            .with_threads(false)
            .with_tracked_inactivity(false)
            .with_level(false)
            .with_target(false);
        // Only check spans: every other callsite keeps the interest the log subscriber gave it.
        let only_checks = tracing_subscriber::filter::Targets::new()
            .with_target(TARGET, tracing::Level::INFO)
            .with_default(tracing_subscriber::filter::LevelFilter::OFF);
        let subscriber = tracing_subscriber::registry().with(only_checks).with(layer);
        Ok(Tracing {
            provider,
            dispatch: tracing::Dispatch::new(subscriber),
            propagator: TraceContextPropagator::new(),
            export_timeout: config.export_timeout,
        })
    }

    /// A span for one check, started now, child of `parent` when it holds a valid context.
    pub fn check_span(&self, protocol: Protocol, parent: TraceHeaders<'_>) -> CheckSpan {
        let span = tracing::dispatcher::with_default(
            &self.dispatch,
            || tracing::info_span!(target: TARGET, SPAN_NAME, otel.kind = "server"),
        );
        let cx = self.propagator.extract(&parent);
        // Fails only once the span has started, which it has not: nothing to report.
        let _ = span.set_parent(cx);
        span.set_attribute("citadel.protocol", protocol.as_str());
        CheckSpan { span }
    }

    /// Export what is buffered and stop (SIGTERM, [`crate::Running::shutdown`]). Runs the
    /// blocking flush off the async threads, bounded by the export timeout.
    pub async fn shutdown(&self) {
        let provider = self.provider.clone();
        let timeout = self.export_timeout;
        let flushed =
            tokio::task::spawn_blocking(move || provider.shutdown_with_timeout(timeout * 2)).await;
        match flushed {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "spans not all exported at shutdown"),
            Err(e) => tracing::warn!(error = %e, "span exporter shutdown failed"),
        }
    }
}

/// The W3C trace-context headers of whoever called (`traceparent`, `tracestate`).
#[derive(Debug, Clone, Copy, Default)]
pub struct TraceHeaders<'a> {
    pub traceparent: Option<&'a str>,
    pub tracestate: Option<&'a str>,
}

impl Extractor for TraceHeaders<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            "traceparent" => self.traceparent,
            "tracestate" => self.tracestate,
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        let mut keys = Vec::with_capacity(2);
        if self.traceparent.is_some() {
            keys.push("traceparent");
        }
        if self.tracestate.is_some() {
            keys.push("tracestate");
        }
        keys
    }
}

/// Run `check`, noting its cache lookups for `span` when there is one.
pub async fn traced<F: Future<Output = Decision>>(span: Option<&CheckSpan>, check: F) -> Decision {
    match span {
        Some(span) => span.around(check).await,
        None => check.await,
    }
}

/// One check's span; ends (and is queued for export) when dropped.
pub struct CheckSpan {
    span: tracing::Span,
}

tokio::task_local! {
    /// Whether the verified-token cache answered, noted by the check it was asked in.
    static CACHE_HIT: Cell<Option<bool>>;
}

/// Note a token-cache lookup for the span of the check in progress; a no-op (one thread-local
/// read) when the check is not traced.
pub fn note_cache(hit: bool) {
    let _ = CACHE_HIT.try_with(|c| c.set(Some(hit)));
}

impl CheckSpan {
    /// Run `check` with cache lookups noted for this span.
    pub async fn around<F: Future<Output = Decision>>(&self, check: F) -> Decision {
        let (decision, hit) = CACHE_HIT
            .scope(Cell::new(None), async {
                let decision = check.await;
                (decision, CACHE_HIT.with(Cell::get))
            })
            .await;
        if let Some(hit) = hit {
            self.span.set_attribute("citadel.cache_hit", hit);
        }
        decision
    }

    /// Record the decision's fields and end the span.
    pub fn finish(self, decision: &Decision, method: &str, path: &str, c: Correlation<'_>) {
        let span = &self.span;
        let outcome = decision.outcome();
        span.set_attribute("citadel.outcome", outcome.error_code());
        if !method.is_empty() {
            span.set_attribute("http.request.method", method.to_owned());
        }
        // Without the query string, which may carry secrets (as in the decision log).
        let path = path.split(['?', '#']).next().unwrap_or("");
        if !path.is_empty() {
            span.set_attribute("url.path", path.to_owned());
        }
        if let Some(id) = c.request_id {
            span.set_attribute("citadel.request_id", id.to_owned());
        }
        match decision {
            Decision::Allow { rule, identity } => {
                span.set_attribute("citadel.rule", rule.to_string());
                if let Some(identity) = identity {
                    span.set_attribute("citadel.issuer", identity.issuer.to_string());
                }
            }
            Decision::Deny { rule, denial } => {
                if let Some(rule) = rule {
                    span.set_attribute("citadel.rule", rule.to_string());
                }
                span.set_attribute("citadel.reason", denial.log_reason());
            }
        }
        // A denial is the server doing its job; only "could not decide" is an error.
        if matches!(outcome, Outcome::Unavailable) {
            span.set_status(Status::error("could not decide (503)"));
        }
    }
}
