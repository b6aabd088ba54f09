//! The binary as a client: output, `--json`, and exit codes that tell what happened.

mod common;

use std::process::{Command, Output};

use common::Server;
use serde_json::Value;

fn flexcore(server: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_flexcore"))
        .args(args)
        .env("FLEXCORE_SERVER", server)
        .output()
        .unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_ask_read_and_tail() {
    let data = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", data.path().join("flexcore.db").display());
    let server = Server::start_with(data.path(), &url).await;
    let base = server.base.clone();
    let run = move |args: Vec<&'static str>| {
        let base = base.clone();
        async move {
            tokio::task::spawn_blocking(move || flexcore(&base, &args))
                .await
                .unwrap()
        }
    };

    let sent = run(vec![
        "send",
        "create_user",
        r#"{"email": "cli@example.com"}"#,
    ])
    .await;
    assert_eq!(sent.status.code(), Some(0), "{sent:?}");
    assert!(
        stdout(&sent).contains("ok: user.created user-"),
        "{}",
        stdout(&sent)
    );

    let again = run(vec![
        "send",
        "create_user",
        r#"{"email": "cli@example.com"}"#,
        "--json",
    ])
    .await;
    assert_eq!(again.status.code(), Some(1), "a refused command exits 1");
    assert!(String::from_utf8_lossy(&again.stderr).contains("conflict"));

    let bad = run(vec!["send", "create_user", "{not json"]).await;
    assert_eq!(bad.status.code(), Some(2), "a usage error exits 2");

    let json = run(vec![
        "send",
        "create_user",
        r#"{"email": "cli2@example.com"}"#,
        "--json",
    ])
    .await;
    assert_eq!(json.status.code(), Some(0));
    let outcome: Value = serde_json::from_str(stdout(&json).trim()).unwrap();
    let stream = outcome["stream_id"].as_str().unwrap().to_owned();
    let user_id = stream.trim_start_matches("user-").to_owned();
    let position = outcome["events"][0]["global_position"].as_u64().unwrap();

    let base = server.base.clone();
    let read = tokio::task::spawn_blocking({
        let stream = stream.clone();
        move || flexcore(&base, &["stream", "read", &stream, "--json"])
    })
    .await
    .unwrap();
    assert_eq!(read.status.code(), Some(0));
    let slice: Value = serde_json::from_str(stdout(&read).trim()).unwrap();
    assert_eq!(slice["events"][0]["data"]["email"], "cli2@example.com");

    let base = server.base.clone();
    let asked = tokio::task::spawn_blocking(move || {
        flexcore(
            &base,
            &[
                "ask",
                "get_user",
                &format!(r#"{{"user_id": "{user_id}", "min_position": {position}}}"#),
            ],
        )
    })
    .await
    .unwrap();
    assert_eq!(asked.status.code(), Some(0), "{asked:?}");
    assert!(stdout(&asked).contains("cli2@example.com"));

    let tail = run(vec!["events", "tail", "--json", "--type-prefix", "user."]).await;
    assert_eq!(tail.status.code(), Some(0));
    assert_eq!(stdout(&tail).lines().count(), 2, "two users were created");
    let text = run(vec!["events", "tail"]).await;
    assert!(stdout(&text).contains("user.created"));

    let missing = run(vec!["stream", "read", "user-nobody"]).await;
    assert_eq!(missing.status.code(), Some(1));
}

#[test]
fn an_unreachable_server_exits_3_and_help_is_complete() {
    let down = flexcore("http://127.0.0.1:9", &["send", "create_user", "{}"]);
    assert_eq!(down.status.code(), Some(3), "{down:?}");
    for args in [
        vec!["--help"],
        vec!["serve", "--help"],
        vec!["send", "--help"],
        vec!["ask", "--help"],
        vec!["stream", "read", "--help"],
        vec!["events", "tail", "--help"],
    ] {
        let help = flexcore("http://127.0.0.1:9", &args);
        assert_eq!(help.status.code(), Some(0), "{args:?}");
        assert!(stdout(&help).contains("Usage"), "{args:?}");
    }
    let usage = flexcore("http://127.0.0.1:9", &["send"]);
    assert_eq!(usage.status.code(), Some(2));
}

#[test]
fn python_check_lists_what_modules_register_or_shows_the_traceback() {
    let example = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/python-users/users.py"
    );
    let checked = Command::new(env!("CARGO_BIN_EXE_flexcore"))
        .args(["python", "check", example, "--json"])
        .output()
        .unwrap();
    assert!(checked.status.success(), "{checked:?}");
    let listed: Value = serde_json::from_str(&stdout(&checked)).unwrap();
    assert_eq!(
        listed["commands"],
        serde_json::json!(["change_email", "create_user"])
    );
    assert_eq!(
        listed["queries"],
        serde_json::json!(["get_user", "list_users"])
    );

    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.py");
    std::fs::write(&broken, "import flexcore_no_such_module\n").unwrap();
    let failed = Command::new(env!("CARGO_BIN_EXE_flexcore"))
        .args(["python", "check"])
        .arg(&broken)
        .output()
        .unwrap();
    assert_eq!(failed.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(
        stderr.contains("Traceback") && stderr.contains("flexcore_no_such_module"),
        "{stderr}"
    );
    assert!(stdout(&failed).is_empty());
}
