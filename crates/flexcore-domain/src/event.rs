//! Events: what a writer proposes ([`NewEvent`]) and what the store hands back ([`EventEnvelope`]).

use std::fmt;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::error::DomainError;
use crate::stream::StreamId;

/// The longest event type accepted, in bytes.
pub const MAX_EVENT_TYPE_LEN: usize = 256;

/// The unique id of an event (a UUIDv7 when FlexCore makes it). Re-sending an event with the
/// same id is how clients retry safely: the store answers with the original result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EventId(pub Uuid);

impl EventId {
    /// A new time-ordered id.
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }
}

impl Default for EventId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The deepest nesting of arrays and objects in a JSON text, counted without parsing it, so that
/// gateways can refuse a hostile document before a parser recurses into it.
pub fn json_nesting_depth(json: &[u8]) -> usize {
    let (mut depth, mut deepest, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for &byte in json {
        if in_string {
            match (escaped, byte) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// A JSON document kept as its original text: events are stored and served without being
/// re-parsed into a tree on the hot paths.
#[derive(Clone)]
pub struct RawJson(Box<str>);

/// The name under which `serde_json` recognises a value to embed verbatim (what its own
/// `RawValue` serialises as). `raw_json_serialises_verbatim` below fails if that ever changes.
const SERDE_JSON_RAW_TOKEN: &str = "$serde_json::private::RawValue";

impl RawJson {
    /// Parses (and so validates) JSON text.
    pub fn from_string(text: String) -> Result<Self, DomainError> {
        RawValue::from_string(text)
            .map(Self::from)
            .map_err(|e| DomainError::validation(format!("invalid JSON: {e}")))
    }

    /// Wraps text that this process validated before storing it, without parsing it again.
    ///
    /// Only for stores handing back what they were given through the checked constructors
    /// (reading the log must not pay for a second parse); invalid text here would be served
    /// as invalid JSON.
    pub fn from_stored(text: String) -> Self {
        Self(text.into_boxed_str())
    }

    /// Serialises a value.
    pub fn from_value(value: &Value) -> Self {
        // Serialising a `Value` cannot fail: its keys are strings.
        Self::from(serde_json::value::to_raw_value(value).expect("a JSON value serialises"))
    }

    /// Serialises any serde value.
    pub fn to_raw<T: Serialize + ?Sized>(value: &T) -> Result<Self, DomainError> {
        serde_json::value::to_raw_value(value)
            .map(Self::from)
            .map_err(|e| DomainError::validation(format!("cannot encode as JSON: {e}")))
    }

    /// The empty object `{}`.
    pub fn empty_object() -> Self {
        Self("{}".into())
    }

    /// The JSON text.
    pub fn get(&self) -> &str {
        &self.0
    }

    /// Whether the document is a JSON object.
    pub fn is_object(&self) -> bool {
        self.get().trim_start().starts_with('{')
    }

    /// Parses the document into a typed value.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(self.get())
    }
}

impl From<Box<RawValue>> for RawJson {
    fn from(raw: Box<RawValue>) -> Self {
        Self(raw.into())
    }
}

impl Serialize for RawJson {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut raw = serializer.serialize_struct(SERDE_JSON_RAW_TOKEN, 1)?;
        raw.serialize_field(SERDE_JSON_RAW_TOKEN, self.get())?;
        raw.end()
    }
}

impl<'de> Deserialize<'de> for RawJson {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Box::<RawValue>::deserialize(deserializer).map(Self::from)
    }
}

impl Default for RawJson {
    /// The empty object `{}`.
    fn default() -> Self {
        Self::empty_object()
    }
}

impl fmt::Debug for RawJson {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.get())
    }
}

impl PartialEq for RawJson {
    fn eq(&self, other: &Self) -> bool {
        self.get() == other.get()
    }
}

impl Eq for RawJson {}

/// What travels beside an event's data: who caused it, why, and the trace it belongs to.
///
/// Deserialised by hand (see below) rather than with `#[serde(flatten)]`, which buffers every
/// field and costs more than the rest of an envelope on the read path.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct EventMetadata {
    /// Groups every message caused by one original request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    /// The id of the message (command or event) that caused this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<String>,
    /// The principal on whose behalf the event was written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<Actor>,
    /// The tenant the event belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// W3C trace context (`traceparent` header value).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// W3C trace state (`tracestate` header value).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracestate: Option<String>,
    /// Any other keys the writer supplied, kept as they came.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// The principal on whose behalf an event was written (`metadata.actor`): the event log is
/// the audit trail of who changed what.
///
/// Stored as `{"sub": …, "roles": […]}`; a bare string (written before principals had roles)
/// reads as a subject with no roles.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize)]
pub struct Actor {
    /// The principal's subject (a token's `sub`, an API key's name).
    pub sub: String,
    /// The principal's roles when it wrote.
    pub roles: Vec<String>,
}

impl<'de> Deserialize<'de> for Actor {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Full {
            sub: String,
            #[serde(default)]
            roles: Vec<String>,
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            Subject(String),
            Full(Full),
        }
        match Either::deserialize(deserializer).map_err(|_| {
            serde::de::Error::custom(
                "actor must be {\"sub\": string, \"roles\": [string]} or a subject string",
            )
        })? {
            Either::Subject(sub) => Ok(Self {
                sub,
                roles: Vec::new(),
            }),
            Either::Full(Full { sub, roles }) => Ok(Self { sub, roles }),
        }
    }
}

impl Actor {
    /// An actor with `sub` and no roles.
    pub fn subject(sub: impl Into<String>) -> Self {
        Self {
            sub: sub.into(),
            roles: Vec::new(),
        }
    }
}

/// A metadata key, read without allocating unless it is not one of the known fields.
enum MetadataKey {
    CorrelationId,
    CausationId,
    Actor,
    Tenant,
    Traceparent,
    Tracestate,
    Other(String),
}

impl<'de> Deserialize<'de> for MetadataKey {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl serde::de::Visitor<'_> for KeyVisitor {
            type Value = MetadataKey;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a metadata key")
            }

            fn visit_str<E: serde::de::Error>(self, key: &str) -> Result<MetadataKey, E> {
                Ok(match key {
                    "correlation_id" => MetadataKey::CorrelationId,
                    "causation_id" => MetadataKey::CausationId,
                    "actor" => MetadataKey::Actor,
                    "tenant" => MetadataKey::Tenant,
                    "traceparent" => MetadataKey::Traceparent,
                    "tracestate" => MetadataKey::Tracestate,
                    other => MetadataKey::Other(other.to_owned()),
                })
            }
        }
        deserializer.deserialize_identifier(KeyVisitor)
    }
}

impl<'de> Deserialize<'de> for EventMetadata {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = EventMetadata;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object of metadata")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                let mut metadata = EventMetadata::default();
                while let Some(key) = map.next_key::<MetadataKey>()? {
                    let slot = match key {
                        MetadataKey::Actor => {
                            metadata.actor = map.next_value()?;
                            continue;
                        }
                        MetadataKey::CorrelationId => &mut metadata.correlation_id,
                        MetadataKey::CausationId => &mut metadata.causation_id,
                        MetadataKey::Tenant => &mut metadata.tenant,
                        MetadataKey::Traceparent => &mut metadata.traceparent,
                        MetadataKey::Tracestate => &mut metadata.tracestate,
                        MetadataKey::Other(key) => {
                            metadata.extra.insert(key, map.next_value()?);
                            continue;
                        }
                    };
                    *slot = map.next_value()?;
                }
                Ok(metadata)
            }
        }
        deserializer.deserialize_map(Visitor)
    }
}

impl EventMetadata {
    /// Whether no field is set (stored as `{}`).
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// The metadata as the JSON text stores keep (`{}` when empty).
    pub fn to_raw(&self) -> RawJson {
        if self.is_empty() {
            return RawJson::empty_object();
        }
        // Every field is a string or a JSON value: serialising cannot fail.
        RawJson::to_raw(self).expect("metadata serialises")
    }
}

/// An event proposed for appending; the store gives it a stream version and a global position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    /// The event's id; re-sending the same id makes an append idempotent.
    pub event_id: EventId,
    /// What happened, e.g. `user.created`.
    pub event_type: String,
    /// The version of the data's schema for this event type.
    pub schema_version: u32,
    /// The payload, always a JSON object.
    pub data: RawJson,
    /// Causation, correlation, actor, trace context.
    pub metadata: EventMetadata,
}

impl NewEvent {
    /// Validates a new event with a fresh id, schema version 1 and empty metadata.
    pub fn new(event_type: impl Into<String>, data: RawJson) -> Result<Self, DomainError> {
        let event_type = event_type.into();
        validate_event_type(&event_type)?;
        if !data.is_object() {
            return Err(DomainError::validation("event data must be a JSON object"));
        }
        Ok(Self {
            event_id: EventId::new(),
            event_type,
            schema_version: 1,
            data,
            metadata: EventMetadata::default(),
        })
    }

    /// Replaces the id (clients that retry send their own).
    pub fn with_id(mut self, event_id: EventId) -> Self {
        self.event_id = event_id;
        self
    }

    /// Replaces the metadata.
    pub fn with_metadata(mut self, metadata: EventMetadata) -> Self {
        self.metadata = metadata;
        self
    }
}

fn validate_event_type(event_type: &str) -> Result<(), DomainError> {
    if event_type.trim().is_empty() {
        return Err(DomainError::validation("event_type must not be empty"));
    }
    if event_type.len() > MAX_EVENT_TYPE_LEN {
        return Err(DomainError::validation(format!(
            "event_type is longer than {MAX_EVENT_TYPE_LEN} bytes"
        )));
    }
    if event_type
        .chars()
        .any(|c| c.is_control() || c.is_whitespace())
    {
        return Err(DomainError::validation(
            "event_type must not contain whitespace or control characters",
        ));
    }
    Ok(())
}

/// A stored event with everything the store knows about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventEnvelope {
    /// The event's unique id.
    pub event_id: EventId,
    /// The stream the event belongs to.
    pub stream_id: StreamId,
    /// Its place in the stream; the first event of a stream has version 0.
    pub stream_version: u64,
    /// Its place in the whole store; strictly increasing in commit order, never reused.
    pub global_position: u64,
    /// What happened, e.g. `user.created`.
    pub event_type: String,
    /// The version of the data's schema.
    pub schema_version: u32,
    /// The payload (a JSON object).
    pub data: RawJson,
    /// Causation, correlation, actor, trace context, as stored; typed access with
    /// [`EventEnvelope::decode_metadata`]. Kept as text like `data`, so that reading the log
    /// does not parse what most readers never look at.
    pub metadata: RawJson,
    /// When the store committed it (UTC).
    #[serde(with = "time::serde::rfc3339")]
    pub recorded_at: OffsetDateTime,
}

impl EventEnvelope {
    /// The metadata, typed.
    pub fn decode_metadata(&self) -> Result<EventMetadata, DomainError> {
        self.metadata
            .decode()
            .map_err(|e| DomainError::validation(format!("stored metadata is not valid: {e}")))
    }
}

/// A typed domain event.
///
/// Implementors derive serde with `#[serde(tag = "type", content = "data")]` and rename each
/// variant to its event type (`#[serde(rename = "user.created")]`); the default methods then
/// turn the enum into [`NewEvent`]s and stored envelopes back into the enum.
pub trait DomainEvent: Serialize + DeserializeOwned {
    /// The wire name of this event, e.g. `user.created`.
    fn event_type(&self) -> &'static str;

    /// Encodes the event for appending.
    fn to_new_event(&self) -> Result<NewEvent, DomainError> {
        let mut tagged = serde_json::to_value(self)
            .map_err(|e| DomainError::validation(format!("cannot encode event: {e}")))?;
        let data = tagged
            .get_mut("data")
            .map(Value::take)
            .unwrap_or_else(|| Value::Object(Map::new()));
        NewEvent::new(self.event_type(), RawJson::from_value(&data))
    }

    /// Decodes a stored event of this family.
    fn from_envelope(envelope: &EventEnvelope) -> Result<Self, DomainError> {
        let data: Value = envelope
            .data
            .decode()
            .map_err(|e| DomainError::validation(format!("stored event is not valid JSON: {e}")))?;
        let tagged = serde_json::json!({ "type": envelope.event_type, "data": data });
        serde_json::from_value(tagged).map_err(|e| {
            DomainError::validation(format!(
                "cannot decode event {} of type '{}': {e}",
                envelope.event_id, envelope.event_type
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_events_are_validated() {
        let obj = RawJson::from_string("{\"a\":1}".into()).unwrap();
        assert!(NewEvent::new("a.b", obj.clone()).is_ok());
        assert!(NewEvent::new("", obj.clone()).is_err());
        assert!(NewEvent::new("   ", obj.clone()).is_err());
        assert!(NewEvent::new("a b", obj.clone()).is_err());
        assert!(NewEvent::new("x".repeat(MAX_EVENT_TYPE_LEN + 1), obj).is_err());
        for not_object in ["[]", "1", "\"s\"", "null"] {
            let raw = RawJson::from_string(not_object.into()).unwrap();
            assert!(NewEvent::new("t", raw).is_err(), "{not_object}");
        }
        assert!(RawJson::from_string("{".into()).is_err());
    }

    #[test]
    fn depth_ignores_brackets_in_strings() {
        assert_eq!(json_nesting_depth(br#"{"a":[1,{"b":"[[[{{{"}]}"#), 3);
        assert_eq!(json_nesting_depth(br#""\"[""#), 0);
        assert_eq!(json_nesting_depth(&[b'['; 100]), 100);
    }

    #[test]
    fn raw_json_serialises_verbatim() {
        let raw = RawJson::from_string(r#"{"b": [1, 2],  "a":"x"}"#.into()).unwrap();
        let wrapped = serde_json::json!({ "data": serde_json::to_value(&raw).unwrap() });
        assert_eq!(wrapped["data"]["b"][1], 2);
        let text = serde_json::to_string(&Wrapper { data: raw.clone() }).unwrap();
        assert_eq!(
            text, r#"{"data":{"b": [1, 2],  "a":"x"}}"#,
            "embedded as is"
        );
        let back: Wrapper = serde_json::from_str(&text).unwrap();
        assert_eq!(back.data, raw);
        assert_eq!(RawJson::from_stored("[1]".into()).get(), "[1]");
    }

    #[derive(Serialize, Deserialize)]
    struct Wrapper {
        data: RawJson,
    }

    #[test]
    fn metadata_keeps_unknown_keys() {
        let m: EventMetadata =
            serde_json::from_str(r#"{"actor":"ann","source":"import"}"#).unwrap();
        assert_eq!(
            m.actor,
            Some(Actor::subject("ann")),
            "a legacy string actor"
        );
        assert_eq!(m.extra["source"], "import");
        assert_eq!(
            serde_json::to_string(&m).unwrap(),
            r#"{"actor":{"sub":"ann","roles":[]},"source":"import"}"#
        );
        assert!(EventMetadata::default().is_empty());
    }

    #[test]
    fn actor_reads_subject_and_roles() {
        let m: EventMetadata =
            serde_json::from_str(r#"{"actor":{"sub":"bob","roles":["ops"]}}"#).unwrap();
        assert_eq!(
            m.actor,
            Some(Actor {
                sub: "bob".into(),
                roles: vec!["ops".into()],
            })
        );
        for bad in [
            r#"{"actor":7}"#,
            r#"{"actor":{"roles":[]}}"#,
            r#"{"actor":{"sub":"a","x":1}}"#,
        ] {
            let error = serde_json::from_str::<EventMetadata>(bad).unwrap_err();
            assert!(
                error.to_string().contains("actor must be"),
                "{bad}: {error}"
            );
        }
    }
}
