//! Redis Streams: the outbox publisher and the inbound command consumer (consumer group).

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use flexcore_app::command::CommandBus;
use flexcore_app::follow::{SessionFailed, Shutdown, restart_until_stopped};
use flexcore_app::outbox::EventPublisher;
use flexcore_app::service_url::mask_password;
use flexcore_domain::EventEnvelope;
use flexcore_tls::ClientTlsFiles;
use redis::aio::MultiplexedConnection;
use redis::streams::{
    StreamAutoClaimReply, StreamClaimReply, StreamId, StreamPendingCountReply, StreamReadReply,
};
use redis::{AsyncConnectionConfig, Client, Value};
use tokio::sync::{Mutex, watch};
use tokio::task::JoinHandle;

use crate::error::{BrokerError, Result};
use crate::inbound::{self, CommandMessage, Disposition, InboundOptions, MessageSecret};
use crate::url::{BrokerUrl, InboundParams};

/// The stream the outbox appends to unless the URL names one.
pub const DEFAULT_EVENT_STREAM: &str = "flexcore.events";
/// The stream the inbound gateway consumes unless the URL names one.
pub const DEFAULT_COMMAND_STREAM: &str = "flexcore.commands";
/// The consumer group of the inbound gateway unless the URL names one.
pub const DEFAULT_GROUP: &str = "flexcore";

const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);
const BLOCK: Duration = Duration::from_millis(500);

/// A client for a `redis://` or `rediss://` URL; on `rediss://`, `ca_file=` names the CA the
/// server's certificate must chain to (else the system's roots), and `cert_file=` with
/// `key_file=` a client certificate.
fn open_client(url: &str) -> Result<Client> {
    let (url, tls) = ClientTlsFiles::split(url, &["rediss"])?;
    let invalid =
        |e: redis::RedisError| BrokerError::InvalidUrl(format!("{}: {e}", mask_password(&url)));
    if tls.is_empty() {
        return Client::open(url.as_str()).map_err(invalid);
    }
    let certificates = redis::TlsCertificates {
        client_tls: tls.identity_pem()?.map(|identity| redis::ClientTlsConfig {
            client_cert: identity.cert,
            client_key: identity.key,
        }),
        root_cert: tls.ca_pem()?,
    };
    Client::build_with_tls(url.as_str(), certificates).map_err(invalid)
}

async fn connect(client: &Client, response_timeout: Duration) -> Result<MultiplexedConnection> {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(5)))
        .set_response_timeout(Some(response_timeout));
    Ok(client
        .get_multiplexed_async_connection_with_config(&config)
        .await?)
}

/// Appends events to a Redis stream, a whole batch pipelined in one round trip.
///
/// Each event is one entry with an auto-generated id (the entry id carries no meaning:
/// consumers de-duplicate by `event_id`) and the fields `event_id`, `event_type`, `stream_id`,
/// `stream_version`, `global_position`, `recorded_at` and `envelope` (the whole envelope as
/// JSON). With `maxlen`, the stream is capped approximately (`MAXLEN ~ n`). Redis answers a
/// pipelined `XADD` only once it is applied, so the reply is the confirm.
pub struct RedisStreamPublisher {
    client: Client,
    stream: String,
    maxlen: Option<usize>,
    connection: Mutex<Option<MultiplexedConnection>>,
}

impl RedisStreamPublisher {
    /// Appends to `stream` on the server at `url` (a `redis://` URL as the redis crate takes it).
    pub fn new(url: &str, stream: impl Into<String>) -> Result<Self> {
        Ok(Self {
            client: open_client(url)?,
            stream: stream.into(),
            maxlen: None,
            connection: Mutex::new(None),
        })
    }

    /// From `redis://host:port/db?stream=key&maxlen=n` (see the crate docs).
    pub fn from_url(url: &str) -> Result<Self> {
        let mut url = BrokerUrl::parse(url)?;
        let stream = url.take_or("stream", DEFAULT_EVENT_STREAM);
        let maxlen = url.take_number("maxlen")?;
        Ok(Self::new(&url.driver_url(), stream)?.with_maxlen(maxlen))
    }

    /// Caps the stream at about `maxlen` entries (`None`: no cap).
    pub fn with_maxlen(mut self, maxlen: Option<usize>) -> Self {
        self.maxlen = maxlen;
        self
    }

    /// The stream key appended to.
    pub fn stream(&self) -> &str {
        &self.stream
    }

    fn pipeline(&self, events: &[EventEnvelope]) -> Result<redis::Pipeline> {
        let mut pipe = redis::pipe();
        for event in events {
            let cmd = pipe.cmd("XADD").arg(&self.stream);
            if let Some(maxlen) = self.maxlen {
                cmd.arg("MAXLEN").arg("~").arg(maxlen);
            }
            let recorded_at = event
                .recorded_at
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default();
            cmd.arg("*")
                .arg("event_id")
                .arg(event.event_id.to_string())
                .arg("event_type")
                .arg(&event.event_type)
                .arg("stream_id")
                .arg(event.stream_id.as_str())
                .arg("stream_version")
                .arg(event.stream_version)
                .arg("global_position")
                .arg(event.global_position)
                .arg("recorded_at")
                .arg(recorded_at)
                .arg("envelope")
                .arg(serde_json::to_vec(event)?);
        }
        Ok(pipe)
    }
}

#[async_trait]
impl EventPublisher for RedisStreamPublisher {
    async fn publish(&self, events: &[EventEnvelope]) -> flexcore_app::Result<()> {
        let pipe = self.pipeline(events)?;
        let mut slot = self.connection.lock().await;
        if slot.is_none() {
            *slot = Some(connect(&self.client, RESPONSE_TIMEOUT).await?);
        }
        let connection = slot.as_mut().expect("just connected");
        let result: redis::RedisResult<Vec<Value>> = pipe.query_async(connection).await;
        if let Err(error) = result {
            *slot = None;
            return Err(BrokerError::from(error).into());
        }
        Ok(())
    }

    fn name(&self) -> &str {
        "redis"
    }
}

/// Consumes command messages from a Redis stream through a consumer group.
///
/// An entry is either `message` = the JSON command message (see the crate docs), or flat
/// fields: `command_type`, `payload` (JSON text), and optionally `idempotency_key`,
/// `reply_to`, `correlation_id`, `message_id`; flat fields also fill what the JSON leaves out.
///
/// New entries are read with `XREADGROUP … >`. An entry is acknowledged (`XACK`) only after its
/// command returned (events committed), atomically (`MULTI`) with its reply (`XADD` to
/// `reply_to`) or its dead letter. A transient failure leaves the entry pending and this
/// consumer claims it back (`XCLAIM`) after [`InboundOptions::retry_delay`]; an entry left
/// unacknowledged for [`InboundOptions::claim_idle`] (its consumer died, or lost its
/// connection) is taken over by any member with `XAUTOCLAIM`. A command still running is never
/// taken over before `claim_idle`. The delivery count from `XPENDING` is the attempt number;
/// after [`InboundOptions::max_attempts`] it goes to the dead-letter stream
/// with its fields plus `error`, `error_code`, `attempts` and `original_id`. The group is
/// created at `0` (entries already in the stream are consumed) if it does not exist.
#[derive(Debug, Clone)]
pub struct RedisCommandConsumer {
    url: String,
    stream: String,
    group: String,
    consumer: String,
    dead_letter_stream: String,
    options: InboundOptions,
}

impl RedisCommandConsumer {
    /// Consumes `stream` on the server at `url` in group `flexcore`, as a consumer named after
    /// the host and process; dead letters go to `{stream}.dead-letter`.
    pub fn new(url: impl Into<String>, stream: impl Into<String>) -> Self {
        let stream = stream.into();
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "flexcore".into());
        Self {
            url: url.into(),
            dead_letter_stream: format!("{stream}.dead-letter"),
            stream,
            group: DEFAULT_GROUP.into(),
            consumer: format!("{host}-{}", std::process::id()),
            options: InboundOptions::default(),
        }
    }

    /// From `redis://host:port/db?stream=key&group=g&consumer=c&dead_letter=key&…` (see the
    /// crate docs).
    pub fn from_url(url: &str) -> Result<Self> {
        let mut url = BrokerUrl::parse(url)?;
        let stream = url.take_or("stream", DEFAULT_COMMAND_STREAM);
        let group = url.take("group");
        let consumer = url.take("consumer");
        let dead_letter = url.take("dead_letter");
        let options = url.take_inbound_options()?;
        let mut this = Self::new(url.driver_url(), stream).with_options(options);
        if let Some(group) = group {
            this.group = group;
        }
        if let Some(consumer) = consumer {
            this.consumer = consumer;
        }
        if let Some(dead_letter) = dead_letter {
            this.dead_letter_stream = dead_letter;
        }
        Ok(this)
    }

    /// Replaces the options.
    pub fn with_options(mut self, options: InboundOptions) -> Self {
        self.options = options;
        self
    }

    /// Authenticates each message's credential with `gate`.
    pub fn with_gate(mut self, gate: Arc<flexcore_app::security::Gatekeeper>) -> Self {
        self.options.gate = gate;
        self
    }

    /// Joins consumer group `group` as `consumer`.
    pub fn with_group(mut self, group: impl Into<String>, consumer: impl Into<String>) -> Self {
        self.group = group.into();
        self.consumer = consumer.into();
        self
    }

    /// Sends dead letters to `stream`.
    pub fn with_dead_letter_stream(mut self, stream: impl Into<String>) -> Self {
        self.dead_letter_stream = stream.into();
        self
    }

    /// The stream consumed.
    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// The dead-letter stream.
    pub fn dead_letter_stream(&self) -> &str {
        &self.dead_letter_stream
    }

    /// The retry and take-over settings.
    pub fn options(&self) -> &InboundOptions {
        &self.options
    }

    /// Runs [`run`](Self::run) on a task.
    pub fn spawn(
        self,
        bus: Arc<dyn CommandBus>,
        shutdown: watch::Receiver<bool>,
    ) -> JoinHandle<()> {
        tokio::spawn(self.run(bus, shutdown))
    }

    /// Consumes until `shutdown` turns `true` (or its sender is dropped), reconnecting with a
    /// capped backoff after failures. Entries in flight at shutdown are abandoned unacknowledged:
    /// they stay pending and a member of the group takes them over after
    /// [`InboundOptions::claim_idle`] (at least once: see the inbound module on idempotency).
    pub async fn run(self, bus: Arc<dyn CommandBus>, shutdown: watch::Receiver<bool>) {
        let shutdown = Shutdown::new(shutdown);
        let (this, bus) = (&self, &bus);
        restart_until_stopped(
            shutdown.clone(),
            inbound::reconnect_backoff(self.options.max_backoff),
            || {
                let mut shutdown = shutdown.clone();
                async move {
                    match shutdown.unless_requested(this.session(bus)).await {
                        None => Ok(()),
                        Some(Err(error)) => Err(SessionFailed::new(error)),
                    }
                }
            },
            |error, delay| {
                tracing::warn!(
                    stream = %self.stream,
                    error = %error,
                    retry_in_ms = delay.as_millis() as u64,
                    "redis command consumer failed; reconnecting"
                );
            },
        )
        .await;
        tracing::info!(stream = %self.stream, "redis command consumer stopped");
    }

    /// One connection's life; only returns on a failure (shutdown drops it).
    async fn session(&self, bus: &Arc<dyn CommandBus>) -> Result<Infallible> {
        let client = open_client(&self.url)?;
        let mut conn = connect(&client, RESPONSE_TIMEOUT).await?;
        // Blocking reads get their own connection, so they never hold up acks and replies.
        let mut reader = connect(&client, BLOCK + RESPONSE_TIMEOUT).await?;
        let created: redis::RedisResult<()> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&self.stream)
            .arg(&self.group)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut conn)
            .await;
        match created {
            Ok(()) => {}
            Err(e) if e.code() == Some("BUSYGROUP") => {}
            Err(e) => return Err(e.into()),
        }
        tracing::info!(stream = %self.stream, group = %self.group, consumer = %self.consumer,
            "redis command consumer started");
        let count = self.options.concurrency.max(1);
        let mut cursor = "0-0".to_owned();
        // Entries of this consumer whose attempt failed, with when to claim them back.
        let mut retries: Vec<(String, tokio::time::Instant)> = Vec::new();
        loop {
            let mut batch = Vec::new();
            // First the retries that are due: claimed back by id (the delivery count grows).
            let now = tokio::time::Instant::now();
            let due: Vec<String> = retries
                .extract_if(.., |(_, at)| *at <= now)
                .map(|(id, _)| id)
                .collect();
            if !due.is_empty() {
                let claimed: StreamClaimReply = redis::cmd("XCLAIM")
                    .arg(&self.stream)
                    .arg(&self.group)
                    .arg(&self.consumer)
                    // Idle since its failed delivery; not if another member took it since.
                    .arg(self.options.retry_delay.as_millis() as u64)
                    .arg(&due)
                    .query_async(&mut conn)
                    .await?;
                batch.extend(claimed.ids);
            }
            // Then the entries another consumer abandoned (or a crash left behind).
            let abandoned: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
                .arg(&self.stream)
                .arg(&self.group)
                .arg(&self.consumer)
                .arg(self.options.claim_idle.as_millis() as u64)
                .arg(&cursor)
                .arg("COUNT")
                .arg(count)
                .query_async(&mut conn)
                .await?;
            cursor = abandoned.next_stream_id;
            batch.extend(abandoned.claimed);
            let mut attempts = Vec::with_capacity(batch.len());
            for entry in batch {
                let attempt = self.delivery_count(&mut conn, &entry.id).await?;
                attempts.push((entry, attempt));
            }
            if attempts.is_empty() {
                // Wake up for the next retry that falls due, at the latest.
                let block = retries.iter().map(|(_, at)| *at).min().map_or(BLOCK, |at| {
                    at.saturating_duration_since(now)
                        .clamp(Duration::from_millis(1), BLOCK)
                });
                let read: Option<StreamReadReply> = redis::cmd("XREADGROUP")
                    .arg("GROUP")
                    .arg(&self.group)
                    .arg(&self.consumer)
                    .arg("COUNT")
                    .arg(count)
                    .arg("BLOCK")
                    .arg(block.as_millis() as u64)
                    .arg("STREAMS")
                    .arg(&self.stream)
                    .arg(">")
                    .query_async(&mut reader)
                    .await?;
                attempts.extend(
                    read.into_iter()
                        .flat_map(|r| r.keys)
                        .flat_map(|k| k.ids)
                        .map(|entry| (entry, 1)),
                );
            }
            let handled = futures_util::future::join_all(
                attempts
                    .into_iter()
                    .map(|(entry, attempt)| self.handle(conn.clone(), bus, entry, attempt)),
            )
            .await;
            for outcome in handled {
                if let Handled::Retry(id) = outcome? {
                    let at = tokio::time::Instant::now() + self.options.retry_delay;
                    retries.push((id, at));
                }
            }
        }
    }

    async fn delivery_count(&self, conn: &mut MultiplexedConnection, id: &str) -> Result<u32> {
        let pending: StreamPendingCountReply = redis::cmd("XPENDING")
            .arg(&self.stream)
            .arg(&self.group)
            .arg(id)
            .arg(id)
            .arg(1)
            .query_async(conn)
            .await?;
        Ok(pending
            .ids
            .first()
            .map_or(1, |p| u32::try_from(p.times_delivered).unwrap_or(u32::MAX)))
    }

    async fn handle(
        &self,
        mut conn: MultiplexedConnection,
        bus: &Arc<dyn CommandBus>,
        entry: StreamId,
        attempt: u32,
    ) -> Result<Handled> {
        let field = |key: &str| entry.get::<String>(key).filter(|v| !v.is_empty());
        let parsed = match field("message") {
            Some(json) => CommandMessage::from_json(json.as_bytes()),
            None => match field("payload") {
                Some(payload) => serde_json::from_str(&payload)
                    .map_err(|e| format!("the payload field is not JSON: {e}"))
                    .and_then(|payload: serde_json::Value| {
                        if payload.is_object() {
                            Ok(CommandMessage {
                                payload,
                                ..CommandMessage::default()
                            })
                        } else {
                            Err("the payload field must be a JSON object".to_owned())
                        }
                    }),
                None => CommandMessage::from_json(b""),
            },
        };
        let (disposition, reply_to, correlation) = match parsed {
            Err(detail) => (
                inbound::malformed(&detail, field("correlation_id").as_deref()),
                field("reply_to"),
                field("correlation_id"),
            ),
            Ok(mut message) => {
                message.command_type = message.command_type.or_else(|| field("command_type"));
                message.idempotency_key =
                    message.idempotency_key.or_else(|| field("idempotency_key"));
                message.reply_to = message.reply_to.or_else(|| field("reply_to"));
                message.authorization = message
                    .authorization
                    .or_else(|| field("authorization").map(MessageSecret));
                message.api_key = message
                    .api_key
                    .or_else(|| field("x-api-key").map(MessageSecret));
                message.correlation_id = message
                    .correlation_id
                    .or_else(|| field("correlation_id"))
                    .or_else(|| field("message_id"));
                let key = field("message_id")
                    .unwrap_or_else(|| format!("redis:{}:{}", self.stream, entry.id));
                let reply_to = message.reply_to.clone();
                let correlation = message.correlation_id.clone();
                let disposition =
                    inbound::execute(bus, message, Some(key), attempt, &self.options).await;
                (disposition, reply_to, correlation)
            }
        };
        let mut pipe = redis::pipe();
        pipe.atomic();
        let reply = match disposition {
            // Stays pending; claimed back after the retry delay.
            Disposition::Retry { .. } => return Ok(Handled::Retry(entry.id)),
            Disposition::Done { reply } => reply,
            Disposition::DeadLetter { error, code, reply } => {
                let cmd = pipe.cmd("XADD").arg(&self.dead_letter_stream).arg("*");
                let original: HashMap<&str, String> = entry
                    .map
                    .iter()
                    .filter_map(|(k, v)| {
                        redis::from_redis_value_ref::<String>(v)
                            .ok()
                            .map(|v| (k.as_str(), v))
                    })
                    .collect();
                for (key, value) in &original {
                    cmd.arg(*key).arg(value);
                }
                cmd.arg("error")
                    .arg(error)
                    .arg("error_code")
                    .arg(code)
                    .arg("attempts")
                    .arg(attempt)
                    .arg("original_id")
                    .arg(&entry.id)
                    .ignore();
                reply
            }
        };
        if let Some(reply_to) = reply_to {
            let cmd = pipe.cmd("XADD").arg(reply_to).arg("*");
            if let Some(id) = &correlation {
                cmd.arg("correlation_id").arg(id);
            }
            cmd.arg("ok")
                .arg(if reply["ok"] == serde_json::Value::Bool(true) {
                    "true"
                } else {
                    "false"
                })
                .arg("reply")
                .arg(reply.to_string())
                .ignore();
        }
        pipe.cmd("XACK")
            .arg(&self.stream)
            .arg(&self.group)
            .arg(&entry.id)
            .ignore();
        pipe.query_async::<()>(&mut conn).await?;
        Ok(Handled::Acknowledged)
    }
}

/// What became of an entry.
enum Handled {
    /// Acknowledged, with its reply or dead letter.
    Acknowledged,
    /// Left pending for another attempt.
    Retry(String),
}
