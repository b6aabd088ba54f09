//! `plugin.toml`: what a plugin is, how to start it, what it serves and its limits.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use semver::{Version, VersionReq};
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::protocol::HookTable;

/// The manifest's file name inside a plugin's folder.
pub const MANIFEST_FILE: &str = "plugin.toml";

/// A parsed and checked `plugin.toml`.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// The plugin's unique name, `[a-z0-9_-]+`.
    pub name: String,
    /// Its version.
    pub version: Version,
    /// What it does, for operators.
    pub description: Option<String>,
    /// How to start it.
    pub entry: Entry,
    /// The plugins it needs, by name, with the versions it accepts.
    pub dependencies: BTreeMap<String, VersionReq>,
    /// The hooks it serves.
    pub hooks: HookTable,
    /// The stream each `command_handler` type acts on.
    pub commands: BTreeMap<String, CommandRoute>,
    /// The `[config]` table, as JSON (an empty object when absent): sent in `hello`.
    pub config: Value,
    /// Its limits.
    pub limits: Limits,
    /// The plugin's folder: the working directory of its process.
    pub folder: PathBuf,
}

/// How a plugin starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A program run in the plugin's folder.
    Command {
        /// The program: a name looked up on `PATH`, or a path relative to the folder.
        command: String,
        /// Its arguments.
        args: Vec<String>,
        /// The hex SHA-256 the program's file must have, if the manifest pins it.
        sha256: Option<String>,
    },
    /// A plugin built into the binary, by its registered name.
    CompiledIn(String),
}

/// The stream a `command_handler` type acts on.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandRoute {
    /// The stream category: the stream is `<category>-<id>`.
    pub category: String,
    /// The payload field holding the id.
    pub id_field: String,
    /// Whether the command creates the stream (it must not exist).
    #[serde(default)]
    pub creates: bool,
}

/// A plugin's `[limits]`, with the protocol's defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Address space, in MiB (`RLIMIT_AS`).
    pub memory_mb: u64,
    /// CPU time, in seconds (`RLIMIT_CPU`).
    pub cpu_seconds: u64,
    /// How long a call may take.
    pub call_timeout_ms: u64,
    /// How long the plugin has to answer `hello`.
    pub handshake_timeout_ms: u64,
    /// How often the engine pings the plugin.
    pub health_interval_ms: u64,
    /// Event handlers: attempts before a dead letter.
    pub max_attempts: u32,
    /// Consecutive failed calls that open the plugin's circuit.
    pub breaker_failures: u32,
    /// How long an open circuit fails calls at once.
    pub breaker_open_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            memory_mb: 256,
            cpu_seconds: 3600,
            call_timeout_ms: 2000,
            handshake_timeout_ms: 5000,
            health_interval_ms: 5000,
            max_attempts: 5,
            breaker_failures: 5,
            breaker_open_ms: 10_000,
        }
    }
}

impl Limits {
    /// [`Limits::call_timeout_ms`] as a duration.
    pub fn call_timeout(&self) -> Duration {
        Duration::from_millis(self.call_timeout_ms)
    }

    /// [`Limits::handshake_timeout_ms`] as a duration.
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.handshake_timeout_ms)
    }

    /// [`Limits::health_interval_ms`] as a duration.
    pub fn health_interval(&self) -> Duration {
        Duration::from_millis(self.health_interval_ms)
    }

    /// [`Limits::breaker_open_ms`] as a duration.
    pub fn breaker_open(&self) -> Duration {
        Duration::from_millis(self.breaker_open_ms)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    name: String,
    version: String,
    description: Option<String>,
    entry: RawEntry,
    #[serde(default)]
    dependencies: BTreeMap<String, String>,
    #[serde(default)]
    hooks: HookTable,
    #[serde(default)]
    commands: BTreeMap<String, CommandRoute>,
    config: Option<toml::Table>,
    #[serde(default)]
    limits: Limits,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntry {
    command: Option<String>,
    #[serde(default)]
    args: Vec<String>,
    sha256: Option<String>,
    compiled_in: Option<String>,
}

impl Manifest {
    /// Reads and checks `<folder>/plugin.toml`.
    pub fn load(folder: &Path) -> Result<Self> {
        let path = folder.join(MANIFEST_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| Error::Manifest {
            path: path.clone(),
            message: format!("cannot read: {e}"),
        })?;
        Self::parse(&text, folder)
    }

    /// Parses and checks the text of `<folder>/plugin.toml`.
    pub fn parse(text: &str, folder: &Path) -> Result<Self> {
        let path = folder.join(MANIFEST_FILE);
        let fail = |message: String| Error::Manifest {
            path: path.clone(),
            message,
        };
        let raw: RawManifest = toml::from_str(text).map_err(|e| fail(e.to_string()))?;
        if raw.name.is_empty()
            || !raw
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        {
            return Err(fail(format!("name '{}' must match [a-z0-9_-]+", raw.name)));
        }
        let version = Version::parse(&raw.version)
            .map_err(|e| fail(format!("version '{}' is not semver: {e}", raw.version)))?;
        let entry = match (raw.entry.command, raw.entry.compiled_in) {
            (Some(command), None) => {
                if let Some(digest) = &raw.entry.sha256
                    && (digest.len() != 64 || !digest.bytes().all(|b| b.is_ascii_hexdigit()))
                {
                    return Err(fail(
                        "entry.sha256 must be 64 hexadecimal digits".to_owned(),
                    ));
                }
                Entry::Command {
                    command,
                    args: raw.entry.args,
                    sha256: raw.entry.sha256.map(|d| d.to_ascii_lowercase()),
                }
            }
            (None, Some(name)) if raw.entry.args.is_empty() && raw.entry.sha256.is_none() => {
                Entry::CompiledIn(name)
            }
            (None, Some(_)) => {
                return Err(fail(
                    "entry.compiled_in takes no entry.args or entry.sha256".to_owned(),
                ));
            }
            _ => {
                return Err(fail(
                    "entry needs exactly one of entry.command and entry.compiled_in".to_owned(),
                ));
            }
        };
        let mut dependencies = BTreeMap::new();
        for (name, range) in raw.dependencies {
            let requirement = VersionReq::parse(&range).map_err(|e| {
                fail(format!(
                    "dependencies.{name}: '{range}' is not a semver range: {e}"
                ))
            })?;
            dependencies.insert(name, requirement);
        }
        for command in &raw.hooks.command_handler {
            if !raw.commands.contains_key(command) {
                return Err(fail(format!(
                    "hooks.command_handler lists '{command}' but [commands.{command}] is missing"
                )));
            }
        }
        if let Some(extra) = raw
            .commands
            .keys()
            .find(|command| !raw.hooks.command_handler.contains(command))
        {
            return Err(fail(format!(
                "[commands.{extra}] is not listed in hooks.command_handler"
            )));
        }
        let limits = raw.limits;
        for (field, value) in [
            ("memory_mb", limits.memory_mb),
            ("cpu_seconds", limits.cpu_seconds),
            ("call_timeout_ms", limits.call_timeout_ms),
            ("handshake_timeout_ms", limits.handshake_timeout_ms),
            ("health_interval_ms", limits.health_interval_ms),
            ("max_attempts", u64::from(limits.max_attempts)),
            ("breaker_failures", u64::from(limits.breaker_failures)),
        ] {
            if value == 0 {
                return Err(fail(format!("limits.{field} must be positive")));
            }
        }
        let config = serde_json::to_value(raw.config.unwrap_or_default())
            .map_err(|e| fail(format!("config: {e}")))?;
        Ok(Self {
            name: raw.name,
            version,
            description: raw.description,
            entry,
            dependencies,
            hooks: raw.hooks,
            commands: raw.commands,
            config,
            limits,
            folder: folder.to_path_buf(),
        })
    }

    /// The manifest's path.
    pub fn path(&self) -> PathBuf {
        self.folder.join(MANIFEST_FILE)
    }

    /// The program file the entry runs: relative to the folder when it names a path, else
    /// looked up on `PATH`. `None` for a compiled-in plugin or a program not found.
    pub fn executable(&self) -> Option<PathBuf> {
        let Entry::Command { command, .. } = &self.entry else {
            return None;
        };
        if command.contains('/') {
            return Some(self.folder.join(command));
        }
        std::env::split_paths(&std::env::var_os("PATH")?)
            .map(|dir| dir.join(command))
            .find(|candidate| candidate.is_file())
    }

    /// Checks the executable against the manifest's `entry.sha256`, if it pins one.
    pub fn verify_executable(&self) -> Result<()> {
        let Entry::Command {
            sha256: Some(expected),
            command,
            ..
        } = &self.entry
        else {
            return Ok(());
        };
        let executable = self.executable().ok_or_else(|| Error::Start {
            plugin: self.name.clone(),
            message: format!("program '{command}' not found"),
        })?;
        let bytes = std::fs::read(&executable)?;
        let actual: String = Sha256::digest(&bytes)
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect();
        if &actual == expected {
            Ok(())
        } else {
            Err(Error::ChecksumMismatch {
                plugin: self.name.clone(),
                executable,
                expected: expected.clone(),
                actual,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Manifest> {
        Manifest::parse(text, Path::new("/plugins/p"))
    }

    const FULL: &str = r#"
name = "email-enricher"
version = "1.2.0"
[entry]
command = "python3"
args = ["enricher.py"]
[dependencies]
address-normaliser = ">=1.0, <2"
[hooks]
before_command = ["create_user"]
command_handler = ["change_email"]
[commands.change_email]
category = "user"
id_field = "user_id"
[config]
domain_blocklist = ["example.org"]
nested = { depth = 2 }
[limits]
call_timeout_ms = 500
"#;

    #[test]
    fn a_full_manifest_parses_with_defaults_for_the_rest() {
        let manifest = parse(FULL).unwrap();
        assert_eq!(manifest.name, "email-enricher");
        assert_eq!(manifest.version, Version::new(1, 2, 0));
        assert!(manifest.dependencies["address-normaliser"].matches(&Version::new(1, 9, 0)));
        assert_eq!(manifest.hooks.before_command, ["create_user"]);
        assert_eq!(manifest.commands["change_email"].category, "user");
        assert!(!manifest.commands["change_email"].creates);
        assert_eq!(
            manifest.config,
            serde_json::json!({"domain_blocklist": ["example.org"], "nested": {"depth": 2}})
        );
        assert_eq!(manifest.limits.call_timeout_ms, 500);
        assert_eq!(manifest.limits.memory_mb, 256);
        assert_eq!(manifest.limits.handshake_timeout_ms, 5000);
    }

    #[test]
    fn errors_name_the_file_and_the_field() {
        // (text replaced, its replacement, what the error must name)
        let cases = [
            ("email-enricher", "Email", "name 'Email'"),
            ("\"1.2.0\"", "\"1.2\"", "version '1.2'"),
            (">=1.0, <2", "one", "dependencies.address-normaliser"),
            (
                "call_timeout_ms = 500",
                "call_timeout_ms = 0",
                "limits.call_timeout_ms",
            ),
            ("call_timeout_ms", "call_timeout", "call_timeout"),
            (
                "[commands.change_email]",
                "[commands.other]",
                "[commands.change_email]",
            ),
            (
                "command = \"python3\"",
                "compiled_in = \"x\"",
                "entry.compiled_in",
            ),
            ("command = \"python3\"", "", "exactly one of entry.command"),
            ("args = [", "sha256 = \"ab\"\nargs = [", "entry.sha256"),
        ];
        for (from, to, field) in cases {
            let text = FULL.replace(from, to);
            let message = parse(&text).unwrap_err().to_string();
            assert!(message.starts_with("/plugins/p/plugin.toml: "), "{message}");
            assert!(message.contains(field), "{message} does not name {field}");
        }
    }

    #[test]
    fn a_compiled_in_entry_needs_no_command() {
        let text =
            "name = \"audit\"\nversion = \"0.1.0\"\n[entry]\ncompiled_in = \"audit-trail\"\n";
        let manifest = parse(text).unwrap();
        assert_eq!(manifest.entry, Entry::CompiledIn("audit-trail".into()));
        assert_eq!(manifest.config, serde_json::json!({}));
    }
}
