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
use tokio::sync::{Semaphore, watch};

use crate::{AppState, router};

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
    /// 4096 connections, 10 s for the head, 256 HTTP/2 streams, 100 headers.
    fn default() -> Self {
        Self {
            max_connections: 4096,
            header_read_timeout: Duration::from_secs(10),
            max_concurrent_streams: 256,
            max_headers: 100,
        }
    }
}

/// Serves the API on `listener` with the default [`ConnectionLimits`] until `shutdown`
/// resolves, then lets in-flight requests finish.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with(listener, state, ConnectionLimits::default(), shutdown).await
}

/// [`serve`] with these connection limits.
pub async fn serve_with(
    listener: TcpListener,
    mut state: AppState,
    limits: ConnectionLimits,
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
    let open = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: wait a little rather than spin.
                    tracing::warn!(error = %e, "cannot accept an HTTP connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = Arc::clone(&open).try_acquire_owned() else {
            metrics::counter!("flexcore_http_connections_refused_total").increment(1);
            tracing::debug!(%peer, "too many connections: closing a new one");
            continue;
        };
        // Answers leave at once: no Nagle delay on small responses.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        let service = tower::ServiceExt::map_request(
            app.clone(),
            move |mut request: axum::http::Request<hyper::body::Incoming>| {
                request
                    .extensions_mut()
                    .insert(ConnectInfo::<SocketAddr>(peer));
                request
            },
        );
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(tcp), TowerToHyperService::new(service))
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, %peer, "HTTP connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    // Live streams end now; other requests finish (the caller bounds the wait).
    let _ = stopping.send(true);
    graceful.shutdown().await;
    Ok(())
}
