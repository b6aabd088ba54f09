//! Opening connections, the process lock and the schema.

use std::fs::{File, OpenOptions};
use std::path::Path;

use rusqlite::{Connection, OpenFlags};

use crate::SqliteError;

/// The schema, one entry per version; `PRAGMA user_version` records how many are applied.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE events (
    position       INTEGER PRIMARY KEY,
    event_id       BLOB    NOT NULL UNIQUE,
    stream_id      TEXT    NOT NULL,
    stream_version INTEGER NOT NULL,
    category       TEXT    NOT NULL,
    event_type     TEXT    NOT NULL,
    schema_version INTEGER NOT NULL,
    data           TEXT    NOT NULL,
    metadata       TEXT    NOT NULL,
    recorded_at    INTEGER NOT NULL,
    UNIQUE (stream_id, stream_version)
);
CREATE INDEX events_by_category ON events (category, position);
-- Only streams that were deleted or truncated have a row: a stream's version is the largest
-- stream_version in `events`, read from the (stream_id, stream_version) index, so an append
-- touches no per-stream row.
CREATE TABLE stream_flags (
    stream_id       TEXT    PRIMARY KEY,
    deleted         INTEGER NOT NULL DEFAULT 0,
    truncate_before INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE TABLE snapshots (
    stream_id TEXT    PRIMARY KEY,
    version   INTEGER NOT NULL,
    state     TEXT    NOT NULL,
    taken_at  INTEGER NOT NULL
) WITHOUT ROWID;
"#,
    r#"
-- GDPR crypto-shredding: one data key per subject, wrapped by the master key. Forgetting a
-- subject deletes its wrapped key and leaves the row as a tombstone (wrapped_key NULL), so no
-- new key is ever made for it. Times are microseconds since the Unix epoch.
CREATE TABLE subject_keys (
    subject      TEXT    PRIMARY KEY,
    wrapped_key  BLOB,
    created_at   INTEGER NOT NULL,
    forgotten_at INTEGER,
    CHECK ((wrapped_key IS NULL) = (forgotten_at IS NOT NULL))
) WITHOUT ROWID;
"#,
];

/// Takes the exclusive per-database process lock (released when the file is closed).
pub(crate) fn lock_file(db: &Path) -> Result<File, SqliteError> {
    let mut name = db.as_os_str().to_owned();
    name.push(".lock");
    let path = std::path::PathBuf::from(name);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| SqliteError::Io(path.clone(), e))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(SqliteError::InUse(db.to_path_buf())),
        Err(std::fs::TryLockError::Error(e)) => Err(SqliteError::Io(path, e)),
    }
}

/// Opens the write connection: WAL, a generous statement cache. With group commit SQLite itself
/// runs with `synchronous=NORMAL` (a commit does not wait for the disk; checkpoints still sync
/// the WAL first and the database after) and the syncer thread flushes the WAL before any answer
/// leaves; without it, with `synchronous=FULL`, one fsync inside every commit.
pub(crate) fn open_writer(path: &Path, sqlite_syncs: bool) -> Result<Connection, SqliteError> {
    let conn = Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    let synchronous = if sqlite_syncs { "FULL" } else { "NORMAL" };
    conn.pragma_update(None, "synchronous", synchronous)?;
    conn.pragma_update(None, "busy_timeout", 5000)?;
    conn.pragma_update(None, "cache_size", -32_000)?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

/// Opens a read-only connection.
pub(crate) fn open_reader(path: &Path) -> Result<Connection, SqliteError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.pragma_update(None, "busy_timeout", 5000)?;
    conn.pragma_update(None, "cache_size", -16_000)?;
    // Map the file: pages are read from the OS cache without a copy per page.
    conn.pragma_update(None, "mmap_size", 1_i64 << 30)?;
    conn.set_prepared_statement_cache_capacity(32);
    Ok(conn)
}

/// Applies the migrations that are not yet applied, each in its own transaction.
pub(crate) fn migrate(conn: &Connection) -> Result<(), SqliteError> {
    let applied: i64 = conn.pragma_query_value(None, "user_version", |row| row.get(0))?;
    let applied = usize::try_from(applied).unwrap_or(usize::MAX);
    if applied > MIGRATIONS.len() {
        return Err(SqliteError::Config(format!(
            "the database has schema version {applied}, newer than this FlexCore knows ({})",
            MIGRATIONS.len()
        )));
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(applied) {
        let script = format!(
            "BEGIN IMMEDIATE; {sql}; PRAGMA user_version = {}; COMMIT;",
            index + 1
        );
        conn.execute_batch(&script)?;
    }
    Ok(())
}

/// The state of one stream as of position `?2`: its last version (deleted or not), the deleted
/// flag and the first visible version. `position` is the rowid, so the version lookup stays in
/// the `(stream_id, stream_version)` index.
pub(crate) const STREAM_STATE_SQL: &str = "SELECT \
    (SELECT stream_version FROM events WHERE stream_id = ?1 AND position <= ?2 \
     ORDER BY stream_version DESC LIMIT 1), \
    coalesce((SELECT deleted FROM stream_flags WHERE stream_id = ?1), 0), \
    coalesce((SELECT truncate_before FROM stream_flags WHERE stream_id = ?1), 0)";

/// The last committed global position (0 for an empty store).
pub(crate) fn head_position(conn: &Connection) -> Result<u64, SqliteError> {
    let head: Option<i64> = conn.query_row("SELECT max(position) FROM events", [], |r| r.get(0))?;
    Ok(head.unwrap_or(0) as u64)
}
