//! The connections the gRPC server is fed, through the gateways' shared accept loop
//! (`flexcore-listener`): a connection cap, TLS handshakes that never hold it up, and each
//! call's peer address and client-certificate principal.
//!
//! tonic's own `TcpIncoming` has no cap, and its `tls-*` features would bring a second TLS
//! configuration path: the HTTP and gRPC gateways answer one `[tls]` the same way.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use flexcore_listener::{AcceptOptions, Connection, DEFAULT_MAX_CONNECTIONS, GatewayTls, Incoming};
use tokio::net::TcpListener;
use tokio_stream::{Stream, StreamExt};
use tonic::body::Body;
use tonic::codegen::http::Request;

/// How [`serve_with`](crate::serve_with) takes connections.
#[derive(Debug, Clone)]
pub struct GrpcServeOptions {
    /// Connections open at once (TLS handshakes in progress included); more are closed as
    /// soon as they are accepted and counted in `flexcore_grpc_connections_refused_total`.
    pub max_connections: usize,
    /// How long a client may take to finish its TLS handshake before its connection is
    /// closed.
    pub handshake_timeout: Duration,
    /// TLS, when given (whatever ALPN protocols its configuration offers, the gateway offers
    /// `h2` only: gRPC runs on HTTP/2); otherwise plaintext HTTP/2.
    pub tls: Option<GatewayTls>,
}

impl Default for GrpcServeOptions {
    /// [`DEFAULT_MAX_CONNECTIONS`] (4096, as HTTP), 10 s for a handshake, no TLS.
    fn default() -> Self {
        Self {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            handshake_timeout: Duration::from_secs(10),
            tls: None,
        }
    }
}

/// The connections accepted on `listener`, ready to serve; dropping the stream closes the
/// listener.
pub(crate) fn incoming(
    listener: TcpListener,
    options: GrpcServeOptions,
) -> impl Stream<Item = Result<Connection, Infallible>> + Send + 'static {
    let tls = options.tls.map(|tls| {
        let config = tls.config;
        GatewayTls {
            config: Arc::new(move || offering_h2_only(config())),
            client_principal: tls.client_principal,
        }
    });
    let options = AcceptOptions {
        max_connections: options.max_connections,
        handshake_timeout: options.handshake_timeout,
        tls,
        gateway: "grpc",
        refused_counter: "flexcore_grpc_connections_refused_total",
    };
    Incoming::new(listener, options).map(Ok)
}

/// `config` offering `h2` as its only ALPN protocol (a configuration shared with the HTTP
/// gateway offers `http/1.1` too, which a gRPC server cannot speak).
fn offering_h2_only(config: Arc<rustls::ServerConfig>) -> Arc<rustls::ServerConfig> {
    const H2: &[u8] = b"h2";
    if config.alpn_protocols == [H2] {
        return config;
    }
    let mut config = Arc::unwrap_or_clone(config);
    config.alpn_protocols = vec![H2.to_vec()];
    Arc::new(config)
}

/// Gives a call what its connection knows: the peer address (which `Request::remote_addr`
/// reads) and, over mTLS, the client certificate's principal (which the gate reads).
pub(crate) fn with_connection_identity(mut request: Request<Body>) -> Request<Body> {
    if let Some(info) = request
        .extensions_mut()
        .remove::<flexcore_listener::ConnectInfo>()
    {
        request.extensions_mut().insert(info.tcp);
        if let Some(principal) = info.principal {
            request.extensions_mut().insert(principal);
        }
    }
    request
}
