//! Stream identity and optimistic concurrency.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

use crate::error::DomainError;

/// The longest stream id accepted, in bytes.
pub const MAX_STREAM_ID_LEN: usize = 256;

/// The id of an event stream: non-empty, at most [`MAX_STREAM_ID_LEN`] bytes, no control characters.
///
/// The part before the first `-` is the stream's *category* (`user-42` is in category `user`),
/// which `read_all` can filter by.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct StreamId(String);

impl StreamId {
    /// Validates and wraps a stream id.
    pub fn new(id: impl Into<String>) -> Result<Self, DomainError> {
        let id = id.into();
        if id.is_empty() {
            return Err(DomainError::validation("stream id must not be empty"));
        }
        if id.len() > MAX_STREAM_ID_LEN {
            return Err(DomainError::validation(format!(
                "stream id is {} bytes long; the limit is {MAX_STREAM_ID_LEN}",
                id.len()
            )));
        }
        if id.chars().any(char::is_control) {
            return Err(DomainError::validation(
                "stream id must not contain control characters",
            ));
        }
        Ok(Self(id))
    }

    /// The stream id of an aggregate instance: `{category}-{id}`.
    pub fn for_aggregate(category: &str, id: impl fmt::Display) -> Result<Self, DomainError> {
        Self::new(format!("{category}-{id}"))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The category: everything before the first `-`, or the whole id when it has none.
    pub fn category(&self) -> &str {
        self.0.split_once('-').map_or(self.0.as_str(), |(c, _)| c)
    }

    /// Unwraps the id.
    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for StreamId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for StreamId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        Self::new(raw).map_err(de::Error::custom)
    }
}

/// What a writer expects of a stream's version before its append (optimistic concurrency).
///
/// On the wire it is `"any"`, `"no_stream"`, `"exists"` or a version number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ExpectedVersion {
    /// No check.
    #[default]
    Any,
    /// The stream must not exist (or must have been deleted).
    NoStream,
    /// The stream must exist, at any version.
    StreamExists,
    /// The stream's last event must have exactly this version (the first event has version 0).
    Exact(u64),
}

impl ExpectedVersion {
    /// Whether a stream whose current version is `current` (`None`: no stream) satisfies this.
    pub fn is_satisfied_by(self, current: Option<u64>) -> bool {
        match self {
            Self::Any => true,
            Self::NoStream => current.is_none(),
            Self::StreamExists => current.is_some(),
            Self::Exact(v) => current == Some(v),
        }
    }

    /// The expectation that pins a stream at `current` (`None`: no stream).
    pub fn from_current(current: Option<u64>) -> Self {
        current.map_or(Self::NoStream, Self::Exact)
    }
}

impl fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Any => f.write_str("any"),
            Self::NoStream => f.write_str("no_stream"),
            Self::StreamExists => f.write_str("exists"),
            Self::Exact(v) => write!(f, "{v}"),
        }
    }
}

impl Serialize for ExpectedVersion {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Exact(v) => serializer.serialize_u64(*v),
            other => serializer.serialize_str(&other.to_string()),
        }
    }
}

impl<'de> Deserialize<'de> for ExpectedVersion {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = ExpectedVersion;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(r#""any", "no_stream", "exists" or a non-negative integer version"#)
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(ExpectedVersion::Exact(v))
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                u64::try_from(v)
                    .map(ExpectedVersion::Exact)
                    .map_err(|_| E::invalid_value(de::Unexpected::Signed(v), &self))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                match v {
                    "any" => Ok(ExpectedVersion::Any),
                    "no_stream" => Ok(ExpectedVersion::NoStream),
                    "exists" => Ok(ExpectedVersion::StreamExists),
                    _ => Err(E::invalid_value(de::Unexpected::Str(v), &self)),
                }
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_ids_are_checked() {
        assert!(StreamId::new("").is_err());
        assert!(StreamId::new("a\u{0}b").is_err());
        assert!(StreamId::new("a\nb").is_err());
        assert!(StreamId::new("x".repeat(MAX_STREAM_ID_LEN + 1)).is_err());
        assert!(StreamId::new("x".repeat(MAX_STREAM_ID_LEN)).is_ok());
        assert_eq!(StreamId::new("user-1-2").unwrap().category(), "user");
        assert_eq!(StreamId::new("plain").unwrap().category(), "plain");
    }

    #[test]
    fn expected_version_has_four_wire_forms() {
        for (json, expected) in [
            (r#""any""#, ExpectedVersion::Any),
            (r#""no_stream""#, ExpectedVersion::NoStream),
            (r#""exists""#, ExpectedVersion::StreamExists),
            ("7", ExpectedVersion::Exact(7)),
        ] {
            let parsed: ExpectedVersion = serde_json::from_str(json).unwrap();
            assert_eq!(parsed, expected);
            assert_eq!(serde_json::to_string(&parsed).unwrap(), json);
        }
        for bad in [r#""latest""#, "-1", "1.5", "null", "true", "[]"] {
            assert!(
                serde_json::from_str::<ExpectedVersion>(bad).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn expectations_check_the_current_version() {
        assert!(ExpectedVersion::Any.is_satisfied_by(None));
        assert!(ExpectedVersion::NoStream.is_satisfied_by(None));
        assert!(!ExpectedVersion::NoStream.is_satisfied_by(Some(0)));
        assert!(ExpectedVersion::StreamExists.is_satisfied_by(Some(0)));
        assert!(!ExpectedVersion::StreamExists.is_satisfied_by(None));
        assert!(ExpectedVersion::Exact(3).is_satisfied_by(Some(3)));
        assert!(!ExpectedVersion::Exact(3).is_satisfied_by(Some(4)));
    }
}
