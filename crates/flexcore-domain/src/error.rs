//! Typed domain errors.

use crate::stream::ExpectedVersion;

/// The portable kind of every failure in FlexCore — the one vocabulary the domain, the
/// engine and every adapter classify into, and every gateway maps once to its own error model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The input breaks a rule (HTTP 422, gRPC `INVALID_ARGUMENT`).
    Validation,
    /// The change collides with existing state: the thing exists, or a stream is not at the
    /// expected version (HTTP 409, gRPC `ABORTED`/`FAILED_PRECONDITION`).
    Conflict,
    /// An engine operation collides with another one in progress: a rebuild already running,
    /// a checkpoint another runner moved (HTTP 409 `conflict`, gRPC `ABORTED`). Distinct from
    /// [`ErrorKind::Conflict`] so the engine can tell its own races from a business conflict.
    Contended,
    /// The addressed thing does not exist (HTTP 404, gRPC `NOT_FOUND`).
    NotFound,
    /// The caller is not authenticated (HTTP 401, gRPC `UNAUTHENTICATED`).
    Unauthorized,
    /// The caller may not do this (HTTP 403, gRPC `PERMISSION_DENIED`).
    Forbidden,
    /// The caller sent too many requests; it may retry after a while (HTTP 429 with
    /// `Retry-After`, gRPC `RESOURCE_EXHAUSTED`).
    RateLimited,
    /// A backend cannot be reached or is overloaded; retrying later may succeed (HTTP 503,
    /// gRPC `UNAVAILABLE`).
    Unavailable,
    /// A bug or an unexpected backend failure (HTTP 500, gRPC `INTERNAL`); details are logged,
    /// never shown to clients.
    Internal,
}

impl ErrorKind {
    /// The stable machine-readable code every gateway answers with.
    pub fn code(self) -> &'static str {
        match self {
            Self::Validation => "validation_failed",
            Self::Conflict | Self::Contended => "conflict",
            Self::NotFound => "not_found",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::RateLimited => "rate_limited",
            Self::Unavailable => "unavailable",
            Self::Internal => "internal",
        }
    }

    /// The HTTP status of this kind (the message gateway's replies carry it too).
    pub fn http_status(self) -> u16 {
        match self {
            Self::Validation => 422,
            Self::Conflict | Self::Contended => 409,
            Self::NotFound => 404,
            Self::Unauthorized => 401,
            Self::Forbidden => 403,
            Self::RateLimited => 429,
            Self::Unavailable => 503,
            Self::Internal => 500,
        }
    }

    /// Whether this is a failure of the system rather than a refusal of the request
    /// (unavailable or internal): logged as an error, counted as `error`, not remembered as an
    /// answer, retried by consumers.
    pub fn is_transient(self) -> bool {
        matches!(self, Self::Unavailable | Self::Internal)
    }
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
