//! The commit-order race (SPEC 2), forced deterministically.
//!
//! Positions come from a sequence, but transactions commit in any order. Here transactions
//! reserve their positions and are then held open (through the store's test hook, which runs
//! the committer's own code up to `COMMIT`, and through raw SQL calling `flexcore_reserve`
//! exactly as the committer does) while many other appends commit later positions. A naive
//! reader would move past the held positions and never see them; `read_all` and a live
//! subscription must instead see every committed event exactly once, in increasing position,
//! and must move on once the held transactions end, whether they commit, roll back or die.

mod common;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flexcore_app::store::{
    AppendResult, EventAppender, EventFilter, EventReader, ReadAll, StreamWrite,
};
use flexcore_app::subscription::{Subscription, SubscriptionOptions};
use flexcore_domain::{EventEnvelope, EventId, ExpectedVersion, NewEvent, RawJson, StreamId};
use flexcore_store_postgres::PostgresStore;
use serde_json::json;

fn stream(id: &str) -> StreamId {
    StreamId::new(id).unwrap()
}

fn events(event_type: &str, count: u64) -> Vec<NewEvent> {
    (0..count)
        .map(|n| NewEvent::new(event_type, RawJson::from_value(&json!({ "n": n }))).unwrap())
        .collect()
}

fn ids(result: &AppendResult) -> Vec<EventId> {
    result
        .streams
        .iter()
        .flat_map(|s| s.events.iter().map(|e| e.event_id))
        .collect()
}

/// What a reader saw, shared with the test body.
type Seen = Arc<Mutex<Vec<EventEnvelope>>>;

/// Aborts a background reader when the test ends, passed or failed.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Pages through `read_all` forever, continuing from `next_position` as a client would.
fn spawn_pager(store: Arc<PostgresStore>, seen: Seen) -> AbortOnDrop {
    AbortOnDrop(tokio::spawn(async move {
        let mut from = 0;
        loop {
            let page = store
                .read_all(ReadAll {
                    from_position: from,
                    limit: 3,
                    filter: EventFilter::default(),
                })
                .await
                .unwrap();
            assert!(page.next_position >= from, "next_position went backwards");
            from = page.next_position;
            if page.events.is_empty() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            seen.lock().unwrap().extend(page.events);
        }
    }))
}

/// Follows the log with a catch-up subscription.
fn spawn_subscriber(store: Arc<PostgresStore>, seen: Seen) -> AbortOnDrop {
    AbortOnDrop(tokio::spawn(async move {
        let reader: Arc<dyn EventReader> = store;
        let options = SubscriptionOptions {
            page_size: 4,
            poll_interval: Duration::from_millis(20),
            filter: EventFilter::default(),
            ..SubscriptionOptions::default()
        };
        let mut subscription = Subscription::new(reader, 0, options);
        loop {
            let event = subscription.next().await.unwrap();
            seen.lock().unwrap().push(event);
        }
    }))
}

/// Everything `read_all` returns from the start, and where it says the next page starts.
async fn read_everything(store: &PostgresStore) -> (Vec<EventEnvelope>, u64) {
    let mut all = Vec::new();
    let mut from = 0;
    loop {
        let page = store
            .read_all(ReadAll {
                from_position: from,
                limit: 1000,
                filter: EventFilter::default(),
            })
            .await
            .unwrap();
        from = page.next_position;
        if page.events.is_empty() {
            return (all, from);
        }
        all.extend(page.events);
    }
}

/// Waits until a reader has seen `count` events.
async fn wait_for(seen: &Seen, count: usize, who: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.lock().unwrap().len() < count {
        assert!(
            Instant::now() < deadline,
            "{who} saw {} of {count} events in 30 s",
            seen.lock().unwrap().len()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Each committed event exactly once, in strictly increasing position.
fn assert_exactly_once(who: &str, seen: &[EventEnvelope], committed: &HashSet<EventId>) {
    assert!(
        seen.windows(2)
            .all(|w| w[0].global_position < w[1].global_position),
        "{who}: positions are not strictly increasing: {:?}",
        seen.iter().map(|e| e.global_position).collect::<Vec<_>>()
    );
    let got: HashSet<EventId> = seen.iter().map(|e| e.event_id).collect();
    assert_eq!(got.len(), seen.len(), "{who}: duplicates");
    assert_eq!(&got, committed, "{who}: not exactly the committed events");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readers_never_skip_transactions_that_commit_out_of_order() {
    let Some((store, guard)) = common::fresh_store().await else {
        return;
    };
    let store = Arc::new(store);
    let raw = common::raw_client(&guard).await;
    let mut committed: HashSet<EventId> = HashSet::new();

    let base = store
        .append(
            stream("base-1"),
            ExpectedVersion::NoStream,
            events("base", 5),
        )
        .await
        .unwrap();
    committed.extend(base.events.iter().map(|e| e.event_id));

    let (paged, subscribed): (Seen, Seen) = Default::default();
    let pager = spawn_pager(Arc::clone(&store), Arc::clone(&paged));
    let subscriber = spawn_subscriber(Arc::clone(&store), Arc::clone(&subscribed));
    wait_for(&paged, 5, "the pager").await;
    wait_for(&subscribed, 5, "the subscription").await;

    // Three transactions reserve positions and stay open: h1 < h2 < h3. h1 appends to the
    // existing stream, the others start new ones.
    let held = |name: &str, expected, count| {
        store.append_held(vec![StreamWrite::new(
            stream(name),
            expected,
            events("held", count),
        )])
    };
    let h1 = held("base-1", ExpectedVersion::Exact(4), 3).await.unwrap();
    let h2 = held("held-2", ExpectedVersion::NoStream, 2).await.unwrap();
    let h3 = held("held-3", ExpectedVersion::NoStream, 4).await.unwrap();
    let p1 = h1.first_position();
    assert!(p1 < h2.first_position() && h2.first_position() < h3.first_position());

    // The held transactions are open since their first statement: h1 holds its stream's row
    // lock, and h2's new stream row is not committed.
    let locked = raw
        .query(
            "SELECT 1 FROM streams WHERE stream_id = 'base-1' FOR UPDATE NOWAIT",
            &[],
        )
        .await;
    assert_eq!(
        locked.unwrap_err().code().map(|c| c.code()),
        Some("55P03"),
        "the held transaction holds its stream lock"
    );
    let visible: i64 = raw
        .query_one(
            "SELECT count(*) FROM streams WHERE stream_id = 'held-2'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(visible, 0, "stream rows are created inside the transaction");

    // A fourth writer reserves a block through raw SQL, exactly as the committer does, and then
    // its session dies (below) without committing.
    let crasher = common::raw_client(&guard).await;
    crasher.batch_execute("BEGIN").await.unwrap();
    let crashed_first: i64 = crasher
        .query_one("SELECT flexcore_reserve(2)", &[])
        .await
        .unwrap()
        .get(0);
    let crasher_pid: i32 = crasher
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);

    // Writers are not serialised: with four transactions open, 8 concurrent writers commit
    // 40 appends at later positions.
    let started = Instant::now();
    let mut writers = Vec::new();
    for w in 0..8 {
        let store = Arc::clone(&store);
        writers.push(tokio::spawn(async move {
            let mut written = Vec::new();
            for i in 0..5u64 {
                let expected = if i == 0 {
                    ExpectedVersion::NoStream
                } else {
                    ExpectedVersion::Exact(i - 1)
                };
                let r = store
                    .append(stream(&format!("live-{w}")), expected, events("live", 1))
                    .await
                    .unwrap();
                written.push(r.events[0].clone());
            }
            written
        }));
    }
    let mut live_positions = Vec::new();
    for writer in writers {
        let written = tokio::time::timeout(Duration::from_secs(20), writer)
            .await
            .expect("appends commit while other transactions are held open")
            .unwrap();
        committed.extend(written.iter().map(|e| e.event_id));
        live_positions.extend(written.iter().map(|e| e.global_position));
    }
    let elapsed = started.elapsed();
    println!("40 appends committed in {elapsed:?} while 4 transactions held positions open");
    assert!(live_positions.iter().all(|&p| p > p1));

    // The race is real: later positions are committed and visible to a plain query, so a naive
    // reader (`WHERE position >= $from ORDER BY position`) would now continue after them.
    let naive_next: i64 = raw
        .query_one("SELECT max(position) + 1 FROM events", &[])
        .await
        .unwrap()
        .get(0);
    assert!(naive_next as u64 > p1 + 3, "later commits are visible");

    // `read_all` stops below the oldest open block, and so do the pager and the subscription.
    let check_held_back = |step: &'static str| {
        let store = Arc::clone(&store);
        let (paged, subscribed) = (Arc::clone(&paged), Arc::clone(&subscribed));
        async move {
            let (all, next) = read_everything(&store).await;
            assert!(
                next <= p1,
                "{step}: read_all moved to {next}, past open block {p1}"
            );
            assert!(all.iter().all(|e| e.global_position < p1), "{step}");
            tokio::time::sleep(Duration::from_millis(100)).await;
            for (who, seen) in [("pager", &paged), ("subscription", &subscribed)] {
                let seen = seen.lock().unwrap();
                assert!(
                    seen.iter().all(|e| e.global_position < p1),
                    "{step}: the {who} read past the open block"
                );
            }
        }
    };
    check_held_back("all held").await;

    // Release in the order that makes a naive reader skip: later blocks first.
    committed.extend(ids(&h2.commit().await.unwrap()));
    check_held_back("h2 committed").await;
    h3.rollback().await;
    check_held_back("h3 rolled back").await;
    raw.execute("SELECT pg_terminate_backend($1)", &[&crasher_pid])
        .await
        .unwrap();
    check_held_back("raw writer killed").await;
    let h1_result = h1.commit().await.unwrap();
    committed.extend(ids(&h1_result));

    // A naive reader that had moved to `naive_next` would never see h1's events.
    assert!(
        h1_result.streams[0]
            .events
            .iter()
            .all(|e| (e.global_position as i64) < naive_next),
        "h1 committed below where a naive reader already was"
    );

    // Later appends keep flowing past the gaps left by the rollback and the dead session.
    let tail = store
        .append(
            stream("tail-1"),
            ExpectedVersion::NoStream,
            events("tail", 3),
        )
        .await
        .unwrap();
    committed.extend(tail.events.iter().map(|e| e.event_id));

    wait_for(&paged, committed.len(), "the pager").await;
    wait_for(&subscribed, committed.len(), "the subscription").await;
    tokio::time::sleep(Duration::from_millis(100)).await; // would any duplicate show up?
    drop((pager, subscriber));
    assert_exactly_once("pager", &paged.lock().unwrap(), &committed);
    assert_exactly_once("subscription", &subscribed.lock().unwrap(), &committed);

    let (all, next) = read_everything(&store).await;
    assert_exactly_once("read_all", &all, &committed);
    let last = tail.events.last().unwrap().global_position;
    assert_eq!(next, last + 1, "the watermark passed every ended block");
    assert!(
        (crashed_first as u64) < last,
        "the dead session's positions are behind"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_held_rollback_never_blocks_readers_for_good() {
    let Some((store, _guard)) = common::fresh_store().await else {
        return;
    };
    let first = store
        .append(stream("a-1"), ExpectedVersion::NoStream, events("a", 2))
        .await
        .unwrap();
    let held = store
        .append_held(vec![StreamWrite::new(
            stream("b-1"),
            ExpectedVersion::NoStream,
            events("b", 2),
        )])
        .await
        .unwrap();
    let after = store
        .append(stream("c-1"), ExpectedVersion::NoStream, events("c", 1))
        .await
        .unwrap();
    let (seen, next) = read_everything(&store).await;
    assert_eq!(seen.len(), 2);
    assert_eq!(next, held.first_position());
    held.rollback().await;
    let (seen, next) = read_everything(&store).await;
    let positions: Vec<u64> = seen.iter().map(|e| e.global_position).collect();
    assert_eq!(
        positions,
        [
            first.events[0].global_position,
            first.events[1].global_position,
            after.events[0].global_position
        ]
    );
    assert_eq!(next, after.events[0].global_position + 1);
    let stream_b = store
        .read_stream(flexcore_app::store::ReadStream::forward(stream("b-1")))
        .await
        .unwrap();
    assert_eq!(stream_b.current_version, None, "the rollback wrote nothing");
}

/// No forced interleaving here: many committers and writers race freely while two pagers and a
/// subscription follow the log; each must still see every event exactly once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readers_see_everything_once_under_free_running_load() {
    let Some((config, _guard)) = common::fresh_config() else {
        return;
    };
    let store = Arc::new(
        PostgresStore::connect(flexcore_store_postgres::PostgresConfig {
            committers: 6,
            pool_size: 16,
            max_batch_events: 16,
            ..config
        })
        .await
        .unwrap(),
    );
    let (paged_a, paged_b, subscribed): (Seen, Seen, Seen) = Default::default();
    let readers = [
        spawn_pager(Arc::clone(&store), Arc::clone(&paged_a)),
        spawn_pager(Arc::clone(&store), Arc::clone(&paged_b)),
        spawn_subscriber(Arc::clone(&store), Arc::clone(&subscribed)),
    ];
    let mut writers = Vec::new();
    for w in 0..16u64 {
        let store = Arc::clone(&store);
        writers.push(tokio::spawn(async move {
            let mut written = Vec::new();
            for i in 0..30u64 {
                // Streams shared by pairs of writers (row-lock waits), 1-3 events per append,
                // every fifth append spanning two streams.
                let s = stream(&format!("load-{}", w / 2));
                let mut writes = vec![StreamWrite::new(
                    s,
                    ExpectedVersion::Any,
                    events("load", 1 + (w + i) % 3),
                )];
                if i % 5 == 0 {
                    writes.push(StreamWrite::new(
                        stream(&format!("side-{w}-{i}")),
                        ExpectedVersion::NoStream,
                        events("side", 1),
                    ));
                }
                let r = store.append_atomic(writes).await.unwrap();
                written.extend(ids(&r));
            }
            written
        }));
    }
    let mut committed = HashSet::new();
    for writer in writers {
        committed.extend(writer.await.unwrap());
    }
    for (who, seen) in [
        ("pager a", &paged_a),
        ("pager b", &paged_b),
        ("subscription", &subscribed),
    ] {
        wait_for(seen, committed.len(), who).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(readers);
    assert_exactly_once("pager a", &paged_a.lock().unwrap(), &committed);
    assert_exactly_once("pager b", &paged_b.lock().unwrap(), &committed);
    assert_exactly_once("subscription", &subscribed.lock().unwrap(), &committed);
}
