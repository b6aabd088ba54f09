//! The `flexcore-bench` binary: every subcommand documents itself, and a missing or unknown
//! one is a usage error.

use std::process::Command;

fn bench(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_flexcore-bench"))
        .args(args)
        .output()
        .expect("the binary runs")
}

#[test]
fn help_is_complete() {
    let top = bench(&["--help"]);
    assert!(top.status.success());
    let text = String::from_utf8_lossy(&top.stdout);
    for subcommand in ["appends", "gateway", "python", "subscriptions", "outbox"] {
        assert!(
            text.contains(subcommand),
            "{subcommand} missing from:\n{text}"
        );
        let help = bench(&[subcommand, "--help"]);
        assert!(help.status.success(), "{subcommand} --help failed");
        let text = String::from_utf8_lossy(&help.stdout);
        assert!(
            text.contains("--repeat") && text.contains("--json"),
            "{text}"
        );
    }
}

#[test]
fn a_missing_or_unknown_benchmark_is_a_usage_error() {
    for args in [&[][..], &["--gateway"][..], &["latency"][..]] {
        let output = bench(args);
        assert_eq!(output.status.code(), Some(2), "{args:?}");
    }
}
