//! Issue #4, gateway-agnostic: the sample configs in `gateways/` run for real (nginx
//! `auth_request`, Caddy `forward_auth`, Envoy ext_authz `http_service`) in front of an echo
//! upstream, and one table of cases is played through each of them and straight through the gRPC
//! API (no gateway). Every gateway must give the client the same status as the decision says and
//! hand the upstream exactly the identity the token proves — never a client's own copy. Where a
//! gateway really differs, the row says so for that gateway, with the reason.
//!
//! Also here: the forward-auth endpoint spoken to directly (header pairs, the path-prefix form,
//! `trusted_proxies`), and every gateway failing closed when citadel-authz is down.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use envoy_types::ext_authz::v3::pb::HttpResponse;
use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use jsonwebtoken::Algorithm;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

// ---------------------------------------------------------------------------------------------
// The table

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gw {
    Nginx,
    Caddy,
    EnvoyHttp,
    /// Straight to the gRPC ext_authz API, as Envoy asks it; the upstream's view is what Envoy
    /// would make of the CheckResponse.
    Grpc,
}

/// Which token a case sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tok {
    None,
    /// bob, tenant acme, roles [reader, member]
    Reader,
    /// alice, tenant acme, roles [admin]
    Admin,
    /// carol, no tenant claim, roles [reader]
    NoTenant,
    /// signed by the right key, expired an hour ago
    Expired,
    /// from the issuer whose JWKS cannot be fetched
    KeysDown,
    /// two Authorization headers (reader + admin)
    Two,
    /// the reader's token after `Bearer<TAB>`
    TabReader,
    /// tenant claim `acme,globex`, roles [reader]
    ListTenant,
}

/// What the upstream must see for one identity header.
type Id = Option<&'static str>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Www {
    Absent,
    Exact(&'static str),
    Prefix(&'static str),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Reaches the upstream, unchanged method and target, with exactly these identity headers
    /// (one each, or none at all — also no `_` variant of the name).
    Allow { user: Id, tenant: Id, roles: Id },
    /// Stopped before the upstream: this status, WWW-Authenticate, and a JSON body with this
    /// `error` (`None`: the body is the gateway's own, not JSON).
    Deny {
        status: u16,
        www: Www,
        error: Option<&'static str>,
        /// A positive `Retry-After` (else: none).
        retry_after: bool,
    },
    /// The case cannot happen for this gateway; why.
    NotApplicable(&'static str),
}

struct Case {
    name: &'static str,
    method: &'static str,
    target: &'static str,
    token: Tok,
    headers: &'static [(&'static str, &'static str)],
    expect: Expect,
    /// Per-gateway departures from `expect`, each one explained where the table is written.
    except: &'static [(Gw, Expect)],
}

const BOB: Expect = Expect::Allow {
    user: Some("bob"),
    tenant: Some("acme"),
    roles: Some("reader,member"),
};
const NO_IDENTITY: Expect = Expect::Allow {
    user: None,
    tenant: None,
    roles: None,
};
const UNAUTHORIZED: Expect = Expect::Deny {
    status: 401,
    www: Www::Exact(r#"Bearer realm="citadel""#),
    retry_after: false,
    error: Some("unauthorized"),
};
const INVALID_TOKEN: Expect = Expect::Deny {
    status: 401,
    www: Www::Prefix(r#"Bearer realm="citadel", error="invalid_token", error_description=""#),
    retry_after: false,
    error: Some("invalid_token"),
};
const INSUFFICIENT_SCOPE: Expect = Expect::Deny {
    status: 403,
    www: Www::Exact(r#"Bearer realm="citadel", error="insufficient_scope""#),
    retry_after: false,
    error: Some("insufficient_scope"),
};
const FORBIDDEN: Expect = Expect::Deny {
    status: 403,
    www: Www::Absent,
    retry_after: false,
    error: Some("forbidden"),
};
const BAD_REQUEST: Expect = Expect::Deny {
    status: 400,
    www: Www::Absent,
    retry_after: false,
    error: Some("invalid_request"),
};
const UNAVAILABLE: Expect = Expect::Deny {
    status: 503,
    www: Www::Absent,
    retry_after: true,
    error: Some("temporarily_unavailable"),
};

/// A client trying to be someone else: every identity header, twice, in odd spellings.
const SPOOF: &[(&str, &str)] = &[
    ("X-User-ID", "mallory"),
    ("x-user-id", "root"),
    ("X-Tenant-ID", "globex"),
    ("X-User-Roles", "admin"),
    ("x-user-roles", "admin,reader"),
];

/// A client describing a different (public) request in the forward-auth headers itself.
const SMUGGLED_TARGET: &[(&str, &str)] = &[
    ("X-Forwarded-Method", "GET"),
    ("X-Forwarded-Uri", "/healthz"),
    ("X-Original-Method", "GET"),
    ("X-Original-URI", "/healthz"),
];

const CASES: &[Case] = &[
    Case {
        name: "allowed: identity from the token",
        method: "GET",
        target: "/api/orders/42?expand=lines",
        token: Tok::Reader,
        headers: &[],
        expect: BOB,
        except: &[],
    },
    Case {
        name: "allowed: client's identity headers are overwritten",
        method: "GET",
        target: "/api/orders/42",
        token: Tok::Reader,
        headers: SPOOF,
        expect: BOB,
        except: &[],
    },
    Case {
        name: "allowed: tenant param matches",
        method: "GET",
        target: "/api/tenants/acme/files",
        token: Tok::Reader,
        headers: SPOOF,
        expect: BOB,
        except: &[],
    },
    Case {
        name: "allowed: claim absent → client's header removed, not passed on",
        method: "GET",
        target: "/api/me",
        token: Tok::NoTenant,
        headers: SPOOF,
        expect: Expect::Allow {
            user: Some("carol"),
            tenant: None,
            roles: Some("reader"),
        },
        except: &[],
    },
    Case {
        name: "public route: no identity, client's copies removed",
        method: "GET",
        target: "/healthz",
        token: Tok::Reader,
        headers: SPOOF,
        expect: NO_IDENTITY,
        except: &[],
    },
    Case {
        name: "public route: an invalid token does not matter",
        method: "GET",
        target: "/healthz",
        token: Tok::Expired,
        headers: SPOOF,
        expect: NO_IDENTITY,
        except: &[],
    },
    Case {
        name: "no token → 401",
        method: "GET",
        target: "/api/orders/42",
        token: Tok::None,
        headers: &[],
        expect: UNAUTHORIZED,
        except: &[],
    },
    Case {
        name: "not Bearer → 401",
        method: "GET",
        target: "/api/orders/42",
        token: Tok::None,
        headers: &[("Authorization", "Basic Ym9iOmJvYg==")],
        expect: UNAUTHORIZED,
        except: &[],
    },
    Case {
        name: "bad (expired) token → 401 invalid_token",
        method: "GET",
        target: "/api/orders/42",
        token: Tok::Expired,
        headers: &[],
        expect: INVALID_TOKEN,
        except: &[],
    },
    Case {
        name: "wrong role → 403 insufficient_scope",
        method: "GET",
        target: "/api/admin/users",
        token: Tok::Reader,
        headers: SPOOF,
        expect: INSUFFICIENT_SCOPE,
        except: &[],
    },
    Case {
        name: "wrong tenant → 403",
        method: "GET",
        target: "/api/tenants/globex/files",
        token: Tok::Reader,
        headers: &[],
        expect: FORBIDDEN,
        except: &[],
    },
    Case {
        name: "no rule matches → 403 (with a token)",
        method: "GET",
        target: "/api/unknown",
        token: Tok::Admin,
        headers: &[],
        expect: FORBIDDEN,
        except: &[],
    },
    Case {
        name: "no rule matches → 403 (without a token)",
        method: "GET",
        target: "/api/unknown",
        token: Tok::None,
        headers: &[],
        expect: FORBIDDEN,
        except: &[],
    },
    Case {
        name: "method not in the rule → no rule → 403",
        method: "DELETE",
        target: "/api/orders/42",
        token: Tok::Reader,
        headers: &[],
        expect: FORBIDDEN,
        except: &[],
    },
    Case {
        name: "admin allowed on its own route",
        method: "GET",
        target: "/api/admin/users",
        token: Tok::Admin,
        headers: SPOOF,
        expect: Expect::Allow {
            user: Some("alice"),
            tenant: Some("acme"),
            roles: Some("admin"),
        },
        except: &[],
    },
    Case {
        name: "client-made forward-auth headers are not believed",
        method: "GET",
        target: "/api/admin/users",
        token: Tok::None,
        headers: SMUGGLED_TARGET,
        expect: UNAUTHORIZED,
        except: &[],
    },
    // Path tricks: each would be *allowed* for this token once normalised, so a gateway that
    // judged one form and proxied another would show up here as an Allow.
    Case {
        name: "path trick: encoded dot segments",
        method: "GET",
        target: "/api/admin/%2e%2e/orders/42",
        token: Tok::Reader,
        headers: &[],
        expect: BAD_REQUEST,
        except: &[],
    },
    Case {
        name: "path trick: encoded dot segments into admin",
        method: "GET",
        target: "/api/orders/%2e%2e/admin",
        token: Tok::Admin,
        headers: &[],
        expect: BAD_REQUEST,
        except: &[],
    },
    Case {
        name: "path trick: literal dot segments",
        method: "GET",
        target: "/api/admin/../orders/42",
        token: Tok::Reader,
        headers: &[],
        expect: BAD_REQUEST,
        except: &[],
    },
    Case {
        name: "path trick: empty segment",
        method: "GET",
        target: "/api//orders",
        token: Tok::Reader,
        headers: &[],
        expect: BAD_REQUEST,
        except: &[],
    },
    Case {
        name: "path trick: encoded slash",
        method: "GET",
        target: "/api/orders%2F42",
        token: Tok::Reader,
        headers: &[],
        expect: BAD_REQUEST,
        except: &[],
    },
    Case {
        name: "path trick: semicolon",
        method: "GET",
        target: "/api/orders/42;x=1",
        token: Tok::Reader,
        headers: &[],
        expect: BAD_REQUEST,
        except: &[],
    },
    Case {
        name: "path trick: double encoding",
        method: "GET",
        target: "/api/orders/%252e%252e/admin",
        token: Tok::Reader,
        headers: &[],
        expect: BAD_REQUEST,
        except: &[],
    },
    Case {
        name: "lower-case method → 400, never matched",
        method: "get",
        target: "/api/orders/42",
        token: Tok::Reader,
        headers: &[],
        expect: BAD_REQUEST,
        // nginx accepts only upper-case letters, `_` and `-` in a method, and Envoy's HTTP/1
        // codec refuses a lower-case one: each answers its own 400 (HTML / text body) before
        // asking citadel-authz. Caddy passes `get` on in X-Forwarded-Method: our 400.
        except: &[
            (
                Gw::Nginx,
                Expect::Deny {
                    status: 400,
                    www: Www::Absent,
                    error: None,
                    retry_after: false,
                },
            ),
            (
                Gw::EnvoyHttp,
                Expect::Deny {
                    status: 400,
                    www: Www::Absent,
                    error: None,
                    retry_after: false,
                },
            ),
        ],
    },
    Case {
        name: "Bearer<TAB>token → 401 invalid_token",
        method: "GET",
        target: "/api/orders/42",
        token: Tok::TabReader,
        headers: &[],
        expect: INVALID_TOKEN,
        except: &[],
    },
    Case {
        name: "tenant claim with a comma → 401 invalid_token",
        method: "GET",
        target: "/api/orders/42",
        token: Tok::ListTenant,
        headers: &[],
        expect: INVALID_TOKEN,
        except: &[],
    },
    Case {
        name: "several Authorization values → 400",
        method: "GET",
        target: "/api/orders/42",
        token: Tok::Two,
        headers: &[],
        expect: BAD_REQUEST,
        // nginx refuses a repeated Authorization header itself ("client sent duplicate header
        // line"): its own 400 with an HTML body, before auth_request runs.
        except: &[(
            Gw::Nginx,
            Expect::Deny {
                status: 400,
                www: Www::Absent,
                error: None,
                retry_after: false,
            },
        )],
    },
    Case {
        name: "signing keys unavailable → 503 + Retry-After",
        method: "GET",
        target: "/api/orders/42",
        token: Tok::KeysDown,
        headers: &[],
        expect: UNAVAILABLE,
        // Envoy's HTTP ext_authz client treats any 5xx answer as a failed call, not a denial:
        // the client gets `status_on_error` (the sample sets 503; Envoy's default would be 403)
        // with an empty body and without Retry-After. The gRPC ext_authz API carries all of it.
        except: &[(
            Gw::EnvoyHttp,
            Expect::Deny {
                status: 503,
                www: Www::Absent,
                error: None,
                retry_after: false,
            },
        )],
    },
    Case {
        name: "underscore variant of an identity header",
        method: "GET",
        target: "/api/orders/42",
        token: Tok::Reader,
        headers: &[("x_user_id", "mallory"), ("X_Tenant_ID", "globex")],
        expect: BOB,
        except: &[
            // headers_with_underscores_action: REJECT_REQUEST — Envoy's own 400 (text body),
            // before ext_authz runs.
            (
                Gw::EnvoyHttp,
                Expect::Deny {
                    status: 400,
                    www: Www::Absent,
                    retry_after: false,
                    error: None,
                },
            ),
            // nginx (underscores_in_headers off) and Caddy (`request_header -*_*`) drop the
            // header and go on: BOB, no `_` variant at the upstream.
            (
                Gw::Grpc,
                Expect::NotApplicable(
                    "underscore names are the gateway's to reject (SPEC §4); Envoy's sample \
                     rejects them before a CheckRequest exists",
                ),
            ),
        ],
    },
];

impl Case {
    fn expect_for(&self, gw: Gw) -> Expect {
        self.except
            .iter()
            .find(|(g, _)| *g == gw)
            .map_or(self.expect, |(_, e)| *e)
    }
}

// ---------------------------------------------------------------------------------------------
// citadel-authz with real keys

struct Authz {
    server: InProcess,
    reader: String,
    admin: String,
    no_tenant: String,
    expired: String,
    keys_down: String,
    list_tenant: String,
    _jwks: JwksServer,
}

impl Authz {
    /// Issuer `iam` (working JWKS) and issuer `down` (JWKS always 500): `extra` is YAML appended
    /// at the top level.
    async fn start(extra: &str) -> Authz {
        let key = key(Algorithm::ES256, "iam-1");
        let jwks = JwksServer::start(&[&key]).await;
        let down_key = crate::support::key(Algorithm::ES256, "down-1");
        let down = JwksServer::start(&[&down_key]).await;
        down.set_mode(Mode::Fail);
        let yaml = format!(
            r#"
listen: {{ grpc: 127.0.0.1:0, http: 127.0.0.1:0 }}
issuers:
  - name: iam
    issuer: {iss}
    jwks_uri: {uri}
    audiences: [api]
    algorithms: [ES256]
  - name: down
    issuer: {down_iss}
    jwks_uri: {down_uri}
    audiences: [api]
    algorithms: [ES256]
jwks: {{ refresh_min: 30s, fetch_timeout: 500ms }}
{extra}
policy:
{POLICY}
"#,
            iss = jwks.issuer(),
            uri = jwks.jwks_uri(),
            down_iss = down.issuer(),
            down_uri = down.jwks_uri(),
        );
        let server = InProcess::start(&yaml).await;
        let iss = jwks.issuer();
        let mut no_tenant = claims(&iss, "carol", "-", &["reader"]);
        no_tenant.as_object_mut().unwrap().remove("tenant_id");
        let mut expired = claims(&iss, "bob", "acme", &["reader", "member"]);
        expired["iat"] = (now() - 7200).into();
        expired["exp"] = (now() - 3600).into();
        let authz = Authz {
            reader: key.mint(&claims(&iss, "bob", "acme", &["reader", "member"])),
            admin: key.mint(&claims(&iss, "alice", "acme", &["admin"])),
            no_tenant: key.mint(&no_tenant),
            expired: key.mint(&expired),
            keys_down: down_key.mint(&claims(&down.issuer(), "dan", "acme", &["reader"])),
            list_tenant: key.mint(&claims(&iss, "bob", "acme,globex", &["reader"])),
            server,
            _jwks: jwks,
        };
        // Not /readyz: the `down` issuer keeps it at 503 on purpose.
        let token = authz.reader.clone();
        eventually(Duration::from_secs(10), "iam keys loaded", || {
            let server = &authz.server;
            let token = token.clone();
            async move { (status_of(&server.check_token("/api/me", &token).await) == 200).then_some(()) }
        })
        .await;
        authz
    }

    fn authorization(&self, tok: Tok) -> Vec<String> {
        let bearer = |t: &str| format!("Bearer {t}");
        match tok {
            Tok::None => vec![],
            Tok::Reader => vec![bearer(&self.reader)],
            Tok::Admin => vec![bearer(&self.admin)],
            Tok::NoTenant => vec![bearer(&self.no_tenant)],
            Tok::Expired => vec![bearer(&self.expired)],
            Tok::KeysDown => vec![bearer(&self.keys_down)],
            Tok::Two => vec![bearer(&self.reader), bearer(&self.admin)],
            Tok::TabReader => vec![format!("Bearer\t{}", self.reader)],
            Tok::ListTenant => vec![bearer(&self.list_tenant)],
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A raw HTTP/1.1 client: the request target goes on the wire byte for byte (an URL library
// would resolve `%2e%2e` and friends before the gateway ever saw them).

#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

async fn send(addr: SocketAddr, method: &str, target: &str, headers: &[(String, String)]) -> Reply {
    let mut req = format!("{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    let fut = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.write_all(req.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.unwrap();
        raw
    };
    let raw = tokio::time::timeout(Duration::from_secs(15), fut)
        .await
        .unwrap_or_else(|_| panic!("no answer from {addr} to {method} {target}"));
    parse_reply(&raw)
}

fn parse_reply(raw: &[u8]) -> Reply {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {:?}", String::from_utf8_lossy(raw)));
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut body = raw[split + 4..].to_vec();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    let status: u16 = status_line.split(' ').nth(1).unwrap().parse().unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    if chunked {
        body = dechunk(&body);
    }
    Reply {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = data.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size_text = String::from_utf8_lossy(&data[..eol]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16).unwrap();
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&data[eol + 2..eol + 2 + size]);
        data = &data[eol + 2 + size + 2..];
    }
}

// ---------------------------------------------------------------------------------------------
// Gateways as real processes, from the sample files with only ports/paths substituted

/// A binary the tests need from the system (`install-test-deps.sh` installs it): `env` names an
/// override. Missing is a failure with a clear message, never a skip.
fn system_bin(name: &str, env: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env) {
        return PathBuf::from(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs = std::env::split_paths(&path).chain(["/usr/sbin".into(), "/usr/local/sbin".into()]);
    for dir in dirs {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!("{name} not found (PATH, /usr/sbin; or set {env}) — run ./scripts/install-test-deps.sh");
}

struct Gateway {
    addr: SocketAddr,
    child: ChildGuard,
    _dir: tempfile::TempDir,
}

impl Drop for Gateway {
    /// SIGTERM first, then ChildGuard's SIGKILL: a SIGKILLed nginx master leaves its worker
    /// processes running (and listening) with no parent; on SIGTERM it stops them itself.
    fn drop(&mut self) {
        if self.child.terminate(Duration::from_secs(10)).is_none() {
            eprintln!("{} did not stop on SIGTERM within 10s", self.child.name);
        }
    }
}

/// Start `gw` listening on a free port, proxying to `upstream` and asking `authz_http`.
async fn start_gateway(gw: Gw, authz_http: SocketAddr, upstream: SocketAddr) -> Gateway {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let log = dir.path().join(format!("{gw:?}.log"));
    let child = match gw {
        Gw::Nginx => {
            let conf = render_sample(
                "gateways/nginx.conf",
                &[
                    ("listen 127.0.0.1:8000;", format!("listen {addr};")),
                    (
                        "proxy_pass http://127.0.0.1:8080;",
                        format!("proxy_pass http://{upstream};"),
                    ),
                    (
                        "proxy_pass http://127.0.0.1:9192/api/iam/check-access;",
                        format!("proxy_pass http://{authz_http}/api/iam/check-access;"),
                    ),
                ],
            );
            let file = dir.path().join("nginx.conf");
            std::fs::write(&file, conf).unwrap();
            let mut cmd = Command::new(system_bin("nginx", "CITADEL_TEST_NGINX"));
            cmd.arg("-p")
                .arg(dir.path())
                .arg("-c")
                .arg(&file)
                .args(["-g", "daemon off;"]);
            ChildGuard::spawn("nginx", cmd, log)
        }
        Gw::Caddy => {
            let conf = render_sample(
                "gateways/Caddyfile",
                &[
                    ("http://127.0.0.1:8000 {", format!("http://{addr} {{")),
                    (
                        "forward_auth 127.0.0.1:9192 {",
                        format!("forward_auth {authz_http} {{"),
                    ),
                    (
                        "reverse_proxy 127.0.0.1:8080",
                        format!("reverse_proxy {upstream}"),
                    ),
                ],
            );
            let file = dir.path().join("Caddyfile");
            std::fs::write(&file, conf).unwrap();
            let mut cmd = Command::new(system_bin("caddy", "CITADEL_TEST_CADDY"));
            cmd.args(["run", "--adapter", "caddyfile", "--config"])
                .arg(&file)
                .env("HOME", dir.path())
                .env("XDG_DATA_HOME", dir.path().join("data"))
                .env("XDG_CONFIG_HOME", dir.path().join("config"));
            ChildGuard::spawn("caddy", cmd, log)
        }
        Gw::EnvoyHttp => {
            let conf = render_sample(
                "gateways/envoy-http.yaml",
                &[
                    ("port_value: 8000 }", format!("port_value: {port} }}")),
                    (
                        "port_value: 8080 }",
                        format!("port_value: {} }}", upstream.port()),
                    ),
                    (
                        "port_value: 9192 }",
                        format!("port_value: {} }}", authz_http.port()),
                    ),
                    (
                        "uri: http://127.0.0.1:9192",
                        format!("uri: http://{authz_http}"),
                    ),
                ],
            );
            let file = dir.path().join("envoy-http.yaml");
            std::fs::write(&file, conf).unwrap();
            ChildGuard::spawn("envoy", envoy_command(&file), log)
        }
        Gw::Grpc => unreachable!("no gateway process for gRPC"),
    };
    wait_port(addr, &format!("{gw:?} listening on {addr}")).await;
    Gateway {
        addr,
        child,
        _dir: dir,
    }
}

// ---------------------------------------------------------------------------------------------
// Playing the table

/// What one case looked like from outside: the client's answer, and (allowed) what the upstream
/// received.
struct Seen {
    status: u16,
    www: Vec<String>,
    retry_after: Vec<String>,
    /// The denial's JSON body, if it was JSON.
    denial: Option<Value>,
    /// Allowed: what the upstream got.
    upstream: Option<Upstream>,
}

/// A request as the echo upstream received it.
struct Upstream {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
}

fn request_headers(authz: &Authz, case: &Case) -> Vec<(String, String)> {
    let mut headers: Vec<(String, String)> = authz
        .authorization(case.token)
        .into_iter()
        .map(|v| ("Authorization".to_owned(), v))
        .collect();
    headers.extend(
        case.headers
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    headers
}

async fn through_gateway(gw: &Gateway, authz: &Authz, case: &Case) -> Seen {
    let reply = send(
        gw.addr,
        case.method,
        case.target,
        &request_headers(authz, case),
    )
    .await;
    let json: Option<Value> = serde_json::from_str(&reply.body).ok();
    let echo = json
        .as_ref()
        .filter(|j| j.get("headers").is_some() && j.get("method").is_some());
    Seen {
        status: reply.status,
        www: reply
            .header_all("www-authenticate")
            .into_iter()
            .map(str::to_owned)
            .collect(),
        retry_after: reply
            .header_all("retry-after")
            .into_iter()
            .map(str::to_owned)
            .collect(),
        upstream: echo.map(|e| {
            let headers = e["headers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|h| {
                    (
                        h[0].as_str().unwrap().to_owned(),
                        h[1].as_str().unwrap().to_owned(),
                    )
                })
                .collect();
            Upstream {
                method: e["method"].as_str().unwrap().to_owned(),
                target: e["path"].as_str().unwrap().to_owned(),
                headers,
            }
        }),
        denial: if echo.is_some() { None } else { json },
    }
}

/// The gRPC API, and what Envoy would do with its answer: remove `headers_to_remove`, then apply
/// the set headers by their append action.
async fn through_grpc(authz: &Authz, case: &Case) -> Seen {
    let headers = request_headers(authz, case);
    let pairs: Vec<(&str, &str)> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let resp = authz.server.check(case.method, case.target, &pairs).await;
    let header_values = |name: &str| header_of(&resp, name).into_iter().collect::<Vec<_>>();
    match &resp.http_response {
        Some(HttpResponse::OkResponse(ok)) => {
            let mut upstream: Vec<(String, String)> = headers
                .iter()
                .filter(|(k, _)| {
                    !ok.headers_to_remove
                        .iter()
                        .any(|r| r.eq_ignore_ascii_case(k))
                })
                .cloned()
                .collect();
            for opt in &ok.headers {
                let h = opt.header.as_ref().unwrap();
                let action = HeaderAppendAction::try_from(opt.append_action).unwrap();
                match action {
                    HeaderAppendAction::OverwriteIfExistsOrAdd => {
                        upstream.retain(|(k, _)| !k.eq_ignore_ascii_case(&h.key));
                        upstream.push((h.key.clone(), h.value.clone()));
                    }
                    HeaderAppendAction::AppendIfExistsOrAdd => {
                        upstream.push((h.key.clone(), h.value.clone()))
                    }
                    other => panic!("unexpected append action {other:?} for {}", h.key),
                }
            }
            Seen {
                status: 200,
                www: vec![],
                retry_after: vec![],
                denial: None,
                upstream: Some(Upstream {
                    method: case.method.to_owned(),
                    target: case.target.to_owned(),
                    headers: upstream,
                }),
            }
        }
        Some(HttpResponse::DeniedResponse(_)) => Seen {
            status: status_of(&resp),
            www: header_values("www-authenticate"),
            retry_after: header_values("retry-after"),
            denial: Some(body_of(&resp)),
            upstream: None,
        },
        _ => panic!("no usable http_response: {resp:?}"),
    }
}

/// Every value the upstream got for identity header `name`, counting `_` spellings as the same
/// name (an upstream may fold them together).
fn identity_values(headers: &[(String, String)], name: &str) -> Vec<String> {
    headers
        .iter()
        .filter(|(k, _)| k.replace('_', "-").eq_ignore_ascii_case(name))
        .map(|(_, v)| v.clone())
        .collect()
}

/// Problems with one case's outcome (empty: as expected).
fn judge(case: &Case, expect: Expect, seen: &Seen) -> Vec<String> {
    let mut problems = Vec::new();
    match expect {
        Expect::NotApplicable(_) => {}
        Expect::Allow {
            user,
            tenant,
            roles,
        } => {
            if seen.status != 200 {
                problems.push(format!(
                    "status {} (want 200); body {:?}",
                    seen.status, seen.denial
                ));
            }
            let Some(Upstream {
                method,
                target,
                headers,
            }) = &seen.upstream
            else {
                problems.push("the upstream was not reached".to_owned());
                return problems;
            };
            if method != case.method || target != case.target {
                problems.push(format!(
                    "upstream got {method} {target}, but {} {} was judged",
                    case.method, case.target
                ));
            }
            for (name, want) in [
                ("x-user-id", user),
                ("x-tenant-id", tenant),
                ("x-user-roles", roles),
            ] {
                let got = identity_values(headers, name);
                let want: Vec<String> = want.iter().map(|s| (*s).to_owned()).collect();
                if got != want {
                    problems.push(format!("upstream {name}: got {got:?}, want {want:?}"));
                }
            }
        }
        Expect::Deny {
            status,
            www,
            error,
            retry_after,
        } => {
            if seen.upstream.is_some() {
                problems.push("the upstream was reached".to_owned());
            }
            if seen.status != status {
                problems.push(format!(
                    "status {} (want {status}); body {:?}",
                    seen.status, seen.denial
                ));
            }
            let www_ok = match www {
                Www::Absent => seen.www.is_empty(),
                Www::Exact(w) => seen.www == [w],
                Www::Prefix(p) => seen.www.len() == 1 && seen.www[0].starts_with(p),
            };
            if !www_ok {
                problems.push(format!("WWW-Authenticate {:?}, want {www:?}", seen.www));
            }
            let retry_ok = if retry_after {
                seen.retry_after.len() == 1
                    && seen.retry_after[0].parse::<u64>().is_ok_and(|s| s > 0)
            } else {
                seen.retry_after.is_empty()
            };
            if !retry_ok {
                problems.push(format!("Retry-After {:?}", seen.retry_after));
            }
            match error {
                Some(e) => {
                    let got = seen.denial.as_ref().and_then(|d| d["error"].as_str());
                    if got != Some(e) {
                        problems.push(format!(
                            "body error {got:?}, want {e:?} (body {:?})",
                            seen.denial
                        ));
                    }
                }
                None => {
                    if seen.denial.is_some() {
                        problems.push(format!(
                            "expected the gateway's own body, got {:?}",
                            seen.denial
                        ));
                    }
                }
            }
        }
    }
    problems
}

async fn run_table(gw: Gw) {
    let authz = Authz::start("").await;
    let upstream = EchoUpstream::start().await;
    let gateway = match gw {
        Gw::Grpc => None,
        _ => Some(start_gateway(gw, authz.server.http, upstream.addr).await),
    };
    let mut failures = Vec::new();
    for case in CASES {
        let expect = case.expect_for(gw);
        if let Expect::NotApplicable(why) = expect {
            eprintln!("{gw:?}: {:<55} not applicable: {why}", case.name);
            continue;
        }
        let seen = match &gateway {
            Some(g) => through_gateway(g, &authz, case).await,
            None => through_grpc(&authz, case).await,
        };
        let problems = judge(case, expect, &seen);
        if problems.is_empty() {
            eprintln!("{gw:?}: {:<55} ok ({})", case.name, seen.status);
        } else {
            failures.push(format!(
                "{gw:?}: {} — {} {}:\n    {}",
                case.name,
                case.method,
                case.target,
                problems.join("\n    ")
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} case(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn table_through_nginx_auth_request() {
    run_table(Gw::Nginx).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn table_through_caddy_forward_auth() {
    run_table(Gw::Caddy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn table_through_envoy_http_ext_authz() {
    run_table(Gw::EnvoyHttp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn table_through_grpc_directly() {
    run_table(Gw::Grpc).await;
}

// ---------------------------------------------------------------------------------------------
// Gateways fail closed

/// citadel-authz not running at all: every sample stops the request. nginx answers 500 (its
/// auth_request maps a failed subrequest to 500), Caddy 502 (forward_auth is a reverse_proxy),
/// Envoy 503 (`status_on_error`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateways_fail_closed_when_authz_is_down() {
    let upstream = EchoUpstream::start().await;
    let nobody: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    for (gw, status) in [(Gw::Nginx, 500), (Gw::Caddy, 502), (Gw::EnvoyHttp, 503)] {
        let gateway = start_gateway(gw, nobody, upstream.addr).await;
        let reply = send(
            gateway.addr,
            "GET",
            "/api/orders/42",
            &[("Authorization".to_owned(), "Bearer x.y.z".to_owned())],
        )
        .await;
        assert_eq!(reply.status, status, "{gw:?}: {reply:?}");
        assert!(
            !reply.body.contains("\"headers\""),
            "{gw:?} reached the upstream: {reply:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The forward-auth endpoint spoken to directly

fn hdrs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn error_of(reply: &Reply) -> String {
    let v: Value = serde_json::from_str(&reply.body).unwrap_or_else(|e| panic!("{e}: {reply:?}"));
    v["error"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_auth_endpoint_directly() {
    let authz = Authz::start("").await;
    let http = authz.server.http;
    let bearer = format!("Bearer {}", authz.reader);

    // Neither header pair: 400, never judged by the endpoint's own path.
    for method in ["GET", "POST"] {
        let r = send(
            http,
            method,
            "/api/iam/check-access",
            &hdrs(&[("Authorization", &bearer)]),
        )
        .await;
        assert_eq!(
            (r.status, error_of(&r).as_str()),
            (400, "invalid_request"),
            "{method}: {r:?}"
        );
    }
    // Half a pair: 400.
    let r = send(
        http,
        "GET",
        "/api/iam/check-access",
        &hdrs(&[("X-Forwarded-Uri", "/api/me"), ("Authorization", &bearer)]),
    )
    .await;
    assert_eq!(r.status, 400, "{r:?}");

    // Both pairs, disagreeing: 400 — whichever one a client added, neither is believed.
    let r = send(
        http,
        "GET",
        "/api/iam/check-access",
        &hdrs(&[
            ("X-Forwarded-Method", "GET"),
            ("X-Forwarded-Uri", "/healthz"),
            ("X-Original-Method", "GET"),
            ("X-Original-URI", "/api/admin/users"),
            ("Authorization", &bearer),
        ]),
    )
    .await;
    assert_eq!(
        (r.status, error_of(&r).as_str()),
        (400, "invalid_request"),
        "{r:?}"
    );

    // Both pairs, agreeing: judged.
    let r = send(
        http,
        "POST",
        "/api/iam/check-access",
        &hdrs(&[
            ("X-Forwarded-Method", "GET"),
            ("X-Forwarded-Uri", "/api/orders/42"),
            ("X-Original-Method", "GET"),
            ("X-Original-URI", "/api/orders/42"),
            ("Authorization", &bearer),
        ]),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");

    // Each pair alone: allowed → 200 with the identity as response headers.
    for pair in [
        ("X-Forwarded-Method", "X-Forwarded-Uri"),
        ("X-Original-Method", "X-Original-URI"),
    ] {
        let r = send(
            http,
            "GET",
            "/api/iam/check-access",
            &hdrs(&[
                (pair.0, "GET"),
                (pair.1, "/api/tenants/acme/files?x=1"),
                ("Authorization", &bearer),
            ]),
        )
        .await;
        assert_eq!(r.status, 200, "{pair:?}: {r:?}");
        assert_eq!(r.header_all("x-user-id"), ["bob"], "{r:?}");
        assert_eq!(r.header_all("x-tenant-id"), ["acme"], "{r:?}");
        assert_eq!(r.header_all("x-user-roles"), ["reader,member"], "{r:?}");
    }

    // The path-prefix form (Envoy http_service): the method is the request's own.
    let r = send(
        http,
        "GET",
        "/api/iam/check-access/api/orders/42?expand=1",
        &hdrs(&[("Authorization", &bearer)]),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header_all("x-user-id"), ["bob"], "{r:?}");
    let r = send(
        http,
        "DELETE",
        "/api/iam/check-access/api/orders/42",
        &hdrs(&[("Authorization", &bearer)]),
    )
    .await;
    assert_eq!(
        (r.status, error_of(&r).as_str()),
        (403, "forbidden"),
        "DELETE is in no rule: {r:?}"
    );
    let r = send(
        http,
        "GET",
        "/api/iam/check-access/api/admin/%2e%2e/orders/42",
        &hdrs(&[("Authorization", &bearer)]),
    )
    .await;
    assert_eq!(
        (r.status, error_of(&r).as_str()),
        (400, "invalid_request"),
        "{r:?}"
    );
    let r = send(
        http,
        "GET",
        "/api/iam/check-access/healthz",
        &hdrs(&[("X-User-ID", "mallory")]),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        r.header_all("x-user-id").is_empty(),
        "public route answers no identity: {r:?}"
    );

    // Absent claim: that header is not sent at all.
    let r = send(
        http,
        "GET",
        "/api/iam/check-access/api/me",
        &hdrs(&[("Authorization", &format!("Bearer {}", authz.no_tenant))]),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header_all("x-user-id"), ["carol"], "{r:?}");
    assert!(r.header_all("x-tenant-id").is_empty(), "{r:?}");

    // A denial carries the §4 headers and body.
    let r = send(http, "GET", "/api/iam/check-access/api/orders/42", &[]).await;
    assert_eq!(r.status, 401, "{r:?}");
    assert_eq!(
        r.header_all("www-authenticate"),
        [r#"Bearer realm="citadel""#],
        "{r:?}"
    );
    assert_eq!(r.header_all("content-type"), ["application/json"], "{r:?}");
    assert_eq!(error_of(&r), "unauthorized");
}

/// A peer outside `forward_auth.trusted_proxies` is refused in both forms (403 forbidden), even
/// with a valid token for an allowed route; gRPC is not affected by that setting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_auth_refuses_untrusted_peers() {
    let authz = Authz::start("forward_auth:\n  trusted_proxies: [10.0.0.0/8]").await;
    let http = authz.server.http;
    let bearer = format!("Bearer {}", authz.reader);
    let headers_form = send(
        http,
        "GET",
        "/api/iam/check-access",
        &hdrs(&[
            ("X-Forwarded-Method", "GET"),
            ("X-Forwarded-Uri", "/api/orders/42"),
            ("Authorization", &bearer),
        ]),
    )
    .await;
    let prefix_form = send(
        http,
        "GET",
        "/api/iam/check-access/api/orders/42",
        &hdrs(&[("Authorization", &bearer)]),
    )
    .await;
    let public = send(http, "GET", "/api/iam/check-access/healthz", &[]).await;
    for r in [&headers_form, &prefix_form, &public] {
        assert_eq!(
            (r.status, error_of(r).as_str()),
            (403, "forbidden"),
            "{r:?}"
        );
        assert!(r.header_all("x-user-id").is_empty(), "{r:?}");
    }
    assert_eq!(
        status_of(
            &authz
                .server
                .check_token("/api/orders/42", &authz.reader)
                .await
        ),
        200
    );
}

// ---------------------------------------------------------------------------------------------
// The files themselves

#[test]
fn envoy_http_sample_validates() {
    let out = Command::new(envoy_bin())
        .args(["--mode", "validate", "-c"])
        .arg(repo_file("gateways/envoy-http.yaml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "envoy --mode validate gateways/envoy-http.yaml:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The samples that cannot run here (Traefik, APISIX, Kong) are at least well-formed YAML that
/// points at the forward-auth endpoint and names the identity headers.
#[test]
fn documented_only_samples_are_well_formed() {
    for rel in [
        "gateways/traefik.yml",
        "gateways/apisix.yaml",
        "gateways/kong.yaml",
    ] {
        let text = std::fs::read_to_string(repo_file(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
        let _: Value = serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{rel}: {e}"));
        assert!(
            text.contains("/api/iam/check-access"),
            "{rel} does not use the forward-auth endpoint"
        );
        for h in ["X-User-ID", "X-Tenant-ID", "X-User-Roles"] {
            assert!(
                text.to_ascii_lowercase().contains(&h.to_ascii_lowercase()),
                "{rel} does not mention {h}"
            );
        }
    }
}
