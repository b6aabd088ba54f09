//! The query cache end to end: `CachedQueries` over each real backend (moka in process, the
//! machine's Redis), with a counting inner bus.
//!
//! Redis tests skip with a message when nothing listens at the Redis URL
//! (`FLEXCORE_TEST_REDIS_URL`, default `redis://127.0.0.1:6379/`), unless
//! `FLEXCORE_REQUIRE_SERVICES=1`. Each uses its own key prefix, deleted afterwards.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use flexcore_app::ErrorKind;
use flexcore_app::query::{QueryBus, QueryContext};
use flexcore_app::query_cache::CacheBackend;
use flexcore_cache::{MokaCache, RedisCache};
use flexcore_test_support::cache_backend_suite;
use flexcore_test_support::cache_conformance::{
    CacheFixture, Counting, cached, errors_not_cached, get_user, hit_after_miss, list_users, stats,
    uncacheable_passes_through, user_event,
};
use flexcore_test_support::services::{self, unique_name};
use uuid::Uuid;

/// A key prefix of its own; every key under it is deleted when the test ends (even by a panic).
struct TestPrefix {
    /// The Redis server's URL.
    url: String,
    prefix: String,
}

impl TestPrefix {
    /// `None` (with a message) when Redis is absent and not required.
    fn new() -> Option<Self> {
        services::redis_url().map(|url| Self {
            url,
            prefix: format!("{}:", unique_name("flexcore_test_qc")),
        })
    }

    fn cache(&self) -> RedisCache {
        RedisCache::new(&self.url, &self.prefix).unwrap()
    }

    fn keys(&self) -> Vec<String> {
        let client = redis::Client::open(self.url.as_str()).unwrap();
        let mut connection = client.get_connection().unwrap();
        redis::cmd("KEYS")
            .arg(format!("{}*", self.prefix))
            .query(&mut connection)
            .unwrap()
    }
}

impl Drop for TestPrefix {
    fn drop(&mut self) {
        let keys = self.keys();
        if keys.is_empty() {
            return;
        }
        let client = redis::Client::open(self.url.as_str()).unwrap();
        if let Ok(mut connection) = client.get_connection() {
            let _: redis::RedisResult<u64> = redis::cmd("DEL").arg(&keys).query(&mut connection);
        }
    }
}

// ---- the conformance suite, on each backend

mod moka {
    use super::*;

    fn moka() -> Option<CacheFixture> {
        Some(CacheFixture {
            backend: Arc::new(MokaCache::default()),
            guard: Box::new(()),
        })
    }

    cache_backend_suite!(moka);
}

mod redis_backend {
    use super::*;

    fn redis() -> Option<CacheFixture> {
        let prefix = TestPrefix::new()?;
        Some(CacheFixture {
            backend: Arc::new(prefix.cache()),
            guard: Box::new(prefix),
        })
    }

    cache_backend_suite!(redis);
}

#[tokio::test]
async fn from_url_without_a_url_is_moka_and_rejects_other_schemes() {
    let backend = flexcore_cache::from_url(None).await.unwrap();
    hit_after_miss(backend).await;
    let backend = flexcore_cache::from_url(Some("  ")).await.unwrap();
    hit_after_miss(backend).await;
    let err = flexcore_cache::from_url(Some("http://127.0.0.1:6379"))
        .await
        .err()
        .unwrap();
    assert_eq!(err.kind(), ErrorKind::Validation);
}

// ---- Redis

/// Redis keeps an answer as one key under the test's prefix, and stores nothing for errors
/// and uncacheable queries.
#[tokio::test]
async fn redis_keeps_answers_under_its_prefix_and_nothing_else() {
    let Some(prefix) = TestPrefix::new() else {
        return;
    };
    hit_after_miss(Arc::new(prefix.cache())).await;
    let keys = prefix.keys();
    assert_eq!(keys.len(), 2, "two entries: {keys:?}");
    assert!(
        keys.iter()
            .all(|k| k.starts_with(&format!("{}e:", prefix.prefix)))
    );
    let Some(prefix) = TestPrefix::new() else {
        return;
    };
    errors_not_cached(Arc::new(prefix.cache())).await;
    assert_eq!(prefix.keys().len(), 1, "only the success is stored");
    let Some(prefix) = TestPrefix::new() else {
        return;
    };
    uncacheable_passes_through(Arc::new(prefix.cache())).await;
    assert!(prefix.keys().is_empty());
}

#[tokio::test]
async fn two_nodes_share_entries_and_invalidations() {
    let Some(prefix) = TestPrefix::new() else {
        return;
    };
    // Two nodes: separate connections, separate inner buses, one Redis and prefix.
    let (inner_a, inner_b) = (Counting::new(), Counting::new());
    let node_a = cached(&inner_a, Arc::new(prefix.cache()));
    let node_b = cached(&inner_b, Arc::new(prefix.cache()));
    let ctx = QueryContext::default();
    let id = Uuid::now_v7();

    let from_a = node_a.ask(&ctx, &get_user(id)).await.unwrap();
    let from_b = node_b.ask(&ctx, &get_user(id)).await.unwrap();
    assert_eq!(from_a, from_b, "node b is answered by node a's entry");
    assert_eq!((inner_a.calls(), inner_b.calls()), (1, 0));

    // An invalidation on b is seen by a.
    node_b
        .invalidator()
        .invalidate(&[user_event(id)])
        .await
        .unwrap();
    assert_eq!(node_a.ask(&ctx, &get_user(id)).await.unwrap()["call"], 2);
    assert_eq!(inner_a.calls(), 2);
    assert_eq!(node_b.ask(&ctx, &get_user(id)).await.unwrap()["call"], 2);
    assert_eq!(inner_b.calls(), 0);
    assert_eq!(node_a.stats(), stats(0, 2, 0));
    assert_eq!(node_b.stats(), stats(2, 0, 0));
}

/// `clear` removes every entry and tag version under the prefix (expiry is in the suite).
#[tokio::test]
async fn redis_clear_removes_everything_under_the_prefix() {
    let Some(prefix) = TestPrefix::new() else {
        return;
    };
    let cache = prefix.cache();
    cache
        .put("long", b"2".to_vec(), Duration::from_secs(60))
        .await
        .unwrap();
    cache.bump_tags(&["t".into()]).await.unwrap();
    assert_eq!(cache.tag_versions(&["t".into()]).await.unwrap(), [1]);

    assert_eq!(cache.clear().await.unwrap(), 2);
    assert!(prefix.keys().is_empty());
    assert_eq!(cache.get("long").await.unwrap(), None);
    assert_eq!(cache.tag_versions(&["t".into()]).await.unwrap(), [0]);
}

#[tokio::test]
async fn from_url_takes_the_prefix_from_the_url() {
    let Some(prefix) = TestPrefix::new() else {
        return;
    };
    let url = services::with_query_param(&prefix.url, "prefix", &prefix.prefix);
    let backend = flexcore_cache::from_url(Some(&url)).await.unwrap();
    hit_after_miss(backend).await;
    assert_eq!(prefix.keys().len(), 2);
}

#[tokio::test]
async fn an_unreachable_redis_never_fails_or_stalls_a_query() {
    // A port where nothing listens (bound, then released).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cache = RedisCache::new(&format!("redis://127.0.0.1:{port}/"), "unused:").unwrap();
    assert_eq!(
        cache.ping().await.unwrap_err().kind(),
        ErrorKind::Unavailable
    );
    let inner = Counting::new();
    let bus = cached(&inner, Arc::new(cache));
    let ctx = QueryContext::default();
    let id = Uuid::now_v7();

    let started = Instant::now();
    for call in 1..=3 {
        assert_eq!(bus.ask(&ctx, &get_user(id)).await.unwrap()["call"], call);
    }
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "three asks took {:?}",
        started.elapsed()
    );
    assert_eq!(bus.stats(), stats(0, 0, 3));
    let err = bus
        .invalidator()
        .invalidate(&[user_event(id)])
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable);

    // from_url still hands the backend out (queries run uncached until Redis answers).
    let backend = flexcore_cache::from_url(Some(&format!("redis://127.0.0.1:{port}/")))
        .await
        .unwrap();
    let bus = cached(&inner, backend);
    assert_eq!(bus.ask(&ctx, &list_users()).await.unwrap()["call"], 4);
}

#[tokio::test]
async fn a_redis_that_comes_back_is_used_again() {
    let Some(prefix) = TestPrefix::new() else {
        return;
    };
    // A proxy we can cut: the cache talks to Redis through it.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let redis = services::service_address(&prefix.url);
    let up = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let proxy = {
        let up = Arc::clone(&up);
        tokio::spawn(async move {
            loop {
                let (mut client, _) = listener.accept().await.unwrap();
                if !up.load(Ordering::SeqCst) {
                    continue; // dropped: connection closed
                }
                let (up, redis) = (Arc::clone(&up), redis.clone());
                tokio::spawn(async move {
                    let mut server = tokio::net::TcpStream::connect(redis).await.unwrap();
                    let copy = tokio::io::copy_bidirectional(&mut client, &mut server);
                    let cut = async {
                        while up.load(Ordering::SeqCst) {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    };
                    tokio::select! { _ = copy => {}, _ = cut => {} }
                });
            }
        })
    };
    let cache = RedisCache::new(
        &services::proxied_url(&prefix.url, addr.port()),
        &prefix.prefix,
    )
    .unwrap();
    let inner = Counting::new();
    let bus = cached(&inner, Arc::new(cache));
    let ctx = QueryContext::default();
    let id = Uuid::now_v7();

    bus.ask(&ctx, &get_user(id)).await.unwrap();
    bus.ask(&ctx, &get_user(id)).await.unwrap();
    assert_eq!(bus.stats(), stats(1, 1, 0));

    up.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(bus.ask(&ctx, &get_user(id)).await.unwrap()["call"], 2);
    assert_eq!(bus.stats().errors, 1);

    up.store(true, Ordering::SeqCst);
    // The next asks reconnect; within a few tries the cache answers again.
    let deadline = Instant::now() + Duration::from_secs(5);
    while bus.stats().hits < 2 {
        assert!(Instant::now() < deadline, "the cache never came back");
        bus.ask(&ctx, &get_user(id)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    proxy.abort();
}

#[tokio::test]
async fn the_cache_works_over_rediss() {
    use flexcore_test_support::tls::{TestPki, TlsProxy, TlsProxyOptions};
    let Some(prefix) = TestPrefix::new() else {
        return;
    };
    let pki = TestPki::new();
    let proxy = TlsProxy::start(
        &services::service_address(&prefix.url),
        TlsProxyOptions {
            server: pki.server.clone(),
            client_ca: None,
            postgres: false,
        },
    )
    .await;
    let url = format!(
        "rediss://127.0.0.1:{}/?ca_file={}&prefix={}",
        proxy.port(),
        pki.ca_file.display(),
        prefix.prefix
    );
    let cache = RedisCache::from_url(&url).unwrap();
    cache.ping().await.expect("a ping over TLS");
    let inner = Counting::new();
    let bus = cached(&inner, Arc::new(cache));
    let (ctx, id) = (QueryContext::default(), Uuid::now_v7());
    bus.ask(&ctx, &get_user(id)).await.unwrap();
    bus.ask(&ctx, &get_user(id)).await.unwrap();
    assert_eq!(
        bus.stats(),
        stats(1, 1, 0),
        "the second ask is a hit from Redis"
    );
    assert!(proxy.sessions() >= 1);
    // A missing CA file is a clear error, before any connection.
    let missing = RedisCache::from_url("rediss://127.0.0.1:1/?ca_file=/nonexistent/ca.pem");
    let Err(error) = missing else {
        panic!("a missing CA file was accepted");
    };
    let error = error.to_string();
    assert!(error.contains("/nonexistent/ca.pem"), "{error}");
}
