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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_model_commits_are_checkpointed_into_the_database_file_in_the_background() {
    use flexcore_app::projection::{ReadModelStore, SqlStatement, SqlValue};

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("readmodels.db");
    let store = SqliteReadModels::open(&path).await.unwrap();
    store
        .create_tables(vec![
            "CREATE TABLE blobs (id INTEGER PRIMARY KEY, body TEXT)".into(),
        ])
        .await
        .unwrap();
    let before = std::fs::metadata(&path).unwrap().len();
    // About 400 KB in 100 commits: far below the 1,000 WAL pages of SQLite's own checkpoint.
    let body = "y".repeat(4_000);
    for n in 0..100u64 {
        let insert = SqlStatement {
            sql: "INSERT INTO blobs (id, body) VALUES ($1, $2)".into(),
            params: vec![SqlValue::Integer(n as i64), SqlValue::Text(body.clone())],
        };
        let from = n.checked_sub(1);
        store.commit("blobs", from, n, vec![insert]).await.unwrap();
    }
    if let Err(len) = flexcore_test_support::file_reaches_len(&path, before + 300_000).await {
        panic!("the main file stayed at {len} bytes (was {before})");
    }
    let rows = store
        .query("SELECT count(*) FROM blobs".into(), vec![])
        .await
        .unwrap();
    assert_eq!(rows, vec![vec![SqlValue::Integer(100)]]);
}
