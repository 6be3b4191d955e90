//! TLS and mTLS on the gRPC listener (`listen.grpc_tls`), with certificates reloaded from disk.
//!
//! The files are read ([`crate::core::tls_files`]) into a complete rustls [`ServerConfig`] (certificate chain, key, and with
//! `client_ca` a verifier that *requires* a client certificate chaining to it; ALPN `h2`). That
//! config is an immutable snapshot behind an [`ArcSwap`]: every accepted connection takes the
//! current one, and a watcher polls the files' metadata and swaps in a new snapshot when they
//! change. A reload that fails (unreadable file, bad PEM, key not matching the certificate) keeps
//! the last good snapshot and logs a warning; the next change on disk is tried again. Swapping
//! the whole config, not only the certificate, also drops the TLS session cache, so a client
//! certificate that a new CA no longer accepts cannot come back through session resumption.
//!
//! Connections are admitted under the listener's connection cap before their handshake, and
//! handshakes run in their own tasks, bounded by `limits.header_timeout`: a slow or failing client
//! never holds up the accept loop. Failures are logged at debug and only close that connection.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::CertificateDer;
use rustls::server::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::core::config::{GrpcListen, Listen};
pub use crate::core::tls_files::TlsError;
use crate::core::tls_files::{TlsFiles, build, provider};
use crate::serve::conn::{Admission, Guarded, H2_PREFACE_LEN, next_admitted};

/// How often the watcher looks at the certificate files.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(1);

/// The TLS settings for the configured gRPC listener: `None` without `grpc_tls`. TLS on a unix
/// socket is refused (an error, not a silent plain-text fallback): the socket's file mode is
/// the access control there, and a gateway that expects mTLS must not get plain text.
pub fn for_listener(listen: &Listen) -> Result<Option<Arc<ReloadingTls>>, TlsError> {
    match (&listen.grpc_tls, &listen.grpc) {
        (None, _) => Ok(None),
        (Some(_), GrpcListen::Unix(path)) => Err(TlsError::Unsupported(format!(
            "TLS is only available on a TCP listener, not on unix:{} (remove grpc_tls, or listen on host:port)",
            path.display()
        ))),
        (Some(files), GrpcListen::Tcp(_)) => ReloadingTls::load(files.clone()).map(Some),
    }
}

/// The current TLS server config, swapped when the files on disk change.
pub struct ReloadingTls {
    files: TlsFiles,
    provider: Arc<CryptoProvider>,
    current: ArcSwap<ServerConfig>,
    /// Metadata of the files when they were last read (successfully or not).
    seen: std::sync::Mutex<Fingerprint>,
}

impl std::fmt::Debug for ReloadingTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadingTls")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl ReloadingTls {
    /// Read the files; an error here is a startup error.
    pub fn load(files: TlsFiles) -> Result<Arc<Self>, TlsError> {
        let provider = provider();
        // Metadata first: a change while the files are being read is seen by the next poll.
        let seen = fingerprint(&files);
        let config = build(&files, &provider)?;
        Ok(Arc::new(ReloadingTls {
            files,
            provider,
            current: ArcSwap::from_pointee(config),
            seen: std::sync::Mutex::new(seen),
        }))
    }

    /// Whether client certificates are required (`client_ca` set).
    pub fn mutual(&self) -> bool {
        self.files.client_ca.is_some()
    }

    /// An acceptor with the current snapshot; one per connection.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.current.load_full())
    }

    /// Re-read the files if their metadata changed since the last read. `Ok(true)`: a new
    /// snapshot is in use; `Err`: the files changed but cannot be used, the old one stays.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let now = fingerprint(&self.files);
        {
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            if *seen == now {
                return Ok(false);
            }
            *seen = now;
        }
        let config = build(&self.files, &self.provider)?;
        self.current.store(Arc::new(config));
        Ok(true)
    }

    /// Poll the files every `every` until `stop` completes.
    pub async fn watch(self: Arc<Self>, every: Duration, stop: impl Future<Output = ()>) {
        let mut stop = std::pin::pin!(stop);
        loop {
            tokio::select! {
                _ = &mut stop => return,
                _ = tokio::time::sleep(every) => {}
            }
            let this = Arc::clone(&self);
            // File reads and parsing are blocking work.
            match tokio::task::spawn_blocking(move || this.reload_if_changed()).await {
                Ok(Ok(true)) => tracing::info!(
                    cert = %self.files.cert.display(),
                    "gRPC TLS certificates reloaded"
                ),
                Ok(Ok(false)) => {}
                Ok(Err(e)) => tracing::warn!(
                    error = %e,
                    "gRPC TLS files changed but cannot be used; keeping the previous certificates"
                ),
                Err(e) => tracing::warn!(error = %e, "gRPC TLS reload task failed"),
            }
        }
    }
}

/// (modified, length, inode) of each file; `None` where it cannot be read.
type Fingerprint = Vec<Option<(SystemTime, u64, u64)>>;

fn fingerprint(files: &TlsFiles) -> Fingerprint {
    use std::os::unix::fs::MetadataExt;
    [
        Some(&files.cert),
        Some(&files.key),
        files.client_ca.as_ref(),
    ]
    .into_iter()
    .flatten()
    .map(|p| {
        // `metadata` follows symlinks: a Kubernetes secret volume swaps a symlink.
        std::fs::metadata(p)
            .ok()
            .and_then(|m| Some((m.modified().ok()?, m.len(), m.ino())))
    })
    .collect()
}

/// An accepted TLS connection, as tonic serves it. Its connect info is the TCP one, so
/// `Request::remote_addr` works as on the plain-text listener.
pub struct TlsConn {
    inner: tokio_rustls::server::TlsStream<TcpStream>,
    info: TcpConnectInfo,
}

impl TlsConn {
    /// The client's certificate chain (end entity first), when it sent one.
    pub fn peer_certificates(&self) -> Option<&[CertificateDer<'static>]> {
        self.inner.get_ref().1.peer_certificates()
    }
}

impl Connected for TlsConn {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.info.clone()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
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

/// Accept TCP connections on `listener` under `admission` until `stop` completes, handshake each
/// in its own task, and yield the established TLS connections (for
/// `serve_with_incoming_shutdown`). The handshake, and then the client's HTTP/2 preface, must each
/// arrive within `timeout`. The listening socket is closed when `stop` completes.
pub fn incoming(
    listener: TcpListener,
    tls: Arc<ReloadingTls>,
    admission: Arc<Admission>,
    timeout: Duration,
    stop: impl Future<Output = ()> + Send + 'static,
) -> ReceiverStream<Result<Guarded<TlsConn>, std::convert::Infallible>> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        let mut stop = std::pin::pin!(stop);
        loop {
            let (tcp, permit) = tokio::select! {
                _ = &mut stop => return,
                c = next_admitted(&listener, &admission) => c,
            };
            let Ok(peer) = tcp.peer_addr() else {
                // The peer is already gone.
                continue;
            };
            let info = tcp.connect_info();
            let acceptor = tls.acceptor();
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
                    Ok(Ok(inner)) => {
                        let conn = Guarded::new(TlsConn { inner, info }, Some(permit))
                            .hello_within(H2_PREFACE_LEN, timeout);
                        let _ = tx.send(Ok(conn)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::tls_files::check;
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, ExtendedKeyUsagePurpose, IsCa,
        KeyPair,
    };
    use std::path::PathBuf;

    fn ca() -> CertifiedIssuer<'static, KeyPair> {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
    }

    /// (cert PEM, key PEM) for localhost signed by `ca`.
    fn leaf(ca: &CertifiedIssuer<'static, KeyPair>) -> (String, String) {
        let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, ca).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    struct Files {
        _dir: tempfile::TempDir,
        files: TlsFiles,
    }

    fn files(with_ca: bool) -> Files {
        let dir = tempfile::tempdir().unwrap();
        let ca = ca();
        let (cert, key) = leaf(&ca);
        let files = TlsFiles {
            cert: dir.path().join("cert.pem"),
            key: dir.path().join("key.pem"),
            client_ca: with_ca.then(|| dir.path().join("ca.pem")),
        };
        std::fs::write(&files.cert, cert).unwrap();
        std::fs::write(&files.key, key).unwrap();
        if let Some(p) = &files.client_ca {
            std::fs::write(p, ca.pem()).unwrap();
        }
        Files { _dir: dir, files }
    }

    fn message(files: &TlsFiles) -> String {
        check(files).unwrap_err().to_string()
    }

    #[test]
    fn good_files_load_with_h2() {
        let f = files(true);
        check(&f.files).unwrap();
        let tls = ReloadingTls::load(f.files.clone()).unwrap();
        assert!(tls.mutual());
        assert_eq!(tls.current.load().alpn_protocols, vec![b"h2".to_vec()]);
    }

    #[test]
    fn every_problem_names_its_field_and_file() {
        let f = files(true);
        let mut missing = f.files.clone();
        missing.cert = f.files.cert.with_file_name("nope.pem");
        let m = message(&missing);
        assert!(m.starts_with("listen.grpc_tls.cert: cannot read "), "{m}");
        assert!(m.contains("nope.pem"), "{m}");

        std::fs::write(&f.files.cert, "not a certificate").unwrap();
        let m = message(&f.files);
        assert!(m.starts_with("listen.grpc_tls.cert: "), "{m}");
        assert!(m.contains("no CERTIFICATE block"), "{m}");

        // A certificate whose key is not the one in `key`.
        let (other_cert, _) = leaf(&ca());
        std::fs::write(&f.files.cert, other_cert).unwrap();
        let m = message(&f.files);
        assert!(m.starts_with("listen.grpc_tls.key: "), "{m}");
        assert!(m.contains("cannot be used with the certificate"), "{m}");

        let f = files(true);
        std::fs::write(
            &f.files.key,
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        let m = message(&f.files);
        assert!(m.starts_with("listen.grpc_tls.key: "), "{m}");

        let f = files(true);
        let ca_path = f.files.client_ca.clone().unwrap();
        std::fs::write(&ca_path, "").unwrap();
        let m = message(&f.files);
        assert!(m.starts_with("listen.grpc_tls.client_ca: "), "{m}");
    }

    #[test]
    fn failed_reload_keeps_the_last_good_config() {
        let f = files(false);
        let tls = ReloadingTls::load(f.files.clone()).unwrap();
        assert!(!tls.mutual());
        let first = tls.current.load_full();
        assert!(!tls.reload_if_changed().unwrap(), "nothing changed yet");

        std::fs::write(&f.files.cert, "garbage").unwrap();
        assert!(tls.reload_if_changed().is_err());
        assert!(Arc::ptr_eq(&first, &tls.current.load_full()));
        // The same broken files are not re-read (and re-logged) every second.
        assert!(!tls.reload_if_changed().unwrap());

        let (cert, key) = leaf(&ca());
        std::fs::write(&f.files.cert, cert).unwrap();
        std::fs::write(&f.files.key, key).unwrap();
        assert!(tls.reload_if_changed().unwrap());
        assert!(!Arc::ptr_eq(&first, &tls.current.load_full()));
    }

    #[test]
    fn tls_on_a_unix_socket_is_refused() {
        let f = files(false);
        let listen = Listen {
            grpc: GrpcListen::Unix(PathBuf::from("/tmp/authz.sock")),
            http: None,
            grpc_socket_mode: None,
            grpc_tls: Some(f.files.clone()),
            admin: None,
        };
        let m = for_listener(&listen).unwrap_err().to_string();
        assert!(m.contains("only available on a TCP listener"), "{m}");
    }
}
