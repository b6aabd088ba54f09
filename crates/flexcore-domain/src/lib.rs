//! FlexCore's domain kernel: the vocabulary every other crate speaks.
//!
//! This crate is pure: no I/O, no async runtime, no database. It holds
//!
//! * the [`EventEnvelope`] every stored event travels in, and the [`NewEvent`] a writer proposes;
//! * stream identity ([`StreamId`]) and optimistic concurrency ([`ExpectedVersion`]);
//! * the [`Aggregate`] trait, where business rules live;
//! * typed [`DomainError`]s that every adapter maps the same way;
//! * a given/when/then [`test_kit`] for aggregates.

mod aggregate;
mod error;
mod event;
mod stream;
pub mod test_kit;

pub use aggregate::Aggregate;
pub use error::{DomainError, ErrorKind};
pub use event::{
    Actor, DomainEvent, EventEnvelope, EventId, EventMetadata, MAX_EVENT_TYPE_LEN, NewEvent,
    RawJson, json_nesting_depth,
};
pub use stream::{ExpectedVersion, MAX_STREAM_ID_LEN, StreamId};
