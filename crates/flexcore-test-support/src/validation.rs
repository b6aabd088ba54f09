//! Input-validation fixtures for the crates that compile no JSON Schema (the gateways, the
//! application layer): a small schema stand-in with the same reporting shape, and a store
//! guarded by tight limits.

use std::sync::Arc;

use flexcore_app::store::{EventStore, InMemoryStore};
use flexcore_app::validation::{
    PayloadSchemas, PayloadValidator, StreamIdCharset, ValidatingStore, Violation, WriteLimits,
};
use serde_json::Value;

/// A schema requiring some top-level fields to be strings; violations are reported as a JSON
/// Schema validator reports them (`""` for a missing field, `/field` for a wrong type).
pub struct RequiredStrings(Vec<String>);

impl RequiredStrings {
    /// Requires each of `fields`.
    pub fn new(fields: &[&str]) -> Self {
        Self(fields.iter().map(|f| (*f).to_owned()).collect())
    }
}

impl PayloadValidator for RequiredStrings {
    fn validate(&self, payload: &Value) -> Vec<Violation> {
        self.0
            .iter()
            .filter_map(|field| match payload.get(field) {
                None => Some(Violation {
                    path: String::new(),
                    message: format!("\"{field}\" is a required property"),
                }),
                Some(Value::String(_)) => None,
                Some(_) => Some(Violation {
                    path: format!("/{field}"),
                    message: "value is not of type \"string\"".to_owned(),
                }),
            })
            .collect()
    }
}

/// Schemas by type: each type requires its listed string fields.
pub fn required_strings(types: &[(&str, &[&str])]) -> PayloadSchemas {
    let mut schemas = PayloadSchemas::new();
    for (message_type, fields) in types {
        schemas.insert(*message_type, Arc::new(RequiredStrings::new(fields)));
    }
    schemas
}

/// The tight limits of [`guarded_store`]: 3 events per append, 512 bytes per event, stream ids
/// of at most 48 bytes (a `user-{uuid}` fits) without whitespace.
pub const TIGHT_LIMITS: WriteLimits = WriteLimits {
    max_events_per_append: 3,
    max_event_bytes: 512,
    max_stream_id_len: 48,
    stream_id_charset: StreamIdCharset::Printable,
};

/// An in-memory store behind [`TIGHT_LIMITS`], where `order.placed` events need a string
/// `sku`.
pub fn guarded_store() -> Arc<dyn EventStore> {
    Arc::new(ValidatingStore::new(
        Arc::new(InMemoryStore::new()),
        TIGHT_LIMITS,
        required_strings(&[("order.placed", &["sku"])]),
    ))
}
