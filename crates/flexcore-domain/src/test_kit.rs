//! A given/when/then kit for aggregates: no store, no runtime, just the rules.
//!
//! ```
//! use flexcore_domain::test_kit::AggregateTestKit;
//! use flexcore_domain::{Aggregate, DomainError, DomainEvent, ErrorKind};
//! use serde::{Deserialize, Serialize};
//!
//! /// A light switch that may not be switched on twice.
//! #[derive(Default, Clone, Serialize, Deserialize)]
//! struct Switch { on: bool }
//!
//! #[derive(Debug, PartialEq, Serialize, Deserialize)]
//! #[serde(tag = "type", content = "data")]
//! enum Switched { On }
//!
//! impl DomainEvent for Switched {
//!     fn event_type(&self) -> &'static str { "switch.on" }
//! }
//!
//! impl Aggregate for Switch {
//!     const TYPE: &'static str = "switch";
//!     type Command = ();
//!     type Event = Switched;
//!     fn apply(&mut self, _: &Switched) { self.on = true; }
//!     fn handle(&self, _: &()) -> Result<Vec<Switched>, DomainError> {
//!         if self.on {
//!             return Err(DomainError::AlreadyExists("the switch is on".into()));
//!         }
//!         Ok(vec![Switched::On])
//!     }
//! }
//!
//! AggregateTestKit::<Switch>::given_no_previous_events()
//!     .when(&())
//!     .then_expect_events(vec![Switched::On]);
//! AggregateTestKit::<Switch>::given(vec![Switched::On])
//!     .when(&())
//!     .then_expect_error_kind(ErrorKind::Conflict);
//! ```

use std::fmt::Debug;

use crate::aggregate::Aggregate;
use crate::error::{DomainError, ErrorKind};

/// The state built from the `given` events.
pub struct AggregateTestKit<A: Aggregate> {
    state: A,
}

/// The outcome of the `when` step, to be checked by a `then_*` method.
pub struct Outcome<A: Aggregate> {
    result: Result<Vec<A::Event>, DomainError>,
}

impl<A: Aggregate> AggregateTestKit<A> {
    /// Given these past events…
    pub fn given(events: Vec<A::Event>) -> Self {
        let mut state = A::default();
        for event in &events {
            state.apply(event);
        }
        Self { state }
    }

    /// Given no past events…
    pub fn given_no_previous_events() -> Self {
        Self::given(Vec::new())
    }

    /// …when this command is handled…
    pub fn when(self, command: &A::Command) -> Outcome<A> {
        Outcome {
            result: self.state.handle(command),
        }
    }
}

impl<A: Aggregate> Outcome<A>
where
    A::Event: PartialEq + Debug,
{
    /// …then exactly these events are emitted.
    #[track_caller]
    pub fn then_expect_events(self, expected: Vec<A::Event>) {
        match self.result {
            Ok(events) => assert_eq!(events, expected),
            Err(e) => panic!("expected events {expected:?}, got error: {e}"),
        }
    }

    /// …then the command fails with an error of this kind.
    #[track_caller]
    pub fn then_expect_error_kind(self, kind: ErrorKind) -> DomainError {
        match self.result {
            Ok(events) => panic!("expected a {kind:?} error, got events {events:?}"),
            Err(e) => {
                assert_eq!(e.kind(), kind, "unexpected error: {e}");
                e
            }
        }
    }
}
