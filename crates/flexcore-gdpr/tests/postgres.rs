//! Crypto-shredding end to end on PostgreSQL, in a fresh schema (skipped when the server is
//! down, unless FLEXCORE_REQUIRE_SERVICES=1).

mod common;

use std::sync::Arc;

use async_trait::async_trait;
use common::{Backend, RawAccess};
use flexcore_domain::EventId;
use flexcore_store_postgres::{PostgresConfig, PostgresStore, drop_schema};
use flexcore_test_support::services;

/// Drops the test's schema when dropped.
struct SchemaGuard {
    url: String,
    schema: String,
}

impl Drop for SchemaGuard {
    fn drop(&mut self) {
        let (url, schema) = (self.url.clone(), self.schema.clone());
        let cleanup = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for clean-up")
                .block_on(drop_schema(&url, &schema))
        });
        if let Ok(Err(e)) = cleanup.join() {
            eprintln!("could not drop schema {}: {e}", self.schema);
        }
    }
}

/// Plain SQL in the test's schema, beside the store.
struct RawSchema(tokio_postgres::Client);

impl RawSchema {
    async fn connect(guard: &SchemaGuard) -> Self {
        let mut config: tokio_postgres::Config = guard.url.parse().unwrap();
        config.options(format!("-c search_path={}", guard.schema));
        let (client, connection) = config.connect(tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(connection);
        Self(client)
    }
}

#[async_trait]
impl RawAccess for RawSchema {
    async fn stored_data(&self, event_id: EventId) -> String {
        self.0
            .query_one(
                "SELECT data::text FROM events WHERE event_id = $1",
                &[&event_id.0],
            )
            .await
            .unwrap()
            .get(0)
    }

    async fn overwrite_data(&self, event_id: EventId, data: &str) {
        let changed = self
            .0
            .execute(
                "UPDATE events SET data = $1::text::jsonb WHERE event_id = $2",
                &[&data, &event_id.0],
            )
            .await
            .unwrap();
        assert_eq!(changed, 1);
    }

    async fn wrapped_keys(&self) -> Vec<Vec<u8>> {
        self.0
            .query(
                "SELECT wrapped_key FROM subject_keys WHERE wrapped_key IS NOT NULL",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|row| row.get(0))
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn personal_fields_are_sealed_exported_and_shredded() {
    let Some(url) = services::postgres_url() else {
        return;
    };
    let guard = SchemaGuard {
        url: url.clone(),
        schema: services::unique_name("fc_gdpr"),
    };
    let store = PostgresStore::connect(PostgresConfig::new(url).with_schema(guard.schema.clone()))
        .await
        .unwrap();
    let keys = store.key_table();
    let read_models = store.read_models();
    let raw = RawSchema::connect(&guard).await;
    common::personal_fields_are_sealed_exported_and_shredded(Backend {
        store: Arc::new(store),
        keys: Arc::new(keys),
        read_models: Arc::new(read_models),
        raw: Box::new(raw),
    })
    .await;
    drop(guard);
}
