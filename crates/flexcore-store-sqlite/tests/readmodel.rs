//! The shared read-model conformance suite on SQLite (a fresh read-model file per test).

use std::sync::Arc;

use flexcore_store_sqlite::SqliteReadModels;
use flexcore_test_support::readmodel_conformance::ReadModelFixture;
use flexcore_test_support::readmodel_conformance_suite;

async fn sqlite_read_models() -> Option<ReadModelFixture> {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteReadModels::open(dir.path().join("readmodels.db"))
        .await
        .unwrap();
    Some(ReadModelFixture::with_guard(Arc::new(store), dir))
}

readmodel_conformance_suite!(sqlite_read_models);
