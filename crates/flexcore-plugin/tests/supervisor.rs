//! The supervisor against real plugin processes (the Python testkit): handshake, calls,
//! every misbehaviour, the circuit breaker, hot swap, and that no plugin outlives the engine.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{alive, call, eventually, set, supervisor, timed};
use flexcore_app::ErrorKind;
use flexcore_app::plugin::{Plugin, PluginFailure};
use flexcore_plugin::{Error, PluginState};
use serde_json::{Value, json};

/// A supervisor over the testkit changed by `edit`, initialised, and its process id.
async fn started(
    edit: impl FnOnce(&mut toml::Table),
) -> (flexcore_plugin::Supervisor, tempfile::TempDir, u64) {
    let (plugin, dir) = supervisor(edit);
    plugin.initialize(Value::Null).await.unwrap();
    let pid = echo_pid(&plugin).await;
    (plugin, dir, pid)
}

async fn echo_pid(plugin: &flexcore_plugin::Supervisor) -> u64 {
    let answer = plugin
        .call(call("echo", json!("hi")))
        .await
        .expect("echo answers");
    assert_eq!(answer["payload"], "hi");
    answer["pid"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_that_handshakes_serves_calls() {
    let (plugin, _dir) = supervisor(|_| {});
    plugin.initialize(Value::Null).await.unwrap();
    let status = plugin.status();
    assert_eq!(status.state, PluginState::Ready);
    assert_eq!(
        (status.name.as_str(), status.version.as_str()),
        ("testkit", "1.0.0")
    );
    let pid = echo_pid(&plugin).await;
    assert_eq!(Some(pid as u32), plugin.status().pid);
    assert_eq!(plugin.status().calls, 1);
    assert!(plugin.status().p99.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mismatched_handshake_is_refused_naming_both_sides() {
    let cases: [(&str, toml::Value, &[&str]); 4] = [
        (
            "claim_protocol",
            2.into(),
            &["protocol 2", "engine speaks 1"],
        ),
        (
            "claim_name",
            "other".into(),
            &["'other' 1.0.0", "'testkit' 1.0.0"],
        ),
        (
            "claim_version",
            "1.0.1".into(),
            &["'testkit' 1.0.1", "'testkit' 1.0.0"],
        ),
        (
            "claim_hooks",
            toml::Value::Table(toml::toml! { query_handler = ["echo"] }),
            &["query_handler", "before_command"],
        ),
    ];
    for (claim, value, expected) in cases {
        let (plugin, _dir) = supervisor(|m| set(m, "config", claim, value));
        let error = plugin
            .initialize(Value::Null)
            .await
            .unwrap_err()
            .to_string();
        for part in expected {
            assert!(
                error.contains(part),
                "{claim}: '{error}' does not name '{part}'"
            );
        }
        let status = plugin.status();
        assert_eq!(status.state, PluginState::Refused, "{claim}");
        assert_eq!(status.pid, None);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusing_plugin_is_recorded_and_not_restarted() {
    let reason = "config.domain_blocklist must be a list of strings";
    let (plugin, _dir) = supervisor(|m| set(m, "config", "refuse", reason));
    let error = plugin.initialize(Value::Null).await.unwrap_err();
    assert!(error.to_string().contains(reason), "{error}");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let status = plugin.status();
    assert_eq!(status.state, PluginState::Refused);
    assert_eq!(status.restarts, 0);
    assert!(status.last_error.unwrap().contains(reason));
    let call_error = plugin.call(call("echo", json!(1))).await.unwrap_err();
    assert!(
        matches!(call_error, Error::Unavailable { .. }),
        "{call_error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_answered_out_of_order_reach_their_callers() {
    let (plugin, _dir) = supervisor(|_| {});
    plugin.initialize(Value::Null).await.unwrap();
    let plugin = Arc::new(plugin);
    let calls = (0..8).map(|n| {
        let plugin = plugin.clone();
        let mut request = call("sleep", json!(n));
        request.data["delay_ms"] = json!((8 - n) * 60);
        tokio::spawn(async move { (n, plugin.call(request).await) })
    });
    let mut finished = Vec::new();
    for handle in calls {
        let (n, answer) = handle.await.unwrap();
        assert_eq!(answer.unwrap()["payload"], json!(n));
        finished.push(n);
    }
    assert_eq!(finished.len(), 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_validation_error_keeps_its_details() {
    let (plugin, _dir) = supervisor(|_| {});
    plugin.initialize(Value::Null).await.unwrap();
    let error = plugin.process(call("reject", json!({}))).await.unwrap_err();
    // What the testkit sends, mapped by the port's table (tested in flexcore-app).
    let sent: PluginFailure = serde_json::from_value(json!({
        "code": "validation_failed", "message": "email is blocked",
        "errors": [{"path": "/email", "message": "domain is blocked"}]}))
    .unwrap();
    let expected = sent.into_error("testkit");
    assert_eq!(error.kind(), ErrorKind::Validation);
    assert_eq!(error.client_message(), expected.client_message());
    assert_eq!(error.violations(), expected.violations());
    assert_eq!(error.violations().len(), 1);
}

/// Starts the testkit changed by `edit`, calls `target`, and asserts the call failed as
/// unavailable, the plugin was restarted for `cause`, and a fresh process serves.
async fn assert_restarted_after(edit: impl FnOnce(&mut toml::Table), target: &str, cause: &str) {
    let (plugin, _dir) = supervisor(edit);
    let plugin = &plugin;
    plugin.initialize(Value::Null).await.unwrap();
    let before = echo_pid(plugin).await;
    let error = plugin.process(call(target, json!(null))).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Unavailable, "{target}: {error}");
    assert_replaced(plugin, before, cause).await;
}

/// Waits until the process `before` was replaced once, for `cause`, and checks it is gone
/// and a fresh process serves.
async fn assert_replaced(plugin: &flexcore_plugin::Supervisor, before: u64, cause: &str) {
    eventually("the plugin is restarted", || {
        let status = plugin.status();
        status.restarts == 1 && status.state == PluginState::Ready
    })
    .await;
    let last_error = plugin.status().last_error.unwrap();
    assert!(
        last_error.contains(cause),
        "'{last_error}' does not say '{cause}'"
    );
    assert!(!alive(before as u32), "the old process survived");
    assert_ne!(echo_pid(plugin).await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_mid_call_fails_the_call_and_the_plugin_restarts() {
    assert_restarted_after(|_| {}, "crash", "exit status: 3").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unbounded_allocation_is_stopped_by_the_memory_limit() {
    // Without the limit the testkit stops at 1 GiB and answers, failing this test.
    assert_restarted_after(|m| set(m, "limits", "memory_mb", 128), "allocate", "exited").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_stdout_is_a_violation_that_restarts_the_plugin() {
    assert_restarted_after(|_| {}, "garbage", "protocol violation").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_result_is_a_violation_that_restarts_the_plugin() {
    let (plugin, _dir, before) = started(|_| {}).await;
    assert_eq!(
        plugin.call(call("duplicate", json!(7))).await.unwrap()["payload"],
        7
    );
    assert_replaced(&plugin, before, "already answered").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_plugin_times_out_keeps_serving_and_restarts_after_three_timeouts() {
    let (plugin, _dir, first) = started(|m| set(m, "limits", "call_timeout_ms", 300)).await;
    let error = plugin.call(call("hang", json!(null))).await.unwrap_err();
    assert!(matches!(error, Error::Timeout { .. }), "{error}");
    assert_eq!(
        flexcore_app::Error::from(error).kind(),
        ErrorKind::Unavailable
    );
    assert_eq!(
        echo_pid(&plugin).await,
        first,
        "one timeout does not restart"
    );
    for _ in 0..3 {
        assert!(plugin.call(call("hang", json!(null))).await.is_err());
    }
    assert_replaced(&plugin, first, "3 calls in a row timed out").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_that_stops_answering_pings_is_restarted() {
    let (plugin, _dir, pid) = started(|m| {
        set(m, "config", "ignore_pings", true);
        set(m, "limits", "call_timeout_ms", 300);
    })
    .await;
    assert_replaced(&plugin, pid, "no pong within 300 ms").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stderr_flood_is_capped_and_the_engine_keeps_serving() {
    let (plugin, _dir, pid) = started(|m| set(m, "limits", "call_timeout_ms", 20_000)).await;
    plugin.call(call("flood", json!(null))).await.unwrap();
    let (took, same) = timed(echo_pid(&plugin)).await;
    assert_eq!(same, pid);
    assert!(took < Duration::from_secs(1), "an echo took {took:?}");
    let status = plugin.status();
    assert!(
        status.dropped_log_lines > 10_000,
        "{} dropped",
        status.dropped_log_lines
    );
    assert_eq!(status.restarts, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_circuit_opens_answers_503_fast_then_closes_after_a_trial() {
    let (plugin, _dir) = supervisor(|m| {
        set(m, "limits", "call_timeout_ms", 200);
        set(m, "limits", "breaker_failures", 2);
        set(m, "limits", "breaker_open_ms", 1500);
    });
    plugin.initialize(Value::Null).await.unwrap();
    for _ in 0..2 {
        assert!(matches!(
            plugin.call(call("hang", json!(null))).await,
            Err(Error::Timeout { .. })
        ));
    }
    let (took, refused) = timed(plugin.process(call("echo", json!(1)))).await;
    let refused = refused.unwrap_err();
    assert_eq!(refused.kind(), ErrorKind::Unavailable);
    assert!(refused.to_string().contains("circuit is open"), "{refused}");
    assert!(
        took < Duration::from_millis(50),
        "an open circuit took {took:?}"
    );
    assert_eq!(plugin.status().state, PluginState::Broken);
    tokio::time::sleep(Duration::from_millis(1600)).await;
    echo_pid(&plugin).await;
    echo_pid(&plugin).await;
    assert_eq!(plugin.status().state, PluginState::Ready);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_swap_under_load_loses_fails_and_doubles_no_call() {
    let (plugin, dir, old_pid) = started(|_| {}).await;
    let plugin = Arc::new(plugin);
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..4)
        .map(|worker| {
            let (plugin, stop) = (plugin.clone(), stop.clone());
            tokio::spawn(async move {
                let mut answered: HashMap<String, u64> = HashMap::new();
                let mut sent = 0_u64;
                while !stop.load(Ordering::Relaxed) {
                    let tag = format!("{worker}-{sent}");
                    let mut request = call("sleep", json!(tag));
                    request.data["delay_ms"] = json!(20);
                    sent += 1;
                    let answer = plugin.call(request).await.expect("no call fails");
                    assert_eq!(
                        answer["payload"],
                        json!(tag),
                        "an answer reached the wrong caller"
                    );
                    *answered
                        .entry(answer["version"].as_str().unwrap().to_owned())
                        .or_default() += 1;
                }
                (sent, answered)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(400)).await;
    common::write_manifest(&dir.path().join("testkit"), |m| {
        m.insert("version".into(), "2.0.0".into());
    });
    plugin.reload().await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    stop.store(true, Ordering::Relaxed);
    let (mut sent, mut answered) = (0, HashMap::<String, u64>::new());
    for worker in workers {
        let (worker_sent, worker_answered) = worker.await.unwrap();
        sent += worker_sent;
        for (version, count) in worker_answered {
            *answered.entry(version).or_default() += count;
        }
    }
    assert_eq!(
        answered.values().sum::<u64>(),
        sent,
        "every call answered once"
    );
    assert!(
        answered["1.0.0"] > 0 && answered["2.0.0"] > 0,
        "{answered:?}"
    );
    let status = plugin.status();
    assert_eq!((status.version.as_str(), status.restarts), ("2.0.0", 0));
    assert_eq!(plugin.version(), "2.0.0");
    eventually("the old process is gone", || !alive(old_pid as u32)).await;
    println!("hot swap: {sent} calls, answered per version {answered:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_version_that_fails_its_handshake_leaves_the_old_one_serving() {
    let (plugin, dir, pid) = started(|_| {}).await;
    common::write_manifest(&dir.path().join("testkit"), |m| {
        m.insert("version".into(), "2.0.0".into());
        set(m, "config", "claim_version", "1.9.9");
    });
    let error = plugin.reload().await.unwrap_err();
    assert!(error.to_string().contains("1.9.9"), "{error}");
    let status = plugin.status();
    assert_eq!(
        (status.state, status.version.as_str()),
        (PluginState::Ready, "1.0.0")
    );
    assert!(status.last_error.unwrap().contains("1.9.9"));
    assert_eq!(echo_pid(&plugin).await, pid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_folder_is_reloaded() {
    let dir = tempfile::tempdir().unwrap();
    let folder = common::install(dir.path(), "testkit", |_| {});
    let options = flexcore_plugin::SupervisorOptions {
        watch_interval: Some(Duration::from_millis(200)),
        ..common::options()
    };
    let plugin = flexcore_plugin::Supervisor::load(&folder, options).unwrap();
    plugin.initialize(Value::Null).await.unwrap();
    // File times may have a coarse resolution: let the clock move past the first write.
    tokio::time::sleep(Duration::from_millis(50)).await;
    // What the plugin writes into its own data/ folder reloads nothing.
    let pid = plugin.status().pid;
    std::fs::create_dir_all(folder.join("data")).unwrap();
    std::fs::write(folder.join("data/outbox.jsonl"), "{}\n").unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        plugin.status().pid,
        pid,
        "a write under data/ restarted the plugin"
    );
    assert_eq!(plugin.status().restarts, 0);
    common::write_manifest(&folder, |m| {
        m.insert("version".into(), "1.1.0".into());
    });
    eventually("the new version serves", || {
        plugin.status().version == "1.1.0"
    })
    .await;
    assert_eq!(plugin.status().state, PluginState::Ready);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pinned_executable_with_another_digest_is_refused() {
    let (plugin, _dir) = supervisor(|m| set(m, "entry", "sha256", "00".repeat(32)));
    let error = plugin
        .initialize(Value::Null)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("sha256") && error.contains(&"00".repeat(32)),
        "{error}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(plugin.status().state, PluginState::Refused);
    assert_eq!(plugin.status().pid, None);

    let python = std::fs::read(
        flexcore_plugin::Manifest::load(&common::testkit_source())
            .unwrap()
            .executable()
            .unwrap(),
    )
    .unwrap();
    let digest: String = <sha2::Sha256 as sha2::Digest>::digest(&python)
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    let (pinned, _dir) = supervisor(|m| set(m, "entry", "sha256", digest));
    pinned.initialize(Value::Null).await.unwrap();
    echo_pid(&pinned).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_the_plugin_and_later_calls_fail() {
    let (plugin, _dir, pid) = started(|_| {}).await;
    plugin.shutdown().await.unwrap();
    assert_eq!(plugin.status().state, PluginState::Stopped);
    assert!(!alive(pid as u32));
    let error = plugin.process(call("echo", json!(1))).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Unavailable);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_supervisor_kills_a_plugin_that_ignores_eof() {
    let (plugin, _dir, pid) = started(|m| set(m, "config", "ignore_eof", true)).await;
    drop(plugin);
    eventually("the plugin is gone", || !alive(pid as u32)).await;
}

/// Run twice: as the test, it starts itself again as a helper engine, SIGKILLs that helper
/// and checks its plugin (which ignores EOF and SIGTERM) dies too; as the helper (the
/// environment variable set), it starts the plugin, prints its pid and waits to be killed.
#[test]
fn a_plugin_dies_with_its_killed_engine() {
    const HELPER: &str = "FLEXCORE_PLUGIN_TEST_HELPER_FOLDER";
    if let Some(folder) = std::env::var_os(HELPER) {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let plugin =
                flexcore_plugin::Supervisor::load(folder.as_ref(), common::options()).unwrap();
            plugin.initialize(Value::Null).await.unwrap();
            let pid = echo_pid(&plugin).await;
            println!("plugin-pid={pid}");
            tokio::time::sleep(Duration::from_secs(60)).await;
        });
        return;
    }
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let folder = common::install(dir.path(), "testkit", |m| {
        set(m, "config", "ignore_eof", true)
    });
    let mut helper = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "a_plugin_dies_with_its_killed_engine",
            "--nocapture",
        ])
        .env(HELPER, &folder)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let lines = std::io::BufReader::new(helper.stdout.take().unwrap()).lines();
    let pid: u32 = lines
        .map_while(Result::ok)
        .find_map(|line| {
            line.strip_prefix("plugin-pid=")
                .map(|pid| pid.parse().unwrap())
        })
        .expect("the helper prints its plugin's pid");
    assert!(alive(pid));
    helper.kill().unwrap();
    helper.wait().unwrap();
    let started = std::time::Instant::now();
    while alive(pid) {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "plugin {pid} outlived its engine"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initializing_again_replaces_the_process_without_leaking_it() {
    let (plugin, _dir, first) = started(|_| {}).await;
    plugin
        .initialize(json!({"greeting": "again"}))
        .await
        .unwrap();
    let second = echo_pid(&plugin).await;
    assert_ne!(first, second);
    eventually("the first process is gone", || !alive(first as u32)).await;
    assert_eq!(plugin.status().restarts, 0);
}
