//! TLS to PostgreSQL with rustls, for a connection string with `sslmode=require`.
//!
//! Stricter than libpq's `require` (which encrypts without checking who answers): the server's
//! certificate must chain to a trusted CA and name the host connected to. The trusted CAs are those
//! of `membership.postgres.ca_file`, else the system's (`rustls-native-certs`, which also reads
//! `SSL_CERT_FILE`). Any other
//! sslmode (`disable`, `prefer`, the default) connects in plain text, as before TLS was built in:
//! `prefer` would otherwise start failing against a server with a self-signed certificate.
//!
//! No channel binding (SCRAM then authenticates without `-PLUS`, which `channel_binding=prefer`,
//! the default, accepts).

use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::Socket;
use tokio_postgres::config::SslMode;
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};

/// The TLS side of a store's connections: `None` when its sslmode says plain text.
#[derive(Clone)]
pub(crate) struct Tls(Option<Arc<ClientConfig>>);

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.is_on() { "Tls(on)" } else { "Tls(off)" })
    }
}

impl Tls {
    /// The TLS to use for `config`; a mode other than `require` is turned into `disable`.
    pub(crate) fn for_config(
        config: &mut tokio_postgres::Config,
        ca_file: Option<&Path>,
    ) -> Result<Self, String> {
        if config.get_ssl_mode() != SslMode::Require {
            config.ssl_mode(SslMode::Disable);
            return Ok(Tls(None));
        }
        let mut roots = rustls::RootCertStore::empty();
        if let Some(path) = ca_file {
            let certs = crate::core::tls_files::ca_certificates(path)
                .map_err(|e| format!("ca_file: {e}"))?;
            let (added, _ignored) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(format!(
                    "ca_file: {} holds no usable CA certificate",
                    path.display()
                ));
            }
            return Self::with_roots(roots);
        }
        let found = rustls_native_certs::load_native_certs();
        let (added, _ignored) = roots.add_parsable_certificates(found.certs);
        if added == 0 {
            let why = found
                .errors
                .first()
                .map(|e| format!(": {e}"))
                .unwrap_or_default();
            return Err(format!(
                "sslmode=require, but no trusted CA certificate was found (system store, or SSL_CERT_FILE){why}"
            ));
        }
        Self::with_roots(roots)
    }

    fn with_roots(roots: rustls::RootCertStore) -> Result<Self, String> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let client = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS setup: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Tls(Some(Arc::new(client))))
    }

    pub(crate) fn is_on(&self) -> bool {
        self.0.is_some()
    }
}

impl MakeTlsConnect<Socket> for Tls {
    type Stream = Stream;
    type TlsConnect = Connector;
    type Error = io::Error;

    fn make_tls_connect(&mut self, domain: &str) -> Result<Connector, io::Error> {
        let name = ServerName::try_from(domain.to_owned())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        Ok(Connector {
            config: self.0.clone(),
            name,
        })
    }
}

pub(crate) struct Connector {
    config: Option<Arc<ClientConfig>>,
    name: ServerName<'static>,
}

impl TlsConnect<Socket> for Connector {
    type Stream = Stream;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Stream>> + Send>>;

    fn connect(self, socket: Socket) -> Self::Future {
        Box::pin(async move {
            // Not reached with sslmode=disable (the driver does not ask for TLS then).
            let Some(config) = self.config else {
                return Err(io::Error::other("TLS is off for this connection"));
            };
            let stream = tokio_rustls::TlsConnector::from(config)
                .connect(self.name, socket)
                .await?;
            Ok(Stream(stream))
        })
    }
}

pub(crate) struct Stream(tokio_rustls::client::TlsStream<Socket>);

impl TlsStream for Stream {
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}
