//! The store over TLS: a real PostgreSQL behind a TLS-terminating proxy made by the test, with
//! a certificate from a throwaway CA. `sslmode` decides how much of the certificate is
//! checked; every connection of the store (migrations, the pool) goes through TLS.

mod common;

use flexcore_app::store::{EventAppender, EventReader, ReadStream};
use flexcore_domain::{ExpectedVersion, NewEvent, RawJson, StreamId};
use flexcore_store_postgres::{PostgresConfig, PostgresStore};
use flexcore_test_support::services;
use flexcore_test_support::tls::{TestCa, TestPki, TlsProxy, TlsProxyOptions};

/// The store's URL through `proxy` with these TLS parameters.
fn url_via(proxy: &TlsProxy, base: &str, tls: &str) -> String {
    format!("{}?{tls}", services::proxied_url(base, proxy.port()))
}

async fn proxy_for(base: &str, pki: &TestPki) -> TlsProxy {
    TlsProxy::start(
        &services::service_address(base),
        TlsProxyOptions {
            server: pki.server.clone(),
            client_ca: None,
            postgres: true,
        },
    )
    .await
}

#[tokio::test]
async fn the_store_works_over_verified_tls() {
    let Some((config, guard)) = common::fresh_config() else {
        return;
    };
    let pki = TestPki::new();
    let proxy = proxy_for(&guard.url, &pki).await;
    let url = url_via(
        &proxy,
        &guard.url,
        &format!("sslmode=verify-full&sslrootcert={}", pki.ca_file.display()),
    );
    let store = PostgresStore::connect(PostgresConfig { url, ..config })
        .await
        .expect("connect over TLS");
    let stream = StreamId::new("tls-1").unwrap();
    let event = NewEvent::new(
        "tls.checked",
        RawJson::to_raw(&serde_json::json!({"ok": true})).unwrap(),
    )
    .unwrap();
    store
        .append(stream.clone(), ExpectedVersion::NoStream, vec![event])
        .await
        .unwrap();
    let read = store
        .read_stream(ReadStream::forward(stream))
        .await
        .unwrap();
    assert_eq!(read.events.len(), 1);
    assert!(
        proxy.sessions() >= 2,
        "the migration and the pool connected through TLS: {} sessions",
        proxy.sessions()
    );
}

#[tokio::test]
async fn a_server_certificate_from_another_ca_is_refused() {
    let Some((config, guard)) = common::fresh_config() else {
        return;
    };
    let pki = TestPki::new();
    let proxy = proxy_for(&guard.url, &pki).await;
    let stranger = TestCa::new("someone else").write_ca(pki.dir.path(), "other-ca.pem");
    for mode in ["require", "verify-ca", "verify-full"] {
        let url = url_via(
            &proxy,
            &guard.url,
            &format!("sslmode={mode}&sslrootcert={}", stranger.display()),
        );
        let refused = PostgresStore::connect(PostgresConfig {
            url,
            ..config.clone()
        })
        .await;
        assert!(refused.is_err(), "sslmode={mode} trusted an unknown CA");
    }
    assert_eq!(proxy.sessions(), 0, "no session was completed");
}

#[tokio::test]
async fn verify_ca_accepts_a_certificate_for_another_host_and_verify_full_does_not() {
    let Some((config, guard)) = common::fresh_config() else {
        return;
    };
    let mut pki = TestPki::new();
    pki.server = pki
        .ca
        .issue(pki.dir.path(), "elsewhere", "db.example", &["db.example"]);
    let proxy = proxy_for(&guard.url, &pki).await;
    let with_mode = |mode: &str| {
        url_via(
            &proxy,
            &guard.url,
            &format!("sslmode={mode}&sslrootcert={}", pki.ca_file.display()),
        )
    };
    let wrong_host = PostgresStore::connect(PostgresConfig {
        url: with_mode("verify-full"),
        ..config.clone()
    })
    .await;
    assert!(wrong_host.is_err(), "verify-full checks the host name");
    PostgresStore::connect(PostgresConfig {
        url: with_mode("verify-ca"),
        ..config
    })
    .await
    .expect("verify-ca checks the chain only");
}

#[tokio::test]
async fn a_missing_ca_file_is_a_clear_error() {
    let Some((config, _guard)) = common::fresh_config() else {
        return;
    };
    let url = format!(
        "{}?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem",
        config.url
    );
    let Err(error) = PostgresStore::connect(PostgresConfig { url, ..config }).await else {
        panic!("a missing CA file was accepted");
    };
    assert!(error.to_string().contains("/nonexistent/ca.pem"), "{error}");
}
