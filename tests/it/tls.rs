//! TLS and mTLS on the gRPC listener (`listen.grpc_tls`): real handshakes with certificates made
//! in the test (rcgen), a tonic client with and without a client certificate, plain text against
//! the TLS port, certificates replaced on disk while serving, and a real Envoy talking to
//! citadel-authz over mTLS.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use envoy_types::ext_authz::v3::pb::CheckResponse;
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use jsonwebtoken::Algorithm;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use serde_json::Value;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

use crate::support::*;

// ---------------------------------------------------------------------------------------------
// Certificates.

struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate and its private key, PEM.
#[derive(Clone)]
struct Pair {
    cert: String,
    key: String,
}

impl Ca {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        Ca {
            issuer: CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap(),
        }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    fn leaf(&self, cn: &str, sans: &[&str], usage: ExtendedKeyUsagePurpose) -> Pair {
        let sans: Vec<String> = sans.iter().map(|s| (*s).to_owned()).collect();
        let mut params = CertificateParams::new(sans).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Pair {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }

    fn server(&self) -> Pair {
        self.leaf(
            "citadel-authz",
            &["localhost", "127.0.0.1"],
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    fn client(&self, cn: &str) -> Pair {
        self.leaf(cn, &[], ExtendedKeyUsagePurpose::ClientAuth)
    }
}

/// Write `text` to `path` the way deployment tools do: a new file renamed over the old one.
fn replace_file(path: &Path, text: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Certificate files in a tempdir, named in a `listen.grpc_tls` section.
struct TlsDir {
    dir: tempfile::TempDir,
}

impl TlsDir {
    fn new(server: &Pair, client_ca: Option<&Ca>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let d = TlsDir { dir };
        std::fs::write(d.path("server.pem"), &server.cert).unwrap();
        std::fs::write(d.path("server.key"), &server.key).unwrap();
        if let Some(ca) = client_ca {
            std::fs::write(d.path("client-ca.pem"), ca.pem()).unwrap();
        }
        d
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn mutual(&self) -> bool {
        self.path("client-ca.pem").exists()
    }

    /// `yaml` (from [`config_yaml`]) with `grpc_tls` under `listen:`.
    fn config(&self, yaml: &str) -> String {
        let mut section = format!(
            "listen:\n  grpc_tls:\n    cert: {}\n    key: {}\n",
            self.path("server.pem").display(),
            self.path("server.key").display()
        );
        if self.mutual() {
            section.push_str(&format!(
                "    client_ca: {}\n",
                self.path("client-ca.pem").display()
            ));
        }
        assert!(yaml.contains("listen:\n"));
        yaml.replacen("listen:\n", &section, 1)
    }
}

// ---------------------------------------------------------------------------------------------
// A tonic client over TLS.

/// One Check over a fresh TLS connection to `addr` (SNI `localhost`) trusting `cas`, presenting
/// `identity` if given. A failed handshake is an `Err`, whether tonic sees it at connect or at
/// the call (with TLS 1.3 the server refuses a client certificate after the client finished).
async fn tls_check(
    addr: SocketAddr,
    cas: &[&Ca],
    identity: Option<&Pair>,
    token: &str,
) -> Result<CheckResponse, String> {
    let mut tls = ClientTlsConfig::new()
        .domain_name("localhost")
        .ca_certificates(cas.iter().map(|ca| Certificate::from_pem(ca.pem())));
    if let Some(id) = identity {
        tls = tls.identity(Identity::from_pem(&id.cert, &id.key));
    }
    let channel = Channel::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .map_err(|e| format!("tls config: {e}"))?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| format!("connect: {e:?}"))?;
    call(channel, token).await
}

async fn call(channel: Channel, token: &str) -> Result<CheckResponse, String> {
    let headers = [("authorization".to_owned(), format!("Bearer {token}"))];
    AuthorizationClient::new(channel)
        .check(citadel_authz::cli::client::check_request(
            "GET", "/api/me", &headers,
        ))
        .await
        .map(tonic::Response::into_inner)
        .map_err(|s| format!("call: {s:?}"))
}

/// citadel-authz in-process with `grpc_tls`, ready, plus a valid token for `/api/me`.
struct Fixture {
    server: InProcess,
    token: String,
    _jwks: JwksServer,
}

async fn start(tls: &TlsDir) -> Fixture {
    let key = key(Algorithm::ES256, "k1");
    let jwks = JwksServer::start(&[&key]).await;
    let yaml = tls.config(&config_yaml(&jwks, "  refresh_min: 30s"));
    let server = InProcess::start(&yaml).await;
    server.wait_ready().await;
    let token = key.mint(&claims(&jwks.issuer(), "alice", "acme", &["reader"]));
    Fixture {
        server,
        token,
        _jwks: jwks,
    }
}

// ---------------------------------------------------------------------------------------------
// The listener.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_client_with_a_certificate_gets_real_answers() {
    let ca = Ca::new("test CA");
    let tls = TlsDir::new(&ca.server(), Some(&ca));
    let f = start(&tls).await;
    let client = ca.client("envoy");

    let allowed = tls_check(f.server.grpc, &[&ca], Some(&client), &f.token)
        .await
        .unwrap();
    assert_eq!(status_of(&allowed), 200);
    assert_eq!(header_of(&allowed, "x-user-id").as_deref(), Some("alice"));

    let denied = tls_check(f.server.grpc, &[&ca], Some(&client), "not.a.token")
        .await
        .unwrap();
    assert_eq!(status_of(&denied), 401);
    f.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_refuses_clients_without_a_certificate_of_the_client_ca() {
    let ca = Ca::new("test CA");
    let rogue_ca = Ca::new("rogue CA");
    let tls = TlsDir::new(&ca.server(), Some(&ca));
    let f = start(&tls).await;

    let none = tls_check(f.server.grpc, &[&ca], None, &f.token).await;
    assert!(none.is_err(), "no client certificate: {none:?}");
    let rogue = tls_check(
        f.server.grpc,
        &[&ca],
        Some(&rogue_ca.client("envoy")),
        &f.token,
    )
    .await;
    assert!(
        rogue.is_err(),
        "client certificate of another CA: {rogue:?}"
    );
    // A server certificate is not a client certificate (no clientAuth usage).
    let wrong_usage = tls_check(f.server.grpc, &[&ca], Some(&ca.server()), &f.token).await;
    assert!(
        wrong_usage.is_err(),
        "serverAuth-only certificate: {wrong_usage:?}"
    );

    // ...and the listener is still fine for the next, good, client.
    let ok = tls_check(f.server.grpc, &[&ca], Some(&ca.client("envoy")), &f.token)
        .await
        .unwrap();
    assert_eq!(status_of(&ok), 200);
    f.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_only_tls_needs_no_client_certificate_and_refuses_plain_text() {
    let ca = Ca::new("test CA");
    let tls = TlsDir::new(&ca.server(), None);
    let f = start(&tls).await;

    let r = tls_check(f.server.grpc, &[&ca], None, &f.token)
        .await
        .unwrap();
    assert_eq!(status_of(&r), 200);

    // Plain-text gRPC (h2c) to the TLS port: no answer.
    let headers = [("authorization".to_owned(), format!("Bearer {}", f.token))];
    let plain = tokio::time::timeout(
        Duration::from_secs(10),
        citadel_authz::cli::client::check(
            format!("http://{}", f.server.grpc),
            citadel_authz::cli::client::check_request("GET", "/api/me", &headers),
        ),
    )
    .await
    .expect("plain-text attempt must fail, not hang");
    assert!(plain.is_err(), "plain text answered: {plain:?}");

    // A client that does not trust the server's CA refuses it.
    let other = Ca::new("other CA");
    assert!(
        tls_check(f.server.grpc, &[&other], None, &f.token)
            .await
            .is_err()
    );
    f.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_also_refuses_plain_text() {
    let ca = Ca::new("test CA");
    let tls = TlsDir::new(&ca.server(), Some(&ca));
    let f = start(&tls).await;
    let plain = tokio::time::timeout(
        Duration::from_secs(10),
        citadel_authz::cli::client::check(
            format!("http://{}", f.server.grpc),
            citadel_authz::cli::client::check_request("GET", "/api/me", &[]),
        ),
    )
    .await
    .expect("plain-text attempt must fail, not hang");
    assert!(plain.is_err(), "plain text answered: {plain:?}");
    f.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_and_client_ca_reload_from_disk_without_restart() {
    let old_ca = Ca::new("old CA");
    let new_ca = Ca::new("new CA");
    let tls = TlsDir::new(&old_ca.server(), Some(&old_ca));
    let f = start(&tls).await;
    let addr = f.server.grpc;
    let old_client = old_ca.client("envoy");

    // A connection made before the change.
    let mut tls_cfg = ClientTlsConfig::new()
        .domain_name("localhost")
        .ca_certificate(Certificate::from_pem(old_ca.pem()));
    tls_cfg = tls_cfg.identity(Identity::from_pem(&old_client.cert, &old_client.key));
    let before = Channel::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls_cfg)
        .unwrap()
        .connect()
        .await
        .unwrap();
    assert_eq!(
        status_of(&call(before.clone(), &f.token).await.unwrap()),
        200
    );

    // A client trusting only the new CA is refused: the server still shows the old certificate.
    assert!(
        tls_check(addr, &[&new_ca], Some(&old_client), &f.token)
            .await
            .is_err()
    );

    // Replace the server certificate (issued by the new CA), its key, and the client CA.
    let new_server = new_ca.server();
    replace_file(&tls.path("server.pem"), &new_server.cert);
    replace_file(&tls.path("server.key"), &new_server.key);
    replace_file(&tls.path("client-ca.pem"), &new_ca.pem());

    let new_client = new_ca.client("envoy");
    let r = eventually(
        Duration::from_secs(15),
        "new certificates in use",
        || async {
            tls_check(addr, &[&new_ca], Some(&new_client), &f.token)
                .await
                .ok()
        },
    )
    .await;
    assert_eq!(status_of(&r), 200);

    // New connections: the old server certificate and the old client CA are gone.
    assert!(
        tls_check(addr, &[&old_ca], Some(&old_client), &f.token)
            .await
            .is_err()
    );
    assert!(
        tls_check(addr, &[&new_ca], Some(&old_client), &f.token)
            .await
            .is_err()
    );
    // The connection made before the reload was not cut.
    assert_eq!(status_of(&call(before, &f.token).await.unwrap()), 200);

    // A broken replacement is refused; the last good certificates stay in use.
    replace_file(&tls.path("server.pem"), "not a certificate");
    // Nothing observable to wait for, so wait out a few polls of the watcher.
    for _ in 0..3 {
        tokio::time::sleep(citadel_authz::serve::tls::RELOAD_INTERVAL).await;
        let r = tls_check(addr, &[&new_ca], Some(&new_client), &f.token)
            .await
            .unwrap();
        assert_eq!(status_of(&r), 200);
    }
    f.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_or_invalid_certificates_fail_at_start() {
    let ca = Ca::new("test CA");
    let key = key(Algorithm::ES256, "k1");
    let jwks = JwksServer::start(&[&key]).await;

    let tls = TlsDir::new(&ca.server(), Some(&ca));
    std::fs::write(tls.path("server.key"), "-----BEGIN PRIVATE KEY-----\n").unwrap();
    let yaml = tls.config(&config_yaml(&jwks, "  refresh_min: 30s"));
    // Caught by config validation (so by `check-config` too), naming the field and the file.
    let err = citadel_authz::Config::from_yaml(&yaml, Path::new("."))
        .expect_err("a key that is not a key is a config error");
    assert_eq!(err.issues.len(), 1, "{err}");
    assert_eq!(err.issues[0].path, "listen.grpc_tls.key");
    assert!(err.issues[0].message.contains("server.key"), "{err}");

    // The binary says so and exits non-zero before serving.
    let tls = TlsDir::new(&ca.server(), Some(&ca));
    std::fs::write(tls.path("client-ca.pem"), "garbage").unwrap();
    let file = tls.path("config.yaml");
    std::fs::write(&file, tls.config(&config_yaml(&jwks, "  refresh_min: 30s"))).unwrap();
    let out = Command::new(authz_bin())
        .args(["serve", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "a config error exits 2");
    let check = Command::new(authz_bin())
        .args(["check-config", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(check.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&check.stderr).contains("listen.grpc_tls.client_ca"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stderr.contains("listen.grpc_tls.client_ca")
            || stdout.contains("listen.grpc_tls.client_ca"),
        "stdout: {stdout}\nstderr: {stderr}"
    );
}

// ---------------------------------------------------------------------------------------------
// Envoy → citadel-authz over mTLS.

/// Envoy with three listeners, each with its own ext_authz cluster to citadel-authz over TLS:
/// `good` presents a client certificate of the client CA, `nocert` none, `rogue` one of another
/// CA. Fail closed, `status_on_error: 503`.
struct TlsEnvoy {
    _guard: ChildGuard,
    _dir: tempfile::TempDir,
    good: SocketAddr,
    nocert: SocketAddr,
    rogue: SocketAddr,
}

fn envoy_listener(name: &str, port: u16, cluster: &str) -> String {
    format!(
        r#"
    - name: {name}
      address:
        socket_address: {{ address: 127.0.0.1, port_value: {port} }}
      filter_chains:
        - filters:
            - name: envoy.filters.network.http_connection_manager
              typed_config:
                "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
                stat_prefix: {name}
                common_http_protocol_options:
                  headers_with_underscores_action: REJECT_REQUEST
                route_config:
                  virtual_hosts:
                    - name: all
                      domains: ["*"]
                      routes:
                        - match: {{ prefix: / }}
                          route: {{ cluster: upstream, timeout: 15s }}
                http_filters:
                  - name: envoy.filters.http.ext_authz
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz
                      transport_api_version: V3
                      grpc_service:
                        envoy_grpc: {{ cluster_name: {cluster} }}
                        timeout: 2s
                      failure_mode_allow: false
                      status_on_error: {{ code: ServiceUnavailable }}
                  - name: envoy.filters.http.router
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
"#
    )
}

/// The `citadel_authz` cluster of the README: HTTP/2 over TLS with ALPN h2, SNI and SAN checked.
fn envoy_cluster(
    name: &str,
    authz: SocketAddr,
    ca: &Path,
    client: Option<(&Path, &Path)>,
) -> String {
    let certs = match client {
        Some((cert, key)) => format!(
            r#"
            tls_certificates:
              - certificate_chain: {{ filename: {} }}
                private_key: {{ filename: {} }}"#,
            cert.display(),
            key.display()
        ),
        None => String::new(),
    };
    format!(
        r#"
    - name: {name}
      type: STATIC
      connect_timeout: 1s
      typed_extension_protocol_options:
        envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
          "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
          explicit_http_config:
            http2_protocol_options: {{}}
      transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
          sni: localhost
          common_tls_context:
            alpn_protocols: [h2]{certs}
            validation_context:
              trusted_ca: {{ filename: {ca} }}
              match_typed_subject_alt_names:
                - san_type: DNS
                  matcher: {{ exact: localhost }}
      load_assignment:
        cluster_name: {name}
        endpoints:
          - lb_endpoints:
              - endpoint:
                  address:
                    socket_address: {{ address: {ip}, port_value: {port} }}
"#,
        ca = ca.display(),
        ip = authz.ip(),
        port = authz.port(),
    )
}

impl TlsEnvoy {
    async fn start(authz: SocketAddr, upstream: SocketAddr, ca: &Ca, rogue_ca: &Ca) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        let ca_file = write("ca.pem", &ca.pem());
        let client = ca.client("envoy");
        let client_cert = write("client.pem", &client.cert);
        let client_key = write("client.key", &client.key);
        let rogue = rogue_ca.client("envoy");
        let rogue_cert = write("rogue.pem", &rogue.cert);
        let rogue_key = write("rogue.key", &rogue.key);

        let ports = [free_port(), free_port(), free_port()];
        let admin = free_port();
        let config = format!(
            r#"
admin:
  address:
    socket_address: {{ address: 127.0.0.1, port_value: {admin} }}
static_resources:
  listeners:{l1}{l2}{l3}
  clusters:{c1}{c2}{c3}
    - name: upstream
      type: STATIC
      connect_timeout: 1s
      load_assignment:
        cluster_name: upstream
        endpoints:
          - lb_endpoints:
              - endpoint:
                  address:
                    socket_address: {{ address: 127.0.0.1, port_value: {up} }}
"#,
            l1 = envoy_listener("good", ports[0], "citadel_authz"),
            l2 = envoy_listener("nocert", ports[1], "citadel_authz_nocert"),
            l3 = envoy_listener("rogue", ports[2], "citadel_authz_rogue"),
            c1 = envoy_cluster(
                "citadel_authz",
                authz,
                &ca_file,
                Some((&client_cert, &client_key))
            ),
            c2 = envoy_cluster("citadel_authz_nocert", authz, &ca_file, None),
            c3 = envoy_cluster(
                "citadel_authz_rogue",
                authz,
                &ca_file,
                Some((&rogue_cert, &rogue_key))
            ),
            up = upstream.port(),
        );
        let config_file = write("envoy.yaml", &config);
        let guard = start_envoy(&config_file, admin).await;
        let addr = |p: u16| -> SocketAddr { format!("127.0.0.1:{p}").parse().unwrap() };
        for p in ports {
            wait_port(addr(p), "envoy listener").await;
        }
        TlsEnvoy {
            _guard: guard,
            _dir: dir,
            good: addr(ports[0]),
            nocert: addr(ports[1]),
            rogue: addr(ports[2]),
        }
    }
}

async fn get(addr: SocketAddr, token: &str) -> (u16, String) {
    let r = reqwest::Client::new()
        .get(format!("http://{addr}/api/me"))
        .bearer_auth(token)
        .timeout(Duration::from_secs(15))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_talks_to_citadel_authz_over_mtls() {
    let ca = Ca::new("test CA");
    let rogue_ca = Ca::new("rogue CA");
    let tls = TlsDir::new(&ca.server(), Some(&ca));
    let f = start(&tls).await;
    let upstream = EchoUpstream::start().await;
    let envoy = TlsEnvoy::start(f.server.grpc, upstream.addr, &ca, &rogue_ca).await;

    let (status, body) = get(envoy.good, &f.token).await;
    assert_eq!(status, 200, "{body}");
    let echo: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(echoed(&echo, "x-user-id"), ["alice"]);
    assert_eq!(echoed(&echo, "x-tenant-id"), ["acme"]);

    // A denial decided by citadel-authz comes back through the TLS connection as usual.
    let (status, _) = get(envoy.good, "not.a.token").await;
    assert_eq!(status, 401);

    // The server refuses Envoy's connection: ext_authz fails closed with status_on_error.
    let (status, body) = get(envoy.nocert, &f.token).await;
    assert_eq!(status, 503, "no client certificate: {body}");
    assert!(
        !body.contains("\"headers\""),
        "reached the upstream: {body}"
    );
    let (status, body) = get(envoy.rogue, &f.token).await;
    assert_eq!(status, 503, "rogue client certificate: {body}");
    assert!(
        !body.contains("\"headers\""),
        "reached the upstream: {body}"
    );

    // The good path still works after the refusals.
    let (status, _) = get(envoy.good, &f.token).await;
    assert_eq!(status, 200);
    f.server.stop().await;
}
