//! Accepting connections within bounds: how many a listener holds, how long a client may take to
//! start talking, how long a keep-alive connection may sit idle, how large request headers may be.
//!
//! Every listener admits a connection only with a permit from its [`Admission`]; over the cap
//! the connection is closed at once (refused, not queued: a queue would itself be unbounded).
//! The permit travels with the connection and is returned when it closes, so a drain can wait
//! for every connection by taking all permits back.
//!
//! The HTTP listener is served here with hyper's HTTP/1 connection (headers capped at
//! [`MAX_HEADER_BYTES`], answered 431 beyond) and a per-connection watchdog: hyper's own header
//! timer also runs while a keep-alive connection waits for its next request, which would make the
//! idle timeout the header timeout. The gRPC listeners get admission and a deadline for the
//! client's first bytes (the HTTP/2 preface); tonic and hyper bound the rest.
//!
//! Nothing here decides anything about a request; it only bounds connections.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::time::{Instant, Sleep};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;

use crate::core::config::ConnectionLimits;

/// Request headers (request line included) may total this much; more is answered 431.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

/// The HTTP/2 connection preface a gRPC client sends first.
pub const H2_PREFACE_LEN: usize = 24;

/// Idle time before the kernel probes a TCP peer, and the interval between probes: a peer that
/// vanished without a FIN (a crashed host, a dropped NAT entry) releases its connection.
const TCP_KEEPALIVE_TIME: Duration = Duration::from_secs(60);
const TCP_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);

/// How long to back off after a failed `accept` (e.g. out of file descriptors) instead of
/// spinning on it.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// The connection cap of one listener.
#[derive(Debug)]
pub struct Admission {
    what: &'static str,
    max: usize,
    permits: Arc<Semaphore>,
    /// Set while connections are being refused, so the log says so once per episode, not once
    /// per refused connection.
    refusing: AtomicBool,
}

/// One admitted connection's place under the cap; dropping it frees the place.
#[derive(Debug)]
pub struct Permit(#[allow(dead_code)] OwnedSemaphorePermit);

impl Admission {
    /// `what` names the listener in logs ("HTTP", "gRPC").
    pub fn new(what: &'static str, max: usize) -> Arc<Self> {
        Arc::new(Admission {
            what,
            max,
            permits: Arc::new(Semaphore::new(max)),
            refusing: AtomicBool::new(false),
        })
    }

    /// A place for one more connection, or `None` when the listener is full.
    pub fn admit(&self) -> Option<Permit> {
        match Arc::clone(&self.permits).try_acquire_owned() {
            Ok(p) => {
                if self.refusing.swap(false, Ordering::Relaxed) {
                    tracing::info!(listener = self.what, "accepting connections again");
                }
                Some(Permit(p))
            }
            Err(_) => {
                if !self.refusing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        listener = self.what,
                        max_connections = self.max,
                        "connection limit reached: refusing new connections"
                    );
                }
                None
            }
        }
    }

    /// Connections currently held.
    pub fn held(&self) -> usize {
        self.max - self.permits.available_permits()
    }

    /// Completes when every admitted connection has closed.
    pub async fn drained(&self) {
        let all = u32::try_from(self.max).unwrap_or(u32::MAX);
        let _ = self.permits.acquire_many(all).await;
    }
}

/// A listener the accept loops here can take connections from.
pub trait Accept: Send + Sync + 'static {
    type Io: AsyncRead + AsyncWrite + Send + Unpin + 'static;

    fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<Self::Io>>;

    /// Socket options for an accepted connection.
    fn prepare(_io: &Self::Io) {}
}

impl Accept for TcpListener {
    type Io = TcpStream;

    fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<TcpStream>> {
        TcpListener::poll_accept(self, cx).map_ok(|(s, _)| s)
    }

    fn prepare(io: &TcpStream) {
        // Best effort: a connection without these options still works.
        let _ = io.set_nodelay(true);
        let keepalive = socket2::TcpKeepalive::new()
            .with_time(TCP_KEEPALIVE_TIME)
            .with_interval(TCP_KEEPALIVE_INTERVAL);
        let _ = socket2::SockRef::from(io).set_tcp_keepalive(&keepalive);
    }
}

impl Accept for UnixListener {
    type Io = UnixStream;

    fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<UnixStream>> {
        UnixListener::poll_accept(self, cx).map_ok(|(s, _)| s)
    }
}

/// The next connection admitted under the cap. Connections over the cap are closed here, at once.
pub async fn next_admitted<L: Accept>(listener: &L, admission: &Admission) -> (L::Io, Permit) {
    loop {
        match std::future::poll_fn(|cx| listener.poll_accept(cx)).await {
            Ok(io) => match admission.admit() {
                Some(permit) => {
                    L::prepare(&io);
                    return (io, permit);
                }
                None => drop(io),
            },
            Err(e) => {
                tracing::warn!(listener = admission.what, error = %e, "accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

/// A connection as the servers use it: holds its [`Permit`], and optionally fails its reads if
/// the client has not sent its first `need` bytes within a deadline (a client that connects and
/// says nothing must not hold a place under the cap).
pub struct Guarded<T> {
    inner: T,
    _permit: Option<Permit>,
    hello: Option<Hello>,
}

struct Hello {
    need: usize,
    deadline: Pin<Box<Sleep>>,
}

impl<T> Guarded<T> {
    pub fn new(inner: T, permit: Option<Permit>) -> Self {
        Guarded {
            inner,
            _permit: permit,
            hello: None,
        }
    }

    /// Reads fail with `TimedOut` once `within` has passed before `need` bytes arrived.
    pub fn hello_within(mut self, need: usize, within: Duration) -> Self {
        self.hello = Some(Hello {
            need,
            deadline: Box::pin(tokio::time::sleep(within)),
        });
        self
    }

    pub fn get_ref(&self) -> &T {
        &self.inner
    }
}

impl<T: Connected> Connected for Guarded<T> {
    type ConnectInfo = T::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Guarded<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(res) => {
                if let Some(hello) = &mut this.hello {
                    let got = buf.filled().len() - before;
                    hello.need = hello.need.saturating_sub(got);
                    if hello.need == 0 {
                        this.hello = None;
                    }
                }
                Poll::Ready(res)
            }
            Poll::Pending => {
                if let Some(hello) = &mut this.hello {
                    ready!(hello.deadline.as_mut().poll(cx));
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the client did not start talking in time",
                    )));
                }
                Poll::Pending
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Guarded<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Accept gRPC connections (plain TCP or unix socket) under `admission` until `stop` completes,
/// as a stream for tonic's `serve_with_incoming_shutdown`. Each must send the HTTP/2 preface
/// within `hello`. The listening socket is closed when `stop` completes.
pub fn grpc_incoming<L: Accept>(
    listener: L,
    admission: Arc<Admission>,
    hello: Duration,
    stop: impl Future<Output = ()> + Send + 'static,
) -> ReceiverStream<Result<Guarded<L::Io>, Infallible>> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        let mut stop = std::pin::pin!(stop);
        loop {
            let (io, permit) = tokio::select! {
                _ = &mut stop => return,
                c = next_admitted(&listener, &admission) => c,
            };
            let conn = Guarded::new(io, Some(permit)).hello_within(H2_PREFACE_LEN, hello);
            if tx.send(Ok(conn)).await.is_err() {
                return;
            }
        }
    });
    ReceiverStream::new(rx)
}

/// Where an HTTP/1 connection is in its life, for the watchdog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for the rest of a request's headers, since then (the connection's start, or the
    /// first byte after an idle spell).
    Head(Instant),
    /// No request in flight and no byte of the next one, since then.
    Idle(Instant),
    /// This many requests are being answered: no deadline here (the handlers bound themselves).
    Busy(usize),
}

/// Shared between a connection's socket (reads), its service (requests) and its watchdog.
#[derive(Debug)]
struct Activity {
    phase: Mutex<Phase>,
    changed: Notify,
}

impl Activity {
    fn new() -> Arc<Self> {
        Arc::new(Activity {
            phase: Mutex::new(Phase::Head(Instant::now())),
            changed: Notify::new(),
        })
    }

    fn set(&self, f: impl FnOnce(Phase) -> Phase) {
        let mut phase = self.phase.lock().unwrap_or_else(|p| p.into_inner());
        let next = f(*phase);
        if next != *phase {
            *phase = next;
            // `notify_one` keeps a permit when the watchdog is not waiting yet: no lost change.
            self.changed.notify_one();
        }
    }

    fn phase(&self) -> Phase {
        *self.phase.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Bytes arrived: an idle connection starts a request, and its headers are now on the clock.
    fn bytes_read(&self) {
        self.set(|p| match p {
            Phase::Idle(_) => Phase::Head(Instant::now()),
            other => other,
        });
    }

    /// A request's headers are complete and it is being answered until the guard drops.
    fn begin(self: &Arc<Self>) -> InFlight {
        self.set(|p| match p {
            Phase::Busy(n) => Phase::Busy(n + 1),
            _ => Phase::Busy(1),
        });
        InFlight(Arc::clone(self))
    }

    /// Completes when the connection has overstayed: headers not complete within
    /// `header_timeout`, or idle for `idle_timeout`. Says which.
    async fn overstayed(&self, limits: &ConnectionLimits) -> &'static str {
        loop {
            // Created before the phase is read, so a change in between is not missed.
            let changed = self.changed.notified();
            let (deadline, why) = match self.phase() {
                Phase::Head(since) => (since + limits.header_timeout, "header timeout"),
                Phase::Idle(since) => (since + limits.idle_timeout, "idle timeout"),
                Phase::Busy(_) => {
                    changed.await;
                    continue;
                }
            };
            if deadline <= Instant::now() {
                return why;
            }
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => {}
                _ = changed => {}
            }
        }
    }
}

/// One request in flight; when the last one ends the connection is idle.
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.set(|p| match p {
            Phase::Busy(n) if n > 1 => Phase::Busy(n - 1),
            _ => Phase::Idle(Instant::now()),
        });
    }
}

/// A socket that tells its [`Activity`] when bytes arrive.
struct Tracked<T> {
    inner: T,
    activity: Arc<Activity>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Tracked<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let res = ready!(Pin::new(&mut self.inner).poll_read(cx, buf));
        if buf.filled().len() > before {
            self.activity.bytes_read();
        }
        Poll::Ready(res)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tracked<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Serve `app` over HTTP/1 on `listener` within `limits` until `stop` turns true; then stop
/// accepting, let each connection finish its request in flight, and return once all are closed.
/// Handlers see the peer address as `ConnectInfo<SocketAddr>`.
pub async fn serve_http(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    stop: watch::Receiver<bool>,
) {
    let admission = Admission::new("HTTP", limits.max_connections);
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        // The watchdog times headers instead (see the module header).
        .header_read_timeout(None)
        .max_header_size(MAX_HEADER_BYTES)
        // Room for a full header block plus the start of a body in one read; headers that are
        // still incomplete at MAX_HEADER_BYTES are refused before the buffer gets here.
        .max_buf_size(MAX_HEADER_BYTES + 16 * 1024);
    let builder = Arc::new(builder);
    let limits = Arc::new(limits);
    {
        let mut stopping = std::pin::pin!(wait_true(stop.clone()));
        loop {
            let (io, permit) = tokio::select! {
                _ = &mut stopping => break,
                c = next_admitted(&listener, &admission) => c,
            };
            let Ok(peer) = io.peer_addr() else {
                // The peer is already gone.
                continue;
            };
            tokio::spawn(serve_http_conn(
                Arc::clone(&builder),
                Guarded::new(io, Some(permit)),
                peer,
                app.clone(),
                Arc::clone(&limits),
                stop.clone(),
            ));
        }
    }
    drop(listener);
    admission.drained().await;
}

async fn serve_http_conn(
    builder: Arc<hyper::server::conn::http1::Builder>,
    io: Guarded<TcpStream>,
    peer: SocketAddr,
    app: Router,
    limits: Arc<ConnectionLimits>,
    stop: watch::Receiver<bool>,
) {
    let activity = Activity::new();
    let io = Tracked {
        inner: io,
        activity: Arc::clone(&activity),
    };
    let requests = Arc::clone(&activity);
    let service = hyper::service::service_fn(move |mut req: hyper::Request<_>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        let in_flight = requests.begin();
        let answer = tower_service::Service::call(&mut app.clone(), req);
        async move {
            let res = answer.await;
            drop(in_flight);
            res
        }
    });
    let conn = builder.serve_connection(hyper_util::rt::TokioIo::new(io), service);
    let mut conn = std::pin::pin!(conn);
    let mut overstayed = std::pin::pin!(activity.overstayed(&limits));
    let mut stopping = std::pin::pin!(wait_true(stop));
    tokio::select! {
        res = conn.as_mut() => {
            if let Err(e) = res {
                tracing::debug!(%peer, error = %e, "HTTP connection failed");
            }
            return;
        }
        why = &mut overstayed => {
            tracing::debug!(%peer, "closing HTTP connection: {why}");
            return;
        }
        _ = &mut stopping => conn.as_mut().graceful_shutdown(),
    }
    // Draining: the request in flight (if any) is answered, then the connection closes; one
    // that overstays is closed anyway.
    tokio::select! {
        _ = conn => {}
        _ = overstayed => {}
    }
}

async fn wait_true(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> ConnectionLimits {
        ConnectionLimits {
            header_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(60),
            max_connections: 2,
        }
    }

    /// Whether `overstayed` completes within `after` (virtual time), and with what.
    async fn overstays_within(activity: &Arc<Activity>, after: Duration) -> Option<&'static str> {
        tokio::time::timeout(after, activity.overstayed(&limits()))
            .await
            .ok()
    }

    #[tokio::test(start_paused = true)]
    async fn headers_are_timed_from_the_connection_start() {
        let a = Activity::new();
        assert_eq!(
            overstays_within(&a, Duration::from_secs(6)).await,
            Some("header timeout")
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_keep_alive_connection_gets_the_idle_timeout_not_the_header_timeout() {
        let a = Activity::new();
        drop(a.begin());
        // Past the header timeout, well within the idle timeout: still open.
        assert_eq!(overstays_within(&a, Duration::from_secs(30)).await, None);
        assert_eq!(
            overstays_within(&a, Duration::from_secs(31)).await,
            Some("idle timeout")
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_byte_after_idling_starts_the_header_clock() {
        let a = Activity::new();
        drop(a.begin());
        tokio::time::advance(Duration::from_secs(50)).await;
        a.bytes_read();
        assert!(matches!(a.phase(), Phase::Head(_)));
        assert_eq!(
            overstays_within(&a, Duration::from_secs(6)).await,
            Some("header timeout")
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_in_flight_has_no_deadline() {
        let a = Activity::new();
        let first = a.begin();
        let second = a.begin();
        a.bytes_read();
        assert_eq!(overstays_within(&a, Duration::from_secs(600)).await, None);
        drop(first);
        assert_eq!(a.phase(), Phase::Busy(1));
        drop(second);
        assert!(matches!(a.phase(), Phase::Idle(_)));
    }

    #[tokio::test]
    async fn admission_refuses_over_the_cap_and_admits_again_after_a_close() {
        let adm = Admission::new("test", 2);
        let a = adm.admit().unwrap();
        let _b = adm.admit().unwrap();
        assert!(adm.admit().is_none());
        assert_eq!(adm.held(), 2);
        drop(a);
        assert!(adm.admit().is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_never_sends_the_preface_is_cut_off() {
        let (client, server) = tokio::io::duplex(64);
        let mut g = Guarded::new(server, None).hello_within(4, Duration::from_secs(5));
        let mut client = client;
        tokio::io::AsyncWriteExt::write_all(&mut client, b"ab")
            .await
            .unwrap();
        let mut buf = [0u8; 8];
        let n = tokio::io::AsyncReadExt::read(&mut g, &mut buf)
            .await
            .unwrap();
        assert_eq!(n, 2);
        let err = tokio::io::AsyncReadExt::read(&mut g, &mut buf)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);

        // Enough bytes in time: no deadline afterwards.
        let (client, server) = tokio::io::duplex(64);
        let mut g = Guarded::new(server, None).hello_within(4, Duration::from_secs(5));
        let mut client = client;
        tokio::io::AsyncWriteExt::write_all(&mut client, b"abcd")
            .await
            .unwrap();
        assert_eq!(
            tokio::io::AsyncReadExt::read(&mut g, &mut buf)
                .await
                .unwrap(),
            4
        );
        let pending = tokio::time::timeout(
            Duration::from_secs(60),
            tokio::io::AsyncReadExt::read(&mut g, &mut buf),
        )
        .await;
        assert!(
            pending.is_err(),
            "a read after the preface waits, it does not fail"
        );
    }
}
