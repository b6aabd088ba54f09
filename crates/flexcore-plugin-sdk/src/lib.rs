//! Write a FlexCore out-of-process plugin in Rust.
//!
//! A plugin is a program the engine starts and talks to over stdin/stdout with the frames and
//! messages of `docs/plugin-protocol.md`. This crate is that protocol and nothing more:
//!
//! - [`frame`] reads and writes frames (4-byte big-endian length, then one JSON object);
//! - [`Plugin`] registers a handler per hook and type, answers the handshake from what was
//!   registered, serves calls on a small pool of std threads (answers go out in any order, each
//!   frame written whole under a lock), answers `ping`, and returns on `shutdown` (after the
//!   calls in flight) or when stdin closes;
//! - [`HandlerError`] is what a handler returns to refuse: each variant is a protocol error code.
//!
//! ```no_run
//! use flexcore_plugin_sdk::{HandlerError, Plugin};
//! use serde_json::json;
//!
//! fn main() -> std::process::ExitCode {
//!     Plugin::new("greeter", "0.1.0")
//!         .query_handler("greeting", |_ctx, data| {
//!             let name = data["params"]["name"]
//!                 .as_str()
//!                 .ok_or_else(|| HandlerError::validation("name is required", "/name", "must be a string"))?;
//!             Ok(json!({"result": format!("hello, {name}")}))
//!         })
//!         .run()
//! }
//! ```
//!
//! A handler must not print to stdout: the stream belongs to the protocol. Use `eprintln!`
//! (the engine logs stderr) or [`Context::log`].

pub mod frame;
mod handler_error;
mod plugin;

pub use handler_error::{FieldError, HandlerError};
pub use plugin::{
    Context, Ending, Hook, LogLevel, PROTOCOL_VERSION, Plugin, PluginError, Principal,
};
