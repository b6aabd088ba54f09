//! Domain modules wired as the server wires them, for gateway tests.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use flexcore_app::command::{CommandBus, CommandBusExt};
use flexcore_app::module::{DomainModule, ModuleContext, Modules};
use flexcore_app::projection::{ProjectionState, Projections};
use flexcore_app::query::{Query, QueryBus, QueryBusExt, QueryContext, QueryRouter};
use flexcore_app::query_cache::{CachedQueries, QueryCacheInvalidator};
use flexcore_app::repository::{Repository, RetryPolicy};
use flexcore_app::store::EventStore;
use flexcore_app::{Error, Result};
use flexcore_sample_users::UsersModule;
use flexcore_store_sqlite::SqliteReadModels;
use serde_json::Value;
use tokio::sync::{OnceCell, watch};

/// How long the read side may take to catch up before the first query fails.
const READY_TIMEOUT: Duration = Duration::from_secs(5);

/// The sample domain's buses over `store`: [`module_buses`] with [`UsersModule`].
pub fn sample_buses(store: Arc<dyn EventStore>) -> (Arc<dyn CommandBus>, Arc<dyn QueryBus>) {
    module_buses(store, vec![Arc::new(UsersModule)])
}

/// The buses of `modules` over `store`, wired as the server wires them: commands with retry
/// on conflict and idempotency keys; queries answered from the declared read models (a SQLite
/// read-model file in a temp dir, projected from `store`) through the in-process query cache.
/// The read side starts at the first command or query, inside the caller's runtime, and is
/// live (caught up) before it runs: a read side that has not caught up within 5 s fails it.
/// The modules' durable consumers and log followers do not run (tests count the events in the
/// log).
pub fn module_buses(
    store: Arc<dyn EventStore>,
    modules: Vec<Arc<dyn DomainModule>>,
) -> (Arc<dyn CommandBus>, Arc<dyn QueryBus>) {
    let engine = Arc::new(LazyEngine {
        store,
        modules: Modules::new(modules),
        ready: OnceCell::new(),
    });
    (
        Arc::new(LazyCommands(Arc::clone(&engine))),
        Arc::new(LazyQueries(engine)),
    )
}

struct LazyEngine {
    store: Arc<dyn EventStore>,
    modules: Modules,
    ready: OnceCell<Engine>,
}

struct Engine {
    commands: Box<dyn CommandBus>,
    queries: CachedQueries<QueryRouter>,
    _stop: watch::Sender<bool>,
    _dir: tempfile::TempDir,
}

impl LazyEngine {
    async fn engine(&self) -> Result<&Engine> {
        self.ready.get_or_try_init(|| self.start()).await
    }

    async fn start(&self) -> Result<Engine> {
        let dir = tempfile::tempdir().map_err(|e| Error::internal(e.to_string()))?;
        let read_models = Arc::new(SqliteReadModels::open(dir.path().join("readmodels.db")).await?);
        let backend = flexcore_cache::from_url(None).await?;
        let declared = self.modules.declare()?;
        let policy = Arc::new(declared.cache_policy.unwrap_or_default());
        let (stop, shutdown) = watch::channel(false);
        let mut projections =
            Projections::new(read_models.clone(), Arc::clone(&self.store) as Arc<_>);
        for (_, projection) in declared.projections {
            projections.register(projection)?;
        }
        projections.listen(Arc::new(QueryCacheInvalidator::new(
            Arc::clone(&backend),
            Arc::clone(&policy),
        )));
        let projections = projections.start(shutdown.clone()).await?;
        let context = ModuleContext {
            store: Arc::clone(&self.store),
            repository: Repository::new(Arc::clone(&self.store)),
            projections: projections.clone(),
            read_models: read_models.clone(),
            shutdown: shutdown.clone(),
        };
        let registrations = self.modules.register(&context).await?;
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        for status in projections.status() {
            while projections.status_of(&status.name)?.state != ProjectionState::Live {
                if tokio::time::Instant::now() >= deadline {
                    return Err(Error::unavailable(format!(
                        "projection '{}' is not live after {} s: {:?}",
                        status.name,
                        READY_TIMEOUT.as_secs(),
                        projections.status_of(&status.name)?
                    )));
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        Ok(Engine {
            commands: Box::new(
                registrations
                    .commands
                    .with_retry(RetryPolicy::default())
                    .with_interceptors(registrations.interceptors)
                    .with_idempotency(Duration::from_secs(24 * 3600), 100_000),
            ),
            queries: registrations.queries.with_cache(backend, policy),
            _stop: stop,
            _dir: dir,
        })
    }
}

struct LazyCommands(Arc<LazyEngine>);

#[async_trait]
impl CommandBus for LazyCommands {
    async fn send(
        &self,
        ctx: &flexcore_app::command::CommandContext,
        command: &flexcore_app::command::Command,
    ) -> Result<flexcore_app::command::CommandOutcome> {
        self.0.engine().await?.commands.send(ctx, command).await
    }
}

struct LazyQueries(Arc<LazyEngine>);

#[async_trait]
impl QueryBus for LazyQueries {
    async fn ask(&self, ctx: &QueryContext, query: &Query) -> Result<Value> {
        self.0.engine().await?.queries.ask(ctx, query).await
    }
}
