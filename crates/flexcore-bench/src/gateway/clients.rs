//! The clients of the gateway bench, one per layer: each sends `create_user` for one
//! connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use flexcore_app::command::CommandContext;
use flexcore_app::repository::Loaded;
use flexcore_app::store::{EventStore, StreamWrite};
use flexcore_grpc::pb::SendCommandRequest;
use flexcore_grpc::pb::command_service_client::CommandServiceClient;
use flexcore_sample_users::domain::{
    Email, EmailReservation, ReservationCommand, User, UserCommand,
};
use http_body_util::{BodyExt, Full};
use tonic::transport::Channel;

use crate::load::CreateUser;

/// The writes one `create_user` appends in one atomic append, built the way its handler builds
/// them (same events, metadata and expectations) for a user and address never seen before.
pub(super) fn create_user_writes(email: &str) -> anyhow::Result<Vec<StreamWrite>> {
    let email = Email::parse(email)?;
    let user_id = uuid::Uuid::now_v7();
    let metadata = CommandContext::default().event_metadata();
    let user = Loaded::<User>::new_instance(&user_id.to_string())?;
    let reservation = Loaded::<EmailReservation>::new_instance(email.as_str())?;
    let (_, reserve) = reservation.decide(
        &ReservationCommand::Reserve {
            email: email.clone(),
            user_id,
        },
        &metadata,
    )?;
    let (_, create) = user.decide(
        &UserCommand::Create {
            user_id,
            email,
            profile: Default::default(),
        },
        &metadata,
    )?;
    Ok(vec![create, reserve])
}

/// The body of a `create_user` command (addresses here need no JSON escaping).
fn create_user_body(email: &str) -> String {
    format!(r#"{{"email":"{email}"}}"#)
}

/// The raw store: one atomic two-stream append per command.
pub(super) struct StoreWriter(pub(super) Arc<dyn EventStore>);

impl CreateUser for StoreWriter {
    async fn create_user(&mut self, email: String) -> anyhow::Result<()> {
        let writes = create_user_writes(&email)?;
        self.0.append_atomic(writes).await?;
        Ok(())
    }
}

/// One keep-alive HTTP/1.1 connection, driven by hyper's connection API: a lean load
/// generator (as `wrk` is), so the figures measure the server rather than a client library.
pub(super) struct HttpClient {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    uri: hyper::Uri,
    host: String,
}

impl HttpClient {
    /// Opens the connection now (and checks `GET /health`) so the measured requests find it
    /// ready.
    pub(super) async fn connect(addr: SocketAddr) -> anyhow::Result<Self> {
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
            uri: format!("http://{addr}/v1/commands/create_user").parse()?,
            host: addr.to_string(),
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
        let request = hyper::Request::post(self.uri.clone())
            .header(hyper::header::HOST, &self.host)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(create_user_body(&email))))?;
        let (status, body) = self.send(request).await?;
        anyhow::ensure!(
            status.is_success(),
            "HTTP {status}: {}",
            String::from_utf8_lossy(&body)
        );
        Ok(())
    }
}

/// One tonic channel: one HTTP/2 connection.
pub(super) struct GrpcClient(CommandServiceClient<Channel>);

impl GrpcClient {
    /// Connects now, so the measured commands find the connection ready.
    pub(super) async fn connect(addr: SocketAddr) -> anyhow::Result<Self> {
        let channel = Channel::from_shared(format!("http://{addr}"))?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .connect()
            .await
            .with_context(|| format!("cannot connect to the gRPC gateway at {addr}"))?;
        Ok(Self(CommandServiceClient::new(channel)))
    }
}

impl CreateUser for GrpcClient {
    async fn create_user(&mut self, email: String) -> anyhow::Result<()> {
        self.0
            .send(SendCommandRequest {
                command_type: "create_user".into(),
                payload_json: create_user_body(&email),
                idempotency_key: None,
            })
            .await?;
        Ok(())
    }
}
