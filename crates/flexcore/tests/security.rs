//! Security at the binary: the refusal to serve an unauthenticated API beyond loopback,
//! `flexcore token mint` against a server configured with roles, and secrets kept out of
//! `config show`.

mod common;

use std::process::Command;

use common::Server;
use serde_json::{Value, json};

const SECRET: &str = "a binary-test HS256 secret of 32+ bytes";

const ROLES: &str = "[roles.writer]\ncommands = [\"create_user\"]\nstreams_read = [\"user-*\"]\n";

fn flexcore() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_flexcore"));
    for var in [
        "FLEXCORE_CONFIG",
        "FLEXCORE_JWT_HS256_SECRET",
        "FLEXCORE_JWT_HS256_SECRET_FILE",
    ] {
        command.env_remove(var);
    }
    command
}

#[test]
fn a_non_loopback_bind_without_authentication_refuses_to_start() {
    let data = tempfile::tempdir().unwrap();
    let db = data.path().join("db.sqlite");
    let output = flexcore()
        .args([
            "serve",
            "--http-addr",
            "0.0.0.0:0",
            "--grpc-addr",
            "127.0.0.1:0",
        ])
        .arg("--store-url")
        .arg(format!("sqlite://{}", db.display()))
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("refusing to listen on 0.0.0.0"), "{stderr}");
    assert!(
        stderr.contains("--insecure-allow-unauthenticated"),
        "{stderr}"
    );
    assert!(!db.exists(), "nothing was opened");
}

#[test]
fn config_show_never_prints_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let key_hash = "ab".repeat(32);
    std::fs::write(
        dir.path().join("flexcore.toml"),
        format!("[api_keys.ci]\nsha256 = \"{key_hash}\"\nroles = [\"writer\"]\n"),
    )
    .unwrap();
    for json_flag in [false, true] {
        let mut command = flexcore();
        command
            .args(["config", "show"])
            .arg("--config")
            .arg(dir.path().join("flexcore.toml"))
            .env("FLEXCORE_JWT_HS256_SECRET", SECRET);
        if json_flag {
            command.arg("--json");
        }
        let output = command.output().unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let shown = String::from_utf8_lossy(&output.stdout);
        assert!(!shown.contains(SECRET), "{shown}");
        assert!(!shown.contains(&key_hash), "{shown}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minted_tokens_open_what_their_roles_allow() {
    let data = tempfile::tempdir().unwrap();
    let mint = |roles: &str| common::mint(SECRET, "ann", roles, &[]);
    let writer = mint("writer");
    let nobody = mint("");
    let server = Server::start_secured(data.path(), SECRET, ROLES, &[]).await;
    let client = reqwest::Client::new();
    let counter = std::sync::atomic::AtomicU32::new(0);
    let send = |token: Option<String>| {
        let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut request = client
            .post(format!("{}/v1/commands/create_user", server.base))
            .json(&json!({"email": format!("user{n}@b.io"), "profile": {}}));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send()
    };
    let anonymous = send(None).await.unwrap();
    assert_eq!(anonymous.status(), 401);
    assert_eq!(
        anonymous.headers()["www-authenticate"],
        "Bearer realm=\"flexcore\""
    );
    assert_eq!(send(Some(nobody)).await.unwrap().status(), 403);
    let created = send(Some(writer.clone())).await.unwrap();
    assert_eq!(created.status(), 200);
    let outcome: Value = created.json().await.unwrap();
    let stream: Value = client
        .get(format!(
            "{}/v1/streams/{}",
            server.base,
            outcome["stream_id"].as_str().unwrap()
        ))
        .bearer_auth(&writer)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        stream["events"][0]["metadata"]["actor"],
        json!({"sub": "ann", "roles": ["writer"]})
    );
    let health = client
        .get(format!("{}/health", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200, "probes stay open");
}
