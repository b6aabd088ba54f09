//! Test fixtures shared by every crate's integration tests.
//!
//! * [`cache_conformance`]: the query-cache backend suite (moka, Redis); each backend runs it
//!   with [`cache_backend_suite!`].
//! * [`conformance`]: the event-store conformance suite; each backend runs it from its `tests/`
//!   with [`conformance_suite!`].
//! * [`projection_conformance`]: the sample's `users` read model end to end (queries,
//!   read-your-writes, restart, blue-green rebuilds, two nodes); each backend runs it with
//!   [`projection_conformance_suite!`].
//! * [`python_check`]: checks run in the machine's `python3` (schema validators).
//! * [`readmodel_conformance`]: the read-model store conformance suite (checkpoints, fenced
//!   commits, portable SQL, dead letters); each backend runs it with
//!   [`readmodel_conformance_suite!`].
//! * [`security`]: a test gate (tokens, API keys, roles) shared by every gateway's tests.
//! * [`tls`]: a throwaway CA issuing server and client certificates for TLS tests, and a gRPC
//!   channel over rustls.
//! * [`ProbedStore`]: a store decorator that counts what stream reads return and can make the
//!   backend look unreachable.
//! * [`validation`]: a JSON-Schema stand-in ([`validation::RequiredStrings`]) and a store
//!   guarded by tight write limits, for the gateways' validation tests.
//! * [`services`]: access to the machine's real PostgreSQL (and later brokers): tests skip with
//!   a clear message when a service is down, unless `FLEXCORE_REQUIRE_SERVICES=1` (CI), where
//!   a missing service fails the test.

pub mod cache_conformance;
pub mod conformance;
mod probed;
pub mod projection_conformance;
pub mod python_check;
pub mod readmodel_conformance;
mod sample;
pub mod security;
pub mod services;
pub mod tls;
pub mod validation;

use std::any::Any;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use flexcore_app::store::EventStore;
pub use probed::{ProbedStore, RACING_EVENT};
pub use sample::{module_buses, sample_buses};

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

/// Waits up to five seconds for the file at `path` to hold at least `bytes`; returns the size it
/// last had (0 when missing) as the error, for the assertion message.
pub async fn file_reaches_len(path: &Path, bytes: u64) -> Result<(), u64> {
    let len = || std::fs::metadata(path).map_or(0, |m| m.len());
    for _ in 0..250 {
        if len() >= bytes {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(len())
}
