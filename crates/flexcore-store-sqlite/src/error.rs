//! The SQLite adapter's error type, classified once into the application's kinds.

use std::path::PathBuf;

use rusqlite::ErrorCode;

/// Everything that can go wrong in the SQLite store.
#[derive(Debug, thiserror::Error)]
pub enum SqliteError {
    /// The configuration is unusable.
    #[error("invalid sqlite store configuration: {0}")]
    Config(String),
    /// A file-system operation failed.
    #[error("i/o error on {0}: {1}")]
    Io(PathBuf, #[source] std::io::Error),
    /// Another process holds the database.
    #[error("database {0} is already in use by another process")]
    InUse(PathBuf),
    /// SQLite reported an error.
    #[error("sqlite error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A stored row cannot be decoded.
    #[error("corrupt row in the event store: {0}")]
    Corrupt(String),
    /// The writer thread has stopped.
    #[error("the sqlite writer has stopped")]
    WriterGone,
}

impl From<SqliteError> for flexcore_app::Error {
    fn from(error: SqliteError) -> Self {
        let busy = matches!(
            &error,
            SqliteError::Sqlite(rusqlite::Error::SqliteFailure(e, _))
                if matches!(e.code, ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked
                    | ErrorCode::DiskFull | ErrorCode::SystemIoFailure | ErrorCode::CannotOpen)
        );
        // The SQLite error stays attached as the cause, so the logs show it in full.
        match error {
            _ if busy => Self::unavailable_from(error.to_string(), error),
            SqliteError::WriterGone | SqliteError::InUse(_) | SqliteError::Io(..) => {
                Self::unavailable_from(error.to_string(), error)
            }
            other => Self::internal_from(other.to_string(), other),
        }
    }
}
