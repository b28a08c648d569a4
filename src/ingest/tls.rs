//! TLS on the ingest listener (rustls, PEM files): the server configuration.
//! Handshakes run in each connection's own task, under the listener's header
//! timeout (see `listen`), so a slow or silent client never holds up the others.

use std::path::PathBuf;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls;
use tokio_rustls::TlsAcceptor;

/// PEM files of the ingest listener's certificate chain and private key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the TLS certificate chain {path}: {message}; give a PEM file with the server certificate first (ingest.tls_cert, or tls_cert of a [[sources.syslog]])")]
    Cert { path: String, message: String },
    #[error("cannot read the TLS private key {path}: {message}; give a PEM file with one PKCS#8, PKCS#1 or SEC1 key (ingest.tls_key, or tls_key of a [[sources.syslog]])")]
    Key { path: String, message: String },
    #[error("the TLS certificate and key do not make a server configuration: {0}")]
    Config(String),
}

/// Reads the PEM files and builds the server side of TLS for HTTP.
pub fn acceptor(files: &TlsFiles) -> Result<TlsAcceptor, TlsError> {
    let mut config = server_config(files)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Reads the PEM files and builds a TLS server configuration, with no
/// application protocol named (syslog over TLS, RFC 5425, names none).
pub fn server_config(files: &TlsFiles) -> Result<rustls::ServerConfig, TlsError> {
    let cert_error = |message: String| TlsError::Cert {
        path: files.cert.display().to_string(),
        message,
    };
    let certs = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| cert_error(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| cert_error(e.to_string()))?;
    if certs.is_empty() {
        return Err(cert_error("it holds no certificate".into()));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| TlsError::Key {
        path: files.key.display().to_string(),
        message: e.to_string(),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Config(e.to_string()))
}
