//! NATS JetStream: the outbox publisher.

use std::time::Duration;

use async_nats::jetstream::{self, message::PublishMessage, stream};
use async_trait::async_trait;
use flexcore_app::outbox::EventPublisher;
use flexcore_domain::EventEnvelope;
use flexcore_tls::{ClientTlsFiles, HostnameCheck};
use tokio::sync::Mutex;

use crate::error::{BrokerError, Result};
use crate::url::BrokerUrl;

/// The subject prefix unless the URL names one.
pub const DEFAULT_SUBJECT_PREFIX: &str = "flexcore.events";
/// The JetStream stream unless the URL names one.
pub const DEFAULT_STREAM: &str = "FLEXCORE_EVENTS";
/// How long JetStream remembers message ids to drop re-sends, unless the URL says otherwise.
pub const DEFAULT_DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// Publishes events to JetStream and waits for every publish acknowledgement.
///
/// Each event goes to the subject `<prefix>.<event_type>` (characters a subject cannot hold
/// become `_`) with the header `Nats-Msg-Id` = event id, so JetStream drops a re-send within
/// the stream's duplicate window, plus `Flexcore-Stream-Id`, `Flexcore-Stream-Version`,
/// `Flexcore-Global-Position` and `Flexcore-Event-Type`; the payload is the whole envelope as
/// JSON. On connect, the stream is created if missing (subjects `<prefix>.>`, file storage,
/// the duplicate window); an existing stream is used as it is.
pub struct NatsPublisher {
    address: String,
    credentials: Option<(String, String)>,
    tls: Option<ClientTlsFiles>,
    subject_prefix: String,
    stream: String,
    duplicate_window: Duration,
    context: Mutex<Option<jetstream::Context>>,
}

impl NatsPublisher {
    /// Publishes under `subject_prefix` into the JetStream stream `stream` at `address`
    /// (`host:port`).
    pub fn new(
        address: impl Into<String>,
        subject_prefix: impl Into<String>,
        stream: impl Into<String>,
    ) -> Self {
        Self {
            address: address.into(),
            credentials: None,
            tls: None,
            subject_prefix: subject_prefix.into(),
            stream: stream.into(),
            duplicate_window: DEFAULT_DUPLICATE_WINDOW,
            context: Mutex::new(None),
        }
    }

    /// From `nats://[user:pass@]host:port?subject_prefix=p&stream=S&duplicate_window_s=120`
    /// (see the crate docs); `tls://` requires TLS, verified against `ca_file=` (else the
    /// system's roots), with a client certificate from `cert_file=` and `key_file=`.
    pub fn from_url(url: &str) -> Result<Self> {
        let mut url = BrokerUrl::parse(url)?;
        let prefix = url.take_or("subject_prefix", DEFAULT_SUBJECT_PREFIX);
        let stream = url.take_or("stream", DEFAULT_STREAM);
        let window = url.take_number::<u64>("duplicate_window_s")?;
        let files = ClientTlsFiles::take_from(&mut url)?;
        url.reject_unknown()?;
        let tls = match url.scheme() {
            "tls" => Some(files),
            _ if files.is_empty() => None,
            _ => {
                return Err(BrokerError::InvalidUrl(
                    "ca_file, cert_file and key_file need a TLS URL (tls://)".into(),
                ));
            }
        };
        let mut publisher = Self::new(url.host_port(4222), prefix, stream);
        if let Some(window) = window {
            publisher.duplicate_window = Duration::from_secs(window);
        }
        if let (Some(user), Some(password)) = (url.username(), url.password()) {
            publisher.credentials = Some((user, password));
        }
        publisher.tls = tls;
        Ok(publisher)
    }

    /// The subject an event type is published on.
    pub fn subject(&self, event_type: &str) -> String {
        let token: String = event_type
            .chars()
            .map(|c| {
                if c.is_whitespace() || c == '*' || c == '>' {
                    '_'
                } else {
                    c
                }
            })
            .collect();
        format!("{}.{token}", self.subject_prefix)
    }

    /// The JetStream stream name.
    pub fn stream(&self) -> &str {
        &self.stream
    }

    async fn open(&self) -> Result<jetstream::Context> {
        let mut options = async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(5))
            .request_timeout(Some(Duration::from_secs(10)));
        if let Some((user, password)) = &self.credentials {
            options = options.user_and_password(user.clone(), password.clone());
        }
        if let Some(files) = &self.tls {
            options = options
                .require_tls(true)
                .tls_client_config(files.client_config(HostnameCheck::Verify)?);
        }
        let client = options
            .connect(self.address.as_str())
            .await
            .map_err(BrokerError::nats)?;
        let context = jetstream::new(client);
        context
            .get_or_create_stream(stream::Config {
                name: self.stream.clone(),
                subjects: vec![format!("{}.>", self.subject_prefix)],
                duplicate_window: self.duplicate_window,
                ..stream::Config::default()
            })
            .await
            .map_err(BrokerError::nats)?;
        Ok(context)
    }

    async fn publish_on(
        &self,
        context: &jetstream::Context,
        events: &[EventEnvelope],
    ) -> Result<()> {
        let mut acks = Vec::with_capacity(events.len());
        for event in events {
            let publish = PublishMessage::build()
                .payload(serde_json::to_vec(event)?.into())
                .message_id(event.event_id.to_string())
                .header("Flexcore-Stream-Id", event.stream_id.as_str())
                .header(
                    "Flexcore-Stream-Version",
                    event.stream_version.to_string().as_str(),
                )
                .header(
                    "Flexcore-Global-Position",
                    event.global_position.to_string().as_str(),
                )
                .header("Flexcore-Event-Type", event.event_type.as_str());
            let ack = context
                .send_publish(self.subject(&event.event_type), publish)
                .await
                .map_err(BrokerError::nats)?;
            acks.push(ack);
        }
        for ack in acks {
            ack.await.map_err(BrokerError::nats)?;
        }
        Ok(())
    }
}

#[async_trait]
impl EventPublisher for NatsPublisher {
    async fn publish(&self, events: &[EventEnvelope]) -> flexcore_app::Result<()> {
        let mut slot = self.context.lock().await;
        if slot.is_none() {
            *slot = Some(self.open().await?);
        }
        let context = slot.as_ref().expect("just connected");
        let result = self.publish_on(context, events).await;
        if result.is_err() {
            // A fresh connection next time; the relay re-sends, JetStream drops the duplicates.
            *slot = None;
        }
        Ok(result?)
    }

    fn name(&self) -> &str {
        "nats"
    }
}
