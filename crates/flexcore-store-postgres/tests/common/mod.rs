//! Fresh schemas for tests, dropped again when the test ends.

#![allow(dead_code)] // each test file uses a different part

use flexcore_store_postgres::{PostgresConfig, PostgresStore, drop_schema};
use flexcore_test_support::services;

/// Drops its schema when dropped (on a thread of its own: `Drop` cannot await).
pub struct SchemaGuard {
    pub url: String,
    pub schema: String,
}

impl Drop for SchemaGuard {
    fn drop(&mut self) {
        let (url, schema) = (self.url.clone(), self.schema.clone());
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for clean-up");
            runtime.block_on(drop_schema(&url, &schema))
        });
        match cleanup.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("could not drop schema {}: {e}", self.schema),
            Err(_) => eprintln!("dropping schema {} panicked", self.schema),
        }
    }
}

/// A config for a fresh schema on the test server, or `None` (skip) when it is down.
pub fn fresh_config() -> Option<(PostgresConfig, SchemaGuard)> {
    let url = services::postgres_url()?;
    let schema = services::unique_name("fc_test");
    let config = PostgresConfig {
        pool_size: 12,
        committers: 4,
        ..PostgresConfig::new(url.clone()).with_schema(schema.clone())
    };
    Some((config, SchemaGuard { url, schema }))
}

/// A connected store in a fresh schema, or `None` (skip) when the server is down.
pub async fn fresh_store() -> Option<(PostgresStore, SchemaGuard)> {
    let (config, guard) = fresh_config()?;
    let store = PostgresStore::connect(config).await.expect("connect");
    Some((store, guard))
}

/// A plain connection into the guard's schema, outside the store (for raw SQL in tests).
pub async fn raw_client(guard: &SchemaGuard) -> tokio_postgres::Client {
    let mut config: tokio_postgres::Config = guard.url.parse().expect("a postgres url");
    config.options(format!("-c search_path={}", guard.schema));
    let (client, connection) = config
        .connect(tokio_postgres::NoTls)
        .await
        .expect("raw connect");
    tokio::spawn(connection);
    client
}
