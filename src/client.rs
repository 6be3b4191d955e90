//! A minimal ext_authz client (`citadel-authz check`): sends one `CheckRequest` the way Envoy
//! does, so the gRPC path can be tried without grpcurl or Envoy.

use std::collections::HashMap;

use envoy_types::ext_authz::v3::pb::{CheckRequest, CheckResponse, HttpResponse};
use envoy_types::pb::envoy::service::auth::v3::AttributeContext;
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;

/// Build the `CheckRequest` Envoy would send for this request (header names lower-cased).
pub fn check_request(method: &str, path: &str, headers: &[(String, String)]) -> CheckRequest {
    let mut map: HashMap<String, String> = HashMap::new();
    for (k, v) in headers {
        // Envoy joins repeated headers with ','.
        map.entry(k.to_ascii_lowercase())
            .and_modify(|e| {
                e.push(',');
                e.push_str(v);
            })
            .or_insert_with(|| v.clone());
    }
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request {
                http: Some(HttpRequest {
                    method: method.to_owned(),
                    path: path.to_owned(),
                    headers: map,
                    protocol: "HTTP/1.1".to_owned(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

/// Send one check to `endpoint` (`http://127.0.0.1:9191`).
pub async fn check(endpoint: String, request: CheckRequest) -> Result<CheckResponse, String> {
    let mut client = AuthorizationClient::connect(endpoint.clone())
        .await
        .map_err(|e| format!("cannot connect to {endpoint}: {e}"))?;
    client
        .check(request)
        .await
        .map(tonic::Response::into_inner)
        .map_err(|s| format!("Check failed: {s}"))
}

/// Human-readable summary: status line, headers, body.
pub fn describe(resp: &CheckResponse) -> String {
    let code = resp.status.as_ref().map_or(0, |s| s.code);
    let mut out = String::new();
    match &resp.http_response {
        Some(HttpResponse::OkResponse(ok)) => {
            out.push_str("ALLOW (gRPC status OK)\n");
            for h in ok.headers.iter().filter_map(|h| h.header.as_ref()) {
                out.push_str(&format!("  set    {}: {}\n", h.key, h.value));
            }
            for name in &ok.headers_to_remove {
                out.push_str(&format!("  remove {name}\n"));
            }
        }
        Some(HttpResponse::DeniedResponse(denied)) => {
            let status = denied.status.as_ref().map_or(0, |s| s.code);
            out.push_str(&format!("DENY {status} (gRPC status {code})\n"));
            for h in denied.headers.iter().filter_map(|h| h.header.as_ref()) {
                out.push_str(&format!("  {}: {}\n", h.key, h.value));
            }
            out.push_str(&format!("  {}\n", denied.body));
        }
        _ => out.push_str(&format!("no HTTP response (gRPC status {code})\n")),
    }
    out
}
