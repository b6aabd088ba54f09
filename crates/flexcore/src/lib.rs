//! FlexCore's composition root: the only place that picks adapters.
//!
//! * [`cli`]: the command line (`serve`, `bench`, and the client commands);
//! * [`client`]: `send`, `ask`, `stream read`, `events tail` against a running server;
//! * [`config`]: settings from `flexcore.toml`, `FLEXCORE_*` variables and flags;
//! * [`operations`]: `projections status|rebuild`, `subscriptions list|dead-letters`;
//! * [`logging`]: text or JSON logs with sensitive values masked;
//! * [`python`]: Python handler modules, hot-reloaded, in place of the sample domain;
//! * [`readside`]: the read-model store, the projections and the query cache they invalidate;
//! * [`server`]: opens the store named by the store URL, wires the buses and the sample
//!   domain, and serves HTTP until shutdown;
//! * [`telemetry`]: OTLP export of spans and W3C trace context;
//! * [`bench`]: `flexcore bench`, the store benchmarks with their baselines.

pub mod bench;
pub mod cli;
pub mod client;
pub mod config;
pub mod logging;
pub mod operations;
pub mod python;
pub mod readside;
pub mod server;
pub mod telemetry;
