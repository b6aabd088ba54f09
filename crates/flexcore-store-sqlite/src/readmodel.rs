//! Read models, projection checkpoints and durable consumers' state in SQLite.
//!
//! They live in their own database file beside the event store (`<events>.readmodels.db`), so
//! projection commits never compete with the event writer for SQLite's single write lock. A
//! projection's changes and its checkpoint commit in one transaction: after a crash the file
//! holds both or neither, which is what makes a projection's effect exactly-once. The file runs
//! with `synchronous=NORMAL`: a power loss may roll back the last commits, changes and
//! checkpoint together, and they are simply projected again.
//!
//! The portable SQL of projections uses `$n` parameters; they are rewritten to SQLite's `?n`
//! (same numbering) before a statement is prepared.

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use flexcore_app::durable::{CheckpointStore, DeadLetter, DeadLetterStore, ParkReason};
use flexcore_app::projection::{ProjectionRecord, ReadModelStore, SqlStatement, SqlValue};
use flexcore_domain::{EventId, StreamId};
use rusqlite::types::{Value, ValueRef};
use rusqlite::{Connection, OptionalExtension, params};
use time::OffsetDateTime;

use crate::SqliteError;
use crate::checkpointer::Checkpointer;

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS checkpoints (
    consumer TEXT    PRIMARY KEY,
    position INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS dead_letters (
    consumer        TEXT    NOT NULL,
    global_position INTEGER NOT NULL,
    stream_id       TEXT    NOT NULL,
    event_id        TEXT    NOT NULL,
    event_type      TEXT    NOT NULL,
    reason          TEXT    NOT NULL,
    parked_at       TEXT    NOT NULL,
    PRIMARY KEY (consumer, global_position)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS projections (
    name   TEXT PRIMARY KEY,
    record TEXT NOT NULL
) WITHOUT ROWID;
"#;

/// The read-model database of a SQLite deployment.
pub struct SqliteReadModels {
    /// Stopped first when the read models are dropped.
    _checkpointer: Checkpointer,
    writer: Arc<Mutex<Connection>>,
    readers: Arc<Mutex<Vec<Connection>>>,
    path: PathBuf,
}

impl SqliteReadModels {
    /// The read-model file that belongs to an event-store file.
    pub fn path_for(events: &Path) -> PathBuf {
        let mut name = events.as_os_str().to_owned();
        name.push(".readmodels.db");
        PathBuf::from(name)
    }

    /// Opens (creating if needed) a read-model database.
    pub async fn open(path: impl Into<PathBuf>) -> Result<Self, SqliteError> {
        let path = path.into();
        tokio::task::spawn_blocking(move || {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|e| SqliteError::Io(dir.to_path_buf(), e))?;
            }
            let writer = open_connection(&path)?;
            writer.execute_batch(SCHEMA)?;
            Ok(Self {
                _checkpointer: Checkpointer::spawn(&path)?,
                writer: Arc::new(Mutex::new(writer)),
                readers: Arc::new(Mutex::new(Vec::new())),
                path,
            })
        })
        .await
        .map_err(|e| SqliteError::Config(format!("opening the read models panicked: {e}")))?
    }

    /// Runs `work` on the write connection on a blocking thread.
    async fn write<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Connection) -> Result<T, flexcore_app::Error> + Send + 'static,
    ) -> flexcore_app::Result<T> {
        let writer = Arc::clone(&self.writer);
        tokio::task::spawn_blocking(move || {
            let mut conn = writer.lock().unwrap_or_else(|p| p.into_inner());
            work(&mut conn)
        })
        .await
        .map_err(|e| flexcore_app::Error::internal(format!("read-model write panicked: {e}")))?
    }

    /// Runs `work` on a pooled read connection on a blocking thread.
    async fn read<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Connection) -> Result<T, flexcore_app::Error> + Send + 'static,
    ) -> flexcore_app::Result<T> {
        let readers = Arc::clone(&self.readers);
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let pooled = readers.lock().unwrap_or_else(|p| p.into_inner()).pop();
            let conn = match pooled {
                Some(conn) => conn,
                None => open_connection(&path)?,
            };
            let result = work(&conn);
            readers.lock().unwrap_or_else(|p| p.into_inner()).push(conn);
            result
        })
        .await
        .map_err(|e| flexcore_app::Error::internal(format!("read-model query panicked: {e}")))?
    }
}

fn open_connection(path: &Path) -> Result<Connection, SqliteError> {
    let conn = Connection::open(path)?;
    conn.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA busy_timeout=5000;",
    )?;
    conn.set_prepared_statement_cache_capacity(256);
    Ok(conn)
}

fn sql_error(error: rusqlite::Error) -> flexcore_app::Error {
    SqliteError::from(error).into()
}

/// A projection's statement failed: classified like every other SQLite error (busy, locked,
/// disk full → unavailable, retried later; anything else → internal), naming the statement.
fn statement_failed(error: rusqlite::Error, sql: &str) -> flexcore_app::Error {
    let detail = format!("read-model statement failed: {error} (in: {sql})");
    match sql_error(error).kind() {
        flexcore_app::ErrorKind::Unavailable => flexcore_app::Error::unavailable(detail),
        _ => flexcore_app::Error::internal(detail),
    }
}

/// Rewrites the portable `$n` parameters to SQLite's `?n`, leaving string literals and quoted
/// names alone.
fn sqlite_params(sql: &str) -> Cow<'_, str> {
    if !sql.contains('$') {
        return Cow::Borrowed(sql);
    }
    let mut out = String::with_capacity(sql.len());
    let mut quote: Option<char> = None;
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        match quote {
            Some(q) => {
                if c == q {
                    quote = None;
                }
                out.push(c);
            }
            None if c == '\'' || c == '"' => {
                quote = Some(c);
                out.push(c);
            }
            None if c == '$' && chars.peek().is_some_and(char::is_ascii_digit) => out.push('?'),
            None => out.push(c),
        }
    }
    Cow::Owned(out)
}

fn to_sqlite(value: &SqlValue) -> Value {
    match value {
        SqlValue::Null => Value::Null,
        SqlValue::Integer(i) => Value::Integer(*i),
        SqlValue::Real(r) => Value::Real(*r),
        SqlValue::Text(t) => Value::Text(t.clone()),
    }
}

fn from_sqlite(value: ValueRef<'_>) -> SqlValue {
    match value {
        ValueRef::Null => SqlValue::Null,
        ValueRef::Integer(i) => SqlValue::Integer(i),
        ValueRef::Real(r) => SqlValue::Real(r),
        ValueRef::Text(t) => SqlValue::Text(String::from_utf8_lossy(t).into_owned()),
        ValueRef::Blob(b) => SqlValue::Text(String::from_utf8_lossy(b).into_owned()),
    }
}

/// Binds `params` to `$1..$n`; their number must be the statement's (as PostgreSQL requires).
fn bind(stmt: &mut rusqlite::CachedStatement<'_>, params: &[SqlValue]) -> rusqlite::Result<()> {
    if params.len() != stmt.parameter_count() {
        return Err(rusqlite::Error::InvalidParameterCount(
            params.len(),
            stmt.parameter_count(),
        ));
    }
    for (i, value) in params.iter().enumerate() {
        stmt.raw_bind_parameter(i + 1, to_sqlite(value))?;
    }
    Ok(())
}

fn load_checkpoint(conn: &Connection, consumer: &str) -> rusqlite::Result<Option<u64>> {
    conn.prepare_cached("SELECT position FROM checkpoints WHERE consumer = ?1")?
        .query_row([consumer], |row| row.get::<_, i64>(0))
        .optional()
        .map(|p| p.map(|p| p as u64))
}

#[async_trait]
impl CheckpointStore for SqliteReadModels {
    async fn load_checkpoint(&self, consumer: &str) -> flexcore_app::Result<Option<u64>> {
        let consumer = consumer.to_owned();
        self.read(move |conn| load_checkpoint(conn, &consumer).map_err(sql_error))
            .await
    }

    async fn save_checkpoint(&self, consumer: &str, position: u64) -> flexcore_app::Result<()> {
        let consumer = consumer.to_owned();
        self.write(move |conn| {
            conn.prepare_cached(
                "INSERT INTO checkpoints (consumer, position) VALUES (?1, ?2)
                 ON CONFLICT (consumer) DO UPDATE SET position = max(position, excluded.position)",
            )
            .and_then(|mut s| s.execute(params![consumer, position as i64]))
            .map(drop)
            .map_err(sql_error)
        })
        .await
    }

    async fn reset_checkpoint(&self, consumer: &str) -> flexcore_app::Result<()> {
        let consumer = consumer.to_owned();
        self.write(move |conn| {
            conn.execute("DELETE FROM checkpoints WHERE consumer = ?1", [consumer])
                .map(drop)
                .map_err(sql_error)
        })
        .await
    }
}

#[async_trait]
impl DeadLetterStore for SqliteReadModels {
    async fn park(&self, letters: &[DeadLetter]) -> flexcore_app::Result<()> {
        let letters = letters.to_vec();
        self.write(move |conn| {
            let tx = conn.transaction().map_err(sql_error)?;
            for letter in &letters {
                let reason = serde_json::to_string(&letter.reason)
                    .map_err(|e| flexcore_app::Error::internal(e.to_string()))?;
                let parked_at = letter
                    .parked_at
                    .format(&time::format_description::well_known::Rfc3339)
                    .map_err(|e| flexcore_app::Error::internal(e.to_string()))?;
                tx.prepare_cached(
                    "INSERT INTO dead_letters (consumer, global_position, stream_id, event_id, event_type, reason, parked_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                     ON CONFLICT (consumer, global_position) DO UPDATE SET
                        stream_id = excluded.stream_id, event_id = excluded.event_id,
                        event_type = excluded.event_type, reason = excluded.reason,
                        parked_at = excluded.parked_at",
                )
                .and_then(|mut s| {
                    s.execute(params![
                        letter.consumer,
                        letter.global_position as i64,
                        letter.stream_id.as_str(),
                        letter.event_id.to_string(),
                        letter.event_type,
                        reason,
                        parked_at,
                    ])
                })
                .map_err(sql_error)?;
            }
            tx.commit().map_err(sql_error)
        })
        .await
    }

    async fn dead_letters(&self, consumer: &str) -> flexcore_app::Result<Vec<DeadLetter>> {
        let consumer = consumer.to_owned();
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT global_position, stream_id, event_id, event_type, reason, parked_at
                     FROM dead_letters WHERE consumer = ?1 ORDER BY global_position",
                )
                .map_err(sql_error)?;
            let rows = stmt
                .query_map([&consumer], |row| {
                    Ok((
                        row.get::<_, i64>(0)?,
                        row.get::<_, String>(1)?,
                        row.get::<_, String>(2)?,
                        row.get::<_, String>(3)?,
                        row.get::<_, String>(4)?,
                        row.get::<_, String>(5)?,
                    ))
                })
                .map_err(sql_error)?;
            let corrupt = |what: String| flexcore_app::Error::from(SqliteError::Corrupt(what));
            let mut letters = Vec::new();
            for row in rows {
                let (position, stream_id, event_id, event_type, reason, parked_at) =
                    row.map_err(sql_error)?;
                letters.push(DeadLetter {
                    consumer: consumer.clone(),
                    global_position: position as u64,
                    stream_id: StreamId::new(stream_id).map_err(|e| corrupt(e.to_string()))?,
                    event_id: EventId(
                        event_id
                            .parse()
                            .map_err(|e| corrupt(format!("dead letter event id: {e}")))?,
                    ),
                    event_type,
                    reason: serde_json::from_str::<ParkReason>(&reason)
                        .map_err(|e| corrupt(format!("dead letter reason: {e}")))?,
                    parked_at: OffsetDateTime::parse(
                        &parked_at,
                        &time::format_description::well_known::Rfc3339,
                    )
                    .map_err(|e| corrupt(format!("dead letter time: {e}")))?,
                });
            }
            Ok(letters)
        })
        .await
    }

    async fn remove_dead_letter(
        &self,
        consumer: &str,
        global_position: u64,
    ) -> flexcore_app::Result<bool> {
        let consumer = consumer.to_owned();
        self.write(move |conn| {
            conn.execute(
                "DELETE FROM dead_letters WHERE consumer = ?1 AND global_position = ?2",
                params![consumer, global_position as i64],
            )
            .map(|n| n > 0)
            .map_err(sql_error)
        })
        .await
    }
}

#[async_trait]
impl ReadModelStore for SqliteReadModels {
    async fn create_tables(&self, statements: Vec<String>) -> flexcore_app::Result<()> {
        self.write(move |conn| {
            let tx = conn.transaction().map_err(sql_error)?;
            for sql in &statements {
                tx.execute_batch(sql).map_err(sql_error)?;
            }
            tx.commit().map_err(sql_error)
        })
        .await
    }

    async fn drop_tables(&self, tables: Vec<String>) -> flexcore_app::Result<()> {
        self.write(move |conn| {
            let tx = conn.transaction().map_err(sql_error)?;
            for table in &tables {
                tx.execute_batch(&format!("DROP TABLE IF EXISTS \"{table}\""))
                    .map_err(sql_error)?;
            }
            tx.commit().map_err(sql_error)
        })
        .await
    }

    async fn commit(
        &self,
        checkpoint: &str,
        from: Option<u64>,
        to: u64,
        statements: Vec<SqlStatement>,
    ) -> flexcore_app::Result<()> {
        let checkpoint = checkpoint.to_owned();
        self.write(move |conn| {
            let tx = conn
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .map_err(sql_error)?;
            let stored = load_checkpoint(&tx, &checkpoint).map_err(sql_error)?;
            if stored != from {
                return Err(flexcore_app::Error::Contended(format!(
                    "checkpoint '{checkpoint}' is at {stored:?}, not {from:?}: another runner moved it"
                )));
            }
            for statement in &statements {
                let sql = sqlite_params(&statement.sql);
                let mut stmt = tx.prepare_cached(&sql).map_err(sql_error)?;
                bind(&mut stmt, &statement.params).map_err(sql_error)?;
                stmt.raw_execute()
                    .map_err(|e| statement_failed(e, &statement.sql))?;
            }
            tx.prepare_cached(
                "INSERT INTO checkpoints (consumer, position) VALUES (?1, ?2)
                 ON CONFLICT (consumer) DO UPDATE SET position = excluded.position",
            )
            .and_then(|mut s| s.execute(params![checkpoint, to as i64]))
            .map_err(sql_error)?;
            tx.commit().map_err(sql_error)
        })
        .await
    }

    async fn query(
        &self,
        sql: String,
        params: Vec<SqlValue>,
    ) -> flexcore_app::Result<Vec<Vec<SqlValue>>> {
        self.read(move |conn| {
            let sql = sqlite_params(&sql);
            let mut stmt = conn.prepare_cached(&sql).map_err(sql_error)?;
            bind(&mut stmt, &params).map_err(sql_error)?;
            let mut rows = stmt.raw_query();
            let mut out = Vec::new();
            while let Some(row) = rows.next().map_err(sql_error)? {
                // Counted after the step: SQLite re-prepares a cached statement whose tables
                // changed, and the column count may change with it.
                let columns = row.as_ref().column_count();
                let mut values = Vec::with_capacity(columns);
                for i in 0..columns {
                    values.push(from_sqlite(row.get_ref(i).map_err(sql_error)?));
                }
                out.push(values);
            }
            Ok(out)
        })
        .await
    }

    async fn load_projections(&self) -> flexcore_app::Result<Vec<ProjectionRecord>> {
        self.read(|conn| {
            let mut stmt = conn
                .prepare_cached("SELECT record FROM projections ORDER BY name")
                .map_err(sql_error)?;
            let records = stmt
                .query_map([], |row| row.get::<_, String>(0))
                .map_err(sql_error)?;
            records
                .map(|record| {
                    let record = record.map_err(sql_error)?;
                    serde_json::from_str(&record)
                        .map_err(|e| SqliteError::Corrupt(format!("projection record: {e}")).into())
                })
                .collect()
        })
        .await
    }

    async fn save_projection(&self, record: &ProjectionRecord) -> flexcore_app::Result<()> {
        let name = record.name.clone();
        let json = serde_json::to_string(record)
            .map_err(|e| flexcore_app::Error::internal(e.to_string()))?;
        self.write(move |conn| {
            conn.execute(
                "INSERT INTO projections (name, record) VALUES (?1, ?2)
                 ON CONFLICT (name) DO UPDATE SET record = excluded.record",
                params![name, json],
            )
            .map(drop)
            .map_err(sql_error)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::{sqlite_params, statement_failed};
    use flexcore_app::ErrorKind;
    use rusqlite::ffi;

    #[test]
    fn a_failed_statement_is_classified_like_any_sqlite_error() {
        let failure = |code| rusqlite::Error::SqliteFailure(ffi::Error::new(code), None);
        for (code, kind) in [
            (ffi::SQLITE_BUSY, ErrorKind::Unavailable),
            (ffi::SQLITE_LOCKED, ErrorKind::Unavailable),
            (ffi::SQLITE_FULL, ErrorKind::Unavailable),
            (ffi::SQLITE_CONSTRAINT, ErrorKind::Internal),
            (ffi::SQLITE_ERROR, ErrorKind::Internal),
        ] {
            let error = statement_failed(failure(code), "INSERT INTO rm_users_1 VALUES (?1)");
            assert_eq!(error.kind(), kind, "{error}");
            let message = error.to_string();
            assert!(message.contains("read-model statement failed"), "{message}");
            assert!(message.contains("(in: INSERT INTO rm_users_1"), "{message}");
        }
    }

    #[test]
    fn dollar_parameters_become_numbered_question_marks() {
        assert_eq!(
            sqlite_params("SELECT * FROM t WHERE a = $1 AND b = $12"),
            "SELECT * FROM t WHERE a = ?1 AND b = ?12"
        );
        assert_eq!(
            sqlite_params("SELECT '$1', \"$2\" FROM t WHERE x = $2"),
            "SELECT '$1', \"$2\" FROM t WHERE x = ?2"
        );
        assert_eq!(sqlite_params("SELECT 1"), "SELECT 1");
    }
}
