//! What both inbound gateways share: the command message, the reply, and the decision of what
//! happens to a message after its command ran.
//!
//! A message is executed through the [`CommandBus`], then
//! * **success** or a **definitive refusal** (validation, conflict, not found, unauthorized,
//!   forbidden): the reply (when asked for) is sent, then the message is acknowledged — never
//!   before the command's events are committed, since `send` returns only after that;
//! * a **transient failure** (`unavailable`, `internal`): the message is delivered again, up to
//!   [`InboundOptions::max_attempts`] attempts; after the last one it is moved to the dead-letter
//!   queue/stream with the last error (and the error is replied);
//! * a **malformed** message (not JSON, no command type): dead-lettered at once, with a
//!   `bad_request` reply when it names a reply-to.
//!
//! Every command runs with an idempotency key (the message's own, or one derived from its
//! broker id), so a message delivered again to the same process (a lost acknowledgement, a
//! reconnect) is answered from the idempotency decorator's memory instead of running twice.
//! That memory is in-process: a message redelivered after the process died runs again, so
//! handlers must tolerate it (the sample's `create_user` then answers 409 for the address).

use std::sync::Arc;
use std::time::Duration;

use flexcore_app::command::{Command, CommandBus, CommandContext, CommandOutcome};
use flexcore_app::follow::Backoff;
use flexcore_app::security::{Gatekeeper, Presented};
use flexcore_app::{Error, ErrorKind};
use flexcore_domain::DomainError;
use serde::Deserialize;
use serde_json::{Map, Value, json};

/// A command message: the JSON body of a RabbitMQ message, or the `message` field of a Redis
/// stream entry (see the crate docs for where else each field may come from).
///
/// ```json
/// {"command_type": "create_user",
///  "payload": {"email": "ada@example.com", "profile": {}},
///  "idempotency_key": "7c0d…",
///  "reply_to": "my-replies",
///  "correlation_id": "req-42"}
/// ```
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct CommandMessage {
    /// Selects the handler; may come from a header/field instead.
    #[serde(default)]
    pub command_type: Option<String>,
    /// The command's fields (`{}` when absent).
    #[serde(default = "empty_object")]
    pub payload: Value,
    /// The idempotency key; defaults to one derived from the message's broker id.
    #[serde(default)]
    pub idempotency_key: Option<String>,
    /// Where to send the reply: a queue (RabbitMQ) or a stream key (Redis).
    #[serde(default)]
    pub reply_to: Option<String>,
    /// Echoed in the reply, and the correlation id of the events the command produces.
    #[serde(default)]
    pub correlation_id: Option<String>,
    /// `Bearer <token>`, when authentication is on (also from the `authorization` header or
    /// field).
    #[serde(default)]
    pub authorization: Option<MessageSecret>,
    /// An API key, when authentication is on (also from the `x-api-key` header or field).
    #[serde(default)]
    pub api_key: Option<MessageSecret>,
}

/// A credential a message carries: kept out of `Debug` output (and so out of logs).
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct MessageSecret(pub String);

impl std::fmt::Debug for MessageSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

fn empty_object() -> Value {
    Value::Object(Map::new())
}

impl CommandMessage {
    /// Parses a message body. An empty body is an empty message (everything from headers).
    pub fn from_json(body: &[u8]) -> Result<Self, String> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self {
                payload: empty_object(),
                ..Self::default()
            });
        }
        let message: Self = serde_json::from_slice(body)
            .map_err(|e| format!("the message is not a JSON command message: {e}"))?;
        if !message.payload.is_object() {
            return Err("the message's payload must be a JSON object".into());
        }
        Ok(message)
    }
}

/// How an inbound gateway retries, waits and stops.
#[derive(Debug, Clone)]
pub struct InboundOptions {
    /// Attempts per message before a transient failure dead-letters it (at least 1).
    pub max_attempts: u32,
    /// How long a transiently failed message waits before its next attempt.
    pub retry_delay: Duration,
    /// Redis: how long an entry must stay unacknowledged since its last delivery before any
    /// member of the group may take it over (its consumer died, or its command is still
    /// running). Keep it above the slowest command: a member taking over a running command
    /// runs it a second time. (RabbitMQ redelivers when the consumer's channel closes.)
    pub claim_idle: Duration,
    /// Messages handled at once (RabbitMQ prefetch; Redis entries per read).
    pub concurrency: usize,
    /// RabbitMQ: at shutdown, how long in-flight messages may finish before they are abandoned
    /// (unacknowledged: the broker delivers them again later). The Redis consumer abandons
    /// them at once (they stay pending and are reclaimed).
    pub shutdown_grace: Duration,
    /// The longest wait between reconnection attempts after a broker failure.
    pub max_backoff: Duration,
    /// Authenticates each message's credential (open by default: no credential needed).
    pub gate: Arc<Gatekeeper>,
}

impl Default for InboundOptions {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            retry_delay: Duration::from_secs(1),
            claim_idle: Duration::from_secs(30),
            concurrency: 16,
            shutdown_grace: Duration::from_secs(10),
            max_backoff: Duration::from_secs(10),
            gate: Arc::default(),
        }
    }
}

/// What to do with a message after its command ran.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Disposition {
    /// Reply (if asked) and acknowledge.
    Done {
        /// The reply body.
        reply: Value,
    },
    /// Deliver again later (attempts remain).
    Retry {
        /// Why this attempt failed.
        error: String,
    },
    /// Move to the dead-letter queue/stream, reply (if asked) and acknowledge.
    DeadLetter {
        /// The last error.
        error: String,
        /// Its stable code.
        code: &'static str,
        /// The reply body.
        reply: Value,
    },
}

/// Runs one message's command and decides what happens to the message.
pub(crate) async fn execute(
    bus: &Arc<dyn CommandBus>,
    message: CommandMessage,
    idempotency_key: Option<String>,
    attempt: u32,
    options: &InboundOptions,
) -> Disposition {
    let Some(command_type) = message.command_type.filter(|t| !t.is_empty()) else {
        return malformed("the message names no command_type", None);
    };
    let correlation_id = message.correlation_id.as_deref();
    let action = format!("inbound {command_type}");
    let presented = Presented::credentials(
        message.authorization.as_ref().map(|s| s.0.as_str()),
        message.api_key.as_ref().map(|key| key.0.as_str()),
        &action,
    );
    // A refused credential is a definitive answer: replied, acknowledged, not retried.
    let principal = match options.gate.authenticate(&presented) {
        Ok(principal) => principal,
        Err(error) => {
            return Disposition::Done {
                reply: reply_error(&error, correlation_id),
            };
        }
    };
    let ctx = CommandContext {
        correlation_id: message.correlation_id.clone(),
        idempotency_key: message.idempotency_key.or(idempotency_key),
        tenant: principal.as_ref().and_then(|p| p.tenant.clone()),
        principal,
        ..CommandContext::default()
    };
    let command = Command {
        command_type,
        payload: message.payload,
    };
    match bus.send(&ctx, &command).await {
        Ok(outcome) => Disposition::Done {
            reply: reply_ok(&outcome, correlation_id),
        },
        Err(error) if is_transient(&error) => {
            if attempt < options.max_attempts.max(1) {
                tracing::warn!(
                    command_type = %command.command_type,
                    attempt,
                    error = %error,
                    "command failed; the message will be delivered again"
                );
                Disposition::Retry {
                    error: error.to_string(),
                }
            } else {
                tracing::error!(
                    command_type = %command.command_type,
                    attempt,
                    error = %error,
                    "command failed on its last attempt; dead-lettering the message"
                );
                let code = error.kind().code();
                Disposition::DeadLetter {
                    error: error.to_string(),
                    code,
                    reply: reply_error(&error, correlation_id),
                }
            }
        }
        Err(error) => Disposition::Done {
            reply: reply_error(&error, correlation_id),
        },
    }
}

/// The disposition of a message that cannot be read as a command.
pub(crate) fn malformed(detail: &str, correlation_id: Option<&str>) -> Disposition {
    let mut reply = json!({
        "ok": false,
        "error": {
            "type": "about:blank",
            "title": "Bad Request",
            "status": 400,
            "code": "bad_request",
            "detail": detail,
        }
    });
    if let Some(id) = correlation_id {
        reply["correlation_id"] = json!(id);
    }
    Disposition::DeadLetter {
        error: detail.to_owned(),
        code: "bad_request",
        reply,
    }
}

/// Failures that a later attempt may not repeat.
pub fn is_transient(error: &Error) -> bool {
    error.is_transient()
}

/// The reply to a command that succeeded:
/// `{"ok": true, "result": {command_id, stream_id, version, events: [...]}, "correlation_id"?}`
/// (`result` is the body of the HTTP gateway's 200 answer).
pub fn reply_ok(outcome: &CommandOutcome, correlation_id: Option<&str>) -> Value {
    let mut reply = json!({ "ok": true, "result": outcome });
    if let Some(id) = correlation_id {
        reply["correlation_id"] = json!(id);
    }
    reply
}

/// The reply to a command that failed: `{"ok": false, "error": problem, "correlation_id"?}`,
/// where `problem` is the HTTP gateway's problem document (`type`, `title`, `status`, `code`,
/// `detail`; `current_version` for a wrong expected version, `errors` for a schema
/// violation). Internal causes are logged, not sent.
pub fn reply_error(error: &Error, correlation_id: Option<&str>) -> Value {
    let (code, status) = (error.kind().code(), error.kind().http_status());
    let detail = match error.kind() {
        ErrorKind::Internal => "internal error".to_owned(),
        ErrorKind::Unavailable => "a backend is unavailable; retry later".to_owned(),
        _ => error.client_message(),
    };
    let mut problem = json!({
        "type": "about:blank",
        "title": title(status),
        "status": status,
        "code": code,
        "detail": detail,
    });
    if let Error::Domain(DomainError::WrongExpectedVersion {
        current, expected, ..
    }) = error
    {
        problem["current_version"] = json!(current);
        problem["expected_version"] = json!(expected);
    }
    if !error.violations().is_empty() {
        problem["errors"] = json!(error.violations());
    }
    let mut reply = json!({ "ok": false, "error": problem });
    if let Some(id) = correlation_id {
        reply["correlation_id"] = json!(id);
    }
    reply
}

fn title(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        429 => "Too Many Requests",
        404 => "Not Found",
        409 => "Conflict",
        422 => "Unprocessable Entity",
        503 => "Service Unavailable",
        _ => "Internal Server Error",
    }
}

/// The wait between reconnection attempts of both consumers: 100 ms, doubling up to
/// `max_backoff` (at least 50 ms). It is not reset by a session that ran well, so a broker
/// that keeps failing is not hammered whatever lies between the failures.
pub(crate) fn reconnect_backoff(max_backoff: Duration) -> Backoff {
    Backoff::new(
        Duration::from_millis(100),
        max_backoff.max(Duration::from_millis(50)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_parse_with_defaults() {
        let m = CommandMessage::from_json(br#"{"command_type":"x"}"#).unwrap();
        assert_eq!(m.command_type.as_deref(), Some("x"));
        assert_eq!(m.payload, json!({}));
        assert!(CommandMessage::from_json(b"not json").is_err());
        assert!(CommandMessage::from_json(br#"{"payload":[1]}"#).is_err());
        assert_eq!(CommandMessage::from_json(b"").unwrap().payload, json!({}));
    }

    #[test]
    fn errors_become_problems_with_stable_codes() {
        let reply = reply_error(&Error::validation("bad email"), Some("c-1"));
        assert_eq!(reply["ok"], json!(false));
        assert_eq!(reply["error"]["code"], json!("validation_failed"));
        assert_eq!(reply["error"]["status"], json!(422));
        assert_eq!(reply["error"]["detail"], json!("bad email"));
        assert_eq!(reply["correlation_id"], json!("c-1"));
        let internal = reply_error(&Error::internal("secret"), None);
        assert_eq!(internal["error"]["detail"], json!("internal error"));
        assert!(is_transient(&Error::unavailable("x")));
        assert!(!is_transient(&Error::UnknownCommand("x".into())));
    }

    #[test]
    fn a_schema_violation_lists_its_paths_as_the_http_problem_does() {
        use flexcore_app::validation::{SchemaViolation, Violation};
        let violation = Error::from(SchemaViolation {
            subject: "command 'create_user'".into(),
            violations: vec![Violation {
                path: "/email".into(),
                message: "value is not of type \"string\"".into(),
            }],
        });
        let reply = reply_error(&violation, None);
        assert_eq!(reply["error"]["code"], json!("validation_failed"));
        assert_eq!(
            reply["error"]["detail"],
            json!(
                "command 'create_user' does not match its schema: /email: value is not of type \"string\""
            )
        );
        assert_eq!(
            reply["error"]["errors"],
            json!([{"path": "/email", "message": "value is not of type \"string\""}])
        );
    }
}
