//! Test fixtures shared by every crate's integration tests.
//!
//! * [`conformance`]: the event-store conformance suite; each backend runs it from its `tests/`
//!   with [`conformance_suite!`].
//! * [`readmodel_conformance`]: the read-model store conformance suite (checkpoints, fenced
//!   commits, portable SQL, dead letters); each backend runs it with
//!   [`readmodel_conformance_suite!`].
//! * [`services`]: access to the machine's real PostgreSQL (and later brokers): tests skip with
//!   a clear message when a service is down, unless `FLEXCORE_REQUIRE_SERVICES=1` (CI), where
//!   a missing service fails the test.

pub mod conformance;
pub mod readmodel_conformance;
pub mod services;

use std::any::Any;
use std::sync::Arc;

use flexcore_app::store::EventStore;

/// A store under test and whatever keeps its resources alive (a temp dir, a schema to drop).
pub struct StoreFixture {
    /// The store.
    pub store: Arc<dyn EventStore>,
    /// Dropped after the test; cleans up.
    pub guard: Box<dyn Any + Send>,
}

impl StoreFixture {
    /// A fixture with nothing to clean up.
    pub fn new(store: Arc<dyn EventStore>) -> Self {
        Self {
            store,
            guard: Box::new(()),
        }
    }

    /// A fixture with a cleanup guard.
    pub fn with_guard(store: Arc<dyn EventStore>, guard: impl Any + Send) -> Self {
        Self {
            store,
            guard: Box::new(guard),
        }
    }
}

/// The sample domain's buses over `store`, wired as the server wires them (retry on conflict,
/// idempotency keys).
pub fn sample_buses(
    store: Arc<dyn EventStore>,
) -> (
    Arc<dyn flexcore_app::command::CommandBus>,
    Arc<dyn flexcore_app::query::QueryBus>,
) {
    use flexcore_app::command::{CommandBusExt, CommandRouter};
    use flexcore_app::query::QueryRouter;
    use flexcore_app::repository::{Repository, RetryPolicy};

    let mut commands = CommandRouter::new();
    let mut queries = QueryRouter::new();
    flexcore_app::users::register(&mut commands, &mut queries, Repository::new(store))
        .expect("the sample domain registers once");
    (
        Arc::new(
            commands
                .with_retry(RetryPolicy::default())
                .with_idempotency(std::time::Duration::from_secs(24 * 3600), 100_000),
        ),
        Arc::new(queries),
    )
}
