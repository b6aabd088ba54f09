//! Domain modules side by side in the real binary: the Rust sample (`users`) and a Python
//! module each own their command and query types; two modules claiming one type stop the start
//! with an error naming both.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::Server;
use serde_json::{Value, json};

fn python_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/python")
        .join(name)
}

async fn post(server: &Server, path: &str, body: Value) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(format!("{}{path}", server.base))
        .json(&body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

#[tokio::test]
async fn a_rust_module_and_a_python_module_serve_side_by_side() {
    let data = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", data.path().join("flexcore.db").display());
    let greetings = python_file("greetings.py").display().to_string();
    let server = Server::start_with_env(
        data.path(),
        &url,
        &[
            ("FLEXCORE_MODULES", "users,python"),
            ("FLEXCORE_PYTHON_MODULES", greetings.as_str()),
        ],
    )
    .await;

    // The Rust module's command and read model.
    let (status, created) = post(
        &server,
        "/v1/commands/create_user",
        json!({"email": "ann@example.com"}),
    )
    .await;
    assert_eq!(status, 200, "{created}");
    let position = created["events"][0]["global_position"].as_u64().unwrap();
    let user_id = created["stream_id"]
        .as_str()
        .unwrap()
        .trim_start_matches("user-");
    let (status, user) = post(
        &server,
        "/v1/queries/get_user",
        json!({"user_id": user_id, "min_position": position}),
    )
    .await;
    assert_eq!(status, 200, "{user}");
    assert_eq!(user["email"], "ann@example.com");

    // The Python module's command, beside it.
    let (status, sent) = post(
        &server,
        "/v1/commands/send_greeting",
        json!({"text": "hello"}),
    )
    .await;
    assert_eq!(status, 200, "{sent}");
    assert!(
        sent["stream_id"].as_str().unwrap().starts_with("greeting-"),
        "{sent}"
    );

    // The Python module follows the events the Rust module wrote.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, greeted) = post(&server, "/v1/queries/greeted", json!({})).await;
        assert_eq!(status, 200, "{greeted}");
        if greeted["emails"] == json!(["ann@example.com"]) {
            break;
        }
        assert!(Instant::now() < deadline, "never greeted: {greeted}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Both modules' parts are visible to operators: the Rust read model and durable consumer,
    // the Python module's health.
    let health = server.get_json("/health").await;
    assert_eq!(health["python"]["ok"], true, "{health}");
    let projections = server.get_json("/v1/projections").await;
    assert_eq!(projections[0]["name"], "users", "{projections}");
    let consumers = server.get_json("/v1/subscriptions").await;
    assert!(
        consumers.to_string().contains("welcome"),
        "the Rust module's durable consumer runs: {consumers}"
    );
}

/// Runs `flexcore serve` with `env` and expects it to refuse to start; returns its stderr.
fn refused_start(data: &Path, env: &[(&str, &str)]) -> String {
    let url = format!("sqlite://{}", data.join("flexcore.db").display());
    let mut child = Command::new(env!("CARGO_BIN_EXE_flexcore"))
        .arg("serve")
        .env("FLEXCORE_HTTP_ADDR", "127.0.0.1:0")
        .env("FLEXCORE_GRPC_ADDR", "127.0.0.1:0")
        .env("FLEXCORE_STORE_URL", url)
        .env("FLEXCORE_LOG", "warn")
        .env_remove("FLEXCORE_CONFIG")
        .envs(env.iter().copied())
        .current_dir(data)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the server started although it should have refused");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let output = child.wait_with_output().unwrap();
    assert!(!output.status.success());
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn two_modules_claiming_one_command_type_stop_the_start_naming_both() {
    let data = tempfile::tempdir().unwrap();
    let claims = python_file("claims_create_user.py").display().to_string();
    let stderr = refused_start(
        data.path(),
        &[
            ("FLEXCORE_MODULES", "users,python"),
            ("FLEXCORE_PYTHON_MODULES", claims.as_str()),
        ],
    );
    assert!(
        stderr
            .contains("command type 'create_user' is claimed by two modules: 'users' and 'python'"),
        "{stderr}"
    );
}

#[test]
fn unknown_or_inconsistent_module_lists_are_refused() {
    let data = tempfile::tempdir().unwrap();
    let stderr = refused_start(data.path(), &[("FLEXCORE_MODULES", "users,billing")]);
    assert!(
        stderr.contains("invalid setting modules = 'billing'"),
        "{stderr}"
    );
    let stderr = refused_start(data.path(), &[("FLEXCORE_MODULES", "python")]);
    assert!(stderr.contains("for the python module"), "{stderr}");
    assert!(
        !data.path().join("flexcore.db").exists(),
        "a refused configuration opens no store"
    );
}
