//! The one place where failures become gRPC statuses, and the crate's own error type.
//!
//! Every status the gateway sends is made here, so its mapping can be read at a glance and
//! kept in step with the HTTP gateway's (`flexcore-http`'s `error.rs`):
//!
//! | application error | gRPC code | `x-error-code` (HTTP's `code`) |
//! |---|---|---|
//! | validation, bad input, schema violation (message names each failing JSON pointer) | `INVALID_ARGUMENT` | `validation_failed` |
//! | wrong expected version | `FAILED_PRECONDITION` (+ `x-current-version`, `x-expected-version`) | `conflict` |
//! | other conflicts (e.g. an email in use) | `ABORTED` | `conflict` |
//! | not found, unknown command or query type | `NOT_FOUND` | `not_found` |
//! | unauthorized | `UNAUTHENTICATED` | `unauthorized` |
//! | forbidden | `PERMISSION_DENIED` | `forbidden` |
//! | rate limited | `RESOURCE_EXHAUSTED` (+ `retry-after` seconds) | `rate_limited` |
//! | unavailable, server shutting down | `UNAVAILABLE` | `unavailable` |
//! | internal | `INTERNAL`, generic message (the cause is logged) | `internal` |

use flexcore_app::{Error, ErrorKind};
use flexcore_domain::DomainError;
use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::{Code, Status};

/// Why the gRPC gateway could not start or keep serving.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GrpcError {
    /// The transport failed (accepting connections, HTTP/2).
    #[error("grpc transport failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The reflection service rejected the compiled descriptor set (a build bug).
    #[error("cannot build the reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
}

/// The metadata key of the stable, HTTP-compatible error code.
pub const ERROR_CODE_KEY: &str = "x-error-code";
/// The metadata key of the seconds to wait after a `RESOURCE_EXHAUSTED` (rate limited).
pub const RETRY_AFTER_KEY: &str = "retry-after";
/// The metadata key of a stream's current version in a wrong-expected-version error: a
/// number, or `null` when the stream does not exist.
pub const CURRENT_VERSION_KEY: &str = "x-current-version";
/// The metadata key of the expectation that failed (`any`, `no_stream`, `exists` or a number).
pub const EXPECTED_VERSION_KEY: &str = "x-expected-version";

fn status(code: Code, kind: ErrorKind, message: impl Into<String>) -> Status {
    let mut status = Status::new(code, message);
    status
        .metadata_mut()
        .insert(ERROR_CODE_KEY, MetadataValue::from_static(kind.code()));
    status
}

/// `INVALID_ARGUMENT`: the request breaks a rule; nothing was written.
pub(crate) fn invalid_argument(message: impl Into<String>) -> Status {
    status(Code::InvalidArgument, ErrorKind::Validation, message)
}

/// `NOT_FOUND`.
pub(crate) fn not_found(message: impl Into<String>) -> Status {
    status(Code::NotFound, ErrorKind::NotFound, message)
}

/// `UNAVAILABLE`: the server is shutting down; a client resumes elsewhere or later.
pub(crate) fn shutting_down() -> Status {
    status(
        Code::Unavailable,
        ErrorKind::Unavailable,
        "the server is shutting down; resubscribe from the next position",
    )
}

/// Maps an application error to its status (logging what must not be sent).
pub(crate) fn from_app(error: Error) -> Status {
    match (&error, error.kind()) {
        (Error::Domain(DomainError::Validation(message)), _) => invalid_argument(message.clone()),
        (
            Error::Domain(DomainError::WrongExpectedVersion {
                current, expected, ..
            }),
            _,
        ) => {
            let mut status = status(
                Code::FailedPrecondition,
                ErrorKind::Conflict,
                error.to_string(),
            );
            let current: AsciiMetadataValue = match current {
                Some(version) => MetadataValue::from(*version),
                None => MetadataValue::from_static("null"),
            };
            let metadata = status.metadata_mut();
            metadata.insert(CURRENT_VERSION_KEY, current);
            if let Ok(expected) = expected.to_string().parse() {
                metadata.insert(EXPECTED_VERSION_KEY, expected);
            }
            status
        }
        (_, ErrorKind::Validation) => invalid_argument(error.client_message()),
        (_, kind @ (ErrorKind::Conflict | ErrorKind::Contended)) => {
            status(Code::Aborted, kind, error.to_string())
        }
        (_, ErrorKind::NotFound) => not_found(error.to_string()),
        (_, ErrorKind::Unauthorized) => status(
            Code::Unauthenticated,
            ErrorKind::Unauthorized,
            error.to_string(),
        ),
        (_, ErrorKind::Forbidden) => status(
            Code::PermissionDenied,
            ErrorKind::Forbidden,
            error.to_string(),
        ),
        (Error::RateLimited { retry_after, .. }, kind) => {
            let mut status = status(Code::ResourceExhausted, kind, error.to_string());
            status.metadata_mut().insert(
                RETRY_AFTER_KEY,
                MetadataValue::from(flexcore_app::retry_after_secs(*retry_after)),
            );
            status
        }
        (_, ErrorKind::RateLimited) => status(
            Code::ResourceExhausted,
            ErrorKind::RateLimited,
            error.to_string(),
        ),
        (_, ErrorKind::Unavailable) => {
            tracing::warn!(error = %error.chain(), "backend unavailable");
            status(
                Code::Unavailable,
                ErrorKind::Unavailable,
                "a backend is unavailable; retry later",
            )
        }
        (_, ErrorKind::Internal) => {
            tracing::error!(error = %error.chain(), "internal error");
            status(Code::Internal, ErrorKind::Internal, "internal server error")
        }
    }
}

#[cfg(test)]
mod tests {
    use flexcore_domain::ExpectedVersion;

    use super::*;

    fn meta<'a>(status: &'a Status, key: &str) -> Option<&'a str> {
        status.metadata().get(key).and_then(|v| v.to_str().ok())
    }

    #[test]
    fn every_kind_has_its_code() {
        let cases = [
            (Error::validation("bad"), Code::InvalidArgument),
            (
                DomainError::AlreadyExists("taken".into()).into(),
                Code::Aborted,
            ),
            (DomainError::NotFound("x".into()).into(), Code::NotFound),
            (Error::UnknownCommand("x".into()), Code::NotFound),
            (Error::UnknownQuery("x".into()), Code::NotFound),
            (
                DomainError::Unauthorized("x".into()).into(),
                Code::Unauthenticated,
            ),
            (
                DomainError::Forbidden("x".into()).into(),
                Code::PermissionDenied,
            ),
            (Error::unavailable("db down"), Code::Unavailable),
            (Error::internal("secret detail"), Code::Internal),
        ];
        for (error, code) in cases {
            let status = from_app(error);
            assert_eq!(status.code(), code, "{status:?}");
            assert!(meta(&status, ERROR_CODE_KEY).is_some());
            assert!(!status.message().contains("secret"), "{status:?}");
            assert!(!status.message().contains("db down"), "{status:?}");
        }
    }

    #[test]
    fn a_wrong_expectation_carries_the_current_version() {
        let status = from_app(
            DomainError::WrongExpectedVersion {
                stream_id: "s".into(),
                expected: ExpectedVersion::Exact(0),
                current: Some(3),
            }
            .into(),
        );
        assert_eq!(status.code(), Code::FailedPrecondition);
        assert_eq!(meta(&status, CURRENT_VERSION_KEY), Some("3"));
        assert_eq!(meta(&status, EXPECTED_VERSION_KEY), Some("0"));
        assert_eq!(meta(&status, ERROR_CODE_KEY), Some("conflict"));
        let status = from_app(
            DomainError::WrongExpectedVersion {
                stream_id: "s".into(),
                expected: ExpectedVersion::StreamExists,
                current: None,
            }
            .into(),
        );
        assert_eq!(meta(&status, CURRENT_VERSION_KEY), Some("null"));
        assert_eq!(meta(&status, EXPECTED_VERSION_KEY), Some("exists"));
    }
}
