//! Input validation: the `[limits]` and `[schemas]` settings, and the JSON Schema adapter of
//! `flexcore_app::validation::PayloadValidator` (the `jsonschema` crate stays out of the
//! technology-free application layer).
//!
//! ```toml
//! [limits]
//! max_events_per_append = 1000      # events in one append, over all its streams
//! max_event_bytes = 1048576         # one event's data + metadata, as JSON text
//! max_stream_id_len = 256           # bytes; at most 256
//! stream_id_charset = "printable"   # or "any", "ascii", "identifier"
//!
//! [schemas.commands]                # command type -> JSON Schema file (relative to this file)
//! create_user = "schemas/create_user.json"
//!
//! [schemas.events]                  # event type -> JSON Schema file
//! "user.created" = "schemas/user_created.json"
//! ```
//!
//! Schemas are compiled once at start ([`InputValidation::compile`]); a file that cannot be
//! read, is not JSON or is not a valid schema stops the start with the file named. `$ref`s to
//! other files resolve relative to the referring file; `format` is asserted (an `"email"`
//! format rejects a non-address).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use flexcore_app::store::EventStore;
use flexcore_app::validation::{
    MAX_REPORTED_VIOLATIONS, PayloadSchemas, PayloadValidator, StreamIdCharset, ValidatingStore,
    Violation, WriteLimits,
};
use flexcore_domain::MAX_STREAM_ID_LEN;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::config::ConfigError;

/// The input-validation settings: limits on appends and the schema files.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ValidationSettings {
    /// What every append is held to (`[limits]`).
    pub limits: WriteLimits,
    /// Command type → JSON Schema file of its payload, absolute (`[schemas.commands]`).
    pub command_schemas: BTreeMap<String, PathBuf>,
    /// Event type → JSON Schema file of its data, absolute (`[schemas.events]`).
    pub event_schemas: BTreeMap<String, PathBuf>,
}

/// `[limits]` as written in the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LimitsFileSettings {
    max_events_per_append: Option<usize>,
    max_event_bytes: Option<usize>,
    max_stream_id_len: Option<usize>,
    stream_id_charset: Option<String>,
}

/// `[schemas]` as written in the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SchemasFileSettings {
    commands: Option<BTreeMap<String, PathBuf>>,
    events: Option<BTreeMap<String, PathBuf>>,
}

/// Resolves `[limits]` and `[schemas]` (schema paths relative to `file_dir`, the config
/// file's directory); every missing key takes its default.
pub(crate) fn validation_settings(
    limits: Option<LimitsFileSettings>,
    schemas: Option<SchemasFileSettings>,
    file_dir: Option<&Path>,
) -> Result<ValidationSettings, ConfigError> {
    let file = limits.unwrap_or_default();
    let defaults = WriteLimits::default();
    let positive = |key: &'static str, value: Option<usize>, default: usize| match value {
        Some(0) => Err(ConfigError::Invalid {
            key,
            value: "0".into(),
            expected: "a positive number",
        }),
        other => Ok(other.unwrap_or(default)),
    };
    let max_stream_id_len = positive(
        "limits.max_stream_id_len",
        file.max_stream_id_len,
        defaults.max_stream_id_len,
    )?;
    if max_stream_id_len > MAX_STREAM_ID_LEN {
        return Err(ConfigError::Invalid {
            key: "limits.max_stream_id_len",
            value: max_stream_id_len.to_string(),
            expected: "a number of bytes from 1 to 256 (the engine's own limit)",
        });
    }
    let stream_id_charset = match file.stream_id_charset {
        None => defaults.stream_id_charset,
        Some(name) => match StreamIdCharset::from_name(&name) {
            Some(charset) => charset,
            None => {
                return Err(ConfigError::Invalid {
                    key: "limits.stream_id_charset",
                    value: name,
                    expected: "printable (no control characters, no whitespace), any, ascii or \
                               identifier",
                });
            }
        },
    };
    let limits = WriteLimits {
        max_events_per_append: positive(
            "limits.max_events_per_append",
            file.max_events_per_append,
            defaults.max_events_per_append,
        )?,
        max_event_bytes: positive(
            "limits.max_event_bytes",
            file.max_event_bytes,
            defaults.max_event_bytes,
        )?,
        max_stream_id_len,
        stream_id_charset,
    };
    let schemas = schemas.unwrap_or_default();
    Ok(ValidationSettings {
        limits,
        command_schemas: schema_paths("schemas.commands", schemas.commands, file_dir)?,
        event_schemas: schema_paths("schemas.events", schemas.events, file_dir)?,
    })
}

/// Makes schema paths absolute (relative ones are relative to `file_dir`); refuses an empty
/// type name.
fn schema_paths(
    key: &'static str,
    paths: Option<BTreeMap<String, PathBuf>>,
    file_dir: Option<&Path>,
) -> Result<BTreeMap<String, PathBuf>, ConfigError> {
    paths
        .unwrap_or_default()
        .into_iter()
        .map(|(message_type, path)| {
            if message_type.trim().is_empty() {
                return Err(ConfigError::Invalid {
                    key,
                    value: message_type,
                    expected: "a command or event type as the key of each schema file",
                });
            }
            let path = match file_dir {
                Some(dir) if path.is_relative() => dir.join(path),
                _ => path,
            };
            Ok((message_type, std::path::absolute(&path).unwrap_or(path)))
        })
        .collect()
}

impl ValidationSettings {
    /// The settings as `(file key, value)` pairs, for `flexcore config show`.
    pub fn effective(&self) -> [(&'static str, Value); 2] {
        [
            (
                "limits",
                json!({
                    "max_events_per_append": self.limits.max_events_per_append,
                    "max_event_bytes": self.limits.max_event_bytes,
                    "max_stream_id_len": self.limits.max_stream_id_len,
                    "stream_id_charset": self.limits.stream_id_charset.name(),
                }),
            ),
            (
                "schemas",
                json!({
                    "commands": self.command_schemas,
                    "events": self.event_schemas,
                }),
            ),
        ]
    }
}

/// The input validation a server applies: the limits and the compiled schemas.
#[derive(Debug, Clone, Default)]
pub struct InputValidation {
    /// What every append is held to.
    pub limits: WriteLimits,
    /// The schema of each command type that has one.
    pub command_schemas: PayloadSchemas,
    /// The schema of each event type that has one.
    pub event_schemas: PayloadSchemas,
}

impl InputValidation {
    /// Compiles every configured schema file; the first that cannot be read, is not JSON or
    /// is not a valid JSON Schema is reported with its path.
    pub fn compile(settings: &ValidationSettings) -> Result<Self, ConfigError> {
        let compile_all = |kind: &str, files: &BTreeMap<String, PathBuf>| {
            let mut schemas = PayloadSchemas::new();
            for (message_type, path) in files {
                let schema =
                    JsonSchema::from_file(path).map_err(|message| ConfigError::Schema {
                        path: path.clone(),
                        subject: format!("{kind} '{message_type}'"),
                        message,
                    })?;
                schemas.insert(message_type.clone(), Arc::new(schema));
            }
            Ok::<_, ConfigError>(schemas)
        };
        Ok(Self {
            limits: settings.limits,
            command_schemas: compile_all("command", &settings.command_schemas)?,
            event_schemas: compile_all("event", &settings.event_schemas)?,
        })
    }

    /// Wraps `store` so that every append is checked against the limits and the event schemas.
    pub fn guard(&self, store: Arc<dyn EventStore>) -> Arc<dyn EventStore> {
        Arc::new(ValidatingStore::new(
            store,
            self.limits,
            self.event_schemas.clone(),
        ))
    }
}

/// A compiled JSON Schema (any draft the `jsonschema` crate knows; 2020-12 when `$schema` is
/// absent), with `format` asserted.
pub struct JsonSchema(jsonschema::Validator);

impl JsonSchema {
    /// Reads and compiles a schema file; `$ref`s resolve relative to the file. The error
    /// says what is wrong (not the path: the caller names it).
    pub fn from_file(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read it: {e}"))?;
        let schema: Value =
            serde_json::from_str(&text).map_err(|e| format!("it is not JSON: {e}"))?;
        let base =
            url::Url::from_file_path(path).map_err(|()| "its path is not absolute".to_owned())?;
        Self::compile(&schema, Some(base.as_str()))
    }

    /// Compiles a schema document; relative `$ref`s resolve against `base_uri` when given.
    pub fn compile(schema: &Value, base_uri: Option<&str>) -> Result<Self, String> {
        let mut options = jsonschema::options().should_validate_formats(true);
        if let Some(base) = base_uri {
            options = options.with_base_uri(base);
        }
        options
            .build(schema)
            .map(Self)
            .map_err(|e| format!("it is not a valid JSON Schema: {e}"))
    }
}

impl PayloadValidator for JsonSchema {
    fn validate(&self, payload: &Value) -> Vec<Violation> {
        self.0
            .iter_errors(payload)
            .take(MAX_REPORTED_VIOLATIONS)
            .map(|error| Violation {
                path: error.instance_path().to_string(),
                // Masked: the message names the rule, never the offending value.
                message: error.masked().to_string(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn violations_name_the_json_pointer_and_hide_the_value() {
        let schema = JsonSchema::compile(
            &json!({
                "type": "object",
                "required": ["email"],
                "properties": {
                    "email": {"type": "string", "format": "email"},
                    "tags": {"type": "array", "items": {"type": "string"}},
                },
            }),
            None,
        )
        .unwrap();
        assert!(
            schema
                .validate(&json!({"email": "ann@example.com"}))
                .is_empty()
        );
        let violations = schema.validate(&json!({"email": "secret-not-an-address"}));
        assert_eq!(violations.len(), 1, "{violations:?}");
        assert_eq!(violations[0].path, "/email");
        assert!(violations[0].message.contains("email"), "{violations:?}");
        assert!(!violations[0].message.contains("secret"), "{violations:?}");
        let violations = schema.validate(&json!({"tags": ["a", 2]}));
        let paths: Vec<&str> = violations.iter().map(|v| v.path.as_str()).collect();
        assert_eq!(paths.len(), 2, "{violations:?}");
        assert!(
            paths.contains(&"") && paths.contains(&"/tags/1"),
            "{paths:?}"
        );
    }

    #[test]
    fn references_to_sibling_files_resolve() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "common.json",
            r#"{"$defs": {"sku": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]+$"}}}"#,
        );
        let path = write(
            dir.path(),
            "order.json",
            r#"{"type": "object", "properties": {"sku": {"$ref": "common.json#/$defs/sku"}}}"#,
        );
        let schema = JsonSchema::from_file(&path).unwrap();
        assert!(schema.validate(&json!({"sku": "ABC-1"})).is_empty());
        assert_eq!(schema.validate(&json!({"sku": "abc"}))[0].path, "/sku");
    }

    #[test]
    fn bad_schema_files_fail_with_the_file_named() {
        let dir = tempfile::tempdir().unwrap();
        let not_json = write(dir.path(), "broken.json", "{\"type\": ");
        let not_a_schema = write(dir.path(), "wrong.json", r#"{"type": 12}"#);
        let missing = dir.path().join("absent.json");
        for (path, reason) in [
            (&not_json, "not JSON"),
            (&not_a_schema, "not a valid JSON Schema"),
            (&missing, "cannot read"),
        ] {
            let settings = ValidationSettings {
                event_schemas: [("order.placed".to_owned(), path.clone())].into(),
                ..ValidationSettings::default()
            };
            let error = InputValidation::compile(&settings).unwrap_err().to_string();
            assert!(
                error.contains(&path.display().to_string())
                    && error.contains("event 'order.placed'")
                    && error.contains(reason),
                "{error}"
            );
        }
    }

    #[test]
    fn limits_default_and_are_checked() {
        let settings = validation_settings(None, None, None).unwrap();
        assert_eq!(settings, ValidationSettings::default());
        let parse = |text: &str| -> Result<ValidationSettings, ConfigError> {
            let limits: LimitsFileSettings = toml::from_str(text).unwrap();
            validation_settings(Some(limits), None, None)
        };
        let custom = parse(
            "max_events_per_append = 5\nmax_event_bytes = 100\nmax_stream_id_len = 64\n\
             stream_id_charset = \"identifier\"\n",
        )
        .unwrap();
        assert_eq!(
            custom.limits,
            WriteLimits {
                max_events_per_append: 5,
                max_event_bytes: 100,
                max_stream_id_len: 64,
                stream_id_charset: StreamIdCharset::Identifier,
            }
        );
        for (text, key) in [
            ("max_events_per_append = 0", "limits.max_events_per_append"),
            ("max_event_bytes = 0", "limits.max_event_bytes"),
            ("max_stream_id_len = 257", "limits.max_stream_id_len"),
            ("stream_id_charset = \"emoji\"", "limits.stream_id_charset"),
        ] {
            match parse(text) {
                Err(ConfigError::Invalid { key: named, .. }) => assert_eq!(named, key, "{text}"),
                other => panic!("{text} gave {other:?}"),
            }
        }
    }

    #[test]
    fn the_settings_round_trip_through_config_show() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            "flexcore.toml",
            "[limits]\nmax_event_bytes = 2048\nstream_id_charset = \"ascii\"\n\
             [schemas.commands]\ncreate_user = \"create_user.json\"\n\
             [schemas.events]\n\"user.created\" = \"user created.json\"\n",
        );
        let args = crate::cli::ServeArgs {
            config: Some(path),
            ..crate::cli::ServeArgs::default()
        };
        let settings = crate::config::Settings::resolve(args).unwrap().validation;
        assert_eq!(settings.limits.max_event_bytes, 2048);
        assert_eq!(settings.limits.stream_id_charset, StreamIdCharset::Ascii);
        assert_eq!(
            settings.event_schemas["user.created"],
            dir.path().join("user created.json")
        );
        let shown = crate::config::Settings::resolve(crate::cli::ServeArgs {
            config: Some(dir.path().join("flexcore.toml")),
            ..crate::cli::ServeArgs::default()
        })
        .unwrap()
        .to_toml();
        let again = write(dir.path(), "shown.toml", &shown);
        let args = crate::cli::ServeArgs {
            config: Some(again),
            ..crate::cli::ServeArgs::default()
        };
        assert_eq!(
            crate::config::Settings::resolve(args).unwrap().validation,
            settings,
            "{shown}"
        );
    }

    #[test]
    fn schema_paths_are_relative_to_the_config_file() {
        let schemas: SchemasFileSettings = toml::from_str(
            "[commands]\ncreate_user = \"schemas/create_user.json\"\n\
             [events]\n\"user.created\" = \"/abs/user_created.json\"\n",
        )
        .unwrap();
        let settings =
            validation_settings(None, Some(schemas), Some(Path::new("/etc/flexcore"))).unwrap();
        assert_eq!(
            settings.command_schemas["create_user"],
            Path::new("/etc/flexcore/schemas/create_user.json")
        );
        assert_eq!(
            settings.event_schemas["user.created"],
            Path::new("/abs/user_created.json")
        );
        let empty_type: SchemasFileSettings =
            toml::from_str("[commands]\n\"\" = \"x.json\"\n").unwrap();
        assert!(matches!(
            validation_settings(None, Some(empty_type), None),
            Err(ConfigError::Invalid {
                key: "schemas.commands",
                ..
            })
        ));
    }
}
