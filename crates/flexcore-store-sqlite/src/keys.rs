//! The GDPR key table: wrapped per-subject data keys and tombstones of forgotten subjects.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use flexcore_app::gdpr::{KeyTable, StoredKey};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use crate::{SqliteError, schema};

/// The `subject_keys` table of a store's database, on a connection of its own.
///
/// Key writes are rare (a subject's first personal event, a `forget`), so they do not go
/// through the event writer's queue: they wait for its lock (busy timeout) and commit with
/// `synchronous=FULL`, so a key is durable before the first event sealed with it is appended.
/// `secure_delete` is on: a forgotten key's bytes are overwritten in the database file (old
/// WAL frames are overwritten as the WAL is reused; backups keep what they copied).
#[derive(Clone)]
pub struct SqliteKeyTable {
    conn: Arc<Mutex<Connection>>,
    path: PathBuf,
}

impl std::fmt::Debug for SqliteKeyTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteKeyTable")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl SqliteKeyTable {
    /// Opens the key table of the store database at `path` (the store must have been opened
    /// once, which creates the table).
    pub async fn open(path: &Path) -> Result<Self, SqliteError> {
        let path = path.to_path_buf();
        let opened = path.clone();
        let conn = tokio::task::spawn_blocking(move || {
            let conn = schema::open_writer(&opened, true)?;
            conn.pragma_update(None, "secure_delete", "ON")?;
            Ok::<_, SqliteError>(conn)
        })
        .await
        .map_err(|e| SqliteError::Config(format!("opening the key table panicked: {e}")))??;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
            path,
        })
    }

    async fn run<T: Send + 'static>(
        &self,
        job: impl FnOnce(&mut Connection) -> Result<T, SqliteError> + Send + 'static,
    ) -> flexcore_app::Result<T> {
        let conn = Arc::clone(&self.conn);
        let answer = tokio::task::spawn_blocking(move || {
            let mut conn = conn.lock().unwrap_or_else(|p| p.into_inner());
            job(&mut conn)
        })
        .await
        .map_err(|e| flexcore_app::Error::internal(format!("a key-table job panicked: {e}")))?;
        Ok(answer?)
    }
}

fn now_micros() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(now.as_micros()).unwrap_or(i64::MAX)
}

fn load(conn: &Connection, subject: &str) -> Result<Option<StoredKey>, SqliteError> {
    let row: Option<Option<Vec<u8>>> = conn
        .prepare_cached("SELECT wrapped_key FROM subject_keys WHERE subject = ?1")?
        .query_row([subject], |row| row.get(0))
        .optional()?;
    Ok(row.map(|wrapped| wrapped.map_or(StoredKey::Forgotten, StoredKey::Wrapped)))
}

#[async_trait]
impl KeyTable for SqliteKeyTable {
    async fn load(&self, subject: &str) -> flexcore_app::Result<Option<StoredKey>> {
        let subject = subject.to_owned();
        self.run(move |conn| load(conn, &subject)).await
    }

    async fn insert(&self, subject: &str, wrapped: &[u8]) -> flexcore_app::Result<StoredKey> {
        let (subject, wrapped) = (subject.to_owned(), wrapped.to_vec());
        self.run(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.prepare_cached(
                "INSERT INTO subject_keys (subject, wrapped_key, created_at) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (subject) DO NOTHING",
            )?
            .execute(params![subject, wrapped, now_micros()])?;
            let stored = load(&tx, &subject)?
                .ok_or_else(|| SqliteError::Corrupt("a key row vanished while inserted".into()))?;
            tx.commit()?;
            Ok(stored)
        })
        .await
    }

    async fn forget(&self, subject: &str) -> flexcore_app::Result<bool> {
        let subject = subject.to_owned();
        self.run(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let had_key = matches!(load(&tx, &subject)?, Some(StoredKey::Wrapped(_)));
            let now = now_micros();
            tx.prepare_cached(
                "INSERT INTO subject_keys (subject, wrapped_key, created_at, forgotten_at) \
                 VALUES (?1, NULL, ?2, ?2) \
                 ON CONFLICT (subject) DO UPDATE SET wrapped_key = NULL, \
                 forgotten_at = coalesce(forgotten_at, excluded.forgotten_at)",
            )?
            .execute(params![subject, now])?;
            tx.commit()?;
            Ok(had_key)
        })
        .await
    }

    async fn any_wrapped(&self) -> flexcore_app::Result<Option<(String, Vec<u8>)>> {
        self.run(|conn| {
            Ok(conn
                .query_row(
                    "SELECT subject, wrapped_key FROM subject_keys \
                     WHERE wrapped_key IS NOT NULL LIMIT 1",
                    [],
                    |row| Ok((row.get(0)?, row.get(1)?)),
                )
                .optional()?)
        })
        .await
    }
}
