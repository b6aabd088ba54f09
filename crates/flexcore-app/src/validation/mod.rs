//! Input validation that every write goes through: limits on appends, and JSON Schemas of
//! command payloads and event data.
//!
//! * [`WriteLimits`]: how many events one append may carry, how large one event may be, and
//!   which stream ids are accepted;
//! * [`PayloadValidator`]: the port a schema technology implements (the composition root
//!   compiles JSON Schema files into it; this crate knows no schema language);
//!   [`PayloadSchemas`] maps a command or event type to its validator;
//! * [`ValidatingStore`]: the event-store decorator that applies the limits and the event
//!   schemas to every append, whoever writes — raw appends over HTTP and gRPC, command handlers
//!   in Rust and in Python, the message gateway — so they all accept the same writes;
//! * [`SchemaChecked`]: the command-bus decorator that checks a command's payload before its
//!   handler runs (attached with [`crate::command::CommandBusExt::with_schemas`]).
//!
//! Every refusal is a validation error ([`crate::ErrorKind::Validation`]: HTTP 422, gRPC
//! `INVALID_ARGUMENT`) and writes nothing: an atomic append with one bad event writes none.

mod command;
mod store;

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use flexcore_domain::{MAX_STREAM_ID_LEN, NewEvent, StreamId};
use serde::Serialize;
use serde_json::Value;

pub use command::SchemaChecked;
pub use store::ValidatingStore;

use crate::store::StreamWrite;
use crate::{Error, Result};

/// The most violations one refusal reports; a payload that breaks more rules gets the first
/// ones (enough to fix it, and an answer of bounded size).
pub const MAX_REPORTED_VIOLATIONS: usize = 10;

/// The limits every append is checked against (`[limits]` in `flexcore.toml`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteLimits {
    /// The most events one append may carry, over all its streams.
    pub max_events_per_append: usize,
    /// The largest event accepted, in bytes: its data plus its metadata, as JSON text.
    pub max_event_bytes: usize,
    /// The longest stream id accepted, in bytes; never above the engine's own
    /// [`MAX_STREAM_ID_LEN`].
    pub max_stream_id_len: usize,
    /// Which characters a stream id may contain.
    pub stream_id_charset: StreamIdCharset,
}

impl WriteLimits {
    /// The default of [`WriteLimits::max_events_per_append`].
    pub const DEFAULT_MAX_EVENTS_PER_APPEND: usize = 1000;
    /// The default of [`WriteLimits::max_event_bytes`]: 1 MiB.
    pub const DEFAULT_MAX_EVENT_BYTES: usize = 1024 * 1024;

    /// Checks a stream id against the length limit and the charset.
    pub fn check_stream_id(&self, stream_id: &StreamId) -> Result<()> {
        let id = stream_id.as_str();
        if id.len() > self.max_stream_id_len {
            return Err(Error::validation(format!(
                "stream id is {} bytes long; the limit (max_stream_id_len) is {}",
                id.len(),
                self.max_stream_id_len
            )));
        }
        if let Some((at, refused)) = id
            .char_indices()
            .find(|(_, c)| !self.stream_id_charset.allows(*c))
        {
            return Err(Error::validation(format!(
                "stream id {id:?} contains {refused:?} (U+{:04X}) at byte {at}, which the stream id \
                 charset '{}' ({}) does not allow",
                u32::from(refused),
                self.stream_id_charset.name(),
                self.stream_id_charset.describe(),
            )));
        }
        Ok(())
    }

    /// Checks the size of one event: its data plus its metadata, as stored.
    pub fn check_event_size(&self, event: &NewEvent, describe: impl Fn() -> String) -> Result<()> {
        let bytes = event_bytes(event);
        if bytes > self.max_event_bytes {
            return Err(Error::validation(format!(
                "{} is {bytes} bytes (data and metadata); the limit (max_event_bytes) is {}",
                describe(),
                self.max_event_bytes
            )));
        }
        Ok(())
    }

    /// Checks how many events one append carries, over all its streams.
    pub fn check_event_count(&self, writes: &[StreamWrite]) -> Result<()> {
        let events: usize = writes.iter().map(|w| w.events.len()).sum();
        if events > self.max_events_per_append {
            return Err(Error::validation(format!(
                "the append carries {events} events; the limit (max_events_per_append) is {}",
                self.max_events_per_append
            )));
        }
        Ok(())
    }
}

impl Default for WriteLimits {
    /// 1000 events per append, 1 MiB per event, stream ids of at most [`MAX_STREAM_ID_LEN`]
    /// bytes of the [`StreamIdCharset::Printable`] charset.
    fn default() -> Self {
        Self {
            max_events_per_append: Self::DEFAULT_MAX_EVENTS_PER_APPEND,
            max_event_bytes: Self::DEFAULT_MAX_EVENT_BYTES,
            max_stream_id_len: MAX_STREAM_ID_LEN,
            stream_id_charset: StreamIdCharset::default(),
        }
    }
}

/// The size of an event as a store keeps it: its data's JSON text plus its metadata's.
fn event_bytes(event: &NewEvent) -> usize {
    /// Counts what serde writes, without keeping it.
    struct Counter(usize);
    impl std::io::Write for Counter {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0 += bytes.len();
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let metadata = if event.metadata.is_empty() {
        "{}".len()
    } else {
        let mut counter = Counter(0);
        // Metadata fields are strings and JSON values: serialising cannot fail.
        let _ = serde_json::to_writer(&mut counter, &event.metadata);
        counter.0
    };
    event.data.get().len() + metadata
}

/// Which characters a stream id may contain. Whatever the charset, a stream id is never empty
/// and never holds a control character (the domain's own rule, [`StreamId::new`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StreamIdCharset {
    /// Any Unicode character except control characters and whitespace (the default).
    #[default]
    Printable,
    /// Any character except control characters: the domain's own rule, which let whitespace
    /// in (for deployments with such streams from before the charset existed).
    Any,
    /// Visible ASCII: `!` to `~` (no space, no non-ASCII letter).
    Ascii,
    /// ASCII letters and digits and `-` `_` `.` `:` `@` `+` (safe in URLs and file names
    /// without escaping).
    Identifier,
}

impl StreamIdCharset {
    /// Every charset, by its name in the configuration.
    pub const ALL: [Self; 4] = [Self::Printable, Self::Any, Self::Ascii, Self::Identifier];

    /// The charset's name in the configuration (`stream_id_charset`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Printable => "printable",
            Self::Any => "any",
            Self::Ascii => "ascii",
            Self::Identifier => "identifier",
        }
    }

    /// The charset named `name` in the configuration.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|charset| charset.name() == name)
    }

    /// What the charset accepts, in words.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Printable => "any character except control characters and whitespace",
            Self::Any => "any character except control characters",
            Self::Ascii => "visible ASCII characters, '!' to '~'",
            Self::Identifier => "ASCII letters, digits and - _ . : @ +",
        }
    }

    /// Whether a stream id may contain `c`.
    pub fn allows(self, c: char) -> bool {
        match self {
            Self::Printable => !c.is_control() && !c.is_whitespace(),
            Self::Any => !c.is_control(),
            Self::Ascii => c.is_ascii_graphic(),
            Self::Identifier => c.is_ascii_alphanumeric() || "-_.:@+".contains(c),
        }
    }
}

/// One rule a payload breaks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    /// Where in the payload, as a JSON pointer (`/email`, `/items/0/sku`; `""` is the whole
    /// payload).
    pub path: String,
    /// What is wrong there, without the offending value (payloads may hold personal data).
    pub message: String,
}

/// A command payload or an event's data that does not match the schema of its type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{subject} does not match its schema: {}", Summary(.violations))]
pub struct SchemaViolation {
    /// What was checked, e.g. `command 'create_user'` or `event 0 ('order.placed') of stream
    /// 'order-1'`.
    pub subject: String,
    /// The rules broken (at least one, at most [`MAX_REPORTED_VIOLATIONS`]).
    pub violations: Vec<Violation>,
}

/// `path: message; path: message…`, the root shown as `(root)`.
struct Summary<'a>(&'a [Violation]);

impl fmt::Display for Summary<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, violation) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            let path = if violation.path.is_empty() {
                "(root)"
            } else {
                &violation.path
            };
            write!(f, "{path}: {}", violation.message)?;
        }
        Ok(())
    }
}

/// Checks JSON payloads against a schema: the port a schema technology implements.
pub trait PayloadValidator: Send + Sync {
    /// The rules `payload` breaks, at most [`MAX_REPORTED_VIOLATIONS`]; none when it is valid.
    fn validate(&self, payload: &Value) -> Vec<Violation>;
}

/// The validator of each command type or event type that has a schema.
#[derive(Clone, Default)]
pub struct PayloadSchemas {
    by_type: HashMap<String, Arc<dyn PayloadValidator>>,
}

impl PayloadSchemas {
    /// No schemas: every payload passes.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the validator of `message_type` (a command or an event type), replacing any.
    pub fn insert(
        &mut self,
        message_type: impl Into<String>,
        validator: Arc<dyn PayloadValidator>,
    ) {
        self.by_type.insert(message_type.into(), validator);
    }

    /// Whether no type has a schema.
    pub fn is_empty(&self) -> bool {
        self.by_type.is_empty()
    }

    /// Whether `message_type` has a schema.
    pub fn contains(&self, message_type: &str) -> bool {
        self.by_type.contains_key(message_type)
    }

    /// The types that have a schema, sorted.
    pub fn types(&self) -> Vec<&str> {
        let mut types: Vec<&str> = self.by_type.keys().map(String::as_str).collect();
        types.sort_unstable();
        types
    }

    /// Checks `payload` against the schema of `message_type`, if it has one; `subject` names
    /// what was checked in the error.
    pub fn check(
        &self,
        message_type: &str,
        payload: &Value,
        subject: impl FnOnce() -> String,
    ) -> Result<()> {
        let Some(validator) = self.by_type.get(message_type) else {
            return Ok(());
        };
        let mut violations = validator.validate(payload);
        if violations.is_empty() {
            return Ok(());
        }
        violations.truncate(MAX_REPORTED_VIOLATIONS);
        Err(Error::SchemaViolation(SchemaViolation {
            subject: subject(),
            violations,
        }))
    }
}

impl fmt::Debug for PayloadSchemas {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("PayloadSchemas")
            .field(&self.types())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use flexcore_domain::{EventMetadata, ExpectedVersion, RawJson};

    use super::*;

    fn event(data: &str) -> NewEvent {
        NewEvent::new("thing.happened", RawJson::from_string(data.into()).unwrap()).unwrap()
    }

    #[test]
    fn stream_ids_follow_the_length_limit_and_the_charset() {
        let limits = WriteLimits {
            max_stream_id_len: 8,
            ..WriteLimits::default()
        };
        let id = |text: &str| StreamId::new(text).unwrap();
        assert!(limits.check_stream_id(&id("order-1")).is_ok());
        let long = limits.check_stream_id(&id("order-123")).unwrap_err();
        assert_eq!(
            long.client_message(),
            "stream id is 9 bytes long; the limit (max_stream_id_len) is 8"
        );
        let spaced = limits.check_stream_id(&id("a b")).unwrap_err();
        assert!(
            spaced.client_message().contains("' ' (U+0020) at byte 1")
                && spaced.client_message().contains("'printable'"),
            "{spaced}"
        );
        assert!(limits.check_stream_id(&id("ordre-é")).is_ok());
        assert!(limits.check_stream_id(&id("a\u{00A0}b")).is_err());
        let any = WriteLimits {
            stream_id_charset: StreamIdCharset::Any,
            ..WriteLimits::default()
        };
        assert!(
            any.check_stream_id(&id("x'); DROP TABLE events; --"))
                .is_ok()
        );

        let ascii = WriteLimits {
            stream_id_charset: StreamIdCharset::Ascii,
            ..WriteLimits::default()
        };
        assert!(ascii.check_stream_id(&id("email-a+b@x.org")).is_ok());
        assert!(ascii.check_stream_id(&id("ordre-é")).is_err());
        let identifier = WriteLimits {
            stream_id_charset: StreamIdCharset::Identifier,
            ..WriteLimits::default()
        };
        assert!(identifier.check_stream_id(&id("user-1:a_b.c@d+e")).is_ok());
        assert!(identifier.check_stream_id(&id("user/1")).is_err());
    }

    #[test]
    fn charsets_are_named_in_the_configuration() {
        for charset in StreamIdCharset::ALL {
            assert_eq!(StreamIdCharset::from_name(charset.name()), Some(charset));
        }
        assert_eq!(StreamIdCharset::from_name("emoji"), None);
        assert_eq!(StreamIdCharset::default(), StreamIdCharset::Printable);
    }

    #[test]
    fn an_event_counts_its_data_and_its_metadata() {
        let limits = WriteLimits {
            max_event_bytes: 20,
            ..WriteLimits::default()
        };
        // 16 bytes of data + `{}`.
        let small = event(r#"{"n": "1234567"}"#);
        assert_eq!(event_bytes(&small), 18);
        assert!(limits.check_event_size(&small, || "it".into()).is_ok());
        let tagged = small.with_metadata(EventMetadata {
            tenant: Some("t".into()),
            ..EventMetadata::default()
        });
        assert_eq!(event_bytes(&tagged), 16 + r#"{"tenant":"t"}"#.len());
        let error = limits
            .check_event_size(&tagged, || "event 0".into())
            .unwrap_err();
        assert_eq!(
            error.client_message(),
            "event 0 is 30 bytes (data and metadata); the limit (max_event_bytes) is 20"
        );
    }

    #[test]
    fn the_event_count_spans_every_stream_of_an_append() {
        let limits = WriteLimits {
            max_events_per_append: 2,
            ..WriteLimits::default()
        };
        let write = |n: usize| {
            StreamWrite::new(
                StreamId::new(format!("s-{n}")).unwrap(),
                ExpectedVersion::Any,
                (0..n).map(|_| event("{}")).collect(),
            )
        };
        assert!(limits.check_event_count(&[write(1), write(1)]).is_ok());
        let error = limits.check_event_count(&[write(1), write(2)]).unwrap_err();
        assert_eq!(
            error.client_message(),
            "the append carries 3 events; the limit (max_events_per_append) is 2"
        );
    }

    /// Requires a `name` key.
    struct NeedsName;

    impl PayloadValidator for NeedsName {
        fn validate(&self, payload: &Value) -> Vec<Violation> {
            match payload.get("name") {
                Some(_) => Vec::new(),
                None => (0..20)
                    .map(|i| Violation {
                        path: if i == 0 {
                            String::new()
                        } else {
                            format!("/{i}")
                        },
                        message: "\"name\" is a required property".into(),
                    })
                    .collect(),
            }
        }
    }

    #[test]
    fn schemas_apply_to_their_type_only_and_report_a_bounded_list() {
        let mut schemas = PayloadSchemas::new();
        schemas.insert("named", Arc::new(NeedsName));
        assert!(schemas.contains("named") && !schemas.is_empty());
        assert_eq!(schemas.types(), ["named"]);
        let payload = serde_json::json!({"other": 1});
        assert!(schemas.check("unnamed", &payload, || "x".into()).is_ok());
        assert!(
            schemas
                .check("named", &serde_json::json!({"name": "a"}), || "x".into())
                .is_ok()
        );
        let error = schemas
            .check("named", &payload, || "command 'named'".into())
            .unwrap_err();
        assert_eq!(error.kind(), crate::ErrorKind::Validation);
        assert_eq!(error.violations().len(), MAX_REPORTED_VIOLATIONS);
        assert!(
            error.client_message().starts_with(
                "command 'named' does not match its schema: (root): \"name\" is a required \
                 property; /1: "
            ),
            "{error}"
        );
    }
}
