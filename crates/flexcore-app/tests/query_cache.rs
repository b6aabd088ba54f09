//! The query-cache middleware, over an in-memory backend that can be made to fail.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use flexcore_app::query::{Query, QueryBus, QueryBusExt, QueryContext};
use flexcore_app::query_cache::{
    CacheBackend, CachePolicy, CacheStats, CachedQueries, QueryCacheInvalidator,
    spawn_invalidation, tag_slot,
};
use flexcore_app::store::{EventAppender, EventReader, InMemoryStore};
use flexcore_app::{Error, Result};
use flexcore_domain::{
    DomainError, EventEnvelope, EventId, ExpectedVersion, NewEvent, RawJson, StreamId,
};
use serde_json::{Value, json};
use tokio::sync::watch;
use uuid::Uuid;

/// A backend in a map; `fail` makes every call fail as an unreachable Redis would.
#[derive(Default)]
struct MapBackend {
    entries: Mutex<HashMap<String, (Vec<u8>, Duration)>>,
    versions: Mutex<HashMap<String, u64>>,
    fail: AtomicBool,
    fail_puts: AtomicBool,
    calls: AtomicUsize,
}

impl MapBackend {
    fn check(&self) -> Result<()> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.fail.load(Ordering::SeqCst) {
            return Err(Error::unavailable("connection refused"));
        }
        Ok(())
    }

    fn entry_count(&self) -> usize {
        self.entries.lock().unwrap().len()
    }
}

#[async_trait]
impl CacheBackend for MapBackend {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.check()?;
        Ok(self.entries.lock().unwrap().get(key).map(|e| e.0.clone()))
    }
    async fn put(&self, key: &str, value: Vec<u8>, ttl: Duration) -> Result<()> {
        self.check()?;
        if self.fail_puts.load(Ordering::SeqCst) {
            return Err(Error::unavailable("put refused"));
        }
        self.entries
            .lock()
            .unwrap()
            .insert(key.to_owned(), (value, ttl));
        Ok(())
    }
    async fn tag_versions(&self, tags: &[String]) -> Result<Vec<u64>> {
        self.check()?;
        let versions = self.versions.lock().unwrap();
        Ok(tags
            .iter()
            .map(|t| versions.get(t).copied().unwrap_or(0))
            .collect())
    }
    async fn bump_tags(&self, tags: &[String]) -> Result<()> {
        self.check()?;
        let mut versions = self.versions.lock().unwrap();
        for tag in tags {
            *versions.entry(tag.clone()).or_default() += 1;
        }
        Ok(())
    }
}

/// What the inner bus does on its next call.
type Behaviour = Box<dyn Fn(&Query, usize) -> Result<Value> + Send + Sync>;

/// The inner bus: counts calls and answers `{"query", "params", "call"}`.
struct Counting {
    calls: Arc<AtomicUsize>,
    behaviour: Behaviour,
}

impl Counting {
    fn new() -> (Self, Arc<AtomicUsize>) {
        Self::with(|q, call| Ok(json!({"query": q.query_type, "params": q.params, "call": call})))
    }

    fn with(
        behaviour: impl Fn(&Query, usize) -> Result<Value> + Send + Sync + 'static,
    ) -> (Self, Arc<AtomicUsize>) {
        let calls = Arc::new(AtomicUsize::new(0));
        let bus = Self {
            calls: Arc::clone(&calls),
            behaviour: Box::new(behaviour),
        };
        (bus, calls)
    }
}

#[async_trait]
impl QueryBus for Counting {
    async fn ask(&self, _ctx: &QueryContext, query: &Query) -> Result<Value> {
        let call = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        (self.behaviour)(query, call)
    }
}

fn policy() -> Arc<CachePolicy> {
    Arc::new(flexcore_sample_users::read_model::cache_policy())
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

fn event_on(stream: &str, event_type: &str) -> EventEnvelope {
    let new = NewEvent::new(event_type, RawJson::from_value(&json!({}))).unwrap();
    EventEnvelope {
        event_id: EventId(Uuid::now_v7()),
        stream_id: StreamId::new(stream).unwrap(),
        stream_version: 0,
        global_position: 1,
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

fn cached(inner: Counting) -> (CachedQueries<Counting>, Arc<MapBackend>) {
    let backend = Arc::new(MapBackend::default());
    (inner.with_cache(backend.clone(), policy()), backend)
}

#[tokio::test]
async fn a_second_ask_is_a_hit() {
    let (inner, calls) = Counting::new();
    let (bus, backend) = cached(inner);
    let ctx = QueryContext::default();
    let id = Uuid::now_v7();

    let first = bus.ask(&ctx, &get_user(id)).await.unwrap();
    let second = bus.ask(&ctx, &get_user(id)).await.unwrap();
    assert_eq!(first, second);
    assert_eq!(first["call"], 1);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(bus.stats(), stats(1, 1, 0));

    // The same parameters in another key order: a hit.
    let reordered = Query {
        query_type: "list_users".into(),
        params: json!({"page_size": 20, "page": 1}),
    };
    bus.ask(&ctx, &list_users()).await.unwrap();
    bus.ask(&ctx, &reordered).await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    // Other parameters, another tenant: other answers.
    let page_2 = Query {
        query_type: "list_users".into(),
        params: json!({"page": 2, "page_size": 20}),
    };
    assert_eq!(bus.ask(&ctx, &page_2).await.unwrap()["call"], 3);
    let tenant = QueryContext {
        tenant: Some("acme".into()),
        ..QueryContext::default()
    };
    assert_eq!(bus.ask(&tenant, &list_users()).await.unwrap()["call"], 4);
    assert_eq!(bus.stats(), stats(2, 4, 0));

    // Every entry is stored with the policy's TTL.
    let entries = backend.entries.lock().unwrap();
    assert_eq!(entries.len(), 4);
    assert!(
        entries
            .values()
            .all(|(_, ttl)| *ttl == flexcore_app::query_cache::DEFAULT_TTL)
    );
}

#[tokio::test]
async fn an_event_invalidates_the_answers_that_depend_on_it_and_no_others() {
    let (inner, calls) = Counting::new();
    let (bus, _backend) = cached(inner);
    let invalidator = bus.invalidator();
    let ctx = QueryContext::default();
    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());

    for query in [get_user(a), get_user(b), list_users()] {
        bus.ask(&ctx, &query).await.unwrap();
        bus.ask(&ctx, &query).await.unwrap();
    }
    assert_eq!(calls.load(Ordering::SeqCst), 3);

    invalidator
        .invalidate(&[event_on(&format!("user-{a}"), "user.email_changed")])
        .await
        .unwrap();
    assert_eq!(bus.ask(&ctx, &get_user(a)).await.unwrap()["call"], 4);
    assert_eq!(bus.ask(&ctx, &list_users()).await.unwrap()["call"], 5);
    assert_eq!(bus.ask(&ctx, &get_user(b)).await.unwrap()["call"], 2);
    assert_eq!(bus.ask(&ctx, &get_user(a)).await.unwrap()["call"], 4);

    // Events of other categories change nothing.
    invalidator
        .invalidate(&[event_on("email-x@y.io", "email.reserved")])
        .await
        .unwrap();
    assert_eq!(bus.ask(&ctx, &get_user(a)).await.unwrap()["call"], 4);
    assert_eq!(bus.ask(&ctx, &list_users()).await.unwrap()["call"], 5);
    assert_eq!(calls.load(Ordering::SeqCst), 5);
}

/// Answers from a "read model" that the test changes while the first ask is in flight.
struct Racing {
    calls: AtomicUsize,
    reading: tokio::sync::Notify,
    committed: tokio::sync::Notify,
}

#[async_trait]
impl QueryBus for Racing {
    async fn ask(&self, _ctx: &QueryContext, _query: &Query) -> Result<Value> {
        if self.calls.fetch_add(1, Ordering::SeqCst) == 0 {
            // Read the stale read model, then stay in flight until the commit and its
            // invalidation have happened.
            let stale = json!({"email": "old@x.io"});
            self.reading.notify_one();
            self.committed.notified().await;
            return Ok(stale);
        }
        Ok(json!({"email": "new@x.io"}))
    }
}

#[tokio::test]
async fn a_swap_invalidates_everything_and_tags_can_be_bumped_by_name() {
    let (inner, calls) = Counting::new();
    let (bus, _backend) = cached(inner);
    let invalidator = bus.invalidator();
    let ctx = QueryContext::default();
    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
    for query in [get_user(a), get_user(b), list_users()] {
        bus.ask(&ctx, &query).await.unwrap();
    }
    invalidator.invalidate_all().await.unwrap();
    assert_eq!(bus.ask(&ctx, &get_user(a)).await.unwrap()["call"], 4);
    assert_eq!(bus.ask(&ctx, &get_user(b)).await.unwrap()["call"], 5);
    assert_eq!(bus.ask(&ctx, &list_users()).await.unwrap()["call"], 6);

    invalidator
        .invalidate_tags(&["users".to_owned()])
        .await
        .unwrap();
    assert_eq!(bus.ask(&ctx, &list_users()).await.unwrap()["call"], 7);
    assert_eq!(bus.ask(&ctx, &get_user(a)).await.unwrap()["call"], 4);
    assert_eq!(calls.load(Ordering::SeqCst), 7);
}

#[tokio::test]
async fn an_answer_computed_before_an_invalidation_and_stored_after_it_is_never_served() {
    let backend = Arc::new(MapBackend::default());
    let invalidator = QueryCacheInvalidator::new(backend.clone(), policy());
    let racing = Arc::new(Racing {
        calls: AtomicUsize::new(0),
        reading: tokio::sync::Notify::new(),
        committed: tokio::sync::Notify::new(),
    });
    let bus = Arc::new(ArcBus(Arc::clone(&racing)).with_cache(backend.clone(), policy()));
    let id = Uuid::now_v7();

    let asking = {
        let bus = Arc::clone(&bus);
        tokio::spawn(async move { bus.ask(&QueryContext::default(), &get_user(id)).await })
    };
    racing.reading.notified().await;
    invalidator
        .invalidate(&[event_on(&format!("user-{id}"), "user.email_changed")])
        .await
        .unwrap();
    racing.committed.notify_one();
    let stale = asking.await.unwrap().unwrap();
    assert_eq!(stale["email"], "old@x.io");
    assert_eq!(backend.entry_count(), 1, "the stale answer was stored");

    let ctx = QueryContext::default();
    assert_eq!(
        bus.ask(&ctx, &get_user(id)).await.unwrap()["email"],
        "new@x.io"
    );
    assert_eq!(
        bus.ask(&ctx, &get_user(id)).await.unwrap()["email"],
        "new@x.io"
    );
    assert_eq!(racing.calls.load(Ordering::SeqCst), 2);
    assert_eq!(bus.stats(), stats(1, 2, 0));
}

/// A shared inner bus.
struct ArcBus<B>(Arc<B>);

#[async_trait]
impl<B: QueryBus> QueryBus for ArcBus<B> {
    async fn ask(&self, ctx: &QueryContext, query: &Query) -> Result<Value> {
        self.0.ask(ctx, query).await
    }
}

#[tokio::test]
async fn errors_are_not_cached() {
    let (inner, calls) = Counting::with(|_, call| {
        if call <= 2 {
            Err(Error::Domain(DomainError::NotFound("no such user".into())))
        } else {
            Ok(json!({"call": call}))
        }
    });
    let (bus, backend) = cached(inner);
    let ctx = QueryContext::default();
    let id = Uuid::now_v7();

    assert!(bus.ask(&ctx, &get_user(id)).await.is_err());
    assert!(bus.ask(&ctx, &get_user(id)).await.is_err());
    assert_eq!(backend.entry_count(), 0);
    assert_eq!(bus.ask(&ctx, &get_user(id)).await.unwrap()["call"], 3);
    assert_eq!(bus.ask(&ctx, &get_user(id)).await.unwrap()["call"], 3);
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn queries_the_policy_does_not_cache_go_straight_through() {
    let (inner, calls) = Counting::new();
    let (bus, backend) = cached(inner);
    let ctx = QueryContext::default();
    let uncacheable = [
        Query {
            query_type: "search".into(),
            params: json!({"q": "x"}),
        },
        // Invalid parameters: the handler will say why.
        Query {
            query_type: "get_user".into(),
            params: json!({"user_id": "not-a-uuid"}),
        },
        // Read-your-writes asks bypass the cache.
        Query {
            query_type: "get_user".into(),
            params: json!({"user_id": Uuid::now_v7(), "min_position": 42}),
        },
        Query {
            query_type: "list_users".into(),
            params: json!({"page": 1, "min_position": 42}),
        },
    ];
    for query in &uncacheable {
        bus.ask(&ctx, query).await.unwrap();
        bus.ask(&ctx, query).await.unwrap();
    }
    assert_eq!(calls.load(Ordering::SeqCst), 8);
    assert_eq!(backend.calls.load(Ordering::SeqCst), 0);
    assert_eq!(bus.stats(), stats(0, 0, 0));
}

#[tokio::test]
async fn a_failing_backend_never_fails_a_query() {
    let (inner, calls) = Counting::new();
    let (bus, backend) = cached(inner);
    let ctx = QueryContext::default();
    let id = Uuid::now_v7();

    backend.fail.store(true, Ordering::SeqCst);
    assert_eq!(bus.ask(&ctx, &get_user(id)).await.unwrap()["call"], 1);
    assert_eq!(bus.ask(&ctx, &get_user(id)).await.unwrap()["call"], 2);
    assert_eq!(bus.stats(), stats(0, 0, 2));
    // An invalidation reports the failure, so that its caller retries.
    let err = bus
        .invalidator()
        .invalidate(&[event_on(&format!("user-{id}"), "user.created")])
        .await
        .unwrap_err();
    assert_eq!(err.kind(), flexcore_app::ErrorKind::Unavailable);

    // Back up: caching resumes.
    backend.fail.store(false, Ordering::SeqCst);
    assert_eq!(bus.ask(&ctx, &get_user(id)).await.unwrap()["call"], 3);
    assert_eq!(bus.ask(&ctx, &get_user(id)).await.unwrap()["call"], 3);

    // Only storing fails: the answer is still returned, counted as an error.
    backend.fail_puts.store(true, Ordering::SeqCst);
    assert_eq!(bus.ask(&ctx, &list_users()).await.unwrap()["call"], 4);
    assert_eq!(bus.stats(), stats(1, 1, 3));
    assert_eq!(calls.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn an_entry_that_is_not_json_is_replaced() {
    let (inner, calls) = Counting::new();
    let (bus, backend) = cached(inner);
    let ctx = QueryContext::default();
    bus.ask(&ctx, &list_users()).await.unwrap();
    for entry in backend.entries.lock().unwrap().values_mut() {
        entry.0 = b"{not json".to_vec();
    }
    assert_eq!(bus.ask(&ctx, &list_users()).await.unwrap()["call"], 2);
    assert_eq!(bus.ask(&ctx, &list_users()).await.unwrap()["call"], 2);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(bus.stats(), stats(1, 1, 1));
}

#[test]
fn the_users_policy_ties_queries_and_events_to_tags() {
    let policy = flexcore_sample_users::read_model::cache_policy();
    let id = Uuid::now_v7();
    let upper = Query {
        query_type: "get_user".into(),
        params: json!({"user_id": id.to_string().to_uppercase()}),
    };
    assert_eq!(
        policy.query_tags(&upper),
        Some(vec![format!("user:{id}")]),
        "the id is canonical, as in the stream id"
    );
    assert_eq!(
        policy.query_tags(&list_users()),
        Some(vec!["users".to_owned()])
    );
    assert_eq!(
        policy.event_tags(&event_on(&format!("user-{id}"), "user.created")),
        vec!["users".to_owned(), format!("user:{id}")]
    );
    assert!(
        policy
            .event_tags(&event_on("email-a@b.io", "email.reserved"))
            .is_empty()
    );
    assert!(policy.is_cacheable("list_users") && !policy.is_cacheable("create_user"));
}

#[test]
fn policies_merge_and_rules_carry_their_ttl() {
    let other = CachePolicy::new()
        .cache_for("stats", Duration::from_secs(5), |_| {
            Some(vec!["stats".into()])
        })
        .invalidate(|e| vec![format!("stats:{}", e.event_type)]);
    let policy = flexcore_sample_users::read_model::cache_policy().merge(other);
    assert!(policy.is_cacheable("stats") && policy.is_cacheable("get_user"));
    let event = event_on("user-1", "user.created");
    assert_eq!(
        policy.event_tags(&event),
        vec![
            "users".to_owned(),
            "user:1".to_owned(),
            "stats:user.created".to_owned()
        ]
    );
}

#[tokio::test]
async fn a_rule_ttl_reaches_the_backend() {
    let (inner, _) = Counting::new();
    let backend = Arc::new(MapBackend::default());
    let policy = CachePolicy::new().cache_for("stats", Duration::from_secs(7), |_| {
        Some(vec!["stats".into()])
    });
    let bus = inner.with_cache(backend.clone(), Arc::new(policy));
    let query = Query {
        query_type: "stats".into(),
        params: Value::Null,
    };
    bus.ask(&QueryContext::default(), &query).await.unwrap();
    let entries = backend.entries.lock().unwrap();
    let ttls: Vec<Duration> = entries.values().map(|e| e.1).collect();
    assert_eq!(ttls, [Duration::from_secs(7)]);
}

#[tokio::test]
async fn following_the_log_invalidates_what_it_commits() {
    let store = Arc::new(InMemoryStore::new());
    let (inner, calls) = Counting::new();
    let (bus, backend) = cached(inner);
    let (stop, shutdown) = watch::channel(false);
    let task = spawn_invalidation(
        bus.invalidator(),
        store.clone() as Arc<dyn EventReader>,
        0,
        shutdown,
    );
    let ctx = QueryContext::default();
    let id = Uuid::now_v7();
    bus.ask(&ctx, &get_user(id)).await.unwrap();
    bus.ask(&ctx, &get_user(id)).await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    let event = NewEvent::new("user.created", RawJson::from_value(&json!({}))).unwrap();
    store
        .append(
            StreamId::new(format!("user-{id}")).unwrap(),
            ExpectedVersion::NoStream,
            vec![event],
        )
        .await
        .unwrap();
    let slot = tag_slot(&format!("user:{id}"));
    tokio::time::timeout(Duration::from_secs(5), async {
        while backend.versions.lock().unwrap().get(&slot).copied() != Some(1) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the invalidation follows the commit");
    assert_eq!(bus.ask(&ctx, &get_user(id)).await.unwrap()["call"], 2);

    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("stops on shutdown")
        .unwrap();
}

/// Records counter increments by name and sorted labels.
#[derive(Default, Clone)]
struct Counters(Arc<Mutex<BTreeMap<String, u64>>>);

struct Handle(Arc<Mutex<BTreeMap<String, u64>>>, String);

impl metrics::CounterFn for Handle {
    fn increment(&self, value: u64) {
        *self.0.lock().unwrap().entry(self.1.clone()).or_default() += value;
    }
    fn absolute(&self, value: u64) {
        self.0.lock().unwrap().insert(self.1.clone(), value);
    }
}

impl metrics::Recorder for Counters {
    fn describe_counter(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_gauge(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_histogram(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn register_counter(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Counter {
        let mut labels: Vec<String> = key
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        labels.sort();
        let name = format!("{}{{{}}}", key.name(), labels.join(","));
        metrics::Counter::from_arc(Arc::new(Handle(Arc::clone(&self.0), name)))
    }
    fn register_gauge(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
        metrics::Gauge::noop()
    }
    fn register_histogram(
        &self,
        _: &metrics::Key,
        _: &metrics::Metadata<'_>,
    ) -> metrics::Histogram {
        metrics::Histogram::noop()
    }
}

#[test]
fn hits_misses_and_errors_are_counted_per_query_type() {
    let recorder = Counters::default();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    metrics::with_local_recorder(&recorder, || {
        runtime.block_on(async {
            let (inner, _) = Counting::new();
            let (bus, backend) = cached(inner);
            let ctx = QueryContext::default();
            bus.ask(&ctx, &list_users()).await.unwrap();
            bus.ask(&ctx, &list_users()).await.unwrap();
            bus.ask(&ctx, &list_users()).await.unwrap();
            backend.fail.store(true, Ordering::SeqCst);
            bus.ask(&ctx, &get_user(Uuid::now_v7())).await.unwrap();
        });
    });
    let seen = recorder.0.lock().unwrap().clone();
    let expected: BTreeMap<String, u64> = [
        (
            "flexcore_query_cache_total{query=list_users,result=miss}",
            1,
        ),
        ("flexcore_query_cache_total{query=list_users,result=hit}", 2),
        ("flexcore_query_cache_total{query=get_user,result=error}", 1),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    assert_eq!(seen, expected);
}
