//! TLS for the gateways: a rustls server configuration from PEM files, re-read when they
//! change, with optional client certificates (mTLS) whose subject becomes a principal.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use flexcore_app::security::{AuthMethod, Principal};
use rustls::ServerConfig;
use rustls::server::WebPkiClientVerifier;

use crate::AuthError;

/// How often the files are checked for changes, at most.
const CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Where the server's certificate, key and client CA are, and the roles of client subjects.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TlsFiles {
    /// The certificate chain (PEM).
    pub cert: PathBuf,
    /// The private key (PEM).
    pub key: PathBuf,
    /// With it, clients must present a certificate signed by this CA (PEM).
    pub client_ca: Option<PathBuf>,
    /// A client certificate's subject common name → the roles its principal gets.
    pub client_roles: BTreeMap<String, Vec<String>>,
}

pub use flexcore_tls::install_crypto_provider;

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn tls_error(path: &Path, message: impl Into<String>) -> AuthError {
    AuthError::Key {
        path: path.to_owned(),
        message: message.into(),
    }
}

/// Builds the server configuration from the files (HTTP/1.1 and HTTP/2 by ALPN).
fn load(files: &TlsFiles) -> Result<ServerConfig, AuthError> {
    let chain = flexcore_tls::certificates(&files.cert)?;
    let key = flexcore_tls::private_key(&files.key)?;
    let builder = ServerConfig::builder_with_provider(flexcore_tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_error(&files.cert, e.to_string()))?;
    let builder = match &files.client_ca {
        Some(ca) => {
            let roots = flexcore_tls::root_store(ca)?;
            let verifier = WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                flexcore_tls::provider(),
            )
            .build()
            .map_err(|e| tls_error(ca, e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(chain, key).map_err(|e| {
        tls_error(
            &files.cert,
            format!("the certificate and key do not fit: {e}"),
        )
    })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

struct Loaded {
    config: Arc<ServerConfig>,
    stamps: Vec<Option<SystemTime>>,
}

/// The server configuration of the TLS files, re-read when one of them changes (checked at
/// most once a second, when a connection asks). A broken new file keeps the previous
/// configuration and is logged.
pub struct ServerTls {
    files: TlsFiles,
    loaded: RwLock<Loaded>,
    last_check: Mutex<Instant>,
    check_interval: Duration,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("files", &self.files)
            .finish()
    }
}

impl ServerTls {
    /// Loads the files; a missing or invalid one fails with its path named.
    pub fn load(files: TlsFiles) -> Result<Self, AuthError> {
        let config = Arc::new(load(&files)?);
        let stamps = Self::stamps_of(&files);
        Ok(Self {
            files,
            loaded: RwLock::new(Loaded { config, stamps }),
            last_check: Mutex::new(Instant::now()),
            check_interval: CHECK_INTERVAL,
        })
    }

    /// Checks the files for changes at most every `interval` (default one second).
    pub fn with_check_interval(mut self, interval: Duration) -> Self {
        self.check_interval = interval;
        self
    }

    fn stamps_of(files: &TlsFiles) -> Vec<Option<SystemTime>> {
        [
            Some(&files.cert),
            Some(&files.key),
            files.client_ca.as_ref(),
        ]
        .into_iter()
        .flatten()
        .map(|path| modified(path))
        .collect()
    }

    /// Whether clients must present a certificate.
    pub fn requires_client_certificates(&self) -> bool {
        self.files.client_ca.is_some()
    }

    /// The configuration for a new connection (re-read first if the files changed).
    pub fn config(&self) -> Arc<ServerConfig> {
        let due = {
            let mut last = self.last_check.lock().unwrap_or_else(|p| p.into_inner());
            let due = last.elapsed() >= self.check_interval;
            if due {
                *last = Instant::now();
            }
            due
        };
        if due {
            let stamps = Self::stamps_of(&self.files);
            let changed = self.loaded.read().unwrap_or_else(|p| p.into_inner()).stamps != stamps;
            if changed {
                let mut loaded = self.loaded.write().unwrap_or_else(|p| p.into_inner());
                match load(&self.files) {
                    Ok(config) => {
                        tracing::info!(cert = %self.files.cert.display(), "TLS certificate reloaded");
                        loaded.config = Arc::new(config);
                    }
                    Err(e) => tracing::error!(
                        error = %e,
                        "cannot reload the TLS files; keeping the previous certificate"
                    ),
                }
                loaded.stamps = stamps;
            }
        }
        Arc::clone(&self.loaded.read().unwrap_or_else(|p| p.into_inner()).config)
    }

    /// The principal of a verified client certificate (its leaf, DER): the subject's common
    /// name, with the roles `client_roles` gives it.
    pub fn client_principal(&self, certificate: &[u8]) -> Option<Principal> {
        let subject = common_name(certificate)?;
        let roles = self
            .files
            .client_roles
            .get(&subject)
            .cloned()
            .unwrap_or_default();
        Some(Principal::new(
            subject,
            roles,
            AuthMethod::ClientCertificate,
        ))
    }
}

/// The subject common name (`CN`) of a DER certificate.
pub fn common_name(certificate: &[u8]) -> Option<String> {
    use x509_cert::der::Decode;
    let parsed = x509_cert::Certificate::from_der(certificate).ok()?;
    let subject = parsed.tbs_certificate.subject.to_string();
    subject
        .split(',')
        .find_map(|part| part.trim().strip_prefix("CN="))
        .map(str::to_owned)
}
