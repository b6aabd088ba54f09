//! The application layer's one error type.

use flexcore_domain::DomainError;

/// A portable classification of every failure, mapped once by each gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// Invalid input (422).
    Validation,
    /// A collision with existing state (409).
    Conflict,
    /// Nothing there (404).
    NotFound,
    /// Not authenticated (401).
    Unauthorized,
    /// Not allowed (403).
    Forbidden,
    /// A backend cannot be reached or is overloaded; retrying later may succeed (503).
    Unavailable,
    /// A bug or an unexpected backend failure (500); details are logged, not shown.
    Internal,
}

impl ErrorKind {
    /// The stable machine-readable code every gateway answers with.
    pub fn code(self) -> &'static str {
        match self {
            Self::Validation => "validation_failed",
            Self::Conflict => "conflict",
            Self::NotFound => "not_found",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::Unavailable => "unavailable",
            Self::Internal => "internal",
        }
    }

    /// The HTTP status of this kind (the message gateway's replies carry it too).
    pub fn http_status(self) -> u16 {
        match self {
            Self::Validation => 422,
            Self::Conflict => 409,
            Self::NotFound => 404,
            Self::Unauthorized => 401,
            Self::Forbidden => 403,
            Self::Unavailable => 503,
            Self::Internal => 500,
        }
    }
}

/// Everything that can go wrong in the application layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A business rule or a concurrency check said no.
    #[error(transparent)]
    Domain(#[from] DomainError),
    /// No handler is registered for this command type.
    #[error("unknown command type '{0}'")]
    UnknownCommand(String),
    /// No handler is registered for this query type.
    #[error("unknown query type '{0}'")]
    UnknownQuery(String),
    /// A backend is unreachable or timed out.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The engine was configured or assembled wrongly (e.g. two modules claim one command
    /// type); reported at start.
    #[error("invalid configuration: {0}")]
    Configuration(String),
    /// An unexpected failure; the message is for logs only.
    #[error("internal error: {0}")]
    Internal(String),
}

/// The application layer's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The portable kind of this error.
    pub fn kind(&self) -> ErrorKind {
        use flexcore_domain::ErrorKind as D;
        match self {
            Self::Domain(e) => match e.kind() {
                D::Validation => ErrorKind::Validation,
                D::Conflict => ErrorKind::Conflict,
                D::NotFound => ErrorKind::NotFound,
                D::Unauthorized => ErrorKind::Unauthorized,
                D::Forbidden => ErrorKind::Forbidden,
            },
            Self::UnknownCommand(_) | Self::UnknownQuery(_) => ErrorKind::NotFound,
            Self::Unavailable(_) => ErrorKind::Unavailable,
            Self::Configuration(_) | Self::Internal(_) => ErrorKind::Internal,
        }
    }

    /// Shorthand for a validation error.
    pub fn validation(message: impl Into<String>) -> Self {
        Self::Domain(DomainError::Validation(message.into()))
    }

    /// What a client may be told about this error. Internal and unavailable errors get a fixed
    /// text, because their messages carry backend details (hosts, SQL, paths) that stay in the
    /// logs; a validation error gives its rule without the `validation failed:` prefix.
    pub fn client_message(&self) -> String {
        match (self, self.kind()) {
            (Self::Domain(DomainError::Validation(message)), _) => message.clone(),
            (_, ErrorKind::Unavailable) => "a backend is unavailable; retry later".to_owned(),
            (_, ErrorKind::Internal) => "internal server error".to_owned(),
            _ => self.to_string(),
        }
    }

    /// Whether this is a wrong-expected-version conflict, which a retry with fresh state may
    /// resolve.
    pub fn is_wrong_expected_version(&self) -> bool {
        matches!(self, Self::Domain(DomainError::WrongExpectedVersion { .. }))
    }
}
