//! A do-nothing Envoy ext_authz (gRPC v3) server: every `Check` is answered OK with no headers.
//! It is the floor the benchmarks compare citadel-authz against (same tonic/envoy-types stack,
//! no decision work).
//!
//! With `--identity`, every `Check` gets the answer citadel-authz gives an allowed bench token
//! (three identity headers to set and the five dynamic-metadata fields of SPEC §10), built once
//! and cloned per check, still without any decision work. Envoy → this server, against Envoy →
//! the plain noop, measures what it costs *Envoy* to apply such an answer (the two share one CPU
//! in the benchmark), apart from what the authorization server spends deciding.
//!
//! ```text
//! cargo run --release --example noop_authz -- 127.0.0.1:9393 [--identity] [--spin-us N]
//! ```

use std::error::Error;
use std::net::SocketAddr;

use envoy_types::ext_authz::v3::pb::{
    Authorization, AuthorizationServer, CheckRequest, CheckResponse, HeaderAppendAction,
    HeaderValue, HeaderValueOption, HttpResponse, OkHttpResponse,
};
use envoy_types::pb::google::protobuf::value::Kind;
use envoy_types::pb::google::protobuf::{Struct, Value};
use envoy_types::pb::google::rpc;
use tonic::{Request, Response, Status};

struct Noop {
    answer: CheckResponse,
    /// `--spin-us N`: CPU burnt per check, to stand in for a decision's cost without any of its
    /// code (separates "the server spends N µs" from "the server's transport behaves differently").
    spin: std::time::Duration,
}

#[tonic::async_trait]
impl Authorization for Noop {
    async fn check(&self, _: Request<CheckRequest>) -> Result<Response<CheckResponse>, Status> {
        if !self.spin.is_zero() {
            let until = std::time::Instant::now() + self.spin;
            while std::time::Instant::now() < until {
                std::hint::spin_loop();
            }
        }
        Ok(Response::new(self.answer.clone()))
    }
}

/// OK, and nothing else.
fn empty_answer() -> CheckResponse {
    CheckResponse {
        status: Some(rpc::Status {
            code: 0,
            ..Default::default()
        }),
        http_response: Some(HttpResponse::OkResponse(OkHttpResponse::default())),
        ..Default::default()
    }
}

/// The shape of citadel-authz's allow for the bench tokens (`sub` user-N, tenant acme, role
/// reader, rule orders-read): the same headers, actions and metadata fields.
fn identity_answer() -> CheckResponse {
    let header = |key: &str, value: &str| HeaderValueOption {
        header: Some(HeaderValue {
            key: key.to_owned(),
            value: value.to_owned(),
            ..Default::default()
        }),
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
        ..Default::default()
    };
    let field = |k: &str, v: &str| {
        (
            k.to_owned(),
            Value {
                kind: Some(Kind::StringValue(v.to_owned())),
            },
        )
    };
    CheckResponse {
        dynamic_metadata: Some(Struct {
            fields: [
                field("rule", "orders-read"),
                field("issuer", "bench"),
                field("user_id", "user-0"),
                field("tenant_id", "acme"),
                field("roles", "reader"),
            ]
            .into_iter()
            .collect(),
        }),
        http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
            headers: vec![
                header("x-user-id", "user-0"),
                header("x-tenant-id", "acme"),
                header("x-user-roles", "reader"),
            ],
            ..Default::default()
        })),
        ..empty_answer()
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let mut addr: SocketAddr = "127.0.0.1:9393".parse()?;
    let mut answer = empty_answer();
    let mut spin = std::time::Duration::ZERO;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--identity" => answer = identity_answer(),
            "--spin-us" => {
                let us: u64 = args.next().ok_or("--spin-us needs a number")?.parse()?;
                spin = std::time::Duration::from_micros(us);
            }
            other => addr = other.parse()?,
        }
    }
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    // Same transport settings as citadel-authz's gRPC listener (TCP_NODELAY on accepted sockets).
    tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .add_service(AuthorizationServer::new(Noop { answer, spin }))
        .serve_with_shutdown(addr, shutdown)
        .await?;
    Ok(())
}
