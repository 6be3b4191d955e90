//! A minimal ext_authz client (`citadel-authz check`): sends one `CheckRequest` the way Envoy
//! does, so the gRPC path can be tried without grpcurl or Envoy — over TCP or the unix socket
//! the server may listen on.

use std::collections::HashMap;
use std::time::Duration;

use envoy_types::ext_authz::v3::pb::{CheckRequest, CheckResponse, HttpResponse};
use envoy_types::pb::envoy::service::auth::v3::AttributeContext;
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use tonic::transport::Endpoint;

/// A connection that hangs, or a server that never answers, must not hang the command.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Why no answer came back (`check` exits 2 for these, apart from allow 0 and deny 1).
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("{0:?} is not an address: give host:port, unix:/path or http://host:port")]
    Address(String),
    #[error("cannot connect to {addr}: {cause}")]
    Connect { addr: String, cause: String },
    #[error("{addr} did not answer the check: {cause}")]
    Call { addr: String, cause: String },
}

/// The endpoint for `host:port`, `unix:/path` or a full `http://` URL.
pub fn endpoint(addr: &str) -> Result<Endpoint, CheckError> {
    let uri = if addr.starts_with("unix:") || addr.contains("://") {
        addr.to_owned()
    } else {
        format!("http://{addr}")
    };
    let bad = || CheckError::Address(addr.to_owned());
    if uri
        .strip_prefix("unix:")
        .is_some_and(|p| p.trim_start_matches('/').is_empty())
    {
        return Err(bad());
    }
    Endpoint::from_shared(uri)
        .map(|e| e.connect_timeout(CONNECT_TIMEOUT).timeout(CALL_TIMEOUT))
        .map_err(|_| bad())
}

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

/// Send one check to `addr` (`127.0.0.1:9191`, `http://127.0.0.1:9191`, `unix:/run/authz.sock`).
pub async fn check(addr: String, request: CheckRequest) -> Result<CheckResponse, CheckError> {
    let channel = endpoint(&addr)?
        .connect()
        .await
        .map_err(|e| CheckError::Connect {
            addr: addr.clone(),
            cause: error_chain(&e),
        })?;
    AuthorizationClient::new(channel)
        .check(request)
        .await
        .map(tonic::Response::into_inner)
        .map_err(|s| CheckError::Call {
            addr,
            cause: error_chain(&s),
        })
}

/// Whether the answer lets the request through: an OK status (Envoy's own rule).
pub fn is_allowed(resp: &CheckResponse) -> bool {
    resp.status.as_ref().is_none_or(|s| s.code == 0)
}

/// `transport error: tcp connect error: Connection refused`: the outer message alone ("transport
/// error") does not say what to fix.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        let text = inner.to_string();
        if !s.ends_with(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        src = inner.source();
    }
    s
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        for ok in [
            "127.0.0.1:9191",
            "localhost:9191",
            "http://127.0.0.1:9191",
            "unix:/run/authz.sock",
            "unix:///run/authz.sock",
        ] {
            assert!(endpoint(ok).is_ok(), "{ok}");
        }
        for bad in ["unix:", "unix:///", "not an address"] {
            assert!(
                matches!(endpoint(bad), Err(CheckError::Address(_))),
                "{bad}"
            );
        }
    }
}
