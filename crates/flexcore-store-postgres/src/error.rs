//! The PostgreSQL adapter's error type, classified once into the application's kinds.

use std::fmt;

use flexcore_app::{Error, ErrorKind};
use flexcore_domain::DomainError;

/// Everything that can go wrong in the PostgreSQL store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PostgresError {
    /// The configuration is unusable.
    #[error("invalid postgresql store configuration: {0}")]
    Config(String),
    /// The server or the driver reported an error.
    #[error("postgresql error: {}", Describe(.0))]
    Db(#[from] tokio_postgres::Error),
    /// No connection could be had from the pool.
    #[error("postgresql connection pool: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    /// A stored row cannot be decoded.
    #[error("corrupt row in the event store: {0}")]
    Corrupt(String),
    /// The store's committer tasks have stopped.
    #[error("the postgresql store is shut down")]
    Closed,
    /// A read-model statement (a projection's change, a query or DDL) failed.
    #[error("read-model statement failed: {} (in: {sql})", Describe(.source))]
    Statement {
        /// The statement as sent.
        sql: String,
        /// The server's or the driver's error.
        source: tokio_postgres::Error,
    },
    /// A read-model commit expected another checkpoint: another runner moved it.
    #[error(
        "checkpoint '{checkpoint}' is at {}, not at {}: another runner moved it",
        position_display(.current),
        position_display(.expected)
    )]
    Fenced {
        /// The checkpoint's name.
        checkpoint: String,
        /// The position the commit started from (`None`: no checkpoint).
        expected: Option<u64>,
        /// The stored position (`None`: no checkpoint).
        current: Option<u64>,
    },
}

fn position_display(position: &Option<u64>) -> String {
    position.map_or_else(|| "none".to_owned(), |p| p.to_string())
}

impl PostgresError {
    /// Whether the failure is about reaching the server (connection lost or refused, pool
    /// exhausted, server shutting down or out of resources): retrying later may succeed.
    pub fn is_unavailable(&self) -> bool {
        match self {
            Self::Db(e) => db_error_is_unavailable(e),
            // Failing to open a connection is the server being out of reach, unless the server
            // itself refused for a reason a retry will not change (e.g. a wrong password).
            Self::Pool(deadpool_postgres::PoolError::Backend(e)) => {
                e.code().is_none() || db_error_is_unavailable(e)
            }
            Self::Pool(_) | Self::Closed => true,
            Self::Statement { source, .. } => db_error_is_unavailable(source),
            Self::Config(_) | Self::Corrupt(_) | Self::Fenced { .. } => false,
        }
    }

    /// The application error for this failure. It takes `&self` because one failed group
    /// commit answers several requests.
    pub(crate) fn to_app_error(&self) -> Error {
        if self.is_unavailable() {
            return Error::unavailable(self.to_string());
        }
        match self {
            Self::Fenced { .. } => Error::Contended(self.to_string()),
            Self::Db(e) if is_rejected_data(e) => Error::Domain(DomainError::Validation(format!(
                "the event store cannot hold this data: {}",
                Describe(e)
            ))),
            _ => Error::internal(self.to_string()),
        }
    }
}

impl From<PostgresError> for Error {
    /// The same classification as `to_app_error`, keeping the PostgreSQL error as the cause (the
    /// logs show the whole chain) for the kinds that carry one.
    fn from(error: PostgresError) -> Self {
        match error.to_app_error().kind() {
            ErrorKind::Unavailable => Error::unavailable_from(error.to_string(), error),
            ErrorKind::Internal => Error::internal_from(error.to_string(), error),
            _ => error.to_app_error(),
        }
    }
}

/// Whether the server refused the data itself (an invalid value, such as `\u0000` inside a JSON
/// string, which `jsonb` cannot hold): the request is at fault, not the store.
fn is_rejected_data(error: &tokio_postgres::Error) -> bool {
    error.code().is_some_and(|code| {
        let code = code.code();
        // 22: data exception; 54: program limit exceeded (e.g. a value too large to index).
        code.starts_with("22") || code.starts_with("54")
    })
}

/// Whether a driver error means "the server cannot serve us right now": by SQLSTATE class or
/// code when the server answered, by the connection's state or an I/O cause when it did not.
fn db_error_is_unavailable(error: &tokio_postgres::Error) -> bool {
    if let Some(code) = error.code() {
        let code = code.code();
        return code.starts_with("08") // connection exception
            || code.starts_with("53") // insufficient resources (too many connections, disk full)
            || code.starts_with("57P") // admin/crash shutdown, cannot connect now
            || code == "57014" // query canceled (statement timeout)
            || code == "55P03" // lock not available (lock timeout)
            || code == "40001" // serialization failure
            || code == "40P01"; // deadlock detected
    }
    if error.is_closed() {
        return true;
    }
    // No SQLSTATE: the driver's own failure. Reaching the server failed when an I/O error is
    // among its causes; anything else (encoding, decoding, a bad row count) is a bug.
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        if cause.is::<std::io::Error>() {
            return true;
        }
        source = cause.source();
    }
    false
}

/// Shows a driver error with the server's message and SQLSTATE, which the driver's own
/// `Display` leaves out.
struct Describe<'a>(&'a tokio_postgres::Error);

impl fmt::Display for Describe<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.as_db_error() {
            Some(db) => write!(f, "{} (sqlstate {})", db.message(), db.code().code()),
            None => match std::error::Error::source(self.0) {
                Some(cause) => write!(f, "{}: {cause}", self.0),
                None => write!(f, "{}", self.0),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_timeouts_are_unavailable() {
        let e = PostgresError::Pool(deadpool_postgres::PoolError::Timeout(
            deadpool_postgres::TimeoutType::Wait,
        ));
        assert!(e.is_unavailable());
        assert_eq!(Error::from(e).kind(), ErrorKind::Unavailable);
        assert_eq!(
            Error::from(PostgresError::Closed).kind(),
            ErrorKind::Unavailable
        );
    }

    #[test]
    fn unexpected_failures_are_internal() {
        let e = PostgresError::Corrupt("bad row".into());
        assert_eq!(Error::from(e).kind(), ErrorKind::Internal);
        let e = PostgresError::Config("nope".into());
        assert_eq!(Error::from(e).kind(), ErrorKind::Internal);
    }
}
