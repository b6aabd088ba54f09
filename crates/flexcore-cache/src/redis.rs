//! The shared backend: one Redis for every node.

use std::time::Duration;

use async_trait::async_trait;
use flexcore_app::query_cache::CacheBackend;
use flexcore_app::service_url::ServiceUrl;
use flexcore_app::{Error, Result};
use flexcore_tls::ClientTlsFiles;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

/// The key prefix when the URL names none.
pub const DEFAULT_PREFIX: &str = "flexcore:qc:";

/// A cache in Redis, shared by every node that uses the same server and prefix.
///
/// Keys: `{prefix}e:{entry key}` for entries (`SET … PX ttl`), `{prefix}v:{tag}` for tag
/// versions (`INCR`, read with `MGET`; a missing counter is 0). The version counters have no
/// expiry and must not be evicted (a counter back at 0 would make old entries reachable): run
/// the default `noeviction` policy or a `volatile-*` one, which only evicts keys with a TTL,
/// i.e. entries. The middleware passes a bounded set of version slots, so there are at most
/// `flexcore_app::query_cache::TAG_SLOTS` counters per prefix.
///
/// A query must not wait on an unreachable Redis: connections and responses time out after
/// 500 ms and a lost connection is retried once before the call fails (and the query goes to
/// its handler); the next call reconnects again.
#[derive(Clone)]
pub struct RedisCache {
    connection: ConnectionManager,
    client: redis::Client,
    prefix: String,
}

impl std::fmt::Debug for RedisCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisCache")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// Classifies a Redis failure once: unreachable or timed out ⇒ unavailable, else internal.
fn classify(e: redis::RedisError) -> Error {
    if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal() {
        Error::unavailable(format!("redis: {e}"))
    } else {
        Error::internal(format!("redis: {e}"))
    }
}

/// Escapes the glob characters of a `SCAN MATCH` pattern.
fn glob_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A client for a `redis://` or `rediss://` URL; on `rediss://`, `ca_file=` names the CA the
/// server's certificate must chain to (else the system's roots), and `cert_file=` with
/// `key_file=` a client certificate.
fn open_client(url: &str) -> Result<redis::Client> {
    let (url, tls) = ClientTlsFiles::split(url, &["rediss"])?;
    let invalid = |e: redis::RedisError| Error::validation(format!("invalid Redis URL: {e}"));
    if tls.is_empty() {
        return redis::Client::open(url.as_str()).map_err(invalid);
    }
    let unreadable = |e: flexcore_tls::TlsError| Error::validation(e.to_string());
    let certificates = redis::TlsCertificates {
        client_tls: tls.identity_pem().map_err(unreadable)?.map(|identity| {
            redis::ClientTlsConfig {
                client_cert: identity.cert,
                client_key: identity.key,
            }
        }),
        root_cert: tls.ca_pem().map_err(unreadable)?,
    };
    redis::Client::build_with_tls(url.as_str(), certificates).map_err(invalid)
}

impl RedisCache {
    /// A cache at `url` (`redis://host:port/db`, optionally `?prefix=P`, else
    /// [`DEFAULT_PREFIX`]). Connects lazily: this fails only on a malformed URL. Call it inside
    /// a Tokio runtime.
    pub fn from_url(url: &str) -> Result<Self> {
        let mut url = ServiceUrl::parse(url)?;
        let prefix = url.take_or("prefix", DEFAULT_PREFIX);
        Self::new(&url.driver_url(), &prefix)
    }

    /// A cache at `url` whose keys all start with `prefix`.
    pub fn new(url: &str, prefix: &str) -> Result<Self> {
        let client = open_client(url)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_millis(500)))
            .set_response_timeout(Some(Duration::from_millis(500)))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(500));
        let connection =
            ConnectionManager::new_lazy_with_config(client.clone(), config).map_err(classify)?;
        Ok(Self {
            connection,
            client,
            prefix: prefix.to_owned(),
        })
    }

    /// The prefix of every key of this cache.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Checks that Redis answers.
    pub async fn ping(&self) -> Result<()> {
        redis::cmd("PING")
            .query_async::<String>(&mut self.connection.clone())
            .await
            .map(|_| ())
            .map_err(classify)
    }

    /// Deletes every key under this cache's prefix (entries and versions) and says how many.
    /// For tests and operators; concurrent asks meanwhile simply miss.
    pub async fn clear(&self) -> Result<u64> {
        let mut connection = self.connection.clone();
        let pattern = format!("{}*", glob_escape(&self.prefix));
        let mut cursor: u64 = 0;
        let mut deleted = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut connection)
                .await
                .map_err(classify)?;
            if !keys.is_empty() {
                deleted += redis::cmd("UNLINK")
                    .arg(&keys)
                    .query_async::<u64>(&mut connection)
                    .await
                    .map_err(classify)?;
            }
            if next == 0 {
                return Ok(deleted);
            }
            cursor = next;
        }
    }

    /// The Redis client, for a blocking connection (e.g. a test's cleanup in `Drop`).
    pub fn client(&self) -> &redis::Client {
        &self.client
    }

    fn entry_key(&self, key: &str) -> String {
        format!("{}e:{key}", self.prefix)
    }

    fn version_key(&self, tag: &str) -> String {
        format!("{}v:{tag}", self.prefix)
    }
}

#[async_trait]
impl CacheBackend for RedisCache {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        redis::cmd("GET")
            .arg(self.entry_key(key))
            .query_async(&mut self.connection.clone())
            .await
            .map_err(classify)
    }

    async fn put(&self, key: &str, value: Vec<u8>, ttl: Duration) -> Result<()> {
        let millis = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        redis::cmd("SET")
            .arg(self.entry_key(key))
            .arg(value)
            .arg("PX")
            .arg(millis)
            .exec_async(&mut self.connection.clone())
            .await
            .map_err(classify)
    }

    async fn tag_versions(&self, tags: &[String]) -> Result<Vec<u64>> {
        if tags.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = tags.iter().map(|t| self.version_key(t)).collect();
        let versions: Vec<Option<u64>> = redis::cmd("MGET")
            .arg(&keys)
            .query_async(&mut self.connection.clone())
            .await
            .map_err(classify)?;
        Ok(versions
            .into_iter()
            .map(Option::unwrap_or_default)
            .collect())
    }

    async fn bump_tags(&self, tags: &[String]) -> Result<()> {
        if tags.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for tag in tags {
            pipe.cmd("INCR").arg(self.version_key(tag)).ignore();
        }
        pipe.exec_async(&mut self.connection.clone())
            .await
            .map_err(classify)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_patterns_match_the_prefix_literally() {
        assert_eq!(glob_escape("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
    }
}
