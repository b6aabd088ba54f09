//! The sample domain wired as the server wires it, for gateway tests.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use flexcore_app::command::{CommandBus, CommandBusExt, CommandRouter};
use flexcore_app::projection::Projections;
use flexcore_app::projection::users::{UsersProjection, register_queries};
use flexcore_app::query::{Query, QueryBus, QueryBusExt, QueryContext, QueryRouter};
use flexcore_app::query_cache::{CachedQueries, QueryCacheInvalidator};
use flexcore_app::repository::{Repository, RetryPolicy};
use flexcore_app::store::EventStore;
use flexcore_app::{Error, Result};
use flexcore_store_sqlite::SqliteReadModels;
use serde_json::Value;
use tokio::sync::{OnceCell, watch};

/// The sample domain's buses over `store`, wired as the server wires them: commands with retry
/// on conflict and idempotency keys; queries answered from the `users` read model (a SQLite
/// read-model file in a temp dir, projected from `store`) through the in-process query cache.
/// The read side starts at the first query, inside the caller's runtime, and is live (caught
/// up) before that query runs.
pub fn sample_buses(store: Arc<dyn EventStore>) -> (Arc<dyn CommandBus>, Arc<dyn QueryBus>) {
    let mut commands = CommandRouter::new();
    flexcore_app::users::register_commands(&mut commands, Repository::new(Arc::clone(&store)))
        .expect("the sample domain registers once");
    (
        Arc::new(
            commands
                .with_retry(RetryPolicy::default())
                .with_idempotency(Duration::from_secs(24 * 3600), 100_000),
        ),
        Arc::new(SampleQueries {
            store,
            ready: OnceCell::new(),
        }),
    )
}

struct SampleQueries {
    store: Arc<dyn EventStore>,
    ready: OnceCell<ReadSide>,
}

struct ReadSide {
    queries: CachedQueries<QueryRouter>,
    _stop: watch::Sender<bool>,
    _dir: tempfile::TempDir,
}

#[async_trait]
impl QueryBus for SampleQueries {
    async fn ask(&self, ctx: &QueryContext, query: &Query) -> Result<Value> {
        let read_side = self
            .ready
            .get_or_try_init(|| start(Arc::clone(&self.store)))
            .await?;
        read_side.queries.ask(ctx, query).await
    }
}

async fn start(store: Arc<dyn EventStore>) -> Result<ReadSide> {
    let dir = tempfile::tempdir().map_err(|e| Error::Internal(e.to_string()))?;
    let read_models = SqliteReadModels::open(dir.path().join("readmodels.db")).await?;
    let backend = flexcore_cache::from_url(None).await?;
    let policy = Arc::new(flexcore_app::users::cache_policy());
    let (stop, shutdown) = watch::channel(false);
    let mut projections = Projections::new(Arc::new(read_models), store);
    projections.register(Arc::new(UsersProjection))?;
    projections.listen(Arc::new(QueryCacheInvalidator::new(
        Arc::clone(&backend),
        Arc::clone(&policy),
    )));
    let projections = projections.start(shutdown).await?;
    for _ in 0..500 {
        if projections.status_of("users")?.state == "live" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut router = QueryRouter::new();
    register_queries(&mut router, projections.read_model("users")?)?;
    Ok(ReadSide {
        queries: router.with_cache(backend, policy),
        _stop: stop,
        _dir: dir,
    })
}
