//! `examples/python-seed` end to end: the seed's Python handlers, unchanged, served by the
//! real binary; then how Python refusals reach clients over HTTP and gRPC.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::Server;
use serde_json::{Value, json};

fn example_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/python-seed")
}

fn store_url(data: &Path) -> String {
    format!("sqlite://{}", data.join("flexcore.db").display())
}

async fn command(server: &Server, name: &str, body: Value) -> (u16, Value) {
    server
        .post_json(&format!("/v1/commands/{name}"), &body)
        .await
}

/// Polls `file` until it contains `needle`, for at most 15 s; returns its text.
async fn wait_for_line(file: &Path, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        if text.contains(needle) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {needle:?} in the server's output:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_python_handlers_run_unchanged() {
    let data = tempfile::tempdir().unwrap();
    let stdout_path = data.path().join("stdout.log");
    let stdout = std::fs::File::create(&stdout_path).unwrap();
    let config = example_dir().join("flexcore.toml").display().to_string();
    let server = Server::start_with_stdout(
        data.path(),
        &store_url(data.path()),
        &[("FLEXCORE_CONFIG", config.as_str())],
        stdout,
    )
    .await;

    // The stateless handler returns a UserCreatedEvent dataclass: stored as `user.created` in
    // the stream its `user_id` names, with the naive `utcnow()` marked as UTC.
    let (status, created) =
        command(&server, "create_user", json!({"email": "ann@example.com"})).await;
    assert_eq!(status, 200, "{created}");
    let stream_id = created["stream_id"].as_str().unwrap().to_owned();
    let page = server.get_json(&format!("/v1/streams/{stream_id}")).await;
    let events = page["events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{page}");
    let event = &events[0];
    assert_eq!(event["event_type"], "user.created");
    assert_eq!(event["data"]["email"], "ann@example.com");
    let user_id = event["data"]["user_id"].as_str().unwrap();
    assert_eq!(stream_id, format!("user-{user_id}"));
    let created_at = event["data"]["created_at"].as_str().unwrap();
    assert!(created_at.ends_with("+00:00"), "{created_at}");
    assert!(event["metadata"]["correlation_id"].is_string(), "{event}");

    // The seed's event handler ran: its welcome email and analytics calls printed.
    let output = wait_for_line(&stdout_path, "welcome email to ann@example.com").await;
    assert!(output.contains("analytics: 1 signups"), "{output}");

    // The seed's validation, and a field it reads but the client left out: 422.
    for (body, message) in [
        (json!({"email": ""}), "Email required"),
        (json!({}), "email is required"),
    ] {
        let (status, problem) = command(&server, "create_user", body).await;
        assert_eq!(status, 422, "{problem}");
        assert_eq!(problem["code"], "validation_failed");
        assert!(
            problem["detail"].as_str().unwrap().contains(message),
            "{problem}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_refusals_reach_http_and_grpc_clients_with_their_status() {
    use flexcore_grpc::pb::SendCommandRequest;
    use flexcore_grpc::pb::command_service_client::CommandServiceClient;

    let data = tempfile::tempdir().unwrap();
    let module = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/python/refusals.py")
        .display()
        .to_string();
    let server = Server::start_with_env(
        data.path(),
        &store_url(data.path()),
        &[
            ("FLEXCORE_MODULES", "python"),
            ("FLEXCORE_PYTHON_MODULES", module.as_str()),
        ],
    )
    .await;
    let mut grpc = CommandServiceClient::connect(server.grpc.clone())
        .await
        .unwrap();
    let cases = [
        (
            "validation",
            422,
            "validation_failed",
            tonic::Code::InvalidArgument,
        ),
        ("conflict", 409, "conflict", tonic::Code::Aborted),
        ("not_found", 404, "not_found", tonic::Code::NotFound),
        ("forbidden", 403, "forbidden", tonic::Code::PermissionDenied),
    ];
    for (kind, status, code, grpc_code) in cases {
        let (answered, problem) =
            command(&server, "refuse", json!({"kind": kind, "code": "why_not"})).await;
        assert_eq!(answered, status, "{kind}: {problem}");
        assert_eq!(problem["code"], code, "{kind}: {problem}");
        let detail = problem["detail"].as_str().unwrap();
        assert!(
            detail.contains(&format!("refused as {kind} [why_not]")),
            "{kind}: {problem}"
        );
        let refused = grpc
            .send(SendCommandRequest {
                command_type: "refuse".into(),
                payload_json: json!({"kind": kind}).to_string(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(refused.code(), grpc_code, "{kind}: {refused:?}");
        assert!(
            refused.message().contains(&format!("refused as {kind}")),
            "{kind}: {refused:?}"
        );
    }
}
