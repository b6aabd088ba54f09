//! The plugin host's one error type, mapped once into the engine's at the [`Plugin`] boundary.
//!
//! [`Plugin`]: flexcore_app::plugin::Plugin

use std::path::PathBuf;

/// A frame or message that breaks sections 1 or 2 of the protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    /// A frame longer than [`crate::protocol::MAX_FRAME_BYTES`].
    #[error("frame of {length} bytes exceeds the limit of {limit} bytes")]
    FrameTooLong {
        /// The announced length.
        length: usize,
        /// The limit.
        limit: usize,
    },
    /// The stream ended inside a frame.
    #[error("stream ended inside a frame")]
    Truncated,
    /// The frame's bytes are not a JSON object with a string `type`.
    #[error("frame is not a JSON object with a string `type`: {0}")]
    NotAMessage(String),
    /// The `type` is unknown, or the fields do not fit it.
    #[error("bad message: {0}")]
    BadMessage(String),
    /// A message that is valid but not allowed here (a `call` from the plugin, a `ready`
    /// after the handshake).
    #[error("unexpected `{0}` message")]
    Unexpected(String),
    /// A `result` or `pong` for an id that was never sent or was already answered.
    #[error("answer for id {0}, which was never sent or is already answered")]
    UnknownId(u64),
}

/// Everything that can go wrong while hosting plugins.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing a plugin's pipes failed.
    #[error("plugin i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The plugin broke the protocol.
    #[error("protocol violation: {0}")]
    Protocol(#[from] Violation),
    /// A `plugin.toml` is unreadable or invalid.
    #[error("{}: {message}", .path.display())]
    Manifest {
        /// The manifest file.
        path: PathBuf,
        /// The field at fault and what is wrong with it.
        message: String,
    },
    /// A plugin's dependencies cannot be satisfied (missing, out of range, or a cycle).
    #[error("plugin '{plugin}': {message}")]
    Dependency {
        /// The plugin left out.
        plugin: String,
        /// Which dependency and why, naming the plugins involved.
        message: String,
    },
    /// The executable's SHA-256 differs from the manifest's.
    #[error("plugin '{plugin}': {} has sha256 {actual}, the manifest expects {expected}", .executable.display())]
    ChecksumMismatch {
        /// The plugin.
        plugin: String,
        /// The executable checked.
        executable: PathBuf,
        /// The manifest's digest.
        expected: String,
        /// The file's digest.
        actual: String,
    },
    /// The plugin could not be started or failed its handshake.
    #[error("plugin '{plugin}' failed to start: {message}")]
    Start {
        /// The plugin.
        plugin: String,
        /// Why.
        message: String,
    },
    /// The plugin answered `refuse`, or the engine refused its `ready`; it is not restarted
    /// until it is reloaded.
    #[error("plugin '{plugin}' refused: {message}")]
    Refused {
        /// The plugin.
        plugin: String,
        /// The plugin's message, or both sides of the mismatch.
        message: String,
    },
    /// The plugin is not serving (starting, restarting, its circuit open, or stopped).
    #[error("plugin '{plugin}' is unavailable: {message}")]
    Unavailable {
        /// The plugin.
        plugin: String,
        /// Why.
        message: String,
    },
    /// The plugin did not answer a call in time.
    #[error("plugin '{plugin}' did not answer {hook} '{target}' within {timeout_ms} ms")]
    Timeout {
        /// The plugin.
        plugin: String,
        /// The hook asked.
        hook: flexcore_app::plugin::Hook,
        /// The call's target.
        target: String,
        /// The call timeout.
        timeout_ms: u64,
    },
    /// The plugin answered the call with an `error`.
    #[error("plugin '{plugin}' refused the call: {}", .failure.message)]
    Failed {
        /// The plugin.
        plugin: String,
        /// Its error object.
        failure: flexcore_app::plugin::PluginFailure,
    },
}

/// The plugin host's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Whether this start failure will not go away by retrying: the plugin refused, the
    /// engine refused its handshake, or its executable is not the pinned one. Such a plugin
    /// stays down until it is reloaded.
    pub fn is_refusal(&self) -> bool {
        matches!(self, Error::Refused { .. } | Error::ChecksumMismatch { .. })
    }
}

impl From<Error> for flexcore_app::Error {
    fn from(error: Error) -> Self {
        match error {
            Error::Failed { plugin, failure } => failure.into_error(&plugin),
            Error::Unavailable { .. }
            | Error::Timeout { .. }
            | Error::Io(_)
            | Error::Protocol(_) => flexcore_app::Error::unavailable(error.to_string()),
            Error::Manifest { .. } | Error::Dependency { .. } | Error::ChecksumMismatch { .. } => {
                flexcore_app::Error::Configuration(error.to_string())
            }
            Error::Start { .. } | Error::Refused { .. } => {
                flexcore_app::Error::unavailable(error.to_string())
            }
        }
    }
}
