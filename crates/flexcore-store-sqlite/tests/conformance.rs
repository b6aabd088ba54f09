//! The SQLite store passes the shared conformance suite.

use std::sync::Arc;

use flexcore_store_sqlite::{SqliteConfig, SqliteStore};
use flexcore_test_support::{StoreFixture, conformance_suite};

async fn sqlite_store() -> Option<StoreFixture> {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(SqliteConfig::new(dir.path().join("events.db")))
        .await
        .unwrap();
    Some(StoreFixture::with_guard(Arc::new(store), dir))
}

conformance_suite!(sqlite_store);
