//! The read side of `flexcore serve`: the read-model store beside the event store, the
//! projections (the sample domain's `users`), the query cache they invalidate, and the
//! operator handles the HTTP routes expose.

use std::sync::Arc;

use anyhow::Context;
use flexcore_app::durable::{DurableConsumer, DurableOptions, SubscriptionControl};
use flexcore_app::projection::users::{UsersProjection, register_queries};
use flexcore_app::projection::{Projections, ProjectionsHandle, ReadModelStore};
use flexcore_app::query::QueryRouter;
use flexcore_app::query_cache::{CacheBackend, CachePolicy, QueryCacheInvalidator};
use flexcore_app::store::EventStore;
use flexcore_app::users::WelcomeNotifier;
use flexcore_store_sqlite::{SqliteConfig, SqliteReadModels};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Opens the read-model store that belongs to an event-store URL: for SQLite a file beside
/// the event file (`<file>.readmodels.db`), for PostgreSQL the same database and schema.
pub async fn open_read_models(store_url: &str) -> anyhow::Result<Arc<dyn ReadModelStore>> {
    if store_url.starts_with("sqlite:") {
        let events = SqliteConfig::from_url(store_url)?.path;
        let path = SqliteReadModels::path_for(&events);
        let read_models = SqliteReadModels::open(&path)
            .await
            .with_context(|| format!("cannot open the read models {}", path.display()))?;
        return Ok(Arc::new(read_models));
    }
    let config = crate::server::postgres_config(store_url);
    let read_models = flexcore_store_postgres::PostgresReadModels::connect(config)
        .await
        .with_context(|| {
            format!(
                "cannot open the read models in {}",
                crate::server::mask_password(store_url)
            )
        })?;
    Ok(Arc::new(read_models))
}

/// The running read side.
#[derive(Clone)]
pub struct ReadSide {
    /// Where read models, checkpoints and dead letters live.
    pub read_models: Arc<dyn ReadModelStore>,
    /// The projections, for queries and operators.
    pub projections: ProjectionsHandle,
    /// The sample domain's query cache (`None` without the sample domain).
    pub cache: Option<QueryCache>,
}

/// The query cache in front of the sample domain's queries.
#[derive(Clone)]
pub struct QueryCache {
    /// Where answers are kept.
    pub backend: Arc<dyn CacheBackend>,
    /// What the cache answers and which events invalidate it.
    pub policy: Arc<CachePolicy>,
}

impl ReadSide {
    /// Opens the read models, starts the projections (building or resuming them) and the
    /// cache; everything stops when `shutdown` turns true. Without the sample domain (Python
    /// modules replace it) no projection runs and no cache is opened (its policy and
    /// invalidation belong to the sample's read model): the read-model store still keeps the
    /// relays' checkpoints.
    pub async fn start(
        store_url: &str,
        cache_url: Option<&str>,
        store: Arc<dyn EventStore>,
        sample_domain: bool,
        shutdown: watch::Receiver<bool>,
    ) -> anyhow::Result<Self> {
        let read_models = open_read_models(store_url).await?;
        let mut projections = Projections::new(Arc::clone(&read_models), store);
        let cache = if sample_domain {
            projections.register(Arc::new(UsersProjection))?;
            let cache = QueryCache {
                backend: flexcore_cache::from_url(cache_url)
                    .await
                    .context("cannot open the query cache")?,
                policy: Arc::new(flexcore_app::users::cache_policy()),
            };
            projections.listen(Arc::new(QueryCacheInvalidator::new(
                Arc::clone(&cache.backend),
                Arc::clone(&cache.policy),
            )));
            Some(cache)
        } else {
            if cache_url.is_some() {
                tracing::warn!(
                    "cache_url is ignored: the query cache serves the sample domain's queries, \
                     which the Python modules replace"
                );
            }
            None
        };
        let projections = projections
            .start(shutdown)
            .await
            .context("cannot start the projections")?;
        Ok(Self {
            read_models,
            projections,
            cache,
        })
    }

    /// Registers the queries the read models answer.
    pub fn register_queries(&self, queries: &mut QueryRouter) -> anyhow::Result<()> {
        register_queries(queries, self.projections.read_model("users")?)?;
        Ok(())
    }

    /// Starts the sample domain's durable consumer (the welcome notifier) with its checkpoint
    /// and dead letters in the read-model store; returns its handle and its task.
    pub async fn start_sample_consumers(
        &self,
        store: Arc<dyn EventStore>,
        shutdown: watch::Receiver<bool>,
    ) -> anyhow::Result<Vec<(SubscriptionControl, JoinHandle<()>)>> {
        let notifier = WelcomeNotifier::new(Arc::clone(&store) as Arc<_>);
        let consumer = DurableConsumer::new(
            WelcomeNotifier::NAME,
            Arc::new(notifier),
            store,
            Arc::clone(&self.read_models) as Arc<_>,
        )
        .with_options(DurableOptions {
            filter: WelcomeNotifier::filter(),
            ..DurableOptions::default()
        })
        .spawn(shutdown)
        .await
        .context("cannot start the welcome notifier")?;
        Ok(vec![consumer])
    }
}
