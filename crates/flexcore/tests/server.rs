//! The real binary: durability across `kill -9`, start-up errors, graceful shutdown.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::Server;

use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_writes_survive_kill_9() {
    let data = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", data.path().join("flexcore.db").display());
    write_kill_restart_read(data.path(), &url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_writes_survive_kill_9_on_postgres() {
    let Some(base) = flexcore_test_support::services::postgres_url() else {
        return;
    };
    let schema = flexcore_test_support::services::unique_name("fc_kill9");
    let data = tempfile::tempdir().unwrap();
    let url = flexcore_test_support::services::with_query_param(&base, "schema", &schema);
    write_kill_restart_read(data.path(), &url).await;
    flexcore_store_postgres::drop_schema(&base, &schema)
        .await
        .unwrap();
}

async fn write_kill_restart_read(data: &Path, store_url: &str) {
    let server = Server::start_with(data, store_url).await;
    let client = reqwest::Client::new();

    let mut tasks = Vec::new();
    for i in 0..40 {
        let (client, base) = (client.clone(), server.base.clone());
        tasks.push(tokio::spawn(async move {
            let body = json!({"expected_version": "no_stream", "events": [
                {"event_type": "crash.test", "data": {"i": i}},
                {"event_type": "crash.test", "data": {"i": i, "second": true}}
            ]});
            let r = client
                .post(format!("{base}/v1/streams/crash-{i}"))
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            (i, r.json::<Value>().await.unwrap())
        }));
    }
    let mut acked = Vec::new();
    for t in tasks {
        acked.push(t.await.unwrap());
    }
    let user = client
        .post(format!("{}/v1/commands/create_user", server.base))
        .json(&json!({"email": "durable@example.com"}))
        .send()
        .await
        .unwrap();
    assert_eq!(user.status(), 200);
    let user: Value = user.json().await.unwrap();
    server.kill_9();

    let server = Server::start_with(data, store_url).await;
    for (i, ack) in acked {
        let r: Value = client
            .get(format!("{}/v1/streams/crash-{i}", server.base))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(r["version"], 1, "stream crash-{i} after restart: {r}");
        assert_eq!(r["events"][1]["global_position"], ack["last_position"]);
        assert_eq!(r["events"][0]["data"]["i"], i);
    }
    let stream = user["stream_id"].as_str().unwrap();
    let r = client
        .get(format!("{}/v1/streams/{stream}", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let again = client
        .post(format!("{}/v1/commands/create_user", server.base))
        .json(&json!({"email": "durable@example.com"}))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 409, "the email reservation survived too");
    let page: Value = client
        .get(format!("{}/v1/events?limit=1000", server.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    // The welcome notifier (a durable consumer) may have added notifications since.
    let domain_events = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| {
            !e["stream_id"]
                .as_str()
                .unwrap()
                .starts_with("notification-")
        })
        .count();
    assert_eq!(domain_events, 82);
}

#[test]
fn a_bad_config_file_fails_at_start_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("flexcore.toml");
    std::fs::write(
        &config,
        "http_addr = \"127.0.0.1:0\"\nstore_urll = \"sqlite://x.db\"\n",
    )
    .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_flexcore"))
        .args(["serve", "--config"])
        .arg(&config)
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("store_urll") && stderr.contains("flexcore.toml"),
        "{stderr}"
    );
    assert!(!dir.path().join("data").exists(), "nothing was created");
}

#[test]
fn a_bad_broker_url_fails_at_start_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    for (variable, url) in [
        (
            "FLEXCORE_OUTBOX_URL",
            "redis://127.0.0.1:6379/?batch_size=many",
        ),
        (
            "FLEXCORE_INBOUND_URL",
            "amqp://127.0.0.1:5672/%2f?max_attempts=often",
        ),
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_flexcore"))
            .args([
                "serve",
                "--http-addr",
                "127.0.0.1:0",
                "--grpc-addr",
                "127.0.0.1:0",
            ])
            .env(variable, url)
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(!output.status.success(), "{variable}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        let key = variable.trim_start_matches("FLEXCORE_").to_lowercase();
        assert!(stderr.contains(&format!("invalid {key}")), "{stderr}");
        assert!(
            !dir.path().join("data").exists(),
            "{variable}: nothing was created"
        );
    }
}

#[tokio::test]
async fn the_library_server_runs_on_an_ephemeral_port_and_shuts_down() {
    let data = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let settings = flexcore::config::Settings {
        http_addr: addr,
        grpc_addr: "127.0.0.1:0".parse().unwrap(),
        store_url: format!("sqlite://{}", data.path().join("db.sqlite").display()),
        log: "warn".into(),
        log_format: flexcore::config::LogFormat::Text,
        max_body_bytes: 1024 * 1024,
        max_connections: 100,
        header_read_timeout_ms: 10_000,
        log_mask: vec!["email".into()],
        otlp_endpoint: None,
        modules: vec!["users".into()],
        python: Default::default(),
        plugins_dir: None,
        cache_url: None,
        outbox_url: None,
        inbound_url: None,
        security: Default::default(),
        validation: Default::default(),
        gdpr: Default::default(),
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(flexcore::server::run(settings, listener, async {
        let _ = stopped.await;
    }));
    let client = reqwest::Client::new();
    let r = client
        .post(format!("http://{addr}/v1/commands/create_user"))
        .json(&json!({"email": "lib@example.com", "profile": {"name": "Lib"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_lets_durable_consumers_save_their_checkpoint() {
    let data = tempfile::tempdir().unwrap();
    let db = data.path().join("flexcore.db");
    let mut server = Server::start_with(data.path(), &format!("sqlite://{}", db.display())).await;
    let client = reqwest::Client::new();
    let mut last = 0;
    for i in 0..5 {
        let outcome: Value = client
            .post(format!("{}/v1/commands/create_user", server.base))
            .json(&json!({"email": format!("term{i}@example.com")}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        last = outcome["events"][0]["global_position"].as_u64().unwrap();
    }
    // The moment the welcome consumer has handled them, before its idle save (200 ms) ran.
    let mut handled = 0;
    for _ in 0..500 {
        let subscriptions = server.get_json("/v1/subscriptions").await;
        handled = subscriptions[0]["position"].as_u64().unwrap();
        if handled > last {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert!(handled > last, "the welcome consumer never caught up");
    assert_eq!(server.terminate().await.code(), Some(0));
    let read_models =
        rusqlite::Connection::open(data.path().join("flexcore.db.readmodels.db")).unwrap();
    let saved: i64 = read_models
        .query_row(
            "SELECT position FROM checkpoints WHERE consumer = 'welcome'",
            [],
            |row| row.get(0),
        )
        .unwrap();
    assert!(
        saved as u64 >= handled,
        "the checkpoint saved at shutdown ({saved}) is behind what was handled ({handled})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_drains_in_flight_commands_and_exits_0() {
    let data = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", data.path().join("flexcore.db").display());
    let mut server = Server::start_with(data.path(), &url).await;
    let client = reqwest::Client::new();
    // A live subscriber must not hold the shutdown up.
    let live = client
        .get(format!("{}/v1/events/live", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(live.status(), 200);
    let mut writers = Vec::new();
    for i in 0..20 {
        let (client, base) = (client.clone(), server.base.clone());
        writers.push(tokio::spawn(async move {
            let body = json!({"events": [{"event_type": "term.test", "data": {"i": i}}]});
            client
                .post(format!("{base}/v1/streams/term-{i}"))
                .json(&body)
                .send()
                .await
                .map(|r| r.status().as_u16())
        }));
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    let started = std::time::Instant::now();
    let status = server.terminate().await;
    assert_eq!(status.code(), Some(0), "a SIGTERM'd server exits 0");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "and promptly: {:?}",
        started.elapsed()
    );
    drop(live);
    let mut acknowledged = Vec::new();
    for (i, w) in writers.into_iter().enumerate() {
        if let Ok(Ok(200)) = w.await {
            acknowledged.push(i);
        }
    }
    let server = Server::start_with(data.path(), &url).await;
    for i in acknowledged {
        let r = client
            .get(format!("{}/v1/streams/term-{i}", server.base))
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            200,
            "acknowledged append term-{i} survived the shutdown"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_answers_grpc_and_http_over_one_store() {
    use flexcore_grpc::pb::SendCommandRequest;
    use flexcore_grpc::pb::command_service_client::CommandServiceClient;

    let data = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", data.path().join("flexcore.db").display());
    let server = Server::start_with(data.path(), &url).await;
    let mut grpc = CommandServiceClient::connect(server.grpc.clone())
        .await
        .unwrap();
    let outcome = grpc
        .send(SendCommandRequest {
            command_type: "create_user".into(),
            payload_json: r#"{"email": "grpc@example.com"}"#.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let stream = outcome.stream_id.clone();
    let page: serde_json::Value = reqwest::get(format!("{}/v1/streams/{stream}", server.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page["events"][0]["data"]["email"], "grpc@example.com");
    let duplicate = grpc
        .send(SendCommandRequest {
            command_type: "create_user".into(),
            payload_json: r#"{"email": "grpc@example.com"}"#.into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(duplicate.code(), tonic::Code::Aborted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_commands_appends_and_requests() {
    let data = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", data.path().join("flexcore.db").display());
    let server = Server::start_with(data.path(), &url).await;
    let client = reqwest::Client::new();
    for email in ["m1@example.com", "m1@example.com"] {
        client
            .post(format!("{}/v1/commands/create_user", server.base))
            .json(&json!({ "email": email }))
            .send()
            .await
            .unwrap();
    }
    let text = client
        .get(format!("{}/metrics", server.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for expected in [
        r#"flexcore_commands_total{type="create_user",outcome="ok"} 1"#,
        r#"flexcore_commands_total{type="create_user",outcome="rejected"} 1"#,
        "flexcore_command_duration_seconds_bucket",
        "flexcore_append_batch_size_bucket",
        r#"flexcore_http_requests_total{route="/v1/commands/{command_type}",status="200"} 1"#,
        r#"flexcore_http_requests_total{route="/v1/commands/{command_type}",status="409"} 1"#,
    ] {
        assert!(text.contains(expected), "missing {expected} in:\n{text}");
    }
    // Two events of create_user, and the welcome notice once the notifier has run.
    let appended: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("flexcore_events_appended_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0);
    assert!(
        (2.0..=3.0).contains(&appended),
        "{appended} events appended:\n{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_mask_sensitive_values() {
    use std::io::Read;

    let data = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let grpc = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_flexcore"))
        .arg("serve")
        .env("FLEXCORE_HTTP_ADDR", format!("127.0.0.1:{port}"))
        .env("FLEXCORE_GRPC_ADDR", format!("127.0.0.1:{grpc}"))
        .env(
            "FLEXCORE_STORE_URL",
            format!("sqlite://{}", data.path().join("db.sqlite").display()),
        )
        .env("FLEXCORE_LOG", "info")
        .env("FLEXCORE_LOG_FORMAT", "json")
        .env_remove("FLEXCORE_LOG_MASK")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while client.get(format!("{base}/health")).send().await.is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "the server did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for _ in 0..2 {
        client
            .post(format!("{base}/v1/commands/create_user"))
            .json(&json!({"email": "secret.person@example.com"}))
            .send()
            .await
            .unwrap();
    }
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let mut logs = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut logs)
        .unwrap();
    child.wait().unwrap();
    assert!(
        logs.contains("command rejected"),
        "the duplicate was logged:\n{logs}"
    );
    assert!(
        !logs.contains("secret.person"),
        "the address leaked:\n{logs}"
    );
    assert!(logs.contains("***@***"));
    for line in logs.lines() {
        serde_json::from_str::<Value>(line)
            .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
    }
}

/// A TCP proxy to PostgreSQL (at `target`, `host:port`) that the test can cut and restore.
struct Proxy {
    port: u16,
    tasks: tokio::task::JoinSet<()>,
}

impl Proxy {
    async fn start(target: String, port: u16) -> Self {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut tasks = tokio::task::JoinSet::new();
        let connections = std::sync::Arc::new(tokio::sync::Mutex::new(tokio::task::JoinSet::new()));
        let held = std::sync::Arc::clone(&connections);
        tasks.spawn(async move {
            let _held = held;
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                let target = target.clone();
                connections.lock().await.spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Self { port, tasks }
    }

    /// Drops the listener and every proxied connection.
    async fn cut(mut self) -> u16 {
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
        self.port
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_is_503_while_the_store_is_unreachable() {
    use flexcore_test_support::services;
    let Some(base) = services::postgres_url() else {
        return;
    };
    let schema = services::unique_name("fc_ready");
    let postgres = services::service_address(&base);
    let proxy = Proxy::start(postgres.clone(), 0).await;
    let url =
        services::with_query_param(&services::proxied_url(&base, proxy.port), "schema", &schema);
    let data = tempfile::tempdir().unwrap();
    let server = Server::start_with(data.path(), &url).await;
    let client = reqwest::Client::new();
    let ready = |client: reqwest::Client, base: String| async move {
        let r = client.get(format!("{base}/ready")).send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json::<Value>().await.unwrap_or(Value::Null))
    };
    assert_eq!(ready(client.clone(), server.base.clone()).await.0, 200);

    let port = proxy.cut().await;
    let mut answer = (0, Value::Null);
    for _ in 0..100 {
        answer = ready(client.clone(), server.base.clone()).await;
        if answer.0 == 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(answer.0, 503, "{answer:?}");
    assert_eq!(answer.1["code"], "unavailable");
    assert_eq!(
        client
            .get(format!("{}/health", server.base))
            .send()
            .await
            .unwrap()
            .status(),
        200,
        "still alive"
    );

    let _proxy = Proxy::start(postgres, port).await;
    let mut back = 0;
    for _ in 0..100 {
        back = ready(client.clone(), server.base.clone()).await.0;
        if back == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(back, 200, "ready again once the store is back");
    drop(server);
    flexcore_store_postgres::drop_schema(&base, &schema)
        .await
        .unwrap();
}
