//! FlexCore's scale-out event store: PostgreSQL.
//!
//! ```no_run
//! # async fn example() -> Result<(), flexcore_store_postgres::PostgresError> {
//! use flexcore_store_postgres::{PostgresConfig, PostgresStore};
//!
//! let config = PostgresConfig::new("postgres://postgres@127.0.0.1:5432/flexcore");
//! let store = PostgresStore::connect(config).await?; // creates the schema "flexcore" if needed
//! # drop(store);
//! # Ok(())
//! # }
//! ```
//!
//! * **Everything lives in one schema** (default `flexcore`), created and migrated at start by
//!   hand-written SQL recorded in `schema_migrations`; concurrent starts serialise on an advisory
//!   lock. Every connection sets `search_path` to that schema and `synchronous_commit=on`, so an
//!   acknowledged append has reached the WAL on disk.
//! * **Group commit with parallel writers**: appends queue up for `committers` tasks; each takes
//!   what is queued (up to `max_batch_events`) and writes it in one transaction with a handful of
//!   round trips, while the shared planner ([`flexcore_app::store::plan`]) gives every request its
//!   own expectation check and its own result. A failing batch is re-run request by request, so
//!   one bad request never fails its neighbours.
//! * **No skipped events in the global log**: positions come from a sequence, and transactions
//!   commit out of position order. Writers reserve their block of positions under a transaction
//!   advisory lock keyed by the block's start; `read_all` only reads up to a *watermark* below
//!   every block still in flight. Writers never wait for each other's commits. See
//!   `docs/adr/0004-postgres-commit-order.md` and [`PostgresStore`].
//! * **Read models in the same schema** ([`PostgresReadModels`], from
//!   [`PostgresStore::read_models`]): projection tables, their checkpoints and durable
//!   consumers' state; a projection's statements and its checkpoint commit in one fenced
//!   transaction, sent to the server pipelined.
//! * **TLS** from libpq's URL parameters: `sslmode=require|verify-full` (the server's
//!   certificate chains to `sslrootcert`, else the system's roots, and names the host),
//!   `verify-ca` (the chain only), `sslcert` + `sslkey` for a client certificate; without
//!   `sslmode` (or `disable`/`allow`/`prefer`) connections are plain. Unlike libpq, `require`
//!   verifies the server too.
//! * **GDPR key table** ([`PostgresKeyTable`], migration 4): the wrapped per-subject data keys
//!   of crypto-shredding and the tombstones of forgotten subjects.

mod config;
mod error;
mod keys;
mod read;
mod readmodel;
mod schema;
mod store;
mod tls;
mod write;

pub use config::PostgresConfig;
pub use error::PostgresError;
pub use keys::PostgresKeyTable;
pub use readmodel::PostgresReadModels;
pub use schema::drop_schema;
pub use store::PostgresStore;
#[doc(hidden)]
pub use write::HeldAppend;
