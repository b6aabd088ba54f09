//! Plugins served by `flexcore serve`: the four example plugins (Python, Rust, Go), the
//! compiled-in payload guard and a plugin with a missing dependency, copied into a plugins
//! folder and driven through the real binary over HTTP and the CLI.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::Server;
use flexcore_test_support::services::services_required;
use serde_json::{Value, json};

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/plugins")
}

/// Skips the test with `why` (or fails it under `FLEXCORE_REQUIRE_SERVICES=1`).
fn skip(why: &str) -> Option<PathBuf> {
    assert!(
        !services_required(),
        "{why} (required: FLEXCORE_REQUIRE_SERVICES=1)"
    );
    eprintln!("SKIPPED: {why}; set FLEXCORE_REQUIRE_SERVICES=1 to make this a failure");
    None
}

fn copy_folder(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

/// The `user_stats` example binary: the one this target directory already built, or a fresh
/// build in a directory of its own (the running `cargo test` holds the main one's lock).
fn user_stats_binary() -> PathBuf {
    let profile_dir = std::env::current_exe()
        .unwrap()
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .to_path_buf();
    let built = profile_dir.join("examples/user_stats");
    if built.is_file() {
        return built;
    }
    let own_target = profile_dir.join("plugin-examples");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let status = Command::new(cargo)
        .args([
            "build",
            "-p",
            "flexcore-plugin-sdk",
            "--example",
            "user_stats",
        ])
        .env("CARGO_TARGET_DIR", &own_target)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .unwrap();
    assert!(status.success(), "cannot build the user_stats example");
    own_target.join("debug/examples/user_stats")
}

/// A plugins folder holding copies of the example plugins (the Go one built, the Rust one
/// copied in), the compiled-in payload guard on `greet_user`, and `needs-absent`, whose
/// dependency does not exist; the welcome mailer writes to `outbox`. `None` (skipped) when
/// `go` or the Python SDK is missing.
fn plugins_folder(root: &Path, outbox: &Path) -> Option<PathBuf> {
    if Command::new("go").arg("version").output().is_err() {
        return skip("go is not installed, so the go-greeter example cannot be built");
    }
    let sdk = Command::new("python3")
        .args(["-c", "import flexcore_plugin"])
        .status();
    if !sdk.is_ok_and(|status| status.success()) {
        return skip("python3 has no flexcore_plugin (python3 -m pip install ./sdk/python)");
    }
    let plugins = root.join("plugins");
    for name in [
        "email-enricher",
        "welcome-mailer",
        "user-stats",
        "go-greeter",
    ] {
        copy_folder(&examples().join(name), &plugins.join(name));
    }
    let built = Command::new("go")
        .args(["build", "-o"])
        .arg(plugins.join("go-greeter/go-greeter"))
        .arg(".")
        .current_dir(examples().join("go-greeter"))
        .status()
        .unwrap();
    assert!(built.success(), "go build of go-greeter failed");
    std::fs::copy(user_stats_binary(), plugins.join("user-stats/user-stats")).unwrap();
    let mailer = plugins.join("welcome-mailer/plugin.toml");
    let manifest = std::fs::read_to_string(&mailer).unwrap().replace(
        "outbox_file = \"data/welcome-outbox.jsonl\"",
        &format!("outbox_file = {:?}", outbox.display().to_string()),
    );
    assert!(
        manifest.contains(&outbox.display().to_string()),
        "the example's outbox_file line changed: point the test at the new one"
    );
    std::fs::write(&mailer, manifest).unwrap();
    std::fs::create_dir_all(plugins.join("payload-guard")).unwrap();
    std::fs::write(
        plugins.join("payload-guard/plugin.toml"),
        "name = \"payload-guard\"\nversion = \"1.0.0\"\n\n[entry]\ncompiled_in = \"payload-guard\"\n\n\
         [hooks]\nbefore_command = [\"greet_user\"]\n\n[config]\nmax_depth = 2\nmax_bytes = 1024\n",
    )
    .unwrap();
    std::fs::create_dir_all(plugins.join("needs-absent")).unwrap();
    std::fs::write(
        plugins.join("needs-absent/plugin.toml"),
        "name = \"needs-absent\"\nversion = \"0.1.0\"\n\n[entry]\ncommand = \"python3\"\n\
         args = [\"absent.py\"]\n\n[dependencies]\nabsent-plugin = \">=1\"\n\n\
         [hooks]\nquery_handler = [\"never_served\"]\n",
    )
    .unwrap();
    Some(plugins)
}

async fn start(root: &Path, plugins: &Path) -> Server {
    let url = format!("sqlite://{}", root.join("flexcore.db").display());
    let plugins = plugins.display().to_string();
    Server::start_with_env(
        root,
        &url,
        &[
            ("FLEXCORE_PLUGINS_DIR", plugins.as_str()),
            ("FLEXCORE_MODULES", "users"),
        ],
    )
    .await
}

/// The plugins by name, once every started one is `ready` (panics after 30 s).
async fn ready_plugins(server: &Server) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let listed = server.get_json("/v1/plugins").await;
        let all_ready = listed
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["state"] == "ready" || p["state"] == "rejected");
        if all_ready {
            return listed;
        }
        assert!(Instant::now() < deadline, "plugins not ready: {listed}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `create_user` with `email`: the status and the answer.
async fn create_user(server: &Server, email: &str) -> (u16, Value) {
    server
        .post_json(
            "/v1/commands/create_user",
            &json!({"email": email, "profile": {"name": "Ann"}}),
        )
        .await
}

/// The plugin called `name` in a `GET /v1/plugins` answer.
fn named<'a>(listed: &'a Value, name: &str) -> &'a Value {
    listed
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("no plugin {name} in {listed}"))
}

fn outbox_lines(outbox: &Path) -> Vec<Value> {
    std::fs::read_to_string(outbox)
        .unwrap_or_default()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

/// Waits until the outbox holds `count` lines, then checks it stays there for a moment.
async fn wait_for_mails(outbox: &Path, count: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while outbox_lines(outbox).len() < count {
        assert!(
            Instant::now() < deadline,
            "the outbox has {:?}, expected {count} lines",
            outbox_lines(outbox)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let lines = outbox_lines(outbox);
    assert_eq!(lines.len(), count, "{lines:?}");
    lines
}

/// The processes whose working directory is inside `plugins` (the plugin processes).
fn plugin_processes(plugins: &Path) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let cwd = std::fs::read_link(entry.path().join("cwd")).ok()?;
            cwd.starts_with(plugins).then_some(pid)
        })
        .collect()
}

fn flexcore_cli(args: &[&str]) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_flexcore"))
        .args(args)
        .env_remove("FLEXCORE_CONFIG")
        .output()
        .unwrap();
    (
        output.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

#[tokio::test]
async fn plugins_serve_through_the_engine_and_die_with_it() {
    let root = tempfile::tempdir().unwrap();
    let outbox = root.path().join("welcome-outbox.jsonl");
    let Some(plugins) = plugins_folder(root.path(), &outbox) else {
        return;
    };
    let mut server = start(root.path(), &plugins).await;

    // Every plugin is listed; the one with a missing dependency is reported, the others serve.
    let listed = ready_plugins(&server).await;
    let states: Vec<(String, String)> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_owned(),
                p["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let mut names: Vec<&str> = states.iter().map(|(name, _)| name.as_str()).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "email-enricher",
            "go-greeter",
            "needs-absent",
            "payload-guard",
            "user-stats",
            "welcome-mailer"
        ]
    );
    let absent = named(&listed, "needs-absent");
    assert_eq!(absent["state"], "rejected");
    assert!(
        absent["last_error"]
            .as_str()
            .unwrap()
            .contains("absent-plugin"),
        "{absent}"
    );
    assert_eq!(
        states.iter().filter(|(_, state)| state == "ready").count(),
        5
    );

    // before_command (Python): the stored address is trimmed and lower-cased.
    let (status, created) = create_user(&server, " Ann@Example.COM ").await;
    assert_eq!(status, 200, "{created}");
    let stream_id = created["stream_id"].as_str().unwrap().to_owned();
    let stream = server.get_json(&format!("/v1/streams/{stream_id}")).await;
    assert_eq!(stream["events"][0]["data"]["email"], "ann@example.com");

    // A blocked domain is refused with the plugin's path, and nothing is written.
    let before = server.get_json("/v1/events?type_prefix=user.").await["events"]
        .as_array()
        .unwrap()
        .len();
    let (status, refused) = create_user(&server, "bob@mailinator.com").await;
    assert_eq!(status, 422, "{refused}");
    assert_eq!(refused["errors"][0]["path"], "/email", "{refused}");
    let after = server.get_json("/v1/events?type_prefix=user.").await["events"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(before, after);

    // query_handler (Rust).
    let (status, domain) = server
        .post_json(
            "/v1/queries/email_domain",
            &json!({"email": "Ann@Gmail.com"}),
        )
        .await;
    assert_eq!(status, 200, "{domain}");
    assert_eq!(
        domain,
        json!({"domain": "gmail.com", "free_provider": true})
    );

    // command_handler (Go), behind the compiled-in guard, which trims the padded id.
    let user_id = stream_id.strip_prefix("user-").unwrap().to_owned();
    let (status, greeted) = server
        .post_json(
            "/v1/commands/greet_user",
            &json!({"user_id": format!("  {user_id} "), "name": "Ann"}),
        )
        .await;
    assert_eq!(status, 200, "{greeted}");
    assert_eq!(greeted["stream_id"], stream_id.as_str());
    assert_eq!(greeted["version"], 1);
    let stream = server.get_json(&format!("/v1/streams/{stream_id}")).await;
    assert_eq!(stream["events"][1]["event_type"], "user.greeted");
    assert_eq!(
        stream["events"][1]["data"]["greeting"],
        "Welcome aboard, Ann!"
    );
    // The guard refuses a payload nested deeper than its max_depth, at the path.
    let (status, refused) = server
        .post_json(
            "/v1/commands/greet_user",
            &json!({"user_id": user_id, "name": "Ann", "extra": {"a": {"b": 1}}}),
        )
        .await;
    assert_eq!(status, 422, "{refused}");
    assert_eq!(refused["errors"][0]["path"], "/extra/a", "{refused}");

    // event_handler (Python): one welcome mail per created user.
    let mails = wait_for_mails(&outbox, 1).await;
    assert_eq!(mails[0]["to"], "ann@example.com");

    // The CLI lists them.
    let (ok, table) = flexcore_cli(&["plugins", "list", "--server", &server.base]);
    assert!(ok, "{table}");
    for name in [
        "email-enricher",
        "go-greeter",
        "payload-guard",
        "user-stats",
    ] {
        assert!(
            table
                .lines()
                .any(|line| line.starts_with(name) && line.contains("ready")),
            "{table}"
        );
    }
    assert!(table.contains("rejected"), "{table}");

    // A hot reload to a new version with a longer blocklist, while commands keep succeeding.
    let enricher = plugins.join("email-enricher");
    let replace_in = |file: &str, from: &str, to: &str| {
        let path = enricher.join(file);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(from), "{file} has no {from}");
        std::fs::write(&path, text.replace(from, to)).unwrap();
    };
    replace_in("enricher.py", "\"1.2.0\"", "\"1.3.0\"");
    replace_in(
        "plugin.toml",
        "version = \"1.2.0\"\n",
        "version = \"1.3.0\"\n",
    );
    replace_in(
        "plugin.toml",
        "\"mailinator.com\"]",
        "\"mailinator.com\", \"blocked.test\"]",
    );
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let traffic = {
        let (stop, sent, base) = (Arc::clone(&stop), Arc::clone(&sent), server.base.clone());
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            while !stop.load(Ordering::Relaxed) {
                let n = sent.fetch_add(1, Ordering::Relaxed);
                let answer = client
                    .post(format!("{base}/v1/commands/create_user"))
                    .json(&json!({"email": format!(" Load{n}@Example.COM "), "profile": {}}))
                    .send()
                    .await
                    .unwrap();
                let status = answer.status().as_u16();
                let body: Value = answer.json().await.unwrap();
                assert_eq!(status, 200, "during the reload: {body}");
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (ok, reloaded) = flexcore_cli(&[
        "plugins",
        "reload",
        "email-enricher",
        "--server",
        &server.base,
    ]);
    assert!(ok, "{reloaded}");
    assert!(reloaded.contains("1.3.0"), "{reloaded}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    traffic.await.unwrap();
    let load_users = sent.load(Ordering::Relaxed);
    assert!(load_users > 0);
    let listed = server.get_json("/v1/plugins").await;
    let enricher = named(&listed, "email-enricher");
    assert_eq!(enricher["version"], "1.3.0");
    let (status, refused) = create_user(&server, "dee@blocked.test").await;
    assert_eq!(status, 422, "the new blocklist serves: {refused}");

    // Exactly one mail per user, also across a restart.
    let users = 1 + load_users;
    wait_for_mails(&outbox, users).await;
    assert!(server.terminate().await.success());
    let server = start(root.path(), &plugins).await;
    ready_plugins(&server).await;
    let (status, created) = create_user(&server, "cy@example.io").await;
    assert_eq!(status, 200, "{created}");
    let mails = wait_for_mails(&outbox, users + 1).await;
    let mut event_ids: Vec<&str> = mails
        .iter()
        .map(|mail| mail["event_id"].as_str().unwrap())
        .collect();
    event_ids.sort_unstable();
    event_ids.dedup();
    assert_eq!(event_ids.len(), users + 1);

    // SIGKILL of the engine leaves no plugin process behind.
    let running = plugin_processes(&plugins);
    assert!(running.len() >= 4, "plugin processes: {running:?}");
    server.kill_9();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !plugin_processes(&plugins).is_empty() {
        assert!(
            Instant::now() < deadline,
            "plugin processes outlived the engine: {:?}",
            plugin_processes(&plugins)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

const SECRET: &str = "a test secret of at least 32 bytes, for plugins";

const ROLES: &str = r#"
[roles.writer]
commands = ["*"]
streams_read = ["user-*"]

[roles.ops]
admin = true
"#;

fn guard_manifest(max_depth: u32) -> String {
    format!(
        "name = \"payload-guard\"\nversion = \"1.0.0\"\n\n[entry]\ncompiled_in = \"payload-guard\"\n\n\
         [hooks]\nbefore_command = [\"create_user\"]\n\n[config]\nmax_depth = {max_depth}\n"
    )
}

#[tokio::test]
async fn a_compiled_in_plugin_serves_alone_and_only_an_admin_reloads_it() {
    let root = tempfile::tempdir().unwrap();
    let plugins = root.path().join("plugins");
    std::fs::create_dir_all(plugins.join("payload-guard")).unwrap();
    let manifest = plugins.join("payload-guard/plugin.toml");
    std::fs::write(&manifest, guard_manifest(2)).unwrap();
    let plugins_dir = plugins.display().to_string();
    let server = Server::start_secured(
        root.path(),
        SECRET,
        ROLES,
        &[
            ("FLEXCORE_PLUGINS_DIR", plugins_dir.as_str()),
            ("FLEXCORE_MODULES", "users"),
        ],
    )
    .await;
    let writer = common::mint(SECRET, "ann", "writer", &[]);
    let ops = common::mint(SECRET, "olga", "ops", &[]);

    let (status, created) = server
        .post_json_as(
            &writer,
            "/v1/commands/create_user",
            &json!({"email": "zed@example.com", "profile": {"name": "  Zed "}}),
        )
        .await;
    assert_eq!(status, 200, "{created}");
    let stream_path = format!("/v1/streams/{}", created["stream_id"].as_str().unwrap());
    let stream = server.get_json_as(&writer, &stream_path).await;
    assert_eq!(
        stream["events"][0]["data"]["profile"]["name"], "Zed",
        "{stream}"
    );

    let nested = json!({"email": "deep@example.com", "profile": {"a": {"b": 1}}});
    let (status, refused) = server
        .post_json_as(&writer, "/v1/commands/create_user", &nested)
        .await;
    assert_eq!(status, 422, "{refused}");
    assert_eq!(refused["errors"][0]["path"], "/profile/a", "{refused}");

    let health = server.get_json("/health").await;
    assert_eq!(health["plugins"]["payload-guard"], "ready", "{health}");

    // A reload re-reads [config]; it needs the admin permission.
    std::fs::write(&manifest, guard_manifest(3)).unwrap();
    let reload = "/v1/plugins/payload-guard/reload";
    let (status, denied) = server.post_json_as(&writer, reload, &Value::Null).await;
    assert_eq!(status, 403, "{denied}");
    let (status, unknown) = server
        .post_json_as(&ops, "/v1/plugins/nope/reload", &Value::Null)
        .await;
    assert_eq!(status, 404, "{unknown}");
    let (status, reloaded) = server.post_json_as(&ops, reload, &Value::Null).await;
    assert_eq!(status, 200, "{reloaded}");
    assert_eq!(reloaded["state"], "ready", "{reloaded}");
    let (status, created) = server
        .post_json_as(&writer, "/v1/commands/create_user", &nested)
        .await;
    assert_eq!(status, 200, "the new max_depth serves: {created}");
}
