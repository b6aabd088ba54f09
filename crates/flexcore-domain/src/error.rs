//! Typed domain errors.

use crate::stream::ExpectedVersion;

/// The portable kind of a failure, which every gateway maps to its own error model once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The input breaks a rule (HTTP 422, gRPC `INVALID_ARGUMENT`).
    Validation,
    /// The change collides with existing state (HTTP 409, gRPC `ABORTED`/`FAILED_PRECONDITION`).
    Conflict,
    /// The addressed thing does not exist (HTTP 404, gRPC `NOT_FOUND`).
    NotFound,
    /// The caller is not authenticated (HTTP 401, gRPC `UNAUTHENTICATED`).
    Unauthorized,
    /// The caller may not do this (HTTP 403, gRPC `PERMISSION_DENIED`).
    Forbidden,
}

/// A business rule said no.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    /// The input is invalid; the message says which rule it breaks.
    #[error("validation failed: {0}")]
    Validation(String),
    /// The thing to create already exists (e.g. an email already in use).
    #[error("conflict: {0}")]
    AlreadyExists(String),
    /// A stream was not at the version the writer expected.
    #[error("wrong expected version on stream '{stream_id}': expected {expected}, current {}", current_display(.current))]
    WrongExpectedVersion {
        /// The stream whose expectation failed.
        stream_id: String,
        /// What the writer expected.
        expected: ExpectedVersion,
        /// The stream's version when the check ran (`None`: the stream does not exist).
        current: Option<u64>,
    },
    /// The addressed thing does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// The caller is not authenticated.
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// The caller is not allowed to do this.
    #[error("forbidden: {0}")]
    Forbidden(String),
}

fn current_display(current: &Option<u64>) -> String {
    current.map_or_else(|| "none (no stream)".to_owned(), |v| v.to_string())
}

impl DomainError {
    /// Shorthand for a validation error.
    pub fn validation(message: impl Into<String>) -> Self {
        Self::Validation(message.into())
    }

    /// The portable kind of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Validation(_) => ErrorKind::Validation,
            Self::AlreadyExists(_) | Self::WrongExpectedVersion { .. } => ErrorKind::Conflict,
            Self::NotFound(_) => ErrorKind::NotFound,
            Self::Unauthorized(_) => ErrorKind::Unauthorized,
            Self::Forbidden(_) => ErrorKind::Forbidden,
        }
    }
}
