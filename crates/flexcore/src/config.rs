//! Settings: defaults < `flexcore.toml` < `FLEXCORE_*` variables < flags.
//!
//! The file uses the same names as the variables, lower-cased and without the prefix
//! (`FLEXCORE_HTTP_ADDR` ↔ `http_addr`). Unknown keys and ill-typed values fail at start with
//! the file, the key and what was expected.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::cli::ServeArgs;

/// The default HTTP address.
pub const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:8080";
/// The default gRPC address.
pub const DEFAULT_GRPC_ADDR: &str = "127.0.0.1:50051";
/// The default store: the embedded SQLite file.
pub const DEFAULT_STORE_URL: &str = "sqlite://./data/flexcore.db";
/// The fields masked in logs by default.
pub const DEFAULT_LOG_MASK: [&str; 3] = ["email", "password", "token"];

/// The default timeout of one Python handler call, in ms.
pub const DEFAULT_PYTHON_TIMEOUT_MS: u64 = 5000;

/// The built-in Rust sample domain module.
pub const USERS_MODULE: &str = "users";
/// The module made of the configured Python files.
pub const PYTHON_MODULE: &str = "python";
/// Every module the binary can load.
pub const KNOWN_MODULES: [&str; 2] = [USERS_MODULE, PYTHON_MODULE];

/// The default config file, used when present.
pub const DEFAULT_CONFIG_FILE: &str = "flexcore.toml";

/// A configuration problem, reported before anything starts.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file cannot be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The config file is not valid.
    #[error("invalid config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's explanation, naming the key and the line.
        message: String,
    },
    /// A setting has an unusable value.
    #[error("invalid setting {key} = '{value}': expected {expected}")]
    Invalid {
        /// The setting's name (file key / variable).
        key: &'static str,
        /// The value given.
        value: String,
        /// What would be accepted.
        expected: &'static str,
    },
    /// A schema file named in `[schemas]` cannot be read, is not JSON or is not a JSON Schema.
    #[error("invalid schema file {path} (the schema of {subject}): {message}")]
    Schema {
        /// The file.
        path: PathBuf,
        /// Whose schema it is, e.g. `command 'create_user'`.
        subject: String,
        /// What is wrong with it.
        message: String,
    },
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// The effective settings of `flexcore serve`.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Where HTTP listens.
    pub http_addr: SocketAddr,
    /// Where gRPC listens.
    pub grpc_addr: SocketAddr,
    /// The event store URL.
    pub store_url: String,
    /// The log filter (RUST_LOG syntax).
    pub log: String,
    /// The log format.
    pub log_format: LogFormat,
    /// The largest request body accepted.
    pub max_body_bytes: usize,
    /// Connections open at once on each gateway, HTTP and gRPC (more are closed at accept).
    pub max_connections: usize,
    /// How long an HTTP client may take to send a request's head, in ms (slowloris); a TLS
    /// handshake, on either gateway, gets as long.
    pub header_read_timeout_ms: u64,
    /// Fields whose values are masked in logs (and, with `email`, email addresses anywhere).
    pub log_mask: Vec<String>,
    /// Where to export traces over OTLP/gRPC (`None`: no export).
    pub otlp_endpoint: Option<String>,
    /// The domain modules to load, in order (names from [`KNOWN_MODULES`]).
    pub modules: Vec<String>,
    /// The files of the `python` module (`[python]` in the file).
    pub python: PythonSettings,
    /// The folder of plugins served as the `plugins` module (`None`: no plugins).
    pub plugins_dir: Option<std::path::PathBuf>,
    /// The query cache: `None` for the in-process cache, or a `redis://` URL.
    pub cache_url: Option<String>,
    /// Where the outbox relay publishes committed events (`amqp://`, `redis://`, `nats://`;
    /// `None`: no relay).
    pub outbox_url: Option<String>,
    /// Where commands are consumed from (`amqp://` queue, `redis://` stream; `None`: none).
    pub inbound_url: Option<String>,
    /// Authentication, roles and rate limits (`[auth]`, `[api_keys]`, `[roles]`,
    /// `[rate_limit]`).
    pub security: crate::security::SecuritySettings,
    /// Input validation: limits on appends, schema files (`[limits]`, `[schemas]`).
    pub validation: crate::validation::ValidationSettings,
    /// GDPR crypto-shredding (`[gdpr]` in the file; off without a master key file).
    pub gdpr: GdprSettings,
}

/// GDPR crypto-shredding: declared personal fields are sealed with per-subject keys wrapped by
/// the master key (see `docs/adr/0008-crypto-shredding.md`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GdprSettings {
    /// The master key file (32 raw bytes, 64 hex digits or base64; relative to the config
    /// file in the file); `None`: crypto-shredding is off.
    pub master_key_file: Option<PathBuf>,
    /// How long an unwrapped data key stays cached on a node, in seconds: the longest a
    /// subject forgotten on another node stays readable here.
    pub key_cache_ttl_secs: u64,
    /// Personal data per event type (`[gdpr.events."user.created"] subject = "/user_id",
    /// personal = ["/email"]`), overruling what the domain modules declare for that type.
    pub events: Vec<flexcore_app::gdpr::PersonalData>,
}

/// The default [`GdprSettings::key_cache_ttl_secs`].
pub const DEFAULT_GDPR_KEY_CACHE_TTL_SECS: u64 = 60;

impl Default for GdprSettings {
    /// Off.
    fn default() -> Self {
        Self {
            master_key_file: None,
            key_cache_ttl_secs: DEFAULT_GDPR_KEY_CACHE_TTL_SECS,
            events: Vec::new(),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct GdprFileSettings {
    master_key_file: Option<PathBuf>,
    key_cache_ttl_secs: Option<u64>,
    #[serde(default)]
    events: std::collections::BTreeMap<String, GdprEventFileSettings>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GdprEventFileSettings {
    subject: String,
    personal: Vec<String>,
}

/// Merges the GDPR settings: flag/variable > file; checks the declarations.
fn gdpr_settings(
    flag: Option<PathBuf>,
    file: GdprFileSettings,
    file_dir: Option<&Path>,
) -> Result<GdprSettings, ConfigError> {
    let from_file = file.master_key_file.map(|path| match file_dir {
        Some(dir) if path.is_relative() => dir.join(path),
        _ => path,
    });
    let master_key_file = flag.or(from_file);
    let mut events = Vec::new();
    for (event_type, declared) in file.events {
        let checked =
            flexcore_app::gdpr::PersonalData::new(&event_type, declared.subject, declared.personal)
                .map_err(|e| ConfigError::Invalid {
                    key: "gdpr.events",
                    value: format!("{event_type}: {e}"),
                    expected: "subject = a JSON pointer such as \"/user_id\", personal = a \
                               non-empty list of JSON pointers not overlapping it",
                })?;
        events.push(checked);
    }
    if master_key_file.is_none() && !events.is_empty() {
        return Err(ConfigError::Invalid {
            key: "gdpr.master_key_file",
            value: String::new(),
            expected: "a master key file, since [gdpr.events] declares personal data",
        });
    }
    let key_cache_ttl_secs = file
        .key_cache_ttl_secs
        .unwrap_or(DEFAULT_GDPR_KEY_CACHE_TTL_SECS);
    if key_cache_ttl_secs == 0 {
        return Err(ConfigError::Invalid {
            key: "gdpr.key_cache_ttl_secs",
            value: "0".into(),
            expected: "a positive number of seconds",
        });
    }
    Ok(GdprSettings {
        master_key_file,
        key_cache_ttl_secs,
        events,
    })
}

/// The files of the `python` domain module; they reload when they change. When any are
/// configured and `modules` is not set, `python` is the only module loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PythonSettings {
    /// The module files, absolute (file entries are relative to the config file, variable
    /// and flag entries to the working directory).
    pub modules: Vec<PathBuf>,
    /// How long one handler call may run, in ms.
    pub timeout_ms: u64,
}

impl Default for PythonSettings {
    /// No modules (the built-in sample domain runs).
    fn default() -> Self {
        Self {
            modules: Vec::new(),
            timeout_ms: DEFAULT_PYTHON_TIMEOUT_MS,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PythonFileSettings {
    modules: Option<Vec<PathBuf>>,
    timeout_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSettings {
    http_addr: Option<String>,
    grpc_addr: Option<String>,
    store_url: Option<String>,
    log: Option<String>,
    log_format: Option<String>,
    max_body_bytes: Option<usize>,
    max_connections: Option<usize>,
    header_read_timeout_ms: Option<u64>,
    log_mask: Option<Vec<String>>,
    otlp_endpoint: Option<String>,
    modules: Option<Vec<String>>,
    python: Option<PythonFileSettings>,
    plugins_dir: Option<std::path::PathBuf>,
    cache_url: Option<String>,
    outbox_url: Option<String>,
    inbound_url: Option<String>,
    auth: Option<crate::security::AuthFile>,
    api_keys: Option<std::collections::BTreeMap<String, crate::security::ApiKeyFile>>,
    roles: Option<std::collections::BTreeMap<String, crate::security::RoleFile>>,
    rate_limit: Option<crate::security::RateLimitFile>,
    tls: Option<crate::security::TlsFile>,
    limits: Option<crate::validation::LimitsFileSettings>,
    schemas: Option<crate::validation::SchemasFileSettings>,
    gdpr: Option<GdprFileSettings>,
}

impl Settings {
    /// Resolves the settings from flags/variables (already merged by clap) and the file.
    pub fn resolve(args: ServeArgs) -> Result<Self, ConfigError> {
        let (file, file_dir) = match &args.config {
            Some(path) => (load_file(path)?, path.parent().map(Path::to_owned)),
            None if Path::new(DEFAULT_CONFIG_FILE).exists() => {
                (load_file(Path::new(DEFAULT_CONFIG_FILE))?, None)
            }
            None => (FileSettings::default(), None),
        };
        let python = python_settings(
            args.python_modules,
            args.python_timeout_ms,
            file.python.unwrap_or_default(),
            file_dir.as_deref(),
        )?;
        let modules = module_settings(args.modules, file.modules, &python)?;
        let security = crate::security::resolve(
            args.auth,
            crate::security::SecurityFile {
                auth: file.auth,
                api_keys: file.api_keys,
                roles: file.roles,
                rate_limit: file.rate_limit,
                tls: file.tls,
            },
            file_dir.as_deref(),
        )?;
        let validation =
            crate::validation::validation_settings(file.limits, file.schemas, file_dir.as_deref())?;
        let gdpr = gdpr_settings(
            args.gdpr_master_key_file,
            file.gdpr.unwrap_or_default(),
            file_dir.as_deref(),
        )?;
        let pick = |flag: Option<String>, file: Option<String>, default: &str| {
            flag.or(file).unwrap_or_else(|| default.to_owned())
        };
        let addr = |key: &'static str, value: String| {
            value
                .parse::<SocketAddr>()
                .map_err(|_| ConfigError::Invalid {
                    key,
                    value,
                    expected: "a socket address such as 127.0.0.1:8080",
                })
        };
        let log_format = match pick(args.log_format, file.log_format, "text").as_str() {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => {
                return Err(ConfigError::Invalid {
                    key: "log_format",
                    value: other.to_owned(),
                    expected: "text or json",
                });
            }
        };
        let store_url = pick(args.store_url, file.store_url, DEFAULT_STORE_URL);
        if !["sqlite:", "postgres://", "postgresql://"]
            .iter()
            .any(|scheme| store_url.starts_with(scheme))
        {
            return Err(ConfigError::Invalid {
                key: "store_url",
                value: store_url,
                expected: "sqlite://path/to/file.db or postgres://user@host:port/db",
            });
        }
        let max_body_bytes = args
            .max_body_bytes
            .or(file.max_body_bytes)
            .unwrap_or(4 * 1024 * 1024);
        if max_body_bytes == 0 {
            return Err(ConfigError::Invalid {
                key: "max_body_bytes",
                value: "0".into(),
                expected: "a positive number of bytes",
            });
        }
        let connection_defaults = flexcore_http::ConnectionLimits::default();
        let max_connections = args
            .max_connections
            .or(file.max_connections)
            .unwrap_or(connection_defaults.max_connections);
        let header_read_timeout_ms = args
            .header_read_timeout_ms
            .or(file.header_read_timeout_ms)
            .unwrap_or(connection_defaults.header_read_timeout.as_millis() as u64);
        if max_connections == 0 || header_read_timeout_ms == 0 {
            return Err(ConfigError::Invalid {
                key: if max_connections == 0 {
                    "max_connections"
                } else {
                    "header_read_timeout_ms"
                },
                value: "0".into(),
                expected: "a positive number",
            });
        }
        let log_mask = args
            .log_mask
            .map(|list| list.split(',').map(|f| f.trim().to_owned()).collect())
            .or(file.log_mask)
            .unwrap_or_else(|| DEFAULT_LOG_MASK.iter().map(|f| (*f).to_owned()).collect());
        let otlp_endpoint = args
            .otlp_endpoint
            .or(file.otlp_endpoint)
            .filter(|e| !e.is_empty());
        if let Some(endpoint) = &otlp_endpoint
            && !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
        {
            return Err(ConfigError::Invalid {
                key: "otlp_endpoint",
                value: endpoint.clone(),
                expected: "an http:// or https:// URL of an OTLP/gRPC collector",
            });
        }
        let cache_url = url_setting(
            "cache_url",
            args.cache_url.or(file.cache_url),
            &["redis://"],
            "a redis:// URL (or nothing for the in-process cache)",
        )?;
        let outbox_url = url_setting(
            "outbox_url",
            args.outbox_url.or(file.outbox_url),
            &["amqp://", "redis://", "nats://"],
            "an amqp://, redis:// or nats:// URL of the broker the outbox relay publishes to",
        )?;
        let inbound_url = url_setting(
            "inbound_url",
            args.inbound_url.or(file.inbound_url),
            &["amqp://", "redis://"],
            "an amqp:// (queue) or redis:// (stream) URL to consume commands from",
        )?;
        let plugins_dir = plugins_dir(args.plugins_dir, file.plugins_dir, file_dir.as_deref());
        Ok(Self {
            security,
            modules,
            python,
            plugins_dir,
            validation,
            gdpr,
            cache_url,
            outbox_url,
            inbound_url,
            otlp_endpoint,
            log_mask,
            http_addr: addr(
                "http_addr",
                pick(args.http_addr, file.http_addr, DEFAULT_HTTP_ADDR),
            )?,
            grpc_addr: addr(
                "grpc_addr",
                pick(args.grpc_addr, file.grpc_addr, DEFAULT_GRPC_ADDR),
            )?,
            store_url,
            log: pick(args.log, file.log, "info"),
            log_format,
            max_body_bytes,
            max_connections,
            header_read_timeout_ms,
        })
    }
}

/// The plugins folder, absolute: flag/variable (relative to the working directory) > file
/// (relative to the config file's directory); empty means none.
fn plugins_dir(
    flag: Option<PathBuf>,
    file: Option<PathBuf>,
    file_dir: Option<&Path>,
) -> Option<PathBuf> {
    let dir = match (flag, file, file_dir) {
        (Some(dir), _, _) => dir,
        (None, Some(dir), Some(base)) if dir.is_relative() => base.join(dir),
        (None, Some(dir), _) => dir,
        (None, None, _) => return None,
    };
    if dir.as_os_str().is_empty() {
        return None;
    }
    Some(std::path::absolute(&dir).unwrap_or(dir))
}

/// An optional URL setting that must start with one of `schemes`.
fn url_setting(
    key: &'static str,
    value: Option<String>,
    schemes: &[&str],
    expected: &'static str,
) -> Result<Option<String>, ConfigError> {
    match value.filter(|v| !v.trim().is_empty()) {
        Some(url) if !schemes.iter().any(|s| url.starts_with(s)) => Err(ConfigError::Invalid {
            key,
            value: crate::store_url::mask_password(&url),
            expected,
        }),
        other => Ok(other),
    }
}

impl Settings {
    /// The settings as `(file key, value)` pairs, secrets masked: what `flexcore config show`
    /// prints.
    pub fn effective(&self) -> Vec<(&'static str, serde_json::Value)> {
        use serde_json::json;
        let [validation_limits, validation_schemas] = self.validation.effective();
        vec![
            ("http_addr", json!(self.http_addr.to_string())),
            ("grpc_addr", json!(self.grpc_addr.to_string())),
            (
                "store_url",
                json!(crate::store_url::mask_password(&self.store_url)),
            ),
            ("log", json!(self.log)),
            (
                "log_format",
                json!(match self.log_format {
                    LogFormat::Text => "text",
                    LogFormat::Json => "json",
                }),
            ),
            ("max_body_bytes", json!(self.max_body_bytes)),
            ("max_connections", json!(self.max_connections)),
            ("header_read_timeout_ms", json!(self.header_read_timeout_ms)),
            ("log_mask", json!(self.log_mask)),
            ("otlp_endpoint", json!(self.otlp_endpoint)),
            (
                "cache_url",
                json!(
                    self.cache_url
                        .as_deref()
                        .map(crate::store_url::mask_password)
                ),
            ),
            (
                "outbox_url",
                json!(
                    self.outbox_url
                        .as_deref()
                        .map(crate::store_url::mask_password)
                ),
            ),
            (
                "inbound_url",
                json!(
                    self.inbound_url
                        .as_deref()
                        .map(crate::store_url::mask_password)
                ),
            ),
            ("modules", json!(self.modules)),
            (
                "plugins_dir",
                json!(
                    self.plugins_dir
                        .as_ref()
                        .map(|dir| dir.display().to_string())
                ),
            ),
            validation_limits,
            validation_schemas,
            (
                "python",
                json!({
                    "modules": self.python.modules,
                    "timeout_ms": self.python.timeout_ms,
                }),
            ),
            ("auth", self.security.effective()),
            ("tls", self.security.effective_tls()),
            (
                "gdpr",
                // The key file's path, never its content; `null` (left out) when off.
                match &self.gdpr.master_key_file {
                    Some(path) => json!({
                        "master_key_file": path,
                        "key_cache_ttl_secs": self.gdpr.key_cache_ttl_secs,
                    }),
                    None => serde_json::Value::Null,
                },
            ),
        ]
    }

    /// The effective settings as a `flexcore.toml` document.
    pub fn to_toml(&self) -> String {
        // TOML has no null: unset optional settings are left out. Objects become tables,
        // which must follow the top-level keys.
        let (tables, keys): (Vec<_>, Vec<_>) = self
            .effective()
            .into_iter()
            .filter(|(_, value)| !value.is_null())
            .partition(|(_, value)| value.is_object());
        let mut text: String = keys
            .into_iter()
            .map(|(key, value)| format!("{key} = {value}\n"))
            .collect();
        for (table, value) in tables {
            text.push_str(&format!("\n[{table}]\n"));
            for (key, value) in value.as_object().into_iter().flatten() {
                if value.is_null() {
                    continue;
                }
                text.push_str(&format!("{key} = {}\n", toml_value(value)));
            }
        }
        text
    }
}

/// A JSON value as TOML: objects become inline tables (JSON strings, numbers and arrays of
/// them are already TOML).
fn toml_value(value: &serde_json::Value) -> String {
    match value.as_object() {
        Some(table) => {
            let entries: Vec<String> = table
                .iter()
                .map(|(key, value)| format!("{} = {}", serde_json::json!(key), toml_value(value)))
                .collect();
            format!("{{ {} }}", entries.join(", "))
        }
        None => value.to_string(),
    }
}

/// The modules to load: flag/variable > file > default (`python` when Python files are
/// configured, else `users`). Unknown names, repeats, an empty list, `python` without files
/// and files without `python` are refused.
fn module_settings(
    flag: Option<String>,
    file: Option<Vec<String>>,
    python: &PythonSettings,
) -> Result<Vec<String>, ConfigError> {
    let listed = flag
        .map(|list| list.split(',').map(|m| m.trim().to_owned()).collect())
        .or(file);
    let modules: Vec<String> = match listed {
        Some(modules) => modules.into_iter().filter(|m| !m.is_empty()).collect(),
        None if python.modules.is_empty() => vec![USERS_MODULE.to_owned()],
        None => vec![PYTHON_MODULE.to_owned()],
    };
    let invalid = |value: String, expected| ConfigError::Invalid {
        key: "modules",
        value,
        expected,
    };
    if modules.is_empty() {
        return Err(invalid(String::new(), "at least one module: users, python"));
    }
    for (i, module) in modules.iter().enumerate() {
        if !KNOWN_MODULES.contains(&module.as_str()) {
            return Err(invalid(module.clone(), "module names among: users, python"));
        }
        if modules[..i].contains(module) {
            return Err(invalid(modules.join(","), "each module named once"));
        }
    }
    let python_listed = modules.iter().any(|m| m == PYTHON_MODULE);
    if python_listed && python.modules.is_empty() {
        return Err(invalid(
            modules.join(","),
            "python files in [python] modules (FLEXCORE_PYTHON_MODULES) for the python module",
        ));
    }
    if !python_listed && !python.modules.is_empty() {
        return Err(invalid(
            modules.join(","),
            "the python module in the list, since Python files are configured",
        ));
    }
    Ok(modules)
}

/// Merges the Python settings: flag/variable > file > default; checks every module exists.
fn python_settings(
    modules: Option<String>,
    timeout_ms: Option<u64>,
    file: PythonFileSettings,
    file_dir: Option<&Path>,
) -> Result<PythonSettings, ConfigError> {
    let absolute = |base: Option<&Path>, path: PathBuf| {
        let path = match base {
            Some(base) if path.is_relative() => base.join(path),
            _ => path,
        };
        std::path::absolute(&path).unwrap_or(path)
    };
    let modules: Vec<PathBuf> = match modules {
        Some(list) => list
            .split(',')
            .map(str::trim)
            .filter(|m| !m.is_empty())
            .map(|m| absolute(None, PathBuf::from(m)))
            .collect(),
        None => file
            .modules
            .unwrap_or_default()
            .into_iter()
            .map(|m| absolute(file_dir, m))
            .collect(),
    };
    if let Some(missing) = modules.iter().find(|m| !m.is_file()) {
        return Err(ConfigError::Invalid {
            key: "python.modules",
            value: missing.display().to_string(),
            expected: "existing Python files (in the file, relative to the config file's directory)",
        });
    }
    let timeout_ms = timeout_ms
        .or(file.timeout_ms)
        .unwrap_or(DEFAULT_PYTHON_TIMEOUT_MS);
    if timeout_ms == 0 {
        return Err(ConfigError::Invalid {
            key: "python.timeout_ms",
            value: "0".into(),
            expected: "a positive number of milliseconds",
        });
    }
    Ok(PythonSettings {
        modules,
        timeout_ms,
    })
}

fn load_file(path: &Path) -> Result<FileSettings, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

/// `flexcore config show`: prints the effective settings (TOML, or JSON with `json`).
pub fn show(args: ServeArgs, json: bool) -> anyhow::Result<()> {
    let settings = Settings::resolve(args)?;
    if json {
        let map: serde_json::Map<String, serde_json::Value> = settings
            .effective()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        println!("{}", serde_json::Value::Object(map));
    } else {
        print!("{}", settings.to_toml());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_file(contents: &str) -> (tempfile::TempDir, ServeArgs) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flexcore.toml");
        std::fs::write(&path, contents).unwrap();
        let args = ServeArgs {
            config: Some(path),
            ..ServeArgs::default()
        };
        (dir, args)
    }

    #[test]
    fn defaults_apply_without_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let args = ServeArgs {
            config: Some(dir.path().join("absent.toml")),
            ..ServeArgs::default()
        };
        assert!(matches!(
            Settings::resolve(args),
            Err(ConfigError::Read { .. })
        ));
        let (_dir, args) = with_file("");
        let s = Settings::resolve(args).unwrap();
        assert_eq!(s.http_addr.to_string(), DEFAULT_HTTP_ADDR);
        assert_eq!(s.store_url, DEFAULT_STORE_URL);
        assert_eq!(s.log_format, LogFormat::Text);
    }

    #[test]
    fn the_effective_settings_round_trip_and_mask_secrets() {
        let (_dir, mut args) = with_file("log = \"debug\"\n");
        args.store_url = Some("postgres://app:s3cret@db:5432/events".into());
        let settings = Settings::resolve(args).unwrap();
        let shown = settings.to_toml();
        assert!(
            shown.contains("store_url = \"postgres://app:****@db:5432/events\""),
            "{shown}"
        );
        assert!(!shown.contains("s3cret"));
        let (_dir, args) = with_file(&shown);
        let again = Settings::resolve(args).unwrap();
        assert_eq!(again.log, "debug");
        assert_eq!(again.http_addr, settings.http_addr);
    }

    #[test]
    fn the_plugins_dir_is_relative_to_the_config_file_and_shown() {
        let (dir, args) = with_file("plugins_dir = \"plugins\"\n");
        let settings = Settings::resolve(args.clone()).unwrap();
        let expected = std::path::absolute(dir.path().join("plugins")).unwrap();
        assert_eq!(settings.plugins_dir.as_deref(), Some(expected.as_path()));
        assert!(
            settings.to_toml().contains(&format!(
                "plugins_dir = {:?}",
                expected.display().to_string()
            )),
            "{}",
            settings.to_toml()
        );
        let flagged = Settings::resolve(ServeArgs {
            plugins_dir: Some(PathBuf::from("/srv/plugins")),
            ..args
        })
        .unwrap();
        assert_eq!(
            flagged.plugins_dir.as_deref(),
            Some(Path::new("/srv/plugins"))
        );
        let (_dir, args) = with_file("log = \"info\"\n");
        assert_eq!(Settings::resolve(args).unwrap().plugins_dir, None);
    }

    #[test]
    fn broker_and_cache_urls_are_checked_and_masked() {
        let (_dir, args) = with_file(
            "cache_url = \"redis://127.0.0.1:6379/?prefix=qc\"\n\
             outbox_url = \"amqp://guest:secret@127.0.0.1:5672/%2f?exchange=x\"\n\
             inbound_url = \"redis://127.0.0.1:6379/?stream=commands\"\n",
        );
        let s = Settings::resolve(args).unwrap();
        assert_eq!(
            s.cache_url.as_deref(),
            Some("redis://127.0.0.1:6379/?prefix=qc")
        );
        assert_eq!(
            s.inbound_url.as_deref(),
            Some("redis://127.0.0.1:6379/?stream=commands")
        );
        let shown = s.to_toml();
        assert!(shown.contains("amqp://guest:****@127.0.0.1"), "{shown}");
        assert!(!shown.contains("secret"));
        for (key, bad) in [
            ("cache_url", "memcached://x"),
            ("outbox_url", "kafka://x"),
            ("inbound_url", "nats://127.0.0.1:4222"),
        ] {
            let (_dir, args) = with_file(&format!("{key} = \"{bad}\"\n"));
            match Settings::resolve(args) {
                Err(ConfigError::Invalid { key: named, .. }) => assert_eq!(named, key),
                other => panic!("{key} = {bad} gave {other:?}"),
            }
        }
    }

    #[test]
    fn flags_beat_the_file() {
        let (_dir, mut args) = with_file("http_addr = \"127.0.0.1:9000\"\nlog = \"debug\"\n");
        args.http_addr = Some("127.0.0.1:9100".into());
        let s = Settings::resolve(args).unwrap();
        assert_eq!(s.http_addr.to_string(), "127.0.0.1:9100");
        assert_eq!(s.log, "debug");
    }

    #[test]
    fn python_modules_come_from_the_file_or_the_variable() {
        let (dir, args) = with_file("[python]\nmodules = [\"users.py\"]\ntimeout_ms = 250\n");
        std::fs::write(dir.path().join("users.py"), "").unwrap();
        let s = Settings::resolve(args.clone()).unwrap();
        assert_eq!(s.python.modules, vec![dir.path().join("users.py")]);
        assert_eq!(s.python.timeout_ms, 250);
        // The section round-trips through `config show`.
        let (_again_dir, again) = with_file(&s.to_toml());
        assert_eq!(Settings::resolve(again).unwrap().python, s.python);
        // The variable replaces the file's list; an empty one turns Python off.
        let other = dir.path().join("other.py");
        std::fs::write(&other, "").unwrap();
        let s = Settings::resolve(ServeArgs {
            python_modules: Some(format!(" {} ,", other.display())),
            ..args.clone()
        })
        .unwrap();
        assert_eq!(s.python.modules, vec![other]);
        let s = Settings::resolve(ServeArgs {
            python_modules: Some(String::new()),
            ..args
        })
        .unwrap();
        assert!(s.python.modules.is_empty());
        let (_dir, args) = with_file("");
        let s = Settings::resolve(args).unwrap();
        assert!(s.python.modules.is_empty());
        assert_eq!(s.python.timeout_ms, DEFAULT_PYTHON_TIMEOUT_MS);
    }

    #[test]
    fn bad_python_settings_name_the_key() {
        let (_dir, args) = with_file("[python]\nmodules = [\"absent.py\"]\n");
        let err = Settings::resolve(args).unwrap_err().to_string();
        assert!(
            err.contains("python.modules") && err.contains("absent.py"),
            "{err}"
        );
        let (_dir, args) = with_file("[python]\nmodule = [\"users.py\"]\n");
        let err = Settings::resolve(args).unwrap_err().to_string();
        assert!(
            err.contains("module") && err.contains("flexcore.toml"),
            "{err}"
        );
        let (_dir, args) = with_file("[python]\ntimeout_ms = 0\n");
        let err = Settings::resolve(args).unwrap_err().to_string();
        assert!(err.contains("python.timeout_ms"), "{err}");
    }

    #[test]
    fn bad_files_name_the_key() {
        let (_dir, args) = with_file("http_adr = \"x\"\n");
        let err = Settings::resolve(args).unwrap_err().to_string();
        assert!(
            err.contains("http_adr") && err.contains("flexcore.toml"),
            "{err}"
        );
        let (_dir, args) = with_file("max_body_bytes = \"big\"\n");
        let err = Settings::resolve(args).unwrap_err().to_string();
        assert!(err.contains("max_body_bytes"), "{err}");
        let (_dir, args) = with_file("http_addr = \"localhost\"\n");
        let err = Settings::resolve(args).unwrap_err().to_string();
        assert!(
            err.contains("http_addr") && err.contains("socket address"),
            "{err}"
        );
        let (_dir, args) = with_file("store_url = \"mysql://x\"\n");
        assert!(
            Settings::resolve(args)
                .unwrap_err()
                .to_string()
                .contains("store_url")
        );
    }
}
