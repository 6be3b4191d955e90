//! A do-nothing Envoy ext_authz (gRPC v3) server: every `Check` is answered OK with no headers.
//! It is the floor the benchmarks compare citadel-authz against (same tonic/envoy-types stack,
//! no decision work).
//!
//! ```text
//! cargo run --release --example noop_authz -- 127.0.0.1:9393
//! ```

use std::error::Error;
use std::net::SocketAddr;

use envoy_types::ext_authz::v3::pb::{
    Authorization, AuthorizationServer, CheckRequest, CheckResponse, HttpResponse, OkHttpResponse,
};
use envoy_types::pb::google::rpc;
use tonic::{Request, Response, Status};

struct Noop;

#[tonic::async_trait]
impl Authorization for Noop {
    async fn check(&self, _: Request<CheckRequest>) -> Result<Response<CheckResponse>, Status> {
        Ok(Response::new(CheckResponse {
            status: Some(rpc::Status {
                code: 0,
                ..Default::default()
            }),
            http_response: Some(HttpResponse::OkResponse(OkHttpResponse::default())),
            ..Default::default()
        }))
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9393".to_owned())
        .parse()?;
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    // Same transport settings as citadel-authz's gRPC listener (TCP_NODELAY on accepted sockets).
    tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .add_service(AuthorizationServer::new(Noop))
        .serve_with_shutdown(addr, shutdown)
        .await?;
    Ok(())
}
