//! [`PostgresReadModels`]: projections' tables, their fenced batch commits, checkpoints and
//! dead letters.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use deadpool_postgres::{Object, Pool};
use flexcore_app::Result;
use flexcore_app::durable::{CheckpointStore, DeadLetter, DeadLetterStore, ParkReason};
use flexcore_app::projection::{
    Generation, ProjectionRecord, ReadModelStore, SqlStatement, SqlValue,
};
use flexcore_domain::{EventId, StreamId};
use tokio_postgres::Statement;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;

use super::codec::{SqlParam, decode_rows};
use super::pipeline::Pipeline;
use crate::write::{to_i64, to_u64};
use crate::{PostgresConfig, PostgresError, schema};

/// The read-model store of a PostgreSQL deployment: projections' tables, their checkpoints and
/// the durable consumers' state, in the event store's schema.
///
/// Get one from [`crate::PostgresStore::read_models`] (sharing the store's pool) or
/// [`PostgresReadModels::connect`] (a pool of its own). Cloning is cheap.
#[derive(Clone)]
pub struct PostgresReadModels {
    pool: Pool,
    schema: Arc<str>,
}

impl std::fmt::Debug for PostgresReadModels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresReadModels")
            .field("schema", &self.schema)
            .finish_non_exhaustive()
    }
}

const LOAD_CHECKPOINT: &str = "SELECT position FROM checkpoints WHERE consumer = $1";

const SAVE_CHECKPOINT: &str = "INSERT INTO checkpoints (consumer, position) VALUES ($1, $2) \
     ON CONFLICT (consumer) DO UPDATE SET position = excluded.position \
     WHERE checkpoints.position < excluded.position";

const RESET_CHECKPOINT: &str = "DELETE FROM checkpoints WHERE consumer = $1";

/// The fence of a first commit: inserts the checkpoint unless a row exists. A racing insert
/// waits for ours to commit and then inserts nothing.
const FENCE_FIRST: &str = "INSERT INTO checkpoints (consumer, position) VALUES ($1, $2) \
     ON CONFLICT (consumer) DO NOTHING";

/// The fence of a later commit: moves the checkpoint only from the expected position. A racing
/// update waits on our row lock and then finds the position changed.
const FENCE_NEXT: &str =
    "UPDATE checkpoints SET position = $3 WHERE consumer = $1 AND position = $2";

const PARK: &str = "INSERT INTO dead_letters \
     (consumer, global_position, stream_id, event_id, event_type, state, attempts, error, parked_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
     ON CONFLICT (consumer, global_position) DO UPDATE SET \
     stream_id = excluded.stream_id, event_id = excluded.event_id, \
     event_type = excluded.event_type, state = excluded.state, attempts = excluded.attempts, \
     error = excluded.error, parked_at = excluded.parked_at";

const DEAD_LETTERS: &str = "SELECT global_position, stream_id, event_id, event_type, state, \
     attempts, error, parked_at FROM dead_letters WHERE consumer = $1 ORDER BY global_position";

const REMOVE_DEAD_LETTER: &str =
    "DELETE FROM dead_letters WHERE consumer = $1 AND global_position = $2";

const LOAD_PROJECTIONS: &str = "SELECT name, live_number, live_version, building_number, \
     building_version FROM projections ORDER BY name";

const SAVE_PROJECTION: &str = "INSERT INTO projections \
     (name, live_number, live_version, building_number, building_version) \
     VALUES ($1, $2, $3, $4, $5) \
     ON CONFLICT (name) DO UPDATE SET live_number = excluded.live_number, \
     live_version = excluded.live_version, building_number = excluded.building_number, \
     building_version = excluded.building_version";

impl PostgresReadModels {
    pub(crate) fn new(pool: Pool, schema: Arc<str>) -> Self {
        Self { pool, schema }
    }

    /// Connects with a pool of its own, creating the schema and applying missing migrations
    /// (the same ones [`crate::PostgresStore::connect`] applies).
    pub async fn connect(config: PostgresConfig) -> Result<Self, PostgresError> {
        config.validate()?;
        schema::migrate(&config).await?;
        let pool = crate::store::build_pool(&config)?;
        Ok(Self::new(pool, config.schema.into()))
    }

    /// The schema the read models live in.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    async fn client(&self) -> Result<Object, PostgresError> {
        Ok(self.pool.get().await?)
    }

    /// Forgets every connection's prepared statements: after DDL, a cached statement on a
    /// re-created table would fail with "cached plan must not change result type".
    fn forget_prepared_statements(&self) {
        self.pool.manager().statement_caches.clear();
    }

    async fn commit_batch(
        &self,
        checkpoint: &str,
        from: Option<u64>,
        to: u64,
        statements: &[SqlStatement],
    ) -> Result<(), PostgresError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let fence = tx
            .prepare_cached(if from.is_some() {
                FENCE_NEXT
            } else {
                FENCE_FIRST
            })
            .await?;
        let mut prepared: HashMap<&str, Statement> = HashMap::new();
        for statement in statements {
            if !prepared.contains_key(statement.sql.as_str()) {
                let ready = tx
                    .prepare_cached(&statement.sql)
                    .await
                    .map_err(|source| statement_error(&statement.sql, source))?;
                prepared.insert(&statement.sql, ready);
            }
        }
        let to = to_i64(to)?;
        let expected = from.map(to_i64).transpose()?;
        let moved = {
            let (tx, prepared) = (&tx, &prepared);
            let mut pipeline = Pipeline::default();
            pipeline
                .send(async move {
                    let moved = match expected {
                        Some(expected) => tx.execute(&fence, &[&checkpoint, &expected, &to]).await,
                        None => tx.execute(&fence, &[&checkpoint, &to]).await,
                    };
                    Ok(moved?)
                })
                .await;
            for statement in statements {
                let sql = statement.sql.as_str();
                let params = statement.params.iter().map(SqlParam);
                let sent = pipeline
                    .send(async move {
                        tx.execute_raw(&prepared[sql], params)
                            .await
                            .map_err(|source| statement_error(sql, source))
                    })
                    .await;
                if !sent {
                    break;
                }
            }
            let mut answers = pipeline.answers();
            // The fence's answer first: a runner that lost the race reports the conflict,
            // whatever its statements did afterwards in the doomed transaction.
            let moved = answers.next_answer().await.unwrap_or(Ok(0))?;
            if moved == 1 {
                while let Some(answer) = answers.next_answer().await {
                    answer?;
                }
            }
            moved
        };
        if moved != 1 {
            tx.rollback().await?;
            let current = load_checkpoint(&client, checkpoint).await?;
            return Err(PostgresError::Fenced {
                checkpoint: checkpoint.to_owned(),
                expected: from,
                current,
            });
        }
        tx.commit().await?;
        Ok(())
    }

    async fn run_query(
        &self,
        sql: &str,
        params: &[SqlValue],
    ) -> Result<Vec<Vec<SqlValue>>, PostgresError> {
        let client = self.client().await?;
        let bound: Vec<SqlParam<'_>> = params.iter().map(SqlParam).collect();
        let refs: Vec<&(dyn ToSql + Sync)> =
            bound.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
        let mut retried = false;
        loop {
            let rows = match client.prepare_cached(sql).await {
                Ok(statement) => client.query(&statement, &refs).await,
                Err(e) => Err(e),
            };
            match rows {
                Ok(rows) => return decode_rows(&rows).map_err(|e| statement_error(sql, e)),
                Err(e) if !retried && is_stale_plan(&e) => {
                    // Another process re-created a table this connection had prepared against.
                    client.statement_cache.clear();
                    retried = true;
                }
                Err(e) => return Err(statement_error(sql, e)),
            }
        }
    }
}

async fn load_checkpoint(client: &Object, consumer: &str) -> Result<Option<u64>, PostgresError> {
    let statement = client.prepare_cached(LOAD_CHECKPOINT).await?;
    let row = client.query_opt(&statement, &[&consumer]).await?;
    row.map(|row| to_u64(row.try_get(0)?)).transpose()
}

fn statement_error(sql: &str, source: tokio_postgres::Error) -> PostgresError {
    PostgresError::Statement {
        sql: sql.to_owned(),
        source,
    }
}

/// Whether a statement failed on a plan cached before its table changed ("cached plan must not
/// change result type"). Classified by SQLSTATE alone (0A000, feature not supported): another
/// error of that class fails again when the statement is retried once, and is reported then.
fn is_stale_plan(error: &tokio_postgres::Error) -> bool {
    error.code() == Some(&SqlState::FEATURE_NOT_SUPPORTED)
}

#[async_trait]
impl CheckpointStore for PostgresReadModels {
    async fn load_checkpoint(&self, consumer: &str) -> Result<Option<u64>> {
        let client = self.client().await?;
        Ok(load_checkpoint(&client, consumer).await?)
    }

    async fn save_checkpoint(&self, consumer: &str, position: u64) -> Result<()> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(SAVE_CHECKPOINT)
            .await
            .map_err(PostgresError::from)?;
        client
            .execute(&statement, &[&consumer, &to_i64(position)?])
            .await
            .map_err(PostgresError::from)?;
        Ok(())
    }

    async fn reset_checkpoint(&self, consumer: &str) -> Result<()> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(RESET_CHECKPOINT)
            .await
            .map_err(PostgresError::from)?;
        client
            .execute(&statement, &[&consumer])
            .await
            .map_err(PostgresError::from)?;
        Ok(())
    }
}

#[async_trait]
impl DeadLetterStore for PostgresReadModels {
    async fn park(&self, letters: &[DeadLetter]) -> Result<()> {
        if letters.is_empty() {
            return Ok(());
        }
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(PostgresError::from)?;
        let park = tx.prepare_cached(PARK).await.map_err(PostgresError::from)?;
        let rows = letters
            .iter()
            .map(|letter| {
                let (state, attempts, error) = match &letter.reason {
                    ParkReason::Failed { attempts, error } => {
                        ("failed", Some(i64::from(*attempts)), Some(error.as_str()))
                    }
                    ParkReason::Waiting => ("waiting", None, None),
                };
                Ok((
                    letter,
                    to_i64(letter.global_position)?,
                    state,
                    attempts,
                    error,
                ))
            })
            .collect::<Result<Vec<_>, PostgresError>>()?;
        {
            let (tx, park) = (&tx, &park);
            let mut pipeline = Pipeline::default();
            for (letter, position, state, attempts, error) in &rows {
                pipeline
                    .send(async move {
                        Ok(tx
                            .execute(
                                park,
                                &[
                                    &letter.consumer,
                                    position,
                                    &letter.stream_id.as_str(),
                                    &letter.event_id.0,
                                    &letter.event_type,
                                    state,
                                    attempts,
                                    error,
                                    &letter.parked_at,
                                ],
                            )
                            .await?)
                    })
                    .await;
            }
            let mut answers = pipeline.answers();
            while let Some(answer) = answers.next_answer().await {
                answer?;
            }
        }
        tx.commit().await.map_err(PostgresError::from)?;
        Ok(())
    }

    async fn dead_letters(&self, consumer: &str) -> Result<Vec<DeadLetter>> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(DEAD_LETTERS)
            .await
            .map_err(PostgresError::from)?;
        let rows = client
            .query(&statement, &[&consumer])
            .await
            .map_err(PostgresError::from)?;
        Ok(rows
            .iter()
            .map(|row| dead_letter(consumer, row))
            .collect::<Result<_, PostgresError>>()?)
    }

    async fn remove_dead_letter(&self, consumer: &str, global_position: u64) -> Result<bool> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(REMOVE_DEAD_LETTER)
            .await
            .map_err(PostgresError::from)?;
        let removed = client
            .execute(&statement, &[&consumer, &to_i64(global_position)?])
            .await
            .map_err(PostgresError::from)?;
        Ok(removed > 0)
    }
}

fn dead_letter(consumer: &str, row: &tokio_postgres::Row) -> Result<DeadLetter, PostgresError> {
    let state: &str = row.try_get(4)?;
    let reason = match state {
        "failed" => {
            let attempts: Option<i64> = row.try_get(5)?;
            let error: Option<String> = row.try_get(6)?;
            ParkReason::Failed {
                attempts: attempts
                    .and_then(|a| u32::try_from(a).ok())
                    .ok_or_else(|| {
                        PostgresError::Corrupt(format!("dead letter attempts {attempts:?}"))
                    })?,
                error: error.unwrap_or_default(),
            }
        }
        "waiting" => ParkReason::Waiting,
        other => {
            return Err(PostgresError::Corrupt(format!(
                "dead letter state '{other}'"
            )));
        }
    };
    let stream_id: String = row.try_get(1)?;
    Ok(DeadLetter {
        consumer: consumer.to_owned(),
        global_position: to_u64(row.try_get(0)?)?,
        stream_id: StreamId::new(stream_id)
            .map_err(|e| PostgresError::Corrupt(format!("dead letter stream id: {e}")))?,
        event_id: EventId(row.try_get(2)?),
        event_type: row.try_get(3)?,
        reason,
        parked_at: row.try_get(7)?,
    })
}

#[async_trait]
impl ReadModelStore for PostgresReadModels {
    async fn create_tables(&self, statements: Vec<String>) -> Result<()> {
        if statements.is_empty() {
            return Ok(());
        }
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(PostgresError::from)?;
        for sql in &statements {
            tx.batch_execute(sql)
                .await
                .map_err(|source| statement_error(sql, source))?;
        }
        tx.commit().await.map_err(PostgresError::from)?;
        self.forget_prepared_statements();
        Ok(())
    }

    async fn drop_tables(&self, tables: Vec<String>) -> Result<()> {
        if tables.is_empty() {
            return Ok(());
        }
        let names: Vec<String> = tables.iter().map(|t| quote_identifier(t)).collect();
        let sql = format!("DROP TABLE IF EXISTS {}", names.join(", "));
        let client = self.client().await?;
        client
            .batch_execute(&sql)
            .await
            .map_err(|source| statement_error(&sql, source))?;
        self.forget_prepared_statements();
        Ok(())
    }

    async fn commit(
        &self,
        checkpoint: &str,
        from: Option<u64>,
        to: u64,
        statements: Vec<SqlStatement>,
    ) -> Result<()> {
        Ok(self.commit_batch(checkpoint, from, to, &statements).await?)
    }

    async fn query(&self, sql: String, params: Vec<SqlValue>) -> Result<Vec<Vec<SqlValue>>> {
        Ok(self.run_query(&sql, &params).await?)
    }

    async fn load_projections(&self) -> Result<Vec<ProjectionRecord>> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(LOAD_PROJECTIONS)
            .await
            .map_err(PostgresError::from)?;
        let rows = client
            .query(&statement, &[])
            .await
            .map_err(PostgresError::from)?;
        Ok(rows
            .iter()
            .map(|row| {
                Ok(ProjectionRecord {
                    name: row.try_get(0)?,
                    live: generation(row.try_get(1)?, row.try_get(2)?)?,
                    building: generation(row.try_get(3)?, row.try_get(4)?)?,
                })
            })
            .collect::<Result<_, PostgresError>>()?)
    }

    async fn save_projection(&self, record: &ProjectionRecord) -> Result<()> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(SAVE_PROJECTION)
            .await
            .map_err(PostgresError::from)?;
        let number = |g: Option<Generation>| g.map(|g| i64::from(g.number));
        let version = |g: Option<Generation>| g.map(|g| i64::from(g.version));
        client
            .execute(
                &statement,
                &[
                    &record.name,
                    &number(record.live),
                    &version(record.live),
                    &number(record.building),
                    &version(record.building),
                ],
            )
            .await
            .map_err(PostgresError::from)?;
        Ok(())
    }
}

fn generation(
    number: Option<i64>,
    version: Option<i64>,
) -> Result<Option<Generation>, PostgresError> {
    let Some((number, version)) = number.zip(version) else {
        return Ok(None);
    };
    let field = |value: i64| {
        u32::try_from(value)
            .map_err(|_| PostgresError::Corrupt(format!("projection generation field {value}")))
    };
    Ok(Some(Generation {
        number: field(number)?,
        version: field(version)?,
    }))
}

/// `name` as a quoted identifier. Read-model tables are created with unquoted lowercase names,
/// which PostgreSQL stores as written, so quoting finds them.
fn quote_identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_identifier("rm_users_1"), "\"rm_users_1\"");
        assert_eq!(quote_identifier("a\"b"), "\"a\"\"b\"");
    }
}
