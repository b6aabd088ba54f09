//! FlexCore's gRPC gateway: the contract of `proto/flexcore/v1/*.proto` (package
//! `flexcore.v1`) served with tonic.
//!
//! | service | rpc | does |
//! |---|---|---|
//! | `CommandService` | `Send` | send a command (trace metadata lands in its events) |
//! | `QueryService` | `Ask` | ask a query |
//! | `EventStore` | `Append` | raw append with an expected version |
//! | | `ReadStream` | read a stream (paged, both directions) |
//! | | `ReadAll` | read the global log (paged, filtered) |
//! | | `SubscribeAll` | the global log from a position: history, then live (server streaming) |
//! | `grpc.health.v1.Health` | `Check`, `Watch` | `SERVING` for `""` and each service above |
//! | `grpc.reflection.v1(alpha).ServerReflection` | | the compiled contract, for `grpcurl` and friends |
//!
//! [`routes`] builds every service, so a caller can mount them on its own server; [`serve`]
//! runs them on a listener until a shutdown future resolves, and [`serve_with`] adds TLS
//! (mTLS: a verified client certificate is the call's principal) and a cap on open
//! connections ([`GrpcServeOptions`]). JSON travels as text fields
//! (`*_json`) checked with the HTTP gateway's rules, and every failure leaves through one
//! mapping to gRPC status codes (see the `error` module's table), the same semantics as
//! `flexcore-http`.
//!
//! Every call of FlexCore's services passes the [`GrpcState::gate`] first: a bearer token in
//! `authorization` or an API key in `x-api-key` metadata (or a verified client certificate),
//! then the rate limit of its class; the buses and the store apply the same policy as HTTP.
//!
//! The `.proto` files are compiled by `build.rs` with `protox` (no system `protoc`); [`pb`]
//! holds the generated messages, servers and clients.

mod command;
mod connection;
mod convert;
mod error;
mod event_store;
mod query;

use std::future::Future;
use std::sync::Arc;

use flexcore_app::RequestLimits;
use flexcore_app::command::CommandBus;
use flexcore_app::query::QueryBus;
use flexcore_app::security::{Gatekeeper, Presented, Principal, RouteClass};
use flexcore_app::store::EventStore;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::service::Routes;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

pub use connection::GrpcServeOptions;
pub use error::{CURRENT_VERSION_KEY, ERROR_CODE_KEY, EXPECTED_VERSION_KEY, GrpcError};
pub use flexcore_listener::{ClientCertificatePrincipal, GatewayTls, TlsConfigSource};

/// The code generated from `proto/flexcore/v1/*.proto`: messages, servers and clients.
pub mod pb {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("flexcore.v1");

    /// The encoded `FileDescriptorSet` of the contract (with its imports), as served by
    /// reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("flexcore_descriptor");
}

/// What the services need (the HTTP gateway's `AppState`, for gRPC).
#[derive(Clone)]
pub struct GrpcState {
    /// Sends commands (with the server's middleware already attached).
    pub commands: Arc<dyn CommandBus>,
    /// Answers queries.
    pub queries: Arc<dyn QueryBus>,
    /// The event store, for raw appends, reads and subscriptions.
    pub store: Arc<dyn EventStore>,
    /// Request limits (the message size and JSON depth), the HTTP gateway's.
    pub limits: RequestLimits,
    /// Authenticates and rate-limits every call of FlexCore's services, as for HTTP (health
    /// and reflection stay open).
    pub gate: Arc<Gatekeeper>,
}

impl GrpcState {
    /// A state with the default [`RequestLimits`].
    pub fn new(
        commands: Arc<dyn CommandBus>,
        queries: Arc<dyn QueryBus>,
        store: Arc<dyn EventStore>,
    ) -> Self {
        Self {
            commands,
            queries,
            store,
            limits: RequestLimits::default(),
            gate: Arc::default(),
        }
    }
}

/// Streams one connection may have open at once.
pub const MAX_CONCURRENT_STREAMS: u32 = 256;
/// The largest header block (metadata) of a call, in bytes.
pub const MAX_HEADER_LIST_BYTES: u32 = 16 * 1024;
/// Streams a client may reset before the server has accepted them (the "rapid reset" flood).
const MAX_PENDING_RESETS: usize = 32;

/// The metadata key service clients send their API key in.
pub const API_KEY_KEY: &str = "x-api-key";

/// The names of FlexCore's own services, as health checks and reflection know them.
pub const SERVICE_NAMES: [&str; 3] = [
    pb::command_service_server::SERVICE_NAME,
    pb::query_service_server::SERVICE_NAME,
    pb::event_store_server::SERVICE_NAME,
];

/// Builds every service: FlexCore's three, health and reflection (v1 and v1alpha).
///
/// Live subscriptions served from these routes end only when their client goes away; [`serve`]
/// also ends them when it shuts down.
pub async fn routes(state: GrpcState) -> Result<Routes, GrpcError> {
    let (routes, _health) = build(state, Closing::never()).await?;
    Ok(routes)
}

/// Serves the gRPC API on `listener` in plaintext with the default [`GrpcServeOptions`] until
/// `shutdown` resolves: health turns `NOT_SERVING`, live subscriptions end with
/// `UNAVAILABLE`, in-flight calls finish, then it returns.
pub async fn serve(
    listener: TcpListener,
    state: GrpcState,
    shutdown: impl Future<Output = ()>,
) -> Result<(), GrpcError> {
    serve_with(listener, state, GrpcServeOptions::default(), shutdown).await
}

/// [`serve`] with these options: at most `max_connections` open at once (more are closed at
/// accept), and TLS when `tls` is given (each handshake bounded by `handshake_timeout`; a
/// verified client certificate's principal authenticates the calls of its connection).
pub async fn serve_with(
    listener: TcpListener,
    state: GrpcState,
    options: GrpcServeOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<(), GrpcError> {
    let (close, closing) = watch::channel(false);
    let (routes, mut health) = build(state, Closing(closing)).await?;
    let shutdown = async move {
        shutdown.await;
        // Health watchers see NOT_SERVING, then their streams end (a cleared status drops its
        // sender) and live subscriptions end with UNAVAILABLE: open streams would otherwise
        // hold the graceful shutdown open.
        for name in std::iter::once("").chain(SERVICE_NAMES) {
            health
                .set_service_status(name, ServingStatus::NotServing)
                .await;
        }
        for name in std::iter::once("").chain(SERVICE_NAMES) {
            health.clear_service_status(name).await;
        }
        let _ = close.send(true);
    };
    tonic::transport::Server::builder()
        // HTTP/2 limits: a client cannot hold unbounded streams, headers or reset floods.
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .http2_max_header_list_size(MAX_HEADER_LIST_BYTES)
        .http2_max_pending_accept_reset_streams(Some(MAX_PENDING_RESETS))
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(10)))
        .trace_fn(|request| tracing::info_span!("grpc", method = %request.uri().path()))
        .layer(tower::util::MapRequestLayer::new(
            connection::with_connection_identity,
        ))
        .add_routes(routes)
        // tonic drops the connections' source at shutdown, which closes the listener.
        .serve_with_incoming_shutdown(connection::incoming(listener, options), shutdown)
        .await?;
    Ok(())
}

async fn build(state: GrpcState, closing: Closing) -> Result<(Routes, HealthReporter), GrpcError> {
    use pb::command_service_server::CommandServiceServer;
    use pb::event_store_server::EventStoreServer;
    use pb::query_service_server::QueryServiceServer;

    let max = state.limits.max_request_bytes;
    let gateway = Gateway { state, closing };

    let (health, health_service) = tonic_health::server::health_reporter();
    for name in SERVICE_NAMES {
        health
            .set_service_status(name, ServingStatus::Serving)
            .await;
    }
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let routes = Routes::new(health_service)
        .add_service(reflection().build_v1()?)
        .add_service(reflection().build_v1alpha()?)
        .add_service(CommandServiceServer::new(gateway.clone()).max_decoding_message_size(max))
        .add_service(QueryServiceServer::new(gateway.clone()).max_decoding_message_size(max))
        .add_service(EventStoreServer::new(gateway).max_decoding_message_size(max));
    Ok((routes, health))
}

/// The services' shared implementation: the state, and the signal that ends subscriptions.
#[derive(Clone)]
struct Gateway {
    state: GrpcState,
    closing: Closing,
}

impl Gateway {
    /// Authenticates a call and admits it under its rate limit: the principal it acts for
    /// (`None` when authentication is off).
    fn admit<T>(
        &self,
        request: &tonic::Request<T>,
        class: RouteClass,
        action: &str,
    ) -> Result<Option<Arc<Principal>>, tonic::Status> {
        let metadata = request.metadata();
        fn text(value: &tonic::metadata::AsciiMetadataValue) -> &str {
            value.to_str().unwrap_or("")
        }
        let client = request.remote_addr().map(|addr| addr.ip().to_string());
        let presented = Presented {
            principal: request.extensions().get::<Arc<Principal>>(),
            client: client.as_deref(),
            ..Presented::credentials(
                metadata.get("authorization").map(text),
                metadata.get(API_KEY_KEY).map(text),
                action,
            )
        };
        let gate = &self.state.gate;
        let principal = gate.authenticate(&presented).map_err(error::from_app)?;
        gate.admit(class, principal.as_deref(), client.as_deref())
            .map_err(error::from_app)?;
        Ok(principal)
    }

    /// The event store as `principal` may use it.
    fn store_for(
        &self,
        principal: Option<&Arc<Principal>>,
    ) -> Result<Arc<dyn EventStore>, tonic::Status> {
        self.state
            .gate
            .store_for(&self.state.store, principal)
            .map_err(error::from_app)
    }
}

/// Resolves when the server shuts down (never, for routes mounted by the caller).
#[derive(Clone)]
struct Closing(watch::Receiver<bool>);

impl Closing {
    fn never() -> Self {
        // The sender is dropped at once: `closed` then waits forever.
        Self(watch::channel(false).1)
    }

    async fn closed(&mut self) {
        if self.0.wait_for(|closing| *closing).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}
