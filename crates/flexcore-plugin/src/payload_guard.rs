//! `payload-guard`: a compiled-in `before_command` plugin that tidies and bounds command
//! payloads before any handler sees them — leading and trailing whitespace trimmed from every
//! string, and a payload refused (422, with the path at fault) when its JSON is larger than
//! `max_bytes` or nested deeper than `max_depth`.
//!
//! ```toml
//! name = "payload-guard"
//! version = "1.0.0"
//! [entry]
//! compiled_in = "payload-guard"
//! [hooks]
//! before_command = ["create_user"]
//! [config]
//! max_bytes = 4096        # default 65536
//! max_depth = 8           # default 16
//! trim_strings = true     # default true
//! ```

use std::sync::RwLock;

use async_trait::async_trait;
use flexcore_app::plugin::{Hook, Plugin, PluginCall};
use flexcore_app::validation::Violation;
use flexcore_app::{Error, Result};
use serde::Deserialize;
use serde_json::{Value, json};

/// The id a manifest's `[entry] compiled_in` gives to select the guard.
pub const PAYLOAD_GUARD: &str = "payload-guard";

/// The guard's `[config]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct GuardConfig {
    max_bytes: usize,
    max_depth: usize,
    trim_strings: bool,
}

impl Default for GuardConfig {
    fn default() -> Self {
        Self {
            max_bytes: 65_536,
            max_depth: 16,
            trim_strings: true,
        }
    }
}

/// Trims the strings of command payloads and refuses oversized or deeply nested ones.
#[derive(Default)]
pub struct PayloadGuard {
    config: RwLock<GuardConfig>,
}

impl PayloadGuard {
    /// A guard with the default limits until it is initialised.
    pub fn new() -> Self {
        Self::default()
    }

    fn guard(&self, mut payload: Value) -> Result<Value> {
        let config = *self.config.read().expect("config lock");
        let size = serde_json::to_vec(&payload).map_or(usize::MAX, |bytes| bytes.len());
        if size > config.max_bytes {
            return Err(refusal(
                "",
                format!(
                    "the payload is {size} bytes of JSON, more than the {} allowed",
                    config.max_bytes
                ),
            ));
        }
        if let Some(path) = too_deep(&payload, config.max_depth, String::new()) {
            return Err(refusal(
                &path,
                format!("nested deeper than {} levels", config.max_depth),
            ));
        }
        if config.trim_strings {
            trim(&mut payload);
        }
        Ok(payload)
    }
}

fn refusal(path: &str, message: String) -> Error {
    Error::Rejected {
        message: format!("payload-guard refused the command: {message}"),
        violations: vec![Violation {
            path: path.to_owned(),
            message,
        }],
    }
}

/// The JSON pointer of the first value nested below `depth_left` more levels, if any.
fn too_deep(value: &Value, depth_left: usize, path: String) -> Option<String> {
    let children: Vec<(String, &Value)> = match value {
        Value::Object(fields) => fields
            .iter()
            .map(|(key, child)| (escape(key), child))
            .collect(),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(index, child)| (index.to_string(), child))
            .collect(),
        _ => return None,
    };
    if depth_left == 0 && !children.is_empty() {
        return Some(path);
    }
    children
        .into_iter()
        .find_map(|(key, child)| too_deep(child, depth_left - 1, format!("{path}/{key}")))
}

/// A key as a JSON pointer segment (RFC 6901).
fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

fn trim(value: &mut Value) {
    match value {
        Value::String(text) => {
            let trimmed = text.trim();
            if trimmed.len() != text.len() {
                *text = trimmed.to_owned();
            }
        }
        Value::Array(items) => items.iter_mut().for_each(trim),
        Value::Object(fields) => fields.values_mut().for_each(trim),
        _ => {}
    }
}

#[async_trait]
impl Plugin for PayloadGuard {
    fn name(&self) -> &str {
        PAYLOAD_GUARD
    }

    fn version(&self) -> String {
        env!("CARGO_PKG_VERSION").to_owned()
    }

    /// `config`: the manifest's `[config]` (`null` or `{}` keep the defaults); an unknown key
    /// or a wrong type refuses the start.
    async fn initialize(&self, config: Value) -> Result<()> {
        let config = match config {
            Value::Null => GuardConfig::default(),
            config => serde_json::from_value(config).map_err(|e| {
                Error::Configuration(format!("payload-guard's [config] is invalid: {e}"))
            })?,
        };
        *self.config.write().expect("config lock") = config;
        Ok(())
    }

    async fn process(&self, call: PluginCall) -> Result<Value> {
        if call.hook != Hook::BeforeCommand {
            return Err(Error::internal(format!(
                "payload-guard serves before_command only, not {}",
                call.hook
            )));
        }
        let payload = call.data.get("payload").cloned().unwrap_or(Value::Null);
        Ok(json!({ "payload": self.guard(payload)? }))
    }

    async fn shutdown(&self) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flexcore_app::ErrorKind;
    use flexcore_app::plugin::PluginCallContext;

    fn call(payload: Value) -> PluginCall {
        PluginCall {
            hook: Hook::BeforeCommand,
            target: "create_user".into(),
            context: PluginCallContext::default(),
            data: json!({ "payload": payload }),
        }
    }

    async fn guard(config: Value) -> PayloadGuard {
        let guard = PayloadGuard::new();
        guard.initialize(config).await.unwrap();
        guard
    }

    #[tokio::test]
    async fn strings_are_trimmed_at_every_depth() {
        let guard = guard(Value::Null).await;
        let answer = guard
            .process(call(
                json!({"email": " Ann@Example.COM ", "tags": [" a", {"b": "b "}], "n": 1}),
            ))
            .await
            .unwrap();
        assert_eq!(
            answer,
            json!({"payload": {"email": "Ann@Example.COM", "tags": ["a", {"b": "b"}], "n": 1}})
        );
    }

    #[tokio::test]
    async fn an_oversized_payload_is_refused() {
        let guard = guard(json!({"max_bytes": 20})).await;
        let error = guard
            .process(call(json!({"bio": "x".repeat(30)})))
            .await
            .unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Validation);
        assert!(error.client_message().contains("more than the 20 allowed"));
    }

    #[tokio::test]
    async fn a_deep_payload_is_refused_at_its_path() {
        let guard = guard(json!({"max_depth": 2})).await;
        guard.process(call(json!({"a": {"b": 1}}))).await.unwrap();
        let error = guard
            .process(call(json!({"a": {"b/c": {"d": 1}}})))
            .await
            .unwrap_err();
        assert_eq!(error.violations()[0].path, "/a/b~1c");
    }

    #[tokio::test]
    async fn an_invalid_config_refuses_the_start() {
        let error = PayloadGuard::new()
            .initialize(json!({"max_size": 1}))
            .await
            .unwrap_err();
        assert!(matches!(error, Error::Configuration(_)), "{error}");
    }
}
