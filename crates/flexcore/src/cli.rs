//! The command line.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// FlexCore: a CQRS + event-sourcing engine — event store, buses, gateways — in one binary.
#[derive(Debug, Parser)]
#[command(
    name = "flexcore",
    version,
    about,
    long_about = None,
    after_help = "Client exit codes: 0 done, 1 refused by the server (4xx), 2 usage error, \
                  3 server unreachable or failing (5xx)."
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server (HTTP API, event store, sample domain).
    Serve(ServeArgs),
    /// Inspect the configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Send a command to a running server.
    Send(crate::client::SendArgs),
    /// Ask a running server a query.
    Ask(crate::client::AskArgs),
    /// Read streams from a running server.
    #[command(subcommand)]
    Stream(crate::client::StreamCommand),
    /// Read the global log from a running server.
    #[command(subcommand)]
    Events(crate::client::EventsCommand),
    /// Projections of a running server: status, blue-green rebuild with progress.
    #[command(subcommand)]
    Projections(crate::operations::ProjectionsCommand),
    /// Durable subscriptions of a running server: status, dead letters, retry, skip.
    #[command(subcommand)]
    Subscriptions(crate::operations::SubscriptionsCommand),
    /// Plugins of a running server: status, hot reload.
    #[command(subcommand)]
    Plugins(crate::operations::PluginsCommand),
    /// Who changed a stream: each event's version, time, type and actor.
    Audit(crate::audit::AuditArgs),
    /// Make credentials: development JWTs, API keys.
    #[command(subcommand)]
    Token(crate::security::TokenCommand),
    /// GDPR tools of a running server: export a data subject's events, forget a subject.
    #[command(subcommand)]
    Gdpr(crate::gdpr::GdprCommand),
    /// Python handler modules: check that they load and list what they register.
    #[command(subcommand)]
    Python(crate::python_check::PythonCommand),
}

/// `flexcore config …`.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the effective settings of `flexcore serve` (file, variables and flags merged),
    /// with secrets masked.
    Show {
        /// The same settings `serve` takes.
        #[command(flatten)]
        settings: ServeArgs,
        /// Print JSON instead of TOML.
        #[arg(long)]
        json: bool,
    },
}

/// Settings for `flexcore serve`; each also comes from its `FLEXCORE_*` variable or the config
/// file (flag > variable > file > default).
#[derive(Debug, Clone, Default, Args)]
pub struct ServeArgs {
    /// The config file [default: ./flexcore.toml if present].
    #[arg(long, env = "FLEXCORE_CONFIG")]
    pub config: Option<PathBuf>,
    /// The HTTP listen address [default: 127.0.0.1:8080].
    #[arg(long, env = "FLEXCORE_HTTP_ADDR")]
    pub http_addr: Option<String>,
    /// The gRPC listen address [default: 127.0.0.1:50051].
    #[arg(long, env = "FLEXCORE_GRPC_ADDR")]
    pub grpc_addr: Option<String>,
    /// The event store: sqlite://path/to/file.db or postgres://user@host:port/db
    /// [default: sqlite://./data/flexcore.db].
    #[arg(long, env = "FLEXCORE_STORE_URL")]
    pub store_url: Option<String>,
    /// The log filter, in RUST_LOG syntax [default: info].
    #[arg(long, env = "FLEXCORE_LOG")]
    pub log: Option<String>,
    /// The log format: text or json [default: text].
    #[arg(long, env = "FLEXCORE_LOG_FORMAT")]
    pub log_format: Option<String>,
    /// Comma-separated fields whose values are masked in logs; with `email`, email addresses
    /// are masked anywhere in a line [default: email,password,token].
    #[arg(long, env = "FLEXCORE_LOG_MASK")]
    pub log_mask: Option<String>,
    /// Export traces over OTLP/gRPC to this collector, e.g. http://127.0.0.1:4317 [default: off].
    #[arg(long, env = "FLEXCORE_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// A folder of plugins (one sub-folder with a plugin.toml each), served as the `plugins`
    /// module [default: none].
    #[arg(long, env = "FLEXCORE_PLUGINS_DIR")]
    pub plugins_dir: Option<std::path::PathBuf>,
    /// The query cache: a redis:// URL (key prefix with ?prefix=) [default: in-process].
    #[arg(long, env = "FLEXCORE_CACHE_URL")]
    pub cache_url: Option<String>,
    /// Publish committed events through the outbox relay to this broker: amqp://…?exchange=,
    /// redis://…?stream=, nats://…?subject_prefix= [default: off].
    #[arg(long, env = "FLEXCORE_OUTBOX_URL")]
    pub outbox_url: Option<String>,
    /// Consume commands from a RabbitMQ queue (amqp://…?queue=) or a Redis stream
    /// (redis://…?stream=) [default: off].
    #[arg(long, env = "FLEXCORE_INBOUND_URL")]
    pub inbound_url: Option<String>,
    /// The largest request body accepted, in bytes [default: 4194304].
    #[arg(long, env = "FLEXCORE_MAX_BODY_BYTES")]
    pub max_body_bytes: Option<usize>,
    /// Connections open at once on each gateway (HTTP, gRPC); more are closed at accept
    /// [default: 4096].
    #[arg(long, env = "FLEXCORE_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// How long an HTTP client may take to send a request's head, and any client (HTTP or
    /// gRPC) its TLS handshake, in ms [default: 10000].
    #[arg(long, env = "FLEXCORE_HEADER_READ_TIMEOUT_MS")]
    pub header_read_timeout_ms: Option<u64>,
    /// Comma-separated domain modules to load: `users` (the built-in Rust sample), `python`
    /// (the Python files of --python-modules) [default: `python` when Python files are
    /// configured, else `users`].
    #[arg(long, env = "FLEXCORE_MODULES")]
    pub modules: Option<String>,
    /// Comma-separated Python handler files (relative to the working directory) of the
    /// `python` module [default: none; file: `[python] modules`].
    #[arg(long, env = "FLEXCORE_PYTHON_MODULES")]
    pub python_modules: Option<String>,
    /// How long one Python handler call may run, in ms [default: 5000].
    #[arg(long, env = "FLEXCORE_PYTHON_TIMEOUT_MS")]
    pub python_timeout_ms: Option<u64>,
    /// Authentication (the rest of the security settings are in the file).
    #[command(flatten)]
    pub auth: crate::security::AuthArgs,
    /// GDPR crypto-shredding: the master key file (32 raw bytes, 64 hex digits or base64)
    /// [default: off; file: `[gdpr] master_key_file`].
    #[arg(long, env = "FLEXCORE_GDPR_MASTER_KEY_FILE")]
    pub gdpr_master_key_file: Option<PathBuf>,
}
