//! FlexCore's TLS building blocks, on rustls with ring as the only crypto provider.
//!
//! - [`certificates`] and [`private_key`] read PEM files, naming the file on failure (and
//!   never quoting key material).
//! - [`ClientTlsFiles`] is the CA file and optional client certificate of an outbound
//!   connection, taken from a service URL (`ca_file=`, `cert_file=`, `key_file=`), and
//!   [`ClientTlsFiles::client_config`] the rustls client configuration they make: the
//!   server's certificate is always verified, against the CA file or else the system's roots.

mod client;

use std::path::{Path, PathBuf};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

pub use client::{ClientTlsFiles, HostnameCheck, IdentityPem};

/// A TLS file that cannot be used, or a configuration that cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file is missing, unreadable or holds nothing usable.
    #[error("TLS file {}: {message}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// The files do not make a configuration (e.g. a certificate without its key).
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// Installs ring as the process's rustls provider (once; later calls are no-ops). Every
/// configuration FlexCore builds uses ring explicitly; this serves drivers that ask rustls
/// for the process default.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The crypto provider every FlexCore configuration is built with.
pub fn provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    std::sync::Arc::new(rustls::crypto::ring::default_provider())
}

fn file_error(path: &Path, message: impl Into<String>) -> TlsError {
    TlsError::File {
        path: path.to_owned(),
        message: message.into(),
    }
}

/// The certificates of a PEM file (at least one).
pub fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(path, e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(path, e.to_string()))?;
    if certs.is_empty() {
        return Err(file_error(path, "no PEM certificate in the file"));
    }
    Ok(certs)
}

/// The private key of a PEM file. Its parse error could quote key material: only its kind is
/// reported.
pub fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|_| file_error(path, "no readable PEM private key in the file"))
}

/// A trust store of the CA certificates in a PEM file.
pub fn root_store(path: &Path) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in certificates(path)? {
        roots
            .add(cert)
            .map_err(|e| file_error(path, format!("not a CA certificate: {e}")))?;
    }
    Ok(roots)
}

/// The bytes of a file, for drivers that parse PEM themselves.
pub(crate) fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| file_error(path, e.to_string()))
}
