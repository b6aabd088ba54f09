//! Read models, projection checkpoints and durable consumers' state in PostgreSQL.
//!
//! Everything lives in the store's schema: the `checkpoints`, `dead_letters` and `projections`
//! tables come from the store's migrations, and the projections' own tables (`rm_*`) are
//! created by [`ReadModelStore::create_tables`](flexcore_app::projection::ReadModelStore::create_tables) through the pool's connections, whose
//! `search_path` is that schema.
//!
//! A batch commit is one transaction: the checkpoint fence first (a conditional `UPDATE`, or an
//! `INSERT … ON CONFLICT DO NOTHING` for the first commit — a racing runner blocks on the
//! winner's row and then finds it moved), then the projection's statements, then `COMMIT`. All
//! of them are sent before the first answer is read, so a batch of a thousand statements costs
//! a few round trips, not a thousand. Statements are prepared once per connection and cached.
//!
//! Portable values ([`SqlValue`](flexcore_app::projection::SqlValue)) are converted by the type PostgreSQL infers for each `$n`
//! parameter, and back by each column's type; see [`SqlParam`](codec::SqlParam)
//! and [`SqlCell`](codec::SqlCell).
//!
//! The parts: [`store`] (the store and its SQL), [`pipeline`] (requests sent before their
//! answers are read) and [`codec`] (portable values to and from PostgreSQL's binary forms).

mod codec;
mod pipeline;
mod store;

pub use store::PostgresReadModels;
