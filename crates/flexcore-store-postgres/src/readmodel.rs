//! Read models, projection checkpoints and durable consumers' state in PostgreSQL.
//!
//! Everything lives in the store's schema: the `checkpoints`, `dead_letters` and `projections`
//! tables come from the store's migrations, and the projections' own tables (`rm_*`) are
//! created by [`ReadModelStore::create_tables`] through the pool's connections, whose
//! `search_path` is that schema.
//!
//! A batch commit is one transaction: the checkpoint fence first (a conditional `UPDATE`, or an
//! `INSERT … ON CONFLICT DO NOTHING` for the first commit — a racing runner blocks on the
//! winner's row and then finds it moved), then the projection's statements, then `COMMIT`. All
//! of them are sent before the first answer is read, so a batch of a thousand statements costs
//! a few round trips, not a thousand. Statements are prepared once per connection and cached.
//!
//! Portable values ([`SqlValue`]) are converted by the type PostgreSQL infers for each `$n`
//! parameter, and back by each column's type; see [`SqlParam`] and [`SqlCell`].

use std::collections::HashMap;
use std::error::Error as StdError;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;

use async_trait::async_trait;
use bytes::{BufMut, BytesMut};
use deadpool_postgres::{Object, Pool};
use flexcore_app::Result;
use flexcore_app::durable::{CheckpointStore, DeadLetter, DeadLetterStore, ParkReason};
use flexcore_app::projection::{
    Generation, ProjectionRecord, ReadModelStore, SqlStatement, SqlValue,
};
use flexcore_domain::{EventId, StreamId};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio_postgres::Statement;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{FromSql, IsNull, Kind, ToSql, Type, to_sql_checked};

use crate::write::{to_i64, to_u64};
use crate::{PostgresConfig, PostgresError, schema};

type BoxError = Box<dyn StdError + Sync + Send>;

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

fn is_stale_plan(error: &tokio_postgres::Error) -> bool {
    error.code() == Some(&SqlState::FEATURE_NOT_SUPPORTED)
        && error
            .as_db_error()
            .is_some_and(|db| db.message().contains("cached plan"))
}

fn decode_rows(rows: &[tokio_postgres::Row]) -> Result<Vec<Vec<SqlValue>>, tokio_postgres::Error> {
    rows.iter()
        .map(|row| {
            (0..row.len())
                .map(|i| row.try_get::<_, SqlCell>(i).map(|cell| cell.0))
                .collect()
        })
        .collect()
}

/// Requests sent to the server before any answer is read (tokio-postgres writes a request when
/// its future is first polled), so that a batch costs one round trip; the answers are then read
/// in order.
struct Pipeline<'a, T> {
    sent: Vec<Sent<'a, T>>,
}

enum Sent<'a, T> {
    Answered(Result<T, PostgresError>),
    Waiting(Pin<Box<dyn Future<Output = Result<T, PostgresError>> + Send + 'a>>),
}

impl<T> Default for Pipeline<'_, T> {
    fn default() -> Self {
        Self { sent: Vec::new() }
    }
}

impl<'a, T> Pipeline<'a, T> {
    /// Polls `request` once, which sends it. Returns `false` when it failed before reaching
    /// the server (e.g. a value that cannot be bound): nothing after it should be sent.
    async fn send(
        &mut self,
        request: impl Future<Output = Result<T, PostgresError>> + Send + 'a,
    ) -> bool {
        let mut request: Pin<Box<dyn Future<Output = Result<T, PostgresError>> + Send + 'a>> =
            Box::pin(request);
        let first = std::future::poll_fn(|cx| Poll::Ready(request.as_mut().poll(cx))).await;
        match first {
            Poll::Ready(answer) => {
                let ok = answer.is_ok();
                self.sent.push(Sent::Answered(answer));
                ok
            }
            Poll::Pending => {
                self.sent.push(Sent::Waiting(request));
                true
            }
        }
    }

    fn answers(self) -> Answers<'a, T> {
        Answers {
            sent: self.sent.into_iter(),
        }
    }
}

struct Answers<'a, T> {
    sent: std::vec::IntoIter<Sent<'a, T>>,
}

impl<T> Answers<'_, T> {
    /// The next request's answer, in the order they were sent.
    async fn next_answer(&mut self) -> Option<Result<T, PostgresError>> {
        Some(match self.sent.next()? {
            Sent::Answered(answer) => answer,
            Sent::Waiting(request) => request.await,
        })
    }
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

/// A [`SqlValue`] bound to a `$n` parameter, converted to the type PostgreSQL inferred for it:
///
/// | value     | parameter types                                                         |
/// |-----------|-------------------------------------------------------------------------|
/// | `Null`    | any                                                                     |
/// | `Integer` | `int2`, `int4`, `int8` (range-checked), `float4`, `float8`, `numeric`, `bool` (0 is false), `oid` |
/// | `Real`    | `float4`, `float8`, `numeric` (finite values)                           |
/// | `Text`    | `text`, `varchar`, `bpchar`, `name`, `unknown`, enums, `json`, `jsonb`, `uuid`, `timestamptz` (RFC 3339) |
///
/// A domain binds as its base type. Anything else is an error naming the value and the type.
#[derive(Debug)]
pub struct SqlParam<'a>(pub &'a SqlValue);

impl ToSql for SqlParam<'_> {
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
        bind(self.0, ty, out)
    }

    fn accepts(_: &Type) -> bool {
        // Every type is accepted here and checked in `to_sql`, which can say what went wrong.
        true
    }

    to_sql_checked!();
}

fn bind(value: &SqlValue, ty: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
    if let Kind::Domain(base) = ty.kind() {
        return bind(value, base, out);
    }
    match value {
        SqlValue::Null => Ok(IsNull::Yes),
        SqlValue::Integer(i) => match *ty {
            Type::INT8 => i.to_sql(ty, out),
            Type::INT4 => i32::try_from(*i)
                .map_err(|_| out_of_range(*i, ty))?
                .to_sql(ty, out),
            Type::INT2 => i16::try_from(*i)
                .map_err(|_| out_of_range(*i, ty))?
                .to_sql(ty, out),
            Type::OID => u32::try_from(*i)
                .map_err(|_| out_of_range(*i, ty))?
                .to_sql(ty, out),
            #[allow(clippy::cast_precision_loss)] // as SQLite stores an integer in a REAL column
            Type::FLOAT8 => (*i as f64).to_sql(ty, out),
            #[allow(clippy::cast_precision_loss)]
            Type::FLOAT4 => (*i as f32).to_sql(ty, out),
            Type::NUMERIC => encode_numeric(&i.to_string(), out),
            Type::BOOL => (*i != 0).to_sql(ty, out),
            _ => Err(cannot_bind("an integer", ty)),
        },
        SqlValue::Real(r) => match *ty {
            Type::FLOAT8 => r.to_sql(ty, out),
            #[allow(clippy::cast_possible_truncation)]
            Type::FLOAT4 => (*r as f32).to_sql(ty, out),
            Type::NUMERIC if r.is_finite() => encode_numeric(&r.to_string(), out),
            _ => Err(cannot_bind("a real", ty)),
        },
        SqlValue::Text(text) => match *ty {
            Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN => {
                out.put_slice(text.as_bytes());
                Ok(IsNull::No)
            }
            Type::JSON => {
                out.put_slice(text.as_bytes());
                Ok(IsNull::No)
            }
            Type::JSONB => {
                out.put_u8(1); // the jsonb binary format's version
                out.put_slice(text.as_bytes());
                Ok(IsNull::No)
            }
            Type::UUID => uuid::Uuid::parse_str(text)
                .map_err(|e| format!("cannot bind '{text}' to a uuid parameter: {e}"))?
                .to_sql(ty, out),
            Type::TIMESTAMPTZ => OffsetDateTime::parse(text, &Rfc3339)
                .map_err(|e| format!("cannot bind '{text}' to a timestamptz parameter: {e}"))?
                .to_sql(ty, out),
            _ if matches!(ty.kind(), Kind::Enum(_)) => {
                out.put_slice(text.as_bytes());
                Ok(IsNull::No)
            }
            _ => Err(cannot_bind("text", ty)),
        },
    }
}

fn out_of_range(value: i64, ty: &Type) -> BoxError {
    format!("the integer {value} does not fit a parameter of type {ty}").into()
}

fn cannot_bind(what: &str, ty: &Type) -> BoxError {
    format!(
        "cannot bind {what} to a parameter of type {ty} (bind integers to integer, floating or \
         numeric parameters, reals to floating or numeric ones, text to text, json or uuid ones; \
         or cast the parameter in the SQL)"
    )
    .into()
}

/// A column value read back as a [`SqlValue`], by the column's type: integers (`int2`, `int4`,
/// `int8`, `oid`) and `bool` (0 or 1) as `Integer`; `float4`, `float8` as `Real`; `numeric` as
/// `Integer` when it has no fractional digits and fits 64 bits (e.g. `SUM` of integers), else
/// `Real`; `text`, `varchar`, `bpchar`, `name`, enums, `json`, `jsonb`, `uuid` and
/// `timestamptz` (RFC 3339) as `Text`; `NULL` as `Null`. A domain reads as its base type; any
/// other type is an error naming it.
#[derive(Debug, Clone, PartialEq)]
pub struct SqlCell(pub SqlValue);

impl<'a> FromSql<'a> for SqlCell {
    fn from_sql(ty: &Type, raw: &'a [u8]) -> Result<Self, BoxError> {
        read(ty, raw).map(SqlCell)
    }

    fn from_sql_null(_: &Type) -> Result<Self, BoxError> {
        Ok(SqlCell(SqlValue::Null))
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

fn read(ty: &Type, raw: &[u8]) -> Result<SqlValue, BoxError> {
    Ok(match *ty {
        Type::INT2 => SqlValue::Integer(i16::from_sql(ty, raw)?.into()),
        Type::INT4 => SqlValue::Integer(i32::from_sql(ty, raw)?.into()),
        Type::INT8 => SqlValue::Integer(i64::from_sql(ty, raw)?),
        Type::OID => SqlValue::Integer(u32::from_sql(ty, raw)?.into()),
        Type::BOOL => SqlValue::Integer(bool::from_sql(ty, raw)?.into()),
        Type::FLOAT4 => SqlValue::Real(f32::from_sql(ty, raw)?.into()),
        Type::FLOAT8 => SqlValue::Real(f64::from_sql(ty, raw)?),
        Type::NUMERIC => decode_numeric(raw)?,
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN | Type::JSON => {
            SqlValue::Text(std::str::from_utf8(raw)?.to_owned())
        }
        Type::JSONB => match raw.split_first() {
            Some((1, json)) => SqlValue::Text(std::str::from_utf8(json)?.to_owned()),
            _ => return Err("unsupported jsonb binary format version".into()),
        },
        Type::UUID => SqlValue::Text(uuid::Uuid::from_sql(ty, raw)?.to_string()),
        Type::TIMESTAMPTZ => SqlValue::Text(OffsetDateTime::from_sql(ty, raw)?.format(&Rfc3339)?),
        _ => match ty.kind() {
            Kind::Domain(base) => return read(base, raw),
            Kind::Enum(_) => SqlValue::Text(std::str::from_utf8(raw)?.to_owned()),
            _ => {
                return Err(format!(
                    "a read-model column of type {ty} has no portable value; cast it in the \
                     query (e.g. ::text, ::bigint, ::float8)"
                )
                .into());
            }
        },
    })
}

const NUMERIC_POSITIVE: u16 = 0x0000;
const NUMERIC_NEGATIVE: u16 = 0x4000;
const NUMERIC_NAN: u16 = 0xC000;
const NUMERIC_PINF: u16 = 0xD000;
const NUMERIC_NINF: u16 = 0xF000;

/// Reads `numeric`'s binary form: a count of base-10000 digits, the weight (power of 10000) of
/// the first, a sign, the display scale, then the digits, most significant first.
fn decode_numeric(raw: &[u8]) -> Result<SqlValue, BoxError> {
    let word = |i: usize| -> Result<u16, BoxError> {
        raw.get(2 * i..2 * i + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
            .ok_or_else(|| "truncated numeric value".into())
    };
    let count = usize::from(word(0)?);
    let weight = i32::from(i16::from_be_bytes(word(1)?.to_be_bytes()));
    let sign = word(2)?;
    let scale = usize::from(word(3)?);
    let digits = (0..count)
        .map(|i| word(4 + i))
        .collect::<Result<Vec<u16>, _>>()?;
    let negative = match sign {
        NUMERIC_POSITIVE => false,
        NUMERIC_NEGATIVE => true,
        NUMERIC_NAN => return Ok(SqlValue::Real(f64::NAN)),
        NUMERIC_PINF => return Ok(SqlValue::Real(f64::INFINITY)),
        NUMERIC_NINF => return Ok(SqlValue::Real(f64::NEG_INFINITY)),
        other => return Err(format!("unknown numeric sign {other:#x}").into()),
    };
    // The digit (base 10000) whose weight is `power`, 0 where none is stored.
    let digit = |power: i32| -> u16 {
        usize::try_from(weight - power)
            .ok()
            .and_then(|i| digits.get(i).copied())
            .unwrap_or(0)
    };
    let mut text = String::new();
    if negative {
        text.push('-');
    }
    if weight < 0 {
        text.push('0');
    } else {
        text.push_str(&digit(weight).to_string());
        for power in (0..weight).rev() {
            text.push_str(&format!("{:04}", digit(power)));
        }
    }
    if scale == 0 {
        if let Ok(integer) = text.parse::<i64>() {
            return Ok(SqlValue::Integer(integer));
        }
    } else {
        text.push('.');
        let mut fraction = String::new();
        let mut power = -1;
        while fraction.len() < scale {
            fraction.push_str(&format!("{:04}", digit(power)));
            power -= 1;
        }
        fraction.truncate(scale);
        text.push_str(&fraction);
    }
    Ok(SqlValue::Real(text.parse::<f64>()?))
}

/// Writes a plain decimal (`-123.45`, no exponent) in `numeric`'s binary form.
fn encode_numeric(decimal: &str, out: &mut BytesMut) -> Result<IsNull, BoxError> {
    let (negative, unsigned) = match decimal.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, decimal),
    };
    let (integer, fraction) = unsigned.split_once('.').unwrap_or((unsigned, ""));
    if !integer
        .bytes()
        .chain(fraction.bytes())
        .all(|b| b.is_ascii_digit())
    {
        return Err(format!("'{decimal}' is not a plain decimal number").into());
    }
    let integer = integer.trim_start_matches('0');
    let scale = u16::try_from(fraction.len()).map_err(|_| "too many fractional digits")?;
    let group = |chunk: &[u8]| -> u16 {
        chunk
            .iter()
            .fold(0, |acc, b| acc * 10 + u16::from(b - b'0'))
    };
    let lead = (4 - integer.len() % 4) % 4;
    let padded_integer = format!("{}{integer}", "0".repeat(lead));
    let tail = (4 - fraction.len() % 4) % 4;
    let padded_fraction = format!("{fraction}{}", "0".repeat(tail));
    let mut digits: Vec<u16> = padded_integer
        .as_bytes()
        .chunks(4)
        .chain(padded_fraction.as_bytes().chunks(4))
        .map(group)
        .collect();
    let mut weight = i32::try_from(padded_integer.len() / 4).map_err(|_| "numeric too large")? - 1;
    let leading_zeros = digits.iter().take_while(|d| **d == 0).count();
    digits.drain(..leading_zeros);
    weight -= i32::try_from(leading_zeros).map_err(|_| "numeric too large")?;
    while digits.last() == Some(&0) {
        digits.pop();
    }
    let sign = if negative && !digits.is_empty() {
        NUMERIC_NEGATIVE
    } else {
        NUMERIC_POSITIVE
    };
    if digits.is_empty() {
        weight = 0;
    }
    out.put_u16(u16::try_from(digits.len()).map_err(|_| "numeric too large")?);
    out.put_i16(i16::try_from(weight).map_err(|_| "numeric out of range")?);
    out.put_u16(sign);
    out.put_u16(scale);
    for digit in digits {
        out.put_u16(digit);
    }
    Ok(IsNull::No)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(decimal: &str) -> SqlValue {
        let mut out = BytesMut::new();
        encode_numeric(decimal, &mut out).unwrap();
        decode_numeric(&out).unwrap()
    }

    #[test]
    fn numerics_round_trip() {
        assert_eq!(round_trip("0"), SqlValue::Integer(0));
        assert_eq!(round_trip("-0"), SqlValue::Integer(0));
        assert_eq!(round_trip("42"), SqlValue::Integer(42));
        assert_eq!(round_trip("10000"), SqlValue::Integer(10_000));
        assert_eq!(round_trip("-123456789"), SqlValue::Integer(-123_456_789));
        assert_eq!(
            round_trip(&i64::MAX.to_string()),
            SqlValue::Integer(i64::MAX)
        );
        assert_eq!(
            round_trip(&i64::MIN.to_string()),
            SqlValue::Integer(i64::MIN)
        );
        assert_eq!(
            round_trip("99999999999999999999"),
            SqlValue::Real(1e20),
            "too large for 64 bits: a real"
        );
        assert_eq!(round_trip("1.5"), SqlValue::Real(1.5));
        assert_eq!(round_trip("-0.000123"), SqlValue::Real(-0.000_123));
        assert_eq!(round_trip("12345.6789"), SqlValue::Real(12_345.678_9));
        assert_eq!(round_trip("2.50"), SqlValue::Real(2.5));
        assert_eq!(round_trip(&0.1_f64.to_string()), SqlValue::Real(0.1));
        assert_eq!(round_trip(&1e300_f64.to_string()), SqlValue::Real(1e300));
        assert_eq!(
            round_trip(&2.5e-300_f64.to_string()),
            SqlValue::Real(2.5e-300)
        );
        let mut out = BytesMut::new();
        assert!(encode_numeric("1e5", &mut out).is_err());
    }

    #[test]
    fn numerics_decode_the_server_s_layout() {
        // 12345.678 as PostgreSQL sends it: digits [1, 2345, 6780], weight 1, scale 3.
        let raw: Vec<u8> = [3_u16, 1, 0, 3, 1, 2345, 6780]
            .iter()
            .flat_map(|w| w.to_be_bytes())
            .collect();
        assert_eq!(decode_numeric(&raw).unwrap(), SqlValue::Real(12_345.678));
        // 20000 with trailing zero digits left out: digits [2], weight 1, scale 0.
        let raw: Vec<u8> = [1_u16, 1, 0, 0, 2]
            .iter()
            .flat_map(|w| w.to_be_bytes())
            .collect();
        assert_eq!(decode_numeric(&raw).unwrap(), SqlValue::Integer(20_000));
    }

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_identifier("rm_users_1"), "\"rm_users_1\"");
        assert_eq!(quote_identifier("a\"b"), "\"a\"\"b\"");
    }
}
