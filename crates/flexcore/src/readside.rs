//! The read side of `flexcore serve`: the read-model store beside the event store, the
//! projections the loaded modules declared, the query cache they invalidate, and the operator
//! handles the HTTP routes expose.

use std::sync::Arc;

use anyhow::Context;
use flexcore_app::module::ReadSideDeclarations;
use flexcore_app::projection::{Projections, ProjectionsHandle, ReadModelStore};
use flexcore_app::query_cache::{CacheBackend, CachePolicy, QueryCacheInvalidator};
use flexcore_app::store::EventStore;
use tokio::sync::watch;

/// The running read side.
#[derive(Clone)]
pub struct ReadSide {
    /// Where read models, checkpoints and dead letters live.
    pub read_models: Arc<dyn ReadModelStore>,
    /// The projections, for queries and operators.
    pub projections: ProjectionsHandle,
    /// The query cache (`None` when no module declared a cacheable query).
    pub cache: Option<QueryCache>,
}

/// The query cache in front of the modules' queries.
#[derive(Clone)]
pub struct QueryCache {
    /// Where answers are kept.
    pub backend: Arc<dyn CacheBackend>,
    /// What the cache answers and which events invalidate it.
    pub policy: Arc<CachePolicy>,
}

impl ReadSide {
    /// Opens the read models, starts the declared projections (building or resuming them) and,
    /// when a module declared a cache policy, the query cache they invalidate; everything stops
    /// when `shutdown` turns true. With no cache policy, no cache is opened and a configured
    /// `cache_url` is reported as ignored. The read-model store also keeps the durable
    /// consumers' and the relays' checkpoints.
    pub async fn start(
        store_url: &str,
        cache_url: Option<&str>,
        store: Arc<dyn EventStore>,
        declared: ReadSideDeclarations,
        shutdown: watch::Receiver<bool>,
    ) -> anyhow::Result<Self> {
        let read_models = crate::store_url::open_read_models(store_url).await?;
        let mut projections = Projections::new(Arc::clone(&read_models), store);
        for (module, projection) in declared.projections {
            let name = projection.name().to_owned();
            projections
                .register(projection)
                .with_context(|| format!("module '{module}' declares projection '{name}'"))?;
        }
        let cache = match declared.cache_policy {
            Some(policy) => {
                let cache = QueryCache {
                    backend: flexcore_cache::from_url(cache_url)
                        .await
                        .context("cannot open the query cache")?,
                    policy: Arc::new(policy),
                };
                projections.listen(Arc::new(QueryCacheInvalidator::new(
                    Arc::clone(&cache.backend),
                    Arc::clone(&cache.policy),
                )));
                Some(cache)
            }
            None => {
                if cache_url.is_some() {
                    tracing::warn!(
                        "cache_url is ignored: no loaded module declares a cacheable query"
                    );
                }
                None
            }
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
}
