//! Plugins: code outside the engine's own crates that answers hooks.
//!
//! A plugin is either compiled into the binary (it implements [`Plugin`] directly) or runs as
//! a child process speaking the protocol of `docs/plugin-protocol.md` (the supervisor of
//! `flexcore-plugin` implements [`Plugin`] for it). The engine treats both alike: it
//! initialises a plugin once with its configuration, hands it [`PluginCall`]s, and shuts it
//! down.
//!
//! A plugin's refusal travels as a [`PluginFailure`] (the protocol's `error` object), which
//! [`PluginFailure::into_error`] turns into the engine's [`Error`] by the protocol's table.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use flexcore_domain::DomainError;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::security::Principal;
use crate::validation::Violation;
use crate::{Error, Result};

/// The seed's five operations, for plugins of either kind.
#[async_trait]
pub trait Plugin: Send + Sync {
    /// The plugin's unique name (`[a-z0-9_-]+`), in logs and errors.
    fn name(&self) -> &str;

    /// The semantic version the plugin currently serves. A `String` rather than `&str`,
    /// because a hot-swapped plugin changes version while the engine holds it.
    fn version(&self) -> String;

    /// Initialises the plugin with its configuration (the manifest's `[config]` as JSON); no
    /// call is made before this returns `Ok`.
    async fn initialize(&self, config: Value) -> Result<()>;

    /// Answers one call; the answer's shape depends on the hook (see the protocol, section 3).
    async fn process(&self, call: PluginCall) -> Result<Value>;

    /// Finishes in-flight calls and releases the plugin's resources; no call follows.
    async fn shutdown(&self) -> Result<()>;
}

/// What the engine asks a plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Hook {
    /// Enrich, validate or reject a command before its handler runs.
    BeforeCommand,
    /// Decide the events of a command type the plugin owns.
    CommandHandler,
    /// React to an event, as a durable consumer.
    EventHandler,
    /// Answer a query type.
    QueryHandler,
}

impl Hook {
    /// Every hook, in the protocol's order.
    pub const ALL: [Hook; 4] = [
        Hook::BeforeCommand,
        Hook::CommandHandler,
        Hook::EventHandler,
        Hook::QueryHandler,
    ];

    /// The hook's name on the wire and in manifests (`before_command`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Hook::BeforeCommand => "before_command",
            Hook::CommandHandler => "command_handler",
            Hook::EventHandler => "event_handler",
            Hook::QueryHandler => "query_handler",
        }
    }
}

impl std::fmt::Display for Hook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One request to a plugin.
#[derive(Debug, Clone)]
pub struct PluginCall {
    /// Which hook is asked.
    pub hook: Hook,
    /// The command, event or query type the call is about.
    pub target: String,
    /// Who asks, on behalf of what, and how long the caller waits.
    pub context: PluginCallContext,
    /// The hook's input (see the protocol, section 3).
    pub data: Value,
}

/// The circumstances of a [`PluginCall`].
#[derive(Debug, Clone, Default)]
pub struct PluginCallContext {
    /// The request's correlation id, if any.
    pub correlation_id: Option<String>,
    /// The message that caused this one, if any.
    pub causation_id: Option<String>,
    /// Who sent the command or query (`None` when authentication is off).
    pub principal: Option<Arc<Principal>>,
    /// How long the caller waits at most; a plugin's own call timeout may be shorter.
    pub deadline: Option<Duration>,
}

/// A plugin's refusal of a call: the protocol's `error` object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginFailure {
    /// `validation_failed`, `not_found`, `conflict`, `forbidden` or anything else (internal).
    pub code: String,
    /// What went wrong.
    pub message: String,
    /// For `validation_failed`: the rules broken, each at its JSON pointer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FailureDetail>,
}

/// One rule a plugin says a payload breaks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailureDetail {
    /// Where, as a JSON pointer.
    pub path: String,
    /// What is wrong there.
    pub message: String,
}

impl PluginFailure {
    /// The engine's error for this refusal by the plugin `plugin`, by the protocol's table:
    /// `validation_failed` keeps its details, unknown codes become internal errors whose
    /// message (with the plugin's) stays in the logs.
    pub fn into_error(self, plugin: &str) -> Error {
        match self.code.as_str() {
            "validation_failed" => Error::Rejected {
                message: self.message,
                violations: self
                    .errors
                    .into_iter()
                    .map(|detail| Violation {
                        path: detail.path,
                        message: detail.message,
                    })
                    .collect(),
            },
            "not_found" => DomainError::NotFound(self.message).into(),
            "conflict" => DomainError::AlreadyExists(self.message).into(),
            "forbidden" => DomainError::Forbidden(self.message).into(),
            code => Error::internal(format!(
                "plugin '{plugin}' failed with code '{code}': {}",
                self.message
            )),
        }
    }
}

/// What operators see of one plugin (`GET /v1/plugins`, `flexcore plugins list`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PluginReport {
    /// The plugin's name (for a plugin left out at discovery: its name or folder).
    pub name: String,
    /// The version serving or last tried (`None` when the manifest could not be used).
    pub version: Option<String>,
    /// `starting`, `ready`, `backoff`, `refused`, `broken`, `stopped`, or `rejected` for a
    /// plugin left out at discovery (a bad manifest, a missing dependency, a cycle).
    pub state: String,
    /// How many times its process was restarted after dying.
    pub restarts: u64,
    /// The last failure: a crash, a refusal, a failed reload, why it was left out.
    pub last_error: Option<String>,
    /// Calls made to it.
    pub calls: u64,
    /// The 99th percentile of its last calls' durations, in milliseconds.
    pub p99_ms: Option<f64>,
}

/// The plugins a server hosts, as the operator routes see them: the port through which the
/// HTTP gateway lists and reloads plugins without knowing how they are hosted.
#[async_trait]
pub trait PluginOperations: Send + Sync {
    /// Every plugin, in start order, then the plugins left out.
    fn reports(&self) -> Vec<PluginReport>;

    /// Swaps `name` for its current files (a new version, a changed `[config]`) without
    /// losing a call, and reports it afterwards; an unknown name is `not_found`.
    async fn reload(&self, name: &str) -> Result<PluginReport>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    fn failure(code: &str) -> PluginFailure {
        PluginFailure {
            code: code.to_owned(),
            message: "email is blocked".to_owned(),
            errors: vec![FailureDetail {
                path: "/email".to_owned(),
                message: "domain is blocked".to_owned(),
            }],
        }
    }

    #[test]
    fn each_protocol_code_maps_to_its_kind() {
        let kinds: Vec<_> = [
            "validation_failed",
            "not_found",
            "conflict",
            "forbidden",
            "boom",
        ]
        .into_iter()
        .map(|code| failure(code).into_error("enricher").kind())
        .collect();
        assert_eq!(
            kinds,
            [
                ErrorKind::Validation,
                ErrorKind::NotFound,
                ErrorKind::Conflict,
                ErrorKind::Forbidden,
                ErrorKind::Internal
            ]
        );
    }

    #[test]
    fn a_validation_failure_keeps_its_details_and_message() {
        let error = failure("validation_failed").into_error("enricher");
        assert_eq!(error.client_message(), "email is blocked");
        assert_eq!(
            error.violations(),
            [Violation {
                path: "/email".into(),
                message: "domain is blocked".into()
            }]
        );
    }

    #[test]
    fn an_unknown_code_hides_the_plugin_message_from_clients() {
        let error = failure("kaboom").into_error("enricher");
        assert_eq!(error.client_message(), "internal server error");
        assert!(error.to_string().contains("plugin 'enricher'"));
        assert!(error.to_string().contains("kaboom"));
    }

    #[test]
    fn hooks_use_the_protocol_names() {
        let names: Vec<_> = Hook::ALL
            .iter()
            .map(|hook| serde_json::to_value(hook).unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "before_command",
                "command_handler",
                "event_handler",
                "query_handler"
            ]
        );
        assert_eq!(Hook::QueryHandler.to_string(), "query_handler");
    }
}
