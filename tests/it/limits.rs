//! Bounded listeners: header and idle timeouts, the header size cap (431), the connection cap on
//! HTTP and gRPC, the gRPC message cap and preface deadline, many slow clients against the real
//! binary (connections cut, memory bounded), the startup "listening" line and the unix socket's
//! file mode. Raw TCP clients on loopback, so the test sees exactly what the server does.

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use jsonwebtoken::Algorithm;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

/// The test config with `limits` appended (a top-level key after the policy block).
fn limited(jwks: &JwksServer, limits: &str) -> String {
    format!(
        "{}limits:\n{limits}\n",
        config_yaml(jwks, "  refresh_min: 30s")
    )
}

async fn server(limits: &str) -> (InProcess, JwksServer) {
    let k = key(Algorithm::ES256, "k1");
    let jwks = JwksServer::start(&[&k]).await;
    let s = InProcess::start(&limited(&jwks, limits)).await;
    (s, jwks)
}

/// How a read on a connection ended.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// EOF or reset: the server closed it.
    Closed,
    /// Still open when we stopped waiting.
    Open,
}

/// Read (and discard) until the server closes the connection or `wait` passes.
async fn ends_within(stream: &mut TcpStream, wait: Duration) -> End {
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return End::Open,
            Ok(Ok(0)) | Ok(Err(_)) => return End::Closed,
            Ok(Ok(_)) => {}
        }
    }
}

/// One HTTP/1.1 response read off a raw connection: (status, head, body).
async fn read_response(stream: &mut TcpStream) -> (u16, String, Vec<u8>) {
    let mut data = Vec::new();
    let mut buf = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .expect("response in time")
            .expect("read");
        assert!(n > 0, "closed before a full response head: {data:?}");
        data.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&data[..head_end]).into_owned();
    let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().unwrap())
        })
        .unwrap_or(0);
    let mut body = data[head_end..].to_vec();
    while body.len() < len {
        let n = stream.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed mid-body");
        body.extend_from_slice(&buf[..n]);
    }
    (status, head, body)
}

const HEALTHZ: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: authz\r\n\r\n";

async fn healthz_on(stream: &mut TcpStream) -> u16 {
    stream.write_all(HEALTHZ).await.unwrap();
    read_response(stream).await.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_a_header_line_is_cut_at_the_header_timeout() {
    let (s, _jwks) = server("  header_timeout: 300ms\n  idle_timeout: 30s").await;
    let mut c = TcpStream::connect(s.http).await.unwrap();
    c.write_all(b"GET /healthz HTTP/1.1\r\nHost: authz\r\nX-Slow: ab")
        .await
        .unwrap();
    let started = Instant::now();
    assert_eq!(
        ends_within(&mut c, Duration::from_secs(3)).await,
        End::Closed
    );
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(200),
        "closed too early: {took:?}"
    );

    // A client that says nothing at all gets the same deadline.
    let mut silent = TcpStream::connect(s.http).await.unwrap();
    assert_eq!(
        ends_within(&mut silent, Duration::from_secs(3)).await,
        End::Closed
    );

    // Complete headers in time are answered as before.
    let mut ok = TcpStream::connect(s.http).await.unwrap();
    assert_eq!(healthz_on(&mut ok).await, 200);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_over_64_kib_are_answered_431_and_under_it_served() {
    let (s, _jwks) = server("  header_timeout: 5s").await;
    let request = |total: usize| {
        let mut r = String::from("GET /healthz HTTP/1.1\r\nHost: authz\r\n");
        let value = "v".repeat(4000);
        let mut i = 0;
        while r.len() + value.len() + 16 < total {
            r.push_str(&format!("X-Pad-{i:03}: {value}\r\n"));
            i += 1;
        }
        r.push_str("\r\n");
        r
    };
    let mut c = TcpStream::connect(s.http).await.unwrap();
    let small = request(60 * 1024);
    c.write_all(small.as_bytes()).await.unwrap();
    assert_eq!(read_response(&mut c).await.0, 200, "60 KiB of headers");

    for total in [70 * 1024, 320 * 1024] {
        let mut c = TcpStream::connect(s.http).await.unwrap();
        let big = request(total);
        // The server may stop reading at its limit: write in the background.
        let (mut rd, mut wr) = c.split();
        let write = async {
            let _ = wr.write_all(big.as_bytes()).await;
        };
        let read = read_response_half(&mut rd);
        let ((), (status, _)) = tokio::join!(write, read);
        assert_eq!(status, 431, "{total} bytes of headers");
    }
    s.stop().await;
}

/// `read_response` for a read half (status and head only).
async fn read_response_half(rd: &mut tokio::net::tcp::ReadHalf<'_>) -> (u16, String) {
    let mut data = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        if let Some(i) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&data[..i]).into_owned();
            let status = head.split(' ').nth(1).unwrap().parse().unwrap();
            return (status, head);
        }
        let n = tokio::time::timeout(Duration::from_secs(5), rd.read(&mut buf))
            .await
            .expect("response in time")
            .expect("a response before the connection closes");
        assert!(n > 0, "closed without a response: {data:?}");
        data.extend_from_slice(&buf[..n]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let (s, _jwks) = server("  header_timeout: 5s\n  idle_timeout: 400ms").await;
    let mut c = TcpStream::connect(s.http).await.unwrap();
    assert_eq!(healthz_on(&mut c).await, 200);
    let idle_from = Instant::now();
    assert_eq!(
        ends_within(&mut c, Duration::from_secs(4)).await,
        End::Closed
    );
    let took = idle_from.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(3),
        "closed after {took:?} idle"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keep_alive_connection_may_idle_longer_than_the_header_timeout() {
    let (s, _jwks) = server("  header_timeout: 300ms\n  idle_timeout: 20s").await;
    let mut c = TcpStream::connect(s.http).await.unwrap();
    assert_eq!(healthz_on(&mut c).await, 200);
    // Three header timeouts of idling: still open, and serves the next request.
    assert_eq!(
        ends_within(&mut c, Duration::from_millis(900)).await,
        End::Open
    );
    assert_eq!(healthz_on(&mut c).await, 200);
    // Once the next request starts, its headers are on the clock again.
    c.write_all(b"GET /healthz HTTP/1.1\r\n").await.unwrap();
    assert_eq!(
        ends_within(&mut c, Duration::from_secs(3)).await,
        End::Closed
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_listener_refuses_connections_over_max_connections() {
    let (s, _jwks) = server("  max_connections: 3").await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut c = TcpStream::connect(s.http).await.unwrap();
        assert_eq!(healthz_on(&mut c).await, 200);
        held.push(c);
    }
    // The fourth is closed at once, unanswered.
    let mut extra = TcpStream::connect(s.http).await.unwrap();
    let _ = extra.write_all(HEALTHZ).await;
    assert_eq!(
        ends_within(&mut extra, Duration::from_secs(2)).await,
        End::Closed
    );
    // Those held still work.
    for c in &mut held {
        assert_eq!(healthz_on(c).await, 200);
    }
    // One closes: a new connection is served again.
    drop(held.pop());
    eventually(Duration::from_secs(5), "a free place", || async {
        let mut c = TcpStream::connect(s.http).await.ok()?;
        c.write_all(HEALTHZ).await.ok()?;
        let mut buf = [0u8; 12];
        tokio::time::timeout(Duration::from_secs(1), c.read_exact(&mut buf))
            .await
            .ok()?
            .ok()?;
        (&buf == b"HTTP/1.1 200").then_some(())
    })
    .await;
    s.stop().await;
}

/// Resident memory of a process in KiB (`VmRSS` in /proc/<pid>/status).
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// 200 clients each trickle ~60 KiB of headers that never finish (the attack that once grew the
/// server from 11 MB to 160 MB): every one is cut at the header timeout, memory stays bounded,
/// and the server answers afterwards. Against the real binary, so its RSS is its own. The same
/// process also shows its "listening" line in plain form.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_slow_clients_are_all_cut_and_memory_stays_bounded() {
    let k = key(Algorithm::ES256, "k1");
    let jwks = JwksServer::start(&[&k]).await;
    let dir = tempfile::tempdir().unwrap();
    let (grpc_port, http_port) = (free_port(), free_port());
    let yaml = limited(&jwks, "  header_timeout: 1s\n  idle_timeout: 30s")
        .replace("grpc: 127.0.0.1:0", &format!("grpc: 127.0.0.1:{grpc_port}"))
        .replace("http: 127.0.0.1:0", &format!("http: 127.0.0.1:{http_port}"));
    let cfg = dir.path().join("config.yaml");
    std::fs::write(&cfg, yaml).unwrap();
    let mut cmd = Command::new(authz_bin());
    cmd.args(["serve", "--config"])
        .arg(&cfg)
        .env("RUST_LOG", "info");
    let guard = ChildGuard::spawn("citadel-authz serve", cmd, dir.path().join("serve.log"));
    let http: SocketAddr = format!("127.0.0.1:{http_port}").parse().unwrap();
    wait_port(http, "HTTP listener").await;

    let line = eventually(Duration::from_secs(5), "the listening line", || async {
        let log = guard.log_text();
        log.lines()
            .find(|l| l.contains("listening"))
            .map(str::to_owned)
    })
    .await;
    assert!(
        line.contains(&format!("grpc=127.0.0.1:{grpc_port}"))
            && line.contains(&format!("http=127.0.0.1:{http_port}")),
        "{line}"
    );
    assert!(!line.contains("Some(") && !line.contains('"'), "{line}");

    let pid = guard.child.id();
    let mut c = TcpStream::connect(http).await.unwrap();
    assert_eq!(healthz_on(&mut c).await, 200);
    drop(c);
    let before = rss_kib(pid);

    const CLIENTS: usize = 200;
    let started = Instant::now();
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..CLIENTS {
        clients.spawn(async move {
            let mut c = TcpStream::connect(http).await.unwrap();
            // ~60 KiB at once (under the 64 KiB cap), then a byte every 100 ms, never the end.
            let mut head = String::from("GET /healthz HTTP/1.1\r\nHost: authz\r\n");
            for i in 0..15 {
                head.push_str(&format!("X-Pad-{i:02}: {}\r\n", "v".repeat(4000)));
            }
            head.push_str("X-Slow: ");
            c.write_all(head.as_bytes()).await.unwrap();
            let deadline = Instant::now() + Duration::from_secs(10);
            let mut buf = [0u8; 256];
            while Instant::now() < deadline {
                if c.write_all(b"a").await.is_err() {
                    return Instant::now();
                }
                match tokio::time::timeout(Duration::from_millis(100), c.read(&mut buf)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => return Instant::now(),
                    _ => {}
                }
            }
            panic!("a slow client was not cut off within 10 s");
        });
    }
    // While they are all held: memory grows by their buffers, not more.
    let mut peak = before;
    let mut cut = Vec::new();
    while !clients.is_empty() {
        peak = peak.max(rss_kib(pid));
        if let Ok(Some(res)) =
            tokio::time::timeout(Duration::from_millis(50), clients.join_next()).await
        {
            cut.push(res.unwrap());
        }
    }
    assert_eq!(cut.len(), CLIENTS);
    let last = cut.iter().max().unwrap().duration_since(started);
    assert!(
        last < Duration::from_secs(8),
        "all slow clients are cut near the 1 s header timeout; the last after {last:?}"
    );
    let grown_mib = peak.saturating_sub(before) / 1024;
    eprintln!("{line}\nRSS {before} kB before, {peak} kB at most with {CLIENTS} slow clients");
    assert!(
        grown_mib < 48,
        "RSS grew by {grown_mib} MiB ({before} kB → {peak} kB) for {CLIENTS} slow clients"
    );

    let mut c = TcpStream::connect(http).await.unwrap();
    assert_eq!(healthz_on(&mut c).await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_message_over_the_cap_is_refused_and_the_server_stays_up() {
    let (s, _jwks) = server("  header_timeout: 5s").await;
    let url = format!("http://{}", s.grpc);
    let mut client = AuthorizationClient::connect(url.clone()).await.unwrap();
    let huge = "x".repeat(citadel_authz::serve::server::MAX_GRPC_MESSAGE + 1024);
    let req =
        citadel_authz::cli::client::check_request("GET", "/api/me", &[("x-big".into(), huge)]);
    let err = client.check(req).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::OutOfRange, "{err:?}");

    // Under the cap is judged (no token here: 401), on the same connection and on a new one.
    let fits = "x".repeat(100 * 1024);
    let req =
        citadel_authz::cli::client::check_request("GET", "/api/me", &[("x-big".into(), fits)]);
    let resp = client.check(req).await.unwrap().into_inner();
    assert_eq!(status_of(&resp), 401);
    assert_eq!(status_of(&s.check("GET", "/api/me", &[]).await), 401);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grpc_listener_caps_connections_and_cuts_silent_clients() {
    let (s, _jwks) = server("  header_timeout: 300ms\n  max_connections: 2").await;
    let url = format!("http://{}", s.grpc);
    let check = |client: &mut AuthorizationClient<tonic::transport::Channel>| {
        let req = citadel_authz::cli::client::check_request("GET", "/healthz", &[]);
        let mut client = client.clone();
        async move { client.check(req).await.map(|r| status_of(&r.into_inner())) }
    };
    let mut a = AuthorizationClient::connect(url.clone()).await.unwrap();
    let mut b = AuthorizationClient::connect(url.clone()).await.unwrap();
    assert_eq!(check(&mut a).await.unwrap(), 200);
    assert_eq!(check(&mut b).await.unwrap(), 200);

    // A third connection is closed at once.
    let mut extra = TcpStream::connect(s.grpc).await.unwrap();
    assert_eq!(
        ends_within(&mut extra, Duration::from_millis(250)).await,
        End::Closed
    );
    let refused = async {
        let mut c = AuthorizationClient::connect(url.clone()).await.ok()?;
        check(&mut c).await.ok()
    };
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(3), refused)
            .await
            .ok()
            .flatten(),
        None,
        "a third gRPC client must not be served"
    );

    // The held ones are unaffected (they have sent their preface: no deadline for them).
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(check(&mut a).await.unwrap(), 200);

    // One goes: a new client is served again.
    drop(b);
    let mut c = eventually(Duration::from_secs(5), "a free gRPC place", || async {
        let mut c = AuthorizationClient::connect(url.clone()).await.ok()?;
        (check(&mut c).await.ok()? == 200).then_some(c)
    })
    .await;
    assert_eq!(check(&mut c).await.unwrap(), 200);
    drop(c);
    drop(a);

    // A connection that never sends the HTTP/2 preface is closed after the header timeout.
    let mut silent = eventually(
        Duration::from_secs(5),
        "room for a silent client",
        || async {
            let mut t = TcpStream::connect(s.grpc).await.ok()?;
            // Still open shortly after connecting: admitted, not refused.
            (ends_within(&mut t, Duration::from_millis(100)).await == End::Open).then_some(t)
        },
    )
    .await;
    let started = Instant::now();
    assert_eq!(
        ends_within(&mut silent, Duration::from_secs(3)).await,
        End::Closed
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_unix_socket_is_0660_unless_the_config_says_otherwise() {
    let k = key(Algorithm::ES256, "k1");
    let jwks = JwksServer::start(&[&k]).await;
    let dir = tempfile::tempdir().unwrap();
    for (mode_line, expected) in [("", 0o660), ("  grpc_socket_mode: \"0600\"\n", 0o600)] {
        let sock = dir.path().join("authz.sock");
        let yaml = config_yaml(&jwks, "  refresh_min: 30s").replace(
            "  grpc: 127.0.0.1:0\n",
            &format!("  grpc: \"unix:{}\"\n{mode_line}", sock.display()),
        );
        let config = citadel_authz::Config::from_yaml(&yaml, dir.path()).unwrap();
        let listeners = citadel_authz::Listeners::bind(&config).await.unwrap();
        let running = citadel_authz::start(config, listeners, citadel_authz::Options::default())
            .await
            .unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, expected, "socket mode {mode:o}, config {mode_line:?}");
        running.shutdown().await.unwrap();
    }
}
