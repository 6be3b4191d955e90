//! Binding listeners and running the gRPC and HTTP servers plus the JWKS refreshers, with a
//! bounded graceful shutdown.
//!
//! Listeners are bound before anything else runs, so a bad address fails at once (and port 0
//! works for tests). Every listener is bounded (see [`crate::serve::conn`]): connections per listener,
//! header and idle time on HTTP; streams, message size, keep-alive and preface time on gRPC. The servers start before the first JWKS fetch: readiness turns true as key
//! sets arrive, while checks for issuers already loaded are answered.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::ext_authz::v3::pb::AuthorizationServer;
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::core::config::{Config, GrpcListen};
use crate::serve::authorizer::Authorizer;
use crate::serve::conn::{Admission, MAX_HEADER_BYTES};
use crate::serve::grpc::AuthzService;
use crate::serve::http::{HttpState, router};
use crate::serve::metrics::Metrics;
use crate::serve::reload::KeyStores;

/// How often readiness is mirrored into gRPC health.
const HEALTH_POLL: Duration = Duration::from_millis(200);

/// File mode of the gRPC unix socket when `listen.grpc_socket_mode` is not set: owner and group
/// may connect (run the gateway in this process's group), nobody else. Connecting needs write
/// permission on the socket, so the process umask alone would usually shut the group out.
pub const DEFAULT_SOCKET_MODE: u32 = 0o660;

/// The largest gRPC message accepted. A `CheckRequest` carries the request's method, path and
/// headers (no body unless the gateway is told to send one): this is four times Envoy's default
/// 60 KiB header limit. Larger messages are refused with `OUT_OF_RANGE` (tonic's answer).
pub const MAX_GRPC_MESSAGE: usize = 256 * 1024;

/// Concurrent gRPC streams per connection (checks in flight on one connection). A gateway that
/// needs more opens another connection, which counts under the connection cap.
const MAX_GRPC_STREAMS: u32 = 128;

/// HTTP/2 PINGs on an idle gRPC connection, and how long an answer may take before the
/// connection is dropped: a peer that went away stops holding its place under the cap.
const GRPC_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const GRPC_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Startup failures: nothing is served.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("cannot bind {what} listener on {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Client(#[from] crate::sources::jwks::ClientError),
    #[error("server task failed: {0}")]
    Serve(String),
    #[error("{0}")]
    Tls(#[from] crate::serve::tls::TlsError),
    #[error("{0}")]
    Otel(#[from] crate::serve::otel::OtelError),
}

/// Listeners bound before the servers start.
pub struct Listeners {
    grpc: GrpcListener,
    http: Option<TcpListener>,
    /// The admin API (`listen.admin`), when configured.
    admin: Option<GrpcListener>,
}

/// File mode of the admin API's unix socket: the owner only (it explains every decision).
const ADMIN_SOCKET_MODE: u32 = 0o600;

/// Connections at once on the admin listener: it serves people and scripts, not traffic.
const MAX_ADMIN_CONNECTIONS: usize = 16;

/// Bind the admin listener; a stale unix socket file is replaced.
async fn bind_admin(listen: &GrpcListen) -> Result<GrpcListener, InitError> {
    match listen {
        GrpcListen::Tcp(addr) => TcpListener::bind(addr)
            .await
            .map(GrpcListener::Tcp)
            .map_err(|source| InitError::Bind {
                what: "admin",
                addr: addr.to_string(),
                source,
            }),
        GrpcListen::Unix(path) => {
            use std::os::unix::fs::{FileTypeExt, PermissionsExt};
            let bind_err = |source| InitError::Bind {
                what: "admin",
                addr: format!("unix:{}", path.display()),
                source,
            };
            if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
                std::fs::remove_file(path).map_err(bind_err)?;
            }
            let listener = UnixListener::bind(path).map_err(bind_err)?;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(ADMIN_SOCKET_MODE))
                .map_err(bind_err)?;
            Ok(GrpcListener::Unix(listener, path.clone()))
        }
    }
}

enum GrpcListener {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf),
}

impl Listeners {
    /// Bind what the config names. A stale unix socket file is replaced.
    pub async fn bind(config: &Config) -> Result<Self, InitError> {
        let grpc = match &config.listen.grpc {
            GrpcListen::Tcp(addr) => {
                GrpcListener::Tcp(TcpListener::bind(addr).await.map_err(|source| {
                    InitError::Bind {
                        what: "gRPC",
                        addr: addr.to_string(),
                        source,
                    }
                })?)
            }
            GrpcListen::Unix(path) => {
                let bind_err = |source| InitError::Bind {
                    what: "gRPC",
                    addr: format!("unix:{}", path.display()),
                    source,
                };
                if std::fs::symlink_metadata(path).is_ok_and(|m| {
                    use std::os::unix::fs::FileTypeExt;
                    m.file_type().is_socket()
                }) {
                    std::fs::remove_file(path).map_err(bind_err)?;
                }
                let listener = UnixListener::bind(path).map_err(bind_err)?;
                let mode = config
                    .listen
                    .grpc_socket_mode
                    .unwrap_or(DEFAULT_SOCKET_MODE);
                {
                    use std::os::unix::fs::PermissionsExt;
                    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
                        .map_err(bind_err)?;
                }
                GrpcListener::Unix(listener, path.clone())
            }
        };
        let http = match config.listen.http {
            Some(addr) => {
                Some(
                    TcpListener::bind(addr)
                        .await
                        .map_err(|source| InitError::Bind {
                            what: "HTTP",
                            addr: addr.to_string(),
                            source,
                        })?,
                )
            }
            None => None,
        };
        let admin = match &config.listen.admin {
            Some(listen) => Some(bind_admin(listen).await?),
            None => None,
        };
        Ok(Listeners { grpc, http, admin })
    }

    /// The admin listener's TCP address, when it has one.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        match &self.admin {
            Some(GrpcListener::Tcp(l)) => l.local_addr().ok(),
            _ => None,
        }
    }

    pub fn grpc_addr(&self) -> Option<SocketAddr> {
        match &self.grpc {
            GrpcListener::Tcp(l) => l.local_addr().ok(),
            GrpcListener::Unix(..) => None,
        }
    }

    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().and_then(|l| l.local_addr().ok())
    }
}

/// Extra parts a caller plugs in (dev mode's routes).
#[derive(Default)]
pub struct Options {
    pub extra_routes: Option<axum::Router>,
    /// Watch this config file (and its policy file) and reload on change or SIGHUP.
    pub config_path: Option<PathBuf>,
}

/// A running server.
pub struct Running {
    pub grpc_addr: Option<SocketAddr>,
    pub http_addr: Option<SocketAddr>,
    /// The admin listener's TCP address (`listen.admin`).
    pub admin_addr: Option<SocketAddr>,
    pub authorizer: Arc<Authorizer>,
    stop: watch::Sender<bool>,
    tasks: JoinSet<Result<(), String>>,
    unix_socket: Option<PathBuf>,
    admin_socket: Option<PathBuf>,
    shutdown_grace: Duration,
    shutdown_delay: Duration,
}

/// Start serving `config` on already bound listeners.
pub async fn start(
    config: Config,
    listeners: Listeners,
    options: Options,
) -> Result<Running, InitError> {
    // Certificates are read (and refused) before anything is served.
    let grpc_tls = crate::serve::tls::for_listener(&config.listen)?;
    let (stop, stop_rx) = watch::channel(false);
    let metrics = Arc::new(Metrics::new());
    let stores = KeyStores::new(Arc::clone(&metrics), stop_rx.clone());
    let shutdown_grace = config.shutdown_grace;
    let shutdown_delay = config.shutdown_delay;
    let limits = config.connections.clone();
    if config.policy.is_empty() {
        tracing::warn!("the policy has no rules: every request will be denied (403)");
    }
    crate::serve::reload::log_warnings(&config);
    let tracing = match &config.telemetry {
        Some(t) => Some(crate::serve::otel::Tracing::start(t)?),
        None => None,
    };
    let authorizer = Arc::new(Authorizer::new(stores.runtime(config, None)?).with_tracing(tracing));
    // Before anything is served: from "ready" on, a SIGHUP must find its handler installed.
    if let Some(path) = options.config_path.clone() {
        tokio::spawn(crate::serve::reload::watch_files(
            path,
            Arc::clone(&authorizer),
            stores,
            stop_rx.clone(),
        ));
    }
    let mut tasks = JoinSet::new();

    let grpc_addr = listeners.grpc_addr();
    let http_addr = listeners.http_addr();
    let admin_addr = listeners.admin_addr();

    // gRPC: ext_authz + grpc.health.v1, SERVING exactly while ready.
    let (health, health_service) = tonic_health::server::health_reporter();
    // TCP keep-alive is set on each accepted socket by `conn` (tonic ignores its own setting
    // for a custom incoming stream).
    let grpc = tonic::transport::Server::builder()
        .max_concurrent_streams(MAX_GRPC_STREAMS)
        .http2_max_header_list_size(u32::try_from(MAX_HEADER_BYTES).unwrap_or(u32::MAX))
        .http2_keepalive_interval(Some(GRPC_KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(GRPC_KEEPALIVE_TIMEOUT))
        .add_service(health_service)
        .add_service(
            AuthorizationServer::new(AuthzService::new(Arc::clone(&authorizer)))
                .max_decoding_message_size(MAX_GRPC_MESSAGE),
        );
    let grpc_admission = Admission::new("gRPC", limits.max_connections);
    let admin_hello = limits.header_timeout;
    let mut unix_socket = None;
    let shutdown = wait_stop(stop_rx.clone());
    match listeners.grpc {
        GrpcListener::Tcp(l) => match grpc_tls {
            Some(tls) => {
                tracing::info!(client_certificates = tls.mutual(), "gRPC listener uses TLS");
                tokio::spawn(Arc::clone(&tls).watch(
                    crate::serve::tls::RELOAD_INTERVAL,
                    wait_stop(stop_rx.clone()),
                ));
                let incoming = crate::serve::tls::incoming(
                    l,
                    tls,
                    grpc_admission,
                    limits.header_timeout,
                    wait_stop(stop_rx.clone()),
                );
                tasks.spawn(async move {
                    grpc.serve_with_incoming_shutdown(incoming, shutdown)
                        .await
                        .map_err(|e| e.to_string())
                });
            }
            None => {
                let incoming = crate::serve::conn::grpc_incoming(
                    l,
                    grpc_admission,
                    limits.header_timeout,
                    wait_stop(stop_rx.clone()),
                );
                tasks.spawn(async move {
                    grpc.serve_with_incoming_shutdown(incoming, shutdown)
                        .await
                        .map_err(|e| e.to_string())
                });
            }
        },
        GrpcListener::Unix(l, path) => {
            unix_socket = Some(path);
            let incoming = crate::serve::conn::grpc_incoming(
                l,
                grpc_admission,
                limits.header_timeout,
                wait_stop(stop_rx.clone()),
            );
            tasks.spawn(async move {
                grpc.serve_with_incoming_shutdown(incoming, shutdown)
                    .await
                    .map_err(|e| e.to_string())
            });
        }
    }

    if let Some(listener) = listeners.http {
        let app = router(
            HttpState {
                authorizer: Arc::clone(&authorizer),
            },
            options.extra_routes,
        );
        let stop = stop_rx.clone();
        tasks.spawn(async move {
            crate::serve::conn::serve_http(listener, app, limits, stop).await;
            Ok(())
        });
    }

    // The admin API on its own listener, stopped with the others.
    let mut admin_socket = None;
    if let Some(listener) = listeners.admin {
        let admin = tonic::transport::Server::builder()
            .max_concurrent_streams(MAX_GRPC_STREAMS)
            .http2_keepalive_interval(Some(GRPC_KEEPALIVE_INTERVAL))
            .http2_keepalive_timeout(Some(GRPC_KEEPALIVE_TIMEOUT))
            .add_service(crate::serve::admin::server(
                crate::serve::admin::AdminService::new(
                    Arc::clone(&authorizer),
                    options.config_path.clone(),
                ),
            ));
        let admission = Admission::new("admin", MAX_ADMIN_CONNECTIONS);
        let shutdown = wait_stop(stop_rx.clone());
        match listener {
            GrpcListener::Tcp(l) => {
                let incoming = crate::serve::conn::grpc_incoming(
                    l,
                    admission,
                    admin_hello,
                    wait_stop(stop_rx.clone()),
                );
                tasks.spawn(async move {
                    admin
                        .serve_with_incoming_shutdown(incoming, shutdown)
                        .await
                        .map_err(|e| e.to_string())
                });
            }
            GrpcListener::Unix(l, path) => {
                admin_socket = Some(path);
                let incoming = crate::serve::conn::grpc_incoming(
                    l,
                    admission,
                    admin_hello,
                    wait_stop(stop_rx.clone()),
                );
                tasks.spawn(async move {
                    admin
                        .serve_with_incoming_shutdown(incoming, shutdown)
                        .await
                        .map_err(|e| e.to_string())
                });
            }
        }
    }

    // Readiness → gRPC health. Polled: cheap, and it also notices a key set going stale.
    let watcher_auth = Arc::clone(&authorizer);
    let watcher_stop = stop_rx.clone();
    tokio::spawn(async move {
        let mut last = None;
        loop {
            let ready = watcher_auth.readiness().is_ok();
            if last != Some(ready) {
                last = Some(ready);
                let status = if ready {
                    tonic_health::ServingStatus::Serving
                } else {
                    tonic_health::ServingStatus::NotServing
                };
                health.set_service_status("", status).await;
                health
                    .set_service_status("envoy.service.auth.v3.Authorization", status)
                    .await;
                tracing::info!(ready, "readiness changed");
            }
            tokio::select! {
                _ = tokio::time::sleep(HEALTH_POLL) => {}
                _ = wait_stop(watcher_stop.clone()) => {
                    health.set_service_status("", tonic_health::ServingStatus::NotServing).await;
                    return;
                }
            }
        }
    });

    tracing::info!(
        grpc = %listening_on(grpc_addr, unix_socket.as_deref()),
        http = %http_addr.map_or_else(|| "disabled".to_owned(), |a| a.to_string()),
        "listening"
    );
    Ok(Running {
        grpc_addr,
        http_addr,
        admin_addr,
        authorizer,
        stop,
        tasks,
        unix_socket,
        admin_socket,
        shutdown_grace,
        shutdown_delay,
    })
}

/// The gRPC listener as a person writes it in the config: `host:port` or `unix:/path`.
fn listening_on(tcp: Option<SocketAddr>, unix: Option<&std::path::Path>) -> String {
    match (tcp, unix) {
        (Some(addr), _) => addr.to_string(),
        (None, Some(path)) => format!("unix:{}", path.display()),
        (None, None) => "unknown".to_owned(),
    }
}

async fn wait_stop(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

impl Running {
    /// Drain: turn not-ready, wait `shutdown_delay`, stop accepting, let in-flight requests finish
    /// (at most `shutdown_grace`), stop refreshers.
    pub async fn shutdown(mut self) -> Result<(), InitError> {
        // 1. Not ready: /readyz 503 and gRPC health NOT_SERVING (the health watcher polls every
        //    200 ms), then `shutdown_delay` for load balancers to notice.
        self.authorizer.drain();
        tokio::time::sleep(HEALTH_POLL + self.shutdown_delay).await;
        // 2. Stop accepting; in-flight checks finish within `shutdown_grace`.
        let _ = self.stop.send(true);
        let drained = tokio::time::timeout(self.shutdown_grace, async {
            let mut first_err = None;
            while let Some(res) = self.tasks.join_next().await {
                if let Ok(Err(e)) | Err(e) = res.map_err(|e| e.to_string()) {
                    first_err.get_or_insert(e);
                }
            }
            first_err
        })
        .await;
        for path in [&self.unix_socket, &self.admin_socket]
            .into_iter()
            .flatten()
        {
            let _ = std::fs::remove_file(path);
        }
        // 3. The spans of the last checks are still buffered: export them before exiting.
        if let Some(tracing) = self.authorizer.tracing() {
            tracing.shutdown().await;
        }
        match drained {
            Ok(None) => Ok(()),
            Ok(Some(e)) => Err(InitError::Serve(e)),
            Err(_) => {
                tracing::warn!(
                    "in-flight requests did not finish within the shutdown grace period"
                );
                Ok(())
            }
        }
    }

    /// Serve until `signal` completes (or a server fails), then shut down.
    pub async fn run_until(
        mut self,
        signal: impl std::future::Future<Output = ()>,
    ) -> Result<(), InitError> {
        tokio::select! {
            _ = signal => {}
            Some(res) = self.tasks.join_next() => {
                let err = match res {
                    Ok(Ok(())) => "a server stopped unexpectedly".to_owned(),
                    Ok(Err(e)) => e,
                    Err(e) => e.to_string(),
                };
                let _ = self.shutdown().await;
                return Err(InitError::Serve(err));
            }
        }
        self.shutdown().await
    }
}
