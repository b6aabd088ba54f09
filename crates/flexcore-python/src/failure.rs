//! What a Python call can end in besides a value, and the application error each becomes.

use std::time::Duration;

use flexcore_app::Error;
use flexcore_domain::DomainError;

/// Which of the `flexcore` refusals a handler raised: the client's answer follows from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RefusalKind {
    /// `ValidationError` (and a missing or mistyped command field): 422.
    Validation,
    /// `ConflictError`: 409.
    Conflict,
    /// `NotFoundError`: 404.
    NotFound,
    /// `Forbidden`: 403.
    Forbidden,
}

impl RefusalKind {
    /// The kind named by a refusal class's `kind` attribute.
    pub(crate) fn from_name(name: &str) -> Option<Self> {
        match name {
            "validation" => Some(Self::Validation),
            "conflict" => Some(Self::Conflict),
            "not_found" => Some(Self::NotFound),
            "forbidden" => Some(Self::Forbidden),
            _ => None,
        }
    }
}

/// Why a Python call did not produce a value.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The handler refused the request; `code` is its optional stable reason.
    Refused {
        kind: RefusalKind,
        message: String,
        code: Option<String>,
    },
    Exception {
        exception: String,
        traceback: String,
    },
    Invalid(String),
    Timeout(Duration),
    Stopped,
}

impl Failure {
    /// The error of a durable consumer: operators see it in the dead letters, so an exception
    /// keeps its message (the traceback's last line); the full traceback is logged.
    pub(crate) fn into_consumer_error(self, consumer: &str) -> Error {
        match self {
            Self::Exception {
                exception,
                traceback,
            } => {
                tracing::error!(target: "flexcore_python", consumer, exception, "python consumer raised an exception:\n{traceback}");
                let last = traceback.lines().rev().find(|l| !l.trim().is_empty());
                Error::internal(format!(
                    "python consumer '{consumer}' raised {}",
                    last.unwrap_or(&exception).trim()
                ))
            }
            other => other.into_error(consumer),
        }
    }

    /// The application error, logging what clients must not see.
    pub(crate) fn into_error(self, handler: &str) -> Error {
        match self {
            Self::Refused {
                kind,
                message,
                code,
            } => {
                // The gateways' `code` field names the error kind; the handler's own code
                // travels in the message, where clients see it on every transport.
                let message = match code {
                    Some(code) => format!("{message} [{code}]"),
                    None => message,
                };
                let refusal = match kind {
                    RefusalKind::Validation => DomainError::Validation(message),
                    RefusalKind::Conflict => DomainError::AlreadyExists(message),
                    RefusalKind::NotFound => DomainError::NotFound(message),
                    RefusalKind::Forbidden => DomainError::Forbidden(message),
                };
                Error::Domain(refusal)
            }
            Self::Exception {
                exception,
                traceback,
            } => {
                tracing::error!(target: "flexcore_python", handler, exception, traceback = %traceback, "python handler raised an exception:\n{traceback}");
                Error::internal(format!("python handler '{handler}' raised {exception}"))
            }
            Self::Invalid(problem) => {
                tracing::error!(target: "flexcore_python", handler, problem, "python handler returned an invalid value");
                Error::internal(format!(
                    "python handler '{handler}' returned an invalid value: {problem}"
                ))
            }
            Self::Timeout(after) => {
                tracing::error!(target: "flexcore_python", handler, timeout_ms = after.as_millis() as u64, "python handler timed out");
                Error::unavailable(format!(
                    "python handler '{handler}' did not finish within {after:?}"
                ))
            }
            Self::Stopped => Error::unavailable("the Python thread has stopped"),
        }
    }
}
