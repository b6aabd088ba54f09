//! The PostgreSQL store passes the shared conformance suite, each test in a fresh schema.

mod common;

use std::sync::Arc;

use flexcore_test_support::{StoreFixture, conformance_suite};

async fn postgres_store() -> Option<StoreFixture> {
    let (store, guard) = common::fresh_store().await?;
    Some(StoreFixture::with_guard(Arc::new(store), guard))
}

conformance_suite!(postgres_store);
