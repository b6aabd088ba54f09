//! Crypto-shredding end to end on SQLite.

mod common;

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use common::{Backend, RawAccess};
use flexcore_domain::EventId;
use flexcore_store_sqlite::{SqliteConfig, SqliteReadModels, SqliteStore};

/// Reads and writes the database file directly, beside the store.
struct RawFile(PathBuf);

impl RawFile {
    fn conn(&self) -> rusqlite::Connection {
        let conn = rusqlite::Connection::open(&self.0).unwrap();
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .unwrap();
        conn
    }
}

#[async_trait]
impl RawAccess for RawFile {
    async fn stored_data(&self, event_id: EventId) -> String {
        self.conn()
            .query_row(
                "SELECT data FROM events WHERE event_id = ?1",
                [event_id.0.as_bytes()],
                |row| row.get(0),
            )
            .unwrap()
    }

    async fn overwrite_data(&self, event_id: EventId, data: &str) {
        let changed = self
            .conn()
            .execute(
                "UPDATE events SET data = ?1 WHERE event_id = ?2",
                rusqlite::params![data, event_id.0.as_bytes()],
            )
            .unwrap();
        assert_eq!(changed, 1);
    }

    async fn wrapped_keys(&self) -> Vec<Vec<u8>> {
        let conn = self.conn();
        let mut statement = conn
            .prepare("SELECT wrapped_key FROM subject_keys WHERE wrapped_key IS NOT NULL")
            .unwrap();
        statement
            .query_map([], |row| row.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn personal_fields_are_sealed_exported_and_shredded() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("events.db");
    let store = SqliteStore::open(SqliteConfig::new(&db)).await.unwrap();
    let keys = store.key_table().await.unwrap();
    let read_models = SqliteReadModels::open(SqliteReadModels::path_for(&db))
        .await
        .unwrap();
    common::personal_fields_are_sealed_exported_and_shredded(Backend {
        store: Arc::new(store),
        keys: Arc::new(keys),
        read_models: Arc::new(read_models),
        raw: Box::new(RawFile(db)),
    })
    .await;
}
