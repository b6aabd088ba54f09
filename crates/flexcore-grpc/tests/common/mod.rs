//! A real gRPC server on 127.0.0.1:0 over the sample domain, and clients for it.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use flexcore_app::RequestLimits;
use flexcore_app::security::Gatekeeper;
use flexcore_app::store::{EventStore, InMemoryStore};
use flexcore_grpc::pb::command_service_client::CommandServiceClient;
use flexcore_grpc::pb::event_store_client::EventStoreClient;
use flexcore_grpc::pb::query_service_client::QueryServiceClient;
use flexcore_grpc::{GrpcError, GrpcServeOptions, GrpcState};
use flexcore_store_sqlite::{SqliteConfig, SqliteStore};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

/// A running server; stopped (gracefully) by [`TestServer::stop`] or when dropped.
pub struct TestServer {
    pub addr: SocketAddr,
    pub store: Arc<dyn EventStore>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), GrpcError>>>,
    _guard: Option<tempfile::TempDir>,
}

/// A server over an in-memory store.
pub async fn start() -> TestServer {
    start_with(
        Arc::new(InMemoryStore::new()),
        RequestLimits::default(),
        None,
    )
    .await
}

/// A server over a SQLite store in a temporary directory.
pub async fn start_sqlite() -> TestServer {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(SqliteConfig::new(dir.path().join("events.db")))
        .await
        .unwrap();
    start_with(Arc::new(store), RequestLimits::default(), Some(dir)).await
}

/// A server over `store` with `limits`.
pub async fn start_with(
    store: Arc<dyn EventStore>,
    limits: RequestLimits,
    guard: Option<tempfile::TempDir>,
) -> TestServer {
    let (commands, queries) = flexcore_test_support::sample_buses(Arc::clone(&store));
    let state = GrpcState {
        limits,
        ..GrpcState::new(commands, queries, Arc::clone(&store))
    };
    serve_state(state, store, GrpcServeOptions::default(), guard).await
}

/// A server over an in-memory store with the shared test gate (authentication, the test roles
/// on both buses and the store, and `rate_limit` for every route class).
pub async fn start_secured(rate_limit: Option<flexcore_auth::Bucket>) -> TestServer {
    start_secured_with(rate_limit, GrpcServeOptions::default()).await
}

/// [`start_secured`] served with `options` (TLS, the connection cap).
pub async fn start_secured_with(
    rate_limit: Option<flexcore_auth::Bucket>,
    options: GrpcServeOptions,
) -> TestServer {
    use flexcore_app::command::CommandBusExt;
    use flexcore_app::query::QueryBusExt;
    let store: Arc<dyn EventStore> = Arc::new(InMemoryStore::new());
    let (gate, policy) = flexcore_test_support::security::test_gate(rate_limit);
    let (commands, queries) = flexcore_test_support::sample_buses(Arc::clone(&store));
    let state = GrpcState {
        gate,
        ..GrpcState::new(
            Arc::new(commands.with_authorization(Arc::clone(&policy))),
            Arc::new(queries.with_authorization(policy)),
            Arc::clone(&store),
        )
    };
    serve_state(state, store, options, None).await
}

/// A server over an in-memory store with `gate` (e.g. anonymous rate limits) and no
/// authorization on the buses, served with `options`.
pub async fn start_open_with(gate: Arc<Gatekeeper>, options: GrpcServeOptions) -> TestServer {
    let store: Arc<dyn EventStore> = Arc::new(InMemoryStore::new());
    let (commands, queries) = flexcore_test_support::sample_buses(Arc::clone(&store));
    let state = GrpcState {
        gate,
        ..GrpcState::new(commands, queries, Arc::clone(&store))
    };
    serve_state(state, store, options, None).await
}

async fn serve_state(
    state: GrpcState,
    store: Arc<dyn EventStore>,
    options: GrpcServeOptions,
    guard: Option<tempfile::TempDir>,
) -> TestServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(flexcore_grpc::serve_with(listener, state, options, async {
        let _ = stopped.await;
    }));
    TestServer {
        addr,
        store,
        stop: Some(stop),
        task: Some(task),
        _guard: guard,
    }
}

impl TestServer {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(self.url())
            .unwrap()
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .unwrap()
    }

    pub async fn commands(&self) -> CommandServiceClient<Channel> {
        CommandServiceClient::new(self.channel().await)
    }

    pub async fn queries(&self) -> QueryServiceClient<Channel> {
        QueryServiceClient::new(self.channel().await)
    }

    pub async fn events(&self) -> EventStoreClient<Channel> {
        EventStoreClient::new(self.channel().await)
    }

    /// Signals shutdown and waits (bounded) for `serve` to return.
    pub async fn stop(mut self) -> Result<(), GrpcError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let task = self.task.take().unwrap();
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("serve returns after shutdown")
            .unwrap()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
