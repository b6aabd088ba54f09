//! GDPR tools through the real binary: `flexcore gdpr export|forget` against a server with
//! crypto-shredding on, a projection rebuild after the forget, and a wrong master key file
//! refused at start.

mod common;

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::Server;
use serde_json::{Value, json};

async fn cli(server: &str, args: &[&str]) -> Output {
    let server = server.to_owned();
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_flexcore"))
            .args(&args)
            .env("FLEXCORE_SERVER", server)
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

fn lines(output: &Output) -> Vec<Value> {
    assert!(output.status.success(), "{output:?}");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_and_forget_through_the_cli_and_a_rebuild_after_the_forget() {
    let data = tempfile::tempdir().unwrap();
    let key = data.path().join("master.key");
    std::fs::write(&key, "11".repeat(32)).unwrap();
    let db = data.path().join("flexcore.db");
    let url = format!("sqlite://{}", db.display());
    let env = [("FLEXCORE_GDPR_MASTER_KEY_FILE", key.to_str().unwrap())];
    let mut server = Server::start_with_env(data.path(), &url, &env).await;
    let http = reqwest::Client::new();
    let mut users = Vec::new();
    for name in ["ann", "bob"] {
        let outcome: Value = http
            .post(format!("{}/v1/commands/create_user", server.base))
            .json(&json!({
                "email": format!("{name}@example.com"),
                "profile": {"name": format!("{name} Zyxwvutsrq")}
            }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let stream = outcome["stream_id"].as_str().unwrap();
        users.push(stream.trim_start_matches("user-").to_owned());
    }
    let (ann, bob) = (&users[0], &users[1]);

    let exported = lines(&cli(&server.base, &["gdpr", "export", ann]).await);
    let types: Vec<&str> = exported
        .iter()
        .map(|e| e["event_type"].as_str().unwrap())
        .collect();
    assert!(types.contains(&"user.created"), "{types:?}");
    let created = exported
        .iter()
        .find(|e| e["event_type"] == "user.created")
        .unwrap();
    assert_eq!(created["data"]["email"], "ann@example.com");

    let forgot = cli(&server.base, &["gdpr", "forget", ann, "--json"]).await;
    assert!(forgot.status.success(), "{forgot:?}");
    let answer: Value = serde_json::from_slice(&forgot.stdout).unwrap();
    assert_eq!(answer["key_destroyed"], true);

    let stream = server.get_json(&format!("/v1/streams/user-{ann}")).await;
    assert_eq!(stream["events"][0]["data"]["email"], "[forgotten]");
    assert_eq!(stream["events"][0]["data"]["profile"], "[forgotten]");
    let stream = server.get_json(&format!("/v1/streams/user-{bob}")).await;
    assert_eq!(stream["events"][0]["data"]["email"], "bob@example.com");
    let exported = lines(&cli(&server.base, &["gdpr", "export", ann]).await);
    assert!(
        exported
            .iter()
            .all(|e| !e.to_string().contains("ann@example.com")),
        "{exported:?}"
    );

    // The event database holds no profile in clear (the address itself is also the id of
    // the sample's reservation stream, which sealing cannot hide: see ADR 8).
    let raw = std::fs::read(&db).unwrap();
    let wal = std::fs::read(data.path().join("flexcore.db-wal")).unwrap_or_default();
    for bytes in [&raw, &wal] {
        assert!(
            !bytes.windows(10).any(|w| w == b"Zyxwvutsrq"),
            "plaintext in the event database"
        );
    }

    // A rebuild after the forget goes through, and shows the marker.
    let rebuild = cli(&server.base, &["projections", "rebuild", "users"]).await;
    assert!(rebuild.status.success(), "{rebuild:?}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let user = server
            .get_json(&format!("/v1/queries/get_user?user_id={ann}"))
            .await;
        if user["email"] == "[forgotten]" {
            break;
        }
        assert!(Instant::now() < deadline, "{user}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let user = server
        .get_json(&format!("/v1/queries/get_user?user_id={bob}"))
        .await;
    assert_eq!(user["email"], "bob@example.com");
    assert!(server.terminate().await.success());

    // The same database with another master key does not start.
    let wrong = data.path().join("wrong.key");
    std::fs::write(&wrong, "22".repeat(32)).unwrap();
    let refused = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_flexcore"))
            .arg("serve")
            .env("FLEXCORE_HTTP_ADDR", "127.0.0.1:0")
            .env("FLEXCORE_GRPC_ADDR", "127.0.0.1:0")
            .env("FLEXCORE_STORE_URL", &url)
            .env("FLEXCORE_GDPR_MASTER_KEY_FILE", &wrong)
            .env_remove("FLEXCORE_CONFIG")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("does not unwrap with the configured master key"),
        "{stderr}"
    );
    assert!(!stderr.contains(&"22".repeat(32)), "no key in errors");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gdpr_routes_answer_404_when_gdpr_is_off() {
    let data = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", data.path().join("flexcore.db").display());
    let mut server = Server::start_with(data.path(), &url).await;
    let output = cli(&server.base, &["gdpr", "forget", "someone"]).await;
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("master_key_file"),
        "{output:?}"
    );
    assert!(server.terminate().await.success());
}
