//! The adapter's error type. No variant ever carries key material.

use std::path::PathBuf;

/// Everything that can go wrong with keys.
#[derive(Debug, thiserror::Error)]
pub enum GdprError {
    /// The master key file cannot be read.
    #[error("cannot read the GDPR master key file {0}")]
    MasterKeyFile(PathBuf, #[source] std::io::Error),
    /// The master key file does not hold a key.
    #[error(
        "the GDPR master key file {0} must hold exactly 32 bytes: raw, as 64 hex digits, or in \
         base64 (e.g. `head -c 32 /dev/urandom > {0}`)"
    )]
    MasterKeyFormat(PathBuf),
    /// A stored data key does not unwrap with this master key.
    #[error(
        "the data key of subject '{0}' does not unwrap with the configured master key: the \
         master key file is not the one the keys were wrapped with, or the key table was altered"
    )]
    WrongMasterKey(String),
    /// The system random generator failed.
    #[error("the system random generator failed")]
    Random,
}

impl From<GdprError> for flexcore_app::Error {
    fn from(error: GdprError) -> Self {
        match error {
            GdprError::MasterKeyFile(..) | GdprError::MasterKeyFormat(_) => {
                Self::Configuration(error.to_string())
            }
            other => Self::internal_from(other.to_string(), other),
        }
    }
}
