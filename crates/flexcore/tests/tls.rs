//! TLS at the binary: HTTPS and gRPC over TLS with a certificate from a throwaway CA, client
//! certificates (mTLS) as principals with their configured roles, certificate reload without a
//! restart, and the client's `--ca`, `--cert`, `--key` and `--token`.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::Server;
use flexcore_grpc::pb::SendCommandRequest;
use flexcore_grpc::pb::command_service_client::CommandServiceClient;
use flexcore_test_support::tls::{CertFiles, TestCa, client_config, grpc_channel};
use serde_json::json;

const ROLES: &str = "[tls.client_roles]\nsvc-a = [\"writer\"]\n\n[roles.writer]\ncommands = [\"create_user\"]\nstreams_read = [\"user-*\"]\n";

fn client(ca: &Path, identity: Option<&CertFiles>) -> reqwest::Client {
    flexcore_auth::tls::install_crypto_provider();
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(ca).unwrap()).unwrap());
    if let Some(files) = identity {
        let mut pem = std::fs::read(&files.cert).unwrap();
        pem.extend(std::fs::read(&files.key).unwrap());
        builder = builder.identity(reqwest::Identity::from_pem(&pem).unwrap());
    }
    builder.build().unwrap()
}

fn create_user(email: &str) -> serde_json::Value {
    json!({"email": email, "profile": {}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_authenticate_with_their_roles() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path();
    let ca = TestCa::new("flexcore test CA");
    let ca_file = ca.write_ca(dir, "ca.crt");
    let server_files = ca.issue(dir, "server", "flexcore", &["127.0.0.1", "localhost"]);
    let svc_a = ca.issue(dir, "svc-a", "svc-a", &[]);
    let stranger = ca.issue(dir, "stranger", "stranger", &[]);
    let other_ca = TestCa::new("another CA");
    let foreign = other_ca.issue(dir, "foreign", "svc-a", &[]);
    std::fs::write(dir.join("flexcore.toml"), ROLES).unwrap();
    let url = format!("sqlite://{}", dir.join("db.sqlite").display());
    let (cert, key, config) = (
        server_files.cert.display().to_string(),
        server_files.key.display().to_string(),
        dir.join("flexcore.toml").display().to_string(),
    );
    let ca_path = ca_file.display().to_string();
    let server = Server::start_https(
        dir,
        &url,
        &[
            ("FLEXCORE_TLS_CERT", &cert),
            ("FLEXCORE_TLS_KEY", &key),
            ("FLEXCORE_TLS_CLIENT_CA", &ca_path),
            ("FLEXCORE_CONFIG", &config),
        ],
        &client(&ca_file, Some(&svc_a)),
    )
    .await;
    let commands = format!("{}/v1/commands/create_user", server.base);

    let answer = client(&ca_file, Some(&svc_a))
        .post(&commands)
        .json(&create_user("a@b.io"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let outcome: serde_json::Value = answer.json().await.unwrap();
    let stream: serde_json::Value = client(&ca_file, Some(&svc_a))
        .get(format!(
            "{}/v1/streams/{}",
            server.base,
            outcome["stream_id"].as_str().unwrap()
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        stream["events"][0]["metadata"]["actor"],
        json!({"sub": "svc-a", "roles": ["writer"]})
    );

    let stranger_answer = client(&ca_file, Some(&stranger))
        .post(&commands)
        .json(&create_user("s@b.io"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        stranger_answer.status(),
        403,
        "a known CA, but no role for 'stranger'"
    );
    for (what, identity) in [
        ("no certificate", None),
        ("another CA's certificate", Some(&foreign)),
    ] {
        let refused = client(&ca_file, identity)
            .post(&commands)
            .json(&create_user("x@b.io"))
            .send()
            .await;
        assert!(refused.is_err(), "{what}: {refused:?}");
    }
    let plain = reqwest::get(format!(
        "{}/health",
        server.base.replace("https://", "http://")
    ))
    .await;
    assert!(
        plain.is_err() || !plain.unwrap().status().is_success(),
        "plain HTTP is not served"
    );

    // gRPC answers the same [tls]: svc-a's certificate authenticates with its roles there too.
    let grpc = server.grpc.trim_start_matches("http://").parse().unwrap();
    let send_over_grpc = |identity: &CertFiles, email: &str| {
        let (config, request) = (
            client_config(&ca_file, Some(identity)),
            SendCommandRequest {
                command_type: "create_user".into(),
                payload_json: create_user(email).to_string(),
                ..Default::default()
            },
        );
        async move {
            let localhost = std::net::Ipv4Addr::LOCALHOST.into();
            let channel = grpc_channel(grpc, localhost, Some(config)).await.unwrap();
            CommandServiceClient::new(channel).send(request).await
        }
    };
    let created = send_over_grpc(&svc_a, "grpc@b.io")
        .await
        .expect("svc-a over gRPC with TLS")
        .into_inner();
    assert!(created.stream_id.starts_with("user-"), "{created:?}");
    let forbidden = send_over_grpc(&stranger, "grpc-s@b.io")
        .await
        .expect_err("no role for 'stranger' over gRPC either");
    assert_eq!(
        forbidden.code(),
        tonic::Code::PermissionDenied,
        "{forbidden:?}"
    );

    // The client's flags: --ca, --cert, --key.
    let output = Command::new(env!("CARGO_BIN_EXE_flexcore"))
        .args([
            "send",
            "create_user",
            r#"{"email": "cli@b.io"}"#,
            "--json",
            "--server",
            &server.base,
        ])
        .arg("--ca")
        .arg(&ca_file)
        .arg("--cert")
        .arg(&svc_a.cert)
        .arg("--key")
        .arg(&svc_a.key)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_certificate_is_served_without_a_restart() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path();
    let first_ca = TestCa::new("first CA");
    let first_ca_file = first_ca.write_ca(dir, "first-ca.crt");
    let files = first_ca.issue(dir, "server", "flexcore", &["127.0.0.1"]);
    let url = format!("sqlite://{}", dir.join("db.sqlite").display());
    let (cert, key) = (
        files.cert.display().to_string(),
        files.key.display().to_string(),
    );
    let secret = "the TLS test's HS256 secret, 32+ bytes";
    let server = Server::start_https(
        dir,
        &url,
        &[
            ("FLEXCORE_TLS_CERT", &cert),
            ("FLEXCORE_TLS_KEY", &key),
            ("FLEXCORE_JWT_HS256_SECRET", secret),
        ],
        &client(&first_ca_file, None),
    )
    .await;
    let token = common::mint(secret, "ann", "", &[]);
    // --token reaches a TLS server: authenticated, and refused by role (403, not 401).
    let output = Command::new(env!("CARGO_BIN_EXE_flexcore"))
        .args([
            "ask",
            "list_users",
            "--server",
            &server.base,
            "--token",
            &token,
        ])
        .arg("--ca")
        .arg(&first_ca_file)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("forbidden"), "{stderr}");

    // Renewal: another CA signs the new certificate, written over the old files.
    let second_ca = TestCa::new("second CA");
    let second_ca_file = second_ca.write_ca(dir, "second-ca.crt");
    let renewed = second_ca.issue(dir, "renewed", "flexcore", &["127.0.0.1"]);
    std::fs::copy(&renewed.key, &files.key).unwrap();
    std::fs::copy(&renewed.cert, &files.cert).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let health = client(&second_ca_file, None)
            .get(format!("{}/health", server.base))
            .send()
            .await;
        if matches!(&health, Ok(answer) if answer.status() == 200) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the renewed certificate is served: {health:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let old = client(&first_ca_file, None)
        .get(format!("{}/health", server.base))
        .send()
        .await;
    assert!(
        old.is_err(),
        "new connections no longer get the old certificate"
    );
}
