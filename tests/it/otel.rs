//! OpenTelemetry spans (issue #12 item 3) received by a real OTLP collector of the tests' own: a
//! tonic gRPC server implementing `opentelemetry.proto.collector.trace.v1.TraceService/Export`
//! from the published OTLP protos (`opentelemetry-proto`), fed by the server's real exporter. And
//! through real Envoy with its OpenTelemetry tracer exporting to the same collector: the
//! citadel-authz span is a child of Envoy's ext_authz call.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use envoy_types::ext_authz::v3::pb::CheckRequest;
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use jsonwebtoken::Algorithm;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue};

use crate::envoy::Envoy;
use crate::support::*;

// ---------------------------------------------------------------------------------------------
// The collector.

/// One received span, flattened: its service, ids as lower-case hex, attributes as text.
#[derive(Debug, Clone)]
struct Got {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    kind: i32,
    attributes: HashMap<String, String>,
}

impl Got {
    fn attr(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

#[derive(Clone, Default)]
struct Sink {
    spans: Arc<Mutex<Vec<Got>>>,
    exports: Arc<Mutex<u64>>,
}

fn text(v: &Option<AnyValue>) -> String {
    match v.as_ref().and_then(|v| v.value.as_ref()) {
        Some(Any::StringValue(s)) => s.clone(),
        Some(Any::BoolValue(b)) => b.to_string(),
        Some(Any::IntValue(i)) => i.to_string(),
        Some(Any::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

fn attrs(list: &[KeyValue]) -> HashMap<String, String> {
    list.iter()
        .map(|kv| (kv.key.clone(), text(&kv.value)))
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tonic::async_trait]
impl TraceService for Sink {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        *self.exports.lock().unwrap() += 1;
        let mut spans = self.spans.lock().unwrap();
        for rs in request.into_inner().resource_spans {
            let resource = rs
                .resource
                .map(|r| attrs(&r.attributes))
                .unwrap_or_default();
            let service = resource.get("service.name").cloned().unwrap_or_default();
            for ss in rs.scope_spans {
                for s in ss.spans {
                    spans.push(Got {
                        service: service.clone(),
                        name: s.name,
                        trace_id: hex(&s.trace_id),
                        span_id: hex(&s.span_id),
                        parent_span_id: hex(&s.parent_span_id),
                        kind: s.kind,
                        attributes: attrs(&s.attributes),
                    });
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// The OTLP/gRPC collector on a loopback port.
struct Collector {
    addr: SocketAddr,
    sink: Sink,
}

impl Collector {
    async fn start() -> Collector {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let sink = Sink::default();
        let service = TraceServiceServer::new(sink.clone());
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await
                .unwrap();
        });
        Collector { addr, sink }
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn spans(&self) -> Vec<Got> {
        self.sink.spans.lock().unwrap().clone()
    }

    fn exports(&self) -> u64 {
        *self.sink.exports.lock().unwrap()
    }

    /// Our check spans.
    fn checks(&self) -> Vec<Got> {
        self.spans()
            .into_iter()
            .filter(|s| s.name == "citadel_authz.check")
            .collect()
    }

    /// Wait (bounded) until `n` check spans arrived.
    async fn wait_checks(&self, n: usize) -> Vec<Got> {
        eventually(
            Duration::from_secs(15),
            &format!("{n} check spans"),
            || async {
                let c = self.checks();
                (c.len() >= n).then_some(c)
            },
        )
        .await
    }
}

// ---------------------------------------------------------------------------------------------

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

fn traceparent(trace: &str, parent: &str, flags: &str) -> String {
    format!("00-{trace}-{parent}-{flags}")
}

async fn server(jwks: &JwksServer, telemetry: &str) -> InProcess {
    let yaml = format!("{}{telemetry}", config_yaml(jwks, "  refresh_min: 30s"));
    let s = InProcess::start(&yaml).await;
    s.wait_ready().await;
    s
}

/// Every attribute value, to look for what must never be there.
fn all_values(spans: &[Got]) -> Vec<String> {
    spans
        .iter()
        .flat_map(|s| s.attributes.iter().map(|(k, v)| format!("{k}={v}")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_check_is_a_span_child_of_the_incoming_traceparent_with_the_decision_fields() {
    let collector = Collector::start().await;
    let k = key(Algorithm::ES256, "k1");
    let jwks = JwksServer::start(&[&k]).await;
    let authz = server(
        &jwks,
        &format!(
            "decision_log: all\ntelemetry:\n  otlp_endpoint: {}\n",
            collector.endpoint()
        ),
    )
    .await;
    let token = k.mint(&claims(&jwks.issuer(), "alice", "acme", &["reader"]));
    let auth = format!("Bearer {token}");

    // gRPC, allowed, twice (the second from the token cache), then denied (no role).
    let tp = traceparent(TRACE, PARENT, "01");
    for _ in 0..2 {
        let r = authz
            .check(
                "GET",
                "/api/orders/7?secret=query-value",
                &[
                    ("authorization", &auth),
                    ("traceparent", &tp),
                    ("x-request-id", "req-1"),
                ],
            )
            .await;
        assert_eq!(status_of(&r), 200);
    }
    let trace_b = "0af7651916cd43dd8448eb211c80319c";
    let denied = authz
        .check(
            "DELETE",
            "/api/admin/users",
            &[
                ("authorization", &auth),
                (
                    "traceparent",
                    &traceparent(trace_b, "b7ad6b7169203331", "01"),
                ),
            ],
        )
        .await;
    assert_eq!(status_of(&denied), 403);
    // Forward-auth, with an invalid token.
    let trace_c = "11111111111111111111111111111111";
    let reply = reqwest::Client::new()
        .get(format!(
            "http://{}/api/iam/check-access/api/orders/8?x=1",
            authz.http
        ))
        .header("authorization", "Bearer not.a.jwt")
        .header(
            "traceparent",
            traceparent(trace_c, "2222222222222222", "01"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 401);
    // A parent that was not sampled: followed by default, so no span.
    let trace_d = "33333333333333333333333333333333";
    let r = authz
        .check(
            "GET",
            "/api/orders/9",
            &[
                ("authorization", &auth),
                (
                    "traceparent",
                    &traceparent(trace_d, "4444444444444444", "00"),
                ),
            ],
        )
        .await;
    assert_eq!(status_of(&r), 200);
    // No traceparent: a trace of its own.
    let r = authz
        .check("GET", "/api/orders/10", &[("authorization", &auth)])
        .await;
    assert_eq!(status_of(&r), 200);

    // The last spans are buffered: shutdown exports them.
    authz.stop().await;
    let spans = collector.wait_checks(5).await;
    assert_eq!(spans.len(), 5, "{spans:#?}");
    for s in &spans {
        assert_eq!(s.service, "citadel-authz", "{s:?}");
        assert_eq!(s.kind, 2, "SPAN_KIND_SERVER: {s:?}");
    }

    let allowed: Vec<&Got> = spans.iter().filter(|s| s.trace_id == TRACE).collect();
    assert_eq!(allowed.len(), 2, "{spans:#?}");
    for s in &allowed {
        assert_eq!(s.parent_span_id, PARENT, "{s:?}");
        assert_eq!(s.attr("citadel.rule"), Some("orders-read"), "{s:?}");
        assert_eq!(s.attr("citadel.outcome"), Some("allow"), "{s:?}");
        assert_eq!(s.attr("citadel.issuer"), Some("iam"), "{s:?}");
        assert_eq!(s.attr("citadel.protocol"), Some("grpc"), "{s:?}");
        assert_eq!(s.attr("http.request.method"), Some("GET"), "{s:?}");
        assert_eq!(s.attr("url.path"), Some("/api/orders/7"), "{s:?}");
        assert_eq!(s.attr("citadel.request_id"), Some("req-1"), "{s:?}");
    }
    let mut hits: Vec<&str> = allowed
        .iter()
        .map(|s| s.attr("citadel.cache_hit").unwrap())
        .collect();
    hits.sort();
    assert_eq!(hits, ["false", "true"], "{allowed:#?}");
    assert_ne!(allowed[0].span_id, allowed[1].span_id);

    let deny = spans.iter().find(|s| s.trace_id == trace_b).unwrap();
    assert_eq!(deny.parent_span_id, "b7ad6b7169203331");
    assert_eq!(
        deny.attr("citadel.outcome"),
        Some("insufficient_scope"),
        "{deny:?}"
    );
    assert_eq!(deny.attr("citadel.rule"), Some("admin"), "{deny:?}");
    assert_eq!(deny.attr("http.request.method"), Some("DELETE"), "{deny:?}");
    assert!(deny.attr("citadel.reason").is_some(), "{deny:?}");

    let fa = spans.iter().find(|s| s.trace_id == trace_c).unwrap();
    assert_eq!(fa.parent_span_id, "2222222222222222");
    assert_eq!(fa.attr("citadel.protocol"), Some("http"), "{fa:?}");
    assert_eq!(fa.attr("citadel.outcome"), Some("invalid_token"), "{fa:?}");
    assert_eq!(fa.attr("url.path"), Some("/api/orders/8"), "{fa:?}");

    assert!(
        !spans.iter().any(|s| s.trace_id == trace_d),
        "a span for an unsampled parent: {spans:#?}"
    );
    let root = spans
        .iter()
        .find(|s| ![TRACE, trace_b, trace_c].contains(&s.trace_id.as_str()))
        .unwrap();
    assert_eq!(root.parent_span_id, "", "{root:?}");
    assert_eq!(root.attr("url.path"), Some("/api/orders/10"), "{root:?}");

    // Never the token (nor any part of it), the query, or an identity value.
    let signature = token.rsplit('.').next().unwrap();
    for v in all_values(&spans) {
        assert!(
            !v.contains(&token) && !v.contains(signature) && !v.contains("not.a.jwt"),
            "{v}"
        );
        assert!(!v.contains("secret") && !v.contains("query-value"), "{v}");
        assert!(!v.contains("alice") && !v.contains("acme"), "{v}");
    }
}

/// Envoy's ext_authz client sends its own span's context as gRPC metadata: that is the parent,
/// before the original request's `traceparent` in the CheckRequest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_metadata_traceparent_is_the_parent_before_the_request_header() {
    let collector = Collector::start().await;
    let k = key(Algorithm::ES256, "k1");
    let jwks = JwksServer::start(&[&k]).await;
    let authz = server(
        &jwks,
        &format!(
            "telemetry:\n  otlp_endpoint: {}\n  service_name: authz-edge\n",
            collector.endpoint()
        ),
    )
    .await;
    let token = k.mint(&claims(&jwks.issuer(), "alice", "acme", &["reader"]));
    let auth = format!("Bearer {token}");
    let req: CheckRequest = citadel_authz::cli::client::check_request(
        "GET",
        "/api/orders/1",
        &[
            ("authorization".into(), auth.clone()),
            (
                "traceparent".into(),
                traceparent(TRACE, "aaaaaaaaaaaaaaaa", "01"),
            ),
        ],
    );
    let mut client = AuthorizationClient::connect(format!("http://{}", authz.grpc))
        .await
        .unwrap();
    let mut request = tonic::Request::new(req);
    request.metadata_mut().insert(
        "traceparent",
        traceparent(TRACE, "bbbbbbbbbbbbbbbb", "01")
            .parse()
            .unwrap(),
    );
    client.check(request).await.unwrap();
    authz.stop().await;
    let spans = collector.wait_checks(1).await;
    assert_eq!(spans[0].trace_id, TRACE);
    assert_eq!(spans[0].parent_span_id, "bbbbbbbbbbbbbbbb", "{spans:#?}");
    assert_eq!(spans[0].service, "authz-edge");
}

/// Off by default: with a collector listening and traceparents sent, nothing is exported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_exported_when_the_endpoint_is_not_set() {
    let collector = Collector::start().await;
    let k = key(Algorithm::ES256, "k1");
    let jwks = JwksServer::start(&[&k]).await;
    let authz = server(&jwks, "").await;
    assert!(
        authz
            .running
            .as_ref()
            .unwrap()
            .authorizer
            .tracing()
            .is_none()
    );
    let token = k.mint(&claims(&jwks.issuer(), "alice", "acme", &["reader"]));
    let tp = traceparent(TRACE, PARENT, "01");
    for _ in 0..3 {
        let r = authz
            .check(
                "GET",
                "/api/orders/1",
                &[
                    ("authorization", &format!("Bearer {token}")),
                    ("traceparent", &tp),
                ],
            )
            .await;
        assert_eq!(status_of(&r), 200);
    }
    authz.stop().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(collector.exports(), 0);
    assert!(collector.spans().is_empty());
}

/// `sampling_ratio: 0` without following the parent: nothing is sampled, a sampled parent
/// included — the collector sees no span.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampling_ratio_zero_without_parent_based_exports_nothing() {
    let collector = Collector::start().await;
    let k = key(Algorithm::ES256, "k1");
    let jwks = JwksServer::start(&[&k]).await;
    let authz = server(
        &jwks,
        &format!(
            "telemetry:\n  otlp_endpoint: {}\n  sampling_ratio: 0\n  parent_based: false\n",
            collector.endpoint()
        ),
    )
    .await;
    assert!(
        authz
            .running
            .as_ref()
            .unwrap()
            .authorizer
            .tracing()
            .is_some()
    );
    let token = k.mint(&claims(&jwks.issuer(), "alice", "acme", &["reader"]));
    let r = authz
        .check(
            "GET",
            "/api/orders/1",
            &[
                ("authorization", &format!("Bearer {token}")),
                ("traceparent", &traceparent(TRACE, PARENT, "01")),
            ],
        )
        .await;
    assert_eq!(status_of(&r), 200);
    authz.stop().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(collector.checks().is_empty(), "{:#?}", collector.spans());
}

/// Real Envoy with its OpenTelemetry tracer (`envoy/envoy-tracing.yaml`) and citadel-authz
/// exporting to the same collector: one trace, and the citadel-authz span's parent is one of
/// Envoy's spans (its ext_authz egress span).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_envoy_the_check_span_is_a_child_of_envoys_ext_authz_span() {
    let collector = Collector::start().await;
    let k = key(Algorithm::ES256, "k1");
    let jwks = JwksServer::start(&[&k]).await;
    let authz = server(
        &jwks,
        &format!("telemetry:\n  otlp_endpoint: {}\n", collector.endpoint()),
    )
    .await;
    let upstream = EchoUpstream::start().await;
    let envoy = Envoy::start(
        "envoy/envoy-tracing.yaml",
        vec![
            (
                "port_value: 9191",
                format!("port_value: {}", authz.grpc.port()),
            ),
            (
                "port_value: 8080",
                format!("port_value: {}", upstream.addr.port()),
            ),
            (
                "port_value: 4317",
                format!("port_value: {}", collector.addr.port()),
            ),
        ],
    )
    .await;
    let token = k.mint(&claims(&jwks.issuer(), "alice", "acme", &["reader"]));
    let reply = envoy.get_with("/api/orders/1", &token).await;
    assert!(reply.reached_upstream(), "{reply:?}");
    let denied = envoy.get("/api/orders/2", &[]).await;
    assert_eq!(denied.status, 401, "{denied:?}");
    authz.stop().await;

    let checks = collector.wait_checks(2).await;
    // Envoy flushes on its own schedule (1 s in the sample): wait for the parents to arrive.
    let spans = eventually(Duration::from_secs(15), "Envoy's spans", || async {
        let spans = collector.spans();
        let envoy_ids: Vec<String> = spans
            .iter()
            .filter(|s| s.service == "envoy")
            .map(|s| s.span_id.clone())
            .collect();
        checks
            .iter()
            .all(|c| envoy_ids.contains(&c.parent_span_id))
            .then_some(spans)
    })
    .await;
    for check in &checks {
        let parent = spans
            .iter()
            .find(|s| s.span_id == check.parent_span_id)
            .unwrap();
        assert_eq!(parent.service, "envoy", "{parent:?}");
        assert_eq!(parent.trace_id, check.trace_id, "{parent:?} / {check:?}");
        // The ext_authz gRPC call, not the ingress span.
        assert!(
            parent
                .name
                .contains("envoy.service.auth.v3.Authorization.Check"),
            "{parent:?}"
        );
        // The ingress span of the same trace exists too, and is the ext_authz span's parent.
        assert!(
            spans
                .iter()
                .any(|s| s.span_id == parent.parent_span_id && s.service == "envoy"),
            "{spans:#?}"
        );
    }
    let mut outcomes: Vec<&str> = checks
        .iter()
        .map(|c| c.attr("citadel.outcome").unwrap())
        .collect();
    outcomes.sort();
    assert_eq!(outcomes, ["allow", "unauthorized"], "{checks:#?}");
    drop(envoy);
}

/// A client may send anything as trace context: a malformed `traceparent` (or an all-zero one,
/// or a huge `tracestate`) starts a trace of its own; the check is decided as without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_trace_context_starts_a_trace_of_its_own() {
    let collector = Collector::start().await;
    let k = key(Algorithm::ES256, "k1");
    let jwks = JwksServer::start(&[&k]).await;
    let authz = server(
        &jwks,
        &format!("telemetry:\n  otlp_endpoint: {}\n", collector.endpoint()),
    )
    .await;
    let token = k.mint(&claims(&jwks.issuer(), "alice", "acme", &["reader"]));
    let auth = format!("Bearer {token}");
    let huge_state = vec!["k=v"; 2000].join(",");
    let bad = [
        "garbage".to_owned(),
        traceparent("00000000000000000000000000000000", PARENT, "01"),
        traceparent(TRACE, "0000000000000000", "01"),
        format!("ff-{TRACE}-{PARENT}-01"),
        traceparent(&TRACE.to_uppercase(), PARENT, "01"),
    ];
    for tp in &bad {
        let r = authz
            .check(
                "GET",
                "/api/orders/1",
                &[
                    ("authorization", &auth),
                    ("traceparent", tp),
                    ("tracestate", &huge_state),
                ],
            )
            .await;
        assert_eq!(status_of(&r), 200, "{tp}");
    }
    authz.stop().await;
    let spans = collector.wait_checks(bad.len()).await;
    assert_eq!(spans.len(), bad.len(), "{spans:#?}");
    for s in &spans {
        assert_eq!(s.parent_span_id, "", "{s:?}");
        assert_ne!(s.trace_id, TRACE, "{s:?}");
        assert_eq!(s.attr("citadel.outcome"), Some("allow"), "{s:?}");
    }
}
