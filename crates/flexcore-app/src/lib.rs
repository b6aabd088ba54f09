//! FlexCore's application layer.
//!
//! It coordinates the domain through abstract ports and knows no technology:
//!
//! * [`store`]: the event-store ports ([`store::EventAppender`], [`store::EventReader`],
//!   [`store::SnapshotStore`], [`store::StreamAdmin`] ⇒ [`store::EventStore`]), the append
//!   planner every backend shares, and an in-memory store for tests;
//! * [`subscription`]: catch-up subscriptions over the global log;
//! * [`follow`]: the loop background tasks follow the log with (read retries, backoff,
//!   shutdown), and the restart loop of broker sessions;
//! * [`repository`]: load aggregates (snapshot + later events), append with optimistic
//!   concurrency, retry on conflict;
//! * [`command`], [`query`], [`event_bus`]: the buses and their middleware decorators;
//! * [`durable`]: durable consumers (checkpoints, dead letters with per-stream order, consumer
//!   groups);
//! * [`projection`]: read models updated with their checkpoint in one transaction, blue-green
//!   rebuilds, read-your-writes waits;
//! * [`idempotency`]: the `Idempotency-Key` decorator of the command bus;
//! * [`intercept`]: command interceptors, which see a command before its handler (enrich,
//!   check, refuse) whichever module owns its type;
//! * [`RequestLimits`]: the request limits every gateway applies;
//! * [`validation`]: the limits every append is held to and the JSON-Schema port, applied by
//!   a store decorator and a command-bus decorator;
//! * [`service_url`]: the URLs of the services FlexCore connects to, with FlexCore's own
//!   query parameters taken out;
//! * [`security`]: principals and what they may do;
//! * [`gdpr`]: crypto-shredding of declared personal fields (a store decorator over the key
//!   vault port) and the export of everything about a data subject;
//! * [`module`]: the domain-module contract through which every domain (the Rust sample,
//!   Python modules, plugins) plugs into the engine;
//! * [`plugin`]: the port every plugin (compiled in or out of process) implements.

pub mod command;
pub mod durable;
mod error;
pub mod event_bus;
pub mod follow;
pub mod gdpr;
pub mod idempotency;
pub mod intercept;
mod limits;
pub mod module;
pub mod outbox;
pub mod plugin;
pub mod projection;
pub mod query;
pub mod query_cache;
pub mod repository;
pub mod security;
pub mod service_url;
pub mod store;
pub mod subscription;
pub mod validation;

pub use error::{Cause, Error, ErrorChain, ErrorKind, Result, retry_after_secs};
pub use limits::RequestLimits;

/// FNV-1a, 64 bits: a fixed hash, the same on every node, in every run and every release, for
/// what several nodes must place alike (consumer-group members, query-cache tag slots).
pub(crate) fn fnv1a(text: &str) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    text.bytes().fold(OFFSET, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(PRIME)
    })
}
