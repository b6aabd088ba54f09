//! The machine's real services, for tests that use them.

use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// The PostgreSQL server tests use.
pub const POSTGRES_ADDR: &str = "127.0.0.1:5432";

/// The connection URL tests use (trust auth, database `test`).
pub const POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// Whether the run demands every service (`FLEXCORE_REQUIRE_SERVICES=1`, as in CI).
pub fn services_required() -> bool {
    std::env::var("FLEXCORE_REQUIRE_SERVICES").is_ok_and(|v| v == "1" || v == "true")
}

/// Checks that a service listens at `addr`. When it does not: panics if services are required,
/// otherwise prints why the test is skipped and returns `false`.
pub fn service_available(name: &str, addr: &str) -> bool {
    let socket: SocketAddr = addr.parse().expect("a socket address");
    if TcpStream::connect_timeout(&socket, Duration::from_secs(2)).is_ok() {
        return true;
    }
    assert!(
        !services_required(),
        "{name} is required (FLEXCORE_REQUIRE_SERVICES=1) but nothing listens on {addr}"
    );
    eprintln!(
        "SKIPPED: {name} is not reachable on {addr}; set FLEXCORE_REQUIRE_SERVICES=1 to make this a failure"
    );
    false
}

/// The PostgreSQL URL if the server is up (see [`service_available`]).
pub fn postgres_url() -> Option<String> {
    let url = std::env::var("FLEXCORE_TEST_POSTGRES_URL").unwrap_or_else(|_| POSTGRES_URL.into());
    service_available("PostgreSQL", POSTGRES_ADDR).then_some(url)
}

/// A name no other test uses: `{prefix}_{random}` (valid as a SQL identifier).
pub fn unique_name(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

/// The RabbitMQ server tests use.
pub const RABBITMQ_ADDR: &str = "127.0.0.1:5672";

/// The Redis server tests use.
pub const REDIS_ADDR: &str = "127.0.0.1:6379";

/// The NATS server (with JetStream) tests use.
pub const NATS_ADDR: &str = "127.0.0.1:4222";

/// The RabbitMQ AMQP URL (`guest`/`guest`, vhost `/`) if the server is up (see
/// [`service_available`]); `FLEXCORE_TEST_AMQP_URL` overrides it.
pub fn rabbitmq_url() -> Option<String> {
    let url = std::env::var("FLEXCORE_TEST_AMQP_URL")
        .unwrap_or_else(|_| format!("amqp://guest:guest@{RABBITMQ_ADDR}/%2f"));
    service_available("RabbitMQ", RABBITMQ_ADDR).then_some(url)
}

/// The Redis URL if the server is up (see [`service_available`]); `FLEXCORE_TEST_REDIS_URL`
/// overrides it.
pub fn redis_url() -> Option<String> {
    let url = std::env::var("FLEXCORE_TEST_REDIS_URL")
        .unwrap_or_else(|_| format!("redis://{REDIS_ADDR}/"));
    service_available("Redis", REDIS_ADDR).then_some(url)
}

/// The NATS URL if the server is up (see [`service_available`]); `FLEXCORE_TEST_NATS_URL`
/// overrides it.
pub fn nats_url() -> Option<String> {
    let url =
        std::env::var("FLEXCORE_TEST_NATS_URL").unwrap_or_else(|_| format!("nats://{NATS_ADDR}"));
    service_available("NATS", NATS_ADDR).then_some(url)
}
