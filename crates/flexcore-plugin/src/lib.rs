//! FlexCore's out-of-process plugin host (`docs/plugin-protocol.md`).
//!
//! * [`protocol`]: frames and messages on the plugin's stdin and stdout;
//! * [`manifest`]: the manifest, `plugin.toml`;
//! * [`discovery`]: every plugin of a plugins folder, dependencies first;
//! * [`Supervisor`]: runs one plugin process — isolation, handshake, multiplexed calls,
//!   health pings, restarts with backoff, a circuit breaker, hot swap — and implements
//!   [`flexcore_app::plugin::Plugin`] for it;
//! * [`PluginModule`]: every plugin of a plugins folder as the engine's `plugins` domain
//!   module;
//! * [`PayloadGuard`]: a compiled-in plugin that trims and bounds command payloads.

mod connection;
pub mod discovery;
mod error;
pub mod manifest;
mod module;
mod payload_guard;
mod process;
pub mod protocol;
mod supervisor;

pub use discovery::{Discovery, discover};
pub use error::{Error, Result, Violation};
pub use manifest::{Entry, Limits, Manifest};
pub use module::{CompiledInCatalogue, MODULE_NAME, PluginModule};
pub use payload_guard::{PAYLOAD_GUARD, PayloadGuard};
pub use process::{MAX_LOG_LINE_BYTES, MAX_LOG_LINES_PER_SECOND};
pub use supervisor::{PluginState, PluginStatus, Supervisor, SupervisorOptions};
