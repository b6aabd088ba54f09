//! Subscription linger: once caught up, commits landing within the linger are read as one
//! batch; an event after a quiet spell and pages of history are read at once. Runs on tokio's
//! paused clock, so the waits are exact and the test takes no real time.

use std::sync::Arc;
use std::time::Duration;

use flexcore_app::store::{EventAppender, EventReader, InMemoryStore};
use flexcore_app::subscription::{Subscription, SubscriptionOptions};
use flexcore_domain::{EventEnvelope, ExpectedVersion, NewEvent, RawJson, StreamId};
use tokio::time::Instant;

const LINGER: Duration = Duration::from_millis(200);

async fn append(store: &InMemoryStore, n: usize) {
    let events = (0..n)
        .map(|_| {
            NewEvent::new(
                "thing.happened",
                RawJson::from_value(&serde_json::json!({})),
            )
            .unwrap()
        })
        .collect();
    store
        .append(
            StreamId::new("thing-1").unwrap(),
            ExpectedVersion::Any,
            events,
        )
        .await
        .unwrap();
}

fn subscribe(store: &Arc<InMemoryStore>, linger: Duration) -> Subscription {
    let reader: Arc<dyn EventReader> = store.clone();
    Subscription::new(
        reader,
        0,
        SubscriptionOptions {
            page_size: 100,
            linger,
            ..SubscriptionOptions::default()
        },
    )
}

fn positions(events: &[EventEnvelope]) -> Vec<u64> {
    events.iter().map(|e| e.global_position).collect()
}

#[tokio::test(start_paused = true)]
async fn commits_within_the_linger_are_read_as_one_batch() {
    let store = Arc::new(InMemoryStore::new());
    let mut subscription = subscribe(&store, LINGER);
    append(&store, 1).await;
    let start = Instant::now();
    let first = subscription.poll_batch().await.unwrap();
    assert_eq!(first.len(), 1, "the first event is read at once");
    assert_eq!(start.elapsed(), Duration::ZERO);

    // One commit now, one 100 ms later: read together, one linger after the last read.
    append(&store, 1).await;
    let late = {
        let store = Arc::clone(&store);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            append(&store, 1).await;
        })
    };
    let batch = subscription.poll_batch().await.unwrap();
    late.await.unwrap();
    assert_eq!(
        batch.len(),
        2,
        "both commits in one read: {:?}",
        positions(&batch)
    );
    assert_eq!(start.elapsed(), LINGER);
    assert_eq!(batch[0].global_position, first[0].global_position + 1);

    // After a quiet spell, the next event is read at once.
    tokio::time::sleep(Duration::from_secs(1)).await;
    append(&store, 1).await;
    let quiet = Instant::now();
    assert_eq!(subscription.poll_batch().await.unwrap().len(), 1);
    assert_eq!(quiet.elapsed(), Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn history_is_read_page_after_page_without_waiting() {
    let store = Arc::new(InMemoryStore::new());
    append(&store, 250).await;
    let mut subscription = subscribe(&store, LINGER);
    let start = Instant::now();
    let mut read = Vec::new();
    for _ in 0..3 {
        read.push(subscription.poll_batch().await.unwrap().len());
    }
    assert_eq!(read, vec![100, 100, 50]);
    assert_eq!(start.elapsed(), Duration::ZERO, "full pages never linger");
}

#[tokio::test(start_paused = true)]
async fn without_a_linger_every_wake_up_reads_at_once() {
    let store = Arc::new(InMemoryStore::new());
    let mut subscription = subscribe(&store, Duration::ZERO);
    append(&store, 1).await;
    assert_eq!(subscription.poll_batch().await.unwrap().len(), 1);
    append(&store, 1).await;
    let start = Instant::now();
    assert_eq!(subscription.poll_batch().await.unwrap().len(), 1);
    assert_eq!(start.elapsed(), Duration::ZERO);
}
