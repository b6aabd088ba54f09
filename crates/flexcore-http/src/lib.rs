//! FlexCore's HTTP gateway.
//!
//! [`router`] builds the whole API as an axum `Router`, so tests drive it without a socket;
//! [`serve`] runs it on a listener until a shutdown future resolves. Every error leaves through
//! one type, [`ApiError`], as `application/problem+json` with a stable `code`. Every `/v1/`
//! request passes the [`AppState::gate`] first (credential, rate limit); the handlers act for
//! its principal, through the buses and a store guarded by the same policy.
//!
//! | route | does |
//! |---|---|
//! | `POST /v1/commands/{command_type}` | send a command (`?async=true`: 202 with a status URL) |
//! | `GET /v1/commands/{command_id}` | the status of a command sent with `async=true` |
//! | `GET`/`POST /v1/queries/{query_type}` | ask a query |
//! | `POST /v1/streams/{stream_id}` | raw append with an expected version |
//! | `GET /v1/streams/{stream_id}` | read a stream (paged, both directions) |
//! | `GET /v1/events` | read the global log (paged, filtered) |
//! | `GET /v1/events/live` | the global log as Server-Sent Events, resumable with `Last-Event-ID` |
//! | `POST /v1/events/live/ticket` | a one-use ticket that opens the live route without a header |
//! | `GET /v1/projections[/{name}]`, `POST /v1/projections/{name}/rebuild` | projection status, blue-green rebuild |
//! | `GET /v1/subscriptions`, `…/{name}/dead-letters`, `POST …/dead-letters/{position}/retry\|skip` | durable consumers and their parked events |
//! | `GET /v1/admin/gdpr/subjects/{subject}/events`, `POST …/forget` | a data subject's events as JSON lines; crypto-shredding |
//! | `GET /health`, `GET /ready` | liveness, readiness |
//! | `GET /metrics` | Prometheus text |
//! | `GET /openapi.json` | the OpenAPI 3 document of all of the above |

mod auth;
mod body;
mod error;
mod live;
mod openapi;
mod operations;
mod routes;
mod serve;

use std::sync::Arc;

use flexcore_app::RequestLimits;
use flexcore_app::command::{AsyncCommands, CommandBus};
use flexcore_app::query::QueryBus;
use flexcore_app::security::Gatekeeper;
use flexcore_app::store::EventStore;
use tokio::sync::watch;

pub use auth::API_KEY_HEADER;
/// Request headers, as the [`AppState::trace_parent`] hook receives them.
pub use axum::http::HeaderMap;
pub use error::ApiError;
pub use flexcore_listener::{ClientCertificatePrincipal, GatewayTls, TlsConfigSource};
pub use operations::Operations;
pub use routes::router;
pub use serve::{ConnectionLimits, serve, serve_with};

/// What the handlers need.
#[derive(Clone)]
pub struct AppState {
    /// Sends commands (with the server's middleware already attached).
    pub commands: Arc<dyn CommandBus>,
    /// Runs `?async=true` commands in the background and remembers their statuses (over the
    /// same bus as `commands`).
    pub async_commands: Arc<AsyncCommands>,
    /// Answers queries.
    pub queries: Arc<dyn QueryBus>,
    /// The event store, for raw appends and reads.
    pub store: Arc<dyn EventStore>,
    /// Request limits (the body size and JSON depth).
    pub limits: RequestLimits,
    /// Renders the Prometheus text exposition for `GET /metrics` (`None`: the route answers
    /// 404). The composition root installs the recorder and hands its renderer over.
    pub metrics: Option<Arc<dyn Fn() -> String + Send + Sync>>,
    /// Makes a request's W3C trace context (`traceparent`) the parent of its `http.request`
    /// span; supplied by the composition root, which owns the tracing setup.
    pub trace_parent: Option<TraceParentHook>,
    /// Extra fields of the `/health` and `/ready` answers, e.g. `python: {ok, error}` (`None`:
    /// none). Details inform; they do not change the status code.
    pub health_details: Option<HealthDetails>,
    /// Projections and durable consumers for the operator routes (default: none).
    pub operations: Operations,
    /// Authenticates, rate-limits and authorizes every `/v1/` request
    /// ([`Gatekeeper::open`]: nobody is asked for a credential).
    pub gate: Arc<Gatekeeper>,
    /// Turns true when the server shuts down: live streams end so connections can drain.
    /// [`serve`] wires it; a state built elsewhere may use [`never_shut_down`].
    pub shutdown: watch::Receiver<bool>,
}

/// Renders extra fields for `/health` and `/ready`.
pub type HealthDetails = Arc<dyn Fn() -> serde_json::Map<String, serde_json::Value> + Send + Sync>;

/// Adopts a request's trace context (from its headers) as the parent of a span.
pub type TraceParentHook = Arc<dyn Fn(&HeaderMap, &tracing::Span) + Send + Sync>;

impl AppState {
    /// A state over these buses and this store with everything else at its default: the
    /// default request limits, asynchronous commands over `commands`
    /// ([`AsyncCommands::DEFAULT_CAPACITY`]), no `/metrics`, trace hook, health details or
    /// operator routes, authentication off, and no shutdown signal (see [`serve`], which sets
    /// its own). Set the rest with struct-update syntax.
    pub fn new(
        commands: Arc<dyn CommandBus>,
        queries: Arc<dyn QueryBus>,
        store: Arc<dyn EventStore>,
    ) -> Self {
        Self {
            async_commands: Arc::new(AsyncCommands::new(
                Arc::clone(&commands),
                AsyncCommands::DEFAULT_CAPACITY,
            )),
            commands,
            queries,
            store,
            limits: RequestLimits::default(),
            metrics: None,
            trace_parent: None,
            health_details: None,
            operations: Operations::default(),
            gate: Arc::default(),
            shutdown: never_shut_down(),
        }
    }
}

/// A shutdown signal that never fires (for routers driven without [`serve`], e.g. in tests).
pub fn never_shut_down() -> watch::Receiver<bool> {
    watch::channel(false).1
}
