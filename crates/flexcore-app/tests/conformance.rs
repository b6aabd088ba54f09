//! The in-memory store passes the same conformance suite as the durable backends.

use std::sync::Arc;

use flexcore_app::store::InMemoryStore;
use flexcore_test_support::{StoreFixture, conformance_suite};

async fn memory_store() -> Option<StoreFixture> {
    Some(StoreFixture::new(Arc::new(InMemoryStore::new())))
}

conformance_suite!(memory_store);
