//! Checks that run in the machine's `python3` (schema validators CI installs with pip).

use std::process::Command;

/// Runs `script` (`python3 -c`) with a temp file holding `input` as its one argument; the
/// script prints `valid` when the check passes. A missing `python3` or Python package skips
/// the check with a message, unless services are required (CI), where it fails; `needs` names
/// what to install. Any other failure panics with `what` and the script's error output.
pub fn check_json(script: &str, input: &serde_json::Value, needs: &str, what: &str) {
    let file = std::env::temp_dir().join(format!("flexcore-check-{}.json", uuid::Uuid::new_v4()));
    std::fs::write(&file, input.to_string()).expect("a temp file for the python check");
    let check = Command::new("python3")
        .args(["-c", script])
        .arg(&file)
        .output();
    let _ = std::fs::remove_file(&file);
    let missing = match check {
        Ok(out) if out.status.success() => {
            assert_eq!(
                String::from_utf8_lossy(&out.stdout).trim(),
                "valid",
                "{what}"
            );
            return;
        }
        Ok(out) if String::from_utf8_lossy(&out.stderr).contains("No module named") => {
            format!("python3 has no {needs}")
        }
        Ok(out) => panic!("{what}: {}", String::from_utf8_lossy(&out.stderr)),
        Err(e) => format!("no python3 ({e})"),
    };
    assert!(
        !crate::services::services_required(),
        "{needs} is required (FLEXCORE_REQUIRE_SERVICES=1): {missing}"
    );
    eprintln!("SKIPPED: {missing}; the checks in Rust ran");
}
