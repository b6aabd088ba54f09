//! How FlexCore's gateways take connections; the HTTP and gRPC gateways share it, so one
//! `[tls]` and one `max_connections` mean the same on both.
//!
//! [`Incoming`] accepts TCP connections on a listener and yields them ready to serve:
//!
//! * at most [`AcceptOptions::max_connections`] are open at once; more are closed as soon as
//!   they are accepted and counted in [`AcceptOptions::refused_counter`];
//! * with [`GatewayTls`], every handshake runs in a task of its own, bounded by
//!   [`AcceptOptions::handshake_timeout`]: a slow or failing client closes its own connection
//!   and never holds up the others. The configuration is asked for per connection, so a
//!   renewed certificate applies to the next one without a restart;
//! * a [`Connection`] carries its peer address and, over mTLS, the principal its client
//!   certificate proves; it holds its place under the cap until it is dropped.
//!
//! Dropping the [`Incoming`] closes the listener at once. With the `tonic` feature, tonic
//! serves [`Connection`]s directly, and every request carries a [`ConnectInfo`].

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use flexcore_app::security::Principal;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::Sleep;
use tokio_stream::Stream;

/// The connections a gateway has open at once unless told otherwise.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;

/// Gives the rustls configuration for the next connection (its source may re-read changed
/// files, so a renewed certificate applies without a restart).
pub type TlsConfigSource = Arc<dyn Fn() -> Arc<rustls::ServerConfig> + Send + Sync>;

/// Maps a verified client certificate (the leaf, DER) to the principal it proves.
pub type ClientCertificatePrincipal = Arc<dyn Fn(&[u8]) -> Option<Principal> + Send + Sync>;

/// TLS for a gateway: the configuration of each new connection, and the principal a verified
/// client certificate proves.
#[derive(Clone)]
pub struct GatewayTls {
    /// The rustls configuration for the next connection.
    pub config: TlsConfigSource,
    /// The principal of a verified client certificate (the leaf, DER), if it names one.
    pub client_principal: ClientCertificatePrincipal,
}

impl std::fmt::Debug for GatewayTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayTls").finish_non_exhaustive()
    }
}

/// How an [`Incoming`] takes connections.
#[derive(Debug, Clone)]
pub struct AcceptOptions {
    /// Connections open at once (handshakes in progress included); more are closed as soon as
    /// they are accepted.
    pub max_connections: usize,
    /// How long a client may take to finish its TLS handshake before its connection is
    /// closed.
    pub handshake_timeout: Duration,
    /// TLS, when given; otherwise connections are served as they are accepted.
    pub tls: Option<GatewayTls>,
    /// The gateway's name in log lines (`http`, `grpc`).
    pub gateway: &'static str,
    /// The counter of connections closed at accept because `max_connections` were open.
    pub refused_counter: &'static str,
}

/// The byte stream of a connection: TCP, or TLS over TCP.
trait Transport: AsyncRead + AsyncWrite + Unpin + Send {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send> Transport for T {}

/// One accepted connection, ready to serve (handshake done); it holds its place under the
/// connection cap until it is dropped.
pub struct Connection {
    transport: Box<dyn Transport>,
    peer: SocketAddr,
    local: Option<SocketAddr>,
    principal: Option<Arc<Principal>>,
    _open: OwnedSemaphorePermit,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("peer", &self.peer)
            .field("principal", &self.principal)
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// The client's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }

    /// The server's address on this connection.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local
    }

    /// The principal the client's verified certificate proves (mTLS), if any.
    pub fn principal(&self) -> Option<&Arc<Principal>> {
        self.principal.as_ref()
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.transport).poll_read(cx, buf)
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.transport).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.transport).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.transport.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.transport).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.transport).poll_shutdown(cx)
    }
}

#[cfg(feature = "tonic")]
pub use tonic_connection::ConnectInfo;

#[cfg(feature = "tonic")]
mod tonic_connection {
    use std::sync::Arc;

    use flexcore_app::security::Principal;
    use tonic::transport::server::{Connected, TcpConnectInfo};

    use crate::Connection;

    /// What tonic puts in the extensions of every request of a [`Connection`].
    #[derive(Debug, Clone)]
    pub struct ConnectInfo {
        /// The connection's addresses (what `tonic::Request::remote_addr` reads, once it is in
        /// the extensions itself).
        pub tcp: TcpConnectInfo,
        /// The principal of the client certificate, over mTLS.
        pub principal: Option<Arc<Principal>>,
    }

    impl Connected for Connection {
        type ConnectInfo = ConnectInfo;

        fn connect_info(&self) -> ConnectInfo {
            ConnectInfo {
                tcp: TcpConnectInfo {
                    local_addr: self.local,
                    remote_addr: Some(self.peer),
                },
                principal: self.principal.clone(),
            }
        }
    }
}

/// The connections accepted on a listener, ready to serve: a [`Stream`] that never ends, or
/// [`Incoming::accept`] one at a time.
pub struct Incoming {
    listener: TcpListener,
    options: AcceptOptions,
    open: Arc<Semaphore>,
    /// Handshake tasks hand their connections in here…
    handshaken: mpsc::UnboundedSender<Connection>,
    /// …and they come out here. Unbounded, yet bounded by the cap: each one holds a permit.
    ready: mpsc::UnboundedReceiver<Connection>,
    /// After an accept error, the pause before the next accept.
    backoff: Option<Pin<Box<Sleep>>>,
}

impl Incoming {
    /// Takes connections on `listener` as `options` say.
    pub fn new(listener: TcpListener, options: AcceptOptions) -> Self {
        let (handshaken, ready) = mpsc::unbounded_channel();
        Self {
            listener,
            open: Arc::new(Semaphore::new(options.max_connections.max(1))),
            options,
            handshaken,
            ready,
            backoff: None,
        }
    }

    /// The next connection ready to serve.
    pub async fn accept(&mut self) -> Connection {
        std::future::poll_fn(|cx| self.poll_accept(cx)).await
    }

    fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<Connection> {
        // Finished handshakes first: a flood of new connections must not starve them.
        if let Poll::Ready(Some(connection)) = self.ready.poll_recv(cx) {
            return Poll::Ready(connection);
        }
        loop {
            if let Some(backoff) = &mut self.backoff {
                ready!(backoff.as_mut().poll(cx));
                self.backoff = None;
            }
            match ready!(self.listener.poll_accept(cx)) {
                Ok((tcp, peer)) => {
                    if let Some(connection) = self.admit(tcp, peer) {
                        return Poll::Ready(connection);
                    }
                }
                Err(e) => {
                    // Out of file descriptors and the like: wait a little rather than spin.
                    let gateway = self.options.gateway;
                    tracing::warn!(error = %e, gateway, "cannot accept a connection");
                    let pause = tokio::time::sleep(Duration::from_millis(50));
                    self.backoff = Some(Box::pin(pause));
                }
            }
        }
    }

    /// A plaintext connection under the cap, ready to serve; a TLS one goes to its handshake
    /// (`None`, as for a connection over the cap, which is closed).
    fn admit(&self, tcp: TcpStream, peer: SocketAddr) -> Option<Connection> {
        let gateway = self.options.gateway;
        let Ok(open) = Arc::clone(&self.open).try_acquire_owned() else {
            metrics::counter!(self.options.refused_counter).increment(1);
            tracing::debug!(%peer, gateway, "too many connections: closing a new one");
            return None;
        };
        // Answers leave at once: no Nagle delay on small responses.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, gateway, "cannot set TCP_NODELAY");
        }
        let admitted = Admitted {
            peer,
            local: tcp.local_addr().ok(),
            open,
        };
        match &self.options.tls {
            None => Some(admitted.connection(tcp, None)),
            Some(tls) => {
                tokio::spawn(handshake(
                    tcp,
                    admitted,
                    tls.clone(),
                    self.options.handshake_timeout,
                    gateway,
                    self.handshaken.clone(),
                ));
                None
            }
        }
    }
}

impl Stream for Incoming {
    type Item = Connection;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Connection>> {
        self.get_mut().poll_accept(cx).map(Some)
    }
}

/// A connection admitted under the cap: its addresses and its place.
struct Admitted {
    peer: SocketAddr,
    local: Option<SocketAddr>,
    open: OwnedSemaphorePermit,
}

impl Admitted {
    /// The connection over `transport` (the TCP stream itself, or TLS over it).
    fn connection(
        self,
        transport: impl Transport + 'static,
        principal: Option<Arc<Principal>>,
    ) -> Connection {
        Connection {
            transport: Box::new(transport),
            peer: self.peer,
            local: self.local,
            principal,
            _open: self.open,
        }
    }
}

/// Runs the TLS handshake of one connection within `timeout` and hands the connection on;
/// on failure or timeout it is closed.
async fn handshake(
    tcp: TcpStream,
    admitted: Admitted,
    tls: GatewayTls,
    timeout: Duration,
    gateway: &'static str,
    handshaken: mpsc::UnboundedSender<Connection>,
) {
    let peer = admitted.peer;
    // Each connection gets the configuration of its own moment: reloads need no restart.
    let acceptor = tokio_rustls::TlsAcceptor::from((tls.config)());
    let stream = match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, %peer, gateway, "TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, gateway, "TLS handshake timed out");
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
    // A send fails only when the gateway has stopped: the connection just closes.
    let _ = handshaken.send(admitted.connection(stream, principal));
}
