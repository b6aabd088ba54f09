//! FlexCore's composition root: the only place that picks adapters.
//!
//! * [`cli`]: the command line (`serve`, `config show`, and the client commands);
//! * [`client`]: `send`, `ask`, `stream read`, `events tail` against a running server;
//! * [`config`]: settings from `flexcore.toml`, `FLEXCORE_*` variables and flags;
//! * [`operations`]: `projections status|rebuild`, `subscriptions list|dead-letters`;
//! * [`gdpr`]: the crypto-shredding store layer (master key, key vault over the store's key
//!   table) and `gdpr export|forget` against a running server;
//! * [`logging`]: text or JSON logs with sensitive values masked;
//! * [`modules`]: the domain modules the configuration can name (`users`, `python`);
//! * [`readside`]: the read-model store, the declared projections and the query cache they
//!   invalidate;
//! * [`server`]: opens the store named by the store URL, assembles the engine around the
//!   loaded modules, and serves HTTP and gRPC until shutdown;
//! * [`python_check`]: `flexcore python check`, which imports Python handler modules and
//!   lists what they register, or shows the first error with its traceback;
//! * [`store_url`]: the event store and read-model store a store URL names;
//! * [`telemetry`]: OTLP export of spans and W3C trace context;
//! * [`validation`]: `[limits]` and `[schemas]`, compiled into the store and command-bus
//!   decorators of `flexcore_app::validation` (JSON Schema through the `jsonschema` crate).
//!
//! The benchmarks live in their own crate and binary, `flexcore-bench`, which drives this
//! library (the server, the store URLs, the buses) as `flexcore serve` does.

pub mod audit;
pub mod cli;
pub mod client;
pub mod config;
pub mod gdpr;
pub mod logging;
pub mod modules;
pub mod operations;
pub mod python_check;
pub mod readside;
pub mod security;
pub mod server;
pub mod store_url;
pub mod telemetry;
pub mod validation;
