//! The HTTP listener (axum): `/healthz`, `/readyz`, forward-auth at `/api/iam/check-access`, and
//! in dev mode the development issuer's endpoints.
//!
//! Forward-auth translates the gateway's description of the original request into the same
//! [`CheckInput`] the gRPC adapter builds, and renders the [`Decision`] with the same functions.
//! Forwarded headers are believed only from `forward_auth.trusted_proxies`: anyone else could
//! otherwise ask about a path of their choosing and learn or fake a verdict.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::core::decision::{Decision, Denial, identity_headers, render_denial};
use crate::serve::authorizer::{AuthHeader, Authorizer, CheckInput, NotReady};
use crate::serve::otel::{self, TraceHeaders};
use crate::serve::telemetry::Correlation;
use crate::serve::telemetry::Protocol;

/// Where gateways send forward-auth requests (ADR-0019).
pub const CHECK_PATH: &str = "/api/iam/check-access";

#[derive(Clone)]
pub struct HttpState {
    pub authorizer: Arc<Authorizer>,
}

/// The router for the HTTP listener; `extra` adds routes (dev mode).
pub fn router(state: HttpState, extra: Option<Router>) -> Router {
    let base = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(fallback)
        .with_state(state);
    match extra {
        Some(extra) => base.merge(extra),
        None => base,
    }
}

async fn metrics(State(state): State<HttpState>) -> Response {
    let body = state
        .authorizer
        .metrics()
        .render(&state.authorizer.gauges());
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

async fn readyz(State(state): State<HttpState>) -> Response {
    match state.authorizer.readiness() {
        Ok(()) => json(StatusCode::OK, serde_json::json!({ "status": "ready" })),
        Err(not_ready) => {
            let mut body = serde_json::json!({
                "status": "not_ready",
                "reason": not_ready.to_string(),
            });
            if let NotReady::Issuers(names) = &not_ready {
                body["issuers"] = names.iter().map(|n| &**n).collect();
            }
            json(StatusCode::SERVICE_UNAVAILABLE, body)
        }
    }
}

fn json(status: StatusCode, body: serde_json::Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// Forward-auth lives under a prefix matched by hand on the raw (still percent-encoded) path, so
/// the original path reaches canonicalization exactly as the gateway sent it.
async fn fallback(
    State(state): State<HttpState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
) -> Response {
    let path = req.uri().path();
    if path == CHECK_PATH || path.starts_with(&format!("{CHECK_PATH}/")) {
        return forward_auth(&state, peer, req).await;
    }
    json(
        StatusCode::NOT_FOUND,
        serde_json::json!({ "error": "not_found" }),
    )
}

async fn forward_auth(state: &HttpState, peer: SocketAddr, req: Request) -> Response {
    let started = Instant::now();
    let rt = state.authorizer.runtime();
    let headers = req.headers();
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let authorization = authorization(headers);
    let raw_path = req.uri().path();

    let target = if !is_trusted(peer.ip(), &rt.config.trusted_proxies) {
        Err(Denial::UntrustedPeer)
    } else if raw_path == CHECK_PATH {
        if req.method() != Method::GET && req.method() != Method::POST {
            return (
                StatusCode::METHOD_NOT_ALLOWED,
                [(header::ALLOW, "GET, POST")],
            )
                .into_response();
        }
        original_from_headers(headers)
    } else {
        // `/api/iam/check-access/<original path and query>`: Envoy's HTTP ext_authz `path_prefix`.
        let rest = &raw_path[CHECK_PATH.len()..];
        let target = match req.uri().query() {
            Some(q) => format!("{rest}?{q}"),
            None => rest.to_owned(),
        };
        Ok((req.method().as_str().to_owned(), target))
    };
    // After the 405 above: a request that is no check gets no span.
    let span = state.authorizer.tracing().map(|t| {
        let parent = TraceHeaders {
            traceparent: text("traceparent"),
            tracestate: text("tracestate"),
        };
        t.check_span(Protocol::Http, parent)
    });

    let (decision, method, path) = match target {
        Err(denial) => (Decision::deny(denial), String::new(), String::new()),
        Ok((method, path)) => {
            let input = CheckInput {
                method: &method,
                path: &path,
                authorization,
                // Forward-auth has no gateway-only channel: a header could come from the client.
                rule: None,
            };
            let check =
                crate::serve::authorizer::check(&rt, &input, crate::serve::authorizer::unix_now());
            (otel::traced(span.as_ref(), check).await, method, path)
        }
    };
    let correlation = Correlation::from_headers(text("x-request-id"), text("traceparent"));
    state.authorizer.record(
        Protocol::Http,
        &decision,
        &method,
        &path,
        started.elapsed(),
        correlation,
    );
    if let Some(span) = span {
        span.finish(&decision, &method, &path, correlation);
    }
    render(&decision, &rt.config)
}

fn authorization(headers: &HeaderMap) -> AuthHeader<'_> {
    // A value that is not visible ASCII cannot be a bearer token: read as empty (no credentials).
    AuthHeader::from_values(
        headers
            .get_all(header::AUTHORIZATION)
            .iter()
            .map(|v| v.to_str().unwrap_or("")),
    )
}

/// The original method and target from `X-Forwarded-Method`/`-Uri` (Traefik, Caddy, APISIX) or
/// `X-Original-Method`/`-URI` (nginx). Both pairs present and disagreeing is refused: a client
/// could have added one pair itself and let the gateway pass it through.
pub fn original_from_headers(headers: &HeaderMap) -> Result<(String, String), Denial> {
    let forwarded = pair(headers, "x-forwarded-method", "x-forwarded-uri")?;
    let original = pair(headers, "x-original-method", "x-original-uri")?;
    match (forwarded, original) {
        (Some(f), Some(o)) if f != o => Err(Denial::BadRequest(
            "X-Forwarded-Method/Uri and X-Original-Method/URI disagree",
        )),
        (Some(p), _) | (None, Some(p)) => Ok(p),
        (None, None) => Err(Denial::BadRequest(
            "missing X-Forwarded-Method + X-Forwarded-Uri or X-Original-Method + X-Original-URI",
        )),
    }
}

fn pair(headers: &HeaderMap, method: &str, uri: &str) -> Result<Option<(String, String)>, Denial> {
    let m = single(headers, method)?;
    let u = single(headers, uri)?;
    match (m, u) {
        (Some(m), Some(u)) => Ok(Some((m, u))),
        (None, None) => Ok(None),
        _ => Err(Denial::BadRequest(
            "forwarded method and URI must come together",
        )),
    }
}

fn single(headers: &HeaderMap, name: &str) -> Result<Option<String>, Denial> {
    let mut values = headers.get_all(name).iter();
    match (values.next(), values.next()) {
        (None, _) => Ok(None),
        (Some(v), None) => v
            .to_str()
            .map(|s| Some(s.trim().to_owned()))
            .map_err(|_| Denial::BadRequest("forwarded header is not visible ASCII")),
        _ => Err(Denial::BadRequest("forwarded header repeated")),
    }
}

fn is_trusted(ip: IpAddr, trusted: &[ipnet::IpNet]) -> bool {
    let ip = ip.to_canonical();
    trusted.iter().any(|net| net.contains(&ip))
}

/// Allowed: 200 with the identity headers as response headers. Denied: SPEC §4.
fn render(decision: &Decision, config: &crate::core::config::Config) -> Response {
    match decision {
        Decision::Allow { identity, .. } => {
            let mut resp = Response::new(Body::empty());
            for (name, value) in identity_headers(identity.as_deref(), &config.headers).set {
                if let (Ok(n), Ok(v)) = (HeaderName::try_from(name), HeaderValue::try_from(value)) {
                    resp.headers_mut().insert(n, v);
                }
            }
            resp
        }
        Decision::Deny { denial, .. } => {
            let r = render_denial(denial, &config.realm);
            let mut resp = Response::new(Body::from(r.body));
            *resp.status_mut() = StatusCode::from_u16(r.status).unwrap_or(StatusCode::FORBIDDEN);
            for (name, value) in r.headers {
                if let Ok(v) = HeaderValue::try_from(value) {
                    resp.headers_mut().insert(name, v);
                }
            }
            resp
        }
    }
}
