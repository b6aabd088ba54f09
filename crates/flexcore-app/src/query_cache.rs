//! The query cache: a [`QueryBus`] decorator that answers repeated queries from a cache, and
//! forgets them when the events that change their answers are committed.
//!
//! ```text
//! QueryRouter ──with_cache(backend, policy)──▶ CachedQueries ──▶ callers
//!                                  ▲
//!  projection runner ──invalidate(events)──┘  (QueryCacheInvalidator, same backend + policy)
//! ```
//!
//! * [`CacheBackend`] is the port: byte entries with a time to live, and named version
//!   counters. The adapters live in `flexcore-cache` (in-process moka by default, Redis when
//!   several nodes must share one cache).
//! * [`CachePolicy`] says which query types are cacheable, which *tags* an answer depends on
//!   (`get_user {user_id}` → `user:{id}`; `list_users` → `users`), and which tags an event
//!   invalidates (`user.email_changed` on `user-{id}` → `users`, `user:{id}`).
//! * [`CachedQueries`] is the middleware, [`QueryCacheInvalidator`] the handle that turns
//!   committed events into invalidations.
//!
//! # Invalidation by versioned tags, and why it is race-free
//!
//! Nothing is ever deleted. Every tag has a version counter; the entry key of an answer holds
//! the query type, the tenant, the canonical parameters *and the versions of its tags as read
//! before the answer was computed*. An invalidation bumps the versions of the event's tags,
//! so every entry computed before it becomes unreachable at once, on every node that shares
//! the backend, and simply ages out through its TTL.
//!
//! The order of an ask is: (1) read the tag versions, (2) look the key up, (3) on a miss run
//! the inner bus, (4) store its answer under the key of step 1. Take the classic race: a query
//! reads a stale read model in step 3, meanwhile an event is committed to the read model and
//! its tags are bumped, and only then does the query store its stale answer in step 4. That
//! answer lands under the key built from the *old* versions, which no later ask computes: the
//! next ask reads the new versions and misses. An answer stored under the current versions
//! was therefore computed after the last bump's read-model commit. This needs two things of
//! the caller:
//!
//! * the read model's commit happens before the bump: the projection runner calls
//!   [`QueryCacheInvalidator::invalidate`] after each read-model commit (and before it reports
//!   the new position, so that a read-your-writes wait for that position also sees the
//!   invalidation). [`spawn_invalidation`] follows the event log instead; use it only for
//!   queries answered from the event store itself, where the commit *is* the read model;
//! * a failed invalidation is retried: [`QueryCacheInvalidator::invalidate`] returns the
//!   backend's error (stale entries would otherwise live until their TTL).
//!
//! Every answer also depends on [`ALL_TAG`], which [`QueryCacheInvalidator::invalidate_all`]
//! bumps when a whole read model changes at once (a blue-green rebuild swapped in).
//!
//! Tags are spread over [`TAG_SLOTS`] version counters by a fixed hash, so the backend keeps
//! a bounded number of counters however many users there are; two tags that share a slot
//! only cost each other an occasional extra miss.
//!
//! # Failures
//!
//! Errors of the inner bus are never cached. A cache backend that fails (Redis down) never
//! fails a query: the failure is logged as a warning, counted, and the query goes to the
//! inner bus. Every ask of a cacheable query is counted once in
//! `flexcore_query_cache_total{query, result}` with `result` = `hit`, `miss` or `error` (the
//! backend failed during that ask); [`CachedQueries::stats`] gives the same counts in process.
//!
//! Answers are keyed by tenant but not by actor: do not declare cacheable a query whose answer
//! depends on who asks (authorization that only allows or denies belongs outside the cache).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use flexcore_domain::EventEnvelope;
use serde_json::Value;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::Result;
use crate::follow::{Backoff, LogFollower, READ_RETRY, Shutdown};
use crate::query::{Query, QueryBus, QueryContext};
use crate::store::EventReader;
use crate::subscription::{Subscription, SubscriptionOptions};

/// How many version counters the tags are spread over.
pub const TAG_SLOTS: u64 = 1 << 16;

/// The tag every cached answer depends on: bumping it ([`QueryCacheInvalidator::invalidate_all`])
/// makes every entry unreachable, e.g. when a rebuilt read model is swapped in.
pub const ALL_TAG: &str = "*";

/// How long an answer is kept when its rule sets no TTL of its own.
pub const DEFAULT_TTL: Duration = Duration::from_secs(60);

/// Where cached answers and tag versions live (the port; adapters in `flexcore-cache`).
///
/// Entries are opaque bytes under opaque keys; tag versions are counters that start at 0 and
/// only ever grow. A backend shared by several nodes (Redis) gives a cache they all share.
/// Backends report unreachability as [`crate::Error::Unavailable`]; the middleware tolerates
/// every backend error.
#[async_trait]
pub trait CacheBackend: Send + Sync {
    /// The entry stored under `key`, unless it is missing or expired.
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>>;

    /// Stores `value` under `key` for `ttl`, replacing what was there.
    async fn put(&self, key: &str, value: Vec<u8>, ttl: Duration) -> Result<()>;

    /// The current version of each tag, in order (0 for a tag never bumped).
    async fn tag_versions(&self, tags: &[String]) -> Result<Vec<u64>>;

    /// Increments the version of each tag.
    async fn bump_tags(&self, tags: &[String]) -> Result<()>;
}

#[async_trait]
impl<T: CacheBackend + ?Sized> CacheBackend for Arc<T> {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        (**self).get(key).await
    }
    async fn put(&self, key: &str, value: Vec<u8>, ttl: Duration) -> Result<()> {
        (**self).put(key, value, ttl).await
    }
    async fn tag_versions(&self, tags: &[String]) -> Result<Vec<u64>> {
        (**self).tag_versions(tags).await
    }
    async fn bump_tags(&self, tags: &[String]) -> Result<()> {
        (**self).bump_tags(tags).await
    }
}

type QueryTags = Arc<dyn Fn(&Value) -> Option<Vec<String>> + Send + Sync>;
type EventTags = Arc<dyn Fn(&EventEnvelope) -> Vec<String> + Send + Sync>;

#[derive(Clone)]
struct Rule {
    ttl: Duration,
    tags: QueryTags,
}

/// Which queries are cached, what their answers depend on, and what events change them.
///
/// Built from closures:
///
/// ```
/// use flexcore_app::query_cache::CachePolicy;
/// use std::time::Duration;
///
/// let policy = CachePolicy::new()
///     .cache("get_user", |params| {
///         let id = params.get("user_id")?.as_str()?;
///         Some(vec![format!("user:{id}")])
///     })
///     .cache_for("list_users", Duration::from_secs(10), |_| Some(vec!["users".into()]))
///     .invalidate(|event| match event.stream_id.as_str().split_once('-') {
///         Some(("user", id)) => vec!["users".into(), format!("user:{id}")],
///         _ => vec![],
///     });
/// assert!(policy.is_cacheable("get_user"));
/// assert!(!policy.is_cacheable("search"));
/// ```
///
/// A query's tag function returns `None` when its parameters cannot be cached (invalid, or
/// asking for something that must not be cached): the query then goes straight to the inner bus.
#[derive(Clone, Default)]
pub struct CachePolicy {
    rules: HashMap<String, Rule>,
    invalidations: Vec<EventTags>,
    default_ttl: Option<Duration>,
}

impl std::fmt::Debug for CachePolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut types: Vec<&str> = self.rules.keys().map(String::as_str).collect();
        types.sort_unstable();
        f.debug_struct("CachePolicy")
            .field("cacheable", &types)
            .field("invalidations", &self.invalidations.len())
            .field("default_ttl", &self.default_ttl())
            .finish()
    }
}

impl CachePolicy {
    /// A policy that caches nothing, with a default TTL of [`DEFAULT_TTL`].
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the TTL of the rules that set none.
    pub fn default_ttl_of(mut self, ttl: Duration) -> Self {
        self.default_ttl = Some(ttl);
        self
    }

    /// Caches `query_type` for the default TTL; `tags` maps the parameters to the tags the
    /// answer depends on.
    pub fn cache(
        self,
        query_type: impl Into<String>,
        tags: impl Fn(&Value) -> Option<Vec<String>> + Send + Sync + 'static,
    ) -> Self {
        self.rule(query_type.into(), None, Arc::new(tags))
    }

    /// Caches `query_type` for `ttl`; `tags` as in [`CachePolicy::cache`].
    pub fn cache_for(
        self,
        query_type: impl Into<String>,
        ttl: Duration,
        tags: impl Fn(&Value) -> Option<Vec<String>> + Send + Sync + 'static,
    ) -> Self {
        self.rule(query_type.into(), Some(ttl), Arc::new(tags))
    }

    /// Adds a function from an event to the tags it invalidates (all of them are applied).
    pub fn invalidate(
        mut self,
        tags: impl Fn(&EventEnvelope) -> Vec<String> + Send + Sync + 'static,
    ) -> Self {
        self.invalidations.push(Arc::new(tags));
        self
    }

    /// Adds every rule and invalidation of `other` (its rules win on a shared query type).
    pub fn merge(mut self, other: CachePolicy) -> Self {
        self.rules.extend(other.rules);
        self.invalidations.extend(other.invalidations);
        self.default_ttl = self.default_ttl.or(other.default_ttl);
        self
    }

    /// Whether answers to `query_type` are cached at all.
    pub fn is_cacheable(&self, query_type: &str) -> bool {
        self.rules.contains_key(query_type)
    }

    /// The TTL of new entries when no rule sets its own.
    pub fn default_ttl(&self) -> Duration {
        self.default_ttl.unwrap_or(DEFAULT_TTL)
    }

    /// The tags of a query's answer, or `None` when it is not to be cached.
    pub fn query_tags(&self, query: &Query) -> Option<Vec<String>> {
        (self.rules.get(&query.query_type)?.tags)(&query.params)
    }

    /// The tags an event invalidates.
    pub fn event_tags(&self, event: &EventEnvelope) -> Vec<String> {
        self.invalidations.iter().flat_map(|f| f(event)).collect()
    }

    fn rule(mut self, query_type: String, ttl: Option<Duration>, tags: QueryTags) -> Self {
        let ttl = ttl.unwrap_or(Duration::ZERO);
        self.rules.insert(query_type, Rule { ttl, tags });
        self
    }

    fn ttl_of(&self, query_type: &str) -> Duration {
        match self.rules.get(query_type) {
            Some(rule) if !rule.ttl.is_zero() => rule.ttl,
            _ => self.default_ttl(),
        }
    }
}

/// The version counter a tag is counted in: a fixed hash (FNV-1a, the same on every node and
/// in every release) modulo [`TAG_SLOTS`], as four hex digits.
pub fn tag_slot(tag: &str) -> String {
    format!("{:04x}", crate::fnv1a(tag) % TAG_SLOTS)
}

/// The sorted, distinct version slots of some tags.
fn slots_of(tags: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut slots: Vec<String> = tags.into_iter().map(|t| tag_slot(&t)).collect();
    slots.sort_unstable();
    slots.dedup();
    slots
}

/// Writes `value` as JSON with object keys sorted at every level, so that equal parameters
/// give equal text whatever their order (and whatever serde_json's map features are).
fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (key, value)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                write_canonical(value, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// The entry key: a JSON array `[query_type, tenant, [[slot, version]…], params]`, so that no
/// two different asks can share a key (no hashing, hence no collisions to engineer).
fn entry_key(ctx: &QueryContext, query: &Query, slots: &[String], versions: &[u64]) -> String {
    let mut key = String::with_capacity(64);
    key.push('[');
    key.push_str(&Value::String(query.query_type.clone()).to_string());
    key.push(',');
    match &ctx.tenant {
        Some(tenant) => key.push_str(&Value::String(tenant.clone()).to_string()),
        None => key.push_str("null"),
    }
    key.push_str(",[");
    for (i, (slot, version)) in slots.iter().zip(versions).enumerate() {
        if i > 0 {
            key.push(',');
        }
        let _ = write!(key, "[\"{slot}\",{version}]");
    }
    key.push_str("],");
    write_canonical(&query.params, &mut key);
    key.push(']');
    key
}

/// The in-process counts of a [`CachedQueries`] (the metric carries them per query type).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Asks answered from the cache.
    pub hits: u64,
    /// Asks that went to the inner bus because no entry was there.
    pub misses: u64,
    /// Asks during which the backend failed (they went to the inner bus).
    pub errors: u64,
}

#[derive(Default)]
struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    errors: AtomicU64,
}

#[derive(Clone, Copy)]
enum Outcome {
    Hit,
    Miss,
    Error,
}

impl Counters {
    fn count(&self, query_type: &str, outcome: Outcome) {
        let (counter, label) = match outcome {
            Outcome::Hit => (&self.hits, "hit"),
            Outcome::Miss => (&self.misses, "miss"),
            Outcome::Error => (&self.errors, "error"),
        };
        counter.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("flexcore_query_cache_total", "query" => query_type.to_owned(), "result" => label)
            .increment(1);
    }
}

/// A query bus that answers cacheable queries from a [`CacheBackend`] (see the module docs).
pub struct CachedQueries<B> {
    inner: B,
    backend: Arc<dyn CacheBackend>,
    policy: Arc<CachePolicy>,
    counters: Arc<Counters>,
}

impl<B> CachedQueries<B> {
    /// Caches the answers of `inner` in `backend` as `policy` says.
    pub fn new(inner: B, backend: Arc<dyn CacheBackend>, policy: Arc<CachePolicy>) -> Self {
        Self {
            inner,
            backend,
            policy,
            counters: Arc::default(),
        }
    }

    /// The handle that invalidates this cache's entries (same backend, same policy).
    pub fn invalidator(&self) -> QueryCacheInvalidator {
        QueryCacheInvalidator::new(Arc::clone(&self.backend), Arc::clone(&self.policy))
    }

    /// Hits, misses and backend errors counted so far.
    pub fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.counters.hits.load(Ordering::Relaxed),
            misses: self.counters.misses.load(Ordering::Relaxed),
            errors: self.counters.errors.load(Ordering::Relaxed),
        }
    }
}

#[async_trait]
impl<B: QueryBus> QueryBus for CachedQueries<B> {
    async fn ask(&self, ctx: &QueryContext, query: &Query) -> Result<Value> {
        // Read-your-writes asks to wait for a projection position, which a cached answer
        // cannot promise.
        if crate::query::asks_min_position(ctx, &query.params) {
            return self.inner.ask(ctx, query).await;
        }
        let Some(tags) = self.policy.query_tags(query) else {
            return self.inner.ask(ctx, query).await;
        };
        let query_type = query.query_type.as_str();
        let slots = slots_of(tags.into_iter().chain([ALL_TAG.to_owned()]));

        // 1. The versions first: the answer we may compute below is at least this fresh.
        let versions = match self.backend.tag_versions(&slots).await {
            Ok(versions) if versions.len() == slots.len() => versions,
            Ok(versions) => {
                let message = format!("{} versions for {} tags", versions.len(), slots.len());
                return self.bypass(ctx, query, "read tag versions", &message).await;
            }
            Err(e) => {
                return self
                    .bypass(ctx, query, "read tag versions", &e.to_string())
                    .await;
            }
        };
        let key = entry_key(ctx, query, &slots, &versions);

        // 2. The entry.
        let mut failed = false;
        match self.backend.get(&key).await {
            Ok(Some(bytes)) => match serde_json::from_slice::<Value>(&bytes) {
                Ok(answer) => {
                    self.counters.count(query_type, Outcome::Hit);
                    return Ok(answer);
                }
                Err(e) => {
                    tracing::warn!(query_type, error = %e, "query cache entry is not JSON; asking the handler");
                    failed = true;
                }
            },
            Ok(None) => {}
            Err(e) => {
                return self
                    .bypass(ctx, query, "read an entry", &e.to_string())
                    .await;
            }
        }

        // 3. The inner bus; 4. its answer, under the versions of step 1. Errors are not stored.
        let answer = self.inner.ask(ctx, query).await?;
        match serde_json::to_vec(&answer) {
            Ok(bytes) => {
                if let Err(e) = self
                    .backend
                    .put(&key, bytes, self.policy.ttl_of(query_type))
                    .await
                {
                    tracing::warn!(query_type, error = %e, "query cache cannot store an answer");
                    failed = true;
                }
            }
            Err(e) => {
                tracing::warn!(query_type, error = %e, "query answer cannot be serialised for the cache");
                failed = true;
            }
        }
        let outcome = if failed {
            Outcome::Error
        } else {
            Outcome::Miss
        };
        self.counters.count(query_type, outcome);
        Ok(answer)
    }
}

impl<B: QueryBus> CachedQueries<B> {
    /// Answers without the cache after a backend failure.
    async fn bypass(
        &self,
        ctx: &QueryContext,
        query: &Query,
        doing: &str,
        error: &str,
    ) -> Result<Value> {
        tracing::warn!(query_type = %query.query_type, error, "query cache cannot {doing}; asking the handler");
        self.counters.count(&query.query_type, Outcome::Error);
        self.inner.ask(ctx, query).await
    }
}

/// Turns committed events into cache invalidations; cheap to clone.
#[derive(Clone)]
pub struct QueryCacheInvalidator {
    backend: Arc<dyn CacheBackend>,
    policy: Arc<CachePolicy>,
}

impl std::fmt::Debug for QueryCacheInvalidator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueryCacheInvalidator")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl QueryCacheInvalidator {
    /// Invalidates the entries of `backend` that `policy` ties to events.
    pub fn new(backend: Arc<dyn CacheBackend>, policy: Arc<CachePolicy>) -> Self {
        Self { backend, policy }
    }

    /// Bumps the tags of `events` (one backend call for the whole batch; none when no event
    /// has tags). Call it after the read model that answers the cached queries has committed
    /// these events, and retry it on error: until it succeeds, entries computed before them
    /// stay reachable (at most for their TTL).
    pub async fn invalidate(&self, events: &[EventEnvelope]) -> Result<()> {
        self.bump(events.iter().flat_map(|e| self.policy.event_tags(e)))
            .await
    }

    /// Invalidates the answers that depend on any of `tags` (as [`Self::invalidate`] does for
    /// an event's tags).
    pub async fn invalidate_tags(&self, tags: &[String]) -> Result<()> {
        self.bump(tags.iter().cloned()).await
    }

    /// Invalidates every cached answer, e.g. after a rebuilt read model replaced the live one
    /// (the projection runner's `swapped`), when no event says what changed.
    pub async fn invalidate_all(&self) -> Result<()> {
        self.bump([ALL_TAG.to_owned()]).await
    }

    async fn bump(&self, tags: impl IntoIterator<Item = String>) -> Result<()> {
        let slots = slots_of(tags);
        if slots.is_empty() {
            return Ok(());
        }
        self.backend.bump_tags(&slots).await.inspect_err(|e| {
            tracing::warn!(error = %e, "query cache invalidation failed");
            metrics::counter!("flexcore_query_cache_invalidation_errors_total").increment(1);
        })
    }
}

/// After each commit of a projection's live read model, the answers that depend on the
/// committed events are invalidated (a failed invalidation is retried a few times with backoff,
/// then logged: stale entries then live at most their TTL); a rebuilt model swapped in clears
/// every answer.
#[async_trait]
impl crate::projection::ProjectionListener for QueryCacheInvalidator {
    async fn applied(&self, projection: &str, events: &[EventEnvelope]) {
        let mut delay = Duration::from_millis(20);
        for _ in 0..5 {
            if self.invalidate(events).await.is_ok() {
                return;
            }
            tokio::time::sleep(delay).await;
            delay *= 2;
        }
        tracing::error!(
            projection,
            "query cache invalidation keeps failing; stale answers expire with their TTL"
        );
    }

    async fn swapped(&self, projection: &str) {
        if let Err(e) = self.invalidate_all().await {
            tracing::warn!(projection, error = %e, "cannot clear the query cache after a rebuild");
        }
    }
}

/// Follows the event log from `from_position` and invalidates the cache with every event,
/// until `shutdown` turns true. An invalidation that fails is retried (with backoff up to 5 s)
/// before the next event is read, so none is skipped.
///
/// Use it when no projection drives the invalidator, i.e. for queries answered from the event
/// store itself; a read model updated by a projection must be invalidated by its runner after
/// each commit instead (see the module docs). Start it from the store's head at start-up:
/// an in-process cache starts empty, and a shared one's older entries are bounded by their TTL.
pub fn spawn_invalidation(
    invalidator: QueryCacheInvalidator,
    reader: Arc<dyn EventReader>,
    from_position: u64,
    shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let options = SubscriptionOptions {
            name: Some("query_cache".into()),
            ..SubscriptionOptions::default()
        };
        let mut shutdown = Shutdown::new(shutdown);
        let mut follower = LogFollower::new(
            "query_cache",
            Subscription::new(reader, from_position, options),
            Backoff::fixed(READ_RETRY),
            shutdown.clone(),
        );
        while let Some(event) = follower.next().await {
            let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(5));
            while invalidator
                .invalidate(std::slice::from_ref(&event))
                .await
                .is_err()
            {
                if !shutdown.sleep(backoff.next_delay()).await {
                    return;
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn query(params: Value) -> Query {
        Query {
            query_type: "q".into(),
            params,
        }
    }

    #[test]
    fn canonical_params_ignore_key_order_but_not_values() {
        let ctx = QueryContext::default();
        let slots = vec!["0001".to_owned()];
        let a = entry_key(
            &ctx,
            &query(json!({"b": 1, "a": {"y": [1, {"d": 2, "c": 3}], "x": "s"}})),
            &slots,
            &[3],
        );
        let b = entry_key(
            &ctx,
            &query(json!({"a": {"x": "s", "y": [1, {"c": 3, "d": 2}]}, "b": 1})),
            &slots,
            &[3],
        );
        assert_eq!(a, b);
        assert_eq!(
            a,
            r#"["q",null,[["0001",3]],{"a":{"x":"s","y":[1,{"c":3,"d":2}]},"b":1}]"#
        );
        let other_version = entry_key(&ctx, &query(json!({"b": 1})), &slots, &[4]);
        let same_version = entry_key(&ctx, &query(json!({"b": 1})), &slots, &[3]);
        assert_ne!(other_version, same_version);
        let tenant = QueryContext {
            tenant: Some("t\"1".into()),
            ..QueryContext::default()
        };
        let tenant_key = entry_key(&tenant, &query(json!({"b": 1})), &slots, &[3]);
        assert_ne!(tenant_key, same_version);
        assert!(tenant_key.starts_with(r#"["q","t\"1","#));
    }

    #[test]
    fn tag_slots_are_stable_bounded_and_deduplicated() {
        // Pinned: nodes of different releases sharing one Redis must agree.
        assert_eq!(tag_slot("users"), tag_slot("users"));
        assert_eq!(
            tag_slot(""),
            format!("{:04x}", 0xcbf2_9ce4_8422_2325_u64 % TAG_SLOTS)
        );
        assert_eq!(
            tag_slot("a"),
            format!("{:04x}", 0xaf63_dc4c_8601_ec8c_u64 % TAG_SLOTS)
        );
        assert!((0..1000).all(
            |i| u64::from_str_radix(&tag_slot(&format!("user:{i}")), 16).unwrap() < TAG_SLOTS
        ));
        let slots = slots_of(["b".to_owned(), "a".to_owned(), "b".to_owned()]);
        assert_eq!(slots.len(), 2);
        assert!(slots[0] < slots[1]);
    }

    #[test]
    fn rule_ttls_fall_back_to_the_default() {
        let policy = CachePolicy::new().cache("a", |_| Some(vec![])).cache_for(
            "b",
            Duration::from_secs(5),
            |_| Some(vec![]),
        );
        assert_eq!(policy.ttl_of("a"), DEFAULT_TTL);
        assert_eq!(policy.ttl_of("b"), Duration::from_secs(5));
        let policy = policy.default_ttl_of(Duration::from_secs(9));
        assert_eq!(policy.ttl_of("a"), Duration::from_secs(9));
    }
}
