//! `[limits]` and `[schemas]` end to end: the real binary with a config file, driven over HTTP
//! and gRPC, with the Rust sample and with the Python example; bad settings and bad schema
//! files stop the start.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::Server;
use serde_json::{Value, json};

const CREATE_USER_SCHEMA: &str = r#"{
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["email"],
    "properties": {
        "email": {"type": "string", "format": "email"},
        "profile": {"type": "object"}
    }
}"#;

const ORDER_PLACED_SCHEMA: &str = r#"{
    "type": "object",
    "required": ["total"],
    "properties": {"total": {"type": "number", "minimum": 0}}
}"#;

/// Writes `flexcore.toml` with `config` and the schema files beside it, in `dir/conf`.
fn write_config(dir: &Path, config: &str) -> PathBuf {
    let conf = dir.join("conf");
    std::fs::create_dir_all(conf.join("schemas")).unwrap();
    std::fs::write(conf.join("schemas/create_user.json"), CREATE_USER_SCHEMA).unwrap();
    std::fs::write(conf.join("schemas/order_placed.json"), ORDER_PLACED_SCHEMA).unwrap();
    let path = conf.join("flexcore.toml");
    std::fs::write(&path, config).unwrap();
    path
}

const CONFIG: &str = r#"
[limits]
max_events_per_append = 2
max_event_bytes = 1024
max_stream_id_len = 64
stream_id_charset = "identifier"

[schemas.commands]
create_user = "schemas/create_user.json"

[schemas.events]
"order.placed" = "schemas/order_placed.json"
"#;

async fn start(data: &Path, config: &Path) -> Server {
    let url = format!("sqlite://{}", data.join("flexcore.db").display());
    let config = config.display().to_string();
    Server::start_with_env(data, &url, &[("FLEXCORE_CONFIG", config.as_str())]).await
}

async fn post(server: &Server, path: &str, body: Value) -> (u16, Value) {
    let answer = reqwest::Client::new()
        .post(format!("{}{path}", server.base))
        .json(&body)
        .send()
        .await
        .unwrap();
    (answer.status().as_u16(), answer.json().await.unwrap())
}

/// How many events the streams of `category` hold (the sample's welcome notifier appends to
/// `notification-…` streams on its own schedule).
async fn event_count(server: &Server, category: &str) -> usize {
    let page = server
        .get_json(&format!(
            "/v1/events?from_position=0&limit=1000&category={category}"
        ))
        .await;
    page["events"].as_array().unwrap().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_limits_and_schemas_guard_every_gateway() {
    let data = tempfile::tempdir().unwrap();
    let config = write_config(data.path(), CONFIG);
    let server = start(data.path(), &config).await;

    // A command payload against its schema: 422 naming the failing path.
    let (status, problem) = post(
        &server,
        "/v1/commands/create_user",
        json!({"email": "secret-not-an-address"}),
    )
    .await;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(problem["code"], "validation_failed");
    assert_eq!(problem["errors"][0]["path"], "/email", "{problem}");
    let detail = problem["detail"].as_str().unwrap();
    assert!(
        detail.starts_with("command 'create_user' does not match its schema: /email: "),
        "{detail}"
    );
    assert!(
        !detail.contains("secret"),
        "the value is not echoed: {detail}"
    );
    let (status, problem) = post(&server, "/v1/commands/create_user", json!({})).await;
    assert_eq!(status, 422);
    assert_eq!(problem["errors"][0]["path"], "", "{problem}");
    assert!(
        problem["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("email")
    );
    assert_eq!(event_count(&server, "user").await, 0);

    // A good payload passes; its events fit the limits.
    let (status, outcome) = post(
        &server,
        "/v1/commands/create_user",
        json!({"email": "ann@example.com", "profile": {"name": "Ann"}}),
    )
    .await;
    assert_eq!(status, 200, "{outcome}");
    assert_eq!(event_count(&server, "user").await, 1);

    // Raw appends: the event schema, then each limit.
    let placed = |total: Value| json!({"event_type": "order.placed", "data": {"total": total}});
    let (status, problem) = post(
        &server,
        "/v1/streams/order-1",
        json!({"events": [placed(json!(-1))]}),
    )
    .await;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(problem["errors"][0]["path"], "/total", "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .starts_with("event 0 ('order.placed') of stream 'order-1' does not match its schema"),
        "{problem}"
    );
    for (path, body, needle) in [
        (
            "/v1/streams/order-1",
            json!({"events": [placed(json!(1)), placed(json!(2)), placed(json!(3))]}),
            "max_events_per_append",
        ),
        (
            "/v1/streams/order-1",
            json!({"events": [{"event_type": "order.note", "data": {"text": "x".repeat(1100)}}]}),
            "max_event_bytes",
        ),
        (
            "/v1/streams/order%2F1",
            json!({"events": [placed(json!(1))]}),
            "'identifier'",
        ),
    ] {
        let (status, problem) = post(&server, path, body).await;
        assert_eq!(status, 422, "{needle}: {problem}");
        assert!(
            problem["detail"].as_str().unwrap().contains(needle),
            "{needle}: {problem}"
        );
    }
    assert_eq!(
        event_count(&server, "order").await,
        0,
        "no refused append wrote"
    );
    let (status, body) = post(
        &server,
        "/v1/streams/order-1",
        json!({"events": [placed(json!(42))]}),
    )
    .await;
    assert_eq!(status, 200, "{body}");

    // gRPC answers INVALID_ARGUMENT with the same message.
    use flexcore_grpc::pb::SendCommandRequest;
    use flexcore_grpc::pb::command_service_client::CommandServiceClient;
    let mut grpc = CommandServiceClient::connect(server.grpc.clone())
        .await
        .unwrap();
    let refused = grpc
        .send(SendCommandRequest {
            command_type: "create_user".into(),
            payload_json: r#"{"email": 7}"#.into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(
        refused
            .message()
            .starts_with("command 'create_user' does not match its schema: /email: "),
        "{refused:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_events_of_python_handlers_are_checked_too() {
    let data = tempfile::tempdir().unwrap();
    let users_py = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/python-users/users.py")
        .canonicalize()
        .unwrap();
    let config = write_config(
        data.path(),
        &format!(
            "[python]\nmodules = [{users_py:?}]\n\n\
             [schemas.events]\n\"user.created\" = \"schemas/user_created.json\"\n"
        ),
    );
    std::fs::write(
        config.parent().unwrap().join("schemas/user_created.json"),
        r#"{"type": "object", "required": ["nickname"]}"#,
    )
    .unwrap();
    let server = start(data.path(), &config).await;
    let (status, problem) = post(
        &server,
        "/v1/commands/create_user",
        json!({"email": "py@example.com"}),
    )
    .await;
    assert_eq!(status, 422, "{problem}");
    let detail = problem["detail"].as_str().unwrap();
    assert!(
        detail.contains("('user.created')") && detail.contains("nickname"),
        "{detail}"
    );
    assert_eq!(event_count(&server, "user").await, 0);
    assert_eq!(
        event_count(&server, "email").await,
        0,
        "nor the reservation"
    );
}

/// Runs `flexcore serve` with `config`; it must fail, before creating anything, with a
/// message containing every one of `needles`.
fn assert_start_fails(dir: &Path, config: &Path, needles: &[&str]) {
    let output = Command::new(env!("CARGO_BIN_EXE_flexcore"))
        .args([
            "serve",
            "--http-addr",
            "127.0.0.1:0",
            "--grpc-addr",
            "127.0.0.1:0",
            "--config",
        ])
        .arg(config)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    for needle in needles {
        assert!(stderr.contains(needle), "{needle}: {stderr}");
    }
    assert!(!dir.join("data").exists(), "nothing was created: {stderr}");
}

#[test]
fn a_bad_schema_file_stops_the_start_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "[schemas.events]\n\"order.placed\" = \"schemas/order_placed.json\"\n\
         \"order.shipped\" = \"schemas/shipped.json\"\n",
    );
    let shipped = config.parent().unwrap().join("schemas/shipped.json");
    std::fs::write(&shipped, r#"{"type": "parcel"}"#).unwrap();
    assert_start_fails(
        dir.path(),
        &config,
        &[
            &shipped.display().to_string(),
            "event 'order.shipped'",
            "not a valid JSON Schema",
        ],
    );
    std::fs::remove_file(&shipped).unwrap();
    assert_start_fails(
        dir.path(),
        &config,
        &[&shipped.display().to_string(), "cannot read"],
    );
}

#[test]
fn bad_limits_stop_the_start_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    for (text, needles) in [
        (
            "[limits]\nmax_events_per_apend = 5\n",
            ["max_events_per_apend", "flexcore.toml"],
        ),
        (
            "[limits]\nmax_event_bytes = \"big\"\n",
            ["max_event_bytes", "flexcore.toml"],
        ),
        ("[schemas]\nqueries = {}\n", ["queries", "flexcore.toml"]),
        (
            "[limits]\nmax_stream_id_len = 1000\n",
            ["limits.max_stream_id_len", "1 to 256"],
        ),
        (
            "[limits]\nstream_id_charset = \"emoji\"\n",
            ["limits.stream_id_charset", "identifier"],
        ),
    ] {
        let config = write_config(dir.path(), text);
        assert_start_fails(dir.path(), &config, &needles);
    }
}
