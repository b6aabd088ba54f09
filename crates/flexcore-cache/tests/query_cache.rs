//! The query cache end to end: `CachedQueries` over each real backend (moka in process, the
//! machine's Redis), with a counting inner bus.
//!
//! Redis tests skip with a message when nothing listens on 127.0.0.1:6379, unless
//! `FLEXCORE_REQUIRE_SERVICES=1`. Each uses its own key prefix, deleted afterwards.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use flexcore_app::query::{Query, QueryBus, QueryBusExt, QueryContext};
use flexcore_app::query_cache::{CacheBackend, CacheStats, CachedQueries};
use flexcore_app::{Error, ErrorKind, Result};
use flexcore_cache::{MokaCache, RedisCache};
use flexcore_domain::{DomainError, EventEnvelope, EventId, NewEvent, RawJson, StreamId};
use flexcore_test_support::services::{service_available, unique_name};
use serde_json::{Value, json};
use tokio::sync::Notify;
use uuid::Uuid;

const REDIS_ADDR: &str = "127.0.0.1:6379";

fn redis_url() -> String {
    std::env::var("FLEXCORE_TEST_REDIS_URL").unwrap_or_else(|_| format!("redis://{REDIS_ADDR}/"))
}

/// A key prefix of its own; every key under it is deleted when the test ends (even by a panic).
struct TestPrefix {
    prefix: String,
}

impl TestPrefix {
    /// `None` (with a message) when Redis is absent and not required.
    fn new() -> Option<Self> {
        service_available("Redis", REDIS_ADDR).then(|| Self {
            prefix: format!("{}:", unique_name("flexcore_test_qc")),
        })
    }

    fn cache(&self) -> RedisCache {
        RedisCache::new(&redis_url(), &self.prefix).unwrap()
    }

    fn keys(&self) -> Vec<String> {
        let client = redis::Client::open(redis_url()).unwrap();
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
        let client = redis::Client::open(redis_url()).unwrap();
        if let Ok(mut connection) = client.get_connection() {
            let _: redis::RedisResult<u64> = redis::cmd("DEL").arg(&keys).query(&mut connection);
        }
    }
}

/// Answers `{"call": n}` and counts; fails while `failing` is above zero (then decrements it).
struct Counting {
    calls: AtomicUsize,
    failing: AtomicUsize,
    /// When set, the first call waits here after reading (to race an invalidation).
    hold_first: Option<(Arc<Notify>, Arc<Notify>)>,
}

impl Counting {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            calls: AtomicUsize::new(0),
            failing: AtomicUsize::new(0),
            hold_first: None,
        })
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl QueryBus for Counting {
    async fn ask(&self, _ctx: &QueryContext, query: &Query) -> Result<Value> {
        let call = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        if self
            .failing
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(Error::Domain(DomainError::NotFound("no such user".into())));
        }
        let answer = json!({"query": query.query_type, "call": call});
        if call == 1
            && let Some((reading, committed)) = &self.hold_first
        {
            reading.notify_one();
            committed.notified().await;
        }
        Ok(answer)
    }
}

/// Lets several cached buses share one counting inner bus.
struct Shared(Arc<Counting>);

#[async_trait]
impl QueryBus for Shared {
    async fn ask(&self, ctx: &QueryContext, query: &Query) -> Result<Value> {
        self.0.ask(ctx, query).await
    }
}

fn cached(inner: &Arc<Counting>, backend: Arc<dyn CacheBackend>) -> CachedQueries<Shared> {
    Shared(Arc::clone(inner)).with_cache(
        backend,
        Arc::new(flexcore_sample_users::read_model::cache_policy()),
    )
}

fn get_user(id: Uuid) -> Query {
    Query {
        query_type: "get_user".into(),
        params: json!({ "user_id": id }),
    }
}

fn list_users() -> Query {
    Query {
        query_type: "list_users".into(),
        params: json!({"page": 1, "page_size": 20}),
    }
}

fn user_event(id: Uuid) -> EventEnvelope {
    let new = NewEvent::new("user.email_changed", RawJson::from_value(&json!({}))).unwrap();
    EventEnvelope {
        event_id: EventId(Uuid::now_v7()),
        stream_id: StreamId::new(format!("user-{id}")).unwrap(),
        stream_version: 1,
        global_position: 2,
        event_type: new.event_type,
        schema_version: 1,
        data: new.data,
        metadata: Default::default(),
        recorded_at: time::OffsetDateTime::UNIX_EPOCH,
    }
}

fn stats(hits: u64, misses: u64, errors: u64) -> CacheStats {
    CacheStats {
        hits,
        misses,
        errors,
    }
}

// ---- the behaviours, for any backend

async fn hit_after_miss(backend: Arc<dyn CacheBackend>) {
    let inner = Counting::new();
    let bus = cached(&inner, backend);
    let ctx = QueryContext::default();
    let id = Uuid::now_v7();
    let first = bus.ask(&ctx, &get_user(id)).await.unwrap();
    let second = bus.ask(&ctx, &get_user(id)).await.unwrap();
    assert_eq!(first, second);
    assert_eq!(inner.calls(), 1);
    assert_eq!(bus.stats(), stats(1, 1, 0));
    // Another user is another entry.
    assert_eq!(
        bus.ask(&ctx, &get_user(Uuid::now_v7())).await.unwrap()["call"],
        2
    );
}

async fn invalidation_by_event(backend: Arc<dyn CacheBackend>) {
    let inner = Counting::new();
    let bus = cached(&inner, backend);
    let ctx = QueryContext::default();
    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
    for query in [get_user(a), get_user(b), list_users()] {
        bus.ask(&ctx, &query).await.unwrap();
        bus.ask(&ctx, &query).await.unwrap();
    }
    assert_eq!(inner.calls(), 3);
    bus.invalidator()
        .invalidate(&[user_event(a)])
        .await
        .unwrap();
    assert_eq!(bus.ask(&ctx, &get_user(a)).await.unwrap()["call"], 4);
    assert_eq!(bus.ask(&ctx, &list_users()).await.unwrap()["call"], 5);
    assert_eq!(bus.ask(&ctx, &get_user(b)).await.unwrap()["call"], 2);
    assert_eq!(bus.ask(&ctx, &get_user(a)).await.unwrap()["call"], 4);
    assert_eq!(inner.calls(), 5);
}

async fn stale_put_race(backend: Arc<dyn CacheBackend>) {
    let (reading, committed) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let inner = Arc::new(Counting {
        calls: AtomicUsize::new(0),
        failing: AtomicUsize::new(0),
        hold_first: Some((Arc::clone(&reading), Arc::clone(&committed))),
    });
    let bus = Arc::new(cached(&inner, backend));
    let id = Uuid::now_v7();
    let asking = {
        let bus = Arc::clone(&bus);
        tokio::spawn(async move { bus.ask(&QueryContext::default(), &get_user(id)).await })
    };
    reading.notified().await;
    bus.invalidator()
        .invalidate(&[user_event(id)])
        .await
        .unwrap();
    committed.notify_one();
    assert_eq!(asking.await.unwrap().unwrap()["call"], 1);

    let ctx = QueryContext::default();
    assert_eq!(bus.ask(&ctx, &get_user(id)).await.unwrap()["call"], 2);
    assert_eq!(bus.ask(&ctx, &get_user(id)).await.unwrap()["call"], 2);
    assert_eq!(bus.stats(), stats(1, 2, 0));
}

async fn errors_not_cached(backend: Arc<dyn CacheBackend>) {
    let inner = Counting::new();
    inner.failing.store(2, Ordering::SeqCst);
    let bus = cached(&inner, backend);
    let ctx = QueryContext::default();
    let id = Uuid::now_v7();
    assert_eq!(
        bus.ask(&ctx, &get_user(id)).await.unwrap_err().kind(),
        ErrorKind::NotFound
    );
    assert!(bus.ask(&ctx, &get_user(id)).await.is_err());
    assert_eq!(bus.ask(&ctx, &get_user(id)).await.unwrap()["call"], 3);
    assert_eq!(bus.ask(&ctx, &get_user(id)).await.unwrap()["call"], 3);
    assert_eq!(inner.calls(), 3);
}

async fn uncacheable_passes_through(backend: Arc<dyn CacheBackend>) {
    let inner = Counting::new();
    let bus = cached(&inner, backend);
    let ctx = QueryContext::default();
    let search = Query {
        query_type: "search".into(),
        params: json!({"q": "x"}),
    };
    let waiting = Query {
        query_type: "get_user".into(),
        params: json!({"user_id": Uuid::now_v7(), "min_position": 7}),
    };
    for query in [&search, &search, &waiting, &waiting] {
        bus.ask(&ctx, query).await.unwrap();
    }
    assert_eq!(inner.calls(), 4);
    assert_eq!(bus.stats(), stats(0, 0, 0));
}

// ---- moka

fn moka() -> Arc<dyn CacheBackend> {
    Arc::new(MokaCache::default())
}

#[tokio::test]
async fn moka_hit_after_miss() {
    hit_after_miss(moka()).await;
}

#[tokio::test]
async fn moka_invalidation_by_event() {
    invalidation_by_event(moka()).await;
}

#[tokio::test]
async fn moka_stale_put_race() {
    stale_put_race(moka()).await;
}

#[tokio::test]
async fn moka_errors_not_cached() {
    errors_not_cached(moka()).await;
}

#[tokio::test]
async fn moka_uncacheable_passes_through() {
    uncacheable_passes_through(moka()).await;
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

#[tokio::test]
async fn redis_hit_after_miss() {
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
}

#[tokio::test]
async fn redis_invalidation_by_event() {
    let Some(prefix) = TestPrefix::new() else {
        return;
    };
    invalidation_by_event(Arc::new(prefix.cache())).await;
}

#[tokio::test]
async fn redis_stale_put_race() {
    let Some(prefix) = TestPrefix::new() else {
        return;
    };
    stale_put_race(Arc::new(prefix.cache())).await;
}

#[tokio::test]
async fn redis_errors_not_cached() {
    let Some(prefix) = TestPrefix::new() else {
        return;
    };
    errors_not_cached(Arc::new(prefix.cache())).await;
    assert_eq!(prefix.keys().len(), 1, "only the success is stored");
}

#[tokio::test]
async fn redis_uncacheable_passes_through() {
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

#[tokio::test]
async fn redis_entries_expire_and_clear_removes_everything() {
    let Some(prefix) = TestPrefix::new() else {
        return;
    };
    let cache = prefix.cache();
    cache
        .put("short", b"1".to_vec(), Duration::from_millis(100))
        .await
        .unwrap();
    cache
        .put("long", b"2".to_vec(), Duration::from_secs(60))
        .await
        .unwrap();
    cache.bump_tags(&["t".into()]).await.unwrap();
    assert_eq!(cache.get("short").await.unwrap(), Some(b"1".to_vec()));
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(cache.get("short").await.unwrap(), None);
    assert_eq!(cache.get("long").await.unwrap(), Some(b"2".to_vec()));
    assert_eq!(
        cache.tag_versions(&["t".into(), "u".into()]).await.unwrap(),
        [1, 0]
    );

    assert_eq!(cache.clear().await.unwrap(), 2);
    assert!(prefix.keys().is_empty());
    assert_eq!(cache.tag_versions(&["t".into()]).await.unwrap(), [0]);
}

#[tokio::test]
async fn from_url_takes_the_prefix_from_the_url() {
    let Some(prefix) = TestPrefix::new() else {
        return;
    };
    let url = format!("{}?prefix={}", redis_url(), prefix.prefix);
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
    let up = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let proxy = {
        let up = Arc::clone(&up);
        tokio::spawn(async move {
            loop {
                let (mut client, _) = listener.accept().await.unwrap();
                if !up.load(Ordering::SeqCst) {
                    continue; // dropped: connection closed
                }
                let up = Arc::clone(&up);
                tokio::spawn(async move {
                    let mut server = tokio::net::TcpStream::connect(REDIS_ADDR).await.unwrap();
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
    let cache = RedisCache::new(&format!("redis://{addr}/"), &prefix.prefix).unwrap();
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
