//! FlexCore's authentication and rate-limit adapters.
//!
//! * [`TokenVerifier`]: JWT bearer tokens, HS256 with a shared secret, RS256 / ES256 / EdDSA
//!   with public keys from PEM files or a local JWKS file (re-read when it changes);
//! * [`ApiKeys`]: named, revocable service keys stored as SHA-256 hashes;
//! * [`Credentials`]: both behind one [`flexcore_app::security::Authenticator`];
//! * [`tls::ServerTls`]: the gateways' rustls configuration from PEM files, reloaded on
//!   change, with client certificates (mTLS) mapped to principals;
//! * [`TokenBuckets`]: per-client, per-route-class rate limits (governor), behind
//!   [`flexcore_app::security::Admission`].

mod api_keys;
mod jwt;
mod rate;
pub mod tls;
mod verified;

use std::path::PathBuf;

use flexcore_app::security::{AuthFailure, Authenticator, Credential, Principal};

pub use api_keys::{API_KEY_PREFIX, ApiKeyEntry, ApiKeys, hash_api_key, new_api_key};
pub use jwt::{DEFAULT_LEEWAY, JwtSettings, TokenVerifier, mint_hs256};
pub use rate::{Bucket, TokenBuckets};

/// Why the authentication or rate-limit setup is unusable (reported at start). Never carries a
/// secret.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// A key file cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A key file holds no usable key.
    #[error("invalid key file {path}: {message}")]
    Key {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A TLS file cannot be used.
    #[error(transparent)]
    Tls(#[from] flexcore_tls::TlsError),
    /// The HS256 secret is too short to resist guessing.
    #[error("the HS256 secret has {0} bytes; it needs at least 32")]
    WeakSecret(usize),
    /// An API key entry is unusable.
    #[error("{0}")]
    ApiKey(String),
    /// A rate limit is unusable.
    #[error("{0}")]
    RateLimit(String),
    /// A token cannot be made.
    #[error("cannot mint a token: {0}")]
    Mint(String),
}

/// Every configured way to authenticate: JWT bearer tokens and API keys.
#[derive(Debug)]
pub struct Credentials {
    tokens: Option<TokenVerifier>,
    api_keys: ApiKeys,
}

impl Credentials {
    /// Accepts tokens `tokens` verifies (none when `None`) and the keys of `api_keys`.
    pub fn new(tokens: Option<TokenVerifier>, api_keys: ApiKeys) -> Self {
        Self { tokens, api_keys }
    }

    /// Whether any credential can be accepted at all.
    pub fn is_configured(&self) -> bool {
        self.tokens.is_some() || !self.api_keys.is_empty()
    }
}

impl Authenticator for Credentials {
    fn authenticate(&self, credential: Credential<'_>) -> Result<Principal, AuthFailure> {
        match credential {
            Credential::Bearer(token) => match &self.tokens {
                Some(tokens) => tokens.verify(token),
                None => Err(AuthFailure("bearer tokens are not accepted here".into())),
            },
            Credential::ApiKey(key) => self.api_keys.verify(key),
        }
    }
}
