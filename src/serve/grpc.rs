//! Envoy `envoy.service.auth.v3.Authorization/Check` adapter (tonic).
//!
//! Translates a `CheckRequest` into a [`CheckInput`] and a [`Decision`] into a `CheckResponse`;
//! decides nothing itself. Every decision is an `Ok` gRPC reply: an `Err` status would mean the
//! server could not decide at all, which Envoy turns into `status_on_error`.

use std::sync::Arc;
use std::time::Instant;

use envoy_types::ext_authz::v3::pb::{
    Authorization, CheckRequest, CheckResponse, DeniedHttpResponse, HeaderAppendAction,
    HeaderValue, HeaderValueOption, HttpResponse, HttpStatus, OkHttpResponse,
};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::HttpRequest;
use envoy_types::pb::google::protobuf::value::Kind;
use envoy_types::pb::google::protobuf::{Struct, Value};
use envoy_types::pb::google::rpc;
use tonic::{Request, Response, Status};

use crate::core::decision::{Decision, Denial, identity_headers, render_denial};
use crate::core::identity::Identity;
use crate::serve::authorizer::{AuthHeader, Authorizer, CheckInput};
use crate::serve::otel::{self, TraceHeaders};
use crate::serve::telemetry::{Correlation, Protocol};

/// The gRPC service; cheap to clone.
#[derive(Clone)]
pub struct AuthzService {
    authorizer: Arc<Authorizer>,
}

impl AuthzService {
    pub fn new(authorizer: Arc<Authorizer>) -> Self {
        AuthzService { authorizer }
    }
}

#[tonic::async_trait]
impl Authorization for AuthzService {
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        let started = Instant::now();
        let (metadata, _, req) = request.into_parts();
        let http = req
            .attributes
            .as_ref()
            .and_then(|a| a.request.as_ref())
            .and_then(|r| r.http.as_ref());
        let span = self
            .authorizer
            .tracing()
            .map(|t| t.check_span(Protocol::Grpc, parent_context(&metadata, http)));
        let rt = self.authorizer.runtime();
        let correlation = http.map_or_else(Correlation::default, |http| {
            Correlation::from_headers(
                first_header(http, "x-request-id"),
                first_header(http, "traceparent"),
            )
        });
        // Only Envoy's own route config can set context_extensions (SPEC §10).
        let (decision, method, path) = match input_of(&req) {
            None => (
                Decision::deny(Denial::BadRequest(
                    "CheckRequest has no HTTP request attributes",
                )),
                "",
                "",
            ),
            Some(input) => {
                let check = crate::serve::authorizer::check(
                    &rt,
                    &input,
                    crate::serve::authorizer::unix_now(),
                );
                (
                    otel::traced(span.as_ref(), check).await,
                    input.method,
                    input.path,
                )
            }
        };
        self.authorizer.record(
            Protocol::Grpc,
            &decision,
            method,
            path,
            started.elapsed(),
            correlation,
        );
        if let Some(span) = span {
            span.finish(&decision, method, path, correlation);
        }
        Ok(Response::new(to_check_response(&decision, &rt.config)))
    }
}

/// What the decision needs from a `CheckRequest`; `None` without HTTP request attributes.
pub fn input_of(req: &CheckRequest) -> Option<CheckInput<'_>> {
    let attributes = req.attributes.as_ref()?;
    let http = attributes.request.as_ref()?.http.as_ref()?;
    // Envoy sends either the `headers` map (values of repeated headers joined with `,`) or,
    // with `encode_raw_headers`, the `header_map` list with one entry each.
    let authorization = match http.header_map.as_ref().map(|m| &m.headers) {
        Some(list) if !list.is_empty() => AuthHeader::from_values(
            list.iter()
                .filter(|h| h.key.eq_ignore_ascii_case("authorization"))
                .map(header_text),
        ),
        _ => AuthHeader::from_values(
            http.headers
                .get("authorization")
                .map(String::as_str)
                .into_iter(),
        ),
    };
    Some(CheckInput {
        method: &http.method,
        path: &http.path,
        authorization,
        // Only Envoy's own route config can set context_extensions (SPEC §10).
        rule: attributes
            .context_extensions
            .get(RULE_EXTENSION)
            .map(String::as_str),
    })
}

/// The `context_extensions` key whose value names the rule that decides (SPEC §10).
pub const RULE_EXTENSION: &str = "citadel_rule";

/// The span's parent: Envoy's ext_authz client puts its own span's context in the gRPC
/// metadata when its tracing is on; without that, the original request's `traceparent`.
fn parent_context<'a>(
    metadata: &'a tonic::metadata::MetadataMap,
    http: Option<&'a HttpRequest>,
) -> TraceHeaders<'a> {
    let meta = |name: &str| metadata.get(name).and_then(|v| v.to_str().ok());
    match meta("traceparent") {
        Some(traceparent) => TraceHeaders {
            traceparent: Some(traceparent),
            tracestate: meta("tracestate"),
        },
        None => http.map_or_else(TraceHeaders::default, |http| TraceHeaders {
            traceparent: first_header(http, "traceparent"),
            tracestate: first_header(http, "tracestate"),
        }),
    }
}

/// The first value of header `name` (lower case), from whichever form Envoy sent.
fn first_header<'a>(http: &'a HttpRequest, name: &str) -> Option<&'a str> {
    match http.header_map.as_ref().map(|m| &m.headers) {
        Some(list) if !list.is_empty() => list
            .iter()
            .find(|h| h.key.eq_ignore_ascii_case(name))
            .map(header_text),
        _ => http.headers.get(name).map(String::as_str),
    }
}

fn header_text(h: &HeaderValue) -> &str {
    if h.raw_value.is_empty() {
        &h.value
    } else {
        // Not UTF-8: cannot be a bearer token; an empty value counts as no credentials.
        std::str::from_utf8(&h.raw_value).unwrap_or("")
    }
}

/// Render a decision as Envoy expects it.
pub fn to_check_response(
    decision: &Decision,
    config: &crate::core::config::Config,
) -> CheckResponse {
    match decision {
        Decision::Allow { identity, rule } => {
            let h = identity_headers(identity.as_deref(), &config.headers);
            let id = identity.as_deref();
            let metadata = metadata([
                ("rule", Some(rule.to_string())),
                ("issuer", id.map(|i| i.issuer.to_string())),
                (
                    "user_id",
                    id.and_then(|i| i.user_id.as_deref().map(str::to_owned)),
                ),
                (
                    "tenant_id",
                    id.and_then(|i| i.tenant_id.as_deref().map(str::to_owned)),
                ),
                ("roles", id.and_then(Identity::roles_header)),
            ]);
            CheckResponse {
                status: Some(rpc::Status {
                    code: 0,
                    ..Default::default()
                }),
                http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
                    headers: h
                        .set
                        .into_iter()
                        .map(|(k, v)| header(k, v, HeaderAppendAction::OverwriteIfExistsOrAdd))
                        .collect(),
                    headers_to_remove: h.remove,
                    ..Default::default()
                })),
                dynamic_metadata: Some(metadata),
            }
        }
        Decision::Deny { denial, rule } => {
            let r = render_denial(denial, &config.realm);
            let metadata = metadata([
                ("rule", rule.as_deref().map(str::to_owned)),
                ("reason", Some(denial.to_string())),
                ("error", Some(denial.outcome().error_code().to_owned())),
            ]);
            CheckResponse {
                status: Some(rpc::Status {
                    code: r.grpc_code,
                    message: r.body.clone(),
                    ..Default::default()
                }),
                http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
                    status: Some(HttpStatus {
                        code: i32::from(r.status),
                    }),
                    headers: r
                        .headers
                        .into_iter()
                        .map(|(k, v)| {
                            header(k.to_owned(), v, HeaderAppendAction::OverwriteIfExistsOrAdd)
                        })
                        .collect(),
                    body: r.body,
                })),
                dynamic_metadata: Some(metadata),
            }
        }
    }
}

/// Dynamic metadata for Envoy (SPEC §10): the ext_authz filter stores it under its namespace
/// `envoy.filters.http.ext_authz`, where access logs (`%DYNAMIC_METADATA(...:user_id)%`) and
/// later filters read it. Absent values are left out.
fn metadata<const N: usize>(fields: [(&str, Option<String>); N]) -> Struct {
    Struct {
        fields: fields
            .into_iter()
            .filter_map(|(k, v)| {
                let v = v?;
                Some((
                    k.to_owned(),
                    Value {
                        kind: Some(Kind::StringValue(v)),
                    },
                ))
            })
            .collect(),
    }
}

fn header(key: String, value: String, action: HeaderAppendAction) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key,
            value,
            ..Default::default()
        }),
        append_action: action as i32,
        ..Default::default()
    }
}
