//! The client side: the TLS files of an outbound connection and the configuration they make.

use std::path::PathBuf;
use std::sync::Arc;

use flexcore_app::service_url::{InvalidUrl, ServiceUrl};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, SignatureScheme};

use crate::{TlsError, certificates, private_key, provider, read, root_store};

/// Whether the server's certificate must also name the host connected to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostnameCheck {
    /// The certificate chains to a trusted CA and names the host (the default everywhere).
    Verify,
    /// The certificate chains to a trusted CA; its names are not checked (PostgreSQL's
    /// `sslmode=verify-ca`).
    Skip,
}

/// A client certificate chain and its private key, as PEM bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct IdentityPem {
    /// The certificate chain (PEM).
    pub cert: Vec<u8>,
    /// The private key (PEM).
    pub key: Vec<u8>,
}

impl std::fmt::Debug for IdentityPem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityPem").finish_non_exhaustive()
    }
}

/// The TLS files of an outbound connection: whom to trust, and who we are.
///
/// Without a CA file the system's roots are trusted. A client certificate (for servers that
/// require one) needs both `cert_file` and `key_file`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientTlsFiles {
    /// The CA certificates (PEM) the server's certificate must chain to.
    pub ca_file: Option<PathBuf>,
    /// The client certificate chain (PEM).
    pub cert_file: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    pub key_file: Option<PathBuf>,
}

impl ClientTlsFiles {
    /// Takes `ca_file`, `cert_file` and `key_file` out of a service URL (the names PostgreSQL
    /// users know, `sslrootcert`, `sslcert` and `sslkey`, are taken by the store itself). A
    /// certificate without its key, or the reverse, is refused.
    pub fn take_from(url: &mut ServiceUrl) -> Result<Self, InvalidUrl> {
        Self {
            ca_file: url.take("ca_file").map(PathBuf::from),
            cert_file: url.take("cert_file").map(PathBuf::from),
            key_file: url.take("key_file").map(PathBuf::from),
        }
        .checked()
    }

    /// Splits a service URL into the driver's URL (without the TLS parameters) and its TLS
    /// files; files on a URL whose scheme is not one of `tls_schemes` are refused, since they
    /// would be silently ignored.
    pub fn split(url: &str, tls_schemes: &[&str]) -> Result<(String, Self), InvalidUrl> {
        let mut parsed = ServiceUrl::parse(url)?;
        let files = Self::take_from(&mut parsed)?;
        if !files.is_empty() && !tls_schemes.contains(&parsed.scheme()) {
            return Err(InvalidUrl(format!(
                "ca_file, cert_file and key_file need a TLS URL ({}://)",
                tls_schemes.join("://, ")
            )));
        }
        Ok((parsed.driver_url(), files))
    }

    /// The files as given, refused when a certificate comes without its key or the reverse.
    pub fn checked(self) -> Result<Self, InvalidUrl> {
        if self.cert_file.is_some() != self.key_file.is_some() {
            return Err(InvalidUrl(
                "a client certificate needs both cert_file and key_file".into(),
            ));
        }
        Ok(self)
    }

    /// Whether no file is named (the driver's defaults apply).
    pub fn is_empty(&self) -> bool {
        self.ca_file.is_none() && self.cert_file.is_none()
    }

    /// The CA file's bytes (PEM), for drivers that parse it themselves.
    pub fn ca_pem(&self) -> Result<Option<Vec<u8>>, TlsError> {
        self.ca_file.as_deref().map(read).transpose()
    }

    /// The client certificate and key (PEM), for drivers that parse them themselves.
    pub fn identity_pem(&self) -> Result<Option<IdentityPem>, TlsError> {
        match (&self.cert_file, &self.key_file) {
            (Some(cert), Some(key)) => Ok(Some(IdentityPem {
                cert: read(cert)?,
                key: read(key)?,
            })),
            _ => Ok(None),
        }
    }

    /// The roots the server's certificate must chain to: the CA file, else the system's.
    pub fn roots(&self) -> Result<rustls::RootCertStore, TlsError> {
        if let Some(ca) = &self.ca_file {
            return root_store(ca);
        }
        let found = rustls_native_certs::load_native_certs();
        for error in &found.errors {
            tracing::debug!(%error, "a system root certificate could not be read");
        }
        let mut roots = rustls::RootCertStore::empty();
        let (added, _ignored) = roots.add_parsable_certificates(found.certs);
        if added == 0 {
            return Err(TlsError::Config(
                "no CA file given and no system root certificates found".into(),
            ));
        }
        Ok(roots)
    }

    /// The rustls client configuration: the server verified against [`Self::roots`] (its host
    /// name too, unless `hostname` says to skip it), and the client certificate when given.
    pub fn client_config(&self, hostname: HostnameCheck) -> Result<ClientConfig, TlsError> {
        let provider = provider();
        let roots = Arc::new(self.roots()?);
        let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let builder = match hostname {
            HostnameCheck::Verify => builder.with_root_certificates(roots),
            HostnameCheck::Skip => {
                let chain_only = ChainOnly(
                    WebPkiServerVerifier::builder_with_provider(roots, provider)
                        .build()
                        .map_err(|e| TlsError::Config(e.to_string()))?,
                );
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(chain_only))
            }
        };
        match (&self.cert_file, &self.key_file) {
            (Some(cert), Some(key)) => builder
                .with_client_auth_cert(certificates(cert)?, private_key(key)?)
                .map_err(|e| {
                    TlsError::Config(format!(
                        "the client certificate {} and its key do not fit: {e}",
                        cert.display()
                    ))
                }),
            _ => Ok(builder.with_no_client_auth()),
        }
    }
}

/// Verifies the chain, signatures and validity of the server's certificate, but not that it
/// names the host: what `sslmode=verify-ca` asks for.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flexcore_test_support::tls::TestPki;

    #[test]
    fn tls_files_leave_the_url_and_need_a_tls_scheme() {
        let (url, files) =
            ClientTlsFiles::split("rediss://h:6380/0?ca_file=/ca.pem&prefix=p", &["rediss"])
                .unwrap();
        assert_eq!(url, "rediss://h:6380/0?prefix=p");
        assert_eq!(files.ca_file, Some(PathBuf::from("/ca.pem")));
        let plain = ClientTlsFiles::split("redis://h/?ca_file=/ca.pem", &["rediss"]);
        assert!(plain.unwrap_err().0.contains("need a TLS URL"));
        let (_, none) = ClientTlsFiles::split("redis://h/", &["rediss"]).unwrap();
        assert!(none.is_empty());
    }

    #[test]
    fn a_certificate_needs_its_key() {
        let half = ClientTlsFiles::split("amqps://h/?cert_file=/c.pem", &["amqps"]);
        assert!(half.unwrap_err().0.contains("key_file"));
    }

    #[test]
    fn configurations_come_from_the_files_and_name_a_bad_one() {
        let pki = TestPki::new();
        let client = pki.client("relay");
        let files = ClientTlsFiles {
            ca_file: Some(pki.ca_file.clone()),
            cert_file: Some(client.cert.clone()),
            key_file: Some(client.key.clone()),
        };
        for check in [HostnameCheck::Verify, HostnameCheck::Skip] {
            let config = files.client_config(check).unwrap();
            assert!(config.client_auth_cert_resolver.has_certs());
        }
        let wrong_key = ClientTlsFiles {
            key_file: Some(pki.server.key.clone()),
            ..files.clone()
        };
        let error = wrong_key.client_config(HostnameCheck::Verify).unwrap_err();
        assert!(error.to_string().contains("do not fit"), "{error}");
        let not_a_ca = ClientTlsFiles {
            ca_file: Some(client.key.clone()),
            ..ClientTlsFiles::default()
        };
        let error = not_a_ca.client_config(HostnameCheck::Verify).unwrap_err();
        assert!(
            error
                .to_string()
                .contains(&client.key.display().to_string()),
            "{error}"
        );
    }
}
