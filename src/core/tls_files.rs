//! The TLS material of the gRPC listener (`listen.grpc_tls`): certificate, key and client-CA
//! files → a complete rustls [`ServerConfig`] (with `client_ca`, a verifier that *requires* a
//! client certificate chaining to it; ALPN `h2`). `check-config` validates the files through
//! [`check`]; [`crate::serve::tls`] serves the config and reloads it when the files change.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ServerConfig, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;

/// Certificate files for the gRPC listener (PEM).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// CA bundle client certificates must chain to; `None` = no client certificate asked.
    pub client_ca: Option<PathBuf>,
}

/// Why the TLS material cannot be used. Each names the config field whose file is at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("listen.grpc_tls.{field}: cannot read {}: {source}", path.display())]
    Read {
        field: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("listen.grpc_tls.{field}: {}: {problem}", path.display())]
    Invalid {
        field: &'static str,
        path: PathBuf,
        problem: String,
    },
    #[error("listen.grpc_tls: {0}")]
    Unsupported(String),
}

/// Read and check the files without serving (what `check-config` can call).
pub fn check(files: &TlsFiles) -> Result<(), TlsError> {
    build(files, &provider()).map(|_| ())
}

pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn read(field: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        field,
        path: path.to_owned(),
        source,
    })
}

fn invalid(field: &'static str, path: &Path, problem: impl std::fmt::Display) -> TlsError {
    TlsError::Invalid {
        field,
        path: path.to_owned(),
        problem: problem.to_string(),
    }
}

fn certificates(
    field: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(field, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(field, path, format!("invalid PEM: {e}")))?;
    if certs.is_empty() {
        return Err(invalid(field, path, "no CERTIFICATE block in the PEM file"));
    }
    Ok(certs)
}

/// The CA certificates of a PEM file (a database's `ca_file`): at least one, or why not.
pub fn ca_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: invalid PEM: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{}: no CERTIFICATE block in the PEM file",
            path.display()
        ));
    }
    Ok(certs)
}

/// A complete server config from the files.
pub fn build(files: &TlsFiles, provider: &Arc<CryptoProvider>) -> Result<ServerConfig, TlsError> {
    let chain = certificates("cert", &files.cert)?;
    let key_pem = read("key", &files.key)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        invalid(
            "key",
            &files.key,
            format!("no usable PRIVATE KEY block (PKCS#8, PKCS#1 or SEC1): {e}"),
        )
    })?;
    // Checks the key (type supported, parses) and that it belongs to the certificate.
    let certified = CertifiedKey::from_der(chain, key, provider).map_err(|e| {
        invalid(
            "key",
            &files.key,
            format!(
                "cannot be used with the certificate in {}: {e}",
                files.cert.display()
            ),
        )
    })?;

    let builder = ServerConfig::builder_with_provider(Arc::clone(provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Unsupported(e.to_string()))?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca_path) => {
            let mut roots = RootCertStore::empty();
            for ca in certificates("client_ca", ca_path)? {
                roots
                    .add(ca)
                    .map_err(|e| invalid("client_ca", ca_path, format!("not a usable CA: {e}")))?;
            }
            // Client certificates are required: the builder's default (no
            // `allow_unauthenticated`).
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(provider))
                    .build()
                    .map_err(|e| invalid("client_ca", ca_path, e))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config =
        builder.with_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(certified)));
    // gRPC is HTTP/2; Envoy's HTTP/2 cluster over TLS offers (and needs) `h2`.
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}
