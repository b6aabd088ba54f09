//! The machine's real services, for tests that use them.
//!
//! Each service's URL comes from its `FLEXCORE_TEST_*_URL` variable, or a local default; the
//! availability probe connects to the host and port of that very URL, so a run pointed at
//! another machine neither skips for want of a local server nor passes the probe on a local one
//! it will not use.

use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// The default PostgreSQL server tests use (when `FLEXCORE_TEST_POSTGRES_URL` is unset).
pub const POSTGRES_ADDR: &str = "127.0.0.1:5432";

/// The default connection URL tests use (trust auth, database `test`); see [`postgres_url`].
pub const POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// Whether the run demands every service (`FLEXCORE_REQUIRE_SERVICES=1`, as in CI).
pub fn services_required() -> bool {
    std::env::var("FLEXCORE_REQUIRE_SERVICES").is_ok_and(|v| v == "1" || v == "true")
}

/// Checks that a service listens at `addr` (`host:port`). When it does not: panics if services
/// are required, otherwise prints why the test is skipped and returns `false`.
pub fn service_available(name: &str, addr: &str) -> bool {
    let listening = addr.to_socket_addrs().is_ok_and(|mut candidates| {
        candidates.any(|socket| TcpStream::connect_timeout(&socket, Duration::from_secs(2)).is_ok())
    });
    if listening {
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

/// The `host:port` a service URL points at; the scheme's usual port when it names none
/// (PostgreSQL 5432, AMQP 5672, Redis 6379, NATS 4222).
///
/// # Panics
/// On a URL that is not one (a test's configuration error).
pub fn service_address(url: &str) -> String {
    let parsed = parse(url);
    let host = parsed
        .host_str()
        .unwrap_or_else(|| panic!("the service URL '{url}' names no host"));
    let port = parsed.port().unwrap_or_else(|| match parsed.scheme() {
        "postgres" | "postgresql" => 5432,
        "amqp" => 5672,
        "redis" => 6379,
        "nats" => 4222,
        other => panic!("no default port for the scheme '{other}' of '{url}'"),
    });
    format!("{host}:{port}")
}

/// `url` pointed at `127.0.0.1:port` instead (a local proxy in front of the service), with its
/// credentials, path and parameters kept.
pub fn proxied_url(url: &str, port: u16) -> String {
    let mut parsed = parse(url);
    parsed
        .set_host(Some("127.0.0.1"))
        .and_then(|()| {
            parsed
                .set_port(Some(port))
                .map_err(|()| url::ParseError::InvalidPort)
        })
        .unwrap_or_else(|e| panic!("cannot point '{url}' at a proxy: {e}"));
    parsed.into()
}

/// `url` with one more query parameter, written as given: the value is not percent-encoded
/// (FlexCore's own parameters, such as the cache's `prefix`, are read verbatim).
pub fn with_query_param(url: &str, name: &str, value: &str) -> String {
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}{name}={value}")
}

fn parse(url: &str) -> url::Url {
    url::Url::parse(url).unwrap_or_else(|e| panic!("'{url}' is not a service URL: {e}"))
}

/// The URL in the environment variable `variable`, else `default`, if a service listens at its
/// address (see [`service_available`]).
fn configured(name: &str, variable: &str, default: String) -> Option<String> {
    let url = std::env::var(variable).unwrap_or(default);
    service_available(name, &service_address(&url)).then_some(url)
}

/// The PostgreSQL URL if the server is up (see [`service_available`]);
/// `FLEXCORE_TEST_POSTGRES_URL` overrides [`POSTGRES_URL`].
pub fn postgres_url() -> Option<String> {
    configured(
        "PostgreSQL",
        "FLEXCORE_TEST_POSTGRES_URL",
        POSTGRES_URL.to_owned(),
    )
}

/// A name no other test uses: `{prefix}_{random}` (valid as a SQL identifier).
pub fn unique_name(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

/// The default RabbitMQ server tests use (when `FLEXCORE_TEST_AMQP_URL` is unset).
pub const RABBITMQ_ADDR: &str = "127.0.0.1:5672";

/// The default Redis server tests use (when `FLEXCORE_TEST_REDIS_URL` is unset).
pub const REDIS_ADDR: &str = "127.0.0.1:6379";

/// The default NATS server (with JetStream) tests use (when `FLEXCORE_TEST_NATS_URL` is unset).
pub const NATS_ADDR: &str = "127.0.0.1:4222";

/// The RabbitMQ AMQP URL (`guest`/`guest`, vhost `/`) if the server is up (see
/// [`service_available`]); `FLEXCORE_TEST_AMQP_URL` overrides it.
pub fn rabbitmq_url() -> Option<String> {
    configured(
        "RabbitMQ",
        "FLEXCORE_TEST_AMQP_URL",
        format!("amqp://guest:guest@{RABBITMQ_ADDR}/%2f"),
    )
}

/// The Redis URL if the server is up (see [`service_available`]); `FLEXCORE_TEST_REDIS_URL`
/// overrides it.
pub fn redis_url() -> Option<String> {
    configured(
        "Redis",
        "FLEXCORE_TEST_REDIS_URL",
        format!("redis://{REDIS_ADDR}/"),
    )
}

/// The NATS URL if the server is up (see [`service_available`]); `FLEXCORE_TEST_NATS_URL`
/// overrides it.
pub fn nats_url() -> Option<String> {
    configured(
        "NATS",
        "FLEXCORE_TEST_NATS_URL",
        format!("nats://{NATS_ADDR}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probe_address_is_the_one_the_url_names() {
        assert_eq!(
            service_address("postgres://u:p@db.example:6543/test?schema=s"),
            "db.example:6543"
        );
        assert_eq!(
            service_address("postgres://postgres@10.0.0.7/test"),
            "10.0.0.7:5432"
        );
        assert_eq!(service_address("amqp://guest:guest@mq/%2f"), "mq:5672");
        assert_eq!(
            service_address("redis://cache.internal/"),
            "cache.internal:6379"
        );
        assert_eq!(service_address("nats://[::1]"), "[::1]:4222");
    }

    #[test]
    fn a_proxied_url_keeps_everything_but_the_address() {
        assert_eq!(
            proxied_url("amqp://guest:guest@mq.example:5672/%2f", 41000),
            "amqp://guest:guest@127.0.0.1:41000/%2f"
        );
        assert_eq!(
            with_query_param(&proxied_url("nats://nats.example", 41001), "stream", "S"),
            "nats://127.0.0.1:41001?stream=S"
        );
        assert_eq!(
            with_query_param("postgres://postgres@db/test?sslmode=disable", "schema", "a"),
            "postgres://postgres@db/test?sslmode=disable&schema=a"
        );
    }
}
