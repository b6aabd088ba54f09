//! Runs the `user_stats` example binary (built by `cargo test` with the crate's examples) as
//! the engine would: through its stdin/stdout pipes, with real frames.

use std::io::{BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use flexcore_plugin_sdk::frame::{Message, read_frame, write_frame};
use serde_json::{Value, json};

/// `target/<profile>/examples/user_stats`, next to this test's `deps` directory.
fn example_binary() -> PathBuf {
    let test_binary = std::env::current_exe().unwrap();
    let profile_dir = test_binary.parent().and_then(|deps| deps.parent()).unwrap();
    let binary = profile_dir.join("examples").join("user_stats");
    assert!(
        binary.exists(),
        "{} is missing: run this through `cargo test`, which builds the examples",
        binary.display()
    );
    binary
}

struct Engine {
    child: Child,
    to_plugin: Option<ChildStdin>,
    from_plugin: BufReader<ChildStdout>,
}

impl Engine {
    fn start() -> Engine {
        let mut child = Command::new(example_binary())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let to_plugin = child.stdin.take();
        let from_plugin = BufReader::new(child.stdout.take().unwrap());
        Engine {
            child,
            to_plugin,
            from_plugin,
        }
    }

    fn send(&mut self, message: Value) {
        let stdin = self.to_plugin.as_mut().unwrap();
        write_frame(stdin, &message).unwrap();
        stdin.flush().unwrap();
    }

    fn receive(&mut self) -> Message {
        read_frame(&mut self.from_plugin)
            .unwrap()
            .expect("the plugin closed stdout")
    }

    fn hello(&mut self, config: Value) -> Message {
        self.send(json!({"type": "hello", "protocol": 1, "engine": "test",
                         "plugin": {"name": "user-stats", "version": "0.1.0"}, "config": config}));
        self.receive()
    }

    fn query(&mut self, id: u64, params: Value) -> Message {
        self.send(json!({"type": "call", "id": id, "hook": "query_handler", "target": "email_domain",
                         "context": {"correlation_id": "c-1", "causation_id": null, "principal": null,
                                     "deadline_ms": 2000},
                         "data": {"params": params}}));
        self.receive()
    }

    fn wait_for_exit(&mut self) -> i32 {
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(10) {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code().unwrap_or(-1);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.child.kill().unwrap();
        panic!("the plugin did not exit within 10 s");
    }
}

#[test]
fn the_handshake_declares_exactly_the_email_domain_query() {
    let mut engine = Engine::start();
    let ready = engine.hello(json!({}));
    assert_eq!(ready["type"], "ready");
    assert_eq!(
        (
            ready["name"].as_str(),
            ready["version"].as_str(),
            ready["protocol"].as_u64()
        ),
        (Some("user-stats"), Some("0.1.0"), Some(1))
    );
    assert_eq!(
        ready["hooks"],
        json!({"before_command": [], "command_handler": [], "event_handler": [], "query_handler": ["email_domain"]})
    );
}

#[test]
fn queries_answer_the_domain_and_whether_it_is_a_free_provider() {
    let mut engine = Engine::start();
    engine.hello(json!({"free_providers": ["mail.example"]}));
    let free = engine.query(1, json!({"email": " Ann@Mail.Example "}));
    assert_eq!(free, json!({"type": "result", "id": 1, "ok": {"result": {"domain": "mail.example", "free_provider": true}}}).as_object().unwrap().clone());
    let company = engine.query(2, json!({"email": "bob@acme.io"}));
    assert_eq!(
        company["ok"]["result"],
        json!({"domain": "acme.io", "free_provider": false})
    );
}

#[test]
fn a_malformed_address_is_a_validation_error_on_the_email_field() {
    let mut engine = Engine::start();
    engine.hello(json!({}));
    let answer = engine.query(7, json!({"email": "no-at-sign"}));
    assert_eq!(answer["id"], 7);
    assert_eq!(answer["error"]["code"], "validation_failed");
    assert_eq!(answer["error"]["errors"][0]["path"], "/email");
}

#[test]
fn a_bad_config_is_refused_and_the_plugin_exits() {
    let mut engine = Engine::start();
    let refusal = engine.hello(json!({"free_providers": "gmail.com"}));
    assert_eq!(refusal["type"], "refuse");
    assert!(
        refusal["message"]
            .as_str()
            .unwrap()
            .contains("free_providers")
    );
    assert_eq!(engine.wait_for_exit(), 1);
}

#[test]
fn ping_is_answered_and_shutdown_exits_zero() {
    let mut engine = Engine::start();
    engine.hello(json!({}));
    engine.send(json!({"type": "ping", "id": 99}));
    assert_eq!(
        engine.receive(),
        json!({"type": "pong", "id": 99})
            .as_object()
            .unwrap()
            .clone()
    );
    engine.send(json!({"type": "shutdown", "deadline_ms": 1000}));
    assert_eq!(engine.wait_for_exit(), 0);
}

#[test]
fn closing_stdin_makes_the_plugin_exit() {
    let mut engine = Engine::start();
    engine.hello(json!({}));
    drop(engine.to_plugin.take());
    assert_eq!(engine.wait_for_exit(), 0);
}
