//! The cache-backend conformance suite: the same behaviours run against every
//! [`CacheBackend`] (moka in process, Redis): the port itself (entries, their own time to live,
//! tag versions) and the query-cache middleware over it (hits, invalidation, the stale-put race,
//! errors and uncacheable queries never stored).
//!
//! A backend's `tests/` file calls [`cache_backend_suite!`](crate::cache_backend_suite) with a
//! factory returning `Option<CacheFixture>` (`None` skips, e.g. when Redis is down outside CI).

use std::any::Any;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use flexcore_app::query::{Query, QueryBus, QueryBusExt, QueryContext};
use flexcore_app::query_cache::{CacheBackend, CacheStats, CachedQueries};
use flexcore_app::{Error, ErrorKind, Result};
use flexcore_domain::{DomainError, EventEnvelope, EventId, NewEvent, RawJson, StreamId};
use serde_json::{Value, json};
use tokio::sync::Notify;
use uuid::Uuid;

/// A cache backend under test and whatever keeps its resources alive (a key prefix to delete).
pub struct CacheFixture {
    /// The backend, empty.
    pub backend: Arc<dyn CacheBackend>,
    /// Dropped after the test; cleans up.
    pub guard: Box<dyn Any + Send>,
}

/// Generates one `#[tokio::test]` per cache-backend conformance test, each with a fresh backend
/// from `$factory` (a `fn() -> Option<CacheFixture>`).
#[macro_export]
macro_rules! cache_backend_suite {
    ($factory:path) => {
        $crate::cache_backend_suite!(@each $factory;
            stores_reads_and_misses,
            entries_expire_after_their_own_ttl,
            tag_versions_start_at_zero_and_bump_independently,
            hit_after_miss,
            invalidation_by_event,
            stale_put_race,
            errors_not_cached,
            uncacheable_passes_through,
        );
    };
    (@each $factory:path; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $name() {
                let Some(fixture) = $factory() else { return };
                $crate::cache_conformance::$name(::std::sync::Arc::clone(&fixture.backend)).await;
                drop(fixture);
            }
        )*
    };
}

fn tags(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| (*s).to_owned()).collect()
}

/// A stored entry reads back; a missing key is `None`.
pub async fn stores_reads_and_misses(cache: Arc<dyn CacheBackend>) {
    assert_eq!(cache.get("k").await.unwrap(), None);
    cache
        .put("k", b"v".to_vec(), Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(cache.get("k").await.unwrap(), Some(b"v".to_vec()));
    cache
        .put("k", b"w".to_vec(), Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(
        cache.get("k").await.unwrap(),
        Some(b"w".to_vec()),
        "replaced"
    );
}

/// Each entry expires after its own time to live.
pub async fn entries_expire_after_their_own_ttl(cache: Arc<dyn CacheBackend>) {
    cache
        .put("short", b"1".to_vec(), Duration::from_millis(100))
        .await
        .unwrap();
    cache
        .put("long", b"2".to_vec(), Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(cache.get("short").await.unwrap(), Some(b"1".to_vec()));
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(cache.get("short").await.unwrap(), None);
    assert_eq!(cache.get("long").await.unwrap(), Some(b"2".to_vec()));
}

/// Tag versions start at 0; a bump moves exactly the tags it names, by one each.
pub async fn tag_versions_start_at_zero_and_bump_independently(cache: Arc<dyn CacheBackend>) {
    assert_eq!(
        cache.tag_versions(&tags(&["a", "b"])).await.unwrap(),
        [0, 0]
    );
    cache.bump_tags(&tags(&["a"])).await.unwrap();
    cache.bump_tags(&tags(&["a", "b"])).await.unwrap();
    assert_eq!(
        cache.tag_versions(&tags(&["b", "a", "c"])).await.unwrap(),
        [1, 2, 0]
    );
    assert_eq!(cache.tag_versions(&[]).await.unwrap(), Vec::<u64>::new());
}

/// Answers `{"call": n}` and counts; fails while `failing` is above zero (then decrements it).
pub struct Counting {
    /// Calls so far.
    pub calls: AtomicUsize,
    /// Calls still to fail.
    pub failing: AtomicUsize,
    /// When set, the first call waits here after reading (to race an invalidation).
    pub hold_first: Option<(Arc<Notify>, Arc<Notify>)>,
}

impl Counting {
    /// A bus that answers every call.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            calls: AtomicUsize::new(0),
            failing: AtomicUsize::new(0),
            hold_first: None,
        })
    }

    /// Calls so far.
    pub fn calls(&self) -> usize {
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
pub struct Shared(pub Arc<Counting>);

#[async_trait]
impl QueryBus for Shared {
    async fn ask(&self, ctx: &QueryContext, query: &Query) -> Result<Value> {
        self.0.ask(ctx, query).await
    }
}

/// `inner` behind the query cache on `backend`, with the sample's cache policy.
pub fn cached(inner: &Arc<Counting>, backend: Arc<dyn CacheBackend>) -> CachedQueries<Shared> {
    Shared(Arc::clone(inner)).with_cache(
        backend,
        Arc::new(flexcore_sample_users::read_model::cache_policy()),
    )
}

/// `get_user {user_id}`.
pub fn get_user(id: Uuid) -> Query {
    Query {
        query_type: "get_user".into(),
        params: json!({ "user_id": id }),
    }
}

/// `list_users {page: 1, page_size: 20}`.
pub fn list_users() -> Query {
    Query {
        query_type: "list_users".into(),
        params: json!({"page": 1, "page_size": 20}),
    }
}

/// A `user.email_changed` on `user-{id}`.
pub fn user_event(id: Uuid) -> EventEnvelope {
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

/// Cache statistics with these counts.
pub fn stats(hits: u64, misses: u64, errors: u64) -> CacheStats {
    CacheStats {
        hits,
        misses,
        errors,
    }
}

/// A repeated query is answered from the cache; another user is another entry.
pub async fn hit_after_miss(backend: Arc<dyn CacheBackend>) {
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

/// An event invalidates exactly the answers whose tags it names.
pub async fn invalidation_by_event(backend: Arc<dyn CacheBackend>) {
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

/// An answer computed before an invalidation, stored after it, is never served.
pub async fn stale_put_race(backend: Arc<dyn CacheBackend>) {
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

/// Errors of the inner bus are never cached.
pub async fn errors_not_cached(backend: Arc<dyn CacheBackend>) {
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

/// Queries the policy does not cache, and read-your-writes queries, go to the inner bus.
pub async fn uncacheable_passes_through(backend: Arc<dyn CacheBackend>) {
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
