//! The gateway's connections (`serve_with`): TLS, client certificates (mTLS) as principals
//! with their configured roles, the cap on open connections, handshakes that never hold up
//! other clients, and the peer address each call is rate-limited by.

mod common;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flexcore_app::security::Gatekeeper;
use flexcore_auth::Bucket;
use flexcore_auth::tls::{ServerTls, TlsFiles};
use flexcore_grpc::pb::command_service_client::CommandServiceClient;
use flexcore_grpc::pb::event_store_client::EventStoreClient;
use flexcore_grpc::pb::{CommandOutcome, ReadAllRequest, ReadStreamRequest, SendCommandRequest};
use flexcore_grpc::{ERROR_CODE_KEY, GatewayTls, GrpcServeOptions};
use flexcore_test_support::tls::{CertFiles, TestCa, TestPki, client_config, grpc_channel};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tonic::Code;
use tonic::transport::Channel;

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// What the tests need beyond the test CA: the gateway's TLS and a client configuration.
trait GrpcPki {
    /// TLS with the server's certificate; with `client_roles`, client certificates from this
    /// CA are required and their common names get these roles.
    fn tls(&self, client_roles: Option<&[(&str, &[&str])]>) -> GatewayTls;

    /// A TLS client trusting this CA, presenting `identity` when given.
    fn client_config(&self, identity: Option<&CertFiles>) -> rustls::ClientConfig;
}

impl GrpcPki for TestPki {
    fn tls(&self, client_roles: Option<&[(&str, &[&str])]>) -> GatewayTls {
        let files = TlsFiles {
            cert: self.server.cert.clone(),
            key: self.server.key.clone(),
            client_ca: client_roles.map(|_| self.ca_file.clone()),
            client_roles: client_roles
                .unwrap_or_default()
                .iter()
                .map(|(name, roles)| {
                    let roles = roles.iter().map(|role| (*role).to_owned()).collect();
                    ((*name).to_owned(), roles)
                })
                .collect::<BTreeMap<_, _>>(),
        };
        let tls = Arc::new(ServerTls::load(files).unwrap());
        let principal = Arc::clone(&tls);
        GatewayTls {
            config: Arc::new(move || tls.config()),
            client_principal: Arc::new(move |leaf| principal.client_principal(leaf)),
        }
    }

    fn client_config(&self, identity: Option<&CertFiles>) -> rustls::ClientConfig {
        client_config(&self.ca_file, identity)
    }
}

fn with_tls(tls: GatewayTls) -> GrpcServeOptions {
    GrpcServeOptions {
        tls: Some(tls),
        ..GrpcServeOptions::default()
    }
}

fn create_user(email: &str) -> SendCommandRequest {
    SendCommandRequest {
        command_type: "create_user".into(),
        payload_json: json!({"email": email, "profile": {}}).to_string(),
        ..Default::default()
    }
}

/// Whether a failed call was turned away before any gateway code saw it (every status the
/// gateway makes carries `x-error-code`).
fn refused_before_the_gateway(status: &tonic::Status) -> bool {
    status.metadata().get(ERROR_CODE_KEY).is_none()
}

/// Opens a channel to `server` (over TLS with `tls`) and sends `create_user`; a channel that
/// cannot be opened fails the call.
async fn send_create_user(
    server: SocketAddr,
    tls: Option<rustls::ClientConfig>,
    email: &str,
) -> Result<CommandOutcome, tonic::Status> {
    let channel = grpc_channel(server, LOCALHOST, tls)
        .await
        .map_err(|e| tonic::Status::from_error(Box::new(e)))?;
    CommandServiceClient::new(channel)
        .send(create_user(email))
        .await
        .map(tonic::Response::into_inner)
}

async fn read_all(channel: &Channel) -> Result<(), tonic::Status> {
    EventStoreClient::new(channel.clone())
        .read_all(ReadAllRequest::default())
        .await
        .map(drop)
}

/// Whether the server closes `connection` within `within` (end of stream or a reset).
async fn closed_within(connection: &TcpStream, within: Duration) -> bool {
    let ended = async {
        let mut buffer = [0u8; 64];
        loop {
            if connection.readable().await.is_err() {
                return;
            }
            match connection.try_read(&mut buffer) {
                Ok(0) => return,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(_) => return,
            }
        }
    };
    tokio::time::timeout(within, ended).await.is_ok()
}

#[tokio::test]
async fn calls_go_over_tls_and_plaintext_is_refused() {
    let pki = TestPki::new();
    let server =
        common::start_open_with(Arc::new(Gatekeeper::open()), with_tls(pki.tls(None))).await;

    let created = send_create_user(server.addr, Some(pki.client_config(None)), "a@b.io")
        .await
        .expect("a call over TLS");
    assert!(created.stream_id.starts_with("user-"), "{created:?}");

    let plaintext = send_create_user(server.addr, None, "plain@b.io")
        .await
        .expect_err("plaintext is not served on a TLS port");
    assert!(refused_before_the_gateway(&plaintext), "{plaintext:?}");

    // gRPC is HTTP/2 only: the shared configuration offers `http/1.1` too, the port does not.
    let mut http1_only = pki.client_config(None);
    http1_only.alpn_protocols = vec![b"http/1.1".to_vec()];
    let http1 = grpc_channel(server.addr, LOCALHOST, Some(http1_only)).await;
    assert!(http1.is_err(), "ALPN http/1.1 is refused: {http1:?}");

    let other_ca = TestCa::new("another CA");
    let other_ca_file = other_ca.write_ca(pki.dir.path(), "other-ca.crt");
    let untrusted = send_create_user(
        server.addr,
        Some(client_config(&other_ca_file, None)),
        "mitm@b.io",
    )
    .await
    .expect_err("a client that does not trust the server's CA");
    assert!(refused_before_the_gateway(&untrusted), "{untrusted:?}");
}

#[tokio::test]
async fn client_certificates_are_principals_with_their_roles() {
    let pki = TestPki::new();
    let (svc_a, stranger) = (pki.client("svc-a"), pki.client("stranger"));
    let foreign = TestCa::new("another CA").issue(pki.dir.path(), "foreign", "svc-a", &[]);
    let tls = pki.tls(Some(&[("svc-a", &["writer"])]));
    let server = common::start_secured_with(None, with_tls(tls)).await;

    // No token: the certificate alone authenticates, and its roles authorize.
    let channel = grpc_channel(
        server.addr,
        LOCALHOST,
        Some(pki.client_config(Some(&svc_a))),
    )
    .await
    .unwrap();
    let created = CommandServiceClient::new(channel.clone())
        .send(create_user("svc@b.io"))
        .await
        .expect("svc-a's writer role may create users")
        .into_inner();
    let stream = EventStoreClient::new(channel)
        .read_stream(ReadStreamRequest {
            stream_id: created.stream_id.clone(),
            ..Default::default()
        })
        .await
        .expect("svc-a's writer role may read user streams")
        .into_inner();
    let metadata: Value = serde_json::from_str(&stream.events[0].metadata_json).unwrap();
    assert_eq!(
        metadata["actor"],
        json!({"sub": "svc-a", "roles": ["writer"]})
    );

    let forbidden = send_create_user(
        server.addr,
        Some(pki.client_config(Some(&stranger))),
        "s@b.io",
    )
    .await
    .expect_err("a known CA, but no role for 'stranger'");
    assert_eq!(forbidden.code(), Code::PermissionDenied, "{forbidden:?}");

    for (what, identity) in [
        ("no certificate", None),
        ("another CA's certificate", Some(&foreign)),
    ] {
        let refused = send_create_user(server.addr, Some(pki.client_config(identity)), "x@b.io")
            .await
            .expect_err(what);
        assert!(refused_before_the_gateway(&refused), "{what}: {refused:?}");
    }
}

#[tokio::test]
async fn connections_beyond_the_cap_are_closed_at_accept() {
    let options = GrpcServeOptions {
        max_connections: 2,
        ..GrpcServeOptions::default()
    };
    let server = common::start_open_with(Arc::new(Gatekeeper::open()), options).await;
    let first = grpc_channel(server.addr, LOCALHOST, None).await.unwrap();
    let second = grpc_channel(server.addr, LOCALHOST, None).await.unwrap();
    read_all(&first).await.expect("the first connection");
    read_all(&second).await.expect("the second connection");

    let third = TcpStream::connect(server.addr).await.unwrap();
    assert!(
        closed_within(&third, Duration::from_secs(5)).await,
        "a third connection is closed at once"
    );
    read_all(&first)
        .await
        .expect("the first connection still works");

    drop(second);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let admitted = match grpc_channel(server.addr, LOCALHOST, None).await {
            Ok(channel) => read_all(&channel).await.is_ok(),
            Err(_) => false,
        };
        if admitted {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a closed connection frees its place"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_silent_handshake_holds_up_nobody_and_is_cut_off() {
    let pki = TestPki::new();
    let options = GrpcServeOptions {
        handshake_timeout: Duration::from_secs(5),
        ..with_tls(pki.tls(None))
    };
    let server = common::start_open_with(Arc::new(Gatekeeper::open()), options).await;
    let silent = TcpStream::connect(server.addr).await.unwrap();

    send_create_user(server.addr, Some(pki.client_config(None)), "a@b.io")
        .await
        .expect("another client's handshake and call go through meanwhile");
    assert!(
        !closed_within(&silent, Duration::from_millis(200)).await,
        "the silent client was not waited for first"
    );
    assert!(
        closed_within(&silent, Duration::from_secs(15)).await,
        "the silent client is cut off at the handshake timeout"
    );
}

#[tokio::test]
async fn anonymous_calls_are_rate_limited_per_peer_address() {
    let buckets = flexcore_auth::TokenBuckets::new(|_| {
        Some(Bucket {
            per_second: 0.01,
            burst: 1,
        })
    })
    .unwrap();
    let gate = Gatekeeper::open().with_rate_limits(Arc::new(buckets));
    let server = common::start_open_with(Arc::new(gate), GrpcServeOptions::default()).await;
    let here = grpc_channel(server.addr, LOCALHOST, None).await.unwrap();
    read_all(&here).await.expect("the first call of 127.0.0.1");
    let limited = read_all(&here)
        .await
        .expect_err("127.0.0.1's bucket is spent");
    assert_eq!(limited.code(), Code::ResourceExhausted, "{limited:?}");

    let elsewhere = grpc_channel(server.addr, IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)), None)
        .await
        .unwrap();
    read_all(&elsewhere)
        .await
        .expect("127.0.0.2 has a bucket of its own");
}
