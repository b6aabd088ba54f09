//! Store URLs: which event store and read-model store a `store_url` names, and how to show
//! one in logs (password masked).
//!
//! `sqlite://path/to/file.db` is the embedded store, its read models in
//! `<file>.readmodels.db` beside it; `postgres://user@host:port/db[?schema=name]` is PostgreSQL,
//! events and read models in one schema (`flexcore` by default). Other parameters go to the
//! driver as written.

use std::sync::Arc;

use anyhow::Context;
use flexcore_app::projection::ReadModelStore;
use flexcore_app::service_url::ServiceUrl;
pub use flexcore_app::service_url::mask_password;
use flexcore_app::store::EventStore;
use flexcore_store_postgres::{PostgresConfig, PostgresReadModels, PostgresStore};
use flexcore_store_sqlite::{SqliteConfig, SqliteReadModels, SqliteStore};

/// Opens the event store a URL names: `sqlite://…` or `postgres://…`.
pub async fn open_store(url: &str) -> anyhow::Result<Arc<dyn EventStore>> {
    if url.starts_with("sqlite:") {
        let store = SqliteStore::open(SqliteConfig::from_url(url)?)
            .await
            .with_context(|| format!("cannot open the SQLite store {url}"))?;
        return Ok(Arc::new(store));
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let store = PostgresStore::connect(postgres_config(url)?)
            .await
            .with_context(|| format!("cannot open the PostgreSQL store {}", mask_password(url)))?;
        return Ok(Arc::new(store));
    }
    anyhow::bail!("unsupported store URL '{}'", mask_password(url))
}

/// The PostgreSQL settings a `postgres://…[?schema=name]` store URL names.
pub fn postgres_config(url: &str) -> anyhow::Result<PostgresConfig> {
    let mut url = ServiceUrl::parse(url)?;
    let schema = url.take("schema");
    let config = PostgresConfig::new(url.driver_url());
    Ok(match schema {
        Some(schema) => config.with_schema(schema),
        None => config,
    })
}

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
    let config = postgres_config(store_url)?;
    let read_models = PostgresReadModels::connect(config).await.with_context(|| {
        format!(
            "cannot open the read models in {}",
            mask_password(store_url)
        )
    })?;
    Ok(Arc::new(read_models))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schema_parameter_is_taken_out_of_postgres_urls() {
        let config = postgres_config("postgres://h/db").unwrap();
        assert_eq!(
            (config.url.as_str(), config.schema.as_str()),
            ("postgres://h/db", "flexcore")
        );
        let config = postgres_config("postgres://h/db?schema=a_1").unwrap();
        assert_eq!(
            (config.url.as_str(), config.schema.as_str()),
            ("postgres://h/db", "a_1")
        );
        let config =
            postgres_config("postgres://h/db?connect_timeout=3&schema=b&sslmode=disable").unwrap();
        assert_eq!(
            (config.url.as_str(), config.schema.as_str()),
            ("postgres://h/db?connect_timeout=3&sslmode=disable", "b")
        );
    }
}
