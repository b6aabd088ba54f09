//! The clients of the gateway bench, one per layer: each sends `create_user` for one
//! connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use flexcore_app::command::CommandContext;
use flexcore_app::repository::{Loaded, Repository};
use flexcore_app::store::EventStore;
use flexcore_grpc::pb::SendCommandRequest;
use flexcore_grpc::pb::command_service_client::CommandServiceClient;
use flexcore_sample_users::commands::create;
use flexcore_sample_users::domain::{Email, EmailReservation};
use http_body_util::{BodyExt, Full};
use serde_json::Map;
use tonic::transport::Channel;
use uuid::Uuid;

use crate::load::CreateUser;

/// The body of a `create_user` command (addresses here need no JSON escaping).
fn create_user_body(email: &str) -> String {
    format!(r#"{{"email":"{email}"}}"#)
}

/// The raw store: `create_user`'s atomic two-stream append, made by the sample's own write
/// function ([`create`]) on a repository over the store, without the bus, its retry, or the
/// handler's payload parsing. Every address is new, so the reservation is claimed with
/// `no_stream` unread, as the handler does first.
pub(super) struct StoreWriter(Repository);

impl StoreWriter {
    /// A writer on `store`, through the repository `flexcore serve` gives the handlers.
    pub(super) fn new(store: Arc<dyn EventStore>) -> Self {
        Self(flexcore::server::repository(store))
    }
}

impl CreateUser for StoreWriter {
    async fn create_user(&mut self, email: String) -> anyhow::Result<()> {
        let email = Email::parse(&email)?;
        let reservation = Loaded::<EmailReservation>::new_instance(email.as_str())?;
        let metadata = CommandContext::default().event_metadata();
        let profile = Map::new();
        create(
            &self.0,
            Uuid::now_v7(),
            &email,
            &profile,
            reservation,
            &metadata,
        )
        .await?;
        Ok(())
    }
}

/// One keep-alive HTTP/1.1 connection, driven by hyper's connection API: a lean load
/// generator (as `wrk` is), so the figures measure the server rather than a client library.
pub(super) struct HttpClient {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    uri: hyper::Uri,
    host: String,
    /// `Bearer <token>`, when the server requires authentication.
    authorization: Option<String>,
}

impl HttpClient {
    /// Opens the connection now (and checks `GET /health`) so the measured requests find it
    /// ready.
    pub(super) async fn connect(addr: SocketAddr, token: Option<String>) -> anyhow::Result<Self> {
        Self::connect_command(addr, token, "create_user").await
    }

    /// [`connect`](Self::connect), sending `command_type` commands (with the same payload).
    pub(super) async fn connect_command(
        addr: SocketAddr,
        token: Option<String>,
        command_type: &str,
    ) -> anyhow::Result<Self> {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "bench HTTP connection closed");
            }
        });
        let mut client = Self {
            sender,
            uri: format!("http://{addr}/v1/commands/{command_type}").parse()?,
            host: addr.to_string(),
            authorization: token.map(|token| format!("Bearer {token}")),
        };
        let health = hyper::Request::get(format!("http://{addr}/health"))
            .header(hyper::header::HOST, &client.host)
            .body(Full::new(Bytes::new()))?;
        let (status, _) = client.send(health).await?;
        anyhow::ensure!(status.is_success(), "GET /health answered {status}");
        Ok(client)
    }

    /// Sends one request and reads the whole answer (so the connection is free again).
    async fn send(
        &mut self,
        request: hyper::Request<Full<Bytes>>,
    ) -> anyhow::Result<(hyper::StatusCode, Bytes)> {
        self.sender.ready().await?;
        let response = self.sender.send_request(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }
}

impl CreateUser for HttpClient {
    async fn create_user(&mut self, email: String) -> anyhow::Result<()> {
        let mut request = hyper::Request::post(self.uri.clone())
            .header(hyper::header::HOST, &self.host)
            .header(hyper::header::CONTENT_TYPE, "application/json");
        if let Some(authorization) = &self.authorization {
            request = request.header(hyper::header::AUTHORIZATION, authorization);
        }
        let request = request.body(Full::new(Bytes::from(create_user_body(&email))))?;
        let (status, body) = self.send(request).await?;
        anyhow::ensure!(
            status.is_success(),
            "HTTP {status}: {}",
            String::from_utf8_lossy(&body)
        );
        Ok(())
    }
}

/// One tonic channel: one HTTP/2 connection, and the `authorization` metadata to send.
pub(super) struct GrpcClient(
    CommandServiceClient<Channel>,
    Option<tonic::metadata::AsciiMetadataValue>,
);

impl GrpcClient {
    /// Connects now, so the measured commands find the connection ready.
    pub(super) async fn connect(addr: SocketAddr, token: Option<String>) -> anyhow::Result<Self> {
        let authorization = token
            .map(|token| format!("Bearer {token}").parse())
            .transpose()?;
        let channel = Channel::from_shared(format!("http://{addr}"))?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .connect()
            .await
            .with_context(|| format!("cannot connect to the gRPC gateway at {addr}"))?;
        Ok(Self(CommandServiceClient::new(channel), authorization))
    }
}

impl CreateUser for GrpcClient {
    async fn create_user(&mut self, email: String) -> anyhow::Result<()> {
        let mut request = tonic::Request::new(SendCommandRequest {
            command_type: "create_user".into(),
            payload_json: create_user_body(&email),
            idempotency_key: None,
        });
        if let Some(authorization) = &self.1 {
            request
                .metadata_mut()
                .insert("authorization", authorization.clone());
        }
        self.0.send(request).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use flexcore_app::store::{EventFilter, InMemoryStore, ReadAll};

    use super::*;

    #[tokio::test]
    async fn the_store_baseline_appends_what_create_user_appends() {
        let store: Arc<dyn EventStore> = Arc::new(InMemoryStore::new());
        let mut writer = StoreWriter::new(Arc::clone(&store));
        writer
            .create_user("u1-2@bench.example".to_owned())
            .await
            .unwrap();
        let all = store
            .read_all(ReadAll {
                from_position: 0,
                limit: 10,
                filter: EventFilter::default(),
            })
            .await
            .unwrap();
        let written: Vec<(&str, &str, u64)> = all
            .events
            .iter()
            .map(|e| {
                (
                    e.stream_id.as_str(),
                    e.event_type.as_str(),
                    e.stream_version,
                )
            })
            .collect();
        assert_eq!(written.len(), 2, "{written:?}");
        assert!(written[0].0.starts_with("user-"), "{written:?}");
        assert_eq!(written[0].1, "user.created");
        assert_eq!(written[1].0, "email-u1-2@bench.example");
        assert_eq!(written[1].1, "email.reserved");
        // Both streams are new (first event of each), and the address is claimed with
        // `no_stream`: a second claim of it fails instead of appending.
        assert!(written.iter().all(|w| w.2 == 0), "{written:?}");
        let again = writer.create_user("u1-2@bench.example".to_owned()).await;
        assert!(again.is_err(), "the address is taken");
    }
}
