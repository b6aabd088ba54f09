//! The event-store conformance suite: the same test functions run against every backend.
//!
//! A backend's `tests/conformance.rs` calls [`conformance_suite!`](crate::conformance_suite)
//! with an async factory returning `Option<StoreFixture>` (`None` skips, e.g. when PostgreSQL is
//! down outside CI). Every test gets a fresh store.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use flexcore_app::ErrorKind;
use flexcore_app::store::{
    Direction, EventFilter, EventStore, ReadAll, ReadStream, Snapshot, StreamWrite,
};
use flexcore_app::subscription::{Subscription, SubscriptionOptions};
use flexcore_domain::{DomainError, EventMetadata, ExpectedVersion, NewEvent, RawJson, StreamId};
use serde_json::json;

/// Generates one `#[tokio::test]` per conformance test, each with a fresh store from
/// `$factory` (an `async fn() -> Option<StoreFixture>`).
#[macro_export]
macro_rules! conformance_suite {
    ($factory:path) => {
        $crate::conformance_suite!(@each $factory;
            append_assigns_versions_and_positions,
            expectations_are_checked_and_failures_write_nothing,
            multi_event_appends_are_contiguous,
            multi_stream_appends_are_all_or_nothing,
            re_sent_event_ids_are_idempotent,
            read_stream_pages_both_ways,
            read_all_pages_and_filters,
            subscription_switches_from_history_to_live_without_gap_or_duplicate,
            snapshots_keep_the_latest,
            soft_delete_and_truncate,
            racing_exact_appends_get_one_success_per_version,
            group_commit_keeps_each_request_s_own_result,
            stream_ids_and_data_are_stored_literally,
            large_appends_work,
        );
    };
    (@each $factory:path; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                let Some(fixture) = $factory().await else { return };
                $crate::conformance::$name(::std::sync::Arc::clone(&fixture.store)).await;
                drop(fixture);
            }
        )*
    };
}

fn stream(id: &str) -> StreamId {
    StreamId::new(id).unwrap()
}

fn event(event_type: &str, n: u64) -> NewEvent {
    NewEvent::new(event_type, RawJson::from_value(&json!({ "n": n }))).unwrap()
}

fn events(event_type: &str, count: u64) -> Vec<NewEvent> {
    (0..count).map(|n| event(event_type, n)).collect()
}

/// A stream id unique to one test run, so a backend shared across tests is still clean.
fn fresh(prefix: &str) -> StreamId {
    stream(&format!("{prefix}-{}", uuid::Uuid::new_v4().simple()))
}

async fn read_all_everything(
    store: &dyn EventStore,
    filter: EventFilter,
) -> Vec<flexcore_domain::EventEnvelope> {
    let mut all = Vec::new();
    let mut from = 0;
    loop {
        let page = store
            .read_all(ReadAll {
                from_position: from,
                limit: 100,
                filter: filter.clone(),
            })
            .await
            .unwrap();
        assert!(page.next_position >= from, "next_position went backwards");
        if page.events.is_empty() {
            return all;
        }
        from = page.next_position;
        all.extend(page.events);
    }
}

fn expect_wrong_version(err: flexcore_app::Error, expected_current: Option<u64>) {
    match err {
        flexcore_app::Error::Domain(DomainError::WrongExpectedVersion { current, .. }) => {
            assert_eq!(current, expected_current, "reported current version");
        }
        other => panic!("expected a wrong-expected-version error, got {other:?}"),
    }
}

/// First events get version 0; positions strictly increase; reads return what was written.
pub async fn append_assigns_versions_and_positions(store: Arc<dyn EventStore>) {
    let s = fresh("order");
    let first = store
        .append(
            s.clone(),
            ExpectedVersion::NoStream,
            events("order.placed", 1),
        )
        .await
        .unwrap();
    assert_eq!(first.current_version, Some(0));
    assert_eq!(first.events[0].stream_version, 0);
    assert!(first.events[0].global_position >= 1);
    let second = store
        .append(
            s.clone(),
            ExpectedVersion::Exact(0),
            events("order.paid", 2),
        )
        .await
        .unwrap();
    assert_eq!(second.current_version, Some(2));
    assert!(second.events[0].global_position > first.events[0].global_position);

    let slice = store
        .read_stream(ReadStream::forward(s.clone()))
        .await
        .unwrap();
    assert_eq!(slice.current_version, Some(2));
    let versions: Vec<u64> = slice.events.iter().map(|e| e.stream_version).collect();
    assert_eq!(versions, [0, 1, 2]);
    let e = &slice.events[1];
    assert_eq!(e.event_type, "order.paid");
    assert_eq!(e.stream_id, s);
    assert_eq!(e.event_id, second.events[0].event_id);
    assert_eq!(e.global_position, second.events[0].global_position);
    assert_eq!(
        e.data.decode::<serde_json::Value>().unwrap(),
        json!({"n": 0})
    );
    assert_eq!(e.schema_version, 1);
    let age = time::OffsetDateTime::now_utc() - e.recorded_at;
    assert!(
        age.whole_seconds().abs() < 60,
        "recorded_at is now (UTC): {}",
        e.recorded_at
    );

    let missing = store
        .read_stream(ReadStream::forward(fresh("nothing")))
        .await
        .unwrap();
    assert_eq!(missing.current_version, None);
    assert!(missing.events.is_empty());
}

/// Each of the four expectations is checked; a failure reports the current version and
/// writes nothing.
pub async fn expectations_are_checked_and_failures_write_nothing(store: Arc<dyn EventStore>) {
    let s = fresh("acct");
    expect_wrong_version(
        store
            .append(s.clone(), ExpectedVersion::StreamExists, events("t", 1))
            .await
            .unwrap_err(),
        None,
    );
    expect_wrong_version(
        store
            .append(s.clone(), ExpectedVersion::Exact(0), events("t", 1))
            .await
            .unwrap_err(),
        None,
    );
    store
        .append(s.clone(), ExpectedVersion::NoStream, events("t", 2))
        .await
        .unwrap();
    let before = read_all_everything(&*store, EventFilter::default())
        .await
        .len();
    expect_wrong_version(
        store
            .append(s.clone(), ExpectedVersion::NoStream, events("t", 1))
            .await
            .unwrap_err(),
        Some(1),
    );
    let err = store
        .append(s.clone(), ExpectedVersion::Exact(0), events("t", 1))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict);
    expect_wrong_version(err, Some(1));
    expect_wrong_version(
        store
            .append(s.clone(), ExpectedVersion::Exact(7), events("t", 1))
            .await
            .unwrap_err(),
        Some(1),
    );
    assert_eq!(
        read_all_everything(&*store, EventFilter::default())
            .await
            .len(),
        before
    );

    store
        .append(s.clone(), ExpectedVersion::StreamExists, events("t", 1))
        .await
        .unwrap();
    store
        .append(s.clone(), ExpectedVersion::Exact(2), events("t", 1))
        .await
        .unwrap();
    let r = store
        .append(s.clone(), ExpectedVersion::Any, events("t", 1))
        .await
        .unwrap();
    assert_eq!(r.current_version, Some(4));
    let any_new = store
        .append(fresh("acct"), ExpectedVersion::Any, events("t", 1))
        .await
        .unwrap();
    assert_eq!(any_new.current_version, Some(0));
}

/// All events of one append are contiguous in the stream and in the global log.
pub async fn multi_event_appends_are_contiguous(store: Arc<dyn EventStore>) {
    let (a, b) = (fresh("multi"), fresh("multi"));
    let (ra, rb) = tokio::join!(
        store.append(a.clone(), ExpectedVersion::NoStream, events("t", 10)),
        store.append(b.clone(), ExpectedVersion::NoStream, events("t", 10)),
    );
    for r in [ra.unwrap(), rb.unwrap()] {
        let versions: Vec<u64> = r.events.iter().map(|e| e.stream_version).collect();
        assert_eq!(versions, (0..10).collect::<Vec<_>>());
        let positions: Vec<u64> = r.events.iter().map(|e| e.global_position).collect();
        let first = positions[0];
        assert_eq!(
            positions,
            (first..first + 10).collect::<Vec<_>>(),
            "contiguous positions"
        );
    }
}

/// Several streams, each with its own expectation, all or nothing.
pub async fn multi_stream_appends_are_all_or_nothing(store: Arc<dyn EventStore>) {
    let (a, b, c) = (fresh("ms"), fresh("ms"), fresh("ms"));
    store
        .append(b.clone(), ExpectedVersion::NoStream, events("t", 1))
        .await
        .unwrap();
    let before = read_all_everything(&*store, EventFilter::default())
        .await
        .len();

    let err = store
        .append_atomic(vec![
            StreamWrite::new(a.clone(), ExpectedVersion::NoStream, events("t", 2)),
            StreamWrite::new(b.clone(), ExpectedVersion::NoStream, events("t", 1)),
        ])
        .await
        .unwrap_err();
    match err {
        flexcore_app::Error::Domain(DomainError::WrongExpectedVersion {
            stream_id,
            current,
            ..
        }) => {
            assert_eq!(stream_id, b.to_string());
            assert_eq!(current, Some(0));
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(
        read_all_everything(&*store, EventFilter::default())
            .await
            .len(),
        before
    );
    assert_eq!(
        store
            .read_stream(ReadStream::forward(a.clone()))
            .await
            .unwrap()
            .current_version,
        None
    );

    let ok = store
        .append_atomic(vec![
            StreamWrite::new(a.clone(), ExpectedVersion::NoStream, events("t", 2)),
            StreamWrite::new(b.clone(), ExpectedVersion::Exact(0), events("t", 1)),
            StreamWrite::new(c.clone(), ExpectedVersion::NoStream, vec![]),
        ])
        .await
        .unwrap();
    assert_eq!(ok.streams.len(), 3);
    assert_eq!(ok.streams[0].current_version, Some(1));
    assert_eq!(ok.streams[1].current_version, Some(1));
    assert_eq!(
        ok.streams[2].current_version, None,
        "expectation-only write creates nothing"
    );
    let last_a = ok.streams[0].last_position().unwrap();
    assert_eq!(ok.streams[1].first_position().unwrap(), last_a + 1);

    let dup = store
        .append_atomic(vec![
            StreamWrite::new(c.clone(), ExpectedVersion::Any, events("t", 1)),
            StreamWrite::new(c.clone(), ExpectedVersion::Any, events("t", 1)),
        ])
        .await
        .unwrap_err();
    assert_eq!(dup.kind(), ErrorKind::Validation);
}

/// Re-sending stored event ids returns the original result and writes nothing; reusing an id
/// elsewhere is a conflict.
pub async fn re_sent_event_ids_are_idempotent(store: Arc<dyn EventStore>) {
    let s = fresh("idem");
    let batch = events("t", 3);
    let first = store
        .append(s.clone(), ExpectedVersion::NoStream, batch.clone())
        .await
        .unwrap();
    let count = read_all_everything(&*store, EventFilter::default())
        .await
        .len();
    let again = store
        .append(s.clone(), ExpectedVersion::NoStream, batch.clone())
        .await
        .unwrap();
    assert_eq!(again, first);
    let again_any = store
        .append(s.clone(), ExpectedVersion::Any, batch.clone())
        .await
        .unwrap();
    assert_eq!(again_any.events, first.events);
    assert_eq!(
        read_all_everything(&*store, EventFilter::default())
            .await
            .len(),
        count
    );

    store
        .append(s.clone(), ExpectedVersion::Exact(2), events("t", 1))
        .await
        .unwrap();
    let still = store
        .append(s.clone(), ExpectedVersion::NoStream, batch.clone())
        .await
        .unwrap();
    assert_eq!(
        still.events, first.events,
        "a late retry still gets the original answer"
    );

    let partial = vec![batch[0].clone(), event("t", 9)];
    let err = store
        .append(s.clone(), ExpectedVersion::Any, partial)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict);
    let elsewhere = store
        .append(fresh("idem"), ExpectedVersion::Any, vec![batch[1].clone()])
        .await
        .unwrap_err();
    assert_eq!(elsewhere.kind(), ErrorKind::Conflict);
    assert_eq!(
        read_all_everything(&*store, EventFilter::default())
            .await
            .len(),
        count + 1
    );
}

/// Stream reads page forward and backward from any version.
pub async fn read_stream_pages_both_ways(store: Arc<dyn EventStore>) {
    let s = fresh("paged");
    store
        .append(s.clone(), ExpectedVersion::NoStream, events("t", 25))
        .await
        .unwrap();
    let read = |from, limit, direction| {
        let store = Arc::clone(&store);
        let s = s.clone();
        async move {
            store
                .read_stream(ReadStream {
                    stream_id: s,
                    from_version: from,
                    limit,
                    direction,
                })
                .await
                .unwrap()
                .events
                .iter()
                .map(|e| e.stream_version)
                .collect::<Vec<u64>>()
        }
    };
    assert_eq!(
        read(None, 10, Direction::Forward).await,
        (0..10).collect::<Vec<_>>()
    );
    assert_eq!(
        read(Some(20), 10, Direction::Forward).await,
        (20..25).collect::<Vec<_>>()
    );
    assert_eq!(read(None, 3, Direction::Backward).await, [24, 23, 22]);
    assert_eq!(
        read(Some(5), 10, Direction::Backward).await,
        [5, 4, 3, 2, 1, 0]
    );
    assert!(read(Some(25), 10, Direction::Forward).await.is_empty());
    assert_eq!(read(Some(100), 2, Direction::Backward).await, [24, 23]);
}

/// `read_all` pages in increasing position and filters by type prefix and category.
pub async fn read_all_pages_and_filters(store: Arc<dyn EventStore>) {
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let cat_a = format!("cata{tag}");
    let cat_b = format!("catb{tag}");
    for i in 0..30u64 {
        let (category, event_type) = if i % 3 == 0 {
            (&cat_a, format!("{tag}.shipped"))
        } else {
            (&cat_b, format!("{tag}.placed"))
        };
        store
            .append(
                stream(&format!("{category}-{}", i % 4)),
                ExpectedVersion::Any,
                vec![event(&event_type, i)],
            )
            .await
            .unwrap();
    }
    let all = read_all_everything(&*store, EventFilter::default()).await;
    assert!(
        all.windows(2)
            .all(|w| w[0].global_position < w[1].global_position)
    );
    let ids: HashSet<_> = all.iter().map(|e| e.event_id).collect();
    assert_eq!(ids.len(), all.len(), "no duplicates across pages");

    let by_cat = read_all_everything(
        &*store,
        EventFilter {
            category: Some(cat_a.clone()),
            type_prefix: None,
        },
    )
    .await;
    assert_eq!(by_cat.len(), 10);
    assert!(by_cat.iter().all(|e| e.stream_id.category() == cat_a));
    let by_type = read_all_everything(
        &*store,
        EventFilter {
            type_prefix: Some(format!("{tag}.pl")),
            category: None,
        },
    )
    .await;
    assert_eq!(by_type.len(), 20);
    let none = read_all_everything(
        &*store,
        EventFilter {
            type_prefix: Some(format!("{tag}.sh")),
            category: Some(cat_b),
        },
    )
    .await;
    assert!(none.is_empty());
    let percent = read_all_everything(
        &*store,
        EventFilter {
            type_prefix: Some("%".into()),
            category: None,
        },
    )
    .await;
    assert!(
        percent.is_empty(),
        "a prefix is matched literally, not as a pattern"
    );

    let tail = all.last().unwrap().global_position;
    let page = store
        .read_all(ReadAll {
            from_position: tail + 1,
            limit: 10,
            filter: EventFilter::default(),
        })
        .await
        .unwrap();
    assert!(page.events.is_empty());
    assert!(page.next_position > tail);
    let small = store
        .read_all(ReadAll {
            from_position: 0,
            limit: 5,
            filter: EventFilter::default(),
        })
        .await
        .unwrap();
    assert_eq!(small.events.len(), 5);
    assert_eq!(small.next_position, small.events[4].global_position + 1);
}

/// A catch-up subscription replays history, then delivers live events, each exactly once in
/// increasing position.
pub async fn subscription_switches_from_history_to_live_without_gap_or_duplicate(
    store: Arc<dyn EventStore>,
) {
    let s = fresh("sub");
    store
        .append(s.clone(), ExpectedVersion::NoStream, events("sub.t", 50))
        .await
        .unwrap();
    let start = store
        .read_all(ReadAll {
            from_position: 0,
            limit: 1,
            filter: EventFilter::default(),
        })
        .await
        .unwrap();
    let from = start.events.first().map_or(0, |e| e.global_position);
    let options = SubscriptionOptions {
        page_size: 7,
        poll_interval: Duration::from_millis(50),
        filter: EventFilter {
            category: Some("sub".into()),
            type_prefix: None,
        },
        name: Some("conformance".into()),
        ..SubscriptionOptions::default()
    };
    let reader: Arc<dyn flexcore_app::store::EventReader> = store.clone();
    let mut sub = Subscription::new(reader, from, options);

    let writer = {
        let store = Arc::clone(&store);
        let s = s.clone();
        tokio::spawn(async move {
            for i in 0..50u64 {
                store
                    .append(
                        s.clone(),
                        ExpectedVersion::Exact(49 + i),
                        vec![event("sub.t", i)],
                    )
                    .await
                    .unwrap();
                if i % 10 == 0 {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        })
    };
    let mut seen = Vec::new();
    while seen.len() < 100 {
        let e = sub
            .next_timeout(Duration::from_secs(20))
            .await
            .unwrap()
            .expect("the subscription delivers every event in time");
        if e.stream_id == s {
            seen.push(e);
        }
    }
    writer.await.unwrap();
    let versions: Vec<u64> = seen.iter().map(|e| e.stream_version).collect();
    assert_eq!(versions, (0..100).collect::<Vec<_>>());
    assert!(
        seen.windows(2)
            .all(|w| w[0].global_position < w[1].global_position)
    );
    assert!(
        sub.next_timeout(Duration::from_millis(200))
            .await
            .unwrap()
            .is_none_or(|e| e.stream_id != s)
    );
}

/// The latest snapshot wins; an older one never replaces it.
pub async fn snapshots_keep_the_latest(store: Arc<dyn EventStore>) {
    let s = fresh("snap");
    assert!(store.load_snapshot(&s).await.unwrap().is_none());
    let snap = |v: u64| Snapshot {
        stream_id: s.clone(),
        version: v,
        state: RawJson::from_value(&json!({"v": v})),
    };
    store.save_snapshot(snap(10)).await.unwrap();
    store.save_snapshot(snap(20)).await.unwrap();
    store.save_snapshot(snap(15)).await.unwrap();
    assert_eq!(store.load_snapshot(&s).await.unwrap(), Some(snap(20)));
}

/// Soft delete hides a stream and lets it start again; truncate hides old versions.
pub async fn soft_delete_and_truncate(store: Arc<dyn EventStore>) {
    let s = fresh("del");
    assert_eq!(
        store
            .delete_stream(&s, ExpectedVersion::Any)
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::NotFound
    );
    let written = store
        .append(s.clone(), ExpectedVersion::NoStream, events("t", 3))
        .await
        .unwrap();
    expect_wrong_version(
        store
            .delete_stream(&s, ExpectedVersion::Exact(0))
            .await
            .unwrap_err(),
        Some(2),
    );
    store
        .delete_stream(&s, ExpectedVersion::Exact(2))
        .await
        .unwrap();
    let gone = store
        .read_stream(ReadStream::forward(s.clone()))
        .await
        .unwrap();
    assert_eq!(gone.current_version, None);
    assert!(gone.events.is_empty());
    let in_log = read_all_everything(&*store, EventFilter::default()).await;
    assert!(
        in_log
            .iter()
            .any(|e| e.event_id == written.events[0].event_id),
        "the log stays replayable"
    );

    expect_wrong_version(
        store
            .append(s.clone(), ExpectedVersion::StreamExists, events("t", 1))
            .await
            .unwrap_err(),
        None,
    );
    let again = store
        .append(s.clone(), ExpectedVersion::NoStream, events("t", 2))
        .await
        .unwrap();
    assert_eq!(
        again.events[0].stream_version, 3,
        "versions continue after a delete"
    );
    let slice = store
        .read_stream(ReadStream::forward(s.clone()))
        .await
        .unwrap();
    assert_eq!(slice.current_version, Some(4));
    assert_eq!(
        slice
            .events
            .iter()
            .map(|e| e.stream_version)
            .collect::<Vec<_>>(),
        [3, 4]
    );

    let t = fresh("trunc");
    store
        .append(t.clone(), ExpectedVersion::NoStream, events("t", 5))
        .await
        .unwrap();
    store.truncate_before(&t, 3).await.unwrap();
    let slice = store
        .read_stream(ReadStream::forward(t.clone()))
        .await
        .unwrap();
    assert_eq!(slice.current_version, Some(4));
    assert_eq!(
        slice
            .events
            .iter()
            .map(|e| e.stream_version)
            .collect::<Vec<_>>(),
        [3, 4]
    );
    store
        .append(t.clone(), ExpectedVersion::Exact(4), events("t", 1))
        .await
        .unwrap();
}

/// 16 tasks race `Exact(v)` appends on one stream: exactly one success per version, versions
/// contiguous, every acknowledged event readable.
pub async fn racing_exact_appends_get_one_success_per_version(store: Arc<dyn EventStore>) {
    let s = fresh("race");
    let mut tasks = Vec::new();
    for task in 0..16u64 {
        let store = Arc::clone(&store);
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let mut wins = Vec::new();
            for attempt in 0..12u64 {
                let current = store
                    .read_stream(ReadStream {
                        stream_id: s.clone(),
                        from_version: None,
                        limit: 1,
                        direction: Direction::Backward,
                    })
                    .await
                    .unwrap()
                    .current_version;
                let expected = ExpectedVersion::from_current(current);
                match store
                    .append(
                        s.clone(),
                        expected,
                        vec![event("race.t", task * 100 + attempt)],
                    )
                    .await
                {
                    Ok(r) => {
                        assert_eq!(r.events[0].stream_version, current.map_or(0, |v| v + 1));
                        wins.push((r.events[0].stream_version, r.events[0].event_id));
                    }
                    Err(e) => assert!(e.is_wrong_expected_version(), "unexpected error {e}"),
                }
            }
            wins
        }));
    }
    let mut by_version = BTreeMap::new();
    for t in tasks {
        for (version, id) in t.await.unwrap() {
            assert!(
                by_version.insert(version, id).is_none(),
                "two successes for version {version}"
            );
        }
    }
    let n = by_version.len() as u64;
    assert!(n >= 12, "at least one task's worth of wins");
    assert_eq!(
        by_version.keys().copied().collect::<Vec<_>>(),
        (0..n).collect::<Vec<_>>()
    );
    let slice = store
        .read_stream(ReadStream::forward(s.clone()))
        .await
        .unwrap();
    assert_eq!(slice.current_version, Some(n - 1));
    let stored: BTreeMap<u64, _> = slice
        .events
        .iter()
        .map(|e| (e.stream_version, e.event_id))
        .collect();
    assert_eq!(stored, by_version);
}

/// Concurrent appends (coalesced by group commit) keep their own expectation checks: the bad
/// ones fail alone.
pub async fn group_commit_keeps_each_request_s_own_result(store: Arc<dyn EventStore>) {
    let mut tasks = Vec::new();
    for i in 0..64u64 {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            let s = fresh("gc");
            let expected = if i % 2 == 0 {
                ExpectedVersion::NoStream
            } else {
                ExpectedVersion::Exact(3)
            };
            (
                i,
                s.clone(),
                store.append(s, expected, events("gc.t", 2)).await,
            )
        }));
    }
    for t in tasks {
        let (i, s, result) = t.await.unwrap();
        if i % 2 == 0 {
            let r = result.unwrap();
            assert_eq!(r.current_version, Some(1));
            let slice = store.read_stream(ReadStream::forward(s)).await.unwrap();
            assert_eq!(slice.events.len(), 2);
        } else {
            expect_wrong_version(result.unwrap_err(), None);
            assert_eq!(
                store
                    .read_stream(ReadStream::forward(s))
                    .await
                    .unwrap()
                    .current_version,
                None
            );
        }
    }
}

/// Stream ids that look like SQL, unicode and escapes round-trip untouched.
pub async fn stream_ids_and_data_are_stored_literally(store: Arc<dyn EventStore>) {
    let s = stream(&format!(
        "x'); DROP TABLE events; --{}",
        uuid::Uuid::new_v4().simple()
    ));
    let data = json!({
        "text": "Grüße, 世界 \" \\ / \n \t 🎉",
        "nested": {"a": [1, 2.5, null, true, {"b": "c"}]},
        "big": 12345678901234_i64,
    });
    let metadata = EventMetadata {
        correlation_id: Some("corr-1".into()),
        actor: Some(flexcore_domain::Actor::subject("ann")),
        traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
        ..EventMetadata::default()
    };
    let e = NewEvent::new("weird.Type_1:v2", RawJson::from_value(&data))
        .unwrap()
        .with_metadata(metadata.clone());
    store
        .append(s.clone(), ExpectedVersion::NoStream, vec![e.clone()])
        .await
        .unwrap();
    let slice = store
        .read_stream(ReadStream::forward(s.clone()))
        .await
        .unwrap();
    let read = &slice.events[0];
    assert_eq!(read.stream_id, s);
    assert_eq!(read.event_type, "weird.Type_1:v2");
    assert_eq!(read.data.decode::<serde_json::Value>().unwrap(), data);
    assert_eq!(read.decode_metadata().unwrap(), metadata);
    assert_eq!(read.event_id, e.event_id);
}

/// One append of a thousand events is fine.
pub async fn large_appends_work(store: Arc<dyn EventStore>) {
    let s = fresh("big");
    let r = store
        .append(s.clone(), ExpectedVersion::NoStream, events("big.t", 1000))
        .await
        .unwrap();
    assert_eq!(r.current_version, Some(999));
    let slice = store.read_stream(ReadStream::forward(s)).await.unwrap();
    assert_eq!(slice.events.len(), 1000);
}
