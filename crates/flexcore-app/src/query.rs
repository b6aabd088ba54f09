//! The query bus: routes each query to one handler, through middleware decorators.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use serde_json::Value;
use tracing::Instrument;

use crate::{Error, Result};

/// A query: a type and JSON parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    /// Selects the handler, e.g. `get_user`.
    pub query_type: String,
    /// The query's parameters.
    pub params: Value,
}

/// The query parameter that asks for read-your-writes, like
/// [`QueryContext::min_position`]. The engine owns it: [`QueryRouter`] takes it out of the
/// parameters before a handler sees them.
pub const MIN_POSITION_PARAM: &str = "min_position";

/// How long a read-your-writes query waits for its read models at most, then answers 503.
pub const READ_YOUR_WRITES_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Who asks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueryContext {
    /// The authenticated principal (`None` when authentication is off).
    pub principal: Option<Arc<crate::security::Principal>>,
    /// The tenant, if any.
    pub tenant: Option<String>,
    /// Read-your-writes: answer only from read models that have applied the event at this
    /// global position (waiting at most [`READ_YOUR_WRITES_TIMEOUT`] for it).
    pub min_position: Option<u64>,
}

/// Whether a query asks for read-your-writes, by its context or by its parameters.
pub fn asks_min_position(ctx: &QueryContext, params: &Value) -> bool {
    ctx.min_position.is_some() || params.get(MIN_POSITION_PARAM).is_some_and(|p| !p.is_null())
}

/// Takes [`MIN_POSITION_PARAM`] out of `params` into the context (the later of the two when
/// both are given). `None` when the parameters do not carry it (nothing to change).
fn lift_min_position(ctx: &QueryContext, params: &Value) -> Result<Option<(QueryContext, Value)>> {
    let Some(value) = params.get(MIN_POSITION_PARAM) else {
        return Ok(None);
    };
    let position = match value {
        Value::Null => None,
        value => Some(value.as_u64().ok_or_else(|| {
            Error::validation(format!(
                "{MIN_POSITION_PARAM} must be a global position (a non-negative integer), not {value}"
            ))
        })?),
    };
    let mut params = params.clone();
    if let Some(fields) = params.as_object_mut() {
        fields.remove(MIN_POSITION_PARAM);
    }
    let ctx = QueryContext {
        min_position: ctx.min_position.max(position),
        ..ctx.clone()
    };
    Ok(Some((ctx, params)))
}

/// Answers one query type.
#[async_trait]
pub trait QueryHandler: Send + Sync {
    /// Validates the parameters and answers.
    async fn handle(&self, ctx: &QueryContext, params: &Value) -> Result<Value>;
}

/// Asks queries. Implemented by the router and by every middleware decorator.
#[async_trait]
pub trait QueryBus: Send + Sync {
    /// Answers a query.
    async fn ask(&self, ctx: &QueryContext, query: &Query) -> Result<Value>;
}

#[async_trait]
impl<B: QueryBus + ?Sized> QueryBus for Arc<B> {
    async fn ask(&self, ctx: &QueryContext, query: &Query) -> Result<Value> {
        (**self).ask(ctx, query).await
    }
}

/// The innermost query bus: a table from query type to handler. It takes
/// [`MIN_POSITION_PARAM`] out of the parameters into the context, so handlers see only their
/// own parameters.
#[derive(Default, Clone)]
pub struct QueryRouter {
    handlers: HashMap<String, Arc<dyn QueryHandler>>,
}

impl QueryRouter {
    /// An empty router.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers the handler of a query type; a second handler for one type is a bug.
    pub fn register(
        &mut self,
        query_type: impl Into<String>,
        handler: Arc<dyn QueryHandler>,
    ) -> Result<()> {
        let query_type = query_type.into();
        if self.handlers.contains_key(&query_type) {
            return Err(Error::internal(format!(
                "query type '{query_type}' already has a handler"
            )));
        }
        self.handlers.insert(query_type, handler);
        Ok(())
    }
}

#[async_trait]
impl QueryBus for QueryRouter {
    async fn ask(&self, ctx: &QueryContext, query: &Query) -> Result<Value> {
        let handler = self
            .handlers
            .get(&query.query_type)
            .ok_or_else(|| Error::UnknownQuery(query.query_type.clone()))?;
        match lift_min_position(ctx, &query.params)? {
            Some((ctx, params)) => handler.handle(&ctx, &params).await,
            None => handler.handle(ctx, &query.params).await,
        }
    }
}

/// Runs each query in a `query` span and logs failures.
pub struct TracedQueries<B> {
    inner: B,
}

#[async_trait]
impl<B: QueryBus> QueryBus for TracedQueries<B> {
    async fn ask(&self, ctx: &QueryContext, query: &Query) -> Result<Value> {
        let span = tracing::info_span!("query", query_type = %query.query_type);
        let result = self.inner.ask(ctx, query).instrument(span.clone()).await;
        if let Err(e) = &result {
            tracing::info!(parent: &span, error = %e, "query failed");
        }
        result
    }
}

/// Attaches middleware to any query bus.
pub trait QueryBusExt: QueryBus + Sized {
    /// Traces every query.
    fn with_tracing(self) -> TracedQueries<Self> {
        TracedQueries { inner: self }
    }

    /// Answers only the queries the caller's roles allow under `policy`.
    fn with_authorization(
        self,
        policy: Arc<crate::security::Policy>,
    ) -> crate::security::AuthorizedQueries<Self> {
        crate::security::AuthorizedQueries::new(self, policy)
    }

    /// Answers cacheable queries from `backend`, as `policy` says (see [`crate::query_cache`]).
    fn with_cache(
        self,
        backend: Arc<dyn crate::query_cache::CacheBackend>,
        policy: Arc<crate::query_cache::CachePolicy>,
    ) -> crate::query_cache::CachedQueries<Self> {
        crate::query_cache::CachedQueries::new(self, backend, policy)
    }
}

impl<B: QueryBus + Sized> QueryBusExt for B {}
