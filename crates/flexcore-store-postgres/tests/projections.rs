//! The projection conformance suite on PostgreSQL: each test in a fresh schema, every node a
//! new connection pool on it (two at once are two nodes).

mod common;

use std::sync::Arc;

use flexcore_app::projection::ReadModelStore;
use flexcore_app::store::EventStore;
use flexcore_store_postgres::PostgresStore;
use flexcore_test_support::projection_conformance::ProjectionFixture;
use flexcore_test_support::projection_conformance_suite;

async fn postgres_nodes() -> Option<ProjectionFixture> {
    let (config, guard) = common::fresh_config()?;
    Some(ProjectionFixture {
        open: Box::new(move || {
            let config = config.clone();
            Box::pin(async move {
                let store = PostgresStore::connect(config).await.unwrap();
                let read_models = store.read_models();
                (
                    Arc::new(store) as Arc<dyn EventStore>,
                    Arc::new(read_models) as Arc<dyn ReadModelStore>,
                )
            })
        }),
        several_nodes: true,
        guard: Box::new(guard),
    })
}

projection_conformance_suite!(postgres_nodes);
