//! Test plugins in temporary folders, made from `tests/plugins/testkit`.

#![allow(dead_code)]

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use flexcore_app::plugin::{Hook, PluginCall, PluginCallContext};
use flexcore_plugin::{Supervisor, SupervisorOptions};
use serde_json::Value;

/// The test plugin's source folder.
pub fn testkit_source() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/plugins/testkit")
}

/// A copy of the test plugin in `parent/<folder>`, its manifest changed by `edit`.
pub fn install(parent: &Path, folder: &str, edit: impl FnOnce(&mut toml::Table)) -> PathBuf {
    let target = parent.join(folder);
    std::fs::create_dir_all(&target).unwrap();
    std::fs::copy(
        testkit_source().join("testkit.py"),
        target.join("testkit.py"),
    )
    .unwrap();
    write_manifest(&target, edit);
    target
}

/// Rewrites the manifest of the plugin in `folder` from the testkit's, changed by `edit`.
pub fn write_manifest(folder: &Path, edit: impl FnOnce(&mut toml::Table)) {
    let text = std::fs::read_to_string(testkit_source().join("plugin.toml")).unwrap();
    let mut manifest: toml::Table = text.parse().unwrap();
    edit(&mut manifest);
    std::fs::write(
        folder.join("plugin.toml"),
        toml::to_string(&manifest).unwrap(),
    )
    .unwrap();
}

/// Sets `[table] key = value` in a manifest.
pub fn set(manifest: &mut toml::Table, table: &str, key: &str, value: impl Into<toml::Value>) {
    let section = manifest
        .entry(table)
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    section
        .as_table_mut()
        .unwrap()
        .insert(key.to_owned(), value.into());
}

/// Options for tests: no folder watching, short deadlines.
pub fn options() -> SupervisorOptions {
    SupervisorOptions {
        shutdown_deadline: Duration::from_secs(2),
        watch_interval: None,
        ..SupervisorOptions::default()
    }
}

/// A supervisor over a fresh copy of the testkit changed by `edit`, and its temporary folder.
pub fn supervisor(edit: impl FnOnce(&mut toml::Table)) -> (Supervisor, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let folder = install(dir.path(), "testkit", edit);
    (Supervisor::load(&folder, options()).unwrap(), dir)
}

/// A `before_command` call of `target` with `payload`.
pub fn call(target: &str, payload: Value) -> PluginCall {
    PluginCall {
        hook: Hook::BeforeCommand,
        target: target.to_owned(),
        context: PluginCallContext::default(),
        data: serde_json::json!({ "payload": payload }),
    }
}

/// Waits until `condition` holds, failing the test after 15 s.
pub async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let started = Instant::now();
    while !condition() {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether a process with `pid` exists (zombies count as gone).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// How long `future` took, and its output.
pub async fn timed<T>(future: impl Future<Output = T>) -> (Duration, T) {
    let started = Instant::now();
    let output = future.await;
    (started.elapsed(), output)
}
