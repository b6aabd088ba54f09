//! FlexCore's out-of-process plugin host (`docs/plugin-protocol.md`).
//!
//! * [`protocol`]: frames and messages on the plugin's stdin and stdout;
//! * [`manifest`]: the manifest, `plugin.toml`;
//! * [`discovery`]: every plugin of a plugins folder, dependencies first.

pub mod discovery;
mod error;
pub mod manifest;
pub mod protocol;

pub use discovery::{Discovery, discover};
pub use error::{Error, Result, Violation};
pub use manifest::{Entry, Limits, Manifest};
