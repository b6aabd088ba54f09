//! The projection conformance suite on SQLite: each test in a fresh temp dir, a "node" being
//! the event file and its `<file>.readmodels.db` (one node at a time: SQLite's one-process rule).

use std::sync::Arc;
use std::time::Duration;

use flexcore_app::projection::ReadModelStore;
use flexcore_app::store::EventStore;
use flexcore_store_sqlite::{SqliteConfig, SqliteError, SqliteReadModels, SqliteStore};
use flexcore_test_support::projection_conformance::ProjectionFixture;
use flexcore_test_support::projection_conformance_suite;

async fn sqlite_nodes() -> Option<ProjectionFixture> {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("events.db");
    Some(ProjectionFixture {
        open: Box::new(move || {
            let db = db.clone();
            Box::pin(async move {
                // The previous node's writer thread may still be closing the file.
                let mut attempts = 0;
                let store = loop {
                    match SqliteStore::open(SqliteConfig::new(&db)).await {
                        Ok(store) => break store,
                        Err(SqliteError::InUse(_)) if attempts < 250 => {
                            attempts += 1;
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        Err(e) => panic!("cannot open the store: {e}"),
                    }
                };
                let read_models = SqliteReadModels::open(SqliteReadModels::path_for(&db))
                    .await
                    .unwrap();
                (
                    Arc::new(store) as Arc<dyn EventStore>,
                    Arc::new(read_models) as Arc<dyn ReadModelStore>,
                )
            })
        }),
        several_nodes: false,
        guard: Box::new(dir),
    })
}

projection_conformance_suite!(sqlite_nodes);
