//! Projections: read models kept up to date from the global log.
//!
//! A [`Projection`] turns events into SQL changes ([`Changes`]); it cannot perform side
//! effects, so replaying it is always safe. The engine applies the changes of a batch of
//! events and moves the projection's checkpoint **in one transaction** of the
//! [`ReadModelStore`] (SQLite or PostgreSQL): a crash never applies an event twice or skips
//! one (exactly-once effect). The SQL is portable: parameters are `$1`, `$2`, …, and table names
//! are written `{name}`, which the engine replaces with the physical table of the generation
//! being written (`rm_{name}_{generation}`).
//!
//! Rebuilds are blue-green: a new generation of the read model is built beside the live one
//! from position 0 and swapped in when it has caught up; queries keep reading the live
//! generation until the swap and never see a half-built model. Side effects belong to durable
//! consumers ([`crate::durable`]), whose checkpoints a rebuild never moves, so nothing is sent
//! twice while a projection replays. A projection whose [`Projection::version`] changed is
//! rebuilt the same way at start.

mod read_model;
mod runner;
mod templates;

use async_trait::async_trait;
use flexcore_domain::EventEnvelope;
use serde::{Deserialize, Serialize};

pub use read_model::ReadModel;
pub use runner::{
    ProjectionListener, ProjectionState, ProjectionStatus, Projections, ProjectionsHandle,
};

use crate::durable::ConsumerStateStore;
use crate::store::EventFilter;
use crate::{Error, Result};

/// A value bound to, or read from, an SQL statement.
#[derive(Debug, Clone, PartialEq)]
pub enum SqlValue {
    /// SQL `NULL`.
    Null,
    /// A 64-bit integer.
    Integer(i64),
    /// A double.
    Real(f64),
    /// Text (JSON documents are stored as text).
    Text(String),
}

impl SqlValue {
    /// The text, if this is text.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::Text(s) => Some(s),
            _ => None,
        }
    }

    /// The integer, if this is one.
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Self::Integer(i) => Some(*i),
            _ => None,
        }
    }
}

impl From<&str> for SqlValue {
    fn from(value: &str) -> Self {
        Self::Text(value.to_owned())
    }
}

impl From<String> for SqlValue {
    fn from(value: String) -> Self {
        Self::Text(value)
    }
}

impl From<i64> for SqlValue {
    fn from(value: i64) -> Self {
        Self::Integer(value)
    }
}

impl From<u64> for SqlValue {
    fn from(value: u64) -> Self {
        Self::Integer(i64::try_from(value).unwrap_or(i64::MAX))
    }
}

impl From<f64> for SqlValue {
    fn from(value: f64) -> Self {
        Self::Real(value)
    }
}

impl<T: Into<SqlValue>> From<Option<T>> for SqlValue {
    fn from(value: Option<T>) -> Self {
        value.map_or(Self::Null, Into::into)
    }
}

/// One SQL statement with its parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct SqlStatement {
    /// The statement: `$n` parameters, physical table names.
    pub sql: String,
    /// The parameters, `$1` first.
    pub params: Vec<SqlValue>,
}

/// The SQL changes one batch of events makes to a read model.
#[derive(Debug, Default)]
pub struct Changes {
    statements: Vec<SqlStatement>,
}

impl Changes {
    /// Adds a statement (`{table}` names, `$n` parameters).
    pub fn execute(&mut self, sql: &str, params: Vec<SqlValue>) {
        self.statements.push(SqlStatement {
            sql: sql.to_owned(),
            params,
        });
    }

    /// The statements collected so far.
    pub fn statements(&self) -> &[SqlStatement] {
        &self.statements
    }

    fn take(&mut self) -> Vec<SqlStatement> {
        std::mem::take(&mut self.statements)
    }
}

/// Builds a read model from events.
pub trait Projection: Send + Sync {
    /// The projection's name (also the name of its checkpoint).
    fn name(&self) -> &str;

    /// The version of its schema and logic; changing it rebuilds the read model at start.
    fn version(&self) -> u32;

    /// The tables it owns, by logical name (`[a-z][a-z0-9_]*`).
    fn tables(&self) -> Vec<&'static str>;

    /// The statements that create its tables and indexes, with `{table}` names (an index is
    /// named like `{table}_by_email` so each generation gets its own).
    fn schema(&self) -> Vec<String>;

    /// Which events it reads.
    fn filter(&self) -> EventFilter {
        EventFilter::default()
    }

    /// Adds the SQL changes one event makes. An error stops the projection (a bug or bad
    /// data): it is retried with backoff, never skipped.
    fn apply(&self, event: &EventEnvelope, changes: &mut Changes) -> Result<()>;
}

/// One generation of a read model: its number and the projection version that built it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Generation {
    /// Increases with every rebuild; part of the physical table names.
    pub number: u32,
    /// The [`Projection::version`] it was built with.
    pub version: u32,
}

/// What the store remembers about a projection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectionRecord {
    /// The projection's name.
    pub name: String,
    /// The generation queries read, once one has caught up.
    pub live: Option<Generation>,
    /// The generation being built, if any.
    pub building: Option<Generation>,
}

/// Where read models, their checkpoints and the durable consumers' state live.
#[async_trait]
pub trait ReadModelStore: ConsumerStateStore {
    /// Runs DDL statements (physical names) in one transaction.
    async fn create_tables(&self, statements: Vec<String>) -> Result<()>;

    /// Drops tables (physical names) if they exist.
    async fn drop_tables(&self, tables: Vec<String>) -> Result<()>;

    /// In one transaction: runs `statements` and moves `checkpoint` from `from` (`None`: no
    /// checkpoint yet) to `to`. When the stored checkpoint is not `from` (another runner moved
    /// it), nothing is applied and [`crate::Error::Contended`] is returned.
    async fn commit(
        &self,
        checkpoint: &str,
        from: Option<u64>,
        to: u64,
        statements: Vec<SqlStatement>,
    ) -> Result<()>;

    /// Runs a read-only query (physical names) and returns its rows.
    async fn query(&self, sql: String, params: Vec<SqlValue>) -> Result<Vec<Vec<SqlValue>>>;

    /// Every projection's record.
    async fn load_projections(&self) -> Result<Vec<ProjectionRecord>>;

    /// Saves a projection's record.
    async fn save_projection(&self, record: &ProjectionRecord) -> Result<()>;
}

/// The physical name of a logical table in one generation.
pub fn physical_table(table: &str, generation: u32) -> String {
    format!("rm_{table}_{generation}")
}

/// Replaces every `{table}` of `tables` in `sql` by its physical name in `generation`.
pub fn resolve_tables(sql: &str, tables: &[&str], generation: u32) -> String {
    let mut resolved = sql.to_owned();
    for table in tables {
        resolved = resolved.replace(&format!("{{{table}}}"), &physical_table(table, generation));
    }
    resolved
}

/// Checks a logical table name.
pub fn validate_table_name(name: &str) -> Result<()> {
    let mut chars = name.chars();
    let valid = chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && name.len() <= 40;
    if valid {
        Ok(())
    } else {
        Err(Error::internal(format!(
            "read-model table name '{name}' must match [a-z][a-z0-9_]* (at most 40 characters)"
        )))
    }
}

/// The checkpoint name of one generation of a projection.
pub fn checkpoint_name(projection: &str, generation: u32) -> String {
    format!("projection:{projection}:{generation}")
}
