//! The wire protocol of `docs/plugin-protocol.md`: frames (a big-endian `u32` length, then
//! that many bytes of one JSON object with a string `type`) and the messages they carry.
//!
//! Unknown fields are ignored; an unknown `type`, a frame over [`MAX_FRAME_BYTES`], or bytes
//! that are not a JSON object with a string `type` are a [`Violation`].

use flexcore_app::plugin::{FailureDetail, Hook, PluginFailure};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::error::{Error, Result, Violation};

/// The protocol version this engine speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// The largest frame either side may send: 16 MiB of JSON.
pub const MAX_FRAME_BYTES: usize = 16 * 1024 * 1024;

/// The hooks a plugin serves, and for which types (a hook absent on the wire is empty).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct HookTable {
    /// Command types whose commands the plugin sees before their handler.
    pub before_command: Vec<String>,
    /// Command types the plugin owns.
    pub command_handler: Vec<String>,
    /// Event types (a trailing `*` matches a prefix) the plugin reacts to.
    pub event_handler: Vec<String>,
    /// Query types the plugin answers.
    pub query_handler: Vec<String>,
}

impl HookTable {
    /// The types declared for `hook`.
    pub fn targets(&self, hook: Hook) -> &[String] {
        match hook {
            Hook::BeforeCommand => &self.before_command,
            Hook::CommandHandler => &self.command_handler,
            Hook::EventHandler => &self.event_handler,
            Hook::QueryHandler => &self.query_handler,
        }
    }

    /// Whether `target` is declared for `hook` (an `event_handler` pattern ending in `*`
    /// matches by prefix).
    pub fn serves(&self, hook: Hook, target: &str) -> bool {
        self.targets(hook)
            .iter()
            .any(|declared| match declared.strip_suffix('*') {
                Some(prefix) if hook == Hook::EventHandler => target.starts_with(prefix),
                _ => declared == target,
            })
    }
}

/// The plugin a `hello` is addressed to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginIdentity {
    /// The manifest's name.
    pub name: String,
    /// The manifest's version.
    pub version: String,
}

/// Who sent the command or query, on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WirePrincipal {
    /// The subject.
    pub sub: String,
    /// Its roles.
    pub roles: Vec<String>,
    /// Its tenant, if any.
    pub tenant: Option<String>,
}

/// A call's `context`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireContext {
    /// The request's correlation id.
    pub correlation_id: Option<String>,
    /// The message that caused this one.
    pub causation_id: Option<String>,
    /// Who asks (`null` when authentication is off).
    pub principal: Option<WirePrincipal>,
    /// How long the engine waits for the answer.
    pub deadline_ms: u64,
}

/// Every message of protocol version 1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Message {
    /// Engine → plugin: the handshake offer with the plugin's configuration.
    Hello {
        /// The protocol version offered.
        protocol: u32,
        /// The engine's name and version.
        engine: String,
        /// The plugin as the manifest names it.
        plugin: PluginIdentity,
        /// The manifest's `[config]`.
        config: Value,
    },
    /// Plugin → engine: initialised, serving these hooks.
    Ready {
        /// The protocol version the plugin speaks.
        protocol: u32,
        /// The plugin's name.
        name: String,
        /// The plugin's version.
        version: String,
        /// The hooks it serves.
        #[serde(default)]
        hooks: HookTable,
    },
    /// Plugin → engine: it cannot start.
    Refuse {
        /// Why.
        message: String,
    },
    /// Engine → plugin: a request.
    Call {
        /// Unique among the calls in flight on the process.
        id: u64,
        /// What is asked.
        hook: Hook,
        /// The type the call is about.
        target: String,
        /// Who asks and until when.
        context: WireContext,
        /// The hook's input.
        data: Value,
    },
    /// Plugin → engine: the answer to call `id`, `ok` or `error`.
    Result {
        /// The call answered.
        id: u64,
        /// The hook's answer.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ok: Option<Value>,
        /// The plugin's refusal.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<WireFailure>,
    },
    /// Engine → plugin: a health check.
    Ping {
        /// Echoed in the `pong`.
        id: u64,
    },
    /// Plugin → engine: the answer to a `ping`.
    Pong {
        /// The ping's id.
        id: u64,
    },
    /// Engine → plugin: finish in-flight calls and exit within `deadline_ms`.
    Shutdown {
        /// How long the plugin has.
        deadline_ms: u64,
    },
    /// Plugin → engine: a log line.
    Log {
        /// `error`, `warn`, `info` or `debug`.
        level: String,
        /// The line.
        message: String,
    },
}

impl Message {
    /// The message's `type` on the wire.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Hello { .. } => "hello",
            Message::Ready { .. } => "ready",
            Message::Refuse { .. } => "refuse",
            Message::Call { .. } => "call",
            Message::Result { .. } => "result",
            Message::Ping { .. } => "ping",
            Message::Pong { .. } => "pong",
            Message::Shutdown { .. } => "shutdown",
            Message::Log { .. } => "log",
        }
    }
}

/// A `result`'s `error` object, leniently read: a missing message or malformed details still
/// make an error the engine can answer with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireFailure {
    /// The error code.
    pub code: String,
    /// The plugin's message.
    #[serde(default)]
    pub message: String,
    /// `validation_failed` details.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FailureDetail>,
}

impl From<WireFailure> for PluginFailure {
    fn from(failure: WireFailure) -> Self {
        PluginFailure {
            code: failure.code,
            message: failure.message,
            errors: failure.errors,
        }
    }
}

/// Reads one frame; `Ok(None)` at a clean end of stream (between frames).
pub async fn read_frame<R: AsyncRead + Unpin>(reader: &mut R) -> Result<Option<Message>> {
    let mut length = [0_u8; 4];
    match reader.read_exact(&mut length).await {
        Ok(_) => {}
        Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(error) => return Err(error.into()),
    }
    let length = u32::from_be_bytes(length) as usize;
    if length > MAX_FRAME_BYTES {
        return Err(Violation::FrameTooLong {
            length,
            limit: MAX_FRAME_BYTES,
        }
        .into());
    }
    let mut body = vec![0_u8; length];
    match reader.read_exact(&mut body).await {
        Ok(_) => {}
        Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => {
            return Err(Violation::Truncated.into());
        }
        Err(error) => return Err(error.into()),
    }
    decode(&body).map(Some)
}

/// Decodes one frame's JSON into a message.
pub fn decode(body: &[u8]) -> Result<Message> {
    // The common case parses once, straight into the message; only a frame that does not
    // parse is looked at again to name what is wrong with it.
    if let Ok(message) = serde_json::from_slice::<Message>(body) {
        return checked(message);
    }
    let value: Value =
        serde_json::from_slice(body).map_err(|e| Violation::NotAMessage(e.to_string()))?;
    match value.get("type") {
        Some(Value::String(_)) => {}
        _ => {
            return Err(
                Violation::NotAMessage("no string `type` in a JSON object".to_owned()).into(),
            );
        }
    }
    let message: Message =
        serde_json::from_value(value).map_err(|e| Violation::BadMessage(e.to_string()))?;
    checked(message)
}

/// `message`, unless it breaks a rule its fields alone cannot express.
fn checked(message: Message) -> Result<Message> {
    if let Message::Result { id, ok, error } = &message
        && ok.is_some() == error.is_some()
    {
        return Err(Violation::BadMessage(format!(
            "result {id} must carry exactly one of `ok` and `error`"
        ))
        .into());
    }
    Ok(message)
}

/// Writes one frame and flushes it.
pub async fn write_frame<W: AsyncWrite + Unpin>(writer: &mut W, message: &Message) -> Result<()> {
    writer.write_all(&encode(message)?).await?;
    writer.flush().await?;
    Ok(())
}

/// One frame (length and JSON) of `message`, ready to write in a single system call.
pub fn encode(message: &Message) -> Result<Vec<u8>> {
    let mut frame = Vec::with_capacity(256);
    frame.extend_from_slice(&[0; 4]);
    serde_json::to_writer(&mut frame, message).map_err(|e| Violation::BadMessage(e.to_string()))?;
    let length = frame.len() - 4;
    if length > MAX_FRAME_BYTES {
        return Err(Violation::FrameTooLong {
            length,
            limit: MAX_FRAME_BYTES,
        }
        .into());
    }
    let length = u32::try_from(length).expect("a frame under 16 MiB fits a u32");
    frame[..4].copy_from_slice(&length.to_be_bytes());
    Ok(frame)
}

/// The violation inside `error`, if it is one.
pub fn violation(error: &Error) -> Option<&Violation> {
    match error {
        Error::Protocol(violation) => Some(violation),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn roundtrip(bytes: Vec<u8>) -> Result<Option<Message>> {
        read_frame(&mut bytes.as_slice()).await
    }

    fn frame(json: &str) -> Vec<u8> {
        let mut bytes = (json.len() as u32).to_be_bytes().to_vec();
        bytes.extend_from_slice(json.as_bytes());
        bytes
    }

    #[tokio::test]
    async fn a_written_frame_reads_back_and_unknown_fields_are_ignored() {
        let mut buffer = Vec::new();
        let ping = Message::Ping { id: 7 };
        write_frame(&mut buffer, &ping).await.unwrap();
        assert_eq!(&buffer[..4], &(buffer.len() as u32 - 4).to_be_bytes());
        assert_eq!(roundtrip(buffer).await.unwrap(), Some(ping));
        let pong = roundtrip(frame(r#"{"type":"pong","id":3,"later":"field"}"#)).await;
        assert_eq!(pong.unwrap(), Some(Message::Pong { id: 3 }));
        assert_eq!(roundtrip(Vec::new()).await.unwrap(), None);
    }

    #[tokio::test]
    async fn broken_frames_are_typed_violations() {
        let cases = [
            (frame("[1,2]"), "NotAMessage"),
            (frame("not json"), "NotAMessage"),
            (frame(r#"{"type":5}"#), "NotAMessage"),
            (frame(r#"{"type":"teleport"}"#), "BadMessage"),
            (frame(r#"{"type":"result","id":1}"#), "BadMessage"),
            (
                frame(r#"{"type":"pong","id":1}"#)[..8].to_vec(),
                "Truncated",
            ),
            (
                ((MAX_FRAME_BYTES + 1) as u32).to_be_bytes().to_vec(),
                "FrameTooLong",
            ),
        ];
        for (bytes, expected) in cases {
            let error = roundtrip(bytes).await.unwrap_err();
            let found = format!("{:?}", violation(&error).expect("a violation"));
            assert!(found.starts_with(expected), "{found} is not {expected}");
        }
    }

    #[test]
    fn a_serves_prefix_patterns_only_for_event_handlers() {
        let hooks = HookTable {
            event_handler: vec!["user.*".into()],
            query_handler: vec!["user.*".into()],
            ..HookTable::default()
        };
        assert!(hooks.serves(Hook::EventHandler, "user.created"));
        assert!(!hooks.serves(Hook::EventHandler, "order.placed"));
        assert!(!hooks.serves(Hook::QueryHandler, "user.created"));
        assert!(hooks.serves(Hook::QueryHandler, "user.*"));
    }
}
