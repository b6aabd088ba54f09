//! A client in another language: Python stubs generated with `python3 -m grpc_tools.protoc` from
//! the repository's `proto/` talk to a live server (`tests/python/grpc_client.py`).
//!
//! Uses the `python3` on `PATH` (pyenv's, on our machines). Skips with a message when `grpc` or
//! `grpc_tools` cannot be imported, unless `FLEXCORE_REQUIRE_SERVICES=1` (CI, whose `.ci/run`
//! installs them), where that is a failure.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

const PYTHON: &str = "python3";

fn python(args: &[&str]) -> std::io::Result<Output> {
    Command::new(PYTHON).args(args).output()
}

/// Whether grpcio and grpcio-tools are importable; skips or fails as the environment asks.
fn grpcio_available() -> bool {
    let probe = python(&[
        "-c",
        "import grpc, grpc_tools.protoc; print(grpc.__version__)",
    ]);
    let why = match probe {
        Ok(out) if out.status.success() => return true,
        Ok(out) => String::from_utf8_lossy(&out.stderr)
            .lines()
            .last()
            .unwrap_or("no output")
            .to_owned(),
        Err(e) => format!("cannot run {PYTHON}: {e}"),
    };
    assert!(
        !flexcore_test_support::services::services_required(),
        "the Python gRPC client test is required (FLEXCORE_REQUIRE_SERVICES=1) but grpcio is \
         not importable by {PYTHON}: {why}\n(install it with: {PYTHON} -m pip install grpcio grpcio-tools)"
    );
    eprintln!(
        "SKIPPED: grpcio / grpcio-tools are not importable by {PYTHON} ({why}); \
         set FLEXCORE_REQUIRE_SERVICES=1 to make this a failure"
    );
    false
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn check(what: &str, output: &Output) {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    print!("{stdout}");
    eprint!("{stderr}");
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_client_sends_appends_reads_and_subscribes() {
    if !grpcio_available() {
        return;
    }
    let stubs = tempfile::tempdir().unwrap();
    let proto = repo_root().join("proto");
    let mut args = vec![
        "-m".to_owned(),
        "grpc_tools.protoc".to_owned(),
        format!("-I{}", proto.display()),
        format!("--python_out={}", stubs.path().display()),
        format!("--grpc_python_out={}", stubs.path().display()),
    ];
    let mut files: Vec<String> = std::fs::read_dir(proto.join("flexcore/v1"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "proto"))
        .map(|path| path.strip_prefix(&proto).unwrap().display().to_string())
        .collect();
    files.sort();
    assert_eq!(files.len(), 3, "{files:?}");
    args.extend(files);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    check("grpc_tools.protoc", &python(&args).unwrap());

    let server = common::start_sqlite().await;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/grpc_client.py");
    let address = server.addr.to_string();
    let stubs_dir = stubs.path().display().to_string();
    let run = tokio::process::Command::new(PYTHON)
        .arg(&script)
        .arg(&address)
        .arg(&stubs_dir)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("the Python client finishes in time")
        .unwrap();
    check("the Python client", &output);
    assert!(String::from_utf8_lossy(&output.stdout).contains("python grpc client: ok"));
    server.stop().await.unwrap();
}
