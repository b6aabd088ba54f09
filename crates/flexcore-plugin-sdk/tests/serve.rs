//! `Plugin::serve` driven through real pipes by a test playing the engine.

use std::io::{PipeReader, PipeWriter, pipe};
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use flexcore_plugin_sdk::frame::{Message, read_frame, write_frame};
use flexcore_plugin_sdk::{Ending, HandlerError, Plugin, PluginError};
use serde_json::{Value, json};

struct Engine {
    to_plugin: Option<PipeWriter>,
    from_plugin: PipeReader,
    serving: JoinHandle<Result<Ending, PluginError>>,
}

impl Engine {
    fn start(plugin: Plugin) -> Engine {
        let (plugin_stdin, to_plugin) = pipe().unwrap();
        let (from_plugin, plugin_stdout) = pipe().unwrap();
        let serving = thread::spawn(move || plugin.serve(plugin_stdin, plugin_stdout));
        Engine {
            to_plugin: Some(to_plugin),
            from_plugin,
            serving,
        }
    }

    fn send(&mut self, message: Value) {
        write_frame(self.to_plugin.as_mut().unwrap(), &message).unwrap();
    }

    fn receive(&mut self) -> Message {
        read_frame(&mut self.from_plugin)
            .unwrap()
            .expect("the plugin closed its output")
    }

    fn hello(&mut self, config: Value) -> Message {
        self.send(json!({"type": "hello", "protocol": 1, "engine": "test",
                         "plugin": {"name": "p", "version": "1.0.0"}, "config": config}));
        self.receive()
    }

    fn call(&mut self, id: u64, hook: &str, target: &str, data: Value) {
        self.send(json!({"type": "call", "id": id, "hook": hook, "target": target,
                         "context": {"correlation_id": "c", "causation_id": null,
                                     "principal": {"sub": "ann", "roles": ["writer"], "tenant": null},
                                     "deadline_ms": 2000},
                         "data": data}));
    }

    fn ending(self) -> Result<Ending, PluginError> {
        drop(self.to_plugin);
        self.serving.join().unwrap()
    }
}

fn echo(_: &flexcore_plugin_sdk::Context, data: Value) -> Result<Value, HandlerError> {
    Ok(data)
}

#[test]
fn ready_lists_every_hook_kind_with_the_registered_types() {
    let plugin = Plugin::new("p", "1.0.0")
        .before_command("create_user", echo)
        .before_command("change_email", echo)
        .event_handler("user.*", echo)
        .query_handler("get_thing", echo);
    let mut engine = Engine::start(plugin);
    let ready = engine.hello(json!({}));
    assert_eq!(
        Value::Object(ready),
        json!({"type": "ready", "protocol": 1, "name": "p", "version": "1.0.0",
               "hooks": {"before_command": ["create_user", "change_email"], "command_handler": [],
                         "event_handler": ["user.*"], "query_handler": ["get_thing"]}})
    );
    assert_eq!(engine.ending().unwrap(), Ending::EndOfInput);
}

#[test]
fn the_initializer_gets_the_config_and_its_error_is_a_refusal() {
    let (seen, config_seen) = mpsc::channel();
    let plugin = Plugin::new("p", "1.0.0").initialize(move |config| {
        seen.send(config.clone()).unwrap();
        Err("config.limit must be positive".to_owned())
    });
    let mut engine = Engine::start(plugin);
    let refusal = engine.hello(json!({"limit": -1}));
    assert_eq!(
        Value::Object(refusal),
        json!({"type": "refuse", "message": "config.limit must be positive"})
    );
    assert_eq!(config_seen.recv().unwrap(), json!({"limit": -1}));
    assert_eq!(engine.ending().unwrap(), Ending::Refused);
}

#[test]
fn an_unsupported_protocol_is_refused_naming_both_versions() {
    let mut engine = Engine::start(Plugin::new("p", "1.0.0"));
    engine.send(
        json!({"type": "hello", "protocol": 2, "engine": "test", "plugin": {}, "config": {}}),
    );
    let refusal = engine.receive();
    assert_eq!(refusal["type"], "refuse");
    assert!(
        refusal["message"]
            .as_str()
            .unwrap()
            .contains("protocol 1, the engine offered 2")
    );
}

#[test]
fn a_first_message_other_than_hello_is_a_protocol_violation() {
    let mut engine = Engine::start(Plugin::new("p", "1.0.0"));
    engine.send(json!({"type": "ping", "id": 1}));
    assert!(matches!(engine.ending(), Err(PluginError::Protocol(_))));
}

#[test]
fn calls_run_concurrently_and_are_answered_in_any_order() {
    // The slow call finishes only when the test releases it, after the fast call sent later
    // has been answered: served one at a time, the fast call would never run and the slow one
    // would fail after its timeout.
    let (release, released) = mpsc::channel::<()>();
    let released = std::sync::Mutex::new(released);
    let plugin = Plugin::new("p", "1.0.0")
        .query_handler("slow", move |_, _| {
            released
                .lock()
                .unwrap()
                .recv_timeout(Duration::from_secs(5))
                .map_err(|_| HandlerError::Internal("never released".into()))?;
            Ok(json!({"result": "slow"}))
        })
        .query_handler("fast", |_, _| Ok(json!({"result": "fast"})));
    let mut engine = Engine::start(plugin);
    engine.hello(json!({}));
    engine.call(1, "query_handler", "slow", json!({"params": {}}));
    engine.call(2, "query_handler", "fast", json!({"params": {}}));
    let first = engine.receive();
    assert_eq!(
        (first["id"].as_u64(), &first["ok"]),
        (Some(2), &json!({"result": "fast"}))
    );
    release.send(()).unwrap();
    let second = engine.receive();
    assert_eq!(
        (second["id"].as_u64(), &second["ok"]),
        (Some(1), &json!({"result": "slow"}))
    );
}

#[test]
fn handler_errors_and_panics_become_protocol_errors() {
    let plugin = Plugin::new("p", "1.0.0")
        .query_handler("missing", |_, _| {
            Err(HandlerError::NotFound("no such user".into()))
        })
        .query_handler("panics", |_, _| panic!("deliberately"))
        .workers(1);
    let mut engine = Engine::start(plugin);
    engine.hello(json!({}));
    engine.call(1, "query_handler", "missing", json!({"params": {}}));
    assert_eq!(
        engine.receive()["error"],
        json!({"code": "not_found", "message": "no such user"})
    );
    engine.call(2, "query_handler", "panics", json!({"params": {}}));
    assert_eq!(engine.receive()["error"]["code"], "internal");
    engine.call(3, "query_handler", "unregistered", json!({"params": {}}));
    let unregistered = engine.receive();
    assert_eq!(
        (
            unregistered["id"].as_u64(),
            unregistered["error"]["code"].as_str()
        ),
        (Some(3), Some("internal"))
    );
}

#[test]
fn the_handler_sees_the_context_and_data_and_an_event_pattern_matches_by_prefix() {
    let plugin = Plugin::new("p", "1.0.0").event_handler("user.*", |ctx, data| {
        let principal = ctx.principal.as_ref().map(|p| p.sub.as_str());
        Ok(json!({"target": ctx.target, "sub": principal, "deadline_ms": ctx.deadline_ms, "data": data}))
    });
    let mut engine = Engine::start(plugin);
    engine.hello(json!({}));
    engine.call(
        5,
        "event_handler",
        "user.created",
        json!({"event_id": "e1"}),
    );
    assert_eq!(
        engine.receive()["ok"],
        json!({"target": "user.created", "sub": "ann", "deadline_ms": 2000, "data": {"event_id": "e1"}})
    );
}

#[test]
fn ping_gets_a_pong_with_its_id() {
    let mut engine = Engine::start(Plugin::new("p", "1.0.0"));
    engine.hello(json!({}));
    engine.send(json!({"type": "ping", "id": 31}));
    assert_eq!(
        Value::Object(engine.receive()),
        json!({"type": "pong", "id": 31})
    );
}

#[test]
fn shutdown_answers_the_calls_in_flight_before_ending() {
    let plugin = Plugin::new("p", "1.0.0").query_handler("slow", |_, _| {
        thread::sleep(Duration::from_millis(200));
        Ok(json!({"result": "done"}))
    });
    let mut engine = Engine::start(plugin);
    engine.hello(json!({}));
    engine.call(1, "query_handler", "slow", json!({"params": {}}));
    engine.send(json!({"type": "shutdown", "deadline_ms": 5000}));
    let Engine {
        to_plugin,
        mut from_plugin,
        serving,
    } = engine;
    assert_eq!(serving.join().unwrap().unwrap(), Ending::Shutdown);
    drop(to_plugin);
    let answer = read_frame(&mut from_plugin).unwrap().unwrap();
    assert_eq!(
        (answer["id"].as_u64(), &answer["ok"]),
        (Some(1), &json!({"result": "done"}))
    );
}

#[test]
fn an_unknown_message_type_is_a_protocol_violation() {
    let mut engine = Engine::start(Plugin::new("p", "1.0.0"));
    engine.hello(json!({}));
    engine.send(json!({"type": "reload"}));
    assert!(
        matches!(engine.ending(), Err(PluginError::Protocol(message)) if message.contains("reload"))
    );
}
