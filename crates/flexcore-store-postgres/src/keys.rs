//! The GDPR key table: wrapped per-subject data keys and tombstones of forgotten subjects.

use async_trait::async_trait;
use deadpool_postgres::Pool;
use flexcore_app::gdpr::{KeyTable, StoredKey};

use crate::{PostgresConfig, PostgresError, schema};

/// The `subject_keys` table of a store's schema.
///
/// A forgotten key's row is updated to a tombstone; PostgreSQL keeps the old row version until
/// `VACUUM` reclaims it (autovacuum does, eventually), and backups keep what they copied.
#[derive(Clone)]
pub struct PostgresKeyTable {
    pool: Pool,
}

impl std::fmt::Debug for PostgresKeyTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresKeyTable").finish_non_exhaustive()
    }
}

impl PostgresKeyTable {
    pub(crate) fn new(pool: Pool) -> Self {
        Self { pool }
    }

    /// Connects with a pool of its own (migrating the schema if needed).
    pub async fn connect(config: PostgresConfig) -> Result<Self, PostgresError> {
        config.validate()?;
        schema::migrate(&config).await?;
        Ok(Self::new(crate::store::build_pool(&config)?))
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, PostgresError> {
        Ok(self.pool.get().await?)
    }
}

fn stored(wrapped: Option<Vec<u8>>) -> StoredKey {
    wrapped.map_or(StoredKey::Forgotten, StoredKey::Wrapped)
}

#[async_trait]
impl KeyTable for PostgresKeyTable {
    async fn load(&self, subject: &str) -> flexcore_app::Result<Option<StoredKey>> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached("SELECT wrapped_key FROM subject_keys WHERE subject = $1")
            .await
            .map_err(PostgresError::from)?;
        let row = client
            .query_opt(&statement, &[&subject])
            .await
            .map_err(PostgresError::from)?;
        Ok(row.map(|row| stored(row.get(0))))
    }

    async fn insert(&self, subject: &str, wrapped: &[u8]) -> flexcore_app::Result<StoredKey> {
        let client = self.client().await?;
        // One statement: insert unless a row exists, and answer with the row that is stored.
        let statement = client
            .prepare_cached(
                "WITH inserted AS ( \
                     INSERT INTO subject_keys (subject, wrapped_key) VALUES ($1, $2) \
                     ON CONFLICT (subject) DO NOTHING RETURNING wrapped_key) \
                 SELECT wrapped_key FROM inserted \
                 UNION ALL SELECT wrapped_key FROM subject_keys WHERE subject = $1 \
                 LIMIT 1",
            )
            .await
            .map_err(PostgresError::from)?;
        let row = client
            .query_opt(&statement, &[&subject, &wrapped])
            .await
            .map_err(PostgresError::from)?;
        match row {
            Some(row) => Ok(stored(row.get(0))),
            // A concurrent insert committed after this statement's snapshot: read it anew.
            None => self.load(subject).await?.ok_or_else(|| {
                PostgresError::Corrupt("a subject key vanished while inserted".into()).into()
            }),
        }
    }

    async fn forget(&self, subject: &str) -> flexcore_app::Result<bool> {
        let client = self.client().await?;
        // The old row is read under the lock the upsert takes: `had_key` is exact.
        let statement = client
            .prepare_cached(
                "WITH old AS (SELECT wrapped_key FROM subject_keys WHERE subject = $1 FOR UPDATE), \
                 upsert AS ( \
                     INSERT INTO subject_keys (subject, wrapped_key, forgotten_at) \
                     VALUES ($1, NULL, now()) \
                     ON CONFLICT (subject) DO UPDATE SET wrapped_key = NULL, \
                     forgotten_at = coalesce(subject_keys.forgotten_at, excluded.forgotten_at)) \
                 SELECT coalesce((SELECT wrapped_key IS NOT NULL FROM old), false)",
            )
            .await
            .map_err(PostgresError::from)?;
        let row = client
            .query_one(&statement, &[&subject])
            .await
            .map_err(PostgresError::from)?;
        Ok(row.get(0))
    }

    async fn any_wrapped(&self) -> flexcore_app::Result<Option<(String, Vec<u8>)>> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT subject, wrapped_key FROM subject_keys \
                 WHERE wrapped_key IS NOT NULL LIMIT 1",
                &[],
            )
            .await
            .map_err(PostgresError::from)?;
        Ok(row.map(|row| (row.get(0), row.get(1))))
    }
}
