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

use flexcore_app::security::Principal;

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

/// Gives the rustls configuration for the next connection.
pub type TlsConfigSource = Arc<dyn Fn() -> Arc<rustls::ServerConfig> + Send + Sync>;

/// Maps a verified client certificate (the leaf, DER) to the principal it proves.
pub type ClientCertificatePrincipal = Arc<dyn Fn(&[u8]) -> Option<Principal> + Send + Sync>;

/// TLS for the gateway: the configuration of each new connection (its source may re-read
/// changed files), and the principal a verified client certificate proves.
#[derive(Clone)]
pub struct HttpTls {
    /// The rustls configuration for the next connection.
    pub config: TlsConfigSource,
    /// The principal of a verified client certificate (the leaf, DER), if it names one.
    pub client_principal: ClientCertificatePrincipal,
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
    tls: Option<HttpTls>,
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
    // Each connection answers with the configuration of its own moment: reloads need no
    // restart.
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
        let app = app.clone();
        let builder = Arc::clone(&builder);
        let watcher = graceful.watcher();
        let tls = tls.clone();
        let handshake_timeout = limits.header_read_timeout;
        tokio::spawn(async move {
            let served = match tls {
                None => {
                    serve_connection(&builder, watcher, TokioIo::new(tcp), app, peer, None).await
                }
                Some(tls) => {
                    let acceptor = tokio_rustls::TlsAcceptor::from((tls.config)());
                    let stream =
                        match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await {
                            Ok(Ok(stream)) => stream,
                            Ok(Err(e)) => {
                                tracing::debug!(error = %e, %peer, "TLS handshake failed");
                                return;
                            }
                            Err(_) => {
                                tracing::debug!(%peer, "TLS handshake timed out");
                                return;
                            }
                        };
                    let principal = stream
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|chain| chain.first())
                        .and_then(|leaf| (tls.client_principal)(leaf.as_ref()))
                        .map(Arc::new);
                    serve_connection(
                        &builder,
                        watcher,
                        TokioIo::new(stream),
                        app,
                        peer,
                        principal,
                    )
                    .await
                }
            };
            if let Err(e) = served {
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
