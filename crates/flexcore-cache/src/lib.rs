//! FlexCore's query-cache backends: adapters of [`flexcore_app::query_cache::CacheBackend`].
//!
//! | backend | when | entries | tag versions |
//! | --- | --- | --- | --- |
//! | [`MokaCache`] | default: one node | `moka::future::Cache`, bounded in bytes, per-entry TTL | a map in the process |
//! | [`RedisCache`] | several nodes share one cache | `SET key value PX ttl` | `INCR` / `MGET` counters |
//!
//! The composition root picks one with [`from_url`] and hands it to
//! [`flexcore_app::query::QueryBusExt::with_cache`]:
//!
//! ```no_run
//! # async fn wire(router: flexcore_app::query::QueryRouter) -> flexcore_app::Result<()> {
//! use std::sync::Arc;
//! use flexcore_app::query::QueryBusExt;
//!
//! let backend = flexcore_cache::from_url(Some("redis://127.0.0.1:6379/?prefix=flexcore:qc:")).await?;
//! let queries = router.with_cache(backend, Arc::new(flexcore_sample_users::read_model::cache_policy()));
//! let invalidator = queries.invalidator(); // for the projection runner
//! # Ok(()) }
//! ```

mod memory;
mod redis;

use std::sync::Arc;

use flexcore_app::query_cache::CacheBackend;
use flexcore_app::{Error, Result};

pub use crate::memory::{DEFAULT_MAX_BYTES, MokaCache};
pub use crate::redis::{DEFAULT_PREFIX, RedisCache};

/// The backend a configuration asks for:
///
/// * `None` (or an empty string): a [`MokaCache`] of [`DEFAULT_MAX_BYTES`];
/// * `redis://host:port/db?prefix=P` (or `rediss://`, `redis+unix://`): a [`RedisCache`] whose
///   keys all start with `P` ([`DEFAULT_PREFIX`] when absent). The connection is made lazily
///   and re-made after failures; one ping is tried here, and a Redis that does not answer is
///   only logged as a warning: until it does, queries go to their handlers uncached. On
///   `rediss://`, `ca_file=` names the CA the server's certificate must chain to (else the
///   system's roots) and `cert_file=` with `key_file=` a client certificate.
///
/// Call it inside a Tokio runtime. Any other URL is a validation error.
pub async fn from_url(url: Option<&str>) -> Result<Arc<dyn CacheBackend>> {
    let url = url.map(str::trim).filter(|u| !u.is_empty());
    let Some(url) = url else {
        return Ok(Arc::new(MokaCache::new(DEFAULT_MAX_BYTES)));
    };
    if !(url.starts_with("redis://")
        || url.starts_with("rediss://")
        || url.starts_with("redis+unix://")
        || url.starts_with("unix://"))
    {
        return Err(Error::validation(format!(
            "query cache URL must be a redis:// URL, not '{url}'"
        )));
    }
    let cache = RedisCache::from_url(url)?;
    if let Err(e) = cache.ping().await {
        tracing::warn!(prefix = cache.prefix(), error = %e, "query cache Redis does not answer yet; queries run uncached until it does");
    }
    Ok(Arc::new(cache))
}
