//! The outbox relay against the real RabbitMQ, Redis and NATS JetStream: every event arrives,
//! in per-stream order, with its event id; a broker cut off behind a proxy delays publication
//! and loses nothing.

mod common;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use common::*;
use flexcore_app::outbox::EventPublisher;
use flexcore_app::store::InMemoryStore;
use flexcore_broker::{NatsPublisher, RabbitPublisher, RedisStreamPublisher};
use flexcore_domain::EventEnvelope;
use flexcore_test_support::services::{self, nats_url, rabbitmq_url, redis_url, unique_name};
use flexcore_test_support::tls::{TestCa, TestPki, TlsProxy, TlsProxyOptions};
use futures_util::StreamExt;
use lapin::options::{
    BasicConsumeOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use tokio::sync::watch;

const TIMEOUT: Duration = Duration::from_secs(40);

/// What a broker holds (or delivered) for a test.
#[async_trait]
trait Sink: Send + Sync {
    /// Everything received so far, in arrival order, after checking each message's id.
    async fn received(&self) -> Vec<EventEnvelope>;
    /// Removes the test's exchange/queue/stream.
    async fn cleanup(&self);
}

fn distinct(events: &[EventEnvelope]) -> usize {
    events
        .iter()
        .map(|e| e.event_id)
        .collect::<HashSet<_>>()
        .len()
}

/// Appends, relays (history and live), and checks that everything arrived in order.
async fn relay_delivers_everything_in_order(publisher: Arc<dyn EventPublisher>, sink: &dyn Sink) {
    let store = Arc::new(InMemoryStore::new());
    let streams = stream_names(4);
    append_interleaved(&store, &streams, 5).await;
    let (relay, _) = relay("delivery", publisher, store.clone());
    let (stop, shutdown) = watch::channel(false);
    let task = relay.spawn(shutdown);
    let appended = append_interleaved(&store, &streams, 3).await;
    let wanted = appended.len();
    eventually(TIMEOUT, "every event to arrive", || async {
        distinct(&sink.received().await) >= wanted
    })
    .await;
    stop.send(true).unwrap();
    task.await.unwrap();
    let delivered = sink.received().await;
    sink.cleanup().await;
    let duplicates = check_delivery(&appended, &delivered);
    assert_eq!(duplicates, 0, "no failure, no re-send");
}

/// Cuts the broker off behind the proxy, appends, restores, and checks that nothing was lost.
async fn relay_survives_an_outage(
    publisher: Arc<dyn EventPublisher>,
    proxy: &TcpProxy,
    sink: &dyn Sink,
) -> usize {
    let store = Arc::new(InMemoryStore::new());
    let streams = stream_names(3);
    let before = append_interleaved(&store, &streams, 2).await.len();
    let (relay, checkpoints) = relay("outage", publisher, store.clone());
    let (stop, shutdown) = watch::channel(false);
    let task = relay.spawn(shutdown);
    eventually(TIMEOUT, "the first events to arrive", || async {
        distinct(&sink.received().await) >= before
    })
    .await;

    proxy.down();
    let during = append_interleaved(&store, &streams, 4).await.len();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        distinct(&sink.received().await),
        before,
        "nothing gets through while the broker is cut off"
    );
    use flexcore_app::durable::CheckpointStore;
    let stuck = checkpoints.load_checkpoint("outbox:outage").await.unwrap();
    assert_eq!(stuck, Some(before as u64 + 1), "the checkpoint waits");

    proxy.up();
    let appended = append_interleaved(&store, &streams, 2).await;
    assert!(appended.len() > during);
    let wanted = appended.len();
    eventually(
        TIMEOUT,
        "every event to arrive after the outage",
        || async { distinct(&sink.received().await) >= wanted },
    )
    .await;
    stop.send(true).unwrap();
    task.await.unwrap();
    let delivered = sink.received().await;
    sink.cleanup().await;
    check_delivery(&appended, &delivered)
}

// --- RabbitMQ ------------------------------------------------------------------------------

struct RabbitSink {
    connection: lapin::Connection,
    channel: lapin::Channel,
    exchange: String,
    queue: String,
    received: Arc<Mutex<Vec<EventEnvelope>>>,
}

impl RabbitSink {
    /// Declares the exchange and a queue bound to every routing key, and consumes it.
    async fn new(url: &str, exchange: &str) -> Self {
        let connection = lapin::Connection::connect(url, Default::default())
            .await
            .unwrap();
        let channel = connection.create_channel().await.unwrap();
        channel
            .exchange_declare(
                exchange.into(),
                lapin::ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        let queue = unique_name("outbox_sink");
        channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        channel
            .queue_bind(
                queue.as_str().into(),
                exchange.into(),
                "#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        let mut consumer = channel
            .basic_consume(
                queue.as_str().into(),
                "".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let sink = received.clone();
        tokio::spawn(async move {
            while let Some(Ok(delivery)) = consumer.next().await {
                let event: EventEnvelope = serde_json::from_slice(&delivery.data).unwrap();
                let properties = &delivery.properties;
                let message_id = properties.message_id().as_ref().map(|s| s.to_string());
                assert_eq!(message_id, Some(event.event_id.to_string()), "message_id");
                assert_eq!(delivery.routing_key.as_str(), event.event_type);
                let headers = properties.headers().as_ref().unwrap().inner();
                assert_eq!(
                    headers.get("stream_id"),
                    Some(&AMQPValue::LongString(event.stream_id.as_str().into()))
                );
                assert_eq!(
                    headers.get("global_position"),
                    Some(&AMQPValue::LongLongInt(event.global_position as i64))
                );
                sink.lock().unwrap().push(event);
            }
        });
        Self {
            connection,
            channel,
            exchange: exchange.to_owned(),
            queue,
            received,
        }
    }
}

#[async_trait]
impl Sink for RabbitSink {
    async fn received(&self) -> Vec<EventEnvelope> {
        self.received.lock().unwrap().clone()
    }

    async fn cleanup(&self) {
        let _ = self
            .channel
            .queue_delete(self.queue.as_str().into(), QueueDeleteOptions::default())
            .await;
        let _ = self
            .channel
            .exchange_delete(
                self.exchange.as_str().into(),
                ExchangeDeleteOptions::default(),
            )
            .await;
        let _ = self.connection.close(200, "bye".into()).await;
    }
}

#[tokio::test]
async fn rabbitmq_relay_delivers_every_event_in_stream_order() {
    let Some(url) = rabbitmq_url() else { return };
    let exchange = unique_name("outbox");
    let sink = RabbitSink::new(&url, &exchange).await;
    let publisher = Arc::new(RabbitPublisher::new(url, exchange));
    relay_delivers_everything_in_order(publisher, &sink).await;
}

#[tokio::test]
async fn rabbitmq_outage_delays_publication_and_loses_nothing() {
    let Some(url) = rabbitmq_url() else { return };
    let exchange = unique_name("outbox");
    let sink = RabbitSink::new(&url, &exchange).await;
    let proxy = TcpProxy::start(&services::service_address(&url)).await;
    let via_proxy = services::with_query_param(
        &services::proxied_url(&url, proxy.port()),
        "exchange",
        &exchange,
    );
    let publisher = Arc::new(RabbitPublisher::from_url(&via_proxy).unwrap());
    let duplicates = relay_survives_an_outage(publisher, &proxy, &sink).await;
    eprintln!("rabbitmq: {duplicates} re-sent duplicates");
}

// --- Redis Streams ---------------------------------------------------------------------------

struct RedisSink {
    client: redis::Client,
    key: String,
}

#[async_trait]
impl Sink for RedisSink {
    async fn received(&self) -> Vec<EventEnvelope> {
        let mut conn = self
            .client
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let entries: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(&self.key)
            .arg("-")
            .arg("+")
            .query_async(&mut conn)
            .await
            .unwrap();
        entries
            .ids
            .iter()
            .map(|entry| {
                let event: EventEnvelope =
                    serde_json::from_str(&entry.get::<String>("envelope").unwrap()).unwrap();
                assert_eq!(
                    entry.get::<String>("event_id"),
                    Some(event.event_id.to_string())
                );
                assert_eq!(
                    entry.get::<String>("event_type"),
                    Some(event.event_type.clone())
                );
                assert_eq!(
                    entry.get::<u64>("stream_version"),
                    Some(event.stream_version)
                );
                event
            })
            .collect()
    }

    async fn cleanup(&self) {
        let mut conn = self
            .client
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let _: redis::RedisResult<()> = redis::cmd("DEL")
            .arg(&self.key)
            .query_async(&mut conn)
            .await;
    }
}

#[tokio::test]
async fn redis_relay_delivers_every_event_in_stream_order() {
    let Some(url) = redis_url() else { return };
    let key = unique_name("outbox");
    let sink = RedisSink {
        client: redis::Client::open(url.as_str()).unwrap(),
        key: key.clone(),
    };
    let publisher = Arc::new(RedisStreamPublisher::new(&url, key).unwrap());
    relay_delivers_everything_in_order(publisher, &sink).await;
}

#[tokio::test]
async fn redis_outage_delays_publication_and_loses_nothing() {
    let Some(url) = redis_url() else { return };
    let key = unique_name("outbox");
    let sink = RedisSink {
        client: redis::Client::open(url.as_str()).unwrap(),
        key: key.clone(),
    };
    let proxy = TcpProxy::start(&services::service_address(&url)).await;
    let via_proxy =
        services::with_query_param(&services::proxied_url(&url, proxy.port()), "stream", &key);
    let publisher = Arc::new(RedisStreamPublisher::from_url(&via_proxy).unwrap());
    let duplicates = relay_survives_an_outage(publisher, &proxy, &sink).await;
    eprintln!("redis: {duplicates} re-sent duplicates");
}

// --- NATS JetStream --------------------------------------------------------------------------

struct NatsSink {
    context: async_nats::jetstream::Context,
    stream: String,
}

impl NatsSink {
    async fn new(url: &str, stream: &str) -> Self {
        let client = async_nats::connect(url).await.unwrap();
        Self {
            context: async_nats::jetstream::new(client),
            stream: stream.to_owned(),
        }
    }
}

#[async_trait]
impl Sink for NatsSink {
    async fn received(&self) -> Vec<EventEnvelope> {
        let Ok(mut stream) = self.context.get_stream(&self.stream).await else {
            return Vec::new(); // not created yet
        };
        let state = stream.info().await.unwrap().state.clone();
        let mut events = Vec::new();
        for sequence in state.first_sequence..=state.last_sequence {
            if state.messages == 0 {
                break;
            }
            let message = stream.get_raw_message(sequence).await.unwrap();
            let event: EventEnvelope = serde_json::from_slice(&message.payload).unwrap();
            assert_eq!(
                message.headers.get("Nats-Msg-Id").map(|v| v.as_str()),
                Some(event.event_id.to_string().as_str())
            );
            assert!(message.subject.ends_with(&event.event_type));
            events.push(event);
        }
        events
    }

    async fn cleanup(&self) {
        let _ = self.context.delete_stream(&self.stream).await;
    }
}

fn nats_publisher(url: &str, stream: &str) -> Arc<NatsPublisher> {
    let prefix = unique_name("outbox");
    Arc::new(
        NatsPublisher::from_url(&format!("{url}?subject_prefix={prefix}&stream={stream}")).unwrap(),
    )
}

#[tokio::test]
async fn nats_relay_delivers_every_event_in_stream_order() {
    let Some(url) = nats_url() else { return };
    let stream = unique_name("OUTBOX");
    let sink = NatsSink::new(&url, &stream).await;
    relay_delivers_everything_in_order(nats_publisher(&url, &stream), &sink).await;
}

#[tokio::test]
async fn nats_jetstream_drops_re_sent_events() {
    let Some(url) = nats_url() else { return };
    let stream = unique_name("OUTBOX");
    let sink = NatsSink::new(&url, &stream).await;
    let publisher = nats_publisher(&url, &stream);
    let store = Arc::new(InMemoryStore::new());
    let events = append_interleaved(&store, &stream_names(2), 3).await;
    publisher.publish(&events).await.unwrap();
    publisher.publish(&events).await.unwrap();
    publisher.publish(&events[2..4]).await.unwrap();
    let stored = sink.received().await;
    sink.cleanup().await;
    assert_eq!(stored.len(), events.len(), "re-sends are not stored twice");
    assert_eq!(check_delivery(&events, &stored), 0);
}

#[tokio::test]
async fn nats_outage_delays_publication_and_loses_nothing() {
    let Some(url) = nats_url() else { return };
    let stream = unique_name("OUTBOX");
    let sink = NatsSink::new(&url, &stream).await;
    let proxy = TcpProxy::start(&services::service_address(&url)).await;
    let via_proxy = services::with_query_param(
        &services::with_query_param(
            &services::proxied_url(&url, proxy.port()),
            "subject_prefix",
            &unique_name("outbox"),
        ),
        "stream",
        &stream,
    );
    let publisher = Arc::new(NatsPublisher::from_url(&via_proxy).unwrap());
    let duplicates = relay_survives_an_outage(publisher, &proxy, &sink).await;
    assert_eq!(duplicates, 0, "JetStream drops re-sends by Nats-Msg-Id");
}

// --- over TLS --------------------------------------------------------------------------------
//
// RabbitMQ and Redis sit behind a TLS-terminating proxy made by the test; NATS is a second
// nats-server started with a test certificate. Each relay must verify the server against the
// CA file its URL names.

/// `url` with the scheme `scheme`, pointed at `127.0.0.1:port`, trusting `ca_file`.
fn tls_url(url: &str, scheme: &str, port: u16, ca_file: &std::path::Path) -> String {
    let proxied = services::proxied_url(url, port);
    let (_, rest) = proxied.split_once("://").unwrap();
    services::with_query_param(
        &format!("{scheme}://{rest}"),
        "ca_file",
        &ca_file.display().to_string(),
    )
}

async fn tls_proxy(url: &str, pki: &TestPki, client_ca: Option<std::path::PathBuf>) -> TlsProxy {
    TlsProxy::start(
        &services::service_address(url),
        TlsProxyOptions {
            server: pki.server.clone(),
            client_ca,
            postgres: false,
        },
    )
    .await
}

#[tokio::test]
async fn rabbitmq_relay_publishes_over_amqps() {
    let Some(url) = rabbitmq_url() else { return };
    let pki = TestPki::new();
    let proxy = tls_proxy(&url, &pki, None).await;
    let exchange = unique_name("outbox");
    let sink = RabbitSink::new(&url, &exchange).await;
    let amqps = services::with_query_param(
        &tls_url(&url, "amqps", proxy.port(), &pki.ca_file),
        "exchange",
        &exchange,
    );
    let publisher = Arc::new(RabbitPublisher::from_url(&amqps).unwrap());
    relay_delivers_everything_in_order(publisher, &sink).await;
    assert!(proxy.sessions() >= 1, "published through TLS");
}

#[tokio::test]
async fn redis_relay_publishes_over_rediss_with_a_client_certificate() {
    let Some(url) = redis_url() else { return };
    let pki = TestPki::new();
    let proxy = tls_proxy(&url, &pki, Some(pki.ca_file.clone())).await;
    let key = unique_name("outbox");
    let sink = RedisSink {
        client: redis::Client::open(url.as_str()).unwrap(),
        key: key.clone(),
    };
    let rediss = services::with_query_param(
        &tls_url(&url, "rediss", proxy.port(), &pki.ca_file),
        "stream",
        &key,
    );
    // Without a client certificate the proxy refuses the handshake: nothing is published.
    let store = Arc::new(InMemoryStore::new());
    let events = append_interleaved(&store, &stream_names(1), 1).await;
    let anonymous = RedisStreamPublisher::from_url(&rediss).unwrap();
    assert!(
        anonymous.publish(&events).await.is_err(),
        "no client certificate"
    );
    let client = pki.client("relay");
    let with_certificate = format!(
        "{rediss}&cert_file={}&key_file={}",
        client.cert.display(),
        client.key.display()
    );
    let publisher = Arc::new(RedisStreamPublisher::from_url(&with_certificate).unwrap());
    relay_delivers_everything_in_order(publisher, &sink).await;
    assert!(proxy.sessions() >= 1, "published through TLS");
}

#[tokio::test]
async fn redis_relay_refuses_a_server_it_cannot_verify() {
    let Some(url) = redis_url() else { return };
    let pki = TestPki::new();
    let proxy = tls_proxy(&url, &pki, None).await;
    let stranger = TestCa::new("someone else").write_ca(pki.dir.path(), "other.pem");
    let rediss = services::with_query_param(
        &tls_url(&url, "rediss", proxy.port(), &stranger),
        "stream",
        &unique_name("outbox"),
    );
    let store = Arc::new(InMemoryStore::new());
    let events = append_interleaved(&store, &stream_names(1), 1).await;
    let publisher = RedisStreamPublisher::from_url(&rediss).unwrap();
    assert!(publisher.publish(&events).await.is_err());
    assert_eq!(proxy.sessions(), 0);
}

#[tokio::test]
async fn tls_files_on_a_plain_url_are_refused() {
    let needs_tls = |error: String| assert!(error.contains("need a TLS URL"), "{error}");
    needs_tls(
        RedisStreamPublisher::from_url("redis://127.0.0.1/?ca_file=/ca.pem")
            .err()
            .unwrap()
            .to_string(),
    );
    needs_tls(
        NatsPublisher::from_url("nats://127.0.0.1:4222?ca_file=/ca.pem")
            .err()
            .unwrap()
            .to_string(),
    );
    let store = Arc::new(InMemoryStore::new());
    let events = append_interleaved(&store, &stream_names(1), 1).await;
    let rabbit = RabbitPublisher::from_url("amqp://127.0.0.1/%2f?ca_file=/ca.pem").unwrap();
    needs_tls(rabbit.publish(&events).await.unwrap_err().to_string());
}

/// A nats-server with JetStream that speaks TLS only, on a free port, stopped when dropped.
struct TlsNatsServer {
    port: u16,
    _child: tokio::process::Child,
    _store: tempfile::TempDir,
}

impl TlsNatsServer {
    async fn start(pki: &TestPki) -> Option<Self> {
        let binary = ["/usr/sbin/nats-server", "/usr/bin/nats-server"]
            .into_iter()
            .find(|path| std::path::Path::new(path).exists())?;
        let port = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            probe.local_addr().unwrap().port()
        };
        let store = tempfile::tempdir().unwrap();
        let child = tokio::process::Command::new(binary)
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(store.path())
            .arg("--tls")
            .arg("--tlscert")
            .arg(&pki.server.cert)
            .arg("--tlskey")
            .arg(&pki.server.key)
            .kill_on_drop(true)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start nats-server");
        let address = format!("127.0.0.1:{port}");
        eventually(Duration::from_secs(10), "nats-server to listen", || async {
            tokio::net::TcpStream::connect(&address).await.is_ok()
        })
        .await;
        Some(Self {
            port,
            _child: child,
            _store: store,
        })
    }
}

#[tokio::test]
async fn nats_relay_publishes_over_tls() {
    if nats_url().is_none() {
        return;
    }
    let pki = TestPki::new();
    let Some(server) = TlsNatsServer::start(&pki).await else {
        assert!(
            !services::services_required(),
            "nats-server is not installed"
        );
        return;
    };
    let stream = unique_name("OUTBOX");
    let client = async_nats::ConnectOptions::new()
        .add_root_certificates(pki.ca_file.clone())
        .require_tls(true)
        .connect(format!("127.0.0.1:{}", server.port))
        .await
        .expect("a TLS client of the test server");
    let sink = NatsSink {
        context: async_nats::jetstream::new(client),
        stream: stream.clone(),
    };
    let url = format!(
        "tls://127.0.0.1:{}?ca_file={}&subject_prefix={}&stream={stream}",
        server.port,
        pki.ca_file.display(),
        unique_name("outbox")
    );
    let publisher = Arc::new(NatsPublisher::from_url(&url).unwrap());
    relay_delivers_everything_in_order(publisher, &sink).await;
    // A plain client cannot publish to it.
    let plain = NatsPublisher::from_url(&format!(
        "nats://127.0.0.1:{}?stream={}",
        server.port,
        unique_name("OUTBOX")
    ))
    .unwrap();
    let store = Arc::new(InMemoryStore::new());
    let events = append_interleaved(&store, &stream_names(1), 1).await;
    assert!(plain.publish(&events).await.is_err(), "TLS is required");
}
