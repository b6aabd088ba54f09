//! The store handle and its port implementations.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{ManagerConfig, Pool, RecyclingMethod, Runtime};
use flexcore_app::Result;
use flexcore_app::store::{
    AllSlice, AppendResult, EventAppender, EventReader, ReadAll, ReadStream, Snapshot,
    SnapshotStore, StreamAdmin, StreamSlice, StreamWrite,
};
use flexcore_domain::{DomainError, ExpectedVersion, RawJson, StreamId};
use tokio::sync::{mpsc, watch};

use crate::write::{self, HeldAppend, Request, Shared, to_i64, to_u64};
use crate::{PostgresConfig, PostgresError, PostgresReadModels, read, schema};

/// Requests that may wait for a committer before `append` itself waits (back-pressure).
const QUEUE_CAPACITY: usize = 4096;

/// The PostgreSQL event store.
///
/// Appends are coalesced into group commits by parallel committer tasks; reads use the same
/// connection pool. Every position the global log hands out is final: `read_all` stops below
/// the oldest transaction that has reserved positions but not yet ended (the *watermark*), so a
/// transaction that commits after a later one is never skipped, while writers never wait for
/// each other's commits. A transaction that rolls back or whose session dies releases its mark,
/// and readers move past its unused positions.
///
/// Cloning is cheap; dropping the last clone lets the committers finish what is queued and stop.
#[derive(Clone)]
pub struct PostgresStore {
    shared: Arc<Shared>,
    queue: mpsc::Sender<Request>,
    schema: Arc<str>,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("schema", &self.schema)
            .field("head", &*self.shared.head.borrow())
            .finish_non_exhaustive()
    }
}

impl PostgresStore {
    /// Connects, creates the schema and applies missing migrations (safe when several
    /// processes start at once), and starts the committers.
    pub async fn connect(config: PostgresConfig) -> Result<Self, PostgresError> {
        config.validate()?;
        schema::migrate(&config).await?;
        let pool = build_pool(&config)?;
        let head = {
            let client = pool.get().await?;
            let max: i64 = client
                .query_one("SELECT coalesce(max(position), 0) FROM events", &[])
                .await?
                .try_get(0)?;
            to_u64(max)?
        };
        let shared = Arc::new(Shared {
            pool,
            head: watch::Sender::new(head),
            max_batch_events: config.max_batch_events,
            group_commits: Default::default(),
        });
        let (queue, receiver) = mpsc::channel(QUEUE_CAPACITY);
        write::spawn_committers(&shared, config.committers, receiver);
        Ok(Self {
            shared,
            queue,
            schema: config.schema.into(),
        })
    }

    /// The schema this store lives in.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// The read models, projection checkpoints and durable consumers' state in the same schema,
    /// sharing this store's connection pool.
    pub fn read_models(&self) -> PostgresReadModels {
        PostgresReadModels::new(self.shared.pool.clone(), Arc::clone(&self.schema))
    }

    /// The GDPR key table in the same schema, sharing this store's connection pool.
    pub fn key_table(&self) -> crate::PostgresKeyTable {
        crate::PostgresKeyTable::new(self.shared.pool.clone())
    }

    /// How the appends were grouped into transactions so far.
    pub fn group_commit_stats(&self) -> flexcore_app::store::plan::GroupCommitStats {
        self.shared.group_commits.stats()
    }

    /// Test hook: runs an append on its own connection up to the moment before `COMMIT`, with
    /// its global positions reserved, and returns it held open. Used to force the commit-order
    /// race deterministically; not part of the stable API.
    #[doc(hidden)]
    pub async fn append_held(&self, writes: Vec<StreamWrite>) -> Result<HeldAppend> {
        HeldAppend::start(Arc::clone(&self.shared), writes).await
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, PostgresError> {
        Ok(self.shared.pool.get().await?)
    }
}

/// The connection pool of a store (every connection with the schema's `search_path`).
pub(crate) fn build_pool(config: &PostgresConfig) -> Result<Pool, PostgresError> {
    let manager = schema::endpoint(config)?.manager(ManagerConfig {
        recycling_method: RecyclingMethod::Fast,
    });
    Pool::builder(manager)
        .max_size(config.pool_size)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(Duration::from_secs(30)))
        .create_timeout(Some(Duration::from_secs(10)))
        .recycle_timeout(Some(Duration::from_secs(10)))
        .build()
        .map_err(|e| PostgresError::Config(format!("cannot build the connection pool: {e}")))
}

#[async_trait]
impl EventAppender for PostgresStore {
    async fn append_atomic(&self, writes: Vec<StreamWrite>) -> Result<AppendResult> {
        let span = tracing::debug_span!(
            "store.append",
            backend = "postgres",
            stream_id = %writes.first().map_or("", |w| w.stream_id.as_str()),
            streams = writes.len(),
        );
        let (request, answer) = Request::new(writes);
        let appended = async {
            self.queue
                .send(request)
                .await
                .map_err(|_| PostgresError::Closed)?;
            answer.await.map_err(|_| PostgresError::Closed)?
        };
        tracing::Instrument::instrument(appended, span).await
    }
}

#[async_trait]
impl EventReader for PostgresStore {
    async fn read_stream(&self, request: ReadStream) -> Result<StreamSlice> {
        let client = self.client().await?;
        Ok(read::read_stream(&client, request).await?)
    }

    async fn read_all(&self, request: ReadAll) -> Result<AllSlice> {
        let client = self.client().await?;
        match read::read_all(&client, request).await {
            Ok(slice) => Ok(slice),
            Err(e) => {
                // Should `flexcore_watermark` have failed halfway, the session would keep the
                // shared gate and stall every writer: close the connection instead of reusing it.
                drop(deadpool_postgres::Object::take(client));
                Err(e.into())
            }
        }
    }

    /// The last position committed by this process. Commits by other processes do not move it
    /// (see the subscription's poll interval): `NOTIFY` would serialise every committing
    /// transaction on PostgreSQL's notification queue lock, which is what the watermark design
    /// avoids.
    fn head(&self) -> watch::Receiver<u64> {
        self.shared.head.subscribe()
    }

    async fn ping(&self) -> Result<()> {
        let client = self.client().await?;
        client
            .simple_query("SELECT 1")
            .await
            .map_err(PostgresError::from)?;
        Ok(())
    }
}

const SAVE_SNAPSHOT: &str = "INSERT INTO snapshots (stream_id, version, state) \
     VALUES ($1, $2, $3::text::json) \
     ON CONFLICT (stream_id) DO UPDATE \
     SET version = excluded.version, state = excluded.state, saved_at = now() \
     WHERE snapshots.version < excluded.version";

const LOAD_SNAPSHOT: &str = "SELECT version, state::text FROM snapshots WHERE stream_id = $1";

#[async_trait]
impl SnapshotStore for PostgresStore {
    async fn save_snapshot(&self, snapshot: Snapshot) -> Result<()> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(SAVE_SNAPSHOT)
            .await
            .map_err(PostgresError::from)?;
        client
            .execute(
                &statement,
                &[
                    &snapshot.stream_id.as_str(),
                    &to_i64(snapshot.version)?,
                    &snapshot.state.get(),
                ],
            )
            .await
            .map_err(PostgresError::from)?;
        Ok(())
    }

    async fn load_snapshot(&self, stream_id: &StreamId) -> Result<Option<Snapshot>> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(LOAD_SNAPSHOT)
            .await
            .map_err(PostgresError::from)?;
        let Some(row) = client
            .query_opt(&statement, &[&stream_id.as_str()])
            .await
            .map_err(PostgresError::from)?
        else {
            return Ok(None);
        };
        let version: i64 = row.try_get(0).map_err(PostgresError::from)?;
        let state: String = row.try_get(1).map_err(PostgresError::from)?;
        Ok(Some(Snapshot {
            stream_id: stream_id.clone(),
            version: to_u64(version)?,
            state: RawJson::from_string(state)
                .map_err(|e| PostgresError::Corrupt(format!("snapshot state: {e}")))?,
        }))
    }
}

const LOCK_STREAM: &str =
    "SELECT last_version, deleted FROM streams WHERE stream_id = $1 FOR UPDATE";

const DELETE_STREAM: &str = "UPDATE streams \
     SET deleted = true, truncate_before = last_version + 1 WHERE stream_id = $1";

const DELETE_SNAPSHOT: &str = "DELETE FROM snapshots WHERE stream_id = $1";

const TRUNCATE_STREAM: &str = "UPDATE streams \
     SET truncate_before = greatest(truncate_before, $2) \
     WHERE stream_id = $1 AND NOT deleted AND last_version IS NOT NULL";

#[async_trait]
impl StreamAdmin for PostgresStore {
    async fn delete_stream(&self, stream_id: &StreamId, expected: ExpectedVersion) -> Result<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(PostgresError::from)?;
        let (lock, delete, forget) = tokio::try_join!(
            tx.prepare_cached(LOCK_STREAM),
            tx.prepare_cached(DELETE_STREAM),
            tx.prepare_cached(DELETE_SNAPSHOT),
        )
        .map_err(PostgresError::from)?;
        let id = stream_id.as_str();
        let row = tx
            .query_opt(&lock, &[&id])
            .await
            .map_err(PostgresError::from)?;
        let current = match row {
            Some(row) => {
                let last: Option<i64> = row.try_get(0).map_err(PostgresError::from)?;
                let deleted: bool = row.try_get(1).map_err(PostgresError::from)?;
                match last {
                    Some(v) if !deleted => Some(to_u64(v)?),
                    _ => None,
                }
            }
            None => None,
        };
        // Dropping `tx` on the error paths rolls back (and releases the row lock).
        flexcore_app::store::plan::check_delete(stream_id, expected, current)?;
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&id];
        tokio::try_join!(tx.execute(&delete, &params), tx.execute(&forget, &params))
            .map_err(PostgresError::from)?;
        tx.commit().await.map_err(PostgresError::from)?;
        Ok(())
    }

    async fn truncate_before(&self, stream_id: &StreamId, version: u64) -> Result<()> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(TRUNCATE_STREAM)
            .await
            .map_err(PostgresError::from)?;
        let updated = client
            .execute(&statement, &[&stream_id.as_str(), &to_i64(version)?])
            .await
            .map_err(PostgresError::from)?;
        if updated == 0 {
            return Err(
                DomainError::NotFound(format!("stream '{stream_id}' does not exist")).into(),
            );
        }
        Ok(())
    }
}
