//! The aggregate: a consistency boundary that turns commands into events.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::DomainError;
use crate::event::DomainEvent;

/// An event-sourced aggregate.
///
/// Business rules live in [`Aggregate::handle`]: it looks at the current state (rebuilt by
/// [`Aggregate::apply`] from the stream's events) and answers with new events or a typed
/// [`DomainError`]. It never performs I/O; loading, appending and retrying on conflict belong to
/// the application layer's repository. `apply` must not fail: an event is a fact.
///
/// The state is serialisable so that the repository can store snapshots of it.
pub trait Aggregate:
    Default + Clone + Serialize + DeserializeOwned + Send + Sync + 'static
{
    /// The aggregate's type name, which is also its stream category: instance `42` of `user`
    /// lives in stream `user-42`.
    const TYPE: &'static str;

    /// The commands this aggregate handles.
    type Command: Send + Sync;

    /// The events this aggregate emits and is rebuilt from.
    type Event: DomainEvent + Send + Sync;

    /// Evolves the state by one event.
    fn apply(&mut self, event: &Self::Event);

    /// Decides what happens: zero or more events, or a domain error. An empty list means the
    /// command is valid but changes nothing.
    fn handle(&self, command: &Self::Command) -> Result<Vec<Self::Event>, DomainError>;
}
