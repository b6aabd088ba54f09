//! The HTTP server: an accept loop with connection-level limits around the router.
//!
//! axum's own `serve` gives hyper no timer, so a client that sends its headers one byte a
//! minute (slowloris) would hold its connection for ever. Here every connection is served by
//! hyper with a timer: the request head must arrive within
//! [`ConnectionLimits::header_read_timeout`], at most
//! [`ConnectionLimits::max_connections`] connections are open at once (further ones are closed
//! at accept and counted), and HTTP/2 connections get a stream limit.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::watch;

use flexcore_app::security::Principal;
use flexcore_listener::{AcceptOptions, DEFAULT_MAX_CONNECTIONS, GatewayTls, Incoming};

use crate::{AppState, router};

/// Serves one connection (plain or TLS) until it ends or the server shuts down; requests carry
/// the client's address and, over mTLS, the principal of its certificate.
async fn serve_connection<I>(
    builder: &Builder<TokioExecutor>,
    watcher: hyper_util::server::graceful::Watcher,
    io: I,
    app: axum::Router,
    peer: SocketAddr,
    principal: Option<Arc<Principal>>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let service = tower::ServiceExt::map_request(
        app,
        move |mut request: axum::http::Request<hyper::body::Incoming>| {
            request
                .extensions_mut()
                .insert(ConnectInfo::<SocketAddr>(peer));
            if let Some(principal) = &principal {
                request.extensions_mut().insert(Arc::clone(principal));
            }
            request
        },
    );
    let connection = builder
        .serve_connection_with_upgrades(io, TowerToHyperService::new(service))
        .into_owned();
    watcher.watch(connection).await
}

/// Limits on connections, enforced before any request is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Connections open at once; more are closed as soon as they are accepted.
    pub max_connections: usize,
    /// How long a client may take to send a request's head (line and headers).
    pub header_read_timeout: Duration,
    /// Streams one HTTP/2 connection may have open at once.
    pub max_concurrent_streams: u32,
    /// The most headers one request may carry (more: 431).
    pub max_headers: usize,
}

impl Default for ConnectionLimits {
    /// [`DEFAULT_MAX_CONNECTIONS`] (4096), 10 s for the head, 256 HTTP/2 streams, 100 headers.
    fn default() -> Self {
        Self {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            header_read_timeout: Duration::from_secs(10),
            max_concurrent_streams: 256,
            max_headers: 100,
        }
    }
}

/// Serves the API on `listener` with the default [`ConnectionLimits`], without TLS, until
/// `shutdown` resolves, then lets in-flight requests finish.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with(listener, state, ConnectionLimits::default(), None, shutdown).await
}

/// [`serve`] with these connection limits, and TLS when `tls` is given (the handshake must
/// finish within the header read timeout too).
pub async fn serve_with(
    listener: TcpListener,
    mut state: AppState,
    limits: ConnectionLimits,
    tls: Option<GatewayTls>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (stopping, stop_signal) = watch::channel(false);
    state.shutdown = stop_signal;
    let app = router(state);
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_headers(limits.max_headers);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_concurrent_streams)
        .max_pending_accept_reset_streams(Some(32))
        .keep_alive_interval(Some(Duration::from_secs(30)));
    let builder = Arc::new(builder);
    let options = AcceptOptions {
        max_connections: limits.max_connections,
        // The handshake is part of what a client must send in time.
        handshake_timeout: limits.header_read_timeout,
        tls,
        gateway: "http",
        refused_counter: "flexcore_http_connections_refused_total",
    };
    let mut incoming = Incoming::new(listener, options);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let connection = tokio::select! {
            () = &mut shutdown => break,
            connection = incoming.accept() => connection,
        };
        let app = app.clone();
        let builder = Arc::clone(&builder);
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let peer = connection.peer_addr();
            let principal = connection.principal().cloned();
            let io = TokioIo::new(connection);
            if let Err(e) = serve_connection(&builder, watcher, io, app, peer, principal).await {
                tracing::debug!(error = %e, %peer, "HTTP connection ended with an error");
            }
        });
    }
    drop(incoming);
    // Live streams end now; other requests finish (the caller bounds the wait).
    let _ = stopping.send(true);
    graceful.shutdown().await;
    Ok(())
}
