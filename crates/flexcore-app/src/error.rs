//! The application layer's one error type.

use std::sync::Arc;

use flexcore_domain::DomainError;
pub use flexcore_domain::ErrorKind;

/// The cause behind an internal or unavailable error, kept for the logs (shared, because one
/// backend failure can answer several waiting requests).
pub type Cause = Arc<dyn std::error::Error + Send + Sync>;

/// Everything that can go wrong in the application layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A business rule or a concurrency check said no.
    #[error(transparent)]
    Domain(#[from] DomainError),
    /// A command payload or an event's data does not match the schema of its type.
    #[error("validation failed: {0}")]
    SchemaViolation(#[from] crate::validation::SchemaViolation),
    /// A plugin refused the input, naming the rules it breaks (the protocol's
    /// `validation_failed`).
    #[error("validation failed: {message}")]
    Rejected {
        /// The plugin's reason, which clients see.
        message: String,
        /// The rules broken, each at its JSON pointer (may be empty).
        violations: Vec<crate::validation::Violation>,
    },
    /// No handler is registered for this command type.
    #[error("unknown command type '{0}'")]
    UnknownCommand(String),
    /// No handler is registered for this query type.
    #[error("unknown query type '{0}'")]
    UnknownQuery(String),
    /// A backend is unreachable or timed out.
    #[error("unavailable: {message}")]
    Unavailable {
        /// What failed, for the logs.
        message: String,
        /// The backend's own error, if any.
        #[source]
        source: Option<Cause>,
    },
    /// An engine operation collided with another one in progress (a rebuild already running,
    /// a checkpoint another runner moved).
    #[error("contended: {0}")]
    Contended(String),
    /// The caller's rate limit for this route class is spent.
    #[error("rate limited: too many {} requests; retry in {}s", .class.as_str(), retry_after_secs(*.retry_after))]
    RateLimited {
        /// The route class whose bucket is empty.
        class: crate::security::RouteClass,
        /// How long until one more request is admitted.
        retry_after: std::time::Duration,
    },
    /// The engine was configured or assembled wrongly (e.g. two modules claim one command
    /// type); reported at start.
    #[error("invalid configuration: {0}")]
    Configuration(String),
    /// An unexpected failure; the message is for logs only.
    #[error("internal error: {message}")]
    Internal {
        /// What failed, for the logs.
        message: String,
        /// The underlying error, if any.
        #[source]
        source: Option<Cause>,
    },
}

/// Whole seconds to wait, rounded up (the `Retry-After` value; at least 1).
pub fn retry_after_secs(wait: std::time::Duration) -> u64 {
    (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
}

/// The application layer's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The portable kind of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Domain(e) => e.kind(),
            Self::SchemaViolation(_) | Self::Rejected { .. } => ErrorKind::Validation,
            Self::UnknownCommand(_) | Self::UnknownQuery(_) => ErrorKind::NotFound,
            Self::Unavailable { .. } => ErrorKind::Unavailable,
            Self::Contended(_) => ErrorKind::Contended,
            Self::RateLimited { .. } => ErrorKind::RateLimited,
            Self::Configuration(_) | Self::Internal { .. } => ErrorKind::Internal,
        }
    }

    /// An internal error (a bug or an unexpected backend failure) described by `message`.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::Internal {
            message: message.into(),
            source: None,
        }
    }

    /// An internal error caused by `source`, which the logs show after `message`.
    pub fn internal_from(
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self::Internal {
            message: message.into(),
            source: Some(Arc::new(source)),
        }
    }

    /// A backend that cannot be reached or is overloaded, described by `message`.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::Unavailable {
            message: message.into(),
            source: None,
        }
    }

    /// A backend failure caused by `source`, which the logs show after `message`.
    pub fn unavailable_from(
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self::Unavailable {
            message: message.into(),
            source: Some(Arc::new(source)),
        }
    }

    /// Whether this is a failure of the system rather than a refusal of the request (see
    /// [`ErrorKind::is_transient`]).
    pub fn is_transient(&self) -> bool {
        self.kind().is_transient()
    }

    /// This error with its causes, `message: cause: cause…`, for the logs.
    pub fn chain(&self) -> ErrorChain<'_> {
        ErrorChain(self)
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
            (Self::SchemaViolation(violation), _) => violation.to_string(),
            (Self::Rejected { message, .. }, _) => message.clone(),
            (_, ErrorKind::Unavailable) => "a backend is unavailable; retry later".to_owned(),
            (_, ErrorKind::Internal) => "internal server error".to_owned(),
            _ => self.to_string(),
        }
    }

    /// The schema rules a payload broke, each at its JSON pointer: what gateways list beside
    /// the message (empty for every other error).
    pub fn violations(&self) -> &[crate::validation::Violation] {
        match self {
            Self::SchemaViolation(violation) => &violation.violations,
            Self::Rejected { violations, .. } => violations,
            _ => &[],
        }
    }

    /// Whether this is a wrong-expected-version conflict, which a retry with fresh state may
    /// resolve.
    pub fn is_wrong_expected_version(&self) -> bool {
        matches!(self, Self::Domain(DomainError::WrongExpectedVersion { .. }))
    }
}

/// Shows an error followed by each of its causes (see [`Error::chain`]); a cause whose text
/// the line already ends with (an adapter error kept as the source of its own message) is not
/// repeated.
pub struct ErrorChain<'a>(&'a Error);

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut line = self.0.to_string();
        let mut cause = std::error::Error::source(self.0);
        while let Some(error) = cause {
            let text = error.to_string();
            if !line.ends_with(&text) {
                line.push_str(": ");
                line.push_str(&text);
            }
            cause = error.source();
        }
        f.write_str(&line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causes_are_kept_and_shown_in_the_chain() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let error = Error::unavailable_from("redis at 127.0.0.1:6379", io);
        assert_eq!(error.to_string(), "unavailable: redis at 127.0.0.1:6379");
        assert_eq!(
            error.chain().to_string(),
            "unavailable: redis at 127.0.0.1:6379: refused"
        );
        assert!(error.is_transient());
        assert_eq!(
            Error::internal("bug").chain().to_string(),
            "internal error: bug"
        );
        assert!(!Error::validation("no").is_transient());
        assert_eq!(Error::Contended("x".into()).kind().code(), "conflict");
    }
}
